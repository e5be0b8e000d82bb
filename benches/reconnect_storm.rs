//! Reconnect storm: 512 clients keep calling an upstream that is down for a while, then
//! comes back. Side by side: no breaker, tower-resilience's circuit breaker (one circuit
//! for everything) and our keyed `CircuitBreakerLayer`.
//!
//! Reported per strategy: calls that reached the dead upstream (total and per second),
//! once it is back, the time until the first call succeeds and until every client has
//! succeeded again, and calls that hung (no answer within 10 s: dropped, and the client
//! goes on).
//!
//! Run: `cargo bench --bench reconnect_storm`. Exits non-zero if our breaker lets more
//! than one call per backoff window reach the dead upstream after it opened, if it lets
//! through fewer than 100 times fewer calls than no breaker, or if its clients are not
//! all back within 2 s of the upstream's return (default backoff: probes at most 1 s
//! apart), or if any of its calls hung; and if a strategy's run takes over a minute (a
//! watchdog thread then says where it stands).

use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_mcp_auth::testing::{ReqwestTransport, TestUpstream};
use tower_mcp_auth::{BreakerConfig, CircuitBreakerLayer, breaker::CircuitState};

const CLIENTS: usize = 512;
const HEALTHY: Duration = Duration::from_secs(1);
const OUTAGE: Duration = Duration::from_secs(4);
const AFTER: Duration = Duration::from_secs(8);
const RETRY_DELAY: Duration = Duration::from_millis(50);
const TRIP_AFTER: u32 = 5;
/// A call not answered within this (the HTTP client's own timeout is 5 s) is dropped
/// and counted as hung: a strategy whose calls stop returning must not stall the bench.
const CALL_BOUND: Duration = Duration::from_secs(10);

/// The longest a strategy's run may take: its phases (13 s), then [`CALL_BOUND`], then
/// slack for a loaded machine. Past it the watchdog reports where the run stands and
/// exits non-zero: the bench never hangs the test command.
const RUN_BOUND: Duration = Duration::from_secs(60);

/// Where the current run stands, for the watchdog (a thread of its own, outside the
/// runtime: it reports even if the runtime stalls).
struct Progress {
    strategy: Mutex<&'static str>,
    phase: Mutex<&'static str>,
    started: Mutex<std::time::Instant>,
    /// Per client: 0 between calls, 1 in a call, 2 done.
    clients: Vec<AtomicU8>,
    calls: AtomicUsize,
}

static PROGRESS: std::sync::LazyLock<Progress> = std::sync::LazyLock::new(|| Progress {
    strategy: Mutex::new("starting"),
    phase: Mutex::new("starting"),
    started: Mutex::new(std::time::Instant::now()),
    clients: (0..CLIENTS).map(|_| AtomicU8::new(0)).collect(),
    calls: AtomicUsize::new(0),
});

fn phase(phase: &'static str) {
    *PROGRESS.phase.lock().expect("progress") = phase;
}

fn watchdog() {
    std::thread::spawn(|| {
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let started = *PROGRESS.started.lock().expect("progress");
            if started.elapsed() < RUN_BOUND {
                continue;
            }
            let count = |state: u8| {
                PROGRESS
                    .clients
                    .iter()
                    .filter(|c| c.load(Ordering::SeqCst) == state)
                    .count()
            };
            eprintln!(
                "VIOLATION: the run of {:?} has taken over {RUN_BOUND:?}, in phase {:?}: clients in a call {}, between calls {}, done {}; calls made {}",
                *PROGRESS.strategy.lock().expect("progress"),
                *PROGRESS.phase.lock().expect("progress"),
                count(1),
                count(0),
                count(2),
                PROGRESS.calls.load(Ordering::SeqCst),
            );
            std::process::exit(2);
        }
    });
}

type Client = BoxCloneSyncService<http::Request<reqwest::Body>, http::Response<Bytes>, BoxError>;

/// The HTTP transport, counting the calls that reach the network.
#[derive(Clone)]
struct Transport {
    inner: ReqwestTransport,
    attempts: Arc<AtomicU64>,
}

impl<B: tower_mcp_auth::layer::RequestBody> Service<http::Request<B>> for Transport {
    type Response = http::Response<Bytes>;
    type Error = reqwest::Error;
    type Future = <ReqwestTransport as Service<http::Request<B>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<http::Request<B>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        self.inner.call(request)
    }
}

/// Builds the client; for ours, `opened_at` receives the attempt count when the circuit
/// first opens.
fn client(strategy: &str, transport: Transport, opened_at: Arc<AtomicU64>) -> Client {
    match strategy {
        "no breaker" => BoxCloneSyncService::new(
            ServiceExt::<http::Request<reqwest::Body>>::map_err(transport, BoxError::from),
        ),
        "tower-resilience (unkeyed)" => {
            let layer = tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
                .failure_rate_threshold(0.5)
                .sliding_window_size(20)
                .minimum_number_of_calls(TRIP_AFTER as usize)
                .wait_duration_in_open(Duration::from_secs(1))
                .permitted_calls_in_half_open(1)
                .build()
                .expect("valid configuration");
            BoxCloneSyncService::new(ServiceExt::<http::Request<reqwest::Body>>::map_err(
                layer.layer(transport),
                |e| -> BoxError { format!("{e}").into() },
            ))
        }
        _ => {
            // The defaults: open 250 ms doubling to 1 s, so a probe at least every second.
            let config = BreakerConfig::default().with_consecutive_failures(TRIP_AFTER);
            let attempts = transport.attempts.clone();
            let layer = CircuitBreakerLayer::new(config).on_transition(move |_key, transition| {
                if transition.to == CircuitState::Open {
                    let now = attempts.load(Ordering::SeqCst);
                    let _ = opened_at.compare_exchange(
                        u64::MAX,
                        now,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    );
                }
            });
            BoxCloneSyncService::new(layer.layer(transport))
        }
    }
}

struct Row {
    strategy: &'static str,
    during_outage: u64,
    /// Calls that reached the dead upstream after the circuit first opened.
    after_open: Option<u64>,
    first_success: Option<Duration>,
    all_recovered: Option<Duration>,
    /// Calls dropped after [`CALL_BOUND`] without an answer.
    hung: u64,
}

async fn run(strategy: &'static str) -> Row {
    *PROGRESS.strategy.lock().expect("progress") = strategy;
    *PROGRESS.started.lock().expect("progress") = std::time::Instant::now();
    for client in &PROGRESS.clients {
        client.store(0, Ordering::SeqCst);
    }
    PROGRESS.calls.store(0, Ordering::SeqCst);
    phase("starting the upstream");
    let upstream = Arc::new(TestUpstream::start().await.expect("upstream"));
    let attempts = Arc::new(AtomicU64::new(0));
    let http = tower_mcp_auth::client::ReqwestService::builder()
        .expect("TLS")
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .expect("client");
    let opened_at = Arc::new(AtomicU64::new(u64::MAX));
    let transport = Transport {
        inner: ReqwestTransport::from_client(http),
        attempts: attempts.clone(),
    };
    let client = client(strategy, transport, opened_at.clone());
    let url = upstream.url();
    let start = Instant::now();
    let end = start + HEALTHY + OUTAGE + AFTER;
    let restarted_at = start + HEALTHY + OUTAGE;

    phase("healthy");
    let hung = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (client, url, hung) = (client.clone(), url.clone(), hung.clone());
            tokio::spawn(async move {
                let mut recovered: Option<Instant> = None;
                let state = &PROGRESS.clients[i];
                while Instant::now() < end {
                    let mut request = http::Request::new(reqwest::Body::from(""));
                    *request.uri_mut() = url.parse().expect("uri");
                    state.store(1, Ordering::SeqCst);
                    PROGRESS.calls.fetch_add(1, Ordering::Relaxed);
                    let ok = match tokio::time::timeout(CALL_BOUND, client.clone().oneshot(request))
                        .await
                    {
                        Ok(answer) => matches!(answer, Ok(r) if r.status().is_success()),
                        Err(_) => {
                            hung.fetch_add(1, Ordering::SeqCst);
                            false
                        }
                    };
                    state.store(0, Ordering::SeqCst);
                    let now = Instant::now();
                    if ok && now >= restarted_at && recovered.is_none() {
                        recovered = Some(now);
                    }
                    tokio::time::sleep(RETRY_DELAY).await;
                }
                state.store(2, Ordering::SeqCst);
                recovered
            })
        })
        .collect();

    tokio::time::sleep_until(start + HEALTHY).await;
    phase("upstream down");
    upstream.stop();
    let at_stop = attempts.load(Ordering::Relaxed);
    tokio::time::sleep_until(restarted_at).await;
    let at_restart = attempts.load(Ordering::SeqCst);
    let during_outage = at_restart - at_stop;
    let opened = opened_at.load(Ordering::SeqCst);
    let after_open = (opened != u64::MAX).then(|| at_restart - opened);
    phase("restarting the upstream");
    upstream.restart().await.expect("restart");
    phase("upstream back; waiting for the clients to finish");

    let mut recoveries = Vec::new();
    for task in tasks {
        if let Some(at) = task.await.expect("client task") {
            recoveries.push(at - restarted_at);
        }
    }
    recoveries.sort();
    Row {
        strategy,
        during_outage,
        after_open,
        first_success: recoveries.first().copied(),
        all_recovered: (recoveries.len() == CLIENTS).then(|| recoveries[CLIENTS - 1]),
        hung: hung.load(Ordering::SeqCst),
    }
}

/// Backoff windows that start within the outage under the default backoff: periods
/// 250 ms, 500 ms, then 1 s, each cut by at most 10% jitter.
fn windows_within(outage: Duration) -> u64 {
    let (mut elapsed, mut period, mut windows) = (Duration::ZERO, Duration::from_millis(250), 0);
    loop {
        elapsed += period.mul_f64(0.9);
        if elapsed > outage {
            return windows;
        }
        windows += 1;
        period = (period * 2).min(Duration::from_secs(1));
    }
}

fn main() {
    watchdog();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let rows: Vec<Row> = runtime.block_on(async {
        let mut rows = Vec::new();
        for strategy in [
            "no breaker",
            "tower-resilience (unkeyed)",
            "tower-mcp-auth (keyed)",
        ] {
            rows.push(run(strategy).await);
        }
        rows
    });

    println!(
        "reconnect storm: {CLIENTS} clients retrying every {RETRY_DELAY:?}; upstream down {OUTAGE:?}, then back (2 cores)"
    );
    println!(
        "{:<28} {:>16} {:>14} {:>22} {:>24} {:>12}",
        "strategy",
        "calls reaching",
        "per second",
        "first success after",
        "all clients recovered",
        "calls hung"
    );
    println!(
        "{:<28} {:>16} {:>14} {:>22} {:>24} {:>12}",
        "", "dead upstream", "", "restart", "after restart", "(> 10 s)"
    );
    for r in &rows {
        let show = |d: Option<Duration>| d.map_or("never".to_owned(), |d| format!("{d:.2?}"));
        println!(
            "{:<28} {:>16} {:>14.1} {:>22} {:>24} {:>12}",
            r.strategy,
            r.during_outage,
            r.during_outage as f64 / OUTAGE.as_secs_f64(),
            show(r.first_success),
            show(r.all_recovered),
            r.hung
        );
    }

    let ours = rows.last().expect("our row");
    let windows = windows_within(OUTAGE);
    let after_open = ours.after_open.unwrap_or(u64::MAX);
    println!(
        "tower-mcp-auth: after the circuit opened, {after_open} calls reached the dead upstream in {windows} backoff windows \
         (the rest of the {} were in flight or admitted before the first failure came back)",
        ours.during_outage
    );
    let unprotected = rows[0].during_outage;
    let ratio = unprotected as f64 / ours.during_outage.max(1) as f64;
    println!(
        "side by side: no breaker / tower-mcp-auth = {unprotected} / {} dead-upstream calls = {ratio:.0}x fewer; \
         all clients back {} after the restart (tower-resilience: {})",
        ours.during_outage,
        ours.all_recovered
            .map_or("never".to_owned(), |d| format!("{d:.2?}")),
        rows[1]
            .all_recovered
            .map_or("never".to_owned(), |d| format!("{d:.2?}")),
    );
    let recovered_in_time = ours
        .all_recovered
        .is_some_and(|d| d <= Duration::from_secs(2));
    if after_open > windows || ratio < 100.0 || !recovered_in_time || ours.hung > 0 {
        eprintln!(
            "VIOLATION: more than one attempt per backoff window, under 100x fewer calls than no breaker, \
             clients not back within 2 s, or calls of ours that hung"
        );
        std::process::exit(1);
    }
}
