//! The HTTP/1.1 front end: readiness loops that own the connections (reading heads and
//! bodies, writing responses, driving TLS), a fixed pool of blocking request workers that only
//! ever see complete requests, and every defence against slow, hostile or broken clients.
//!
//! # Design
//!
//! **A few loops, many workers.** One `http-io-N` thread per core (at most [`MAX_IO_LOOPS`])
//! waits on `mio` (epoll) for its connections, non-blocking; loop 0 also accepts, and hands the
//! new connections to the loops in turn. A loop parses request heads with `httparse` (see
//! [`crate::http1`]), decides the body framing, reads the body, and only then queues the
//! complete [`Request`] for the `workers` request threads, which call the blocking
//! [`RequestHandler`] and hand the response back to the connection's loop to write. A client
//! that trickles, stalls or never finishes therefore costs a buffer in a loop, never a worker;
//! a thousand idle connections cost a thousand small buffers and no thread.
//!
//! **Answers that cannot block** are made on the loop itself: a complete request goes first to
//! [`RequestHandler::handle_inline`], and only the requests it declines go to a worker. That
//! saves the two thread wake-ups of the hop (worker, then loop) on the cheapest routes (the
//! API answers its regions and its OpenAPI document there); everything else (the records
//! lock, the disk, the platforms) stays on the workers. A loop answers one request per
//! connection per turn, so that a client quick to send its next request does not keep the
//! loop from the others.
//!
//! **Bounds.** A head (request line and header fields) is at most `max_head_bytes`
//! (431, or 414 when the request line alone does not fit) with at most `max_headers` fields
//! (431), and must arrive within `read_timeout` in total (408); a body is at most
//! `max_body_bytes` (413) and must arrive within `read_timeout` in total after its head (408).
//! A connection's memory is therefore bounded by these limits whatever the client sends, and
//! all bodies together by `max_body_memory_bytes` ([`BodyMemory`]; 503 past it). The
//! framing follows RFC 9112 §6: `Content-Length` must be digits, repeated values must agree;
//! `Transfer-Encoding` must be exactly `chunked`, never with `Content-Length`, never in
//! HTTP/1.0; otherwise 400. A chunked body is decoded here, its size lines and trailers
//! bounded by the head limits.
//!
//! **Before the body.** [`RequestHandler::admit`] sees the head before any body byte is read
//! (the API checks the bearer token there): a refusal is answered at once and, when a body was
//! announced, the connection is closed with the body unread. Likewise a declared length over
//! the limit gets its 413 unread. `Expect: 100-continue` gets its `100 Continue` only after
//! these checks; any other expectation gets 417.
//!
//! **Answers and connections.** Responses go out in request order: a connection reads its next
//! request only once the previous one is answered, so pipelined requests queue in the socket
//! and are answered in order. `HEAD` gets the headers of the `GET` answer without its body.
//! A connection is closed after a response when the client asked for it (`Connection: close`,
//! HTTP/1.0 without keep-alive), when the request's body was not read in full (refusals), and
//! during shutdown; the response then says `Connection: close`. A close shuts the sending side
//! and discards what the client still sends for up to `read_timeout` (a lingering close), so
//! that the kernel does not reset the connection under a response the client has not yet read.
//! A keep-alive connection with no request in progress is closed silently, writing nothing,
//! after `idle_timeout` (and a new connection that sends nothing within `read_timeout`); one
//! whose client reads nothing of a pending response for `read_timeout` is cut.
//!
//! **Our own answers.** Every refusal the front end writes itself (400, 408, 413, 414, 417,
//! 431, 503, 505, a handler panic's 500) is problem+json built by [`crate::error`], carries
//! `Server: mec-plugin` like every response, is logged once (the target cut at 256 bytes) and
//! is reported once to [`RequestHandler::answered`] (the API's metrics), exactly like handled
//! requests.
//!
//! **Connections.** At most `max_connections` are served; one more gets 503 problem+json with
//! `Retry-After: 1` and is closed (up to [`OVERFLOW_SLOTS`] such refusals in progress at once,
//! each with [`OVERFLOW_WAIT`] for its TLS handshake and its 503, then as long again to linger;
//! past that, new connections are closed at once, counted in
//! [`RequestHandler::dropped`] and logged once a second at most). The accept loop survives descriptor
//! exhaustion (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) by pausing accepts with a back-off
//! (100 ms doubling to 1 s) while the open connections are still served. The listen backlog is
//! raised to [`LISTEN_BACKLOG`] (capped by `net.core.somaxconn`).
//!
//! **Streamed bodies.** A [`Response::pull`] body (a listing) is made by the I/O loop itself,
//! a piece of [`PIPE_PIECE`] bytes each time the connection sent the last one, so no worker
//! waits on a client slow to read it; a client that reads nothing for `read_timeout` is cut. A
//! [`Response::stream`] body (a peer's answer relayed as it comes) is produced on the worker
//! through a bounded pipe ([`PIPE_BYTES`] in flight): the worker blocks while the client is
//! slow and its writer fails once the client read nothing for `read_timeout` or went away, so
//! such a stream holds its worker for at most that long past the client's last read.
//!
//! **TLS.** With [`Options::tls`] the listener speaks HTTPS only: each connection carries a
//! rustls server connection (ring provider) driven by the same loop, so a handshake costs no
//! thread, must complete within `read_timeout` in total, and the head and body bounds apply
//! unchanged after it. A bad chain or key is an error naming `tls_cert` or `tls_key` at start.
//!
//! **Shutdown.** Stops accepting and shuts the listening socket (new connections are refused at
//! once), closes idle connections, answers 503 (`Retry-After`, `Connection: close`) a request
//! half received (not executed), lets the workers finish the requests they have and the ones
//! queued (bounded by the grace period; their responses say `Connection: close`), answers 503
//! the requests still queued when the grace period ends (not executed either), then closes
//! everything.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::config::{ServerConfig, TlsFiles};
use crate::error::ApiError;
use crate::http::{BodySource, Request, Response, StreamBody, StreamFn};
use crate::http1::{self, BodyLength, ChunkedDecoder, Framing, Head, HeadError, Limits};
use crate::model::ApiStyle;
use crate::util::{lock, wait};

/// Most I/O loops (threads) a server runs, whatever the number of cores.
pub const MAX_IO_LOOPS: usize = 4;
/// Connections the kernel queues for the accept loop.
pub const LISTEN_BACKLOG: libc::c_int = 1024;
/// Connections past `max_connections` being answered 503 at once (their TLS handshake or the
/// write of the 503 under way); more are closed unanswered, counted and logged.
pub const OVERFLOW_SLOTS: usize = 64;
/// Connections past `max_connections` lingering after their 503 at once; past that, one is
/// closed as soon as its 503 is written.
pub const OVERFLOW_LINGERING: usize = 256;
/// Bound (capped by `read_timeout`) on each stage of a refusal past `max_connections`: its TLS
/// handshake and the write of its 503, then its lingering close. Short, so that clients that
/// neither read nor close cannot keep the refusals' places for long.
const OVERFLOW_WAIT: Duration = Duration::from_secs(1);
/// Least time between two log lines about connections closed unanswered.
const DROPS_LOGGED_EVERY: Duration = Duration::from_secs(1);
/// Bytes of a streamed body waiting in its pipe before the worker writing it blocks.
pub const PIPE_BYTES: usize = 64 * 1024;
/// Size of one streamed piece (a chunk of the chunked coding).
const PIPE_PIECE: usize = 16 * 1024;
/// First pause after an accept failure; doubled up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(100);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Smallest time bound we use.
const MIN_TIMEOUT: Duration = Duration::from_millis(10);
/// Size of one socket read.
const READ_CHUNK: usize = 16 * 1024;
/// Most bytes a lingering close discards before it closes anyway.
const LINGER_BYTES: usize = 1 << 20;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;

/// How the server listens and bounds its clients.
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    /// Request-handling threads (at least 1).
    pub workers: usize,
    /// Accepted and ignored: connections no longer have threads (see README).
    pub connection_threads: usize,
    /// Bound on receiving a whole request head, then a whole body; on a TLS handshake; on a
    /// client reading nothing of its response; on a new connection sending nothing.
    pub read_timeout: Duration,
    /// An idle keep-alive connection is closed (silently) after this.
    pub idle_timeout: Duration,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Most memory all request bodies take at once (see [`BodyMemory`]).
    pub max_body_memory_bytes: usize,
    /// Largest request head (request line and header fields).
    pub max_head_bytes: usize,
    /// Most header fields in a request head.
    pub max_headers: usize,
    /// Most connections served at once.
    pub max_connections: usize,
    /// Most request log lines a second for answers below 500 (see [`LogBudget`]); 0: none.
    pub log_requests_per_s: usize,
    /// Spelling of the problem responses this module builds.
    pub api_style: ApiStyle,
    /// Certificate chain and its rustls configuration (checked when the configuration was
    /// loaded): when set, the listener speaks HTTPS only.
    pub tls: Option<TlsFiles>,
}

impl Default for Options {
    fn default() -> Self {
        Options::from_config(&ServerConfig::default())
    }
}

impl Options {
    /// The options of the `[server]` section.
    pub fn from_config(c: &ServerConfig) -> Options {
        Options {
            listen: c.listen,
            workers: c.workers,
            connection_threads: c.connection_threads,
            read_timeout: c.read_timeout,
            idle_timeout: c.idle_timeout,
            max_body_bytes: c.max_body_bytes,
            max_body_memory_bytes: c.max_body_memory_bytes,
            max_head_bytes: c.max_head_bytes,
            max_headers: c.max_headers,
            max_connections: c.max_connections,
            log_requests_per_s: c.log_requests_per_s,
            api_style: c.api_style,
            tls: c.tls.clone(),
        }
    }
}

/// What answers requests: a pure function of the request (the body already read), told of every
/// request the server answers. A closure `Fn(&Request) -> Response` is one that ignores the
/// news and admits every head.
pub trait RequestHandler: Send + Sync {
    /// The response to a request whose body was read in full.
    fn handle(&self, request: &Request) -> Response;

    /// Called on the head alone (`request.body` empty), before any body byte is read: a
    /// response refuses the request without reading its body (the connection is then closed
    /// if a body was announced). Runs on the I/O thread, so it must be quick and never block.
    fn admit(&self, head: &Request) -> Option<Response> {
        let _ = head;
        None
    }

    /// Called on a complete request on the I/O thread, before it would go to a worker:
    /// `Some(response)` answers it there, which saves the hop to a worker and back (two
    /// thread wake-ups per request). Only for answers that take no lock a slow operation may
    /// hold and do no I/O: this runs on a thread that serves many connections. `None` (the
    /// default) hands the request to a worker, which calls [`handle`](Self::handle). A
    /// streamed response returned here is written by a worker.
    fn handle_inline(&self, request: &Request) -> Option<Response> {
        let _ = request;
        None
    }

    /// Whether answering `request` may wait long on a peer (a platform): such requests are
    /// run by at most `workers` of the [`worker_threads`] at once, so that one stays free for
    /// the rest (reads, `/healthz`, `/metrics`) while a peer hangs. Runs on the I/O thread, on a
    /// complete request: it must be quick.
    fn is_slow(&self, request: &Request) -> bool {
        let _ = request;
        false
    }

    /// Called for every connection past `max_connections` closed without its 503: the
    /// [`OVERFLOW_SLOTS`] refusals were all in progress, or its TLS handshake did not complete
    /// within the refusal's bound (its 503 was then reported to [`answered`](Self::answered)
    /// already, but never sent).
    fn dropped(&self) {}

    /// Where the server keeps the bytes the request bodies hold ([`BodyMemory`]), for the
    /// handler to show (the API's `mec_plugin_http_body_bytes`); read once, at start. `None`
    /// (the default): the server keeps its own.
    fn body_bytes(&self) -> Option<Arc<AtomicUsize>> {
        None
    }

    /// Called exactly once for every request answered, just before its response is written:
    /// those [`handle`](Self::handle) answered and those the server answered itself (refusals,
    /// whose `request.body` is then empty and whose method and target are `-` when the head
    /// could not be read; a panic of `handle`, answered 500). `took` runs from the request
    /// head to the response being ready.
    fn answered(&self, request: &Request, status: u16, took: Duration) {
        let _ = (request, status, took);
    }
}

impl<F> RequestHandler for F
where
    F: Fn(&Request) -> Response + Send + Sync,
{
    fn handle(&self, request: &Request) -> Response {
        self(request)
    }
}

/// The handler a [`Server`] shares between its workers.
pub type Handler = Arc<dyn RequestHandler>;

/// After the grace period, how long the I/O loops are given to write the 503s of the requests
/// that were still queued for a worker ([`Shared::refuse_queued`]) before every connection is
/// closed.
const REFUSALS_WRITTEN_WITHIN: Duration = Duration::from_millis(200);

/// A running server; see the module docs. Dropping it stops it with no grace period.
pub struct Server {
    shared: Arc<Shared>,
    /// A duplicate of the listening socket, shut by `stop` so that new connections are refused
    /// at once.
    listener: Option<TcpListener>,
    shutdown: ShutdownHandle,
    threads: Vec<JoinHandle<()>>,
    workers: usize,
    tls: bool,
}

/// Asks a [`Server`] to shut down: makes [`Server::wait`] return. Cheap to clone and send.
#[derive(Clone)]
pub struct ShutdownHandle {
    requested: Arc<Signal>,
}

impl ShutdownHandle {
    /// Requests the shutdown; idempotent.
    pub fn trigger(&self) {
        self.requested.set();
    }

    /// Whether the shutdown was requested.
    pub fn is_triggered(&self) -> bool {
        self.requested.is_set()
    }
}

impl fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownHandle")
            .field("triggered", &self.is_triggered())
            .finish()
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.shared.local_addr)
            .field("workers", &self.workers)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// What the I/O loops and the workers share.
struct Shared {
    handler: Handler,
    api_style: ApiStyle,
    limits: Limits,
    read_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
    local_addr: SocketAddr,
    /// Complete requests waiting for a worker.
    jobs: Mutex<Jobs>,
    job_ready: Condvar,
    /// Most workers running slow requests ([`RequestHandler::is_slow`]) at once: `workers`, of
    /// [`worker_threads`].
    slow_workers: usize,
    /// The I/O loops' mailboxes, by loop number.
    loops: Vec<Mailbox>,
    /// Connections served (by all the loops; the 503 refusals past the limit not counted).
    open: AtomicUsize,
    /// Set once by `stop`: the loops stop accepting and queue no new request.
    stopping: AtomicBool,
    /// I/O loops that may still queue requests (their shutdown has not begun and they did not
    /// end). Not `stopping`, which a loop sees only at its next turn: a head it read meanwhile
    /// is still queued, and needs a worker.
    queueing: AtomicUsize,
    /// Set once `queueing` reached zero: workers leave when the queue is empty.
    jobs_closed: AtomicBool,
    /// Set by `stop` when the grace period is over: the loops close everything and end.
    abort: AtomicBool,
    /// Threads of this server still running (I/O loops and workers).
    running: Counter,
    /// Bounds the request log lines.
    log_budget: LogBudget,
    /// Bounds the memory of the request bodies.
    bodies: Arc<BodyMemory>,
}

impl Shared {
    fn new(
        options: &Options,
        handler: Handler,
        local_addr: SocketAddr,
        loops: Vec<Mailbox>,
    ) -> Self {
        let held = handler.body_bytes().unwrap_or_default();
        Shared {
            handler,
            api_style: options.api_style,
            limits: Limits {
                max_head_bytes: options.max_head_bytes.max(256),
                max_headers: options.max_headers.max(1),
                max_body_bytes: options.max_body_bytes,
            },
            read_timeout: options.read_timeout.max(MIN_TIMEOUT),
            idle_timeout: options.idle_timeout.max(MIN_TIMEOUT),
            max_connections: options.max_connections.max(1),
            local_addr,
            jobs: Mutex::new(Jobs::default()),
            job_ready: Condvar::new(),
            slow_workers: options.workers.max(1),
            queueing: AtomicUsize::new(loops.len()),
            loops,
            open: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            jobs_closed: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            running: Counter::default(),
            log_budget: LogBudget::new(options.log_requests_per_s),
            bodies: Arc::new(BodyMemory {
                max: options.max_body_memory_bytes.max(options.max_body_bytes),
                held,
            }),
        }
    }
}

/// How many I/O loops serve the connections: one per core (as nginx's `worker_processes
/// auto`), at most [`MAX_IO_LOOPS`].
fn io_loops() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get().min(MAX_IO_LOOPS))
}

/// How the workers, the pipes and the other loops reach one I/O loop.
struct Mailbox {
    /// News for the loop; the first since the loop last took them is followed by a wake-up.
    news: Mutex<Vec<News>>,
    waker: Waker,
}

impl Shared {
    /// Hands `news` to I/O loop `io`.
    fn tell(&self, io: usize, news: News) {
        let mailbox = &self.loops[io];
        let mut queue = lock(&mailbox.news);
        queue.push(news);
        // Only the first news since the loop last took them wakes it: that wake-up is still
        // pending for the rest, and the loop takes them all at once (one write to the waker
        // and one turn of the loop for a batch of answers).
        let first = queue.len() == 1;
        drop(queue);
        if !first {
            return;
        }
        if let Err(e) = mailbox.waker.wake() {
            log::error!("cannot wake the I/O loop: {e}");
        }
    }

    /// Wakes every I/O loop (to see `stopping` or `abort`).
    fn wake_all(&self) {
        for mailbox in &self.loops {
            let _ = mailbox.waker.wake();
        }
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// One more I/O loop queues no more requests; after the last, the workers leave once the
    /// queue is empty. Called once per loop.
    fn close_jobs(&self) {
        if self.queueing.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        self.jobs_closed.store(true, Ordering::Release);
        let _jobs = lock(&self.jobs);
        self.job_ready.notify_all();
    }

    /// The grace period is over: the requests still queued for a worker were never executed.
    /// Each is answered 503 "shutting down" (logged and counted) by its I/O loop, as a request
    /// caught half received is, instead of its connection closing without an answer. Returns
    /// how many.
    fn refuse_queued(&self) -> usize {
        let queued: Vec<Job> = lock(&self.jobs).queue.drain(..).collect();
        // Workers waiting for a slow request's turn leave now that the queue is empty.
        self.job_ready.notify_all();
        for job in &queued {
            let response = shutting_down().to_response(self.api_style);
            answered(self, &job.request, response.status, job.started);
            self.tell(
                job.io,
                News::Response {
                    token: job.token,
                    serial: job.serial,
                    out: render(&response, job.head_only, true),
                    body: None,
                    close: true,
                },
            );
        }
        queued.len()
    }
}

/// The threads a server runs for `workers` (`[server] workers`): one more, so that slow
/// requests ([`RequestHandler::is_slow`]), which run on at most `workers` of them at once,
/// always leave one for the others (quick: reads, `/healthz`, `/metrics`). A share of the
/// workers instead would cut the concurrency of the durable creations, whose `fsync`s are
/// shared by those at work together (a cap of 7 of 8 measured 0.89-0.91 of their
/// throughput at 8 connections).
pub fn worker_threads(workers: usize) -> usize {
    workers.max(1) + 1
}

/// The requests waiting for a worker, and how many slow ones are running.
#[derive(Default)]
struct Jobs {
    queue: VecDeque<Job>,
    slow_running: usize,
}

impl Jobs {
    /// The first request in the queue a worker may take now: a slow one only while fewer than
    /// `slow_workers` run.
    fn take(&mut self, slow_workers: usize) -> Option<Job> {
        let slow_allowed = self.slow_running < slow_workers;
        let index = self
            .queue
            .iter()
            .position(|job| slow_allowed || !job.slow)?;
        let job = self.queue.remove(index)?;
        if job.slow {
            self.slow_running += 1;
        }
        Some(job)
    }
}

/// A complete request for a worker.
struct Job {
    /// The I/O loop of the connection.
    io: usize,
    token: Token,
    serial: u64,
    request: Request,
    /// The memory of the request's body, given back once the handler returned.
    lease: Option<BodyLease>,
    /// `HEAD`: the response is written without its body.
    head_only: bool,
    /// HTTP/1.0: a streamed body is delimited by the end of the connection.
    http10: bool,
    close: bool,
    started: Instant,
    /// Already made by [`RequestHandler::handle_inline`] (a streamed one): only written here.
    response: Option<Response>,
    /// [`RequestHandler::is_slow`].
    slow: bool,
}

/// What the workers and pipes tell the I/O loop.
enum News {
    /// A response to write on connection `token` (if it still serves request `serial`).
    Response {
        token: Token,
        serial: u64,
        out: Vec<u8>,
        body: Option<Outgoing>,
        close: bool,
    },
    /// A streamed body has more to write, or ended.
    Piece { token: Token, serial: u64 },
    /// A connection accepted by another loop, for this one to serve (counted in
    /// [`Shared::open`] already).
    Adopt(TcpStream),
}

impl Server {
    /// Binds, starts the I/O loops and `workers` handler threads; returns once listening. With
    /// [`Options::tls`], it speaks HTTPS with the rustls configuration built (and its chain
    /// and key checked) when the configuration was loaded.
    pub fn start(options: Options, handler: Handler) -> io::Result<Server> {
        let workers = options.workers.max(1);
        let read_timeout = options.read_timeout.max(MIN_TIMEOUT);
        let tls_config = options.tls.as_ref().map(|tls| Arc::clone(&tls.server));
        let tls = tls_config.is_some();
        let listener = TcpListener::bind(options.listen)?;
        // Listening again on a listening socket only changes its backlog (Linux). Best effort.
        // SAFETY: the descriptor is an open socket; listen(2) takes no pointers.
        if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
            debug!("listen backlog not raised: {}", io::Error::last_os_error());
        }
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let kept = listener.try_clone()?;
        let polls = (0..io_loops())
            .map(|_| Poll::new())
            .collect::<io::Result<Vec<_>>>()?;
        let loops = polls
            .iter()
            .map(|poll| {
                let waker = Waker::new(poll.registry(), WAKER)?;
                let news = Mutex::new(Vec::new());
                Ok(Mailbox { news, waker })
            })
            .collect::<io::Result<Vec<_>>>()?;
        let shared = Arc::new(Shared::new(&options, handler, local_addr, loops));
        let mut server = Server {
            shared: Arc::clone(&shared),
            listener: Some(kept),
            shutdown: ShutdownHandle {
                requested: Arc::new(Signal::default()),
            },
            threads: Vec::with_capacity(io_loops() + worker_threads(workers)),
            workers,
            tls,
        };
        let mut listener = Some(mio::net::TcpListener::from_std(listener));
        for (io, poll) in polls.into_iter().enumerate() {
            let io_loop = IoLoop::new(
                Arc::clone(&shared),
                io,
                poll,
                listener.take(),
                tls_config.clone(),
            )?;
            // On an error below, dropping `server` stops whatever was started.
            server.spawn(format!("http-io-{io}"), move || io_loop.run())?;
        }
        for i in 0..worker_threads(workers) {
            server.spawn(format!("http-worker-{i}"), {
                let shared = Arc::clone(&shared);
                move || worker_loop(&shared)
            })?;
        }
        log::info!(
            "listening on {}://{local_addr} ({} I/O threads, {workers} workers and one more for \
             requests that call no platform, read timeout {} ms, idle timeout {} ms, head limit \
             {} bytes / {} fields, body limit {} bytes, {} connections)",
            server.scheme(),
            shared.loops.len(),
            read_timeout.as_millis(),
            shared.idle_timeout.as_millis(),
            shared.limits.max_head_bytes,
            shared.limits.max_headers,
            options.max_body_bytes,
            shared.max_connections,
        );
        Ok(server)
    }

    /// The real bound address (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// `"https"` when the server speaks TLS ([`Options::tls`]), else `"http"`.
    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// A handle that makes [`Server::wait`] return, usable from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Blocks until shutdown is requested from another thread via a [`ShutdownHandle`].
    pub fn wait(&self) {
        self.shutdown.requested.wait();
    }

    /// Stops accepting new connections, lets in-flight requests finish (bounded by `grace`),
    /// closes the remaining connections and joins the threads that ended.
    pub fn shutdown(mut self, grace: Duration) {
        self.stop(grace);
    }

    fn spawn(&mut self, name: String, body: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let running = RunningGuard::enter(Arc::clone(&self.shared));
        let handle = thread::Builder::new().name(name).spawn(move || {
            let _running = running;
            body();
        })?;
        self.threads.push(handle);
        Ok(())
    }

    fn stop(&mut self, grace: Duration) {
        let Some(listener) = self.listener.take() else {
            return; // already stopped
        };
        let deadline = Instant::now() + grace;
        self.shutdown.trigger();
        self.shared.stopping.store(true, Ordering::Release);
        // Refuse new connections right away: on Linux, shutting the read side of a listening
        // socket closes its queue (pending and new connections get a reset).
        // SAFETY: `listener` is an open socket owned here; shutdown(2) takes no pointers.
        unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RD) };
        drop(listener);
        {
            let _jobs = lock(&self.shared.jobs);
            self.shared.job_ready.notify_all();
        }
        self.shared.wake_all();
        let mut all_ended = self.shared.running.wait_zero_until(deadline);
        if !all_ended && self.shared.refuse_queued() > 0 {
            // Their loops write the refusals (or end, if nothing else keeps them).
            all_ended = self
                .shared
                .running
                .wait_zero_until(Instant::now() + REFUSALS_WRITTEN_WITHIN);
        }
        if !all_ended {
            // The grace period is over: the loop closes every connection and ends.
            self.shared.abort.store(true, Ordering::Release);
            self.shared.wake_all();
            all_ended = self
                .shared
                .running
                .wait_zero_until(Instant::now() + Duration::from_millis(100));
        }
        let mut detached = 0;
        for handle in self.threads.drain(..) {
            if all_ended || handle.is_finished() {
                let _ = handle.join();
            } else {
                detached += 1; // still inside a handler past the grace period
            }
        }
        let ours = self.shared.local_addr;
        if detached == 0 {
            log::info!("server on {ours} stopped");
        } else {
            log::warn!(
                "server on {ours} stopped after its {} ms grace period with {detached} threads \
                 still busy (left to finish on their own)",
                grace.as_millis()
            );
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

// ---------------------------------------------------------------------------------------------
// Workers

fn worker_loop(shared: &Arc<Shared>) {
    loop {
        let job = {
            let mut jobs = lock(&shared.jobs);
            loop {
                if let Some(job) = jobs.take(shared.slow_workers) {
                    break Some(job);
                }
                if shared.jobs_closed.load(Ordering::Acquire) && jobs.queue.is_empty() {
                    break None;
                }
                jobs = wait(&shared.job_ready, jobs);
            }
        };
        let Some(job) = job else { break };
        let (io, token, serial, slow) = (job.io, job.token, job.serial, job.slow);
        let served = panic::catch_unwind(AssertUnwindSafe(|| serve(shared, job)));
        if slow {
            let mut jobs = lock(&shared.jobs);
            let was_full = jobs.slow_running == shared.slow_workers;
            jobs.slow_running -= 1;
            // A slow request may be waiting for this place (only then: a wake-up for nothing
            // on every creation cost its share of their throughput).
            let waiting = was_full && jobs.queue.iter().any(|job| job.slow);
            drop(jobs);
            if waiting {
                shared.job_ready.notify_one();
            }
        }
        if served.is_err() {
            // E.g. `answered` panicked: the connection still gets an answer, and is closed.
            log::error!("request handling failed outside the handler");
            let out = render(&panic_response(shared.api_style), false, true);
            shared.tell(
                io,
                News::Response {
                    token,
                    serial,
                    out,
                    body: None,
                    close: true,
                },
            );
        }
    }
}

/// Calls the handler for one complete request and hands the response to the I/O loop; a
/// pushed body is then written through its pipe (a pulled one goes to the I/O loop with the
/// head, and the worker is free at once).
fn serve(shared: &Arc<Shared>, mut job: Job) {
    let mut response = match job.response.take() {
        Some(response) => response,
        None => call_handler(&shared.handler, &job.request, shared.api_style),
    };
    // The body is read: its memory goes back before the response is written (which may take
    // as long as the client reads slowly).
    job.request.body = Vec::new();
    job.lease = None;
    answered(shared, &job.request, response.status, job.started);
    let close = job.close || shared.stopping();
    let respond = |out, body, close| {
        shared.tell(
            job.io,
            News::Response {
                token: job.token,
                serial: job.serial,
                out,
                body,
                close,
            },
        )
    };
    let Some(streamed) = start_stream(&mut response, job.head_only, job.http10, close) else {
        respond(render(&response, job.head_only, close), None, close);
        return;
    };
    let Streamed {
        head,
        body,
        chunked,
        close,
    } = streamed;
    match body {
        None => respond(head, None, close),
        Some(StreamBody::Pull(source)) => respond(
            head,
            Some(Outgoing::pulled(source, chunked, &job.request)),
            close,
        ),
        Some(StreamBody::Push(write)) => {
            let pipe = Arc::new(Pipe::new(
                job.io,
                job.token,
                job.serial,
                shared.read_timeout,
            ));
            respond(head, Some(Outgoing::Pipe(Arc::clone(&pipe))), close);
            write_stream(shared, &pipe, write, chunked, &job);
        }
    }
}

/// A response with a streamed body, ready to go out.
struct Streamed {
    head: Vec<u8>,
    /// `None` for `HEAD`.
    body: Option<StreamBody>,
    /// Chunked (HTTP/1.1) rather than delimited by the end of the connection (HTTP/1.0).
    chunked: bool,
    /// Whether the connection closes after it.
    close: bool,
}

/// Takes the streamed body of `response` and writes its head; `None` for a body known in full.
fn start_stream(
    response: &mut Response,
    head_only: bool,
    http10: bool,
    close: bool,
) -> Option<Streamed> {
    let body = response.stream.take().and_then(|s| s.take())?;
    // HTTP/1.0 first: no Transfer-Encoding in a response to it, HEAD included (RFC 9112 §6.1).
    let length = if http10 {
        BodyLength::UntilClose
    } else {
        BodyLength::Chunked
    };
    let close = close || length == BodyLength::UntilClose;
    let mut head = Vec::with_capacity(256);
    http1::write_head(
        &mut head,
        response.status,
        response.content_type,
        &response.headers,
        length,
        close,
        &http_date(),
    );
    Some(Streamed {
        head,
        body: (!head_only).then_some(body),
        chunked: length == BodyLength::Chunked,
        close,
    })
}

fn write_stream(
    shared: &Arc<Shared>,
    pipe: &Arc<Pipe>,
    stream: StreamFn,
    chunked: bool,
    job: &Job,
) {
    let mut writer = PipeWriter {
        shared,
        pipe,
        buffer: Vec::with_capacity(PIPE_PIECE),
        chunked,
    };
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        stream(&mut writer).and_then(|()| writer.flush_piece(true))
    }));
    let ok = streamed(&stream_name(&job.request), result).is_some();
    pipe.finish(ok);
    shared.tell(
        pipe.io,
        News::Piece {
            token: pipe.token,
            serial: pipe.serial,
        },
    );
}

/// `METHOD target` of a streamed body's request, as its failure's log line names it.
fn stream_name(request: &Request) -> String {
    format!(
        "{} {}",
        http1::log_method(&request.method),
        http1::log_target(request.path())
    )
}

/// What making a streamed body gave (`None` when it failed or panicked, logged naming `what`):
/// the connection is then closed with the body cut short.
fn streamed<T>(what: &str, result: thread::Result<io::Result<T>>) -> Option<T> {
    match result {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) => {
            debug!("{what}: streamed body not delivered: {e}");
            None
        }
        Err(_) => {
            log::error!("streamed body of {what} panicked");
            None
        }
    }
}

/// One piece of a streamed body as it goes out: `data` as a chunk of the chunked coding (none
/// when empty), then the last chunk after the body's `last` piece; `data` itself otherwise.
fn framed(mut data: Vec<u8>, chunked: bool, last: bool) -> Vec<u8> {
    if !chunked {
        return data;
    }
    let mut piece = Vec::with_capacity(data.len() + 16);
    if !data.is_empty() {
        piece.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        piece.append(&mut data);
        piece.extend_from_slice(b"\r\n");
    }
    if last {
        piece.extend_from_slice(b"0\r\n\r\n");
    }
    piece
}

/// Logs one line for an answered request (within the [`LogBudget`]) and tells the handler
/// (which counts it in the metrics, every one). Before the response is written, so that a
/// client that has read it finds it counted.
fn answered(shared: &Shared, request: &Request, status: u16, started: Instant) {
    let now = Instant::now();
    let took = now.saturating_duration_since(started);
    if shared.log_budget.admit(status, now) {
        log::info!(
            "{} {} {} {} ms",
            http1::log_method(&request.method),
            http1::log_target(request.path()),
            status,
            took.as_millis()
        );
    }
    shared.handler.answered(request, status, took);
}

/// A [`LogBudget`] window's second and the lines asked for in it.
fn unpack(word: u64) -> (u64, u64) {
    (word >> 32, word & u64::from(u32::MAX))
}

/// Bounds the per-request log lines of answers below 500 to `per_s` a second (of the clock
/// since the start; a second's lines may come at once), the others counted by status class
/// and told in one summary line after that second. A client pipelining 404s wrote 100,000
/// lines in 5 s, and journald's default rate limit (10,000 messages per 30 s per service) then
/// dropped the error lines with them (found by an operator audit). A 5xx line, and any
/// warning or error, is never left out; every request is still counted in the metrics.
///
/// One atomic word (the second and the lines it had) for the whole server: a
/// compare-and-swap per request, where a log line costs a locked write to standard output.
struct LogBudget {
    per_s: u64,
    epoch: Instant,
    /// The current second since `epoch` (high 32 bits) and the lines asked for in it (low 32
    /// bits, saturating), left-out ones included: more than `per_s` means some were left out.
    window: std::sync::atomic::AtomicU64,
    /// Lines left out since the last summary, by class (1xx to 4xx).
    left_out: [std::sync::atomic::AtomicU64; 4],
}

impl LogBudget {
    fn new(per_s: usize) -> Self {
        LogBudget {
            per_s: per_s as u64,
            epoch: Instant::now(),
            window: std::sync::atomic::AtomicU64::new(0),
            left_out: Default::default(),
        }
    }

    /// Whether the line of an answer with `status` at `now` is to be written; writes the
    /// summary of the last second first when it left lines out.
    fn admit(&self, status: u16, now: Instant) -> bool {
        if status >= 500 {
            return true;
        }
        // Nothing to count when the lines would not be shown anyway.
        if self.per_s == 0 || log::max_level() < log::LevelFilter::Info {
            return false;
        }
        let second = self.second(now);
        // What the update that took effect (the closure's last run) saw and made.
        let (mut summary, mut n) = (false, 0);
        let _ = self
            .window
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                let (at, lines) = unpack(word);
                summary = second > at && lines > self.per_s;
                n = if second > at {
                    1
                } else {
                    (lines + 1).min(u64::from(u32::MAX))
                };
                Some((second.max(at) << 32) | n)
            });
        if summary {
            self.summarise();
        }
        if n <= self.per_s {
            return true;
        }
        if let Some(class) = self.left_out.get(usize::from(status / 100).wrapping_sub(1)) {
            class.fetch_add(1, Ordering::Relaxed);
        }
        false
    }

    /// When the summary of the last second is due (`None` when nothing was left out).
    fn summary_due(&self) -> Option<Instant> {
        let (at, n) = unpack(self.window.load(Ordering::Acquire));
        (n > self.per_s && self.per_s > 0).then(|| self.epoch + Duration::from_secs(at + 1))
    }

    /// Writes the summary if it is due (an I/O loop's turn after a flood that stopped).
    fn tick(&self, now: Instant) {
        let second = self.second(now);
        let word = self.window.load(Ordering::Acquire);
        let (at, n) = unpack(word);
        if second > at
            && n > self.per_s
            && self
                .window
                .compare_exchange(word, second << 32, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.summarise();
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    /// One line for the lines left out since the last one (none with `per_s` 0: the operator
    /// asked for no request lines, and the metrics count them all).
    fn summarise(&self) {
        let taken = self
            .left_out
            .each_ref()
            .map(|class| class.swap(0, Ordering::Relaxed));
        let total: u64 = taken.iter().sum();
        if total == 0 || self.per_s == 0 {
            return;
        }
        let mut classes = String::new();
        for (i, n) in taken.iter().enumerate().filter(|(_, n)| **n > 0) {
            let sep = if classes.is_empty() { "" } else { ", " };
            classes.push_str(&format!("{sep}{}xx: {n}", i + 1));
        }
        log::info!(
            "{total} request log lines left out over the last second ({classes}): at most {} \
             a second ([server] log_requests_per_s); every request is counted in /metrics",
            self.per_s
        );
    }
}

/// Calls the handler; a panic becomes a logged 500 problem response.
fn call_handler(handler: &Handler, request: &Request, style: ApiStyle) -> Response {
    unpanicked(request, || handler.handle(request)).unwrap_or_else(|()| panic_response(style))
}

/// Asks the handler to answer on the I/O thread ([`RequestHandler::handle_inline`]); a panic
/// becomes a logged 500 problem response.
fn call_inline(handler: &Handler, request: &Request, style: ApiStyle) -> Option<Response> {
    unpanicked(request, || handler.handle_inline(request))
        .unwrap_or_else(|()| Some(panic_response(style)))
}

/// Runs a handler method for `request`; a panic is logged and becomes `Err`.
fn unpanicked<R>(request: &Request, call: impl FnOnce() -> R) -> Result<R, ()> {
    match panic::catch_unwind(AssertUnwindSafe(call)) {
        Ok(result) => Ok(result),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            log::error!(
                "handler panicked on {} {}: {what}",
                http1::log_method(&request.method),
                http1::log_target(request.path())
            );
            Err(())
        }
    }
}

/// The 500 answered for a request whose handling panicked (in the handler or around it).
fn panic_response(style: ApiStyle) -> Response {
    ApiError::Internal {
        detail: "an internal error occurred while handling the request".into(),
    }
    .to_response(style)
}

/// The bytes of a response with a body known in full.
fn render(response: &Response, head_only: bool, close: bool) -> Vec<u8> {
    let no_body = matches!(response.status, 100..=199 | 204 | 304);
    let length = if no_body {
        BodyLength::None
    } else {
        BodyLength::Fixed(response.body.len())
    };
    let mut out = Vec::with_capacity(256 + response.body.len());
    http1::write_head(
        &mut out,
        response.status,
        response.content_type,
        &response.headers,
        length,
        close,
        &http_date(),
    );
    if !head_only && !no_body {
        out.extend_from_slice(&response.body);
    }
    out
}

/// The current time as an HTTP date, formatted at most once a second per thread.
fn http_date() -> String {
    thread_local! {
        static CACHE: std::cell::RefCell<(i64, String)> = const {
            std::cell::RefCell::new((i64::MIN, String::new()))
        };
    }
    let now = time::OffsetDateTime::now_utc();
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != now.unix_timestamp() {
            let weekday = &format!("{}", now.weekday())[..3];
            let month = &format!("{}", now.month())[..3];
            let text = format!(
                "{weekday}, {:02} {month} {} {:02}:{:02}:{:02} GMT",
                now.day(),
                now.year(),
                now.hour(),
                now.minute(),
                now.second()
            );
            *cache = (now.unix_timestamp(), text);
        }
        cache.1.clone()
    })
}

// ---------------------------------------------------------------------------------------------
// Streamed bodies: a bounded pipe from a worker to the I/O loop

struct Pipe {
    /// The I/O loop of the connection.
    io: usize,
    token: Token,
    serial: u64,
    state: Mutex<PipeState>,
    changed: Condvar,
    /// The client must take something within this, or the writer fails.
    stall: Duration,
}

struct PipeState {
    pieces: VecDeque<Vec<u8>>,
    bytes: usize,
    /// The writer is done: `Some(true)` completely, `Some(false)` with an error.
    finished: Option<bool>,
    /// The connection went away: the writer fails.
    closed: bool,
    /// Last time the I/O loop took a piece (or the pipe was made).
    progress: Instant,
}

impl Pipe {
    fn new(io: usize, token: Token, serial: u64, stall: Duration) -> Self {
        Pipe {
            io,
            token,
            serial,
            state: Mutex::new(PipeState {
                pieces: VecDeque::new(),
                bytes: 0,
                finished: None,
                closed: false,
                progress: Instant::now(),
            }),
            changed: Condvar::new(),
            stall,
        }
    }

    /// Queues a piece, waiting while [`PIPE_BYTES`] are in flight.
    fn push(&self, piece: Vec<u8>) -> io::Result<()> {
        let mut state = lock(&self.state);
        loop {
            if state.closed {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the connection was closed",
                ));
            }
            if state.bytes < PIPE_BYTES {
                break;
            }
            let waited = state.progress.elapsed();
            if waited >= self.stall {
                state.closed = true;
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client read nothing within read_timeout",
                ));
            }
            state = self
                .changed
                .wait_timeout(state, self.stall - waited)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        state.bytes += piece.len();
        state.pieces.push_back(piece);
        Ok(())
    }

    /// The next piece for the connection, if any.
    fn take(&self) -> Option<Vec<u8>> {
        let mut state = lock(&self.state);
        let piece = state.pieces.pop_front()?;
        state.bytes -= piece.len();
        state.progress = Instant::now();
        self.changed.notify_all();
        Some(piece)
    }

    /// `Some(ok)` once the writer finished and every piece was taken.
    fn ended(&self) -> Option<bool> {
        let state = lock(&self.state);
        if state.pieces.is_empty() {
            state.finished
        } else {
            None
        }
    }

    fn finish(&self, ok: bool) {
        lock(&self.state).finished = Some(ok);
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.changed.notify_all();
    }
}

/// The `Write` a [`StreamFn`] gets: buffers [`PIPE_PIECE`] bytes, then queues them (as one
/// chunk of the chunked coding for HTTP/1.1).
struct PipeWriter<'a> {
    shared: &'a Shared,
    pipe: &'a Pipe,
    buffer: Vec<u8>,
    chunked: bool,
}

impl PipeWriter<'_> {
    fn flush_piece(&mut self, last: bool) -> io::Result<()> {
        if self.buffer.is_empty() && !(last && self.chunked) {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buffer, Vec::with_capacity(PIPE_PIECE));
        self.pipe.push(framed(data, self.chunked, last))?;
        self.shared.tell(
            self.pipe.io,
            News::Piece {
                token: self.pipe.token,
                serial: self.pipe.serial,
            },
        );
        Ok(())
    }
}

impl Write for PipeWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(PIPE_PIECE - self.buffer.len());
        self.buffer.extend_from_slice(&buf[..n]);
        if self.buffer.len() >= PIPE_PIECE {
            self.flush_piece(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_piece(false)
    }
}

// ---------------------------------------------------------------------------------------------
// Streamed bodies as the connection sends them

/// The streamed body of the response being written on a connection.
enum Outgoing {
    /// Pushed by a worker through a pipe.
    Pipe(Arc<Pipe>),
    /// Pulled by the I/O loop.
    Pull(Pulled),
}

/// A [`BodySource`] the I/O loop pulls a piece from each time the connection sent the last.
struct Pulled {
    source: Box<dyn BodySource>,
    chunked: bool,
    /// `Some(true)` once the body is complete, `Some(false)` once it failed.
    ended: Option<bool>,
    /// `METHOD target` of the request, for the log line of a failure.
    what: String,
}

impl Outgoing {
    fn pulled(source: Box<dyn BodySource>, chunked: bool, request: &Request) -> Self {
        Outgoing::Pull(Pulled {
            source,
            chunked,
            ended: None,
            what: stream_name(request),
        })
    }

    /// The next piece to send, if there is one now.
    fn take(&mut self) -> Option<Vec<u8>> {
        match self {
            Outgoing::Pipe(pipe) => pipe.take(),
            Outgoing::Pull(pulled) => pulled.next_piece(),
        }
    }

    /// `Some(ok)` once the whole body was taken (`ok`: complete).
    fn ended(&self) -> Option<bool> {
        match self {
            Outgoing::Pipe(pipe) => pipe.ended(),
            Outgoing::Pull(pulled) => pulled.ended,
        }
    }

    /// The connection went away, or will not take the body.
    fn close(&self) {
        if let Outgoing::Pipe(pipe) = self {
            pipe.close();
        }
    }
}

impl Pulled {
    /// Makes the next piece ([`PIPE_PIECE`] bytes or so, a chunk of the chunked coding for
    /// HTTP/1.1, the last chunk after the body's end). A failure, or a panic of the source,
    /// ends the body there: the connection is then closed.
    fn next_piece(&mut self) -> Option<Vec<u8>> {
        if self.ended.is_some() {
            return None;
        }
        let mut data = Vec::with_capacity(PIPE_PIECE + 1024);
        let source = &mut self.source;
        let filled = panic::catch_unwind(AssertUnwindSafe(|| source.fill(&mut data, PIPE_PIECE)));
        let Some(more) = streamed(&self.what, filled) else {
            self.ended = Some(false);
            return None;
        };
        if !more {
            self.ended = Some(true);
        }
        Some(framed(data, self.chunked, !more))
    }
}

// ---------------------------------------------------------------------------------------------
// The I/O loop

/// Where a connection is in its current exchange. (One per connection: the size of the body
/// variant does not matter.)
#[allow(clippy::large_enum_variant)]
enum Phase {
    /// Waiting for (the rest of) a request head. `since`: when its first byte arrived (`None`:
    /// nothing of it yet), the start of its `read_timeout` and of the time a refusal logs.
    Head { since: Option<Instant> },
    /// Reading the body of `request`; `lease` is the memory its buffer holds.
    Body {
        request: Request,
        head: Head,
        body: BodyRead,
        lease: BodyLease,
        started: Instant,
    },
    /// The request is with a worker.
    Waiting,
    /// Writing a response; then closing or reading the next request.
    Writing { body: Option<Outgoing>, close: bool },
    /// Sending side shut: discarding input until the client closes or the deadline.
    Lingering { discarded: usize },
}

enum BodyRead {
    Length {
        left: usize,
        body: Vec<u8>,
    },
    Chunked {
        decoder: ChunkedDecoder,
        body: Vec<u8>,
    },
}

impl BodyRead {
    /// Makes room in the body's buffer for what `inbuf` may hold of it, taking the memory
    /// from `lease` first: `false` when [`BodyMemory`] cannot give it. The buffer grows by
    /// doubling, never past what the body can be (its declared length, or `max_body_bytes`
    /// for a chunked one), so that it never holds more than was counted.
    fn make_room(&mut self, incoming: usize, limits: &Limits, lease: &mut BodyLease) -> bool {
        let (body, most) = match self {
            BodyRead::Length { left, body } => {
                let most = body.len() + *left;
                (body, most)
            }
            BodyRead::Chunked { body, .. } => (body, limits.max_body_bytes),
        };
        let need = (body.len() + incoming).min(most);
        if need <= body.capacity() {
            return true;
        }
        let size = need.max(body.capacity() * 2).min(most);
        if !lease.grow_to(size) {
            return false;
        }
        body.reserve_exact(size - body.len());
        true
    }

    /// Moves what `inbuf` holds of the body into it: `Ok(true)` once the body is complete, an
    /// error when it cannot be (bad chunked syntax or bounds, or the input ended: `eof`).
    fn feed(&mut self, inbuf: &mut Vec<u8>, eof: bool, limits: &Limits) -> Result<bool, ApiError> {
        let complete = match self {
            BodyRead::Length { left, body } => {
                let take = (*left).min(inbuf.len());
                body.extend(inbuf.drain(..take));
                *left -= take;
                if *left > 0 && eof {
                    return Err(ApiError::BadRequest {
                        detail: format!(
                            "the connection ended after {} of the {} declared body bytes",
                            body.len(),
                            body.len() + *left
                        ),
                    });
                }
                *left == 0
            }
            BodyRead::Chunked { decoder, body } => {
                let used = decoder
                    .feed(inbuf, body, limits)
                    .map_err(|e| e.into_api_error(limits))?;
                inbuf.drain(..used);
                if !decoder.is_done() && eof {
                    return Err(ApiError::BadRequest {
                        detail: "the connection ended inside a chunked body".into(),
                    });
                }
                decoder.is_done()
            }
        };
        Ok(complete)
    }

    fn into_body(self) -> Vec<u8> {
        match self {
            BodyRead::Length { body, .. } | BodyRead::Chunked { body, .. } => body,
        }
    }
}

/// The memory all request bodies take at once (`max_body_memory_bytes`), shared by the I/O
/// loops: a body's buffer is counted from its first byte until its request is answered, so
/// that many clients sending large bodies slowly cannot make the process grow to
/// `max_connections` × `max_body_bytes`. What a client merely declares is not taken: heads
/// alone cannot hold the memory that others' bodies need.
struct BodyMemory {
    max: usize,
    /// Bytes held ([`RequestHandler::body_bytes`]).
    held: Arc<AtomicUsize>,
}

impl BodyMemory {
    /// Whether `bytes` more would fit now (not taken).
    fn fits(&self, bytes: usize) -> bool {
        self.held
            .load(Ordering::Relaxed)
            .checked_add(bytes)
            .is_some_and(|held| held <= self.max)
    }

    /// Takes `bytes` more if they fit.
    fn take(&self, bytes: usize) -> bool {
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(bytes).filter(|&held| held <= self.max)
            })
            .is_ok()
    }
}

/// The memory one request body holds in [`BodyMemory`], given back when dropped (the request
/// answered, refused, or its connection closed).
struct BodyLease {
    memory: Arc<BodyMemory>,
    bytes: usize,
}

impl BodyLease {
    fn new(memory: &Arc<BodyMemory>) -> Self {
        BodyLease {
            memory: Arc::clone(memory),
            bytes: 0,
        }
    }

    /// Holds `bytes` in all, taking the difference: `false` (nothing taken) when it does not
    /// fit.
    fn grow_to(&mut self, bytes: usize) -> bool {
        let more = bytes.saturating_sub(self.bytes);
        if more > 0 && !self.memory.take(more) {
            return false;
        }
        self.bytes = self.bytes.max(bytes);
        true
    }
}

impl Drop for BodyLease {
    fn drop(&mut self) {
        self.memory.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

struct Conn {
    sock: TcpStream,
    tls: Option<Box<rustls::ServerConnection>>,
    /// Received bytes not yet consumed (plaintext).
    inbuf: Vec<u8>,
    /// How far `inbuf` was searched for the end of a head.
    scanned: usize,
    out: Vec<u8>,
    out_pos: usize,
    phase: Phase,
    /// When the current wait ends (see each phase).
    deadline: Option<Instant>,
    /// The client closed its sending side (or the connection failed).
    eof: bool,
    /// Serial of the current request, to match the workers' answers.
    serial: u64,
    /// Still in the TLS handshake (its time counts against the first head's deadline).
    handshaking: bool,
    /// Whether this is a 503 refusal past `max_connections`, and where.
    overflow: Overflow,
}

/// Which count a connection holds a place in: [`Shared::open`], or one of an I/O loop's two
/// counts of refusals past `max_connections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overflow {
    /// Served (counted in [`Shared::open`]).
    No,
    /// Being refused: its handshake or its 503 under way ([`IoLoop::overflow`]).
    Answering,
    /// Refused, lingering after its 503 ([`IoLoop::overflow_lingering`]).
    Lingering,
}

/// The connection of `token` in `conns` (apart from [`IoLoop::conn`], so that the loop's
/// other fields can be borrowed beside it).
fn slot(conns: &mut [Option<Conn>], token: Token) -> Option<&mut Conn> {
    conns
        .get_mut(token.0.checked_sub(FIRST_CONN)?)
        .and_then(Option::as_mut)
}

impl Conn {
    /// How many bytes the phase can take now (`Some(0)`: none, but a TLS handshake goes on);
    /// `None` when nothing is to be read.
    fn wants(&self, limits: &Limits) -> Option<usize> {
        if self.eof {
            return None;
        }
        let want = match &self.phase {
            Phase::Head { .. } => (limits.max_head_bytes + 1).saturating_sub(self.inbuf.len()),
            Phase::Body {
                body: BodyRead::Length { left, .. },
                ..
            } => left.saturating_sub(self.inbuf.len()),
            Phase::Body { .. } => READ_CHUNK.saturating_sub(self.inbuf.len()),
            Phase::Lingering { .. } => READ_CHUNK,
            // A handshake goes on whatever the phase (a 503 to a TLS client needs it).
            Phase::Waiting | Phase::Writing { .. } if self.handshaking => 0,
            Phase::Waiting | Phase::Writing { .. } => return None,
        };
        let want = want.min(READ_CHUNK);
        (want > 0 || self.handshaking).then_some(want)
    }
}

/// One I/O loop: the connections it serves, and for loop 0 the listener.
struct IoLoop {
    shared: Arc<Shared>,
    /// This loop's number (its mailbox in [`Shared::loops`]).
    io: usize,
    poll: Poll,
    /// Loop 0's: it accepts, refuses past `max_connections`, and hands the others out in turn.
    listener: Option<mio::net::TcpListener>,
    /// The loop the next accepted connection goes to.
    next_loop: usize,
    /// Still queueing requests (its shutdown has not begun).
    queueing: bool,
    tls: Option<Arc<rustls::ServerConfig>>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// 503 refusals past `max_connections` being answered by this loop (at most
    /// [`OVERFLOW_SLOTS`]).
    overflow: usize,
    /// Those whose 503 was written, lingering (at most [`OVERFLOW_LINGERING`]).
    overflow_lingering: usize,
    /// Connections closed unanswered and not yet logged, and when that was last logged.
    drops: (u64, Option<Instant>),
    serial: u64,
    /// Accepting is paused (descriptor exhaustion) until then.
    accept_paused: Option<Instant>,
    backoff: Duration,
    exhausted: bool,
    /// Earliest deadline of any connection (a sweep runs then).
    next_sweep: Option<Instant>,
    /// Connections to drive again at the end of this turn without waiting for an event: one
    /// that just finished an answer (its client's next request may be there already; the
    /// socket is edge-triggered, so no new event would say so) or that made progress for long.
    again: Vec<Token>,
    scratch: Vec<u8>,
}

impl IoLoop {
    fn new(
        shared: Arc<Shared>,
        io: usize,
        poll: Poll,
        mut listener: Option<mio::net::TcpListener>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> io::Result<IoLoop> {
        if let Some(listener) = &mut listener {
            poll.registry()
                .register(listener, LISTENER, Interest::READABLE)?;
        }
        Ok(IoLoop {
            shared,
            io,
            poll,
            listener,
            next_loop: 0,
            queueing: true,
            tls,
            conns: Vec::new(),
            free: Vec::new(),
            overflow: 0,
            overflow_lingering: 0,
            drops: (0, None),
            serial: 0,
            accept_paused: None,
            backoff: ACCEPT_BACKOFF_MIN,
            exhausted: false,
            next_sweep: None,
            again: Vec::new(),
            scratch: vec![0; READ_CHUNK],
        })
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            if self.shared.abort.load(Ordering::Acquire) {
                break;
            }
            if self.shared.stopping() {
                if self.queueing {
                    self.begin_shutdown();
                }
                if !self.busy() {
                    break;
                }
            }
            let now = Instant::now();
            let drops_due = (self.drops.0 > 0)
                .then(|| self.drops.1.map(|t| t + DROPS_LOGGED_EVERY))
                .flatten();
            let summary_due = self.shared.log_budget.summary_due();
            let wake_at = [self.next_sweep, self.accept_paused, drops_due, summary_due]
                .into_iter()
                .flatten()
                .min();
            let timeout = if self.again.is_empty() {
                wake_at.map(|t| t.saturating_duration_since(now) + Duration::from_millis(1))
            } else {
                Some(Duration::ZERO) // new events are looked at, then `again` is driven
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("polling failed: {e}");
                    thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    token => self.drive(token),
                }
            }
            self.take_news();
            for token in std::mem::take(&mut self.again) {
                self.drive(token);
            }
            if self.accept_paused.is_some_and(|t| Instant::now() >= t) {
                self.accept_paused = None;
                self.accept();
            }
            if self.next_sweep.is_some_and(|t| Instant::now() >= t) {
                self.sweep();
            }
            if drops_due.is_some_and(|t| Instant::now() >= t) {
                self.log_drops();
            }
            if summary_due.is_some_and(|t| Instant::now() >= t) {
                self.shared.log_budget.tick(Instant::now());
            }
        }
        let remaining = self.conns.iter().flatten().count();
        for i in 0..self.conns.len() {
            self.close(Token(i + FIRST_CONN));
        }
        debug!(
            "I/O loop on {} ended ({remaining} connections closed)",
            self.shared.local_addr
        );
    }

    /// Whether some connection has a request with a worker or a response being written.
    fn busy(&self) -> bool {
        self.conns
            .iter()
            .flatten()
            .any(|c| matches!(c.phase, Phase::Waiting | Phase::Writing { .. }))
    }

    fn begin_shutdown(&mut self) {
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        for i in 0..self.conns.len() {
            let token = Token(i + FIRST_CONN);
            let Some(conn) = self.conns[i].as_mut() else {
                continue;
            };
            match conn.phase {
                Phase::Waiting | Phase::Writing { .. } => {}
                // Part of a request arrived (its head, or its head and part of its body): it
                // is not executed, and its client is told so instead of seeing the
                // connection close without an answer.
                Phase::Head { since: Some(_) } | Phase::Body { .. } => {
                    let unread = std::mem::replace(&mut conn.phase, Phase::Head { since: None });
                    let (request, started) = match unread {
                        Phase::Body {
                            request, started, ..
                        } => (Some(request), started),
                        Phase::Head { since } => (
                            Some(partial_request(&conn.inbuf)),
                            since.unwrap_or_else(Instant::now),
                        ),
                        _ => (None, Instant::now()),
                    };
                    self.refuse(token, shutting_down(), request, started);
                    // Written by the next turn of the loop, as for any connection driven again.
                    self.again.push(token);
                }
                Phase::Head { since: None } | Phase::Lingering { .. } => self.close(token),
            }
        }
        // No connection left can read another request: the workers finish the queue and leave
        // (once every loop is past this point).
        self.queueing = false;
        self.shared.close_jobs();
    }

    // --- accepting

    fn accept(&mut self) {
        loop {
            if self.accept_paused.is_some() || self.shared.stopping() {
                return;
            }
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((sock, _peer)) => {
                    if self.exhausted {
                        log::info!("accepting connections again");
                        self.exhausted = false;
                    }
                    self.backoff = ACCEPT_BACKOFF_MIN;
                    self.hand_out(sock);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => match classify_accept_error(&e) {
                    AcceptError::Retry => {}
                    kind => {
                        if kind == AcceptError::Exhausted && !self.exhausted {
                            log::warn!("cannot accept connections ({e}); retrying with back-off");
                            self.exhausted = true;
                        } else if kind == AcceptError::Other {
                            log::error!("accept failed: {e}; retrying with back-off");
                        }
                        self.accept_paused = Some(Instant::now() + self.backoff);
                        self.backoff = (self.backoff * 2).min(ACCEPT_BACKOFF_MAX);
                        return;
                    }
                },
            }
        }
    }

    /// A connection just accepted: refused here past `max_connections` (at most
    /// [`OVERFLOW_SLOTS`] refusals at once, past that closed unanswered), else served by the
    /// next loop in turn (the connections of a few busy clients spread over the loops).
    fn hand_out(&mut self, sock: TcpStream) {
        let shared = Arc::clone(&self.shared);
        if shared.open.load(Ordering::Acquire) >= shared.max_connections {
            if self.overflow < OVERFLOW_SLOTS {
                self.add(sock, true);
            } else {
                drop(sock);
                self.dropped();
            }
            return;
        }
        // Only this loop adds to the count: the check above cannot be overtaken.
        shared.open.fetch_add(1, Ordering::AcqRel);
        let io = self.next_loop;
        self.next_loop = (io + 1) % shared.loops.len();
        if io == self.io {
            self.add(sock, false);
        } else {
            shared.tell(io, News::Adopt(sock));
        }
    }

    /// Serves a connection (`overflow`: only to refuse it 503); gives up its place in
    /// [`Shared::open`] if it cannot be watched.
    fn add(&mut self, mut sock: TcpStream, overflow: bool) {
        let _ = sock.set_nodelay(true);
        let give_up = |shared: &Shared| {
            if !overflow {
                shared.open.fetch_sub(1, Ordering::AcqRel);
            }
        };
        let tls = match &self.tls {
            Some(config) => match rustls::ServerConnection::new(Arc::clone(config)) {
                Ok(c) => Some(Box::new(c)),
                Err(e) => {
                    log::warn!("cannot set up TLS for a connection: {e}");
                    return give_up(&self.shared);
                }
            },
            None => None,
        };
        let index = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        let token = Token(index + FIRST_CONN);
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
        {
            log::warn!("cannot watch an accepted connection: {e}");
            self.free.push(index);
            return give_up(&self.shared);
        }
        let handshaking = tls.is_some();
        self.conns[index] = Some(Conn {
            sock,
            tls,
            inbuf: Vec::new(),
            scanned: 0,
            out: Vec::new(),
            out_pos: 0,
            phase: Phase::Head { since: None },
            deadline: None,
            eof: false,
            serial: 0,
            handshaking,
            overflow: if overflow {
                Overflow::Answering
            } else {
                Overflow::No
            },
        });
        if overflow {
            self.overflow += 1;
            let error = ApiError::TooManyConnections {
                limit: self.shared.max_connections,
            };
            self.refuse(token, error, None, Instant::now());
            // Its handshake and its 503 get a short bound, not read_timeout: the refusals'
            // places must come free quickly whatever the clients do.
            self.set_deadline(token, self.overflow_wait());
        } else {
            self.set_deadline(token, self.shared.read_timeout);
        }
        self.drive(token);
    }

    fn close(&mut self, token: Token) {
        let index = token.0 - FIRST_CONN;
        let Some(mut conn) = self.conns.get_mut(index).and_then(Option::take) else {
            return;
        };
        if let Phase::Writing {
            body: Some(body), ..
        } = &conn.phase
        {
            body.close();
        }
        let _ = self.poll.registry().deregister(&mut conn.sock);
        match conn.overflow {
            Overflow::No => {
                self.shared.open.fetch_sub(1, Ordering::AcqRel);
            }
            Overflow::Answering => self.overflow -= 1,
            Overflow::Lingering => self.overflow_lingering -= 1,
        }
        self.free.push(index);
    }

    /// The bound on each stage of a refusal past `max_connections` ([`OVERFLOW_WAIT`]).
    fn overflow_wait(&self) -> Duration {
        OVERFLOW_WAIT.min(self.shared.read_timeout)
    }

    /// A connection past `max_connections` closed without its 503: counted at once, logged at
    /// most once per [`DROPS_LOGGED_EVERY`] (a flood of them is one line a second).
    fn dropped(&mut self) {
        self.shared.handler.dropped();
        self.drops.0 += 1;
        if self
            .drops
            .1
            .is_none_or(|t| t.elapsed() >= DROPS_LOGGED_EVERY)
        {
            self.log_drops();
        }
    }

    fn log_drops(&mut self) {
        let n = std::mem::take(&mut self.drops.0);
        self.drops.1 = Some(Instant::now());
        if n > 0 {
            log::warn!(
                "{n} connection(s) past max_connections ({}) closed without an answer: {} \
                 refusals already in progress, or a TLS handshake not completed within {} ms",
                self.shared.max_connections,
                OVERFLOW_SLOTS,
                self.overflow_wait().as_millis()
            );
        }
    }

    fn conn(&mut self, token: Token) -> Option<&mut Conn> {
        slot(&mut self.conns, token)
    }

    fn set_deadline(&mut self, token: Token, after: Duration) {
        let at = Instant::now() + after;
        if let Some(conn) = self.conn(token) {
            conn.deadline = Some(at);
            self.next_sweep = Some(self.next_sweep.map_or(at, |t| t.min(at)));
        }
    }

    /// Acts on every connection whose deadline passed; finds the next one.
    fn sweep(&mut self) {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for i in 0..self.conns.len() {
            let token = Token(i + FIRST_CONN);
            let Some(conn) = self.conns[i].as_mut() else {
                continue;
            };
            let Some(deadline) = conn.deadline else {
                continue;
            };
            if deadline > now {
                next = Some(next.map_or(deadline, |t| t.min(deadline)));
                continue;
            }
            conn.deadline = None;
            self.expire(token);
            if let Some(d) = self.conn(token).and_then(|c| c.deadline) {
                next = Some(next.map_or(d, |t| t.min(d)));
            }
        }
        self.next_sweep = next;
    }

    fn expire(&mut self, token: Token) {
        let Some(conn) = self.conn(token) else { return };
        match &mut conn.phase {
            Phase::Head { since: None } => self.close(token),
            Phase::Head { since: Some(_) } if conn.handshaking => self.close(token),
            Phase::Head { since: Some(since) } => {
                // Logged and counted with what arrived of the request line, and the time since
                // its first byte: `- - 408 0 ms` under route "other" said neither which
                // request was slow nor how long it took (found by a hostile-client audit).
                let since = *since;
                let request = partial_request(&conn.inbuf);
                self.refuse(token, ApiError::HeadTimeout, Some(request), since);
            }
            Phase::Body { .. } => {
                let Phase::Body {
                    request, started, ..
                } = std::mem::replace(&mut conn.phase, Phase::Waiting)
                else {
                    unreachable!()
                };
                self.refuse(token, ApiError::BodyTimeout, Some(request), started);
            }
            Phase::Waiting => {}
            Phase::Writing { .. } if conn.overflow == Overflow::Answering => {
                // A refusal whose handshake (or 503) did not complete within its bound.
                self.close(token);
                self.dropped();
            }
            Phase::Writing { .. } | Phase::Lingering { .. } => self.close(token),
        }
        self.drive(token);
    }

    // --- news from the workers

    fn take_news(&mut self) {
        let news = std::mem::take(&mut *lock(&self.shared.loops[self.io].news));
        for item in news {
            match item {
                News::Response {
                    token,
                    serial,
                    out,
                    body,
                    close,
                } => {
                    let Some(conn) = self.conn(token) else {
                        if let Some(body) = body {
                            body.close();
                        }
                        continue;
                    };
                    if conn.serial != serial || !matches!(conn.phase, Phase::Waiting) {
                        if let Some(body) = body {
                            body.close();
                        }
                        continue;
                    }
                    conn.out.extend_from_slice(&out);
                    conn.phase = Phase::Writing { body, close };
                    self.set_deadline(token, self.shared.read_timeout);
                    self.drive(token);
                }
                News::Piece { token, serial } => {
                    if self.conn(token).is_some_and(|c| c.serial == serial) {
                        self.drive(token);
                    }
                }
                News::Adopt(sock) if self.queueing => self.add(sock, false),
                News::Adopt(sock) => {
                    // Shutting down: closed like the idle connections.
                    drop(sock);
                    self.shared.open.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }

    // --- one connection

    /// Makes all the progress possible on a connection: reading, parsing, writing; up to its
    /// next answer written, after which it waits for the other connections' turn (in
    /// [`IoLoop::again`]), so that a client quick to send its next request does not keep the
    /// loop to itself.
    fn drive(&mut self, token: Token) {
        for _ in 0..64 {
            let Some(conn) = self.conn(token) else { return };
            let writing = matches!(conn.phase, Phase::Writing { .. });
            let mut progressed = false;
            match flush(conn) {
                Ok(wrote) => {
                    progressed |= wrote;
                    if wrote
                        && matches!(conn.phase, Phase::Writing { .. })
                        && conn.overflow == Overflow::No
                    {
                        // The client reads: it gets another read_timeout for the rest. (Not a
                        // refusal past max_connections: its bound is for the whole of it.)
                        self.set_deadline(token, self.shared.read_timeout);
                    }
                }
                Err(_) => {
                    self.close(token);
                    return;
                }
            }
            progressed |= self.pull_piece(token);
            progressed |= self.after_write(token);
            let next = self.conn(token).map(|c| &c.phase);
            if writing && matches!(next, Some(Phase::Head { .. })) {
                self.again.push(token);
                return;
            }
            progressed |= self.read(token);
            progressed |= self.process(token);
            if !progressed {
                return;
            }
        }
        // Still progressing: resume on the next turn of the loop (fairness).
        self.again.push(token);
    }

    /// Moves a streamed piece into the output when it is empty.
    fn pull_piece(&mut self, token: Token) -> bool {
        let Some(conn) = self.conn(token) else {
            return false;
        };
        if conn.out_pos < conn.out.len() {
            return false;
        }
        let Phase::Writing {
            body: Some(body), ..
        } = &mut conn.phase
        else {
            return false;
        };
        let Some(piece) = body.take() else {
            return false;
        };
        conn.out.clear();
        conn.out_pos = 0;
        conn.out.extend_from_slice(&piece);
        // The client must now take it: `after_write` cleared the deadline while the pipe was
        // empty, and a socket that is full when the piece comes would otherwise never arm it
        // again (a client that reads nothing would hold its connection for good).
        self.set_deadline(token, self.shared.read_timeout);
        true
    }

    /// When the response is out: close, or wait for the next request.
    fn after_write(&mut self, token: Token) -> bool {
        let read_timeout = self.shared.read_timeout;
        let idle_timeout = self.shared.idle_timeout;
        let stopping = self.shared.stopping();
        let Some(conn) = self.conn(token) else {
            return false;
        };
        let Phase::Writing { body, close } = &conn.phase else {
            return false;
        };
        let written = conn.out_pos >= conn.out.len() && !tls_wants_write(conn);
        if !written {
            return false;
        }
        let mut close = *close;
        if let Some(body) = body {
            match body.ended() {
                None => {
                    // Waiting for the worker, not the client: no deadline.
                    conn.deadline = None;
                    return false;
                }
                Some(ok) => close |= !ok,
            }
        }
        conn.out.clear();
        conn.out_pos = 0;
        if close || stopping {
            self.linger(token);
            return true;
        }
        // After a half-close too: the complete requests already received are answered in
        // order, then the connection closes (see `process`).
        conn.phase = Phase::Head { since: None };
        self.set_deadline(token, idle_timeout);
        let _ = read_timeout;
        true
    }

    /// Shuts the sending side and discards input until the client closes.
    ///
    /// A refusal past `max_connections` gives its place back here, once its 503 is written,
    /// and lingers for [`OVERFLOW_WAIT`] only, among at most [`OVERFLOW_LINGERING`] (past
    /// that it closes at once). Its place was held until the close before: 64 clients that
    /// read nothing of their 503 and kept the connection open held every place for
    /// `read_timeout`, and the next connections were closed without a byte (found by an
    /// audit).
    fn linger(&mut self, token: Token) {
        let mut wait = self.shared.read_timeout;
        let overflow_wait = self.overflow_wait();
        let Some(conn) = slot(&mut self.conns, token) else {
            return;
        };
        if let Some(tls) = &mut conn.tls {
            tls.send_close_notify();
            let _ = flush(conn);
        }
        let _ = conn.sock.shutdown(std::net::Shutdown::Write);
        conn.phase = Phase::Lingering { discarded: 0 };
        conn.inbuf.clear();
        let mut crowded = false;
        if conn.overflow == Overflow::Answering {
            conn.overflow = Overflow::Lingering;
            self.overflow -= 1;
            self.overflow_lingering += 1;
            crowded = self.overflow_lingering > OVERFLOW_LINGERING;
            wait = overflow_wait;
        }
        if conn.eof || crowded {
            self.close(token);
            return;
        }
        self.set_deadline(token, wait);
    }

    /// Reads what the phase can take. Returns whether anything arrived (or the end).
    fn read(&mut self, token: Token) -> bool {
        let limits = self.shared.limits;
        let read_timeout = self.shared.read_timeout;
        let Some(conn) = slot(&mut self.conns, token) else {
            return false;
        };
        let Some(want) = conn.wants(&limits) else {
            return false;
        };
        let buf = &mut self.scratch[..want];
        let got = match &mut conn.tls {
            Some(tls) => read_tls(tls, &mut conn.sock, buf),
            None if want == 0 => Ok(None),
            None => read_plain(&mut conn.sock, buf),
        };
        if conn.handshaking && conn.tls.as_ref().is_some_and(|t| !t.is_handshaking()) {
            // The handshake is done: the first head gets its own read_timeout.
            conn.handshaking = false;
            if matches!(conn.phase, Phase::Head { .. }) {
                self.set_deadline(token, read_timeout);
            }
        }
        let Some(conn) = slot(&mut self.conns, token) else {
            return false;
        };
        match got {
            Ok(Some(n)) => {
                if let Phase::Lingering { discarded } = &mut conn.phase {
                    *discarded += n;
                    if *discarded > LINGER_BYTES {
                        self.close(token);
                    }
                    return true;
                }
                conn.inbuf.extend_from_slice(&self.scratch[..n]);
                true
            }
            Ok(None) => false,
            Err(clean) => {
                conn.eof = true;
                if matches!(conn.phase, Phase::Lingering { .. }) || !clean {
                    self.close(token);
                }
                true
            }
        }
    }

    /// Acts on what was read: heads, bodies, the end of the input.
    fn process(&mut self, token: Token) -> bool {
        let Some(conn) = self.conn(token) else {
            return false;
        };
        if conn.handshaking {
            if conn.eof {
                self.close(token);
                return true;
            }
            return false;
        }
        match conn.phase {
            Phase::Head { .. } => self.process_head(token),
            Phase::Body { .. } => self.process_body(token),
            Phase::Waiting | Phase::Writing { .. } | Phase::Lingering { .. } => false,
        }
    }

    /// Waiting for a head: skips the empty lines before it, starts its clock at its first
    /// byte, then parses it once complete, or refuses it once over its bound or cut short.
    fn process_head(&mut self, token: Token) -> bool {
        let limits = self.shared.limits;
        let read_timeout = self.shared.read_timeout;
        let Some(conn) = self.conn(token) else {
            return false;
        };
        let Phase::Head { since } = &mut conn.phase else {
            return false;
        };
        let skip = http1::leading_empty_lines(&conn.inbuf);
        if skip > 0 {
            conn.inbuf.drain(..skip);
            conn.scanned = 0;
        }
        if conn.inbuf.is_empty() {
            if conn.eof {
                self.close(token);
                return true;
            }
            return false;
        }
        if since.is_none() {
            // The first byte of a request: its head has read_timeout in total.
            *since = Some(Instant::now());
            self.set_deadline(token, read_timeout);
            return true;
        }
        let max = limits.max_head_bytes;
        // A refusal is logged with the time since the head's first byte.
        let started = since.unwrap_or_else(Instant::now);
        match http1::head_end(&conn.inbuf, conn.scanned) {
            Some(end) if end <= max => {
                let parsed = http1::parse_head(&conn.inbuf[..end], &limits);
                let line = parsed
                    .is_err()
                    .then(|| http1::request_line(&conn.inbuf[..end]));
                conn.inbuf.drain(..end);
                conn.scanned = 0;
                match parsed {
                    Ok(head) => self.on_head(token, head),
                    Err(e) => self.refuse_head(token, e, line, started),
                }
            }
            Some(_) => self.refuse_oversized_head(token, started),
            None if conn.inbuf.len() > max => self.refuse_oversized_head(token, started),
            None if conn.eof => {
                let line = http1::request_line(&conn.inbuf);
                let e = HeadError::Bad("the connection ended inside a request head".into());
                self.refuse_head(token, e, Some(line), started);
            }
            None => {
                conn.scanned = conn.inbuf.len();
                return false;
            }
        }
        true
    }

    /// `max_head_bytes` arrived without the end of the head: 414 or 431.
    fn refuse_oversized_head(&mut self, token: Token, started: Instant) {
        let max = self.shared.limits.max_head_bytes;
        let Some(conn) = self.conn(token) else { return };
        let head = &conn.inbuf[..max];
        let (e, line) = (http1::oversized_head(head), http1::request_line(head));
        self.refuse_head(token, e, Some(line), started);
    }

    /// Reading a body: takes what arrived; hands the complete request on, or refuses it.
    fn process_body(&mut self, token: Token) -> bool {
        let limits = self.shared.limits;
        let memory = self.shared.bodies.max;
        let Some(conn) = self.conn(token) else {
            return false;
        };
        let Phase::Body { body, lease, .. } = &mut conn.phase else {
            return false;
        };
        let before = conn.inbuf.len();
        let result = if body.make_room(before, &limits, lease) {
            body.feed(&mut conn.inbuf, conn.eof, &limits)
        } else {
            Err(ApiError::BodyMemoryFull { limit: memory })
        };
        let progressed = conn.inbuf.len() != before;
        if let Ok(false) = result {
            return progressed;
        }
        let Phase::Body {
            mut request,
            head,
            body,
            lease,
            started,
        } = std::mem::replace(&mut conn.phase, Phase::Waiting)
        else {
            unreachable!("the phase was matched above")
        };
        match result {
            Ok(_) => {
                request.body = body.into_body();
                self.dispatch(token, request, &head, Some(lease), started);
            }
            Err(error) => self.refuse(token, error, Some(request), started),
        }
        true
    }

    /// Refuses a head that could not be accepted; `line` is its method and target as far as
    /// they could be read (for the log, the metrics and `HEAD`).
    fn refuse_head(
        &mut self,
        token: Token,
        error: HeadError,
        line: Option<(String, String)>,
        started: Instant,
    ) {
        let error = error.into_api_error(&self.shared.limits);
        let request = line.map(|(method, target)| Request::new(&method, &target));
        self.refuse(token, error, request, started);
    }

    /// A complete head: admit it, then read its body or hand it to a worker.
    fn on_head(&mut self, token: Token, head: Head) {
        let started = Instant::now();
        let request = Request {
            method: head.method.clone(),
            target: head.target.clone(),
            content_type: head.content_type.clone(),
            authorization: head.authorization.clone(),
            forwarded: head.forwarded,
            body: Vec::new(),
        };
        let has_body = head.framing != Framing::Length(0);
        if let Some(refusal) = self.shared.handler.admit(&request) {
            return self.answer(token, refusal, &request, &head, has_body, started);
        }
        let max = self.shared.limits.max_body_bytes;
        if let Framing::Length(n) = head.framing {
            if n > max as u64 {
                let error = ApiError::PayloadTooLarge { limit: max };
                return self.refuse(token, error, Some(request), started);
            }
        }
        if !has_body {
            return self.dispatch(token, request, &head, None, started);
        }
        // A declared body is refused unread (before its 100 Continue) when it cannot fit now;
        // its memory is taken only as it arrives.
        if let Framing::Length(n) = head.framing {
            if !self.shared.bodies.fits(n as usize) {
                let limit = self.shared.bodies.max;
                let error = ApiError::BodyMemoryFull { limit };
                return self.refuse(token, error, Some(request), started);
            }
        }
        let read_timeout = self.shared.read_timeout;
        let lease = BodyLease::new(&self.shared.bodies);
        let Some(conn) = self.conn(token) else { return };
        if head.expect_continue {
            conn.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let body = match head.framing {
            Framing::Length(n) => BodyRead::Length {
                left: n as usize,
                body: Vec::new(),
            },
            Framing::Chunked => BodyRead::Chunked {
                decoder: ChunkedDecoder::default(),
                body: Vec::new(),
            },
        };
        conn.phase = Phase::Body {
            request,
            head,
            body,
            lease,
            started,
        };
        self.set_deadline(token, read_timeout);
    }

    /// Hands a complete request to a worker, or answers it here; `lease`: its body's memory,
    /// held until it is answered.
    fn dispatch(
        &mut self,
        token: Token,
        request: Request,
        head: &Head,
        lease: Option<BodyLease>,
        started: Instant,
    ) {
        self.serial += 1;
        let serial = self.serial;
        let Some(conn) = self.conn(token) else { return };
        conn.serial = serial;
        conn.phase = Phase::Waiting;
        conn.deadline = None;
        let mut job = Job {
            io: self.io,
            token,
            serial,
            head_only: request.method == "HEAD",
            http10: head.minor == 0,
            close: head.close,
            slow: false,
            request,
            lease,
            started,
            response: None,
        };
        match call_inline(&self.shared.handler, &job.request, self.shared.api_style) {
            Some(response) if response.stream.is_none() => {
                // Answered here: no worker, no wake-up; the same log line, report and framing.
                answered(&self.shared, &job.request, response.status, started);
                let close = job.close || self.shared.stopping();
                let out = render(&response, job.head_only, close);
                return self.write_answer(token, out, close);
            }
            Some(streamed) => job.response = Some(streamed),
            None => job.slow = self.shared.handler.is_slow(&job.request),
        }
        lock(&self.shared.jobs).queue.push_back(job);
        self.shared.job_ready.notify_one();
    }

    /// Answers a refusal the front end decided; the connection is closed after it.
    fn refuse(
        &mut self,
        token: Token,
        error: ApiError,
        request: Option<Request>,
        started: Instant,
    ) {
        let request = request.unwrap_or_else(|| Request::new("-", "-"));
        let response = error.to_response(self.shared.api_style);
        answered(&self.shared, &request, response.status, started);
        let out = render(&response, request.method == "HEAD", true);
        self.write_answer(token, out, true);
    }

    /// Answers a head the handler refused in [`RequestHandler::admit`].
    fn answer(
        &mut self,
        token: Token,
        response: Response,
        request: &Request,
        head: &Head,
        has_body: bool,
        started: Instant,
    ) {
        answered(&self.shared, request, response.status, started);
        let close = has_body || head.close || self.shared.stopping();
        let out = render(&response, request.method == "HEAD", close);
        self.write_answer(token, out, close);
    }

    fn write_answer(&mut self, token: Token, out: Vec<u8>, close: bool) {
        let read_timeout = self.shared.read_timeout;
        let Some(conn) = self.conn(token) else { return };
        conn.out.extend_from_slice(&out);
        conn.phase = Phase::Writing { body: None, close };
        self.set_deadline(token, read_timeout);
    }
}

/// The answer to a request caught half received by the shutdown.
/// The request of a head cut short (by its deadline or a shutdown) as far as it can be told,
/// for the log line, the metrics and a `HEAD` answer (see [`http1::partial_request_line`]).
fn partial_request(inbuf: &[u8]) -> Request {
    let (method, target) = http1::partial_request_line(inbuf);
    Request::new(&method, &target)
}

fn shutting_down() -> ApiError {
    ApiError::Unavailable {
        detail: "mec-plugin is shutting down: this request was not executed; send it again \
                 once the service is back"
            .into(),
        request_id: None,
    }
}

/// Whether rustls still holds bytes to send.
fn tls_wants_write(conn: &Conn) -> bool {
    conn.tls.as_ref().is_some_and(|t| t.wants_write())
}

/// Writes what can be written. `Ok(true)` when some bytes went out; `Err` when the connection
/// failed.
fn flush(conn: &mut Conn) -> io::Result<bool> {
    let mut progressed = false;
    let Some(tls) = &mut conn.tls else {
        while conn.out_pos < conn.out.len() {
            match conn.sock.write(&conn.out[conn.out_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    conn.out_pos += n;
                    progressed = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if conn.out_pos >= conn.out.len() && !conn.out.is_empty() {
            conn.out.clear();
            conn.out_pos = 0;
        }
        return Ok(progressed);
    };
    if conn.out_pos < conn.out.len() && !tls.is_handshaking() {
        // rustls buffers what it cannot send yet; hand it at most what one write sends.
        let n = tls.writer().write(&conn.out[conn.out_pos..])?;
        conn.out_pos += n;
        progressed |= n > 0;
        if conn.out_pos >= conn.out.len() {
            conn.out.clear();
            conn.out_pos = 0;
        }
    }
    while tls.wants_write() {
        match tls.write_tls(&mut conn.sock) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => progressed = true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(progressed)
}

/// Reads from a plain connection: `Ok(Some(n))` bytes into `buf` (0 after an interrupted
/// read), `Ok(None)` nothing yet, `Err(clean)` the end (`clean`: the client closed).
fn read_plain(sock: &mut TcpStream, buf: &mut [u8]) -> Result<Option<usize>, bool> {
    match sock.read(buf) {
        Ok(0) => Err(true),
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Some(0)),
        Err(_) => Err(false),
    }
}

/// Reads plaintext from a TLS connection: `Ok(Some(n))` bytes into `buf` (0 when only TLS
/// records were consumed, e.g. during the handshake), `Ok(None)` nothing yet, `Err(clean)` the
/// end (`clean`: the client closed; else the TLS session failed).
fn read_tls(
    tls: &mut rustls::ServerConnection,
    sock: &mut TcpStream,
    buf: &mut [u8],
) -> Result<Option<usize>, bool> {
    let mut consumed = false;
    loop {
        if !buf.is_empty() {
            match tls.reader().read(buf) {
                Ok(0) => return Err(true),
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(true),
            }
        }
        let nothing = if consumed { Some(0) } else { None };
        if !tls.wants_read() {
            return Ok(nothing);
        }
        match tls.read_tls(sock) {
            Ok(0) => return Err(true),
            Ok(_) => consumed = true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(nothing),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(false),
        }
        if let Err(e) = tls.process_new_packets() {
            debug!("TLS connection failed: {e}");
            // Send the alert rustls prepared, then give up.
            let _ = tls.write_tls(sock);
            return Err(false);
        }
        if buf.is_empty() && !tls.is_handshaking() {
            return Ok(Some(0));
        }
    }
}

#[derive(Debug, PartialEq)]
enum AcceptError {
    /// Nothing wrong with the listener: a signal, a connection that went away before it was
    /// accepted, or a network error Linux passes through accept(2).
    Retry,
    /// Out of descriptors or memory: pause, or the loop spins while the condition lasts.
    Exhausted,
    Other,
}

fn classify_accept_error(e: &io::Error) -> AcceptError {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        WouldBlock | TimedOut | Interrupted | ConnectionAborted | ConnectionReset
    ) {
        return AcceptError::Retry;
    }
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => AcceptError::Exhausted,
        // accept(2) on Linux: "should treat them like EAGAIN by retrying".
        Some(
            libc::EPROTO
            | libc::EPERM
            | libc::ENETDOWN
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::ENONET
            | libc::EHOSTUNREACH
            | libc::EOPNOTSUPP
            | libc::ENETUNREACH,
        ) => AcceptError::Retry,
        _ => AcceptError::Other,
    }
}

impl Drop for IoLoop {
    /// However the loop ends (even by a panic), the workers are not left waiting for requests.
    fn drop(&mut self) {
        if self.queueing {
            self.queueing = false;
            self.shared.close_jobs();
        }
    }
}

/// A flag that can be waited for.
#[derive(Default)]
struct Signal {
    set: Mutex<bool>,
    changed: Condvar,
}

impl Signal {
    fn set(&self) {
        *lock(&self.set) = true;
        self.changed.notify_all();
    }

    fn is_set(&self) -> bool {
        *lock(&self.set)
    }

    fn wait(&self) {
        let mut set = lock(&self.set);
        while !*set {
            set = wait(&self.changed, set);
        }
    }
}

/// A count of running threads that can be waited down to zero.
#[derive(Default)]
struct Counter {
    n: Mutex<usize>,
    changed: Condvar,
}

impl Counter {
    /// Waits until the count is zero or `deadline`; returns whether it reached zero.
    fn wait_zero_until(&self, deadline: Instant) -> bool {
        let mut n = lock(&self.n);
        loop {
            if *n == 0 {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            n = self
                .changed
                .wait_timeout(n, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Counts a server thread as running from its spawn until it ends (even by panic).
struct RunningGuard(Arc<Shared>);

impl RunningGuard {
    fn enter(shared: Arc<Shared>) -> Self {
        *lock(&shared.running.n) += 1;
        RunningGuard(shared)
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        let running = &self.0.running;
        *lock(&running.n) -= 1;
        running.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpStream;

    const SECOND: Duration = Duration::from_secs(1);

    fn options(workers: usize) -> Options {
        Options {
            listen: "127.0.0.1:0".parse().unwrap(),
            workers,
            read_timeout: SECOND,
            max_body_bytes: 4096,
            ..Options::default()
        }
    }

    fn connect(server: &Server) -> TcpStream {
        let s = TcpStream::connect(server.local_addr()).unwrap();
        s.set_read_timeout(Some(5 * SECOND)).unwrap();
        s.set_write_timeout(Some(5 * SECOND)).unwrap();
        s
    }

    /// Everything the server sends until it closes.
    fn read_all(mut s: TcpStream) -> String {
        let mut text = Vec::new();
        let _ = s.read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    }

    /// Sends `bytes` on a new connection, then reads everything until the server closes. A
    /// write cut short is not an error: the server may refuse and close before the whole of an
    /// oversized request arrived; what it answered is still read.
    fn exchange(server: &Server, bytes: &[u8]) -> String {
        let mut s = connect(server);
        let _ = s.write_all(bytes);
        read_all(s)
    }

    /// Streams `pieces` lines of 1 KiB each.
    fn streaming(pieces: usize) -> Handler {
        Arc::new(move |_: &Request| {
            Response::stream(200, crate::http::JSON, move |w| {
                for i in 0..pieces {
                    writeln!(w, "{i:04}{}", "x".repeat(1019))?;
                }
                Ok(())
            })
        })
    }

    /// Lines of [`streaming`], pulled by the I/O loop; panics at line `panic_at`.
    struct Lines {
        next: usize,
        pieces: usize,
        panic_at: Option<usize>,
    }

    impl BodySource for Lines {
        fn fill(&mut self, out: &mut Vec<u8>, want: usize) -> io::Result<bool> {
            let goal = out.len() + want;
            while out.len() < goal && self.next < self.pieces {
                assert_ne!(Some(self.next), self.panic_at, "a bug in a body source");
                writeln!(out, "{:04}{}", self.next, "x".repeat(1019))?;
                self.next += 1;
            }
            Ok(self.next < self.pieces)
        }
    }

    /// What [`streaming`] sends, as a pulled body.
    fn pulling(pieces: usize) -> Handler {
        Arc::new(move |_: &Request| {
            let lines = Lines {
                next: 0,
                pieces,
                panic_at: None,
            };
            Response::pull(200, crate::http::JSON, lines)
        })
    }

    fn expected_lines(pieces: usize) -> String {
        (0..pieces)
            .map(|i| format!("{i:04}{}\n", "x".repeat(1019)))
            .collect()
    }

    /// Decodes a chunked body; panics on a syntax error.
    fn dechunk(mut body: &str) -> (String, usize) {
        let mut out = String::new();
        let mut chunks = 0;
        loop {
            let (size, rest) = body.split_once("\r\n").expect("a chunk-size line");
            let size = usize::from_str_radix(size, 16).expect("a hex size");
            if size == 0 {
                assert_eq!(rest, "\r\n", "no trailers, then the end");
                return (out, chunks);
            }
            out.push_str(&rest[..size]);
            assert_eq!(&rest[size..size + 2], "\r\n");
            body = &rest[size + 2..];
            chunks += 1;
        }
    }

    /// A body's buffer never holds more than its lease counts, grows by doubling up to what
    /// the body can be, and gives everything back when dropped; a lease that would pass the
    /// bound takes nothing.
    #[test]
    fn body_buffers_hold_only_what_the_memory_bound_counted() {
        let memory = Arc::new(BodyMemory {
            max: 100_000,
            held: Arc::default(),
        });
        let limits = Limits {
            max_head_bytes: 1024,
            max_headers: 10,
            max_body_bytes: 70_000,
        };
        let mut lease = BodyLease::new(&memory);
        let mut body = BodyRead::Length {
            left: 60_000,
            body: Vec::new(),
        };
        let mut sizes = Vec::new();
        for _ in 0..5 {
            let mut inbuf = vec![b'x'; 16_384];
            assert!(body.make_room(inbuf.len(), &limits, &mut lease));
            let complete = body.feed(&mut inbuf, false, &limits).unwrap();
            let BodyRead::Length { body: buffer, .. } = &body else {
                unreachable!()
            };
            assert!(buffer.capacity() <= lease.bytes, "{} held", lease.bytes);
            sizes.push(lease.bytes);
            if complete {
                break;
            }
        }
        // Doubling, never past the declared 60,000 bytes.
        assert_eq!(sizes, [16_384, 32_768, 60_000, 60_000]);
        assert_eq!(memory.held.load(Ordering::Relaxed), 60_000);
        // A chunked body may not fit: nothing is taken.
        let mut other = BodyLease::new(&memory);
        let mut chunked = BodyRead::Chunked {
            decoder: ChunkedDecoder::default(),
            body: Vec::new(),
        };
        assert!(chunked.make_room(30_000, &limits, &mut other));
        assert!(!chunked.make_room(50_000, &limits, &mut other));
        assert_eq!(
            (other.bytes, memory.held.load(Ordering::Relaxed)),
            (30_000, 90_000)
        );
        assert!(memory.fits(10_000) && !memory.fits(10_001));
        drop(lease);
        drop(other);
        assert_eq!(memory.held.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_streamed_body_arrives_intact_in_chunks_over_http_1_1() {
        for handler in [streaming(100), pulling(100)] {
            let server = Server::start(options(1), handler).unwrap();
            a_body_of_100_lines_arrives_intact(&server);
        }
    }

    fn a_body_of_100_lines_arrives_intact(server: &Server) {
        let text = exchange(
            server,
            b"GET /list HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
        assert!(!head.contains("Content-Length"), "{head}");
        let (decoded, chunks) = dechunk(body);
        assert_eq!(decoded, expected_lines(100));
        assert!(
            chunks >= 6,
            "102,400 bytes in pieces of 16 KiB: {chunks} chunks"
        );
    }

    #[test]
    fn a_pulled_body_whose_client_reads_nothing_holds_no_worker_and_is_cut_at_the_bound() {
        let mut o = options(1);
        o.read_timeout = Duration::from_millis(1500);
        let huge = pulling(1_000_000);
        let handler: Handler = Arc::new(move |r: &Request| {
            if r.path() == "/ok" {
                return Response::json(200, b"{}".to_vec());
            }
            huge.handle(r)
        });
        let server = Server::start(o, handler).unwrap();
        let mut stuck = Vec::new();
        for _ in 0..4 {
            let mut s = connect(&server);
            s.write_all(b"GET /huge HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            stuck.push(s);
        }
        // Four clients that read nothing of a 1 GB body, and the only worker is free: the next
        // request is answered while they still hold their connections.
        thread::sleep(Duration::from_millis(200));
        let asked = Instant::now();
        let mut s = connect(&server);
        s.write_all(b"GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        assert!(read_all(s).starts_with("HTTP/1.1 200 OK"));
        assert!(
            asked.elapsed() < Duration::from_millis(1500),
            "{:?}",
            asked.elapsed()
        );
        // ... and each is cut once it read nothing for read_timeout, the body unfinished.
        thread::sleep(Duration::from_millis(2000));
        for mut s in stuck {
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
            assert!(got.len() < 100_000_000, "{} bytes", got.len());
            assert!(!got.ends_with(b"0\r\n\r\n"), "cut, not ended");
        }
    }

    #[test]
    fn a_pulled_body_that_panics_cuts_its_connection_and_the_server_goes_on() {
        let handler: Handler = Arc::new(move |r: &Request| {
            if r.path() == "/ok" {
                return Response::json(200, b"{}".to_vec());
            }
            let lines = Lines {
                next: 0,
                pieces: 100,
                panic_at: Some(50),
            };
            Response::pull(200, crate::http::JSON, lines)
        });
        let server = Server::start(options(1), handler).unwrap();
        let text = exchange(&server, b"GET /bad HTTP/1.1\r\nHost: t\r\n\r\n");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:.80}");
        // Pieces of 16 lines: those made before the panic are sent.
        assert!(text.contains("0031x"), "{text:.80}");
        assert!(
            !text.contains("0050x") && !text.ends_with("0\r\n\r\n"),
            "then cut"
        );
        let text = exchange(
            &server,
            b"GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    }

    #[test]
    fn a_streamed_body_to_http_1_0_ends_with_the_connection_and_head_gets_none() {
        for handler in [streaming(20), pulling(20)] {
            let server = Server::start(options(1), handler).unwrap();
            a_body_to_http_1_0_ends_with_the_connection_and_head_gets_none(&server);
        }
    }

    fn a_body_to_http_1_0_ends_with_the_connection_and_head_gets_none(server: &Server) {
        let text = exchange(server, b"GET /list HTTP/1.0\r\n\r\n");
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("Connection: close"), "{head}");
        assert!(!head.contains("Transfer-Encoding"), "{head}");
        assert_eq!(body, expected_lines(20));

        let text = exchange(server, b"HEAD /list HTTP/1.1\r\nHost: t\r\n\r\nGET /list HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let (head, rest) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
        // The HEAD answer has no body: the GET answer follows at once.
        assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "{rest:.80}");
    }

    #[test]
    fn a_head_request_over_http_1_0_to_a_stream_gets_no_transfer_encoding() {
        // RFC 9112 §6.1: no Transfer-Encoding in a response to an HTTP/1.0 request.
        for handler in [streaming(3), pulling(3)] {
            let server = Server::start(options(1), handler).unwrap();
            let text = exchange(&server, b"HEAD /list HTTP/1.0\r\n\r\n");
            assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
            assert!(text.contains("Connection: close"), "{text}");
            assert!(!text.contains("Transfer-Encoding"), "{text}");
            assert!(text.ends_with("\r\n\r\n"), "no body: {text}");
        }
    }

    #[test]
    fn a_stream_whose_client_reads_nothing_releases_its_worker_within_the_bound() {
        let mut o = options(1);
        o.read_timeout = Duration::from_millis(300);
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        let handler: Handler = Arc::new(move |r: &Request| {
            if r.path() == "/ok" {
                return Response::json(200, b"{}".to_vec());
            }
            let tx = lock(&tx).clone();
            Response::stream(200, crate::http::JSON, move |w| {
                let result = (0..100_000).try_for_each(|_| w.write_all(&[b'y'; 1024]));
                let _ = tx.send(result.is_err());
                result
            })
        });
        let server = Server::start(o, handler).unwrap();
        let mut stuck = connect(&server);
        stuck
            .write_all(b"GET /huge HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        // The client never reads: the writer fails within about read_timeout of the last take.
        let failed = rx.recv_timeout(5 * SECOND).expect("the stream ended");
        assert!(failed, "the stream was cut");
        let mut s = connect(&server);
        s.write_all(b"GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        assert!(read_all(s).starts_with("HTTP/1.1 200 OK"));
        drop(stuck);
    }

    /// `/slow` is slow ([`RequestHandler::is_slow`]) and waits until `open`; counts how many
    /// run at once.
    struct Gate {
        open: Mutex<bool>,
        opened: Condvar,
        running: AtomicUsize,
        most: AtomicUsize,
    }

    impl RequestHandler for Gate {
        fn handle(&self, request: &Request) -> Response {
            if request.path() == "/slow" {
                let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
                self.most.fetch_max(now, Ordering::SeqCst);
                let mut open = lock(&self.open);
                while !*open {
                    open = wait(&self.opened, open);
                }
                drop(open);
                self.running.fetch_sub(1, Ordering::SeqCst);
            }
            Response::json(200, b"{}".to_vec())
        }

        fn is_slow(&self, request: &Request) -> bool {
            request.path() == "/slow"
        }
    }

    #[test]
    fn slow_requests_run_on_at_most_workers_threads_and_one_more_serves_the_others() {
        let gate = Arc::new(Gate {
            open: Mutex::new(false),
            opened: Condvar::new(),
            running: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
        });
        let handler: Handler = gate.clone();
        let server = Server::start(options(4), handler).unwrap();
        let slow: Vec<TcpStream> = (0..6)
            .map(|_| {
                let mut s = connect(&server);
                s.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                    .unwrap();
                s
            })
            .collect();
        let deadline = Instant::now() + 5 * SECOND;
        while gate.running.load(Ordering::SeqCst) < 4 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        thread::sleep(Duration::from_millis(100));
        // Four workers (`workers = 4`) wait on the slow requests, two of which are queued: the
        // fifth thread serves the others.
        assert_eq!(gate.running.load(Ordering::SeqCst), 4);
        for _ in 0..5 {
            let text = exchange(
                &server,
                b"GET /fast HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            );
            assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        }
        *lock(&gate.open) = true;
        gate.opened.notify_all();
        for s in slow {
            assert!(read_all(s).starts_with("HTTP/1.1 200 OK"));
        }
        assert_eq!(gate.most.load(Ordering::SeqCst), 4, "at most four at once");
    }

    /// Refuses `/private` from its head.
    struct Guarded;

    impl RequestHandler for Guarded {
        fn handle(&self, request: &Request) -> Response {
            let body = format!("{} {}", request.path(), request.body.len());
            Response::json(200, body.into_bytes())
        }

        fn admit(&self, head: &Request) -> Option<Response> {
            (head.path() == "/private").then(|| ApiError::Unauthorized.to_response(ApiStyle::Spec))
        }
    }

    #[test]
    fn a_refused_head_is_answered_before_its_body_and_closes_the_connection() {
        let server = Server::start(options(1), Arc::new(Guarded)).unwrap();
        let mut s = connect(&server);
        // The body is never sent: the answer must not wait for it.
        s.write_all(
            b"POST /private HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap();
        let text = read_all(s);
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(!text.contains("100 Continue"), "{text}");
    }

    #[test]
    fn pipelined_requests_are_answered_in_order_with_their_bodies() {
        let server = Server::start(options(4), Arc::new(Guarded)).unwrap();
        let mut s = connect(&server);
        let mut text = String::new();
        for i in 0..10 {
            text.push_str(&format!(
                "POST /p{i} HTTP/1.1\r\nHost: t\r\nContent-Length: {i}\r\n\r\n{}",
                "b".repeat(i)
            ));
        }
        text.push_str("GET /end HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        s.write_all(text.as_bytes()).unwrap();
        let mut reader = BufReader::new(s);
        for i in 0..10 {
            let mut status = String::new();
            reader.read_line(&mut status).unwrap();
            assert_eq!(status, "HTTP/1.1 200 OK\r\n");
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.strip_prefix("Content-Length: ") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            assert_eq!(String::from_utf8(body).unwrap(), format!("/p{i} {i}"));
        }
    }

    #[test]
    fn requests_received_before_a_half_close_are_all_answered_in_order() {
        let server = Server::start(options(2), Arc::new(Guarded)).unwrap();
        for _ in 0..20 {
            let mut s = connect(&server);
            s.write_all(
                b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\nGET /thr",
            )
            .unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let text = read_all(s);
            let one = text.find("/one 0").expect("the first answer");
            let two = text.find("/two 0").expect("the second answer");
            assert!(one < two, "{text}");
            // The incomplete third head is refused, then the connection closes.
            assert!(text.contains("HTTP/1.1 400 "), "{text}");
            assert_eq!(text.matches("HTTP/1.1 ").count(), 3, "{text}");
        }
    }

    #[test]
    fn a_refused_head_request_gets_the_head_of_the_problem_only() {
        let server = Server::start(options(1), Arc::new(Guarded)).unwrap();
        let text = exchange(&server, b"HEAD /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
        assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
        assert!(text.contains("Content-Length: "), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "no body: {text}");
    }

    #[test]
    fn heads_over_their_bounds_get_431_or_414_and_the_connection_closes() {
        let mut o = options(1);
        o.max_head_bytes = 1024;
        o.max_headers = 8;
        let server = Server::start(o, Arc::new(Guarded)).unwrap();
        let ask = |text: String| exchange(&server, text.as_bytes());
        let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "t".repeat(2000));
        let answer = ask(long_target);
        assert!(answer.starts_with("HTTP/1.1 414 "), "{answer:.200}");
        let big_field = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "v".repeat(1100)
        );
        let answer = ask(big_field);
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer:.200}");
        let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{}\r\n", "X: v\r\n".repeat(8));
        let answer = ask(many);
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer:.200}");
        let fits = ask("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".into());
        assert!(fits.starts_with("HTTP/1.1 200 "), "{fits:.200}");
        let refusal = ask(format!("GET /{} HTTP/1.1\r\n", "t".repeat(2000)));
        assert!(refusal.contains("Server: mec-plugin\r\n"), "{refusal}");
        assert!(refusal.contains("Connection: close\r\n"), "{refusal}");
        assert!(refusal.contains("application/problem+json"), "{refusal}");
    }

    #[test]
    fn past_max_connections_a_new_connection_gets_503_with_retry_after() {
        let mut o = options(1);
        o.max_connections = 2;
        let server = Server::start(o, Arc::new(Guarded)).unwrap();
        let held: Vec<TcpStream> = (0..2).map(|_| connect(&server)).collect();
        std::thread::sleep(Duration::from_millis(100));
        let answer = read_all(connect(&server));
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
        assert!(answer.contains("Retry-After: 1\r\n"), "{answer}");
        drop(held);
        std::thread::sleep(Duration::from_millis(100));
        let mut s = connect(&server);
        s.write_all(b"GET /again HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .unwrap();
        assert!(read_all(s).starts_with("HTTP/1.1 200 "));
    }

    #[test]
    fn an_idle_keep_alive_connection_is_closed_without_a_byte_written() {
        let mut o = options(1);
        o.idle_timeout = Duration::from_millis(200);
        let server = Server::start(o, Arc::new(Guarded)).unwrap();
        let mut s = connect(&server);
        s.write_all(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "HTTP/1.1 200 OK\r\n");
        let started = Instant::now();
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        let rest = String::from_utf8_lossy(&rest);
        // The rest of the first answer, then nothing: no second status line.
        assert!(rest.ends_with("/a 0"), "{rest}");
        assert!(!rest.contains("HTTP/1.1"), "{rest}");
        assert!(started.elapsed() < 3 * SECOND);
    }

    /// Records what [`RequestHandler::answered`] is told: request line, status, time taken.
    #[derive(Default)]
    struct Recorded(Mutex<Vec<(String, u16, Duration)>>);

    impl RequestHandler for Recorded {
        fn handle(&self, _: &Request) -> Response {
            Response::json(200, b"{}".to_vec())
        }

        fn answered(&self, request: &Request, status: u16, took: Duration) {
            let line = format!("{} {}", request.method, request.target);
            lock(&self.0).push((line, status, took));
        }
    }

    /// Found by a hostile-client audit: a head that timed out was logged `- - 408 0 ms` and
    /// counted under route "other", method "OTHER", though its request line had arrived.
    #[test]
    fn a_head_timeout_is_reported_with_its_request_line_and_the_time_since_its_first_byte() {
        let mut o = options(1);
        o.read_timeout = Duration::from_millis(300);
        let handler = Arc::new(Recorded::default());
        let server = Server::start(o, handler.clone()).unwrap();
        for (sent, reported) in [
            (
                &b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Slow: "[..],
                "GET /healthz",
            ),
            (b"POST /a?b HTTP/1.", "POST /a?b"),
            (b"DELETE /cut-sh", "DELETE -"),
        ] {
            lock(&handler.0).clear();
            let answer = exchange(&server, sent);
            assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
            let recorded = lock(&handler.0).clone();
            assert_eq!(recorded.len(), 1, "{recorded:?}");
            let (line, status, took) = &recorded[0];
            assert_eq!((line.as_str(), *status), (reported, 408));
            assert!(*took >= Duration::from_millis(250), "{took:?}");
        }
    }

    #[test]
    fn framing_conflicts_are_refused_and_nothing_smuggled_is_executed() {
        let server = Server::start(options(1), Arc::new(Guarded)).unwrap();
        for framing in [
            "Content-Length: 0\r\nContent-Length: 34",
            "Content-Length: 88x",
            "Transfer-Encoding: chunked\r\nContent-Length: 34",
            "Transfer-Encoding: gzip",
        ] {
            let mut s = connect(&server);
            let text = format!(
                "POST /first HTTP/1.1\r\nHost: a\r\n{framing}\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
            );
            s.write_all(text.as_bytes()).unwrap();
            let answer = read_all(s);
            assert!(answer.starts_with("HTTP/1.1 400 "), "{framing}: {answer}");
            assert_eq!(
                answer.matches("HTTP/1.1 ").count(),
                1,
                "{framing}: {answer}"
            );
            assert!(!answer.contains("/smuggled"), "{framing}: {answer}");
        }
    }

    /// Answers `/fast` and `/stream` on the I/O loop; `/slow` on a worker, once `release` says.
    struct Inline {
        release: Mutex<std::sync::mpsc::Receiver<()>>,
        answered: Mutex<Vec<(String, u16)>>,
    }

    impl RequestHandler for Inline {
        fn handle(&self, _: &Request) -> Response {
            let _ = lock(&self.release).recv_timeout(5 * SECOND);
            Response::json(200, b"slow".to_vec())
        }

        fn handle_inline(&self, request: &Request) -> Option<Response> {
            match request.path() {
                "/fast" => Some(Response::json(200, request.target.clone().into_bytes())),
                "/stream" => Some(streaming(3).handle(request)),
                _ => None,
            }
        }

        fn answered(&self, request: &Request, status: u16, _: Duration) {
            lock(&self.answered).push((format!("{} {}", request.method, request.target), status));
        }
    }

    #[test]
    fn inline_answers_need_no_worker_and_keep_order_head_and_the_report() {
        let (release, rx) = std::sync::mpsc::channel();
        let handler = Arc::new(Inline {
            release: Mutex::new(rx),
            answered: Mutex::new(Vec::new()),
        });
        let server = Server::start(options(1), handler.clone()).unwrap();
        // The only worker is held by /slow ...
        let mut slow = connect(&server);
        slow.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .unwrap();
        thread::sleep(Duration::from_millis(100));
        // ... while pipelined requests answered on the loop come back, in order.
        let text = exchange(
            &server,
            b"GET /fast?1 HTTP/1.1\r\nHost: a\r\n\r\nHEAD /fast?2 HTTP/1.1\r\nHost: a\r\n\r\n\
              GET /fast?3 HTTP/1.0\r\n\r\n",
        );
        let bodies: Vec<&str> = text
            .split("HTTP/1.1 200 OK\r\n")
            .skip(1)
            .map(|answer| answer.split_once("\r\n\r\n").unwrap().1)
            .collect();
        assert_eq!(bodies, ["/fast?1", "", "/fast?3"], "{text}");
        assert!(
            text.contains("Content-Length: 7\r\n\r\nHTTP/1.1"),
            "HEAD: {text}"
        );
        assert!(
            text.ends_with("Connection: close\r\n\r\n/fast?3"),
            "1.0: {text}"
        );
        release.send(()).unwrap();
        assert!(read_all(slow).ends_with("slow"));
        let answered = lock(&handler.answered).clone();
        let fast: Vec<_> = answered
            .iter()
            .filter(|(r, _)| r.contains("fast"))
            .collect();
        assert_eq!(fast.len(), 3, "each answered once: {answered:?}");
        assert_eq!(answered.last().unwrap().0, "GET /slow", "{answered:?}");
    }

    #[test]
    fn a_streamed_answer_made_on_the_loop_is_written_by_a_worker() {
        let (_release, rx) = std::sync::mpsc::channel();
        let handler = Arc::new(Inline {
            release: Mutex::new(rx),
            answered: Mutex::new(Vec::new()),
        });
        let server = Server::start(options(1), handler).unwrap();
        let text = exchange(
            &server,
            b"GET /stream HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
        assert_eq!(dechunk(body).0, expected_lines(3));
    }

    /// Its `answered` panics.
    struct BadCounter;

    impl RequestHandler for BadCounter {
        fn handle(&self, _: &Request) -> Response {
            Response::json(200, b"{}".to_vec())
        }

        fn answered(&self, _: &Request, _: u16, _: Duration) {
            panic!("the counter failed");
        }
    }

    /// Holds the I/O loop in `admit` (the head is read, not yet queued) while the test begins
    /// a shutdown.
    struct SlowAdmit(Mutex<std::sync::mpsc::Sender<()>>);

    impl RequestHandler for SlowAdmit {
        fn handle(&self, _: &Request) -> Response {
            Response::json(200, b"{}".to_vec())
        }

        fn admit(&self, _: &Request) -> Option<Response> {
            let _ = lock(&self.0).send(());
            thread::sleep(Duration::from_millis(300));
            None
        }
    }

    #[test]
    fn a_request_queued_as_the_shutdown_begins_is_still_answered_and_does_not_hold_it() {
        let (tx, rx) = std::sync::mpsc::channel();
        let server = Server::start(options(2), Arc::new(SlowAdmit(Mutex::new(tx)))).unwrap();
        let mut s = connect(&server);
        s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        rx.recv_timeout(5 * SECOND).expect("the head reached admit");
        // The workers see the stop with an empty queue; the request is queued just after.
        let started = Instant::now();
        let stopper = thread::spawn(move || server.shutdown(10 * SECOND));
        let text = read_all(s);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Connection: close"), "{text}");
        stopper.join().unwrap();
        assert!(
            started.elapsed() < 5 * SECOND,
            "the shutdown waited {:?} for a request no worker would take",
            started.elapsed()
        );
    }

    /// The operations review's L4: with the only worker busy past the grace period, a complete
    /// request still queued got no answer at all (its connection closed). It was never
    /// executed: it is answered 503, as a request caught half received.
    #[test]
    fn a_request_still_queued_when_the_grace_period_ends_is_answered_503_not_executed() {
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        let executed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = executed.clone();
        let handler = move |r: &Request| -> Response {
            counted.fetch_add(1, Ordering::SeqCst);
            if r.path() == "/slow" {
                let _ = lock(&tx).send(());
                thread::sleep(3 * SECOND);
            }
            Response::json(200, b"{}".to_vec())
        };
        // One worker and the one more for quick requests ([`worker_threads`]): both busy.
        let server = Server::start(options(1), Arc::new(handler)).unwrap();
        let mut slow = Vec::new();
        for _ in 0..worker_threads(1) {
            let mut s = connect(&server);
            s.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
                .unwrap();
            rx.recv_timeout(5 * SECOND)
                .expect("a worker took the slow request");
            slow.push(s);
        }
        let mut queued = connect(&server);
        queued
            .write_all(b"DELETE /queued HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        thread::sleep(Duration::from_millis(100)); // read and queued by its loop
        let started = Instant::now();
        let stopper = thread::spawn(move || server.shutdown(Duration::from_millis(300)));
        let text = read_all(queued);
        assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
        assert!(text.contains("Connection: close"), "{text}");
        assert!(text.contains("was not executed"), "{text}");
        assert!(started.elapsed() < 2 * SECOND, "{:?}", started.elapsed());
        stopper.join().unwrap();
        assert_eq!(executed.load(Ordering::SeqCst), 2, "only the slow ones ran");
        drop(slow);
    }

    #[test]
    fn a_panic_outside_the_handler_still_answers_500_and_closes() {
        let server = Server::start(options(1), Arc::new(BadCounter)).unwrap();
        for _ in 0..2 {
            let text = exchange(&server, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
            assert!(text.starts_with("HTTP/1.1 500 "), "{text}");
            assert!(text.contains("Connection: close"), "{text}");
        }
    }

    #[test]
    fn a_panicking_handler_becomes_a_500_problem() {
        let handler: Handler = Arc::new(|_: &Request| -> Response { panic!("boom") });
        let response = call_handler(&handler, &Request::new("GET", "/x"), ApiStyle::Spec);
        assert_eq!(response.status, 500);
        assert_eq!(response.content_type, crate::http::PROBLEM_JSON);
        assert!(!String::from_utf8_lossy(&response.body).contains("boom"));
    }

    #[test]
    fn head_and_no_content_responses_carry_no_body() {
        let r = Response::json(200, b"{\"a\":1}".to_vec());
        let text = String::from_utf8(render(&r, true, false)).unwrap();
        assert!(text.contains("Content-Length: 7\r\n") && text.ends_with("\r\n\r\n"));
        let r = Response::json(204, b"ignored".to_vec());
        let text = String::from_utf8(render(&r, false, false)).unwrap();
        assert!(!text.contains("Content-Length") && text.ends_with("\r\n\r\n"));
        assert_eq!(http_date().len(), 29, "{}", http_date());
    }

    #[test]
    fn the_log_budget_admits_per_s_lines_a_second_below_500_and_every_5xx() {
        log::set_max_level(log::LevelFilter::Info);
        let budget = LogBudget::new(3);
        let t0 = budget.epoch;
        let admitted = |status, at| budget.admit(status, t0 + at);
        let lines: Vec<bool> = (0..5).map(|_| admitted(404, Duration::ZERO)).collect();
        assert_eq!(lines, [true, true, true, false, false]);
        assert!(admitted(503, Duration::ZERO) && admitted(500, Duration::ZERO));
        assert!(!admitted(200, Duration::from_millis(999)));
        let left: Vec<u64> = budget
            .left_out
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect();
        assert_eq!(left, [0, 1, 0, 2]);
        assert_eq!(budget.summary_due(), Some(t0 + SECOND));
        // The next second: the summary is written (and the counts taken) by its first line.
        assert!(admitted(404, SECOND));
        assert!(
            budget
                .left_out
                .iter()
                .all(|n| n.load(Ordering::Relaxed) == 0)
        );
        assert_eq!(budget.summary_due(), None);
        // A flood that stops: an I/O loop's turn writes its summary.
        for _ in 0..4 {
            admitted(404, SECOND);
        }
        budget.tick(t0 + 2 * SECOND);
        assert_eq!(budget.summary_due(), None);
        assert!(
            budget
                .left_out
                .iter()
                .all(|n| n.load(Ordering::Relaxed) == 0)
        );
        // 0: no request lines at all, but every 5xx.
        let none = LogBudget::new(0);
        assert!(!none.admit(200, t0) && none.admit(500, t0));
        assert_eq!(none.summary_due(), None);
    }

    #[test]
    fn options_come_from_the_server_section() {
        let c = ServerConfig {
            workers: 3,
            max_head_bytes: 2048,
            max_headers: 20,
            max_connections: 7,
            idle_timeout: Duration::from_millis(1500),
            ..ServerConfig::default()
        };
        let o = Options::from_config(&c);
        assert_eq!(o.workers, 3);
        assert_eq!(
            (o.max_head_bytes, o.max_headers, o.max_connections),
            (2048, 20, 7)
        );
        assert_eq!(o.idle_timeout, Duration::from_millis(1500));
        assert_eq!(o.listen, c.listen);
        assert_eq!(o.read_timeout, c.read_timeout);
        assert_eq!(o.max_body_bytes, c.max_body_bytes);
        assert_eq!(o.api_style, c.api_style);
        assert!(o.tls.is_none());
    }

    #[test]
    fn accept_interruptions_are_retried_and_descriptor_exhaustion_backs_off() {
        assert_eq!(
            classify_accept_error(&io::ErrorKind::ConnectionAborted.into()),
            AcceptError::Retry
        );
        assert_eq!(
            classify_accept_error(&io::Error::from_raw_os_error(libc::EMFILE)),
            AcceptError::Exhausted
        );
        assert_eq!(
            classify_accept_error(&io::Error::from_raw_os_error(libc::ENFILE)),
            AcceptError::Exhausted
        );
        assert_eq!(
            classify_accept_error(&io::Error::from_raw_os_error(libc::EINVAL)),
            AcceptError::Other
        );
    }

    #[test]
    fn the_server_and_its_shutdown_handle_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Server>();
        shareable::<ShutdownHandle>();
    }
}
