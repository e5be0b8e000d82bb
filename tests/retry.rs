//! `IdempotentRetry` over the production client against a real loopback server: reads
//! are tried again after a 503 or a refused connection, a tool call never is.

use std::time::Duration;

use tower::retry::RetryLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_mcp_auth::client::ReqwestService;
use tower_mcp_auth::layer::retry::IdempotentRetry;
use tower_mcp_auth::testing::TestUpstream;

fn call(url: &str, method: &str) -> http::Request<String> {
    http::Request::post(url)
        .header("content-type", "application/json")
        .body(format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}"}}"#))
        .unwrap()
}

#[tokio::test]
async fn reads_are_retried_after_a_503_and_a_tool_call_is_sent_once() {
    let upstream = TestUpstream::start().await.unwrap();
    let url = upstream.url();
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(
            IdempotentRetry::new().backoff(Duration::from_millis(10)),
        ))
        // The crate's layers answer `BoxError`; a bare client's error is mapped to it.
        .map_err(tower::BoxError::from)
        .service(ReqwestService::new().unwrap());

    upstream.set_status(503);
    let answer = client
        .clone()
        .oneshot(call(&url, "tools/list"))
        .await
        .unwrap();
    assert_eq!(answer.status(), 503, "still failing after the retries");
    assert_eq!(upstream.requests(), 3, "the first try and two retries");

    let answer = client
        .clone()
        .oneshot(call(&url, "tools/call"))
        .await
        .unwrap();
    assert_eq!(answer.status(), 503);
    assert_eq!(upstream.requests(), 4, "a tool call is sent once");

    // The server comes back while the client waits: the retry gets through.
    let flip = {
        let before = upstream.requests();
        let upstream = &upstream;
        async move {
            while upstream.requests() == before {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            upstream.set_status(200);
        }
    };
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(
            IdempotentRetry::new().backoff(Duration::from_millis(200)),
        ))
        // The crate's layers answer `BoxError`; a bare client's error is mapped to it.
        .map_err(tower::BoxError::from)
        .service(ReqwestService::new().unwrap());
    let (answer, ()) = tokio::join!(client.oneshot(call(&url, "resources/read")), flip);
    assert_eq!(answer.unwrap().status(), 200);
}

#[tokio::test]
async fn a_refused_connection_is_retried_until_the_server_is_back() {
    let upstream = TestUpstream::start().await.unwrap();
    let url = upstream.url();
    upstream.stop();
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(
            IdempotentRetry::new()
                .retries(5)
                .backoff(Duration::from_millis(100)),
        ))
        // The crate's layers answer `BoxError`; a bare client's error is mapped to it.
        .map_err(tower::BoxError::from)
        .service(ReqwestService::new().unwrap());
    let back = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        upstream.restart().await.unwrap();
    };
    let (answer, ()) = tokio::join!(client.oneshot(call(&url, "ping")), back);
    assert_eq!(answer.unwrap().status(), 200);
}
