//! The Tower layers.

pub mod silent_refresh;
pub mod circuit_breaker;
