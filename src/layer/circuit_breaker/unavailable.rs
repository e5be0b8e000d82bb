//! `503 Service Unavailable` with `Retry-After` for refused calls (proxies).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project::pin_project;
use tower::{BoxError, Layer, Service};

use crate::error::Error;

/// Turns [`Error::CircuitOpen`] into a `503 Service Unavailable` response with
/// `Retry-After` (whole seconds, rounded up), for proxies that must answer something.
/// Stack it outside [`CircuitBreakerLayer`](super::CircuitBreakerLayer); other errors pass through.
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_mcp_auth::{BreakerConfig, CircuitBreakerLayer, layer::circuit_breaker::ServiceUnavailableOnOpenLayer};
///
/// let stack = ServiceBuilder::new()
///     .layer(ServiceUnavailableOnOpenLayer)
///     .layer(CircuitBreakerLayer::new(BreakerConfig::default()));
/// # drop(stack);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct ServiceUnavailableOnOpenLayer;

impl<S> Layer<S> for ServiceUnavailableOnOpenLayer {
    type Service = ServiceUnavailableOnOpen<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServiceUnavailableOnOpen { inner }
    }
}

/// The service of [`ServiceUnavailableOnOpenLayer`].
#[derive(Clone, Debug)]
pub struct ServiceUnavailableOnOpen<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ServiceUnavailableOnOpen<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = BoxError>,
{
    type Response = Response<UnavailableBody<ResBody>>;
    type Error = BoxError;
    type Future = UnavailableFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        UnavailableFuture {
            inner: self.inner.call(request),
        }
    }
}

/// Response future of [`ServiceUnavailableOnOpen`].
#[pin_project]
#[derive(Debug)]
pub struct UnavailableFuture<F> {
    #[pin]
    inner: F,
}

impl<F, ResBody> Future for UnavailableFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, BoxError>>,
{
    type Output = Result<Response<UnavailableBody<ResBody>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = ready!(self.project().inner.poll(cx));
        let retry_after = match result.as_ref().err().and_then(|e| Error::find(e.as_ref())) {
            Some(Error::CircuitOpen { retry_after, .. }) => *retry_after,
            _ => return Poll::Ready(result.map(|r| r.map(UnavailableBody::Inner))),
        };
        let mut response = Response::new(UnavailableBody::Empty);
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, seconds.max(1).into());
        Poll::Ready(Ok(response))
    }
}

/// The response body of [`ServiceUnavailableOnOpen`]: the inner service's body, or
/// the empty body of a `503` it answered itself. Any body type works, no `Default`
/// needed.
#[pin_project(project = UnavailableBodyProj)]
#[derive(Debug)]
pub enum UnavailableBody<B> {
    /// The inner service's response body.
    Inner(#[pin] B),
    /// The empty body of a `503` for a refused call.
    Empty,
}

impl<B: Body> Body for UnavailableBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        match self.project() {
            UnavailableBodyProj::Inner(body) => body.poll_frame(cx),
            UnavailableBodyProj::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Inner(body) => body.is_end_stream(),
            Self::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Inner(body) => body.size_hint(),
            Self::Empty => SizeHint::with_exact(0),
        }
    }
}
