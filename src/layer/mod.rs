//! The Tower layers.

pub mod callback;
pub mod circuit_breaker;
pub mod oauth_retry;
pub mod obo;
pub mod silent_refresh;
