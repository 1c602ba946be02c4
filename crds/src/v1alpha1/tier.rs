//! Permission tiers (ReadOnly < Developer < Admin), named by both resources
//! and by the API-key table, and how the seeds' role names map onto them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A permission tier, as in the key-rotation seed: ReadOnly < Developer <
/// Admin. The OAuth seed's role names map onto these: `guest` -> ReadOnly,
/// `user` -> Developer, `admin` -> Admin.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    JsonSchema,
)]
pub enum Tier {
    /// Chat only, with a low quota.
    #[default]
    ReadOnly,
    /// Chat, model listing and the caller's own usage.
    Developer,
    /// Everything, including the admin endpoints; no hard cap.
    Admin,
}

impl Tier {
    /// Every tier, least privileged first.
    pub const ALL: [Tier; 3] = [Tier::ReadOnly, Tier::Developer, Tier::Admin];

    /// The name as the resources write it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Tier::ReadOnly => "ReadOnly",
            Tier::Developer => "Developer",
            Tier::Admin => "Admin",
        }
    }

    /// Maps a role name as issuers write it (either naming scheme, any case)
    /// onto a tier.
    pub fn from_role_name(name: &str) -> Option<Tier> {
        match name.to_ascii_lowercase().as_str() {
            "readonly" | "read-only" | "read_only" | "guest" => Some(Tier::ReadOnly),
            "developer" | "user" => Some(Tier::Developer),
            "admin" | "administrator" => Some(Tier::Admin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Tier {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::from_role_name(s)
            .ok_or_else(|| format!("unknown tier {s:?}: expected ReadOnly, Developer or Admin"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_role_names_map_onto_tiers() {
        assert_eq!(Tier::from_role_name("guest"), Some(Tier::ReadOnly));
        assert_eq!(Tier::from_role_name("user"), Some(Tier::Developer));
        assert_eq!(Tier::from_role_name("ADMIN"), Some(Tier::Admin));
        assert_eq!(Tier::from_role_name("ReadOnly"), Some(Tier::ReadOnly));
        assert_eq!(Tier::from_role_name("root"), None);
    }

    #[test]
    fn tiers_are_ordered_by_privilege() {
        assert!(Tier::ReadOnly < Tier::Developer && Tier::Developer < Tier::Admin);
        assert_eq!("developer".parse::<Tier>(), Ok(Tier::Developer));
        assert!("nobody".parse::<Tier>().is_err());
    }
}
