//! Command line of mec-plugin: parse arguments, set up logging, then run or check.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;
use mec_plugin::app::{self, Overrides};

/// MEC Platform Manager: installs MEC applications' traffic and DNS rules on the MEC platforms
/// of the regions in its configuration, on behalf of an orchestrator.
#[derive(FromArgs)]
struct Args {
    /// configuration file (default: ./regions.toml)
    #[argh(option, default = "PathBuf::from(\"regions.toml\")")]
    config: PathBuf,
    /// northbound listen address, overriding [server] listen (e.g. 127.0.0.1:8082)
    #[argh(option)]
    listen: Option<SocketAddr>,
    /// directory for durable state, overriding [server] state_dir
    #[argh(option)]
    state_dir: Option<PathBuf>,
    /// validate the configuration, print one line per region and exit
    #[argh(switch)]
    check: bool,
    /// print the version and exit
    #[argh(switch)]
    version: bool,
}

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    if args.version {
        println!("mec-plugin {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let overrides = Overrides {
        listen: args.listen,
        state_dir: args.state_dir,
    };
    let config = match app::load(&args.config, &overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("mec-plugin: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        for line in config.summary() {
            println!("{line}");
        }
        println!(
            "{}: OK ({} regions)",
            args.config.display(),
            config.regions.len()
        );
        return ExitCode::SUCCESS;
    }
    simple_logger::SimpleLogger::new()
        .with_level(log::LevelFilter::Info)
        .env()
        .init()
        .expect("the logger is set up once");
    match app::run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("mec-plugin: {e}");
            ExitCode::FAILURE
        }
    }
}
