//! A fake LL-MEC platform for integration tests: a real HTTP server on `127.0.0.1` that
//! implements the four LL-MEC calls (see `mep-dialects.md` §1), keeps the installed rules keyed
//! by (path, exact body), records every call, and takes injected faults: failing answers,
//! delays, and outages where connections are refused.
//!
//! Layout: the HTTP side is a `tiny_http_fork` server on an internal port, with one thread per
//! request (so a delayed answer never holds up another connection). Clients talk to it through
//! a small TCP relay on the public port. The relay is what makes outages faithful: `stop()`
//! closes the public listener *and* resets every open connection (a client's pooled keep-alive
//! connection included), which tiny_http alone cannot do; `restart()` listens again on the same
//! port with the same state. More public ports can relay to the same platform
//! ([`add_front`](FakeLlMec::add_front)), one per client process, so that a test can tell who
//! made each call ([`calls_via`](FakeLlMec::calls_via)): several plugin instances sharing one
//! platform, say.
//!
//! ```ignore
//! let mep = FakeLlMec::start();
//! let driver = LlMec::new(&MepConfig::new(DriverKind::Llmec, &mep.url(), timeout));
//! mep.fail_nth_post(2, 400); // the 2nd POST from now answers 400 and installs nothing
//! mep.apply_then_fail_nth_post(1, 500); // the next POST installs, then answers 500
//! mep.delay(Duration::from_secs(5)); // every call waits 5 s before being handled
//! mep.chaos(Chaos { fail_percent: 20, statuses: &[503, 504], max_delay, seed }); // random faults
//! mep.stop(); // connection refused ... mep.restart();
//! assert_eq!(mep.installed(), vec![(path, body)]);
//! ```

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mec_plugin::util::lock;
use tiny_http_fork::{Header, Request, Response, Server};

/// Path of LL-MEC DNS redirects.
pub const DNS_PATH: &str = "/api/mp1/traffic/all";
/// Path of LL-MEC traffic redirects.
pub const TRAFFIC_PATH: &str = "/api/mp1/traffic/imsi";

/// Largest request body the fake reads.
const MAX_BODY: u64 = 1024 * 1024;
/// How often idle loops look at their stop flag.
const TICK: Duration = Duration::from_millis(10);

pub use super::Call;

/// A fake LL-MEC platform. Shuts everything down when dropped.
pub struct FakeLlMec {
    shared: Arc<Shared>,
    port: u16,
    /// `None` only while dropping.
    http: Option<Arc<Server>>,
    http_addr: SocketAddr,
    dispatcher: Option<JoinHandle<()>>,
    front: Mutex<Option<Front>>,
    /// The fronts of [`add_front`](FakeLlMec::add_front): their port, and the relay.
    extra_fronts: Mutex<Vec<(u16, Front)>>,
}

/// What the request handlers share with the test.
struct Shared {
    state: Mutex<State>,
    /// Set once, on drop.
    closing: AtomicBool,
    /// The relay's local port towards the HTTP server → the public port the client used.
    origins: Mutex<HashMap<u16, u16>>,
}

impl super::FakeState for Shared {
    fn closing(&self) -> &AtomicBool {
        &self.closing
    }
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    /// The public port each of `calls` came through (0: unknown).
    via: Vec<u16>,
    installed: BTreeSet<(String, String)>,
    /// POSTs received so far.
    posts: u64,
    /// POST number (1-based, counted from start) → status to answer instead of installing.
    failing_posts: BTreeMap<u64, u16>,
    /// POST number → status to answer after installing (a handler that failed after it
    /// committed, see [`FakeLlMec::apply_then_fail_nth_post`]).
    applying_posts: BTreeMap<u64, u16>,
    fail_all: Option<u16>,
    delay: Duration,
    /// Extra wait of every POST (see [`FakeLlMec::late_posts`]).
    post_delay: Duration,
    /// Extra wait of every DELETE (see [`FakeLlMec::late_deletes`]).
    delete_delay: Duration,
    /// A DELETE of a rule not installed answers 200 instead of 404.
    absent_delete_ok: bool,
    chaos: Option<Chaos>,
    /// State of the random generator of `chaos` (xorshift64, never 0).
    rng: u64,
}

/// Random faults (see [`FakeLlMec::chaos`]).
#[derive(Debug, Clone, Copy)]
pub struct Chaos {
    /// Percentage of the POSTs and DELETEs answered with a fault.
    pub fail_percent: u64,
    /// The statuses of the faults, picked at random. A 503 changes nothing; a 502 or 504 (a
    /// gateway that lost the platform's answer) changes nothing or is carried out, at random.
    pub statuses: &'static [u16],
    /// Every call waits a random time up to this before being handled.
    pub max_delay: Duration,
    pub seed: u64,
}

impl State {
    /// A random number below `n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x % n
    }
}

/// The public side while listening: the relay's accept loop and its open connections.
struct Front {
    stop: Arc<AtomicBool>,
    acceptor: JoinHandle<()>,
    connections: Arc<Mutex<HashMap<u64, Vec<TcpStream>>>>,
}

impl FakeLlMec {
    /// Starts the fake on a free port of 127.0.0.1.
    pub fn start() -> FakeLlMec {
        let (http, http_addr) = super::fake_platform_server("LL-MEC");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            closing: AtomicBool::new(false),
            origins: Mutex::default(),
        });
        let dispatcher = super::dispatch("llmec", &http, &shared, handle);
        let listener = TcpListener::bind("127.0.0.1:0").expect("fake LL-MEC: public listener");
        let port = listener
            .local_addr()
            .expect("fake LL-MEC: local address")
            .port();
        let fake = FakeLlMec {
            shared,
            port,
            http: Some(http),
            http_addr,
            dispatcher: Some(dispatcher),
            front: Mutex::new(None),
            extra_fronts: Mutex::default(),
        };
        *lock(&fake.front) = Some(Front::open(listener, http_addr, &fake.shared));
        fake
    }

    /// `http://127.0.0.1:PORT`, the MEP URL to configure.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every call received so far, in arrival order (also those answered with a fault).
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.shared.state).calls.clone()
    }

    /// Forgets the calls recorded so far (the installed rules stay).
    pub fn clear_calls(&self) {
        let mut state = lock(&self.shared.state);
        state.calls.clear();
        state.via.clear();
    }

    /// Opens another public port relaying to this platform (same rules, same faults, same call
    /// log) and returns it; its calls are also told apart by [`calls_via`](Self::calls_via). It
    /// stays open until the fake is dropped ([`stop`](Self::stop) closes only the first port).
    pub fn add_front(&self) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("fake LL-MEC: extra listener");
        let port = listener
            .local_addr()
            .expect("fake LL-MEC: local address")
            .port();
        let front = Front::open(listener, self.http_addr, &self.shared);
        lock(&self.extra_fronts).push((port, front));
        port
    }

    /// The calls received through public port `port` (the first one: [`port`](Self::port);
    /// others: [`add_front`](Self::add_front)), in arrival order.
    pub fn calls_via(&self, port: u16) -> Vec<Call> {
        let state = lock(&self.shared.state);
        let via = state.via.iter();
        state
            .calls
            .iter()
            .zip(via)
            .filter(|(_, v)| **v == port)
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// The installed rules as (path, body), sorted.
    pub fn installed(&self) -> Vec<(String, String)> {
        lock(&self.shared.state).installed.iter().cloned().collect()
    }

    /// Installs a rule directly, as if an earlier POST had (e.g. left over from a crash).
    pub fn preinstall(&self, path: &str, body: &str) {
        lock(&self.shared.state)
            .installed
            .insert((path.to_string(), body.to_string()));
    }

    /// The `n`-th POST from now (1 = the next one) answers `status` and installs nothing.
    /// Several can be pending at once.
    pub fn fail_nth_post(&self, n: u64, status: u16) {
        assert!(n >= 1, "fail_nth_post counts from 1 (the next POST)");
        let mut state = lock(&self.shared.state);
        let at = state.posts + n;
        state.failing_posts.insert(at, status);
    }

    /// The `n`-th POST from now installs its rule, then answers `status`: a platform whose
    /// handler failed after it committed the work.
    pub fn apply_then_fail_nth_post(&self, n: u64, status: u16) {
        assert!(
            n >= 1,
            "apply_then_fail_nth_post counts from 1 (the next POST)"
        );
        let mut state = lock(&self.shared.state);
        let at = state.posts + n;
        state.applying_posts.insert(at, status);
    }

    /// Every call answers `status` and changes nothing, until [`heal`](Self::heal).
    pub fn fail_all(&self, status: u16) {
        lock(&self.shared.state).fail_all = Some(status);
    }

    /// Random faults and delays on the calls from now on, until [`heal`](Self::heal).
    pub fn chaos(&self, chaos: Chaos) {
        let mut state = lock(&self.shared.state);
        state.rng = chaos.seed | 1;
        state.chaos = Some(chaos);
    }

    /// Clears every injected fault: `fail_all`, pending `fail_nth_post`s, `chaos` and the
    /// delay. Does not undo [`stop`](Self::stop): that is [`restart`](Self::restart).
    pub fn heal(&self) {
        let mut state = lock(&self.shared.state);
        state.fail_all = None;
        state.chaos = None;
        state.failing_posts.clear();
        state.applying_posts.clear();
        state.delay = Duration::ZERO;
    }

    /// Every call received from now on waits `delay` before being handled (and then changes
    /// the state as usual: a client that gave up meanwhile does not undo it, as on a real slow
    /// platform). Other connections are served meanwhile. `Duration::ZERO` removes it.
    pub fn delay(&self, delay: Duration) {
        lock(&self.shared.state).delay = delay;
    }

    /// Every POST received from now on is answered only after `delay` and then installs its
    /// rule, whether or not the client is still waiting (a late answer). Other calls are not
    /// delayed. `Duration::ZERO` removes it.
    pub fn late_posts(&self, delay: Duration) {
        lock(&self.shared.state).post_delay = delay;
    }

    /// Every DELETE received from now on is answered only after `delay` and then removes its
    /// rule, whether or not the client is still waiting (a late removal). Other calls are not
    /// delayed. `Duration::ZERO` removes it.
    pub fn late_deletes(&self, delay: Duration) {
        lock(&self.shared.state).delete_delay = delay;
    }

    /// A DELETE of a rule that is not installed answers 200 (as a platform may: removing
    /// flows that are absent is not an error there) when `ok`, else 404 (the default).
    pub fn absent_delete_ok(&self, ok: bool) {
        lock(&self.shared.state).absent_delete_ok = ok;
    }

    /// Outage: closes the listener (new connections are refused) and resets every open
    /// connection. State and faults are kept. Idempotent.
    pub fn stop(&self) {
        if let Some(front) = lock(&self.front).take() {
            front.close();
        }
    }

    /// Ends an outage: listens again on the same port. Idempotent.
    pub fn restart(&self) {
        let mut front = lock(&self.front);
        if front.is_none() {
            let listener = bind_again(self.port);
            *front = Some(Front::open(listener, self.http_addr, &self.shared));
        }
    }

    /// True while listening.
    pub fn is_running(&self) -> bool {
        lock(&self.front).is_some()
    }
}

impl Drop for FakeLlMec {
    fn drop(&mut self) {
        self.stop();
        for (_, front) in lock(&self.extra_fronts).drain(..) {
            front.close();
        }
        self.shared.closing.store(true, Ordering::SeqCst);
        if let Some(dispatcher) = self.dispatcher.take() {
            let _ = dispatcher.join();
        }
        // tiny_http's accept thread only notices that its server is gone on its next accept:
        // drop the server, then give it one, so that it ends and closes the internal listener.
        drop(self.http.take());
        let _ = TcpStream::connect_timeout(&self.http_addr, Duration::from_millis(200));
    }
}

/// Binds the port of an earlier listener again (retrying briefly: the old socket may still be
/// being closed).
fn bind_again(port: u16) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(listener) => return listener,
            Err(_) if Instant::now() < deadline => thread::sleep(TICK),
            Err(e) => panic!("fake LL-MEC: cannot listen again on port {port}: {e}"),
        }
    }
}

impl Front {
    fn open(listener: TcpListener, upstream: SocketAddr, shared: &Arc<Shared>) -> Front {
        let public = listener.local_addr().map_or(0, |a| a.port());
        listener
            .set_nonblocking(true)
            .expect("fake LL-MEC: non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<HashMap<u64, Vec<TcpStream>>>> = Arc::default();
        let acceptor = {
            let stop = Arc::clone(&stop);
            let connections = Arc::clone(&connections);
            let shared = Arc::clone(shared);
            thread::Builder::new()
                .name("fake-llmec-accept".into())
                .spawn(move || {
                    let origin = (public, shared.as_ref());
                    accept_loop(listener, upstream, origin, &stop, &connections)
                })
                .expect("fake LL-MEC: accept thread")
        };
        Front {
            stop,
            acceptor,
            connections,
        }
    }

    fn close(self) {
        self.stop.store(true, Ordering::SeqCst);
        // The listener is dropped when the accept loop returns.
        let _ = self.acceptor.join();
        for streams in lock(&self.connections).drain().map(|(_, s)| s) {
            for stream in streams {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Accepts the clients of public port `origin.0`, relaying each to `upstream` (the HTTP
/// server), and notes in `origin.1` which public port each relay connection serves.
fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    origin: (u16, &Shared),
    stop: &AtomicBool,
    connections: &Arc<Mutex<HashMap<u64, Vec<TcpStream>>>>,
) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(0);
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                let connections = Arc::clone(connections);
                // Checked under the registry lock, so that `close` either sees this
                // connection or this thread sees the stop flag.
                let mut registry = lock(&connections);
                if stop.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    break;
                }
                let Ok(relay) = Relay::new(client, upstream) else {
                    continue;
                };
                // Noted before any byte is relayed, so before the request can be handled.
                if let Ok(local) = relay.upstream.local_addr() {
                    lock(&origin.1.origins).insert(local.port(), origin.0);
                }
                registry.insert(id, relay.handles());
                drop(registry);
                let spawned = thread::Builder::new()
                    .name("fake-llmec-relay".into())
                    .spawn(move || {
                        relay.run();
                        lock(&connections).remove(&id);
                    });
                if spawned.is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(TICK),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => thread::sleep(TICK),
        }
    }
}

/// Copies bytes both ways between a client and the internal HTTP server.
struct Relay {
    client: TcpStream,
    upstream: TcpStream,
}

impl Relay {
    fn new(client: TcpStream, upstream: SocketAddr) -> io::Result<Relay> {
        client.set_nonblocking(false)?;
        let upstream = TcpStream::connect(upstream)?;
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        Ok(Relay { client, upstream })
    }

    /// Clones of both sockets, for resetting them from outside.
    fn handles(&self) -> Vec<TcpStream> {
        [&self.client, &self.upstream]
            .into_iter()
            .filter_map(|s| s.try_clone().ok())
            .collect()
    }

    fn run(self) {
        let (Ok(mut client_r), Ok(mut upstream_w)) =
            (self.client.try_clone(), self.upstream.try_clone())
        else {
            return;
        };
        let down = thread::Builder::new()
            .name("fake-llmec-relay-down".into())
            .spawn(move || {
                let (mut upstream_r, mut client_w) = (self.upstream, self.client);
                let _ = io::copy(&mut upstream_r, &mut client_w);
                let _ = client_w.shutdown(Shutdown::Both);
                let _ = upstream_r.shutdown(Shutdown::Both);
            });
        let _ = io::copy(&mut client_r, &mut upstream_w);
        let _ = upstream_w.shutdown(Shutdown::Write);
        if let Ok(down) = down {
            let _ = down.join();
        }
    }
}

/// What a call does to the state once its delay is over.
enum Plan {
    Fail(u16),
    Install,
    Uninstall,
    NotFound,
}

fn handle(mut request: Request, shared: &Shared) {
    let method = request.method().as_str().to_ascii_uppercase();
    let path = request.url().to_string();
    let mut body = Vec::new();
    let _ = request.as_reader().take(MAX_BODY).read_to_end(&mut body);
    let body = String::from_utf8_lossy(&body).into_owned();
    let known = path == DNS_PATH || path == TRAFFIC_PATH;
    let via = request
        .remote_addr()
        .and_then(|a| lock(&shared.origins).get(&a.port()).copied())
        .unwrap_or(0);

    let (plan, delay, lost) = {
        let mut state = lock(&shared.state);
        state.calls.push(Call {
            method: method.clone(),
            path: path.clone(),
            headers: Vec::new(),
            body: body.clone(),
        });
        state.via.push(via);
        let (mut delay, mut lost) = (state.delay, None);
        let injected = if method == "POST" {
            state.posts += 1;
            let n = state.posts;
            let nth = state.failing_posts.remove(&n);
            lost = state.applying_posts.remove(&n);
            state.fail_all.or(nth)
        } else {
            state.fail_all
        };
        let mut plan = match (injected, method.as_str(), known) {
            (Some(status), _, _) => Plan::Fail(status),
            (None, "POST", true) => Plan::Install,
            (None, "DELETE", true) => Plan::Uninstall,
            _ => Plan::NotFound,
        };
        // Chaos: a random delay, and maybe a fault (a lost answer: carried out, then `lost`).
        if method == "POST" {
            delay += state.post_delay;
        }
        if method == "DELETE" {
            delay += state.delete_delay;
        }
        if let Some(chaos) = state.chaos {
            delay += Duration::from_micros(state.below(chaos.max_delay.as_micros() as u64 + 1));
            if matches!(plan, Plan::Install | Plan::Uninstall)
                && !chaos.statuses.is_empty()
                && state.below(100) < chaos.fail_percent
            {
                let status = chaos.statuses[state.below(chaos.statuses.len() as u64) as usize];
                if matches!(status, 502 | 504) && state.below(2) == 0 {
                    lost = Some(status);
                } else {
                    plan = Plan::Fail(status);
                }
            }
        }
        (plan, delay, lost)
    };

    if !super::delay_unless_closing(&shared.closing, delay) {
        return;
    }

    let (mut status, mut answer) = match plan {
        Plan::Fail(status) => (
            status,
            format!(r#"{{"detail":"injected fault: HTTP {status}"}}"#),
        ),
        Plan::Install => {
            lock(&shared.state).installed.insert((path, body));
            (200, "{}".to_string())
        }
        Plan::Uninstall => {
            let mut state = lock(&shared.state);
            if state.installed.remove(&(path, body)) || state.absent_delete_ok {
                (200, "{}".to_string())
            } else {
                (404, r#"{"detail":"no such rule"}"#.to_string())
            }
        }
        Plan::NotFound => (404, r#"{"detail":"not found"}"#.to_string()),
    };
    if let Some(lost) = lost {
        status = lost;
        answer = format!(r#"{{"detail":"injected fault: answer lost, HTTP {lost}"}}"#);
    }
    let response = Response::from_string(answer)
        .with_status_code(status)
        .with_header(
            Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
                .expect("a valid header"),
        );
    let _ = request.respond(response);
}
