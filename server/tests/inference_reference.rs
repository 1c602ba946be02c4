//! Our llama implementation checked against candle-transformers'
//! `quantized_llama` (the stock, slower path) on the same GGUF (`make model`).
//!
//! Tolerances, and why:
//! - token by token, same Q4_1 weights and candle's kernels: |Δlogit| ≤ 1e-3
//!   (same arithmetic; any larger difference is a bug in rope, the KV cache
//!   or attention);
//! - our CPU forward pass against candle's stock model on the first token:
//!   mean |Δ| ≤ 0.25, max ≤ 0.6 (measured 0.15 / 0.32 at most). Ours rounds
//!   as llama.cpp does (values through an f16 KV cache, activations
//!   quantized with ties to even), candle keeps f32 values: the same
//!   arithmetic up to rounding, which 8-bit activations amplify;
//! - batched prefill vs token by token, f32 weights: |Δlogit| ≤ 1e-3 (only
//!   summation order differs; checks the causal mask and GQA layout). With
//!   8-bit activations the two differ by a mean of 0.1–0.7 for candle's
//!   kernels and ours alike: a rounding flip in one activation block moves
//!   everything after it, so quantized paths are compared by their top
//!   tokens, not bit for bit;
//! - Q4_1 as stored and requantized to Q8_0: the exact (f32) model's top
//!   token in their top 5, mean |Δlogit| from it ≤ 1.5 on every prompt and
//!   ≤ 0.6 averaged over the prompts (measured with our kernels: Q4_1 1.23,
//!   0.12, 0.13; Q8_0 0.20, 0.26, 0.22).

mod inference_support;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use inference_support::{model_path, user};
use securechat_server::inference::{LoadedModel, Placement, WeightFormat, load_model_on};

const PROMPTS: [&str; 3] = [
    "What is the capital of France?",
    "List three prime numbers.",
    "Écris une phrase sur le chat. 猫",
];
const STEPS: usize = 16;
/// Mean |Δlogit| from the exact model allowed to a quantized path, averaged
/// over the prompts and on any one prompt; logits span ~±25.
const MAX_MEAN_ERROR: f32 = 0.6;
const MAX_MEAN_ERROR_ONE_PROMPT: f32 = 1.5;

fn stock() -> ModelWeights {
    let mut file = std::fs::File::open(model_path()).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap()
}

fn ours(format: WeightFormat) -> LoadedModel {
    load_model_on(&model_path(), None, format, Placement::Cpu).unwrap()
}

/// Our model code on candle's quantized kernels.
fn ours_on_candle_kernels() -> LoadedModel {
    load_model_on(
        &model_path(),
        None,
        WeightFormat::AsStored,
        Placement::CpuCandleKernels,
    )
    .unwrap()
}

fn stock_step(model: &mut ModelWeights, token: u32, pos: usize) -> Vec<f32> {
    let input = Tensor::new(&[token], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model
        .forward(&input, pos)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Runs the prompt one token at a time; returns the logits after it.
fn ours_stepwise(m: &mut LoadedModel, ids: &[u32]) -> Vec<f32> {
    let mut logits = Vec::new();
    for (pos, &t) in ids.iter().enumerate() {
        logits = m.model.forward(&[t], pos).unwrap();
    }
    logits
}

fn top(v: &[f32], n: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..v.len() as u32).collect();
    idx.sort_by(|&a, &b| v[b as usize].total_cmp(&v[a as usize]));
    idx.truncate(n);
    idx
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn mean_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
}

#[test]
fn token_by_token_matches_stock_quantized_llama() {
    let mut m = ours_on_candle_kernels();
    let mut reference = stock();
    for prompt in PROMPTS {
        let ids = m.encoder.encode(&user(prompt)).unwrap();
        let mut a = Vec::new();
        let mut b = Vec::new();
        for (pos, &t) in ids.iter().enumerate() {
            a = m.model.forward(&[t], pos).unwrap();
            b = stock_step(&mut reference, t, pos);
            let diff = max_abs_diff(&a, &b);
            assert!(
                diff <= 1e-3,
                "{prompt:?} position {pos}: logits differ by {diff}"
            );
        }
        // Greedy continuation: same tokens.
        for (step, pos) in (ids.len()..ids.len() + STEPS).enumerate() {
            let (ta, tb) = (top(&a, 1)[0], top(&b, 1)[0]);
            assert_eq!(ta, tb, "{prompt:?}: greedy step {step} differs");
            a = m.model.forward(&[ta], pos).unwrap();
            b = stock_step(&mut reference, tb, pos);
        }
    }
}

#[test]
fn our_kernels_match_candles_on_the_first_token() {
    let mut ours = ours(WeightFormat::AsStored);
    let mut reference = stock();
    for prompt in PROMPTS {
        let ids = ours.encoder.encode(&user(prompt)).unwrap();
        let a = ours.model.forward(&ids[..1], 0).unwrap();
        let b = stock_step(&mut reference, ids[0], 0);
        let (mean, max) = (mean_abs_diff(&a, &b), max_abs_diff(&a, &b));
        eprintln!("{prompt:?}: first-token mean |Δ| {mean:.3}, max {max:.3}");
        assert!(
            mean <= 0.25 && max <= 0.6,
            "{prompt:?}: first-token logits differ by mean {mean}, max {max}"
        );
    }
}

#[test]
fn batched_prefill_matches_token_by_token() {
    let mut m = ours(WeightFormat::F32);
    for prompt in PROMPTS {
        let ids = m.encoder.encode(&user(prompt)).unwrap();
        let batched = m.model.forward(&ids, 0).unwrap();
        let stepwise = ours_stepwise(&mut m, &ids);
        let diff = max_abs_diff(&batched, &stepwise);
        assert!(diff <= 1e-3, "{prompt:?}: prefill differs by {diff}");
    }
}

#[test]
fn quantized_paths_stay_close_to_exact() {
    // F32 holds the file's Q4_1 values exactly; both quantized paths are
    // approximations of it (8-bit activations; Q8_0 also rounds weights).
    let mut exact = ours(WeightFormat::F32);
    let mut q4 = ours(WeightFormat::AsStored);
    let mut q8 = ours(WeightFormat::Q8_0);
    let (mut sum4, mut sum8) = (0.0, 0.0);
    for prompt in PROMPTS {
        let ids = exact.encoder.encode(&user(prompt)).unwrap();
        let reference = exact.model.forward(&ids, 0).unwrap();
        let a = q4.model.forward(&ids, 0).unwrap();
        let b = q8.model.forward(&ids, 0).unwrap();
        let (err4, err8) = (mean_abs_diff(&a, &reference), mean_abs_diff(&b, &reference));
        eprintln!("{prompt:?}: mean |Δ| vs f32: Q4_1 {err4:.3}, Q8_0 {err8:.3}");
        for (name, err, logits) in [("Q4_1", err4, &a), ("Q8_0", err8, &b)] {
            assert!(
                err <= MAX_MEAN_ERROR_ONE_PROMPT,
                "{prompt:?}: {name} mean error {err}"
            );
            assert!(
                top(logits, 5).contains(&top(&reference, 1)[0]),
                "{prompt:?}: {name} loses the top token"
            );
        }
        sum4 += err4;
        sum8 += err8;
    }
    let n = PROMPTS.len() as f32;
    assert!(sum4 / n <= MAX_MEAN_ERROR, "Q4_1: mean error {}", sum4 / n);
    assert!(sum8 / n <= MAX_MEAN_ERROR, "Q8_0: mean error {}", sum8 / n);
}

#[test]
fn long_prompt_in_pieces_matches_one_pass() {
    // > 512 tokens: the model itself splits the one-pass run into chunks;
    // the pieces here start at other offsets, exercising prefill at pos > 0.
    let mut m = ours(WeightFormat::F32);
    let text = "The river carried the boats past seven villages and a mill. ".repeat(50);
    let ids = m.encoder.encode(&user(&text)).unwrap();
    assert!(ids.len() > 600, "{} tokens", ids.len());
    let whole = m.model.forward(&ids, 0).unwrap();
    m.model.forward(&ids[..100], 0).unwrap();
    m.model.forward(&ids[100..450], 100).unwrap();
    let pieces = m.model.forward(&ids[450..], 450).unwrap();
    let diff = max_abs_diff(&whole, &pieces);
    assert!(diff <= 1e-3, "pieces differ by {diff}");
}
