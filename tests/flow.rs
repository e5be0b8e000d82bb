//! Flow state: persisted PENDING before the URL is handed out, joined, completed once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tower_mcp_auth::{
    AuthKey, Principal, ServerBinding, oauth::AuthorizationRequest, oauth::FlowOutcome,
    oauth::FlowStore, store::Generation,
};

fn key(tenant: &str, user: &str) -> AuthKey {
    let binding = ServerBinding::public_client(
        "https://mcp.example.com/mcp",
        "https://auth.example.com/token",
        "c",
    )
    .unwrap();
    AuthKey::new(&Principal::new(tenant, user), binding.id())
}

fn request() -> AuthorizationRequest {
    let binding = ServerBinding::public_client(
        "https://mcp.example.com/mcp",
        "https://auth.example.com/token",
        "client-1",
    )
    .unwrap();
    AuthorizationRequest::new(
        binding,
        "https://auth.example.com/authorize".parse().unwrap(),
        "http://127.0.0.1:8765/oauth/callback".parse().unwrap(),
    )
    .with_scopes(["tools.read", "offline_access"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_callback_arriving_the_instant_the_url_is_emitted_finds_the_pending_flow() {
    let flows = FlowStore::new();
    for i in 0..200 {
        let (emit, mut emitted) = tokio::sync::mpsc::unbounded_channel();
        let starter = {
            let flows = flows.clone();
            tokio::spawn(async move {
                let flow = flows
                    .start_or_join(&key("acme", &format!("user-{i}")), request())
                    .await;
                emit.send(flow.pending().state.expose().to_owned()).unwrap();
            })
        };
        // The "callback" runs on another worker as soon as the URL is out.
        let state = emitted.recv().await.unwrap();
        let (found_key, _) = flows
            .find_by_state(&state)
            .await
            .expect("PENDING flow stored before emission");
        assert_eq!(found_key, key("acme", &format!("user-{i}")));
        starter.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_starts_for_one_key_join_one_flow() {
    let flows = FlowStore::new();
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (flows, barrier) = (flows.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let flow = flows.start_or_join(&key("acme", "alice"), request()).await;
                (flow.pending().authorization_url.to_string(), flow.joined())
            })
        })
        .collect();
    let mut urls = HashSet::new();
    let mut joined = 0;
    for task in tasks {
        let (url, was_joined) = task.await.unwrap();
        urls.insert(url);
        joined += usize::from(was_joined);
    }
    assert_eq!(urls.len(), 1, "everyone got the same URL");
    assert_eq!(joined, 63);

    let other_tenant = flows
        .start_or_join(&key("globex", "alice"), request())
        .await;
    assert!(!other_tenant.joined(), "tenants never share a flow");
    assert!(!urls.contains(&other_tenant.pending().authorization_url.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_is_first_wins_and_a_new_start_begins_a_new_flow() {
    let flows = FlowStore::new();
    let flow = flows.start_or_join(&key("acme", "alice"), request()).await;
    let state = flow.pending().state.expose().to_owned();
    let waiter = tokio::spawn({
        let flow = flow.clone();
        async move { flow.outcome().await }
    });
    assert!(
        flows
            .complete(&state, FlowOutcome::Completed(Generation(41)))
            .await
    );
    assert!(
        !flows
            .complete(&state, FlowOutcome::Failed("access_denied".into()))
            .await
    );
    assert_eq!(
        waiter.await.unwrap(),
        Some(FlowOutcome::Completed(Generation(41)))
    );
    assert!(
        flows.find_by_state(&state).await.is_none(),
        "a completed flow takes no more callbacks"
    );
    assert!(
        !flows
            .complete("forged-state", FlowOutcome::Completed(Generation(1)))
            .await
    );

    let next = flows.start_or_join(&key("acme", "alice"), request()).await;
    assert!(!next.joined());
    assert_ne!(next.pending().state, flow.pending().state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callbacks_claim_a_flow_once() {
    let flows = FlowStore::new();
    let flow = flows.start_or_join(&key("acme", "alice"), request()).await;
    let state = flow.pending().state.expose().to_owned();
    let claims: Vec<_> = (0..32)
        .map(|_| {
            let (flows, state) = (flows.clone(), state.clone());
            tokio::spawn(async move { flows.claim(&state).await.is_some() })
        })
        .collect();
    let mut won = 0;
    for claim in claims {
        won += usize::from(claim.await.unwrap());
    }
    assert_eq!(won, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_flows_are_gone() {
    let flows = FlowStore::with_ttl(Duration::from_millis(200));
    let flow = flows.start_or_join(&key("acme", "alice"), request()).await;
    let state = flow.pending().state.expose().to_owned();
    assert_eq!(
        flow.outcome().await,
        None,
        "the wait ends when the flow expires"
    );
    assert!(flows.find_by_state(&state).await.is_none());
    assert!(
        !flows
            .complete(&state, FlowOutcome::Completed(Generation(1)))
            .await
    );
}

#[tokio::test]
async fn the_authorization_url_carries_pkce_s256_state_resource_and_scopes() {
    let flows = FlowStore::new();
    let flow = flows.start_or_join(&key("acme", "alice"), request()).await;
    let pending = flow.pending();
    let params: std::collections::HashMap<String, String> = pending
        .authorization_url
        .query_pairs()
        .into_owned()
        .collect();
    assert_eq!(params["response_type"], "code");
    assert_eq!(params["client_id"], "client-1");
    assert_eq!(
        params["redirect_uri"],
        "http://127.0.0.1:8765/oauth/callback"
    );
    assert_eq!(params["resource"], "https://mcp.example.com/mcp");
    assert_eq!(params["scope"], "tools.read offline_access");
    assert_eq!(params["state"], pending.state.expose());
    assert_eq!(params["code_challenge_method"], "S256");
    let expected =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            pending.pkce_verifier.expose().as_bytes(),
        ));
    assert_eq!(params["code_challenge"], expected);
    let debug = format!("{flow:?}");
    assert!(
        !debug.contains(pending.pkce_verifier.expose()) && !debug.contains(pending.state.expose())
    );
}
