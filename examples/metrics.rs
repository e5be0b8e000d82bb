//! The crate's counters exported for Prometheus (feature `metrics`): a recorder from
//! `metrics-exporter-prometheus`, a `/metrics` endpoint on axum, and some traffic — a
//! revoked token refreshed once for eight concurrent calls — to scrape.
//!
//! Run: `cargo run --example metrics --features metrics` (then the example scrapes its
//! own endpoint and prints what Prometheus would see).

use std::sync::Arc;

use serde_json::json;
use tower::{BoxError, Layer, ServiceExt};
use tower_mcp_auth::store::{CredentialStore, MemoryStore};
use tower_mcp_auth::testing::{ReqwestTransport, TestAuthServer, TestMcpServer, jsonrpc_request};
use tower_mcp_auth::{AuthKey, Principal, RefreshCoordinator, ServerBinding, SilentRefreshLayer};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // 1. The recorder, and the endpoint Prometheus scrapes.
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    tower_mcp_auth::metrics::describe();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let metrics_url = format!("http://{}/metrics", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    // 2. Traffic: Alice's token is revoked; eight calls share one refresh.
    let auth = TestAuthServer::start().await?;
    let mcp = TestMcpServer::start(&auth).await?;
    let binding = ServerBinding::public_client(&mcp.url(), &auth.token_endpoint(), "metrics")?
        .with_issuer(auth.issuer());
    let store = Arc::new(MemoryStore::new());
    let alice = Principal::new("acme", "alice");
    store
        .compare_and_swap(
            &AuthKey::new(&alice, binding.id()),
            None,
            auth.issue("metrics", "alice", None),
        )
        .await?;
    let client = SilentRefreshLayer::new(RefreshCoordinator::new(store), binding)
        .layer(ReqwestTransport::new());
    auth.revoke_access_tokens("alice");
    let calls = (0..8).map(|id| {
        let mut request = jsonrpc_request(&mcp.url(), id, "tools/list", json!({}));
        request.extensions_mut().insert(alice.clone());
        client.clone().oneshot(request)
    });
    for response in futures::future::join_all(calls).await {
        response?;
    }

    // 3. Scrape.
    let http = tower_mcp_auth::client::ReqwestService::builder()?.build()?;
    let scraped = http.get(&metrics_url).send().await?.text().await?;
    println!("GET {metrics_url}\n{scraped}");
    Ok(())
}
