//! The binary's verbs, run as a user would.

use std::path::Path;
use std::process::{Command, Output};

fn bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_securechat-server"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn last_line(text: &str) -> &str {
    text.trim_end().lines().last().unwrap()
}

#[test]
fn keys_verbs_print_the_plaintext_once_and_store_only_a_hash() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = stdout(&bin(&[
        "keys",
        "--data-dir",
        d,
        "create",
        "--name",
        "ci",
        "--tier",
        "Developer",
        "--expires-in",
        "30d",
    ]));
    let key = last_line(&out).to_string();
    assert!(key.starts_with("sk-sc-") && !key.contains(' '), "{out}");
    let id = key
        .trim_start_matches("sk-sc-")
        .split('-')
        .next()
        .unwrap()
        .to_string();
    let table = std::fs::read_to_string(dir.path().join("api-keys.json")).unwrap();
    assert!(
        !table.contains(&key) && table.contains("sha256:"),
        "{table}"
    );

    let list = stdout(&bin(&["keys", "--data-dir", d, "list"]));
    assert!(
        list.contains(&id) && list.contains("Developer") && list.contains("Active"),
        "{list}"
    );
    assert!(!list.contains("sk-sc-"));

    stdout(&bin(&["keys", "--data-dir", d, "suspend", &id]));
    assert!(stdout(&bin(&["keys", "--data-dir", d, "list"])).contains("Suspended"));
    stdout(&bin(&["keys", "--data-dir", d, "resume", &id]));
    let rotated = stdout(&bin(&[
        "keys",
        "--data-dir",
        d,
        "rotate",
        &id,
        "--grace",
        "1h",
    ]));
    let new_key = last_line(&rotated);
    assert!(new_key.starts_with(&format!("sk-sc-{id}-")) && new_key != key);
    stdout(&bin(&["keys", "--data-dir", d, "revoke", &id]));
    assert!(stdout(&bin(&["keys", "--data-dir", d, "list"])).contains("Revoked"));

    // Errors are reported, and leave the table alone.
    let before = std::fs::read(dir.path().join("api-keys.json")).unwrap();
    let bad = bin(&["keys", "--data-dir", d, "resume", &id]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("revoked"));
    let bad_tier = bin(&[
        "keys",
        "--data-dir",
        d,
        "create",
        "--name",
        "x",
        "--tier",
        "root",
    ]);
    assert!(!bad_tier.status.success());
    assert_eq!(
        std::fs::read(dir.path().join("api-keys.json")).unwrap(),
        before
    );
}

#[test]
fn serve_dev_creates_material_and_refuses_a_missing_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = bin(&[
        "serve",
        "--dev",
        "--data-dir",
        d,
        "--model",
        "/nonexistent/model.gguf",
        "--api-addr",
        "127.0.0.1:0",
        "--web-addr",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/model.gguf") && stderr.contains("make model"),
        "{stderr}"
    );
    for f in [
        "tls/ca.crt",
        "tls/tls.crt",
        "tls/tls.key",
        "signing-keys/keyset.json",
        "api-keys.json",
        "config.yaml",
    ] {
        assert!(Path::new(d).join(f).exists(), "{f} missing");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("tls/tls.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "private key readable by others");
    }
    // Neither --config nor --dev.
    assert!(!bin(&["serve"]).status.success());
}

#[test]
fn serve_refuses_a_model_of_another_family_than_the_config_names() {
    let dir = tempfile::tempdir().unwrap();
    // The loader tells a GGUF file by its magic bytes, before reading more.
    let model = dir.path().join("model.gguf");
    std::fs::write(&model, b"GGUF\x03\0\0\0").unwrap();
    let serve = |family: &str| {
        let config = dir.path().join(format!("{family}.yaml"));
        std::fs::write(&config, format!("model:\n  family: {family}\n")).unwrap();
        let out = bin(&[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--api-addr",
            "127.0.0.1:0",
            "--web-addr",
            "127.0.0.1:0",
        ]);
        assert!(!out.status.success(), "{family}: started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = serve("ChatGLM3");
    assert!(
        stderr.contains("model.family is ChatGLM3")
            && stderr.contains(model.to_str().unwrap())
            && stderr.contains("holds a Llama-GGUF model"),
        "{stderr}"
    );
    // The declared family matches: the load goes on (and fails on this
    // stub of a file, for its own reason).
    let stderr = serve("Llama-GGUF");
    assert!(!stderr.contains("model.family"), "{stderr}");
}

/// Issue 26: `keys prune` archives expired keys in the table's history
/// before removing them, and says which.
#[test]
fn keys_prune_archives_expired_keys() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let create = |name: &str, lifetime: Option<&str>| {
        let mut args = vec!["keys", "--data-dir", d, "create", "--name", name];
        if let Some(l) = lifetime {
            args.extend(["--expires-in", l]);
        }
        let key = last_line(&stdout(&bin(&args))).to_string();
        key.trim_start_matches("sk-sc-")
            .split('-')
            .next()
            .unwrap()
            .to_string()
    };
    let short = create("short", Some("1s"));
    let lasting = create("lasting", None);
    // Past the short key's expiry.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = stdout(&bin(&["keys", "--data-dir", d, "prune"]));
    assert!(
        out.contains("archived and removed 1 expired key(s)") && out.contains(&short),
        "{out}"
    );
    let table: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("api-keys.json")).unwrap()).unwrap();
    let ids: Vec<&str> = table["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [lasting.as_str()]);
    assert_eq!(table["history"][0]["id"], short.as_str());
    assert_eq!(table["history"][0]["name"], "short");
    assert!(table["history"][0]["expiredAt"].is_string());
    let again = stdout(&bin(&["keys", "--data-dir", d, "prune"]));
    assert!(again.contains("no expired key"), "{again}");
}
