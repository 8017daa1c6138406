//! Wiring: the validated configuration becomes a [`Service`] behind the hardened HTTP
//! [`Server`]. `main` parses the command line and calls [`run`] or [`check`].

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use log::info;

use crate::api;
use crate::config::{Config, ConfigError};
use crate::server::{self, Server};
use crate::service::Service;
use crate::store::StoreError;

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
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::State(e) => write!(f, "cannot use the state: {e}"),
            StartError::Listen(e) => write!(f, "cannot listen: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A running plugin: the service, its reconciler and the server in front of it.
pub struct App {
    pub service: Arc<Service>,
    pub server: Server,
    stop: Arc<AtomicBool>,
    reconciler: Option<JoinHandle<()>>,
}

impl App {
    /// Opens the state, builds the service from the configuration and starts serving.
    pub fn start(config: &Config) -> Result<App, StartError> {
        let service = Service::open(config).map_err(StartError::State)?;
        App::start_with(config, Arc::new(service))
    }

    /// Starts the reconciler and the server for a given service (tests inject drivers this
    /// way).
    pub fn start_with(config: &Config, service: Arc<Service>) -> Result<App, StartError> {
        let stop = Arc::new(AtomicBool::new(false));
        let reconciler = {
            let (service, stop) = (service.clone(), stop.clone());
            thread::Builder::new()
                .name("reconciler".into())
                .spawn(move || service.run_reconciler(&stop))
                .map_err(StartError::Listen)?
        };
        let api = api::Api {
            service: service.clone(),
            style: config.server.api_style,
            token: config.server.token.clone(),
        };
        let handler: server::Handler = Arc::new(move |request| api.handle(request));
        let server = Server::start(server::Options::from_config(&config.server), handler)
            .map_err(StartError::Listen)?;
        Ok(App {
            service,
            server,
            stop,
            reconciler: Some(reconciler),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Stops serving (requests in flight get `grace` to finish), then the reconciler.
    pub fn stop(mut self, grace: Duration) {
        let reconciler = self.reconciler.take();
        let App {
            service,
            server,
            stop,
            ..
        } = self;
        server.shutdown(grace);
        stop.store(true, Ordering::Relaxed);
        service.wake_reconciler();
        if let Some(handle) = reconciler {
            let _ = handle.join();
        }
    }
}

/// Runs the plugin until it is asked to stop.
pub fn run(config: &Config) -> Result<(), StartError> {
    for line in config.summary() {
        info!("{line}");
    }
    let app = App::start(config)?;
    info!(
        "mec-plugin {} ready: API at http://{}{} (api_style {:?}, state in {})",
        env!("CARGO_PKG_VERSION"),
        app.local_addr(),
        api::BASE,
        config.server.api_style,
        config.server.state_dir.display()
    );
    app.server.wait();
    app.stop(Duration::from_secs(4));
    Ok(())
}
