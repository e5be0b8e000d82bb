//! The `mcp-auth-proxy` binary, run as a user would: a TOML file, secrets from the
//! environment, real upstream MCP servers on loopback.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tower_mcp_auth::testing::{TestAuthServer, TestMcpServer, TestUpstream};

use common::gateway::{BINARY, call, config, dir, free_port, http, message, post, start};

#[tokio::test]
async fn header_auth_is_added_the_callers_token_stays_home_and_sse_streams() {
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let token = auth.issue("gateway", "service-account", None);
    let bearer = format!("Bearer {}", token.access_token.expose());
    let upstreams = format!(
        r#"
[[upstream]]
name = "tools"
url = "{}"
auth = "header"
header_name = "authorization"
header_value_env = "TOOLS_BEARER"
"#,
        mcp.url()
    );
    let proxy = start(
        "header",
        &config("127.0.0.1", &upstreams),
        &[("TOOLS_BEARER", bearer.as_str())],
    );
    let endpoint = format!("{}/tools/mcp", proxy.url);

    for sse in [false, true] {
        mcp.set_sse(sse);
        let response = post(&endpoint, Some("alice"), call(1, "whoami")).await;
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(content_type.starts_with("text/event-stream"), sse);
        let body = response.text().await.unwrap();
        assert_eq!(
            message(&content_type, &body)["result"]["content"][0]["text"],
            "service-account"
        );
    }
    let seen = mcp.seen_tokens();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|t| t == token.access_token.expose()),
        "the upstream saw another token: {seen:?}"
    );

    // A body that is not JSON is the gateway's to answer: a JSON-RPC parse error, the
    // upstream never sees it.
    let before = mcp.stats().requests;
    let response = post(&endpoint, Some("alice"), "{not json".into()).await;
    assert_eq!(response.status(), 400);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], -32700, "{answer}");
    assert_eq!(mcp.stats().requests, before);
    let health = http()
        .get(format!("{}/healthz", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = http()
        .get(format!("{}/readyz", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn bad_input_gets_a_clear_answer() {
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let upstreams = format!(
        "\n[[upstream]]\nname = \"open\"\nurl = \"{}\"\nauth = \"none\"\n",
        mcp.url()
    );
    let proxy = start("bad-input", &config("127.0.0.1", &upstreams), &[]);

    // Unknown upstream.
    let response = post(
        &format!("{}/nope/mcp", proxy.url),
        Some("alice"),
        call(1, "echo"),
    )
    .await;
    assert_eq!(response.status(), 404);
    // No identity from a trusted address: 401 with a challenge.
    let response = post(&format!("{}/open/mcp", proxy.url), None, call(1, "echo")).await;
    assert_eq!(response.status(), 401);
    assert!(response.headers().contains_key("www-authenticate"));
    // Oversize body: 413, nothing reaches the upstream.
    let before = mcp.stats().requests;
    let big = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\",\"params\":\"{}\"}}",
        "a".repeat(70_000)
    );
    let response = post(&format!("{}/open/mcp", proxy.url), Some("alice"), big).await;
    assert_eq!(response.status(), 413);
    assert_eq!(mcp.stats().requests, before);
    // Without credentials the upstream answers 401 itself; the gateway passes it on.
    let response = post(
        &format!("{}/open/mcp", proxy.url),
        Some("alice"),
        call(1, "echo"),
    )
    .await;
    assert_eq!(response.status(), 401);

    // A gateway that trusts only another address refuses a spoofed identity header.
    let strict = start("strict", &config("10.9.9.9", &upstreams), &[]);
    let before = mcp.stats().requests;
    let response = post(
        &format!("{}/open/mcp", strict.url),
        Some("admin"),
        call(1, "echo"),
    )
    .await;
    assert_eq!(response.status(), 403);
    assert_eq!(mcp.stats().requests, before, "nothing forwarded");
}

#[test]
fn help_and_version_exit_0_with_every_option_explained() {
    let run = |args: &[&str]| {
        let output = Command::new(BINARY).args(args).output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    for args in [&["--help"][..], &["-h"], &["help"]] {
        let (code, text) = run(args);
        assert_eq!(code, Some(0), "{args:?}");
        for command in ["serve", "check", "seal-store", "stdio"] {
            assert!(text.contains(command), "{args:?} lists {command}: {text}");
        }
    }
    let (code, text) = run(&["--version"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        text.trim(),
        format!("mcp-auth-proxy {}", env!("CARGO_PKG_VERSION"))
    );
    let (code, text) = run(&["serve", "--help"]);
    assert_eq!(code, Some(0));
    assert!(
        text.contains("--config") && text.contains("MCP_AUTH_PROXY_CONFIG"),
        "{text}"
    );
    let (code, text) = run(&["stdio", "--help"]);
    assert_eq!(code, Some(0));
    for option in [
        "--store",
        "--browser-command",
        "--no-browser",
        "--scope",
        "--client-id",
        "--client-secret-env",
        "--issuer",
        "--header",
        "--sign-in-timeout",
        "--allow-loopback-http",
        "MCP_AUTH_PROXY_STORE",
    ] {
        assert!(
            text.contains(option),
            "stdio --help explains {option}: {text}"
        );
    }
    // A usage error: exit 2, with what was wrong.
    let output = Command::new(BINARY)
        .args(["stdio", "--frobnicate"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--frobnicate"));
}

#[test]
fn check_explains_every_error_with_its_line() {
    let dir = dir("check");
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        config(
            "127.0.0.1",
            "\n[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:1/mcp\"\nauth = \"none\"\n",
        ),
    )
    .unwrap();
    let output = Command::new(BINARY)
        .args(["check", "--config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("ok (1 upstream"));

    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        config(
            "127.0.0.1",
            "\n[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:1/mcp\"\nauth = \"header\"\nheader_name = \"x-key\"\nheader_value_env = \"NOT_SET_ANYWHERE\"\n",
        ),
    )
    .unwrap();
    let output = Command::new(BINARY)
        .args(["check", "--config", bad.to_str().unwrap()])
        .env_remove("NOT_SET_ANYWHERE")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 17:") && stderr.contains("NOT_SET_ANYWHERE"),
        "{stderr}"
    );
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly() {
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let upstreams = format!(
        "\n[[upstream]]\nname = \"a\"\nurl = \"{}\"\nauth = \"none\"\n",
        mcp.url()
    );
    let mut proxy = start("sigterm", &config("127.0.0.1", &upstreams), &[]);
    let pid = proxy.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = proxy.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_show_the_breaker_and_no_identity() {
    let upstream = TestUpstream::start().await.unwrap();
    upstream.set_status(503);
    let upstreams = format!(
        "\n[[upstream]]\nname = \"flaky\"\nurl = \"{}\"\nauth = \"none\"\n",
        upstream.url()
    );
    let proxy = start("metrics", &config("127.0.0.1", &upstreams), &[]);
    let endpoint = format!("{}/flaky/mcp", proxy.url);
    let mut statuses = Vec::new();
    for id in 0..8 {
        statuses.push(
            post(&endpoint, Some("alice-metrics"), call(id, "echo"))
                .await
                .status()
                .as_u16(),
        );
    }
    // Five upstream failures pass through, then the circuit refuses with 503 itself.
    assert_eq!(&statuses[..5], &[503; 5], "{statuses:?}");
    let text = http()
        .get(format!("{}/metrics", proxy.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Open once; each half-open probe that fails (the upstream keeps answering 503, and
    // on a loaded machine the 250 ms backoff can pass within the loop) opens it again.
    let count = |to: &str| {
        let prefix = format!("mcp_auth_breaker_transitions_total{{to=\"{to}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .map_or(0, |n| n.trim().parse::<u64>().unwrap())
    };
    assert!(count("open") >= 1, "{text}");
    assert_eq!(count("open"), count("half_open") + 1, "{text}");
    assert!(
        text.contains("mcp_auth_breaker_refusals_total{reason=\"open\"}"),
        "{text}"
    );
    assert!(
        !text.contains("alice-metrics") && !text.contains("127.0.0.1"),
        "{text}"
    );
}

fn oauth_config(port: u16) -> String {
    format!(
        r#"listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
cookie_key_env = "GATEWAY_COOKIE_KEY"
allow_loopback_http = true

[store]
sqlite = "gateway.db"

[identity]
mode = "trusted-header"
header = "x-user"
trusted_sources = ["127.0.0.1"]
"#
    )
}

async fn post_as(
    url: &str,
    user: &str,
    session: Option<&str>,
    body: Value,
) -> (Value, Option<String>) {
    let mut request = http()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("x-user", user)
        .body(body.to_string());
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    let response = request.send().await.unwrap();
    let session = response
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = response.text().await.unwrap();
    (message(&content_type, &text), session)
}

fn initialize(id: u64, url_elicitation: bool) -> Value {
    let capabilities = if url_elicitation {
        json!({"elicitation": {"form": {}, "url": {}}})
    } else {
        json!({})
    };
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": capabilities,
        "clientInfo": {"name": "proxy-test", "version": "1"}}})
}

#[tokio::test]
async fn oauth_upstream_connect_first_then_the_users_own_token_even_after_a_restart() {
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let config = format!(
        "{}\n[[upstream]]\nname = \"docs\"\nurl = \"{}\"\nauth = \"oauth\"\n",
        oauth_config(port),
        mcp.url()
    );
    let key = [(
        "GATEWAY_COOKIE_KEY",
        "0123456789abcdef0123456789abcdef-test",
    )];
    let proxy = start("oauth", &config, &key);
    assert_eq!(proxy.url, public);
    let endpoint = format!("{public}/docs/mcp");

    // Alice's client declared URL elicitation: MCP's -32042 with the sign-in link.
    let (answer, _) = post_as(&endpoint, "alice", None, initialize(1, true)).await;
    assert_eq!(answer["id"], 1, "{answer}");
    assert_eq!(answer["error"]["code"], -32042, "{answer}");
    let elicitation = &answer["error"]["data"]["elicitations"][0];
    assert_eq!(elicitation["mode"], "url");
    let link = elicitation["url"].as_str().unwrap().to_owned();
    assert!(
        link.starts_with(&format!("{public}/oauth/docs/start?flow=")),
        "{link}"
    );
    // Bob's client did not: a tool result that shows him his own link.
    let (answer, _) = post_as(&endpoint, "bob", None, initialize(1, false)).await;
    assert_eq!(answer["error"]["code"], -32001, "{answer}");
    let call = serde_json::from_str::<Value>(&call(2, "whoami")).unwrap();
    let (answer, _) = post_as(&endpoint, "bob", None, call.clone()).await;
    assert_eq!(answer["result"]["isError"], true, "{answer}");
    let text = answer["result"]["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("{public}/oauth/docs/start?flow=")),
        "{text}"
    );
    assert_eq!(auth.stats().code_exchanges, 0);
    // A body that is not JSON at all is a parse error, the gateway's own answer.
    let garbled = http()
        .post(&endpoint)
        .header("x-user", "carol")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(garbled.status(), 400);
    let answer: Value = garbled.json().await.unwrap();
    assert_eq!(answer["error"]["code"], -32700, "{answer}");
    // JSON that is not JSON-RPC gets a JSON-RPC error with the link, no crash.
    let malformed = http()
        .post(&endpoint)
        .header("x-user", "carol")
        .header("content-type", "application/json")
        .body(r#"{"not":"json-rpc"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 403);
    let answer: Value = malformed.json().await.unwrap();
    assert!(
        answer["id"].is_null() && answer["error"]["data"]["url"].is_string(),
        "{answer}"
    );

    // Alice's link is hers: Bob's browser is refused at the start endpoint.
    let callback: url::Url = format!("{public}/oauth/docs/callback").parse().unwrap();
    let as_user = |user: &str| {
        tower_mcp_auth::testing::HeadlessBrowser::for_redirect_uri(callback.clone())
            .with_header("x-user".parse().unwrap(), user.parse().unwrap())
    };
    assert!(as_user("bob").visit(&link.parse().unwrap()).await.is_err());
    assert_eq!(auth.stats().code_exchanges, 0);
    // Her own browser signs her in, through the gateway's callback.
    auth.set_consenting_user("alice");
    as_user("alice")
        .visit(&link.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(auth.stats().code_exchanges, 1);

    // Her retry goes through, with her own token, to the end of a session.
    let (answer, session) = post_as(&endpoint, "alice", None, initialize(3, true)).await;
    assert!(answer["result"]["serverInfo"].is_object(), "{answer}");
    let session = session.expect("the upstream's session id passed back");
    let (answer, _) = post_as(&endpoint, "alice", Some(&session), call.clone()).await;
    assert_eq!(answer["result"]["content"][0]["text"], "alice", "{answer}");
    // Bob still has nothing.
    let (answer, _) = post_as(&endpoint, "bob", None, call.clone()).await;
    assert_eq!(answer["result"]["isError"], true, "{answer}");

    // A restart forgets nothing: credentials and the registration are in the SQLite file.
    let registrations = auth.stats().registrations;
    drop(proxy);
    let _proxy = start("oauth", &config, &key);
    let refused = mcp.stats().unauthorized;
    let (answer, _) = post_as(&endpoint, "alice", Some(&session), call).await;
    assert_eq!(answer["result"]["content"][0]["text"], "alice", "{answer}");
    // The restarted gateway read the store before its first request upstream.
    assert_eq!(mcp.stats().unauthorized, refused, "{:?}", mcp.stats());
    assert_eq!(auth.stats().code_exchanges, 1);
    assert_eq!(auth.stats().registrations, registrations);
}

#[tokio::test]
async fn replicas_on_one_redis_share_flows_registrations_and_one_refresh() {
    let redis = common::RedisServer::start();
    let auth = TestAuthServer::start().await.unwrap();
    auth.set_rotation(true);
    auth.set_access_token_lifetime(Duration::from_secs(5));
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    mcp.set_stateless(true);
    // One public address for both replicas, as behind a load balancer; here it is
    // replica B's, so every browser step lands on B.
    let port_b = free_port();
    let public = format!("http://127.0.0.1:{port_b}");
    let replica = |listen: &str| {
        format!(
            r#"listen = "{listen}"
public_url = "{public}"
cookie_key_env = "GATEWAY_COOKIE_KEY"
allow_loopback_http = true

[store]
redis_url_env = "GATEWAY_REDIS_URL"

[identity]
mode = "trusted-header"
header = "x-user"
trusted_sources = ["127.0.0.1"]

[[upstream]]
name = "docs"
url = "{}"
auth = "oauth"
"#,
            mcp.url()
        )
    };
    let redis_url = redis.url();
    let env = [
        (
            "GATEWAY_COOKIE_KEY",
            "0123456789abcdef0123456789abcdef-test",
        ),
        ("GATEWAY_REDIS_URL", redis_url.as_str()),
    ];
    let a = start("replica-a", &replica("127.0.0.1:0"), &env);
    let b = start("replica-b", &replica(&format!("127.0.0.1:{port_b}")), &env);
    let call = serde_json::from_str::<Value>(&call(1, "whoami")).unwrap();

    // The flow starts on A; the browser's start link and callback land on B.
    let (answer, _) = post_as(
        &format!("{}/docs/mcp", a.url),
        "alice",
        None,
        initialize(1, true),
    )
    .await;
    let link = answer["error"]["data"]["elicitations"][0]["url"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"))
        .to_owned();
    assert!(
        link.starts_with(&format!("{public}/oauth/docs/start")),
        "{link}"
    );
    auth.set_consenting_user("alice");
    tower_mcp_auth::testing::HeadlessBrowser::for_redirect_uri(
        format!("{public}/oauth/docs/callback").parse().unwrap(),
    )
    .with_header("x-user".parse().unwrap(), "alice".parse().unwrap())
    .visit(&link.parse().unwrap())
    .await
    .unwrap();
    assert_eq!(auth.stats().code_exchanges, 1);
    // Both replicas now serve her with her token; one registration between them.
    for replica in [&a, &b] {
        let (answer, _) = post_as(
            &format!("{}/docs/mcp", replica.url),
            "alice",
            None,
            call.clone(),
        )
        .await;
        assert_eq!(answer["result"]["content"][0]["text"], "alice", "{answer}");
    }
    assert_eq!(auth.stats().registrations, 1);
    assert_eq!(auth.stats().refresh_requests, 0);

    // Past the token's lifetime, 16 calls at once across both replicas: one refresh of
    // the rotating refresh token, no replay of it, every call answered.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let calls = (0..16).map(|i| {
        let url = format!("{}/docs/mcp", if i % 2 == 0 { &a.url } else { &b.url });
        let call = call.clone();
        async move { post_as(&url, "alice", None, call).await.0 }
    });
    for answer in futures::future::join_all(calls).await {
        assert_eq!(answer["result"]["content"][0]["text"], "alice", "{answer}");
    }
    let stats = auth.stats();
    assert_eq!(stats.refresh_successes, 1, "{stats:?}");
    assert_eq!(stats.invalid_grants, 0, "{stats:?}");
    assert_eq!(stats.reuse_detected, 0, "{stats:?}");
    assert_eq!(stats.code_exchanges, 1);
}

/// The `data-state` of `upstream`'s row on a `/connections` page.
fn row_state(page: &str, upstream: &str) -> String {
    let row = page
        .split(&format!("id=\"upstream-{upstream}\""))
        .nth(1)
        .unwrap_or_else(|| panic!("no row for {upstream} in {page}"));
    row.split("data-state=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no state for {upstream} in {row}"))
        .to_owned()
}

#[tokio::test]
async fn connections_page_connects_in_chromium_and_disconnects() {
    let auth = TestAuthServer::start().await.unwrap();
    // The consent page hops through a cookie, as real providers' do.
    auth.set_interaction(true);
    auth.set_consenting_user("anonymous");
    // Short-lived tokens: the page's "refresh failing" state is reached below.
    auth.set_access_token_lifetime(Duration::from_secs(3));
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    mcp.set_stateless(true);
    let plain = TestUpstream::start().await.unwrap();
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    // A single-user gateway (a browser sends no identity header).
    let config = format!(
        r#"listen = "127.0.0.1:{port}"
public_url = "{public}"
cookie_key_env = "GATEWAY_COOKIE_KEY"
allow_loopback_http = true

[store]
sqlite = "gateway.db"

[identity]
mode = "anonymous"

[[upstream]]
name = "docs"
url = "{}"
auth = "oauth"

[[upstream]]
name = "plain"
url = "{}"
auth = "none"
"#,
        mcp.url(),
        plain.url()
    );
    let key = [(
        "GATEWAY_COOKIE_KEY",
        "0123456789abcdef0123456789abcdef-test",
    )];
    let _proxy = start("connections", &config, &key);
    let page_url: url::Url = format!("{public}/connections").parse().unwrap();

    let page = common::run_chromium(&page_url, "connections-before", "--dump-dom")
        .await
        .unwrap();
    assert_eq!(row_state(&page, "docs"), "needs-sign-in");
    assert_eq!(row_state(&page, "plain"), "none");
    let connect = page
        .split("id=\"connect-docs\" href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a connect button for docs");
    // The browser follows the page's Connect link: start link, consent (with its
    // cookie hop), the gateway's callback.
    let landing = common::run_chromium(
        &page_url.join(connect).unwrap(),
        "connections-connect",
        "--dump-dom",
    )
    .await
    .unwrap();
    assert_eq!(auth.stats().code_exchanges, 1, "{landing}");
    let page = common::run_chromium(&page_url, "connections-after", "--dump-dom")
        .await
        .unwrap();
    assert_eq!(row_state(&page, "docs"), "connected");
    assert!(page.contains("id=\"disconnect-docs\""), "{page}");
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("connections.png");
    common::run_chromium(
        &page_url,
        "connections-shot",
        &format!("--screenshot={}", shot.display()),
    )
    .await
    .unwrap();
    assert!(std::fs::read(&shot).unwrap().starts_with(b"\x89PNG"));
    println!("connections page screenshot: {}", shot.display());

    // Calls go through with the user's token now.
    let endpoint = format!("{public}/docs/mcp");
    let whoami = serde_json::from_str::<Value>(&call(1, "whoami")).unwrap();
    let (answer, _) = post_as(&endpoint, "ignored", None, whoami.clone()).await;
    assert_eq!(
        answer["result"]["content"][0]["text"], "anonymous",
        "{answer}"
    );

    // The identity provider fails from now on: once the token is due, a call tries to
    // refresh, fails, and the page says so (the credentials are kept).
    auth.fail_always(tower_mcp_auth::testing::Fault::ServerError);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (answer, _) = post_as(&endpoint, "ignored", None, whoami.clone()).await;
    assert!(answer.get("result").is_none(), "{answer}");
    let page = common::run_chromium(&page_url, "connections-failing", "--dump-dom")
        .await
        .unwrap();
    assert_eq!(row_state(&page, "docs"), "refresh-failing", "{page}");
    auth.heal();

    // Disconnect: a form post bound to the user; a forged one changes nothing.
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let form = |csrf: &str| {
        http()
            .post(format!("{public}/connections/docs/disconnect"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={csrf}"))
    };
    let forged = form(&"0".repeat(csrf.len())).send().await.unwrap();
    assert_eq!(forged.status(), 403);
    let unchanged = common::run_chromium(&page_url, "connections-forged", "--dump-dom")
        .await
        .unwrap();
    assert_ne!(
        row_state(&unchanged, "docs"),
        "needs-sign-in",
        "{unchanged}"
    );
    assert_eq!(auth.stats().revocations, 0);
    let done = form(&csrf).send().await.unwrap();
    assert_eq!(done.status(), 303);
    // The grant is revoked at the authorization server too (RFC 7009).
    assert_eq!(auth.stats().revocations, 1);
    let page = common::run_chromium(&page_url, "connections-gone", "--dump-dom")
        .await
        .unwrap();
    assert_eq!(row_state(&page, "docs"), "needs-sign-in");
    let (answer, _) = post_as(&endpoint, "ignored", None, whoami).await;
    assert_eq!(answer["result"]["isError"], true, "{answer}");
}

/// The official TypeScript SDK client (tests/external/ts-client, installed by the test
/// command) against the gateway: `-32042`, a browser follower signs the user in, the
/// retry works. Once with a stateful upstream answering in SSE, once stateless.
#[tokio::test]
async fn typescript_sdk_client_completes_the_url_elicitation_connect_flow() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

    for (variant, stateless, sse) in [("stateful-sse", false, true), ("stateless", true, false)] {
        let auth = TestAuthServer::start().await.unwrap();
        auth.set_consenting_user("alice");
        let mcp = TestMcpServer::start(&auth).await.unwrap();
        mcp.set_stateless(stateless);
        mcp.set_sse(sse);
        let port = free_port();
        let public = format!("http://127.0.0.1:{port}");
        let config = format!(
            "{}\n[[upstream]]\nname = \"docs\"\nurl = \"{}\"\nauth = \"oauth\"\n",
            oauth_config(port),
            mcp.url()
        );
        let key = [(
            "GATEWAY_COOKIE_KEY",
            "0123456789abcdef0123456789abcdef-test",
        )];
        let _proxy = start(&format!("ts-{variant}"), &config, &key);

        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/external/ts-client");
        assert!(
            std::path::Path::new(dir)
                .join("node_modules/@modelcontextprotocol/sdk")
                .exists(),
            "the TypeScript SDK is not installed: the test command runs `npm ci` in {dir}"
        );
        let mut client = tokio::process::Command::new("npx")
            .args(["-y", "-p", "node@22", "node", "connect.mjs"])
            .arg(format!("{public}/docs/mcp"))
            .arg("alice")
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("npx (the test command installs npm)");
        let mut stdin = client.stdin.take().unwrap();
        let mut lines = tokio::io::BufReader::new(client.stdout.take().unwrap()).lines();
        let mut next = async || -> Value {
            let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
                .await
                .expect("the TypeScript client answers within 120 s")
                .unwrap()
                .expect("a line from the TypeScript client");
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"))
        };

        let event = next().await;
        assert_eq!(event["event"], "url-elicitation", "{variant}: {event}");
        assert_eq!(event["code"], -32042);
        assert_eq!(event["mode"], "url");
        let link = event["url"].as_str().unwrap();
        assert!(
            link.starts_with(&format!("{public}/oauth/docs/start?flow=")),
            "{link}"
        );
        // The browser follower: the user's browser, signed in at the front proxy.
        tower_mcp_auth::testing::HeadlessBrowser::for_redirect_uri(
            format!("{public}/oauth/docs/callback").parse().unwrap(),
        )
        .with_header("x-user".parse().unwrap(), "alice".parse().unwrap())
        .visit(&link.parse().unwrap())
        .await
        .unwrap();
        stdin.write_all(b"signed in\n").await.unwrap();

        assert_eq!(next().await["event"], "connected", "{variant}");
        let done = next().await;
        assert_eq!(done["event"], "done", "{variant}: {done}");
        assert_eq!(done["whoami"], "alice", "{variant}: {done}");
        assert!(
            done["tools"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t == "whoami"),
            "{done}"
        );
        // The streaming tool: 5 progress notifications, 50 ms apart at the source (200
        // ms from first to last), arrive one by one before the result: spread over at
        // least 150 ms, where a buffering proxy would deliver them in one lump (and
        // Nagle's algorithm, before the gateway set TCP_NODELAY, held the first ~40 ms).
        println!("{variant}: {done}");
        assert_eq!(done["countdown"], "counted 5", "{done}");
        assert_eq!(done["progress"], 5, "{done}");
        assert!(done["progressSpreadMs"].as_u64().unwrap() >= 150, "{done}");
        let status = client.wait().await.unwrap();
        assert!(status.success(), "{variant}: {status}");
        assert_eq!(auth.stats().code_exchanges, 1, "{variant}");
    }
}

/// An identity provider for the `jwt` mode: a P-256 key, its JWKS served on loopback.
struct Idp {
    key: aws_lc_rs::signature::EcdsaKeyPair,
    url: String,
    /// While set, the JWKS endpoint accepts requests and never answers.
    hang: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// JWKS requests received.
    fetches: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Idp {
    async fn start(kid: &'static str) -> Self {
        use base64::Engine;
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let alg = &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let key = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref()).unwrap();
        let point = aws_lc_rs::signature::KeyPair::public_key(&key)
            .as_ref()
            .to_vec();
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
            "x": b64(&point[1..33]), "y": b64(&point[33..65])}]});
        let hang = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (hanging, counted) = (hang.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let jwks = jwks.clone();
                let hang = hanging.load(std::sync::atomic::Ordering::SeqCst);
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    if hang {
                        std::future::pending::<()>().await;
                    }
                    axum::Json(jwks)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            key,
            url,
            hang,
            fetches,
        }
    }

    fn token(&self, kid: &str, claims: Value) -> String {
        use base64::Engine;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": kid});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let signature = self.key.sign(&rng, input.as_bytes()).unwrap();
        format!("{input}.{}", b64(signature.as_ref()))
    }
}

/// A gateway of the `jwt` identity (issuer `https://idp.example.com`, audience
/// `mcp-gateway`, keys at `jwks_url`, `identity_extra` lines) with one plain upstream.
fn jwt_config(jwks_url: &str, identity_extra: &str, upstream: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
allow_loopback_http = true

[store]
sqlite = "gateway.db"

[identity]
mode = "jwt"
issuer = "https://idp.example.com"
audience = "mcp-gateway"
jwks_url = "{jwks_url}"
{identity_extra}

[[upstream]]
name = "plain"
url = "{upstream}"
auth = "none"
"#
    )
}

#[tokio::test]
async fn jwt_identity_accepts_valid_tokens_only() {
    let idp = Idp::start("k1").await;
    let other = Idp::start("k1").await;
    let upstream = TestUpstream::start().await.unwrap();
    let config = jwt_config(&idp.url, "tenant_claim = \"org\"", &upstream.url());
    let proxy = start("jwt", &config, &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = |changes: Value| {
        let mut claims = json!({"iss": "https://idp.example.com", "aud": ["mcp-gateway"],
            "sub": "alice", "org": "acme", "exp": now + 300, "nbf": now - 10});
        for (name, value) in changes.as_object().unwrap() {
            claims[name] = value.clone();
        }
        claims
    };
    let page = |token: Option<String>| {
        let mut request = http().get(format!("{}/connections", proxy.url));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        async move { request.send().await.unwrap() }
    };

    let ok = page(Some(idp.token("k1", claims(json!({}))))).await;
    assert_eq!(ok.status(), 200);
    assert!(
        ok.text()
            .await
            .unwrap()
            .contains("Signed in as <strong>alice</strong>")
    );
    let forwarded = http()
        .post(format!("{}/plain/mcp", proxy.url))
        .header(
            "authorization",
            format!("Bearer {}", idp.token("k1", claims(json!({})))),
        )
        .header("content-type", "application/json")
        .body(call(1, "echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(forwarded.status(), 200);

    let refused = [
        ("no token", None),
        (
            "expired",
            Some(idp.token("k1", claims(json!({"exp": now - 3600})))),
        ),
        (
            "not yet valid",
            Some(idp.token("k1", claims(json!({"nbf": now + 3600})))),
        ),
        (
            "another audience",
            Some(idp.token("k1", claims(json!({"aud": "other"})))),
        ),
        (
            "another issuer",
            Some(idp.token("k1", claims(json!({"iss": "https://evil"})))),
        ),
        (
            "no tenant claim",
            Some(idp.token("k1", claims(json!({"org": null})))),
        ),
        (
            "signed by another key",
            Some(other.token("k1", claims(json!({})))),
        ),
        ("unknown key id", Some(idp.token("k9", claims(json!({}))))),
        (
            "huge exp",
            Some(idp.token("k1", claims(json!({"exp": 1e300})))),
        ),
        ("not a JWT", Some("not-a-jwt".to_owned())),
        (
            "alg none",
            Some({
                let token = idp.token("k1", claims(json!({})));
                let mut parts: Vec<&str> = token.split('.').collect();
                let none = base64::Engine::encode(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                    br#"{"alg":"none","kid":"k1"}"#,
                );
                parts[0] = &none;
                format!("{}.{}.", parts[0], parts[1])
            }),
        ),
    ];
    for (case, token) in refused {
        let response = page(token).await;
        assert_eq!(response.status(), 401, "{case}");
        assert!(
            response.headers().contains_key("www-authenticate"),
            "{case}"
        );
    }
    // Refused tokens changed nothing: a valid one still works.
    let ok = page(Some(idp.token("k1", claims(json!({"sub": "bob"}))))).await;
    assert!(
        ok.text()
            .await
            .unwrap()
            .contains("Signed in as <strong>bob</strong>")
    );
}

#[tokio::test]
async fn obo_upstream_exchanges_the_callers_token_once_and_never_forwards_it() {
    let auth = TestAuthServer::start().await.unwrap();
    auth.register_client("gateway", Some("gateway-secret"));
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    mcp.set_stateless(true);
    let config = format!(
        r#"listen = "127.0.0.1:0"
allow_loopback_http = true

[store]
sqlite = "gateway.db"

[identity]
mode = "jwt"
issuer = "{issuer}"
audience = "gateway"
jwks_url = "{jwks}"

[[upstream]]
name = "docs"
url = "{mcp}"
auth = "obo"
token_endpoint = "{token}"
client_id = "gateway"
client_secret_env = "GATEWAY_OBO_SECRET"
grant = "jwt-bearer"
"#,
        issuer = auth.issuer(),
        jwks = auth.jwks_url(),
        mcp = mcp.url(),
        token = auth.token_endpoint()
    );
    let proxy = start("obo", &config, &[("GATEWAY_OBO_SECRET", "gateway-secret")]);
    let endpoint = format!("{}/docs/mcp", proxy.url);
    let whoami = |token: &str, id: u64| {
        http()
            .post(&endpoint)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(call(id, "whoami"))
            .send()
    };
    let alice = auth.user_assertion("alice", "gateway", Duration::from_secs(600));
    for id in 1..=3 {
        let response = whoami(&alice, id).await.unwrap();
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["result"]["content"][0]["text"], "alice", "{answer}");
    }
    assert_eq!(
        auth.stats().obo_exchanges,
        1,
        "one exchange for three calls"
    );
    let bob = auth.user_assertion("bob", "gateway", Duration::from_secs(600));
    let answer: Value = whoami(&bob, 4).await.unwrap().json().await.unwrap();
    assert_eq!(answer["result"]["content"][0]["text"], "bob", "{answer}");
    assert_eq!(auth.stats().obo_exchanges, 2);
    // A token issued to another app is refused at the door: nothing is exchanged.
    let foreign = auth.user_assertion("alice", "other-app", Duration::from_secs(600));
    let refused = whoami(&foreign, 5).await.unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(auth.stats().obo_exchanges, 2);
    // The callers' own tokens never reached the MCP server.
    let seen = mcp.seen_tokens();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|t| *t != alice && *t != bob), "{seen:?}");
}

#[tokio::test]
async fn wait_holds_the_request_until_the_user_signs_in_through_connections() {
    let auth = TestAuthServer::start().await.unwrap();
    auth.set_consenting_user("alice");
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    mcp.set_stateless(true);
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let config = format!(
        "{}\n[[upstream]]\nname = \"docs\"\nurl = \"{}\"\nauth = \"oauth\"\nwait_seconds = 20\n\n[[upstream]]\nname = \"brief\"\nurl = \"{}\"\nauth = \"oauth\"\nwait_seconds = 1\n",
        oauth_config(port),
        mcp.url(),
        mcp.url()
    );
    let key = [(
        "GATEWAY_COOKIE_KEY",
        "0123456789abcdef0123456789abcdef-test",
    )];
    let _proxy = start("wait", &config, &key);
    let whoami = serde_json::from_str::<Value>(&call(7, "whoami")).unwrap();

    // Held: the answer comes only after Alice signed in on /connections.
    let held = tokio::spawn({
        let (url, call) = (format!("{public}/docs/mcp"), whoami.clone());
        async move { post_as(&url, "alice", None, call).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !held.is_finished(),
        "the request is held while she has not signed in"
    );
    let browser = tower_mcp_auth::testing::HeadlessBrowser::for_redirect_uri(
        format!("{public}/oauth/docs/callback").parse().unwrap(),
    )
    .with_header("x-user".parse().unwrap(), "alice".parse().unwrap());
    browser
        .visit(
            &format!("{public}/connections/docs/connect")
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    let (answer, _) = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("answered once she signed in")
        .unwrap();
    assert_eq!(answer["id"], 7);
    assert_eq!(answer["result"]["content"][0]["text"], "alice", "{answer}");
    assert_eq!(auth.stats().code_exchanges, 1);

    // Past the wait, the caller gets the link after all.
    let started = std::time::Instant::now();
    let (answer, _) = post_as(&format!("{public}/brief/mcp"), "bob", None, whoami).await;
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(answer["result"]["isError"], true, "{answer}");
    let text = answer["result"]["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("{public}/oauth/brief/start?flow=")),
        "{text}"
    );
}

/// The identity provider's key endpoint hangs once the cached set is due for renewal:
/// concurrent valid requests are answered from the cached keys at once (one renewal in
/// the background), not one fetch timeout after another.
#[tokio::test]
async fn a_hanging_jwks_endpoint_stalls_no_request() {
    use std::sync::atomic::Ordering;
    let idp = Idp::start("k1").await;
    let upstream = TestUpstream::start().await.unwrap();
    let config = jwt_config(&idp.url, "jwks_refresh_seconds = 1", &upstream.url());
    let proxy = start("jwt-outage", &config, &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let token = idp.token(
        "k1",
        json!({"iss": "https://idp.example.com", "aud": "mcp-gateway", "sub": "alice",
            "exp": now + 300}),
    );
    let call_once = || {
        let request = http()
            .post(format!("{}/plain/mcp", proxy.url))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(call(1, "x"));
        async move {
            let started = std::time::Instant::now();
            let status = request.send().await.unwrap().status();
            (status, started.elapsed())
        }
    };
    let (status, _) = call_once().await;
    assert_ne!(
        status, 401,
        "the first call verifies with freshly fetched keys"
    );
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1);

    idp.hang.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let calls: Vec<_> = (0..5).map(|_| call_once()).collect();
    let answers = futures::future::join_all(calls).await;
    for (status, took) in &answers {
        assert_ne!(*status, 401, "a valid token was refused during the outage");
        // The key endpoint never answers: any wait for it would last a fetch timeout.
        assert!(
            *took < Duration::from_secs(5),
            "a request waited for the key endpoint: {took:?}"
        );
    }
    assert_eq!(
        idp.fetches.load(Ordering::SeqCst),
        2,
        "one background renewal, not one fetch per request"
    );
}
