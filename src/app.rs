//! Wiring: the validated configuration becomes a [`Service`], recovered and with its
//! [`Reconciler`], behind the hardened HTTP [`Server`]. `main` parses the command line,
//! [`load`]s the configuration and calls [`run`].

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::api;
use crate::cluster::Cluster;
use crate::config::{Config, ConfigError, StoreKind};
use crate::reconciler::{self, Reconciler};
use crate::server::{self, Server};
use crate::service::Service;
use crate::store::StoreError;
use crate::systemd;

/// Command-line overrides of the configuration file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub state_dir: Option<PathBuf>,
}

/// Loads the configuration file and applies the command-line overrides (`--state-dir` is
/// checked as `[server] state_dir` would be: [`Config::load_with`]).
pub fn load(path: &std::path::Path, overrides: &Overrides) -> Result<Config, ConfigError> {
    let mut config = Config::load_with(path, overrides.state_dir.as_deref())?;
    if let Some(listen) = overrides.listen {
        config.server.listen = listen;
    }
    Ok(config)
}

/// Why the plugin could not start.
#[derive(Debug)]
pub enum StartError {
    /// The state directory cannot be used (locked, damaged, unreadable).
    State(StoreError),
    /// The listener on this address could not be set up.
    Listen(SocketAddr, io::Error),
    /// The reconciler thread could not be started.
    Reconciler(io::Error),
    /// `[store] kind = "etcd"`: the etcd client or the term watcher could not be set up.
    Cluster(String),
    /// The records and the configuration contradict each other in a way no restart mends
    /// ([`Service::check_platforms_taken_over`]).
    Records(String),
}

impl StartError {
    /// The process's exit code: 2 when the configuration must change first (systemd's
    /// `RestartPreventExitStatus=2` then stops restarting it), else 1. A listen address that
    /// is not this host's, or a port below 1024 without the capability (the unit grants none),
    /// is 2: no retry can bind it. An address in use stays 1: its holder may let it go.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Records(_) => 2,
            StartError::Listen(_, e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::PermissionDenied | io::ErrorKind::AddrNotAvailable
                ) =>
            {
                2
            }
            _ => 1,
        }
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::State(e) => write!(f, "cannot use the state: {e}"),
            StartError::Listen(addr, e) => {
                write!(f, "cannot start serving on {addr}: {e}")?;
                match e.kind() {
                    io::ErrorKind::AddrInUse => f.write_str(
                        " (another process listens there: stop it or pick another listen address)",
                    ),
                    io::ErrorKind::PermissionDenied => f.write_str(
                        " (a port below 1024 needs the CAP_NET_BIND_SERVICE capability; or pick a \
                         port above 1023)",
                    ),
                    io::ErrorKind::AddrNotAvailable => {
                        f.write_str(" (no interface of this host has that address)")
                    }
                    _ => Ok(()),
                }
            }
            StartError::Reconciler(e) => write!(f, "cannot start the reconciler thread: {e}"),
            StartError::Cluster(e) => write!(f, "cannot join the instances on etcd: {e}"),
            StartError::Records(e) => write!(f, "the configuration does not fit the records: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// The warning of a start on more records than `[server] max_requests` (lowered since they
/// were created): they are all kept and served, and creations are refused until fewer are
/// stored.
fn over_the_limit(stored: usize, max_requests: usize) -> Option<String> {
    (stored > max_requests).then(|| {
        format!(
            "{stored} requests are stored, more than [server] max_requests ({max_requests}): \
             all are kept and served, but creations are refused (507) until fewer than \
             {max_requests} are stored; delete {} or raise max_requests",
            stored + 1 - max_requests
        )
    })
}

/// A running plugin: the service, its reconciler and the server in front of it; with an etcd
/// store, the [`Cluster`] instead (which publishes the service of each term it leads, with
/// its reconciler).
pub struct App {
    /// The service; with an etcd store, the configured regions without records (the records
    /// are the leader's: see [`App::cluster`]).
    pub service: Arc<Service>,
    pub server: Server,
    reconciler: Option<Reconciler>,
    /// With `[store] kind = "etcd"`: the election and the leader's service of each term.
    pub cluster: Option<Arc<Cluster>>,
}

impl App {
    /// Opens the state, builds the service from the configuration, resolves what a crash left
    /// half-done ([`reconciler::recover`]) and starts serving.
    pub fn start(config: &Config) -> Result<App, StartError> {
        if config.store.kind == StoreKind::Etcd {
            return App::start_cluster(config);
        }
        let service = Service::open(config).map_err(StartError::State)?;
        service
            .check_platforms_taken_over()
            .map_err(StartError::Records)?;
        if let Some(line) = over_the_limit(service.list_len(), config.server.max_requests) {
            warn!("{line}");
        }
        reconciler::recover(&service).map_err(StartError::State)?;
        App::start_with(config, Arc::new(service))
    }

    /// Starts the reconciler and the server for a given service (tests inject drivers this
    /// way).
    pub fn start_with(config: &Config, service: Arc<Service>) -> Result<App, StartError> {
        let reconciler = Reconciler::start(service.clone()).map_err(StartError::Reconciler)?;
        let api = api::Api {
            service: service.clone(),
            style: config.server.api_style,
            token: config.server.token.clone(),
        };
        let handler: server::Handler = Arc::new(api);
        let server = match Server::start(server::Options::from_config(&config.server), handler) {
            Ok(server) => server,
            Err(e) => {
                // Joined, not only told to stop: once the error is returned, nothing of this
                // start holds the service (and with it the state directory's lock), so a retry
                // on the same directory is not told it is in use.
                reconciler.stop();
                return Err(StartError::Listen(config.server.listen, e));
            }
        };
        Ok(App {
            service,
            server,
            reconciler: Some(reconciler),
            cluster: None,
        })
    }

    /// `[store] kind = "etcd"`: campaigns (the term watcher recovers and serves each term this
    /// instance leads) and serves every call by role ([`api::ClusterApi`]).
    fn start_cluster(config: &Config) -> Result<App, StartError> {
        let cluster = Arc::new(Cluster::start(config).map_err(StartError::Cluster)?);
        let regions = Arc::new(cluster.regions());
        let api = api::ClusterApi {
            cluster: cluster.clone(),
            regions: regions.clone(),
            style: config.server.api_style,
            token: config.server.token.clone(),
        };
        let handler: server::Handler = Arc::new(api);
        // On an error the cluster is dropped, which steps down (revoking the lease).
        let server = Server::start(server::Options::from_config(&config.server), handler)
            .map_err(|e| StartError::Listen(config.server.listen, e))?;
        Ok(App {
            service: regions,
            server,
            reconciler: None,
            cluster: Some(cluster),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Stops serving (requests in flight get `grace` to finish), then the reconciler.
    pub fn stop(self, grace: Duration) {
        self.server.shutdown(grace);
        if let Some(reconciler) = self.reconciler {
            reconciler.stop();
        }
        if let Some(cluster) = self.cluster {
            // The API held the other reference; once it is gone, stopping steps down at once
            // (revoking the lease: another instance takes over without waiting for the TTL).
            match Arc::try_unwrap(cluster) {
                Ok(cluster) => cluster.stop(),
                Err(cluster) => drop(cluster),
            }
        }
    }
}

/// How long requests in flight get to finish once a shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// Bound on the whole shutdown (server, then reconciler): past it the process exits anyway,
/// which is safe (every change is on disk before it is acknowledged, and a start-up recovers
/// from an interrupted one as from a crash). Under 5 s, half the unit's `TimeoutStopSec=10`.
const SHUTDOWN_BOUND: Duration = Duration::from_millis(4500);

/// Runs the plugin until SIGTERM, SIGINT or SIGHUP, telling systemd (`NOTIFY_SOCKET`) when it
/// is ready and when it stops; see [`crate::systemd`]. The shutdown stops accepting, lets
/// requests in flight finish (up to 4 s), stops the reconciler, and returns within 4.5 s.
pub fn run(config: &Config) -> Result<(), StartError> {
    for warning in &config.warnings {
        warn!("{warning}");
    }
    // Before starting, so that a SIGTERM during a long state replay is not lost.
    let termination = match systemd::Termination::watch() {
        Ok(termination) => Some(termination),
        Err(e) => {
            warn!(
                "cannot handle SIGTERM, SIGINT and SIGHUP ({e}): they will end the process at once"
            );
            None
        }
    };
    for line in config.summary() {
        info!("{line}");
    }
    let app = App::start(config)?;
    let state = match &app.cluster {
        Some(_) => format!("state in etcd under {}", config.store.prefix),
        None => {
            let dir = &config.server.state_dir;
            let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
            format!("state in {}", dir.display())
        }
    };
    info!(
        "mec-plugin {} ready: API at {}://{}{} (api_style {:?}, {state})",
        env!("CARGO_PKG_VERSION"),
        app.server.scheme(),
        app.local_addr(),
        api::BASE,
        config.server.api_style,
    );
    let shutdown = app.server.shutdown_handle();
    if let Some(termination) = &termination {
        termination.arm(shutdown.clone());
    }
    if let Some(cluster) = &app.cluster {
        wait_for_role(cluster, &shutdown);
    }
    if !shutdown.is_triggered() {
        notify_ready(&app);
    }

    app.server.wait();
    let began = Instant::now();
    let reason = termination
        .as_ref()
        .and_then(systemd::Termination::received)
        .unwrap_or("a shutdown request");
    systemd::notify(&format!("STOPPING=1\nSTATUS=stopping ({reason})"));
    info!(
        "stopping: no new connections; requests in flight get up to {} ms, then the reconciler \
         stops",
        SHUTDOWN_GRACE.as_millis()
    );
    stop_within_bound(app);
    info!("mec-plugin stopped in {} ms", began.elapsed().as_millis());
    Ok(())
}

/// How often the wait for a role logs that it is still waiting.
const ROLE_WAIT_LOG_EVERY: Duration = Duration::from_secs(5);

/// Waits (before `READY=1`) until this instance leads with its records recovered or follows a
/// known leader, logging while it waits; returns early on a shutdown.
fn wait_for_role(cluster: &Cluster, shutdown: &server::ShutdownHandle) {
    let began = Instant::now();
    let mut logged = began;
    while !shutdown.is_triggered() && !cluster.wait_ready(Duration::from_millis(200)) {
        if logged.elapsed() >= ROLE_WAIT_LOG_EVERY {
            logged = Instant::now();
            let etcd = if cluster.etcd_reachable() {
                "reachable"
            } else {
                "unreachable"
            };
            let why = cluster
                .why_unknown()
                .map_or(String::new(), |why| format!(": {why}"));
            warn!(
                "not ready after {} s: no role yet (etcd {etcd}{why}); changes and reads answer \
                 503 meanwhile",
                began.elapsed().as_secs()
            );
            systemd::notify(&format!("STATUS=waiting for a leader (etcd {etcd})"));
        }
    }
}

/// Tells systemd the plugin is ready: listening, and the state is replayed (what it waits for
/// before it starts the units ordered after this one); with an etcd store, leading or
/// following a known leader.
fn notify_ready(app: &App) {
    if let Some(cluster) = &app.cluster {
        let role = match cluster.role() {
            crate::leader::Role::Leader => "leading".to_string(),
            crate::leader::Role::Follower { leader_url } => format!("following {leader_url}"),
            crate::leader::Role::Unknown => "role unknown".to_string(),
        };
        info!("ready: {role}");
        systemd::notify(&format!(
            "READY=1\nSTATUS=serving on {}://{}{}, {role}",
            app.server.scheme(),
            app.local_addr(),
            api::BASE
        ));
        return;
    }
    let records = app.service.list_len();
    let backlog = app.service.backlog();
    let pending = if backlog > 0 {
        format!(", {backlog} removal(s) pending")
    } else {
        String::new()
    };
    systemd::notify(&format!(
        "READY=1\nSTATUS=serving on {}://{}{}, {records} record(s){pending}",
        app.server.scheme(),
        app.local_addr(),
        api::BASE
    ));
}

/// Stops `app` ([`SHUTDOWN_GRACE`] for the requests in flight); a watchdog thread ends the
/// process if that takes longer than [`SHUTDOWN_BOUND`].
fn stop_within_bound(app: App) {
    let (stopped, watched) = mpsc::channel::<()>();
    let watchdog = thread::Builder::new()
        .name("stop-watchdog".into())
        .spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = watched.recv_timeout(SHUTDOWN_BOUND) {
                warn!(
                    "still stopping after {} ms (a platform call of the reconciler?): exiting \
                     now; the state on disk is consistent",
                    SHUTDOWN_BOUND.as_millis()
                );
                std::process::exit(0);
            }
        });
    if let Err(e) = &watchdog {
        warn!("cannot bound the shutdown ({e}); stopping without a time limit");
    }
    app.stop(SHUTDOWN_GRACE);
    drop(stopped);
    if let Ok(watchdog) = watchdog {
        let _ = watchdog.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Operator audit: a privileged port without the capability exited 1, and the unit's
    /// `Restart=always` restarted it every 2 s forever, though no retry can bind it. So does an
    /// address of no interface here; a port in use may be released, and is retried.
    #[test]
    fn a_listen_address_no_retry_can_bind_exits_2_and_one_in_use_exits_1() {
        let addr: SocketAddr = "127.0.0.1:443".parse().unwrap();
        let listen = |errno| StartError::Listen(addr, io::Error::from_raw_os_error(errno));
        let denied = listen(libc::EACCES);
        assert_eq!(denied.exit_code(), 2);
        assert!(
            denied
                .to_string()
                .starts_with("cannot start serving on 127.0.0.1:443: ")
                && denied.to_string().contains("CAP_NET_BIND_SERVICE"),
            "{denied}"
        );
        let elsewhere = listen(libc::EADDRNOTAVAIL);
        assert_eq!(elsewhere.exit_code(), 2);
        assert!(
            elsewhere
                .to_string()
                .contains("no interface of this host has that address"),
            "{elsewhere}"
        );
        let busy = listen(libc::EADDRINUSE);
        assert_eq!(busy.exit_code(), 1);
        assert!(
            busy.to_string().contains("another process listens there"),
            "{busy}"
        );
        assert_eq!(listen(libc::EMFILE).exit_code(), 1);
    }

    /// Review 3, L1: a start on more records than `max_requests` said nothing, and creations
    /// were then refused.
    #[test]
    fn a_start_on_more_requests_than_max_requests_warns_that_creations_are_refused() {
        assert_eq!(over_the_limit(2, 2), None);
        assert_eq!(over_the_limit(0, 100), None);
        let line = over_the_limit(5, 2).unwrap();
        assert!(
            line.starts_with("5 requests are stored, more than [server] max_requests (2)"),
            "{line}"
        );
        assert!(
            line.contains("creations are refused (507) until fewer than 2"),
            "{line}"
        );
        assert!(line.contains("delete 4"), "{line}");
    }
}
