//! Request and response hygiene: what a well-behaved proxy removes, adds and refuses.
//!
//! - Hop-by-hop headers (RFC 9110 §7.6.1: `Connection` and every header it names, `Keep-Alive`,
//!   `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`) are dropped both ways.
//! - `X-Forwarded-For` gets the client's address appended; `X-Forwarded-Proto` and
//!   `X-Forwarded-Host` are set when absent; `Forwarded` (RFC 7239) gets an element appended.
//! - W3C `traceparent`: a valid one keeps its trace id and gets this hop as parent; an absent or
//!   invalid one starts a new trace. `X-Request-Id` is set when absent.
//! - Request smuggling: a request with both `Content-Length` and `Transfer-Encoding`, several
//!   differing `Content-Length`s, or a `Transfer-Encoding` other than `chunked`, is refused.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
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

/// Adds the forwarding headers, trace context and request id to a request bound upstream.
pub fn add_forwarding(headers: &mut HeaderMap, client: IpAddr) {
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
        element.push_str(";host=\"");
        element.push_str(host);
        element.push('"');
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
        .and_then(valid_trace_id)
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

/// The trace id of a valid version-00 `traceparent`.
fn valid_trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = version == "00"
        && parts.next().is_none()
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0');
    valid.then_some(trace)
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
        add_forwarding(&mut map, "127.0.0.1".parse().unwrap());
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
        add_forwarding(&mut fresh, "::1".parse().unwrap());
        assert!(valid_trace_id(fresh["traceparent"].to_str().unwrap()).is_some());
        assert_eq!(fresh["x-request-id"], "abc");
        assert_eq!(fresh["forwarded"], "for=\"[::1]\";proto=http");
    }
}
