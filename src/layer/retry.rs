//! [`IdempotentRetry`]: a ready [`tower::retry::Policy`] for the MCP calls that may be
//! sent twice.

use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::BoxError;

use crate::error::Error;

/// The JSON-RPC methods whose repetition changes nothing on the server: reads and
/// `ping`. `initialize` (a new session), `tools/call` (a tool may act) and
/// notifications are never sent twice.
pub const IDEMPOTENT_METHODS: [&str; 8] = [
    "ping",
    "tools/list",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "prompts/list",
    "prompts/get",
    "completion/complete",
];

/// Retries an MCP request whose JSON-RPC method is in [`IDEMPOTENT_METHODS`] when the
/// server or the way to it failed: a network error, `Error::Transient`, or a 502, 503
/// or 504 answer. It waits between tries (doubling from 100 ms, jittered, or the
/// server's `Retry-After` up to 5 s) and tries at most twice more by default. Nothing
/// else is retried: not an open circuit (that is the breaker's call), not a sign-in,
/// not a tool call.
///
/// Put it above the stack's other layers (`tower::retry::RetryLayer`). The request body
/// must be cloneable and readable as bytes (`String`, `Bytes`, `Vec<u8>`), and the
/// service's error a `BoxError`, as the crate's layers answer (over a bare client, map
/// its error with `ServiceBuilder::map_err(BoxError::from)`).
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use tower::retry::RetryLayer;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_mcp_auth::layer::retry::IdempotentRetry;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// let calls = Arc::new(AtomicUsize::new(0));
/// let counted = calls.clone();
/// let client = ServiceBuilder::new()
///     .layer(RetryLayer::new(IdempotentRetry::new().backoff(std::time::Duration::from_millis(1))))
///     .service_fn(move |_: http::Request<String>| {
///         let n = counted.fetch_add(1, Ordering::SeqCst);
///         async move {
///             let status = if n == 0 { 503 } else { 200 };
///             Ok::<_, tower::BoxError>(http::Response::builder().status(status).body(())?)
///         }
///     });
/// let list = http::Request::post("https://mcp.example.com/mcp")
///     .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#.to_owned())?;
/// assert_eq!(client.oneshot(list).await?.status(), 200);
/// assert_eq!(calls.load(Ordering::SeqCst), 2);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct IdempotentRetry {
    remaining: usize,
    backoff: Duration,
}

/// The longest wait between two tries, `Retry-After` included: a server that asks for
/// more is answered with its own error, for the caller to decide.
const MAX_WAIT: Duration = Duration::from_secs(5);

impl IdempotentRetry {
    /// Two more tries, the first after about 100 ms.
    pub fn new() -> Self {
        Self {
            remaining: 2,
            backoff: Duration::from_millis(100),
        }
    }

    /// At most `retries` more tries.
    pub fn retries(mut self, retries: usize) -> Self {
        self.remaining = retries;
        self
    }

    /// The wait before the first retry (doubled for each next one).
    pub fn backoff(mut self, first: Duration) -> Self {
        self.backoff = first;
        self
    }

    /// The wait before the next try, or `None` when `result` is not worth another.
    fn wait_for<R>(&self, result: &Result<Response<R>, BoxError>) -> Option<Duration> {
        // Full jitter over the upper half: retries of many callers spread out.
        let jittered = self
            .backoff
            .mul_f64(0.5 + crate::crypto::random_unit() / 2.0);
        let wait = match result {
            Ok(response)
                if matches!(
                    response.status(),
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                ) =>
            {
                crate::http_client::retry_after(response.headers()).unwrap_or(jittered)
            }
            Ok(_) => return None,
            Err(error) => match Error::find(error.as_ref()) {
                Some(Error::Transient { retry_after, .. }) => retry_after.unwrap_or(jittered),
                Some(_) => return None,
                // Not the crate's: the inner client's (refused, reset, timed out).
                None => jittered,
            },
        };
        (wait <= MAX_WAIT).then_some(wait)
    }
}

impl Default for IdempotentRetry {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether `body` is one JSON-RPC request whose method may be repeated.
fn idempotent(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Call<'a> {
        #[serde(borrow)]
        method: Option<&'a str>,
        id: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Call<'_>>(body).is_ok_and(|call| {
        call.id.is_some() && call.method.is_some_and(|m| IDEMPOTENT_METHODS.contains(&m))
    })
}

impl<B, R> tower::retry::Policy<Request<B>, Response<R>, BoxError> for IdempotentRetry
where
    B: Clone + AsRef<[u8]>,
{
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _request: &mut Request<B>,
        result: &mut Result<Response<R>, BoxError>,
    ) -> Option<Self::Future> {
        if self.remaining == 0 {
            return None;
        }
        let wait = self.wait_for(result)?;
        self.remaining -= 1;
        self.backoff = self.backoff.saturating_mul(2).min(MAX_WAIT);
        Some(tokio::time::sleep(wait))
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        if !idempotent(request.body().as_ref()) {
            return None;
        }
        let mut copy = Request::new(request.body().clone());
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        Some(copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_with_an_id_are_idempotent() {
        assert!(idempotent(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#
        ));
        assert!(idempotent(
            br#"{"jsonrpc":"2.0","id":"a","method":"resources/read","params":{}}"#
        ));
        assert!(!idempotent(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#
        ));
        assert!(!idempotent(
            br#"{"jsonrpc":"2.0","id":1,"method":"initialize"}"#
        ));
        assert!(!idempotent(br#"{"jsonrpc":"2.0","method":"ping"}"#));
        assert!(!idempotent(
            br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#
        ));
        assert!(!idempotent(b"not json"));
    }
}
