//! The real binary: `--check`, `--help`, `--version` (into a closed pipe too), refusing a bad
//! configuration or command line (exit 2), a state directory that cannot be right or a busy
//! port (exit 1, saying why), a privileged port without the capability (exit 2, saying why),
//! and serving the shipped `regions.toml` (the README's run command) on a loopback port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_mec-plugin");
const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/regions.toml");

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mec-plugin-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A pipe whose read end is already closed: every write to the other end fails (EPIPE), as
/// when the output is piped into `head`, which exited.
fn reader_gone() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) fills the two-element array it is given. Close-on-exec, as std's own
    // pipes: children other tests start meanwhile must not inherit the write end.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created by pipe(2) and are owned here alone.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    Stdio::from(write)
}

#[test]
fn check_and_version_into_a_closed_pipe_exit_as_they_would_without_a_panic() {
    for (args, code) in [
        (&["--config", SHIPPED, "--check"][..], 0),
        (&["--config", "/nonexistent/regions.toml", "--check"][..], 2),
        (&["--version"][..], 0),
    ] {
        let out = Command::new(BIN)
            .args(args)
            .stdout(reader_gone())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn check_prints_one_line_per_region_and_exits_zero() {
    let out = Command::new(BIN)
        .args(["--config", SHIPPED, "--check"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("region 2: lat 43.6143899 lon 7.068931"),
        "{text}"
    );
    assert!(text.contains("driver simulated"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("region ")).count(),
        2,
        "{text}"
    );
}

#[test]
fn a_bad_configuration_is_refused_naming_file_line_region_and_key() {
    let dir = temp_dir("bad");
    let path = dir.join("bad.toml");
    let shipped = std::fs::read_to_string(SHIPPED).unwrap();
    let line = 1 + shipped
        .lines()
        .position(|l| l.starts_with("range_km = 10.0"))
        .unwrap();
    let text = shipped.replace("range_km = 10.0", "range_km = -1.0");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .arg("--check")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(&format!("bad.toml: line {line}: region '2': range_km")),
        "{err}"
    );
    let missing = Command::new(BIN)
        .args(["--config", "/nonexistent/regions.toml", "--check"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/regions.toml"));
}

#[test]
fn help_and_version_are_printed() {
    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    for flag in [
        "--config",
        "--listen",
        "--state-dir",
        "--check",
        "--version",
    ] {
        assert!(text.contains(flag), "{flag} missing from --help: {text}");
    }
    let version = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8(version.stdout).unwrap().trim(),
        format!("mec-plugin {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn usage_errors_exit_2_as_an_invalid_configuration_does() {
    // The unit's RestartPreventExitStatus=2 then fails a bad flag at once instead of
    // restarting it every 2 s.
    for (args, says) in [
        (&["--bogus"][..], "Unrecognized argument: --bogus"),
        (&["--listen", "foo"][..], "Error parsing option '--listen'"),
        (
            &["--state-dir", "", "--check"][..],
            "--state-dir must not be empty",
        ),
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// Runs the binary on the shipped regions (a copy in `dir`, `state_dir` as given) from the
/// working directory `cwd`, listening on `listen`, until it exits (or 10 s): its exit code,
/// its log and its standard error.
fn run_from(dir: &Path, cwd: &Path, state_dir: &str, listen: &str) -> (Option<i32>, String) {
    let shipped = std::fs::read_to_string(SHIPPED).unwrap();
    let config = dir.join("regions.toml");
    std::fs::write(
        &config,
        shipped.replace(
            "state_dir = \"state\"",
            &format!("state_dir = {state_dir:?}"),
        ),
    )
    .unwrap();
    run_from_config(&config, listen, cwd)
}

#[test]
fn a_state_dir_that_cannot_be_right_stops_the_start_saying_why() {
    let dir = temp_dir("state-paths");
    // A busy port: each start below ends at the listener, after the state was opened.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = busy.local_addr().unwrap().to_string();

    // Relative to the configuration file's directory, not to the working directory.
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let (code, log) = run_from(&dir, &elsewhere, "st", &listen);
    assert_eq!(code, Some(1), "{log}");
    assert!(dir.join("st").is_dir(), "{log}");
    assert!(!elsewhere.join("st").exists(), "{log}");
    assert!(
        log.contains(&format!(
            "cannot start serving on {listen}: Address already in use"
        )) && log.contains("another process listens there"),
        "{log}"
    );

    // A missing parent is not created: most likely a mistyped path. Refused as an invalid
    // configuration (exit 2, not retried by systemd), by `--check` too (review 3, M3).
    let line = state_dir_line();
    let (code, log) = run_from(&dir, &dir, "typo/st", &listen);
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains(&format!(
            "regions.toml: line {line}: [server] state_dir = '{}' does not exist and its parent directory {} does not exist",
            dir.join("typo/st").display(),
            dir.join("typo").display()
        )),
        "{log}"
    );
    assert_eq!(check(&dir.join("regions.toml"), &[]).0, Some(2));
    assert!(!dir.join("typo").exists());

    // A file where the directory should be.
    std::fs::write(dir.join("afile"), "x").unwrap();
    let (code, log) = run_from(&dir, &dir, "afile", &listen);
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains(&format!(
            "line {line}: [server] state_dir = '{}' exists and is not a directory",
            dir.join("afile").display()
        )),
        "{log}"
    );
    let (code, err) = check(&dir.join("regions.toml"), &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("exists and is not a directory"), "{err}");
    // --state-dir is checked in its place: a good one makes the same file pass.
    let (code, err) = check(
        &dir.join("regions.toml"),
        &["--state-dir".as_ref(), dir.as_os_str()],
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = check(
        &dir.join("regions.toml"),
        &["--state-dir".as_ref(), dir.join("afile").as_os_str()],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--state-dir '"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Operator audit: a port below 1024 without the capability exited 1, which the unit's
/// `Restart=always` retried every 2 s forever (its `CapabilityBoundingSet=` is empty, so no
/// retry can bind it). It exits 2 now, as an invalid configuration does, saying why; a port in
/// use still exits 1 (see above). Run as an unprivileged user: as root through `setpriv`.
#[test]
fn a_privileged_port_without_the_capability_exits_2_saying_why() {
    let test = "a_privileged_port_without_the_capability_exits_2_saying_why";
    let first_free: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024);
    if first_free < 2 {
        eprintln!("SKIPPED {test}: every port is unprivileged here (ip_unprivileged_port_start)");
        return;
    }
    // SAFETY: geteuid(2) takes nothing and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    if root && setpriv.is_none() {
        eprintln!("SKIPPED {test}: running as root and setpriv (util-linux) is missing");
        return;
    }
    let dir = temp_dir("privileged-port");
    let state = dir.join("state");
    std::fs::create_dir(&state).unwrap();
    // Readable and writable by the unprivileged user (nobody) the binary runs as.
    use std::os::unix::fs::PermissionsExt;
    for path in [&dir, &state] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let config = dir.join("regions.toml");
    std::fs::copy(SHIPPED, &config).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let listen = "127.0.0.1:1";
    let mut command = match (root, setpriv) {
        (true, Some(setpriv)) => {
            let mut c = Command::new(setpriv);
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(BIN);
            c
        }
        _ => Command::new(BIN),
    };
    let out = command
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .args(["--listen", listen])
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(
        log.contains(&format!(
            "cannot start serving on {listen}: Permission denied"
        )) && log.contains("CAP_NET_BIND_SERVICE"),
        "{log}"
    );
}

/// The line of `state_dir` in the shipped configuration.
fn state_dir_line() -> usize {
    let shipped = std::fs::read_to_string(SHIPPED).unwrap();
    1 + shipped
        .lines()
        .position(|l| l.starts_with("state_dir = "))
        .unwrap()
}

/// `--check` of `config` with `args`: its exit code and standard error.
fn check(config: &Path, args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("--check")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Review 3, M2: a `tls_key` that is not the certificate's (or is encrypted) passed `--check`,
/// and the start failed at the listener with exit 1 and no line, which systemd restarted
/// forever. Both now refuse it as an invalid configuration, naming the key and its line.
#[test]
fn a_tls_key_that_does_not_fit_its_certificate_fails_check_and_start_with_exit_2() {
    let dir = temp_dir("tls-mismatch");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("a.crt"), cert.pem()).unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(dir.join("b.key"), other.serialize_pem()).unwrap();
    let config = dir.join("regions.toml");
    let shipped = std::fs::read_to_string(SHIPPED).unwrap();
    let line = state_dir_line();
    std::fs::write(
        &config,
        shipped.replace(
            "state_dir = \"state\"",
            "state_dir = \"state\"\ntls_cert = \"a.crt\"\ntls_key = \"b.key\"",
        ),
    )
    .unwrap();
    let says = format!(
        "regions.toml: line {}: [server] tls_key = 'b.key' is not the key of the first certificate in tls_cert",
        line + 2
    );
    let (code, err) = check(&config, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&says), "{err}");
    let (code, log) = run_from_config(&config, "127.0.0.1:0", &dir);
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains(&says), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs the binary on `config` from the working directory `cwd`, listening on `listen`, until
/// it exits (or 10 s): its exit code, then its log and what was refused before logging began
/// (standard output, then standard error).
fn run_from_config(config: &Path, listen: &str, cwd: &Path) -> (Option<i32>, String) {
    run_with_env(config, listen, cwd, &[])
}

/// [`run_from_config`] with these environment variables set.
fn run_with_env(
    config: &Path,
    listen: &str,
    cwd: &Path,
    env: &[(&str, &str)],
) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(["--listen", listen])
        .envs(env.iter().copied())
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), log)
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary on the shipped configuration and returns it with its address, read from
/// its "listening on" log line.
fn start_shipped(dir: &std::path::Path) -> (Running, String, mpsc::Receiver<String>) {
    start_shipped_logging(dir, "info")
}

/// [`start_shipped`] with `RUST_LOG=level`.
fn start_shipped_logging(
    dir: &std::path::Path,
    level: &str,
) -> (Running, String, mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .args([
            "--config",
            SHIPPED,
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(dir)
        .env("RUST_LOG", level)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the plugin logs its address");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            let addr = rest.split(['/', ' ']).next().unwrap().to_string();
            return (running, addr, rx);
        }
    }
}

fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[test]
fn the_binary_serves_the_shipped_configuration_and_logs_one_line_per_request() {
    let dir = temp_dir("run");
    let (_running, addr, logs) = start_shipped(&dir);
    let (status, body) = http(&addr, "GET", "/MEC/v1/service/regions", "");
    assert_eq!(status, 200);
    assert!(body.contains("\"RegionId\":\"2\""), "{body}");
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/traffic-and-dns.json"
    ))
    .unwrap();
    let (status, body) = http(&addr, "POST", "/MEC/v1/service/requests", &example);
    assert_eq!(status, 201, "{body}");
    let id: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = id["RequestId"].as_str().unwrap();
    let (status, _) = http(
        &addr,
        "DELETE",
        &format!("/MEC/v1/service/requests/{id}"),
        "",
    );
    assert_eq!(status, 201);
    let mut seen = Vec::new();
    while let Ok(line) = logs.recv_timeout(Duration::from_secs(2)) {
        seen.push(line);
        if seen
            .iter()
            .any(|l| l.contains("DELETE /MEC/v1/service/requests/"))
        {
            break;
        }
    }
    let request_line = seen
        .iter()
        .find(|l| l.contains("POST /MEC/v1/service/requests 201"))
        .cloned();
    assert!(
        request_line.is_some_and(|l| l.contains("ms")),
        "one line per request with status and ms: {seen:?}"
    );
}

/// The plugin's own debug lines survive `log`'s `release_max_level_info` (which compiles the
/// dependencies' debug calls out): `RUST_LOG=debug` shows them, `info` does not. The line
/// looked for is the front end's at a graceful stop.
#[test]
fn rust_log_debug_shows_the_plugins_own_debug_lines_and_info_hides_them() {
    for (level, shown) in [("debug", true), ("info", false)] {
        let dir = temp_dir(&format!("debug-{level}"));
        let (running, addr, logs) = start_shipped_logging(&dir, level);
        assert_eq!(http(&addr, "GET", "/healthz", "").0, 200);
        // SAFETY: a signal to our own child, which has not been waited for.
        unsafe { libc::kill(running.0.id() as libc::pid_t, libc::SIGTERM) };
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            match logs.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let debug_lines: Vec<&String> = seen.iter().filter(|l| l.contains("DEBUG")).collect();
        assert_eq!(
            debug_lines
                .iter()
                .any(|l| l.contains(&format!("I/O loop on {addr} ended"))),
            shown,
            "RUST_LOG={level}: {seen:#?}"
        );
        if !shown {
            assert!(debug_lines.is_empty(), "RUST_LOG={level}: {debug_lines:#?}");
        }
    }
}

/// The operations review: `RUST_LOG=mec_plugin=debug` (a per-module filter, which this build
/// does not read) silently logged at info. It still does, and says so.
#[test]
fn a_log_level_this_build_does_not_read_is_named_in_a_warning() {
    let dir = temp_dir("rust-log");
    let config = dir.join("regions.toml");
    std::fs::copy(SHIPPED, &config).unwrap();
    // A busy port: the start ends at the listener, after the logger was set up.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = busy.local_addr().unwrap().to_string();
    for (value, warned) in [
        ("mec_plugin=debug", true),
        ("debug", false),
        ("WARN", false),
    ] {
        let (code, log) = run_with_env(&config, &listen, &dir, &[("RUST_LOG", value)]);
        assert_eq!(code, Some(1), "{log}");
        let warning = format!("RUST_LOG=\"{value}\" is not a level this build reads");
        assert_eq!(log.contains(&warning), warned, "{value}: {log}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
