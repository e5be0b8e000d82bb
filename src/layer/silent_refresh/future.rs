//! The response future of [`SilentRefresh`](super::SilentRefresh): the first send, and
//! after a 401 the refresh and the one replay.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use http::{HeaderValue, Request, Response, StatusCode, header};
use pin_project::pin_project;
use tower::util::Oneshot;
use tower::{BoxError, Service};
use tracing::debug;

use super::{Prepared, Shared, Unsent, bearer};
use crate::error::Error;
use crate::key::AuthKey;
use crate::layer::hand_back::{self, HandBack, Sent};
use crate::replay::{ReplayBody, ReplayTemplate, UnresolvedUri};
use crate::store::BoxFuture;
use crate::token::{TokenSet, TokenStamp};

/// Response future of [`SilentRefresh`](super::SilentRefresh).
#[pin_project(project = ResponseFutureProj)]
pub struct ResponseFuture<S>
where
    S: Service<Request<ReplayBody>>,
{
    #[pin]
    pub(super) state: State<S>,
    /// The readied service, for a call once the request is prepared.
    pub(super) service: Option<S>,
    /// The layer, for a refresh and a replay after a 401 (`None`: a 401 is passed on).
    pub(super) shared: Option<Arc<Shared<S>>>,
    /// The request to replay and the token set it carried.
    pub(super) replay: Option<(ReplayTemplate<UnresolvedUri>, Option<TokenStamp>)>,
    /// When the layer above asked for the request back: when it was sent.
    pub(super) sent_at: Option<SystemTime>,
}

#[pin_project(project = StateProj)]
pub(super) enum State<S>
where
    S: Service<Request<ReplayBody>>,
{
    Preparing {
        prepare: BoxFuture<'static, Result<Prepared, Unsent>>,
    },
    Calling {
        #[pin]
        call: S::Future,
    },
    Refreshing {
        refresh: BoxFuture<'static, Result<Arc<TokenSet>, Error>>,
        www_authenticate: Vec<HeaderValue>,
    },
    Replaying {
        // Boxed: replays are rare and the request inside is large.
        call: Pin<Box<Oneshot<S, Request<ReplayBody>>>>,
    },
    Failed {
        error: Option<BoxError>,
    },
}

impl<S> ResponseFuture<S>
where
    S: Service<Request<ReplayBody>>,
{
    pub(super) fn calling(call: S::Future) -> Self {
        Self {
            state: State::Calling { call },
            service: None,
            shared: None,
            replay: None,
            sent_at: None,
        }
    }

    #[cold]
    #[inline(never)]
    pub(super) fn failed(error: impl Into<BoxError>) -> Self {
        Self {
            state: State::Failed {
                error: Some(error.into()),
            },
            service: None,
            shared: None,
            replay: None,
            sent_at: None,
        }
    }
}

/// A request sent without a token succeeded: the server serves some requests without
/// authorization, so its users' requests always go out.
#[cold]
fn answered_without_token<S>(
    replay: &Option<(ReplayTemplate<UnresolvedUri>, Option<TokenStamp>)>,
    shared: &Option<Arc<Shared<S>>>,
) {
    let (Some((template, _)), Some(shared)) = (replay, shared) else {
        return;
    };
    let layer = &shared.layer;
    if let Some(binding) = template
        .principal()
        .and_then(|principal| layer.bindings.id_for_principal(principal))
    {
        layer.challenges.answered(binding);
    }
}

/// `result`, with the request to replay (and the token set it carried) attached when
/// the layer above asked for it (`kept` is called only then).
fn finish<R>(
    result: Result<Response<R>, BoxError>,
    sent_at: Option<SystemTime>,
    kept: impl FnOnce() -> Option<(ReplayTemplate, Option<TokenStamp>)>,
) -> Result<Response<R>, BoxError> {
    let Some(at) = sent_at else {
        return result;
    };
    let acted_on = result.as_ref().map_or(true, |response| {
        matches!(
            response.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        )
    });
    if !acted_on {
        return result;
    }
    match kept() {
        Some((template, carried)) => {
            let sent = Sent { at, carried };
            hand_back::attach(result, HandBack { template, sent })
        }
        None => result,
    }
}

/// The kept template with its URI (the layer's resource standing for the one not
/// kept).
fn resolved<S>(
    replay: &Option<(ReplayTemplate<UnresolvedUri>, Option<TokenStamp>)>,
    shared: &Option<Arc<Shared<S>>>,
) -> Option<(ReplayTemplate, Option<TokenStamp>)> {
    let (template, carried) = replay.as_ref()?;
    let resource = shared.as_ref().and_then(|s| s.layer.bindings.exact_uri());
    Some((template.resolve(resource)?, *carried))
}

impl<S, ResBody> Future for ResponseFuture<S>
where
    S: Service<Request<ReplayBody>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // Nearly every poll: the first send's answer, with nothing to refresh and
        // nothing to hand back. The rest sits out of line: this function's
        // frame and register saves do not pay for it.
        if let StateProj::Calling { call } = this.state.as_mut().project() {
            let response = ready!(call.poll(cx)).map_err(Into::into)?;
            if this.sent_at.is_none() && response.status() != StatusCode::UNAUTHORIZED {
                if this
                    .replay
                    .as_ref()
                    .is_some_and(|(_, carried)| carried.is_none())
                    && response.status().is_success()
                {
                    answered_without_token(this.replay, this.shared);
                }
                return Poll::Ready(Ok(response));
            }
            if let Some(output) = on_response(&mut this, response) {
                return Poll::Ready(output);
            }
        }
        poll_states(&mut this, cx)
    }
}

/// Every state, until the output is ready or the future waits.
#[inline(never)]
fn poll_states<S, ResBody>(
    this: &mut ResponseFutureProj<'_, S>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<ResBody>, BoxError>>
where
    S: Service<Request<ReplayBody>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
{
    loop {
        match this.state.as_mut().project() {
            StateProj::Preparing { prepare } => {
                let prepared = match ready!(prepare.as_mut().poll(cx)) {
                    Ok(prepared) => prepared,
                    Err((error, template)) => {
                        let kept = || template.map(|template| (template, None));
                        return Poll::Ready(finish(Err(error), *this.sent_at, kept));
                    }
                };
                let Some(mut service) = this.service.take() else {
                    return Poll::Ready(Err("response future polled after completion".into()));
                };
                *this.replay = prepared
                    .replay
                    .map(|template| (template.unresolved(), prepared.carried));
                let call = service.call(prepared.request);
                this.state.set(State::Calling { call });
            }
            StateProj::Calling { call } => {
                let response = ready!(call.poll(cx)).map_err(Into::into)?;
                if let Some(output) = on_response(this, response) {
                    return Poll::Ready(output);
                }
            }
            StateProj::Refreshing {
                refresh,
                www_authenticate,
            } => {
                let (replay, shared) = (&*this.replay, &*this.shared);
                let token = match ready!(refresh.as_mut().poll(cx)) {
                    Ok(token) => token,
                    Err(error) => {
                        let challenge = std::mem::take(www_authenticate);
                        let error = error.with_challenge(challenge).into();
                        let kept = || resolved(replay, shared);
                        return Poll::Ready(finish(Err(error), *this.sent_at, kept));
                    }
                };
                let (Some((template, _)), Some(shared)) = (resolved(replay, shared), shared) else {
                    return Poll::Ready(Err("response future polled after completion".into()));
                };
                let service = shared.replay_service();
                let mut request = template.request();
                request
                    .headers_mut()
                    .insert(header::AUTHORIZATION, bearer(&token)?);
                // What the replay carries, should it be refused and handed back.
                if let Some((_, carried)) = this.replay.as_mut() {
                    *carried = Some(token.stamp());
                }
                this.state.set(State::Replaying {
                    call: Box::pin(Oneshot::new(service, request)),
                });
            }
            StateProj::Replaying { call } => {
                let result = ready!(call.as_mut().poll(cx)).map_err(Into::into);
                let (replay, shared) = (&*this.replay, &*this.shared);
                return Poll::Ready(finish(result, *this.sent_at, || resolved(replay, shared)));
            }
            StateProj::Failed { error } => {
                let error = error
                    .take()
                    .unwrap_or_else(|| "response future polled after completion".into());
                return Poll::Ready(Err(error));
            }
        }
    }
}

/// The answer to a send: the output (`Some`), or a refresh begun (`None`, the state
/// moved on).
#[inline(never)]
fn on_response<S, ResBody>(
    this: &mut ResponseFutureProj<'_, S>,
    response: Response<ResBody>,
) -> Option<Result<Response<ResBody>, BoxError>>
where
    S: Service<Request<ReplayBody>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
{
    let (replay, shared) = (&*this.replay, &*this.shared);
    let kept = || resolved(replay, shared);
    if response.status() != StatusCode::UNAUTHORIZED {
        if replay
            .as_ref()
            .is_some_and(|(_, carried)| carried.is_none())
            && response.status().is_success()
        {
            answered_without_token(replay, shared);
        }
        return Some(finish(Ok(response), *this.sent_at, kept));
    }
    let (Some(shared), Some((template, carried))) = (shared, replay) else {
        debug!(
            "401 passed on: no stored credentials to refresh, or the request cannot be replayed"
        );
        return Some(finish(Ok(response), *this.sent_at, kept));
    };
    let www_authenticate: Vec<HeaderValue> = response
        .headers()
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .cloned()
        .collect();
    // The principal the request was sent for (the layer put it there). The binding
    // looked up again: the request needed only its id.
    let layer = &shared.layer;
    let Some((principal, binding)) = template
        .principal()
        .and_then(|principal| Some((principal, layer.bindings.for_principal(principal)?)))
    else {
        return Some(finish(Ok(response), *this.sent_at, kept));
    };
    let key = AuthKey::new(principal, binding.id());
    if carried.is_none() {
        layer.challenges.refused(&key, &www_authenticate);
    }
    let coordinator = layer.coordinator.clone();
    let generation = carried.map(|stamp| stamp.generation);
    debug!(key = %key, "401 from the resource server; refreshing");
    let refresh = Box::pin(async move {
        coordinator
            .refresh_rejected(&key, &binding, generation)
            .await
    });
    this.state.set(State::Refreshing {
        refresh,
        www_authenticate,
    });
    None
}
