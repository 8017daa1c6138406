//! The etcd client and the leader election against real etcd (started by the tests, see
//! `support/etcd.rs`): the gateway's calls on one member; leadership among candidates on a
//! 3-member cluster, with candidates killed (SIGKILL) and paused (SIGSTOP) as processes; etcd
//! members killed under the client. Skipped, saying so, where etcd is not installed.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mec_plugin::etcd::{
    Client, Cmp, Compare, EtcdError, Op, OpResponse, Options, Range, Target, Txn, prefix_end,
};
use mec_plugin::leader::{Election, FencedError, Role, Settings, Term, fence, leader_key};
use support::etcd::{Cluster, MISSING};
use support::eventually;

/// The lease TTL of every election here.
const TTL_S: u64 = 2;

/// The most one call of a client of three endpoints may take: the 1 s timeout per endpoint.
const CALL_BOUND: Duration = Duration::from_secs(3);
/// The most one read may take: a read left unanswered is sent once more, at the next endpoint.
const READ_BOUND: Duration = Duration::from_secs(2 * 3);

/// `size` etcd members, or `None` (after saying the test is skipped) without etcd.
fn etcd(test: &str, size: usize) -> Option<Cluster> {
    let cluster = Cluster::start(test, size);
    if cluster.is_none() {
        support::skip(test, MISSING);
    }
    cluster
}

fn options(endpoints: Vec<String>) -> Options {
    Options {
        endpoints,
        ca_pem: None,
        user: None,
        password: None,
        timeout: Duration::from_secs(1),
    }
}

fn client(endpoints: Vec<String>) -> Client {
    Client::new(options(endpoints)).unwrap()
}

fn value(client: &Client, key: &str) -> Option<Vec<u8>> {
    client.get(key.as_bytes()).unwrap().map(|kv| kv.value)
}

#[test]
fn the_client_puts_reads_transacts_and_deletes() {
    let Some(etcd) = etcd("the_client_puts_reads_transacts_and_deletes", 1) else {
        return;
    };
    let c = client(etcd.endpoints());
    assert_eq!(c.get(b"/t/a").unwrap(), None);
    let revision = c.put(b"/t/a", b"1", 0).unwrap();
    let kv = c.get(b"/t/a").unwrap().unwrap();
    assert_eq!(
        (kv.value, kv.create_revision, kv.mod_revision, kv.version),
        (b"1".to_vec(), revision, revision, 1)
    );
    c.put(b"/t/b", b"\0\xff binary", 0).unwrap();
    c.put(b"/u", b"outside the prefix", 0).unwrap();
    let all = c.range(&Range::prefix("/t/")).unwrap();
    let keys: Vec<&[u8]> = all.kvs.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(keys, [b"/t/a".as_slice(), b"/t/b".as_slice()]);
    assert_eq!(all.kvs[1].value, b"\0\xff binary");
    let page = c.range(&Range::prefix("/t/").limit(1)).unwrap();
    assert_eq!((page.kvs.len(), page.more, page.count), (1, true, 2));

    // Create only if absent: the key exists, so the failure branch reads it.
    let create = Txn::new()
        .when(Compare::absent("/t/a"))
        .then(Op::put("/t/a", "2"))
        .otherwise(Op::Range(Range::key("/t/a")));
    let answer = c.txn(&create).unwrap();
    assert!(!answer.succeeded);
    let [OpResponse::Range(read)] = answer.responses.as_slice() else {
        panic!("{answer:?}");
    };
    assert_eq!(read.kvs[0].value, b"1");
    assert_eq!(
        c.txn(&create).unwrap().require_succeeded(),
        Err(EtcdError::CompareFailed)
    );
    // Compare-and-swap on the revision, with a delete in the same transaction.
    let swap = Txn::new()
        .when(Compare::new(
            "/t/a",
            Cmp::Equal,
            Target::ModRevision(revision),
        ))
        .then(Op::put("/t/a", "2"))
        .then(Op::delete("/u"));
    let answer = c.txn(&swap).unwrap().require_succeeded().unwrap();
    assert_eq!(
        answer.responses,
        [OpResponse::Put, OpResponse::Delete { deleted: 1 }]
    );
    assert_eq!(c.get(b"/t/a").unwrap().unwrap().version, 2);
    assert_eq!(value(&c, "/u"), None);
    assert!(!c.txn(&swap).unwrap().succeeded, "the revision moved on");

    assert_eq!(c.delete(b"/t/", Some(&prefix_end(b"/t/"))).unwrap(), 2);
    assert_eq!(c.range(&Range::prefix("/t/")).unwrap().count, 0);
    assert_eq!(c.delete(b"/t/a", None).unwrap(), 0);
}

#[test]
fn after_etcd_lost_its_data_a_term_of_the_same_revision_on_another_lease_is_fenced_out() {
    let test =
        "after_etcd_lost_its_data_a_term_of_the_same_revision_on_another_lease_is_fenced_out";
    let Some(mut etcd) = etcd(test, 1) else {
        return;
    };
    let key = leader_key("/wiped");
    // The first leader's term on a fresh etcd.
    let c = client(etcd.endpoints());
    let first = c.lease_grant(60).unwrap();
    let revision = c.put(&key, b"http://127.0.0.1:1", first.id).unwrap();
    let stale = Term {
        lease: first.id,
        create_revision: revision,
    };
    // etcd loses its disk; another instance takes the leader key first, at the same
    // revision (revisions count again from 1), on its own lease.
    etcd.wipe(0);
    let c = client(etcd.endpoints());
    let second = c.lease_grant(60).unwrap();
    assert_eq!(
        c.put(&key, b"http://127.0.0.1:2", second.id).unwrap(),
        revision
    );
    let write = Txn::new().then(Op::put("/wiped/records/x", "stale"));
    let answer = c.txn(&fence(write.clone(), &key, stale)).unwrap();
    assert!(
        !answer.succeeded,
        "the first leader's term passed the fence"
    );
    assert_eq!(value(&c, "/wiped/records/x"), None);
    // The second's term passes.
    let current = Term {
        lease: second.id,
        create_revision: revision,
    };
    assert!(c.txn(&fence(write, &key, current)).unwrap().succeeded);
}

#[test]
fn a_lease_keeps_its_keys_while_renewed_and_takes_them_when_it_expires_or_is_revoked() {
    let test = "a_lease_keeps_its_keys_while_renewed_and_takes_them_when_it_expires_or_is_revoked";
    let Some(etcd) = etcd(test, 1) else {
        return;
    };
    let c = client(etcd.endpoints());
    let kept = c.lease_grant(2).unwrap();
    let expiring = c.lease_grant(2).unwrap();
    let revoked = c.lease_grant(2).unwrap();
    assert_eq!(kept.ttl_s, 2);
    c.put(b"/l/kept", b"k", kept.id).unwrap();
    c.put(b"/l/expiring", b"e", expiring.id).unwrap();
    c.put(b"/l/revoked", b"r", revoked.id).unwrap();
    assert_eq!(c.get(b"/l/kept").unwrap().unwrap().lease, kept.id);

    c.lease_revoke(revoked.id).unwrap();
    assert_eq!(
        value(&c, "/l/revoked"),
        None,
        "revoking takes the key at once"
    );
    let gone = Err(EtcdError::LeaseNotFound { id: revoked.id });
    assert_eq!(c.lease_revoke(revoked.id), gone);
    assert_eq!(
        c.lease_keepalive(revoked.id, Duration::from_secs(1)),
        gone.map(|_| 0)
    );

    // 3.5 s, past the TTL: the renewed lease stays, the other expires with its key.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(3500) {
        assert_eq!(c.lease_keepalive(kept.id, Duration::from_secs(1)), Ok(2));
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(value(&c, "/l/kept"), Some(b"k".to_vec()));
    assert_eq!(value(&c, "/l/expiring"), None);
    assert_eq!(
        c.lease_keepalive(expiring.id, Duration::from_secs(1)),
        Err(EtcdError::LeaseNotFound { id: expiring.id })
    );
}

#[test]
fn an_endpoint_that_refuses_connections_is_passed_over() {
    let Some(etcd) = etcd("an_endpoint_that_refuses_connections_is_passed_over", 1) else {
        return;
    };
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let c = client(vec![dead, etcd.endpoints()[0].clone()]);
    for n in 0..3 {
        c.put(b"/e/k", format!("{n}").as_bytes(), 0).unwrap();
        assert_eq!(value(&c, "/e/k"), Some(format!("{n}").into_bytes()));
    }
}

/// `body` POSTed to `url` with an optional token; the answer's status and text.
fn raw_post(url: &str, body: &str, token: Option<&str>) -> (u16, String) {
    let agent = support::agent(Duration::from_secs(5));
    let mut request = agent.post(url);
    if let Some(token) = token {
        request = request.header("authorization", token);
    }
    let mut answer = request.send(body).unwrap();
    let status = answer.status().as_u16();
    (status, answer.body_mut().read_to_string().unwrap())
}

#[test]
fn a_user_authenticates_and_missing_or_wrong_credentials_are_refused() {
    let test = "a_user_authenticates_and_missing_or_wrong_credentials_are_refused";
    // Tokens that expire after 1 s unused, to see the client fetch a new one.
    let Some(etcd) = Cluster::start_with(test, 1, &["--auth-token-ttl", "1"]) else {
        return support::skip(test, MISSING);
    };
    let e = &etcd.endpoints()[0];
    for (path, body) in [
        ("user/add", r#"{"name":"root","password":"root-pw"}"#),
        ("user/grant", r#"{"user":"root","role":"root"}"#),
        ("enable", "{}"),
    ] {
        let (status, text) = raw_post(&format!("{e}/v3/auth/{path}"), body, None);
        assert_eq!(status, 200, "auth/{path}: {text}");
    }
    let with = |user: Option<&str>, password: Option<&str>| {
        Client::new(Options {
            user: user.map(str::to_string),
            password: password.map(str::to_string),
            ..options(etcd.endpoints())
        })
        .unwrap()
    };
    let refused = |result: Result<_, EtcdError>| match result {
        Err(EtcdError::AuthRefused { reason, .. }) => reason,
        other => panic!("{other:?}"),
    };
    let reason = refused(with(None, None).get(b"/a"));
    assert!(reason.contains("user name is empty"), "{reason}");
    let reason = refused(with(Some("root"), Some("wrong")).get(b"/a"));
    assert!(reason.contains("authentication failed"), "{reason}");
    let c = with(Some("root"), Some("root-pw"));
    c.put(b"/a", b"1", 0).unwrap();
    assert_eq!(value(&c, "/a"), Some(b"1".to_vec()));
    let shown = format!("{c:?}");
    assert!(!shown.contains("root-pw"), "{shown}");

    // Once its token expired, the client authenticates again by itself.
    let (status, text) = raw_post(
        &format!("{e}/v3/auth/authenticate"),
        r#"{"name":"root","password":"root-pw"}"#,
        None,
    );
    assert_eq!(status, 200, "{text}");
    let token: serde_json::Value = serde_json::from_str(&text).unwrap();
    let token = token["token"].as_str().unwrap().to_string();
    c.put(b"/a", b"2", 0).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let (_, text) = raw_post(
        &format!("{e}/v3/kv/range"),
        r#"{"key":"L2E="}"#,
        Some(&token),
    );
    assert!(
        text.contains("invalid auth token"),
        "the token did not expire: {text}"
    );
    assert_eq!(value(&c, "/a"), Some(b"2".to_vec()));
}

fn settings(prefix: &str, n: usize) -> Settings {
    Settings {
        prefix: prefix.to_string(),
        lease_ttl_s: TTL_S,
        advertise_url: format!("http://10.0.0.{n}:8080"),
    }
}

#[test]
fn one_of_three_candidates_leads_and_a_clean_step_down_hands_over_at_once() {
    let test = "one_of_three_candidates_leads_and_a_clean_step_down_hands_over_at_once";
    let Some(etcd) = etcd(test, 3) else {
        return;
    };
    let mut candidates: Vec<(usize, Election)> = (1..=3)
        .map(|n| {
            let client = Arc::new(client(etcd.endpoints()));
            (n, Election::start(client, &settings("/elect", n)))
        })
        .collect();
    let known = |role: &Role| *role != Role::Unknown;
    for (n, election) in &candidates {
        let role = election.wait_for(Duration::from_secs(10), known);
        assert_ne!(role, Role::Unknown, "candidate {n}");
    }
    let leader = one_leader(&candidates);
    let leader_url = settings("/elect", candidates[leader].0).advertise_url;
    for (i, (n, election)) in candidates.iter().enumerate() {
        if i != leader {
            let wanted = Role::Follower {
                leader_url: leader_url.clone(),
            };
            assert_eq!(election.role(), wanted, "candidate {n}");
        }
    }

    // The leader's fenced write lands; a follower's is refused before anything is sent.
    let write = Txn::new().then(Op::put("/elect/state", "1"));
    let answer = candidates[leader].1.fenced(write.clone()).unwrap();
    assert!(answer.succeeded);
    let follower = (leader + 1) % 3;
    assert_eq!(
        candidates[follower].1.fenced(write),
        Err(FencedError::NotLeader)
    );
    // The leader's own comparison failing is not a deposition.
    let create = Txn::new()
        .when(Compare::absent("/elect/state"))
        .then(Op::put("/elect/state", "2"))
        .otherwise(Op::Range(Range::key("/elect/state")));
    let answer = candidates[leader].1.fenced(create).unwrap();
    assert!(!answer.succeeded);
    let [OpResponse::Range(read)] = answer.responses.as_slice() else {
        panic!("{answer:?}");
    };
    assert_eq!(read.kvs[0].value, b"1");
    assert!(candidates[leader].1.is_leader());

    // A clean step-down revokes the lease, which takes the leader key with it at once: the
    // others need not wait for the TTL.
    let (_, stepping_down) = candidates.remove(leader);
    let term = stepping_down.term().unwrap();
    stepping_down.stop();
    let c = client(etcd.endpoints());
    let holder = c.get(&leader_key("/elect")).unwrap();
    assert!(
        holder.is_none_or(|kv| kv.create_revision != term.create_revision),
        "the leader key outlived a clean step-down"
    );
    let limit = Duration::from_secs(TTL_S + 2);
    let elected = eventually(limit, || candidates.iter().any(|(_, e)| e.is_leader()));
    assert!(
        elected,
        "no new leader within {limit:?} after a clean step-down"
    );
    let leader = one_leader(&candidates);
    let leader_url = settings("/elect", candidates[leader].0).advertise_url;
    let other = &candidates[1 - leader].1;
    let wanted = Role::Follower { leader_url };
    assert_eq!(
        other.wait_for(Duration::from_secs(2), |r| *r == wanted),
        wanted
    );
}

/// The index of the one leader among `candidates`; panics unless there is exactly one.
fn one_leader(candidates: &[(usize, Election)]) -> usize {
    let leaders: Vec<usize> = (0..candidates.len())
        .filter(|i| candidates[*i].1.is_leader())
        .collect();
    assert_eq!(leaders.len(), 1, "leaders: {leaders:?}");
    leaders[0]
}

/// Run as a child process by the tests below (`MEC_PLUGIN_TEST_CANDIDATE` = "<prefix>
/// <advertise_url> <endpoint>,..."): a candidate that prints every role it takes
/// (`role leader <lease> <create revision>`, `role follower <url>`, `role unknown`) and,
/// while it leads, writes `<prefix>/by/<its url>` every 50 ms through the fence, printing
/// `wrote <n>` for each write etcd took. It ends when its standard input closes.
#[test]
#[ignore = "a candidate process that other tests start"]
fn candidate_process() {
    let Ok(spec) = std::env::var("MEC_PLUGIN_TEST_CANDIDATE") else {
        return;
    };
    let [prefix, url, endpoints] = spec.split(' ').collect::<Vec<_>>()[..] else {
        panic!("MEC_PLUGIN_TEST_CANDIDATE: {spec}");
    };
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    let endpoints = endpoints.split(',').map(str::to_string).collect();
    let settings = Settings {
        prefix: prefix.to_string(),
        lease_ttl_s: TTL_S,
        advertise_url: url.to_string(),
    };
    let election = Election::start(Arc::new(client(endpoints)), &settings);
    let key = format!("{prefix}/by/{url}");
    let mut shown = String::new();
    for n in 0.. {
        let line = match (election.role(), election.term()) {
            (Role::Leader, Some(term)) => {
                format!("role leader {} {}", term.lease, term.create_revision)
            }
            (Role::Follower { leader_url }, _) => format!("role follower {leader_url}"),
            _ => "role unknown".to_string(),
        };
        if line != shown {
            println!("{line}");
            shown = line;
        }
        if election.is_leader() {
            let write = Txn::new().then(Op::put(key.clone(), format!("{n}")));
            if let Ok(answer) = election.fenced(write) {
                assert!(answer.succeeded);
                println!("wrote {n}");
            }
        }
        std::io::stdout().flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A candidate in a process of its own (this test binary running [`candidate_process`]).
struct Candidate {
    url: String,
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Candidate {
    fn start(cluster: &Cluster, prefix: &str, n: usize) -> Candidate {
        let url = format!("http://10.0.0.{n}:8080");
        let spec = format!("{prefix} {url} {}", cluster.endpoints().join(","));
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["candidate_process", "--exact", "--ignored", "--nocapture"])
            .env("MEC_PLUGIN_TEST_CANDIDATE", spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let collected = lines.clone();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                collected.lock().unwrap().push(line);
            }
        });
        Candidate { url, child, lines }
    }

    /// The last role it printed (`leader <lease> <revision>`, `follower <url>`, `unknown`).
    fn role(&self) -> Option<String> {
        let lines = self.lines.lock().unwrap();
        let last = lines.iter().rev().find_map(|l| l.strip_prefix("role "));
        last.map(str::to_string)
    }

    fn leads(&self) -> bool {
        self.role().is_some_and(|r| r.starts_with("leader "))
    }

    /// Its term while it leads.
    fn term(&self) -> Term {
        let role = self.role().unwrap();
        let mut words = role.split(' ').skip(1).map(|w| w.parse().unwrap());
        Term {
            lease: words.next().unwrap(),
            create_revision: words.next().unwrap(),
        }
    }

    fn printed(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    fn printed_since(&self, from: usize) -> Vec<String> {
        self.lines.lock().unwrap()[from..].to_vec()
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on a child this process started and has not reaped.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }
}

impl Drop for Candidate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits up to `limit` until exactly one of `candidates` other than `excluded` says it leads;
/// its index.
fn new_leader(candidates: &[Candidate], excluded: &[usize], limit: Duration) -> Option<usize> {
    let mut found = None;
    eventually(limit, || {
        let leaders: Vec<usize> = (0..candidates.len())
            .filter(|i| !excluded.contains(i) && candidates[*i].leads())
            .collect();
        found = leaders.first().copied().filter(|_| leaders.len() == 1);
        found.is_some()
    });
    found
}

#[test]
fn a_killed_leader_is_replaced_within_the_ttl_and_a_paused_one_can_no_longer_write() {
    let test = "a_killed_leader_is_replaced_within_the_ttl_and_a_paused_one_can_no_longer_write";
    let Some(etcd) = etcd(test, 3) else {
        return;
    };
    let prefix = "/failover";
    let mut candidates: Vec<Candidate> = (1..=3)
        .map(|n| Candidate::start(&etcd, prefix, n))
        .collect();
    let all_known = eventually(Duration::from_secs(15), || {
        candidates
            .iter()
            .all(|c| c.role().is_some_and(|r| r != "unknown"))
    });
    assert!(
        all_known,
        "roles: {:?}",
        candidates.iter().map(Candidate::role).collect::<Vec<_>>()
    );
    let first = new_leader(&candidates, &[], Duration::ZERO).expect("exactly one leader");

    // kill -9: another takes over within the TTL + 2 s.
    let killed = Instant::now();
    candidates[first].child.kill().unwrap();
    let limit = Duration::from_secs(TTL_S + 2);
    let second = new_leader(&candidates, &[first], limit).expect("a new leader after a kill");
    let took = killed.elapsed();
    assert!(took <= limit, "took {took:?}");

    // SIGSTOP the new leader past its lease: the third takes over.
    let c = client(etcd.endpoints());
    let by = format!("{prefix}/by/{}", candidates[second].url);
    assert!(eventually(Duration::from_secs(2), || value(&c, &by).is_some()));
    let term = candidates[second].term();
    candidates[second].signal(libc::SIGSTOP);
    let paused = Instant::now();
    let third = new_leader(&candidates, &[first, second], limit).expect("a leader after a pause");
    assert!(paused.elapsed() <= limit, "took {:?}", paused.elapsed());

    // etcd itself refuses the paused leader's term.
    let late = Txn::new().then(Op::put(by.clone(), "late"));
    let answer = c.txn(&fence(late, &leader_key(prefix), term)).unwrap();
    assert!(!answer.succeeded, "a deposed term passed the fence");
    let before = c.get(by.as_bytes()).unwrap().unwrap().mod_revision;

    // Resumed, it knows it does not lead and writes nothing more.
    let resumed_at = candidates[second].printed();
    candidates[second].signal(libc::SIGCONT);
    let follows = format!("follower {}", candidates[third].url);
    let learnt = eventually(Duration::from_secs(3), || {
        candidates[second].role().as_deref() == Some(follows.as_str())
    });
    assert!(learnt, "{:?}", candidates[second].printed_since(resumed_at));
    std::thread::sleep(Duration::from_millis(300));
    let after = c.get(by.as_bytes()).unwrap().unwrap().mod_revision;
    assert_eq!(before, after, "the deposed leader changed the state");
    let printed = candidates[second].printed_since(resumed_at);
    assert!(
        !printed.iter().any(|l| l.starts_with("wrote ")),
        "{printed:?}"
    );
    assert!(
        !printed.iter().any(|l| l.starts_with("role leader")),
        "{printed:?}"
    );
}

#[test]
fn with_one_member_of_three_down_work_goes_on_and_without_quorum_calls_fail_in_bounded_time() {
    let test =
        "with_one_member_of_three_down_work_goes_on_and_without_quorum_calls_fail_in_bounded_time";
    let Some(mut etcd) = etcd(test, 3) else {
        return;
    };
    let c = client(etcd.endpoints());
    c.put(b"/q/k", b"0", 0).unwrap();

    etcd.kill(0);
    // etcd may have to elect another leader first (election timeout 1 s).
    assert!(eventually(Duration::from_secs(5), || c
        .put(b"/q/k", b"1", 0)
        .is_ok()));
    for n in 2..=6 {
        let text = format!("{n}");
        c.put(b"/q/k", text.as_bytes(), 0).unwrap();
        assert_eq!(value(&c, "/q/k"), Some(text.into_bytes()));
    }

    etcd.kill(1);
    for n in 0..6 {
        let started = Instant::now();
        let result = if n % 2 == 0 {
            c.put(b"/q/k", b"lost?", 0).map(|_| ())
        } else {
            c.get(b"/q/k").map(|_| ())
        };
        assert!(
            matches!(
                result,
                Err(EtcdError::NoQuorum { .. } | EtcdError::Unreachable { .. })
            ),
            "{result:?}"
        );
        // The client's bound: one timeout per endpoint tried (the dead ones refuse at once,
        // the live one answers nothing in 1 s), twice for a read, with room for a busy machine.
        let took = started.elapsed();
        let bound = if n % 2 == 0 { CALL_BOUND } else { READ_BOUND };
        assert!(took < bound, "{took:?}");
    }

    etcd.restart(0);
    etcd.restart(1);
    etcd.wait_healthy();
    assert!(eventually(Duration::from_secs(10), || c
        .put(b"/q/k", b"7", 0)
        .is_ok()));
    assert_eq!(value(&c, "/q/k"), Some(b"7".to_vec()));
}

#[test]
fn a_paused_member_costs_a_call_one_timeout_and_the_client_moves_on() {
    let test = "a_paused_member_costs_a_call_one_timeout_and_the_client_moves_on";
    let Some(mut etcd) = etcd(test, 3) else {
        return;
    };
    let c = client(etcd.endpoints());
    c.put(b"/p/k", b"0", 0).unwrap();
    // Member 0, where every call starts, answers nothing but keeps its sockets open.
    etcd.pause(0);
    let mut outcomes = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        let call = Instant::now();
        let result = c.put(b"/p/k", b"1", 0);
        let took = call.elapsed();
        assert!(took < CALL_BOUND, "{took:?}: {result:?}");
        let ok = result.is_ok();
        outcomes.push(result);
        if ok {
            break;
        }
    }
    assert!(
        matches!(outcomes.first(), Some(Err(EtcdError::NoQuorum { .. }))),
        "the first call went to the paused member: {outcomes:?}"
    );
    assert!(matches!(outcomes.last(), Some(Ok(_))), "{outcomes:?}");
    for n in 2..5 {
        let text = format!("{n}");
        c.put(b"/p/k", text.as_bytes(), 0).unwrap();
        assert_eq!(value(&c, "/p/k"), Some(text.into_bytes()));
    }
    etcd.resume(0);
    etcd.wait_healthy();
}

#[test]
fn a_read_left_unanswered_by_a_paused_member_is_answered_by_the_next() {
    let test = "a_read_left_unanswered_by_a_paused_member_is_answered_by_the_next";
    let Some(etcd) = etcd(test, 3) else {
        return;
    };
    let c = client(etcd.endpoints());
    c.put(b"/r/k", b"0", 0).unwrap();
    // Member 0, where every call starts, answers nothing but keeps its sockets open: the read
    // costs one timeout (1 s), then the next member answers it (at once, if member 0 was not
    // etcd's own leader: see `lead_elsewhere_than`).
    etcd.lead_elsewhere_than(0);
    etcd.pause(0);
    let started = Instant::now();
    let read = c.get(b"/r/k");
    let took = started.elapsed();
    etcd.resume(0);
    assert_eq!(read.unwrap().map(|kv| kv.value), Some(b"0".to_vec()));
    assert!(
        took >= Duration::from_millis(900) && took < READ_BOUND,
        "the read took {took:?}"
    );
    // The client has moved on: the next read goes straight to a member that answers.
    let started = Instant::now();
    assert_eq!(value(&c, "/r/k"), Some(b"0".to_vec()));
    assert!(started.elapsed() < Duration::from_millis(900));
}

#[test]
fn a_leader_that_cannot_renew_steps_down_before_its_lease_can_have_run_out() {
    let test = "a_leader_that_cannot_renew_steps_down_before_its_lease_can_have_run_out";
    let Some(mut etcd) = etcd(test, 3) else {
        return;
    };
    let election = Election::start(Arc::new(client(etcd.endpoints())), &settings("/renew", 1));
    let role = election.wait_for(Duration::from_secs(10), |r| *r == Role::Leader);
    assert_eq!(role, Role::Leader);
    let term = election.term().unwrap();

    // Without quorum renewals stop: etcd's leader renews leases on its own (renewals are not
    // replicated) until it notices it lost its quorum (CheckQuorum: within two election
    // timeouts, 2 s); the leader must be gone within the TTL of the last renewal it had.
    etcd.kill(1);
    etcd.kill(2);
    let lost_quorum = Instant::now();
    let limit = Duration::from_secs(TTL_S + 2);
    let role = election.wait_for(limit + Duration::from_secs(1), |r| *r != Role::Leader);
    let took = lost_quorum.elapsed();
    assert_eq!(role, Role::Unknown);
    assert!(took < limit, "stepped down after {took:?}");
    assert_eq!(
        election.fenced(Txn::new().then(Op::put("/renew/state", "x"))),
        Err(FencedError::NotLeader)
    );

    // Quorum back: it leads again, in a new term (its old lease may still have been alive
    // on etcd's side, and is revoked), and the state was never written.
    etcd.restart(1);
    etcd.restart(2);
    etcd.wait_healthy();
    let role = election.wait_for(Duration::from_secs(TTL_S + 8), |r| *r == Role::Leader);
    assert_eq!(role, Role::Leader);
    assert_ne!(election.term().unwrap(), term);
    let c = client(etcd.endpoints());
    assert_eq!(value(&c, "/renew/state"), None);
}
