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
//! lease lapses after the redemption timeout + 5 s, and a sign-in whose callback port
//! nobody listens on any more is given up and started anew. A failure reaches the
//! client as a JSON-RPC error it can show; only one that no later request can get past
//! (a refused client registration) ends the session, with a non-zero exit.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder, ServiceExt};

use crate::client::{HttpClientConfig, ReqwestService};
use crate::layer::circuit_breaker::CircuitBreakerLayer;
use crate::store::{CredentialStore, SharedRecords, SqliteStore};
use crate::{
    AuthHttpClient, AuthorizationPrompt, Authorizer, BreakerConfig, BrowserBinding,
    CallbackService, ClientAuthMethod, Discovery, Error, OAuthRetryLayer, PreRegisteredClient,
    Principal, RefreshConfig, RefreshCoordinator, RegistrationError, ReplayBody, Secret,
    SilentRefreshLayer, UrlPolicy,
};

/// How long one refresh-token redemption may take.
const REDEMPTION_TIMEOUT: Duration = Duration::from_secs(10);

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

/// A client registered beforehand (`--client-id`), used instead of dynamic registration.
#[derive(Debug, Clone)]
pub struct BridgeClient {
    /// The client id.
    pub client_id: String,
    /// The client secret (read from the variable `--client-secret-env` names); `None`
    /// for a public client.
    pub client_secret: Option<Secret>,
    /// The authorization server the client belongs to (`--issuer`); `None`: the one
    /// the server's protected resource metadata names, looked up at start.
    pub issuer: Option<url::Url>,
}

/// What `mcp-auth-proxy stdio` was asked to do.
///
/// Secrets never appear on the command line: `--client-secret-env` names a variable,
/// and `${NAME}` in a `--header` value is replaced by the variable `NAME`.
///
/// ```
/// use tower_mcp_auth::proxy::stdio::{BridgeOptions, Browser};
///
/// let env = |name: &str| (name == "EXAMPLE_API_KEY").then(|| "k3y".to_owned());
/// let options = BridgeOptions::parse_with_env(&[
///     "https://mcp.example.com/mcp".into(),
///     "--no-browser".into(),
///     "--scope".into(),
///     "files:read files:write".into(),
///     "--header".into(),
///     "X-Api-Key: ${EXAMPLE_API_KEY}".into(),
/// ], env)
/// .unwrap();
/// assert_eq!(options.browser, Browser::Print);
/// assert_eq!(options.scopes, ["files:read", "files:write"]);
/// assert_eq!(options.headers[0].1, "k3y");
/// assert!(!format!("{options:?}").contains("k3y"), "header values stay out of Debug");
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
    /// Scopes requested besides those the server asks for (`--scope`, repeatable).
    pub scopes: Vec<String>,
    /// A pre-registered client (`--client-id`).
    pub client: Option<BridgeClient>,
    /// Headers sent with every request (`--header`), values marked sensitive. With an
    /// `Authorization` header among them the bridge does no OAuth.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// How long a request waits for the user to sign in (`--sign-in-timeout SECONDS`,
    /// default 300).
    pub sign_in_timeout: Duration,
}

impl BridgeOptions {
    /// Parses `<server-url> [--store PATH] [--browser-command 'CMD ARGS'] [--no-browser]
    /// [--scope SCOPES]... [--client-id ID [--client-secret-env VAR] [--issuer URL]]
    /// [--header 'Name: value']... [--sign-in-timeout SECONDS] [--allow-loopback-http]`,
    /// reading secrets from the process environment.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        Self::parse_with_env(args, |name| std::env::var(name).ok())
    }

    /// [`parse`](Self::parse) with variables looked up by `env`.
    pub fn parse_with_env(
        args: &[String],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let mut server = None;
        let mut store = None;
        let mut browser = Browser::System;
        let mut allow_loopback_http = false;
        let mut scopes = Vec::new();
        let mut client_id = None;
        let mut secret_variable = None;
        let mut issuer = None;
        let mut headers = Vec::new();
        let mut sign_in_timeout = SIGN_IN_TIMEOUT;
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = |what: &str| {
                args.next()
                    .cloned()
                    .ok_or_else(|| format!("{arg} needs {what}"))
            };
            match arg.as_str() {
                "--store" => store = Some(PathBuf::from(value("a path")?)),
                "--browser-command" => {
                    let words: Vec<String> = value("a command")?
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect();
                    if words.is_empty() {
                        return Err("--browser-command is empty".into());
                    }
                    browser = Browser::Command(words);
                }
                "--no-browser" => browser = Browser::Print,
                "--allow-loopback-http" => allow_loopback_http = true,
                "--scope" => scopes.extend(value("scopes")?.split_whitespace().map(str::to_owned)),
                "--client-id" => client_id = Some(value("a client id")?),
                "--client-secret-env" => secret_variable = Some(value("a variable name")?),
                "--issuer" => issuer = Some(http_url(&value("a URL")?)?),
                "--header" => headers.push(header_arg(&value("'Name: value'")?, &env)?),
                "--sign-in-timeout" => {
                    let seconds = value("seconds")?;
                    sign_in_timeout = seconds
                        .parse::<u64>()
                        .ok()
                        .filter(|s| (1..=3600).contains(s))
                        .map(Duration::from_secs)
                        .ok_or_else(|| {
                            format!("--sign-in-timeout: `{seconds}` is not 1..3600 seconds")
                        })?;
                }
                other if other.starts_with("--") => return Err(format!("unknown option {other}")),
                url => server = Some(http_url(url)?),
            }
        }
        let client = match (client_id, secret_variable, issuer) {
            (Some(client_id), variable, issuer) => Some(BridgeClient {
                client_id,
                client_secret: match variable {
                    None => None,
                    Some(name) => Some(Secret::new(
                        env(&name).filter(|v| !v.is_empty()).ok_or_else(|| {
                            format!("--client-secret-env: the variable {name} is not set")
                        })?,
                    )),
                },
                issuer,
            }),
            (None, None, None) => None,
            (None, _, _) => {
                return Err("--client-secret-env and --issuer go with --client-id".into());
            }
        };
        Ok(Self {
            server: server.ok_or("the server URL is missing")?,
            store: store.unwrap_or_else(default_store),
            browser,
            allow_loopback_http,
            scopes,
            client,
            headers,
            sign_in_timeout,
        })
    }

    /// Whether an `Authorization` header was given: the bridge then does no OAuth.
    fn static_authorization(&self) -> bool {
        self.headers
            .iter()
            .any(|(name, _)| name == header::AUTHORIZATION)
    }
}

fn http_url(text: &str) -> Result<url::Url, String> {
    url::Url::parse(text)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| format!("`{text}` is not an http(s) URL"))
}

/// `Name: value`, with each `${VAR}` in the value replaced by that variable.
fn header_arg(
    text: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(HeaderName, HeaderValue), String> {
    let (name, template) = text
        .split_once(':')
        .ok_or_else(|| format!("--header `{text}`: expected `Name: value`"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("--header: `{}` is not a header name", name.trim()))?;
    let mut value = String::new();
    let mut rest = template.trim();
    while let Some(at) = rest.find("${") {
        value.push_str(&rest[..at]);
        let end = rest[at..]
            .find('}')
            .ok_or_else(|| format!("--header {name}: unclosed `${{`"))?;
        let variable = &rest[at + 2..at + end];
        value.push_str(
            &env(variable)
                .ok_or_else(|| format!("--header {name}: the variable {variable} is not set"))?,
        );
        rest = &rest[at + end + 1..];
    }
    value.push_str(rest);
    // The value comes from the environment: it never reaches an error message.
    let mut value = HeaderValue::from_str(&value)
        .map_err(|_| format!("--header {name}: the value is not a valid header value"))?;
    value.set_sensitive(true);
    Ok((name, value))
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
    /// Failures that end the session (after the client got its error).
    fatal: tokio::sync::mpsc::UnboundedSender<String>,
    /// `None` with a static `Authorization` header.
    sign_in: Option<SignIn>,
}

/// The sign-in this copy opened in the browser, so a request that waited it out in
/// vain can abandon it: the next request then opens the browser again instead of
/// joining a flow whose page the user closed.
#[derive(Clone)]
struct SignIn {
    authorizer: Authorizer,
    opened: Arc<Mutex<Option<Secret>>>,
}

/// Why a sign-in another copy opened was given up: that copy exited, and the browser
/// would come back to a port nobody listens on. Requests waiting on it start anew.
const ORPHANED: &str = "the copy of the bridge that opened this sign-in exited";

/// How often a copy checks that the copy serving the open sign-in's callback is alive.
const ORPHAN_CHECK: Duration = Duration::from_secs(1);

impl SignIn {
    /// Fails the open sign-in when the copy whose loopback listener its redirect URI
    /// names has died (killed mid-login): the browser could never come back, and every
    /// copy waiting on it would wait out its sign-in timeout.
    async fn watch_for_orphans(self, own_port: u16) {
        let user = Principal::new("local", "user");
        loop {
            tokio::time::sleep(ORPHAN_CHECK).await;
            let Some(flow) = self.authorizer.open_flow(&user).await else {
                continue;
            };
            let Some(port) = flow.request.redirect_uri.port() else {
                continue;
            };
            if port == own_port {
                continue;
            }
            let probe = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect(("127.0.0.1", port)),
            )
            .await;
            // Refused (nobody listens) is proof; a slow answer is not.
            if matches!(probe, Ok(Err(_))) {
                tracing::warn!(
                    port,
                    "the copy serving the open sign-in is gone; starting anew"
                );
                self.authorizer.fail_flow(&flow.state, ORPHANED).await;
            }
        }
    }

    async fn abandon(&self) {
        let state = self.opened.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(state) = state {
            self.authorizer
                .fail_flow(&state, "the sign-in was not completed in time")
                .await;
        }
    }
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
            let line = tokio::select! {
                biased;
                line = lines.recv() => line,
                // Told to stop: what was already sent still goes out.
                _ = &mut stopped => lines.try_recv().ok(),
            };
            let Some(line) = line else { break };
            if stdout.write_all(line.as_bytes()).await.is_err()
                || stdout.write_all(b"\n").await.is_err()
                || stdout.flush().await.is_err()
            {
                break;
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
        let bridge = bridge.clone();
        tasks.spawn(async move { bridge.forward(line).await });
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

/// The OAuth layers: `OAuthRetryLayer` (wait mode, sign-in through the loopback
/// listener) and `SilentRefreshLayer`, on the SQLite file every copy shares.
async fn oauth_layers(
    options: &BridgeOptions,
) -> Result<(OAuthRetryLayer, SilentRefreshLayer, SignIn), BoxError> {
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
    let mut builder = Authorizer::builder(
        options.server.as_str(),
        credentials.clone(),
        format!("http://127.0.0.1:{port}/callback").parse()?,
    )
    .client_name("mcp-auth-proxy stdio")
    .start_url(format!("http://127.0.0.1:{port}/start").parse()?)
    .url_policy(policy)
    .shared_state(records)
    .scopes(options.scopes.iter().cloned());
    if let Some(client) = &options.client {
        let issuer = match &client.issuer {
            Some(issuer) => issuer.to_string(),
            None => authorization_server_of(&options.server, policy).await?,
        };
        let registered = PreRegisteredClient::new(issuer, client.client_id.clone());
        builder = builder.pre_registered(match &client.client_secret {
            Some(secret) => {
                registered.with_secret(secret.clone(), ClientAuthMethod::ClientSecretBasic)
            }
            None => registered,
        });
    }
    let authorizer = builder.build()?;
    let key = crate::crypto::random_bytes::<32>();
    let callback = CallbackService::new(
        authorizer.completer(),
        BrowserBinding::new(&key).insecure_cookies(),
    )
    .with_start_path("/start")
    .with_app_name("mcp-auth-proxy");
    let app = crate::callback_router("/callback", callback);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let sign_in = SignIn {
        authorizer: authorizer.clone(),
        opened: Arc::default(),
    };
    tokio::spawn(sign_in.clone().watch_for_orphans(port));
    let browser = options.browser.clone();
    let opened = sign_in.opened.clone();
    let handler = move |prompt: AuthorizationPrompt| {
        let browser = browser.clone();
        *opened.lock().unwrap_or_else(|e| e.into_inner()) = Some(prompt.flow.state.clone());
        async move { open(&browser, prompt.url().as_str()).await }
    };
    let oauth = OAuthRetryLayer::wait(authorizer.clone(), handler)
        .with_wait_timeout(options.sign_in_timeout)
        .with_default_principal(Principal::new("local", "user"));
    // A copy killed while redeeming blocks the others until its lease lapses: the
    // redemption timeout plus up to 5 s. 10 s suits a desktop; the default 30 s would
    // leave the user waiting 35 s.
    let refresh = RefreshCoordinator::builder(credentials)
        .config(RefreshConfig::default().with_timeout(REDEMPTION_TIMEOUT))
        .build();
    let silent = SilentRefreshLayer::new(refresh, authorizer.bindings())
        .with_default_principal(Principal::new("local", "user"));
    Ok((oauth, silent, sign_in))
}

/// The one authorization server `server`'s protected resource metadata names: where a
/// `--client-id` given without `--issuer` belongs.
async fn authorization_server_of(server: &url::Url, policy: UrlPolicy) -> Result<String, BoxError> {
    let discovery = Discovery::new(AuthHttpClient::with_policy(policy), policy);
    let metadata = discovery
        .protected_resource(server, None)
        .await
        .map_err(|error| {
            format!("cannot learn the server's authorization server ({error}); pass --issuer")
        })?;
    match metadata.authorization_servers.as_slice() {
        [issuer] => Ok(issuer.clone()),
        several => Err(format!(
            "the server names {} authorization servers; pass --issuer with the one --client-id belongs to",
            several.len()
        )
        .into()),
    }
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

fn orphaned(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(Error::find(error), Some(Error::AuthorizationFailed { reason }) if reason == ORPHANED)
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

    fn parse(args: &[&str]) -> Result<BridgeOptions, String> {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        BridgeOptions::parse_with_env(&args, |name| {
            (name == "SECRET").then(|| "s3cr3t-value".to_owned())
        })
    }

    #[test]
    fn options_read_secrets_from_the_environment_and_keep_them_out_of_debug() {
        let options = parse(&[
            "https://mcp.example.com/mcp",
            "--client-id",
            "desktop",
            "--client-secret-env",
            "SECRET",
            "--header",
            "Authorization: Bearer ${SECRET}",
            "--sign-in-timeout",
            "30",
        ])
        .unwrap();
        let client = options.client.as_ref().unwrap();
        assert_eq!(client.client_id, "desktop");
        assert_eq!(
            client.client_secret.as_ref().unwrap().expose(),
            "s3cr3t-value"
        );
        assert_eq!(options.headers[0].1, "Bearer s3cr3t-value");
        assert!(options.static_authorization());
        assert_eq!(options.sign_in_timeout, Duration::from_secs(30));
        assert!(!format!("{options:?}").contains("s3cr3t"));
    }

    #[test]
    fn bad_options_are_refused_with_what_is_wrong() {
        let url = "https://mcp.example.com/mcp";
        for (args, expected) in [
            (
                vec![url, "--header", "X-Key: ${MISSING}"],
                "MISSING is not set",
            ),
            (vec![url, "--header", "no colon"], "expected `Name: value`"),
            (vec![url, "--header", "X-Key: ${OPEN"], "unclosed"),
            (
                vec![url, "--client-secret-env", "SECRET"],
                "go with --client-id",
            ),
            (
                vec![url, "--client-id", "x", "--client-secret-env", "NOPE"],
                "NOPE is not set",
            ),
            (vec![url, "--sign-in-timeout", "0"], "not 1..3600"),
            (vec![url, "--issuer", "ftp://x"], "not an http(s) URL"),
            (vec![url, "--scope"], "--scope needs scopes"),
            (vec!["--no-browser"], "server URL is missing"),
            (vec![url, "--frobnicate"], "unknown option"),
        ] {
            let error = parse(&args).unwrap_err();
            assert!(error.contains(expected), "{args:?}: {error}");
        }
    }

    #[test]
    fn sse_events_are_cut_at_blank_lines_whatever_the_chunks() {
        let mut lines = SseLines::default();
        assert!(lines.push(b"event: message\ndata: {\"a\":").is_empty());
        assert_eq!(lines.push(b"1}\n\ndata: 2\r\n\r\n"), ["{\"a\":1}", "2"]);
    }
}
