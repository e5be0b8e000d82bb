//! Quickstart: a real authorization server and MCP server on loopback, and the
//! production client stack — `OAuthRetryLayer` over `SilentRefreshLayer` over
//! `client::ReqwestService` — that signs in on the first call (discovery, dynamic
//! registration, PKCE, the callback), survives a revoked token and a 100-call refresh
//! storm with a single refresh-token redemption, and signs in again when the refresh
//! token itself is rejected. Only the servers and the consenting "user" (a headless
//! browser following the sign-in link) are test fixtures.
//!
//! Run: `cargo run --example quickstart`

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_mcp_auth::client::ReqwestService;
use tower_mcp_auth::store::MemoryStore;
use tower_mcp_auth::testing::{
    HeadlessBrowser, TestAuthServer, TestMcpServer, jsonrpc_request, read_jsonrpc,
};
use tower_mcp_auth::{
    Authorizer, OAuthRetryLayer, Principal, RefreshCoordinator, SilentRefreshLayer, UrlPolicy,
};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // 1. The servers: OAuth with rotating single-use refresh tokens, and an MCP server.
    let auth = TestAuthServer::start().await?;
    let mcp = TestMcpServer::start(&auth).await?;
    println!("authorization server  {}", auth.issuer());
    println!("MCP server            {}", mcp.url());

    // 2. The client stack: one coordinator and store for the process; per MCP server an
    //    Authorizer (discovery, registration, flows) shared by the two layers. A real
    //    app's handler would show the URL to the user; the headless browser stands in
    //    for a user who consents at once.
    let store = Arc::new(MemoryStore::new());
    let coordinator = RefreshCoordinator::new(store.clone());
    let authorizer = Authorizer::builder(
        mcp.url(),
        store.clone(),
        "http://127.0.0.1:3000/oauth/callback".parse()?,
    )
    .client_name("quickstart")
    .url_policy(UrlPolicy::default().allow_loopback_http()) // loopback servers use http
    .build()?;
    let browser = HeadlessBrowser::new(authorizer.completer());
    let client = ServiceBuilder::new()
        .layer(OAuthRetryLayer::wait(authorizer.clone(), browser))
        .layer(SilentRefreshLayer::new(
            coordinator.clone(),
            authorizer.bindings(),
        ))
        .service(ReqwestService::new()?);

    // 3. Alice has never logged in: her first call gets a 401 and the stack runs the
    //    whole authorization before replaying it.
    let alice = Principal::new("acme", "alice");
    auth.set_consenting_user("alice");

    let call = |method: &'static str, params: Value| {
        let (client, url, alice) = (client.clone(), mcp.url(), alice.clone());
        async move {
            let mut request = jsonrpc_request(&url, 1, method, params);
            request.extensions_mut().insert(alice);
            // The answer streams (JSON or SSE); read it whole to take out the message.
            let (parts, body) = client.oneshot(request).await?.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<Value, BoxError>(read_jsonrpc(&http::Response::from_parts(parts, body))?)
        }
    };

    let init = call("initialize", json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "quickstart", "version": "0"}})).await?;
    let login = auth.stats();
    println!(
        "\ninitialize            server {} (after a login: {} registration, {} authorization, {} code exchange)",
        init["result"]["serverInfo"]["name"],
        login.registrations,
        login.authorization_requests,
        login.code_exchanges
    );
    let tools = call("tools/list", json!({})).await?;
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str())
        .collect();
    println!("tools/list            {names:?}");
    let echo = call(
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "hello"}}),
    )
    .await?;
    println!(
        "tools/call echo       {}",
        echo["result"]["content"][0]["text"]
    );

    // 4. The server revokes the access token mid-session: the next call gets a 401,
    //    the layer refreshes silently and replays.
    auth.revoke_access_tokens("alice");
    let whoami = call("tools/call", json!({"name": "whoami", "arguments": {}})).await?;
    println!(
        "\nafter revocation      whoami = {} (refreshed silently)",
        whoami["result"]["content"][0]["text"]
    );

    // 5. Revoked again, and 100 calls at once hit the 401 together.
    auth.revoke_access_tokens("alice");
    auth.set_latency(Duration::from_millis(50));
    let before = auth.stats();
    let started = Instant::now();
    let calls: Vec<_> = (0..100)
        .map(|i| {
            tokio::spawn(call(
                "tools/call",
                json!({"name": "echo", "arguments": {"text": format!("call {i}")}}),
            ))
        })
        .collect();
    let mut ok = 0;
    for task in calls {
        if task.await?.is_ok() {
            ok += 1;
        }
    }
    let after = auth.stats();
    println!(
        "100 concurrent calls  {ok}/100 ok in {:?}; refresh-token redemptions: {}, invalid_grant: {}",
        started.elapsed(),
        after.refresh_requests - before.refresh_requests,
        after.invalid_grants - before.invalid_grants
    );

    // 6. When the refresh token itself is rejected, silent refresh cannot help: the
    //    retry layer runs a new login and replays.
    auth.set_latency(Duration::ZERO);
    auth.revoke_access_tokens("alice");
    auth.fail_next(tower_mcp_auth::testing::Fault::InvalidGrant, 1);
    let again = call("tools/call", json!({"name": "whoami", "arguments": {}})).await?;
    println!(
        "refresh token revoked whoami = {} after a new login ({} authorizations in all)",
        again["result"]["content"][0]["text"],
        auth.stats().authorization_requests
    );

    let stats = coordinator.stats();
    println!(
        "\nreport: {} redemptions in all, {} callers waited on one, MCP server saw {} requests ({} answered 401)",
        stats.redemptions,
        stats.blocked_waits,
        mcp.stats().requests,
        mcp.stats().unauthorized
    );
    if ok != 100 || after.refresh_requests - before.refresh_requests != 1 {
        return Err("the storm should make exactly one redemption and succeed".into());
    }
    Ok(())
}
