//! An rmcp client on this crate's layers: rmcp's Streamable HTTP transport over
//! `OAuthRetryLayer` + `SilentRefreshLayer` + `CircuitBreakerLayer` + the production
//! reqwest client, against real loopback authorization and MCP servers.
//!
//! Alice logs in on her first request (the headless browser stands in for her), then
//! lists and calls tools through rmcp; her token is revoked mid-session and the next
//! call is silently refreshed. Bob's transport runs in return-early mode: rmcp reports
//! a transport error, and `tower_mcp_auth::rmcp::find_error` recovers the
//! authorization URL to show him.
//!
//! Run: `cargo run --example rmcp_client`

use std::sync::Arc;

use rmcp::ServiceExt as _;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use tower::{BoxError, ServiceBuilder};
use tower_mcp_auth::client::ReqwestService;
use tower_mcp_auth::rmcp::{StackClient, find_error};
use tower_mcp_auth::store::MemoryStore;
use tower_mcp_auth::testing::{HeadlessBrowser, TestAuthServer, TestMcpServer};
use tower_mcp_auth::{
    Authorizer, BreakerConfig, CircuitBreakerLayer, Error, OAuthRetryLayer, Principal,
    RefreshCoordinator, SilentRefreshLayer, UrlPolicy,
};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let auth = TestAuthServer::start().await?;
    let mcp = TestMcpServer::start(&auth).await?;
    let store = Arc::new(MemoryStore::new());
    let coordinator = RefreshCoordinator::new(store.clone());
    let authorizer = Authorizer::builder(
        mcp.url(),
        store.clone(),
        "http://127.0.0.1:3000/oauth/callback".parse()?,
    )
    .client_name("rmcp example")
    .url_policy(UrlPolicy::default().allow_loopback_http())
    .build()?;
    let http = ReqwestService::new()?;
    let inner = ServiceBuilder::new()
        .layer(SilentRefreshLayer::new(
            coordinator.clone(),
            authorizer.bindings(),
        ))
        .layer(CircuitBreakerLayer::new(BreakerConfig::default()))
        .service(http);

    // Alice: wait mode, the flow completed by a headless browser.
    auth.set_consenting_user("alice");
    let browser = HeadlessBrowser::new(authorizer.completer());
    let waiting = tower::Layer::layer(
        &OAuthRetryLayer::wait(authorizer.clone(), browser),
        inner.clone(),
    );
    let transport = StreamableHttpClientTransport::with_client(
        StackClient::new(waiting).with_principal(Principal::new("acme", "alice")),
        StreamableHttpClientTransportConfig::with_uri(mcp.url()),
    );
    let alice = ().serve(transport).await?;
    let info = alice
        .peer_info()
        .and_then(|i| i.server_info.as_ref().map(|s| s.name.clone()));
    println!(
        "alice: initialized with {info:?} after a login ({} code exchange)",
        auth.stats().code_exchanges
    );
    let tools = alice.list_all_tools().await?;
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    println!("alice: tools {names:?}");
    let whoami = alice
        .call_tool(CallToolRequestParams::new("whoami"))
        .await?;
    println!(
        "alice: whoami -> {:?}",
        whoami.content[0].as_text().map(|t| &t.text)
    );
    assert_eq!(
        whoami.content[0].as_text().map(|t| t.text.as_str()),
        Some("alice")
    );

    // Her access token is revoked: the next call is refreshed silently.
    auth.revoke_access_tokens("alice");
    let again = alice
        .call_tool(CallToolRequestParams::new("whoami"))
        .await?;
    assert_eq!(
        again.content[0].as_text().map(|t| t.text.as_str()),
        Some("alice")
    );
    println!(
        "alice: after revocation, whoami still works ({} refresh)",
        auth.stats().refresh_successes
    );
    alice.cancel().await?;

    // Bob: return-early mode; rmcp's error carries the crate's, with the URL.
    let early = tower::Layer::layer(&OAuthRetryLayer::return_early(authorizer.clone()), inner);
    let transport = StreamableHttpClientTransport::with_client(
        StackClient::new(early).with_principal(Principal::new("acme", "bob")),
        StreamableHttpClientTransportConfig::with_uri(mcp.url()),
    );
    let error = ().serve(transport).await.expect_err("bob has not logged in");
    match find_error(&error) {
        Some(Error::AuthorizationRequired { url, .. }) => {
            println!(
                "bob: authorization required, send him to {}",
                url.as_url().origin().ascii_serialization()
            );
        }
        other => {
            return Err(
                format!("expected AuthorizationRequired, got {other:?} from {error}").into(),
            );
        }
    }
    Ok(())
}
