//! Abandoned requests, over real TLS with the real model: clients that send
//! long prompts and give up must not keep the engine busy. The engine
//! notices a departed client whether its job is queued (dropped before it
//! starts), reading its prompt (stopped between 512-token chunks) or
//! generating (stopped before the next token).
//!
//! The bound is relative, not a fixed time: the late caller may wait about
//! what one prompt chunk and its own request cost, measured here on the
//! same machine, while keeping the abandoned work would cost it the rest of
//! three ~7,500-token prompts (some thirty chunks).

mod inference_support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinHandle;

use securechat_server::dev;
use securechat_server::engine::{ChatMessage, Engine, Role};
use securechat_server::startup::start;
use securechat_test_support::https::{
    RELAXED, add_keys, client_for, client_with_timeout, eventually, metrics_at, sample,
    serve_options,
};

/// Tokens of each abandoned prompt: most of the model's 8,192.
const LONG_PROMPT: std::ops::Range<usize> = 7_000..8_000;
/// One prefill chunk of the llama engine.
const CHUNK_PROMPT: std::ops::Range<usize> = 400..512;

/// A user message of about `tokens` tokens (as the engine counts them,
/// chat template included), in `range`.
fn prompt_of(engine: &dyn Engine, range: std::ops::Range<usize>) -> String {
    let sentence = "The committee reviewed the quarterly figures and asked for a summary. ";
    let count = |text: &str| {
        engine
            .count_prompt_tokens(&[ChatMessage {
                role: Role::User,
                content: text.to_owned(),
            }])
            .unwrap()
    };
    // Tokens per sentence, and what the chat template adds around them.
    let (twenty, forty) = (count(&sentence.repeat(20)), count(&sentence.repeat(40)));
    let per_sentence = (forty - twenty) / 20;
    let template = twenty - 20 * per_sentence;
    eprintln!("the chat template takes {template} tokens, a sentence {per_sentence}");
    let middle = (range.start + range.end) / 2;
    let text = sentence.repeat((middle - template) / per_sentence);
    let tokens = count(&text);
    assert!(range.contains(&tokens), "{tokens} tokens, wanted {range:?}");
    text
}

fn one_token(text: &str) -> Value {
    json!({"messages": [{"role": "user", "content": text}], "max_tokens": 1, "temperature": 0})
}

/// Sends a one-token request and returns how long it took.
async fn timed(client: &reqwest::Client, url: &str, key: &str, text: &str) -> Duration {
    let started = Instant::now();
    let resp = client
        .post(url)
        .bearer_auth(key)
        .json(&one_token(text))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 1, "{body}");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_give_up_on_long_prompts_free_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dev::ensure(dir.path()).unwrap();
    // The ReadOnly tier may send long prompts here, with no token quota:
    // this test is about the queue, not the tier's limits.
    std::fs::write(
        &config_path,
        format!(
            "{RELAXED}roles:\n  readOnly:\n    permissions: [Chat]\n    maxPromptTokens: 8000\n"
        ),
    )
    .unwrap();
    let keys = add_keys(dir.path());
    let engine = inference_support::engine(8);
    let long = prompt_of(engine.as_ref(), LONG_PROMPT);
    let chunk = prompt_of(engine.as_ref(), CHUNK_PROMPT);
    let running = start(&serve_options(dir.path(), None), engine.clone())
        .await
        .unwrap();
    let base = format!("https://localhost:{}", running.api_addr.port());
    let url = format!("{base}/v1/chat/completions");
    let client = client_for(&dir.path().join("tls/ca.crt"), &[&rustls::version::TLS13]);
    // Long enough for the slowest honest wait (a failure before the fix
    // shows the minutes it took, not a client timeout).
    let patient = client_with_timeout(
        &dir.path().join("tls/ca.crt"),
        &[&rustls::version::TLS13],
        Duration::from_secs(900),
    );

    // What one request and one prompt chunk cost here, warm.
    timed(&patient, &url, &keys.developer, "Hi").await;
    let own = timed(&patient, &url, &keys.developer, "Hi").await;
    let one_chunk = timed(&patient, &url, &keys.developer, &chunk).await;

    // Three long prompts from the ReadOnly key; their clients give up once
    // all three are in the engine (one reading its prompt, two queued).
    let abandoned: Vec<JoinHandle<()>> = (0..3)
        .map(|_| {
            let (client, url, key, long) = (
                patient.clone(),
                url.clone(),
                keys.readonly.clone(),
                long.clone(),
            );
            tokio::spawn(async move {
                let _ = client
                    .post(url)
                    .bearer_auth(key)
                    .json(&one_token(&long))
                    .send()
                    .await;
            })
        })
        .collect();
    let depth = "securechat_engine_queue_depth";
    assert!(
        eventually(async || sample(&metrics_at(&client, &base).await, depth) == Some(3.0)).await,
        "the three long prompts never reached the engine"
    );
    for task in &abandoned {
        task.abort();
    }

    let waited = timed(&patient, &url, &keys.developer, "Hi").await;
    eprintln!(
        "own request {own:?}, one {CHUNK_PROMPT:?}-token prompt {one_chunk:?}, \
         after three abandoned prompts {waited:?}"
    );
    assert!(
        waited < (own + one_chunk) * 4,
        "a one-token request waited {waited:?} behind abandoned prompts \
         (its own cost is {own:?}, one prompt chunk's {one_chunk:?})"
    );
    let metrics = metrics_at(&client, &base).await;
    assert_eq!(
        sample(&metrics, "securechat_generations_abandoned_total"),
        Some(3.0),
        "{metrics}"
    );
    // The worker counts a job out just after its last event.
    assert!(
        eventually(async || sample(&metrics_at(&client, &base).await, depth) == Some(0.0)).await,
        "the engine still holds work"
    );
    running.shutdown().await;
}
