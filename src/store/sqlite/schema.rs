//! The file's schema: versioned migrations, and sealing what an older version wrote in
//! the clear.

use super::*;

pub(super) fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = connection
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(store_error)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::new(std::io::Error::other(format!(
            "credential store schema {version} is newer than this version understands ({SCHEMA_VERSION})"
        ))));
    }
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    let transaction = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(store_error)?;
    // Re-read inside the write transaction: another process may have migrated.
    let version: i64 = transaction
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(store_error)?;
    if version < 1 {
        migrate_to_1(&transaction)?;
    }
    if version < 2 {
        // Version 2: shared records (flows, client registrations).
        transaction
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS records (
                    name TEXT PRIMARY KEY,
                    value BLOB NOT NULL,
                    expires_at_ms INTEGER NOT NULL
                );",
            )
            .map_err(store_error)?;
    }
    transaction
        .pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(store_error)?;
    transaction.commit().map_err(store_error)
}

/// Version 1: credentials, leases and counters.
pub(super) fn migrate_to_1(transaction: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    transaction
        .execute_batch(
            "CREATE TABLE IF NOT EXISTS credentials (
                tenant TEXT NOT NULL,
                subject TEXT NOT NULL,
                binding BLOB NOT NULL,
                access_token TEXT NOT NULL,
                refresh_token TEXT,
                scope TEXT,
                obtained_at_ms INTEGER NOT NULL,
                expires_at_ms INTEGER,
                generation INTEGER NOT NULL,
                PRIMARY KEY (tenant, subject, binding)
            );
            CREATE TABLE IF NOT EXISTS leases (
                tenant TEXT NOT NULL,
                subject TEXT NOT NULL,
                binding BLOB NOT NULL,
                fence INTEGER NOT NULL,
                expires_at_ms INTEGER NOT NULL,
                PRIMARY KEY (tenant, subject, binding)
            );
            CREATE TABLE IF NOT EXISTS counters (
                name TEXT PRIMARY KEY,
                value INTEGER NOT NULL
            );
            INSERT OR IGNORE INTO counters (name, value) VALUES ('generation', 0), ('fence', 0);",
        )
        .map_err(store_error)
}

/// Tenant, subject, binding, access token and refresh token of a stored credential.
pub(super) type CredentialRow = (String, String, Vec<u8>, String, Option<String>);

/// `SqliteStore::seal_existing`'s work, in one transaction.
pub(super) fn seal_rows(
    connection: &mut Connection,
    keys: &SealingKeys,
) -> Result<SealReport, StoreError> {
    use sealing::SealContext;
    let transaction = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(store_error)?;
    let mut report = SealReport::default();
    let credentials: Vec<CredentialRow> = transaction
        .prepare("SELECT tenant, subject, binding, access_token, refresh_token FROM credentials")
        .and_then(|mut statement| {
            statement
                .query_map([], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                })?
                .collect()
        })
        .map_err(store_error)?;
    for (tenant, subject, binding, access, refresh) in credentials {
        let identity: [&[u8]; 3] = [tenant.as_bytes(), subject.as_bytes(), &binding];
        let context = |field| SealContext {
            field,
            identity: &identity,
        };
        let access = keys.reseal(context("access_token"), access.as_bytes())?;
        let refresh = match &refresh {
            Some(refresh) => keys.reseal(context("refresh_token"), refresh.as_bytes())?,
            None => None,
        };
        if access.is_none() && refresh.is_none() {
            report.already_sealed += 1;
            continue;
        }
        transaction
            .execute(
                "UPDATE credentials SET access_token = COALESCE(?4, access_token), \
                 refresh_token = COALESCE(?5, refresh_token) \
                 WHERE tenant = ?1 AND subject = ?2 AND binding = ?3",
                rusqlite::params![tenant, subject, binding, access, refresh],
            )
            .map_err(store_error)?;
        report.credentials += 1;
    }
    let records: Vec<(String, Vec<u8>)> = transaction
        .prepare("SELECT name, value FROM records")
        .and_then(|mut statement| {
            statement
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect()
        })
        .map_err(store_error)?;
    for (name, value) in records {
        match keys.reseal(
            SealContext {
                field: &name,
                identity: &[],
            },
            &value,
        )? {
            Some(sealed) => {
                transaction
                    .execute(
                        "UPDATE records SET value = ?2 WHERE name = ?1",
                        rusqlite::params![name, sealed.into_bytes()],
                    )
                    .map_err(store_error)?;
                report.records += 1;
            }
            None => report.already_sealed += 1,
        }
    }
    transaction.commit().map_err(store_error)?;
    Ok(report)
}
