//! WeChat Work (企业微信) sign-in: the authorization URL and the two-step
//! user identification its server API documents
//! (developer.work.weixin.qq.com):
//!
//! 1. `GET /cgi-bin/gettoken?corpid&corpsecret` -> the corp's
//!    `access_token` (valid `expires_in` seconds, 7200; the documents ask
//!    callers to cache it, as gettoken is rate-limited);
//! 2. `GET /cgi-bin/auth/getuserinfo?access_token&code` -> the member's
//!    `userid` (a non-member gets only an `openid`); a used or expired
//!    code is errcode 40029;
//! 3. `GET /cgi-bin/user/get?access_token&userid` -> `name` and
//!    `department` (ids), and for each mapped tag
//!    `GET /cgi-bin/tag/get?access_token&tagid` -> its `userlist`.
//!
//! Every answer carries `errcode` (0 is success) and `errmsg`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use securechat_crds::v1alpha1::{Tier, WeComLogin, WeComSettings};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::oauth2::{OAuth2Error, with_query};

/// errcode of an invalid, used or expired code.
pub const INVALID_CODE: i64 = 40029;
/// errcodes of an access token that is invalid or expired: the cached
/// token is dropped and fetched again once.
const STALE_TOKEN: [i64; 2] = [40014, 42001];
/// A cached token is used until this long before its stated expiry.
const TOKEN_MARGIN: Duration = Duration::from_secs(300);

/// The authorization page URL for `state`: the QR-code web login or the
/// in-app OAuth2 page, with the parameters each documents.
pub fn authorize_url(
    settings: &WeComSettings,
    corp_id: &str,
    redirect_uri: &str,
    state: &str,
) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    match settings.login {
        WeComLogin::QrCode => {
            query
                .append_pair("login_type", "CorpApp")
                .append_pair("appid", corp_id)
                .append_pair("agentid", &settings.agent_id)
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("state", state);
            with_query(settings.authorize(), &query.finish())
        }
        WeComLogin::InApp => {
            query
                .append_pair("appid", corp_id)
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("response_type", "code")
                .append_pair("scope", "snsapi_base")
                .append_pair("state", state)
                .append_pair("agentid", &settings.agent_id);
            // The fragment is part of the documented URL.
            format!(
                "{}#wechat_redirect",
                with_query(settings.authorize(), &query.finish())
            )
        }
    }
}

/// The highest tier of the user's departments and tags, else the default.
pub fn tier_of(
    settings: &WeComSettings,
    departments: &[u64],
    tags: &[u64],
    default: Option<Tier>,
) -> Option<Tier> {
    let by_department = settings
        .department_tiers
        .iter()
        .filter(|m| departments.contains(&m.id))
        .map(|m| m.tier);
    let by_tag = settings
        .tag_tiers
        .iter()
        .filter(|m| tags.contains(&m.id))
        .map(|m| m.tier);
    by_department.chain(by_tag).max().or(default)
}

/// A WeCom answer's errcode (0 or absent is success).
fn errcode(answer: &Value) -> i64 {
    answer.get("errcode").and_then(Value::as_i64).unwrap_or(0)
}

fn refused(step: &'static str, answer: &Value) -> OAuth2Error {
    OAuth2Error::Refused {
        step,
        detail: format!(
            "errcode {} ({})",
            errcode(answer),
            answer.get("errmsg").and_then(Value::as_str).unwrap_or("")
        ),
    }
}

/// The corp access tokens, cached per (API base, corp id, secret).
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<[u8; 32], (String, Instant)>>,
}

fn cache_key(base: &str, corp_id: &str, secret: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in [base, corp_id, secret] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hash.finalize().into()
}

impl TokenCache {
    fn get(&self, key: &[u8; 32]) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens
            .get(key)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(token, _)| token.clone())
    }

    fn put(&self, key: [u8; 32], token: String, valid_for: Duration) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        // One entry per configured provider: nothing else grows it.
        tokens.insert(
            key,
            (
                token,
                Instant::now() + valid_for.saturating_sub(TOKEN_MARGIN),
            ),
        );
    }

    fn forget(&self, key: &[u8; 32]) {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// One WeCom API call: GET with a query, JSON answer.
async fn call(
    http: &reqwest::Client,
    step: &'static str,
    url: String,
) -> Result<Value, OAuth2Error> {
    let response = http
        .get(url)
        .send()
        .await
        .map_err(OAuth2Error::http(step))?;
    let status = response.status();
    if !status.is_success() {
        return Err(OAuth2Error::Malformed {
            step,
            detail: format!("HTTP {status}"),
        });
    }
    response.json().await.map_err(OAuth2Error::http(step))
}

/// The member who signed in with `code`.
pub struct WeComClient<'a> {
    pub http: &'a reqwest::Client,
    pub cache: &'a TokenCache,
    pub settings: &'a WeComSettings,
    pub corp_id: &'a str,
    pub corp_secret: &'a str,
}

impl WeComClient<'_> {
    fn url(&self, path: &str, query: &[(&str, &str)]) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in query {
            q.append_pair(k, v);
        }
        format!("{}/cgi-bin/{path}?{}", self.settings.api_base(), q.finish())
    }

    async fn access_token(&self, key: &[u8; 32]) -> Result<String, OAuth2Error> {
        if let Some(token) = self.cache.get(key) {
            return Ok(token);
        }
        const STEP: &str = "gettoken";
        let url = self.url(
            "gettoken",
            &[("corpid", self.corp_id), ("corpsecret", self.corp_secret)],
        );
        let answer = call(self.http, STEP, url).await?;
        if errcode(&answer) != 0 {
            return Err(refused(STEP, &answer));
        }
        let token = answer
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| OAuth2Error::Malformed {
                step: STEP,
                detail: "no access_token".into(),
            })?
            .to_string();
        let expires_in = answer
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        self.cache
            .put(*key, token.clone(), Duration::from_secs(expires_in));
        Ok(token)
    }

    /// Identifies the member: userid from the code, then name,
    /// departments and the mapped tags they carry.
    pub async fn identify(&self, code: &str) -> Result<Member, OAuth2Error> {
        let key = cache_key(self.settings.api_base(), self.corp_id, self.corp_secret);
        let token = self.access_token(&key).await?;
        match self.identify_with(&token, code).await {
            Ok(member) => Ok(member),
            Err(CallError::Failed(e)) => Err(e),
            // The cached token died early (revoked, secret reset): once
            // more with a fresh one.
            Err(CallError::Stale) => {
                self.cache.forget(&key);
                let token = self.access_token(&key).await?;
                self.identify_with(&token, code).await.map_err(|e| match e {
                    CallError::Failed(e) => e,
                    CallError::Stale => OAuth2Error::Refused {
                        step: "gettoken",
                        detail: "a fresh access token was refused as expired".into(),
                    },
                })
            }
        }
    }

    /// One API call whose errcode must be 0.
    async fn checked(&self, step: &'static str, url: String) -> Result<Value, CallError> {
        let answer = call(self.http, step, url).await?;
        match errcode(&answer) {
            0 => Ok(answer),
            e if STALE_TOKEN.contains(&e) => Err(CallError::Stale),
            INVALID_CODE if step == GETUSERINFO => {
                Err(CallError::Failed(OAuth2Error::CodeExpired {
                    detail: format!("WeChat Work errcode {INVALID_CODE}: invalid code"),
                }))
            }
            _ => Err(CallError::Failed(refused(step, &answer))),
        }
    }

    async fn identify_with(&self, token: &str, code: &str) -> Result<Member, CallError> {
        let info = self
            .checked(
                GETUSERINFO,
                self.url(GETUSERINFO, &[("access_token", token), ("code", code)]),
            )
            .await?;
        let Some(userid) = info
            .get("userid")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
        else {
            return Err(CallError::Failed(if info.get("openid").is_some() {
                OAuth2Error::NotAMember
            } else {
                OAuth2Error::Malformed {
                    step: GETUSERINFO,
                    detail: "neither userid nor openid".into(),
                }
            }));
        };
        let user = self
            .checked(
                "user/get",
                self.url("user/get", &[("access_token", token), ("userid", userid)]),
            )
            .await?;
        let departments: Vec<u64> = user
            .get("department")
            .and_then(Value::as_array)
            .map(|d| d.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let mut tags = Vec::new();
        for mapping in &self.settings.tag_tiers {
            let tag_id = mapping.id.to_string();
            let tag = self
                .checked(
                    "tag/get",
                    self.url("tag/get", &[("access_token", token), ("tagid", &tag_id)]),
                )
                .await?;
            let member = tag
                .get("userlist")
                .and_then(Value::as_array)
                .is_some_and(|list| {
                    list.iter()
                        .any(|u| u.get("userid").and_then(Value::as_str) == Some(userid))
                });
            if member {
                tags.push(mapping.id);
            }
        }
        let display_name = user
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .unwrap_or(userid)
            .to_string();
        Ok(Member {
            userid: userid.to_string(),
            display_name,
            departments,
            tags,
        })
    }
}

/// A corp member as the API describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub userid: String,
    pub display_name: String,
    /// Department ids (user/get).
    pub departments: Vec<u64>,
    /// The mapped tags (tag/get) the member carries.
    pub tags: Vec<u64>,
}

const GETUSERINFO: &str = "auth/getuserinfo";

/// A failed call, or an access token refused as invalid or expired.
enum CallError {
    Stale,
    Failed(OAuth2Error),
}

impl From<OAuth2Error> for CallError {
    fn from(e: OAuth2Error) -> Self {
        CallError::Failed(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(login: &str) -> WeComSettings {
        serde_json::from_value(json!({
            "agentId": "1000002",
            "login": login,
            "departmentTiers": [{"id": 2, "tier": "Developer"}, {"id": 3, "tier": "ReadOnly"}],
            "tagTiers": [{"id": 7, "tier": "Admin"}]
        }))
        .unwrap()
    }

    #[test]
    fn the_documented_login_pages_and_parameters() {
        assert_eq!(
            authorize_url(
                &settings("QrCode"),
                "ww01",
                "https://chat.example/web/oauth2/callback",
                "s1"
            ),
            "https://login.work.weixin.qq.com/wwlogin/sso/login?login_type=CorpApp&appid=ww01&\
             agentid=1000002&redirect_uri=https%3A%2F%2Fchat.example%2Fweb%2Foauth2%2Fcallback&state=s1"
        );
        assert_eq!(
            authorize_url(
                &settings("InApp"),
                "ww01",
                "https://c/web/oauth2/callback",
                "s1"
            ),
            "https://open.weixin.qq.com/connect/oauth2/authorize?appid=ww01&\
             redirect_uri=https%3A%2F%2Fc%2Fweb%2Foauth2%2Fcallback&response_type=code&\
             scope=snsapi_base&state=s1&agentid=1000002#wechat_redirect"
        );
    }

    #[test]
    fn departments_and_tags_map_to_the_highest_tier() {
        let s = settings("QrCode");
        assert_eq!(tier_of(&s, &[3], &[], None), Some(Tier::ReadOnly));
        assert_eq!(tier_of(&s, &[3, 2], &[], None), Some(Tier::Developer));
        assert_eq!(tier_of(&s, &[3], &[7], None), Some(Tier::Admin));
        assert_eq!(tier_of(&s, &[99], &[], None), None);
        assert_eq!(
            tier_of(&s, &[99], &[], Some(Tier::ReadOnly)),
            Some(Tier::ReadOnly)
        );
    }

    #[test]
    fn cached_tokens_expire_early_and_are_keyed_by_the_secret() {
        let cache = TokenCache::default();
        let a = cache_key("https://q", "ww", "secret-a");
        let b = cache_key("https://q", "ww", "secret-b");
        cache.put(a, "t".into(), Duration::from_secs(7200));
        assert_eq!(cache.get(&a).as_deref(), Some("t"));
        assert_eq!(cache.get(&b), None, "a rotated secret fetches a new token");
        cache.put(b, "u".into(), Duration::from_secs(60));
        assert_eq!(cache.get(&b), None, "a token within the margin is not used");
        cache.forget(&a);
        assert_eq!(cache.get(&a), None);
    }
}
