//! The token endpoint: client authentication, the code, refresh (rotation and reuse
//! detection) and assertion grants, knobs for latency and faults, and the recording of
//! what each request carried.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::json;

use super::*;

fn code_grant(state: &AuthState, headers: &HeaderMap, form: &HashMap<String, String>) -> Response {
    state.counters.code_exchanges.fetch_add(1, Ordering::SeqCst);
    let mut tokens = lock(&state.tokens);
    let Some((client_id, client_auth)) = authenticate(&tokens, headers, form) else {
        // Recorded too: tests check which credentials reached which server.
        let claimed = claimed_client_id(headers, form).unwrap_or_default();
        state.record("authorization_code", &claimed, "rejected", form);
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    };
    state.record("authorization_code", &client_id, client_auth, form);
    let code = form.get("code").map(String::as_str).unwrap_or("");
    let verifier = form.get("code_verifier").map(String::as_str).unwrap_or("");
    let Some(issued) = tokens.codes.get_mut(code) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    };
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(crate::crypto::sha256(&[verifier.as_bytes()]));
    let valid = !issued.used
        && issued.client_id == client_id
        && form.get("redirect_uri") == Some(&issued.redirect_uri)
        && issued.challenge == challenge;
    issued.used = true;
    if !valid {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    let grant = Grant {
        family: state.counters.next_family.fetch_add(1, Ordering::Relaxed),
        subject: issued.subject.clone(),
        client_id,
        scope: issued.scope.clone(),
    };
    let (access, refresh, lifetime) = state.mint(&mut tokens, &grant);
    let mut body = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": lifetime.as_secs(),
        "refresh_token": refresh,
    });
    if let Some(scope) = &grant.scope {
        body["scope"] = json!(scope);
    }
    Json(body).into_response()
}

/// `jwt-bearer` (Entra On-Behalf-Of) and `token-exchange` (RFC 8693): the assertion
/// must be one of this server's user assertions, addressed to the requesting client
/// and unexpired; the issued token is for the assertion's subject.
fn obo_grant(state: &AuthState, headers: &HeaderMap, form: &HashMap<String, String>) -> Response {
    let mut tokens = lock(&state.tokens);
    let Some((client_id, client_auth)) = authenticate(&tokens, headers, form) else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    };
    let grant_type = form.get("grant_type").cloned().unwrap_or_default();
    state.record(&grant_type, &client_id, client_auth, form);
    let exchange = grant_type == crate::obo::TOKEN_EXCHANGE;
    let assertion = if exchange {
        let accepted = [
            crate::obo::ACCESS_TOKEN_TYPE,
            "urn:ietf:params:oauth:token-type:jwt",
        ];
        if !form
            .get("subject_token_type")
            .is_some_and(|t| accepted.contains(&t.as_str()))
        {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
        }
        form.get("subject_token")
    } else {
        form.get("assertion")
    };
    let Some(subject) = assertion.and_then(|a| state.verify_assertion(a, &client_id)) else {
        state.counters.invalid_grants.fetch_add(1, Ordering::SeqCst);
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    };
    let grant = Grant {
        family: state.counters.next_family.fetch_add(1, Ordering::Relaxed),
        subject,
        client_id,
        scope: form.get("scope").cloned(),
    };
    let (access, _refresh, lifetime) = state.mint(&mut tokens, &grant);
    let mut body = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": lifetime.as_secs(),
    });
    if exchange {
        body["issued_token_type"] = json!(crate::obo::ACCESS_TOKEN_TYPE);
    }
    if let Some(scope) = &grant.scope {
        body["scope"] = json!(scope);
    }
    Json(body).into_response()
}

pub(super) fn oauth_error(status: StatusCode, code: &str) -> Response {
    (status, Json(json!({ "error": code }))).into_response()
}

/// The client id and how it authenticated, or `None` when authentication failed.
/// The client id a request claims (Basic user name or `client_id`), authenticated or not.
/// When a token of `lifetime` issued now stops being accepted: like real servers, at
/// the whole second its `exp` names (rounded down), so up to a second before `now +
/// lifetime`. A hostile lifetime (u64::MAX seconds) must not panic the fixture.
pub(super) fn whole_second_expiry(lifetime: Duration) -> Instant {
    let (now, instant) = (std::time::SystemTime::now(), Instant::now());
    let far = || instant + Duration::from_secs(100 * 365 * 86_400);
    let Some(unix_now) = now.duration_since(std::time::UNIX_EPOCH).ok() else {
        return far();
    };
    match unix_now.checked_add(lifetime) {
        Some(exp) => {
            let exp = Duration::from_secs(exp.as_secs());
            instant + exp.saturating_sub(unix_now)
        }
        None => far(),
    }
}

fn claimed_client_id(headers: &HeaderMap, form: &HashMap<String, String>) -> Option<String> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| pair.split_once(':').map(|(id, _)| id.to_owned()));
    basic.or_else(|| form.get("client_id").cloned())
}

fn authenticate(
    tokens: &Tokens,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Option<(String, &'static str)> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .and_then(|raw| String::from_utf8(raw).ok());
    if form.get("client_assertion_type").map(String::as_str)
        == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        // private_key_jwt: the fixture holds no client keys, so it checks the
        // assertion's claims (iss = sub = client_id, unexpired), not its signature.
        let assertion = form.get("client_assertion")?;
        let payload = assertion.split('.').nth(1)?;
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .ok()?,
        )
        .ok()?;
        let client_id = form.get("client_id")?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        let valid = claims["iss"] == client_id.as_str()
            && claims["sub"] == client_id.as_str()
            && claims["exp"].as_u64().is_some_and(|exp| exp > now);
        return (valid && tokens.clients.contains_key(client_id))
            .then(|| (client_id.clone(), "private_key_jwt"));
    }
    let (client_id, secret, method) = match basic {
        Some(pair) => {
            let (id, secret) = pair.split_once(':')?;
            let decode = |s: &str| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
            };
            (decode(id)?, decode(secret), "basic")
        }
        None => {
            let secret = form.get("client_secret").cloned();
            let method = if secret.is_some() { "post" } else { "none" };
            (form.get("client_id")?.clone(), secret, method)
        }
    };
    match tokens.clients.get(&client_id)? {
        Some(expected) if secret.as_deref() != Some(expected.as_str()) => None,
        _ => Some((client_id, method)),
    }
}

pub(super) async fn token_endpoint(
    State(state): State<Arc<AuthState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    // Like a real server's database transaction, a token request runs to the end even
    // if the client hangs up: a redemption the client gave up on still rotates tokens.
    let work = tokio::spawn(handle_token_request(state, headers, form));
    work.await
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn handle_token_request(
    state: Arc<AuthState>,
    headers: HeaderMap,
    form: HashMap<String, String>,
) -> Response {
    let grant_type = form.get("grant_type").cloned().unwrap_or_default();
    if grant_type == "refresh_token" {
        state
            .counters
            .refresh_requests
            .fetch_add(1, Ordering::SeqCst);
    }
    if grant_type == crate::obo::JWT_BEARER || grant_type == crate::obo::TOKEN_EXCHANGE {
        state.counters.obo_exchanges.fetch_add(1, Ordering::SeqCst);
    }
    let (latency, fault) = {
        let mut knobs = lock(&state.knobs);
        let fault = match &mut knobs.fault {
            Some((fault, None)) => Some(fault.clone()),
            Some((fault, Some(remaining))) if *remaining > 0 => {
                *remaining -= 1;
                Some(fault.clone())
            }
            _ => None,
        };
        (knobs.latency, fault)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(fault) = fault {
        state.counters.faults.fetch_add(1, Ordering::SeqCst);
        return match fault {
            Fault::ServerError => oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
            Fault::TooManyRequests { retry_after_secs } => (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, retry_after_secs.to_string())],
            )
                .into_response(),
            Fault::InvalidGrant => {
                state.counters.invalid_grants.fetch_add(1, Ordering::SeqCst);
                oauth_error(StatusCode::BAD_REQUEST, "invalid_grant")
            }
            Fault::InvalidClient => oauth_error(StatusCode::UNAUTHORIZED, "invalid_client"),
            Fault::Hang => std::future::pending().await,
            Fault::InteractionRequired { claims } => (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "interaction_required", "claims": claims})),
            )
                .into_response(),
        };
    }
    match grant_type.as_str() {
        "refresh_token" => refresh_grant(&state, &headers, &form),
        "authorization_code" => code_grant(&state, &headers, &form),
        crate::obo::JWT_BEARER | crate::obo::TOKEN_EXCHANGE => obo_grant(&state, &headers, &form),
        _ => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    }
}

fn refresh_grant(
    state: &AuthState,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Response {
    let mut tokens = lock(&state.tokens);
    let Some((client_id, client_auth)) = authenticate(&tokens, headers, form) else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    };
    state.record("refresh_token", &client_id, client_auth, form);
    let presented = form.get("refresh_token").map(String::as_str).unwrap_or("");
    let rotate = lock(&state.knobs).rotate_refresh_tokens;
    let invalid_grant = |state: &AuthState| {
        state.counters.invalid_grants.fetch_add(1, Ordering::SeqCst);
        oauth_error(StatusCode::BAD_REQUEST, "invalid_grant")
    };
    let Some(entry) = tokens.refresh.get(presented) else {
        return invalid_grant(state);
    };
    let (grant, used) = (entry.grant.clone(), entry.used);
    *lock(&state.refreshes_by_subject)
        .entry(grant.subject.clone())
        .or_default() += 1;
    if used {
        // Reuse of a rotated refresh token: revoke the whole family.
        state.counters.reuse_detected.fetch_add(1, Ordering::SeqCst);
        tokens.revoked_families.insert(grant.family);
        return invalid_grant(state);
    }
    if tokens.revoked_families.contains(&grant.family) || grant.client_id != client_id {
        return invalid_grant(state);
    }
    if let (true, Some(entry)) = (rotate, tokens.refresh.get_mut(presented)) {
        entry.used = true;
    }
    let (access, refresh, lifetime) = state.mint(&mut tokens, &grant);
    if !rotate {
        tokens.refresh.remove(&refresh);
    }
    state
        .counters
        .refresh_successes
        .fetch_add(1, Ordering::SeqCst);
    let mut body = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": lifetime.as_secs_f64().ceil() as u64,
    });
    if lifetime < Duration::from_secs(1) {
        body["expires_in"] = json!(0);
    }
    if rotate {
        body["refresh_token"] = json!(refresh);
    }
    if let Some(scope) = &grant.scope {
        body["scope"] = json!(scope);
    }
    Json(body).into_response()
}
