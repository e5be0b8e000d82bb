//! `mcp-auth-proxy stdio`: a stdio MCP server for desktop hosts that speak only stdio,
//! talking Streamable HTTP to an OAuth-protected remote server through this crate's
//! full stack (circuit breaker, `OAuthRetryLayer` in wait mode, `SilentRefreshLayer`).
//!
//! JSON-RPC messages are read from stdin one per line and POSTed; JSON and SSE answers
//! go to stdout one message per line (logs only to stderr). The standalone GET stream
//! is opened once the session is initialized. Sign-in: the start link is opened in
//! the browser (or given to `--browser-command`, or printed), the code comes back to a
//! loopback listener (RFC 8252). Credentials, the client registration and pending
//! flows live in a SQLite file keyed by server, never by this program's version.
//!
//! Copies for one server cooperate through that file: one sign-in, one refresh per
//! expiry (a lease), and neither stranded by a copy that dies holding it: a refresh
//! lease lapses 2.5 s after its holder stops renewing it, and a sign-in whose callback port
//! nobody listens on any more is given up and started anew. A failure reaches the
//! client as a JSON-RPC error it can show; only one that no later request can get past
//! (a refused client registration) ends the session, with a non-zero exit.

mod options;
mod sign_in;

pub use options::{BridgeClient, BridgeOptions, Browser};

use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder, ServiceExt};

use sign_in::{SignIn, oauth_layers, orphaned};
use tower_mcp_auth::client::{HttpClientConfig, ReqwestService};
use tower_mcp_auth::layer::circuit_breaker::CircuitBreakerLayer;
use tower_mcp_auth::{BreakerConfig, Error, ReplayBody, oauth::RegistrationError};

type Stack =
    BoxCloneSyncService<http::Request<ReplayBody>, http::Response<reqwest::Body>, BoxError>;

/// The session state shared by the request tasks.
#[derive(Default)]
struct Session {
    id: Option<HeaderValue>,
    protocol_version: Option<HeaderValue>,
    stream_opened: bool,
}

#[derive(Clone)]
struct Bridge {
    stack: Stack,
    server: url::Url,
    session: Arc<Mutex<Session>>,
    out: tokio::sync::mpsc::UnboundedSender<String>,
    /// Failures that end the session (after the client got its error).
    fatal: tokio::sync::mpsc::UnboundedSender<String>,
    /// `None` with a static `Authorization` header.
    sign_in: Option<SignIn>,
}

/// Runs the bridge until stdin closes (`Ok`), or until a failure no request can get
/// past, such as a refused client registration (`Err`, after the client got its
/// JSON-RPC error).
pub async fn run(options: BridgeOptions) -> Result<(), BoxError> {
    let http = ReqwestService::with_config(
        &HttpClientConfig::new().connect_timeout(Duration::from_secs(10)),
    )?;
    let headers = Arc::new(options.headers.clone());
    let http = ServiceBuilder::new()
        .map_request(move |mut request: http::Request<ReplayBody>| {
            for (name, value) in headers.iter() {
                request.headers_mut().insert(name, value.clone());
            }
            request
        })
        .service(http);
    let breaker = CircuitBreakerLayer::new(BreakerConfig::default().without_storm_guard());
    let (stack, sign_in) = if options.static_authorization() {
        // The credentials are the given header: no sign-in, nothing stored.
        let stack = BoxCloneSyncService::new(ServiceBuilder::new().layer(breaker).service(http));
        (stack, None)
    } else {
        let (oauth, silent, sign_in) = oauth_layers(&options).await?;
        let stack = BoxCloneSyncService::new(
            ServiceBuilder::new()
                .layer(breaker)
                .layer(oauth)
                .layer(silent)
                .service(http),
        );
        (stack, Some(sign_in))
    };
    let (out, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (stop_writer, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        loop {
            tokio::select! {
                biased;
                line = lines.recv() => match line {
                    Some(line) if write_line(&mut stdout, &line).await => {}
                    _ => break,
                },
                // Told to stop: what was already sent still goes out.
                _ = &mut stopped => {
                    while let Ok(line) = lines.try_recv() {
                        if !write_line(&mut stdout, &line).await {
                            break;
                        }
                    }
                    break;
                }
            }
        }
    });
    let (fatal, mut fatal_errors) = tokio::sync::mpsc::unbounded_channel::<String>();
    let bridge = Bridge {
        stack,
        server: options.server,
        session: Arc::default(),
        out,
        fatal,
        sign_in,
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let ended = loop {
        let line = tokio::select! {
            line = stdin.next_line() => line?,
            Some(reason) = fatal_errors.recv() => break Some(reason),
        };
        let Some(line) = line else { break None };
        if line.trim().is_empty() {
            continue;
        }
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            bridge.write(json!({"jsonrpc": "2.0", "id": null,
                "error": {"code": -32700, "message": "parse error: not a JSON-RPC message"}}));
            continue;
        };
        let request = message.get("method").is_some() && message.get("id").is_some();
        let bridge = bridge.clone();
        if request {
            // Requests run side by side: a long tool call holds up nothing.
            tasks.spawn(async move { bridge.forward(line, message).await });
        } else {
            // Notifications and answers to the server's requests keep their place:
            // `notifications/initialized` must reach the server before the requests
            // written after it (a server may enable tools only then).
            tokio::select! {
                () = bridge.forward(line, message) => {}
                Some(reason) = fatal_errors.recv() => break Some(reason),
            }
        }
    };
    if ended.is_none() {
        // stdin closed: let answers in flight finish (bounded), then end the session.
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
    }
    tasks.abort_all();
    bridge.delete_session().await;
    drop(bridge);
    // The standalone stream's task may still hold a sender: stop the writer explicitly.
    let _ = stop_writer.send(());
    let _ = writer.await;
    match ended {
        None => Ok(()),
        Some(reason) => Err(reason.into()),
    }
}

/// One message and its newline, flushed at once; `false` once stdout is gone.
async fn write_line(stdout: &mut tokio::io::Stdout, line: &str) -> bool {
    stdout.write_all(line.as_bytes()).await.is_ok()
        && stdout.write_all(b"\n").await.is_ok()
        && stdout.flush().await.is_ok()
}

impl Bridge {
    fn request(&self, method: Method, body: Bytes) -> Result<http::Request<ReplayBody>, BoxError> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(self.server.as_str())
            .header(header::ACCEPT, "application/json, text/event-stream");
        if !body.is_empty() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        {
            let session = self.session.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(id) = &session.id {
                request = request.header("mcp-session-id", id);
            }
            if let Some(version) = &session.protocol_version {
                request = request.header("mcp-protocol-version", version);
            }
        }
        Ok(request.body(ReplayBody::buffered(body))?)
    }

    /// One message from stdin (`line`, parsed as `message`): sent, and whatever comes
    /// back written out.
    async fn forward(self, line: String, message: Value) {
        let id = message
            .get("id")
            .cloned()
            .filter(|_| message.get("method").is_some());
        let method = message
            .get("method")
            .and_then(Value::as_str)
            .map(str::to_owned);
        // A panic in here must still answer the client, which would wait forever.
        let result = AssertUnwindSafe(async {
            let body = Bytes::from(line);
            let request = self.request(Method::POST, body.clone())?;
            let response = match self.stack.clone().oneshot(request).await {
                // The sign-in it waited on was orphaned: once more, with a new one.
                Err(error) if orphaned(error.as_ref()) => {
                    let request = self.request(Method::POST, body)?;
                    self.stack.clone().oneshot(request).await?
                }
                result => result?,
            };
            if method.as_deref() == Some("initialize")
                && let Some(session) = response.headers().get("mcp-session-id")
            {
                self.session.lock().unwrap_or_else(|e| e.into_inner()).id = Some(session.clone());
            }
            self.relay(response, method.as_deref() == Some("initialize"))
                .await
        })
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Err("the bridge failed on this request (it panicked)".into()));
        if let Err(error) = result {
            tracing::warn!(%error, "request failed");
            if let (Some(sign_in), Some(Error::AuthorizationTimedOut { .. })) =
                (&self.sign_in, Error::find(error.as_ref()))
            {
                sign_in.abandon().await;
            }
            let text = failure_text(error.as_ref());
            if let Some(id) = id {
                self.write(json!({"jsonrpc": "2.0", "id": id,
                    "error": {"code": -32603, "message": text}}));
            }
            if ends_session(error.as_ref()) {
                let _ = self.fatal.send(text);
            }
        }
        if method.as_deref() == Some("notifications/initialized") {
            self.open_stream();
        }
    }

    /// Writes a response's JSON-RPC messages out: one JSON body, or each SSE event.
    async fn relay(
        &self,
        response: http::Response<reqwest::Body>,
        initialize: bool,
    ) -> Result<(), BoxError> {
        let status = response.status();
        if status == StatusCode::ACCEPTED || status == StatusCode::NO_CONTENT {
            return Ok(());
        }
        let sse = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if !status.is_success() && !sse {
            let body = response.into_body().collect().await?.to_bytes();
            // A JSON-RPC error body is passed on; anything else becomes one.
            if let Ok(message) = serde_json::from_slice::<Value>(&body)
                && message.get("jsonrpc").is_some()
            {
                self.write(message);
                return Ok(());
            }
            return Err(format!("the server answered {status}").into());
        }
        let mut body = response.into_body();
        if !sse {
            let bytes = body.collect().await?.to_bytes();
            let message: Value = serde_json::from_slice(&bytes)?;
            self.note(&message, initialize);
            self.write(message);
            return Ok(());
        }
        let mut events = SseLines::default();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            for event in events.push(&data) {
                if let Ok(message) = serde_json::from_str::<Value>(&event) {
                    self.note(&message, initialize);
                    self.write(message);
                }
            }
        }
        Ok(())
    }

    /// Remembers the negotiated protocol version from `initialize`'s result.
    fn note(&self, message: &Value, initialize: bool) {
        if initialize
            && let Some(version) = message
                .pointer("/result/protocolVersion")
                .and_then(Value::as_str)
            && let Ok(version) = HeaderValue::from_str(version)
        {
            self.session
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .protocol_version = Some(version);
        }
    }

    /// The standalone GET stream, once: server notifications and requests.
    fn open_stream(&self) {
        {
            let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
            if session.stream_opened {
                return;
            }
            session.stream_opened = true;
        }
        let bridge = self.clone();
        tokio::spawn(async move {
            let Ok(request) = bridge.request(Method::GET, Bytes::new()) else {
                return;
            };
            match bridge.stack.clone().oneshot(request).await {
                Ok(response) if response.status().is_success() => {
                    let _ = bridge.relay(response, false).await;
                }
                Ok(_) => {} // 405: the server offers no standalone stream
                Err(error) => tracing::info!(%error, "no standalone stream"),
            }
        });
    }

    async fn delete_session(&self) {
        if self
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .id
            .is_none()
        {
            return;
        }
        if let Ok(request) = self.request(Method::DELETE, Bytes::new()) {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), self.stack.clone().oneshot(request))
                    .await;
        }
    }

    fn write(&self, message: Value) {
        let _ = self.out.send(message.to_string());
    }
}

/// What the user reads when a request could not be sent.
fn failure_text(error: &(dyn std::error::Error + 'static)) -> String {
    match Error::find(error) {
        Some(Error::AuthorizationTimedOut { waited }) => format!(
            "sign-in was not completed within {} s (was the browser closed?); the next request opens it again",
            waited.as_secs()
        ),
        Some(Error::AuthorizationFailed { reason }) => format!("sign-in failed: {reason}"),
        Some(Error::CircuitOpen { retry_after, .. }) => format!(
            "the server is failing; retrying in {} s",
            retry_after.as_secs().max(1)
        ),
        Some(Error::Registration(reason)) => format!(
            "the authorization server refused to register this bridge as a client ({reason}); \
             pass --client-id (and --client-secret-env) of a client registered there"
        ),
        Some(other) => other.to_string(),
        None => {
            // reqwest's own text leaves out why ("connection refused", a DNS failure).
            let mut cause = error.source();
            let mut root = None;
            while let Some(next) = cause {
                root = Some(next);
                cause = next.source();
            }
            match root {
                Some(root) => format!("the server could not be reached: {error}: {root}"),
                None => format!("the server could not be reached: {error}"),
            }
        }
    }
}

/// Whether no later request can succeed either: the session ends (non-zero exit).
fn ends_session(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        Error::find(error),
        Some(Error::Registration(reason)) if !matches!(reason, RegistrationError::Unavailable(_))
    )
}

/// The `data` of each complete SSE event, from chunks as they arrive.
#[derive(Default)]
struct SseLines {
    pending: Vec<u8>,
}

impl SseLines {
    fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        loop {
            let text = &self.pending;
            let end = text
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|at| (at, 2))
                .or_else(|| {
                    text.windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map(|at| (at, 4))
                });
            let Some((at, separator)) = end else { break };
            let event: Vec<u8> = self.pending.drain(..at + separator).collect();
            let text = String::from_utf8_lossy(&event).into_owned();
            let data = text
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(|data| data.strip_prefix(' ').unwrap_or(data))
                .collect::<Vec<_>>()
                .join("\n");
            if !data.trim().is_empty() {
                events.push(data);
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_cut_at_blank_lines_whatever_the_chunks() {
        let mut lines = SseLines::default();
        assert!(lines.push(b"event: message\ndata: {\"a\":").is_empty());
        assert_eq!(lines.push(b"1}\n\ndata: 2\r\n\r\n"), ["{\"a\":1}", "2"]);
    }
}
