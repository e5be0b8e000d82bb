//! Keeping a request so it can be sent twice.
//!
//! Only small bodies whose size is known up front are buffered: a body whose
//! `size_hint` upper bound exceeds the cap (or is unknown, as for a stream) is sent
//! once, as it is, without any replay. Either way the inner service receives a
//! [`ReplayBody`], so any request body type works: the original body passed through,
//! or the buffered bytes (cloned by reference count for every send).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Extensions, HeaderMap, Method, Request, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Limited};
use tower::BoxError;

/// The default cap on a buffered request body: 1 MiB.
pub const DEFAULT_MAX_REPLAY_BODY: usize = 1 << 20;

/// A request body the layers of this crate accept: any [`http_body::Body`] with
/// [`Bytes`] chunks, `Send` and `'static`, whose error converts into a [`BoxError`].
/// hyper's `Incoming`, `reqwest::Body`, `http_body_util::Full<Bytes>`, `BoxBody` and
/// `UnsyncBoxBody` all are. Implemented for every such type; never implement it.
///
/// ```
/// fn accepts<B: tower_mcp_auth::RequestBody>() {}
/// accepts::<http_body_util::Full<bytes::Bytes>>();
/// accepts::<http_body_util::combinators::BoxBody<bytes::Bytes, std::io::Error>>();
/// accepts::<tower_mcp_auth::ReplayBody<http_body_util::Empty<bytes::Bytes>>>();
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the request body of a tower-mcp-auth layer",
    label = "not an `http_body::Body<Data = Bytes>` that is `Send + 'static` with an error convertible into `BoxError`",
    note = "the layers buffer small bodies to send them again after a refresh; they accept any `http_body::Body<Data = bytes::Bytes> + Send + 'static` whose `Error: Into<tower::BoxError>` (e.g. `Full<Bytes>`, `BoxBody<Bytes, E>`, hyper's `Incoming`, `reqwest::Body`)"
)]
pub trait RequestBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

impl<B> RequestBody for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

/// The request body the layers hand to the service they wrap: the caller's body,
/// passed through once, or bytes buffered so the request can be sent again. One type
/// however many layers are stacked (a `ReplayBody` given to a layer is passed on as
/// it is, never wrapped again), so an inner service is always a
/// `Service<http::Request<ReplayBody>>`.
///
/// ```
/// use bytes::Bytes;
/// use http_body::Body;
/// use tower_mcp_auth::ReplayBody;
///
/// let buffered = ReplayBody::from(Bytes::from_static(b"{}"));
/// assert_eq!(buffered.size_hint().exact(), Some(2));
/// assert_eq!(buffered.as_bytes().map(|b| &b[..]), Some(&b"{}"[..]));
///
/// // Wrapping a ReplayBody again is free: it comes back as it was.
/// let again = ReplayBody::new(buffered);
/// assert_eq!(again.as_bytes().map(|b| &b[..]), Some(&b"{}"[..]));
/// ```
pub struct ReplayBody {
    kind: Kind,
}

enum Kind {
    /// The caller's body, sent once.
    Original(UnsyncBoxBody<Bytes, BoxError>),
    /// Buffered bytes (`None` once read).
    Buffered(Option<Bytes>),
}

impl std::fmt::Debug for ReplayBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Original(_) => f.write_str("ReplayBody::Original"),
            Kind::Buffered(bytes) => write!(
                f,
                "ReplayBody::Buffered({} bytes)",
                bytes.as_ref().map_or(0, Bytes::len)
            ),
        }
    }
}

impl ReplayBody {
    /// Wraps any request body; a `ReplayBody` is returned unchanged.
    pub fn new<B: RequestBody>(body: B) -> Self {
        // `B: 'static`, so a body that already is a ReplayBody is recognised at no cost.
        let mut slot = Some(body);
        if let Some(replay) = (&mut slot as &mut dyn std::any::Any)
            .downcast_mut::<Option<ReplayBody>>()
            .and_then(Option::take)
        {
            return replay;
        }
        match slot {
            Some(body) => Self {
                kind: Kind::Original(body.map_err(Into::into).boxed_unsync()),
            },
            None => Self::empty(),
        }
    }

    /// A body of `bytes`.
    pub fn buffered(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Buffered(Some(bytes)),
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self {
            kind: Kind::Buffered(None),
        }
    }

    /// The buffered bytes, if this body holds them and has not been read.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match &self.kind {
            Kind::Buffered(bytes) => bytes.as_ref(),
            Kind::Original(_) => None,
        }
    }
}

impl Default for ReplayBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl From<Bytes> for ReplayBody {
    fn from(bytes: Bytes) -> Self {
        Self::buffered(bytes)
    }
}

impl From<String> for ReplayBody {
    fn from(text: String) -> Self {
        Self::buffered(Bytes::from(text))
    }
}

impl From<&'static str> for ReplayBody {
    fn from(text: &'static str) -> Self {
        Self::buffered(Bytes::from_static(text.as_bytes()))
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            Kind::Original(body) => Pin::new(body).poll_frame(cx),
            Kind::Buffered(bytes) => Poll::Ready(
                bytes
                    .take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Original(body) => body.is_end_stream(),
            Kind::Buffered(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Original(body) => body.size_hint(),
            Kind::Buffered(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// Everything needed to send a request again.
#[derive(Clone)]
pub(crate) struct ReplayTemplate {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
    body: Bytes,
}

impl ReplayTemplate {
    /// The buffered body.
    pub(crate) fn body(&self) -> &Bytes {
        &self.body
    }

    /// A fresh copy of the request (the body costs a reference count).
    pub(crate) fn request(&self) -> Request<ReplayBody> {
        let mut request = Request::new(ReplayBody::buffered(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        *request.extensions_mut() = self.extensions.clone();
        request
    }
}

/// Buffers `request`'s body if it is known to fit in `max` bytes. Returns the request
/// to send now and, if buffered, a template to send it again.
pub(crate) async fn make_replayable<B: RequestBody>(
    request: Request<B>,
    max: usize,
) -> Result<(Request<ReplayBody>, Option<ReplayTemplate>), BoxError> {
    let (parts, body) = request.into_parts();
    let body = ReplayBody::new(body);
    let fits = body
        .size_hint()
        .upper()
        .is_some_and(|upper| upper <= max as u64);
    if !fits {
        return Ok((Request::from_parts(parts, body), None));
    }
    let body = match body.as_bytes() {
        // Buffered by an outer layer already: a reference count, not a copy.
        Some(bytes) => bytes.clone(),
        None if body.is_end_stream() => Bytes::new(),
        None => Limited::new(body, max).collect().await?.to_bytes(),
    };
    let template = ReplayTemplate {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        extensions: parts.extensions,
        body,
    };
    Ok((template.request(), Some(template)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    #[tokio::test]
    async fn small_bodies_replay_byte_for_byte() {
        let request = Request::post("http://x/mcp")
            .header("x-a", "1")
            .body(Full::new(Bytes::from_static(b"{\"jsonrpc\":\"2.0\"}")))
            .unwrap();
        let (first, template) = make_replayable(request, 1024).await.unwrap();
        let again: Request<ReplayBody> = template.unwrap().request();
        assert_eq!(again.headers()["x-a"], "1");
        assert_eq!(again.uri(), first.uri());
        let (a, b) = (
            first.into_body().collect().await.unwrap().to_bytes(),
            again.into_body().collect().await.unwrap().to_bytes(),
        );
        assert_eq!(a, b);
    }

    #[tokio::test]
    async fn oversized_bodies_are_not_buffered() {
        let request = Request::new(Full::new(Bytes::from(vec![0u8; 2048])));
        let (request, template) = make_replayable(request, 1024).await.unwrap();
        assert!(template.is_none());
        assert_eq!(
            request
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .len(),
            2048
        );
    }

    #[tokio::test]
    async fn streams_without_a_bound_are_sent_once() {
        type Chunks =
            futures::stream::Iter<std::vec::IntoIter<Result<http_body::Frame<Bytes>, BoxError>>>;
        struct Stream(StreamBody<Chunks>);
        impl Body for Stream {
            type Data = Bytes;
            type Error = BoxError;
            fn poll_frame(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
                std::pin::Pin::new(&mut self.0).poll_frame(cx)
            }
        }
        let chunks = vec![Ok(http_body::Frame::data(Bytes::from_static(b"x")))];
        let request = Request::new(Stream(StreamBody::new(futures::stream::iter(chunks))));
        let (_, template) = make_replayable(request, 1024).await.unwrap();
        assert!(template.is_none());
    }
}
