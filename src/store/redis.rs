//! The distributed store: credentials and redemption leases in Redis, for replicas.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use super::sealing::{self, SealingKeys};
use super::{BoxFuture, CredentialStore, Lease, LeaseOutcome, Swap};
use crate::fault::StoreError;
use crate::key::AuthKey;
use crate::token::{Generation, Secret, TokenSet};

mod credential_store;
mod records;
mod scripts;

use scripts::*;

/// A [`CredentialStore`] in Redis (redis-rs on tokio, a reconnecting connection
/// manager): for replicas on several machines. Compare-and-swap, the redemption lease
/// and its fence are server-side scripts, one round trip each; generations and fences
/// come from Redis counters, so they grow across every replica.
///
/// When Redis is unreachable, calls fail fast with a [`StoreError`] (connection and
/// response timeouts, 2 s by default) and work again once it is back; nothing in the
/// process is dropped.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tower_mcp_auth::store::RedisStore;
/// use tower_mcp_auth::RefreshCoordinator;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::builder("redis://redis.internal:6379/0")
///     .prefix("chat-app:")
///     .credential_ttl(Duration::from_secs(30 * 24 * 3600))
///     .build()?;
/// let coordinator = RefreshCoordinator::new(Arc::new(store));
/// # drop(coordinator);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    prefix: Arc<str>,
    /// The epoch this process knows, and when it last found it lost.
    epoch: Arc<std::sync::Mutex<EpochSeen>>,
    /// The highest generation or fence this process has seen: after a loss the
    /// counters restart above it.
    highest: Arc<std::sync::atomic::AtomicU64>,
    credential_ttl: Option<Duration>,
    scripts: Arc<Scripts>,
    sealing: Option<SealingKeys>,
}

struct Scripts {
    cas: Script,
    fenced_cas: Script,
    acquire: Script,
    release: Script,
    renew: Script,
    epoch: Script,
    delete: Script,
    record_cas: Script,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("credential_ttl", &self.credential_ttl)
            .field("sealing", &self.sealing)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RedisStore`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    credential_ttl: Option<Duration>,
    timeout: Duration,
    sealing: Option<SealingKeys>,
}

impl RedisStoreBuilder {
    /// Seals tokens and records with `keys` (AES-256-GCM) before they reach Redis.
    /// Without keys, a warning is logged at build.
    pub fn sealing(mut self, keys: SealingKeys) -> Self {
        self.sealing = Some(keys);
        self
    }

    /// Prefixes every key (default `tower-mcp-auth:`), so apps can share a Redis.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Expires credentials this long after their last write (default: never; the
    /// refresh token's own lifetime is a good value).
    pub fn credential_ttl(mut self, ttl: Duration) -> Self {
        self.credential_ttl = Some(crate::limits::clamp(ttl));
        self
    }

    /// The connection and response timeout of every call (default 2 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Builds the store. Connects lazily: an unreachable Redis fails the first call,
    /// not the build.
    ///
    /// # Errors
    ///
    /// [`StoreError`] for a URL that is not a Redis URL.
    pub fn build(self) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(self.url.as_str()).map_err(StoreError::new)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connection =
            ConnectionManager::new_lazy_with_config(client, config).map_err(StoreError::new)?;
        if self.sealing.is_none() {
            sealing::warn_unsealed("RedisStore");
        }
        Ok(RedisStore {
            sealing: self.sealing,
            connection,
            prefix: Arc::from(self.prefix),
            credential_ttl: self.credential_ttl,
            epoch: Arc::default(),
            highest: Arc::default(),
            scripts: Arc::new(Scripts {
                cas: Script::new(CAS),
                fenced_cas: Script::new(FENCED_CAS),
                acquire: Script::new(ACQUIRE),
                release: Script::new(RELEASE),
                renew: Script::new(RENEW),
                epoch: Script::new(EPOCH),
                delete: Script::new(DELETE),
                record_cas: Script::new(RECORD_CAS),
            }),
        })
    }
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .unwrap_or(UNIX_EPOCH)
}

/// A token set from a credential hash; `None` for an empty or malformed one.
fn parse(fields: &HashMap<String, String>) -> Option<Arc<TokenSet>> {
    let number = |name: &str| fields.get(name).and_then(|v| v.parse::<u64>().ok());
    Some(Arc::new(TokenSet {
        access_token: Secret::new(fields.get("at")?.as_str()),
        refresh_token: fields.get("rt").map(|rt| Secret::new(rt.as_str())),
        scope: fields.get("scope").cloned(),
        obtained_at: from_millis(number("obt")?),
        expires_at: number("exp").map(from_millis),
        generation: Generation(number("gen")?),
        derived: Default::default(),
    }))
}

/// The flat `HGETALL` list the scripts return, as a map.
fn pairs(list: Vec<String>) -> HashMap<String, String> {
    let mut map = HashMap::new();
    let mut items = list.into_iter();
    while let (Some(name), Some(value)) = (items.next(), items.next()) {
        map.insert(name, value);
    }
    map
}

impl RedisStore {
    /// A store at `url` (`redis://host:port/db`, `rediss://` for TLS) with the defaults.
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            prefix: "tower-mcp-auth:".to_owned(),
            credential_ttl: None,
            timeout: Duration::from_secs(2),
            sealing: None,
        }
    }

    /// Seals, once, what an unsealed store or an older version left in Redis (tokens
    /// and records in the clear or in the first sealed format), each bound to its
    /// record; as [`SqliteStore::seal_existing`](crate::store::SqliteStore), with no
    /// other process writing. Records keep their time to live.
    ///
    /// # Errors
    ///
    /// [`StoreError`] without keys, when Redis fails, or when a value sealed in the
    /// first format does not open under the keys.
    pub async fn seal_existing(&self) -> Result<sealing::SealReport, StoreError> {
        use sealing::SealContext;
        let keys = self.sealing.clone().ok_or_else(sealing::no_keys)?;
        let mut connection = self.connection.clone();
        let mut report = sealing::SealReport::default();
        let credentials = format!("{}cred:", self.prefix);
        for name in self.scan(&format!("{credentials}*")).await? {
            let Some(identity) = parse_credential_name(&name[credentials.len()..]) else {
                continue;
            };
            let identity: [&[u8]; 3] = [identity.0.as_bytes(), identity.1.as_bytes(), &identity.2];
            let mut updates = Vec::new();
            for (field, hash_field) in [("access_token", "at"), ("refresh_token", "rt")] {
                let value: Option<Vec<u8>> = connection
                    .hget(&name, hash_field)
                    .await
                    .map_err(StoreError::new)?;
                if let Some(value) = value
                    && let Some(sealed) = keys.reseal(
                        SealContext {
                            field,
                            identity: &identity,
                        },
                        &value,
                    )?
                {
                    updates.push((hash_field, sealed));
                }
            }
            if updates.is_empty() {
                report.already_sealed += 1;
                continue;
            }
            let () = connection
                .hset_multiple(&name, &updates)
                .await
                .map_err(StoreError::new)?;
            report.credentials += 1;
        }
        let records = format!("{}record:", self.prefix);
        for name in self.scan(&format!("{records}*")).await? {
            let value: Option<Vec<u8>> = connection.get(&name).await.map_err(StoreError::new)?;
            let Some(value) = value else { continue };
            let record = &name[records.len()..];
            match keys.reseal(
                SealContext {
                    field: record,
                    identity: &[],
                },
                &value,
            )? {
                Some(sealed) => {
                    // SET ... KEEPTTL: the record expires when it would have.
                    let () = redis::cmd("SET")
                        .arg(&name)
                        .arg(sealed)
                        .arg("KEEPTTL")
                        .query_async(&mut connection)
                        .await
                        .map_err(StoreError::new)?;
                    report.records += 1;
                }
                None => report.already_sealed += 1,
            }
        }
        Ok(report)
    }

    /// Checks the store's epoch: the first time, learns (or writes) it; later, a
    /// missing or different epoch means Redis lost everything since (a restart without
    /// persistence, a flush): reported once as [`StoreWiped`](crate::error::StoreWiped), with
    /// a loud log line, after which the new epoch is the one known.
    async fn check_epoch(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let candidate = crate::crypto::hex(&crate::crypto::random_bytes::<8>());
        // Above every counter value issued before: above what this process saw, and
        // above what the time allows (a store's counters grow by far less than ten a
        // millisecond). Fourteen digits: exact in Redis's Lua numbers.
        let by_time = u64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(u64::MAX / 10)
        .saturating_mul(10);
        let floor = by_time.max(
            self.highest
                .load(std::sync::atomic::Ordering::Relaxed)
                .saturating_add(1),
        );
        let (_, epoch): (i64, String) = self
            .scripts
            .epoch
            .key(self.counter("epoch"))
            .key(self.counter("generation"))
            .key(self.counter("fence"))
            .arg(candidate)
            .arg(floor.to_string())
            .invoke_async(&mut connection)
            .await
            .map_err(StoreError::new)?;
        let mut seen = self.epoch.lock().unwrap_or_else(|e| e.into_inner());
        match seen.known.replace(epoch.clone()) {
            Some(known) if known != epoch => {
                seen.lost_at = Some(SystemTime::now());
                tracing::error!(
                    prefix = %self.prefix,
                    lost = %known,
                    epoch = %epoch,
                    "the Redis store lost all its data (credentials, pending sign-ins, client registrations): users must sign in again; configure persistence (appendonly yes)"
                );
                Err(StoreError::new(crate::fault::StoreWiped::new(known)))
            }
            _ => Ok(()),
        }
    }

    /// Every key matching `pattern` (SCAN, so Redis is never blocked).
    async fn scan(&self, pattern: &str) -> Result<Vec<String>, StoreError> {
        let mut connection = self.connection.clone();
        let mut cursor = 0u64;
        let mut names = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut connection)
                .await
                .map_err(StoreError::new)?;
            names.extend(batch);
            if next == 0 {
                return Ok(names);
            }
            cursor = next;
        }
    }

    fn credential_key(&self, key: &AuthKey) -> String {
        let principal = key.principal();
        // Length-prefixed parts: no two keys share a name whatever their characters.
        format!(
            "{}cred:{}:{}:{}:{}:{}",
            self.prefix,
            principal.tenant().len(),
            principal.tenant(),
            principal.subject().len(),
            principal.subject(),
            key.binding()
                .as_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        )
    }

    fn lease_key(&self, key: &AuthKey) -> String {
        format!("{}lease:{}", self.prefix, self.credential_key(key))
    }

    fn counter(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn swap_args(
        expected: Option<Generation>,
        new: &TokenSet,
        ttl: Option<Duration>,
    ) -> Vec<String> {
        vec![
            expected.map_or_else(String::new, |g| g.0.to_string()),
            new.access_token.expose().to_owned(),
            millis(new.obtained_at).to_string(),
            new.refresh_token
                .as_ref()
                .map_or_else(String::new, |rt| rt.expose().to_owned()),
            new.scope.clone().unwrap_or_default(),
            new.expires_at
                .map_or_else(String::new, |at| millis(at).to_string()),
            ttl.map_or(0, |ttl| ttl.as_millis()).to_string(),
        ]
    }

    fn open(
        &self,
        key: &AuthKey,
        tokens: Option<Arc<TokenSet>>,
    ) -> Result<Option<Arc<TokenSet>>, StoreError> {
        tokens
            .map(|t| sealing::open_token_set(self.sealing.as_ref(), key, &t).map(Arc::new))
            .transpose()
    }

    /// CAS, or fenced CAS with `lease`: seal, one script call, outcome opened.
    async fn swap(
        &self,
        key: &AuthKey,
        expected: Option<Generation>,
        new: TokenSet,
        lease: Option<Lease>,
    ) -> Result<Swap, StoreError> {
        let mut connection = self.connection.clone();
        let sealed = sealing::seal_token_set(self.sealing.as_ref(), key, new.clone())?;
        let script = match lease {
            Some(_) => &self.scripts.fenced_cas,
            None => &self.scripts.cas,
        };
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.credential_key(key))
            .key(self.counter("generation"));
        if lease.is_some() {
            invocation.key(self.lease_key(key));
        }
        invocation.arg(Self::swap_args(expected, &sealed, self.credential_ttl));
        if let Some(lease) = lease {
            invocation.arg(lease.fence.to_string());
        }
        let reply: (i64, Vec<String>) = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(StoreError::new)?;
        self.swap_outcome(key, reply, new)
    }

    fn swap_outcome(
        &self,
        key: &AuthKey,
        (status, values): (i64, Vec<String>),
        mut new: TokenSet,
    ) -> Result<Swap, StoreError> {
        if status == 1 {
            let generation = values
                .first()
                .and_then(|g| g.parse().ok())
                .ok_or_else(|| StoreError::new(std::io::Error::other("malformed CAS reply")))?;
            new.generation = Generation(generation);
            self.highest
                .fetch_max(generation, std::sync::atomic::Ordering::Relaxed);
            return Ok(Swap::Stored(Arc::new(new)));
        }
        Ok(Swap::Conflict(self.open(key, parse(&pairs(values)))?))
    }
}

/// Tenant, subject and binding of a credential's key name (after `{prefix}cred:`): the
/// inverse of `RedisStore::credential_key`.
fn parse_credential_name(rest: &str) -> Option<(String, String, Vec<u8>)> {
    fn part(rest: &str) -> Option<(&str, &str)> {
        let (length, rest) = rest.split_once(':')?;
        let length: usize = length.parse().ok()?;
        let value = rest.get(..length)?;
        Some((value, rest.get(length..)?.strip_prefix(':')?))
    }
    let (tenant, rest) = part(rest)?;
    let (subject, binding) = part(rest)?;
    if binding.len() != 64 {
        return None;
    }
    let binding = (0..32)
        .map(|i| u8::from_str_radix(binding.get(2 * i..2 * i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some((tenant.to_owned(), subject.to_owned(), binding))
}

/// The epoch a process knows.
#[derive(Debug, Default)]
struct EpochSeen {
    known: Option<String>,
    lost_at: Option<SystemTime>,
}
