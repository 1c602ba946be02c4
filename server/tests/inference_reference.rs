//! Our llama implementation against candle-transformers' `quantized_llama`
//! (the stock, slower path) on the same GGUF: same logits within a
//! tolerance, same greedy tokens. The requantized (Q8_0) weights are held to
//! a looser tolerance since they round the Q4_1 values once more.

mod inference_support;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use inference_support::{model_path, user};
use securechat_server::inference::{WeightFormat, load_model};

const PROMPTS: [&str; 3] = [
    "What is the capital of France?",
    "List three prime numbers.",
    "Écris une phrase sur le chat. 猫",
];
const STEPS: usize = 16;

fn reference() -> ModelWeights {
    let mut file = std::fs::File::open(model_path()).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap()
}

/// Feeds tokens one at a time (the stock model's multi-token path is not
/// what we are testing) and returns the logits after the last.
fn reference_step(model: &mut ModelWeights, tokens: &[u32], pos: usize) -> Vec<f32> {
    let mut logits = None;
    for (i, &t) in tokens.iter().enumerate() {
        let input = Tensor::new(&[t], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        logits = Some(model.forward(&input, pos + i).unwrap());
    }
    logits.unwrap().squeeze(0).unwrap().to_vec1().unwrap()
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for i in 0..v.len() {
        if v[i] > v[best] {
            best = i;
        }
    }
    best as u32
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn matches_candle_quantized_llama() {
    let mut ours = load_model(&model_path(), None, WeightFormat::AsStored).unwrap();
    let mut requantized = load_model(&model_path(), None, WeightFormat::Q8_0).unwrap();
    let mut stock = reference();
    for prompt in PROMPTS {
        let ids = ours.encoder.encode(&user(prompt)).unwrap();
        let mut a = ours.model.forward(&ids, 0).unwrap();
        let mut b = reference_step(&mut stock, &ids, 0);
        let q8 = requantized.model.forward(&ids, 0).unwrap();

        // Same weights and formats: only summation order differs.
        let diff = max_abs_diff(&a, &b);
        assert!(
            diff < 1e-2,
            "{prompt:?}: first-step logits differ by {diff}"
        );
        let diff_q8 = max_abs_diff(&a, &q8);
        eprintln!("{prompt:?}: max |ours - stock| = {diff:.2e}, max |Q8_0 - Q4_1| = {diff_q8:.3}");
        assert!(diff_q8 < 0.5, "{prompt:?}: Q8_0 logits differ by {diff_q8}");
        assert_eq!(
            argmax(&a),
            argmax(&q8),
            "{prompt:?}: Q8_0 changes the first token"
        );

        let (mut ours_tokens, mut stock_tokens) = (Vec::new(), Vec::new());
        let mut pos = ids.len();
        for _ in 0..STEPS {
            let (ta, tb) = (argmax(&a), argmax(&b));
            ours_tokens.push(ta);
            stock_tokens.push(tb);
            if ta != tb {
                break;
            }
            a = ours.model.forward(&[ta], pos).unwrap();
            b = reference_step(&mut stock, &[tb], pos);
            pos += 1;
        }
        assert_eq!(
            ours_tokens, stock_tokens,
            "{prompt:?}: greedy tokens diverge"
        );
    }
}
