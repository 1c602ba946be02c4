//! Portable reference kernels: the fallback on CPUs without AVX2, and the
//! ground truth the SIMD kernels are tested against.

use half::f16;

use crate::{BlockQ8_1, QK, WeightType};

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

pub fn quantize_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    for (xs, block) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in block.qs.iter_mut().zip(xs) {
            // |v·inv| ≤ 127 by construction; round half away from zero.
            *q = (v * inv).round() as i8;
            sum += i32::from(*q);
        }
        block.d = d;
        block.s = d * sum as f32;
    }
}

pub fn dot_q4_1(w: &[u8], a: &[BlockQ8_1]) -> f32 {
    let mut sum = 0f32;
    for (wb, ab) in w.chunks_exact(WeightType::Q4_1.block_bytes()).zip(a) {
        let (d, m) = (f16_at(wb, 0), f16_at(wb, 2));
        let mut isum = 0i32;
        for j in 0..QK / 2 {
            let q = wb[4 + j];
            isum += i32::from(q & 0x0F) * i32::from(ab.qs[j]);
            isum += i32::from(q >> 4) * i32::from(ab.qs[j + QK / 2]);
        }
        sum += d * ab.d * isum as f32 + m * ab.s;
    }
    sum
}

pub fn dot_q8_0(w: &[u8], a: &[BlockQ8_1]) -> f32 {
    let mut sum = 0f32;
    for (wb, ab) in w.chunks_exact(WeightType::Q8_0.block_bytes()).zip(a) {
        let d = f16_at(wb, 0);
        let isum: i32 = wb[2..]
            .iter()
            .zip(&ab.qs)
            .map(|(&q, &qa)| i32::from(q as i8) * i32::from(qa))
            .sum();
        sum += d * ab.d * isum as f32;
    }
    sum
}

pub fn dequantize_row(ty: WeightType, w: &[u8], out: &mut [f32]) {
    for (wb, out) in w
        .chunks_exact(ty.block_bytes())
        .zip(out.chunks_exact_mut(QK))
    {
        match ty {
            WeightType::Q4_1 => {
                let (d, m) = (f16_at(wb, 0), f16_at(wb, 2));
                for j in 0..QK / 2 {
                    let q = wb[4 + j];
                    out[j] = d * f32::from(q & 0x0F) + m;
                    out[j + QK / 2] = d * f32::from(q >> 4) + m;
                }
            }
            WeightType::Q8_0 => {
                let d = f16_at(wb, 0);
                for (o, &q) in out.iter_mut().zip(&wb[2..]) {
                    *o = d * f32::from(q as i8);
                }
            }
        }
    }
}
