//! One `[[upstream]]` table: its name, URL and auth mode with what each mode needs.

use std::collections::HashSet;

use http::{HeaderName, HeaderValue};
use toml::Spanned;

use super::raw::{RawUpstream, Source};
use super::{
    ConfigError, IdentityConfig, MAX_WAIT_SECONDS, PreRegistered, UpstreamAuth, UpstreamConfig,
};

/// What an upstream's auth mode depends on outside its own table.
pub(super) struct Context<'a> {
    pub(super) identity: &'a IdentityConfig,
    /// Whether the gateway signs browsers in itself (`login_client_id`).
    pub(super) login: bool,
    /// Whether `public_url` and `cookie_key_env` are both given.
    pub(super) browser_pages: bool,
}

/// Validates one upstream; `names` holds the names seen so far (each must be unique).
pub(super) fn upstream(
    src: &Source<'_>,
    context: &Context<'_>,
    upstream: RawUpstream,
    names: &mut HashSet<String>,
) -> Result<UpstreamConfig, ConfigError> {
    let name = upstream.name.get_ref();
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid_name {
        return Err(src.at(
            upstream.name.span(),
            format!("upstream.name: `{name}` must be letters, digits, `-` or `_`"),
        ));
    }
    if !names.insert(name.clone()) {
        return Err(src.at(
            upstream.name.span(),
            format!("upstream.name: `{name}` is used twice"),
        ));
    }
    let url = url::Url::parse(upstream.url.get_ref())
        .ok()
        .filter(|url| matches!(url.scheme(), "http" | "https"))
        .ok_or_else(|| {
            src.at(
                upstream.url.span(),
                format!(
                    "upstream.url: `{}` is not an http(s) URL",
                    upstream.url.get_ref()
                ),
            )
        })?;
    let auth = match upstream.auth.get_ref().as_str() {
        "none" => UpstreamAuth::None,
        "header" => {
            let (Some(header), Some(variable)) = (upstream.header_name, upstream.header_value_env)
            else {
                return Err(src.at(
                    upstream.auth.span(),
                    "upstream: auth `header` needs `header_name` and `header_value_env` (the value comes from the environment, never from this file)".into(),
                ));
            };
            let name = HeaderName::try_from(header.get_ref().as_str()).map_err(|_| {
                src.at(
                    header.span(),
                    format!(
                        "upstream.header_name: `{}` is not a header name",
                        header.get_ref()
                    ),
                )
            })?;
            let value = src.env_secret(&variable, "upstream.header_value_env")?;
            let mut value = HeaderValue::try_from(value).map_err(|_| {
                src.at(
                    variable.span(),
                    format!(
                        "upstream.header_value_env: `{}` holds no valid header value",
                        variable.get_ref()
                    ),
                )
            })?;
            value.set_sensitive(true);
            UpstreamAuth::Header { name, value }
        }
        "oauth" => {
            if matches!(context.identity, IdentityConfig::Jwt(_)) && !context.login {
                // A browser opening a sign-in link carries no bearer token: without
                // a login of its own the gateway could not tell whose browser it is,
                // and a link passed to another user would connect their account.
                return Err(src.at(
                    upstream.auth.span(),
                    "upstream: auth `oauth` with identity mode `jwt` needs `[identity] login_client_id`: the gateway signs browsers in at the issuer so that a sign-in link works only in its own user's browser".into(),
                ));
            }
            if !context.browser_pages {
                return Err(src.at(
                    upstream.auth.span(),
                    "upstream: auth `oauth` needs the top-level `public_url` (where browsers reach the gateway) and `cookie_key_env` (the key of the sign-in cookie)".into(),
                ));
            }
            let pre_registered = match (upstream.client_id, upstream.issuer) {
                (None, None) => {
                    if let Some(secret) = upstream.client_secret_env {
                        return Err(src.at(
                            secret.span(),
                            "upstream.client_secret_env: only with `client_id` and `issuer`".into(),
                        ));
                    }
                    None
                }
                (Some(client_id), Some(issuer)) => {
                    let client_secret = match upstream.client_secret_env {
                        None => None,
                        Some(variable) => Some(tower_mcp_auth::Secret::new(
                            src.env_secret(&variable, "upstream.client_secret_env")?,
                        )),
                    };
                    Some(PreRegistered {
                        issuer: issuer.into_inner(),
                        client_id: client_id.into_inner(),
                        client_secret,
                    })
                }
                (Some(client_id), None) => {
                    return Err(src.at(
                        client_id.span(),
                        "upstream.client_id: pre-registered credentials name their `issuer` (the authorization server they belong to)".into(),
                    ));
                }
                (None, Some(issuer)) => {
                    return Err(src.at(
                        issuer.span(),
                        "upstream.issuer: only with a pre-registered `client_id`".into(),
                    ));
                }
            };
            let wait = match upstream.wait_seconds {
                None => None,
                Some(seconds) if (1..=MAX_WAIT_SECONDS).contains(seconds.get_ref()) => {
                    Some(std::time::Duration::from_secs(*seconds.get_ref()))
                }
                Some(seconds) => {
                    return Err(src.at(
                        seconds.span(),
                        format!(
                            "upstream.wait_seconds: between 1 and {MAX_WAIT_SECONDS} (a sign-in link lives 15 minutes)"
                        ),
                    ));
                }
            };
            let metadata_document = match upstream.client_metadata_url {
                None => None,
                Some(text) => Some(
                    url::Url::parse(text.get_ref())
                        .ok()
                        .filter(|url| url.scheme() == "https" && url.path() != "/")
                        .ok_or_else(|| {
                            src.at(
                                text.span(),
                                format!(
                                    "upstream.client_metadata_url: `{}` must be an https URL with a path (the document's address is the client_id)",
                                    text.get_ref()
                                ),
                            )
                        })?,
                ),
            };
            UpstreamAuth::OAuth {
                pre_registered,
                wait,
                metadata_document,
            }
        }
        "obo" => {
            if !matches!(context.identity, IdentityConfig::Jwt(_)) {
                return Err(src.at(
                    upstream.auth.span(),
                    "upstream: auth `obo` needs identity mode `jwt` (the caller's token is what is exchanged)".into(),
                ));
            }
            let (Some(endpoint), Some(client_id)) = (upstream.token_endpoint, upstream.client_id)
            else {
                return Err(src.at(
                    upstream.auth.span(),
                    "upstream: auth `obo` needs `token_endpoint` and `client_id`".into(),
                ));
            };
            let token_endpoint = url::Url::parse(endpoint.get_ref())
                .ok()
                .filter(|url| matches!(url.scheme(), "http" | "https"))
                .ok_or_else(|| {
                    src.at(
                        endpoint.span(),
                        format!(
                            "upstream.token_endpoint: `{}` is not an http(s) URL",
                            endpoint.get_ref()
                        ),
                    )
                })?;
            let client_auth = match upstream.client_secret_env {
                None => tower_mcp_auth::obo::ClientAuth::None,
                Some(variable) => {
                    tower_mcp_auth::obo::ClientAuth::SecretBasic(tower_mcp_auth::Secret::new(
                        src.env_secret(&variable, "upstream.client_secret_env")?,
                    ))
                }
            };
            let grant = match upstream.grant.as_ref().map(|g| g.get_ref().as_str()) {
                None | Some("token-exchange") => tower_mcp_auth::obo::OboGrant::token_exchange(),
                Some("jwt-bearer") => tower_mcp_auth::obo::OboGrant::JwtBearer,
                Some("entra-obo") => tower_mcp_auth::obo::OboGrant::EntraOnBehalfOf,
                Some(other) => {
                    let span = upstream
                        .grant
                        .as_ref()
                        .map(Spanned::span)
                        .unwrap_or_default();
                    return Err(src.at(
                        span,
                        format!(
                            "upstream.grant: unknown grant `{other}` (known: token-exchange, jwt-bearer, entra-obo)"
                        ),
                    ));
                }
            };
            let mut config = tower_mcp_auth::obo::OboConfig::new(
                token_endpoint,
                client_id.into_inner(),
                client_auth,
                grant,
            )
            .with_scopes(upstream.scopes);
            if let Some(audience) = upstream.audience {
                config = config.with_audience(audience);
            }
            UpstreamAuth::Obo(Box::new(config))
        }
        other => {
            return Err(src.at(
                upstream.auth.span(),
                format!("upstream.auth: unknown mode `{other}` (known: none, header, oauth, obo)"),
            ));
        }
    };
    let h2c = match upstream.h2c {
        Some(h2c) if *h2c.get_ref() && url.scheme() != "http" => {
            return Err(src.at(
                h2c.span(),
                "upstream.h2c: only for an http:// URL (over https, HTTP/2 is negotiated by itself)"
                    .into(),
            ));
        }
        Some(h2c) => *h2c.get_ref(),
        None => false,
    };
    Ok(UpstreamConfig {
        name: upstream.name.into_inner(),
        url,
        auth,
        h2c,
    })
}
