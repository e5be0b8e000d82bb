//! The gateway's edge as an attacker meets it: a DNS-rebinding page and a cross-site
//! POST in a real browser (headless Chromium), another user's session id, an
//! ambiguous identity header, a caller's query string, forwarding headers and an
//! upstream's cookies. Each test runs the real `mcp-auth-proxy` binary.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_mcp_auth::testing::{TestAuthServer, TestMcpServer};

use common::gateway::{call, config, http, message, post, start};

/// The gateway of `tests/proxy.rs`'s configuration with one `header` upstream (a
/// service account's token), trusting the identity header from loopback, as the
/// shipped example does.
async fn header_gateway(
    name: &str,
    extra: &str,
) -> (
    TestAuthServer,
    TestMcpServer,
    common::gateway::Proxy,
    String,
) {
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let token = auth.issue("gateway", "service-account", None);
    let bearer = format!("Bearer {}", token.access_token.expose());
    let upstreams = format!(
        "\n[[upstream]]\nname = \"tools\"\nurl = \"{}\"\nauth = \"header\"\nheader_name = \"authorization\"\nheader_value_env = \"TOOLS_BEARER\"\n",
        mcp.url()
    );
    let proxy = start(
        name,
        &format!("{extra}\n{}", config("127.0.0.1", &upstreams)),
        &[("TOOLS_BEARER", bearer.as_str())],
    );
    (auth, mcp, proxy, bearer)
}

async fn post_with(url: &str, headers: &[(&str, &str)], body: String) -> reqwest::Response {
    let mut request = http()
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn a_foreign_host_or_origin_is_refused_before_identity_and_only_json_is_posted() {
    // allowed_hosts / allowed_origins are top-level keys: before any table.
    let extra =
        "allowed_hosts = [\"gw.internal\"]\nallowed_origins = [\"https://chat.example.com\"]";
    let (_auth, mcp, proxy, _) = header_gateway("edge-headers", extra).await;
    let endpoint = format!("{}/tools/mcp", proxy.url);
    let port = proxy.url.rsplit(':').next().unwrap().to_owned();
    let json = ("content-type", "application/json");
    let admin = ("x-user", "admin");

    let before = mcp.stats().requests;
    // A rebound name claiming an identity the loopback front proxy would vouch for.
    let rebound = format!("rebind.attacker.example:{port}");
    let response = post_with(
        &endpoint,
        &[json, admin, ("host", rebound.as_str())],
        call(1, "whoami"),
    )
    .await;
    assert_eq!(response.status(), 403);
    // Another site's page.
    for origin in ["http://attacker.example", "null", "http://127.0.0.1:1"] {
        let response = post_with(
            &endpoint,
            &[json, admin, ("origin", origin)],
            call(1, "whoami"),
        )
        .await;
        assert_eq!(response.status(), 403, "{origin}");
    }
    // A simple (preflight-free) cross-site POST: not JSON.
    for kind in ["text/plain", "application/x-www-form-urlencoded"] {
        let response = post_with(
            &endpoint,
            &[("content-type", kind), admin],
            call(1, "whoami"),
        )
        .await;
        assert_eq!(response.status(), 415, "{kind}");
    }
    assert_eq!(
        mcp.stats().requests,
        before,
        "nothing refused reached the upstream"
    );

    // The gateway's own origin, the configured host and origin, an IP literal, localhost.
    let own = format!("http://127.0.0.1:{port}");
    let configured = format!("gw.internal:{port}");
    let localhost = format!("localhost:{port}");
    for headers in [
        vec![json, admin, ("origin", own.as_str())],
        vec![json, admin, ("host", configured.as_str())],
        vec![json, admin, ("origin", "https://chat.example.com")],
        vec![json, admin, ("host", localhost.as_str())],
    ] {
        let response = post_with(&endpoint, &headers, call(1, "whoami")).await;
        assert_eq!(response.status(), 200, "{headers:?}");
    }
}

/// A DNS-rebinding attacker in miniature: `rebind.attacker.test` resolves to loopback
/// (Chromium's host-resolver rule), its port first serves the attacker's page and then,
/// as a rebound name does, reaches the gateway: every later connection is piped there.
struct RebindingSite {
    addr: SocketAddr,
}

impl RebindingSite {
    async fn start(page: String, gateway: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let page = page.clone();
                tokio::spawn(async move {
                    let mut first = [0u8; 16];
                    let Ok(n) = inbound.peek(&mut first).await else {
                        return;
                    };
                    if first[..n].starts_with(b"GET /attack") {
                        let mut request = vec![0u8; 8192];
                        let _ = inbound.read(&mut request).await;
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                            page.len()
                        );
                        let _ = inbound.write_all(response.as_bytes()).await;
                        return;
                    }
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(gateway).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        Self { addr }
    }
}

/// Headless Chromium on `url`, `rebind.attacker.test` resolving to loopback, the page's
/// scripts given time to finish; returns the DOM.
async fn chromium_on_attacker_page(url: &str, name: &str) -> String {
    common::run_chromium_with(
        &url.parse().unwrap(),
        name,
        &[
            "--host-resolver-rules=MAP rebind.attacker.test 127.0.0.1",
            "--virtual-time-budget=15000",
            "--dump-dom",
        ],
    )
    .await
    .unwrap_or_else(|error| panic!("{error}"))
}

/// The text of `<pre id="out">` in a DOM dump.
fn out(dom: &str) -> String {
    let start = dom.find("<pre id=\"out\">").expect("the page's output") + 14;
    let end = dom[start..].find("</pre>").unwrap() + start;
    dom[start..end].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_a_rebinding_page_and_a_cross_site_post_reach_no_tool() {
    // 1. DNS rebinding against the shipped configuration (identity header trusted from
    // loopback): the page, same-origin with the rebound name, claims `admin`.
    let (_auth, mcp, proxy, _) = header_gateway("edge-rebinding", "").await;
    let gateway: SocketAddr = proxy.url.trim_start_matches("http://").parse().unwrap();
    let call = call(1, "whoami");
    let page = format!(
        r#"<!doctype html><pre id="out">pending</pre><script>
fetch("/tools/mcp", {{method: "POST", body: {body},
  headers: {{"content-type": "application/json", "accept": "application/json, text/event-stream", "x-user": "admin"}}}})
  .then(async r => document.getElementById("out").textContent = "status " + r.status + " " + await r.text())
  .catch(e => document.getElementById("out").textContent = "failed " + e);
</script>"#,
        body = serde_json::to_string(&call).unwrap()
    );
    let site = RebindingSite::start(page, gateway).await;
    let before = mcp.stats().requests;
    let dom = chromium_on_attacker_page(
        &format!("http://rebind.attacker.test:{}/attack", site.addr.port()),
        "rebinding",
    )
    .await;
    let seen = out(&dom);
    assert!(
        seen.starts_with("status 403"),
        "the rebound page got: {seen}"
    );
    assert_eq!(mcp.stats().requests, before, "nothing reached the upstream");

    // 2. A cross-site POST (no-cors, text/plain: no preflight) against a single-user
    // gateway, whose every caller acts as its one user.
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let token = auth.issue("gateway", "workstation-user", None);
    let bearer = format!("Bearer {}", token.access_token.expose());
    let anonymous = format!(
        "listen = \"127.0.0.1:0\"\n[store]\nsqlite = \"gateway.db\"\n[identity]\nmode = \"anonymous\"\n\n[[upstream]]\nname = \"tools\"\nurl = \"{}\"\nauth = \"header\"\nheader_name = \"authorization\"\nheader_value_env = \"TOOLS_BEARER\"\n",
        mcp.url()
    );
    let single = start(
        "edge-cross-site",
        &anonymous,
        &[("TOOLS_BEARER", bearer.as_str())],
    );
    let page = format!(
        r#"<!doctype html><pre id="out">pending</pre><script>
fetch("{target}/tools/mcp", {{method: "POST", mode: "no-cors", body: {body},
  headers: {{"content-type": "text/plain"}}}})
  .then(() => document.getElementById("out").textContent = "sent")
  .catch(e => document.getElementById("out").textContent = "failed " + e);
</script>"#,
        target = single.url,
        body = serde_json::to_string(&call).unwrap()
    );
    let unrelated: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let site = RebindingSite::start(page, unrelated).await;
    let dom = chromium_on_attacker_page(
        &format!("http://rebind.attacker.test:{}/attack", site.addr.port()),
        "cross-site",
    )
    .await;
    assert_eq!(out(&dom), "sent", "the page ran");
    assert_eq!(
        mcp.stats().requests,
        0,
        "the cross-site POST reached the upstream"
    );
}

fn initialize() -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "edge-test", "version": "1"}}})
    .to_string()
}

async fn post_in_session(url: &str, user: &str, session: &str) -> reqwest::Response {
    post_with(
        url,
        &[
            ("content-type", "application/json"),
            ("x-user", user),
            ("mcp-session-id", session),
        ],
        call(2, "whoami"),
    )
    .await
}

#[tokio::test]
async fn a_session_answers_only_the_user_who_created_it_on_every_replica() {
    let (_auth, mcp, proxy, bearer) = header_gateway("edge-sessions", "").await;
    let endpoint = format!("{}/tools/mcp", proxy.url);
    let response = post(&endpoint, Some("alice"), initialize()).await;
    assert_eq!(response.status(), 200);
    let session = response.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();

    let response = post_in_session(&endpoint, "alice", &session).await;
    assert_eq!(response.status(), 200);
    let before = mcp.stats().requests;
    let response = post_in_session(&endpoint, "bob", &session).await;
    assert_eq!(response.status(), 404, "Bob inside Alice's session");
    let response = post_in_session(&endpoint, "alice", "a-session-nobody-created").await;
    assert_eq!(response.status(), 404);
    // One plain value or none: a second value, or one the check could read otherwise
    // than the upstream, is refused.
    let response = post_with(
        &endpoint,
        &[
            ("content-type", "application/json"),
            ("x-user", "bob"),
            ("mcp-session-id", "a-session-of-bobs"),
            ("mcp-session-id", &session),
        ],
        call(2, "whoami"),
    )
    .await;
    assert_eq!(response.status(), 400);
    let response = post_with(
        &endpoint,
        &[
            ("content-type", "application/json"),
            ("x-user", "bob"),
            ("mcp-session-id", &format!("{session} ")),
        ],
        call(2, "whoami"),
    )
    .await;
    assert_ne!(response.status(), 200);
    assert_eq!(
        mcp.stats().requests,
        before,
        "refused requests reached the upstream"
    );

    // A second replica on the same store knows the owner.
    let replica = start(
        "edge-sessions",
        &std::fs::read_to_string(proxy.dir.join("proxy.toml")).unwrap(),
        &[("TOOLS_BEARER", bearer.as_str())],
    );
    let at_replica = format!("{}/tools/mcp", replica.url);
    assert_eq!(
        post_in_session(&at_replica, "bob", &session).await.status(),
        404
    );
    assert_eq!(
        post_in_session(&at_replica, "alice", &session)
            .await
            .status(),
        200
    );
}

/// An upstream that answers every POST with what it received: target, headers; and
/// tries to set a cookie.
async fn echo_upstream() -> (String, Arc<Mutex<Vec<Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::post(move |request: axum::extract::Request| {
            let record = record.clone();
            async move {
                let headers: serde_json::Map<String, Value> = request
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), json!(v.to_str().unwrap_or("?"))))
                    .collect();
                let seen = json!({"target": request.uri().to_string(), "headers": headers});
                record.lock().unwrap().push(seen.clone());
                (
                    [
                        ("content-type", "application/json"),
                        ("set-cookie", "planted=1; Path=/oauth"),
                    ],
                    json!({"jsonrpc": "2.0", "id": 1, "result": seen}).to_string(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp?tenant=acme", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test]
async fn identity_query_forwarding_headers_and_upstream_cookies_stay_in_their_place() {
    let (upstream, seen) = echo_upstream().await;
    let upstreams =
        format!("\n[[upstream]]\nname = \"echo\"\nurl = \"{upstream}\"\nauth = \"none\"\n");
    let proxy = start("edge-lower", &config("127.0.0.1", &upstreams), &[]);
    let endpoint = format!("{}/echo/mcp", proxy.url);
    let json = ("content-type", "application/json");

    // Several identities: refused, whichever would have won.
    for headers in [
        vec![json, ("x-user", "alice"), ("x-user", "admin")],
        vec![json, ("x-user", "alice, admin")],
    ] {
        let response = post_with(&endpoint, &headers, call(1, "x")).await;
        assert_eq!(response.status(), 400, "{headers:?}");
    }
    assert!(seen.lock().unwrap().is_empty());

    // The configured query parameters stay; the caller's own are added.
    let response = post_with(
        &format!("{endpoint}?tenant=evil&cursor=7"),
        &[
            json,
            ("x-user", "alice"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-host", "admin.internal"),
            ("forwarded", "for=10.0.0.1"),
            ("x-real-ip", "10.0.0.1"),
        ],
        call(1, "x"),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("set-cookie").is_none(),
        "an upstream set a cookie on the gateway's origin"
    );
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let answer = message(&content_type, &response.text().await.unwrap());
    let target = answer["result"]["target"].as_str().unwrap();
    assert_eq!(target, "/mcp?tenant=acme&cursor=7");
    let headers = answer["result"]["headers"].as_object().unwrap();
    for name in [
        "x-forwarded-for",
        "x-forwarded-host",
        "forwarded",
        "x-real-ip",
        "x-user",
    ] {
        assert!(
            !headers.contains_key(name),
            "{name} reached the upstream: {headers:?}"
        );
    }
}

#[tokio::test]
async fn a_proxy_from_the_environment_never_carries_the_gateways_requests() {
    // A loopback CONNECT proxy that counts who reached it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", listener.local_addr().unwrap());
    let reached = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = reached.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = vec![0u8; 1024];
            let n = stream.read(&mut head).await.unwrap_or(0);
            let line = String::from_utf8_lossy(&head[..n])
                .lines()
                .next()
                .unwrap_or("")
                .to_owned();
            record.lock().unwrap().push(line);
            let _ = stream
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    // An internal name the URL policy would never resolve to (nor reach).
    let upstreams = "\n[[upstream]]\nname = \"internal\"\nurl = \"https://metadata.internal.test/mcp\"\nauth = \"none\"\n";
    let gateway = start(
        "edge-proxy",
        &config("127.0.0.1", upstreams),
        &[
            ("HTTPS_PROXY", proxy_url.as_str()),
            ("HTTP_PROXY", proxy_url.as_str()),
            ("ALL_PROXY", proxy_url.as_str()),
            ("https_proxy", proxy_url.as_str()),
        ],
    );
    let response = post(
        &format!("{}/internal/mcp", gateway.url),
        Some("alice"),
        call(1, "x"),
    )
    .await;
    assert_eq!(response.status(), 502, "the name does not resolve here");
    assert!(
        reached.lock().unwrap().is_empty(),
        "the environment's proxy carried a request: {:?}",
        reached.lock().unwrap()
    );
}

/// The gateway's store at rest: created 0600, sealed with `[store] sealing_key_env`,
/// and what an unsealed store held sealed once by `mcp-auth-proxy seal-store`.
#[tokio::test]
async fn the_gateways_store_is_private_and_sealed() {
    use std::os::unix::fs::PermissionsExt;
    use tower_mcp_auth::store::{CredentialStore, SqliteStore};
    use tower_mcp_auth::{AuthKey, Principal, Secret, ServerBinding, TokenSet};

    let dir = common::gateway::dir("edge-at-rest");
    let db = dir.join("gateway.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    // What an unsealed gateway stored.
    let binding =
        ServerBinding::public_client("https://mcp.example/mcp", "https://as.example/token", "c")
            .unwrap();
    let key = AuthKey::new(&Principal::new("default", "alice"), binding.id());
    let unsealed = SqliteStore::open(&db).unwrap();
    let tokens = TokenSet::new(Secret::new("alices-access-token"))
        .with_refresh_token(Secret::new("alices-refresh-token"));
    unsealed.compare_and_swap(&key, None, tokens).await.unwrap();
    drop(unsealed);
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", db.display());
        if let Ok(metadata) = std::fs::metadata(&path) {
            assert_eq!(metadata.permissions().mode() & 0o777, 0o600, "{path}");
        }
    }

    let sealing = format!("2026-12:{},2026-06:{}", "ab".repeat(32), "cd".repeat(32));
    let config = config(
        "127.0.0.1",
        "\n[[upstream]]\nname = \"x\"\nurl = \"http://127.0.0.1:9/mcp\"\nauth = \"none\"\n",
    )
    .replace(
        "[store]\n",
        "[store]\nsealing_key_env = \"GATEWAY_SEALING_KEYS\"\n",
    );
    let path = dir.join("proxy.toml");
    std::fs::write(&path, &config).unwrap();
    let run = |command: &str, keys: &str| {
        std::process::Command::new(common::gateway::BINARY)
            .args([command, "--config", path.to_str().unwrap()])
            .env("GATEWAY_SEALING_KEYS", keys)
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    let bad = run("check", "2026-12:short");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("sealing_key_env"));

    let sealed = run("seal-store", &sealing);
    let said = String::from_utf8_lossy(&sealed.stdout);
    assert!(
        sealed.status.success(),
        "{}",
        String::from_utf8_lossy(&sealed.stderr)
    );
    assert!(said.contains("sealed 1 credentials"), "{said}");
    let raw = rusqlite::Connection::open(&db).unwrap();
    let stored: String = raw
        .query_row(
            "SELECT access_token || refresh_token FROM credentials",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert!(!stored.contains("alices-"), "in the clear: {stored}");
    assert!(stored.starts_with("sealed:v2:2026-12:"), "{stored}");

    // The gateway serves with the keys; a store file others can read is reported.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut child = std::process::Command::new(common::gateway::BINARY)
        .args(["serve", "--config", path.to_str().unwrap()])
        .env("GATEWAY_SEALING_KEYS", &sealing)
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("listening on"), "{line}");
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("readable by other users"), "{log}");
    assert!(!log.contains("stored unsealed"), "{log}");
}

/// What is the gateway's to answer gets a JSON-RPC answer from it: a body that is not
/// JSON (-32700), a body over the cap whether its length was declared or it streamed
/// (413, one format); a method the gateway does not know passes through untouched.
#[tokio::test]
async fn the_gateway_answers_bad_bodies_itself_in_json_rpc() {
    let (_auth, mcp, proxy, _) = header_gateway("edge-bodies", "").await;
    let endpoint = format!("{}/tools/mcp", proxy.url);
    let json = ("content-type", "application/json");
    let user = ("x-user", "alice");
    let before = mcp.stats().requests;

    let response = post_with(&endpoint, &[json, user], "<html>not json</html>".into()).await;
    assert_eq!(response.status(), 400);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], -32700, "{answer}");

    // The configuration's cap is 64 KiB: once with Content-Length, once chunked.
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"x","params":"{}"}}"#,
        "a".repeat(70_000)
    );
    let declared = post_with(&endpoint, &[json, user], big.clone()).await;
    let chunks = futures::stream::iter(
        big.into_bytes()
            .chunks(8192)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let streamed = http()
        .post(&endpoint)
        .header("content-type", "application/json")
        .header("x-user", "alice")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    for response in [declared, streamed] {
        assert_eq!(response.status(), 413);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        let answer: Value = response.json().await.unwrap();
        assert_eq!(
            answer["error"]["message"], "request body too large",
            "{answer}"
        );
    }
    assert_eq!(mcp.stats().requests, before, "nothing reached the upstream");

    // An unknown method is the upstream's to answer.
    let response = post_with(
        &endpoint,
        &[json, user],
        json!({"jsonrpc": "2.0", "id": 9, "method": "vendor/unknown"}).to_string(),
    )
    .await;
    assert_eq!(mcp.stats().requests, before + 1, "passed through");
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let answer = message(&content_type, &response.text().await.unwrap());
    assert_eq!(answer["id"], 9, "the upstream's own answer: {answer}");
}

/// A gateway built in code (not from a file) with browser sign-in and no cookie key is
/// refused: cookies signed with an empty key could be forged by anyone.
#[test]
fn a_gateway_with_sign_in_and_no_cookie_key_is_refused() {
    let dir = common::gateway::dir("no-cookie-key");
    let text = format!(
        "listen = \"127.0.0.1:0\"\npublic_url = \"https://gw.example.com\"\ncookie_key_env = \"KEY\"\n[store]\nsqlite = \"{}\"\n[identity]\nmode = \"anonymous\"\n[[upstream]]\nname = \"docs\"\nurl = \"https://mcp.example.com/mcp\"\nauth = \"oauth\"\n",
        dir.join("gateway.db").display()
    );
    let key = |_: &str| Some("0123456789abcdef0123456789abcdef".to_owned());
    let mut config = mcp_auth_proxy::ProxyConfig::parse(&text, &key).unwrap();
    config.cookie_key = None;
    let error = mcp_auth_proxy::Gateway::new(&config)
        .err()
        .expect("refused");
    assert!(
        matches!(error, mcp_auth_proxy::GatewayError::MissingCookieKey),
        "{error}"
    );
}
