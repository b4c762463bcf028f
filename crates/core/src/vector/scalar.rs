//! Portable distance loops: the fallback when simsimd is switched off, and the second
//! opinion the tests compare simsimd with. Integer inputs accumulate exactly in `i64`;
//! floating inputs in `f64`.

use super::f16;

/// A number the loops can read as `f64`, or, for `i8`, as an exact integer.
pub(crate) trait Num: Copy {
    fn to_f64(self) -> f64;
    /// False for NaN and infinities.
    fn finite(self) -> bool {
        self.to_f64().is_finite()
    }
    /// `Some` for integer types: sums are then exact.
    fn to_i64(self) -> Option<i64> {
        None
    }
}

impl Num for i8 {
    #[inline]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    #[inline]
    fn to_i64(self) -> Option<i64> {
        Some(i64::from(self))
    }
}

impl Num for f16 {
    #[inline]
    fn to_f64(self) -> f64 {
        f64::from(super::f16_bits_to_f32(self.0))
    }
    /// From the bits: an all-ones exponent is infinity or NaN.
    #[inline]
    fn finite(self) -> bool {
        self.0 & 0x7C00 != 0x7C00
    }
}

impl Num for f32 {
    #[inline]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

/// `(Σ aᵢbᵢ, Σ aᵢ², Σ bᵢ²)`.
fn sums<T: Num>(a: &[T], b: &[T]) -> (f64, f64, f64) {
    if let (Some(_), Some(_)) = (
        a.first().and_then(|v| v.to_i64()),
        b.first().and_then(|v| v.to_i64()),
    ) {
        let (mut ab, mut aa, mut bb) = (0i64, 0i64, 0i64);
        for (x, y) in a.iter().zip(b) {
            let (x, y) = (x.to_i64().unwrap_or(0), y.to_i64().unwrap_or(0));
            ab += x * y;
            aa += x * x;
            bb += y * y;
        }
        return (ab as f64, aa as f64, bb as f64);
    }
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (x.to_f64(), y.to_f64());
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    (ab, aa, bb)
}

pub(crate) fn dot<T: Num>(a: &[T], b: &[T]) -> f64 {
    sums(a, b).0
}

pub(crate) fn cosine_distance<T: Num>(a: &[T], b: &[T]) -> f64 {
    let (ab, aa, bb) = sums(a, b);
    if aa == 0.0 && bb == 0.0 {
        0.0
    } else if aa == 0.0 || bb == 0.0 {
        1.0
    } else {
        (1.0 - ab / (aa.sqrt() * bb.sqrt())).max(0.0)
    }
}

pub(crate) fn l2sq<T: Num>(a: &[T], b: &[T]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = x.to_f64() - y.to_f64();
            d * d
        })
        .sum()
}
