//! Sends an On-Behalf-Of token as the bearer; never the user's own token.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Request, Response, StatusCode, header};
use pin_project::pin_project;
use tower::util::Oneshot;
use tower::{BoxError, Layer, Service};

use super::with_default_principal;
use crate::error::Error;
use crate::fault::{ConfigError, TransientReason};
use crate::key::Principal;
use crate::obo::{OboError, OboExchanger, OboToken, UserAssertion};
use crate::replay::{
    DEFAULT_MAX_REPLAY_BODY, ReplayBody, ReplayTemplate, RequestBody, make_replayable,
};
use crate::store::BoxFuture;

/// Exchanges the request's [`UserAssertion`] for an On-Behalf-Of token
/// ([`OboExchanger`]: cached, single-flight) and sends that as
/// `Authorization: Bearer` (marked sensitive) to one MCP server.
///
/// * **Fail closed.** A request for the server without an assertion, or whose exchange
///   fails, is not sent: it fails with [`Error::Obo`] or [`Error::Transient`]. There is
///   no fallback to another auth mode, to a stale token, or to the user's own token;
///   any `Authorization` header the request carried is replaced.
/// * On a 401 the layer exchanges once more, bypassing the cache and any exchange in
///   flight, and replays once; a second 401 fails with
///   [`OboError::RejectedByResource`]. Bodies up to 1 MiB with a known size are
///   buffered for that; a request with a larger or streaming body gets the 401 back.
/// * Requests for other origins or paths pass through untouched.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_mcp_auth::{obo::ClientAuth, Error, obo::OboConfig, obo::OboError, OboExchanger, obo::OboGrant, OboHeaderLayer, Principal, Secret};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let exchanger = OboExchanger::new(OboConfig::new(
///     "https://idp.example.com/token".parse()?,
///     "gateway",
///     ClientAuth::SecretBasic(Secret::new("s3cr3t")),
///     OboGrant::EntraOnBehalfOf,
/// ));
/// let client = ServiceBuilder::new()
///     .layer(OboHeaderLayer::new(exchanger, "https://mcp.example.com/mcp")?
///         .with_default_principal(Principal::new("acme", "alice")))
///     .service_fn(|_: http::Request<tower_mcp_auth::ReplayBody>| async {
///         Ok::<_, tower::BoxError>(http::Response::new(()))
///     });
/// // No UserAssertion in the request: it is not sent.
/// let request = http::Request::post("https://mcp.example.com/mcp").body(Full::new(Bytes::new()))?;
/// let error = client.oneshot(request).await.unwrap_err();
/// assert!(matches!(Error::find(error.as_ref()), Some(Error::Obo(OboError::MissingAssertion))));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct OboHeaderLayer {
    shared: Arc<Shared>,
}

#[derive(Clone)]
struct Shared {
    exchanger: OboExchanger,
    resource: crate::binding::Scope,
    default_principal: Option<Principal>,
    max_replay_body: usize,
}

impl fmt::Debug for OboHeaderLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OboHeaderLayer")
            .field("exchanger", &self.shared.exchanger)
            .field("resource", &self.shared.resource.resource().as_str())
            .finish_non_exhaustive()
    }
}

impl OboHeaderLayer {
    /// A layer for the MCP server at `resource`, exchanging through `exchanger`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `resource` is not an absolute http(s) URL.
    pub fn new(exchanger: OboExchanger, resource: &str) -> Result<Self, ConfigError> {
        let resource = crate::binding::parse_http_url("resource", resource)?;
        Ok(Self {
            shared: Arc::new(Shared {
                exchanger,
                resource: crate::binding::Scope::new(resource),
                default_principal: None,
                max_replay_body: DEFAULT_MAX_REPLAY_BODY,
            }),
        })
    }

    /// The principal (tenant) for requests that carry none.
    pub fn with_default_principal(mut self, principal: Principal) -> Self {
        Arc::make_mut(&mut self.shared).default_principal = Some(principal);
        self
    }

    /// The largest request body buffered for the replay after a 401 (default 1 MiB).
    pub fn with_max_replay_body(mut self, max: usize) -> Self {
        Arc::make_mut(&mut self.shared).max_replay_body = max;
        self
    }
}

impl<S> Layer<S> for OboHeaderLayer {
    type Service = OboHeader<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OboHeader {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`OboHeaderLayer`].
#[derive(Clone)]
pub struct OboHeader<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for OboHeader<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OboHeader")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> OboHeader<S> {
    crate::layer::inner_service_accessors!();
}

type Prepared = Result<(Request<ReplayBody>, Option<ReplayTemplate>, Arc<OboToken>), BoxError>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for OboHeader<S>
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
        // The readied service goes into the future; `self` keeps a fresh clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = &self.shared;
        if !shared.resource.covers(request.uri()) {
            return ResponseFuture::with(State::Calling {
                call: inner.call(request.map(ReplayBody::new)),
            });
        }
        let Some(assertion) = request.extensions().get::<UserAssertion>().cloned() else {
            return ResponseFuture::failed(Error::Obo(OboError::MissingAssertion));
        };
        let principal = with_default_principal(&mut request, shared.default_principal.as_ref());
        let Some(principal) = principal else {
            return ResponseFuture::failed(Error::MissingPrincipal);
        };
        let exchanger = shared.exchanger.clone();
        let max = shared.max_replay_body;
        let (p, a) = (principal.clone(), assertion.clone());
        let prepare = Box::pin(async move {
            let token = exchanger.token(&p, &a).await?;
            let (mut request, template) = make_replayable(request, max).await?;
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, bearer(&token)?);
            Ok((request, template, token))
        });
        let for_replay = inner.clone();
        ResponseFuture {
            state: State::Preparing {
                prepare,
                service: Some(inner),
            },
            replay: Some((shared.exchanger.clone(), principal, assertion, for_replay)),
            template: None,
            sent: None,
        }
    }
}

fn bearer(token: &OboToken) -> Result<HeaderValue, Error> {
    let mut value = HeaderValue::try_from(format!("Bearer {}", token.access_token.expose()))
        .map_err(|_| Error::Transient {
            reason: TransientReason::InvalidResponse(
                "exchanged token is not a valid header value".into(),
            ),
            retry_after: None,
            www_authenticate: Vec::new(),
        })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Response future of [`OboHeader`].
#[pin_project]
pub struct ResponseFuture<S, R>
where
    S: Service<Request<ReplayBody>>,
{
    #[pin]
    state: State<S, R>,
    replay: Option<(OboExchanger, Principal, UserAssertion, S)>,
    template: Option<ReplayTemplate>,
    /// The token the first attempt carried: a 401 re-exchanges only if it is still
    /// the cached one.
    sent: Option<Arc<OboToken>>,
}

#[pin_project(project = StateProj)]
enum State<S, R>
where
    S: Service<Request<ReplayBody>>,
{
    Preparing {
        prepare: BoxFuture<'static, Prepared>,
        service: Option<S>,
    },
    Calling {
        #[pin]
        call: S::Future,
    },
    Replaying {
        replay: BoxFuture<'static, Result<Response<R>, BoxError>>,
    },
    Failed {
        error: Option<Error>,
    },
}

impl<S, R> ResponseFuture<S, R>
where
    S: Service<Request<ReplayBody>>,
{
    fn with(state: State<S, R>) -> Self {
        Self {
            state,
            replay: None,
            template: None,
            sent: None,
        }
    }

    fn failed(error: Error) -> Self {
        Self::with(State::Failed { error: Some(error) })
    }
}

impl<S, R> Future for ResponseFuture<S, R>
where
    S: Service<Request<ReplayBody>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    R: Send + 'static,
{
    type Output = Result<Response<R>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Preparing { prepare, service } => {
                    let (request, template, token) = ready!(prepare.as_mut().poll(cx))?;
                    let Some(mut service) = service.take() else {
                        return Poll::Ready(Err("response future polled after completion".into()));
                    };
                    *this.template = template;
                    *this.sent = Some(token);
                    let call = service.call(request);
                    this.state.set(State::Calling { call });
                }
                StateProj::Calling { call } => {
                    let response = ready!(call.poll(cx)).map_err(Into::into)?;
                    if response.status() != StatusCode::UNAUTHORIZED {
                        return Poll::Ready(Ok(response));
                    }
                    let (Some(template), Some(replay), Some(sent)) =
                        (this.template.take(), this.replay.take(), this.sent.take())
                    else {
                        return Poll::Ready(Ok(response));
                    };
                    let (exchanger, principal, assertion, service) = replay;
                    tracing::debug!("401 for an OBO token; exchanging again, once");
                    let replay = Box::pin(async move {
                        let token = exchanger
                            .token_after_rejection(&principal, &assertion, &sent)
                            .await?;
                        let mut request = template.request();
                        request
                            .headers_mut()
                            .insert(header::AUTHORIZATION, bearer(&token)?);
                        let response = Oneshot::new(service, request).await.map_err(Into::into)?;
                        if response.status() == StatusCode::UNAUTHORIZED {
                            return Err(Error::Obo(OboError::RejectedByResource).into());
                        }
                        Ok(response)
                    });
                    this.state.set(State::Replaying { replay });
                }
                StateProj::Replaying { replay } => return replay.as_mut().poll(cx),
                StateProj::Failed { error } => {
                    let error = error.take().map_or_else(
                        || "response future polled after completion".into(),
                        Into::into,
                    );
                    return Poll::Ready(Err(error));
                }
            }
        }
    }
}
