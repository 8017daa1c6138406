//! HTTP/1.1 message syntax for the [`server`](crate::server) (RFC 9112), free of I/O so that it
//! is tested byte by byte: the bounded request-head parser (on `httparse`), the body framing
//! decision (§6.1–6.3), the bounded chunked decoder (§7.1) and the response head writer.

use std::fmt::Write as _;

use crate::error::ApiError;

/// Bounds on what one request may make the server hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request line plus header fields (and, for a chunked body, each chunk-size line and the
    /// trailer section).
    pub max_head_bytes: usize,
    /// Header fields in a head (and trailer fields after a chunked body).
    pub max_headers: usize,
    /// Largest accepted body.
    pub max_body_bytes: usize,
}

/// How the body of a request is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length` (0 when neither it nor `Transfer-Encoding` is present).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head: what the API needs and what the server needs to frame and answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub target: String,
    /// `HTTP/1.x` minor version: 0 or 1 (a request in `HTTP/1.2` to `HTTP/1.9` is read as 1).
    pub minor: u8,
    pub content_type: Option<String>,
    pub authorization: Option<String>,
    /// `X-Mec-Plugin-Forwarded` is present ([`crate::http::FORWARDED`]).
    pub forwarded: bool,
    pub framing: Framing,
    /// The connection is closed after this exchange: the client asked for it (`Connection:
    /// close`), or it speaks HTTP/1.0 (whose keep-alive extension is not offered: the answer
    /// says `Connection: close` and a persistent HTTP/1.0 client simply reconnects).
    pub close: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request.
    pub expect_continue: bool,
}

/// Why a head was not accepted; each maps to the status the server answers before closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// 400: the syntax or the framing is invalid.
    Bad(String),
    /// 414: the request line alone does not fit in the head bound.
    UriTooLong,
    /// 431: the head exceeds its byte bound or its field count.
    HeadersTooLarge(String),
    /// 417: an expectation other than `100-continue`.
    Expectation(String),
    /// 505: a major version other than 1.
    Version,
}

impl HeadError {
    /// The problem the server answers with.
    pub fn into_api_error(self, limits: &Limits) -> ApiError {
        match self {
            HeadError::Bad(detail) => ApiError::BadRequest { detail },
            HeadError::UriTooLong => ApiError::UriTooLong {
                limit: limits.max_head_bytes,
            },
            HeadError::HeadersTooLarge(detail) => ApiError::HeadersTooLarge { detail },
            HeadError::Expectation(expect) => ApiError::ExpectationFailed { expect },
            HeadError::Version => ApiError::VersionNotSupported,
        }
    }
}

/// Where a request head ends in `buf`: the index just past its empty line, if it arrived.
/// `from` is where the previous search stopped (so a trickled head is scanned once in all).
pub fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    let mut i = start;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + p;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => {}
        }
        i = nl + 1;
    }
    None
}

/// Number of empty lines (CRLF or LF) before a request line, which RFC 9112 §2.2 lets a server
/// ignore.
pub fn leading_empty_lines(buf: &[u8]) -> usize {
    let mut i = 0;
    loop {
        if buf[i..].starts_with(b"\r\n") {
            i += 2;
        } else if buf[i..].starts_with(b"\n") {
            i += 1;
        } else {
            return i;
        }
    }
}

/// The method and target of a request line as far as they can be read from a head that was
/// refused (`-` for what cannot): for the log line, the metrics and a `HEAD` answer.
pub fn request_line(buf: &[u8]) -> (String, String) {
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let mut parts = buf[..line_end].split(|&b| b == b' ');
    let token = |p: Option<&[u8]>, valid: fn(u8) -> bool| match p {
        Some(p) if !p.is_empty() && p.iter().all(|&b| valid(b)) => {
            String::from_utf8_lossy(p).into_owned()
        }
        _ => "-".to_string(),
    };
    let method = token(parts.next(), is_tchar);
    let target = token(parts.next(), |b| b.is_ascii_graphic());
    (method, target)
}

/// The method and target of a head that did not arrive whole (its deadline passed, or the
/// server shuts down), as [`request_line`] reads them, but only the words whose end arrived:
/// the space after them, or the end of the line. `GET /heal` gives `GET` and `-`, not a
/// target the client may not have meant; `GET /healthz HTTP/1.` gives both.
pub fn partial_request_line(buf: &[u8]) -> (String, String) {
    let whole = if buf.contains(&b'\n') {
        buf
    } else {
        &buf[..buf
            .iter()
            .rposition(|&b| b == b' ')
            .map_or(0, |space| space + 1)]
    };
    request_line(whole)
}

/// What to answer when `max_head_bytes` arrived without the end of the head: 431 when the
/// request line ended; 414 when its target is what does not fit; 400 when the method or the
/// version does not (a 16,000-byte method was answered "URI Too Long" for a 1-byte target,
/// found by an audit).
pub fn oversized_head(buf: &[u8]) -> HeadError {
    if buf.contains(&b'\n') {
        return HeadError::HeadersTooLarge("the request head exceeds its size limit".into());
    }
    let line = &buf[leading_empty_lines(buf)..];
    let Some(method_end) = line.iter().position(|&b| b == b' ') else {
        return HeadError::Bad("the request method exceeds the head size limit".into());
    };
    if line[method_end + 1..].contains(&b' ') {
        HeadError::Bad("the request line exceeds the head size limit after its target".into())
    } else {
        HeadError::UriTooLong
    }
}

/// Parses a complete head (`buf` ends with its empty line) under `limits`.
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<Head, HeadError> {
    let mut fields = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut request = httparse::Request::new(&mut fields);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HeadError::Bad("incomplete head".into())),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::HeadersTooLarge(format!(
                "more than {} header fields",
                limits.max_headers
            )));
        }
        Err(httparse::Error::Version) => return version_refused(buf, limits),
        Err(e) => return Err(HeadError::Bad(format!("malformed request head: {e}"))),
    }
    let minor = request.version.unwrap_or(1);
    let target = request.path.unwrap_or_default();
    request_target(target)?;
    let fields = Fields::gather(request.headers)?;
    // RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to any
    // HTTP/1.1 request message that lacks a Host header field and to any request message that
    // contains more than one Host header field line or a Host header field with an invalid
    // field value" — any request, HTTP/1.0 included (two were served there; found by a
    // hostile-client audit). Each value was checked as it was gathered.
    if fields.hosts > 1 {
        return Err(HeadError::Bad("more than one Host header".into()));
    }
    if minor == 1 && fields.hosts == 0 {
        return Err(HeadError::Bad(
            "an HTTP/1.1 request needs a Host header".into(),
        ));
    }
    // An empty Host is what a client sends when the target has no authority (§3.2): an
    // origin-form one. Beside an absolute-form target it must repeat the target's authority.
    if fields.empty_host && !target.starts_with('/') {
        return Err(HeadError::Bad(
            "an empty Host beside a target that names its authority".into(),
        ));
    }
    Ok(Head {
        method: request.method.unwrap_or_default().to_string(),
        target: target.to_string(),
        minor,
        framing: fields.framing(minor)?,
        expect_continue: expect_continue(fields.expect, minor)?,
        close: fields.close || minor == 0,
        content_type: fields.content_type,
        authorization: fields.authorization,
        forwarded: fields.forwarded,
    })
}

/// Refuses the request-targets httparse lets through but RFC 9112 §3.2 does not, which were
/// routed (404) as if they were paths (found by a hostile-client audit):
///
/// - a fragment: `#` is in none of the four forms (origin, absolute, authority, asterisk), since
///   a client strips it before sending (RFC 9110 §4.2.5);
/// - the asterisk-form `*`, which is only for a server-wide `OPTIONS` (§3.2.4). This server
///   serves no `OPTIONS` (no route has it, so `OPTIONS /path` is 405 or 404), so `OPTIONS *`
///   is refused as well, rather than answered as if `*` named a resource.
///
/// One scan of the target, no allocation: this runs for every request.
fn request_target(target: &str) -> Result<(), HeadError> {
    if target == "*" {
        return Err(HeadError::Bad(
            "the asterisk-form target * is only for OPTIONS, which is not served \
             (RFC 9112 §3.2.4)"
                .into(),
        ));
    }
    if target.as_bytes().contains(&b'#') {
        return Err(HeadError::Bad(
            "a request target may not hold a fragment (#, RFC 9112 §3.2)".into(),
        ));
    }
    Ok(())
}

/// The header fields of a head that the server or the API looks at.
#[derive(Default)]
struct Fields {
    content_length: Option<u64>,
    /// A `Transfer-Encoding` field is present (whatever its value).
    transfer_encoding: bool,
    /// `Transfer-Encoding` codings in order, lower-cased.
    codings: Vec<String>,
    hosts: usize,
    /// A `Host` field with an empty value.
    empty_host: bool,
    content_type: Option<String>,
    authorization: Option<String>,
    forwarded: bool,
    /// `Connection: close`.
    close: bool,
    expect: Option<String>,
}

impl Fields {
    /// Gathers them; `Content-Length` values must be digits and agree.
    fn gather(headers: &[httparse::Header<'_>]) -> Result<Fields, HeadError> {
        let mut fields = Fields::default();
        for field in headers {
            let (name, value) = (field.name, field.value);
            if name.eq_ignore_ascii_case("content-length") {
                // Every element, empty ones included: `Content-Length = 1*DIGIT` (RFC 9110
                // §8.6), of which a list of identical values is tolerated (RFC 9112 §6.3 item
                // 5), but an empty value (`Content-Length:`, `" , "`) is invalid, not absent.
                // Read as absent it framed a body of 0 bytes, and the body ran as the next
                // request (found by an audit), where a proxy in front may have read it whole.
                for part in value.split(|&b| b == b',').map(trim) {
                    let n = parse_length(part).ok_or_else(|| {
                        HeadError::Bad(format!(
                            "invalid Content-Length {:?}",
                            String::from_utf8_lossy(part)
                        ))
                    })?;
                    if fields.content_length.is_some_and(|seen| seen != n) {
                        return Err(HeadError::Bad("differing Content-Length values".into()));
                    }
                    fields.content_length = Some(n);
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                // A field without a single coding (`Transfer-Encoding:`, `","`) is refused
                // rather than read as absent: beside a Content-Length, or in HTTP/1.0, a proxy
                // that reads it as present frames the body otherwise (found by an audit).
                fields.transfer_encoding = true;
                let before = fields.codings.len();
                for part in list(value) {
                    let coding = String::from_utf8_lossy(part).to_ascii_lowercase();
                    fields.codings.push(coding);
                }
                if fields.codings.len() == before {
                    return Err(HeadError::Bad("an empty Transfer-Encoding field".into()));
                }
            } else if name.eq_ignore_ascii_case("host") {
                if !valid_host(value) {
                    return Err(HeadError::Bad(format!(
                        "invalid Host {:?}: a host name, an IPv4 address or a bracketed IPv6 \
                         address, and an optional :port up to 65535 (RFC 9112 §3.2)",
                        String::from_utf8_lossy(&value[..value.len().min(64)])
                    )));
                }
                fields.hosts += 1;
                fields.empty_host |= value.is_empty();
            } else if name.eq_ignore_ascii_case("content-type") {
                // One value only (RFC 9110 §8.3, §11.6.2): with two, which one the body is in
                // (or which token counts) would be a guess (found by an audit: the last won).
                if fields.content_type.replace(text(value)).is_some() {
                    return Err(HeadError::Bad("more than one Content-Type field".into()));
                }
            } else if name.eq_ignore_ascii_case("authorization") {
                if fields.authorization.replace(text(value)).is_some() {
                    return Err(HeadError::Bad("more than one Authorization field".into()));
                }
            } else if name.eq_ignore_ascii_case(crate::http::FORWARDED) {
                fields.forwarded = true;
            } else if name.eq_ignore_ascii_case("connection") {
                fields.close |= list(value).any(|token| token.eq_ignore_ascii_case(b"close"));
            } else if name.eq_ignore_ascii_case("expect") {
                fields.expect = Some(text(value));
            }
        }
        Ok(fields)
    }

    /// The body framing (RFC 9112 §6.1–6.3): a final `chunked` alone, never with
    /// `Content-Length` nor in HTTP/1.0; else the length (0 without either).
    fn framing(&self, minor: u8) -> Result<Framing, HeadError> {
        match (!self.transfer_encoding, self.content_length) {
            (true, length) => Ok(Framing::Length(length.unwrap_or(0))),
            (false, Some(_)) => Err(HeadError::Bad(
                "both Transfer-Encoding and Content-Length".into(),
            )),
            (false, None) if minor == 0 => Err(HeadError::Bad(
                "Transfer-Encoding in an HTTP/1.0 request".into(),
            )),
            (false, None) if self.codings == ["chunked"] => Ok(Framing::Chunked),
            (false, None) => Err(HeadError::Bad(format!(
                "Transfer-Encoding {:?}: only a single chunked coding is accepted",
                self.codings.join(", ")
            ))),
        }
    }
}

/// Whether a `Host` value (trimmed of its whitespace by httparse) is `uri-host [ ":" port ]`
/// (RFC 9110 §7.2, RFC 3986 §3.2.2), or empty:
///
/// ```text
/// uri-host = IP-literal / IPv4address / reg-name
/// reg-name = *( unreserved / pct-encoded / sub-delims )   ; IPv4address is one too
/// ```
///
/// An IP-literal is read as a bracketed IPv6 address only (no IPvFuture, no zone); a port is
/// digits whose value fits a u16 (`x:` too, as `port = *DIGIT` allows); a port without a host
/// (`:80`) is refused. Found by a hostile-client audit: `a b`, `http://evil/` and `x:99999999`
/// were served, so what a proxy in front, a log or a virtual host saw as the host was a guess.
/// No allocation: this runs for every request.
fn valid_host(value: &[u8]) -> bool {
    if value.is_empty() {
        return true;
    }
    let (host, port) = if let Some(literal) = value.strip_prefix(b"[") {
        let Some(close) = literal.iter().position(|&b| b == b']') else {
            return false;
        };
        let ipv6 = std::str::from_utf8(&literal[..close])
            .is_ok_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok());
        if !ipv6 {
            return false;
        }
        match &literal[close + 1..] {
            [] => (&value[..close + 2], None),
            [b':', port @ ..] => (&value[..close + 2], Some(port)),
            _ => return false,
        }
    } else {
        match value.iter().rposition(|&b| b == b':') {
            Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
            None => (value, None),
        }
    };
    let port_ok = match port {
        None | Some([]) => true,
        Some(port) => {
            port.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(port).is_ok_and(|p| p.parse::<u16>().is_ok())
        }
    };
    port_ok && !host.is_empty() && (host.starts_with(b"[") || reg_name(host))
}

/// Whether `s` is a `reg-name` of RFC 3986 §3.2.2: unreserved characters, sub-delims and
/// percent-encoded octets.
fn reg_name(s: &[u8]) -> bool {
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' if s.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && s.get(i + 2).is_some_and(u8::is_ascii_hexdigit) =>
            {
                i += 3;
                continue;
            }
            b if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b) => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// Whether an `Expect` value asks for `100 Continue`; 417 for any other expectation. HTTP/1.0
/// expectations are ignored (RFC 9110 §10.1.1).
fn expect_continue(expect: Option<String>, minor: u8) -> Result<bool, HeadError> {
    match expect {
        None => Ok(false),
        Some(_) if minor == 0 => Ok(false),
        Some(e) if e.trim().eq_ignore_ascii_case("100-continue") => Ok(true),
        Some(e) => Err(HeadError::Expectation(e)),
    }
}

/// A head whose version httparse (which knows `HTTP/1.0` and `HTTP/1.1` only) refused.
///
/// `HTTP/1.2` to `HTTP/1.9` (one digit, as RFC 9112 §2.3 spells `HTTP-version = HTTP-name "/"
/// DIGIT "." DIGIT`) is processed as HTTP/1.1 and answered as such: "A recipient that receives
/// a message with a major version number that it implements and a minor version number higher
/// than what it implements SHOULD process the message as if it were in the highest minor
/// version within that major version". Another major version is 505; anything else that is
/// not `HTTP/d.d` (`HTTP/1.10`, `HTTP/1.x`, `http/1.1`) stays a malformed head, 400.
fn version_refused(buf: &[u8], limits: &Limits) -> Result<Head, HeadError> {
    match request_version(buf) {
        Some((at, [b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'2'..=b'9'])) => {
            let mut as_1_1 = buf.to_vec();
            as_1_1[at + 7] = b'1';
            parse_head(&as_1_1, limits)
        }
        Some((_, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]))
            if major.is_ascii_digit() && minor.is_ascii_digit() && *major != b'1' =>
        {
            Err(HeadError::Version)
        }
        Some((_, [b'H', b'T', b'T', b'P', b'/', major]))
            if major.is_ascii_digit() && *major != b'1' =>
        {
            Err(HeadError::Version)
        }
        _ => Err(HeadError::Bad(
            "malformed request head: invalid HTTP version".into(),
        )),
    }
}

/// The last space-separated word of the request line (its version) and where it starts in
/// `buf` (after the empty lines httparse skips too).
fn request_version(buf: &[u8]) -> Option<(usize, &[u8])> {
    let start = leading_empty_lines(buf);
    let rest = &buf[start..];
    let line_end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let line = rest[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&rest[..line_end]);
    let space = line.iter().rposition(|&b| b == b' ')?;
    Some((start + space + 1, &line[space + 1..]))
}

/// The elements of a comma-separated field value, trimmed of whitespace; empty ones dropped.
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|p| !p.is_empty())
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// `1*DIGIT` that fits a u64.
fn parse_length(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

fn text(value: &[u8]) -> String {
    String::from_utf8_lossy(value).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Chunked bodies

/// Why a chunked body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkError {
    /// 400: not the chunked syntax.
    Bad(String),
    /// 413: the decoded body exceeds `max_body_bytes`.
    TooLarge,
    /// 431: a chunk-size line or the trailer section exceeds the head bounds.
    TooLong(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line (size, optional extensions, CRLF).
    Size,
    /// Copying `n` more data bytes.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// Reading trailer lines after the last chunk, until an empty line.
    Trailers,
    Done,
}

/// Decodes `Transfer-Encoding: chunked` incrementally: feed it what arrived, it appends the data
/// to the body and says how much input it used. Lines (chunk sizes, trailers) are kept only up
/// to the head bounds, so its memory is bounded whatever the client sends.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// The current line so far (chunk-size or trailer line).
    line: Vec<u8>,
    trailer_bytes: usize,
    trailer_fields: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
            line: Vec::new(),
            trailer_bytes: 0,
            trailer_fields: 0,
        }
    }
}

impl ChunkedDecoder {
    /// Whether the last chunk and the trailers were read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes a prefix of `input`, appending decoded data to `body`; returns the bytes
    /// consumed (all of `input` unless the body ended inside it).
    pub fn feed(
        &mut self,
        input: &[u8],
        body: &mut Vec<u8>,
        limits: &Limits,
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                ChunkState::Done => break,
                ChunkState::Data(n) => {
                    let take = (input.len() - i).min(usize::try_from(n).unwrap_or(usize::MAX));
                    if body.len() + take > limits.max_body_bytes {
                        return Err(ChunkError::TooLarge);
                    }
                    body.extend_from_slice(&input[i..i + take]);
                    i += take;
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::Size | ChunkState::DataEnd | ChunkState::Trailers => {
                    let b = input[i];
                    i += 1;
                    if b != b'\n' {
                        if self.line.len() >= limits.max_head_bytes {
                            return Err(ChunkError::TooLong(
                                "a chunk-size or trailer line exceeds the head size limit".into(),
                            ));
                        }
                        self.line.push(b);
                        continue;
                    }
                    let line = std::mem::take(&mut self.line);
                    let line = line.strip_suffix(b"\r").unwrap_or(&line);
                    self.end_line(line, body, limits)?;
                }
            }
        }
        Ok(i)
    }

    fn end_line(&mut self, line: &[u8], body: &[u8], limits: &Limits) -> Result<(), ChunkError> {
        match self.state {
            ChunkState::DataEnd => {
                if !line.is_empty() {
                    return Err(ChunkError::Bad("chunk data longer than its size".into()));
                }
                self.state = ChunkState::Size;
            }
            ChunkState::Size => {
                let n = chunk_size(line).ok_or_else(|| {
                    ChunkError::Bad(format!(
                        "invalid chunk-size line {:?}",
                        String::from_utf8_lossy(&line[..line.len().min(32)])
                    ))
                })?;
                if n == 0 {
                    self.state = ChunkState::Trailers;
                } else if n > (limits.max_body_bytes as u64).saturating_sub(body.len() as u64) {
                    return Err(ChunkError::TooLarge);
                } else {
                    self.state = ChunkState::Data(n);
                }
            }
            ChunkState::Trailers => {
                if line.is_empty() {
                    self.state = ChunkState::Done;
                    return Ok(());
                }
                self.trailer_bytes += line.len() + 2;
                self.trailer_fields += 1;
                if self.trailer_bytes > limits.max_head_bytes
                    || self.trailer_fields > limits.max_headers
                {
                    return Err(ChunkError::TooLong(
                        "the trailer section exceeds the head limits".into(),
                    ));
                }
                if !field_line(line) {
                    return Err(ChunkError::Bad(format!(
                        "malformed trailer field {:?} (RFC 9112 §5.1, §7.1.2)",
                        String::from_utf8_lossy(&line[..line.len().min(32)])
                    )));
                }
            }
            ChunkState::Data(_) | ChunkState::Done => {}
        }
        Ok(())
    }
}

/// Whether a trailer line (its CRLF or LF removed) is a `field-line` (RFC 9112 §5.1, which
/// §7.1.2 applies to trailers), as httparse holds a head's:
///
/// ```text
/// field-line  = field-name ":" OWS field-value OWS
/// field-name  = token                          ; no whitespace before the ":"
/// field-value = *( VCHAR / obs-text / SP / HTAB )
/// ```
///
/// So a control byte (NUL, a bare CR: §2.2), an empty name, whitespace before the colon and
/// an obs-fold line (which starts with whitespace) are refused. Only a `:` was required, so
/// `X: a\0b`, `X : a` and `: a` passed after the last chunk, all 400 in a head (found by a
/// hostile-client audit); a proxy that rejects or rewrites them disagrees on the message.
fn field_line(line: &[u8]) -> bool {
    let name = token_len(line);
    name > 0
        && line.get(name) == Some(&b':')
        && line[name + 1..]
            .iter()
            .all(|&b| matches!(b, b'\t' | b' '..=b'~' | 0x80..))
}

/// The size of a chunk-size line (its CRLF or LF removed), if the line is exactly RFC 9112
/// §7.1's
///
/// ```text
/// chunk-size [ chunk-ext ]
/// chunk-size     = 1*HEXDIG                    ; here at most 16 after leading zeros (a u64)
/// chunk-ext      = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
/// chunk-ext-name = token
/// chunk-ext-val  = token / quoted-string
/// BWS            = *( SP / HTAB )
/// ```
///
/// Whitespace is accepted only where BWS stands: before and after the `;` and the `=` of an
/// extension. So `5`, `5;a`, `5 ;a`, `5; a = "b c"` are read; `5 `, `5\t`, ` 5`, `5;a `, `5;`,
/// `5 5`, `0x5` and any control byte (a bare CR included) are not. Extensions are read only to
/// be checked, never used. A lenient reading (size up to the first non-digit, say) is a
/// request-smuggling vector: a proxy in front may delimit the same bytes differently.
///
/// Leading zeros are not counted against the 16 digits: `1*HEXDIG` allows any number of them
/// and they change no value, so `00000000000000001` is a chunk of 1 byte, as a proxy that
/// reads the grammar sees it (found by a hostile-client audit: it was refused with 400). The
/// line itself stays bounded by `max_head_bytes`.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let zeros = line[..digits].iter().take_while(|&&b| b == b'0').count();
    if digits == 0 || digits - zeros > 16 || !chunk_ext(&line[digits..]) {
        return None;
    }
    // All zeros is the last chunk; `from_str_radix` needs at least one digit.
    let significant = &line[zeros.min(digits - 1)..digits];
    u64::from_str_radix(std::str::from_utf8(significant).ok()?, 16).ok()
}

/// Whether `rest` is a `chunk-ext` (see [`chunk_size`]), possibly empty.
fn chunk_ext(mut rest: &[u8]) -> bool {
    while !rest.is_empty() {
        let Some(after) = bws(rest).strip_prefix(b";") else {
            return false;
        };
        rest = bws(after);
        let name = token_len(rest);
        if name == 0 {
            return false;
        }
        rest = &rest[name..];
        if let Some(after) = bws(rest).strip_prefix(b"=") {
            rest = bws(after);
            let value = match rest.first() {
                Some(b'"') => quoted_string_len(rest),
                _ => token_len(rest),
            };
            if value == 0 {
                return false;
            }
            rest = &rest[value..];
        }
    }
    true
}

/// `s` after its leading `BWS` (spaces and tabs).
fn bws(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    s
}

/// `tchar` of RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Length of the `token` that `s` starts with (0 when none).
fn token_len(s: &[u8]) -> usize {
    s.iter().take_while(|&&b| is_tchar(b)).count()
}

/// Length of the `quoted-string` (RFC 9110 §5.6.4) that `s` starts with, quotes included; 0
/// when `s` does not start with a complete one.
fn quoted_string_len(s: &[u8]) -> usize {
    // qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text; quoted-pair = "\" ( HTAB /
    // SP / VCHAR / obs-text ).
    let qdtext = |b: u8| matches!(b, b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..);
    let pair = |b: u8| matches!(b, b'\t' | b' ' | 0x21..=0x7e | 0x80..);
    if s.first() != Some(&b'"') {
        return 0;
    }
    let mut i = 1;
    loop {
        match s.get(i) {
            Some(b'"') => return i + 1,
            Some(b'\\') if s.get(i + 1).is_some_and(|&b| pair(b)) => i += 2,
            Some(&b) if qdtext(b) => i += 1,
            _ => return 0,
        }
    }
}

impl ChunkError {
    pub fn into_api_error(self, limits: &Limits) -> ApiError {
        match self {
            ChunkError::Bad(detail) => ApiError::BadRequest { detail },
            ChunkError::TooLarge => ApiError::PayloadTooLarge {
                limit: limits.max_body_bytes,
            },
            ChunkError::TooLong(detail) => ApiError::HeadersTooLarge { detail },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Responses

/// The reason phrase of a status (any text is valid; these are the usual ones).
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        _ => "Unknown",
    }
}

/// Whether a header can be written as is: a token name and a value without control
/// characters (so no CR/LF can split the response).
pub fn safe_header(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(is_tchar)
        && value
            .bytes()
            .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// `Content-Length`.
    Fixed(usize),
    /// `Transfer-Encoding: chunked` (HTTP/1.1).
    Chunked,
    /// Ends with the connection (HTTP/1.0 streaming).
    UntilClose,
    /// No body and no length (1xx, 204, 304).
    None,
}

/// Writes a response head into `out`.
pub fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    headers: &[(&'static str, String)],
    length: BodyLength,
    close: bool,
    date: &str,
) {
    let mut s = String::with_capacity(160);
    let _ = write!(
        s,
        "HTTP/1.1 {status} {}\r\nServer: mec-plugin\r\nDate: {date}\r\n",
        reason(status)
    );
    if length != BodyLength::None {
        let _ = write!(s, "Content-Type: {content_type}\r\n");
    }
    for (name, value) in headers {
        if is_framing_header(name) {
            continue;
        }
        if safe_header(name, value) {
            let _ = write!(s, "{name}: {value}\r\n");
        } else {
            log::warn!("response header {name} dropped: not a valid header");
        }
    }
    match length {
        BodyLength::Fixed(n) => {
            let _ = write!(s, "Content-Length: {n}\r\n");
        }
        BodyLength::Chunked => s.push_str("Transfer-Encoding: chunked\r\n"),
        BodyLength::UntilClose | BodyLength::None => {}
    }
    if close {
        s.push_str("Connection: close\r\n");
    }
    s.push_str("\r\n");
    out.extend_from_slice(s.as_bytes());
}

/// Headers the server writes itself and a handler may not set.
fn is_framing_header(name: &str) -> bool {
    [
        "content-length",
        "transfer-encoding",
        "connection",
        "server",
        "date",
        "content-type",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// The log form of a request target: at most 256 bytes (see [`log_text`]).
pub fn log_target(target: &str) -> std::borrow::Cow<'_, str> {
    log_text(target, 256)
}

/// The log form of a request method: at most 32 bytes (see [`log_text`]); a 16,000-byte
/// method made a 16 kB log line (found by an audit).
pub fn log_method(method: &str) -> std::borrow::Cow<'_, str> {
    log_text(method, 32)
}

/// `text` as a log line may carry it: cut after `max` bytes (marked with `...`), so that a long
/// one cannot make a long line, and every character but visible ASCII written as `\u{..}`, so
/// that none can act on the terminal showing the log (the audit wrote C1 `CSI`, U+009B, and a
/// bidi override, U+202E, into it through a target). Allocates only when it changes something.
pub fn log_text(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max && text.bytes().all(|b| b.is_ascii_graphic()) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len().min(max) + 16);
    for c in text.chars() {
        if out.len() >= max {
            out.push_str("...");
            break;
        }
        if c.is_ascii_graphic() {
            out.push(c);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_head_bytes: 1024,
        max_headers: 8,
        max_body_bytes: 100,
    };

    fn parse(text: &str) -> Result<Head, HeadError> {
        parse_head(text.as_bytes(), &LIMITS)
    }

    fn bad(text: &str) -> String {
        match parse(text) {
            Err(HeadError::Bad(detail)) => detail,
            other => panic!("{text:?} gave {other:?}"),
        }
    }

    /// Found by an audit: with two, the last one won (`text/plain` then `application/json`
    /// was 201, the other way 415); which token a proxy or a log saw was a guess too.
    #[test]
    fn a_second_content_type_or_authorization_field_is_refused() {
        for (name, detail) in [
            ("Content-Type", "more than one Content-Type field"),
            ("content-type", "more than one Content-Type field"),
            ("Authorization", "more than one Authorization field"),
        ] {
            let text = format!("POST / HTTP/1.1\r\nHost: t\r\n{name}: a\r\n{name}: a\r\n\r\n");
            assert_eq!(bad(&text), detail);
        }
        let one =
            parse("POST / HTTP/1.1\r\nHost: t\r\nContent-Type: a\r\nAuthorization: b\r\n\r\n");
        assert!(one.is_ok());
    }

    #[test]
    fn every_status_the_service_answers_has_its_reason_phrase() {
        let statuses = [
            100, 200, 201, 202, 204, 304, 400, 401, 403, 404, 405, 408, 409, 413, 414, 415, 417,
            422, 431, 500, 502, 503, 504, 505, 507,
        ];
        for status in statuses {
            assert_ne!(reason(status), "Unknown", "{status}");
        }
        assert_eq!(reason(507), "Insufficient Storage");
    }

    #[test]
    fn the_end_of_a_head_is_found_with_crlf_or_lf_and_only_once_scanned() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest", 0), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\nA: b\n\nrest", 0), Some(21));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n", 0), None);
        // Resumed from where the last search stopped, across the boundary.
        let full = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(head_end(full, 16), Some(18));
        assert_eq!(leading_empty_lines(b"\r\n\nGET"), 3);
    }

    #[test]
    fn a_head_gives_method_target_version_and_the_api_headers() {
        let head = parse(
            "POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Authorization: Bearer t\r\nContent-Length: 5\r\n\r\n",
        )
        .unwrap();
        assert_eq!(head.method, "POST");
        assert_eq!(head.target, "/a?b=1");
        assert_eq!(head.minor, 1);
        assert_eq!(head.content_type.as_deref(), Some("application/json"));
        assert_eq!(head.authorization.as_deref(), Some("Bearer t"));
        assert_eq!(head.framing, Framing::Length(5));
        assert!(!head.close && !head.expect_continue);
    }

    #[test]
    fn content_length_must_be_digits_and_duplicates_must_agree() {
        assert!(bad("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 88x\r\n\r\n").contains("88x"));
        bad("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n");
        bad("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n");
        bad("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n");
        bad("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 34\r\n\r\n");
        bad("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\n");
        let same =
            parse("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3, 3\r\n\r\n");
        assert_eq!(same.unwrap().framing, Framing::Length(3));
    }

    /// Found by an audit: an empty value read as no Content-Length (a body of 0 bytes), and an
    /// empty Transfer-Encoding as none, so the body ran as a second request.
    #[test]
    fn an_empty_content_length_or_transfer_encoding_is_refused_not_read_as_absent() {
        for value in ["", " ", ",", " , ", "3,", ",3", "3, ,3"] {
            let text = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length:{value}\r\n\r\n");
            assert!(bad(&text).contains("Content-Length"), "{value:?}");
        }
        for value in ["", " ", ",", " , ,"] {
            for (version, host) in [("1.1", "Host: x\r\n"), ("1.0", "")] {
                for length in ["", "Content-Length: 5\r\n"] {
                    let text = format!(
                        "POST / HTTP/{version}\r\n{host}Transfer-Encoding:{value}\r\n{length}\r\n"
                    );
                    bad(&text);
                }
            }
        }
        // Empty elements beside a coding are allowed in a list (RFC 9110 §5.6.1).
        let chunked = parse("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: , chunked\r\n\r\n");
        assert_eq!(chunked.unwrap().framing, Framing::Chunked);
    }

    #[test]
    fn transfer_encoding_must_be_a_single_final_chunked_without_content_length() {
        let chunked = parse("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(chunked.unwrap().framing, Framing::Chunked);
        bad("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n");
        bad("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        bad("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        bad(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert!(
            bad("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n")
                .contains("both")
        );
        bad("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
    }

    #[test]
    fn http_1_1_needs_exactly_one_host_and_http_1_0_always_closes() {
        bad("GET / HTTP/1.1\r\n\r\n");
        bad("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
        assert!(parse("GET / HTTP/1.0\r\n\r\n").unwrap().close);
        assert!(
            parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .unwrap()
                .close
        );
        assert!(
            !parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .close
        );
        assert!(
            parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: foo, close\r\n\r\n")
                .unwrap()
                .close
        );
    }

    /// Found by a hostile-client audit: `GET *` and `GET /healthz#f` were routed (404) as if
    /// they were paths.
    #[test]
    fn an_asterisk_target_or_a_fragment_is_refused() {
        for method in ["GET", "HEAD", "POST", "OPTIONS"] {
            let detail = bad(&format!("{method} * HTTP/1.1\r\nHost: x\r\n\r\n"));
            assert!(detail.contains("asterisk"), "{method}: {detail}");
        }
        for target in ["/healthz#f", "/a?b#", "#", "http://x/a#b", "/a%23b#"] {
            let detail = bad(&format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n"));
            assert!(detail.contains("fragment"), "{target}: {detail}");
        }
        // `*` inside a path, and `%23` (an encoded `#`), are ordinary target characters.
        for target in ["/a*b", "/*", "/a%23b", "/a?b=*"] {
            let head = parse(&format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n"));
            assert_eq!(head.unwrap().target, target);
        }
    }

    /// Found by a hostile-client audit: `Host: a b`, `Host: http://evil/`, `Host: x:99999999`
    /// were served, and so were two Host fields in HTTP/1.0 (RFC 9112 §3.2: 400 for both).
    #[test]
    fn an_invalid_host_or_two_of_them_in_any_version_is_refused() {
        for host in [
            "a b",
            "http://evil/",
            "x:99999999",
            "x:65536",
            "x:-1",
            "x:8o",
            "x:80:80",
            ":80",
            "a/b",
            "a@b",
            "a%2",
            "a%zz",
            "[::1",
            "[::1]x",
            "[not-ipv6]",
            "[1.2.3.4]",
            "::1",
            "é",
            "a\x01",
        ] {
            for version in ["1.1", "1.0"] {
                let text = format!("GET / HTTP/{version}\r\nHost: {host}\r\n\r\n");
                let detail = match parse_head(text.as_bytes(), &LIMITS) {
                    Err(HeadError::Bad(detail)) => detail,
                    other => panic!("{host:?} in HTTP/{version} gave {other:?}"),
                };
                assert!(
                    detail.contains("Host") || detail.contains("malformed"),
                    "{host:?}: {detail}"
                );
            }
        }
        for host in [
            "x",
            "x:80",
            "x:",
            "x:0",
            "x:65535",
            "x:00080",
            "example.com.",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:443",
            "[2001:db8::1.2.3.4]",
            "a%2Fb",
            "a-b_c~d!$&'()*+,;=",
        ] {
            for version in ["1.1", "1.0"] {
                let text = format!("GET / HTTP/{version}\r\nHost: {host}\r\n\r\n");
                assert!(parse(&text).is_ok(), "{host:?} in HTTP/{version}");
            }
        }
        bad("GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n");
        bad("GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n");
        // Empty: the target has no authority (origin-form) — not beside an absolute-form one.
        assert!(parse("GET / HTTP/1.1\r\nHost:\r\n\r\n").is_ok());
        assert!(parse("GET / HTTP/1.1\r\nHost: \r\n\r\n").is_ok());
        assert!(bad("GET http://x/ HTTP/1.1\r\nHost:\r\n\r\n").contains("empty Host"));
        assert!(parse("GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n").is_ok());
    }

    #[test]
    fn expectations_other_than_100_continue_are_refused() {
        let head = parse("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\n\r\n").unwrap();
        assert!(head.expect_continue);
        assert_eq!(
            parse("POST / HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\n\r\n"),
            Err(HeadError::Expectation("200-ok".into()))
        );
        assert!(
            !parse("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n")
                .unwrap()
                .expect_continue
        );
    }

    #[test]
    fn too_many_fields_is_431_a_long_request_line_414_and_another_version_505() {
        let mut text = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for i in 0..8 {
            text.push_str(&format!("X-{i}: y\r\n"));
        }
        text.push_str("\r\n");
        assert!(matches!(parse(&text), Err(HeadError::HeadersTooLarge(_))));
        assert_eq!(oversized_head(b"GET /aaaaaaaa"), HeadError::UriTooLong);
        assert!(matches!(
            oversized_head(b"GET / HTTP/1.1\r\nX: aaaa"),
            HeadError::HeadersTooLarge(_)
        ));
        assert_eq!(parse("GET / HTTP/2.0\r\n\r\n"), Err(HeadError::Version));
        assert_eq!(parse("GET / HTTP/3\r\n\r\n"), Err(HeadError::Version));
        bad("GET / HTTX/1.1\r\n\r\n");
        bad("GET  / HTTP/1.1\r\nHost: x\r\n\r\n");
        bad("GET / HTTP/1.1\r\nHost : x\r\n\r\n");
    }

    #[test]
    fn a_higher_http_1_minor_is_read_as_http_1_1_and_other_versions_are_refused() {
        for minor in 2..=9 {
            let head = parse(&format!("GET /a HTTP/1.{minor}\r\nHost: x\r\n\r\n")).unwrap();
            assert_eq!((head.minor, head.target.as_str()), (1, "/a"));
            assert!(!head.close, "HTTP/1.{minor} is persistent, as HTTP/1.1");
        }
        // As HTTP/1.1 in every respect: one Host needed, chunked allowed, the rest still checked.
        assert!(bad("GET / HTTP/1.2\r\n\r\n").contains("Host"));
        let chunked = parse("POST / HTTP/1.9\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(chunked.unwrap().framing, Framing::Chunked);
        bad("GET / HTTP/1.2\r\nHost : x\r\n\r\n");
        assert_eq!(
            parse("\r\nGET / HTTP/1.3\n\n").map(|h| h.minor),
            Err(bad_host())
        );
        assert_eq!(parse("\r\nGET / HTTP/1.3\nHost: x\n\n").unwrap().minor, 1);
        // Not HTTP/DIGIT.DIGIT: 400, whatever the digits.
        for version in [
            "HTTP/1.10",
            "HTTP/1.22",
            "HTTP/1.",
            "HTTP/1.x",
            "HTTP/1",
            "http/1.2",
            "HTTP/1.2x",
            "HTTP/01.2",
            "HTTP/1.2 ",
            "HTTP/1.2\t",
            "HTTP/1,2",
            "x HTTP/1.2",
        ] {
            let detail = bad(&format!("GET / {version}\r\nHost: x\r\n\r\n"));
            assert!(detail.contains("malformed"), "{version:?}: {detail}");
        }
        // Another major version: 505.
        for version in ["HTTP/2.0", "HTTP/2.2", "HTTP/0.9", "HTTP/3"] {
            let text = format!("GET / {version}\r\nHost: x\r\n\r\n");
            assert_eq!(parse(&text), Err(HeadError::Version), "{version}");
        }
    }

    fn bad_host() -> HeadError {
        HeadError::Bad("an HTTP/1.1 request needs a Host header".into())
    }

    fn decode(input: &[u8], pieces: usize) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut decoder = ChunkedDecoder::default();
        let mut body = Vec::new();
        let mut used = 0;
        let step = input.len().div_ceil(pieces.max(1)).max(1);
        for piece in input.chunks(step) {
            used += decoder.feed(piece, &mut body, &LIMITS)?;
            if decoder.is_done() {
                return Ok((body, used));
            }
        }
        Err(ChunkError::Bad("unfinished".into()))
    }

    #[test]
    fn a_chunked_body_decodes_whole_or_byte_by_byte_and_stops_at_its_end() {
        let input = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\nGET /next";
        for pieces in [1, 3, input.len()] {
            let (body, used) = decode(input, pieces).unwrap();
            assert_eq!(body, b"hello world");
            assert_eq!(&input[used..], b"GET /next");
        }
        assert_eq!(decode(b"0\n\n", 1).unwrap().0, b"");
    }

    #[test]
    fn chunked_errors_are_400_413_and_431() {
        assert!(matches!(decode(b"zz\r\n", 1), Err(ChunkError::Bad(_))));
        assert!(matches!(decode(b"\r\n", 1), Err(ChunkError::Bad(_))));
        assert!(matches!(
            decode(b"3\r\nabcd\r\n", 1),
            Err(ChunkError::Bad(_))
        ));
        assert!(matches!(decode(b"65\r\n", 1), Err(ChunkError::TooLarge)));
        assert!(matches!(
            decode(b"ffffffffffffffffff\r\n", 1),
            Err(ChunkError::Bad(_))
        ));
        let long_line = format!("1;{}\r\n", "e".repeat(2000));
        assert!(matches!(
            decode(long_line.as_bytes(), 7),
            Err(ChunkError::TooLong(_))
        ));
        let many = format!("0\r\n{}\r\n", "T: x\r\n".repeat(9));
        assert!(matches!(
            decode(many.as_bytes(), 1),
            Err(ChunkError::TooLong(_))
        ));
        assert!(matches!(
            decode(b"0\r\nnocolon\r\n\r\n", 1),
            Err(ChunkError::Bad(_))
        ));
        // Exactly the limit is fine, split over chunks.
        let mut exact = String::new();
        for _ in 0..4 {
            exact.push_str(&format!("19\r\n{}\r\n", "x".repeat(25)));
        }
        exact.push_str("0\r\n\r\n");
        assert_eq!(decode(exact.as_bytes(), 5).unwrap().0.len(), 100);
    }

    #[test]
    fn whitespace_in_a_chunk_size_line_is_read_only_around_an_extensions_separators() {
        let with = |line: &[u8]| {
            let mut input = line.to_vec();
            input.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
            decode(&input, 1)
        };
        for line in [
            &b"5"[..],
            b"05",
            b"5;ext",
            b"5 ;ext",
            b"5\t;ext",
            b"5 \t ; \t ext",
            b"5;ext=v",
            b"5 ; ext = v",
            b"5;a=b;c;d=\"\"",
            b"5;a=\"b c\\\" ;=\"",
            b"5;a=\"\xc3\xa9\"",
        ] {
            let (body, _) =
                with(line).unwrap_or_else(|e| panic!("{:?}: {e:?}", String::from_utf8_lossy(line)));
            assert_eq!(body, b"hello", "{:?}", String::from_utf8_lossy(line));
        }
        for line in [
            &b"5 "[..],
            b"5\t",
            b" 5",
            b"\t5",
            b"5 5",
            b"5;ext ",
            b"5;ext\t",
            b"5;ext=v ",
            b"5;",
            b"5 ;",
            b"5;=v",
            b"5;a=",
            b"5;a==b",
            b"5;a b",
            b"5;a=\"open",
            b"5;a=\"b\x01\"",
            b"5;a=\"b\\\x7f\"",
            b"5\r",
            b"5;a\rb",
            b"5;a\x00",
            b"0x5",
            b"5,6",
            b"+5",
            b"10000000000000005",
        ] {
            let outcome = with(line);
            assert!(
                matches!(&outcome, Err(ChunkError::Bad(detail)) if detail.contains("chunk-size")),
                "{:?}: {outcome:?}",
                String::from_utf8_lossy(line)
            );
        }
        // The last chunk's line follows the same grammar.
        assert!(matches!(decode(b"0 \r\n\r\n", 1), Err(ChunkError::Bad(_))));
        assert_eq!(decode(b"0 ;a=1\r\n\r\n", 1).unwrap().0, b"");
        assert_eq!(decode(b"0000000000000000\r\n\r\n", 1).unwrap().0, b"");
    }

    /// Found by a hostile-client audit: `00000000000000001` (17 digits) was refused with 400
    /// though `1*HEXDIG` allows it, so the server and a proxy that reads the grammar disagreed
    /// on the body.
    #[test]
    fn leading_zeros_of_a_chunk_size_do_not_count_against_its_16_digits() {
        let zeros = "0".repeat(40);
        let input = format!("{zeros}5\r\nhello\r\n{zeros}0\r\n\r\n");
        assert_eq!(decode(input.as_bytes(), 3).unwrap().0, b"hello");
        let input = format!("{zeros}5;a=b\r\nhello\r\n{zeros}\r\n\r\n");
        assert_eq!(decode(input.as_bytes(), 1).unwrap().0, b"hello");
        // Sixteen significant digits still fit a u64 (413 here), seventeen do not (400).
        let input = format!("{zeros}ffffffffffffffff\r\n");
        assert!(matches!(
            decode(input.as_bytes(), 1),
            Err(ChunkError::TooLarge)
        ));
        let input = format!("{zeros}10000000000000000\r\n");
        assert!(matches!(
            decode(input.as_bytes(), 1),
            Err(ChunkError::Bad(_))
        ));
    }

    /// Found by a hostile-client audit: a trailer needed only a `:`, so lines a head would
    /// have refused with 400 were accepted after the last chunk.
    #[test]
    fn trailer_fields_follow_the_field_line_grammar_of_a_head() {
        for trailer in [
            &b"X: a\x00b"[..],
            b"\x01\x02: a",
            b"X : a",
            b"X\t: a",
            b"X: a\rb",
            b": a",
            b" X: a",
            b"\tfolded",
            b"X\x7f: a",
            b"X: a\x7fb",
            b"X: a\x1bb",
            b"(X): a",
        ] {
            let mut input = b"1\r\na\r\n0\r\n".to_vec();
            input.extend_from_slice(trailer);
            input.extend_from_slice(b"\r\n\r\n");
            let outcome = decode(&input, 1);
            assert!(
                matches!(&outcome, Err(ChunkError::Bad(detail)) if detail.contains("trailer")),
                "{:?}: {outcome:?}",
                String::from_utf8_lossy(trailer)
            );
        }
        for trailer in [
            &b"X:"[..],
            b"X: ",
            b"X:a",
            b"X: a b\tc ",
            b"X-Y_z!#$%&'*+.^`|~: \"q\" (c) \xc3\xa9",
        ] {
            let mut input = b"1\r\na\r\n0\r\n".to_vec();
            input.extend_from_slice(trailer);
            input.extend_from_slice(b"\r\n\r\n");
            let (body, used) = decode(&input, 2)
                .unwrap_or_else(|e| panic!("{:?}: {e:?}", String::from_utf8_lossy(trailer)));
            assert_eq!((body.as_slice(), used), (&b"a"[..], input.len()));
        }
    }

    #[test]
    fn a_chunk_size_near_u64_max_after_some_data_is_413_not_an_overflow() {
        // body.len() + size must not wrap (release) nor panic (debug, overflow checks).
        let input = b"1\r\na\r\nffffffffffffffff\r\nxx";
        assert!(matches!(decode(input, 1), Err(ChunkError::TooLarge)));
        let input = b"1\r\na\r\nFFFFFFFFFFFFFFFF\r\n";
        assert!(matches!(decode(input, 3), Err(ChunkError::TooLarge)));
    }

    #[test]
    fn the_response_head_has_status_server_length_and_drops_unsafe_headers() {
        let mut out = Vec::new();
        let headers = [
            ("Allow", "GET".to_string()),
            ("X-Bad", "a\r\nInjected: 1".to_string()),
            ("Content-Length", "7".to_string()),
        ];
        write_head(
            &mut out,
            405,
            "application/json",
            &headers,
            BodyLength::Fixed(2),
            true,
            "D",
        );
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 405 Method Not Allowed\r\nServer: mec-plugin\r\nDate: D\r\n\
             Content-Type: application/json\r\nAllow: GET\r\nContent-Length: 2\r\n\
             Connection: close\r\n\r\n"
        );
    }

    #[test]
    fn the_request_line_of_a_refused_head_is_read_as_far_as_it_goes() {
        let line = |b: &[u8]| request_line(b);
        assert_eq!(
            line(b"HEAD /a?b HTTP/1.1\r\nHost: a"),
            ("HEAD".into(), "/a?b".into())
        );
        assert_eq!(line(b"GET /aaaa"), ("GET".into(), "/aaaa".into()));
        assert_eq!(line(b"G\x01T / HTTP/1.1"), ("-".into(), "/".into()));
        assert_eq!(line(b"\xff"), ("-".into(), "-".into()));
    }

    #[test]
    fn the_request_line_of_a_head_cut_short_is_read_only_as_far_as_its_words_ended() {
        let line = |b: &[u8]| partial_request_line(b);
        let dash = || ("-".to_string(), "-".to_string());
        assert_eq!(line(b""), dash());
        assert_eq!(line(b"GE"), dash());
        assert_eq!(line(b"GET"), dash());
        assert_eq!(line(b"GET "), ("GET".into(), "-".into()));
        assert_eq!(line(b"GET /heal"), ("GET".into(), "-".into()));
        assert_eq!(line(b"GET /healthz "), ("GET".into(), "/healthz".into()));
        assert_eq!(
            line(b"GET /healthz HTTP/1."),
            ("GET".into(), "/healthz".into())
        );
        assert_eq!(
            line(b"HEAD /a HTTP/1.1\r\nHost: x\r\nX-A"),
            ("HEAD".into(), "/a".into())
        );
    }

    #[test]
    fn log_targets_are_cut_at_256_bytes_on_a_character_boundary() {
        assert_eq!(log_target("/short"), "/short");
        let long = format!("/{}", "é".repeat(300));
        let cut = log_target(&long);
        assert!(
            cut.len() <= 256 + 8 + 3 && cut.ends_with("..."),
            "{}",
            cut.len()
        );
        assert!(cut.starts_with("/\\u{e9}\\u{e9}"), "{cut}");
        assert_eq!(log_target(&"a".repeat(256)).len(), 256);
    }

    /// Found by an audit: a 16,000-byte method made a 16 kB log line, and C1 controls and bidi
    /// overrides in a target were written to the log raw (terminal-escape injection).
    #[test]
    fn logged_methods_are_cut_at_32_bytes_and_controls_escaped() {
        assert_eq!(log_method("GET"), "GET");
        let long = "M".repeat(16_000);
        assert_eq!(log_method(&long), format!("{}...", "M".repeat(32)));
        assert_eq!(log_target("/a\u{9b}31m\u{202e}b"), "/a\\u{9b}31m\\u{202e}b");
        assert_eq!(log_target("/a\x1b[2J\x7f b"), "/a\\u{1b}[2J\\u{7f}\\u{20}b");
    }

    #[test]
    fn an_oversized_request_line_is_414_only_when_its_target_does_not_fit() {
        assert_eq!(oversized_head(b"GET /aaaaaaaa"), HeadError::UriTooLong);
        assert!(matches!(
            oversized_head(b"MMMMMMMMMMMMM"),
            HeadError::Bad(_)
        ));
        assert!(matches!(
            oversized_head(b"GET / HTTP/1.1xxxxxxxxxxx"),
            HeadError::Bad(_)
        ));
    }
}
