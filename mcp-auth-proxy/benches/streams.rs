//! Many concurrent SSE streams through the `mcp-auth-proxy` binary: memory per open
//! stream, every event delivered in order, the latency of a plain call while the
//! streams are open against the same call on an idle gateway, and the share of a core
//! the gateway spends relaying their events. The upstream (a hyper
//! server in this process) sends each stream an event a second, numbered. Run over
//! HTTP/1.1 to the upstream (two descriptors per stream in the gateway) and over h2c
//! (`h2c = true`: the upstream side shares a few connections), then the streams are
//! closed and the gateway's memory read again.
//!
//! Run: `cargo bench -p mcp-auth-proxy --bench streams` (`STREAMS=1000,5000,10000`, the
//! default, to choose the counts; a count the descriptor limit, `ulimit -n`, cannot
//! hold is reported as skipped, with the reason).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{Full, StreamBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::cpu_ticks;

const ANSWER: &str = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
const CALLS: usize = 200;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The upstream: GET is an event stream (`data: N` every second from 0), anything else
/// the fixed answer; HTTP/1.1 and h2c on one port.
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
                    let service =
                        hyper::service::service_fn(|request: http::Request<_>| async move {
                            let response = if request.method() == http::Method::GET {
                                let ticks = tokio_stream_interval().enumerate().map(|(n, _)| {
                                    Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(
                                        format!("data: {n}\n\n"),
                                    )))
                                });
                                http::Response::builder()
                                    .header("content-type", "text/event-stream")
                                    .body(Body::new(StreamBody::new(ticks)))
                            } else {
                                http::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Body::new(Full::new(Bytes::from_static(
                                        ANSWER.as_bytes(),
                                    ))))
                            };
                            Ok::<_, Infallible>(response.expect("response"))
                        });
                    let mut builder = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    // One h2c connection carries every stream: allow them all (hyper's
                    // default is 200, past which a client queues its requests).
                    builder.http2().max_concurrent_streams(u32::MAX);
                    let _ = builder
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    port
}

/// A tick now and then every second.
fn tokio_stream_interval() -> impl futures::Stream<Item = ()> {
    futures::stream::unfold(
        tokio::time::interval(Duration::from_secs(1)),
        |mut interval| async move {
            interval.tick().await;
            Some(((), interval))
        },
    )
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// p99 of `CALLS` sequential POSTs through the gateway.
async fn call_p99(http: &reqwest::Client, url: &str) -> Duration {
    let mut times = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let sent = Instant::now();
        let response = http
            .post(url)
            .header("content-type", "application/json")
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
            .send()
            .await
            .expect("answered");
        assert!(response.status().is_success());
        response.bytes().await.expect("body");
        times.push(sent.elapsed());
    }
    times.sort();
    times[(times.len() - 1) * 99 / 100]
}

/// One stream: connects, asks, then checks every event is the next number. Counts
/// the stream as open at its first event, and gaps as lost events.
async fn stream(port: u16, open: Arc<AtomicUsize>, lost: Arc<AtomicUsize>) {
    let Ok(mut socket) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return;
    };
    let request = format!(
        "GET /bench/mcp HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\naccept: text/event-stream\r\n\r\n"
    );
    if socket.write_all(request.as_bytes()).await.is_err() {
        return;
    }
    let mut buffer = vec![0u8; 4096];
    let mut text = String::new();
    let mut next = 0u64;
    loop {
        let Ok(n) = socket.read(&mut buffer).await else {
            return;
        };
        if n == 0 {
            return;
        }
        text.push_str(&String::from_utf8_lossy(&buffer[..n]));
        while let Some(at) = text.find("data: ") {
            let rest = &text[at + 6..];
            let Some(end) = rest.find('\n') else { break };
            if let Ok(number) = rest[..end].trim().parse::<u64>() {
                if next == 0 && number == 0 {
                    open.fetch_add(1, Ordering::Relaxed);
                }
                if number != next {
                    lost.fetch_add((number.saturating_sub(next)) as usize, Ordering::Relaxed);
                }
                next = number + 1;
            }
            text = rest[end..].to_owned();
        }
    }
}

/// This process's limit on open descriptors (`ulimit -n`).
fn descriptor_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(1024)
}

/// Runs each count; whether every stream opened and no event was lost.
async fn run(label: &str, h2c: bool, port: u16, pid: u32, counts: &[usize]) -> bool {
    let mut whole = true;
    let http = tower_mcp_auth::client::ReqwestService::builder()
        .expect("TLS roots")
        .build()
        .expect("client");
    let url = format!("http://127.0.0.1:{port}/bench/mcp");
    let idle_p99 = call_p99(&http, &url).await;
    let limit = descriptor_limit();
    for &count in counts {
        // Over HTTP/1.1 each stream holds a descriptor at both ends of both hops: two in
        // the gateway, two here (caller and upstream).
        let needed = if h2c { count } else { 2 * count } + 256;
        if needed > limit {
            println!(
                "{label:<9} {count:>7}  skipped: needs {needed} descriptors in the gateway and here; the limit is {limit}"
            );
            continue;
        }
        let before = rss_kib(pid);
        let open = Arc::new(AtomicUsize::new(0));
        let lost = Arc::new(AtomicUsize::new(0));
        let streams: Vec<_> = (0..count)
            .map(|_| tokio::spawn(stream(port, open.clone(), lost.clone())))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        while open.load(Ordering::Relaxed) < count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let opened = open.load(Ordering::Relaxed);
        // Three more events on every stream, then the call latency among them.
        let (cpu_before, window) = (cpu_ticks(pid), Instant::now());
        tokio::time::sleep(Duration::from_secs(3)).await;
        // The share of one core the gateway spends relaying the events.
        let busy = (cpu_ticks(pid) - cpu_before) as f64 * 0.01 / window.elapsed().as_secs_f64();
        let busy_p99 = call_p99(&http, &url).await;
        let during = rss_kib(pid);
        for task in &streams {
            task.abort();
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let after = rss_kib(pid);
        let per_stream = (during.saturating_sub(before)) as f64 / opened.max(1) as f64;
        whole &= opened == count && lost.load(Ordering::Relaxed) == 0;
        println!(
            "{label:<9} {count:>7} {opened:>7} {:>7} {per_stream:>9.1} {:>9} {:>9} {:>9.2}ms {:>9.2}ms {:>8.0}%",
            lost.load(Ordering::Relaxed),
            during / 1024,
            after / 1024,
            idle_p99.as_secs_f64() * 1e3,
            busy_p99.as_secs_f64() * 1e3,
            busy * 100.0,
        );
    }
    whole
}

fn main() {
    let counts: Vec<usize> = std::env::var("STREAMS")
        .unwrap_or_else(|_| "1000,5000,10000".to_owned())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let dir = std::env::temp_dir().join(format!("streams-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let upstream = upstream();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("streams through mcp-auth-proxy; memory of the gateway process (VmRSS)");
    println!(
        "{:<9} {:>7} {:>7} {:>7} {:>9} {:>9} {:>9} {:>11} {:>11}",
        "upstream",
        "streams",
        "opened",
        "lost",
        "KiB/strm",
        "MiB open",
        "MiB after",
        "p99 idle",
        "p99 open"
    );
    let mut whole = true;
    for h2c in [false, true] {
        let (gateway, port) = common::gateway(
            &dir,
            &format!("h2c-{h2c}"),
            upstream,
            &format!("auth = \"none\"\nh2c = {h2c}\n"),
            &[],
        );
        let pid = gateway.0.id();
        let label = if h2c { "h2c" } else { "HTTP/1.1" };
        whole &= runtime.block_on(run(label, h2c, port, pid, &counts));
        drop(gateway);
    }
    let _ = std::fs::remove_dir_all(&dir);
    if !whole {
        eprintln!("a stream did not open, or an event was lost");
        std::process::exit(1);
    }
}
