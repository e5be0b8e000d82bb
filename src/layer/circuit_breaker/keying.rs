//! Which circuit a request belongs to.

use std::fmt;
use std::sync::Arc;

use http::{Extensions, Uri};

use crate::key::Principal;

/// Computes a circuit key from a request's URI and extensions.
pub type KeyFn = Arc<dyn Fn(&Uri, &Extensions) -> String + Send + Sync>;

/// How requests are grouped into circuits.
///
/// ```
/// use std::sync::Arc;
/// use tower_mcp_auth::{BreakerConfig, layer::circuit_breaker::BreakerKeying, CircuitBreakerLayer};
///
/// // One circuit per host, whatever the port or scheme.
/// let by_host = BreakerKeying::Custom(Arc::new(|uri: &http::Uri, _: &http::Extensions| {
///     uri.host().unwrap_or_default().to_owned()
/// }));
/// let layer = CircuitBreakerLayer::new(BreakerConfig::default()).with_keying(by_host);
/// # drop(layer);
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum BreakerKeying {
    /// One circuit per upstream origin (`scheme://host:port`).
    #[default]
    Origin,
    /// One circuit per origin and [`Principal`], so one user's failures (a revoked
    /// grant, a bad credential) never open the circuit for everyone.
    OriginAndPrincipal,
    /// A key of your own.
    Custom(KeyFn),
}

impl fmt::Debug for BreakerKeying {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BreakerKeying::Origin => f.write_str("Origin"),
            BreakerKeying::OriginAndPrincipal => f.write_str("OriginAndPrincipal"),
            BreakerKeying::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl BreakerKeying {
    pub(super) fn key(&self, uri: &Uri, extensions: &Extensions) -> String {
        let origin = || {
            let scheme = uri.scheme_str().unwrap_or("http");
            let host = uri.host().unwrap_or("");
            let port = uri
                .port_u16()
                .unwrap_or(if scheme == "https" { 443 } else { 80 });
            format!("{scheme}://{host}:{port}")
        };
        match self {
            BreakerKeying::Origin => origin(),
            BreakerKeying::OriginAndPrincipal => match Principal::from_extensions(extensions) {
                Some(p) => format!("{} {}:{}", origin(), p.tenant(), p.subject()),
                None => origin(),
            },
            BreakerKeying::Custom(key) => key(uri, extensions),
        }
    }
}
