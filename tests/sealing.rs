//! Secrets at rest: with sealing keys, no token, PKCE verifier or client secret reaches
//! the SQLite file or Redis in the clear; keys rotate; a wrong key is a typed error.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::RedisServer;
use tower_mcp_auth::store::{CredentialStore, RedisStore, SealingKeys, SharedRecords, SqliteStore};
use tower_mcp_auth::{
    AuthKey, AuthorizationRequest, ClientAuthMethod, FlowStore, Principal, Secret, ServerBinding,
    TokenSet,
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
    assert!(dump.contains("sealed:v1:k1:"));
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
    assert!(dump.contains("sealed:v1:k1:"));
    for secret in [ACCESS, REFRESH, CLIENT_SECRET, verifier.as_str()] {
        assert!(!dump.contains(secret), "{secret} is stored in the clear");
    }
}
