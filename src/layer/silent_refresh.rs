//! Attach the stored bearer token; on a 401, refresh once (single-flight) and replay once.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use http::{HeaderValue, Request, Response, StatusCode, header};
use pin_project::pin_project;
use tower::util::Oneshot;
use tower::{BoxError, Layer, Service};
use tracing::debug;

use super::hand_back::{self, HandBack, Sent};
use crate::binding::{BindingSlot, Coverage, ServerBinding};
use crate::error::{Error, TransientReason};
use crate::key::{AuthKey, Principal};
use crate::refresh::RefreshCoordinator;
use crate::replay::{
    Buffering, DEFAULT_MAX_REPLAY_BODY, ReplayBody, ReplayTemplate, RequestBody, Unfinished,
    UnresolvedUri, buffer_other_now, make_replayable, take_in_memory,
};
use crate::store::BoxFuture;
use crate::token::{TokenSet, TokenStamp};

/// Adds `Authorization: Bearer` from the credential store to requests for one MCP
/// server, refreshing ahead of expiry, and recovers from a 401 by one single-flight
/// refresh and one replay.
///
/// * Requests for other origins or paths pass through untouched: tokens go only to the
///   resource they were issued for.
/// * The principal comes from the request's extensions ([`Principal`]) or the
///   layer's default; without either the request fails with
///   [`Error::MissingPrincipal`] and is not sent.
/// * Bodies up to 1 MiB (configurable) with a known size are buffered for the replay;
///   larger or streaming bodies are sent once and a 401 is returned as it is.
/// * When refresh cannot help, the call fails with [`Error::ReauthRequired`] or
///   [`Error::Transient`], carrying the 401's `WWW-Authenticate`.
///
/// ```
/// use std::sync::Arc;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_mcp_auth::{store::MemoryStore, Principal, RefreshCoordinator, ServerBinding, SilentRefreshLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let binding = ServerBinding::public_client(
///     "https://mcp.example.com/mcp",
///     "https://auth.example.com/token",
///     "my-client",
/// )?;
/// let coordinator = RefreshCoordinator::new(Arc::new(MemoryStore::new()));
/// let client = ServiceBuilder::new()
///     .layer(SilentRefreshLayer::new(coordinator, binding).with_default_principal(Principal::new("acme", "alice")))
///     .service_fn(|request: http::Request<tower_mcp_auth::ReplayBody>| async move {
///         // Your HTTP client goes here (hyper, reqwest, ...). No token stored yet:
///         assert!(request.headers().get("authorization").is_none());
///         Ok::<_, tower::BoxError>(http::Response::new(()))
///     });
/// let request = http::Request::post("https://mcp.example.com/mcp").body(Full::new(Bytes::new()))?;
/// client.oneshot(request).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct SilentRefreshLayer {
    coordinator: RefreshCoordinator,
    bindings: BindingSlot,
    default_principal: Option<Principal>,
    max_replay_body: usize,
}

impl SilentRefreshLayer {
    /// A layer for the MCP server of `bindings` (a [`ServerBinding`], or the
    /// [`BindingSlot`] an [`OAuthRetryLayer`](crate::OAuthRetryLayer) fills), refreshing
    /// through `coordinator`.
    pub fn new(coordinator: RefreshCoordinator, bindings: impl Into<BindingSlot>) -> Self {
        Self {
            coordinator,
            bindings: bindings.into(),
            default_principal: None,
            max_replay_body: DEFAULT_MAX_REPLAY_BODY,
        }
    }

    /// The principal for requests that carry none (single-user clients).
    pub fn with_default_principal(mut self, principal: Principal) -> Self {
        self.default_principal = Some(principal);
        self
    }

    /// The largest request body buffered for a replay (default 1 MiB).
    pub fn with_max_replay_body(mut self, max: usize) -> Self {
        self.max_replay_body = max;
        self
    }
}

impl<S: Clone> Layer<S> for SilentRefreshLayer {
    type Service = SilentRefresh<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SilentRefresh {
            shared: Arc::new(Shared {
                layer: self.clone(),
                replay_service: Mutex::new(inner.clone()),
            }),
            inner,
        }
    }
}

/// The service of [`SilentRefreshLayer`].
///
/// A replay goes through a clone of the inner service taken when the layer was
/// applied (readied before the call), so a request costs no clone of the inner
/// service: changes made through [`get_mut`](Self::get_mut) reach first sends only.
#[derive(Clone, Debug)]
pub struct SilentRefresh<S> {
    inner: S,
    // Behind one `Arc`: the service is cloned per request, and so is this for the
    // response future, which needs it only on a 401.
    shared: Arc<Shared<S>>,
}

#[derive(Debug)]
struct Shared<S> {
    layer: SilentRefreshLayer,
    /// Behind a lock only so that a service that is `Send` but not `Sync` (a
    /// `BoxCloneService`) still makes a `Send` layer; taken once per replay.
    replay_service: Mutex<S>,
}

impl<S: Clone> Shared<S> {
    fn replay_service(&self) -> S {
        self.replay_service
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl<S> SilentRefresh<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SilentRefresh<S>
where
    S: Service<Request<ReplayBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    ReqBody: RequestBody,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let layer = &self.shared.layer;
        let coverage = layer.bindings.coverage(request.uri());
        if coverage == Coverage::Outside {
            return self.outside(request);
        }
        let default = layer.default_principal.as_ref();
        let (principal, hand_back) = hand_back::take_principal_and_mark(&mut request, default);
        let Some(principal) = principal else {
            return ResponseFuture::failed(Error::MissingPrincipal);
        };
        let Some(key) = layer
            .bindings
            .id_for_principal(&principal)
            .map(|binding| AuthKey::of(principal, binding))
        else {
            return self.unbound(request, hand_back);
        };
        // The hot path: a valid token at hand and a body already in memory. No future
        // is boxed and nothing is awaited before the inner service is called (in place:
        // a replay uses the service kept for it). What is not on it sits in functions
        // of its own: small, this one gets the template, the body's conversion and the
        // inner call inlined, and the request is not copied between them.
        let Some(token) = layer.coordinator.token_now(&key) else {
            return self.later(Some(key), PrepareInput::Request(request), hand_back);
        };
        let Some(header) = token.header else {
            return ResponseFuture::failed(invalid_token_header());
        };
        let carried = Some(token.stamp);
        let sent_at = hand_back.then(|| token.now.unwrap_or_else(SystemTime::now));
        let bytes = match take_in_memory(request.body_mut(), layer.max_replay_body) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                let sent = (header, carried, sent_at);
                return self.not_in_memory(request, key, sent, hand_back);
            }
            Err(error) => return ResponseFuture::failed(error),
        };
        // Built where they are kept: the template in the future, the request in the
        // inner service's call (a copy of either costs as much as a lookup).
        ResponseFuture {
            replay: Some((
                ReplayTemplate::of_request_to(
                    &request,
                    bytes.clone(),
                    Some(key.into_principal()),
                    coverage == Coverage::Exact,
                ),
                carried,
            )),
            service: None,
            shared: Some(self.shared.clone()),
            sent_at,
            state: State::Calling {
                call: self.inner.call({
                    request.headers_mut().insert(header::AUTHORIZATION, header);
                    request.map(|_| ReplayBody::buffered(bytes))
                }),
            },
        }
    }
}

impl<S> SilentRefresh<S>
where
    S: Service<Request<ReplayBody>> + Clone,
{
    /// Another server's request goes on untouched, but for the mark of a layer above:
    /// it is this layer's to take off (an inner stack must not hand back).
    #[inline(never)]
    fn outside<B: RequestBody>(&mut self, mut request: Request<B>) -> ResponseFuture<S> {
        hand_back::take_mark(&mut request);
        ResponseFuture::calling(self.inner.call(request.map(ReplayBody::new)))
    }

    /// A valid token at hand, and a body not in memory: buffered now if it can be,
    /// sent as it is if it is too large, finished in the future if it is still
    /// arriving.
    #[inline(never)]
    fn not_in_memory<B: RequestBody>(
        &mut self,
        request: Request<B>,
        key: AuthKey,
        (header, carried, sent_at): (HeaderValue, Option<TokenStamp>, Option<SystemTime>),
        hand_back: bool,
    ) -> ResponseFuture<S> {
        let max_replay_body = self.shared.layer.max_replay_body;
        let (mut request, replay) = match buffer_other_now(request, max_replay_body) {
            Ok(Buffering::Ready(request, replay)) => (request, replay),
            Ok(Buffering::Unfinished(unfinished)) => {
                let input = PrepareInput::<B>::Unfinished(unfinished);
                return self.later(Some(key), input, hand_back);
            }
            Err(error) => return ResponseFuture::failed(error),
        };
        request.headers_mut().insert(header::AUTHORIZATION, header);
        ResponseFuture {
            state: State::Calling {
                call: self.inner.call(request),
            },
            service: None,
            shared: replay.is_some().then(|| self.shared.clone()),
            replay: replay.map(|template| (template.unresolved(), carried)),
            sent_at,
        }
    }

    /// No client registered for the request's tenant yet: nothing to attach or
    /// refresh. A 401 goes back as it is, for an `OAuthRetryLayer` to act on (with the
    /// request to replay, when it asked for it).
    #[inline(never)]
    fn unbound<B: RequestBody>(
        &mut self,
        request: Request<B>,
        hand_back: bool,
    ) -> ResponseFuture<S> {
        if hand_back {
            return self.later(None, PrepareInput::Request(request), true);
        }
        ResponseFuture::calling(self.inner.call(request.map(ReplayBody::new)))
    }

    /// The path that awaits: the store, a refresh, or a body still arriving. Without a
    /// key (no binding yet) the request is only buffered, for the layer above to
    /// replay. The readied service goes into the future; a fresh clone stays behind.
    #[inline(never)]
    fn later<B: RequestBody>(
        &mut self,
        key: Option<AuthKey>,
        input: PrepareInput<B>,
        hand_back: bool,
    ) -> ResponseFuture<S> {
        let layer = &self.shared.layer;
        // The binding itself (the hot path took only its id); gone meanwhile, the
        // request goes as one without.
        let key = key.and_then(|key| {
            let binding = layer.bindings.for_principal(key.principal())?;
            Some((AuthKey::new(key.principal(), binding.id()), binding))
        });
        let context = key.map(|(key, binding)| {
            let refresh = RefreshContext {
                coordinator: layer.coordinator.clone(),
                binding,
            };
            (key, refresh)
        });
        let has_key = context.is_some();
        let prepare = Box::pin(prepare(context, input, layer.max_replay_body));
        let clone = self.inner.clone();
        ResponseFuture {
            state: State::Preparing { prepare },
            service: Some(std::mem::replace(&mut self.inner, clone)),
            shared: has_key.then(|| self.shared.clone()),
            replay: None,
            sent_at: hand_back.then(SystemTime::now),
        }
    }
}

/// A request for the async path: as it came, or with its body partly read.
// Moved once, into the boxed future of the slow path.
#[allow(clippy::large_enum_variant)]
enum PrepareInput<B> {
    Request(Request<B>),
    Unfinished(Box<Unfinished>),
}

fn invalid_token_header() -> Error {
    Error::transient(
        TransientReason::InvalidResponse("access token is not a valid header value".into()),
        None,
    )
}

/// What a refresh needs besides the key.
struct RefreshContext {
    coordinator: RefreshCoordinator,
    binding: Arc<ServerBinding>,
}

struct Prepared {
    request: Request<ReplayBody>,
    replay: Option<ReplayTemplate>,
    carried: Option<TokenStamp>,
}

/// A failure before the request was sent, with the request as buffered so far.
type Unsent = (BoxError, Option<ReplayTemplate>);

async fn prepare<B>(
    context: Option<(AuthKey, RefreshContext)>,
    input: PrepareInput<B>,
    max_replay_body: usize,
) -> Result<Prepared, Unsent>
where
    B: RequestBody,
{
    // Buffered first: a failure to get a token still hands the request back.
    let buffered = match input {
        PrepareInput::Request(request) => make_replayable(request, max_replay_body).await,
        PrepareInput::Unfinished(unfinished) => unfinished.finish(max_replay_body).await,
    };
    let (mut request, replay) = buffered.map_err(|error| (error, None))?;
    let token = match &context {
        Some((key, context)) => context
            .coordinator
            .token(key, &context.binding)
            .await
            .map_err(|error| (error.into(), replay.clone()))?,
        None => None,
    };
    let carried = match &token {
        Some(token) => {
            let header = bearer(token).map_err(|error| (error.into(), replay.clone()))?;
            request.headers_mut().insert(header::AUTHORIZATION, header);
            Some(token.stamp())
        }
        None => None,
    };
    Ok(Prepared {
        request,
        replay,
        carried,
    })
}

fn bearer(token: &TokenSet) -> Result<HeaderValue, Error> {
    token.bearer_header().ok_or_else(invalid_token_header)
}

/// Response future of [`SilentRefresh`].
#[pin_project(project = ResponseFutureProj)]
pub struct ResponseFuture<S>
where
    S: Service<Request<ReplayBody>>,
{
    #[pin]
    state: State<S>,
    /// The readied service, for a call once the request is prepared.
    service: Option<S>,
    /// The layer, for a refresh and a replay after a 401 (`None`: a 401 is passed on).
    shared: Option<Arc<Shared<S>>>,
    /// The request to replay and the token set it carried.
    replay: Option<(ReplayTemplate<UnresolvedUri>, Option<TokenStamp>)>,
    /// When the layer above asked for the request back: when it was sent.
    sent_at: Option<SystemTime>,
}

#[pin_project(project = StateProj)]
enum State<S>
where
    S: Service<Request<ReplayBody>>,
{
    Preparing {
        prepare: BoxFuture<'static, Result<Prepared, Unsent>>,
    },
    Calling {
        #[pin]
        call: S::Future,
    },
    Refreshing {
        refresh: BoxFuture<'static, Result<Arc<TokenSet>, Error>>,
        www_authenticate: Vec<HeaderValue>,
    },
    Replaying {
        // Boxed: replays are rare and the request inside is large.
        call: Pin<Box<Oneshot<S, Request<ReplayBody>>>>,
    },
    Failed {
        error: Option<BoxError>,
    },
}

impl<S> ResponseFuture<S>
where
    S: Service<Request<ReplayBody>>,
{
    fn calling(call: S::Future) -> Self {
        Self {
            state: State::Calling { call },
            service: None,
            shared: None,
            replay: None,
            sent_at: None,
        }
    }

    #[cold]
    #[inline(never)]
    fn failed(error: impl Into<BoxError>) -> Self {
        Self {
            state: State::Failed {
                error: Some(error.into()),
            },
            service: None,
            shared: None,
            replay: None,
            sent_at: None,
        }
    }
}

/// `result`, with the request to replay (and the token set it carried) attached when
/// the layer above asked for it (`kept` is called only then).
fn finish<R>(
    result: Result<Response<R>, BoxError>,
    sent_at: Option<SystemTime>,
    kept: impl FnOnce() -> Option<(ReplayTemplate, Option<TokenStamp>)>,
) -> Result<Response<R>, BoxError> {
    let Some(at) = sent_at else {
        return result;
    };
    let acted_on = result.as_ref().map_or(true, |response| {
        matches!(
            response.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        )
    });
    if !acted_on {
        return result;
    }
    match kept() {
        Some((template, carried)) => {
            let sent = Sent { at, carried };
            hand_back::attach(result, HandBack { template, sent })
        }
        None => result,
    }
}

/// The kept template with its URI (the layer's resource standing for the one not
/// kept).
fn resolved<S>(
    replay: &Option<(ReplayTemplate<UnresolvedUri>, Option<TokenStamp>)>,
    shared: &Option<Arc<Shared<S>>>,
) -> Option<(ReplayTemplate, Option<TokenStamp>)> {
    let (template, carried) = replay.as_ref()?;
    let resource = shared.as_ref().and_then(|s| s.layer.bindings.exact_uri());
    Some((template.resolve(resource)?, *carried))
}

impl<S, ResBody> Future for ResponseFuture<S>
where
    S: Service<Request<ReplayBody>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // Nearly every poll: the first send's answer, with nothing to refresh and
        // nothing to hand back. The rest sits out of line: this function's
        // frame and register saves do not pay for it.
        if let StateProj::Calling { call } = this.state.as_mut().project() {
            let response = ready!(call.poll(cx)).map_err(Into::into)?;
            if this.sent_at.is_none() && response.status() != StatusCode::UNAUTHORIZED {
                return Poll::Ready(Ok(response));
            }
            if let Some(output) = on_response(&mut this, response) {
                return Poll::Ready(output);
            }
        }
        poll_states(&mut this, cx)
    }
}

/// Every state, until the output is ready or the future waits.
#[inline(never)]
fn poll_states<S, ResBody>(
    this: &mut ResponseFutureProj<'_, S>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<ResBody>, BoxError>>
where
    S: Service<Request<ReplayBody>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
{
    loop {
        match this.state.as_mut().project() {
            StateProj::Preparing { prepare } => {
                let prepared = match ready!(prepare.as_mut().poll(cx)) {
                    Ok(prepared) => prepared,
                    Err((error, template)) => {
                        let kept = || template.map(|template| (template, None));
                        return Poll::Ready(finish(Err(error), *this.sent_at, kept));
                    }
                };
                let Some(mut service) = this.service.take() else {
                    return Poll::Ready(Err("response future polled after completion".into()));
                };
                *this.replay = prepared
                    .replay
                    .map(|template| (template.unresolved(), prepared.carried));
                let call = service.call(prepared.request);
                this.state.set(State::Calling { call });
            }
            StateProj::Calling { call } => {
                let response = ready!(call.poll(cx)).map_err(Into::into)?;
                if let Some(output) = on_response(this, response) {
                    return Poll::Ready(output);
                }
            }
            StateProj::Refreshing {
                refresh,
                www_authenticate,
            } => {
                let (replay, shared) = (&*this.replay, &*this.shared);
                let token = match ready!(refresh.as_mut().poll(cx)) {
                    Ok(token) => token,
                    Err(error) => {
                        let challenge = std::mem::take(www_authenticate);
                        let error = error.with_challenge(challenge).into();
                        let kept = || resolved(replay, shared);
                        return Poll::Ready(finish(Err(error), *this.sent_at, kept));
                    }
                };
                let (Some((template, _)), Some(shared)) = (resolved(replay, shared), shared) else {
                    return Poll::Ready(Err("response future polled after completion".into()));
                };
                let service = shared.replay_service();
                let mut request = template.request();
                request
                    .headers_mut()
                    .insert(header::AUTHORIZATION, bearer(&token)?);
                // What the replay carries, should it be refused and handed back.
                if let Some((_, carried)) = this.replay.as_mut() {
                    *carried = Some(token.stamp());
                }
                this.state.set(State::Replaying {
                    call: Box::pin(Oneshot::new(service, request)),
                });
            }
            StateProj::Replaying { call } => {
                let result = ready!(call.as_mut().poll(cx)).map_err(Into::into);
                let (replay, shared) = (&*this.replay, &*this.shared);
                return Poll::Ready(finish(result, *this.sent_at, || resolved(replay, shared)));
            }
            StateProj::Failed { error } => {
                let error = error
                    .take()
                    .unwrap_or_else(|| "response future polled after completion".into());
                return Poll::Ready(Err(error));
            }
        }
    }
}

/// The answer to a send: the output (`Some`), or a refresh begun (`None`, the state
/// moved on).
#[inline(never)]
fn on_response<S, ResBody>(
    this: &mut ResponseFutureProj<'_, S>,
    response: Response<ResBody>,
) -> Option<Result<Response<ResBody>, BoxError>>
where
    S: Service<Request<ReplayBody>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
{
    let (replay, shared) = (&*this.replay, &*this.shared);
    let kept = || resolved(replay, shared);
    if response.status() != StatusCode::UNAUTHORIZED {
        return Some(finish(Ok(response), *this.sent_at, kept));
    }
    let (Some(shared), Some((template, carried))) = (shared, replay) else {
        debug!(
            "401 passed on: no stored credentials to refresh, or the request cannot be replayed"
        );
        return Some(finish(Ok(response), *this.sent_at, kept));
    };
    let www_authenticate = response
        .headers()
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .cloned()
        .collect();
    // The principal the request was sent for (the layer put it there). The binding
    // looked up again: the request needed only its id.
    let layer = &shared.layer;
    let Some((principal, binding)) = template
        .principal()
        .and_then(|principal| Some((principal, layer.bindings.for_principal(principal)?)))
    else {
        return Some(finish(Ok(response), *this.sent_at, kept));
    };
    let key = AuthKey::new(principal, binding.id());
    let coordinator = layer.coordinator.clone();
    let generation = carried.map(|stamp| stamp.generation);
    debug!(key = %key, "401 from the resource server; refreshing");
    let refresh = Box::pin(async move {
        coordinator
            .refresh_rejected(&key, &binding, generation)
            .await
    });
    this.state.set(State::Refreshing {
        refresh,
        www_authenticate,
    });
    None
}
