//! Client registration against the loopback authorization server.

use std::sync::Arc;

use serde_json::json;
use tower_mcp_auth::testing::TestAuthServer;
use tower_mcp_auth::{
    AuthHttpClient, Secret, UrlPolicy, binding::ClientAuthMethod,
    oauth::AuthorizationServerMetadata, oauth::ClientConfig, oauth::Discovery,
    oauth::PreRegisteredClient, oauth::Registrar, oauth::RegistrationSource,
};
use url::Url;

fn policy() -> UrlPolicy {
    UrlPolicy::default().allow_loopback_http()
}

async fn metadata(auth: &TestAuthServer) -> Arc<AuthorizationServerMetadata> {
    let issuer: Url = auth.issuer().parse().unwrap();
    Discovery::new(AuthHttpClient::reqwest(), policy())
        .authorization_server(&issuer)
        .await
        .unwrap()
}

fn config(redirect: &str) -> ClientConfig {
    ClientConfig::new(
        redirect.parse().unwrap(),
        "http://127.0.0.1:1/mcp",
        "tower-mcp-auth tests",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamic_registration_is_reused_while_it_fits() {
    let auth = TestAuthServer::start().await.unwrap();
    let metadata = metadata(&auth).await;
    let registrar = Registrar::new(AuthHttpClient::reqwest(), policy());
    let callback = config("http://127.0.0.1:9000/callback");

    let first = registrar
        .client_for("acme", &metadata, &callback)
        .await
        .unwrap();
    assert_eq!(first.source, RegistrationSource::Dynamic);
    assert_eq!(
        first.auth_method,
        ClientAuthMethod::None,
        "public client with PKCE when allowed"
    );
    let again = registrar
        .client_for("acme", &metadata, &callback)
        .await
        .unwrap();
    assert_eq!(again.client_id, first.client_id);
    assert_eq!(auth.stats().registrations, 1);

    // The same loopback redirect URI on another port is the same client (RFC 8252
    // §7.3: the server accepts any port there; a native app listens where it can).
    let other_port = registrar
        .client_for("acme", &metadata, &config("http://127.0.0.1:9001/callback"))
        .await
        .unwrap();
    assert_eq!(other_port.client_id, first.client_id);
    assert_eq!(auth.stats().registrations, 1);

    // Another redirect URI, or another tenant scope: register anew.
    let moved = registrar
        .client_for(
            "acme",
            &metadata,
            &config("http://127.0.0.1:9000/elsewhere"),
        )
        .await
        .unwrap();
    assert_ne!(moved.client_id, first.client_id);
    registrar
        .client_for("globex", &metadata, &callback)
        .await
        .unwrap();
    assert_eq!(auth.stats().registrations, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_issuer_never_reuses_a_registration() {
    let (a, b) = (
        TestAuthServer::start().await.unwrap(),
        TestAuthServer::start().await.unwrap(),
    );
    let registrar = Registrar::new(AuthHttpClient::reqwest(), policy());
    let callback = config("http://127.0.0.1:9000/callback");
    let at_a = registrar
        .client_for("acme", &*metadata(&a).await, &callback)
        .await
        .unwrap();
    let at_b = registrar
        .client_for("acme", &*metadata(&b).await, &callback)
        .await
        .unwrap();
    assert_ne!(at_a.client_id, at_b.client_id);
    assert_eq!((a.stats().registrations, b.stats().registrations), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_client_is_forgotten_for_that_generation_only() {
    let auth = TestAuthServer::start().await.unwrap();
    let metadata = metadata(&auth).await;
    let registrar = Registrar::new(AuthHttpClient::reqwest(), policy());
    let callback = config("http://127.0.0.1:9000/callback");
    let stale = registrar
        .client_for("acme", &metadata, &callback)
        .await
        .unwrap();
    auth.forget_client(&stale.client_id);

    assert!(registrar.rejected("acme", &stale).await);
    let fresh = registrar
        .client_for("acme", &metadata, &callback)
        .await
        .unwrap();
    assert_ne!(fresh.client_id, stale.client_id);
    // A late rejection of the stale registration must not delete the fresh one.
    assert!(!registrar.rejected("acme", &stale).await);
    assert_eq!(
        registrar
            .client_for("acme", &metadata, &callback)
            .await
            .unwrap()
            .client_id,
        fresh.client_id
    );
    assert_eq!(auth.stats().registrations, 2);
}

#[tokio::test]
async fn pre_registered_then_metadata_document_come_first() {
    let registrar = Registrar::new(AuthHttpClient::reqwest(), policy());
    let metadata: AuthorizationServerMetadata = serde_json::from_value(json!({
        "issuer": "https://auth.example.com/",
        "token_endpoint": "https://auth.example.com/token",
        "registration_endpoint": "https://auth.example.com/register",
        "client_id_metadata_document_supported": true,
    }))
    .unwrap();
    let cimd: Url = "https://app.example.com/oauth/client.json".parse().unwrap();
    let callback = config("https://app.example.com/callback").with_metadata_document(cimd.clone());

    let via_document = registrar
        .client_for("acme", &metadata, &callback)
        .await
        .unwrap();
    assert_eq!(
        (via_document.source, via_document.client_id.as_str()),
        (RegistrationSource::MetadataDocument, cimd.as_str())
    );

    let pre = callback.clone().with_pre_registered(
        PreRegisteredClient::new("https://auth.example.com/", "static-id")
            .with_secret(Secret::new("s"), ClientAuthMethod::ClientSecretPost),
    );
    let static_client = registrar.client_for("acme", &metadata, &pre).await.unwrap();
    assert_eq!(
        (static_client.source, static_client.client_id.as_str()),
        (RegistrationSource::PreRegistered, "static-id")
    );
    assert!(
        !registrar.rejected("acme", &static_client).await,
        "pre-registered clients are never deleted"
    );
}
