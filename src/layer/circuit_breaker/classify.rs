//! How a finished call counts, and which requests start sessions.

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use tower::BoxError;
use tower_http::classify::{ClassifiedResponse, ClassifyResponse, ServerErrorsAsFailures};

use crate::breaker::Outcome;
use crate::error::Error;
use crate::http_client::retry_after;

/// Decides how a finished call counts for its circuit, in the manner of tower-http's
/// `classify`.
///
/// ```
/// use http::Response;
/// use tower::BoxError;
/// use tower_mcp_auth::{BreakerConfig, CircuitBreakerLayer, layer::circuit_breaker::ClassifyOutcome, layer::circuit_breaker::DefaultClassifier, breaker::Outcome};
///
/// /// Also treats 408 Request Timeout as the upstream failing.
/// #[derive(Clone)]
/// struct TimeoutsFail;
///
/// impl<B> ClassifyOutcome<B> for TimeoutsFail {
///     fn classify_response(&self, response: &Response<B>) -> Outcome {
///         match response.status().as_u16() {
///             408 => Outcome::Failure,
///             _ => DefaultClassifier.classify_response(response),
///         }
///     }
///     fn classify_error(&self, error: &BoxError) -> Outcome {
///         ClassifyOutcome::<B>::classify_error(&DefaultClassifier, error)
///     }
/// }
///
/// let layer = CircuitBreakerLayer::new(BreakerConfig::default()).with_classifier(TimeoutsFail);
/// # drop(layer);
/// ```
pub trait ClassifyOutcome<ResBody>: Clone + Send + Sync + 'static {
    /// How a response counts.
    fn classify_response(&self, response: &Response<ResBody>) -> Outcome;
    /// How an error of the inner service counts.
    fn classify_error(&self, error: &BoxError) -> Outcome;
}

/// The default classification: errors of the transport (connect failures, timeouts) and
/// 5xx are failures (tower-http's [`ServerErrorsAsFailures`]); 429 throttles the
/// principal until its `Retry-After`; 401, 403 and other 4xx count for nothing, and so
/// do this crate's own errors from inner layers ([`Error::ReauthRequired`],
/// [`Error::AuthorizationRequired`], a refused OBO exchange, ...): they are about one
/// user's credentials, not the upstream's health. The rest are successes.
///
/// ```
/// use tower::BoxError;
/// use tower_mcp_auth::{layer::circuit_breaker::ClassifyOutcome, layer::circuit_breaker::DefaultClassifier, breaker::Outcome};
///
/// let unauthorized = http::Response::builder().status(401).body(()).unwrap();
/// assert_eq!(DefaultClassifier.classify_response(&unauthorized), Outcome::Neutral);
/// let refused: BoxError = std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
/// assert_eq!(ClassifyOutcome::<()>::classify_error(&DefaultClassifier, &refused), Outcome::Failure);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultClassifier;

impl DefaultClassifier {
    /// The default classification of a response (usable from other classifiers).
    pub fn classify_response<B>(&self, response: &Response<B>) -> Outcome {
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Outcome::Throttle(retry_after(response.headers()));
        }
        match ServerErrorsAsFailures::new().classify_response(response) {
            ClassifiedResponse::Ready(Err(_)) => Outcome::Failure,
            _ if status.is_client_error() => Outcome::Neutral,
            _ => Outcome::Success,
        }
    }
}

impl<ResBody> ClassifyOutcome<ResBody> for DefaultClassifier {
    fn classify_response(&self, response: &Response<ResBody>) -> Outcome {
        DefaultClassifier::classify_response(self, response)
    }

    fn classify_error(&self, error: &BoxError) -> Outcome {
        if let Some(local) = local_resource_error(error.as_ref()) {
            // This process ran out of descriptors, buffers or memory: the upstream is not
            // at fault, and opening its circuit would refuse healthy calls for minutes.
            tracing::warn!(error = %local, "call failed for lack of local resources; not counted against the upstream");
            crate::metrics::count(crate::metrics::LOCAL_RESOURCE_ERRORS);
            return Outcome::Neutral;
        }
        match Error::find(error.as_ref()) {
            Some(_) => Outcome::Neutral,
            None => Outcome::Failure,
        }
    }
}

/// The operating system's "out of local resources" error somewhere in `error`'s chain:
/// too many open files (per process or system-wide), no buffer space, no memory. Such
/// a failure is this process's, not the server's it was calling: [`DefaultClassifier`]
/// counts it as neither success nor failure, and a classifier of your own can do the same.
///
/// ```
/// use tower_mcp_auth::layer::circuit_breaker::local_resource_error;
///
/// let exhausted = std::io::Error::from_raw_os_error(24); // EMFILE on Linux and the BSDs
/// assert!(local_resource_error(&exhausted).is_some());
/// let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
/// assert!(local_resource_error(&refused).is_none());
/// ```
pub fn local_resource_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a std::io::Error> {
    #[cfg(target_os = "linux")]
    const LOCAL: [i32; 4] = [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM];
    // The POSIX numbers shared by the BSDs and macOS.
    #[cfg(not(target_os = "linux"))]
    const LOCAL: [i32; 4] = [24, 23, 55, 12];
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && io.raw_os_error().is_some_and(|code| LOCAL.contains(&code))
        {
            return Some(io);
        }
        current = error.source();
    }
    None
}

/// The largest request body read to find its JSON-RPC method.
pub(crate) const MAX_PEEK: usize = 64 * 1024;

/// Whether a request may start an MCP session: a POST without `Mcp-Session-Id`. Only
/// those are read (to find `initialize`) or checked for a created session.
pub(crate) fn may_start_session(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::POST && !headers.contains_key("mcp-session-id")
}

/// Whether a response created a session (it carries `Mcp-Session-Id`).
pub(crate) fn created_session(headers: &HeaderMap) -> bool {
    headers.contains_key("mcp-session-id")
}

/// Whether a JSON-RPC body is (or, as a batch, contains) an `initialize` request.
pub(crate) fn is_initialize(body: &Bytes) -> bool {
    #[derive(serde::Deserialize)]
    struct Message<'a> {
        #[serde(borrow, default)]
        method: Option<std::borrow::Cow<'a, str>>,
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Messages<'a> {
        #[serde(borrow)]
        One(Message<'a>),
        #[serde(borrow)]
        Batch(Vec<Message<'a>>),
    }
    let initialize = |m: &Message<'_>| m.method.as_deref() == Some("initialize");
    match serde_json::from_slice::<Messages<'_>>(body) {
        Ok(Messages::One(message)) => initialize(&message),
        Ok(Messages::Batch(messages)) => messages.iter().any(initialize),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_initialize_starts_a_session() {
        let body = |s: &str| Bytes::from(s.to_owned());
        assert!(is_initialize(&body(
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#
        )));
        assert!(is_initialize(&body(
            r#"[{"jsonrpc":"2.0","method":"notifications/x"},{"jsonrpc":"2.0","id":1,"method":"initialize"}]"#
        )));
        assert!(!is_initialize(&body(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"initialize"}}"#
        )));
        assert!(!is_initialize(&body("not json")));
    }

    #[test]
    fn crate_errors_are_neutral_transport_errors_fail() {
        let reauth: BoxError = Error::MissingPrincipal.into();
        assert_eq!(
            ClassifyOutcome::<()>::classify_error(&DefaultClassifier, &reauth),
            Outcome::Neutral
        );
        let io: BoxError = std::io::Error::other("reset").into();
        assert_eq!(
            ClassifyOutcome::<()>::classify_error(&DefaultClassifier, &io),
            Outcome::Failure
        );
    }
}
