//! The authorization endpoint: auto-consent, the cookie-bound interaction page, and
//! the redirect back (with a code, or the configured error).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{AuthState, IssuedCode, lock, random_token};

/// Auto-consent: redirects back with a code bound to the PKCE challenge (RFC 7636) and
/// the `iss` parameter (RFC 9207).
pub(super) async fn authorize(
    State(state): State<Arc<AuthState>>,
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    state
        .counters
        .authorization_requests
        .fetch_add(1, Ordering::SeqCst);
    let param = |name: &str| query.get(name).cloned();
    let (Some(client_id), Some(redirect_uri), Some(_challenge)) = (
        param("client_id"),
        param("redirect_uri"),
        param("code_challenge"),
    ) else {
        return (
            StatusCode::BAD_REQUEST,
            "missing client_id, redirect_uri or code_challenge",
        )
            .into_response();
    };
    if param("response_type").as_deref() != Some("code")
        || param("code_challenge_method").as_deref() != Some("S256")
    {
        return (
            StatusCode::BAD_REQUEST,
            "response_type=code with PKCE S256 required",
        )
            .into_response();
    }
    if url::Url::parse(&redirect_uri).is_err() {
        return (StatusCode::BAD_REQUEST, "bad redirect_uri").into_response();
    }
    if !lock(&state.tokens).clients.contains_key(&client_id) {
        return (StatusCode::BAD_REQUEST, "unknown client").into_response();
    }
    if lock(&state.knobs).interaction {
        // Like a real provider's login page: a hop bound to a session cookie.
        let (id, session) = (random_token("interaction"), random_token("session"));
        lock(&state.interactions).insert(id.clone(), (session.clone(), query));
        return (
            StatusCode::FOUND,
            [
                (header::LOCATION, format!("/interaction?id={id}")),
                (
                    header::SET_COOKIE,
                    format!("fixture_session={session}; Path=/; HttpOnly; SameSite=Lax"),
                ),
            ],
        )
            .into_response();
    }
    consent(&state, &query)
}

/// The interaction page: consents only for the browser holding the session cookie.
pub(super) async fn interaction(
    State(state): State<Arc<AuthState>>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let id = query.get("id").cloned().unwrap_or_default();
    let Some((session, request)) = lock(&state.interactions).remove(&id) else {
        return (StatusCode::BAD_REQUEST, "unknown or used interaction").into_response();
    };
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect::<Vec<_>>()
        .join("; ");
    let bound = cookie
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(name, value)| name == "fixture_session" && value == session);
    if !bound {
        return (
            StatusCode::BAD_REQUEST,
            "session cookie missing: the login was not started in this browser",
        )
            .into_response();
    }
    consent(&state, &request)
}

/// The user consents (or, with an error knob, does not): redirect back to the client.
fn consent(state: &AuthState, query: &HashMap<String, String>) -> Response {
    let param = |name: &str| query.get(name).cloned();
    let (Some(client_id), Some(redirect_uri), Some(challenge)) = (
        param("client_id"),
        param("redirect_uri"),
        param("code_challenge"),
    ) else {
        return (StatusCode::BAD_REQUEST, "incomplete authorization request").into_response();
    };
    let Ok(mut location) = url::Url::parse(&redirect_uri) else {
        return (StatusCode::BAD_REQUEST, "bad redirect_uri").into_response();
    };
    let deny = lock(&state.knobs).deny.clone();
    if let Some((error, description)) = deny {
        let mut pairs = location.query_pairs_mut();
        pairs.append_pair("error", &error);
        if let Some(description) = &description {
            pairs.append_pair("error_description", description);
        }
        pairs
            .append_pair("state", &param("state").unwrap_or_default())
            .append_pair("iss", &lock(&state.issuer));
        drop(pairs);
        return (
            StatusCode::FOUND,
            [(header::LOCATION, location.to_string())],
        )
            .into_response();
    }
    let code = random_token("code");
    {
        let mut tokens = lock(&state.tokens);
        let subject = lock(&state.knobs).consenting_user.clone();
        tokens.codes.insert(
            code.clone(),
            IssuedCode {
                client_id,
                redirect_uri,
                challenge,
                scope: param("scope"),
                subject,
                used: false,
            },
        );
    }
    location
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &param("state").unwrap_or_default())
        .append_pair("iss", &lock(&state.issuer));
    (
        StatusCode::FOUND,
        [(header::LOCATION, location.to_string())],
    )
        .into_response()
}
