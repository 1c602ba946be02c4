//! The shipped alert rules (charts/securechat/files/prometheus-rules.yaml)
//! may only use metrics this server really exports: a renamed metric fails
//! here instead of silently disarming an alert. The names come from a
//! scrape of a running server, after traffic that creates every labelled
//! series the rules read.

use securechat_test_support::https::client_certs::{self, Ca};
use securechat_test_support::https::{chat_body, eventually, server};
use securechat_test_support::store::StoreProcess;
use std::collections::BTreeSet;

/// Limits low enough that the test can trip the request limiter (the
/// rate-limited counter appears only once something was refused), the
/// brute-force guard out of the way.
const TIGHT: &str =
    "rateLimit:\n  requestsPerMinute: 5\n  burst: 5\nlimits:\n  maxAuthFailuresPerMinute: 100000\n";
use serde_json::Value;

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../charts/securechat/files/prometheus-rules.yaml"
);

/// `securechat_*` metric names the rules use, except the operator's
/// (`securechat_operator_*`, exported by the operator, not this server).
fn server_metrics_in_rules() -> BTreeSet<String> {
    let rules = std::fs::read_to_string(RULES).expect("read the rules file");
    // Comments may speak of the prefix (`securechat_*`); expressions and
    // annotations must name real metrics.
    let rules: String = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let mut names = BTreeSet::new();
    let mut rest = rules.as_str();
    while let Some(start) = rest.find("securechat_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        if !name.starts_with("securechat_operator_") {
            names.insert(name.to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// Sample names of a text exposition (OpenMetrics or Prometheus): every
/// sample line's name, plus the names a declared family exposes even before
/// its first sample (counter `_total`, histogram `_bucket`/`_sum`/`_count`).
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut parts = decl.split_whitespace();
            let (Some(family), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            for suffix in suffixes {
                names.insert(format!("{}{suffix}", family.trim_end_matches("_total")));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

#[tokio::test]
async fn alert_rules_use_only_metrics_the_server_exports() {
    let used = server_metrics_in_rules();
    // The rules file is the one the chart ships; an empty set would mean the
    // scan (or the path) is broken, not that all is well.
    assert!(
        used.contains("securechat_jwt_verifications_total")
            && used.contains("securechat_certificate_expiry_seconds"),
        "the rules scan found too little: {used:?}"
    );

    // A shared store gives the server an outbound dependency, and so a
    // circuit breaker and its state series (SecureChatCircuitOpen).
    let store = StoreProcess::start();
    let base = format!(
        "{TIGHT}sharedState:\n  address: {}\n  keyPrefix: test/alerts/\n  \
         onUnavailable: FailClosed\n  timeout: 250ms\n",
        store.address()
    );
    let s = server(&base).await;
    // Traffic that creates the labelled series: a chat, a wrong key, a good
    // and a forged token, then requests until the limiter refuses one.
    s.client
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&s.keys.admin)
        .json(&chat_body("hello"))
        .send()
        .await
        .unwrap();
    let wrong = s
        .client
        .get(s.url("/v1/models"))
        .bearer_auth("sk-sc-nosuchkey-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let token: Value = s
        .client
        .post(s.url("/oauth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_secret", s.keys.developer.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwt = token["access_token"].as_str().expect("access_token");
    let ok = s
        .client
        .get(s.url("/v1/models"))
        .bearer_auth(jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // Same header and claims, signature of another token's bytes.
    let (signed, _) = jwt.rsplit_once('.').unwrap();
    let forged = format!("{signed}.{}", "A".repeat(86));
    let refused = s
        .client
        .get(s.url("/v1/models"))
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let mut limited = false;
    // Every request is authenticated before it is limited: each one is a
    // verified token, the refused one included.
    let mut verified_ok = 1;
    for _ in 0..500 {
        verified_ok += 1;
        let status = s
            .client
            .get(s.url("/v1/models"))
            .bearer_auth(jwt)
            .send()
            .await
            .unwrap()
            .status();
        if status == 429 {
            limited = true;
            break;
        }
        assert_eq!(status, 200);
    }
    assert!(limited, "500 requests and no 429");

    // A client certificate accepted under auth.mtls (switched on by a live
    // config change) creates the client-certificate expiry series. The
    // client CA bundle is the default one, the server's CA file (file
    // paths are read at start); the test's CA joins it.
    let ca = Ca::new("client CA");
    let bundle = std::fs::read_to_string(s.ca_path()).unwrap();
    std::fs::write(s.ca_path(), format!("{bundle}{}", ca.pem)).unwrap();
    let mtls = "auth:\n  mtls:\n    mode: Optional\n    allow:\n      - spiffeID: spiffe://cluster.local/ns/apps/*\n        tier: Developer\n";
    std::fs::write(s.data().join("config.yaml"), format!("{base}{mtls}")).unwrap();
    let identity = ca.client(Some("spiffe://cluster.local/ns/apps/sa/web"), -1, 2);
    // A new client (a new connection) each try: a pooled connection opened
    // before the reload was never asked for a certificate.
    assert!(
        eventually(async || client_certs::client(&s.ca_path(), Some(&identity))
            .get(s.url("/v1/models"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200))
        .await,
        "the client certificate was not accepted after mTLS was switched on"
    );
    let exposition = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported = exported_names(&exposition);
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the alert rules use metrics the server does not export: {missing:?}\nexported: {exported:?}"
    );
    // The ratio alert's numerator and denominator both move.
    for sample in [
        format!("securechat_jwt_verifications_total{{result=\"ok\"}} {verified_ok}\n"),
        "securechat_jwt_verifications_total{result=\"invalid_token\"} 1\n".to_string(),
    ] {
        assert!(
            exposition.contains(&sample),
            "missing {sample} in\n{exposition}"
        );
    }
}

#[test]
fn exported_names_expand_declared_families() {
    let text = "# TYPE a_requests counter\n# TYPE b_seconds histogram\n# TYPE c gauge\nd_total{x=\"1\"} 2\n# EOF\n";
    let names = exported_names(text);
    for name in [
        "a_requests_total",
        "b_seconds_bucket",
        "b_seconds_count",
        "c",
        "d_total",
    ] {
        assert!(names.contains(name), "{name} not in {names:?}");
    }
}
