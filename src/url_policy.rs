//! Which URLs learned from servers may be fetched (SSRF policy).
//!
//! Metadata documents name further URLs (`resource_metadata`, authorization servers,
//! endpoints). A client running on a server must not let a hostile MCP server point it
//! at internal services, so by default only `https` URLs whose host is not a private,
//! loopback or link-local address are allowed. Tests and local development opt in to
//! plain `http` on loopback explicitly.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// The SSRF policy for URLs learned from servers.
///
/// ```
/// use tower_mcp_auth::UrlPolicy;
///
/// let strict = UrlPolicy::default();
/// assert!(strict.check(&"https://auth.example.com/token".parse().unwrap()).is_ok());
/// assert!(strict.check(&"http://auth.example.com/token".parse().unwrap()).is_err());
/// assert!(strict.check(&"https://169.254.169.254/latest".parse().unwrap()).is_err());
///
/// let dev = UrlPolicy::default().allow_loopback_http();
/// assert!(dev.check(&"http://127.0.0.1:8080/mcp".parse().unwrap()).is_ok());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    loopback_http: bool,
    private_ranges: bool,
}

/// Why a URL was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlRefused {
    /// Not `https` (and not allowed loopback `http`).
    #[error("{0}: only https is allowed")]
    NotHttps(String),
    /// The host is a private, loopback, link-local or otherwise internal address.
    #[error("{0}: internal address")]
    InternalAddress(String),
    /// No host, or credentials in the URL.
    #[error("{0}: not a plain absolute URL")]
    Malformed(String),
}

impl UrlPolicy {
    /// Also allow `http` and loopback addresses (`127.0.0.0/8`, `::1`, `localhost`): for
    /// tests and local development.
    pub fn allow_loopback_http(mut self) -> Self {
        self.loopback_http = true;
        self
    }

    /// Also allow private and link-local addresses (a client inside a trusted network).
    pub fn allow_private_ranges(mut self) -> Self {
        self.private_ranges = true;
        self
    }

    /// Whether `url` may be fetched.
    pub fn check(&self, url: &Url) -> Result<(), UrlRefused> {
        let shown = || format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlRefused::Malformed(shown()));
        }
        let loopback = match url.host() {
            None => return Err(UrlRefused::Malformed(shown())),
            Some(Host::Domain(domain)) => {
                let domain = domain.trim_end_matches('.').to_ascii_lowercase();
                if domain == "localhost" || domain.ends_with(".localhost") {
                    true
                } else if domain.ends_with(".internal") || domain.ends_with(".local") {
                    if !self.private_ranges {
                        return Err(UrlRefused::InternalAddress(shown()));
                    }
                    false
                } else {
                    false
                }
            }
            Some(Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip), &shown)?,
            Some(Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip), &shown)?,
        };
        if loopback && !self.loopback_http {
            return Err(UrlRefused::InternalAddress(shown()));
        }
        match url.scheme() {
            "https" => Ok(()),
            "http" if loopback && self.loopback_http => Ok(()),
            _ => Err(UrlRefused::NotHttps(shown())),
        }
    }

    /// Returns whether `ip` is loopback (allowed later only with `loopback_http`), or an
    /// error for other internal addresses.
    fn check_ip(&self, ip: IpAddr, shown: &dyn Fn() -> String) -> Result<bool, UrlRefused> {
        if ip.is_loopback() {
            return Ok(true);
        }
        let internal = match ip {
            IpAddr::V4(v4) => is_internal_v4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if v4.is_loopback() => return Ok(true),
                Some(v4) => is_internal_v4(v4),
                None => is_internal_v6(v6),
            },
        };
        if internal && !self.private_ranges {
            return Err(UrlRefused::InternalAddress(shown()));
        }
        Ok(false)
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT, 100.64/10
        || a == 0
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_unspecified()
        || (first & 0xfe00) == 0xfc00 // unique local, fc00::/7
        || (first & 0xffc0) == 0xfe80 // link-local, fe80::/10
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(policy: UrlPolicy, url: &str) -> bool {
        policy.check(&url.parse().unwrap()).is_ok()
    }

    #[test]
    fn strict_policy_blocks_internal_targets() {
        let strict = UrlPolicy::default();
        for blocked in [
            "http://example.com/",
            "https://10.0.0.1/",
            "https://172.16.5.4/",
            "https://192.168.1.1/",
            "https://127.0.0.1/",
            "https://169.254.169.254/",
            "https://100.64.0.1/",
            "https://[::1]/",
            "https://[fd00::1]/",
            "https://[fe80::1]/",
            "https://[::ffff:10.0.0.1]/",
            "https://localhost/",
            "https://metadata.google.internal/",
            "https://user:pw@example.com/",
            "ftp://example.com/",
        ] {
            assert!(!check(strict, blocked), "{blocked}");
        }
        for allowed in [
            "https://example.com/",
            "https://8.8.8.8/",
            "https://[2001:db8::1]/",
        ] {
            assert!(check(strict, allowed), "{allowed}");
        }
    }

    #[test]
    fn opt_ins_are_narrow() {
        let dev = UrlPolicy::default().allow_loopback_http();
        assert!(check(dev, "http://127.0.0.1:9/"));
        assert!(check(dev, "http://localhost:9/"));
        assert!(check(dev, "http://[::1]:9/"));
        assert!(!check(dev, "http://example.com/"), "http only on loopback");
        assert!(!check(dev, "https://10.0.0.1/"));
        let private = UrlPolicy::default().allow_private_ranges();
        assert!(check(private, "https://10.0.0.1/"));
        assert!(
            !check(private, "https://127.0.0.1/"),
            "loopback needs its own opt-in"
        );
    }
}
