//! Access-token verifications per second, through the server's own
//! verifier (kid lookup, algorithm pinning, signature, iss / aud / exp /
//! nbf / iat), for each algorithm the keyset supports: `jwt_verify` checks
//! the signature every time (`verify_uncached`, a token seen for the first
//! time); `jwt_verify_remembered` is what a request with a token the server
//! verified before costs (`verify`: the signature is remembered, the claims
//! and the key's window are checked again). HS256 is not among them by design: a shared secret would have
//! to sit in every verifier, and an HMAC token can never be checked with a
//! published key (no algorithm confusion).

use chrono::{Duration, Utc};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use securechat_crds::files::keyset::{KeyState, SigningKey, SigningKeySet};
use securechat_crds::v1alpha1::SigningAlgorithm;
use securechat_server::credentials::jwt::{Claims, SigningMaterial, TokenPolicy};

fn rsa_pem() -> String {
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA key");
    key.to_pkcs8_pem(LineEnding::LF).expect("PEM").to_string()
}

fn bench(c: &mut Criterion) {
    let now = Utc::now();
    let policy = TokenPolicy {
        issuer: "https://localhost:8000".into(),
        audience: "securechat".into(),
        leeway_secs: 5,
    };
    let claims = Claims {
        iss: policy.issuer.clone(),
        aud: policy.audience.clone(),
        sub: "key:bench".into(),
        role: "Developer".into(),
        iat: now.timestamp(),
        nbf: now.timestamp(),
        exp: (now + Duration::hours(1)).timestamp(),
        jti: "bench".into(),
    };
    let mut cases = Vec::new();
    for alg in [
        SigningAlgorithm::EdDSA,
        SigningAlgorithm::ES256,
        SigningAlgorithm::RS256,
    ] {
        let (from, to) = (now - Duration::minutes(1), now + Duration::days(1));
        let key = match alg {
            SigningAlgorithm::RS256 => SigningKey {
                kid: "bench".into(),
                alg,
                state: KeyState::Active,
                not_before: from,
                not_after: to,
                private_key_pem: rsa_pem(),
            },
            _ => securechat_server::dev::new_signing_key("bench", alg, KeyState::Active, from, to)
                .expect("key"),
        };
        let material =
            SigningMaterial::from_keyset(&SigningKeySet { keys: vec![key] }).expect("keyset loads");
        let token = material.sign(&claims, now).expect("signs");
        material.verify(&token, &policy, now).expect("verifies");
        cases.push((format!("{alg:?}"), material, token));
    }
    let mut group = c.benchmark_group("jwt_verify");
    group.throughput(Throughput::Elements(1));
    for (alg, material, token) in &cases {
        group.bench_function(BenchmarkId::from_parameter(alg), |b| {
            b.iter(|| material.verify_uncached(token, &policy, now))
        });
    }
    group.finish();
    let mut group = c.benchmark_group("jwt_verify_remembered");
    group.throughput(Throughput::Elements(1));
    for (alg, material, token) in &cases {
        group.bench_function(BenchmarkId::from_parameter(alg), |b| {
            b.iter(|| material.verify(token, &policy, now))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
