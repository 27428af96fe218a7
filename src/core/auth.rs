//! API keys: per-project keys with one role, stored hashed, optionally expiring, revocable.
//!
//! A secret looks like `sxk_<id>_<64 hex chars>`. The id finds the stored key in O(1); the
//! stored key holds only a random salt and HMAC-SHA256(salt, secret), compared in constant
//! time. Secrets are 256 random bits, so a keyed hash is enough (argon2 is for low-entropy
//! passwords and would cost milliseconds per request). The server admin key
//! (`SEXTANT_BOOTSTRAP_KEY`) is not stored: see `BootstrapKey`.

use std::sync::atomic::Ordering;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::engine::Engine;
use super::model::{Micros, now_micros};
use crate::error::{Error, Result, echo};

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
    salt: String,
    hash: String,
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

const PREFIX: &str = "sxk_";
/// Longest key id a request may name (ids are 16 hex digits).
pub const MAX_KEY_ID_CHARS: usize = 64;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    SystemRandom::new().fill(&mut bytes).map_err(|_| Error::Internal("no system randomness".into()))?;
    Ok(bytes)
}

fn meta_key(project: &str, id: &str) -> String {
    format!("api_key/{project}/{id}")
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

impl Engine {
    /// Creates a key for an existing project; returns it with its secret (shown once).
    pub fn create_api_key(
        &self,
        project: &str,
        role: Role,
        name: String,
        expires: Option<Micros>,
    ) -> Result<(ApiKey, String)> {
        self.project(project)?;
        super::bounds::check_name("name", &name)?;
        let now = now_micros();
        if expires.is_some_and(|t| t <= now) {
            return Err(Error::invalid("expire_time", "must be in the future"));
        }
        let id = hex(&random::<8>()?);
        let secret = format!("{PREFIX}{id}_{}", hex(&random::<32>()?));
        let salt = random::<16>()?;
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &salt), secret.as_bytes());
        let key = ApiKey {
            id: id.clone(),
            project: project.to_owned(),
            role,
            name,
            created: now,
            expires,
            revoked: false,
            salt: hex(&salt),
            hash: hex(tag.as_ref()),
        };
        let mut keys = self.api_keys.write();
        self.put_meta_json(&meta_key(project, &id), &key)?;
        keys.insert(id, key.clone());
        tracing::info!(project = %project, key = %key.id, role = key.role.name(), "api key created");
        Ok((key, secret))
    }

    /// The project's keys (revoked ones included, flagged), by id.
    pub fn list_api_keys(&self, project: &str) -> Result<Vec<ApiKey>> {
        self.project(project)?;
        Ok(self.api_keys.read().values().filter(|k| k.project == project).cloned().collect())
    }

    /// Revokes a key; the next request with it is UNAUTHENTICATED.
    pub fn revoke_api_key(&self, project: &str, id: &str) -> Result<()> {
        self.project(project)?;
        // Ids are 16 hex digits; anything much longer is not one.
        if id.len() > MAX_KEY_ID_CHARS {
            return Err(Error::invalid("key_id", format!("{} characters, at most {MAX_KEY_ID_CHARS}", id.len())));
        }
        let mut keys = self.api_keys.write();
        let key = keys
            .get_mut(id)
            .filter(|k| k.project == project)
            .ok_or_else(|| Error::NotFound(format!("api key {id} not found", id = echo(id))))?;
        let mut revoked = key.clone();
        revoked.revoked = true;
        self.put_meta_json(&meta_key(project, id), &revoked)?;
        *key = revoked;
        self.api_key_generation.fetch_add(1, Ordering::SeqCst);
        tracing::info!(project = %project, key = %id, "api key revoked");
        Ok(())
    }

    /// Counts revocations; a stream re-checks its key when this moved since its last look.
    pub fn api_key_generation(&self) -> u64 {
        self.api_key_generation.load(Ordering::SeqCst)
    }

    /// Whether the key `id` still works (not revoked, not expired, not deleted): the check an
    /// open stream repeats. Returns the key's expiry.
    pub fn recheck_api_key(&self, id: &str) -> Result<Option<Micros>> {
        let keys = self.api_keys.read();
        let key = keys.get(id).ok_or_else(|| Error::Unauthenticated("unknown api key".into()))?;
        if key.revoked {
            return Err(Error::Unauthenticated(format!("api key {id} was revoked")));
        }
        if key.is_expired(now_micros()) {
            return Err(Error::Unauthenticated(format!("api key {id} has expired")));
        }
        Ok(key.expires)
    }

    /// Checks a project key's secret. Unknown, malformed, revoked and expired keys are all
    /// UNAUTHENTICATED; the message says which, but never echoes the secret.
    pub fn authenticate(&self, secret: &str) -> Result<Principal> {
        let unknown = || Error::Unauthenticated("unknown api key".into());
        let id = secret.strip_prefix(PREFIX).and_then(|rest| rest.split_once('_')).map(|(id, _)| id);
        let Some(id) = id else {
            return Err(unknown());
        };
        let keys = self.api_keys.read();
        let key = keys.get(id).ok_or_else(unknown)?;
        let (Some(salt), Some(hash)) = (unhex(&key.salt), unhex(&key.hash)) else {
            return Err(Error::Storage(format!("api key {id} is corrupt")));
        };
        if hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, &salt), secret.as_bytes(), &hash).is_err() {
            return Err(unknown());
        }
        if key.revoked {
            return Err(Error::Unauthenticated(format!("api key {id} was revoked")));
        }
        if key.is_expired(now_micros()) {
            return Err(Error::Unauthenticated(format!("api key {id} has expired")));
        }
        Ok(Principal::Key { id: key.id.clone(), project: key.project.clone(), role: key.role })
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
