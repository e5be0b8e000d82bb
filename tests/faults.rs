//! Faults that must cost no calls and stall nobody for long: a lease holder that dies
//! or gives up, on SQLite and on Redis (two stores on one file or server stand for two
//! processes), and a refresh that fails ahead of expiry. Real loopback authorization
//! and MCP servers; windows derived from the configuration, never from this machine's
//! speed.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::RedisServer;
use tower_mcp_auth::store::{CredentialStore, LeaseOutcome, RedisStore, SqliteStore, Swap};
use tower_mcp_auth::testing::{Fault, TestAuthServer, TestMcpServer};
use tower_mcp_auth::{AuthKey, Principal, RefreshConfig, RefreshCoordinator, ServerBinding};

const CLIENT_ID: &str = "faults-client";

struct World {
    auth: TestAuthServer,
    _mcp: TestMcpServer,
    binding: Arc<ServerBinding>,
    key: AuthKey,
}

async fn world() -> World {
    let auth = TestAuthServer::start().await.unwrap();
    auth.set_rotation(true);
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let binding = Arc::new(
        ServerBinding::public_client(&mcp.url(), &auth.token_endpoint(), CLIENT_ID)
            .unwrap()
            .with_issuer(auth.issuer()),
    );
    let key = AuthKey::new(&Principal::new("acme", "alice"), binding.id());
    World {
        auth,
        _mcp: mcp,
        binding,
        key,
    }
}

fn sqlite_pair(name: &str) -> (Arc<dyn CredentialStore>, Arc<dyn CredentialStore>) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("faults");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}-{}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    (
        Arc::new(SqliteStore::open(&path).unwrap()),
        Arc::new(SqliteStore::open(&path).unwrap()),
    )
}

fn redis_pair(redis: &RedisServer) -> (Arc<dyn CredentialStore>, Arc<dyn CredentialStore>) {
    (
        Arc::new(RedisStore::builder(redis.url()).build().unwrap()),
        Arc::new(RedisStore::builder(redis.url()).build().unwrap()),
    )
}

/// Stores an expired token set with a live refresh token; its generation.
async fn expired_login(
    world: &World,
    store: &dyn CredentialStore,
) -> tower_mcp_auth::store::Generation {
    let mut tokens = world.auth.issue(CLIENT_ID, "alice", Some("tools"));
    tokens.expires_at = Some(std::time::SystemTime::now() - Duration::from_secs(1));
    match store
        .compare_and_swap(&world.key, None, tokens)
        .await
        .unwrap()
    {
        Swap::Stored(stored) => stored.generation,
        Swap::Conflict(_) => panic!("a fresh store"),
    }
}

/// The other process dies holding the lease (taken, never renewed, never released):
/// this one takes over once the lease's TTL lapses, not after the redemption timeout.
async fn dead_holder_is_taken_over(
    (dead, alive): (Arc<dyn CredentialStore>, Arc<dyn CredentialStore>),
) {
    let world = world().await;
    let config = RefreshConfig::default();
    let generation = expired_login(&world, &*dead).await;
    let LeaseOutcome::Acquired(_) = dead
        .acquire_lease(&world.key, generation, config.lease_ttl())
        .await
        .unwrap()
    else {
        panic!("the lease is free");
    };
    let coordinator = RefreshCoordinator::builder(alive)
        .config(config.clone())
        .build();
    let started = Instant::now();
    let tokens = coordinator.token(&world.key, &world.binding).await.unwrap();
    let took = started.elapsed();
    assert!(tokens.is_some_and(|t| t.is_usable()));
    println!(
        "a dead holder's lease ({:?}) taken over after {took:?}",
        config.lease_ttl()
    );
    assert!(
        took < config.timeout(),
        "waited out the redemption timeout ({:?}): {took:?}",
        config.timeout()
    );
    assert_eq!(world.auth.stats().refresh_requests, 1);
}

/// The other process gives up (its redemption failed) and releases the lease: the
/// waiter notices the release, not only a new token.
async fn released_lease_wakes_the_waiter(
    (holder, waiter): (Arc<dyn CredentialStore>, Arc<dyn CredentialStore>),
) {
    let world = world().await;
    let config = RefreshConfig::default();
    let generation = expired_login(&world, &*holder).await;
    // A long lease: only its release can end the wait before the timeout.
    let long = config.timeout() * 4;
    let LeaseOutcome::Acquired(lease) = holder
        .acquire_lease(&world.key, generation, long)
        .await
        .unwrap()
    else {
        panic!("the lease is free");
    };
    let release = {
        let (holder, key) = (holder.clone(), world.key.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            holder.release_lease(&key, lease).await.unwrap();
        })
    };
    let coordinator = RefreshCoordinator::builder(waiter)
        .config(config.clone())
        .build();
    let started = Instant::now();
    let tokens = coordinator.token(&world.key, &world.binding).await.unwrap();
    let took = started.elapsed();
    release.await.unwrap();
    assert!(tokens.is_some_and(|t| t.is_usable()));
    println!("a released lease noticed after {took:?}");
    assert!(
        took < config.timeout(),
        "waited for the lease to lapse: {took:?}"
    );
    assert_eq!(world.auth.stats().refresh_requests, 1);
}

/// A living holder whose redemption outlasts the lease's TTL keeps its lease (the
/// heartbeat): the other process waits for its write and redeems nothing itself.
async fn living_holder_keeps_its_lease(
    (first, second): (Arc<dyn CredentialStore>, Arc<dyn CredentialStore>),
) {
    let world = world().await;
    let config = RefreshConfig::default();
    expired_login(&world, &*first).await;
    // Slower than the lease's TTL, well inside the redemption timeout.
    world
        .auth
        .set_latency(config.lease_ttl() + Duration::from_secs(2));
    let a = RefreshCoordinator::builder(first)
        .config(config.clone())
        .build();
    let b = RefreshCoordinator::builder(second)
        .config(config.clone())
        .build();
    let (key, binding) = (world.key.clone(), world.binding.clone());
    let holder = tokio::spawn(async move { a.token(&key, &binding).await });
    // B comes once A holds the lease and is redeeming.
    while world.auth.stats().refresh_requests == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let from_b = b.token(&world.key, &world.binding).await.unwrap().unwrap();
    let from_a = holder.await.unwrap().unwrap().unwrap();
    assert_eq!(
        from_a.generation, from_b.generation,
        "one write, read by both"
    );
    let stats = world.auth.stats();
    assert_eq!(stats.refresh_requests, 1, "{stats:?}");
    assert_eq!(stats.reuse_detected, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_dead_lease_holder_is_taken_over_within_the_lease_ttl() {
    dead_holder_is_taken_over(sqlite_pair("dead-holder")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_released_lease_wakes_the_waiter() {
    released_lease_wakes_the_waiter(sqlite_pair("released")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_living_holder_keeps_its_lease_past_its_ttl() {
    living_holder_keeps_its_lease(sqlite_pair("living-holder")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_dead_lease_holder_is_taken_over_within_the_lease_ttl() {
    let redis = RedisServer::start();
    dead_holder_is_taken_over(redis_pair(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_released_lease_wakes_the_waiter() {
    let redis = RedisServer::start();
    released_lease_wakes_the_waiter(redis_pair(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_living_holder_keeps_its_lease_past_its_ttl() {
    let redis = RedisServer::start();
    living_holder_keeps_its_lease(redis_pair(&redis)).await;
}

/// A refresh ahead of expiry fails (500 at the token endpoint): every call still gets
/// the current token until it really expires, and the first call that needs a new
/// one redeems at once instead of waiting out the cooldown that failure started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_ahead_of_expiry_costs_no_call() {
    let world = world().await;
    // A cooldown far longer than the test: were it applied to calls that need a new
    // token, they would fail.
    let config =
        RefreshConfig::default().with_cooldown(Duration::from_secs(120), Duration::from_secs(120));
    world.auth.set_access_token_lifetime(Duration::from_secs(4));
    let store: Arc<dyn CredentialStore> = Arc::new(tower_mcp_auth::store::MemoryStore::new());
    let tokens = world.auth.issue(CLIENT_ID, "alice", Some("tools"));
    let first_expiry = tokens.expires_at.unwrap();
    store
        .compare_and_swap(&world.key, None, tokens)
        .await
        .unwrap();
    // The next token lives long: no further refresh inside the test.
    world
        .auth
        .set_access_token_lifetime(Duration::from_secs(600));
    world.auth.fail_next(Fault::ServerError, 1);
    let coordinator = RefreshCoordinator::builder(store).config(config).build();

    let mut calls = 0;
    let mut generations = std::collections::BTreeSet::new();
    while std::time::SystemTime::now() < first_expiry + Duration::from_millis(500) {
        let tokens = coordinator
            .token(&world.key, &world.binding)
            .await
            .unwrap_or_else(|error| panic!("call {calls} failed: {error}"))
            .expect("a token");
        generations.insert(tokens.generation);
        calls += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = world.auth.stats();
    println!("{calls} calls, generations {generations:?}, {stats:?}");
    assert_eq!(generations.len(), 2, "the old token, then the new one");
    assert_eq!(
        stats.refresh_requests, 2,
        "the failed one ahead of expiry, then one that worked"
    );
}

/// The transport's first connection is refused (a real reqwest connect error, from a
/// port nothing listens on); the refresh goes out again at once on a new connection
/// and succeeds: no failed call, no cooldown, one redemption at the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_tried_again_at_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    let world = world().await;
    let store: Arc<dyn CredentialStore> = Arc::new(tower_mcp_auth::store::MemoryStore::new());
    let generation = expired_login(&world, &*store).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let reqwest = tower_mcp_auth::client::ReqwestService::new().unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    // The first attempt goes to the closed port, every other one where it was sent.
    let transport = tower::service_fn(move |mut request: http::Request<_>| {
        let reqwest = reqwest.clone();
        if counted.fetch_add(1, Ordering::SeqCst) == 0 {
            let uri = format!("http://127.0.0.1:{closed}{}", request.uri().path());
            *request.uri_mut() = uri.parse().unwrap();
        }
        tower::ServiceExt::oneshot(reqwest, request)
    });
    let coordinator = RefreshCoordinator::builder(store)
        .http_client(tower_mcp_auth::AuthHttpClient::from_http_service(transport))
        .build();

    let tokens = coordinator
        .token(&world.key, &world.binding)
        .await
        .expect("the refresh succeeds on the second connection")
        .expect("a token");
    assert!(tokens.generation > generation);
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        2,
        "refused once, then sent"
    );
    let stats = world.auth.stats();
    assert_eq!((stats.refresh_requests, stats.refresh_successes), (1, 1));
}

/// A token endpoint that reads the whole request and then resets the connection: the
/// request may have been redeemed, so the refresh token is never sent again. One
/// request reaches the server; the caller gets a transient error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_after_the_request_was_read_is_not_resent() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncReadExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut read = Vec::new();
                let mut buffer = [0u8; 4096];
                // Headers, then the form body (its length from Content-Length).
                loop {
                    let n = stream.read(&mut buffer).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    read.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&read).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if read.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                assert!(String::from_utf8_lossy(&read).contains("refresh_token="));
                seen.fetch_add(1, Ordering::SeqCst);
                // RST instead of FIN.
                stream.set_zero_linger().unwrap();
                drop(stream);
            });
        }
    });
    let client = tower_mcp_auth::AuthHttpClient::reqwest();
    let request = http::Request::post(format!("http://127.0.0.1:{port}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(bytes::Bytes::from_static(
            b"grant_type=refresh_token&refresh_token=rt-1",
        ))
        .unwrap();
    let error = client
        .send(request)
        .await
        .expect_err("the connection was reset");
    assert!(
        matches!(error, tower_mcp_auth::oauth::HttpError::Network(_)),
        "{error:?}"
    );
    // Anything resent would have arrived by now: the client has returned.
    assert_eq!(requests.load(Ordering::SeqCst), 1, "sent once, never again");
}
