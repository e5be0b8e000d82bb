//! The gateway's own sign-in of browsers (identity mode `jwt` with `login_client_id`).
//!
//! MCP clients call with a bearer token, but a browser opening `/connections` or a
//! sign-in link carries none: without a login of its own the gateway could not tell
//! whose browser it is, and a link handed to another user would connect that user's
//! upstream account to the requester. So the gateway signs the browser in at the same
//! issuer that signs the inbound tokens — OpenID Connect, authorization code with PKCE
//! (oauth2's), the ID token verified with the issuer's keys, `aud` = the login client,
//! `nonce` checked — and keeps the principal in a short-lived session cookie it signs
//! (`__Host-` and `Secure` where `public_url` is https, `HttpOnly`, `SameSite=Lax`).
//! The pending login (state, nonce, PKCE verifier, where to return) rides in a second
//! signed cookie of ten minutes: nothing is stored.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use super::config::LoginConfig;
use super::jwt::JwtVerifier;
use tower_mcp_auth::AuthHttpClient;
use tower_mcp_auth::Principal;

/// How long a browser session lasts.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(3600);
/// How long a started login may take.
const LOGIN_TTL: Duration = Duration::from_secs(600);

/// The login of one gateway: its client at the issuer and the cookies' key.
pub(crate) struct BrowserLogin {
    issuer: String,
    client: LoginConfig,
    redirect_uri: url::Url,
    secure: bool,
    key: [u8; 32],
    http: AuthHttpClient,
    verifier: Arc<JwtVerifier>,
    /// The issuer's authorization and token endpoints, discovered on first use.
    endpoints: tokio::sync::OnceCell<(url::Url, url::Url)>,
}

/// Whose page a request is: its principal, or where to send the browser first.
pub(crate) enum BrowserUser {
    /// Signed in.
    Known(Principal),
    /// Not signed in: the login's start, returning to the page.
    SignIn(Response),
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl BrowserLogin {
    pub(crate) fn new(
        issuer: &str,
        client: LoginConfig,
        public_url: &url::Url,
        cookie_key: &[u8],
        http: AuthHttpClient,
        verifier: Arc<JwtVerifier>,
    ) -> Result<Self, url::ParseError> {
        Ok(Self {
            issuer: issuer.to_owned(),
            client,
            redirect_uri: public_url.join("login/callback")?,
            secure: public_url.scheme() == "https",
            key: crate::crypto::hmac_sha256(cookie_key, b"mcp-auth-proxy browser session"),
            http,
            verifier,
            endpoints: tokio::sync::OnceCell::new(),
        })
    }

    fn cookie_name(&self, what: &str) -> String {
        if self.secure {
            format!("__Host-mcp-auth-proxy-{what}")
        } else {
            format!("mcp-auth-proxy-{what}")
        }
    }

    fn set_cookie(&self, what: &str, value: &str, max_age: Duration) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        HeaderValue::try_from(format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
            self.cookie_name(what),
            max_age.as_secs()
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("x=; Max-Age=0"))
    }

    /// `payload` as a cookie value: base64url JSON, a dot, its HMAC.
    fn sign(&self, payload: &Value) -> String {
        let body = URL_SAFE_NO_PAD.encode(payload.to_string());
        let tag = crate::crypto::hmac_sha256(&self.key, body.as_bytes());
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The payload of a cookie this gateway signed and that has not expired.
    fn open(&self, headers: &HeaderMap, what: &str) -> Option<Value> {
        let name = self.cookie_name(what);
        let value = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(n, _)| *n == name)?
            .1;
        let (body, tag) = value.split_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        if !crate::crypto::hmac_sha256_verify(&self.key, body.as_bytes(), &tag) {
            return None;
        }
        let payload: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()?;
        // One key signs both cookies: each names what it is, and is taken only as that.
        (payload["typ"].as_str() == Some(what) && payload["e"].as_u64()? > now()).then_some(payload)
    }

    /// The browser's signed-in principal, if any.
    pub(crate) fn session(&self, headers: &HeaderMap) -> Option<Principal> {
        let session = self.open(headers, "session")?;
        Some(Principal::new(
            session["t"].as_str()?,
            session["s"].as_str()?,
        ))
    }

    /// The browser's user, or the login to go through first (back to `page`).
    pub(crate) fn user(&self, headers: &HeaderMap, page: &http::Uri) -> BrowserUser {
        match self.session(headers) {
            Some(principal) => BrowserUser::Known(principal),
            None => {
                let back = page.path_and_query().map_or("/connections", |p| p.as_str());
                let mut login = url::form_urlencoded::Serializer::new(String::from("/login?"));
                login.append_pair("return", back);
                BrowserUser::SignIn(Redirect::to(&login.finish()).into_response())
            }
        }
    }

    async fn endpoints(&self) -> Result<&(url::Url, url::Url), String> {
        self.endpoints
            .get_or_try_init(|| async {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.issuer.trim_end_matches('/')
                );
                let mut request = http::Request::new(Bytes::new());
                *request.uri_mut() = url.parse().map_err(|_| "issuer URL".to_owned())?;
                let response = self
                    .http
                    .send(request)
                    .await
                    .map_err(|error| format!("the issuer's OpenID configuration: {error}"))?;
                let document: Value = serde_json::from_slice(response.body())
                    .map_err(|_| "the issuer's OpenID configuration is not JSON".to_owned())?;
                if document["issuer"].as_str() != Some(self.issuer.as_str()) {
                    return Err("the issuer's OpenID configuration names another issuer".into());
                }
                let endpoint = |name: &str| {
                    document[name]
                        .as_str()
                        .and_then(|v| url::Url::parse(v).ok())
                        .ok_or_else(|| format!("the issuer's OpenID configuration lacks {name}"))
                };
                Ok((
                    endpoint("authorization_endpoint")?,
                    endpoint("token_endpoint")?,
                ))
            })
            .await
    }

    /// `GET /login?return=PATH`: to the issuer, the pending login in a cookie.
    pub(crate) async fn start(&self, return_to: Option<&str>) -> Response {
        let return_to = return_to
            .filter(|r| is_local_path(r))
            .unwrap_or("/connections");
        let (authorization, _) = match self.endpoints().await {
            Ok(endpoints) => endpoints,
            Err(error) => {
                tracing::warn!(%error, "browser login: cannot reach the issuer");
                return page(
                    StatusCode::BAD_GATEWAY,
                    "The sign-in service cannot be reached; try again later.",
                );
            }
        };
        let (challenge, verifier) = oauth2::PkceCodeChallenge::new_random_sha256();
        let state = crate::crypto::hex(&crate::crypto::random_bytes::<16>());
        let nonce = crate::crypto::hex(&crate::crypto::random_bytes::<16>());
        let mut url = authorization.clone();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client.client_id)
            .append_pair("redirect_uri", self.redirect_uri.as_str())
            .append_pair("scope", "openid")
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", challenge.as_str())
            .append_pair("code_challenge_method", "S256");
        let pending = self.sign(&json!({
            "typ": "login", "st": state, "n": nonce, "v": verifier.secret(), "r": return_to,
            "e": now() + LOGIN_TTL.as_secs(),
        }));
        let mut response = Redirect::to(url.as_str()).into_response();
        response.headers_mut().append(
            header::SET_COOKIE,
            self.set_cookie("login", &pending, LOGIN_TTL),
        );
        response
    }

    /// `GET /login/callback?code&state`: the code exchanged, the ID token verified, the
    /// session cookie set, back to the page the login started from.
    pub(crate) async fn callback(&self, query: Option<&str>, headers: &HeaderMap) -> Response {
        let params: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        let Some(pending) = self.open(headers, "login") else {
            return page(
                StatusCode::BAD_REQUEST,
                "This sign-in was not started in this browser, or took too long. Open the page again.",
            );
        };
        if params.get("state").map(String::as_str) != pending["st"].as_str() {
            return page(
                StatusCode::BAD_REQUEST,
                "This sign-in answer does not belong to this browser.",
            );
        }
        let Some(code) = params.get("code") else {
            tracing::info!(error = ?params.get("error"), "browser login: refused at the issuer");
            return page(StatusCode::FORBIDDEN, "The sign-in was refused.");
        };
        let principal = match self.redeem(code, &pending).await {
            Ok(principal) => principal,
            Err(error) => {
                tracing::warn!(%error, "browser login failed");
                return page(
                    StatusCode::BAD_GATEWAY,
                    "The sign-in could not be completed; try again.",
                );
            }
        };
        tracing::info!(subject = principal.subject(), "browser signed in");
        let session = self.sign(&json!({
            "typ": "session", "t": principal.tenant(), "s": principal.subject(),
            "e": now() + SESSION_TTL.as_secs(),
        }));
        let back = pending["r"].as_str().unwrap_or("/connections");
        let mut response = Redirect::to(back).into_response();
        let cookies = response.headers_mut();
        cookies.append(
            header::SET_COOKIE,
            self.set_cookie("session", &session, SESSION_TTL),
        );
        cookies.append(
            header::SET_COOKIE,
            self.set_cookie("login", "", Duration::ZERO),
        );
        response
    }

    async fn redeem(&self, code: &str, pending: &Value) -> Result<Principal, String> {
        let (_, token_endpoint) = self.endpoints().await?;
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", self.redirect_uri.as_str())
            .append_pair("code_verifier", pending["v"].as_str().unwrap_or_default())
            .finish();
        let mut request = http::Request::new(Bytes::from(form));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = token_endpoint
            .as_str()
            .parse()
            .map_err(|_| "token endpoint URL".to_owned())?;
        let headers = request.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        match &self.client.client_secret {
            Some(secret) => {
                let encode = |v: &str| {
                    url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
                };
                let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    encode(&self.client.client_id),
                    encode(secret.expose())
                ));
                let mut value = HeaderValue::try_from(format!("Basic {basic}"))
                    .map_err(|_| "client credentials".to_owned())?;
                value.set_sensitive(true);
                headers.insert(header::AUTHORIZATION, value);
            }
            None => {
                let body = format!(
                    "{}&client_id={}",
                    String::from_utf8_lossy(request.body()),
                    url::form_urlencoded::byte_serialize(self.client.client_id.as_bytes())
                        .collect::<String>()
                );
                *request.body_mut() = Bytes::from(body);
            }
        }
        let response = self
            .http
            .send(request)
            .await
            .map_err(|error| format!("token endpoint: {error}"))?;
        if !response.status().is_success() {
            return Err(format!("token endpoint answered {}", response.status()));
        }
        let tokens: Value =
            serde_json::from_slice(response.body()).map_err(|_| "token response is not JSON")?;
        let id_token = tokens["id_token"]
            .as_str()
            .ok_or("the token response holds no id_token")?;
        let (principal, claims) = self
            .verifier
            .verify(id_token, &self.client.client_id)
            .await
            .map_err(|error| format!("ID token: {error}"))?;
        if claims["nonce"].as_str() != pending["n"].as_str() {
            return Err("ID token: the nonce is not this login's".into());
        }
        Ok(principal)
    }
}

/// Whether `path` is a path on this gateway, safe to redirect to: `/` and then visible
/// ASCII only (browsers drop tabs and newlines from URLs, so `/\t/evil.example` would
/// become `//evil.example`), never `//` or `/\` (another host).
fn is_local_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.starts_with("//")
        && !path.starts_with("/\\")
        && path.bytes().all(|b| b.is_ascii_graphic())
        && !path.contains('\\')
}

/// A small page in the gateway's style.
fn page(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::response::Html(format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign-in</title></head>\
<body style=\"font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto\"><p>{}</p></body></html>",
            tower_mcp_auth::layer::callback::escape_html(message)
        )),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::is_local_path;

    #[test]
    fn only_paths_on_this_gateway_are_returned_to() {
        for path in ["/connections", "/oauth/docs/start?flow=abc", "/"] {
            assert!(is_local_path(path), "{path}");
        }
        for path in [
            "//evil.example",
            "/\\evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "https://evil.example",
            "evil",
            "/caf\u{e9}",
            "/a b",
        ] {
            assert!(!is_local_path(path), "{path:?}");
        }
    }
}
