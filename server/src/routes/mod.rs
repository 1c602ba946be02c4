//! Every route, built in one function.

pub mod admin;
pub mod audit_layer;
pub mod body;
pub mod health;
pub mod oauth;
pub mod oauth_error;
pub mod openai;
pub mod seed;
pub mod web;

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HOST, ORIGIN, REFERRER_POLICY,
    STRICT_TRANSPORT_SECURITY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderValue, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::ApiError;
use crate::session::WebPort;
use crate::state::AppState;

/// The API port's application: the API, then (outermost last) CORS, the
/// origin guard and the audit/metrics middleware.
pub fn app(state: AppState) -> Router {
    finish(api_routes(), state)
}

/// The web port's application: the same API plus the chat UI and its
/// session endpoints. Requests here are marked [`WebPort`], which is what
/// lets the session cookie authenticate API calls on this port only.
pub fn web_app(state: AppState) -> Router {
    let ui = Router::new()
        .route("/", get(web::index))
        .route("/ui/app.js", get(web::script))
        .route("/ui/style.css", get(web::style))
        .route("/ui/markdown.js", get(web::markdown))
        .route("/web/options", get(web::login::options))
        .route("/web/session", get(web::login::current))
        .route("/web/login", post(web::login::login_with_key))
        .route("/web/logout", post(web::login::logout))
        .route("/web/sso/start", get(web::sso::start))
        .route("/web/sso/callback", get(web::sso::callback))
        .route("/web/oauth2/start", get(web::oauth2::start))
        .route("/web/oauth2/callback", get(web::oauth2::callback));
    finish(api_routes().merge(ui), state).layer(Extension(WebPort))
}

fn api_routes() -> Router<AppState> {
    let admin_config = get(admin::get_config).patch(admin::patch_config);
    Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::models))
        .route("/v1/usage", get(admin::own_usage))
        .route("/api/chat", post(seed::chat))
        // The path of the first seed's complete example: the same endpoint.
        .route("/api/secure-chat", post(seed::chat))
        .route("/oauth/token", post(oauth::token))
        // The seed's `OAuth2PasswordBearer(tokenUrl="token")`: the same
        // token endpoint.
        .route(oauth::SEED_TOKEN_PATH, post(oauth::token))
        .route("/.well-known/jwks.json", get(oauth::jwks))
        .route("/admin/keys", get(admin::keys))
        .route("/admin/keys/history", get(admin::key_history))
        .route("/admin/config", admin_config.clone())
        // The seed's path; it used POST to update.
        .route(
            "/api/admin/configuration",
            admin_config.post(admin::patch_config),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
}

fn finish(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(method_not_allowed)
        .layer(cors(state.clone()))
        .layer(middleware::from_fn_with_state(state.clone(), common))
        .with_state(state)
}

/// What every request passes through, outermost first: the audit record
/// and request metrics, the security headers, the origin guard (then
/// CORS, then the route). One middleware rather than one each because
/// every axum middleware layer clones the whole stack beneath it on every
/// request (boxed services, the CORS config), which a debug-build profile
/// of `GET /v1/models` showed under each of the four former layers (its
/// effect in a release build is not yet measured).
async fn common(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let opened = audit_layer::open(&state, &mut request);
    let mut response = match origin_refused(&state, &request) {
        Some(refused) => refused,
        None => next.run(request).await,
    };
    security_headers(&mut response);
    audit_layer::close(&state, opened, response)
}

/// 405 in the shape of the endpoint asked for: RFC 6749 at the token
/// endpoint, OpenAI elsewhere.
async fn method_not_allowed(uri: Uri) -> Response {
    if uri.path() == "/oauth/token" || uri.path() == oauth::SEED_TOKEN_PATH {
        oauth_error::OAuthError::method_not_allowed().into_response()
    } else {
        ApiError::MethodNotAllowed.into_response()
    }
}

fn origin_allowed(state: &AppState, origin: &HeaderValue) -> bool {
    state
        .live_config()
        .config
        .cors
        .allowed_origins
        .iter()
        .any(|o| origin.as_bytes() == o.0.as_bytes())
}

/// Browser CORS for the configured origins only (read per request, so a
/// config reload applies at once).
fn cors(state: AppState) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, _| {
            origin_allowed(&state, origin)
        }))
        .allow_methods([Method::GET, Method::POST, Method::PATCH])
        .allow_headers([AUTHORIZATION, CONTENT_TYPE])
        // Never: a configured origin gets bearer-token CORS, but a
        // browser's session cookie must not work from another site.
        .allow_credentials(false)
        .max_age(Duration::from_secs(600))
}

/// Headers every response carries: HTTPS only from now on, no MIME
/// sniffing, no caching of answers or keys, no referrer leaks.
fn security_headers(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(
        STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // Old browsers that ignore CSP frame-ancestors: never in a frame
    // (clickjacking of the chat or admin view).
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
        .entry(CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
}

/// Refuses requests carrying a foreign `Origin` outright (403), so a
/// cross-site page cannot even trigger work whose answer the browser would
/// hide. Same-origin requests (the web UI) pass.
fn origin_refused(state: &AppState, request: &Request) -> Option<Response> {
    let origin = request.headers().get(ORIGIN)?;
    let same_origin = request
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|host| origin.as_bytes() == format!("https://{host}").as_bytes());
    (!same_origin && !origin_allowed(state, origin))
        .then(|| ApiError::OriginNotAllowed.into_response())
}
