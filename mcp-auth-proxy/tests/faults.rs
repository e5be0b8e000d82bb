//! Faults on the gateway's side that must not be blamed on the upstream: its own file
//! descriptors running out (no circuit opens, 503 with the cause), and a Redis that
//! lost its data (`/readyz` says so). The gateway runs as its real binary.

mod common;

use std::time::{Duration, Instant};

use common::RedisServer;

/// An upstream that answers every POST with a JSON-RPC result and closes the
/// connection: each call through the gateway needs a descriptor of its own.
async fn closing_upstream() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            // A connection the gateway gave up on before it was accepted (its side ran
            // out of descriptors) fails one accept, never the server.
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 8192];
                // The head, then as much body as it announces.
                loop {
                    let Ok(n) = stream.read(&mut buffer).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let body = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    url
}

/// The gateway runs out of file descriptors (a low `ulimit -n`, connections hogging
/// the rest): its calls get 503 naming the local cause, the upstream's circuit stays
/// closed, and the first call after the descriptors come back goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_descriptor_exhaustion_opens_no_circuit() {
    let upstream = closing_upstream().await;
    let config = common::gateway::config(
        "127.0.0.1",
        &format!("\n[[upstream]]\nname = \"tools\"\nurl = \"{upstream}\"\nauth = \"none\"\n"),
    );
    let gateway = common::gateway::start_limited("fd-exhaustion", &config, &[], Some(64));
    let base = gateway.url.clone();
    let endpoint = format!("{base}/tools/mcp");
    let address: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();

    // Connections the gateway accepted before its descriptors ran out: once they have,
    // a new connection waits in the kernel's backlog, unaccepted, so every call during
    // the exhaustion goes over one of these. One that the gateway closes after its
    // answer is set aside; one that it leaves unanswered fails the test.
    let mut connections = Vec::new();
    for _ in 0..24 {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let (status, body) = raw_call(&mut stream, address)
            .await
            .expect("a call before the exhaustion");
        assert_eq!(status, 200, "{body}");
        connections.push(stream);
    }
    let mut closed_after_answer = 0;
    let mut call = async || loop {
        let mut stream = connections
            .pop()
            .expect("every prepared connection was closed by the gateway");
        match raw_call(&mut stream, address).await {
            Some(answer) => {
                connections.insert(0, stream);
                return answer;
            }
            None => closed_after_answer += 1,
        }
    };

    let hogs: Vec<_> = (0..100)
        .filter_map(|_| std::net::TcpStream::connect(address).ok())
        .collect();
    // Until the gateway has taken up the hogs and has no descriptor left.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = call().await;
        assert!(
            !body.contains("upstream unavailable"),
            "the circuit opened: {body}"
        );
        if status == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "the descriptors never ran out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut local = 0;
    for _ in 0..20 {
        let (status, body) = call().await;
        assert!(
            !body.contains("upstream unavailable"),
            "the upstream's circuit opened: {status} {body}"
        );
        if status == 503 && body.contains("out of local resources") {
            local += 1;
        }
    }
    // More local failures than open a circuit (five in a row by default).
    assert!(
        local >= 10,
        "the gateway ran out of descriptors on {local} calls of 20"
    );
    println!("{closed_after_answer} connections were closed by the gateway after an answer");

    drop(hogs);
    // Back: a call on a new connection each time (the keep-alive connection that
    // lived through the exhaustion is sometimes left unanswered: an open finding of
    // issue 26, counted here, not hidden), until one gets through. The circuit must
    // never have opened.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut unanswered = 0;
    loop {
        let fresh = tower_mcp_auth::client::ReqwestService::builder()
            .unwrap()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let attempt = fresh
            .post(&endpoint)
            .header("content-type", "application/json")
            .header("x-user", "alice")
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
            .send()
            .await;
        match attempt {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                assert!(
                    !body.contains("upstream unavailable"),
                    "the circuit opened: {body}"
                );
                if status == 200 {
                    break;
                }
            }
            Err(error) => {
                unanswered += 1;
                println!("a call after the exhaustion went unanswered: {error:?}");
            }
        }
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("recovered; {unanswered} calls went unanswered on the way");
}

/// One `tools/list` over `stream` (HTTP/1.1, kept open): the answer's status and body,
/// or `None` when the gateway had closed the connection. A call left unanswered for
/// 20 s fails the test with that cause.
async fn raw_call(
    stream: &mut tokio::net::TcpStream,
    address: std::net::SocketAddr,
) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let request = format!(
        "POST /tools/mcp HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\nx-user: alice\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 8192];
    let read = async {
        loop {
            let n = stream.read(&mut buffer).await.ok()?;
            if n == 0 {
                return None;
            }
            answer.extend_from_slice(&buffer[..n]);
            if let Some(complete) = parse_answer(&answer) {
                return Some(complete);
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(20), read).await {
        Ok(answer) => answer,
        Err(_) => panic!("a connection the gateway had accepted went unanswered for 20 s"),
    }
}

/// A complete HTTP/1.1 answer in `bytes` (content-length or chunked), if there is one.
fn parse_answer(bytes: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(bytes);
    let end = text.find("\r\n\r\n")?;
    let head = text[..end].to_ascii_lowercase();
    let status = head.get(9..12)?.parse().ok()?;
    let rest = &text[end + 4..];
    if head.contains("transfer-encoding: chunked") {
        let mut body = String::new();
        let mut chunks = rest;
        loop {
            let line_end = chunks.find("\r\n")?;
            let size = usize::from_str_radix(chunks[..line_end].trim(), 16).ok()?;
            let data = chunks.get(line_end + 2..line_end + 2 + size)?;
            if size == 0 {
                return Some((status, body));
            }
            body.push_str(data);
            chunks = chunks.get(line_end + 2 + size + 2..)?;
        }
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (rest.len() >= length).then(|| (status, rest[..length].to_owned()))
}

/// The gateway's `/readyz` reports a Redis that lost its data (restarted without
/// persistence), not only one that cannot be reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_readyz_reports_a_wiped_redis() {
    let mut redis = RedisServer::start();
    let config = common::gateway::config(
        "127.0.0.1",
        "\n[[upstream]]\nname = \"x\"\nurl = \"http://127.0.0.1:9/mcp\"\nauth = \"none\"\n",
    )
    .replace(
        "[store]\nsqlite = \"gateway.db\"\n",
        "[store]\nredis_url_env = \"GATEWAY_REDIS_URL\"\n",
    );
    let url = redis.url();
    let gateway = common::gateway::start("readyz-wiped", &config, &[("GATEWAY_REDIS_URL", &url)]);
    let readyz = || async {
        let response = common::gateway::http()
            .get(format!("{}/readyz", gateway.url))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    assert_eq!(readyz().await.0, 200);
    redis.stop();
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = readyz().await;
        if status == 503 && body.contains("lost its data") {
            break;
        }
        assert!(Instant::now() < deadline, "never reported: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Still reported on the next probe: the operator must see it.
    let (status, body) = readyz().await;
    assert_eq!(status, 503, "{body}");
}
