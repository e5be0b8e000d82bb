//! How [`OAuthRetryLayer`](crate::OAuthRetryLayer) gets the request to replay from the
//! [`SilentRefreshLayer`](crate::SilentRefreshLayer) below it, instead of buffering its
//! own copy of every request.
//!
//! The outer layer marks the request ([`Wanted`]); the inner layer takes the mark off
//! and, when the request ends in something the outer layer may act on (a 401 or 403
//! response, or an error), attaches the replay template it keeps anyway: to the
//! response's extensions, or around the error ([`HandedBack`]). The outer layer takes it
//! off again, so its caller never sees either. Unmarked requests (a silent refresh layer
//! used alone) get nothing attached.

use std::fmt;
use std::time::SystemTime;

use http::{Request, Response, StatusCode};
use tower::BoxError;

use crate::replay::ReplayTemplate;
use crate::token::TokenStamp;

/// The mark: "hand me the request back if it fails".
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wanted;

/// A request to send again, and how its first send left (for "which credentials are
/// newer than the ones it carried").
#[derive(Clone)]
pub(crate) struct HandBack {
    pub(crate) template: ReplayTemplate,
    pub(crate) sent: Sent,
}

/// When a request left and which token set it carried. Credentials obtained since
/// then, other than the ones it carried, are newer than what it was refused with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sent {
    /// When it left. On the hot path, the coarse clock's time, which may trail by some
    /// milliseconds: the token set it carried is told apart by `carried`, not by time,
    /// so an early `at` can only make a just-stored token set count as newer (one
    /// replay with it), never the refused one.
    pub(crate) at: SystemTime,
    /// The token set it carried (`None`: none).
    pub(crate) carried: Option<TokenStamp>,
}

/// Takes the mark off `request`: whether the request's template is wanted back.
pub(crate) fn take_mark<B>(request: &mut Request<B>) -> bool {
    // A request without extensions (no principal, no mark) costs no lookup.
    !request.extensions().is_empty() && request.extensions_mut().remove::<Wanted>().is_some()
}

/// Marks `request`.
pub(crate) fn mark<B>(request: &mut Request<B>) {
    request.extensions_mut().insert(Wanted);
}

/// Attaches `hand_back` to a result the outer layer may act on.
pub(crate) fn attach<R>(
    result: Result<Response<R>, BoxError>,
    hand_back: HandBack,
) -> Result<Response<R>, BoxError> {
    match result {
        Ok(mut response)
            if matches!(
                response.status(),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
            ) =>
        {
            response.extensions_mut().insert(hand_back);
            Ok(response)
        }
        Ok(response) => Ok(response),
        Err(error) => Err(Box::new(HandedBack { error, hand_back })),
    }
}

/// Takes what the inner layer attached off `result`.
pub(crate) fn detach<R>(
    result: Result<Response<R>, BoxError>,
) -> (Result<Response<R>, BoxError>, Option<HandBack>) {
    match result {
        Ok(mut response) => {
            let hand_back = response.extensions_mut().remove::<HandBack>();
            (Ok(response), hand_back)
        }
        Err(error) => match error.downcast::<HandedBack>() {
            Ok(handed) => (Err(handed.error), Some(handed.hand_back)),
            Err(error) => (Err(error), None),
        },
    }
}

/// An error of the inner layer with the request's template attached. Displays, and has
/// the source chain of, the error it wraps; it never reaches the outer layer's caller.
pub(crate) struct HandedBack {
    error: BoxError,
    hand_back: HandBack,
}

impl fmt::Debug for HandedBack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The template holds request headers: never printed.
        fmt::Debug::fmt(&self.error, f)
    }
}

impl fmt::Display for HandedBack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl std::error::Error for HandedBack {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The wrapped error itself, so `Error::find` sees it through this wrapper.
        Some(&*self.error)
    }
}
