//! [`PrincipalFromHeaderLayer`]: the caller's [`Principal`] from a header set by a
//! trusted front proxy.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderName, Request, Response, StatusCode};
use pin_project::pin_project;
use tower::{Layer, Service};

use crate::key::Principal;

/// Puts the caller's [`Principal`] (this layer's tenant, the header's value as the
/// subject) in each request's extensions, and takes the header off the request so it
/// goes no further. A request without the header, or with several values or an empty
/// or non-visible-ASCII one, is answered `401` or `400` (empty body) and never reaches
/// the inner service.
///
/// Only for a server that a front proxy alone can reach, and that proxy must set (not
/// append to) the header on every request: anyone who can reach the server directly
/// can claim any identity with it.
///
/// ```
/// use http::{HeaderName, Request, Response};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_mcp_auth::Principal;
/// use tower_mcp_auth::server::PrincipalFromHeaderLayer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// let app = ServiceBuilder::new()
///     .layer(PrincipalFromHeaderLayer::new(
///         "acme",
///         HeaderName::from_static("x-forwarded-user"),
///     ))
///     .service_fn(|request: Request<String>| async move {
///         let who = Principal::from_extensions(request.extensions()).unwrap();
///         assert_eq!(who.subject(), "alice");
///         assert!(request.headers().get("x-forwarded-user").is_none());
///         Ok::<_, tower::BoxError>(Response::new(String::new()))
///     });
/// let request = Request::get("/mcp").header("x-forwarded-user", "alice").body(String::new())?;
/// assert_eq!(app.clone().oneshot(request).await?.status(), 200);
/// let anonymous = Request::get("/mcp").body(String::new())?;
/// assert_eq!(app.oneshot(anonymous).await?.status(), 401);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct PrincipalFromHeaderLayer {
    tenant: Arc<str>,
    header: HeaderName,
}

impl PrincipalFromHeaderLayer {
    /// Callers of `tenant`, named by `header` (a name from configuration parses with
    /// `HeaderName::try_from`, whose error says what is wrong with it).
    pub fn new(tenant: impl Into<Arc<str>>, header: HeaderName) -> Self {
        Self {
            tenant: tenant.into(),
            header,
        }
    }
}

impl<S> Layer<S> for PrincipalFromHeaderLayer {
    type Service = PrincipalFromHeader<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PrincipalFromHeader {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`PrincipalFromHeaderLayer`].
#[derive(Clone, Debug)]
pub struct PrincipalFromHeader<S> {
    inner: S,
    layer: PrincipalFromHeaderLayer,
}

impl<S> PrincipalFromHeader<S> {
    crate::layer::inner_service_accessors!();
}

impl<S, B, ResBody> Service<Request<B>> for PrincipalFromHeader<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let mut values = request.headers().get_all(&self.layer.header).iter();
        let subject = match (values.next(), values.next()) {
            (None, _) => Err(StatusCode::UNAUTHORIZED),
            (Some(value), None) => value
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic()))
                .map(str::to_owned)
                .ok_or(StatusCode::BAD_REQUEST),
            (Some(_), Some(_)) => Err(StatusCode::BAD_REQUEST),
        };
        match subject {
            Ok(subject) => {
                request.headers_mut().remove(&self.layer.header);
                request
                    .extensions_mut()
                    .insert(Principal::new(&*self.layer.tenant, subject));
                ResponseFuture::Called {
                    future: self.inner.call(request),
                }
            }
            Err(status) => {
                let mut refused = Response::new(ResBody::default());
                *refused.status_mut() = status;
                ResponseFuture::Refused {
                    response: Some(refused),
                }
            }
        }
    }
}

/// Response future of [`PrincipalFromHeader`].
#[pin_project(project = ResponseFutureProj)]
pub enum ResponseFuture<F, ResBody> {
    /// The inner service's call.
    Called {
        /// Its future.
        #[pin]
        future: F,
    },
    /// Refused here, for lack of a usable identity.
    Refused {
        /// The answer, until it is taken.
        response: Option<Response<ResBody>>,
    },
}

impl<F, ResBody, E> Future for ResponseFuture<F, ResBody>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ResponseFutureProj::Called { future } => future.poll(cx),
            ResponseFutureProj::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;

    async fn status(request: Request<()>) -> StatusCode {
        let layer = PrincipalFromHeaderLayer::new("acme", HeaderName::from_static("x-user"));
        let service = layer.layer(tower::service_fn(|request: Request<()>| async move {
            let who = Principal::from_extensions(request.extensions()).cloned();
            assert_eq!(who, Some(Principal::new("acme", "alice")));
            Ok::<_, std::convert::Infallible>(Response::new(()))
        }));
        service.oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn one_visible_value_names_the_caller_anything_else_is_refused() {
        let with = |values: &[&str]| {
            let mut request = Request::new(());
            for value in values {
                request
                    .headers_mut()
                    .append("x-user", value.parse().unwrap());
            }
            request
        };
        assert_eq!(status(with(&["alice"])).await, StatusCode::OK);
        assert_eq!(status(with(&[])).await, StatusCode::UNAUTHORIZED);
        assert_eq!(
            status(with(&["alice", "bob"])).await,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(status(with(&[""])).await, StatusCode::BAD_REQUEST);
        assert_eq!(status(with(&["al ice"])).await, StatusCode::BAD_REQUEST);
    }
}
