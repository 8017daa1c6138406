//! The hardened HTTP front end: owns the listening socket, the accept loop, the worker threads
//! that turn `tiny_http_fork` requests into [`crate::http`] values (reading bodies under a size
//! and a time bound) and back, and every defence against slow, hostile or broken clients.
//!
//! # Design
//!
//! **Accept loop.** `tiny_http_fork::Server::from_listener` runs an accept thread that ends for
//! good on the first accept error (an `SO_RCVTIMEO` expiry on an idle listener, `EMFILE`), can
//! die silently by panic (`try_clone().unwrap()` when descriptors run out) and cannot be stopped
//! (its `Drop` leaves the listener accepting). Keeping that alive would need a watchdog that
//! connects to ourselves, a supervisor re-creating servers with back-off, and old servers to
//! drain. Instead we run the same loop ourselves with the crate's public building blocks
//! (`Server::accept_connection`, `Server::new_client`, `util::TaskPool`, `util::MessagesQueue`):
//! accept time-outs are simply retried, resource errors (`EMFILE`, `ENFILE`, `ENOBUFS`,
//! `ENOMEM`) and panics inside the crate's accept path are caught and retried with a back-off
//! (100 ms doubling to 1 s, interruptible by shutdown), and the loop ends when we stop it. So no
//! watchdog, no supervisor, no re-created servers, and no window in which nothing accepts.
//!
//! **Timeouts.** `SO_RCVTIMEO`/`SO_SNDTIMEO` = `read_timeout` are set on the listening socket
//! with `setsockopt` (std cannot); on Linux accepted sockets inherit them, so idle keep-alive
//! connections, stalled headers, stalled bodies and clients that do not read their response are
//! all cut after `read_timeout`. A whole body must also arrive within `read_timeout` in total
//! (elapsed time is checked after every read), so a trickling client releases its worker within
//! about 2 × `read_timeout`.
//!
//! **Refused requests and the drain.** A request answered without reading its whole body (413,
//! 408, 400) leaves bytes on the connection; `tiny_http_fork` reads and discards them when the
//! request is dropped, i.e. at the end of `respond()`, for as long as the client keeps sending.
//! Such requests are therefore answered on a short-lived detached "drain" thread (at most
//! [`MAX_DRAIN_THREADS`] at once; beyond that the worker answers itself), and every drain is
//! registered with a reaper that shuts the connection down (`shutdown(2)`, found by its address
//! pair in `/proc/self/fd`) once it has drained for `read_timeout`, which makes the crate's
//! drain read EOF and end. So a drain, on whatever thread, lasts at most about `read_timeout`
//! plus one reaper tick. (`Connection: close` cannot be added: the crate drops any `Connection`
//! header from responses; the cut connection has the same effect.) Refused or not, every
//! answered request gets one log line and is reported once to the handler
//! ([`RequestHandler::answered`], where the API counts its metrics), before its response is
//! written. (Bodies of at most 1 KiB are read by the crate before it hands the request over;
//! when one of those is cut short, the crate answers a bare 400 itself and we never see it.)
//!
//! **Bursts.** `connection_threads` is the pool's `min_threads`. The legacy pool serves each
//! connection on one thread for its whole keep-alive life and, when it believes threads are
//! idle (woken but not yet running), queues a new connection instead of starting a thread; a
//! queued connection then waits until some other connection ends. A burst of N simultaneous
//! keep-alive connections is served at once only if `min_threads` >= N; larger bursts wait at
//! most until idle connections time out (`read_timeout`). What counts is the pool threads free
//! when the burst arrives: connections held open (idle keep-alive, stalled clients) occupy
//! threads, so a burst larger than the free threads can leave a few connections queued until an
//! open connection ends (seen on 2 cores with 400 connections held open, the default 128
//! threads and a burst of 64 TLS connections: 6 queued, in about one run in five).
//!
//! **Backlog.** std listens with a backlog of 128; a flood of connections faster than the accept
//! loop overflows it and the kernel drops handshakes, which costs the clients a 1 s SYN
//! retransmission. The backlog is raised to [`LISTEN_BACKLOG`] (capped by
//! `net.core.somaxconn`).
//!
//! **TLS.** With [`Options::tls`] the listener speaks HTTPS only, through the crate's rustls
//! support and the same accept loop. `accept_connection` only wraps the accepted socket in a
//! rustls server connection (no I/O); the handshake happens at the first read, on the
//! connection thread, under the socket timeouts inherited from the listener. A client that never
//! sends its ClientHello, or stops half-way through it, therefore holds only its own connection
//! thread, and for at most about 3 × `read_timeout` (the read that times out, then the crate's
//! attempt to answer 400, which rustls turns into more handshake reads under the same timeout);
//! one that trickles its handshake byte by byte is bounded per read, not in total, exactly like
//! one trickling a plain request head. Plain HTTP on the TLS port fails the handshake: the client
//! gets a TLS alert and the connection is closed within `read_timeout`. After the handshake
//! every defence above applies unchanged: the reaper and the shutdown cut connections with
//! `shutdown(2)` on the TCP socket found in `/proc/self/fd`, which works under TLS and never
//! waits for the lock rustls streams share between their read and write halves. Unlike plain
//! ones, the crate reads a TLS connection's next request only once the previous one has been
//! answered, and a TLS connection costs one descriptor instead of two. The crate panics on a
//! key it cannot parse, so [`Server::start`] first checks the key with the very parser the crate
//! unwraps, then the chain and the key together with the rustls configuration the crate builds
//! (which rejects a key that is not the certificate's); any problem is an error naming
//! `tls_cert` or `tls_key`. Two rustls crypto providers are compiled in (ring through ureq,
//! aws-lc-rs through tiny_http_fork), between which rustls will not choose, so ring is installed
//! as the process-wide provider first.
//!
//! **Shutdown.** Stops the accept loop and shuts the listening socket (new connections are
//! refused at once), lets workers finish the requests they have and the ones already queued
//! (bounded by the grace period), then shuts every remaining connection of this server down.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{self, Cursor, Read};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tiny_http_fork::util::{MessagesQueue, TaskPool};
use tiny_http_fork::{Header, Headers, Listener, Message, SslConfig, SslContextWrap, StatusCode};

use crate::config::{ServerConfig, TlsFiles};
use crate::error::ApiError;
use crate::http::{Request, Response};
use crate::model::ApiStyle;

type TinyRequest = tiny_http_fork::Request;
type TinyResponse = tiny_http_fork::Response<Cursor<Vec<u8>>>;

/// Most refused requests answered (and drained) on their own threads at once.
pub const MAX_DRAIN_THREADS: usize = 64;
/// Stack of a drain thread: it only writes a small response and reads into a 4 KiB buffer.
const DRAIN_STACK_BYTES: usize = 256 * 1024;
/// First pause after an accept failure; doubled up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(100);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Smallest socket timeout we set (zero would mean "no timeout" to the kernel).
const MIN_TIMEOUT: Duration = Duration::from_millis(10);
/// Connections the kernel queues for the accept loop (see "Backlog" in the module docs).
pub const LISTEN_BACKLOG: libc::c_int = 1024;
/// Size of one body read.
const READ_CHUNK: usize = 8 * 1024;

/// How the server listens and bounds its clients.
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    /// Request-handling threads (at least 1).
    pub workers: usize,
    /// Connection threads kept ready (the pool's `min_threads`, see the module docs).
    pub connection_threads: usize,
    /// Bound on each socket read and write, on a whole request body, and on an idle
    /// keep-alive connection.
    pub read_timeout: Duration,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Spelling of the problem responses this module builds.
    pub api_style: ApiStyle,
    /// Certificate chain and key: when set, the listener speaks HTTPS only (see "TLS" in the
    /// module docs); checked by [`Server::start`].
    pub tls: Option<TlsFiles>,
}

impl Options {
    /// The options of the `[server]` section.
    pub fn from_config(c: &ServerConfig) -> Options {
        Options {
            listen: c.listen,
            workers: c.workers,
            connection_threads: c.connection_threads,
            read_timeout: c.read_timeout,
            max_body_bytes: c.max_body_bytes,
            api_style: c.api_style,
            tls: c.tls.clone(),
        }
    }
}

/// What answers requests: a pure function of the request (the body already read), told of every
/// request the server answers. A closure `Fn(&Request) -> Response` is one that ignores the
/// news.
pub trait RequestHandler: Send + Sync {
    /// The response to a request whose body was read in full.
    fn handle(&self, request: &Request) -> Response;

    /// Called exactly once for every request answered, just before its response is written:
    /// those [`handle`](Self::handle) answered and those the server answered itself (a body
    /// refused with 413, 408 or 400, whose `request.body` is then empty; a panic of `handle`,
    /// answered 500). `took` runs from the request head to the response being ready.
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

/// A running server; see the module docs. Dropping it stops it with no grace period.
pub struct Server {
    shared: Arc<Shared>,
    /// The original listening socket; the accept loop owns a duplicate.
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

/// What the accept loop, the workers, the reaper and the drain threads share.
struct Shared {
    handler: Handler,
    max_body_bytes: usize,
    read_timeout: Duration,
    api_style: ApiStyle,
    local_addr: SocketAddr,
    /// Requests and connection errors from the connection threads, in arrival order.
    queue: MessagesQueue<Message>,
    /// Set once by `stop`: the accept loop and the reaper end, workers stop waiting.
    stopping: Signal,
    /// Threads of this server still running (accept loop, reaper, workers).
    running: Counter,
    drains: Drains,
}

impl Server {
    /// Binds, starts accepting and `workers` handler threads; returns once listening. With
    /// [`Options::tls`], the certificate chain and key are checked first: an unusable one is an
    /// `InvalidInput` error naming `tls_cert` or `tls_key`.
    pub fn start(options: Options, handler: Handler) -> io::Result<Server> {
        let workers = options.workers.max(1);
        let read_timeout = options.read_timeout.max(MIN_TIMEOUT);
        // Before binding: a certificate or key problem is reported without ever listening.
        let ssl = tls_context(options.tls.as_ref())?;
        let tls = options.tls.is_some();
        let listener = TcpListener::bind(options.listen)?;
        set_listener_options(&listener, read_timeout)?;
        let local_addr = listener.local_addr()?;
        let accept_listener = listener.try_clone()?;
        let connection_threads = options.connection_threads.max(1);
        // `min_threads` of the crate's pool: enough ready threads for a burst of that many
        // keep-alive connections (see "Bursts" in the module docs).
        let pool = new_pool(connection_threads)?;

        let shared = Arc::new(Shared {
            handler,
            max_body_bytes: options.max_body_bytes,
            read_timeout,
            api_style: options.api_style,
            local_addr,
            queue: MessagesQueue::with_capacity(64),
            stopping: Signal::default(),
            running: Counter::default(),
            drains: Drains::default(),
        });
        let mut server = Server {
            shared: Arc::clone(&shared),
            listener: Some(listener),
            shutdown: ShutdownHandle {
                requested: Arc::new(Signal::default()),
            },
            threads: Vec::with_capacity(workers + 2),
            workers,
            tls,
        };
        // On an error below, dropping `server` stops whatever was started.
        server.spawn("http-accept".into(), {
            let shared = Arc::clone(&shared);
            move || accept_loop(&shared, accept_listener, &ssl, pool, connection_threads)
        })?;
        server.spawn("http-reaper".into(), {
            let shared = Arc::clone(&shared);
            move || reaper_loop(&shared)
        })?;
        for i in 0..workers {
            server.spawn(format!("http-worker-{i}"), {
                let shared = Arc::clone(&shared);
                move || worker_loop(&shared)
            })?;
        }
        log::info!(
            "listening on {}://{local_addr} ({workers} workers, \
             {connection_threads} connection threads, read timeout {} ms, body limit {} bytes)",
            server.scheme(),
            read_timeout.as_millis(),
            options.max_body_bytes
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
        self.shared.stopping.set();
        // Refuse new connections right away and wake the accept loop: on Linux, shutting the
        // read side of a listening socket closes its queue (pending and new connections get a
        // reset) and makes a blocked accept() fail.
        // SAFETY: `listener` is an open socket owned here; shutdown(2) takes no pointers.
        unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RD) };
        drop(listener);
        // Wake the workers blocked waiting for a request; busy ones notice `stopping` when done.
        // A wake-up is a marker in the queue that `pop` and `try_pop` both consume, and a
        // worker consumes at most two (one in `pop`, one in its last `try_pop`), so two per
        // worker leave one for every worker still blocked.
        for _ in 0..2 * self.workers {
            let _ = self.shared.queue.unblock();
        }
        let all_ended = self.shared.running.wait_zero_until(deadline);

        // Idle keep-alive connections (and any request that outlived the grace period) are cut
        // now rather than after `read_timeout`.
        let ours = self.shared.local_addr;
        let cut = abort_connections(|local, _| same_listener(ours, local));
        // Requests that arrived after the workers left are dropped unanswered (the crate
        // writes an empty 500 into the socket, shut above). Dropping one may drain its body,
        // so that happens off this thread. Each `None` is an unconsumed wake-up marker or the
        // end of the queue.
        let mut leftovers = Vec::new();
        let mut ends = 0;
        while ends <= 2 * self.workers {
            match self.shared.queue.try_pop() {
                Ok(Some(message)) => leftovers.push(message),
                _ => ends += 1,
            }
        }
        if !leftovers.is_empty() {
            log::debug!(
                "dropping {} requests that arrived during shutdown",
                leftovers.len()
            );
            // If the thread cannot start, the closure (and the requests) drop right here.
            let _ = thread::Builder::new()
                .name("http-leftovers".into())
                .stack_size(DRAIN_STACK_BYTES)
                .spawn(move || drop(leftovers));
        }

        let mut detached = 0;
        for handle in self.threads.drain(..) {
            // Once all ended, every thread is past its handler but may still hold the
            // handler (and through it the service and its state directory) for a moment:
            // joined, so that the state is released when this returns.
            if all_ended || handle.is_finished() {
                let _ = handle.join();
            } else {
                detached += 1; // still inside a handler past the grace period
            }
        }
        if all_ended {
            log::info!("server on {ours} stopped ({cut} connections closed)");
        } else {
            log::warn!(
                "server on {ours} stopped after its {} ms grace period with {detached} threads \
                 still busy (left to finish on their own; {cut} connections closed)",
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

fn new_pool(min_threads: usize) -> io::Result<TaskPool> {
    // TaskPool::new spawns its threads with thread::spawn, which panics when the OS refuses.
    panic::catch_unwind(|| TaskPool::new(Some(min_threads), None))
        .unwrap_or_else(|_| Err(io::Error::other("cannot start the connection threads")))
}

// ---------------------------------------------------------------------------------------------
// Accept loop

/// Accepts connections until `stopping`, handing each to a pool thread that parses requests
/// into `shared.queue`. Never ends because of an accept error.
fn accept_loop(
    shared: &Shared,
    listener: TcpListener,
    ssl: &SslContextWrap,
    mut pool: TaskPool,
    min_threads: usize,
) {
    let listener = Listener::from(listener);
    let sender = shared.queue.create_sender();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut exhausted = false; // inside an episode of resource exhaustion (logged once)
    while !shared.stopping.is_set() {
        let accepted = panic::catch_unwind(AssertUnwindSafe(|| {
            // With TLS this only wraps the socket (no I/O): the handshake happens on the
            // connection thread, at its first read.
            tiny_http_fork::Server::accept_connection(&listener, ssl)
        }));
        let pause = match accepted {
            Ok(Ok(Some(client))) => {
                if exhausted {
                    log::info!("accepting connections again");
                    exhausted = false;
                }
                backoff = ACCEPT_BACKOFF_MIN;
                let handed = panic::catch_unwind(AssertUnwindSafe(|| {
                    tiny_http_fork::Server::new_client(Ok(Some(client)), sender.clone(), &pool)
                }));
                match handed {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => {
                        log::warn!("cannot serve an accepted connection: {e}");
                        None
                    }
                    Err(_) => {
                        // A thread could not be created while the pool's queue lock was held:
                        // that lock is poisoned, so the pool is unusable. Start a new one.
                        log::error!("the connection thread pool failed; starting a new one");
                        if let Ok(fresh) = new_pool(min_threads) {
                            pool = fresh;
                        }
                        Some(backoff)
                    }
                }
            }
            Ok(Ok(None)) => None,
            Ok(Err(e)) => match classify_accept_error(&e) {
                AcceptError::Retry => None,
                AcceptError::Exhausted => {
                    if !exhausted {
                        log::warn!("cannot accept connections ({e}); retrying with back-off");
                        exhausted = true;
                    }
                    Some(backoff)
                }
                AcceptError::Other if shared.stopping.is_set() => None,
                AcceptError::Other => {
                    if backoff == ACCEPT_BACKOFF_MIN {
                        log::error!("accept failed: {e}; retrying with back-off");
                    } else {
                        log::debug!("accept failed again: {e}");
                    }
                    Some(backoff)
                }
            },
            Err(_) => {
                // The crate panics (try_clone().unwrap()) when the descriptor for the second
                // half of an accepted connection cannot be created: descriptors ran out.
                if !exhausted {
                    log::warn!(
                        "cannot set up an accepted connection (out of file descriptors?); \
                         retrying with back-off"
                    );
                    exhausted = true;
                }
                Some(backoff)
            }
        };
        if let Some(pause) = pause {
            if shared.stopping.wait_timeout(pause) {
                break;
            }
            backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
        }
    }
    log::debug!("accept loop on {} ended", shared.local_addr);
}

#[derive(Debug, PartialEq)]
enum AcceptError {
    /// Nothing wrong with the listener: the `SO_RCVTIMEO` expiry, a signal, a connection that
    /// went away before it was accepted, or a network error Linux passes through accept(2).
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

// ---------------------------------------------------------------------------------------------
// TLS

/// The crate's TLS context: none for plain HTTP, else one built from `tls` once we have checked
/// it ourselves. The crate parses the key with `unwrap` (a key it cannot read would panic), so
/// the key is first run through that very parser (`PrivateKeyDer::from_pem_slice`), then the
/// chain and the key through the rustls configuration the crate builds, which also rejects a
/// key that is not the certificate's.
fn tls_context(tls: Option<&TlsFiles>) -> io::Result<SslContextWrap> {
    let Some(tls) = tls else {
        return SslContextWrap::build_ssl_capabilities(None).map_err(io::Error::other);
    };
    install_crypto_provider();
    let key = tls.key_pem.expose().as_bytes();
    let chain = CertificateDer::pem_slice_iter(&tls.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            bad_tls(format!(
                "[server] tls_cert: the PEM certificate chain cannot be read: {e}"
            ))
        })?;
    if chain.is_empty() {
        return Err(bad_tls("[server] tls_cert: no PEM certificate".into()));
    }
    let private_key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
        bad_tls(format!(
            "[server] tls_key: no usable private key (PEM PKCS#8, PKCS#1 or SEC1 expected): {e}"
        ))
    })?;
    if let Some(provider) = rustls::crypto::CryptoProvider::get_default() {
        provider
            .key_provider
            .load_private_key(private_key.clone_key())
            .map_err(|e| bad_tls(format!("[server] tls_key: unusable private key: {e}")))?;
    }
    rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => bad_tls(
                "[server] tls_key is not the key of the first certificate in tls_cert".into(),
            ),
            e => bad_tls(format!(
                "[server] tls_cert and tls_key cannot be used together: {e}"
            )),
        })?;
    let config = SslConfig {
        certificate: tls.cert_pem.clone(),
        private_key: key.to_vec(), // zeroized by the crate when dropped
    };
    // Checked above, so neither an error nor a panic is expected; both are reported anyway.
    match panic::catch_unwind(|| SslContextWrap::build_ssl_capabilities(Some(config))) {
        Ok(Ok(ssl)) => Ok(ssl),
        Ok(Err(e)) => Err(bad_tls(format!("[server] tls_cert/tls_key: {e}"))),
        Err(_) => Err(bad_tls(
            "[server] tls_cert/tls_key: the TLS set-up failed".into(),
        )),
    }
}

/// Makes ring the process-wide rustls crypto provider. Two providers are compiled in (ring
/// through ureq, aws-lc-rs through tiny_http_fork's rustls), and with two rustls cannot choose
/// one: building any configuration without an installed provider panics. A provider installed
/// earlier (by anyone) is kept.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn bad_tls(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

// ---------------------------------------------------------------------------------------------
// Workers

fn worker_loop(shared: &Arc<Shared>) {
    loop {
        let message = if shared.stopping.is_set() {
            // Finish what is already queued, then leave.
            match shared.queue.try_pop() {
                Ok(Some(message)) => message,
                _ => break,
            }
        } else {
            match shared.queue.pop() {
                Ok(Some(message)) => message,
                Ok(None) => continue, // woken by `stop`
                Err(e) => {
                    log::error!("request queue failed: {e}");
                    break;
                }
            }
        };
        match message {
            Message::NewRequest(rq) => {
                // `handle` catches handler panics itself; this only guards our own code. If it
                // fires, the crate answers the dropped request with an empty 500.
                if panic::catch_unwind(AssertUnwindSafe(|| handle(shared, rq))).is_err() {
                    log::error!("request handling failed outside the handler");
                }
            }
            Message::ReaderError(e) => {
                log::debug!("connection ended with a read error (the HTTP layer answered it): {e}");
            }
            Message::ErrorIo(e) => log::debug!("connection error: {e}"),
        }
    }
}

/// Reads the body under the bounds, calls the handler, writes the response; every request
/// answered is logged and told to the handler once, in [`answered`].
fn handle(shared: &Arc<Shared>, mut rq: TinyRequest) {
    let started = Instant::now();
    let mut request = request_head(&rq);
    let limit = shared.max_body_bytes;
    let body = match rq.body_length() {
        Some(declared) if declared > limit => Err(ApiError::PayloadTooLarge { limit }),
        declared => read_body(rq.as_reader(), limit, declared, shared.read_timeout)
            .map_err(|e| e.into_api_error(limit)),
    };
    match body {
        Ok(body) => {
            request.body = body;
            let response = call_handler(&shared.handler, &request, shared.api_style);
            answered(shared, &request, response.status, started);
            if let Err(e) = rq.respond(to_tiny_response(response)) {
                log::debug!(
                    "{} {}: response not delivered: {e}",
                    request.method,
                    request.path()
                );
            }
        }
        Err(error) => {
            let response = error.to_response(shared.api_style);
            answered(shared, &request, response.status, started);
            refuse(shared, rq, to_tiny_response(response));
        }
    }
}

/// Logs one line for an answered request and tells the handler (which counts it in the
/// metrics). Before the response is written, so that a client that has read it finds it
/// counted.
fn answered(shared: &Shared, request: &Request, status: u16, started: Instant) {
    let took = started.elapsed();
    log::info!(
        "{} {} {} {} ms",
        request.method,
        request.path(),
        status,
        took.as_millis()
    );
    shared.handler.answered(request, status, took);
}

/// The request line and the headers the API uses; the body is read separately.
fn request_head(rq: &TinyRequest) -> Request {
    let header = |name: &str| rq.headers().get(name).map(|v| v.as_str().to_string());
    Request {
        method: rq.method().as_str().to_ascii_uppercase(),
        target: rq.url().to_string(),
        content_type: header("Content-Type"),
        authorization: header("Authorization"),
        body: Vec::new(),
    }
}

/// Calls the handler; a panic becomes a logged 500 problem response.
fn call_handler(handler: &Handler, request: &Request, style: ApiStyle) -> Response {
    match panic::catch_unwind(AssertUnwindSafe(|| handler.handle(request))) {
        Ok(response) => response,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            log::error!(
                "handler panicked on {} {}: {what}",
                request.method,
                request.path()
            );
            ApiError::Internal {
                detail: "an internal error occurred while handling the request".into(),
            }
            .to_response(style)
        }
    }
}

fn to_tiny_response(response: Response) -> TinyResponse {
    let mut headers = Vec::with_capacity(response.headers.len() + 2);
    let mut add = |name: &str, value: &str| match Header::from_str(name, value) {
        Ok(h) => headers.push(h),
        Err(e) => log::warn!("response header {name} dropped: {e}"),
    };
    add("Server", "mec-plugin");
    add("Content-Type", response.content_type);
    for (name, value) in &response.headers {
        add(name, value);
    }
    let length = response.body.len();
    tiny_http_fork::Response::new(
        StatusCode(response.status),
        Headers::from(headers),
        Cursor::new(response.body),
        Some(length),
        None,
    )
}

// ---------------------------------------------------------------------------------------------
// Bounded body reading

/// Why a body was not accepted.
#[derive(Debug)]
enum BodyError {
    /// More than the limit arrived (or was declared).
    TooLarge,
    /// The whole body took longer than the time bound, or one read hit the socket timeout.
    TimedOut,
    /// The connection ended before the declared length.
    Incomplete { received: usize, declared: usize },
    /// Any other read failure (e.g. malformed chunked encoding).
    Io(io::Error),
}

impl BodyError {
    fn into_api_error(self, limit: usize) -> ApiError {
        match self {
            BodyError::TooLarge => ApiError::PayloadTooLarge { limit },
            BodyError::TimedOut => ApiError::BodyTimeout,
            BodyError::Incomplete { received, declared } => ApiError::BadRequest {
                detail: format!(
                    "the connection ended after {received} of the {declared} declared body bytes"
                ),
            },
            BodyError::Io(e) => ApiError::BadRequest {
                detail: format!("the request body could not be read: {e}"),
            },
        }
    }
}

/// Reads a whole body of at most `limit` bytes within `timeout` in total. `declared` is the
/// `Content-Length` if any: reading stops as soon as that much arrived (so nothing is left on
/// the connection). Elapsed time is checked after every read; a single read is bounded by the
/// socket's own timeout, which shows up as `WouldBlock`/`TimedOut`.
fn read_body<R: Read + ?Sized>(
    reader: &mut R,
    limit: usize,
    declared: Option<usize>,
    timeout: Duration,
) -> Result<Vec<u8>, BodyError> {
    let started = Instant::now();
    let mut body = Vec::with_capacity(declared.unwrap_or(0).min(limit).min(64 * 1024));
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        if declared == Some(body.len()) {
            return Ok(body);
        }
        let want = (limit + 1 - body.len()).min(chunk.len());
        match reader.read(&mut chunk[..want]) {
            Ok(0) => {
                return match declared {
                    Some(declared) => Err(BodyError::Incomplete {
                        received: body.len(),
                        declared,
                    }),
                    None => Ok(body),
                };
            }
            Ok(n) => {
                body.extend_from_slice(&chunk[..n]);
                if body.len() > limit {
                    return Err(BodyError::TooLarge);
                }
                if declared != Some(body.len()) && started.elapsed() > timeout {
                    return Err(BodyError::TimedOut);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(BodyError::TimedOut);
            }
            Err(e) => return Err(BodyError::Io(e)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Refused requests: answered and drained off the workers, cut by the reaper

/// Drain threads running and drains in progress (on any thread), for the reaper.
#[derive(Default)]
struct Drains {
    threads: AtomicUsize,
    next_id: AtomicU64,
    active: Mutex<HashMap<u64, Drain>>,
}

struct Drain {
    peer: SocketAddr,
    since: Instant,
    cut: bool,
}

/// Answers a request whose body was not read in full. The crate reads the rest of the body
/// when the request is dropped (at the end of `respond`), for as long as the client sends, so
/// this runs on a detached thread (at most [`MAX_DRAIN_THREADS`]; beyond that, on the caller's
/// thread) and is registered with the reaper, which cuts the connection after `read_timeout`.
fn refuse(shared: &Arc<Shared>, rq: TinyRequest, response: TinyResponse) {
    let claimed = shared
        .drains
        .threads
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_DRAIN_THREADS).then_some(n + 1)
        })
        .is_ok();
    if !claimed {
        log::debug!("{MAX_DRAIN_THREADS} drain threads busy; answering on the worker");
        respond_and_drain(shared, rq, response);
        return;
    }
    // The job is shared so that it can be taken back if the thread cannot be started.
    let job = Arc::new(Mutex::new(Some((rq, response))));
    let spawned = thread::Builder::new()
        .name("http-drain".into())
        .stack_size(DRAIN_STACK_BYTES)
        .spawn({
            let job = Arc::clone(&job);
            let shared = Arc::clone(shared);
            move || {
                let _slot = DrainSlot(&shared.drains.threads);
                let job = lock(&job).take();
                if let Some((rq, response)) = job {
                    respond_and_drain(&shared, rq, response);
                }
            }
        });
    if let Err(e) = spawned {
        shared.drains.threads.fetch_sub(1, Ordering::AcqRel);
        log::warn!("cannot start a drain thread ({e}); answering on the worker");
        let job = lock(&job).take();
        if let Some((rq, response)) = job {
            respond_and_drain(shared, rq, response);
        }
    }
}

fn respond_and_drain(shared: &Shared, rq: TinyRequest, response: TinyResponse) {
    let _registered = rq
        .remote_addr()
        .map(|peer| DrainRegistration::new(&shared.drains, *peer));
    if let Err(e) = rq.respond(response) {
        log::debug!("refusal not delivered: {e}");
    }
}

/// Releases a drain-thread slot, even if the drain panics.
struct DrainSlot<'a>(&'a AtomicUsize);

impl Drop for DrainSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Keeps a drain visible to the reaper while it runs.
struct DrainRegistration<'a> {
    drains: &'a Drains,
    id: u64,
}

impl<'a> DrainRegistration<'a> {
    fn new(drains: &'a Drains, peer: SocketAddr) -> Self {
        let id = drains.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&drains.active).insert(
            id,
            Drain {
                peer,
                since: Instant::now(),
                cut: false,
            },
        );
        DrainRegistration { drains, id }
    }
}

impl Drop for DrainRegistration<'_> {
    fn drop(&mut self) {
        lock(&self.drains.active).remove(&self.id);
    }
}

/// Every tick, cuts the connections of drains older than `read_timeout`.
fn reaper_loop(shared: &Shared) {
    let tick = (shared.read_timeout / 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
    while !shared.stopping.wait_timeout(tick) {
        let overdue: HashSet<SocketAddr> = lock(&shared.drains.active)
            .values_mut()
            .filter(|d| !d.cut && d.since.elapsed() >= shared.read_timeout)
            .map(|d| {
                d.cut = true;
                d.peer
            })
            .collect();
        if !overdue.is_empty() {
            let ours = shared.local_addr;
            let cut = abort_connections(|local, peer| {
                same_listener(ours, local) && overdue.contains(&peer)
            });
            log::debug!(
                "cut {cut} connections still sending a refused body after {:?}",
                shared.read_timeout
            );
        }
    }
}

/// Whether `local` (the local address of an accepted socket) belongs to the listener `ours`.
fn same_listener(ours: SocketAddr, local: SocketAddr) -> bool {
    local.port() == ours.port() && (ours.ip().is_unspecified() || same_ip(ours.ip(), local.ip()))
}

fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a == b || a.to_canonical() == b.to_canonical()
}

/// Shuts down (both directions) every connected TCP socket of this process whose (local, peer)
/// addresses satisfy `matches`, and returns how many connections that was. A thread blocked
/// reading such a socket gets end-of-file; the socket itself stays open for its owner to close.
/// This is how we reach sockets the HTTP crate owns and does not expose.
#[cfg(target_os = "linux")]
fn abort_connections(matches: impl Fn(SocketAddr, SocketAddr) -> bool) -> usize {
    use std::os::fd::{FromRawFd, OwnedFd};
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0; // e.g. out of descriptors: the next tick retries
    };
    let mut cut = HashSet::new();
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        // Inspect and shut a duplicate: it pins the open socket, so a descriptor closed and
        // reused by another thread meanwhile cannot be hit by mistake.
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) takes no pointers; a failure (closed fd) returns -1.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            continue;
        }
        // SAFETY: `dup` is a fresh descriptor that nothing else owns.
        let dup = unsafe { OwnedFd::from_raw_fd(dup) };
        let raw = dup.as_raw_fd();
        if !is_stream_socket(raw) {
            continue;
        }
        let (Some(local), Some(peer)) = (socket_addr(raw, false), socket_addr(raw, true)) else {
            continue;
        };
        // SAFETY: `raw` is an open socket owned by `dup`; shutdown(2) takes no pointers.
        if matches(local, peer) && unsafe { libc::shutdown(raw, libc::SHUT_RDWR) } == 0 {
            cut.insert((local, peer));
        }
    }
    cut.len()
}

#[cfg(not(target_os = "linux"))]
fn abort_connections(_matches: impl Fn(SocketAddr, SocketAddr) -> bool) -> usize {
    0 // without /proc/self/fd, drains end only when the client stops or the read times out
}

fn is_stream_socket(fd: RawFd) -> bool {
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `kind` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&raw mut kind).cast(),
            &mut len,
        )
    };
    rc == 0 && kind == libc::SOCK_STREAM
}

/// The local (`peer == false`) or remote address of a socket.
fn socket_addr(fd: RawFd, peer: bool) -> Option<SocketAddr> {
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let addr = (&raw mut storage).cast::<libc::sockaddr>();
    // SAFETY: `addr` points to a sockaddr_storage of `len` bytes, as both calls require.
    let rc = unsafe {
        if peer {
            libc::getpeername(fd, addr, &mut len)
        } else {
            libc::getsockname(fd, addr, &mut len)
        }
    };
    if rc != 0 {
        return None;
    }
    sockaddr_to_std(&storage, len as usize)
}

fn sockaddr_to_std(storage: &libc::sockaddr_storage, len: usize) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family and length say the storage holds a sockaddr_in.
            let a =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family and length say the storage holds a sockaddr_in6.
            let a = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Socket options

/// Read and write timeouts (inherited by accepted sockets on Linux), `TCP_NODELAY`, and the
/// backlog.
fn set_listener_options(listener: &TcpListener, timeout: Duration) -> io::Result<()> {
    let fd = listener.as_raw_fd();
    // Listening again on a listening socket only changes its backlog (Linux). Best effort.
    // SAFETY: `fd` is an open socket; listen(2) takes no pointers.
    if unsafe { libc::listen(fd, LISTEN_BACKLOG) } != 0 {
        log::debug!("listen backlog not raised: {}", io::Error::last_os_error());
    }
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros() as i32),
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &tv)?;
    // Responses are written in one or two pieces; without this, a keep-alive client that
    // delays its ACKs can add 40 ms to a response. Inherited on Linux; best effort.
    if let Err(e) = setsockopt(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_NODELAY,
        &(1 as libc::c_int),
    ) {
        log::debug!("TCP_NODELAY not set on the listener: {e}");
    }
    Ok(())
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

// ---------------------------------------------------------------------------------------------
// Small synchronisation helpers

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
            set = self
                .changed
                .wait(set)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Waits at most `timeout`; returns whether the flag is set.
    fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut set = lock(&self.set);
        loop {
            if *set {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            set = self
                .changed
                .wait_timeout(set, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
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
    use std::io::Write;
    use std::net::TcpStream;

    /// Yields its pieces one per read, sleeping `pause` before each.
    struct Slow {
        pieces: Vec<io::Result<Vec<u8>>>,
        pause: Duration,
    }

    impl Read for Slow {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            thread::sleep(self.pause);
            if self.pieces.is_empty() {
                return Ok(0);
            }
            let piece = self.pieces.remove(0)?;
            let n = piece.len().min(buf.len());
            buf[..n].copy_from_slice(&piece[..n]);
            Ok(n)
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_body_of_exactly_the_limit_is_accepted_and_one_byte_more_is_too_large() {
        let body = vec![b'x'; 100];
        assert_eq!(
            read_body(&mut &body[..], 100, None, SECOND).unwrap().len(),
            100
        );
        assert_eq!(
            read_body(&mut &body[..], 100, Some(100), SECOND).unwrap(),
            body
        );
        assert!(matches!(
            read_body(&mut &body[..], 99, None, SECOND),
            Err(BodyError::TooLarge)
        ));
    }

    #[test]
    fn an_endless_body_stops_one_byte_past_the_limit() {
        let mut endless = io::repeat(b'a');
        assert!(matches!(
            read_body(&mut endless, 20_000, None, SECOND),
            Err(BodyError::TooLarge)
        ));
    }

    #[test]
    fn reading_stops_at_the_declared_length_without_waiting_for_more() {
        // The reader would block (time out) after the declared bytes: it must not be asked.
        let mut reader = Slow {
            pieces: vec![Ok(b"hello".to_vec()), Err(io::ErrorKind::WouldBlock.into())],
            pause: Duration::ZERO,
        };
        assert_eq!(
            read_body(&mut reader, 100, Some(5), SECOND).unwrap(),
            b"hello"
        );
    }

    #[test]
    fn a_trickled_body_times_out_after_the_total_bound() {
        let mut reader = Slow {
            pieces: (0..100).map(|_| Ok(vec![b'x'])).collect(),
            pause: Duration::from_millis(20),
        };
        let started = Instant::now();
        let result = read_body(&mut reader, 1000, Some(100), Duration::from_millis(100));
        assert!(matches!(result, Err(BodyError::TimedOut)), "{result:?}");
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn a_socket_timeout_during_a_read_is_a_body_timeout() {
        let mut reader = Slow {
            pieces: vec![Ok(vec![1]), Err(io::ErrorKind::WouldBlock.into())],
            pause: Duration::ZERO,
        };
        assert!(matches!(
            read_body(&mut reader, 10, Some(5), SECOND),
            Err(BodyError::TimedOut)
        ));
        let mut reader = Slow {
            pieces: vec![Err(io::ErrorKind::TimedOut.into())],
            pause: Duration::ZERO,
        };
        assert!(matches!(
            read_body(&mut reader, 10, None, SECOND),
            Err(BodyError::TimedOut)
        ));
    }

    #[test]
    fn interrupted_reads_are_retried_and_other_errors_are_reported() {
        let mut reader = Slow {
            pieces: vec![
                Ok(b"ab".to_vec()),
                Err(io::ErrorKind::Interrupted.into()),
                Ok(b"c".to_vec()),
            ],
            pause: Duration::ZERO,
        };
        assert_eq!(read_body(&mut reader, 10, None, SECOND).unwrap(), b"abc");
        let mut reader = Slow {
            pieces: vec![Err(io::ErrorKind::InvalidInput.into())],
            pause: Duration::ZERO,
        };
        let e = read_body(&mut reader, 10, None, SECOND)
            .unwrap_err()
            .into_api_error(10);
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn a_body_cut_short_of_its_declared_length_is_a_bad_request() {
        let e = read_body(&mut &b"abc"[..], 100, Some(10), SECOND).unwrap_err();
        assert!(matches!(
            e,
            BodyError::Incomplete {
                received: 3,
                declared: 10
            }
        ));
        assert!(e.into_api_error(100).to_string().contains("3 of the 10"));
    }

    #[test]
    fn body_errors_map_to_413_408_and_400() {
        assert_eq!(BodyError::TooLarge.into_api_error(5).status(), 413);
        assert_eq!(BodyError::TimedOut.into_api_error(5).status(), 408);
    }

    #[test]
    fn the_request_head_keeps_method_target_and_the_two_headers() {
        let rq: TinyRequest = tiny_http_fork::TestRequest::new()
            .with_method(tiny_http_fork::Method::Post)
            .with_path("/MEC/v1/service/requests?x=1")
            .with_header(Header::from_str("content-type", "application/json").unwrap())
            .with_header(Header::from_str("Authorization", "Bearer t0k").unwrap())
            .into();
        let head = request_head(&rq);
        assert_eq!(head.method, "POST");
        assert_eq!(head.target, "/MEC/v1/service/requests?x=1");
        assert_eq!(head.content_type.as_deref(), Some("application/json"));
        assert_eq!(head.authorization.as_deref(), Some("Bearer t0k"));
        assert!(head.body.is_empty());
    }

    #[test]
    fn the_response_carries_status_type_extra_headers_and_length_and_drops_unsafe_headers() {
        let response = Response::json(405, b"{}".to_vec())
            .with_header("Allow", "GET, POST")
            .with_header("X-Bad", "a\r\nInjected: 1");
        let tiny = to_tiny_response(response);
        assert_eq!(tiny.status_code(), StatusCode(405));
        assert_eq!(tiny.data_length(), Some(2));
        let headers = tiny.headers();
        assert_eq!(
            headers.get("Content-Type").unwrap().as_str(),
            "application/json"
        );
        assert_eq!(headers.get("Allow").unwrap().as_str(), "GET, POST");
        assert!(headers.get("X-Bad").is_none());
        assert!(headers.get("Injected").is_none());
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
    fn options_come_from_the_server_section() {
        let c = ServerConfig {
            workers: 3,
            connection_threads: 16,
            ..ServerConfig::default()
        };
        let o = Options::from_config(&c);
        assert_eq!((o.workers, o.connection_threads), (3, 16));
        assert_eq!(o.listen, c.listen);
        assert_eq!(o.read_timeout, c.read_timeout);
        assert_eq!(o.max_body_bytes, c.max_body_bytes);
        assert_eq!(o.api_style, c.api_style);
        assert!(o.tls.is_none());
    }

    fn tls_files(cert_pem: &str, key_pem: &str) -> TlsFiles {
        TlsFiles {
            cert_pem: cert_pem.as_bytes().to_vec(),
            key_pem: crate::config::Secret::new(key_pem.to_string()),
        }
    }

    #[test]
    fn a_certificate_with_its_key_makes_a_tls_context_and_a_bad_key_is_an_error_naming_tls_key() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem();
        assert!(tls_context(Some(&tls_files(&cert, &key.serialize_pem()))).is_ok());
        assert!(tls_context(None).is_ok());

        let other_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        for key in [
            // Not base64: the crate's own parse would panic on this one.
            "-----BEGIN PRIVATE KEY-----\nnot a key!\n-----END PRIVATE KEY-----\n",
            // Base64, but not a key.
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            // A key, but not the certificate's.
            other_key.as_str(),
            "no PEM at all",
        ] {
            let e = tls_context(Some(&tls_files(&cert, key))).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
            assert!(e.to_string().contains("tls_key"), "{e}");
        }
        let e = tls_context(Some(&tls_files(
            "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
            &key.serialize_pem(),
        )))
        .unwrap_err();
        assert!(e.to_string().contains("tls_cert"), "{e}");
    }

    #[test]
    fn accept_timeouts_are_retried_and_descriptor_exhaustion_backs_off() {
        assert_eq!(
            classify_accept_error(&io::ErrorKind::WouldBlock.into()),
            AcceptError::Retry
        );
        assert_eq!(
            classify_accept_error(&io::Error::from_raw_os_error(libc::EAGAIN)),
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
    fn accepted_sockets_match_their_listener_address() {
        let ours: SocketAddr = "127.0.0.1:8082".parse().unwrap();
        assert!(same_listener(ours, "127.0.0.1:8082".parse().unwrap()));
        assert!(same_listener(
            ours,
            "[::ffff:127.0.0.1]:8082".parse().unwrap()
        ));
        assert!(!same_listener(ours, "127.0.0.1:8083".parse().unwrap()));
        assert!(!same_listener(ours, "10.0.0.1:8082".parse().unwrap()));
        assert!(same_listener(
            "0.0.0.0:8082".parse().unwrap(),
            "10.0.0.1:8082".parse().unwrap()
        ));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn aborting_a_connection_by_its_addresses_wakes_its_reader_and_spares_the_others() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut victim = TcpStream::connect(addr).unwrap();
        let (mut victim_server, victim_peer) = listener.accept().unwrap();
        let mut bystander = TcpStream::connect(addr).unwrap();
        let (mut bystander_server, _) = listener.accept().unwrap();
        victim_server.set_read_timeout(Some(5 * SECOND)).unwrap();

        let reader = thread::spawn(move || {
            let mut buf = [0u8; 16];
            let started = Instant::now();
            (victim_server.read(&mut buf).unwrap(), started.elapsed())
        });
        thread::sleep(Duration::from_millis(50));
        let cut = abort_connections(|local, peer| local == addr && peer == victim_peer);
        assert_eq!(cut, 1);
        let (n, waited) = reader.join().unwrap();
        assert_eq!(n, 0, "the blocked reader sees end-of-file");
        assert!(waited < 2 * SECOND);

        bystander.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        bystander_server.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        let _ = victim.write_all(b"x");
    }

    #[test]
    fn the_server_and_its_shutdown_handle_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Server>();
        shareable::<ShutdownHandle>();
    }

    #[test]
    fn a_signal_wakes_its_waiters_and_times_out_otherwise() {
        let signal = Arc::new(Signal::default());
        assert!(!signal.wait_timeout(Duration::from_millis(10)));
        let setter = {
            let signal = Arc::clone(&signal);
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(20));
                signal.set();
            })
        };
        signal.wait();
        assert!(signal.is_set() && signal.wait_timeout(Duration::ZERO));
        setter.join().unwrap();
    }
}
