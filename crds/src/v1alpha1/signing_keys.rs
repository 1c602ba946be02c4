//! `spec.signingKeys`: the keys that sign the server's access tokens and
//! their rotation.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cel;
use crate::Duration;

/// Shortest rotation period: each rotation writes the keyset Secret, and
/// every pod reloads it.
const MIN_ROTATION_PERIOD: Duration = Duration::from_secs(5 * 60);
/// Longest rotation period, and longest grace period: one year.
const MAX_ROTATION_PERIOD: Duration = Duration::from_secs(8760 * 3600);

/// Algorithm of the token-signing keys.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum SigningAlgorithm {
    /// Ed25519 signatures (default): small, fast, no parameter choices.
    #[default]
    EdDSA,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// RSA PKCS#1 v1.5 with SHA-256 (3072-bit keys), for old verifiers.
    RS256,
}

/// Token-signing keys and their rotation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": cel::when_durations_convert(
        &["self.gracePeriod", "self.rotationPeriod"],
        "duration(self.gracePeriod) < duration(self.rotationPeriod)"),
     "message": "signingKeys.gracePeriod: must be shorter than signingKeys.rotationPeriod"}
]))]
pub struct SigningKeysSpec {
    /// EdDSA (default), ES256 or RS256.
    #[serde(default)]
    pub algorithm: SigningAlgorithm,

    /// How long a key signs before the next one takes over (the seed's
    /// 24h): at least 5m and at most 8760h.
    #[serde(default = "default_rotation_period")]
    #[schemars(extend("x-kubernetes-validations" = [
        cel::duration_bounds("signingKeys.rotationPeriod", Some(MIN_ROTATION_PERIOD), MAX_ROTATION_PERIOD)
    ]))]
    pub rotation_period: Duration,

    /// How long the previous key still verifies after a rotation, so tokens
    /// it signed keep working. Must be at least the token lifetime to never
    /// fail a valid token: admission refuses a grace shorter than
    /// auth.tokenTTL. Shorter than rotationPeriod.
    #[serde(default = "default_grace_period")]
    #[schemars(extend("x-kubernetes-validations" = [
        cel::duration_bounds("signingKeys.gracePeriod", None, MAX_ROTATION_PERIOD)
    ]))]
    pub grace_period: Duration,
}

impl Default for SigningKeysSpec {
    fn default() -> Self {
        Self {
            algorithm: SigningAlgorithm::default(),
            rotation_period: default_rotation_period(),
            grace_period: default_grace_period(),
        }
    }
}

fn default_rotation_period() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_grace_period() -> Duration {
    Duration::from_secs(3600)
}
