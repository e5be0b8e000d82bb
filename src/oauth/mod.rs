//! OAuth protocol code. Knows nothing of Tower.

pub(crate) mod authorize;
pub(crate) mod callback;
pub(crate) mod discovery;
pub(crate) mod exchange;
pub(crate) mod flow;
pub(crate) mod grants;
pub(crate) mod registration;
pub(crate) mod scopes;
