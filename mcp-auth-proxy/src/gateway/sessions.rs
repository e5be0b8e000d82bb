//! Which principal owns each upstream MCP session: a session id is a handle on the
//! upstream's state for one user, and a caller who learns another user's id must not
//! act inside it. Owners live in the gateway's store (replicas agree), with a local
//! cache in front so the hot path reads the store once per session and replica.

use std::sync::Arc;
use std::time::Duration;

use tower_mcp_auth::Principal;
use tower_mcp_auth::error::StoreError;
use tower_mcp_auth::store::SharedRecords;

/// How long an owner record lives in the store after the session's last renewal.
const RECORD_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a replica trusts what it read (and renews the record at most this often).
const LOCAL_TTL: Duration = Duration::from_secs(3600);

/// A principal as stored: a digest of tenant and subject (the names stay out of it).
fn owner_id(principal: &Principal) -> [u8; 32] {
    crate::crypto::sha256_fields([
        principal.tenant().as_bytes(),
        principal.subject().as_bytes(),
    ])
}

/// Whether a request's session may be used by its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionUse {
    /// The caller created it.
    Owner,
    /// Another principal created it, or the gateway never saw it created: answered as
    /// an unknown session (404), as the upstream would for an id it does not know.
    Unknown,
}

/// The owners of upstream sessions, by upstream and session id.
#[derive(Clone)]
pub(crate) struct SessionOwners {
    records: Arc<dyn SharedRecords>,
    local: moka::sync::Cache<String, [u8; 32]>,
}

impl SessionOwners {
    pub(crate) fn new(records: Arc<dyn SharedRecords>) -> Self {
        Self {
            records,
            local: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(LOCAL_TTL)
                .build(),
        }
    }

    /// The record's name: the session id hashed (it is a bearer-like handle; the store
    /// need not hold it in the clear).
    fn name(upstream: &str, session: &str) -> String {
        let digest = crate::crypto::sha256_fields([upstream.as_bytes(), session.as_bytes()]);
        format!("mcp-session/{}", crate::crypto::hex(&digest))
    }

    /// Records `principal` as the owner of a session the upstream just created. An id
    /// already owned by someone else keeps its owner (and the caller gets 404s).
    pub(crate) async fn record(
        &self,
        upstream: &str,
        session: &str,
        principal: &Principal,
    ) -> Result<(), StoreError> {
        let name = Self::name(upstream, session);
        let owner = owner_id(principal);
        let set = self
            .records
            .compare_and_set_record(&name, None, &owner, RECORD_TTL)
            .await?;
        if set {
            self.local.insert(name, owner);
        } else {
            tracing::warn!(
                upstream,
                "the upstream issued a session id that is already owned"
            );
        }
        Ok(())
    }

    /// Whether `principal` may use `session`.
    pub(crate) async fn check(
        &self,
        upstream: &str,
        session: &str,
        principal: &Principal,
    ) -> Result<SessionUse, StoreError> {
        let name = Self::name(upstream, session);
        let owner = match self.local.get(&name) {
            Some(owner) => owner,
            None => {
                let Some(stored) = self.records.get_record(&name).await? else {
                    return Ok(SessionUse::Unknown);
                };
                let Ok(owner) = <[u8; 32]>::try_from(stored.as_slice()) else {
                    return Ok(SessionUse::Unknown);
                };
                // Renew: a session in use stays bound for another day.
                self.records
                    .compare_and_set_record(&name, Some(&stored), &stored, RECORD_TTL)
                    .await?;
                self.local.insert(name, owner);
                owner
            }
        };
        Ok(if owner == owner_id(principal) {
            SessionUse::Owner
        } else {
            SessionUse::Unknown
        })
    }

    /// Forgets a session the upstream ended (DELETE).
    pub(crate) fn forget(&self, upstream: &str, session: &str) {
        self.local.invalidate(&Self::name(upstream, session));
    }
}
