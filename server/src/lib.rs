//! The securechat server: the workload image the operator deploys, and a
//! standalone HTTPS chat server.
//!
//! Request path: TLS (`listener`, `tls`) -> audit/metrics middleware (`audit`)
//! -> origin guard + CORS (`routes`) -> `auth::Authorized` (brute-force
//! guard, API key or JWT, tier permission, rate limit) -> handler
//! (`routes::*`) -> `chat_pipeline` (input filter, quotas, context check) ->
//! `engine::Engine` -> streaming output filter (`pii`).

pub mod audit;
pub mod auth;
pub mod chat_pipeline;
pub mod der;
pub mod dev;
pub mod engine;
pub mod error;
pub mod fetch;
pub mod files;
pub mod inference;
pub mod keys_cli;
pub mod listener;
pub mod metrics;
pub mod pii;
pub mod principal;
pub mod ratelimit;
pub mod routes;
pub mod session;
pub mod startup;
pub mod state;
pub mod tls;

pub use routes::{app, web_app};
