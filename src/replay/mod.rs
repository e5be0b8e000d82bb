//! Keeping a request so it can be sent twice.
//!
//! Only small bodies whose size is known up front are buffered: a body whose
//! `size_hint` upper bound exceeds the cap (or is unknown, as for a stream) is sent
//! once, as it is, without any replay. Either way the inner service receives a
//! [`ReplayBody`], so any request body type works: the original body passed through,
//! or the buffered bytes (cloned by reference count for every send).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::Request;
use http::request::Parts;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use tower::BoxError;

mod template;

pub(crate) use template::{ReplayTemplate, UnresolvedUri};

/// The default cap on a buffered request body: 1 MiB.
pub const DEFAULT_MAX_REPLAY_BODY: usize = 1 << 20;

/// A request body the layers of this crate accept: any [`http_body::Body`] with
/// [`Bytes`] chunks, `Send` and `'static`, whose error converts into a [`BoxError`].
/// hyper's `Incoming`, `reqwest::Body`, `http_body_util::Full<Bytes>`, `BoxBody` and
/// `UnsyncBoxBody` all are. Implemented for every such type; never implement it.
///
/// ```
/// fn accepts<B: tower_mcp_auth::layer::RequestBody>() {}
/// accepts::<http_body_util::Full<bytes::Bytes>>();
/// accepts::<http_body_util::combinators::BoxBody<bytes::Bytes, std::io::Error>>();
/// accepts::<tower_mcp_auth::ReplayBody>();
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
/// use bytes::{Bytes, BytesMut};
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
        // An in-memory body is taken as bytes: no box, and an inner layer replays it
        // without copying.
        if let Some(full) = (&mut slot as &mut dyn std::any::Any)
            .downcast_mut::<Option<Full<Bytes>>>()
            .and_then(Option::take)
        {
            let mut full = full;
            return match read_now(&mut full, usize::MAX) {
                Ok(Read::All(bytes) | Read::Partial(bytes)) => Self::buffered(bytes),
                // A `Full` yields its bytes in one poll and cannot fail.
                Ok(Read::Untouched | Read::TooLarge) | Err(_) => Self::empty(),
            };
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

/// A request whose body could not be buffered without waiting: the parts, the bytes
/// read so far, and the rest of the body.
pub(crate) struct Unfinished {
    parts: Parts,
    prefix: Bytes,
    rest: ReplayBody,
}

/// What [`buffer_now`] managed.
// Returned once and taken apart at once: boxing the common variant would cost the hot
// path an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Buffering {
    /// The request to send now and, if its body was buffered, the template to send it
    /// again.
    Ready(Request<ReplayBody>, Option<ReplayTemplate>),
    /// The body is still arriving: finish with [`Unfinished::finish`].
    Unfinished(Box<Unfinished>),
}

/// The bytes of a body that holds them already and fits in `max`: a `ReplayBody`
/// buffered by an outer layer or a `Full<Bytes>` (read in place). Either is left
/// empty, for the caller to replace (the bytes are moved, not counted twice). `None`
/// for any other body, which is left as it was ([`buffer_other_now`] is for those).
///
/// The common case of [`buffer_now`]: the request is not taken apart, and the replay
/// template can be built from it where it lies.
pub(crate) fn take_in_memory<B: RequestBody>(
    body: &mut B,
    max: usize,
) -> Result<Option<Bytes>, BoxError> {
    let slot = body as &mut dyn std::any::Any;
    if let Some(replay) = slot.downcast_mut::<ReplayBody>() {
        // Taken, not cloned: the caller replaces the body (one reference count less).
        return Ok(match &mut replay.kind {
            Kind::Buffered(bytes) => bytes.take(),
            Kind::Original(_) => None,
        });
    }
    let Some(full) = slot.downcast_mut::<Full<Bytes>>() else {
        return Ok(None);
    };
    if full
        .size_hint()
        .upper()
        .is_none_or(|upper| upper > max as u64)
    {
        return Ok(None);
    }
    match read_now(full, max)? {
        Read::All(bytes) => Ok(Some(bytes)),
        // A `Full` is read in one poll; anything else is a body it does not hold.
        Read::TooLarge | Read::Partial(_) | Read::Untouched => {
            Err("in-memory body larger than its size hint".into())
        }
    }
}

/// `request` with `bytes` (its body, read by [`take_in_memory`]) as a buffered body,
/// and the template to send it again.
fn buffered<B>(request: Request<B>, bytes: Bytes) -> (Request<ReplayBody>, ReplayTemplate) {
    let template = ReplayTemplate::of_request(&request, bytes.clone());
    (request.map(|_| ReplayBody::buffered(bytes)), template)
}

/// Buffers `request`'s body if it is known to fit in `max` bytes and is already in
/// memory, without waiting: the hot path of every layer (no future; no allocation for
/// a `Full` or a `ReplayBody`, while another in-memory body, reqwest's for one, is
/// boxed once before it is read).
pub(crate) fn buffer_now<B: RequestBody>(
    mut request: Request<B>,
    max: usize,
) -> Result<Buffering, BoxError> {
    if let Some(bytes) = take_in_memory(request.body_mut(), max)? {
        let (request, template) = buffered(request, bytes);
        return Ok(Buffering::Ready(request, Some(template)));
    }
    buffer_other_now(request, max)
}

/// [`buffer_now`] for a body [`take_in_memory`] left as it was: a body that is not
/// in memory, or may not fit.
pub(crate) fn buffer_other_now<B: RequestBody>(
    request: Request<B>,
    max: usize,
) -> Result<Buffering, BoxError> {
    let (parts, body) = request.into_parts();
    let mut body = ReplayBody::new(body);
    let fits = body
        .size_hint()
        .upper()
        .is_some_and(|upper| upper <= max as u64);
    if !fits {
        return Ok(Buffering::Ready(Request::from_parts(parts, body), None));
    }
    if let Some(bytes) = body.as_bytes() {
        let bytes = bytes.clone();
        return Ok(ready(parts, bytes));
    }
    Ok(match read_now(&mut body, max)? {
        Read::All(bytes) => ready(parts, bytes),
        Read::Partial(prefix) => Buffering::Unfinished(Box::new(Unfinished {
            parts,
            prefix,
            rest: body,
        })),
        Read::Untouched => Buffering::Unfinished(Box::new(Unfinished {
            parts,
            prefix: Bytes::new(),
            rest: body,
        })),
        Read::TooLarge => return Err("request body larger than its size hint".into()),
    })
}

impl Unfinished {
    /// Reads the rest of the body (up to the cap) and makes the request replayable.
    pub(crate) async fn finish(
        self,
        max: usize,
    ) -> Result<(Request<ReplayBody>, Option<ReplayTemplate>), BoxError> {
        let remaining = max.saturating_sub(self.prefix.len());
        let rest = Limited::new(self.rest, remaining)
            .collect()
            .await?
            .to_bytes();
        let body = if self.prefix.is_empty() {
            rest
        } else {
            let mut joined = BytesMut::with_capacity(self.prefix.len() + rest.len());
            joined.extend_from_slice(&self.prefix);
            joined.extend_from_slice(&rest);
            joined.freeze()
        };
        match ready(self.parts, body) {
            Buffering::Ready(request, template) => Ok((request, template)),
            Buffering::Unfinished(_) => Err("unreachable: a buffered body is ready".into()),
        }
    }
}

fn ready(parts: Parts, body: Bytes) -> Buffering {
    let template = ReplayTemplate::of(&parts, body.clone());
    Buffering::Ready(
        Request::from_parts(parts, ReplayBody::buffered(body)),
        Some(template),
    )
}

enum Read {
    /// The whole body.
    All(Bytes),
    /// What arrived before the body had to wait.
    Partial(Bytes),
    /// Nothing arrived yet.
    Untouched,
    TooLarge,
}

/// Reads whatever `body` yields without waiting (a no-op waker: nothing is lost, a
/// pending body is finished later by the async path).
fn read_now<B>(body: &mut B, max: usize) -> Result<Read, BoxError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    loop {
        match Pin::new(&mut *body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                // Trailers are dropped, as `collect().to_bytes()` drops them.
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let read =
                    first.as_ref().map_or(0, Bytes::len) + more.as_ref().map_or(0, BytesMut::len);
                if read + data.len() > max {
                    return Ok(Read::TooLarge);
                }
                match (&first, &mut more) {
                    (None, _) => first = Some(data),
                    (Some(head), None) => {
                        let mut joined = BytesMut::with_capacity(head.len() + data.len());
                        joined.extend_from_slice(head);
                        joined.extend_from_slice(&data);
                        more = Some(joined);
                        first = Some(Bytes::new());
                    }
                    (Some(_), Some(joined)) => joined.extend_from_slice(&data),
                }
            }
            Poll::Ready(Some(Err(error))) => return Err(error.into()),
            Poll::Ready(None) => {
                return Ok(Read::All(match more {
                    Some(joined) => joined.freeze(),
                    None => first.unwrap_or_default(),
                }));
            }
            Poll::Pending => {
                return Ok(match (more, first) {
                    (Some(joined), _) => Read::Partial(joined.freeze()),
                    (None, Some(head)) => Read::Partial(head),
                    (None, None) => Read::Untouched,
                });
            }
        }
    }
}

/// Buffers `request`'s body if it is known to fit in `max` bytes. Returns the request
/// to send now and, if buffered, a template to send it again.
pub(crate) async fn make_replayable<B: RequestBody>(
    request: Request<B>,
    max: usize,
) -> Result<(Request<ReplayBody>, Option<ReplayTemplate>), BoxError> {
    match buffer_now(request, max)? {
        Buffering::Ready(request, template) => Ok((request, template)),
        Buffering::Unfinished(unfinished) => unfinished.finish(max).await,
    }
}

#[cfg(test)]
mod tests;
