//! The `metrics` feature: the layers' counters reach an installed recorder (here the
//! Prometheus exporter's), with stable names and no identity in any label.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tower::{Layer, ServiceExt};
use tower_mcp_auth::store::{CredentialStore, MemoryStore};
use tower_mcp_auth::testing::{
    HeadlessBrowser, ReqwestTransport, TestAuthServer, TestMcpServer, TestUpstream, jsonrpc_request,
};
use tower_mcp_auth::{
    AuthKey, Authorizer, BreakerConfig, CircuitBreakerLayer, OAuthRetryLayer, OboExchanger,
    OboHeaderLayer, Principal, RefreshCoordinator, Secret, ServerBinding, SilentRefreshLayer,
    UrlPolicy, UserAssertion, metrics as names, obo::ClientAuth, obo::OboConfig, obo::OboGrant,
};

/// The value of the series `series` (name plus labels, as Prometheus renders it).
fn value(rendered: &str, series: &str) -> f64 {
    rendered
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn refresh_storm(handle: &PrometheusHandle) {
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let binding = ServerBinding::public_client(&mcp.url(), &auth.token_endpoint(), "metrics")
        .unwrap()
        .with_issuer(auth.issuer());
    let store = Arc::new(MemoryStore::new());
    let alice = Principal::new("acme-tenant", "alice-subject");
    store
        .compare_and_swap(
            &AuthKey::new(&alice, binding.id()),
            None,
            auth.issue("metrics", "alice-subject", None),
        )
        .await
        .unwrap();
    let client = SilentRefreshLayer::new(RefreshCoordinator::new(store), binding)
        .layer(ReqwestTransport::new());
    auth.revoke_access_tokens("alice-subject");
    let calls = (0..16).map(|id| {
        let mut request = jsonrpc_request(&mcp.url(), id, "tools/list", json!({}));
        request.extensions_mut().insert(alice.clone());
        client.clone().oneshot(request)
    });
    for response in futures::future::join_all(calls).await {
        assert_eq!(response.unwrap().status(), 200);
    }
    let rendered = handle.render();
    assert_eq!(
        value(&rendered, names::REFRESH_REDEMPTIONS),
        1.0,
        "{rendered}"
    );
    assert_eq!(
        value(
            &rendered,
            &format!("{}{{outcome=\"refreshed\"}}", names::REFRESH_OUTCOMES)
        ),
        1.0
    );
    assert!(value(&rendered, names::REFRESH_BLOCKED_WAITS) >= 1.0);
}

async fn login(handle: &PrometheusHandle) {
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let store = Arc::new(MemoryStore::new());
    let authorizer = Authorizer::builder(
        mcp.url(),
        store.clone(),
        "http://127.0.0.1:3000/oauth/callback".parse().unwrap(),
    )
    .url_policy(UrlPolicy::default().allow_loopback_http())
    .build()
    .unwrap();
    auth.set_consenting_user("bob-subject");
    let client = OAuthRetryLayer::wait(
        authorizer.clone(),
        HeadlessBrowser::new(authorizer.completer()),
    )
    .layer(
        SilentRefreshLayer::new(RefreshCoordinator::new(store), authorizer.bindings())
            .layer(ReqwestTransport::new()),
    );
    let mut request = jsonrpc_request(&mcp.url(), 1, "tools/list", json!({}));
    request
        .extensions_mut()
        .insert(Principal::new("acme-tenant", "bob-subject"));
    assert_eq!(client.oneshot(request).await.unwrap().status(), 200);
    let rendered = handle.render();
    assert_eq!(value(&rendered, names::FLOWS_STARTED), 1.0, "{rendered}");
    // The callback's task counts its outcome after it wakes the waiting request: on a
    // busy machine the request's answer can come first.
    let completed = format!("{}{{outcome=\"completed\"}}", names::FLOWS_COMPLETED);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while value(&handle.render(), &completed) == 0.0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(value(&handle.render(), &completed), 1.0);
}

async fn obo(handle: &PrometheusHandle) {
    let auth = TestAuthServer::start().await.unwrap();
    auth.register_client("gateway", Some("gateway-secret"));
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let exchanger = OboExchanger::new(OboConfig::new(
        auth.token_endpoint().parse().unwrap(),
        "gateway",
        ClientAuth::SecretBasic(Secret::new("gateway-secret")),
        OboGrant::EntraOnBehalfOf,
    ));
    let client = OboHeaderLayer::new(exchanger, &mcp.url())
        .unwrap()
        .layer(ReqwestTransport::new());
    let assertion = UserAssertion::new(auth.user_assertion(
        "carol-subject",
        "gateway",
        Duration::from_secs(3600),
    ));
    for id in 0..3 {
        let mut request = jsonrpc_request(&mcp.url(), id, "tools/list", json!({}));
        request
            .extensions_mut()
            .insert(Principal::new("acme-tenant", "carol-subject"));
        request.extensions_mut().insert(assertion.clone());
        assert_eq!(client.clone().oneshot(request).await.unwrap().status(), 200);
    }
    let rendered = handle.render();
    assert_eq!(value(&rendered, names::OBO_EXCHANGES), 1.0, "{rendered}");
    assert_eq!(value(&rendered, names::OBO_CACHE_HITS), 2.0);
}

async fn breaker(handle: &PrometheusHandle) {
    let upstream = TestUpstream::start().await.unwrap();
    upstream.set_status(503);
    let config = BreakerConfig::default()
        .with_consecutive_failures(2)
        .without_failure_rate()
        .with_jitter(0.0)
        .with_open_backoff(Duration::from_secs(30), Duration::from_secs(30));
    let client = CircuitBreakerLayer::new(config).layer(ReqwestTransport::new());
    for _ in 0..5 {
        let request = http::Request::get(upstream.url())
            .body(reqwest::Body::from(""))
            .unwrap();
        let _ = client.clone().oneshot(request).await;
    }
    let rendered = handle.render();
    assert_eq!(
        value(
            &rendered,
            &format!("{}{{to=\"open\"}}", names::BREAKER_TRANSITIONS)
        ),
        1.0,
        "{rendered}"
    );
    assert_eq!(
        value(
            &rendered,
            &format!("{}{{reason=\"open\"}}", names::BREAKER_REFUSALS)
        ),
        3.0
    );
}

/// One test: the recorder is process-global.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_reach_the_recorder_without_identities() {
    let handle = PrometheusBuilder::new().install_recorder().unwrap();
    names::describe();
    refresh_storm(&handle).await;
    login(&handle).await;
    obo(&handle).await;
    breaker(&handle).await;
    let rendered = handle.render();
    for identity in [
        "acme-tenant",
        "alice-subject",
        "bob-subject",
        "carol-subject",
        "127.0.0.1",
    ] {
        assert!(
            !rendered.contains(identity),
            "{identity} in metrics:\n{rendered}"
        );
    }
    // Described, so Prometheus shows help texts.
    assert!(
        rendered.contains("# HELP mcp_auth_refresh_redemptions_total"),
        "{rendered}"
    );
}
