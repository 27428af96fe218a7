//! API keys: per-project keys with one role, stored hashed, optionally expiring, revocable.
//!
//! A secret looks like `sxk_<id>_<64 hex chars>`. The id finds the stored key in O(1); the
//! stored key holds only a random salt and HMAC-SHA256(salt, secret), compared in constant
//! time. Secrets are 256 random bits, so a keyed hash is enough (argon2 is for low-entropy
//! passwords and would cost milliseconds per request). The server admin key
//! (`SEXTANT_BOOTSTRAP_KEY`) is not stored: see `BootstrapKey`.

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::core::model::Micros;
use crate::error::{Error, Result};

/// A project key's role (SPEC §10). ADMIN includes READ and INGEST.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Ingest,
    Read,
    Admin,
}

impl Role {
    /// Whether a key with this role may make a call that needs `needed`.
    pub fn allows(self, needed: Role) -> bool {
        self == Role::Admin || self == needed
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Ingest => "INGEST",
            Role::Read => "READ",
            Role::Admin => "ADMIN",
        }
    }
}

/// A stored key. `salt` and `hash` are hex; the secret itself is never stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub project: String,
    pub role: Role,
    pub name: String,
    pub created: Micros,
    pub expires: Option<Micros>,
    pub revoked: bool,
    pub(crate) salt: String,
    pub(crate) hash: String,
}

impl ApiKey {
    pub fn is_expired(&self, now: Micros) -> bool {
        self.expires.is_some_and(|t| t <= now)
    }
}

/// Who is calling, once the bearer key is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Auth is off (no bootstrap key configured): everything is allowed.
    Open,
    /// The bootstrap key: every project, every role, and the server-level calls.
    ServerAdmin,
    Key {
        id: String,
        project: String,
        role: Role,
    },
}

pub(crate) const PREFIX: &str = "sxk_";
/// Longest key id a request may name (ids are 16 hex digits).
pub const MAX_KEY_ID_CHARS: usize = 64;

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

pub(crate) fn random<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    SystemRandom::new().fill(&mut bytes).map_err(|_| Error::Internal("no system randomness".into()))?;
    Ok(bytes)
}

/// The server admin key, kept as a salted HMAC so comparisons take constant time.
pub struct BootstrapKey {
    key: hmac::Key,
    tag: hmac::Tag,
}

impl BootstrapKey {
    pub fn new(secret: &str) -> Result<Self> {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &random::<32>()?);
        let tag = hmac::sign(&key, secret.as_bytes());
        Ok(BootstrapKey { key, tag })
    }

    pub fn matches(&self, candidate: &str) -> bool {
        hmac::verify(&self.key, candidate.as_bytes(), self.tag.as_ref()).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        assert_eq!(unhex(&hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn roles_nest() {
        assert!(Role::Admin.allows(Role::Read) && Role::Admin.allows(Role::Ingest) && Role::Admin.allows(Role::Admin));
        assert!(Role::Read.allows(Role::Read) && !Role::Read.allows(Role::Ingest) && !Role::Read.allows(Role::Admin));
        assert!(Role::Ingest.allows(Role::Ingest) && !Role::Ingest.allows(Role::Read));
    }

    #[test]
    fn bootstrap_key_matches_only_itself() {
        let key = BootstrapKey::new("s3cret").unwrap();
        assert!(key.matches("s3cret"));
        assert!(!key.matches("s3cre") && !key.matches("s3cret ") && !key.matches(""));
    }
}
