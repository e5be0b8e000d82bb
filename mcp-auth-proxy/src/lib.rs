//! `mcp-auth-proxy`, built on [`tower_mcp_auth`]: a gateway that puts MCP servers
//! behind one address, each at `/{name}/mcp`, with auth to the upstream added
//! transparently ([`Gateway`]), and a bridge that gives stdio-only MCP hosts a remote
//! server with OAuth ([`bridge`]).
//!
//! The gateway forwards Streamable HTTP (POST, GET, DELETE; SSE streamed event by
//! event) for upstreams that need no credentials (`auth = "none"`), a static header
//! from the environment (`auth = "header"`), or each user's own OAuth credentials
//! (`auth = "oauth"`: a user without them gets a sign-in link as the JSON-RPC answer,
//! MCP's `-32042` URL elicitation error where the client declared it), with the
//! caller's identity from a header set by a trusted front proxy. The caller's own
//! `Authorization` is never forwarded.
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use mcp_auth_proxy::{Gateway, ProxyConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ProxyConfig::load("proxy.toml".as_ref())?;
//! let app = Gateway::new(&config)?.router();
//! let listener = tokio::net::TcpListener::bind(config.listen).await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]
#![deny(unsafe_code)]

pub mod bridge;
mod crypto;
mod gateway;

pub use gateway::*;
