//! The layers stacked as the README shows, against the loopback fixtures.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tower::{ServiceBuilder, ServiceExt};
use tower_mcp_auth::store::{CredentialStore, MemoryStore};
use tower_mcp_auth::testing::{
    ReqwestTransport, TestAuthServer, TestMcpServer, jsonrpc_request, read_jsonrpc,
};
use tower_mcp_auth::{
    AuthKey, BreakerConfig, CircuitBreakerLayer, Error, Principal, RefreshCoordinator,
    ServerBinding, SilentRefreshLayer, breaker::CircuitState,
    layer::circuit_breaker::BreakerKeying,
};

/// An authorization server, an MCP server, its binding, and a store holding alice's
/// credentials for it.
struct World {
    auth: TestAuthServer,
    mcp: TestMcpServer,
    url: String,
    binding: ServerBinding,
    store: Arc<MemoryStore>,
    alice: Principal,
}

impl World {
    async fn new() -> Self {
        let auth = TestAuthServer::start().await.unwrap();
        let mcp = TestMcpServer::start(&auth).await.unwrap();
        let url = mcp.url();
        let binding = ServerBinding::public_client(&url, &auth.token_endpoint(), "c").unwrap();
        let store = Arc::new(MemoryStore::new());
        let alice = Principal::new("acme", "alice");
        let key = AuthKey::new(&alice, binding.id());
        store
            .compare_and_swap(&key, None, auth.issue("c", "alice", None))
            .await
            .unwrap();
        Self {
            auth,
            mcp,
            url,
            binding,
            store,
            alice,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_outside_silent_refresh_ignores_401s_and_opens_on_outages() {
    let w = World::new().await;
    let key = AuthKey::new(&w.alice, w.binding.id());
    let breaker = CircuitBreakerLayer::new(
        BreakerConfig::default()
            .with_consecutive_failures(2)
            .with_open_backoff(Duration::from_secs(30), Duration::from_secs(60)),
    )
    .with_keying(BreakerKeying::OriginAndPrincipal);
    let handle = breaker.handle();
    let http = tower_mcp_auth::client::ReqwestService::builder()
        .expect("TLS")
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(breaker)
        .layer(SilentRefreshLayer::new(
            RefreshCoordinator::new(w.store.clone()),
            w.binding,
        ))
        .service(ReqwestTransport::from_client(http));
    let call = || {
        let mut request = jsonrpc_request(
            &w.url,
            1,
            "tools/call",
            json!({"name": "whoami", "arguments": {}}),
        );
        request.extensions_mut().insert(w.alice.clone());
        client.clone().oneshot(request)
    };

    // Revoked tokens: the 401s are handled inside; the circuit never sees a failure.
    for _ in 0..5 {
        w.auth.revoke_access_tokens("alice");
        let response = call().await.unwrap();
        assert_eq!(
            read_jsonrpc(&response).unwrap()["result"]["content"][0]["text"],
            "alice"
        );
    }
    assert_eq!(w.auth.stats().refresh_requests, 5);
    let snapshot = &handle.snapshots()[0];
    assert_eq!(
        (snapshot.state, snapshot.consecutive_failures),
        (CircuitState::Closed, 0)
    );

    // The MCP server goes away: two failures open alice's circuit; the third call fails fast.
    let before = w.store.load(&key).await.unwrap().unwrap();
    drop(w.mcp);
    assert!(call().await.is_err());
    assert!(call().await.is_err());
    let refused = call().await.unwrap_err();
    assert!(
        matches!(
            Error::find(refused.as_ref()),
            Some(Error::CircuitOpen { .. })
        ),
        "{refused}"
    );
    assert_eq!(handle.snapshots()[0].state, CircuitState::Open);
    let after = w.store.load(&key).await.unwrap().unwrap();
    assert_eq!(
        after.generation, before.generation,
        "an outage never touches credentials"
    );
}

/// The layers keep a clone of the inner service for replays; a service that is `Send`
/// but not `Sync` (tower's `BoxCloneService`) still makes `Send` services and futures,
/// spawned here, and a revoked token is refreshed and replayed through that clone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_only_inner_service_makes_a_send_stack_that_replays() {
    let w = World::new().await;
    let http = tower_mcp_auth::client::ReqwestService::new().expect("TLS");
    let inner = ServiceExt::<http::Request<tower_mcp_auth::ReplayBody>>::boxed_clone(http);
    let authorizer = tower_mcp_auth::Authorizer::builder(
        &w.url,
        w.store.clone(),
        "http://127.0.0.1:1/callback".parse().unwrap(),
    )
    .url_policy(tower_mcp_auth::UrlPolicy::default().allow_loopback_http())
    .build()
    .unwrap();
    authorizer.bindings().set("acme", w.binding).unwrap();
    let client = ServiceBuilder::new()
        .layer(tower_mcp_auth::OAuthRetryLayer::return_early(
            authorizer.clone(),
        ))
        .layer(SilentRefreshLayer::new(
            RefreshCoordinator::new(w.store),
            authorizer.bindings(),
        ))
        .service(inner);
    w.auth.revoke_access_tokens("alice");
    let mut request = jsonrpc_request(&w.url, 1, "tools/list", json!({}));
    request.extensions_mut().insert(w.alice);
    let response = tokio::spawn(client.oneshot(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(w.auth.stats().refresh_requests, 1);
    assert_eq!(
        w.mcp.stats().unauthorized,
        1,
        "the revoked token, then the replay"
    );
}
