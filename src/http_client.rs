//! The one seam through which the crate talks to authorization servers.
//!
//! [`AuthHttpClient`] wraps any `Service<http::Request<Bytes>, Response =
//! http::Response<Bytes>>` (reqwest by default) and enforces, whatever the service:
//! a timeout on every call and a cap on the response size. The default reqwest client
//! also never follows redirects (a token request must not be replayed elsewhere).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceExt};

use crate::fault::TransientReason;
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
/// // The default: reqwest (hyper without the `reqwest` feature), no redirects,
/// // 10 s timeout, 1 MiB response cap.
/// let client = AuthHttpClient::new().with_timeout(Duration::from_secs(5));
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
    /// The default client with the strict [`UrlPolicy::default`]: reqwest with the
    /// `reqwest` feature (on by default), hyper otherwise. See
    /// [`with_policy`](Self::with_policy).
    pub fn new() -> Self {
        Self::with_policy(UrlPolicy::default())
    }

    /// The default client, checking every address a host name resolves to at connect
    /// time against `policy` (e.g. [`UrlPolicy::allow_private_ranges`] for an
    /// authorization server inside the company network), so a name that resolves or
    /// rebinds to a refused address is never connected to. Literal IP hosts are not
    /// resolved; the [`Authorizer`](crate::Authorizer) checks those in every URL it
    /// learns. Redirects are never followed (a token request must not be replayed
    /// elsewhere).
    ///
    /// Should the client fail to initialise (no TLS roots), every call fails with that
    /// error instead of falling back to a client with another policy.
    ///
    /// ```
    /// use tower_mcp_auth::{AuthHttpClient, UrlPolicy};
    ///
    /// let corporate = AuthHttpClient::with_policy(UrlPolicy::default().allow_private_ranges());
    /// # drop(corporate);
    /// ```
    pub fn with_policy(policy: UrlPolicy) -> Self {
        #[cfg(feature = "reqwest")]
        return Self::reqwest_with_policy(policy);
        #[cfg(not(feature = "reqwest"))]
        return Self::hyper_with_policy(policy);
    }

    /// reqwest (rustls with aws-lc-rs), redirects disabled, the strict
    /// [`UrlPolicy::default`] at connect time.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_mcp_auth::AuthHttpClient;
    ///
    /// let client = AuthHttpClient::reqwest().with_timeout(Duration::from_secs(5));
    /// # drop(client);
    /// ```
    #[cfg(feature = "reqwest")]
    pub fn reqwest() -> Self {
        Self::reqwest_with_policy(UrlPolicy::default())
    }

    /// As [`reqwest`](Self::reqwest), checking resolved addresses against `policy`.
    ///
    /// [`from_reqwest`](Self::from_reqwest) and [`from_service`](Self::from_service)
    /// use the given client's own resolver: no connect-time check unless that client
    /// has one.
    #[cfg(feature = "reqwest")]
    pub fn reqwest_with_policy(policy: UrlPolicy) -> Self {
        let config = crate::client::HttpClientConfig::new()
            .connect_timeout(DEFAULT_TIMEOUT)
            .url_policy(policy);
        match crate::client::ReqwestService::with_config(&config) {
            Ok(service) => Self::from_http_service(service),
            Err(error) => Self::unavailable(error.to_string()),
        }
    }

    /// hyper-util's client over rustls, the strict [`UrlPolicy::default`] at connect
    /// time: the default without the `reqwest` feature.
    pub fn hyper() -> Self {
        Self::hyper_with_policy(UrlPolicy::default())
    }

    /// As [`hyper`](Self::hyper), checking resolved addresses against `policy`.
    pub fn hyper_with_policy(policy: UrlPolicy) -> Self {
        let config = crate::client::HttpClientConfig::new()
            .connect_timeout(DEFAULT_TIMEOUT)
            .url_policy(policy);
        match crate::client::hyper_client::<http_body_util::Full<Bytes>>(&config) {
            Ok(client) => Self::from_http_service(client),
            Err(error) => Self::unavailable(error.to_string()),
        }
    }

    fn unavailable(error: String) -> Self {
        let error: Arc<str> = error.into();
        Self::from_service(tower::service_fn(move |_: http::Request<Bytes>| {
            let error = error.clone();
            async move { Err::<http::Response<Bytes>, BoxError>(error.to_string().into()) }
        }))
    }

    /// Uses a configured reqwest client. Configure it without redirects: token
    /// endpoints must not redirect.
    #[cfg(feature = "reqwest")]
    pub fn from_reqwest(client: reqwest::Client) -> Self {
        Self::from_http_service(crate::client::ReqwestService::from_client(client))
    }

    /// Uses any HTTP client service with a streaming response body (hyper's, reqwest's,
    /// one behind a proxy or with custom TLS). The body is read up to the response cap
    /// and no further.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower_mcp_auth::AuthHttpClient;
    /// use tower_mcp_auth::client::{hyper_client, HttpClientConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower::BoxError> {
    /// let client = AuthHttpClient::from_http_service(hyper_client::<Full<Bytes>>(&HttpClientConfig::new())?);
    /// # drop(client);
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_http_service<S, ResBody>(service: S) -> Self
    where
        S: tower::Service<
                http::Request<http_body_util::Full<Bytes>>,
                Response = http::Response<ResBody>,
            > + Clone
            + Send
            + Sync
            + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        ResBody: http_body::Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        let service = tower::service_fn(move |request: http::Request<Bytes>| {
            let call = service
                .clone()
                .oneshot(request.map(http_body_util::Full::new));
            async move {
                let response = call.await.map_err(Into::into)?;
                let (parts, body) = response.into_parts();
                // Stop reading at the hard cap instead of buffering whatever a server
                // sends; the configured (lower) cap is checked in `send`.
                let body = match http_body_util::BodyExt::collect(http_body_util::Limited::new(
                    body,
                    DEFAULT_MAX_RESPONSE_BYTES,
                ))
                .await
                {
                    Ok(collected) => collected.to_bytes(),
                    Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                        return Err(
                            Box::new(HttpError::TooLarge(DEFAULT_MAX_RESPONSE_BYTES)) as BoxError
                        );
                    }
                    Err(error) => return Err(error),
                };
                Ok(http::Response::from_parts(parts, body))
            }
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

    /// Sends one request with this client's timeout and response-size cap. 5xx and 429
    /// responses come back as errors carrying the status (and `Retry-After`), so callers
    /// classify them without reading bodies; other statuses are the caller's to read.
    ///
    /// A connection that fails while it is set up (refused, TLS handshake) is tried
    /// once more at once: the request never left, so even a refresh token in it cannot
    /// have reached the server. Anything that fails after the connection stood is
    /// returned, never resent.
    ///
    /// ```no_run
    /// use bytes::Bytes;
    /// use tower_mcp_auth::{AuthHttpClient, oauth::HttpError};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let client = AuthHttpClient::reqwest();
    /// let request = http::Request::get("https://auth.example.com/.well-known/jwks.json")
    ///     .body(Bytes::new())?;
    /// match client.send(request).await {
    ///     Ok(response) => println!("{} bytes of keys", response.body().len()),
    ///     Err(HttpError::Timeout(after)) => println!("no answer within {after:?}"),
    ///     Err(other) => println!("failed: {other}"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let service = self.service.clone();
        let call = async move {
            let again = copy_of(&request);
            match service.clone().oneshot(request).await {
                // Refused or broken while connecting: no byte of the request left this
                // process, so it cannot have reached the server (a refresh token
                // included). Once, on a new connection, within the same timeout. A
                // failure after the connection stood (a reset, a close mid-answer) may
                // come after the server read the request: it is never sent again.
                Err(error) if failed_connecting(&error) => {
                    tracing::debug!(%error, "connecting to the authorization server failed; trying once more");
                    service.oneshot(again).await
                }
                other => other,
            }
        };
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

/// The request again: method, URI, version, headers and body. Extensions are not
/// carried: the crate puts none on its requests to authorization servers.
fn copy_of(request: &http::Request<Bytes>) -> http::Request<Bytes> {
    let mut copy = http::Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// Whether `error` came from setting up the connection (resolving, TCP connect, TLS
/// handshake), before the request was written, as reqwest and hyper-util's client
/// report it; anywhere in its chain of sources.
pub(crate) fn failed_connecting(error: &BoxError) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&**error);
    while let Some(error) = next {
        #[cfg(feature = "reqwest")]
        if error
            .downcast_ref::<reqwest::Error>()
            .is_some_and(reqwest::Error::is_connect)
        {
            return true;
        }
        if error
            .downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(hyper_util::client::legacy::Error::is_connect)
        {
            return true;
        }
        next = error.source();
    }
    false
}

impl Default for AuthHttpClient {
    fn default() -> Self {
        Self::new()
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

/// `Retry-After` as delta-seconds or as an HTTP-date (IMF-fixdate, RFC 9110 §5.6.7),
/// the latter turned into the time left from now (zero if it has passed).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = parse_http_date(value)?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`); `None` for anything else.
pub(crate) fn parse_http_date(value: &str) -> Option<std::time::SystemTime> {
    let rest = value.split_once(", ")?.1;
    let mut fields = rest.split(' ');
    let (day, month, year, time, zone) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    if fields.next().is_some() || zone != "GMT" || day.len() != 2 || year.len() != 4 {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let day: i64 = day.parse().ok()?;
    let year: i64 = year.parse().ok()?;
    let mut clock = time.split(':');
    let (h, m, sec): (i64, i64, i64) = (
        clock.next()?.parse().ok()?,
        clock.next()?.parse().ok()?,
        clock.next()?.parse().ok()?,
    );
    if clock.next().is_some() || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), all in checked-size i64.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + h * 3600 + m * 60 + sec;
    let seconds = u64::try_from(seconds).ok()?;
    std::time::UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
}

/// Why a call of [`AuthHttpClient::send`] failed before its body could be interpreted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The request could not be sent or its answer not read (connection refused, reset,
    /// TLS, a URL the client's policy refuses).
    #[error("request failed: {0}")]
    Network(BoxError),
    /// No complete answer within the client's timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The answer's body was larger than the client's cap.
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    /// The server answered 5xx or 429.
    #[error("HTTP {status}")]
    Status {
        /// The answer's status.
        status: StatusCode,
        /// The server's `Retry-After`, when it gave one.
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
mod tests;
