//! OboHeaderLayer against an external authorization server: Authlib's RFC 7523 JWT
//! bearer grant (PyPI `Authlib`, in `tests/external/authlib_as.py`), which verifies the
//! user assertions this test signs as the identity provider (ES256) and issues the
//! tokens. `scripts/external-as.sh` installs it (the test command runs it first).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tower::{Layer, ServiceExt};
use tower_mcp_auth::testing::{ReqwestTransport, TestUpstream};
use tower_mcp_auth::{
    Error, OboExchanger, OboHeaderLayer, Principal, UserAssertion, obo::ClientAuth, obo::OboConfig,
    obo::OboError, obo::OboGrant,
};

const IDP: &str = "https://idp.example.test";

/// The identity provider's signing key.
struct Idp {
    key: EcdsaKeyPair,
}

impl Idp {
    fn new() -> Self {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        Self { key }
    }

    fn public_jwk(&self) -> Value {
        // Uncompressed point: 0x04 || X || Y.
        let point = self.key.public_key().as_ref();
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        })
    }

    fn assertion(&self, subject: &str, audience: &str) -> UserAssertion {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims =
            json!({"iss": IDP, "sub": subject, "aud": audience, "iat": now, "exp": now + 600});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes())
            .unwrap();
        UserAssertion::new(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

/// The Authlib server, stopped when dropped.
struct AuthlibServer {
    _process: tokio::process::Child,
    issuer: String,
}

impl AuthlibServer {
    async fn start(idp: &Idp) -> Self {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let python = root.join("target/external-as/bin/python");
        assert!(
            python.exists(),
            "the external authorization server is not installed: run scripts/external-as.sh \
             (./scripts/test.sh does)"
        );
        let mut process = tokio::process::Command::new(python)
            .arg(root.join("tests/external/authlib_as.py"))
            .arg(IDP)
            .arg(idp.public_jwk().to_string())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the Authlib server");
        let stdout = process.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("Authlib server started in time")
            .unwrap()
            .expect("Authlib server printed its port");
        let port = line.strip_prefix("LISTENING ").expect("LISTENING <port>");
        Self {
            _process: process,
            issuer: format!("http://127.0.0.1:{port}"),
        }
    }

    fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer)
    }

    async fn stats(&self) -> Value {
        let http = tower_mcp_auth::client::ReqwestService::builder()
            .expect("TLS")
            .build()
            .unwrap();
        let body = http
            .get(format!("{}/stats", self.issuer))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        serde_json::from_slice(&body).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authlib_jwt_bearer_one_exchange_per_user_and_the_assertion_stays_home() {
    let idp = Idp::new();
    let authlib = AuthlibServer::start(&idp).await;
    let upstream = TestUpstream::start().await.unwrap();

    // The upstream records the bearer of every request it gets.
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let recording = {
        let seen = seen.clone();
        tower::service_fn(move |request: http::Request<tower_mcp_auth::ReplayBody>| {
            let bearer = request
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            seen.lock().unwrap().push(bearer);
            ReqwestTransport::new().oneshot(request)
        })
    };
    let exchanger = OboExchanger::new(
        OboConfig::new(
            authlib.token_endpoint().parse().unwrap(),
            "gateway",
            ClientAuth::None,
            OboGrant::JwtBearer,
        )
        .with_scopes(["mcp.tools"]),
    );
    let client = OboHeaderLayer::new(exchanger.clone(), &upstream.url())
        .unwrap()
        .layer(recording);

    let alice = idp.assertion("alice", &authlib.token_endpoint());
    let calls: Vec<_> = (0..64)
        .map(|_| {
            let (client, url, alice) = (client.clone(), upstream.url(), alice.clone());
            tokio::spawn(async move {
                let mut request = http::Request::get(url)
                    .body(reqwest::Body::from(""))
                    .unwrap();
                request
                    .extensions_mut()
                    .insert(Principal::new("acme", "alice"));
                request.extensions_mut().insert(alice);
                client
                    .oneshot(request)
                    .await
                    .map(|r| r.status())
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), 200);
    }
    let stats = authlib.stats().await;
    assert_eq!(stats["exchanges"], 1, "{stats}");
    let bearers = seen.lock().unwrap().clone();
    assert_eq!(bearers.len(), 64);
    let token = bearers[0].strip_prefix("Bearer ").unwrap().to_owned();
    assert!(bearers.iter().all(|b| *b == format!("Bearer {token}")));
    assert_eq!(
        stats["issued"][&token], "alice",
        "Authlib issued it for alice"
    );
    assert!(!bearers.iter().any(|b| b.contains(alice.secret().expose())));

    // Another user: another exchange.
    let mut request = http::Request::get(upstream.url())
        .body(reqwest::Body::from(""))
        .unwrap();
    request
        .extensions_mut()
        .insert(Principal::new("acme", "bob"));
    request
        .extensions_mut()
        .insert(idp.assertion("bob", &authlib.token_endpoint()));
    assert_eq!(client.clone().oneshot(request).await.unwrap().status(), 200);
    assert_eq!(authlib.stats().await["exchanges"], 2);

    // Authlib refuses an assertion signed by someone else: a typed error, nothing sent.
    let impostor = Idp::new().assertion("mallory", &authlib.token_endpoint());
    let mut request = http::Request::get(upstream.url())
        .body(reqwest::Body::from(""))
        .unwrap();
    request
        .extensions_mut()
        .insert(Principal::new("acme", "mallory"));
    request.extensions_mut().insert(impostor);
    let sent = seen.lock().unwrap().len();
    let error = client.oneshot(request).await.unwrap_err();
    match Error::find(error.as_ref()) {
        Some(Error::Obo(OboError::Rejected { code, .. })) => assert_eq!(code, "invalid_grant"),
        other => panic!("expected invalid_grant, got {other:?}: {error}"),
    }
    assert_eq!(seen.lock().unwrap().len(), sent, "fail closed");
    assert_eq!(
        exchanger.stats().exchanges,
        3,
        "permanent failure, no retry"
    );
}
