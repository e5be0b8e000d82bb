//! A hyper user's stack: `OAuthRetryLayer` + `SilentRefreshLayer` over hyper-util's
//! pooled client (`tower_mcp_auth::client::hyper_client`, rustls), against real
//! loopback authorization and MCP servers. The response body is hyper's `Incoming`,
//! read as it arrives.
//!
//! Run: `cargo run --example hyper_client`

use std::sync::Arc;

use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_mcp_auth::client::{HttpClientConfig, hyper_client};
use tower_mcp_auth::store::MemoryStore;
use tower_mcp_auth::testing::{HeadlessBrowser, TestAuthServer, TestMcpServer};
use tower_mcp_auth::{
    Authorizer, OAuthRetryLayer, Principal, RefreshCoordinator, ReplayBody, SilentRefreshLayer,
    UrlPolicy,
};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let auth = TestAuthServer::start().await?;
    let mcp = TestMcpServer::start(&auth).await?;
    let store = Arc::new(MemoryStore::new());
    let authorizer = Authorizer::builder(
        mcp.url(),
        store.clone(),
        "http://127.0.0.1:3000/oauth/callback".parse()?,
    )
    .client_name("hyper example")
    .url_policy(UrlPolicy::default().allow_loopback_http())
    .build()?;
    auth.set_consenting_user("alice");
    let client = ServiceBuilder::new()
        .layer(OAuthRetryLayer::wait(
            authorizer.clone(),
            HeadlessBrowser::new(authorizer.completer()),
        ))
        .layer(SilentRefreshLayer::new(
            RefreshCoordinator::new(store),
            authorizer.bindings(),
        ))
        .service(hyper_client::<ReplayBody>(&HttpClientConfig::new())?);

    for (id, method) in [(1, "initialize"), (2, "tools/list")] {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "hyper example", "version": "0"}}});
        // Any body type works: here http_body_util's Full.
        let mut request = http::Request::post(mcp.url())
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))?;
        request
            .extensions_mut()
            .insert(Principal::new("acme", "alice"));
        let response = client.clone().oneshot(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let answer: Value = serde_json::from_slice(&bytes)?;
        println!("{method}: HTTP {status} {}", answer["result"]);
    }
    let stats = auth.stats();
    println!(
        "one login for both calls: {} registration, {} code exchange",
        stats.registrations, stats.code_exchanges
    );
    assert_eq!(stats.code_exchanges, 1);
    Ok(())
}
