//! Leadership among the instances that share an etcd prefix: at most one leader at a time,
//! elected with a lease, and fencing, so that an instance that lost leadership can never change
//! the state.
//!
//! How (issue 15's contract):
//! - campaign: grant a lease of `lease_ttl_s`, then one transaction "create `<prefix>/leader`
//!   only if it does not exist (create revision 0), attached to the lease, its value this
//!   instance's `advertise_url`". Whoever's transaction creates the key leads; its *term* is the
//!   lease and the key's create revision;
//! - the leader renews its lease every ttl/3 on the election's own thread (`leader-election`,
//!   which does nothing else while leading) and checks that the key is still its own;
//! - a leader that cannot renew steps down *before* its lease can have run out: the lease is
//!   valid until the time the last successful keep-alive was *sent* plus the TTL etcd granted,
//!   less 5% for clocks that do not tick at quite the same rate (etcd counts from when it
//!   received it, later). [`Election::role`] compares with that deadline at every call, so even
//!   a thread that is held up cannot leave a stale `Leader` visible; a term that lapsed is over
//!   for good (a renewal answered after the deadline ends it, and the instance campaigns
//!   again), so the terms an instance leads in never overlap or come back;
//! - followers read the leader key every ttl/3 but at least every [`FOLLOW_EVERY`]
//!   (linearizable), learn the leader's `advertise_url`, and campaign when the key is gone (its
//!   lease expired or was revoked): a dead leader is replaced within `lease_ttl_s` + 1 s + a
//!   round trip, inside the contract's `lease_ttl_s` + 2 s whatever the TTL;
//! - fencing: [`Election::fenced`] (or [`fence`] with a [`Term`]) runs a transaction only if the
//!   leader key's create revision is still the term's. A deposed leader's write fails in etcd
//!   itself, whatever the deposed process believes;
//! - a clean step-down ([`Election::stop`], or dropping it) revokes the lease, which deletes the
//!   key at once: another instance takes over without waiting for the TTL.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::etcd::{
    Client, Cmp, Compare, EtcdError, KeyValue, Op, OpResponse, Range, Target, Txn, TxnResponse,
};

/// What the election needs to know about this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The instances' common prefix (`/mec-plugin`); the leader key is `<prefix>/leader`.
    pub prefix: String,
    /// The lease's TTL, in seconds (at least 1).
    pub lease_ttl_s: u64,
    /// This instance's northbound base URL, as the other instances reach it.
    pub advertise_url: String,
}

/// This instance's role, as `/healthz` and `mec_plugin_leader` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not known: etcd unreachable or without quorum, or the election has not finished.
    Unknown,
    Leader,
    /// Another instance leads; its `advertise_url`.
    Follower {
        leader_url: String,
    },
}

/// What makes an instance the leader: its lease and the leader key's create revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term {
    pub lease: i64,
    pub create_revision: i64,
}

impl Term {
    /// Whether the leader key `kv` is still this term's: created at its revision *and*
    /// attached to its lease. The revision alone is not enough: an etcd that lost its data
    /// (or was restored from a snapshot) counts revisions again from where it restarts, so
    /// another instance's leader key can be created at the same revision as this term's.
    pub fn holds(&self, kv: &KeyValue) -> bool {
        kv.create_revision == self.create_revision && kv.lease == self.lease
    }
}

/// Why a fenced transaction did not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FencedError {
    /// This instance is not the leader (any more); nothing was sent, or etcd refused it.
    NotLeader,
    Etcd(EtcdError),
}

impl std::fmt::Display for FencedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FencedError::NotLeader => write!(f, "this instance is not the leader"),
            FencedError::Etcd(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for FencedError {}

/// The leader key of `prefix`.
pub fn leader_key(prefix: &str) -> Vec<u8> {
    format!("{}/leader", prefix.trim_end_matches('/')).into_bytes()
}

/// `txn` guarded by `term`: its comparisons hold only while the leader key was created at the
/// term's revision and is attached to its lease ([`Term::holds`]), and a failure branch that
/// first reads the leader key (so that the caller can tell a deposed leader from its own
/// comparisons failing: see [`Election::fenced`]).
pub fn fence(txn: Txn, leader_key: &[u8], term: Term) -> Txn {
    let mut compare = vec![
        Compare::new(
            leader_key,
            Cmp::Equal,
            Target::CreateRevision(term.create_revision),
        ),
        Compare::new(leader_key, Cmp::Equal, Target::Lease(term.lease)),
    ];
    compare.extend(txn.compare);
    let mut failure = vec![Op::Range(Range::key(leader_key))];
    failure.extend(txn.failure);
    Txn {
        compare,
        success: txn.success,
        failure,
    }
}

/// The election's state, behind one mutex (held only to read or change it).
#[derive(Debug)]
struct State {
    role: Role,
    term: Option<Term>,
    /// While leading: when this instance must consider itself deposed.
    valid_until: Instant,
    stop: bool,
    /// Why the role is unknown, when an etcd call of the election said so (a refused
    /// password, no quorum, a TLS failure): cleared once a role is known.
    why_unknown: Option<String>,
}

struct Shared {
    client: Arc<Client>,
    /// Failed etcd calls of the election (see [`Election::start_counting`]).
    errors: Arc<AtomicU64>,
    key: Vec<u8>,
    url: String,
    ttl: Duration,
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::util::lock(&self.state)
    }

    fn set(&self, role: Role, term: Option<Term>, valid_until: Instant) {
        let mut state = self.lock();
        if role != Role::Unknown {
            state.why_unknown = None;
        }
        if state.role != role {
            match &role {
                Role::Leader => info!(
                    "leading the instances of {} (lease {:x})",
                    String::from_utf8_lossy(&self.key),
                    term.map_or(0, |t| t.lease)
                ),
                Role::Follower { leader_url } => info!("following the leader at {leader_url}"),
                Role::Unknown => match &state.why_unknown {
                    Some(why) => warn!("leader unknown: {why}"),
                    None => warn!("leader unknown: etcd unreachable or without quorum"),
                },
            }
        }
        state.role = role;
        state.term = term;
        state.valid_until = valid_until;
        self.changed.notify_all();
    }

    /// The election's etcd call `what` failed: the role is unknown, and says why.
    fn failed(&self, what: &str, e: &EtcdError) {
        debug_failure(self, what, e);
        self.lock().why_unknown = Some(format!("{what} in etcd failed: {e}"));
        self.set(Role::Unknown, None, Instant::now());
    }

    /// Sleeps up to `pause`, or less if asked to stop; whether to stop.
    fn pause(&self, pause: Duration) -> bool {
        let state = self.lock();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, pause, |s| !s.stop)
            .unwrap_or_else(|e| e.into_inner());
        state.stop
    }

    fn stopping(&self) -> bool {
        self.lock().stop
    }
}

/// This instance's part in the election: a thread that campaigns, follows or renews.
pub struct Election {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Election {
    /// Starts campaigning for the leadership of `settings.prefix` on its own thread.
    pub fn start(client: Arc<Client>, settings: &Settings) -> Election {
        Election::start_counting(client, settings, Arc::default())
    }

    /// [`start`](Election::start), counting its failed etcd calls (a campaign's, a renewal's,
    /// the leader key's check) in `errors` (`mec_plugin_store_errors_total`).
    pub fn start_counting(
        client: Arc<Client>,
        settings: &Settings,
        errors: Arc<AtomicU64>,
    ) -> Election {
        let shared = Arc::new(Shared {
            client,
            errors,
            key: leader_key(&settings.prefix),
            url: settings.advertise_url.clone(),
            ttl: Duration::from_secs(settings.lease_ttl_s.max(1)),
            state: Mutex::new(State {
                role: Role::Unknown,
                term: None,
                valid_until: Instant::now(),
                stop: false,
                why_unknown: None,
            }),
            changed: Condvar::new(),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("leader-election".into())
                .spawn(move || run(&shared))
                .expect("spawning the leader-election thread")
        };
        Election {
            shared,
            thread: Some(thread),
        }
    }

    /// The role now. A leader whose lease may have run out (its renewal is late) is `Unknown`.
    pub fn role(&self) -> Role {
        let state = self.shared.lock();
        match state.role {
            Role::Leader if Instant::now() >= state.valid_until => Role::Unknown,
            ref role => role.clone(),
        }
    }

    /// Why no role is known, when the election's last etcd call said why (see
    /// [`Role::Unknown`]); `None` once a role is known.
    pub fn why_unknown(&self) -> Option<String> {
        self.shared.lock().why_unknown.clone()
    }

    /// The term while this instance leads.
    pub fn term(&self) -> Option<Term> {
        let state = self.shared.lock();
        match state.role {
            Role::Leader if Instant::now() < state.valid_until => state.term,
            _ => None,
        }
    }

    pub fn is_leader(&self) -> bool {
        self.term().is_some()
    }

    /// The leader key.
    pub fn key(&self) -> &[u8] {
        &self.shared.key
    }

    /// Waits up to `timeout` for a role that `wanted` accepts; the role at the end.
    pub fn wait_for(&self, timeout: Duration, wanted: impl Fn(&Role) -> bool) -> Role {
        let deadline = Instant::now() + timeout;
        loop {
            let role = self.role();
            let now = Instant::now();
            if wanted(&role) || now >= deadline {
                return role;
            }
            // Woken by every change; the role of a leader also lapses with time alone, when
            // its lease may have run out.
            let state = self.shared.lock();
            let mut pause = (deadline - now).min(Duration::from_millis(100));
            if state.role == Role::Leader {
                pause = pause.min(state.valid_until.saturating_duration_since(now));
            }
            let _ = self.shared.changed.wait_timeout(state, pause);
        }
    }

    /// Runs `txn` only while this instance leads (see [`fence`]). The answer is the
    /// transaction's as [`Client::txn`] gives it: `succeeded` false when the caller's own
    /// comparisons did not hold, its `responses` those of the caller's failure operations.
    /// When the leader key is no longer this term's, the instance steps down and the answer is
    /// [`FencedError::NotLeader`]; nothing was changed.
    pub fn fenced(&self, txn: Txn) -> Result<TxnResponse, FencedError> {
        let term = self.term().ok_or(FencedError::NotLeader)?;
        let mut answer = self
            .shared
            .client
            .txn(&fence(txn, &self.shared.key, term))
            .map_err(FencedError::Etcd)?;
        if answer.succeeded {
            return Ok(answer);
        }
        let holder = match answer.responses.first() {
            Some(OpResponse::Range(range)) => range.kvs.first().cloned(),
            _ => None,
        };
        match holder {
            Some(kv) if term.holds(&kv) => {
                answer.responses.remove(0);
                Ok(answer)
            }
            holder => {
                let role = match holder {
                    Some(kv) => Role::Follower {
                        leader_url: String::from_utf8_lossy(&kv.value).into_owned(),
                    },
                    None => Role::Unknown,
                };
                warn!("deposed: the leader key is no longer this instance's");
                self.shared.set(role, None, Instant::now());
                Err(FencedError::NotLeader)
            }
        }
    }

    /// Steps down cleanly: stops the thread, which revokes the lease (the leader key goes with
    /// it) if it holds one.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The longest pause between two reads of the leader key by a follower. ttl/3 alone would let a
/// dead leader's replacement take `lease_ttl_s` + ttl/3, past the contract's `lease_ttl_s` + 2 s
/// from a TTL of 6 s on; a linearizable read a second is nothing for etcd.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// The election thread: campaigns or follows until it leads, then renews, until stopped.
fn run(shared: &Shared) {
    // Leases this instance held and must not leave behind, revoked when etcd answers again
    // (while not leading, so that they never hold up a renewal).
    let mut stale: Vec<i64> = Vec::new();
    let mut leading: Option<Term> = None;
    while !shared.stopping() {
        let pause = match leading {
            Some(term) => match renew(shared, term) {
                Renewal::Renewed(pause) | Renewal::Retry(pause) => pause,
                Renewal::Lost => {
                    stale.push(term.lease);
                    leading = None;
                    continue;
                }
            },
            None => {
                stale.retain(|id| !revoked(shared, *id));
                leading = campaign(shared, &mut stale);
                (shared.ttl / 3).min(FOLLOW_EVERY)
            }
        };
        if shared.pause(pause) {
            break;
        }
    }
    stale.extend(leading.map(|term| term.lease));
    shared.set(Role::Unknown, None, Instant::now());
    for id in stale {
        match shared.client.lease_revoke(id) {
            Ok(()) | Err(EtcdError::LeaseNotFound { .. }) => {
                info!("stepped down: lease {id:x} revoked")
            }
            Err(e) => warn!("stepping down: lease {id:x} not revoked (it expires by itself): {e}"),
        }
    }
}

/// Whether a stale lease is gone (revoked now, or no longer there).
fn revoked(shared: &Shared, id: i64) -> bool {
    matches!(
        shared.client.lease_revoke(id),
        Ok(()) | Err(EtcdError::LeaseNotFound { .. })
    )
}

/// How long a lease whose renewal was sent at `sent` with `ttl_s` granted can be relied on:
/// until `sent + ttl`, less 5% (clock rates).
fn valid_until(sent: Instant, ttl_s: i64) -> Instant {
    let ttl = Duration::from_secs(ttl_s.max(0) as u64);
    sent + ttl - ttl / 20
}

/// One campaign round: reads the leader key; follows its holder, or, when there is none,
/// tries to create it with a new lease. Returns the lease and term when this instance won.
fn campaign(shared: &Shared, stale: &mut Vec<i64>) -> Option<Term> {
    let client = &shared.client;
    match client.get(&shared.key) {
        Ok(Some(kv)) => {
            let leader_url = String::from_utf8_lossy(&kv.value).into_owned();
            shared.set(Role::Follower { leader_url }, None, Instant::now());
            return None;
        }
        Ok(None) => {}
        Err(e) => {
            shared.failed("reading the leader key", &e);
            return None;
        }
    }
    let sent = Instant::now();
    let lease = match client.lease_grant(shared.ttl.as_secs() as i64) {
        Ok(lease) => lease,
        Err(e) => {
            shared.failed("granting a lease", &e);
            return None;
        }
    };
    let txn = Txn::new()
        .when(Compare::absent(shared.key.clone()))
        .then(Op::Put {
            key: shared.key.clone(),
            value: shared.url.clone().into_bytes(),
            lease: lease.id,
        })
        .otherwise(Op::Range(Range::key(shared.key.clone())));
    match client.txn(&txn) {
        Ok(answer) if answer.succeeded => {
            let term = Term {
                lease: lease.id,
                create_revision: answer.revision,
            };
            shared.set(Role::Leader, Some(term), valid_until(sent, lease.ttl_s));
            Some(term)
        }
        Ok(answer) => {
            stale.push(lease.id);
            let leader_url = match answer.responses.first() {
                Some(OpResponse::Range(range)) => range.kvs.first(),
                _ => None,
            }
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
            let role = leader_url.map_or(Role::Unknown, |leader_url| Role::Follower { leader_url });
            shared.set(role, None, Instant::now());
            None
        }
        Err(e) => {
            // The key may have been created: revoking the lease deletes it again.
            stale.push(lease.id);
            shared.failed("campaigning", &e);
            None
        }
    }
}

enum Renewal {
    /// Renewed; the next renewal after this pause.
    Renewed(Duration),
    /// Not renewed, but the lease may still be relied on: try again after this pause.
    Retry(Duration),
    /// Leadership lost (lease gone, key not ours, or the lease may have run out): stepped down.
    Lost,
}

/// One renewal of the leader's lease, then a check that the leader key is still its own.
fn renew(shared: &Shared, term: Term) -> Renewal {
    let deadline = match shared.lock() {
        // Deposed meanwhile (a fenced write found the key taken).
        state if state.term != Some(term) => return Renewal::Lost,
        state => state.valid_until,
    };
    let sent = Instant::now();
    if sent >= deadline {
        return step_down(shared, "the lease could not be renewed in time");
    }
    // Each attempt is bounded by ttl/3, so that a member that does not answer leaves time
    // to renew through another (the client starts at the next endpoint after a timeout).
    let timeout = (deadline - sent).min(shared.ttl / 3);
    match shared.client.lease_keepalive(term.lease, timeout) {
        Ok(ttl_s) => {
            let until = valid_until(sent, ttl_s);
            match shared.client.get(&shared.key) {
                Ok(Some(kv)) if term.holds(&kv) => {}
                Ok(_) => return step_down(shared, "the leader key is no longer this instance's"),
                // etcd lost data: this term's records may be gone. Stepping down revokes the
                // lease, so that an instance restarted to accept what etcd holds can lead.
                Err(e @ EtcdError::WentBack { .. }) => return step_down(shared, &e.to_string()),
                // The renewal counts; the key is checked again next time.
                Err(e) => debug_failure(shared, "checking the leader key", &e),
            }
            let mut state = shared.lock();
            if state.term != Some(term) {
                return Renewal::Lost;
            }
            if Instant::now() >= state.valid_until {
                // `role` has said `Unknown` since: a term, once over, never comes back.
                drop(state);
                return step_down(
                    shared,
                    "the lease was renewed only after it could have run out",
                );
            }
            state.valid_until = until;
            drop(state);
            Renewal::Renewed((shared.ttl / 3).saturating_sub(sent.elapsed()))
        }
        Err(EtcdError::LeaseNotFound { .. }) => step_down(shared, "the lease expired"),
        Err(e) => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            warn!("the leader's lease was not renewed: {e}");
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return step_down(shared, "the lease could not be renewed in time");
            }
            Renewal::Retry(left.min(shared.ttl / 10))
        }
    }
}

fn step_down(shared: &Shared, why: &str) -> Renewal {
    warn!("stepping down as leader: {why}");
    shared.set(Role::Unknown, None, Instant::now());
    Renewal::Lost
}

/// A failed etcd call of the election: counted, and logged at debug level.
fn debug_failure(shared: &Shared, what: &str, e: &EtcdError) {
    shared.errors.fetch_add(1, Ordering::Relaxed);
    debug!("leader election: {what} failed: {e}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by an audit: the election's failed calls (a lease not renewed, among others)
    /// were not in `mec_plugin_store_errors_total`, which says it counts failed etcd calls.
    #[test]
    fn the_election_counts_its_failed_etcd_calls() {
        let client = Client::new(crate::etcd::Options {
            endpoints: vec!["http://127.0.0.1:1".into()],
            ca_pem: None,
            user: None,
            password: None,
            timeout: Duration::from_millis(200),
        })
        .unwrap();
        let settings = Settings {
            prefix: "/count".into(),
            lease_ttl_s: 1,
            advertise_url: "http://127.0.0.1:9".into(),
        };
        let errors = Arc::new(AtomicU64::new(0));
        let election = Election::start_counting(Arc::new(client), &settings, errors.clone());
        let deadline = Instant::now() + Duration::from_secs(5);
        while errors.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(errors.load(Ordering::Relaxed) >= 1);
        assert_eq!(election.role(), Role::Unknown);
        election.stop();
    }

    #[test]
    fn the_leader_key_sits_under_the_prefix() {
        assert_eq!(leader_key("/mec-plugin"), b"/mec-plugin/leader");
        assert_eq!(leader_key("/mec-plugin/"), b"/mec-plugin/leader");
    }

    #[test]
    fn a_fenced_transaction_first_compares_the_terms_revision_and_lease_and_reads_the_key_on_failure()
     {
        let term = Term {
            lease: 5,
            create_revision: 42,
        };
        let txn = Txn::new()
            .when(Compare::absent("/p/r/1"))
            .then(Op::put("/p/r/1", "v"))
            .otherwise(Op::Range(Range::key("/p/r/1")));
        let fenced = fence(txn, b"/p/leader", term);
        assert_eq!(
            fenced.compare,
            vec![
                Compare::new("/p/leader", Cmp::Equal, Target::CreateRevision(42)),
                Compare::new("/p/leader", Cmp::Equal, Target::Lease(5)),
                Compare::absent("/p/r/1"),
            ]
        );
        assert_eq!(fenced.success, vec![Op::put("/p/r/1", "v")]);
        assert_eq!(
            fenced.failure,
            vec![
                Op::Range(Range::key("/p/leader")),
                Op::Range(Range::key("/p/r/1"))
            ]
        );
    }

    #[test]
    fn a_leader_key_of_the_same_revision_on_another_lease_is_not_the_term_s() {
        // What an etcd that lost its data gives: revisions counted again from 1, so another
        // instance's leader key may be created at the revision of this term's.
        let term = Term {
            lease: 5,
            create_revision: 2,
        };
        let key = |create_revision, lease| KeyValue {
            key: b"/p/leader".to_vec(),
            value: b"http://127.0.0.1:1".to_vec(),
            create_revision,
            mod_revision: create_revision,
            version: 1,
            lease,
        };
        assert!(term.holds(&key(2, 5)));
        assert!(!term.holds(&key(2, 6)), "another lease");
        assert!(!term.holds(&key(3, 5)), "another revision");
    }

    #[test]
    fn a_lease_is_relied_on_until_its_ttl_from_the_send_less_five_percent() {
        let sent = Instant::now();
        assert_eq!(valid_until(sent, 2), sent + Duration::from_millis(1900));
        assert_eq!(valid_until(sent, 5), sent + Duration::from_millis(4750));
        assert_eq!(valid_until(sent, 0), sent);
    }
}
