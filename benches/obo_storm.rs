//! OBO storm: K users each make M concurrent MCP calls on the same scope, through an
//! On-Behalf-Of exchange against the loopback `TestAuthServer` (20 ms token-endpoint
//! latency). Three waves: cold (nothing cached), warm (the tokens are fresh), and after
//! the tokens' lifetime (31 s tokens with a 30 s skew: usable for 1 s).
//!
//! Strategies, side by side:
//! * `tower-mcp-auth`: `OboHeaderLayer` with one shared `OboExchanger` (cache +
//!   single-flight);
//! * `per-request`: a new exchange for every request (LibreChat before its fix);
//! * `cache-no-single-flight`: a shared cache, but concurrent misses each exchange.
//!
//! Reported: exchanges at the identity provider, calls answered, p50/p99 per call.
//! Run: `cargo bench --bench obo_storm`. Exits non-zero unless ours makes exactly one
//! exchange per (user, scope) per token lifetime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer, ServiceExt};
use tower_mcp_auth::testing::{ReqwestTransport, TestAuthServer, TestMcpServer, jsonrpc_request};
use tower_mcp_auth::{
    AuthHttpClient, OboExchanger, OboHeaderLayer, Principal, Secret, UserAssertion,
    obo::ClientAuth, obo::OboConfig, obo::OboGrant,
};

const CLIENT: &str = "gateway";
const SECRET: &str = "gateway-secret";
const STRATEGIES: [&str; 3] = ["tower-mcp-auth", "per-request", "cache-no-single-flight"];

type Client = BoxCloneSyncService<http::Request<reqwest::Body>, http::Response<Bytes>, BoxError>;

/// Every strategy shares one HTTP client for the identity provider and one for the
/// MCP server: the comparison is about exchanges, not connection set-up.
struct World {
    auth: TestAuthServer,
    mcp: TestMcpServer,
    config: OboConfig,
    idp_http: AuthHttpClient,
    transport: ReqwestTransport,
}

impl World {
    fn exchanger(&self) -> OboExchanger {
        OboExchanger::with_http_client(self.config.clone(), self.idp_http.clone())
    }

    fn layered(&self, exchanger: OboExchanger) -> Client {
        BoxCloneSyncService::new(
            OboHeaderLayer::new(exchanger, &self.mcp.url())
                .expect("MCP URL")
                .layer(self.transport.clone()),
        )
    }
}

/// A cache in front of independent exchanges: every concurrent miss exchanges.
#[derive(Clone)]
struct UncoalescedCache {
    tokens: Arc<Mutex<HashMap<String, String>>>,
    world: Arc<World>,
}

impl UncoalescedCache {
    async fn call(
        &self,
        mut request: http::Request<reqwest::Body>,
    ) -> Result<http::Response<Bytes>, BoxError> {
        let assertion = request
            .extensions()
            .get::<UserAssertion>()
            .cloned()
            .ok_or("no assertion")?;
        let principal = request
            .extensions()
            .get::<Principal>()
            .cloned()
            .ok_or("no principal")?;
        let cached = self
            .tokens
            .lock()
            .unwrap()
            .get(assertion.secret().expose())
            .cloned();
        let token = match cached {
            Some(token) => token,
            None => {
                let fresh = self.world.exchanger().token(&principal, &assertion).await?;
                let token = fresh.access_token.expose().to_owned();
                self.tokens
                    .lock()
                    .unwrap()
                    .insert(assertion.secret().expose().to_owned(), token.clone());
                token
            }
        };
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        Ok(self.world.transport.clone().oneshot(request).await?)
    }
}

async fn one_call(
    strategy: &str,
    shared: &Client,
    cache: &UncoalescedCache,
    world: &World,
    request: http::Request<reqwest::Body>,
) -> Result<http::Response<Bytes>, BoxError> {
    match strategy {
        "tower-mcp-auth" => shared.clone().oneshot(request).await,
        "per-request" => world.layered(world.exchanger()).oneshot(request).await,
        _ => cache.call(request).await,
    }
}

struct WaveResult {
    exchanges: u64,
    ok: usize,
    calls: usize,
    p50: Duration,
    p99: Duration,
}

async fn wave(
    strategy: &'static str,
    world: &Arc<World>,
    shared: &Client,
    cache: &UncoalescedCache,
    assertions: &[UserAssertion],
    per_user: usize,
) -> WaveResult {
    let before = world.auth.stats().obo_exchanges;
    let calls = assertions.len() * per_user;
    let barrier = Arc::new(tokio::sync::Barrier::new(calls));
    let mut tasks = Vec::with_capacity(calls);
    for (user, assertion) in assertions.iter().enumerate() {
        for _ in 0..per_user {
            let (world, shared, cache, barrier, assertion) = (
                world.clone(),
                shared.clone(),
                cache.clone(),
                barrier.clone(),
                assertion.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut request =
                    jsonrpc_request(&world.mcp.url(), 1, "tools/call", json!({"name": "whoami"}));
                request
                    .extensions_mut()
                    .insert(Principal::new("acme", format!("user{user}")));
                request.extensions_mut().insert(assertion);
                barrier.wait().await;
                let started = Instant::now();
                let result = one_call(strategy, &shared, &cache, &world, request).await;
                let ok = matches!(&result, Ok(r) if r.status().is_success());
                (ok, started.elapsed())
            }));
        }
    }
    let mut latencies = Vec::with_capacity(calls);
    let mut ok = 0;
    for task in tasks {
        let (success, elapsed) = task.await.expect("task");
        ok += usize::from(success);
        latencies.push(elapsed);
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    WaveResult {
        exchanges: world.auth.stats().obo_exchanges - before,
        ok,
        calls,
        p50: at(0.50),
        p99: at(0.99),
    }
}

#[tokio::main]
async fn main() {
    println!(
        "{:<22} {:<24} {:<18} {:>9} {:>11} {:>9} {:>9}",
        "users x calls/user", "strategy", "wave", "exchanges", "ok", "p50", "p99"
    );
    let mut violations = Vec::new();
    for (users, per_user) in [(1, 64), (16, 32), (64, 8)] {
        for strategy in STRATEGIES {
            let auth = TestAuthServer::start().await.expect("auth server");
            auth.register_client(CLIENT, Some(SECRET));
            auth.set_latency(Duration::from_millis(20));
            auth.set_access_token_lifetime(Duration::from_secs(31));
            let mcp = TestMcpServer::start(&auth).await.expect("MCP server");
            let config = OboConfig::new(
                auth.token_endpoint().parse().expect("URL"),
                CLIENT,
                ClientAuth::SecretBasic(Secret::new(SECRET)),
                OboGrant::EntraOnBehalfOf,
            )
            .with_scopes(["mcp.tools"]);
            let assertions: Vec<_> = (0..users)
                .map(|u| {
                    UserAssertion::new(auth.user_assertion(
                        &format!("user{u}"),
                        CLIENT,
                        Duration::from_secs(3600),
                    ))
                })
                .collect();
            let world = Arc::new(World {
                auth,
                mcp,
                config,
                idp_http: AuthHttpClient::reqwest(),
                transport: ReqwestTransport::new(),
            });
            let shared = world.layered(world.exchanger());
            let cache = UncoalescedCache {
                tokens: Arc::default(),
                world: world.clone(),
            };
            for (name, pause) in [
                ("cold", Duration::ZERO),
                ("warm", Duration::ZERO),
                ("after lifetime", Duration::from_millis(1200)),
            ] {
                tokio::time::sleep(pause).await;
                if name == "after lifetime" {
                    // The cache-no-single-flight model has no expiry of its own.
                    cache.tokens.lock().unwrap().clear();
                }
                let r = wave(strategy, &world, &shared, &cache, &assertions, per_user).await;
                println!(
                    "{:<22} {:<24} {:<18} {:>9} {:>11} {:>9.1?} {:>9.1?}",
                    format!("{users} x {per_user}"),
                    strategy,
                    name,
                    r.exchanges,
                    format!("{}/{}", r.ok, r.calls),
                    r.p50,
                    r.p99
                );
                if strategy == "tower-mcp-auth" {
                    let expected = if name == "warm" { 0 } else { users as u64 };
                    if r.exchanges != expected || r.ok != r.calls {
                        violations.push(format!(
                            "{users} x {per_user} {name}: {} exchanges (expected {expected}), {}/{} ok",
                            r.exchanges, r.ok, r.calls
                        ));
                    }
                }
            }
        }
    }
    if !violations.is_empty() {
        eprintln!("tower-mcp-auth broke one exchange per (user, scope) per lifetime:");
        for v in &violations {
            eprintln!("  {v}");
        }
        std::process::exit(1);
    }
}
