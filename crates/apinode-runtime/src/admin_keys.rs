//! Admin API keys: all-powerful, stored as SHA-256 hashes in the node state, compared in
//! constant time. The secret is shown once, when created.

use crate::error::{Error, Result};
use crate::runtime::{Runtime, audit, now_millis};
use crate::state::AdminKeyRecord;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// An admin key as listed (never with its secret).
#[derive(Debug, Clone, PartialEq)]
pub struct AdminKeyInfo {
    pub id: String,
    pub label: Option<String>,
    pub description: Option<String>,
    pub created_by: Option<String>,
    /// Milliseconds since the epoch.
    pub created_on: i64,
    /// As given at creation; a number is an expiry time in milliseconds since the epoch.
    pub expiry: Option<Value>,
}

impl From<&AdminKeyRecord> for AdminKeyInfo {
    fn from(r: &AdminKeyRecord) -> Self {
        AdminKeyInfo {
            id: r.id.clone(),
            label: r.label.clone(),
            description: r.description.clone(),
            created_by: r.created_by.clone(),
            created_on: r.created_on,
            expiry: r.expiry.clone(),
        }
    }
}

/// The id of the key set by `APINODE_ADMIN_KEY`.
const ENV_KEY_ID: &str = "env";

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn new_secret() -> String {
    hex::encode(rand::random::<[u8; 24]>())
}

impl Runtime {
    /// Makes sure the node can be administered: the key from `APINODE_ADMIN_KEY` (if given)
    /// is registered, and if the node has no admin key at all one is generated. Returns the
    /// generated secret, to be shown once.
    pub fn ensure_admin_key(&self, from_env: Option<&str>) -> Result<Option<String>> {
        let mut state = self.lock_state();
        let mut next = state.clone();
        let mut generated = None;
        if let Some(secret) = from_env.filter(|s| !s.is_empty()) {
            let key_sha256 = hash(secret);
            next.admin_keys.retain(|k| k.id != ENV_KEY_ID);
            next.admin_keys.push(AdminKeyRecord {
                id: ENV_KEY_ID.into(),
                label: Some("APINODE_ADMIN_KEY".into()),
                description: Some("set by the APINODE_ADMIN_KEY environment variable".into()),
                created_by: None,
                created_on: now_millis(),
                expiry: None,
                key_sha256,
            });
        } else if next.admin_keys.is_empty() {
            let secret = new_secret();
            next.admin_keys.push(AdminKeyRecord {
                id: "initial".into(),
                label: Some("generated at first start".into()),
                description: None,
                created_by: None,
                created_on: now_millis(),
                expiry: None,
                key_sha256: hash(&secret),
            });
            generated = Some(secret);
        }
        let unchanged = next.admin_keys.len() == state.admin_keys.len()
            && next
                .admin_keys
                .iter()
                .zip(&state.admin_keys)
                .all(|(a, b)| a.id == b.id && a.key_sha256 == b.key_sha256);
        if !unchanged {
            self.save(&next)?;
            *state = next;
        }
        Ok(generated)
    }

    /// The id of the admin key with this secret, if it exists and has not expired.
    pub fn authenticate_admin(&self, secret: &str) -> Option<String> {
        let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let state = self.lock_state();
        let now = now_millis();
        let mut found = None;
        for key in &state.admin_keys {
            let mut stored = [0u8; 32];
            if hex::decode_to_slice(&key.key_sha256, &mut stored).is_err() {
                continue;
            }
            let expired = key
                .expiry
                .as_ref()
                .and_then(Value::as_i64)
                .is_some_and(|t| t <= now);
            if bool::from(stored.ct_eq(&presented)) && !expired {
                found = Some(key.id.clone());
            }
        }
        found
    }

    pub fn list_admin_keys(&self) -> Vec<AdminKeyInfo> {
        self.lock_state()
            .admin_keys
            .iter()
            .map(AdminKeyInfo::from)
            .collect()
    }

    /// Creates a key; returns it with its secret (shown only now).
    pub fn create_admin_key(
        &self,
        label: Option<String>,
        description: Option<String>,
        created_by: Option<String>,
        expiry: Option<Value>,
        actor: &str,
    ) -> Result<(AdminKeyInfo, String)> {
        let secret = new_secret();
        let record = AdminKeyRecord {
            id: format!("ak-{}", &hash(&secret)[..12]),
            label,
            description,
            created_by,
            created_on: now_millis(),
            expiry,
            key_sha256: hash(&secret),
        };
        let info = AdminKeyInfo::from(&record);
        let mut state = self.lock_state();
        let mut next = state.clone();
        next.admin_keys.push(record);
        self.save(&next)?;
        *state = next;
        drop(state);
        audit(actor, "create-admin-key", "", Some(&info.id));
        Ok((info, secret))
    }

    /// Deletes the key with this secret.
    pub fn delete_admin_key(&self, secret: &str, actor: &str) -> Result<()> {
        let key_sha256 = hash(secret);
        self.remove_admin_key(actor, |k| k.key_sha256 == key_sha256, "with this secret")
    }

    pub fn delete_admin_key_by_id(&self, id: &str, actor: &str) -> Result<()> {
        self.remove_admin_key(actor, |k| k.id == id, id)
    }

    fn remove_admin_key(
        &self,
        actor: &str,
        matches: impl Fn(&AdminKeyRecord) -> bool,
        what: &str,
    ) -> Result<()> {
        let mut state = self.lock_state();
        let Some(position) = state.admin_keys.iter().position(&matches) else {
            return Err(Error::not_found("admin key", what));
        };
        let mut next = state.clone();
        let removed = next.admin_keys.remove(position);
        self.save(&next)?;
        *state = next;
        drop(state);
        audit(actor, "delete-admin-key", "", Some(&removed.id));
        Ok(())
    }
}
