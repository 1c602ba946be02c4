//! The f32 operations between the matmuls of a llama-family layer, on plain
//! slices with no allocation.
//!
//! They round as llama.cpp's CPU backend does where that costs nothing:
//! sums of squares in f64, rotary angles built by repeated multiplication,
//! softmax sums in f64. With 8-bit activations a model this small turns the
//! last bit of one value into a different greedy token many steps later, so
//! matching the reference's rounding is what makes the outputs comparable.

/// `out = x / rms(x) · weight` for each row of `x` (rows of `weight.len()`).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    for (row, out) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let sum: f64 = row.iter().map(|&v| f64::from(v * v)).sum();
        let mean = (sum / n as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for ((o, &v), &w) in out.iter_mut().zip(row).zip(weight) {
            *o = v * scale * w;
        }
    }
}

/// cos and sin of the rotary angles of position `pos`, one pair per two
/// dimensions of a head: angle `i` is `pos · base^(-2i/head_dim)`, built by
/// repeated multiplication as llama.cpp builds it.
pub fn rope_angles(pos: usize, base: f32, cos: &mut [f32], sin: &mut [f32]) {
    let head_dim = 2 * cos.len();
    let step = base.powf(-2.0 / head_dim as f32);
    let mut theta = pos as f32;
    for (c, s) in cos.iter_mut().zip(sin.iter_mut()) {
        *c = theta.cos();
        *s = theta.sin();
        theta *= step;
    }
}

/// Rotates every head in `x` (heads of `2·cos.len()` values) by the angles:
/// adjacent pairs `(x[2i], x[2i+1])`, the layout GGUF llama weights use.
/// With FMA each new value is one fused multiply-add over one rounded
/// product, as llama.cpp's compiled C comes out; from the third position on
/// anything else already gives different logits.
pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    (crate::kernels().rope)(x, cos, sin)
}

/// [`rope`] for heads whose pairs are their two halves, `(x[i],
/// x[i + head_dim/2])` (GPT-NeoX's layout): each pair is turned by the very
/// arithmetic [`rope`] uses, so both variants round alike.
pub fn rope_halves(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    let mut pairs = vec![0f32; 2 * half];
    for head in x.chunks_exact_mut(2 * half) {
        let (low, high) = head.split_at_mut(half);
        for ((pair, &a), &b) in pairs.chunks_exact_mut(2).zip(&*low).zip(&*high) {
            pair[0] = a;
            pair[1] = b;
        }
        rope(&mut pairs, cos, sin);
        for ((pair, a), b) in pairs.chunks_exact(2).zip(low).zip(high) {
            *a = pair[0];
            *b = pair[1];
        }
    }
}

/// `out = silu(gate) · up` per row, where each row of `gate_up` holds the
/// gate's `width` values followed by as many of up's. `e^x` as
/// [`crate::exp`] computes it, in llama.cpp's groups of 16.
pub fn silu_mul(gate_up: &[f32], out: &mut [f32], width: usize) {
    let silu_mul = crate::kernels().silu_mul;
    for (row, out) in gate_up
        .chunks_exact(2 * width)
        .zip(out.chunks_exact_mut(width))
    {
        let (gate, up) = row.split_at(width);
        silu_mul(gate, up, out);
    }
}

/// `x += y`.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// In place: `x = softmax(x · scale)`, max-subtracted, `e^x` as
/// [`crate::exp`] computes it, summed as llama.cpp's AVX-512 build sums (16
/// values folded pairwise in f32, the groups added in f64), so the
/// normalisation rounds the same way.
pub fn softmax_scaled(x: &mut [f32], scale: f32) {
    let mut max = f32::NEG_INFINITY;
    for v in x.iter_mut() {
        *v *= scale;
        max = max.max(*v);
    }
    let sum = (crate::kernels().exp_sum)(x, max);
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_scales_rows_to_unit_rms() {
        let x = [3.0, 4.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        let mut out = [0.0; 8];
        rms_norm(&x, &[1.0, 1.0, 2.0, 2.0], 0.0, &mut out);
        // rms of the first row is 2.5, of the second 1.
        assert_eq!(&out[..4], &[1.2, 1.6, 0.0, 0.0]);
        assert_eq!(&out[4..], &[1.0, 1.0, 2.0, 2.0]);
    }

    #[test]
    fn rope_rotates_pairs_by_the_position_angles() {
        let (mut cos, mut sin) = ([0.0; 2], [0.0; 2]);
        rope_angles(0, 10_000.0, &mut cos, &mut sin);
        assert_eq!(
            (cos, sin),
            ([1.0, 1.0], [0.0, 0.0]),
            "position 0 is the identity"
        );
        rope_angles(3, 10_000.0, &mut cos, &mut sin);
        assert!((cos[0] - 3f32.cos()).abs() < 1e-6);
        // The second pair turns 100× slower: 10000^(-2/4) = 1/100.
        assert!((sin[1] - 0.03f32.sin()).abs() < 1e-6);
        let mut x = [1.0, 0.0, 0.0, 2.0, 1.0, 0.0, 0.0, 2.0];
        rope(&mut x, &cos, &sin);
        for head in x.chunks(4) {
            assert!((head[0] - cos[0]).abs() < 1e-6 && (head[1] - sin[0]).abs() < 1e-6);
            assert!((head[2] + 2.0 * sin[1]).abs() < 1e-6 && (head[3] - 2.0 * cos[1]).abs() < 1e-6);
        }
    }

    #[test]
    fn rope_halves_turns_the_pairs_of_halves_as_rope_turns_neighbours() {
        let (mut cos, mut sin) = ([0.0; 4], [0.0; 4]);
        rope_angles(7, 10_000.0, &mut cos, &mut sin);
        // Two heads of 8; the halves layout is the interleaved one with
        // each head's dimensions reordered (0 4 1 5 2 6 3 7).
        let halves: Vec<f32> = (0..16).map(|i| (i as f32 * 0.37).sin()).collect();
        let order = [0, 4, 1, 5, 2, 6, 3, 7];
        let interleave = |x: &[f32]| -> Vec<f32> {
            x.chunks(8)
                .flat_map(|head| order.iter().map(|&i| head[i]))
                .collect()
        };
        let mut turned = halves.clone();
        rope_halves(&mut turned, &cos, &sin);
        let mut want = interleave(&halves);
        rope(&mut want, &cos, &sin);
        assert_eq!(interleave(&turned), want);
        assert_ne!(turned, halves, "position 7 turns something");
    }

    #[test]
    fn silu_mul_gates_each_row() {
        let gate_up = [0.0, 1.0, 5.0, 7.0, -1.0, 2.0, 3.0, 0.5];
        let mut out = [0.0; 4];
        silu_mul(&gate_up, &mut out, 2);
        // Rows shorter than 16 take libm's exp (llama.cpp's scalar tail).
        let silu = |g: f32| g / (1.0 + (-g).exp());
        assert_eq!(
            out,
            [0.0, silu(1.0) * 7.0, silu(-1.0) * 3.0, silu(2.0) * 0.5]
        );
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut x = [1.0, 3.0, 2.0, -1000.0];
        softmax_scaled(&mut x, 0.5);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[1] > x[2] && x[2] > x[0] && x[3] == 0.0);
        assert!((x[1] / x[0] - 1f32.exp()).abs() < 1e-5);
    }
}
