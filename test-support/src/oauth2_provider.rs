//! Stand-in sign-in providers for the web UI's plain-OAuth2 login, over
//! HTTPS with the test's dev certificate: there is no public WeChat Work
//! sandbox, so this implements the request and response shapes its
//! documents give, and a generic OAuth2 provider besides.
//!
//! WeChat Work, after developer.work.weixin.qq.com (server API):
//! - 获取access_token `GET /cgi-bin/gettoken?corpid=ID&corpsecret=SECRET`
//!   -> `{"errcode":0,"errmsg":"ok","access_token":…,"expires_in":7200}`;
//!   a wrong secret is errcode 40001, a wrong corpid 40013;
//! - 获取访问用户身份 `GET /cgi-bin/auth/getuserinfo?access_token&code`
//!   -> `{"errcode":0,"errmsg":"ok","userid":…,"user_ticket":…}`; a
//!   code is good once, for five minutes, else errcode 40029 (invalid
//!   code); a bad access token is 40014;
//! - 读取成员 `GET /cgi-bin/user/get?access_token&userid` -> `userid`,
//!   `name`, `department` (ids) …; an unknown userid is 60111;
//! - 获取标签成员 `GET /cgi-bin/tag/get?access_token&tagid` -> `tagname`,
//!   `userlist` ([{userid, name}]), `partylist`;
//! - the login pages: 企业微信Web登录 `login.work.weixin.qq.com/wwlogin/sso/login?
//!   login_type=CorpApp&appid&agentid&redirect_uri&state` (a QR code) and
//!   网页授权 `open.weixin.qq.com/connect/oauth2/authorize?appid&
//!   redirect_uri&response_type=code&scope&state&agentid#wechat_redirect`,
//!   both sending the browser to `redirect_uri?code=CODE&state=STATE`.
//!   Here the QR code is a list of members to click, as if they scanned.
//!
//! Generic OAuth2 (RFC 6749 + RFC 7636): `/oauth/authorize?…&user=<id>`
//! redirects at once with a code for that user; `POST /oauth/token` checks
//! client_secret_basic, the redirect URI and the PKCE verifier;
//! `/oauth/userinfo` answers `{"data":{"id","profile":{"name"},"groups"}}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower::ServiceExt as _;

/// The corp the stand-in is.
pub const CORP_ID: &str = "ww0standin0corp";
pub const CORP_SECRET: &str = "standin-corp-secret-7d1e";
pub const AGENT_ID: &str = "1000002";
/// The generic provider's client.
pub const CLIENT_ID: &str = "securechat-web";
pub const CLIENT_SECRET: &str = "standin-client-secret-41aa";

/// Someone who scans the QR code without being a member of the corp:
/// auth/getuserinfo answers with an `openid` (and `external_userid`)
/// instead of a `userid`.
pub const OUTSIDER: &str = "outsider";

/// How long a code lives (WeCom: five minutes).
const CODE_TTL: Duration = Duration::from_secs(300);

/// A member of the stand-in corp (and user of the generic provider).
#[derive(Clone, Debug)]
pub struct Member {
    pub userid: &'static str,
    pub name: &'static str,
    pub departments: &'static [u64],
    pub tags: &'static [u64],
}

/// The members: 张三 in department 2, 李四 in department 3 with tag 7,
/// 王五 in department 99 only (mapped to nothing in the tests).
pub const MEMBERS: &[Member] = &[
    Member {
        userid: "zhangsan",
        name: "张三",
        departments: &[1, 2],
        tags: &[],
    },
    Member {
        userid: "lisi",
        name: "李四",
        departments: &[3],
        tags: &[7],
    },
    Member {
        userid: "wangwu",
        name: "王五",
        departments: &[99],
        tags: &[],
    },
];

struct Code {
    userid: String,
    issued: Instant,
    redirect_uri: String,
    challenge: Option<String>,
}

#[derive(Default)]
struct Inner {
    codes: Mutex<HashMap<String, Code>>,
    tokens: Mutex<HashMap<String, String>>,
    /// API calls in order, as `path` (no secrets).
    calls: Mutex<Vec<String>>,
    expire_codes: AtomicBool,
    outage: AtomicBool,
}

/// The running stand-in.
pub struct StandIn {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl StandIn {
    /// `https://localhost:<port>`.
    pub fn base(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// From now on every code is treated as expired (errcode 40029), as
    /// one older than five minutes is.
    pub fn expire_codes(&self, on: bool) {
        self.inner.expire_codes.store(on, Ordering::SeqCst);
    }

    /// From now on the API calls a sign-in makes (WeCom's gettoken and
    /// auth/getuserinfo, OAuth2's token endpoint) answer 503 with an HTML
    /// page, as a provider behind a failing gateway does; they are still
    /// recorded in [`StandIn::calls`].
    pub fn outage(&self, on: bool) {
        self.inner.outage.store(on, Ordering::SeqCst);
    }

    /// The API paths called so far.
    pub fn calls(&self) -> Vec<String> {
        self.inner.calls.lock().unwrap().clone()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn random() -> String {
    let mut bytes = [0u8; 18];
    getrandom::fill(&mut bytes).expect("system random");
    URL_SAFE_NO_PAD.encode(bytes)
}

fn wecom_error(errcode: i64, errmsg: &str) -> Response {
    // WeCom answers errors with HTTP 200 and the errcode in the body.
    axum::Json(json!({"errcode": errcode, "errmsg": errmsg})).into_response()
}

/// The gateway's answer while [`StandIn::outage`] is on.
fn outage_page() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Html("<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"),
    )
        .into_response()
}

fn member(userid: &str) -> Option<&'static Member> {
    MEMBERS.iter().find(|m| m.userid == userid)
}

type Params = Query<HashMap<String, String>>;

impl Inner {
    fn record(&self, path: &str) {
        self.calls.lock().unwrap().push(path.to_string());
    }

    fn issue_code(&self, userid: &str, redirect_uri: &str, challenge: Option<String>) -> String {
        let code = random();
        self.codes.lock().unwrap().insert(
            code.clone(),
            Code {
                userid: userid.to_string(),
                issued: Instant::now(),
                redirect_uri: redirect_uri.to_string(),
                challenge,
            },
        );
        code
    }

    /// Takes a code out (one use); `None` when unknown or expired.
    fn take_code(&self, code: &str) -> Option<Code> {
        let taken = self.codes.lock().unwrap().remove(code)?;
        let expired = self.expire_codes.load(Ordering::SeqCst) || taken.issued.elapsed() > CODE_TTL;
        (!expired).then_some(taken)
    }

    fn valid_token(&self, params: &HashMap<String, String>) -> bool {
        params
            .get("access_token")
            .is_some_and(|t| self.tokens.lock().unwrap().contains_key(t))
    }
}

fn redirect(redirect_uri: &str, code: &str, state: &str) -> Response {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("code", code)
        .append_pair("state", state)
        .finish();
    let separator = if redirect_uri.contains('?') { '&' } else { '?' };
    let mut response = StatusCode::FOUND.into_response();
    response.headers_mut().insert(
        header::LOCATION,
        format!("{redirect_uri}{separator}{query}")
            .parse()
            .expect("a valid redirect"),
    );
    response
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The QR-code login page: the members to "scan" as.
async fn wecom_login(Query(p): Params) -> Response {
    let ok = p.get("login_type").map(String::as_str) == Some("CorpApp")
        && p.get("appid").map(String::as_str) == Some(CORP_ID)
        && p.get("agentid").map(String::as_str) == Some(AGENT_ID);
    let (Some(redirect_uri), Some(state), true) = (p.get("redirect_uri"), p.get("state"), ok)
    else {
        return (
            StatusCode::BAD_REQUEST,
            Html("<h1 id=\"wecom-error\">参数错误: login_type, appid, agentid, redirect_uri, state</h1>"),
        )
            .into_response();
    };
    let links: String = MEMBERS
        .iter()
        .map(|m| (m.userid, m.name))
        .chain([(OUTSIDER, "not a member")])
        .map(|(userid, name)| {
            let href = form_urlencoded::Serializer::new("/wwlogin/sso/scanned?".to_string())
                .append_pair("userid", userid)
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("state", state)
                .finish();
            format!(
                "<li><a class=\"member\" id=\"scan-{id}\" href=\"{href}\">{name} ({id})</a></li>",
                id = userid,
                href = escape(&href)
            )
        })
        .collect();
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>企业微信登录</title></head>\
         <body><h1>企业微信 (stand-in)</h1><p>Scan as:</p><ul>{links}</ul></body></html>"
    ))
    .into_response()
}

/// A member "scanned": the browser goes back with a fresh code.
async fn wecom_scanned(State(inner): State<Arc<Inner>>, Query(p): Params) -> Response {
    let (Some(userid), Some(redirect_uri), Some(state)) =
        (p.get("userid"), p.get("redirect_uri"), p.get("state"))
    else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let code = inner.issue_code(userid, redirect_uri, None);
    redirect(redirect_uri, &code, state)
}

async fn gettoken(State(inner): State<Arc<Inner>>, Query(p): Params) -> Response {
    inner.record("gettoken");
    if inner.outage.load(Ordering::SeqCst) {
        return outage_page();
    }
    if p.get("corpid").map(String::as_str) != Some(CORP_ID) {
        return wecom_error(40013, "invalid corpid");
    }
    if p.get("corpsecret").map(String::as_str) != Some(CORP_SECRET) {
        return wecom_error(40001, "invalid credential");
    }
    let token = random();
    inner
        .tokens
        .lock()
        .unwrap()
        .insert(token.clone(), CORP_ID.into());
    axum::Json(json!({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200}))
        .into_response()
}

async fn getuserinfo(State(inner): State<Arc<Inner>>, Query(p): Params) -> Response {
    inner.record("auth/getuserinfo");
    if inner.outage.load(Ordering::SeqCst) {
        return outage_page();
    }
    if !inner.valid_token(&p) {
        return wecom_error(40014, "invalid access_token");
    }
    let Some(code) = p.get("code").and_then(|c| inner.take_code(c)) else {
        return wecom_error(40029, "invalid code");
    };
    if code.userid == OUTSIDER {
        return axum::Json(
            json!({"errcode": 0, "errmsg": "ok", "openid": random(), "external_userid": random()}),
        )
        .into_response();
    }
    axum::Json(
        json!({"errcode": 0, "errmsg": "ok", "userid": code.userid, "user_ticket": random()}),
    )
    .into_response()
}

async fn user_get(State(inner): State<Arc<Inner>>, Query(p): Params) -> Response {
    inner.record("user/get");
    if !inner.valid_token(&p) {
        return wecom_error(40014, "invalid access_token");
    }
    let Some(m) = p.get("userid").and_then(|u| member(u)) else {
        return wecom_error(60111, "userid not found");
    };
    axum::Json(json!({
        "errcode": 0, "errmsg": "ok",
        "userid": m.userid, "name": m.name, "department": m.departments,
        "main_department": m.departments[0], "status": 1,
    }))
    .into_response()
}

async fn tag_get(State(inner): State<Arc<Inner>>, Query(p): Params) -> Response {
    inner.record("tag/get");
    if !inner.valid_token(&p) {
        return wecom_error(40014, "invalid access_token");
    }
    let Some(tag) = p.get("tagid").and_then(|t| t.parse::<u64>().ok()) else {
        return wecom_error(40068, "invalid tagid");
    };
    let users: Vec<Value> = MEMBERS
        .iter()
        .filter(|m| m.tags.contains(&tag))
        .map(|m| json!({"userid": m.userid, "name": m.name}))
        .collect();
    axum::Json(json!({
        "errcode": 0, "errmsg": "ok", "tagname": format!("tag {tag}"),
        "userlist": users, "partylist": [],
    }))
    .into_response()
}

/// Generic OAuth2: the user is chosen by `user` in the configured URL.
async fn oauth_authorize(State(inner): State<Arc<Inner>>, Query(p): Params) -> Response {
    let ok = p.get("response_type").map(String::as_str) == Some("code")
        && p.get("client_id").map(String::as_str) == Some(CLIENT_ID);
    let (Some(user), Some(redirect_uri), Some(state), true) =
        (p.get("user"), p.get("redirect_uri"), p.get("state"), ok)
    else {
        return (StatusCode::BAD_REQUEST, "invalid_request").into_response();
    };
    let challenge = match (p.get("code_challenge"), p.get("code_challenge_method")) {
        (Some(c), Some(m)) if m == "S256" => Some(c.clone()),
        (None, None) => None,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                "invalid_request: PKCE is S256 only",
            )
                .into_response();
        }
    };
    let code = inner.issue_code(user, redirect_uri, challenge);
    redirect(redirect_uri, &code, state)
}

fn oauth_error(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

async fn oauth_token(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    inner.record("oauth/token");
    if inner.outage.load(Ordering::SeqCst) {
        return outage_page();
    }
    let want = format!(
        "Basic {}",
        STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(want.as_str())
    {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let form: HashMap<String, String> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    if form.get("grant_type").map(String::as_str) != Some("authorization_code") {
        return oauth_error("unsupported_grant_type", "");
    }
    let Some(code) = form.get("code").and_then(|c| inner.take_code(c)) else {
        return oauth_error("invalid_grant", "unknown, used or expired code");
    };
    if form.get("redirect_uri") != Some(&code.redirect_uri) {
        return oauth_error("invalid_grant", "redirect_uri differs");
    }
    if let Some(challenge) = &code.challenge {
        let verified = form
            .get("code_verifier")
            .is_some_and(|v| URL_SAFE_NO_PAD.encode(Sha256::digest(v.as_bytes())) == *challenge);
        if !verified {
            return oauth_error("invalid_grant", "PKCE verification failed");
        }
    }
    let token = random();
    inner
        .tokens
        .lock()
        .unwrap()
        .insert(token.clone(), code.userid);
    axum::Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600}))
        .into_response()
}

async fn oauth_userinfo(State(inner): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    inner.record("oauth/userinfo");
    let user = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| inner.tokens.lock().unwrap().get(t).cloned());
    let Some(m) = user.as_deref().and_then(member) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let groups: Vec<Value> = m
        .departments
        .iter()
        .map(|d| json!(format!("department-{d}")))
        .chain(m.tags.iter().map(|t| json!(*t)))
        .collect();
    axum::Json(json!({"data": {"id": m.userid, "profile": {"name": m.name}, "groups": groups}}))
        .into_response()
}

/// Starts the stand-in on a free loopback port, serving `dir`'s dev
/// certificate (`tls/tls.crt`, `tls/tls.key`, for `localhost`).
pub async fn start(dir: &Path) -> StandIn {
    let cert = std::fs::read(dir.join("tls/tls.crt")).expect("dev certificate");
    let key = std::fs::read(dir.join("tls/tls.key")).expect("dev key");
    let loaded = securechat_server::tls::load_cert(&cert, &key).expect("dev certificate loads");
    let acceptor = securechat_server::tls::acceptor(
        Arc::new(securechat_server::tls::SwappableCert(
            arc_swap::ArcSwap::new(loaded.key),
        )),
        securechat_crds::v1alpha1::TlsVersion::V1_3,
        None,
    )
    .expect("TLS acceptor");
    let inner = Arc::new(Inner::default());
    let app = Router::new()
        .route("/wwlogin/sso/login", get(wecom_login))
        .route("/wwlogin/sso/scanned", get(wecom_scanned))
        .route("/cgi-bin/gettoken", get(gettoken))
        .route("/cgi-bin/auth/getuserinfo", get(getuserinfo))
        .route("/cgi-bin/user/get", get(user_get))
        .route("/cgi-bin/tag/get", get(tag_get))
        .route("/oauth/authorize", get(oauth_authorize))
        .route("/oauth/token", post(oauth_token))
        .route("/oauth/userinfo", get(oauth_userinfo))
        .with_state(inner.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        app.clone().oneshot(req.map(Body::new))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    StandIn { addr, inner, task }
}

/// A client that trusts only the dev CA and does not follow redirects, to
/// walk a sign-in step by step as a browser would (cookies by hand).
pub fn client_without_redirects(ca: &Path) -> reqwest::Client {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("dev CA") {
        roots
            .add(cert.expect("dev CA certificate"))
            .expect("dev CA added");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}
