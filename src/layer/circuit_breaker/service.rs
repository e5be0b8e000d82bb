//! The service: admission per request.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tokio::sync::watch;
use tokio::time::Sleep;
use tower::{BoxError, Service};

use super::classify::{MAX_PEEK, created_session, is_initialize, may_start_session};
use super::future::State;
use super::{ClassifyOutcome, DefaultClassifier, ResponseFuture, Shared};
use crate::breaker::{Admission, Breaker, Decision, Outcome, Rejection, Transition};
use crate::error::Error;
use crate::key::Principal;
use crate::replay::{ReplayBody, RequestBody, make_replayable};

/// The service of [`CircuitBreakerLayer`](super::CircuitBreakerLayer).
pub struct CircuitBreaker<S, C = DefaultClassifier> {
    pub(super) inner: S,
    pub(super) shared: Arc<Shared>,
    pub(super) classifier: C,
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

impl<S, C> CircuitBreaker<S, C> {
    crate::layer::inner_service_accessors!();
}

impl<S, C, ReqBody, ResBody> Service<Request<ReqBody>> for CircuitBreaker<S, C>
where
    S: Service<Request<ReplayBody>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    C: ClassifyOutcome<ResBody>,
    ReqBody: RequestBody,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let shared = self.shared.clone();
        let key = shared.keying.key(request.uri(), request.extensions());
        let principal = Principal::from_extensions(request.extensions()).cloned();
        let breaker = shared
            .breakers
            .get_with_by_ref(&key, || Arc::new(Breaker::new()));
        let gate = Gate {
            breaker,
            shared,
            key,
            principal,
            watch_session: may_start_session(request.method(), request.headers()),
        };
        let classifier = self.classifier.clone();
        if gate.watch_session && gate.shared.config.storm.is_some() {
            // Read the body (small, known size only) to find `initialize`; the readied
            // service goes with the request, `self` keeps a clone.
            let clone = self.inner.clone();
            let service = std::mem::replace(&mut self.inner, clone);
            let read = Box::pin(async move {
                let (request, template) = make_replayable(request, MAX_PEEK).await?;
                let initialize = template.is_some_and(|t| is_initialize(t.body()));
                Ok((request, initialize))
            });
            return ResponseFuture::new(State::Reading {
                read,
                service: Some(service),
                gate: Some(gate),
                classifier,
            });
        }
        let changes = gate.breaker.subscribe();
        let decision = gate.admit(false);
        ResponseFuture::new(match decision {
            Decision::Refuse(reason, retry_after) => State::Refused {
                error: Some(gate.refusal(reason, retry_after)),
            },
            Decision::Admit(admission) => State::Admitted {
                probe_timeout: gate.probe_timeout(admission),
                call: self.inner.call(request.map(ReplayBody::new)),
                permit: gate.permit(admission, false),
                classifier,
            },
            Decision::Wait => {
                let clone = self.inner.clone();
                let service = std::mem::replace(&mut self.inner, clone);
                State::gated(
                    gate,
                    changes,
                    service,
                    request.map(ReplayBody::new),
                    classifier,
                    false,
                )
            }
        })
    }
}

/// A key's breaker as seen by one call.
pub(super) struct Gate {
    pub(super) breaker: Arc<Breaker>,
    pub(super) shared: Arc<Shared>,
    pub(super) key: String,
    /// Whose 429 throttle applies: the principal's, per origin.
    principal: Option<Principal>,
    /// A POST without a session id: a response that creates a session counts as a
    /// session start (unless the request was already counted as `initialize`).
    watch_session: bool,
}

impl Gate {
    pub(super) fn admit(&self, session_start: bool) -> Decision {
        if let Some(wait) = self
            .shared
            .throttled(|| throttle_key(&self.key, self.principal.as_ref()))
        {
            return Decision::Refuse(Rejection::Throttled, wait);
        }
        let (decision, transition) = self.breaker.admit(&self.shared.config, session_start);
        self.shared.notify(&self.key, transition);
        decision
    }

    pub(super) fn refusal(&self, reason: Rejection, retry_after: Duration) -> Error {
        tracing::debug!(key = self.key, %reason, ?retry_after, "call refused");
        crate::metrics::count_with(crate::metrics::BREAKER_REFUSALS, "reason", reason.label());
        Error::CircuitOpen {
            key: self.key.clone(),
            reason,
            retry_after,
        }
    }

    pub(super) fn probe_timeout(&self, admission: Admission) -> Option<Sleep> {
        (admission == Admission::Probe)
            .then(|| tokio::time::sleep(self.shared.config.probe_timeout))
    }

    /// The admitted call's permit; `counted_start`: the request was counted as an
    /// `initialize` already.
    pub(super) fn permit(self, admission: Admission, counted_start: bool) -> Permit {
        Permit {
            watch_session: self.watch_session && !counted_start,
            breaker: self.breaker,
            shared: self.shared,
            key: self.key,
            principal: self.principal,
            admission,
            recorded: false,
        }
    }
}

/// The key of a throttle: the circuit's key and the principal, so one user's 429 never
/// throttles another.
fn throttle_key(key: &str, principal: Option<&Principal>) -> String {
    match principal {
        Some(p) => format!("{key}|{}:{}", p.tenant(), p.subject()),
        None => key.to_owned(),
    }
}

pub(super) fn wait_for_change(
    mut changes: watch::Receiver<u64>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        // The sender lives as long as the breaker this call holds.
        let _ = changes.changed().await;
    })
}

/// An admitted call's claim on its breaker: records the outcome once; dropped without
/// one, it frees the probe slot or in-flight count it held.
pub(super) struct Permit {
    breaker: Arc<Breaker>,
    shared: Arc<Shared>,
    pub(super) key: String,
    principal: Option<Principal>,
    watch_session: bool,
    admission: Admission,
    pub(super) recorded: bool,
}

impl Permit {
    pub(super) fn record(&mut self, outcome: Outcome) -> Option<Transition> {
        self.recorded = true;
        if let Outcome::Throttle(retry_after) = outcome {
            self.shared.throttle(
                throttle_key(&self.key, self.principal.as_ref()),
                retry_after,
            );
        }
        let transition = self
            .breaker
            .record(&self.shared.config, self.admission, outcome);
        self.shared.notify(&self.key, transition);
        transition
    }

    /// Records a response, counting a session it created toward the storm guard.
    pub(super) fn record_response<B>(&mut self, response: &Response<B>, outcome: Outcome) {
        if self.watch_session && created_session(response.headers()) {
            self.breaker.session_created(&self.shared.config);
        }
        self.record(outcome);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.release(self.admission);
        }
    }
}
