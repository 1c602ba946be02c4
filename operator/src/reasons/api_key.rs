//! Reasons of a ChatApiKey's `Ready` condition and of its Events. A reason
//! is API (tests, alerts and `kubectl wait` match on it), so each is spelled
//! once, here, and the key controller only ever names the variant.

use super::progress::Progress;

/// Normal Event: the securechat.dev/rotate annotation got a new value and
/// the key's secret is rotating (same key id, the previous secret works
/// until the grace ends).
pub const ROTATE_REQUESTED: &str = "RotateRequested";

/// Why a ChatApiKey is or is not Ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyReason {
    /// Ready=True: the key works; its plaintext is in the consumer Secret.
    Active,
    /// Ready=True: a new secret was issued; the previous one works until
    /// the grace period ends.
    Rotating,
    /// Ready=False: the key exists but `spec.suspended` is true, so the
    /// server refuses it; resuming needs no new secret.
    Suspended,
    /// Ready=False: past its expiry; removed from the model's table.
    Expired,
    /// Ready=False: the plaintext or the table entry is being written.
    Minting,
    /// Ready=False: `spec.modelRef` names a SecureChatModel that does not
    /// exist.
    ModelNotFound,
    /// Ready=False: the model's `<model>-api-keys` table does not exist yet
    /// (or is not the model's own), so there is nowhere to put the hash.
    ModelNotReady,
    /// Ready=False: the key's namespace is not in the model's
    /// `auth.apiKeys.allowedNamespaces`. Either no key was minted, or (the
    /// message says which) a key was and has been revoked because the
    /// namespace was removed from the list.
    NamespaceNotAllowed,
    /// Ready=False (and a Warning Event): `spec.tier` is above the highest
    /// tier the model grants the key's namespace
    /// (`auth.apiKeys.maxTiers`, default Developer). Needs a user change:
    /// a lower `spec.tier`, or a higher `maxTiers` entry from the model's
    /// owner. No key is minted; one minted before the limit was lowered is
    /// revoked (its record leaves the table, its plaintext is deleted).
    TierNotAllowed,
    /// Ready=False (and a Warning Event): `spec.secretName` names a Secret
    /// this ChatApiKey did not create (someone else's, or the model's key
    /// table); the operator leaves it untouched and mints nothing.
    SecretConflict,
    /// Ready=False (and a Warning Event): `spec.credential` asks for a
    /// client certificate the model cannot honour: its `auth.mtls.mode` is
    /// Disabled (the server would never ask for it), it serves a
    /// certificate of its own (`tls.mode: ExistingSecret`, so the operator
    /// holds no CA to sign with), or it trusts another bundle
    /// (`auth.mtls.trustBundle`, which the operator's CA is not in).
    /// Nothing is issued.
    ClientCertificateUnavailable,
    /// Ready=False (and a Warning Event): another key in the model's table
    /// is bound to the SPIFFE ID this key's certificate would carry; two
    /// records for one identity would leave its tier to chance. Nothing is
    /// issued; choose another `clientCertificate.serviceAccountName`.
    IdentityConflict,
}

impl KeyReason {
    /// Every reason, for parsing a stored condition back.
    pub const ALL: [KeyReason; 12] = [
        KeyReason::Active,
        KeyReason::Rotating,
        KeyReason::Suspended,
        KeyReason::Expired,
        KeyReason::Minting,
        KeyReason::ModelNotFound,
        KeyReason::ModelNotReady,
        KeyReason::NamespaceNotAllowed,
        KeyReason::SecretConflict,
        KeyReason::TierNotAllowed,
        KeyReason::ClientCertificateUnavailable,
        KeyReason::IdentityConflict,
    ];

    /// The reason written as `text`, if it is one of ours.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// Where a key with this reason is headed (kstatus's Reconciling and
    /// Stalled, see `health`).
    pub fn progress(self) -> Progress {
        match self {
            // Working, or the state the spec asked for.
            Self::Active | Self::Rotating | Self::Suspended | Self::Expired => Progress::Settled,
            // The operator is writing it, or the model is making its table.
            Self::Minting | Self::ModelNotReady => Progress::Converging,
            // Only a change to the key, the model or the Secret helps.
            Self::ModelNotFound
            | Self::NamespaceNotAllowed
            | Self::SecretConflict
            | Self::TierNotAllowed
            | Self::ClientCertificateUnavailable
            | Self::IdentityConflict => Progress::Stalled,
        }
    }

    /// The reason as written into the condition and the Event.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "Active",
            Self::Rotating => "Rotating",
            Self::Suspended => "Suspended",
            Self::Expired => "Expired",
            Self::Minting => "Minting",
            Self::ModelNotFound => "ModelNotFound",
            Self::ModelNotReady => "ModelNotReady",
            Self::NamespaceNotAllowed => "NamespaceNotAllowed",
            Self::SecretConflict => "SecretConflict",
            Self::TierNotAllowed => "TierNotAllowed",
            Self::ClientCertificateUnavailable => "ClientCertificateUnavailable",
            Self::IdentityConflict => "IdentityConflict",
        }
    }

    /// Whether a key with this reason works (the condition's status).
    pub fn ready(self) -> bool {
        matches!(self, Self::Active | Self::Rotating)
    }

    /// Whether this is trouble someone must act on (a Warning Event), as
    /// opposed to a state the key passes through or was asked for.
    pub fn is_warning(self) -> bool {
        matches!(
            self,
            Self::SecretConflict
                | Self::TierNotAllowed
                | Self::ClientCertificateUnavailable
                | Self::IdentityConflict
        )
    }
}

impl std::fmt::Display for KeyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [KeyReason; 12] = KeyReason::ALL;

    /// Condition reasons must match `^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`
    /// (the API server refuses others) and be told apart.
    #[test]
    fn reasons_are_distinct_camel_case_words() {
        let mut seen = std::collections::BTreeSet::new();
        for reason in ALL {
            let s = reason.as_str();
            assert!(s.starts_with(|c: char| c.is_ascii_uppercase()), "{s}");
            assert!(s.chars().all(|c| c.is_ascii_alphanumeric()), "{s}");
            assert!(seen.insert(s), "{s} twice");
        }
    }

    #[test]
    fn every_reason_parses_back() {
        for reason in ALL {
            assert_eq!(KeyReason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(KeyReason::parse("Unheard"), None);
    }

    #[test]
    fn only_working_keys_are_ready() {
        let ready: Vec<_> = ALL.into_iter().filter(|r| r.ready()).collect();
        assert_eq!(ready, [KeyReason::Active, KeyReason::Rotating]);
    }
}
