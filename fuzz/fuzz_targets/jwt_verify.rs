//! JWT header / claims parsing and verification
//! (server/src/credentials/jwt.rs `SigningMaterial::verify`).
//!
//! Tokens are either raw text (the seeds: foreign and `alg: none` tokens)
//! or built from fuzzed header and claims JSON
//! and signed here with a key of the keyset, a key outside it, or fuzzed
//! signature bytes, then perhaps altered by one byte.
//!
//! Properties:
//! - never a panic, whatever the token;
//! - a token is accepted only if it was signed here, unaltered, by a key of
//!   the keyset inside its window, under that key's own kid and algorithm,
//!   and its claims satisfy the policy (issuer, audience, exp / nbf / iat
//!   with the leeway) with a role that names the returned tier;
//! - a well-formed token signed by a live keyset key is accepted, so the
//!   property above is not vacuous.
#![no_main]

use std::sync::LazyLock;

use arbitrary::{Arbitrary, Unstructured};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use securechat_crds::files::keyset::{KeyState, SigningKey, SigningKeySet};
use securechat_crds::v1alpha1::{SigningAlgorithm, Tier};
use securechat_server::credentials::jwt::{SigningMaterial, TokenPolicy};
use serde_json::{Map, Value, json};

const LEEWAY: u64 = 5;
/// Slack for the wall clock moving between building and verifying (the
/// token library reads the system clock itself).
const SLACK: i64 = 2;
/// The lifetime of built tokens before the fuzzed change.
const LIFETIME: i64 = 600;

/// A throwaway RSA key generated for the server's tests only.
const RSA_PEM: &str = include_str!("../../server/src/credentials/testdata/rs256-test-only.pem");

struct Signer {
    kid: &'static str,
    alg: Algorithm,
    key: EncodingKey,
    /// In the keyset and inside its window: its signatures verify.
    trusted: bool,
}

struct Fixture {
    material: SigningMaterial,
    signers: Vec<Signer>,
    policy: TokenPolicy,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let now = Utc::now();
    let year = Duration::days(365);
    let new = |kid: &str, alg, state, from, to| -> SigningKey {
        match alg {
            SigningAlgorithm::RS256 => SigningKey {
                kid: kid.into(),
                alg,
                state,
                not_before: from,
                not_after: to,
                private_key_pem: RSA_PEM.into(),
            },
            _ => securechat_server::dev::new_signing_key(kid, alg, state, from, to)
                .expect("a new key"),
        }
    };
    let keyset = vec![
        new(
            "active",
            SigningAlgorithm::EdDSA,
            KeyState::Active,
            now - year,
            now + year,
        ),
        new(
            "next",
            SigningAlgorithm::ES256,
            KeyState::Next,
            now - year,
            now + year,
        ),
        new(
            "rsa",
            SigningAlgorithm::RS256,
            KeyState::Previous,
            now - year,
            now + year,
        ),
        // Still in the keyset but past its window.
        new(
            "ended",
            SigningAlgorithm::EdDSA,
            KeyState::Previous,
            now - 2 * year,
            now - year,
        ),
    ];
    // Outside the keyset: an impostor reusing a trusted kid and algorithm.
    let impostor = new(
        "active",
        SigningAlgorithm::EdDSA,
        KeyState::Active,
        now - year,
        now + year,
    );
    let encoding = |k: &SigningKey| {
        let pem = k.private_key_pem.as_bytes();
        match k.alg {
            SigningAlgorithm::EdDSA => EncodingKey::from_ed_pem(pem),
            SigningAlgorithm::ES256 => EncodingKey::from_ec_pem(pem),
            SigningAlgorithm::RS256 => EncodingKey::from_rsa_pem(pem),
        }
        .expect("an encoding key")
    };
    let alg = |a| match a {
        SigningAlgorithm::EdDSA => Algorithm::EdDSA,
        SigningAlgorithm::ES256 => Algorithm::ES256,
        SigningAlgorithm::RS256 => Algorithm::RS256,
    };
    let kids = ["active", "next", "rsa", "ended"];
    let mut signers: Vec<Signer> = keyset
        .iter()
        .zip(kids)
        .map(|(k, kid)| Signer {
            kid,
            alg: alg(k.alg),
            key: encoding(k),
            trusted: kid != "ended",
        })
        .collect();
    signers.push(Signer {
        kid: "active",
        alg: Algorithm::EdDSA,
        key: encoding(&impostor),
        trusted: false,
    });
    // HMAC keyed with a public value: the classic algorithm confusion.
    signers.push(Signer {
        kid: "rsa",
        alg: Algorithm::HS256,
        key: EncodingKey::from_secret(b"rsa"),
        trusted: false,
    });
    Fixture {
        material: SigningMaterial::from_keyset(&SigningKeySet { keys: keyset })
            .expect("the fixture keyset loads"),
        signers,
        policy: TokenPolicy {
            issuer: "https://securechat.example".into(),
            audience: "securechat".into(),
            leeway_secs: LEEWAY,
        },
    }
});

const ALG_NAMES: [&str; 9] = [
    "none", "HS256", "RS256", "ES256", "EdDSA", "ES384", "PS256", "RS512", "eddsa",
];

#[derive(Arbitrary, Debug)]
struct Built {
    header: HeaderIn,
    claims: ClaimsIn,
    signer: u8,
    /// Fuzzed signature bytes instead of a real signature.
    forged_signature: Option<Vec<u8>>,
    tamper: Option<(u16, u8)>,
}

#[derive(Arbitrary, Debug)]
enum HeaderIn {
    Fields {
        alg: Choice<u8>,
        kid: Kid,
        typ: Option<String>,
    },
    Json(String),
}

#[derive(Arbitrary, Debug)]
enum ClaimsIn {
    Fields(Box<ClaimFields>),
    Json(String),
}

#[derive(Arbitrary, Debug)]
struct ClaimFields {
    iss: Choice<()>,
    aud: Choice<()>,
    aud_as_array: bool,
    sub: String,
    role: Choice<u8>,
    /// Seconds from now.
    iat: i32,
    nbf: i32,
    /// Seconds from now past a 10-minute lifetime.
    exp: i32,
    jti: String,
    /// Bit i drops the i-th claim.
    omit: u8,
}

/// The signer's kid, another signer's, any text, or none.
#[derive(Arbitrary, Debug)]
enum Kid {
    Signer,
    OtherSigner(u8),
    Text(String),
    Absent,
}

/// The expected value, a picked known value, or anything.
#[derive(Arbitrary, Debug)]
enum Choice<T> {
    Expected,
    Known(T),
    Other(String),
}

const ROLES: [&str; 6] = ["user", "Admin", "readonly", "guest", "root", ""];

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token built by [`build`].
struct Token {
    text: String,
    signer: usize,
    /// Changed after signing.
    altered: bool,
    /// Well-formed, valid and signed by a trusted key: must verify.
    expect_ok: bool,
}

/// Builds the token (`None` when the alteration broke UTF-8).
fn build(input: &Built, fixture: &Fixture, now: i64) -> Option<Token> {
    let signer_index = usize::from(input.signer) % fixture.signers.len();
    let signer = &fixture.signers[signer_index];
    let mut expect_ok = signer.trusted && input.forged_signature.is_none();
    let header = match &input.header {
        HeaderIn::Json(text) => {
            expect_ok = false;
            text.clone()
        }
        HeaderIn::Fields { alg, kid, typ } => {
            let mut h = Map::new();
            let alg = match alg {
                Choice::Expected => format!("{:?}", signer.alg),
                Choice::Known(i) => ALG_NAMES[usize::from(*i) % ALG_NAMES.len()].into(),
                Choice::Other(s) => s.clone(),
            };
            expect_ok &= alg == format!("{:?}", signer.alg);
            h.insert("alg".into(), json!(alg));
            match kid {
                Kid::Signer => {
                    h.insert("kid".into(), json!(signer.kid));
                }
                Kid::OtherSigner(i) => {
                    let other = &fixture.signers[usize::from(*i) % fixture.signers.len()];
                    expect_ok &= other.kid == signer.kid;
                    h.insert("kid".into(), json!(other.kid));
                }
                Kid::Text(s) => {
                    expect_ok &= s == signer.kid;
                    h.insert("kid".into(), json!(s));
                }
                Kid::Absent => expect_ok = false,
            }
            if let Some(typ) = typ {
                h.insert("typ".into(), json!(typ));
            }
            Value::Object(h).to_string()
        }
    };
    let claims = match &input.claims {
        ClaimsIn::Json(text) => {
            expect_ok = false;
            text.clone()
        }
        ClaimsIn::Fields(f) => {
            let text = |c: &Choice<()>, expected: &str| match c {
                Choice::Expected | Choice::Known(()) => expected.to_string(),
                Choice::Other(s) => s.clone(),
            };
            let iss = text(&f.iss, &fixture.policy.issuer);
            let aud = text(&f.aud, &fixture.policy.audience);
            let role = match &f.role {
                Choice::Expected => "user".to_string(),
                Choice::Known(i) => ROLES[usize::from(*i) % ROLES.len()].to_string(),
                Choice::Other(s) => s.clone(),
            };
            expect_ok &= iss == fixture.policy.issuer
                && aud == fixture.policy.audience
                && !f.aud_as_array
                && Tier::from_role_name(&role).is_some()
                && f.omit == 0
                && i64::from(f.iat) <= 0
                && i64::from(f.nbf) <= 0
                && LIFETIME + i64::from(f.exp) > SLACK;
            let aud = if f.aud_as_array {
                json!([aud])
            } else {
                json!(aud)
            };
            let fields = [
                ("iss", json!(iss)),
                ("aud", aud),
                ("sub", json!(f.sub)),
                ("role", json!(role)),
                ("iat", json!(now + i64::from(f.iat))),
                ("nbf", json!(now + i64::from(f.nbf))),
                ("exp", json!(now + LIFETIME + i64::from(f.exp))),
                ("jti", json!(f.jti)),
            ];
            let map: Map<String, Value> = fields
                .into_iter()
                .enumerate()
                .filter(|(i, _)| f.omit & (1 << i) == 0)
                .map(|(_, (k, v))| (k.to_string(), v))
                .collect();
            Value::Object(map).to_string()
        }
    };
    let signing_input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let signature = match &input.forged_signature {
        Some(bytes) => b64(bytes),
        None => jsonwebtoken::crypto::sign(signing_input.as_bytes(), &signer.key, signer.alg)
            .expect("signing works"),
    };
    let mut token = format!("{signing_input}.{signature}").into_bytes();
    let mut altered = false;
    if let Some((at, byte)) = input.tamper {
        let at = usize::from(at) % token.len();
        altered = token[at] != byte;
        token[at] = byte;
    }
    Some(Token {
        text: String::from_utf8(token).ok()?,
        signer: signer_index,
        altered,
        expect_ok: expect_ok && !altered,
    })
}

/// First byte even: the rest is a raw token. Odd: the rest describes a
/// token to build (all zero bytes build a valid one).
fuzz_target!(|data: &[u8]| {
    let fixture = &*FIXTURE;
    let now: DateTime<Utc> = Utc::now();
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let built_input;
    let (token, built) = if mode % 2 == 0 {
        (String::from_utf8_lossy(rest).into_owned(), None)
    } else {
        let Ok(input) = Built::arbitrary_take_rest(Unstructured::new(rest)) else {
            return;
        };
        built_input = input;
        match build(&built_input, fixture, now.timestamp()) {
            Some(t) => (t.text.clone(), Some((&built_input, t))),
            None => return,
        }
    };
    let verified = fixture.material.verify(&token, &fixture.policy, now);
    if let Some((_, t)) = &built
        && t.expect_ok
    {
        assert!(
            verified.is_ok(),
            "a valid token from {} was refused: {verified:?}\n{token}",
            fixture.signers[t.signer].kid
        );
    }
    let Ok((claims, tier)) = verified else {
        return;
    };
    let Some((
        built,
        Token {
            signer, altered, ..
        },
    )) = built
    else {
        panic!("accepted a token nobody signed: {token}");
    };
    let signer = &fixture.signers[signer];
    assert!(
        signer.trusted,
        "accepted a token signed by an untrusted key"
    );
    assert!(
        built.forged_signature.is_none(),
        "accepted a forged signature"
    );
    let header = jsonwebtoken::decode_header(&token).expect("an accepted header parses");
    assert_eq!(
        header.kid.as_deref(),
        Some(signer.kid),
        "kid of another key"
    );
    assert_eq!(header.alg, signer.alg, "algorithm of another key");
    assert!(!altered, "accepted a token altered after signing: {token}");
    let (policy, t) = (&fixture.policy, now.timestamp());
    let leeway = LEEWAY as i64 + SLACK;
    assert_eq!(claims.iss, policy.issuer);
    assert_eq!(claims.aud, policy.audience);
    assert!(claims.exp >= t - leeway, "expired: {claims:?}");
    assert!(claims.nbf <= t + leeway, "not yet valid: {claims:?}");
    assert!(claims.iat <= t + leeway, "issued in the future: {claims:?}");
    assert_eq!(Tier::from_role_name(&claims.role), Some(tier));
});
