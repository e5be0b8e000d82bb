//! Who a request acts for, and the key all per-user state is stored under.

use std::fmt;
use std::sync::Arc;

use http::Extensions;

/// The tenant and user a request acts for, carried in the request's
/// [`http::Extensions`].
///
/// One layer stack serves many users: every piece of state (tokens, in-flight
/// refreshes, cooldowns) is keyed by the principal together with the server binding.
///
/// ```
/// use tower_mcp_auth::Principal;
///
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(Principal::new("acme", "alice"));
/// assert_eq!(Principal::from_extensions(request.extensions()).unwrap().subject(), "alice");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal {
    tenant: Arc<str>,
    subject: Arc<str>,
}

impl Principal {
    /// A principal: `subject` (the user) within `tenant`.
    pub fn new(tenant: impl Into<Arc<str>>, subject: impl Into<Arc<str>>) -> Self {
        Self {
            tenant: tenant.into(),
            subject: subject.into(),
        }
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The user within the tenant.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The principal a request carries, if any.
    pub fn from_extensions(extensions: &Extensions) -> Option<&Principal> {
        extensions.get::<Principal>()
    }
}

/// A SHA-256 digest of a server binding (resource URL, issuer, client id).
///
/// Two bindings that differ in any of these never share state.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BindingId(pub(crate) [u8; 32]);

impl BindingId {
    /// The digest's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for BindingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BindingId({self})")
    }
}

impl fmt::Display for BindingId {
    /// The first 8 bytes in hex: enough to tell bindings apart in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0[..8].iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// The key of all per-user state: tenant, principal and server binding.
///
/// ```
/// use tower_mcp_auth::{AuthKey, Principal, ServerBinding};
///
/// let binding = ServerBinding::public_client(
///     "https://mcp.example.com/mcp",
///     "https://auth.example.com/token",
///     "my-client",
/// )?;
/// let alice_acme = AuthKey::new(&Principal::new("acme", "alice"), binding.id());
/// let alice_other = AuthKey::new(&Principal::new("other", "alice"), binding.id());
/// assert_ne!(alice_acme, alice_other);
/// # Ok::<(), tower_mcp_auth::ConfigError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AuthKey {
    principal: Principal,
    binding: BindingId,
}

impl AuthKey {
    /// The key for `principal` at the server `binding`.
    pub fn new(principal: &Principal, binding: BindingId) -> Self {
        Self {
            principal: principal.clone(),
            binding,
        }
    }

    /// The principal part.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The binding part.
    pub fn binding(&self) -> BindingId {
        self.binding
    }
}

impl fmt::Display for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.principal.tenant, self.principal.subject, self.binding
        )
    }
}
