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
//! [`Rejection::Unproven`](crate::breaker::Rejection::Unproven)). A dead upstream hit by a wave of 1,000 calls sees
//! `consecutive_failures` of them, then the circuit opens and the rest fail fast; a
//! healthy one is proven by the first answer and everyone proceeds.

mod classify;
mod future;
mod handle;
mod keying;
mod service;
mod unavailable;

pub use classify::{ClassifyOutcome, DefaultClassifier, local_resource_error};
pub use future::ResponseFuture;
pub use handle::CircuitBreakerHandle;
pub use keying::{BreakerKeying, KeyFn};
pub use service::CircuitBreaker;
pub use unavailable::{
    ServiceUnavailableOnOpen, ServiceUnavailableOnOpenLayer, UnavailableBody, UnavailableFuture,
};

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tower::Layer;

use crate::breaker::{Breaker, BreakerConfig, Transition};

type TransitionHook = Arc<dyn Fn(&str, &Transition) + Send + Sync>;

struct Shared {
    config: BreakerConfig,
    breakers: moka::sync::Cache<String, Arc<Breaker>>,
    /// 429 throttles, per principal (and origin): one user's `Retry-After` is theirs.
    throttles: moka::sync::Cache<String, Instant>,
    /// Set once any throttle was recorded (moka's entry count lags inserts).
    any_throttle: AtomicBool,
    keying: BreakerKeying,
    on_transition: Option<TransitionHook>,
}

impl Shared {
    /// How long the throttle `key` names stays, if any (the key is built only when
    /// some throttle exists: the hot path makes no string).
    fn throttled(&self, key: impl FnOnce() -> String) -> Option<Duration> {
        if !self.any_throttle.load(Ordering::Relaxed) {
            return None;
        }
        let now = Instant::now();
        self.throttles
            .get(&key())
            .filter(|until| now < *until)
            .map(|until| until - now)
    }

    fn throttle(&self, key: String, retry_after: Option<Duration>) {
        self.any_throttle.store(true, Ordering::Relaxed);
        let wait = retry_after
            .unwrap_or(self.config.default_throttle)
            .min(self.config.max_throttle);
        tracing::debug!(key = %key, ?wait, "throttled after HTTP 429");
        self.throttles
            .insert(key, crate::limits::instant_after(Instant::now(), wait));
    }

    fn notify(&self, key: &str, transition: Option<Transition>) {
        let Some(transition) = transition else { return };
        let to = match transition.to {
            crate::breaker::CircuitState::Closed => "closed",
            crate::breaker::CircuitState::Open => "open",
            crate::breaker::CircuitState::HalfOpen => "half_open",
        };
        crate::metrics::count_with(crate::metrics::BREAKER_TRANSITIONS, "to", to);
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
/// The defaults never refuse calls to a healthy server and keep one user's trouble
/// theirs: only upstream failures (errors, 5xx) count against a circuit; 401, 403, other
/// 4xx and this crate's own errors (a user who must log in, a refused token exchange)
/// count for nothing; a 429 throttles only its principal (and origin); only JSON-RPC
/// `initialize` requests and responses that created a session count as session starts,
/// so a stateless MCP server is never taken for a storm; and a dead upstream is probed
/// about once a second, so a recovered one is used again within a second.
///
/// A refused call fails with [`Error::CircuitOpen`](crate::Error::CircuitOpen) (inside the `BoxError`), carrying the
/// reason and when to retry; stack [`ServiceUnavailableOnOpenLayer`] outside it to turn
/// that into a `503` with `Retry-After` instead (proxies). Breakers live in a moka cache
/// that forgets keys idle for 15 minutes, so millions of keys do not grow without bound.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_mcp_auth::{BreakerConfig, layer::circuit_breaker::BreakerKeying, CircuitBreakerLayer, Error};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let breaker = CircuitBreakerLayer::new(BreakerConfig::default().with_consecutive_failures(2))
///     .with_keying(BreakerKeying::Origin);
/// let handle = breaker.handle();
/// let client = ServiceBuilder::new().layer(breaker).service_fn(|_req: http::Request<tower_mcp_auth::ReplayBody>| async {
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
                throttles: new_throttles(&config),
                any_throttle: AtomicBool::new(false),
                config,
                breakers: new_registry(),
                keying: BreakerKeying::Origin,
                on_transition: None,
            }),
            classifier: DefaultClassifier,
        }
    }
}

fn new_throttles(config: &BreakerConfig) -> moka::sync::Cache<String, Instant> {
    moka::sync::Cache::builder()
        .max_capacity(1_000_000)
        .time_to_live(crate::limits::clamp(config.max_throttle))
        .build()
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
            throttles: self.shared.throttles.clone(),
            any_throttle: AtomicBool::new(self.shared.any_throttle.load(Ordering::Relaxed)),
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
