//! Starting an interactive authorization for one MCP server: discovery, client
//! registration, scope selection and a PENDING flow, in that order.
//!
//! This is the protocol half of [`OAuthRetryLayer`](crate::OAuthRetryLayer); it knows
//! nothing of Tower and can drive a login from anywhere (a UI's "connect" button, a CLI).

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use url::Url;

use crate::binding::BindingSlot;
use crate::challenge::BearerChallenge;
use crate::error::Error;
use crate::http_client::AuthHttpClient;
use crate::key::{AuthKey, Principal};
use crate::oauth::callback::AuthorizationCompleter;
use crate::oauth::discovery::{
    AuthorizationServerMetadata, Discovery, DiscoveryError, ProtectedResourceMetadata,
};
use crate::oauth::flow::{AuthorizationRequest, FlowHandle, FlowOutcome, FlowStore, PendingFlow};
use crate::oauth::registration::{ClientConfig, Registrar};
use crate::oauth::scopes::select_scopes;
use crate::store::CredentialStore;
use crate::token::Secret;
use crate::token::TokenStamp;
use crate::url_policy::UrlPolicy;

mod bind;
mod builder;
mod cause;

pub use builder::AuthorizerBuilder;
pub use cause::AuthorizationCause;

/// Starts interactive authorizations for one MCP server and shares their state with
/// the callback endpoint and [`SilentRefreshLayer`](crate::SilentRefreshLayer).
///
/// [`start`](Self::start) runs discovery (protected resource metadata, then the
/// authorization server's metadata, with the 2025-03-26 fallbacks when the server
/// publishes no resource metadata), checks PKCE `S256` support, registers or reuses
/// a client ([`Registrar`]), fills the [`BindingSlot`] for the principal's tenant,
/// selects scopes (the challenge's `scope`, else the resource's `scopes_supported`,
/// else none; `offline_access` added when the authorization server lists it and
/// scopes are requested at all) and persists a PENDING flow ([`FlowStore`]) before
/// anyone sees its URL.
///
/// ```
/// use std::sync::Arc;
/// use tower_mcp_auth::{store::MemoryStore, Authorizer, SilentRefreshLayer, RefreshCoordinator};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = Arc::new(MemoryStore::new());
/// let authorizer = Authorizer::builder(
///     "https://mcp.example.com/mcp",
///     store.clone(),
///     "https://app.example.com/oauth/callback".parse()?,
/// )
/// .client_name("Example Chat")
/// .build()?;
/// // Silent refresh finds the client the authorizer registers, per tenant:
/// let silent = SilentRefreshLayer::new(RefreshCoordinator::new(store), authorizer.bindings());
/// // The callback endpoint completes the authorizer's flows:
/// let completer = authorizer.completer();
/// # let _ = (silent, completer);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Authorizer {
    inner: Arc<Inner>,
}

struct Inner {
    server: Url,
    bindings: BindingSlot,
    discovery: Discovery,
    registrar: Registrar,
    flows: FlowStore,
    store: Arc<dyn CredentialStore>,
    http: AuthHttpClient,
    policy: UrlPolicy,
    client: ClientConfig,
    allowed_issuers: Option<Vec<String>>,
    start_endpoint: Option<Url>,
    /// Requested in every authorization, besides what the server asks for.
    scopes: Vec<String>,
}

impl fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorizer")
            .field("server", &self.inner.server.as_str())
            .field("client", &self.inner.client)
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

/// What [`Authorizer::bind`] learned: the server's metadata and the tenant's binding.
struct Bound {
    resource_metadata: Option<Arc<ProtectedResourceMetadata>>,
    metadata: Arc<AuthorizationServerMetadata>,
    binding: crate::ServerBinding,
    authorization_endpoint: Url,
}

impl Authorizer {
    /// The MCP server.
    pub fn server(&self) -> &Url {
        &self.inner.server
    }

    /// Revokes `refresh_token` of `principal` at the authorization server (RFC 7009),
    /// e.g. when the user disconnects: delete the stored credentials first, then
    /// revoke. `Ok(false)`: the server publishes no revocation endpoint, or the tenant
    /// has no client binding here.
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use tower_mcp_auth::{store::{CredentialStore, MemoryStore}, AuthKey, Authorizer, Principal};
    /// # async fn disconnect(authorizer: Authorizer, store: Arc<MemoryStore>) -> Result<(), tower_mcp_auth::Error> {
    /// let alice = Principal::new("acme", "alice");
    /// if let Some(binding) = authorizer.bindings().get(alice.tenant()) {
    ///     let key = AuthKey::new(&alice, binding.id());
    ///     if let Ok(Some(tokens)) = store.load(&key).await {
    ///         let _ = store.delete(&key, tokens.generation).await;
    ///         if let Some(refresh_token) = &tokens.refresh_token {
    ///             authorizer.revoke(&alice, refresh_token).await?;
    ///         }
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn revoke(
        &self,
        principal: &Principal,
        refresh_token: &crate::Secret,
    ) -> Result<bool, Error> {
        let Some(binding) = self.inner.bindings.get(principal.tenant()) else {
            return Ok(false);
        };
        let (_, metadata) = self.discover(None).await?;
        let Some(endpoint) = metadata.revocation_endpoint.as_deref() else {
            return Ok(false);
        };
        let endpoint = bind::endpoint(&metadata, Some(endpoint))?;
        self.inner
            .policy
            .check(&endpoint)
            .map_err(|refused| Error::Discovery(DiscoveryError::Refused(refused)))?;
        crate::oauth::grants::revoke_refresh_token(
            &self.inner.http,
            &binding,
            &endpoint,
            refresh_token,
        )
        .await
        .map_err(Error::from)?;
        Ok(true)
    }

    /// The credential store the authorizer writes to: what a "connections" page reads
    /// to show whether a user is signed in, and deletes from to sign them out.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use tower_mcp_auth::{store::MemoryStore, Authorizer};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = Arc::new(MemoryStore::new());
    /// let authorizer = Authorizer::builder(
    ///     "https://mcp.example.com/mcp",
    ///     store.clone(),
    ///     "https://app.example.com/oauth/callback".parse()?,
    /// )
    /// .build()?;
    /// assert_eq!(Arc::as_ptr(authorizer.store()) as *const (), Arc::as_ptr(&store) as *const ());
    /// # Ok(())
    /// # }
    /// ```
    pub fn store(&self) -> &Arc<dyn CredentialStore> {
        &self.inner.store
    }

    /// The slot holding each tenant's binding, for
    /// [`SilentRefreshLayer::new`](crate::SilentRefreshLayer::new).
    pub fn bindings(&self) -> BindingSlot {
        self.inner.bindings.clone()
    }

    /// Whether a request to `uri` is for this server (no clone of the slot per request).
    pub(crate) fn covers(&self, uri: &http::Uri) -> bool {
        self.inner.bindings.covers(uri)
    }

    /// The flow store.
    pub fn flows(&self) -> &FlowStore {
        &self.inner.flows
    }

    /// A completer for this authorizer's flows, for the callback endpoint
    /// ([`CallbackService`](crate::layer::callback::CallbackService)).
    pub fn completer(&self) -> AuthorizationCompleter {
        AuthorizationCompleter::new(
            self.inner.flows.clone(),
            self.inner.store.clone(),
            self.inner.http.clone(),
        )
    }

    /// Ends the flow of `state` as failed (first outcome wins), e.g. when the
    /// authorization URL could not be delivered to the user.
    pub async fn fail_flow(&self, state: &Secret, reason: impl Into<String>) -> bool {
        self.inner
            .flows
            .complete(state.expose(), FlowOutcome::Failed(reason.into()))
            .await
    }

    /// Whether `principal` holds usable credentials for this server obtained at or
    /// after `since`: a request sent before then and refused may simply be replayed
    /// (someone else's authorization or refresh finished in between).
    pub async fn has_credentials_since(&self, principal: &Principal, since: SystemTime) -> bool {
        self.credentials_since(principal, since, None)
            .await
            .is_some()
    }

    /// [`has_credentials_since`](Self::has_credentials_since) for a request that
    /// carried the token set `carried`: that one never counts as newer, whatever
    /// `since` says (which may then be read from a coarse clock).
    pub(crate) async fn has_credentials_newer_than(
        &self,
        principal: &Principal,
        since: SystemTime,
        carried: Option<TokenStamp>,
    ) -> bool {
        self.credentials_since(principal, since, carried)
            .await
            .is_some()
    }

    /// The generation of the usable credentials of `principal` obtained at or after
    /// `since`, other than `except`, if there are any.
    async fn credentials_since(
        &self,
        principal: &Principal,
        since: SystemTime,
        except: Option<TokenStamp>,
    ) -> Option<crate::token::Generation> {
        let binding = self.inner.bindings.get(principal.tenant())?;
        let key = AuthKey::new(principal, binding.id());
        match self.inner.store.load(&key).await {
            Ok(Some(tokens))
                if tokens.obtained_at >= since
                    && tokens.is_usable()
                    && except != Some(tokens.stamp()) =>
            {
                Some(tokens.generation)
            }
            _ => None,
        }
    }

    /// Ends a flow this process just started as completed when credentials obtained at
    /// or after `since`, other than `carried`, are already stored: another flow finished between the caller's
    /// last look and this start (credentials are stored before a flow is marked done, so
    /// one look after the start closes the gap). Its URL is never shown, and a waiter
    /// that joined it meanwhile replays with those credentials. `false`: none, the flow
    /// goes on.
    pub(crate) async fn settle_if_superseded(
        &self,
        principal: &Principal,
        since: SystemTime,
        carried: Option<TokenStamp>,
        state: &Secret,
    ) -> bool {
        let Some(generation) = self.credentials_since(principal, since, carried).await else {
            return false;
        };
        self.inner
            .flows
            .complete(state.expose(), FlowOutcome::Completed(generation))
            .await
    }

    /// The open authorization flow of `principal` for this server, if any (started by
    /// this process or, with [`shared_state`](AuthorizerBuilder::shared_state), by
    /// another one).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tower_mcp_auth::{store::MemoryStore, Authorizer, Principal};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let authorizer = Authorizer::builder(
    ///     "https://mcp.example.com/mcp",
    ///     Arc::new(MemoryStore::new()),
    ///     "https://app.example.com/oauth/callback".parse()?,
    /// )
    /// .build()?;
    /// // Nothing was started for this user (the tenant is not even bound yet).
    /// assert!(authorizer.open_flow(&Principal::new("acme", "alice")).await.is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn open_flow(&self, principal: &Principal) -> Option<Arc<PendingFlow>> {
        let binding = self.inner.bindings.get(principal.tenant())?;
        let key = AuthKey::new(principal, binding.id());
        self.inner.flows.open_flow(&key).await
    }

    /// Whether the store holds credentials of `principal` for this server that are
    /// usable or can be refreshed.
    pub(crate) async fn has_stored_credentials(&self, principal: &Principal) -> bool {
        let Some(binding) = self.inner.bindings.get(principal.tenant()) else {
            return false;
        };
        let key = AuthKey::new(principal, binding.id());
        matches!(
            self.inner.store.load(&key).await,
            Ok(Some(tokens)) if tokens.is_usable() || tokens.refresh_token.is_some()
        )
    }

    /// Starts (or joins) an authorization of `principal` for this server. When this
    /// returns, the flow is persisted PENDING and its URL may be shown.
    ///
    /// # Errors
    ///
    /// [`Error::Discovery`] (including a resource metadata document for another
    /// resource, and an authorization server without PKCE `S256`) and
    /// [`Error::Registration`]; no authorization request is made then.
    pub async fn start(
        &self,
        principal: &Principal,
        cause: &AuthorizationCause,
    ) -> Result<FlowHandle, Error> {
        let inner = &*self.inner;
        let challenge = cause.challenge.as_ref();
        let Bound {
            resource_metadata,
            metadata,
            binding,
            authorization_endpoint,
        } = self.bind(principal.tenant(), cause).await?;
        let key = AuthKey::new(principal, binding.id());
        let granted = match inner.store.load(&key).await {
            Ok(Some(tokens)) => tokens.scope.clone(),
            _ => None,
        };
        let scopes = select_scopes(
            challenge,
            resource_metadata.as_deref(),
            &metadata,
            inner
                .scopes
                .iter()
                .chain(&cause.previous_scopes)
                .map(String::as_str)
                .chain(granted.as_deref().unwrap_or_default().split_whitespace()),
        );
        let request = AuthorizationRequest::new(
            binding,
            authorization_endpoint,
            inner.client.redirect_uri.clone(),
        )
        .with_scopes(scopes)
        .with_required_iss(metadata.authorization_response_iss_parameter_supported == Some(true));
        let request = match &inner.start_endpoint {
            Some(start) => request.with_start_endpoint(start.clone()),
            None => request,
        };
        let flow = inner.flows.start_or_join(&key, request).await;
        if !flow.joined() {
            crate::metrics::count(crate::metrics::FLOWS_STARTED);
        }
        tracing::debug!(
            key = %key,
            joined = flow.joined(),
            scopes = ?flow.pending().request.scopes,
            "authorization flow pending"
        );
        Ok(flow)
    }

    /// Fills `principal`'s tenant's binding from discovery and the stored (or a new)
    /// client registration, unless it is filled already. After a restart the slot is
    /// empty until then, so requests went out without the credentials the store holds.
    /// Call it before reading a user's stored credentials for this server outside the
    /// layers (a status page), so the key names the binding the layers will use.
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use tower_mcp_auth::{store::MemoryStore, oauth::AuthorizationCause, Authorizer, Principal};
    /// # async fn run(authorizer: Authorizer) -> Result<(), tower_mcp_auth::Error> {
    /// let alice = Principal::new("acme", "alice");
    /// authorizer.restore_binding(&alice, &AuthorizationCause::challenge(None)).await?;
    /// assert!(authorizer.bindings().get(alice.tenant()).is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn restore_binding(
        &self,
        principal: &Principal,
        cause: &AuthorizationCause,
    ) -> Result<(), Error> {
        if self.inner.bindings.get(principal.tenant()).is_none() {
            self.bind(principal.tenant(), cause).await?;
        }
        Ok(())
    }
}
