//! The Engine behaviour the HTTP handlers rely on, with the real default
//! model (`make model`).

mod inference_support;

use std::time::{Duration, Instant};

use inference_support::*;
use securechat_server::engine::{EngineError, FinishReason, GenerationEvent, SamplingParams};
use securechat_server::inference::ServingOptions;

const PROMPT: &str = "Write three sentences about the sea.";

#[test]
fn loads_the_default_model() {
    let engine = engine(4);
    let info = engine.info();
    assert_eq!(info.family, "llama");
    assert_eq!(info.context_length, 8192);
    assert!(!info.id.is_empty());
    assert_eq!(engine.queue_depth(), 0);
}

#[test]
fn greedy_generation_is_deterministic_and_streams() {
    let engine = engine(4);
    let first = run(engine.as_ref(), request(PROMPT, greedy(40)));
    let second = run(engine.as_ref(), request(PROMPT, greedy(40)));
    assert_eq!(first.text(), second.text());
    assert!(
        first.text().split_whitespace().count() >= 5,
        "too little text: {:?}",
        first.text()
    );
    // Streamed piece by piece, not in one block at the end.
    assert!(
        first.pieces.len() >= 10,
        "only {} pieces",
        first.pieces.len()
    );
    let prompt_tokens = engine.count_prompt_tokens(&user(PROMPT)).unwrap();
    assert_eq!(first.usage.prompt_tokens as usize, prompt_tokens);
    assert!(first.usage.completion_tokens > 0 && first.usage.completion_tokens <= 40);
    if first.finish_reason == FinishReason::Length {
        assert_eq!(first.usage.completion_tokens, 40);
    }
}

#[test]
fn seeded_sampling_repeats_and_seeds_differ() {
    let engine = engine(4);
    let params = |seed| SamplingParams {
        max_tokens: 24,
        temperature: 1.0,
        seed: Some(seed),
        ..SamplingParams::default()
    };
    let a = run(engine.as_ref(), request(PROMPT, params(1))).text();
    let b = run(engine.as_ref(), request(PROMPT, params(1))).text();
    let c = run(engine.as_ref(), request(PROMPT, params(2))).text();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn stop_sequence_ends_generation_before_it() {
    let engine = engine(4);
    let full = run(engine.as_ref(), request(PROMPT, greedy(40))).text();
    // A stop string taken from the middle of the unconstrained output.
    let words: Vec<&str> = full.split_whitespace().collect();
    assert!(
        words.len() >= 6,
        "output too short to pick a stop word: {full:?}"
    );
    let stop = format!(" {}", words[4]);
    let expected = &full[..full.find(&stop).expect("stop word in output")];

    let params = SamplingParams {
        stop: vec![stop.clone()],
        ..greedy(40)
    };
    let stopped = run(engine.as_ref(), request(PROMPT, params));
    assert_eq!(stopped.finish_reason, FinishReason::Stop);
    assert_eq!(stopped.text(), expected);
    assert!(!stopped.text().contains(&stop));
}

#[test]
fn max_tokens_reports_length() {
    let engine = engine(4);
    let out = run(engine.as_ref(), request(PROMPT, greedy(3)));
    assert_eq!(out.finish_reason, FinishReason::Length);
    assert_eq!(out.usage.completion_tokens, 3);
}

#[test]
fn full_queue_fails_fast_with_retry_after() {
    let engine = engine_with(ServingOptions {
        max_sequences: 1,
        max_queue: 1,
        ..ServingOptions::default()
    });
    let long = || request(PROMPT, greedy(400));
    // One running plus one waiting is all that one place and a queue of
    // one admit.
    let mut streams = Vec::new();
    let mut rejected = None;
    let started = Instant::now();
    for _ in 0..4 {
        match engine.generate(long()) {
            Ok(s) => streams.push(s),
            Err(e) => {
                rejected = Some(e);
                break;
            }
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "generate must not block"
    );
    match rejected {
        Some(EngineError::QueueFull {
            queued,
            retry_after,
        }) => {
            assert!(queued >= 1, "queued {queued}");
            assert!(retry_after >= Duration::from_secs(1));
        }
        other => panic!("expected QueueFull, got {other:?}"),
    }
    assert!(streams.len() <= 2, "{} requests admitted", streams.len());
    assert_eq!(engine.queue_depth(), streams.len());
    // Dropping the clients frees the queue.
    drop(streams);
    wait_until_idle(engine.as_ref(), Duration::from_secs(10)).unwrap();
    let after = run(engine.as_ref(), request(PROMPT, greedy(2)));
    assert_eq!(after.usage.completion_tokens, 2);
}

#[test]
fn dropping_the_stream_cancels_generation() {
    let engine = engine(2);
    let mut stream = engine.generate(request(PROMPT, greedy(2000))).unwrap();
    match stream.blocking_recv() {
        Some(Ok(GenerationEvent::Text(_))) => {}
        other => panic!("expected text first, got {other:?}"),
    }
    let dropped = Instant::now();
    drop(stream);
    // One decode step of this model is tens of milliseconds.
    wait_until_idle(engine.as_ref(), Duration::from_secs(2)).unwrap();
    eprintln!("idle {:?} after the client left", dropped.elapsed());
}

#[test]
fn prompt_longer_than_context_is_rejected() {
    let engine = engine(2);
    let huge = "lorem ipsum ".repeat(5000);
    let counted = engine.count_prompt_tokens(&user(&huge)).unwrap();
    assert!(counted > 8192, "{counted} tokens");
    match engine.generate(request(&huge, greedy(8))) {
        Err(EngineError::PromptTooLong {
            prompt_tokens,
            context_length,
        }) => {
            assert_eq!(prompt_tokens, counted);
            assert_eq!(context_length, 8192);
        }
        other => panic!(
            "expected PromptTooLong, got {:?}",
            other.map(|_| "a stream")
        ),
    }
    assert_eq!(engine.queue_depth(), 0);
}

#[test]
fn empty_conversation_is_invalid() {
    let engine = engine(2);
    let req = securechat_server::engine::GenerationRequest {
        messages: vec![],
        params: greedy(4),
        caller: Default::default(),
    };
    assert!(matches!(
        engine.generate(req),
        Err(EngineError::InvalidRequest(_))
    ));
}

/// One place in the batch: a caller with five requests queued cannot keep
/// another caller's single request behind all of them, and an admin's
/// request goes before read-only ones that came first.
#[test]
fn the_queue_takes_callers_in_turn_and_tiers_by_weight() {
    use std::sync::{Arc, Mutex};

    use securechat_crds::v1alpha1::Tier;
    use securechat_server::engine::Caller;

    let engine = engine_with(ServingOptions {
        max_sequences: 1,
        ..ServingOptions::default()
    });
    let order = Arc::new(Mutex::new(Vec::new()));
    let send = |name: &'static str, tier: Tier, principal: &str| {
        let req = securechat_server::engine::GenerationRequest {
            caller: Caller {
                tier,
                principal: principal.into(),
            },
            ..request(PROMPT, greedy(4))
        };
        let stream = engine.generate(req).unwrap();
        let order = order.clone();
        std::thread::spawn(move || {
            collect(stream);
            order.lock().unwrap().push(name);
        })
    };
    // A long request holds the place while the others queue, and leaves.
    let mut blocker = engine.generate(request(PROMPT, greedy(2000))).unwrap();
    assert!(matches!(
        blocker.blocking_recv(),
        Some(Ok(GenerationEvent::Text(_)))
    ));
    let mut readers = Vec::new();
    for name in ["flood-1", "flood-2", "flood-3", "flood-4", "flood-5"] {
        readers.push(send(name, Tier::ReadOnly, "key:flood"));
    }
    readers.push(send("single", Tier::ReadOnly, "key:single"));
    readers.push(send("admin", Tier::Admin, "key:admin"));
    drop(blocker);
    for r in readers {
        r.join().unwrap();
    }
    let order = order.lock().unwrap().clone();
    let at = |name| order.iter().position(|&n| n == name).unwrap();
    // The admin first, then the two read-only callers in turn.
    assert_eq!(at("admin"), 0, "{order:?}");
    assert_eq!(at("single"), 2, "{order:?}");
    let floods: Vec<_> = order.iter().filter(|n| n.starts_with("flood")).collect();
    assert!(floods.windows(2).all(|w| w[0] < w[1]), "{order:?}");
}
