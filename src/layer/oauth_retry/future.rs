//! [`ResponseFuture`]: the call, then on a 401 (or 403 `insufficient_scope`) the
//! authorization and the one replay.

use super::*;

pub(super) struct Retry<S> {
    pub(super) shared: Arc<Shared>,
    pub(super) service: S,
}

/// Response future of [`OAuthRetry`].
#[pin_project(project = ResponseFutureProj)]
pub struct ResponseFuture<S, R>
where
    S: Service<Request<ReplayBody>>,
{
    #[pin]
    pub(super) state: State<S, R>,
    pub(super) retry: Option<Arc<Kept<S>>>,
}

#[pin_project(project = StateProj)]
pub(super) enum State<S, R>
where
    S: Service<Request<ReplayBody>>,
{
    Calling {
        #[pin]
        call: S::Future,
    },
    Authorizing {
        authorize: BoxFuture<'static, Result<Response<R>, BoxError>>,
    },
}

impl<S, R> Future for ResponseFuture<S, R>
where
    S: Service<Request<ReplayBody>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    R: Send + 'static,
{
    type Output = Result<Response<R>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        match this.state.as_mut().project() {
            StateProj::Calling { call } => {
                let result = ready!(call.poll(cx)).map_err(Into::into);
                // Nearly every response; the rest sits out of line, so this
                // function's frame and register saves do not pay for it.
                if result.as_ref().is_ok_and(|r| {
                    !matches!(r.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
                }) {
                    return Poll::Ready(result);
                }
                on_refused(&mut this, result, cx)
            }
            StateProj::Authorizing { authorize } => authorize.as_mut().poll(cx),
        }
    }
}

/// A 401 or 403 (or an error) from below: an authorization and a replay when it calls
/// for one and the request was handed back, the result as it is otherwise.
#[inline(never)]
pub(super) fn on_refused<S, R>(
    this: &mut ResponseFutureProj<'_, S, R>,
    result: Result<Response<R>, BoxError>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<R>, BoxError>>
where
    S: Service<Request<ReplayBody>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    R: Send + 'static,
{
    let (result, hand_back) = hand_back::detach(result);
    let Some(cause) = cause_of(&result) else {
        return Poll::Ready(result);
    };
    let Some(retry) = this.retry.take() else {
        return Poll::Ready(Err("response future polled after completion".into()));
    };
    let replayable = hand_back.and_then(|hand_back| {
        let shared = &retry.shared;
        let template = &hand_back.template;
        let principal = template.principal()?.clone();
        (shared.authorizer.covers(template.uri())
            && template.body().len() <= shared.max_replay_body)
            .then_some((principal, hand_back))
    });
    let Some((principal, hand_back)) = replayable else {
        tracing::debug!("authorization needed on a request that cannot be replayed");
        return Poll::Ready(result);
    };
    let mut authorize = Box::pin(authorize_and_replay(
        retry.retry(),
        principal,
        hand_back,
        cause,
    ));
    let poll = authorize.as_mut().poll(cx);
    this.state.set(State::Authorizing { authorize });
    poll
}

/// Why a response calls for an authorization.
pub(super) enum Cause {
    /// 401, or silent refresh could not help.
    Unauthorized {
        challenge: Option<BearerChallenge>,
        client_rejected: bool,
    },
    /// 403 `insufficient_scope`.
    InsufficientScope { challenge: BearerChallenge },
}

pub(super) fn cause_of<R>(result: &Result<Response<R>, BoxError>) -> Option<Cause> {
    match result {
        Ok(response) if response.status() == StatusCode::UNAUTHORIZED => {
            Some(Cause::Unauthorized {
                challenge: BearerChallenge::from_headers(response.headers()),
                client_rejected: false,
            })
        }
        Ok(response) if response.status() == StatusCode::FORBIDDEN => {
            BearerChallenge::from_headers(response.headers())
                .filter(|c| c.error.as_deref() == Some("insufficient_scope"))
                .map(|challenge| Cause::InsufficientScope { challenge })
        }
        Ok(_) => None,
        Err(error) => match Error::find(error.as_ref())? {
            error @ Error::ReauthRequired { reason, .. } => Some(Cause::Unauthorized {
                challenge: error.bearer_challenge(),
                client_rejected: matches!(reason, ReauthReason::ClientRejected { .. }),
            }),
            _ => None,
        },
    }
}

pub(super) async fn authorize_and_replay<S, R>(
    retry: Retry<S>,
    principal: Principal,
    hand_back: HandBack,
    first: Cause,
) -> Result<Response<R>, BoxError>
where
    S: Service<Request<ReplayBody>, Response = Response<R>> + Clone,
    S::Error: Into<BoxError>,
{
    let Retry { shared, service } = retry;
    let HandBack { template, sent } = hand_back;
    let mut cause = first;
    // The first request of a tenant since this process started went out without a
    // binding, hence without the credentials the store may hold (a restart, a new
    // replica): fill the binding from the stored registration, then any usable
    // credentials will do. Otherwise credentials must be newer than those the refused
    // request carried.
    let mut since = sent;
    let mut restored = false;
    if shared
        .authorizer
        .bindings()
        .get(principal.tenant())
        .is_none()
    {
        let challenge = match &cause {
            Cause::Unauthorized { challenge, .. } => challenge.clone(),
            Cause::InsufficientScope { challenge } => Some(challenge.clone()),
        };
        // A rejected client is dealt with by the authorization below, once.
        let binding_cause = AuthorizationCause::challenge(challenge);
        shared
            .authorizer
            .restore_binding(&principal, &binding_cause)
            .await?;
        since = Sent {
            at: SystemTime::UNIX_EPOCH,
            carried: None,
        };
        restored = true;
    }
    // Credentials that arrived while the request was out (a concurrent request's
    // authorization finished): one plain replay instead of a second authorization.
    // After a restore, stored credentials that a refresh can renew will do as well: the
    // replay goes through the refresh layer below.
    let replay = if restored {
        shared.authorizer.has_stored_credentials(&principal).await
    } else {
        shared
            .authorizer
            .has_credentials_newer_than(&principal, since.at, since.carried)
            .await
    };
    if replay {
        tracing::debug!("newer credentials than the refused request; replaying");
        let result = Oneshot::new(service.clone(), template.request())
            .await
            .map_err(Into::into);
        match cause_of(&result) {
            Some(next) => cause = next,
            None => return result,
        }
    }
    let mut previous_scopes = Vec::new();
    let mut authorizations = 0;
    loop {
        // Only a missing or refused token is cured by any newer credentials.
        let unauthorized = matches!(cause, Cause::Unauthorized { .. });
        let authorization = match cause {
            Cause::Unauthorized {
                challenge,
                client_rejected,
            } => AuthorizationCause {
                challenge,
                previous_scopes: Vec::new(),
                client_rejected,
            },
            Cause::InsufficientScope { challenge } => {
                if authorizations >= shared.max_authorizations {
                    return Err(Error::InsufficientScope {
                        scope: challenge.scopes().map(str::to_owned).collect(),
                        authorizations,
                    }
                    .into());
                }
                AuthorizationCause {
                    challenge: Some(challenge),
                    previous_scopes: std::mem::take(&mut previous_scopes),
                    client_rejected: false,
                }
            }
        };
        authorizations += 1;
        let flow = shared.authorizer.start(&principal, &authorization).await?;
        let pending = flow.pending().clone();
        previous_scopes.clone_from(&pending.request.scopes);
        // Another flow may have finished between the look above and this start (two
        // processes retrying after one's sign-in was orphaned): this one then ends at
        // once, unseen, and the request is replayed with those credentials.
        if unauthorized
            && !flow.joined()
            && shared
                .authorizer
                .settle_if_superseded(&principal, since.at, since.carried, &pending.state)
                .await
        {
            tracing::debug!("credentials arrived while the flow was started; replaying");
            return Oneshot::new(service.clone(), template.request())
                .await
                .map_err(Into::into);
        }
        let (handler, timeout) = match &shared.mode {
            Mode::ReturnEarly => {
                return Err(Error::AuthorizationRequired {
                    url: pending.browser_url().clone().into(),
                    expires_at: pending.expires_at,
                }
                .into());
            }
            Mode::Wait { handler, timeout } => (handler, *timeout),
        };
        if !flow.joined() {
            let handler = handler.clone();
            let authorizer = shared.authorizer.clone();
            let prompt = AuthorizationPrompt {
                principal: principal.clone(),
                flow: pending.clone(),
            };
            tokio::spawn(async move {
                // A handler that fails, or panics, fails the flow: its waiters learn at
                // once instead of waiting out their timeout.
                let reason = match crate::limits::catch_panic(handler.authorize(prompt)).await {
                    Ok(Ok(())) => return,
                    Ok(Err(error)) => format!("authorization handler failed: {error}"),
                    Err(_) => "authorization handler panicked".to_owned(),
                };
                tracing::warn!(%reason, "authorization not delivered");
                authorizer.fail_flow(&pending.state, reason).await;
            });
        }
        let started = Instant::now();
        match tokio::time::timeout(timeout, flow.outcome()).await {
            Ok(Some(FlowOutcome::Completed(_))) => {}
            Ok(Some(FlowOutcome::Failed(reason))) => {
                return Err(Error::AuthorizationFailed { reason }.into());
            }
            // The token endpoint no longer knows the client: register anew and
            // authorize again, within this request's allowance.
            Ok(Some(FlowOutcome::ClientRejected(code))) => {
                if authorizations >= shared.max_authorizations {
                    return Err(Error::AuthorizationFailed {
                        reason: format!("client rejected at the token endpoint ({code})"),
                    }
                    .into());
                }
                tracing::info!(%code, "client rejected during the code exchange; registering anew");
                cause = Cause::Unauthorized {
                    challenge: authorization.challenge,
                    client_rejected: true,
                };
                continue;
            }
            Ok(None) | Err(_) => {
                return Err(Error::AuthorizationTimedOut {
                    waited: started.elapsed(),
                }
                .into());
            }
        }
        tracing::debug!(authorizations, "authorized; replaying the request");
        let result = Oneshot::new(service.clone(), template.request())
            .await
            .map_err(Into::into);
        match cause_of(&result) {
            // One replay per 401: a fresh token that is refused again is the answer.
            Some(next @ Cause::InsufficientScope { .. }) => cause = next,
            _ => return result,
        }
    }
}
