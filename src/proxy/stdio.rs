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

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder, ServiceExt};

use crate::client::{HttpClientConfig, ReqwestService};
use crate::layer::circuit_breaker::CircuitBreakerLayer;
use crate::store::{CredentialStore, SharedRecords, SqliteStore};
use crate::{
    AuthorizationPrompt, Authorizer, BreakerConfig, BrowserBinding, CallbackService, Error,
    OAuthRetryLayer, Principal, RefreshCoordinator, ReplayBody, SilentRefreshLayer, UrlPolicy,
};

/// How long a request waits for the user to sign in.
const SIGN_IN_TIMEOUT: Duration = Duration::from_secs(300);

/// How the sign-in link reaches the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Browser {
    /// The system browser (`xdg-open`, `open`).
    System,
    /// A program given the link as its last argument.
    Command(Vec<String>),
    /// Printed to stderr only.
    Print,
}

/// What `mcp-auth-proxy stdio` was asked to do.
///
/// ```
/// use tower_mcp_auth::proxy::stdio::{BridgeOptions, Browser};
///
/// let options = BridgeOptions::parse(&[
///     "https://mcp.example.com/mcp".into(),
///     "--no-browser".into(),
/// ])
/// .unwrap();
/// assert_eq!(options.browser, Browser::Print);
/// ```
#[derive(Debug, Clone)]
pub struct BridgeOptions {
    /// The remote MCP endpoint.
    pub server: url::Url,
    /// The SQLite file shared by every copy of the bridge for this user.
    pub store: PathBuf,
    /// How the sign-in link reaches the user.
    pub browser: Browser,
    /// Lets the server and its authorization server be plain `http` on loopback
    /// (development and tests).
    pub allow_loopback_http: bool,
}

impl BridgeOptions {
    /// Parses `<server-url> [--store PATH] [--browser-command 'CMD ARGS'] [--no-browser]
    /// [--allow-loopback-http]`.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut server = None;
        let mut store = None;
        let mut browser = Browser::System;
        let mut allow_loopback_http = false;
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--store" => {
                    store = Some(PathBuf::from(args.next().ok_or("--store needs a path")?))
                }
                "--browser-command" => {
                    let command = args.next().ok_or("--browser-command needs a command")?;
                    let words: Vec<String> =
                        command.split_whitespace().map(str::to_owned).collect();
                    if words.is_empty() {
                        return Err("--browser-command is empty".into());
                    }
                    browser = Browser::Command(words);
                }
                "--no-browser" => browser = Browser::Print,
                "--allow-loopback-http" => allow_loopback_http = true,
                other if other.starts_with("--") => return Err(format!("unknown option {other}")),
                url => {
                    let parsed = url::Url::parse(url)
                        .ok()
                        .filter(|u| matches!(u.scheme(), "http" | "https"))
                        .ok_or_else(|| format!("`{url}` is not an http(s) URL"))?;
                    server = Some(parsed);
                }
            }
        }
        Ok(Self {
            server: server.ok_or("the server URL is missing")?,
            store: store.unwrap_or_else(default_store),
            browser,
            allow_loopback_http,
        })
    }
}

/// `$XDG_DATA_HOME/mcp-auth-proxy/credentials.db` (or `~/.local/share/...`; on macOS
/// `~/Library/Application Support/...`): one file per user, whatever the version.
fn default_store() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let base = if cfg!(target_os = "macos") {
        home.join("Library/Application Support")
    } else {
        std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".local/share"))
    };
    base.join("mcp-auth-proxy").join("credentials.db")
}

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
}

/// Runs the bridge until stdin closes.
pub async fn run(options: BridgeOptions) -> Result<(), BoxError> {
    if let Some(dir) = options.store.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let store = Arc::new(SqliteStore::open(&options.store)?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let policy = if options.allow_loopback_http {
        UrlPolicy::default().allow_loopback_http()
    } else {
        UrlPolicy::default()
    };
    let credentials: Arc<dyn CredentialStore> = store.clone();
    let records: Arc<dyn SharedRecords> = store;
    let authorizer = Authorizer::builder(
        options.server.as_str(),
        credentials.clone(),
        format!("http://127.0.0.1:{port}/callback").parse()?,
    )
    .client_name("mcp-auth-proxy stdio")
    .start_url(format!("http://127.0.0.1:{port}/start").parse()?)
    .url_policy(policy)
    .shared_state(records)
    .build()?;
    let key = crate::crypto::random_bytes::<32>();
    let callback = CallbackService::new(
        authorizer.completer(),
        BrowserBinding::new(&key).insecure_cookies(),
    )
    .with_start_path("/start")
    .with_app_name("mcp-auth-proxy");
    let app = crate::callback_router("/callback", callback);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let browser = options.browser.clone();
    let handler = move |prompt: AuthorizationPrompt| {
        let browser = browser.clone();
        async move { open(&browser, prompt.url().as_str()).await }
    };
    let http = ReqwestService::with_config(
        &HttpClientConfig::new().connect_timeout(Duration::from_secs(10)),
    )?;
    let stack = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(
            BreakerConfig::default().without_storm_guard(),
        ))
        .layer(
            OAuthRetryLayer::wait(authorizer.clone(), handler)
                .with_wait_timeout(SIGN_IN_TIMEOUT)
                .with_default_principal(Principal::new("local", "user")),
        )
        .layer(
            SilentRefreshLayer::new(RefreshCoordinator::new(credentials), authorizer.bindings())
                .with_default_principal(Principal::new("local", "user")),
        )
        .service(http);
    let (out, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = lines.recv().await {
            if stdout.write_all(line.as_bytes()).await.is_err()
                || stdout.write_all(b"\n").await.is_err()
                || stdout.flush().await.is_err()
            {
                break;
            }
        }
    });
    let bridge = Bridge {
        stack: BoxCloneSyncService::new(stack),
        server: options.server,
        session: Arc::default(),
        out,
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = stdin.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let bridge = bridge.clone();
        tasks.spawn(async move { bridge.forward(line).await });
    }
    // stdin closed: let answers in flight finish (bounded), then end the session.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    bridge.delete_session().await;
    drop(bridge);
    let _ = writer.await;
    Ok(())
}

/// Hands the sign-in link to the user.
async fn open(browser: &Browser, url: &str) -> Result<(), BoxError> {
    eprintln!("mcp-auth-proxy: sign in at {url}");
    let (program, args): (&str, Vec<&str>) = match browser {
        Browser::Print => return Ok(()),
        Browser::System if cfg!(target_os = "macos") => ("open", vec![]),
        Browser::System => ("xdg-open", vec![]),
        Browser::Command(words) => (
            words[0].as_str(),
            words[1..].iter().map(String::as_str).collect(),
        ),
    };
    let status = tokio::process::Command::new(program)
        .args(args)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .map_err(|error| format!("cannot run {program}: {error}"))?;
    if !status.success() {
        return Err(format!("{program} failed: {status}").into());
    }
    Ok(())
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

    /// One message from stdin: sent, and whatever comes back written out.
    async fn forward(self, line: String) {
        let message: Value = match serde_json::from_str(&line) {
            Ok(message) => message,
            Err(_) => {
                self.write(json!({"jsonrpc": "2.0", "id": null,
                    "error": {"code": -32700, "message": "parse error: not a JSON-RPC message"}}));
                return;
            }
        };
        let id = message
            .get("id")
            .cloned()
            .filter(|_| message.get("method").is_some());
        let method = message
            .get("method")
            .and_then(Value::as_str)
            .map(str::to_owned);
        // A panic in here must still answer the client, which would wait forever.
        let result = crate::limits::catch_panic(async {
            let request = self.request(Method::POST, Bytes::from(line))?;
            let response = self.stack.clone().oneshot(request).await?;
            if method.as_deref() == Some("initialize")
                && let Some(session) = response.headers().get("mcp-session-id")
            {
                self.session.lock().unwrap_or_else(|e| e.into_inner()).id = Some(session.clone());
            }
            self.relay(response, method.as_deref() == Some("initialize"))
                .await
        })
        .await
        .unwrap_or_else(|_| Err("the bridge failed on this request (it panicked)".into()));
        if let Err(error) = result {
            tracing::warn!(%error, "request failed");
            if let Some(id) = id {
                self.write(json!({"jsonrpc": "2.0", "id": id,
                    "error": {"code": -32603, "message": failure_text(error.as_ref())}}));
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
        Some(Error::AuthorizationTimedOut { .. }) => {
            "sign-in was not completed in time; try again".to_owned()
        }
        Some(Error::AuthorizationFailed { reason }) => format!("sign-in failed: {reason}"),
        Some(Error::CircuitOpen { retry_after, .. }) => format!(
            "the server is failing; retrying in {} s",
            retry_after.as_secs().max(1)
        ),
        Some(other) => other.to_string(),
        None => format!("the server could not be reached: {error}"),
    }
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
