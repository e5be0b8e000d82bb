//! Any request body works through the layers: `BoxBody`, hyper's `Incoming` (a proxy's
//! body), a stream of unknown size; small known-size bodies are replayed after a
//! refresh, others sent once.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use serde_json::json;
use tower::{Layer, ServiceExt};
use tower_mcp_auth::client::ReqwestService;
use tower_mcp_auth::store::{CredentialStore, MemoryStore};
use tower_mcp_auth::testing::{TestAuthServer, TestMcpServer};
use tower_mcp_auth::{
    AuthKey, Principal, RefreshCoordinator, ServerBinding, SilentRefresh, SilentRefreshLayer,
};

struct World {
    auth: TestAuthServer,
    mcp: TestMcpServer,
    stack: SilentRefresh<ReqwestService>,
}

async fn world() -> World {
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let binding = ServerBinding::public_client(&mcp.url(), &auth.token_endpoint(), "bodies")
        .unwrap()
        .with_issuer(auth.issuer());
    let store = Arc::new(MemoryStore::new());
    store
        .compare_and_swap(
            &AuthKey::new(&alice(), binding.id()),
            None,
            auth.issue("bodies", "alice", None),
        )
        .await
        .unwrap();
    let stack = SilentRefreshLayer::new(RefreshCoordinator::new(store), binding)
        .layer(ReqwestService::new().unwrap());
    World { auth, mcp, stack }
}

fn alice() -> Principal {
    Principal::new("acme", "alice")
}

fn whoami() -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "whoami", "arguments": {}}})
    .to_string()
}

fn request<B>(url: &str, body: B) -> http::Request<B> {
    let mut request = http::Request::post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body)
        .unwrap();
    request.extensions_mut().insert(alice());
    request
}

async fn text<B>(response: http::Response<B>) -> serde_json::Value
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn box_body_is_replayed_after_a_silent_refresh() {
    let w = world().await;
    w.auth.revoke_access_tokens("alice");
    let body: BoxBody<Bytes, Infallible> = Full::new(Bytes::from(whoami())).boxed();
    let response = w
        .stack
        .clone()
        .oneshot(request(&w.mcp.url(), body))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        text(response).await["result"]["content"][0]["text"],
        "alice"
    );
    assert_eq!(w.auth.stats().refresh_successes, 1);
    // The revoked token was refused once, the replay carried the new one.
    assert_eq!(w.mcp.stats().unauthorized, 1);
}

#[tokio::test]
async fn a_stream_of_unknown_size_is_sent_once_and_never_replayed() {
    let w = world().await;
    let chunks = futures::stream::iter(
        whoami()
            .into_bytes()
            .chunks(7)
            .map(|c| Ok::<_, Infallible>(http_body::Frame::data(Bytes::copy_from_slice(c))))
            .collect::<Vec<_>>(),
    );
    let response = w
        .stack
        .clone()
        .oneshot(request(&w.mcp.url(), StreamBody::new(chunks)))
        .await
        .unwrap();
    assert_eq!(
        text(response).await["result"]["content"][0]["text"],
        "alice"
    );

    // With a revoked token the 401 comes back as it is: nothing to replay.
    w.auth.revoke_access_tokens("alice");
    let chunks = futures::stream::iter(vec![Ok::<_, Infallible>(http_body::Frame::data(
        Bytes::from(whoami()),
    ))]);
    let response = w
        .stack
        .clone()
        .oneshot(request(&w.mcp.url(), StreamBody::new(chunks)))
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(w.auth.stats().refresh_successes, 0);
}

/// A hyper server that forwards every request it receives, body `Incoming`, through
/// the stack: what a proxy does.
#[tokio::test]
async fn hyper_incoming_bodies_are_forwarded_and_replayed() {
    let w = world().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stack, upstream) = (w.stack.clone(), w.mcp.url());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (stack, upstream) = (stack.clone(), upstream.clone());
            let service = hyper::service::service_fn(
                move |incoming: http::Request<hyper::body::Incoming>| {
                    let (stack, upstream) = (stack.clone(), upstream.clone());
                    async move {
                        let (mut parts, body) = incoming.into_parts();
                        parts.uri = upstream.parse().unwrap();
                        let mut forwarded = http::Request::from_parts(parts, body);
                        forwarded.extensions_mut().insert(alice());
                        // A proxy answers 502 when the upstream call fails.
                        let response = match stack.oneshot(forwarded).await {
                            Ok(response) => response,
                            Err(error) => {
                                let mut response =
                                    http::Response::new(reqwest::Body::from(error.to_string()));
                                *response.status_mut() = http::StatusCode::BAD_GATEWAY;
                                response
                            }
                        };
                        Ok::<_, Infallible>(response)
                    }
                },
            );
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    let http = ReqwestService::builder().unwrap().build().unwrap();
    let send = || {
        http.post(format!("http://{addr}/mcp"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(whoami())
            .send()
    };
    let answer: serde_json::Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(answer["result"]["content"][0]["text"], "alice");
    // The incoming body has a known length: buffered, so a 401 is refreshed and the
    // same bytes replayed.
    w.auth.revoke_access_tokens("alice");
    let answer: serde_json::Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(answer["result"]["content"][0]["text"], "alice");
    assert_eq!(w.auth.stats().refresh_successes, 1);
}
