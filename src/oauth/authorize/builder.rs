//! Building an [`Authorizer`]: what the client is, where its state lives, which servers
//! it trusts.

use std::fmt;
use std::sync::Arc;

use url::Url;

use super::{Authorizer, Inner};
use crate::binding::BindingSlot;
use crate::fault::ConfigError;
use crate::http_client::AuthHttpClient;
use crate::oauth::discovery::Discovery;
use crate::oauth::flow::FlowStore;
use crate::oauth::registration::{ClientConfig, PreRegisteredClient, Registrar};
use crate::store::{CredentialStore, SharedRecords};
use crate::url_policy::UrlPolicy;

/// Builds an [`Authorizer`].
#[must_use]
pub struct AuthorizerBuilder {
    server: String,
    store: Arc<dyn CredentialStore>,
    /// What the client is; its resource is set from discovery at each start.
    client: ClientConfig,
    http: Option<AuthHttpClient>,
    policy: UrlPolicy,
    flows: Option<FlowStore>,
    allowed_issuers: Option<Vec<String>>,
    start_endpoint: Option<Url>,
    records: Option<Arc<dyn SharedRecords>>,
    scopes: Vec<String>,
}

impl fmt::Debug for AuthorizerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizerBuilder")
            .field("server", &self.server)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl AuthorizerBuilder {
    /// The client name shown on consent screens (default `tower-mcp-auth`).
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client.client_name = name.into();
        self
    }

    /// The HTTP client for metadata, registration and token calls (default:
    /// [`AuthHttpClient::with_policy`] with this builder's URL policy).
    pub fn http_client(mut self, http: AuthHttpClient) -> Self {
        self.http = Some(http);
        self
    }

    /// The policy for every URL learned from a server (default: https only, no
    /// private ranges).
    pub fn url_policy(mut self, policy: UrlPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Shares this flow store (default: a new one with a 15 minute TTL).
    pub fn flows(mut self, flows: FlowStore) -> Self {
        self.flows = Some(flows);
        self
    }

    /// Keeps flows and client registrations in `records` (the `SqliteStore` or
    /// `RedisStore` the replicas share, usually the credential store itself): a flow
    /// started on one replica completes through a callback on any other and wakes the
    /// request waiting on the first; every replica and restart reuses one registration.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use tower_mcp_auth::store::SqliteStore;
    /// use tower_mcp_auth::Authorizer;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = Arc::new(SqliteStore::open("/var/lib/app/credentials.db")?);
    /// let authorizer = Authorizer::builder("https://mcp.example.com/mcp", store.clone(),
    ///         "https://app.example.com/oauth/callback".parse()?)
    ///     .shared_state(store)
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn shared_state(mut self, records: Arc<dyn SharedRecords>) -> Self {
        self.flows = Some(FlowStore::shared(records.clone()));
        self.records = Some(records);
        self
    }

    /// The app's start endpoint (served by [`CallbackService`](crate::layer::callback::CallbackService),
    /// e.g. `https://app.example.com/oauth/start`): the URL handed to authorization
    /// handlers and in [`Error::AuthorizationRequired`](crate::Error::AuthorizationRequired) becomes this endpoint with
    /// `?flow=<state>`, which sets the browser-binding cookie the callback checks and
    /// redirects to the authorization server. Without it, browsers are sent to the
    /// authorization URL directly and the app must set the cookie itself
    /// ([`BrowserBinding::start_response`](crate::layer::callback::BrowserBinding::start_response)).
    pub fn start_url(mut self, start: Url) -> Self {
        self.start_endpoint = Some(start);
        self
    }

    /// Scopes requested in every authorization, in addition to those the server's
    /// challenge or metadata ask for (e.g. a scope the server needs for a tool it only
    /// checks at call time).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tower_mcp_auth::{store::MemoryStore, Authorizer};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let authorizer = Authorizer::builder(
    ///     "https://mcp.example.com/mcp",
    ///     Arc::new(MemoryStore::new()),
    ///     "https://app.example.com/oauth/callback".parse()?,
    /// )
    /// .scopes(["files:write"])
    /// .build()?;
    /// # let _ = authorizer;
    /// # Ok(())
    /// # }
    /// ```
    pub fn scopes(mut self, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Uses pre-registered client credentials at their issuer (first in the
    /// registration order there; other issuers get a metadata document or dynamic
    /// registration). Call once per authorization server.
    pub fn pre_registered(mut self, client: PreRegisteredClient) -> Self {
        self.client = self.client.with_pre_registered(client);
        self
    }

    /// Accepts only these authorization servers (issuer identifiers, compared exactly):
    /// an MCP server naming any other fails discovery with
    /// [`DiscoveryError::AuthorizationServerNotAllowed`](crate::oauth::discovery::DiscoveryError::AuthorizationServerNotAllowed) before anything is sent there.
    /// Default: any issuer the URL policy allows.
    pub fn allowed_authorization_servers(
        mut self,
        issuers: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.allowed_issuers = Some(issuers.into_iter().map(Into::into).collect());
        self
    }

    /// This client's Client ID Metadata Document URL, used as the `client_id` where
    /// the authorization server supports it (second in the registration order).
    pub fn metadata_document(mut self, url: Url) -> Self {
        self.client = self.client.with_metadata_document(url);
        self
    }

    /// Builds the authorizer.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the server URL is not an absolute http(s) URL, or the URL
    /// policy refuses it (e.g. `http://127.0.0.1` without
    /// [`UrlPolicy::allow_loopback_http`]): better now than at the first request.
    pub fn build(self) -> Result<Authorizer, ConfigError> {
        let bindings = BindingSlot::new(&self.server)?;
        let server = bindings.resource().clone();
        self.policy
            .check(&server)
            .map_err(|source| ConfigError::Refused {
                field: "server",
                source,
            })?;
        // By default the HTTP client checks resolved addresses against the same policy.
        let http = self
            .http
            .unwrap_or_else(|| AuthHttpClient::with_policy(self.policy));
        let mut client = self.client;
        client.resource = server.to_string();
        Ok(Authorizer {
            inner: Arc::new(Inner {
                server,
                bindings,
                discovery: Discovery::new(http.clone(), self.policy),
                registrar: match self.records {
                    Some(records) => {
                        Registrar::new(http.clone(), self.policy).with_records(records)
                    }
                    None => Registrar::new(http.clone(), self.policy),
                },
                flows: self.flows.unwrap_or_default(),
                store: self.store,
                http,
                policy: self.policy,
                client,
                allowed_issuers: self.allowed_issuers,
                start_endpoint: self.start_endpoint,
                scopes: self.scopes,
            }),
        })
    }
}

impl Authorizer {
    /// Starts building an authorizer for the MCP server at `server`, storing
    /// credentials in `store`, with browsers sent back to `redirect_uri`.
    pub fn builder(
        server: impl Into<String>,
        store: Arc<dyn CredentialStore>,
        redirect_uri: Url,
    ) -> AuthorizerBuilder {
        AuthorizerBuilder {
            server: server.into(),
            store,
            client: ClientConfig::new(redirect_uri, String::new(), "tower-mcp-auth"),
            http: None,
            policy: UrlPolicy::default(),
            flows: None,
            allowed_issuers: None,
            start_endpoint: None,
            records: None,
            scopes: Vec::new(),
        }
    }
}
