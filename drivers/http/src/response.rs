//! HTTP/1.x responses from an untrusted server: the status line and
//! headers (bounded in size), `Content-Range`, and bodies framed by
//! `Content-Length`, chunked transfer encoding or the end of the connection,
//! read straight into the caller's buffer.

use std::io::{self, BufRead};
use thiserror::Error;

/// The most bytes a response's status line and headers may take.
pub const MAX_HEAD: usize = 64 * 1024;
/// The longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 1024;
/// The most bytes of trailers after a chunked body.
const MAX_TRAILERS: usize = 16 * 1024;

/// What is wrong with a response (curl's wording where it has one).
#[derive(Debug, Error)]
pub enum ResponseError {
    /// Reading from the connection failed.
    #[error("Recv failure: {}", qimg_driver_api::error::io_message(.0))]
    Io(#[from] io::Error),
    /// The connection closed before a status line.
    #[error("Empty reply from server")]
    Empty,
    /// The status line and headers exceed [`MAX_HEAD`].
    #[error("Too large response headers: more than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// Something that is not HTTP/1.x.
    #[error("Weird server reply: {0}")]
    Malformed(&'static str),
    /// The connection closed before the body's end.
    #[error("transfer closed with {0} bytes remaining to read")]
    Truncated(u64),
    /// The body is longer than the range asked for.
    #[error("server sent more data than the requested range")]
    TooLong,
}

impl ResponseError {
    /// True if the connection closed (or was reset) before any byte of a
    /// response arrived: the sign of a keep-alive connection the server
    /// had already dropped, where the request may be sent again.
    pub fn is_stale(&self) -> bool {
        match self {
            ResponseError::Empty => true,
            ResponseError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }
}

/// How a response's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer encoding.
    Chunked,
    /// Until the server closes the connection.
    UntilClose,
}

/// A `Content-Range: bytes first-last/complete` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContentRange {
    /// Offset of the first byte sent.
    pub first: u64,
    /// Offset of the last byte sent (inclusive).
    pub last: u64,
    /// The whole resource's length, if the server knows it.
    pub complete: Option<u64>,
}

/// A response's status line and headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The minor HTTP version (`HTTP/1.0` or `HTTP/1.1`).
    pub minor: u8,
    /// The status code.
    pub status: u16,
    /// Header names (as sent) and values (trimmed), in order.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// Every value of the header `name` (case-insensitive).
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first value of the header `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The comma-separated tokens of every `name` header, lowercased.
    fn tokens(&self, name: &str) -> Vec<String> {
        self.all(name)
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// True if the server says it serves byte ranges (`Accept-Ranges: bytes`).
    pub fn accepts_ranges(&self) -> bool {
        self.tokens("accept-ranges").iter().any(|t| t == "bytes")
    }

    /// `Content-Length`, if sent; several different values are an error.
    pub fn content_length(&self) -> Result<Option<u64>, ResponseError> {
        let mut length = None;
        for value in self.all("content-length") {
            for part in value.split(',') {
                let parsed = parse_decimal(part.trim())
                    .ok_or(ResponseError::Malformed("bad Content-Length"))?;
                if length.is_some_and(|l| l != parsed) {
                    return Err(ResponseError::Malformed("conflicting Content-Length"));
                }
                length = Some(parsed);
            }
        }
        Ok(length)
    }

    /// The parsed `Content-Range`, if sent.
    pub fn content_range(&self) -> Result<Option<ContentRange>, ResponseError> {
        self.get("content-range")
            .map(parse_content_range)
            .transpose()
    }

    /// True if the connection stays open after this response.
    pub fn keep_alive(&self) -> bool {
        let tokens = self.tokens("connection");
        if tokens.iter().any(|t| t == "close") {
            return false;
        }
        self.minor >= 1 || tokens.iter().any(|t| t == "keep-alive")
    }

    /// How the body is delimited, for a response to a request of method
    /// HEAD (`head`) or GET.
    pub fn framing(&self, head: bool) -> Result<Framing, ResponseError> {
        if head || self.status == 204 || self.status == 304 || self.status < 200 {
            return Ok(Framing::Empty);
        }
        let codings = self.tokens("transfer-encoding");
        if let Some(last) = codings.last() {
            if last != "chunked" || codings.len() > 1 {
                return Err(ResponseError::Malformed("unsupported Transfer-Encoding"));
            }
            return Ok(Framing::Chunked);
        }
        if self
            .tokens("content-encoding")
            .iter()
            .any(|c| c != "identity")
        {
            return Err(ResponseError::Malformed("unsupported Content-Encoding"));
        }
        Ok(match self.content_length()? {
            Some(length) => Framing::Length(length),
            None => Framing::UntilClose,
        })
    }
}

/// A decimal number without sign or blanks, that fits in 63 bits.
fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|v| *v <= i64::MAX as u64)
}

/// Parses `bytes first-last/complete` (`complete` may be `*`).
pub fn parse_content_range(value: &str) -> Result<ContentRange, ResponseError> {
    let bad = || ResponseError::Malformed("bad Content-Range");
    let (unit, rest) = value.trim().split_once(' ').ok_or_else(bad)?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return Err(bad());
    }
    let (range, complete) = rest.trim().split_once('/').ok_or_else(bad)?;
    let (first, last) = range.split_once('-').ok_or_else(bad)?;
    let first = parse_decimal(first).ok_or_else(bad)?;
    let last = parse_decimal(last).ok_or_else(bad)?;
    let complete = match complete {
        "*" => None,
        text => Some(parse_decimal(text).ok_or_else(bad)?),
    };
    if last < first || complete.is_some_and(|c| last >= c) {
        return Err(bad());
    }
    Ok(ContentRange {
        first,
        last,
        complete,
    })
}

/// Reads one line ending in LF (an optional CR before it is dropped),
/// taking at most `budget` bytes of it and charging them. EOF before any
/// byte gives `None`.
fn read_line(
    r: &mut impl BufRead,
    budget: &mut usize,
    too_long: fn() -> ResponseError,
) -> Result<Option<Vec<u8>>, ResponseError> {
    let mut line = Vec::new();
    loop {
        let available = r.fill_buf()?;
        if available.is_empty() {
            if line.is_empty() {
                return Ok(None);
            }
            return Err(ResponseError::Truncated(0));
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if take > *budget {
            return Err(too_long());
        }
        *budget -= take;
        line.extend_from_slice(&available[..take]);
        r.consume(take);
        if done {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(Some(line));
        }
    }
}

/// Reads a response's status line and headers, skipping interim (1xx)
/// responses.
pub fn read_head(r: &mut impl BufRead) -> Result<Head, ResponseError> {
    for _ in 0..8 {
        let head = read_one_head(r)?;
        match head.status {
            101 => return Err(ResponseError::Malformed("unexpected protocol switch")),
            100..=199 => continue,
            _ => return Ok(head),
        }
    }
    Err(ResponseError::Malformed("too many interim responses"))
}

/// Reads one status line and its headers.
fn read_one_head(r: &mut impl BufRead) -> Result<Head, ResponseError> {
    let mut budget = MAX_HEAD;
    let too_large = || ResponseError::HeadTooLarge;
    let line = match read_line(r, &mut budget, too_large) {
        Ok(Some(line)) => line,
        Ok(None) => return Err(ResponseError::Empty),
        Err(ResponseError::Truncated(_)) => {
            return Err(ResponseError::Malformed("cut status line"))
        }
        Err(e) => return Err(e),
    };
    let (minor, status) = parse_status_line(&line)?;
    let mut headers: Vec<(String, String)> = Vec::new();
    loop {
        let line = match read_line(r, &mut budget, too_large) {
            Ok(Some(line)) => line,
            Ok(None) | Err(ResponseError::Truncated(_)) => {
                return Err(ResponseError::Malformed("headers cut short"))
            }
            Err(e) => return Err(e),
        };
        if line.is_empty() {
            return Ok(Head {
                minor,
                status,
                headers,
            });
        }
        let text =
            std::str::from_utf8(&line).map_err(|_| ResponseError::Malformed("non-UTF-8 header"))?;
        if text.starts_with([' ', '\t']) {
            // An obsolete folded line continues the previous header.
            let (_, value) = headers
                .last_mut()
                .ok_or(ResponseError::Malformed("folded first header"))?;
            value.push(' ');
            value.push_str(text.trim());
            continue;
        }
        let (name, value) = text
            .split_once(':')
            .ok_or(ResponseError::Malformed("header without a colon"))?;
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(ResponseError::Malformed("bad header name"));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
}

/// True for a byte of an HTTP token (a header name).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses `HTTP/1.x NNN reason` into the minor version and the status.
pub fn parse_status_line(line: &[u8]) -> Result<(u8, u16), ResponseError> {
    let bad = || ResponseError::Malformed("bad status line");
    let rest = line.strip_prefix(b"HTTP/1.").ok_or_else(bad)?;
    let minor = match rest.first() {
        Some(b'0') => 0,
        Some(b'1') => 1,
        _ => return Err(bad()),
    };
    let rest = rest[1..].strip_prefix(b" ").ok_or_else(bad)?;
    let code = rest.get(..3).ok_or_else(bad)?;
    if !code.iter().all(u8::is_ascii_digit) || !matches!(rest.get(3), None | Some(b' ')) {
        return Err(bad());
    }
    let status = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    if status < 100 {
        return Err(bad());
    }
    Ok((minor, status))
}

/// Reads exactly `buf.len()` bytes, counting what is missing on EOF. What
/// the reader holds is copied; a `BufReader` reads the rest of a large
/// body straight into `buf`, past its buffer.
fn read_exact(r: &mut impl BufRead, buf: &mut [u8]) -> Result<(), ResponseError> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = match r.read(&mut buf[filled..]) {
            Ok(0) => return Err(ResponseError::Truncated((buf.len() - filled) as u64)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        filled += n;
    }
    Ok(())
}

/// Reads a body delimited by `framing` that must be exactly `buf.len()`
/// bytes long into `buf`. After an `UntilClose` body the connection's end
/// is not awaited: the caller must not reuse it.
pub fn read_body(
    r: &mut impl BufRead,
    framing: Framing,
    buf: &mut [u8],
) -> Result<(), ResponseError> {
    match framing {
        Framing::Empty if buf.is_empty() => Ok(()),
        Framing::Empty => Err(ResponseError::Truncated(buf.len() as u64)),
        Framing::Length(length) if length > buf.len() as u64 => Err(ResponseError::TooLong),
        Framing::Length(length) if length < buf.len() as u64 => {
            Err(ResponseError::Malformed("body shorter than the range"))
        }
        Framing::Length(_) | Framing::UntilClose => read_exact(r, buf),
        Framing::Chunked => read_chunked(r, buf),
    }
}

/// Decodes a chunked body that must hold exactly `buf.len()` bytes.
fn read_chunked(r: &mut impl BufRead, buf: &mut [u8]) -> Result<(), ResponseError> {
    let mut filled = 0usize;
    loop {
        let size = read_chunk_size(r, (buf.len() - filled) as u64)?;
        if size == 0 {
            if filled != buf.len() {
                return Err(ResponseError::Malformed("body shorter than the range"));
            }
            return read_trailers(r);
        }
        let size = size as usize;
        read_exact(r, &mut buf[filled..filled + size]).map_err(|e| match e {
            ResponseError::Truncated(n) => {
                ResponseError::Truncated(n + (buf.len() - filled - size) as u64)
            }
            other => other,
        })?;
        filled += size;
        let mut budget = 2;
        match read_line(r, &mut budget, || ResponseError::Malformed("bad chunk end")) {
            Ok(Some(line)) if line.is_empty() => {}
            Ok(None) | Err(ResponseError::Truncated(_)) => {
                return Err(ResponseError::Truncated((buf.len() - filled) as u64))
            }
            Ok(Some(_)) => return Err(ResponseError::Malformed("bad chunk end")),
            Err(e) => return Err(e),
        }
    }
}

/// Reads a chunk-size line; a chunk larger than `room` is an error.
fn read_chunk_size(r: &mut impl BufRead, room: u64) -> Result<u64, ResponseError> {
    let mut budget = MAX_CHUNK_LINE;
    let line = match read_line(r, &mut budget, || {
        ResponseError::Malformed("chunk line too long")
    }) {
        Ok(Some(line)) => line,
        Ok(None) | Err(ResponseError::Truncated(_)) => return Err(ResponseError::Truncated(room)),
        Err(e) => return Err(e),
    };
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits_end);
    if digits.is_empty() || !matches!(rest.first(), None | Some(b';' | b' ' | b'\t')) {
        return Err(ResponseError::Malformed("bad chunk size"));
    }
    let digits = &digits[digits
        .iter()
        .position(|&b| b != b'0')
        .unwrap_or(digits.len())..];
    if digits.len() > 15 {
        return Err(ResponseError::TooLong);
    }
    let size = digits.iter().fold(0u64, |n, &d| {
        n * 16 + u64::from(char::from(d).to_digit(16).unwrap_or(0))
    });
    if size > room {
        return Err(ResponseError::TooLong);
    }
    Ok(size)
}

/// Skips the trailer section after the last chunk.
fn read_trailers(r: &mut impl BufRead) -> Result<(), ResponseError> {
    let mut budget = MAX_TRAILERS;
    loop {
        match read_line(r, &mut budget, || {
            ResponseError::Malformed("trailers too long")
        }) {
            Ok(Some(line)) if line.is_empty() => return Ok(()),
            Ok(Some(_)) => continue,
            Ok(None) | Err(ResponseError::Truncated(_)) => return Err(ResponseError::Truncated(0)),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Head, ResponseError> {
        read_head(&mut text.as_bytes())
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status_line(b"HTTP/1.1 206 Partial Content").unwrap(),
            (1, 206)
        );
        assert_eq!(parse_status_line(b"HTTP/1.0 200").unwrap(), (0, 200));
        assert_eq!(parse_status_line(b"HTTP/1.1 404 ").unwrap(), (1, 404));
        for bad in [
            &b"HTTP/2 200 OK"[..],
            b"HTTP/1.1 20 OK",
            b"HTTP/1.1 2000 OK",
            b"HTTP/1.1  200 OK",
            b"HTTP/1.1 099 x",
            b"ICY 200 OK",
            b"",
        ] {
            assert!(parse_status_line(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn headers() {
        let h = head(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\nACCEPT-RANGES: none, Bytes\r\n\
             X-Folded: a\r\n  b\r\nContent-Range: bytes 0-9/100\r\n\r\nBODY",
        )
        .unwrap();
        assert_eq!((h.minor, h.status), (1, 206));
        assert_eq!(h.get("content-length"), Some("10"));
        assert_eq!(h.get("x-folded"), Some("a b"));
        assert!(h.accepts_ranges());
        assert!(h.keep_alive());
        assert_eq!(h.content_length().unwrap(), Some(10));
        assert_eq!(h.framing(false).unwrap(), Framing::Length(10));
        assert_eq!(h.framing(true).unwrap(), Framing::Empty);
        assert_eq!(
            h.content_range().unwrap(),
            Some(ContentRange {
                first: 0,
                last: 9,
                complete: Some(100)
            })
        );
        // Bare LF line ends, HTTP/1.0 and Connection headers.
        let h = head("HTTP/1.0 200 OK\nAccept-Ranges: none\n\n").unwrap();
        assert!(!h.accepts_ranges());
        assert!(!h.keep_alive());
        assert_eq!(h.framing(false).unwrap(), Framing::UntilClose);
        let h = head("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
        assert!(h.keep_alive());
        let h = head("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").unwrap();
        assert!(!h.keep_alive());
    }

    #[test]
    fn interim_responses_are_skipped() {
        let h = head("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Hints\r\nLink: x\r\n\r\nHTTP/1.1 200 OK\r\n\r\n")
            .unwrap();
        assert_eq!(h.status, 200);
        assert!(head("HTTP/1.1 101 Switching\r\n\r\n").is_err());
        let many = "HTTP/1.1 100 Continue\r\n\r\n".repeat(9) + "HTTP/1.1 200 OK\r\n\r\n";
        assert!(head(&many).is_err());
    }

    #[test]
    fn bad_heads() {
        assert!(matches!(head(""), Err(ResponseError::Empty)));
        assert!(head("").unwrap_err().is_stale());
        assert!(matches!(
            head("HTTP/1.1 200"),
            Err(ResponseError::Malformed(_))
        ));
        assert!(matches!(
            head("HTTP/1.1 200 OK\r\nA: b\r\n"),
            Err(ResponseError::Malformed(_))
        ));
        assert!(head("HTTP/1.1 200 OK\r\nno colon\r\n\r\n").is_err());
        assert!(head("HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n").is_err());
        assert!(head("HTTP/1.1 200 OK\r\n folded: first\r\n\r\n").is_err());
        let huge = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(head(&huge), Err(ResponseError::HeadTooLarge)));
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEAD / 6 + 1)
        );
        assert!(matches!(head(&many), Err(ResponseError::HeadTooLarge)));
        let endless_line = "HTTP/1.1 200 OK".to_string() + &"x".repeat(MAX_HEAD);
        assert!(matches!(
            head(&endless_line),
            Err(ResponseError::HeadTooLarge)
        ));
    }

    #[test]
    fn content_lengths() {
        let length = |v: &str| {
            head(&format!("HTTP/1.1 200 OK\r\nContent-Length: {v}\r\n\r\n"))
                .unwrap()
                .content_length()
        };
        assert_eq!(length("0").unwrap(), Some(0));
        assert_eq!(length("5, 5").unwrap(), Some(5));
        assert!(length("5, 6").is_err());
        assert!(length("-1").is_err());
        assert!(length("+1").is_err());
        assert!(length("1e3").is_err());
        assert!(length("99999999999999999999").is_err());
        assert!(length("9223372036854775808").is_err());
        assert_eq!(
            length("9223372036854775807").unwrap(),
            Some(i64::MAX as u64)
        );
        let twice =
            head("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").unwrap();
        assert!(twice.content_length().is_err());
    }

    #[test]
    fn content_ranges() {
        let ok = |v: &str| parse_content_range(v).unwrap();
        assert_eq!(
            ok("bytes 5-9/*"),
            ContentRange {
                first: 5,
                last: 9,
                complete: None
            }
        );
        assert_eq!(ok("Bytes  0-0/1").last, 0);
        for bad in [
            "bytes 9-5/100",
            "bytes 0-100/100",
            "bytes */100",
            "items 0-1/2",
            "bytes 0-1",
            "bytes -1-2/3",
            "bytes 0-x/3",
            "bytes",
        ] {
            assert!(parse_content_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn framings() {
        let framing = |extra: &str| {
            head(&format!("HTTP/1.1 200 OK\r\n{extra}\r\n"))
                .unwrap()
                .framing(false)
        };
        assert_eq!(
            framing("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n").unwrap(),
            Framing::Chunked
        );
        assert!(framing("Transfer-Encoding: gzip, chunked\r\n").is_err());
        assert!(framing("Transfer-Encoding: gzip\r\n").is_err());
        assert!(framing("Content-Encoding: gzip\r\nContent-Length: 5\r\n").is_err());
        assert_eq!(
            framing("Content-Encoding: identity\r\nContent-Length: 5\r\n").unwrap(),
            Framing::Length(5)
        );
        let no_content = head("HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!(no_content.framing(false).unwrap(), Framing::Empty);
    }

    #[test]
    fn length_bodies() {
        let mut buf = [0u8; 4];
        read_body(&mut &b"abcdEXTRA"[..], Framing::Length(4), &mut buf).unwrap();
        assert_eq!(&buf, b"abcd");
        assert!(matches!(
            read_body(&mut &b"ab"[..], Framing::Length(4), &mut buf),
            Err(ResponseError::Truncated(2))
        ));
        assert!(matches!(
            read_body(&mut &b"abcde"[..], Framing::Length(5), &mut buf),
            Err(ResponseError::TooLong)
        ));
        assert!(read_body(&mut &b"abc"[..], Framing::Length(3), &mut buf).is_err());
        assert!(matches!(
            read_body(&mut &b"abc"[..], Framing::UntilClose, &mut buf),
            Err(ResponseError::Truncated(1))
        ));
        read_body(&mut &b""[..], Framing::Empty, &mut []).unwrap();
        assert!(read_body(&mut &b""[..], Framing::Empty, &mut buf).is_err());
    }

    #[test]
    fn chunked_bodies() {
        let chunked = |text: &[u8], len: usize| {
            let mut buf = vec![0u8; len];
            let mut reader = text;
            read_body(&mut reader, Framing::Chunked, &mut buf).map(|_| (buf, reader.to_vec()))
        };
        let (body, rest) = chunked(
            b"3\r\nabc\r\n0004;ext=1\r\ndefg\r\n0\r\nTrailer: x\r\n\r\nNEXT",
            7,
        )
        .unwrap();
        assert_eq!(body, b"abcdefg");
        assert_eq!(rest, b"NEXT");
        let (body, _) = chunked(b"A\n0123456789\n0\n\n", 10).unwrap();
        assert_eq!(body, b"0123456789");
        // Too much, too little, malformed, cut short.
        assert!(matches!(
            chunked(b"8\r\nabcdefgh\r\n0\r\n\r\n", 7),
            Err(ResponseError::TooLong)
        ));
        assert!(matches!(
            chunked(b"FFFFFFFFFFFFFFFFFFFF\r\n", 7),
            Err(ResponseError::TooLong)
        ));
        assert!(chunked(b"3\r\nabc\r\n0\r\n\r\n", 7).is_err());
        assert!(chunked(b"3\r\nabcX\r\n0\r\n\r\n", 3).is_err());
        assert!(chunked(b"zz\r\nabc\r\n", 3).is_err());
        assert!(chunked(b"\r\n", 3).is_err());
        assert!(matches!(
            chunked(b"3\r\nab", 7),
            Err(ResponseError::Truncated(5))
        ));
        assert!(matches!(
            chunked(b"3\r\nabc\r\n", 7),
            Err(ResponseError::Truncated(4))
        ));
        assert!(matches!(
            chunked(b"3\r\nabc", 3),
            Err(ResponseError::Truncated(0))
        ));
        assert!(matches!(
            chunked(b"3\r\nabc\r\n0\r\n", 3),
            Err(ResponseError::Truncated(0))
        ));
        let long_line = format!("3;{}\r\nabc\r\n0\r\n\r\n", "x".repeat(MAX_CHUNK_LINE));
        assert!(chunked(long_line.as_bytes(), 3).is_err());
        let long_trailers = format!("0\r\n{}\r\n", "T: x\r\n".repeat(MAX_TRAILERS / 6 + 1));
        assert!(chunked(long_trailers.as_bytes(), 0).is_err());
    }
}
