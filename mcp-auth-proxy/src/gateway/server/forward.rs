//! `/{upstream}/mcp`: a caller's request checked at the edge, given its principal,
//! stripped of what must not cross the hop, sent through the upstream's stack, and its
//! answer (or the gateway's own error in MCP's shape) returned.

use super::*;

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
}

/// An upstream's answer as the caller gets it: without the hop's own headers, and
/// without cookies (the gateway's origin is shared by every upstream and its own
/// sign-in pages: no upstream may set cookies there). Streamed as it arrives: SSE events
/// are passed on one by one.
pub(super) fn to_client(upstream: &str, response: http::Response<reqwest::Body>) -> Response {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::SET_COOKIE);
    let streaming = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !streaming {
        return Response::from_parts(parts, Body::new(body));
    }
    // Open while the caller reads it: the guard goes with the body.
    let open = super::super::telemetry::stream_opened(upstream);
    let body = http_body_util::BodyExt::map_frame(body, move |frame| {
        let _ = &open;
        frame
    });
    Response::from_parts(parts, Body::new(body))
}

/// Where a caller's request goes: the configured URL, its query parameters kept, the
/// caller's parameters added after them unless they name a configured one.
fn upstream_uri(upstream: &Upstream, caller_query: Option<&str>) -> Option<http::Uri> {
    let Some(query) = caller_query.filter(|q| !q.is_empty()) else {
        return Some(upstream.uri.clone());
    };
    let configured = &upstream.url;
    let mut url = configured.clone();
    let fixed: Vec<String> = configured
        .query_pairs()
        .map(|(k, _)| k.into_owned())
        .collect();
    let added: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(key, _)| !fixed.iter().any(|f| f == key))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if !added.is_empty() {
        url.query_pairs_mut().extend_pairs(added);
    }
    url.as_str().parse().ok()
}

/// The caller's claims about the path a request took: the upstream learns nothing from
/// them it could mistake for the gateway's word.
fn strip_forwarding(headers: &mut HeaderMap) {
    let claimed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            name == "forwarded" || name == "x-real-ip" || name.starts_with("x-forwarded-")
        })
        .cloned()
        .collect();
    for name in claimed {
        headers.remove(name);
    }
}

/// An error with its causes, `outer: inner: innermost`: "connection refused" and "too
/// many open files" read apart in the log.
pub(super) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// JSON-RPC's "invalid request" code, for the gateway's own refusals.
const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC's "parse error" code.
const PARSE_ERROR: i64 = -32700;

/// 413 in one format, whether the body declared its length or streamed past the cap.
pub(super) fn too_large() -> Response {
    json_error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
}

pub(super) fn json_error(status: StatusCode, message: &str) -> Response {
    jsonrpc_error(status, INVALID_REQUEST, message)
}

pub(super) fn jsonrpc_error(status: StatusCode, code: i64, message: &str) -> Response {
    let mut response = (
        status,
        axum::Json(
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}}),
        ),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"mcp-auth-proxy\""),
        );
    }
    response
}

/// Who is calling, by the configured rule.
pub(crate) fn principal(
    identity: &IdentityConfig,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<Principal, (StatusCode, &'static str)> {
    match identity {
        IdentityConfig::TrustedHeader {
            header,
            tenant,
            trusted_sources,
        } => {
            let claimed = headers.get(header);
            if !trusted_sources.contains(&peer.ip()) {
                if claimed.is_some() {
                    tracing::warn!(peer = %peer.ip(), "identity header from an untrusted address refused");
                    return Err((
                        StatusCode::FORBIDDEN,
                        "identity header from an untrusted address",
                    ));
                }
                return Err((
                    StatusCode::UNAUTHORIZED,
                    "no identity: requests must come through the front proxy",
                ));
            }
            // One header with one value: with several, a front proxy that appends
            // instead of replacing would let the caller's own value win or merge in.
            let mut values = headers.get_all(header).iter();
            if values.nth(1).is_some() || claimed.is_some_and(|v| v.as_bytes().contains(&b',')) {
                tracing::warn!(peer = %peer.ip(), "several identities in the identity header refused");
                return Err((StatusCode::BAD_REQUEST, "ambiguous identity header"));
            }
            let user = claimed
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .ok_or((StatusCode::UNAUTHORIZED, "no identity header"))?;
            Ok(Principal::new(tenant.as_str(), user))
        }
        IdentityConfig::Anonymous { tenant, subject } => {
            Ok(Principal::new(tenant.as_str(), subject.as_str()))
        }
        // Verified asynchronously, by `Gateway::identify`.
        IdentityConfig::Jwt(_) => Err((StatusCode::UNAUTHORIZED, "a bearer token is required")),
    }
}

/// What the upstream's stack reads from a request: the caller's principal and, for an
/// `obo` upstream, the assertion to exchange. Nothing of the inbound request's own.
fn request_extensions(
    principal: Principal,
    assertion: Option<tower_mcp_auth::UserAssertion>,
) -> http::Extensions {
    let mut extensions = http::Extensions::new();
    extensions.insert(principal);
    if let Some(assertion) = assertion {
        extensions.insert(assertion);
    }
    extensions
}

pub(super) async fn forward(
    State(gateway): State<Gateway>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let Some(upstream) = gateway.upstreams.get(&name).cloned() else {
        let response = json_error(
            StatusCode::NOT_FOUND,
            &format!("no upstream named `{name}`"),
        );
        // Only configured names become labels: a caller cannot mint series.
        super::super::telemetry::request(
            metrics::SharedString::const_str("unknown"),
            &method,
            response.status(),
            started.elapsed(),
        );
        return response;
    };
    let response = forward_request(gateway, &upstream, name, peer, request).await;
    upstream.series.record(
        &upstream.label,
        &method,
        response.status(),
        started.elapsed(),
    );
    response
}

async fn forward_request(
    gateway: Gateway,
    upstream: &Upstream,
    name: String,
    peer: SocketAddr,
    request: Request,
) -> Response {
    // A cross-site `text/plain` or form POST needs no preflight; a JSON one does.
    if request.method() == http::Method::POST && !super::super::edge::is_json(request.headers()) {
        return json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "an MCP POST must be `Content-Type: application/json`",
        );
    }
    let principal = match gateway.identify(peer, request.headers()).await {
        Ok(principal) => principal,
        Err((status, message)) => return json_error(status, message),
    };
    let (mut parts, body) = request.into_parts();
    // MCP forbids token passthrough: the caller's credentials stay here. For an `obo`
    // upstream the (verified) inbound token is only the assertion that gets exchanged.
    let assertion = parts
        .headers
        .remove(header::AUTHORIZATION)
        .filter(|_| upstream.obo)
        .and_then(|value| {
            let value = value.to_str().ok()?;
            let token = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))?;
            Some(tower_mcp_auth::UserAssertion::new(token.trim()))
        });
    parts.headers.remove(header::COOKIE);
    parts.headers.remove(header::HOST);
    strip_forwarding(&mut parts.headers);
    if let IdentityConfig::TrustedHeader { header, .. } = &*gateway.identity {
        parts.headers.remove(header);
    }
    strip_hop_by_hop(&mut parts.headers);
    parts.uri = match upstream_uri(upstream, parts.uri.query()) {
        Some(uri) => uri,
        None => return json_error(StatusCode::BAD_GATEWAY, "upstream URL"),
    };
    let principal_of_request = principal.clone();
    // Cheap to keep (a reference count): a second request of this caller (an early
    // stream, a retried GET) is given the same extensions, built only when it is sent.
    let assertion_of_request = assertion.clone();
    parts.extensions = request_extensions(principal, assertion);
    // A POST carries one JSON-RPC message (capped by the body limit): read whole, it
    // goes upstream with its length (a stream would go chunked, which costs both ends),
    // and where the upstream has sign-in, a "connect first" answer can carry its id.
    let (body, message) = if parts.method == http::Method::POST {
        match axum::body::to_bytes(body, gateway.max_body_bytes).await {
            Ok(bytes) => {
                // The gateway's to answer: a body that is no JSON at all never reaches
                // the upstream (whose answer might be an HTML error page). Unknown
                // methods and the rest of JSON-RPC pass through untouched.
                if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() {
                    return jsonrpc_error(
                        StatusCode::BAD_REQUEST,
                        PARSE_ERROR,
                        "Parse error: the body is not JSON",
                    );
                }
                let message = upstream
                    .authorizer
                    .as_ref()
                    .and_then(|_| Message::parse(&bytes));
                (ReplayBody::buffered(bytes), message)
            }
            Err(_) => return too_large(),
        }
    } else {
        (ReplayBody::new(body), None)
    };
    // A session id is a handle on one user's upstream state: only its creator uses it.
    // One visible-ASCII value or none: anything else could pass this check with one
    // value and reach the upstream with another.
    let session = {
        let mut values = parts.headers.get_all("mcp-session-id").iter();
        match (values.next(), values.next()) {
            (None, _) => None,
            (Some(value), None) => match value.to_str() {
                Ok(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic()) => {
                    Some(text.to_owned())
                }
                _ => return json_error(StatusCode::BAD_REQUEST, "malformed Mcp-Session-Id"),
            },
            (Some(_), Some(_)) => {
                return json_error(StatusCode::BAD_REQUEST, "several Mcp-Session-Id headers");
            }
        }
    };
    if let Some(session) = &session {
        match gateway
            .sessions
            .check(&name, session, &principal_of_request)
            .await
        {
            Ok(super::super::sessions::SessionUse::Owner) => {}
            Ok(super::super::sessions::SessionUse::Unknown) => {
                tracing::info!(upstream = %name, "a session not created by the caller refused");
                return json_error(StatusCode::NOT_FOUND, "session not found");
            }
            Err(error) => {
                tracing::warn!(upstream = %name, %error, "session owners unreadable");
                super::super::telemetry::store_error("session_owner_read");
                return json_error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable");
            }
        }
    }
    let deleting = parts.method == http::Method::DELETE;
    let url_elicitation = match &message {
        Some(message) if message.is_initialize() => message.declares_url_elicitation,
        Some(_) => parts
            .headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|session| gateway.url_elicitation_sessions.contains_key(session)),
        None => false,
    };
    // The session's standalone stream: the one the gateway opened early, unless the
    // client resumes an earlier one.
    let standalone = parts.method == http::Method::GET && session.is_some();
    if let (true, Some(session)) = (standalone, &session) {
        if parts.headers.contains_key("last-event-id") {
            gateway.early_streams.close(&name, session);
        } else if let Some(stream) = gateway
            .early_streams
            .claim(&name, session, &principal_of_request)
            .await
        {
            return stream;
        }
    }
    let again = standalone.then(|| (parts.uri.clone(), parts.headers.clone()));
    // A POST without a session may create one: where its early stream would go.
    let stream_uri =
        (parts.method == http::Method::POST && session.is_none()).then(|| parts.uri.clone());
    upstream_oauth::bind_before_first_request(upstream, &name, &principal_of_request).await;
    let request = http::Request::from_parts(parts, body);
    let mut result = upstream.service.clone().oneshot(request).await;
    if let (Ok(response), Some((uri, headers)), Some(session)) = (&result, again, &session)
        && response.status() == StatusCode::CONFLICT
        && !gateway.early_streams.opened_here(&name, session)
    {
        // Another replica of the gateway may hold this session's early stream,
        // unclaimed: it closes within `UNCLAIMED_FOR`; then this GET is the only one.
        tokio::time::sleep(early_stream::UNCLAIMED_FOR + Duration::from_secs(1)).await;
        let mut retry = http::Request::new(ReplayBody::empty());
        *retry.uri_mut() = uri;
        *retry.headers_mut() = headers;
        *retry.extensions_mut() =
            request_extensions(principal_of_request.clone(), assertion_of_request.clone());
        result = upstream.service.clone().oneshot(retry).await;
    }
    match result {
        Ok(response) => {
            if let Some(created) = response
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
                .filter(|created| session.as_deref() != Some(*created))
                && response.status().is_success()
                && let Some(uri) = stream_uri
            {
                gateway.early_streams.open(
                    &name,
                    upstream,
                    uri,
                    created,
                    principal_of_request.clone(),
                    request_extensions(principal_of_request.clone(), assertion_of_request),
                );
            }
            let (parts, body) = response.into_parts();
            if let Some(created) = parts
                .headers
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
                .filter(|created| session.as_deref() != Some(*created))
                && let Err(error) = gateway
                    .sessions
                    .record(&name, created, &principal_of_request)
                    .await
            {
                // Unrecorded, the session is unknown to the gateway: the caller's next
                // request gets 404 and starts a new one.
                tracing::warn!(upstream = %name, %error, "session owner not recorded");
                super::super::telemetry::store_error("session_owner_write");
            }
            if deleting
                && parts.status.is_success()
                && let Some(session) = &session
            {
                gateway.sessions.forget(&name, session);
                gateway.early_streams.end(&name, session);
            }
            if url_elicitation
                && message.as_ref().is_some_and(Message::is_initialize)
                && let Some(session) = parts
                    .headers
                    .get("mcp-session-id")
                    .and_then(|v| v.to_str().ok())
            {
                gateway
                    .url_elicitation_sessions
                    .insert(session.to_owned(), ());
            }
            to_client(&name, http::Response::from_parts(parts, body))
        }
        Err(error) => match Error::find(error.as_ref()) {
            Some(Error::AuthorizationRequired { url, .. }) => {
                connect_first(&name, url.as_str(), message.as_ref(), url_elicitation)
            }
            // Held for `wait_seconds` and still not signed in: the link, as above (the
            // pending flow is joined, not started again).
            Some(Error::AuthorizationTimedOut { .. }) => {
                let flow = match &upstream.authorizer {
                    Some(authorizer) => authorizer
                        .start(
                            &principal_of_request,
                            &tower_mcp_auth::oauth::AuthorizationCause::challenge(None),
                        )
                        .await
                        .ok(),
                    None => None,
                };
                match flow {
                    Some(flow) => connect_first(
                        &name,
                        flow.pending().browser_url().as_str(),
                        message.as_ref(),
                        url_elicitation,
                    ),
                    None => json_error(StatusCode::BAD_GATEWAY, "sign-in could not be started"),
                }
            }
            Some(Error::Obo(refused)) => {
                tracing::info!(upstream = %name, error = %refused, "On-Behalf-Of exchange refused");
                json_error(
                    StatusCode::UNAUTHORIZED,
                    "your token could not be exchanged for this server",
                )
            }
            Some(Error::CircuitOpen { retry_after, .. }) => {
                let mut response = json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream unavailable; retry later",
                );
                let seconds = retry_after.as_secs().max(1);
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, seconds.into());
                response
            }
            _ => {
                let cause = error_chain(error.as_ref());
                if tower_mcp_auth::layer::circuit_breaker::local_resource_error(error.as_ref())
                    .is_some()
                {
                    tracing::error!(upstream = %name, %cause, "out of local resources (descriptors, buffers or memory); the upstream is not at fault");
                    let mut response = json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the gateway is out of local resources; retry later",
                    );
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
                    return response;
                }
                tracing::warn!(upstream = %name, %cause, "upstream call failed");
                json_error(StatusCode::BAD_GATEWAY, "upstream unreachable")
            }
        },
    }
}
