//! The copy of a request a layer keeps to send it again.

use bytes::Bytes;
use http::request::Parts;
use http::{Extensions, HeaderMap, Method, Request, Uri, Version};

use super::ReplayBody;
use crate::key::Principal;

/// Everything needed to send a request again.
///
/// Taken on every request a layer may replay, so it is cheap: the head's fields are
/// cloned by reference count (the URI's bytes, header values), and the extensions of a
/// request that carries only a [`Principal`] (or nothing) are kept as that principal,
/// not as a copy of the extension map (three allocations saved per request).
///
/// `U` is the URI as kept: a [`Uri`], or for the silent refresh layer's own copy an
/// [`UnresolvedUri`].
#[derive(Clone)]
pub(crate) struct ReplayTemplate<U = Uri> {
    method: Method,
    uri: U,
    version: Version,
    headers: HeaderMap,
    extensions: SavedExtensions,
    body: Bytes,
}

#[derive(Clone)]
enum SavedExtensions {
    Empty,
    Principal(Principal),
    All(Extensions),
}

impl SavedExtensions {
    /// `principal`: a clone of the [`Principal`] in `extensions`, when the caller holds
    /// one already (spares a lookup and a reference count).
    fn of(extensions: &Extensions, principal: Option<Principal>) -> Self {
        match extensions.len() {
            0 => Self::Empty,
            1 => match principal.or_else(|| Principal::from_extensions(extensions).cloned()) {
                Some(principal) => {
                    debug_assert!(Principal::from_extensions(extensions) == Some(&principal));
                    Self::Principal(principal)
                }
                None => Self::All(extensions.clone()),
            },
            _ => Self::All(extensions.clone()),
        }
    }

    fn restore(&self) -> Extensions {
        match self {
            Self::Empty => Extensions::new(),
            Self::Principal(principal) => {
                let mut extensions = Extensions::new();
                extensions.insert(principal.clone());
                extensions
            }
            Self::All(extensions) => extensions.clone(),
        }
    }
}

/// A kept URI that may be "the resource's own" (`None`): nearly every MCP request goes
/// to the one endpoint, whose URI the layer holds already, and a copy of a URI costs
/// two reference counts taken and given back per request (measured: 0.05 of the silent
/// refresh layer's throughput ratio to a bare header injector, BENCHMARKS.md).
pub(crate) type UnresolvedUri = Option<Uri>;

impl ReplayTemplate<UnresolvedUri> {
    /// The template of `request` with `body`, keeping no copy of its URI when that is
    /// the resource's own (`to_resource`: the caller compared them, written exactly
    /// as [`resolve`](Self::resolve) will be given it). `principal`: a clone of the
    /// request's [`Principal`], when the caller holds one already.
    // Inlined: built in the caller's future, not moved there.
    #[inline]
    pub(crate) fn of_request_to<B>(
        request: &Request<B>,
        body: Bytes,
        principal: Option<Principal>,
        to_resource: bool,
    ) -> Self {
        Self {
            method: request.method().clone(),
            uri: (!to_resource).then(|| request.uri().clone()),
            version: request.version(),
            headers: clone_headers(request.headers()),
            extensions: SavedExtensions::of(request.extensions(), principal),
            body,
        }
    }

    /// The template with its URI, `resource` standing for the one not kept (`None`
    /// when it is needed and not given).
    pub(crate) fn resolve(&self, resource: Option<&Uri>) -> Option<ReplayTemplate> {
        let uri = match &self.uri {
            Some(uri) => uri.clone(),
            None => resource?.clone(),
        };
        Some(ReplayTemplate {
            method: self.method.clone(),
            uri,
            version: self.version,
            headers: self.headers.clone(),
            extensions: self.extensions.clone(),
            body: self.body.clone(),
        })
    }
}

impl<U> ReplayTemplate<U> {
    /// The buffered body.
    pub(crate) fn body(&self) -> &Bytes {
        &self.body
    }

    /// The request's principal, if it carried one.
    pub(crate) fn principal(&self) -> Option<&Principal> {
        match &self.extensions {
            SavedExtensions::Empty => None,
            SavedExtensions::Principal(principal) => Some(principal),
            SavedExtensions::All(extensions) => Principal::from_extensions(extensions),
        }
    }
}

impl ReplayTemplate {
    /// The template of `request` with `body`.
    pub(crate) fn of_request<B>(request: &Request<B>, body: Bytes) -> Self {
        Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: clone_headers(request.headers()),
            extensions: SavedExtensions::of(request.extensions(), None),
            body,
        }
    }

    /// The same template, its URI kept as a copy.
    pub(crate) fn unresolved(self) -> ReplayTemplate<UnresolvedUri> {
        ReplayTemplate {
            method: self.method,
            uri: Some(self.uri),
            version: self.version,
            headers: self.headers,
            extensions: self.extensions,
            body: self.body,
        }
    }

    pub(super) fn of(parts: &Parts, body: Bytes) -> Self {
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: clone_headers(&parts.headers),
            extensions: SavedExtensions::of(&parts.extensions, None),
            body,
        }
    }

    /// The request's URI.
    pub(crate) fn uri(&self) -> &Uri {
        &self.uri
    }

    /// A fresh copy of the request (the body costs a reference count).
    pub(crate) fn request(&self) -> Request<ReplayBody> {
        let mut request = Request::new(ReplayBody::buffered(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        *request.extensions_mut() = self.extensions.restore();
        request
    }
}

/// `headers`, cloned; an empty map costs nothing (its clone would copy its fields).
fn clone_headers(headers: &HeaderMap) -> HeaderMap {
    if headers.is_empty() {
        HeaderMap::new()
    } else {
        headers.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::{Buffering, buffer_now};
    use http_body_util::Full;

    #[test]
    fn a_template_keeps_a_lone_principal_and_other_extensions_whole() {
        #[derive(Clone, Debug, PartialEq)]
        struct Other(u8);
        let alice = Principal::new("acme", "alice");
        let template_of = |extensions: &[&dyn Fn(&mut Extensions)]| {
            let mut request = Request::post("http://x/mcp")
                .header("x-a", "1")
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap();
            for insert in extensions {
                insert(request.extensions_mut());
            }
            let Buffering::Ready(_, Some(template)) = buffer_now(request, 1024).unwrap() else {
                panic!("a Full body is in memory");
            };
            template
        };
        let with_alice = |e: &mut Extensions| {
            e.insert(alice.clone());
        };
        let with_other = |e: &mut Extensions| {
            e.insert(Other(7));
        };

        let lone = template_of(&[&with_alice]);
        assert!(matches!(lone.extensions, SavedExtensions::Principal(_)));
        assert_eq!(lone.principal(), Some(&alice));
        let again = lone.request();
        assert_eq!(again.extensions().len(), 1);
        assert_eq!(again.extensions().get::<Principal>(), Some(&alice));
        assert_eq!((again.method(), again.uri()), (&Method::POST, lone.uri()));
        assert_eq!(again.headers()["x-a"], "1");

        let both = template_of(&[&with_alice, &with_other]);
        assert!(matches!(both.extensions, SavedExtensions::All(_)));
        let again = both.request();
        assert_eq!(again.extensions().get::<Other>(), Some(&Other(7)));
        assert_eq!(again.extensions().get::<Principal>(), Some(&alice));

        let only_other = template_of(&[&with_other]);
        assert_eq!(only_other.principal(), None);
        assert_eq!(
            only_other.request().extensions().get::<Other>(),
            Some(&Other(7))
        );
        assert!(template_of(&[]).request().extensions().is_empty());
    }
}
