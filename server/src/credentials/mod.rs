//! Credentials: API keys (minting, parsing, constant-time verification),
//! our access tokens (signing and verification with the keyset) and
//! external OIDC issuers' tokens (discovery, cached JWKS), and the plain
//! OAuth2 sign-in providers' answers (generic and WeChat Work). The only place
//! a presented secret is parsed and compared.
//!
//! None of this knows about requests or the server's state: the shared
//! state holds the parsed keys, and `auth` (the request-side extractor)
//! reads them from it and calls in here.

pub mod api_key;
pub mod jwt;
pub mod oauth2;
pub mod oidc;
pub mod wecom;
