//! A keyed circuit breaker: fail fast per upstream (or per upstream and user) instead
//! of hammering a server that is down, with one half-open probe at a time and a guard
//! against reconnect storms.
//!
//! # Tower contract
//!
//! `poll_ready` is passed through to the inner service: the key of a request is only
//! known from the request, so admission happens in `call`. A refused call never reaches
//! the inner service (its readiness is kept for the next call). A call that must wait
//! (see below) takes the readied service with it and leaves a clone behind. A half-open
//! probe holds the key's single probe slot until its response future completes;
//! dropping the future releases the slot, so a cancelled probe never wedges the circuit
//! half-open.
//!
//! # Probe before flood
//!
//! While a key has not yet seen an answer from its upstream (a new key, or one just
//! closed after opening) or has failures since its last success, it admits at most as
//! many concurrent calls as failures it may still take before opening; further calls
//! wait for one of those to finish (at most the probe timeout, then they fail with
//! [`Rejection::Unproven`]). A dead upstream hit by a wave of 1,000 calls sees
//! `consecutive_failures` of them, then the circuit opens and the rest fail fast; a
//! healthy one is proven by the first answer and everyone proceeds.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Extensions, HeaderMap, Method, Request, Response, StatusCode, Uri};
use pin_project::pin_project;
use tokio::sync::watch;
use tokio::time::Sleep;
use tower::{BoxError, Layer, Service};
use tower_http::classify::{ClassifiedResponse, ClassifyResponse, ServerErrorsAsFailures};

use crate::breaker::{
    Admission, Breaker, BreakerConfig, BreakerSnapshot, Decision, Outcome, Rejection, Transition,
};
use crate::error::Error;
use crate::http_client::retry_after;
use crate::key::Principal;

/// Computes a circuit key from a request's URI and extensions.
pub type KeyFn = Arc<dyn Fn(&Uri, &Extensions) -> String + Send + Sync>;

/// How requests are grouped into circuits.
///
/// ```
/// use std::sync::Arc;
/// use tower_mcp_auth::{BreakerConfig, BreakerKeying, CircuitBreakerLayer};
///
/// // One circuit per host, whatever the port or scheme.
/// let by_host = BreakerKeying::Custom(Arc::new(|uri: &http::Uri, _: &http::Extensions| {
///     uri.host().unwrap_or_default().to_owned()
/// }));
/// let layer = CircuitBreakerLayer::new(BreakerConfig::default()).with_keying(by_host);
/// # drop(layer);
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum BreakerKeying {
    /// One circuit per upstream origin (`scheme://host:port`).
    #[default]
    Origin,
    /// One circuit per origin and [`Principal`], so one user's failures (a revoked
    /// grant, a bad credential) never open the circuit for everyone.
    OriginAndPrincipal,
    /// A key of your own.
    Custom(KeyFn),
}

impl fmt::Debug for BreakerKeying {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BreakerKeying::Origin => f.write_str("Origin"),
            BreakerKeying::OriginAndPrincipal => f.write_str("OriginAndPrincipal"),
            BreakerKeying::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl BreakerKeying {
    fn key(&self, uri: &Uri, extensions: &Extensions) -> String {
        let origin = || {
            let scheme = uri.scheme_str().unwrap_or("http");
            let host = uri.host().unwrap_or("");
            let port = uri
                .port_u16()
                .unwrap_or(if scheme == "https" { 443 } else { 80 });
            format!("{scheme}://{host}:{port}")
        };
        match self {
            BreakerKeying::Origin => origin(),
            BreakerKeying::OriginAndPrincipal => match Principal::from_extensions(extensions) {
                Some(p) => format!("{} {}:{}", origin(), p.tenant(), p.subject()),
                None => origin(),
            },
            BreakerKeying::Custom(key) => key(uri, extensions),
        }
    }
}

/// Decides how a finished call counts for its circuit, in the manner of tower-http's
/// `classify`.
///
/// ```
/// use http::Response;
/// use tower_mcp_auth::{BreakerConfig, CircuitBreakerLayer, ClassifyOutcome, DefaultClassifier, Outcome};
///
/// /// Also treats 408 Request Timeout as the upstream failing.
/// #[derive(Clone)]
/// struct TimeoutsFail;
///
/// impl<B, E> ClassifyOutcome<B, E> for TimeoutsFail {
///     fn classify_response(&self, response: &Response<B>) -> Outcome {
///         match response.status().as_u16() {
///             408 => Outcome::Failure,
///             _ => ClassifyOutcome::<B, E>::classify_response(&DefaultClassifier, response),
///         }
///     }
///     fn classify_error(&self, _: &E) -> Outcome {
///         Outcome::Failure
///     }
/// }
///
/// let layer = CircuitBreakerLayer::new(BreakerConfig::default()).with_classifier(TimeoutsFail);
/// # drop(layer);
/// ```
pub trait ClassifyOutcome<ResBody, E>: Clone + Send + Sync + 'static {
    /// How a response counts.
    fn classify_response(&self, response: &Response<ResBody>) -> Outcome;
    /// How an error of the inner service counts.
    fn classify_error(&self, error: &E) -> Outcome;
}

/// The default classification: errors (connect failures, timeouts) and 5xx are
/// failures (tower-http's [`ServerErrorsAsFailures`]); 429 throttles the key until its
/// `Retry-After`; 401, 403 and other 4xx count for nothing; the rest are successes.
///
/// ```
/// use tower_mcp_auth::{ClassifyOutcome, DefaultClassifier, Outcome};
///
/// let unauthorized = http::Response::builder().status(401).body(()).unwrap();
/// let outcome = ClassifyOutcome::<(), std::io::Error>::classify_response(&DefaultClassifier, &unauthorized);
/// assert_eq!(outcome, Outcome::Neutral);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultClassifier;

impl<ResBody, E> ClassifyOutcome<ResBody, E> for DefaultClassifier {
    fn classify_response(&self, response: &Response<ResBody>) -> Outcome {
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

    fn classify_error(&self, _error: &E) -> Outcome {
        Outcome::Failure
    }
}

/// Whether a request starts an MCP session: a POST without `Mcp-Session-Id` (the
/// Streamable HTTP `initialize`). These count toward the storm guard.
fn is_session_start(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::POST && !headers.contains_key("mcp-session-id")
}

type TransitionHook = Arc<dyn Fn(&str, &Transition) + Send + Sync>;

struct Shared {
    config: BreakerConfig,
    breakers: moka::sync::Cache<String, Arc<Breaker>>,
    keying: BreakerKeying,
    on_transition: Option<TransitionHook>,
}

impl Shared {
    fn notify(&self, key: &str, transition: Option<Transition>) {
        let Some(transition) = transition else { return };
        tracing::info!(
            key,
            from = ?transition.from,
            to = ?transition.to,
            open_for = ?transition.open_for,
            "circuit state changed"
        );
        if let Some(hook) = &self.on_transition {
            hook(key, &transition);
        }
    }
}

/// Fails fast per key while an upstream is failing, probes it back one call at a time,
/// and cools down keys that start sessions in a storm.
///
/// A refused call fails with [`Error::CircuitOpen`] (inside the `BoxError`), carrying the
/// reason and when to retry; stack [`ServiceUnavailableOnOpenLayer`] outside it to turn
/// that into a `503` with `Retry-After` instead (proxies). Breakers live in a moka cache
/// that forgets keys idle for 15 minutes, so millions of keys do not grow without bound.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_mcp_auth::{BreakerConfig, BreakerKeying, CircuitBreakerLayer, Error};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let breaker = CircuitBreakerLayer::new(BreakerConfig::default().with_consecutive_failures(2))
///     .with_keying(BreakerKeying::Origin);
/// let handle = breaker.handle();
/// let client = ServiceBuilder::new().layer(breaker).service_fn(|_req: http::Request<Full<Bytes>>| async {
///     Err::<http::Response<Full<Bytes>>, _>(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
/// });
/// let request = || http::Request::post("http://down.example/mcp").body(Full::new(Bytes::new())).unwrap();
/// for _ in 0..2 {
///     assert!(client.clone().oneshot(request()).await.is_err()); // reaches the upstream
/// }
/// let error = client.clone().oneshot(request()).await.unwrap_err();
/// assert!(matches!(Error::find(error.as_ref()), Some(Error::CircuitOpen { .. })));
/// handle.reset("http://down.example:80"); // e.g. a user-forced reconnect
/// # }
/// ```
pub struct CircuitBreakerLayer<C = DefaultClassifier> {
    shared: Arc<Shared>,
    classifier: C,
}

impl<C: Clone> Clone for CircuitBreakerLayer<C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("config", &self.shared.config)
            .field("keying", &self.shared.keying)
            .field("classifier", &self.classifier)
            .finish_non_exhaustive()
    }
}

impl CircuitBreakerLayer {
    /// A breaker layer with `config`, keyed by origin, with the default classifier.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                breakers: new_registry(),
                keying: BreakerKeying::Origin,
                on_transition: None,
            }),
            classifier: DefaultClassifier,
        }
    }
}

fn new_registry() -> moka::sync::Cache<String, Arc<Breaker>> {
    moka::sync::Cache::builder()
        .max_capacity(1_000_000)
        .time_to_idle(Duration::from_secs(15 * 60))
        .build()
}

impl<C> CircuitBreakerLayer<C> {
    fn rebuild(self, change: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = Shared {
            config: self.shared.config.clone(),
            breakers: self.shared.breakers.clone(),
            keying: self.shared.keying.clone(),
            on_transition: self.shared.on_transition.clone(),
        };
        change(&mut shared);
        Self {
            shared: Arc::new(shared),
            classifier: self.classifier,
        }
    }

    /// How requests are grouped into circuits (default: by origin).
    pub fn with_keying(self, keying: BreakerKeying) -> Self {
        self.rebuild(|shared| shared.keying = keying)
    }

    /// Calls `hook(key, transition)` on every state change (after the tracing event).
    pub fn on_transition(self, hook: impl Fn(&str, &Transition) + Send + Sync + 'static) -> Self {
        self.rebuild(|shared| shared.on_transition = Some(Arc::new(hook)))
    }

    /// Replaces the classifier.
    pub fn with_classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            shared: self.shared,
            classifier,
        }
    }

    /// A handle for resets and snapshots; it sees every service built from this layer.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle {
            shared: self.shared.clone(),
        }
    }
}

/// Control and visibility of a [`CircuitBreakerLayer`]'s circuits.
///
/// ```
/// use tower_mcp_auth::{BreakerConfig, CircuitBreakerLayer, CircuitState};
///
/// let layer = CircuitBreakerLayer::new(BreakerConfig::default());
/// let handle = layer.handle();
/// // A status page:
/// for circuit in handle.snapshots() {
///     if circuit.state != CircuitState::Closed {
///         println!("{} is {:?}, retry in {:?}", circuit.key, circuit.state, circuit.retry_after);
///     }
/// }
/// assert!(handle.snapshot("https://mcp.example.com:443").is_none());
/// ```
#[derive(Clone)]
pub struct CircuitBreakerHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for CircuitBreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerHandle")
            .field("keys", &self.shared.breakers.entry_count())
            .finish()
    }
}

impl CircuitBreakerHandle {
    /// Forgets everything about `key`: closed, no throttle, no cooldown (e.g. after a
    /// user-forced reconnect).
    pub fn reset(&self, key: &str) {
        self.shared.breakers.invalidate(key);
    }

    /// The state of `key`'s circuit, if it has one.
    pub fn snapshot(&self, key: &str) -> Option<BreakerSnapshot> {
        self.shared.breakers.get(key).map(|b| b.snapshot(key))
    }

    /// The state of every known circuit.
    pub fn snapshots(&self) -> Vec<BreakerSnapshot> {
        self.shared
            .breakers
            .iter()
            .map(|(key, breaker)| breaker.snapshot(&key))
            .collect()
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker {
            inner,
            shared: self.shared.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// The service of [`CircuitBreakerLayer`].
pub struct CircuitBreaker<S, C = DefaultClassifier> {
    inner: S,
    shared: Arc<Shared>,
    classifier: C,
}

impl<S: Clone, C: Clone> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, C, ReqBody, ResBody> Service<Request<ReqBody>> for CircuitBreaker<S, C>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    C: ClassifyOutcome<ResBody, S::Error>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S, C, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let shared = self.shared.clone();
        let key = shared.keying.key(request.uri(), request.extensions());
        let breaker = shared
            .breakers
            .get_with_by_ref(&key, || Arc::new(Breaker::new()));
        let session_start = is_session_start(request.method(), request.headers());
        let gate = Gate {
            breaker,
            shared,
            key,
        };
        let changes = gate.breaker.subscribe();
        let state = match gate.admit(session_start) {
            Decision::Refuse(reason, retry_after) => State::Refused {
                error: Some(gate.refusal(reason, retry_after)),
            },
            Decision::Admit(admission) => State::Admitted {
                probe_timeout: gate.probe_timeout(admission),
                call: self.inner.call(request),
                permit: gate.permit(admission),
                classifier: self.classifier.clone(),
            },
            Decision::Wait => {
                // The readied service waits with the request; `self` keeps a clone.
                let clone = self.inner.clone();
                let service = std::mem::replace(&mut self.inner, clone);
                State::Gated {
                    changed: wait_for_change(changes),
                    deadline: Box::pin(tokio::time::sleep(gate.shared.config.probe_timeout)),
                    pending: Some((service, request)),
                    gate: Some(gate),
                    classifier: self.classifier.clone(),
                }
            }
        };
        ResponseFuture { state }
    }
}

/// A key's breaker as seen by one call.
struct Gate {
    breaker: Arc<Breaker>,
    shared: Arc<Shared>,
    key: String,
}

impl Gate {
    fn admit(&self, session_start: bool) -> Decision {
        let (decision, transition) = self.breaker.admit(&self.shared.config, session_start);
        self.shared.notify(&self.key, transition);
        decision
    }

    fn refusal(&self, reason: Rejection, retry_after: Duration) -> Error {
        tracing::debug!(key = self.key, %reason, ?retry_after, "call refused");
        Error::CircuitOpen {
            key: self.key.clone(),
            reason,
            retry_after,
        }
    }

    fn probe_timeout(&self, admission: Admission) -> Option<Sleep> {
        (admission == Admission::Probe)
            .then(|| tokio::time::sleep(self.shared.config.probe_timeout))
    }

    fn permit(self, admission: Admission) -> Permit {
        Permit {
            breaker: self.breaker,
            shared: self.shared,
            key: self.key,
            admission,
            recorded: false,
        }
    }
}

fn wait_for_change(mut changes: watch::Receiver<u64>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        // The sender lives as long as the breaker this call holds.
        let _ = changes.changed().await;
    })
}

/// An admitted call's claim on its breaker: records the outcome once; dropped without
/// one, it frees the probe slot or in-flight count it held.
struct Permit {
    breaker: Arc<Breaker>,
    shared: Arc<Shared>,
    key: String,
    admission: Admission,
    recorded: bool,
}

impl Permit {
    fn record(&mut self, outcome: Outcome) -> Option<Transition> {
        self.recorded = true;
        let transition = self
            .breaker
            .record(&self.shared.config, self.admission, outcome);
        self.shared.notify(&self.key, transition);
        transition
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.release(self.admission);
        }
    }
}

/// Response future of [`CircuitBreaker`].
#[pin_project]
pub struct ResponseFuture<S, C, B>
where
    S: Service<Request<B>>,
{
    #[pin]
    state: State<S, C, B>,
}

#[pin_project(project = StateProj)]
enum State<S, C, B>
where
    S: Service<Request<B>>,
{
    Refused {
        error: Option<Error>,
    },
    Gated {
        changed: Pin<Box<dyn Future<Output = ()> + Send>>,
        /// Waiting is bounded like a probe: calls in flight may hang.
        deadline: Pin<Box<Sleep>>,
        pending: Option<(S, Request<B>)>,
        gate: Option<Gate>,
        classifier: C,
    },
    Admitted {
        #[pin]
        call: S::Future,
        #[pin]
        probe_timeout: Option<Sleep>,
        permit: Permit,
        classifier: C,
    },
}

impl<S, C, B, ResBody> Future for ResponseFuture<S, C, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    C: ClassifyOutcome<ResBody, S::Error>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Refused { error } => {
                    return Poll::Ready(Err(error.take().map_or_else(
                        || "response future polled after completion".into(),
                        Into::into,
                    )));
                }
                StateProj::Gated {
                    changed,
                    deadline,
                    pending,
                    gate,
                    classifier,
                } => {
                    if changed.as_mut().poll(cx).is_pending() {
                        ready!(deadline.as_mut().poll(cx));
                        let Some(current) = gate.as_ref() else {
                            return Poll::Ready(Err(
                                "response future polled after completion".into()
                            ));
                        };
                        let retry_after = current.shared.config.probe_timeout;
                        return Poll::Ready(Err(current
                            .refusal(Rejection::Unproven, retry_after)
                            .into()));
                    }
                    let Some(current) = gate.take() else {
                        return Poll::Ready(Err("response future polled after completion".into()));
                    };
                    let changes = current.breaker.subscribe();
                    match current.admit(false) {
                        Decision::Wait => {
                            *changed = wait_for_change(changes);
                            *gate = Some(current);
                        }
                        Decision::Refuse(reason, retry_after) => {
                            return Poll::Ready(Err(current.refusal(reason, retry_after).into()));
                        }
                        Decision::Admit(admission) => {
                            let Some((mut service, request)) = pending.take() else {
                                return Poll::Ready(Err(
                                    "response future polled after completion".into()
                                ));
                            };
                            let classifier = classifier.clone();
                            state.set(State::Admitted {
                                probe_timeout: current.probe_timeout(admission),
                                call: service.call(request),
                                permit: current.permit(admission),
                                classifier,
                            });
                        }
                    }
                }
                StateProj::Admitted {
                    call,
                    probe_timeout,
                    permit,
                    classifier,
                } => {
                    if let Some(timeout) = probe_timeout.as_pin_mut()
                        && timeout.poll(cx).is_ready()
                        && !permit.recorded
                    {
                        let transition = permit.record(Outcome::Failure);
                        return Poll::Ready(Err(Error::CircuitOpen {
                            key: permit.key.clone(),
                            reason: Rejection::ProbeTimedOut,
                            retry_after: transition.and_then(|t| t.open_for).unwrap_or_default(),
                        }
                        .into()));
                    }
                    let result = ready!(call.poll(cx));
                    let outcome = match &result {
                        Ok(response) => classifier.classify_response(response),
                        Err(error) => classifier.classify_error(error),
                    };
                    permit.record(outcome);
                    return Poll::Ready(result.map_err(Into::into));
                }
            }
        }
    }
}

/// Turns [`Error::CircuitOpen`] into a `503 Service Unavailable` response with
/// `Retry-After` (whole seconds, rounded up), for proxies that must answer something.
/// Stack it outside [`CircuitBreakerLayer`]; other errors pass through.
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_mcp_auth::{BreakerConfig, CircuitBreakerLayer, ServiceUnavailableOnOpenLayer};
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
    ResBody: Default,
{
    type Response = Response<ResBody>;
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
    ResBody: Default,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = ready!(self.project().inner.poll(cx));
        let retry_after = match result.as_ref().err().and_then(|e| Error::find(e.as_ref())) {
            Some(Error::CircuitOpen { retry_after, .. }) => *retry_after,
            _ => return Poll::Ready(result),
        };
        let mut response = Response::new(ResBody::default());
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, seconds.max(1).into());
        Poll::Ready(Ok(response))
    }
}
