//! Bearer JWTs: signed by another key under the server's kid, expired, not
//! yet valid, for another issuer or audience, missing claims, unsigned,
//! algorithm confusion, unknown or missing kid, tampered, truncated.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use securechat_test_support::https::{TestServer, chat_body};
use serde_json::Value;
use serde_json::json;

use crate::{Case, Forge, bearer, chat, unsigned};

pub async fn cases(s: &TestServer, forge: &Forge) -> Vec<Case> {
    // Another Ed25519 key claiming the server's kid.
    let foreign = securechat_server::dev::signing_keyset(Utc::now()).unwrap();
    let impostor = Forge {
        pem: foreign.keys[0].private_key_pem.clone(),
        ..forge.clone()
    };
    let now = Utc::now().timestamp();
    let good_claims = forge.claims();
    // alg confusion: HS256 keyed with the public key as published in JWKS.
    let jwks: Value = s
        .client
        .get(s.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let public_x = jwks["keys"][0]["x"].as_str().unwrap().to_string();
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(forge.kid.clone());
    let confused = jsonwebtoken::encode(
        &hs,
        &good_claims,
        &EncodingKey::from_secret(public_x.as_bytes()),
    )
    .unwrap();
    let mut tampered = forge.sign(&good_claims);
    {
        let parts: Vec<&str> = tampered.split('.').collect();
        let mut claims = good_claims.clone();
        claims["sub"] = json!("key:someoneelse");
        tampered = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            parts[2]
        );
    }
    let mut no_kid = Header::new(Algorithm::EdDSA);
    no_kid.kid = None;
    let ok = chat_body("hello");
    vec![
        chat(
            "forged signature (foreign key, same kid)",
            bearer(&impostor.sign(&good_claims)),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "expired token",
            bearer(&forge.with(|c| {
                c["exp"] = json!(now - 60);
                c["iat"] = json!(now - 700);
                c["nbf"] = json!(now - 700);
            })),
            ok.clone(),
            401,
            Some("token_expired"),
        ),
        chat(
            "token not yet valid",
            bearer(&forge.with(|c| c["nbf"] = json!(now + 60))),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "token issued in the future",
            bearer(&forge.with(|c| c["iat"] = json!(now + 60))),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "wrong issuer",
            bearer(&forge.with(|c| c["iss"] = json!("https://evil.example"))),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "wrong audience",
            bearer(&forge.with(|c| c["aud"] = json!("other"))),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "missing sub",
            bearer(&forge.with(|c| {
                c.as_object_mut().unwrap().remove("sub");
            })),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "missing exp",
            bearer(&forge.with(|c| {
                c.as_object_mut().unwrap().remove("exp");
            })),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "unknown role",
            bearer(&forge.with(|c| c["role"] = json!("root"))),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "token for a key not in the table",
            bearer(&forge.with(|c| c["sub"] = json!("key:nosuchkey"))),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "alg none",
            bearer(&unsigned(
                json!({"alg": "none", "kid": forge.kid}),
                &good_claims,
            )),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "alg confusion HS256 with public key",
            bearer(&confused),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "header alg differs from key alg",
            bearer(&{
                let mut h = Header::new(Algorithm::ES256);
                h.kid = Some(forge.kid.clone());
                unsigned(serde_json::to_value(&h).unwrap(), &good_claims) + "sig"
            }),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "unknown kid",
            bearer(&{
                let mut h = Header::new(Algorithm::EdDSA);
                h.kid = Some("nokid".into());
                forge.sign_with(h, &good_claims)
            }),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "no kid",
            bearer(&forge.sign_with(no_kid, &good_claims)),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "tampered payload",
            bearer(&tampered),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "two-part token",
            bearer("eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0"),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
    ]
}
