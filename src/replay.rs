//! Keeping a request so it can be sent twice.
//!
//! Only small bodies whose size is known up front are buffered: a body whose
//! `size_hint` upper bound exceeds the cap (or is unknown, as for a stream) is sent
//! once, as it is, without any replay.

use bytes::Bytes;
use http::{Extensions, HeaderMap, Method, Request, Uri, Version};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use tower::BoxError;

/// The default cap on a buffered request body: 1 MiB.
pub const DEFAULT_MAX_REPLAY_BODY: usize = 1 << 20;

/// Everything needed to send a request again.
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

    /// A fresh copy of the request.
    pub(crate) fn request<B: From<Bytes>>(&self) -> Request<B> {
        let mut request = Request::new(B::from(self.body.clone()));
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
pub(crate) async fn make_replayable<B>(
    request: Request<B>,
    max: usize,
) -> Result<(Request<B>, Option<ReplayTemplate>), BoxError>
where
    B: Body + From<Bytes>,
    B::Error: Into<BoxError>,
{
    let fits = request
        .body()
        .size_hint()
        .upper()
        .is_some_and(|upper| upper <= max as u64);
    if !fits {
        return Ok((request, None));
    }
    let (parts, body) = request.into_parts();
    let body = Limited::new(body, max).collect().await?.to_bytes();
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
        let again: Request<Full<Bytes>> = template.unwrap().request();
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
        impl From<Bytes> for Stream {
            fn from(_: Bytes) -> Self {
                unreachable!("a stream is never rebuilt")
            }
        }
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
