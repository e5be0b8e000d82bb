//! Which requests a resource covers: origin and path checks that fail closed.

use url::Url;

/// Whether a request to `uri` is for `resource`: same scheme, host and port, and a path
/// equal to or below the resource path (at a segment boundary).
///
/// Fails closed: an authority with user info or a port that is not a number, and a
/// path with dot segments (`.`, `..`, also percent-encoded) or encoded separators
/// (`%2f`, `%5c`, `\`), which a server may resolve to a path outside the resource,
/// are never covered.
pub(crate) fn covers(resource: &Url, uri: &http::Uri) -> bool {
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return false;
    };
    // The common case, without parsing: the request names the origin exactly as the
    // resource's canonical text does (lowercase host, no default port, no user info).
    let exact = scheme == resource.scheme()
        && resource.username().is_empty()
        && authority.as_str() == &resource[url::Position::BeforeHost..url::Position::AfterPort];
    if exact {
        return covers_path(resource, uri.path());
    }
    let default_port = match scheme {
        "https" => 443,
        "http" => 80,
        _ => return false,
    };
    if authority.as_str().contains('@') {
        return false;
    }
    // `Authority::port` hides a port that is not a u16; read it from the text.
    let text = authority.as_str();
    let after_host = text.rfind(']').map_or(text, |i| &text[i + 1..]);
    let port = match after_host.rfind(':') {
        None => default_port,
        Some(i) => match after_host[i + 1..].parse::<u16>() {
            Ok(port) => port,
            Err(_) => return false,
        },
    };
    let same_origin = scheme == resource.scheme()
        && resource
            .host_str()
            .is_some_and(|h| h.eq_ignore_ascii_case(authority.host()))
        && Some(port) == resource.port_or_known_default();
    if !same_origin {
        return false;
    }
    covers_path(resource, uri.path())
}

/// Whether `path` is the resource's path or below it, and has nothing a server may
/// resolve elsewhere.
fn covers_path(resource: &Url, path: &str) -> bool {
    covers_base(resource.path().trim_end_matches('/'), path)
}

/// [`covers_path`] with the resource's path already without its trailing slashes.
fn covers_base(base: &str, path: &str) -> bool {
    if !is_normal_path(path) {
        return false;
    }
    base.is_empty()
        || path == base
        || (path.starts_with(base) && path.as_bytes().get(base.len()) == Some(&b'/'))
}

/// A resource taken apart once for [`covers`], which runs on every request: the
/// common case (the request names the origin as the resource's canonical text does)
/// is then two comparisons of strings and the path check.
#[derive(Clone, Debug)]
pub(crate) struct Scope {
    resource: Url,
    scheme: Box<str>,
    /// The canonical `host[:port]`; `None` when the resource has user info, which
    /// no request matches exactly.
    origin: Option<Box<str>>,
    base: Box<str>,
    /// The resource as an `http::Uri` written exactly as a request that names the
    /// canonical origin and `base` without a query is (`None` when no such request
    /// can be the resource itself, e.g. a path with a trailing slash).
    exact: Option<http::Uri>,
    /// Whether `base` itself passes [`is_normal_path`].
    base_is_normal: bool,
}

/// How a request's URI relates to a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Coverage {
    /// Not for the resource.
    Outside,
    /// The resource's own URI, written as [`Scope::exact_uri`] is.
    Exact,
    /// For the resource, written otherwise or below its path.
    Within,
}

impl Scope {
    pub(crate) fn new(resource: Url) -> Self {
        let origin: Option<Box<str>> = resource
            .username()
            .is_empty()
            .then(|| resource[url::Position::BeforeHost..url::Position::AfterPort].into());
        let base: Box<str> = resource.path().trim_end_matches('/').into();
        let exact = origin
            .as_ref()
            .filter(|_| resource.query().is_none() && &*base == resource.path())
            .and_then(|_| resource.as_str().parse::<http::Uri>().ok())
            .filter(|uri| {
                uri.scheme_str() == Some(resource.scheme())
                    && uri.authority().map(|a| a.as_str()) == origin.as_deref()
                    && uri.path() == &*base
                    && uri.query().is_none()
            });
        Self {
            scheme: resource.scheme().into(),
            origin,
            base_is_normal: is_normal_path(&base),
            base,
            exact,
            resource,
        }
    }

    /// The resource's URI for a request that was [`Coverage::Exact`].
    pub(crate) fn exact_uri(&self) -> Option<&http::Uri> {
        self.exact.as_ref()
    }

    pub(crate) fn resource(&self) -> &Url {
        &self.resource
    }

    /// [`covers`], the same answer for every `uri`.
    pub(crate) fn covers(&self, uri: &http::Uri) -> bool {
        self.coverage(uri) != Coverage::Outside
    }

    /// [`covers`], telling the resource's own URI apart (the comparisons made anyway).
    pub(crate) fn coverage(&self, uri: &http::Uri) -> Coverage {
        let canonical_origin = uri.scheme_str() == Some(&*self.scheme)
            && self.origin.as_deref().is_some_and(|origin| {
                uri.authority()
                    .is_some_and(|authority| authority.as_str() == origin)
            });
        if !canonical_origin {
            return match covers(&self.resource, uri) {
                true => Coverage::Within,
                false => Coverage::Outside,
            };
        }
        let path = uri.path();
        if path == &*self.base {
            // Nearly every request: no scan of the path (`base_is_normal` was taken
            // once, and `covers_base` answers the same for it).
            return match (
                self.base_is_normal,
                self.exact.is_some() && uri.query().is_none(),
            ) {
                (false, _) => Coverage::Outside,
                (true, true) => Coverage::Exact,
                (true, false) => Coverage::Within,
            };
        }
        match covers_base(&self.base, path) {
            true => Coverage::Within,
            false => Coverage::Outside,
        }
    }
}

/// Whether `path` has no dot segment and no encoded or alternative separator. One
/// pass over the bytes, no allocation: it runs for every request.
fn is_normal_path(path: &str) -> bool {
    let bytes = path.as_bytes();
    if !bytes.iter().any(|&b| matches!(b, b'\\' | b'%' | b'.')) {
        return true;
    }
    if bytes.contains(&b'\\') {
        return false;
    }
    bytes.split(|&b| b == b'/').all(|segment| {
        let encoded_separator = segment.windows(3).any(|w| {
            w[0] == b'%'
                && ((w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'f'))
                    || (w[1] == b'5' && w[2].eq_ignore_ascii_case(&b'c')))
        });
        !encoded_separator && !matches!(dots(segment), Some(1 | 2))
    })
}

/// How many dots `segment` is made of, `.` and `%2e` alike; `None` if anything else is
/// in it.
fn dots(segment: &[u8]) -> Option<usize> {
    let (mut count, mut rest) = (0, segment);
    while !rest.is_empty() {
        match rest {
            [b'.', tail @ ..] => rest = tail,
            [b'%', b'2', e, tail @ ..] if e.eq_ignore_ascii_case(&b'e') => rest = tail,
            _ => return None,
        }
        count += 1;
    }
    Some(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_refuse_dot_segments_and_encoded_separators() {
        for ok in [
            "/mcp",
            "/",
            "",
            "/mcp/a.b",
            "/mcp/...",
            "/mcp/%2e%2e%2e",
            "/mcp/a%20b",
        ] {
            assert!(is_normal_path(ok), "{ok}");
        }
        for bad in [
            "/mcp/../x",
            "/mcp/./x",
            "/mcp/..",
            "/mcp/%2e%2E/x",
            "/mcp/.%2e",
            "/mcp/%2E",
            "/mcp/a%2Fb",
            "/mcp/a%2fb",
            "/mcp/a%5cb",
            "/mcp/a%5Cb",
            "/mcp\\x",
        ] {
            assert!(!is_normal_path(bad), "{bad}");
        }
    }

    #[test]
    fn covers_refuses_paths_that_leave_the_resource() {
        let resource: Url = "https://mcp.example.com/mcp".parse().unwrap();
        for uri in [
            "https://mcp.example.com/mcp/../admin",
            "https://mcp.example.com/mcp/%2e%2e/admin",
            "https://mcp.example.com/mcp/%2E%2e/admin",
            "https://mcp.example.com/mcp/.%2e/admin",
            "https://mcp.example.com/mcp/./x",
            "https://mcp.example.com/mcp/..",
            "https://mcp.example.com/mcp%2f..%2fadmin",
            "https://mcp.example.com/mcp/%5c..%5cadmin",
            "https://mcp.example.com:99999/mcp",
            "https://mcp.example.com:abc/mcp",
            "https://mcp.example.com:/mcp",
            "https://user@mcp.example.com/mcp",
        ] {
            // A URI http refuses outright is never sent anyway.
            if let Ok(uri) = uri.parse::<http::Uri>() {
                assert!(!covers(&resource, &uri), "{uri}");
            }
        }
        assert!(covers(
            &resource,
            &"https://mcp.example.com:443/mcp/x".parse().unwrap()
        ));
        assert!(covers(
            &resource,
            &"https://mcp.example.com/mcp/a.b/..c".parse().unwrap()
        ));
    }

    /// The slot's precomputed scope answers as `covers` does, on both of its paths.
    #[test]
    fn a_scope_covers_what_covers_covers() {
        let uris = [
            "https://mcp.example/mcp",
            "https://mcp.example/mcp/x",
            "https://mcp.example/mcpx",
            "https://mcp.example/mcp/../admin",
            "https://mcp.example/mcp/%2e%2e/admin",
            "https://mcp.example/mcp%2f..%2fadmin",
            "https://MCP.example/mcp?x=1",
            "https://mcp.example:443/mcp/x",
            "https://mcp.example:8443/mcp",
            "https://u@mcp.example/mcp",
            "http://mcp.example/mcp",
            "https://other.example/mcp",
            "http://127.0.0.1:8080/mcp",
            "http://127.0.0.1/mcp",
            "http://[::1]:9000/mcp?q",
            "/mcp",
        ];
        for resource in [
            "https://mcp.example/mcp",
            "https://mcp.example/mcp/",
            "https://mcp.example",
            "https://u@mcp.example/mcp",
            "http://127.0.0.1:8080/mcp",
            "http://[::1]:9000/mcp",
        ] {
            let url: Url = resource.parse().unwrap();
            let scope = Scope::new(url.clone());
            for uri in uris {
                let uri: http::Uri = uri.parse().unwrap();
                assert_eq!(scope.covers(&uri), covers(&url, &uri), "{resource} {uri}");
                // "Exact" promises that the scope's URI, written out, is the request's.
                if scope.coverage(&uri) == Coverage::Exact {
                    let exact = scope.exact_uri().expect("an exact URI to stand in");
                    assert_eq!(exact.to_string(), uri.to_string(), "{resource} {uri}");
                }
            }
        }
    }

    #[test]
    fn only_the_resource_written_canonically_is_exact() {
        let coverage = |resource: &str, uri: &str| {
            Scope::new(resource.parse().unwrap()).coverage(&uri.parse().unwrap())
        };
        let mcp = "https://mcp.example/mcp";
        assert_eq!(coverage(mcp, "https://mcp.example/mcp"), Coverage::Exact);
        for within in [
            "https://mcp.example/mcp?x=1",
            "https://mcp.example/mcp/",
            "https://mcp.example/mcp/x",
            "https://MCP.example/mcp",
            "https://mcp.example:443/mcp",
        ] {
            assert_eq!(coverage(mcp, within), Coverage::Within, "{within}");
        }
        assert_eq!(coverage(mcp, "https://mcp.example/mcpx"), Coverage::Outside);
        // Resources no request can be written as exactly: never exact.
        for resource in [
            "https://mcp.example/mcp/",
            "https://mcp.example",
            "https://mcp.example/mcp?v=1",
        ] {
            let uri = resource.parse::<Url>().unwrap().to_string();
            assert_eq!(coverage(resource, &uri), Coverage::Within, "{resource}");
        }
        assert_eq!(
            coverage("http://[::1]:9000/mcp", "http://[::1]:9000/mcp"),
            Coverage::Exact
        );
    }
}
