//! Continuous batching with the real default model: a sequence's greedy
//! answer in a batch of 16 mixed-length sequences is its answer alone,
//! token for token; a conversation's second turn reuses the first turn's
//! cached blocks; and a key/value cache too small for everyone preempts
//! and recomputes without changing any answer.

mod inference_support;

use std::time::{Duration, Instant};

use inference_support::*;
use securechat_server::engine::{Engine, GenerationRequest};
use securechat_server::inference::{EngineOptions, ServingOptions, load_engine};

const TOKENS: u32 = 16;

/// Prompt tokens per step in the batched engine: prompts of up to ~200
/// tokens run in several chunks, interleaved with others' decoding.
const CHUNK: usize = 64;

/// 16 prompts from one line to several prefill chunks.
fn prompts() -> Vec<String> {
    let topics = [
        "the sea",
        "bread",
        "winter",
        "a lighthouse",
        "bees",
        "trains",
        "maps",
        "rain",
    ];
    (0..16)
        .map(|i| {
            let topic = topics[i % topics.len()];
            // 0 to 28 repeats of 6 tokens.
            let context = "Some background you may use. ".repeat(i * i / 8);
            format!("{context}Write two sentences about {topic}.")
        })
        .collect()
}

/// Each request alone: one sequence at a time, nothing shared.
fn alone(requests: &[GenerationRequest]) -> Vec<Collected> {
    let engine = engine_with(ServingOptions {
        max_sequences: 1,
        prefix_cache: false,
        ..ServingOptions::default()
    });
    requests
        .iter()
        .map(|r| run(engine.as_ref(), r.clone()))
        .collect()
}

/// Every request at once.
fn together(engine: &dyn Engine, requests: &[GenerationRequest]) -> Vec<Collected> {
    let streams: Vec<_> = requests
        .iter()
        .map(|r| engine.generate(r.clone()).expect("admitted"))
        .collect();
    streams.into_iter().map(collect).collect()
}

fn assert_same(alone: &[Collected], batched: &[Collected]) {
    for (i, (a, b)) in alone.iter().zip(batched).enumerate() {
        assert_eq!(a.text(), b.text(), "sequence {i}");
        assert_eq!(a.usage, b.usage, "sequence {i}");
        assert_eq!(a.finish_reason, b.finish_reason, "sequence {i}");
    }
}

#[test]
fn a_batch_of_16_answers_as_each_alone() {
    let requests: Vec<_> = prompts()
        .iter()
        .map(|p| request(p, greedy(TOKENS)))
        .collect();
    let engine = engine_with(ServingOptions {
        prefill_chunk_tokens: CHUNK,
        ..ServingOptions::default()
    });
    let lengths: Vec<usize> = requests
        .iter()
        .map(|r| engine.count_prompt_tokens(&r.messages).unwrap())
        .collect();
    assert!(
        lengths.iter().any(|&n| n > 3 * CHUNK) && lengths.iter().any(|&n| n < CHUNK),
        "{lengths:?}"
    );
    let started = Instant::now();
    let expected = alone(&requests);
    eprintln!("alone, one after another: {:?}", started.elapsed());
    let started = Instant::now();
    let batched = together(engine.as_ref(), &requests);
    eprintln!("all 16 at once: {:?}", started.elapsed());
    assert_same(&expected, &batched);
    wait_until_idle(engine.as_ref(), Duration::from_secs(10)).unwrap();
}

#[test]
fn the_second_turn_reuses_the_first_from_the_prefix_cache() {
    use securechat_server::engine::{ChatMessage, Role};
    let engine = engine(4);
    let first = user(&format!(
        "{}Summarise the above in one line.",
        "A long history of the harbour town. ".repeat(40)
    ));
    let answer = run(
        engine.as_ref(),
        GenerationRequest {
            messages: first.clone(),
            ..request("", greedy(TOKENS))
        },
    );
    let first_tokens = engine.count_prompt_tokens(&first).unwrap() as u64;
    let before = engine.stats();
    let mut second = first;
    second.push(ChatMessage {
        role: Role::Assistant,
        content: answer.text(),
    });
    second.push(ChatMessage {
        role: Role::User,
        content: "And in one word?".into(),
    });
    run(
        engine.as_ref(),
        GenerationRequest {
            messages: second,
            ..request("", greedy(4))
        },
    );
    let after = engine.stats();
    let hits = after.prefix_cache_hits - before.prefix_cache_hits;
    // All of the first turn's prompt but its last partial block.
    assert!(
        hits >= first_tokens / 16 * 16 - 16,
        "{hits} tokens reused of a first turn of {first_tokens}"
    );
    assert!(after.prefix_cache_queries > before.prefix_cache_queries);
}

/// A context and cache of 128 positions for three sequences that each
/// grow to ~128: two start, one is preempted while the other generates and
/// resumes when there is room, and every answer is the one it gives
/// alone.
#[test]
fn a_full_cache_preempts_and_recomputes_without_changing_answers() {
    let small = |max_sequences| {
        load_engine(
            &model_path(),
            EngineOptions {
                serving: ServingOptions {
                    max_sequences,
                    kv_cache_tokens: Some(CONTEXT),
                    ..ServingOptions::default()
                },
                context_length: Some(CONTEXT),
                ..EngineOptions::default()
            },
        )
        .expect("loading the default model")
    };
    const CONTEXT: usize = 128;
    let requests: Vec<_> = ["a dragon", "a lighthouse keeper", "a lost cat"]
        .iter()
        .map(|hero| request(&format!("Write a long story about {hero}."), greedy(200)))
        .collect();
    let alone_engine = small(1);
    let expected: Vec<Collected> = requests
        .iter()
        .map(|r| run(alone_engine.as_ref(), r.clone()))
        .collect();
    drop(alone_engine);
    let total: u32 = expected
        .iter()
        .map(|c| c.usage.prompt_tokens + c.usage.completion_tokens)
        .sum();
    assert!(
        total as usize > 2 * CONTEXT,
        "the answers must not fit together: {total}"
    );

    let engine = small(4);
    let batched = together(engine.as_ref(), &requests);
    assert_same(&expected, &batched);
    assert!(
        engine.serving_metrics().preemptions.get() > 0,
        "no sequence was preempted"
    );
}
