//! The real binary (`mec-plugin`) as a child process on a loopback port, for black-box tests of
//! the front end: its configuration written to a file, its log lines collected, its threads and
//! memory read from `/proc/<pid>/status`. Included with `#[path = "support/child.rs"] mod child;`
//! next to `support/raw.rs`. The child is killed when the value is dropped. `MEC_PLUGIN_BIN`
//! runs another build of the binary instead (a `dist` build, another branch's), for the same
//! tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_mec-plugin");
/// The configuration shipped with the project.
pub const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/regions.toml");
/// The bearer token of [`Child::start_with_token`].
pub const TOKEN: &str = "hostile-test-token-5f1c";

/// A running `mec-plugin` process.
pub struct Child {
    child: std::process::Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
}

/// `binary --config <config>`, logging at info, with stdin closed and stdout and stderr piped;
/// the caller adds the other arguments and spawns it.
pub fn command(binary: impl AsRef<std::ffi::OsStr>, config: &Path) -> Command {
    let mut command = Command::new(binary);
    command
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// A fresh, empty directory under the system's temporary directory.
pub fn temp_dir(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "mec-plugin-hostile-{name}-{}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A port of 127.0.0.1 that was free a moment ago (the child binds it; the race with other
/// programs taking it in between is negligible on loopback).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Raises this process's descriptor limit (inherited by children started afterwards) to at
/// least `n`, as far as the hard limit allows; returns the new soft limit.
pub fn raise_fd_limit(n: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a stack value.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < n {
            limit.rlim_cur = n.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    limit.rlim_cur
}

/// One simulated region, so that POSTs of the example bodies succeed.
pub const REGION: &str = "[[region]]\nid = \"2\"\ndescription = \"Sophia-Antipolis\"\nlatitude = 43.6143899\nlongitude = 7.068931\nrange_km = 10.0\n[region.mep]\ndriver = \"simulated\"\n";

impl Child {
    /// Starts the binary with `[server]` = loopback port, fresh state dir, `fsync = false`,
    /// `read_timeout_ms = 2000` unless `server_extra` sets it, plus `server_extra`; one
    /// simulated region.
    pub fn start(name: &str, server_extra: &str) -> Child {
        let dir = temp_dir(name);
        let read_timeout = if server_extra.contains("read_timeout_ms") {
            String::new()
        } else {
            "read_timeout_ms = 2000\n".to_string()
        };
        let port = free_port();
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = '{}'\nfsync = false\n{read_timeout}{server_extra}\n\n{REGION}",
            dir.join("state").display()
        );
        let path = dir.join("regions.toml");
        std::fs::write(&path, config).unwrap();
        Child::spawn(
            &path,
            &[],
            &[],
            dir,
            port,
            server_extra.contains("tls_cert"),
        )
    }

    /// [`Child::start`] with `token_file` holding [`TOKEN`].
    pub fn start_with_token(name: &str, server_extra: &str) -> Child {
        let dir = temp_dir(&format!("{name}-token"));
        let token = dir.join("token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        Child::start(
            name,
            &format!("token_file = '{}'\n{server_extra}", token.display()),
        )
    }

    /// Starts the binary on the shipped `regions.toml`, with `--listen` on a free loopback port
    /// and `--state-dir` in a fresh directory.
    pub fn start_shipped(name: &str) -> Child {
        let dir = temp_dir(name);
        let port = free_port();
        let state = dir.join("state");
        let args = [
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--state-dir".to_string(),
            state.display().to_string(),
        ];
        Child::spawn(Path::new(SHIPPED), &args, &[], dir, port, false)
    }

    /// Starts the binary on the configuration file `config`, which makes it listen on
    /// 127.0.0.1:`port`, with `dir` as its directory (removed when the value is dropped: keep
    /// the configuration elsewhere to start it again), and waits until `GET /healthz` answers
    /// 200 (an instance on etcd: once it leads or follows a known leader).
    pub fn start_config(config: &Path, port: u16, dir: PathBuf) -> Child {
        Child::spawn(config, &[], &[], dir, port, false)
    }

    /// [`Child::start_config`] with these environment variables set for the child.
    pub fn start_config_with_env(
        config: &Path,
        port: u16,
        dir: PathBuf,
        env: &[(&str, &Path)],
    ) -> Child {
        Child::spawn(config, &[], env, dir, port, false)
    }

    /// Sends `signal` (`libc::SIGSTOP`, `libc::SIGCONT`, ...) to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child, which is not reaped while `self` lives.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Starts the binary and waits until it serves: `GET /healthz` answers 200, or (`tls`) the
    /// port accepts connections.
    fn spawn(
        config: &Path,
        args: &[String],
        env: &[(&str, &Path)],
        dir: PathBuf,
        port: u16,
        tls: bool,
    ) -> Child {
        let binary = std::env::var_os("MEC_PLUGIN_BIN").unwrap_or_else(|| BIN.into());
        let mut process = command(binary, config)
            .args(args)
            .envs(env.iter().copied())
            .spawn()
            .expect("the binary starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stdout = process.stdout.take().unwrap();
        let stderr = process.stderr.take().unwrap();
        collect(stdout, &logs);
        collect(stderr, &logs);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut child = Child {
            child: process,
            addr,
            dir,
            logs,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.child.try_wait() {
                thread::sleep(Duration::from_millis(100));
                panic!(
                    "mec-plugin exited ({status}) before serving: {}",
                    child.logs().join("\n")
                );
            }
            let serving = if tls {
                TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
            } else {
                healthz_ok(addr)
            };
            if serving {
                return child;
            }
            assert!(
                Instant::now() < deadline,
                "mec-plugin not serving /healthz within 15 s: {}",
                child.logs().join("\n")
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log lines so far (standard output and error, interleaved).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A numeric field of `/proc/<pid>/status` (`Threads`, `VmRSS`, `VmHWM` in kB, ...).
    pub fn status(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/<pid>/status");
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/<pid>/status"))
    }

    /// The value of every `mec_plugin_http_requests_total` line with this status, summed
    /// (`GET /metrics`, with the token when `token` is set).
    pub fn requests_counted(&self, status: u16, token: bool) -> u64 {
        let text = self.metrics(token);
        let label = format!("status=\"{status}\"");
        text.lines()
            .filter(|l| l.starts_with("mec_plugin_http_requests_total{") && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// The text of `GET /metrics`.
    pub fn metrics(&self, token: bool) -> String {
        let auth = if token {
            format!("Authorization: Bearer {TOKEN}\r\n")
        } else {
            String::new()
        };
        let (status, body) = simple(
            self.addr,
            &format!("GET /metrics HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n"),
        )
        .expect("GET /metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        body
    }

    /// `requests` of `GET /healthz`: how many requests the plugin stores.
    pub fn stored_requests(&self) -> u64 {
        let (status, body) = simple(
            self.addr,
            "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .expect("GET /healthz");
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        json["requests"].as_u64().unwrap()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn collect(from: impl Read + Send + 'static, logs: &Arc<Mutex<Vec<String>>>) {
    let logs = Arc::clone(logs);
    thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line).trim_end().to_string();
                    logs.lock().unwrap().push(text);
                }
            }
        }
    });
}

/// Sends `text` on a new connection, reads to the end; status and body (after the head).
pub fn simple(addr: SocketAddr, text: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(text.as_bytes())?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)?;
    let all = String::from_utf8_lossy(&all).into_owned();
    let status = all
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line: {all:?}")))?;
    let body = all
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

fn healthz_ok(addr: SocketAddr) -> bool {
    matches!(
        simple(
            addr,
            "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        ),
        Ok((200, _))
    )
}
