//! The gateway's HTTP server: `/{upstream}/mcp` forwarded through a per-upstream
//! stack, `/healthz`, `/readyz`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, StatusCode, header};
use serde_json::json;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder, ServiceExt};

mod connections;
mod early_stream;
mod endpoints;
mod error;
mod forward;
mod upstream_oauth;

pub use error::GatewayError;

use endpoints::{login_callback, login_start, metrics, ready};
use forward::{forward, json_error, principal, too_large};
use upstream_oauth::{callback_service, connect_first, oauth_authorizer, retry_layer};

use super::config::{IdentityConfig, ProxyConfig, StoreConfig, UpstreamAuth};
use super::connect::{self, Message};
use tower_mcp_auth::binding::BindingId;
use tower_mcp_auth::client::{HttpClientConfig, ReqwestService};
use tower_mcp_auth::layer::callback::{BrowserBinding, CallbackService};
use tower_mcp_auth::layer::circuit_breaker::{BreakerKeying, CircuitBreakerLayer};
use tower_mcp_auth::oauth::PreRegisteredClient;
use tower_mcp_auth::store::{CredentialStore, SharedRecords};
use tower_mcp_auth::{
    AuthKey, Authorizer, BreakerConfig, Error, OAuthRetryLayer, Principal, RefreshCoordinator,
    ReplayBody, SilentRefreshLayer, UrlPolicy,
};

type UpstreamService =
    BoxCloneSyncService<http::Request<ReplayBody>, http::Response<reqwest::Body>, BoxError>;

/// One upstream as the gateway serves it (shared by every request to it).
pub(crate) struct Upstream {
    /// The configured name, shared by every metric series of this upstream (a label
    /// costs a reference count, not an allocation, per request).
    pub(crate) label: Arc<str>,
    url: url::Url,
    /// `url` as the request URI, parsed once (cloning it costs reference counts).
    uri: http::Uri,
    /// Its requests' metric series.
    series: super::telemetry::RequestSeries,
    service: UpstreamService,
    /// The sign-in of an `oauth` upstream.
    pub(crate) authorizer: Option<Authorizer>,
    /// The upstream's circuit breakers (one per principal).
    pub(crate) breaker: tower_mcp_auth::layer::circuit_breaker::CircuitBreakerHandle,
    /// The refresh coordinator of an `oauth` upstream (its per-process token cache).
    pub(crate) coordinator: Option<RefreshCoordinator>,
    /// An `obo` upstream: the caller's inbound token goes to the stack as the
    /// assertion to exchange.
    obo: bool,
    /// Tenants whose binding could not be made before a request (discovery failed or
    /// took too long): not tried again before each request for a while.
    pub(crate) unbindable: moka::sync::Cache<String, ()>,
}

impl Upstream {
    /// The breaker key of `principal`'s calls (`BreakerKeying::OriginAndPrincipal`).
    pub(crate) fn breaker_key(&self, principal: &Principal) -> String {
        format!(
            "{}://{}:{} {}:{}",
            self.url.scheme(),
            self.url.host_str().unwrap_or_default(),
            self.url.port_or_known_default().unwrap_or_default(),
            principal.tenant(),
            principal.subject()
        )
    }
}

/// The gateway: its upstreams, identity rule and store.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) upstreams: Arc<HashMap<String, Arc<Upstream>>>,
    pub(crate) identity: Arc<IdentityConfig>,
    /// The one principal of identity mode `anonymous`, built once (its hashes too).
    anonymous: Option<Principal>,
    store: Arc<dyn CredentialStore>,
    max_body_bytes: usize,
    metrics: Option<super::MetricsExposition>,
    /// The start and callback endpoints of the `oauth` upstreams, by upstream name.
    callbacks: Arc<HashMap<String, CallbackService>>,
    /// MCP sessions whose client declared URL-mode elicitation in `initialize`.
    url_elicitation_sessions: moka::sync::Cache<String, ()>,
    /// Signs the `/connections` forms (derived from the cookie key, or random).
    form_key: Arc<[u8; 32]>,
    /// Verifies inbound JWTs (identity mode `jwt`).
    jwt: Option<Arc<super::jwt::JwtVerifier>>,
    /// Signs browsers in (identity mode `jwt` with `login_client_id`).
    pub(crate) login: Option<Arc<super::login::BrowserLogin>>,
    /// The hosts and origins the gateway answers (checked before identity).
    edge: Arc<super::edge::EdgePolicy>,
    /// Which principal created each upstream session.
    sessions: super::sessions::SessionOwners,
    /// Each new session's standalone stream, opened before its client asks.
    early_streams: early_stream::EarlyStreams,
}

impl Gateway {
    /// Builds the gateway for `config`: opens the store, builds one stack per upstream.
    pub fn new(config: &ProxyConfig) -> Result<Self, GatewayError> {
        // `ProxyConfig::parse` checks this; a configuration built in code must too: an
        // empty key would sign cookies anyone can forge.
        let signs_cookies = config.login.is_some()
            || config
                .upstreams
                .iter()
                .any(|u| matches!(u.auth, UpstreamAuth::OAuth { .. }));
        if signs_cookies && config.cookie_key.is_none() {
            return Err(GatewayError::MissingCookieKey);
        }
        // Credentials, pending flows and client registrations all live in the one store,
        // so a restart forgets nothing and replicas on one Redis share everything.
        let (store, records): (Arc<dyn CredentialStore>, Arc<dyn SharedRecords>) = match &config
            .store
        {
            StoreConfig::Sqlite(path) => {
                let store = Arc::new(match &config.sealing {
                    Some(keys) => {
                        tower_mcp_auth::store::SqliteStore::open_sealed(path, keys.clone())?
                    }
                    None => tower_mcp_auth::store::SqliteStore::open(path)?,
                });
                (store.clone(), store)
            }
            StoreConfig::Redis(url) => {
                #[cfg(feature = "redis")]
                {
                    let mut builder = tower_mcp_auth::store::RedisStore::builder(url.clone());
                    if let Some(keys) = &config.sealing {
                        builder = builder.sealing(keys.clone());
                    }
                    let store = Arc::new(builder.build()?);
                    (store.clone(), store)
                }
                #[cfg(not(feature = "redis"))]
                {
                    let _ = url;
                    return Err(GatewayError::Store(tower_mcp_auth::error::StoreError::new(
                        std::io::Error::other("this build has no Redis support (feature `redis`)"),
                    )));
                }
            }
        };
        // No overall timeout: SSE streams stay open as long as the upstream keeps them.
        let http1 = ReqwestService::with_config(
            &HttpClientConfig::new().connect_timeout(Duration::from_secs(10)),
        )?;
        // For `h2c` upstreams: HTTP/2 from the first byte, many streams per connection.
        let h2c = if config.upstreams.iter().any(|upstream| upstream.h2c) {
            let client = ReqwestService::builder()?
                .connect_timeout(Duration::from_secs(10))
                .http2_prior_knowledge()
                .build()
                .map_err(|error| tower_mcp_auth::client::ClientBuildError::new(error.into()))?;
            Some(ReqwestService::from_client(client))
        } else {
            None
        };
        let jwt = match &config.identity {
            IdentityConfig::Jwt(identity) => {
                let policy = if config.allow_loopback_http {
                    UrlPolicy::default().allow_loopback_http()
                } else {
                    UrlPolicy::default()
                };
                Some(Arc::new(super::jwt::JwtVerifier::new(
                    identity.clone(),
                    tower_mcp_auth::AuthHttpClient::with_policy(policy),
                )))
            }
            _ => None,
        };
        let login = match (&config.identity, &config.login, &jwt, &config.public_url) {
            (IdentityConfig::Jwt(identity), Some(client), Some(verifier), Some(public)) => {
                let policy = if config.allow_loopback_http {
                    UrlPolicy::default().allow_loopback_http()
                } else {
                    UrlPolicy::default()
                };
                let key = config
                    .cookie_key
                    .as_ref()
                    .map(|key| key.expose().as_bytes().to_vec())
                    .unwrap_or_default();
                Some(Arc::new(
                    super::login::BrowserLogin::new(
                        &identity.issuer,
                        client.clone(),
                        public,
                        &key,
                        tower_mcp_auth::AuthHttpClient::with_policy(policy),
                        verifier.clone(),
                    )
                    .map_err(|source| GatewayError::Upstream {
                        upstream: "login".into(),
                        source: tower_mcp_auth::error::ConfigError::InvalidUrl {
                            field: "public_url",
                            source,
                        },
                    })?,
                ))
            }
            _ => None,
        };
        let mut upstreams = HashMap::new();
        let mut callbacks = HashMap::new();
        for upstream in &config.upstreams {
            let http = match (&h2c, upstream.h2c) {
                (Some(h2c), true) => h2c.clone(),
                _ => http1.clone(),
            };
            // The breaker is keyed by upstream and principal: one user's failures never
            // refuse another's calls. No storm guard: the gateway forwards its callers'
            // sessions, and a caller that opens many sessions against a healthy server
            // must not be refused (only upstream failures count).
            let breaker = CircuitBreakerLayer::new(BreakerConfig::default().without_storm_guard())
                .with_keying(BreakerKeying::OriginAndPrincipal);
            let breaker_handle = breaker.handle();
            let mut authorizer_of_upstream = None;
            let mut coordinator_of_upstream = None;
            let service = match &upstream.auth {
                UpstreamAuth::None => BoxCloneSyncService::new(
                    ServiceBuilder::new().layer(breaker).service(http.clone()),
                ),
                UpstreamAuth::Header { name, value } => BoxCloneSyncService::new(
                    ServiceBuilder::new()
                        .layer(breaker)
                        .layer(tower_http::set_header::SetRequestHeaderLayer::overriding(
                            name.clone(),
                            value.clone(),
                        ))
                        .service(http.clone()),
                ),
                UpstreamAuth::Obo(obo) => {
                    let policy = if config.allow_loopback_http {
                        UrlPolicy::default().allow_loopback_http()
                    } else {
                        UrlPolicy::default()
                    };
                    let exchanger = tower_mcp_auth::OboExchanger::with_http_client(
                        (**obo).clone(),
                        tower_mcp_auth::AuthHttpClient::with_policy(policy),
                    );
                    let layer =
                        tower_mcp_auth::OboHeaderLayer::new(exchanger, upstream.url.as_str())
                            .map_err(|source| GatewayError::Upstream {
                                upstream: upstream.name.clone(),
                                source,
                            })?;
                    BoxCloneSyncService::new(
                        ServiceBuilder::new()
                            .layer(breaker)
                            .layer(layer)
                            .service(http.clone()),
                    )
                }
                UpstreamAuth::OAuth {
                    pre_registered,
                    wait,
                    metadata_document,
                } => {
                    let authorizer = oauth_authorizer(
                        config,
                        &upstream.name,
                        &upstream.url,
                        (pre_registered.as_ref(), metadata_document.as_ref()),
                        &store,
                        &records,
                    )
                    .map_err(|source| GatewayError::Upstream {
                        upstream: upstream.name.clone(),
                        source,
                    })?;
                    callbacks.insert(
                        upstream.name.clone(),
                        callback_service(config, &upstream.name, &authorizer, login.clone()),
                    );
                    authorizer_of_upstream = Some(authorizer.clone());
                    let coordinator = RefreshCoordinator::new(store.clone());
                    coordinator_of_upstream = Some(coordinator.clone());
                    BoxCloneSyncService::new(
                        ServiceBuilder::new()
                            .layer(breaker)
                            .layer(retry_layer(&upstream.name, &authorizer, *wait))
                            .layer(SilentRefreshLayer::new(coordinator, authorizer.bindings()))
                            .service(http.clone()),
                    )
                }
            };
            let uri = upstream
                .url
                .as_str()
                .parse()
                .map_err(|_| GatewayError::Upstream {
                    upstream: upstream.name.clone(),
                    source: tower_mcp_auth::error::ConfigError::UnsupportedUrl { field: "url" },
                })?;
            upstreams.insert(
                upstream.name.clone(),
                Arc::new(Upstream {
                    label: Arc::from(upstream.name.as_str()),
                    url: upstream.url.clone(),
                    uri,
                    series: super::telemetry::RequestSeries::default(),
                    service,
                    authorizer: authorizer_of_upstream,
                    breaker: breaker_handle,
                    coordinator: coordinator_of_upstream,
                    obo: matches!(upstream.auth, UpstreamAuth::Obo(_)),
                    unbindable: moka::sync::Cache::builder()
                        .max_capacity(10_000)
                        .time_to_live(Duration::from_secs(30))
                        .build(),
                }),
            );
        }
        Ok(Self {
            upstreams: Arc::new(upstreams),
            identity: Arc::new(config.identity.clone()),
            anonymous: match &config.identity {
                IdentityConfig::Anonymous { tenant, subject } => {
                    Some(Principal::new(tenant.as_str(), subject.as_str()))
                }
                _ => None,
            },
            store,
            max_body_bytes: config.max_body_bytes,
            metrics: None,
            callbacks: Arc::new(callbacks),
            url_elicitation_sessions: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(24 * 3600))
                .build(),
            jwt,
            login,
            sessions: super::sessions::SessionOwners::new(records),
            early_streams: early_stream::EarlyStreams::default(),
            edge: Arc::new(super::edge::EdgePolicy::new(
                config.public_url.as_ref(),
                &config.allowed_hosts,
                &config.allowed_origins,
            )),
            form_key: Arc::new(match &config.cookie_key {
                Some(key) => {
                    crate::crypto::hmac_sha256(key.expose().as_bytes(), b"mcp-auth-proxy forms")
                }
                None => crate::crypto::random_bytes::<32>(),
            }),
        })
    }

    /// Seals, once, what the store held before `sealing_key_env` was configured (the
    /// `mcp-auth-proxy seal-store` command; run it with no gateway writing).
    ///
    /// # Errors
    ///
    /// Without keys, or as the store's `seal_existing`.
    pub async fn seal_existing(
        config: &ProxyConfig,
    ) -> Result<tower_mcp_auth::store::SealReport, GatewayError> {
        let Some(keys) = &config.sealing else {
            return Err(GatewayError::Store(tower_mcp_auth::error::StoreError::new(
                std::io::Error::other("no `[store] sealing_key_env` in the configuration"),
            )));
        };
        match &config.store {
            StoreConfig::Sqlite(path) => Ok(tower_mcp_auth::store::SqliteStore::open_sealed(
                path,
                keys.clone(),
            )?
            .seal_existing()
            .await?),
            #[cfg(feature = "redis")]
            StoreConfig::Redis(url) => Ok(tower_mcp_auth::store::RedisStore::builder(url.clone())
                .sealing(keys.clone())
                .build()?
                .seal_existing()
                .await?),
            #[cfg(not(feature = "redis"))]
            StoreConfig::Redis(_) => {
                Err(GatewayError::Store(tower_mcp_auth::error::StoreError::new(
                    std::io::Error::other("this build has no Redis support (feature `redis`)"),
                )))
            }
        }
    }

    /// Who is calling: the configured rule applied to the request's peer and headers.
    pub(crate) async fn identify(
        &self,
        peer: SocketAddr,
        headers: &HeaderMap,
    ) -> Result<Principal, (StatusCode, &'static str)> {
        if let Some(anonymous) = &self.anonymous {
            return Ok(anonymous.clone());
        }
        match &self.jwt {
            Some(verifier) => verifier
                .principal(headers.get(header::AUTHORIZATION))
                .await
                .map_err(|error| {
                    tracing::info!(%error, "inbound token refused");
                    (StatusCode::UNAUTHORIZED, "a valid bearer token is required")
                }),
            None => principal(&self.identity, peer, headers),
        }
    }

    /// Serves `/metrics` from `handle` (the crate's counters, Prometheus text format).
    /// The binary installs the recorder; a library user may install their own, before
    /// the first request (each upstream registers its request series at first use).
    pub fn with_metrics(mut self, handle: super::MetricsExposition) -> Self {
        super::telemetry::describe();
        self.metrics = Some(handle);
        self
    }

    /// The gateway as an axum router (serve it with
    /// `into_make_service_with_connect_info::<SocketAddr>()`: the trusted-header
    /// identity needs the peer address).
    pub fn router(self) -> axum::Router {
        let max = self.max_body_bytes;
        let callbacks = self.callbacks.clone();
        let edge = self.edge.clone();
        let login = self.login.clone();
        let mut router = axum::Router::new()
            .route("/{upstream}/mcp", axum::routing::any(forward))
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .route("/readyz", axum::routing::get(ready))
            .route("/metrics", axum::routing::get(metrics))
            .route("/connections", axum::routing::get(connections::list))
            .route(
                "/connections/{upstream}/connect",
                axum::routing::get(connections::connect),
            )
            .route(
                "/connections/{upstream}/disconnect",
                axum::routing::post(connections::disconnect),
            )
            .route("/login", axum::routing::get(login_start))
            .route("/login/callback", axum::routing::get(login_callback))
            .with_state(self);
        for (name, service) in callbacks.iter() {
            router = router.merge(tower_mcp_auth::layer::callback::callback_router(
                &format!("/oauth/{name}/callback"),
                service.clone(),
            ));
        }
        // The gateway's own checks, in one middleware (one boxed future per request).
        let checks = move |request: Request, next: axum::middleware::Next| {
            let (edge, login) = (edge.clone(), login.clone());
            async move {
                // Host and Origin first: a rebinding page or another site gets no further.
                if let Err(refusal) = edge.check(request.headers(), request.uri()) {
                    tracing::warn!(
                        host = ?request.headers().get(header::HOST),
                        origin = ?request.headers().get(header::ORIGIN),
                        path = request.uri().path(),
                        "request refused at the edge: {}",
                        refusal.message()
                    );
                    return json_error(refusal.status(), refusal.message());
                }
                // A sign-in link opened by a browser that is not signed in: the login
                // first, back to the link after (its start check then compares users).
                let path = request.uri().path();
                if let Some(login) = &login
                    && path.starts_with("/oauth/")
                    && path.ends_with("/start")
                    && let super::login::BrowserUser::SignIn(response) =
                        login.user(request.headers(), request.uri())
                {
                    return response;
                }
                // A declared length over the cap: the same JSON-RPC 413 as a streamed
                // body that runs past it (tower-http's limit would answer in text).
                let declared = request
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if declared.is_some_and(|length| length > max as u64) {
                    return too_large();
                }
                next.run(request).await
            }
        };
        router.layer(
            ServiceBuilder::new()
                .layer(axum::middleware::from_fn(checks))
                // Secrets never reach the trace output.
                .layer(
                    tower_http::sensitive_headers::SetSensitiveHeadersLayer::new([
                        header::AUTHORIZATION,
                        header::COOKIE,
                        header::SET_COOKIE,
                    ]),
                )
                .layer(tower_http::trace::TraceLayer::new_for_http())
                .layer(tower_http::limit::RequestBodyLimitLayer::new(max)),
        )
    }
}
