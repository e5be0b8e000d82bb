//! The Tower layers.

pub mod callback;
pub mod circuit_breaker;
pub mod silent_refresh;
