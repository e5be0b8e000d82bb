//! Replica contention: R processes (real OS processes, `examples/replica_worker.rs`) x K
//! callers of one user hit an expired token (expiry storm) or a revoked one (401 storm)
//! at the same instant, against the loopback authorization server with rotating
//! refresh tokens and reuse detection. Side by side: `memory` (a `MemoryStore` per
//! process, seeded with the same credentials: replicas without a shared store),
//! `sqlite` (one file) and `redis` (one `redis-server`).
//!
//! Then the hot path: the cost of a request with a valid token through
//! `SilentRefreshLayer` for each store (shared stores with the coordinator's read cache)
//! as a throughput ratio to `MemoryStore`, in the same run.
//!
//! Run: `cargo bench --bench replica_contention` (needs `redis-server` on the PATH).
//! Exits non-zero if a shared store ever redeems more than once in a storm.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tower::{Layer, ServiceExt};
use tower_mcp_auth::store::{CredentialStore, MemoryStore, RedisStore, SqliteStore};
use tower_mcp_auth::testing::{TestAuthServer, TestMcpServer};
use tower_mcp_auth::{AuthKey, Principal, RefreshCoordinator, ServerBinding, SilentRefreshLayer};

const CALLERS: usize = 128;

fn worker() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "--release",
            "--example",
            "replica_worker",
            "--all-features",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo");
    assert!(status.success(), "building the replica worker failed");
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/examples/replica_worker")
}

struct Redis(std::process::Child, u16);

impl Redis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH (the test command installs it)");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Self(child, port);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server did not start");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.1)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Storm {
    Expiry,
    Unauthorized,
}

struct Row {
    storm: &'static str,
    store: &'static str,
    processes: usize,
    redemptions: u64,
    invalid_grant: u64,
    ok: u64,
    total: u64,
    p50: Duration,
    p99: Duration,
}

fn percentile(sorted: &[u128], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    Duration::from_micros(sorted[i] as u64)
}

async fn storm(
    worker: &PathBuf,
    redis: &Redis,
    store: &'static str,
    processes: usize,
    kind: Storm,
) -> Row {
    let auth = TestAuthServer::start().await.expect("auth server");
    let mcp = TestMcpServer::start(&auth).await.expect("mcp server");
    let binding =
        ServerBinding::public_client(&mcp.url(), &auth.token_endpoint(), "replicas").unwrap();
    let key = AuthKey::new(&Principal::new("acme", "alice"), binding.id());
    let mut login = auth.issue("replicas", "alice", Some("tools"));
    if kind == Storm::Expiry {
        login.expires_at = Some(login.obtained_at);
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/replica-contention");
    std::fs::create_dir_all(&dir).unwrap();
    let argument = match store {
        "sqlite" => {
            let path = dir.join(format!(
                "{}-{processes}-{}.db",
                std::process::id(),
                rand_suffix()
            ));
            let seeded = SqliteStore::open(&path)
                .unwrap()
                .compare_and_swap(&key, None, login.clone())
                .await
                .unwrap();
            assert!(matches!(seeded, tower_mcp_auth::store::Swap::Stored(_)));
            path.display().to_string()
        }
        "redis" => {
            // Runs share the Redis; a run whose servers got an earlier run's ports has
            // its key too: clear it first.
            let shared = RedisStore::builder(redis.url()).build().unwrap();
            if let Some(old) = shared.load(&key).await.unwrap() {
                shared.delete(&key, old.generation).await.unwrap();
            }
            let seeded = shared
                .compare_and_swap(&key, None, login.clone())
                .await
                .unwrap();
            assert!(matches!(seeded, tower_mcp_auth::store::Swap::Stored(_)));
            redis.url()
        }
        _ => format!(
            "memory|{}|{}",
            login.access_token.expose(),
            login.refresh_token.as_ref().unwrap().expose()
        ),
    };
    if kind == Storm::Unauthorized {
        // The server revokes the access token every replica holds: a 401 storm.
        auth.revoke_access_tokens("alice");
    }
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 1500;
    let children: Vec<_> = (0..processes)
        .map(|_| {
            tokio::process::Command::new(worker)
                .args([
                    argument.as_str(),
                    &mcp.url(),
                    &auth.token_endpoint(),
                    "replicas",
                    "acme",
                    "alice",
                    &CALLERS.to_string(),
                    &format!("storm@{at}"),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start a replica")
        })
        .collect();
    let (mut ok, mut failed, mut latencies) = (0u64, 0u64, Vec::new());
    for child in children {
        let output = child.wait_with_output().await.unwrap();
        for field in String::from_utf8_lossy(&output.stdout).split_whitespace() {
            match field.split_once('=') {
                Some(("ok", n)) => ok += n.parse::<u64>().unwrap(),
                Some(("failed", n)) => failed += n.parse::<u64>().unwrap(),
                Some(("latencies_us", list)) => latencies.extend(
                    list.split(',')
                        .filter(|s| !s.is_empty())
                        .map(|s| s.parse::<u128>().unwrap()),
                ),
                _ => {}
            }
        }
    }
    latencies.sort_unstable();
    let stats = auth.stats();
    Row {
        storm: match kind {
            Storm::Expiry => "expiry",
            Storm::Unauthorized => "401",
        },
        store,
        processes,
        redemptions: stats.refresh_requests,
        invalid_grant: stats.invalid_grants,
        ok,
        total: ok + failed,
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
    }
}

fn rand_suffix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

/// Requests per second through `SilentRefreshLayer` with a valid token over `store`,
/// to an inner service that answers at once (the layer's own cost).
async fn hot_path(store: Arc<dyn CredentialStore>, calls: usize) -> f64 {
    let binding =
        ServerBinding::public_client("http://127.0.0.1:9/mcp", "http://127.0.0.1:9/token", "c")
            .unwrap();
    let alice = Principal::new("acme", "alice");
    let key = AuthKey::new(&alice, binding.id());
    let tokens = tower_mcp_auth::TokenSet::new(tower_mcp_auth::Secret::new("at"))
        .with_refresh_token(tower_mcp_auth::Secret::new("rt"))
        .with_expires_in(Duration::from_secs(3600));
    if let Some(old) = store.load(&key).await.unwrap() {
        store.delete(&key, old.generation).await.unwrap();
    }
    store.compare_and_swap(&key, None, tokens).await.unwrap();
    let inner = tower::service_fn(|_req: http::Request<tower_mcp_auth::ReplayBody>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
            Bytes::new(),
        )))
    });
    let client = SilentRefreshLayer::new(RefreshCoordinator::new(store), binding).layer(inner);
    let request = || {
        let mut request = http::Request::post("http://127.0.0.1:9/mcp")
            .body(http_body_util::Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        request.extensions_mut().insert(alice.clone());
        request
    };
    // Warm up (the shared stores' read cache is filled by the first call).
    for _ in 0..1_000 {
        client.clone().oneshot(request()).await.unwrap();
    }
    let started = Instant::now();
    for _ in 0..calls {
        client.clone().oneshot(request()).await.unwrap();
    }
    calls as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let worker = worker();
    let redis = Redis::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rows: Vec<Row> = runtime.block_on(async {
        let mut rows = Vec::new();
        for kind in [Storm::Expiry, Storm::Unauthorized] {
            for store in ["memory", "sqlite", "redis"] {
                for processes in [1, 2, 4] {
                    rows.push(storm(&worker, &redis, store, processes, kind).await);
                }
            }
        }
        rows
    });
    println!(
        "replica contention: R processes x {CALLERS} callers of one user at one instant (2 cores)"
    );
    println!(
        "{:<7} {:<7} {:>2} {:>12} {:>14} {:>10} {:>10} {:>10}",
        "storm", "store", "R", "redemptions", "invalid_grant", "ok", "p50", "p99"
    );
    for r in &rows {
        println!(
            "{:<7} {:<7} {:>2} {:>12} {:>14} {:>10} {:>10.1?} {:>10.1?}",
            r.storm,
            r.store,
            r.processes,
            r.redemptions,
            r.invalid_grant,
            format!("{}/{}", r.ok, r.total),
            r.p50,
            r.p99
        );
    }

    let calls = 200_000;
    let (memory, sqlite, redis_rps) = runtime.block_on(async {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/replica-contention");
        let path = dir.join(format!("hot-{}.db", std::process::id()));
        let memory = hot_path(Arc::new(MemoryStore::new()), calls).await;
        let sqlite = hot_path(Arc::new(SqliteStore::open(&path).unwrap()), calls).await;
        let redis_rps = hot_path(
            Arc::new(RedisStore::builder(redis.url()).build().unwrap()),
            calls,
        )
        .await;
        (memory, sqlite, redis_rps)
    });
    println!(
        "hot path ({calls} requests, valid token): MemoryStore {:.0}/s; SqliteStore {:.0}/s = {:.2}x; RedisStore {:.0}/s = {:.2}x (with the read cache)",
        memory,
        sqlite,
        sqlite / memory,
        redis_rps,
        redis_rps / memory
    );

    let double = rows
        .iter()
        .filter(|r| r.store != "memory" && r.redemptions > 1)
        .count();
    let failed = rows
        .iter()
        .filter(|r| r.store != "memory" && r.ok != r.total)
        .count();
    if double > 0 || failed > 0 {
        eprintln!(
            "VIOLATION: a shared store redeemed twice ({double} rows) or failed calls ({failed} rows)"
        );
        std::process::exit(1);
    }
}
