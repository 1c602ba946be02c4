//! The Authorization header and the API-key parser / verifier
//! (server/src/auth/mod.rs `bearer`, server/src/credentials/api_key.rs).
//!
//! Properties:
//! - `bearer` only returns a trimmed, non-empty credential of at most 8 KiB
//!   taken from a single `Bearer ` header;
//! - `api_key::parse` only splits keys that `format_key` rebuilds exactly,
//!   with an id and secret of the documented shape;
//! - `api_key::verify` accepts a credential only if it is one of the table's
//!   real keys (current secret, or the previous one in its grace period) and
//!   the key is active;
//! - a real key sent as `Bearer <key>` (any case, any padding) is accepted,
//!   so the property above is not vacuous.
#![no_main]

use std::sync::LazyLock;

use arbitrary::{Arbitrary, Unstructured};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderValue};
use chrono::{DateTime, Duration, Utc};
use libfuzzer_sys::fuzz_target;
use securechat_crds::files::api_keys::{
    ApiKeyRecord, ApiKeyState, ApiKeyTable, MAX_ID_LEN, SECRET_LEN, format_key,
};
use securechat_crds::v1alpha1::Tier;
use securechat_server::auth::bearer;
use securechat_server::credentials::api_key;

/// A fixed clock: the table's validity windows are relative to it.
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).expect("a valid timestamp")
}

struct Fixture {
    table: ApiKeyTable,
    /// Every real plaintext key, with whether `verify` must accept it.
    keys: Vec<(String, bool)>,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let now = now();
    let record = |id: &str, state, secret: &api_key::Minted| ApiKeyRecord {
        id: id.into(),
        name: id.into(),
        tier: Tier::Developer,
        state,
        secret_hash: secret.hash.clone(),
        previous_secret_hash: None,
        previous_secret_valid_until: None,
        created_at: now - Duration::days(1),
        expires_at: Some(now + Duration::days(1)),
        rotated_at: None,
        last_used_at: None,
        spiffe_id: None,
    };
    let live = api_key::mint("live").expect("randomness");
    let rotated_out = api_key::mint("live").expect("randomness");
    let grace_over = api_key::mint("old").expect("randomness");
    let old = api_key::mint("old").expect("randomness");
    let revoked = api_key::mint("gone").expect("randomness");
    let mut live_record = record("live", ApiKeyState::Active, &live);
    live_record.previous_secret_hash = Some(rotated_out.hash.clone());
    live_record.previous_secret_valid_until = Some(now + Duration::hours(1));
    let mut old_record = record("old", ApiKeyState::Active, &old);
    old_record.previous_secret_hash = Some(grace_over.hash.clone());
    old_record.previous_secret_valid_until = Some(now - Duration::hours(1));
    Fixture {
        table: ApiKeyTable {
            keys: vec![
                live_record,
                old_record,
                record("gone", ApiKeyState::Revoked, &revoked),
            ],
        },
        keys: vec![
            (live.plaintext, true),
            (rotated_out.plaintext, true),
            (old.plaintext, true),
            (grace_over.plaintext, false),
            (revoked.plaintext, false),
        ],
    }
});

/// One of the table's real keys behind a scheme and padding, perhaps with
/// one byte changed.
#[derive(Arbitrary, Debug)]
struct Real {
    key: u8,
    pad_left: u8,
    pad_right: u8,
    flip: Option<(u16, u8)>,
    scheme: String,
}

fn check_credential(credential: &str) {
    let fixture = &*FIXTURE;
    if let Some((id, secret)) = api_key::parse(credential) {
        assert_eq!(
            format_key(id, secret),
            credential,
            "parse must split exactly"
        );
        assert!((1..=MAX_ID_LEN).contains(&id.len()), "id length: {id:?}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "id shape: {id:?}"
        );
        assert_eq!(secret.len(), SECRET_LEN, "secret length: {secret:?}");
    }
    if let Ok(record) = api_key::verify(&fixture.table, credential, now()) {
        assert!(
            fixture
                .keys
                .iter()
                .any(|(key, live)| *live && key == credential),
            "accepted a key that is not a live key of the table: {credential:?} as {}",
            record.id
        );
    }
}

/// First byte even: the rest is Authorization header values as a client
/// sent them, one per line. Odd: the rest describes a [`Real`] key (the
/// scheme last, so `\x01\0\0\0\0Bearer` is a real key as sent).
fuzz_target!(|data: &[u8]| {
    let fixture = &*FIXTURE;
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let mut headers = HeaderMap::new();
    let mut expected = None;
    if mode % 2 == 0 {
        for value in rest.split(|b| *b == b'\n') {
            if let Ok(v) = HeaderValue::from_bytes(value) {
                headers.append(AUTHORIZATION, v);
            }
            // The key parser also sees whatever text a header carried.
            check_credential(&String::from_utf8_lossy(value));
        }
    } else {
        let Ok(Real {
            key,
            pad_left,
            pad_right,
            flip,
            scheme,
        }) = Real::arbitrary_take_rest(Unstructured::new(rest))
        else {
            return;
        };
        let (real, live) = &fixture.keys[usize::from(key) % fixture.keys.len()];
        let mut presented = real.clone().into_bytes();
        if let Some((at, byte)) = flip {
            let at = usize::from(at) % presented.len();
            presented[at] = byte;
        }
        let Ok(presented) = String::from_utf8(presented) else {
            return;
        };
        let value = format!(
            "{scheme} {}{presented}{}",
            " ".repeat(usize::from(pad_left % 4)),
            " ".repeat(usize::from(pad_right % 4)),
        );
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.append(AUTHORIZATION, v);
            if scheme.eq_ignore_ascii_case("bearer") && presented == *real {
                expected = Some((real.as_str(), *live));
            }
        }
        check_credential(&presented);
    }
    match bearer(&headers) {
        Ok(credential) => {
            assert_eq!(headers.get_all(AUTHORIZATION).iter().count(), 1);
            let value = headers[AUTHORIZATION].as_bytes();
            assert!(
                value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer "),
                "not a Bearer header: {value:?}"
            );
            assert!(!credential.is_empty() && credential.len() <= 8192);
            assert_eq!(credential, credential.trim(), "credential not trimmed");
            if let Some((real, _)) = expected {
                assert_eq!(credential, real, "the real key was altered");
            }
            check_credential(credential);
            if let Some((real, live)) = expected {
                let verified = api_key::verify(&fixture.table, credential, now());
                assert_eq!(
                    verified.is_ok(),
                    live,
                    "real key {real:?}: {verified:?} (live: {live})"
                );
            }
        }
        Err(failure) => assert!(
            expected.is_none(),
            "a real key behind `Bearer` was refused: {failure:?}"
        ),
    }
});
