//! An OpenID Connect provider on loopback, as the gateway's `jwt` identity meets one: a
//! P-256 key and its JWKS, discovery, an authorization endpoint that signs in whoever
//! is "at the keyboard" (`set_user`) and redirects back with a code, and a token
//! endpoint that checks PKCE and issues ID tokens. It also mints the access tokens MCP
//! clients present to the gateway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Form, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

struct Pending {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    nonce: Option<String>,
    subject: String,
}

struct Provider {
    issuer: String,
    key: aws_lc_rs::signature::EcdsaKeyPair,
    user: Mutex<String>,
    codes: Mutex<HashMap<String, Pending>>,
    authorizations: Mutex<Vec<String>>,
}

pub struct OidcProvider {
    state: Arc<Provider>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Provider {
    fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": "k1"});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}

impl OidcProvider {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let alg = &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
            alg,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .unwrap();
        let key = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref()).unwrap();
        let state = Arc::new(Provider {
            issuer,
            key,
            user: Mutex::new(String::new()),
            codes: Mutex::new(HashMap::new()),
            authorizations: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(discovery),
            )
            .route("/jwks.json", axum::routing::get(jwks))
            .route("/authorize", axum::routing::get(authorize))
            .route("/token", axum::routing::post(token))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { state }
    }

    pub fn issuer(&self) -> String {
        self.state.issuer.clone()
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/jwks.json", self.state.issuer)
    }

    /// Who signs in at the authorization endpoint from now on.
    pub fn set_user(&self, subject: &str) {
        *self.state.user.lock().unwrap() = subject.to_owned();
    }

    /// The subjects signed in at the authorization endpoint so far.
    pub fn authorizations(&self) -> Vec<String> {
        self.state.authorizations.lock().unwrap().clone()
    }

    /// An access token for `subject`, as an MCP client would present it.
    pub fn access_token(&self, subject: &str, audience: &str) -> String {
        self.state
            .sign(&json!({"iss": self.state.issuer, "aud": audience,
            "sub": subject, "exp": now() + 600, "iat": now()}))
    }
}

async fn discovery(State(state): State<Arc<Provider>>) -> Response {
    let issuer = &state.issuer;
    axum::Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks.json"),
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
    }))
    .into_response()
}

async fn jwks(State(state): State<Arc<Provider>>) -> Response {
    let point = aws_lc_rs::signature::KeyPair::public_key(&state.key)
        .as_ref()
        .to_vec();
    axum::Json(
        json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])}]}),
    )
    .into_response()
}

async fn authorize(
    State(state): State<Arc<Provider>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let (Some(client_id), Some(redirect_uri), Some(challenge)) = (
        query.get("client_id"),
        query.get("redirect_uri"),
        query.get("code_challenge"),
    ) else {
        return (axum::http::StatusCode::BAD_REQUEST, "missing parameters").into_response();
    };
    let subject = state.user.lock().unwrap().clone();
    state.authorizations.lock().unwrap().push(subject.clone());
    let code = format!("code-{}", rand::random::<u64>());
    state.codes.lock().unwrap().insert(
        code.clone(),
        Pending {
            client_id: client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            challenge: challenge.clone(),
            nonce: query.get("nonce").cloned(),
            subject,
        },
    );
    let mut back = url::Url::parse(redirect_uri).unwrap();
    back.query_pairs_mut().append_pair("code", &code);
    if let Some(state) = query.get("state") {
        back.query_pairs_mut().append_pair("state", state);
    }
    Redirect::to(back.as_str()).into_response()
}

async fn token(
    State(state): State<Arc<Provider>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let refuse = |why: &str| {
        (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant", "error_description": why})),
        )
            .into_response()
    };
    let Some(pending) = form
        .get("code")
        .and_then(|code| state.codes.lock().unwrap().remove(code))
    else {
        return refuse("unknown code");
    };
    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    if URL_SAFE_NO_PAD.encode(digest.as_ref()) != pending.challenge {
        return refuse("PKCE verifier does not match");
    }
    if form.get("redirect_uri") != Some(&pending.redirect_uri)
        || form.get("client_id") != Some(&pending.client_id)
    {
        return refuse("client or redirect URI mismatch");
    }
    let id_token = state.sign(&json!({"iss": state.issuer, "aud": pending.client_id,
        "sub": pending.subject, "nonce": pending.nonce, "exp": now() + 300, "iat": now()}));
    axum::Json(json!({"access_token": "opaque", "token_type": "Bearer",
        "expires_in": 300, "id_token": id_token}))
    .into_response()
}
