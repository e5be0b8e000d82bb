//! [`error_response`]: a stack's error as the answer an MCP client understands.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::json;
use tower::BoxError;

use crate::error::Error;

/// The JSON-RPC error code of an answer that asks the user to sign in (the link is in
/// `error.data.url` when there is one).
pub const AUTHORIZATION_REQUIRED: i64 = -32001;

/// JSON-RPC's "internal error", for failures that are not the caller's.
const INTERNAL_ERROR: i64 = -32603;

/// What a stack's error means to the MCP client on the other side of a server that
/// forwards its requests: a JSON-RPC error (`id` null: the server forwarding the request
/// does not read it) with the status that says what to do.
///
/// | error | status | body |
/// |---|---|---|
/// | `AuthorizationRequired` | 403 | code [`AUTHORIZATION_REQUIRED`], `data.url`: the sign-in link |
/// | `ReauthRequired`, `AuthorizationTimedOut`, `AuthorizationFailed` | 403 | code [`AUTHORIZATION_REQUIRED`] |
/// | `InsufficientScope` | 403 | the scopes asked for |
/// | `Obo` | 401 | the caller's own token could not be exchanged |
/// | `MissingPrincipal` | 401 | no caller identity |
/// | `Transient`, `CircuitOpen`, `Store` | 503 | `Retry-After` when known |
/// | anything else (discovery, registration, the network) | 502 | |
///
/// Never 401 for a missing sign-in: the client would start an OAuth flow of its own
/// against the server in front. No message carries a token or the link's `state`
/// beyond the link itself.
///
/// ```
/// use tower_mcp_auth::error::{Error, ReauthReason};
/// use tower_mcp_auth::server::error_response;
///
/// let error: tower::BoxError = Error::reauth(ReauthReason::InvalidGrant).into();
/// assert_eq!(error_response(&error).status(), 403);
/// let other: tower::BoxError = "connection refused".into();
/// assert_eq!(error_response(&other).status(), 502);
/// ```
pub fn error_response(error: &BoxError) -> Response {
    let Some(error) = Error::find(error.as_ref()) else {
        return answer(
            StatusCode::BAD_GATEWAY,
            INTERNAL_ERROR,
            "the MCP server could not be reached",
            None,
        );
    };
    let sign_in = "sign in to the MCP server first";
    match error {
        Error::AuthorizationRequired { url, .. } => answer(
            StatusCode::FORBIDDEN,
            AUTHORIZATION_REQUIRED,
            &format!("{sign_in}: open {}", url.as_str()),
            Some(json!({"url": url.as_str()})),
        ),
        Error::ReauthRequired { .. }
        | Error::AuthorizationTimedOut { .. }
        | Error::AuthorizationFailed { .. } => {
            answer(StatusCode::FORBIDDEN, AUTHORIZATION_REQUIRED, sign_in, None)
        }
        Error::InsufficientScope { scope, .. } => answer(
            StatusCode::FORBIDDEN,
            AUTHORIZATION_REQUIRED,
            "the MCP server needs more permissions than were granted",
            Some(json!({"scope": scope})),
        ),
        Error::Obo(_) => answer(
            StatusCode::UNAUTHORIZED,
            INTERNAL_ERROR,
            "your token could not be exchanged for the MCP server",
            None,
        ),
        Error::MissingPrincipal => answer(
            StatusCode::UNAUTHORIZED,
            INTERNAL_ERROR,
            "who is calling is not known",
            None,
        ),
        Error::Transient { retry_after, .. } => retry_later(*retry_after),
        Error::CircuitOpen { retry_after, .. } => retry_later(Some(*retry_after)),
        Error::Store(_) => retry_later(None),
        _ => answer(
            StatusCode::BAD_GATEWAY,
            INTERNAL_ERROR,
            "the MCP server's authorization failed",
            None,
        ),
    }
}

fn retry_later(after: Option<std::time::Duration>) -> Response {
    let mut response = answer(
        StatusCode::SERVICE_UNAVAILABLE,
        INTERNAL_ERROR,
        "temporarily unavailable; try again later",
        None,
    );
    if let Some(after) = after {
        let seconds = after.as_secs().max(1);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn answer(
    status: StatusCode,
    code: i64,
    message: &str,
    data: Option<serde_json::Value>,
) -> Response {
    let mut error = json!({"code": code, "message": message});
    if let Some(data) = data {
        error["data"] = data;
    }
    (
        status,
        axum::Json(json!({"jsonrpc": "2.0", "id": null, "error": error})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::error::{ReauthReason, TransientReason};

    async fn body(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn each_error_answers_with_what_the_client_can_do() {
        let url: url::Url = "https://auth.example.com/authorize?state=abc"
            .parse()
            .unwrap();
        let link: BoxError = Error::AuthorizationRequired {
            url: url.clone().into(),
            expires_at: SystemTime::now(),
        }
        .into();
        let response = error_response(&link);
        assert_eq!(response.status(), 403);
        let answer = body(response).await;
        assert_eq!(answer["error"]["code"], AUTHORIZATION_REQUIRED);
        assert_eq!(answer["error"]["data"]["url"], url.as_str());

        let busy: BoxError = Error::Transient {
            reason: TransientReason::RateLimited,
            retry_after: Some(Duration::from_secs(7)),
            www_authenticate: Vec::new(),
        }
        .into();
        let response = error_response(&busy);
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");

        let dead: BoxError = Error::reauth(ReauthReason::InvalidGrant).into();
        assert_eq!(error_response(&dead).status(), 403);
        let missing: BoxError = Error::MissingPrincipal.into();
        assert_eq!(error_response(&missing).status(), 401);
    }
}
