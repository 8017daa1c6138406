//! Life under a service manager (systemd): the `sd_notify` readiness protocol, without a crate,
//! and the termination signals (SIGTERM, SIGINT, SIGHUP) turned into a graceful shutdown.
//!
//! # Notifications
//!
//! When systemd starts a `Type=notify` service it sets `NOTIFY_SOCKET` to the address of a Unix
//! datagram socket: a path, or a name in the abstract namespace written with a leading `@`. A
//! notification is one datagram of newline-separated `KEY=value` assignments (`READY=1`,
//! `STOPPING=1`, `STATUS=...`). [`notify`] sends one; without `NOTIFY_SOCKET` (not started by
//! systemd, or `Type=simple`) it does nothing, and a failure is logged, never fatal: the plugin
//! serves whether or not its manager hears about it.
//!
//! # Signals
//!
//! [`Termination::watch`] takes over SIGTERM (what `systemctl stop` sends), SIGINT (Ctrl-C) and
//! SIGHUP (the terminal closed, or an operator's `kill -HUP`, whose default action would end the
//! process without draining it) and handles them on a thread of its own (`signal_hook`'s
//! self-pipe, so nothing runs inside a signal handler). The first signal triggers the server's
//! [`ShutdownHandle`] — or, if it comes while the plugin is still starting (replaying its
//! state), as soon as the server is there ([`Termination::arm`]). A second signal while that
//! shutdown is under way ends the process at once, by the signal's default action (the
//! operator's second Ctrl-C). That is safe for the state: every change is on disk before it is
//! acknowledged and a start-up recovers from an interrupted one as from a crash; only the
//! requests in flight are cut.
//!
//! SIGHUP does not reload the configuration, which is read once at start (regions and their
//! platforms are static); its log line says so and that `systemctl restart` applies a change.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::server::ShutdownHandle;
use crate::util::lock;

/// The environment variable through which systemd passes its notification socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` (e.g. `"READY=1\nSTATUS=serving"`) to the service manager named by
/// `$NOTIFY_SOCKET`. Returns whether it was sent: `false` when the variable is unset or the
/// sending failed (logged at warn).
pub fn notify(state: &str) -> bool {
    notify_to(std::env::var_os(NOTIFY_SOCKET).as_deref(), state)
}

/// [`notify`] with the socket address given (`None`: no service manager to tell).
pub fn notify_to(socket: Option<&OsStr>, state: &str) -> bool {
    let Some(socket) = socket else {
        return false;
    };
    match send(socket, state) {
        Ok(()) => {
            debug!("notified the service manager: {}", state.replace('\n', " "));
            true
        }
        Err(e) => {
            log::warn!(
                "cannot notify the service manager at {} of {}: {e}",
                socket.to_string_lossy(),
                state.replace('\n', " ")
            );
            false
        }
    }
}

/// Sends one notification datagram to `socket`: an absolute path, or `@name` for the abstract
/// namespace.
pub fn send(socket: &OsStr, state: &str) -> io::Result<()> {
    let addr = notify_address(socket)?;
    let sender = UnixDatagram::unbound()?;
    let sent = sender.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes", state.len()),
        ));
    }
    Ok(())
}

/// The socket address `NOTIFY_SOCKET` names.
fn notify_address(socket: &OsStr) -> io::Result<SocketAddr> {
    match socket.as_bytes() {
        [b'@', name @ ..] if !name.is_empty() => SocketAddr::from_abstract_name(name),
        [b'/', ..] => SocketAddr::from_pathname(socket),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is neither an absolute path nor an @abstract name",
        )),
    }
}

/// Watches SIGTERM, SIGINT and SIGHUP; see the module docs. Dropping it stops the watching
/// thread.
pub struct Termination {
    shared: Arc<Mutex<Armed>>,
    signals: signal_hook::iterator::Handle,
    thread: Option<JoinHandle<()>>,
}

/// What the signal thread and the main thread share.
#[derive(Default)]
struct Armed {
    /// The first signal received.
    received: Option<&'static str>,
    /// What starts the shutdown (triggers the server's [`ShutdownHandle`]), once the server
    /// is running.
    shutdown: Option<Box<dyn Fn() + Send>>,
}

impl Termination {
    /// Takes over SIGTERM, SIGINT and SIGHUP and starts the thread that handles them. Signals
    /// that arrive before [`Termination::arm`] are remembered.
    pub fn watch() -> io::Result<Termination> {
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
        let handle = signals.handle();
        let shared = Arc::new(Mutex::new(Armed::default()));
        let thread = thread::Builder::new().name("signals".into()).spawn({
            let shared = Arc::clone(&shared);
            move || {
                for signal in signals.forever() {
                    on_signal(&shared, signal);
                }
            }
        })?;
        Ok(Termination {
            shared,
            signals: handle,
            thread: Some(thread),
        })
    }

    /// From now on a signal triggers `shutdown`; triggers it at once if a signal came already.
    pub fn arm(&self, shutdown: ShutdownHandle) {
        self.arm_with(Box::new(move || shutdown.trigger()));
    }

    fn arm_with(&self, shutdown: Box<dyn Fn() + Send>) {
        let mut armed = lock(&self.shared);
        if let Some(signal) = armed.received {
            log::info!("shutting down now that the plugin has started ({signal} received)");
            shutdown();
        }
        armed.shutdown = Some(shutdown);
    }

    /// The signal that asked for the shutdown, if one did.
    pub fn received(&self) -> Option<&'static str> {
        lock(&self.shared).received
    }
}

impl Drop for Termination {
    fn drop(&mut self) {
        self.signals.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn on_signal(shared: &Mutex<Armed>, signal: i32) {
    let name = signal_name(signal);
    let mut armed = lock(shared);
    match armed.received {
        None => {
            armed.received = Some(name);
            match &armed.shutdown {
                Some(shutdown) => {
                    log::info!(
                        "{name} received: shutting down gracefully (a second signal exits at \
                         once){}",
                        no_reload(signal)
                    );
                    shutdown();
                }
                None => log::info!(
                    "{name} received while starting: shutting down as soon as the state is \
                     loaded (a second signal exits at once){}",
                    no_reload(signal)
                ),
            }
        }
        Some(first) => {
            drop(armed);
            log::warn!(
                "{name} received during the shutdown asked by {first}: exiting at once; requests \
                 in flight are cut (the state on disk stays consistent)"
            );
            // Restores the default action (terminate) and raises the signal again, so that
            // the parent sees the process ended by it; exit(128 + n) is the fallback.
            let _ = signal_hook::low_level::emulate_default_handler(signal);
            std::process::exit(128 + signal);
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// What the log line adds for SIGHUP, which many daemons take as "reload".
fn no_reload(signal: i32) -> &'static str {
    if signal == SIGHUP {
        "; the configuration is read only at start and is not reloaded: `systemctl restart \
         mec-plugin` applies a change"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn a_notification_reaches_a_socket_named_by_its_path() {
        let dir = std::env::temp_dir().join(format!("mec-plugin-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let manager = UnixDatagram::bind(&path).unwrap();
        assert!(notify_to(
            Some(path.as_os_str()),
            "READY=1\nSTATUS=serving on 127.0.0.1:1"
        ));
        assert_eq!(receive(&manager), "READY=1\nSTATUS=serving on 127.0.0.1:1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_notification_reaches_an_abstract_socket_named_with_an_at_sign() {
        let name = format!("mec-plugin-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let manager = UnixDatagram::bind_addr(&addr).unwrap();
        assert!(notify_to(
            Some(OsStr::new(&format!("@{name}"))),
            "STOPPING=1"
        ));
        assert_eq!(receive(&manager), "STOPPING=1");
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_failures_are_not_fatal() {
        assert!(!notify_to(None, "READY=1"));
        // Nobody listens there, or the name is not an address at all: logged, not fatal.
        assert!(!notify_to(
            Some(OsStr::new("/nonexistent/mec-plugin/notify.sock")),
            "READY=1"
        ));
        for bad in ["relative/notify.sock", "@", "", "vsock:2:1"] {
            assert_eq!(
                send(OsStr::new(bad), "READY=1").unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{bad:?}"
            );
        }
    }

    /// A shutdown target that counts how often it was triggered.
    fn counter() -> (Arc<AtomicUsize>, Box<dyn Fn() + Send>) {
        let count = Arc::new(AtomicUsize::new(0));
        let target = Arc::clone(&count);
        (
            count,
            Box::new(move || {
                target.fetch_add(1, Ordering::SeqCst);
            }),
        )
    }

    #[test]
    fn a_signal_before_arming_is_remembered_and_triggers_the_shutdown_when_armed() {
        let shared = Mutex::new(Armed::default());
        on_signal(&shared, SIGTERM);
        assert_eq!(lock(&shared).received, Some("SIGTERM"));
        let termination = Termination {
            shared: Arc::new(shared),
            signals: Signals::new([] as [i32; 0]).unwrap().handle(),
            thread: None,
        };
        let (count, target) = counter();
        termination.arm_with(target);
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert_eq!(termination.received(), Some("SIGTERM"));
    }

    #[test]
    fn the_first_signal_after_arming_triggers_the_shutdown() {
        let (count, target) = counter();
        let shared = Mutex::new(Armed {
            received: None,
            shutdown: Some(target),
        });
        on_signal(&shared, SIGINT);
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert_eq!(lock(&shared).received, Some("SIGINT"));
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(SIGTERM), "SIGTERM");
        assert_eq!(signal_name(SIGINT), "SIGINT");
        assert_eq!(signal_name(SIGHUP), "SIGHUP");
        assert!(no_reload(SIGHUP).contains("not reloaded"));
        assert_eq!(no_reload(SIGTERM), "");
    }
}
