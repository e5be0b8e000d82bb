//! OAuthRetryLayer over loopback: a request without credentials runs discovery,
//! registration, the PKCE flow and the callback, then is replayed; concurrent requests
//! share one flow; return-early hands out the URL; 403 insufficient_scope steps up,
//! bounded; failures and timeouts are typed; a rejected client registers anew.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::json;
use tower::{BoxError, Layer, ServiceExt};
use tower_mcp_auth::store::{CredentialStore, MemoryStore, Swap};
use tower_mcp_auth::testing::{
    HeadlessBrowser, ReqwestTransport, TestAuthServer, TestMcpServer, jsonrpc_request, read_jsonrpc,
};
use tower_mcp_auth::{
    Authorizer, Error, OAuthRetry, OAuthRetryLayer, Principal, RefreshCoordinator, SilentRefresh,
    SilentRefreshLayer, UrlPolicy, layer::oauth_retry::AuthorizationPrompt,
};

type Client = OAuthRetry<SilentRefresh<ReqwestTransport>>;

struct World {
    auth: Arc<TestAuthServer>,
    mcp: TestMcpServer,
    authorizer: Authorizer,
    store: Arc<MemoryStore>,
}

impl World {
    async fn new() -> Self {
        let auth = TestAuthServer::start().await.unwrap();
        let mcp = TestMcpServer::start(&auth).await.unwrap();
        let store = Arc::new(MemoryStore::new());
        let authorizer = Authorizer::builder(
            mcp.url(),
            store.clone(),
            "http://127.0.0.1:1/oauth/callback".parse().unwrap(),
        )
        .client_name("oauth retry test")
        .url_policy(UrlPolicy::default().allow_loopback_http())
        .build()
        .unwrap();
        Self {
            auth: Arc::new(auth),
            mcp,
            authorizer,
            store,
        }
    }

    fn client(&self, layer: OAuthRetryLayer) -> Client {
        let silent = SilentRefreshLayer::new(
            RefreshCoordinator::new(self.store.clone()),
            self.authorizer.bindings(),
        );
        layer.layer(silent.layer(ReqwestTransport::new()))
    }

    fn waiting_client(&self) -> Client {
        let browser = HeadlessBrowser::new(self.authorizer.completer());
        self.client(OAuthRetryLayer::wait(self.authorizer.clone(), browser))
    }
}

async fn call_tool(
    client: Client,
    url: &str,
    user: &Principal,
    tool: &str,
) -> Result<String, BoxError> {
    let mut request = jsonrpc_request(
        url,
        1,
        "tools/call",
        json!({"name": tool, "arguments": {"text": "hi"}}),
    );
    request.extensions_mut().insert(user.clone());
    let response = client.oneshot(request).await?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}").into());
    }
    let message = read_jsonrpc(&response)?;
    Ok(message["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

fn alice() -> Principal {
    Principal::new("acme", "alice")
}

fn crate_error(error: &BoxError) -> &Error {
    Error::find(error.as_ref()).unwrap_or_else(|| panic!("not a crate error: {error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_credentials_authorizes_and_is_replayed_once() {
    let w = World::new().await;
    w.auth.set_consenting_user("alice");
    let client = w.waiting_client();

    let answer = call_tool(client.clone(), &w.mcp.url(), &alice(), "whoami").await;
    assert_eq!(answer.unwrap(), "alice");
    let stats = w.auth.stats();
    assert_eq!(stats.registrations, 1, "one dynamic registration");
    assert_eq!(stats.authorization_requests, 1);
    assert_eq!(stats.code_exchanges, 1);
    let mcp = w.mcp.stats();
    assert_eq!(
        mcp.unauthorized, 1,
        "the first attempt, then the replay: {mcp:?}"
    );
    assert_eq!(mcp.ok, 1);

    // The next request uses the stored token: no new flow, no registration.
    let again = call_tool(client, &w.mcp.url(), &alice(), "echo").await;
    assert_eq!(again.unwrap(), "hi");
    let stats = w.auth.stats();
    assert_eq!((stats.registrations, stats.authorization_requests), (1, 1));
    assert_eq!(w.mcp.stats().unauthorized, 1);
}

/// The stack's hot path on a 401: a stored token, and a `Full` body, which the outer
/// layer reads into its `ReplayBody` and the silent refresh layer takes over from it
/// for its replay copy (moved, not copied). The silent refresh layer redeems the
/// refresh token and sends the same request again, body included; the outer layer
/// starts no sign-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refreshed_and_the_same_body_replayed_through_the_stack() {
    let w = World::new().await;
    w.auth.set_consenting_user("alice");
    let client = w.waiting_client();
    let first = call_tool(client.clone(), &w.mcp.url(), &alice(), "whoami").await;
    assert_eq!(first.unwrap(), "alice");
    w.auth.revoke_access_tokens("alice");
    let (auth_before, mcp_before) = (w.auth.stats(), w.mcp.stats());

    let (parts, _) = jsonrpc_request(&w.mcp.url(), 2, "tools/call", json!({})).into_parts();
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "the same body"}}});
    let mut request = http::Request::from_parts(parts, Full::new(Bytes::from(call.to_string())));
    request.extensions_mut().insert(alice());
    let response = client.oneshot(request).await.unwrap();

    assert_eq!(response.status(), http::StatusCode::OK);
    let message = read_jsonrpc(&response).unwrap();
    assert_eq!(
        message["result"]["content"][0]["text"], "the same body",
        "the replay carried the tool call's body"
    );
    let (auth, mcp) = (w.auth.stats(), w.mcp.stats());
    assert_eq!(auth.refresh_requests - auth_before.refresh_requests, 1);
    assert_eq!(
        auth.authorization_requests, auth_before.authorization_requests,
        "no new sign-in"
    );
    assert_eq!(
        mcp.unauthorized - mcp_before.unauthorized,
        1,
        "the revoked token, then the replay: {mcp:?}"
    );
}

/// The silent refresh layer keeps no copy of a URI that is the resource's own (nearly
/// every request), and a copy of any other: a replay goes where the request went,
/// written the same, whether the refresh layer replays it or hands it back for an
/// authorization.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_go_to_the_uri_the_request_was_sent_to() {
    let w = World::new().await;
    w.auth.set_consenting_user("alice");
    let client = w.waiting_client();
    let with_query = format!("{}?session=7", w.mcp.url());
    // A first request without credentials: handed back, authorized, replayed.
    for url in [w.mcp.url(), with_query.clone()] {
        let (parts, _) = jsonrpc_request(&url, 1, "tools/call", json!({})).into_parts();
        let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "whoami", "arguments": {}}});
        let mut request =
            http::Request::from_parts(parts, Full::new(Bytes::from(call.to_string())));
        request.extensions_mut().insert(alice());
        let response = client.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        // Then a revoked token: refreshed and replayed by the refresh layer.
        w.auth.revoke_access_tokens("alice");
    }
    let (parts, _) = jsonrpc_request(&w.mcp.url(), 2, "tools/list", json!({})).into_parts();
    let mut request = http::Request::from_parts(
        parts,
        Full::new(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
        )),
    );
    request.extensions_mut().insert(alice());
    assert_eq!(
        client.oneshot(request).await.unwrap().status(),
        http::StatusCode::OK
    );

    let (plain, queried) = ("/mcp", "/mcp?session=7");
    assert_eq!(
        w.mcp.seen_targets(),
        [
            plain, plain, // no credentials, then the replay after the authorization
            queried, queried, // the revoked token, then the replay after the refresh
            plain, plain, // the same for the resource's own URI
        ],
        "{:?}",
        w.mcp.stats()
    );
    assert_eq!(w.auth.stats().authorization_requests, 1);
    assert_eq!(w.auth.stats().refresh_requests, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_share_one_registration_and_one_flow() {
    let w = World::new().await;
    w.auth.set_consenting_user("alice");
    // The authorization server is slow, so every request is refused before the flow ends.
    w.auth.set_latency(Duration::from_millis(100));
    let client = w.waiting_client();
    let n = 64;
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, url, barrier) = (client.clone(), w.mcp.url(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                call_tool(client, &url, &alice(), "whoami")
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), "alice");
    }
    let stats = w.auth.stats();
    assert_eq!(stats.registrations, 1, "{stats:?}");
    assert_eq!(stats.authorization_requests, 1, "{stats:?}");
    assert_eq!(stats.code_exchanges, 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn return_early_hands_out_one_url_and_the_next_try_succeeds() {
    let w = World::new().await;
    w.auth.set_consenting_user("alice");
    let client = w.client(OAuthRetryLayer::return_early(w.authorizer.clone()));

    let first = call_tool(client.clone(), &w.mcp.url(), &alice(), "whoami").await;
    let second = call_tool(client.clone(), &w.mcp.url(), &alice(), "whoami").await;
    let url_of = |result: Result<String, BoxError>| match crate_error(&result.unwrap_err()) {
        Error::AuthorizationRequired { url, expires_at } => {
            assert!(*expires_at > std::time::SystemTime::now());
            assert!(!format!("{url:?}").contains("state="), "no state in Debug");
            url.as_url().clone()
        }
        other => panic!("expected AuthorizationRequired, got {other:?}"),
    };
    let url = url_of(first);
    assert_eq!(
        url,
        url_of(second),
        "the second request joins the PENDING flow"
    );
    assert_eq!(
        w.auth.stats().authorization_requests,
        0,
        "nobody visited it yet"
    );

    // The user authorizes (the callback endpoint's part is played by the completer).
    HeadlessBrowser::new(w.authorizer.completer())
        .visit(&url)
        .await
        .unwrap();
    let answer = call_tool(client, &w.mcp.url(), &alice(), "whoami").await;
    assert_eq!(answer.unwrap(), "alice");
    assert_eq!(w.auth.stats().code_exchanges, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_scope_steps_up_with_the_union_and_replays() {
    let w = World::new().await;
    w.auth.set_consenting_user("alice");
    w.mcp.require_scope("echo", "tools:write");
    let client = w.waiting_client();

    // Authorized without scopes (neither the challenge nor the metadata names any).
    assert_eq!(
        call_tool(client.clone(), &w.mcp.url(), &alice(), "whoami")
            .await
            .unwrap(),
        "alice"
    );
    let answer = call_tool(client, &w.mcp.url(), &alice(), "echo").await;
    assert_eq!(answer.unwrap(), "hi");
    assert_eq!(w.auth.stats().authorization_requests, 2, "one step-up");
    assert_eq!(w.mcp.stats().forbidden, 1);
    let last = w.mcp.seen_tokens().pop().unwrap();
    let granted = w.auth.validate(&last).unwrap().scope.unwrap_or_default();
    assert!(
        granted.split(' ').any(|s| s == "tools:write"),
        "granted {granted:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_up_stops_at_the_limit_with_a_typed_error() {
    let w = World::new().await;
    w.auth.set_consenting_user("alice");
    w.mcp.require_scope("echo", "tools:write");
    let browser = HeadlessBrowser::new(w.authorizer.completer());
    let client =
        w.client(OAuthRetryLayer::wait(w.authorizer.clone(), browser).with_max_authorizations(1));
    // No credentials: the 401 uses up the one authorization, the 403 finds none left.
    let error = call_tool(client, &w.mcp.url(), &alice(), "echo")
        .await
        .unwrap_err();
    match crate_error(&error) {
        Error::InsufficientScope {
            scope,
            authorizations,
        } => {
            assert_eq!(scope, &["tools:write"]);
            assert_eq!(*authorizations, 1);
        }
        other => panic!("expected InsufficientScope, got {other:?}"),
    }
    assert_eq!(w.auth.stats().authorization_requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_fails_the_request_and_a_silent_one_times_out() {
    let w = World::new().await;
    let failing = w.client(OAuthRetryLayer::wait(
        w.authorizer.clone(),
        |_: AuthorizationPrompt| async { Err::<(), BoxError>("user is offline".into()) },
    ));
    let error = call_tool(failing, &w.mcp.url(), &alice(), "whoami")
        .await
        .unwrap_err();
    match crate_error(&error) {
        Error::AuthorizationFailed { reason } => assert!(reason.contains("user is offline")),
        other => panic!("expected AuthorizationFailed, got {other:?}"),
    }

    let silent = w.client(
        OAuthRetryLayer::wait(w.authorizer.clone(), |_: AuthorizationPrompt| async {
            Ok::<(), BoxError>(())
        })
        .with_wait_timeout(Duration::from_millis(300)),
    );
    let bob = Principal::new("acme", "bob");
    let error = call_tool(silent, &w.mcp.url(), &bob, "whoami")
        .await
        .unwrap_err();
    assert!(
        matches!(crate_error(&error), Error::AuthorizationTimedOut { .. }),
        "{error}"
    );
    assert_eq!(w.auth.stats().code_exchanges, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_client_is_dropped_and_registered_anew() {
    let w = World::new().await;
    w.auth.set_consenting_user("alice");
    let client = w.waiting_client();
    call_tool(client.clone(), &w.mcp.url(), &alice(), "whoami")
        .await
        .unwrap();
    let first_client = w
        .authorizer
        .bindings()
        .get("acme")
        .unwrap()
        .client_id()
        .to_owned();

    // The authorization server forgets the client and the access token dies: the
    // refresh gets invalid_client, so the layer registers a new client and re-authorizes.
    w.auth.forget_client(&first_client);
    w.auth.revoke_access_tokens("alice");
    let answer = call_tool(client, &w.mcp.url(), &alice(), "whoami").await;
    assert_eq!(answer.unwrap(), "alice");
    let second_client = w
        .authorizer
        .bindings()
        .get("acme")
        .unwrap()
        .client_id()
        .to_owned();
    assert_ne!(first_client, second_client);
    let stats = w.auth.stats();
    assert_eq!(stats.registrations, 2, "{stats:?}");
    assert_eq!(stats.authorization_requests, 2, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_other_servers_are_not_touched() {
    let w = World::new().await;
    let other_auth = TestAuthServer::start().await.unwrap();
    let other = TestMcpServer::start(&other_auth).await.unwrap();
    let client = w.waiting_client();
    let error = call_tool(client, &other.url(), &alice(), "whoami")
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "HTTP 401 Unauthorized");
    assert_eq!(w.auth.stats().authorization_requests, 0);
    assert_eq!(other_auth.stats().authorization_requests, 0);
}

/// Marks a request whose response the transport holds back.
#[derive(Clone)]
struct Slow;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_before_another_finished_authorizing_just_replays() {
    let w = World::new().await;
    w.auth.set_consenting_user("alice");
    // The slow request's 401 reaches the layer only after the fast request has run the
    // whole flow: it must replay with those credentials, not authorize a second time.
    let transport = tower::service_fn(|request: http::Request<tower_mcp_auth::ReplayBody>| {
        let slow = request.extensions().get::<Slow>().is_some();
        async move {
            let response = ReqwestTransport::new().oneshot(request).await?;
            if slow && response.status() == 401 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok::<_, reqwest::Error>(response)
        }
    });
    let browser = HeadlessBrowser::new(w.authorizer.completer());
    let client = OAuthRetryLayer::wait(w.authorizer.clone(), browser).layer(
        SilentRefreshLayer::new(
            RefreshCoordinator::new(w.store.clone()),
            w.authorizer.bindings(),
        )
        .layer(transport),
    );
    let request = |slow: bool| {
        let mut request = jsonrpc_request(&w.mcp.url(), 1, "tools/call", json!({"name": "whoami"}));
        request.extensions_mut().insert(alice());
        if slow {
            request.extensions_mut().insert(Slow);
        }
        request
    };
    let slow = tokio::spawn(client.clone().oneshot(request(true)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fast = client.clone().oneshot(request(false)).await.unwrap();
    assert_eq!(
        read_jsonrpc(&fast).unwrap()["result"]["content"][0]["text"],
        "alice"
    );
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(
        read_jsonrpc(&slow).unwrap()["result"]["content"][0]["text"],
        "alice"
    );
    assert_eq!(w.auth.stats().authorization_requests, 1);
}

/// A refused request's send time is read from a coarse clock on the hot path, which
/// may trail the time its token was stored. The token set it carried must still never
/// count as "credentials newer than the refused ones": no replay with the very token
/// that was refused, but one sign-in and one replay with its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_a_refused_request_carried_never_counts_as_newer() {
    let w = World::new().await;
    w.auth.set_consenting_user("alice");
    let client = w.waiting_client();
    let first = call_tool(client.clone(), &w.mcp.url(), &alice(), "whoami").await;
    assert_eq!(first.unwrap(), "alice");
    // The stored token as if obtained two seconds after any clock reading of the next
    // send, and without a refresh token (refresh cannot help once it is refused).
    let binding = w.authorizer.bindings().get("acme").unwrap();
    let key = tower_mcp_auth::AuthKey::new(&alice(), binding.id());
    let stored = w.store.load(&key).await.unwrap().unwrap();
    let mut later = (*stored).clone();
    later.refresh_token = None;
    later.obtained_at = std::time::SystemTime::now() + Duration::from_secs(2);
    later.expires_at = Some(later.obtained_at + Duration::from_secs(3600));
    let swapped = w
        .store
        .compare_and_swap(&key, Some(stored.generation), later)
        .await
        .unwrap();
    assert!(matches!(swapped, Swap::Stored(_)));
    w.auth.revoke_access_tokens("alice");
    let (auth_before, mcp_before) = (w.auth.stats(), w.mcp.stats());

    let again = call_tool(client, &w.mcp.url(), &alice(), "whoami").await;

    assert_eq!(again.unwrap(), "alice");
    let (auth, mcp) = (w.auth.stats(), w.mcp.stats());
    assert_eq!(
        auth.authorization_requests - auth_before.authorization_requests,
        1,
        "one sign-in"
    );
    assert_eq!(
        mcp.unauthorized - mcp_before.unauthorized,
        1,
        "the refused token was sent once, not replayed: {mcp:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_rejected_during_the_code_exchange_is_registered_anew() {
    let w = World::new().await;
    w.auth.set_consenting_user("alice");
    // The first time, the authorization server forgets the client between the user's
    // consent and the code exchange; the exchange then gets invalid_client.
    let forgot = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handler = {
        let (auth, completer, authorizer) = (
            w.auth.clone(),
            w.authorizer.completer(),
            w.authorizer.clone(),
        );
        move |prompt: AuthorizationPrompt| {
            let (completer, forgot, auth, authorizer) = (
                completer.clone(),
                forgot.clone(),
                auth.clone(),
                authorizer.clone(),
            );
            async move {
                let http = tower_mcp_auth::client::ReqwestService::builder()
                    .expect("TLS")
                    .redirect(reqwest::redirect::Policy::none())
                    .build()?;
                let response = http
                    .get(prompt.flow.authorization_url.as_str())
                    .send()
                    .await?;
                let location: url::Url = response.headers()["location"].to_str()?.parse()?;
                if !forgot.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    let client = authorizer.bindings().get("acme").unwrap();
                    auth.forget_client(client.client_id());
                }
                let params = tower_mcp_auth::oauth::CallbackParams::from_query(
                    location.query().unwrap_or(""),
                );
                let _ = completer.complete(&params).await;
                Ok::<(), BoxError>(())
            }
        }
    };
    let client = w.client(OAuthRetryLayer::wait(w.authorizer.clone(), handler));
    let answer = call_tool(client, &w.mcp.url(), &alice(), "whoami").await;
    assert_eq!(answer.unwrap(), "alice");
    let stats = w.auth.stats();
    assert_eq!(stats.registrations, 2, "{stats:?}");
    assert_eq!(stats.authorization_requests, 2, "{stats:?}");
    assert_eq!(stats.code_exchanges, 2, "{stats:?}");
}

/// Issue #11: `OAuthRetryLayer::with_default_principal` was not visible to the inner
/// `SilentRefreshLayer`, which failed with `MissingPrincipal`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_default_principal_serves_the_whole_stack() {
    let w = World::new().await;
    let browser = HeadlessBrowser::new(w.authorizer.completer());
    let client = w.client(
        OAuthRetryLayer::wait(w.authorizer.clone(), browser)
            .with_default_principal(Principal::new("acme", "desktop-user")),
    );
    // No Principal in the request: the outer layer's default reaches the inner one.
    let request = jsonrpc_request(&w.mcp.url(), 1, "tools/list", json!({}));
    let response = client.clone().oneshot(request).await.unwrap();
    assert!(response.status().is_success());
    let again = jsonrpc_request(&w.mcp.url(), 2, "tools/list", json!({}));
    assert!(client.oneshot(again).await.unwrap().status().is_success());
    assert_eq!(
        w.auth.stats().code_exchanges,
        1,
        "one login, then its token"
    );
}

/// A handler that panics fails the flow at once (its waiters are not left to their
/// timeout): spawned work records its failure even when its body panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_fails_the_request_at_once() {
    let w = World::new().await;
    let panicking = w.client(
        OAuthRetryLayer::wait(w.authorizer.clone(), |_: AuthorizationPrompt| async {
            if std::hint::black_box(true) {
                panic!("handler bug");
            }
            Ok::<(), BoxError>(())
        })
        .with_wait_timeout(Duration::from_secs(60)),
    );
    let started = std::time::Instant::now();
    let error = call_tool(panicking, &w.mcp.url(), &alice(), "whoami")
        .await
        .unwrap_err();
    match crate_error(&error) {
        Error::AuthorizationFailed { reason } => assert!(reason.contains("panicked"), "{reason}"),
        other => panic!("expected AuthorizationFailed, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "not the 60 s wait timeout"
    );
}

/// `AuthorizerBuilder::scopes` adds scopes to every authorization (the fixture's
/// metadata asks for none of its own).
#[tokio::test]
async fn builder_scopes_are_requested_with_the_servers() {
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let authorizer = Authorizer::builder(
        mcp.url(),
        Arc::new(MemoryStore::new()),
        "http://127.0.0.1:1/oauth/callback".parse().unwrap(),
    )
    .url_policy(UrlPolicy::default().allow_loopback_http())
    .scopes(["files:write", "files:read"])
    .build()
    .unwrap();
    let flow = authorizer
        .start(&Principal::new("acme", "alice"), &Default::default())
        .await
        .unwrap();
    let scopes = &flow.pending().request.scopes;
    assert_eq!(&scopes[..2], ["files:write", "files:read"], "{scopes:?}");
    let scope = flow
        .pending()
        .authorization_url
        .query_pairs()
        .find(|(name, _)| name == "scope")
        .map(|(_, value)| value.into_owned())
        .unwrap();
    assert_eq!(scope, "files:write files:read");
}

/// The outer layer keeps no copy of the request: the silent refresh layer below hands
/// its own back when an authorization is needed. Nothing of that hand-over reaches the
/// caller: the error is the crate's `Error` itself, not wrapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_caller_gets_is_the_crates_own_error() {
    let w = World::new().await;
    let client = w.client(OAuthRetryLayer::return_early(w.authorizer.clone()));
    let error = call_tool(client, &w.mcp.url(), &alice(), "whoami")
        .await
        .unwrap_err();
    let top = error
        .downcast_ref::<Error>()
        .unwrap_or_else(|| panic!("not the crate's error at the top: {error:?}"));
    assert!(
        matches!(top, Error::AuthorizationRequired { .. }),
        "{top:?}"
    );
}

/// A layer between the two sees the request again when it is replayed after the
/// authorization (the replay starts from what reached the silent refresh layer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_between_the_two_sees_the_replay() {
    let w = World::new().await;
    w.auth.set_consenting_user("alice");
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let between = {
        let seen = seen.clone();
        tower::util::MapRequestLayer::new(
            move |mut request: http::Request<tower_mcp_auth::ReplayBody>| {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                request
                    .headers_mut()
                    .insert("x-between", http::HeaderValue::from_static("1"));
                request
            },
        )
    };
    let silent = SilentRefreshLayer::new(
        RefreshCoordinator::new(w.store.clone()),
        w.authorizer.bindings(),
    );
    let browser = HeadlessBrowser::new(w.authorizer.completer());
    let client = OAuthRetryLayer::wait(w.authorizer.clone(), browser)
        .layer(between.layer(silent.layer(ReqwestTransport::new())));
    let mut request = jsonrpc_request(&w.mcp.url(), 1, "tools/call", json!({"name": "whoami"}));
    request.extensions_mut().insert(alice());
    let response = client.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let message = read_jsonrpc(&response).unwrap();
    assert_eq!(message["result"]["content"][0]["text"], "alice");
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(w.auth.stats().code_exchanges, 1);
}

/// Without a silent refresh layer below, nothing can be replayed: the 401 comes back as
/// it is and no authorization starts (nothing below would attach its token anyway).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_silent_refresh_layer_below_a_401_is_returned_as_it_is() {
    let w = World::new().await;
    let browser = HeadlessBrowser::new(w.authorizer.completer());
    let client =
        OAuthRetryLayer::wait(w.authorizer.clone(), browser).layer(ReqwestTransport::new());
    let mut request = jsonrpc_request(&w.mcp.url(), 1, "tools/list", json!({}));
    request.extensions_mut().insert(alice());
    let response = client.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(w.auth.stats().authorization_requests, 0);
    assert_eq!(w.auth.stats().registrations, 0);
}
