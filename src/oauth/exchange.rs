//! Assertion grants for On-Behalf-Of: the JWT bearer grant (RFC 7523 §2.1, with Entra's
//! `requested_token_use=on_behalf_of`) and OAuth 2.0 Token Exchange (RFC 8693), with
//! client authentication by secret (basic or post) or signed JWT (`private_key_jwt`,
//! RFC 7523 §2.2).
//!
//! Neither grant is in the oauth2 crate, so the form is built here; the response is
//! read as a standard token response and failures are classified as permanent (an
//! OAuth error code: retrying cannot help) or transient.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use serde::Deserialize;
use url::Url;

use crate::fault::TransientReason;
use crate::http_client::AuthHttpClient;
use crate::oauth::grants::GrantedTokens;
use crate::token::Secret;

/// `grant_type` of the JWT bearer grant (RFC 7523).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// `grant_type` of token exchange (RFC 8693).
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Token type of an OAuth access token (RFC 8693 §3).
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Token type of an OpenID Connect ID token (RFC 8693 §3).
pub const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
/// Token type of an Identity Assertion JWT Authorization Grant (SEP-990, ID-JAG).
pub const ID_JAG_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id-jag";
const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Which assertion grant exchanges the user's token.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OboGrant {
    /// Microsoft Entra On-Behalf-Of: `grant_type=…jwt-bearer`, `assertion`,
    /// `requested_token_use=on_behalf_of`, `scope`.
    EntraOnBehalfOf,
    /// The plain JWT bearer grant (RFC 7523 §2.1): `assertion`, `scope`.
    JwtBearer,
    /// RFC 8693 token exchange: `subject_token` of `subject_token_type`, optionally
    /// asking for `requested_token_type`.
    TokenExchange {
        /// The subject token's type (default: an access token).
        subject_token_type: String,
        /// The token type asked for, if any.
        requested_token_type: Option<String>,
    },
}

impl OboGrant {
    /// RFC 8693 exchange of an OpenID Connect ID token for an Identity Assertion JWT
    /// Authorization Grant (ID-JAG, SEP-990 cross-app access).
    pub fn id_jag() -> Self {
        OboGrant::TokenExchange {
            subject_token_type: ID_TOKEN_TYPE.into(),
            requested_token_type: Some(ID_JAG_TOKEN_TYPE.into()),
        }
    }

    /// RFC 8693 exchange of an access token, asking for nothing in particular.
    pub fn token_exchange() -> Self {
        OboGrant::TokenExchange {
            subject_token_type: ACCESS_TOKEN_TYPE.into(),
            requested_token_type: None,
        }
    }
}

/// How the client authenticates at the token endpoint.
#[derive(Clone)]
#[non_exhaustive]
pub enum ClientAuth {
    /// `client_id` only (a public client).
    None,
    /// HTTP Basic with the client id and secret (RFC 6749 §2.3.1).
    SecretBasic(Secret),
    /// `client_secret` in the form.
    SecretPost(Secret),
    /// A JWT signed with the client's private key (`private_key_jwt`, RFC 7523 §2.2).
    PrivateKeyJwt(JwtSigner),
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClientAuth::None => "None",
            ClientAuth::SecretBasic(_) => "SecretBasic(<redacted>)",
            ClientAuth::SecretPost(_) => "SecretPost(<redacted>)",
            ClientAuth::PrivateKeyJwt(_) => "PrivateKeyJwt(<redacted>)",
        })
    }
}

enum SigningKey {
    Es256(aws_lc_rs::signature::EcdsaKeyPair),
    Rs256(aws_lc_rs::signature::RsaKeyPair),
}

/// Signs client assertions (`private_key_jwt`) with an ES256 or RS256 key.
#[derive(Clone)]
pub struct JwtSigner {
    key: Arc<SigningKey>,
    key_id: Option<String>,
    audience: Option<String>,
}

/// A private key that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("unusable private key: {0}")]
pub struct KeyError(String);

impl JwtSigner {
    /// A signer from a PKCS#8 PEM private key: EC P-256 (ES256) or RSA (RS256).
    ///
    /// ```
    /// use tower_mcp_auth::obo::JwtSigner;
    ///
    /// assert!(JwtSigner::from_pkcs8_pem("not a key").is_err());
    /// ```
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        let body: String = pem
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .map(str::trim)
            .collect();
        let der = STANDARD
            .decode(body)
            .map_err(|_| KeyError("not PEM".into()))?;
        let key = if let Ok(key) = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &der,
        ) {
            SigningKey::Es256(key)
        } else {
            let key = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&der)
                .map_err(|e| KeyError(format!("neither P-256 nor RSA PKCS#8 ({e})")))?;
            SigningKey::Rs256(key)
        };
        Ok(Self {
            key: Arc::new(key),
            key_id: None,
            audience: None,
        })
    }

    /// The `kid` header to send.
    pub fn with_key_id(mut self, kid: impl Into<String>) -> Self {
        self.key_id = Some(kid.into());
        self
    }

    /// The assertion's `aud` (default: the token endpoint URL; some servers want their
    /// issuer identifier).
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// A fresh client assertion for `client_id` at `token_endpoint`, valid 60 s.
    fn assertion(&self, client_id: &str, token_endpoint: &Url) -> Result<String, KeyError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let alg = match &*self.key {
            SigningKey::Es256(_) => "ES256",
            SigningKey::Rs256(_) => "RS256",
        };
        let mut header = serde_json::json!({"alg": alg, "typ": "JWT"});
        if let Some(kid) = &self.key_id {
            header["kid"] = kid.as_str().into();
        }
        let jti: [u8; 16] = crate::crypto::random_bytes();
        let claims = serde_json::json!({
            "iss": client_id,
            "sub": client_id,
            "aud": self.audience.as_deref().unwrap_or(token_endpoint.as_str()),
            "iat": now,
            "exp": now + 60,
            "jti": URL_SAFE_NO_PAD.encode(jti),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let signature = match &*self.key {
            SigningKey::Es256(key) => key
                .sign(&rng, signing_input.as_bytes())
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError("signing failed".into()))?,
            SigningKey::Rs256(key) => {
                let mut signature = vec![0; key.public_modulus_len()];
                key.sign(
                    &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                    &rng,
                    signing_input.as_bytes(),
                    &mut signature,
                )
                .map_err(|_| KeyError("signing failed".into()))?;
                signature
            }
        };
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

impl fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSigner")
            .field("key_id", &self.key_id)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// One assertion grant request.
pub(crate) struct AssertionRequest<'a> {
    pub(crate) token_endpoint: &'a Url,
    pub(crate) client_id: &'a str,
    pub(crate) client_auth: &'a ClientAuth,
    pub(crate) grant: &'a OboGrant,
    pub(crate) assertion: &'a Secret,
    pub(crate) scopes: &'a [String],
    pub(crate) audience: Option<&'a str>,
    pub(crate) resource: Option<&'a str>,
    pub(crate) actor_token: Option<&'a (Secret, String)>,
}

/// Why an assertion grant failed.
#[derive(Clone, Debug)]
pub(crate) enum AssertionFailure {
    /// The server answered with an OAuth error: retrying the same request cannot help.
    Rejected {
        code: String,
        description: Option<String>,
        claims: Option<String>,
    },
    /// Network, timeout, 429, 5xx, or an unreadable answer.
    Transient {
        reason: TransientReason,
        retry_after: Option<Duration>,
    },
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
    #[serde(default)]
    claims: Option<String>,
}

/// A successful assertion grant's body.
pub(crate) fn parse_token_response(body: &[u8]) -> Result<GrantedTokens, serde_json::Error> {
    let parsed: TokenResponse = serde_json::from_slice(body)?;
    Ok(GrantedTokens {
        access_token: Secret::new(parsed.access_token),
        refresh_token: None,
        expires_in: parsed.expires_in.map(Duration::from_secs),
        scope: parsed.scope,
    })
}

/// Sends one assertion grant request.
pub(crate) async fn request_token(
    http: &AuthHttpClient,
    request: &AssertionRequest<'_>,
) -> Result<GrantedTokens, AssertionFailure> {
    let (body, basic) = form(request)?;
    let mut http_request = http::Request::new(Bytes::from(body));
    *http_request.method_mut() = http::Method::POST;
    *http_request.uri_mut() =
        request
            .token_endpoint
            .as_str()
            .parse()
            .map_err(|_| AssertionFailure::Transient {
                reason: TransientReason::InvalidResponse("token endpoint is not a URI".into()),
                retry_after: None,
            })?;
    let headers = http_request.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    headers.insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static("application/json"),
    );
    if let Some(basic) = basic
        && let Ok(mut value) = http::HeaderValue::try_from(basic)
    {
        value.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, value);
    }
    let response = http.send(http_request).await.map_err(|error| {
        let (reason, retry_after) = error.into_transient();
        AssertionFailure::Transient {
            reason,
            retry_after,
        }
    })?;
    if response.status().is_success() {
        // Only the shape is reported on a parse failure: the body holds a token.
        return parse_token_response(response.body()).map_err(|_| AssertionFailure::Transient {
            reason: TransientReason::InvalidResponse("not a token response".into()),
            retry_after: None,
        });
    }
    match serde_json::from_slice::<ErrorResponse>(response.body()) {
        Ok(error) => Err(AssertionFailure::Rejected {
            // Server-chosen strings, kept bounded in errors and logs.
            code: error.error.chars().take(100).collect(),
            description: error
                .error_description
                .map(|d| d.chars().take(1000).collect()),
            claims: error.claims.filter(|c| c.len() <= 16 * 1024),
        }),
        Err(_) => Err(AssertionFailure::Transient {
            reason: TransientReason::InvalidResponse(format!(
                "HTTP {} without an OAuth error",
                response.status().as_u16()
            )),
            retry_after: None,
        }),
    }
}

/// The form body and, for client_secret_basic, the Authorization header value.
/// (Built apart from the async send: the serializer is not `Send`.)
fn form(request: &AssertionRequest<'_>) -> Result<(String, Option<String>), AssertionFailure> {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    match request.grant {
        OboGrant::EntraOnBehalfOf | OboGrant::JwtBearer => {
            form.append_pair("grant_type", JWT_BEARER);
            form.append_pair("assertion", request.assertion.expose());
            if *request.grant == OboGrant::EntraOnBehalfOf {
                form.append_pair("requested_token_use", "on_behalf_of");
            }
        }
        OboGrant::TokenExchange {
            subject_token_type,
            requested_token_type,
        } => {
            form.append_pair("grant_type", TOKEN_EXCHANGE);
            form.append_pair("subject_token", request.assertion.expose());
            form.append_pair("subject_token_type", subject_token_type);
            if let Some(requested) = requested_token_type {
                form.append_pair("requested_token_type", requested);
            }
            if let Some((token, token_type)) = request.actor_token {
                form.append_pair("actor_token", token.expose());
                form.append_pair("actor_token_type", token_type);
            }
        }
    }
    if !request.scopes.is_empty() {
        form.append_pair("scope", &request.scopes.join(" "));
    }
    if let Some(audience) = request.audience {
        form.append_pair("audience", audience);
    }
    if let Some(resource) = request.resource {
        form.append_pair("resource", resource);
    }
    let mut basic = None;
    match request.client_auth {
        ClientAuth::None => {
            form.append_pair("client_id", request.client_id);
        }
        ClientAuth::SecretPost(secret) => {
            form.append_pair("client_id", request.client_id);
            form.append_pair("client_secret", secret.expose());
        }
        ClientAuth::SecretBasic(secret) => {
            // RFC 6749 §2.3.1: both parts form-urlencoded before base64.
            let encode =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = format!("{}:{}", encode(request.client_id), encode(secret.expose()));
            basic = Some(format!("Basic {}", STANDARD.encode(pair)));
        }
        ClientAuth::PrivateKeyJwt(signer) => {
            let assertion = signer
                .assertion(request.client_id, request.token_endpoint)
                .map_err(|e| AssertionFailure::Transient {
                    reason: TransientReason::InvalidResponse(e.to_string()),
                    retry_after: None,
                })?;
            form.append_pair("client_id", request.client_id);
            form.append_pair("client_assertion_type", CLIENT_ASSERTION_TYPE);
            form.append_pair("client_assertion", &assertion);
        }
    }
    Ok((form.finish(), basic))
}

/// What a token says of its own expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum JwtExpiry {
    /// Not a JWT, or a JWT without a numeric `exp`: the token does not say.
    Unknown,
    /// A JWT whose `exp` is this instant.
    At(SystemTime),
    /// A JWT whose `exp` is absurd (negative, fractional overflow, past the year 9999):
    /// the token is not to be trusted.
    Invalid,
}

/// The `exp` of a JWT, if `token` is one (the signature is not checked: this only
/// bounds how long a result derived from it is cached). Read with checked arithmetic:
/// the bytes come from whoever sent the request.
pub(crate) fn jwt_expiry(token: &str) -> JwtExpiry {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
        return JwtExpiry::Unknown;
    };
    let Some(claims) = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
    else {
        return JwtExpiry::Unknown;
    };
    match claims.get("exp") {
        None => JwtExpiry::Unknown,
        Some(exp) => match exp.as_u64().and_then(crate::limits::unix_time) {
            Some(at) => JwtExpiry::At(at),
            None => JwtExpiry::Invalid,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_expiry_reads_exp_and_ignores_other_tokens() {
        let payload = URL_SAFE_NO_PAD.encode(r#"{"sub":"alice","exp":2000000000}"#);
        let jwt = format!("eyJhbGciOiJub25lIn0.{payload}.sig");
        assert_eq!(
            jwt_expiry(&jwt),
            JwtExpiry::At(UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
        assert_eq!(jwt_expiry("opaque-token"), JwtExpiry::Unknown);
        assert_eq!(jwt_expiry("a.b.c"), JwtExpiry::Unknown);
    }

    #[test]
    fn absurd_exp_is_invalid_not_a_panic() {
        for exp in [
            "9223372036854775808",
            "18446744073709551615",
            "-1",
            "1e300",
            "\"soon\"",
        ] {
            let payload = URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{exp}}}"#));
            let jwt = format!("eyJhbGciOiJub25lIn0.{payload}.sig");
            assert_eq!(jwt_expiry(&jwt), JwtExpiry::Invalid, "exp = {exp}");
        }
    }
}
