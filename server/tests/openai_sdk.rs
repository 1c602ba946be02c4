//! The official OpenAI Python SDK against the server: models, a chat, a
//! streamed chat, with an API key and with a JWT from /oauth/token. The
//! SDK is installed once into a venv by tests/python/setup-venv.sh.

use securechat_test_support::https::{MODEL, RELAXED, server};
use std::process::Command;

#[tokio::test]
async fn openai_python_sdk_works_with_keys_and_tokens() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let setup = Command::new(format!("{dir}/tests/python/setup-venv.sh"))
        .output()
        .unwrap();
    assert!(
        setup.status.success(),
        "could not set up the Python venv with the openai SDK: {}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let python = String::from_utf8(setup.stdout).unwrap().trim().to_string();
    // Input filtering off, so the card in the streamed prompt reaches the
    // echo engine and is caught by the streaming output filter.
    let s = server(&format!("{RELAXED}sensitiveData:\n  input: false\n")).await;
    let (url, ca, key) = (s.base.clone(), s.ca_path(), s.keys.developer.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(format!("{dir}/tests/python/openai_sdk.py"))
            .env("SECURECHAT_URL", url)
            .env("SECURECHAT_CA", ca)
            .env("SECURECHAT_KEY", key)
            .env("SECURECHAT_MODEL", MODEL)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "SDK test failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}
