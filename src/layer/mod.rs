//! The Tower layers.

pub mod callback;
pub mod circuit_breaker;
mod hand_back;
pub mod oauth_retry;
pub mod obo;
pub mod silent_refresh;

/// The request's [`Principal`](crate::Principal), or `default` inserted into the request
/// when it names none, so that every inner layer sees the same principal.
pub(crate) fn with_default_principal<B>(
    request: &mut http::Request<B>,
    default: Option<&crate::Principal>,
) -> Option<crate::Principal> {
    if let Some(principal) = crate::Principal::from_extensions(request.extensions()) {
        return Some(principal.clone());
    }
    let principal = default?.clone();
    request.extensions_mut().insert(principal.clone());
    Some(principal)
}
