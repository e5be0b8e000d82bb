//! [`SharedRecords`](crate::store::SharedRecords) on SQLite: flows and registrations in
//! a table of their own.

use super::*;

impl crate::store::SharedRecords for SqliteStore {
    fn get_record<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        let field = name.to_owned();
        let name = name.to_owned();
        Box::pin(async move {
            let stored: Option<Vec<u8>> = self
                .run(move |connection| {
                    connection
                        .query_row(
                            "SELECT value FROM records WHERE name = ?1 AND expires_at_ms > ?2",
                            params![name, millis(SystemTime::now())],
                            |row| row.get(0),
                        )
                        .optional()
                })
                .await?;
            stored
                .map(|bytes| sealing::open_bytes(self.sealing.as_ref(), &field, &bytes))
                .transpose()
        })
    }

    fn compare_and_set_record<'a>(
        &'a self,
        name: &'a str,
        expected: Option<&'a [u8]>,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let (name, expected) = (name.to_owned(), expected.map(<[u8]>::to_vec));
        let sealed = sealing::seal_bytes(self.sealing.as_ref(), &name, value);
        let keys = self.sealing.clone();
        Box::pin(async move {
            let value = sealed?;
            self.run(move |connection| {
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = millis(SystemTime::now());
            let current: Option<Vec<u8>> = transaction
                .query_row(
                    "SELECT value FROM records WHERE name = ?1 AND expires_at_ms > ?2",
                    params![name, now],
                    |row| row.get(0),
                )
                .optional()?;
            // Compared opened: sealing makes every write's bytes different.
            let current = current
                .map(|bytes| sealing::open_bytes(keys.as_ref(), &name, &bytes))
                .transpose()
                .map_err(|error| rusqlite::Error::ToSqlConversionFailure(Box::new(error)))?;
            if current != expected {
                return Ok(false);
            }
            let ttl_ms = i64::try_from(crate::limits::clamp(ttl).as_millis()).unwrap_or(i64::MAX);
            transaction.execute(
                "INSERT INTO records (name, value, expires_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value, expires_at_ms = excluded.expires_at_ms",
                params![name, value, now.saturating_add(ttl_ms)],
            )?;
            transaction.commit()?;
            Ok(true)
            })
            .await
        })
    }
}
