//! [`CredentialStore`] on Redis: each call one script or command.

use super::*;

impl CredentialStore for RedisStore {
    fn load<'a>(
        &'a self,
        key: &'a AuthKey,
    ) -> BoxFuture<'a, Result<Option<Arc<TokenSet>>, StoreError>> {
        Box::pin(async move {
            let first_use = self
                .epoch
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .known
                .is_none();
            if first_use {
                self.check_epoch().await?;
            }
            let mut connection = self.connection.clone();
            let fields: HashMap<String, String> = connection
                .hgetall(self.credential_key(key))
                .await
                .map_err(StoreError::new)?;
            let loaded = self.open(key, parse(&fields))?;
            if let Some(tokens) = &loaded {
                self.highest
                    .fetch_max(tokens.generation.0, std::sync::atomic::Ordering::Relaxed);
            }
            if loaded.is_none() && !first_use {
                // Missing credentials: new, or lost with everything else. Only the
                // epoch tells, and a loss is never reported as "nothing stored".
                self.check_epoch().await?;
            }
            Ok(loaded)
        })
    }

    fn lost_data_at(&self) -> Option<SystemTime> {
        self.epoch.lock().unwrap_or_else(|e| e.into_inner()).lost_at
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a AuthKey,
        expected: Option<Generation>,
        new: TokenSet,
    ) -> BoxFuture<'a, Result<Swap, StoreError>> {
        Box::pin(self.swap(key, expected, new, None))
    }

    fn delete<'a>(
        &'a self,
        key: &'a AuthKey,
        generation: Generation,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let deleted: i64 = self
                .scripts
                .delete
                .key(self.credential_key(key))
                .arg(generation.0.to_string())
                .invoke_async(&mut connection)
                .await
                .map_err(StoreError::new)?;
            Ok(deleted == 1)
        })
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
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let ttl = crate::limits::clamp(ttl).as_millis().max(1);
            let (status, values): (i64, Vec<String>) = self
                .scripts
                .acquire
                .key(self.credential_key(key))
                .key(self.lease_key(key))
                .key(self.counter("fence"))
                .arg(trigger.0.to_string())
                .arg(ttl.to_string())
                .invoke_async(&mut connection)
                .await
                .map_err(StoreError::new)?;
            let number = || {
                values
                    .first()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            Ok(match status {
                2 => {
                    let fence = number();
                    self.highest
                        .fetch_max(fence, std::sync::atomic::Ordering::Relaxed);
                    LeaseOutcome::Acquired(Lease { fence })
                }
                1 => LeaseOutcome::Held(Duration::from_millis(number())),
                _ => LeaseOutcome::Superseded(self.open(key, parse(&pairs(values)))?),
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
        Box::pin(self.swap(key, expected, new, Some(lease)))
    }

    fn release_lease<'a>(
        &'a self,
        key: &'a AuthKey,
        lease: Lease,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let _: i64 = self
                .scripts
                .release
                .key(self.lease_key(key))
                .arg(lease.fence.to_string())
                .invoke_async(&mut connection)
                .await
                .map_err(StoreError::new)?;
            Ok(())
        })
    }

    fn renew_lease<'a>(
        &'a self,
        key: &'a AuthKey,
        lease: Lease,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let renewed: i64 = self
                .scripts
                .renew
                .key(self.lease_key(key))
                .arg(lease.fence.to_string())
                .arg(crate::limits::clamp(ttl).as_millis().max(1).to_string())
                .invoke_async(&mut connection)
                .await
                .map_err(StoreError::new)?;
            Ok(renewed == 1)
        })
    }
}
