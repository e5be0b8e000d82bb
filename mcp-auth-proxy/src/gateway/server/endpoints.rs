//! The gateway's own endpoints besides forwarding: the browser login, `/metrics` and
//! `/readyz`.

use super::*;

/// `GET /login?return=PATH`: the gateway's own sign-in of a browser.
pub(super) async fn login_start(State(gateway): State<Gateway>, request: Request) -> Response {
    let Some(login) = &gateway.login else {
        return json_error(StatusCode::NOT_FOUND, "this gateway has no browser login");
    };
    let return_to = request.uri().query().and_then(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "return")
            .map(|(_, value)| value.into_owned())
    });
    login.start(return_to.as_deref()).await
}

/// `GET /login/callback`: the issuer's answer to the gateway's sign-in.
pub(super) async fn login_callback(State(gateway): State<Gateway>, request: Request) -> Response {
    let Some(login) = &gateway.login else {
        return json_error(StatusCode::NOT_FOUND, "this gateway has no browser login");
    };
    login
        .callback(request.uri().query(), request.headers())
        .await
}

pub(super) async fn metrics(State(gateway): State<Gateway>) -> Response {
    match &gateway.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}

/// How long `/readyz` reports a store that lost its data.
const LOST_DATA_NOT_READY: Duration = Duration::from_secs(600);

pub(super) async fn ready(State(gateway): State<Gateway>) -> Response {
    let probe = AuthKey::new(
        &Principal::new("mcp-auth-proxy", "readyz"),
        BindingId::from_bytes([0; 32]),
    );
    match tokio::time::timeout(Duration::from_secs(2), gateway.store.load(&probe)).await {
        // A store that lost its data is usable again at once, but the operator must
        // see it: not ready for ten minutes after the loss was found.
        Ok(Ok(_))
            if gateway
                .store
                .lost_data_at()
                .and_then(|at| at.elapsed().ok())
                .is_some_and(|since| since < LOST_DATA_NOT_READY) =>
        {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "store: lost its data (every credential and sign-in); see the log",
            )
                .into_response()
        }
        Ok(Ok(_)) => "ready".into_response(),
        Ok(Err(error)) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("store: {error}")).into_response()
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store: timed out").into_response(),
    }
}
