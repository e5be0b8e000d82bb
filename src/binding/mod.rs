//! The server binding: which resource a credential is for, and how to refresh it.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use url::Url;

use crate::fault::{CapacityReached, ConfigError};
use crate::key::KeyHasher;
use crate::token::Secret;

mod scope;

pub use crate::key::BindingId;

pub(crate) use scope::{Coverage, Scope, covers};

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
/// use tower_mcp_auth::{binding::ClientAuthMethod, Secret, ServerBinding};
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
/// # Ok::<(), tower_mcp_auth::error::ConfigError>(())
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
        covers(&self.resource, uri)
    }

    fn digest(&self) -> BindingId {
        BindingId(crate::crypto::sha256_fields([
            self.resource.as_str().as_bytes(),
            self.issuer.as_deref().unwrap_or("").as_bytes(),
            self.client_id.as_bytes(),
        ]))
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

/// Where the [`ServerBinding`] of one MCP server is found at request time.
///
/// With pre-configured credentials the binding is known up front
/// ([`BindingSlot::fixed`], or any `ServerBinding` converted with `into()`). With
/// dynamic registration the client id is known only once the client is registered:
/// [`OAuthRetryLayer`](crate::OAuthRetryLayer) fills the slot, per tenant, when it
/// registers, and [`SilentRefreshLayer`](crate::SilentRefreshLayer) reads it for every
/// request. Until then requests for the server go out without a token.
///
/// Clones share the slot.
///
/// ```
/// use tower_mcp_auth::{binding::BindingSlot, ServerBinding};
///
/// let slot = BindingSlot::new("https://mcp.example.com/mcp")?;
/// assert!(slot.get("acme").is_none());
/// let binding = ServerBinding::public_client(
///     "https://mcp.example.com/mcp",
///     "https://auth.example.com/token",
///     "registered-client-id",
/// )?;
/// slot.set("acme", binding).unwrap();
/// assert_eq!(slot.get("acme").unwrap().client_id(), "registered-client-id");
/// assert!(slot.get("globex").is_none(), "registrations are per tenant");
/// # Ok::<(), tower_mcp_auth::error::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct BindingSlot {
    inner: Arc<SlotInner>,
}

struct SlotInner {
    resource: Scope,
    fixed: Option<Arc<ServerBinding>>,
    by_tenant: RwLock<TenantMap>,
    /// Set (under the write lock) once a tenant has a binding of its own: until then a
    /// lookup needs no lock.
    has_tenants: AtomicBool,
    max_tenants: usize,
}

/// The default bound on tenants with a binding of their own in one [`BindingSlot`].
pub const DEFAULT_MAX_TENANTS: usize = 100_000;

impl BindingSlot {
    /// An empty slot for the MCP server at `resource`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `resource` is not an absolute http(s) URL.
    pub fn new(resource: &str) -> Result<Self, ConfigError> {
        Ok(Self::with(parse_http_url("resource", resource)?, None))
    }

    /// A slot that holds `binding` for every tenant (until a tenant gets its own).
    pub fn fixed(binding: ServerBinding) -> Self {
        Self::with(binding.resource.clone(), Some(Arc::new(binding)))
    }

    fn with(resource: Url, fixed: Option<Arc<ServerBinding>>) -> Self {
        Self::with_limit(resource, fixed, DEFAULT_MAX_TENANTS)
    }

    /// Bounds the tenants with a binding of their own (default
    /// [`DEFAULT_MAX_TENANTS`]); beyond it [`set`](Self::set) refuses new tenants.
    /// Call before sharing the slot.
    pub fn with_max_tenants(self, max: usize) -> Self {
        Self::with_limit(
            self.inner.resource.resource().clone(),
            self.inner.fixed.clone(),
            max,
        )
    }

    fn with_limit(resource: Url, fixed: Option<Arc<ServerBinding>>, max_tenants: usize) -> Self {
        Self {
            inner: Arc::new(SlotInner {
                resource: Scope::new(resource),
                fixed,
                by_tenant: RwLock::new(TenantMap::default()),
                has_tenants: AtomicBool::new(false),
                max_tenants,
            }),
        }
    }

    /// The MCP server this slot is for.
    pub fn resource(&self) -> &Url {
        self.inner.resource.resource()
    }

    /// Whether a request to `uri` is for this MCP server (see [`ServerBinding::covers`]).
    pub fn covers(&self, uri: &http::Uri) -> bool {
        self.inner.resource.covers(uri)
    }

    /// [`covers`](Self::covers), telling the resource's own URI apart.
    pub(crate) fn coverage(&self, uri: &http::Uri) -> Coverage {
        self.inner.resource.coverage(uri)
    }

    /// The resource's URI, as a request found [`Coverage::Exact`] wrote it.
    pub(crate) fn exact_uri(&self) -> Option<&http::Uri> {
        self.inner.resource.exact_uri()
    }

    /// The binding for `tenant`, if known.
    pub fn get(&self, tenant: &str) -> Option<Arc<ServerBinding>> {
        self.lookup(tenant, || crate::key::tenant_hash(tenant))
    }

    /// The binding for `principal`'s tenant, found by the hash the principal carries
    /// (the layers' hot path: nothing is hashed per request).
    pub(crate) fn for_principal(&self, principal: &crate::Principal) -> Option<Arc<ServerBinding>> {
        self.lookup(principal.tenant(), || principal.tenant_hash())
    }

    /// The id of the binding for `principal`'s tenant: the layers' hot path, which
    /// needs no more than the key (no reference count taken).
    pub(crate) fn id_for_principal(&self, principal: &crate::Principal) -> Option<BindingId> {
        self.visit(principal.tenant(), || principal.tenant_hash(), |b| b.id)
    }

    fn lookup(&self, tenant: &str, hash: impl FnOnce() -> u64) -> Option<Arc<ServerBinding>> {
        self.visit(tenant, hash, Arc::clone)
    }

    /// `read` applied to the binding for `tenant`, under the lock when tenants have
    /// bindings of their own.
    fn visit<T>(
        &self,
        tenant: &str,
        hash: impl FnOnce() -> u64,
        read: impl FnOnce(&Arc<ServerBinding>) -> T,
    ) -> Option<T> {
        if !self.inner.has_tenants.load(Ordering::Acquire) {
            return self.inner.fixed.as_ref().map(read);
        }
        let by_tenant = self
            .inner
            .by_tenant
            .read()
            .unwrap_or_else(|e| e.into_inner());
        by_tenant
            .get(hash(), tenant)
            .or(self.inner.fixed.as_ref())
            .map(read)
    }

    /// Sets the binding for `tenant`.
    ///
    /// # Errors
    ///
    /// [`CapacityReached`] when `tenant` is new and the slot already holds its maximum
    /// of tenants: nobody's binding is dropped to make room.
    pub fn set(&self, tenant: &str, binding: ServerBinding) -> Result<(), CapacityReached> {
        let mut by_tenant = self
            .inner
            .by_tenant
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let hash = crate::key::tenant_hash(tenant);
        if by_tenant.len() >= self.inner.max_tenants && by_tenant.get(hash, tenant).is_none() {
            return Err(CapacityReached {
                what: "binding slot",
                max: self.inner.max_tenants as u64,
            });
        }
        by_tenant.insert(hash, tenant, Arc::new(binding));
        self.inner.has_tenants.store(true, Ordering::Release);
        Ok(())
    }
}

/// A tenant's name and its binding.
type TenantBinding = (Arc<str>, Arc<ServerBinding>);

/// Bindings by tenant, under the tenant's keyed hash (which a [`Principal`] carries):
/// a lookup hashes nothing. Names that share a hash (as good as never, the hash being
/// keyed per process) share a bucket and are told apart by name.
///
/// [`Principal`]: crate::Principal
#[derive(Default)]
struct TenantMap {
    buckets: HashMap<u64, Vec<TenantBinding>, BuildHasherDefault<KeyHasher>>,
    len: usize,
}

impl TenantMap {
    fn get(&self, hash: u64, tenant: &str) -> Option<&Arc<ServerBinding>> {
        let bucket = self.buckets.get(&hash)?;
        bucket
            .iter()
            .find(|(name, _)| &**name == tenant)
            .map(|(_, binding)| binding)
    }

    fn insert(&mut self, hash: u64, tenant: &str, binding: Arc<ServerBinding>) {
        let bucket = self.buckets.entry(hash).or_default();
        match bucket.iter_mut().find(|(name, _)| &**name == tenant) {
            Some((_, slot)) => *slot = binding,
            None => {
                bucket.push((Arc::from(tenant), binding));
                self.len += 1;
            }
        }
    }

    fn len(&self) -> usize {
        self.len
    }
}

impl From<ServerBinding> for BindingSlot {
    fn from(binding: ServerBinding) -> Self {
        Self::fixed(binding)
    }
}

impl fmt::Debug for BindingSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tenants = self.inner.by_tenant.read().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("BindingSlot")
            .field("resource", &self.inner.resource.resource().as_str())
            .field("fixed", &self.inner.fixed)
            .field("tenants", &tenants)
            .finish()
    }
}

pub(crate) fn parse_http_url(field: &'static str, value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value).map_err(|source| ConfigError::InvalidUrl { field, source })?;
    match url.scheme() {
        "http" | "https" if url.has_host() => Ok(url),
        _ => Err(ConfigError::UnsupportedUrl { field }),
    }
}

#[cfg(test)]
mod tests;
