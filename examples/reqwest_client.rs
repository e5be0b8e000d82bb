//! A reqwest user's stack: `SilentRefreshLayer` + `CircuitBreakerLayer` over
//! `tower_mcp_auth::client::ReqwestService` (reqwest 0.13, streaming both ways),
//! against real loopback servers. The MCP server answers with SSE; the events are
//! printed as they arrive, not after the body ends. Alice's token is revoked before
//! the second call, which is refreshed and replayed without her noticing.
//!
//! Run: `cargo run --example reqwest_client`

use std::sync::Arc;

use http_body_util::BodyExt;
use serde_json::json;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_mcp_auth::client::{HttpClientConfig, ReqwestService};
use tower_mcp_auth::store::{CredentialStore, MemoryStore};
use tower_mcp_auth::testing::{TestAuthServer, TestMcpServer};
use tower_mcp_auth::{
    AuthKey, BreakerConfig, CircuitBreakerLayer, Principal, RefreshCoordinator, ServerBinding,
    SilentRefreshLayer,
};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let auth = TestAuthServer::start().await?;
    let mcp = TestMcpServer::start(&auth).await?;
    mcp.set_sse(true);

    // Alice logged in earlier: her tokens are in the store.
    let binding =
        ServerBinding::public_client(&mcp.url(), &auth.token_endpoint(), "reqwest-example")?
            .with_issuer(auth.issuer());
    let alice = Principal::new("acme", "alice");
    let store = Arc::new(MemoryStore::new());
    store
        .compare_and_swap(
            &AuthKey::new(&alice, binding.id()),
            None,
            auth.issue("reqwest-example", "alice", None),
        )
        .await?;

    let http = ReqwestService::with_config(
        &HttpClientConfig::new().connect_timeout(std::time::Duration::from_secs(3)),
    )?;
    let stack = ServiceBuilder::new()
        .layer(SilentRefreshLayer::new(
            RefreshCoordinator::new(store),
            binding,
        ))
        .layer(CircuitBreakerLayer::new(BreakerConfig::default()))
        .service(http);

    for call in 1..=2 {
        if call == 2 {
            auth.revoke_access_tokens("alice");
        }
        let body = json!({"jsonrpc": "2.0", "id": call, "method": "tools/call",
            "params": {"name": "whoami", "arguments": {}}});
        let mut request = http::Request::post(mcp.url())
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body.to_string())?;
        request.extensions_mut().insert(alice.clone());
        let response = stack.clone().oneshot(request).await?;
        println!(
            "call {call}: HTTP {} {:?}",
            response.status(),
            response.headers()["content-type"]
        );
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                print!("  event bytes: {}", String::from_utf8_lossy(&data));
            }
        }
    }
    println!("refreshes: {}", auth.stats().refresh_successes);
    assert_eq!(auth.stats().refresh_successes, 1);
    Ok(())
}
