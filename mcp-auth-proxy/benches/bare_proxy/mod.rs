//! Yardsticks for `versus_nginx`: reverse proxies with no logic at all, each in a
//! process of its own (the bench runs itself again with `BARE_PROXY` set), so their CPU
//! per request is measured like nginx's and the gateway's.
//!
//! - `hyper`: hyper's HTTP/1.1 server and hyper-util's pooled client, the request
//!   streamed through unchanged but for its URI and `Host`: the least a Rust proxy on
//!   hyper does.
//! - `axum-reqwest`: the gateway's libraries (axum's server, the POST body read whole,
//!   reqwest's client) without its routing, extractors, layers or checks: what the
//!   libraries cost by themselves.
//!
//! Both print `listening on http://ADDRESS` first, like the gateway.

use std::convert::Infallible;
use std::process::{Command, Stdio};

use http_body_util::BodyExt;

use super::common::{Running, listening};

/// The environment variable that makes the bench binary a bare proxy.
const ROLE: &str = "BARE_PROXY";
/// The upstream's port, for the bare proxy.
const UPSTREAM: &str = "BARE_PROXY_UPSTREAM";

/// Starts a bare proxy of `kind` (`hyper` or `axum-reqwest`) in front of `upstream`.
pub fn spawn(kind: &str, upstream: u16) -> (Running, u16) {
    let mut command = Command::new(std::env::current_exe().expect("the bench binary"));
    command
        .env(ROLE, kind)
        .env(UPSTREAM, upstream.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    listening(command)
}

/// In the bench binary's `main`, first: serves as the bare proxy when started as one,
/// and never returns then.
pub fn run_if_asked() {
    let Ok(kind) = std::env::var(ROLE) else {
        return;
    };
    let upstream: u16 = std::env::var(UPSTREAM)
        .ok()
        .and_then(|p| p.parse().ok())
        .expect("BARE_PROXY_UPSTREAM");
    // Like the gateway's binary: a multi-threaded runtime, one worker per core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!(
            "listening on http://{}",
            listener.local_addr().expect("address")
        );
        match kind.as_str() {
            "hyper" => hyper_proxy(listener, upstream).await,
            "axum-reqwest" => axum_reqwest_proxy(listener, upstream).await,
            other => panic!("unknown bare proxy {other:?}"),
        }
    });
    std::process::exit(0);
}

async fn hyper_proxy(listener: tokio::net::TcpListener, upstream: u16) {
    // No Nagle, as reqwest and nginx set it too.
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, hyper::body::Incoming>(connector);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |mut request: http::Request<hyper::body::Incoming>| {
                    let client = client.clone();
                    async move {
                        let path = request
                            .uri()
                            .path_and_query()
                            .map_or("/", |p| p.as_str())
                            .to_owned();
                        *request.uri_mut() = format!("http://127.0.0.1:{upstream}{path}")
                            .parse()
                            .expect("uri");
                        request.headers_mut().remove(http::header::HOST);
                        let response = client.request(request).await.expect("upstream answered");
                        Ok::<_, Infallible>(response)
                    }
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn axum_reqwest_proxy(listener: tokio::net::TcpListener, upstream: u16) {
    let client = tower_mcp_auth::client::ReqwestService::builder()
        .expect("TLS roots")
        .build()
        .expect("client");
    let url = format!("http://127.0.0.1:{upstream}/mcp");
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let (mut parts, body) = request.into_parts();
            let body = body.collect().await.expect("body").to_bytes();
            parts.headers.remove(http::header::HOST);
            let response = client
                .request(parts.method, &url)
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .expect("upstream answered");
            let response = http::Response::from(response);
            response.map(axum::body::Body::new)
        }
    });
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await.expect("serve");
}
