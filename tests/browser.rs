//! A real browser: headless Chromium (Debian's `chromium`, installed by the README's test
//! command) opens the start link the layer hands out, goes through the loopback
//! authorization server's interaction page (a cookie-bound redirect hop, as real
//! providers have) and lands on the crate's own callback endpoint. Each page a user can
//! meet is looked at in the browser; the success page is kept as a screenshot.
//!
//! Needs `chromium` on the PATH (or `CHROMIUM`); fails loudly without it.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_mcp_auth::store::MemoryStore;
use tower_mcp_auth::testing::{ReqwestTransport, TestAuthServer, TestMcpServer, jsonrpc_request};
use tower_mcp_auth::{
    Authorizer, OAuthRetryLayer, Principal, RefreshCoordinator, SilentRefreshLayer, UrlPolicy,
    layer::callback::BrowserBinding, layer::callback::CallbackService,
    layer::callback::callback_router, layer::oauth_retry::AuthorizationPrompt,
    oauth::AuthorizationCause,
};
use url::Url;

mod common;

use common::run_chromium;

/// Visible text of a DOM dump, roughly: tags dropped, whitespace folded.
fn text(dom: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    let mut in_style = false;
    for (i, c) in dom.char_indices() {
        match c {
            '<' => {
                in_tag = true;
                let rest = &dom[i..];
                if rest.starts_with("<style") {
                    in_style = true;
                } else if rest.starts_with("</style") {
                    in_style = false;
                }
            }
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag && !in_style => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_signs_in_through_the_start_link_and_the_callback() {
    let auth = TestAuthServer::start().await.unwrap();
    auth.set_interaction(true);
    let mcp = TestMcpServer::start(&auth).await.unwrap();

    // The app: its callback endpoint (and start endpoint) on a loopback port.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_origin = format!("http://{}", listener.local_addr().unwrap());
    let store = Arc::new(MemoryStore::new());
    let authorizer = Authorizer::builder(
        mcp.url(),
        store.clone(),
        format!("{app_origin}/oauth/callback").parse().unwrap(),
    )
    .client_name("Example Chat")
    .url_policy(UrlPolicy::default().allow_loopback_http())
    .start_url(format!("{app_origin}/oauth/start").parse().unwrap())
    .build()
    .unwrap();
    let callback = CallbackService::new(
        authorizer.completer(),
        // Plain http on loopback: the one case for cookies without `Secure`.
        BrowserBinding::new(b"browser test key: 32 random byte").insecure_cookies(),
    )
    .with_app_name("Example Chat");
    let app = callback_router("/oauth/callback", callback);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    // The handler opens the URL in Chromium, as a desktop app opens the system browser.
    let seen: Arc<Mutex<Vec<(Url, String)>>> = Arc::default();
    let handler = {
        let seen = seen.clone();
        move |prompt: AuthorizationPrompt| {
            let seen = seen.clone();
            async move {
                let url = prompt.url().clone();
                let dom = run_chromium(&url, "alice", "--dump-dom").await?;
                seen.lock().unwrap().push((url, dom));
                Ok::<(), BoxError>(())
            }
        }
    };
    let client = ServiceBuilder::new()
        .layer(
            OAuthRetryLayer::wait(authorizer.clone(), handler)
                .with_wait_timeout(Duration::from_secs(90)),
        )
        .layer(SilentRefreshLayer::new(
            RefreshCoordinator::new(store.clone()),
            authorizer.bindings(),
        ))
        .service(ReqwestTransport::new());
    let mut request = jsonrpc_request(&mcp.url(), 1, "tools/list", json!({}));
    request
        .extensions_mut()
        .insert(Principal::new("acme", "alice"));
    let response = client.clone().oneshot(request).await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(auth.stats().code_exchanges, 1);

    // The request was answered once the callback completed the flow; Chromium may still
    // be printing the page.
    let mut first = None;
    for _ in 0..600 {
        first = seen.lock().unwrap().first().cloned();
        if first.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (start, dom) = first.expect("the handler ran Chromium");
    assert_eq!(
        start.path(),
        "/oauth/start",
        "the layer handed out the start link"
    );
    let page = text(&dom);
    assert!(
        page.contains("Signed in") && page.contains("Example Chat") && page.contains("127.0.0.1"),
        "success page: {page}"
    );

    // A reload of the callback (no cookie any more): "already signed in", not "failed".
    let state = start
        .query_pairs()
        .find(|(k, _)| k == "flow")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let reload: Url = format!("{app_origin}/oauth/callback?code=used&state={state}")
        .parse()
        .unwrap();
    let page = text(&run_chromium(&reload, "reload", "--dump-dom").await.unwrap());
    assert!(page.contains("already signed in"), "reload: {page}");

    // A start link that names no flow.
    let bogus: Url = format!("{app_origin}/oauth/start?flow=made-up")
        .parse()
        .unwrap();
    let page = text(&run_chromium(&bogus, "bogus", "--dump-dom").await.unwrap());
    assert!(page.contains("not valid in this browser"), "bogus: {page}");

    // The user says no at the provider: told apart from a failure, description escaped.
    auth.set_authorization_error(Some(("access_denied", Some("<b>no</b> thanks"))));
    let flow = authorizer
        .start(
            &Principal::new("acme", "carol"),
            &AuthorizationCause::default(),
        )
        .await
        .unwrap();
    let page = text(
        &run_chromium(flow.pending().browser_url(), "carol", "--dump-dom")
            .await
            .unwrap(),
    );
    assert!(
        page.contains("Sign-in cancelled") && page.contains("access_denied"),
        "denied: {page}"
    );
    // The DOM serialises text escaped: the description is a text node, not markup.
    assert!(
        page.contains("&lt;b&gt;no&lt;/b&gt; thanks"),
        "shown as text, not markup: {page}"
    );
    auth.set_authorization_error(None);

    // The success page, kept as a screenshot (docs/callback-success.png is a copy).
    let flow = authorizer
        .start(
            &Principal::new("acme", "dave"),
            &AuthorizationCause::default(),
        )
        .await
        .unwrap();
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("callback-success.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        flow.pending().browser_url(),
        "dave",
        &format!("--screenshot={}", shot.display()),
    )
    .await
    .unwrap();
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    assert!(
        matches!(
            flow.outcome().await,
            Some(tower_mcp_auth::oauth::FlowOutcome::Completed(_))
        ),
        "the screenshot's flow completed too"
    );
    println!("success page screenshot: {}", shot.display());
}

/// Every page the endpoints can show, rendered by `DefaultPages` and looked at in
/// Chromium: the title a user reads, and the status the endpoint sends with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_reads_right_in_chromium() {
    use tower_mcp_auth::{
        layer::callback::CallbackPage, layer::callback::CallbackPages,
        layer::callback::DefaultPages,
    };
    let app = "Example <Chat>";
    let pages = [
        (
            CallbackPage::SignedIn {
                app,
                server: "mcp.example.com",
            },
            "Signed in",
            200,
        ),
        (
            CallbackPage::AlreadySignedIn { app },
            "Already signed in",
            200,
        ),
        (CallbackPage::Expired { app }, "Sign-in expired", 410),
        (
            CallbackPage::Denied {
                app,
                error: "access_denied",
                description: None,
            },
            "Sign-in cancelled",
            403,
        ),
        (
            CallbackPage::Denied {
                app,
                error: "invalid_scope",
                description: Some("scope x"),
            },
            "Sign-in refused",
            400,
        ),
        (
            CallbackPage::Denied {
                app,
                error: "server_error",
                description: None,
            },
            "Sign-in failed",
            502,
        ),
        (
            CallbackPage::Denied {
                app,
                error: "temporarily_unavailable",
                description: None,
            },
            "Sign-in unavailable",
            503,
        ),
        (CallbackPage::Failed { app }, "Sign-in failed", 502),
        (
            CallbackPage::InvalidLink { app },
            "Link not valid here",
            400,
        ),
        (CallbackPage::NotYours { app }, "Not your sign-in link", 403),
    ];
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pages");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, (page, title, status)) in pages.iter().enumerate() {
        assert_eq!(page.status().as_u16(), *status, "{page:?}");
        let file = dir.join(format!("page-{i}.html"));
        std::fs::write(&file, DefaultPages.render(page)).unwrap();
        let url = Url::from_file_path(&file).unwrap();
        let dom = run_chromium(&url, &format!("page-{i}"), "--dump-dom")
            .await
            .unwrap();
        let shown = text(&dom);
        assert!(shown.starts_with(title), "{page:?}: {shown}");
        // The app's name is text, not markup, wherever it appears.
        assert!(dom.contains("Example &lt;Chat&gt;"), "{page:?}: {dom}");
    }
}
