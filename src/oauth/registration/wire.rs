//! The bytes of a registration: the record shared through the store (so replicas and
//! restarts reuse one client), and the server's answer to a dynamic registration.

use super::*;

/// How long a shared registration record lives without being used again: 90 days.
pub(super) const REGISTRATION_TTL: std::time::Duration =
    std::time::Duration::from_secs(90 * 24 * 3600);

pub(super) fn record_name(cache_key: &str) -> String {
    let digest = crate::crypto::sha256(&[cache_key.as_bytes()]);
    format!("registration:{}", crate::crypto::hex(&digest))
}

pub(super) fn encode(registration: &ClientRegistration) -> Vec<u8> {
    json!({
        "client_id": registration.client_id,
        "client_secret": registration.client_secret.as_ref().map(Secret::expose),
        "auth_method": match registration.auth_method {
            ClientAuthMethod::ClientSecretBasic => "client_secret_basic",
            ClientAuthMethod::ClientSecretPost => "client_secret_post",
            _ => "none",
        },
        "issuer": registration.issuer,
        "redirect_uri": registration.redirect_uri.as_str(),
        "resource": registration.resource,
        "token_endpoint": registration.token_endpoint,
        "generation": registration.generation.0,
    })
    .to_string()
    .into_bytes()
}

pub(super) fn decode(bytes: &[u8]) -> Option<ClientRegistration> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let text = |name: &str| value.get(name)?.as_str().map(str::to_owned);
    Some(ClientRegistration {
        client_id: text("client_id")?,
        client_secret: text("client_secret").map(Secret::new),
        auth_method: match value.get("auth_method")?.as_str()? {
            "client_secret_basic" => ClientAuthMethod::ClientSecretBasic,
            "client_secret_post" => ClientAuthMethod::ClientSecretPost,
            _ => ClientAuthMethod::None,
        },
        issuer: text("issuer")?,
        redirect_uri: text("redirect_uri")?.parse().ok()?,
        resource: text("resource")?,
        token_endpoint: text("token_endpoint")?,
        source: RegistrationSource::Dynamic,
        generation: Generation(value.get("generation")?.as_u64()?),
    })
}

#[derive(Deserialize)]
pub(super) struct RegistrationResponse {
    client_id: String,
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default)]
    token_endpoint_auth_method: Option<String>,
}

/// A registration response (RFC 7591 §3.2.1): the client id, the secret and how the
/// client authenticates (the server's answer, else what was asked for).
pub(crate) fn parse_registration(
    body: &[u8],
    requested: &str,
) -> Result<(String, Option<Secret>, ClientAuthMethod), RegistrationError> {
    let registered: RegistrationResponse =
        serde_json::from_slice(body).map_err(|_| RegistrationError::InvalidResponse)?;
    let auth_method = match registered
        .token_endpoint_auth_method
        .as_deref()
        .unwrap_or(requested)
    {
        "client_secret_basic" => ClientAuthMethod::ClientSecretBasic,
        "client_secret_post" => ClientAuthMethod::ClientSecretPost,
        _ => ClientAuthMethod::None,
    };
    if auth_method != ClientAuthMethod::None && registered.client_secret.is_none() {
        return Err(RegistrationError::InvalidResponse);
    }
    Ok((
        registered.client_id,
        registered.client_secret.map(Secret::new),
        auth_method,
    ))
}
