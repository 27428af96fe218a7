//! API keys of the engine: create, list, revoke, authenticate.

use crate::core::auth::*;
use std::sync::atomic::Ordering;

use crate::core::engine::Engine;
use crate::core::engine::meta::MetaKey;
use crate::core::model::Micros;
use crate::error::{Error, Result, echo};
use ring::hmac;

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
        crate::core::bounds::check_name("name", &name)?;
        let now = self.clock.now();
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
        // Stored before the map is locked: authentication reads the map on the executor.
        let _changing = self.key_changes.lock();
        self.put_meta(MetaKey::ApiKey { project, id: &id }, &key)?;
        self.api_keys.write().insert(id, key.clone());
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
        // Stored before the map is locked, as in `create_api_key`.
        let _changing = self.key_changes.lock();
        let mut revoked = self
            .api_keys
            .read()
            .get(id)
            .filter(|k| k.project == project)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("api key {id} not found", id = echo(id))))?;
        revoked.revoked = true;
        self.put_meta(MetaKey::ApiKey { project, id }, &revoked)?;
        self.api_keys.write().insert(id.to_owned(), revoked);
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
        if key.is_expired(self.clock.now()) {
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
        // Keys made or revoked on another node.
        self.refresh(None)?;
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
        if key.is_expired(self.clock.now()) {
            return Err(Error::Unauthenticated(format!("api key {id} has expired")));
        }
        Ok(Principal::Key { id: key.id.clone(), project: key.project.clone(), role: key.role })
    }
}
