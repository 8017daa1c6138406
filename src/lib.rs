//! mec-plugin: a MEC Platform Manager that installs MEC applications' traffic and DNS rules
//! on the MEC platform (MEP) of a region, on behalf of an orchestrator (ETSI MEC Mm3 role).
//!
//! The modules are the architecture (see ARCHITECTURE.md):
//! [`config`] reads `regions.toml`, [`model`] is the northbound request model and its two
//! JSON spellings, [`store`] keeps the records, [`mep`] holds the platform drivers,
//! [`service`] applies and removes a request's rules atomically (taking [`turns`] on the
//! platform rules it calls for), [`reconciler`] recovers at start-up and finishes removals in
//! the background, [`api`] routes HTTP requests to it, [`server`] is the hardened HTTP front
//! end (its HTTP/1.1 syntax in [`http1`]), and [`app`] wires them together; [`migrate`] exports
//! and imports the records. Past one machine (`[store] kind = "etcd"`): [`etcd`] is the client
//! of etcd's JSON gateway, [`leader`] elects one instance with a lease, [`etcd_store`] is the
//! store's fenced etcd backend, and [`cluster`] runs the leader's service of each term and
//! routes a follower's calls.

/// `log::debug!` for this crate's own lines. `log` is built with `release_max_level_info`, which
/// compiles every debug and trace call of the dependencies out of optimised builds: rustls',
/// ureq's and mio's, lines the binary's loggers never show anyway (its `QUIET_TARGETS` cap
/// rustls and ureq at info, since their debug output may hold the bearer tokens sent to
/// platforms), and ~45 kB of the deployed binary (issue 11 item 8). This macro is not under
/// that static cap, so `RUST_LOG=debug` still shows the plugin's own lines (each platform and
/// etcd call, the front end's refusals); the level set at run time and the logger's filters
/// apply as for `log::debug!`. Defined before the modules so that each of them can use it.
macro_rules! debug {
    ($($arg:tt)+) => {
        if ::log::Level::Debug <= ::log::max_level() {
            ::log::logger().log(
                &::log::Record::builder()
                    .args(format_args!($($arg)+))
                    .level(::log::Level::Debug)
                    .target(module_path!())
                    .module_path_static(Some(module_path!()))
                    .file_static(Some(file!()))
                    .line(Some(line!()))
                    .build(),
            );
        }
    };
}

pub mod api;
pub mod app;
pub mod cluster;
pub mod config;
pub mod error;
pub mod etcd;
pub mod etcd_store;
pub mod http;
pub mod http1;
pub mod journal;
pub mod leader;
pub mod mep;
pub mod metrics;
pub mod migrate;
pub mod model;
pub mod reconciler;
pub mod retry;
pub mod server;
pub mod service;
pub mod store;
pub mod systemd;
pub mod turns;
pub mod util;
