//! The interactive path over loopback, piece by piece: 401 -> discovery -> registration
//! -> PKCE flow persisted PENDING -> browser -> callback -> code exchange -> stored
//! credentials -> silent refresh layer uses them.

mod common;

use std::sync::Arc;

use serde_json::json;
use tower::{Layer, ServiceExt};
use tower_mcp_auth::store::{CredentialStore, MemoryStore};
use tower_mcp_auth::testing::{
    ReqwestTransport, TestAuthServer, TestMcpServer, jsonrpc_request, read_jsonrpc,
};
use tower_mcp_auth::{
    AuthHttpClient, AuthKey, Principal, RefreshCoordinator, ServerBinding, SilentRefreshLayer,
    UrlPolicy, oauth::AuthorizationCompleter, oauth::AuthorizationRequest, oauth::BearerChallenge,
    oauth::CallbackError, oauth::CallbackParams, oauth::ClientConfig, oauth::FlowOutcome,
    oauth::FlowStore, oauth::Registrar,
};
use url::Url;

struct World {
    auth: TestAuthServer,
    mcp: TestMcpServer,
    store: Arc<MemoryStore>,
    flows: FlowStore,
    completer: AuthorizationCompleter,
    binding: ServerBinding,
    authorize: Url,
}

async fn world() -> World {
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let policy = UrlPolicy::default().allow_loopback_http();
    let http = AuthHttpClient::reqwest();

    let unauthenticated = ReqwestTransport::new()
        .oneshot(jsonrpc_request(&mcp.url(), 1, "tools/list", json!({})))
        .await
        .unwrap();
    let challenge = BearerChallenge::from_headers(unauthenticated.headers()).unwrap();
    let metadata = common::discover_authorization_server(&mcp, Some(&challenge)).await;
    let redirect: Url = "http://127.0.0.1:1/oauth/callback".parse().unwrap();
    let client = Registrar::new(http.clone(), policy)
        .client_for(
            "acme",
            &metadata,
            &ClientConfig::new(redirect, mcp.url(), "flow test"),
        )
        .await
        .unwrap();
    let store = Arc::new(MemoryStore::new());
    let flows = FlowStore::new();
    World {
        completer: AuthorizationCompleter::new(flows.clone(), store.clone(), http),
        binding: client.binding().unwrap(),
        authorize: metadata
            .authorization_endpoint
            .as_deref()
            .unwrap()
            .parse()
            .unwrap(),
        auth,
        mcp,
        store,
        flows,
    }
}

/// The browser: follows the authorization URL to the redirect back, returns its query.
async fn browser(url: &Url) -> String {
    let http = tower_mcp_auth::client::ReqwestService::builder()
        .expect("TLS")
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = http.get(url.as_str()).send().await.unwrap();
    assert_eq!(response.status(), 302);
    let location: Url = response.headers()["location"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    location.query().unwrap_or_default().to_owned()
}

fn alice() -> Principal {
    Principal::new("acme", "alice")
}

impl World {
    fn request(&self) -> AuthorizationRequest {
        AuthorizationRequest::new(
            self.binding.clone(),
            self.authorize.clone(),
            "http://127.0.0.1:1/oauth/callback".parse().unwrap(),
        )
        .with_scopes(["tools"])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_path_ends_in_stored_credentials_the_layer_uses() {
    let w = world().await;
    let key = AuthKey::new(&alice(), w.binding.id());
    let flow = w.flows.start_or_join(&key, w.request()).await;
    let query = browser(&flow.pending().authorization_url).await;

    let stored = w
        .completer
        .complete(&CallbackParams::from_query(&query))
        .await
        .unwrap();
    assert_eq!(
        flow.outcome().await,
        Some(FlowOutcome::Completed(stored.generation))
    );
    assert_eq!(
        w.store.load(&key).await.unwrap().unwrap().generation,
        stored.generation
    );
    assert!(stored.refresh_token.is_some());

    // A duplicate callback exchanges nothing, changes nothing, and says how it ended.
    let again = w
        .completer
        .complete(&CallbackParams::from_query(&query))
        .await;
    assert!(
        matches!(again, Err(CallbackError::AlreadyCompleted(g)) if g == stored.generation),
        "{again:?}"
    );
    assert_eq!(w.auth.stats().code_exchanges, 1);
    assert_eq!(
        w.store.load(&key).await.unwrap().unwrap().generation,
        stored.generation
    );

    // The silent refresh layer picks the credentials up, and refreshes them with the
    // registered client when the server revokes the access token.
    let client =
        SilentRefreshLayer::new(RefreshCoordinator::new(w.store.clone()), w.binding.clone())
            .layer(ReqwestTransport::new());
    w.auth.revoke_access_tokens("alice");
    let mut request = jsonrpc_request(
        &w.mcp.url(),
        1,
        "tools/call",
        json!({"name": "whoami", "arguments": {}}),
    );
    request.extensions_mut().insert(alice());
    let response = client.oneshot(request).await.unwrap();
    assert_eq!(
        read_jsonrpc(&response).unwrap()["result"]["content"][0]["text"],
        "alice"
    );
    assert_eq!(w.auth.stats().refresh_successes, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_state_and_mixed_up_issuers_change_nothing() {
    let w = world().await;
    let key = AuthKey::new(&alice(), w.binding.id());
    let flow = w.flows.start_or_join(&key, w.request()).await;
    let query = browser(&flow.pending().authorization_url).await;
    let real = CallbackParams::from_query(&query);

    let mut forged = real.clone();
    forged.state = Some(tower_mcp_auth::Secret::new("forged"));
    assert!(matches!(
        w.completer.complete(&forged).await,
        Err(CallbackError::UnknownState)
    ));
    assert!(w.store.load(&key).await.unwrap().is_none());

    let mut mixed_up = real.clone();
    mixed_up.iss = Some("https://attacker.example.com".into());
    assert!(matches!(
        w.completer.complete(&mixed_up).await,
        Err(CallbackError::IssuerMismatch { .. })
    ));
    assert!(matches!(flow.outcome().await, Some(FlowOutcome::Failed(_))));
    assert_eq!(w.auth.stats().code_exchanges, 0, "no code was exchanged");
    assert!(w.store.load(&key).await.unwrap().is_none());
}
