//! Raw-socket helpers for the robustness tests: a small echo handler, hand-written HTTP/1.1 over
//! `std::net::TcpStream`, and a response reader. Every socket gets client-side timeouts, so a
//! test can fail but never hang. Included with `#[path = "support/raw.rs"] mod raw;`.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use mec_plugin::http::{Request, Response};
use mec_plugin::model::ApiStyle;
use mec_plugin::server::{Handler, Options, Server};

/// Upper bound on any single client read or write in these tests.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The body limit of [`options`].
pub const MAX_BODY: usize = 4096;

/// Options on an ephemeral loopback port with a small body limit and few connection threads.
pub fn options(read_timeout_ms: u64, workers: usize) -> Options {
    Options {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers,
        read_timeout: Duration::from_millis(read_timeout_ms),
        // Idle keep-alive connections are closed as soon as stalled ones here.
        idle_timeout: Duration::from_millis(read_timeout_ms),
        max_body_bytes: MAX_BODY,
        api_style: ApiStyle::Spec,
        tls: None,
        ..Options::default()
    }
}

/// Answers `{"method", "path", "bodyLength"}`; `/slow?ms=N` sleeps N ms first; `/panic` panics.
pub fn echo_handler() -> Handler {
    Arc::new(|r: &Request| {
        if r.path() == "/panic" {
            panic!("handler panic requested by the test");
        }
        if r.path() == "/slow" {
            let ms = r
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            thread::sleep(Duration::from_millis(ms));
        }
        let body = format!(
            r#"{{"method":"{}","path":"{}","bodyLength":{}}}"#,
            r.method,
            r.path(),
            r.body.len()
        );
        Response::json(200, body.into_bytes())
    })
}

/// Starts a server with [`echo_handler`].
pub fn start(options: Options) -> Server {
    Server::start(options, echo_handler()).expect("the server starts")
}

/// A connection with client-side read and write timeouts of [`CLIENT_TIMEOUT`].
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    stream
}

/// The text of a GET; `close` adds `Connection: close`.
pub fn get_text(path: &str, close: bool) -> String {
    let connection = if close { "Connection: close\r\n" } else { "" };
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n{connection}\r\n")
}

/// The head of a JSON POST declaring `content_length`, without its body.
pub fn post_head(path: &str, content_length: u64) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n"
    )
}

/// A response as read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    /// The protocol of the status line (`HTTP/1.1`).
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn read_line<R: BufRead>(r: &mut R) -> io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Reads one final response (skipping `100 Continue`), with a `Content-Length` or chunked body.
pub fn read_response<R: BufRead>(r: &mut R) -> io::Result<RawResponse> {
    read_response_to(r, false)
}

/// Reads one final response to a `HEAD` request: its head only (no body follows it).
pub fn read_head_response<R: BufRead>(r: &mut R) -> io::Result<RawResponse> {
    read_response_to(r, true)
}

/// Reads every response in `bytes` (all of what a connection sent until it closed); an error
/// names what is not a well-formed response. `head_only`: the first is the answer to a HEAD.
pub fn responses_in(bytes: &[u8], head_only: bool) -> io::Result<Vec<RawResponse>> {
    let mut cursor = io::Cursor::new(bytes);
    let mut responses = Vec::new();
    while (cursor.position() as usize) < bytes.len() {
        let first = responses.is_empty();
        responses.push(read_response_to(&mut cursor, head_only && first)?);
    }
    Ok(responses)
}

/// Reads everything the peer sends until it closes (end-of-file or reset) or `limit` passes;
/// the bytes, and whether it closed.
pub fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let started = Instant::now();
    let mut all = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while started.elapsed() < limit {
        let left = limit
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return (all, true),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return (all, true),
        }
    }
    (all, false)
}

fn read_response_to<R: BufRead>(r: &mut R, head_only: bool) -> io::Result<RawResponse> {
    loop {
        let status_line = read_line(r)?;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let line = read_line(r)?;
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| invalid(format!("bad header {line:?}")))?;
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        if status == 100 {
            continue;
        }
        let mut response = RawResponse {
            version: status_line.split(' ').next().unwrap_or("").to_string(),
            status,
            headers,
            body: Vec::new(),
        };
        if head_only {
            return Ok(response);
        }
        if let Some(length) = response.header("Content-Length") {
            let length: usize = length
                .parse()
                .map_err(|_| invalid(format!("bad length {length}")))?;
            response.body = vec![0; length];
            r.read_exact(&mut response.body)?;
        } else if response
            .header("Transfer-Encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let size_line = read_line(r)?;
                let size =
                    usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| invalid(format!("bad chunk size {size_line:?}")))?;
                let mut chunk = vec![0; size];
                r.read_exact(&mut chunk)?;
                read_line(r)?;
                if size == 0 {
                    break;
                }
                response.body.extend_from_slice(&chunk);
            }
        }
        return Ok(response);
    }
}

/// Reads one response; its status and its body as text.
pub fn read_status_and_text<R: BufRead>(r: &mut R) -> io::Result<(u16, String)> {
    read_response(r).map(|response| {
        let text = String::from_utf8_lossy(&response.body).into_owned();
        (response.status, text)
    })
}

/// Sends `text` on a new connection and reads one response.
pub fn exchange(addr: SocketAddr, text: &str) -> io::Result<RawResponse> {
    let mut stream = connect(addr);
    stream.write_all(text.as_bytes())?;
    read_response(&mut BufReader::new(&stream))
}

/// A GET on a new connection that must be answered within `limit` (the client gives up then).
pub fn get_within(addr: SocketAddr, path: &str, limit: Duration) -> RawResponse {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, limit).expect("connect");
    stream.set_read_timeout(Some(limit)).unwrap();
    stream.set_write_timeout(Some(limit)).unwrap();
    stream
        .write_all(get_text(path, true).as_bytes())
        .expect("send");
    let response = read_response(&mut BufReader::new(&stream))
        .unwrap_or_else(|e| panic!("GET {path} not answered within {limit:?}: {e}"));
    let took = started.elapsed();
    assert!(
        took <= limit,
        "GET {path} took {took:?}, more than {limit:?}"
    );
    response
}

/// Reads until the server closes the connection (end-of-file or reset), discarding data;
/// returns how long that took, or `None` if it was still open after `limit`.
pub fn time_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    while started.elapsed() < limit {
        stream
            .set_read_timeout(Some(
                limit
                    .saturating_sub(started.elapsed())
                    .max(Duration::from_millis(1)),
            ))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(started.elapsed()), // reset
        }
    }
    None
}
