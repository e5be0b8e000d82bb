//! Shared harness: real loopback authorization + MCP servers and a client stack.
#![allow(dead_code)]

mod processes;
#[allow(unused_imports)] // not every test binary runs an external program
pub use processes::*;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tower::{BoxError, Layer, ServiceExt};
use tower_mcp_auth::store::{CredentialStore, MemoryStore, Swap};
use tower_mcp_auth::testing::{
    ReqwestTransport, TestAuthServer, TestMcpServer, jsonrpc_request, read_jsonrpc,
};
use tower_mcp_auth::{
    AuthKey, Principal, RefreshConfig, RefreshCoordinator, ServerBinding, SilentRefresh,
    SilentRefreshLayer, TokenSet,
};

pub const CLIENT_ID: &str = "test-client";

pub struct Harness {
    pub auth: TestAuthServer,
    pub mcp: TestMcpServer,
    pub store: Arc<MemoryStore>,
    pub coordinator: RefreshCoordinator,
    pub binding: ServerBinding,
    pub client: SilentRefresh<ReqwestTransport>,
}

impl Harness {
    pub async fn new(config: RefreshConfig) -> Self {
        let auth = TestAuthServer::start().await.unwrap();
        let mcp = TestMcpServer::start(&auth).await.unwrap();
        let binding = ServerBinding::public_client(&mcp.url(), &auth.token_endpoint(), CLIENT_ID)
            .unwrap()
            .with_issuer(auth.issuer());
        let store = Arc::new(MemoryStore::new());
        let coordinator = RefreshCoordinator::builder(store.clone())
            .config(config)
            .build();
        // A pool big enough that 512 concurrent calls do not queue on connections.
        let http = tower_mcp_auth::client::ReqwestService::builder()
            .expect("TLS")
            .pool_max_idle_per_host(1024)
            .build()
            .unwrap();
        let client = SilentRefreshLayer::new(coordinator.clone(), binding.clone())
            .layer(ReqwestTransport::from_client(http));
        Self {
            auth,
            mcp,
            store,
            coordinator,
            binding,
            client,
        }
    }

    pub fn key(&self, principal: &Principal) -> AuthKey {
        AuthKey::new(principal, self.binding.id())
    }

    /// An interactive login's result, stored as the newest generation.
    pub async fn login(&self, principal: &Principal) -> Arc<TokenSet> {
        let tokens = self
            .auth
            .issue(CLIENT_ID, principal.subject(), Some("tools"));
        self.store_tokens(principal, tokens).await
    }

    pub async fn store_tokens(&self, principal: &Principal, tokens: TokenSet) -> Arc<TokenSet> {
        let key = self.key(principal);
        let expected = self.store.load(&key).await.unwrap().map(|t| t.generation);
        match self
            .store
            .compare_and_swap(&key, expected, tokens)
            .await
            .unwrap()
        {
            Swap::Stored(stored) => stored,
            Swap::Conflict(_) => panic!("conflicting login"),
        }
    }

    /// Rewrites the stored token set as expired (same tokens).
    pub async fn expire(&self, principal: &Principal) -> Arc<TokenSet> {
        let key = self.key(principal);
        let mut tokens = (*self.store.load(&key).await.unwrap().unwrap()).clone();
        tokens.expires_at = Some(SystemTime::now() - Duration::from_secs(1));
        self.store_tokens(principal, tokens).await
    }

    pub async fn stored(&self, principal: &Principal) -> Option<Arc<TokenSet>> {
        self.store.load(&self.key(principal)).await.unwrap()
    }

    /// `tools/call whoami` as `principal`.
    pub async fn whoami(&self, principal: &Principal) -> Result<String, BoxError> {
        call_whoami(self.client.clone(), &self.mcp.url(), principal).await
    }
}

pub async fn call_whoami(
    client: SilentRefresh<ReqwestTransport>,
    url: &str,
    principal: &Principal,
) -> Result<String, BoxError> {
    let mut request = jsonrpc_request(
        url,
        1,
        "tools/call",
        json!({"name": "whoami", "arguments": {}}),
    );
    request.extensions_mut().insert(principal.clone());
    let response = client.oneshot(request).await?;
    if response.status() != 200 {
        return Err(format!("HTTP {}", response.status()).into());
    }
    let message: Value = read_jsonrpc(&response)?;
    Ok(message["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// Runs `n` concurrent `whoami` calls released together by a barrier.
pub async fn storm(h: &Harness, principal: &Principal, n: usize) -> Vec<Result<String, BoxError>> {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, url, principal, barrier) = (
                h.client.clone(),
                h.mcp.url(),
                principal.clone(),
                barrier.clone(),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                call_whoami(client, &url, &principal).await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

/// Every call succeeded as `user`; otherwise shows the first failure.
pub fn assert_all_ok(results: &[Result<String, BoxError>], user: &str) {
    if let Some(bad) = results.iter().find(|r| r.as_deref().ok() != Some(user)) {
        panic!(
            "{} of {} calls failed; first: {bad:?}",
            results
                .iter()
                .filter(|r| r.as_deref().ok() != Some(user))
                .count(),
            results.len()
        );
    }
}

/// Discovers the authorization server metadata behind `mcp` (loopback http allowed).
pub async fn discover_authorization_server(
    mcp: &TestMcpServer,
    challenge: Option<&tower_mcp_auth::oauth::BearerChallenge>,
) -> Arc<tower_mcp_auth::oauth::AuthorizationServerMetadata> {
    let policy = tower_mcp_auth::UrlPolicy::default().allow_loopback_http();
    let discovery =
        tower_mcp_auth::oauth::Discovery::new(tower_mcp_auth::AuthHttpClient::reqwest(), policy);
    let server: url::Url = mcp.url().parse().unwrap();
    let resource = discovery
        .protected_resource(&server, challenge)
        .await
        .unwrap();
    let issuer: url::Url = resource.authorization_servers[0].parse().unwrap();
    discovery.authorization_server(&issuer).await.unwrap()
}

/// The lease contract of a shared store, as two processes `a` and `b` see it: one
/// holder at a time, takeover after expiry with a larger fence, the stale holder's
/// write refused, and a lease on a moved generation reported as superseded.
pub async fn lease_contract<S: CredentialStore>(
    a: &S,
    b: &S,
    key: &AuthKey,
    tokens: impl Fn(&str) -> TokenSet,
) {
    use tower_mcp_auth::store::LeaseOutcome;
    let Swap::Stored(stored) = a.compare_and_swap(key, None, tokens("t1")).await.unwrap() else {
        panic!("first write")
    };
    let ttl = Duration::from_millis(300);
    let LeaseOutcome::Acquired(lease_a) =
        a.acquire_lease(key, stored.generation, ttl).await.unwrap()
    else {
        panic!("first acquire")
    };
    assert!(matches!(
        b.acquire_lease(key, stored.generation, ttl).await.unwrap(),
        LeaseOutcome::Held(left) if left <= ttl
    ));
    // The holder stalls past its lease; the other process takes over.
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    let LeaseOutcome::Acquired(lease_b) =
        b.acquire_lease(key, stored.generation, ttl).await.unwrap()
    else {
        panic!("takeover")
    };
    assert!(lease_b.fence > lease_a.fence);
    // The stale holder's write carries a lost fence: nothing is written.
    assert!(matches!(
        a.compare_and_swap_fenced(key, Some(stored.generation), tokens("stale"), lease_a)
            .await
            .unwrap(),
        Swap::Conflict(_)
    ));
    let Swap::Stored(fresh) = b
        .compare_and_swap_fenced(key, Some(stored.generation), tokens("fresh"), lease_b)
        .await
        .unwrap()
    else {
        panic!("the holder writes")
    };
    // A lease on a generation that moved on says so and hands over what is stored.
    assert!(matches!(
        a.acquire_lease(key, stored.generation, ttl).await.unwrap(),
        LeaseOutcome::Superseded(Some(now)) if now.generation == fresh.generation
    ));
}

/// A token set for store tests: access token `access`, refresh token `rt-<access>`, an
/// hour's lifetime, scope `tools`.
pub fn sample_tokens(access: &str) -> TokenSet {
    TokenSet::new(tower_mcp_auth::Secret::new(access))
        .with_refresh_token(tower_mcp_auth::Secret::new(format!("rt-{access}")))
        .with_expires_in(Duration::from_secs(3600))
        .with_scope("tools")
}
