//! The gateway's configuration: one TOML file, secrets only from the environment.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;

use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use toml::Spanned;

/// A configuration error, with the line it is about (1-based) when it has one.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The line of the offending value, if the error is about one.
    pub line: Option<usize>,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// The gateway's configuration, validated.
///
/// ```
/// let config = tower_mcp_auth::proxy::ProxyConfig::parse(r#"
/// listen = "127.0.0.1:8080"
///
/// [identity]
/// mode = "trusted-header"
/// header = "x-user"
/// trusted_sources = ["127.0.0.1"]
///
/// [[upstream]]
/// name = "everything"
/// url = "http://127.0.0.1:3001/mcp"
/// auth = "none"
/// "#, &|_| None).unwrap();
/// assert_eq!(config.upstreams[0].name, "everything");
/// ```
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Where the gateway listens.
    pub listen: SocketAddr,
    /// Where credentials and flows live.
    pub store: StoreConfig,
    /// Who the caller is.
    pub identity: IdentityConfig,
    /// The MCP servers behind the gateway, reached at `/{name}/mcp`.
    pub upstreams: Vec<UpstreamConfig>,
    /// The largest request body accepted (bytes); larger ones get 413.
    pub max_body_bytes: usize,
    /// Where browsers reach the gateway: sign-in links and OAuth callbacks are under
    /// `{public_url}/oauth/{upstream}/`. Required by `oauth` upstreams.
    pub public_url: Option<url::Url>,
    /// The key that signs the sign-in cookie (from the environment, 32 bytes or more).
    /// Required by `oauth` upstreams.
    pub cookie_key: Option<tower_mcp_auth::Secret>,
    /// The gateway's own sign-in of browsers (identity mode `jwt` with
    /// `login_client_id`): its web pages and sign-in links know the browser's user
    /// from an OpenID Connect login at the identity provider, not from a bearer token.
    pub login: Option<LoginConfig>,
    /// The keys that seal tokens, PKCE verifiers and client secrets in the store
    /// (`[store] sealing_key_env`): the first seals, all open (rotation). `None`: the
    /// store holds them unsealed (a warning at start).
    pub sealing: Option<tower_mcp_auth::store::SealingKeys>,
    /// Lets upstreams and their authorization servers be plain `http` on loopback
    /// (local development and tests only; default false).
    pub allow_loopback_http: bool,
    /// Host names the gateway answers besides IP literals, `localhost` and
    /// `public_url`'s host (lower case, without port): any other `Host` is refused
    /// (DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// Browser origins allowed to call the gateway besides its own (e.g. a web chat
    /// app's `https://chat.example.com`); a request with any other `Origin` is refused.
    pub allowed_origins: Vec<String>,
}

/// The client the gateway signs browsers in as, at the `jwt` identity's issuer
/// (OpenID Connect, authorization code with PKCE; redirect URI
/// `{public_url}/login/callback`).
#[derive(Clone)]
pub struct LoginConfig {
    /// The client id registered at the issuer.
    pub client_id: String,
    /// Its secret (HTTP Basic at the token endpoint); `None`: a public client.
    pub client_secret: Option<tower_mcp_auth::Secret>,
}

impl fmt::Debug for LoginConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginConfig")
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

/// Where credentials and flows live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// A SQLite file (the default: `mcp-auth-proxy.db` beside the working directory).
    Sqlite(PathBuf),
    /// A Redis URL, for replicas.
    Redis(String),
}

/// How the gateway learns who is calling.
#[derive(Debug, Clone)]
pub enum IdentityConfig {
    /// A header set by a front proxy, believed only from `trusted_sources`.
    TrustedHeader {
        /// The header carrying the user (the principal's subject).
        header: HeaderName,
        /// The tenant of every principal.
        tenant: String,
        /// The peers allowed to set the header.
        trusted_sources: Vec<IpAddr>,
    },
    /// A JWT bearer token from the caller's identity provider, verified against its
    /// JWKS: principal = tenant (claim or fixed) + `sub`.
    Jwt(super::jwt::JwtIdentity),
    /// Every caller is one principal: for a single-user gateway on a workstation or a
    /// test bench, never for a shared one.
    Anonymous {
        /// The principal every request acts for.
        tenant: String,
        /// The principal's subject.
        subject: String,
    },
}

/// One MCP server behind the gateway.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The path segment: the upstream is served at `/{name}/mcp`.
    pub name: String,
    /// The MCP endpoint.
    pub url: url::Url,
    /// How the gateway authenticates to it.
    pub auth: UpstreamAuth,
}

/// How the gateway authenticates to an upstream.
#[derive(Clone)]
pub enum UpstreamAuth {
    /// Nothing added.
    None,
    /// Each user's own OAuth credentials for the upstream: discovery, then the client
    /// registration (pre-registered at its issuer, or dynamic), a sign-in link for users
    /// who have none yet, silent refresh after that.
    OAuth {
        /// Client credentials registered beforehand at `issuer`; `None`: register
        /// dynamically.
        pre_registered: Option<PreRegistered>,
        /// Hold a request of a user without credentials this long for the sign-in to
        /// finish (the link is on `/connections`) before answering "connect first";
        /// `None`: answer at once.
        wait: Option<std::time::Duration>,
        /// The gateway's Client ID Metadata Document URL, used as its `client_id` where
        /// the authorization server supports CIMD (before dynamic registration).
        metadata_document: Option<url::Url>,
    },
    /// The caller's inbound JWT exchanged On-Behalf-Of the user for a token for the
    /// upstream (identity mode `jwt` only: the inbound token is the assertion).
    Obo(Box<tower_mcp_auth::OboConfig>),
    /// A static header, its value from the environment.
    Header {
        /// The header.
        name: HeaderName,
        /// Its value (sensitive).
        value: HeaderValue,
    },
}

/// Client credentials registered at an authorization server beforehand.
#[derive(Clone)]
pub struct PreRegistered {
    /// The authorization server (issuer identifier) they were registered at.
    pub issuer: String,
    /// The client id.
    pub client_id: String,
    /// The client secret, for confidential clients (from the environment).
    pub client_secret: Option<tower_mcp_auth::Secret>,
}

impl fmt::Debug for PreRegistered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreRegistered")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

impl fmt::Debug for UpstreamAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamAuth::None => f.write_str("None"),
            UpstreamAuth::OAuth {
                pre_registered,
                wait,
                metadata_document,
            } => f
                .debug_struct("OAuth")
                .field("pre_registered", pre_registered)
                .field("wait", wait)
                .field("metadata_document", metadata_document)
                .finish(),
            // OboConfig's Debug redacts its secrets.
            UpstreamAuth::Obo(config) => f.debug_tuple("Obo").field(config).finish(),
            UpstreamAuth::Header { name, .. } => {
                write!(f, "Header {{ name: {name}, value: [redacted] }}")
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Spanned<String>,
    #[serde(default)]
    store: Option<RawStore>,
    identity: Spanned<RawIdentity>,
    #[serde(default)]
    max_body_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    upstream: Vec<Spanned<RawUpstream>>,
    public_url: Option<Spanned<String>>,
    cookie_key_env: Option<Spanned<String>>,
    #[serde(default)]
    allow_loopback_http: bool,
    #[serde(default)]
    allowed_hosts: Vec<Spanned<String>>,
    #[serde(default)]
    allowed_origins: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    sqlite: Option<Spanned<String>>,
    redis_url_env: Option<Spanned<String>>,
    sealing_key_env: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    mode: Spanned<String>,
    header: Option<Spanned<String>>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    trusted_sources: Vec<Spanned<String>>,
    issuer: Option<Spanned<String>>,
    audience: Option<Spanned<String>>,
    jwks_url: Option<Spanned<String>>,
    tenant_claim: Option<String>,
    jwks_refresh_seconds: Option<Spanned<u64>>,
    jwks_max_stale_seconds: Option<Spanned<u64>>,
    login_client_id: Option<Spanned<String>>,
    login_client_secret_env: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: Spanned<String>,
    url: Spanned<String>,
    auth: Spanned<String>,
    header_name: Option<Spanned<String>>,
    header_value_env: Option<Spanned<String>>,
    issuer: Option<Spanned<String>>,
    client_id: Option<Spanned<String>>,
    client_secret_env: Option<Spanned<String>>,
    token_endpoint: Option<Spanned<String>>,
    grant: Option<Spanned<String>>,
    #[serde(default)]
    scopes: Vec<String>,
    audience: Option<String>,
    wait_seconds: Option<Spanned<u64>>,
    client_metadata_url: Option<Spanned<String>>,
}

/// Sealing keys from one environment variable: `id:hex` entries (64 hex digits: 32
/// bytes) separated by commas; the first seals, every one opens.
fn parse_sealing_keys(value: &str) -> Result<tower_mcp_auth::store::SealingKeys, String> {
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

/// The longest an `oauth` upstream's `wait_seconds` may hold a request.
pub const MAX_WAIT_SECONDS: u64 = 600;

/// The default request body cap: 4 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;

impl ProxyConfig {
    /// Reads and validates the file at `path`, secrets from the process environment.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            line: None,
            message: format!("cannot read {}: {error}", path.display()),
        })?;
        Self::parse(&text, &|name| std::env::var(name).ok())
    }

    /// Parses and validates `text`; `env` looks secrets up by variable name.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let line_of = |span: Range<usize>| {
            let end = span.start.min(text.len());
            Some(
                text.as_bytes()[..end]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
                    + 1,
            )
        };
        let at = |span: Range<usize>, message: String| ConfigError {
            line: line_of(span),
            message,
        };
        // A secret named by an environment variable; unset is an error at its line.
        let from_env = |variable: &Spanned<String>, field: &str| {
            env(variable.get_ref()).ok_or_else(|| {
                at(
                    variable.span(),
                    format!(
                        "{field}: environment variable `{}` is not set",
                        variable.get_ref()
                    ),
                )
            })
        };
        let raw: RawConfig = toml::from_str(text).map_err(|error| ConfigError {
            line: error.span().and_then(line_of),
            message: error.message().to_owned(),
        })?;
        let listen = raw.listen.get_ref().parse().map_err(|_| {
            at(
                raw.listen.span(),
                format!(
                    "listen: `{}` is not an address and port (e.g. 127.0.0.1:8080)",
                    raw.listen.get_ref()
                ),
            )
        })?;
        let sealing = match raw
            .store
            .as_ref()
            .and_then(|store| store.sealing_key_env.as_ref())
        {
            None => None,
            Some(variable) => {
                let value = from_env(variable, "store.sealing_key_env")?;
                Some(parse_sealing_keys(&value).map_err(|message| {
                    at(
                        variable.span(),
                        format!("store.sealing_key_env: `{}` {message}", variable.get_ref()),
                    )
                })?)
            }
        };
        let store = match raw.store {
            None => StoreConfig::Sqlite(PathBuf::from("mcp-auth-proxy.db")),
            Some(RawStore {
                sqlite: Some(_),
                redis_url_env: Some(redis),
                ..
            }) => {
                return Err(at(
                    redis.span(),
                    "store: give `sqlite` or `redis_url_env`, not both".into(),
                ));
            }
            Some(RawStore {
                sqlite: Some(path), ..
            }) => StoreConfig::Sqlite(PathBuf::from(path.into_inner())),
            Some(RawStore {
                redis_url_env: Some(variable),
                ..
            }) => StoreConfig::Redis(from_env(&variable, "store")?),
            Some(RawStore { .. }) => StoreConfig::Sqlite(PathBuf::from("mcp-auth-proxy.db")),
        };
        let identity_span = raw.identity.span();
        let raw_identity = raw.identity.into_inner();
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
                    Some(variable) => Some(tower_mcp_auth::Secret::new(from_env(
                        variable,
                        "identity.login_client_secret_env",
                    )?)),
                    None => None,
                },
            }),
            (None, Some(variable)) => {
                return Err(at(
                    variable.span(),
                    "identity.login_client_secret_env: only with `login_client_id`".into(),
                ));
            }
            (None, None) => None,
        };
        let identity = match raw_identity.mode.get_ref().as_str() {
            "trusted-header" => {
                let header = raw_identity.header.ok_or_else(|| {
                    at(
                        identity_span.clone(),
                        "identity: mode `trusted-header` needs `header`".into(),
                    )
                })?;
                let name = HeaderName::try_from(header.get_ref().as_str()).map_err(|_| {
                    at(
                        header.span(),
                        format!(
                            "identity.header: `{}` is not a header name",
                            header.get_ref()
                        ),
                    )
                })?;
                if raw_identity.trusted_sources.is_empty() {
                    return Err(at(
                        identity_span,
                        "identity: `trusted_sources` must list the front proxy's addresses".into(),
                    ));
                }
                let mut sources = Vec::new();
                for source in raw_identity.trusted_sources {
                    sources.push(source.get_ref().parse::<IpAddr>().map_err(|_| {
                        at(
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
                        at(
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
                        at(
                            jwks.span(),
                            format!(
                                "identity.jwks_url: `{}` is not an http(s) URL",
                                jwks.get_ref()
                            ),
                        )
                    })?;
                let seconds =
                    |value: Option<Spanned<u64>>,
                     name: &str,
                     range: std::ops::RangeInclusive<u64>,
                     default: std::time::Duration| match value {
                        None => Ok(default),
                        Some(value) if range.contains(value.get_ref()) => {
                            Ok(std::time::Duration::from_secs(*value.get_ref()))
                        }
                        Some(value) => Err(at(
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
                    super::jwt::DEFAULT_KEYS_REFRESH,
                )?;
                let keys_max_stale = seconds(
                    raw_identity.jwks_max_stale_seconds,
                    "jwks_max_stale_seconds",
                    0..=604_800,
                    super::jwt::DEFAULT_KEYS_MAX_STALE,
                )?;
                IdentityConfig::Jwt(super::jwt::JwtIdentity {
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
                return Err(at(
                    raw_identity.mode.span(),
                    format!(
                        "identity.mode: unknown mode `{other}` (known: trusted-header, jwt, anonymous)"
                    ),
                ));
            }
        };
        let max_body_bytes = match raw.max_body_bytes {
            None => DEFAULT_MAX_BODY_BYTES,
            Some(max) => usize::try_from(*max.get_ref())
                .ok()
                .filter(|max| *max > 0)
                .ok_or_else(|| at(max.span(), "max_body_bytes: must be positive".into()))?,
        };
        let public_url = match raw.public_url {
            None => None,
            Some(text) => {
                let url = url::Url::parse(text.get_ref())
                    .ok()
                    .filter(|url| matches!(url.scheme(), "http" | "https"))
                    .filter(|url| url.path() == "/" && url.query().is_none())
                    .ok_or_else(|| {
                        at(
                            text.span(),
                            format!(
                                "public_url: `{}` must be an http(s) origin without a path, as browsers reach the gateway (e.g. https://mcp.example.com)",
                                text.get_ref()
                            ),
                        )
                    })?;
                Some(url)
            }
        };
        let cookie_key = match raw.cookie_key_env {
            None => None,
            Some(variable) => {
                let key = from_env(&variable, "cookie_key_env")?;
                if key.len() < 32 {
                    return Err(at(
                        variable.span(),
                        format!(
                            "cookie_key_env: `{}` must hold at least 32 bytes (e.g. `openssl rand -hex 32`)",
                            variable.get_ref()
                        ),
                    ));
                }
                Some(tower_mcp_auth::Secret::new(key))
            }
        };
        let mut allowed_hosts = Vec::new();
        for host in &raw.allowed_hosts {
            allowed_hosts.push(super::edge::parse_host(host.get_ref()).ok_or_else(|| {
                at(
                    host.span(),
                    format!(
                        "allowed_hosts: `{}` is not a host name (e.g. mcp.internal or mcp.internal:8080)",
                        host.get_ref()
                    ),
                )
            })?);
        }
        let mut allowed_origins = Vec::new();
        for origin in &raw.allowed_origins {
            allowed_origins.push(super::edge::parse_origin(origin.get_ref()).ok_or_else(|| {
                at(
                    origin.span(),
                    format!(
                        "allowed_origins: `{}` is not an http(s) origin without a path (e.g. https://chat.example.com)",
                        origin.get_ref()
                    ),
                )
            })?);
        }
        if login.is_some() {
            if !matches!(identity, IdentityConfig::Jwt(_)) {
                return Err(at(
                    login_span,
                    "identity.login_client_id: only with mode `jwt` (the other modes know the browser's user already)".into(),
                ));
            }
            if public_url.is_none() || cookie_key.is_none() {
                return Err(at(
                    login_span.clone(),
                    "identity.login_client_id: needs the top-level `public_url` (the login's redirect URI is {public_url}/login/callback) and `cookie_key_env` (the key of the session cookie)".into(),
                ));
            }
            // Over plain http the session cookie can carry neither `Secure` nor the
            // `__Host-` prefix, and cookies ignore ports: a page on another port or a
            // sibling host could plant a session of its own. Only for local development.
            let loopback = public_url.as_ref().is_some_and(|url| {
                url.scheme() == "https"
                    || (raw.allow_loopback_http
                        && match url.host() {
                            Some(url::Host::Domain(name)) => name == "localhost",
                            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                            None => false,
                        })
            });
            if !loopback {
                return Err(at(
                    login_span,
                    "identity.login_client_id: `public_url` must be https (plain http only on loopback with `allow_loopback_http`): the session cookie must be `Secure` and `__Host-`".into(),
                ));
            }
        }
        if raw.upstream.is_empty() {
            return Err(ConfigError {
                line: None,
                message: "no [[upstream]]: the gateway would have nothing to serve".into(),
            });
        }
        let mut names = HashSet::new();
        let mut upstreams = Vec::new();
        for upstream in raw.upstream {
            let upstream = upstream.into_inner();
            let name = upstream.name.get_ref();
            let valid_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_name {
                return Err(at(
                    upstream.name.span(),
                    format!("upstream.name: `{name}` must be letters, digits, `-` or `_`"),
                ));
            }
            if !names.insert(name.clone()) {
                return Err(at(
                    upstream.name.span(),
                    format!("upstream.name: `{name}` is used twice"),
                ));
            }
            let url = url::Url::parse(upstream.url.get_ref())
                .ok()
                .filter(|url| matches!(url.scheme(), "http" | "https"))
                .ok_or_else(|| {
                    at(
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
                    let (Some(header), Some(variable)) =
                        (upstream.header_name, upstream.header_value_env)
                    else {
                        return Err(at(
                            upstream.auth.span(),
                            "upstream: auth `header` needs `header_name` and `header_value_env` (the value comes from the environment, never from this file)".into(),
                        ));
                    };
                    let name = HeaderName::try_from(header.get_ref().as_str()).map_err(|_| {
                        at(
                            header.span(),
                            format!(
                                "upstream.header_name: `{}` is not a header name",
                                header.get_ref()
                            ),
                        )
                    })?;
                    let value = from_env(&variable, "upstream.header_value_env")?;
                    let mut value = HeaderValue::try_from(value).map_err(|_| {
                        at(
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
                    if matches!(identity, IdentityConfig::Jwt(_)) && login.is_none() {
                        // A browser opening a sign-in link carries no bearer token: without
                        // a login of its own the gateway could not tell whose browser it is,
                        // and a link passed to another user would connect their account.
                        return Err(at(
                            upstream.auth.span(),
                            "upstream: auth `oauth` with identity mode `jwt` needs `[identity] login_client_id`: the gateway signs browsers in at the issuer so that a sign-in link works only in its own user's browser".into(),
                        ));
                    }
                    if public_url.is_none() || cookie_key.is_none() {
                        return Err(at(
                            upstream.auth.span(),
                            "upstream: auth `oauth` needs the top-level `public_url` (where browsers reach the gateway) and `cookie_key_env` (the key of the sign-in cookie)".into(),
                        ));
                    }
                    let pre_registered = match (upstream.client_id, upstream.issuer) {
                        (None, None) => {
                            if let Some(secret) = upstream.client_secret_env {
                                return Err(at(
                                    secret.span(),
                                    "upstream.client_secret_env: only with `client_id` and `issuer`".into(),
                                ));
                            }
                            None
                        }
                        (Some(client_id), Some(issuer)) => {
                            let client_secret = match upstream.client_secret_env {
                                None => None,
                                Some(variable) => Some(tower_mcp_auth::Secret::new(from_env(
                                    &variable,
                                    "upstream.client_secret_env",
                                )?)),
                            };
                            Some(PreRegistered {
                                issuer: issuer.into_inner(),
                                client_id: client_id.into_inner(),
                                client_secret,
                            })
                        }
                        (Some(client_id), None) => {
                            return Err(at(
                                client_id.span(),
                                "upstream.client_id: pre-registered credentials name their `issuer` (the authorization server they belong to)".into(),
                            ));
                        }
                        (None, Some(issuer)) => {
                            return Err(at(
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
                            return Err(at(
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
                                    at(
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
                    if !matches!(identity, IdentityConfig::Jwt(_)) {
                        return Err(at(
                            upstream.auth.span(),
                            "upstream: auth `obo` needs identity mode `jwt` (the caller's token is what is exchanged)".into(),
                        ));
                    }
                    let (Some(endpoint), Some(client_id)) =
                        (upstream.token_endpoint, upstream.client_id)
                    else {
                        return Err(at(
                            upstream.auth.span(),
                            "upstream: auth `obo` needs `token_endpoint` and `client_id`".into(),
                        ));
                    };
                    let token_endpoint = url::Url::parse(endpoint.get_ref())
                        .ok()
                        .filter(|url| matches!(url.scheme(), "http" | "https"))
                        .ok_or_else(|| {
                            at(
                                endpoint.span(),
                                format!(
                                    "upstream.token_endpoint: `{}` is not an http(s) URL",
                                    endpoint.get_ref()
                                ),
                            )
                        })?;
                    let client_auth = match upstream.client_secret_env {
                        None => tower_mcp_auth::ClientAuth::None,
                        Some(variable) => {
                            tower_mcp_auth::ClientAuth::SecretBasic(tower_mcp_auth::Secret::new(
                                from_env(&variable, "upstream.client_secret_env")?,
                            ))
                        }
                    };
                    let grant = match upstream.grant.as_ref().map(|g| g.get_ref().as_str()) {
                        None | Some("token-exchange") => tower_mcp_auth::OboGrant::token_exchange(),
                        Some("jwt-bearer") => tower_mcp_auth::OboGrant::JwtBearer,
                        Some("entra-obo") => tower_mcp_auth::OboGrant::EntraOnBehalfOf,
                        Some(other) => {
                            let span = upstream
                                .grant
                                .as_ref()
                                .map(Spanned::span)
                                .unwrap_or_default();
                            return Err(at(
                                span,
                                format!(
                                    "upstream.grant: unknown grant `{other}` (known: token-exchange, jwt-bearer, entra-obo)"
                                ),
                            ));
                        }
                    };
                    let mut config = tower_mcp_auth::OboConfig::new(
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
                    return Err(at(
                        upstream.auth.span(),
                        format!(
                            "upstream.auth: unknown mode `{other}` (known: none, header, oauth)"
                        ),
                    ));
                }
            };
            upstreams.push(UpstreamConfig {
                name: upstream.name.into_inner(),
                url,
                auth,
            });
        }
        Ok(Self {
            listen,
            store,
            identity,
            upstreams,
            max_body_bytes,
            public_url,
            cookie_key,
            allow_loopback_http: raw.allow_loopback_http,
            login,
            sealing,
            allowed_hosts,
            allowed_origins,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"listen = "127.0.0.1:8080"

[identity]
mode = "trusted-header"
header = "x-user"
trusted_sources = ["127.0.0.1", "::1"]

[[upstream]]
name = "plain"
url = "http://127.0.0.1:3001/mcp"
auth = "none"

[[upstream]]
name = "keyed"
url = "https://mcp.example.com/mcp"
auth = "header"
header_name = "x-api-key"
header_value_env = "KEYED_SECRET"
"#;

    fn env(name: &str) -> Option<String> {
        (name == "KEYED_SECRET").then(|| "s3cr3t".to_owned())
    }

    #[test]
    fn a_good_file_parses_and_secrets_stay_out_of_debug() {
        let config = ProxyConfig::parse(GOOD, &env).unwrap();
        assert_eq!(config.upstreams.len(), 2);
        assert_eq!(
            config.store,
            StoreConfig::Sqlite("mcp-auth-proxy.db".into())
        );
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }

    #[test]
    fn every_error_names_its_line() {
        let cases = [
            (GOOD.replace("127.0.0.1:8080", "nowhere"), 1, "listen"),
            (
                GOOD.replace("mode = \"trusted-header\"", "mode = \"magic\""),
                4,
                "unknown mode",
            ),
            (
                GOOD.replace("\"::1\"", "\"not-an-ip\""),
                6,
                "not an IP address",
            ),
            (
                GOOD.replace("name = \"keyed\"", "name = \"plain\""),
                14,
                "used twice",
            ),
            (
                GOOD.replace("auth = \"none\"", "auth = \"kerberos\""),
                11,
                "unknown mode",
            ),
            (
                GOOD.replace("http://127.0.0.1:3001/mcp", "ftp://x"),
                10,
                "not an http(s) URL",
            ),
            (
                GOOD.replace("KEYED_SECRET", "MISSING_SECRET"),
                18,
                "is not set",
            ),
            (
                GOOD.replace("name = \"plain\"", "name = \"a/b\""),
                9,
                "letters, digits",
            ),
            (
                GOOD.replace("auth = \"none\"", "auth = \"none\"\nsurprise = 1"),
                12,
                "surprise",
            ),
            (GOOD.replace("listen = ", "listen = = "), 1, ""),
        ];
        for (text, line, needle) in cases {
            let error = ProxyConfig::parse(&text, &env).unwrap_err();
            assert_eq!(error.line, Some(line), "{error} in\n{text}");
            assert!(error.to_string().contains(needle), "{error}");
        }
        let jwt = GOOD.replace("mode = \"trusted-header\"", "mode = \"jwt\"");
        let error = ProxyConfig::parse(&jwt, &env).unwrap_err();
        assert_eq!(error.line, Some(3), "{error}");
        assert!(error.to_string().contains("`issuer`"), "{error}");
        let jwt = jwt.replace(
            "mode = \"jwt\"",
            "mode = \"jwt\"\nissuer = \"https://idp\"\naudience = \"gw\"\njwks_url = \"https://idp/jwks\"",
        );
        let config = ProxyConfig::parse(&jwt, &env).unwrap();
        assert!(matches!(config.identity, IdentityConfig::Jwt(_)));
        let oauth = GOOD.replace("auth = \"none\"", "auth = \"oauth\"");
        let error = ProxyConfig::parse(&oauth, &env).unwrap_err();
        assert_eq!(error.line, Some(11), "{error}");
        assert!(error.to_string().contains("public_url"), "{error}");
        let with_public = |extra: &str| {
            format!(
                "public_url = \"https://gw.example.com\"\ncookie_key_env = \"KEYED_SECRET\"\n{}",
                oauth.replace("auth = \"oauth\"", &format!("auth = \"oauth\"{extra}"))
            )
        };
        // KEYED_SECRET is 6 bytes: too short for a cookie key.
        let error = ProxyConfig::parse(&with_public(""), &env).unwrap_err();
        assert_eq!(error.line, Some(2), "{error}");
        assert!(error.to_string().contains("32 bytes"), "{error}");
        let long = |name: &str| (name == "KEYED_SECRET").then(|| "k".repeat(32));
        let config = ProxyConfig::parse(&with_public(""), &long).unwrap();
        assert!(matches!(
            config.upstreams[0].auth,
            UpstreamAuth::OAuth {
                pre_registered: None,
                wait: None,
                metadata_document: None
            }
        ));
        assert!(!format!("{config:?}").contains(&"k".repeat(32)));
        let error = ProxyConfig::parse(&with_public("\nclient_id = \"gw\""), &long).unwrap_err();
        assert_eq!(error.line, Some(14), "{error}");
        assert!(error.to_string().contains("issuer"), "{error}");
        let config = ProxyConfig::parse(
            &with_public("\nclient_metadata_url = \"https://gw.example.com/oauth/client.json\""),
            &long,
        )
        .unwrap();
        assert!(matches!(
            &config.upstreams[0].auth,
            UpstreamAuth::OAuth { metadata_document: Some(url), .. } if url.path() == "/oauth/client.json"
        ));
        let error = ProxyConfig::parse(
            &with_public("\nclient_metadata_url = \"http://gw.example.com/c.json\""),
            &long,
        )
        .unwrap_err();
        assert_eq!(error.line, Some(14), "{error}");
        let error = ProxyConfig::parse(
            &with_public("").replace("https://gw.example.com", "https://gw.example.com/sub"),
            &long,
        )
        .unwrap_err();
        assert_eq!(error.line, Some(1), "{error}");
        let error = ProxyConfig::parse("listen = \"127.0.0.1:1\"\n[identity]\nmode = \"trusted-header\"\nheader = \"x-user\"\ntrusted_sources = [\"127.0.0.1\"]\n", &env).unwrap_err();
        assert!(error.to_string().contains("no [[upstream]]"), "{error}");
    }
}
