//! The refresh coordinator: at most one refresh-token redemption per rejected token.
//!
//! How it keeps the invariants of `docs/architecture.md`:
//!
//! * **One redemption per rejected token.** A caller names the generation it sent. If
//!   the store already holds another generation, the caller replays with that one and
//!   nothing is redeemed. Otherwise it joins the key's single flight.
//! * **Owner-neutral.** The flight's work is `tokio::spawn`ed and owns its completer;
//!   callers only await. A dropped or timed-out caller abandons its own wait and nothing
//!   else.
//! * **Read at redemption, write by CAS.** The redemption loads the refresh token from
//!   the store when it starts and writes the result with a compare-and-swap on the
//!   generation it read. If something newer was stored meanwhile, the newer one wins and
//!   is returned. The rotated refresh token is stored before any caller sees the new
//!   access token.
//! * **Classified failures.** `invalid_grant` retires the refresh token; client
//!   rejection keeps tokens; transient failures keep everything and put the key into a
//!   cooldown (exponential, honouring `Retry-After`) during which callers get the failure
//!   at once instead of making another attempt.
//! * **Refresh ahead.** Inside a margin before expiry the current token is served and
//!   one background redemption runs; callers block only once the token has expired.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::{Instrument, debug, info_span, warn};

use crate::binding::ServerBinding;
use crate::error::Error;
use crate::fault::{ReauthReason, TransientReason};
use crate::http_client::AuthHttpClient;
use crate::key::AuthKey;
use crate::oauth::grants::{self, GrantError};
use crate::single_flight::{Completer, SingleFlight};
use crate::store::{CredentialStore, Lease, Swap};
use crate::token::{Generation, TokenSet};

mod builder;
mod config;
mod cooldown;
mod hot;
mod lease;

pub use crate::limits::MAX_LIFETIME;
pub(crate) use crate::token::ServeRule;
pub use builder::RefreshCoordinatorBuilder;
pub use config::RefreshConfig;
use cooldown::{Cooldown, Need};
use lease::Leased;

type Outcome = Result<Arc<TokenSet>, Error>;

/// How long the read cache of a shared store trusts an entry without reading the store.
const SHARED_CACHE_TTL: Duration = Duration::from_secs(1);

/// Counters since the coordinator was built, for metrics.
///
/// ```
/// use std::sync::Arc;
/// use tower_mcp_auth::{store::MemoryStore, RefreshCoordinator};
///
/// let coordinator = RefreshCoordinator::new(Arc::new(MemoryStore::new()));
/// let stats = coordinator.stats();
/// // Redemptions per key and lifetime should stay near 1; many blocked waits mean
/// // tokens expire before the refresh-ahead margin catches them.
/// assert_eq!((stats.redemptions, stats.blocked_waits), (0, 0));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefreshStats {
    /// Refresh-token redemptions sent to a token endpoint.
    pub redemptions: u64,
    /// Redemptions started ahead of expiry, in the background.
    pub background_refreshes: u64,
    /// Callers that had to wait for a redemption.
    pub blocked_waits: u64,
    /// Callers answered from a cooldown without any request.
    pub cooled_down: u64,
}

#[derive(Default)]
struct Counters {
    redemptions: AtomicU64,
    background_refreshes: AtomicU64,
    blocked_waits: AtomicU64,
    cooled_down: AtomicU64,
}

/// Keyed single-flight refresh of stored credentials. Cheap to clone; clones share
/// everything.
///
/// Most users never call it directly: [`SilentRefreshLayer`](crate::SilentRefreshLayer)
/// does. Build one per process (or per store) and share it between layers, so that
/// every path that refreshes a key joins the same flight.
///
/// Redemptions run on `tokio::spawn`: use it inside a tokio runtime.
///
/// ```
/// use std::sync::Arc;
/// use tower_mcp_auth::{AuthHttpClient, RefreshConfig, RefreshCoordinator, store::MemoryStore};
///
/// let coordinator = RefreshCoordinator::builder(Arc::new(MemoryStore::new()))
///     .http_client(AuthHttpClient::new())
///     .config(RefreshConfig::default())
///     .build();
/// assert_eq!(coordinator.stats().redemptions, 0);
/// ```
#[derive(Clone)]
pub struct RefreshCoordinator {
    inner: Arc<Inner>,
}

struct Inner {
    /// The key of the refresh-ahead instant cached in each token set.
    serve_rule: ServeRule,
    store: Arc<dyn CredentialStore>,
    http: AuthHttpClient,
    config: RefreshConfig,
    flights: Arc<SingleFlight<AuthKey, Outcome>>,
    cooldowns: moka::sync::Cache<AuthKey, Cooldown>,
    /// With a store shared by other processes: the last token set read or written per
    /// key, so a request with a valid token makes no store round trip. Bypassed for
    /// 401s and redemptions; replaced by every write of this process; re-read after a
    /// second, so other processes' writes are seen within one.
    hot: Option<moka::sync::Cache<AuthKey, Arc<TokenSet>>>,
    counters: Counters,
}

impl fmt::Debug for RefreshCoordinator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshCoordinator")
            .field("config", &self.inner.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl RefreshCoordinator {
    /// A coordinator over `store`, with the default HTTP client and configuration.
    pub fn new(store: Arc<dyn CredentialStore>) -> Self {
        Self::builder(store).build()
    }

    /// Configures a coordinator over `store`.
    pub fn builder(store: Arc<dyn CredentialStore>) -> RefreshCoordinatorBuilder {
        RefreshCoordinatorBuilder {
            store,
            http: None,
            config: RefreshConfig::default(),
        }
    }

    /// The credential store.
    pub fn store(&self) -> &Arc<dyn CredentialStore> {
        &self.inner.store
    }

    /// Counters since the coordinator was built.
    pub fn stats(&self) -> RefreshStats {
        let c = &self.inner.counters;
        RefreshStats {
            redemptions: c.redemptions.load(Ordering::Relaxed),
            background_refreshes: c.background_refreshes.load(Ordering::Relaxed),
            blocked_waits: c.blocked_waits.load(Ordering::Relaxed),
            cooled_down: c.cooled_down.load(Ordering::Relaxed),
        }
    }

    /// The token to send for `key`: the stored one while it is valid (starting a
    /// background refresh inside the margin), a freshly redeemed one once it has
    /// expired, or `None` when nothing usable is stored and nothing can be redeemed.
    pub async fn token(
        &self,
        key: &AuthKey,
        binding: &Arc<ServerBinding>,
    ) -> Result<Option<Arc<TokenSet>>, Error> {
        let now = SystemTime::now();
        // The read cache of a shared store: a valid token not yet due for refresh is
        // served without a round trip. Anything else reads the store.
        if let Some(hot) = &self.inner.hot
            && let Some(cached) = hot.get(key)
            && self.inner.config.usable(&cached, now)
            && self
                .inner
                .config
                .refresh_at(&cached)
                .is_none_or(|at| now < at)
        {
            return Ok(Some(cached));
        }
        let Some(stored) = self.inner.store.load(key).await.map_err(Error::Store)? else {
            self.forget(key);
            return Ok(None);
        };
        self.remember(key, &stored);
        if self.inner.config.usable(&stored, now) {
            let due = self
                .inner
                .config
                .refresh_at(&stored)
                .is_some_and(|at| now >= at);
            if due && stored.refresh_token.is_some() {
                self.refresh_in_background(key, binding, stored.generation);
            }
            return Ok(Some(stored));
        }
        if stored.refresh_token.is_none() {
            return Ok(None);
        }
        match self.redeem(key, binding, stored.generation).await {
            Ok(tokens) => Ok(Some(tokens)),
            // A network fault or a cooldown while the token is only inside the clock
            // skew allowance: it still works at the server until it really expires.
            Err(error @ Error::Transient { .. })
                if stored.expires_at.is_some_and(|at| SystemTime::now() < at) =>
            {
                debug!(%error, "refresh failed; serving the current token until it expires");
                Ok(Some(stored))
            }
            Err(error) => Err(error),
        }
    }

    /// The token to replay with after the resource server rejected the one of
    /// generation `rejected` (`None`: the request carried no token).
    ///
    /// If the store already holds another usable generation, that one is returned and
    /// nothing is redeemed. Otherwise this joins (or starts) the key's single redemption.
    pub async fn refresh_rejected(
        &self,
        key: &AuthKey,
        binding: &Arc<ServerBinding>,
        rejected: Option<Generation>,
    ) -> Result<Arc<TokenSet>, Error> {
        // A 401: whatever this process cached is suspect; the store decides.
        self.forget(key);
        let Some(stored) = self.inner.store.load(key).await.map_err(Error::Store)? else {
            return Err(Error::reauth(ReauthReason::NoCredentials));
        };
        if Some(stored.generation) != rejected && stored.is_usable() {
            return Ok(stored);
        }
        if stored.refresh_token.is_none() {
            return Err(Error::reauth(ReauthReason::NoRefreshToken));
        }
        self.redeem(key, binding, stored.generation).await
    }

    /// Joins the flight that redeems generation `trigger` of `key`, starting it unless
    /// the key is cooling down from a failure of that same generation.
    async fn redeem(
        &self,
        key: &AuthKey,
        binding: &Arc<ServerBinding>,
        trigger: Generation,
    ) -> Outcome {
        if let Some(error) = self.cooling_down(key, trigger, Need::Now) {
            return Err(error);
        }
        let (waiter, completer) = SingleFlight::join(&self.inner.flights, key);
        if let Some(completer) = completer {
            self.spawn_redemption(completer, key, binding, trigger, Need::Now);
        }
        self.inner
            .counters
            .blocked_waits
            .fetch_add(1, Ordering::Relaxed);
        crate::metrics::count(crate::metrics::REFRESH_BLOCKED_WAITS);
        waiter
            .await
            .unwrap_or_else(|| Err(Error::transient(TransientReason::Abandoned, None)))
    }

    fn refresh_in_background(
        &self,
        key: &AuthKey,
        binding: &Arc<ServerBinding>,
        generation: Generation,
    ) {
        if self.inner.flights.is_in_flight(key)
            || self.cooling_down(key, generation, Need::Ahead).is_some()
        {
            return;
        }
        // The waiter is dropped at once: nobody waits, the flight still runs to the end.
        if let (_, Some(completer)) = SingleFlight::join(&self.inner.flights, key) {
            self.inner
                .counters
                .background_refreshes
                .fetch_add(1, Ordering::Relaxed);
            self.spawn_redemption(completer, key, binding, generation, Need::Ahead);
        }
    }

    fn spawn_redemption(
        &self,
        completer: Completer<AuthKey, Outcome>,
        key: &AuthKey,
        binding: &Arc<ServerBinding>,
        trigger: Generation,
        need: Need,
    ) {
        let this = self.clone();
        let key = key.clone();
        let binding = binding.clone();
        let span = info_span!("refresh", key = %key, generation = %trigger);
        tokio::spawn(
            async move {
                let config = &this.inner.config;
                // With a shared store, waiting on another process's lease comes first.
                let timeout = if this.inner.store.is_shared() {
                    config.timeout.saturating_add(config.lease_ttl())
                } else {
                    config.timeout
                };
                let redemption =
                    tokio::time::timeout(timeout, this.redemption(&key, &binding, trigger, need));
                // A panic inside the redemption still records a failure (a cooldown), so
                // a bug can never become a loop of redemptions of one refresh token.
                let outcome = match crate::limits::catch_panic(redemption).await {
                    Ok(Ok(outcome)) => outcome,
                    Ok(Err(_)) => Err(Error::transient(TransientReason::Timeout(timeout), None)),
                    Err(_) => {
                        tracing::error!("refresh redemption panicked; cooling the key down");
                        Err(Error::transient(TransientReason::Panicked, None))
                    }
                };
                this.record(&key, trigger, &outcome, need);
                match &outcome {
                    Ok(tokens) => this.remember(&key, tokens),
                    Err(_) => this.forget(&key),
                }
                completer.complete(outcome);
            }
            .instrument(span),
        );
    }

    /// One redemption: read the refresh token now, redeem it, CAS the result. With a
    /// store shared by other processes, the store's lease is taken first (or the
    /// holder's write awaited), and the write carries its fence.
    async fn redemption(
        &self,
        key: &AuthKey,
        binding: &ServerBinding,
        trigger: Generation,
        need: Need,
    ) -> Outcome {
        let store = &self.inner.store;
        let Some(mut current) = store.load(key).await.map_err(Error::Store)? else {
            return Err(Error::reauth(ReauthReason::NoCredentials));
        };
        if current.generation != trigger && current.is_usable() {
            debug!(stored = %current.generation, "newer credentials already stored");
            return Ok(current);
        }
        // A caller can pass the cooldown check in `redeem` just before the previous
        // flight records its failure, and join after that flight ended, starting this
        // one: the cooldown is checked again here, after the previous flight's record.
        if let Some(error) = self.cooling_down(key, trigger, need) {
            return Err(error);
        }
        let lease = if store.is_shared() {
            match self.lease(key, current).await? {
                Leased::Acquired(lease, leased) => {
                    current = leased;
                    Some(lease)
                }
                Leased::Settled(outcome) => return outcome,
            }
        } else {
            None
        };
        // Renewed while this redemption lives: a killed process stops renewing, and the
        // others take over within the lease's TTL.
        let heartbeat = lease.map(|lease| self.heartbeat(key, lease));
        let outcome = self.redeem_and_write(key, binding, &current, lease).await;
        drop(heartbeat);
        if let (Some(lease), Err(_)) = (lease, &outcome) {
            // Nothing (or a retired refresh token) was written: free the lease for
            // whoever tries next. A failed release only delays them until it expires.
            let _ = store.release_lease(key, lease).await;
        }
        outcome
    }

    /// Redeems `current`'s refresh token and writes the result (fenced by `lease` when
    /// the store is shared).
    async fn redeem_and_write(
        &self,
        key: &AuthKey,
        binding: &ServerBinding,
        current: &Arc<TokenSet>,
        lease: Option<Lease>,
    ) -> Outcome {
        let store = &self.inner.store;
        let Some(refresh_token) = &current.refresh_token else {
            return Err(Error::reauth(ReauthReason::NoRefreshToken));
        };
        let write = |next: TokenSet| async move {
            match lease {
                Some(lease) => {
                    store
                        .compare_and_swap_fenced(key, Some(current.generation), next, lease)
                        .await
                }
                None => {
                    store
                        .compare_and_swap(key, Some(current.generation), next)
                        .await
                }
            }
            .map_err(Error::Store)
        };
        self.inner
            .counters
            .redemptions
            .fetch_add(1, Ordering::Relaxed);
        crate::metrics::count(crate::metrics::REFRESH_REDEMPTIONS);
        debug!("redeeming refresh token");
        let granted = grants::refresh(
            &self.inner.http,
            binding,
            refresh_token,
            current.scope.as_deref(),
        )
        .await;
        match granted {
            Ok(granted) => match write(granted.into_token_set(Some(current))).await? {
                Swap::Stored(stored) => {
                    debug!(stored = %stored.generation, "refreshed");
                    Ok(stored)
                }
                Swap::Conflict(Some(newer)) if newer.is_usable() => {
                    debug!(stored = %newer.generation, "a newer generation won; refresh result discarded");
                    Ok(newer)
                }
                Swap::Conflict(_) => Err(Error::reauth(ReauthReason::NoCredentials)),
            },
            Err(GrantError::InvalidGrant) => {
                warn!("refresh token rejected (invalid_grant); retiring it");
                // The retired copy keeps no refresh token. In a shared store it keeps no
                // usable access token either: another process must never take it for
                // newer, usable credentials and replay with a dead token. (In memory it
                // keeps the access token's expiry, so the entry stays until then and
                // callers learn there is no refresh token.)
                let now = SystemTime::now();
                let expires_at = if store.is_shared() {
                    Some(current.expires_at.map_or(now, |at| at.min(now)))
                } else {
                    current.expires_at
                };
                let retired = TokenSet {
                    refresh_token: None,
                    expires_at,
                    ..(**current).clone()
                };
                // A conflict means newer credentials arrived: they stay untouched.
                write(retired).await?;
                Err(Error::reauth(ReauthReason::InvalidGrant))
            }
            Err(error) => {
                warn!(?error, "refresh failed; credentials kept");
                Err(error.into())
            }
        }
    }

    /// Keeps `tokens` in the read cache (shared stores only), unless a newer generation
    /// is already there.
    fn remember(&self, key: &AuthKey, tokens: &Arc<TokenSet>) {
        if let Some(hot) = &self.inner.hot {
            let newer = hot
                .get(key)
                .is_some_and(|cached| cached.generation > tokens.generation);
            if !newer {
                hot.insert(key.clone(), tokens.clone());
            }
        }
    }

    /// Drops `key`'s tokens from this coordinator's in-memory cache, so the next call
    /// reads the store: after deleting a user's credentials there (a sign-out).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use tower_mcp_auth::{store::MemoryStore, AuthKey, Principal, RefreshCoordinator, ServerBinding};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let binding = ServerBinding::public_client("https://mcp.example.com/mcp", "https://auth.example.com/token", "my-client")?;
    /// let coordinator = RefreshCoordinator::new(Arc::new(MemoryStore::new()));
    /// let key = AuthKey::new(&Principal::new("acme", "alice"), binding.id());
    /// coordinator.forget(&key);
    /// # Ok(())
    /// # }
    /// ```
    pub fn forget(&self, key: &AuthKey) {
        if let Some(hot) = &self.inner.hot {
            hot.invalidate(key);
        }
    }
}
