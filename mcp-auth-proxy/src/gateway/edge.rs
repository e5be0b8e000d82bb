//! The gateway's edge, checked before identity: the `Host` a request names (DNS
//! rebinding), the `Origin` a browser attaches (cross-site requests), and the media
//! type of an MCP POST (a cross-site form or `text/plain` POST needs no preflight).
//!
//! A DNS-rebinding page reaches the gateway under the attacker's own name, so its
//! `Host` is a name the gateway was never told about: refused. An IP literal or
//! `localhost` cannot be rebound and is always accepted, as are the host of
//! `public_url` and the configured `allowed_hosts`. A browser's `Origin`, where
//! present, must be the gateway's own (the origin of `public_url`, or the origin of the
//! accepted `Host` itself) or one of `allowed_origins`.

use http::{HeaderMap, StatusCode, Uri, header};

/// Why a request was refused at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EdgeRefusal {
    /// `Host` names a host the gateway does not serve (or is not one host).
    Host,
    /// `Origin` is another site's.
    Origin,
}

impl EdgeRefusal {
    pub(crate) fn status(self) -> StatusCode {
        StatusCode::FORBIDDEN
    }

    pub(crate) fn message(self) -> &'static str {
        match self {
            EdgeRefusal::Host => "this gateway is not served under that host name (allowed_hosts)",
            EdgeRefusal::Origin => "cross-origin requests are not allowed (allowed_origins)",
        }
    }
}

/// The hosts and origins the gateway answers, built once from its configuration.
#[derive(Debug, Clone)]
pub(crate) struct EdgePolicy {
    /// Lower-case host names accepted besides IP literals and `localhost`.
    hosts: Vec<String>,
    /// ASCII-serialised origins accepted besides the gateway's own.
    origins: Vec<String>,
}

impl EdgePolicy {
    /// `public_url`'s host and origin, plus the configured lists (already validated by
    /// the configuration's parser).
    pub(crate) fn new(
        public_url: Option<&url::Url>,
        allowed_hosts: &[String],
        allowed_origins: &[String],
    ) -> Self {
        let mut hosts: Vec<String> = allowed_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        let mut origins: Vec<String> = allowed_origins.to_vec();
        if let Some(url) = public_url {
            if let Some(host) = url.host_str() {
                hosts.push(host.to_ascii_lowercase());
            }
            origins.push(url.origin().ascii_serialization());
        }
        Self { hosts, origins }
    }

    /// Accepts or refuses a request by its headers (and, for HTTP/2, its URI's
    /// authority).
    pub(crate) fn check(&self, headers: &HeaderMap, uri: &Uri) -> Result<(), EdgeRefusal> {
        let mut hosts = headers.get_all(header::HOST).iter();
        let host = match (hosts.next(), hosts.next()) {
            (Some(_), Some(_)) => return Err(EdgeRefusal::Host),
            (Some(value), None) => Some(
                value
                    .to_str()
                    .ok()
                    .and_then(|v| v.parse::<http::uri::Authority>().ok())
                    .ok_or(EdgeRefusal::Host)?,
            ),
            // HTTP/2 carries the host in the URI; no browser sends neither.
            (None, _) => uri.authority().cloned(),
        };
        if let Some(host) = &host
            && !self.host_allowed(host.host())
        {
            return Err(EdgeRefusal::Host);
        }
        let mut origins = headers.get_all(header::ORIGIN).iter();
        match (origins.next(), origins.next()) {
            (None, _) => Ok(()),
            (Some(_), Some(_)) => Err(EdgeRefusal::Origin),
            (Some(origin), None) => {
                let origin = origin.to_str().map_err(|_| EdgeRefusal::Origin)?;
                if self.origin_allowed(origin, host.as_ref()) {
                    Ok(())
                } else {
                    Err(EdgeRefusal::Origin)
                }
            }
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        literal.parse::<std::net::IpAddr>().is_ok()
            || host == "localhost"
            || self.hosts.contains(&host)
    }

    fn origin_allowed(&self, origin: &str, host: Option<&http::uri::Authority>) -> bool {
        // `null` (sandboxed frames, file pages) and anything unparsable are foreign.
        let Ok(url) = url::Url::parse(origin) else {
            return false;
        };
        let serialized = url.origin().ascii_serialization();
        if self.origins.contains(&serialized) {
            return true;
        }
        // Same origin: the page was served under the very host this request names
        // (already accepted above), so it is one of the gateway's own pages.
        let Some(host) = host else {
            return false;
        };
        let default_port = match url.scheme() {
            "http" => 80,
            "https" => 443,
            _ => return false,
        };
        url.host_str()
            .is_some_and(|h| h.eq_ignore_ascii_case(host.host()))
            && url.port_or_known_default() == Some(host.port_u16().unwrap_or(default_port))
    }
}

/// A configured `allowed_hosts` entry: a host name, optionally with a port (ignored:
/// a rebinding page names the attacker's host, whatever the port).
pub(crate) fn parse_host(text: &str) -> Option<String> {
    let authority = text.parse::<http::uri::Authority>().ok()?;
    (authority.as_str() == text && !authority.host().is_empty() && !text.contains('@'))
        .then(|| authority.host().to_ascii_lowercase())
}

/// A configured `allowed_origins` entry, serialised as browsers send it.
pub(crate) fn parse_origin(text: &str) -> Option<String> {
    let url = url::Url::parse(text).ok()?;
    (matches!(url.scheme(), "http" | "https")
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty())
    .then(|| url.origin().ascii_serialization())
}

/// Whether an MCP POST declares a JSON body (`application/json`, parameters allowed):
/// a browser sends another site's `text/plain` or form POST without a preflight, never
/// a JSON one.
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn policy() -> EdgePolicy {
        EdgePolicy::new(
            Some(&"https://mcp.example.com".parse().unwrap()),
            &["gw.internal".into()],
            &["https://chat.example.com".into()],
        )
    }

    #[test]
    fn rebound_names_are_refused_literals_and_configured_names_pass() {
        let uri = Uri::from_static("/x/mcp");
        let policy = policy();
        for host in [
            "127.0.0.1:8080",
            "[::1]:8080",
            "localhost:8080",
            "LOCALHOST",
            "mcp.example.com",
            "gw.internal:9000",
            "10.1.2.3",
        ] {
            assert_eq!(
                policy.check(&headers(&[("host", host)]), &uri),
                Ok(()),
                "{host}"
            );
        }
        for host in [
            "rebind.attacker.example:8080",
            "mcp.example.com.attacker.example",
            "a b",
        ] {
            assert_eq!(
                policy.check(&headers(&[("host", host)]), &uri),
                Err(EdgeRefusal::Host),
                "{host}"
            );
        }
        let two = headers(&[("host", "127.0.0.1"), ("host", "localhost")]);
        assert_eq!(policy.check(&two, &uri), Err(EdgeRefusal::Host));
        // HTTP/2: the authority is in the URI.
        let h2 = Uri::from_static("https://rebind.attacker.example/x/mcp");
        assert_eq!(policy.check(&HeaderMap::new(), &h2), Err(EdgeRefusal::Host));
    }

    #[test]
    fn only_the_gateways_own_and_configured_origins_pass() {
        let uri = Uri::from_static("/x/mcp");
        let policy = policy();
        let check = |host: &str, origin: &str| {
            policy.check(&headers(&[("host", host), ("origin", origin)]), &uri)
        };
        assert_eq!(check("127.0.0.1:8080", "http://127.0.0.1:8080"), Ok(()));
        assert_eq!(check("mcp.example.com", "https://mcp.example.com"), Ok(()));
        assert_eq!(check("127.0.0.1:8080", "https://chat.example.com"), Ok(()));
        assert_eq!(check("127.0.0.1:8080", "https://mcp.example.com"), Ok(()));
        for origin in [
            "http://attacker.example",
            "http://127.0.0.1:9999",
            "null",
            "https://chat.example.com.attacker.example",
        ] {
            assert_eq!(
                check("127.0.0.1:8080", origin),
                Err(EdgeRefusal::Origin),
                "{origin}"
            );
        }
    }

    #[test]
    fn only_json_posts_pass() {
        assert!(is_json(&headers(&[("content-type", "application/json")])));
        assert!(is_json(&headers(&[(
            "content-type",
            "Application/JSON; charset=utf-8"
        )])));
        for kind in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "application/jsonx",
        ] {
            assert!(!is_json(&headers(&[("content-type", kind)])), "{kind}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }
}
