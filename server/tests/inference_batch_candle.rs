//! Continuous batching on the candle forward pass, the one a GPU runs, here
//! on candle's CPU device (`Placement::CpuCandleKernels`) with the real
//! default model: one batched step per iteration for every running
//! sequence, and a sequence's greedy answer in a batch is its answer alone,
//! and the answer of the plain single-sequence loop.

mod inference_support;

use std::sync::Arc;

use inference_support::*;
use securechat_server::engine::{Engine, GenerationRequest};
use securechat_server::inference::{
    LocalEngine, Placement, ServingOptions, WeightFormat, load_model_on,
};

const TOKENS: u32 = 8;

/// Prompts short enough to prefill in one piece alone and in the batch,
/// so that each sequence's attention has the same shapes either way.
const CHUNK: usize = 512;

fn candle_engine(serving: ServingOptions) -> Arc<dyn Engine> {
    let loaded = load_model_on(
        &model_path(),
        None,
        WeightFormat::AsStored,
        Placement::CpuCandleKernels,
    )
    .expect("loading the default model on candle's kernels");
    Arc::new(LocalEngine::start(loaded.model, loaded.encoder, loaded.info, serving).unwrap())
}

fn prompts() -> Vec<String> {
    [
        "the sea",
        "bread",
        "winter",
        "a lighthouse",
        "bees",
        "trains",
    ]
    .iter()
    .enumerate()
    .map(|(i, topic)| {
        let context = "Some background. ".repeat(i);
        format!("{context}Write a sentence about {topic}.")
    })
    .collect()
}

/// The plain greedy loop over the single-sequence API: the reference that
/// owes nothing to the scheduler.
fn greedy_loop(prompt: &str) -> String {
    let mut loaded = load_model_on(
        &model_path(),
        None,
        WeightFormat::AsStored,
        Placement::CpuCandleKernels,
    )
    .unwrap();
    let ids = loaded.encoder.encode(&user(prompt)).unwrap();
    let mut logits = loaded.model.forward(&ids, 0).unwrap();
    let mut text = Vec::new();
    for step in 0..TOKENS as usize {
        let t = logits
            .iter()
            .enumerate()
            .fold(0, |best, (i, &x)| if x > logits[best] { i } else { best })
            as u32;
        if loaded.encoder.tokenizer.is_end_of_generation(t) {
            break;
        }
        text.extend_from_slice(loaded.encoder.tokenizer.token_bytes(t));
        logits = loaded.model.forward(&[t], ids.len() + step).unwrap();
    }
    String::from_utf8_lossy(&text).into_owned()
}

#[test]
fn the_candle_pass_batches_and_answers_as_each_alone() {
    let requests: Vec<GenerationRequest> = prompts()
        .iter()
        .map(|p| request(p, greedy(TOKENS)))
        .collect();

    let one_at_a_time = candle_engine(ServingOptions {
        max_sequences: 1,
        prefix_cache: false,
        prefill_chunk_tokens: CHUNK,
        ..ServingOptions::default()
    });
    let alone: Vec<Collected> = requests
        .iter()
        .map(|r| run(one_at_a_time.as_ref(), r.clone()))
        .collect();
    drop(one_at_a_time);

    let batched = candle_engine(ServingOptions {
        max_sequences: requests.len(),
        prefix_cache: false,
        prefill_chunk_tokens: CHUNK,
        ..ServingOptions::default()
    });
    let streams: Vec<_> = requests
        .iter()
        .map(|r| batched.generate(r.clone()).expect("admitted"))
        .collect();
    let most_running = peak_running(batched.as_ref());
    let together: Vec<Collected> = streams.into_iter().map(collect).collect();
    assert!(
        most_running > 1,
        "the engine never ran two sequences at once"
    );

    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a.text(), b.text(), "sequence {i}");
        assert_eq!(a.usage, b.usage, "sequence {i}");
        assert_eq!(a.finish_reason, b.finish_reason, "sequence {i}");
    }
    assert_eq!(alone[0].text(), greedy_loop(&prompts()[0]));
}
