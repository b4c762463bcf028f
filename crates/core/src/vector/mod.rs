//! Vector kernels and int8 quantization (the Erlang host's `erlmcp_flow_quantization`).
//!
//! * Distances for `i8`, `f16` and `f32` vectors: [`dot`], [`cosine_distance`] and
//!   [`l2sq`], computed by simsimd's kernels (chosen at run time for this CPU: AVX-512 VNNI /
//!   FP16, AVX2, NEON, SVE ...) or by this module's scalar code ([`Backend::Scalar`], also the
//!   reference the tests compare simsimd with).
//! * Calibrated int8 quantization: [`quantize_vector`] scales each vector by its own largest
//!   component (`x ≈ scale · code`, codes in −127..=127). MiniLM components are small
//!   (|x| ≤ 0.29, a vector's largest ≈ 0.17 on average), so a fixed `x · 127` (one scale
//!   for every vector) uses about a seventh of the int8 range. Measured by brute force on the
//!   100K MiniLM set (1000 queries, recall@10 against exact float search):
//!
//!   | codes | recall@10 |
//!   |---|---|
//!   | fixed `x · 127` | 0.969 |
//!   | per vector (this module) | 0.996 |
//!   | per dimension, min/max affine ([`DimQuantizer`], faiss SQ8's scheme) | 0.993 |
//!
//!   Per vector wins and keeps a plain int8 dot product: for cosine the scales cancel
//!   (`cos(x, y) = cos(code_x, code_y)` up to rounding), for dot and L2 they are two
//!   multiplications after the integer kernel. `erlmcp-flow bench --suite hnsw` re-measures
//!   the three on the data it is given.
//!
//! Zero vectors quantize to zero codes with scale 0; their cosine distance to anything is 1.

mod scalar;

use crate::error::{Error, Result};
// A process-wide static: loom cannot build one in a const context (see crate::sync).
use std::sync::atomic::{AtomicU8, Ordering}; // std-atomic-ok: process-wide setting

pub use simsimd::f16;

/// A distance measure. Smaller is closer for every metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// `1 − cos(x, y)`, in 0..=2.
    Cosine,
    /// `1 − x·y` (for unit vectors the same order as cosine).
    Dot,
    /// `|x − y|²`.
    L2Sq,
}

impl Metric {
    /// A stable lower-case name (`cosine`, `dot`, `l2sq`).
    pub const fn name(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::Dot => "dot",
            Metric::L2Sq => "l2sq",
        }
    }

    /// The metric named `name` (as [`Metric::name`] prints it; `ip` and `l2` are accepted).
    pub fn from_name(name: &str) -> Result<Metric> {
        match name {
            "cosine" | "cos" => Ok(Metric::Cosine),
            "dot" | "ip" => Ok(Metric::Dot),
            "l2sq" | "l2" => Ok(Metric::L2Sq),
            _ => Err(Error::invalid(format!(
                "unknown metric {name:?} (expected cosine, dot or l2sq)"
            ))),
        }
    }

    /// The stable integer code of the C ABI (`EMF_METRIC_*`).
    pub const fn code(self) -> u32 {
        match self {
            Metric::Cosine => 0,
            Metric::Dot => 1,
            Metric::L2Sq => 2,
        }
    }

    /// The metric of a C ABI code.
    pub fn from_code(code: u32) -> Result<Metric> {
        match code {
            0 => Ok(Metric::Cosine),
            1 => Ok(Metric::Dot),
            2 => Ok(Metric::L2Sq),
            _ => Err(Error::invalid(format!(
                "unknown metric code {code} (0 cosine, 1 dot, 2 l2sq)"
            ))),
        }
    }
}

/// Which code computes the distances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// simsimd's kernels, dispatched at run time to the best this CPU supports.
    Simd,
    /// This module's portable loops (the fallback, and the tests' second opinion).
    Scalar,
}

// 0 = not decided yet, 1 = Simd, 2 = Scalar.
static BACKEND: AtomicU8 = AtomicU8::new(0);

/// The backend in use. The first call decides: `Scalar` when the environment variable
/// `EMF_SIMD` is `0`, `off` or `scalar`, `Simd` otherwise.
#[inline]
pub fn backend() -> Backend {
    match BACKEND.load(Ordering::Relaxed) {
        1 => Backend::Simd,
        2 => Backend::Scalar,
        _ => {
            // Miri cannot run simsimd's C kernels: the scalar loops stand in there.
            let scalar = cfg!(miri)
                || matches!(
                    std::env::var("EMF_SIMD").as_deref(),
                    Ok("0" | "off" | "scalar")
                );
            let b = if scalar {
                Backend::Scalar
            } else {
                Backend::Simd
            };
            set_backend(b);
            b
        }
    }
}

/// Forces a backend for the whole process (benchmarks and tests compare the two).
pub fn set_backend(backend: Backend) {
    BACKEND.store(
        match backend {
            Backend::Simd => 1,
            Backend::Scalar => 2,
        },
        Ordering::Relaxed,
    );
}

/// The instruction sets simsimd dispatches to on this CPU, best first (`sapphire`, `ice`,
/// `skylake`, `haswell`, `neon`, `sve`, ...), or `serial` when it has none.
pub fn simd_capabilities() -> Vec<&'static str> {
    use simsimd::capabilities as c;
    type Probe = (&'static str, fn() -> bool);
    let all: [Probe; 12] = [
        ("sapphire", c::uses_sapphire),
        ("turin", c::uses_turin),
        ("genoa", c::uses_genoa),
        ("ice", c::uses_ice),
        ("skylake", c::uses_skylake),
        ("haswell", c::uses_haswell),
        ("sierra", c::uses_sierra),
        ("sve_i8", c::uses_sve_i8),
        ("sve", c::uses_sve),
        ("neon_i8", c::uses_neon_i8),
        ("neon_f16", c::uses_neon_f16),
        ("neon", c::uses_neon),
    ];
    let mut v: Vec<&str> = all.iter().filter(|(_, f)| f()).map(|(n, _)| *n).collect();
    if v.is_empty() {
        v.push("serial");
    }
    v
}

/// An element type with distance kernels: `i8`, [`f16`](struct@f16) and `f32`.
pub trait Element: Copy + Send + Sync + 'static {
    /// `Σ aᵢ·bᵢ`.
    fn dot(a: &[Self], b: &[Self]) -> f64;
    /// `1 − cos(a, b)`; 1 when either vector is zero (0 when both are).
    fn cosine_distance(a: &[Self], b: &[Self]) -> f64;
    /// `Σ (aᵢ − bᵢ)²`.
    fn l2sq(a: &[Self], b: &[Self]) -> f64;
    /// The value as `f64` (for references and re-ranking).
    fn to_f64(self) -> f64;
    /// False for NaN and infinities.
    fn is_finite(self) -> bool;
}

macro_rules! element {
    ($t:ty) => {
        impl Element for $t {
            #[inline]
            fn dot(a: &[Self], b: &[Self]) -> f64 {
                match backend() {
                    Backend::Simd => simd_or(
                        <$t as simsimd::SpatialSimilarity>::dot(a, b),
                        a,
                        b,
                        scalar::dot,
                    ),
                    Backend::Scalar => scalar::dot(a, b),
                }
            }
            #[inline]
            fn cosine_distance(a: &[Self], b: &[Self]) -> f64 {
                match backend() {
                    Backend::Simd => simd_or(
                        <$t as simsimd::SpatialSimilarity>::cos(a, b),
                        a,
                        b,
                        scalar::cosine_distance,
                    ),
                    Backend::Scalar => scalar::cosine_distance(a, b),
                }
            }
            #[inline]
            fn l2sq(a: &[Self], b: &[Self]) -> f64 {
                match backend() {
                    Backend::Simd => simd_or(
                        <$t as simsimd::SpatialSimilarity>::l2sq(a, b),
                        a,
                        b,
                        scalar::l2sq,
                    ),
                    Backend::Scalar => scalar::l2sq(a, b),
                }
            }
            #[inline]
            fn to_f64(self) -> f64 {
                scalar::Num::to_f64(self)
            }
            #[inline]
            fn is_finite(self) -> bool {
                scalar::Num::finite(self)
            }
        }
    };
}

/// simsimd answers `None` only for slices of different lengths; the scalar code then
/// compares the common prefix (the public functions check lengths before calling).
#[inline(always)]
fn simd_or<T>(r: Option<f64>, a: &[T], b: &[T], f: fn(&[T], &[T]) -> f64) -> f64 {
    match r {
        Some(d) => d,
        None => f(a, b),
    }
}

element!(i8);
element!(f16);
element!(f32);

/// The checks of the public distance functions: equal lengths, finite values (a NaN would
/// otherwise come out as any distance at all, 0 included).
fn checked<T: Element>(a: &[T], b: &[T]) -> Result<()> {
    same_len(a, b)?;
    if a.iter().chain(b).all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(Error::invalid(
            "vector has a NaN or infinite component".to_string(),
        ))
    }
}

fn same_len<A, B>(a: &[A], b: &[B]) -> Result<()> {
    if a.len() == b.len() {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "vectors of different dimensions ({} and {})",
            a.len(),
            b.len()
        )))
    }
}

/// simsimd's int8 kernels sum in 32-bit integers: 127·127 products overflow past 133 144
/// dimensions (and squared differences past 33 000). The public functions cut longer
/// vectors into pieces of this length and add the pieces in `f64`.
const PIECE: usize = 16_384;

fn pieces<T: Element>(a: &[T], b: &[T], f: fn(&[T], &[T]) -> f64) -> f64 {
    if a.len() <= PIECE {
        return f(a, b);
    }
    a.chunks(PIECE)
        .zip(b.chunks(PIECE))
        .map(|(x, y)| f(x, y))
        .sum()
}

/// `Σ aᵢ·bᵢ` (exact for `i8` at any length).
///
/// ```
/// use erlmcp_flow::vector;
/// assert_eq!(vector::dot(&[1i8, 2, 3], &[4, 5, 6]).unwrap(), 32.0);
/// ```
pub fn dot<T: Element>(a: &[T], b: &[T]) -> Result<f64> {
    checked(a, b)?;
    Ok(pieces(a, b, T::dot))
}

/// `1 − cos(a, b)`.
///
/// ```
/// use erlmcp_flow::vector;
/// let d = vector::cosine_distance(&[1.0f32, 0.0], &[0.0, 1.0]).unwrap();
/// assert!((d - 1.0).abs() < 1e-6);
/// ```
pub fn cosine_distance<T: Element>(a: &[T], b: &[T]) -> Result<f64> {
    checked(a, b)?;
    if a.len() <= PIECE {
        return Ok(T::cosine_distance(a, b));
    }
    let (ab, aa, bb) = (
        pieces(a, b, T::dot),
        pieces(a, a, T::dot),
        pieces(b, b, T::dot),
    );
    Ok(if aa == 0.0 && bb == 0.0 {
        0.0
    } else if aa == 0.0 || bb == 0.0 {
        1.0
    } else {
        (1.0 - ab / (aa.sqrt() * bb.sqrt())).max(0.0)
    })
}

/// `Σ (aᵢ − bᵢ)²`.
pub fn l2sq<T: Element>(a: &[T], b: &[T]) -> Result<f64> {
    checked(a, b)?;
    Ok(pieces(a, b, T::l2sq))
}

/// The distance of `metric` between `a` and `b` (see [`Metric`]).
pub fn distance<T: Element>(metric: Metric, a: &[T], b: &[T]) -> Result<f64> {
    match metric {
        Metric::Cosine => cosine_distance(a, b),
        Metric::Dot => Ok(1.0 - dot(a, b)?),
        Metric::L2Sq => l2sq(a, b),
    }
}

/// A vector quantized to int8 with its own scale: `x ≈ scale · codes`.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    /// The codes, −127..=127.
    pub codes: Vec<i8>,
    /// The scale: the vector's largest absolute component / 127 (0 for a zero vector).
    pub scale: f32,
}

/// Quantizes `x` with a per-vector scale (see the module documentation).
///
/// Non-finite components are refused: a NaN would poison every distance to this vector.
///
/// ```
/// use erlmcp_flow::vector;
/// let q = vector::quantize_vector(&[0.1, -0.05, 0.0]).unwrap();
/// assert_eq!(q.codes, [127, -64, 0]); // -63.5 rounds away from zero
/// let back = vector::dequantize_vector(&q);
/// assert!((back[1] + 0.05).abs() < 0.001);
/// ```
pub fn quantize_vector(x: &[f32]) -> Result<Quantized> {
    let mut codes = vec![0i8; x.len()];
    let scale = quantize_into(x, &mut codes)?;
    Ok(Quantized { codes, scale })
}

/// [`quantize_vector`] into a caller's buffer of the same length; returns the scale.
pub fn quantize_into(x: &[f32], codes: &mut [i8]) -> Result<f32> {
    same_len(x, codes)?;
    let mut max = 0f32;
    for &v in x {
        if !v.is_finite() {
            return Err(Error::invalid(
                "vector has a NaN or infinite component".to_string(),
            ));
        }
        max = max.max(v.abs());
    }
    if max == 0.0 {
        codes.fill(0);
        return Ok(0.0);
    }
    let inv = 127.0 / max;
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = (v * inv).round().clamp(-127.0, 127.0) as i8;
    }
    Ok(max / 127.0)
}

/// The vector a [`Quantized`] stands for.
pub fn dequantize_vector(q: &Quantized) -> Vec<f32> {
    q.codes.iter().map(|&c| f32::from(c) * q.scale).collect()
}

/// The cosine distance between two quantized vectors (their scales cancel).
///
/// ```
/// use erlmcp_flow::vector;
/// let a = vector::quantize_vector(&[0.1, 0.2, 0.0]).unwrap();
/// let b = vector::quantize_vector(&[0.2, 0.4, 0.0]).unwrap();
/// assert!(vector::cosine_distance_quantized(&a, &b).unwrap() < 1e-3);
/// ```
pub fn cosine_distance_quantized(a: &Quantized, b: &Quantized) -> Result<f64> {
    cosine_distance(&a.codes, &b.codes)
}

/// The dot product of the vectors two [`Quantized`] stand for.
pub fn dot_quantized(a: &Quantized, b: &Quantized) -> Result<f64> {
    Ok(dot(&a.codes, &b.codes)? * f64::from(a.scale) * f64::from(b.scale))
}

/// The squared L2 distance between the vectors two [`Quantized`] stand for.
pub fn l2sq_quantized(a: &Quantized, b: &Quantized) -> Result<f64> {
    let (sa, sb) = (f64::from(a.scale), f64::from(b.scale));
    let aa = i8::dot(&a.codes, &a.codes) * sa * sa;
    let bb = i8::dot(&b.codes, &b.codes) * sb * sb;
    Ok((aa + bb - 2.0 * dot(&a.codes, &b.codes)? * sa * sb).max(0.0))
}

/// Converts `f32` values to [`f16`](struct@f16) (round to nearest even; overflow gives infinity).
pub fn to_f16(x: &[f32]) -> Vec<f16> {
    x.iter().map(|&v| f16(f32_to_f16_bits(v))).collect()
}

/// Converts [`f16`](struct@f16) values to `f32` (exact).
pub fn from_f16(x: &[f16]) -> Vec<f32> {
    x.iter().map(|v| f16_bits_to_f32(v.0)).collect()
}

/// IEEE binary16 bits to `f32`, exactly (subnormals, infinities and NaN included). Pure
/// Rust: simsimd's conversion is a C call per value.
#[inline]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from(h >> 10) & 0x1F;
    let man = u32::from(h) & 0x3FF;
    let bits = match (exp, man) {
        (0, 0) => sign,
        // Subnormal: value = man · 2^-24.
        (0, _) => {
            // Exact: man < 2^10 and 2^-24 are both representable.
            let v = man as f32 * f32::from_bits(0x3380_0000); // 2^-24
            return if sign != 0 { -v } else { v };
        }
        (0x1F, 0) => sign | 0x7F80_0000,
        (0x1F, _) => sign | 0x7FC0_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// `f32` to IEEE binary16 bits, rounding to nearest even.
#[inline]
pub fn f32_to_f16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xFF) as i32;
    let man = b & 0x7F_FFFF;
    if exp == 0xFF {
        return sign | 0x7C00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1F {
        return sign | 0x7C00; // overflow: infinity
    }
    if e <= 0 {
        if e < -10 {
            return sign; // below half the smallest subnormal: zero
        }
        // Subnormal: shift the mantissa (with its implicit bit) into place, rounding.
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rest = m & ((1u32 << shift) - 1);
        let mut r = m >> shift;
        if rest > half || (rest == half && r & 1 == 1) {
            r += 1;
        }
        return sign | r as u16;
    }
    let mut r = ((e as u32) << 10) | (man >> 13);
    let rest = man & 0x1FFF;
    if rest > 0x1000 || (rest == 0x1000 && r & 1 == 1) {
        r += 1; // may carry into the exponent, up to infinity: still correct
    }
    sign | r as u16
}

/// Per-dimension affine 8-bit codes (faiss's SQ8 scheme): `xᵢ ≈ lowᵢ + stepᵢ · codeᵢ` with
/// each dimension's range learnt from a sample. Kept to measure against the per-vector
/// scale (module documentation); its distances need a decode, so the index does not use it.
#[derive(Debug, Clone, PartialEq)]
pub struct DimQuantizer {
    low: Vec<f32>,
    step: Vec<f32>,
}

impl DimQuantizer {
    /// Learns each dimension's range from `sample` (rows of `dim` values).
    pub fn train(sample: &[f32], dim: usize) -> Result<DimQuantizer> {
        if dim == 0 || sample.is_empty() || sample.len() % dim != 0 {
            return Err(Error::invalid(format!(
                "training sample of {} values is not a non-empty whole number of {dim}-d rows",
                sample.len()
            )));
        }
        let mut low = vec![f32::INFINITY; dim];
        let mut high = vec![f32::NEG_INFINITY; dim];
        for row in sample.chunks_exact(dim) {
            for (i, &v) in row.iter().enumerate() {
                low[i] = low[i].min(v);
                high[i] = high[i].max(v);
            }
        }
        let step = low
            .iter()
            .zip(&high)
            .map(|(l, h)| if h > l { (h - l) / 255.0 } else { 1.0 })
            .collect();
        Ok(DimQuantizer { low, step })
    }

    /// The codes of `x` (values outside the learnt range clamp).
    pub fn encode(&self, x: &[f32]) -> Vec<u8> {
        x.iter()
            .zip(self.low.iter().zip(&self.step))
            .map(|(&v, (l, s))| ((v - l) / s).round().clamp(0.0, 255.0) as u8)
            .collect()
    }

    /// The vector that `codes` stand for.
    pub fn decode(&self, codes: &[u8]) -> Vec<f32> {
        codes
            .iter()
            .zip(self.low.iter().zip(&self.step))
            .map(|(&c, (l, s))| l + s * f32::from(c))
            .collect()
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
