//! The pieces of an `auth = "oauth"` upstream: its authorizer, the retry layer that
//! asks for a sign-in, the callback endpoint, and the answer carrying the sign-in link.

use super::*;

/// The authorizer of an `oauth` upstream: sign-in links under
/// `{public_url}/oauth/{name}/start`, callbacks at `{public_url}/oauth/{name}/callback`,
/// flows and registrations in the gateway's store.
pub(super) fn oauth_authorizer(
    config: &ProxyConfig,
    name: &str,
    url: &url::Url,
    (pre_registered, metadata_document): (
        Option<&super::super::config::PreRegistered>,
        Option<&url::Url>,
    ),
    store: &Arc<dyn CredentialStore>,
    records: &Arc<dyn SharedRecords>,
) -> Result<Authorizer, tower_mcp_auth::error::ConfigError> {
    // `ProxyConfig::parse` refuses an `oauth` upstream without a public URL.
    let public =
        config
            .public_url
            .as_ref()
            .ok_or(tower_mcp_auth::error::ConfigError::UnsupportedUrl {
                field: "public_url",
            })?;
    let join = |path: String| {
        public
            .join(&path)
            .map_err(|source| tower_mcp_auth::error::ConfigError::InvalidUrl {
                field: "public_url",
                source,
            })
    };
    let mut builder = Authorizer::builder(
        url.as_str(),
        store.clone(),
        join(format!("oauth/{name}/callback"))?,
    )
    .client_name("mcp-auth-proxy")
    .start_url(join(format!("oauth/{name}/start"))?)
    .shared_state(records.clone());
    if config.allow_loopback_http {
        builder = builder.url_policy(UrlPolicy::default().allow_loopback_http());
    }
    if let Some(document) = metadata_document {
        builder = builder.metadata_document(document.clone());
    }
    if let Some(client) = pre_registered {
        let mut registered = PreRegisteredClient::new(&client.issuer, &client.client_id);
        if let Some(secret) = &client.client_secret {
            registered = registered.with_secret(
                secret.clone(),
                tower_mcp_auth::binding::ClientAuthMethod::ClientSecretBasic,
            );
        }
        builder = builder.pre_registered(registered);
    }
    builder.build()
}

/// Return early (the caller gets the sign-in link in the protocol at once), or with
/// `wait`, hold the request while the user signs in through `/connections`; past the
/// wait the caller gets the link.
pub(super) fn retry_layer(
    name: &str,
    authorizer: &Authorizer,
    wait: Option<Duration>,
) -> OAuthRetryLayer {
    let Some(wait) = wait else {
        return OAuthRetryLayer::return_early(authorizer.clone());
    };
    let upstream = name.to_owned();
    OAuthRetryLayer::wait(
        authorizer.clone(),
        move |prompt: tower_mcp_auth::layer::oauth_retry::AuthorizationPrompt| {
            tracing::info!(
                upstream = %upstream,
                subject = prompt.principal.subject(),
                "request held for a sign-in; the link is on /connections"
            );
            async { Ok(()) }
        },
    )
    .with_wait_timeout(wait)
}

/// The start and callback endpoints of an `oauth` upstream. A start link is honoured
/// only for the browser of the user it was made for: the identity rule must name the
/// flow's principal for the browser's own request.
pub(super) fn callback_service(
    config: &ProxyConfig,
    name: &str,
    authorizer: &Authorizer,
    login: Option<Arc<super::super::login::BrowserLogin>>,
) -> CallbackService {
    let key = config
        .cookie_key
        .as_ref()
        .map(|key| key.expose().as_bytes().to_vec())
        .unwrap_or_default();
    let mut binding = BrowserBinding::new(&key);
    if config
        .public_url
        .as_ref()
        .is_some_and(|url| url.scheme() == "http")
    {
        binding = binding.insecure_cookies();
    }
    let identity = config.identity.clone();
    let service = CallbackService::new(authorizer.completer(), binding)
        .with_start_path(format!("/oauth/{name}/start"))
        .with_app_name(format!("mcp-auth-proxy ({name})"));
    if let Some(login) = login {
        // A browser carries no bearer token: its user is the gateway's own login
        // session (the router sends a browser without one through the login first).
        return service.with_start_check(move |request, principal| {
            login.session(&request.headers).as_ref() == Some(principal)
        });
    }
    service.with_start_check(move |request, principal| {
        request
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .and_then(|peer| self::principal(&identity, peer.0, &request.headers).ok())
            .is_some_and(|browser_user| &browser_user == principal)
    })
}

/// The "connect first" answer to a request of a user without credentials.
pub(super) fn connect_first(
    name: &str,
    url: &str,
    message: Option<&Message>,
    url_elicitation: bool,
) -> Response {
    let elicitation_id = crate::crypto::hex(&crate::crypto::random_bytes::<16>());
    let (status, body) = connect::answer(name, url, message, url_elicitation, &elicitation_id);
    tracing::info!(upstream = %name, "no credentials for the upstream yet; sign-in link sent");
    super::super::telemetry::sign_in_link(name);
    (status, axum::Json(body)).into_response()
}

/// How long a tenant's first request waits for its binding before it goes without.
const BIND_WITHIN: Duration = Duration::from_secs(5);

/// The first request of a tenant since this process started, to an `oauth` upstream:
/// its binding (discovery and the stored client registration, or a registration if
/// none is stored) first, so the credentials the store holds go with this request
/// instead of after a 401. Failing here (for at most [`BIND_WITHIN`]), the request goes
/// without and the stack binds on the upstream's 401, as it would have; the tenant is
/// not tried again before each request for a while.
pub(super) async fn bind_before_first_request(
    upstream: &Upstream,
    name: &str,
    principal: &Principal,
) {
    let tenant = principal.tenant();
    let Some(authorizer) = &upstream.authorizer else {
        return;
    };
    if authorizer.bindings().get(tenant).is_some() || upstream.unbindable.contains_key(tenant) {
        return;
    }
    // In a task of its own: past the wait it still finishes (a registration the server
    // made is stored, not lost with a dropped future).
    let (authorizer, owned) = (authorizer.clone(), principal.clone());
    let restore = tokio::spawn(async move {
        let cause = tower_mcp_auth::oauth::AuthorizationCause::challenge(None);
        authorizer.restore_binding(&owned, &cause).await
    });
    let failure = match tokio::time::timeout(BIND_WITHIN, restore).await {
        Ok(Ok(Ok(()))) => None,
        Ok(Ok(Err(error))) => Some(error.to_string()),
        Ok(Err(_)) => Some("the binding task panicked".to_owned()),
        Err(_) => Some(format!("no answer within {BIND_WITHIN:?}")),
    };
    if let Some(error) = failure {
        tracing::debug!(upstream = %name, %error, "no binding before the first request");
        upstream.unbindable.insert(tenant.to_owned(), ());
    }
}
