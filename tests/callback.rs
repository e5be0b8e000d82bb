//! The callback endpoint over loopback HTTP, with the browser binding cookie.

mod common;

use std::sync::Arc;

use tower_mcp_auth::store::{CredentialStore, MemoryStore};
use tower_mcp_auth::testing::{TestAuthServer, TestMcpServer};
use tower_mcp_auth::{
    AuthHttpClient, AuthKey, AuthorizationCompleter, AuthorizationRequest, BrowserBinding,
    CallbackService, ClientConfig, FlowHandle, FlowOutcome, FlowStore, Principal, Registrar,
    ServerBinding, UrlPolicy, callback_router,
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
    let app = callback_router(
        "/oauth/callback",
        CallbackService::new(completer, browser_binding.clone()),
    );
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
    reqwest::Client::builder()
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

    // Replayed, even with the cookie: nothing is exchanged again.
    let replay = visit(&back, Some(&cookie)).await;
    assert_eq!(replay.status(), 400);
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

    for forged_cookie in [None, Some("mcp_oauth_binding=00ff".to_owned())] {
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
    assert_eq!(response.status(), 200);
    assert!(matches!(flow.outcome().await, Some(FlowOutcome::Failed(_))));
    assert_eq!(w.auth.stats().code_exchanges, 0);
}
