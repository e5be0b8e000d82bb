//! Token sets, secrets and credential generations.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A secret string (access token, refresh token, client secret) whose `Debug` and
/// `Display` never show the value.
///
/// Cloning is cheap: the value is shared.
///
/// ```
/// use tower_mcp_auth::Secret;
///
/// let secret = Secret::new("s3cr3t");
/// assert_eq!(format!("{secret:?}"), "Secret(\"[redacted]\")");
/// assert_eq!(secret.expose(), "s3cr3t");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }

    /// The secret value itself. Every call site is a place where the secret leaves
    /// its wrapper, so keep them few.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(\"[redacted]\")")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The generation of a stored credential.
///
/// Every write to a [`CredentialStore`](crate::store::CredentialStore) gets a new,
/// strictly larger generation. Writers say which generation they expect to replace
/// (compare-and-swap), so a late refresh can never overwrite a newer credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Generation(pub u64);

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{}", self.0)
    }
}

/// The tokens held for one [`AuthKey`](crate::AuthKey).
///
/// `expires_at` is absolute, so a stored token set means the same thing whenever and
/// wherever it is read. `generation` is assigned by the store on write.
///
/// ```
/// use std::time::Duration;
/// use tower_mcp_auth::{Secret, TokenSet};
///
/// let tokens = TokenSet::new(Secret::new("at"))
///     .with_refresh_token(Secret::new("rt"))
///     .with_expires_in(Duration::from_secs(3600))
///     .with_scope("tools.read");
/// assert!(tokens.is_usable());
/// // Debug shows the shape, never the secrets.
/// assert!(!format!("{tokens:?}").contains("rt\""));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSet {
    /// The bearer token sent to the resource server.
    pub access_token: Secret,
    /// The refresh token, if the authorization server issued one.
    pub refresh_token: Option<Secret>,
    /// The scope granted, space separated, as the authorization server reported it.
    pub scope: Option<String>,
    /// When the access token was obtained.
    pub obtained_at: SystemTime,
    /// When the access token expires; `None` when the server did not say.
    pub expires_at: Option<SystemTime>,
    /// Assigned by the store on every write.
    pub generation: Generation,
    /// Values derived from the token set on first use and shared by every request
    /// that carries it: the header, how long it may be served without a check.
    pub(crate) derived: Derived,
}

/// One stored token set told apart from any other of its key: its generation and when
/// it was obtained (a generation alone could repeat in a store that starts again after
/// a delete).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TokenStamp {
    pub(crate) generation: Generation,
    pub(crate) obtained_at: SystemTime,
}

/// What [`TokenSet::serve_until`] was computed from.
/// The part of a [`RefreshConfig`](crate::RefreshConfig) that decides until when a token set is served
/// without a look at the store: the key of the answer cached in the token set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ServeRule {
    pub(crate) min_margin: Duration,
    pub(crate) max_margin: Duration,
    pub(crate) clock_skew: Duration,
}

type ServeInputs = (ServeRule, Option<SystemTime>, SystemTime, Generation);

/// Lazily derived values of a [`TokenSet`]: the sensitive `Authorization` header, and
/// until when a refresh coordinator may serve it without the slow path. Equal to every
/// other (everything in it is derived), shown in `Debug` as `..`.
#[derive(Clone, Default)]
pub(crate) struct Derived {
    bearer: std::sync::OnceLock<(Secret, Option<http::HeaderValue>)>,
    /// ((serve rule, expiry, obtained, generation), serve until; `None`: no expiry).
    serve_until: std::sync::OnceLock<(ServeInputs, Option<SystemTime>)>,
}

impl PartialEq for Derived {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Derived {}

impl fmt::Debug for Derived {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("..")
    }
}

impl TokenSet {
    /// `Bearer <access token>` as a sensitive header value (built once per token set;
    /// `None` if the token is not a valid header value).
    pub(crate) fn bearer_header(&self) -> Option<http::HeaderValue> {
        let build = || {
            let value = format!("Bearer {}", self.access_token.expose());
            let mut value = http::HeaderValue::try_from(value).ok()?;
            value.set_sensitive(true);
            Some(value)
        };
        let (built_for, header) = self
            .derived
            .bearer
            .get_or_init(|| (self.access_token.clone(), build()));
        // `access_token` is a public field: a header built for another value is stale.
        if Arc::ptr_eq(&built_for.0, &self.access_token.0) {
            header.clone()
        } else {
            build()
        }
    }

    /// What tells this token set from any other stored for its key.
    pub(crate) fn stamp(&self) -> TokenStamp {
        TokenStamp {
            generation: self.generation,
            obtained_at: self.obtained_at,
        }
    }

    /// Until when a coordinator with serve rule `rule` may serve this token set
    /// without looking further, computed once by `compute` (`None`: no expiry). Keyed
    /// by the rule, not by the coordinator: several coordinators over one store (a
    /// layer per server, per stack) share the answer instead of recomputing it per
    /// request. The fields are public: an answer computed for other field values is
    /// recomputed, never reused.
    pub(crate) fn serve_until(
        &self,
        rule: ServeRule,
        compute: impl Fn(&TokenSet) -> Option<SystemTime>,
    ) -> Option<SystemTime> {
        let inputs = (rule, self.expires_at, self.obtained_at, self.generation);
        let (cached_for, until) = self
            .derived
            .serve_until
            .get_or_init(|| (inputs, compute(self)));
        if *cached_for == inputs {
            *until
        } else {
            compute(self)
        }
    }

    /// A token set holding only an access token, obtained now, with no known expiry.
    pub fn new(access_token: Secret) -> Self {
        Self {
            access_token,
            refresh_token: None,
            scope: None,
            obtained_at: SystemTime::now(),
            expires_at: None,
            generation: Generation(0),
            derived: Derived::default(),
        }
    }

    /// Sets the refresh token.
    pub fn with_refresh_token(mut self, refresh_token: Secret) -> Self {
        self.refresh_token = Some(refresh_token);
        self
    }

    /// Sets the expiry relative to `obtained_at` (clamped to [`MAX_LIFETIME`](crate::refresh::MAX_LIFETIME)).
    pub fn with_expires_in(mut self, expires_in: Duration) -> Self {
        self.expires_at = Some(crate::limits::system_after(self.obtained_at, expires_in));
        self
    }

    /// Sets the granted scope.
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// Whether the access token has not expired yet.
    pub fn is_usable(&self) -> bool {
        self.is_usable_at(SystemTime::now())
    }

    pub(crate) fn is_usable_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }

    /// The lifetime the server granted, if it gave an expiry.
    pub(crate) fn lifetime(&self) -> Option<Duration> {
        self.expires_at
            .map(|at| at.duration_since(self.obtained_at).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let tokens =
            TokenSet::new(Secret::new("access-xyz")).with_refresh_token(Secret::new("refresh-xyz"));
        let debug = format!("{tokens:?} {}", tokens.access_token);
        assert!(!debug.contains("access-xyz"), "{debug}");
        assert!(!debug.contains("refresh-xyz"), "{debug}");
    }

    #[test]
    fn expiry_is_absolute() {
        let tokens = TokenSet::new(Secret::new("a")).with_expires_in(Duration::from_secs(10));
        assert_eq!(tokens.lifetime(), Some(Duration::from_secs(10)));
        assert!(tokens.is_usable_at(tokens.obtained_at + Duration::from_secs(9)));
        assert!(!tokens.is_usable_at(tokens.obtained_at + Duration::from_secs(10)));
    }
}
