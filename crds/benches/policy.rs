//! `auth.policy` decision latency: one evaluation of a 20-rule Rego module
//! (policy-20-rules.rego beside this file) by the server's own code
//! (`securechat_crds::policy`, regorus), on an input that exercises most of
//! its rules. Criterion reports the mean; the goal is about the tail, so
//! the bench also times 20,000 evaluations one by one and prints p50, p99
//! and p99.9 (and adds the p99 to `make bench`'s summary). Goal: p99 under
//! 50 µs, so a policy never dominates a request.

use std::time::{Duration, Instant};

use chrono::Utc;
use criterion::{Criterion, criterion_group, criterion_main};
use securechat_crds::policy::{Policy, PolicyInput, PolicyTime, WindowUsage};

const POLICY: &str = include_str!("policy-20-rules.rego");

fn input() -> PolicyInput {
    PolicyInput {
        principal: "key:4f2a9c".into(),
        key_id: Some("4f2a9c".into()),
        namespace: Some("team-a".into()),
        auth_method: "ApiKey".into(),
        tier: "Developer".into(),
        method: "POST".into(),
        route: "/v1/chat/completions".into(),
        model: "smollm2".into(),
        request_bytes: 2048,
        usage: WindowUsage {
            requests: 7,
            window_seconds: 60,
        },
        client_address: Some("10.1.2.3".into()),
        time: PolicyTime::at(Utc::now()),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Times evaluations one by one; prints and reports the percentiles.
fn tail(policy: &Policy, input: &PolicyInput) {
    const N: usize = 20_000;
    for _ in 0..1_000 {
        policy.evaluate(input).expect("decides");
    }
    let mut times: Vec<Duration> = (0..N)
        .map(|_| {
            let start = Instant::now();
            let decision = policy.evaluate(input).expect("decides");
            let elapsed = start.elapsed();
            assert!(decision.allow);
            elapsed
        })
        .collect();
    times.sort();
    let (p50, p99, p999) = (
        percentile(&times, 0.50),
        percentile(&times, 0.99),
        percentile(&times, 0.999),
    );
    println!(
        "policy_decision/20_rules: {N} evaluations: p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs (goal: p99 < 50 µs)",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        p999.as_secs_f64() * 1e6
    );
    if let Ok(path) = std::env::var("BENCH_SUMMARY") {
        use std::io::Write;
        let row = serde_json::json!({
            "figure": "auth.policy decision p99, 20 rules",
            "ours": p99.as_secs_f64() * 1e6, "unit": "µs", "higher_is_better": false,
            "peer": null, "peer_name": null, "goal": "< 50 µs",
        });
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .expect("BENCH_SUMMARY");
        writeln!(file, "{row}").expect("write the summary row");
    }
}

fn bench(c: &mut Criterion) {
    let policy = Policy::compile(POLICY).expect("the bench policy compiles");
    let input = input();
    let decision = policy.evaluate(&input).expect("decides");
    assert!(decision.allow, "the input is one the policy admits");
    c.bench_function("policy_decision/20_rules", |b| {
        b.iter(|| {
            policy
                .evaluate(std::hint::black_box(&input))
                .expect("decides")
        })
    });
    // The fixed cost of one evaluation (the input built as a Rego value,
    // the evaluation state regorus sets up per call), with a module of one
    // rule.
    let trivial = Policy::compile("package securechat\nallow := true\n").expect("compiles");
    c.bench_function("policy_decision/1_rule", |b| {
        b.iter(|| {
            trivial
                .evaluate(std::hint::black_box(&input))
                .expect("decides")
        })
    });
    tail(&policy, &input);
}

criterion_group!(benches, bench);
criterion_main!(benches);
