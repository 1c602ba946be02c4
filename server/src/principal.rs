//! Who a request speaks for, once authenticated. A leaf module: `auth`
//! produces a [`Principal`], and the session store, the audit record and
//! the chat pipeline carry one, without depending on how it was proved.

use securechat_crds::v1alpha1::Tier;
use serde::{Deserialize, Serialize};

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    ApiKey,
    Token,
    /// A client certificate (`auth.mtls`) alone; its SPIFFE ID is the
    /// subject.
    ClientCertificate,
}

/// An authenticated caller.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Principal {
    /// Stable identity for limits and audit: `key:<id>` for API keys and
    /// tokens minted from them; the SPIFFE ID for a request on a connection
    /// with a client certificate (alone, or with a key bound to it).
    pub subject: String,
    pub key_id: Option<String>,
    pub tier: Tier,
    pub method: Method,
}
