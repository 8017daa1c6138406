//! Durability of the real binary: acknowledged changes survive `kill -9` at any moment, crashes
//! are rolled back or finished at start-up, a torn journal tail is cut off (50 simulated power
//! cuts never refuse the start), a damaged journal
//! stops the start naming file and offset, a state directory serves one process at a time, and
//! one removed under the service stops every change (health says why).

#[path = "support/child.rs"]
mod child;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mec_plugin::util::lock;
use serde_json::Value;
use support::fake_llmec::{DNS_PATH, FakeLlMec};
use support::{eventually, example, llmec_region, temp_dir};

const BIN: &str = env!("CARGO_BIN_EXE_mec-plugin");

/// How long the binary may take to start listening.
const START_LIMIT: Duration = Duration::from_secs(15);
/// How long the reconciler may take to finish what a crash left (retries back off to 500 ms).
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The binary as a child process
// ---------------------------------------------------------------------------------------------

/// What a child wrote, line by line, collected by reader threads.
#[derive(Clone, Default)]
struct Logs {
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// Streams not yet at their end.
    open: Arc<AtomicUsize>,
}

impl Logs {
    fn pump(&self, stream: impl Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
        self.open.fetch_add(1, Ordering::SeqCst);
        let open = self.open.clone();
        thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            // Ends at end of stream: when the child is gone.
            while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                lock(&into).push(text);
                line.clear();
            }
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }

    fn stdout_lines(&self) -> Vec<String> {
        lock(&self.stdout).clone()
    }

    /// Everything written so far, standard output then standard error.
    fn text(&self) -> String {
        let err = lock(&self.stderr);
        format!(
            "{}\n--- stderr ---\n{}",
            self.stdout_lines().join("\n"),
            err.join("\n")
        )
    }

    /// Waits (bounded) until both streams reached their end.
    fn wait_closed(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.open.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Starts the binary on `config` and `state` listening on a free loopback port.
fn spawn(config: &Path, state: &Path) -> (Child, Logs) {
    let mut child = child::command(BIN, config)
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state)
        .spawn()
        .expect("the binary starts");
    let logs = Logs::default();
    logs.pump(child.stdout.take().unwrap(), logs.stdout.clone());
    logs.pump(child.stderr.take().unwrap(), logs.stderr.clone());
    (child, logs)
}

/// A running binary; killed (SIGKILL) when dropped.
struct Binary {
    child: Child,
    logs: Logs,
    addr: String,
    api: Api,
}

impl Binary {
    /// Starts the binary and waits until it listens (its address is read from its log).
    fn start(config: &Path, state: &Path) -> Binary {
        let (mut child, logs) = spawn(config, state);
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let addr = logs.stdout_lines().iter().find_map(|l| {
                let rest = l.split("listening on http://").nth(1)?;
                Some(rest.split(['/', ' ']).next()?.to_string())
            });
            if let Some(addr) = addr {
                return Binary {
                    child,
                    logs,
                    api: Api::new(&addr, Duration::from_secs(10)),
                    addr,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                logs.wait_closed(Duration::from_secs(2));
                panic!(
                    "the binary exited ({status}) instead of starting:\n{}",
                    logs.text()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the binary did not listen within {START_LIMIT:?}:\n{}",
                    logs.text()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// `kill -9`: no shutdown, no flush, requests in flight cut off.
    fn kill(mut self) -> Logs {
        self.kill_now();
        self.logs.clone()
    }

    fn kill_now(&mut self) {
        // Child::kill sends SIGKILL on Unix.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// Starts the binary expecting it to refuse to start: its exit status within `limit` and
/// everything it wrote.
fn failed_start(config: &Path, state: &Path, limit: Duration) -> (ExitStatus, String) {
    let (mut child, logs) = spawn(config, state);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the binary still runs after {limit:?}:\n{}", logs.text());
        }
        thread::sleep(Duration::from_millis(20));
    };
    logs.wait_closed(Duration::from_secs(2));
    (status, logs.text())
}

/// A configuration file with one LL-MEC region "2" at `mep_url` and quick retries.
fn config_file(mep_url: &str) -> PathBuf {
    let dir = temp_dir("durability-config");
    let path = dir.join("regions.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nread_timeout_ms = 2000\nretry_initial_ms = 100\nretry_max_ms = 500\n\n{}",
        llmec_region("2", mep_url, 1000)
    );
    std::fs::write(&path, text).unwrap();
    path
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// A northbound client with bounded calls.
#[derive(Clone)]
struct Api {
    agent: ureq::Agent,
    base: String,
}

impl Api {
    fn new(addr: &str, timeout: Duration) -> Api {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_connect(Some(Duration::from_secs(2)))
            .timeout_global(Some(timeout))
            .build()
            .new_agent();
        Api {
            agent,
            base: format!("http://{addr}/MEC/v1"),
        }
    }

    /// Status and JSON body (`Null` when empty), or why no complete answer came.
    fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, Value), String> {
        let url = format!("{}{}", self.base, path);
        let request = ureq::http::Request::builder().method(method).uri(&url);
        let result = support::send(&self.agent, request, body, "application/json");
        let mut response = result.map_err(|e| format!("{method} {url}: {e}"))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("{method} {url}: body: {e}"))?;
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, json))
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.try_call(method, path, body)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn get(&self, id: &str) -> (u16, Value) {
        self.call("GET", &format!("/service/requests/{id}"), None)
    }

    fn records(&self) -> Vec<Value> {
        let (status, json) = self.call("GET", "/service/requests", None);
        assert_eq!(status, 200, "{json}");
        json.as_array().expect("a list of requests").clone()
    }

    /// Creates a request; returns its id.
    fn create(&self, body: &str) -> String {
        let (status, json) = self.call("POST", "/service/requests", Some(body));
        assert_eq!(status, 201, "{json}");
        json["RequestId"].as_str().expect("RequestId").to_string()
    }
}

/// A DNS-only creation body for `domain` in region 2.
fn dns_body(domain: &str) -> String {
    format!(
        r#"{{"RegionId":"2","appDNSRule":[{{"dnsRuleId":"dns-1","domainName":"{domain}","ipAddressType":"IP_V4","ipAddress":"172.24.248.5","ttl":60}}]}}"#
    )
}

/// Removes a passed test's configuration and state directories (a failed test leaves them
/// for inspection).
fn clean_up(config: &Path, state: &Path) {
    if let Some(dir) = config.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    let _ = std::fs::remove_dir_all(state);
}

/// Where a journal's entries end and its preallocated zeros begin.
fn entries_end(journal: &[u8]) -> usize {
    journal
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(journal.len())
}

/// The newest `journal-*.jsonl` of a state directory.
fn newest_journal(state: &Path) -> PathBuf {
    std::fs::read_dir(state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("journal-") && name.ends_with(".jsonl")
        })
        .max()
        .expect("a journal file")
}

fn status_of(record: &Value) -> &str {
    record["status"].as_str().unwrap_or("?")
}

fn domain_of_record(record: &Value) -> String {
    record["appDNSRule"][0]["domainName"]
        .as_str()
        .unwrap_or("?")
        .to_string()
}

/// Whether a FAILED record says nothing of it may be left on the platform.
fn failed_with_nothing_left(record: &Value) -> bool {
    let detail = record["statusDetail"].as_str().unwrap_or("");
    detail.contains("has since been removed from the platform")
        || detail.contains("before any rule was applied")
        || detail.contains("every rule applied before it was removed again")
}

/// A small xorshift generator: the test needs no cryptographic randomness, only a seed it
/// can print.
struct Rng(u64);

impl Rng {
    fn seeded() -> (Rng, u64) {
        let seed = std::env::var("DURABILITY_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64;
                nanos ^ (u64::from(std::process::id()) << 32)
            });
        (Rng(seed | 1), seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---------------------------------------------------------------------------------------------
// 1. kill -9 under load
// ---------------------------------------------------------------------------------------------

/// What the clients were told, across all cycles.
#[derive(Default)]
struct Ledger {
    /// POST answered 201.
    created: BTreeSet<String>,
    /// DELETE answered 201 or 202.
    removed: BTreeSet<String>,
    /// DELETE sent but cut off: the removal may or may not have been recorded.
    delete_in_doubt: BTreeSet<String>,
    /// Answers that neither a healthy platform nor a kill explain.
    unexpected: Vec<String>,
    posts_cut_off: usize,
}

impl Ledger {
    fn live(&self) -> Vec<String> {
        self.created
            .iter()
            .filter(|id| !self.removed.contains(*id) && !self.delete_in_doubt.contains(*id))
            .cloned()
            .collect()
    }
}

/// `n` client threads on `binary` until `stop`, the live requests shared out among them, each
/// labelled `{tag}-t<its number>`.
fn start_clients(
    n: usize,
    binary: &Binary,
    ledger: &Arc<Mutex<Ledger>>,
    stop: &Arc<AtomicBool>,
    tag: &str,
    rng: &mut Rng,
) -> Vec<thread::JoinHandle<()>> {
    let mut live = ledger.lock().unwrap().live();
    (0..n)
        .map(|t| {
            let own: Vec<String> = live.drain(..live.len() / (n - t)).collect();
            let api = Api::new(&binary.addr, Duration::from_secs(5));
            let (stop, ledger) = (stop.clone(), ledger.clone());
            let thread_seed = rng.next();
            let label = format!("{tag}-t{t}");
            thread::spawn(move || client_loop(api, stop, ledger, own, label, thread_seed))
        })
        .collect()
}

/// One client thread of a cycle: POSTs unique DNS rules and DELETEs ids it owns, until `stop`.
fn client_loop(
    api: Api,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
    mut own: Vec<String>,
    label: String,
    seed: u64,
) {
    let mut rng = Rng(seed | 1);
    for n in 0..100_000 {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if !own.is_empty() && rng.below(3) == 0 {
            let id = own.swap_remove(rng.below(own.len() as u64) as usize);
            let result = api.try_call("DELETE", &format!("/service/requests/{id}"), None);
            let mut l = ledger.lock().unwrap();
            match result {
                Ok((201 | 202, _)) => {
                    l.removed.insert(id);
                }
                Ok((status, json)) => l
                    .unexpected
                    .push(format!("DELETE {id} answered {status}: {json}")),
                Err(_) => {
                    l.delete_in_doubt.insert(id);
                }
            }
        } else {
            let domain = format!("{label}-n{n}.durability.test");
            let result = api.try_call("POST", "/service/requests", Some(&dns_body(&domain)));
            let mut l = ledger.lock().unwrap();
            match result {
                Ok((201, json)) => match json["RequestId"].as_str() {
                    Some(id) => {
                        l.created.insert(id.to_string());
                        own.push(id.to_string());
                    }
                    None => l
                        .unexpected
                        .push(format!("POST {domain}: 201 without id: {json}")),
                },
                Ok((status, json)) => l
                    .unexpected
                    .push(format!("POST {domain} answered {status}: {json}")),
                Err(_) => l.posts_cut_off += 1,
            }
        }
    }
}

/// After a restart: what every acknowledgement promised holds. Resolves the removals that
/// were in doubt. Returns the problems found.
fn check_promises(api: &Api, ledger: &mut Ledger, when: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let by_id = |records: Vec<Value>| -> BTreeMap<String, Value> {
        records
            .into_iter()
            .map(|r| (r["RequestId"].as_str().unwrap_or("?").to_string(), r))
            .collect()
    };
    let records = by_id(api.records());
    for id in ledger.live() {
        match records.get(&id) {
            Some(r) if status_of(r) == "CREATED" => {}
            Some(r) => problems.push(format!(
                "{when}: acknowledged-created {id} is {} ({}), not CREATED",
                status_of(r),
                r["statusDetail"]
            )),
            None => {
                let (status, json) = api.get(&id);
                problems.push(format!(
                    "{when}: acknowledged-created {id} is lost (GET {status}: {json})"
                ));
            }
        }
    }
    // Removals in doubt: CREATED (never recorded), DELETING (finished below) or gone.
    for id in std::mem::take(&mut ledger.delete_in_doubt) {
        match records.get(&id).map(status_of) {
            None | Some("DELETING") => {
                ledger.removed.insert(id);
            }
            Some("CREATED") => {}
            Some(other) => {
                problems.push(format!(
                    "{when}: {id}, whose DELETE was cut off, is {other}"
                ));
                ledger.removed.insert(id);
            }
        }
    }
    let mut deleting = Vec::new();
    for id in &ledger.removed {
        match records.get(id).map(status_of) {
            None => {}
            Some("DELETING") => deleting.push(id.clone()),
            Some(other) => problems.push(format!("{when}: acknowledged-removed {id} is {other}")),
        }
    }
    // A removal whose outcome was unknown at the kill waits out its settle window (2 s here)
    // before it is sent again: the same bound as the other settling below, so that a loaded
    // machine does not fail the run.
    let gone = eventually(SETTLE_LIMIT, || {
        let now = by_id(api.records());
        deleting.iter().all(|id| !now.contains_key(id))
    });
    if !gone {
        let now = by_id(api.records());
        for id in deleting.iter().filter(|id| now.contains_key(*id)) {
            problems.push(format!(
                "{when}: acknowledged-removed {id} is still there after {SETTLE_LIMIT:?}: {}",
                now[id]
            ));
        }
    }
    for id in &deleting {
        let (status, json) = api.get(id);
        if status != 404 {
            problems.push(format!("{when}: removed {id}: GET {status}: {json}"));
        }
    }
    problems
}

#[test]
fn acknowledged_changes_survive_kill_9_at_random_moments() {
    let mep = FakeLlMec::start();
    let config = config_file(&mep.url());
    let state = temp_dir("durability-kill9");
    let (mut rng, seed) = Rng::seeded();
    eprintln!("seed {seed} (DURABILITY_SEED={seed} repeats this run)");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut problems = Vec::new();
    let mut cycles = Vec::new();

    for cycle in 0..5 {
        let binary = Binary::start(&config, &state);
        if cycle > 0 {
            let mut l = ledger.lock().unwrap();
            problems.extend(check_promises(
                &binary.api,
                &mut l,
                &format!("after kill {cycle}"),
            ));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let threads = start_clients(8, &binary, &ledger, &stop, &format!("c{cycle}"), &mut rng);
        let run = Duration::from_millis(150 + rng.below(451));
        thread::sleep(run);
        // Threads are in the middle of requests: the kill cuts them off.
        stop.store(true, Ordering::SeqCst);
        binary.kill();
        for t in threads {
            t.join().expect("client thread");
        }
        let l = ledger.lock().unwrap();
        cycles.push(format!(
            "cycle {cycle}: {} ms, {} created, {} removed, {} in doubt, {} POSTs cut off",
            run.as_millis(),
            l.created.len(),
            l.removed.len(),
            l.delete_in_doubt.len(),
            l.posts_cut_off
        ));
    }

    let binary = Binary::start(&config, &state);
    {
        let mut l = ledger.lock().unwrap();
        problems.extend(check_promises(&binary.api, &mut l, "after the last kill"));
    }
    let l = ledger.lock().unwrap();
    eprintln!("{}", cycles.join("\n"));
    assert!(
        l.created.len() >= 20,
        "the load did too little to mean anything: {cycles:?}"
    );

    // The reconciler rolls back what the kills caught half-done.
    let mut records = Vec::new();
    let settled = eventually(SETTLE_LIMIT, || {
        records = binary.api.records();
        records.iter().all(|r| match status_of(r) {
            "CREATED" => true,
            "FAILED" => failed_with_nothing_left(r),
            _ => false,
        })
    });
    let unsettled: Vec<&Value> = records
        .iter()
        .filter(|r| {
            status_of(r) != "CREATED" && !(status_of(r) == "FAILED" && failed_with_nothing_left(r))
        })
        .collect();
    assert!(
        settled,
        "not settled after {SETTLE_LIMIT:?}: {unsettled:#?}\n{}",
        binary.logs.text()
    );
    eprintln!(
        "settled: {} CREATED, {} FAILED and rolled back",
        records.iter().filter(|r| status_of(r) == "CREATED").count(),
        records.iter().filter(|r| status_of(r) == "FAILED").count()
    );
    let recorded: BTreeSet<String> = records
        .iter()
        .filter(|r| status_of(r) == "CREATED")
        .map(domain_of_record)
        .collect();
    let installed = mep.installed();
    assert!(
        installed.iter().all(|(path, _)| path == DNS_PATH),
        "{installed:?}"
    );
    let on_platform: BTreeSet<String> = installed
        .iter()
        .map(|(_, body)| {
            serde_json::from_str::<Value>(body).unwrap()["url"]
                .as_str()
                .unwrap_or("?")
                .to_string()
        })
        .collect();
    let missing: Vec<_> = recorded.difference(&on_platform).collect();
    let stray: Vec<_> = on_platform.difference(&recorded).collect();
    assert!(
        missing.is_empty() && stray.is_empty(),
        "platform and records disagree: CREATED but not installed {missing:?}; installed but not CREATED {stray:?}"
    );
    assert_eq!(installed.len(), on_platform.len(), "one rule per domain");
    assert!(
        problems.is_empty() && l.unexpected.is_empty(),
        "seed {seed}\nbroken promises: {problems:#?}\nunexpected answers: {:#?}",
        l.unexpected
    );
    drop(binary);
    clean_up(&config, &state);
}

// ---------------------------------------------------------------------------------------------
// 2-7. single crashes
// ---------------------------------------------------------------------------------------------

#[test]
fn a_request_caught_pending_by_a_crash_is_rolled_back_at_start_up() {
    let mep = FakeLlMec::start();
    let config = config_file(&mep.url());
    let state = temp_dir("durability-pending");
    let binary = Binary::start(&config, &state);
    let delay = Duration::from_millis(800);
    mep.delay(delay);
    let body = dns_body("pending.durability.test");
    let poster = {
        let api = binary.api.clone();
        let body = body.clone();
        thread::spawn(move || api.try_call("POST", "/service/requests", Some(&body)))
    };
    assert!(
        eventually(Duration::from_secs(5), || mep
            .calls()
            .iter()
            .any(|c| c.method == "POST")),
        "the POST reached the platform"
    );
    let seen = Instant::now();
    binary.kill();
    let answer = poster.join().unwrap();
    assert!(answer.is_err(), "cut off by the kill: {answer:?}");
    // The slow platform finishes the call although its client is gone.
    thread::sleep((delay + Duration::from_millis(300)).saturating_sub(seen.elapsed()));
    assert!(
        eventually(Duration::from_secs(2), || mep.installed().len() == 1),
        "the delayed POST installed its rule: {:?}",
        mep.installed()
    );
    let posted = mep
        .calls()
        .into_iter()
        .find(|c| c.method == "POST")
        .unwrap();
    mep.heal();

    let binary = Binary::start(&config, &state);
    let records = binary.api.records();
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    assert_eq!(status_of(record), "FAILED", "{record}");
    let detail = record["statusDetail"].as_str().unwrap_or("");
    assert!(detail.contains("restart"), "{record}");
    assert!(
        eventually(Duration::from_secs(5), || mep.installed().is_empty()),
        "the possibly applied rule is removed: {:?}\n{}",
        mep.installed(),
        binary.logs.text()
    );
    let removal = mep
        .calls()
        .into_iter()
        .find(|c| c.method == "DELETE")
        .expect("a DELETE call");
    assert_eq!(
        (removal.path.as_str(), removal.body.as_str()),
        (posted.path.as_str(), posted.body.as_str()),
        "removal replays the identical body"
    );
    let id = record["RequestId"].as_str().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || {
            let (_, r) = binary.api.get(id);
            failed_with_nothing_left(&r)
        }),
        "the record then says its rules were removed: {}",
        binary.api.get(id).1
    );
    drop(binary);
    clean_up(&config, &state);
}

#[test]
fn a_torn_last_journal_record_is_ignored_and_the_plugin_starts() {
    let mep = FakeLlMec::start();
    let config = config_file(&mep.url());
    let state = temp_dir("durability-torn");
    let binary = Binary::start(&config, &state);
    let ids = [
        binary.api.create(&dns_body("torn-1.durability.test")),
        binary.api.create(&dns_body("torn-2.durability.test")),
    ];
    binary.kill();
    let journal = newest_journal(&state);
    let before = std::fs::read(&journal).unwrap();
    let end = entries_end(&before);
    assert!(end < before.len(), "the journal is preallocated with zeros");
    // A crash in the middle of writing the next entry leaves its beginning over the zeros.
    let torn = br#"deadbeef 1 {"put":{"id":"x""#;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap();
    f.write_all_at(torn, end as u64).unwrap();
    drop(f);

    let binary = Binary::start(&config, &state);
    for id in &ids {
        let (status, json) = binary.api.get(id);
        assert_eq!((status, status_of(&json)), (200, "CREATED"), "{json}");
    }
    assert_eq!(binary.api.records().len(), 2);
    let log = binary.logs.text();
    let name = journal.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        log.lines().any(|l| l.contains("torn")
            && l.contains(&name)
            && l.contains(&format!("byte offset {end}"))),
        "the log names the torn record: {log}"
    );
    let after = std::fs::read(&journal).unwrap();
    assert!(
        after.starts_with(&before[..end]) && !after.windows(torn.len()).any(|w| w == torn),
        "the torn bytes are cut off and nothing before them is changed"
    );
    // What is appended after the cut is readable, and the cut is not reported again.
    let third = binary.api.create(&dns_body("torn-3.durability.test"));
    binary.kill();
    let binary = Binary::start(&config, &state);
    for id in ids.iter().chain([&third]) {
        let (status, json) = binary.api.get(id);
        assert_eq!((status, status_of(&json)), (200, "CREATED"), "{json}");
    }
    let log = binary.logs.text();
    assert!(
        !log.contains("torn by a crash"),
        "nothing torn the second time: {log}"
    );
    drop(binary);
    clean_up(&config, &state);
}

#[test]
fn a_corrupted_journal_middle_refuses_to_start_and_names_file_and_offset() {
    let mep = FakeLlMec::start();
    let config = config_file(&mep.url());
    let state = temp_dir("durability-corrupt");
    let binary = Binary::start(&config, &state);
    for n in 0..3 {
        binary
            .api
            .create(&dns_body(&format!("corrupt-{n}.durability.test")));
    }
    binary.kill();
    let journal = newest_journal(&state);
    let mut bytes = std::fs::read(&journal).unwrap();
    let second = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    let second_end = second + bytes[second..].iter().position(|&b| b == b'\n').unwrap();
    assert!(
        bytes[second_end + 1..entries_end(&bytes)].contains(&b'\n'),
        "the second line is not the last"
    );
    let at = second + 20;
    assert!(at < second_end);
    bytes[at] ^= 0x01;
    std::fs::write(&journal, &bytes).unwrap();

    let (status, output) = failed_start(&config, &state, Duration::from_secs(5));
    assert!(!status.success(), "{status}: {output}");
    assert!(
        output.contains(&journal.display().to_string()),
        "names the file {}: {output}",
        journal.display()
    );
    assert!(
        output.contains(&format!("byte offset {second}")),
        "names offset {second}: {output}"
    );
    assert!(
        output.contains("valid entries follow the damage")
            && output.contains("acknowledged ones included"),
        "says how many valid entries follow and what cutting the file would drop: {output}"
    );
    assert_eq!(
        std::fs::read(&journal).unwrap(),
        bytes,
        "the damaged file is left as it is"
    );
    clean_up(&config, &state);
}

/// Found by an audit: a state directory whose snapshot was lost (a partial restore, a backup
/// taken during a compaction) started on its last journal alone, silently dropping every
/// record the snapshot held. The start now stops (exit 1) naming the missing file and the
/// directory, and changes nothing; with the file back, everything is there.
#[test]
fn a_state_dir_missing_a_file_stops_the_start() {
    let mep = FakeLlMec::start();
    let config = config_file(&mep.url());
    let state = temp_dir("durability-missing");
    let first = Binary::start(&config, &state);
    let id = first.api.create(&dns_body("missing.durability.test"));
    drop(first);
    // As if journal 1 had been compacted into a snapshot 2 that was then lost.
    let journal = state.join(format!("journal-{:020}.jsonl", 1));
    let later = state.join(format!("journal-{:020}.jsonl", 2));
    std::fs::rename(&journal, &later).unwrap();
    let (status, output) = failed_start(&config, &state, Duration::from_secs(5));
    assert_eq!(status.code(), Some(1), "{output}");
    let snapshot = format!("snapshot-{:020}.jsonl", 2);
    assert!(
        output.contains(&state.display().to_string())
            && output.contains(&format!("lacks {snapshot}"))
            && output.contains("silently drop"),
        "names the directory and the missing file: {output}"
    );
    assert!(later.exists() && !journal.exists(), "nothing changed");
    std::fs::rename(&later, &journal).unwrap();
    let again = Binary::start(&config, &state);
    assert_eq!(again.api.get(&id).0, 200, "all there with the file back");
    drop(again);
    clean_up(&config, &state);
}

#[test]
fn two_processes_cannot_share_a_state_dir() {
    let mep = FakeLlMec::start();
    let config = config_file(&mep.url());
    let state = temp_dir("durability-lock");
    let first = Binary::start(&config, &state);
    let (status, output) = failed_start(&config, &state, Duration::from_secs(5));
    assert!(!status.success(), "{status}: {output}");
    assert!(
        output.contains(&state.display().to_string()) && output.contains("in use"),
        "names the directory and says it is in use: {output}"
    );
    assert!(
        output.contains(&format!("pid {}", first.child.id())),
        "names the holder: {output}"
    );
    // Found by an audit: with its LOCK file deleted (a "stale" lock cleaned by hand), a second
    // process took a new LOCK and both wrote the journal, losing acknowledged creations.
    let id = first.api.create(&dns_body("before.lock.durability.test"));
    std::fs::remove_file(state.join("LOCK")).unwrap();
    let (status, output) = failed_start(&config, &state, Duration::from_secs(5));
    assert!(!status.success(), "{status}: {output}");
    assert!(
        output.contains("in use") && output.contains("its LOCK file was deleted"),
        "still in use, and says the LOCK file is gone: {output}"
    );
    assert_eq!(first.api.get(&id).0, 200, "the first one still has it");
    let (status, json) = first.api.call("GET", "/service/regions", None);
    assert_eq!(status, 200, "{json}");
    let id = first.api.create(&dns_body("lock.durability.test"));
    assert_eq!(first.api.get(&id).0, 200, "the first one keeps serving");
    drop(first);
    clean_up(&config, &state);
}

/// GET of a path outside `/MEC/v1` (health, metrics) of the binary at `addr`.
fn get_root(addr: &str, path: &str) -> (u16, String) {
    let agent = support::agent(Duration::from_secs(10));
    let mut r = agent
        .get(format!("http://{addr}{path}"))
        .call()
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (r.status().as_u16(), text)
}

/// Review finding M5: after `rm -rf` of the state directory, creations answered 201, health
/// 200 and `mec_plugin_state_writable` 1, and a restart found none of them. The journal's
/// file is gone: nothing is acknowledged from then on, and health says why.
#[test]
fn removing_the_state_directory_under_the_service_stops_changes_and_health_says_so() {
    let mep = FakeLlMec::start();
    let config = config_file(&mep.url());
    let state = temp_dir("durability-removed");
    let binary = Binary::start(&config, &state);
    let before = binary.api.create(&dns_body("before.removed.test"));
    assert_eq!(get_root(&binary.addr, "/healthz").0, 200);
    std::fs::remove_dir_all(&state).unwrap();
    let sent = mep.calls().len();
    for n in 0..3 {
        let (status, json) = binary.api.call(
            "POST",
            "/service/requests",
            Some(&dns_body(&format!("after{n}.removed.test"))),
        );
        assert_eq!(status, 500, "{json}");
        assert_eq!(
            json["type"], "urn:mec-plugin:problem:state-not-written",
            "{json}"
        );
        let detail = json["detail"].as_str().unwrap();
        assert!(detail.contains("was deleted"), "{detail}");
    }
    assert_eq!(
        mep.calls().len(),
        sent,
        "nothing sent for a change not recorded"
    );
    let (status, json) = binary
        .api
        .call("DELETE", &format!("/service/requests/{before}"), None);
    assert_eq!(status, 500, "{json}");
    let (status, health) = get_root(&binary.addr, "/healthz");
    assert_eq!(status, 503, "{health}");
    let journal = state.join(format!("journal-{:020}.jsonl", 1));
    assert!(
        health.contains("state-unavailable")
            && health.contains(&format!(
                "the journal file {} was deleted",
                journal.display()
            )),
        "{health}"
    );
    let (_, metrics) = get_root(&binary.addr, "/metrics");
    assert!(
        metrics.lines().any(|l| l == "mec_plugin_state_writable 0"),
        "{metrics}"
    );
    assert!(
        binary.logs.text().contains("was deleted"),
        "logged: {}",
        binary.logs.text()
    );
    binary.kill();
    // Nothing acknowledged after the deletion is missing: nothing was.
    let binary = Binary::start(&config, &state);
    assert!(binary.api.records().is_empty());
    drop(binary);
    clean_up(&config, &state);
}

#[test]
fn a_removal_refused_before_a_crash_is_finished_after_restart() {
    let mep = FakeLlMec::start();
    let config = config_file(&mep.url());
    let state = temp_dir("durability-deleting");
    let binary = Binary::start(&config, &state);
    let id = binary.api.create(&dns_body("deleting.durability.test"));
    mep.fail_all(503);
    let (status, json) = binary
        .api
        .call("DELETE", &format!("/service/requests/{id}"), None);
    assert_eq!((status, status_of(&json)), (202, "DELETING"), "{json}");
    binary.kill();
    mep.heal();
    assert_eq!(mep.installed().len(), 1);

    let binary = Binary::start(&config, &state);
    assert!(
        eventually(Duration::from_secs(5), || binary.api.get(&id).0 == 404),
        "finished after the restart: {}\n{}",
        binary.api.get(&id).1,
        binary.logs.text()
    );
    assert!(mep.installed().is_empty(), "{:?}", mep.installed());
    drop(binary);
    clean_up(&config, &state);
}

#[test]
fn records_survive_a_clean_restart_with_their_fields_intact() {
    let mep = FakeLlMec::start();
    let config = config_file(&mep.url());
    let state = temp_dir("durability-fields");
    let binary = Binary::start(&config, &state);
    // A free-form object pretty-printed over several lines (as swagger-ui and indented files
    // send it) is kept compact: a record is one journal line.
    let pretty = example("traffic-and-dns.json").replacen(
        r#""security": {}"#,
        "\"security\": {\n  \"oauth2Info\": {\n    \"grantTypes\": [\"OAUTH2_CLIENT_CREDENTIALS\"]\n  }\n}",
        1,
    );
    assert!(pretty.contains("oauth2Info"));
    let bodies = [
        ("dns-only.json", example("dns-only.json")),
        ("traffic-and-dns.json", example("traffic-and-dns.json")),
        (
            "traffic-and-dns-camel.json",
            example("traffic-and-dns-camel.json"),
        ),
        ("a pretty-printed security object", pretty),
    ];
    let before: Vec<(String, Value)> = bodies
        .iter()
        .map(|(name, body)| {
            let id = binary.api.create(body);
            let (status, json) = binary.api.get(&id);
            assert_eq!(
                (status, status_of(&json)),
                (200, "CREATED"),
                "{name}: {json}"
            );
            (id, json)
        })
        .collect();
    let list_before = binary.api.records();
    binary.kill();

    let binary = Binary::start(&config, &state);
    for (id, json) in &before {
        let (status, after) = binary.api.get(id);
        assert_eq!(status, 200, "{after}");
        assert_eq!(&after, json, "{id} changed across the restart");
    }
    assert_eq!(binary.api.records(), list_before);
    drop(binary);
    clean_up(&config, &state);
}

// ---------------------------------------------------------------------------------------------
// 8. power cuts: kill -9, then the unacknowledged tail damaged as a lost page-cache write
// ---------------------------------------------------------------------------------------------

/// Where the entry that acknowledged the last change of `ledger` ends in `journal` (0 when
/// none is there): a creation answered 201 by its `created` update, a removal answered 201 or
/// 202 by its `deleting` update or its `remove`. Every entry an acknowledged change needed
/// comes before it, so a power cut may damage only what follows.
fn acknowledged_end(journal: &[u8], ledger: &Ledger) -> usize {
    let mut end = 0;
    let mut at = 0;
    for line in journal[..entries_end(journal)].split_inclusive(|&b| b == b'\n') {
        at += line.len();
        let Some(json) = std::str::from_utf8(line)
            .ok()
            .and_then(|l| l.splitn(3, ' ').nth(2))
            .and_then(|j| serde_json::from_str::<Value>(j).ok())
        else {
            continue;
        };
        let acknowledges = if let Some(u) = json.get("update") {
            let id = u["id"].as_str().unwrap_or("");
            (u["status"] == "created" && ledger.created.contains(id))
                || (u["status"] == "deleting" && ledger.removed.contains(id))
        } else if let Some(r) = json.get("remove") {
            ledger.removed.contains(r["id"].as_str().unwrap_or(""))
        } else {
            false
        };
        if acknowledges {
            end = at;
        }
    }
    end
}

/// A number in `lo..=hi`.
fn pick(rng: &mut Rng, lo: usize, hi: usize) -> usize {
    lo + rng.below((hi - lo + 1) as u64) as usize
}

/// Damages `journal` after byte `from` as a power cut could: the pages written after the last
/// ones made durable are lost (zeros, or the file cut short), half written (garbage) or
/// written without an earlier one (the start of an entry among the zeros). The damage runs to
/// the end of the entries: a whole entry after damage is real damage, which refuses the start
/// (see the journal's doc); says what it did.
fn damage_tail(journal: &Path, from: usize, rng: &mut Rng) -> String {
    let mut bytes = std::fs::read(journal).unwrap();
    let end = entries_end(&bytes);
    let at = pick(rng, from, end);
    let what = match rng.below(4) {
        0 => {
            bytes.truncate(at);
            format!("cut at {at} (entries ended at {end})")
        }
        1 => {
            bytes[at..end].fill(0);
            format!("zeroed {at}..{end}")
        }
        2 => {
            let to = (end + pick(rng, 1, 4096)).min(bytes.len()).max(at);
            for b in &mut bytes[at..to] {
                *b = (rng.next() & 0xff) as u8;
            }
            format!("garbled {at}..{to}")
        }
        _ => {
            bytes[at..end].fill(0);
            let sample = br#"c0ffee00 1 {"put":{"id":"00000000-torn","region":"2","request":{"#;
            let n = pick(rng, 1, sample.len());
            let start = at + pick(rng, 0, 8192);
            if bytes.len() < start + n {
                bytes.resize(start + n, 0);
            }
            bytes[start..start + n].copy_from_slice(&sample[..n]);
            format!("lost {at}..{end}, then {n} bytes of an entry at {start}")
        }
    };
    std::fs::write(journal, &bytes).unwrap();
    what
}

#[test]
fn power_cuts_that_damage_only_the_unacknowledged_tail_never_refuse_the_start() {
    let mep = FakeLlMec::start();
    let config = config_file(&mep.url());
    let state = temp_dir("durability-power-cut");
    let (mut rng, seed) = Rng::seeded();
    eprintln!("seed {seed} (DURABILITY_SEED={seed} repeats this run)");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut problems = Vec::new();
    let mut damages = Vec::new();
    let mut torn = 0;
    let started = Instant::now();

    for cycle in 0..50 {
        // Never refused: Binary::start panics with the log if the binary exits.
        let binary = Binary::start(&config, &state);
        if binary.logs.text().contains("torn by a crash") {
            torn += 1;
        }
        if cycle > 0 {
            let mut l = ledger.lock().unwrap();
            problems.extend(check_promises(
                &binary.api,
                &mut l,
                &format!("after power cut {cycle} ({})", damages[cycle - 1]),
            ));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let threads = start_clients(3, &binary, &ledger, &stop, &format!("p{cycle}"), &mut rng);
        thread::sleep(Duration::from_millis(40 + rng.below(160)));
        stop.store(true, Ordering::SeqCst);
        binary.kill();
        for t in threads {
            t.join().expect("client thread");
        }
        let journal = newest_journal(&state);
        let from = acknowledged_end(&std::fs::read(&journal).unwrap(), &ledger.lock().unwrap());
        damages.push(damage_tail(&journal, from, &mut rng));
    }

    let binary = Binary::start(&config, &state);
    if binary.logs.text().contains("torn by a crash") {
        torn += 1;
    }
    let mut l = ledger.lock().unwrap();
    problems.extend(check_promises(
        &binary.api,
        &mut l,
        "after the last power cut",
    ));
    eprintln!(
        "50 power cuts in {} ms: {} created, {} removed, {torn} torn tails cut off",
        started.elapsed().as_millis(),
        l.created.len(),
        l.removed.len()
    );
    assert!(
        l.created.len() >= 50,
        "the load did too little to mean anything"
    );
    assert!(
        torn >= 10,
        "the damage was seldom seen as a torn tail: {damages:?}"
    );
    assert!(
        problems.is_empty() && l.unexpected.is_empty(),
        "seed {seed}\nbroken promises: {problems:#?}\nunexpected answers: {:#?}\ndamages: {damages:#?}",
        l.unexpected
    );
    drop(binary);
    clean_up(&config, &state);
}
