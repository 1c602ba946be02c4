//! The two chat robots: what is read from their Secret, the request each
//! documents, and how each answers. Pure except [`RobotSpec::load`], which
//! reads the files.
//!
//! - WeChat Work (企业微信) group robot: `POST
//!   https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=KEY` with
//!   `{"msgtype":"markdown","markdown":{"content":"..."}}`, content at most
//!   4096 bytes, at most 20 messages a minute (errcode 45009 beyond).
//! - DingTalk (钉钉) custom robot: `POST
//!   https://oapi.dingtalk.com/robot/send?access_token=TOKEN` with
//!   `{"msgtype":"markdown","markdown":{"title":"...","text":"..."}}`; with
//!   the "加签" security setting, `&timestamp=MS&sign=SIGN`, SIGN being the
//!   base64 HMAC-SHA256 of `"{timestamp}\n{secret}"` keyed by the secret,
//!   URL-encoded. At most 20 messages a minute (errcode 130101 beyond).
//!
//! Both answer HTTP 200 with `{"errcode":0,"errmsg":"ok"}` on success and a
//! non-zero errcode otherwise.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine;
use reqwest::Url;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::alert_relay::render::{Flavor, Message};

/// The file in a robot's directory (its mounted Secret) holding the webhook
/// URL, with its key or access token.
pub const URL_FILE: &str = "url";
/// The file holding DingTalk's signing secret (optional: only robots with
/// the "加签" setting have one).
pub const SECRET_FILE: &str = "secret";

/// The markdown budget of a message. WeChat Work documents 4096 bytes for
/// markdown content; DingTalk allows more, and one budget keeps the two
/// robots' messages alike.
pub const MAX_MARKDOWN_BYTES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RobotKind {
    WeCom,
    DingTalk,
}

impl RobotKind {
    pub fn flavor(self) -> Flavor {
        match self {
            RobotKind::WeCom => Flavor::WeCom,
            RobotKind::DingTalk => Flavor::DingTalk,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RobotKind::WeCom => "wecom",
            RobotKind::DingTalk => "dingtalk",
        }
    }

    /// The JSON body of a markdown message.
    pub fn body(self, message: &Message) -> Value {
        match self {
            RobotKind::WeCom => json!({
                "msgtype": "markdown",
                "markdown": { "content": message.markdown },
            }),
            RobotKind::DingTalk => json!({
                "msgtype": "markdown",
                "markdown": { "title": message.title, "text": message.markdown },
            }),
        }
    }

    /// The errcodes that mean "try again later": the per-minute limit, and
    /// -1, "system busy", which both document.
    fn is_retryable(self, errcode: i64) -> bool {
        match self {
            RobotKind::WeCom => matches!(errcode, -1 | 45009),
            RobotKind::DingTalk => matches!(errcode, -1 | 130101),
        }
    }
}

impl FromStr for RobotKind {
    type Err = RobotError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "wecom" => Ok(RobotKind::WeCom),
            "dingtalk" => Ok(RobotKind::DingTalk),
            other => Err(RobotError::Kind(other.to_string())),
        }
    }
}

/// A robot as the command line names it: `NAME=KIND:DIR`, DIR holding the
/// files of its Secret. Only paths are ever arguments; the URL and secret
/// stay in the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RobotSpec {
    pub name: String,
    pub kind: RobotKind,
    pub dir: PathBuf,
}

impl FromStr for RobotSpec {
    type Err = RobotError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || RobotError::Spec(s.to_string());
        let (name, rest) = s.split_once('=').ok_or_else(malformed)?;
        let (kind, dir) = rest.split_once(':').ok_or_else(malformed)?;
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_name || dir.is_empty() {
            return Err(malformed());
        }
        Ok(RobotSpec {
            name: name.to_string(),
            kind: kind.parse()?,
            dir: PathBuf::from(dir),
        })
    }
}

/// What a robot's Secret holds.
#[derive(Clone)]
pub struct Credentials {
    pub url: Url,
    pub secret: Option<String>,
}

impl std::fmt::Debug for Credentials {
    // The URL's query is the robot's key: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("host", &self.url.host_str())
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl RobotSpec {
    /// Reads the robot's files. Called at start-up (so a wrong mount fails
    /// the pod at once) and before every delivery (so a rotated Secret is
    /// used without a restart).
    pub fn load(&self) -> Result<Credentials, RobotError> {
        let url_path = self.dir.join(URL_FILE);
        let text = read(&url_path)?.ok_or_else(|| RobotError::Missing(url_path.clone()))?;
        let url = Url::parse(text.trim()).map_err(|e| RobotError::Url {
            path: url_path.clone(),
            reason: e.to_string(),
        })?;
        if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
            return Err(RobotError::Url {
                path: url_path,
                reason: "not an http(s) URL with a host".into(),
            });
        }
        let secret = match self.kind {
            RobotKind::DingTalk => read(&self.dir.join(SECRET_FILE))?
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
            RobotKind::WeCom => None,
        };
        Ok(Credentials { url, secret })
    }
}

/// A file's text; None when it does not exist.
fn read(path: &Path) -> Result<Option<String>, RobotError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RobotError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// DingTalk's signature of a request made at `timestamp_ms`: base64 of
/// HMAC-SHA256(key = secret, message = "{timestamp_ms}\n{secret}"). The
/// URL encoding is the query serializer's.
pub fn dingtalk_sign(secret: &str, timestamp_ms: i64) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, format!("{timestamp_ms}\n{secret}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

/// The URL to post to at `timestamp_ms`: the robot's own, plus DingTalk's
/// timestamp and signature when it has a secret.
pub fn request_url(kind: RobotKind, credentials: &Credentials, timestamp_ms: i64) -> Url {
    let mut url = credentials.url.clone();
    if let (RobotKind::DingTalk, Some(secret)) = (kind, &credentials.secret) {
        url.query_pairs_mut()
            .append_pair("timestamp", &timestamp_ms.to_string())
            .append_pair("sign", &dingtalk_sign(secret, timestamp_ms));
    }
    url
}

/// How a robot answered one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Delivered,
    /// Worth another try after a pause (throttled, busy, a server error).
    Retry(String),
    /// The same request would be refused again (a wrong key, a bad
    /// signature, a message it rejects).
    Refused(String),
}

#[derive(Deserialize)]
struct RobotAnswer {
    errcode: i64,
    #[serde(default)]
    errmsg: String,
}

/// Classifies an HTTP answer of a robot.
pub fn classify(kind: RobotKind, status: u16, body: &[u8]) -> Reply {
    let excerpt = || String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    if status == 429 || status >= 500 {
        return Reply::Retry(format!("HTTP {status}: {}", excerpt()));
    }
    if !(200..300).contains(&status) {
        return Reply::Refused(format!("HTTP {status}: {}", excerpt()));
    }
    match serde_json::from_slice::<RobotAnswer>(body) {
        Ok(answer) if answer.errcode == 0 => Reply::Delivered,
        Ok(answer) => {
            let reason = format!("errcode {}: {}", answer.errcode, answer.errmsg);
            if kind.is_retryable(answer.errcode) {
                Reply::Retry(reason)
            } else {
                Reply::Refused(reason)
            }
        }
        Err(_) => Reply::Refused(format!(
            "HTTP {status} without the robot's errcode JSON: {}",
            excerpt()
        )),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RobotError {
    #[error("robot kind {0:?} is not one of: wecom, dingtalk (a robot is NAME=KIND:DIR)")]
    Kind(String),
    #[error(
        "robot {0:?} is not NAME=KIND:DIR (NAME of letters, digits, '-' and '_'; KIND wecom or dingtalk; DIR the mounted Secret)"
    )]
    Spec(String),
    #[error(
        "{0} does not exist: the robot's Secret must hold its webhook URL under the key {URL_FILE:?}"
    )]
    Missing(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} does not hold a webhook URL: {reason}")]
    Url { path: PathBuf, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "SECtest0123456789";
    const TIMESTAMP_MS: i64 = 1_700_000_000_000;

    #[test]
    fn the_signature_matches_dingtalks_documented_recipe() {
        // Computed with Python's hmac, hashlib and base64 as DingTalk's
        // documentation does it; quote_plus gave the encoded form.
        assert_eq!(
            dingtalk_sign(SECRET, TIMESTAMP_MS),
            "yBKp5IlG6qCzcQWmgyRK/ziJBdVNJmHfFE2ST/CzT/g="
        );
        let credentials = Credentials {
            url: Url::parse("https://oapi.dingtalk.com/robot/send?access_token=T").unwrap(),
            secret: Some(SECRET.into()),
        };
        assert_eq!(
            request_url(RobotKind::DingTalk, &credentials, TIMESTAMP_MS).as_str(),
            "https://oapi.dingtalk.com/robot/send?access_token=T&timestamp=1700000000000\
             &sign=yBKp5IlG6qCzcQWmgyRK%2FziJBdVNJmHfFE2ST%2FCzT%2Fg%3D"
        );
    }

    #[test]
    fn unsigned_robots_post_to_their_url_unchanged() {
        let url = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=K";
        let credentials = Credentials {
            url: Url::parse(url).unwrap(),
            secret: None,
        };
        for kind in [RobotKind::WeCom, RobotKind::DingTalk] {
            assert_eq!(request_url(kind, &credentials, TIMESTAMP_MS).as_str(), url);
        }
    }

    #[test]
    fn bodies_follow_each_robots_markdown_shape() {
        let message = Message {
            title: "t".into(),
            markdown: "m".into(),
        };
        assert_eq!(
            RobotKind::WeCom.body(&message),
            json!({"msgtype": "markdown", "markdown": {"content": "m"}})
        );
        assert_eq!(
            RobotKind::DingTalk.body(&message),
            json!({"msgtype": "markdown", "markdown": {"title": "t", "text": "m"}})
        );
    }

    #[test]
    fn answers_are_delivered_retried_or_refused() {
        let ok = br#"{"errcode":0,"errmsg":"ok"}"#;
        assert_eq!(classify(RobotKind::WeCom, 200, ok), Reply::Delivered);
        let throttled = br#"{"errcode":45009,"errmsg":"api freq out of limit"}"#;
        assert!(matches!(
            classify(RobotKind::WeCom, 200, throttled),
            Reply::Retry(_)
        ));
        let too_fast = br#"{"errcode":130101,"errmsg":"send too fast"}"#;
        assert!(matches!(
            classify(RobotKind::DingTalk, 200, too_fast),
            Reply::Retry(_)
        ));
        let bad_key = br#"{"errcode":93000,"errmsg":"invalid webhook url"}"#;
        assert_eq!(
            classify(RobotKind::WeCom, 200, bad_key),
            Reply::Refused("errcode 93000: invalid webhook url".into())
        );
        let bad_sign = br#"{"errcode":310000,"errmsg":"sign not match"}"#;
        assert!(matches!(
            classify(RobotKind::DingTalk, 200, bad_sign),
            Reply::Refused(_)
        ));
        assert!(matches!(
            classify(RobotKind::WeCom, 503, b"busy"),
            Reply::Retry(_)
        ));
        assert!(matches!(
            classify(RobotKind::WeCom, 429, b""),
            Reply::Retry(_)
        ));
        assert!(matches!(
            classify(RobotKind::WeCom, 404, b"no"),
            Reply::Refused(_)
        ));
        assert!(matches!(
            classify(RobotKind::WeCom, 200, b"<html>"),
            Reply::Refused(_)
        ));
    }

    #[test]
    fn robot_specs_parse_and_bad_ones_say_the_form() {
        assert_eq!(
            "oncall=dingtalk:/etc/robots/oncall"
                .parse::<RobotSpec>()
                .unwrap(),
            RobotSpec {
                name: "oncall".into(),
                kind: RobotKind::DingTalk,
                dir: "/etc/robots/oncall".into(),
            }
        );
        assert!(matches!(
            "oncall=slack:/x".parse::<RobotSpec>(),
            Err(RobotError::Kind(k)) if k == "slack"
        ));
        for bad in [
            "oncall",
            "oncall=wecom",
            "=wecom:/x",
            "on call=wecom:/x",
            "x=wecom:",
        ] {
            let err = bad.parse::<RobotSpec>().unwrap_err();
            assert!(err.to_string().contains("NAME=KIND:DIR"), "{bad}: {err}");
        }
    }

    #[test]
    fn credentials_come_from_the_files_and_bad_ones_name_the_file() {
        let dir = std::env::temp_dir().join(format!("alert-relay-robot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let spec = RobotSpec {
            name: "r".into(),
            kind: RobotKind::DingTalk,
            dir: dir.clone(),
        };
        assert!(matches!(spec.load(), Err(RobotError::Missing(p)) if p == dir.join(URL_FILE)));
        std::fs::write(dir.join(URL_FILE), "not a url\n").unwrap();
        let err = spec.load().unwrap_err();
        assert!(
            err.to_string().contains("does not hold a webhook URL"),
            "{err}"
        );
        std::fs::write(dir.join(URL_FILE), "ftp://example.com/x\n").unwrap();
        assert!(matches!(spec.load(), Err(RobotError::Url { .. })));
        std::fs::write(
            dir.join(URL_FILE),
            "https://oapi.dingtalk.com/robot/send?access_token=T\n",
        )
        .unwrap();
        assert_eq!(spec.load().unwrap().secret, None);
        std::fs::write(dir.join(SECRET_FILE), "SECabc\n").unwrap();
        let credentials = spec.load().unwrap();
        assert_eq!(credentials.secret.as_deref(), Some("SECabc"));
        assert_eq!(credentials.url.query(), Some("access_token=T"));
        let printed = format!("{credentials:?}");
        assert!(
            !printed.contains("access_token") && !printed.contains("SECabc"),
            "{printed}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
