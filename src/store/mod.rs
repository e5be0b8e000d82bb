//! Where credentials live.
//!
//! A [`CredentialStore`] holds one [`TokenSet`] per [`AuthKey`]. Every write is a
//! compare-and-swap on the stored [`Generation`]: the writer names the generation it
//! read, and the write fails if anything was written since. That is what keeps a slow
//! refresh from overwriting the tokens of an interactive login that finished meanwhile.
//!
//! A store shared by several processes ([`SqliteStore`],
//! feature `sqlite`, one machine; [`RedisStore`], feature
//! `redis`, replicas anywhere) also hands out a per-key **redemption lease** with a fencing value:
//! the process whose local flight leads takes the lease before it redeems, and its write
//! carries the fence and fails if the lease was lost. Processes that find the lease held
//! wait for the holder's write (bounded by the lease) instead of redeeming themselves:
//! one redemption per rejected token across processes (docs/architecture.md: fencing across processes).

mod memory;
#[cfg(feature = "redis")]
mod redis;
#[cfg(any(feature = "sqlite", feature = "redis"))]
mod sealing;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::{RedisStore, RedisStoreBuilder};
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use sqlite::SqliteStore;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use crate::token::Generation;
pub use memory::{MemoryStore, MemoryStoreBuilder};
#[cfg(any(feature = "sqlite", feature = "redis"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "sqlite", feature = "redis"))))]
pub use sealing::{InvalidKeyId, SealReport, SealingKeys};

use crate::fault::StoreError;
use crate::key::AuthKey;
use crate::token::TokenSet;

/// A boxed, `Send` future, as returned by the store traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The outcome of [`CredentialStore::compare_and_swap`]; see the example there.
#[derive(Clone, Debug)]
pub enum Swap {
    /// The new token set was stored under a fresh generation.
    Stored(Arc<TokenSet>),
    /// The stored generation was not the expected one; nothing was written. Holds what
    /// is stored now.
    Conflict(Option<Arc<TokenSet>>),
}

/// Small shared records (flows, client registrations) of a store several processes use:
/// named byte values with a time to live and compare-and-set.
///
/// [`FlowStore::shared`](crate::oauth::FlowStore::shared) and
/// [`Registrar::with_records`](crate::oauth::Registrar::with_records) keep their state here, so a
/// callback that lands on another replica finds its flow, and restarts keep pending
/// flows and client registrations. [`SqliteStore`] and [`RedisStore`] implement it.
pub trait SharedRecords: Send + Sync + 'static {
    /// The value of `name`, unless absent or expired.
    fn get_record<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>>;

    /// Sets `name` to `value` for `ttl` if it now holds `expected` (`None`: absent or
    /// expired). Returns whether it was set.
    fn compare_and_set_record<'a>(
        &'a self,
        name: &'a str,
        expected: Option<&'a [u8]>,
        value: &'a [u8],
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
}

/// A redemption lease held on one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The fencing value: strictly larger than every earlier lease's, checked by
    /// [`CredentialStore::compare_and_swap_fenced`].
    pub fence: u64,
}

/// The outcome of [`CredentialStore::acquire_lease`].
#[derive(Clone, Debug)]
pub enum LeaseOutcome {
    /// The caller holds the lease: redeem, then write with the fence.
    Acquired(Lease),
    /// The stored generation is no longer the one to redeem: someone wrote meanwhile.
    /// Holds what is stored now.
    Superseded(Option<Arc<TokenSet>>),
    /// Another process holds the lease for this long at most: wait for its write.
    Held(std::time::Duration),
}

/// Persistent, shared storage of token sets with generation compare-and-swap.
///
/// Implementations must make `compare_and_swap` and `delete` atomic per key and assign
/// strictly increasing generations (never reusing one, even after a delete), so that a
/// generation read once identifies exactly one write.
///
/// ```
/// use tower_mcp_auth::store::{CredentialStore, MemoryStore, Swap};
/// use tower_mcp_auth::{AuthKey, Principal, Secret, ServerBinding, TokenSet};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let binding = ServerBinding::public_client("https://mcp.example/mcp", "https://as.example/token", "c")?;
/// let key = AuthKey::new(&Principal::new("acme", "alice"), binding.id());
/// let store = MemoryStore::new();
///
/// let Swap::Stored(first) = store.compare_and_swap(&key, None, TokenSet::new(Secret::new("a1"))).await? else {
///     unreachable!()
/// };
/// // A writer that still expects "nothing stored" loses.
/// assert!(matches!(store.compare_and_swap(&key, None, TokenSet::new(Secret::new("a2"))).await?, Swap::Conflict(_)));
/// assert_eq!(store.load(&key).await?.unwrap().generation, first.generation);
/// # Ok(())
/// # }
/// ```
pub trait CredentialStore: Send + Sync + 'static {
    /// The token set stored for `key`.
    fn load<'a>(
        &'a self,
        key: &'a AuthKey,
    ) -> BoxFuture<'a, Result<Option<Arc<TokenSet>>, StoreError>>;

    /// The token set stored for `key`, if the store can tell without waiting (an
    /// in-memory store); `None` when it must be asked with [`load`](Self::load). The
    /// layers' hot path uses it to skip a future per request.
    fn load_now(&self, key: &AuthKey) -> Option<Option<Arc<TokenSet>>> {
        let _ = key;
        None
    }

    /// [`load_now`](Self::load_now) for the layers' hot path, which checks the access
    /// token's `expires_at` itself on every request: `read` is shown the token set
    /// stored for `key` (or `None`) in place, so an in-memory store hands out no
    /// reference, and the store may skip its own check of that expiry (a clock read
    /// less per request) and show a token set whose access token has expired. Every
    /// other check stays. Returns `false`, without calling `read`, when the store must
    /// be asked with [`load`](Self::load). The default calls `load_now`.
    ///
    /// ```
    /// use tower_mcp_auth::store::{CredentialStore, MemoryStore};
    /// use tower_mcp_auth::{AuthKey, Principal, ServerBinding};
    ///
    /// let binding = ServerBinding::public_client(
    ///     "https://mcp.example.com/mcp",
    ///     "https://auth.example.com/token",
    ///     "my-client",
    /// )?;
    /// let key = AuthKey::new(&Principal::new("acme", "alice"), binding.id());
    /// let mut stored = None;
    /// let answered = MemoryStore::new().peek_now_unchecked_expiry(&key, &mut |tokens| {
    ///     stored = Some(tokens.is_some());
    /// });
    /// // An in-memory store always answers at once; nothing is stored for alice yet.
    /// assert!(answered);
    /// assert_eq!(stored, Some(false));
    /// # Ok::<(), tower_mcp_auth::error::ConfigError>(())
    /// ```
    fn peek_now_unchecked_expiry(
        &self,
        key: &AuthKey,
        read: &mut dyn FnMut(Option<&TokenSet>),
    ) -> bool {
        match self.load_now(key) {
            Some(tokens) => {
                read(tokens.as_deref());
                true
            }
            None => false,
        }
    }

    /// Stores `new` (its `generation` is ignored and replaced) if the stored generation
    /// is `expected` (`None`: nothing stored).
    fn compare_and_swap<'a>(
        &'a self,
        key: &'a AuthKey,
        expected: Option<Generation>,
        new: TokenSet,
    ) -> BoxFuture<'a, Result<Swap, StoreError>>;

    /// Deletes the token set for `key` if it is still at `generation`. Returns whether
    /// it deleted anything.
    fn delete<'a>(
        &'a self,
        key: &'a AuthKey,
        generation: Generation,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// When this process last found the store had lost its data (see
    /// [`StoreWiped`](crate::error::StoreWiped)); `None`: never, or a store that cannot tell
    /// (in-process stores, whose data lives and dies with the process). Readiness
    /// checks report it.
    fn lost_data_at(&self) -> Option<std::time::SystemTime> {
        None
    }

    /// Whether other processes share this store. Only then are leases taken: inside
    /// one process the coordinator's own single-flight already makes one redemption.
    fn is_shared(&self) -> bool {
        false
    }

    /// Takes the redemption lease of `key` for `ttl` if the stored generation is still
    /// `trigger` and no unexpired lease is held. The default (in-process stores) always
    /// grants it.
    fn acquire_lease<'a>(
        &'a self,
        key: &'a AuthKey,
        trigger: Generation,
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<LeaseOutcome, StoreError>> {
        let _ = (key, trigger, ttl);
        Box::pin(async { Ok(LeaseOutcome::Acquired(Lease { fence: 0 })) })
    }

    /// [`compare_and_swap`](Self::compare_and_swap) that also requires `lease` to still
    /// be the key's lease, and releases it. A lost lease is a conflict: nothing is
    /// written. The default ignores the lease.
    fn compare_and_swap_fenced<'a>(
        &'a self,
        key: &'a AuthKey,
        expected: Option<Generation>,
        new: TokenSet,
        lease: Lease,
    ) -> BoxFuture<'a, Result<Swap, StoreError>> {
        let _ = lease;
        self.compare_and_swap(key, expected, new)
    }

    /// Gives `lease` up without writing (the redemption failed or was not needed).
    fn release_lease<'a>(
        &'a self,
        key: &'a AuthKey,
        lease: Lease,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let _ = (key, lease);
        Box::pin(async { Ok(()) })
    }

    /// Extends `lease` to `ttl` from now while it is still the key's lease: the living
    /// holder's heartbeat, so a lease can be short (a dead holder blocks the others
    /// that long at most) whatever the redemption takes. Returns whether the lease was
    /// still the key's. The default (in-process stores) always renews.
    fn renew_lease<'a>(
        &'a self,
        key: &'a AuthKey,
        lease: Lease,
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let _ = (key, lease, ttl);
        Box::pin(async { Ok(true) })
    }
}

impl<T: CredentialStore + ?Sized> CredentialStore for Arc<T> {
    fn load<'a>(
        &'a self,
        key: &'a AuthKey,
    ) -> BoxFuture<'a, Result<Option<Arc<TokenSet>>, StoreError>> {
        (**self).load(key)
    }

    fn load_now(&self, key: &AuthKey) -> Option<Option<Arc<TokenSet>>> {
        (**self).load_now(key)
    }

    fn peek_now_unchecked_expiry(
        &self,
        key: &AuthKey,
        read: &mut dyn FnMut(Option<&TokenSet>),
    ) -> bool {
        (**self).peek_now_unchecked_expiry(key, read)
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a AuthKey,
        expected: Option<Generation>,
        new: TokenSet,
    ) -> BoxFuture<'a, Result<Swap, StoreError>> {
        (**self).compare_and_swap(key, expected, new)
    }

    fn delete<'a>(
        &'a self,
        key: &'a AuthKey,
        generation: Generation,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        (**self).delete(key, generation)
    }

    fn is_shared(&self) -> bool {
        (**self).is_shared()
    }

    fn lost_data_at(&self) -> Option<std::time::SystemTime> {
        (**self).lost_data_at()
    }

    fn acquire_lease<'a>(
        &'a self,
        key: &'a AuthKey,
        trigger: Generation,
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<LeaseOutcome, StoreError>> {
        (**self).acquire_lease(key, trigger, ttl)
    }

    fn compare_and_swap_fenced<'a>(
        &'a self,
        key: &'a AuthKey,
        expected: Option<Generation>,
        new: TokenSet,
        lease: Lease,
    ) -> BoxFuture<'a, Result<Swap, StoreError>> {
        (**self).compare_and_swap_fenced(key, expected, new, lease)
    }

    fn release_lease<'a>(
        &'a self,
        key: &'a AuthKey,
        lease: Lease,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        (**self).release_lease(key, lease)
    }

    fn renew_lease<'a>(
        &'a self,
        key: &'a AuthKey,
        lease: Lease,
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        (**self).renew_lease(key, lease, ttl)
    }
}
