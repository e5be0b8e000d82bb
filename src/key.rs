//! Who a request acts for, and the key all per-user state is stored under.

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::{Arc, OnceLock};

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
#[derive(Clone)]
pub struct Principal {
    /// Tenant and subject in one allocation (the tenant is `names[..split]`): a clone,
    /// made for every request's state key and replay copy, is one reference count.
    names: Arc<str>,
    split: usize,
    /// Hashed once, at construction: every lookup of per-user state hashes the key, and
    /// a clone carries this along instead of hashing both strings again.
    hash: u64,
    /// The tenant's own keyed hash ([`tenant_hash`]), for per-tenant lookups.
    tenant_hash: u64,
    /// Set on a request's own principal by an `OAuthRetryLayer` for the
    /// `SilentRefreshLayer` below, which takes it off: "hand me the request back if it
    /// fails" (`layer::hand_back`). Riding on the principal, which both layers look up
    /// anyway, it costs no lookup of its own. Never compared, hashed or printed.
    hand_back_wanted: bool,
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("tenant", &self.tenant())
            .field("subject", &self.subject())
            .finish()
    }
}

impl PartialEq for Principal {
    fn eq(&self, other: &Self) -> bool {
        // Equal texts with equal splits: the same tenant and the same subject.
        self.hash == other.hash && self.split == other.split && self.names == other.names
    }
}

impl Eq for Principal {}

impl Hash for Principal {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// The keyed hasher (SipHash with a per-process random key, as `HashMap`'s default),
/// so user-chosen names cannot be picked to collide.
fn keyed_hasher() -> impl Hasher + Clone {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    KEY.get_or_init(RandomState::new).build_hasher()
}

/// The keyed hashes of `tenant` alone and of the principal: one pass over the names.
fn principal_hashes(tenant: &str, subject: &str) -> (u64, u64) {
    let mut hasher = keyed_hasher();
    tenant.hash(&mut hasher);
    let tenant_hash = hasher.clone().finish();
    subject.hash(&mut hasher);
    (tenant_hash, hasher.finish())
}

/// The keyed hash of a tenant's name, as [`Principal`]s carry it.
pub(crate) fn tenant_hash(tenant: &str) -> u64 {
    let mut hasher = keyed_hasher();
    tenant.hash(&mut hasher);
    hasher.finish()
}

/// `first` and `second` as one `Arc<str>`, in one allocation when they are short.
fn joined(first: &str, second: &str) -> Arc<str> {
    let mut buffer = [0u8; 128];
    let len = first.len() + second.len();
    if len > buffer.len() {
        return Arc::from([first, second].concat());
    }
    buffer[..first.len()].copy_from_slice(first.as_bytes());
    buffer[first.len()..len].copy_from_slice(second.as_bytes());
    // Two `str`s end to end are UTF-8.
    match std::str::from_utf8(&buffer[..len]) {
        Ok(names) => Arc::from(names),
        Err(_) => Arc::from([first, second].concat()),
    }
}

impl Principal {
    /// A principal: `subject` (the user) within `tenant`.
    pub fn new(tenant: impl AsRef<str>, subject: impl AsRef<str>) -> Self {
        let (tenant, subject) = (tenant.as_ref(), subject.as_ref());
        let (tenant_hash, hash) = principal_hashes(tenant, subject);
        Self {
            hash,
            tenant_hash,
            names: joined(tenant, subject),
            split: tenant.len(),
            hand_back_wanted: false,
        }
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        &self.names[..self.split]
    }

    /// The user within the tenant.
    pub fn subject(&self) -> &str {
        &self.names[self.split..]
    }

    /// [`tenant_hash`] of the tenant, computed with the principal.
    pub(crate) fn tenant_hash(&self) -> u64 {
        self.tenant_hash
    }

    /// Marks this (a request's own) principal: the request is wanted back should it fail.
    pub(crate) fn want_hand_back(&mut self) {
        self.hand_back_wanted = true;
    }

    /// Takes the mark of [`want_hand_back`](Self::want_hand_back) off: whether it was set.
    pub(crate) fn take_hand_back(&mut self) -> bool {
        std::mem::take(&mut self.hand_back_wanted)
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
    /// The binding id whose digest is `bytes`: one read back from a store of your own,
    /// or a fixed one for a key no real binding has (a health probe's).
    ///
    /// ```
    /// use tower_mcp_auth::binding::BindingId;
    ///
    /// let probe = BindingId::from_bytes([0; 32]);
    /// assert_eq!(probe.as_bytes(), &[0; 32]);
    /// ```
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

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
/// # Ok::<(), tower_mcp_auth::error::ConfigError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthKey {
    principal: Principal,
    binding: BindingId,
}

impl Hash for AuthKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.key_hash());
    }
}

impl AuthKey {
    /// The key for `principal` at the server `binding`.
    pub fn new(principal: &Principal, binding: BindingId) -> Self {
        Self {
            principal: principal.clone(),
            binding,
        }
    }

    /// The key for `principal`, taken, at the server `binding`.
    pub(crate) fn of(principal: Principal, binding: BindingId) -> Self {
        Self { principal, binding }
    }

    /// The principal part.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The principal part, taken.
    pub(crate) fn into_principal(self) -> Principal {
        self.principal
    }

    /// The binding part.
    pub fn binding(&self) -> BindingId {
        self.binding
    }

    /// The principal's keyed hash mixed with the binding digest (already uniform: a
    /// SHA-256 prefix). No hashing per lookup.
    pub(crate) fn key_hash(&self) -> u64 {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&self.binding.0[..8]);
        (self.principal.hash ^ u64::from_le_bytes(prefix)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

/// A `Hasher` for maps keyed by [`AuthKey`], whose `Hash` is one precomputed `u64`:
/// passes it through instead of hashing it again.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for `AuthKey`; any other input still spreads.
        for &byte in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

impl fmt::Display for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.principal.tenant(),
            self.principal.subject(),
            self.binding
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The precomputed hashes keep `Hash` consistent with `Eq`: a principal or key built
    /// again from the same names finds what a clone stored, and different names differ.
    #[test]
    fn keys_rebuilt_from_the_same_names_find_the_same_entry() {
        let binding = BindingId([7; 32]);
        let mut map: HashMap<AuthKey, u32, std::hash::BuildHasherDefault<KeyHasher>> =
            HashMap::default();
        for i in 0..1000 {
            let principal = Principal::new("acme", format!("user-{i}"));
            map.insert(AuthKey::new(&principal.clone(), binding), i);
        }
        for i in 0..1000 {
            let key = AuthKey::new(&Principal::new("acme", format!("user-{i}")), binding);
            assert_eq!(map.get(&key), Some(&i));
        }
        // The tenant/subject split is part of the identity.
        assert_ne!(Principal::new("ab", "c"), Principal::new("a", "bc"));
        let other = AuthKey::new(&Principal::new("acme", "user-1"), BindingId([8; 32]));
        assert!(!map.contains_key(&other));
        assert_eq!(
            format!("{:?}", Principal::new("acme", "alice")),
            r#"Principal { tenant: "acme", subject: "alice" }"#
        );
    }
}
