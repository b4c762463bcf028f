use super::*;
use erlmcp_flow_dataset::{self as dataset, Dataset};

/// A small deterministic generator (xorshift*), so failures reproduce.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    pub(crate) fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

fn reference(a: &[f64], b: &[f64]) -> (f64, f64, f64) {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    let cos = if na == 0.0 || nb == 0.0 {
        1.0
    } else {
        1.0 - dot / (na * nb)
    };
    let l2: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    (dot, cos, l2)
}

/// Checks simsimd's and the scalar kernels of `T` against the f64 reference.
fn check_kernels<T: Element + simsimd::SpatialSimilarity + scalar::Num>(
    a: &[T],
    b: &[T],
    tol: f64,
    what: &str,
) {
    let fa: Vec<f64> = a.iter().map(|x| Element::to_f64(*x)).collect();
    let fb: Vec<f64> = b.iter().map(|x| Element::to_f64(*x)).collect();
    let (dot, cos, l2) = reference(&fa, &fb);
    let scale = fa.iter().chain(&fb).map(|x| x * x).sum::<f64>().max(1.0);
    let close = |got: f64, want: f64, kind: &str, abs: f64| {
        assert!(
            (got - want).abs() <= abs,
            "{what} {kind} (len {}): got {got}, want {want}",
            a.len()
        );
    };
    // Miri cannot call simsimd's C code: it checks the scalar loops only.
    let simd = if cfg!(miri) {
        (
            scalar::dot(a, b),
            scalar::cosine_distance(a, b),
            scalar::l2sq(a, b),
        )
    } else {
        (
            <T as simsimd::SpatialSimilarity>::dot(a, b).unwrap(),
            <T as simsimd::SpatialSimilarity>::cos(a, b).unwrap(),
            <T as simsimd::SpatialSimilarity>::l2sq(a, b).unwrap(),
        )
    };
    let sc = (
        scalar::dot(a, b),
        scalar::cosine_distance(a, b),
        scalar::l2sq(a, b),
    );
    for (name, got) in [("simsimd", simd), ("scalar", sc)] {
        close(got.0, dot, &format!("{name} dot"), tol * scale);
        close(got.1, cos, &format!("{name} cos"), tol.max(1e-3));
        close(got.2, l2, &format!("{name} l2sq"), tol * scale);
    }
}

#[test]
fn kernels_match_an_f64_reference_on_random_vectors() {
    let mut rng = Rng::new(1);
    for len in [1usize, 2, 3, 7, 16, 31, 64, 100, 384, 1000, 1536] {
        let a: Vec<f32> = (0..len).map(|_| rng.f32()).collect();
        let b: Vec<f32> = (0..len).map(|_| rng.f32()).collect();
        check_kernels(&a, &b, 1e-5, "f32");
        // f16 inputs, f32 accumulation: only summation error (half-precision accumulation
        // failed this at 1e-5: see .cargo/config.toml).
        check_kernels(&to_f16(&a), &to_f16(&b), 1e-5, "f16");
        let ia: Vec<i8> = (0..len).map(|_| (rng.next() % 255) as i8).collect();
        let ib: Vec<i8> = (0..len).map(|_| (rng.next() % 255) as i8).collect();
        // Integer sums are exact in both implementations.
        check_kernels(&ia, &ib, 0.0, "i8");
    }
}

#[test]
#[cfg_attr(miri, ignore)] // slow under Miri; no unsafe code of its own
fn kernels_match_an_f64_reference_on_real_embeddings() {
    let d = Dataset::load(&dataset::committed_dir(), "minilm-5k", 50, 10).unwrap();
    for i in 0..10 {
        let (a, b) = (d.queries.row(i), d.base.row(i * 3));
        check_kernels(a, b, 1e-6, "f32 real");
        check_kernels(&to_f16(a), &to_f16(b), 1e-3, "f16 real");
        let (qa, qb) = (quantize_vector(a).unwrap(), quantize_vector(b).unwrap());
        check_kernels(&qa.codes, &qb.codes, 0.0, "i8 real");
        // Quantized distances approximate the float ones.
        let exact = cosine_distance(a, b).unwrap();
        let approx = cosine_distance_quantized(&qa, &qb).unwrap();
        assert!((exact - approx).abs() < 0.01, "{exact} vs {approx}");
        let exact = dot(a, b).unwrap();
        assert!((exact - dot_quantized(&qa, &qb).unwrap()).abs() < 0.01);
        let exact = l2sq(a, b).unwrap();
        assert!((exact - l2sq_quantized(&qa, &qb).unwrap()).abs() < 0.02);
    }
}

#[test]
fn zero_vectors_have_cosine_distance_one_to_others() {
    let z = [0.0f32; 8];
    let x = [1.0f32; 8];
    assert_eq!(scalar::cosine_distance(&z, &x), 1.0);
    assert_eq!(scalar::cosine_distance(&z, &z), 0.0);
    let q = quantize_vector(&z).unwrap();
    assert_eq!(q.scale, 0.0);
    assert!(q.codes.iter().all(|&c| c == 0));
    assert_eq!(dequantize_vector(&q), z);
}

#[test]
fn quantization_error_is_at_most_half_a_step() {
    let mut rng = Rng::new(7);
    for len in [1usize, 5, 384] {
        let x: Vec<f32> = (0..len).map(|_| rng.f32() * 0.2).collect();
        let q = quantize_vector(&x).unwrap();
        let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!((q.scale - max / 127.0).abs() < 1e-9);
        assert!(q.codes.iter().any(|c| c.unsigned_abs() == 127));
        for (v, back) in x.iter().zip(dequantize_vector(&q)) {
            assert!((v - back).abs() <= q.scale / 2.0 + 1e-7, "{v} vs {back}");
        }
    }
}

#[test]
fn bad_input_gives_clear_errors() {
    let e = quantize_vector(&[0.1, f32::NAN]).unwrap_err();
    assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
    assert!(quantize_vector(&[f32::INFINITY]).is_err());
    for m in [Metric::Cosine, Metric::Dot, Metric::L2Sq] {
        let e = distance(m, &[f32::NAN, 1.0], &[1.0, 1.0]).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument, "{m:?}");
        for bits in [0x7C00u16, 0xFC00, 0x7E00] {
            // +inf, -inf, NaN as IEEE half bits.
            let h = [f16(0x3C00), f16(bits)];
            assert!(distance(m, &h, &h).is_err(), "{m:?} f16 {bits:#x}");
        }
    }
    assert!(cosine_distance(&[f32::NAN], &[1.0]).is_err());
    let e = dot(&[1i8, 2], &[1i8]).unwrap_err();
    assert!(e.message().contains("different dimensions"), "{e}");
    assert!(cosine_distance(&[1.0f32], &[]).is_err());
    assert!(l2sq(&[1.0f32], &[1.0, 2.0]).is_err());
    assert!(Metric::from_name("hamming").is_err());
    assert!(Metric::from_code(9).is_err());
    assert!(DimQuantizer::train(&[1.0, 2.0, 3.0], 2).is_err());
    assert!(DimQuantizer::train(&[], 2).is_err());
    assert!(DimQuantizer::train(&[1.0], 0).is_err());
}

#[test]
fn metric_names_and_codes_round_trip() {
    for m in [Metric::Cosine, Metric::Dot, Metric::L2Sq] {
        assert_eq!(Metric::from_name(m.name()).unwrap(), m);
        assert_eq!(Metric::from_code(m.code()).unwrap(), m);
    }
}

#[test]
#[cfg_attr(miri, ignore)] // slow under Miri; no unsafe code of its own
fn per_dimension_codes_decode_within_a_step() {
    let d = Dataset::load(&dataset::committed_dir(), "minilm-5k", 500, 1).unwrap();
    let dq = DimQuantizer::train(&d.base.data, d.base.cols).unwrap();
    for i in 0..20 {
        let x = d.base.row(i);
        let back = dq.decode(&dq.encode(x));
        for (j, (a, b)) in x.iter().zip(&back).enumerate() {
            assert!((a - b).abs() <= dq.step[j] / 2.0 + 1e-6);
        }
    }
}

/// Brute-force recall@10 of int8 codes on the committed MiniLM subset: the calibrated
/// per-vector scale must beat the fixed `x · 127` (the reason it exists) and reach 0.97.
#[test]
#[cfg_attr(miri, ignore)] // slow under Miri; no unsafe code of its own
fn calibrated_codes_beat_a_fixed_scale_on_real_embeddings() {
    let d = Dataset::load(&dataset::committed_dir(), "minilm-5k", 5000, 200).unwrap();
    let fixed = |x: &[f32]| -> Vec<i8> {
        x.iter()
            .map(|v| (v * 127.0).round().clamp(-127.0, 127.0) as i8)
            .collect()
    };
    let recall_with = |code: &dyn Fn(&[f32]) -> Vec<i8>| {
        let base: Vec<Vec<i8>> = (0..d.base.rows).map(|i| code(d.base.row(i))).collect();
        let found: Vec<Vec<u64>> = (0..d.queries.rows)
            .map(|qi| {
                let q = code(d.queries.row(qi));
                let mut s: Vec<(f64, u64)> = base
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (i8::cosine_distance(&q, b), i as u64))
                    .collect();
                s.sort_by(|a, b| a.0.total_cmp(&b.0));
                s.iter().take(10).map(|p| p.1).collect()
            })
            .collect();
        d.recall(&found, 10)
    };
    let calibrated = recall_with(&|x| quantize_vector(x).unwrap().codes);
    let fixed = recall_with(&fixed);
    assert!(
        calibrated > fixed,
        "calibrated {calibrated} vs fixed {fixed}"
    );
    assert!(calibrated >= 0.97, "calibrated recall {calibrated}");
}

#[test]
#[cfg_attr(miri, ignore)] // slow under Miri; no unsafe code of its own
fn subset_ground_truth_is_recomputed() {
    let d = Dataset::load(&dataset::committed_dir(), "minilm-5k", 100, 5).unwrap();
    for qi in 0..5 {
        assert!(d.truth.row(qi).iter().all(|&i| (i as usize) < 100));
    }
    // On the whole committed set the stored truth is used and agrees with brute force.
    let full = Dataset::load(&dataset::committed_dir(), "minilm-5k", 5000, 3).unwrap();
    let again = dataset::exact_neighbours(&full.base, &full.queries, 10);
    for qi in 0..3 {
        assert_eq!(&full.truth.row(qi)[..10], again.row(qi));
    }
}

#[test]
#[cfg_attr(miri, ignore)] // slow under Miri; no unsafe code of its own
fn capabilities_are_reported() {
    assert!(!simd_capabilities().is_empty());
}

/// Every one of the 65536 half floats converts to the f32 it denotes and back to itself;
/// f32 → f16 rounds to nearest even (checked against the exact midpoints).
#[test]
fn half_float_conversions_are_exact_and_round_to_nearest_even() {
    let steps = if cfg!(miri) { 251 } else { 1 };
    // Exact powers of two from their bits (`powi` is not exact under Miri, by design).
    let pow2 = |e: i32| f64::from_bits(((e + 1023) as u64) << 52);
    for h in (0..=u16::MAX).step_by(steps) {
        let f = f16_bits_to_f32(h);
        let exp = (h >> 10) & 0x1F;
        let man = u32::from(h & 0x3FF);
        let sign = if h & 0x8000 != 0 { -1.0f64 } else { 1.0 };
        match exp {
            0x1F if man == 0 => assert!(f.is_infinite() && (f < 0.0) == (sign < 0.0)),
            0x1F => assert!(f.is_nan()),
            0 => assert_eq!(f64::from(f), sign * f64::from(man) * pow2(-24), "{h:#x}"),
            e => assert_eq!(
                f64::from(f),
                sign * (1.0 + f64::from(man) / 1024.0) * pow2(i32::from(e) - 15),
                "{h:#x}"
            ),
        }
        if !f.is_nan() {
            assert_eq!(f32_to_f16_bits(f), h, "round trip of {h:#x}");
        } else {
            assert!(f16_bits_to_f32(f32_to_f16_bits(f)).is_nan());
        }
    }
    // Midpoints between neighbouring halves go to the even one; just above goes up.
    for h in [0x3C00u16, 0x3C01, 0x0001, 0x0002, 0x7BFE] {
        let (lo, hi) = (
            f64::from(f16_bits_to_f32(h)),
            f64::from(f16_bits_to_f32(h + 1)),
        );
        let mid = ((lo + hi) / 2.0) as f32;
        let even = if h & 1 == 0 { h } else { h + 1 };
        assert_eq!(f32_to_f16_bits(mid), even, "midpoint above {h:#x}");
        assert_eq!(f32_to_f16_bits(f32::from_bits(mid.to_bits() + 1)), h + 1);
    }
    assert_eq!(f32_to_f16_bits(1e6), 0x7C00, "overflow is infinity");
    assert_eq!(f32_to_f16_bits(-1e-10), 0x8000, "underflow keeps the sign");
    assert_eq!(f32_to_f16_bits(65504.0), 0x7BFF);
}

/// simsimd's int8 kernels sum in i32; the public functions stay exact past that range.
#[test]
#[cfg_attr(miri, ignore)] // long vectors through the scalar loops: slow under Miri
fn long_int8_vectors_do_not_overflow() {
    let n = 200_000usize;
    let a = vec![127i8; n];
    let b = vec![-127i8; n];
    assert_eq!(dot(&a, &a).unwrap(), 127.0 * 127.0 * n as f64);
    assert_eq!(dot(&a, &b).unwrap(), -127.0 * 127.0 * n as f64);
    assert_eq!(l2sq(&a, &b).unwrap(), 254.0 * 254.0 * n as f64);
    assert!(cosine_distance(&a, &a).unwrap().abs() < 1e-12);
    assert!((cosine_distance(&a, &b).unwrap() - 2.0).abs() < 1e-12);
}
