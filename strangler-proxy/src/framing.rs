//! The HTTP/1 request framing as the client sent it, read beside hyper's parser.
//!
//! A request with both `Content-Length` and `Transfer-Encoding` is the signature of a
//! request-smuggling attempt: two parsers on the path may frame it differently. hyper reads such
//! a request as chunked, drops the length and closes the connection after the answer (RFC 9112
//! §6.3 lets a server do that); a proxy should rather refuse it, as Envoy does. hyper does not
//! show the header it dropped, so the server reads the bytes on their way to hyper
//! ([`Inspected`]): the [`Scanner`] finds each request head with `httparse` (the parser hyper
//! uses), notes whether it has both headers, and steps over its body by the same framing rules
//! as hyper, to the next head. The server then refuses the requests flagged ([`Verdicts`]).
//!
//! The scanner follows hyper and never leads it: what it cannot read (a head hyper will refuse,
//! a preface of HTTP/2, a `CONNECT`) turns it off for the rest of the connection, and a request
//! it did not flag goes on as hyper parsed it. It costs one `httparse` pass per request head and
//! nothing per body byte.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most headers a head may have for the scanner to read it (hyper refuses more than 100).
const MAX_HEADERS: usize = 128;
/// The longest chunk-size or trailer line the scanner keeps.
const MAX_LINE: usize = 4096;

/// One request head the scanner read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Its place on the connection, from 0.
    pub index: u64,
    /// Whether it has both `Content-Length` and `Transfer-Encoding`.
    pub ambiguous: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a request head.
    Head,
    /// This many body bytes are left.
    Length(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// This many bytes of chunk data are left, then its line end.
    ChunkData(u64),
    /// The line end after chunk data: `\n` ends it.
    ChunkEnd,
    /// Reading trailer lines; an empty one ends the message.
    Trailers,
    /// Not something the scanner reads: it stops, hyper decides.
    Off,
}

/// Finds the request heads in an HTTP/1 byte stream, fed in pieces of any size.
#[derive(Debug)]
pub struct Scanner {
    state: State,
    /// The part of a head or line that arrived so far.
    pending: Vec<u8>,
    max_head: usize,
    heads: u64,
}

impl Scanner {
    /// A scanner that gives up on heads longer than `max_head` bytes (hyper refuses them).
    pub fn new(max_head: usize) -> Self {
        Scanner {
            state: State::Head,
            pending: Vec::new(),
            max_head,
            heads: 0,
        }
    }

    /// Whether it stopped reading (the rest of the connection is hyper's alone).
    pub fn is_off(&self) -> bool {
        self.state == State::Off
    }

    /// Reads `bytes`, the next ones of the stream; calls `found` for each head completed.
    pub fn feed(&mut self, mut bytes: &[u8], mut found: impl FnMut(Head)) {
        while !bytes.is_empty() {
            let used = match self.state {
                State::Off => return,
                State::Head => self.head(bytes, &mut found),
                State::Length(left) => {
                    let (used, left) = skip(left, bytes);
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Length(left)
                    };
                    used
                }
                State::ChunkSize => self.line(bytes, Self::chunk_size),
                State::ChunkData(left) => {
                    let (used, left) = skip(left, bytes);
                    self.state = if left == 0 {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(left)
                    };
                    used
                }
                State::ChunkEnd => match bytes[0] {
                    b'\r' => 1,
                    b'\n' => {
                        self.state = State::ChunkSize;
                        1
                    }
                    _ => {
                        self.state = State::Off;
                        return;
                    }
                },
                State::Trailers => self.line(bytes, Self::trailer),
            };
            bytes = &bytes[used..];
        }
    }

    /// Reads head bytes; returns how many of `bytes` it used.
    fn head(&mut self, bytes: &[u8], found: &mut impl FnMut(Head)) -> usize {
        // Usually the whole head is in one read: parse it where it lies. A head that trickles
        // in is parsed again only when the new bytes may end it (an empty line), so a client
        // sending a byte at a time costs one parse, not one per read.
        let (parsed, kept) = if self.pending.is_empty() {
            let parsed = if may_end_head(bytes) {
                parse_head(bytes)
            } else {
                Parsed::Partial
            };
            (parsed, 0)
        } else {
            let kept = self.pending.len();
            self.pending.extend_from_slice(bytes);
            let parsed = if may_end_head(&self.pending[kept.saturating_sub(3)..]) {
                parse_head(&self.pending)
            } else {
                Parsed::Partial
            };
            (parsed, kept)
        };
        match parsed {
            Parsed::Partial => {
                if self.pending.is_empty() {
                    self.pending.extend_from_slice(bytes);
                }
                if self.pending.len() > self.max_head {
                    self.state = State::Off;
                }
                bytes.len()
            }
            Parsed::Refused => {
                self.state = State::Off;
                bytes.len()
            }
            Parsed::Complete {
                len,
                ambiguous,
                body,
            } => {
                self.pending.clear();
                found(Head {
                    index: self.heads,
                    ambiguous,
                });
                self.heads += 1;
                self.state = body;
                len - kept
            }
        }
    }

    /// Gathers a line (a chunk size, a trailer) and hands it to `done` once complete.
    fn line(&mut self, bytes: &[u8], done: fn(&mut Self, &[u8])) -> usize {
        match bytes.iter().position(|b| *b == b'\n') {
            Some(end) => {
                self.pending.extend_from_slice(&bytes[..=end]);
                let line = std::mem::take(&mut self.pending);
                done(self, &line);
                end + 1
            }
            None => {
                self.pending.extend_from_slice(bytes);
                if self.pending.len() > MAX_LINE {
                    self.state = State::Off;
                }
                bytes.len()
            }
        }
    }

    fn chunk_size(&mut self, line: &[u8]) {
        self.state = match httparse::parse_chunk_size(line) {
            Ok(httparse::Status::Complete((_, 0))) => State::Trailers,
            Ok(httparse::Status::Complete((_, size))) => State::ChunkData(size),
            _ => State::Off,
        };
    }

    fn trailer(&mut self, line: &[u8]) {
        if line == b"\r\n" || line == b"\n" {
            self.state = State::Head;
        }
    }
}

/// Steps over up to `left` bytes of `bytes`: how many it used, and how many are still left.
fn skip(left: u64, bytes: &[u8]) -> (usize, u64) {
    let used = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
    (used, left - used as u64)
}

/// Whether `bytes` hold an empty line's end (`\n\n` or `\n\r\n`), without which no head ends.
fn may_end_head(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(3).any(|w| w == b"\n\r\n")
}

enum Parsed {
    Partial,
    /// hyper refuses it, or the scanner cannot follow what comes after it.
    Refused,
    Complete {
        len: usize,
        ambiguous: bool,
        body: State,
    },
}

/// A request head at the start of `bytes`, read as hyper reads it.
fn parse_head(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Refused,
    };
    if request.method == Some("CONNECT") {
        return Parsed::Refused;
    }
    let mut lengths = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .peekable();
    let has_length = lengths.peek().is_some();
    // The last Transfer-Encoding line decides, as in hyper.
    let encoding = request
        .headers
        .iter()
        .rfind(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    let body = match encoding {
        Some(encoding) => {
            let chunked = encoding
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            if request.version != Some(1) || !chunked {
                return Parsed::Refused;
            }
            State::ChunkSize
        }
        None => {
            let mut length = None;
            for line in lengths {
                let parsed = std::str::from_utf8(line.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok());
                match (parsed, length) {
                    (None, _) => return Parsed::Refused,
                    (Some(l), Some(before)) if l != before => return Parsed::Refused,
                    (Some(l), _) => length = Some(l),
                }
            }
            match length {
                Some(l) if l > 0 => State::Length(l),
                _ => State::Head,
            }
        }
    };
    Parsed::Complete {
        len,
        ambiguous: has_length && encoding.is_some(),
        body,
    }
}

/// The head of one connection the server must refuse, shared by its reader and its service.
/// Only the first ambiguous head counts: the connection closes after its answer (hyper closes
/// it after any head with both headers), so no request after it is served.
#[derive(Debug)]
pub struct Verdicts {
    /// The index of the first ambiguous head (`u64::MAX`: none yet).
    first_ambiguous: AtomicU64,
    served: AtomicU64,
}

impl Default for Verdicts {
    fn default() -> Self {
        Verdicts {
            first_ambiguous: AtomicU64::new(u64::MAX),
            served: AtomicU64::new(0),
        }
    }
}

impl Verdicts {
    fn flag(&self, head: Head) {
        if head.ambiguous {
            self.first_ambiguous
                .fetch_min(head.index, Ordering::Relaxed);
        }
    }

    /// Called once for each HTTP/1 request the connection serves, in order: whether that
    /// request's head had both `Content-Length` and `Transfer-Encoding`. The reader flagged it
    /// before hyper could hand the request over (it read the head first).
    pub fn next_is_ambiguous(&self) -> bool {
        let index = self.served.fetch_add(1, Ordering::Relaxed);
        self.first_ambiguous.load(Ordering::Relaxed) == index
    }
}

/// A client connection whose bytes the [`Scanner`] reads on their way to hyper.
#[derive(Debug)]
pub struct Inspected<T> {
    io: T,
    scanner: Scanner,
    verdicts: Arc<Verdicts>,
}

impl<T> Inspected<T> {
    /// `io`, read by a scanner that gives up on heads over `max_head` bytes.
    pub fn new(io: T, max_head: usize) -> (Self, Arc<Verdicts>) {
        let verdicts = Arc::new(Verdicts::default());
        let inspected = Inspected {
            io,
            scanner: Scanner::new(max_head),
            verdicts: Arc::clone(&verdicts),
        };
        (inspected, verdicts)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Inspected<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if !this.scanner.is_off() {
            let verdicts = &this.verdicts;
            this.scanner
                .feed(&buf.filled()[before..], |head| verdicts.flag(head));
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Inspected<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The heads found in `input` fed in pieces cut at `cuts`.
    fn scan(input: &[u8], cuts: &[usize]) -> (Vec<Head>, bool) {
        let mut scanner = Scanner::new(8192);
        let mut heads = Vec::new();
        let mut at = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        cuts.sort_unstable();
        for cut in cuts.into_iter().chain([input.len()]) {
            scanner.feed(&input[at..cut.max(at)], |h| heads.push(h));
            at = cut.max(at);
        }
        (heads, scanner.is_off())
    }

    /// A request the client may send, and whether it is ambiguous.
    #[derive(Debug, Clone)]
    enum Message {
        Bodiless,
        Length(Vec<u8>),
        Chunked(Vec<Vec<u8>>, bool),
        Both { length_first: bool },
    }

    impl Message {
        fn bytes(&self) -> Vec<u8> {
            match self {
                Message::Bodiless => b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                Message::Length(body) => {
                    let mut bytes = format!(
                        "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    bytes.extend_from_slice(body);
                    bytes
                }
                Message::Chunked(chunks, trailer) => {
                    let mut bytes =
                        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            .to_vec();
                    for chunk in chunks.iter().filter(|c| !c.is_empty()) {
                        bytes.extend_from_slice(format!("{:x};ext=1\r\n", chunk.len()).as_bytes());
                        bytes.extend_from_slice(chunk);
                        bytes.extend_from_slice(b"\r\n");
                    }
                    bytes.extend_from_slice(b"0\r\n");
                    if *trailer {
                        bytes.extend_from_slice(b"X-Sum: 1\r\n");
                    }
                    bytes.extend_from_slice(b"\r\n");
                    bytes
                }
                Message::Both { length_first } => {
                    let (a, b) = ("Content-Length: 3\r\n", "Transfer-Encoding: chunked\r\n");
                    let (first, second) = if *length_first { (a, b) } else { (b, a) };
                    format!(
                        "POST /d HTTP/1.1\r\nHost: x\r\n{first}{second}\r\n3\r\nabc\r\n0\r\n\r\n"
                    )
                    .into_bytes()
                }
            }
        }

        fn ambiguous(&self) -> bool {
            matches!(self, Message::Both { .. })
        }
    }

    fn message() -> impl Strategy<Value = Message> {
        // Bodies full of what looks like a head, to catch a scanner that reads into them.
        let body = proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'G'), any::<u8>()],
            0..64,
        );
        prop_oneof![
            Just(Message::Bodiless),
            body.clone().prop_map(Message::Length),
            (proptest::collection::vec(body, 0..4), any::<bool>())
                .prop_map(|(c, t)| Message::Chunked(c, t)),
            any::<bool>().prop_map(|length_first| Message::Both { length_first }),
        ]
    }

    proptest! {
        /// However a keep-alive stream of requests is cut into reads, each head is found once,
        /// in order, flagged exactly when it has both framing headers.
        #[test]
        fn every_head_is_found_whatever_the_reads(
            messages in proptest::collection::vec(message(), 1..8),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let input: Vec<u8> = messages.iter().flat_map(Message::bytes).collect();
            let (heads, off) = scan(&input, &cuts);
            prop_assert!(!off);
            let expected: Vec<Head> = messages
                .iter()
                .enumerate()
                .map(|(i, m)| Head { index: i as u64, ambiguous: m.ambiguous() })
                .collect();
            prop_assert_eq!(heads, expected);
        }

        /// Arbitrary bytes: no panic, and a head is flagged only if it is a complete request
        /// `httparse` accepts with both headers.
        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..512),
                                       cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
            let (heads, _) = scan(&input, &cuts);
            if let Some(first) = heads.first() {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut request = httparse::Request::new(&mut headers);
                prop_assert!(matches!(request.parse(&input), Ok(httparse::Status::Complete(_))));
                let has = |name: &str| request.headers.iter().any(|h| h.name.eq_ignore_ascii_case(name));
                prop_assert_eq!(first.ambiguous, has("content-length") && has("transfer-encoding"));
            }
        }
    }

    #[test]
    fn what_hyper_refuses_turns_the_scanner_off() {
        for input in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
            b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            let (_, off) = scan(input, &[]);
            assert!(off, "{}", String::from_utf8_lossy(input));
        }
        // A head longer than the bound, still incomplete.
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 9000));
        assert!(scan(&long, &[100, 5000]).1);
    }

    #[test]
    fn a_head_sent_a_byte_at_a_time_is_found() {
        let input = [
            Message::Both {
                length_first: false,
            }
            .bytes(),
            Message::Length(b"\r\n\r\n".to_vec()).bytes(),
        ]
        .concat();
        let cuts: Vec<usize> = (1..input.len()).collect();
        let (heads, off) = scan(&input, &cuts);
        assert!(!off);
        assert_eq!(
            heads,
            [
                Head {
                    index: 0,
                    ambiguous: true
                },
                Head {
                    index: 1,
                    ambiguous: false
                }
            ]
        );
    }

    #[test]
    fn verdicts_follow_the_requests_served() {
        let verdicts = Verdicts::default();
        for (index, ambiguous) in [(0, false), (1, true), (2, false)] {
            verdicts.flag(Head { index, ambiguous });
        }
        let served: Vec<bool> = (0..4).map(|_| verdicts.next_is_ambiguous()).collect();
        assert_eq!(served, [false, true, false, false]);
    }
}
