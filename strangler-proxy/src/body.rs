//! The proxy's body type: bodies are streamed frame by frame, never buffered whole, except the
//! bounded copy a shadow comparison takes ([`ProxyBody::tee`]).

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;

/// Boxed error of a body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body grew past the configured limit while streaming.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request body exceeds {limit} bytes")]
pub struct BodyTooLarge {
    /// The limit.
    pub limit: u64,
}

/// A body passing through the proxy.
#[derive(Debug)]
pub enum ProxyBody {
    /// A body streamed from a peer.
    Streamed(Incoming),
    /// A streamed request body that fails once it passes `limit` bytes.
    Limited {
        /// The streamed body.
        inner: Incoming,
        /// Bytes seen so far.
        seen: u64,
        /// The limit.
        limit: u64,
    },
    /// A streamed body of which a bounded copy is handed over when it ends.
    Tee(Box<Tee>),
    /// A small body the proxy made itself.
    Full(Option<Bytes>),
}

/// State of [`ProxyBody::Tee`].
#[derive(Debug)]
pub struct Tee {
    inner: Incoming,
    copy: Option<BytesMut>,
    limit: usize,
    done: Option<oneshot::Sender<Option<Bytes>>>,
}

impl Tee {
    /// Hands the copy over (once): `None` if it was abandoned.
    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(self.copy.take().map(BytesMut::freeze));
        }
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // Dropped after its last byte was read (the server knew the length): still complete.
        if self.inner.is_end_stream() {
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

    /// Streams `inner` and, when it ends, sends a copy of it (or `None` if it passed `limit`
    /// bytes or failed) to the returned receiver.
    pub fn tee(inner: Incoming, limit: usize) -> (Self, oneshot::Receiver<Option<Bytes>>) {
        let (tx, rx) = oneshot::channel();
        let tee = Tee {
            inner,
            copy: Some(BytesMut::new()),
            limit,
            done: Some(tx),
        };
        (ProxyBody::Tee(Box::new(tee)), rx)
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
            ProxyBody::Streamed(inner) => Pin::new(inner).poll_frame(cx).map_err(Into::into),
            ProxyBody::Limited { inner, seen, limit } => {
                let frame = ready!(Pin::new(inner).poll_frame(cx));
                if let Some(Ok(frame)) = &frame {
                    if let Some(data) = frame.data_ref() {
                        *seen += data.len() as u64;
                        if *seen > *limit {
                            return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                                limit: *limit,
                            }))));
                        }
                    }
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            ProxyBody::Tee(tee) => {
                let frame = ready!(Pin::new(&mut tee.inner).poll_frame(cx));
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
                        if tee.inner.is_end_stream() {
                            tee.finish();
                        }
                    }
                    Some(Err(_)) => {
                        tee.copy = None;
                        tee.finish();
                    }
                    None => tee.finish(),
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Streamed(inner) | ProxyBody::Limited { inner, .. } => inner.is_end_stream(),
            ProxyBody::Tee(tee) => tee.inner.is_end_stream(),
            ProxyBody::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Streamed(inner) | ProxyBody::Limited { inner, .. } => inner.size_hint(),
            ProxyBody::Tee(tee) => tee.inner.size_hint(),
            ProxyBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}

/// Whether `err` (or a cause of it) is a [`BodyTooLarge`].
pub fn is_body_too_large(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.is::<BodyTooLarge>() {
            return true;
        }
        current = e.source();
    }
    false
}
