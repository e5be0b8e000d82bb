//! The layers' hot path: a token that may be sent as it is, read without waiting.

use std::time::SystemTime;

use super::RefreshCoordinator;
use crate::key::AuthKey;
use crate::token::{Generation, TokenSet};

/// A token the hot path may send as it is (see [`RefreshCoordinator::token_now`]).
pub(crate) struct ServableToken {
    /// `Bearer <access token>` (`None`: not a valid header value).
    pub(crate) header: Option<http::HeaderValue>,
    pub(crate) generation: Generation,
    /// The time read to tell it is still valid (none for a token without expiry),
    /// precise when the caller asked for it.
    pub(crate) now: Option<SystemTime>,
}

impl RefreshCoordinator {
    /// The hot path of [`token`](Self::token): the stored token if it can be had
    /// without waiting (the read cache of a shared store, or an in-memory store) and is
    /// valid and not yet due for refresh. `None` means: ask [`token`](Self::token).
    /// Read in place where the store allows: a request takes no reference to the
    /// token set. The clock is the coarse one while the refresh-ahead instant is
    /// more than a second away, unless the caller needs the time `precise`ly (to
    /// compare with when other credentials were obtained).
    pub(crate) fn token_now(&self, key: &AuthKey, precise: bool) -> Option<ServableToken> {
        let (config, id) = (&self.inner.config, self.inner.id);
        let servable = |tokens: &TokenSet| {
            let until = tokens.serve_until(id, |tokens| config.serve_until(tokens));
            let token = ServableToken {
                header: tokens.bearer_header(),
                generation: tokens.generation,
                now: None,
            };
            (token, until)
        };
        let (mut token, until) = match &self.inner.hot {
            Some(hot) => servable(&*hot.get(key)?),
            None => {
                // The expiry is checked below, by `serve_until`.
                let mut found = None;
                let store = &self.inner.store;
                if !store.peek_now_unchecked_expiry(key, &mut |t| found = t.map(servable)) {
                    return None;
                }
                found?
            }
        };
        let Some(until) = until else {
            return Some(token);
        };
        // The coarse clock decides while the instant is far; near it, the precise one.
        let coarse = (!precise).then(crate::limits::coarse_now).filter(|coarse| {
            coarse
                .checked_add(crate::limits::COARSE_GUARD)
                .is_some_and(|guarded| guarded < until)
        });
        let now = coarse.unwrap_or_else(SystemTime::now);
        token.now = Some(now);
        (now < until).then_some(token)
    }
}
