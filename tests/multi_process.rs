//! Real OS processes sharing one `SqliteStore` file (`examples/replica_worker.rs`, built
//! by `cargo test`): 4 processes x 128 concurrent callers, several token lifetimes,
//! against the loopback authorization server with rotating refresh tokens and reuse
//! detection that revokes the grant. Exactly one redemption per lifetime, no
//! `invalid_grant`, every call ok. Without the store's lease each process would redeem
//! at every expiry and the grant would be revoked at the first one.

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

/// The worker, as `cargo test` builds examples (built here when only this test target
/// was asked for).
fn worker_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let worker = profile_dir.join("examples").join("replica_worker");
    if !worker.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = std::process::Command::new(cargo)
            .args([
                "build",
                "--example",
                "replica_worker",
                "--features",
                "sqlite,test-util",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo");
        assert!(
            status.success(),
            "building examples/replica_worker.rs failed"
        );
    }
    assert!(worker.exists(), "{}", worker.display());
    worker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_share_one_login_and_one_refresh_per_lifetime() {
    let auth = TestAuthServer::start().await.unwrap();
    auth.set_access_token_lifetime(LIFETIME);
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let binding =
        ServerBinding::public_client(&mcp.url(), &auth.token_endpoint(), "replicas").unwrap();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("multi-process");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("store-{}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    // One interactive login, stored where every replica finds it.
    let store = SqliteStore::open(&path).unwrap();
    let key = AuthKey::new(&Principal::new("acme", "alice"), binding.id());
    let login = auth.issue("replicas", "alice", Some("tools"));
    store.compare_and_swap(&key, None, login).await.unwrap();

    let workers: Vec<_> = (0..PROCESSES)
        .map(|_| {
            tokio::process::Command::new(worker_binary())
                .args([
                    path.to_str().unwrap(),
                    &mcp.url(),
                    &auth.token_endpoint(),
                    "replicas",
                    "acme",
                    "alice",
                    &CALLERS.to_string(),
                    &RUN.as_millis().to_string(),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start a replica")
        })
        .collect();
    let (mut ok, mut failed, mut redemptions) = (0u64, 0u64, 0u64);
    for worker in workers {
        let output = worker.wait_with_output().await.unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "replica failed: {stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        for field in stdout.split_whitespace() {
            let (name, value) = field.split_once('=').unwrap();
            let value: u64 = value.parse().unwrap();
            match name {
                "ok" => ok += value,
                "failed" => failed += value,
                "redemptions" => redemptions += value,
                _ => {}
            }
        }
    }
    let stats = auth.stats();
    println!(
        "{PROCESSES} processes x {CALLERS} callers, {LIFETIME:?} tokens, {RUN:?}: \
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
