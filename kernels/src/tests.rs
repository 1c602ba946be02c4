//! SIMD against scalar on random data, and the matmul against plain f32
//! arithmetic on the dequantized values.

use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn random_blocks(rng: &mut StdRng, ty: WeightType, blocks: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(blocks * ty.block_bytes());
    for _ in 0..blocks {
        let d = f16::from_f32(rng.random_range(0.001..0.05f32));
        out.extend_from_slice(&d.to_le_bytes());
        match ty {
            WeightType::Q4_1 => {
                let m = f16::from_f32(rng.random_range(-0.4..0.0f32));
                out.extend_from_slice(&m.to_le_bytes());
                out.extend((0..16).map(|_| rng.random::<u8>()));
            }
            WeightType::Q8_0 => out.extend((0..32).map(|_| rng.random_range(-127i8..=127) as u8)),
        }
    }
    out
}

fn random_f32(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-3.0..3.0f32)).collect()
}

fn close(a: f32, b: f32, scale: f32) -> bool {
    (a - b).abs() <= 1e-4 * scale.max(1.0)
}

/// The SIMD kernels, or None when this CPU cannot run them (checked to be
/// the CPU's doing, not a detection bug).
fn simd() -> Option<Kernels> {
    let k = avx2::kernels();
    #[cfg(target_arch = "x86_64")]
    if k.is_none() {
        assert!(
            !(std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")),
            "the CPU has AVX2/FMA/F16C but the SIMD kernels were not selected"
        );
    }
    k
}

#[test]
fn the_fastest_kernels_are_selected() {
    let expected = if simd().is_some() { "avx2" } else { "scalar" };
    assert_eq!(implementation(), expected);
}

#[test]
fn simd_quantization_matches_scalar() {
    let Some(k) = simd() else { return };
    let mut rng = StdRng::seed_from_u64(1);
    for blocks in [1, 7, 48] {
        let mut x = random_f32(&mut rng, blocks * QK);
        x[3] = 0.0;
        if blocks > 1 {
            // An all-zero block must give d = 0, not NaN.
            x[QK..2 * QK].fill(0.0);
        }
        let mut a = vec![BlockQ8_1::default(); blocks];
        let mut b = vec![BlockQ8_1::default(); blocks];
        scalar::quantize_q8_1(&x, &mut a);
        (k.quantize)(&x, &mut b);
        for (a, b) in a.iter().zip(&b) {
            assert_eq!(a.d, b.d);
            assert!(a.d.is_finite());
            // Ties may round apart after the SIMD add; never by more than 1.
            let diff =
                a.qs.iter()
                    .zip(&b.qs)
                    .map(|(x, y)| (x - y).abs())
                    .max()
                    .unwrap();
            assert!(diff <= 1, "{a:?} vs {b:?}");
            assert!(close(a.s, b.s, a.d * 32.0));
        }
    }
}

#[test]
fn quantization_round_trips_within_half_a_step() {
    let mut rng = StdRng::seed_from_u64(2);
    let x = random_f32(&mut rng, 4 * QK);
    let mut q = vec![BlockQ8_1::default(); 4];
    quantize_q8_1(&x, &mut q);
    for (xs, b) in x.chunks(QK).zip(&q) {
        let mut sum = 0i32;
        for (v, &qv) in xs.iter().zip(&b.qs) {
            // Half a step, plus the scale's rounding to f16 (≤ 2⁻¹¹ of it)
            // over at most 127 steps.
            assert!((v - b.d * f32::from(qv)).abs() <= b.d * (0.5 + 127.0 / 2048.0) + 1e-6);
            sum += i32::from(qv);
        }
        assert!((b.s - b.d * sum as f32).abs() <= (b.d * sum as f32).abs() / 512.0 + 1e-6);
        assert!(b.qs.iter().any(|&v| v.abs() == 127));
    }
}

#[test]
fn simd_dot_products_match_scalar() {
    let Some(k) = simd() else { return };
    let mut rng = StdRng::seed_from_u64(3);
    for ty in [WeightType::Q4_1, WeightType::Q8_0] {
        for blocks in [1, 2, 3, 18, 47, 48] {
            for _ in 0..50 {
                let w = random_blocks(&mut rng, ty, blocks);
                let mut a = vec![BlockQ8_1::default(); blocks];
                scalar::quantize_q8_1(&random_f32(&mut rng, blocks * QK), &mut a);
                let (want, got) = match ty {
                    WeightType::Q4_1 => (scalar::dot_q4_1(&w, &a), (k.dot_q4_1)(&w, &a)),
                    WeightType::Q8_0 => (scalar::dot_q8_0(&w, &a), (k.dot_q8_0)(&w, &a)),
                };
                assert!(
                    close(want, got, want.abs()),
                    "{ty:?} {blocks}: {want} vs {got}"
                );
            }
        }
    }
}

#[test]
fn four_row_dots_equal_single_row_dots_bit_for_bit() {
    // The four-row kernels only interleave four rows' sums; each must come
    // out exactly as the single-row kernel's (llama.cpp parity rests on it).
    let mut rng = StdRng::seed_from_u64(5);
    let mut sets = vec![("scalar", scalar_kernels())];
    sets.extend(simd().map(|k| ("simd", k)));
    for (name, k) in sets {
        for ty in [WeightType::Q4_1, WeightType::Q8_0] {
            for blocks in [1, 18, 48] {
                let row_bytes = blocks * ty.block_bytes();
                let w = random_blocks(&mut rng, ty, 4 * blocks);
                let mut a = vec![BlockQ8_1::default(); blocks];
                scalar::quantize_q8_1(&random_f32(&mut rng, blocks * QK), &mut a);
                let (single, four) = match ty {
                    WeightType::Q4_1 => (k.dot_q4_1, k.dot_q4_1_x4),
                    WeightType::Q8_0 => (k.dot_q8_0, k.dot_q8_0_x4),
                };
                let want: Vec<f32> = w.chunks_exact(row_bytes).map(|r| single(r, &a)).collect();
                assert_eq!(
                    four(&w, row_bytes, &a).to_vec(),
                    want,
                    "{name} {ty:?} {blocks}"
                );
            }
        }
    }
}

/// `n` rows of `blocks` quantized random activations.
fn activation_rows(rng: &mut StdRng, n: usize, blocks: usize) -> Vec<Vec<BlockQ8_1>> {
    (0..n)
        .map(|_| {
            let mut a = vec![BlockQ8_1::default(); blocks];
            scalar::quantize_q8_1(&random_f32(rng, blocks * QK), &mut a);
            a
        })
        .collect()
}

#[test]
fn four_token_dots_equal_single_token_dots_bit_for_bit() {
    // One weight row against four activation rows: the batched matmul's
    // kernel. Each result must be the single-row kernel's, so a sequence's
    // logits never depend on its batch.
    let mut rng = StdRng::seed_from_u64(6);
    let mut sets = vec![("scalar", scalar_kernels())];
    sets.extend(simd().map(|k| ("simd", k)));
    for (name, k) in sets {
        for ty in [WeightType::Q4_1, WeightType::Q8_0] {
            for blocks in [1, 18, 48] {
                let w = random_blocks(&mut rng, ty, blocks);
                let a = activation_rows(&mut rng, 4, blocks);
                let (single, by4) = match ty {
                    WeightType::Q4_1 => (k.dot_q4_1, k.dot_q4_1_by4),
                    WeightType::Q8_0 => (k.dot_q8_0, k.dot_q8_0_by4),
                };
                let want: Vec<f32> = a.iter().map(|a| single(&w, a)).collect();
                let got = by4(&w, [&a[0], &a[1], &a[2], &a[3]]);
                assert_eq!(got.to_vec(), want, "{name} {ty:?} {blocks}");
            }
        }
    }
}

#[test]
fn eight_token_dots_equal_single_token_dots_bit_for_bit() {
    // The batched matmul's kernel for eight tokens, with the rows' scales
    // gathered per block: each result must be the single-row kernel's.
    let mut rng = StdRng::seed_from_u64(8);
    let mut sets = vec![("scalar", scalar_kernels())];
    sets.extend(simd().map(|k| ("simd", k)));
    for (name, k) in sets {
        for ty in [WeightType::Q4_1, WeightType::Q8_0] {
            for blocks in [1, 18, 48] {
                let w = random_blocks(&mut rng, ty, blocks);
                let a = activation_rows(&mut rng, 8, blocks);
                let rows: [&[BlockQ8_1]; 8] = std::array::from_fn(|i| a[i].as_slice());
                let scales: Vec<Scales8> = (0..blocks).map(|b| Scales8::gather(rows, b)).collect();
                let (single, by8) = match ty {
                    WeightType::Q4_1 => (k.dot_q4_1, k.dot_q4_1_by8),
                    WeightType::Q8_0 => (k.dot_q8_0, k.dot_q8_0_by8),
                };
                let want: Vec<f32> = a.iter().map(|a| single(&w, a)).collect();
                let got = by8(&w, rows, &scales);
                assert_eq!(got.to_vec(), want, "{name} {ty:?} {blocks}");
            }
        }
    }
}

#[test]
fn matmul_matches_f32_arithmetic_for_one_and_many_tokens() {
    let mut rng = StdRng::seed_from_u64(4);
    for ty in [WeightType::Q4_1, WeightType::Q8_0] {
        let (rows, cols) = (75, 96);
        let w = QMatrix::new(
            ty,
            rows,
            cols,
            random_blocks(&mut rng, ty, rows * cols / QK),
        )
        .unwrap();
        let mut dense = vec![0f32; rows * cols];
        for (r, out) in dense.chunks_mut(cols).enumerate() {
            w.dequantize_row(r, out);
        }
        for n in [1, 3, 21] {
            let x = random_f32(&mut rng, n * cols);
            let mut out = vec![f32::NAN; n * rows];
            w.matmul(&x, &mut out).unwrap();
            for t in 0..n {
                let mut q = vec![BlockQ8_1::default(); cols / QK];
                scalar::quantize_q8_1(&x[t * cols..(t + 1) * cols], &mut q);
                let xq: Vec<f32> = q
                    .iter()
                    .flat_map(|b| b.qs.iter().map(move |&v| b.d * f32::from(v)))
                    .collect();
                for r in 0..rows {
                    let row = &dense[r * cols..(r + 1) * cols];
                    // Exact up to rounding against the quantized activations
                    // (Q4_1's minimum meets the block sum `s`, kept at f16)...
                    let mut want: f32 = row.iter().zip(&xq).map(|(a, b)| a * b).sum();
                    if ty == WeightType::Q4_1 {
                        let blocks = &w.data()[r * cols / QK * 20..(r + 1) * cols / QK * 20];
                        for (wb, b) in blocks.chunks_exact(20).zip(&q) {
                            let m = f16::from_le_bytes([wb[2], wb[3]]).to_f32();
                            let sum: i32 = b.qs.iter().map(|&v| i32::from(v)).sum();
                            want += m * (b.s - b.d * sum as f32);
                        }
                    }
                    let got = out[t * rows + r];
                    assert!(
                        close(want, got, 10.0),
                        "{ty:?} n={n} t={t} r={r}: {want} vs {got}"
                    );
                    // ...and within the 8-bit activation error of the exact product.
                    let exact: f32 = row.iter().zip(&x[t * cols..]).map(|(a, b)| a * b).sum();
                    let bound: f32 = row.iter().map(|a| a.abs()).sum::<f32>() * 3.0 / 254.0;
                    assert!(
                        (exact - got).abs() <= bound,
                        "{exact} vs {got} (bound {bound})"
                    );
                }
            }
        }
    }
}

#[test]
fn shapes_are_checked() {
    assert!(QMatrix::new(WeightType::Q4_1, 2, 48, vec![0; 40]).is_err());
    assert!(QMatrix::new(WeightType::Q4_1, 2, 64, vec![0; 79]).is_err());
    let w = QMatrix::new(WeightType::Q4_1, 2, 64, vec![0; 80]).unwrap();
    assert!(w.matmul(&[0.0; 63], &mut [0.0; 2]).is_err());
    assert!(w.matmul(&[0.0; 64], &mut [0.0; 3]).is_err());
    assert!(w.matmul(&[0.0; 128], &mut [0.0; 4]).is_ok());
}

#[test]
fn simd_f16_helpers_equal_scalar_bit_for_bit() {
    // Same lanes, same fused multiply-adds, same folds: equal, not close.
    let Some(k) = simd() else { return };
    let mut rng = StdRng::seed_from_u64(7);
    for n in [1, 8, 15, 16, 17, 64, 67, 130, 256] {
        let a = random_f32(&mut rng, n);
        let b: Vec<f16> = random_f32(&mut rng, n)
            .into_iter()
            .map(f16::from_f32)
            .collect();
        assert_eq!((k.dot_f16)(&a, &b), scalar::dot_f16(&a, &b), "dot, {n}");
        assert_eq!(
            (k.dot_f16_tiled)(&a, &b),
            scalar::dot_f16_tiled(&a, &b),
            "tiled dot, {n}"
        );
        let mut p = random_f32(&mut rng, n);
        let mut q = p.clone();
        (k.axpy_f16)(0.75, &b, &mut p);
        scalar::axpy_f16(0.75, &b, &mut q);
        assert_eq!(p, q, "axpy, {n}");
        (k.round_f16)(&mut p);
        scalar::round_f16(&mut q);
        assert_eq!(p, q, "round, {n}");
        assert!(
            p.iter().all(|&v| f16::from_f32(v).to_f32() == v),
            "exactly f16 values"
        );
    }
}

#[test]
fn f16_dots_sum_in_llama_cpp_lane_order() {
    // One nonzero product per lane, sized so that every addition rounds
    // differently depending on the order: the folds must be exactly those
    // of scalar::fold16 / fold64.
    let mut rng = StdRng::seed_from_u64(8);
    let b = vec![f16::ONE; 256];
    for _ in 0..20 {
        let a: Vec<f32> = (0..256)
            .map(|_| f32::from_bits(rng.random_range(0x3000_0000..0x4f00_0000u32)))
            .collect();
        let mut lanes16 = [0f32; 16];
        let mut lanes64 = [0f32; 64];
        for (i, &x) in a.iter().enumerate() {
            lanes16[i % 16] += x;
            lanes64[i % 64] += x;
        }
        assert_eq!(dot_f16_tiled(&a, &b), scalar::fold16(&lanes16));
        assert_eq!(dot_f16(&a, &b), scalar::fold16(&scalar::fold64(&lanes64)));
    }
    // fold16 is (upper half onto lower) twice, then (0 + 2) + (1 + 3).
    let v: [f32; 16] = std::array::from_fn(|i| {
        if i == 2 {
            1.0
        } else if i == 10 {
            1e8
        } else if i == 6 {
            -1e8
        } else {
            0.0
        }
    });
    // 1 + 1e8 - 1e8 in the wrong order loses the 1; lanes 2, 10 and 6
    // meet as (2 + 10) + 6 in llama.cpp's order.
    assert_eq!(scalar::fold16(&v), ((1.0f32 + 1e8) + -1e8));
}

#[test]
fn simd_exp_softmax_and_silu_equal_scalar_bit_for_bit() {
    let Some(k) = simd() else { return };
    let mut rng = StdRng::seed_from_u64(9);
    for n in [1, 7, 16, 31, 48, 100, 1536] {
        // Scores with a wide spread: some underflow (x − max < −87).
        let x: Vec<f32> = (0..n).map(|_| rng.random_range(-120.0..10.0f32)).collect();
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let (mut p, mut q) = (x.clone(), x.clone());
        let (sp, sq) = ((k.exp_sum)(&mut p, max), scalar::exp_sum(&mut q, max));
        assert_eq!(p, q, "exp, {n}");
        assert_eq!(sp, sq, "sum, {n}");
        assert!(p.iter().zip(&x).all(|(e, x)| *e == exp::exp(x - max)));

        let gate: Vec<f32> = (0..n).map(|_| rng.random_range(-100.0..100.0f32)).collect();
        let up = random_f32(&mut rng, n);
        let (mut p, mut q) = (vec![0.0; n], vec![0.0; n]);
        (k.silu_mul)(&gate, &up, &mut p);
        scalar::silu_mul(&gate, &up, &mut q);
        assert_eq!(p, q, "silu, {n}");
    }
    // Special lanes among ordinary ones: infinities, NaN, overflow.
    let mut x = [0.0f32; 16];
    x[1] = f32::NEG_INFINITY;
    x[3] = 100.0;
    x[5] = -100.0;
    x[7] = f32::NAN;
    let (mut p, mut q) = (x, x);
    (k.exp_sum)(&mut p, 0.0);
    scalar::exp_sum(&mut q, 0.0);
    assert_eq!(p.map(f32::to_bits), q.map(f32::to_bits));
    assert_eq!((p[0], p[1], p[3]), (1.0, 0.0, f32::INFINITY));
    assert!(p[5] > 0.0 && p[5] < f32::MIN_POSITIVE && p[7].is_nan());
}
