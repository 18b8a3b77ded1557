//! The proxy's body type: bodies are streamed frame by frame, never buffered whole, except the
//! bounded copy a shadow comparison or a capture takes ([`ProxyBody::tee`]).
//!
//! Both directions are guarded:
//! - a **request** body ([`ProxyBody::client`]) fails with a [`ClientFault`] when it passes the
//!   size limit while streaming (whatever the client declared, HTTP/2 bodies without a length
//!   included), when the client sends nothing for the idle timeout, when it hangs up half-way,
//!   or when its framing is malformed. The upstream call that carried it then fails with that
//!   fault in its cause chain, so the proxy can tell the client's fault from the upstream's
//!   ([`client_fault`]) and never count it against the upstream;
//! - a **response** body ([`ProxyBody::upstream`]) fails with [`UpstreamStalled`] when the
//!   upstream sends nothing for the idle timeout after its head, so a stalled upstream cannot
//!   hold a client connection for ever.
//!
//! The idle timer exists only while a body is waiting: a body whose frames are ready when
//! polled never allocates one.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::Sleep;

/// Boxed error of a body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a client did wrong with its request body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientFault {
    /// The body grew past the configured limit.
    #[error("the request body exceeds {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The client sent nothing for the idle timeout in the middle of its body.
    #[error("the client sent no part of its request body for {0:?}")]
    Stalled(Duration),
    /// The client hung up before its body was complete.
    #[error("the client hung up in the middle of its request body")]
    Aborted,
    /// The body's framing is malformed (a bad chunk, for instance).
    #[error("the request body is malformed: {0}")]
    Malformed(String),
}

/// An upstream sent nothing for the idle timeout in the middle of its response body.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the upstream sent no part of its response body for {0:?}")]
pub struct UpstreamStalled(pub Duration);

/// The idle timer of a streamed body: armed when the body waits, cleared by each frame.
#[derive(Debug)]
struct Idle {
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Idle {
    fn new(timeout: Duration) -> Idle {
        Idle {
            timeout,
            timer: None,
        }
    }

    /// Called when the body is not ready: whether it has now waited for the whole timeout.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        timer.as_mut().poll(cx).is_ready()
    }

    fn progressed(&mut self) {
        self.timer = None;
    }
}

/// A streamed body from a peer with its guards.
#[derive(Debug)]
pub struct Stream {
    inner: Incoming,
    idle: Idle,
    /// The client's body: bytes seen and the limit. `None` for an upstream's body.
    limit: Option<(u64, u64)>,
}

impl Stream {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if self.idle.expired(cx) {
                    let err: BoxError = match self.limit {
                        Some(_) => Box::new(ClientFault::Stalled(self.idle.timeout)),
                        None => Box::new(UpstreamStalled(self.idle.timeout)),
                    };
                    return Poll::Ready(Some(Err(err)));
                }
                return Poll::Pending;
            }
        };
        self.idle.progressed();
        match (frame, &mut self.limit) {
            (Some(Ok(frame)), Some((seen, limit))) => {
                if let Some(data) = frame.data_ref() {
                    *seen += data.len() as u64;
                    if *seen > *limit {
                        let fault = ClientFault::TooLarge { limit: *limit };
                        return Poll::Ready(Some(Err(Box::new(fault))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            (Some(Err(err)), Some(_)) => {
                let fault = if err.is_incomplete_message() || err.is_closed() {
                    ClientFault::Aborted
                } else {
                    ClientFault::Malformed(err.to_string())
                };
                Poll::Ready(Some(Err(Box::new(fault))))
            }
            (frame, _) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
        }
    }
}

/// A body passing through the proxy.
#[derive(Debug)]
pub enum ProxyBody {
    /// A body streamed from a peer (a client's request, an upstream's response).
    Streamed(Box<Stream>),
    /// A streamed body of which a bounded copy is handed over when it ends.
    Tee(Box<Tee>),
    /// A small body the proxy made itself.
    Full(Option<Bytes>),
}

/// State of [`ProxyBody::Tee`].
#[derive(Debug)]
pub struct Tee {
    inner: Stream,
    copy: Option<BytesMut>,
    /// The largest of the receivers' bounds: past it, no receiver wants the copy.
    limit: usize,
    /// Each receiver with its own bound.
    done: Vec<(usize, oneshot::Sender<Option<Bytes>>)>,
}

impl Tee {
    /// Hands the copy over (once) to each receiver whose bound it fits: `None` if it was
    /// abandoned or is too large for that receiver.
    fn finish(&mut self) {
        let copy = self.copy.take().map(BytesMut::freeze);
        for (limit, done) in self.done.drain(..) {
            let _ = done.send(copy.clone().filter(|c| c.len() <= limit));
        }
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // Dropped after its last byte was read (the server knew the length): still complete.
        if self.inner.inner.is_end_stream() {
            self.finish();
        }
    }
}

impl ProxyBody {
    /// A fixed body.
    pub fn full(bytes: Bytes) -> Self {
        ProxyBody::Full(Some(bytes))
    }

    /// An empty body.
    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }

    /// A client's request body: fails with a [`ClientFault`] past `limit` bytes, after `idle`
    /// without a byte, or when the client breaks it off.
    pub fn client(inner: Incoming, limit: u64, idle: Duration) -> Self {
        ProxyBody::Streamed(Box::new(Stream {
            inner,
            idle: Idle::new(idle),
            limit: Some((0, limit)),
        }))
    }

    /// An upstream's response body: fails with [`UpstreamStalled`] after `idle` without a byte.
    pub fn upstream(inner: Incoming, idle: Duration) -> Self {
        ProxyBody::Streamed(Box::new(Stream {
            inner,
            idle: Idle::new(idle),
            limit: None,
        }))
    }

    /// Streams `body` (a streamed body, or one teed already; any other is returned as it is,
    /// with no copy) and, when it ends, sends a copy of it (or `None` if it passed `limit`
    /// bytes or failed) to the returned receiver. A body teed twice streams once and hands
    /// one copy to both receivers.
    pub fn tee(body: ProxyBody, limit: usize) -> (Self, oneshot::Receiver<Option<Bytes>>) {
        let (tx, rx) = oneshot::channel();
        match body {
            ProxyBody::Streamed(inner) => {
                let tee = Tee {
                    inner: *inner,
                    copy: Some(BytesMut::new()),
                    limit,
                    done: vec![(limit, tx)],
                };
                (ProxyBody::Tee(Box::new(tee)), rx)
            }
            ProxyBody::Tee(mut tee) => {
                tee.limit = tee.limit.max(limit);
                tee.done.push((limit, tx));
                (ProxyBody::Tee(tee), rx)
            }
            ProxyBody::Full(_) => (body, rx),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Streamed(stream) => stream.poll_frame(cx),
            ProxyBody::Tee(tee) => {
                let frame = ready!(tee.inner.poll_frame(cx));
                match &frame {
                    Some(Ok(frame)) => {
                        if let (Some(data), Some(copy)) = (frame.data_ref(), tee.copy.as_mut()) {
                            if copy.len() + data.len() > tee.limit {
                                tee.copy = None;
                            } else {
                                copy.extend_from_slice(data);
                            }
                        }
                        // A length-delimited body is complete once its bytes are in; hyper may
                        // never poll it again, so hand the copy over now.
                        if tee.inner.inner.is_end_stream() {
                            tee.finish();
                        }
                    }
                    Some(Err(_)) => {
                        tee.copy = None;
                        tee.finish();
                    }
                    None => tee.finish(),
                }
                Poll::Ready(frame)
            }
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Streamed(stream) => stream.inner.is_end_stream(),
            ProxyBody::Tee(tee) => tee.inner.inner.is_end_stream(),
            ProxyBody::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Streamed(stream) => stream.inner.size_hint(),
            ProxyBody::Tee(tee) => tee.inner.inner.size_hint(),
            ProxyBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}

/// The [`ClientFault`] in `err`'s cause chain, if the client's body is what failed.
pub fn client_fault<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a ClientFault> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(fault) = e.downcast_ref::<ClientFault>() {
            return Some(fault);
        }
        current = e.source();
    }
    None
}
