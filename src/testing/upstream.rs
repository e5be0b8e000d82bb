//! A plain HTTP upstream on loopback that can answer badly, die and come back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

use super::{ServerHandle, lock};

struct UpstreamState {
    status: AtomicU16,
    retry_after_secs: AtomicU64,
    requests: AtomicU64,
    hang: AtomicBool,
}

/// An HTTP server on `127.0.0.1` answering every request with a configurable status
/// (200 by default), counting what reaches it. [`stop`](Self::stop) kills it (connections
/// are then refused) and [`restart`](Self::restart) brings it back on the same port: the
/// upstream of circuit breaker tests and benchmarks.
///
/// ```
/// use tower_mcp_auth::testing::TestUpstream;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let upstream = TestUpstream::start().await?;
/// upstream.set_status(503);
/// upstream.stop();
/// upstream.restart().await?;
/// # Ok(())
/// # }
/// ```
pub struct TestUpstream {
    addr: SocketAddr,
    state: Arc<UpstreamState>,
    server: Mutex<Option<ServerHandle>>,
}

impl TestUpstream {
    /// Starts on an ephemeral loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let state = Arc::new(UpstreamState {
            status: AtomicU16::new(200),
            retry_after_secs: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            hang: AtomicBool::new(false),
        });
        let server = ServerHandle::spawn(router(state.clone()), ("127.0.0.1", 0)).await?;
        Ok(Self {
            addr: server.addr,
            state,
            server: Mutex::new(Some(server)),
        })
    }

    /// `http://127.0.0.1:<port>/mcp`.
    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// The bound address (kept across restarts).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The status every request gets from now on.
    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// A `Retry-After` (seconds) on every answer; 0 for none.
    pub fn set_retry_after(&self, seconds: u64) {
        self.state.retry_after_secs.store(seconds, Ordering::SeqCst);
    }

    /// Accept requests but never answer them (until set back to `false`).
    pub fn set_hang(&self, hang: bool) {
        self.state.hang.store(hang, Ordering::SeqCst);
    }

    /// Requests that reached the server.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Kills the server: new connections are refused. (Clients that keep connections
    /// alive should not pool them, or they keep talking to the dying task.)
    pub fn stop(&self) {
        lock(&self.server).take();
    }

    /// Starts the server again on the same port. The stopped server's listener closes
    /// once the runtime has dropped its aborted task, so binding is retried for up to 2 s.
    pub async fn restart(&self) -> std::io::Result<()> {
        let mut attempts = 0;
        let server = loop {
            match ServerHandle::spawn(router(self.state.clone()), self.addr).await {
                Ok(server) => break server,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempts < 200 => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(e) => return Err(e),
            }
        };
        *lock(&self.server) = Some(server);
        Ok(())
    }
}

impl std::fmt::Debug for TestUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestUpstream")
            .field("addr", &self.addr)
            .field("requests", &self.requests())
            .finish()
    }
}

fn router(state: Arc<UpstreamState>) -> Router {
    Router::new().fallback(any(answer)).with_state(state)
}

async fn answer(State(state): State<Arc<UpstreamState>>) -> Response {
    state.requests.fetch_add(1, Ordering::SeqCst);
    if state.hang.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    let status =
        StatusCode::from_u16(state.status.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK);
    let mut response = (status, "{}").into_response();
    let retry_after = state.retry_after_secs.load(Ordering::SeqCst);
    if retry_after > 0 {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, retry_after.into());
    }
    response
}
