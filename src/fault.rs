//! The failure vocabulary every module shares, below all of them: why a refresh cannot
//! help ([`ReauthReason`]), why a call may succeed later ([`TransientReason`]), store,
//! capacity and configuration failures, and the redacting [`AuthorizationUrl`]. Each
//! module's own error type (discovery, registration, OBO, …) is built from these, and
//! the crate-level [`Error`](crate::Error) on top only converts.

use std::sync::Arc;
use std::time::Duration;

/// An authorization URL: shown to the user, kept out of logs. `Debug` prints only its
/// origin and path; the query holds the flow's `state` and PKCE challenge.
///
/// ```
/// use tower_mcp_auth::error::AuthorizationUrl;
///
/// let url = AuthorizationUrl::from("https://auth.example.com/authorize?state=s3cr3t".parse::<url::Url>().unwrap());
/// assert_eq!(url.as_str(), "https://auth.example.com/authorize?state=s3cr3t");
/// assert!(!format!("{url:?}").contains("s3cr3t"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct AuthorizationUrl(url::Url);

impl AuthorizationUrl {
    /// The URL.
    pub fn as_url(&self) -> &url::Url {
        &self.0
    }

    /// The URL as a string, query included: what the user's browser must open.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl From<url::Url> for AuthorizationUrl {
    fn from(url: url::Url) -> Self {
        Self(url)
    }
}

impl std::fmt::Debug for AuthorizationUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AuthorizationUrl({}{}?<redacted>)",
            self.0.origin().ascii_serialization(),
            self.0.path()
        )
    }
}

/// Why silent refresh cannot help.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReauthReason {
    /// No credentials are stored for this key.
    #[error("no credentials stored")]
    NoCredentials,
    /// The access token is expired or rejected and there is no refresh token.
    #[error("no refresh token")]
    NoRefreshToken,
    /// The authorization server rejected the refresh token (`invalid_grant`); it has
    /// been retired.
    #[error("refresh token rejected (invalid_grant)")]
    InvalidGrant,
    /// The authorization server rejected the client (`invalid_client`,
    /// `unauthorized_client`). Stored tokens are kept.
    #[error("client rejected ({code})")]
    ClientRejected {
        /// The OAuth error code.
        code: String,
    },
    /// The token endpoint answered a refresh with another OAuth error.
    #[error("refresh failed ({code})")]
    OAuth {
        /// The OAuth error code.
        code: String,
    },
}

/// What went wrong talking to the authorization server.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransientReason {
    /// Connecting, sending or receiving failed.
    #[error("network error: {0}")]
    Network(Arc<dyn std::error::Error + Send + Sync>),
    /// The redemption did not finish within its timeout.
    #[error("refresh timed out after {0:?}")]
    Timeout(Duration),
    /// The server answered with a 5xx status.
    #[error("server error (HTTP {0})")]
    ServerError(u16),
    /// The server answered 429.
    #[error("rate limited (HTTP 429)")]
    RateLimited,
    /// The response was not a well-formed token response.
    #[error("malformed token endpoint response: {0}")]
    InvalidResponse(String),
    /// A recent attempt failed; the key is cooling down and no request was sent.
    #[error("cooling down after a failed refresh ({0})")]
    CoolingDown(Box<TransientReason>),
    /// The redemption task ended without a result (the runtime shut down).
    #[error("refresh abandoned")]
    Abandoned,
    /// The redemption or exchange task panicked. The failure was recorded (the key
    /// cools down, the flow fails) so it cannot turn into a redemption loop.
    #[error("internal error: the task panicked")]
    Panicked,
}

/// A credential store failure.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(Arc<dyn std::error::Error + Send + Sync>);

impl StoreError {
    /// Wraps a backend error.
    pub fn new(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(source))
    }

    /// The [`CapacityReached`] behind this error, if the store refused a new key
    /// because it is full.
    pub fn capacity_reached(&self) -> Option<&CapacityReached> {
        self.0.downcast_ref::<CapacityReached>()
    }

    /// The [`StoreWiped`] behind this error, if the store lost its data (e.g. a Redis
    /// restarted without persistence) since this process first used it.
    pub fn wiped(&self) -> Option<&StoreWiped> {
        self.0.downcast_ref::<StoreWiped>()
    }
}

/// A shared store lost everything it held since this process first used it: its
/// epoch record (written once, at the store's first use) is gone. Credentials, pending
/// flows and client registrations are lost; users sign in again. Reported once per
/// process and loss, as the error of the call that found it, then the store is used
/// again (empty, its counters above every value issued before).
///
/// ```
/// use tower_mcp_auth::{error::StoreError, error::StoreWiped};
///
/// let error = StoreError::new(StoreWiped::new("a1b2"));
/// assert!(error.wiped().is_some());
/// assert!(error.to_string().contains("lost its data"));
/// ```
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "the credential store lost its data (its epoch {lost} is gone): every credential, pending sign-in and client registration is lost and users must sign in again; give the store persistence (Redis: appendonly yes)"
)]
pub struct StoreWiped {
    lost: String,
}

impl StoreWiped {
    /// The loss of the store whose epoch was `lost`.
    pub fn new(lost: impl Into<String>) -> Self {
        Self { lost: lost.into() }
    }
}

/// A bounded in-process structure is full and refused a new entry instead of evicting
/// one: credentials are never dropped silently to make room for new principals.
///
/// ```
/// use tower_mcp_auth::{AuthKey, Principal, Secret, ServerBinding, TokenSet};
/// use tower_mcp_auth::store::{CredentialStore, MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = MemoryStore::builder().max_capacity(1).build();
/// let binding = ServerBinding::public_client("https://mcp.example.com/mcp", "https://as.example.com/token", "c").unwrap();
/// let key = |user| AuthKey::new(&Principal::new("acme", user), binding.id());
/// store.compare_and_swap(&key("alice"), None, TokenSet::new(Secret::new("a"))).await.unwrap();
/// let refused = store
///     .compare_and_swap(&key("mallory"), None, TokenSet::new(Secret::new("m")))
///     .await
///     .unwrap_err();
/// assert_eq!(refused.capacity_reached().map(|full| full.max), Some(1));
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} is full ({max} entries); new entries are refused")]
#[non_exhaustive]
pub struct CapacityReached {
    /// What is full.
    pub what: &'static str,
    /// Its configured maximum.
    pub max: u64,
}

/// A configuration value was rejected when building a binding or layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A URL did not parse.
    #[error("{field}: invalid URL")]
    InvalidUrl {
        /// Which setting.
        field: &'static str,
        /// The parse error.
        #[source]
        source: url::ParseError,
    },
    /// A URL is not an absolute http(s) URL with a host.
    #[error("{field}: not an absolute http(s) URL")]
    UnsupportedUrl {
        /// Which setting.
        field: &'static str,
    },
    /// A configured URL is refused by the [`UrlPolicy`](crate::UrlPolicy) in force (the
    /// message names the opt-in that allows it).
    #[error("{field}: {source}")]
    Refused {
        /// Which setting.
        field: &'static str,
        /// Why.
        source: crate::url_policy::UrlRefused,
    },
}
