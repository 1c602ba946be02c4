//! The web chat UI (the seed's Streamlit page on port 8501), served only on
//! the web port: static files compiled into the binary under a strict
//! Content Security Policy, and the session endpoints. The page never holds
//! a credential: logging in (API key or SSO) opens a server-side session
//! whose id lives in an HttpOnly cookie, and the page calls the same
//! authenticated API with that cookie plus a CSRF token.

pub mod login;
pub mod oauth2;
pub mod sso;

use std::collections::HashMap;

use axum::http::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use subtle::ConstantTimeEq;

use crate::session::{self, LOGIN_COOKIE, PendingLogin, cookie};
use crate::state::AppState;

/// No inline script or style, nothing from another origin, no framing, no
/// form posts (the page submits with fetch), no plugins, no `<base>`.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
                       frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    response
}

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", include_str!("web/index.html"))
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("web/app.js"))
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("web/style.css"))
}

pub async fn markdown() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("web/markdown.js"),
    )
}

/// Escapes text for an HTML text node or quoted attribute.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A full-page error for the browser flows (the SSO redirects land on
/// pages, not on script): what went wrong and a way back.
pub fn error_page(status: StatusCode, title: &str, detail: &str) -> Response {
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>securechat: {title}</title><link rel=\"stylesheet\" href=\"/ui/style.css\"></head>\
         <body><main class=\"error-page\"><h1 id=\"error-title\">{title}</h1>\
         <p id=\"error-detail\">{detail}</p><p><a href=\"/\">Back to the sign-in page</a></p>\
         </main></body></html>\n",
        title = escape_html(title),
        detail = escape_html(detail),
    );
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    response
}

/// The checks every sign-in callback (OpenID Connect and plain OAuth2)
/// makes before it talks to the provider: the provider's own refusal, both
/// parameters present, the state bound to this browser's login cookie
/// (login CSRF), and the pending login taken, so a callback works once.
/// Gives the code and the pending login, or the page that says why not.
pub(crate) async fn pending_login<'q>(
    state: &AppState,
    headers: &HeaderMap,
    query: &'q HashMap<String, String>,
) -> Result<(&'q str, PendingLogin), Response> {
    let failed = |status, detail: &str| error_page(status, "Sign-in failed", detail);
    if let Some(error) = query.get("error") {
        let description = query.get("error_description").map_or("", String::as_str);
        return Err(failed(
            StatusCode::BAD_REQUEST,
            &format!("The sign-in provider refused the sign-in: {error} {description}"),
        ));
    }
    let (Some(code), Some(returned_state)) = (query.get("code"), query.get("state")) else {
        return Err(failed(
            StatusCode::BAD_REQUEST,
            "The callback lacks the code or state parameter (was the sign-in cancelled?).",
        ));
    };
    let bound = cookie(headers, LOGIN_COOKIE)
        .is_some_and(|c| bool::from(c.as_bytes().ct_eq(returned_state.as_bytes())));
    if !bound {
        return Err(failed(
            StatusCode::BAD_REQUEST,
            "This sign-in was not started from this browser (state mismatch). Start again.",
        ));
    }
    match state
        .sessions
        .finish_login(returned_state, Utc::now())
        .await
    {
        Ok(Some(pending)) => Ok((code.as_str(), pending)),
        Ok(None) => Err(failed(
            StatusCode::BAD_REQUEST,
            "This sign-in has expired or was already used. Start again.",
        )),
        Err(e) => Err(failed(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())),
    }
}

/// A callback's answer, which also clears the login cookie: whatever the
/// outcome, that sign-in attempt is over.
pub(crate) fn clearing_login_cookie(mut response: Response) -> Response {
    let clear_login = session::set_cookie(LOGIN_COOKIE, "", 0);
    if let Ok(value) = HeaderValue::from_str(&clear_login) {
        response.headers_mut().append(SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape_html(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn the_policy_forbids_inline_code_framing_and_foreign_origins() {
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'none'",
        ] {
            assert!(CSP.contains(directive), "{directive}");
        }
        assert!(!CSP.contains("unsafe-inline") && !CSP.contains("unsafe-eval"));
    }
}
