//! `spec.web`: the web chat UI's sign-in providers that are plain OAuth2
//! (no ID token), with a preset for WeChat Work (企业微信).
//!
//! OpenID Connect providers stay in `spec.auth.oidc` (their tokens are also
//! accepted by the API); the providers here only open web UI sessions.
//! The WeChat Work endpoints are the ones its developer documentation
//! (developer.work.weixin.qq.com) gives: `gettoken`, `auth/getuserinfo`,
//! `user/get` and `tag/get` under the API base, and the authorization pages
//! `login.work.weixin.qq.com/wwlogin/sso/login` (a browser, by QR code) and
//! `open.weixin.qq.com/connect/oauth2/authorize` (inside the WeChat Work
//! app).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Tier, default_true};

/// WeChat Work's server API (gettoken, auth/getuserinfo, user/get, tag/get).
pub const WECOM_API_BASE_URL: &str = "https://qyapi.weixin.qq.com";
/// WeChat Work's web login page (QR code), for browsers.
pub const WECOM_QR_LOGIN_URL: &str = "https://login.work.weixin.qq.com/wwlogin/sso/login";
/// WeChat Work's OAuth2 authorization page, inside the WeChat Work app.
pub const WECOM_IN_APP_AUTHORIZE_URL: &str = "https://open.weixin.qq.com/connect/oauth2/authorize";

/// The web chat UI.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebSpec {
    /// Sign-in providers of the web UI that speak plain OAuth2 rather than
    /// OpenID Connect (for OIDC, give `auth.oidc[].clientId` instead). Each
    /// gets a "Sign in with …" button; the provider's answer is mapped onto
    /// a tier, and a user it maps to none is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.all(p, self.exists_one(q, q.name == p.name))",
         "message": "web.sso: each provider needs its own name"}
    ]))]
    pub sso: Vec<WebSsoProvider>,
}

/// The protocol of a web sign-in provider.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum WebSsoKind {
    /// Any OAuth2 authorization-code provider: the endpoints and how to
    /// read the user from its user-info answer are in `oauth2`.
    OAuth2,
    /// WeChat Work (企业微信): the documented endpoints and two-step user
    /// identification (corp access token, then the user id from the code,
    /// then the user's details); settings in `wecom`.
    WeCom,
}

/// One plain-OAuth2 sign-in provider of the web UI.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.kind != 'OAuth2' || (has(self.oauth2) && !has(self.wecom))",
     "message": "web.sso: kind OAuth2 needs the oauth2 section (and no wecom section)"},
    {"rule": "self.kind != 'WeCom' || (has(self.wecom) && !has(self.oauth2))",
     "message": "web.sso: kind WeCom needs the wecom section (and no oauth2 section)"},
    {"rule": "self.kind != 'WeCom' || has(self.clientSecretName)",
     "message": "web.sso: kind WeCom needs clientSecretName (the app's corpsecret: gettoken cannot work without it)"}
]))]
pub struct WebSsoProvider {
    /// Short name of the provider: part of each user's identity
    /// (`oauth2:<name>#<user id>`) and of the audit lines; a DNS label of at
    /// most 40 characters (it also names the Secret's volume).
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// `OAuth2` (any provider, settings in `oauth2`) or `WeCom` (WeChat
    /// Work, settings in `wecom`).
    pub kind: WebSsoKind,

    /// Label of the login button ("Sign in with <displayName>"). Default:
    /// the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub display_name: Option<String>,

    /// OAuth2 client id. WeCom: the corp id (corpid, `appid` of the login
    /// pages).
    #[schemars(length(min = 1, max = 512))]
    pub client_id: String,

    /// Secret in the model's namespace whose key `client-secret` holds the
    /// client secret (WeCom: the app's corpsecret). It is mounted into the
    /// pods and read at each login, so rotating it needs no restart.
    /// Unset (OAuth2 only): a public client, protected by PKCE alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_secret_name: Option<String>,

    /// Where the provider sends the browser back: must be registered with
    /// it (WeCom: a trusted domain of the app) and end in
    /// `/web/oauth2/callback`. Unset: `https://<Host of the login
    /// request>/web/oauth2/callback`.
    #[serde(
        default,
        rename = "redirectURL",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(min = 9, max = 512))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "isURL(self) && url(self).getScheme() == 'https' && self.endsWith('/web/oauth2/callback')",
         "message": "web.sso.redirectURL: must be an https URL ending in /web/oauth2/callback"}
    ]))]
    pub redirect_url: Option<String>,

    /// Tier of a user the role mapping gives none. Unset: such users are
    /// refused with a page saying that no role is mapped to them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_tier: Option<Tier>,

    /// Endpoints and answer layout of a generic OAuth2 provider (kind
    /// OAuth2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Settings>,

    /// WeChat Work settings (kind WeCom).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wecom: Option<WeComSettings>,
}

impl WebSsoProvider {
    /// The button's label.
    pub fn label(&self) -> &str {
        self.display_name.as_deref().unwrap_or(&self.name)
    }
}

/// How the client secret reaches the token endpoint (RFC 6749 §2.3.1).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TokenEndpointAuth {
    /// HTTP Basic with the form-encoded client id and secret.
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

/// A generic OAuth2 authorization-code provider.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuth2Settings {
    /// The authorization endpoint the browser is sent to (https).
    #[serde(rename = "authorizeURL")]
    #[schemars(length(min = 9, max = 512))]
    #[schemars(extend("x-kubernetes-validations" = [https_url_rule("web.sso.oauth2.authorizeURL")]))]
    pub authorize_url: String,

    /// The token endpoint the code is exchanged at (https).
    #[serde(rename = "tokenURL")]
    #[schemars(length(min = 9, max = 512))]
    #[schemars(extend("x-kubernetes-validations" = [https_url_rule("web.sso.oauth2.tokenURL")]))]
    pub token_url: String,

    /// The user-info endpoint, called with the access token as a Bearer
    /// credential; its JSON answer is read with the pointers below.
    #[serde(rename = "userInfoURL")]
    #[schemars(length(min = 9, max = 512))]
    #[schemars(extend("x-kubernetes-validations" = [https_url_rule("web.sso.oauth2.userInfoURL")]))]
    pub user_info_url: String,

    /// Requested scopes (space-joined in the authorization request).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub scopes: Vec<String>,

    /// Send a PKCE S256 challenge (RFC 7636). Turn off only for a provider
    /// that rejects unknown parameters; `state` is always sent and checked.
    #[serde(default = "default_true")]
    pub pkce: bool,

    /// How the client secret is sent to the token endpoint.
    #[serde(default)]
    pub token_endpoint_auth: TokenEndpointAuth,

    /// JSON pointer (RFC 6901) to the user's stable id in the user-info
    /// answer (a string or a number), e.g. `/sub` or `/data/id`.
    #[serde(default = "default_user_id_pointer")]
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^/"))]
    pub user_id_pointer: String,

    /// JSON pointer to the name the page shows. Unset or absent: the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^/"))]
    pub display_name_pointer: Option<String>,

    /// JSON pointer to the user's role, group or department: a string, a
    /// number, or a list of them. Unset: every user gets `defaultTier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^/"))]
    pub role_pointer: Option<String>,

    /// Which values at `rolePointer` give which tier; a user with several
    /// gets the highest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub role_mapping: Vec<RoleValueTier>,
}

/// One value of the role pointer and the tier it gives.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleValueTier {
    /// The value as the provider writes it (numbers compare as their
    /// decimal text).
    #[schemars(length(min = 1, max = 256))]
    pub value: String,
    /// The tier it gives.
    pub tier: Tier,
}

/// Where a WeChat Work user signs in.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum WeComLogin {
    /// The web login page (login.work.weixin.qq.com/wwlogin/sso/login):
    /// the user scans a QR code with the app; for desktop browsers.
    #[default]
    QrCode,
    /// The OAuth2 page inside the WeChat Work app
    /// (open.weixin.qq.com/connect/oauth2/authorize); for the app's own
    /// browser.
    InApp,
}

/// WeChat Work (企业微信) as the sign-in provider.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WeComSettings {
    /// The self-built app's AgentId.
    #[schemars(length(min = 1, max = 32), regex(pattern = r"^[0-9]+$"))]
    pub agent_id: String,

    /// QrCode (a browser) or InApp (inside the WeChat Work app).
    #[serde(default)]
    pub login: WeComLogin,

    /// The server API's base. Default: https://qyapi.weixin.qq.com (change
    /// only for a proxy or a stand-in).
    #[serde(
        default,
        rename = "apiBaseURL",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(min = 9, max = 512))]
    #[schemars(extend("x-kubernetes-validations" = [https_url_rule("web.sso.wecom.apiBaseURL")]))]
    pub api_base_url: Option<String>,

    /// The authorization page. Default: the QR-code login page or the
    /// in-app authorization page, after `login`.
    #[serde(
        default,
        rename = "authorizeURL",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(min = 9, max = 512))]
    #[schemars(extend("x-kubernetes-validations" = [https_url_rule("web.sso.wecom.authorizeURL")]))]
    pub authorize_url: Option<String>,

    /// Departments (ids, as user/get lists them) and the tier their
    /// members get; a member of several gets the highest.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub department_tiers: Vec<WeComIdTier>,

    /// Tags (ids) and the tier their members get, looked up with tag/get
    /// (the app needs the tags in its visible range).
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub tag_tiers: Vec<WeComIdTier>,
}

impl WeComSettings {
    /// The API base, without a trailing slash.
    pub fn api_base(&self) -> &str {
        self.api_base_url
            .as_deref()
            .unwrap_or(WECOM_API_BASE_URL)
            .trim_end_matches('/')
    }

    /// The authorization page the browser is sent to.
    pub fn authorize(&self) -> &str {
        self.authorize_url.as_deref().unwrap_or(match self.login {
            WeComLogin::QrCode => WECOM_QR_LOGIN_URL,
            WeComLogin::InApp => WECOM_IN_APP_AUTHORIZE_URL,
        })
    }
}

/// A WeChat Work department or tag id and the tier it gives.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WeComIdTier {
    /// The department or tag id.
    #[schemars(range(min = 1))]
    pub id: u64,
    /// The tier its members get.
    pub tier: Tier,
}

fn default_user_id_pointer() -> String {
    "/sub".into()
}

fn https_url_rule(field: &str) -> serde_json::Value {
    serde_json::json!({
        "rule": "isURL(self) && url(self).getScheme() == 'https'",
        "message": format!("{field}: must be an https URL"),
    })
}
