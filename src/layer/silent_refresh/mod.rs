//! Attach the stored bearer token; on a 401, refresh once (single-flight) and replay once.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::SystemTime;

use http::{HeaderValue, Request, Response, header};
use tower::{BoxError, Layer, Service};

use super::hand_back;
use crate::binding::{BindingSlot, Coverage, ServerBinding};
use crate::error::Error;
use crate::fault::{ReauthReason, TransientReason};
use crate::key::{AuthKey, BindingId, Principal};
use crate::refresh::RefreshCoordinator;
use crate::replay::{
    Buffering, DEFAULT_MAX_REPLAY_BODY, ReplayBody, ReplayTemplate, RequestBody, Unfinished,
    buffer_other_now, make_replayable, take_in_memory,
};
use crate::token::{TokenSet, TokenStamp};

mod future;

pub use future::ResponseFuture;
use future::State;

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
    challenges: Challenges,
}

/// What a user without credentials is told instead of sending a request only to be
/// refused: the `WWW-Authenticate` of the 401 their last request without a token got,
/// kept [`CHALLENGE_KEPT_FOR`] (then one request goes out again). A server that answered
/// any request without a token with success serves some requests without
/// authorization: its users' requests always go out.
#[derive(Clone)]
pub(super) struct Challenges {
    known: moka::sync::Cache<AuthKey, Arc<[HeaderValue]>>,
    open: moka::sync::Cache<BindingId, ()>,
}

/// How long a user's last challenge stands for the server's answer.
const CHALLENGE_KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(30);
/// How many users' challenges are kept (the oldest go first).
const CHALLENGES_KEPT: u64 = 10_000;

impl Default for Challenges {
    fn default() -> Self {
        Self {
            known: moka::sync::Cache::builder()
                .max_capacity(CHALLENGES_KEPT)
                .time_to_live(CHALLENGE_KEPT_FOR)
                .build(),
            open: moka::sync::Cache::builder()
                .max_capacity(CHALLENGES_KEPT)
                .build(),
        }
    }
}

impl fmt::Debug for Challenges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Challenges")
            .field("known", &self.known.entry_count())
            .field("open", &self.open.entry_count())
            .finish()
    }
}

impl Challenges {
    /// `key`'s request without a token got 401 with `challenge` (a Bearer one only:
    /// anything else, or none, tells a client nothing to sign in with).
    pub(super) fn refused(&self, key: &AuthKey, challenge: &[HeaderValue]) {
        let bearer = challenge.iter().any(|value| {
            value
                .as_bytes()
                .get(..6)
                .is_some_and(|scheme| scheme.eq_ignore_ascii_case(b"bearer"))
        });
        if bearer && !self.open.contains_key(&key.binding()) {
            self.known.insert(key.clone(), challenge.into());
        }
    }

    /// A request without a token to `binding` succeeded.
    pub(super) fn answered(&self, binding: BindingId) {
        self.open.insert(binding, ());
    }

    fn of(&self, key: &AuthKey) -> Option<Vec<HeaderValue>> {
        if self.open.contains_key(&key.binding()) {
            return None;
        }
        self.known.get(key).map(|challenge| challenge.to_vec())
    }
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
            challenges: Challenges::default(),
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
    crate::layer::inner_service_accessors!();
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
                challenges: layer.challenges.clone(),
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
    challenges: Challenges,
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
        Some((key, context)) => {
            let token = context
                .coordinator
                .token(key, &context.binding)
                .await
                .map_err(|error| (error.into(), replay.clone()))?;
            // Nothing usable stored (never signed in, or the refresh token was retired)
            // and the server's challenge known from an earlier 401: it would only refuse
            // again. Nothing is sent; the layer above starts the sign-in, and a later
            // call finds the new credentials in the store. Without a known challenge
            // the request goes out to learn it (its scope guides the sign-in).
            if token.is_none()
                && let Some(challenge) = context.challenges.of(key)
            {
                let error = Error::reauth(ReauthReason::NoCredentials).with_challenge(challenge);
                return Err((error.into(), replay));
            }
            token
        }
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
