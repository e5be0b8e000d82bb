//! Server-sent events with a cap on one event's size, applied to the raw bytes before
//! parsing (rmcp asks custom clients to enforce `max_sse_event_size` themselves).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use http_body::{Body, Frame, SizeHint};
use rmcp::transport::streamable_http_client::SseError;
use sse_stream::{Sse, SseStream};
use tower::BoxError;

/// Parses `body` as server-sent events, failing (once) on an event over `max` bytes.
pub(super) fn sse_events<B>(body: B, max: usize) -> BoxStream<'static, Result<Sse, SseError>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    SseStream::new(BoundedEvents {
        body,
        max,
        event: 0,
        line: 0,
        comment: false,
        after_cr: false,
        failed: false,
    })
    .boxed()
}

/// An SSE body that fails when one event's retained bytes exceed `max`, so a server
/// cannot make the client buffer an unbounded event.
#[pin_project::pin_project]
struct BoundedEvents<B> {
    #[pin]
    body: B,
    max: usize,
    /// Bytes of the current event's finished, non-comment lines.
    event: usize,
    /// Bytes of the current line.
    line: usize,
    comment: bool,
    /// The last byte was a CR: a LF right after it ends the same line.
    after_cr: bool,
    failed: bool,
}

/// A failure reading an SSE body (the connection's, or [`EventTooLarge`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SseBodyError(#[source] BoxError);

/// One SSE event exceeded the configured size.
#[derive(Debug, thiserror::Error)]
#[error("SSE event larger than {max} bytes")]
struct EventTooLarge {
    max: usize,
}

impl<B> Body for BoundedEvents<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = SseBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, SseBodyError>>> {
        let this = self.project();
        if *this.failed {
            return Poll::Ready(None);
        }
        let frame = match std::task::ready!(this.body.poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => {
                *this.failed = true;
                return Poll::Ready(Some(Err(SseBodyError(error.into()))));
            }
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            for &byte in data.iter() {
                let crlf = byte == b'\n' && *this.after_cr;
                *this.after_cr = byte == b'\r';
                match byte {
                    _ if crlf => {}
                    b'\n' | b'\r' => {
                        if *this.line == 0 {
                            // A blank line ends the event.
                            *this.event = 0;
                        } else if !*this.comment {
                            *this.event = this.event.saturating_add(*this.line + 1);
                        }
                        *this.line = 0;
                        *this.comment = false;
                    }
                    _ => {
                        if *this.line == 0 {
                            *this.comment = byte == b':';
                        }
                        *this.line = this.line.saturating_add(1);
                    }
                }
                if this.event.saturating_add(*this.line) > *this.max {
                    *this.failed = true;
                    return Poll::Ready(Some(Err(SseBodyError(Box::new(EventTooLarge {
                        max: *this.max,
                    })))));
                }
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
