//! SilentRefreshLayer and the refresh coordinator against real loopback servers.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{CLIENT_ID, Harness, assert_all_ok, call_whoami, storm};
use serde_json::json;
use tower::ServiceExt;
use tower_mcp_auth::store::{CredentialStore, Swap};
use tower_mcp_auth::testing::{Fault, jsonrpc_request};
use tower_mcp_auth::{Error, Principal, ReauthReason, RefreshConfig, TransientReason};

fn alice() -> Principal {
    Principal::new("acme", "alice")
}

fn reauth_reason(result: &Result<String, tower::BoxError>) -> Option<ReauthReason> {
    match result.as_ref().err().and_then(|e| Error::find(e.as_ref())) {
        Some(Error::ReauthRequired { reason, .. }) => Some(reason.clone()),
        _ => None,
    }
}

fn transient_reason(result: &Result<String, tower::BoxError>) -> Option<TransientReason> {
    match result.as_ref().err().and_then(|e| Error::find(e.as_ref())) {
        Some(Error::Transient { reason, .. }) => Some(reason.clone()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_storm_of_512_makes_one_redemption() {
    let h = Harness::new(RefreshConfig::default()).await;
    h.login(&alice()).await;
    let expired = h.expire(&alice()).await;
    h.auth.set_latency(Duration::from_millis(50));

    let results = storm(&h, &alice(), 512).await;

    assert_all_ok(&results, "alice");
    let stats = h.auth.stats();
    assert_eq!(stats.refresh_requests, 1);
    assert_eq!(stats.invalid_grants, 0);
    assert_eq!(h.coordinator.stats().redemptions, 1);
    assert_eq!(h.mcp.stats().unauthorized, 0, "no expired token was sent");
    let stored = h.stored(&alice()).await.unwrap();
    assert!(stored.generation > expired.generation);
    assert_ne!(
        stored.refresh_token, expired.refresh_token,
        "the rotated refresh token was persisted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoked_token_storm_of_512_makes_one_redemption_and_late_401s_none() {
    let h = Harness::new(RefreshConfig::default()).await;
    let old = h.login(&alice()).await;
    assert_eq!(h.whoami(&alice()).await.unwrap(), "alice");
    h.auth.revoke_access_tokens("alice");
    h.auth.set_latency(Duration::from_millis(50));

    let results = storm(&h, &alice(), 512).await;

    assert_all_ok(&results, "alice");
    assert_eq!(h.auth.stats().refresh_requests, 1);
    assert_eq!(h.auth.stats().invalid_grants, 0);
    assert!(h.mcp.stats().unauthorized >= 1);

    // A 401 that arrives late, for the token of the old generation: replays with the
    // stored one, redeems nothing.
    let key = h.key(&alice());
    let binding = Arc::new(h.binding.clone());
    let replay_with = h
        .coordinator
        .refresh_rejected(&key, &binding, Some(old.generation))
        .await
        .unwrap();
    assert_eq!(
        Some(replay_with.generation),
        h.stored(&alice()).await.map(|t| t.generation)
    );
    assert_eq!(h.auth.stats().refresh_requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_and_timed_out_callers_do_not_cancel_or_repeat_the_redemption() {
    let h = Harness::new(RefreshConfig::default()).await;
    h.login(&alice()).await;
    let expired = h.expire(&alice()).await;
    h.auth.set_latency(Duration::from_millis(400));

    // The first caller leads the flight and gives up early; others are aborted.
    let leader = tokio::time::timeout(Duration::from_millis(50), h.whoami(&alice())).await;
    assert!(leader.is_err(), "the leader timed out");
    let aborted: Vec<_> = (0..32)
        .map(|_| {
            let (client, url) = (h.client.clone(), h.mcp.url());
            tokio::spawn(async move { call_whoami(client, &url, &alice()).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    aborted.iter().for_each(|task| task.abort());
    let timed_out = storm_with_timeout(&h, 32, Duration::from_millis(30)).await;
    assert!(timed_out.iter().all(|r| r.is_err()));

    // Later callers get the token the one redemption produced.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let later = storm(&h, &alice(), 64).await;
    assert!(later.iter().all(|r| r.as_deref().ok() == Some("alice")));
    assert_eq!(h.auth.stats().refresh_requests, 1);
    assert_eq!(h.auth.stats().invalid_grants, 0);
    assert!(h.stored(&alice()).await.unwrap().generation > expired.generation);
}

async fn storm_with_timeout(h: &Harness, n: usize, timeout: Duration) -> Vec<Result<(), ()>> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, url) = (h.client.clone(), h.mcp.url());
            tokio::spawn(async move {
                tokio::time::timeout(timeout, call_whoami(client, &url, &alice()))
                    .await
                    .map(|_| ())
                    .map_err(|_| ())
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hung_authorization_server_ends_at_the_timeout_and_keeps_credentials() {
    let timeout = Duration::from_millis(300);
    let h = Harness::new(RefreshConfig::default().with_timeout(timeout)).await;
    h.login(&alice()).await;
    let expired = h.expire(&alice()).await;
    h.auth.fail_always(Fault::Hang);

    let started = Instant::now();
    let result = h.whoami(&alice()).await;
    let waited = started.elapsed();

    assert!(
        matches!(transient_reason(&result), Some(TransientReason::Timeout(t)) if t == timeout),
        "{result:?}"
    );
    assert!(waited >= timeout && waited < timeout * 5, "{waited:?}");
    let kept = h.stored(&alice()).await.unwrap();
    assert_eq!(kept.generation, expired.generation);
    assert_eq!(kept.refresh_token, expired.refresh_token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_refresh_never_overwrites_a_newer_generation() {
    let h = Harness::new(RefreshConfig::default()).await;
    h.login(&alice()).await;
    h.expire(&alice()).await;
    h.auth.set_latency(Duration::from_millis(400));

    let pending = tokio::spawn({
        let (client, url) = (h.client.clone(), h.mcp.url());
        async move { call_whoami(client, &url, &alice()).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // An interactive login finishes while the refresh is still running.
    let newer = h.login(&alice()).await;

    assert_eq!(pending.await.unwrap().unwrap(), "alice");
    assert_eq!(
        h.auth.stats().refresh_successes,
        1,
        "the slow refresh did succeed"
    );
    let stored = h.stored(&alice()).await.unwrap();
    assert_eq!(
        stored.generation, newer.generation,
        "the newer login was kept"
    );
    assert_eq!(stored.access_token, newer.access_token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_authorization_server_gets_one_attempt_per_cooldown_window() {
    // Long enough that two 512-call waves fit inside it even on a loaded machine.
    let cooldown = Duration::from_secs(3);
    let h = Harness::new(RefreshConfig::default().with_cooldown(cooldown, Duration::from_secs(10)))
        .await;
    h.login(&alice()).await;
    let expired = h.expire(&alice()).await;
    h.auth.fail_always(Fault::ServerError);

    let wave = storm(&h, &alice(), 512).await;
    assert!(
        wave.iter().all(|r| matches!(
            transient_reason(r),
            Some(TransientReason::ServerError(500)) | Some(TransientReason::CoolingDown(_))
        )),
        "{:?}",
        wave.iter().find(|r| transient_reason(r).is_none())
    );
    assert_eq!(h.auth.stats().refresh_requests, 1);

    // Inside the window nothing reaches the authorization server.
    let second = storm(&h, &alice(), 512).await;
    let odd: Vec<_> = second
        .iter()
        .filter(|r| !matches!(transient_reason(r), Some(TransientReason::CoolingDown(_))))
        .collect();
    assert!(
        odd.is_empty(),
        "{} not cooling down, e.g. {:?}",
        odd.len(),
        odd.first()
    );
    assert_eq!(h.auth.stats().refresh_requests, 1);
    let kept = h.stored(&alice()).await.unwrap();
    assert_eq!(
        (kept.generation, &kept.refresh_token),
        (expired.generation, &expired.refresh_token)
    );

    // Once it heals and the window has passed, one redemption recovers everyone.
    h.auth.heal();
    tokio::time::sleep(cooldown).await;
    let recovered = storm(&h, &alice(), 512).await;
    assert!(recovered.iter().all(|r| r.as_deref().ok() == Some("alice")));
    assert_eq!(h.auth.stats().refresh_requests, 2);
    assert_eq!(h.auth.stats().invalid_grants, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limited_refresh_honours_retry_after() {
    let h = Harness::new(
        RefreshConfig::default().with_cooldown(Duration::from_millis(10), Duration::from_secs(60)),
    )
    .await;
    h.login(&alice()).await;
    h.expire(&alice()).await;
    h.auth.fail_always(Fault::TooManyRequests {
        retry_after_secs: 30,
    });

    let first = h.whoami(&alice()).await;
    assert!(
        matches!(transient_reason(&first), Some(TransientReason::RateLimited)),
        "{first:?}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = h.whoami(&alice()).await;
    match second.as_ref().err().and_then(|e| Error::find(e.as_ref())) {
        Some(Error::Transient {
            reason: TransientReason::CoolingDown(_),
            retry_after: Some(after),
            ..
        }) => {
            assert!(*after > Duration::from_secs(25), "{after:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.auth.stats().refresh_requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_grant_retires_the_refresh_token_and_surfaces_reauth_with_the_challenge() {
    let h = Harness::new(RefreshConfig::default()).await;
    h.login(&alice()).await;
    h.auth.revoke_access_tokens("alice");
    h.auth.fail_always(Fault::InvalidGrant);

    let result = h.whoami(&alice()).await;
    let error = result
        .as_ref()
        .err()
        .and_then(|e| Error::find(e.as_ref()))
        .expect("typed error");
    assert!(
        matches!(
            error,
            Error::ReauthRequired {
                reason: ReauthReason::InvalidGrant,
                ..
            }
        ),
        "{error:?}"
    );
    let challenge = error
        .bearer_challenge()
        .expect("the 401's Bearer challenge");
    assert_eq!(challenge.error.as_deref(), Some("invalid_token"));
    assert!(challenge.resource_metadata.is_some());
    assert!(
        h.stored(&alice()).await.unwrap().refresh_token.is_none(),
        "refresh token retired"
    );

    h.auth.heal();
    for _ in 0..10 {
        let again = h.whoami(&alice()).await;
        assert_eq!(reauth_reason(&again), Some(ReauthReason::NoRefreshToken));
    }
    assert_eq!(h.auth.stats().refresh_requests, 1, "no further redemptions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_rejection_keeps_tokens_and_requires_reauth() {
    let h = Harness::new(RefreshConfig::default()).await;
    let tokens = h.login(&alice()).await;
    h.auth.revoke_access_tokens("alice");
    h.auth.fail_always(Fault::InvalidClient);

    let result = h.whoami(&alice()).await;
    assert_eq!(
        reauth_reason(&result),
        Some(ReauthReason::ClientRejected {
            code: "invalid_client".into()
        })
    );
    assert_eq!(
        h.stored(&alice()).await.unwrap().refresh_token,
        tokens.refresh_token
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_with_the_same_user_and_server_never_share_tokens_or_flights() {
    let h = Harness::new(RefreshConfig::default()).await;
    let (acme, globex) = (
        Principal::new("acme", "alice"),
        Principal::new("globex", "alice"),
    );
    let acme_old = h.login(&acme).await;
    let globex_old = h.login(&globex).await;
    h.auth.revoke_access_tokens("alice");
    h.auth.set_latency(Duration::from_millis(50));

    let (a, b) = tokio::join!(storm(&h, &acme, 256), storm(&h, &globex, 256));

    assert!(a.iter().chain(&b).all(|r| r.is_ok()));
    assert_eq!(
        h.auth.stats().refresh_requests,
        2,
        "one redemption per tenant"
    );
    assert_eq!(h.auth.stats().invalid_grants, 0);
    let (acme_new, globex_new) = (
        h.stored(&acme).await.unwrap(),
        h.stored(&globex).await.unwrap(),
    );
    assert_ne!(acme_new.access_token, globex_new.access_token);
    assert_ne!(acme_new.access_token, acme_old.access_token);
    assert_ne!(globex_new.access_token, globex_old.access_token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refresh_ahead_keeps_a_steady_stream_unblocked() {
    let h = Harness::new(RefreshConfig::default()).await;
    h.auth.set_access_token_lifetime(Duration::from_secs(4));
    h.login(&alice()).await;

    let run = Duration::from_millis(7_000);
    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed() < run {
        assert_eq!(h.whoami(&alice()).await.unwrap(), "alice");
        calls += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let stats = h.coordinator.stats();
    assert_eq!(stats.blocked_waits, 0, "no request waited on a refresh");
    assert_eq!(h.mcp.stats().unauthorized, 0, "no expired token was sent");
    // Lifetime 4 s: the margin's 2 s floor plus 1 s skew is capped at half the
    // lifetime, so each token is refreshed 2 s after it was obtained (a second before it
    // counts as expired): near 2, 4 and 6 s of a 7 s run — one per token.
    assert!((3..=4).contains(&stats.background_refreshes), "{stats:?}");
    assert_eq!(stats.redemptions, stats.background_refreshes);
    assert_eq!(h.auth.stats().refresh_requests, stats.redemptions);
    assert!(calls > 50, "{calls}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_principal_is_not_sent() {
    let h = Harness::new(RefreshConfig::default()).await;
    let request = jsonrpc_request(&h.mcp.url(), 1, "tools/list", json!({}));
    let error = h.client.clone().oneshot(request).await.unwrap_err();
    assert!(matches!(
        Error::find(error.as_ref()),
        Some(Error::MissingPrincipal)
    ));
    assert_eq!(h.mcp.stats().requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credentials_surface_reauth_with_the_servers_challenge() {
    let h = Harness::new(RefreshConfig::default()).await;
    let result = h.whoami(&alice()).await;
    let error = result
        .as_ref()
        .err()
        .and_then(|e| Error::find(e.as_ref()))
        .unwrap();
    assert!(matches!(
        error,
        Error::ReauthRequired {
            reason: ReauthReason::NoCredentials,
            ..
        }
    ));
    assert!(
        error.www_authenticate()[0]
            .to_str()
            .unwrap()
            .contains("resource_metadata=")
    );
    assert_eq!(h.auth.stats().refresh_requests, 0);
}

/// Once the server's challenge is known, a caller without usable credentials (never
/// signed in, or the refresh token retired) gets `ReauthRequired` with that challenge
/// and nothing is sent; new credentials in the store are used at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_nothing_is_sent_once_the_challenge_is_known() {
    let h = Harness::new(RefreshConfig::default()).await;
    let reauth = |result: &Result<String, tower::BoxError>| {
        let error = result
            .as_ref()
            .err()
            .and_then(|e| Error::find(e.as_ref()))
            .cloned();
        match error {
            Some(error @ Error::ReauthRequired { .. }) => error,
            other => panic!("expected ReauthRequired, got {other:?}"),
        }
    };
    // The first call learns the challenge from the server's 401.
    reauth(&h.whoami(&alice()).await);
    assert_eq!(h.mcp.stats().requests, 1);
    for _ in 0..5 {
        let error = reauth(&h.whoami(&alice()).await);
        assert!(
            error.www_authenticate()[0]
                .to_str()
                .unwrap()
                .contains("resource_metadata=")
        );
    }
    assert_eq!(h.mcp.stats().requests, 1, "nothing sent without a token");
    // The challenge is Alice's: Bob, of the same tenant, asks the server himself.
    reauth(&h.whoami(&Principal::new("acme", "bob")).await);
    assert_eq!(h.mcp.stats().requests, 2);
    // Signed in (credentials written by another process, say): used at once.
    h.login(&alice()).await;
    assert!(h.whoami(&alice()).await.unwrap().contains("alice"));
    assert_eq!(h.mcp.stats().requests, 3);
}

/// A server that answers some requests without a token (here `tools/list`) and refuses
/// others: once it answered one, every request of its users goes out, a 401 or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_answers_without_a_token_always_gets_the_request() {
    use std::sync::atomic::{AtomicU64, Ordering};

    let h = Harness::new(RefreshConfig::default()).await;
    let received = Arc::new(AtomicU64::new(0));
    let counted = received.clone();
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::post(move |body: String| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                if body.contains("tools/list") {
                    let answer = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}"#;
                    return (http::StatusCode::OK, [("content-type", "application/json")], answer);
                }
                let challenge = "Bearer resource_metadata=\"http://127.0.0.1/.well-known/oauth-protected-resource\"";
                (http::StatusCode::UNAUTHORIZED, [("www-authenticate", challenge)], "")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let binding =
        tower_mcp_auth::ServerBinding::public_client(&url, &h.auth.token_endpoint(), CLIENT_ID)
            .unwrap();
    let client = tower::Layer::layer(
        &tower_mcp_auth::SilentRefreshLayer::new(h.coordinator.clone(), binding),
        tower_mcp_auth::testing::ReqwestTransport::new(),
    );
    let call = |method: &'static str| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let mut request = jsonrpc_request(&url, 1, method, json!({}));
            request.extensions_mut().insert(alice());
            client.oneshot(request).await
        }
    };
    assert_eq!(call("tools/list").await.unwrap().status(), 200);
    for _ in 0..3 {
        call("tools/call").await.unwrap_err();
    }
    assert_eq!(call("tools/list").await.unwrap().status(), 200);
    assert_eq!(received.load(Ordering::SeqCst), 5, "every request went out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_go_only_to_their_resource() {
    let h = Harness::new(RefreshConfig::default()).await;
    h.login(&alice()).await;
    // Same host and port, a path outside the resource: no token attached (the fixture
    // answers 404 for unknown paths; what matters is what it received).
    let other = h.mcp.url().replace("/mcp", "/other");
    let mut request = jsonrpc_request(&other, 1, "tools/list", json!({}));
    request.extensions_mut().insert(alice());
    let response = h.client.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(h.mcp.seen_tokens().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_request_carries_resource_scope_and_client_authentication() {
    let h = Harness::new(RefreshConfig::default()).await;
    h.login(&alice()).await;
    h.expire(&alice()).await;
    assert_eq!(h.whoami(&alice()).await.unwrap(), "alice");
    let recorded = h.auth.recorded_requests();
    assert_eq!(recorded.len(), 1);
    let request = &recorded[0];
    assert_eq!(request.grant_type, "refresh_token");
    assert_eq!(request.resource.as_deref(), Some(h.mcp.url().as_str()));
    assert_eq!(request.scope.as_deref(), Some("tools"));
    assert_eq!(
        (request.client_id.as_deref(), request.client_auth),
        (Some(CLIENT_ID), "none")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confidential_clients_authenticate_basic_or_post() {
    use tower::Layer;
    use tower_mcp_auth::testing::ReqwestTransport;
    use tower_mcp_auth::{
        RefreshCoordinator, Secret, ServerBinding, SilentRefreshLayer, binding::ClientAuthMethod,
    };

    for (method, expected) in [
        (ClientAuthMethod::ClientSecretBasic, "basic"),
        (ClientAuthMethod::ClientSecretPost, "post"),
    ] {
        let h = Harness::new(RefreshConfig::default()).await;
        h.auth.register_client("confidential", Some("s3cr3t:/+"));
        let binding =
            ServerBinding::public_client(&h.mcp.url(), &h.auth.token_endpoint(), "confidential")
                .unwrap()
                .with_client_secret(Secret::new("s3cr3t:/+"), method);
        let coordinator = RefreshCoordinator::new(h.store.clone());
        let client =
            SilentRefreshLayer::new(coordinator, binding.clone()).layer(ReqwestTransport::new());
        let key = tower_mcp_auth::AuthKey::new(&alice(), binding.id());
        let mut tokens = h.auth.issue("confidential", "alice", None);
        tokens.expires_at = Some(std::time::SystemTime::now());
        assert!(matches!(
            h.store.compare_and_swap(&key, None, tokens).await.unwrap(),
            Swap::Stored(_)
        ));

        assert_eq!(
            call_whoami(client, &h.mcp.url(), &alice()).await.unwrap(),
            "alice"
        );
        let recorded = h.auth.recorded_requests();
        assert_eq!(recorded[0].client_auth, expected);
        assert_eq!(h.auth.stats().refresh_successes, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_responses_pass_through_the_stack() {
    let h = Harness::new(RefreshConfig::default()).await;
    h.mcp.set_sse(true);
    h.login(&alice()).await;
    h.auth.revoke_access_tokens("alice");
    assert_eq!(h.whoami(&alice()).await.unwrap(), "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooldown_doubles_after_consecutive_failures() {
    // Windows of 1 s then 2 s; checks sit 200-800 ms away from every window edge.
    let base = Duration::from_secs(1);
    let h =
        Harness::new(RefreshConfig::default().with_cooldown(base, Duration::from_secs(10))).await;
    h.login(&alice()).await;
    h.expire(&alice()).await;
    h.auth.fail_always(Fault::ServerError);
    let attempts = || h.auth.stats().refresh_requests;
    let step = Duration::from_millis(1200);

    assert!(h.whoami(&alice()).await.is_err());
    assert_eq!(attempts(), 1);
    tokio::time::sleep(step).await;
    assert!(h.whoami(&alice()).await.is_err());
    assert_eq!(attempts(), 2, "first window (1 s) over: one more attempt");
    tokio::time::sleep(step).await;
    assert!(h.whoami(&alice()).await.is_err());
    assert_eq!(
        attempts(),
        2,
        "the second window is 2 s: still cooling down"
    );
    tokio::time::sleep(step).await;
    assert!(h.whoami(&alice()).await.is_err());
    assert_eq!(attempts(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_body_is_sent_once_and_its_401_returned_as_is() {
    let h = Harness::new(RefreshConfig::default()).await;
    h.login(&alice()).await;
    h.auth.revoke_access_tokens("alice");
    let chunks: Vec<Result<&'static str, std::io::Error>> = vec![
        Ok(r#"{"jsonrpc":"2.0","id":1,"#),
        Ok(r#""method":"tools/list"}"#),
    ];
    let mut request = jsonrpc_request(&h.mcp.url(), 1, "tools/list", json!({}));
    *request.body_mut() = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    request.extensions_mut().insert(alice());

    let response = h.client.clone().oneshot(request).await.unwrap();

    assert_eq!(response.status(), 401);
    assert!(response.headers().contains_key("www-authenticate"));
    assert_eq!(h.mcp.stats().requests, 1, "sent once, not replayed");
    assert_eq!(h.auth.stats().refresh_requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_revokes_the_grant_family_when_a_rotated_refresh_token_is_replayed() {
    // The fixture must punish replays the way strict servers do, or the storm tests above
    // would prove nothing.
    let h = Harness::new(RefreshConfig::default()).await;
    let tokens = h.auth.issue(CLIENT_ID, "mallory", None);
    let form = |refresh: &str| {
        [
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", refresh.to_owned()),
            ("client_id", CLIENT_ID.to_owned()),
        ]
    };
    let http = tower_mcp_auth::client::ReqwestService::builder()
        .expect("TLS")
        .build()
        .unwrap();
    let refresh = tokens.refresh_token.as_ref().unwrap().expose();
    let first = http
        .post(h.auth.token_endpoint())
        .form(&form(refresh))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let rotated: serde_json::Value = serde_json::from_slice(&first.bytes().await.unwrap()).unwrap();
    let replay = http
        .post(h.auth.token_endpoint())
        .form(&form(refresh))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 400);
    assert_eq!(h.auth.stats().reuse_detected, 1);
    // The whole family is dead: the new access token and the new refresh token too.
    assert!(
        h.auth
            .validate(rotated["access_token"].as_str().unwrap())
            .is_none()
    );
    let after = http
        .post(h.auth.token_endpoint())
        .form(&form(rotated["refresh_token"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 400);
}

/// Issue #11: with 5 s tokens whose server-side `exp` is rounded down to the second, the
/// refresh-ahead margin (10% of the lifetime) left 0.5-0.75 s and hundreds of calls per
/// lifetime got a 401 before the refresh. With the margin's floor and the skew
/// allowance, 256 concurrent callers see (almost) none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_tokens_are_refreshed_before_the_server_rejects_them() {
    let h = common::Harness::new(RefreshConfig::default()).await;
    h.auth.set_access_token_lifetime(Duration::from_secs(5));
    let alice = Principal::new("acme", "alice");
    h.login(&alice).await;
    let h = Arc::new(h);
    let until = tokio::time::Instant::now() + Duration::from_secs(11);
    let callers: Vec<_> = (0..256)
        .map(|_| {
            let (h, alice) = (h.clone(), alice.clone());
            tokio::spawn(async move {
                let mut calls = 0u64;
                while tokio::time::Instant::now() < until {
                    h.whoami(&alice).await.expect("every call succeeds");
                    calls += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                calls
            })
        })
        .collect();
    let mut total = 0;
    for caller in callers {
        total += caller.await.unwrap();
    }
    let unauthorized = h.mcp.stats().unauthorized;
    let stats = h.auth.stats();
    println!(
        "{total} calls over 11 s with 5 s tokens: {unauthorized} got a 401; {} redemptions",
        stats.refresh_successes
    );
    // Without the floor and the skew allowance: 256 (every caller at every expiry).
    assert!(
        unauthorized < 64,
        "{unauthorized} of {total} calls got a 401"
    );
    assert_eq!(stats.invalid_grants, 0);
    assert_eq!(stats.reuse_detected, 0);
    assert!(
        (2..=8).contains(&stats.refresh_successes),
        "about one redemption per lifetime: {}",
        stats.refresh_successes
    );
}
