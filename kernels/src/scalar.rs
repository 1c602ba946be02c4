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
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in block.qs.iter_mut().zip(xs) {
            // |v·inv| ≤ 127 by construction; ties round to even.
            *q = (v * inv).round_ties_even() as i8;
            sum += i32::from(*q);
        }
        block.d = crate::f16_round(d);
        block.s = crate::f16_round(d * sum as f32);
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

pub fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y.to_f32()).sum()
}

pub fn axpy_f16(s: f32, x: &[f16], y: &mut [f32]) {
    for (o, v) in y.iter_mut().zip(x) {
        *o += s * v.to_f32();
    }
}

pub fn round_f16(x: &mut [f32]) {
    for v in x {
        *v = f16::from_f32(*v).to_f32();
    }
}

pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    for head in x.chunks_exact_mut(2 * cos.len()) {
        for ((pair, &c), &s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * c - b * s;
            pair[1] = a * s + b * c;
        }
    }
}
