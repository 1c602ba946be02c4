//! `e^x` in single precision, rounded as llama.cpp's x86 AVX-512 build
//! rounds it in softmax and SiLU.
//!
//! Why not libm's `expf`: it is correctly rounded more often, but llama.cpp
//! differs from it in the last bit for about half of all inputs, and with
//! 8-bit activations such a bit, once it moves an activation across a
//! rounding boundary, changes every later logit. Greedy continuations then
//! part within a few tokens. Computing the same function gives the same
//! bits, and the same continuations.
//!
//! The method: `x = n·ln2 + r` with `n` rounded to nearest through the
//! `1.5·2²³` shift and ln 2 split in a short high part and a correction (so
//! `n·ln2_hi` is exact); `e^r ≈ 1 + C0·r + … + C4·r⁵` evaluated in the
//! paired-Horner order below; `2ⁿ` applied with one correctly rounded
//! multiplication (AVX-512's `scalef`). The polynomial's coefficients are
//! Arm's published minimax fit from the Arm Optimized Routines
//! (`math/aarch64/v_expf.c`, MIT OR Apache-2.0 WITH LLVM-exception), which
//! llama.cpp uses too; the same arithmetic needs the same constants.
//! Maximum error ≈ 1.95 ulp.

/// `1.5·2²³`: adding it rounds a float of magnitude < 2²² to an integer.
pub(crate) const SHIFT: f32 = f32::from_bits(0x4b40_0000);
/// log₂ e.
pub(crate) const LOG2E: f32 = f32::from_bits(0x3fb8_aa3b);
/// ln 2 = LN2_HI + LN2_LO, with LN2_HI short enough that `n·LN2_HI` is exact.
pub(crate) const LN2_HI: f32 = f32::from_bits(0x3f31_7200);
pub(crate) const LN2_LO: f32 = f32::from_bits(0x35bf_be8e);
/// `e^r − 1 ≈ C0·r + C1·r² + C2·r³ + C3·r⁴ + C4·r⁵` on |r| ≤ ln2/2.
pub(crate) const C0: f32 = f32::from_bits(0x3f7f_fff6);
pub(crate) const C1: f32 = f32::from_bits(0x3eff_fedb);
pub(crate) const C2: f32 = f32::from_bits(0x3e2a_af33);
pub(crate) const C3: f32 = f32::from_bits(0x3d2b_9f17);
pub(crate) const C4: f32 = f32::from_bits(0x3c07_2010);

/// `e^x`; every multiply-add fused, as the SIMD version computes it.
pub fn exp(x: f32) -> f32 {
    let z = x.mul_add(LOG2E, SHIFT);
    let n = z - SHIFT;
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let r2 = r * r;
    let p = C4
        .mul_add(r, C3)
        .mul_add(r2, C2.mul_add(r, C1))
        .mul_add(r2, C0.mul_add(r, 1.0));
    times_pow2(p, n)
}

/// `2^k` for an integer `k` in -126..=127.
fn pow2(k: i32) -> f32 {
    f32::from_bits(((k + 127) as u32) << 23)
}

/// `p·2ⁿ` for an integral `n`, rounded once (`p` is near 1): the SIMD
/// versions take this path only for lanes with |n| > 126, where `2ⁿ` is no
/// normal float.
pub(crate) fn times_pow2(p: f32, n: f32) -> f32 {
    if n.abs() <= 126.0 {
        p * pow2(n as i32)
    } else if n.abs() > 192.0 {
        // Far below the smallest subnormal, or above the largest float.
        if n <= 0.0 { 0.0 } else { f32::INFINITY }
    } else if n < 0.0 {
        // p·2^(n+100) is exact; only the last product rounds (to a
        // subnormal or zero).
        p * pow2(n as i32 + 100) * pow2(-100)
    } else {
        p * pow2(n as i32 - 100) * pow2(100)
    }
}

#[cfg(test)]
mod tests {
    use super::exp;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        // Softmax meets (-∞, 0], SiLU roughly ±30; check ±88 densely.
        let mut worst = 0;
        for i in 0..=400_000 {
            let x = -88.0 + 176.0 * i as f32 / 400_000.0;
            let (ours, libm) = (exp(x), (x as f64).exp() as f32);
            worst = worst.max(ulps(ours, libm));
        }
        assert!(worst <= 2, "worst error {worst} ulp");
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        // Subnormal results, rounded once: e^-100 ≈ 3.72e-44 (26·2^-149).
        let sub = exp(-100.0);
        assert!(sub > 0.0 && sub < f32::MIN_POSITIVE);
        assert!(ulps(sub, (-100f64).exp() as f32) <= 1);
        // Just inside the normal range at both ends.
        assert!(ulps(exp(88.5), 88.5f64.exp() as f32) <= 2);
        assert!(ulps(exp(-87.0), (-87f64).exp() as f32) <= 2);
    }
}
