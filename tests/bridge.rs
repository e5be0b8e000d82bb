//! `mcp-auth-proxy stdio`, driven by a real stdio client: the official TypeScript SDK's
//! `StdioClientTransport` spawns the bridge against the loopback OAuth + MCP fixtures.
//! The sign-in is completed by a browser follower given as `--browser-command` (curl
//! following the redirects with a cookie jar, as a browser would).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tower_mcp_auth::testing::{TestAuthServer, TestMcpServer};

const BRIDGE: &str = env!("CARGO_BIN_EXE_mcp-auth-proxy");

fn dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("bridge")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the TypeScript stdio client against a bridge for `server`; its one JSON line.
async fn ts_client(server: &str, store: &std::path::Path, jar: &std::path::Path) -> Value {
    let client_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/external/ts-client");
    assert!(
        std::path::Path::new(client_dir)
            .join("node_modules/@modelcontextprotocol/sdk")
            .exists(),
        "the TypeScript SDK is not installed: the test command runs `npm ci` in {client_dir}"
    );
    let follower = format!(
        "curl -fsSL -o /dev/null -c {jar} -b {jar}",
        jar = jar.display()
    );
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("npx")
            .args([
                "-y",
                "-p",
                "node@22",
                "node",
                "stdio.mjs",
                BRIDGE,
                "stdio",
                server,
            ])
            .args(["--store", store.to_str().unwrap()])
            .args(["--browser-command", &follower, "--allow-loopback-http"])
            .current_dir(client_dir)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .output(),
    )
    .await
    .expect("the TypeScript client finishes within 120 s")
    .expect("npx (the test command installs npm)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    // The bridge's log (stderr), shown with the test's output.
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    let line = stdout.lines().last().unwrap_or_default();
    assert!(output.status.success(), "{stdout}");
    serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {stdout}"))
}

#[tokio::test]
async fn typescript_stdio_client_through_the_bridge_signs_in_once() {
    let auth = TestAuthServer::start().await.unwrap();
    auth.set_consenting_user("alice");
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let dir = dir("ts-stdio");
    let store = dir.join("credentials.db");
    let jar = dir.join("cookies.txt");

    let done = ts_client(&mcp.url(), &store, &jar).await;
    assert_eq!(done["event"], "done", "{done}");
    assert_eq!(done["whoami"], "alice", "{done}");
    assert_eq!(done["countdown"], "counted 3", "{done}");
    assert_eq!(
        done["progress"], 3,
        "progress notifications reach the stdio client: {done}"
    );
    assert_eq!(auth.stats().code_exchanges, 1);
    assert_eq!(auth.stats().registrations, 1);

    // A second session (a new host window, an upgraded bridge): the same file, no
    // sign-in, no registration.
    let done = ts_client(&mcp.url(), &store, &jar).await;
    assert_eq!(done["whoami"], "alice", "{done}");
    assert_eq!(auth.stats().code_exchanges, 1, "no second sign-in");
    assert_eq!(auth.stats().registrations, 1, "no second registration");
}

/// The mcp-remote failure, beaten: 4 copies of the bridge (4 host windows) for the same
/// server start at once after the access token expired, against an authorization
/// server that rotates refresh tokens and revokes the grant on reuse. One refresh, no
/// `invalid_grant`, all 4 sessions work.
#[tokio::test]
async fn four_copies_after_expiry_make_one_refresh() {
    let auth = TestAuthServer::start().await.unwrap();
    auth.set_consenting_user("alice");
    auth.set_rotation(true);
    auth.set_access_token_lifetime(Duration::from_secs(3));
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let dir = dir("four-copies");
    let store = dir.join("credentials.db");
    let jar = dir.join("cookies.txt");
    // The first session signs in.
    let done = ts_client(&mcp.url(), &store, &jar).await;
    assert_eq!(done["whoami"], "alice", "{done}");
    let refreshes_before = auth.stats().refresh_requests;
    tokio::time::sleep(Duration::from_secs(4)).await;

    let url = mcp.url();
    let copies = (0..4).map(|_| ts_client(&url, &store, &jar));
    for done in futures::future::join_all(copies).await {
        assert_eq!(done["whoami"], "alice", "{done}");
    }
    let stats = auth.stats();
    assert_eq!(stats.refresh_requests - refreshes_before, 1, "{stats:?}");
    assert_eq!(stats.invalid_grants, 0, "{stats:?}");
    assert_eq!(stats.reuse_detected, 0, "{stats:?}");
    assert_eq!(stats.code_exchanges, 1, "no second sign-in: {stats:?}");
}

/// 4 copies started at once with no credentials: one sign-in (one browser visit), the
/// other copies wait for it and proceed.
#[tokio::test]
async fn four_copies_without_credentials_share_one_sign_in() {
    let auth = TestAuthServer::start().await.unwrap();
    auth.set_consenting_user("alice");
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let dir = dir("four-first-login");
    let store = dir.join("credentials.db");
    let jar = dir.join("cookies.txt");
    let url = mcp.url();
    let copies = (0..4).map(|_| ts_client(&url, &store, &jar));
    for done in futures::future::join_all(copies).await {
        assert_eq!(done["whoami"], "alice", "{done}");
    }
    let stats = auth.stats();
    assert_eq!(
        stats.code_exchanges, 1,
        "one sign-in for 4 copies: {stats:?}"
    );
    assert_eq!(
        stats.authorization_requests, 1,
        "one browser visit: {stats:?}"
    );
    println!(
        "registrations for 4 copies started at once: {}",
        stats.registrations
    );
}
