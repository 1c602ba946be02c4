//! The web UI in a real browser: the real server (dev mode, the real
//! default model) on its web port, driven by headless Chromium through
//! playwright-core (tests/web/*.mjs). Also the HTTP-level guarantees of the
//! session design (cookie flags, CSRF, web port only, security headers)
//! with a plain client.
//!
//! Needs `scripts/web-test-deps.sh` (Chromium from apt, node packages from
//! tests/web/package-lock.json) and `make model`; a missing piece fails
//! the test with what to run, it never skips.

use std::path::{Path, PathBuf};
use std::process::Command;

use securechat_server::dev;
use securechat_server::inference::{EngineOptions, default_model_path, load_engine};
use securechat_server::startup::{Running, ServeOptions, start};
use securechat_test_support::https::{self, Keys, RELAXED, add_keys, client_for, server};
use securechat_test_support::oauth2_provider;
use serde_json::{Value, json};

const DEPS: &str =
    "run scripts/web-test-deps.sh (installs chromium with apt and the node packages of tests/web)";

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/web")
}

/// Fails with what to run when the browser or the node packages are absent.
fn require_browser_deps() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: {DEPS}"
    );
    for package in ["playwright-core", "oidc-provider"] {
        assert!(
            web_dir().join("node_modules").join(package).exists(),
            "tests/web/node_modules/{package} is missing: {DEPS}"
        );
    }
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is not on PATH: install Node.js 20+ and {DEPS}"
    );
}

/// Where the screenshots go (kept after the test, printed).
fn screenshot_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("web-ui")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    eprintln!("web_ui: screenshots of {name} in {}", dir.display());
    dir
}

/// The real server with the real model, in dev mode.
async fn real_server(dir: &Path, config: &str) -> (Running, Keys) {
    let model = default_model_path().expect("HOME is not set");
    assert!(
        model.exists(),
        "model file {} is missing: run `make model`",
        model.display()
    );
    let config_path = dev::ensure(dir).unwrap();
    std::fs::write(&config_path, config).unwrap();
    let keys = add_keys(dir);
    let engine = load_engine(&model, EngineOptions::default()).expect("loading the default model");
    let options = ServeOptions {
        config_path,
        api_addr: "127.0.0.1:0".parse().unwrap(),
        web_addr: "127.0.0.1:0".parse().unwrap(),
        oidc_ca_bundle: Some(dir.join("tls/ca.crt")),
        record_last_used: None,
        path_root: None,
        placement: Default::default(),
    };
    (start(&options, engine).await.unwrap(), keys)
}

/// Runs one node script; its output is shown when it fails.
async fn run_node(script: &str, envs: Vec<(&'static str, String)>) {
    let dir = web_dir();
    let script = script.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(dir.join(&script))
            .current_dir(&dir)
            .envs(envs)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "browser scenarios failed:\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_login_chat_redaction_and_roles_in_a_real_browser() {
    require_browser_deps();
    let dir = tempfile::tempdir().unwrap();
    // ReadOnly: one request a minute and 16 tokens per answer, so the page
    // shows a capped control and a 429.
    let config = format!(
        "{RELAXED}roles:\n  readOnly:\n    permissions: [Chat]\n    requestsPerMinute: 1\n    \
         maxTokensPerRequest: 16\n"
    );
    let (running, keys) = real_server(dir.path(), &config).await;
    let shots = screenshot_dir("api-key");
    run_node(
        "api-key.mjs",
        vec![
            (
                "WEB_URL",
                format!("https://localhost:{}", running.web_addr.port()),
            ),
            (
                "WEB_TLS_CERT",
                dir.path().join("tls/tls.crt").display().to_string(),
            ),
            ("WEB_SCREENSHOTS", shots.display().to_string()),
            ("KEY_ADMIN", keys.admin.clone()),
            ("KEY_READONLY", keys.readonly.clone()),
        ],
    )
    .await;
    running.shutdown().await;
}

/// The page's states with the echo engine, one screenshot each (checked
/// for the state's key elements, not compared by pixels): signed out, a
/// Markdown answer with the conversation list (at phone width), a card
/// number in the answer (input filtering off, so only the output filter
/// sees it) and a full queue (503 with Retry-After).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_redaction_and_a_busy_model_in_a_real_browser() {
    require_browser_deps();
    let s = server(&format!("{RELAXED}sensitiveData:\n  input: false\n")).await;
    let shots = screenshot_dir("echo");
    let envs = |scenario: &str| {
        vec![
            (
                "WEB_URL",
                format!("https://localhost:{}", s.running.web_addr.port()),
            ),
            (
                "WEB_TLS_CERT",
                s.data().join("tls/tls.crt").display().to_string(),
            ),
            ("WEB_SCREENSHOTS", shots.display().to_string()),
            ("KEY_DEVELOPER", s.keys.developer.clone()),
            ("SCENARIO", scenario.to_string()),
        ]
    };
    run_node("echo.mjs", envs("signed-out")).await;
    run_node("echo.mjs", envs("chatting")).await;
    run_node("echo.mjs", envs("output-redaction")).await;
    s.engine
        .queue_full
        .store(true, std::sync::atomic::Ordering::SeqCst);
    run_node("echo.mjs", envs("busy")).await;
}

/// A free loopback port for the test's identity provider: the server's
/// config must name the issuer URL before the provider starts.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_login_with_pkce_key_rotation_and_issuer_down_in_a_real_browser() {
    require_browser_deps();
    let dir = tempfile::tempdir().unwrap();
    let idp_port = free_port();
    let secret_file = dir.path().join("sso-client-secret");
    let secret = "test-only-client-secret-9f2c";
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let config = format!(
        "{RELAXED}auth:\n  oidc:\n    - issuerURL: https://localhost:{idp_port}\n      audience: securechat-api\n      \
         roleClaim: role\n      clientId: securechat-web\nweb:\n  sso:\n    - issuerURL: https://localhost:{idp_port}\n      \
         clientSecretFile: {}\n      displayName: Test IdP\n",
        secret_file.display()
    );
    let (running, _keys) = real_server(dir.path(), &config).await;
    let shots = screenshot_dir("sso");
    run_node(
        "sso.mjs",
        vec![
            (
                "WEB_URL",
                format!("https://localhost:{}", running.web_addr.port()),
            ),
            (
                "WEB_TLS_CERT",
                dir.path().join("tls/tls.crt").display().to_string(),
            ),
            (
                "WEB_TLS_KEY",
                dir.path().join("tls/tls.key").display().to_string(),
            ),
            ("WEB_SCREENSHOTS", shots.display().to_string()),
            ("IDP_PORT", idp_port.to_string()),
            ("SSO_CLIENT_ID", "securechat-web".into()),
            ("SSO_CLIENT_SECRET", secret.into()),
        ],
    )
    .await;
    running.shutdown().await;
}

/// The session design at the HTTP level (the echo engine suffices).
#[tokio::test]
async fn sessions_are_cookie_bound_csrf_checked_and_web_port_only() {
    // app.example may call the API with bearer credentials (CORS), but
    // must not be able to log a browser in or use its session.
    let s = server(&format!(
        "{RELAXED}cors:\n  allowedOrigins: [\"https://app.example\"]\n"
    ))
    .await;
    let web = format!("https://localhost:{}", s.running.web_addr.port());
    let client = client_for(&s.ca_path(), &[&rustls::version::TLS13]);

    // The page and its security headers.
    let page = client.get(format!("{web}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    for (header, want) in [
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("x-content-type-options", "nosniff"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(page.headers()[header], want, "{header}");
    }
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    // The Markdown renderer needed no loosening: scripts only from this
    // origin, never inline or eval'd, and it is served under the same
    // policy as a script file.
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    let markdown = client
        .get(format!("{web}/ui/markdown.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(markdown.status(), 200);
    assert_eq!(
        markdown.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(markdown.headers()["content-security-policy"], csp);
    assert!(
        markdown
            .text()
            .await
            .unwrap()
            .contains("export function parse")
    );
    assert!(page.headers().contains_key("strict-transport-security"));
    // The UI is not on the API port.
    let on_api = client.get(s.url("/")).send().await.unwrap();
    assert_eq!(on_api.status(), 404);

    // SSO pages without SSO configured, or a callback this browser did not
    // start (login CSRF): clear error pages, no session.
    let start = client
        .get(format!("{web}/web/sso/start?provider=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 404);
    assert!(
        start
            .text()
            .await
            .unwrap()
            .contains("Unknown sign-in provider")
    );
    let forged = client
        .get(format!("{web}/web/sso/callback?code=stolen&state=guessed"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);
    assert!(forged.headers().contains_key("content-security-policy"));
    assert!(
        forged
            .headers()
            .get("set-cookie")
            .is_some_and(|c| { c.to_str().unwrap().starts_with("__Host-securechat-login=;") })
    );
    assert!(
        forged
            .text()
            .await
            .unwrap()
            .contains("not started from this browser")
    );
    let denied = client
        .get(format!(
            "{web}/web/sso/callback?error=access_denied&state=x"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 400);
    assert!(denied.text().await.unwrap().contains("access_denied"));

    // Login errors: wrong key 401, not a key 401, bad body 400/415.
    let login = |body: Value| client.post(format!("{web}/web/login")).json(&body).send();
    let wrong = login(json!({"apiKey": format!("sk-sc-nosuch-{}", "A".repeat(43))}))
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        wrong.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_api_key"
    );
    assert_eq!(
        login(json!({"apiKey": "hello"})).await.unwrap().status(),
        401
    );
    assert_eq!(
        login(json!({"key": s.keys.admin})).await.unwrap().status(),
        400,
        "unknown field"
    );
    let form = client
        .post(format!("{web}/web/login"))
        .form(&[("apiKey", &s.keys.admin)])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 415, "a cross-site form cannot log in");
    for origin in ["https://evil.example", "https://app.example"] {
        let cross_site = client
            .post(format!("{web}/web/login"))
            .header("origin", origin)
            .json(&json!({"apiKey": s.keys.admin}))
            .send()
            .await
            .unwrap();
        assert_eq!(cross_site.status(), 403, "login from {origin}");
        assert!(cross_site.headers().get("set-cookie").is_none());
    }
    let suspended = login(json!({"apiKey": s.keys.suspended})).await.unwrap();
    assert_eq!(suspended.status(), 401);

    // A good login: the cookie's flags, and a session view without secrets.
    let ok = login(json!({"apiKey": s.keys.developer})).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["cache-control"], "no-store");
    let set_cookie = ok.headers()["set-cookie"].to_str().unwrap().to_string();
    for flag in [
        "__Host-securechat-session=",
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Path=/",
    ] {
        assert!(set_cookie.contains(flag), "{flag} missing in {set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let view: Value = ok.json().await.unwrap();
    assert_eq!(view["role"], "Developer");
    assert_eq!(view["isAdmin"], false);
    assert!(!view.to_string().contains(&s.keys.developer));
    let csrf = view["csrfToken"].as_str().unwrap().to_string();

    let get = |url: String, cookie: Option<&str>, csrf: Option<&str>, origin: Option<&str>| {
        let mut r = client.get(url);
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        if let Some(t) = csrf {
            r = r.header("x-csrf-token", t);
        }
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    let models = format!("{web}/v1/models");
    let resp = get(models.clone(), Some(&cookie), Some(&csrf), None)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "cookie + CSRF token on the web port");
    let resp = get(models.clone(), Some(&cookie), None, None)
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "no CSRF token");
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "csrf_refused"
    );
    let resp = get(models.clone(), Some(&cookie), Some("wrong"), None)
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "wrong CSRF token");
    let resp = get(
        models.clone(),
        Some(&cookie),
        Some(&csrf),
        Some("https://evil.example"),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 403, "foreign origin");
    let resp = get(
        models.clone(),
        Some(&cookie),
        Some(&csrf),
        Some("https://app.example"),
    )
    .await
    .unwrap();
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "csrf_refused",
        "a CORS-allowed origin still cannot ride the session"
    );
    let resp = get(s.url("/v1/models"), Some(&cookie), Some(&csrf), None)
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        401,
        "the cookie is not accepted on the API port"
    );
    let resp = get(
        format!("{web}/admin/keys"),
        Some(&cookie),
        Some(&csrf),
        None,
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 403, "Developer is not Admin");

    // Suspending the key ends its sessions at once.
    let path = s.data().join("api-keys.json");
    let mut table = securechat_server::keys_cli::load(&path).unwrap();
    securechat_server::keys_cli::suspend(&mut table, &s.keys.developer_id).unwrap();
    securechat_server::keys_cli::save(&path, &table).unwrap();
    assert!(
        https::eventually(async || {
            get(models.clone(), Some(&cookie), Some(&csrf), None)
                .await
                .unwrap()
                .status()
                == 401
        })
        .await,
        "a suspended key's session must stop working"
    );

    // Logout: needs the token, then the session is gone.
    let ok = login(json!({"apiKey": s.keys.admin})).await.unwrap();
    let cookie = ok.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let csrf = ok.json::<Value>().await.unwrap()["csrfToken"]
        .as_str()
        .unwrap()
        .to_string();
    let logout = |token: Option<String>| {
        let mut r = client
            .post(format!("{web}/web/logout"))
            .header("cookie", &cookie);
        if let Some(t) = token {
            r = r.header("x-csrf-token", t);
        }
        r.send()
    };
    assert_eq!(logout(None).await.unwrap().status(), 403);
    let out = logout(Some(csrf.clone())).await.unwrap();
    assert_eq!(out.status(), 200);
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let after = get(format!("{web}/web/session"), Some(&cookie), None, None)
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
    assert_eq!(
        after.json::<Value>().await.unwrap()["error"]["code"],
        "session_expired"
    );
}

/// What the page's redaction notice reads: the input count in a header,
/// the output count on the last stream chunk (echo engine, so the card
/// comes back in the answer when input filtering is off).
#[tokio::test]
async fn redactions_are_reported_for_the_input_and_the_output() {
    for (input_filter, want_in, want_out) in [(true, "1", None), (false, "0", Some(1))] {
        let s = server(&format!(
            "{RELAXED}sensitiveData:\n  input: {input_filter}\n"
        ))
        .await;
        let mut body = https::chat_body("card 4111 1111 1111 1111 ok");
        body["stream"] = json!(true);
        let resp = s
            .client
            .post(s.url("/v1/chat/completions"))
            .bearer_auth(&s.keys.developer)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-securechat-input-redactions"], want_in);
        let text = resp.text().await.unwrap();
        let reported = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .find_map(|c| c["securechat"]["output_redactions"].as_u64());
        assert_eq!(reported, want_out, "input filter {input_filter}: {text}");
        assert!(!text.contains("4111 1111"), "{text}");
    }
}

/// The page's Markdown parser, with node's own test runner.
#[test]
fn the_markdown_renderer_keeps_raw_html_as_text() {
    let node = Command::new("node")
        .args(["--test", "markdown.test.mjs"])
        .current_dir(web_dir())
        .output()
        .expect("node is not on PATH: install Node.js 20+");
    assert!(
        node.status.success(),
        "markdown tests failed:\n{}{}",
        String::from_utf8_lossy(&node.stdout),
        String::from_utf8_lossy(&node.stderr)
    );
}

/// A server (echo engine) whose web UI signs in through the stand-in
/// provider of test-support: `provider` is the `web.oauth2` entry, with
/// `{base}` for the stand-in's URL and `{secret}` for the secret file.
async fn server_with_stand_in(
    provider: &str,
    secret: &str,
) -> (https::TestServer, oauth2_provider::StandIn) {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dev::ensure(dir.path()).unwrap();
    let stand_in = oauth2_provider::start(dir.path()).await;
    let secret_file = dir.path().join("oauth2-client-secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let provider = provider
        .replace("{base}", &stand_in.base())
        .replace("{secret}", &secret_file.display().to_string());
    std::fs::write(
        &config_path,
        format!("{RELAXED}web:\n  oauth2:\n{provider}"),
    )
    .unwrap();
    let keys = add_keys(dir.path());
    (https::serve_prepared(dir, keys, None).await, stand_in)
}

const WECOM_PROVIDER: &str = "    - clientSecretFile: {secret}\n      provider:\n        name: wecom\n        \
     kind: WeCom\n        displayName: WeChat Work\n        clientId: ww0standin0corp\n        wecom:\n          \
     agentId: \"1000002\"\n          apiBaseURL: {base}\n          authorizeURL: {base}/wwlogin/sso/login\n          \
     departmentTiers:\n            - {id: 2, tier: Developer}\n            - {id: 3, tier: ReadOnly}\n          \
     tagTiers:\n            - {id: 7, tier: Admin}\n";

/// WeChat Work sign-in end to end in Chromium: department and tag
/// mapping, a user mapped to nothing, someone outside the corp, a forged
/// state and an expired code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wecom_login_in_a_real_browser() {
    require_browser_deps();
    let (s, stand_in) = server_with_stand_in(WECOM_PROVIDER, oauth2_provider::CORP_SECRET).await;
    let shots = screenshot_dir("wecom");
    let envs = |scenario: &str| {
        vec![
            (
                "WEB_URL",
                format!("https://localhost:{}", s.running.web_addr.port()),
            ),
            (
                "WEB_TLS_CERT",
                s.data().join("tls/tls.crt").display().to_string(),
            ),
            ("WEB_SCREENSHOTS", shots.display().to_string()),
            ("SCENARIO", scenario.to_string()),
        ]
    };
    run_node("wecom.mjs", envs("members")).await;
    // The corp access token is fetched once and cached, as the documents
    // ask; every login identifies the user from its code.
    let calls = stand_in.calls();
    let count = |path: &str| calls.iter().filter(|c| *c == path).count();
    assert_eq!(count("gettoken"), 1, "{calls:?}");
    assert_eq!(count("auth/getuserinfo"), 4, "{calls:?}");
    assert_eq!(count("user/get"), 3, "{calls:?}");
    stand_in.expire_codes(true);
    run_node("wecom.mjs", envs("expired")).await;
}

/// The generic provider's `web.oauth2` entry (`{base}`, `{secret}` as
/// [`server_with_stand_in`] fills them).
const GENERIC_PROVIDER: &str = "    - clientSecretFile: {secret}\n      provider:\n        name: corp-sso\n        \
     kind: OAuth2\n        clientId: securechat-web\n        oauth2:\n          \
     authorizeURL: {base}/oauth/authorize?user=USER\n          tokenURL: {base}/oauth/token\n          \
     userInfoURL: {base}/oauth/userinfo\n          scopes: [profile, groups]\n          \
     userIdPointer: /data/id\n          displayNamePointer: /data/profile/name\n          \
     rolePointer: /data/groups\n          roleMapping:\n            - {value: department-2, tier: Developer}\n            \
     - {value: \"7\", tier: Admin}\n";

/// Start -> the generic provider (which redirects at once for `user`) ->
/// the callback with the login cookie: the callback's answer, the
/// callback URL and the login cookie.
async fn oauth2_login(
    client: &reqwest::Client,
    web: &str,
    start: &str,
    user: &str,
) -> (reqwest::Response, String, String) {
    let started = client.get(format!("{web}{start}")).send().await.unwrap();
    assert_eq!(started.status(), 303);
    let cookie = started.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let authorize = started.headers()["location"]
        .to_str()
        .unwrap()
        .replace("USER", user);
    for part in [
        "code_challenge=",
        "code_challenge_method=S256",
        "state=",
        "scope=profile+groups",
    ] {
        assert!(authorize.contains(part), "{part} in {authorize}");
    }
    let at_provider = client.get(&authorize).send().await.unwrap();
    assert_eq!(at_provider.status(), 302, "{:?}", at_provider.text().await);
    let callback = at_provider.headers()["location"]
        .to_str()
        .unwrap()
        .to_string();
    let answer = client
        .get(&callback)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    (answer, callback, cookie)
}

/// A generic OAuth2 provider (not WeCom), walked step by step: PKCE and
/// client_secret_basic at the token endpoint, the user read with JSON
/// pointers, roles mapped, an unmapped user refused, a replayed code.
#[tokio::test]
async fn generic_oauth2_login_with_pkce_pointers_and_role_mapping() {
    let (s, stand_in) =
        server_with_stand_in(GENERIC_PROVIDER, oauth2_provider::CLIENT_SECRET).await;
    let web = format!("https://localhost:{}", s.running.web_addr.port());
    let client = oauth2_provider::client_without_redirects(&s.ca_path());
    let options: Value = client
        .get(format!("{web}/web/options"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(options["sso"][0]["label"], "Sign in with corp-sso");
    let start = options["sso"][0]["start"].as_str().unwrap().to_string();

    let login = async |user: &str| oauth2_login(&client, &web, &start, user).await;

    let (answer, callback, cookie) = login("zhangsan").await;
    assert_eq!(answer.status(), 303, "{:?}", answer.text().await);
    let session_cookie = answer
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|c| c.to_str().unwrap())
        .find(|c| c.starts_with("__Host-securechat-session="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let view: Value = client
        .get(format!("{web}/web/session"))
        .header("cookie", &session_cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["name"], "张三");
    assert_eq!(view["role"], "Developer");
    assert_eq!(view["subject"], "oauth2:corp-sso#zhangsan");
    assert_eq!(view["login"]["method"], "oauth2");

    // The same callback again: the state was used up.
    let replay = client
        .get(&callback)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 400);
    assert!(
        replay
            .text()
            .await
            .unwrap()
            .contains("expired or was already used")
    );

    // A tag maps higher than a department.
    let (answer, _, _) = login("lisi").await;
    assert_eq!(answer.status(), 303);

    // Mapped to nothing: refused, saying what the user holds.
    let (answer, _, _) = login("wangwu").await;
    assert_eq!(answer.status(), 403);
    let page = answer.text().await.unwrap();
    assert!(page.contains("No role is mapped to your account"), "{page}");
    assert!(page.contains("department-99"), "{page}");
    let calls = stand_in.calls();
    assert_eq!(
        calls.iter().filter(|c| *c == "oauth/token").count(),
        3,
        "{calls:?}"
    );
}

/// A WeChat Work sign-in without a browser: start -> the QR page's
/// "scanned as `userid`" link -> the callback with the login cookie.
async fn wecom_login(
    client: &reqwest::Client,
    web: &str,
    start: &str,
    base: &str,
    userid: &str,
) -> reqwest::Response {
    let started = client.get(format!("{web}{start}")).send().await.unwrap();
    assert_eq!(started.status(), 303);
    let cookie = started.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let authorize = reqwest::Url::parse(started.headers()["location"].to_str().unwrap()).unwrap();
    let param = |name: &str| {
        authorize
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap()
    };
    let scanned = client
        .get(format!("{base}/wwlogin/sso/scanned"))
        .query(&[
            ("userid", userid.to_string()),
            ("redirect_uri", param("redirect_uri")),
            ("state", param("state")),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(scanned.status(), 302);
    let callback = scanned.headers()["location"].to_str().unwrap().to_string();
    client
        .get(&callback)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
}

/// Which stand-in provider a breaker test signs in through.
#[derive(Clone, Copy)]
enum SignIn {
    OAuth2,
    WeCom,
}

/// The provider fails (its gateway answers 503): each failed sign-in is
/// the 502 page; after `consecutiveFailures` of them (the rate rule set to
/// 100% so that only the run counts) the provider's breaker opens and a
/// sign-in gets the page without the provider being called; once it is
/// back and the cool-down is over, one sign-in probes and the breaker
/// closes. Issue 25: a breaker on every outbound call.
async fn a_failing_provider_opens_its_breaker_and_recovers(kind: SignIn) {
    let (entry, secret, target, api_call, user) = match kind {
        SignIn::OAuth2 => (
            GENERIC_PROVIDER,
            oauth2_provider::CLIENT_SECRET,
            "oauth2:corp-sso",
            "oauth/token",
            "zhangsan",
        ),
        SignIn::WeCom => (
            WECOM_PROVIDER,
            oauth2_provider::CORP_SECRET,
            "oauth2:wecom",
            "auth/getuserinfo",
            "zhangsan",
        ),
    };
    let provider = format!(
        "{entry}outbound:\n  circuitBreaker:\n    consecutiveFailures: 2\n    failureRatePercent: 100\n    coolDown: 2s\n"
    );
    let (s, stand_in) = server_with_stand_in(&provider, secret).await;
    let web = format!("https://localhost:{}", s.running.web_addr.port());
    let client = oauth2_provider::client_without_redirects(&s.ca_path());
    let options: Value = client
        .get(format!("{web}/web/options"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let start = options["sso"][0]["start"].as_str().unwrap().to_string();
    let sign_in = async || match kind {
        SignIn::OAuth2 => oauth2_login(&client, &web, &start, user).await.0,
        SignIn::WeCom => wecom_login(&client, &web, &start, &stand_in.base(), user).await,
    };
    let series =
        |name: &str, extra: &str| format!("securechat_{name}{{target=\"{target}\"{extra}}}");
    let state =
        async || https::sample(&https::metrics_text(&s).await, &series("circuit_state", ""));
    let api_calls = || stand_in.calls().iter().filter(|c| *c == api_call).count();

    let answer = sign_in().await;
    assert_eq!(answer.status(), 303, "{:?}", answer.text().await);
    assert_eq!(state().await, Some(0.0), "closed");

    stand_in.outage(true);
    for _ in 0..2 {
        let answer = sign_in().await;
        assert_eq!(answer.status(), 502);
        let page = answer.text().await.unwrap();
        assert!(
            page.contains("HTTP 503"),
            "the provider's own failure: {page}"
        );
    }
    assert_eq!(state().await, Some(2.0), "open after two failures");
    let called = api_calls();
    let answer = sign_in().await;
    assert_eq!(answer.status(), 502);
    let page = answer.text().await.unwrap();
    assert!(page.contains("not called for now"), "{page}");
    assert_eq!(
        api_calls(),
        called,
        "an open breaker does not call the provider"
    );

    // Back: after the cool-down one sign-in probes and closes the breaker.
    stand_in.outage(false);
    assert!(
        https::eventually(async || sign_in().await.status() == 303).await,
        "no sign-in went through after the provider came back"
    );
    assert_eq!(state().await, Some(0.0), "closed again");
    let metrics = https::metrics_text(&s).await;
    for to in ["open", "half_open", "closed"] {
        let seen = https::sample(
            &metrics,
            &series("circuit_transitions_total", &format!(",to=\"{to}\"")),
        );
        assert!(seen.is_some_and(|n| n >= 1.0), "{to}: {metrics}");
    }
}

#[tokio::test]
async fn a_failing_oauth2_provider_opens_its_breaker_and_recovers() {
    a_failing_provider_opens_its_breaker_and_recovers(SignIn::OAuth2).await;
}

#[tokio::test]
async fn a_failing_wecom_corp_opens_its_breaker_and_recovers() {
    a_failing_provider_opens_its_breaker_and_recovers(SignIn::WeCom).await;
}
