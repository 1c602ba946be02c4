//! Portable reference kernels: the fallback on CPUs without AVX2, and the
//! ground truth the SIMD kernels are tested against.

use half::f16;

use crate::{BlockQ8_1, QK, Scales8, WeightType};

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

pub fn dot_q4_1_x4(w: &[u8], row_bytes: usize, a: &[BlockQ8_1]) -> [f32; 4] {
    std::array::from_fn(|r| dot_q4_1(&w[r * row_bytes..], a))
}

pub fn dot_q8_0_x4(w: &[u8], row_bytes: usize, a: &[BlockQ8_1]) -> [f32; 4] {
    std::array::from_fn(|r| dot_q8_0(&w[r * row_bytes..], a))
}

/// One row against four activation rows: each result bit for bit the
/// single-row dot's.
pub fn dot_q4_1_by4(w: &[u8], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    a.map(|a| dot_q4_1(w, a))
}

pub fn dot_q8_0_by4(w: &[u8], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    a.map(|a| dot_q8_0(w, a))
}

/// One row against eight activation rows: the single-row dots (the
/// gathered scales are the rows' own, so the portable version reads them
/// from the rows).
pub fn dot_q4_1_by8(w: &[u8], a: [&[BlockQ8_1]; 8], _scales: &[Scales8]) -> [f32; 8] {
    a.map(|a| dot_q4_1(w, a))
}

pub fn dot_q8_0_by8(w: &[u8], a: [&[BlockQ8_1]; 8], _scales: &[Scales8]) -> [f32; 8] {
    a.map(|a| dot_q8_0(w, a))
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

/// Lanes of the f16 dot products of a prompt batch and of the softmax
/// sums: llama.cpp's AVX-512 build sums in 16 lanes (its matrix products
/// of several query rows through llamafile's 16-wide tiles, its softmax per
/// 16 values).
pub const LANES: usize = 16;

/// Lanes of the f16 dot product of one query row: llama.cpp's vector dot
/// (four 16-lane accumulators in turn), which it uses when a batch has a
/// single row.
pub const ROW_LANES: usize = 64;

/// The 16 lanes' total, added as `_mm512_reduce_add_ps` adds them: upper
/// half onto lower, again, then `(0 + 2) + (1 + 3)`.
pub fn fold16(v: &[f32; LANES]) -> f32 {
    let t: [f32; 8] = std::array::from_fn(|l| v[l + 8] + v[l]);
    let t: [f32; 4] = std::array::from_fn(|l| t[l + 4] + t[l]);
    (t[0] + t[2]) + (t[1] + t[3])
}

/// The 64 lanes of [`dot_f16`] to 16: accumulators `(0 + 2) + (1 + 3)`.
pub fn fold64(v: &[f32; ROW_LANES]) -> [f32; LANES] {
    std::array::from_fn(|s| (v[s] + v[s + 32]) + (v[s + 16] + v[s + 48]))
}

/// `Σ a·b` as llama.cpp's vector dot sums it: whole groups of 64, element
/// `i` fused-multiply-added into lane `i % 64`, folded with [`fold64`] and
/// [`fold16`]; the rest added one by one in f64.
pub fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
    let whole = a.len().min(b.len()) / ROW_LANES * ROW_LANES;
    let mut lanes = [0f32; ROW_LANES];
    for (i, (x, y)) in a[..whole].iter().zip(b).enumerate() {
        lanes[i % ROW_LANES] = x.mul_add(y.to_f32(), lanes[i % ROW_LANES]);
    }
    let mut sum = f64::from(fold16(&fold64(&lanes)));
    for (x, y) in a[whole..].iter().zip(&b[whole..]) {
        sum += f64::from(x * y.to_f32());
    }
    sum as f32
}

/// `Σ a·b` as llamafile's tiles sum it: element `i` fused-multiply-added
/// into lane `i % 16`, then [`fold16`].
pub fn dot_f16_tiled(a: &[f32], b: &[f16]) -> f32 {
    let mut lanes = [0f32; LANES];
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        lanes[i % LANES] = x.mul_add(y.to_f32(), lanes[i % LANES]);
    }
    fold16(&lanes)
}

/// `x = e^(x − max)` in place; returns `Σ x` summed per 16 values with
/// [`fold16`], in f64 across the groups.
pub fn exp_sum(x: &mut [f32], max: f32) -> f64 {
    let mut sum = 0f64;
    for chunk in x.chunks_mut(LANES) {
        let mut lanes = [0f32; LANES];
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *v = crate::exp::exp(*v - max);
            *lane = *v;
        }
        sum += f64::from(fold16(&lanes));
    }
    sum
}

/// `out = silu(gate) · up`: whole groups of 16 with [`crate::exp::exp`], a
/// shorter tail with libm's, as llama.cpp's vector loop and its scalar
/// tail compute it.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let whole = gate.len() / LANES * LANES;
    for (i, ((o, &g), &u)) in out.iter_mut().zip(gate).zip(up).enumerate() {
        let e = if i < whole {
            crate::exp::exp(0.0 - g)
        } else {
            (-g).exp()
        };
        *o = g / (1.0 + e) * u;
    }
}

pub fn axpy_f16(s: f32, x: &[f16], y: &mut [f32]) {
    for (o, v) in y.iter_mut().zip(x) {
        *o = s.mul_add(v.to_f32(), *o);
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
