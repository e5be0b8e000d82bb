//! No token ever reaches Debug, Display, error messages or tracing output.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{CLIENT_ID, Harness, storm};
use tower::{Layer, ServiceExt};
use tower_mcp_auth::testing::{Fault, ReqwestTransport, jsonrpc_request};
use tower_mcp_auth::{
    Error, OboExchanger, OboHeaderLayer, Principal, RefreshConfig, Secret, ServerBinding,
    UserAssertion, binding::ClientAuthMethod, obo::ClientAuth, obo::OboConfig, obo::OboGrant,
};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_in_debug_display_errors_or_traces() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let h = Harness::new(RefreshConfig::default()).await;
    let alice = Principal::new("acme", "alice");
    let mut secrets: Vec<String> = vec!["client-secret-value".into()];
    let mut texts: Vec<String> = Vec::new();

    // A refresh on a revoked token, then an invalid_grant, then an outage.
    let first = h.login(&alice).await;
    h.auth.revoke_access_tokens("alice");
    assert!(storm(&h, &alice, 16).await.iter().all(|r| r.is_ok()));
    let second = h.stored(&alice).await.unwrap();
    h.auth.revoke_access_tokens("alice");
    h.auth.fail_next(Fault::InvalidGrant, 1);
    let reauth = h.whoami(&alice).await.unwrap_err();
    h.login(&alice).await;
    h.expire(&alice).await;
    h.auth.fail_always(Fault::ServerError);
    let transient = h.whoami(&alice).await.unwrap_err();

    // On-Behalf-Of: an exchange, a forced re-exchange after a 401, a refused exchange.
    h.auth.heal();
    h.auth
        .register_client("gateway", Some("gateway-secret-value"));
    let assertion = h
        .auth
        .user_assertion("alice", "gateway", std::time::Duration::from_secs(600));
    secrets.push("gateway-secret-value".into());
    secrets.push(assertion.clone());
    let config = OboConfig::new(
        h.auth.token_endpoint().parse().unwrap(),
        "gateway",
        ClientAuth::SecretPost(Secret::new("gateway-secret-value")),
        OboGrant::token_exchange(),
    );
    let exchanger = OboExchanger::new(config.clone());
    let obo = OboHeaderLayer::new(exchanger.clone(), &h.mcp.url())
        .unwrap()
        .layer(ReqwestTransport::new());
    let call = |tenant: &str| {
        let mut request = jsonrpc_request(&h.mcp.url(), 1, "tools/list", serde_json::json!({}));
        request
            .extensions_mut()
            .insert(Principal::new(tenant, "alice"));
        request
            .extensions_mut()
            .insert(UserAssertion::new(assertion.as_str()));
        obo.clone().oneshot(request)
    };
    call("acme").await.unwrap();
    h.auth.revoke_access_tokens("alice");
    call("acme").await.unwrap();
    h.auth.fail_next(
        Fault::InteractionRequired {
            claims: "{}".into(),
        },
        1,
    );
    let refused = call("globex").await.unwrap_err();
    texts.push(format!(
        "{refused} {refused:?} {config:?} {exchanger:?} {obo:?}"
    ));
    texts.push(format!("{:?}", UserAssertion::new(assertion.as_str())));

    for tokens in [&first, &second, &h.stored(&alice).await.unwrap()] {
        secrets.push(tokens.access_token.expose().to_owned());
        secrets.extend(tokens.refresh_token.iter().map(|t| t.expose().to_owned()));
        texts.push(format!("{tokens:?}"));
        texts.push(format!(
            "{} {:?}",
            tokens.access_token, tokens.refresh_token
        ));
    }
    secrets.extend(h.mcp.seen_tokens());
    for error in [&reauth, &transient] {
        let typed = Error::find(error.as_ref()).expect("typed");
        texts.push(format!("{error} {error:?} {typed} {typed:?}"));
    }
    let binding = ServerBinding::public_client(&h.mcp.url(), &h.auth.token_endpoint(), CLIENT_ID)
        .unwrap()
        .with_client_secret(
            Secret::new("client-secret-value"),
            ClientAuthMethod::ClientSecretPost,
        );
    texts.push(format!("{binding:?} {:?}", h.coordinator));

    let traces = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        traces.contains("refresh"),
        "tracing captured the refresh path:\n{traces}"
    );
    texts.push(traces);
    assert!(secrets.len() > 6);
    for secret in &secrets {
        for text in &texts {
            assert!(
                !text.contains(secret.as_str()),
                "a secret leaked into: {text}"
            );
        }
    }
}
