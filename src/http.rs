//! Plain HTTP request and response values passed between the [`server`](crate::server) (which
//! does the I/O) and the [`api`](crate::api) (which decides what to answer). No sockets here,
//! so routing and handlers are testable as pure functions.

use std::fmt;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

/// A request as the API sees it: method, target, the headers it cares about, and the body,
/// already read in full under the configured size and time bounds.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Upper-case method name as sent (`GET`, `POST`, ...).
    pub method: String,
    /// Request target as sent: path plus optional `?query` (origin form), or the same after
    /// `scheme://authority` (absolute form, e.g. from a proxy).
    pub target: String,
    /// `Content-Type` header value, if any.
    pub content_type: Option<String>,
    /// `Authorization` header value, if any.
    pub authorization: Option<String>,
    /// The request carries [`FORWARDED`]: another instance forwarded it to this one (an etcd
    /// store's follower to its leader), which must not forward it again.
    pub forwarded: bool,
    /// The request body.
    pub body: Vec<u8>,
}

impl Request {
    /// A request with no body (for tests and internal callers).
    pub fn new(method: &str, target: &str) -> Self {
        Request {
            method: method.to_string(),
            target: target.to_string(),
            ..Request::default()
        }
    }

    /// A request with a JSON body.
    pub fn json(method: &str, target: &str, body: impl Into<Vec<u8>>) -> Self {
        Request {
            content_type: Some("application/json".to_string()),
            body: body.into(),
            ..Request::new(method, target)
        }
    }

    /// The path part of the target, without the query string. An absolute-form target
    /// (`http://host:port/path?query`, which RFC 9112 §3.2.2 says servers must accept) loses its
    /// `scheme://authority`; its path is `/` when it has none. Routing only ever sees this.
    pub fn path(&self) -> &str {
        let path = self.target.split('?').next().unwrap_or("");
        match absolute_form_rest(path) {
            Some(rest) => match rest.find('/') {
                Some(slash) => &rest[slash..],
                None => "/",
            },
            None => path,
        }
    }

    /// The query string (after `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }
}

/// What follows `scheme://` when `target` is in absolute form (a target in origin form starts
/// with `/`, and a scheme is a letter followed by letters, digits, `+`, `-` or `.`).
fn absolute_form_rest(target: &str) -> Option<&str> {
    let (scheme, rest) = target.split_once("://")?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    valid.then_some(rest)
}

/// A response to be written by the server.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    /// Extra headers (e.g. `Allow`, `WWW-Authenticate`).
    pub headers: Vec<(&'static str, String)>,
    /// The body, when it is known in full (sent with `Content-Length`).
    pub body: Vec<u8>,
    /// A body written piece by piece instead (then `body` is ignored): sent with
    /// `Transfer-Encoding: chunked` to HTTP/1.1 clients, delimited by the end of the
    /// connection for HTTP/1.0 ones, and not produced at all for `HEAD`.
    pub stream: Option<BodyStream>,
}

/// What writes a pushed body ([`Response::stream`]): called once, on the request worker, with
/// a writer that forwards each piece to the connection. The writer blocks while the client is
/// slow to read and fails once the client read nothing for `read_timeout` or went away; the
/// function should then return that error (the connection is closed, so the client sees an
/// incomplete body). For bodies that must wait on something else than the client (a peer's
/// answer relayed as it comes); a body made from memory is a [`BodySource`] instead.
pub type StreamFn = Box<dyn FnOnce(&mut dyn Write) -> io::Result<()> + Send>;

/// A pulled body ([`Response::pull`]): made piece by piece by the I/O loop itself, each time
/// the connection has sent the previous piece, so that no request worker waits on a slow
/// client. `fill` runs on a thread that serves many connections: it must be quick and never
/// block or take a lock a slow operation may hold (it formats what it already holds).
pub trait BodySource: Send {
    /// Appends the next part of the body to `out`, about `want` bytes (one item more at
    /// most); returns `Ok(false)` once the body is complete (with or without a last part). An
    /// error ends the body there, and the connection is closed.
    fn fill(&mut self, out: &mut Vec<u8>, want: usize) -> io::Result<bool>;
}

/// How a streamed body is made (see [`Response::stream`] and [`Response::pull`]).
pub enum StreamBody {
    Push(StreamFn),
    Pull(Box<dyn BodySource>),
}

impl StreamBody {
    /// Writes the whole body to `out` (what the tests and in-process callers need).
    pub fn write_to(self, out: &mut dyn Write) -> io::Result<()> {
        match self {
            StreamBody::Push(write) => write(out),
            StreamBody::Pull(mut source) => {
                let mut piece = Vec::new();
                loop {
                    piece.clear();
                    let more = source.fill(&mut piece, 16 * 1024)?;
                    out.write_all(&piece)?;
                    if !more {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// A streamed body (see [`Response::stream`]); taken by the server when it writes it.
#[derive(Clone)]
pub struct BodyStream(Arc<Mutex<Option<StreamBody>>>);

impl BodyStream {
    /// The body, once (`None` if it was already taken).
    pub fn take(&self) -> Option<StreamBody> {
        crate::util::lock(&self.0).take()
    }

    /// Whether the body is pulled by the I/O loop (`false` once taken).
    pub fn is_pulled(&self) -> bool {
        matches!(*crate::util::lock(&self.0), Some(StreamBody::Pull(_)))
    }
}

impl fmt::Debug for BodyStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BodyStream")
    }
}

impl PartialEq for BodyStream {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// The header a follower adds to the changes it forwards to its leader.
pub const FORWARDED: &str = "X-Mec-Plugin-Forwarded";

/// Media type of successful JSON bodies.
pub const JSON: &str = "application/json";
/// Media type of RFC 7807 error bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";

impl Response {
    /// A JSON response with the given status and already serialised body.
    pub fn json(status: u16, body: Vec<u8>) -> Self {
        Response {
            status,
            content_type: JSON,
            headers: Vec::new(),
            body,
            stream: None,
        }
    }

    /// A response whose body `write` pushes piece by piece from the request worker (see
    /// [`StreamFn`]): a peer's answer relayed as it comes.
    pub fn stream(
        status: u16,
        content_type: &'static str,
        write: impl FnOnce(&mut dyn Write) -> io::Result<()> + Send + 'static,
    ) -> Self {
        Self::streamed(status, content_type, StreamBody::Push(Box::new(write)))
    }

    /// A response whose body the I/O loop pulls from `source` as the client reads (see
    /// [`BodySource`]), e.g. a long listing written record by record without holding it all
    /// in memory and without a worker waiting on the client.
    pub fn pull(
        status: u16,
        content_type: &'static str,
        source: impl BodySource + 'static,
    ) -> Self {
        Self::streamed(status, content_type, StreamBody::Pull(Box::new(source)))
    }

    fn streamed(status: u16, content_type: &'static str, body: StreamBody) -> Self {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: Vec::new(),
            stream: Some(BodyStream(Arc::new(Mutex::new(Some(body))))),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The value of a header set on this response, if any (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_and_query_are_split_at_the_first_question_mark() {
        let r = Request::new("GET", "/MEC/v1/service/regions?latitude=1&x=?");
        assert_eq!(r.path(), "/MEC/v1/service/regions");
        assert_eq!(r.query(), Some("latitude=1&x=?"));
        assert_eq!(Request::new("GET", "/a").query(), None);
    }

    #[test]
    fn an_absolute_form_target_is_routed_by_its_path_and_keeps_its_query() {
        let r = Request::new(
            "GET",
            "http://127.0.0.1:8082/MEC/v1/service/regions?latitude=1&longitude=2",
        );
        assert_eq!(r.path(), "/MEC/v1/service/regions");
        assert_eq!(r.query(), Some("latitude=1&longitude=2"));
        assert_eq!(
            Request::new("GET", "HTTPS://user@[::1]:443/healthz").path(),
            "/healthz"
        );
        assert_eq!(Request::new("GET", "http://host").path(), "/");
        assert_eq!(Request::new("GET", "http://host?x=1").path(), "/");
        assert_eq!(Request::new("GET", "http://host?x=1").query(), Some("x=1"));
        // Origin form is left alone, even with "://" further on.
        assert_eq!(Request::new("GET", "/a/http://b/c").path(), "/a/http://b/c");
        assert_eq!(Request::new("GET", "/a?u=http://b/c").path(), "/a");
        assert_eq!(Request::new("GET", "1x://host/p").path(), "1x://host/p");
    }
}
