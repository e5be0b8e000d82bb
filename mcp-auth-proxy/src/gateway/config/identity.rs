//! The `[identity]` table: who a caller is (trusted header, JWT, anonymous) and the
//! gateway's own browser sign-in.

use std::net::IpAddr;

use http::HeaderName;
use std::ops::Range;

use toml::Spanned;

use super::raw::{RawIdentity, Source};
use super::{ConfigError, IdentityConfig, LoginConfig};

/// The identity, the browser login and the span errors about the login point at.
pub(super) fn identity(
    src: &Source<'_>,
    raw: Spanned<RawIdentity>,
) -> Result<(IdentityConfig, Option<LoginConfig>, Range<usize>), ConfigError> {
    let identity_span = raw.span();
    let raw_identity = raw.into_inner();
    let login_span = raw_identity
        .login_client_id
        .as_ref()
        .map_or(identity_span.clone(), Spanned::span);
    let login = match (
        &raw_identity.login_client_id,
        &raw_identity.login_client_secret_env,
    ) {
        (Some(client_id), secret) => Some(LoginConfig {
            client_id: client_id.get_ref().clone(),
            client_secret: match secret {
                Some(variable) => Some(tower_mcp_auth::Secret::new(
                    src.env_secret(variable, "identity.login_client_secret_env")?,
                )),
                None => None,
            },
        }),
        (None, Some(variable)) => {
            return Err(src.at(
                variable.span(),
                "identity.login_client_secret_env: only with `login_client_id`".into(),
            ));
        }
        (None, None) => None,
    };
    let identity = match raw_identity.mode.get_ref().as_str() {
        "trusted-header" => {
            let header = raw_identity.header.ok_or_else(|| {
                src.at(
                    identity_span.clone(),
                    "identity: mode `trusted-header` needs `header`".into(),
                )
            })?;
            let name = HeaderName::try_from(header.get_ref().as_str()).map_err(|_| {
                src.at(
                    header.span(),
                    format!(
                        "identity.header: `{}` is not a header name",
                        header.get_ref()
                    ),
                )
            })?;
            if raw_identity.trusted_sources.is_empty() {
                return Err(src.at(
                    identity_span,
                    "identity: `trusted_sources` must list the front proxy's addresses".into(),
                ));
            }
            let mut sources = Vec::new();
            for source in raw_identity.trusted_sources {
                sources.push(source.get_ref().parse::<IpAddr>().map_err(|_| {
                    src.at(
                        source.span(),
                        format!(
                            "identity.trusted_sources: `{}` is not an IP address",
                            source.get_ref()
                        ),
                    )
                })?);
            }
            IdentityConfig::TrustedHeader {
                header: name,
                tenant: raw_identity.tenant.unwrap_or_else(|| "default".into()),
                trusted_sources: sources,
            }
        }
        "jwt" => {
            let required = |value: Option<Spanned<String>>, name: &str| {
                value.ok_or_else(|| {
                    src.at(
                        identity_span.clone(),
                        format!("identity: mode `jwt` needs `{name}`"),
                    )
                })
            };
            let issuer = required(raw_identity.issuer, "issuer")?.into_inner();
            let audience = required(raw_identity.audience, "audience")?.into_inner();
            let jwks = required(raw_identity.jwks_url, "jwks_url")?;
            let jwks_url = url::Url::parse(jwks.get_ref())
                .ok()
                .filter(|url| matches!(url.scheme(), "http" | "https"))
                .ok_or_else(|| {
                    src.at(
                        jwks.span(),
                        format!(
                            "identity.jwks_url: `{}` is not an http(s) URL",
                            jwks.get_ref()
                        ),
                    )
                })?;
            let seconds = |value: Option<Spanned<u64>>,
                           name: &str,
                           range: std::ops::RangeInclusive<u64>,
                           default: std::time::Duration| match value {
                None => Ok(default),
                Some(value) if range.contains(value.get_ref()) => {
                    Ok(std::time::Duration::from_secs(*value.get_ref()))
                }
                Some(value) => Err(src.at(
                    value.span(),
                    format!(
                        "identity.{name}: must be {}..={} seconds",
                        range.start(),
                        range.end()
                    ),
                )),
            };
            let keys_refresh = seconds(
                raw_identity.jwks_refresh_seconds,
                "jwks_refresh_seconds",
                1..=86_400,
                super::super::jwt::DEFAULT_KEYS_REFRESH,
            )?;
            let keys_max_stale = seconds(
                raw_identity.jwks_max_stale_seconds,
                "jwks_max_stale_seconds",
                0..=604_800,
                super::super::jwt::DEFAULT_KEYS_MAX_STALE,
            )?;
            IdentityConfig::Jwt(super::super::jwt::JwtIdentity {
                keys_refresh,
                keys_max_stale,
                issuer,
                audience,
                jwks_url,
                tenant_claim: raw_identity.tenant_claim,
                tenant: raw_identity.tenant.unwrap_or_else(|| "default".into()),
            })
        }
        "anonymous" => IdentityConfig::Anonymous {
            tenant: raw_identity.tenant.unwrap_or_else(|| "default".into()),
            subject: "anonymous".to_owned(),
        },
        other => {
            return Err(src.at(
                raw_identity.mode.span(),
                format!(
                    "identity.mode: unknown mode `{other}` (known: trusted-header, jwt, anonymous)"
                ),
            ));
        }
    };
    Ok((identity, login, login_span))
}
