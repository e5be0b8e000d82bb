//! The embedded default store: a bounded, sharded in-memory map.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::{BoxFuture, CredentialStore, Swap};
use crate::fault::{CapacityReached, StoreError};
use crate::key::AuthKey;
use crate::token::{Generation, TokenSet};

/// Shards of the map: writers to different keys rarely share a lock.
const SHARDS: usize = 16;

/// An in-process [`CredentialStore`].
///
/// Entries expire with their credential: a token set with a refresh token lives for the
/// refresh-token lifetime (unbounded by default) even after its access token expired,
/// because the refresh token is what recovers it; one without a refresh token goes when
/// its access token expires. Clones share the same map.
///
/// The store is bounded, but it never evicts a credential to make room: once it holds
/// `max_capacity` keys, writing credentials for a new key fails with a [`StoreError`]
/// whose [`capacity_reached`](StoreError::capacity_reached) is set, and every stored
/// user keeps theirs. (A flood of made-up principals cannot push real users' refresh
/// tokens out.)
///
/// Reads take a shard's read lock and clone an `Arc`: the layers read the store on
/// every request, so it is a plain sharded map (moka's read bookkeeping cost the hot
/// path more than the whole bare injector it is compared with; see BENCHMARKS.md).
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
    inner: Arc<Inner>,
}

struct Inner {
    shards: [RwLock<KeyMap>; SHARDS],
    /// Entries stored, expired ones included until they are swept.
    len: AtomicU64,
    next_generation: AtomicU64,
    max_capacity: u64,
    refresh_token_ttl: Option<Duration>,
}

/// Keys hash to their precomputed value: nothing is hashed per lookup.
type KeyMap = HashMap<AuthKey, Entry, std::hash::BuildHasherDefault<crate::key::KeyHasher>>;

struct Entry {
    tokens: Arc<TokenSet>,
    /// When the entry stops existing; `None`: never.
    deadline: Option<Instant>,
    /// Whether `deadline` is the access token's expiry (no refresh token keeps the
    /// entry longer), which the hot path's caller checks on its own.
    deadline_is_expiry: bool,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.deadline.is_none_or(|deadline| now < deadline)
    }
}

impl MemoryStore {
    /// A store holding up to 100,000 keys, refresh tokens kept until deleted.
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

    /// The number of keys stored (expired entries may count until they are swept).
    pub fn entry_count(&self) -> u64 {
        self.inner.len.load(Ordering::Relaxed)
    }

    fn shard(&self, key: &AuthKey) -> usize {
        // The key's precomputed hash, bits the map inside does not use (it takes the
        // low bits for the bucket and the top 7 for its control bytes).
        (key.key_hash() >> 40) as usize % SHARDS
    }

    fn read(&self, key: &AuthKey) -> RwLockReadGuard<'_, KeyMap> {
        self.inner.shards[self.shard(key)]
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self, key: &AuthKey) -> RwLockWriteGuard<'_, KeyMap> {
        self.inner.shards[self.shard(key)]
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The live entry's tokens; with `check_expiry` false, an entry that lives only
    /// as long as its access token is returned without reading the clock.
    fn get(&self, key: &AuthKey, check_expiry: bool) -> Option<Arc<TokenSet>> {
        self.peek(key, check_expiry, Arc::clone)
    }

    /// `read` applied to the live entry of `key`, under its shard's read lock.
    fn peek<T>(
        &self,
        key: &AuthKey,
        check_expiry: bool,
        read: impl FnOnce(&Arc<TokenSet>) -> T,
    ) -> Option<T> {
        let shard = self.read(key);
        let entry = shard.get(key)?;
        let check = entry.deadline.is_some() && (check_expiry || !entry.deadline_is_expiry);
        if check && !entry.live(Instant::now()) {
            return None;
        }
        Some(read(&entry.tokens))
    }

    /// Takes a slot for a new key, sweeping expired entries first when full.
    fn admit(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        for attempt in 0..2 {
            let taken = inner
                .len
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |len| {
                    (len < inner.max_capacity).then_some(len + 1)
                });
            if taken.is_ok() {
                return Ok(());
            }
            if attempt == 0 {
                self.sweep();
            }
        }
        tracing::warn!(
            max = inner.max_capacity,
            "credential store full; new key refused"
        );
        Err(StoreError::new(CapacityReached {
            what: "credential store",
            max: inner.max_capacity,
        }))
    }

    /// Removes every expired entry.
    fn sweep(&self) {
        let now = Instant::now();
        for shard in &self.inner.shards {
            let mut shard = shard.write().unwrap_or_else(|p| p.into_inner());
            let before = shard.len();
            shard.retain(|_, entry| entry.live(now));
            let removed = (before - shard.len()) as u64;
            self.inner.len.fetch_sub(removed, Ordering::AcqRel);
        }
    }

    fn deadline(&self, tokens: &TokenSet) -> Option<Instant> {
        let ttl = if tokens.refresh_token.is_some() {
            self.inner.refresh_token_ttl.map(crate::limits::clamp)
        } else {
            tokens.expires_at.map(crate::limits::ttl_until)
        };
        ttl.map(|ttl| crate::limits::instant_after(Instant::now(), ttl))
    }

    fn next_generation(&self) -> Generation {
        Generation(self.inner.next_generation.fetch_add(1, Ordering::Relaxed))
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
            .field("entries", &self.entry_count())
            .finish_non_exhaustive()
    }
}

/// Configures a [`MemoryStore`].
#[derive(Debug, Clone)]
pub struct MemoryStoreBuilder {
    max_capacity: u64,
    refresh_token_ttl: Option<Duration>,
}

impl MemoryStoreBuilder {
    /// The most keys the store holds; writes for new keys beyond it are refused.
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
            inner: Arc::new(Inner {
                shards: std::array::from_fn(|_| RwLock::new(KeyMap::default())),
                len: AtomicU64::new(0),
                next_generation: AtomicU64::new(1),
                max_capacity: self.max_capacity,
                refresh_token_ttl: self.refresh_token_ttl,
            }),
        }
    }
}

impl CredentialStore for MemoryStore {
    fn load<'a>(
        &'a self,
        key: &'a AuthKey,
    ) -> BoxFuture<'a, Result<Option<Arc<TokenSet>>, StoreError>> {
        let tokens = self.get(key, true);
        Box::pin(std::future::ready(Ok(tokens)))
    }

    fn load_now(&self, key: &AuthKey) -> Option<Option<Arc<TokenSet>>> {
        Some(self.get(key, true))
    }

    fn peek_now_unchecked_expiry(
        &self,
        key: &AuthKey,
        read: &mut dyn FnMut(Option<&TokenSet>),
    ) -> bool {
        if self.peek(key, false, |tokens| read(Some(tokens))).is_none() {
            read(None);
        }
        true
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a AuthKey,
        expected: Option<Generation>,
        mut new: TokenSet,
    ) -> BoxFuture<'a, Result<Swap, StoreError>> {
        Box::pin(async move {
            let now = Instant::now();
            let deadline = self.deadline(&new);
            let mut admitted = false;
            loop {
                let mut shard = self.write(key);
                let current = shard
                    .get(key)
                    .filter(|e| e.live(now))
                    .map(|e| e.tokens.clone());
                if current.as_ref().map(|t| t.generation) != expected {
                    drop(shard);
                    if admitted {
                        self.inner.len.fetch_sub(1, Ordering::AcqRel);
                    }
                    return Ok(Swap::Conflict(current));
                }
                // A key not in the map takes a slot first (outside the shard's lock:
                // admitting may sweep every shard).
                let occupied = shard.contains_key(key);
                if !occupied && !admitted {
                    drop(shard);
                    self.admit()?;
                    admitted = true;
                    continue;
                }
                if occupied && admitted {
                    // Another writer created the key meanwhile; its slot counts.
                    self.inner.len.fetch_sub(1, Ordering::AcqRel);
                }
                new.generation = self.next_generation();
                let stored = Arc::new(new);
                shard.insert(
                    key.clone(),
                    Entry {
                        tokens: stored.clone(),
                        deadline,
                        deadline_is_expiry: stored.refresh_token.is_none(),
                    },
                );
                return Ok(Swap::Stored(stored));
            }
        })
    }

    fn delete<'a>(
        &'a self,
        key: &'a AuthKey,
        generation: Generation,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let deleted = {
            let mut shard = self.write(key);
            let matches = shard
                .get(key)
                .is_some_and(|entry| entry.tokens.generation == generation);
            if matches {
                shard.remove(key);
                self.inner.len.fetch_sub(1, Ordering::AcqRel);
            }
            matches
        };
        Box::pin(std::future::ready(Ok(deleted)))
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

    /// What makes the unchecked read safe: the coordinator's hot path never serves an
    /// access token past its expiry, whatever the store returns.
    #[tokio::test]
    async fn the_hot_path_serves_no_expired_access_token() {
        let store = Arc::new(MemoryStore::new());
        let coordinator = crate::RefreshCoordinator::new(store.clone());
        let (expired, valid) = (key("expired"), key("valid"));
        put(
            &store,
            &expired,
            TokenSet::new(Secret::new("old")).with_expires_in(Duration::ZERO),
        )
        .await;
        let hour = Duration::from_secs(3600);
        put(
            &store,
            &valid,
            TokenSet::new(Secret::new("new")).with_expires_in(hour),
        )
        .await;
        let mut shown = None;
        assert!(store.peek_now_unchecked_expiry(&expired, &mut |tokens| {
            shown = tokens.map(|tokens| tokens.access_token.expose().to_owned());
        }));
        assert_eq!(shown.as_deref(), Some("old"));
        assert!(coordinator.token_now(&expired).is_none());
        let served = coordinator
            .token_now(&valid)
            .expect("a valid token is served");
        assert_eq!(served.header.unwrap(), "Bearer new");
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entries_free_their_slots() {
        let store = MemoryStore::builder().max_capacity(2).build();
        let short = || TokenSet::new(Secret::new("a")).with_expires_in(Duration::from_secs(60));
        put(&store, &key("one"), short()).await;
        put(&store, &key("two"), short()).await;
        assert!(
            store
                .compare_and_swap(&key("three"), None, short())
                .await
                .is_err()
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        // Both expired: gone for readers, and their slots are reclaimed for a new key.
        assert!(store.load(&key("one")).await.unwrap().is_none());
        assert!(store.load_now(&key("two")).unwrap().is_none());
        // The hot path's read leaves the access token's expiry to its caller.
        let mut unchecked = None;
        store.peek_now_unchecked_expiry(&key("two"), &mut |tokens| {
            unchecked = tokens.map(|tokens| tokens.refresh_token.is_none());
        });
        assert_eq!(unchecked, Some(true));
        put(&store, &key("three"), short()).await;
        assert_eq!(store.entry_count(), 1);
        // An expired key can be written again as new.
        put(&store, &key("three"), short()).await;
        assert_eq!(store.entry_count(), 1);
    }
}
