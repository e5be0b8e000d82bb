//! Discovery: protected resource metadata (RFC 9728) and authorization server metadata
//! (RFC 8414, OpenID Connect Discovery), in the MCP 2025-11-25 order, cached in moka.
//!
//! For MCP servers that publish no protected resource metadata, the 2025-03-26 forms:
//! authorization server metadata at the MCP server's root, else the default
//! `/authorize`, `/token` and `/register` endpoints there
//! ([`Discovery::legacy_authorization_server`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use url::Url;

use crate::challenge::BearerChallenge;
use crate::fault::TransientReason;
use crate::http_client::{AuthHttpClient, HttpError};
use crate::url_policy::{UrlPolicy, UrlRefused};

/// Protected resource metadata (RFC 9728 §2).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProtectedResourceMetadata {
    /// The resource identifier.
    pub resource: String,
    /// Issuers of the authorization servers that protect it.
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    /// Scopes the resource understands.
    #[serde(default)]
    pub scopes_supported: Option<Vec<String>>,
}

/// Authorization server metadata (RFC 8414 §2, the fields MCP clients use).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthorizationServerMetadata {
    /// The issuer identifier.
    pub issuer: String,
    /// The authorization endpoint.
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    /// The token endpoint.
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// The dynamic client registration endpoint (RFC 7591).
    #[serde(default)]
    pub registration_endpoint: Option<String>,
    /// Scopes the server supports.
    #[serde(default)]
    pub scopes_supported: Option<Vec<String>>,
    /// Grant types the server supports.
    #[serde(default)]
    pub grant_types_supported: Option<Vec<String>>,
    /// PKCE methods; MCP clients require `S256`.
    #[serde(default)]
    pub code_challenge_methods_supported: Option<Vec<String>>,
    /// Client authentication methods at the token endpoint.
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
    /// Whether Client ID Metadata Documents are accepted.
    #[serde(default)]
    pub client_id_metadata_document_supported: Option<bool>,
    /// Whether the authorization response carries `iss` (RFC 9207 §3).
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: Option<bool>,
    /// The token revocation endpoint (RFC 7009), if the server has one.
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
}

impl AuthorizationServerMetadata {
    /// Whether PKCE `S256` is advertised (`None`: the server did not list methods).
    pub fn supports_s256(&self) -> Option<bool> {
        self.code_challenge_methods_supported
            .as_ref()
            .map(|methods| methods.iter().any(|m| m == "S256"))
    }
}

/// Why discovery failed.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// A URL was refused by the [`UrlPolicy`].
    #[error(transparent)]
    Refused(#[from] UrlRefused),
    /// `resource_metadata` pointed at another origin than the MCP server.
    #[error("resource_metadata on another origin than the server ({0})")]
    CrossOriginMetadata(String),
    /// No candidate URL served a usable document.
    #[error("no metadata found (tried {})", .tried.join(", "))]
    NotFound {
        /// The URLs tried, in order.
        tried: Vec<String>,
    },
    /// The protected resource metadata names another resource.
    #[error("metadata is for resource {found}, not {expected}")]
    ResourceMismatch {
        /// The MCP server URL.
        expected: String,
        /// What the document said.
        found: String,
    },
    /// The authorization server metadata names another issuer.
    #[error("metadata is for issuer {found}, not {expected}")]
    IssuerMismatch {
        /// The issuer asked for.
        expected: String,
        /// What the document said.
        found: String,
    },
    /// The authorization server is not among those the operator allows
    /// ([`AuthorizerBuilder::allowed_authorization_servers`](crate::oauth::AuthorizerBuilder::allowed_authorization_servers)).
    #[error("authorization server {issuer} is not allowed for this server")]
    AuthorizationServerNotAllowed {
        /// The issuer the MCP server named.
        issuer: String,
    },
    /// The protected resource metadata lists no authorization server.
    #[error("no authorization_servers in the protected resource metadata")]
    NoAuthorizationServer,
    /// The authorization server lists PKCE methods and `S256` is not among them.
    #[error("authorization server {issuer} does not support PKCE S256")]
    S256Unsupported {
        /// The authorization server.
        issuer: String,
    },
    /// A server could not be reached (network, timeout, 5xx, 429).
    #[error("metadata unavailable: {0}")]
    Unavailable(TransientReason),
}

/// The well-known URLs of a resource's protected resource metadata, in the order MCP
/// clients try them: path-inserted, then at the root (RFC 9728 §3.1).
pub fn protected_resource_metadata_urls(server: &Url) -> Vec<Url> {
    let path = server.path().trim_end_matches('/');
    let mut urls = Vec::with_capacity(2);
    for suffix in [path, ""] {
        let mut url = server.clone();
        url.set_path(&format!("/.well-known/oauth-protected-resource{suffix}"));
        url.set_query(None);
        url.set_fragment(None);
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    urls
}

/// The well-known URLs of an issuer's metadata, in the MCP 2025-11-25 order: RFC 8414
/// path insertion, OIDC path insertion, OIDC path appending; for an issuer without a
/// path, RFC 8414 then OIDC at the root.
pub fn authorization_server_metadata_urls(issuer: &Url) -> Vec<Url> {
    let path = issuer.path().trim_end_matches('/');
    let at = |path: String| {
        let mut url = issuer.clone();
        url.set_path(&path);
        url.set_query(None);
        url.set_fragment(None);
        url
    };
    if path.is_empty() {
        return vec![
            at("/.well-known/oauth-authorization-server".into()),
            at("/.well-known/openid-configuration".into()),
        ];
    }
    vec![
        at(format!("/.well-known/oauth-authorization-server{path}")),
        at(format!("/.well-known/openid-configuration{path}")),
        at(format!("{path}/.well-known/openid-configuration")),
    ]
}

/// Whether `resource` (from metadata) identifies `server`: the same URL, or the same
/// origin with a path that is a parent of the server's at a segment boundary (the
/// origin-level resource the spec allows).
pub(crate) fn resource_matches(resource: &str, server: &Url) -> bool {
    let Ok(resource) = Url::parse(resource) else {
        return false;
    };
    if resource.origin() != server.origin() {
        return false;
    }
    let parent = resource.path().trim_end_matches('/');
    let path = server.path().trim_end_matches('/');
    path == parent || path.starts_with(&format!("{parent}/"))
}

fn same_issuer(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// The largest metadata document accepted: 64 KiB (real ones are a few KiB).
pub const MAX_METADATA_BYTES: usize = 64 * 1024;
/// Bytes each discovery cache holds at most.
const CACHE_BYTES: u64 = 16 << 20;

fn weight(bytes: usize) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

fn strings_weight<'a>(strings: impl IntoIterator<Item = &'a String>) -> usize {
    strings.into_iter().map(|s| s.len() + 24).sum()
}

impl ProtectedResourceMetadata {
    /// Approximate bytes held, for the cache's weigher.
    fn weight(&self) -> usize {
        self.resource.len()
            + strings_weight(&self.authorization_servers)
            + self.scopes_supported.as_ref().map_or(0, strings_weight)
    }
}

impl AuthorizationServerMetadata {
    /// Approximate bytes held, for the cache's weigher.
    fn weight(&self) -> usize {
        let optional = [
            &self.authorization_endpoint,
            &self.token_endpoint,
            &self.registration_endpoint,
        ];
        let lists = [
            &self.scopes_supported,
            &self.grant_types_supported,
            &self.code_challenge_methods_supported,
            &self.token_endpoint_auth_methods_supported,
        ];
        self.issuer.len()
            + strings_weight(optional.into_iter().flatten())
            + lists
                .into_iter()
                .flatten()
                .map(strings_weight)
                .sum::<usize>()
    }
}

#[cfg(feature = "fuzzing")]
pub(crate) fn weigh_resource(resource: &ProtectedResourceMetadata) -> usize {
    resource.weight()
}

#[cfg(feature = "fuzzing")]
pub(crate) fn weigh_issuer(issuer: &AuthorizationServerMetadata) -> usize {
    issuer.weight()
}

/// Discovers and caches metadata. Clones share the caches.
///
/// ```no_run
/// use tower_mcp_auth::{AuthHttpClient, oauth::Discovery, UrlPolicy};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let discovery = Discovery::new(AuthHttpClient::new(), UrlPolicy::default());
/// let server = "https://mcp.example.com/mcp".parse()?;
/// let resource = discovery.protected_resource(&server, None).await?;
/// let issuer = resource.authorization_servers[0].parse()?;
/// let metadata = discovery.authorization_server(&issuer).await?;
/// println!("token endpoint: {:?}", metadata.token_endpoint);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Discovery {
    http: AuthHttpClient,
    policy: UrlPolicy,
    resources: moka::future::Cache<String, Arc<ProtectedResourceMetadata>>,
    issuers: moka::future::Cache<String, Arc<AuthorizationServerMetadata>>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// Discovery through `http` under `policy`, caching documents for 10 minutes.
    pub fn new(http: AuthHttpClient, policy: UrlPolicy) -> Self {
        Self::with_ttl(http, policy, Duration::from_secs(600))
    }

    /// As [`new`](Self::new) with another cache lifetime.
    ///
    /// Documents over [`MAX_METADATA_BYTES`] are refused; the caches are bounded by
    /// the bytes of what they hold (16 MiB each), not by a count a hostile server can
    /// fill with large documents.
    pub fn with_ttl(http: AuthHttpClient, policy: UrlPolicy, ttl: Duration) -> Self {
        Self {
            http: http.with_max_response_bytes(MAX_METADATA_BYTES),
            policy,
            resources: moka::future::Cache::builder()
                .max_capacity(CACHE_BYTES)
                .weigher(|key: &String, value: &Arc<ProtectedResourceMetadata>| {
                    weight(key.len() + value.weight())
                })
                .time_to_live(crate::limits::clamp(ttl))
                .build(),
            issuers: moka::future::Cache::builder()
                .max_capacity(CACHE_BYTES)
                .weigher(|key: &String, value: &Arc<AuthorizationServerMetadata>| {
                    weight(key.len() + value.weight())
                })
                .time_to_live(crate::limits::clamp(ttl))
                .build(),
        }
    }

    /// The protected resource metadata of the MCP server at `server`: from the
    /// challenge's `resource_metadata` if given (same origin only), else from the
    /// well-known URLs. The document's `resource` must identify `server`.
    pub async fn protected_resource(
        &self,
        server: &Url,
        challenge: Option<&BearerChallenge>,
    ) -> Result<Arc<ProtectedResourceMetadata>, DiscoveryError> {
        let hinted = challenge.and_then(|c| c.resource_metadata.as_deref());
        // Keyed by the URL the hint resolves to (same origin only), not by the string a
        // server chose: spellings of one URL share an entry.
        let candidates = match hinted {
            Some(hint) => {
                let url = server.join(hint).map_err(|_| DiscoveryError::NotFound {
                    tried: vec![hint.chars().take(200).collect()],
                })?;
                if url.origin() != server.origin() {
                    return Err(DiscoveryError::CrossOriginMetadata(url.to_string()));
                }
                vec![url]
            }
            None => protected_resource_metadata_urls(server),
        };
        let cache_key = format!("{server} {}", candidates[0]);
        self.resources
            .try_get_with(cache_key, async {
                let document: ProtectedResourceMetadata = self.first_document(&candidates).await?;
                if !resource_matches(&document.resource, server) {
                    return Err(DiscoveryError::ResourceMismatch {
                        expected: server.to_string(),
                        found: document.resource,
                    });
                }
                if document.authorization_servers.is_empty() {
                    return Err(DiscoveryError::NoAuthorizationServer);
                }
                Ok(Arc::new(document))
            })
            .await
            .map_err(|e| (*e).clone())
    }

    /// The metadata of the authorization server `issuer`; its `issuer` must match.
    pub async fn authorization_server(
        &self,
        issuer: &Url,
    ) -> Result<Arc<AuthorizationServerMetadata>, DiscoveryError> {
        self.issuers
            .try_get_with(issuer.to_string(), async {
                let candidates = authorization_server_metadata_urls(issuer);
                let document: AuthorizationServerMetadata =
                    self.first_document(&candidates).await?;
                if !same_issuer(&document.issuer, issuer.as_str()) {
                    return Err(DiscoveryError::IssuerMismatch {
                        expected: issuer.to_string(),
                        found: document.issuer,
                    });
                }
                Ok(Arc::new(document))
            })
            .await
            .map_err(|e| (*e).clone())
    }

    /// The authorization server of an MCP server that publishes no protected resource
    /// metadata (MCP 2025-03-26): the metadata at the server's root
    /// (`/.well-known/oauth-authorization-server`), which must name an issuer on the
    /// server's own origin and advertise PKCE `S256`; else, when there is no document at
    /// all, the default endpoints `/authorize`, `/token` and `/register` on the server's
    /// origin (2025-03-26 §2.3.3; the code flow still uses PKCE `S256`).
    ///
    /// ```
    /// use tower_mcp_auth::{AuthHttpClient, oauth::Discovery, UrlPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // Nothing listens on port 9: no metadata, so the defaults apply.
    /// let discovery = Discovery::new(AuthHttpClient::new(), UrlPolicy::default().allow_loopback_http());
    /// let metadata = discovery.legacy_authorization_server(&"http://127.0.0.1:9/mcp".parse()?).await;
    /// assert!(metadata.is_err(), "an unreachable server is an error, not a default");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn legacy_authorization_server(
        &self,
        server: &Url,
    ) -> Result<Arc<AuthorizationServerMetadata>, DiscoveryError> {
        let origin = server.origin().ascii_serialization();
        self.issuers
            .try_get_with(format!("legacy {origin}"), async {
                let mut url = server.clone();
                url.set_path("/.well-known/oauth-authorization-server");
                url.set_query(None);
                url.set_fragment(None);
                match self
                    .first_document::<AuthorizationServerMetadata>(&[url])
                    .await
                {
                    Ok(document) => {
                        // Only the server's own origin may be its legacy authorization
                        // server: a root document naming another issuer is refused.
                        let same_origin = Url::parse(&document.issuer)
                            .is_ok_and(|issuer| issuer.origin() == server.origin());
                        if !same_origin {
                            return Err(DiscoveryError::IssuerMismatch {
                                expected: origin.clone(),
                                found: document.issuer,
                            });
                        }
                        if document.supports_s256() != Some(true) {
                            return Err(DiscoveryError::S256Unsupported {
                                issuer: document.issuer,
                            });
                        }
                        return Ok(Arc::new(document));
                    }
                    Err(DiscoveryError::NotFound { .. }) => {}
                    Err(other) => return Err(other),
                }
                tracing::debug!(%origin, "no authorization server metadata; default endpoints");
                Ok(Arc::new(AuthorizationServerMetadata {
                    issuer: origin.clone(),
                    authorization_endpoint: Some(format!("{origin}/authorize")),
                    token_endpoint: Some(format!("{origin}/token")),
                    registration_endpoint: Some(format!("{origin}/register")),
                    scopes_supported: None,
                    grant_types_supported: None,
                    code_challenge_methods_supported: None,
                    token_endpoint_auth_methods_supported: None,
                    client_id_metadata_document_supported: None,
                    authorization_response_iss_parameter_supported: None,
                    revocation_endpoint: None,
                }))
            })
            .await
            .map_err(|e| (*e).clone())
    }

    /// The first candidate that answers 200 with a document of type `T`. Unreachable
    /// servers end the search; 4xx, redirects and unparsable documents move on.
    async fn first_document<T: serde::de::DeserializeOwned>(
        &self,
        candidates: &[Url],
    ) -> Result<T, DiscoveryError> {
        let mut tried = Vec::new();
        for url in candidates {
            self.policy.check(url)?;
            tried.push(url.to_string());
            let mut request = http::Request::new(Bytes::new());
            *request.uri_mut() = match url.as_str().parse() {
                Ok(uri) => uri,
                Err(_) => continue,
            };
            request.headers_mut().insert(
                http::header::ACCEPT,
                http::HeaderValue::from_static("application/json"),
            );
            let response = match self.http.send(request).await {
                Ok(response) => response,
                Err(HttpError::TooLarge(max)) => {
                    tracing::debug!(%url, max, "metadata document too large");
                    continue;
                }
                Err(unreachable) => {
                    return Err(DiscoveryError::Unavailable(unreachable.into_transient().0));
                }
            };
            if response.status() != http::StatusCode::OK {
                continue;
            }
            match serde_json::from_slice(response.body()) {
                Ok(document) => return Ok(document),
                Err(error) => tracing::debug!(%url, %error, "unusable metadata document"),
            }
        }
        Err(DiscoveryError::NotFound { tried })
    }
}

#[cfg(test)]
mod tests;
