//! Composable [Tower](https://docs.rs/tower) layers that give any MCP (Model Context
//! Protocol) client speaking HTTP production-grade OAuth.
//!
//! [`SilentRefreshLayer`] attaches the stored bearer token to every request for an MCP
//! server, refreshes it ahead of expiry, and recovers from a 401 with exactly one
//! refresh-token redemption per rejected token, however many requests saw the 401, and
//! one replay. The redemption is run by a [`RefreshCoordinator`]: keyed single-flight,
//! detached from the callers (a cancelled caller never cancels or repeats it), bounded
//! by a timeout, written back by compare-and-swap so a late result never overwrites
//! newer credentials, and with failures classified (`invalid_grant` retires the refresh
//! token; outages keep credentials and cool the key down).
//!
//! [`OAuthRetryLayer`] handles what refresh cannot: on a 401 without usable
//! credentials it has an [`Authorizer`] run discovery (MCP 2025-11-25, with the
//! 2025-03-26 fallbacks), client registration (pre-registered, Client ID Metadata
//! Document, dynamic) and a PKCE flow persisted before its URL is shown, then either
//! returns [`Error::AuthorizationRequired`] for a UI or hands the URL to an
//! [`AuthorizationHandler`](layer::oauth_retry::AuthorizationHandler), waits for the
//! callback ([`CallbackService`](layer::callback::CallbackService)) and replays
//! the request; a 403 `insufficient_scope` steps up, a bounded number of times.
//!
//! [`OboHeaderLayer`] serves server-side clients acting as their users: the user's
//! token ([`UserAssertion`]) is exchanged On-Behalf-Of (Entra jwt-bearer, RFC 8693,
//! cross-app access) by an [`OboExchanger`] — cached, single-flight, fail-closed — and
//! never forwarded.
//!
//! [`CircuitBreakerLayer`] keeps a circuit per upstream (or per upstream and user): it
//! fails fast while an upstream is down, lets one probe at a time find out when it is
//! back, throttles on 429, and cools down keys caught in a reconnect storm.
//!
//! One stack serves many users: each request carries its [`Principal`] (tenant and
//! user) in its extensions, and all state is keyed by principal and server binding.
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_mcp_auth::store::{CredentialStore, MemoryStore};
//! use tower_mcp_auth::{AuthKey, Principal, RefreshCoordinator, Secret, ServerBinding, SilentRefreshLayer, TokenSet};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let binding = ServerBinding::public_client(
//!     "https://mcp.example.com/mcp",
//!     "https://auth.example.com/token",
//!     "my-client",
//! )?;
//! let store = Arc::new(MemoryStore::new());
//!
//! // Tokens from an earlier login, stored for alice.
//! let alice = Principal::new("acme", "alice");
//! let key = AuthKey::new(&alice, binding.id());
//! store.compare_and_swap(&key, None, TokenSet::new(Secret::new("alice-token"))).await?;
//!
//! let client = ServiceBuilder::new()
//!     .layer(SilentRefreshLayer::new(RefreshCoordinator::new(store), binding))
//!     .service_fn(|request: http::Request<tower_mcp_auth::ReplayBody>| async move {
//!         assert_eq!(request.headers()["authorization"], "Bearer alice-token");
//!         Ok::<_, tower::BoxError>(http::Response::new(()))
//!     });
//!
//! let mut request = http::Request::post("https://mcp.example.com/mcp").body(Full::new(Bytes::new()))?;
//! request.extensions_mut().insert(alice);
//! client.oneshot(request).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Where things are
//!
//! The root holds the four layers and the types every stack names. The rest lives in
//! modules: [`layer`] (each layer's module, the callback endpoint, the retry and breaker
//! helpers), [`oauth`] (discovery, registration, flows, the [`Authorizer`]), [`obo`]
//! (On-Behalf-Of grants), [`refresh`], [`store`] (memory, SQLite, Redis, sealing),
//! [`breaker`], [`binding`], [`client`] (the HTTP clients under the stack), [`server`]
//! (for the app in front: the caller from a trusted header, errors as answers),
//! [`error`] (every error type) and [`metrics`].
//!
//! # Features
//!
//! * `reqwest` (default): [`client::ReqwestService`], and reqwest as the client of
//!   authorization-server calls; without it the crate runs on hyper alone.
//! * `rmcp`: an rmcp `StreamableHttpClient` over any stack of these layers (`rmcp`).
//! * `metrics`: counters through the `metrics` facade ([`metrics`]).
//! * `axum`: `layer::callback::callback_router`, the OAuth start and callback endpoints
//!   as an axum `Router`, and `server::error_response`.
//! * `sqlite`: `store::SqliteStore`, one file shared by the processes of a machine.
//! * `redis`: `store::RedisStore`, credentials, leases, flows and registrations in Redis
//!   for replicas on several machines.
//! * `fuzzing`: `fuzzing`, the parsers of untrusted input as fuzz targets.
//! * `test-util`: real loopback fixtures — an OAuth authorization server with rotating
//!   refresh tokens and reuse detection, and an MCP server over Streamable HTTP — for
//!   tests, benchmarks and examples (`testing`).
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]
#![deny(unsafe_code)]

pub mod binding;
pub mod breaker;
mod challenge;
pub mod client;
mod crypto;
pub mod error;
mod fault;
#[cfg(feature = "fuzzing")]
#[cfg_attr(docsrs, doc(cfg(feature = "fuzzing")))]
pub mod fuzzing;
mod http_client;
mod key;
pub mod layer;
mod limits;
pub mod metrics;
pub mod oauth;
pub mod obo;
pub mod refresh;
mod replay;
pub mod server;

/// The README's code blocks, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The code blocks of the guides in `docs/`, compiled as doctests too.
#[cfg(doctest)]
#[doc = include_str!("../docs/library.md")]
#[doc = include_str!("../docs/stores.md")]
#[doc = include_str!("../docs/security.md")]
pub struct GuideDoctests;
#[cfg(feature = "rmcp")]
pub mod rmcp;
mod single_flight;
pub mod store;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;
mod token;
mod url_policy;

/// Synchronisation primitives of the single-flight core (swapped for loom's in its
/// model-checking test).
mod sync {
    pub(crate) use std::sync::{Arc, Mutex, MutexGuard};
}

pub use binding::ServerBinding;
pub use breaker::BreakerConfig;
pub use error::{Error, ReauthReason, TransientReason};
pub use http_client::AuthHttpClient;
pub use key::{AuthKey, Principal};
#[doc(inline)]
pub use layer::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
#[doc(inline)]
pub use layer::oauth_retry::{OAuthRetry, OAuthRetryLayer};
#[doc(inline)]
pub use layer::obo::{OboHeader, OboHeaderLayer};
#[doc(inline)]
pub use layer::silent_refresh::{SilentRefresh, SilentRefreshLayer};
pub use oauth::Authorizer;
pub use obo::{OboExchanger, UserAssertion};
pub use refresh::{RefreshConfig, RefreshCoordinator};
pub use replay::ReplayBody;
pub use token::{Secret, TokenSet};
pub use url_policy::UrlPolicy;
