//! [`GatewayError`]: why a gateway could not be built.

/// Why the gateway could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] tower_mcp_auth::error::StoreError),
    /// The HTTP client could not be built.
    #[error(transparent)]
    Client(#[from] tower_mcp_auth::client::ClientBuildError),
    /// Browser sign-in (an `oauth` upstream, `login_client_id`) without `cookie_key`:
    /// cookies signed with no key could be forged by anyone.
    #[error("browser sign-in (an `oauth` upstream or `login_client_id`) needs `cookie_key`")]
    MissingCookieKey,
    /// An `oauth` upstream could not be set up (its URL refused by the URL policy, ...).
    #[error("upstream `{upstream}`: {source}")]
    Upstream {
        /// The upstream's name.
        upstream: String,
        /// What was wrong.
        source: tower_mcp_auth::error::ConfigError,
    },
}
