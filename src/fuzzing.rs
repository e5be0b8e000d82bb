//! Fuzz targets: every parser that reads bytes a server or an unauthenticated caller
//! chose, driven the way the crate drives it. None may panic, whatever the input.
//!
//! The cargo-fuzz targets in `fuzz/` call these, and so does the deterministic smoke
//! test `tests/fuzz_smoke.rs` in the README's test command, so a regression of any
//! security fix fails CI without a fuzzer installed.
//!
//! ```
//! // Each target takes arbitrary bytes and must return normally.
//! tower_mcp_auth::fuzzing::www_authenticate(b"Bearer realm=\"x\", scope=\"a b\"");
//! tower_mcp_auth::fuzzing::token_response(br#"{"access_token":"a","token_type":"bearer","expires_in":18446744073709551615}"#);
//! ```

use std::time::Duration;

use http::HeaderMap;

use crate::binding::covers;
use crate::challenge::{BearerChallenge, Challenge};
use crate::layer::callback::BrowserBinding;
use crate::oauth::callback::CallbackParams;
use crate::oauth::discovery::{AuthorizationServerMetadata, ProtectedResourceMetadata};
use crate::oauth::exchange::jwt_expiry;
use crate::oauth::grants::GrantedTokens;
use crate::token::{Secret, TokenSet};
use crate::url_policy::UrlPolicy;

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// `WWW-Authenticate` parsing: every challenge, and the Bearer challenge with its
/// scopes, as read from a 401 or 403.
pub fn www_authenticate(data: &[u8]) {
    let field = text(data);
    for challenge in Challenge::parse_all(&field) {
        let _ = (
            challenge.scheme(),
            challenge.token68(),
            challenge.params().len(),
        );
    }
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::WWW_AUTHENTICATE, value);
        if let Some(bearer) = BearerChallenge::from_headers(&headers) {
            let _ = bearer.scopes().count();
        }
    }
}

/// The callback's query string and the browser-binding cookie check.
pub fn callback(data: &[u8]) {
    let input = text(data);
    let (query, cookie) = input.split_once('\n').unwrap_or((&input, ""));
    let params = CallbackParams::from_query(query);
    let state = params.state.as_ref().map_or("", Secret::expose);
    let binding = BrowserBinding::new(b"fuzzing key of at least 32 bytes!!");
    let _ = binding.verify(cookie, state);
    let _ = binding.verify(&binding.cookie_value(state), state);
}

/// The URL policy on URLs learned from servers, and the bearer's resource coverage
/// check on request URIs.
pub fn url_policy(data: &[u8]) {
    let input = text(data);
    if let Ok(url) = url::Url::parse(&input) {
        for policy in [
            UrlPolicy::default(),
            UrlPolicy::default().allow_loopback_http(),
            UrlPolicy::default().allow_private_ranges(),
        ] {
            let _ = policy.check(&url);
        }
    }
    if let Ok(ip) = input.parse::<std::net::IpAddr>() {
        let _ = UrlPolicy::default().check_ip(ip);
    }
    if let Ok(uri) = input.parse::<http::Uri>() {
        let resource: url::Url = "https://mcp.example.com/mcp".parse().expect("static URL");
        let _ = covers(&resource, &uri);
    }
}

/// Protected resource and authorization server metadata documents, through the checks
/// and the scope selection an authorization runs on them.
pub fn metadata(data: &[u8]) {
    if let Ok(resource) = serde_json::from_slice::<ProtectedResourceMetadata>(data) {
        let _ = crate::oauth::discovery::weigh_resource(&resource);
        let server: url::Url = "https://mcp.example.com/mcp".parse().expect("static URL");
        let _ = crate::oauth::discovery::resource_matches(&resource.resource, &server);
        let _ = crate::oauth::scopes::fuzz_scopes(Some(&resource), None);
    }
    if let Ok(issuer) = serde_json::from_slice::<AuthorizationServerMetadata>(data) {
        let _ = crate::oauth::discovery::weigh_issuer(&issuer);
        let _ = issuer.supports_s256();
        let _ = crate::oauth::scopes::fuzz_scopes(None, Some(&issuer));
        for endpoint in [&issuer.authorization_endpoint, &issuer.token_endpoint] {
            if let Some(url) = endpoint.as_deref().and_then(|e| url::Url::parse(e).ok()) {
                let _ = UrlPolicy::default().check(&url);
            }
        }
    }
}

/// A dynamic client registration response.
pub fn registration_response(data: &[u8]) {
    for requested in ["none", "client_secret_basic"] {
        let _ = crate::oauth::registration::parse_registration(data, requested);
    }
}

/// Token endpoint responses: the refresh and code grants (oauth2's parser), the OBO
/// grants (this crate's), each turned into the token set that would be stored.
pub fn token_response(data: &[u8]) {
    if let Ok(granted) = crate::oauth::grants::parse_token_response(data) {
        store_shape(granted);
    }
    if let Ok(granted) = crate::oauth::exchange::parse_token_response(data) {
        store_shape(granted);
    }
    let _ = crate::http_client::retry_after_value(data);
}

fn store_shape(granted: GrantedTokens) {
    let previous = TokenSet::new(Secret::new("previous")).with_expires_in(Duration::from_secs(60));
    let tokens = granted.into_token_set(Some(&previous));
    let _ = (tokens.is_usable(), tokens.lifetime());
}

/// A user assertion as `OboHeaderLayer` reads it before any exchange.
pub fn assertion(data: &[u8]) {
    let _ = jwt_expiry(&text(data));
}

/// A fuzz target: arbitrary bytes in, nothing out, never a panic.
pub type Target = fn(&[u8]);

/// Every target by name, for the smoke test.
pub const TARGETS: &[(&str, Target)] = &[
    ("www_authenticate", www_authenticate),
    ("callback", callback),
    ("url_policy", url_policy),
    ("metadata", metadata),
    ("registration_response", registration_response),
    ("token_response", token_response),
    ("assertion", assertion),
];
