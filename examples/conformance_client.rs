//! A minimal MCP client on the tower-mcp-auth layer stack, for the official MCP
//! conformance suite (`@modelcontextprotocol/conformance`, client scenarios).
//!
//! The runner starts it as `conformance_client <server-url>` with
//! `MCP_CONFORMANCE_SCENARIO` and, for some scenarios, `MCP_CONFORMANCE_CONTEXT` set.
//! It does the same thing for every scenario — initialize, list the tools, call each
//! one — over Streamable HTTP (JSON or SSE answers, SSE resumption with `Last-Event-ID`
//! after the server's `retry`, server requests such as `elicitation/create` answered
//! on the way). Authorization is entirely the layers' job: `OAuthRetryLayer` (wait
//! mode, completing flows headlessly) over `SilentRefreshLayer`; for cross-app access
//! (SEP-990), `OboHeaderLayer` exchanging the user's ID token. The context only
//! supplies what a real deployment would configure: pre-registered credentials, the
//! user's identity provider and token.
//!
//! Run it by hand against a server: `cargo run --example conformance_client -- http://localhost:3000/mcp`.
//! `scripts/conformance.sh` runs every scenario strictly, one at a time.

use std::sync::Arc;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_mcp_auth::store::MemoryStore;
use tower_mcp_auth::testing::HeadlessBrowser;
use tower_mcp_auth::{
    AuthHttpClient, Authorizer, OAuthRetryLayer, OboExchanger, OboHeaderLayer, Principal,
    RefreshCoordinator, Secret, SilentRefreshLayer, UrlPolicy, UserAssertion,
    binding::ClientAuthMethod, oauth::Discovery, oauth::PreRegisteredClient, obo::ClientAuth,
    obo::OboConfig, obo::OboGrant,
};

/// Where the (never contacted) redirect URI points, as in the reference clients.
const REDIRECT_URI: &str = "http://localhost:3000/callback";
/// This client's Client ID Metadata Document, used where the server supports CIMD.
const CLIENT_METADATA_URL: &str = "https://conformance-test.local/client-metadata.json";
/// The runner kills clients after 30 s; finish (and report) before that.
pub(crate) const OVERALL_TIMEOUT: Duration = Duration::from_secs(25);
const PROTOCOL_VERSION: &str = "2025-11-25";
const MAX_RECONNECTS: usize = 5;

pub(crate) type HttpService =
    BoxCloneSyncService<Request<tower_mcp_auth::ReplayBody>, Response<reqwest::Body>, BoxError>;

use tower_mcp_auth::client::{HttpClientConfig, ReqwestService};

/// One server-sent event.
#[derive(Debug, Default)]
struct SseEvent {
    id: Option<String>,
    retry: Option<Duration>,
    data: String,
}

/// Splits an SSE byte stream into events (LF or CRLF line endings).
#[derive(Default)]
struct SseParser {
    buffer: BytesMut,
}

impl SseParser {
    fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(chunk);
        let mut events = Vec::new();
        loop {
            let text = String::from_utf8_lossy(&self.buffer).replace("\r\n", "\n");
            let Some(end) = text.find("\n\n") else { break };
            let block = text[..end].to_owned();
            let rest = text[end + 2..].to_owned();
            self.buffer = BytesMut::from(rest.as_bytes());
            let mut event = SseEvent::default();
            let mut data = Vec::new();
            for line in block.lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => event.id = Some(value.to_owned()),
                    "retry" => event.retry = value.parse().ok().map(Duration::from_millis),
                    "data" => data.push(value),
                    _ => {}
                }
            }
            event.data = data.join("\n");
            events.push(event);
        }
        events
    }
}

#[derive(Clone)]
struct McpClient {
    service: HttpService,
    url: String,
    session: Option<HeaderValue>,
    protocol_version: Option<HeaderValue>,
    next_id: u64,
    /// The user's token, for On-Behalf-Of exchanges (never sent as is).
    assertion: Option<UserAssertion>,
    /// Responses that arrived on a stream nobody was reading them from (a server may
    /// answer a resumed request on any GET stream, the standalone one included).
    unclaimed: Arc<Unclaimed>,
}

#[derive(Default)]
struct Unclaimed {
    responses: std::sync::Mutex<std::collections::HashMap<String, Value>>,
    arrived: tokio::sync::Notify,
}

impl Unclaimed {
    fn put(&self, message: Value) {
        let id = message["id"].to_string();
        self.responses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, message);
        self.arrived.notify_waiters();
    }

    fn take(&self, id: u64) -> Option<Value> {
        self.responses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&json!(id).to_string())
    }

    /// Waits until the response to `id` arrives on another stream.
    async fn claim(&self, id: u64) -> Value {
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(message) = self.take(id) {
                return message;
            }
            arrived.await;
        }
    }
}

impl McpClient {
    fn post(&self, message: &Value) -> Request<reqwest::Body> {
        let mut request = Request::new(reqwest::Body::from(message.to_string()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.url.parse().expect("server URL");
        let headers = request.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        self.session_headers(headers);
        request
    }

    fn with_assertion(&self, mut request: Request<reqwest::Body>) -> Request<reqwest::Body> {
        if let Some(assertion) = &self.assertion {
            request.extensions_mut().insert(assertion.clone());
        }
        request
    }

    fn session_headers(&self, headers: &mut http::HeaderMap) {
        if let Some(session) = &self.session {
            headers.insert("mcp-session-id", session.clone());
        }
        if let Some(version) = &self.protocol_version {
            headers.insert("mcp-protocol-version", version.clone());
        }
    }

    async fn send(
        &mut self,
        request: Request<reqwest::Body>,
    ) -> Result<Response<reqwest::Body>, BoxError> {
        let response = self
            .service
            .clone()
            .oneshot(
                self.with_assertion(request)
                    .map(tower_mcp_auth::ReplayBody::new),
            )
            .await?;
        if let Some(session) = response.headers().get("mcp-session-id") {
            self.session = Some(session.clone());
        }
        Ok(response)
    }

    async fn notify(&mut self, method: &str) -> Result<(), BoxError> {
        let message = json!({"jsonrpc": "2.0", "method": method});
        let response = self.send(self.post(&message)).await?;
        check_status(&response, method)?;
        Ok(())
    }

    /// Sends a request and waits for its response, answering server requests that
    /// arrive on the stream meanwhile and resuming a closed stream with GET.
    async fn request(&mut self, method: &str, params: Value) -> Result<Value, BoxError> {
        self.next_id += 1;
        let id = self.next_id;
        let message = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let mut response = self.send(self.post(&message)).await?;
        check_status(&response, method)?;
        let mut last_event_id = None;
        let mut retry = Duration::from_secs(1);
        for _ in 0..=MAX_RECONNECTS {
            let is_sse = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            if !is_sse {
                let body = response.into_body().collect().await?.to_bytes();
                return result_of(serde_json::from_slice(&body)?);
            }
            let unclaimed = self.unclaimed.clone();
            let read = self.read_stream(
                response.into_body(),
                Some(id),
                &mut last_event_id,
                &mut retry,
            );
            tokio::select! {
                read = read => {
                    if let Some(message) = read? {
                        return result_of(message);
                    }
                }
                message = unclaimed.claim(id) => return result_of(message),
            }
            // The stream closed before the response: resume it after `retry`.
            eprintln!("stream closed before the response to {method}; reconnecting in {retry:?}");
            tokio::time::sleep(retry).await;
            if let Some(message) = self.unclaimed.take(id) {
                return result_of(message);
            }
            response = self.send(self.get(last_event_id.as_deref())?).await?;
            check_status(&response, "GET stream")?;
        }
        Err(format!("no response to {method} after {MAX_RECONNECTS} reconnects").into())
    }

    /// Opens the standalone GET stream, where servers send requests that belong to no
    /// client request (e.g. `elicitation/create` from inside a tool); `None` when the
    /// server offers none (405). Opened before any further request, so that a server
    /// never takes it for the resumption of a request's stream.
    async fn open_stream(&mut self) -> Result<Option<reqwest::Body>, BoxError> {
        let response = self.send(self.get(None)?).await?;
        Ok(response.status().is_success().then(|| response.into_body()))
    }

    /// Reads the standalone stream until it ends.
    async fn listen(mut self, stream: reqwest::Body) -> Result<(), BoxError> {
        let (mut last_event_id, mut retry) = (None, Duration::ZERO);
        self.read_stream(stream, None, &mut last_event_id, &mut retry)
            .await?;
        Ok(())
    }

    /// Reads an SSE stream until it ends or, when `want` is given, until the response
    /// with that id arrives (returned). Server requests on the way are answered; the
    /// last event id and `retry` are tracked for resumption.
    async fn read_stream(
        &mut self,
        mut body: reqwest::Body,
        want: Option<u64>,
        last_event_id: &mut Option<String>,
        retry: &mut Duration,
    ) -> Result<Option<Value>, BoxError> {
        let mut parser = SseParser::default();
        while let Some(frame) = body.frame().await {
            let Ok(chunk) = frame?.into_data() else {
                continue;
            };
            for event in parser.push(&chunk) {
                if let Some(id) = event.id {
                    *last_event_id = Some(id);
                }
                *retry = event.retry.unwrap_or(*retry);
                if event.data.trim().is_empty() {
                    continue;
                }
                let message: Value = serde_json::from_str(&event.data)?;
                if message.get("method").is_some() {
                    self.answer_server_message(&message).await?;
                } else if want.is_some_and(|id| message["id"] == json!(id)) {
                    return Ok(Some(message));
                } else if message.get("id").is_some() {
                    self.unclaimed.put(message);
                }
            }
        }
        Ok(None)
    }

    fn get(&self, last_event_id: Option<&str>) -> Result<Request<reqwest::Body>, BoxError> {
        let mut get = Request::new(reqwest::Body::from(Bytes::new()));
        *get.uri_mut() = self.url.parse()?;
        get.headers_mut().insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        self.session_headers(get.headers_mut());
        if let Some(last) = last_event_id {
            get.headers_mut().insert("last-event-id", last.parse()?);
        }
        Ok(get)
    }

    async fn answer_server_message(&mut self, message: &Value) -> Result<(), BoxError> {
        let Some(id) = message.get("id") else {
            return Ok(()); // a notification
        };
        let reply = match message["method"].as_str() {
            Some("elicitation/create") => json!({"jsonrpc": "2.0", "id": id, "result": {
                "action": "accept",
                "content": schema_defaults(&message["params"]["requestedSchema"]),
            }}),
            Some("ping") => json!({"jsonrpc": "2.0", "id": id, "result": {}}),
            _ => {
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "method not found"}})
            }
        };
        let response = self.send(self.post(&reply)).await?;
        check_status(&response, "reply to server request")
    }
}

fn check_status<B>(response: &Response<B>, what: &str) -> Result<(), BoxError> {
    if response.status().is_success() {
        return Ok(());
    }
    let status = response.status();
    Err(format!(
        "{what}: HTTP {status}{}",
        if status == StatusCode::UNAUTHORIZED {
            " (unauthorized)"
        } else {
            ""
        }
    )
    .into())
}

fn result_of(message: Value) -> Result<Value, BoxError> {
    if let Some(error) = message.get("error") {
        return Err(format!("JSON-RPC error: {error}").into());
    }
    Ok(message["result"].clone())
}

/// The defaults a form's schema declares (SEP-1034): accepting applies them.
pub(crate) fn schema_defaults(schema: &Value) -> Value {
    let mut content = Map::new();
    if let Some(properties) = schema["properties"].as_object() {
        for (name, property) in properties {
            if let Some(default) = property.get("default") {
                content.insert(name.clone(), default.clone());
            }
        }
    }
    Value::Object(content)
}

/// Arguments for a tool from its input schema: a value of the declared type per property.
pub(crate) fn arguments_for(schema: &Value) -> Value {
    let mut arguments = Map::new();
    if let Some(properties) = schema["properties"].as_object() {
        for (index, (name, property)) in properties.iter().enumerate() {
            let value = match property["type"].as_str() {
                Some("number" | "integer") => json!(index + 2),
                Some("boolean") => json!(true),
                Some("array") => json!([]),
                Some("object") => json!({}),
                _ => json!("conformance"),
            };
            arguments.insert(name.clone(), value);
        }
    }
    Value::Object(arguments)
}

/// `MCP_CONFORMANCE_CONTEXT`: what an operator would configure.
#[derive(Default, serde::Deserialize)]
pub(crate) struct ConformanceContext {
    pub(crate) client_id: Option<String>,
    pub(crate) client_secret: Option<String>,
    /// Cross-app access (SEP-990): the user's ID token from their identity provider,
    /// and where to exchange it.
    pub(crate) idp_id_token: Option<String>,
    pub(crate) idp_client_id: Option<String>,
    pub(crate) idp_token_endpoint: Option<String>,
}

/// The suite's servers are all `http://localhost`: resolved addresses on loopback are
/// allowed (the default client refuses them).
fn loopback_http() -> AuthHttpClient {
    AuthHttpClient::reqwest_with_policy(UrlPolicy::default().allow_loopback_http())
}

/// Cross-app access: the user's ID token becomes an ID-JAG at the identity provider,
/// and the ID-JAG an access token at the MCP server's authorization server (found by
/// discovery), through `OboHeaderLayer`. No interactive authorization.
pub(crate) async fn cross_app_stack(
    server: &str,
    context: &ConformanceContext,
    idp_token_endpoint: &str,
) -> Result<HttpService, BoxError> {
    let discovery = Discovery::new(loopback_http(), UrlPolicy::default().allow_loopback_http());
    let server_url: url::Url = server.parse()?;
    let resource = discovery.protected_resource(&server_url, None).await?;
    let issuer: url::Url = resource.authorization_servers[0].parse()?;
    let metadata = discovery.authorization_server(&issuer).await?;
    let token_endpoint = metadata
        .token_endpoint
        .as_deref()
        .ok_or("authorization server metadata without a token endpoint")?;
    let client_id = context
        .client_id
        .clone()
        .ok_or("context without client_id")?;
    let secret = context
        .client_secret
        .clone()
        .ok_or("context without client_secret")?;
    let config = OboConfig::new(
        idp_token_endpoint.parse()?,
        context
            .idp_client_id
            .clone()
            .ok_or("context without idp_client_id")?,
        ClientAuth::None,
        OboGrant::id_jag(),
    )
    .with_audience(metadata.issuer.clone())
    .with_resource(server)
    .then(OboConfig::new(
        token_endpoint.parse()?,
        client_id,
        ClientAuth::SecretBasic(Secret::new(secret)),
        OboGrant::JwtBearer,
    ));
    // The crate's production client: streaming bodies both ways, no overall timeout.
    let transport = ReqwestService::with_config(
        &HttpClientConfig::new().connect_timeout(Duration::from_secs(5)),
    )?;
    let stack = ServiceBuilder::new()
        .layer(
            OboHeaderLayer::new(
                OboExchanger::with_http_client(config, loopback_http()),
                server,
            )?
            .with_default_principal(Principal::new("conformance", "user")),
        )
        .service(transport);
    Ok(BoxCloneSyncService::new(stack))
}

pub(crate) async fn client_stack(
    server: &str,
    context: &ConformanceContext,
) -> Result<HttpService, BoxError> {
    let store = Arc::new(MemoryStore::new());
    let mut authorizer = Authorizer::builder(server, store.clone(), REDIRECT_URI.parse()?)
        .client_name("tower-mcp-auth conformance client")
        // The suite's servers are all http://localhost.
        .url_policy(UrlPolicy::default().allow_loopback_http())
        .metadata_document(CLIENT_METADATA_URL.parse()?);
    if let Some(client_id) = &context.client_id {
        // RFC 7591's default client authentication for a client with a secret.
        let secret = context.client_secret.clone().map(Secret::new);
        let method = match secret {
            Some(_) => ClientAuthMethod::ClientSecretBasic,
            None => ClientAuthMethod::None,
        };
        // Pre-registered credentials name their issuer. The suite hands out only the
        // client id, so this test client trusts the issuer the server names on first
        // use; a real deployment configures it.
        let discovery = Discovery::new(loopback_http(), UrlPolicy::default().allow_loopback_http());
        let resource = discovery.protected_resource(&server.parse()?, None).await?;
        let issuer = discovery
            .authorization_server(&resource.authorization_servers[0].parse()?)
            .await?
            .issuer
            .clone();
        let mut client = PreRegisteredClient::new(issuer, client_id.clone());
        if let Some(secret) = secret {
            client = client.with_secret(secret, method);
        }
        authorizer = authorizer.pre_registered(client);
    }
    let authorizer = authorizer.build()?;
    let user = Principal::new("conformance", "user");
    let browser = HeadlessBrowser::new(authorizer.completer());
    // The crate's production client: streaming bodies both ways, no overall timeout.
    let transport = ReqwestService::with_config(
        &HttpClientConfig::new().connect_timeout(Duration::from_secs(5)),
    )?;
    let stack = ServiceBuilder::new()
        .layer(
            OAuthRetryLayer::wait(authorizer.clone(), browser)
                .with_default_principal(user.clone())
                .with_wait_timeout(Duration::from_secs(15)),
        )
        .layer(
            SilentRefreshLayer::new(
                RefreshCoordinator::builder(store)
                    .http_client(loopback_http())
                    .build(),
                authorizer.bindings(),
            )
            .with_default_principal(user),
        )
        .service(transport);
    Ok(BoxCloneSyncService::new(stack))
}

async fn run(server: String, context: ConformanceContext) -> Result<(), BoxError> {
    let (service, assertion) = match (&context.idp_id_token, &context.idp_token_endpoint) {
        (Some(id_token), Some(idp)) => (
            cross_app_stack(&server, &context, idp).await?,
            Some(UserAssertion::new(id_token.as_str())),
        ),
        _ => (client_stack(&server, &context).await?, None),
    };
    let mut client = McpClient {
        service,
        url: server,
        session: None,
        protocol_version: None,
        next_id: 0,
        assertion,
        unclaimed: Arc::default(),
    };
    let initialized = client
        .request(
            "initialize",
            json!({
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {"elicitation": {}},
                "clientInfo": {"name": "tower-mcp-auth-conformance", "version": env!("CARGO_PKG_VERSION")},
            }),
        )
        .await?;
    let version = initialized["protocolVersion"]
        .as_str()
        .unwrap_or(PROTOCOL_VERSION);
    client.protocol_version = Some(version.parse()?);
    eprintln!("initialized: {}", initialized["serverInfo"]);
    client.notify("notifications/initialized").await?;
    if let Some(stream) = client.open_stream().await? {
        tokio::spawn(client.clone().listen(stream));
    }
    let tools = client.request("tools/list", json!({})).await?;
    for tool in tools["tools"].as_array().into_iter().flatten() {
        let name = tool["name"].as_str().unwrap_or_default();
        let arguments = arguments_for(&tool["inputSchema"]);
        let result = client
            .request("tools/call", json!({"name": name, "arguments": arguments}))
            .await?;
        eprintln!("tools/call {name}: {result}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "tower_mcp_auth=debug".into()),
        )
        .init();
    let Some(server) = std::env::args().nth(1) else {
        eprintln!("usage: conformance_client <server-url>");
        return std::process::ExitCode::from(2);
    };
    let scenario = std::env::var("MCP_CONFORMANCE_SCENARIO").unwrap_or_default();
    let context = match std::env::var("MCP_CONFORMANCE_CONTEXT") {
        Ok(json) => match serde_json::from_str(&json) {
            Ok(context) => context,
            Err(error) => {
                eprintln!("unreadable MCP_CONFORMANCE_CONTEXT: {error}");
                return std::process::ExitCode::from(2);
            }
        },
        Err(_) => ConformanceContext::default(),
    };
    eprintln!("scenario {scenario:?} against {server}");
    match tokio::time::timeout(OVERALL_TIMEOUT, run(server, context)).await {
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        Ok(Err(error)) => {
            eprintln!("failed: {error}");
            let mut source = error.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            std::process::ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("gave up after {OVERALL_TIMEOUT:?}");
            std::process::ExitCode::FAILURE
        }
    }
}
