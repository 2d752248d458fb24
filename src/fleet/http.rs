//! A small, strict HTTP/1.1 request reader and response writer for the FleetLock server.
//!
//! One request per connection, answered with `Connection: close`. Bodies must come with
//! `Content-Length` (FleetLock clients send small JSON bodies that way); `Transfer-Encoding` is
//! refused. `Expect: 100-continue` is honoured.
//!
//! Invariants: the head is at most [`MAX_HEAD`] bytes with at most [`MAX_HEADERS`] fields, the
//! body at most [`MAX_BODY`] bytes, and reading a request stops at a deadline, so a slow or
//! hostile client costs a bounded amount of memory and time.

use std::io::{Read, Write};
use std::time::Instant;

/// The largest request head (request line and header fields).
pub const MAX_HEAD: usize = 8 * 1024;
/// The most header fields in a request.
pub const MAX_HEADERS: usize = 64;
/// The largest request body.
pub const MAX_BODY: usize = 64 * 1024;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, e.g. `POST`.
    pub method: String,
    /// The path of the target, without the query.
    pub path: String,
    /// The query, without `?`.
    pub query: Option<String>,
    /// Header fields with lower-case names, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// The value of the first field named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of query parameter `name` (no percent-decoding: the values used here are
    /// group names, which need none).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.as_deref()?.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    }
}

/// Why a request could not be read; each maps to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Malformed request (400).
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// Head too large (431).
    #[error("request head too large")]
    HeadTooLarge,
    /// Body too large (413).
    #[error("request body too large")]
    BodyTooLarge,
    /// A feature this server does not implement, such as chunked bodies (501).
    #[error("not implemented: {0}")]
    Unsupported(&'static str),
    /// The client closed the connection or was too slow (no answer is sent).
    #[error("connection: {0}")]
    Io(String),
}

impl HttpError {
    /// The status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) | HttpError::Io(_) => 400,
            HttpError::HeadTooLarge => 431,
            HttpError::BodyTooLarge => 413,
            HttpError::Unsupported(_) => 501,
        }
    }
}

/// A parsed head and the body length it announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The request without its body.
    pub request: Request,
    /// `Content-Length` (0 when absent).
    pub content_length: usize,
    /// The client waits for `100 Continue` before sending the body.
    pub expect_continue: bool,
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses a request head from the start of `buf`. `Ok(None)` means that the head is not
/// complete yet; `Ok(Some((head, n)))` that it ends after `n` bytes.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HttpError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Err(HttpError::HeadTooLarge)
        } else {
            Ok(None)
        };
    };
    if end + 4 > MAX_HEAD {
        return Err(HttpError::HeadTooLarge);
    }
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| HttpError::Malformed("not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed("bad request line"));
    };
    if !is_token(method) {
        return Err(HttpError::Malformed("bad method"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(HttpError::Unsupported("HTTP version"));
    }
    if !target.starts_with('/') || target.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(HttpError::Malformed("bad request target"));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let mut headers = Vec::new();
    let mut content_length: Option<usize> = None;
    let mut expect_continue = false;
    for l in lines {
        if headers.len() == MAX_HEADERS {
            return Err(HttpError::HeadTooLarge);
        }
        let (name, value) = l
            .split_once(':')
            .ok_or(HttpError::Malformed("header field without ':'"))?;
        if !is_token(name) {
            return Err(HttpError::Malformed("bad header field name"));
        }
        let name = name.to_ascii_lowercase();
        let value = value.trim_matches([' ', '\t']).to_string();
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(HttpError::Malformed("control character in a header field"));
        }
        match name.as_str() {
            "content-length" => {
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(HttpError::Malformed("bad content-length"));
                }
                let n: usize = value.parse().map_err(|_| HttpError::BodyTooLarge)?;
                if content_length.is_some_and(|c| c != n) {
                    return Err(HttpError::Malformed("conflicting content-length"));
                }
                content_length = Some(n);
            }
            "transfer-encoding" => return Err(HttpError::Unsupported("transfer-encoding")),
            "expect" => expect_continue = value.eq_ignore_ascii_case("100-continue"),
            _ => {}
        }
        headers.push((name, value));
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > MAX_BODY {
        return Err(HttpError::BodyTooLarge);
    }
    let request = Request {
        method: method.to_string(),
        path,
        query,
        headers,
        body: Vec::new(),
    };
    Ok(Some((
        Head {
            request,
            content_length,
            expect_continue,
        },
        end + 4,
    )))
}

fn io_err(e: std::io::Error) -> HttpError {
    HttpError::Io(e.to_string())
}

/// Reads one request from `stream`, giving up at `deadline`. The stream's own read timeout
/// bounds each read; the deadline bounds the sum.
pub fn read_request<S: Read + Write>(
    stream: &mut S,
    deadline: Instant,
) -> Result<Request, HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let (head, used) = loop {
        if let Some(h) = parse_head(&buf)? {
            break h;
        }
        if Instant::now() >= deadline {
            return Err(HttpError::Io("too slow".into()));
        }
        let n = stream.read(&mut chunk).map_err(io_err)?;
        if n == 0 {
            return Err(HttpError::Io("closed before the end of the head".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut request = head.request;
    let mut body = buf.split_off(used);
    if body.len() < head.content_length && head.expect_continue {
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(io_err)?;
    }
    while body.len() < head.content_length {
        if Instant::now() >= deadline {
            return Err(HttpError::Io("too slow".into()));
        }
        let n = stream.read(&mut chunk).map_err(io_err)?;
        if n == 0 {
            return Err(HttpError::Io("closed before the end of the body".into()));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(head.content_length);
    request.body = body;
    Ok(request)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// The bytes of a complete response with a JSON body.
pub fn response(status: u16, json_body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        reason(status),
        json_body.len()
    )
    .into_bytes();
    out.extend_from_slice(json_body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRE_REBOOT: &[u8] = b"POST /base/v1/pre-reboot HTTP/1.1\r\nHost: x\r\n\
        Fleet-Lock-Protocol:  true \r\nContent-Length: 5\r\n\r\nhello";

    #[test]
    fn parses_a_fleetlock_request() {
        let (head, n) = parse_head(PRE_REBOOT).unwrap().unwrap();
        assert_eq!(n, PRE_REBOOT.len() - 5);
        assert_eq!(head.request.method, "POST");
        assert_eq!(head.request.path, "/base/v1/pre-reboot");
        assert_eq!(head.request.header("fleet-lock-protocol"), Some("true"));
        assert_eq!(head.content_length, 5);
    }

    #[test]
    fn incomplete_heads_wait_for_more() {
        for cut in 0..PRE_REBOOT.len() - 5 {
            assert_eq!(parse_head(&PRE_REBOOT[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn query_parameters() {
        let (head, _) = parse_head(b"GET /v1/syscont/status?x=1&group=etcd HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.request.path, "/v1/syscont/status");
        assert_eq!(head.request.query_param("group"), Some("etcd"));
        assert_eq!(head.request.query_param("nope"), None);
    }

    #[test]
    fn refuses_what_it_does_not_speak() {
        let cases: &[(&[u8], u16)] = &[
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                501,
            ),
            (b"POST / HTTP/2.0\r\n\r\n", 501),
            (b"POST /  HTTP/1.1\r\n\r\n", 400),
            (b"POST x HTTP/1.1\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nbad header\r\n\r\n", 400),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                413,
            ),
            (b"POST / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n", 413),
            (b"POST / HTTP/1.1\r\nX: a\x01b\r\n\r\n", 400),
        ];
        for (req, status) in cases {
            let e = parse_head(req).unwrap_err();
            assert_eq!(
                e.status(),
                *status,
                "{:?}: {e}",
                String::from_utf8_lossy(req)
            );
        }
        let huge = vec![b'a'; MAX_HEAD + 1];
        assert_eq!(parse_head(&huge), Err(HttpError::HeadTooLarge));
        let many: Vec<u8> = std::iter::once("GET / HTTP/1.1\r\n".to_string())
            .chain((0..=MAX_HEADERS).map(|i| format!("h{i}: v\r\n")))
            .chain(std::iter::once("\r\n".to_string()))
            .collect::<String>()
            .into_bytes();
        assert_eq!(parse_head(&many), Err(HttpError::HeadTooLarge));
    }

    /// A stream that hands out its input in small pieces and records what is written.
    struct Trickle {
        input: Vec<u8>,
        pos: usize,
        written: Vec<u8>,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = (self.input.len() - self.pos).min(3).min(buf.len());
            buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn reads_bodies_in_pieces_and_honours_expect() {
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let mut s = Trickle {
            input: PRE_REBOOT.to_vec(),
            pos: 0,
            written: vec![],
        };
        let r = read_request(&mut s, deadline).unwrap();
        assert_eq!(r.body, b"hello");
        assert!(s.written.is_empty());

        let mut s = Trickle {
            input: b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}"
                .to_vec(),
            pos: 0,
            written: vec![],
        };
        assert_eq!(read_request(&mut s, deadline).unwrap().body, b"{}");
        assert_eq!(s.written, b"HTTP/1.1 100 Continue\r\n\r\n");

        let mut s = Trickle {
            input: b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\n{}".to_vec(),
            pos: 0,
            written: vec![],
        };
        assert!(matches!(
            read_request(&mut s, deadline),
            Err(HttpError::Io(_))
        ));
    }

    #[test]
    fn responses_are_complete() {
        let r = response(409, br#"{"kind":"k","value":"v"}"#);
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 409 Conflict\r\n"));
        assert!(text.contains("Content-Length: 24\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"kind\":\"k\",\"value\":\"v\"}"));
    }
}
