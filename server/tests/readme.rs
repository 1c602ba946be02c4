//! Runs every shell block of README.md's "Calling the API" section with
//! curl against a live server, so the documented examples stay true.

use securechat_test_support::https::{MODEL, RELAXED, server};
use std::process::Command;

fn example_blocks(readme: &str) -> Vec<String> {
    let section = readme
        .split("## Calling the API")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("section present");
    section
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn readme_curl_examples_work() {
    if Command::new("curl").arg("--version").output().is_err() {
        panic!("curl is required by this test (see the README's prerequisites)");
    }
    let s = server(RELAXED).await;
    let readme = include_str!("../README.md");
    let blocks = example_blocks(readme);
    assert!(blocks.len() >= 5, "{} blocks", blocks.len());
    for block in blocks {
        let ca = s.ca_path();
        let url = s.base.clone();
        let (key, admin) = (s.keys.developer.clone(), s.keys.admin.clone());
        let script = format!("set -euo pipefail\n{block}");
        let out = tokio::task::spawn_blocking(move || {
            Command::new("bash")
                .arg("-c")
                .arg(script)
                .env("CA", ca)
                .env("URL", url)
                .env("KEY", key)
                .env("ADMIN_KEY", admin)
                .env("MODEL", MODEL)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "README block failed:\n{block}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
