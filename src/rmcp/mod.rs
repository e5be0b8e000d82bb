//! rmcp's Streamable HTTP transport on any stack of this crate's layers (feature
//! `rmcp`).
//!
//! [`StackClient`] implements rmcp's [`StreamableHttpClient`] for a tower service
//! taking `http::Request<ReplayBody>`, such as `OAuthRetry<SilentRefresh<…>>` over
//! [`ReqwestService`](crate::client::ReqwestService), so
//! `StreamableHttpClientTransport::with_client(StackClient::new(stack), config)` gives
//! an rmcp client silent refresh, single-flight re-authorization, OBO and the circuit
//! breaker. JSON and SSE answers are read as they arrive, within rmcp's response
//! limits; `Last-Event-ID` resumption, session expiry (404), 202/204, 405 on GET and
//! 429/5xx with `Retry-After` behave as with rmcp's own client.
//!
//! The layers' typed errors keep their source chain: [`find_error`] recovers
//! [`Error::AuthorizationRequired`] (and its URL) from whatever rmcp returns.
//!
//! ```no_run
//! use rmcp::ServiceExt as _;
//! use rmcp::transport::StreamableHttpClientTransport;
//! use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
//! use tower::ServiceBuilder;
//! use tower_mcp_auth::client::ReqwestService;
//! use tower_mcp_auth::rmcp::StackClient;
//! use tower_mcp_auth::{Principal, RefreshCoordinator, ServerBinding, SilentRefreshLayer, store::MemoryStore};
//!
//! # async fn run(binding: ServerBinding) -> Result<(), Box<dyn std::error::Error>> {
//! let url = "https://mcp.example.com/mcp";
//! let store = std::sync::Arc::new(MemoryStore::new());
//! let stack = ServiceBuilder::new()
//!     .layer(SilentRefreshLayer::new(RefreshCoordinator::new(store), binding))
//!     .service(ReqwestService::new()?);
//! let client = StackClient::new(stack).with_principal(Principal::new("acme", "alice"));
//! let transport = StreamableHttpClientTransport::with_client(
//!     client,
//!     StreamableHttpClientTransportConfig::with_uri(url),
//! );
//! let mcp = ().serve(transport).await?;
//! println!("{:?}", mcp.list_all_tools().await?);
//! # Ok(())
//! # }
//! ```

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt as _;
use rmcp::model::{ClientJsonRpcMessage, ClientRequest, ErrorData, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_client::{
    AuthRequiredError, HttpStatusError, InsufficientScopeError, SseError, StreamableHttpClient,
    StreamableHttpError, StreamableHttpPostResponse, StreamableHttpResponseLimits,
};
use sse_stream::Sse;
use tower::{BoxError, Service, ServiceExt as _};

use crate::challenge::BearerChallenge;
use crate::error::Error;
use crate::key::Principal;
use crate::obo::UserAssertion;
use crate::replay::ReplayBody;

mod sse;
use sse::sse_events;

mod transport;

const SESSION_ID: &str = "mcp-session-id";
const LAST_EVENT_ID: &str = "last-event-id";
const PROTOCOL_VERSION: &str = "mcp-protocol-version";
const JSON: &str = "application/json";
const EVENT_STREAM: &str = "text/event-stream";
/// rmcp keeps at most this much of a `Retry-After` value.
const MAX_RETRY_AFTER_BYTES: usize = 128;
/// rmcp's default cap on one SSE event, for the methods called without limits.
const DEFAULT_MAX_SSE_EVENT: usize = 16 * 1024 * 1024;

/// rmcp's [`StreamableHttpClient`] on a tower stack of this crate's layers.
///
/// Every request carries this client's [`Principal`] (and [`UserAssertion`], for
/// `OboHeaderLayer`) as extensions: one transport per user.
#[derive(Clone)]
pub struct StackClient<S> {
    service: S,
    principal: Option<Principal>,
    assertion: Option<UserAssertion>,
}

impl<S> fmt::Debug for StackClient<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackClient")
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl<S> StackClient<S> {
    /// Sends rmcp's requests through `service`.
    pub fn new(service: S) -> Self {
        Self {
            service,
            principal: None,
            assertion: None,
        }
    }

    /// The user every request of this transport is sent for.
    pub fn with_principal(mut self, principal: Principal) -> Self {
        self.principal = Some(principal);
        self
    }

    /// The user's own token, for an `OboHeaderLayer` in the stack to exchange.
    pub fn with_assertion(mut self, assertion: UserAssertion) -> Self {
        self.assertion = Some(assertion);
        self
    }

    /// The stack inside.
    pub fn get_ref(&self) -> &S {
        &self.service
    }
}

/// A failure of the stack under rmcp, with its source chain intact: [`Error::find`]
/// (or [`find_error`] from rmcp's own error types) recovers the crate's typed error.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct StackError {
    #[source]
    source: BoxError,
}

impl StackError {
    /// The crate's typed error behind this failure, if it came from a layer.
    pub fn crate_error(&self) -> Option<&Error> {
        Error::find(self.source.as_ref())
    }
}

fn client_error(source: impl Into<BoxError>) -> StreamableHttpError<StackError> {
    StreamableHttpError::Client(StackError {
        source: source.into(),
    })
}

/// Finds the crate's [`Error`] in an error rmcp returned (its initialisation error,
/// a service error, a transport error), looking through the wrappers whose
/// `source()` rmcp does not expose.
///
/// ```
/// use tower_mcp_auth::Error;
/// use tower_mcp_auth::rmcp::find_error;
///
/// let error = std::io::Error::other("unrelated");
/// assert!(find_error(&error).is_none());
/// ```
pub fn find_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Error> {
    use rmcp::service::ClientInitializeError;
    use rmcp::transport::worker::WorkerQuitReason;
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<Error>() {
            return Some(found);
        }
        if let Some(found) = error.downcast_ref::<StackError>() {
            return found.crate_error();
        }
        // rmcp's wrappers that hold the cause without naming it as their source.
        let hidden: Option<&(dyn std::error::Error + 'static)> =
            if let Some(StreamableHttpError::Client(inner)) =
                error.downcast_ref::<StreamableHttpError<StackError>>()
            {
                Some(inner)
            } else if let Some(WorkerQuitReason::Fatal { error, .. }) =
                error.downcast_ref::<WorkerQuitReason<StreamableHttpError<StackError>>>()
            {
                Some(error)
            } else if let Some(ClientInitializeError::TransportError { error, .. }) =
                error.downcast_ref::<ClientInitializeError>()
            {
                Some(error)
            } else {
                None
            };
        current = hidden.or_else(|| error.source());
    }
    None
}

impl<S, ResBody> StackClient<S>
where
    S: Service<Request<ReplayBody>, Response = Response<ResBody>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    fn request(
        &self,
        method: Method,
        uri: &str,
        session_id: Option<&str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        body: ReplayBody,
    ) -> Result<Request<ReplayBody>, StreamableHttpError<StackError>> {
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri.parse().map_err(client_error)?;
        let headers = request.headers_mut();
        for (name, value) in custom_headers {
            // The transport's own headers; rmcp injects the protocol version itself.
            let reserved =
                name == ACCEPT || name.as_str() == SESSION_ID || name.as_str() == LAST_EVENT_ID;
            if reserved && name.as_str() != PROTOCOL_VERSION {
                return Err(StreamableHttpError::ReservedHeaderConflict(
                    name.to_string(),
                ));
            }
            headers.insert(name, value);
        }
        if let Some(session_id) = session_id {
            headers.insert(
                SESSION_ID,
                HeaderValue::from_str(session_id).map_err(client_error)?,
            );
        }
        if let Some(token) = auth_header {
            // A static token from rmcp's config; a refresh layer in the stack replaces it.
            let mut value =
                HeaderValue::try_from(format!("Bearer {token}")).map_err(client_error)?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        if let Some(principal) = &self.principal {
            request.extensions_mut().insert(principal.clone());
        }
        if let Some(assertion) = &self.assertion {
            request.extensions_mut().insert(assertion.clone());
        }
        Ok(request)
    }

    async fn send(
        &self,
        request: Request<ReplayBody>,
    ) -> Result<Response<ResBody>, StreamableHttpError<StackError>> {
        self.service
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| client_error(e.into()))
    }
}

/// 401 and 403 with a challenge: rmcp's own auth errors, as its client reports them.
fn auth_failure(
    status: StatusCode,
    headers: &HeaderMap,
) -> Option<StreamableHttpError<StackError>> {
    let challenge = headers.get(WWW_AUTHENTICATE)?;
    let text = String::from_utf8_lossy(challenge.as_bytes()).into_owned();
    match status {
        StatusCode::UNAUTHORIZED => Some(StreamableHttpError::AuthRequired(
            AuthRequiredError::new(text),
        )),
        StatusCode::FORBIDDEN => {
            let scope = BearerChallenge::from_headers(headers)
                .map(|c| c.scopes().collect::<Vec<_>>().join(" "))
                .filter(|s| !s.is_empty());
            Some(StreamableHttpError::InsufficientScope(
                InsufficientScopeError::new(text, scope),
            ))
        }
        _ => None,
    }
}

/// 429 and 5xx as rmcp's status error, with a bounded `Retry-After`.
fn status_error(status: StatusCode, headers: &HeaderMap) -> Option<HttpStatusError> {
    if status != StatusCode::TOO_MANY_REQUESTS && !status.is_server_error() {
        return None;
    }
    let retry_after = headers
        .get(RETRY_AFTER)
        .filter(|v| v.as_bytes().len() <= MAX_RETRY_AFTER_BYTES)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Some(HttpStatusError::new(status.as_u16(), retry_after))
}

fn media_type_is(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(expected))
}

fn session_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(SESSION_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Reads a whole body of at most `max` bytes.
async fn read_bounded<B>(body: B, max: usize) -> Result<Bytes, StreamableHttpError<StackError>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if body.size_hint().lower() > max as u64 {
        return Err(StreamableHttpError::ResponseBodyTooLarge { max_size: max });
    }
    match http_body_util::Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(StreamableHttpError::ResponseBodyTooLarge { max_size: max })
        }
        Err(error) => Err(client_error(error)),
    }
}

/// The first `max` bytes of a body (diagnostics of a failed request), lossily.
async fn read_prefix<B>(body: B, max: usize) -> String
where
    B: Body<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    let mut prefix = Vec::new();
    while prefix.len() < max {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let take = data.len().min(max - prefix.len());
                    prefix.extend_from_slice(&data[..take]);
                }
            }
            Some(Err(_)) => return "<failed to read response body>".to_owned(),
            None => break,
        }
    }
    String::from_utf8_lossy(&prefix).into_owned()
}

/// A JSON-RPC `server/discover` refused by a server that predates it: answered as a
/// JSON-RPC error for the request's id, so rmcp falls back to `initialize`.
fn discover_refusal(
    message: &ClientJsonRpcMessage,
    session_attached: bool,
    status: StatusCode,
    body: &str,
) -> Option<StreamableHttpPostResponse> {
    if session_attached
        || !status.is_client_error()
        || matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
    {
        return None;
    }
    let ClientJsonRpcMessage::Request(request) = message else {
        return None;
    };
    if !matches!(request.request, ClientRequest::DiscoverRequest(_)) {
        return None;
    }
    let error = match serde_json::from_str::<ServerJsonRpcMessage>(body) {
        Ok(ServerJsonRpcMessage::Error(error)) => error.error,
        _ => ErrorData::invalid_request(
            format!("server/discover rejected with HTTP {status}: {body}"),
            None,
        ),
    };
    Some(StreamableHttpPostResponse::Json(
        ServerJsonRpcMessage::error(error, Some(request.id.clone())),
        None,
    ))
}
