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

use super::config::{IdentityConfig, ProxyConfig, StoreConfig, UpstreamAuth};
use super::connect::{self, Message};
use tower_mcp_auth::Error;
use tower_mcp_auth::client::{HttpClientConfig, ReqwestService};
use tower_mcp_auth::layer::circuit_breaker::{BreakerKeying, CircuitBreakerLayer};
use tower_mcp_auth::store::{CredentialStore, SharedRecords};
use tower_mcp_auth::{AuthKey, BindingId, Principal};
use tower_mcp_auth::{
    Authorizer, BreakerConfig, BrowserBinding, CallbackService, OAuthRetryLayer,
    PreRegisteredClient, RefreshCoordinator, ReplayBody, SilentRefreshLayer, UrlPolicy,
};

type UpstreamService =
    BoxCloneSyncService<http::Request<ReplayBody>, http::Response<reqwest::Body>, BoxError>;

/// One upstream as the gateway serves it.
#[derive(Clone)]
pub(crate) struct Upstream {
    url: url::Url,
    service: UpstreamService,
    /// The sign-in of an `oauth` upstream.
    pub(crate) authorizer: Option<Authorizer>,
    /// The upstream's circuit breakers (one per principal).
    pub(crate) breaker: tower_mcp_auth::CircuitBreakerHandle,
    /// The refresh coordinator of an `oauth` upstream (its per-process token cache).
    pub(crate) coordinator: Option<RefreshCoordinator>,
    /// An `obo` upstream: the caller's inbound token goes to the stack as the
    /// assertion to exchange.
    obo: bool,
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
    pub(crate) upstreams: Arc<HashMap<String, Upstream>>,
    pub(crate) identity: Arc<IdentityConfig>,
    store: Arc<dyn CredentialStore>,
    max_body_bytes: usize,
    metrics: Option<super::PrometheusHandle>,
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
}

/// Why the gateway could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] tower_mcp_auth::StoreError),
    /// The HTTP client could not be built.
    #[error(transparent)]
    Client(#[from] tower_mcp_auth::client::ClientBuildError),
    /// Browser sign-in (an `oauth` upstream, `login_client_id`) without `cookie_key`:
    /// cookies signed with no key could be forged by anyone.
    #[error("browser sign-in (an `oauth` upstream or `login_client_id`) needs `cookie_key`")]
    MissingCookieKey,
    /// An `oauth` upstream could not be set up (its URL refused by the URL policy, ...).
    #[error("upstream `{upstream}`: {source}")]
    Upstream {
        /// The upstream's name.
        upstream: String,
        /// What was wrong.
        source: tower_mcp_auth::ConfigError,
    },
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
                    return Err(GatewayError::Store(tower_mcp_auth::StoreError::new(
                        std::io::Error::other("this build has no Redis support (feature `redis`)"),
                    )));
                }
            }
        };
        // No overall timeout: SSE streams stay open as long as the upstream keeps them.
        let http = ReqwestService::with_config(
            &HttpClientConfig::new().connect_timeout(Duration::from_secs(10)),
        )?;
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
                        source: tower_mcp_auth::ConfigError::InvalidUrl {
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
            upstreams.insert(
                upstream.name.clone(),
                Upstream {
                    url: upstream.url.clone(),
                    service,
                    authorizer: authorizer_of_upstream,
                    breaker: breaker_handle,
                    coordinator: coordinator_of_upstream,
                    obo: matches!(upstream.auth, UpstreamAuth::Obo(_)),
                },
            );
        }
        Ok(Self {
            upstreams: Arc::new(upstreams),
            identity: Arc::new(config.identity.clone()),
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
            return Err(GatewayError::Store(tower_mcp_auth::StoreError::new(
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
            StoreConfig::Redis(_) => Err(GatewayError::Store(tower_mcp_auth::StoreError::new(
                std::io::Error::other("this build has no Redis support (feature `redis`)"),
            ))),
        }
    }

    /// Who is calling: the configured rule applied to the request's peer and headers.
    pub(crate) async fn identify(
        &self,
        peer: SocketAddr,
        headers: &HeaderMap,
    ) -> Result<Principal, (StatusCode, &'static str)> {
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

    /// The token of `principal`'s `/connections` forms.
    pub(crate) fn form_token(&self, principal: &Principal) -> String {
        crate::crypto::hex(&self.form_tag(principal))
    }

    /// Whether `token` is `principal`'s form token.
    pub(crate) fn form_token_matches(&self, principal: &Principal, token: &str) -> bool {
        let expected = self.form_token(principal);
        // Constant time: both are hex strings of one length.
        expected.len() == token.len()
            && expected
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    }

    fn form_tag(&self, principal: &Principal) -> [u8; 32] {
        let mut data = Vec::new();
        for field in [principal.tenant(), principal.subject()] {
            data.extend_from_slice(&(field.len() as u64).to_be_bytes());
            data.extend_from_slice(field.as_bytes());
        }
        crate::crypto::hmac_sha256(&*self.form_key, &data)
    }

    /// Serves `/metrics` from `handle` (the crate's counters, Prometheus text format).
    /// The binary installs the recorder; a library user may install their own.
    pub fn with_metrics(mut self, handle: super::PrometheusHandle) -> Self {
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
            .route("/connections", axum::routing::get(super::connections::list))
            .route(
                "/connections/{upstream}/connect",
                axum::routing::get(super::connections::connect),
            )
            .route(
                "/connections/{upstream}/disconnect",
                axum::routing::post(super::connections::disconnect),
            )
            .route("/login", axum::routing::get(login_start))
            .route("/login/callback", axum::routing::get(login_callback))
            .with_state(self);
        for (name, service) in callbacks.iter() {
            router = router.merge(tower_mcp_auth::callback_router(
                &format!("/oauth/{name}/callback"),
                service.clone(),
            ));
        }
        router.layer(
            ServiceBuilder::new()
                // Host and Origin first: a rebinding page or another site gets no further.
                .layer(axum::middleware::from_fn(
                    move |request: Request, next: axum::middleware::Next| {
                        let edge = edge.clone();
                        async move {
                            match edge.check(request.headers(), request.uri()) {
                                Ok(()) => next.run(request).await,
                                Err(refusal) => {
                                    tracing::warn!(
                                        host = ?request.headers().get(header::HOST),
                                        origin = ?request.headers().get(header::ORIGIN),
                                        path = request.uri().path(),
                                        "request refused at the edge: {}",
                                        refusal.message()
                                    );
                                    json_error(refusal.status(), refusal.message())
                                }
                            }
                        }
                    },
                ))
                // A sign-in link opened by a browser that is not signed in: the login
                // first, back to the link after (its start check then compares users).
                .layer(axum::middleware::from_fn(
                    move |request: Request, next: axum::middleware::Next| {
                        let login = login.clone();
                        async move {
                            let path = request.uri().path();
                            let is_start = path.starts_with("/oauth/") && path.ends_with("/start");
                            match &login {
                                Some(login) if is_start => {
                                    match login.user(request.headers(), request.uri()) {
                                        super::login::BrowserUser::Known(_) => {
                                            next.run(request).await
                                        }
                                        super::login::BrowserUser::SignIn(response) => response,
                                    }
                                }
                                _ => next.run(request).await,
                            }
                        }
                    },
                ))
                // Secrets never reach the trace output.
                .layer(
                    tower_http::sensitive_headers::SetSensitiveHeadersLayer::new([
                        header::AUTHORIZATION,
                        header::COOKIE,
                        header::SET_COOKIE,
                    ]),
                )
                .layer(tower_http::trace::TraceLayer::new_for_http())
                // A declared length over the cap: the same JSON-RPC 413 as a streamed
                // body that runs past it (tower-http's limit would answer in text).
                .layer(axum::middleware::from_fn(
                    move |request: Request, next: axum::middleware::Next| async move {
                        let declared = request
                            .headers()
                            .get(header::CONTENT_LENGTH)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok());
                        if declared.is_some_and(|length| length > max as u64) {
                            return too_large();
                        }
                        next.run(request).await
                    },
                ))
                .layer(tower_http::limit::RequestBodyLimitLayer::new(max)),
        )
    }
}

/// The authorizer of an `oauth` upstream: sign-in links under
/// `{public_url}/oauth/{name}/start`, callbacks at `{public_url}/oauth/{name}/callback`,
/// flows and registrations in the gateway's store.
fn oauth_authorizer(
    config: &ProxyConfig,
    name: &str,
    url: &url::Url,
    (pre_registered, metadata_document): (Option<&super::config::PreRegistered>, Option<&url::Url>),
    store: &Arc<dyn CredentialStore>,
    records: &Arc<dyn SharedRecords>,
) -> Result<Authorizer, tower_mcp_auth::ConfigError> {
    // `ProxyConfig::parse` refuses an `oauth` upstream without a public URL.
    let public = config
        .public_url
        .as_ref()
        .ok_or(tower_mcp_auth::ConfigError::UnsupportedUrl {
            field: "public_url",
        })?;
    let join = |path: String| {
        public
            .join(&path)
            .map_err(|source| tower_mcp_auth::ConfigError::InvalidUrl {
                field: "public_url",
                source,
            })
    };
    let mut builder = Authorizer::builder(
        url.as_str(),
        store.clone(),
        join(format!("oauth/{name}/callback"))?,
    )
    .client_name("mcp-auth-proxy")
    .start_url(join(format!("oauth/{name}/start"))?)
    .shared_state(records.clone());
    if config.allow_loopback_http {
        builder = builder.url_policy(UrlPolicy::default().allow_loopback_http());
    }
    if let Some(document) = metadata_document {
        builder = builder.metadata_document(document.clone());
    }
    if let Some(client) = pre_registered {
        let mut registered = PreRegisteredClient::new(&client.issuer, &client.client_id);
        if let Some(secret) = &client.client_secret {
            registered = registered.with_secret(
                secret.clone(),
                tower_mcp_auth::ClientAuthMethod::ClientSecretBasic,
            );
        }
        builder = builder.pre_registered(registered);
    }
    builder.build()
}

/// Return early (the caller gets the sign-in link in the protocol at once), or with
/// `wait`, hold the request while the user signs in through `/connections` (the link is
/// logged too); past the wait the caller gets the link.
fn retry_layer(name: &str, authorizer: &Authorizer, wait: Option<Duration>) -> OAuthRetryLayer {
    let Some(wait) = wait else {
        return OAuthRetryLayer::return_early(authorizer.clone());
    };
    let upstream = name.to_owned();
    OAuthRetryLayer::wait(
        authorizer.clone(),
        move |prompt: tower_mcp_auth::AuthorizationPrompt| {
            tracing::info!(
                upstream = %upstream,
                subject = prompt.principal.subject(),
                "request held for a sign-in; the link is on /connections"
            );
            async { Ok(()) }
        },
    )
    .with_wait_timeout(wait)
}

/// The start and callback endpoints of an `oauth` upstream. A start link is honoured
/// only for the browser of the user it was made for: the identity rule must name the
/// flow's principal for the browser's own request.
fn callback_service(
    config: &ProxyConfig,
    name: &str,
    authorizer: &Authorizer,
    login: Option<Arc<super::login::BrowserLogin>>,
) -> CallbackService {
    let key = config
        .cookie_key
        .as_ref()
        .map(|key| key.expose().as_bytes().to_vec())
        .unwrap_or_default();
    let mut binding = BrowserBinding::new(&key);
    if config
        .public_url
        .as_ref()
        .is_some_and(|url| url.scheme() == "http")
    {
        binding = binding.insecure_cookies();
    }
    let identity = config.identity.clone();
    let service = CallbackService::new(authorizer.completer(), binding)
        .with_start_path(format!("/oauth/{name}/start"))
        .with_app_name(format!("mcp-auth-proxy ({name})"));
    if let Some(login) = login {
        // A browser carries no bearer token: its user is the gateway's own login
        // session (the router sends a browser without one through the login first).
        return service.with_start_check(move |request, principal| {
            login.session(&request.headers).as_ref() == Some(principal)
        });
    }
    service.with_start_check(move |request, principal| {
        request
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .and_then(|peer| self::principal(&identity, peer.0, &request.headers).ok())
            .is_some_and(|browser_user| &browser_user == principal)
    })
}

/// The "connect first" answer to a request of a user without credentials.
fn connect_first(
    name: &str,
    url: &str,
    message: Option<&Message>,
    url_elicitation: bool,
) -> Response {
    let elicitation_id = crate::crypto::hex(&crate::crypto::random_bytes::<16>());
    let (status, body) = connect::answer(name, url, message, url_elicitation, &elicitation_id);
    tracing::info!(upstream = %name, "no credentials for the upstream yet; sign-in link sent");
    (status, axum::Json(body)).into_response()
}

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
}

/// Where a caller's request goes: the configured URL, its query parameters kept, the
/// caller's parameters added after them unless they name a configured one.
fn upstream_url(configured: &url::Url, caller_query: Option<&str>) -> url::Url {
    let mut url = configured.clone();
    let Some(query) = caller_query.filter(|q| !q.is_empty()) else {
        return url;
    };
    let fixed: Vec<String> = configured
        .query_pairs()
        .map(|(k, _)| k.into_owned())
        .collect();
    let added: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(key, _)| !fixed.iter().any(|f| f == key))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if !added.is_empty() {
        url.query_pairs_mut().extend_pairs(added);
    }
    url
}

/// The caller's claims about the path a request took: the upstream learns nothing from
/// them it could mistake for the gateway's word.
fn strip_forwarding(headers: &mut HeaderMap) {
    let claimed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            name == "forwarded" || name == "x-real-ip" || name.starts_with("x-forwarded-")
        })
        .cloned()
        .collect();
    for name in claimed {
        headers.remove(name);
    }
}

/// An error with its causes, `outer: inner: innermost`: "connection refused" and "too
/// many open files" read apart in the log.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// JSON-RPC's "invalid request" code, for the gateway's own refusals.
const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC's "parse error" code.
const PARSE_ERROR: i64 = -32700;

/// 413 in one format, whether the body declared its length or streamed past the cap.
fn too_large() -> Response {
    json_error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
}

fn json_error(status: StatusCode, message: &str) -> Response {
    jsonrpc_error(status, INVALID_REQUEST, message)
}

fn jsonrpc_error(status: StatusCode, code: i64, message: &str) -> Response {
    let mut response = (
        status,
        axum::Json(
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}}),
        ),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"mcp-auth-proxy\""),
        );
    }
    response
}

/// Who is calling, by the configured rule.
pub(crate) fn principal(
    identity: &IdentityConfig,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<Principal, (StatusCode, &'static str)> {
    match identity {
        IdentityConfig::TrustedHeader {
            header,
            tenant,
            trusted_sources,
        } => {
            let claimed = headers.get(header);
            if !trusted_sources.contains(&peer.ip()) {
                if claimed.is_some() {
                    tracing::warn!(peer = %peer.ip(), "identity header from an untrusted address refused");
                    return Err((
                        StatusCode::FORBIDDEN,
                        "identity header from an untrusted address",
                    ));
                }
                return Err((
                    StatusCode::UNAUTHORIZED,
                    "no identity: requests must come through the front proxy",
                ));
            }
            // One header with one value: with several, a front proxy that appends
            // instead of replacing would let the caller's own value win or merge in.
            let mut values = headers.get_all(header).iter();
            if values.nth(1).is_some() || claimed.is_some_and(|v| v.as_bytes().contains(&b',')) {
                tracing::warn!(peer = %peer.ip(), "several identities in the identity header refused");
                return Err((StatusCode::BAD_REQUEST, "ambiguous identity header"));
            }
            let user = claimed
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .ok_or((StatusCode::UNAUTHORIZED, "no identity header"))?;
            Ok(Principal::new(tenant.as_str(), user))
        }
        IdentityConfig::Anonymous { tenant, subject } => {
            Ok(Principal::new(tenant.as_str(), subject.as_str()))
        }
        // Verified asynchronously, by `Gateway::identify`.
        IdentityConfig::Jwt(_) => Err((StatusCode::UNAUTHORIZED, "a bearer token is required")),
    }
}

async fn forward(
    State(gateway): State<Gateway>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let Some(upstream) = gateway.upstreams.get(&name).cloned() else {
        return json_error(
            StatusCode::NOT_FOUND,
            &format!("no upstream named `{name}`"),
        );
    };
    // A cross-site `text/plain` or form POST needs no preflight; a JSON one does.
    if request.method() == http::Method::POST && !super::edge::is_json(request.headers()) {
        return json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "an MCP POST must be `Content-Type: application/json`",
        );
    }
    let principal = match gateway.identify(peer, request.headers()).await {
        Ok(principal) => principal,
        Err((status, message)) => return json_error(status, message),
    };
    let (mut parts, body) = request.into_parts();
    // MCP forbids token passthrough: the caller's credentials stay here. For an `obo`
    // upstream the (verified) inbound token is only the assertion that gets exchanged.
    let assertion = parts
        .headers
        .remove(header::AUTHORIZATION)
        .filter(|_| upstream.obo)
        .and_then(|value| {
            let value = value.to_str().ok()?;
            let token = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))?;
            Some(tower_mcp_auth::UserAssertion::new(token.trim()))
        });
    parts.headers.remove(header::COOKIE);
    parts.headers.remove(header::HOST);
    strip_forwarding(&mut parts.headers);
    if let IdentityConfig::TrustedHeader { header, .. } = &*gateway.identity {
        parts.headers.remove(header);
    }
    strip_hop_by_hop(&mut parts.headers);
    let url = upstream_url(&upstream.url, parts.uri.query());
    parts.uri = match url.as_str().parse() {
        Ok(uri) => uri,
        Err(_) => return json_error(StatusCode::BAD_GATEWAY, "upstream URL"),
    };
    parts.extensions = http::Extensions::new();
    let principal_of_request = principal.clone();
    parts.extensions.insert(principal);
    if let Some(assertion) = assertion {
        parts.extensions.insert(assertion);
    }
    // A POST carries one JSON-RPC message (capped by the body limit): read whole, it
    // goes upstream with its length (a stream would go chunked, which costs both ends),
    // and where the upstream has sign-in, a "connect first" answer can carry its id.
    let (body, message) = if parts.method == http::Method::POST {
        match axum::body::to_bytes(body, gateway.max_body_bytes).await {
            Ok(bytes) => {
                // The gateway's to answer: a body that is no JSON at all never reaches
                // the upstream (whose answer might be an HTML error page). Unknown
                // methods and the rest of JSON-RPC pass through untouched.
                if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() {
                    return jsonrpc_error(
                        StatusCode::BAD_REQUEST,
                        PARSE_ERROR,
                        "Parse error: the body is not JSON",
                    );
                }
                let message = upstream
                    .authorizer
                    .as_ref()
                    .and_then(|_| Message::parse(&bytes));
                (ReplayBody::buffered(bytes), message)
            }
            Err(_) => return too_large(),
        }
    } else {
        (ReplayBody::new(body), None)
    };
    // A session id is a handle on one user's upstream state: only its creator uses it.
    // One visible-ASCII value or none: anything else could pass this check with one
    // value and reach the upstream with another.
    let session = {
        let mut values = parts.headers.get_all("mcp-session-id").iter();
        match (values.next(), values.next()) {
            (None, _) => None,
            (Some(value), None) => match value.to_str() {
                Ok(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic()) => {
                    Some(text.to_owned())
                }
                _ => return json_error(StatusCode::BAD_REQUEST, "malformed Mcp-Session-Id"),
            },
            (Some(_), Some(_)) => {
                return json_error(StatusCode::BAD_REQUEST, "several Mcp-Session-Id headers");
            }
        }
    };
    if let Some(session) = &session {
        match gateway
            .sessions
            .check(&name, session, &principal_of_request)
            .await
        {
            Ok(super::sessions::SessionUse::Owner) => {}
            Ok(super::sessions::SessionUse::Unknown) => {
                tracing::info!(upstream = %name, "a session not created by the caller refused");
                return json_error(StatusCode::NOT_FOUND, "session not found");
            }
            Err(error) => {
                tracing::warn!(upstream = %name, %error, "session owners unreadable");
                return json_error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable");
            }
        }
    }
    let deleting = parts.method == http::Method::DELETE;
    let url_elicitation = match &message {
        Some(message) if message.is_initialize() => message.declares_url_elicitation,
        Some(_) => parts
            .headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|session| gateway.url_elicitation_sessions.contains_key(session)),
        None => false,
    };
    let request = http::Request::from_parts(parts, body);
    match upstream.service.oneshot(request).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            // The gateway's origin is shared by every upstream and its own sign-in
            // pages: no upstream may set cookies there.
            parts.headers.remove(header::SET_COOKIE);
            if let Some(created) = parts
                .headers
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
                .filter(|created| session.as_deref() != Some(*created))
                && let Err(error) = gateway
                    .sessions
                    .record(&name, created, &principal_of_request)
                    .await
            {
                // Unrecorded, the session is unknown to the gateway: the caller's next
                // request gets 404 and starts a new one.
                tracing::warn!(upstream = %name, %error, "session owner not recorded");
            }
            if deleting
                && parts.status.is_success()
                && let Some(session) = &session
            {
                gateway.sessions.forget(&name, session);
            }
            if url_elicitation
                && message.as_ref().is_some_and(Message::is_initialize)
                && let Some(session) = parts
                    .headers
                    .get("mcp-session-id")
                    .and_then(|v| v.to_str().ok())
            {
                gateway
                    .url_elicitation_sessions
                    .insert(session.to_owned(), ());
            }
            // Streamed as it arrives: SSE events are passed on one by one.
            Response::from_parts(parts, Body::new(body))
        }
        Err(error) => match Error::find(error.as_ref()) {
            Some(Error::AuthorizationRequired { url, .. }) => {
                connect_first(&name, url.as_str(), message.as_ref(), url_elicitation)
            }
            // Held for `wait_seconds` and still not signed in: the link, as above (the
            // pending flow is joined, not started again).
            Some(Error::AuthorizationTimedOut { .. }) => {
                let flow = match &upstream.authorizer {
                    Some(authorizer) => authorizer
                        .start(
                            &principal_of_request,
                            &tower_mcp_auth::AuthorizationCause::challenge(None),
                        )
                        .await
                        .ok(),
                    None => None,
                };
                match flow {
                    Some(flow) => connect_first(
                        &name,
                        flow.pending().browser_url().as_str(),
                        message.as_ref(),
                        url_elicitation,
                    ),
                    None => json_error(StatusCode::BAD_GATEWAY, "sign-in could not be started"),
                }
            }
            Some(Error::Obo(refused)) => {
                tracing::info!(upstream = %name, error = %refused, "On-Behalf-Of exchange refused");
                json_error(
                    StatusCode::UNAUTHORIZED,
                    "your token could not be exchanged for this server",
                )
            }
            Some(Error::CircuitOpen { retry_after, .. }) => {
                let mut response = json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream unavailable; retry later",
                );
                let seconds = retry_after.as_secs().max(1);
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, seconds.into());
                response
            }
            _ => {
                let cause = error_chain(error.as_ref());
                if tower_mcp_auth::layer::circuit_breaker::local_resource_error(error.as_ref())
                    .is_some()
                {
                    tracing::error!(upstream = %name, %cause, "out of local resources (descriptors, buffers or memory); the upstream is not at fault");
                    let mut response = json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the gateway is out of local resources; retry later",
                    );
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
                    return response;
                }
                tracing::warn!(upstream = %name, %cause, "upstream call failed");
                json_error(StatusCode::BAD_GATEWAY, "upstream unreachable")
            }
        },
    }
}

/// `GET /login?return=PATH`: the gateway's own sign-in of a browser.
async fn login_start(State(gateway): State<Gateway>, request: Request) -> Response {
    let Some(login) = &gateway.login else {
        return json_error(StatusCode::NOT_FOUND, "this gateway has no browser login");
    };
    let return_to = request.uri().query().and_then(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "return")
            .map(|(_, value)| value.into_owned())
    });
    login.start(return_to.as_deref()).await
}

/// `GET /login/callback`: the issuer's answer to the gateway's sign-in.
async fn login_callback(State(gateway): State<Gateway>, request: Request) -> Response {
    let Some(login) = &gateway.login else {
        return json_error(StatusCode::NOT_FOUND, "this gateway has no browser login");
    };
    login
        .callback(request.uri().query(), request.headers())
        .await
}

async fn metrics(State(gateway): State<Gateway>) -> Response {
    match &gateway.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}

/// How long `/readyz` reports a store that lost its data.
const LOST_DATA_NOT_READY: Duration = Duration::from_secs(600);

async fn ready(State(gateway): State<Gateway>) -> Response {
    let probe = AuthKey::new(
        &Principal::new("mcp-auth-proxy", "readyz"),
        BindingId::from_bytes([0; 32]),
    );
    match tokio::time::timeout(Duration::from_secs(2), gateway.store.load(&probe)).await {
        // A store that lost its data is usable again at once, but the operator must
        // see it: not ready for ten minutes after the loss was found.
        Ok(Ok(_))
            if gateway
                .store
                .lost_data_at()
                .and_then(|at| at.elapsed().ok())
                .is_some_and(|since| since < LOST_DATA_NOT_READY) =>
        {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "store: lost its data (every credential and sign-in); see the log",
            )
                .into_response()
        }
        Ok(Ok(_)) => "ready".into_response(),
        Ok(Err(error)) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("store: {error}")).into_response()
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store: timed out").into_response(),
    }
}
