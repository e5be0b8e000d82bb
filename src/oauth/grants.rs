//! Token endpoint grants and the classification of their failures.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use oauth2::basic::{BasicClient, BasicErrorResponseType, BasicTokenResponse};
use oauth2::{
    AsyncHttpClient, AuthType, AuthorizationCode, ClientId, ClientSecret, EndpointNotSet,
    EndpointSet, HttpRequest, HttpResponse, PkceCodeVerifier, RedirectUrl, RefreshToken,
    RequestTokenError, Scope, TokenResponse, TokenUrl,
};

use crate::binding::{ClientAuthMethod, ServerBinding};
use crate::fault::TransientReason;
use crate::http_client::{AuthHttpClient, HttpError};
use crate::store::BoxFuture;
use crate::token::{Generation, Secret, TokenSet};

/// A successful token response, secrets wrapped.
#[derive(Debug)]
pub(crate) struct GrantedTokens {
    pub(crate) access_token: Secret,
    pub(crate) refresh_token: Option<Secret>,
    pub(crate) expires_in: Option<Duration>,
    pub(crate) scope: Option<String>,
}

impl GrantedTokens {
    /// The token set to store, obtained now. A response without a refresh token or
    /// scope keeps the previous ones (RFC 6749 §6).
    pub(crate) fn into_token_set(self, previous: Option<&TokenSet>) -> TokenSet {
        let obtained_at = SystemTime::now();
        TokenSet {
            access_token: self.access_token,
            refresh_token: self
                .refresh_token
                .or_else(|| previous.and_then(|p| p.refresh_token.clone())),
            scope: self
                .scope
                .or_else(|| previous.and_then(|p| p.scope.clone())),
            obtained_at,
            // `expires_in` comes from the server: clamped, never an overflow.
            expires_at: self
                .expires_in
                .map(|d| crate::limits::system_after(obtained_at, d)),
            generation: previous.map_or(Generation(0), |p| p.generation),
            derived: Default::default(),
        }
    }
}

/// What a failed grant means for the stored credentials (docs/architecture.md: classified failures).
#[derive(Debug)]
pub(crate) enum GrantError {
    /// `invalid_grant`: the refresh token is dead; retire it.
    InvalidGrant,
    /// `invalid_client`, `unauthorized_client` or a vendor's "unknown client".
    ClientRejected(String),
    /// Any other OAuth error code.
    OAuth(String),
    /// Network, timeout, 5xx, 429, or a response that is not OAuth: keep credentials.
    Transient {
        reason: TransientReason,
        retry_after: Option<Duration>,
    },
}

/// The oauth2 client for `binding`'s token endpoint and client authentication.
fn oauth2_client(
    binding: &ServerBinding,
) -> BasicClient<EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet> {
    let mut client = BasicClient::new(ClientId::new(binding.client_id().to_owned()))
        .set_token_uri(TokenUrl::from_url(binding.token_endpoint().clone()))
        .set_auth_type(match binding.auth_method() {
            ClientAuthMethod::ClientSecretBasic => AuthType::BasicAuth,
            _ => AuthType::RequestBody,
        });
    if let (Some(secret), false) = (
        binding.client_secret(),
        binding.auth_method() == ClientAuthMethod::None,
    ) {
        client = client.set_client_secret(ClientSecret::new(secret.expose().to_owned()));
    }
    client
}

/// A token response body as the refresh and code grants read it.
#[cfg(feature = "fuzzing")]
pub(crate) fn parse_token_response(body: &[u8]) -> Result<GrantedTokens, serde_json::Error> {
    serde_json::from_slice::<BasicTokenResponse>(body).map(granted)
}

fn granted(response: BasicTokenResponse) -> GrantedTokens {
    GrantedTokens {
        access_token: Secret::new(response.access_token().secret().as_str()),
        refresh_token: response
            .refresh_token()
            .map(|t| Secret::new(t.secret().as_str())),
        expires_in: response.expires_in(),
        scope: response.scopes().map(|scopes| {
            scopes
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        }),
    }
}

/// `grant_type=refresh_token` (RFC 6749 §6) with `resource` (RFC 8707) and the granted
/// scope, authenticated as the binding's client is registered.
pub(crate) async fn refresh(
    http: &AuthHttpClient,
    binding: &ServerBinding,
    refresh_token: &Secret,
    scope: Option<&str>,
) -> Result<GrantedTokens, GrantError> {
    let client = oauth2_client(binding);
    let refresh_token = RefreshToken::new(refresh_token.expose().to_owned());
    let mut request = client.exchange_refresh_token(&refresh_token);
    if let Some(scope) = scope {
        request = request.add_scopes(scope.split_whitespace().map(|s| Scope::new(s.to_owned())));
    }
    if binding.sends_resource() {
        request = request.add_extra_param("resource", binding.resource().as_str());
    }
    let transport = Transport(http);
    let response = request.request_async(&transport).await.map_err(classify)?;
    Ok(granted(response))
}

/// Revokes `refresh_token` at `endpoint` (RFC 7009), authenticated as the binding's
/// client is registered. The server revokes the grant's other tokens as it sees fit.
/// (By hand, not through oauth2's revocation: that one refuses an `http` endpoint
/// outright, where this crate's URL policy decides, as for every other endpoint.)
pub(crate) async fn revoke_refresh_token(
    http: &AuthHttpClient,
    binding: &ServerBinding,
    endpoint: &url::Url,
    refresh_token: &Secret,
) -> Result<(), GrantError> {
    // Built in a block: the form serializer is not `Send` and must not live across
    // the await below.
    let request = {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("token", refresh_token.expose());
        form.append_pair("token_type_hint", "refresh_token");
        let mut request = http::Request::post(endpoint.as_str()).header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        );
        match (binding.auth_method(), binding.client_secret()) {
            (ClientAuthMethod::ClientSecretBasic, Some(secret)) => {
                // RFC 6749 §2.3.1: both parts form-encoded before Basic.
                let encode = |v: &str| {
                    url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
                };
                let credentials = format!(
                    "{}:{}",
                    encode(binding.client_id()),
                    encode(secret.expose())
                );
                let mut value = http::HeaderValue::try_from(format!(
                    "Basic {}",
                    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, credentials)
                ))
                .map_err(|_| {
                    GrantError::OAuth("client credentials are not a header value".into())
                })?;
                value.set_sensitive(true);
                request = request.header(http::header::AUTHORIZATION, value);
            }
            (ClientAuthMethod::ClientSecretPost, Some(secret)) => {
                form.append_pair("client_id", binding.client_id());
                form.append_pair("client_secret", secret.expose());
            }
            _ => {
                form.append_pair("client_id", binding.client_id());
            }
        }
        request
            .body(Bytes::from(form.finish()))
            .map_err(|_| GrantError::OAuth("revocation request".into()))?
    };
    let response = http
        .send(request)
        .await
        .map_err(|error| GrantError::OAuth(format!("revocation failed: {error}")))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(GrantError::OAuth(format!(
            "revocation answered {}",
            response.status()
        )))
    }
}

/// `grant_type=authorization_code` (RFC 6749 §4.1.3) with the PKCE verifier (RFC 7636)
/// and `resource`.
pub(crate) async fn exchange_code(
    http: &AuthHttpClient,
    binding: &ServerBinding,
    code: &str,
    pkce_verifier: &Secret,
    redirect_uri: &url::Url,
) -> Result<GrantedTokens, GrantError> {
    let client =
        oauth2_client(binding).set_redirect_uri(RedirectUrl::from_url(redirect_uri.clone()));
    let mut request = client
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.expose().to_owned()));
    if binding.sends_resource() {
        request = request.add_extra_param("resource", binding.resource().as_str());
    }
    let transport = Transport(http);
    let response = request.request_async(&transport).await.map_err(classify)?;
    Ok(granted(response))
}

/// The oauth2 crate's view of [`AuthHttpClient`].
struct Transport<'a>(&'a AuthHttpClient);

impl<'c> AsyncHttpClient<'c> for Transport<'_> {
    type Error = HttpError;
    type Future = BoxFuture<'c, Result<HttpResponse, HttpError>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let response = self.0.send(request.map(Bytes::from)).await?;
            Ok(response.map(|body| body.to_vec()))
        })
    }
}

/// Vendor spellings of "this client does not exist" (seen from Auth0, Okta, Keycloak
/// and others in `error` or `error_description`).
fn is_unknown_client(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    [
        "client not found",
        "unknown client",
        "client_id mismatch",
        "invalid_client",
    ]
    .iter()
    .any(|pattern| text.contains(pattern))
}

fn classify(
    error: RequestTokenError<HttpError, oauth2::StandardErrorResponse<BasicErrorResponseType>>,
) -> GrantError {
    match error {
        RequestTokenError::ServerResponse(response) => {
            let description = response
                .error_description()
                .map(String::as_str)
                .unwrap_or("");
            match response.error() {
                BasicErrorResponseType::InvalidGrant => GrantError::InvalidGrant,
                code @ (BasicErrorResponseType::InvalidClient
                | BasicErrorResponseType::UnauthorizedClient) => {
                    GrantError::ClientRejected(code.as_ref().to_owned())
                }
                BasicErrorResponseType::Extension(code)
                    if code == "server_error" || code == "temporarily_unavailable" =>
                {
                    GrantError::Transient {
                        reason: TransientReason::InvalidResponse(code.clone()),
                        retry_after: None,
                    }
                }
                code if is_unknown_client(code.as_ref()) || is_unknown_client(description) => {
                    GrantError::ClientRejected(code.as_ref().to_owned())
                }
                code => GrantError::OAuth(code.as_ref().to_owned()),
            }
        }
        RequestTokenError::Request(http) => {
            let (reason, retry_after) = http.into_transient();
            GrantError::Transient {
                reason,
                retry_after,
            }
        }
        // Only the path of a parse error is reported: the body may hold tokens.
        RequestTokenError::Parse(e, _body) => GrantError::Transient {
            reason: TransientReason::InvalidResponse(format!(
                "unexpected token response at `{}`",
                e.path()
            )),
            retry_after: None,
        },
        RequestTokenError::Other(message) => GrantError::Transient {
            reason: TransientReason::InvalidResponse(message),
            retry_after: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_client_patterns_are_case_insensitive() {
        assert!(is_unknown_client("Client Not Found"));
        assert!(is_unknown_client("the client_id mismatch was detected"));
        assert!(!is_unknown_client("invalid scope"));
    }
}
