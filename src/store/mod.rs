//! Where credentials live.
//!
//! A [`CredentialStore`] holds one [`TokenSet`] per [`AuthKey`]. Every write is a
//! compare-and-swap on the stored [`Generation`]: the writer names the generation it
//! read, and the write fails if anything was written since. That is what keeps a slow
//! refresh from overwriting the tokens of an interactive login that finished meanwhile.

mod memory;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use memory::{MemoryStore, MemoryStoreBuilder};

use crate::error::StoreError;
use crate::key::AuthKey;
use crate::token::{Generation, TokenSet};

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
}

impl<T: CredentialStore + ?Sized> CredentialStore for Arc<T> {
    fn load<'a>(
        &'a self,
        key: &'a AuthKey,
    ) -> BoxFuture<'a, Result<Option<Arc<TokenSet>>, StoreError>> {
        (**self).load(key)
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
}
