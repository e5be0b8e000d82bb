//! Real loopback fixtures for tests, benchmarks and examples (feature `test-util`).
//!
//! * [`TestAuthServer`]: an OAuth authorization server with rotating single-use refresh
//!   tokens, reuse detection, latency and failure knobs, and counters.
//! * [`TestMcpServer`]: an MCP server over Streamable HTTP that validates the
//!   authorization server's tokens and answers 401 with a Bearer challenge.
//! * [`HeadlessBrowser`]: an authorization handler that follows the authorization URL
//!   and completes the flow, for servers that consent automatically.
//! * [`ReqwestTransport`]: a plain HTTP client as a tower service, the innermost
//!   service of a layer stack; [`jsonrpc_request`] and [`read_jsonrpc`] build and read
//!   MCP messages.
//!
//! ```
//! use tower::ServiceExt;
//! use tower_mcp_auth::testing::{jsonrpc_request, read_jsonrpc, ReqwestTransport, TestAuthServer, TestMcpServer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let auth = TestAuthServer::start().await?;
//! let mcp = TestMcpServer::start(&auth).await?;
//! let tokens = auth.issue("client", "alice", None);
//!
//! let mut request = jsonrpc_request(&mcp.url(), 1, "tools/list", serde_json::json!({}));
//! let bearer = format!("Bearer {}", tokens.access_token.expose());
//! request.headers_mut().insert("authorization", bearer.parse()?);
//! let response = ReqwestTransport::new().oneshot(request).await?;
//! assert_eq!(read_jsonrpc(&response)?["result"]["tools"][0]["name"], "echo");
//! # Ok(())
//! # }
//! ```

mod auth_server;
mod headless;
mod mcp_server;
mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use serde_json::Value;
use tokio::task::JoinHandle;

pub use auth_server::{AuthServerStats, Fault, RecordedTokenRequest, TestAuthServer, TokenInfo};
pub use headless::HeadlessBrowser;
pub use mcp_server::{McpServerStats, TestMcpServer};
pub use upstream::TestUpstream;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn random_token(prefix: &str) -> String {
    let bytes: [u8; 16] = crate::crypto::random_bytes();
    format!("{prefix}-{}", crate::crypto::hex(&bytes))
}

/// A server on loopback. Dropping it kills it: the listener and every open connection
/// close, as when a process dies (clients with pooled connections see it too).
struct ServerHandle {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl ServerHandle {
    async fn spawn(
        router: axum::Router,
        addr: impl tokio::net::ToSocketAddrs,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            // Connection tasks live in this set, so aborting the server aborts them all.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else {
                            // Out of file descriptors or similar: back off instead of spinning.
                            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                            continue;
                        };
                        // As real servers do for streaming: events are not held by Nagle.
                        let _ = stream.set_nodelay(true);
                        let service = hyper_util::service::TowerToHyperService::new(router.clone());
                        connections.spawn(async move {
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, service)
                                .await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(Self { addr, task })
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// reqwest as a `tower::Service<http::Request<B>>` for any request body, answering
/// `http::Response<Bytes>` (the whole body read): the innermost service of a client
/// stack in the tests and benchmarks. Production code uses
/// [`ReqwestService`](crate::client::ReqwestService), which streams responses.
#[derive(Clone, Debug)]
pub struct ReqwestTransport {
    service: crate::client::ReqwestService,
}

impl ReqwestTransport {
    /// A transport on a new reqwest client with a 30 s timeout per request.
    pub fn new() -> Self {
        let client = crate::client::ReqwestService::builder()
            .and_then(|builder| {
                builder
                    .timeout(std::time::Duration::from_secs(30))
                    .build()
                    .map_err(|e| crate::client::ClientBuildError::new(e.into()))
            })
            .expect("reqwest client with TLS roots");
        Self::from_client(client)
    }

    /// A transport on `client` (give it a timeout).
    pub fn from_client(client: reqwest::Client) -> Self {
        Self {
            service: crate::client::ReqwestService::from_client(client),
        }
    }
}

impl Default for ReqwestTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl<B> tower::Service<http::Request<B>> for ReqwestTransport
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    type Response = http::Response<Bytes>;
    type Error = reqwest::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = tower::Service::call(&mut self.service, request);
        Box::pin(async move {
            let response = reqwest::Response::from(call.await?);
            let mut converted = http::Response::new(Bytes::new());
            *converted.status_mut() = response.status();
            *converted.headers_mut() = response.headers().clone();
            *converted.body_mut() = response.bytes().await?;
            Ok(converted)
        })
    }
}

/// A JSON-RPC request to an MCP endpoint, accepting JSON and SSE answers.
pub fn jsonrpc_request(
    url: &str,
    id: u64,
    method: &str,
    params: Value,
) -> http::Request<reqwest::Body> {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    let mut request = http::Request::new(reqwest::Body::from(body.to_string()));
    *request.method_mut() = http::Method::POST;
    if let Ok(uri) = url.parse() {
        *request.uri_mut() = uri;
    }
    let headers = request.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static("application/json, text/event-stream"),
    );
    request
}

/// Reads a JSON-RPC message from a JSON or an SSE (`data:` lines) response body.
pub fn read_jsonrpc(response: &http::Response<Bytes>) -> Result<Value, serde_json::Error> {
    let body = response.body();
    let is_sse = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !is_sse {
        return serde_json::from_slice(body);
    }
    let text = String::from_utf8_lossy(body);
    let data: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(str::trim_start)
        .collect();
    serde_json::from_str(&data.join("\n"))
}
