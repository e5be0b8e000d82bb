//! The Tower layers.

pub mod circuit_breaker;
pub mod silent_refresh;
