//! `mcp-auth-proxy stdio`, driven by a real stdio client: the official TypeScript SDK's
//! `StdioClientTransport` spawns the bridge against the loopback OAuth + MCP fixtures.
//! The sign-in is completed by a browser follower given as `--browser-command` (curl
//! following the redirects with a cookie jar, as a browser would).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
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
    let client_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/external/ts-client");
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
    // The first session signs in; how long one client took here is the measure of how
    // far apart the four copies may start on this machine, however busy.
    let started = std::time::Instant::now();
    let done = ts_client(&mcp.url(), &store, &jar).await;
    let one_client = started.elapsed();
    assert_eq!(done["whoami"], "alice", "{done}");
    let refreshes_before = auth.stats().refresh_requests;
    // The refreshed token outlives the four copies' start spread several times over
    // (and its refresh margin), so one refresh serves them all.
    let lifetime = (one_client * 4).max(Duration::from_secs(3)) + Duration::from_secs(10);
    auth.set_access_token_lifetime(lifetime);
    println!("one client took {one_client:?}; the refreshed token lives {lifetime:?}");
    // The signed-in token (3 s) expires.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let url = mcp.url();
    let refused_before = mcp.stats().unauthorized;
    let copies = (0..4).map(|_| ts_client(&url, &store, &jar));
    for done in futures::future::join_all(copies).await {
        assert_eq!(done["whoami"], "alice", "{done}");
    }
    // Each copy read the store before its first request: none went without a token.
    assert_eq!(
        mcp.stats().unauthorized,
        refused_before,
        "{:?}",
        mcp.stats()
    );
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

/// A bridge driven line by line, as a stdio host does.
struct Bridge {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Bridge {
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = tokio::process::Command::new(BRIDGE)
            .arg("stdio")
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the bridge binary");
        let stdin = child.stdin.take();
        let lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
            child.stdout.take().unwrap(),
        ));
        Self {
            child,
            stdin,
            lines,
        }
    }

    async fn send(&mut self, message: Value) {
        use tokio::io::AsyncWriteExt;
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{message}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// The next line on stdout, which must be a JSON-RPC message.
    async fn next(&mut self, within: Duration) -> Value {
        let line = tokio::time::timeout(within, self.lines.next_line())
            .await
            .expect("an answer in time")
            .unwrap()
            .expect("stdout open");
        let message: Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("stdout carries only JSON-RPC: {line}"));
        assert_eq!(message["jsonrpc"], "2.0", "{message}");
        message
    }

    /// Writes an `initialize` request without waiting for its answer.
    async fn send_initialize(&mut self, id: u64) {
        self.send(
            serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "test", "version": "1"}}}),
        )
        .await;
    }

    async fn initialize(&mut self, id: u64, within: Duration) -> Value {
        self.send_initialize(id).await;
        self.next(within).await
    }

    /// Closes stdin; the exit status and everything left on stdout (JSON-RPC only) and
    /// stderr.
    async fn finish(mut self) -> (std::process::ExitStatus, String) {
        drop(self.stdin.take());
        while let Some(line) = self.lines.next_line().await.unwrap() {
            let message: Value = serde_json::from_str(&line)
                .unwrap_or_else(|_| panic!("stdout carries only JSON-RPC: {line}"));
            assert_eq!(message["jsonrpc"], "2.0", "{message}");
        }
        let output = tokio::time::timeout(Duration::from_secs(20), self.child.wait_with_output())
            .await
            .expect("the bridge exits")
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "{stderr}");
        (output.status, stderr)
    }
}

fn error_message(answer: &Value) -> String {
    let message = answer["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("a JSON-RPC error: {answer}"))
        .to_owned();
    println!("the client reads: {message}");
    message
}

/// A "browser" command that records each link it is given in `links` and shows nothing,
/// as one the user closed or never got to.
fn recording_browser(dir: &std::path::Path, links: &std::path::Path) -> PathBuf {
    let browser = dir.join("recording-browser.sh");
    std::fs::write(
        &browser,
        format!("#!/bin/sh\necho \"$1\" >> '{}'\n", links.display()),
    )
    .unwrap();
    std::fs::set_permissions(
        &browser,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    browser
}

fn follower(jar: &std::path::Path) -> String {
    format!(
        "curl -fsSL -o /dev/null -c {jar} -b {jar}",
        jar = jar.display()
    )
}

/// An unreachable server: each request gets a readable JSON-RPC error, the session goes
/// on (the server may come back), and the bridge exits 0 when stdin closes.
#[tokio::test]
async fn an_unreachable_server_answers_each_request_with_an_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/mcp", closed.local_addr().unwrap());
    drop(closed);
    let dir = dir("unreachable");
    let store = dir.join("credentials.db");
    let mut bridge = Bridge::spawn(
        &[
            &url,
            "--store",
            store.to_str().unwrap(),
            "--no-browser",
            "--allow-loopback-http",
        ],
        &[],
    );
    for id in 1..=2 {
        let answer = bridge.initialize(id, Duration::from_secs(20)).await;
        assert_eq!(answer["id"], id, "{answer}");
        let message = error_message(&answer);
        assert!(
            message.contains("could not be reached"),
            "readable: {message}"
        );
    }
    let (status, _) = bridge.finish().await;
    assert!(status.success(), "the session could go on: {status}");
}

/// The authorization server refuses dynamic registration: the client gets a JSON-RPC
/// error naming the way out (`--client-id`), and the bridge exits non-zero on its own,
/// since no request can succeed. With a pre-registered `--client-id` (at the `--issuer`
/// it belongs to, the secret from the environment) the same server works.
#[tokio::test]
async fn a_refused_registration_ends_the_session_and_client_id_gets_past_it() {
    let auth = TestAuthServer::start().await.unwrap();
    auth.set_consenting_user("alice");
    auth.set_registration_error(Some("invalid_client_metadata"));
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let dir = dir("registration-refused");
    let store = dir.join("credentials.db");
    let jar = dir.join("cookies.txt");
    let follower = follower(&jar);
    let common = [
        mcp.url(),
        "--store".into(),
        store.to_str().unwrap().into(),
        "--browser-command".into(),
        follower,
        "--allow-loopback-http".into(),
    ];
    let common: Vec<&str> = common.iter().map(String::as_str).collect();

    let mut bridge = Bridge::spawn(&common, &[]);
    let answer = bridge.initialize(1, Duration::from_secs(20)).await;
    let message = error_message(&answer);
    assert!(
        message.contains("refused to register") && message.contains("--client-id"),
        "readable, with the way out: {message}"
    );
    // Without stdin being closed: the bridge ends the session itself.
    let status = tokio::time::timeout(Duration::from_secs(10), bridge.child.wait())
        .await
        .expect("the bridge exits on its own")
        .unwrap();
    assert!(!status.success(), "nothing can continue: {status}");
    assert_eq!(auth.stats().authorization_requests, 0);

    auth.register_client("desktop-app", Some("s3cret-value"));
    let issuer = auth.issuer();
    let mut args = common.clone();
    args.extend([
        "--client-id",
        "desktop-app",
        "--client-secret-env",
        "DESKTOP_SECRET",
        "--issuer",
        &issuer,
    ]);
    let mut bridge = Bridge::spawn(&args, &[("DESKTOP_SECRET", "s3cret-value")]);
    let answer = bridge.initialize(1, Duration::from_secs(30)).await;
    assert!(answer["result"].is_object(), "{answer}");
    bridge
        .send(serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;
    bridge
        .send(
            serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "whoami", "arguments": {}}}),
        )
        .await;
    let answer = bridge.next(Duration::from_secs(10)).await;
    assert_eq!(answer["result"]["content"][0]["text"], "alice", "{answer}");
    let (status, stderr) = bridge.finish().await;
    assert!(status.success(), "{status}");
    assert!(
        !stderr.contains("s3cret-value"),
        "the secret stays out of logs"
    );
    let stats = auth.stats();
    assert_eq!(stats.code_exchanges, 1, "{stats:?}");
    assert_eq!(stats.registrations, 0, "{stats:?}");
    let exchange = auth
        .recorded_requests()
        .into_iter()
        .find(|r| r.grant_type == "authorization_code")
        .expect("the code exchange");
    assert_eq!(exchange.client_id.as_deref(), Some("desktop-app"));
    assert_eq!(exchange.client_auth, "basic");
}

/// The user closes the browser (here: a browser command that shows nothing) or denies
/// consent: the waiting request gets a readable JSON-RPC error, the session goes on, and
/// the next request opens the browser again.
#[tokio::test]
async fn a_closed_browser_or_denied_consent_is_a_readable_error_and_the_session_goes_on() {
    let auth = TestAuthServer::start().await.unwrap();
    auth.set_consenting_user("alice");
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let dir = dir("closed-browser");
    let store = dir.join("credentials.db");
    let visits = dir.join("visits.txt");
    // A browser the user closed.
    let browser = recording_browser(&dir, &visits);
    let browser = browser.to_str().unwrap();
    let mut bridge = Bridge::spawn(
        &[
            &mcp.url(),
            "--store",
            store.to_str().unwrap(),
            "--browser-command",
            browser,
            "--sign-in-timeout",
            "2",
            "--allow-loopback-http",
        ],
        &[],
    );
    for id in 1..=2 {
        let answer = bridge.initialize(id, Duration::from_secs(20)).await;
        let message = error_message(&answer);
        assert!(
            message.contains("not completed within 2 s"),
            "readable: {message}"
        );
    }
    let opened = std::fs::read_to_string(&visits).unwrap_or_default();
    assert_eq!(
        opened.lines().count(),
        2,
        "the second request opened the browser again: {opened}"
    );
    let (status, _) = bridge.finish().await;
    assert!(status.success(), "{status}");

    // Consent denied at the authorization server.
    auth.set_authorization_error(Some(("access_denied", Some("the user said no"))));
    let jar = dir.join("cookies.txt");
    let follower = follower(&jar);
    let mut bridge = Bridge::spawn(
        &[
            &mcp.url(),
            "--store",
            store.to_str().unwrap(),
            "--browser-command",
            &follower,
            "--allow-loopback-http",
        ],
        &[],
    );
    let answer = bridge.initialize(1, Duration::from_secs(20)).await;
    let message = error_message(&answer);
    assert!(
        message.contains("sign-in failed")
            && message.contains("access_denied")
            && message.contains("the user said no"),
        "readable, with the server's description: {message}"
    );
    auth.set_authorization_error(None);
    let answer = bridge.initialize(2, Duration::from_secs(20)).await;
    assert!(
        answer["result"].is_object(),
        "signed in on the next request: {answer}"
    );
    let (status, _) = bridge.finish().await;
    assert!(status.success(), "{status}");
    assert_eq!(auth.stats().code_exchanges, 1);
}

/// A copy is killed (SIGKILL) while it holds the refresh: its request is at the
/// authorization server, which, like a real one, finishes the rotation although the
/// client is gone, so the new refresh token is lost with the copy. The 3 copies started
/// next are not stranded: they wait out the dead copy's lease (redemption timeout 10 s
/// + 5 s), one of them redeems the stored token (`invalid_grant`: it was spent),
/// retires it, and all 3 share one new sign-in.
#[tokio::test]
async fn copies_recover_from_one_killed_while_holding_the_refresh() {
    let auth = TestAuthServer::start().await.unwrap();
    auth.set_consenting_user("alice");
    auth.set_rotation(true);
    auth.set_access_token_lifetime(Duration::from_secs(3));
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let dir = dir("killed-holder");
    let store = dir.join("credentials.db");
    let jar = dir.join("cookies.txt");
    let follower = follower(&jar);
    let url = mcp.url();
    let args = [
        url.as_str(),
        "--store",
        store.to_str().unwrap(),
        "--browser-command",
        &follower,
        "--allow-loopback-http",
    ];
    let mut first = Bridge::spawn(&args, &[]);
    let answer = first.initialize(1, Duration::from_secs(30)).await;
    assert!(answer["result"].is_object(), "{answer}");
    first.finish().await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    // The holder: its refresh reaches the authorization server, which answers (and
    // rotates) after the holder is killed but before the holder's lease lapses (2.5 s
    // without renewal): the window no client can close, since the rotated token died
    // with the holder. (A server slower than the lease races the next holder's
    // redemption instead: SECURITY.md.)
    auth.set_latency(Duration::from_secs(1));
    let before = auth.stats();
    let mut holder = Bridge::spawn(&args, &[]);
    holder.send_initialize(1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while auth.stats().refresh_requests == before.refresh_requests {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the holder never refreshed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    holder.child.start_kill().unwrap(); // SIGKILL
    holder.child.wait().await.unwrap();
    let killed_at = std::time::Instant::now();
    auth.set_latency(Duration::ZERO);

    let copies = (0..3).map(|_| {
        let args = args.map(str::to_owned);
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut copy = Bridge::spawn(&args, &[]);
            let answer = copy.initialize(1, Duration::from_secs(60)).await;
            copy.send(serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
                .await;
            copy.send(
                serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "whoami", "arguments": {}}}),
            )
            .await;
            let call = copy.next(Duration::from_secs(10)).await;
            copy.finish().await;
            (answer, call)
        }
    });
    for (answer, call) in futures::future::join_all(copies).await {
        assert!(answer["result"].is_object(), "{answer}");
        assert_eq!(call["result"]["content"][0]["text"], "alice", "{call}");
    }
    let stats = auth.stats();
    println!(
        "after the kill: recovered in {:.1} s; refreshes {}, invalid_grant {}, sign-ins {}",
        killed_at.elapsed().as_secs_f64(),
        stats.refresh_requests - before.refresh_requests - 1,
        stats.invalid_grants - before.invalid_grants,
        stats.code_exchanges - before.code_exchanges,
    );
    assert_eq!(
        stats.refresh_requests - before.refresh_requests,
        2,
        "the holder's and one more, not one per copy: {stats:?}"
    );
    assert_eq!(
        stats.code_exchanges - before.code_exchanges,
        1,
        "one sign-in for the 3 copies: {stats:?}"
    );
}

/// `--header 'Authorization: Bearer ${TOKEN}'`: the server is called with the given
/// credentials (from the environment), no OAuth, no sign-in, nothing stored.
#[tokio::test]
async fn a_static_authorization_header_replaces_oauth() {
    let auth = TestAuthServer::start().await.unwrap();
    auth.register_client("ci", None);
    let token = auth.issue("ci", "robot", None);
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let dir = dir("static-header");
    let store = dir.join("credentials.db");
    let mut bridge = Bridge::spawn(
        &[
            &mcp.url(),
            "--store",
            store.to_str().unwrap(),
            "--no-browser",
            "--header",
            "Authorization: Bearer ${MCP_TOKEN}",
            "--allow-loopback-http",
        ],
        &[("MCP_TOKEN", token.access_token.expose())],
    );
    let answer = bridge.initialize(1, Duration::from_secs(20)).await;
    assert!(answer["result"].is_object(), "{answer}");
    bridge
        .send(serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;
    bridge
        .send(
            serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "whoami", "arguments": {}}}),
        )
        .await;
    let answer = bridge.next(Duration::from_secs(10)).await;
    assert_eq!(answer["result"]["content"][0]["text"], "robot", "{answer}");
    let (status, stderr) = bridge.finish().await;
    assert!(status.success(), "{status}");
    assert!(!stderr.contains(token.access_token.expose()));
    assert_eq!(auth.stats().authorization_requests, 0);
    assert!(!store.exists(), "nothing stored");
}

/// A copy is killed while its sign-in is open in the browser (the user has not
/// finished): the copies that joined it are not stranded until their sign-in timeout.
/// They notice within about a second that nobody listens on the flow's callback port,
/// give it up, and one new sign-in (one browser visit) serves them both.
#[tokio::test]
async fn copies_recover_from_one_killed_mid_login() {
    let auth = TestAuthServer::start().await.unwrap();
    auth.set_consenting_user("alice");
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let dir = dir("killed-mid-login");
    let store = dir.join("credentials.db");
    let links = dir.join("links.txt");
    // The first copy's browser: the user never gets to the link.
    let slow_browser = recording_browser(&dir, &links);
    let url = mcp.url();
    let mut opener = Bridge::spawn(
        &[
            &url,
            "--store",
            store.to_str().unwrap(),
            "--browser-command",
            slow_browser.to_str().unwrap(),
            "--allow-loopback-http",
        ],
        &[],
    );
    opener.send_initialize(1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !links.exists() {
        assert!(tokio::time::Instant::now() < deadline, "no sign-in opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Two more copies join the open sign-in, then its opener is killed.
    let jar = dir.join("cookies.txt");
    let follower = follower(&jar);
    let args = [
        url.as_str(),
        "--store",
        store.to_str().unwrap(),
        "--browser-command",
        &follower,
        "--allow-loopback-http",
    ];
    let mut copies: Vec<Bridge> = (0..2).map(|_| Bridge::spawn(&args, &[])).collect();
    for copy in &mut copies {
        copy.send_initialize(1).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        auth.stats().authorization_requests,
        0,
        "nobody signed in yet"
    );
    opener.child.start_kill().unwrap(); // SIGKILL
    opener.child.wait().await.unwrap();
    let killed_at = std::time::Instant::now();

    for copy in &mut copies {
        let answer = copy.next(Duration::from_secs(30)).await;
        assert!(answer["result"].is_object(), "{answer}");
    }
    println!(
        "both copies answered {:.1} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    for copy in copies {
        let (status, _) = copy.finish().await;
        assert!(status.success(), "{status}");
    }
    let stats = auth.stats();
    assert_eq!(
        stats.authorization_requests, 1,
        "one new sign-in: {stats:?}"
    );
    assert_eq!(stats.code_exchanges, 1, "{stats:?}");
}

/// The official "everything" server (npm, pinned in `tests/external/ts-client`) run by
/// the node binary itself, not through npx, so that dropping it ends the server.
struct Everything {
    port: u16,
    _server: tokio::process::Child,
}

impl Everything {
    async fn start() -> Self {
        let client_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/external/ts-client");
        let script = format!(
            "{client_dir}/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
        );
        assert!(
            std::path::Path::new(&script).exists(),
            "server-everything is not installed: the test command runs `npm ci` in {client_dir}"
        );
        let node = tokio::process::Command::new("npx")
            .args(["-y", "-p", "node@22", "node", "-e"])
            .arg("process.stdout.write(process.execPath)")
            .output()
            .await
            .expect("npx (the test command installs npm)");
        assert!(node.status.success(), "node 22 through npx");
        let node = String::from_utf8(node.stdout).unwrap();
        // A free port can be taken by another test before node binds it: then node
        // exits without saying it listens, and another port is tried.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut server = tokio::process::Command::new(&node)
                .args([script.as_str(), "streamableHttp"])
                .env("PORT", port.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("node");
            let mut log = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
                server.stderr.take().unwrap(),
            ));
            let listening = tokio::time::timeout(Duration::from_secs(30), async {
                while let Ok(Some(line)) = log.next_line().await {
                    if line.contains(&format!("listening on port {port}")) {
                        return true;
                    }
                }
                false
            })
            .await
            .expect("server-everything starts within 30 s");
            if listening {
                // Its log keeps flowing: drain it so the server never blocks on it.
                tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
                return Self {
                    port,
                    _server: server,
                };
            }
        }
        panic!("server-everything did not start on any of 5 ports");
    }
}

/// Requests a server sends in the middle of a tool call reach the stdio client, and its
/// answers go back: the official "everything" server (npm, the version the gateway's
/// transparency run uses) asks the TypeScript client for an elicitation and for a
/// sampling, through the bridge, on the tool call's SSE stream.
#[tokio::test]
async fn elicitation_and_sampling_requests_reach_the_stdio_client_and_back() {
    let everything = Everything::start().await;
    let dir = dir("elicitation");
    let store = dir.join("credentials.db");
    let url = format!("http://127.0.0.1:{}/mcp", everything.port);
    let client_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/external/ts-client");
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("npx")
            .args([
                "-y",
                "-p",
                "node@22",
                "node",
                "elicit.mjs",
                BRIDGE,
                "stdio",
                &url,
            ])
            .args(["--store", store.to_str().unwrap()])
            .args(["--no-browser", "--allow-loopback-http"])
            .current_dir(client_dir)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .output(),
    )
    .await
    .expect("the TypeScript client finishes within 120 s")
    .expect("npx");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stdout}");
    let done: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|_| panic!("not JSON: {stdout}"));
    assert_eq!(done["asked"]["elicitation"], 1, "{done}");
    assert_eq!(done["asked"]["sampling"], 1, "{done}");
    let elicited = done["elicited"].as_str().unwrap();
    assert!(
        elicited.contains("Alice Example") && elicited.contains("accept"),
        "the server got the client's answer: {elicited}"
    );
    let sampled = done["sampled"].as_str().unwrap();
    assert!(
        sampled.contains("sampled by the stdio client"),
        "the server got the client's sample: {sampled}"
    );
}

/// An authorization server a hostile MCP server names: it records every byte it is
/// sent (and answers nothing useful).
async fn hostile_authorization_server() -> (String, Arc<std::sync::Mutex<Vec<u8>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = received.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 65536];
                let n = stream.read(&mut buffer).await.unwrap_or(0);
                record.lock().unwrap().extend_from_slice(&buffer[..n]);
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    )
                    .await;
            });
        }
    });
    (url, received)
}

/// `--client-id` with a secret: the secret goes to the `--issuer` the user named and
/// never to the authorization server a (hostile) MCP server names; without `--issuer`
/// the bridge refuses to start. A public `--client-id` without `--issuer` pins the
/// authorization server it was first used with, and refuses a later change.
#[tokio::test]
async fn a_client_secret_goes_only_to_the_issuer_the_user_named() {
    let auth = TestAuthServer::start().await.unwrap();
    auth.set_consenting_user("alice");
    auth.register_client("desktop-app", Some("s3cret-value"));
    auth.register_client("desktop-public", None);
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let (hostile, received) = hostile_authorization_server().await;
    let dir = dir("issuer-pin");
    let store = dir.join("credentials.db");
    let store = store.to_str().unwrap();
    let jar = dir.join("cookies.txt");
    let follower = follower(&jar);
    let url = mcp.url();
    let common = [
        url.as_str(),
        "--store",
        store,
        "--browser-command",
        &follower,
        "--allow-loopback-http",
    ];
    let public: Vec<&str> = common
        .iter()
        .copied()
        .chain(["--client-id", "desktop-public"])
        .collect();
    let confidential: Vec<&str> = common
        .iter()
        .copied()
        .chain(["--client-id", "desktop-app"])
        .collect();
    let secret = [("DESKTOP_SECRET", "s3cret-value")];

    // 1. A public client id without --issuer: the server's authorization server is
    // learned and pinned in the store.
    let mut bridge = Bridge::spawn(&public, &[]);
    let answer = bridge.initialize(1, Duration::from_secs(30)).await;
    assert!(answer["result"].is_object(), "{answer}");
    let (status, _) = bridge.finish().await;
    assert!(status.success(), "{status}");

    // The server turns hostile: its metadata now names another authorization server.
    mcp.set_authorization_server(&hostile);

    // 2. A secret without --issuer: refused at start, nothing sent anywhere.
    let mut args = confidential.clone();
    args.extend(["--client-secret-env", "DESKTOP_SECRET"]);
    let bridge = Bridge::spawn(&args, &secret);
    let (status, stderr) = bridge.finish().await;
    assert!(!status.success(), "{status}");
    assert!(
        stderr.contains("--client-secret-env needs --issuer"),
        "{stderr}"
    );

    // 3. The public client id again, still without --issuer: the pin refuses the new
    // authorization server.
    let bridge = Bridge::spawn(&public, &[]);
    let (status, stderr) = bridge.finish().await;
    assert!(!status.success(), "{status}");
    assert!(stderr.contains("first used with"), "{stderr}");

    // 4. The secret with --issuer naming the real one: whatever the server's metadata
    // says, the secret goes there only.
    let issuer = auth.issuer();
    let mut args = confidential.clone();
    args.extend(["--client-secret-env", "DESKTOP_SECRET", "--issuer", &issuer]);
    let mut bridge = Bridge::spawn(&args, &secret);
    let _ = bridge.initialize(1, Duration::from_secs(30)).await;
    let (_, stderr) = bridge.finish().await;
    assert!(
        !stderr.contains("s3cret-value"),
        "the secret stays out of logs"
    );

    let received = String::from_utf8_lossy(&received.lock().unwrap()).into_owned();
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode("desktop-app:s3cret-value");
    assert!(
        !received.contains("s3cret-value") && !received.contains(&basic),
        "the hostile authorization server got the secret: {received}"
    );
}

/// The bridge's credentials at rest: directories it makes are 0700, the database and
/// its `-wal`/`-shm` files 0600, and every token sealed with a key kept in a 0600 file
/// of its own beside the database.
#[tokio::test]
async fn the_bridges_store_is_private_and_sealed_by_default() {
    use std::os::unix::fs::PermissionsExt;
    let auth = TestAuthServer::start().await.unwrap();
    auth.set_consenting_user("alice");
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let dir = dir("at-rest");
    let made = dir.join("made-by-the-bridge");
    let _ = std::fs::remove_dir_all(&made);
    let store = made.join("deeper").join("credentials.db");
    let jar = dir.join("cookies.txt");
    let follower = follower(&jar);
    let url = mcp.url();
    let mut bridge = Bridge::spawn(
        &[
            &url,
            "--store",
            store.to_str().unwrap(),
            "--browser-command",
            &follower,
            "--allow-loopback-http",
        ],
        &[],
    );
    let answer = bridge.initialize(1, Duration::from_secs(30)).await;
    assert!(answer["result"].is_object(), "{answer}");
    let (status, _) = bridge.finish().await;
    assert!(status.success(), "{status}");

    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&made), 0o700);
    assert_eq!(mode(&made.join("deeper")), 0o700);
    assert_eq!(mode(&store), 0o600);
    assert_eq!(mode(&store.with_extension("key")), 0o600);
    for suffix in ["-wal", "-shm"] {
        let path = std::path::PathBuf::from(format!("{}{suffix}", store.display()));
        if path.exists() {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
    let raw = rusqlite::Connection::open(&store).unwrap();
    let tokens: Vec<String> = raw
        .prepare("SELECT access_token || ' ' || COALESCE(refresh_token, '') FROM credentials")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(tokens.len(), 1, "the sign-in stored credentials");
    for value in tokens[0].split(' ').filter(|v| !v.is_empty()) {
        assert!(value.starts_with("sealed:v2:bridge:"), "unsealed: {value}");
    }
}

/// The sign-in link is in the browser command's argv, readable by every local user:
/// opened by another user (here `nobody`) it starts nothing; the user's own browser
/// signs in with it afterwards.
#[tokio::test]
async fn another_local_user_cannot_use_the_sign_in_link() {
    let auth = TestAuthServer::start().await.unwrap();
    auth.set_consenting_user("alice");
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let dir = dir("argv-link");
    let store = dir.join("credentials.db");
    let links = dir.join("links.txt");
    let _ = std::fs::remove_file(&links);
    let browser = recording_browser(&dir, &links);
    let url = mcp.url();
    let mut bridge = Bridge::spawn(
        &[
            &url,
            "--store",
            store.to_str().unwrap(),
            "--browser-command",
            browser.to_str().unwrap(),
            "--allow-loopback-http",
        ],
        &[],
    );
    bridge.send_initialize(1).await;
    let link = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(text) = std::fs::read_to_string(&links)
                && let Some(line) = text.lines().next()
            {
                return line.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the bridge hands out a sign-in link");

    // Another local user, who read the link from the process list.
    let other = tokio::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", &link])
        .output()
        .await
        .expect("setpriv (util-linux) and curl");
    let status = String::from_utf8_lossy(&other.stdout).into_owned();
    assert!(
        other.status.success(),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    assert_eq!(status, "403", "another user's browser got {status}");
    assert_eq!(
        auth.stats().authorization_requests,
        0,
        "nothing started at the server"
    );

    // The user's own browser.
    let jar = dir.join("cookies.txt");
    let mine = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{} '{link}'", follower(&jar)))
        .status()
        .await
        .unwrap();
    assert!(mine.success());
    let answer = bridge.next(Duration::from_secs(30)).await;
    assert!(answer["result"].is_object(), "{answer}");
    let (status, _) = bridge.finish().await;
    assert!(status.success(), "{status}");
}
