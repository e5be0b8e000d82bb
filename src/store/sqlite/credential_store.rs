//! [`CredentialStore`] on SQLite: each call one transaction on the blocking pool.

use super::*;

impl CredentialStore for SqliteStore {
    fn load<'a>(
        &'a self,
        key: &'a AuthKey,
    ) -> BoxFuture<'a, Result<Option<Arc<TokenSet>>, StoreError>> {
        let auth = key;
        let key = KeyColumns::from(key);
        Box::pin(async move {
            let loaded = self.run(move |connection| load(connection, &key)).await?;
            self.unseal(auth, loaded)
        })
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a AuthKey,
        expected: Option<Generation>,
        new: TokenSet,
    ) -> BoxFuture<'a, Result<Swap, StoreError>> {
        let auth = key;
        let key = KeyColumns::from(key);
        Box::pin(async move {
            let new = self.seal(auth, new)?;
            let outcome = self
                .run(move |connection| {
                    let transaction =
                        connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let outcome = swap(&transaction, &key, expected, new)?;
                    transaction.commit()?;
                    Ok(outcome)
                })
                .await?;
            self.unseal_swap(auth, outcome)
        })
    }

    fn delete<'a>(
        &'a self,
        key: &'a AuthKey,
        generation: Generation,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let key = KeyColumns::from(key);
        Box::pin(self.run(move |connection| {
            let deleted = connection.execute(
                "DELETE FROM credentials
                 WHERE tenant = ?1 AND subject = ?2 AND binding = ?3 AND generation = ?4",
                params![
                    key.tenant,
                    key.subject,
                    key.binding,
                    i64::try_from(generation.0).unwrap_or(i64::MAX)
                ],
            )?;
            Ok(deleted > 0)
        }))
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn acquire_lease<'a>(
        &'a self,
        key: &'a AuthKey,
        trigger: Generation,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<LeaseOutcome, StoreError>> {
        let auth = key;
        let key = KeyColumns::from(key);
        Box::pin(async move {
            let outcome = self
                .run(move |connection| {
                    let transaction =
                        connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let current = load(&transaction, &key)?;
                    if current.as_ref().map(|t| t.generation) != Some(trigger) {
                        return Ok(LeaseOutcome::Superseded(current));
                    }
                    let now = millis(SystemTime::now());
                    let held: Option<i64> = transaction
                        .query_row(
                            "SELECT expires_at_ms FROM leases
                     WHERE tenant = ?1 AND subject = ?2 AND binding = ?3",
                            params![key.tenant, key.subject, key.binding],
                            |row| row.get(0),
                        )
                        .optional()?;
                    if let Some(until) = held.filter(|until| *until > now) {
                        let left = Duration::from_millis(u64::try_from(until - now).unwrap_or(0));
                        return Ok(LeaseOutcome::Held(left));
                    }
                    let fence = next(&transaction, "fence")?;
                    let ttl_ms =
                        i64::try_from(crate::limits::clamp(ttl).as_millis()).unwrap_or(i64::MAX);
                    transaction.execute(
                        "INSERT INTO leases (tenant, subject, binding, fence, expires_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (tenant, subject, binding) DO UPDATE SET
                    fence = excluded.fence, expires_at_ms = excluded.expires_at_ms",
                        params![
                            key.tenant,
                            key.subject,
                            key.binding,
                            fence,
                            now.saturating_add(ttl_ms)
                        ],
                    )?;
                    transaction.commit()?;
                    Ok(LeaseOutcome::Acquired(Lease {
                        fence: u64::try_from(fence).unwrap_or(0),
                    }))
                })
                .await?;
            Ok(match outcome {
                LeaseOutcome::Superseded(current) => {
                    LeaseOutcome::Superseded(self.unseal(auth, current)?)
                }
                other => other,
            })
        })
    }

    fn compare_and_swap_fenced<'a>(
        &'a self,
        key: &'a AuthKey,
        expected: Option<Generation>,
        new: TokenSet,
        lease: Lease,
    ) -> BoxFuture<'a, Result<Swap, StoreError>> {
        let auth = key;
        let key = KeyColumns::from(key);
        Box::pin(async move {
            let new = self.seal(auth, new)?;
            let outcome = self
                .run(move |connection| {
                    let transaction =
                        connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let fence: Option<i64> = transaction
                .query_row(
                    "SELECT fence FROM leases WHERE tenant = ?1 AND subject = ?2 AND binding = ?3",
                    params![key.tenant, key.subject, key.binding],
                    |row| row.get(0),
                )
                .optional()?;
                    // The lease was taken over (it expired and another process acquired it):
                    // this writer is stale and writes nothing.
                    let ours = fence.and_then(|f| u64::try_from(f).ok()) == Some(lease.fence);
                    if !ours {
                        let current = load(&transaction, &key)?;
                        return Ok(Swap::Conflict(current));
                    }
                    let outcome = swap(&transaction, &key, expected, new)?;
                    delete_lease(&transaction, &key, lease.fence)?;
                    transaction.commit()?;
                    Ok(outcome)
                })
                .await?;
            self.unseal_swap(auth, outcome)
        })
    }

    fn release_lease<'a>(
        &'a self,
        key: &'a AuthKey,
        lease: Lease,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let key = KeyColumns::from(key);
        Box::pin(self.run(move |connection| delete_lease(connection, &key, lease.fence)))
    }

    fn renew_lease<'a>(
        &'a self,
        key: &'a AuthKey,
        lease: Lease,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let key = KeyColumns::from(key);
        Box::pin(self.run(move |connection| {
            let ttl_ms = i64::try_from(crate::limits::clamp(ttl).as_millis()).unwrap_or(i64::MAX);
            let until = millis(SystemTime::now()).saturating_add(ttl_ms);
            let renewed = connection.execute(
                "UPDATE leases SET expires_at_ms = ?5
                 WHERE tenant = ?1 AND subject = ?2 AND binding = ?3 AND fence = ?4",
                params![
                    key.tenant,
                    key.subject,
                    key.binding,
                    i64::try_from(lease.fence).unwrap_or(i64::MAX),
                    until
                ],
            )?;
            Ok(renewed == 1)
        }))
    }
}
