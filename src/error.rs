//! The error taxonomy callers match on.
//!
//! Layers return `tower::BoxError` (tower's convention for middleware that adds errors
//! of its own); the crate's errors inside it are [`Error`], reachable with
//! [`Error::find`] or `downcast_ref`, and the inner service's own errors stay boxed as
//! they were, never stringified.

use std::time::Duration;

use http::HeaderValue;

pub use crate::fault::{
    AuthorizationUrl, CapacityReached, ConfigError, ReauthReason, StoreError, StoreWiped,
    TransientReason,
};
use crate::oauth::grants::GrantError;
pub use crate::url_policy::UrlRefused;

/// An authorization failure a caller can act on.
///
/// `ReauthRequired` means the user must log in again; `Transient` means the
/// authorization server could not be reached or failed, the stored credentials are
/// kept, and retrying later can succeed. Neither contains any token.
///
/// ```
/// use tower_mcp_auth::{Error, ReauthReason};
///
/// fn next_step(err: &tower::BoxError) -> &'static str {
///     match Error::find(err.as_ref()) {
///         Some(Error::ReauthRequired { .. }) => "send the user to log in",
///         Some(Error::Transient { .. }) => "retry later, credentials are kept",
///         _ => "something else",
///     }
/// }
/// let err: tower::BoxError = Error::reauth(ReauthReason::NoCredentials).into();
/// assert_eq!(next_step(&err), "send the user to log in");
/// ```
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request carried no [`Principal`](crate::Principal) and the layer has no
    /// default one. The request was not sent.
    #[error("request has no Principal in its extensions and no default principal is configured")]
    MissingPrincipal,
    /// Silent refresh is impossible; an interactive authorization is needed.
    #[error("re-authorization required: {reason}")]
    ReauthRequired {
        /// Why.
        reason: ReauthReason,
        /// The `WWW-Authenticate` fields of the 401 that triggered the refresh, if any.
        www_authenticate: Vec<HeaderValue>,
    },
    /// The authorization server is unavailable or failing; credentials are kept.
    #[error("authorization server unavailable: {reason}")]
    Transient {
        /// What failed.
        reason: TransientReason,
        /// When trying again makes sense, if known (cooldown or `Retry-After`).
        retry_after: Option<Duration>,
        /// The `WWW-Authenticate` fields of the 401 that triggered the refresh, if any.
        www_authenticate: Vec<HeaderValue>,
    },
    /// The credential store failed.
    #[error("credential store failed")]
    Store(#[source] StoreError),
    /// Discovering the resource's or authorization server's metadata failed.
    #[error("discovery failed")]
    Discovery(#[source] crate::oauth::discovery::DiscoveryError),
    /// Registering a client at the authorization server failed.
    #[error("client registration failed")]
    Registration(#[source] crate::oauth::registration::RegistrationError),
    /// The user must authorize at `url` (an [`OAuthRetryLayer`](crate::OAuthRetryLayer)
    /// in return-early mode). The flow is persisted: show the URL; once the callback
    /// completes it, send the request again.
    #[error("authorization required (flow open until {expires_at:?})")]
    AuthorizationRequired {
        /// The authorization URL to show the user (its `Debug` leaves out the query,
        /// which carries the flow's `state`).
        url: AuthorizationUrl,
        /// When the flow expires.
        expires_at: std::time::SystemTime,
    },
    /// The interactive authorization ended without credentials (the user or server
    /// refused, the code exchange failed, or the URL could not be delivered).
    #[error("authorization failed: {reason}")]
    AuthorizationFailed {
        /// What the flow reported.
        reason: String,
    },
    /// No callback completed the authorization within the wait.
    #[error("no authorization within {waited:?}")]
    AuthorizationTimedOut {
        /// How long the request waited.
        waited: Duration,
    },
    /// The server still answers 403 `insufficient_scope` after the allowed number of
    /// step-up authorizations for this request.
    #[error("insufficient scope after {authorizations} authorizations (server asks for {scope:?})")]
    InsufficientScope {
        /// The scopes the last challenge asked for.
        scope: Vec<String>,
        /// How many authorizations this request made.
        authorizations: usize,
    },
    /// No On-Behalf-Of token could be had; the request was not sent.
    #[error("on-behalf-of: {0}")]
    Obo(#[source] crate::obo::OboError),
    /// A [`CircuitBreakerLayer`](crate::CircuitBreakerLayer) refused the call without
    /// sending it (or failed a half-open probe that timed out).
    #[error("circuit for {key} refused the call: {reason} (retry after {retry_after:?})")]
    CircuitOpen {
        /// The circuit's key.
        key: String,
        /// Why.
        reason: crate::breaker::Rejection,
        /// When the key admits calls again.
        retry_after: Duration,
    },
}

impl Error {
    /// A [`Error::ReauthRequired`] without a challenge.
    pub fn reauth(reason: ReauthReason) -> Self {
        Error::ReauthRequired {
            reason,
            www_authenticate: Vec::new(),
        }
    }

    pub(crate) fn transient(reason: TransientReason, retry_after: Option<Duration>) -> Self {
        Error::Transient {
            reason,
            retry_after,
            www_authenticate: Vec::new(),
        }
    }

    /// Finds this crate's [`Error`] in a boxed error or its source chain.
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Error> {
        let mut current = Some(err);
        while let Some(e) = current {
            if let Some(found) = e.downcast_ref::<Error>() {
                return Some(found);
            }
            current = e.source();
        }
        None
    }

    /// Whether a new interactive authorization is needed.
    pub fn is_reauth_required(&self) -> bool {
        matches!(self, Error::ReauthRequired { .. })
    }

    /// Whether the failure is transient (credentials kept; retry later).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Transient { .. })
    }

    /// The `WWW-Authenticate` fields of the 401 that led to this error.
    pub fn www_authenticate(&self) -> &[HeaderValue] {
        match self {
            Error::ReauthRequired {
                www_authenticate, ..
            }
            | Error::Transient {
                www_authenticate, ..
            } => www_authenticate,
            _ => &[],
        }
    }

    /// The Bearer challenge of the 401 that led to this error, parsed (RFC 6750 §3,
    /// RFC 9728 §5.1).
    pub fn bearer_challenge(&self) -> Option<crate::challenge::BearerChallenge> {
        let mut headers = http::HeaderMap::new();
        for value in self.www_authenticate() {
            headers.append(http::header::WWW_AUTHENTICATE, value.clone());
        }
        crate::challenge::BearerChallenge::from_headers(&headers)
    }

    pub(crate) fn with_challenge(mut self, challenge: Vec<HeaderValue>) -> Self {
        if let Error::ReauthRequired {
            www_authenticate, ..
        }
        | Error::Transient {
            www_authenticate, ..
        } = &mut self
        {
            *www_authenticate = challenge;
        }
        self
    }
}

/// A failed grant: the refresh token or assertion was refused (a new sign-in is
/// needed), or the server could not answer (try later).
impl From<GrantError> for Error {
    fn from(error: GrantError) -> Self {
        match error {
            GrantError::InvalidGrant => Error::reauth(ReauthReason::InvalidGrant),
            GrantError::ClientRejected(code) => {
                Error::reauth(ReauthReason::ClientRejected { code })
            }
            GrantError::OAuth(code) => Error::reauth(ReauthReason::OAuth { code }),
            GrantError::Transient {
                reason,
                retry_after,
            } => Error::transient(reason, retry_after),
        }
    }
}
