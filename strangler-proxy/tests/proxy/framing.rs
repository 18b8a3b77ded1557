//! Property tests of the request framing over arbitrary bytes: whatever a client sends, the
//! proxy does not fall over, and it forwards nothing that a strict parser (`httparse`, with the
//! proxy's own smuggling rules on top) refuses.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Stub, TestProxy};

/// An upstream that counts the requests it receives and answers each with a short 200.
async fn counting_upstream() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        async move {
                            use http_body_util::BodyExt;
                            let _ = request.into_body().collect().await;
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    (addr, hits)
}

/// Whether a strict reading of `input` finds a complete request head that may be forwarded:
/// `httparse` accepts it, and its framing headers pass the proxy's smuggling rules: one
/// length, or chunked alone, and never both `Content-Length` and `Transfer-Encoding`.
fn strictly_forwardable(input: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(input) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return false,
    }
    let values = |name: &str| -> Vec<&[u8]> {
        request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect()
    };
    let lengths = values("content-length");
    let encodings = values("transfer-encoding");
    let hosts = values("host");
    let chunked_only = encodings.iter().all(|e| e.eq_ignore_ascii_case(b"chunked"));
    let one_framing = lengths.is_empty() || encodings.is_empty();
    let lengths_agree = lengths.windows(2).all(|w| w[0] == w[1])
        && lengths
            .iter()
            .all(|l| std::str::from_utf8(l).is_ok_and(|l| l.trim().parse::<u64>().is_ok()));
    let host_ok = match request.version {
        Some(1) => hosts.len() == 1,
        _ => hosts.len() <= 1,
    };
    request.method != Some("CONNECT") && one_framing && lengths_agree && chunked_only && host_ok
}

/// Requests built from parts that parsers disagree on, and arbitrary bytes.
fn inputs() -> impl Strategy<Value = Vec<u8>> {
    let method = prop::sample::select(vec!["GET", "POST", "PUT", "CONNECT", "G ET", "get", ""]);
    let target = prop::sample::select(vec![
        "/orders/1",
        "/orders/%31",
        "//a",
        "*",
        "http://x/y",
        "/a b",
        "/\u{0}",
        "/../x",
        "",
    ]);
    let version = prop::sample::select(vec![
        "HTTP/1.1",
        "HTTP/1.0",
        "HTTP/2.0",
        "HTTP/1.1 ",
        "http/1.1",
    ]);
    let header = prop::sample::select(vec![
        "Host: shop",
        "Host: a\r\nHost: b",
        "Content-Length: 5",
        "Content-Length: 5\r\nContent-Length: 6",
        "Content-Length: -1",
        "Content-Length: 5, 5",
        "Transfer-Encoding: chunked",
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding : chunked",
        "Transfer-Encoding:\tchunked",
        "X-Folded: a\r\n b",
        "X-Bare: a\nX-Other: b",
        "Bad Name: x",
        "X-Nul: a\u{0}b",
        "Connection: close",
        "Expect: 100-continue",
    ]);
    let body = prop::sample::select(vec![
        "",
        "hello",
        "5\r\nhello\r\n0\r\n\r\n",
        "zz\r\n",
        "0\r\n\r\n",
    ]);
    let built = (
        method,
        target,
        version,
        prop::collection::vec(header, 0..5),
        body,
        any::<bool>(),
    )
        .prop_map(|(method, target, version, headers, body, crlf)| {
            let eol = if crlf { "\r\n" } else { "\n" };
            let mut text = format!("{method} {target} {version}{eol}");
            for header in headers {
                text.push_str(header);
                text.push_str(eol);
            }
            text.push_str(eol);
            text.push_str(body);
            text.into_bytes()
        });
    prop_oneof![
        3 => built,
        1 => prop::collection::vec(any::<u8>(), 0..200),
        1 => (prop::collection::vec(any::<u8>(), 0..40)).prop_map(|tail| {
            let mut bytes = b"POST /orders HTTP/1.1\r\nHost: shop\r\n".to_vec();
            bytes.extend(tail);
            bytes
        }),
    ]
}

/// Sends `input`, closes the sending side, and reads what comes back.
async fn exchange(proxy: SocketAddr, input: &[u8]) {
    let Ok(mut stream) = TcpStream::connect(proxy).await else {
        return;
    };
    let _ = stream.write_all(input).await;
    let _ = stream.shutdown().await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
}

#[test]
fn arbitrary_bytes_never_crash_the_proxy_nor_pass_a_strict_parser_unchecked() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stub = runtime.block_on(Stub::start("unused"));
    // Each case has an upstream and a proxy of its own: a request forwarded and then broken
    // off can reach its upstream after its exchange ended, and must count for its own case.
    let case = |input: &[u8]| {
        runtime.block_on(async {
            let (upstream, hits) = counting_upstream().await;
            let text = format!(
                "[proxy]\nheader_timeout_ms = 500\nbody_idle_timeout_ms = 500\n[upstreams.monolith]\ninstances = [\"http://{upstream}\"]\nretries = 0\n"
            );
            let proxy = TestProxy::start(&text, &stub, &stub).await;
            exchange(proxy.addr, input).await;
            (hits, proxy)
        })
    };
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let cases = std::cell::RefCell::new(Vec::new());
    let result = runner.run(&inputs(), |input| {
        let (hits, proxy) = case(&input);
        let forwarded = hits.load(Ordering::SeqCst) > 0;
        cases.borrow_mut().push((input.clone(), hits, proxy));
        if forwarded && !strictly_forwardable(&input) {
            return Err(TestCaseError::fail(format!(
                "forwarded what a strict parser refuses: {:?}",
                String::from_utf8_lossy(&input)
            )));
        }
        Ok(())
    });
    if let Err(err) = result {
        panic!("{err}");
    }
    // Late arrivals too: every case's upstream saw nothing a strict parser refuses.
    for (input, hits, _) in cases.borrow().iter() {
        assert!(
            hits.load(Ordering::SeqCst) == 0 || strictly_forwardable(input),
            "forwarded (late) what a strict parser refuses: {:?}",
            String::from_utf8_lossy(input)
        );
    }
    // The proxies still serve after all of it.
    for (_, hits, proxy) in cases.borrow().iter().rev().take(3) {
        let before = hits.load(Ordering::SeqCst);
        runtime.block_on(async {
            let response = proxy.http.get(proxy.url("/orders/1")).send().await.unwrap();
            assert_eq!(response.status(), 200);
        });
        assert_eq!(hits.load(Ordering::SeqCst), before + 1);
    }
}

#[test]
fn the_strict_reading_refuses_the_smuggling_shapes() {
    assert!(strictly_forwardable(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert!(strictly_forwardable(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    ));
    for bad in [
        &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n",
    ] {
        assert!(
            !strictly_forwardable(bad),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}
