//! How [`OAuthRetryLayer`](crate::OAuthRetryLayer) gets the request to replay from the
//! [`SilentRefreshLayer`](crate::SilentRefreshLayer) below it, instead of buffering its
//! own copy of every request.
//!
//! The outer layer marks the request: on the request's [`Principal`], which both layers
//! look up anyway, or, for a request without one, with an extension of its own
//! ([`Wanted`]). The inner layer takes the mark off and, when the request ends in
//! something the outer layer may act on (a 401 or 403 response, or an error), attaches
//! the replay template it keeps anyway: to the response's extensions, or around the
//! error ([`HandedBack`]). The outer layer takes it off again, so its caller never sees
//! either. Unmarked requests (a silent refresh layer used alone) get nothing attached.

use std::fmt;
use std::time::SystemTime;

use http::{Request, Response, StatusCode};
use tower::BoxError;

use crate::key::Principal;
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

/// Marks `request` (with `default` as its principal when it names none, inserted so
/// that every inner layer sees it): one lookup.
pub(crate) fn mark<B>(request: &mut Request<B>, default: Option<&Principal>) {
    let extensions = request.extensions_mut();
    let principal = match default {
        Some(default) => Some(extensions.get_or_insert_with(|| default.clone())),
        None => extensions.get_mut::<Principal>(),
    };
    match principal {
        Some(principal) => principal.want_hand_back(),
        None => {
            extensions.insert(Wanted);
        }
    }
}

/// The request's principal (`default`, inserted, when it names none), and whether the
/// layer above marked the request, the mark taken off. A request with its own
/// principal costs one lookup.
pub(crate) fn take_principal_and_mark<B>(
    request: &mut Request<B>,
    default: Option<&Principal>,
) -> (Option<Principal>, bool) {
    let extensions = request.extensions_mut();
    if let Some(principal) = extensions.get_mut::<Principal>() {
        let wanted = principal.take_hand_back();
        return (Some(principal.clone()), wanted);
    }
    // Without a principal, a mark is an extension of its own.
    let wanted = !extensions.is_empty() && extensions.remove::<Wanted>().is_some();
    let principal = default.map(|default| {
        extensions.insert(default.clone());
        default.clone()
    });
    (principal, wanted)
}

/// Takes the mark off `request` and inserts nothing: for a request the layer below
/// lets pass untouched (another server's), which must not reach a layer further down
/// still marked.
pub(crate) fn take_mark<B>(request: &mut Request<B>) {
    let extensions = request.extensions_mut();
    if let Some(principal) = extensions.get_mut::<Principal>() {
        principal.take_hand_back();
    } else if !extensions.is_empty() {
        extensions.remove::<Wanted>();
    }
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

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    fn request(principal: Option<Principal>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(principal) = principal {
            request.extensions_mut().insert(principal);
        }
        request
    }

    #[test]
    fn the_mark_rides_on_the_requests_principal_and_is_taken_off() {
        let alice = Principal::new("acme", "alice");
        let mut marked = request(Some(alice.clone()));
        mark(&mut marked, None);
        assert_eq!(marked.extensions().len(), 1, "no extension of its own");
        let seen = Principal::from_extensions(marked.extensions())
            .unwrap()
            .clone();
        // Invisible to comparisons and hashes: per-user state is found as before.
        assert_eq!(seen, alice);
        let hashes = std::hash::RandomState::new();
        assert_eq!(hashes.hash_one(&seen), hashes.hash_one(&alice));
        assert_eq!(format!("{seen:?}"), format!("{alice:?}"));

        let (principal, wanted) = take_principal_and_mark(&mut marked, None);
        assert!(wanted);
        assert_eq!(principal.as_ref(), Some(&alice));
        // Taken off the request's own principal and the clone: what the inner service
        // and a replay see asks for nothing.
        let (_, again) = take_principal_and_mark(&mut marked, None);
        assert!(!again);
        assert!(!principal.unwrap().take_hand_back());

        let mut unmarked = request(Some(alice.clone()));
        assert_eq!(
            take_principal_and_mark(&mut unmarked, None),
            (Some(alice), false)
        );
    }

    #[test]
    fn a_request_without_a_principal_is_marked_by_an_extension_of_its_own() {
        let default = Principal::new("acme", "default");
        let mut marked = request(None);
        mark(&mut marked, None);
        let (principal, wanted) = take_principal_and_mark(&mut marked, Some(&default));
        assert!(wanted);
        assert_eq!(principal.as_ref(), Some(&default));
        // The default is inserted for the inner layers; the mark is gone.
        assert_eq!(marked.extensions().len(), 1);
        assert_eq!(
            Principal::from_extensions(marked.extensions()),
            Some(&default)
        );

        // The outer layer's default principal carries the mark.
        let mut defaulted = request(None);
        mark(&mut defaulted, Some(&default));
        assert_eq!(defaulted.extensions().len(), 1);
        assert_eq!(
            take_principal_and_mark(&mut defaulted, None),
            (Some(default.clone()), true)
        );

        let mut bare = request(None);
        assert_eq!(take_principal_and_mark(&mut bare, None), (None, false));
    }

    #[test]
    fn a_request_let_pass_loses_the_mark_and_gains_nothing() {
        let alice = Principal::new("acme", "alice");
        let mut with_principal = request(Some(alice.clone()));
        mark(&mut with_principal, None);
        take_mark(&mut with_principal);
        assert_eq!(
            take_principal_and_mark(&mut with_principal, None),
            (Some(alice), false)
        );

        let mut without = request(None);
        mark(&mut without, None);
        take_mark(&mut without);
        assert!(
            without.extensions().is_empty(),
            "no default inserted, no mark left"
        );
    }
}
