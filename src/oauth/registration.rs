//! Client registration in the MCP priority order: pre-registered credentials, then a
//! Client ID Metadata Document URL when the server supports it, then dynamic
//! registration (RFC 7591), reusing a stored dynamic registration only while it still
//! fits.
//!
//! LibreChat re-registered on every flow and got `client_id` mismatches; stale
//! registrations were also never cleared. Here a dynamic registration is reused while
//! its issuer (trailing slash normalised), redirect URI, resource and token endpoint all
//! match, and deleted — that generation only — when the authorization server rejects
//! the client.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use url::Url;

use crate::binding::{ClientAuthMethod, ServerBinding};
use crate::fault::ConfigError;
use crate::fault::TransientReason;
use crate::http_client::AuthHttpClient;
use crate::oauth::discovery::AuthorizationServerMetadata;
use crate::store::SharedRecords;
use crate::token::{Generation, Secret};
use crate::url_policy::{UrlPolicy, UrlRefused};

mod client;
mod wire;

pub use client::{ClientConfig, PreRegisteredClient};
#[cfg(feature = "fuzzing")]
pub(crate) use wire::parse_registration;
use wire::*;

/// Where a client registration came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistrationSource {
    /// Configured by the operator.
    PreRegistered,
    /// A Client ID Metadata Document URL used as the `client_id`.
    MetadataDocument,
    /// Dynamic client registration (RFC 7591).
    Dynamic,
}

/// A client as registered at one authorization server.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientRegistration {
    /// The client id.
    pub client_id: String,
    /// The client secret, for confidential clients.
    pub client_secret: Option<Secret>,
    /// How the client authenticates at the token endpoint.
    pub auth_method: ClientAuthMethod,
    /// The issuer it is registered at.
    pub issuer: String,
    /// The redirect URI it was registered with.
    pub redirect_uri: Url,
    /// The resource it was registered for.
    pub resource: String,
    /// The token endpoint at registration time.
    pub token_endpoint: String,
    /// Where it came from.
    pub source: RegistrationSource,
    /// Identifies this registration among later ones for the same key.
    pub generation: Generation,
}

impl ClientRegistration {
    /// The binding for tokens obtained with this client: resource, issuer, token
    /// endpoint and client authentication.
    pub fn binding(&self) -> Result<ServerBinding, ConfigError> {
        let binding = ServerBinding::public_client(
            &self.resource,
            &self.token_endpoint,
            self.client_id.clone(),
        )?
        .with_issuer(self.issuer.clone());
        Ok(match &self.client_secret {
            Some(secret) => binding.with_client_secret(secret.clone(), self.auth_method),
            None => binding,
        })
    }
}

impl fmt::Debug for ClientRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRegistration")
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("auth_method", &self.auth_method)
            .field("issuer", &self.issuer)
            .field("source", &self.source)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// Why no client could be had.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistrationError {
    /// No pre-registered credentials, no usable metadata document, no registration
    /// endpoint.
    #[error("no way to register a client at {issuer}")]
    Unsupported {
        /// The authorization server.
        issuer: String,
    },
    /// The registration endpoint was refused by the URL policy.
    #[error(transparent)]
    Refused(#[from] UrlRefused),
    /// The server refused the registration (RFC 7591 §3.2.2).
    #[error("registration rejected ({code})")]
    Rejected {
        /// The error code, e.g. `invalid_redirect_uri`.
        code: String,
    },
    /// The authorization server is the pre-registered client's issuer but advertises
    /// another token endpoint than the pinned one: the credentials are not sent.
    #[error("{issuer} advertises another token endpoint than the pre-registered client's")]
    TokenEndpointMismatch {
        /// The authorization server.
        issuer: String,
    },
    /// The response was not a registration.
    #[error("malformed registration response")]
    InvalidResponse,
    /// The server could not be reached.
    #[error("registration endpoint unavailable: {0}")]
    Unavailable(TransientReason),
}

/// Hands out client registrations per authorization server and key scope, registering
/// dynamically when needed and reusing what still fits. Clones share the cache.
#[derive(Clone)]
pub struct Registrar {
    http: AuthHttpClient,
    policy: UrlPolicy,
    registrations: moka::future::Cache<String, Arc<ClientRegistration>>,
    next_generation: Arc<AtomicU64>,
    records: Option<Arc<dyn SharedRecords>>,
}

impl fmt::Debug for Registrar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registrar")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// The redirect URI as a registration key. A loopback IP redirect URI of a native app
/// (RFC 8252 §7.3) is keyed without its port: the authorization server must accept
/// any port there, and a bridge listens on whichever port is free at each start, so
/// one registration serves every run.
fn redirect_key(redirect_uri: &Url) -> String {
    let loopback = redirect_uri.scheme() == "http"
        && match redirect_uri.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            _ => false,
        };
    if !loopback {
        return redirect_uri.as_str().to_owned();
    }
    let mut key = redirect_uri.clone();
    let _ = key.set_port(None);
    key.into()
}

fn registration_key(
    scope: &str,
    issuer: &str,
    redirect_uri: &str,
    resource: &str,
    token_endpoint: &str,
) -> String {
    // Length-prefixed so that no two different tuples give one key.
    [scope, issuer, redirect_uri, resource, token_endpoint]
        .iter()
        .map(|part| format!("{}:{part}", part.len()))
        .collect::<Vec<_>>()
        .join("|")
}

fn normalized(issuer: &str) -> &str {
    issuer.trim_end_matches('/')
}

impl Registrar {
    /// A registrar talking through `http` under `policy`.
    pub fn new(http: AuthHttpClient, policy: UrlPolicy) -> Self {
        Self {
            http,
            policy,
            registrations: moka::future::Cache::builder().max_capacity(100_000).build(),
            next_generation: Arc::new(AtomicU64::new(1)),
            records: None,
        }
    }

    /// Keeps dynamic registrations in `records` too (a `SqliteStore` or `RedisStore`
    /// the replicas share): every replica, and every restart, reuses one registration
    /// per fit key instead of registering its own client.
    pub fn with_records(mut self, records: Arc<dyn SharedRecords>) -> Self {
        self.records = Some(records);
        self
    }

    /// A registration from the shared records.
    async fn shared(&self, cache_key: &str) -> Option<(Vec<u8>, ClientRegistration)> {
        let records = self.records.as_ref()?;
        match records.get_record(&record_name(cache_key)).await {
            Ok(Some(bytes)) => decode(&bytes).map(|registration| (bytes, registration)),
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(%error, "shared registrations unavailable");
                None
            }
        }
    }

    /// Publishes a fresh registration, or returns the one another replica published
    /// first.
    async fn publish(
        &self,
        cache_key: &str,
        registration: ClientRegistration,
    ) -> ClientRegistration {
        let Some(records) = &self.records else {
            return registration;
        };
        let written = records
            .compare_and_set_record(
                &record_name(cache_key),
                None,
                &encode(&registration),
                REGISTRATION_TTL,
            )
            .await;
        match written {
            Ok(true) => registration,
            Ok(false) => match self.shared(cache_key).await {
                Some((_, theirs)) => theirs,
                None => registration,
            },
            Err(error) => {
                tracing::warn!(%error, "registration not shared");
                registration
            }
        }
    }

    fn generation(&self) -> Generation {
        if self.records.is_some() {
            // Unique across replicas.
            return Generation(crate::crypto::random_u64() >> 1);
        }
        Generation(self.next_generation.fetch_add(1, Ordering::Relaxed))
    }

    /// The client to use at the authorization server `metadata` for `scope` (a tenant,
    /// or tenant and user, whatever registrations are shared by).
    pub async fn client_for(
        &self,
        scope: &str,
        metadata: &AuthorizationServerMetadata,
        config: &ClientConfig,
    ) -> Result<Arc<ClientRegistration>, RegistrationError> {
        // The exact issuer, for RFC 9207 comparisons; keys use the normalised form.
        let issuer = metadata.issuer.clone();
        let token_endpoint = metadata.token_endpoint.clone().unwrap_or_default();
        let fixed = |client_id: String, client_secret, auth_method, source| {
            Arc::new(ClientRegistration {
                client_id,
                client_secret,
                auth_method,
                issuer: issuer.clone(),
                redirect_uri: config.redirect_uri.clone(),
                resource: config.resource.clone(),
                token_endpoint: token_endpoint.clone(),
                source,
                generation: Generation(0),
            })
        };
        for client in &config.pre_registered {
            if client.fits(metadata)? {
                return Ok(fixed(
                    client.client_id.clone(),
                    client.client_secret.clone(),
                    client.auth_method,
                    RegistrationSource::PreRegistered,
                ));
            }
        }
        if !config.pre_registered.is_empty() {
            tracing::warn!(
                issuer = %metadata.issuer,
                "pre-registered credentials are for other issuers; not using them here"
            );
        }
        if let (Some(url), Some(true)) = (
            &config.metadata_document,
            metadata.client_id_metadata_document_supported,
        ) {
            return Ok(fixed(
                url.to_string(),
                None,
                ClientAuthMethod::None,
                RegistrationSource::MetadataDocument,
            ));
        }
        // Everything a registration must still match is in the key: a change of
        // issuer, redirect URI, resource or token endpoint finds no entry and registers
        // anew. Concurrent first calls share one registration (moka coalesces them).
        let cache_key = registration_key(
            scope,
            normalized(&issuer),
            &redirect_key(&config.redirect_uri),
            &config.resource,
            &token_endpoint,
        );
        self.registrations
            .try_get_with(cache_key.clone(), async {
                if let Some((_, shared)) = self.shared(&cache_key).await {
                    return Ok(Arc::new(shared));
                }
                let registered = self
                    .register(metadata, config, issuer.clone(), token_endpoint.clone())
                    .await?;
                Ok(Arc::new(self.publish(&cache_key, registered).await))
            })
            .await
            .map_err(|error: Arc<RegistrationError>| (*error).clone())
    }

    /// The authorization server rejected `registration` (`invalid_client` and the
    /// like): forget it, if it is still the stored one, so the next flow registers anew.
    pub async fn rejected(&self, scope: &str, registration: &ClientRegistration) -> bool {
        if registration.source != RegistrationSource::Dynamic {
            return false;
        }
        let cache_key = registration_key(
            scope,
            normalized(&registration.issuer),
            &redirect_key(&registration.redirect_uri),
            &registration.resource,
            &registration.token_endpoint,
        );
        let mut deleted = false;
        self.registrations
            .entry_by_ref(&cache_key)
            .and_compute_with(|current| {
                let op = match current {
                    Some(entry) if entry.value().generation == registration.generation => {
                        deleted = true;
                        moka::ops::compute::Op::Remove
                    }
                    _ => moka::ops::compute::Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
        if let Some(records) = &self.records
            && let Some((bytes, shared)) = self.shared(&cache_key).await
            && shared.generation == registration.generation
        {
            // Deleted for every replica: an empty record that expires at once.
            let dropped = records
                .compare_and_set_record(
                    &record_name(&cache_key),
                    Some(&bytes),
                    b"",
                    std::time::Duration::from_millis(1),
                )
                .await
                .unwrap_or(false);
            deleted |= dropped;
        }
        deleted
    }

    async fn register(
        &self,
        metadata: &AuthorizationServerMetadata,
        config: &ClientConfig,
        issuer: String,
        token_endpoint: String,
    ) -> Result<ClientRegistration, RegistrationError> {
        let Some(endpoint) = metadata.registration_endpoint.as_deref() else {
            return Err(RegistrationError::Unsupported { issuer });
        };
        let endpoint: Url = endpoint
            .parse()
            .map_err(|_| RegistrationError::InvalidResponse)?;
        self.policy.check(&endpoint)?;
        let methods = metadata
            .token_endpoint_auth_methods_supported
            .as_deref()
            .unwrap_or(&[]);
        // A public client with PKCE unless the server only takes confidential ones.
        let auth_method = if methods.is_empty() || methods.iter().any(|m| m == "none") {
            "none"
        } else if methods.iter().any(|m| m == "client_secret_basic") {
            "client_secret_basic"
        } else {
            "client_secret_post"
        };
        let mut grant_types = vec!["authorization_code"];
        let refresh = metadata
            .grant_types_supported
            .as_ref()
            .is_none_or(|grants| grants.iter().any(|g| g == "refresh_token"));
        if refresh {
            grant_types.push("refresh_token");
        }
        let loopback = config
            .redirect_uri
            .host_str()
            .is_some_and(|h| h == "localhost" || h == "127.0.0.1" || h == "[::1]");
        let body = json!({
            "client_name": config.client_name,
            "redirect_uris": [config.redirect_uri.as_str()],
            "grant_types": grant_types,
            "response_types": ["code"],
            "token_endpoint_auth_method": auth_method,
            "application_type": if loopback { "native" } else { "web" },
        });
        let mut request = http::Request::new(Bytes::from(body.to_string()));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = endpoint
            .as_str()
            .parse()
            .map_err(|_| RegistrationError::InvalidResponse)?;
        request.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        let response = self
            .http
            .send(request)
            .await
            .map_err(|e| RegistrationError::Unavailable(e.into_transient().0))?;
        if !response.status().is_success() {
            let code = serde_json::from_slice::<serde_json::Value>(response.body())
                .ok()
                // The server chose it: kept short in errors and logs.
                .and_then(|v| v["error"].as_str().map(|c| c.chars().take(100).collect()))
                .unwrap_or_else(|| format!("HTTP {}", response.status().as_u16()));
            return Err(RegistrationError::Rejected { code });
        }
        let (client_id, client_secret, auth_method) =
            parse_registration(response.body(), auth_method)?;
        Ok(ClientRegistration {
            client_id,
            client_secret,
            auth_method,
            issuer,
            redirect_uri: config.redirect_uri.clone(),
            resource: config.resource.clone(),
            token_endpoint,
            source: RegistrationSource::Dynamic,
            generation: self.generation(),
        })
    }
}

#[cfg(test)]
mod tests;
