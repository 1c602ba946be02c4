//! The securechat server: the workload image the operator deploys, and a
//! standalone HTTPS chat server.

pub mod engine;
pub mod inference;
