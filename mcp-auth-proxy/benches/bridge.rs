//! What a stdio bridge adds to a tool call: the same `tools/call` to the loopback MCP
//! fixture sent by a direct HTTP client holding a token, and by a stdio client (a line
//! written to the bridge's stdin, the answer read from its stdout) through
//! `mcp-auth-proxy stdio` (OAuth: signed in once first through a curl browser follower,
//! then the stored token), through `mcp-auth-proxy stdio --header` (a static token, no
//! OAuth), and through mcp-remote (npm, pinned in `tests/external/ts-client`, the same
//! static token: it is the popular bridge, and scripting its own browser sign-in is not
//! needed to time its relay), side by side in one run: p50 and p99 of 500 sequential
//! calls each.
//! Run: `cargo bench -p mcp-auth-proxy --bench bridge` (after `npm ci` in
//! `tests/external/ts-client`, which the test command runs).

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tower_mcp_auth::testing::{TestAuthServer, TestMcpServer};

const CALLS: usize = 500;
const WARM_UP: usize = 50;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn call(id: usize) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "whoami", "arguments": {}}})
    .to_string()
}

/// Spawns a stdio bridge, initializes it (signing in if it must), and times `CALLS`
/// sequential tool calls through it after a warm-up; sorted.
async fn through_stdio(mut command: tokio::process::Command) -> Vec<Duration> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the bridge starts");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    // A line out, and (unless it is a notification) the answer in.
    let mut exchange = async |line: String| -> Value {
        stdin.write_all(line.as_bytes()).await.expect("write");
        stdin.write_all(b"\n").await.expect("write");
        stdin.flush().await.expect("flush");
        if !line.contains("\"id\"") {
            return Value::Null;
        }
        let answer = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("an answer within 60 s")
            .expect("read")
            .expect("an answer");
        serde_json::from_str(&answer).expect("JSON-RPC")
    };
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"}}});
    let answer = exchange(init.to_string()).await;
    assert!(answer["result"].is_object(), "{answer}");
    exchange(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string()).await;
    for id in 1..=WARM_UP {
        exchange(call(id)).await;
    }
    let mut times = Vec::with_capacity(CALLS);
    for id in 0..CALLS {
        let sent = Instant::now();
        let answer = exchange(call(1000 + id)).await;
        times.push(sent.elapsed());
        assert_eq!(answer["result"]["content"][0]["text"], "alice", "{answer}");
    }
    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    times.sort();
    times
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bridge = env!("CARGO_BIN_EXE_mcp-auth-proxy");
    let auth = TestAuthServer::start().await.expect("auth server");
    auth.set_consenting_user("alice");
    auth.register_client("direct", None);
    let mcp = TestMcpServer::start(&auth).await.expect("MCP server");
    mcp.set_stateless(true);
    let dir = std::env::temp_dir().join(format!("bridge-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let jar = dir.join("cookies.txt");
    let token = auth.issue("direct", "alice", None);
    let bearer = format!("Bearer {}", token.access_token.expose());

    // The bridge with OAuth: the sign-in happens at `initialize`, once.
    let mut oauth = tokio::process::Command::new(bridge);
    oauth
        .args(["stdio", &mcp.url(), "--allow-loopback-http", "--store"])
        .arg(dir.join("credentials.db"))
        .arg("--browser-command")
        .arg(format!(
            "curl -fsSL -o /dev/null -c {jar} -b {jar}",
            jar = jar.display()
        ));
    let through_oauth = through_stdio(oauth).await;
    assert_eq!(auth.stats().code_exchanges, 1, "one sign-in");

    let mut header = tokio::process::Command::new(bridge);
    header
        .args(["stdio", &mcp.url(), "--allow-loopback-http", "--no-browser"])
        .args(["--header", "Authorization: ${BENCH_BEARER}"])
        .env("BENCH_BEARER", &bearer);
    let through_header = through_stdio(header).await;

    let client_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/external/ts-client");
    let mcp_remote = format!("{client_dir}/node_modules/mcp-remote/dist/proxy.js");
    assert!(
        std::path::Path::new(&mcp_remote).exists(),
        "mcp-remote is not installed: run `npm ci` in {client_dir} (the test command does)"
    );
    let mut remote = tokio::process::Command::new("npx");
    remote
        .args(["-y", "-p", "node@22", "node", &mcp_remote, &mcp.url()])
        .args(["--allow-http", "--transport", "http-only", "--silent"])
        .args(["--header", "Authorization:${BENCH_BEARER}"])
        .env("BENCH_BEARER", &bearer)
        // Its own state directory, not the user's.
        .env("MCP_REMOTE_CONFIG_DIR", dir.join("mcp-remote"));
    let through_remote = through_stdio(remote).await;

    let http = tower_mcp_auth::client::ReqwestService::builder()
        .expect("TLS roots")
        .build()
        .expect("client");
    let send = |id: usize| {
        http.post(mcp.url())
            .header("authorization", &bearer)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(call(id))
            .send()
    };
    for id in 1..=WARM_UP {
        send(id).await.expect("warm-up");
    }
    let mut direct = Vec::with_capacity(CALLS);
    for id in 0..CALLS {
        let sent = Instant::now();
        let answer: Value = send(id).await.expect("sent").json().await.expect("JSON");
        direct.push(sent.elapsed());
        assert_eq!(answer["result"]["content"][0]["text"], "alice", "{answer}");
    }
    direct.sort();

    println!("bridge bench: {CALLS} sequential tools/call each way; loopback fixtures");
    println!("{:<44} {:>10} {:>10} {:>12}", "", "p50", "p99", "added p50");
    let base = percentile(&direct, 0.5);
    for (name, times) in [
        ("direct HTTP client", &direct),
        ("mcp-auth-proxy stdio (OAuth, stored token)", &through_oauth),
        ("mcp-auth-proxy stdio --header", &through_header),
        ("mcp-remote 0.15.1 --header", &through_remote),
    ] {
        println!(
            "{:<44} {:>10} {:>10} {:>12}",
            name,
            micros(percentile(times, 0.5)),
            micros(percentile(times, 0.99)),
            format!("+{}", micros(percentile(times, 0.5).saturating_sub(base)))
        );
    }
    println!(
        "added by mcp-auth-proxy stdio (OAuth) at p50: {} (goal <= 1 ms); mcp-remote adds {:.1}x as much",
        micros(percentile(&through_oauth, 0.5).saturating_sub(base)),
        percentile(&through_remote, 0.5)
            .saturating_sub(base)
            .as_secs_f64()
            / percentile(&through_oauth, 0.5)
                .saturating_sub(base)
                .as_secs_f64()
                .max(1e-9)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
