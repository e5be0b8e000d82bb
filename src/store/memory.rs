//! The embedded default store: a bounded moka cache.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::ops::compute::Op;
use moka::sync::Cache;

use super::{BoxFuture, CredentialStore, Swap};
use crate::error::{CapacityReached, StoreError};
use crate::key::AuthKey;
use crate::token::{Generation, TokenSet};

/// An in-process [`CredentialStore`] on a moka cache.
///
/// Entries expire with their credential: a token set with a refresh token lives for the
/// refresh-token lifetime (unbounded by default) even after its access token expired,
/// because the refresh token is what recovers it; one without a refresh token goes when
/// its access token expires. Clones share the same cache.
///
/// The store is bounded, but it never evicts a credential to make room: once it holds
/// `max_capacity` keys, writing credentials for a new key fails with a [`StoreError`]
/// whose [`capacity_reached`](StoreError::capacity_reached) is set, and every stored
/// user keeps theirs. (A flood of made-up principals cannot push real users' refresh
/// tokens out.)
///
/// ```
/// use std::time::Duration;
/// use tower_mcp_auth::store::MemoryStore;
///
/// let store = MemoryStore::builder()
///     .max_capacity(10_000)
///     .refresh_token_ttl(Duration::from_secs(30 * 24 * 3600))
///     .build();
/// # drop(store);
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    cache: Cache<AuthKey, Arc<TokenSet>>,
    next_generation: Arc<AtomicU64>,
    max_capacity: u64,
}

impl MemoryStore {
    /// A store holding up to 100,000 keys, refresh tokens kept until evicted.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Configures a store.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            max_capacity: 100_000,
            refresh_token_ttl: None,
        }
    }

    /// The number of stored keys (approximate: moka counts lazily).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Refuses a write that would add a key beyond capacity. (A soft bound: writers
    /// racing for the last slots can overshoot by their number.)
    fn admit(&self, key: &AuthKey) -> Result<(), StoreError> {
        if self.cache.contains_key(key) {
            return Ok(());
        }
        // moka counts lazily: settle pending writes, expirations and removals first.
        // New keys are first logins, rare enough for this to cost nothing that matters.
        self.cache.run_pending_tasks();
        if self.cache.entry_count() < self.max_capacity {
            return Ok(());
        }
        tracing::warn!(
            max = self.max_capacity,
            "credential store full; new key refused"
        );
        Err(StoreError::new(CapacityReached {
            what: "credential store",
            max: self.max_capacity,
        }))
    }

    fn next_generation(&self) -> Generation {
        Generation(self.next_generation.fetch_add(1, Ordering::Relaxed))
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

/// Builds a [`MemoryStore`].
#[derive(Debug, Clone)]
pub struct MemoryStoreBuilder {
    max_capacity: u64,
    refresh_token_ttl: Option<Duration>,
}

impl MemoryStoreBuilder {
    /// The most keys held (default 100,000); beyond it new keys are refused, stored
    /// ones are never evicted for room.
    pub fn max_capacity(mut self, max_capacity: u64) -> Self {
        self.max_capacity = max_capacity;
        self
    }

    /// How long a token set with a refresh token is kept after its last write.
    pub fn refresh_token_ttl(mut self, ttl: Duration) -> Self {
        self.refresh_token_ttl = Some(ttl);
        self
    }

    /// Builds the store.
    pub fn build(self) -> MemoryStore {
        MemoryStore {
            max_capacity: self.max_capacity,
            // No moka capacity: moka would evict (TinyLFU) instead of refusing.
            cache: Cache::builder()
                .expire_after(CredentialExpiry {
                    refresh_token_ttl: self.refresh_token_ttl,
                })
                .build(),
            next_generation: Arc::new(AtomicU64::new(1)),
        }
    }
}

struct CredentialExpiry {
    refresh_token_ttl: Option<Duration>,
}

impl CredentialExpiry {
    fn time_to_live(&self, tokens: &TokenSet) -> Option<Duration> {
        if tokens.refresh_token.is_some() {
            return self.refresh_token_ttl.map(crate::limits::clamp);
        }
        tokens.expires_at.map(crate::limits::ttl_until)
    }
}

impl Expiry<AuthKey, Arc<TokenSet>> for CredentialExpiry {
    fn expire_after_create(
        &self,
        _key: &AuthKey,
        value: &Arc<TokenSet>,
        _created_at: Instant,
    ) -> Option<Duration> {
        self.time_to_live(value)
    }

    fn expire_after_update(
        &self,
        _key: &AuthKey,
        value: &Arc<TokenSet>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.time_to_live(value)
    }
}

impl CredentialStore for MemoryStore {
    fn load<'a>(
        &'a self,
        key: &'a AuthKey,
    ) -> BoxFuture<'a, Result<Option<Arc<TokenSet>>, StoreError>> {
        Box::pin(async move { Ok(self.cache.get(key)) })
    }

    fn load_now(&self, key: &AuthKey) -> Option<Option<Arc<TokenSet>>> {
        Some(self.cache.get(key))
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a AuthKey,
        expected: Option<Generation>,
        mut new: TokenSet,
    ) -> BoxFuture<'a, Result<Swap, StoreError>> {
        Box::pin(async move {
            if expected.is_none() {
                self.admit(key)?;
            }
            let mut outcome = Swap::Conflict(None);
            self.cache.entry_by_ref(key).and_compute_with(|current| {
                let current = current.map(|entry| entry.into_value());
                if current.as_ref().map(|t| t.generation) == expected {
                    new.generation = self.next_generation();
                    let stored = Arc::new(new);
                    outcome = Swap::Stored(stored.clone());
                    Op::Put(stored)
                } else {
                    outcome = Swap::Conflict(current);
                    Op::Nop
                }
            });
            Ok(outcome)
        })
    }

    fn delete<'a>(
        &'a self,
        key: &'a AuthKey,
        generation: Generation,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut deleted = false;
            self.cache
                .entry_by_ref(key)
                .and_compute_with(|current| match current {
                    Some(entry) if entry.value().generation == generation => {
                        deleted = true;
                        Op::Remove
                    }
                    _ => Op::Nop,
                });
            Ok(deleted)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{BindingId, Principal};
    use crate::token::Secret;

    fn key(user: &str) -> AuthKey {
        AuthKey::new(&Principal::new("t", user), BindingId([7; 32]))
    }

    async fn put(store: &MemoryStore, key: &AuthKey, tokens: TokenSet) -> Arc<TokenSet> {
        let expected = store.load(key).await.unwrap().map(|t| t.generation);
        match store.compare_and_swap(key, expected, tokens).await.unwrap() {
            Swap::Stored(t) => t,
            Swap::Conflict(_) => panic!("conflict"),
        }
    }

    #[tokio::test]
    async fn cas_rejects_stale_generation_and_generations_grow() {
        let store = MemoryStore::new();
        let k = key("a");
        let g1 = put(&store, &k, TokenSet::new(Secret::new("1"))).await;
        let g2 = put(&store, &k, TokenSet::new(Secret::new("2"))).await;
        assert!(g2.generation > g1.generation);
        let late = store
            .compare_and_swap(&k, Some(g1.generation), TokenSet::new(Secret::new("late")))
            .await
            .unwrap();
        match late {
            Swap::Conflict(Some(current)) => assert_eq!(current.generation, g2.generation),
            other => panic!("{other:?}"),
        }
        assert!(!store.delete(&k, g1.generation).await.unwrap());
        assert!(store.delete(&k, g2.generation).await.unwrap());
        let g3 = put(&store, &k, TokenSet::new(Secret::new("3"))).await;
        assert!(
            g3.generation > g2.generation,
            "no generation reuse after delete"
        );
    }

    #[tokio::test]
    async fn refresh_token_outlives_access_token() {
        let store = MemoryStore::new();
        let expired = TokenSet::new(Secret::new("a")).with_expires_in(Duration::ZERO);
        put(
            &store,
            &key("with"),
            expired.clone().with_refresh_token(Secret::new("r")),
        )
        .await;
        put(&store, &key("without"), expired).await;
        assert!(store.load(&key("with")).await.unwrap().is_some());
        assert!(store.load(&key("without")).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_full_store_refuses_new_keys_and_keeps_every_credential() {
        let store = MemoryStore::builder().max_capacity(8).build();
        let with_refresh = || TokenSet::new(Secret::new("a")).with_refresh_token(Secret::new("r"));
        for user in 0..8 {
            put(&store, &key(&format!("real-{user}")), with_refresh()).await;
        }
        // A flood of made-up principals: each refused, nobody evicted.
        for fake in 0..1_000 {
            let refused = store
                .compare_and_swap(&key(&format!("fake-{fake}")), None, with_refresh())
                .await
                .unwrap_err();
            assert_eq!(refused.capacity_reached().map(|c| c.max), Some(8));
        }
        store.cache.run_pending_tasks();
        for user in 0..8 {
            let stored = store.load(&key(&format!("real-{user}"))).await.unwrap();
            assert!(
                stored.is_some_and(|t| t.refresh_token.is_some()),
                "real-{user}"
            );
        }
        // Existing keys still rotate.
        let current = store.load(&key("real-0")).await.unwrap().unwrap();
        let rotated = store
            .compare_and_swap(&key("real-0"), Some(current.generation), with_refresh())
            .await
            .unwrap();
        assert!(matches!(rotated, Swap::Stored(_)));
    }

    #[tokio::test]
    async fn concurrent_cas_has_one_winner() {
        let store = MemoryStore::new();
        let k = key("race");
        let wins = futures::future::join_all((0..64).map(|i| {
            let (store, k) = (store.clone(), k.clone());
            tokio::spawn(async move {
                let tokens = TokenSet::new(Secret::new(format!("{i}")));
                matches!(
                    store.compare_and_swap(&k, None, tokens).await.unwrap(),
                    Swap::Stored(_)
                )
            })
        }))
        .await;
        assert_eq!(wins.into_iter().filter(|w| *w.as_ref().unwrap()).count(), 1);
    }
}
