//! Harnesses shared by the tests and benchmarks of every crate, in one
//! crate rather than modules included by `#[path]` or copied per crate.
//! A dev-dependency only: it depends on the crates whose tests use it
//! (cargo allows that cycle for dev-dependencies), and ships nothing.
//!
//! - [`cluster`]: the local control plane (`make cluster-up`): clients,
//!   a fresh namespace per test, CRD installation, the API server's audit
//!   log, waiting helpers, the operator's controllers in-process;
//!   [`cluster::serving`] runs a server on a model's projected Secrets.
//! - [`https`]: a real server over real TLS with a deterministic engine
//!   ([`https::EchoEngine`]), API keys of every state, TLS clients;
//!   [`https::raw`] speaks HTTP/1.1 byte by byte for what a client library
//!   will not send; [`https::Replicas`] runs several servers on one
//!   directory, as replicas sharing one config and key table.
//! - [`oauth2_provider`]: a stand-in WeChat Work and generic OAuth2
//!   provider over HTTPS, for the web UI's OAuth2 sign-in.
//! - [`store`]: a real shared store (redis-server) on a free port, to kill
//!   and restart.

pub mod cluster;
pub mod https;
pub mod oauth2_provider;
pub mod store;
