//! The `mcp-auth-proxy` gateway (feature `proxy`): MCP servers behind one address,
//! each at `/{name}/mcp`, with auth to the upstream added transparently.
//!
//! This version forwards Streamable HTTP (POST, GET, DELETE; SSE streamed event by
//! event) for upstreams that need no credentials (`auth = "none"`), a static header
//! from the environment (`auth = "header"`), or each user's own OAuth credentials
//! (`auth = "oauth"`: a user without them gets a sign-in link as the JSON-RPC answer,
//! MCP's `-32042` URL elicitation error where the client declared it), with the
//! caller's identity from a header set by a trusted front proxy. The caller's own
//! `Authorization` is never forwarded.
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use tower_mcp_auth::proxy::{Gateway, ProxyConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ProxyConfig::load("proxy.toml".as_ref())?;
//! let app = Gateway::new(&config)?.router();
//! let listener = tokio::net::TcpListener::bind(config.listen).await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(())
//! # }
//! ```

mod config;
mod connect;
mod connections;
mod edge;
mod jwt;
mod login;
mod prometheus;
mod server;
mod sessions;
pub mod stdio;

pub use config::{
    ConfigError, DEFAULT_MAX_BODY_BYTES, IdentityConfig, LoginConfig, MAX_WAIT_SECONDS,
    PreRegistered, ProxyConfig, StoreConfig, UpstreamAuth, UpstreamConfig,
};
pub use jwt::{DEFAULT_KEYS_MAX_STALE, DEFAULT_KEYS_REFRESH, JwtIdentity};
pub use prometheus::{PrometheusHandle, PrometheusRecorder};
pub use server::{Gateway, GatewayError};
