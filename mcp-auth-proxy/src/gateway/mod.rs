//! The gateway (`mcp-auth-proxy serve`): routing, forwarding, identity, the edge's
//! checks, the browser pages and the configuration they read.

mod config;
mod connect;
mod edge;
mod exposition;
mod jwt;
mod login;
mod server;
mod sessions;
mod telemetry;

pub use config::{
    ConfigError, DEFAULT_MAX_BODY_BYTES, IdentityConfig, LoginConfig, MAX_WAIT_SECONDS,
    PreRegistered, ProxyConfig, StoreConfig, UpstreamAuth, UpstreamConfig,
};
pub use exposition::{MetricsExposition, MetricsRecorder};
pub use jwt::{DEFAULT_KEYS_MAX_STALE, DEFAULT_KEYS_REFRESH, JwtIdentity};
pub use server::{Gateway, GatewayError};
pub use telemetry::open_streams;
