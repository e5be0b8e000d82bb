//! CircuitBreakerLayer against real loopback upstreams.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::{BoxError, Layer, Service, ServiceExt};
use tower_mcp_auth::testing::{ReqwestTransport, TestUpstream};
use tower_mcp_auth::{
    BreakerConfig, CircuitBreaker, CircuitBreakerLayer, Error, Principal, breaker::CircuitState,
    breaker::Rejection, layer::circuit_breaker::BreakerKeying,
    layer::circuit_breaker::ServiceUnavailableOnOpenLayer,
};

/// A non-pooling transport (a killed upstream must refuse the next call) that counts
/// the calls reaching it.
#[derive(Clone)]
struct Transport {
    inner: ReqwestTransport,
    attempts: Arc<AtomicU64>,
}

impl<B: tower_mcp_auth::layer::RequestBody> Service<http::Request<B>> for Transport {
    type Response = http::Response<bytes::Bytes>;
    type Error = reqwest::Error;
    type Future = <ReqwestTransport as Service<http::Request<B>>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        Service::<http::Request<B>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        self.inner.call(request)
    }
}

fn transport(attempts: Arc<AtomicU64>) -> Transport {
    let http = tower_mcp_auth::client::ReqwestService::builder()
        .expect("TLS")
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    Transport {
        inner: ReqwestTransport::from_client(http),
        attempts,
    }
}

fn config() -> BreakerConfig {
    BreakerConfig::default()
        .with_consecutive_failures(5)
        .without_failure_rate()
        .without_storm_guard()
        .with_jitter(0.0)
        .with_open_backoff(Duration::from_millis(300), Duration::from_secs(5))
}

fn get(url: &str) -> http::Request<reqwest::Body> {
    let mut request = http::Request::new(reqwest::Body::from(""));
    *request.uri_mut() = url.parse().unwrap();
    request
}

/// A JSON-RPC POST without `Mcp-Session-Id`, as stateless MCP servers get every call.
fn post(url: &str, method: &str) -> http::Request<reqwest::Body> {
    let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{{}}}}"#);
    let mut request = http::Request::new(reqwest::Body::from(body));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = url.parse().unwrap();
    request
}

fn rejection(result: &Result<http::Response<bytes::Bytes>, BoxError>) -> Option<Rejection> {
    match result.as_ref().err().and_then(|e| Error::find(e.as_ref())) {
        Some(Error::CircuitOpen { reason, .. }) => Some(*reason),
        _ => None,
    }
}

async fn wave(
    client: &CircuitBreaker<Transport>,
    url: &str,
    n: usize,
) -> Vec<Result<http::Response<bytes::Bytes>, BoxError>> {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, request, barrier) = (client.clone(), get(url), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                client.oneshot(request).await
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

/// One call that must get an answer; its status.
async fn status(client: &CircuitBreaker<Transport>, url: &str) -> u16 {
    client
        .clone()
        .oneshot(get(url))
        .await
        .expect("an answer")
        .status()
        .as_u16()
}

fn state_of(layer: &CircuitBreakerLayer, url: &str) -> CircuitState {
    layer
        .handle()
        .snapshot(&origin(url))
        .expect("a circuit for the url")
        .state
}

fn origin(url: &str) -> String {
    let uri: http::Uri = url.parse().unwrap();
    format!("http://{}:{}", uri.host().unwrap(), uri.port_u16().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_upstream_sees_at_most_n_of_1000_concurrent_calls() {
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/mcp", listener.local_addr().unwrap())
    };
    let attempts = Arc::new(AtomicU64::new(0));
    let layer = CircuitBreakerLayer::new(config());
    let client = layer.layer(transport(attempts.clone()));

    let results = wave(&client, &dead, 1000).await;

    assert!(results.iter().all(|r| r.is_err()));
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        5,
        "only the first 5 reached the dead upstream"
    );
    let refused = results
        .iter()
        .filter(|r| rejection(r) == Some(Rejection::Open))
        .count();
    assert_eq!(refused, 995);
    assert_eq!(
        layer.handle().snapshot(&origin(&dead)).unwrap().state,
        CircuitState::Open
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_upstream_is_recovered_by_one_probe_not_a_stampede() {
    let upstream = TestUpstream::start().await.unwrap();
    let transitions = Arc::new(Mutex::new(Vec::new()));
    let layer = CircuitBreakerLayer::new(config()).on_transition({
        let transitions = transitions.clone();
        move |_key, t| transitions.lock().unwrap().push(t.to)
    });
    let client = layer.layer(transport(Arc::new(AtomicU64::new(0))));
    assert!(
        wave(&client, &upstream.url(), 50)
            .await
            .iter()
            .all(|r| r.is_ok())
    );

    upstream.stop();
    let outage = wave(&client, &upstream.url(), 200).await;
    assert!(outage.iter().all(|r| r.is_err()));
    upstream.restart().await.unwrap();
    let before = upstream.requests();
    tokio::time::sleep(Duration::from_millis(350)).await;

    let recovery = wave(&client, &upstream.url(), 200).await;
    let ok = recovery.iter().filter(|r| r.is_ok()).count();
    let probing = recovery
        .iter()
        .filter(|r| rejection(r) == Some(Rejection::ProbeInFlight))
        .count();
    assert_eq!(upstream.requests() - before, ok as u64);
    assert!(
        ok >= 1 && ok + probing == 200,
        "ok {ok}, refused while probing {probing}"
    );
    // Whatever was admitted went after the one probe answered.
    assert_eq!(state_of(&layer, &upstream.url()), CircuitState::Closed);
    assert!(
        wave(&client, &upstream.url(), 200)
            .await
            .iter()
            .all(|r| r.is_ok())
    );
    assert_eq!(
        *transitions.lock().unwrap(),
        [
            CircuitState::Open,
            CircuitState::HalfOpen,
            CircuitState::Closed
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_and_forbidden_never_open_the_circuit() {
    let upstream = TestUpstream::start().await.unwrap();
    let layer = CircuitBreakerLayer::new(config());
    let mut client = layer.layer(transport(Arc::new(AtomicU64::new(0))));
    for status in [401, 403, 404] {
        upstream.set_status(status);
        for _ in 0..20 {
            let response = ServiceExt::<http::Request<reqwest::Body>>::ready(&mut client)
                .await
                .unwrap()
                .call(get(&upstream.url()))
                .await
                .unwrap();
            assert_eq!(response.status(), status);
        }
    }
    assert_eq!(upstream.requests(), 60);
    assert_eq!(state_of(&layer, &upstream.url()), CircuitState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_throttles_the_key_until_retry_after() {
    let upstream = TestUpstream::start().await.unwrap();
    upstream.set_status(429);
    upstream.set_retry_after(1);
    let layer = CircuitBreakerLayer::new(config());
    let client = layer.layer(transport(Arc::new(AtomicU64::new(0))));

    assert_eq!(status(&client, &upstream.url()).await, 429);
    let throttled = client.clone().oneshot(get(&upstream.url())).await;
    assert_eq!(rejection(&throttled), Some(Rejection::Throttled));
    match throttled
        .as_ref()
        .err()
        .and_then(|e| Error::find(e.as_ref()))
    {
        Some(Error::CircuitOpen { retry_after, .. }) => {
            assert!(*retry_after <= Duration::from_secs(1))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(upstream.requests(), 1);
    assert_eq!(state_of(&layer, &upstream.url()), CircuitState::Closed);

    upstream.set_status(200);
    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert_eq!(status(&client, &upstream.url()).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_upstream_down_does_not_affect_another() {
    let (a, b) = (
        TestUpstream::start().await.unwrap(),
        TestUpstream::start().await.unwrap(),
    );
    // An open period longer than any stall of a busy machine: the circuit that tripped
    // is still open when it is looked at.
    let layer = CircuitBreakerLayer::new(
        config().with_open_backoff(Duration::from_secs(120), Duration::from_secs(120)),
    );
    let client = layer.layer(transport(Arc::new(AtomicU64::new(0))));
    a.stop();
    let (a_url, b_url) = (a.url(), b.url());
    let (down, up) = tokio::join!(wave(&client, &a_url, 100), wave(&client, &b_url, 100));
    assert!(down.iter().all(|r| r.is_err()));
    assert!(up.iter().all(|r| r.is_ok()));
    let handle = layer.handle();
    assert_eq!(
        handle.snapshot(&origin(&a.url())).unwrap().state,
        CircuitState::Open
    );
    assert_eq!(
        handle.snapshot(&origin(&b.url())).unwrap().state,
        CircuitState::Closed
    );
    assert_eq!(handle.snapshots().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keying_by_principal_keeps_one_users_failures_to_that_user() {
    let upstream = TestUpstream::start().await.unwrap();
    upstream.set_status(500);
    let layer = CircuitBreakerLayer::new(config()).with_keying(BreakerKeying::OriginAndPrincipal);
    let client = layer.layer(transport(Arc::new(AtomicU64::new(0))));
    let as_user = |user: &str| {
        let mut request = get(&upstream.url());
        request
            .extensions_mut()
            .insert(Principal::new("acme", user));
        request
    };
    for _ in 0..5 {
        assert_eq!(
            client
                .clone()
                .oneshot(as_user("mallory"))
                .await
                .unwrap()
                .status(),
            500
        );
    }
    assert_eq!(
        rejection(&client.clone().oneshot(as_user("mallory")).await),
        Some(Rejection::Open)
    );
    upstream.set_status(200);
    assert_eq!(
        client
            .clone()
            .oneshot(as_user("alice"))
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_probe_frees_the_slot_and_a_hung_probe_times_out() {
    let upstream = TestUpstream::start().await.unwrap();
    upstream.set_status(500);
    let layer = CircuitBreakerLayer::new(
        config()
            .with_consecutive_failures(1)
            .with_probe_timeout(Duration::from_millis(200)),
    );
    let mut client = layer.layer(transport(Arc::new(AtomicU64::new(0))));
    assert_eq!(status(&client, &upstream.url()).await, 500);
    tokio::time::sleep(Duration::from_millis(350)).await;

    // Admission happens in `call`: this call is the probe. Dropping it frees the slot.
    let probe = ServiceExt::<http::Request<reqwest::Body>>::ready(&mut client)
        .await
        .unwrap()
        .call(get(&upstream.url()));
    let refused = client.clone().oneshot(get(&upstream.url())).await;
    assert_eq!(rejection(&refused), Some(Rejection::ProbeInFlight));
    drop(probe);

    upstream.set_hang(true);
    let started = tokio::time::Instant::now();
    let hung = client.clone().oneshot(get(&upstream.url())).await;
    assert_eq!(
        rejection(&hung),
        Some(Rejection::ProbeTimedOut),
        "the next call was admitted as the probe"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let snapshot = layer.handle().snapshot(&origin(&upstream.url())).unwrap();
    assert_eq!(
        (snapshot.state, snapshot.opens),
        (CircuitState::Open, 2),
        "re-opened with the doubled period"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_is_cooled_down_and_reset_clears_it() {
    let upstream = TestUpstream::start().await.unwrap();
    let layer = CircuitBreakerLayer::new(config().with_storm_guard(
        7,
        Duration::from_secs(45),
        Duration::from_secs(15),
    ));
    let client = layer.layer(transport(Arc::new(AtomicU64::new(0))));
    // A JSON-RPC initialize starts a session.
    let initialize = || post(&upstream.url(), "initialize");
    for _ in 0..7 {
        assert_eq!(
            client.clone().oneshot(initialize()).await.unwrap().status(),
            200
        );
    }
    assert_eq!(
        rejection(&client.clone().oneshot(initialize()).await),
        Some(Rejection::StormCooldown)
    );
    // Calls that start no session go on.
    assert_eq!(status(&client, &upstream.url()).await, 200);
    assert_eq!(
        client
            .clone()
            .oneshot(post(&upstream.url(), "tools/list"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(upstream.requests(), 9);

    layer.handle().reset(&origin(&upstream.url()));
    assert_eq!(
        client.clone().oneshot(initialize()).await.unwrap().status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_can_answer_503_with_retry_after_while_open() {
    let upstream = TestUpstream::start().await.unwrap();
    upstream.set_status(502);
    let client = tower::ServiceBuilder::new()
        .layer(ServiceUnavailableOnOpenLayer)
        .layer(CircuitBreakerLayer::new(
            config().with_consecutive_failures(1),
        ))
        .service(transport(Arc::new(AtomicU64::new(0))));
    assert_eq!(
        client
            .clone()
            .oneshot(get(&upstream.url()))
            .await
            .unwrap()
            .status(),
        502
    );
    let response = client.clone().oneshot(get(&upstream.url())).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_waiting_behind_hung_unproven_calls_give_up_at_the_probe_timeout() {
    let upstream = TestUpstream::start().await.unwrap();
    upstream.set_hang(true);
    let layer = CircuitBreakerLayer::new(
        config()
            .with_consecutive_failures(2)
            .with_probe_timeout(Duration::from_millis(200)),
    );
    let client = layer.layer(transport(Arc::new(AtomicU64::new(0))));
    // A new key admits 2 calls; both hang. The third waits, bounded.
    let hung: Vec<_> = (0..2)
        .map(|_| tokio::spawn(client.clone().oneshot(get(&upstream.url()))))
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = tokio::time::Instant::now();
    let waited = client.clone().oneshot(get(&upstream.url())).await;
    assert_eq!(rejection(&waited), Some(Rejection::Unproven));
    assert!(
        started.elapsed() >= Duration::from_millis(150)
            && started.elapsed() < Duration::from_secs(2)
    );
    assert_eq!(upstream.requests(), 2);
    hung.iter().for_each(|task| task.abort());
}

/// Issue #11: the default breaker counted every POST without `Mcp-Session-Id` as a
/// session start; against a stateless MCP server 7 of 20 sequential calls got through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_breaker_never_throttles_a_healthy_stateless_server() {
    use tower_mcp_auth::testing::{TestAuthServer, TestMcpServer};
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    mcp.set_stateless(true);
    let token = auth.issue("client", "alice", None).access_token;
    let attempts = Arc::new(AtomicU64::new(0));
    let client = CircuitBreakerLayer::new(BreakerConfig::default()).layer(transport(attempts));
    let call = |method: &str| {
        let mut request = post(&mcp.url(), method);
        request.headers_mut().insert(
            http::header::AUTHORIZATION,
            format!("Bearer {}", token.expose()).parse().unwrap(),
        );
        request.headers_mut().insert(
            http::header::ACCEPT,
            "application/json, text/event-stream".parse().unwrap(),
        );
        request
    };
    // A session of a stateless server: initialize, then ordinary calls, none with an id.
    let first = client.clone().oneshot(call("initialize")).await.unwrap();
    assert!(!first.headers().contains_key("mcp-session-id"));
    for _ in 0..20 {
        let response = client.clone().oneshot(call("tools/list")).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(256));
    let wave: Vec<_> = (0..256)
        .map(|_| {
            let (client, request, barrier) = (client.clone(), call("tools/list"), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                client.oneshot(request).await.map(|r| r.status().as_u16())
            })
        })
        .collect();
    for call in wave {
        assert_eq!(call.await.unwrap().unwrap(), 200);
    }
    assert_eq!(mcp.stats().ok, 1 + 20 + 256);
}

/// A response that created a session counts as a session start even when the request's
/// body was not read (too large, or streamed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_created_by_responses_count_toward_the_storm_guard() {
    use tower_mcp_auth::testing::{TestAuthServer, TestMcpServer};
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let token = auth.issue("client", "bob", None).access_token;
    let layer = CircuitBreakerLayer::new(BreakerConfig::default().with_storm_guard(
        3,
        Duration::from_secs(45),
        Duration::from_secs(15),
    ));
    let client = layer.layer(transport(Arc::new(AtomicU64::new(0))));
    // An initialize whose body is over the 64 KiB the breaker reads.
    let padding = "x".repeat(70 * 1024);
    let big_initialize = || {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"pad":"{padding}"}}}}"#
        );
        let mut request = http::Request::new(reqwest::Body::from(body));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = mcp.url().parse().unwrap();
        request.headers_mut().insert(
            http::header::AUTHORIZATION,
            format!("Bearer {}", token.expose()).parse().unwrap(),
        );
        request
    };
    for _ in 0..3 {
        let response = client.clone().oneshot(big_initialize()).await.unwrap();
        assert!(response.headers().contains_key("mcp-session-id"));
    }
    // The fourth start (now known from its small body) is one too many.
    let small = post(&mcp.url(), "initialize");
    assert_eq!(
        rejection(&client.clone().oneshot(small).await),
        Some(Rejection::StormCooldown)
    );
}

/// Issue #11: one user's 429 with `Retry-After: 300` throttled every user of the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_429_throttles_only_that_user() {
    let upstream = TestUpstream::start().await.unwrap();
    let layer = CircuitBreakerLayer::new(BreakerConfig::default());
    let client = layer.layer(transport(Arc::new(AtomicU64::new(0))));
    let as_user = |user: &str| {
        let mut request = post(&upstream.url(), "tools/list");
        request
            .extensions_mut()
            .insert(Principal::new("acme", user));
        request
    };
    upstream.set_status(429);
    upstream.set_retry_after(300);
    let limited = client.clone().oneshot(as_user("mallory")).await.unwrap();
    assert_eq!(limited.status(), 429);
    upstream.set_status(200);
    upstream.set_retry_after(0);
    for user in ["alice", "bob", "carol"] {
        let response = client.clone().oneshot(as_user(user)).await.unwrap();
        assert_eq!(response.status(), 200, "{user} is not throttled");
    }
    match client
        .clone()
        .oneshot(as_user("mallory"))
        .await
        .err()
        .and_then(|e| Error::find(e.as_ref()).cloned())
    {
        Some(Error::CircuitOpen {
            reason: Rejection::Throttled,
            retry_after,
            ..
        }) => assert!(retry_after > Duration::from_secs(290)),
        other => panic!("mallory stays throttled: {other:?}"),
    }
}

/// Issue #11: five users who merely needed to log in opened the circuit for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_who_must_log_in_never_open_the_circuit() {
    use tower_mcp_auth::store::MemoryStore;
    use tower_mcp_auth::testing::{TestAuthServer, TestMcpServer, jsonrpc_request};
    use tower_mcp_auth::{
        Authorizer, OAuthRetryLayer, RefreshCoordinator, SilentRefreshLayer, UrlPolicy,
    };
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let store = Arc::new(MemoryStore::new());
    let authorizer = Authorizer::builder(
        mcp.url(),
        store.clone(),
        "http://127.0.0.1:1/cb".parse().unwrap(),
    )
    .url_policy(UrlPolicy::default().allow_loopback_http())
    .build()
    .unwrap();
    let layer = CircuitBreakerLayer::new(BreakerConfig::default());
    let client = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .layer(OAuthRetryLayer::return_early(authorizer.clone()))
        .layer(SilentRefreshLayer::new(
            RefreshCoordinator::new(store),
            authorizer.bindings(),
        ))
        .service(ReqwestTransport::new());
    for user in 0..10 {
        let mut request = jsonrpc_request(&mcp.url(), 1, "tools/list", serde_json::json!({}));
        request
            .extensions_mut()
            .insert(Principal::new("acme", format!("new-user-{user}")));
        let error = client.clone().oneshot(request).await.unwrap_err();
        assert!(matches!(
            Error::find(error.as_ref()),
            Some(Error::AuthorizationRequired { .. })
        ));
    }
    assert_eq!(state_of(&layer, &mcp.url()), CircuitState::Closed);
    let snapshot = layer.handle().snapshot(&origin(&mcp.url())).unwrap();
    assert_eq!(snapshot.consecutive_failures, 0);
}
