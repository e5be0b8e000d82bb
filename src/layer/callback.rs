//! The OAuth callback endpoint as a tower `Service`, with a browser binding.
//!
//! Starting a flow sends the browser to the authorization URL with a signed, one-shot
//! cookie bound to the flow's `state` ([`BrowserBinding::start_response`]). The callback
//! ([`CallbackService`]) acts only when that cookie is present and valid, compared in
//! constant time: without it, a forged or replayed callback (login CSRF) and a forged
//! `error=` (which would fail someone else's flow) change nothing.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hmac::{Hmac, Mac};
use http::{HeaderValue, Request, Response, StatusCode, header};
use sha2::Sha256;

use crate::oauth::callback::{AuthorizationCompleter, CallbackError, CallbackParams};
use crate::oauth::flow::PendingFlow;
use crate::token::Secret;

const COOKIE: &str = "mcp_oauth_binding";

/// Signs and checks the browser-binding cookie of OAuth flows.
///
/// ```
/// use tower_mcp_auth::BrowserBinding;
///
/// let binding = BrowserBinding::new(b"32 random bytes from your secret store");
/// let cookie = binding.cookie_value("state-123");
/// assert!(binding.verify(&format!("other=1; mcp_oauth_binding={cookie}"), "state-123"));
/// assert!(!binding.verify(&format!("mcp_oauth_binding={cookie}"), "state-456"));
/// ```
#[derive(Clone)]
pub struct BrowserBinding {
    key: Secret,
    secure: bool,
}

impl fmt::Debug for BrowserBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrowserBinding")
            .field("key", &self.key)
            .field("secure", &self.secure)
            .finish()
    }
}

impl BrowserBinding {
    /// Binds with HMAC-SHA256 under `key` (keep it secret; 32 random bytes). Cookies are
    /// `Secure` unless [`insecure_cookies`](Self::insecure_cookies) is set.
    pub fn new(key: &[u8]) -> Self {
        Self {
            key: Secret::new(String::from_utf8_lossy(&hex(key))),
            secure: true,
        }
    }

    /// Drops the `Secure` attribute, for plain-http callbacks on loopback in development.
    pub fn insecure_cookies(mut self) -> Self {
        self.secure = false;
        self
    }

    fn mac(&self, state: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.key.expose().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(state.as_bytes());
        mac
    }

    /// The cookie value bound to `state`.
    pub fn cookie_value(&self, state: &str) -> String {
        String::from_utf8_lossy(&hex(&self.mac(state).finalize().into_bytes())).into_owned()
    }

    /// Whether the `Cookie` header carries the binding for `state` (constant time).
    pub fn verify(&self, cookie_header: &str, state: &str) -> bool {
        cookie_header
            .split(';')
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(name, _)| *name == COOKIE)
            .filter_map(|(_, value)| unhex(value))
            .any(|tag| self.mac(state).verify_slice(&tag).is_ok())
    }

    /// The response that starts a flow in the browser: `302` to the authorization URL,
    /// setting the binding cookie (HttpOnly, SameSite=Lax, 15 minutes).
    pub fn start_response(&self, flow: &PendingFlow) -> Response<()> {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::FOUND;
        let headers = response.headers_mut();
        if let Ok(location) = HeaderValue::from_str(flow.authorization_url.as_str()) {
            headers.insert(header::LOCATION, location);
        }
        let secure = if self.secure { "; Secure" } else { "" };
        let cookie = format!(
            "{COOKIE}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age=900{secure}",
            self.cookie_value(flow.state.expose())
        );
        if let Ok(mut cookie) = HeaderValue::from_str(&cookie) {
            cookie.set_sensitive(true);
            headers.insert(header::SET_COOKIE, cookie);
        }
        response
    }
}

fn hex(bytes: &[u8]) -> Vec<u8> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
        .collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `GET <callback>?code&state[&iss][&error]`: checks the browser binding, completes the
/// flow through an [`AuthorizationCompleter`], answers a small HTML page and clears the
/// cookie (one-shot). Never fails at the service level.
///
/// ```
/// use std::sync::Arc;
/// use tower::ServiceExt;
/// use tower_mcp_auth::{store::MemoryStore, AuthHttpClient, AuthorizationCompleter, BrowserBinding, CallbackService, FlowStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let completer = AuthorizationCompleter::new(FlowStore::new(), Arc::new(MemoryStore::new()), AuthHttpClient::reqwest());
/// let callback = CallbackService::new(completer, BrowserBinding::new(b"secret key"));
/// // A callback without the binding cookie changes nothing.
/// let request = http::Request::get("/oauth/callback?code=c&state=s").body(()).unwrap();
/// let response = callback.oneshot(request).await.unwrap();
/// assert_eq!(response.status(), 400);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct CallbackService {
    completer: AuthorizationCompleter,
    binding: BrowserBinding,
}

impl CallbackService {
    /// A callback endpoint completing flows with `completer`, bound by `binding`.
    pub fn new(completer: AuthorizationCompleter, binding: BrowserBinding) -> Self {
        Self { completer, binding }
    }
}

fn page(status: StatusCode, message: &str, clear_cookie: bool) -> Response<String> {
    let mut response = Response::new(format!(
        "<!doctype html><title>Authorization</title><p>{message}</p>"
    ));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if clear_cookie {
        response.headers_mut().insert(
            header::SET_COOKIE,
            HeaderValue::from_static(
                "mcp_oauth_binding=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0",
            ),
        );
    }
    response
}

impl<B> tower::Service<Request<B>> for CallbackService {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<String>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let params = CallbackParams::from_query(request.uri().query().unwrap_or(""));
        let cookies = request
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join("; ");
        let bound = params
            .state
            .as_ref()
            .is_some_and(|state| self.binding.verify(&cookies, state.expose()));
        let completer = self.completer.clone();
        Box::pin(async move {
            if !bound {
                tracing::warn!("OAuth callback without a valid browser binding; ignored");
                return Ok(page(
                    StatusCode::BAD_REQUEST,
                    "This sign-in link is not valid in this browser. Start the sign-in again.",
                    false,
                ));
            }
            Ok(match completer.complete(&params).await {
                Ok(_) => page(
                    StatusCode::OK,
                    "Signed in. You can close this window.",
                    true,
                ),
                Err(CallbackError::Denied(_)) => page(
                    StatusCode::OK,
                    "Sign-in was cancelled. You can close this window.",
                    true,
                ),
                Err(error) => {
                    tracing::warn!(%error, "OAuth callback failed");
                    page(
                        StatusCode::BAD_REQUEST,
                        "Sign-in failed. Start the sign-in again.",
                        true,
                    )
                }
            })
        })
    }
}

/// An axum `Router` serving `service` at `path` (feature `axum`).
///
/// ```
/// use std::sync::Arc;
/// use tower_mcp_auth::{callback_router, store::MemoryStore, AuthHttpClient, AuthorizationCompleter, BrowserBinding, CallbackService, FlowStore};
///
/// let completer = AuthorizationCompleter::new(FlowStore::new(), Arc::new(MemoryStore::new()), AuthHttpClient::reqwest());
/// let app: axum::Router = callback_router("/oauth/callback", CallbackService::new(completer, BrowserBinding::new(b"key")));
/// # drop(app);
/// ```
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub fn callback_router(path: &str, service: CallbackService) -> axum::Router {
    axum::Router::new().route_service(path, service)
}
