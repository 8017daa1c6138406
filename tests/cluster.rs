//! Several instances of the real binary on one 3-member etcd (issue 15), all on loopback: the
//! leader killed (SIGKILL) five times under load, etcd members killed under the instances, a
//! leader paused (SIGSTOP) past its lease and resumed. The instances share fake LL-MEC
//! platforms in the test process, each instance through a relay port of its own, so that every
//! platform call is known by who made it. Skipped, saying so, where etcd is not installed.
//!
//! The tests run one at a time (`SERIAL`): each runs three etcd members and two or three
//! plugins, with leases of [`TTL_S`] seconds that a machine busy with another test's
//! processes could make lapse.

#[path = "support/child.rs"]
mod child;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use child::Child;
use mec_plugin::etcd::{Client, Range};
use mec_plugin::util::lock;
use serde_json::{Value, json};
use support::etcd::{Cluster, MISSING};
use support::eventually;
use support::fake_llmec::{DNS_PATH, FakeLlMec};

/// `[store] lease_ttl_s` of every instance.
const TTL_S: u64 = 2;
/// The contract's bound on a failover: the lease, plus 2 s.
const FAILOVER_BOUND: Duration = Duration::from_secs(TTL_S + 2);
/// The regions, each on a fake LL-MEC platform of its own.
const REGIONS: [&str; 2] = ["1", "2"];
/// `[store] prefix` of every instance.
const PREFIX: &str = "/mec-cluster-test";
/// How long a deployment may take to settle after a failover: the new leader's recovery, the
/// settle windows (2 × `timeout_ms`) of the applies a killed leader left unknown, the
/// reconciler's retries.
const SETTLE_WITHIN: Duration = Duration::from_secs(30);
/// Bound of each call of the tests (a forwarded call waits for the leader).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// What an instance answered.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    retry_after: Option<String>,
    json: Value,
}

impl Answer {
    /// Whether this is the contract's "no leader / etcd unreachable" answer: 503 problem+json
    /// with `Retry-After`.
    fn is_unavailable(&self) -> bool {
        self.status == 503
            && self.content_type == "application/problem+json"
            && self.retry_after.is_some()
            && self.json["status"] == 503
    }
}

/// How the error of [`call`] begins when the instance refused the connection: the request was
/// not sent.
const REFUSED: &str = "connection refused";

/// One call on a new connection (`Connection: close`: a killed or restarted instance leaves no
/// pooled connection behind); `Err` when no answer came ([`REFUSED`]: nothing was sent).
fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Answer, String> {
    let agent = support::agent(timeout);
    let request = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("Connection", "close");
    let result = support::send(&agent, request, body, "application/json");
    let mut response = result.map_err(|e| match e {
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("{REFUSED}: {method} {path} on {addr}")
        }
        e => format!("{method} {path} on {addr}: {e}"),
    })?;
    let header = |name: &str| support::header_of(&response, name);
    let (content_type, retry_after) = (
        header("content-type").unwrap_or_default(),
        header("retry-after"),
    );
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("{method} {path} on {addr}: body: {e}"))?;
    let json = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Ok(Answer {
        status: response.status().as_u16(),
        content_type,
        retry_after,
        json,
    })
}

const REQUESTS: &str = "/MEC/v1/service/requests";

/// A creation named `name` in `region`: `rules` DNS rules (one LL-MEC call each), whose domain
/// names (returned too) are `<name>-<k>.example.org`, so that a rule on a platform tells whose
/// it is.
fn creation(region: &str, name: &str, rules: usize) -> (String, Vec<String>) {
    let domains: Vec<String> = (0..rules)
        .map(|k| format!("{name}-{k}.example.org"))
        .collect();
    let rules: Vec<Value> = domains
        .iter()
        .enumerate()
        .map(|(k, d)| {
            json!({"dnsRuleId": format!("dns-{k}"), "domainName": d,
                "ipAddressType": "IP_V4", "ipAddress": "172.24.248.5"})
        })
        .collect();
    let body = json!({"RegionId": region, "appDNSRule": rules});
    (body.to_string(), domains)
}

// ---------------------------------------------------------------------------------------------
// the deployment

/// One plugin instance: its port, configuration file, relay port on each platform, process.
struct Instance {
    port: u16,
    config: PathBuf,
    /// Its relay port on each platform (by region, as [`REGIONS`]).
    fronts: Vec<u16>,
    child: Option<Child>,
    /// The log lines of its last process (killed), for a failure's message.
    past_logs: Vec<String>,
}

impl Instance {
    fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }
}

/// A 3-member etcd, fake LL-MEC platforms and plugin instances on them.
struct Deployment {
    etcd: Cluster,
    /// One platform per region of [`REGIONS`].
    platforms: Vec<FakeLlMec>,
    instances: Vec<Instance>,
    /// The test's own etcd client, to read the records as stored.
    client: Client,
    dir: PathBuf,
}

/// `n` ports of 127.0.0.1 free a moment ago, all different.
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// The configuration of an instance listening on `port`, its regions' platforms reached
/// through `fronts`; `all` holds every instance's fronts, listed as the other addresses of
/// the same platforms (`aliases`), since records keep the URL of the leader that applied them.
fn config_text(
    port: u16,
    fronts: &[u16],
    all: &[Vec<u16>],
    endpoints: &[String],
    state: &std::path::Path,
) -> String {
    let endpoints: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = '{}'\nread_timeout_ms = 2000\n\
         retry_initial_ms = 100\nretry_max_ms = 400\n\n\
         [store]\nkind = \"etcd\"\nendpoints = [{}]\nprefix = \"{PREFIX}\"\nlease_ttl_s = {TTL_S}\n\
         advertise_url = \"http://127.0.0.1:{port}\"\n\n",
        state.display(),
        endpoints.join(", ")
    );
    for (r, (region, front)) in REGIONS.iter().zip(fronts).enumerate() {
        text += &support::llmec_region(region, &format!("http://127.0.0.1:{front}"), 1000);
        let aliases: Vec<String> = all
            .iter()
            .map(|instance| format!("\"http://127.0.0.1:{}\"", instance[r]))
            .collect();
        text += &format!("aliases = [{}]\n", aliases.join(", "));
    }
    text
}

impl Deployment {
    /// A 3-member etcd and `n` instances, started one after the other (the first leads), or
    /// `None` (after saying the test is skipped) without etcd.
    fn start(test: &str, n: usize) -> Option<Deployment> {
        let Some(etcd) = Cluster::start(test, 3) else {
            support::skip(test, MISSING);
            return None;
        };
        let platforms: Vec<FakeLlMec> = REGIONS.iter().map(|_| FakeLlMec::start()).collect();
        let dir = support::temp_dir("cluster");
        let all: Vec<Vec<u16>> = (0..n)
            .map(|_| platforms.iter().map(FakeLlMec::add_front).collect())
            .collect();
        let instances = free_ports(n)
            .into_iter()
            .zip(all.clone())
            .enumerate()
            .map(|(i, (port, fronts))| {
                let config = dir.join(format!("instance-{i}.toml"));
                let state = dir.join(format!("state-{i}"));
                let text = config_text(port, &fronts, &all, &etcd.endpoints(), &state);
                std::fs::write(&config, text).unwrap();
                Instance {
                    port,
                    config,
                    fronts,
                    child: None,
                    past_logs: Vec::new(),
                }
            })
            .collect();
        let client = etcd.client(Duration::from_secs(1));
        let mut deployment = Deployment {
            etcd,
            platforms,
            instances,
            client,
            dir,
        };
        for i in 0..n {
            deployment.start_instance(i);
        }
        Some(deployment)
    }

    /// Starts instance `i` (again) and waits until it serves `/healthz` with 200.
    fn start_instance(&mut self, i: usize) {
        let instance = &mut self.instances[i];
        assert!(instance.child.is_none(), "instance {i} is running");
        let scratch = child::temp_dir(&format!("cluster-instance-{i}"));
        instance.child = Some(Child::start_config(
            &instance.config,
            instance.port,
            scratch,
        ));
    }

    /// Kills instance `i` at once (SIGKILL), keeping its last log lines.
    fn kill(&mut self, i: usize) {
        let instance = &mut self.instances[i];
        if let Some(child) = instance.child.take() {
            instance.past_logs = child.logs();
            drop(child);
        }
    }

    fn child(&self, i: usize) -> &Child {
        self.instances[i]
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("instance {i} is not running"))
    }

    fn live(&self) -> Vec<usize> {
        (0..self.instances.len())
            .filter(|&i| self.instances[i].child.is_some())
            .collect()
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.instances[i].addr()
    }

    /// `/healthz` of instance `i`: its status and body.
    fn health(&self, i: usize) -> Result<Answer, String> {
        call(
            self.addr(i),
            "GET",
            "/healthz",
            None,
            Duration::from_secs(2),
        )
    }

    /// The role instance `i` reports in `/healthz`, if it answers.
    fn role(&self, i: usize) -> Option<String> {
        let answer = self.health(i).ok()?;
        answer.json["role"].as_str().map(str::to_string)
    }

    /// Waits until exactly one of `among` reports "leader" and the others "follower"; returns
    /// the leader.
    fn wait_leader_among(&self, among: &[usize], within: Duration) -> usize {
        let mut last = Vec::new();
        let mut leader = None;
        let settled = eventually(within, || {
            last = among.iter().map(|&i| (i, self.role(i))).collect();
            let leaders: Vec<usize> = last
                .iter()
                .filter(|(_, r)| r.as_deref() == Some("leader"))
                .map(|(i, _)| *i)
                .collect();
            let followers = last
                .iter()
                .filter(|(_, r)| r.as_deref() == Some("follower"))
                .count();
            leader = leaders.first().copied();
            leaders.len() == 1 && followers == among.len() - 1
        });
        assert!(
            settled,
            "no single leader within {within:?}: roles {last:?}{}",
            self.logs()
        );
        leader.unwrap()
    }

    /// Waits until one live instance leads and the others follow; returns the leader.
    fn wait_leader(&self) -> usize {
        self.wait_leader_among(&self.live(), Duration::from_secs(20))
    }

    /// The live instances whose `/metrics` say `mec_plugin_leader 1`.
    fn leaders_by_metric(&self) -> Vec<usize> {
        let leads = |i: usize| {
            let text = self.child(i).metrics(false);
            let line = text.lines().find(|l| l.starts_with("mec_plugin_leader "));
            let value = line.and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
            assert!(
                value.is_some(),
                "instance {i}: no mec_plugin_leader in {text}"
            );
            value == Some(1.0)
        };
        self.live().into_iter().filter(|&i| leads(i)).collect()
    }

    /// Every request instance `i` lists, in its listing's order.
    fn listing(&self, i: usize) -> Result<Vec<Value>, String> {
        let answer = call(self.addr(i), "GET", REQUESTS, None, CALL_TIMEOUT)?;
        match answer.json {
            Value::Array(items) if answer.status == 200 => Ok(items),
            other => Err(format!(
                "listing of instance {i}: {} {other}",
                answer.status
            )),
        }
    }

    /// The rules on every platform: (region, domain name of the DNS redirect).
    fn rules(&self) -> BTreeSet<(String, String)> {
        let mut rules = BTreeSet::new();
        for (region, platform) in REGIONS.iter().zip(&self.platforms) {
            for (path, body) in platform.installed() {
                assert_eq!(path, DNS_PATH, "only DNS rules are sent: {body}");
                let body: Value = serde_json::from_str(&body).unwrap();
                let domain = body["url"].as_str().unwrap_or_default().to_string();
                rules.insert((region.to_string(), domain));
            }
        }
        rules
    }

    /// How many platform calls instance `i` has made (through its relay ports).
    fn calls_by(&self, i: usize) -> usize {
        let fronts = &self.instances[i].fronts;
        self.platforms
            .iter()
            .zip(fronts)
            .map(|(platform, &front)| platform.calls_via(front).len())
            .sum()
    }

    /// The records as stored in etcd (created, and their mutable parts as last changed): key,
    /// mod revision and value of each.
    fn stored(&self) -> Vec<(String, i64, String)> {
        ["records", "progress"]
            .iter()
            .flat_map(|part| {
                let range = Range::prefix(format!("{PREFIX}/{part}/"));
                let answer = self.client.range(&range).expect("etcd answers the test");
                answer.kvs.into_iter().map(|kv| {
                    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                    (text(&kv.key), kv.mod_revision, text(&kv.value))
                })
            })
            .collect()
    }

    /// The records as stored in etcd once they have not changed for `still` (at most `within`).
    fn stored_still(&self, still: Duration, within: Duration) -> Vec<(String, i64, String)> {
        let deadline = Instant::now() + within;
        let (mut last, mut since) = (self.stored(), Instant::now());
        while since.elapsed() < still {
            assert!(
                Instant::now() < deadline,
                "etcd's records keep changing: {last:?}"
            );
            thread::sleep(Duration::from_millis(100));
            let now = self.stored();
            if now != last {
                (last, since) = (now, Instant::now());
            }
        }
        last
    }

    /// The last log lines of every instance (but the test's own polling: `/healthz`,
    /// listings) and the platform calls each made, for a failure's message.
    fn logs(&self) -> String {
        let polling = |l: &&String| {
            !l.contains("GET /healthz ") && !l.contains("GET /MEC/v1/service/requests ")
        };
        let tail = |logs: &[String]| {
            let kept: Vec<&String> = logs.iter().filter(polling).collect();
            let from = kept.len().saturating_sub(60);
            kept[from..]
                .iter()
                .map(|l| l.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        };
        let mut text = String::new();
        for (i, instance) in self.instances.iter().enumerate() {
            let logs = instance.child.as_ref().map(Child::logs).unwrap_or_default();
            text += &format!(
                "\n--- instance {i} (port {}), earlier process:\n",
                instance.port
            );
            text += &tail(&instance.past_logs);
            text += &format!("\n--- instance {i}, current process:\n{}", tail(&logs));
            for (platform, front) in self.platforms.iter().zip(&instance.fronts) {
                let calls: Vec<String> = platform
                    .calls_via(*front)
                    .iter()
                    .map(|c| format!("{} {}", c.method, c.body))
                    .collect();
                text += &format!("\n--- its calls to {}: {calls:?}", platform.url());
            }
        }
        text
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for i in 0..self.instances.len() {
            self.kill(i);
        }
        if !thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// load and what the clients were told

/// What the clients were told, over the whole test.
#[derive(Default, Debug)]
struct Ledger {
    /// Creations answered 201: id → (region, domain names).
    created: BTreeMap<String, (String, Vec<String>)>,
    /// Acknowledged creations no DELETE was sent for yet.
    deletable: Vec<String>,
    /// DELETEs answered 201 (removed) or 202 (removal accepted): id → status.
    deleted: BTreeMap<String, u16>,
    /// DELETEs sent whose outcome is unknown (no answer, 503, ...).
    delete_unknown: BTreeSet<String>,
    /// "POST 201", "DELETE 503", "POST no answer", ... → how many.
    outcomes: BTreeMap<String, usize>,
    /// Answers the contract rules out.
    wrong: Vec<String>,
}

impl Ledger {
    fn count(&mut self, what: String) {
        *self.outcomes.entry(what).or_default() += 1;
    }

    /// Notes an answer other than success: a 503 must be the contract's, 4xx never comes.
    fn note_failure(&mut self, method: &str, answer: &Answer) {
        self.count(format!("{method} {}", answer.status));
        let acceptable = answer.is_unavailable() || matches!(answer.status, 502 | 504);
        if !acceptable {
            self.wrong.push(format!(
                "{method}: {} {} {}",
                answer.status, answer.content_type, answer.json
            ));
        }
    }
}

/// Client threads POSTing and DELETEing through instances picked at random.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Operations per client thread per round, at most.
const MAX_OPS: usize = 1000;
/// A client's pause after a call that did not succeed (as if it honoured a short `Retry-After`).
const BACK_OFF: Duration = Duration::from_millis(20);

impl Load {
    /// `clients` threads against `addrs`, until stopped or `limit` passed (whichever first).
    fn start(
        addrs: &[SocketAddr],
        ledger: &Arc<Mutex<Ledger>>,
        round: usize,
        clients: usize,
        limit: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + limit;
        let threads = (0..clients)
            .map(|t| {
                let (addrs, ledger, stop) = (addrs.to_vec(), Arc::clone(ledger), Arc::clone(&stop));
                thread::spawn(move || {
                    let mut rng = (round as u64 + 1) * 7919 + t as u64 * 104_729 + 1;
                    for n in 0..MAX_OPS {
                        if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
                            break;
                        }
                        let addr = addrs[next(&mut rng) as usize % addrs.len()];
                        let victim = if next(&mut rng) % 3 == 0 {
                            lock(&ledger).deletable.pop()
                        } else {
                            None
                        };
                        let done = match victim {
                            Some(id) => delete_one(addr, &id, &ledger),
                            None => create_one(addr, &format!("r{round}t{t}n{n}"), n, &ledger),
                        };
                        if !done {
                            thread::sleep(BACK_OFF);
                        }
                    }
                })
            })
            .collect();
        Load { stop, threads }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().expect("a client thread panicked");
        }
    }
}

/// xorshift64.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// POSTs a creation; whether it was acknowledged.
fn create_one(addr: SocketAddr, name: &str, n: usize, ledger: &Mutex<Ledger>) -> bool {
    let region = REGIONS[n % REGIONS.len()];
    let (body, domains) = creation(region, name, 1 + n % 2);
    let answer = call(addr, "POST", REQUESTS, Some(&body), CALL_TIMEOUT);
    let mut ledger = lock(ledger);
    match answer {
        Ok(a) if a.status == 201 => {
            ledger.count("POST 201".into());
            let id = a.json["RequestId"].as_str().unwrap_or_default().to_string();
            assert!(!id.is_empty(), "201 without RequestId: {}", a.json);
            ledger
                .created
                .insert(id.clone(), (region.to_string(), domains));
            ledger.deletable.push(id);
            return true;
        }
        Ok(a) => ledger.note_failure("POST", &a),
        Err(e) if e.starts_with(REFUSED) => ledger.count("POST refused".into()),
        Err(_) => ledger.count("POST no answer".into()),
    }
    false
}

/// DELETEs an acknowledged creation; whether the deletion was acknowledged.
fn delete_one(addr: SocketAddr, id: &str, ledger: &Mutex<Ledger>) -> bool {
    let answer = call(
        addr,
        "DELETE",
        &format!("{REQUESTS}/{id}"),
        None,
        CALL_TIMEOUT,
    );
    let mut ledger = lock(ledger);
    match answer {
        Ok(a) if matches!(a.status, 201 | 202) => {
            ledger.count(format!("DELETE {}", a.status));
            ledger.deleted.insert(id.to_string(), a.status);
            return true;
        }
        Ok(a) => {
            ledger.delete_unknown.insert(id.to_string());
            if a.status == 404 {
                ledger.count("DELETE 404".into());
                ledger
                    .wrong
                    .push(format!("DELETE of acknowledged {id}: 404 {}", a.json));
            } else {
                ledger.note_failure("DELETE", &a);
            }
        }
        Err(e) if e.starts_with(REFUSED) => {
            // Not sent: another client may try it.
            ledger.count("DELETE refused".into());
            ledger.deletable.push(id.to_string());
        }
        Err(_) => {
            ledger.count("DELETE no answer".into());
            ledger.delete_unknown.insert(id.to_string());
        }
    }
    false
}

// ---------------------------------------------------------------------------------------------
// checks

/// A listed request: its status, region and domain names.
struct Listed {
    status: String,
    region: String,
    domains: Vec<String>,
}

fn listed(items: &[Value]) -> BTreeMap<String, Listed> {
    items
        .iter()
        .map(|item| {
            let domains = item["appDNSRule"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| r["domainName"].as_str().unwrap_or_default().to_string())
                .collect();
            let listed = Listed {
                status: item["status"].as_str().unwrap_or_default().to_string(),
                region: item["RegionId"].as_str().unwrap_or_default().to_string(),
                domains,
            };
            (
                item["RequestId"].as_str().unwrap_or_default().to_string(),
                listed,
            )
        })
        .collect()
}

impl Deployment {
    /// The deployment at rest agrees with what the clients were told: every live instance
    /// lists the same; nothing is PENDING or DELETING any more; every acknowledged creation is
    /// listed CREATED unless a DELETE was sent for it; no acknowledged deletion is listed; the
    /// platforms hold exactly the rules of the CREATED requests (no rule without a record, no
    /// CREATED request without its rules).
    fn check(&self, ledger: &Ledger) -> Result<(), String> {
        let live = self.live();
        let first = self.listing(live[0])?;
        for &i in &live[1..] {
            let other = self.listing(i)?;
            if other != first {
                return Err(format!(
                    "instance {i} lists {} requests, instance {} lists {}: {:?} vs {:?}",
                    other.len(),
                    live[0],
                    first.len(),
                    other,
                    first
                ));
            }
        }
        let listed = listed(&first);
        if let Some((id, l)) = listed
            .iter()
            .find(|(_, l)| matches!(l.status.as_str(), "PENDING" | "DELETING"))
        {
            return Err(format!("not settled yet: {id} is {}", l.status));
        }
        check_acknowledged(ledger, &listed)?;
        let expected: BTreeSet<(String, String)> = listed
            .values()
            .filter(|l| l.status == "CREATED")
            .flat_map(|l| l.domains.iter().map(|d| (l.region.clone(), d.clone())))
            .collect();
        let rules = self.rules();
        let orphans: Vec<_> = rules.difference(&expected).collect();
        let missing: Vec<_> = expected.difference(&rules).collect();
        if !orphans.is_empty() || !missing.is_empty() {
            return Err(format!(
                "platform rules without a CREATED record: {orphans:?}; CREATED requests' rules not on their platform: {missing:?}"
            ));
        }
        Ok(())
    }
}

/// Every acknowledged creation is listed CREATED, unless a DELETE was sent for it (then: gone,
/// or still CREATED when that DELETE's outcome is unknown); no acknowledged deletion is listed.
fn check_acknowledged(ledger: &Ledger, listed: &BTreeMap<String, Listed>) -> Result<(), String> {
    for id in ledger.created.keys() {
        let status = listed.get(id).map(|l| l.status.as_str());
        if let Some(answer) = ledger.deleted.get(id) {
            if let Some(status) = status {
                return Err(format!(
                    "{id}: DELETE answered {answer}, yet it is listed {status}"
                ));
            }
        } else if ledger.delete_unknown.contains(id) {
            if !matches!(status, None | Some("CREATED")) {
                return Err(format!(
                    "{id}: acknowledged creation (DELETE outcome unknown) is listed {status:?}"
                ));
            }
        } else if status != Some("CREATED") {
            return Err(format!("{id}: acknowledged creation is listed {status:?}"));
        }
    }
    Ok(())
}

/// Waits until [`Deployment::check`] holds; panics with its last complaint otherwise.
fn settled(d: &Deployment, ledger: &Mutex<Ledger>, when: &str) {
    let mut last = Ok(());
    let ok = eventually(SETTLE_WITHIN, || {
        last = d.check(&lock(ledger));
        last.is_ok()
    });
    assert!(ok, "{when}: {}{}", last.unwrap_err(), d.logs());
}

// ---------------------------------------------------------------------------------------------
// tests

/// Rounds of the kill test.
const KILLS: usize = 5;
/// Client threads of the load.
const CLIENTS: usize = 3;

#[test]
fn the_leader_killed_five_times_under_load_loses_nothing_acknowledged() {
    let test = "the_leader_killed_five_times_under_load_loses_nothing_acknowledged";
    let _serial = serial();
    let Some(mut d) = Deployment::start(test, 3) else {
        return;
    };
    let addrs: Vec<SocketAddr> = (0..d.instances.len()).map(|i| d.addr(i)).collect();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut failovers = Vec::new();
    for round in 0..KILLS {
        let leader = d.wait_leader();
        let load = Load::start(&addrs, &ledger, round, CLIENTS, Duration::from_secs(15));
        thread::sleep(Duration::from_millis(1500));
        d.kill(leader);
        let killed = Instant::now();
        let others: Vec<usize> = d.live();
        let mut new_leader = None;
        eventually(FAILOVER_BOUND * 3, || {
            new_leader = others
                .iter()
                .copied()
                .find(|&i| d.role(i).as_deref() == Some("leader"));
            new_leader.is_some()
        });
        let took = killed.elapsed();
        assert!(
            new_leader.is_some(),
            "round {round}: no new leader within {:?}{}",
            FAILOVER_BOUND * 3,
            d.logs()
        );
        failovers.push(took);
        // Load through the new leader too, then at rest.
        thread::sleep(Duration::from_millis(1500));
        load.stop();
        d.start_instance(leader);
        let now_leading = d.wait_leader();
        settled(&d, &ledger, &format!("after failover {}", round + 1));
        assert_eq!(d.leaders_by_metric(), [now_leading], "mec_plugin_leader");
    }
    let ledger = lock(&ledger);
    eprintln!(
        "{test}: failovers {failovers:?}; outcomes {:?}",
        ledger.outcomes
    );
    assert!(
        ledger.wrong.is_empty(),
        "answers outside the contract: {:?}",
        ledger.wrong
    );
    assert!(
        ledger.created.len() >= 20 && ledger.deleted.len() >= 5,
        "too little load to judge: {:?}",
        ledger.outcomes
    );
    for (round, took) in failovers.iter().enumerate() {
        assert!(
            *took <= FAILOVER_BOUND,
            "failover {} took {took:?}, more than {FAILOVER_BOUND:?}",
            round + 1
        );
    }
}

/// POSTs a creation through instance `i` until one is answered 201, for at most `within`;
/// returns its id.
fn create_through(d: &Deployment, i: usize, name: &str, within: Duration) -> String {
    let (body, _) = creation(REGIONS[0], name, 1);
    let mut last = Err(String::new());
    let mut id = None;
    let ok = eventually(within, || {
        last = call(d.addr(i), "POST", REQUESTS, Some(&body), CALL_TIMEOUT);
        if let Ok(a) = &last {
            if a.status == 201 {
                id = a.json["RequestId"].as_str().map(str::to_string);
            }
        }
        id.is_some()
    });
    assert!(ok, "POST {name} through instance {i}: {last:?}{}", d.logs());
    id.unwrap()
}

/// Every live instance answers changes and reads with the contract's 503 (problem+json,
/// `Retry-After`), and `/healthz` with 503.
fn all_unavailable(d: &Deployment, name: &str) -> Result<(), String> {
    for i in d.live() {
        let (body, _) = creation(REGIONS[0], name, 1);
        let post = call(d.addr(i), "POST", REQUESTS, Some(&body), CALL_TIMEOUT)?;
        let list = call(d.addr(i), "GET", REQUESTS, None, CALL_TIMEOUT)?;
        let health = d.health(i)?;
        if !post.is_unavailable() || !list.is_unavailable() || health.status != 503 {
            return Err(format!(
                "instance {i}: POST {post:?}, GET {list:?}, /healthz {health:?}"
            ));
        }
    }
    Ok(())
}

#[test]
fn one_etcd_member_lost_changes_nothing_two_make_every_call_503_until_they_return() {
    let test = "one_etcd_member_lost_changes_nothing_two_make_every_call_503_until_they_return";
    let _serial = serial();
    let Some(mut d) = Deployment::start(test, 2) else {
        return;
    };
    d.wait_leader();
    let mut ids = vec![create_through(&d, 0, "before", Duration::from_secs(10))];

    d.etcd.kill(0);
    for i in d.live() {
        // An election among the two members left may take a moment: then it goes on.
        ids.push(create_through(
            &d,
            i,
            &format!("one-down-{i}"),
            Duration::from_secs(10),
        ));
        for n in 0..3 {
            let id = create_through(&d, i, &format!("one-down-{i}-{n}"), Duration::ZERO);
            ids.push(id);
        }
    }
    for i in d.live() {
        let items = d.listing(i).unwrap();
        let listed = listed(&items);
        assert!(
            ids.iter().all(|id| listed.contains_key(id)),
            "instance {i}: {ids:?} in {items:?}"
        );
    }

    d.etcd.kill(1);
    let calls_before = (0..d.instances.len()).map(|i| d.calls_by(i)).sum::<usize>();
    let mut last = Ok(());
    let all_503 = eventually(FAILOVER_BOUND + Duration::from_secs(10), || {
        last = all_unavailable(&d, "no-quorum");
        last.is_ok()
    });
    assert!(all_503, "without quorum: {last:?}{}", d.logs());
    // And it stays so: no answer from memory, no call to a platform.
    thread::sleep(Duration::from_secs(TTL_S));
    all_unavailable(&d, "no-quorum-still").unwrap_or_else(|e| panic!("{e}{}", d.logs()));
    let calls_after = (0..d.instances.len()).map(|i| d.calls_by(i)).sum::<usize>();
    assert_eq!(
        calls_before, calls_after,
        "a platform was called while etcd had no quorum"
    );
    assert_eq!(
        d.leaders_by_metric(),
        [0usize; 0],
        "mec_plugin_leader without quorum"
    );

    d.etcd.restart(0);
    d.etcd.restart(1);
    d.etcd.wait_healthy();
    d.wait_leader_among(&d.live(), Duration::from_secs(30));
    for i in d.live() {
        ids.push(create_through(
            &d,
            i,
            &format!("back-{i}"),
            Duration::from_secs(20),
        ));
    }
    let first = d.listing(0).unwrap();
    assert_eq!(d.listing(1).unwrap(), first, "both instances list the same");
    let listed = listed(&first);
    for id in &ids {
        assert_eq!(
            listed.get(id).map(|l| l.status.as_str()),
            Some("CREATED"),
            "{id}"
        );
    }
}

#[test]
fn one_etcd_member_paused_keeps_every_instance_healthy_and_answering() {
    let test = "one_etcd_member_paused_keeps_every_instance_healthy_and_answering";
    let _serial = serial();
    let Some(d) = Deployment::start(test, 2) else {
        return;
    };
    let leader = d.wait_leader();
    // Member 0, where every instance's client starts, stops answering but keeps its sockets
    // open (a hung host): each instance's next etcd read waits one timeout there, then goes to
    // the next member. Neither role nor `/healthz` nor a read may fail meanwhile. (Had member
    // 0 led etcd itself, etcd would be without a leader for an election's time.)
    d.etcd.lead_elsewhere_than(0);
    d.etcd.pause(0);
    let paused = Instant::now();
    let mut failures = Vec::new();
    let mut samples = 0;
    while paused.elapsed() < Duration::from_secs(3 * TTL_S) && samples < 200 {
        samples += 1;
        for i in d.live() {
            let at = paused.elapsed();
            match d.health(i) {
                Ok(health) if health.status == 200 => {}
                other => failures.push(format!("{at:?}: instance {i} /healthz {other:?}")),
            }
            match call(d.addr(i), "GET", REQUESTS, None, CALL_TIMEOUT) {
                Ok(list) if list.status == 200 => {}
                other => failures.push(format!("{at:?}: instance {i} GET {other:?}")),
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    let id = create_through(&d, 1 - leader, "paused-member", Duration::from_secs(10));
    d.etcd.resume(0);
    assert!(
        failures.is_empty(),
        "{} of {samples} samples failed: {failures:#?}{}",
        failures.len(),
        d.logs()
    );
    assert_eq!(d.wait_leader(), leader, "the leader changed");
    assert!(listed(&d.listing(0).unwrap()).contains_key(&id));
}

#[test]
fn a_leader_paused_past_its_lease_neither_writes_nor_calls_a_platform_once_resumed() {
    let test = "a_leader_paused_past_its_lease_neither_writes_nor_calls_a_platform_once_resumed";
    let _serial = serial();
    let Some(d) = Deployment::start(test, 2) else {
        return;
    };
    let old = d.wait_leader();
    let other = 1 - old;
    create_through(&d, other, "settled", Duration::from_secs(10));

    // A creation of two rules on the leader, paused while the platform holds its first call.
    d.platforms[0].delay(Duration::from_secs(2));
    let calls = d.calls_by(old);
    let (body, domains) = creation(REGIONS[0], "interrupted", 2);
    let addr = d.addr(old);
    let pending =
        thread::spawn(move || call(addr, "POST", REQUESTS, Some(&body), Duration::from_secs(30)));
    assert!(
        eventually(Duration::from_secs(10), || d.calls_by(old) > calls),
        "the leader did not call the platform{}",
        d.logs()
    );
    d.child(old).signal(libc::SIGSTOP);
    let paused = Instant::now();
    d.platforms[0].delay(Duration::ZERO);

    let leader = d.wait_leader_among(&[other], FAILOVER_BOUND * 2);
    assert_eq!(leader, other);
    eprintln!(
        "{test}: the other instance leads {:?} after the pause",
        paused.elapsed()
    );
    thread::sleep(
        (paused + Duration::from_secs(TTL_S + 2)).saturating_duration_since(Instant::now()),
    );
    // The new leader rolls the interrupted creation back: FAILED, its first rule removed.
    let mut last = String::new();
    let rolled_back = eventually(SETTLE_WITHIN, || {
        let items = d.listing(other).unwrap_or_default();
        let listed = listed(&items);
        let rules = d.rules();
        // Its removal may be sent again after the settle window: until then it is in the backlog.
        let backlog = d.health(other).map(|h| h.json["reconcilerBacklog"].clone());
        last = format!("{items:?}; rules {rules:?}; backlog {backlog:?}");
        let failed = listed
            .values()
            .any(|l| l.domains == domains && l.status == "FAILED");
        let idle = backlog.is_ok_and(|b| b == 0);
        failed && idle && !rules.iter().any(|(_, domain)| domains.contains(domain))
    });
    assert!(
        rolled_back,
        "the interrupted creation is not rolled back: {last}{}",
        d.logs()
    );

    // The new leader may still send a removal again once the settle window (2 × timeout_ms)
    // is over, and record it: the records must have been still for longer than that.
    let stored = d.stored_still(Duration::from_secs(3), SETTLE_WITHIN);
    let (rules, calls) = (d.rules(), d.calls_by(old));
    d.child(old).signal(libc::SIGCONT);
    let answer = pending.join().unwrap();
    assert!(
        answer.as_ref().is_ok_and(Answer::is_unavailable),
        "the deposed leader's creation answered {answer:?}, not 503 with Retry-After"
    );
    d.wait_leader_among(&[old, other], Duration::from_secs(TTL_S * 3));
    thread::sleep(Duration::from_secs(TTL_S));
    assert_eq!(
        d.calls_by(old),
        calls,
        "the deposed leader called a platform{}",
        d.logs()
    );
    assert_eq!(
        d.stored(),
        stored,
        "the records in etcd changed{}",
        d.logs()
    );
    assert_eq!(d.rules(), rules, "the platform's rules changed{}", d.logs());
    assert_eq!(d.role(old).as_deref(), Some("follower"));
    assert_eq!(d.listing(old).unwrap(), d.listing(other).unwrap());
    // As a follower it forwards a change to the new leader.
    create_through(&d, old, "after", Duration::from_secs(10));
    assert_eq!(d.calls_by(old), calls, "a follower called a platform");
}
