//! The gateway's configuration: one TOML file, secrets only from the environment.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use http::{HeaderName, HeaderValue};

mod identity;
mod raw;
#[cfg(test)]
mod tests;
mod upstream;

use raw::{RawConfig, RawStore, Source, parse_sealing_keys};

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
/// let config = mcp_auth_proxy::ProxyConfig::parse(r#"
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
    /// HTTP/2 without TLS by prior knowledge (`h2c = true`): every caller's requests
    /// and streams to this upstream share a few connections. Over https, HTTP/2 is
    /// negotiated (ALPN) whenever the upstream offers it.
    pub h2c: bool,
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
    Obo(Box<tower_mcp_auth::obo::OboConfig>),
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
        let src = Source { text, env };
        let raw: RawConfig = toml::from_str(text).map_err(|error| ConfigError {
            line: error.span().and_then(|span| src.line_of(span)),
            message: error.message().to_owned(),
        })?;
        let listen = raw.listen.get_ref().parse().map_err(|_| {
            src.at(
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
                let value = src.env_secret(variable, "store.sealing_key_env")?;
                Some(parse_sealing_keys(&value).map_err(|message| {
                    src.at(
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
                return Err(src.at(
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
            }) => StoreConfig::Redis(src.env_secret(&variable, "store")?),
            Some(RawStore { .. }) => StoreConfig::Sqlite(PathBuf::from("mcp-auth-proxy.db")),
        };
        let (identity, login, login_span) = identity::identity(&src, raw.identity)?;
        let max_body_bytes = match raw.max_body_bytes {
            None => DEFAULT_MAX_BODY_BYTES,
            Some(max) => usize::try_from(*max.get_ref())
                .ok()
                .filter(|max| *max > 0)
                .ok_or_else(|| src.at(max.span(), "max_body_bytes: must be positive".into()))?,
        };
        let public_url = match raw.public_url {
            None => None,
            Some(text) => {
                let url = url::Url::parse(text.get_ref())
                    .ok()
                    .filter(|url| matches!(url.scheme(), "http" | "https"))
                    .filter(|url| url.path() == "/" && url.query().is_none())
                    .ok_or_else(|| {
                        src.at(
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
                let key = src.env_secret(&variable, "cookie_key_env")?;
                if key.len() < 32 {
                    return Err(src.at(
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
                src.at(
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
                src.at(
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
                return Err(src.at(
                    login_span,
                    "identity.login_client_id: only with mode `jwt` (the other modes know the browser's user already)".into(),
                ));
            }
            if public_url.is_none() || cookie_key.is_none() {
                return Err(src.at(
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
                return Err(src.at(
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
        let context = upstream::Context {
            identity: &identity,
            login: login.is_some(),
            browser_pages: public_url.is_some() && cookie_key.is_some(),
        };
        for raw_upstream in raw.upstream {
            let raw_upstream = raw_upstream.into_inner();
            upstreams.push(upstream::upstream(
                &src,
                &context,
                raw_upstream,
                &mut names,
            )?);
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
