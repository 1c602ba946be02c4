//! Quantized matrix × activations products for CPU inference.
//!
//! Weights stay in their GGUF block formats (Q4_1, Q8_0), byte for byte, so
//! the resident size follows the file. Activations are quantized per call to
//! 8-bit blocks carrying their scale and sum ([`BlockQ8_1`]), which turns
//! each 32-value block product into one integer dot product plus two
//! multiply-adds:
//!
//! - Q4_1 (`w = d·q + m`, `q` in 0..16): `Σ w·a = d·d_a·Σ q·q_a + m·s_a`
//! - Q8_0 (`w = d·q`, `q` in -127..=127): `Σ w·a = d·d_a·Σ q·q_a`
//!
//! where `s_a = d_a·Σ q_a`. The inner products run on AVX2 when the CPU has
//! it (chosen once, at run time) and on portable scalar code otherwise; both
//! compute the same integer sums, so they differ only by float rounding.

pub mod attention;
mod avx2;
pub mod exp;
pub mod ops;
mod scalar;

use std::ops::Range;
use std::sync::OnceLock;

use rayon::prelude::*;

/// Values per quantization block, in every format here.
pub const QK: usize = 32;

/// One block of quantized activations: `x ≈ d·qs`, `s = d·Σ qs`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ8_1 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; QK],
}

/// The scales of eight activation rows' blocks at one block index, side
/// by side (`d` and `s` of rows 0..8), so the eight-row kernels multiply
/// them as one vector instead of one scalar per row.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scales8 {
    pub d: [f32; 8],
    pub s: [f32; 8],
}

impl Scales8 {
    /// Block `b`'s scales of eight activation rows.
    pub fn gather(a: [&[BlockQ8_1]; 8], b: usize) -> Self {
        Self {
            d: a.map(|a| a[b].d),
            s: a.map(|a| a[b].s),
        }
    }
}

impl Default for BlockQ8_1 {
    fn default() -> Self {
        Self {
            d: 0.0,
            s: 0.0,
            qs: [0; QK],
        }
    }
}

/// A GGUF block format these kernels multiply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightType {
    /// 32 × 4-bit values with an f16 scale and an f16 minimum: 20 bytes.
    Q4_1,
    /// 32 × 8-bit values with an f16 scale: 34 bytes.
    Q8_0,
}

impl WeightType {
    /// Bytes per block of [`QK`] values.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }
}

/// Quantizes `x` (a multiple of [`QK`] long) into `out`, one block per 32
/// values: the scale maps the block's largest magnitude to 127.
///
/// Rounded as llama.cpp's CPU backend rounds its Q8_1 / Q8_0 activations
/// (multiplier `127/max`, ties to even, scale and sum kept at f16
/// precision), so both engines multiply the same integers by the same
/// scales: with 8-bit activations a model this small turns any difference
/// into diverging greedy output.
pub fn quantize_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    (kernels().quantize)(x, out)
}

/// `Σ w·a` for one weight row (raw blocks of `ty`) and one activation row.
pub fn dot(ty: WeightType, w: &[u8], a: &[BlockQ8_1]) -> f32 {
    let k = kernels();
    match ty {
        WeightType::Q4_1 => (k.dot_q4_1)(w, a),
        WeightType::Q8_0 => (k.dot_q8_0)(w, a),
    }
}

/// `x` rounded to the nearest f16, as f32: the precision llama.cpp keeps
/// activation scales, and the key/value cache, at.
pub fn f16_round(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// Rounds every value of `x` to the nearest f16, in place.
pub fn f16_round_slice(x: &mut [f32]) {
    (kernels().round_f16)(x)
}

/// `Σ a·b` for f32 `a` and f16 `b` (a cached key) as llama.cpp's AVX-512
/// build sums a single query row's: 64 lanes, folded to one.
pub fn dot_f16(a: &[f32], b: &[half::f16]) -> f32 {
    (kernels().dot_f16)(a, b)
}

/// `Σ a·b` as llama.cpp's AVX-512 build sums the rows of a prompt batch
/// (llamafile's tiles): 16 lanes, folded to one.
pub fn dot_f16_tiled(a: &[f32], b: &[half::f16]) -> f32 {
    (kernels().dot_f16_tiled)(a, b)
}

/// `y += s·x` for f16 `x` (a cached value).
pub fn axpy_f16(s: f32, x: &[half::f16], y: &mut [f32]) {
    (kernels().axpy_f16)(s, x, y)
}

/// Runs `op` on one of the thread pool's own threads and waits for it.
///
/// A forward pass opens one parallel region per matrix product and one for
/// attention, some 150 per token. Started from outside the pool, each
/// region wakes the pool and then puts the caller to sleep until the pool
/// wakes it again; started from a pool thread, the region's first half runs
/// right there and only the other thread is handed work. That is one
/// hand-off per forward pass instead of one per region: about 10% more
/// decode tokens/s on 2 cores.
pub fn on_pool<R: Send>(op: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| op())
}

/// Which implementation [`dot`] and [`quantize_q8_1`] use on this CPU.
pub fn implementation() -> &'static str {
    kernels().name
}

/// A row against eight activation rows and their gathered scales.
type DotBy8 = fn(&[u8], [&[BlockQ8_1]; 8], &[Scales8]) -> [f32; 8];

struct Kernels {
    name: &'static str,
    dot_q4_1: fn(&[u8], &[BlockQ8_1]) -> f32,
    dot_q8_0: fn(&[u8], &[BlockQ8_1]) -> f32,
    /// Four rows `row_bytes` apart against one activation row: each result
    /// bit for bit the single-row dot's.
    dot_q4_1_x4: fn(&[u8], usize, &[BlockQ8_1]) -> [f32; 4],
    dot_q8_0_x4: fn(&[u8], usize, &[BlockQ8_1]) -> [f32; 4],
    /// One row against four activation rows, each weight block unpacked
    /// once for all four: each result bit for bit the single-row dot's.
    dot_q4_1_by4: fn(&[u8], [&[BlockQ8_1]; 4]) -> [f32; 4],
    dot_q8_0_by4: fn(&[u8], [&[BlockQ8_1]; 4]) -> [f32; 4],
    /// One row against eight activation rows whose block scales are
    /// gathered in `scales` (one [`Scales8`] per block): each result bit
    /// for bit the single-row dot's.
    dot_q4_1_by8: DotBy8,
    dot_q8_0_by8: DotBy8,
    quantize: fn(&[f32], &mut [BlockQ8_1]),
    dot_f16: fn(&[f32], &[half::f16]) -> f32,
    dot_f16_tiled: fn(&[f32], &[half::f16]) -> f32,
    axpy_f16: fn(f32, &[half::f16], &mut [f32]),
    round_f16: fn(&mut [f32]),
    rope: fn(&mut [f32], &[f32], &[f32]),
    exp_sum: fn(&mut [f32], f32) -> f64,
    silu_mul: fn(&[f32], &[f32], &mut [f32]),
}

fn kernels() -> &'static Kernels {
    static KERNELS: OnceLock<Kernels> = OnceLock::new();
    KERNELS.get_or_init(|| avx2::kernels().unwrap_or_else(scalar_kernels))
}

/// The portable kernels: the fallback, and what the SIMD ones are tested
/// against.
fn scalar_kernels() -> Kernels {
    Kernels {
        name: "scalar",
        dot_q4_1: scalar::dot_q4_1,
        dot_q8_0: scalar::dot_q8_0,
        dot_q4_1_x4: scalar::dot_q4_1_x4,
        dot_q8_0_x4: scalar::dot_q8_0_x4,
        dot_q4_1_by4: scalar::dot_q4_1_by4,
        dot_q8_0_by4: scalar::dot_q8_0_by4,
        dot_q4_1_by8: scalar::dot_q4_1_by8,
        dot_q8_0_by8: scalar::dot_q8_0_by8,
        quantize: scalar::quantize_q8_1,
        dot_f16: scalar::dot_f16,
        dot_f16_tiled: scalar::dot_f16_tiled,
        axpy_f16: scalar::axpy_f16,
        round_f16: scalar::round_f16,
        rope: scalar::rope,
        exp_sum: scalar::exp_sum,
        silu_mul: scalar::silu_mul,
    }
}

/// Why a [`QMatrix`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError(pub String);

impl std::fmt::Display for ShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ShapeError {}

/// A `[rows, cols]` weight matrix in a GGUF block format, rows contiguous.
#[derive(Debug, Clone)]
pub struct QMatrix {
    ty: WeightType,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

/// Output rows handed to one task: enough work to amortise the hand-off,
/// small enough that both cores finish together.
const MIN_ROWS_PER_TASK: usize = 16;

impl QMatrix {
    pub fn new(
        ty: WeightType,
        rows: usize,
        cols: usize,
        data: Vec<u8>,
    ) -> Result<Self, ShapeError> {
        if !cols.is_multiple_of(QK) {
            return Err(ShapeError(format!(
                "{cols} columns are not a multiple of the block size {QK}"
            )));
        }
        let expected = rows * cols / QK * ty.block_bytes();
        if data.len() != expected {
            return Err(ShapeError(format!(
                "{ty:?} [{rows}, {cols}] needs {expected} bytes, got {}",
                data.len()
            )));
        }
        Ok(Self {
            ty,
            rows,
            cols,
            data,
        })
    }

    pub fn weight_type(&self) -> WeightType {
        self.ty
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The raw blocks, rows contiguous.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    fn row(&self, r: usize) -> &[u8] {
        let bytes = self.cols / QK * self.ty.block_bytes();
        &self.data[r * bytes..(r + 1) * bytes]
    }

    /// `put(r, Σ w[r]·a)` for each row `r` of `rows`: four rows per call
    /// of the four-row kernel, the rest one by one.
    fn dot_rows(&self, rows: Range<usize>, a: &[BlockQ8_1], mut put: impl FnMut(usize, f32)) {
        let k = kernels();
        let (dot, dot_x4) = match self.ty {
            WeightType::Q4_1 => (k.dot_q4_1, k.dot_q4_1_x4),
            WeightType::Q8_0 => (k.dot_q8_0, k.dot_q8_0_x4),
        };
        let row_bytes = self.cols / QK * self.ty.block_bytes();
        let fours_end = rows.start + rows.len() / 4 * 4;
        for r in (rows.start..fours_end).step_by(4) {
            let four = dot_x4(&self.data[r * row_bytes..(r + 4) * row_bytes], row_bytes, a);
            for (i, v) in four.into_iter().enumerate() {
                put(r + i, v);
            }
        }
        for r in fours_end..rows.end {
            put(r, dot(self.row(r), a));
        }
    }

    /// Row `r` as f32 values (embedding lookups).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        scalar::dequantize_row(self.ty, self.row(r), out)
    }

    /// `out[t, r] = Σ_c x[t, c]·w[r, c]` for `n = x.len() / cols` tokens;
    /// `out` is `[n, rows]`. Work is split by rows over rayon's pool.
    pub fn matmul(&self, x: &[f32], out: &mut [f32]) -> Result<(), ShapeError> {
        if !x.len().is_multiple_of(self.cols) || out.len() != x.len() / self.cols * self.rows {
            return Err(ShapeError(format!(
                "matmul of [{}, {}] with {} inputs into {} outputs",
                self.rows,
                self.cols,
                x.len(),
                out.len()
            )));
        }
        let n = x.len() / self.cols;
        let kb = self.cols / QK;
        let mut qa = vec![BlockQ8_1::default(); n * kb];
        if n > 1 {
            qa.par_chunks_mut(kb)
                .zip(x.par_chunks(self.cols))
                .for_each(|(q, x)| quantize_q8_1(x, q));
        } else {
            quantize_q8_1(x, &mut qa);
        }
        let per_task = self
            .rows
            .div_ceil(rayon::current_num_threads() * 4)
            .max(MIN_ROWS_PER_TASK);
        if n == 1 {
            out.par_chunks_mut(per_task)
                .enumerate()
                .for_each(|(task, out)| {
                    let first = task * per_task;
                    self.dot_rows(first..first + out.len(), &qa, |r, v| out[r - first] = v);
                });
            return Ok(());
        }
        // Several tokens: each task fills a block of rows for every token
        // (row-major [rows, n]), then the result is transposed. Each weight
        // row meets the tokens eight at a time (then four, then one), its
        // blocks unpacked once for the eight and the eight rows' scales
        // multiplied as one vector: the arithmetic per (row, token) pair,
        // not memory, bounds a decode step here (the dot kernels took 66%
        // of a 16-sequence step with four at a time).
        let k = kernels();
        let (dot, by4, by8) = match self.ty {
            WeightType::Q4_1 => (k.dot_q4_1, k.dot_q4_1_by4, k.dot_q4_1_by8),
            WeightType::Q8_0 => (k.dot_q8_0, k.dot_q8_0_by4, k.dot_q8_0_by8),
        };
        let token = |t: usize| &qa[t * kb..(t + 1) * kb];
        let eight = |t: usize| std::array::from_fn::<_, 8, _>(|i| token(t + i));
        let eights = n / 8 * 8;
        let scales: Vec<Scales8> = (0..eights)
            .step_by(8)
            .flat_map(|t| (0..kb).map(move |b| Scales8::gather(eight(t), b)))
            .collect();
        let fours = eights + (n - eights) / 4 * 4;
        let mut by_row = vec![0f32; self.rows * n];
        by_row
            .par_chunks_mut(per_task * n)
            .enumerate()
            .for_each(|(task, out)| {
                let first = task * per_task;
                for (i, out) in out.chunks_exact_mut(n).enumerate() {
                    let w = self.row(first + i);
                    for t in (0..eights).step_by(8) {
                        let group = &scales[t / 8 * kb..(t / 8 + 1) * kb];
                        out[t..t + 8].copy_from_slice(&by8(w, eight(t), group));
                    }
                    for t in (eights..fours).step_by(4) {
                        let four = by4(w, [token(t), token(t + 1), token(t + 2), token(t + 3)]);
                        out[t..t + 4].copy_from_slice(&four);
                    }
                    for (t, o) in out.iter_mut().enumerate().skip(fours) {
                        *o = dot(w, token(t));
                    }
                }
            });
        for (t, out) in out.chunks_exact_mut(self.rows).enumerate() {
            for (r, o) in out.iter_mut().enumerate() {
                *o = by_row[r * n + t];
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
