//! SqliteStore on real files: the CredentialStore contract, restarts, schema versions,
//! the redemption lease across "processes" (separate stores on one file), a stuck
//! writer, and two coordinators over one file making one redemption per token.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tower::Layer;
use tower_mcp_auth::store::{CredentialStore, SqliteStore, Swap};
use tower_mcp_auth::testing::{ReqwestTransport, TestAuthServer, TestMcpServer};
use tower_mcp_auth::{
    AuthKey, Principal, RefreshCoordinator, ServerBinding, SilentRefreshLayer, TokenSet,
};

fn file(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sqlite-store");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}-{}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

fn key(user: &str) -> AuthKey {
    let binding =
        ServerBinding::public_client("https://mcp.example/mcp", "https://as.example/token", "c")
            .unwrap();
    AuthKey::new(&Principal::new("acme", user), binding.id())
}

use common::sample_tokens as tokens;

async fn put(store: &SqliteStore, key: &AuthKey, tokens: TokenSet) -> Arc<TokenSet> {
    let expected = store.load(key).await.unwrap().map(|t| t.generation);
    match store.compare_and_swap(key, expected, tokens).await.unwrap() {
        Swap::Stored(stored) => stored,
        Swap::Conflict(_) => panic!("conflict"),
    }
}

#[tokio::test]
async fn the_store_contract_holds_across_processes_and_restarts() {
    let path = file("contract");
    let a = SqliteStore::open(&path).unwrap();
    let b = SqliteStore::open(&path).unwrap(); // another process on the same file
    let k = key("alice");
    let first = put(&a, &k, tokens("a1")).await;
    // Generations grow across processes, and the other process sees the write.
    let second = put(&b, &k, tokens("b1")).await;
    assert!(second.generation > first.generation);
    assert_eq!(
        a.load(&k).await.unwrap().unwrap().generation,
        second.generation
    );
    // A writer holding a stale generation loses, in either process.
    let stale = a
        .compare_and_swap(&k, Some(first.generation), tokens("late"))
        .await
        .unwrap();
    assert!(
        matches!(stale, Swap::Conflict(Some(current)) if current.generation == second.generation)
    );
    // Every field survives a restart.
    drop((a, b));
    let reopened = SqliteStore::open(&path).unwrap();
    let loaded = reopened.load(&k).await.unwrap().unwrap();
    assert_eq!(loaded.access_token.expose(), "b1");
    assert_eq!(loaded.refresh_token.as_ref().unwrap().expose(), "rt-b1");
    assert_eq!(loaded.scope.as_deref(), Some("tools"));
    assert_eq!(loaded.generation, second.generation);
    let lifetime = loaded
        .expires_at
        .unwrap()
        .duration_since(loaded.obtained_at)
        .unwrap();
    assert_eq!(lifetime.as_secs(), 3600);
    // Delete is generation-scoped; generations are never reused after it.
    assert!(!reopened.delete(&k, first.generation).await.unwrap());
    assert!(reopened.delete(&k, second.generation).await.unwrap());
    let third = put(&reopened, &k, tokens("c1")).await;
    assert!(third.generation > second.generation);
}

#[tokio::test]
async fn a_newer_schema_is_refused_with_a_typed_error() {
    let path = file("schema");
    drop(SqliteStore::open(&path).unwrap());
    let raw = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = raw
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 2, "schema versioned on open");
    raw.pragma_update(None, "user_version", 99).unwrap();
    drop(raw);
    let error = SqliteStore::open(&path).unwrap_err();
    assert!(error.to_string().contains("newer"), "{error}");
}

#[tokio::test]
async fn the_lease_is_single_fenced_and_taken_over_when_it_expires() {
    let path = file("lease");
    let (a, b) = (
        SqliteStore::open(&path).unwrap(),
        SqliteStore::open(&path).unwrap(),
    );
    common::lease_contract(&a, &b, &key("bob"), tokens).await;
}

/// A writer stuck inside a transaction: operations wait the busy timeout, then fail
/// with a typed store error (no panic, no hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_writer_gives_a_bounded_wait_then_a_store_error() {
    let path = file("busy");
    let store = SqliteStore::open_with_busy_timeout(&path, Duration::from_millis(200)).unwrap();
    let k = key("carol");
    put(&store, &k, tokens("t")).await;
    let stuck = rusqlite::Connection::open(&path).unwrap();
    stuck.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = std::time::Instant::now();
    let blocked = store.compare_and_swap(&k, None, tokens("x")).await;
    assert!(blocked.is_err(), "{blocked:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "bounded");
    // Reads go on under WAL, and writes resume once the writer is gone.
    assert!(store.load(&k).await.unwrap().is_some());
    stuck.execute_batch("ROLLBACK").unwrap();
    put(&store, &k, tokens("y")).await;
}

/// Two processes' coordinators over one file (two stores, two coordinators, two HTTP
/// clients): a wave of 2 x 128 callers on an expired token makes one redemption.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coordinators_over_one_file_redeem_once() {
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let binding = ServerBinding::public_client(&mcp.url(), &auth.token_endpoint(), "client")
        .unwrap()
        .with_issuer(auth.issuer());
    let path = file("coordinators");
    let alice = Principal::new("acme", "alice");
    let k = AuthKey::new(&alice, binding.id());
    let seeded = SqliteStore::open(&path).unwrap();
    let mut login = auth.issue("client", "alice", Some("tools"));
    login.expires_at = Some(login.obtained_at);
    seeded.compare_and_swap(&k, None, login).await.unwrap();

    let clients: Vec<_> = (0..2)
        .map(|_| {
            let store = Arc::new(SqliteStore::open(&path).unwrap());
            SilentRefreshLayer::new(RefreshCoordinator::new(store), binding.clone())
                .layer(ReqwestTransport::new())
        })
        .collect();
    let barrier = Arc::new(tokio::sync::Barrier::new(256));
    let calls: Vec<_> = (0..256)
        .map(|i| {
            let (client, barrier, alice, url) = (
                clients[i % 2].clone(),
                barrier.clone(),
                alice.clone(),
                mcp.url(),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                common::call_whoami(client, &url, &alice).await
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), "alice");
    }
    let stats = auth.stats();
    assert_eq!(stats.refresh_requests, 1, "one redemption across both");
    assert_eq!((stats.invalid_grants, stats.reuse_detected), (0, 0));
}
