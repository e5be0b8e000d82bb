//! The response future: reading the body for `initialize`, waiting, probing, recording.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project::pin_project;
use tokio::sync::watch;
use tokio::time::Sleep;
use tower::{BoxError, Service};

use super::ClassifyOutcome;
use super::service::{Gate, Permit, wait_for_change};
use crate::breaker::{Decision, Outcome, Rejection};
use crate::error::Error;
use crate::replay::ReplayBody;

type Read = Pin<Box<dyn Future<Output = Result<(Request<ReplayBody>, bool), BoxError>> + Send>>;

const POLLED_AFTER_COMPLETION: &str = "response future polled after completion";

/// Response future of [`CircuitBreaker`](super::CircuitBreaker).
#[pin_project]
pub struct ResponseFuture<S, C>
where
    S: Service<Request<ReplayBody>>,
{
    #[pin]
    state: State<S, C>,
}

impl<S, C> ResponseFuture<S, C>
where
    S: Service<Request<ReplayBody>>,
{
    pub(super) fn new(state: State<S, C>) -> Self {
        Self { state }
    }
}

#[pin_project(project = StateProj)]
pub(super) enum State<S, C>
where
    S: Service<Request<ReplayBody>>,
{
    /// Reading a small body to learn whether it is an `initialize` (a session start).
    Reading {
        read: Read,
        service: Option<S>,
        gate: Option<Gate>,
        classifier: C,
    },
    Refused {
        error: Option<Error>,
    },
    Gated {
        changed: Pin<Box<dyn Future<Output = ()> + Send>>,
        /// Waiting is bounded like a probe: calls in flight may hang.
        deadline: Pin<Box<Sleep>>,
        pending: Option<(S, Request<ReplayBody>)>,
        gate: Option<Gate>,
        classifier: C,
        session_start: bool,
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

impl<S, C> State<S, C>
where
    S: Service<Request<ReplayBody>>,
{
    pub(super) fn gated(
        gate: Gate,
        changes: watch::Receiver<u64>,
        service: S,
        request: Request<ReplayBody>,
        classifier: C,
        session_start: bool,
    ) -> Self {
        State::Gated {
            changed: wait_for_change(changes),
            deadline: Box::pin(tokio::time::sleep(gate.shared.config.probe_timeout)),
            pending: Some((service, request)),
            gate: Some(gate),
            classifier,
            session_start,
        }
    }

    /// The state after `gate` decided on a call that holds its readied `service`.
    fn decided(
        gate: Gate,
        decision: Decision,
        changes: watch::Receiver<u64>,
        mut service: S,
        request: Request<ReplayBody>,
        classifier: C,
        session_start: bool,
    ) -> Self {
        match decision {
            Decision::Refuse(reason, retry_after) => State::Refused {
                error: Some(gate.refusal(reason, retry_after)),
            },
            Decision::Admit(admission) => State::Admitted {
                probe_timeout: gate.probe_timeout(admission),
                call: service.call(request),
                permit: gate.permit(admission, session_start),
                classifier,
            },
            Decision::Wait => {
                State::gated(gate, changes, service, request, classifier, session_start)
            }
        }
    }
}

impl<S, C, ResBody> Future for ResponseFuture<S, C>
where
    S: Service<Request<ReplayBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    C: ClassifyOutcome<ResBody>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Reading {
                    read,
                    service,
                    gate,
                    classifier,
                } => {
                    let (request, initialize) = ready!(read.as_mut().poll(cx))?;
                    let (Some(gate), Some(service)) = (gate.take(), service.take()) else {
                        return Poll::Ready(Err(POLLED_AFTER_COMPLETION.into()));
                    };
                    let changes = gate.breaker.subscribe();
                    let decision = gate.admit(initialize);
                    let classifier = classifier.clone();
                    state.set(State::decided(
                        gate, decision, changes, service, request, classifier, initialize,
                    ));
                }
                StateProj::Refused { error } => {
                    return Poll::Ready(Err(error
                        .take()
                        .map_or_else(|| POLLED_AFTER_COMPLETION.into(), Into::into)));
                }
                StateProj::Gated {
                    changed,
                    deadline,
                    pending,
                    gate,
                    classifier,
                    session_start,
                } => {
                    if changed.as_mut().poll(cx).is_pending() {
                        ready!(deadline.as_mut().poll(cx));
                        let Some(current) = gate.as_ref() else {
                            return Poll::Ready(Err(POLLED_AFTER_COMPLETION.into()));
                        };
                        let retry_after = current.shared.config.probe_timeout;
                        return Poll::Ready(Err(current
                            .refusal(Rejection::Unproven, retry_after)
                            .into()));
                    }
                    let (Some(current), Some((service, request))) = (gate.take(), pending.take())
                    else {
                        return Poll::Ready(Err(POLLED_AFTER_COMPLETION.into()));
                    };
                    let changes = current.breaker.subscribe();
                    // A session start was counted when first admitted or gated.
                    let decision = current.admit(false);
                    let (classifier, counted) = (classifier.clone(), *session_start);
                    state.set(State::decided(
                        current, decision, changes, service, request, classifier, counted,
                    ));
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
                    return Poll::Ready(match ready!(call.poll(cx)) {
                        Ok(response) => {
                            let outcome = classifier.classify_response(&response);
                            permit.record_response(&response, outcome);
                            Ok(response)
                        }
                        Err(error) => {
                            let error: BoxError = error.into();
                            permit.record(classifier.classify_error(&error));
                            Err(error)
                        }
                    });
                }
            }
        }
    }
}
