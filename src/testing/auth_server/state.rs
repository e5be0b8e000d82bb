//! What the server knows: grants, the tokens it issued (with reuse detection), pending
//! codes and consents, the knobs a test turns and the counters it reads.

use super::*;

#[derive(Clone)]
pub(super) struct Grant {
    pub(super) family: u64,
    pub(super) subject: String,
    pub(super) client_id: String,
    pub(super) scope: Option<String>,
}

pub(super) struct AccessEntry {
    pub(super) grant: Grant,
    pub(super) expires_at: Instant,
    pub(super) revoked: bool,
}

pub(super) struct RefreshEntry {
    pub(super) grant: Grant,
    pub(super) used: bool,
}

pub(super) struct IssuedCode {
    pub(super) client_id: String,
    pub(super) redirect_uri: String,
    pub(super) challenge: String,
    pub(super) scope: Option<String>,
    pub(super) subject: String,
    pub(super) used: bool,
}

#[derive(Default)]
pub(super) struct Tokens {
    pub(super) codes: HashMap<String, IssuedCode>,
    pub(super) access: HashMap<String, AccessEntry>,
    pub(super) refresh: HashMap<String, RefreshEntry>,
    pub(super) revoked_families: HashSet<u64>,
    pub(super) clients: HashMap<String, Option<String>>,
}

pub(super) struct Knobs {
    /// Who consents at `/authorize`.
    pub(super) consenting_user: String,
    /// The `issuer` the metadata document claims (default: the real one).
    pub(super) metadata_issuer: Option<String>,
    pub(super) access_token_lifetime: Duration,
    pub(super) latency: Duration,
    pub(super) rotate_refresh_tokens: bool,
    pub(super) fault: Option<(Fault, Option<u64>)>,
    /// `/authorize` first sends the browser to an interaction page bound to a cookie.
    pub(super) interaction: bool,
    /// `/authorize` answers this OAuth error (and description) instead of a code.
    pub(super) deny: Option<(String, Option<String>)>,
    /// `/register` answers this RFC 7591 error instead of registering.
    pub(super) refuse_registration: Option<String>,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) refresh_requests: AtomicU64,
    pub(super) refresh_successes: AtomicU64,
    pub(super) invalid_grants: AtomicU64,
    pub(super) reuse_detected: AtomicU64,
    pub(super) faults: AtomicU64,
    pub(super) metadata_requests: AtomicU64,
    pub(super) registrations: AtomicU64,
    pub(super) code_exchanges: AtomicU64,
    pub(super) authorization_requests: AtomicU64,
    pub(super) obo_exchanges: AtomicU64,
    pub(super) revocations: AtomicU64,
    pub(super) next_family: AtomicU64,
}

/// An interaction in progress: its session cookie and the authorization request.
pub(super) type PendingInteraction = (String, HashMap<String, String>);

pub(crate) struct AuthState {
    pub(super) issuer: Mutex<String>,
    /// Signs the user assertions this server hands out (HS256).
    /// Signs user assertions (ES256); its public half is served at `/jwks.json`.
    pub(super) assertion_key: aws_lc_rs::signature::EcdsaKeyPair,
    pub(super) tokens: Mutex<Tokens>,
    pub(super) knobs: Mutex<Knobs>,
    pub(super) counters: Counters,
    pub(super) refreshes_by_subject: Mutex<HashMap<String, u64>>,
    pub(super) recorded: Mutex<Vec<RecordedTokenRequest>>,
    /// Pending interactions: id -> (session cookie value, the authorization request).
    pub(super) interactions: Mutex<HashMap<String, PendingInteraction>>,
}

impl AuthState {
    pub(crate) fn validate(&self, access_token: &str) -> Option<TokenInfo> {
        let tokens = lock(&self.tokens);
        let entry = tokens.access.get(access_token)?;
        let valid = !entry.revoked
            && entry.expires_at > Instant::now()
            && !tokens.revoked_families.contains(&entry.grant.family);
        valid.then(|| TokenInfo {
            subject: entry.grant.subject.clone(),
            client_id: entry.grant.client_id.clone(),
            scope: entry.grant.scope.clone(),
        })
    }

    /// Records what a token request carried (secrets left out).
    pub(super) fn record(
        &self,
        grant_type: &str,
        client_id: &str,
        client_auth: &'static str,
        form: &HashMap<String, String>,
    ) {
        lock(&self.recorded).push(RecordedTokenRequest {
            grant_type: grant_type.to_owned(),
            client_id: Some(client_id.to_owned()),
            client_auth,
            resource: form.get("resource").cloned(),
            scope: form.get("scope").cloned(),
            audience: form.get("audience").cloned(),
            requested_token_use: form.get("requested_token_use").cloned(),
        });
    }

    pub(super) fn sign_assertion(&self, claims: &serde_json::Value) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let input = format!(
            "{}.{}",
            b64.encode(r#"{"alg":"ES256","typ":"JWT","kid":"assertions"}"#),
            b64.encode(claims.to_string())
        );
        let signature = self
            .assertion_key
            .sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes())
            .expect("ECDSA signing");
        format!("{input}.{}", b64.encode(signature.as_ref()))
    }

    /// The assertion key as a JWKS document.
    pub(super) fn jwks(&self) -> serde_json::Value {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let point = aws_lc_rs::signature::KeyPair::public_key(&self.assertion_key).as_ref();
        json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "assertions", "alg": "ES256",
            "use": "sig", "x": b64.encode(&point[1..33]), "y": b64.encode(&point[33..65])}]})
    }

    /// The subject of `assertion` if this server signed it for `audience` and it has
    /// not expired.
    pub(super) fn verify_assertion(&self, assertion: &str, audience: &str) -> Option<String> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (input, signature) = assertion.rsplit_once('.')?;
        let signature = b64.decode(signature).ok()?;
        let public = aws_lc_rs::signature::KeyPair::public_key(&self.assertion_key);
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            public,
        )
        .verify(input.as_bytes(), &signature)
        .ok()?;
        let payload = input.split_once('.')?.1;
        let claims: serde_json::Value = serde_json::from_slice(&b64.decode(payload).ok()?).ok()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        let fresh = claims["exp"].as_u64().is_some_and(|exp| exp > now);
        (fresh && claims["aud"] == audience).then(|| claims["sub"].as_str().map(str::to_owned))?
    }

    pub(super) fn mint(&self, tokens: &mut Tokens, grant: &Grant) -> (String, String, Duration) {
        let lifetime = lock(&self.knobs).access_token_lifetime;
        let access = random_token("at");
        let refresh = random_token("rt");
        tokens.access.insert(
            access.clone(),
            AccessEntry {
                grant: grant.clone(),
                expires_at: whole_second_expiry(lifetime),
                revoked: false,
            },
        );
        tokens.refresh.insert(
            refresh.clone(),
            RefreshEntry {
                grant: grant.clone(),
                used: false,
            },
        );
        (access, refresh, lifetime)
    }
}
