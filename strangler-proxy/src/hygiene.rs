//! Request and response hygiene: what a well-behaved proxy removes, adds and refuses.
//!
//! - Hop-by-hop headers (RFC 9110 §7.6.1: `Connection` and every header it names, `Keep-Alive`,
//!   `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`) are dropped both ways.
//! - Forwarding headers: from a configured trusted proxy, `X-Forwarded-For` gets the client's
//!   address appended, `X-Forwarded-Proto` and `X-Forwarded-Host` are kept, and `Forwarded`
//!   (RFC 7239) gets an element appended. From anyone else, the client's own `X-Forwarded-*`,
//!   `X-Real-IP` and `Forwarded` headers are dropped and set afresh, so they cannot be forged.
//!   Values in `Forwarded` are quoted per RFC 7239.
//! - `Host`: a request needs exactly one valid `Host` (HTTP/1.1; HTTP/2 may carry the
//!   authority instead); a missing, repeated or malformed one is refused.
//! - Paths are put in one normal form before routing and forwarding ([`normalize_path`]);
//!   dot segments and encoded slashes are refused ([`has_dot_segment`]).
//! - W3C `traceparent`: a valid one keeps its trace id and gets this hop as parent; an absent or
//!   invalid one starts a new trace. `X-Request-Id` is set when absent.
//! - Request smuggling: several differing `Content-Length`s, or a `Transfer-Encoding` other than
//!   `chunked`, is refused. A request with both `Content-Length` and a chunked
//!   `Transfer-Encoding` reaches the proxy over HTTP/1 without the `Content-Length`: hyper's
//!   parser drops it (RFC 9112 §6.3: the transfer coding wins) and closes the connection after
//!   the response, so the request is forwarded as the chunked message it is, unambiguously.
//!   Refusing it outright (400, as Envoy does) needs framing of our own, below hyper's parser;
//!   [`check_framing`] refuses the combination wherever it still appears.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Why a request's framing was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// Both `Content-Length` and `Transfer-Encoding`.
    #[error("a request must not carry both Content-Length and Transfer-Encoding")]
    LengthAndEncoding,
    /// `Content-Length` values that disagree or do not parse.
    #[error("conflicting or invalid Content-Length")]
    BadLength,
    /// A transfer coding other than `chunked`.
    #[error("unsupported Transfer-Encoding")]
    BadEncoding,
}

/// Checks the framing headers of a request; returns its declared length, if any.
pub fn check_framing(headers: &HeaderMap) -> Result<Option<u64>, FramingError> {
    let has_te = headers.contains_key(header::TRANSFER_ENCODING);
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let parsed = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or(FramingError::BadLength)?;
        if length.is_some_and(|l| l != parsed) {
            return Err(FramingError::BadLength);
        }
        length = Some(parsed);
    }
    if has_te {
        if length.is_some() {
            return Err(FramingError::LengthAndEncoding);
        }
        let chunked_only = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .all(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
        if !chunked_only {
            return Err(FramingError::BadEncoding);
        }
    }
    Ok(length)
}

/// Removes the hop-by-hop headers (and those `Connection` names).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(connection) = headers.get(header::CONNECTION) {
        let named: Vec<HeaderName> = connection
            .to_str()
            .unwrap_or_default()
            .split(',')
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// Why a request's `Host` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// No `Host` on an HTTP/1.1 request.
    #[error("an HTTP/1.1 request needs a Host header")]
    Missing,
    /// More than one `Host`.
    #[error("a request must carry one Host header, not several")]
    Repeated,
    /// A `Host` that is not a valid authority (host and optional port).
    #[error("the Host header is not a valid host[:port]")]
    Malformed,
}

/// Checks the `Host` of a request: exactly one valid one, except that HTTP/1.0 and HTTP/2
/// requests may go without (HTTP/2 names its authority in the request line).
pub fn check_host(version: http::Version, headers: &HeaderMap) -> Result<(), HostError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(HostError::Repeated),
        (Some(host), None) => {
            if host.to_str().is_ok_and(valid_authority) {
                Ok(())
            } else {
                Err(HostError::Malformed)
            }
        }
        (None, _) if version == http::Version::HTTP_11 => Err(HostError::Missing),
        (None, _) => Ok(()),
    }
}

/// `host[:port]` where host is a name (letters, digits, `-._~`), an IPv4 address or a bracketed
/// IPv6 address, and port is 1 to 5 digits: stricter than RFC 3986's reg-name on purpose.
fn valid_authority(authority: &str) -> bool {
    let (host_ok, port) = match authority.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, port)) => (v6.parse::<std::net::Ipv6Addr>().is_ok(), port),
            None => return false,
        },
        None => {
            let (host, port) = match authority.find(':') {
                Some(colon) => authority.split_at(colon),
                None => (authority, ""),
            };
            let name = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
            (name, port)
        }
    };
    let port_ok = match port.strip_prefix(':') {
        Some(digits) => {
            (1..=5).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
        }
        None => port.is_empty(),
    };
    host_ok && port_ok
}

/// An RFC 7239 `quoted-string`: `"` and `\` escaped.
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Adds the forwarding headers, trace context and request id to a request bound upstream.
/// `trusted`: whether the peer is a configured trusted proxy, whose forwarding headers are kept.
pub fn add_forwarding(headers: &mut HeaderMap, client: IpAddr, trusted: bool) {
    if !trusted {
        for name in [
            &X_FORWARDED_FOR,
            &X_FORWARDED_PROTO,
            &X_FORWARDED_HOST,
            &X_REAL_IP,
            &header::FORWARDED,
        ] {
            headers.remove(name);
        }
    }
    let client_text = client.to_string();
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {client_text}"),
        None => client_text.clone(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    let host = headers.get(header::HOST).cloned();
    if let Some(host) = &host {
        if !headers.contains_key(&X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
    }
    // RFC 7239: IPv6 addresses are quoted and bracketed.
    let for_node = match client {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let mut element = format!("for={for_node};proto=http");
    if let Some(host) = host.as_ref().and_then(|h| h.to_str().ok()) {
        element.push_str(";host=");
        element.push_str(&quoted(host));
    }
    let forwarded = match headers.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {element}"),
        None => element,
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        headers.insert(header::FORWARDED, value);
    }
    // 00-<trace id>-<this hop's span id>-01, written in place (this runs for every request).
    let mut traceparent = *b"00-00000000000000000000000000000000-0000000000000000-01";
    match headers
        .get(&TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(telemetry::http::valid_trace_id)
    {
        Some(trace_id) => traceparent[3..35].copy_from_slice(trace_id.as_bytes()),
        None => hex(rand::random::<u128>() | 1, &mut traceparent[3..35]),
    }
    hex(
        u128::from(rand::random::<u64>() | 1),
        &mut traceparent[36..52],
    );
    if let Ok(value) = HeaderValue::from_bytes(&traceparent) {
        headers.insert(TRACEPARENT.clone(), value);
    }
    if !headers.contains_key(&X_REQUEST_ID) {
        let mut id = [0_u8; 32];
        hex(rand::random::<u128>(), &mut id);
        if let Ok(value) = HeaderValue::from_bytes(&id) {
            headers.insert(X_REQUEST_ID.clone(), value);
        }
    }
}

/// Writes the low `out.len()` hex digits of `value` into `out`.
fn hex(mut value: u128, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in out.iter_mut().rev() {
        *byte = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// A path that cannot be put in normal form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the path has an invalid percent-encoding")]
pub struct BadPercentEncoding;

/// The normal form of a request path, the one rule every route match and every upstream sees
/// (RFC 3986 §6.2.2): percent-encoded unreserved characters are decoded (`%31` is `1`, `%7E`
/// is `~`), the hex digits of other percent-encodings are upper-cased (`%2f` is `%2F`), and
/// each run of slashes is one slash (`//a///b` is `/a/b`). A trailing slash is kept and is
/// significant: `/a/` is not `/a`, for the routes as for both upstreams. `None`: the path is
/// already in normal form (the common case, which allocates nothing).
pub fn normalize_path(path: &str) -> Result<Option<String>, BadPercentEncoding> {
    let bytes = path.as_bytes();
    let normal = !bytes.contains(&b'%') && !bytes.windows(2).any(|w| w == b"//");
    if normal {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(BadPercentEncoding);
                };
                let decoded = (hi * 16 + lo) as u8;
                if decoded.is_ascii_alphanumeric() || b"-._~".contains(&decoded) {
                    out.push(decoded);
                } else {
                    out.push(b'%');
                    out.push(bytes[i + 1].to_ascii_uppercase());
                    out.push(bytes[i + 2].to_ascii_uppercase());
                }
                i += 3;
            }
            b'/' if out.last() == Some(&b'/') => i += 1,
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    // Only ASCII was decoded, and every other byte copied whole: still UTF-8.
    String::from_utf8(out)
        .map(Some)
        .map_err(|_| BadPercentEncoding)
}

/// Whether a path has a `.` or `..` segment (raw or percent-encoded), or an encoded slash, which
/// upstreams might resolve to a route the proxy did not choose.
pub fn has_dot_segment(path: &str) -> bool {
    // Runs on every request: compare in place, no lower-cased copies.
    let is_dot = |s: &str| s == "." || s.eq_ignore_ascii_case("%2e");
    let dot_segment = path.split('/').any(|segment| {
        is_dot(segment)
            || (segment.len() >= 2 && {
                // ".." in any mix of raw and percent-encoded dots.
                let (first, second) = match segment.as_bytes()[0] {
                    b'.' => (&segment[..1], &segment[1..]),
                    b'%' if segment.len() >= 3 && segment.is_char_boundary(3) => {
                        (&segment[..3], &segment[3..])
                    }
                    _ => return false,
                };
                is_dot(first) && is_dot(second)
            })
    });
    dot_segment
        || path
            .as_bytes()
            .windows(3)
            .any(|w| w[0] == b'%' && w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        assert_eq!(
            check_framing(&headers(&[("content-length", "5")])),
            Ok(Some(5))
        );
        assert_eq!(
            check_framing(&headers(&[("transfer-encoding", "chunked")])),
            Ok(None)
        );
        assert_eq!(
            check_framing(&headers(&[
                ("content-length", "5"),
                ("transfer-encoding", "chunked")
            ])),
            Err(FramingError::LengthAndEncoding)
        );
        assert_eq!(
            check_framing(&headers(&[
                ("content-length", "5"),
                ("content-length", "6")
            ])),
            Err(FramingError::BadLength)
        );
        assert_eq!(
            check_framing(&headers(&[
                ("content-length", "5"),
                ("content-length", "5")
            ])),
            Ok(Some(5))
        );
        assert_eq!(
            check_framing(&headers(&[("content-length", "-1")])),
            Err(FramingError::BadLength)
        );
        assert_eq!(
            check_framing(&headers(&[("transfer-encoding", "gzip, chunked")])),
            Err(FramingError::BadEncoding)
        );
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut map);
        assert_eq!(map.len(), 1);
        assert_eq!(map["x-kept"], "yes");
    }

    #[test]
    fn forwarding_headers_and_trace_context() {
        let mut map = headers(&[
            ("host", "shop.example"),
            ("x-forwarded-for", "10.1.1.1"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ]);
        add_forwarding(&mut map, "127.0.0.1".parse().unwrap(), true);
        assert_eq!(map["x-forwarded-for"], "10.1.1.1, 127.0.0.1");
        assert_eq!(map["x-forwarded-proto"], "http");
        assert_eq!(map["x-forwarded-host"], "shop.example");
        assert_eq!(
            map["forwarded"],
            "for=127.0.0.1;proto=http;host=\"shop.example\""
        );
        let traceparent = map["traceparent"].to_str().unwrap();
        assert!(
            traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{traceparent}"
        );
        assert_ne!(
            traceparent, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "a new parent id"
        );
        assert_eq!(map["x-request-id"].len(), 32);

        let mut fresh = headers(&[("traceparent", "garbage"), ("x-request-id", "abc")]);
        add_forwarding(&mut fresh, "::1".parse().unwrap(), false);
        assert!(telemetry::http::valid_trace_id(fresh["traceparent"].to_str().unwrap()).is_some());
        assert_eq!(fresh["x-request-id"], "abc");
        assert_eq!(fresh["forwarded"], "for=\"[::1]\";proto=http");
    }

    #[test]
    fn an_untrusted_clients_forwarding_headers_are_replaced() {
        let mut map = headers(&[
            ("host", "shop.example"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "admin.internal"),
            ("x-real-ip", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6;host=admin.internal"),
        ]);
        add_forwarding(&mut map, "127.0.0.1".parse().unwrap(), false);
        assert_eq!(map["x-forwarded-for"], "127.0.0.1");
        assert_eq!(map["x-forwarded-proto"], "http");
        assert_eq!(map["x-forwarded-host"], "shop.example");
        assert!(!map.contains_key("x-real-ip"));
        assert_eq!(
            map["forwarded"],
            "for=127.0.0.1;proto=http;host=\"shop.example\""
        );
    }

    #[test]
    fn forwarded_values_are_quoted_strings() {
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(quoted("shop:8080"), "\"shop:8080\"");
    }

    #[test]
    fn one_valid_host_is_required() {
        use http::Version;
        let one = headers(&[("host", "shop.example:8080")]);
        assert_eq!(check_host(Version::HTTP_11, &one), Ok(()));
        let two = headers(&[("host", "a.example"), ("host", "b.example")]);
        assert_eq!(check_host(Version::HTTP_11, &two), Err(HostError::Repeated));
        assert_eq!(check_host(Version::HTTP_2, &two), Err(HostError::Repeated));
        let none = HeaderMap::new();
        assert_eq!(check_host(Version::HTTP_11, &none), Err(HostError::Missing));
        assert_eq!(check_host(Version::HTTP_10, &none), Ok(()));
        assert_eq!(check_host(Version::HTTP_2, &none), Ok(()));
        for good in ["[::1]:8080", "127.0.0.1", "shop-1.example"] {
            let map = headers(&[("host", good)]);
            assert_eq!(check_host(Version::HTTP_11, &map), Ok(()), "{good}");
        }
        for bad in [
            "a b",
            "x\";for=1.2.3.4",
            "user@host",
            "host:port",
            "",
            "[::1",
            "a:1:2",
        ] {
            let map = headers(&[("host", bad)]);
            assert_eq!(
                check_host(Version::HTTP_11, &map),
                Err(HostError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn paths_are_put_in_one_normal_form() {
        let normal = |p: &str| normalize_path(p).unwrap().unwrap_or_else(|| p.to_owned());
        assert_eq!(normalize_path("/catalog/products/1"), Ok(None));
        assert_eq!(normal("/catalog/products/%31"), "/catalog/products/1");
        assert_eq!(normal("/catalog/%70roducts"), "/catalog/products");
        assert_eq!(normal("/a/%7e%2D%5f"), "/a/~-_");
        assert_eq!(normal("/a/%2f/%c3%a9"), "/a/%2F/%C3%A9");
        assert_eq!(normal("/a%20b"), "/a%20b");
        assert_eq!(normal("//catalog///products//"), "/catalog/products/");
        assert_eq!(normal("/a/"), "/a/", "a trailing slash is kept");
        assert_eq!(
            normal("/a/%2e%2E/b"),
            "/a/../b",
            "decoded, then refused as a dot segment"
        );
        assert!(has_dot_segment(&normal("/a/%2e%2E/b")));
        for bad in ["/%", "/a/%2", "/a/%zz", "/%g1"] {
            assert_eq!(normalize_path(bad), Err(BadPercentEncoding), "{bad}");
        }
    }

    #[test]
    fn dot_segments_are_found_raw_and_encoded() {
        for bad in [
            "/a/../b",
            "/a/./b",
            "/a/..",
            "/a/%2e%2E/b",
            "/a/.%2e/b",
            "/a/%2E./b",
            "/a/%2e",
            "/a%2fb",
            "/a%2Fb",
        ] {
            assert!(has_dot_segment(bad), "{bad}");
        }
        for good in [
            "/",
            "/a/b",
            "/a/...",
            "/a/.b",
            "/a/b.",
            "/a/%2e%2e%2e",
            "/a/%20",
        ] {
            assert!(!has_dot_segment(good), "{good}");
        }
    }
}
