//! OAuth protocol code. Knows nothing of Tower.

pub(crate) mod grants;
