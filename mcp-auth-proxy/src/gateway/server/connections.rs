//! `/connections`: the signed-in user's upstreams, their state, and connect and
//! disconnect buttons. Plain server-rendered HTML, no script, no build step.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Form, Path, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use http::{HeaderMap, StatusCode};

use super::{Gateway, Upstream};
use tower_mcp_auth::{AuthKey, Principal};
use tower_mcp_auth::{
    breaker::CircuitState, layer::callback::escape_html, oauth::AuthorizationCause,
};

/// How long the page waits on the store or the upstream's discovery for one upstream.
const STATE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the page shows for one upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConnectionState {
    /// The upstream needs no sign-in (`none` or `header`).
    NoSignIn,
    /// The user holds usable credentials (or a refresh token that renews them).
    Connected,
    /// No credentials: the user must sign in.
    NeedsSignIn,
    /// Refreshing the user's token is failing; the next attempt is in `retry_in`.
    RefreshFailing { retry_in: Duration },
    /// The user's circuit to the upstream is open after failures.
    CircuitOpen { retry_after: Duration },
    /// The state could not be read (the store or the upstream's metadata failed).
    Unknown(String),
}

impl ConnectionState {
    fn label(&self) -> (&'static str, String) {
        match self {
            Self::NoSignIn => ("none", "no sign-in needed".into()),
            Self::Connected => ("connected", "connected".into()),
            Self::NeedsSignIn => ("needs-sign-in", "needs sign-in".into()),
            Self::RefreshFailing { retry_in } => (
                "refresh-failing",
                format!(
                    "connected, but refreshing the token is failing; retrying in {} s",
                    retry_in.as_secs().max(1)
                ),
            ),
            Self::CircuitOpen { retry_after } => (
                "circuit-open",
                format!(
                    "circuit open after failures; retrying in {} s",
                    retry_after.as_secs().max(1)
                ),
            ),
            Self::Unknown(why) => ("unknown", format!("state unknown: {why}")),
        }
    }
}

/// The user's state at `upstream`.
pub(crate) async fn state_of(upstream: &Upstream, principal: &Principal) -> ConnectionState {
    if let Some(snapshot) = upstream.breaker.snapshot(&upstream.breaker_key(principal))
        && snapshot.state == CircuitState::Open
    {
        return ConnectionState::CircuitOpen {
            retry_after: snapshot.retry_after.unwrap_or_default(),
        };
    }
    let Some(authorizer) = &upstream.authorizer else {
        return ConnectionState::NoSignIn;
    };
    let lookup = async {
        // After a restart the binding comes from the stored registration.
        authorizer
            .restore_binding(principal, &AuthorizationCause::challenge(None))
            .await
            .map_err(|error| error.to_string())?;
        let binding = authorizer
            .bindings()
            .get(principal.tenant())
            .ok_or("no client registration")?;
        let key = AuthKey::new(principal, binding.id());
        let stored = authorizer
            .store()
            .load(&key)
            .await
            .map_err(|error| error.to_string())?;
        let failing = upstream
            .coordinator
            .as_ref()
            .and_then(|coordinator| coordinator.cooldown_remaining(&key));
        Ok::<_, String>(match (stored, failing) {
            (Some(tokens), Some(retry_in)) if tokens.refresh_token.is_some() => {
                ConnectionState::RefreshFailing { retry_in }
            }
            (Some(tokens), _) if tokens.is_usable() || tokens.refresh_token.is_some() => {
                ConnectionState::Connected
            }
            _ => ConnectionState::NeedsSignIn,
        })
    };
    match tokio::time::timeout(STATE_TIMEOUT, lookup).await {
        Ok(Ok(state)) => state,
        Ok(Err(why)) => ConnectionState::Unknown(why),
        Err(_) => ConnectionState::Unknown("timed out".into()),
    }
}

/// The user of a page: a bearer token (or the trusted header) as for MCP calls, or,
/// with the gateway's own login, the browser's session (without one, the login first,
/// back to `page`).
async fn page_user(
    gateway: &Gateway,
    peer: SocketAddr,
    headers: &HeaderMap,
    page: &http::Uri,
) -> Result<Principal, Response> {
    if let Some(login) = &gateway.login
        && !headers.contains_key(http::header::AUTHORIZATION)
    {
        return match login.user(headers, page) {
            super::super::login::BrowserUser::Known(principal) => Ok(principal),
            super::super::login::BrowserUser::SignIn(response) => Err(response),
        };
    }
    gateway
        .identify(peer, headers)
        .await
        .map_err(|(status, message)| refused(status, message))
}

fn refused(status: StatusCode, message: &str) -> Response {
    let mut response = (
        status,
        Html(page(
            "Connections",
            &format!("<p>{}</p>", escape_html(message)),
        )),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"mcp-auth-proxy\""),
        );
    }
    response
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
<meta name=\"viewport\" content=\"width=device-width\"><style>\
body{{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;color:#1d2330}}\
table{{border-collapse:collapse;width:100%}}td,th{{text-align:left;padding:.6rem .5rem;border-bottom:1px solid #dde}}\
.state{{font-weight:600}}.connected{{color:#11753a}}.needs-sign-in{{color:#a35200}}.circuit-open,.unknown,.refresh-failing{{color:#b3122b}}.none{{color:#555}}\
a.button,button{{font:inherit;padding:.35rem .8rem;border:1px solid #345;border-radius:.3rem;background:#f4f6fa;color:#123;text-decoration:none;cursor:pointer}}\
form{{margin:0}}</style></head><body>{body}</body></html>"
    )
}

/// `GET /connections`.
pub(crate) async fn list(
    State(gateway): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: http::Uri,
    headers: HeaderMap,
) -> Response {
    let principal = match page_user(&gateway, peer, &headers, &uri).await {
        Ok(principal) => principal,
        Err(response) => return response,
    };
    let mut names: Vec<&String> = gateway.upstreams.keys().collect();
    names.sort();
    let mut rows = String::new();
    for name in names {
        let upstream = &gateway.upstreams[name];
        let state = state_of(upstream, &principal).await;
        let (class, text) = state.label();
        let name_html = escape_html(name);
        let action = match (&upstream.authorizer, &state) {
            (None, _) => String::new(),
            (Some(_), ConnectionState::Connected | ConnectionState::RefreshFailing { .. }) => {
                format!(
                    "<form method=\"post\" action=\"/connections/{name_html}/disconnect\">\
<input type=\"hidden\" name=\"csrf\" value=\"{}\">\
<button type=\"submit\" id=\"disconnect-{name_html}\">Disconnect</button></form>",
                    gateway.form_token(&principal)
                )
            }
            (Some(_), _) => format!(
                "<a class=\"button\" id=\"connect-{name_html}\" href=\"/connections/{name_html}/connect\">Connect</a>"
            ),
        };
        rows.push_str(&format!(
            "<tr id=\"upstream-{name_html}\"><td><code>{name_html}</code></td>\
<td class=\"state {class}\" data-state=\"{class}\">{}</td><td>{action}</td></tr>",
            escape_html(&text)
        ));
    }
    let body = format!(
        "<h1>Connections</h1><p>Signed in as <strong>{}</strong>. The MCP servers behind this \
gateway, and whether your account is connected to each.</p>\
<table><thead><tr><th>Server</th><th>State</th><th></th></tr></thead><tbody>{rows}</tbody></table>",
        escape_html(principal.subject())
    );
    Html(page("Connections", &body)).into_response()
}

/// `GET /connections/{upstream}/connect`: starts (or joins) the user's sign-in and sends
/// the browser to its start link. Starting a flow changes nothing until the user
/// consents, so a plain link will do.
pub(crate) async fn connect(
    State(gateway): State<Gateway>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: http::Uri,
    headers: HeaderMap,
) -> Response {
    let principal = match page_user(&gateway, peer, &headers, &uri).await {
        Ok(principal) => principal,
        Err(response) => return response,
    };
    let Some(authorizer) = gateway
        .upstreams
        .get(&name)
        .and_then(|u| u.authorizer.as_ref())
    else {
        return refused(
            StatusCode::NOT_FOUND,
            "no upstream with sign-in of that name",
        );
    };
    match authorizer
        .start(&principal, &AuthorizationCause::challenge(None))
        .await
    {
        Ok(flow) => Redirect::to(flow.pending().browser_url().as_str()).into_response(),
        Err(error) => {
            tracing::warn!(upstream = %name, %error, "cannot start a sign-in");
            refused(
                StatusCode::BAD_GATEWAY,
                &format!("cannot start the sign-in: {error}"),
            )
        }
    }
}

/// The disconnect form's fields.
#[derive(serde::Deserialize)]
pub(crate) struct DisconnectForm {
    csrf: String,
}

/// `POST /connections/{upstream}/disconnect`: deletes the user's stored credentials for
/// the upstream. The form carries a token bound to the user, so another site cannot
/// post it on the user's behalf.
pub(crate) async fn disconnect(
    State(gateway): State<Gateway>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<DisconnectForm>,
) -> Response {
    let back = http::Uri::from_static("/connections");
    let principal = match page_user(&gateway, peer, &headers, &back).await {
        Ok(principal) => principal,
        Err(response) => return response,
    };
    if !gateway.form_token_matches(&principal, &form.csrf) {
        return refused(StatusCode::FORBIDDEN, "the form expired; reload the page");
    }
    let Some((authorizer, upstream)) = gateway
        .upstreams
        .get(&name)
        .and_then(|u| Some((u.authorizer.as_ref()?, u)))
    else {
        return refused(
            StatusCode::NOT_FOUND,
            "no upstream with sign-in of that name",
        );
    };
    if let Some(binding) = authorizer.bindings().get(principal.tenant()) {
        let key = AuthKey::new(&principal, binding.id());
        // Deleted whatever generation is stored: a refresh racing with this loses.
        let mut refresh_token = None;
        loop {
            match authorizer.store().load(&key).await {
                Ok(Some(tokens)) => {
                    match authorizer.store().delete(&key, tokens.generation).await {
                        Ok(true) => {
                            refresh_token = tokens.refresh_token.clone();
                            break;
                        }
                        Ok(false) => continue,
                        Err(error) => {
                            return refused(
                                StatusCode::SERVICE_UNAVAILABLE,
                                &format!("store: {error}"),
                            );
                        }
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    return refused(StatusCode::SERVICE_UNAVAILABLE, &format!("store: {error}"));
                }
            }
        }
        // This process stops serving the token now; other replicas within their
        // one-second read cache.
        if let Some(coordinator) = &upstream.coordinator {
            coordinator.forget(&key);
        }
        tracing::info!(upstream = %name, "credentials deleted at the user's request");
        // Then the grant itself, where the server supports RFC 7009: the deleted
        // refresh token must not outlive the user's wish anywhere.
        if let Some(refresh_token) = refresh_token {
            match tokio::time::timeout(STATE_TIMEOUT, authorizer.revoke(&principal, &refresh_token))
                .await
            {
                Ok(Ok(true)) => tracing::info!(upstream = %name, "refresh token revoked"),
                Ok(Ok(false)) => {
                    tracing::info!(upstream = %name, "the server has no revocation endpoint")
                }
                Ok(Err(error)) => tracing::warn!(upstream = %name, %error, "revocation failed"),
                Err(_) => tracing::warn!(upstream = %name, "revocation timed out"),
            }
        }
    }
    Redirect::to("/connections").into_response()
}

/// The `/connections` forms' anti-forgery tokens: an HMAC of the principal.
impl Gateway {
    /// The token of `principal`'s `/connections` forms.
    pub(crate) fn form_token(&self, principal: &Principal) -> String {
        crate::crypto::hex(&self.form_tag(principal))
    }

    /// Whether `token` is `principal`'s form token.
    pub(crate) fn form_token_matches(&self, principal: &Principal, token: &str) -> bool {
        let expected = self.form_token(principal);
        // Constant time: both are hex strings of one length.
        expected.len() == token.len()
            && expected
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    }

    fn form_tag(&self, principal: &Principal) -> [u8; 32] {
        let mut data = Vec::new();
        for field in [principal.tenant(), principal.subject()] {
            data.extend_from_slice(&(field.len() as u64).to_be_bytes());
            data.extend_from_slice(field.as_bytes());
        }
        crate::crypto::hmac_sha256(&*self.form_key, &data)
    }
}
