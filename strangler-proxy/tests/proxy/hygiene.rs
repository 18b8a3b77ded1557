//! Forwarding headers, hop-by-hop removal, request smuggling, size limits, upstream failures.

use std::time::Duration;

use tokio::net::TcpStream;

use crate::support::{catalog_config, catalog_proxy, Mode, Stub, TestProxy};

async fn raw_exchange(proxy: &TestProxy, request: &[u8]) -> String {
    crate::support::raw_exchange(proxy.addr, request).await
}

/// The status line of the answer to raw bytes.
async fn raw(proxy: &TestProxy, request: &[u8]) -> String {
    let answer = raw_exchange(proxy, request).await;
    answer.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn upstreams_get_forwarding_headers_and_no_hop_by_hop_ones() {
    let (_monolith, _service, proxy) = catalog_proxy("phase = \"monolith\"").await;
    let (status, body) = proxy
        .get(
            "/orders/1?x=1",
            &[
                ("X-Forwarded-For", "203.0.113.9"),
                ("Connection", "keep-alive, X-Drop-Me"),
                ("X-Drop-Me", "secret"),
                ("Keep-Alive", "timeout=5"),
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
            ],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["path"], "/orders/1?x=1");
    let headers = &body["headers"];
    // The client is no trusted proxy: its own X-Forwarded-For is replaced, not extended.
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert!(headers["x-forwarded-host"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(headers["forwarded"]
        .as_str()
        .unwrap()
        .starts_with("for=127.0.0.1;proto=http;host="));
    assert!(headers["traceparent"]
        .as_str()
        .unwrap()
        .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    assert_eq!(headers["x-request-id"].as_str().unwrap().len(), 32);
    assert!(headers.get("x-drop-me").is_none(), "{headers}");
    assert!(headers.get("keep-alive").is_none(), "{headers}");

    // No traceparent: a new trace starts. An X-Request-Id is kept.
    let (_, body) = proxy.get("/orders/1", &[("X-Request-Id", "req-42")]).await;
    assert!(body["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .starts_with("00-"));
    assert_eq!(body["headers"]["x-request-id"], "req-42");
    proxy.shutdown().await;
}

#[tokio::test]
async fn smuggling_and_oversized_requests_are_refused() {
    let monolith = Stub::start("monolith").await;
    let service = Stub::start("service").await;
    let text = format!("{}\n", catalog_config("phase = \"monolith\"", "")).replace(
        "override_header = true",
        "override_header = true\nmax_body_bytes = 1024\nmax_header_bytes = 8192",
    );
    let proxy = TestProxy::start(&text, &monolith, &service).await;

    // Content-Length with Transfer-Encoding, in either order: refused 400 and the connection
    // closed, so nothing is forwarded and nothing smuggled behind it is ever read. Before it,
    // on the same connection, a request with a length and a chunked one pass: the framing is
    // followed from one request to the next.
    let both = [
        "Content-Length: 4\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 4",
    ];
    for headers in both {
        let before = monolith.hits();
        let stream = format!(
            "POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
             POST /orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
             POST /orders HTTP/1.1\r\nHost: x\r\n{headers}\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
             GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        let answer = raw_exchange(&proxy, stream.as_bytes()).await;
        let statuses: Vec<&str> = answer
            .match_indices("HTTP/1.1 ")
            .map(|(at, _)| &answer[at + 9..at + 12])
            .collect();
        assert_eq!(statuses, ["200", "200", "400"], "{headers}: {answer}");
        assert!(answer.contains("/problems/bad-framing"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
        assert!(!answer.contains("/smuggled"), "{answer}");
        assert_eq!(
            monolith.hits(),
            before + 2,
            "{headers}: only the first two went on"
        );
    }
    let two_lengths =
        b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!";
    assert!(
        raw(&proxy, two_lengths).await.starts_with("HTTP/1.1 400"),
        "two lengths"
    );
    let gzip =
        b"POST /orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n";
    assert!(
        raw(&proxy, gzip).await.starts_with("HTTP/1.1 400"),
        "TE other than chunked"
    );
    let dots = b"GET /catalog/%2e%2e/orders HTTP/1.1\r\nHost: x\r\n\r\n";
    assert!(
        raw(&proxy, dots).await.starts_with("HTTP/1.1 400"),
        "dot segments"
    );

    let big = proxy
        .http
        .post(proxy.url("/orders"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    assert_eq!(big.headers()["content-type"], "application/problem+json");
    // Chunked, so the length is only known while streaming.
    let chunks = futures::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 600])));
    let streamed = proxy
        .http
        .post(proxy.url("/orders"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 413);
    let small = proxy
        .http
        .post(proxy.url("/orders"))
        .body(vec![b'x'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), 200);

    let huge_header = format!(
        "GET /orders HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "h".repeat(10_000)
    );
    assert!(
        raw(&proxy, huge_header.as_bytes())
            .await
            .starts_with("HTTP/1.1 431"),
        "header too large"
    );
    // Reached the monolith: the four requests before the refused ones, the small one, and the
    // start of the streamed oversized one, whose body was cut off unterminated (streaming
    // means it was under way before its size was known; the upstream can never take it for a
    // complete request).
    assert_eq!(monolith.hits(), 6);
    proxy.shutdown().await;
}

#[tokio::test]
async fn upstream_failures_are_problems_not_hangs() {
    let (_monolith, service, proxy) = catalog_proxy("phase = \"extracted\"").await;

    service.set_mode(Mode::Hang);
    let (status, body) = proxy.get("/catalog/products/1", &[]).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (504, Some("/problems/upstream-timeout")),
        "{body}"
    );

    service.stop();
    crate::support::eventually(
        Duration::from_secs(5),
        "the service port to close",
        || async { TcpStream::connect(service.addr).await.is_err() },
    )
    .await;
    let (status, body) = proxy.get("/catalog/products/1", &[]).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (502, Some("/problems/upstream-unavailable")),
        "{body}"
    );
    let metrics = proxy.proxy.metrics().render();
    assert!(
        metrics.contains(
            r#"strangler_proxy_upstream_errors_total{upstream="catalog",kind="timeout"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"strangler_proxy_upstream_errors_total{upstream="catalog",kind="connect"}"#
        ),
        "{metrics}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn http2_clients_are_served() {
    let (_monolith, _service, proxy) = catalog_proxy("phase = \"extracted\"").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for (path, expected) in [
        ("/catalog/products/1", "service"),
        ("/orders/1", "monolith"),
    ] {
        let response = h2.get(proxy.url(path)).send().await.unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["served_by"], expected);
    }
    proxy.shutdown().await;
}
