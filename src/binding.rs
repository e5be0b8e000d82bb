//! The server binding: which resource a credential is for, and how to refresh it.

use std::fmt;

use sha2::{Digest, Sha256};
use url::Url;

use crate::error::ConfigError;
use crate::key::BindingId;
use crate::token::Secret;

/// How the client authenticates at the token endpoint (RFC 6749 §2.3,
/// `token_endpoint_auth_method` of RFC 7591).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClientAuthMethod {
    /// A public client: `client_id` in the form body, no secret.
    None,
    /// HTTP Basic with the client id and secret.
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

/// An MCP server (the protected resource) together with the authorization server
/// client that obtains tokens for it.
///
/// Tokens are attached only to requests for this resource: same origin, and a path at
/// or below the resource's path.
///
/// ```
/// use tower_mcp_auth::{ClientAuthMethod, Secret, ServerBinding};
///
/// let binding = ServerBinding::public_client(
///     "https://mcp.example.com/mcp",
///     "https://auth.example.com/oauth/token",
///     "my-client",
/// )?
/// .with_issuer("https://auth.example.com")
/// .with_client_secret(Secret::new("s3cr3t"), ClientAuthMethod::ClientSecretBasic);
///
/// let inside: http::Uri = "https://mcp.example.com/mcp/sse".parse().unwrap();
/// let elsewhere: http::Uri = "https://evil.example.com/mcp".parse().unwrap();
/// assert!(binding.covers(&inside));
/// assert!(!binding.covers(&elsewhere));
/// assert!(!format!("{binding:?}").contains("s3cr3t"));
/// # Ok::<(), tower_mcp_auth::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct ServerBinding {
    resource: Url,
    issuer: Option<String>,
    token_endpoint: Url,
    client_id: String,
    client_secret: Option<Secret>,
    auth_method: ClientAuthMethod,
    send_resource: bool,
    id: BindingId,
}

impl ServerBinding {
    /// A binding for a public client (no secret).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when either URL does not parse or is not http(s).
    pub fn public_client(
        resource: &str,
        token_endpoint: &str,
        client_id: impl Into<String>,
    ) -> Result<Self, ConfigError> {
        let resource = parse_http_url("resource", resource)?;
        let token_endpoint = parse_http_url("token_endpoint", token_endpoint)?;
        let mut binding = Self {
            resource,
            issuer: None,
            token_endpoint,
            client_id: client_id.into(),
            client_secret: None,
            auth_method: ClientAuthMethod::None,
            send_resource: true,
            id: BindingId([0; 32]),
        };
        binding.id = binding.digest();
        Ok(binding)
    }

    /// Sets the issuer of the authorization server (part of the binding's identity).
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self.id = self.digest();
        self
    }

    /// Makes this a confidential client authenticating with `secret` by `method`.
    pub fn with_client_secret(mut self, secret: Secret, method: ClientAuthMethod) -> Self {
        self.client_secret = Some(secret);
        self.auth_method = method;
        self
    }

    /// Whether token requests carry the RFC 8707 `resource` parameter (default: yes,
    /// as the MCP authorization spec requires). Some legacy servers reject it.
    pub fn with_resource_parameter(mut self, send: bool) -> Self {
        self.send_resource = send;
        self
    }

    /// The digest that tells this binding apart from every other.
    pub fn id(&self) -> BindingId {
        self.id
    }

    /// The protected resource (the MCP server URL).
    pub fn resource(&self) -> &Url {
        &self.resource
    }

    /// The authorization server's issuer, if known.
    pub fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    /// The token endpoint.
    pub fn token_endpoint(&self) -> &Url {
        &self.token_endpoint
    }

    /// The OAuth client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub(crate) fn client_secret(&self) -> Option<&Secret> {
        self.client_secret.as_ref()
    }

    /// How the client authenticates at the token endpoint.
    pub fn auth_method(&self) -> ClientAuthMethod {
        self.auth_method
    }

    pub(crate) fn sends_resource(&self) -> bool {
        self.send_resource
    }

    /// Whether a request to `uri` is for this resource: same scheme, host and port, and
    /// a path equal to or below the resource path (at a segment boundary).
    pub fn covers(&self, uri: &http::Uri) -> bool {
        let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
            return false;
        };
        let default_port = match scheme {
            "https" => 443,
            "http" => 80,
            _ => return false,
        };
        let same_origin = scheme == self.resource.scheme()
            && self
                .resource
                .host_str()
                .is_some_and(|h| h.eq_ignore_ascii_case(host))
            && uri.port_u16().unwrap_or(default_port)
                == self.resource.port_or_known_default().unwrap_or(0);
        if !same_origin {
            return false;
        }
        let base = self.resource.path().trim_end_matches('/');
        let path = uri.path();
        base.is_empty()
            || path == base
            || (path.starts_with(base) && path.as_bytes().get(base.len()) == Some(&b'/'))
    }

    fn digest(&self) -> BindingId {
        let mut hasher = Sha256::new();
        for part in [
            self.resource.as_str(),
            self.issuer.as_deref().unwrap_or(""),
            self.client_id.as_str(),
        ] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        BindingId(hasher.finalize().into())
    }
}

impl fmt::Debug for ServerBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBinding")
            .field("resource", &self.resource.as_str())
            .field("issuer", &self.issuer)
            .field("token_endpoint", &self.token_endpoint.as_str())
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("auth_method", &self.auth_method)
            .field("id", &self.id)
            .finish()
    }
}

fn parse_http_url(field: &'static str, value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value).map_err(|source| ConfigError::InvalidUrl { field, source })?;
    match url.scheme() {
        "http" | "https" if url.has_host() => Ok(url),
        _ => Err(ConfigError::UnsupportedUrl { field }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(resource: &str) -> ServerBinding {
        ServerBinding::public_client(resource, "https://as.example/token", "c").unwrap()
    }

    #[test]
    fn covers_paths_at_segment_boundaries() {
        let b = binding("https://mcp.example/mcp");
        for ok in [
            "https://mcp.example/mcp",
            "https://mcp.example:443/mcp/x",
            "https://MCP.example/mcp?x=1",
        ] {
            assert!(b.covers(&ok.parse().unwrap()), "{ok}");
        }
        for no in [
            "https://mcp.example/mcpx",
            "http://mcp.example/mcp",
            "https://mcp.example:8443/mcp",
            "https://other.example/mcp",
            "/mcp",
        ] {
            assert!(!b.covers(&no.parse().unwrap()), "{no}");
        }
        assert!(binding("https://mcp.example").covers(&"https://mcp.example/any".parse().unwrap()));
    }

    #[test]
    fn identity_changes_with_issuer_and_client() {
        let a = binding("https://mcp.example/mcp");
        let b = a.clone().with_issuer("https://as.example");
        let c = ServerBinding::public_client(
            "https://mcp.example/mcp",
            "https://as.example/token",
            "d",
        )
        .unwrap();
        assert_ne!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        assert_eq!(a.id(), binding("https://mcp.example/mcp").id());
    }

    #[test]
    fn rejects_non_http_urls() {
        assert!(ServerBinding::public_client("ftp://x/", "https://a/t", "c").is_err());
        assert!(ServerBinding::public_client("https://x/", "not a url", "c").is_err());
    }
}
