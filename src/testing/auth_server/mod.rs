//! A real OAuth 2.0 authorization server on loopback, with failure knobs.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::json;

mod consent;
mod token;

use token::{oauth_error, whole_second_expiry};

use super::{ServerHandle, lock, random_token};
use crate::token::{Secret, TokenSet};

mod endpoints;
use endpoints::*;

mod state;
pub(crate) use state::AuthState;
use state::*;

/// A failure the authorization server injects into token requests.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// `500 Internal Server Error`.
    ServerError,
    /// `429 Too Many Requests` with `Retry-After: <seconds>`.
    TooManyRequests {
        /// The `Retry-After` value.
        retry_after_secs: u64,
    },
    /// `400 {"error":"invalid_grant"}`.
    InvalidGrant,
    /// `401 {"error":"invalid_client"}`.
    InvalidClient,
    /// Never answers.
    Hang,
    /// `400 {"error":"interaction_required","claims":…}` (Conditional Access).
    InteractionRequired {
        /// The claims challenge.
        claims: String,
    },
}

/// Counters of the token endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthServerStats {
    /// `grant_type=refresh_token` requests received.
    pub refresh_requests: u64,
    /// Refresh requests that returned new tokens.
    pub refresh_successes: u64,
    /// `invalid_grant` answers (reuse of a rotated token, revoked family, or injected).
    pub invalid_grants: u64,
    /// Refresh-token replays detected (each revokes the whole grant family).
    pub reuse_detected: u64,
    /// Requests answered with an injected fault.
    pub faults: u64,
    /// Requests for the metadata document (RFC 8414).
    pub metadata_requests: u64,
    /// Dynamic client registrations (RFC 7591).
    pub registrations: u64,
    /// `grant_type=authorization_code` requests.
    pub code_exchanges: u64,
    /// Visits of the authorization endpoint.
    pub authorization_requests: u64,
    /// On-Behalf-Of requests (`jwt-bearer` and `token-exchange` grants), faults included.
    pub obo_exchanges: u64,
    /// Refresh tokens revoked at `/revoke` (RFC 7009), each revoking its grant.
    pub revocations: u64,
}

/// What one refresh request carried (secrets left out).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordedTokenRequest {
    /// `grant_type`.
    pub grant_type: String,
    /// The client id, from Basic auth or the body.
    pub client_id: Option<String>,
    /// How the client authenticated: `"basic"`, `"post"`, `"private_key_jwt"` or `"none"`.
    pub client_auth: &'static str,
    /// The `resource` parameter (RFC 8707).
    pub resource: Option<String>,
    /// The `scope` parameter.
    pub scope: Option<String>,
    /// The `audience` parameter (RFC 8693).
    pub audience: Option<String>,
    /// `requested_token_use` (Entra On-Behalf-Of).
    pub requested_token_use: Option<String>,
}

/// The identity behind a valid access token.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenInfo {
    /// The user the grant was issued to.
    pub subject: String,
    /// The client it was issued to.
    pub client_id: String,
    /// The granted scope.
    pub scope: Option<String>,
}

/// An OAuth 2.0 authorization server on `127.0.0.1`, for tests, benchmarks and examples.
///
/// Its token endpoint (`POST /token`) serves `grant_type=refresh_token` with rotating,
/// single-use refresh tokens: presenting a used one is detected as reuse and revokes the
/// whole grant family, access tokens included (RFC 9700 §4.14.2), exactly as strict
/// production servers do. Knobs inject latency and failures; counters tell how many
/// redemptions happened. Dropping it stops the server.
///
/// ```
/// use tower_mcp_auth::testing::TestAuthServer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let auth = TestAuthServer::start().await?;
/// let tokens = auth.issue("client", "alice", Some("tools"));
/// assert_eq!(auth.validate(tokens.access_token.expose()).unwrap().subject, "alice");
/// # Ok(())
/// # }
/// ```
pub struct TestAuthServer {
    state: Arc<AuthState>,
    handle: ServerHandle,
}

impl TestAuthServer {
    /// Starts a server on an ephemeral loopback port. Access tokens live 1 hour unless
    /// [`set_access_token_lifetime`](Self::set_access_token_lifetime) says otherwise.
    pub async fn start() -> std::io::Result<Self> {
        let state = Arc::new(AuthState {
            issuer: Mutex::new(String::new()),
            assertion_key: assertion_key_pair(),
            tokens: Mutex::new(Tokens::default()),
            knobs: Mutex::new(Knobs {
                consenting_user: "alice".into(),
                metadata_issuer: None,
                access_token_lifetime: Duration::from_secs(3600),
                latency: Duration::ZERO,
                rotate_refresh_tokens: true,
                fault: None,
                interaction: false,
                deny: None,
                refuse_registration: None,
            }),
            counters: Counters::default(),
            refreshes_by_subject: Mutex::new(HashMap::new()),
            recorded: Mutex::new(Vec::new()),
            interactions: Mutex::new(HashMap::new()),
        });
        let router = Router::new()
            .route("/token", post(token::token_endpoint))
            .route("/.well-known/oauth-authorization-server", get(metadata))
            .route("/jwks.json", get(jwks))
            .route("/revoke", post(revoke))
            .route("/register", post(register))
            .route("/authorize", get(consent::authorize))
            .route("/interaction", get(consent::interaction))
            .with_state(state.clone());
        let handle = ServerHandle::spawn(router, ("127.0.0.1", 0)).await?;
        *lock(&state.issuer) = format!("http://{}", handle.addr);
        Ok(Self { state, handle })
    }

    /// The issuer, `http://127.0.0.1:<port>`.
    pub fn issuer(&self) -> String {
        format!("http://{}", self.handle.addr)
    }

    /// The token endpoint URL.
    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer())
    }

    /// Where the keys of its user assertions are published (a JWKS document).
    pub fn jwks_url(&self) -> String {
        format!("{}/jwks.json", self.issuer())
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.handle.addr
    }

    /// Registers a confidential client; token requests for it must authenticate with
    /// `secret` (Basic or form body). Clients not registered this way are public.
    pub fn register_client(&self, client_id: &str, secret: Option<&str>) {
        lock(&self.state.tokens)
            .clients
            .insert(client_id.to_owned(), secret.map(str::to_owned));
    }

    /// A user assertion, as the user's identity provider would issue it to `audience`
    /// (the middle-tier client that exchanges it): an ES256 JWT (its key at `/jwks.json`) this server accepts in
    /// its `jwt-bearer` and `token-exchange` grants until it expires.
    pub fn user_assertion(&self, subject: &str, audience: &str, lifetime: Duration) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.state.sign_assertion(&json!({
            "iss": self.issuer(),
            "sub": subject,
            "aud": audience,
            "iat": now.as_secs(),
            "exp": now.saturating_add(lifetime).as_secs(),
        }))
    }

    /// Issues a new grant (as an interactive login would) and returns its tokens.
    pub fn issue(&self, client_id: &str, subject: &str, scope: Option<&str>) -> TokenSet {
        let grant = Grant {
            family: self
                .state
                .counters
                .next_family
                .fetch_add(1, Ordering::Relaxed),
            subject: subject.to_owned(),
            client_id: client_id.to_owned(),
            scope: scope.map(str::to_owned),
        };
        let mut tokens = lock(&self.state.tokens);
        tokens.clients.entry(client_id.to_owned()).or_insert(None);
        let (access, refresh, lifetime) = self.state.mint(&mut tokens, &grant);
        let mut set = TokenSet::new(Secret::new(access))
            .with_refresh_token(Secret::new(refresh))
            .with_expires_in(lifetime);
        set.scope = grant.scope;
        set
    }

    /// The identity behind `access_token`, if it is valid now.
    pub fn validate(&self, access_token: &str) -> Option<TokenInfo> {
        self.state.validate(access_token)
    }

    /// Revokes every access token issued to `subject` (refresh tokens stay valid), so
    /// the resource server answers 401 mid-session.
    pub fn revoke_access_tokens(&self, subject: &str) {
        let mut tokens = lock(&self.state.tokens);
        for entry in tokens.access.values_mut() {
            if entry.grant.subject == subject {
                entry.revoked = true;
            }
        }
    }

    /// The user who consents at `/authorize` from now on (default `alice`).
    /// Makes `/authorize` behave like a real identity provider's login: it redirects to
    /// an interaction page and sets a session cookie, and the interaction page only
    /// consents (and redirects back) when the browser returns that cookie.
    pub fn set_interaction(&self, interaction: bool) {
        lock(&self.state.knobs).interaction = interaction;
    }

    /// Makes `/authorize` redirect back with this OAuth `error` (and description)
    /// instead of a code: `access_denied`, `invalid_scope`, `server_error`, ...
    /// `None` restores consent.
    pub fn set_authorization_error(&self, error: Option<(&str, Option<&str>)>) {
        lock(&self.state.knobs).deny =
            error.map(|(code, description)| (code.to_owned(), description.map(str::to_owned)));
    }

    /// Makes `/register` refuse every registration with this RFC 7591 error code
    /// (`invalid_client_metadata`, ...); `None` accepts them again.
    pub fn set_registration_error(&self, error: Option<&str>) {
        lock(&self.state.knobs).refuse_registration = error.map(str::to_owned);
    }

    /// Who consents at `/authorize`.
    pub fn set_consenting_user(&self, subject: &str) {
        lock(&self.state.knobs).consenting_user = subject.to_owned();
    }

    /// Forgets a registered client, as a server that lost or purged it: its next token
    /// request gets `invalid_client`.
    pub fn forget_client(&self, client_id: &str) {
        lock(&self.state.tokens).clients.remove(client_id);
    }

    /// Makes the metadata document claim another `issuer` (to test issuer validation).
    pub fn set_metadata_issuer(&self, issuer: &str) {
        lock(&self.state.knobs).metadata_issuer = Some(issuer.to_owned());
    }

    /// Lifetime of access tokens issued from now on.
    pub fn set_access_token_lifetime(&self, lifetime: Duration) {
        lock(&self.state.knobs).access_token_lifetime = lifetime;
    }

    /// Delay before the token endpoint answers.
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.state.knobs).latency = latency;
    }

    /// Whether refresh responses carry a new refresh token (default: yes, and the old one
    /// becomes single-use-spent). Without rotation the refresh token is reusable.
    pub fn set_rotation(&self, rotate: bool) {
        lock(&self.state.knobs).rotate_refresh_tokens = rotate;
    }

    /// Injects `fault` into every token request until [`heal`](Self::heal).
    pub fn fail_always(&self, fault: Fault) {
        lock(&self.state.knobs).fault = Some((fault, None));
    }

    /// Injects `fault` into the next `count` token requests.
    pub fn fail_next(&self, fault: Fault, count: u64) {
        lock(&self.state.knobs).fault = Some((fault, Some(count)));
    }

    /// Stops injecting faults.
    pub fn heal(&self) {
        lock(&self.state.knobs).fault = None;
    }

    /// Counters so far.
    pub fn stats(&self) -> AuthServerStats {
        let c = &self.state.counters;
        AuthServerStats {
            refresh_requests: c.refresh_requests.load(Ordering::SeqCst),
            refresh_successes: c.refresh_successes.load(Ordering::SeqCst),
            invalid_grants: c.invalid_grants.load(Ordering::SeqCst),
            reuse_detected: c.reuse_detected.load(Ordering::SeqCst),
            faults: c.faults.load(Ordering::SeqCst),
            metadata_requests: c.metadata_requests.load(Ordering::SeqCst),
            registrations: c.registrations.load(Ordering::SeqCst),
            code_exchanges: c.code_exchanges.load(Ordering::SeqCst),
            authorization_requests: c.authorization_requests.load(Ordering::SeqCst),
            obo_exchanges: c.obo_exchanges.load(Ordering::SeqCst),
            revocations: c.revocations.load(Ordering::SeqCst),
        }
    }

    /// Refresh requests received for `subject`'s grants.
    pub fn refresh_requests_for(&self, subject: &str) -> u64 {
        lock(&self.state.refreshes_by_subject)
            .get(subject)
            .copied()
            .unwrap_or(0)
    }

    /// The token requests received so far, in order.
    pub fn recorded_requests(&self) -> Vec<RecordedTokenRequest> {
        lock(&self.state.recorded).clone()
    }

    pub(crate) fn state(&self) -> Arc<AuthState> {
        self.state.clone()
    }
}

impl std::fmt::Debug for TestAuthServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestAuthServer")
            .field("addr", &self.handle.addr)
            .field("stats", &self.stats())
            .finish()
    }
}
