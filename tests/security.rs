//! Regression tests for the security review (issue #10): each reproducer of a defect
//! the review found, over real loopback servers where a server is involved.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use serde_json::json;
use tower::{Layer, ServiceExt};
use tower_mcp_auth::store::{CredentialStore, MemoryStore};
use tower_mcp_auth::testing::{
    HeadlessBrowser, ReqwestTransport, TestAuthServer, TestMcpServer, TestUpstream, jsonrpc_request,
};
use tower_mcp_auth::{
    AuthHttpClient, AuthKey, Authorizer, BreakerConfig, CircuitBreakerLayer, Error,
    OAuthRetryLayer, OboExchanger, OboHeaderLayer, Principal, RefreshConfig, RefreshCoordinator,
    Secret, ServerBinding, SilentRefreshLayer, TokenSet, UrlPolicy, UserAssertion,
    binding::ClientAuthMethod, error::UrlRefused, oauth::AuthorizationCompleter,
    oauth::AuthorizationRequest, oauth::CallbackError, oauth::CallbackParams, oauth::Discovery,
    oauth::DiscoveryError, oauth::FlowStore, oauth::PreRegisteredClient, obo::ClientAuth,
    obo::OboConfig, obo::OboError, obo::OboGrant, refresh::MAX_LIFETIME,
};

const YEAR_AND_A_DAY: Duration = Duration::from_secs(366 * 24 * 3600);

/// An authorizer for `server` on loopback http, its callback never reached.
fn builder(server: String, store: Arc<MemoryStore>) -> tower_mcp_auth::oauth::AuthorizerBuilder {
    Authorizer::builder(server, store, "http://127.0.0.1:1/cb".parse().unwrap())
        .url_policy(loopback())
}

fn loopback() -> UrlPolicy {
    UrlPolicy::default().allow_loopback_http()
}

/// A gateway's OBO exchanger at `auth` (jwt-bearer, client `gateway`).
fn gateway_exchanger(auth: &TestAuthServer) -> OboExchanger {
    auth.register_client("gateway", Some("s"));
    OboExchanger::new(OboConfig::new(
        auth.token_endpoint().parse().unwrap(),
        "gateway",
        ClientAuth::SecretBasic(Secret::new("s")),
        OboGrant::JwtBearer,
    ))
}

/// An unsigned JWT with these claims: the layers read `exp` before any exchange.
fn jwt(claims: serde_json::Value) -> String {
    format!(
        "eyJhbGciOiJub25lIn0.{}.c2ln",
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

// --- High 1: a hostile `exp` in an incoming user assertion --------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assertion_with_an_absurd_exp_is_refused_without_an_exchange() {
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let exchanger = gateway_exchanger(&auth);
    let client = OboHeaderLayer::new(exchanger.clone(), &mcp.url())
        .unwrap()
        .layer(ReqwestTransport::new());
    for exp in [
        json!(9_223_372_036_854_775_808u64), // 2^63: SystemTime overflowed here
        json!(u64::MAX),
        json!(-1),
        json!(1e300),
    ] {
        let mut request = jsonrpc_request(&mcp.url(), 1, "tools/list", json!({}));
        request
            .extensions_mut()
            .insert(Principal::new("acme", "eve"));
        request
            .extensions_mut()
            .insert(UserAssertion::new(jwt(json!({"sub": "eve", "exp": exp}))));
        let error = client.clone().oneshot(request).await.unwrap_err();
        assert!(
            matches!(
                Error::find(&*error),
                Some(Error::Obo(OboError::InvalidAssertion))
            ),
            "exp = {exp}: {error}"
        );
    }
    assert_eq!(exchanger.stats().exchanges, 0);
    assert_eq!(auth.stats().obo_exchanges, 0);
    assert_eq!(mcp.stats().requests, 0, "nothing was sent upstream");
}

// --- High 2: a huge `expires_in` from an authorization server -----------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_expires_in_on_refresh_is_clamped_and_the_rotated_token_kept() {
    let h = common::Harness::new(RefreshConfig::default()).await;
    let alice = Principal::new("acme", "alice");
    h.login(&alice).await;
    h.expire(&alice).await;
    // u64::MAX seconds: the redemption task panicked after the server rotated.
    h.auth
        .set_access_token_lifetime(Duration::from_secs(u64::MAX));
    for _ in 0..3 {
        h.whoami(&alice).await.unwrap();
    }
    let stored = h.store.load(&h.key(&alice)).await.unwrap().unwrap();
    let lifetime = stored
        .expires_at
        .unwrap()
        .duration_since(stored.obtained_at)
        .unwrap();
    assert_eq!(lifetime, MAX_LIFETIME, "clamped to a year");
    assert_eq!(h.auth.stats().refresh_successes, 1, "one redemption");
    assert_eq!(h.auth.stats().invalid_grants, 0);
    assert_eq!(h.auth.stats().reuse_detected, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_expires_in_on_the_code_exchange_completes_the_flow() {
    let auth = TestAuthServer::start().await.unwrap();
    auth.set_access_token_lifetime(Duration::from_secs(u64::MAX));
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let store = Arc::new(MemoryStore::new());
    let authorizer = builder(mcp.url(), store.clone()).build().unwrap();
    let client = OAuthRetryLayer::wait(
        authorizer.clone(),
        HeadlessBrowser::new(authorizer.completer()),
    )
    .with_wait_timeout(Duration::from_secs(10))
    .layer(
        SilentRefreshLayer::new(RefreshCoordinator::new(store), authorizer.bindings())
            .layer(ReqwestTransport::new()),
    );
    let mut request = jsonrpc_request(&mcp.url(), 1, "tools/list", json!({}));
    request
        .extensions_mut()
        .insert(Principal::new("acme", "bob"));
    let response = client.oneshot(request).await.unwrap();
    assert!(response.status().is_success());
    assert_eq!(auth.stats().code_exchanges, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_expires_in_on_obo_is_cached_once() {
    let auth = TestAuthServer::start().await.unwrap();
    auth.set_access_token_lifetime(Duration::from_secs(u64::MAX));
    let exchanger = gateway_exchanger(&auth);
    let principal = Principal::new("acme", "carol");
    let assertion =
        UserAssertion::new(auth.user_assertion("carol", "gateway", Duration::from_secs(3600)));
    for _ in 0..5 {
        exchanger.token(&principal, &assertion).await.unwrap();
    }
    assert_eq!(exchanger.stats().exchanges, 1, "cached, not re-exchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_configured_caps_and_retry_after_never_panic() {
    // The breaker: a Duration::MAX cap and Retry-After: u64::MAX.
    let upstream = TestUpstream::start().await.unwrap();
    upstream.set_status(429);
    upstream.set_retry_after(u64::MAX);
    let breaker = CircuitBreakerLayer::new(
        BreakerConfig::default().with_open_backoff(Duration::from_secs(1), Duration::MAX),
    )
    .layer(ReqwestTransport::new());
    let request = || {
        http::Request::get(upstream.url())
            .body(reqwest::Body::from(Bytes::new()))
            .unwrap()
    };
    let first = breaker.clone().oneshot(request()).await.unwrap();
    assert_eq!(first.status(), 429);
    let throttled = breaker.clone().oneshot(request()).await.unwrap_err();
    match Error::find(&*throttled) {
        Some(Error::CircuitOpen { retry_after, .. }) => assert!(*retry_after <= MAX_LIFETIME),
        other => panic!("{other:?}"),
    }

    // The refresh cooldown: a Duration::MAX cap and Retry-After: u64::MAX.
    let h = common::Harness::new(
        RefreshConfig::default().with_cooldown(Duration::from_secs(1), Duration::MAX),
    )
    .await;
    let alice = Principal::new("acme", "alice");
    h.login(&alice).await;
    h.expire(&alice).await;
    h.auth
        .fail_always(tower_mcp_auth::testing::Fault::TooManyRequests {
            retry_after_secs: u64::MAX,
        });
    for _ in 0..3 {
        let error = h.whoami(&alice).await.unwrap_err();
        assert!(matches!(
            Error::find(&*error),
            Some(Error::Transient { .. })
        ));
    }
    assert_eq!(
        h.auth.stats().refresh_requests,
        1,
        "one attempt, then cooled down"
    );
}

// --- High 3: pre-registered secrets only to their issuer ----------------------------

struct HostileWorld {
    attacker: TestAuthServer,
    mcp: TestMcpServer,
    store: Arc<MemoryStore>,
}

/// An MCP server whose resource metadata names an authorization server the operator
/// never configured (the attacker's).
async fn hostile_world() -> HostileWorld {
    let attacker = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&attacker).await.unwrap();
    HostileWorld {
        attacker,
        mcp,
        store: Arc::new(MemoryStore::new()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_registered_secret_never_reaches_another_issuer() {
    let w = hostile_world().await;
    let authorizer = builder(w.mcp.url(), w.store.clone())
        .pre_registered(
            PreRegisteredClient::new("https://auth.example.com", "static-id").with_secret(
                Secret::new("operator-secret"),
                ClientAuthMethod::ClientSecretBasic,
            ),
        )
        .build()
        .unwrap();
    let client = OAuthRetryLayer::wait(
        authorizer.clone(),
        HeadlessBrowser::new(authorizer.completer()),
    )
    .layer(
        SilentRefreshLayer::new(
            RefreshCoordinator::new(w.store.clone()),
            authorizer.bindings(),
        )
        .layer(ReqwestTransport::new()),
    );
    let mut request = jsonrpc_request(&w.mcp.url(), 1, "tools/list", json!({}));
    request
        .extensions_mut()
        .insert(Principal::new("acme", "dave"));
    // The flow runs against the attacker's server with a dynamic registration...
    client.oneshot(request).await.unwrap();
    let recorded = w.attacker.recorded_requests();
    assert!(!recorded.is_empty());
    // ...and the operator's client id and secret were never sent there.
    for request in recorded {
        assert_ne!(request.client_id.as_deref(), Some("static-id"));
    }
    assert_eq!(w.attacker.stats().registrations, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_token_endpoint_refuses_a_different_one() {
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let authorizer = builder(mcp.url(), Arc::new(MemoryStore::new()))
        .pre_registered(
            PreRegisteredClient::new(auth.issuer(), "static-id")
                .with_secret(Secret::new("s"), ClientAuthMethod::ClientSecretPost)
                .with_token_endpoint("https://elsewhere.example.com/token".parse().unwrap()),
        )
        .build()
        .unwrap();
    let error = authorizer
        .start(&Principal::new("acme", "erin"), &Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::Registration(
                tower_mcp_auth::oauth::RegistrationError::TokenEndpointMismatch { .. }
            )
        ),
        "{error:?}"
    );
    assert_eq!(auth.stats().authorization_requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_authorization_servers_are_used() {
    let w = hostile_world().await;
    let authorizer = builder(w.mcp.url(), w.store.clone())
        .allowed_authorization_servers(["https://auth.example.com"])
        .build()
        .unwrap();
    let error = authorizer
        .start(&Principal::new("acme", "frank"), &Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::Discovery(DiscoveryError::AuthorizationServerNotAllowed { .. })
        ),
        "{error:?}"
    );
    let stats = w.attacker.stats();
    assert_eq!(
        (stats.metadata_requests, stats.registrations),
        (0, 0),
        "nothing was asked of the unlisted server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_root_metadata_must_name_the_servers_own_origin() {
    let auth = TestAuthServer::start().await.unwrap();
    let discovery = Discovery::new(AuthHttpClient::reqwest(), loopback());
    // The fixture's root metadata, as a 2025-03-26 server at the same origin: fine.
    let server: url::Url = format!("{}/mcp", auth.issuer()).parse().unwrap();
    assert!(discovery.legacy_authorization_server(&server).await.is_ok());
    // A root document naming another issuer is refused.
    auth.set_metadata_issuer("https://attacker.example.com");
    let fresh = Discovery::new(AuthHttpClient::reqwest(), loopback());
    let error = fresh
        .legacy_authorization_server(&server)
        .await
        .unwrap_err();
    assert!(
        matches!(error, DiscoveryError::IssuerMismatch { .. }),
        "{error:?}"
    );
}

// --- Medium 4: SSRF by DNS -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolving_to_loopback_is_refused_at_connect_time() {
    let auth = TestAuthServer::start().await.unwrap();
    // `localhost` is a name: the URL check cannot see where it points, the resolver can.
    let url = format!("http://localhost:{}/token", auth.addr().port());
    let strict = OboExchanger::with_http_client(
        OboConfig::new(
            url.parse().unwrap(),
            "gateway",
            ClientAuth::None,
            OboGrant::JwtBearer,
        ),
        AuthHttpClient::reqwest(),
    );
    let assertion =
        UserAssertion::new(auth.user_assertion("x", "gateway", Duration::from_secs(60)));
    let error = strict
        .token(&Principal::new("acme", "x"), &assertion)
        .await
        .unwrap_err();
    assert!(
        format!("{:?}", error).contains("InternalAddress"),
        "refused by the resolver: {error:?}"
    );
    assert_eq!(auth.stats().obo_exchanges, 0, "no connection was made");

    // With loopback allowed, the same name connects.
    let dev = OboExchanger::with_http_client(
        OboConfig::new(
            url.parse().unwrap(),
            "gateway",
            ClientAuth::None,
            OboGrant::JwtBearer,
        ),
        AuthHttpClient::reqwest_with_policy(loopback()),
    );
    let answered = dev.token(&Principal::new("acme", "x"), &assertion).await;
    assert!(
        !matches!(answered, Err(Error::Transient { .. })),
        "reached the server: {answered:?}"
    );
}

#[test]
fn refusals_name_the_fix_once() {
    let error = UrlPolicy::default()
        .check(&"http://127.0.0.1:8080/mcp".parse().unwrap())
        .unwrap_err();
    let shown = DiscoveryError::from(error.clone()).to_string();
    assert!(shown.contains("allow_loopback_http()"), "{shown}");
    assert_eq!(shown.matches("internal address").count(), 1, "{shown}");
    assert!(matches!(error, UrlRefused::InternalAddress(_)));
}

// --- Medium 8: state growth ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_obo_re_exchanges_after_401_are_single_flight() {
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let exchanger = gateway_exchanger(&auth);
    let client = OboHeaderLayer::new(exchanger.clone(), &mcp.url())
        .unwrap()
        .layer(ReqwestTransport::new());
    let principal = Principal::new("acme", "grace");
    let assertion =
        UserAssertion::new(auth.user_assertion("grace", "gateway", Duration::from_secs(3600)));
    let call = |client: tower_mcp_auth::OboHeader<ReqwestTransport>| {
        let (principal, assertion, url) = (principal.clone(), assertion.clone(), mcp.url());
        async move {
            let mut request = jsonrpc_request(&url, 1, "tools/list", json!({}));
            request.extensions_mut().insert(principal);
            request.extensions_mut().insert(assertion);
            client.oneshot(request).await.map(|r| r.status())
        }
    };
    assert!(call(client.clone()).await.unwrap().is_success());
    assert_eq!(exchanger.stats().exchanges, 1);
    // The MCP server stops accepting the cached token: 64 concurrent 401s.
    auth.revoke_access_tokens("grace");
    let calls: Vec<_> = (0..64)
        .map(|_| tokio::spawn(call(client.clone())))
        .collect();
    for call in calls {
        assert!(call.await.unwrap().unwrap().is_success());
    }
    let forced = exchanger.stats().exchanges - 1;
    assert!(
        forced <= 2,
        "64 refused callers made {forced} forced exchanges; one per rejected token"
    );
}

// --- Medium 9: RFC 9207 --------------------------------------------------------------

#[tokio::test]
async fn a_callback_without_the_promised_iss_or_with_another_iss_is_refused() {
    let store: Arc<MemoryStore> = Arc::new(MemoryStore::new());
    let flows = FlowStore::new();
    let completer = AuthorizationCompleter::new(
        flows.clone(),
        store.clone(),
        AuthHttpClient::reqwest_with_policy(loopback()),
    );
    let binding = ServerBinding::public_client(
        "https://mcp.example.com/mcp",
        "https://as.example/token",
        "c",
    )
    .unwrap()
    .with_issuer("https://as.example");
    let key = AuthKey::new(&Principal::new("acme", "heidi"), binding.id());
    let start = |required: bool| {
        let (flows, key, binding) = (flows.clone(), key.clone(), binding.clone());
        async move {
            let request = AuthorizationRequest::new(
                binding,
                "https://as.example/authorize".parse().unwrap(),
                "https://app.example/cb".parse().unwrap(),
            )
            .with_required_iss(required);
            let flow = flows.start_or_join(&key, request).await;
            flow.pending().state.expose().to_owned()
        }
    };
    let state = start(true).await;
    let missing = completer
        .complete(&CallbackParams::from_query(&format!(
            "code=c&state={state}"
        )))
        .await
        .unwrap_err();
    assert!(
        matches!(missing, CallbackError::IssuerMissing),
        "{missing:?}"
    );

    let state = start(false).await;
    let slash = completer
        .complete(&CallbackParams::from_query(&format!(
            "code=c&state={state}&iss=https%3A%2F%2Fas.example%2F"
        )))
        .await
        .unwrap_err();
    assert!(
        matches!(slash, CallbackError::IssuerMismatch { .. }),
        "issuers compare exactly: {slash:?}"
    );
    assert!(store.load(&key).await.unwrap().is_none());
}

#[test]
fn a_token_set_with_a_huge_lifetime_is_clamped() {
    let tokens = TokenSet::new(Secret::new("a")).with_expires_in(Duration::MAX);
    let lifetime = tokens
        .expires_at
        .unwrap()
        .duration_since(tokens.obtained_at)
        .unwrap();
    assert!(lifetime < YEAR_AND_A_DAY);
    assert!(tokens.is_usable());
    assert!(tokens.expires_at.unwrap() > SystemTime::now());
}

/// Issue #11 item 12: the policy was enforced only at the first request, and its
/// message printed the cause twice without naming the fix.
#[test]
fn a_loopback_http_server_is_refused_when_the_authorizer_is_built() {
    let error = Authorizer::builder(
        "http://127.0.0.1:8080/mcp",
        Arc::new(MemoryStore::new()),
        "http://127.0.0.1:1/cb".parse().unwrap(),
    )
    .build()
    .unwrap_err();
    let shown = error.to_string();
    assert!(shown.contains("allow_loopback_http()"), "{shown}");
    assert_eq!(shown.matches("127.0.0.1").count(), 1, "{shown}");
}
