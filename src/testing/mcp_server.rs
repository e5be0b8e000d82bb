//! A real MCP resource server (Streamable HTTP, JSON-RPC) on loopback.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::auth_server::{AuthState, TestAuthServer};
use super::{ServerHandle, lock, random_token};

/// Counters of the MCP server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct McpServerStats {
    /// JSON-RPC requests received.
    pub requests: u64,
    /// Requests answered 401.
    pub unauthorized: u64,
    /// Requests answered with a result.
    pub ok: u64,
    /// Requests answered 403 `insufficient_scope`.
    pub forbidden: u64,
}

struct McpState {
    auth: Arc<AuthState>,
    issuer: Mutex<String>,
    resource: Mutex<String>,
    sse: AtomicBool,
    stateless: AtomicBool,
    requests: AtomicU64,
    unauthorized: AtomicU64,
    ok: AtomicU64,
    seen_tokens: Mutex<Vec<String>>,
    seen_targets: Mutex<Vec<String>>,
    /// Tool name -> the scope calling it takes.
    tool_scopes: Mutex<std::collections::HashMap<String, String>>,
    forbidden: AtomicU64,
}

/// An MCP server speaking Streamable HTTP JSON-RPC at `/mcp` — `initialize`,
/// `tools/list`, `tools/call` (tools `echo` and `whoami`), notifications — that accepts
/// only bearer tokens the paired [`TestAuthServer`] issued and that are still valid.
///
/// Missing, expired or revoked tokens get `401` with a `WWW-Authenticate: Bearer`
/// challenge naming its protected resource metadata (RFC 9728), which it also serves.
/// Answers are JSON, or SSE when [`set_sse`](Self::set_sse) is on and the client
/// accepts `text/event-stream`.
///
/// ```
/// use tower_mcp_auth::testing::{TestAuthServer, TestMcpServer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let auth = TestAuthServer::start().await?;
/// let mcp = TestMcpServer::start(&auth).await?;
/// assert!(mcp.url().ends_with("/mcp"));
/// # Ok(())
/// # }
/// ```
pub struct TestMcpServer {
    state: Arc<McpState>,
    handle: ServerHandle,
}

impl TestMcpServer {
    /// Starts a server on an ephemeral loopback port, trusting `auth`'s tokens.
    pub async fn start(auth: &TestAuthServer) -> std::io::Result<Self> {
        let state = Arc::new(McpState {
            auth: auth.state(),
            issuer: Mutex::new(auth.issuer()),
            resource: Mutex::new(String::new()),
            sse: AtomicBool::new(false),
            stateless: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            unauthorized: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            seen_tokens: Mutex::new(Vec::new()),
            seen_targets: Mutex::new(Vec::new()),
            tool_scopes: Mutex::new(std::collections::HashMap::new()),
            forbidden: AtomicU64::new(0),
        });
        let router = Router::new()
            .route("/mcp", post(mcp_endpoint))
            .route(
                "/.well-known/oauth-protected-resource/mcp",
                get(resource_metadata),
            )
            .with_state(state.clone());
        let handle = ServerHandle::spawn(router, ("127.0.0.1", 0)).await?;
        *lock(&state.resource) = format!("http://{}/mcp", handle.addr);
        Ok(Self { state, handle })
    }

    /// Runs without sessions, as Streamable HTTP allows (the TypeScript SDK's
    /// stateless mode): `initialize` answers without `Mcp-Session-Id`, so every
    /// request is a POST without one.
    pub fn set_stateless(&self, stateless: bool) {
        self.state.stateless.store(stateless, Ordering::SeqCst);
    }

    /// Names `issuer` as the server's authorization server in its protected resource
    /// metadata from now on (a server that changed hands, or turned hostile). Tokens
    /// are still checked against the paired authorization server.
    pub fn set_authorization_server(&self, issuer: &str) {
        *lock(&self.state.issuer) = issuer.to_owned();
    }

    /// The MCP endpoint, `http://127.0.0.1:<port>/mcp`.
    pub fn url(&self) -> String {
        lock(&self.state.resource).clone()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.handle.addr
    }

    /// Answer with SSE streams (one `message` event) when the client accepts them.
    pub fn set_sse(&self, sse: bool) {
        self.state.sse.store(sse, Ordering::SeqCst);
    }

    /// Calling `tool` takes a token with `scope`; without it the call gets 403 with a
    /// `Bearer error="insufficient_scope"` challenge asking for `scope` (RFC 6750 §3.1).
    pub fn require_scope(&self, tool: &str, scope: &str) {
        lock(&self.state.tool_scopes).insert(tool.to_owned(), scope.to_owned());
    }

    /// Counters so far.
    pub fn stats(&self) -> McpServerStats {
        McpServerStats {
            requests: self.state.requests.load(Ordering::SeqCst),
            unauthorized: self.state.unauthorized.load(Ordering::SeqCst),
            ok: self.state.ok.load(Ordering::SeqCst),
            forbidden: self.state.forbidden.load(Ordering::SeqCst),
        }
    }

    /// Every bearer token received so far, in order (valid or not).
    pub fn seen_tokens(&self) -> Vec<String> {
        lock(&self.state.seen_tokens).clone()
    }

    /// The path and query of every request to the MCP endpoint so far, in order.
    pub fn seen_targets(&self) -> Vec<String> {
        lock(&self.state.seen_targets).clone()
    }
}

impl std::fmt::Debug for TestMcpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestMcpServer")
            .field("addr", &self.handle.addr)
            .field("stats", &self.stats())
            .finish()
    }
}

async fn resource_metadata(State(state): State<Arc<McpState>>) -> Json<Value> {
    Json(json!({
        "resource": *lock(&state.resource),
        "authorization_servers": [*lock(&state.issuer)],
        "bearer_methods_supported": ["header"],
    }))
}

fn unauthorized(state: &McpState, had_token: bool) -> Response {
    state.unauthorized.fetch_add(1, Ordering::SeqCst);
    let resource = lock(&state.resource).clone();
    let metadata = resource.replacen("/mcp", "/.well-known/oauth-protected-resource/mcp", 1);
    let challenge = if had_token {
        format!(
            "Bearer error=\"invalid_token\", error_description=\"token expired or revoked\", resource_metadata=\"{metadata}\""
        )
    } else {
        format!("Bearer resource_metadata=\"{metadata}\"")
    };
    let mut response = (StatusCode::UNAUTHORIZED, "unauthorized").into_response();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

fn insufficient_scope(state: &McpState, scope: &str) -> Response {
    state.forbidden.fetch_add(1, Ordering::SeqCst);
    let resource = lock(&state.resource).clone();
    let metadata = resource.replacen("/mcp", "/.well-known/oauth-protected-resource/mcp", 1);
    let challenge = format!(
        "Bearer error=\"insufficient_scope\", scope=\"{scope}\", resource_metadata=\"{metadata}\""
    );
    let mut response = (StatusCode::FORBIDDEN, "insufficient scope").into_response();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

async fn mcp_endpoint(
    State(state): State<Arc<McpState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let target = uri.path_and_query().map_or("", |target| target.as_str());
    lock(&state.seen_targets).push(target.to_owned());
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let Some(token) = bearer else {
        return unauthorized(&state, false);
    };
    lock(&state.seen_tokens).push(token.clone());
    let Some(identity) = state.auth.validate(&token) else {
        return unauthorized(&state, true);
    };
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "parse error"}})),
        )
            .into_response();
    };
    let Some(id) = message.get("id").cloned() else {
        // A notification: accepted, no body.
        state.ok.fetch_add(1, Ordering::SeqCst);
        return StatusCode::ACCEPTED.into_response();
    };
    let method = message.get("method").and_then(Value::as_str).unwrap_or("");
    let params = message.get("params").cloned().unwrap_or(Value::Null);
    if method == "tools/call" {
        let tool = params.get("name").and_then(Value::as_str).unwrap_or("");
        let required = lock(&state.tool_scopes).get(tool).cloned();
        let granted = identity.scope.as_deref().unwrap_or("");
        if let Some(required) = required.filter(|r| !granted.split(' ').any(|g| g == r)) {
            return insufficient_scope(&state, &required);
        }
    }
    let accepts_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if method == "tools/call"
        && params.get("name").and_then(Value::as_str) == Some("countdown")
        && accepts_sse
    {
        state.ok.fetch_add(1, Ordering::SeqCst);
        return countdown(id, &params);
    }
    let result = match method {
        "initialize" => Ok(json!({
            "protocolVersion": "2025-11-25",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "tower-mcp-auth-fixture", "version": env!("CARGO_PKG_VERSION")},
        })),
        "tools/list" => Ok(json!({"tools": [
            {"name": "echo", "description": "Echoes `text`.",
             "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}},
            {"name": "whoami", "description": "The user the bearer token was issued to.",
             "inputSchema": {"type": "object"}},
            {"name": "countdown", "description": "Streams `steps` progress notifications (50 ms apart) over SSE, then answers.",
             "inputSchema": {"type": "object", "properties": {"steps": {"type": "integer"}}}},
        ]})),
        "tools/call" => match params.get("name").and_then(Value::as_str) {
            Some("echo") => {
                let text = params
                    .pointer("/arguments/text")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                Ok(json!({"content": [{"type": "text", "text": text}]}))
            }
            Some("whoami") => Ok(json!({"content": [{"type": "text", "text": identity.subject}]})),
            _ => Err((-32602, "unknown tool")),
        },
        _ => Err((-32601, "method not found")),
    };
    state.ok.fetch_add(1, Ordering::SeqCst);
    let reply = match result {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err((code, message)) => {
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
        }
    };
    let mut response = if state.sse.load(Ordering::SeqCst) && accepts_sse {
        (
            [(header::CONTENT_TYPE, "text/event-stream")],
            format!("event: message\ndata: {reply}\n\n"),
        )
            .into_response()
    } else {
        Json(reply).into_response()
    };
    if method == "initialize"
        && !state.stateless.load(Ordering::SeqCst)
        && let Ok(session) = HeaderValue::from_str(&random_token("session"))
    {
        response.headers_mut().insert("mcp-session-id", session);
    }
    response
}

/// The `countdown` tool: `steps` (at most 20) `notifications/progress` events for the
/// request's `progressToken`, 50 ms apart, then the result, as one SSE stream written
/// as it goes (a proxy that buffers shows up as events arriving together).
fn countdown(id: Value, params: &Value) -> Response {
    let steps = params
        .pointer("/arguments/steps")
        .and_then(Value::as_u64)
        .unwrap_or(3)
        .min(20);
    let token = params.pointer("/_meta/progressToken").cloned();
    let (events, body) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
    tokio::spawn(async move {
        for step in 1..=steps {
            if let Some(token) = &token {
                let note = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                    "params": {"progressToken": token, "progress": step, "total": steps}});
                if events
                    .send(format!("event: message\ndata: {note}\n\n").into())
                    .await
                    .is_err()
                {
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let reply = json!({"jsonrpc": "2.0", "id": id,
            "result": {"content": [{"type": "text", "text": format!("counted {steps}")}]}});
        let _ = events
            .send(format!("event: message\ndata: {reply}\n\n").into())
            .await;
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        axum::body::Body::new(ChannelBody(body)),
    )
        .into_response()
}

/// A response body fed by a channel, frame by frame.
struct ChannelBody(tokio::sync::mpsc::Receiver<bytes::Bytes>);

impl http_body::Body for ChannelBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|event| event.map(|data| Ok(http_body::Frame::data(data))))
    }
}
