//! A pending flow as a shared record (JSON), for flow stores shared by replicas.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use url::Url;

use crate::binding::{ClientAuthMethod, ServerBinding};
use crate::key::{AuthKey, Principal};
use crate::oauth::flow::{AuthorizationRequest, FlowOutcome, PendingFlow};
use crate::token::{Generation, Secret};

/// Where a shared flow stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RecordStatus {
    Open,
    Claimed,
    Ended(FlowOutcome),
}

/// The record of the flow of `state`.
pub(crate) fn flow_name(state: &str) -> String {
    format!("flow:{}", hex(&crate::crypto::sha256(&[state.as_bytes()])))
}

/// The record naming the open flow of `key`.
pub(crate) fn key_name(key: &AuthKey) -> String {
    let principal = key.principal();
    let digest = crate::crypto::sha256(&[
        &(principal.tenant().len() as u64).to_be_bytes(),
        principal.tenant().as_bytes(),
        &(principal.subject().len() as u64).to_be_bytes(),
        principal.subject().as_bytes(),
        key.binding().as_bytes(),
    ]);
    format!("flowkey:{}", hex(&digest))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn method_name(method: ClientAuthMethod) -> &'static str {
    match method {
        ClientAuthMethod::ClientSecretBasic => "client_secret_basic",
        ClientAuthMethod::ClientSecretPost => "client_secret_post",
        _ => "none",
    }
}

fn binding_json(binding: &ServerBinding) -> Value {
    json!({
        "resource": binding.resource().as_str(),
        "token_endpoint": binding.token_endpoint().as_str(),
        "client_id": binding.client_id(),
        "client_secret": binding.client_secret().map(Secret::expose),
        "auth_method": method_name(binding.auth_method()),
        "issuer": binding.issuer(),
        "send_resource": binding.sends_resource(),
    })
}

fn binding_from(value: &Value) -> Option<ServerBinding> {
    let text = |name: &str| value.get(name)?.as_str();
    let mut binding = ServerBinding::public_client(
        text("resource")?,
        text("token_endpoint")?,
        text("client_id")?,
    )
    .ok()?
    .with_resource_parameter(value.get("send_resource")?.as_bool()?);
    if let Some(issuer) = text("issuer") {
        binding = binding.with_issuer(issuer);
    }
    if let Some(secret) = text("client_secret") {
        let method = match text("auth_method")? {
            "client_secret_basic" => ClientAuthMethod::ClientSecretBasic,
            "client_secret_post" => ClientAuthMethod::ClientSecretPost,
            _ => ClientAuthMethod::None,
        };
        binding = binding.with_client_secret(Secret::new(secret), method);
    }
    Some(binding)
}

fn status_json(status: &RecordStatus) -> Value {
    match status {
        RecordStatus::Open => json!({"status": "open"}),
        RecordStatus::Claimed => json!({"status": "claimed"}),
        RecordStatus::Ended(FlowOutcome::Completed(generation)) => {
            json!({"status": "completed", "generation": generation.0})
        }
        RecordStatus::Ended(FlowOutcome::Failed(reason)) => {
            json!({"status": "failed", "reason": reason})
        }
        RecordStatus::Ended(FlowOutcome::ClientRejected(code)) => {
            json!({"status": "client_rejected", "reason": code})
        }
    }
}

fn status_from(value: &Value) -> Option<RecordStatus> {
    let reason = || {
        value
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    Some(match value.get("status")?.as_str()? {
        "open" => RecordStatus::Open,
        "claimed" => RecordStatus::Claimed,
        "completed" => RecordStatus::Ended(FlowOutcome::Completed(Generation(
            value.get("generation")?.as_u64()?,
        ))),
        "failed" => RecordStatus::Ended(FlowOutcome::Failed(reason())),
        "client_rejected" => RecordStatus::Ended(FlowOutcome::ClientRejected(reason())),
        _ => return None,
    })
}

/// The record of a flow (its key, request, secrets and status), as bytes.
pub(crate) fn encode(key: &AuthKey, pending: &PendingFlow, status: &RecordStatus) -> Vec<u8> {
    let request = &pending.request;
    json!({
        "tenant": key.principal().tenant(),
        "subject": key.principal().subject(),
        "binding": binding_json(&request.binding),
        "authorization_endpoint": request.authorization_endpoint.as_str(),
        "redirect_uri": request.redirect_uri.as_str(),
        "scopes": request.scopes,
        "require_iss": request.require_iss,
        "start_endpoint": request.start_endpoint.as_ref().map(Url::as_str),
        "authorization_url": pending.authorization_url.as_str(),
        "start_url": pending.start_url.as_ref().map(Url::as_str),
        "state": pending.state.expose(),
        "pkce_verifier": pending.pkce_verifier.expose(),
        "expires_at_ms": millis(pending.expires_at),
        "outcome": status_json(status),
    })
    .to_string()
    .into_bytes()
}

/// A record back: key, pending flow and status; `None` if malformed.
pub(crate) fn decode(bytes: &[u8]) -> Option<(AuthKey, PendingFlow, RecordStatus)> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    let text = |name: &str| value.get(name)?.as_str();
    let url = |name: &str| text(name).and_then(|u| Url::parse(u).ok());
    let binding = binding_from(value.get("binding")?)?;
    let key = AuthKey::new(
        &Principal::new(text("tenant")?, text("subject")?),
        binding.id(),
    );
    let mut request = AuthorizationRequest::new(
        binding,
        url("authorization_endpoint")?,
        url("redirect_uri")?,
    )
    .with_scopes(
        value
            .get("scopes")?
            .as_array()?
            .iter()
            .filter_map(Value::as_str),
    )
    .with_required_iss(value.get("require_iss")?.as_bool()?);
    if let Some(start) = url("start_endpoint") {
        request = request.with_start_endpoint(start);
    }
    let pending = PendingFlow {
        request,
        authorization_url: url("authorization_url")?,
        start_url: url("start_url"),
        state: Secret::new(text("state")?),
        pkce_verifier: Secret::new(text("pkce_verifier")?),
        expires_at: UNIX_EPOCH
            .checked_add(Duration::from_millis(value.get("expires_at_ms")?.as_u64()?))?,
    };
    let status = status_from(value.get("outcome")?)?;
    Some((key, pending, status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_with_its_secrets_and_status() {
        let binding = ServerBinding::public_client(
            "https://mcp.example/mcp",
            "https://as.example/token",
            "c",
        )
        .unwrap()
        .with_issuer("https://as.example")
        .with_client_secret(Secret::new("s"), ClientAuthMethod::ClientSecretPost);
        let key = AuthKey::new(&Principal::new("acme", "alice"), binding.id());
        let request = AuthorizationRequest::new(
            binding,
            "https://as.example/authorize".parse().unwrap(),
            "https://app.example/cb".parse().unwrap(),
        )
        .with_scopes(["a", "b"])
        .with_required_iss(true);
        let pending = PendingFlow {
            authorization_url: "https://as.example/authorize?state=x".parse().unwrap(),
            start_url: None,
            state: Secret::new("x"),
            pkce_verifier: Secret::new("v"),
            expires_at: UNIX_EPOCH + Duration::from_millis(1_900_000_000_123),
            request,
        };
        for status in [
            RecordStatus::Open,
            RecordStatus::Claimed,
            RecordStatus::Ended(FlowOutcome::Completed(Generation(7))),
            RecordStatus::Ended(FlowOutcome::Failed("denied".into())),
        ] {
            let (back_key, back, back_status) = decode(&encode(&key, &pending, &status)).unwrap();
            assert_eq!(back_key, key, "same key: same binding id");
            assert_eq!(back.pkce_verifier.expose(), "v");
            assert_eq!(back.request.binding.client_secret().unwrap().expose(), "s");
            assert_eq!(back.request.scopes, ["a", "b"]);
            assert!(back.request.require_iss);
            assert_eq!(back.expires_at, pending.expires_at);
            assert_eq!(back_status, status);
        }
        assert!(decode(b"{}").is_none());
    }
}
