//! For the HTTP server in front of a stack (an app or proxy that forwards its users'
//! MCP requests): who the caller is, from a header a trusted front proxy sets
//! ([`PrincipalFromHeaderLayer`]), and the stack's errors as answers an MCP client
//! understands ([`error_response`], feature `axum`).

mod principal;
#[cfg(feature = "axum")]
mod response;

pub use principal::{PrincipalFromHeader, PrincipalFromHeaderLayer, ResponseFuture};
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use response::{AUTHORIZATION_REQUIRED, error_response};
