//! AVX2 + FMA + F16C kernels (x86-64), chosen at run time when the CPU has
//! all three. The only module of the workspace with `unsafe`: loads through
//! raw pointers and calls into `#[target_feature]` functions. Each unsafe
//! block is one such operation, justified where it stands.
#![allow(unsafe_code)]

use crate::Kernels;

#[cfg(target_arch = "x86_64")]
pub fn kernels() -> Option<Kernels> {
    let has = std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c");
    has.then_some(Kernels {
        name: "avx2",
        dot_q4_1: x86::dot_q4_1,
        dot_q8_0: x86::dot_q8_0,
        dot_q4_1_x4: x86::dot_q4_1_x4,
        dot_q8_0_x4: x86::dot_q8_0_x4,
        dot_q4_1_by4: x86::dot_q4_1_by4,
        dot_q8_0_by4: x86::dot_q8_0_by4,
        dot_q4_1_by8: x86::dot_q4_1_by8,
        dot_q8_0_by8: x86::dot_q8_0_by8,
        quantize: x86::quantize_q8_1,
        dot_f16: x86::dot_f16,
        dot_f16_tiled: x86::dot_f16_tiled,
        axpy_f16: x86::axpy_f16,
        round_f16: x86::round_f16,
        rope: x86::rope,
        exp_sum: x86::exp_sum,
        silu_mul: x86::silu_mul,
    })
}

#[cfg(not(target_arch = "x86_64"))]
pub fn kernels() -> Option<Kernels> {
    None
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    use crate::exp::{C0, C1, C2, C3, C4, LN2_HI, LN2_LO, LOG2E, SHIFT, times_pow2};
    use crate::scalar::{self, LANES, ROW_LANES};
    use crate::{BlockQ8_1, QK, Scales8, WeightType};

    // The public entry points are only installed by `kernels()` after the
    // features were detected, which is what makes the calls below sound.

    pub fn dot_q4_1(w: &[u8], a: &[BlockQ8_1]) -> f32 {
        assert!(w.len() >= a.len() * WeightType::Q4_1.block_bytes());
        // SAFETY: avx2, fma and f16c were detected before this function
        // was installed (see `kernels`).
        unsafe { dot_q4_1_avx2(w, a) }
    }

    pub fn dot_q4_1_x4(w: &[u8], row_bytes: usize, a: &[BlockQ8_1]) -> [f32; 4] {
        assert!(row_bytes >= a.len() * WeightType::Q4_1.block_bytes());
        assert!(w.len() >= 3 * row_bytes + a.len() * WeightType::Q4_1.block_bytes());
        // SAFETY: as for `dot_q4_1`.
        unsafe { dot_q4_1_x4_avx2(w, row_bytes, a) }
    }

    pub fn dot_q8_0_x4(w: &[u8], row_bytes: usize, a: &[BlockQ8_1]) -> [f32; 4] {
        assert!(row_bytes >= a.len() * WeightType::Q8_0.block_bytes());
        assert!(w.len() >= 3 * row_bytes + a.len() * WeightType::Q8_0.block_bytes());
        // SAFETY: as for `dot_q4_1`.
        unsafe { dot_q8_0_x4_avx2(w, row_bytes, a) }
    }

    pub fn dot_q4_1_by4(w: &[u8], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
        for a in a {
            assert!(w.len() >= a.len() * WeightType::Q4_1.block_bytes());
        }
        // SAFETY: as for `dot_q4_1`.
        unsafe { dot_q4_1_by4_avx2(w, a) }
    }

    pub fn dot_q8_0_by4(w: &[u8], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
        for a in a {
            assert!(w.len() >= a.len() * WeightType::Q8_0.block_bytes());
        }
        // SAFETY: as for `dot_q4_1`.
        unsafe { dot_q8_0_by4_avx2(w, a) }
    }

    pub fn dot_q4_1_by8(w: &[u8], a: [&[BlockQ8_1]; 8], scales: &[Scales8]) -> [f32; 8] {
        check_by8(w, WeightType::Q4_1, a, scales);
        // SAFETY: as for `dot_q4_1`.
        unsafe { dot_q4_1_by8_avx2(w, a, scales) }
    }

    pub fn dot_q8_0_by8(w: &[u8], a: [&[BlockQ8_1]; 8], scales: &[Scales8]) -> [f32; 8] {
        check_by8(w, WeightType::Q8_0, a, scales);
        // SAFETY: as for `dot_q4_1`.
        unsafe { dot_q8_0_by8_avx2(w, a, scales) }
    }

    /// The eight-row kernels read `scales.len()` blocks of the row and of
    /// every activation row.
    fn check_by8(w: &[u8], ty: WeightType, a: [&[BlockQ8_1]; 8], scales: &[Scales8]) {
        assert!(w.len() >= scales.len() * ty.block_bytes());
        for a in a {
            assert!(a.len() >= scales.len());
        }
    }

    pub fn dot_q8_0(w: &[u8], a: &[BlockQ8_1]) -> f32 {
        assert!(w.len() >= a.len() * WeightType::Q8_0.block_bytes());
        // SAFETY: as for `dot_q4_1`.
        unsafe { dot_q8_0_avx2(w, a) }
    }

    pub fn quantize_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
        // SAFETY: as for `dot_q4_1`.
        unsafe { quantize_q8_1_avx2(x, out) }
    }

    pub fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
        assert_eq!(a.len(), b.len());
        // SAFETY: as for `dot_q4_1`.
        unsafe { dot_f16_avx2(a, b) }
    }

    pub fn dot_f16_tiled(a: &[f32], b: &[f16]) -> f32 {
        assert_eq!(a.len(), b.len());
        // SAFETY: as for `dot_q4_1`.
        unsafe { dot_f16_tiled_avx2(a, b) }
    }

    pub fn axpy_f16(s: f32, x: &[f16], y: &mut [f32]) {
        assert_eq!(x.len(), y.len());
        // SAFETY: as for `dot_q4_1`.
        unsafe { axpy_f16_avx2(s, x, y) }
    }

    pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
        // SAFETY: as for `dot_q4_1`.
        unsafe { rope_fma(x, cos, sin) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn rope_fma(x: &mut [f32], cos: &[f32], sin: &[f32]) {
        for head in x.chunks_exact_mut(2 * cos.len()) {
            for ((pair, &c), &s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
                let (a, b) = (_mm_set_ss(pair[0]), _mm_set_ss(pair[1]));
                let (c, s) = (_mm_set_ss(c), _mm_set_ss(s));
                pair[0] = _mm_cvtss_f32(_mm_fmsub_ss(a, c, _mm_mul_ss(b, s)));
                pair[1] = _mm_cvtss_f32(_mm_fmadd_ss(a, s, _mm_mul_ss(b, c)));
            }
        }
    }

    pub fn round_f16(x: &mut [f32]) {
        // SAFETY: as for `dot_q4_1`.
        unsafe { round_f16_avx2(x) }
    }

    /// 8 f16 values widened to f32.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load_f16x8(x: &[f16]) -> __m256 {
        assert!(x.len() >= 8);
        // SAFETY: 8 f16 are 16 readable bytes (f16 is a plain u16); the load
        // is unaligned.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(x.as_ptr().cast()) })
    }

    /// The first 8 f32 of `x`, loaded unaligned.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load_f32x8(x: &[f32]) -> __m256 {
        let x = &x[..8];
        // SAFETY: `x` is 8 readable f32 (the slice above is bounds-checked);
        // the load is unaligned.
        unsafe { _mm256_loadu_ps(x.as_ptr()) }
    }

    /// `v` stored into the first 8 f32 of `out`, unaligned.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn store_f32x8(out: &mut [f32], v: __m256) {
        let out = &mut out[..8];
        // SAFETY: `out` is 8 writable f32 (the slice above is bounds-checked);
        // the store is unaligned.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_f16_avx2(a: &[f32], b: &[f16]) -> f32 {
        // 64 lanes (eight vectors) over whole groups of 64, folded as
        // `scalar::fold64` then `fold16`, the rest in f64: llama.cpp's
        // vector dot on AVX-512, which scores the keys of a single query.
        let whole = a.len() / ROW_LANES * ROW_LANES;
        let mut acc = [_mm256_setzero_ps(); 8];
        for (x, y) in a[..whole]
            .chunks_exact(ROW_LANES)
            .zip(b[..whole].chunks_exact(ROW_LANES))
        {
            for (k, acc) in acc.iter_mut().enumerate() {
                // SAFETY: `x` is 64 readable f32, 8k + 8 ≤ 64; unaligned.
                let xv = unsafe { _mm256_loadu_ps(x[8 * k..].as_ptr()) };
                *acc = _mm256_fmadd_ps(xv, load_f16x8(&y[8 * k..]), *acc);
            }
        }
        // Accumulator j of 16 lanes is vectors (2j, 2j + 1).
        let lo = _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
        let hi = _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
        let mut sum = f64::from(hsum(_mm256_add_ps(hi, lo)));
        for (x, y) in a[whole..].iter().zip(&b[whole..]) {
            sum += f64::from(x * y.to_f32());
        }
        sum as f32
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_f16_tiled_avx2(a: &[f32], b: &[f16]) -> f32 {
        // 16 lanes (two vectors), folded as `scalar::fold16`: the order
        // llama.cpp's AVX-512 build sums attention scores in, so they come
        // out bit for bit the same. A short tail joins the lanes
        // zero-padded, as in the scalar version.
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut step = |x: &[f32], y: &[f16]| {
            let (xl, xh) = (load_f32x8(x), load_f32x8(&x[8..]));
            lo = _mm256_fmadd_ps(xl, load_f16x8(y), lo);
            hi = _mm256_fmadd_ps(xh, load_f16x8(&y[8..]), hi);
        };
        let whole = a.len() / LANES * LANES;
        for (x, y) in a[..whole]
            .chunks_exact(LANES)
            .zip(b[..whole].chunks_exact(LANES))
        {
            step(x, y);
        }
        if whole < a.len() {
            let (mut x, mut y) = ([0f32; LANES], [f16::ZERO; LANES]);
            x[..a.len() - whole].copy_from_slice(&a[whole..]);
            y[..a.len() - whole].copy_from_slice(&b[whole..]);
            step(&x, &y);
        }
        hsum(_mm256_add_ps(hi, lo))
    }

    pub fn exp_sum(x: &mut [f32], max: f32) -> f64 {
        // SAFETY: as for `dot_q4_1`.
        unsafe { exp_sum_avx2(x, max) }
    }

    pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
        assert!(up.len() >= gate.len() && out.len() >= gate.len());
        // SAFETY: as for `dot_q4_1`.
        unsafe { silu_mul_avx2(gate, up, out) }
    }

    /// `e^x` per lane, bit for bit `crate::exp::exp` (see there).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn exp8(x: __m256) -> __m256 {
        let c = _mm256_set1_ps;
        let shift = c(SHIFT);
        let z = _mm256_fmadd_ps(x, c(LOG2E), shift);
        let n = _mm256_sub_ps(z, shift);
        let r = _mm256_fnmadd_ps(n, c(LN2_LO), _mm256_fnmadd_ps(n, c(LN2_HI), x));
        let r2 = _mm256_mul_ps(r, r);
        let p = _mm256_fmadd_ps(
            _mm256_fmadd_ps(
                _mm256_fmadd_ps(c(C4), r, c(C3)),
                r2,
                _mm256_fmadd_ps(c(C2), r, c(C1)),
            ),
            r2,
            _mm256_fmadd_ps(c(C0), r, c(1.0)),
        );
        // 2ⁿ from the integer that the shift left in z's low mantissa bits,
        // moved into the exponent field (exact for |n| ≤ 126).
        let pow2 = _mm256_castsi256_ps(_mm256_add_epi32(
            _mm256_slli_epi32::<23>(_mm256_castps_si256(z)),
            _mm256_set1_epi32(0x3f80_0000),
        ));
        let result = _mm256_mul_ps(p, pow2);
        let abs_n = _mm256_andnot_ps(c(-0.0), n);
        let ordinary = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(abs_n, c(126.0)));
        if ordinary == 0xff {
            return result;
        }
        // Underflow, overflow or NaN in some lane: those lanes in scalar.
        let (mut out, mut ps, mut ns) = ([0f32; 8], [0f32; 8], [0f32; 8]);
        store_f32x8(&mut out, result);
        store_f32x8(&mut ps, p);
        store_f32x8(&mut ns, n);
        for l in 0..8 {
            if ordinary & (1 << l) == 0 {
                out[l] = times_pow2(ps[l], ns[l]);
            }
        }
        load_f32x8(&out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn exp_sum_avx2(x: &mut [f32], max: f32) -> f64 {
        let m = _mm256_set1_ps(max);
        let mut sum = 0f64;
        let mut chunks = x.chunks_exact_mut(LANES);
        for c in &mut chunks {
            let lo = exp8(_mm256_sub_ps(load_f32x8(c), m));
            let hi = exp8(_mm256_sub_ps(load_f32x8(&c[8..]), m));
            store_f32x8(c, lo);
            store_f32x8(&mut c[8..], hi);
            sum += f64::from(hsum(_mm256_add_ps(hi, lo)));
        }
        sum + scalar::exp_sum(chunks.into_remainder(), max)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn silu_mul_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
        // Whole groups of 16 in vectors (as 2 × 8: the same values), the
        // tail in scalar with libm, as `scalar::silu_mul`.
        let whole = gate.len() / LANES * LANES;
        let one = _mm256_set1_ps(1.0);
        for i in (0..whole).step_by(8) {
            let g = load_f32x8(&gate[i..]);
            let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
            let s = _mm256_div_ps(g, _mm256_add_ps(one, e));
            store_f32x8(&mut out[i..], _mm256_mul_ps(s, load_f32x8(&up[i..])));
        }
        scalar::silu_mul(
            &gate[whole..],
            &up[whole..gate.len()],
            &mut out[whole..gate.len()],
        );
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn axpy_f16_avx2(s: f32, x: &[f16], y: &mut [f32]) {
        let sv = _mm256_set1_ps(s);
        let mut yc = y.chunks_exact_mut(8);
        let mut xc = x.chunks_exact(8);
        for (out, x) in (&mut yc).zip(&mut xc) {
            let v = _mm256_fmadd_ps(sv, load_f16x8(x), load_f32x8(out));
            store_f32x8(out, v);
        }
        for (o, v) in yc.into_remainder().iter_mut().zip(xc.remainder()) {
            *o = s.mul_add(v.to_f32(), *o);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn round_f16_avx2(x: &mut [f32]) {
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(load_f32x8(c));
            store_f32x8(c, _mm256_cvtph_ps(h));
        }
        for v in chunks.into_remainder() {
            *v = f16_round(*v);
        }
    }

    /// `x` rounded to the nearest f16 (F16C), as f32.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn f16_round(x: f32) -> f32 {
        let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(x));
        _mm_cvtss_f32(_mm_cvtph_ps(h))
    }

    /// Two little-endian f16 values at `b[0..4]` as f32.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn f16_pair(b: &[u8]) -> (f32, f32) {
        let bits = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
        (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
    }

    /// 32 signed bytes of an activation block.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load_qs(b: &BlockQ8_1) -> __m256i {
        // SAFETY: `qs` is 32 readable bytes; the load is unaligned.
        unsafe { _mm256_loadu_si256(b.qs.as_ptr().cast()) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// `Σ q·q_a` of one Q4_1 block as 8 i32 lanes, and its (d, m).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q4_1_block(wb: &[u8], ab: &BlockQ8_1) -> (__m256i, f32, f32) {
        q4_1_block_with(wb, load_qs(ab))
    }

    /// [`q4_1_block`] with the activation's 32 bytes already loaded.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q4_1_block_with(wb: &[u8], aq: __m256i) -> (__m256i, f32, f32) {
        let (wq, d, m) = q4_1_unpack(wb);
        (q4_1_product(wq, aq), d, m)
    }

    /// A Q4_1 block's 32 weights as bytes (element j the low nibble of
    /// byte j, element j+16 the high one), and its (d, m).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q4_1_unpack(wb: &[u8]) -> (__m256i, f32, f32) {
        let (d, m) = f16_pair(wb);
        let nibbles = &wb[4..20];
        // SAFETY: `nibbles` is 16 readable bytes; the load is unaligned.
        let q = unsafe { _mm_loadu_si128(nibbles.as_ptr().cast()) };
        let low = _mm_set1_epi8(0x0F);
        // Element j is the low nibble of byte j, element j+16 the high one.
        let lo = _mm_and_si128(q, low);
        let hi = _mm_and_si128(_mm_srli_epi16(q, 4), low);
        (_mm256_set_m128i(hi, lo), d, m)
    }

    /// `Σ q·q_a` of unpacked Q4_1 weights and an activation block, as 8
    /// i32 lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q4_1_product(wq: __m256i, aq: __m256i) -> __m256i {
        // Unsigned 4-bit × signed 8-bit pairs fit i16 (≤ 2·15·128).
        _mm256_madd_epi16(_mm256_maddubs_epi16(wq, aq), _mm256_set1_epi16(1))
    }

    /// One row against four activation rows: each pair's sums exactly as
    /// `dot_q4_1_avx2` forms them, each weight block unpacked once.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q4_1_by4_avx2(w: &[u8], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
        const BYTES: usize = WeightType::Q4_1.block_bytes();
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut mins = [0f32; 4];
        let blocks = a.iter().map(|a| a.len()).min().unwrap_or(0);
        for (b, wb) in w.chunks_exact(BYTES).take(blocks).enumerate() {
            let (wq, d, m) = q4_1_unpack(wb);
            for t in 0..4 {
                let ab = &a[t][b];
                let p = q4_1_product(wq, load_qs(ab));
                mins[t] += m * ab.s;
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * ab.d), _mm256_cvtepi32_ps(p), acc[t]);
            }
        }
        std::array::from_fn(|t| hsum(acc[t]) + mins[t])
    }

    /// One row against eight activation rows: each pair's sums exactly as
    /// `dot_q4_1_avx2` forms them, each weight block unpacked once, and the
    /// rows' `d·d_a` and `m·s_a` as one vector product each (the same
    /// rounding as the scalar products: a lane of a vector multiply or add
    /// is the scalar operation).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q4_1_by8_avx2(w: &[u8], a: [&[BlockQ8_1]; 8], scales: &[Scales8]) -> [f32; 8] {
        const BYTES: usize = WeightType::Q4_1.block_bytes();
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut mins = _mm256_setzero_ps();
        let mut dd = [0f32; 8];
        for (b, (wb, sc)) in w.chunks_exact(BYTES).zip(scales).enumerate() {
            let (wq, d, m) = q4_1_unpack(wb);
            store_f32x8(&mut dd, _mm256_mul_ps(_mm256_set1_ps(d), load_f32x8(&sc.d)));
            mins = _mm256_add_ps(mins, _mm256_mul_ps(_mm256_set1_ps(m), load_f32x8(&sc.s)));
            for t in 0..8 {
                let p = q4_1_product(wq, load_qs(&a[t][b]));
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dd[t]), _mm256_cvtepi32_ps(p), acc[t]);
            }
        }
        let mut m = [0f32; 8];
        store_f32x8(&mut m, mins);
        std::array::from_fn(|t| hsum(acc[t]) + m[t])
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q4_1_avx2(w: &[u8], a: &[BlockQ8_1]) -> f32 {
        // One accumulator, blocks in order, as llama.cpp sums: two
        // independent chains measured no faster here (the loop waits on
        // memory, not on the chain) and would round differently.
        const BYTES: usize = WeightType::Q4_1.block_bytes();
        let mut acc = _mm256_setzero_ps();
        let mut mins = 0f32;
        for (wb, ab) in w.chunks_exact(BYTES).zip(a) {
            let (p, d, m) = q4_1_block(wb, ab);
            mins += m * ab.s;
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * ab.d), _mm256_cvtepi32_ps(p), acc);
        }
        hsum(acc) + mins
    }

    /// Four rows (`row_bytes` apart) against one activation row: each
    /// row's sums exactly as `dot_q4_1_avx2` forms them, interleaved so the
    /// four dependency chains overlap and the activation block is loaded
    /// once.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q4_1_x4_avx2(w: &[u8], row_bytes: usize, a: &[BlockQ8_1]) -> [f32; 4] {
        let [mut a0, mut a1, mut a2, mut a3] = [_mm256_setzero_ps(); 4];
        let [mut m0, mut m1, mut m2, mut m3] = [0f32; 4];
        for ([w0, w1, w2, w3], ab) in four_rows(w, row_bytes, WeightType::Q4_1, a) {
            let aq = load_qs(ab);
            let step = |wb: &[u8], acc: &mut __m256, mins: &mut f32| {
                let (p, d, m) = q4_1_block_with(wb, aq);
                *mins += m * ab.s;
                *acc = _mm256_fmadd_ps(_mm256_set1_ps(d * ab.d), _mm256_cvtepi32_ps(p), *acc);
            };
            step(w0, &mut a0, &mut m0);
            step(w1, &mut a1, &mut m1);
            step(w2, &mut a2, &mut m2);
            step(w3, &mut a3, &mut m3);
        }
        [hsum(a0) + m0, hsum(a1) + m1, hsum(a2) + m2, hsum(a3) + m3]
    }

    /// The blocks of four rows `row_bytes` apart, side by side, with the
    /// activation block they meet.
    fn four_rows<'a>(
        w: &'a [u8],
        row_bytes: usize,
        ty: WeightType,
        a: &'a [BlockQ8_1],
    ) -> impl Iterator<Item = ([&'a [u8]; 4], &'a BlockQ8_1)> {
        let bytes = ty.block_bytes();
        let len = a.len() * bytes;
        let rows = |r: usize| w[r * row_bytes..r * row_bytes + len].chunks_exact(bytes);
        rows(0)
            .zip(rows(1))
            .zip(rows(2))
            .zip(rows(3))
            .map(|(((w0, w1), w2), w3)| [w0, w1, w2, w3])
            .zip(a)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn q8_0_block(wb: &[u8], aq: __m256i) -> (__m256, f32) {
        let (wq, d) = q8_0_unpack(wb);
        (q8_0_product(wq, aq), d)
    }

    /// A Q8_0 block's 32 weights and its scale.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q8_0_unpack(wb: &[u8]) -> (__m256i, f32) {
        let d = f16_pair(&[wb[0], wb[1], 0, 0]).0;
        let qs = &wb[2..34];
        // SAFETY: `qs` is 32 readable bytes; the load is unaligned.
        let wq = unsafe { _mm256_loadu_si256(qs.as_ptr().cast()) };
        (wq, d)
    }

    /// `Σ w·q_a` of Q8_0 weights and an activation block, as 8 f32 lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q8_0_product(wq: __m256i, aq: __m256i) -> __m256 {
        // maddubs wants its first operand unsigned: move the weights'
        // signs onto the activations (|w|·(a·sign w) = w·a). Weights are
        // in -127..=127, so |w| fits and the pairs fit i16.
        let p = _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(aq, wq));
        _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)))
    }

    /// One Q8_0 row against four activation rows, as `dot_q4_1_by4_avx2`.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q8_0_by4_avx2(w: &[u8], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
        const BYTES: usize = WeightType::Q8_0.block_bytes();
        let mut acc = [_mm256_setzero_ps(); 4];
        let blocks = a.iter().map(|a| a.len()).min().unwrap_or(0);
        for (b, wb) in w.chunks_exact(BYTES).take(blocks).enumerate() {
            let (wq, d) = q8_0_unpack(wb);
            for t in 0..4 {
                let ab = &a[t][b];
                let p = q8_0_product(wq, load_qs(ab));
                acc[t] = _mm256_fmadd_ps(p, _mm256_set1_ps(d * ab.d), acc[t]);
            }
        }
        std::array::from_fn(|t| hsum(acc[t]))
    }

    /// One Q8_0 row against eight activation rows, as `dot_q4_1_by8_avx2`.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q8_0_by8_avx2(w: &[u8], a: [&[BlockQ8_1]; 8], scales: &[Scales8]) -> [f32; 8] {
        const BYTES: usize = WeightType::Q8_0.block_bytes();
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut dd = [0f32; 8];
        for (b, (wb, sc)) in w.chunks_exact(BYTES).zip(scales).enumerate() {
            let (wq, d) = q8_0_unpack(wb);
            store_f32x8(&mut dd, _mm256_mul_ps(_mm256_set1_ps(d), load_f32x8(&sc.d)));
            for t in 0..8 {
                let p = q8_0_product(wq, load_qs(&a[t][b]));
                acc[t] = _mm256_fmadd_ps(p, _mm256_set1_ps(dd[t]), acc[t]);
            }
        }
        std::array::from_fn(|t| hsum(acc[t]))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q8_0_avx2(w: &[u8], a: &[BlockQ8_1]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (wb, ab) in w.chunks_exact(WeightType::Q8_0.block_bytes()).zip(a) {
            let (p, d) = q8_0_block(wb, load_qs(ab));
            acc = _mm256_fmadd_ps(p, _mm256_set1_ps(d * ab.d), acc);
        }
        hsum(acc)
    }

    /// Four Q8_0 rows at once, as `dot_q4_1_x4_avx2`.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q8_0_x4_avx2(w: &[u8], row_bytes: usize, a: &[BlockQ8_1]) -> [f32; 4] {
        let [mut a0, mut a1, mut a2, mut a3] = [_mm256_setzero_ps(); 4];
        for ([w0, w1, w2, w3], ab) in four_rows(w, row_bytes, WeightType::Q8_0, a) {
            let aq = load_qs(ab);
            let step = |wb: &[u8], acc: &mut __m256| {
                let (p, d) = q8_0_block(wb, aq);
                *acc = _mm256_fmadd_ps(p, _mm256_set1_ps(d * ab.d), *acc);
            };
            step(w0, &mut a0);
            step(w1, &mut a1);
            step(w2, &mut a2);
            step(w3, &mut a3);
        }
        [hsum(a0), hsum(a1), hsum(a2), hsum(a3)]
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn quantize_q8_1_avx2(x: &[f32], out: &mut [BlockQ8_1]) {
        let sign_off = _mm256_set1_ps(-0.0);
        for (xs, block) in x.chunks_exact(QK).zip(out.iter_mut()) {
            // SAFETY: `xs` is 32 readable f32 (four loads of 8); unaligned.
            let v: [__m256; 4] =
                std::array::from_fn(|i| unsafe { _mm256_loadu_ps(xs[8 * i..].as_ptr()) });
            let abs = |v: __m256| _mm256_andnot_ps(sign_off, v);
            let m = _mm256_max_ps(
                _mm256_max_ps(abs(v[0]), abs(v[1])),
                _mm256_max_ps(abs(v[2]), abs(v[3])),
            );
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
            let d = amax / 127.0;
            let inv = _mm256_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
            // Ties to even, as the scalar kernel (and llama.cpp) round.
            let round = |v: __m256| {
                _mm256_cvtps_epi32(_mm256_round_ps::<
                    { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
                >(_mm256_mul_ps(v, inv)))
            };
            let i: [__m256i; 4] = std::array::from_fn(|k| round(v[k]));
            let sum = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
            let s = _mm_add_epi32(
                _mm256_castsi256_si128(sum),
                _mm256_extracti128_si256(sum, 1),
            );
            let s = _mm_hadd_epi32(s, s);
            let s = _mm_hadd_epi32(s, s);
            // Narrow 32 × i32 to i8 (values are in -127..=127, so saturation
            // never changes them); packs interleave the 128-bit lanes, which
            // the final permute undoes.
            let p16a = _mm256_packs_epi32(i[0], i[1]);
            let p16b = _mm256_packs_epi32(i[2], i[3]);
            let p8 = _mm256_packs_epi16(p16a, p16b);
            let p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            // SAFETY: `qs` is 32 writable bytes; the store is unaligned.
            unsafe { _mm256_storeu_si256(block.qs.as_mut_ptr().cast(), p8) };
            block.d = f16_round(d);
            block.s = f16_round(d * _mm_cvtsi128_si32(s) as f32);
        }
    }
}
