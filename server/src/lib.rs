//! The securechat server: the workload image the operator deploys, and a
//! standalone HTTPS chat server.
//!
//! Request path: TLS (`listener`, `tls`) -> audit/metrics middleware
//! (`routes::audit_layer`, filling an `audit::Audit` record) -> origin
//! guard + CORS (`routes`) -> `auth::Authorized` (brute-force guard, API
//! key or JWT, tier permission, rate limit, `policy`: the Rego module of
//! `auth.policy`) -> handler (`routes::*`) ->
//! `chat_pipeline` (input filter, quotas, context check) ->
//! `engine::Engine` (implemented by `inference`) -> streaming output
//! filter (`pii`).
//!
//! The modules, by concern. No module imports, directly or through
//! others, one that imports it back (`make import-cycles`): shared types
//! sit in leaf modules (`principal`, `audit`, `credentials`,
//! `files::key_table`, `inference`'s `model`) rather than in the
//! modules that use them.
//!
//! - Starting: `main.rs` (the CLI: `serve`, `keys`, `fetch`), `startup`
//!   (load every file strictly, bind both ports, start the tasks), `dev`
//!   (`serve --dev` material), `keys_cli` (the `keys` verbs), `fetch` (model
//!   download for the init container).
//! - Serving: `listener` (TCP accept, TLS handshake, HTTP/1.1), `routes`
//!   (every route in one function; `routes::audit_layer` the outermost
//!   middleware), `chat_pipeline`, `error` (`ApiError` in the OpenAI shape).
//! - Shared state: `state` (`AppState`: the engine, the `LiveConfig` in
//!   force, keys, limiters, sessions), `files` (hot reload with last good
//!   versions, the API-key table file and its lock, atomic writes),
//!   `metrics`, `limits` (the limiters, in memory or in `shared`: the
//!   store the replicas share).
//! - Credentials: `credentials` (`api_key`, `jwt`, `oidc`: the only place
//!   secrets are parsed and compared), `auth` (the request-side extractor
//!   that uses them with the shared state), `policy` (`auth.policy`'s
//!   decision on each authorised request), `session` (web UI sessions),
//!   `tls`, `der`.
//! - Leaves: `principal` (who a request speaks for), `audit` (the record
//!   of one request), `ratelimit`, `forwarded` (the client address behind
//!   trusted proxies), `pii` (pure filters), `breaker` (the circuit breaker
//!   around every outbound dependency), `request_window` (the per-caller
//!   windows behind the policy's `input.usage`), `log_writer` (where log
//!   and audit lines are written from, in batches).
//! - Inference: `engine` (the trait handlers see), `inference` (models,
//!   tokenizer, sampler, decode loop, worker queue; no candle type leaves
//!   it).

pub mod audit;
pub mod auth;
pub mod breaker;
pub mod chat_pipeline;
pub mod credentials;
pub mod der;
pub mod dev;
pub mod engine;
pub mod error;
pub mod fetch;
pub mod files;
pub mod forwarded;
pub mod inference;
pub mod keys_cli;
pub mod limits;
pub mod listener;
pub mod log_writer;
pub mod metrics;
pub mod pii;
pub mod policy;
pub mod principal;
pub mod ratelimit;
pub mod request_window;
pub mod routes;
pub mod session;
pub mod shared;
pub mod startup;
pub mod state;
pub mod tls;

pub use routes::{app, web_app};
