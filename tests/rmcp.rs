//! rmcp's Streamable HTTP transport on this crate's stack: a real rmcp client against
//! the loopback fixtures, JSON and SSE answers, stateful and stateless servers, silent
//! refresh under rmcp, the typed errors recovered from rmcp's, rmcp's response limits.

use std::collections::HashMap;
use std::sync::Arc;

use rmcp::ServiceExt as _;
use rmcp::model::{CallToolRequestParams, ClientJsonRpcMessage};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::{
    StreamableHttpClient, StreamableHttpClientTransportConfig, StreamableHttpError,
    StreamableHttpPostResponse, StreamableHttpResponseLimits,
};
use serde_json::json;
use tower::Layer;
use tower_mcp_auth::client::ReqwestService;
use tower_mcp_auth::rmcp::{StackClient, find_error};
use tower_mcp_auth::store::MemoryStore;
use tower_mcp_auth::testing::{HeadlessBrowser, TestAuthServer, TestMcpServer};
use tower_mcp_auth::{
    Authorizer, BreakerConfig, CircuitBreaker, CircuitBreakerLayer, Error, OAuthRetry,
    OAuthRetryLayer, Principal, RefreshCoordinator, SilentRefresh, SilentRefreshLayer, UrlPolicy,
};

type Inner = SilentRefresh<CircuitBreaker<ReqwestService>>;

struct World {
    auth: TestAuthServer,
    mcp: TestMcpServer,
    authorizer: Authorizer,
    inner: Inner,
}

async fn world() -> World {
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let store = Arc::new(MemoryStore::new());
    let authorizer = Authorizer::builder(
        mcp.url(),
        store.clone(),
        "http://127.0.0.1:3000/oauth/callback".parse().unwrap(),
    )
    .url_policy(UrlPolicy::default().allow_loopback_http())
    .build()
    .unwrap();
    let inner = SilentRefreshLayer::new(RefreshCoordinator::new(store), authorizer.bindings())
        .layer(
            CircuitBreakerLayer::new(BreakerConfig::default())
                .layer(ReqwestService::new().unwrap()),
        );
    World {
        auth,
        mcp,
        authorizer,
        inner,
    }
}

impl World {
    fn waiting(&self, user: &str) -> StackClient<OAuthRetry<Inner>> {
        self.auth.set_consenting_user(user);
        let browser = HeadlessBrowser::new(self.authorizer.completer());
        let stack =
            OAuthRetryLayer::wait(self.authorizer.clone(), browser).layer(self.inner.clone());
        StackClient::new(stack).with_principal(Principal::new("acme", user))
    }

    fn transport<S>(&self, client: StackClient<S>) -> StreamableHttpClientTransport<StackClient<S>>
    where
        StackClient<S>: StreamableHttpClient,
    {
        StreamableHttpClientTransport::with_client(
            client,
            StreamableHttpClientTransportConfig::with_uri(self.mcp.url()),
        )
    }
}

async fn whoami(peer: &rmcp::service::RunningService<rmcp::RoleClient, ()>) -> String {
    let result = peer
        .call_tool(CallToolRequestParams::new("whoami"))
        .await
        .unwrap();
    result.content[0].as_text().unwrap().text.clone()
}

async fn session_works(w: &World) {
    let alice = ().serve(w.transport(w.waiting("alice"))).await.unwrap();
    let tools = alice.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "whoami"), "{tools:?}");
    assert_eq!(whoami(&alice).await, "alice");
    assert_eq!(w.auth.stats().code_exchanges, 1);

    // Revoked mid-session: refreshed under rmcp, no second login.
    w.auth.revoke_access_tokens("alice");
    assert_eq!(whoami(&alice).await, "alice");
    assert_eq!(w.auth.stats().refresh_successes, 1);
    assert_eq!(w.auth.stats().code_exchanges, 1);
    alice.cancel().await.unwrap();
}

#[tokio::test]
async fn rmcp_session_with_json_answers() {
    let w = world().await;
    session_works(&w).await;
}

#[tokio::test]
async fn rmcp_session_with_sse_answers() {
    let w = world().await;
    w.mcp.set_sse(true);
    session_works(&w).await;
}

#[tokio::test]
async fn rmcp_session_against_a_stateless_server() {
    let w = world().await;
    w.mcp.set_stateless(true);
    session_works(&w).await;
}

#[tokio::test]
async fn return_early_authorization_url_is_recovered_from_rmcps_error() {
    let w = world().await;
    let stack = OAuthRetryLayer::return_early(w.authorizer.clone()).layer(w.inner.clone());
    let client = StackClient::new(stack).with_principal(Principal::new("acme", "bob"));
    let error = ().serve(w.transport(client)).await.unwrap_err();
    match find_error(&error) {
        Some(Error::AuthorizationRequired { url, .. }) => {
            assert!(
                url.as_str().starts_with(&w.auth.issuer()),
                "{} is not at {}",
                url.as_str(),
                w.auth.issuer()
            );
        }
        other => panic!("expected AuthorizationRequired in {error}: {other:?}"),
    }
    assert_eq!(w.auth.stats().code_exchanges, 0);
}

#[tokio::test]
async fn response_limits_are_enforced_before_parsing() {
    let w = world().await;
    let client = w.waiting("alice");
    let message: ClientJsonRpcMessage = serde_json::from_value(json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "limits", "version": "0"}}
    }))
    .unwrap();
    let mut limits = StreamableHttpResponseLimits::default();
    limits.max_json_response_size = 16;
    let result = client
        .post_message_with_response_limits(
            w.mcp.url().into(),
            message.clone(),
            None,
            None,
            HashMap::new(),
            limits,
        )
        .await;
    assert!(
        matches!(
            result,
            Err(StreamableHttpError::ResponseBodyTooLarge { max_size: 16 })
        ),
        "{result:?}"
    );

    // SSE: one event over the limit fails the stream, not the process.
    w.mcp.set_sse(true);
    let mut limits = StreamableHttpResponseLimits::default();
    limits.max_sse_event_size = 16;
    let response = client
        .post_message_with_response_limits(
            w.mcp.url().into(),
            message,
            None,
            None,
            HashMap::new(),
            limits,
        )
        .await
        .unwrap();
    let StreamableHttpPostResponse::Sse(mut events, _) = response else {
        panic!("expected an SSE answer");
    };
    use futures::StreamExt;
    let first = events.next().await.expect("an item");
    assert!(first.is_err(), "{first:?}");
}
