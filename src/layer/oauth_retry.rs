//! On a 401 that silent refresh could not fix, run the interactive authorization and
//! replay once; on a 403 `insufficient_scope`, step up.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use http::{Request, Response, StatusCode};
use pin_project::pin_project;
use tower::util::Oneshot;
use tower::{BoxError, Layer, Service};

use super::hand_back::{self, HandBack, Sent};
use crate::challenge::BearerChallenge;
use crate::error::Error;
use crate::fault::ReauthReason;
use crate::key::Principal;
use crate::oauth::authorize::{AuthorizationCause, Authorizer};
use crate::oauth::flow::{FlowOutcome, PendingFlow};
use crate::replay::{DEFAULT_MAX_REPLAY_BODY, ReplayBody, RequestBody};
use crate::store::BoxFuture;

mod future;
pub use future::ResponseFuture;
use future::*;

/// What an [`AuthorizationHandler`] gets: whose authorization it is and the persisted
/// flow, whose [`url`](Self::url) the user must open.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AuthorizationPrompt {
    /// Who must authorize.
    pub principal: Principal,
    /// The PENDING flow (already findable by the callback).
    pub flow: Arc<PendingFlow>,
}

impl AuthorizationPrompt {
    /// The URL to open in the user's browser: the start link of the app's
    /// [`CallbackService`](crate::layer::callback::CallbackService) when the authorizer has a
    /// [`start_url`](crate::oauth::AuthorizerBuilder::start_url), else the authorization URL.
    pub fn url(&self) -> &url::Url {
        self.flow.browser_url()
    }
}

/// Delivers an authorization URL to the user: opens a browser, pushes an event to a
/// chat UI, or — in tests and conformance runs — follows it headlessly
/// ([`testing::HeadlessBrowser`](crate::testing::HeadlessBrowser) with feature
/// `test-util`).
///
/// It is called once per flow, by the request that started it, in a task of its own
/// (a cancelled request does not cancel the delivery). An error fails the flow, and
/// every request waiting on it gets [`Error::AuthorizationFailed`]. Closures
/// `Fn(AuthorizationPrompt) -> impl Future<Output = Result<(), BoxError>>` are handlers.
pub trait AuthorizationHandler: Send + Sync + 'static {
    /// Delivers `prompt`. Returning does not mean the user authorized: the layer waits
    /// for the callback.
    fn authorize(&self, prompt: AuthorizationPrompt) -> BoxFuture<'static, Result<(), BoxError>>;
}

impl<F, Fut> AuthorizationHandler for F
where
    F: Fn(AuthorizationPrompt) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    fn authorize(&self, prompt: AuthorizationPrompt) -> BoxFuture<'static, Result<(), BoxError>> {
        Box::pin(self(prompt))
    }
}

#[derive(Clone)]
enum Mode {
    ReturnEarly,
    Wait {
        handler: Arc<dyn AuthorizationHandler>,
        timeout: Duration,
    },
}

/// Runs the interactive OAuth authorization when a request needs one, then replays it.
///
/// Place it outside [`SilentRefreshLayer`](crate::SilentRefreshLayer), sharing the
/// [`Authorizer`]'s [`BindingSlot`](crate::binding::BindingSlot). For requests to the
/// authorizer's server:
///
/// * a 401 response, or [`Error::ReauthRequired`] from silent refresh, starts (or joins)
///   an authorization: discovery, client registration, scopes, a PENDING flow;
/// * **return early** ([`OAuthRetryLayer::return_early`]): the call fails with
///   [`Error::AuthorizationRequired`] carrying the URL to show; send the request again
///   after the callback;
/// * **wait** ([`OAuthRetryLayer::wait`]): the [`AuthorizationHandler`] delivers the URL,
///   the request waits (bounded, default 5 minutes) for the callback, then is replayed
///   once with the new token. A 401 after that is returned as it is;
/// * a 403 whose challenge is `insufficient_scope` re-authorizes with the union of the
///   scopes held and asked for, and replays; a request makes at most 3 authorizations
///   in all (configurable), then fails with [`Error::InsufficientScope`].
///
/// The replay is the copy of the request that the
/// [`SilentRefreshLayer`](crate::SilentRefreshLayer) below keeps anyway (bodies up to
/// 1 MiB with a known size): this layer copies nothing itself, so it costs the cached
/// path almost nothing. It must therefore wrap a `SilentRefreshLayer`, directly or
/// through layers that keep the request's extensions (its [`Principal`] the same value,
/// not a new one) and pass responses and errors back as they are (a layer in between
/// sees the replayed request again). A request
/// that cannot be replayed — a larger or streaming body, or no silent refresh layer
/// below — gets its 401 or 403 back as it is.
///
/// ```
/// use std::sync::Arc;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_mcp_auth::store::MemoryStore;
/// use tower_mcp_auth::{Authorizer, Error, OAuthRetryLayer, Principal, RefreshCoordinator, SilentRefreshLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let store = Arc::new(MemoryStore::new());
/// let authorizer = Authorizer::builder(
///     "https://mcp.example.com/mcp",
///     store.clone(),
///     "https://app.example.com/oauth/callback".parse()?,
/// )
/// .build()?;
/// let client = ServiceBuilder::new()
///     .layer(OAuthRetryLayer::return_early(authorizer.clone()))
///     .layer(SilentRefreshLayer::new(RefreshCoordinator::new(store), authorizer.bindings()))
///     .service_fn(|request: http::Request<tower_mcp_auth::ReplayBody>| async move {
///         // Your HTTP client goes here; this server answers everything with 200.
///         Ok::<_, tower::BoxError>(http::Response::new(()))
///     });
/// let mut request = http::Request::post("https://mcp.example.com/mcp").body(Full::new(Bytes::new()))?;
/// request.extensions_mut().insert(Principal::new("acme", "alice"));
/// client.oneshot(request).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct OAuthRetryLayer {
    shared: Arc<Shared>,
}

#[derive(Clone)]
struct Shared {
    authorizer: Authorizer,
    mode: Mode,
    max_authorizations: usize,
    default_principal: Option<Principal>,
    max_replay_body: usize,
}

impl fmt::Debug for OAuthRetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match &self.shared.mode {
            Mode::ReturnEarly => "return early".to_owned(),
            Mode::Wait { timeout, .. } => format!("wait up to {timeout:?}"),
        };
        f.debug_struct("OAuthRetryLayer")
            .field("authorizer", &self.shared.authorizer)
            .field("mode", &mode)
            .field("max_authorizations", &self.shared.max_authorizations)
            .finish_non_exhaustive()
    }
}

impl OAuthRetryLayer {
    /// A layer that fails requests needing an authorization with
    /// [`Error::AuthorizationRequired`].
    pub fn return_early(authorizer: Authorizer) -> Self {
        Self::with_mode(authorizer, Mode::ReturnEarly)
    }

    /// A layer that hands authorization URLs to `handler` and waits for the callback.
    pub fn wait(authorizer: Authorizer, handler: impl AuthorizationHandler) -> Self {
        Self::with_mode(
            authorizer,
            Mode::Wait {
                handler: Arc::new(handler),
                timeout: Duration::from_secs(300),
            },
        )
    }

    fn with_mode(authorizer: Authorizer, mode: Mode) -> Self {
        Self {
            shared: Arc::new(Shared {
                authorizer,
                mode,
                max_authorizations: 3,
                default_principal: None,
                max_replay_body: DEFAULT_MAX_REPLAY_BODY,
            }),
        }
    }

    fn update(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        f(Arc::make_mut(&mut self.shared));
        self
    }

    /// How long a request waits for the callback in wait mode (default 5 minutes;
    /// never longer than the flow lives).
    pub fn with_wait_timeout(self, timeout: Duration) -> Self {
        self.update(|shared| {
            if let Mode::Wait { timeout: t, .. } = &mut shared.mode {
                *t = timeout;
            }
        })
    }

    /// How many authorizations one request may make, step-ups included (default 3).
    pub fn with_max_authorizations(self, max: usize) -> Self {
        self.update(|shared| shared.max_authorizations = max.max(1))
    }

    /// The principal for requests that carry none (single-user clients).
    /// (Inserted into requests that name none, so the inner layers see it too.)
    pub fn with_default_principal(self, principal: Principal) -> Self {
        self.update(|shared| shared.default_principal = Some(principal))
    }

    /// The largest request body replayed after an authorization (default 1 MiB). The
    /// copy comes from the [`SilentRefreshLayer`](crate::SilentRefreshLayer) below, so
    /// its limit applies too.
    pub fn with_max_replay_body(self, max: usize) -> Self {
        self.update(|shared| shared.max_replay_body = max)
    }
}

impl<S: Clone> Layer<S> for OAuthRetryLayer {
    type Service = OAuthRetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OAuthRetry {
            retry: Arc::new(Kept {
                shared: self.shared.clone(),
                service: Mutex::new(inner.clone()),
            }),
            inner,
        }
    }
}

/// The service of [`OAuthRetryLayer`].
///
/// A replay after an authorization goes through a clone of the inner service taken
/// when the layer was applied (readied before the call), so a request costs no clone
/// of the inner service: changes made through [`get_mut`](Self::get_mut) reach first
/// sends only.
#[derive(Clone)]
pub struct OAuthRetry<S> {
    inner: S,
    // One reference count per request for all a retry needs.
    retry: Arc<Kept<S>>,
}

/// What a retry needs, kept once per service.
struct Kept<S> {
    shared: Arc<Shared>,
    /// Behind a lock only so that a service that is `Send` but not `Sync` (a
    /// `BoxCloneService`) still makes a `Send` layer; taken once per retry.
    service: Mutex<S>,
}

impl<S: Clone> Kept<S> {
    fn retry(&self) -> Retry<S> {
        Retry {
            shared: self.shared.clone(),
            service: self
                .service
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for OAuthRetry<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthRetry")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> OAuthRetry<S> {
    crate::layer::inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for OAuthRetry<S>
where
    S: Service<Request<ReplayBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ReqBody: RequestBody,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // No copy of the request here: the silent refresh layer below keeps one to
        // replay after a refresh, and hands it back if an authorization is needed.
        hand_back::mark(&mut request, self.retry.shared.default_principal.as_ref());
        // The readied service is called in place; a retry uses the service kept for it.
        ResponseFuture {
            state: State::Calling {
                call: self.inner.call(request.map(ReplayBody::new)),
            },
            retry: Some(self.retry.clone()),
        }
    }
}
