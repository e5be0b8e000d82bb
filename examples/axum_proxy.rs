//! A proxy that adds auth transparently: an axum server takes the user from a header
//! set by the front proxy (`server::PrincipalFromHeaderLayer`), forwards MCP requests to the upstream MCP server through
//! `OAuthRetryLayer` (return early) + `SilentRefreshLayer` + the production reqwest
//! client, and streams the upstream's answer back as it comes: an SSE event reaches
//! the caller before the upstream has finished its response. The request body is
//! axum's own `Body`, passed to the stack as it is.
//!
//! A user without credentials gets a JSON-RPC error naming the URL where they can
//! sign in (the layers' `AuthorizationRequired`, answered by `server::error_response`).
//!
//! Run: `cargo run --example axum_proxy`

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::json;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_mcp_auth::client::ReqwestService;
use tower_mcp_auth::server::{PrincipalFromHeaderLayer, error_response};
use tower_mcp_auth::store::MemoryStore;
use tower_mcp_auth::testing::{HeadlessBrowser, TestAuthServer, TestMcpServer};
use tower_mcp_auth::{
    Authorizer, OAuthRetryLayer, RefreshCoordinator, SilentRefreshLayer, UrlPolicy,
};

type Upstream = BoxCloneSyncService<http::Request<Body>, http::Response<reqwest::Body>, BoxError>;

#[derive(Clone)]
struct Proxy {
    upstream: Upstream,
    upstream_url: http::Uri,
}

/// `POST|GET|DELETE /mcp`: the request (its principal set by the layer) sent upstream.
async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    parts.uri = proxy.upstream_url.clone();
    parts.headers.remove(http::header::HOST);
    match proxy
        .upstream
        .oneshot(http::Request::from_parts(parts, body))
        .await
    {
        // The body streams through: axum polls reqwest's body frame by frame.
        Ok(response) => response.map(Body::new).into_response(),
        Err(error) => error_response(&error),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let auth = TestAuthServer::start().await?;
    let mcp = TestMcpServer::start(&auth).await?;
    mcp.set_sse(true);
    let store = Arc::new(MemoryStore::new());
    let authorizer = Authorizer::builder(
        mcp.url(),
        store.clone(),
        "http://127.0.0.1:3000/oauth/callback".parse()?,
    )
    .client_name("axum proxy example")
    .url_policy(UrlPolicy::default().allow_loopback_http())
    .build()?;
    let upstream = ServiceBuilder::new()
        .layer(OAuthRetryLayer::return_early(authorizer.clone()))
        .layer(SilentRefreshLayer::new(
            RefreshCoordinator::new(store.clone()),
            authorizer.bindings(),
        ))
        .service(ReqwestService::new()?);
    let proxy = Proxy {
        upstream: BoxCloneSyncService::new(upstream),
        upstream_url: mcp.url().parse()?,
    };
    let app = axum::Router::new()
        .route("/mcp", axum::routing::any(forward))
        .with_state(proxy)
        // Reachable only through the front proxy, which sets `x-user` on every request.
        .layer(PrincipalFromHeaderLayer::new(
            "acme",
            http::HeaderName::from_static("x-user"),
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("proxy on http://{addr}/mcp -> {}", mcp.url());

    // Alice asks first: she has no credentials, so the proxy answers with a link.
    // Her browser (the headless one here) signs her in; her retry streams through.
    auth.set_consenting_user("alice");
    let browser = HeadlessBrowser::new(authorizer.completer());
    let http = ReqwestService::builder()?.build()?;
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "whoami", "arguments": {}}});
    for (user, attempt) in [("alice", 1), ("alice", 2), ("bob", 1)] {
        let response = http
            .post(format!("http://{addr}/mcp"))
            .header("x-user", user)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(call.to_string())
            .send()
            .await?;
        let content_type = response.headers().get("content-type").cloned();
        let mut body = http::Response::from(response).into_body();
        let mut text = String::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                // SSE events arrive here one by one, as the upstream sends them.
                text.push_str(&String::from_utf8_lossy(&data));
            }
        }
        println!(
            "{user} (attempt {attempt}): {content_type:?} {}",
            text.trim()
        );
        if let Ok(answer) = serde_json::from_str::<serde_json::Value>(&text)
            && let Some(url) = answer["error"]["data"]["url"].as_str()
            && user == "alice"
        {
            browser.visit(&url.parse()?).await?;
            println!("alice signed in at the link");
        }
    }
    assert_eq!(auth.stats().code_exchanges, 1);
    Ok(())
}
