//! Inbound identity from a JWT bearer token, verified against the issuer's JWKS.
//!
//! Signatures: RS256 and ES256 (aws-lc-rs). Keys are fetched from `jwks_url` and cached; a
//! token naming a key id the cache does not hold refetches the set (at most once per
//! [`REFETCH_INTERVAL`]), so the issuer's key rotation is followed without letting
//! made-up key ids hammer it. `iss`, `aud`, `exp` (required) and `nbf` are checked with
//! [`LEEWAY`] for clock skew. The token itself is never logged or forwarded.
//!
//! An outage of the key endpoint stalls no request: past `keys_refresh` the cached set
//! keeps verifying (up to `keys_max_stale` longer) while one background fetch at a time
//! renews it, backing off after failures. A request that must have a fetch (no set yet,
//! an unknown key id, a set past its staleness bound) joins the fetch in flight rather
//! than queueing for one of its own: it waits for one fetch timeout at most.

use futures_util::FutureExt;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use serde_json::Value;

use tower_mcp_auth::AuthHttpClient;
use tower_mcp_auth::Principal;

/// The latest `exp` read as a time: the end of the year 9999. A token claiming a later
/// one is absurd and invalid, as everywhere in the library.
const LATEST_EXP_SECONDS: f64 = 253_402_300_799.0;

/// Clock skew allowed on `exp` and `nbf`.
pub(crate) const LEEWAY: Duration = Duration::from_secs(60);
/// The least time between two fetches of the key set.
pub(crate) const REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// How long a fetched key set is used before it is fetched again (default).
pub const DEFAULT_KEYS_REFRESH: Duration = Duration::from_secs(600);
/// How long past its refresh a key set still verifies while fetches fail (default).
pub const DEFAULT_KEYS_MAX_STALE: Duration = Duration::from_secs(3600);
/// The first wait after a failed background fetch; doubled per failure up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What the `jwt` identity mode checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtIdentity {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// A value the token's `aud` must hold.
    pub audience: String,
    /// Where the issuer publishes its keys.
    pub jwks_url: url::Url,
    /// The claim holding the tenant; `None`: every principal is in `tenant`.
    pub tenant_claim: Option<String>,
    /// The tenant when there is no tenant claim.
    pub tenant: String,
    /// How long a fetched key set is used before it is renewed (in the background).
    pub keys_refresh: Duration,
    /// How long past `keys_refresh` the set still verifies while renewals fail.
    pub keys_max_stale: Duration,
}

/// Why a bearer token was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum JwtError {
    #[error("no bearer token")]
    Missing,
    #[error("the token is not a JWT")]
    Malformed,
    #[error("unsupported signature algorithm `{0}`")]
    Algorithm(String),
    #[error("no key of the issuer has this token's key id")]
    UnknownKey,
    #[error("the signature does not verify")]
    Signature,
    #[error("the token expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is from another issuer")]
    Issuer,
    #[error("the token is for another audience")]
    Audience,
    #[error("the token names no subject")]
    Subject,
    #[error("the issuer's keys could not be fetched: {0}")]
    Keys(String),
}

enum Key {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// P-256, uncompressed point.
    P256(Vec<u8>),
}

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, std::sync::Arc<Key>>,
    /// When the set was last fetched successfully.
    fetched_at: Option<Instant>,
    /// When the last fetch, successful or not, ended.
    attempted_at: Option<Instant>,
    /// Fetches ended so far: a caller that waited for the fetch lock sees whether one
    /// ended meanwhile, and takes its outcome instead of fetching again.
    attempts: u64,
    /// Failed fetches in a row (backoff of the background renewal).
    failures: u32,
}

impl KeySet {
    /// Whether a background renewal may start now (not within its backoff).
    fn renewal_due(&self) -> bool {
        let backoff = match self.failures {
            0 => Duration::ZERO,
            n => FIRST_BACKOFF
                .saturating_mul(1u32 << (n - 1).min(16))
                .min(MAX_BACKOFF),
        };
        self.attempted_at.is_none_or(|at| at.elapsed() >= backoff)
    }
}

/// Verifies inbound JWTs for the gateway.
pub(crate) struct JwtVerifier {
    config: JwtIdentity,
    http: AuthHttpClient,
    keys: Mutex<KeySet>,
    /// One fetch at a time; callers that waited find the keys it brought.
    fetching: tokio::sync::Mutex<()>,
    /// A background renewal is under way.
    renewing: std::sync::atomic::AtomicBool,
}

impl JwtVerifier {
    pub(crate) fn new(config: JwtIdentity, http: AuthHttpClient) -> Self {
        Self {
            config,
            http,
            keys: Mutex::new(KeySet::default()),
            fetching: tokio::sync::Mutex::new(()),
            renewing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The principal of a verified `Authorization: Bearer` token.
    pub(crate) async fn principal(
        self: &std::sync::Arc<Self>,
        authorization: Option<&http::HeaderValue>,
    ) -> Result<Principal, JwtError> {
        let token = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(JwtError::Missing)?;
        let audience = self.config.audience.clone();
        self.verify(token, &audience)
            .await
            .map(|(principal, _)| principal)
    }

    /// The principal and claims of `token`, verified: signature by the issuer's keys,
    /// `iss`, `aud` holding `audience`, `exp`, `nbf`, `sub`.
    pub(crate) async fn verify(
        self: &std::sync::Arc<Self>,
        token: &str,
        audience: &str,
    ) -> Result<(Principal, Value), JwtError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| JwtError::Malformed)
        };
        let header: Value =
            serde_json::from_slice(&decode(header)?).map_err(|_| JwtError::Malformed)?;
        let claims: Value =
            serde_json::from_slice(&decode(payload)?).map_err(|_| JwtError::Malformed)?;
        let signature = decode(signature)?;
        let algorithm = header["alg"].as_str().unwrap_or_default();
        if !matches!(algorithm, "RS256" | "ES256") {
            return Err(JwtError::Algorithm(algorithm.chars().take(16).collect()));
        }
        let kid = header["kid"].as_str().unwrap_or_default();
        let key = self.key(kid).await?;
        let signed = &token.as_bytes()[..header_len(token)];
        let verified = match (&*key, algorithm) {
            (Key::Rsa { n, e }, "RS256") => aws_lc_rs::signature::RsaPublicKeyComponents { n, e }
                .verify(
                    &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
                    signed,
                    &signature,
                )
                .is_ok(),
            (Key::P256(point), "ES256") => aws_lc_rs::signature::UnparsedPublicKey::new(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
                point,
            )
            .verify(signed, &signature)
            .is_ok(),
            _ => false,
        };
        if !verified {
            return Err(JwtError::Signature);
        }
        let principal = self.check_claims(&claims, audience)?;
        Ok((principal, claims))
    }

    fn check_claims(&self, claims: &Value, audience: &str) -> Result<Principal, JwtError> {
        if claims["iss"].as_str() != Some(self.config.issuer.as_str()) {
            return Err(JwtError::Issuer);
        }
        let for_us = match &claims["aud"] {
            Value::String(aud) => aud == audience,
            Value::Array(auds) => auds.iter().any(|a| a.as_str() == Some(audience)),
            _ => false,
        };
        if !for_us {
            return Err(JwtError::Audience);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let leeway = LEEWAY.as_secs_f64();
        // Numbers from the network: compared as floats, never turned into durations.
        let exp = claims["exp"].as_f64().ok_or(JwtError::Expired)?;
        // An `exp` past the year 9999 is absurd: such a token is invalid, as elsewhere.
        let latest = LATEST_EXP_SECONDS;
        if !(exp.is_finite() && exp + leeway > now && exp <= latest) {
            return Err(JwtError::Expired);
        }
        if let Some(nbf) = claims.get("nbf").filter(|v| !v.is_null()) {
            let nbf = nbf.as_f64().ok_or(JwtError::NotYetValid)?;
            if !(nbf.is_finite() && nbf - leeway <= now) {
                return Err(JwtError::NotYetValid);
            }
        }
        let subject = claims["sub"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or(JwtError::Subject)?;
        let tenant = match &self.config.tenant_claim {
            Some(claim) => claims[claim.as_str()]
                .as_str()
                .filter(|t| !t.is_empty())
                .ok_or(JwtError::Subject)?,
            None => self.config.tenant.as_str(),
        };
        Ok(Principal::new(tenant, subject))
    }

    /// The key `kid`: from the cached set while it is fresh, or stale within its bound
    /// (renewed in the background meanwhile); otherwise after the fetch in flight, or
    /// one of its own (rate-limited).
    async fn key(self: &std::sync::Arc<Self>, kid: &str) -> Result<std::sync::Arc<Key>, JwtError> {
        let (found, age, attempts, renewal_due) = {
            let set = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            (
                set.keys.get(kid).cloned(),
                set.fetched_at.map(|at| at.elapsed()),
                set.attempts,
                set.renewal_due(),
            )
        };
        if let (Some(key), Some(age)) = (&found, age) {
            if age < self.config.keys_refresh {
                return Ok(key.clone());
            }
            if age < self.config.keys_refresh + self.config.keys_max_stale {
                if renewal_due {
                    self.renew_in_background();
                }
                return Ok(key.clone());
            }
        }
        let _fetching = self.fetching.lock().await;
        {
            let set = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            // A fetch ended while this caller waited (or just before): its outcome is
            // the answer, not another fetch.
            let recently = set
                .attempted_at
                .is_some_and(|at| at.elapsed() < REFETCH_INTERVAL);
            if set.attempts != attempts || recently {
                return self.answer(&set, kid);
            }
        }
        self.fetch_and_store().await;
        let set = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        self.answer(&set, kid)
    }

    /// `kid` from `set`, if the set is within its staleness bound.
    fn answer(&self, set: &KeySet, kid: &str) -> Result<std::sync::Arc<Key>, JwtError> {
        let usable = set
            .fetched_at
            .is_some_and(|at| at.elapsed() < self.config.keys_refresh + self.config.keys_max_stale);
        match set.keys.get(kid) {
            Some(key) if usable => Ok(key.clone()),
            _ if !usable => Err(JwtError::Keys("the issuer's key set is unavailable".into())),
            _ => Err(JwtError::UnknownKey),
        }
    }

    /// One fetch; the set replaced on success, the failure counted otherwise. The
    /// caller holds `fetching`.
    async fn fetch_and_store(&self) {
        let outcome = self.fetch().await;
        let mut set = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        set.attempts += 1;
        set.attempted_at = Some(Instant::now());
        match outcome {
            Ok(keys) => {
                set.keys = keys;
                set.fetched_at = Some(Instant::now());
                set.failures = 0;
            }
            Err(error) => {
                set.failures = set.failures.saturating_add(1);
                tracing::warn!(%error, failures = set.failures, "inbound identity: the issuer's keys could not be fetched; the cached set serves meanwhile");
            }
        }
    }

    /// Starts one background renewal unless one is under way.
    fn renew_in_background(self: &std::sync::Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.renewing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let work = async {
                let _fetching = this.fetching.lock().await;
                let due = this
                    .keys
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .renewal_due();
                if due {
                    this.fetch_and_store().await;
                }
            };
            if AssertUnwindSafe(work).catch_unwind().await.is_err() {
                tracing::error!("inbound identity: the key renewal panicked");
            }
            this.renewing.store(false, Ordering::Release);
        });
    }

    async fn fetch(&self) -> Result<HashMap<String, std::sync::Arc<Key>>, JwtError> {
        let mut request = http::Request::new(Bytes::new());
        *request.uri_mut() = self
            .config
            .jwks_url
            .as_str()
            .parse()
            .map_err(|_| JwtError::Keys("jwks_url".into()))?;
        request.headers_mut().insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );
        let response = self
            .http
            .send(request)
            .await
            .map_err(|error| JwtError::Keys(error.to_string()))?;
        if !response.status().is_success() {
            return Err(JwtError::Keys(format!("status {}", response.status())));
        }
        let set: Value = serde_json::from_slice(response.body())
            .map_err(|_| JwtError::Keys("not a JSON key set".into()))?;
        let mut keys = HashMap::new();
        for jwk in set["keys"].as_array().into_iter().flatten() {
            let field = |name: &str| {
                jwk[name]
                    .as_str()
                    .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
            };
            let key = match (jwk["kty"].as_str(), jwk["crv"].as_str()) {
                (Some("RSA"), _) => match (field("n"), field("e")) {
                    (Some(n), Some(e)) => Key::Rsa { n, e },
                    _ => continue,
                },
                (Some("EC"), Some("P-256")) => match (field("x"), field("y")) {
                    (Some(x), Some(y)) if x.len() == 32 && y.len() == 32 => {
                        Key::P256([&[4u8][..], &x, &y].concat())
                    }
                    _ => continue,
                },
                _ => continue,
            };
            let kid = jwk["kid"].as_str().unwrap_or_default().to_owned();
            keys.insert(kid, std::sync::Arc::new(key));
        }
        tracing::info!(keys = keys.len(), "inbound identity: issuer keys fetched");
        Ok(keys)
    }
}

/// The length of `header.payload`, the signed part of a compact JWS.
fn header_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(0)
}
