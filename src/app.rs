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
use crate::config::{Config, ConfigError};
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

/// Loads the configuration file and applies the command-line overrides.
pub fn load(path: &std::path::Path, overrides: &Overrides) -> Result<Config, ConfigError> {
    let mut config = Config::load(path)?;
    if let Some(listen) = overrides.listen {
        config.server.listen = listen;
    }
    if let Some(dir) = &overrides.state_dir {
        config.server.state_dir = dir.clone();
    }
    Ok(config)
}

/// Why the plugin could not start.
#[derive(Debug)]
pub enum StartError {
    /// The state directory cannot be used (locked, damaged, unreadable).
    State(StoreError),
    /// The listener could not be set up.
    Listen(io::Error),
    /// The reconciler thread could not be started.
    Reconciler(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::State(e) => write!(f, "cannot use the state: {e}"),
            StartError::Listen(e) => write!(f, "cannot start serving: {e}"),
            StartError::Reconciler(e) => write!(f, "cannot start the reconciler thread: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A running plugin: the service, its reconciler and the server in front of it.
pub struct App {
    pub service: Arc<Service>,
    pub server: Server,
    reconciler: Reconciler,
}

impl App {
    /// Opens the state, builds the service from the configuration, resolves what a crash left
    /// half-done ([`reconciler::recover`]) and starts serving.
    pub fn start(config: &Config) -> Result<App, StartError> {
        let service = Service::open(config).map_err(StartError::State)?;
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
                return Err(StartError::Listen(e));
            }
        };
        Ok(App {
            service,
            server,
            reconciler,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Stops serving (requests in flight get `grace` to finish), then the reconciler.
    pub fn stop(self, grace: Duration) {
        self.server.shutdown(grace);
        self.reconciler.stop();
    }
}

/// How long requests in flight get to finish once a shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// Bound on the whole shutdown (server, then reconciler): past it the process exits anyway,
/// which is safe (every change is on disk before it is acknowledged, and a start-up recovers
/// from an interrupted one as from a crash). Under 5 s, half the unit's `TimeoutStopSec=10`.
const SHUTDOWN_BOUND: Duration = Duration::from_millis(4500);

/// Runs the plugin until SIGTERM or SIGINT, telling systemd (`NOTIFY_SOCKET`) when it is ready
/// and when it stops; see [`crate::systemd`]. The shutdown stops accepting, lets requests in
/// flight finish (up to 4 s), stops the reconciler, and returns within 4.5 s.
pub fn run(config: &Config) -> Result<(), StartError> {
    // Before starting, so that a SIGTERM during a long state replay is not lost.
    let termination = match systemd::Termination::watch() {
        Ok(termination) => Some(termination),
        Err(e) => {
            warn!("cannot handle SIGTERM and SIGINT ({e}): they will end the process at once");
            None
        }
    };
    for line in config.summary() {
        info!("{line}");
    }
    let app = App::start(config)?;
    info!(
        "mec-plugin {} ready: API at {}://{}{} (api_style {:?}, state in {})",
        env!("CARGO_PKG_VERSION"),
        app.server.scheme(),
        app.local_addr(),
        api::BASE,
        config.server.api_style,
        config.server.state_dir.display()
    );
    let shutdown = app.server.shutdown_handle();
    if let Some(termination) = &termination {
        termination.arm(shutdown.clone());
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

/// Tells systemd the plugin is ready: listening, and the state is replayed (what it waits for
/// before it starts the units ordered after this one).
fn notify_ready(app: &App) {
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
