//! Why an authorization is started: the server's challenge (scopes, resource metadata)
//! and the scopes a step-up must add.

use super::*;

/// Why an authorization is being started.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct AuthorizationCause {
    /// The resource server's Bearer challenge (401, or 403 `insufficient_scope`).
    pub challenge: Option<BearerChallenge>,
    /// Scopes to keep from an earlier authorization (step-up asks for the union).
    pub previous_scopes: Vec<String>,
    /// Whether the authorization server rejected the current client
    /// (`invalid_client`, `unauthorized_client`): a reused dynamic registration is
    /// dropped and the client registers anew.
    pub client_rejected: bool,
}

impl AuthorizationCause {
    /// A cause from a challenge.
    pub fn challenge(challenge: Option<BearerChallenge>) -> Self {
        Self {
            challenge,
            ..Self::default()
        }
    }
}
