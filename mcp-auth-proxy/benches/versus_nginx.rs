//! `mcp-auth-proxy` against the reverse proxy operators already run: the same MCP
//! `tools/call` POSTed to one fast upstream (a fixed JSON-RPC answer from a tiny hyper
//! server) directly, through nginx (`proxy_pass` with upstream keep-alive, one worker),
//! and through the gateway's binary with `auth = "none"` and with `auth = "header"`.
//! 64 concurrent callers on kept-alive connections, rounds of 3 s alternated twice;
//! requests/s, p50 and p99 per path, each proxy's ratio to nginx, and the CPU time each
//! proxy process spent per request (user + system, from `/proc`): on shared cores the
//! throughput ratio follows from it.
//!
//! The gateway runs once more with one runtime worker, as nginx runs with one worker
//! process. Two yardsticks more, each in a process of its own: a bare hyper proxy (no logic: the
//! least a Rust proxy on hyper costs) and the gateway's own stack (axum and reqwest)
//! with none of its checks. Between them and the gateway, what its logic costs; between
//! them and nginx, what the stack costs.
//!
//! Needs Debian's `nginx` (the test command installs it). Everything shares this
//! machine's cores: the callers, the proxy and the upstream.
//! Run: `cargo bench -p mcp-auth-proxy --bench versus_nginx`.

use std::convert::Infallible;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;

mod bare_proxy;
mod common;
use common::{Running, cpu_ticks};

const CALLERS: usize = 64;
const ROUND: Duration = Duration::from_secs(3);
const ROUNDS: usize = 2;
const ANSWER: &str =
    r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}]}}"#;
const CALL: &str =
    r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{}}}"#;

/// The upstream: every request answered with [`ANSWER`], on its own runtime thread.
fn upstream() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_| async {
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(ANSWER.as_bytes())))
                                .expect("response"),
                        )
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    port
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

fn wait_for(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// nginx with one worker (`master_process off`), keep-alive to the upstream.
fn nginx(dir: &Path, upstream: u16) -> (Running, u16) {
    let port = free_port();
    let d = dir.display();
    let config = format!(
        r#"daemon off;
master_process off;
error_log {d}/nginx-error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream mcp {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://mcp;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"#
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, config).expect("nginx.conf");
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("nginx must be installed (the test command installs Debian's package)");
    wait_for(port);
    (Running(child), port)
}

struct Round {
    requests: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// The proxy process's CPU time during the rounds (clock ticks of 10 ms).
    cpu_ticks: u64,
}

async fn round(url: &str, http: &reqwest::Client) -> Round {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (url, http, stop) = (url.to_owned(), http.clone(), stop.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let response = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("accept", "application/json, text/event-stream")
                        .body(CALL)
                        .send()
                        .await
                        .expect("answered");
                    assert!(response.status().is_success(), "{}", response.status());
                    let body = response.bytes().await.expect("body");
                    assert_eq!(&body[..], ANSWER.as_bytes(), "the upstream's answer");
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(ROUND).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for caller in callers {
        latencies.extend(caller.await.expect("caller"));
    }
    Round {
        requests: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
        cpu_ticks: 0,
    }
}

fn main() {
    bare_proxy::run_if_asked();
    let dir = std::env::temp_dir().join(format!("versus-nginx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let upstream = upstream();
    let (nginx, nginx_port) = nginx(&dir, upstream);
    let (none, none_port) = common::gateway(&dir, "none", upstream, "auth = \"none\"\n", &[]);
    let (header, header_port) = common::gateway(
        &dir,
        "header",
        upstream,
        "auth = \"header\"\nheader_name = \"authorization\"\nheader_value_env = \"BENCH_BEARER\"\n",
        &[("BENCH_BEARER", "Bearer bench-token")],
    );
    // One runtime worker, like nginx's one worker process (tokio reads the variable).
    let (one_worker, one_worker_port) = common::gateway(
        &dir,
        "one-worker",
        upstream,
        "auth = \"none\"\n",
        &[("TOKIO_WORKER_THREADS", "1")],
    );
    let (bare_hyper, bare_hyper_port) = bare_proxy::spawn("hyper", upstream);
    let (bare_axum, bare_axum_port) = bare_proxy::spawn("axum-reqwest", upstream);
    let paths = [
        ("direct", format!("http://127.0.0.1:{upstream}/mcp"), None),
        (
            "nginx proxy_pass",
            format!("http://127.0.0.1:{nginx_port}/mcp"),
            Some(nginx.0.id()),
        ),
        (
            "bare hyper proxy",
            format!("http://127.0.0.1:{bare_hyper_port}/mcp"),
            Some(bare_hyper.0.id()),
        ),
        (
            "bare axum + reqwest proxy",
            format!("http://127.0.0.1:{bare_axum_port}/mcp"),
            Some(bare_axum.0.id()),
        ),
        (
            "mcp-auth-proxy, auth none",
            format!("http://127.0.0.1:{none_port}/bench/mcp"),
            Some(none.0.id()),
        ),
        (
            "mcp-auth-proxy, auth header",
            format!("http://127.0.0.1:{header_port}/bench/mcp"),
            Some(header.0.id()),
        ),
        (
            "mcp-auth-proxy, none, 1 worker",
            format!("http://127.0.0.1:{one_worker_port}/bench/mcp"),
            Some(one_worker.0.id()),
        ),
    ];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut results = runtime.block_on(async {
        let http = tower_mcp_auth::client::ReqwestService::builder()
            .expect("TLS roots")
            .pool_max_idle_per_host(CALLERS)
            .build()
            .expect("client");
        // Warm every path's connections, then alternate rounds.
        for (_, url, _) in &paths {
            round(url, &http).await;
        }
        let mut totals: Vec<Round> = paths
            .iter()
            .map(|_| Round {
                requests: 0,
                elapsed: Duration::ZERO,
                latencies: Vec::new(),
                cpu_ticks: 0,
            })
            .collect();
        for _ in 0..ROUNDS {
            for (i, (_, url, pid)) in paths.iter().enumerate() {
                let cpu_before = pid.map_or(0, cpu_ticks);
                let result = round(url, &http).await;
                totals[i].cpu_ticks += pid.map_or(0, cpu_ticks) - cpu_before;
                totals[i].requests += result.requests;
                totals[i].elapsed += result.elapsed;
                totals[i].latencies.extend(result.latencies);
            }
        }
        totals
    });
    let rate = |r: &Round| r.requests as f64 / r.elapsed.as_secs_f64();
    // The proxy's CPU time per request, in µs (ticks of 10 ms).
    let cpu_per_request = |r: &Round| r.cpu_ticks as f64 * 10_000.0 / r.requests.max(1) as f64;
    let nginx_rate = rate(&results[1]);
    println!(
        "versus nginx: {CALLERS} callers, {ROUNDS} alternated rounds of {}s per path",
        ROUND.as_secs()
    );
    println!(
        "{:<30} {:>10} {:>10} {:>10} {:>9} {:>14}",
        "path", "req/s", "p50", "p99", "x nginx", "proxy CPU/req"
    );
    for ((name, _, pid), result) in paths.iter().zip(results.iter_mut()) {
        result.latencies.sort();
        let at = |p: f64| result.latencies[((result.latencies.len() - 1) as f64 * p) as usize];
        let cpu = match pid {
            Some(_) => format!("{:.1} µs", cpu_per_request(result)),
            None => "-".to_owned(),
        };
        println!(
            "{:<30} {:>10.0} {:>8.2}ms {:>8.2}ms {:>9.2} {:>14}",
            name,
            rate(result),
            at(0.5).as_secs_f64() * 1e3,
            at(0.99).as_secs_f64() * 1e3,
            rate(result) / nginx_rate,
            cpu
        );
    }
    // What the gateway's logic costs above its bare stack, per request.
    let stack = cpu_per_request(&results[3]);
    for (name, result) in [
        ("auth none", &results[4]),
        ("auth header", &results[5]),
        ("none, 1 worker", &results[6]),
    ] {
        println!(
            "mcp-auth-proxy, {name}: {:.1} µs of CPU per request above the bare axum + reqwest proxy",
            cpu_per_request(result) - stack
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
