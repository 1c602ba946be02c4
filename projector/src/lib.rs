//! Kubelet-style projection of Secrets and ConfigMaps into a directory.
//!
//! Outside a cluster there is no kubelet, yet the server must be tested
//! against exactly the layout it meets in a pod: a `..data` symlink swapped
//! atomically over timestamped generation directories. [`writer`] is that
//! algorithm; [`source`] (feature `watch`) turns Secrets and ConfigMaps into
//! payloads for it, and the `securechat-project` binary keeps one object
//! projected as it changes.

#![forbid(unsafe_code)]

#[cfg(feature = "watch")]
pub mod follow;
#[cfg(feature = "watch")]
pub mod source;
pub mod writer;

pub use writer::{AtomicWriter, DATA_DIR, FileProjection, Outcome, Payload};
