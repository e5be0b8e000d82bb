//! Flows and client registrations shared by replicas (SqliteStore file, real
//! redis-server): a flow started on replica A is completed through the callback on
//! replica B and wakes A's waiting request; one registration serves every replica; a
//! pending flow and a registration survive a restart of every process.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::RedisServer;
use serde_json::json;
use tower::{Layer, ServiceExt};
use tower_mcp_auth::store::{CredentialStore, RedisStore, SharedRecords, SqliteStore};
use tower_mcp_auth::testing::{
    HeadlessBrowser, ReqwestTransport, TestAuthServer, TestMcpServer, jsonrpc_request,
};
use tower_mcp_auth::{
    Authorizer, OAuthRetryLayer, Principal, RefreshCoordinator, SilentRefreshLayer, UrlPolicy,
    layer::oauth_retry::AuthorizationPrompt, oauth::AuthorizationCause, oauth::FlowOutcome,
};

/// A store both credentials and records live in.
trait Shared: CredentialStore + SharedRecords {}
impl<T: CredentialStore + SharedRecords> Shared for T {}

fn sqlite(name: &str) -> impl Fn() -> Arc<dyn Shared> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("shared-flows");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}-{}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    move || Arc::new(SqliteStore::open(&path).unwrap())
}

fn redis(server: &RedisServer) -> impl Fn() -> Arc<dyn Shared> {
    let url = server.url();
    move || Arc::new(RedisStore::builder(url.as_str()).build().unwrap())
}

/// A replica: its own store handle (connection), authorizer and client stack.
fn authorizer(mcp: &TestMcpServer, store: Arc<dyn Shared>) -> Authorizer {
    let credentials: Arc<dyn CredentialStore> = store.clone() as Arc<dyn CredentialStore>;
    let records: Arc<dyn SharedRecords> = store as Arc<dyn SharedRecords>;
    Authorizer::builder(
        mcp.url(),
        credentials,
        "http://127.0.0.1:1/oauth/callback".parse().unwrap(),
    )
    .url_policy(UrlPolicy::default().allow_loopback_http())
    .shared_state(records)
    .build()
    .unwrap()
}

async fn flow_on_one_replica_completes_on_another(open: impl Fn() -> Arc<dyn Shared>) {
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let (store_a, store_b) = (open(), open());
    let (a, b) = (authorizer(&mcp, store_a.clone()), authorizer(&mcp, store_b));

    // Replica A's request waits; its handler sends the user's browser to B's callback.
    let browser_at_b = HeadlessBrowser::new(b.completer());
    let handler = move |prompt: AuthorizationPrompt| {
        let browser = browser_at_b.clone();
        async move { browser.visit(prompt.url()).await }
    };
    let client = OAuthRetryLayer::wait(a.clone(), handler)
        .with_wait_timeout(Duration::from_secs(20))
        .layer(
            SilentRefreshLayer::new(
                RefreshCoordinator::new(store_a as Arc<dyn CredentialStore>),
                a.bindings(),
            )
            .layer(ReqwestTransport::new()),
        );
    let mut request = jsonrpc_request(&mcp.url(), 1, "tools/list", json!({}));
    request
        .extensions_mut()
        .insert(Principal::new("acme", "alice"));
    let response = client.oneshot(request).await.unwrap();
    assert!(response.status().is_success());
    let stats = auth.stats();
    assert_eq!(stats.code_exchanges, 1, "B exchanged the code");
    assert_eq!(stats.registrations, 1, "one client for both replicas");

    // B starting a flow for another user reuses the same registration, and joins
    // nothing of alice's.
    let bob = b
        .start(
            &Principal::new("acme", "bob"),
            &AuthorizationCause::default(),
        )
        .await
        .unwrap();
    assert!(!bob.joined());
    assert_eq!(auth.stats().registrations, 1);
}

async fn pending_flows_and_registrations_survive_a_restart(open: impl Fn() -> Arc<dyn Shared>) {
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let carol = Principal::new("acme", "carol");
    let url = {
        let before = authorizer(&mcp, open());
        let flow = before
            .start(&carol, &AuthorizationCause::default())
            .await
            .unwrap();
        flow.pending().browser_url().clone()
        // Every process of the app ends here.
    };
    let after = authorizer(&mcp, open());
    // A second start after the restart joins the flow that was pending.
    let joined = after
        .start(&carol, &AuthorizationCause::default())
        .await
        .unwrap();
    assert!(joined.joined(), "the pending flow survived");
    assert_eq!(joined.pending().browser_url(), &url);
    HeadlessBrowser::new(after.completer())
        .visit(&url)
        .await
        .unwrap();
    assert!(matches!(
        joined.outcome().await,
        Some(FlowOutcome::Completed(_))
    ));
    assert_eq!(
        auth.stats().registrations,
        1,
        "the registration survived too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_flow_started_on_one_replica_completes_on_another() {
    flow_on_one_replica_completes_on_another(sqlite("across")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_flow_started_on_one_replica_completes_on_another() {
    let server = RedisServer::start();
    flow_on_one_replica_completes_on_another(redis(&server)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_pending_flows_and_registrations_survive_a_restart() {
    pending_flows_and_registrations_survive_a_restart(sqlite("restart")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_pending_flows_and_registrations_survive_a_restart() {
    let server = RedisServer::start();
    pending_flows_and_registrations_survive_a_restart(redis(&server)).await;
}

/// The flow's request waits in another OS process (`examples/login_worker.rs`); this
/// process's callback completes it and the other process's request finishes.
async fn a_flow_waiting_in_another_process_completes_here(
    store: &str,
    open: impl Fn() -> Arc<dyn Shared>,
) {
    use tokio::io::AsyncBufReadExt;
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let here = authorizer(&mcp, open());
    let worker = {
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().unwrap().parent().unwrap().join("examples");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let built = std::process::Command::new(cargo)
            .args(["build", "--example", "login_worker", "--all-features"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(built.success());
        dir.join("login_worker")
    };
    let mut child = tokio::process::Command::new(worker)
        .args([
            store,
            &mcp.url(),
            "http://127.0.0.1:1/oauth/callback",
            "acme",
            "dora",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the other process asks for a login")
            .unwrap()
            .expect("a line");
        if let Some(url) = line.strip_prefix("url=") {
            break url.parse::<url::Url>().unwrap();
        }
    };
    // The user's browser lands on this process's callback.
    HeadlessBrowser::new(here.completer())
        .visit(&url)
        .await
        .unwrap();
    let done = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the other process's request finishes")
        .unwrap();
    assert_eq!(done.as_deref(), Some("ok=1"));
    assert!(child.wait().await.unwrap().success());
    assert_eq!(auth.stats().code_exchanges, 1);
    assert_eq!(
        auth.stats().registrations,
        1,
        "one registration for both processes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_flow_waiting_in_another_process_completes_here() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("shared-flows");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("processes-{}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let open = {
        let path = path.clone();
        move || -> Arc<dyn Shared> { Arc::new(SqliteStore::open(&path).unwrap()) }
    };
    a_flow_waiting_in_another_process_completes_here(path.to_str().unwrap(), open).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_flow_waiting_in_another_process_completes_here() {
    let server = RedisServer::start();
    a_flow_waiting_in_another_process_completes_here(&server.url(), redis(&server)).await;
}

/// Shared records that cannot be reached: a new flow still works in its own process
/// (started, claimed, completed), instead of failing every callback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_records_leave_flows_working_in_their_process() {
    use tower_mcp_auth::{
        AuthKey, ServerBinding, oauth::AuthorizationRequest, oauth::FlowStore, store::Generation,
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // nothing listens there once the listener is dropped
    let records = Arc::new(
        RedisStore::builder(format!("redis://127.0.0.1:{port}/0"))
            .timeout(Duration::from_millis(200))
            .build()
            .unwrap(),
    );
    let flows = FlowStore::shared(records);
    let binding =
        ServerBinding::public_client("https://mcp.example/mcp", "https://as.example/token", "c")
            .unwrap();
    let key = AuthKey::new(&Principal::new("acme", "erin"), binding.id());
    let flow = flows
        .start_or_join(
            &key,
            AuthorizationRequest::new(
                binding,
                "https://as.example/authorize".parse().unwrap(),
                "https://app.example/cb".parse().unwrap(),
            ),
        )
        .await;
    let state = flow.pending().state.expose().to_owned();
    assert!(flows.claim(&state).await.is_some(), "claimed locally");
    assert!(
        flows
            .complete(&state, FlowOutcome::Completed(Generation(1)))
            .await
    );
    assert_eq!(
        flow.outcome().await,
        Some(FlowOutcome::Completed(Generation(1)))
    );
}

/// Regression (found through the gateway): after a restart the tenant's binding slot is
/// empty, so the first request went out without the stored token, came back 401, and
/// the return-early layer handed out a new sign-in link although the store held usable
/// credentials. Now the 401 restores the binding from the stored registration and the
/// request is replayed with the stored token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_stored_credentials_serve_the_first_request() {
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let open = sqlite("restart-credentials");
    let dave = Principal::new("acme", "dave");
    let stack = |authorizer: &Authorizer, store: Arc<dyn Shared>| {
        let credentials: Arc<dyn CredentialStore> = store as Arc<dyn CredentialStore>;
        OAuthRetryLayer::return_early(authorizer.clone()).layer(
            SilentRefreshLayer::new(RefreshCoordinator::new(credentials), authorizer.bindings())
                .layer(ReqwestTransport::new()),
        )
    };
    let call = |principal: &Principal| {
        let mut request = jsonrpc_request(
            &mcp.url(),
            1,
            "tools/call",
            json!({"name": "whoami", "arguments": {}}),
        );
        request.extensions_mut().insert(principal.clone());
        request
    };
    {
        // Before the restart: Dave signs in.
        let store = open();
        let before = authorizer(&mcp, store.clone());
        let flow = before
            .start(&dave, &AuthorizationCause::default())
            .await
            .unwrap();
        HeadlessBrowser::new(before.completer())
            .visit(flow.pending().browser_url())
            .await
            .unwrap();
        let response = stack(&before, store).oneshot(call(&dave)).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(auth.stats().code_exchanges, 1);
    // Every process restarts: a new authorizer and stack over the same file.
    let store = open();
    let after = authorizer(&mcp, store.clone());
    assert!(
        after.bindings().get("acme").is_none(),
        "nothing in memory yet"
    );
    let response = stack(&after, store)
        .oneshot(call(&dave))
        .await
        .expect("served with the stored credentials, not a new sign-in link");
    assert_eq!(response.status(), 200);
    assert_eq!(auth.stats().code_exchanges, 1, "no new sign-in");
    assert_eq!(auth.stats().registrations, 1, "no new registration");
}

/// A flow another process has claimed (its code is being exchanged) is joined, not
/// replaced: a process arriving in that moment waits for the outcome instead of asking
/// the user who just consented to consent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_flow_of_another_process_is_joined() {
    use tower_mcp_auth::{
        AuthKey, ServerBinding, oauth::AuthorizationRequest, oauth::FlowStore, store::Generation,
    };
    let open = sqlite("claimed-join");
    let (here, there) = (FlowStore::shared(open()), FlowStore::shared(open()));
    let binding =
        ServerBinding::public_client("https://mcp.example/mcp", "https://as.example/token", "c")
            .unwrap();
    let key = AuthKey::new(&Principal::new("acme", "gina"), binding.id());
    let request = || {
        AuthorizationRequest::new(
            binding.clone(),
            "https://as.example/authorize".parse().unwrap(),
            "http://127.0.0.1:1/cb".parse().unwrap(),
        )
    };
    let first = there.start_or_join(&key, request()).await;
    let state = first.pending().state.expose().to_owned();
    assert!(
        there.claim(&state).await.is_some(),
        "the callback claimed it"
    );

    let joined = here.start_or_join(&key, request()).await;
    assert!(joined.joined(), "the claimed flow is joined");
    assert_eq!(joined.pending().state.expose(), state);
    assert!(
        there
            .complete(&state, FlowOutcome::Completed(Generation(3)))
            .await
    );
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), joined.outcome())
            .await
            .unwrap(),
        Some(FlowOutcome::Completed(Generation(3)))
    );
}

/// Processes that start a flow for one key at the same moment (here 8 stores on one
/// SQLite file, after the key's previous flow failed) end up in one flow: one starts
/// it, the others join. Before, a process could replace the flow another had just
/// named, and each started its own sign-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_starting_at_once_share_one_flow() {
    use tower_mcp_auth::{AuthKey, ServerBinding, oauth::AuthorizationRequest, oauth::FlowStore};
    let open = sqlite("concurrent-starts");
    let binding =
        ServerBinding::public_client("https://mcp.example/mcp", "https://as.example/token", "c")
            .unwrap();
    let key = AuthKey::new(&Principal::new("acme", "hana"), binding.id());
    let request = move || {
        AuthorizationRequest::new(
            binding.clone(),
            "https://as.example/authorize".parse().unwrap(),
            "http://127.0.0.1:1/cb".parse().unwrap(),
        )
    };
    for round in 0..5 {
        let stores: Vec<FlowStore> = (0..8).map(|_| FlowStore::shared(open())).collect();
        let failed = stores[0].start_or_join(&key, request()).await;
        assert!(
            stores[0]
                .complete(
                    failed.pending().state.expose(),
                    FlowOutcome::Failed("its process exited".into())
                )
                .await
        );
        let barrier = Arc::new(tokio::sync::Barrier::new(stores.len()));
        let starts = stores.into_iter().map(|store| {
            let (barrier, key, request) = (barrier.clone(), key.clone(), request.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let flow = store.start_or_join(&key, request()).await;
                (flow.joined(), flow.pending().state.expose().to_owned())
            })
        });
        let flows: Vec<(bool, String)> = futures::future::join_all(starts)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let started = flows.iter().filter(|(joined, _)| !joined).count();
        assert_eq!(started, 1, "round {round}: {flows:?}");
        assert!(
            flows.iter().all(|(_, state)| *state == flows[0].1),
            "round {round}: one flow for all"
        );
    }
}
