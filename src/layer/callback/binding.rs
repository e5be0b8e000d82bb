//! The browser-binding cookie: a signed, one-shot cookie per flow.

use std::fmt;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use crate::oauth::flow::PendingFlow;
use crate::token::Secret;

/// The prefix of every binding cookie's name; the rest is derived from the flow.
const COOKIE_PREFIX: &str = "mcp_oauth_";

/// Signs and checks the browser-binding cookies of OAuth flows.
///
/// Each flow gets a cookie of its own (named after the flow, so a second sign-in in the
/// same browser does not overwrite the first's), scoped to the callback's path, living
/// as long as the flow, `HttpOnly`, `SameSite=Lax` and `Secure` (opt out only for
/// plain-http callbacks on loopback). Its value is an HMAC-SHA256 of the flow's `state`,
/// compared in constant time. The `Cookie` header is read leniently: other apps' cookies
/// on the same host (cookies ignore ports), non-ASCII ones included, are skipped.
///
/// ```
/// use tower_mcp_auth::layer::callback::BrowserBinding;
///
/// let binding = BrowserBinding::new(b"32 random bytes from your secret store");
/// let cookie = format!("{}={}", binding.cookie_name("state-123"), binding.cookie_value("state-123"));
/// assert!(binding.verify(&format!("other=é; {cookie}"), "state-123"));
/// assert!(!binding.verify(&cookie, "state-456"));
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

    /// Drops the `Secure` attribute: only for plain-http callbacks on loopback
    /// (development, desktop apps). Browsers refuse `Secure` cookies over http.
    pub fn insecure_cookies(mut self) -> Self {
        self.secure = false;
        self
    }

    fn mac(&self, state: &str) -> [u8; 32] {
        crate::crypto::hmac_sha256(self.key.expose().as_bytes(), state.as_bytes())
    }

    /// The name of the cookie of the flow with `state`.
    pub fn cookie_name(&self, state: &str) -> String {
        let digest = crate::crypto::sha256(&[state.as_bytes()]);
        let short = String::from_utf8_lossy(&hex(&digest[..8])).into_owned();
        format!("{COOKIE_PREFIX}{short}")
    }

    /// The cookie value bound to `state`.
    pub fn cookie_value(&self, state: &str) -> String {
        String::from_utf8_lossy(&hex(&self.mac(state))).into_owned()
    }

    /// Whether the `Cookie` header carries the binding for `state` (constant time).
    pub fn verify(&self, cookie_header: &str, state: &str) -> bool {
        let name = self.cookie_name(state);
        cookie_header
            .split(';')
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(candidate, _)| candidate.trim() == name)
            .filter_map(|(_, value)| unhex(value.trim().trim_matches('"')))
            .any(|tag| {
                crate::crypto::hmac_sha256_verify(
                    self.key.expose().as_bytes(),
                    state.as_bytes(),
                    &tag,
                )
            })
    }

    /// Whether the request's `Cookie` headers carry the binding for `state`. Headers
    /// that are not valid UTF-8 are read lossily, never rejected as a whole.
    pub(crate) fn verify_headers(&self, headers: &HeaderMap, state: &str) -> bool {
        headers
            .get_all(header::COOKIE)
            .iter()
            .any(|value| self.verify(&String::from_utf8_lossy(value.as_bytes()), state))
    }

    /// The `Set-Cookie` value that binds this browser to the flow.
    pub(crate) fn set_cookie(&self, flow: &PendingFlow) -> Option<HeaderValue> {
        let state = flow.state.expose();
        let max_age = flow.remaining().max(Duration::from_secs(1)).as_secs();
        self.cookie_header(
            &format!("{}={}", self.cookie_name(state), self.cookie_value(state)),
            flow.request.redirect_uri.path(),
            max_age,
        )
    }

    /// The `Set-Cookie` value that removes the flow's cookie (same attributes, so the
    /// browser matches it).
    pub(crate) fn clear_cookie(&self, flow: &PendingFlow) -> Option<HeaderValue> {
        let name = self.cookie_name(flow.state.expose());
        self.cookie_header(&format!("{name}="), flow.request.redirect_uri.path(), 0)
    }

    fn cookie_header(&self, pair: &str, path: &str, max_age: u64) -> Option<HeaderValue> {
        let secure = if self.secure { "; Secure" } else { "" };
        let path = if path.is_empty() { "/" } else { path };
        let mut value = HeaderValue::from_str(&format!(
            "{pair}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
        ))
        .ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// The response that starts a flow in the browser: `302` to the authorization URL,
    /// setting the flow's binding cookie. [`CallbackService`](crate::layer::callback::CallbackService)'s
    /// start endpoint answers this; apps with a start route of their own use it there.
    pub fn start_response(&self, flow: &PendingFlow) -> Response<()> {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::FOUND;
        let headers = response.headers_mut();
        if let Ok(location) = HeaderValue::from_str(flow.authorization_url.as_str()) {
            headers.insert(header::LOCATION, location);
        }
        if let Some(cookie) = self.set_cookie(flow) {
            headers.insert(header::SET_COOKIE, cookie);
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_per_flow_and_read_leniently() {
        let binding = BrowserBinding::new(b"key");
        assert_ne!(binding.cookie_name("a"), binding.cookie_name("b"));
        let a = format!("{}={}", binding.cookie_name("a"), binding.cookie_value("a"));
        let b = format!("{}={}", binding.cookie_name("b"), binding.cookie_value("b"));
        // Two sign-ins in one browser: both cookies are there, each finds its own.
        let both = format!("theme=dark; {a}; {b}");
        assert!(binding.verify(&both, "a") && binding.verify(&both, "b"));
        // Non-ASCII and malformed cookies of other apps on the host are skipped.
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_bytes("prefs=h\u{e9}llo; broken; =x".as_bytes()).unwrap(),
        );
        headers.append(header::COOKIE, HeaderValue::from_str(&a).unwrap());
        assert!(binding.verify_headers(&headers, "a"));
        let mut one = HeaderMap::new();
        one.insert(
            header::COOKIE,
            HeaderValue::from_bytes(format!("x=\u{fc}ber; {a}").as_bytes()).unwrap(),
        );
        assert!(binding.verify_headers(&one, "a"));
        // Another key's cookie, or another flow's, does not bind.
        assert!(!BrowserBinding::new(b"other").verify(&a, "a"));
        assert!(!binding.verify(
            &a.replace(&binding.cookie_name("a"), &binding.cookie_name("b")),
            "b"
        ));
    }
}
