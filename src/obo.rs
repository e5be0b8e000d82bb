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
use url::Url;

use crate::error::{Error, TransientReason};
use crate::http_client::AuthHttpClient;
use crate::key::Principal;
use crate::oauth::exchange::{
    AssertionFailure, AssertionRequest, ClientAuth, JwtExpiry, OboGrant, jwt_expiry, request_token,
};
use crate::single_flight::SingleFlight;
use crate::token::Secret;

/// The user's incoming token, put in a request's extensions for
/// [`OboHeaderLayer`](crate::OboHeaderLayer). It is exchanged, never forwarded.
///
/// ```
/// use tower_mcp_auth::UserAssertion;
///
/// let assertion = UserAssertion::new("eyJhbGciOi...");
/// assert_eq!(format!("{assertion:?}"), "UserAssertion(<redacted>)");
/// ```
#[derive(Clone)]
pub struct UserAssertion(Secret);

impl UserAssertion {
    /// Wraps the user's token.
    pub fn new(token: impl Into<Arc<str>>) -> Self {
        Self(Secret::new(token))
    }

    /// The token.
    pub fn secret(&self) -> &Secret {
        &self.0
    }
}

impl fmt::Debug for UserAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UserAssertion(<redacted>)")
    }
}

/// Why an On-Behalf-Of token could not be had. The request was not sent.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OboError {
    /// The request carried no [`UserAssertion`].
    #[error("no user assertion in the request's extensions")]
    MissingAssertion,
    /// The assertion is a JWT whose `exp` has passed.
    #[error("the user assertion has expired")]
    AssertionExpired,
    /// The assertion is a JWT whose `exp` is not a usable time (negative, fractional,
    /// or past the year 9999). Nothing was exchanged.
    #[error("the user assertion has an invalid expiry")]
    InvalidAssertion,
    /// The identity provider refused the exchange (`invalid_grant`, `invalid_scope`,
    /// `unauthorized_client`, `interaction_required`, ...). Not retried.
    #[error("exchange rejected ({code})")]
    Rejected {
        /// The OAuth error code.
        code: String,
        /// The provider's description, if any.
        description: Option<String>,
        /// The claims challenge (`interaction_required` with Conditional Access), to pass
        /// to the user's client, e.g. in a 401's `WWW-Authenticate`.
        claims: Option<String>,
    },
    /// The MCP server refused a freshly exchanged token too.
    #[error("the resource server rejected a freshly exchanged token")]
    RejectedByResource,
}

/// What to exchange the assertion for, where, and as which client.
///
/// ```
/// use tower_mcp_auth::{ClientAuth, OboConfig, OboGrant, Secret};
///
/// let config = OboConfig::new(
///     "https://login.microsoftonline.com/tenant-id/oauth2/v2.0/token".parse().unwrap(),
///     "middle-tier-client-id",
///     ClientAuth::SecretPost(Secret::new("s3cr3t")),
///     OboGrant::EntraOnBehalfOf,
/// )
/// .with_scopes(["api://mcp-server/.default"]);
/// assert!(!format!("{config:?}").contains("s3cr3t"));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OboConfig {
    /// The identity provider's token endpoint.
    pub token_endpoint: Url,
    /// This (middle-tier) client's id.
    pub client_id: String,
    /// How it authenticates.
    pub client_auth: ClientAuth,
    /// The grant.
    pub grant: OboGrant,
    /// Scopes asked for (kept sorted).
    pub scopes: Vec<String>,
    /// RFC 8693 `audience`.
    pub audience: Option<String>,
    /// RFC 8707 / RFC 8693 `resource`.
    pub resource: Option<String>,
    /// RFC 8693 `actor_token` and its type.
    pub actor_token: Option<(Secret, String)>,
    /// How long before expiry a cached token stops being used (default 30 s).
    pub skew: Duration,
    /// Bound on one exchange, retry included (default 30 s).
    pub timeout: Duration,
    /// Wait before the one retry of a transient failure when the server gave no
    /// `Retry-After` (default 250 ms); a `Retry-After` is honoured up to 5 s.
    pub retry_backoff: Duration,
    /// A second exchange of this one's result (see [`then`](Self::then)).
    pub next: Option<Box<OboConfig>>,
}

impl OboConfig {
    /// A configuration with no scopes, audience or resource.
    pub fn new(
        token_endpoint: Url,
        client_id: impl Into<String>,
        client_auth: ClientAuth,
        grant: OboGrant,
    ) -> Self {
        Self {
            token_endpoint,
            client_id: client_id.into(),
            client_auth,
            grant,
            scopes: Vec::new(),
            audience: None,
            resource: None,
            actor_token: None,
            skew: Duration::from_secs(30),
            timeout: Duration::from_secs(30),
            retry_backoff: Duration::from_millis(250),
            next: None,
        }
    }

    /// Exchanges this exchange's result once more, as configured by `next`: e.g.
    /// cross-app access (SEP-990), where the identity provider turns the user's ID
    /// token into an ID-JAG ([`OboGrant::id_jag`]) and the MCP server's authorization
    /// server turns that into an access token ([`OboGrant::JwtBearer`]). The chain is
    /// cached, single-flight and retried as one exchange.
    ///
    /// ```
    /// use tower_mcp_auth::{ClientAuth, OboConfig, OboGrant, Secret};
    ///
    /// let config = OboConfig::new(
    ///     "https://idp.example.com/token".parse().unwrap(),
    ///     "idp-client",
    ///     ClientAuth::None,
    ///     OboGrant::id_jag(),
    /// )
    /// .with_audience("https://auth.mcp.example.com")
    /// .with_resource("https://mcp.example.com/mcp")
    /// .then(OboConfig::new(
    ///     "https://auth.mcp.example.com/token".parse().unwrap(),
    ///     "mcp-client",
    ///     ClientAuth::SecretBasic(Secret::new("s3cr3t")),
    ///     OboGrant::JwtBearer,
    /// ));
    /// assert!(config.next.is_some());
    /// ```
    pub fn then(mut self, next: OboConfig) -> Self {
        self.next = Some(Box::new(next));
        self
    }

    /// Asks for `scopes`.
    pub fn with_scopes(mut self, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self.scopes.sort();
        self.scopes.dedup();
        self
    }

    /// Sets the RFC 8693 `audience`.
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Sets `resource`.
    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    /// Sends an RFC 8693 `actor_token` of `token_type`.
    pub fn with_actor_token(mut self, token: Secret, token_type: impl Into<String>) -> Self {
        self.actor_token = Some((token, token_type.into()));
        self
    }

    /// How long before expiry a cached token stops being used.
    pub fn with_skew(mut self, skew: Duration) -> Self {
        self.skew = skew;
        self
    }

    /// The wait before retrying a transient failure without `Retry-After`.
    pub fn with_retry_backoff(mut self, backoff: Duration) -> Self {
        self.retry_backoff = backoff;
        self
    }
}

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
/// use tower_mcp_auth::{ClientAuth, OboConfig, OboExchanger, OboGrant, Principal, Secret, UserAssertion};
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
