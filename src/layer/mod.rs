//! The Tower layers.

/// `get_ref`, `get_mut` and `into_inner` for a service that keeps its inner service `S`
/// in its `inner` field (the accessors every tower-http service has).
macro_rules! inner_service_accessors {
    () => {
        /// The inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Unwraps the inner service.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}
pub(crate) use inner_service_accessors;

pub use crate::replay::{DEFAULT_MAX_REPLAY_BODY, ReplayBody, RequestBody};

pub mod callback;
pub mod circuit_breaker;
mod hand_back;
pub mod oauth_retry;
pub mod obo;
pub mod retry;
pub mod silent_refresh;

/// The request's [`Principal`](crate::Principal), or `default` inserted into the request
/// when it names none, so that every inner layer sees the same principal.
pub(crate) fn with_default_principal<B>(
    request: &mut http::Request<B>,
    default: Option<&crate::Principal>,
) -> Option<crate::Principal> {
    principal_or_default(request, default).cloned()
}

/// [`with_default_principal`], borrowed from the request (no clone on the hot path).
pub(crate) fn principal_or_default<'r, B>(
    request: &'r mut http::Request<B>,
    default: Option<&crate::Principal>,
) -> Option<&'r crate::Principal> {
    // One lookup either way.
    match default {
        Some(default) => Some(
            request
                .extensions_mut()
                .get_or_insert_with(|| default.clone()),
        ),
        None => crate::Principal::from_extensions(request.extensions()),
    }
}
