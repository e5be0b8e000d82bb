//! Real OS processes sharing one `SqliteStore` file (`examples/replica_worker.rs`, built
//! by `cargo test`): 4 processes x 128 concurrent callers, several token lifetimes,
//! against the loopback authorization server with rotating refresh tokens and reuse
//! detection that revokes the grant. Exactly one redemption per lifetime, no
//! `invalid_grant`, every call ok. Without the store's lease each process would redeem
//! at every expiry and the grant would be revoked at the first one.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tower_mcp_auth::store::{CredentialStore, SqliteStore};
use tower_mcp_auth::testing::{TestAuthServer, TestMcpServer};
use tower_mcp_auth::{AuthKey, Principal, ServerBinding};

const PROCESSES: usize = 4;
const CALLERS: usize = 128;
const LIFETIME: Duration = Duration::from_secs(3);
const RUN: Duration = Duration::from_secs(10);

/// The worker, built (or found up to date) where `cargo test` builds examples.
fn worker_binary() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let worker = profile_dir.join("examples").join("replica_worker");
    BUILT.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = std::process::Command::new(cargo)
            // The features `cargo test --all-features` built everything else with.
            .args(["build", "--example", "replica_worker", "--all-features"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo");
        assert!(
            status.success(),
            "building examples/replica_worker.rs failed"
        );
    });
    assert!(worker.exists(), "{}", worker.display());
    worker
}

fn fresh_store(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("multi-process");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}-{}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

fn spawn_worker(
    path: &std::path::Path,
    mcp: &TestMcpServer,
    auth: &TestAuthServer,
    callers: usize,
    run: Duration,
    timeout: Option<Duration>,
) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(worker_binary());
    command
        .args([
            path.to_str().unwrap(),
            &mcp.url(),
            &auth.token_endpoint(),
            "replicas",
            "acme",
            "alice",
            &callers.to_string(),
            &run.as_millis().to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(timeout) = timeout {
        command.arg(timeout.as_millis().to_string());
    }
    command.spawn().expect("start a replica")
}

/// Waits for a replica; its `ok`, `failed` and `redemptions`.
async fn finish(worker: tokio::process::Child) -> (u64, u64, u64) {
    let output = worker.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "replica failed: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.stderr.is_empty() {
        eprintln!(
            "replica stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut counts = (0, 0, 0);
    for field in stdout.split_whitespace() {
        let (name, value) = field.split_once('=').unwrap();
        let value: u64 = value.parse().unwrap();
        match name {
            "ok" => counts.0 = value,
            "failed" => counts.1 = value,
            "redemptions" => counts.2 = value,
            _ => {}
        }
    }
    counts
}

async fn seed(
    path: &std::path::Path,
    auth: &TestAuthServer,
    binding: &ServerBinding,
    expired: bool,
) {
    let store = SqliteStore::open(path).unwrap();
    let key = AuthKey::new(&Principal::new("acme", "alice"), binding.id());
    let mut login = auth.issue("replicas", "alice", Some("tools"));
    if expired {
        login.expires_at = Some(login.obtained_at);
    }
    store.compare_and_swap(&key, None, login).await.unwrap();
}

/// 4 replicas x 128 callers over the store `store` (a file path or a Redis URL), where
/// `seed` stored one login; returns nothing, asserts everything.
async fn replicas_share_one_refresh_per_lifetime(
    auth: &TestAuthServer,
    mcp: &TestMcpServer,
    store: &str,
    label: &str,
) {
    let workers: Vec<_> = (0..PROCESSES)
        .map(|_| spawn_worker(std::path::Path::new(store), mcp, auth, CALLERS, RUN, None))
        .collect();
    let (mut ok, mut failed, mut redemptions) = (0u64, 0u64, 0u64);
    for worker in workers {
        let (o, f, r) = finish(worker).await;
        (ok, failed, redemptions) = (ok + o, failed + f, redemptions + r);
    }
    let stats = auth.stats();
    println!(
        "{label}: {PROCESSES} processes x {CALLERS} callers, {LIFETIME:?} tokens, {RUN:?}: \
         {ok} ok, {failed} failed; redemptions by the replicas {redemptions}, \
         refresh requests at the server {}, invalid_grant {}, reuse detected {}",
        stats.refresh_requests, stats.invalid_grants, stats.reuse_detected
    );
    assert_eq!(failed, 0, "every call ok");
    assert!(ok > 1_000, "{ok}");
    assert_eq!((stats.invalid_grants, stats.reuse_detected), (0, 0));
    assert_eq!(
        stats.refresh_requests, redemptions,
        "each redemption reached the server once"
    );
    assert_eq!(stats.refresh_successes, stats.refresh_requests);
    // A token is refreshed 1.5 s into its 3 s life (half, the cap of margin + skew),
    // so a 10 s run has 6 or 7 lifetimes: one redemption each, whatever the processes.
    assert!(
        (5..=8).contains(&stats.refresh_requests),
        "one redemption per lifetime: {}",
        stats.refresh_requests
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_on_one_sqlite_file_make_one_refresh_per_lifetime() {
    let auth = TestAuthServer::start().await.unwrap();
    auth.set_access_token_lifetime(LIFETIME);
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let binding =
        ServerBinding::public_client(&mcp.url(), &auth.token_endpoint(), "replicas").unwrap();
    let path = fresh_store("shared");
    // One interactive login, stored where every replica finds it.
    seed(&path, &auth, &binding, false).await;
    replicas_share_one_refresh_per_lifetime(&auth, &mcp, path.to_str().unwrap(), "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_on_one_redis_make_one_refresh_per_lifetime() {
    let redis = common::RedisServer::start();
    let auth = TestAuthServer::start().await.unwrap();
    auth.set_access_token_lifetime(LIFETIME);
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let binding =
        ServerBinding::public_client(&mcp.url(), &auth.token_endpoint(), "replicas").unwrap();
    let store = tower_mcp_auth::store::RedisStore::builder(redis.url())
        .build()
        .unwrap();
    let key = AuthKey::new(&Principal::new("acme", "alice"), binding.id());
    let login = auth.issue("replicas", "alice", Some("tools"));
    store.compare_and_swap(&key, None, login).await.unwrap();
    replicas_share_one_refresh_per_lifetime(&auth, &mcp, &redis.url(), "redis").await;
}

/// Starts a replica that takes the lease and redeems, waits until its refresh request
/// is at the server, and kills it (SIGKILL).
async fn kill_the_lease_holder(
    path: &std::path::Path,
    mcp: &TestMcpServer,
    auth: &TestAuthServer,
    timeout: Option<Duration>,
) {
    let mut holder = spawn_worker(path, mcp, auth, 1, Duration::from_secs(5), timeout);
    let started = tokio::time::Instant::now();
    while auth.stats().refresh_requests == 0 {
        if started.elapsed() > Duration::from_secs(20) {
            holder.start_kill().unwrap();
            let output = holder.wait_with_output().await.unwrap();
            panic!(
                "the holder never redeemed: {} {}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    holder.start_kill().unwrap(); // SIGKILL
    holder.wait().await.unwrap();
}

/// The lease holder is killed (SIGKILL) mid-redemption, before the authorization server
/// processed its request: the other replica waits at most the lease, then redeems the
/// same (never accepted) refresh token once, and every call succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_redemption_does_not_strand_the_others() {
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let binding =
        ServerBinding::public_client(&mcp.url(), &auth.token_endpoint(), "replicas").unwrap();
    let path = fresh_store("killed");
    seed(&path, &auth, &binding, true).await;
    // The holder's request reaches the server, which never processes it.
    auth.fail_next(tower_mcp_auth::testing::Fault::Hang, 1);
    let timeout = Some(Duration::from_secs(2)); // lease: 2 s + 2 s
    kill_the_lease_holder(&path, &mcp, &auth, timeout).await;

    let waited = tokio::time::Instant::now();
    let (ok, failed, redemptions) = finish(spawn_worker(
        &path,
        &mcp,
        &auth,
        8,
        Duration::from_secs(2),
        timeout,
    ))
    .await;
    let stats = auth.stats();
    println!(
        "after SIGKILL: {ok} ok, {failed} failed in {:?}; the survivor redeemed {redemptions}x; \
         server: {} refresh requests, {} successes, {} invalid_grant, {} reuse",
        waited.elapsed(),
        stats.refresh_requests,
        stats.refresh_successes,
        stats.invalid_grants,
        stats.reuse_detected
    );
    assert_eq!(failed, 0, "the survivor's calls all succeed");
    assert!(ok > 0);
    assert_eq!(redemptions, 1, "one redemption after the lease expired");
    assert_eq!(
        (
            stats.refresh_successes,
            stats.invalid_grants,
            stats.reuse_detected
        ),
        (1, 0, 0),
        "the killed redemption was never accepted; the survivor's was"
    );
}

/// The one window no client can close, shown rather than hidden: the holder is killed
/// after the server accepted (and rotated) its refresh token, before it stored the
/// result. The rotated token died with it; the survivor's redemption of the old one is
/// reuse, the server revokes the grant, and the survivor reports `ReauthRequired` once
/// (a new login), without a loop of redemptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unavoidable_window_ends_in_one_reauth_not_a_loop() {
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let binding =
        ServerBinding::public_client(&mcp.url(), &auth.token_endpoint(), "replicas").unwrap();
    let path = fresh_store("window");
    seed(&path, &auth, &binding, true).await;
    // The server processes the holder's request (and rotates) after it was killed.
    auth.set_latency(Duration::from_secs(1));
    let timeout = Some(Duration::from_secs(2));
    kill_the_lease_holder(&path, &mcp, &auth, timeout).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    auth.set_latency(Duration::ZERO);
    assert_eq!(
        auth.stats().refresh_successes,
        1,
        "the server accepted the dead holder's redemption"
    );

    let (ok, failed, redemptions) = finish(spawn_worker(
        &path,
        &mcp,
        &auth,
        8,
        Duration::from_secs(2),
        timeout,
    ))
    .await;
    let stats = auth.stats();
    println!(
        "rotated, then the holder died: survivor {ok} ok, {failed} failed, {redemptions} redemption(s); \
         server: {} refresh requests, {} invalid_grant, {} reuse",
        stats.refresh_requests, stats.invalid_grants, stats.reuse_detected
    );
    assert_eq!(ok, 0);
    assert!(failed > 0);
    assert_eq!(
        redemptions, 1,
        "one redemption, then ReauthRequired: no loop"
    );
    assert_eq!(stats.refresh_requests, 2);
    assert_eq!(stats.reuse_detected, 1);
}
