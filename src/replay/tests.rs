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

/// A body of known size whose bytes arrive in two parts, the second later.
struct Arriving {
    rx: futures::channel::mpsc::UnboundedReceiver<Bytes>,
    size: u64,
}

impl Body for Arriving {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        use futures::Stream;
        Pin::new(&mut self.rx)
            .poll_next(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.size)
    }
}

#[tokio::test]
async fn a_body_still_arriving_keeps_what_was_read_without_waiting() {
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tx.unbounded_send(Bytes::from_static(b"{\"jsonrpc\":"))
        .unwrap();
    let request = Request::new(Arriving { rx, size: 17 });
    let Buffering::Unfinished(unfinished) = buffer_now(request, 1024).unwrap() else {
        panic!("the second part has not arrived");
    };
    tx.unbounded_send(Bytes::from_static(b"\"2.0\"}")).unwrap();
    drop(tx);
    let (request, template) = unfinished.finish(1024).await.unwrap();
    assert_eq!(
        template.unwrap().body(),
        &Bytes::from_static(b"{\"jsonrpc\":\"2.0\"}")
    );
    assert_eq!(
        request.into_body().collect().await.unwrap().to_bytes(),
        Bytes::from_static(b"{\"jsonrpc\":\"2.0\"}")
    );
}

#[tokio::test]
async fn in_memory_bodies_are_ready_at_once_and_buffers_are_shared() {
    let request = Request::new(Full::new(Bytes::from_static(b"{}")));
    let Buffering::Ready(request, Some(template)) = buffer_now(request, 1024).unwrap() else {
        panic!("a Full body is in memory");
    };
    // An inner layer gets the same buffer: no copy.
    let Buffering::Ready(_, Some(inner)) = buffer_now(request, 1024).unwrap() else {
        panic!("a buffered body is ready");
    };
    assert_eq!(inner.body().as_ptr(), template.body().as_ptr());
    // A body larger than its size hint claims is refused, not truncated.
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tx.unbounded_send(Bytes::from_static(b"0123456789"))
        .unwrap();
    assert!(buffer_now(Request::new(Arriving { rx, size: 4 }), 4).is_err());
}
