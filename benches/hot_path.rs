//! Cached-token overhead of `SilentRefreshLayer` (alone, and under `OAuthRetryLayer`)
//! against the bare inner service and against a plain `RwLock<HashMap>` header
//! injector, with 1 and 100k keys.
//!
//! Run: `cargo bench --bench hot_path`.

use std::collections::HashMap;
use std::future::{Ready, ready};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt};
use tower_mcp_auth::store::{CredentialStore, MemoryStore};
use tower_mcp_auth::{
    AuthKey, Authorizer, OAuthRetryLayer, Principal, RefreshCoordinator, Secret, ServerBinding,
    SilentRefreshLayer, TokenSet,
};

const URL: &str = "https://mcp.example.com/mcp";

/// The inner service: answers at once, so only the layer's cost is measured.
#[derive(Clone)]
struct Instant200;

impl<B: Send + 'static> Service<Request<B>> for Instant200 {
    type Response = Response<()>;
    type Error = tower::BoxError;
    type Future = Ready<Result<Response<()>, tower::BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        std::hint::black_box(request);
        ready(Ok(Response::new(())))
    }
}

/// The simplest correct-looking alternative: a header per principal behind a lock.
#[derive(Clone)]
struct RwLockInjector {
    tokens: Arc<RwLock<HashMap<Principal, HeaderValue>>>,
    inner: Instant200,
}

impl Service<Request<Full<Bytes>>> for RwLockInjector {
    type Response = Response<()>;
    type Error = tower::BoxError;
    type Future = Ready<Result<Response<()>, tower::BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<Request<Full<Bytes>>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut request: Request<Full<Bytes>>) -> Self::Future {
        let header = request
            .extensions()
            .get::<Principal>()
            .and_then(|p| self.tokens.read().unwrap().get(p).cloned());
        if let Some(header) = header {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, header);
        }
        self.inner.call(request)
    }
}

fn principals(n: usize) -> Vec<Principal> {
    (0..n)
        .map(|i| Principal::new("tenant", format!("user-{i}")))
        .collect()
}

fn request(principal: &Principal) -> Request<Full<Bytes>> {
    let mut request = Request::post(URL)
        .body(Full::new(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        )))
        .unwrap();
    request.extensions_mut().insert(principal.clone());
    request
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let binding =
        ServerBinding::public_client(URL, "https://auth.example.com/token", "client").unwrap();
    let mut group = c.benchmark_group("hot_path");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);

    for keys in [1usize, 100_000] {
        let users = Arc::new(principals(keys));
        let store = Arc::new(MemoryStore::new());
        let mut plain = HashMap::new();
        runtime.block_on(async {
            for user in users.iter() {
                let tokens = TokenSet::new(Secret::new(format!("token-of-{}", user.subject())))
                    .with_expires_in(Duration::from_secs(3600));
                let key = AuthKey::new(user, binding.id());
                store.compare_and_swap(&key, None, tokens).await.unwrap();
                let mut header =
                    HeaderValue::from_str(&format!("Bearer token-of-{}", user.subject())).unwrap();
                header.set_sensitive(true);
                plain.insert(user.clone(), header);
            }
        });
        let layered =
            SilentRefreshLayer::new(RefreshCoordinator::new(store.clone()), binding.clone())
                .layer(Instant200);
        // The interactive stack on its cached path: the client is registered for the
        // tenant, every user holds a token.
        let authorizer = Authorizer::builder(
            URL,
            store.clone(),
            "https://app.example.com/callback".parse().unwrap(),
        )
        .build()
        .unwrap();
        authorizer
            .bindings()
            .set("tenant", binding.clone())
            .expect("an empty slot has room");
        let full_stack = OAuthRetryLayer::return_early(authorizer.clone()).layer(
            SilentRefreshLayer::new(RefreshCoordinator::new(store), authorizer.bindings())
                .layer(Instant200),
        );
        let injector = RwLockInjector {
            tokens: Arc::new(RwLock::new(plain)),
            inner: Instant200,
        };
        let next = Arc::new(AtomicUsize::new(0));
        let pick = {
            let (users, next) = (users.clone(), next.clone());
            move || users[next.fetch_add(1, Ordering::Relaxed) % users.len()].clone()
        };

        paired_ratios(&runtime, keys, &pick, (&injector, &layered, &full_stack));

        group.bench_function(BenchmarkId::new("bare inner service", keys), |b| {
            let pick = pick.clone();
            b.to_async(&runtime)
                .iter(|| Instant200.oneshot(request(&pick())));
        });
        group.bench_function(BenchmarkId::new("RwLock<HashMap> injector", keys), |b| {
            let pick = pick.clone();
            b.to_async(&runtime)
                .iter(|| injector.clone().oneshot(request(&pick())));
        });
        group.bench_function(BenchmarkId::new("SilentRefreshLayer", keys), |b| {
            let pick = pick.clone();
            b.to_async(&runtime)
                .iter(|| layered.clone().oneshot(request(&pick())));
        });
        group.bench_function(
            BenchmarkId::new("OAuthRetryLayer + SilentRefreshLayer", keys),
            |b| {
                let pick = pick.clone();
                b.to_async(&runtime)
                    .iter(|| full_stack.clone().oneshot(request(&pick())));
            },
        );
    }
    group.finish();
}

/// Mean time per request over one batch of `batch` requests through `service`.
fn time_batch<S>(
    runtime: &tokio::runtime::Runtime,
    service: &S,
    pick: &(impl Fn() -> Principal + Sync),
    batch: u32,
) -> f64
where
    S: Service<Request<Full<Bytes>>, Response = Response<()>> + Clone,
    S::Error: std::fmt::Debug,
{
    let start = std::time::Instant::now();
    runtime.block_on(async {
        for _ in 0..batch {
            let response = service.clone().oneshot(request(&pick())).await.unwrap();
            std::hint::black_box(response);
        }
    });
    start.elapsed().as_nanos() as f64 / f64::from(batch)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The goal of the hot path is a ratio to the injector, and this machine's speed drifts
/// by ±15% within a minute: criterion's runs, one variant after another, put that drift
/// into the ratio. Here the three variants take turns, batch by batch, and the ratio is
/// taken within each round (the injector's time over the variant's: a throughput ratio,
/// 1.0 = as fast as the injector); the median over the rounds is printed.
fn paired_ratios<I, L, T>(
    runtime: &tokio::runtime::Runtime,
    keys: usize,
    pick: &(impl Fn() -> Principal + Sync),
    (injector, layer, stack): (&I, &L, &T),
) where
    I: Service<Request<Full<Bytes>>, Response = Response<()>> + Clone,
    I::Error: std::fmt::Debug,
    L: Service<Request<Full<Bytes>>, Response = Response<()>> + Clone,
    L::Error: std::fmt::Debug,
    T: Service<Request<Full<Bytes>>, Response = Response<()>> + Clone,
    T::Error: std::fmt::Debug,
{
    // `cargo bench -- --test` (the test command) only checks that this runs.
    let quick = std::env::args().any(|arg| arg == "--test");
    let (rounds, batch) = if quick { (3, 200) } else { (41, 20_000) };
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    let mut ratios = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        let injector_ns = time_batch(runtime, injector, pick, batch);
        let layer_ns = time_batch(runtime, layer, pick, batch);
        let stack_ns = time_batch(runtime, stack, pick, batch);
        ratios[0].push(injector_ns / layer_ns);
        ratios[1].push(injector_ns / stack_ns);
        for (series, ns) in times.iter_mut().zip([injector_ns, layer_ns, stack_ns]) {
            series.push(ns);
        }
    }
    let [injector_ns, layer_ns, stack_ns] = times.map(|mut series| median(&mut series));
    let [layer_ratio, stack_ratio] = ratios.map(|mut series| median(&mut series));
    println!(
        "hot_path/paired/{keys}: {rounds} rounds of {batch} requests, medians: \
         injector {injector_ns:.0} ns, SilentRefreshLayer {layer_ns:.0} ns, \
         OAuthRetryLayer + SilentRefreshLayer {stack_ns:.0} ns; \
         throughput ratios to the injector: layer {layer_ratio:.2} (goal 0.70), \
         stack {stack_ratio:.2} (goal 0.60)"
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
