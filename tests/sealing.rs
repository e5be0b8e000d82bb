//! Secrets at rest: with sealing keys, no token, PKCE verifier or client secret reaches
//! the SQLite file or Redis in the clear; keys rotate; a wrong key is a typed error.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::RedisServer;
use tower_mcp_auth::store::{CredentialStore, RedisStore, SealingKeys, SharedRecords, SqliteStore};
use tower_mcp_auth::{
    AuthKey, Principal, Secret, ServerBinding, TokenSet, binding::ClientAuthMethod,
    oauth::AuthorizationRequest, oauth::FlowStore,
};

const ACCESS: &str = "access-token-in-the-clear";
const REFRESH: &str = "refresh-token-in-the-clear";
const CLIENT_SECRET: &str = "client-secret-in-the-clear";

fn binding() -> ServerBinding {
    ServerBinding::public_client("https://mcp.example/mcp", "https://as.example/token", "c")
        .unwrap()
        .with_client_secret(
            Secret::new(CLIENT_SECRET),
            ClientAuthMethod::ClientSecretPost,
        )
}

fn key() -> AuthKey {
    AuthKey::new(&Principal::new("acme", "alice"), binding().id())
}

fn tokens() -> TokenSet {
    TokenSet::new(Secret::new(ACCESS))
        .with_refresh_token(Secret::new(REFRESH))
        .with_expires_in(Duration::from_secs(3600))
}

/// Writes credentials and a shared flow through `store`; returns the flow's verifier.
async fn write_secrets<S: CredentialStore + SharedRecords>(store: Arc<S>) -> String {
    store
        .compare_and_swap(&key(), None, tokens())
        .await
        .unwrap();
    let flows = FlowStore::shared(store.clone());
    let flow = flows
        .start_or_join(
            &key(),
            AuthorizationRequest::new(
                binding(),
                "https://as.example/authorize".parse().unwrap(),
                "https://app.example/cb".parse().unwrap(),
            ),
        )
        .await;
    // The flow is readable back through the store (opened).
    let state = flow.pending().state.expose().to_owned();
    assert!(
        FlowStore::shared(store)
            .find_by_state(&state)
            .await
            .is_some()
    );
    flow.pending().pkce_verifier.expose().to_owned()
}

fn keys() -> SealingKeys {
    SealingKeys::new("k1", [42; 32])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_no_secret_in_the_clear_and_rotates() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sealing");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("sealed-{}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let store = Arc::new(SqliteStore::open_sealed(&path, keys()).unwrap());
    let verifier = write_secrets(store.clone()).await;
    let loaded = store.load(&key()).await.unwrap().unwrap();
    assert_eq!(loaded.access_token.expose(), ACCESS);
    assert_eq!(loaded.refresh_token.as_ref().unwrap().expose(), REFRESH);
    drop(store);

    // Everything in the file, every table, read raw.
    let raw = rusqlite::Connection::open(&path).unwrap();
    let mut dump = String::new();
    for query in [
        "SELECT access_token || ' ' || refresh_token FROM credentials",
        "SELECT CAST(value AS TEXT) FROM records",
    ] {
        let mut statement = raw.prepare(query).unwrap();
        let rows = statement
            .query_map([], |row| row.get::<_, String>(0))
            .unwrap();
        for row in rows {
            dump.push_str(&row.unwrap());
        }
    }
    drop(raw);
    assert!(dump.contains("sealed:v2:k1:"));
    for secret in [ACCESS, REFRESH, CLIENT_SECRET, verifier.as_str()] {
        assert!(!dump.contains(secret), "{secret} is stored in the clear");
    }

    // Rotation: a new key, the old one kept for reading.
    let rotated = SqliteStore::open_sealed(
        &path,
        SealingKeys::new("k2", [7; 32]).with_previous("k1", [42; 32]),
    )
    .unwrap();
    assert_eq!(
        rotated
            .load(&key())
            .await
            .unwrap()
            .unwrap()
            .access_token
            .expose(),
        ACCESS
    );
    // The wrong key (or none) is a typed error, never garbage.
    let wrong = SqliteStore::open_sealed(&path, SealingKeys::new("k1", [0; 32])).unwrap();
    assert!(wrong.load(&key()).await.is_err());
    let unsealed = SqliteStore::open(&path).unwrap();
    assert!(unsealed.load(&key()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keeps_no_secret_in_the_clear() {
    let redis = RedisServer::start();
    let store = Arc::new(
        RedisStore::builder(redis.url())
            .sealing(keys())
            .build()
            .unwrap(),
    );
    let verifier = write_secrets(store.clone()).await;
    assert_eq!(
        store
            .load(&key())
            .await
            .unwrap()
            .unwrap()
            .refresh_token
            .as_ref()
            .unwrap()
            .expose(),
        REFRESH
    );
    // Every key and value in Redis, raw.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let names: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut connection)
        .await
        .unwrap();
    let mut dump = String::new();
    for name in names {
        let kind: String = redis::cmd("TYPE")
            .arg(&name)
            .query_async(&mut connection)
            .await
            .unwrap();
        let value: Vec<Vec<u8>> = match kind.as_str() {
            "hash" => redis::cmd("HVALS")
                .arg(&name)
                .query_async(&mut connection)
                .await
                .unwrap(),
            _ => vec![
                redis::cmd("GET")
                    .arg(&name)
                    .query_async(&mut connection)
                    .await
                    .unwrap(),
            ],
        };
        for part in value {
            dump.push_str(&String::from_utf8_lossy(&part));
        }
    }
    assert!(dump.contains("sealed:v2:k1:"));
    for secret in [ACCESS, REFRESH, CLIENT_SECRET, verifier.as_str()] {
        assert!(!dump.contains(secret), "{secret} is stored in the clear");
    }
}

fn fresh_db(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sealing");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}-{}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

fn bob() -> AuthKey {
    AuthKey::new(&Principal::new("acme", "bob"), binding().id())
}

/// With write access to the file but not the key: Bob's sealed tokens copied into
/// Alice's row, or a token planted in the clear, are refused, never served as Alice's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_value_in_another_row_or_a_planted_clear_one_is_refused() {
    let path = fresh_db("swapped");
    let store = SqliteStore::open_sealed(&path, keys()).unwrap();
    store
        .compare_and_swap(&key(), None, tokens())
        .await
        .unwrap();
    let bobs =
        TokenSet::new(Secret::new("bobs-access")).with_refresh_token(Secret::new("bobs-refresh"));
    store.compare_and_swap(&bob(), None, bobs).await.unwrap();

    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute(
        "UPDATE credentials SET (access_token, refresh_token) = \
         (SELECT access_token, refresh_token FROM credentials WHERE subject = 'bob') \
         WHERE subject = 'alice'",
        [],
    )
    .unwrap();
    let error = store.load(&key()).await.unwrap_err();
    assert!(error.to_string().contains("another record"), "{error}");
    raw.execute(
        "UPDATE credentials SET access_token = 'planted', refresh_token = 'planted' WHERE subject = 'alice'",
        [],
    )
    .unwrap();
    let error = store.load(&key()).await.unwrap_err();
    assert!(error.to_string().contains("not sealed"), "{error}");
    // Bob's own row still opens as his.
    let loaded = store.load(&bob()).await.unwrap().unwrap();
    assert_eq!(loaded.access_token.expose(), "bobs-access");
}

/// What a store held before keys were configured: refused by the sealed store until
/// the one-time `seal_existing` seals it; then nothing is in the clear and all opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_existing_seals_an_unsealed_sqlite_store_once() {
    let path = fresh_db("migrate");
    let verifier = write_secrets(Arc::new(SqliteStore::open(&path).unwrap())).await;
    let sealed = SqliteStore::open_sealed(&path, keys()).unwrap();
    assert!(
        sealed.load(&key()).await.is_err(),
        "unsealed values are refused"
    );
    let report = sealed.seal_existing().await.unwrap();
    assert_eq!(report.credentials, 1, "{report:?}");
    assert!(report.records >= 1, "the flow: {report:?}");
    let again = sealed.seal_existing().await.unwrap();
    assert_eq!(
        (again.credentials, again.records),
        (0, 0),
        "once: {again:?}"
    );
    let loaded = sealed.load(&key()).await.unwrap().unwrap();
    assert_eq!(loaded.refresh_token.as_ref().unwrap().expose(), REFRESH);
    drop(sealed);
    let raw = rusqlite::Connection::open(&path).unwrap();
    let dump: String = raw
        .query_row(
            "SELECT (SELECT group_concat(access_token || refresh_token) FROM credentials) || \
             (SELECT group_concat(CAST(value AS TEXT)) FROM records)",
            [],
            |row| row.get(0),
        )
        .unwrap();
    for secret in [ACCESS, REFRESH, CLIENT_SECRET, verifier.as_str()] {
        assert!(!dump.contains(secret), "{secret} is still in the clear");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_existing_seals_an_unsealed_redis_store_once() {
    let redis = RedisServer::start();
    let unsealed = Arc::new(RedisStore::builder(redis.url()).build().unwrap());
    write_secrets(unsealed).await;
    let sealed = RedisStore::builder(redis.url())
        .sealing(keys())
        .build()
        .unwrap();
    assert!(
        sealed.load(&key()).await.is_err(),
        "unsealed values are refused"
    );
    let report = sealed.seal_existing().await.unwrap();
    assert_eq!(report.credentials, 1, "{report:?}");
    assert!(report.records >= 1, "{report:?}");
    let again = sealed.seal_existing().await.unwrap();
    assert_eq!(
        (again.credentials, again.records),
        (0, 0),
        "once: {again:?}"
    );
    let loaded = sealed.load(&key()).await.unwrap().unwrap();
    assert_eq!(loaded.access_token.expose(), ACCESS);
}
