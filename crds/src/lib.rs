//! securechat's API types.
//!
//! - [`v1alpha1`]: the `SecureChatModel` and `ChatApiKey` custom resources,
//!   with their OpenAPI schema, defaults and CEL validation rules, so that the
//!   API server itself rejects invalid specs.
//! - [`duration`]: Go-style duration strings (`24h`, `90m`, `1h30m`), as
//!   Kubernetes and cert-manager write them.
//! - [`conditions`]: pure helpers that maintain a Kubernetes-convention
//!   condition list.
//! - [`files`]: the file formats the operator writes and the server reads
//!   (server config, signing keyset, API-key table).
//! - [`hex`]: the one lowercase-hex encoder of digests.
//! - [`sensitive`]: the rules sensitive-data patterns must pass to compile,
//!   shared by the operator (which refuses a spec) and the server.
//! - [`policy`]: the Rego module of `spec.auth.policy`, compiled and
//!   evaluated by the same code in the operator (which refuses a module
//!   that does not compile) and the server (which asks it about every
//!   authorised request).
//! - [`crd`]: the CRD manifests `crdgen` writes to the Helm chart.
//! - [`default_model`]: the default model's file name and places, shared by
//!   the operator (the embedded source) and the server (its fallback).
//!
//! This crate holds no client code. It is the public API of the project, so
//! every public item is documented (`missing_docs`, an error under
//! `clippy -D warnings`).

#![warn(missing_docs)]

pub mod conditions;
pub mod crd;
pub mod default_model;
pub mod duration;
pub mod files;
pub mod hex;
pub mod policy;
pub mod sensitive;
pub mod v1alpha1;

pub use duration::Duration;
pub use v1alpha1::{ChatApiKey, SecureChatModel};

/// The API group of every securechat resource.
pub const GROUP: &str = "securechat.dev";
