//! `securechat-operator alert-relay`: turns Alertmanager's webhook
//! notifications into WeChat Work (企业微信) and DingTalk (钉钉) group-robot
//! messages, so the shipped alerts reach people's phones.
//!
//! A subcommand of the operator's binary rather than a program of its own:
//! the chart already ships that image, and the relay needs nothing the
//! operator does not build. It runs as its own Deployment behind
//! Alertmanager (chart value `alertRelay.enabled`), with no Kubernetes
//! access.
//!
//! - [`payload`]: Alertmanager's webhook JSON (version 4).
//! - [`render`]: notification -> markdown message (pure).
//! - [`robot`]: the robots' files, request shapes, signatures and answers
//!   (pure but for reading the files).
//! - [`deliver`]: one message to one robot, with retries.
//! - [`server`]: the HTTP endpoints Alertmanager posts to.

pub mod deliver;
pub mod payload;
pub mod render;
pub mod robot;
pub mod server;
