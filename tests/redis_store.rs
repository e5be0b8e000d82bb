//! RedisStore against a real `redis-server` on loopback: the CredentialStore contract
//! across replicas (separate stores and connections), the lease and its fence, two
//! coordinators redeeming once, and Redis stopped mid-run.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::RedisServer;
use tower::Layer;
use tower_mcp_auth::store::{CredentialStore, RedisStore, Swap};
use tower_mcp_auth::testing::{ReqwestTransport, TestAuthServer, TestMcpServer};
use tower_mcp_auth::{
    AuthKey, Error, Principal, RefreshCoordinator, Secret, ServerBinding, SilentRefreshLayer,
    TokenSet,
};

fn key(user: &str) -> AuthKey {
    let binding =
        ServerBinding::public_client("https://mcp.example/mcp", "https://as.example/token", "c")
            .unwrap();
    AuthKey::new(&Principal::new("acme:colon", user), binding.id())
}

use common::sample_tokens as tokens;

fn store(redis: &RedisServer) -> RedisStore {
    RedisStore::builder(redis.url())
        .prefix("test:")
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_contract_holds_across_replicas() {
    let redis = RedisServer::start();
    let (a, b) = (store(&redis), store(&redis));
    let k = key("alice");
    let Swap::Stored(first) = a.compare_and_swap(&k, None, tokens("a1")).await.unwrap() else {
        panic!("first write")
    };
    assert!(matches!(
        b.compare_and_swap(&k, None, tokens("b0")).await.unwrap(),
        Swap::Conflict(Some(current)) if current.generation == first.generation
    ));
    let Swap::Stored(second) = b
        .compare_and_swap(&k, Some(first.generation), tokens("b1"))
        .await
        .unwrap()
    else {
        panic!("second write")
    };
    assert!(second.generation > first.generation);
    let loaded = a.load(&k).await.unwrap().unwrap();
    assert_eq!(loaded.access_token.expose(), "b1");
    assert_eq!(loaded.refresh_token.as_ref().unwrap().expose(), "rt-b1");
    assert_eq!(loaded.scope.as_deref(), Some("tools"));
    assert_eq!(loaded.generation, second.generation);
    assert_eq!(
        loaded
            .expires_at
            .unwrap()
            .duration_since(loaded.obtained_at)
            .unwrap()
            .as_secs(),
        3600
    );
    assert!(!a.delete(&k, first.generation).await.unwrap());
    assert!(a.delete(&k, second.generation).await.unwrap());
    assert!(b.load(&k).await.unwrap().is_none());
    let Swap::Stored(third) = b.compare_and_swap(&k, None, tokens("c1")).await.unwrap() else {
        panic!("third write")
    };
    assert!(third.generation > second.generation, "never reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_single_fenced_and_taken_over_when_it_expires() {
    let redis = RedisServer::start();
    let (a, b) = (store(&redis), store(&redis));
    common::lease_contract(&a, &b, &key("bob"), tokens).await;
}

struct World {
    auth: TestAuthServer,
    mcp: TestMcpServer,
    binding: ServerBinding,
}

async fn world() -> World {
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let binding = ServerBinding::public_client(&mcp.url(), &auth.token_endpoint(), "client")
        .unwrap()
        .with_issuer(auth.issuer());
    World { auth, mcp, binding }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coordinators_over_one_redis_redeem_once() {
    let redis = RedisServer::start();
    let w = world().await;
    let alice = Principal::new("acme", "alice");
    let k = AuthKey::new(&alice, w.binding.id());
    let mut login = w.auth.issue("client", "alice", Some("tools"));
    login.expires_at = Some(login.obtained_at);
    store(&redis)
        .compare_and_swap(&k, None, login)
        .await
        .unwrap();

    let clients: Vec<_> = (0..2)
        .map(|_| {
            SilentRefreshLayer::new(
                RefreshCoordinator::new(Arc::new(store(&redis))),
                w.binding.clone(),
            )
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
                w.mcp.url(),
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
    let stats = w.auth.stats();
    assert_eq!(stats.refresh_requests, 1, "one redemption across both");
    assert_eq!((stats.invalid_grants, stats.reuse_detected), (0, 0));
}

/// Redis stopped mid-run: calls served from the read cache go on, calls that need the
/// store fail fast with a typed store error (no panic, no hang, nothing in the process
/// dropped); once Redis is back, everything works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run_fails_fast_and_recovers() {
    let mut redis = RedisServer::start();
    let w = world().await;
    let alice = Principal::new("acme", "alice");
    let k = AuthKey::new(&alice, w.binding.id());
    let shared = store(&redis);
    shared
        .compare_and_swap(&k, None, w.auth.issue("client", "alice", Some("tools")))
        .await
        .unwrap();
    let client = SilentRefreshLayer::new(
        RefreshCoordinator::new(Arc::new(shared.clone())),
        w.binding.clone(),
    )
    .layer(ReqwestTransport::new());
    assert_eq!(
        common::call_whoami(client.clone(), &w.mcp.url(), &alice)
            .await
            .unwrap(),
        "alice"
    );

    redis.stop();
    // The read cache keeps calls with a valid token going: nothing in memory is lost.
    for _ in 0..5 {
        assert_eq!(
            common::call_whoami(client.clone(), &w.mcp.url(), &alice)
                .await
                .unwrap(),
            "alice"
        );
    }
    // A call that needs the store (the server revoked the token: a 401) fails fast with
    // a typed store error.
    w.auth.revoke_access_tokens("alice");
    let started = std::time::Instant::now();
    for _ in 0..5 {
        let error = common::call_whoami(client.clone(), &w.mcp.url(), &alice)
            .await
            .unwrap_err();
        assert!(
            matches!(Error::find(error.as_ref()), Some(Error::Store(_))),
            "{error}"
        );
    }
    println!(
        "5 calls needing Redis while it is down failed in {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "bounded by the store's timeouts"
    );

    // Back (empty: no persistence in this test): a new login is stored and used.
    redis.restart();
    let mut stored = None;
    for _ in 0..40 {
        match shared
            .compare_and_swap(&k, None, w.auth.issue("client", "alice", Some("tools")))
            .await
        {
            Ok(swap) => {
                stored = Some(swap);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(
        matches!(stored, Some(Swap::Stored(_))),
        "Redis is used again"
    );
    assert_eq!(
        common::call_whoami(client, &w.mcp.url(), &alice)
            .await
            .unwrap(),
        "alice"
    );
}

/// Redis restarts without persistence and loses everything: the store says so (a typed
/// error and a loud log, once), never a silent "nothing stored"; afterwards it is used
/// again, and generations written then are above every one written before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_redis_is_reported_and_generations_stay_monotonic() {
    let mut redis = RedisServer::start();
    let store = RedisStore::builder(redis.url()).build().unwrap();
    let binding =
        ServerBinding::public_client("https://mcp.example/mcp", "https://as.example/token", "c")
            .unwrap();
    let key = AuthKey::new(&Principal::new("acme", "alice"), binding.id());
    assert!(store.load(&key).await.unwrap().is_none(), "a new store");
    let Swap::Stored(before) = store
        .compare_and_swap(&key, None, TokenSet::new(Secret::new("at-1")))
        .await
        .unwrap()
    else {
        panic!("stored")
    };
    assert!(store.lost_data_at().is_none());

    redis.stop();
    redis.restart(); // no persistence: empty
    let error = loop {
        // The connection manager reconnects on the first calls after the restart.
        match store.load(&key).await {
            Err(error) if error.wiped().is_none() => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => break error,
            Ok(found) => panic!("a lost credential read as {found:?}"),
        }
    };
    assert!(error.to_string().contains("lost its data"), "{error}");
    assert!(store.lost_data_at().is_some());
    // Reported once: the store is used again, empty.
    assert!(store.load(&key).await.unwrap().is_none());
    let Swap::Stored(after) = store
        .compare_and_swap(&key, None, TokenSet::new(Secret::new("at-2")))
        .await
        .unwrap()
    else {
        panic!("stored")
    };
    assert!(
        after.generation > before.generation,
        "{:?} after the loss, {:?} before",
        after.generation,
        before.generation
    );
}
