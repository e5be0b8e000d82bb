//! The Tower layers.

pub mod silent_refresh;
