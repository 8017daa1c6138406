//! Real etcd processes for the tests: one member, or a cluster of three on loopback ports
//! picked at run time, each with its data in a temporary directory and its log in
//! `<dir>/<name>.log`. A member can be killed (SIGKILL), paused (SIGSTOP), resumed and
//! restarted on its data. Every process is killed and every directory removed when the
//! [`Cluster`] is dropped (when the test failed, only the members' logs are kept).
//! `MEC_PLUGIN_ETCD` names another etcd binary than `etcd` on `PATH`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a test says when it skips for want of etcd.
pub const MISSING: &str = "etcd not installed (apt-get install etcd-server)";

/// The etcd binary the tests run.
pub fn binary() -> String {
    std::env::var("MEC_PLUGIN_ETCD").unwrap_or_else(|_| "etcd".into())
}

/// Whether the etcd binary can be run here.
pub fn installed() -> bool {
    Command::new(binary())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// One etcd member.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    child: Option<Child>,
}

impl Member {
    /// Its client URL (`http://127.0.0.1:<port>`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// Some etcd members forming one cluster.
pub struct Cluster {
    pub members: Vec<Member>,
    dir: PathBuf,
    initial_cluster: String,
    flags: Vec<String>,
}

/// Bound on waiting for a started or restarted cluster to be healthy.
const HEALTHY_WITHIN: Duration = Duration::from_secs(20);

impl Cluster {
    /// `size` members started and healthy, or `None` when etcd is not installed (the caller
    /// calls `support::skip(test, MISSING)` and returns).
    pub fn start(test: &str, size: usize) -> Option<Cluster> {
        Cluster::start_with(test, size, &[])
    }

    /// [`start`](Self::start) with more command-line flags for every member. The ports are
    /// free when picked, but another process (a test running beside this one) may bind one
    /// before etcd does; the member then exits at once, and the cluster is started again on
    /// fresh ports (at most [`START_ATTEMPTS`] times).
    pub fn start_with(test: &str, size: usize, flags: &[&str]) -> Option<Cluster> {
        if !installed() {
            return None;
        }
        for attempt in 1..=START_ATTEMPTS {
            let dir = super::temp_dir(&format!("etcd-{test}-{attempt}"));
            let mut cluster = Cluster::on_fresh_ports(dir, size, flags);
            for i in 0..size {
                cluster.spawn(i);
            }
            match cluster.wait(true) {
                Wait::Healthy => return Some(cluster),
                Wait::PortTaken(log) if attempt < START_ATTEMPTS => {
                    eprintln!(
                        "etcd for {test}: {log} lost its port to another process; again on fresh ports"
                    );
                }
                Wait::PortTaken(log) => panic!(
                    "etcd for {test}: a port was taken by another process {START_ATTEMPTS} times (last: {log})"
                ),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// `size` members (not started) on ports that were free a moment ago.
    fn on_fresh_ports(dir: PathBuf, size: usize, flags: &[&str]) -> Cluster {
        // Every port picked while the others are still held, so that no two are the same.
        let listeners: Vec<std::net::TcpListener> = (0..size * 2)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        drop(listeners);
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        Cluster {
            members,
            dir,
            initial_cluster,
            flags: flags.iter().map(|f| f.to_string()).collect(),
        }
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// The plugin's own etcd client on every member, without TLS or a user; `timeout` bounds
    /// one call to one member.
    pub fn client(&self, timeout: Duration) -> mec_plugin::etcd::Client {
        mec_plugin::etcd::Client::new(mec_plugin::etcd::Options {
            endpoints: self.endpoints(),
            ca_pem: None,
            user: None,
            password: None,
            timeout,
        })
        .expect("an etcd client of the members' URLs")
    }

    fn spawn(&mut self, i: usize) {
        let member = &self.members[i];
        let data = self.dir.join(&member.name);
        let log = std::fs::File::create(self.dir.join(format!("{}.log", member.name))).unwrap();
        let child = Command::new(binary())
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &member.endpoint()])
            .args(["--advertise-client-urls", &member.endpoint()])
            .args(["--listen-peer-urls", &member.peer_url()])
            .args(["--initial-advertise-peer-urls", &member.peer_url()])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args([
                "--initial-cluster-token",
                &format!("test-{}", std::process::id()),
            ])
            // Quick elections on loopback (defaults: 100 ms, 1000 ms), with room for a busy
            // machine.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--log-level", "warn"])
            .args(&self.flags)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary()));
        self.members[i].child = Some(child);
    }

    fn pid(&self, i: usize) -> i32 {
        let child = self.members[i].child.as_ref();
        child
            .unwrap_or_else(|| panic!("member {i} is not running"))
            .id() as i32
    }

    /// Kills member `i` at once (SIGKILL) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Pauses member `i` (SIGSTOP): its sockets stay open, nothing answers.
    /// Returns once every thread of it is stopped.
    pub fn pause(&self, i: usize) {
        let pid = self.pid(i);
        signal(pid, libc::SIGSTOP);
        let stopped = super::eventually(Duration::from_secs(5), || {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
            tasks.map(|t| t.unwrap().path().join("stat")).all(|stat| {
                // "<tid> (<comm>) <state> ...": the state follows the last ')'.
                let text = std::fs::read_to_string(stat).unwrap_or_default();
                text.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
            })
        });
        assert!(stopped, "member {i} (pid {pid}) did not stop");
    }

    /// Resumes a paused member (SIGCONT).
    pub fn resume(&self, i: usize) {
        signal(self.pid(i), libc::SIGCONT);
    }

    /// Starts a killed member again on its data.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i);
    }

    /// Kills member `i`, deletes its data and starts it again empty: what an operator who
    /// lost (or wiped) etcd's disk gets. A one-member cluster then counts revisions from 1
    /// again and has no leases.
    pub fn wipe(&mut self, i: usize) {
        self.kill(i);
        let data = self.dir.join(&self.members[i].name);
        std::fs::remove_dir_all(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
        self.spawn(i);
        self.wait_healthy();
    }

    /// Makes sure member `i` is not etcd's own (raft) leader, handing the leadership to
    /// another member if it is. Pausing the raft leader costs etcd an election (up to its
    /// 1 s election timeout and more), in which no member serves a linearizable read: etcd's
    /// own unavailability, which a test of the client's failover must not measure.
    pub fn lead_elsewhere_than(&self, i: usize) {
        let agent = gateway_agent();
        // (its own member id, the raft leader's), as member `m` says.
        let status = |m: &Member| -> Option<(String, String)> {
            let url = format!("{}/v3/maintenance/status", m.endpoint());
            let text = agent.post(url).send("{}").ok()?.body_mut().read_to_string();
            let status: serde_json::Value = serde_json::from_str(&text.ok()?).ok()?;
            let id = |v: &serde_json::Value| v.as_str().map(str::to_string);
            Some((id(&status["header"]["member_id"])?, id(&status["leader"])?))
        };
        let other = (i + 1) % self.members.len();
        let deadline = Instant::now() + HEALTHY_WITHIN;
        loop {
            match status(&self.members[i]) {
                Some((own, leader)) if own != leader && leader != "0" => return,
                Some((own, leader)) if own == leader => {
                    if let Some((target, _)) = status(&self.members[other]) {
                        let url = format!(
                            "{}/v3/maintenance/transfer-leadership",
                            self.members[i].endpoint()
                        );
                        let body = serde_json::json!({ "targetID": target }).to_string();
                        let _ = agent.post(url).send(body.as_str());
                    }
                }
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "member {i} still leads etcd after {HEALTHY_WITHIN:?}; logs in {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (at most 20 s) until every running member says it is healthy (it has a leader
    /// and can commit); panics naming the log directory otherwise.
    pub fn wait_healthy(&mut self) {
        if let Wait::PortTaken(log) = self.wait(false) {
            unreachable!("not looked for: {log}");
        }
    }

    /// [`wait_healthy`](Self::wait_healthy); with `port_taken`, gives up as soon as a member
    /// has exited because its port was in use, naming its log.
    fn wait(&mut self, port_taken: bool) -> Wait {
        let agent = gateway_agent();
        let deadline = Instant::now() + HEALTHY_WITHIN;
        let healthy = |m: &Member| {
            agent
                .get(format!("{}/health", m.endpoint()))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .is_some_and(|body| body.contains("\"health\":\"true\""))
        };
        loop {
            let running = self.members.iter().filter(|m| m.child.is_some());
            if running.clone().all(healthy) {
                return Wait::Healthy;
            }
            if port_taken {
                for member in &mut self.members {
                    let exited = member
                        .child
                        .as_mut()
                        .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
                    let log = self.dir.join(format!("{}.log", member.name));
                    if exited
                        && std::fs::read_to_string(&log)
                            .is_ok_and(|text| text.contains("address already in use"))
                    {
                        return Wait::PortTaken(log.display().to_string());
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "etcd not healthy within {HEALTHY_WITHIN:?}; logs in {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// An agent for the members' own HTTP endpoints (health, maintenance): any status is an
/// answer, 2 s at most.
fn gateway_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .proxy(None)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into()
}

/// How often [`Cluster::start_with`] starts a cluster whose port another process took.
const START_ATTEMPTS: usize = 3;

/// How waiting for a cluster ended.
enum Wait {
    Healthy,
    /// A member exited because its port was in use (its log).
    PortTaken(String),
}

fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) on a child this process started and has not reaped.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            // The logs are kept when the test failed; the members' data (~120 MB each, most
            // of it preallocated WAL) is not, so failed runs cannot fill the disk.
            for member in &self.members {
                let _ = std::fs::remove_dir_all(self.dir.join(&member.name));
            }
        }
    }
}

/// Stops `election` cleanly (its lease revoked) once the stores dropped no longer hold it
/// (a dropped store's writer thread ends by itself).
pub fn step_down(mut election: Arc<mec_plugin::leader::Election>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Arc::try_unwrap(election) {
            Ok(election) => return election.stop(),
            Err(shared) if Instant::now() < deadline => election = shared,
            Err(_) => panic!("the election is still held"),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
