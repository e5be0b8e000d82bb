//! Which URLs learned from servers may be fetched (SSRF policy).
//!
//! Metadata documents name further URLs (`resource_metadata`, authorization servers,
//! endpoints). A client running on a server must not let a hostile MCP server point it
//! at internal services, so by default only `https` URLs whose host is not a private,
//! loopback or link-local address are allowed. Tests and local development opt in to
//! plain `http` on loopback explicitly.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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
    #[error(
        "refused URL {0}: only https is allowed (UrlPolicy::allow_loopback_http() permits http on loopback)"
    )]
    NotHttps(String),
    /// The host is a private, loopback, link-local or otherwise internal address.
    #[error(
        "refused address {0}: internal address (UrlPolicy::allow_loopback_http() permits loopback, allow_private_ranges() private networks)"
    )]
    InternalAddress(String),
    /// No host, or credentials in the URL.
    #[error("refused URL {0}: not a plain absolute URL")]
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
            Some(Host::Ipv4(ip)) => self.check_literal(IpAddr::V4(ip), &shown)?,
            Some(Host::Ipv6(ip)) => self.check_literal(IpAddr::V6(ip), &shown)?,
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

    /// Whether a connection to `ip` is allowed: what the crate's HTTP client asks of
    /// every address a host name resolves to, at connect time, so a name that points
    /// (or rebinds) at an internal address is refused like the literal address.
    ///
    /// ```
    /// use tower_mcp_auth::UrlPolicy;
    ///
    /// let strict = UrlPolicy::default();
    /// assert!(strict.check_ip("93.184.215.14".parse().unwrap()).is_ok());
    /// assert!(strict.check_ip("169.254.169.254".parse().unwrap()).is_err());
    /// // NAT64 form of the cloud metadata address:
    /// assert!(strict.check_ip("64:ff9b::a9fe:a9fe".parse().unwrap()).is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// [`UrlRefused::InternalAddress`] for an address this policy does not allow.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), UrlRefused> {
        let allowed = match classify(ip) {
            AddressClass::Public => true,
            AddressClass::Loopback => self.loopback_http,
            AddressClass::Private => self.private_ranges,
            AddressClass::Forbidden => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(UrlRefused::InternalAddress(ip.to_string()))
        }
    }

    /// Returns whether `ip` is loopback (allowed later only with `loopback_http`), or an
    /// error for other internal addresses.
    fn check_literal(&self, ip: IpAddr, shown: &dyn Fn() -> String) -> Result<bool, UrlRefused> {
        match classify(ip) {
            AddressClass::Public => Ok(false),
            AddressClass::Loopback => Ok(true),
            AddressClass::Private if self.private_ranges => Ok(false),
            AddressClass::Private | AddressClass::Forbidden => {
                Err(UrlRefused::InternalAddress(shown()))
            }
        }
    }
}

/// What an address is, for the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AddressClass {
    /// Globally reachable.
    Public,
    /// Loopback: allowed with [`UrlPolicy::allow_loopback_http`].
    Loopback,
    /// Private networks: allowed with [`UrlPolicy::allow_private_ranges`].
    Private,
    /// Never: unspecified addresses (which reach loopback on Linux), multicast,
    /// broadcast, reserved and special-purpose ranges.
    Forbidden,
}

fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// IPv4 by the IANA special-purpose address registry (RFC 6890 and successors).
fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, c, _] = ip.octets();
    if a == 127 {
        return AddressClass::Loopback;
    }
    let private = a == 10
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT, 100.64/10
        || (a == 169 && b == 254); // link-local, cloud metadata
    if private {
        return AddressClass::Private;
    }
    let forbidden = a == 0 // "this network"; 0.0.0.0 reaches loopback
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments, 192.0.0/24
        || (a == 192 && b == 0 && c == 2) // TEST-NET-1
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 198 && (b == 18 || b == 19)) // benchmarking, 198.18/15
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224; // multicast 224/4, reserved 240/4, broadcast
    if forbidden {
        AddressClass::Forbidden
    } else {
        AddressClass::Public
    }
}

/// IPv6, unwrapping every form that embeds an IPv4 address (mapped, compatible, NAT64,
/// 6to4, Teredo) and classifying the embedded address as well.
fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let segments = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if ip.is_loopback() {
        return AddressClass::Loopback;
    }
    if ip.is_unspecified() {
        return AddressClass::Forbidden;
    }
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated).
    if segments[..5] == [0; 5] && (segments[5] == 0xffff || segments[5] == 0) {
        return classify_v4(embedded(segments[6], segments[7]));
    }
    // NAT64: 64:ff9b::/96 (well-known) embeds the target; 64:ff9b:1::/48 is local use.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return classify_v4(embedded(segments[6], segments[7]));
    }
    if segments[0] == 0x64 && segments[1] == 0xff9b && segments[2] == 1 {
        return AddressClass::Private;
    }
    // 6to4: 2002:AABB:CCDD::/48 embeds AA.BB.CC.DD.
    if segments[0] == 0x2002 {
        return worst(
            classify_v4(embedded(segments[1], segments[2])),
            AddressClass::Public,
        );
    }
    // Teredo: 2001:0::/32, server at segments 2-3, client obfuscated in 6-7.
    if segments[0] == 0x2001 && segments[1] == 0 {
        let server = classify_v4(embedded(segments[2], segments[3]));
        let client = classify_v4(embedded(!segments[6], !segments[7]));
        return worst(server, client);
    }
    let first = segments[0];
    if (first & 0xfe00) == 0xfc00 // unique local, fc00::/7
        || (first & 0xffc0) == 0xfe80 // link-local, fe80::/10
        || (first & 0xffc0) == 0xfec0
    // site-local (deprecated), fec0::/10
    {
        return AddressClass::Private;
    }
    let forbidden = (first & 0xff00) == 0xff00 // multicast
        || (first == 0x0100 && segments[1..4] == [0, 0, 0]) // discard-only, 100::/64
        || (first == 0x2001 && segments[1] == 0x0db8) // documentation
        || (first == 0x2001 && segments[1] == 0x0002 && segments[2] == 0) // benchmarking
        || (first == 0x2001 && (0x0010..0x0020).contains(&segments[1])) // ORCHID
        || (first & 0xe000) != 0x2000; // outside global unicast 2000::/3
    if forbidden {
        AddressClass::Forbidden
    } else {
        AddressClass::Public
    }
}

/// The stricter of two classes.
fn worst(a: AddressClass, b: AddressClass) -> AddressClass {
    let rank = |c| match c {
        AddressClass::Public => 0,
        AddressClass::Loopback | AddressClass::Private => 1,
        AddressClass::Forbidden => 2,
    };
    match (a, b) {
        (AddressClass::Public, other) | (other, AddressClass::Public) => other,
        _ if rank(a) >= rank(b) => a,
        _ => b,
    }
}

/// The addresses of `host` that `policy` allows, or an error naming the first refused
/// one when none is allowed.
pub(crate) fn filter_addresses(
    policy: &UrlPolicy,
    host: &str,
    resolved: Vec<SocketAddr>,
) -> Result<Vec<SocketAddr>, tower::BoxError> {
    let mut refused = None;
    let allowed: Vec<SocketAddr> = resolved
        .into_iter()
        .filter(|addr| match policy.check_ip(addr.ip()) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(host, address = %addr.ip(), "resolved address refused by the URL policy");
                refused.get_or_insert(error);
                false
            }
        })
        .collect();
    match (allowed.is_empty(), refused) {
        (true, Some(error)) => Err(Box::new(error)),
        (true, None) => Err(format!("{host}: no addresses").into()),
        (false, _) => Ok(allowed),
    }
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
            // Issue #10 item 5: every special-purpose form, embedded IPv4 unwrapped.
            "https://0.0.0.0/",
            "https://0.1.2.3/",
            "https://[::]/",
            "https://[64:ff9b::a9fe:a9fe]/", // NAT64 of 169.254.169.254
            "https://[64:ff9b::7f00:1]/",    // NAT64 of 127.0.0.1
            "https://[::a9fe:a9fe]/",        // IPv4-compatible
            "https://[2002:a9fe:a9fe::1]/",  // 6to4 of 169.254.169.254
            "https://[2002:7f00:1::1]/",     // 6to4 of 127.0.0.1
            "https://[2001:0:a9fe:a9fe::1]/", // Teredo via a link-local server
            "https://[2001:0:808:808:0:0:f5ff:fffe]/", // Teredo client 10.0.0.1
            "https://192.0.0.8/",
            "https://198.18.0.1/",
            "https://198.19.255.1/",
            "https://240.0.0.1/",
            "https://255.255.255.255/",
            "https://224.0.0.1/",
            "https://[ff02::1]/",
            "https://[fec0::1]/",
            "https://[2001:db8::1]/",
            "https://[100::1]/",
        ] {
            assert!(!check(strict, blocked), "{blocked}");
        }
        for allowed in [
            "https://example.com/",
            "https://8.8.8.8/",
            "https://[2606:4700:4700::1111]/",
            "https://[2002:808:808::1]/", // 6to4 of 8.8.8.8
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
        // Unspecified addresses reach loopback on Linux: never allowed.
        for never in ["https://0.0.0.0/", "https://[::]/", "https://0.0.0.1/"] {
            assert!(!check(private, never), "{never}");
            assert!(!check(dev, never), "{never}");
        }
        assert!(
            check(private, "https://[64:ff9b::a00:1]/"),
            "NAT64 of 10.0.0.1"
        );
    }
}
