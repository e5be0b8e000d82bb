//! What the application says about its client: a pre-registered one, or the metadata a
//! registration sends.

use super::*;

/// Client credentials registered by the operator at one authorization server.
///
/// They are used only with the issuer they name (compared exactly, RFC 8414 §3.3), and
/// only with the pinned token endpoint if one is given: a hostile MCP server that names
/// its own authorization server never receives the secret (or a PKCE verifier for
/// these credentials). Elsewhere the registrar falls back to a Client ID Metadata
/// Document or dynamic registration.
///
/// ```
/// use tower_mcp_auth::{binding::ClientAuthMethod, oauth::PreRegisteredClient, Secret};
///
/// let client = PreRegisteredClient::new("https://auth.example.com", "static-id")
///     .with_secret(Secret::new("s3cr3t"), ClientAuthMethod::ClientSecretBasic)
///     .with_token_endpoint("https://auth.example.com/oauth/token".parse().unwrap());
/// assert!(!format!("{client:?}").contains("s3cr3t"));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PreRegisteredClient {
    /// The issuer the client is registered at.
    pub issuer: String,
    /// If set, the only token endpoint the credentials are sent to.
    pub token_endpoint: Option<Url>,
    /// The client id.
    pub client_id: String,
    /// The client secret, for confidential clients.
    pub client_secret: Option<Secret>,
    /// How the client authenticates at the token endpoint.
    pub auth_method: ClientAuthMethod,
}

impl PreRegisteredClient {
    /// A public client (`none` authentication) registered at `issuer`.
    pub fn new(issuer: impl Into<String>, client_id: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            token_endpoint: None,
            client_id: client_id.into(),
            client_secret: None,
            auth_method: ClientAuthMethod::None,
        }
    }

    /// A confidential client authenticating with `secret` by `method`.
    pub fn with_secret(mut self, secret: Secret, method: ClientAuthMethod) -> Self {
        self.client_secret = Some(secret);
        self.auth_method = method;
        self
    }

    /// Sends the credentials only to this token endpoint.
    pub fn with_token_endpoint(mut self, token_endpoint: Url) -> Self {
        self.token_endpoint = Some(token_endpoint);
        self
    }

    /// Whether these credentials may be used at the authorization server `metadata`
    /// describes.
    pub(super) fn fits(
        &self,
        metadata: &AuthorizationServerMetadata,
    ) -> Result<bool, RegistrationError> {
        if self.issuer != metadata.issuer {
            return Ok(false);
        }
        match (&self.token_endpoint, metadata.token_endpoint.as_deref()) {
            (Some(pinned), Some(advertised)) if pinned.as_str() != advertised => {
                Err(RegistrationError::TokenEndpointMismatch {
                    issuer: metadata.issuer.clone(),
                })
            }
            _ => Ok(true),
        }
    }
}

/// What the client is and wants, for [`Registrar::client_for`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Where the authorization server sends the browser back.
    pub redirect_uri: Url,
    /// The protected resource.
    pub resource: String,
    /// The client name shown on consent screens.
    pub client_name: String,
    /// Pre-registered credentials, each bound to its issuer.
    pub pre_registered: Vec<PreRegisteredClient>,
    /// This client's Client ID Metadata Document URL (https, with a path).
    pub metadata_document: Option<Url>,
}

impl ClientConfig {
    /// A client that registers dynamically unless told otherwise.
    pub fn new(
        redirect_uri: Url,
        resource: impl Into<String>,
        client_name: impl Into<String>,
    ) -> Self {
        Self {
            redirect_uri,
            resource: resource.into(),
            client_name: client_name.into(),
            pre_registered: Vec::new(),
            metadata_document: None,
        }
    }

    /// Uses pre-registered credentials at their issuer (first priority there). May be
    /// called once per authorization server.
    pub fn with_pre_registered(mut self, client: PreRegisteredClient) -> Self {
        self.pre_registered.push(client);
        self
    }

    /// Uses this Client ID Metadata Document URL where the server supports it.
    pub fn with_metadata_document(mut self, url: Url) -> Self {
        self.metadata_document = Some(url);
        self
    }
}
