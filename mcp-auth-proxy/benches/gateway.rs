//! The cost of `mcp-auth-proxy` on the way: the same MCP calls sent to the loopback MCP
//! fixture directly, and through the gateway (its full server: identity header, body
//! limit, trace, breaker, upstream auth `header`), side by side in one run.
//!
//! * JSON tool call: 16 concurrent callers for 3 s each way; requests/s, p50, p99.
//! * SSE: 300 sequential `tools/call`s answered as an event stream; the time to the
//!   first event, p50 and p99.
//!
//! Everything (callers, gateway, MCP server) shares this machine's cores, so the
//! gateway's second HTTP hop competes with the callers: the ratio is a floor.
//! Run: `cargo bench -p mcp-auth-proxy --bench gateway`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use mcp_auth_proxy::{Gateway, ProxyConfig};
use serde_json::json;
use tower_mcp_auth::testing::{TestAuthServer, TestMcpServer};

const CALLERS: usize = 16;
const RUN: Duration = Duration::from_secs(3);
const SSE_CALLS: usize = 300;

fn call_body() -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "whoami", "arguments": {}}})
    .to_string()
}

/// Where a caller sends, and the headers it adds.
#[derive(Clone)]
struct Target {
    url: String,
    headers: Vec<(&'static str, String)>,
}

impl Target {
    fn request(&self, http: &reqwest::Client) -> reqwest::RequestBuilder {
        let mut request = http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(call_body());
        for (name, value) in &self.headers {
            request = request.header(*name, value);
        }
        request
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Throughput {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

async fn throughput(target: &Target, http: &reqwest::Client) -> Throughput {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (target, http, stop) = (target.clone(), http.clone(), stop.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let response = target.request(&http).send().await.expect("answered");
                    assert!(response.status().is_success(), "{}", response.status());
                    let body = response.bytes().await.expect("body");
                    assert!(body.windows(5).any(|w| w == b"alice"), "the tool's answer");
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(RUN).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for caller in callers {
        all.extend(caller.await.expect("caller"));
    }
    let elapsed = started.elapsed();
    all.sort();
    Throughput {
        per_second: all.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
    }
}

/// Time to the first SSE event of each of `SSE_CALLS` sequential calls, sorted.
async fn first_events(target: &Target, http: &reqwest::Client) -> Vec<Duration> {
    let mut times = Vec::with_capacity(SSE_CALLS);
    for _ in 0..SSE_CALLS {
        let sent = Instant::now();
        let response = target.request(http).send().await.expect("answered");
        assert!(
            response
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream")),
            "an SSE answer"
        );
        let mut body = http::Response::from(response).into_body();
        loop {
            let frame = body.frame().await.expect("an event").expect("a frame");
            if frame.data_ref().is_some_and(|d| !d.is_empty()) {
                break;
            }
        }
        times.push(sent.elapsed());
        while body.frame().await.is_some() {}
    }
    times.sort();
    times
}

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let auth = TestAuthServer::start().await.expect("auth server");
        auth.register_client("bench", None);
        let mcp = TestMcpServer::start(&auth).await.expect("MCP server");
        mcp.set_stateless(true);
        let token = auth.issue("bench", "alice", None);
        let bearer = format!("Bearer {}", token.access_token.expose());

        let dir = std::env::temp_dir().join(format!("gateway-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = ProxyConfig::parse(
            &format!(
                r#"listen = "127.0.0.1:0"
[store]
sqlite = "{}"
[identity]
mode = "trusted-header"
header = "x-user"
trusted_sources = ["127.0.0.1"]
[[upstream]]
name = "docs"
url = "{}"
auth = "header"
header_name = "authorization"
header_value_env = "DOCS_BEARER"
"#,
                dir.join("gateway.db").display(),
                mcp.url()
            ),
            &|name| (name == "DOCS_BEARER").then(|| bearer.clone()),
        )
        .expect("config");
        let app = Gateway::new(&config).expect("gateway").router();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listener");
        let addr = listener.local_addr().expect("address");
        // As the binary serves it: TCP_NODELAY on every connection.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });

        let direct = Target {
            url: mcp.url(),
            headers: vec![("authorization", bearer.clone())],
        };
        let through = Target {
            url: format!("http://{addr}/docs/mcp"),
            headers: vec![("x-user", "alice".to_owned())],
        };
        let http = tower_mcp_auth::client::ReqwestService::builder()
            .expect("TLS roots")
            .pool_max_idle_per_host(64)
            .build()
            .expect("client");

        // Warm both paths (connections, the gateway's breaker entry).
        for target in [&direct, &through] {
            for _ in 0..50 {
                target.request(&http).send().await.expect("warm-up");
            }
        }
        println!("gateway bench: {CALLERS} concurrent callers for {RUN:?}, then {SSE_CALLS} SSE calls; loopback fixtures");
        let json_direct = throughput(&direct, &http).await;
        let json_through = throughput(&through, &http).await;
        println!(
            "{:<28} {:>10} {:>10} {:>10}",
            "JSON tools/call", "req/s", "p50", "p99"
        );
        for (name, t) in [("direct", &json_direct), ("through the gateway", &json_through)] {
            println!(
                "{:<28} {:>10.0} {:>10} {:>10}",
                name,
                t.per_second,
                micros(t.p50),
                micros(t.p99)
            );
        }
        let ratio = json_through.per_second / json_direct.per_second;
        println!("throughput through / direct: {ratio:.2} (goal >= 0.8)");

        mcp.set_sse(true);
        let sse_direct = first_events(&direct, &http).await;
        let sse_through = first_events(&through, &http).await;
        println!("{:<28} {:>10} {:>10}", "SSE first event", "p50", "p99");
        for (name, times) in [("direct", &sse_direct), ("through the gateway", &sse_through)] {
            println!(
                "{:<28} {:>10} {:>10}",
                name,
                micros(percentile(times, 0.5)),
                micros(percentile(times, 0.99))
            );
        }
        let added = percentile(&sse_through, 0.5).saturating_sub(percentile(&sse_direct, 0.5));
        println!(
            "first SSE event, added by the gateway at p50: {} (goal <= 1 ms)",
            micros(added)
        );
        let _ = std::fs::remove_dir_all(&dir);
    });
}
