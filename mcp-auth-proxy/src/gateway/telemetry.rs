//! The gateway's own metrics, through the `metrics` facade (rendered at `/metrics` by
//! [`MetricsRecorder`](super::MetricsRecorder); no-ops without a recorder). Labels take
//! only bounded values: configured upstream names, a fixed set of methods, statuses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use http::{Method, StatusCode};
use metrics::{Counter, Histogram};

/// Requests answered, by upstream, HTTP method and status.
pub(crate) const REQUESTS: &str = "mcp_auth_proxy_requests_total";
/// Time from a request's arrival to its answer's headers, by upstream and method.
pub(crate) const REQUEST_DURATION: &str = "mcp_auth_proxy_request_duration_seconds";
/// Event streams being relayed to callers now, by upstream.
pub(crate) const OPEN_STREAMS: &str = "mcp_auth_proxy_open_streams";
/// Sign-in links handed to callers without credentials for an `oauth` upstream.
pub(crate) const SIGN_IN_LINKS: &str = "mcp_auth_proxy_sign_in_links_total";
/// Failed reads or writes of the gateway's store, by operation.
pub(crate) const STORE_ERRORS: &str = "mcp_auth_proxy_store_errors_total";
/// Standalone streams the gateway opened early, by what became of them.
pub(crate) const EARLY_STREAMS: &str = "mcp_auth_proxy_early_streams_total";

/// Describes the gateway's metrics to the installed recorder (their `# HELP` lines).
pub(crate) fn describe() {
    metrics::describe_counter!(
        REQUESTS,
        "Requests answered, by upstream, method and status."
    );
    metrics::describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time from a request's arrival to its answer's headers, by upstream and method."
    );
    metrics::describe_gauge!(OPEN_STREAMS, "Event streams being relayed to callers now.");
    metrics::describe_counter!(
        SIGN_IN_LINKS,
        "Sign-in links handed to callers without credentials for an oauth upstream."
    );
    metrics::describe_counter!(
        STORE_ERRORS,
        "Failed reads or writes of the gateway's store."
    );
    metrics::describe_counter!(
        EARLY_STREAMS,
        "Standalone streams opened before the client asked: claimed, unclaimed, refused upstream or failed."
    );
}

/// The method label: one of a fixed few.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::POST => "POST",
        Method::GET => "GET",
        Method::DELETE => "DELETE",
        _ => "other",
    }
}

/// One request answered, for a name that is no configured upstream.
pub(crate) fn request(
    upstream: metrics::SharedString,
    method: &Method,
    status: StatusCode,
    elapsed: Duration,
) {
    let method = method_label(method);
    metrics::counter!(REQUESTS, "upstream" => upstream.clone(), "method" => method,
        "status" => status.as_str().to_owned())
    .increment(1);
    metrics::histogram!(REQUEST_DURATION, "upstream" => upstream, "method" => method)
        .record(elapsed.as_secs_f64());
}

/// The request series of one upstream, registered with the recorder at their first
/// use and kept: a request then costs a read lock and two atomic updates, not a label
/// set built and looked up in the recorder.
#[derive(Default)]
pub(crate) struct RequestSeries {
    by_method_and_status: RwLock<HashMap<(&'static str, u16), Series>>,
}

/// The request counter and the duration histogram of one method and status.
type Series = (Counter, Histogram);

impl RequestSeries {
    /// One request to `upstream` answered.
    pub(crate) fn record(
        &self,
        upstream: &Arc<str>,
        method: &Method,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let key = (method_label(method), status.as_u16());
        let seconds = elapsed.as_secs_f64();
        if let Some((counter, histogram)) = self
            .by_method_and_status
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            counter.increment(1);
            histogram.record(seconds);
            return;
        }
        let label = metrics::SharedString::from(upstream.clone());
        let counter = metrics::counter!(REQUESTS, "upstream" => label.clone(), "method" => key.0,
            "status" => status.as_str().to_owned());
        let histogram =
            metrics::histogram!(REQUEST_DURATION, "upstream" => label, "method" => key.0);
        counter.increment(1);
        histogram.record(seconds);
        self.by_method_and_status
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, (counter, histogram));
    }
}

/// Streams relayed now, across upstreams (what [`open_streams`] reads).
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// A stream relayed to a caller until the returned guard is dropped.
pub(crate) fn stream_opened(upstream: &str) -> OpenStream {
    let gauge = metrics::gauge!(OPEN_STREAMS, "upstream" => upstream.to_owned());
    gauge.increment(1.0);
    OPEN.fetch_add(1, Ordering::Relaxed);
    OpenStream(gauge)
}

/// Counts a stream as open while it lives.
pub(crate) struct OpenStream(metrics::Gauge);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.decrement(1.0);
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The event streams this process's gateways relay to callers now, across upstreams:
/// what the binary watches to hand memory back to the system after a peak.
///
/// ```
/// assert_eq!(mcp_auth_proxy::open_streams(), 0);
/// ```
pub fn open_streams() -> usize {
    OPEN.load(Ordering::Relaxed)
}

/// A sign-in link handed out for `upstream`.
pub(crate) fn sign_in_link(upstream: &str) {
    metrics::counter!(SIGN_IN_LINKS, "upstream" => upstream.to_owned()).increment(1);
}

/// A store operation that failed.
pub(crate) fn store_error(operation: &'static str) {
    metrics::counter!(STORE_ERRORS, "operation" => operation).increment(1);
}

/// What became of an early standalone stream.
pub(crate) fn early_stream(upstream: &str, outcome: &'static str) {
    metrics::counter!(EARLY_STREAMS, "upstream" => upstream.to_owned(), "outcome" => outcome)
        .increment(1);
}
