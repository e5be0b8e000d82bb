//! A session's standalone GET stream through the gateway: the gateway opens it upstream
//! as soon as the session exists, so a server-to-client request the upstream sends
//! there before the client's own GET arrives still reaches the client (directly, with
//! no stream open, the upstream would have nowhere to send it). An unclaimed stream is
//! closed after a few seconds; a resuming GET (`Last-Event-ID`) goes upstream as sent.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

/// What the upstream saw of its standalone streams.
#[derive(Default)]
struct Seen {
    /// GETs that opened a stream, and those with `Last-Event-ID`.
    opened: AtomicUsize,
    resumed: AtomicUsize,
    /// Streams whose reader went away.
    closed: AtomicUsize,
}

/// Counts a stream's end when its body is dropped (the reader closed the connection).
struct OnDrop(Arc<Seen>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.closed.fetch_add(1, Ordering::SeqCst);
    }
}

/// An MCP upstream with sessions whose standalone stream carries one server-to-client
/// request, sent the moment the stream opens, then stays open.
async fn upstream(seen: Arc<Seen>) -> String {
    let post = |body: String| async move {
        if body.contains("\"initialize\"") {
            let mut response = axum::Json(serde_json::json!({"jsonrpc": "2.0", "id": 1,
                "result": {"protocolVersion": "2025-11-25", "capabilities": {},
                "serverInfo": {"name": "early", "version": "0"}}}))
            .into_response();
            response
                .headers_mut()
                .insert("mcp-session-id", "session-1".parse().unwrap());
            response
        } else {
            StatusCode::ACCEPTED.into_response()
        }
    };
    let get = move |headers: HeaderMap| {
        let seen = seen.clone();
        async move {
            if headers.get("mcp-session-id").is_none() {
                return StatusCode::BAD_REQUEST.into_response();
            }
            seen.opened.fetch_add(1, Ordering::SeqCst);
            if headers.contains_key("last-event-id") {
                seen.resumed.fetch_add(1, Ordering::SeqCst);
            }
            let guard = OnDrop(seen);
            let first = "id: 1\ndata: {\"jsonrpc\":\"2.0\",\"id\":\"server-1\",\"method\":\"sampling/createMessage\",\"params\":{}}\n\n";
            let events = futures::stream::once(async move { Ok::<_, std::io::Error>(first) })
                .chain(futures::stream::pending())
                .map(move |event| {
                    let _ = &guard;
                    event
                });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(events))
                .unwrap()
        }
    };
    let app = axum::Router::new().route("/mcp", axum::routing::post(post).get(get));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn gateway(name: &str, upstream: &str) -> common::gateway::Proxy {
    let config = common::gateway::config(
        "127.0.0.1",
        &format!("\n[[upstream]]\nname = \"early\"\nurl = \"{upstream}\"\nauth = \"none\"\n"),
    );
    common::gateway::start(name, &config, &[])
}

async fn initialize(endpoint: &str) -> String {
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"sampling":{}},"clientInfo":{"name":"t","version":"0"}}}"#;
    let response = common::gateway::post(endpoint, Some("alice"), body.into()).await;
    assert_eq!(response.status(), 200);
    response.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

fn get(endpoint: &str, session: &str) -> reqwest::RequestBuilder {
    common::gateway::http()
        .get(endpoint)
        .header("accept", "text/event-stream")
        .header("x-user", "alice")
        .header("mcp-session-id", session)
}

/// Polls `condition` every 20 ms for up to 10 s.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_before_the_clients_get_still_reaches_the_client() {
    let seen = Arc::new(Seen::default());
    let upstream = upstream(seen.clone()).await;
    let gateway = gateway("early-stream", &upstream);
    let endpoint = format!("{}/early/mcp", gateway.url);

    let session = initialize(&endpoint).await;
    // The gateway opened the session's stream itself, and the upstream sent its request
    // there, before the client has asked for any stream.
    eventually("the gateway opens the stream", || {
        seen.opened.load(Ordering::SeqCst) == 1
    })
    .await;

    let response = get(&endpoint, &session).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "the upstream's stream, as the upstream answered"
    );
    let mut body = response.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("the request sent before the client's GET arrives")
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("sampling/createMessage"),
        "{first:?}"
    );
    // One stream upstream: the client's GET took the early one.
    assert_eq!(seen.opened.load(Ordering::SeqCst), 1);

    // The client goes away: so does the upstream stream.
    drop(body);
    eventually("the upstream stream closes with the client's", || {
        seen.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    // A client that comes back resumes with its last event id; that goes upstream.
    let resumed = get(&endpoint, &session)
        .header("last-event-id", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200);
    assert_eq!(seen.resumed.load(Ordering::SeqCst), 1);
    assert_eq!(seen.opened.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unclaimed_early_stream_is_closed_and_a_later_get_goes_upstream() {
    let seen = Arc::new(Seen::default());
    let upstream = upstream(seen.clone()).await;
    let gateway = gateway("early-unclaimed", &upstream);
    let endpoint = format!("{}/early/mcp", gateway.url);

    let session = initialize(&endpoint).await;
    eventually("the gateway opens the stream", || {
        seen.opened.load(Ordering::SeqCst) == 1
    })
    .await;
    // Nobody claims it: closed after the gateway's wait (5 s), not held for the session.
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.closed.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the unclaimed stream stayed open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A GET after that opens a stream of its own.
    let response = get(&endpoint, &session).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(seen.opened.load(Ordering::SeqCst), 2);
}

/// The `/metrics` line of `name` whose labels include every one of `labels`, if any.
fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(name) && labels.iter().all(|l| line.contains(l)))
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_streams_and_early_streams_from_the_first_request() {
    let seen = Arc::new(Seen::default());
    let upstream = upstream(seen.clone()).await;
    let gateway = gateway("early-metrics", &upstream);
    let endpoint = format!("{}/early/mcp", gateway.url);
    let scrape = || async {
        common::gateway::http()
            .get(format!("{}/metrics", gateway.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };

    let session = initialize(&endpoint).await;
    let text = scrape().await;
    let posts = [r#"upstream="early""#, r#"method="POST""#, r#"status="200""#];
    assert_eq!(
        metric(&text, "mcp_auth_proxy_requests_total", &posts),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "mcp_auth_proxy_request_duration_seconds_count",
            &posts[..2]
        ),
        Some(1.0),
        "{text}"
    );

    let response = get(&endpoint, &session).send().await.unwrap();
    let mut body = response.bytes_stream();
    body.next().await.unwrap().unwrap();
    let text = scrape().await;
    let early = [r#"upstream="early""#];
    assert_eq!(
        metric(&text, "mcp_auth_proxy_open_streams", &early),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "mcp_auth_proxy_early_streams_total",
            &[early[0], r#"outcome="claimed""#]
        ),
        Some(1.0),
        "{text}"
    );
    drop(body);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&scrape().await, "mcp_auth_proxy_open_streams", &early) != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "the closed stream is still counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
