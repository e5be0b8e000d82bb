//! The file as serde reads it (every value with its span, for errors with a line),
//! and the [`Source`] errors and secrets are resolved against.

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;

/// The configuration's text and the environment secrets are read from.
pub(super) struct Source<'a> {
    pub(super) text: &'a str,
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
}

impl Source<'_> {
    /// The 1-based line a span starts on.
    pub(super) fn line_of(&self, span: Range<usize>) -> Option<usize> {
        let end = span.start.min(self.text.len());
        Some(
            self.text.as_bytes()[..end]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1,
        )
    }

    /// An error at the line of `span`.
    pub(super) fn at(&self, span: Range<usize>, message: String) -> ConfigError {
        ConfigError {
            line: self.line_of(span),
            message,
        }
    }

    /// A secret named by an environment variable; unset is an error at its line.
    pub(super) fn env_secret(
        &self,
        variable: &Spanned<String>,
        field: &str,
    ) -> Result<String, ConfigError> {
        (self.env)(variable.get_ref()).ok_or_else(|| {
            self.at(
                variable.span(),
                format!(
                    "{field}: environment variable `{}` is not set",
                    variable.get_ref()
                ),
            )
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) listen: Spanned<String>,
    #[serde(default)]
    pub(super) store: Option<RawStore>,
    pub(super) identity: Spanned<RawIdentity>,
    #[serde(default)]
    pub(super) max_body_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    pub(super) upstream: Vec<Spanned<RawUpstream>>,
    pub(super) public_url: Option<Spanned<String>>,
    pub(super) cookie_key_env: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) allow_loopback_http: bool,
    #[serde(default)]
    pub(super) allowed_hosts: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) allowed_origins: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) sqlite: Option<Spanned<String>>,
    pub(super) redis_url_env: Option<Spanned<String>>,
    pub(super) sealing_key_env: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentity {
    pub(super) mode: Spanned<String>,
    pub(super) header: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) tenant: Option<String>,
    #[serde(default)]
    pub(super) trusted_sources: Vec<Spanned<String>>,
    pub(super) issuer: Option<Spanned<String>>,
    pub(super) audience: Option<Spanned<String>>,
    pub(super) jwks_url: Option<Spanned<String>>,
    pub(super) tenant_claim: Option<String>,
    pub(super) jwks_refresh_seconds: Option<Spanned<u64>>,
    pub(super) jwks_max_stale_seconds: Option<Spanned<u64>>,
    pub(super) login_client_id: Option<Spanned<String>>,
    pub(super) login_client_secret_env: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) name: Spanned<String>,
    pub(super) url: Spanned<String>,
    pub(super) auth: Spanned<String>,
    pub(super) header_name: Option<Spanned<String>>,
    pub(super) header_value_env: Option<Spanned<String>>,
    pub(super) issuer: Option<Spanned<String>>,
    pub(super) client_id: Option<Spanned<String>>,
    pub(super) client_secret_env: Option<Spanned<String>>,
    pub(super) token_endpoint: Option<Spanned<String>>,
    pub(super) grant: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) scopes: Vec<String>,
    pub(super) audience: Option<String>,
    pub(super) wait_seconds: Option<Spanned<u64>>,
    pub(super) client_metadata_url: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) h2c: Option<Spanned<bool>>,
}

/// Sealing keys from one environment variable: `id:hex` entries (64 hex digits: 32
/// bytes) separated by commas; the first seals, every one opens.
pub(super) fn parse_sealing_keys(
    value: &str,
) -> Result<tower_mcp_auth::store::SealingKeys, String> {
    const FORMAT: &str = "must hold `id:key` entries separated by commas, each key 64 hex digits (e.g. `2026-12:$(openssl rand -hex 32)`); the first seals";
    let mut keys: Option<tower_mcp_auth::store::SealingKeys> = None;
    for entry in value.split(',').map(str::trim) {
        let (id, hex) = entry.split_once(':').ok_or(FORMAT)?;
        let bytes: Vec<u8> = (0..hex.len() / 2)
            .map(|i| {
                hex.get(2 * i..2 * i + 2)
                    .and_then(|b| u8::from_str_radix(b, 16).ok())
            })
            .collect::<Option<_>>()
            .ok_or(FORMAT)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| FORMAT)?;
        if hex.len() != 64 {
            return Err(FORMAT.into());
        }
        keys = Some(
            match keys {
                None => tower_mcp_auth::store::SealingKeys::try_new(id, bytes),
                Some(keys) => keys.try_with_previous(id, bytes),
            }
            .map_err(|error| error.to_string())?,
        );
    }
    keys.ok_or_else(|| FORMAT.into())
}
