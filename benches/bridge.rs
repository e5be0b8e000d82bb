//! What `mcp-auth-proxy stdio` adds to a tool call: the same `tools/call` to the
//! loopback MCP fixture sent by a stdio client through the bridge (a line written to
//! its stdin, the answer read from its stdout), and by a direct HTTP client holding a
//! token, side by side in one run: p50 and p99 of 500 sequential calls each.
//!
//! The bridge signs in once first (a curl browser follower), as a user would; the
//! measured calls use the stored, valid token.
//! Run: `cargo bench --bench bridge`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tower_mcp_auth::testing::{TestAuthServer, TestMcpServer};

const CALLS: usize = 500;

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

    let mut child = tokio::process::Command::new(bridge)
        .args(["stdio", &mcp.url(), "--allow-loopback-http", "--store"])
        .arg(dir.join("credentials.db"))
        .arg("--browser-command")
        .arg(format!(
            "curl -fsSL -o /dev/null -c {jar} -b {jar}",
            jar = jar.display()
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the bridge binary");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut exchange = async |line: String| -> Value {
        stdin.write_all(line.as_bytes()).await.expect("write");
        stdin.write_all(b"\n").await.expect("write");
        stdin.flush().await.expect("flush");
        let answer = lines.next_line().await.expect("read").expect("an answer");
        serde_json::from_str(&answer).expect("JSON-RPC")
    };
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"}}});
    // The sign-in happens here, once.
    let answer = exchange(init.to_string()).await;
    assert!(answer["result"].is_object(), "{answer}");
    for id in 1..=50 {
        exchange(call(id)).await; // warm-up
    }
    let mut through = Vec::with_capacity(CALLS);
    for id in 0..CALLS {
        let sent = Instant::now();
        let answer = exchange(call(1000 + id)).await;
        through.push(sent.elapsed());
        assert_eq!(answer["result"]["content"][0]["text"], "alice", "{answer}");
    }

    let token = auth.issue("direct", "alice", None);
    let http = tower_mcp_auth::client::ReqwestService::builder()
        .expect("TLS roots")
        .build()
        .expect("client");
    let send = |id: usize| {
        http.post(mcp.url())
            .header(
                "authorization",
                format!("Bearer {}", token.access_token.expose()),
            )
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(call(id))
            .send()
    };
    for id in 1..=50 {
        send(id).await.expect("warm-up");
    }
    let mut direct = Vec::with_capacity(CALLS);
    for id in 0..CALLS {
        let sent = Instant::now();
        let answer: Value = send(id).await.expect("sent").json().await.expect("JSON");
        direct.push(sent.elapsed());
        assert_eq!(answer["result"]["content"][0]["text"], "alice", "{answer}");
    }
    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;

    through.sort();
    direct.sort();
    println!("bridge bench: {CALLS} sequential tools/call each way; loopback fixtures");
    println!("{:<34} {:>10} {:>10}", "", "p50", "p99");
    for (name, times) in [
        ("direct HTTP client", &direct),
        ("stdio client through the bridge", &through),
    ] {
        println!(
            "{:<34} {:>10} {:>10}",
            name,
            micros(percentile(times, 0.5)),
            micros(percentile(times, 0.99))
        );
    }
    let added = percentile(&through, 0.5).saturating_sub(percentile(&direct, 0.5));
    println!(
        "added by the bridge at p50: {} (goal <= 1 ms)",
        micros(added)
    );
    assert_eq!(auth.stats().code_exchanges, 1, "one sign-in");
    let _ = std::fs::remove_dir_all(&dir);
}
