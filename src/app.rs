//! Wiring: the validated configuration becomes a [`Service`] behind the hardened HTTP
//! [`Server`]. `main` parses the command line and calls [`run`] or [`check`].

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use log::info;

use crate::api;
use crate::config::{Config, ConfigError};
use crate::server::{self, Server};
use crate::service::Service;

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

/// A running plugin: the service and the server in front of it.
pub struct App {
    pub service: Arc<Service>,
    pub server: Server,
}

impl App {
    /// Builds the service from the configuration and starts serving.
    pub fn start(config: &Config) -> io::Result<App> {
        App::start_with(config, Arc::new(Service::new(config)))
    }

    /// Starts serving a given service (tests inject drivers this way).
    pub fn start_with(config: &Config, service: Arc<Service>) -> io::Result<App> {
        let style = config.server.api_style;
        let handler_service = service.clone();
        let handler: server::Handler =
            Arc::new(move |request| api::handle(&handler_service, style, request));
        let server = Server::start(server::Options::from_config(&config.server), handler)?;
        Ok(App { service, server })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }
}

/// Runs the plugin until it is asked to stop.
pub fn run(config: &Config) -> io::Result<()> {
    for line in config.summary() {
        info!("{line}");
    }
    let app = App::start(config)?;
    info!(
        "mec-plugin {} listening on http://{}{} ({} workers, api_style {:?})",
        env!("CARGO_PKG_VERSION"),
        app.local_addr(),
        api::BASE,
        config.server.workers,
        config.server.api_style
    );
    app.server.wait();
    app.server.shutdown(Duration::from_secs(4));
    Ok(())
}
