//! Load and start-up benchmark of the plugin, in-process and on loopback only. Not a test:
//! it measures and prints, bounded in time and count. See BENCHMARKS.md.
//!
//!     cargo run --release --example bench -- [throughput|replay|all|versus-nginx|baseline] [options]
//!
//! `throughput` (the default) first probes what a durable POST is made of: `fdatasync` of a
//! small write on the state directory's file system (appended, and over a preallocated file),
//! and platform calls through the plugin's own outbound client and through ureq agents set up
//! like it with one change at a time. Then it starts the plugin on 127.0.0.1:0 once per
//! scenario, each time on a fresh temporary `state_dir`, and drives it over keep-alive loopback
//! connections:
//!
//! - `get`, `post`: `GET /MEC/v1/service/regions` and `POST /MEC/v1/service/requests` (the
//!   `examples/` bodies in turn) against the simulated driver, at `--connections` (default 1,8);
//! - `durable`: `POST` of `examples/dns-only.json` (exactly one LL-MEC call, a DNS redirect)
//!   against a local fake LL-MEC platform (a minimal keep-alive HTTP/1.1 responder answering
//!   `200 {}`, a thread per connection), at `--durable-connections` (default 1,8,32), with
//!   `fsync = true` and again with `fsync = false`;
//! - `whatif`: the durable POST at 8 connections once more, with the LL-MEC driver's calls made
//!   by a bench-side agent carrying the two fixes the probes point at (a connection pool as
//!   large as the workers, no resolver thread per call); everything else is the product's.
//!
//! Each scenario line gives req/s, latency percentiles, and what explains them: the CPU time of
//! the process per request (plugin, load generator and fake platform share the machine), the
//! CPU other programs used meanwhile, journal entries and disk cache flushes per request, and
//! for the LL-MEC scenarios the platform calls and new platform connections.
//!
//! `replay` writes `--records` (default 100,000) records into a state directory through the
//! real store, the way the service records a creation of `examples/traffic-and-dns.json`
//! against LL-MEC (PENDING with its first step, one update per further step, CREATED), then
//! times their replay by `Store::open` in fresh child processes (median of 3), which also
//! report their resident memory before and after (the index of platform rules the service
//! counts at its first removal included, and timed apart); then the same after a compaction
//! (snapshot).
//! `listings` measures what a listing costs: the server time of a full listing of
//! `--listing-records` (default 10,000) DNS-only requests (`Api::handle` in-process, median and
//! max of 20); the growth of the process's resident memory while 4 connections list 20 stored
//! requests of 1 MB each at once (sampled every millisecond; the bench's clients discard what
//! they read); and `GET /service/regions/{RegionId}` of an empty region at 8 connections for
//! `--seconds` while another region holds `--region-records` (default 160,000) requests,
//! written through the store before the plugin starts.
//! `all` runs the three.
//!
//! `versus-nginx` (issue 11, "no loss of speed") serves `GET /MEC/v1/service/regions` from the
//! plugin and the same bytes from Debian's nginx (`return 200` in a generated configuration on
//! a loopback port; `NGINX=/path` picks the binary) in one run, alternating them `--repeat`
//! times at `--connections` (default 8 for this command), and prints req/s, p50, p99 and the
//! ratio (goal >= 0.85, judged on the median). When nginx is missing it says so and skips.
//!
//! `baseline --baseline-binary PATH` runs the durable POST with one LL-MEC call against two
//! builds of the binary as child processes on the same configuration, alternating: this one
//! (`--binary`, default `target/release/mec-plugin`, next to the bench executable's directory)
//! and PATH (the previous commit built beside it; `.ci/bench-baseline [REV]` builds REV and
//! runs this). Goal: the median ratio >= 0.95.
//!
//! `cluster` (issue 15) starts a 3-member etcd on loopback ports (the tests' own
//! `tests/support/etcd.rs`; `MEC_PLUGIN_ETCD=/path` picks the binary) and runs the release
//! binary (`--binary`, as `baseline`) as child processes: the durable POST with one LL-MEC call
//! at `--durable-connections` (default 8 here) for `--seconds`, against the journal (fsync on),
//! against an instance leading on etcd, and through a follower of it (forwarded), `--repeat`
//! times in turn; then the failover time over `--kills` (default 10) leader kills among three
//! instances with `--lease-ttl-s` (default 5, the product's): from the leader's SIGKILL until a
//! POST through another instance is answered 201, each killed instance started again before
//! the next kill (`--only durable` or `--only failover`: one part). Without etcd it says so
//! and skips.
//!
//! Options: `--seconds S` (per scenario, default 5), `--connections 1,8`,
//! `--durable-connections 1,8,32`, `--fsync both|true|false`, `--workers N` (default 8),
//! `--only get,post,durable,whatif` (subset of scenarios), `--probes false` (skip the probes),
//! `--repeat N` (run the durable scenarios N times, alternating fsync on and off, and judge the
//! goals on the median run: the host's speed drifts by ±20 % within minutes; at most 20),
//! `--records N`, `--dir PATH` (where the temporary state directories go; default the system
//! temp dir), `--keep true` (keep the replay state directory, e.g. to profile
//! `bench replay-child <dir>`), `--compact false` (skip the replay after a compaction),
//! `--listing-records N`, `--region-records N`, `--binary PATH` and
//! `--baseline-binary PATH` (the `baseline` command), `--kills N` and `--lease-ttl-s S` (the
//! `cluster` command). A short bounded run of the listings:
//! `cargo run --release --example bench -- listings --seconds 1 --listing-records 1000
//! --region-records 5000`.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use mec_plugin::app::App;
use mec_plugin::config::{Config, DriverKind, MepConfig, RegionConfig};
use mec_plugin::mep::agent::MepClient;
use mec_plugin::mep::{Driver, MepError, Refusal, RuleIdentity, Step};
use mec_plugin::model::{CreationRequest, Status, parse_creation};
use mec_plugin::service::{Region, Service};
use mec_plugin::store::{Record, Store};
use mec_plugin::util::{new_uuid, now_millis};

/// Hard cap on requests per connection per scenario, whatever the duration.
const MAX_REQUESTS_PER_CONNECTION: usize = 2_000_000;
/// Hard cap on `--records`.
const MAX_RECORDS: usize = 2_000_000;
/// Fresh processes timing each replay (the median is reported).
const REPLAY_RUNS: usize = 3;
/// Samples of each probe.
const PROBE_SAMPLES: usize = 500;
/// Hard cap on `--kills`.
const MAX_KILLS: usize = 50;

const BODIES: [&str; 3] = [
    "dns-only.json",
    "traffic-and-dns.json",
    "traffic-and-dns-camel.json",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("replay-child") {
        replay_child(Path::new(args.get(2).expect("replay-child <dir>")));
        return;
    }
    let options = Options::parse(&args[1..]);
    let started = Instant::now();
    println!(
        "mec-plugin bench, {}, nproc {}, state dirs under {}",
        utc_now(),
        thread::available_parallelism().map_or(0, |n| n.get()),
        options.dir.display()
    );
    println!(
        "load average at start: {} (other programs running distort the numbers; see 'other %')",
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut goals = Vec::new();
    match options.command.as_str() {
        "throughput" => throughput(&options, &mut goals),
        "replay" => replay(&options, &mut goals),
        "listings" => listings(&options, &mut goals),
        "all" => {
            throughput(&options, &mut goals);
            replay(&options, &mut goals);
            listings(&options, &mut goals);
        }
        "versus-nginx" => versus_nginx(&options, &mut goals),
        "baseline" => baseline(&options, &mut goals),
        "cluster" => cluster(&options, &mut goals),
        other => {
            eprintln!(
                "unknown command '{other}': throughput, replay, listings, all, versus-nginx, \
                 baseline or cluster"
            );
            std::process::exit(2);
        }
    }
    if !goals.is_empty() {
        println!();
        println!("goals");
        for g in &goals {
            println!("  {g}");
        }
    }
    println!();
    println!(
        "finished in {:.1} s; command: cargo run --release --example bench --{}",
        started.elapsed().as_secs_f64(),
        args[1..]
            .iter()
            .map(|a| format!(" {a}"))
            .collect::<String>()
    );
}

struct Options {
    command: String,
    duration: Duration,
    connections: Vec<usize>,
    durable_connections: Vec<usize>,
    fsync: Vec<bool>,
    workers: usize,
    only: Vec<String>,
    records: usize,
    dir: PathBuf,
    keep: bool,
    compact: bool,
    probes: bool,
    repeat: usize,
    listing_records: usize,
    region_records: usize,
    /// Whether `--connections` / `--durable-connections` were given (the side-by-side
    /// commands default to 8 instead).
    connections_given: bool,
    durable_given: bool,
    binary: Option<PathBuf>,
    baseline_binary: Option<PathBuf>,
    /// Whether `--only` was given (`cluster` runs both its parts otherwise).
    only_given: bool,
    /// Leader kills of `cluster`.
    kills: usize,
    /// `[store] lease_ttl_s` of `cluster`'s failover instances.
    lease_ttl_s: u64,
}

impl Options {
    fn parse(args: &[String]) -> Options {
        let mut command = "throughput".to_string();
        let mut values: HashMap<&str, &str> = HashMap::new();
        let mut i = 0;
        while i < args.len() {
            let a = args[i].as_str();
            if let Some(name) = a.strip_prefix("--") {
                let value = args.get(i + 1).unwrap_or_else(|| {
                    eprintln!("--{name} needs a value");
                    std::process::exit(2)
                });
                values.insert(name, value);
                i += 2;
            } else {
                command = a.to_string();
                i += 1;
            }
        }
        let get = |name: &str, default: &'static str| -> String {
            values.get(name).copied().unwrap_or(default).to_string()
        };
        let list = |name: &str, default: &'static str| -> Vec<usize> {
            get(name, default)
                .split(',')
                .map(|c| {
                    c.trim()
                        .parse::<usize>()
                        .unwrap_or_else(|_| panic!("--{name} is a list of numbers"))
                        .clamp(1, 256)
                })
                .collect()
        };
        let seconds: f64 = get("seconds", "5").parse().expect("--seconds is a number");
        for known in values.keys() {
            let names = [
                "seconds",
                "connections",
                "durable-connections",
                "fsync",
                "workers",
                "only",
                "records",
                "dir",
                "keep",
                "compact",
                "probes",
                "repeat",
                "listing-records",
                "region-records",
                "binary",
                "baseline-binary",
                "kills",
                "lease-ttl-s",
            ];
            if !names.contains(known) {
                eprintln!("unknown option --{known}");
                std::process::exit(2);
            }
        }
        Options {
            command,
            duration: Duration::from_secs_f64(seconds.clamp(0.1, 120.0)),
            connections: list("connections", "1,8"),
            durable_connections: list("durable-connections", "1,8,32"),
            fsync: match get("fsync", "both").as_str() {
                "both" => vec![true, false],
                "true" => vec![true],
                "false" => vec![false],
                other => panic!("--fsync is both, true or false, not {other}"),
            },
            workers: get("workers", "8").parse().expect("--workers is a number"),
            only: get("only", "get,post,durable,whatif")
                .split(',')
                .map(str::to_string)
                .collect(),
            records: get("records", "100000")
                .parse::<usize>()
                .expect("--records is a number")
                .clamp(1, MAX_RECORDS),
            dir: values
                .get("dir")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir),
            keep: get("keep", "false") == "true",
            compact: get("compact", "true") == "true",
            probes: get("probes", "true") == "true",
            repeat: get("repeat", "1")
                .parse::<usize>()
                .expect("--repeat is a number")
                .clamp(1, 20),
            listing_records: get("listing-records", "10000")
                .parse::<usize>()
                .expect("--listing-records is a number")
                .clamp(1, MAX_RECORDS),
            region_records: get("region-records", "160000")
                .parse::<usize>()
                .expect("--region-records is a number")
                .clamp(1, MAX_RECORDS),
            connections_given: values.contains_key("connections"),
            durable_given: values.contains_key("durable-connections"),
            binary: values.get("binary").map(PathBuf::from),
            baseline_binary: values.get("baseline-binary").map(PathBuf::from),
            only_given: values.contains_key("only"),
            kills: get("kills", "10")
                .parse::<usize>()
                .expect("--kills is a number")
                .clamp(1, MAX_KILLS),
            lease_ttl_s: get("lease-ttl-s", "5")
                .parse::<u64>()
                .expect("--lease-ttl-s is a number")
                .clamp(1, 60),
        }
    }

    fn runs(&self, scenario: &str) -> bool {
        self.only.iter().any(|o| o == scenario)
    }
}

// ---------------------------------------------------------------------------------------------
// throughput

/// One scenario's measurements.
struct Outcome {
    requests: usize,
    errors: usize,
    elapsed: f64,
    latencies: Vec<Duration>,
    cpu: f64,
    /// CPU seconds other processes used meanwhile (the machine's busy time minus ours).
    others: f64,
    /// CPU seconds of the plugin's processes meanwhile, when they are children of the bench.
    plugin_cpu: Option<f64>,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed
    }

    fn pct(&self, p: f64) -> f64 {
        let l = &self.latencies;
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    }
}

fn throughput(options: &Options, goals: &mut Vec<String>) {
    let bodies: Arc<Vec<String>> = Arc::new(BODIES.iter().map(|f| example(f)).collect());
    let dns_only: Arc<Vec<String>> = Arc::new(vec![example("dns-only.json")]);
    let platform = FakeMep::start();

    if options.probes {
        probes(options, &platform);
    }

    println!();
    println!(
        "throughput: {:.1} s per scenario, {} server workers, keep-alive loopback connections, fresh state_dir each",
        options.duration.as_secs_f64(),
        options.workers
    );
    println!(
        "{:<30} {:<11} {:>5} {:>5} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7} {:>6} {:>7} {:>7} {:>6} {:>9}",
        "scenario",
        "platform",
        "fsync",
        "conns",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "errors",
        "cpu/req",
        "cpu %",
        "other %",
        "jnl/req",
        "fl/req",
        "mep/req"
    );
    let header_note = [
        "cpu/req  µs of CPU of this process per request (plugin, load generator and fake platform)",
        "cpu %    CPU of this process, % of one core; other %: CPU of other processes meanwhile",
        "jnl/req  state-file lines per request (~1 if it compacted); fl/req: disk cache flushes per request",
        "mep/req  platform calls per request, +N new platform connections opened in the scenario",
    ];

    let simulated_fsync = options.fsync.first().copied().unwrap_or(true);
    if options.runs("get") {
        for &c in &options.connections {
            scenario(
                options,
                "GET /MEC/v1/service/regions",
                None,
                simulated_fsync,
                c,
                None,
                false,
            );
        }
    }
    if options.runs("post") {
        for &c in &options.connections {
            scenario(
                options,
                "POST /MEC/v1/service/requests",
                None,
                simulated_fsync,
                c,
                Some(bodies.clone()),
                false,
            );
        }
    }
    let mut durable: Vec<(bool, usize, Outcome)> = Vec::new();
    if options.runs("durable") {
        for _ in 0..options.repeat {
            for &fsync in &options.fsync {
                for &c in &options.durable_connections {
                    let o = scenario(
                        options,
                        "POST dns-only (1 LL-MEC call)",
                        Some(&platform),
                        fsync,
                        c,
                        Some(dns_only.clone()),
                        false,
                    );
                    durable.push((fsync, c, o));
                }
            }
        }
    }
    let mut what_if = Vec::new();
    if options.runs("whatif") {
        for &fsync in &options.fsync {
            let o = scenario(
                options,
                "what-if: agent fixed (1 call)",
                Some(&platform),
                fsync,
                8,
                Some(dns_only.clone()),
                true,
            );
            what_if.push((fsync, o));
        }
    }
    for line in header_note {
        println!("  {line}");
    }

    let runs = |fsync: bool| -> Vec<&Outcome> {
        let mut runs: Vec<&Outcome> = durable
            .iter()
            .filter(|d| d.0 == fsync && d.1 == 8)
            .map(|d| &d.2)
            .collect();
        runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
        runs
    };
    let (on, off) = (runs(true), runs(false));
    if let Some(o) = on.get(on.len() / 2) {
        let (rate, p99) = (o.rate(), o.pct(0.99));
        let spread = if on.len() > 1 {
            let p99s: Vec<f64> = on.iter().map(|o| o.pct(0.99)).collect();
            format!(
                " [median of {} runs: {:.0}-{:.0} req/s, >= 5000 in {}; p99 {:.2}-{:.2} ms, <= 5 in {}]",
                on.len(),
                on[0].rate(),
                on[on.len() - 1].rate(),
                on.iter().filter(|o| o.rate() >= 5000.0).count(),
                p99s.iter().copied().fold(f64::INFINITY, f64::min),
                p99s.iter().copied().fold(0.0, f64::max),
                p99s.iter().filter(|&&p| p <= 5.0).count(),
            )
        } else {
            String::new()
        };
        goals.push(format!(
            "durable POST, 1 platform call, 8 connections: {rate:.0} req/s (goal >= 5000) {}, p99 {p99:.2} ms (goal <= 5) {}{}{spread}",
            verdict(rate >= 5000.0),
            verdict(p99 <= 5.0),
            off.get(off.len() / 2).map_or(String::new(), |n| format!(
                "; same server with fsync off: {:.0} req/s, p99 {:.2} ms",
                n.rate(),
                n.pct(0.99)
            ))
        ));
    }
    for (fsync, o) in &what_if {
        goals.push(format!(
            "what-if (agent fixed, bench-side driver), fsync {fsync}, 8 connections: {:.0} req/s, p99 {:.2} ms",
            o.rate(),
            o.pct(0.99)
        ));
    }
}

/// What a durable POST with one platform call is made of: fsyncs and platform calls alone.
fn probes(options: &Options, platform: &FakeMep) {
    println!();
    println!("probes (what a durable POST with one platform call is made of)");
    for (preallocated, what) in [
        (false, "appended to a file"),
        (true, "written over a preallocated file"),
    ] {
        let (p50, p99, flushes) = probe_fsync(&options.dir, preallocated);
        println!(
            "  fdatasync of 300 bytes {what:<33} p50 {p50:.3} ms, p99 {p99:.3} ms, {} disk flushes each ({PROBE_SAMPLES} samples in {})",
            flushes.map_or("n/a".into(), |f| format!("{f:.2}")),
            options.dir.display()
        );
    }
    probe_platform_calls(platform, options.workers);
}

fn verdict(met: bool) -> &'static str {
    if met { "MET" } else { "MISSED" }
}

/// Runs one scenario against a freshly started plugin and prints its line.
fn scenario(
    options: &Options,
    name: &str,
    platform: Option<&FakeMep>,
    fsync: bool,
    connections: usize,
    bodies: Option<Arc<Vec<String>>>,
    fixed_agent: bool,
) -> Outcome {
    let dir = fresh_dir(&options.dir, "throughput");
    settle(&dir);
    let mep = match platform {
        Some(p) => format!("driver = \"llmec\"\nurl = \"http://{}\"", p.addr),
        None => "driver = \"simulated\"".to_string(),
    };
    let config = Config::parse(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = {}\nstate_dir = '{}'\nfsync = {fsync}\n\
             [[region]]\nid = \"2\"\nlatitude = 43.6143899\nlongitude = 7.068931\nrange_km = 10.0\n\
             [region.mep]\n{mep}\n",
            options.workers,
            dir.display()
        ),
        "bench.toml",
    )
    .expect("bench config");
    let app = if fixed_agent {
        // The same service and store, with the LL-MEC driver's calls made by a fixed agent.
        let (store, _) = Store::open(&dir, fsync).expect("state dir opens");
        let regions = config
            .regions
            .iter()
            .map(|r| Region {
                config: r.clone(),
                driver: Arc::new(FixedAgentDriver::new(r, options.workers)),
            })
            .collect();
        let service = Service::with_store(regions, store, config.server.retry);
        App::start_with(&config, Arc::new(service)).expect("plugin starts")
    } else {
        App::start(&config).expect("plugin starts")
    };
    let (calls, conns) = platform.map_or((0, 0), |p| {
        (
            p.calls.load(Ordering::Relaxed),
            p.connections.load(Ordering::Relaxed),
        )
    });
    let flushes = disk_flushes(&dir);
    let outcome = drive(
        app.local_addr(),
        if bodies.is_some() { "POST" } else { "GET" },
        if bodies.is_some() {
            "/MEC/v1/service/requests"
        } else {
            "/MEC/v1/service/regions"
        },
        connections,
        options.duration,
        bodies,
    );
    let flushes = flushes.zip(disk_flushes(&dir)).map(|(a, b)| b - a);
    let platform_use = platform.map(|p| {
        (
            p.calls.load(Ordering::Relaxed) - calls,
            p.connections.load(Ordering::Relaxed) - conns,
        )
    });
    app.stop(Duration::from_secs(2));
    let entries = journal_entries(&dir);
    let _ = fs::remove_dir_all(&dir);

    let per_request = |x: f64| x / outcome.requests.max(1) as f64;
    println!(
        "{:<30} {:<11} {:>5} {:>5} {:>8.0} {:>8.3} {:>8.3} {:>8.2} {:>6} {:>7.0} {:>6.0} {:>7.0} {:>7.2} {:>6} {:>9}",
        name,
        if platform.is_some() {
            "fake LL-MEC"
        } else {
            "simulated"
        },
        fsync,
        connections,
        outcome.rate(),
        outcome.pct(0.50),
        outcome.pct(0.99),
        outcome
            .latencies
            .last()
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        outcome.errors,
        per_request(outcome.cpu * 1e6),
        outcome.cpu / outcome.elapsed * 100.0,
        outcome.others / outcome.elapsed * 100.0,
        per_request(entries as f64),
        flushes.map_or("n/a".to_string(), |f| format!(
            "{:.2}",
            per_request(f as f64)
        )),
        platform_use.map_or("-".to_string(), |(calls, new)| format!(
            "{:.2}+{new}",
            per_request(calls as f64)
        )),
    );
    outcome
}

/// Drives `connections` keep-alive connections for `duration`.
fn drive(
    addr: SocketAddr,
    method: &str,
    path: &str,
    connections: usize,
    duration: Duration,
    bodies: Option<Arc<Vec<String>>>,
) -> Outcome {
    let cpu = process_cpu_seconds();
    let busy = machine_busy_seconds();
    let started = Instant::now();
    let deadline = started + duration;
    let threads: Vec<_> = (0..connections)
        .map(|t| {
            let (method, path, bodies) = (method.to_string(), path.to_string(), bodies.clone());
            thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut errors = 0usize;
                let mut i = t;
                let mut connection = None;
                while Instant::now() < deadline && latencies.len() < MAX_REQUESTS_PER_CONNECTION
                {
                    let (reader, writer) = match &mut connection {
                        Some(c) => c,
                        None => match connect(addr) {
                            Ok(c) => connection.insert(c),
                            Err(_) => {
                                errors += 1;
                                thread::sleep(Duration::from_millis(10));
                                continue;
                            }
                        },
                    };
                    let body = bodies.as_ref().map_or("", |b| b[i % b.len()].as_str());
                    i += 1;
                    let request = format!(
                        "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let sent = Instant::now();
                    let status = writer
                        .write_all(request.as_bytes())
                        .and_then(|_| read_response(reader));
                    match status {
                        Ok(status) => {
                            latencies.push(sent.elapsed());
                            if !(200..300).contains(&status) {
                                errors += 1;
                            }
                        }
                        Err(_) => {
                            errors += 1;
                            connection = None;
                        }
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in threads {
        let (l, e) = t.join().unwrap();
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu;
    let others = (machine_busy_seconds() - busy - cpu).max(0.0);
    latencies.sort();
    Outcome {
        requests: latencies.len(),
        errors,
        elapsed,
        latencies,
        cpu,
        others,
        plugin_cpu: None,
    }
}

fn connect(addr: SocketAddr) -> std::io::Result<(BufReader<TcpStream>, TcpStream)> {
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok((BufReader::new(stream.try_clone()?), stream))
}

/// Reads one HTTP/1.1 response, its body framed by Content-Length or chunked (a streamed
/// listing); returns its status.
fn read_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<u16> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = line.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (mut length, mut chunked) = (0usize, false);
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.trim().eq_ignore_ascii_case("chunked");
            }
        }
    }
    if !chunked {
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        return Ok(status);
    }
    let mut piece = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| std::io::Error::other("bad chunk size"))?;
        // The chunk and its CRLF; after the last (size 0), the CRLF ending the trailers.
        piece.resize(size + 2, 0);
        reader.read_exact(&mut piece)?;
        if size == 0 {
            return Ok(status);
        }
    }
}

/// A minimal LL-MEC platform: keep-alive HTTP/1.1 on loopback, a thread per connection,
/// answers every request `200 {}` after reading its body. Counts calls and connections.
struct FakeMep {
    addr: SocketAddr,
    calls: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
}

impl FakeMep {
    fn start() -> FakeMep {
        let listener = TcpListener::bind("127.0.0.1:0").expect("fake platform binds");
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let (c, n) = (calls.clone(), connections.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                n.fetch_add(1, Ordering::Relaxed);
                let c = c.clone();
                thread::spawn(move || {
                    let _ = serve_platform(stream, &c);
                });
            }
        });
        FakeMep {
            addr,
            calls,
            connections,
        }
    }
}

fn serve_platform(stream: TcpStream, calls: &AtomicU64) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    // Idle connections end with the plugin's pool or after this; nothing outlives the run.
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    let mut body = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let (mut length, mut chunked, mut close) = (0usize, false, false);
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = value.eq_ignore_ascii_case("chunked");
                } else if name.eq_ignore_ascii_case("connection") {
                    close = value.eq_ignore_ascii_case("close");
                }
            }
        }
        if chunked {
            loop {
                line.clear();
                reader.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .unwrap_or(0);
                body.resize(size + 2, 0);
                reader.read_exact(&mut body)?;
                if size == 0 {
                    break;
                }
            }
        } else {
            body.resize(length, 0);
            reader.read_exact(&mut body)?;
        }
        calls.fetch_add(1, Ordering::Relaxed);
        writer.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        )?;
        if close {
            return Ok(());
        }
    }
}

/// p50 and p99 (ms) of `fdatasync` after writing 300 bytes on the file system of `dir`, and the
/// disk cache flushes per `fdatasync`: appended at the end of the file (what the journal does:
/// the file's size changes every time), or written over a preallocated, zero-filled and
/// already synced file (its size and block map do not change).
fn probe_fsync(dir: &Path, preallocated: bool) -> (f64, f64, Option<f64>) {
    use std::os::unix::fs::FileExt;
    let path = dir.join(format!("mec-bench-{}-fsync-probe", std::process::id()));
    let file = fs::File::create(&path).expect("fsync probe file");
    let line = [b'x'; 300];
    if preallocated {
        file.write_all_at(&vec![0; line.len() * PROBE_SAMPLES], 0)
            .unwrap();
        file.sync_all().unwrap();
    }
    let flushes = disk_flushes(dir);
    let mut samples: Vec<Duration> = (0..PROBE_SAMPLES)
        .map(|i| {
            file.write_all_at(&line, (i * line.len()) as u64).unwrap();
            let t = Instant::now();
            file.sync_data().unwrap();
            t.elapsed()
        })
        .collect();
    let flushes = flushes
        .zip(disk_flushes(dir))
        .map(|(a, b)| (b - a) as f64 / PROBE_SAMPLES as f64);
    let _ = fs::remove_file(&path);
    let (p50, p99) = percentiles(&mut samples);
    (p50, p99, flushes)
}

/// What one run of platform calls cost.
struct CallProbe {
    p50: f64,
    p99: f64,
    rate: f64,
    cpu_us: f64,
    new_connections: f64,
    threads_started: f64,
}

/// `call` after `call` from `threads` threads at once (after one warm-up call each).
fn probe_calls(platform: &FakeMep, threads: usize, call: Arc<dyn Fn() + Send + Sync>) -> CallProbe {
    let run = |calls: usize| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let call = call.clone();
                thread::spawn(move || {
                    (0..calls)
                        .map(|_| {
                            let t = Instant::now();
                            call();
                            t.elapsed()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    };
    run(1);
    let connections = platform.connections.load(Ordering::Relaxed);
    let clones = threads_started_system_wide();
    let (cpu, started) = (process_cpu_seconds(), Instant::now());
    let mut samples = run(PROBE_SAMPLES);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu;
    // The probe's own `threads` threads are not the client's doing.
    let clones = threads_started_system_wide().saturating_sub(clones + threads as u64);
    let new = platform.connections.load(Ordering::Relaxed) - connections;
    let n = samples.len() as f64;
    let (p50, p99) = percentiles(&mut samples);
    CallProbe {
        p50,
        p99,
        rate: n / elapsed,
        cpu_us: cpu * 1e6 / n,
        new_connections: new as f64 / n,
        threads_started: clones as f64 / n,
    }
}

const DNS_BODY: &str = r#"{"url":"app.example.org","mec-ipaddr":"172.24.248.5","mec-macaddr":"00:00:00:00:00:00","type":1}"#;

/// Platform calls through the plugin's own client, and, for comparison, through ureq agents
/// set up like it (src/mep/agent.rs: no proxy, no redirects, statuses as values,
/// `timeout_global` and `timeout_connect`) with one change at a time.
fn probe_platform_calls(platform: &FakeMep, workers: usize) {
    let mep = llmec_config(&platform.addr.to_string());
    let url = format!("http://{}/api/mp1/traffic/all", platform.addr);
    let plugin = Arc::new(MepClient::new(&mep));
    let agent = |pool: Option<usize>, literal: bool| {
        let mut builder = ureq::Agent::config_builder()
            .proxy(None)
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(mep.timeout))
            .timeout_connect(Some(mep.timeout));
        if let Some(n) = pool {
            builder = builder
                .max_idle_connections(n.max(10))
                .max_idle_connections_per_host(n);
        }
        let config = builder.build();
        Arc::new(if literal {
            ureq::Agent::with_parts(
                config,
                ureq::unversioned::transport::DefaultConnector::default(),
                LiteralResolver,
            )
        } else {
            ureq::Agent::new_with_config(config)
        })
    };
    let via_agent = |agent: Arc<ureq::Agent>| -> Arc<dyn Fn() + Send + Sync> {
        let url = url.clone();
        Arc::new(move || {
            let mut answer = agent
                .post(&url)
                .header("content-type", "application/json")
                .send(DNS_BODY)
                .expect("fake platform answers");
            answer.body_mut().read_to_vec().expect("answer body");
        })
    };
    let variants: Vec<(String, Arc<dyn Fn() + Send + Sync>)> = vec![
        ("plugin's MepClient (as shipped)".into(), {
            let (plugin, url) = (plugin.clone(), url.clone());
            Arc::new(move || {
                plugin
                    .send("POST", &url, Some(DNS_BODY))
                    .expect("fake platform answers");
            })
        }),
        (
            "ureq as the plugin sets it up".into(),
            via_agent(agent(None, false)),
        ),
        (
            format!("  + max_idle_connections_per_host({workers})"),
            via_agent(agent(Some(workers), false)),
        ),
        (
            "  + resolver without a thread".into(),
            via_agent(agent(Some(workers), true)),
        ),
    ];
    println!(
        "  {:<44} {:>7} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "platform calls (DNS redirect) through",
        "threads",
        "calls/s",
        "p50 ms",
        "p99 ms",
        "cpu µs",
        "new conn",
        "threads"
    );
    for (name, call) in variants {
        for threads in [1, workers] {
            let p = probe_calls(platform, threads, call.clone());
            println!(
                "  {:<44} {:>7} {:>8.0} {:>8.3} {:>8.3} {:>8.0} {:>9.3} {:>9.2}",
                name, threads, p.rate, p.p50, p.p99, p.cpu_us, p.new_connections, p.threads_started
            );
        }
    }
    println!(
        "  (per call: cpu µs of this process, fake platform included; new platform connections; threads started, system-wide count)"
    );
}

/// The LL-MEC driver (its own plan, the same calls) with its calls made by an agent set up like
/// the plugin's plus the two fixes measured above: a pool that keeps a connection per worker
/// and a resolver that starts no thread. Only for the `what-if` scenario.
struct FixedAgentDriver {
    llmec: Arc<dyn Driver>,
    agent: ureq::Agent,
    base_url: String,
}

impl FixedAgentDriver {
    fn new(region: &RegionConfig, workers: usize) -> FixedAgentDriver {
        let config = ureq::Agent::config_builder()
            .proxy(None)
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(region.mep.timeout))
            .timeout_connect(Some(region.mep.timeout))
            .max_idle_connections(workers.max(10))
            .max_idle_connections_per_host(workers)
            .build();
        FixedAgentDriver {
            llmec: mec_plugin::mep::build(&region.id, &region.mep),
            agent: ureq::Agent::with_parts(
                config,
                ureq::unversioned::transport::DefaultConnector::default(),
                LiteralResolver,
            ),
            base_url: region.mep.url.trim_end_matches('/').to_string(),
        }
    }

    fn call(&self, method: &str, step: &Step) -> Result<(), MepError> {
        let url = format!("{}{}", self.base_url, step.target());
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("content-type", "application/json")
            .body(step.body().to_string())
            .expect("valid request");
        let mut answer = self.agent.run(request).map_err(|e| MepError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let status = answer.status().as_u16();
        let _ = answer.body_mut().read_to_vec();
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(MepError::Refused {
                url,
                status,
                detail: String::new(),
            })
        }
    }
}

impl Driver for FixedAgentDriver {
    fn kind(&self) -> DriverKind {
        self.llmec.kind()
    }

    fn plan(&self, request_id: &str, request: &CreationRequest) -> Result<Vec<Step>, Refusal> {
        self.llmec.plan(request_id, request)
    }

    fn apply(&self, step: &Step) -> Result<(), MepError> {
        self.call("POST", step)
    }

    fn remove(&self, step: &Step) -> Result<(), MepError> {
        self.call("DELETE", step)
    }

    fn plans(&self, step: &Step) -> bool {
        self.llmec.plans(step)
    }
}

/// Resolves IP-literal hosts without a lookup (ureq's default resolver starts a thread for
/// every call once a global timeout is set, pooled connection or not); names go to ureq's.
#[derive(Debug)]
struct LiteralResolver;

impl ureq::unversioned::resolver::Resolver for LiteralResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        if let Some(authority) = uri.authority() {
            if let (Ok(ip), Some(port)) = (
                authority.host().parse::<std::net::IpAddr>(),
                authority.port_u16(),
            ) {
                let mut addrs = self.empty();
                addrs.push(SocketAddr::new(ip, port));
                return Ok(addrs);
            }
        }
        ureq::unversioned::resolver::DefaultResolver::default().resolve(uri, config, timeout)
    }
}

fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let at = |p: f64| {
        samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)].as_secs_f64() * 1000.0
    };
    (at(0.50), at(0.99))
}

/// The `[region.mep]` of an LL-MEC region at `addr`, built through the configuration parser.
fn llmec_config(addr: &str) -> MepConfig {
    Config::parse(
        &format!(
            "[[region]]\nid = \"2\"\nlatitude = 43.6\nlongitude = 7.0\nrange_km = 10.0\n\
             [region.mep]\ndriver = \"llmec\"\nurl = \"http://{addr}\"\n"
        ),
        "bench.toml",
    )
    .expect("bench config")
    .regions
    .remove(0)
    .mep
}

// ---------------------------------------------------------------------------------------------
// replay

fn replay(options: &Options, goals: &mut Vec<String>) {
    let n = options.records;
    let dir = fresh_dir(&options.dir, "replay");
    let body = example("traffic-and-dns.json");
    let request = parse_creation(body.as_bytes()).expect("example request is valid");
    let text: Arc<str> = Arc::from(serde_json::to_string(&request).expect("request serialises"));
    // Unreachable: planning sends nothing.
    let driver = mec_plugin::mep::build("2", &llmec_config("127.0.0.1:9"));
    let compact = text.len() * n;

    println!();
    println!(
        "replay: {n} records of examples/traffic-and-dns.json as recorded against LL-MEC ({} bytes of compact request each, {} steps), in {}",
        text.len(),
        driver.plan("x", &request).map_or(0, |s| s.len()),
        dir.display()
    );
    let t = Instant::now();
    {
        let (store, _) = Store::open(&dir, false).expect("state dir opens");
        for _ in 0..n {
            let id = new_uuid();
            let steps: Arc<[Step]> = Arc::from(driver.plan(&id, &request).expect("plannable"));
            let first = usize::from(!steps.is_empty());
            store
                .insert(Record::new(
                    Arc::from(id.as_str()),
                    "2".into(),
                    text.clone(),
                    Status::Pending,
                    steps.clone(),
                    first,
                    now_millis(),
                ))
                .expect("insert");
            for k in 1..steps.len() {
                store.update(&id, |r| r.applied = k + 1).expect("update");
            }
            store
                .update(&id, |r| {
                    r.status = Status::Created;
                    r.last_modified = now_millis();
                })
                .expect("update");
        }
    }
    let (files, bytes, entries) = state_files(&dir);
    println!(
        "  written through Store (fsync off) in {:.2} s: {entries} journal entries, {:.1} MB in {files}",
        t.elapsed().as_secs_f64(),
        bytes as f64 / 1e6
    );
    let target_kb = (2 * compact + (8 << 20)) / 1024;
    println!(
        "  compact size of the stored requests: {:.1} MB; RSS target 2 x compact + 8 MB = {:.1} MB",
        compact as f64 / 1e6,
        target_kb as f64 * 1024.0 / 1e6
    );
    println!(
        "  {:<22} {:>9} {:>9} {:>11} {:>11} {:>11} {:>11}   (median of {REPLAY_RUNS} fresh processes)",
        "replay of", "records", "ms", "records/s", "RSS before", "RSS delta", "RSS peak"
    );
    let journal = replay_in_child(&dir, "journal", n, compact);

    // A compaction, as the reconciler would do it once the journal passes its bound.
    let compacted = options.compact && {
        let (store, _) = Store::open(&dir, false).expect("state dir opens");
        store.compact_if_needed().expect("compaction")
    };
    let snapshot = if compacted {
        let (files, bytes, _) = state_files(&dir);
        let r = replay_in_child(&dir, "snapshot", n, compact);
        println!(
            "  (after compaction: {:.1} MB in {files})",
            bytes as f64 / 1e6
        );
        Some(r)
    } else {
        println!("  (no compaction: the journal is below the store's compaction bound)");
        None
    };
    if options.keep {
        println!("  (kept {})", dir.display());
    } else {
        let _ = fs::remove_dir_all(&dir);
    }

    for (what, r) in [("journal", Some(journal)), ("snapshot", snapshot)] {
        let Some(r) = r else { continue };
        goals.push(format!(
            "replay of {n} records from the {what}: {:.0} ms (goal <= 1000 ms for 100,000) {}; RSS delta {:.1} MB (goal <= {:.1} MB) {}",
            r.ms,
            verdict(r.ms * 100_000.0 / n as f64 <= 1000.0),
            r.delta_kb as f64 * 1024.0 / 1e6,
            target_kb as f64 * 1024.0 / 1e6,
            verdict(r.delta_kb <= target_kb as u64)
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// listings

fn listings(options: &Options, goals: &mut Vec<String>) {
    println!();
    println!("listings");
    full_listing_server_time(options, goals);
    listing_memory(options, goals);
    empty_region_listing(options, goals);
}

/// A configuration of simulated regions "2" and "3" on `dir`.
fn simulated_config(dir: &Path, workers: usize, extra: &str) -> Config {
    Config::parse(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = {workers}\nstate_dir = '{}'\nfsync = false\n{extra}\n\
             [[region]]\nid = \"2\"\nlatitude = 43.6\nlongitude = 7.06\nrange_km = 10.0\n\
             [region.mep]\ndriver = \"simulated\"\n\
             [[region]]\nid = \"3\"\nlatitude = 45.07\nlongitude = 7.68\nrange_km = 10.0\n\
             [region.mep]\ndriver = \"simulated\"\n",
            dir.display()
        ),
        "bench.toml",
    )
    .expect("bench config")
}

/// Writes `n` CREATED DNS-only requests of region "2" into `dir` through the store, as the
/// service records them (fsync off).
fn write_dns_records(dir: &Path, n: usize) {
    let request = parse_creation(example("dns-only.json").as_bytes()).expect("valid example");
    let text: Arc<str> = Arc::from(serde_json::to_string(&request).expect("serialises"));
    let (store, _) = Store::open(dir, false).expect("state dir opens");
    for _ in 0..n {
        let id = new_uuid();
        let steps: Arc<[Step]> = Arc::from([Step::new(
            "DNS rule dns-1",
            "/api/mp1/traffic/all",
            r#"{"url":"app.example.org","mec-ipaddr":"172.24.248.5","mec-macaddr":"00:00:00:00:00:00","type":1}"#,
        )]);
        let mut record = Record::new(
            Arc::from(id.as_str()),
            "2".into(),
            text.clone(),
            Status::Created,
            steps,
            1,
            now_millis(),
        );
        record.last_modified = now_millis();
        store.insert(record).expect("insert");
    }
}

/// Server time of `GET /MEC/v1/service/requests` over `--listing-records` DNS-only requests:
/// the API's handler called in-process (no socket), so only the server's own work is timed.
fn full_listing_server_time(options: &Options, goals: &mut Vec<String>) {
    use mec_plugin::api::Api;
    use mec_plugin::http::Request;
    use mec_plugin::model::ApiStyle;
    use mec_plugin::server::RequestHandler;
    let n = options.listing_records;
    let dir = fresh_dir(&options.dir, "listing");
    write_dns_records(&dir, n);
    let config = simulated_config(&dir, options.workers, "");
    let service = Arc::new(Service::open(&config).expect("service opens"));
    let api = Api {
        service,
        style: ApiStyle::Spec,
        token: None,
    };
    let request = Request::new("GET", "/MEC/v1/service/requests");
    let mut times = Vec::new();
    let mut bytes = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    for _ in 0..20 {
        let t = Instant::now();
        let response = api.handle(&request);
        // The listing is streamed: its body is written (here into memory) as the I/O loop does.
        let mut body = response.body;
        if let Some(stream) = response.stream.as_ref().and_then(|s| s.take()) {
            stream.write_to(&mut body).expect("the listing is written");
        }
        times.push(t.elapsed());
        assert_eq!(response.status, 200);
        bytes = body.len();
        if Instant::now() > deadline {
            break;
        }
    }
    times.sort();
    let median = times[times.len() / 2].as_secs_f64() * 1000.0;
    let max = times.last().unwrap().as_secs_f64() * 1000.0;
    println!(
        "  full listing of {n} DNS-only requests ({:.1} MB): server time median {median:.2} ms, max {max:.2} ms ({} runs)",
        bytes as f64 / 1e6,
        times.len()
    );
    goals.push(format!(
        "full listing of {n} DNS-only requests: {median:.2} ms server time (goal <= 15 ms for 10,000) {}",
        verdict(median * 10_000.0 / n as f64 <= 15.0)
    ));
    drop(api);
    let _ = fs::remove_dir_all(&dir);
}

/// Growth of the resident memory while 4 connections list 20 requests of 1 MB at once.
fn listing_memory(options: &Options, goals: &mut Vec<String>) {
    let dir = fresh_dir(&options.dir, "listing-memory");
    let config = simulated_config(&dir, options.workers, "max_body_bytes = 2097152");
    let app = App::start(&config).expect("plugin starts");
    let addr = app.local_addr();
    let pad = "x".repeat(1 << 20);
    for n in 0..20 {
        let body = format!(
            r#"{{"RegionId":"2","transportDependencies":[{{"transport":{{"type":"RPC","protocol":"p","version":"1","security":{{"pad":"{pad}"}}}},"serializers":"PROTOBUF3","labels":[]}}],"appDNSRule":[{{"dnsRuleId":"d{n}","domainName":"n{n}.bench.test","ipAddressType":"IP_V4","ipAddress":"10.0.0.1"}}]}}"#
        );
        let (mut reader, mut writer) = connect(addr).expect("connects");
        let request = format!(
            "POST /MEC/v1/service/requests HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        writer.write_all(request.as_bytes()).expect("sends");
        assert_eq!(read_response(&mut reader).expect("answer"), 201);
    }
    drop(pad);
    // Let what the creations allocated settle before the baseline.
    thread::sleep(Duration::from_millis(200));
    let before = status_kb("VmRSS");
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        thread::spawn(move || {
            let mut peak = 0;
            let deadline = Instant::now() + Duration::from_secs(120);
            while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                peak = peak.max(status_kb("VmRSS"));
                thread::sleep(Duration::from_millis(1));
            }
            peak
        })
    };
    let started = Instant::now();
    let listers: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(move || {
                // Read to the end in small pieces and dropped: only the server's memory grows.
                let mut stream = TcpStream::connect(addr).expect("connects");
                stream
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                stream
                    .write_all(
                        b"GET /MEC/v1/service/requests HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n",
                    )
                    .expect("sends");
                let mut buf = vec![0u8; 64 << 10];
                let mut total = 0usize;
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    total += n;
                }
                total
            })
        })
        .collect();
    let read: Vec<usize> = listers.into_iter().map(|t| t.join().unwrap()).collect();
    let took = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    app.stop(Duration::from_secs(2));
    let _ = fs::remove_dir_all(&dir);
    let growth_mb = peak.saturating_sub(before) as f64 * 1024.0 / 1e6;
    println!(
        "  4 concurrent listings of 20 x 1 MB requests ({:.1} MB each) in {} ms: RSS {:.1} MB before, peak {:.1} MB, growth {growth_mb:.1} MB",
        read.iter().max().copied().unwrap_or(0) as f64 / 1e6,
        took.as_millis(),
        before as f64 * 1024.0 / 1e6,
        peak as f64 * 1024.0 / 1e6
    );
    goals.push(format!(
        "RSS growth during 4 concurrent listings of 20 x 1 MB requests: {growth_mb:.1} MB (goal <= 8 MB) {}",
        verdict(growth_mb <= 8.0)
    ));
}

/// `GET /service/regions/3` (no request) at 8 connections while region "2" holds
/// `--region-records` requests.
fn empty_region_listing(options: &Options, goals: &mut Vec<String>) {
    let n = options.region_records;
    let dir = fresh_dir(&options.dir, "region-listing");
    let t = Instant::now();
    write_dns_records(&dir, n);
    let written = t.elapsed();
    let config = simulated_config(&dir, options.workers, "max_requests = 2000000");
    let app = App::start(&config).expect("plugin starts");
    let outcome = drive(
        app.local_addr(),
        "GET",
        "/MEC/v1/service/regions/3",
        8,
        options.duration,
        None,
    );
    app.stop(Duration::from_secs(2));
    let _ = fs::remove_dir_all(&dir);
    println!(
        "  empty region's listing, 8 connections, {n} requests in another region (written in {:.1} s): {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {} errors",
        written.as_secs_f64(),
        outcome.rate(),
        outcome.pct(0.50),
        outcome.pct(0.99),
        outcome.errors
    );
    goals.push(format!(
        "empty region's listing at 8 connections with {n} requests elsewhere: {:.0} req/s (goal >= 20,000 with 160,000) {}",
        outcome.rate(),
        verdict(outcome.rate() >= 20_000.0 && outcome.errors == 0)
    ));
}

struct ChildReplay {
    ms: f64,
    delta_kb: u64,
}

/// Replays `dir` in a fresh process and prints its line.
fn replay_in_child(dir: &Path, what: &str, n: usize, compact: usize) -> ChildReplay {
    let mut runs: Vec<(f64, String)> = (0..REPLAY_RUNS)
        .map(|_| {
            let out = Command::new(std::env::current_exe().expect("own path"))
                .arg("replay-child")
                .arg(dir)
                .output()
                .expect("child runs");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if !out.status.success() {
                panic!(
                    "replay child failed: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let ms = text
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("ms=")?.parse().ok())
                .expect("child reports ms");
            (ms, text)
        })
        .collect();
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (fastest, slowest) = (runs[0].0, runs[runs.len() - 1].0);
    let text = runs.swap_remove(runs.len() / 2).1;
    let field = |name: &str| -> f64 {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or_else(|| panic!("child output lacks {name}: {text}"))
    };
    let (ms, records) = (field("ms"), field("records") as usize);
    let (before, after, peak) = (
        field("rss_before_kb"),
        field("rss_after_kb"),
        field("hwm_kb"),
    );
    assert_eq!(records, n, "every record is replayed");
    let delta_kb = (after - before).max(0.0) as u64;
    println!(
        "  {:<22} {:>9} {:>9.0} {:>11.0} {:>8.1} MB {:>8.1} MB {:>8.1} MB   ({:.2} x compact; {fastest:.0}-{slowest:.0} ms)",
        format!("{what} ({:.0} entries)", field("entries")),
        records,
        ms,
        records as f64 / (ms / 1000.0),
        before * 1024.0 / 1e6,
        delta_kb as f64 * 1024.0 / 1e6,
        peak * 1024.0 / 1e6,
        delta_kb as f64 * 1024.0 / compact as f64,
    );
    let per = |name: &str| field(name) / records.max(1) as f64;
    println!(
        "  {:<22} per record: RSS {:.0} B (rule index included; counting it took {:.0} ms), malloc'd {:.0} B; string data: request {:.0} B, steps {:.0} B (labels {:.0}, targets {:.0}, bodies {:.0}), id {:.0} B; sizes: Record {} B + Arc<str> key {} B in the map, Step {} B",
        "",
        delta_kb as f64 * 1024.0 / records.max(1) as f64,
        field("index_ms"),
        (field("heap_after") - field("heap_before")) / records.max(1) as f64,
        per("request_bytes"),
        per("label_bytes") + per("target_bytes") + per("body_bytes"),
        per("label_bytes"),
        per("target_bytes"),
        per("body_bytes"),
        per("id_bytes"),
        std::mem::size_of::<Record>(),
        std::mem::size_of::<Arc<str>>(),
        std::mem::size_of::<Step>(),
    );
    let (read, crc, decode) = replay_breakdown(dir);
    println!(
        "  {:<22} where the time goes (same files, this process): reading lines {read:.0} ms, + CRC {:.0} ms, + JSON decoding {:.0} ms; the rest, applying entries to the map, ~{:.0} ms",
        "",
        crc - read,
        decode - crc,
        (ms - decode).max(0.0)
    );
    ChildReplay { ms, delta_kb }
}

/// Milliseconds to go through the state files of `dir` the way a replay does: reading the lines;
/// reading and checking their CRC; reading, checking and decoding them into journal entries
/// (without applying them).
fn replay_breakdown(dir: &Path) -> (f64, f64, f64) {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    let pass = |level: u8| {
        let t = Instant::now();
        let mut count = 0usize;
        for path in &files {
            let mut reader = BufReader::with_capacity(1 << 20, fs::File::open(path).unwrap());
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).unwrap() > 0 {
                if line[0] == 0 {
                    break; // the journal's preallocated zeros
                }
                if level >= 1 {
                    let text = std::str::from_utf8(&line[..line.len() - 1]).expect("UTF-8");
                    let mut parts = text.splitn(3, ' ');
                    let (crc, _version, json) = (
                        parts.next().unwrap(),
                        parts.next().unwrap(),
                        parts.next().unwrap(),
                    );
                    assert_eq!(
                        u32::from_str_radix(crc, 16).ok(),
                        Some(crc32fast::hash(json.as_bytes()))
                    );
                    if level >= 2 {
                        let entry: mec_plugin::journal::Entry =
                            serde_json::from_str(json).expect("journal entry");
                        std::hint::black_box(entry);
                    }
                }
                count += 1;
                line.clear();
            }
        }
        std::hint::black_box(count);
        t.elapsed().as_secs_f64() * 1000.0
    };
    (pass(0), pass(1), pass(2))
}

/// The hidden `replay-child <dir>` command: opens the store once and reports.
fn replay_child(dir: &Path) {
    heap_in_use();
    let before = status_kb("VmRSS");
    let t = Instant::now();
    let (store, stats) = Store::open(dir, true).expect("replay");
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    // The index of the platform rules the records hold: the service counts it at its first
    // removal, not before it serves; counted here so that the RSS includes it.
    let t = Instant::now();
    store.index_rules([("2", RuleIdentity::Call)]);
    store.count_rules();
    let index_ms = t.elapsed().as_secs_f64() * 1000.0;
    let after = status_kb("VmRSS");
    let hwm = status_kb("VmHWM");
    let heap = heap_in_use();
    // What the records hold, in bytes of string data (measured after the RSS).
    let (mut request, mut ids, mut labels, mut targets, mut bodies) = (0, 0, 0, 0, 0);
    for r in store.list(None) {
        request += r.request.len();
        ids += r.id.len();
        for s in r.steps.iter() {
            labels += s.label().len();
            targets += s.target().len();
            bodies += s.body().len();
        }
    }
    println!(
        "ms={ms:.1} index_ms={index_ms:.1} records={} entries={} rss_before_kb={before} rss_after_kb={after} hwm_kb={hwm} \
         heap_before={} heap_after={} request_bytes={request} id_bytes={ids} label_bytes={labels} \
         target_bytes={targets} body_bytes={bodies}",
        store.len(),
        stats.entries,
        heap.0,
        heap.1,
    );
    drop(store);
}

/// Bytes malloc holds for the program (arena chunks in use + mmapped chunks), at the start of
/// the child and now; zeros where glibc's `mallinfo2` is not available.
fn heap_in_use() -> (u64, u64) {
    static START: AtomicU64 = AtomicU64::new(u64::MAX);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    let now = {
        // SAFETY: mallinfo2 only reads malloc's own counters.
        let m = unsafe { libc::mallinfo2() };
        (m.uordblks + m.hblkhd) as u64
    };
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let now = 0;
    let _ = START.compare_exchange(u64::MAX, now, Ordering::Relaxed, Ordering::Relaxed);
    (START.load(Ordering::Relaxed), now)
}

// ---------------------------------------------------------------------------------------------
// helpers

fn example(name: &str) -> String {
    fs::read_to_string(format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR")))
        .expect("example bodies")
}

fn fresh_dir(base: &Path, what: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = base.join(format!(
        "mec-bench-{}-{what}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("state dir");
    dir
}

/// Writes out whatever earlier scenarios left in the page cache of `dir`'s file system, so
/// that one scenario's writes (a run with fsync off leaves megabytes) do not compete with the
/// next one's flushes.
fn settle(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        // SAFETY: a plain system call on a descriptor we own; no memory is passed.
        unsafe { libc::syncfs(std::os::unix::io::AsRawFd::as_raw_fd(&d)) };
    }
}

/// Files, bytes and lines of the journals and snapshots in `dir`.
fn state_files(dir: &Path) -> (String, u64, usize) {
    let mut names = Vec::new();
    let (mut bytes, mut lines) = (0, 0);
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".jsonl") {
            let mut data = fs::read(e.path()).unwrap_or_default();
            // a journal's entries end where its preallocated zeros begin
            data.truncate(data.iter().position(|&b| b == 0).unwrap_or(data.len()));
            bytes += data.len() as u64;
            lines += data.iter().filter(|&&b| b == b'\n').count();
            names.push(name);
        }
    }
    names.sort();
    (names.join(", "), bytes, lines)
}

fn journal_entries(dir: &Path) -> usize {
    state_files(dir).2
}

/// Cache flushes completed by the block device holding `dir` (`/sys/dev/block/M:m/stat`
/// field 16), when the kernel reports them.
fn disk_flushes(dir: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = fs::metadata(dir).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let stat = fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat")).ok()?;
    stat.split_whitespace().nth(15)?.parse().ok()
}

/// Threads and processes started on the whole machine since boot (`processes` in
/// `/proc/stat`): other programs add to it too, so per-call figures are approximate.
fn threads_started_system_wide() -> u64 {
    fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("processes ")?.trim().parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds of this process so far.
fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass; no other memory is touched.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Busy CPU seconds of the whole machine so far (all but idle and iowait in `/proc/stat`).
fn machine_busy_seconds() -> f64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let total: f64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).unwrap_or(&0.0) + ticks.get(4).unwrap_or(&0.0);
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (total - idle) / hz
}

/// A `/proc/self/status` field in kB.
fn status_kb(field: &str) -> u64 {
    fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn utc_now() -> String {
    mec_plugin::util::rfc3339(now_millis())
}

// ---------------------------------------------------------------------------------------------
// side by side: nginx, and the previous build

/// `versus-nginx`: `GET /MEC/v1/service/regions` from the plugin (in this process, as in the
/// `get` scenario) and the same bytes from Debian's nginx (`return 200`, on a loopback port,
/// started from a generated configuration in a temporary directory), at each of
/// `--connections` (default 8 here), alternated `--repeat` times; the goal is judged on the
/// median ratio. Without nginx, says so and skips.
fn versus_nginx(options: &Options, goals: &mut Vec<String>) {
    println!();
    println!(
        "versus nginx: GET /MEC/v1/service/regions, {:.1} s per run, {} server workers",
        options.duration.as_secs_f64(),
        options.workers
    );
    let dir = fresh_dir(&options.dir, "nginx");
    let config = Config::parse(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = {}\nstate_dir = '{}'\nfsync = false\n\
             [[region]]\nid = \"2\"\nlatitude = 43.6143899\nlongitude = 7.068931\nrange_km = 10.0\n\
             [region.mep]\ndriver = \"simulated\"\n",
            options.workers,
            dir.join("state").display()
        ),
        "bench.toml",
    )
    .expect("bench config");
    let app = App::start(&config).expect("plugin starts");
    let plugin_addr = app.local_addr();
    let (plugin_head, body) = fetch(plugin_addr, "/MEC/v1/service/regions").expect("GET regions");
    println!("  plugin answers: {}", plugin_head.replace("\r\n", " | "));
    let Some(nginx) = Nginx::start(&dir, &body) else {
        app.stop(Duration::from_secs(2));
        let _ = fs::remove_dir_all(&dir);
        return;
    };
    let (nginx_head, nginx_body) =
        fetch(nginx.addr, "/MEC/v1/service/regions").expect("nginx answers");
    println!("  nginx answers:  {}", nginx_head.replace("\r\n", " | "));
    if nginx_body != body {
        println!("  WARNING: nginx's body differs from the plugin's");
    }
    println!(
        "  {:<8} {:>5} {:>9} {:>8} {:>8} {:>6}   {:>9} {:>8} {:>8} {:>6}   {:>6}",
        "run",
        "conns",
        "plugin/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "nginx/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "ratio"
    );
    let connections = if options.connections_given {
        options.connections.clone()
    } else {
        vec![8]
    };
    for &c in &connections {
        let mut ratios = Vec::new();
        for run in 0..options.repeat {
            // The two alternate which goes first.
            let regions = |addr| {
                drive(
                    addr,
                    "GET",
                    "/MEC/v1/service/regions",
                    c,
                    options.duration,
                    None,
                )
            };
            let (plugin, nginx_run) = if run % 2 == 0 {
                let p = regions(plugin_addr);
                (p, regions(nginx.addr))
            } else {
                let n = regions(nginx.addr);
                (regions(plugin_addr), n)
            };
            let ratio = plugin.rate() / nginx_run.rate().max(1.0);
            ratios.push(ratio);
            println!(
                "  {:<8} {:>5} {:>9.0} {:>8.3} {:>8.3} {:>6}   {:>9.0} {:>8.3} {:>8.3} {:>6}   {:>6.2}",
                run + 1,
                c,
                plugin.rate(),
                plugin.pct(0.50),
                plugin.pct(0.99),
                plugin.errors,
                nginx_run.rate(),
                nginx_run.pct(0.50),
                nginx_run.pct(0.99),
                nginx_run.errors,
                ratio
            );
        }
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        goals.push(format!(
            "GET regions at {c} connections: plugin/nginx = {median:.2} (median of {} runs; goal >= 0.85) {}",
            ratios.len(),
            verdict(median >= 0.85)
        ));
    }
    drop(nginx);
    app.stop(Duration::from_secs(2));
    let _ = fs::remove_dir_all(&dir);
}

/// One GET on a new connection: the response head and body.
fn fetch(addr: SocketAddr, path: &str) -> std::io::Result<(String, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)?;
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no response head"))?;
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    Ok((head, all[split + 4..].to_vec()))
}

/// Debian's nginx serving `body` with `return 200` at `/MEC/v1/service/regions`, from a
/// configuration in `dir`; stopped (SIGTERM to its master, which stops its workers) on drop.
struct Nginx {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Nginx {
    /// `None` (after saying why) when nginx is missing or does not start.
    fn start(dir: &Path, body: &[u8]) -> Option<Nginx> {
        let binary = std::env::var_os("NGINX")
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .or_else(|| {
                ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
                    .iter()
                    .map(PathBuf::from)
                    .find(|p| p.exists())
            });
        let Some(binary) = binary else {
            println!(
                "  nginx is missing (apt-get install -y nginx, or NGINX=/path/to/nginx): skipping the side-by-side part"
            );
            return None;
        };
        let version = Command::new(&binary)
            .arg("-v")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
            .unwrap_or_default();
        println!("  {}: {version}", binary.display());
        let text = String::from_utf8_lossy(body);
        if text.contains('$') {
            println!("  the body contains '$', which nginx's return would expand: skipping nginx");
            return None;
        }
        let quoted = text.replace('\\', "\\\\").replace('\'', "\\'");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let root = dir.join("nginx");
        fs::create_dir_all(root.join("tmp")).expect("nginx dir");
        let r = root.display();
        // What a packaged nginx does by default (worker_processes auto, keep-alive), minus logs.
        let conf = format!(
            "daemon off;\nworker_processes auto;\npid {r}/nginx.pid;\nerror_log {r}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  server_tokens off;\n  keepalive_requests 10000000;\n\
             client_body_temp_path {r}/tmp/body;\n  proxy_temp_path {r}/tmp/proxy;\n\
             fastcgi_temp_path {r}/tmp/fastcgi;\n  uwsgi_temp_path {r}/tmp/uwsgi;\n\
             scgi_temp_path {r}/tmp/scgi;\n\
             server {{\n    listen 127.0.0.1:{port};\n\
             location = /MEC/v1/service/regions {{\n      default_type application/json;\n\
             return 200 '{quoted}';\n    }}\n  }}\n}}\n"
        );
        let conf_path = root.join("nginx.conf");
        fs::write(&conf_path, conf).expect("nginx.conf");
        let child = Command::new(&binary)
            .arg("-p")
            .arg(&root)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(root.join("error.log"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                println!("  cannot start {}: {e}: skipping nginx", binary.display());
                return None;
            }
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                println!(
                    "  nginx exited ({status}): {}; skipping nginx",
                    fs::read_to_string(root.join("error.log"))
                        .unwrap_or_default()
                        .trim()
                );
                return None;
            }
            if fetch(addr, "/MEC/v1/service/regions").is_ok() {
                return Some(Nginx { child, addr });
            }
            thread::sleep(Duration::from_millis(50));
        }
        println!("  nginx did not answer within 5 s: skipping nginx");
        stop_child(&mut child);
        None
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// SIGTERM, then SIGKILL after 3 s; waits for the process.
fn stop_child(child: &mut std::process::Child) {
    // SAFETY: a signal to our own child, whose id is valid until we wait for it.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `baseline`: the durable POST with one LL-MEC call (`examples/dns-only.json` against the
/// bench's fake LL-MEC, fsync on) served by two builds of the binary side by side, each a child
/// process on the same configuration: this build (`--binary`, default `mec-plugin` next to the
/// `examples/` directory of this executable, i.e. `target/release/mec-plugin`) and
/// `--baseline-binary PATH` (the previous commit built beside it, see `.ci/bench-baseline`).
/// Runs alternate, `--repeat` times each (default 1; use 5 or more), at
/// `--durable-connections` (default 8 here); the goal (no slower than the baseline, ±5 %) is
/// judged on the median ratio.
fn baseline(options: &Options, goals: &mut Vec<String>) {
    let Some(baseline) = options.baseline_binary.clone() else {
        eprintln!("baseline needs --baseline-binary PATH (see .ci/bench-baseline)");
        std::process::exit(2);
    };
    let current = own_binary(options);
    for (what, path) in [("--binary", &current), ("--baseline-binary", &baseline)] {
        if !path.exists() {
            eprintln!(
                "{what} {} does not exist (cargo build --release builds target/release/mec-plugin)",
                path.display()
            );
            std::process::exit(2);
        }
    }
    let platform = FakeMep::start();
    let bodies = Arc::new(vec![example("dns-only.json")]);
    let connections = if options.durable_given {
        options.durable_connections.clone()
    } else {
        vec![8]
    };
    println!();
    println!(
        "baseline: durable POST dns-only (1 LL-MEC call), fsync on, {:.1} s per run, {} workers",
        options.duration.as_secs_f64(),
        options.workers
    );
    println!("  this build: {}", current.display());
    println!("  baseline:   {}", baseline.display());
    println!(
        "  {:<5} {:>5} {:<9} {:>8} {:>8} {:>8} {:>6}",
        "run", "conns", "build", "req/s", "p50 ms", "p99 ms", "errors"
    );
    for &c in &connections {
        let mut ratios = Vec::new();
        for run in 0..options.repeat {
            let order: [(&str, &Path); 2] = if run % 2 == 0 {
                [("this", &current), ("baseline", &baseline)]
            } else {
                [("baseline", &baseline), ("this", &current)]
            };
            let mut rates = [0.0f64; 2];
            for (name, binary) in order {
                let o = drive_binary(options, binary, &platform, c, bodies.clone());
                println!(
                    "  {:<5} {:>5} {:<9} {:>8.0} {:>8.3} {:>8.3} {:>6}",
                    run + 1,
                    c,
                    name,
                    o.rate(),
                    o.pct(0.50),
                    o.pct(0.99),
                    o.errors
                );
                rates[usize::from(name == "baseline")] = o.rate();
            }
            ratios.push(rates[0] / rates[1].max(1.0));
        }
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        goals.push(format!(
            "durable POST at {c} connections: this build / baseline = {median:.3} (median of {} pairs; goal >= 0.95) {}",
            ratios.len(),
            verdict(median >= 0.95)
        ));
    }
}

/// `--binary`, or else `mec-plugin` next to the `examples/` directory of this executable
/// (`target/release/mec-plugin` for a release run).
fn own_binary(options: &Options) -> PathBuf {
    options.binary.clone().unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("current executable");
        exe.parent()
            .and_then(Path::parent)
            .map(|d| d.join("mec-plugin"))
            .expect("target directory")
    })
}

/// Starts `binary` as a child on a fresh state directory against `platform`, drives it, stops it.
fn drive_binary(
    options: &Options,
    binary: &Path,
    platform: &FakeMep,
    connections: usize,
    bodies: Arc<Vec<String>>,
) -> Outcome {
    let dir = fresh_dir(&options.dir, "baseline");
    settle(&dir);
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let config = dir.join("regions.toml");
    fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nworkers = {}\nstate_dir = '{}'\nfsync = true\n\
             [[region]]\nid = \"2\"\nlatitude = 43.6143899\nlongitude = 7.068931\nrange_km = 10.0\n\
             [region.mep]\ndriver = \"llmec\"\nurl = \"http://{}\"\n",
            options.workers,
            dir.join("state").display(),
            platform.addr
        ),
    )
    .expect("config file");
    let mut child = Command::new(binary)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while fetch(addr, "/healthz").is_err() {
        if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
            stop_child(&mut child);
            panic!("{} did not start serving", binary.display());
        }
        thread::sleep(Duration::from_millis(50));
    }
    let plugin_cpu = child_cpu_seconds(child.id());
    let mut outcome = drive(
        addr,
        "POST",
        "/MEC/v1/service/requests",
        connections,
        options.duration,
        Some(bodies),
    );
    outcome.plugin_cpu = Some(child_cpu_seconds(child.id()) - plugin_cpu);
    stop_child(&mut child);
    let _ = fs::remove_dir_all(&dir);
    outcome
}

// ---------------------------------------------------------------------------------------------
// cluster (issue 15): instances on a 3-member etcd

/// The tests' etcd members (`tests/support/etcd.rs`, not copied); it takes [`temp_dir`] and
/// [`eventually`] from its parent module, here this file.
#[allow(dead_code)]
#[path = "../tests/support/etcd.rs"]
mod etcd_members;

/// A fresh, empty directory under the system's temporary directory (for [`etcd_members`]).
fn temp_dir(name: &str) -> PathBuf {
    fresh_dir(&std::env::temp_dir(), name)
}

/// Polls `done` every 20 ms until it holds, for at most `limit`; whether it held (for
/// [`etcd_members`]).
#[allow(dead_code)]
fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// A `mec-plugin` child process on a loopback port, killed (SIGKILL) when dropped.
struct Instance {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Instance {
    /// Starts `binary --config config` (listening on `addr`) and waits (at most 20 s) until
    /// `/healthz` answers 200: on etcd, once it leads or follows a known leader.
    fn start(binary: &Path, config: &Path, addr: SocketAddr) -> Instance {
        let child = Command::new(binary)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut instance = Instance { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !fetch(addr, "/healthz").is_ok_and(|(head, _)| head.starts_with("HTTP/1.1 200")) {
            if Instant::now() > deadline || matches!(instance.child.try_wait(), Ok(Some(_))) {
                panic!(
                    "{} ({}) did not start serving",
                    binary.display(),
                    config.display()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        instance
    }

    /// The role `/healthz` reports ("leader", "follower", "unknown"), if it answers.
    fn role(&self) -> Option<String> {
        let (_, body) = fetch(self.addr, "/healthz").ok()?;
        let health: serde_json::Value = serde_json::from_slice(&body).ok()?;
        health["role"].as_str().map(str::to_string)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU seconds of child process `pid` so far (`/proc/<pid>/stat`), 0 when gone.
fn child_cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // "<pid> (<comm>) <state> ...": utime and stime are the 12th and 13th fields after ')'.
    let fields: Vec<f64> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    fields.iter().sum::<f64>() / hz
}

/// Drives POSTs of `bodies` at `addr` (one of `instances`) and counts the CPU time of
/// `instances` meanwhile.
fn drive_instances(
    instances: &[&Instance],
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    bodies: &Arc<Vec<String>>,
) -> Outcome {
    let cpu = |instances: &[&Instance]| -> f64 {
        instances
            .iter()
            .map(|i| child_cpu_seconds(i.child.id()))
            .sum()
    };
    let before = cpu(instances);
    let path = "/MEC/v1/service/requests";
    let mut o = drive(
        addr,
        "POST",
        path,
        connections,
        duration,
        Some(bodies.clone()),
    );
    o.plugin_cpu = Some(cpu(instances) - before);
    o
}

/// A free port of 127.0.0.1 (the instance's `advertise_url` names it, so it is picked first).
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// The configuration of an instance on `addr` with one LL-MEC region on `platform`, its
/// records on etcd (`endpoints`, `prefix`, `ttl_s`).
fn cluster_config(
    dir: &Path,
    options: &Options,
    addr: SocketAddr,
    platform: &FakeMep,
    store: (&[String], &str, u64),
) -> PathBuf {
    let (endpoints, prefix, ttl_s) = store;
    let endpoints: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    let path = dir.join(format!("instance-{}.toml", addr.port()));
    fs::write(
        &path,
        format!(
            "[server]\nlisten = \"{addr}\"\nworkers = {}\nstate_dir = '{}'\n\
             [store]\nkind = \"etcd\"\nendpoints = [{}]\nprefix = \"{prefix}\"\n\
             lease_ttl_s = {ttl_s}\nadvertise_url = \"http://{addr}\"\n\
             [[region]]\nid = \"2\"\nlatitude = 43.6143899\nlongitude = 7.068931\nrange_km = 10.0\n\
             [region.mep]\ndriver = \"llmec\"\nurl = \"http://{}\"\n",
            options.workers,
            dir.join(format!("state-{}", addr.port())).display(),
            endpoints.join(", "),
            platform.addr
        ),
    )
    .expect("config file");
    path
}

/// `cluster`: see the module's documentation.
fn cluster(options: &Options, goals: &mut Vec<String>) {
    let binary = own_binary(options);
    if !binary.exists() {
        eprintln!(
            "--binary {} does not exist (cargo build --release builds target/release/mec-plugin)",
            binary.display()
        );
        std::process::exit(2);
    }
    let Some(etcd) = etcd_members::Cluster::start("bench-cluster", 3) else {
        println!();
        println!("cluster: SKIPPED, {}", etcd_members::MISSING);
        return;
    };
    println!();
    println!(
        "cluster: 3 etcd members on loopback ({}), etcd {}, binary {}",
        etcd.endpoints().join(" "),
        etcd_members::binary(),
        binary.display()
    );
    let platform = FakeMep::start();
    let dir = fresh_dir(&options.dir, "cluster");
    let part = |name: &str| !options.only_given || options.runs(name);
    if part("durable") {
        cluster_throughput(options, &binary, &etcd, &platform, &dir, goals);
    }
    if part("failover") {
        cluster_failover(options, &binary, &etcd, &platform, &dir, goals);
    }
    // Last: etcd served every run after the probes' ~13,000 puts (and their deletion) 25-35 %
    // slower (CPU per request outside the plugin 1,310-1,660 µs against 925-1,030; BENCHMARKS.md).
    if part("durable") && options.probes {
        probe_etcd(&etcd, options.duration);
    }
    let _ = fs::remove_dir_all(&dir);
}

/// etcd's current revision (one more per transaction that writes).
fn etcd_revision(client: &mec_plugin::etcd::Client) -> i64 {
    let range = mec_plugin::etcd::Range::key("/mec-bench/revision");
    client.range(&range).expect("etcd answers").revision
}

/// What a durable POST on etcd is made of: one put of a record-sized value (a creation's
/// record is about 500 bytes) through the plugin's own etcd client, one at a time and from 8
/// threads at once (etcd's Raft commit: a quorum's WAL fsyncs, here on one disk).
fn probe_etcd(etcd: &etcd_members::Cluster, duration: Duration) {
    let client = Arc::new(etcd.client(Duration::from_secs(2)));
    let value = vec![b'x'; 500];
    let mut one = Vec::new();
    for n in 0..PROBE_SAMPLES.min(300) {
        let started = Instant::now();
        client
            .put(format!("/mec-bench/probe/{n}").as_bytes(), &value, 0)
            .expect("etcd put");
        one.push(started.elapsed());
    }
    let (p50, p99) = percentiles(&mut one);
    println!("probe: etcd put of 500 bytes, one at a time: p50 {p50:.3} ms, p99 {p99:.3} ms");
    let deadline = Instant::now() + duration;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (client, value) = (client.clone(), value.clone());
            thread::spawn(move || {
                let mut latencies = Vec::new();
                while Instant::now() < deadline && latencies.len() < MAX_REQUESTS_PER_CONNECTION {
                    let key = format!("/mec-bench/probe/{t}-{}", latencies.len());
                    let started = Instant::now();
                    if client.put(key.as_bytes(), &value, 0).is_ok() {
                        latencies.push(started.elapsed());
                    }
                }
                latencies
            })
        })
        .collect();
    let mut all: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let rate = all.len() as f64 / duration.as_secs_f64();
    let (p50, p99) = percentiles(&mut all);
    println!("probe: etcd puts from 8 threads: {rate:.0} puts/s, p50 {p50:.3} ms, p99 {p99:.3} ms");
    let _ = client.delete(
        b"/mec-bench/probe/",
        Some(&mec_plugin::etcd::prefix_end(b"/mec-bench/probe/")),
    );
}

/// The durable POST against the journal, an instance leading on etcd and a follower of it.
fn cluster_throughput(
    options: &Options,
    binary: &Path,
    etcd: &etcd_members::Cluster,
    platform: &FakeMep,
    dir: &Path,
    goals: &mut Vec<String>,
) {
    let bodies = Arc::new(vec![example("dns-only.json")]);
    let c = if options.durable_given {
        options.durable_connections[0]
    } else {
        8
    };
    println!(
        "durable POST dns-only (1 LL-MEC call), {c} connections, {:.1} s per run, {} workers",
        options.duration.as_secs_f64(),
        options.workers
    );
    println!(
        "  {:<4} {:<32} {:>8} {:>8} {:>8} {:>8} {:>6} {:>8} {:>8} {:>8} {:>6} {:>7}",
        "run",
        "store",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "errors",
        "cpu/req",
        "plugin",
        "rest",
        "busy %",
        "txn/req"
    );
    println!(
        "  (cpu/req: µs of CPU of the whole machine per request, of which the plugin's processes \
         and the rest: etcd, load generator, fake platform, other programs; busy %: of all cores;\n   \
         txn/req: etcd transactions (revisions) per request, 2 unbatched: a creation, its outcome)"
    );
    let client = etcd.client(Duration::from_secs(2));
    let mut on_etcd = Vec::new();
    for run in 0..options.repeat {
        let journal = drive_binary(options, binary, platform, c, bodies.clone());
        print_cluster_line(run, "journal (fsync on)", &journal, None);
        let prefix = format!("/mec-bench/throughput-{run}");
        let store = (etcd.endpoints(), prefix.as_str(), 5);
        let leader_addr = free_addr();
        let config = cluster_config(
            dir,
            options,
            leader_addr,
            platform,
            (&store.0, store.1, store.2),
        );
        let leader = Instance::start(binary, &config, leader_addr);
        let follower_addr = free_addr();
        let config = cluster_config(
            dir,
            options,
            follower_addr,
            platform,
            (&store.0, store.1, store.2),
        );
        let follower = Instance::start(binary, &config, follower_addr);
        let both = [&leader, &follower];
        let revision = etcd_revision(&client);
        let o = drive_instances(&both, leader.addr, c, options.duration, &bodies);
        let txns = etcd_revision(&client) - revision;
        print_cluster_line(run, "etcd, 3 members: the leader", &o, Some(txns));
        on_etcd.push(o);
        let revision = etcd_revision(&client);
        let o = drive_instances(&both, follower.addr, c, options.duration, &bodies);
        let txns = etcd_revision(&client) - revision;
        print_cluster_line(run, "etcd: a follower (forwards)", &o, Some(txns));
        drop((leader, follower));
    }
    on_etcd.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let o = &on_etcd[on_etcd.len() / 2];
    goals.push(format!(
        "durable POST on a 3-member etcd, 1 LL-MEC call, {c} connections, through the leader: {:.0} req/s (goal >= 1000) {}, p99 {:.2} ms (goal <= 20) {} (median of {} runs)",
        o.rate(),
        verdict(o.rate() >= 1000.0),
        o.pct(0.99),
        verdict(o.pct(0.99) <= 20.0),
        on_etcd.len()
    ));
}

/// One line of `cluster`'s throughput: `cpu/req` is the CPU time of the whole machine per
/// request in µs (the plugin, etcd, the load generator and the fake platform share it; other
/// programs too), split into the plugin's processes and the rest; `busy %` the machine's busy
/// share (of all cores) meanwhile.
fn print_cluster_line(run: usize, store: &str, o: &Outcome, txns: Option<i64>) {
    let busy = o.cpu + o.others;
    let cores = thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let per_request = |seconds: f64| seconds / o.requests.max(1) as f64 * 1e6;
    let plugin = o.plugin_cpu.unwrap_or(0.0);
    println!(
        "  {:<4} {:<32} {:>8.0} {:>8.3} {:>8.3} {:>8.2} {:>6} {:>8.0} {:>8.0} {:>8.0} {:>6.0} {:>7}",
        run + 1,
        store,
        o.rate(),
        o.pct(0.50),
        o.pct(0.99),
        o.latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        o.errors,
        per_request(busy),
        per_request(plugin),
        per_request(busy - plugin),
        busy / o.elapsed / cores * 100.0,
        txns.map_or("-".to_string(), |t| format!(
            "{:.2}",
            t as f64 / o.requests.max(1) as f64
        ))
    );
}

/// The one instance of `instances` whose `/healthz` says "leader", waiting at most 30 s.
fn find_leader(instances: &[Option<Instance>]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leaders: Vec<usize> = (0..instances.len())
            .filter(|&i| {
                instances[i].as_ref().and_then(Instance::role).as_deref() == Some("leader")
            })
            .collect();
        if let [leader] = leaders[..] {
            return leader;
        }
        assert!(
            Instant::now() < deadline,
            "no single leader within 30 s: {leaders:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// POSTs `body` on a new connection; the answer's status.
fn post_once(addr: SocketAddr, body: &str) -> std::io::Result<u16> {
    let (mut reader, mut writer) = connect(addr)?;
    writer.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        writer,
        "POST /MEC/v1/service/requests HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    read_response(&mut reader)
}

/// Bound on one failover's measurement.
const FAILOVER_LIMIT: Duration = Duration::from_secs(60);

/// The failover time over `--kills` leader kills among three instances.
fn cluster_failover(
    options: &Options,
    binary: &Path,
    etcd: &etcd_members::Cluster,
    platform: &FakeMep,
    dir: &Path,
    goals: &mut Vec<String>,
) {
    let ttl = options.lease_ttl_s;
    let endpoints = etcd.endpoints();
    let store = (endpoints.as_slice(), "/mec-bench/failover", ttl);
    let configs: Vec<(PathBuf, SocketAddr)> = (0..3)
        .map(|_| {
            let addr = free_addr();
            (cluster_config(dir, options, addr, platform, store), addr)
        })
        .collect();
    let mut instances: Vec<Option<Instance>> = configs
        .iter()
        .map(|(config, addr)| Some(Instance::start(binary, config, *addr)))
        .collect();
    println!();
    println!(
        "failover: 3 instances, lease_ttl_s = {ttl}; time from SIGKILL of the leader until a POST through another instance is answered 201 (tried every 20 ms, round robin)"
    );
    let body = example("dns-only.json");
    let mut times = Vec::new();
    for kill in 0..options.kills {
        let leader = find_leader(&instances);
        instances[leader] = None;
        let killed = Instant::now();
        let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        let mut attempts = 0usize;
        let through = loop {
            let i = others[attempts % others.len()];
            attempts += 1;
            if post_once(configs[i].1, &body).is_ok_and(|s| s == 201) {
                break Some(i);
            }
            if killed.elapsed() > FAILOVER_LIMIT {
                break None;
            }
            thread::sleep(Duration::from_millis(20));
        };
        let took = killed.elapsed();
        println!(
            "  kill {:>2}: leader instance {leader} killed; {} after {:.0} ms ({attempts} attempts)",
            kill + 1,
            through.map_or("no POST answered 201".to_string(), |i| format!(
                "POST answered 201 through instance {i}"
            )),
            took.as_secs_f64() * 1000.0
        );
        times.push(if through.is_some() {
            took
        } else {
            FAILOVER_LIMIT
        });
        let (config, addr) = &configs[leader];
        instances[leader] = Some(Instance::start(binary, config, *addr));
    }
    let (p50, p99) = percentiles(&mut times);
    let bound = (ttl + 2) as f64 * 1000.0;
    println!(
        "  failover over {} kills: p50 {p50:.0} ms, p99 {p99:.0} ms, max {:.0} ms",
        times.len(),
        times.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    );
    goals.push(format!(
        "failover over {} leader kills, lease_ttl_s = {ttl}: p50 {p50:.0} ms, p99 {p99:.0} ms (goal p99 <= lease_ttl_s + 2 s = {bound:.0} ms) {}",
        times.len(),
        verdict(p99 <= bound)
    ));
}
