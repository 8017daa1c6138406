//! The real binary under a (simulated) service manager: `READY=1` on `NOTIFY_SOCKET` once the
//! API answers and the state is loaded, `STOPPING=1` and a graceful exit 0 on SIGTERM, SIGINT
//! and SIGHUP (requests in flight finish, those half received get 503, new connections are
//! refused, the records survive), an immediate exit on a second signal, priority-prefixed log
//! lines when standard output is the journal, and a service that goes on when its standard
//! output fails. Everything on loopback; each child is killed when its guard drops.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mec-plugin");
const DNS_ONLY: &str = include_str!("../examples/dns-only.json");

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "mec-plugin-lifecycle-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A configuration with region "2" on the simulated platform and, if `llmec` is given, region
/// "slow" on the LL-MEC platform at that URL (calls bounded by `timeout_ms`). `server` adds
/// keys to `[server]`.
fn write_config(dir: &Path, llmec: Option<&str>, timeout_ms: u64, server: &str) -> PathBuf {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"{}\"\nworkers = 2\nconnection_threads = 4\n\
         {server}\n\n[[region]]\nid = \"2\"\nlatitude = 43.6\nlongitude = 7.07\nrange_km = 10.0\n\
         [region.mep]\ndriver = \"simulated\"\n",
        dir.join("state").display()
    );
    if let Some(url) = llmec {
        text += &format!(
            "\n[[region]]\nid = \"slow\"\nlatitude = 45.07\nlongitude = 7.69\nrange_km = 10.0\n\
             [region.mep]\ndriver = \"llmec\"\nurl = \"{url}\"\ntimeout_ms = {timeout_ms}\n"
        );
    }
    let path = dir.join("regions.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The plugin as a child process; killed (if still running) when dropped.
struct Plugin {
    child: Child,
    logs: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Plugin {
    /// Starts the binary; `notify` becomes its `NOTIFY_SOCKET`, `stdout` its standard output
    /// (default: a pipe read into [`Plugin::logs`]).
    fn start(config: &Path, notify: Option<&Path>, journal: Option<(OwnedFd, String)>) -> Plugin {
        let mut command = Plugin::command(config, notify);
        let (tx, logs) = mpsc::channel();
        let child = match journal {
            None => {
                let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
                let stdout = child.stdout.take().unwrap();
                forward_lines(stdout, tx);
                child
            }
            Some((write_end, stream)) => {
                // The write end of a pipe whose read end the caller reads; JOURNAL_STREAM
                // names it, as systemd names its stream. (`logs` stays empty.)
                drop(tx);
                command
                    .env("JOURNAL_STREAM", stream)
                    .stdout(Stdio::from(write_end))
                    .spawn()
                    .unwrap()
            }
        };
        Plugin {
            child,
            logs,
            seen: Vec::new(),
        }
    }

    /// The command [`Plugin::start`] runs, before its standard output is chosen.
    fn command(config: &Path, notify: Option<&Path>) -> Command {
        let mut command = Command::new(BIN);
        command
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(socket) = notify {
            command.env("NOTIFY_SOCKET", socket);
        }
        command
    }

    fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) takes no pointers; the child is ours and not yet reaped.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// Waits up to `bound` for the process to end.
    fn wait_exit(&mut self, bound: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Reads log lines until one contains `needle` (within 10 s); returns it.
    fn log_line(&mut self, needle: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(line) = self
            .logs
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
        panic!("no log line with {needle:?} in {:#?}", self.seen);
    }

    /// The API address from the "listening on http://ADDR " log line.
    fn addr_from_log(&mut self) -> String {
        let line = self.log_line("listening on http://");
        let rest = line.split("listening on http://").nth(1).unwrap();
        rest.split(['/', ' ']).next().unwrap().to_string()
    }
}

/// The plugin started on region "2" (simulated) in `dir` under a fresh manager, once ready:
/// its configuration file, the manager, the plugin and its API address.
fn started(dir: &Path) -> (PathBuf, Manager, Plugin, String) {
    let config = write_config(dir, None, 3000, "");
    let manager = Manager::bind(dir);
    let plugin = Plugin::start(&config, Some(&manager.path), None);
    let (_, addr) = manager.ready();
    (config, manager, plugin, addr)
}

/// Starts the plugin on `config` again: its ready status counts `records` records.
fn assert_restart_finds(config: &Path, manager: &Manager, records: usize) {
    let _plugin = Plugin::start(config, Some(&manager.path), None);
    let (status, _) = manager.ready();
    assert!(status.contains(&format!("{records} record(s)")), "{status}");
}

fn forward_lines(from: impl Read + Send + 'static, to: mpsc::Sender<String>) {
    thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if to.send(line).is_err() {
                break;
            }
        }
    });
}

/// A service manager's end of `NOTIFY_SOCKET`.
struct Manager {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Manager {
    fn bind(dir: &Path) -> Manager {
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        Manager { socket, path }
    }

    /// The next notification, within `bound`.
    fn next(&self, bound: Duration) -> String {
        self.socket.set_read_timeout(Some(bound)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self
            .socket
            .recv(&mut buf)
            .expect("a notification from the plugin");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    /// Waits for `READY=1` and returns its `STATUS=` and the API address it names.
    fn ready(&self) -> (String, String) {
        let message = self.next(Duration::from_secs(10));
        let mut lines = message.lines();
        assert_eq!(lines.next(), Some("READY=1"), "{message}");
        let status = lines
            .find_map(|l| l.strip_prefix("STATUS="))
            .unwrap_or_else(|| panic!("READY=1 without STATUS: {message}"))
            .to_string();
        let addr = status
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("no address in {status}"))
            .to_string();
        (status, addr)
    }
}

fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn request_id(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["RequestId"].as_str().unwrap().to_string()
}

/// A tiny LL-MEC platform: answers each call after `delay` with `200 {}`.
fn slow_platform(delay: Duration) -> (String, mpsc::Receiver<String>) {
    fake_platform(move |_| (delay, 200))
}

/// A tiny LL-MEC platform: `answer` gives, from a call's request line, how long to wait and
/// which status to answer (with `{}`). Reports on `calls` the request line of each call as it
/// arrives, before the wait. Its threads end with the test process.
fn fake_platform(
    answer: impl Fn(&str) -> (Duration, u16) + Send + Sync + 'static,
) -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, calls) = mpsc::channel();
    let answer = Arc::new(answer);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (tx, answer) = (tx.clone(), Arc::clone(&answer));
            thread::spawn(move || serve(stream, &*answer, &tx));
        }
    });
    (url, calls)
}

fn serve(
    stream: TcpStream,
    answer: &dyn Fn(&str) -> (Duration, u16),
    calls: &mpsc::Sender<String>,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        // Request line and headers, then the body (keep-alive: several requests per stream).
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let request_line = request_line.trim().to_string();
        let (delay, status) = answer(&request_line);
        let _ = calls.send(request_line);
        thread::sleep(delay);
        let response = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// A pipe to stand for journald's stream: (read end, write end, "dev:ino" as in
/// `JOURNAL_STREAM`).
fn journal_pipe() -> (std::fs::File, OwnedFd, String) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2(2) writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created and are owned by nothing else.
    let (read, write) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            OwnedFd::from_raw_fd(fds[1]),
        )
    };
    let meta = read.metadata().unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    (read, write, stream)
}

#[test]
fn ready_is_sent_once_the_api_answers_and_the_state_is_loaded() {
    let dir = temp_dir("ready");
    let config = write_config(&dir, None, 3000, "");

    // First life: empty state; a request is stored.
    let manager = Manager::bind(&dir);
    let mut plugin = Plugin::start(&config, Some(&manager.path), None);
    let (status, addr) = manager.ready();
    // At the moment READY=1 arrives (the log has not been read), the API answers.
    let (code, body) = http(&addr, "GET", "/MEC/v1/service/regions", "");
    assert_eq!(code, 200, "{body}");
    assert!(status.contains("0 record(s)"), "{status}");
    let (code, body) = http(&addr, "POST", "/MEC/v1/service/requests", DNS_ONLY);
    assert_eq!(code, 201, "{body}");
    let id = request_id(&body);
    plugin.signal(libc::SIGTERM);
    assert!(
        manager
            .next(Duration::from_secs(5))
            .starts_with("STOPPING=1")
    );
    let exit = plugin.wait_exit(Duration::from_secs(5)).expect("exits");
    assert_eq!(exit.code(), Some(0));

    // Second life: READY=1 comes with the state replayed.
    let mut plugin = Plugin::start(&config, Some(&manager.path), None);
    let (status, addr) = manager.ready();
    assert!(status.contains("1 record(s)"), "{status}");
    let (code, body) = http(&addr, "GET", &format!("/MEC/v1/service/requests/{id}"), "");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("CREATED"), "{body}");
    assert_eq!(plugin.addr_from_log(), addr);
    drop(plugin);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_finishes_the_request_in_flight_refuses_new_connections_and_exits_zero_within_5_s() {
    let dir = temp_dir("sigterm");
    let (url, calls) = slow_platform(Duration::from_millis(1500));
    let config = write_config(&dir, Some(&url), 3000, "");
    let manager = Manager::bind(&dir);
    let mut plugin = Plugin::start(&config, Some(&manager.path), None);
    let (_, addr) = manager.ready();

    let body = DNS_ONLY.replace("\"RegionId\": \"2\"", "\"RegionId\": \"slow\"");
    assert!(body.contains("\"slow\""));
    let in_flight = {
        let addr = addr.clone();
        thread::spawn(move || http(&addr, "POST", "/MEC/v1/service/requests", &body))
    };
    // The platform has the call: the request is in flight for another 1.5 s.
    let call = calls.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(call.starts_with("POST /api/mp1/traffic/all"), "{call}");
    let signalled = Instant::now();
    plugin.signal(libc::SIGTERM);
    assert!(
        manager
            .next(Duration::from_secs(5))
            .starts_with("STOPPING=1\nSTATUS=stopping (SIGTERM)")
    );

    // New connections are refused from now on, while the request is still in flight.
    let refused = loop {
        match TcpStream::connect(&addr) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                break Some(signalled.elapsed());
            }
            _ if signalled.elapsed() > Duration::from_millis(1400) => break None,
            _ => thread::sleep(Duration::from_millis(10)),
        }
    };
    let refused = refused.expect("new connections refused during the shutdown");
    assert!(!in_flight.is_finished(), "refused after {refused:?}");

    let (code, body) = in_flight.join().unwrap();
    assert_eq!(code, 201, "the request in flight completes: {body}");
    let id = request_id(&body);
    let exit = plugin
        .wait_exit(Duration::from_secs(5).saturating_sub(signalled.elapsed()))
        .expect("exits within 5 s of SIGTERM");
    assert_eq!(exit.code(), Some(0), "{exit:?}");
    plugin.log_line("SIGTERM received: shutting down gracefully");
    plugin.log_line("mec-plugin stopped in");

    // The records survived: restart on the same state and read the request back.
    drop(plugin);
    let mut plugin = Plugin::start(&config, None, None);
    let addr = plugin.addr_from_log();
    let (code, body) = http(&addr, "GET", &format!("/MEC/v1/service/requests/{id}"), "");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("CREATED") && body.contains("app.example.org"),
        "{body}"
    );
    plugin.signal(libc::SIGTERM);
    assert_eq!(
        plugin
            .wait_exit(Duration::from_secs(5))
            .and_then(|s| s.code()),
        Some(0)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigint_when_idle_exits_zero_at_once_and_journal_lines_carry_their_priority() {
    let dir = temp_dir("sigint");
    let config = write_config(&dir, None, 3000, "");
    let manager = Manager::bind(&dir);
    let (read, write, stream) = journal_pipe();
    let mut plugin = Plugin::start(&config, Some(&manager.path), Some((write, stream)));
    let (tx, logs) = mpsc::channel();
    forward_lines(read, tx);
    plugin.logs = logs;
    manager.ready();

    let signalled = Instant::now();
    plugin.signal(libc::SIGINT);
    assert!(
        manager
            .next(Duration::from_secs(5))
            .starts_with("STOPPING=1")
    );
    let exit = plugin.wait_exit(Duration::from_secs(5)).expect("exits");
    assert_eq!(exit.code(), Some(0), "{exit:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "idle shutdown took {:?}",
        signalled.elapsed()
    );
    // journald reads "<6>" as priority info; no timestamp (journald stamps the entry).
    let line = plugin.log_line("SIGINT received");
    assert!(line.starts_with("<6>INFO "), "{line}");
    let line = plugin.log_line("listening on http://");
    assert!(line.starts_with("<6>INFO "), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sighup_shuts_down_gracefully_and_says_the_configuration_is_not_reloaded() {
    // SIGHUP's default action would end the process at once, cutting requests in flight.
    let dir = temp_dir("sighup");
    let (config, manager, mut plugin, addr) = started(&dir);
    let (code, body) = http(&addr, "POST", "/MEC/v1/service/requests", DNS_ONLY);
    assert_eq!(code, 201, "{body}");

    plugin.signal(libc::SIGHUP);
    assert!(
        manager
            .next(Duration::from_secs(5))
            .starts_with("STOPPING=1\nSTATUS=stopping (SIGHUP)")
    );
    let exit = plugin.wait_exit(Duration::from_secs(5)).expect("exits");
    assert_eq!(exit.code(), Some(0), "{exit:?}");
    let line = plugin.log_line("SIGHUP received: shutting down gracefully");
    assert!(
        line.contains("is not reloaded: `systemctl restart mec-plugin` applies a change"),
        "{line}"
    );

    // The record survived, as after SIGTERM.
    assert_restart_finds(&config, &manager, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn requests_half_received_at_the_shutdown_are_answered_503_not_cut() {
    let dir = temp_dir("half-received");
    let (config, manager, mut plugin, addr) = started(&dir);
    let bound = Duration::from_secs(5);
    // A head and 1 byte of its 100-byte body; a head without its blank line.
    let mut body = TcpStream::connect(&addr).unwrap();
    body.write_all(
        b"POST /MEC/v1/service/requests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{",
    )
    .unwrap();
    let mut head = TcpStream::connect(&addr).unwrap();
    head.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // Both are read (and the connections counted) before the signal.
    thread::sleep(Duration::from_millis(200));

    plugin.signal(libc::SIGTERM);
    assert!(manager.next(bound).starts_with("STOPPING=1"));
    for (name, mut conn) in [("body", body), ("head", head)] {
        conn.set_read_timeout(Some(bound)).unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 503 "), "{name}: {answer}");
        assert!(answer.contains("Retry-After: "), "{name}: {answer}");
        assert!(answer.contains("Connection: close"), "{name}: {answer}");
        assert!(
            answer.contains("shutting down: this request was not executed"),
            "{name}: {answer}"
        );
    }
    let exit = plugin.wait_exit(bound).expect("exits");
    assert_eq!(exit.code(), Some(0), "{exit:?}");
    // Nothing was recorded.
    assert_restart_finds(&config, &manager, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_log_output_that_fails_loses_lines_not_the_service() {
    // Standard output is a pipe whose reader is gone before the first line, as when the output
    // is piped into a program that exited: every write fails (EPIPE). simple_logger's println!
    // panicked on it, which ended the start.
    let dir = temp_dir("broken-stdout");
    let config = write_config(&dir, None, 3000, "");
    let manager = Manager::bind(&dir);
    let mut child = Plugin::command(&config, Some(&manager.path))
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut stderr = child.stderr.take().unwrap();
    let mut plugin = Plugin {
        child,
        logs: mpsc::channel().1,
        seen: Vec::new(),
    };

    let (_, addr) = manager.ready();
    // Lines logged by the readiness loop, the request workers and the platform calls.
    let (code, body) = http(&addr, "POST", "/MEC/v1/service/requests", DNS_ONLY);
    assert_eq!(code, 201, "{body}");
    let id = request_id(&body);
    for _ in 0..3 {
        let (code, body) = http(&addr, "GET", &format!("/MEC/v1/service/requests/{id}"), "");
        assert_eq!(code, 200, "{body}");
    }
    plugin.signal(libc::SIGTERM);
    let exit = plugin.wait_exit(Duration::from_secs(5)).expect("exits");
    assert_eq!(exit.code(), Some(0), "{exit:?}");

    let mut said = String::new();
    stderr.read_to_string(&mut said).unwrap();
    assert_eq!(
        said.matches("standard output failed, so log lines are dropped from now on")
            .count(),
        1,
        "{said}"
    );
    assert!(!said.contains("panicked"), "{said}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_second_signal_during_the_shutdown_ends_the_process_at_once() {
    let dir = temp_dir("second");
    let (url, calls) = slow_platform(Duration::from_secs(3));
    let config = write_config(&dir, Some(&url), 3000, "");
    let manager = Manager::bind(&dir);
    let mut plugin = Plugin::start(&config, Some(&manager.path), None);
    let (_, addr) = manager.ready();
    let body = DNS_ONLY.replace("\"RegionId\": \"2\"", "\"RegionId\": \"slow\"");
    // Sent without waiting for the answer: the connection is cut when the process ends.
    let mut in_flight = TcpStream::connect(&addr).unwrap();
    write!(
        in_flight,
        "POST /MEC/v1/service/requests HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    calls.recv_timeout(Duration::from_secs(5)).unwrap();
    plugin.signal(libc::SIGTERM);
    assert!(
        manager
            .next(Duration::from_secs(5))
            .starts_with("STOPPING=1")
    );
    let signalled = Instant::now();
    plugin.signal(libc::SIGTERM);
    let exit = plugin
        .wait_exit(Duration::from_secs(2))
        .expect("the second SIGTERM ends the process");
    assert!(signalled.elapsed() < Duration::from_secs(2));
    assert_eq!(exit.signal(), Some(libc::SIGTERM), "{exit:?}");
    plugin.log_line("exiting at once");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_reconciler_stuck_in_a_platform_call_does_not_hold_the_exit_past_5_s() {
    let dir = temp_dir("stuck");
    // The first removal is refused (the request becomes DELETING); the reconciler's retry
    // hangs on the platform for 10 s.
    let deletes = AtomicUsize::new(0);
    let (url, calls) = fake_platform(move |line| {
        if !line.starts_with("DELETE") {
            (Duration::ZERO, 200)
        } else if deletes.fetch_add(1, Ordering::SeqCst) == 0 {
            (Duration::ZERO, 500)
        } else {
            (Duration::from_secs(10), 200)
        }
    });
    let config = write_config(&dir, Some(&url), 10_000, "retry_initial_ms = 100");
    let manager = Manager::bind(&dir);
    let mut plugin = Plugin::start(&config, Some(&manager.path), None);
    let (_, addr) = manager.ready();
    let body = DNS_ONLY.replace("\"RegionId\": \"2\"", "\"RegionId\": \"slow\"");
    let (code, body) = http(&addr, "POST", "/MEC/v1/service/requests", &body);
    assert_eq!(code, 201, "{body}");
    let id = request_id(&body);
    let (code, body) = http(
        &addr,
        "DELETE",
        &format!("/MEC/v1/service/requests/{id}"),
        "",
    );
    assert_eq!(code, 202, "{body}");
    // POST, the refused DELETE, then the reconciler's DELETE, which hangs.
    for expected in ["POST", "DELETE", "DELETE"] {
        let call = calls.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(call.starts_with(expected), "{call}");
    }

    let signalled = Instant::now();
    plugin.signal(libc::SIGTERM);
    let exit = plugin
        .wait_exit(Duration::from_secs(5))
        .expect("exits within 5 s of SIGTERM");
    assert_eq!(exit.code(), Some(0), "{exit:?}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(4),
        "{:?}",
        signalled.elapsed()
    );
    plugin.log_line("still stopping after 4500 ms");
    let _ = std::fs::remove_dir_all(&dir);
}
