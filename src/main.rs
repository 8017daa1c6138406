//! Command line of mec-plugin: parse arguments, set up logging, then run, check, or move the
//! state ([`migrate`]).

use std::cell::Cell;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use argh::FromArgs;
use mec_plugin::app::{self, Overrides};
use mec_plugin::config::Config;
use mec_plugin::migrate;

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
    /// write every record of the state (stopped service) to FILE as JSON Lines, `-` for
    /// standard output, and exit
    #[argh(option, arg_name = "FILE")]
    export_state: Option<PathBuf>,
    /// add the records of FILE (JSON Lines from --export-state, `-` for standard input) to an
    /// empty state (stopped service) and exit
    #[argh(option, arg_name = "FILE")]
    import_state: Option<PathBuf>,
    /// print the version and exit
    #[argh(switch)]
    version: bool,
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(code) => return code,
    };
    if args.version {
        print(&format!("mec-plugin {}\n", env!("CARGO_PKG_VERSION")));
        return ExitCode::SUCCESS;
    }
    let actions = [
        args.check,
        args.export_state.is_some(),
        args.import_state.is_some(),
    ];
    if actions.iter().filter(|&&a| a).count() > 1 {
        eprintln!("mec-plugin: --check, --export-state and --import-state exclude each other");
        return ExitCode::from(2);
    }
    if args
        .state_dir
        .as_ref()
        .is_some_and(|dir| dir.as_os_str().is_empty())
    {
        eprintln!("mec-plugin: --state-dir must not be empty");
        return ExitCode::from(2);
    }
    let overrides = Overrides {
        listen: args.listen,
        state_dir: args.state_dir.clone(),
    };
    let config = match app::load(&args.config, &overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("mec-plugin: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        for warning in &config.warnings {
            eprintln!("mec-plugin: warning: {warning}");
        }
        let mut text: String = config.summary().iter().map(|l| format!("{l}\n")).collect();
        text += &format!(
            "{}: OK ({} regions)\n",
            args.config.display(),
            config.regions.len()
        );
        print(&text);
        return ExitCode::SUCCESS;
    }
    if args.export_state.is_some() || args.import_state.is_some() {
        return migrate_state(&config, &args);
    }
    init_logging();
    match app::run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("mec-plugin: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The command line, as `argh::from_env` reads it, except that a usage error exits 2 (as an
/// invalid configuration does; the unit's `RestartPreventExitStatus=2` then stops instead of
/// restarting a bad flag every 2 s) where argh's own would exit 1. `--help` prints to standard
/// output and exits 0.
fn parse_args() -> Result<Args, ExitCode> {
    let strings: Vec<String> = match std::env::args_os().map(|a| a.into_string()).collect() {
        Ok(strings) => strings,
        Err(arg) => {
            eprintln!("mec-plugin: not UTF-8: {}", arg.to_string_lossy());
            return Err(ExitCode::from(2));
        }
    };
    let command = strings
        .first()
        .and_then(|path| std::path::Path::new(path).file_name())
        .and_then(|name| name.to_str())
        .unwrap_or("mec-plugin");
    let rest: Vec<&str> = strings.iter().skip(1).map(String::as_str).collect();
    <Args as argh::FromArgs>::from_args(&[command], &rest).map_err(|exit| match exit.status {
        Ok(()) => {
            print(&format!("{}\n", exit.output));
            ExitCode::SUCCESS
        }
        Err(()) => {
            eprintln!(
                "{}\nRun {command} --help for more information.",
                exit.output
            );
            ExitCode::from(2)
        }
    })
}

/// Writes `text` to standard output. The exit code says what was asked (`--check`: whether the
/// configuration is valid), so an output that fails (piped into `head`, which exited) loses the
/// text instead of panicking like `println!`.
fn print(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Runs `--export-state` or `--import-state`: a summary line, or what went wrong, on
/// standard error (standard output may be the export). Exit code 0, 1 (the state or a file
/// could not be used) or 2 (the input was refused: nothing was written).
fn migrate_state(config: &Config, args: &Args) -> ExitCode {
    // Opening the state may log (a torn write repaired): to standard error, not into an export.
    log::set_max_level(log::LevelFilter::Info);
    let _ = log::set_logger(&StderrLogger);
    let (result, verb, preposition, file) = match (&args.export_state, &args.import_state) {
        (Some(to), _) => (migrate::export(config, to), "exported", "to", to),
        (None, Some(from)) => (migrate::import(config, from), "imported", "from", from),
        (None, None) => unreachable!("called for an export or an import"),
    };
    let file = if file == std::path::Path::new("-") {
        let stream = if verb == "exported" {
            "output"
        } else {
            "input"
        };
        format!("standard {stream}")
    } else {
        file.display().to_string()
    };
    match result {
        Ok(n) => {
            eprintln!("mec-plugin: {verb} {n} records {preposition} {file}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mec-plugin: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Log lines of an export or import, on standard error: `mec-plugin: LEVEL message`.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        // Info and above only: the quiet crates are quiet only below info.
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            // eprintln! would panic if standard error failed; the line is lost instead.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "mec-plugin: {} {}",
                record.level(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

/// Logs to standard output at the level of `RUST_LOG` (default `info`). Under systemd, when
/// standard output is the journal, each line starts with its syslog priority (`<3>` ... `<7>`,
/// which journald turns into the entry's priority, so `journalctl -p warning` works) and has no
/// timestamp (journald stamps every entry); elsewhere lines are timestamped, by simple_logger
/// behind [`OutputSafe`].
fn init_logging() {
    let asked = std::env::var("RUST_LOG").ok();
    let parsed = asked.as_deref().map(str::parse::<log::LevelFilter>);
    let level = match &parsed {
        Some(Ok(level)) => *level,
        _ => log::LevelFilter::Info,
    };
    if stdout_is_the_journal() {
        log::set_max_level(level);
        log::set_logger(&JournalLogger).expect("the logger is set up once");
    } else {
        let mut logger = simple_logger::SimpleLogger::new().with_level(level);
        for target in QUIET_TARGETS {
            logger = logger.with_module_level(target, level.min(log::LevelFilter::Info));
        }
        log::set_max_level(logger.max_level());
        OutputSafe::quiet_its_panics();
        log::set_boxed_logger(Box::new(OutputSafe {
            inner: logger,
            failed: AtomicBool::new(false),
        }))
        .expect("the logger is set up once");
    }
    if let (Some(asked), Some(Err(_))) = (asked, parsed) {
        log::warn!(
            "RUST_LOG={asked:?} is not a level this build reads (error, warn, info, debug, \
             trace or off; no per-module filters): logging at info"
        );
    }
}

/// simple_logger writes with `println!`, which panics when standard output fails: a log pipe
/// whose reader exited (EPIPE), a terminal that was closed (EIO). That panic would end whichever
/// thread logged: the start itself, the readiness loop, a request worker. This wrapper catches
/// it instead. The first failure is reported once on standard error, and every later line is
/// dropped, since such an output does not come back. The service goes on serving.
struct OutputSafe {
    inner: simple_logger::SimpleLogger,
    failed: AtomicBool,
}

thread_local! {
    /// Whether this thread is inside simple_logger's write, whose panic is caught and told once.
    static IN_LOGGER: Cell<bool> = const { Cell::new(false) };
}

impl OutputSafe {
    /// The panic hook stays std's, except for the panic of a failed log write: its message
    /// ("failed printing to stdout", a backtrace) would read like a crash, and the one line
    /// [`OutputSafe`] writes says what happened.
    fn quiet_its_panics() {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !(IN_LOGGER.with(Cell::get) && is_output_failure(info.payload())) {
                default(info);
            }
        }));
    }
}

/// Whether a panic is std's for a failed write to standard output (`println!`), not one of a
/// log line's own (a `Display` that panicked), which goes on as any other panic.
fn is_output_failure(payload: &(dyn std::any::Any + Send)) -> bool {
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied());
    message.is_some_and(|m| m.starts_with("failed printing to stdout"))
}

impl log::Log for OutputSafe {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        !self.failed.load(Ordering::Relaxed) && self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // Caught even while the thread unwinds from another panic (a guard logging as it
        // drops): only a panic that leaves a destructor aborts, and this one does not.
        let outer = IN_LOGGER.with(|flag| flag.replace(true));
        let written = std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.log(record)));
        IN_LOGGER.with(|flag| flag.set(outer));
        let Err(panic) = written else { return };
        if !is_output_failure(&*panic) {
            std::panic::resume_unwind(panic);
        }
        if !self.failed.swap(true, Ordering::Relaxed) {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "mec-plugin: standard output failed, so log lines are dropped from now on; the \
                 service goes on (under systemd the journal takes them; by hand, redirect to a \
                 file)"
            );
        }
    }

    fn flush(&self) {}
}

/// Whether systemd connected standard output to the journal: `JOURNAL_STREAM` (set by systemd)
/// names the device and inode of that stream, which must be our standard output's (it is not
/// if the output was redirected, or if the variable was inherited from a parent service).
fn stdout_is_the_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stdout) = std::io::stdout().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(stdout).metadata() else {
        return false;
    };
    stream.to_string_lossy() == format!("{}:{}", meta.dev(), meta.ino())
}

/// Crates whose debug and trace output may show request headers — the bearer tokens sent to
/// platforms among them — and are therefore never logged below info.
const QUIET_TARGETS: [&str; 3] = ["ureq", "ureq_proto", "rustls"];

/// One line per record with a syslog priority prefix that journald understands.
struct JournalLogger;

impl log::Log for JournalLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        let target = metadata.target();
        // `ureq` or `ureq::...`, without formatting a prefix for every line.
        let quiet = QUIET_TARGETS.iter().any(|t| {
            target
                .strip_prefix(t)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        });
        metadata.level() <= log::max_level() && !(quiet && metadata.level() > log::Level::Info)
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let priority = match record.level() {
            log::Level::Error => 3,
            log::Level::Warn => 4,
            log::Level::Info => 6,
            log::Level::Debug | log::Level::Trace => 7,
        };
        // Under the stdout lock, so lines of threads do not interleave; an error (journald
        // restarting: EPIPE) loses the line instead of panicking like println! would.
        use std::io::Write;
        let _ = writeln!(
            std::io::stdout().lock(),
            "<{priority}>{:<5} [{}] {}",
            record.level(),
            record.target(),
            record.args()
        );
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_std_s_failed_write_to_stdout_is_an_output_failure() {
        let failed: Box<dyn std::any::Any + Send> = Box::new(String::from(
            "failed printing to stdout: Broken pipe (os error 32)",
        ));
        assert!(is_output_failure(&*failed));
        let literal: Box<dyn std::any::Any + Send> = Box::new("failed printing to stdout");
        assert!(is_output_failure(&*literal));
        // A log line's own panic (a Display that panicked) is not one.
        let own: Box<dyn std::any::Any + Send> = Box::new(String::from("index out of bounds"));
        assert!(!is_output_failure(&*own));
        let other: Box<dyn std::any::Any + Send> = Box::new(42_u8);
        assert!(!is_output_failure(&*other));
        // The panic std raises, caught as OutputSafe catches it.
        let caught = std::panic::catch_unwind(|| {
            std::panic::panic_any(format!("failed printing to {}: {}", "stdout", "EIO"))
        })
        .unwrap_err();
        assert!(is_output_failure(&*caught));
    }
}
