//! The callback endpoint over loopback HTTP, with the browser binding cookie.

mod common;

use std::sync::Arc;

use tower_mcp_auth::store::{CredentialStore, MemoryStore};
use tower_mcp_auth::testing::{TestAuthServer, TestMcpServer};
use tower_mcp_auth::{
    AuthHttpClient, AuthKey, Principal, ServerBinding, UrlPolicy, layer::callback::BrowserBinding,
    layer::callback::CallbackService, layer::callback::callback_router,
    oauth::AuthorizationCompleter, oauth::AuthorizationRequest, oauth::ClientConfig,
    oauth::FlowHandle, oauth::FlowOutcome, oauth::FlowStore, oauth::Registrar,
};
use url::Url;

struct World {
    auth: TestAuthServer,
    _mcp: TestMcpServer,
    store: Arc<MemoryStore>,
    flows: FlowStore,
    binding: ServerBinding,
    browser_binding: BrowserBinding,
    authorize: Url,
    callback: Url,
    _server: tokio::task::JoinHandle<()>,
}

async fn world() -> World {
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let policy = UrlPolicy::default().allow_loopback_http();
    let http = AuthHttpClient::reqwest();
    let metadata = common::discover_authorization_server(&mcp, None).await;

    // The app's callback endpoint on its own loopback port.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let callback: Url = format!("http://{}/oauth/callback", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let store = Arc::new(MemoryStore::new());
    let flows = FlowStore::new();
    let browser_binding =
        BrowserBinding::new(b"test key: 32 bytes of randomness").insecure_cookies();
    let completer = AuthorizationCompleter::new(flows.clone(), store.clone(), http.clone());
    let service = CallbackService::new(completer, browser_binding.clone())
        .with_app_name("Example Chat")
        // The app's session: a header naming the signed-in user (a cookie in real apps).
        .with_start_check(|request: &http::request::Parts, principal: &Principal| {
            request
                .headers
                .get("x-app-user")
                .is_some_and(|user| user == principal.subject())
        });
    let app = callback_router("/oauth/callback", service);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let client = Registrar::new(http, policy)
        .client_for(
            "acme",
            &metadata,
            &ClientConfig::new(callback.clone(), mcp.url(), "callback test"),
        )
        .await
        .unwrap();
    World {
        auth,
        _mcp: mcp,
        store,
        flows,
        binding: client.binding().unwrap(),
        browser_binding,
        authorize: metadata
            .authorization_endpoint
            .as_deref()
            .unwrap()
            .parse()
            .unwrap(),
        callback,
        _server: server,
    }
}

/// The browser visits `url`, with the binding cookie if it has one.
async fn visit(url: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut request = no_redirects().get(url);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    request.send().await.unwrap()
}

fn no_redirects() -> reqwest::Client {
    tower_mcp_auth::client::ReqwestService::builder()
        .expect("TLS")
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

impl World {
    fn key(&self) -> AuthKey {
        AuthKey::new(&Principal::new("acme", "alice"), self.binding.id())
    }

    /// Starts a flow as the app would: the browser gets a 302 with the binding cookie;
    /// then it visits the authorization server, which redirects back. Returns the flow,
    /// the cookie and the callback URL the browser is sent to.
    async fn start(&self) -> (FlowHandle, String, String) {
        let request = AuthorizationRequest::new(
            self.binding.clone(),
            self.authorize.clone(),
            self.callback.clone(),
        );
        let flow = self.flows.start_or_join(&self.key(), request).await;
        let start = self.browser_binding.start_response(flow.pending());
        let set_cookie = start.headers()["set-cookie"].to_str().unwrap();
        let cookie = set_cookie.split(';').next().unwrap().to_owned();
        let location = start.headers()["location"].to_str().unwrap();
        let at_auth = no_redirects().get(location).send().await.unwrap();
        assert_eq!(at_auth.status(), 302);
        let back = at_auth.headers()["location"].to_str().unwrap().to_owned();
        assert!(back.starts_with(self.callback.as_str()));
        (flow, cookie, back)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_callback_completes_the_flow_once() {
    let w = world().await;
    let (flow, cookie, back) = w.start().await;

    let response = visit(&back, Some(&cookie)).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0"),
        "one-shot cookie cleared"
    );
    let Some(FlowOutcome::Completed(generation)) = flow.outcome().await else {
        panic!("not completed")
    };
    assert_eq!(
        w.store.load(&w.key()).await.unwrap().unwrap().generation,
        generation
    );

    // Replayed (a reload), even with the cookie: nothing is exchanged again, and the
    // page says so instead of "failed".
    let replay = visit(&back, Some(&cookie)).await;
    assert_eq!(replay.status(), 200);
    assert!(replay.text().await.unwrap().contains("already signed in"));
    let reload_without_cookie = visit(&back, None).await;
    assert_eq!(reload_without_cookie.status(), 200);
    assert_eq!(w.auth.stats().code_exchanges, 1);
    assert_eq!(
        w.store.load(&w.key()).await.unwrap().unwrap().generation,
        generation
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_binding_cookie_nothing_changes() {
    let w = world().await;
    let (flow, cookie, back) = w.start().await;
    let state = flow.pending().state.expose().to_owned();

    let forged = format!("{}=00ff", w.browser_binding.cookie_name(&state));
    for forged_cookie in [None, Some(forged)] {
        let mut request = no_redirects().get(&back);
        if let Some(forged) = &forged_cookie {
            request = request.header("cookie", forged);
        }
        assert_eq!(request.send().await.unwrap().status(), 400);
    }
    // A forged error= without the cookie cannot fail the user's flow either.
    let forged_error = format!("{}?error=access_denied&state={state}", w.callback);
    assert_eq!(
        no_redirects()
            .get(&forged_error)
            .send()
            .await
            .unwrap()
            .status(),
        400
    );

    assert!(
        w.flows.find_by_state(&state).await.is_some(),
        "the flow is still pending"
    );
    assert_eq!(w.auth.stats().code_exchanges, 0);
    assert!(w.store.load(&w.key()).await.unwrap().is_none());

    // The real browser still completes it.
    let response = visit(&back, Some(&cookie)).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_error_fails_the_flow() {
    let w = world().await;
    let (flow, cookie, _) = w.start().await;
    let state = flow.pending().state.expose().to_owned();
    let denied = format!("{}?error=access_denied&state={state}", w.callback);
    let response = visit(&denied, Some(&cookie)).await;
    assert_eq!(response.status(), 403);
    assert!(matches!(flow.outcome().await, Some(FlowOutcome::Failed(_))));
    assert_eq!(w.auth.stats().code_exchanges, 0);
}

impl World {
    /// A flow whose browser URL is the app's start endpoint.
    async fn start_link(&self, user: &str) -> (FlowHandle, Url) {
        let start: Url = self.callback.join("/oauth/start").unwrap();
        let request = AuthorizationRequest::new(
            self.binding.clone(),
            self.authorize.clone(),
            self.callback.clone(),
        )
        .with_start_endpoint(start);
        let key = AuthKey::new(&Principal::new("acme", user), self.binding.id());
        let flow = self.flows.start_or_join(&key, request).await;
        let url = flow.pending().browser_url().clone();
        (flow, url)
    }
}

/// Issue #11 item 5: the documented wiring (open the URL the layer hands out) ended in
/// 400, because only an app-written start endpoint set the cookie. The service's own
/// start endpoint sets it; with an interaction page and its cookie hop in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_link_sets_the_cookie_and_the_flow_completes_through_the_callback() {
    let w = world().await;
    w.auth.set_interaction(true);
    let (flow, start) = w.start_link("alice").await;
    assert!(start.path().ends_with("/oauth/start"));
    // The start endpoint: 302 to the authorization server with the flow's cookie.
    let response = no_redirects()
        .get(start.as_str())
        .header("x-app-user", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    let set_cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    let state = flow.pending().state.expose().to_owned();
    assert!(set_cookie.starts_with(&w.browser_binding.cookie_name(&state)));
    assert!(set_cookie.contains("Path=/oauth/callback"), "{set_cookie}");
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"));
    let max_age: u64 = set_cookie
        .split("Max-Age=")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!((850..=900).contains(&max_age), "the flow's TTL: {max_age}");

    // The whole way, as a browser holding the app's session: start link, the
    // provider's interaction hop with its own cookie, then the callback endpoint.
    let (flow, start) = w.start_link("bob").await;
    tower_mcp_auth::testing::HeadlessBrowser::new(AuthorizationCompleter::new(
        w.flows.clone(),
        w.store.clone(),
        AuthHttpClient::reqwest(),
    ))
    .through_callback()
    .with_header(
        http::HeaderName::from_static("x-app-user"),
        http::HeaderValue::from_static("bob"),
    )
    .visit(&start)
    .await
    .unwrap();
    assert!(matches!(
        flow.outcome().await,
        Some(FlowOutcome::Completed(_))
    ));
    assert_eq!(w.auth.stats().code_exchanges, 1);
}

/// Issue #11 item 6: a start link sent to someone else must not bind their consent to
/// the sender's account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_link_opened_by_another_user_is_refused() {
    let w = world().await;
    let (flow, start) = w.start_link("mallory").await;
    let response = no_redirects()
        .get(start.as_str())
        .header("x-app-user", "victim")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(response.headers().get("set-cookie").is_none());
    assert!(
        w.flows
            .find_by_state(flow.pending().state.expose())
            .await
            .is_some(),
        "the flow is untouched"
    );
}

/// Issue #11 items 7 and 8: other apps' cookies (non-ASCII included) on the host, two
/// sign-ins in one browser, and pages that tell the cases apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_as_browsers_send_them_and_pages_people_understand() {
    let w = world().await;
    let (first, first_cookie, first_back) = w.start().await;
    // A second sign-in in the same browser (another user of a shared machine).
    let request =
        AuthorizationRequest::new(w.binding.clone(), w.authorize.clone(), w.callback.clone());
    let bob = AuthKey::new(&Principal::new("acme", "bob"), w.binding.id());
    let second = w.flows.start_or_join(&bob, request).await;
    let start = w.browser_binding.start_response(second.pending());
    let second_cookie = start.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert_ne!(first_cookie, second_cookie, "one cookie per flow");
    // The first flow's callback, with both cookies and a non-ASCII one of another app.
    let jar = format!("theme=d\u{e9}j\u{e0}-vu; {second_cookie}; {first_cookie}");
    let response = no_redirects()
        .get(&first_back)
        .header(
            "cookie",
            http::HeaderValue::from_bytes(jar.as_bytes()).unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let page = response.text().await.unwrap();
    assert!(
        page.contains("Example Chat") && page.contains("127.0.0.1"),
        "{page}"
    );
    assert!(matches!(
        first.outcome().await,
        Some(FlowOutcome::Completed(_))
    ));

    // Authorization-server errors are told apart, with 4xx/5xx statuses, escaped.
    let state = second.pending().state.expose().to_owned();
    let server_error = format!(
        "{}?error=server_error&error_description=%3Cscript%3Ealert(1)%3C%2Fscript%3E&state={state}",
        w.callback
    );
    let response = visit(&server_error, Some(&second_cookie)).await;
    assert_eq!(response.status(), 502);
    let page = response.text().await.unwrap();
    assert!(
        page.contains("&lt;script&gt;") && !page.contains("<script>"),
        "{page}"
    );
    assert!(matches!(
        second.outcome().await,
        Some(FlowOutcome::Failed(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_flow_says_it_expired() {
    let auth = TestAuthServer::start().await.unwrap();
    let flows = FlowStore::with_ttl(std::time::Duration::from_millis(200));
    let binding = BrowserBinding::new(b"k").insecure_cookies();
    let completer = AuthorizationCompleter::new(
        flows.clone(),
        Arc::new(MemoryStore::new()),
        AuthHttpClient::reqwest(),
    );
    let service = CallbackService::new(completer, binding.clone());
    let server_binding =
        ServerBinding::public_client("http://127.0.0.1:1/mcp", &auth.token_endpoint(), "c")
            .unwrap();
    let key = AuthKey::new(&Principal::new("acme", "erin"), server_binding.id());
    let flow = flows
        .start_or_join(
            &key,
            AuthorizationRequest::new(
                server_binding,
                format!("{}/authorize", auth.issuer()).parse().unwrap(),
                "http://127.0.0.1:1/oauth/callback".parse().unwrap(),
            ),
        )
        .await;
    let state = flow.pending().state.expose().to_owned();
    let cookie = format!(
        "{}={}",
        binding.cookie_name(&state),
        binding.cookie_value(&state)
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let request = http::Request::get(format!("/oauth/callback?code=c&state={state}"))
        .header("cookie", cookie)
        .body(())
        .unwrap();
    let response = tower::ServiceExt::oneshot(service, request).await.unwrap();
    assert_eq!(response.status(), 410);
    assert!(response.body().contains("expired"));
}

/// Issue #11 item 4: a callback whose connection dropped mid-exchange left the flow
/// claimed; every retry rejoined the dead flow and said "Sign-in failed", and waiting
/// requests hung. The exchange runs in its own task: it finishes, and a retried
/// callback reports the real outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_cut_off_mid_exchange_still_completes_and_a_retry_says_so() {
    let w = world().await;
    let (flow, cookie, back) = w.start().await;
    w.auth.set_latency(std::time::Duration::from_millis(600));
    let impatient = tower_mcp_auth::client::ReqwestService::builder()
        .expect("TLS")
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_millis(100))
        .build()
        .unwrap();
    let dropped = impatient.get(&back).header("cookie", &cookie).send().await;
    assert!(dropped.is_err(), "the browser gave up mid-exchange");
    // The retry arrives while the exchange is still running: it waits for it.
    let retry = visit(&back, Some(&cookie)).await;
    assert_eq!(retry.status(), 200);
    assert!(matches!(
        flow.outcome().await,
        Some(FlowOutcome::Completed(_))
    ));
    assert_eq!(
        w.auth.stats().code_exchanges,
        1,
        "one exchange, not cancelled"
    );
    assert!(w.store.load(&w.key()).await.unwrap().is_some());
}
