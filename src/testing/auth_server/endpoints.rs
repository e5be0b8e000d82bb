//! The smaller endpoints: metadata, JWKS, revocation and dynamic registration.

use super::*;

pub(super) async fn metadata(State(state): State<Arc<AuthState>>) -> Json<serde_json::Value> {
    state
        .counters
        .metadata_requests
        .fetch_add(1, Ordering::SeqCst);
    let real = lock(&state.issuer).clone();
    let claimed = lock(&state.knobs)
        .metadata_issuer
        .clone()
        .unwrap_or_else(|| real.clone());
    Json(json!({
        "issuer": claimed,
        "authorization_endpoint": format!("{real}/authorize"),
        "token_endpoint": format!("{real}/token"),
        "registration_endpoint": format!("{real}/register"),
        "jwks_uri": format!("{real}/jwks.json"),
        "revocation_endpoint": format!("{real}/revoke"),
        "response_types_supported": ["code"],
        "authorization_response_iss_parameter_supported": true,
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
    }))
}

/// RFC 7009: a refresh token of the requesting client revokes its whole grant (every
/// access and refresh token of the family). Unknown tokens are fine: 200 either way.
pub(super) async fn revoke(
    State(state): State<Arc<AuthState>>,
    headers: http::HeaderMap,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> http::StatusCode {
    let client_id = form.get("client_id").cloned().or_else(|| {
        let basic = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.strip_prefix("Basic ")?)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        Some(text.split_once(':')?.0.to_owned())
    });
    let Some(token) = form.get("token") else {
        return http::StatusCode::BAD_REQUEST;
    };
    let mut tokens = lock(&state.tokens);
    let family = tokens
        .refresh
        .get(token)
        .filter(|entry| Some(&entry.grant.client_id) == client_id.as_ref())
        .map(|entry| entry.grant.family);
    if let Some(family) = family {
        tokens.revoked_families.insert(family);
        state.counters.revocations.fetch_add(1, Ordering::SeqCst);
    }
    http::StatusCode::OK
}

pub(super) async fn jwks(State(state): State<Arc<AuthState>>) -> Json<serde_json::Value> {
    Json(state.jwks())
}

/// A fresh P-256 key for the user assertions this server issues.
pub(super) fn assertion_key_pair() -> aws_lc_rs::signature::EcdsaKeyPair {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let alg = &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 =
        aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("key generation");
    aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref()).expect("its own key")
}

pub(super) async fn register(
    State(state): State<Arc<AuthState>>,
    Json(request): Json<serde_json::Value>,
) -> Response {
    let redirect_ok = request["redirect_uris"].as_array().is_some_and(|uris| {
        !uris.is_empty()
            && uris
                .iter()
                .all(|u| u.as_str().is_some_and(|u| u.starts_with("http")))
    });
    if !redirect_ok {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_redirect_uri");
    }
    let refused = lock(&state.knobs).refuse_registration.clone();
    if let Some(code) = refused {
        return oauth_error(StatusCode::BAD_REQUEST, &code);
    }
    state.counters.registrations.fetch_add(1, Ordering::SeqCst);
    let method = request["token_endpoint_auth_method"]
        .as_str()
        .unwrap_or("client_secret_basic")
        .to_owned();
    let client_id = random_token("client");
    let secret = (method != "none").then(|| random_token("secret"));
    lock(&state.tokens)
        .clients
        .insert(client_id.clone(), secret.clone());
    let mut body = json!({
        "client_id": client_id,
        "token_endpoint_auth_method": method,
        "redirect_uris": request["redirect_uris"],
    });
    if let Some(secret) = secret {
        body["client_secret"] = json!(secret);
    }
    (StatusCode::CREATED, Json(body)).into_response()
}
