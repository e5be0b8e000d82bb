//! The embedded durable store: one SQLite file, shared by the processes of one machine.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::sealing::{self, SealReport, SealingKeys};
use super::{BoxFuture, CredentialStore, Lease, LeaseOutcome, Swap};
use crate::fault::StoreError;
use crate::key::AuthKey;
use crate::token::{Generation, Secret, TokenSet};

mod credential_store;
mod records;
mod schema;

use schema::*;

/// The schema version this code writes; older files are migrated on open.
const SCHEMA_VERSION: i64 = 2;

/// A [`CredentialStore`] in a SQLite file (bundled SQLite, WAL, `BEGIN IMMEDIATE`
/// writes, a busy timeout), for several processes on one machine and for restarts:
/// credentials survive, generations grow across processes, and the per-key redemption
/// lease with its fence makes one redemption per rejected token between all processes
/// that open the file.
///
/// Blocking SQLite calls run on tokio's blocking pool, never on the async threads.
///
/// ```
/// use std::sync::Arc;
/// use tower_mcp_auth::store::SqliteStore;
/// use tower_mcp_auth::RefreshCoordinator;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = std::env::temp_dir().join(format!("tower-mcp-auth-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let store = SqliteStore::open(dir.join("credentials.db"))?;
/// // Every process that opens the same file shares credentials and refreshes.
/// let coordinator = RefreshCoordinator::new(Arc::new(store));
/// # drop(coordinator);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    connection: Arc<Mutex<Connection>>,
    path: Arc<PathBuf>,
    sealing: Option<SealingKeys>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("sealing", &self.sealing)
            .finish_non_exhaustive()
    }
}

fn store_error(error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::new(error)
}

fn millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
        .unwrap_or(UNIX_EPOCH)
}

/// Creates the database file readable by its owner only (0600: SQLite gives its `-wal`
/// and `-shm` files the database file's mode), or warns when an existing one is
/// readable by others: it holds tokens, PKCE verifiers and client secrets.
fn private_file(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                let mode = std::fs::metadata(path)
                    .map_err(StoreError::new)?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(),
                        mode = format!("{:o}", mode & 0o777),
                        "the credential store is readable by other users; run `chmod 600` on it (and its -wal and -shm files)"
                    );
                }
            }
            Err(error) => return Err(StoreError::new(error)),
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`, with a 5 s busy timeout. A new
    /// file is created readable by its owner only (0600); an existing one that others
    /// can read is opened with a warning.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the file cannot be opened, is not a SQLite database, or was
    /// written by a newer schema.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with_busy_timeout(path, Duration::from_secs(5))
    }

    /// As [`open`](Self::open), waiting at most `busy_timeout` for another process's
    /// write lock before an operation fails with a [`StoreError`].
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn open_with_busy_timeout(
        path: impl AsRef<Path>,
        busy_timeout: Duration,
    ) -> Result<Self, StoreError> {
        Self::open_with(path, busy_timeout, None)
    }

    /// As [`open`](Self::open), sealing tokens and records with `keys` (AES-256-GCM)
    /// before they reach the file. Without keys, a warning is logged at open.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn open_sealed(path: impl AsRef<Path>, keys: SealingKeys) -> Result<Self, StoreError> {
        Self::open_with(path, Duration::from_secs(5), Some(keys))
    }

    fn open_with(
        path: impl AsRef<Path>,
        busy_timeout: Duration,
        sealing: Option<SealingKeys>,
    ) -> Result<Self, StoreError> {
        if sealing.is_none() {
            sealing::warn_unsealed("SqliteStore");
        }
        let path = path.as_ref().to_path_buf();
        private_file(&path)?;
        let mut connection = Connection::open(&path).map_err(store_error)?;
        connection.busy_timeout(busy_timeout).map_err(store_error)?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(store_error)?;
        connection
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(store_error)?;
        migrate(&mut connection)?;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
            path: Arc::new(path),
            sealing,
        })
    }

    /// Seals, once, what an unsealed store or an older version left in the file: every
    /// token and record in the clear or in the first sealed format is sealed with the
    /// store's keys and bound to its record. Run it once after configuring keys (a
    /// store with keys refuses unsealed values), with no other process writing.
    ///
    /// ```
    /// use tower_mcp_auth::store::{SealingKeys, SqliteStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = std::env::temp_dir().join(format!("seal-doc-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// let store = SqliteStore::open_sealed(dir.join("store.db"), SealingKeys::new("2026-12", [7; 32]))?;
    /// let report = store.seal_existing().await?;
    /// assert_eq!(report.credentials + report.records, 0, "a new file holds nothing");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`StoreError`] without keys, when the file cannot be read or written, or when a
    /// value sealed in the first format does not open under the keys.
    pub async fn seal_existing(&self) -> Result<SealReport, StoreError> {
        let keys = self.sealing.clone().ok_or_else(sealing::no_keys)?;
        self.run(move |connection| Ok(seal_rows(connection, &keys)))
            .await?
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn seal(&self, key: &AuthKey, tokens: TokenSet) -> Result<TokenSet, StoreError> {
        sealing::seal_token_set(self.sealing.as_ref(), key, tokens)
    }

    fn unseal(
        &self,
        key: &AuthKey,
        tokens: Option<Arc<TokenSet>>,
    ) -> Result<Option<Arc<TokenSet>>, StoreError> {
        tokens
            .map(|t| sealing::open_token_set(self.sealing.as_ref(), key, &t).map(Arc::new))
            .transpose()
    }

    fn unseal_swap(&self, key: &AuthKey, swap: Swap) -> Result<Swap, StoreError> {
        Ok(match swap {
            Swap::Stored(stored) => Swap::Stored(
                self.unseal(key, Some(stored))?
                    .unwrap_or_else(|| unreachable!("a stored set was given")),
            ),
            Swap::Conflict(current) => Swap::Conflict(self.unseal(key, current)?),
        })
    }

    /// Runs `work` on the connection on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = connection
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut connection)
        })
        .await
        .map_err(store_error)?
        .map_err(store_error)
    }
}

/// The key's three columns.
struct KeyColumns {
    tenant: String,
    subject: String,
    binding: Vec<u8>,
}

impl From<&AuthKey> for KeyColumns {
    fn from(key: &AuthKey) -> Self {
        Self {
            tenant: key.principal().tenant().to_owned(),
            subject: key.principal().subject().to_owned(),
            binding: key.binding().as_bytes().to_vec(),
        }
    }
}

fn load(connection: &Connection, key: &KeyColumns) -> rusqlite::Result<Option<Arc<TokenSet>>> {
    connection
        .query_row(
            "SELECT access_token, refresh_token, scope, obtained_at_ms, expires_at_ms, generation
             FROM credentials WHERE tenant = ?1 AND subject = ?2 AND binding = ?3",
            params![key.tenant, key.subject, key.binding],
            |row| {
                Ok(TokenSet {
                    access_token: Secret::new(row.get::<_, String>(0)?),
                    refresh_token: row.get::<_, Option<String>>(1)?.map(Secret::new),
                    scope: row.get(2)?,
                    obtained_at: from_millis(row.get(3)?),
                    expires_at: row.get::<_, Option<i64>>(4)?.map(from_millis),
                    generation: Generation(u64::try_from(row.get::<_, i64>(5)?).unwrap_or(0)),
                    derived: Default::default(),
                })
            },
        )
        .optional()
        .map(|tokens| tokens.map(Arc::new))
}

fn next(connection: &Connection, counter: &str) -> rusqlite::Result<i64> {
    connection.query_row(
        "UPDATE counters SET value = value + 1 WHERE name = ?1 RETURNING value",
        params![counter],
        |row| row.get(0),
    )
}

/// CAS inside an open transaction; commits nothing itself.
fn swap(
    connection: &Connection,
    key: &KeyColumns,
    expected: Option<Generation>,
    mut new: TokenSet,
) -> rusqlite::Result<Swap> {
    let current = load(connection, key)?;
    if current.as_ref().map(|t| t.generation) != expected {
        return Ok(Swap::Conflict(current));
    }
    let generation = next(connection, "generation")?;
    new.generation = Generation(u64::try_from(generation).unwrap_or(0));
    connection.execute(
        "INSERT INTO credentials
            (tenant, subject, binding, access_token, refresh_token, scope, obtained_at_ms, expires_at_ms, generation)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (tenant, subject, binding) DO UPDATE SET
            access_token = excluded.access_token, refresh_token = excluded.refresh_token,
            scope = excluded.scope, obtained_at_ms = excluded.obtained_at_ms,
            expires_at_ms = excluded.expires_at_ms, generation = excluded.generation",
        params![
            key.tenant,
            key.subject,
            key.binding,
            new.access_token.expose(),
            new.refresh_token.as_ref().map(Secret::expose),
            new.scope,
            millis(new.obtained_at),
            new.expires_at.map(millis),
            generation,
        ],
    )?;
    Ok(Swap::Stored(Arc::new(new)))
}

fn delete_lease(connection: &Connection, key: &KeyColumns, fence: u64) -> rusqlite::Result<()> {
    connection.execute(
        "DELETE FROM leases WHERE tenant = ?1 AND subject = ?2 AND binding = ?3 AND fence = ?4",
        params![
            key.tenant,
            key.subject,
            key.binding,
            i64::try_from(fence).unwrap_or(i64::MAX)
        ],
    )?;
    Ok(())
}
