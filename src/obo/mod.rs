//! On-Behalf-Of token exchange: the user's incoming token (the assertion) becomes a
//! token for one MCP server, cached and single-flight.
//!
//! LibreChat's OBO path exchanged on every request and stampeded the identity provider
//! when many requests of one user arrived together. Here the result is cached per
//! (tenant, assertion digest, scopes, audience, resource) until shortly before the
//! earlier of the token's and the assertion's expiry, and concurrent first calls for a
//! key make one exchange, run in its own task (a cancelled caller never cancels or
//! repeats it). The raw assertion is never a key and never logged.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tracing::{Instrument, debug, info_span, warn};

use crate::error::Error;
use crate::fault::TransientReason;
use crate::http_client::AuthHttpClient;
use crate::key::Principal;
use crate::oauth::exchange::{
    AssertionFailure, AssertionRequest, JwtExpiry, jwt_expiry, request_token,
};
use crate::single_flight::SingleFlight;
use crate::token::Secret;

mod config;

pub use crate::oauth::exchange::{
    ACCESS_TOKEN_TYPE, ClientAuth, ID_JAG_TOKEN_TYPE, ID_TOKEN_TYPE, JWT_BEARER, JwtSigner,
    KeyError, OboGrant, TOKEN_EXCHANGE,
};
pub use config::{OboConfig, OboError, UserAssertion};

/// The longest `Retry-After` honoured before the one retry.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// An exchanged token and until when it may be used.
#[derive(Clone)]
pub struct OboToken {
    /// The token for the MCP server.
    pub access_token: Secret,
    /// When it stops being served from the cache: the earlier of its expiry and the
    /// assertion's, minus the skew.
    pub use_until: SystemTime,
}

impl fmt::Debug for OboToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OboToken")
            .field("access_token", &self.access_token)
            .field("use_until", &self.use_until)
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    tenant: Arc<str>,
    assertion: [u8; 32],
    scopes: Arc<str>,
    audience: Option<Arc<str>>,
    resource: Option<Arc<str>>,
}

struct UseUntil;

impl moka::Expiry<CacheKey, Arc<OboToken>> for UseUntil {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        token: &Arc<OboToken>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(crate::limits::ttl_until(token.use_until))
    }

    fn expire_after_update(
        &self,
        key: &CacheKey,
        token: &Arc<OboToken>,
        now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, token, now)
    }
}

type Outcome = Result<Arc<OboToken>, Error>;

/// Counters of an [`OboExchanger`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OboStats {
    /// Token requests sent to the identity provider (retries included).
    pub exchanges: u64,
    /// Calls answered from the cache.
    pub cache_hits: u64,
    /// Calls that waited on an exchange another call started.
    pub joined: u64,
}

/// Exchanges user assertions for tokens, cached and single-flight. Clones share
/// everything.
///
/// ```no_run
/// use tower_mcp_auth::{obo::ClientAuth, obo::OboConfig, OboExchanger, obo::OboGrant, Principal, Secret, UserAssertion};
///
/// # async fn run() -> Result<(), tower_mcp_auth::Error> {
/// let exchanger = OboExchanger::new(OboConfig::new(
///     "https://idp.example.com/token".parse().unwrap(),
///     "gateway",
///     ClientAuth::SecretBasic(Secret::new("s3cr3t")),
///     OboGrant::token_exchange(),
/// ).with_audience("https://mcp.example.com"));
/// let token = exchanger
///     .token(&Principal::new("acme", "alice"), &UserAssertion::new("incoming-token"))
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct OboExchanger {
    inner: Arc<Inner>,
}

struct Inner {
    config: OboConfig,
    http: AuthHttpClient,
    cache: moka::future::Cache<CacheKey, Arc<OboToken>>,
    flights: Arc<SingleFlight<CacheKey, Outcome>>,
    /// Forced re-exchanges after a 401, single-flight apart from first exchanges.
    forced: Arc<SingleFlight<CacheKey, Outcome>>,
    exchanges: AtomicU64,
    cache_hits: AtomicU64,
    joined: AtomicU64,
}

impl fmt::Debug for OboExchanger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OboExchanger")
            .field("config", &self.inner.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl OboExchanger {
    /// An exchanger over the default HTTP client.
    pub fn new(config: OboConfig) -> Self {
        Self::with_http_client(config, AuthHttpClient::new())
    }

    /// An exchanger over `http`.
    pub fn with_http_client(config: OboConfig, http: AuthHttpClient) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                http,
                cache: moka::future::Cache::builder()
                    .max_capacity(100_000)
                    .expire_after(UseUntil)
                    .build(),
                flights: Arc::new(SingleFlight::new()),
                forced: Arc::new(SingleFlight::new()),
                exchanges: AtomicU64::new(0),
                cache_hits: AtomicU64::new(0),
                joined: AtomicU64::new(0),
            }),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> OboStats {
        OboStats {
            exchanges: self.inner.exchanges.load(Ordering::Relaxed),
            cache_hits: self.inner.cache_hits.load(Ordering::Relaxed),
            joined: self.inner.joined.load(Ordering::Relaxed),
        }
    }

    fn key(&self, principal: &Principal, assertion: &UserAssertion) -> CacheKey {
        let config = &self.inner.config;
        CacheKey {
            tenant: Arc::from(principal.tenant()),
            assertion: crate::crypto::sha256(&[assertion.secret().expose().as_bytes()]),
            scopes: Arc::from(config.scopes.join(" ")),
            audience: config.audience.as_deref().map(Arc::from),
            resource: config.resource.as_deref().map(Arc::from),
        }
    }

    /// The token for `assertion`: from the cache, from the exchange in flight for the
    /// same key, or from a new exchange.
    ///
    /// # Errors
    ///
    /// [`Error::Obo`] for an expired assertion or a refused exchange, [`Error::Transient`]
    /// when the identity provider failed twice.
    pub async fn token(&self, principal: &Principal, assertion: &UserAssertion) -> Outcome {
        check_assertion(assertion)?;
        let key = self.key(principal, assertion);
        if let Some(token) = self.inner.cache.get(&key).await
            && token.use_until > SystemTime::now()
        {
            self.inner.cache_hits.fetch_add(1, Ordering::Relaxed);
            crate::metrics::count(crate::metrics::OBO_CACHE_HITS);
            return Ok(token);
        }
        self.fly(&self.inner.flights, key, assertion).await
    }

    /// A new token after the MCP server refused `rejected`: the cached token if it is
    /// already another one (someone re-exchanged meanwhile), else one forced exchange
    /// that bypasses the cache, shared by every caller refused with the same token.
    ///
    /// # Errors
    ///
    /// As [`token`](Self::token).
    pub async fn token_after_rejection(
        &self,
        principal: &Principal,
        assertion: &UserAssertion,
        rejected: &OboToken,
    ) -> Outcome {
        check_assertion(assertion)?;
        let key = self.key(principal, assertion);
        if let Some(cached) = self.inner.cache.get(&key).await {
            if cached.access_token != rejected.access_token && cached.use_until > SystemTime::now()
            {
                self.inner.cache_hits.fetch_add(1, Ordering::Relaxed);
                crate::metrics::count(crate::metrics::OBO_CACHE_HITS);
                return Ok(cached);
            }
            self.inner.cache.invalidate(&key).await;
        }
        self.fly(&self.inner.forced, key, assertion).await
    }

    /// A new token, bypassing the cache: for when the MCP server refused the cached
    /// one. The result replaces the cached token. Concurrent forced calls for one key
    /// share one exchange, which runs in its own task, so a caller that gives up does
    /// not cut it short. Prefer [`token_after_rejection`](Self::token_after_rejection),
    /// which also skips the exchange when another caller already made it.
    ///
    /// # Errors
    ///
    /// As [`token`](Self::token).
    pub async fn token_uncached(
        &self,
        principal: &Principal,
        assertion: &UserAssertion,
    ) -> Outcome {
        check_assertion(assertion)?;
        let key = self.key(principal, assertion);
        self.inner.cache.invalidate(&key).await;
        self.fly(&self.inner.forced, key, assertion).await
    }

    /// Joins `flights`' exchange for `key`, starting it (in its own task) if there is
    /// none. A panic inside the exchange ends the flight with an error instead of
    /// leaving its waiters to retry.
    async fn fly(
        &self,
        flights: &Arc<SingleFlight<CacheKey, Outcome>>,
        key: CacheKey,
        assertion: &UserAssertion,
    ) -> Outcome {
        let (waiter, completer) = SingleFlight::join(flights, &key);
        match completer {
            Some(completer) => {
                let this = self.clone();
                let assertion = assertion.clone();
                let span = info_span!("obo_exchange", tenant = %key.tenant);
                tokio::spawn(
                    async move {
                        let outcome = crate::limits::catch_panic(this.exchange(&key, &assertion))
                            .await
                            .unwrap_or_else(|_| {
                                tracing::error!("OBO exchange panicked; failing its callers");
                                Err(Error::transient(TransientReason::Panicked, None))
                            });
                        completer.complete(outcome);
                    }
                    .instrument(span),
                );
            }
            None => {
                self.inner.joined.fetch_add(1, Ordering::Relaxed);
            }
        }
        waiter
            .await
            .unwrap_or_else(|| Err(Error::transient(TransientReason::Abandoned, None)))
    }

    /// One exchange with at most one retry of a transient failure; caches a success.
    async fn exchange(&self, key: &CacheKey, assertion: &UserAssertion) -> Outcome {
        let config = &self.inner.config;
        let attempt = async {
            match self.attempt(assertion).await {
                Err(AssertionFailure::Transient {
                    reason,
                    retry_after,
                }) => {
                    let wait = retry_after.map_or(config.retry_backoff, |d| d.min(MAX_RETRY_AFTER));
                    warn!(%reason, ?wait, "transient OBO exchange failure; retrying once");
                    tokio::time::sleep(wait).await;
                    self.attempt(assertion).await
                }
                other => other,
            }
        };
        let granted = match tokio::time::timeout(config.timeout, attempt).await {
            Err(_) => {
                return Err(Error::Transient {
                    reason: TransientReason::Timeout(config.timeout),
                    retry_after: None,
                    www_authenticate: Vec::new(),
                });
            }
            Ok(Err(AssertionFailure::Rejected {
                code,
                description,
                claims,
            })) => {
                debug!(%code, "OBO exchange rejected");
                return Err(Error::Obo(OboError::Rejected {
                    code,
                    description,
                    claims,
                }));
            }
            Ok(Err(AssertionFailure::Transient {
                reason,
                retry_after,
            })) => {
                return Err(Error::Transient {
                    reason,
                    retry_after,
                    www_authenticate: Vec::new(),
                });
            }
            Ok(Ok(granted)) => granted,
        };
        let now = SystemTime::now();
        let expires_at = granted
            .expires_in
            .map(|d| crate::limits::system_after(now, d));
        let assertion_expiry = match jwt_expiry(assertion.secret().expose()) {
            JwtExpiry::At(at) => Some(at),
            JwtExpiry::Unknown | JwtExpiry::Invalid => None,
        };
        let use_until = [expires_at, assertion_expiry]
            .into_iter()
            .flatten()
            .min()
            .map(|at| at.checked_sub(config.skew).unwrap_or(now))
            // Neither says when: a short, safe lifetime.
            .unwrap_or(now + Duration::from_secs(300));
        let token = Arc::new(OboToken {
            access_token: granted.access_token,
            use_until,
        });
        if use_until > now {
            self.inner.cache.insert(key.clone(), token.clone()).await;
        }
        Ok(token)
    }

    /// One pass through the chain of exchanges.
    async fn attempt(
        &self,
        assertion: &UserAssertion,
    ) -> Result<crate::oauth::grants::GrantedTokens, AssertionFailure> {
        let mut config = &self.inner.config;
        let mut assertion = assertion.secret().clone();
        loop {
            self.inner.exchanges.fetch_add(1, Ordering::Relaxed);
            crate::metrics::count(crate::metrics::OBO_EXCHANGES);
            let granted = request_token(
                &self.inner.http,
                &AssertionRequest {
                    token_endpoint: &config.token_endpoint,
                    client_id: &config.client_id,
                    client_auth: &config.client_auth,
                    grant: &config.grant,
                    assertion: &assertion,
                    scopes: &config.scopes,
                    audience: config.audience.as_deref(),
                    resource: config.resource.as_deref(),
                    actor_token: config.actor_token.as_ref(),
                },
            )
            .await?;
            match &config.next {
                Some(next) => {
                    config = next;
                    assertion = granted.access_token;
                }
                None => return Ok(granted),
            }
        }
    }
}

fn check_assertion(assertion: &UserAssertion) -> Result<(), Error> {
    match jwt_expiry(assertion.secret().expose()) {
        JwtExpiry::At(exp) if exp <= SystemTime::now() => {
            Err(Error::Obo(OboError::AssertionExpired))
        }
        JwtExpiry::Invalid => Err(Error::Obo(OboError::InvalidAssertion)),
        JwtExpiry::At(_) | JwtExpiry::Unknown => Ok(()),
    }
}
