//! What an On-Behalf-Of exchange is given: the user's assertion, the exchange's
//! configuration, and the ways it fails ([`OboError`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use crate::oauth::exchange::{ClientAuth, OboGrant};
use crate::token::Secret;

/// The user's incoming token, put in a request's extensions for
/// [`OboHeaderLayer`](crate::OboHeaderLayer). It is exchanged, never forwarded.
///
/// ```
/// use tower_mcp_auth::UserAssertion;
///
/// let assertion = UserAssertion::new("eyJhbGciOi...");
/// assert_eq!(format!("{assertion:?}"), "UserAssertion(<redacted>)");
/// ```
#[derive(Clone)]
pub struct UserAssertion(Secret);

impl UserAssertion {
    /// Wraps the user's token.
    pub fn new(token: impl Into<Arc<str>>) -> Self {
        Self(Secret::new(token))
    }

    /// The token.
    pub fn secret(&self) -> &Secret {
        &self.0
    }
}

impl fmt::Debug for UserAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UserAssertion(<redacted>)")
    }
}

/// Why an On-Behalf-Of token could not be had. The request was not sent.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OboError {
    /// The request carried no [`UserAssertion`].
    #[error("no user assertion in the request's extensions")]
    MissingAssertion,
    /// The assertion is a JWT whose `exp` has passed.
    #[error("the user assertion has expired")]
    AssertionExpired,
    /// The assertion is a JWT whose `exp` is not a usable time (negative, fractional,
    /// or past the year 9999). Nothing was exchanged.
    #[error("the user assertion has an invalid expiry")]
    InvalidAssertion,
    /// The identity provider refused the exchange (`invalid_grant`, `invalid_scope`,
    /// `unauthorized_client`, `interaction_required`, ...). Not retried.
    #[error("exchange rejected ({code})")]
    Rejected {
        /// The OAuth error code.
        code: String,
        /// The provider's description, if any.
        description: Option<String>,
        /// The claims challenge (`interaction_required` with Conditional Access), to pass
        /// to the user's client, e.g. in a 401's `WWW-Authenticate`.
        claims: Option<String>,
    },
    /// The MCP server refused a freshly exchanged token too.
    #[error("the resource server rejected a freshly exchanged token")]
    RejectedByResource,
}

/// What to exchange the assertion for, where, and as which client.
///
/// ```
/// use tower_mcp_auth::{obo::ClientAuth, obo::OboConfig, obo::OboGrant, Secret};
///
/// let config = OboConfig::new(
///     "https://login.microsoftonline.com/tenant-id/oauth2/v2.0/token".parse().unwrap(),
///     "middle-tier-client-id",
///     ClientAuth::SecretPost(Secret::new("s3cr3t")),
///     OboGrant::EntraOnBehalfOf,
/// )
/// .with_scopes(["api://mcp-server/.default"]);
/// assert!(!format!("{config:?}").contains("s3cr3t"));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OboConfig {
    /// The identity provider's token endpoint.
    pub token_endpoint: Url,
    /// This (middle-tier) client's id.
    pub client_id: String,
    /// How it authenticates.
    pub client_auth: ClientAuth,
    /// The grant.
    pub grant: OboGrant,
    /// Scopes asked for (kept sorted).
    pub scopes: Vec<String>,
    /// RFC 8693 `audience`.
    pub audience: Option<String>,
    /// RFC 8707 / RFC 8693 `resource`.
    pub resource: Option<String>,
    /// RFC 8693 `actor_token` and its type.
    pub actor_token: Option<(Secret, String)>,
    /// How long before expiry a cached token stops being used (default 30 s).
    pub skew: Duration,
    /// Bound on one exchange, retry included (default 30 s).
    pub timeout: Duration,
    /// Wait before the one retry of a transient failure when the server gave no
    /// `Retry-After` (default 250 ms); a `Retry-After` is honoured up to 5 s.
    pub retry_backoff: Duration,
    /// A second exchange of this one's result (see [`then`](Self::then)).
    pub next: Option<Box<OboConfig>>,
}

impl OboConfig {
    /// A configuration with no scopes, audience or resource.
    pub fn new(
        token_endpoint: Url,
        client_id: impl Into<String>,
        client_auth: ClientAuth,
        grant: OboGrant,
    ) -> Self {
        Self {
            token_endpoint,
            client_id: client_id.into(),
            client_auth,
            grant,
            scopes: Vec::new(),
            audience: None,
            resource: None,
            actor_token: None,
            skew: Duration::from_secs(30),
            timeout: Duration::from_secs(30),
            retry_backoff: Duration::from_millis(250),
            next: None,
        }
    }

    /// Exchanges this exchange's result once more, as configured by `next`: e.g.
    /// cross-app access (SEP-990), where the identity provider turns the user's ID
    /// token into an ID-JAG ([`OboGrant::id_jag`]) and the MCP server's authorization
    /// server turns that into an access token ([`OboGrant::JwtBearer`]). The chain is
    /// cached, single-flight and retried as one exchange.
    ///
    /// ```
    /// use tower_mcp_auth::{obo::ClientAuth, obo::OboConfig, obo::OboGrant, Secret};
    ///
    /// let config = OboConfig::new(
    ///     "https://idp.example.com/token".parse().unwrap(),
    ///     "idp-client",
    ///     ClientAuth::None,
    ///     OboGrant::id_jag(),
    /// )
    /// .with_audience("https://auth.mcp.example.com")
    /// .with_resource("https://mcp.example.com/mcp")
    /// .then(OboConfig::new(
    ///     "https://auth.mcp.example.com/token".parse().unwrap(),
    ///     "mcp-client",
    ///     ClientAuth::SecretBasic(Secret::new("s3cr3t")),
    ///     OboGrant::JwtBearer,
    /// ));
    /// assert!(config.next.is_some());
    /// ```
    pub fn then(mut self, next: OboConfig) -> Self {
        self.next = Some(Box::new(next));
        self
    }

    /// Asks for `scopes`.
    pub fn with_scopes(mut self, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self.scopes.sort();
        self.scopes.dedup();
        self
    }

    /// Sets the RFC 8693 `audience`.
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Sets `resource`.
    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    /// Sends an RFC 8693 `actor_token` of `token_type`.
    pub fn with_actor_token(mut self, token: Secret, token_type: impl Into<String>) -> Self {
        self.actor_token = Some((token, token_type.into()));
        self
    }

    /// How long before expiry a cached token stops being used.
    pub fn with_skew(mut self, skew: Duration) -> Self {
        self.skew = skew;
        self
    }

    /// The wait before retrying a transient failure without `Retry-After`.
    pub fn with_retry_backoff(mut self, backoff: Duration) -> Self {
        self.retry_backoff = backoff;
        self
    }
}
