//! The one seam through which the crate talks to authorization servers.
//!
//! [`AuthHttpClient`] wraps any `Service<http::Request<Bytes>, Response =
//! http::Response<Bytes>>` (reqwest by default) and enforces, whatever the service:
//! a timeout on every call and a cap on the response size. The default reqwest client
//! also never follows redirects (a token request must not be replayed elsewhere).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceExt};

use crate::error::TransientReason;
use crate::url_policy::UrlPolicy;

/// The default cap on an authorization server response: 1 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1 << 20;
/// The default timeout of one call to an authorization server.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

type BoxedService = BoxCloneSyncService<http::Request<Bytes>, http::Response<Bytes>, BoxError>;

/// HTTP client for calls to authorization servers.
///
/// ```
/// use std::time::Duration;
/// use tower_mcp_auth::AuthHttpClient;
///
/// // The default: reqwest, no redirects, 10 s timeout, 1 MiB response cap.
/// let client = AuthHttpClient::reqwest().with_timeout(Duration::from_secs(5));
///
/// // Or any tower service, e.g. one with a proxy or custom TLS.
/// let custom = AuthHttpClient::from_service(tower::service_fn(|_req: http::Request<bytes::Bytes>| async {
///     Ok::<_, tower::BoxError>(http::Response::new(bytes::Bytes::new()))
/// }));
/// # drop((client, custom));
/// ```
#[derive(Clone)]
pub struct AuthHttpClient {
    service: BoxedService,
    timeout: Duration,
    max_response_bytes: usize,
}

impl AuthHttpClient {
    /// The default client: reqwest (rustls), redirects disabled, and every address a
    /// host name resolves to checked at connect time against the strict
    /// [`UrlPolicy::default`] (no loopback, private or special-purpose addresses), so
    /// a name that resolves or rebinds to an internal address is refused.
    ///
    /// Should reqwest fail to initialise (no usable TLS backend), every call fails with
    /// that error instead of falling back to a client with another redirect policy.
    pub fn reqwest() -> Self {
        Self::reqwest_with_policy(UrlPolicy::default())
    }

    /// As [`reqwest`](Self::reqwest), checking resolved addresses against `policy`
    /// (e.g. [`UrlPolicy::allow_private_ranges`] for an authorization server inside
    /// the company network). Literal IP hosts are not resolved; the
    /// [`Authorizer`](crate::Authorizer) checks those in every URL it learns.
    ///
    /// [`from_reqwest`](Self::from_reqwest) and [`from_service`](Self::from_service)
    /// use the given client's own resolver: no connect-time check unless that client
    /// has one.
    ///
    /// ```
    /// use tower_mcp_auth::{AuthHttpClient, UrlPolicy};
    ///
    /// let corporate = AuthHttpClient::reqwest_with_policy(UrlPolicy::default().allow_private_ranges());
    /// # drop(corporate);
    /// ```
    pub fn reqwest_with_policy(policy: UrlPolicy) -> Self {
        match reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(DEFAULT_TIMEOUT)
            .dns_resolver(Arc::new(PolicyResolver { policy }))
            .build()
        {
            Ok(client) => Self::from_reqwest(client),
            Err(error) => {
                let error: Arc<str> = format!("reqwest client unavailable: {error}").into();
                Self::from_service(tower::service_fn(move |_: http::Request<Bytes>| {
                    let error = error.clone();
                    async move { Err::<http::Response<Bytes>, BoxError>(error.to_string().into()) }
                }))
            }
        }
    }

    /// Uses a configured reqwest client. Configure it without redirects: token
    /// endpoints must not redirect.
    pub fn from_reqwest(client: reqwest::Client) -> Self {
        let service = tower::service_fn(move |request: http::Request<Bytes>| {
            let client = client.clone();
            async move { send_with_reqwest(&client, request).await }
        });
        Self::from_service(service)
    }

    /// Uses any tower service as the transport.
    pub fn from_service<S>(service: S) -> Self
    where
        S: tower::Service<http::Request<Bytes>, Response = http::Response<Bytes>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        Self {
            service: BoxCloneSyncService::new(service.map_err(Into::into)),
            timeout: DEFAULT_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }

    /// The timeout of one call (default 10 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The response size cap (default 1 MiB; the reqwest transport never reads more
    /// than 1 MiB whatever this says).
    pub fn with_max_response_bytes(mut self, max: usize) -> Self {
        self.max_response_bytes = max;
        self
    }

    /// Sends one request. 5xx and 429 responses come back as errors carrying the status
    /// (and `Retry-After`), so callers classify them without reading bodies.
    pub(crate) async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let call = self.service.clone().oneshot(request);
        let response = match tokio::time::timeout(self.timeout, call).await {
            Err(_) => return Err(HttpError::Timeout(self.timeout)),
            Ok(Err(e)) => {
                return Err(match e.downcast::<HttpError>() {
                    Ok(e) => *e,
                    Err(e) => HttpError::Network(e),
                });
            }
            Ok(Ok(response)) => response,
        };
        if response.body().len() > self.max_response_bytes {
            return Err(HttpError::TooLarge(self.max_response_bytes));
        }
        let status = response.status();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(HttpError::Status {
                status,
                retry_after: retry_after(response.headers()),
            });
        }
        Ok(response)
    }
}

impl Default for AuthHttpClient {
    fn default() -> Self {
        Self::reqwest()
    }
}

impl fmt::Debug for AuthHttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthHttpClient")
            .field("timeout", &self.timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish_non_exhaustive()
    }
}

/// Resolves with the system resolver, then keeps only the addresses `policy` allows;
/// none left is an error (fail closed).
struct PolicyResolver {
    policy: UrlPolicy,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = filter_addresses(&policy, &host, resolved)?;
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The addresses of `host` that `policy` allows, or an error naming the first refused
/// one when none is allowed.
pub(crate) fn filter_addresses(
    policy: &UrlPolicy,
    host: &str,
    resolved: Vec<SocketAddr>,
) -> Result<Vec<SocketAddr>, BoxError> {
    let mut refused = None;
    let allowed: Vec<SocketAddr> = resolved
        .into_iter()
        .filter(|addr| match policy.check_ip(addr.ip()) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(host, address = %addr.ip(), "resolved address refused by the URL policy");
                refused.get_or_insert(error);
                false
            }
        })
        .collect();
    match (allowed.is_empty(), refused) {
        (true, Some(error)) => Err(Box::new(error)),
        (true, None) => Err(format!("{host}: no addresses").into()),
        (false, _) => Ok(allowed),
    }
}

async fn send_with_reqwest(
    client: &reqwest::Client,
    request: http::Request<Bytes>,
) -> Result<http::Response<Bytes>, BoxError> {
    let request = reqwest::Request::try_from(request)?;
    let mut response = client.execute(request).await?;
    let mut builder = http::Response::builder()
        .status(response.status())
        .version(response.version());
    if let Some(headers) = builder.headers_mut() {
        *headers = std::mem::take(response.headers_mut());
    }
    // Stop reading at the hard cap instead of buffering whatever a server sends.
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await? {
        body.extend_from_slice(&chunk);
        if body.len() > DEFAULT_MAX_RESPONSE_BYTES {
            return Err(Box::new(HttpError::TooLarge(DEFAULT_MAX_RESPONSE_BYTES)));
        }
    }
    Ok(builder.body(body.freeze())?)
}

/// `Retry-After` read from raw header bytes, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub(crate) fn retry_after_value(value: &[u8]) -> Option<Duration> {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_bytes(value).ok()?,
    );
    retry_after(&headers)
}

/// `Retry-After` as delta-seconds (the HTTP-date form is ignored: clocks disagree).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Why a call to an authorization server failed before its body could be interpreted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("request failed: {0}")]
    Network(BoxError),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    #[error("HTTP {status}")]
    Status {
        status: StatusCode,
        retry_after: Option<Duration>,
    },
}

impl HttpError {
    /// What the failure means for the caller: always transient (credentials are kept),
    /// with the server's `Retry-After` when it gave one.
    pub(crate) fn into_transient(self) -> (TransientReason, Option<Duration>) {
        match self {
            HttpError::Network(e) => (TransientReason::Network(e.into()), None),
            HttpError::Timeout(after) => (TransientReason::Timeout(after), None),
            HttpError::TooLarge(max) => (
                TransientReason::InvalidResponse(format!("response over {max} bytes")),
                None,
            ),
            HttpError::Status {
                status,
                retry_after,
            } if status == StatusCode::TOO_MANY_REQUESTS => {
                (TransientReason::RateLimited, retry_after)
            }
            HttpError::Status {
                status,
                retry_after,
            } => (TransientReason::ServerError(status.as_u16()), retry_after),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_parses_delta_seconds_only() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            http::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[tokio::test]
    async fn oversized_and_failing_responses_are_typed() {
        let big = AuthHttpClient::from_service(tower::service_fn(|_| async {
            Ok::<_, BoxError>(http::Response::new(Bytes::from(vec![b'x'; 2048])))
        }))
        .with_max_response_bytes(1024);
        let request = || http::Request::new(Bytes::new());
        assert!(matches!(
            big.send(request()).await,
            Err(HttpError::TooLarge(1024))
        ));

        let busy = AuthHttpClient::from_service(tower::service_fn(|_| async {
            let mut response = http::Response::new(Bytes::new());
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, "3".parse().unwrap());
            Ok::<_, BoxError>(response)
        }));
        match busy.send(request()).await {
            Err(HttpError::Status {
                status,
                retry_after,
            }) => {
                assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
                assert_eq!(retry_after, Some(Duration::from_secs(3)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn hung_server_times_out() {
        let hung = AuthHttpClient::from_service(tower::service_fn(|_| async {
            std::future::pending::<Result<http::Response<Bytes>, BoxError>>().await
        }))
        .with_timeout(Duration::from_secs(2));
        assert!(matches!(
            hung.send(http::Request::new(Bytes::new())).await,
            Err(HttpError::Timeout(_))
        ));
    }
}
