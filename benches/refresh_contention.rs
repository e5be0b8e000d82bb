//! Refresh contention: our coordinator against peer strategies, side by side, against
//! the real loopback authorization server (rotating single-use refresh tokens with
//! reuse detection that revokes the whole grant family).
//!
//! Peers, each modelled in a few dozen lines on the cited design:
//! * `no-coordination` — yup-oauth2: every caller that sees an expired token refreshes.
//! * `write-lock-no-recheck` — gcp_auth: a write lock around the refresh, no re-check
//!   after acquiring it, so waiters refresh again one after another.
//! * `global-mutex` — rmcp 3.x: one mutex held across the refresh; the expiry path
//!   re-checks under it, the 401 path refreshes unconditionally.
//! * `aws-smithy-expiring-cache` — the real `aws_smithy_runtime::expiring_cache`.
//!
//! Run: `cargo bench --bench refresh_contention --features test-util`. Exits non-zero if
//! our coordinator ever makes more than one redemption per rejected token or sees an
//! `invalid_grant`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_smithy_runtime::expiring_cache::ExpiringCache;
use tower_mcp_auth::store::{CredentialStore, MemoryStore, Swap};
use tower_mcp_auth::testing::{Fault, TestAuthServer};
use tower_mcp_auth::{
    AuthKey, Principal, RefreshConfig, RefreshCoordinator, ServerBinding, TokenSet,
    store::Generation,
};

const CLIENT: &str = "bench-client";
const RESOURCE: &str = "http://127.0.0.1:1/mcp";

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
type TokenResult = Result<String, String>;

/// Peer state: one user's tokens.
#[derive(Clone)]
struct Slot {
    access: String,
    refresh: String,
    expires_at: SystemTime,
}

impl Slot {
    fn valid(&self) -> bool {
        SystemTime::now() < self.expires_at
    }
}

/// A plain refresh-token redemption, shared by the peer models.
async fn redeem(http: &reqwest::Client, endpoint: &str, refresh: &str) -> Result<Slot, String> {
    let response = http
        .post(endpoint)
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", CLIENT),
        ])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    Ok(Slot {
        access: json["access_token"].as_str().unwrap_or_default().to_owned(),
        refresh: json["refresh_token"].as_str().unwrap_or(refresh).to_owned(),
        expires_at: SystemTime::now()
            + Duration::from_secs(json["expires_in"].as_u64().unwrap_or(3600)),
    })
}

trait Strategy: Send + Sync {
    /// A token to send: the cached one if valid, else a refreshed one.
    fn token(&self) -> BoxFuture<'_, TokenResult>;
    /// The resource server rejected the current token: get another. `None`: the strategy
    /// has no way to react to a 401.
    fn rejected(&self) -> Option<BoxFuture<'_, TokenResult>>;
}

struct NoCoordination {
    http: reqwest::Client,
    endpoint: String,
    slot: Mutex<Slot>,
}

impl NoCoordination {
    async fn refresh(&self) -> TokenResult {
        let refresh = self.slot.lock().unwrap().refresh.clone();
        let fresh = redeem(&self.http, &self.endpoint, &refresh).await?;
        *self.slot.lock().unwrap() = fresh.clone();
        Ok(fresh.access)
    }
}

impl Strategy for NoCoordination {
    fn token(&self) -> BoxFuture<'_, TokenResult> {
        Box::pin(async move {
            let slot = self.slot.lock().unwrap().clone();
            if slot.valid() {
                return Ok(slot.access);
            }
            self.refresh().await
        })
    }
    fn rejected(&self) -> Option<BoxFuture<'_, TokenResult>> {
        Some(Box::pin(self.refresh()))
    }
}

struct WriteLockNoRecheck {
    http: reqwest::Client,
    endpoint: String,
    slot: tokio::sync::RwLock<Slot>,
}

impl WriteLockNoRecheck {
    async fn refresh(&self) -> TokenResult {
        let mut slot = self.slot.write().await;
        let fresh = redeem(&self.http, &self.endpoint, &slot.refresh).await?;
        *slot = fresh.clone();
        Ok(fresh.access)
    }
}

impl Strategy for WriteLockNoRecheck {
    fn token(&self) -> BoxFuture<'_, TokenResult> {
        Box::pin(async move {
            {
                let slot = self.slot.read().await;
                if slot.valid() {
                    return Ok(slot.access.clone());
                }
            }
            self.refresh().await
        })
    }
    fn rejected(&self) -> Option<BoxFuture<'_, TokenResult>> {
        Some(Box::pin(self.refresh()))
    }
}

struct GlobalMutex {
    http: reqwest::Client,
    endpoint: String,
    manager: tokio::sync::Mutex<Slot>,
}

impl GlobalMutex {
    async fn refresh_locked(&self, slot: &mut Slot) -> TokenResult {
        *slot = redeem(&self.http, &self.endpoint, &slot.refresh).await?;
        Ok(slot.access.clone())
    }
}

impl Strategy for GlobalMutex {
    fn token(&self) -> BoxFuture<'_, TokenResult> {
        Box::pin(async move {
            let mut slot = self.manager.lock().await;
            if slot.valid() {
                return Ok(slot.access.clone());
            }
            self.refresh_locked(&mut slot).await
        })
    }
    fn rejected(&self) -> Option<BoxFuture<'_, TokenResult>> {
        Some(Box::pin(async move {
            let mut slot = self.manager.lock().await;
            self.refresh_locked(&mut slot).await
        }))
    }
}

struct SmithyCache {
    http: reqwest::Client,
    endpoint: String,
    storage: Mutex<Slot>,
    cache: ExpiringCache<String, String>,
}

impl Strategy for SmithyCache {
    fn token(&self) -> BoxFuture<'_, TokenResult> {
        Box::pin(async move {
            if let Some(token) = self
                .cache
                .yield_or_clear_if_expired(SystemTime::now())
                .await
            {
                return Ok(token);
            }
            self.cache
                .get_or_load(|| async {
                    let refresh = self.storage.lock().unwrap().refresh.clone();
                    let fresh = redeem(&self.http, &self.endpoint, &refresh).await?;
                    *self.storage.lock().unwrap() = fresh.clone();
                    Ok((fresh.access, fresh.expires_at))
                })
                .await
        })
    }
    fn rejected(&self) -> Option<BoxFuture<'_, TokenResult>> {
        None
    }
}

struct Ours {
    coordinator: RefreshCoordinator,
    key: AuthKey,
    binding: Arc<ServerBinding>,
    rejected_generation: Generation,
}

impl Strategy for Ours {
    fn token(&self) -> BoxFuture<'_, TokenResult> {
        Box::pin(async move {
            match self.coordinator.token(&self.key, &self.binding).await {
                Ok(Some(tokens)) => Ok(tokens.access_token.expose().to_owned()),
                Ok(None) => Err("no token".into()),
                Err(e) => Err(e.to_string()),
            }
        })
    }
    fn rejected(&self) -> Option<BoxFuture<'_, TokenResult>> {
        Some(Box::pin(async move {
            self.coordinator
                .refresh_rejected(&self.key, &self.binding, Some(self.rejected_generation))
                .await
                .map(|tokens| tokens.access_token.expose().to_owned())
                .map_err(|e| e.to_string())
        }))
    }
}

const STRATEGIES: [&str; 5] = [
    "tower-mcp-auth",
    "no-coordination",
    "write-lock-no-recheck",
    "global-mutex",
    "aws-smithy-expiring-cache",
];

/// Builds `name` over a fresh grant; `expired` makes the current token expired.
async fn build(name: &str, auth: &TestAuthServer, expired: bool) -> Arc<dyn Strategy> {
    let mut tokens = auth.issue(CLIENT, "user", None);
    if expired {
        tokens.expires_at = Some(SystemTime::now() - Duration::from_secs(1));
    }
    let slot = Slot {
        access: tokens.access_token.expose().to_owned(),
        refresh: tokens
            .refresh_token
            .as_ref()
            .map(|t| t.expose().to_owned())
            .unwrap_or_default(),
        expires_at: tokens.expires_at.unwrap_or(SystemTime::now()),
    };
    let http = tower_mcp_auth::client::ReqwestService::builder()
        .expect("TLS")
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap();
    let endpoint = auth.token_endpoint();
    match name {
        "tower-mcp-auth" => Arc::new(ours(auth, tokens, RefreshConfig::default()).await),
        "no-coordination" => Arc::new(NoCoordination {
            http,
            endpoint,
            slot: Mutex::new(slot),
        }),
        "write-lock-no-recheck" => Arc::new(WriteLockNoRecheck {
            http,
            endpoint,
            slot: tokio::sync::RwLock::new(slot),
        }),
        "global-mutex" => Arc::new(GlobalMutex {
            http,
            endpoint,
            manager: tokio::sync::Mutex::new(slot),
        }),
        _ => {
            let cache = ExpiringCache::new(Duration::from_secs(10));
            if !expired {
                let (access, expires_at) = (slot.access.clone(), slot.expires_at);
                let _ = cache
                    .get_or_load(|| async move { Ok::<_, String>((access, expires_at)) })
                    .await;
            }
            Arc::new(SmithyCache {
                http,
                endpoint,
                storage: Mutex::new(slot),
                cache,
            })
        }
    }
}

async fn ours(auth: &TestAuthServer, tokens: TokenSet, config: RefreshConfig) -> Ours {
    let binding =
        Arc::new(ServerBinding::public_client(RESOURCE, &auth.token_endpoint(), CLIENT).unwrap());
    let store = Arc::new(MemoryStore::new());
    let key = AuthKey::new(&Principal::new("bench", "user"), binding.id());
    let Ok(Swap::Stored(stored)) = store.compare_and_swap(&key, None, tokens).await else {
        panic!("fresh store")
    };
    let coordinator = RefreshCoordinator::builder(store).config(config).build();
    Ours {
        coordinator,
        key,
        binding,
        rejected_generation: stored.generation,
    }
}

struct Row {
    scenario: String,
    strategy: &'static str,
    redemptions: u64,
    invalid_grants: u64,
    ok: usize,
    calls: usize,
    p50: Duration,
    p99: Duration,
    note: String,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// K concurrent callers released together; each runs `call` once (optionally under a
/// per-call timeout and a start delay).
async fn storm(
    strategy: &Arc<dyn Strategy>,
    k: usize,
    rejected: bool,
    stagger: Duration,
    per_call_timeout: Option<Duration>,
) -> Vec<(Option<TokenResult>, Duration)> {
    let barrier = Arc::new(tokio::sync::Barrier::new(k));
    let tasks: Vec<_> = (0..k)
        .map(|i| {
            let (strategy, barrier) = (strategy.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                tokio::time::sleep(stagger.mul_f64(i as f64 / k as f64)).await;
                let started = Instant::now();
                let call = async {
                    match rejected {
                        true => strategy.rejected().expect("401 supported").await,
                        false => strategy.token().await,
                    }
                };
                let result = match per_call_timeout {
                    Some(limit) => tokio::time::timeout(limit, call).await.ok(),
                    None => Some(call.await),
                };
                (result, started.elapsed())
            })
        })
        .collect();
    let mut results = Vec::with_capacity(k);
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

fn summarize(
    auth: &TestAuthServer,
    scenario: &str,
    strategy: &'static str,
    results: &[(Option<TokenResult>, Duration)],
    note: String,
) -> Row {
    let mut latencies: Vec<Duration> = results.iter().map(|(_, d)| *d).collect();
    latencies.sort();
    // A call is ok if it ended with a token the authorization server still honours.
    let ok = results
        .iter()
        .filter(|(r, _)| matches!(r, Some(Ok(token)) if auth.validate(token).is_some()))
        .count();
    let stats = auth.stats();
    Row {
        scenario: scenario.to_owned(),
        strategy,
        redemptions: stats.refresh_requests,
        invalid_grants: stats.invalid_grants,
        ok,
        calls: results.len(),
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        note,
    }
}

async fn expiry_storm(k: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    for name in STRATEGIES {
        let auth = TestAuthServer::start().await.unwrap();
        auth.set_latency(Duration::from_millis(5));
        let strategy = build(name, &auth, true).await;
        let results = storm(&strategy, k, false, Duration::ZERO, None).await;
        rows.push(summarize(
            &auth,
            &format!("expiry storm K={k}"),
            name,
            &results,
            String::new(),
        ));
    }
    rows
}

async fn unauthorized_storm(k: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    for name in STRATEGIES {
        let auth = TestAuthServer::start().await.unwrap();
        auth.set_latency(Duration::from_millis(5));
        let strategy = build(name, &auth, false).await;
        auth.revoke_access_tokens("user");
        if strategy.rejected().is_none() {
            rows.push(Row {
                scenario: format!("401 storm K={k}"),
                strategy: name,
                redemptions: 0,
                invalid_grants: 0,
                ok: 0,
                calls: k,
                p50: Duration::ZERO,
                p99: Duration::ZERO,
                note: "cannot react to a 401 (no invalidation API)".into(),
            });
            continue;
        }
        let results = storm(&strategy, k, true, Duration::ZERO, None).await;
        rows.push(summarize(
            &auth,
            &format!("401 storm K={k}"),
            name,
            &results,
            String::new(),
        ));
    }
    rows
}

async fn failure_wave(k: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    for name in STRATEGIES {
        let auth = TestAuthServer::start().await.unwrap();
        auth.set_latency(Duration::from_millis(5));
        auth.fail_always(Fault::ServerError);
        let strategy = build(name, &auth, true).await;
        let results = storm(&strategy, k, false, Duration::ZERO, None).await;
        // All calls fail by construction; what counts is how many reached the server.
        rows.push(summarize(
            &auth,
            &format!("failure wave (500) K={k}"),
            name,
            &results,
            "attempts within one cooldown window".into(),
        ));
    }
    rows
}

async fn leader_cancellation(k: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    for name in STRATEGIES {
        let auth = TestAuthServer::start().await.unwrap();
        auth.set_latency(Duration::from_millis(100));
        let strategy = build(name, &auth, true).await;
        // Callers arrive over 150 ms and give up after 30 ms; the server takes 100 ms.
        let results = storm(
            &strategy,
            k,
            false,
            Duration::from_millis(150),
            Some(Duration::from_millis(30)),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = strategy.token().await;
        let usable = matches!(&after, Ok(token) if auth.validate(token).is_some());
        let mut row = summarize(
            &auth,
            &format!("leader cancellation K={k}"),
            name,
            &results,
            String::new(),
        );
        row.note = format!(
            "next call after the storm: {}",
            if usable { "ok" } else { "FAILS (grant lost)" }
        );
        row.ok = usize::from(usable);
        row.calls = 1;
        rows.push(row);
    }
    rows
}

fn print(rows: &[Row]) {
    println!(
        "{:<28} {:<27} {:>11} {:>13} {:>9} {:>9} {:>9}  note",
        "scenario", "strategy", "redemptions", "invalid_grant", "ok", "p50", "p99"
    );
    for r in rows {
        println!(
            "{:<28} {:<27} {:>11} {:>13} {:>9} {:>9} {:>9}  {}",
            r.scenario,
            r.strategy,
            r.redemptions,
            r.invalid_grants,
            format!("{}/{}", r.ok, r.calls),
            format!("{:.1?}", r.p50),
            format!("{:.1?}", r.p99),
            r.note
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rows = runtime.block_on(async {
        let mut rows = Vec::new();
        for k in [1, 64, 512] {
            rows.extend(expiry_storm(k).await);
        }
        rows.extend(unauthorized_storm(512).await);
        rows.extend(failure_wave(512).await);
        rows.extend(leader_cancellation(512).await);
        rows
    });
    println!(
        "refresh contention (loopback authorization server, rotating refresh tokens with reuse detection)"
    );
    println!(
        "machine: {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    print(&rows);

    let violations: Vec<&Row> = rows
        .iter()
        .filter(|r| r.strategy == "tower-mcp-auth")
        .filter(|r| {
            r.redemptions != 1
                || r.invalid_grants != 0
                || r.ok != r.calls && !r.scenario.starts_with("failure")
        })
        .collect();
    if !violations.is_empty() {
        for r in violations {
            eprintln!(
                "VIOLATION: tower-mcp-auth in `{}`: {} redemptions, {} invalid_grant, {}/{} ok",
                r.scenario, r.redemptions, r.invalid_grants, r.ok, r.calls
            );
        }
        std::process::exit(1);
    }
    println!("tower-mcp-auth: 1 redemption and 0 invalid_grant in every scenario");
}
