//! OboHeaderLayer over loopback: the fixture authorization server's jwt-bearer and
//! token-exchange grants validate the assertion (signature, audience, expiry) and count
//! exchanges; the MCP server records every bearer it receives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tower::{BoxError, Layer, ServiceExt};
use tower_mcp_auth::testing::{
    Fault, ReqwestTransport, TestAuthServer, TestMcpServer, jsonrpc_request, read_jsonrpc,
};
use tower_mcp_auth::{
    Error, OboExchanger, OboHeader, OboHeaderLayer, Principal, Secret, UserAssertion,
    obo::ClientAuth, obo::JwtSigner, obo::OboConfig, obo::OboError, obo::OboGrant,
};

const CLIENT: &str = "gateway";
const SECRET: &str = "gateway-secret";

struct World {
    auth: TestAuthServer,
    mcp: TestMcpServer,
}

impl World {
    async fn new() -> Self {
        let auth = TestAuthServer::start().await.unwrap();
        auth.register_client(CLIENT, Some(SECRET));
        let mcp = TestMcpServer::start(&auth).await.unwrap();
        Self { auth, mcp }
    }

    fn config(&self, grant: OboGrant) -> OboConfig {
        OboConfig::new(
            self.auth.token_endpoint().parse().unwrap(),
            CLIENT,
            ClientAuth::SecretBasic(Secret::new(SECRET)),
            grant,
        )
        .with_scopes(["mcp.tools"])
        .with_retry_backoff(Duration::from_millis(50))
    }

    fn client(&self, config: OboConfig) -> (OboHeader<ReqwestTransport>, OboExchanger) {
        let exchanger = OboExchanger::new(config);
        let layer = OboHeaderLayer::new(exchanger.clone(), &self.mcp.url()).unwrap();
        (layer.layer(ReqwestTransport::new()), exchanger)
    }

    fn assertion(&self, user: &str) -> UserAssertion {
        UserAssertion::new(
            self.auth
                .user_assertion(user, CLIENT, Duration::from_secs(3600)),
        )
    }
}

async fn whoami(
    client: OboHeader<ReqwestTransport>,
    url: &str,
    principal: &Principal,
    assertion: &UserAssertion,
) -> Result<String, BoxError> {
    let mut request = jsonrpc_request(url, 1, "tools/call", json!({"name": "whoami"}));
    request.extensions_mut().insert(principal.clone());
    request.extensions_mut().insert(assertion.clone());
    let response = client.oneshot(request).await?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()).into());
    }
    Ok(read_jsonrpc(&response)?["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

fn acme(user: &str) -> Principal {
    Principal::new("acme", user)
}

fn crate_error(error: &BoxError) -> &Error {
    Error::find(error.as_ref()).unwrap_or_else(|| panic!("not a crate error: {error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_call_storm_of_512_makes_one_exchange() {
    let w = World::new().await;
    w.auth.set_latency(Duration::from_millis(50));
    let (client, exchanger) = w.client(w.config(OboGrant::EntraOnBehalfOf));
    let assertion = w.assertion("alice");
    let n = 512;
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, url, assertion, barrier) = (
                client.clone(),
                w.mcp.url(),
                assertion.clone(),
                barrier.clone(),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                whoami(client, &url, &acme("alice"), &assertion)
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), "alice");
    }
    assert_eq!(w.auth.stats().obo_exchanges, 1);
    let stats = exchanger.stats();
    assert_eq!(stats.exchanges, 1);
    assert_eq!(stats.joined + stats.cache_hits, 511, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_tenants_get_their_own_exchanges() {
    let w = World::new().await;
    let (client, _) = w.client(w.config(OboGrant::EntraOnBehalfOf));
    let (alice, bob) = (w.assertion("alice"), w.assertion("bob"));
    let url = w.mcp.url();
    assert_eq!(
        whoami(client.clone(), &url, &acme("alice"), &alice)
            .await
            .unwrap(),
        "alice"
    );
    assert_eq!(
        whoami(client.clone(), &url, &acme("bob"), &bob)
            .await
            .unwrap(),
        "bob"
    );
    let globex = Principal::new("globex", "alice");
    assert_eq!(
        whoami(client.clone(), &url, &globex, &alice).await.unwrap(),
        "alice"
    );
    assert_eq!(w.auth.stats().obo_exchanges, 3);
    // Repeats are served from the cache.
    for _ in 0..5 {
        whoami(client.clone(), &url, &acme("alice"), &alice)
            .await
            .unwrap();
        whoami(client.clone(), &url, &globex, &alice).await.unwrap();
    }
    assert_eq!(w.auth.stats().obo_exchanges, 3);

    // Another scope is another exchange, even for the same user and assertion.
    let (other, _) = w.client(
        w.config(OboGrant::EntraOnBehalfOf)
            .with_scopes(["mcp.admin"]),
    );
    whoami(other, &url, &acme("alice"), &alice).await.unwrap();
    assert_eq!(w.auth.stats().obo_exchanges, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_or_assertion_is_exchanged_again() {
    let w = World::new().await;
    // Tokens live 31 s; with the 30 s skew they are served for 1 s.
    w.auth.set_access_token_lifetime(Duration::from_secs(31));
    let (client, _) = w.client(w.config(OboGrant::EntraOnBehalfOf));
    let alice = w.assertion("alice");
    let url = w.mcp.url();
    whoami(client.clone(), &url, &acme("alice"), &alice)
        .await
        .unwrap();
    whoami(client.clone(), &url, &acme("alice"), &alice)
        .await
        .unwrap();
    assert_eq!(w.auth.stats().obo_exchanges, 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    whoami(client.clone(), &url, &acme("alice"), &alice)
        .await
        .unwrap();
    assert_eq!(w.auth.stats().obo_exchanges, 2);

    // The assertion's own expiry bounds the cache too: tokens live an hour, the
    // assertion 31 s.
    w.auth.set_access_token_lifetime(Duration::from_secs(3600));
    let short = UserAssertion::new(
        w.auth
            .user_assertion("bob", CLIENT, Duration::from_secs(31)),
    );
    whoami(client.clone(), &url, &acme("bob"), &short)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    whoami(client.clone(), &url, &acme("bob"), &short)
        .await
        .unwrap();
    assert_eq!(w.auth.stats().obo_exchanges, 4);

    // An expired assertion is refused without asking the identity provider.
    let expired = UserAssertion::new(w.auth.user_assertion("carol", CLIENT, Duration::ZERO));
    let error = whoami(client, &url, &acme("carol"), &expired)
        .await
        .unwrap_err();
    assert!(matches!(
        crate_error(&error),
        Error::Obo(OboError::AssertionExpired)
    ));
    assert_eq!(w.auth.stats().obo_exchanges, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_retried_once_after_retry_after_and_yields_one_token() {
    let w = World::new().await;
    w.auth.fail_next(
        Fault::TooManyRequests {
            retry_after_secs: 1,
        },
        1,
    );
    let (client, _) = w.client(w.config(OboGrant::EntraOnBehalfOf));
    let started = Instant::now();
    let answer = whoami(
        client.clone(),
        &w.mcp.url(),
        &acme("alice"),
        &w.assertion("alice"),
    )
    .await;
    assert_eq!(answer.unwrap(), "alice");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert_eq!(w.auth.stats().obo_exchanges, 2);

    // Failing twice is a transient error, credentials or not: nothing is sent.
    w.auth.fail_next(Fault::ServerError, 2);
    let requests_before = w.mcp.stats().requests;
    let error = whoami(client, &w.mcp.url(), &acme("bob"), &w.assertion("bob"))
        .await
        .unwrap_err();
    assert!(crate_error(&error).is_transient(), "{error}");
    assert_eq!(w.auth.stats().obo_exchanges, 4);
    assert_eq!(w.mcp.stats().requests, requests_before, "fail closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failures_are_not_retried_and_carry_the_code_and_claims() {
    let w = World::new().await;
    let (client, _) = w.client(w.config(OboGrant::EntraOnBehalfOf));
    w.auth.fail_next(Fault::InvalidGrant, 1);
    let error = whoami(
        client.clone(),
        &w.mcp.url(),
        &acme("alice"),
        &w.assertion("alice"),
    )
    .await
    .unwrap_err();
    match crate_error(&error) {
        Error::Obo(OboError::Rejected { code, .. }) => assert_eq!(code, "invalid_grant"),
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(w.auth.stats().obo_exchanges, 1, "no retry");

    let claims = r#"{"access_token":{"acrs":{"essential":true,"value":"c1"}}}"#;
    w.auth.fail_next(
        Fault::InteractionRequired {
            claims: claims.into(),
        },
        1,
    );
    let error = whoami(client, &w.mcp.url(), &acme("bob"), &w.assertion("bob"))
        .await
        .unwrap_err();
    match crate_error(&error) {
        Error::Obo(OboError::Rejected {
            code,
            claims: Some(found),
            ..
        }) => {
            assert_eq!(code, "interaction_required");
            assert_eq!(found, claims);
        }
        other => panic!("expected interaction_required with claims, got {other:?}"),
    }
    assert_eq!(w.auth.stats().obo_exchanges, 2);
    assert_eq!(w.mcp.stats().requests, 0, "nothing reached the MCP server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_401_forces_exactly_one_re_exchange() {
    let w = World::new().await;
    let (client, _) = w.client(w.config(OboGrant::EntraOnBehalfOf));
    let alice = w.assertion("alice");
    let url = w.mcp.url();
    whoami(client.clone(), &url, &acme("alice"), &alice)
        .await
        .unwrap();
    w.auth.revoke_access_tokens("alice");
    assert_eq!(
        whoami(client.clone(), &url, &acme("alice"), &alice)
            .await
            .unwrap(),
        "alice"
    );
    assert_eq!(w.auth.stats().obo_exchanges, 2);
    assert_eq!(w.mcp.stats().unauthorized, 1);
    // The fresh token went into the cache.
    whoami(client, &url, &acme("alice"), &alice).await.unwrap();
    assert_eq!(w.auth.stats().obo_exchanges, 2);

    // A server that refuses every token: one re-exchange, then a typed error.
    let refusing = tower::service_fn(|_: http::Request<tower_mcp_auth::ReplayBody>| async {
        let mut response = http::Response::new(bytes::Bytes::new());
        *response.status_mut() = http::StatusCode::UNAUTHORIZED;
        Ok::<_, std::convert::Infallible>(response)
    });
    let exchanger = OboExchanger::new(w.config(OboGrant::EntraOnBehalfOf));
    let stack = OboHeaderLayer::new(exchanger.clone(), &url)
        .unwrap()
        .layer(refusing);
    let mut request = jsonrpc_request(&url, 1, "tools/list", json!({}));
    request.extensions_mut().insert(acme("bob"));
    request.extensions_mut().insert(w.assertion("bob"));
    let error = stack.oneshot(request).await.unwrap_err();
    assert!(matches!(
        crate_error(&error),
        Error::Obo(OboError::RejectedByResource)
    ));
    assert_eq!(exchanger.stats().exchanges, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_cancelled_mid_exchange_still_make_one_exchange() {
    let w = World::new().await;
    w.auth.set_latency(Duration::from_millis(300));
    let (client, exchanger) = w.client(w.config(OboGrant::EntraOnBehalfOf));
    let alice = w.assertion("alice");
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (client, url, alice) = (client.clone(), w.mcp.url(), alice.clone());
            tokio::spawn(async move {
                tokio::time::timeout(
                    Duration::from_millis(50),
                    whoami(client, &url, &acme("alice"), &alice),
                )
                .await
                .is_err()
            })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap(), "every caller gave up");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        whoami(client, &w.mcp.url(), &acme("alice"), &alice)
            .await
            .unwrap(),
        "alice"
    );
    assert_eq!(w.auth.stats().obo_exchanges, 1);
    assert_eq!(exchanger.stats().cache_hits, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_assertion_never_reaches_the_mcp_server() {
    let w = World::new().await;
    let (client, _) = w.client(w.config(OboGrant::EntraOnBehalfOf));
    let alice = w.assertion("alice");
    // Even when the caller forwards the user's token itself, it is replaced.
    let mut request = jsonrpc_request(&w.mcp.url(), 1, "tools/call", json!({"name": "whoami"}));
    request.extensions_mut().insert(acme("alice"));
    request.extensions_mut().insert(alice.clone());
    let forwarded = format!("Bearer {}", alice.secret().expose());
    request
        .headers_mut()
        .insert("authorization", forwarded.parse().unwrap());
    let response = client.clone().oneshot(request).await.unwrap();
    assert_eq!(
        read_jsonrpc(&response).unwrap()["result"]["content"][0]["text"],
        "alice"
    );

    // No assertion: fail closed, nothing sent.
    let mut bare = jsonrpc_request(&w.mcp.url(), 2, "tools/list", json!({}));
    bare.extensions_mut().insert(acme("bob"));
    let error = client.oneshot(bare).await.unwrap_err();
    assert!(matches!(
        crate_error(&error),
        Error::Obo(OboError::MissingAssertion)
    ));

    let seen = w.mcp.seen_tokens();
    assert_eq!(seen.len(), 1);
    assert!(!seen.contains(&alice.secret().expose().to_owned()));
    assert!(
        w.auth.validate(&seen[0]).is_some(),
        "an OBO token, issued by the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grants_and_client_authentications_on_the_wire() {
    let w = World::new().await;
    let url = w.mcp.url();

    let (entra, _) = w.client(w.config(OboGrant::EntraOnBehalfOf));
    whoami(entra, &url, &acme("a"), &w.assertion("a"))
        .await
        .unwrap();

    let exchange = w
        .config(OboGrant::token_exchange())
        .with_audience("mcp-server")
        .with_resource(url.clone());
    let mut exchange = exchange;
    exchange.client_auth = ClientAuth::SecretPost(Secret::new(SECRET));
    let (rfc8693, _) = w.client(exchange);
    whoami(rfc8693, &url, &acme("b"), &w.assertion("b"))
        .await
        .unwrap();

    // private_key_jwt with a fresh P-256 key.
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .unwrap();
    use base64::Engine;
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref())
    );
    let mut signed = w.config(OboGrant::JwtBearer);
    signed.client_auth = ClientAuth::PrivateKeyJwt(JwtSigner::from_pkcs8_pem(&pem).unwrap());
    let (jwt, _) = w.client(signed);
    whoami(jwt, &url, &acme("c"), &w.assertion("c"))
        .await
        .unwrap();

    let recorded = w.auth.recorded_requests();
    let wire: Vec<_> = recorded
        .iter()
        .map(|r| {
            (
                r.grant_type.as_str(),
                r.client_auth,
                r.requested_token_use.as_deref(),
                r.audience.as_deref(),
                r.resource.is_some(),
                r.scope.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        wire,
        [
            (
                tower_mcp_auth::obo::JWT_BEARER,
                "basic",
                Some("on_behalf_of"),
                None,
                false,
                Some("mcp.tools")
            ),
            (
                tower_mcp_auth::obo::TOKEN_EXCHANGE,
                "post",
                None,
                Some("mcp-server"),
                true,
                Some("mcp.tools")
            ),
            (
                tower_mcp_auth::obo::JWT_BEARER,
                "private_key_jwt",
                None,
                None,
                false,
                Some("mcp.tools")
            ),
        ]
    );
    // An assertion for another audience is refused by the server.
    let (client, _) = w.client(w.config(OboGrant::EntraOnBehalfOf));
    let foreign = UserAssertion::new(w.auth.user_assertion(
        "d",
        "someone-else",
        Duration::from_secs(60),
    ));
    let error = whoami(client, &url, &acme("d"), &foreign)
        .await
        .unwrap_err();
    assert!(
        matches!(crate_error(&error), Error::Obo(OboError::Rejected { code, .. }) if code == "invalid_grant")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_re_exchange_outlives_its_cancelled_caller() {
    let w = World::new().await;
    let (client, _) = w.client(w.config(OboGrant::EntraOnBehalfOf));
    let alice = w.assertion("alice");
    let url = w.mcp.url();
    whoami(client.clone(), &url, &acme("alice"), &alice)
        .await
        .unwrap();
    w.auth.revoke_access_tokens("alice");
    w.auth.set_latency(Duration::from_millis(300));
    // The 401 starts the forced exchange; the caller gives up during it.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        whoami(client.clone(), &url, &acme("alice"), &alice),
    )
    .await
    .is_err();
    assert!(gave_up);
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.auth.set_latency(Duration::ZERO);
    // The exchange finished and was cached: the next call needs no exchange.
    assert_eq!(
        whoami(client, &url, &acme("alice"), &alice).await.unwrap(),
        "alice"
    );
    assert_eq!(w.auth.stats().obo_exchanges, 2);
}
