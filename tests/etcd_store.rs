//! The store on etcd (issue 15) against real etcd started by the tests (`support/etcd.rs`):
//! records round-trip in creation order into the store of the next term and into a follower's
//! read; concurrent writers share transactions; a deposed term writes nothing more; an etcd
//! member killed under load is survived by retrying; records too large for one transaction
//! are refused whole. Skipped, saying so, where etcd is not installed.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mec_plugin::etcd::{Client, Range};
use mec_plugin::leader::{Election, Settings, leader_key};
use mec_plugin::mep::Step;
use mec_plugin::model::Status;
use mec_plugin::store::{Fence, Record, Store};
use support::etcd::{Cluster, MISSING, step_down};

/// `size` etcd members, or `None` (after saying the test is skipped) without etcd.
fn etcd(test: &str, size: usize) -> Option<Cluster> {
    let cluster = Cluster::start(test, size);
    if cluster.is_none() {
        support::skip(test, MISSING);
    }
    cluster
}

fn client(cluster: &Cluster) -> Arc<Client> {
    Arc::new(cluster.client(Duration::from_secs(1)))
}

/// An election on `prefix` that leads (waited for).
fn leader(client: &Arc<Client>, prefix: &str, ttl_s: u64) -> Arc<Election> {
    let election = Election::start(
        client.clone(),
        &Settings {
            prefix: prefix.into(),
            lease_ttl_s: ttl_s,
            advertise_url: "http://127.0.0.1:1/MEC/v1".into(),
        },
    );
    election.wait_for(Duration::from_secs(15), |_| election.is_leader());
    assert!(election.is_leader(), "{:?}", election.role());
    Arc::new(election)
}

/// The leader's store of `election`'s current term.
fn open(client: &Arc<Client>, prefix: &str, election: &Arc<Election>) -> Store {
    let fence = Fence {
        election: election.clone(),
        term: election.term().expect("leading"),
    };
    Store::open_etcd(client.clone(), prefix, fence).unwrap()
}

/// A record with two steps, one applied.
fn record(id: &str, region: &str) -> Record {
    let mut r = Record::new(
        id.into(),
        region.into(),
        Arc::from(format!(r#"{{"appDNSRule":[{{"dnsRuleId":"{id}"}}]}}"#)),
        Status::Pending,
        Arc::from([
            Step::new("DNS rule", &format!("/dns/{id}"), r#"{"x":1}"#),
            Step::new("raw", "/t", "not json"),
        ]),
        1,
        1_700_000_000_000,
    );
    r.platform = Some(Arc::from("http://mep"));
    r
}

/// A record's id, status, applied count, detail and kept steps.
type Summary = (String, Status, usize, Option<String>, Vec<usize>);

/// Every record's [`Summary`], in listing order.
fn summary(store: &Store) -> Vec<Summary> {
    store
        .list(None)
        .iter()
        .map(|r| {
            (
                r.id.to_string(),
                r.status,
                r.applied,
                r.detail.as_deref().map(str::to_string),
                r.kept.as_deref().unwrap_or(&[]).to_vec(),
            )
        })
        .collect()
}

/// The store's revision now.
fn revision(client: &Client) -> i64 {
    client.range(&Range::key("/none")).unwrap().revision
}

#[test]
fn records_round_trip_in_creation_order_into_the_next_term_and_a_followers_read() {
    let test = "records_round_trip_in_creation_order_into_the_next_term_and_a_followers_read";
    let Some(cluster) = etcd(test, 1) else {
        return;
    };
    let c = client(&cluster);
    let prefix = "/t-roundtrip";
    let first = leader(&c, prefix, 2);
    let store = open(&c, prefix, &first);
    assert!(store.is_empty());
    // Ids out of key order: the creation order is what counts.
    for id in ["m", "b", "z", "a", "q"] {
        store
            .insert(record(id, if id < "n" { "1" } else { "2" }))
            .unwrap();
    }
    store
        .update("b", |r| {
            r.status = Status::Failed;
            r.detail = Some("why \"quoted\"".into());
            r.last_modified = 9;
        })
        .unwrap();
    store.update("z", |r| r.created(5)).unwrap();
    assert!(store.keep_unless_changed_by_another("a", 0, 7).unwrap());
    store.remove("q").unwrap();
    // A change of runtime fields only writes nothing.
    let before = revision(&c);
    store.update("m", |r| r.next_attempt = 99).unwrap();
    assert_eq!(revision(&c), before);
    let expected = summary(&store);
    assert_eq!(
        expected.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ["m", "b", "z", "a"]
    );
    let follower = Store::read_etcd(&c, prefix).unwrap();
    assert_eq!(summary(&follower), expected, "a follower's read");
    let a = follower.get("a").unwrap();
    assert_eq!(a.steps[1].body(), "not json");
    assert_eq!(&*a.request, r#"{"appDNSRule":[{"dnsRuleId":"a"}]}"#);
    assert_eq!(a.platform.as_deref(), Some("http://mep"));
    assert_eq!(follower.list(Some("2")).len(), 1);
    let one = Store::read_etcd_record(&c, prefix, "b").unwrap().unwrap();
    assert_eq!(
        (one.status, one.detail.as_deref()),
        (Status::Failed, Some("why \"quoted\""))
    );
    assert!(Store::read_etcd_record(&c, prefix, "q").unwrap().is_none());

    // The next term (a clean step-down, another instance leads) loads the same records.
    drop(store);
    step_down(first);
    let second = leader(&c, prefix, 2);
    let store = open(&c, prefix, &second);
    assert_eq!(summary(&store), expected, "the next term's store");
    store.insert(record("c", "1")).unwrap();
    store.update("m", |r| r.created(11)).unwrap();
    let ids: Vec<String> = summary(&Store::read_etcd(&c, prefix).unwrap())
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(ids, ["m", "b", "z", "a", "c"], "an update keeps the place");
}

#[test]
fn a_large_requests_steps_write_its_mutable_part_not_the_whole_record_again() {
    let test = "a_large_requests_steps_write_its_mutable_part_not_the_whole_record_again";
    let Some(cluster) = etcd(test, 1) else {
        return;
    };
    let c = client(&cluster);
    let prefix = "/t-progress";
    let election = leader(&c, prefix, 5);
    let store = open(&c, prefix, &election);
    // 1,000 steps of ~250 bytes: a record of ~300 kB.
    let steps: Arc<[Step]> = (0..1000)
        .map(|i| {
            Step::new(
                &format!("DNS rule {i}"),
                &format!("/dns/{i}"),
                &"x".repeat(250),
            )
        })
        .collect();
    let mut big = Record::new(
        "big".into(),
        "1".into(),
        Arc::from("{}"),
        Status::Pending,
        steps,
        0,
        1,
    );
    big.platform = Some(Arc::from("http://mep"));
    store.insert(big).unwrap();
    let record_key = "/t-progress/records/big";
    let created = c.get(record_key.as_bytes()).unwrap().unwrap();
    assert!(created.value.len() > 280_000, "{}", created.value.len());
    for applied in 1..=100 {
        store
            .update("big", |r| {
                r.applied = applied;
                r.last_modified = 1 + applied as i64;
            })
            .unwrap();
    }
    store.update("big", |r| r.created(500)).unwrap();
    // The whole record was written once; each step wrote the small mutable part.
    let record = c.get(record_key.as_bytes()).unwrap().unwrap();
    assert_eq!(
        (record.version, record.mod_revision),
        (1, created.mod_revision)
    );
    let progress = c.get(b"/t-progress/progress/big").unwrap().unwrap();
    assert!(progress.version >= 2, "{progress:?}");
    assert!(
        progress.value.len() < 200,
        "{}",
        String::from_utf8_lossy(&progress.value)
    );
    // Read back whole: by a follower, alone, and by the next term.
    let expected = summary(&store);
    assert_eq!(expected[0].1, Status::Created);
    assert_eq!(summary(&Store::read_etcd(&c, prefix).unwrap()), expected);
    let one = Store::read_etcd_record(&c, prefix, "big").unwrap().unwrap();
    assert_eq!(
        (one.status, one.applied, one.steps.len()),
        (Status::Created, 100, 1000)
    );
    drop(store);
    step_down(election);
    let next = leader(&c, prefix, 5);
    let store = open(&c, prefix, &next);
    assert_eq!(summary(&store), expected, "the next term's store");
    // A removal deletes both keys.
    store.remove("big").unwrap();
    for part in ["records", "progress"] {
        let key = format!("{prefix}/{part}/big");
        assert!(c.get(key.as_bytes()).unwrap().is_none(), "{key} is left");
    }
}

#[test]
fn concurrent_writers_share_transactions_and_the_order_is_the_leaders() {
    let test = "concurrent_writers_share_transactions_and_the_order_is_the_leaders";
    let Some(cluster) = etcd(test, 1) else {
        return;
    };
    let c = client(&cluster);
    let prefix = "/t-batch";
    let election = leader(&c, prefix, 5);
    let store = Arc::new(open(&c, prefix, &election));
    let before = revision(&c);
    const THREADS: usize = 8;
    const EACH: usize = 40;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for n in 0..EACH {
                    let id = format!("r{t}-{n}");
                    store.insert(record(&id, "1")).unwrap();
                    store.update(&id, |r| r.sending(1)).unwrap();
                    store.update(&id, |r| r.created(2)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let changes = (THREADS * EACH * 3) as i64;
    let transactions = revision(&c) - before;
    eprintln!("{changes} changes in {transactions} transactions");
    assert!(
        transactions < changes / 2,
        "{changes} changes took {transactions} transactions"
    );
    let read = Store::read_etcd(&c, prefix).unwrap();
    assert_eq!(read.len(), THREADS * EACH);
    assert_eq!(
        summary(&read),
        summary(&store),
        "same records, same order (ties of one transaction included)"
    );
    assert!(
        read.list(None)
            .iter()
            .all(|r| r.status == Status::Created && r.applied == 2)
    );
}

/// Records created together (one transaction, one create revision) keep their order through
/// terms that update some of them and create more.
#[test]
fn the_creation_order_of_records_sharing_a_transaction_survives_updates_in_later_terms() {
    let test =
        "the_creation_order_of_records_sharing_a_transaction_survives_updates_in_later_terms";
    let Some(cluster) = etcd(test, 1) else {
        return;
    };
    let c = client(&cluster);
    let prefix = "/t-ties";
    let ids = |store: &Store| -> Vec<String> {
        store.list(None).iter().map(|r| r.id.to_string()).collect()
    };
    let election = leader(&c, prefix, 5);
    let store = Arc::new(open(&c, prefix, &election));
    // Some records before, so that a later term's numbering differs from this one's.
    for n in 0..5 {
        store.insert(record(&format!("early{n}"), "1")).unwrap();
    }
    std::thread::scope(|s| {
        for t in 0..8 {
            let store = &store;
            s.spawn(move || {
                for n in 0..10 {
                    store.insert(record(&format!("t{t}-{n}"), "1")).unwrap();
                }
            });
        }
    });
    for n in 0..5 {
        store.remove(&format!("early{n}")).unwrap();
    }
    let order = ids(&store);
    drop(store);
    let mut sharing = 0;
    let read = c.range(&Range::prefix("/t-ties/records/")).unwrap();
    let mut revisions: Vec<i64> = read.kvs.iter().map(|kv| kv.create_revision).collect();
    revisions.sort();
    revisions.dedup();
    sharing += read.kvs.len() - revisions.len();
    assert!(sharing > 0, "some records share a transaction");
    for round in 0..2 {
        let term = election.term().unwrap();
        c.lease_revoke(term.lease).unwrap();
        election.wait_for(Duration::from_secs(15), |_| {
            election.term().is_some_and(|t| t != term)
        });
        let store = open(&c, prefix, &election);
        assert_eq!(ids(&store), order, "round {round}");
        // Every third record changes; new ones come last.
        for id in order.iter().skip(round).step_by(3) {
            store.update(id, |r| r.created(100 + round as i64)).unwrap();
        }
        assert_eq!(ids(&Store::read_etcd(&c, prefix).unwrap()), order);
    }
    let store = open(&c, prefix, &election);
    store.insert(record("last", "1")).unwrap();
    let mut expected = order.clone();
    expected.push("last".into());
    assert_eq!(ids(&Store::read_etcd(&c, prefix).unwrap()), expected);
}

#[test]
fn a_deposed_term_writes_nothing_more() {
    let Some(cluster) = etcd("a_deposed_term_writes_nothing_more", 1) else {
        return;
    };
    let c = client(&cluster);
    let prefix = "/t-deposed";
    let election = leader(&c, prefix, 2);
    let store = open(&c, prefix, &election);
    store.insert(record("kept", "1")).unwrap();
    assert!(store.writable().is_ok());
    // The lease is revoked behind the leader's back (as when etcd expired it); another
    // instance takes the key at once.
    c.lease_revoke(election.term().unwrap().lease).unwrap();
    let other = leader(&c, prefix, 2);
    let e = store.insert(record("lost", "1")).unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    let e = store.update("kept", |r| r.created(3)).unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    assert!(store.writable().is_err());
    assert!(store.failure().is_some(), "the writer says why");
    let read = Store::read_etcd(&c, prefix).unwrap();
    assert_eq!(summary(&read).len(), 1);
    assert_eq!(read.get("kept").unwrap().status, Status::Pending);
    // A store opened with the old term is refused; the new leader's works.
    let stale = Fence {
        election: election.clone(),
        term: mec_plugin::leader::Term {
            lease: 1,
            create_revision: 1,
        },
    };
    assert!(Store::open_etcd(c.clone(), prefix, stale).is_err());
    let fresh = open(&c, prefix, &other);
    fresh.update("kept", |r| r.created(4)).unwrap();
    assert_eq!(
        Store::read_etcd(&c, prefix)
            .unwrap()
            .get("kept")
            .unwrap()
            .status,
        Status::Created
    );
}

#[test]
fn a_lapsed_term_stops_the_store_before_any_call() {
    let Some(cluster) = etcd("a_lapsed_term_stops_the_store_before_any_call", 1) else {
        return;
    };
    let c = client(&cluster);
    let prefix = "/t-lapsed";
    let election = leader(&c, prefix, 2);
    let store = open(&c, prefix, &election);
    store.insert(record("a", "1")).unwrap();
    // The lease is revoked behind the leader's back: its next renewal ends the term.
    // (It may campaign again and lead a new term: this store stays the old term's.)
    let term = election.term().unwrap();
    c.lease_revoke(term.lease).unwrap();
    assert!(support::eventually(Duration::from_secs(5), || election
        .term()
        != Some(term)));
    assert!(store.writable().is_err());
    let e = store.insert(record("b", "1")).unwrap_err();
    assert!(e.to_string().contains("term"), "{e}");
    assert!(store.get("b").is_none(), "refused before the map changed");
    assert_eq!(
        c.range(&Range::prefix("/t-lapsed/records/"))
            .unwrap()
            .kvs
            .len(),
        1,
        "nothing landed"
    );
}

#[test]
fn the_leader_key_held_by_another_term_refuses_the_store_and_records_too_large_are_refused() {
    let test =
        "the_leader_key_held_by_another_term_refuses_the_store_and_records_too_large_are_refused";
    let Some(cluster) = etcd(test, 1) else {
        return;
    };
    let c = client(&cluster);
    let prefix = "/t-large";
    let election = leader(&c, prefix, 5);
    let store = open(&c, prefix, &election);
    let mut big = record("big", "1");
    big.request = Arc::from(format!(r#"{{"x":"{}"}}"#, "y".repeat(900_000)));
    store.insert(big).unwrap();
    let mut huge = record("huge", "1");
    huge.request = Arc::from(format!(r#"{{"x":"{}"}}"#, "y".repeat(1_200_000)));
    let e = store.insert(huge).unwrap_err();
    assert!(
        matches!(e, mec_plugin::store::StoreError::TooLarge(_))
            && e.to_string().contains("larger than one etcd transaction"),
        "{e}"
    );
    assert!(store.get("huge").is_none());
    // Small ones around a large one: the large one goes alone, all commit.
    std::thread::scope(|s| {
        for t in 0..4 {
            let store = &store;
            s.spawn(move || {
                for n in 0..5 {
                    let mut r = record(&format!("s{t}-{n}"), "1");
                    if n == 2 {
                        r.request = Arc::from(format!(r#"{{"x":"{}"}}"#, "y".repeat(500_000)));
                    }
                    store.insert(r).unwrap();
                }
            });
        }
    });
    let read = Store::read_etcd(&c, prefix).unwrap();
    assert_eq!(read.len(), 21);
    assert_eq!(read.get("big").unwrap().request.len(), 900_008);
    assert!(store.writable().is_ok());
    assert_eq!(leader_key(prefix), b"/t-large/leader");
}

#[test]
fn an_etcd_member_killed_under_writes_is_survived_by_retrying() {
    let test = "an_etcd_member_killed_under_writes_is_survived_by_retrying";
    let Some(mut cluster) = etcd(test, 3) else {
        return;
    };
    let c = client(&cluster);
    let prefix = "/t-kill";
    let election = leader(&c, prefix, 5);
    let store = Arc::new(open(&c, prefix, &election));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut acknowledged = Vec::new();
                // Bounded in count and time.
                let started = Instant::now();
                for n in 0..10_000 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed)
                        || started.elapsed() > Duration::from_secs(30)
                    {
                        break;
                    }
                    let id = format!("k{t}-{n}");
                    store.insert(record(&id, "1")).unwrap();
                    acknowledged.push(id);
                    std::thread::sleep(Duration::from_millis(5));
                }
                acknowledged
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // etcd's own leader: its followers answer "no leader" until they elect another.
    let killed = raft_leader(&cluster);
    cluster.kill(killed);
    let before = store.len();
    std::thread::sleep(Duration::from_secs(3));
    assert!(store.len() > before, "writes go on after the kill");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acknowledged: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("no write failed"))
        .collect();
    assert!(store.writable().is_ok(), "{:?}", store.failure());
    let read = Store::read_etcd(&c, prefix).unwrap();
    for id in &acknowledged {
        assert!(read.get(id).is_some(), "acknowledged {id} lost");
    }
    assert_eq!(read.len(), acknowledged.len());
    cluster.restart(killed);
}

/// The member that leads the etcd cluster now (its Raft leader).
fn raft_leader(cluster: &Cluster) -> usize {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    let status = |endpoint: &str| -> serde_json::Value {
        let mut answer = agent
            .post(format!("{endpoint}/v3/maintenance/status"))
            .send("{}")
            .unwrap();
        serde_json::from_str(&answer.body_mut().read_to_string().unwrap()).unwrap()
    };
    let endpoints = cluster.endpoints();
    let leader = status(&endpoints[0])["leader"].clone();
    endpoints
        .iter()
        .position(|e| status(e)["header"]["member_id"] == leader)
        .expect("a member leads")
}

/// Not a check: the durable write throughput of the etcd store on a 3-member cluster, as a
/// durable POST with one platform call writes (a creation with its first step counted, then
/// `created`) from 8 threads for 5 s. Run with `cargo test --release --test etcd_store -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_the_durable_write_throughput_on_three_members() {
    let test = "measure_the_durable_write_throughput_on_three_members";
    let Some(cluster) = etcd(test, 3) else {
        return;
    };
    let c = client(&cluster);
    let prefix = "/t-measure";
    let election = leader(&c, prefix, 5);
    let store = Arc::new(open(&c, prefix, &election));
    const THREADS: usize = 8;
    const SECONDS: u64 = 5;
    let before = revision(&c);
    let started = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                // Bounded in count and time.
                for n in 0..1_000_000 {
                    if started.elapsed() > Duration::from_secs(SECONDS) {
                        break;
                    }
                    let begun = Instant::now();
                    let id = format!("m{t}-{n}");
                    store.insert(record(&id, "1")).unwrap();
                    store.update(&id, |r| r.created(2)).unwrap();
                    latencies.push(begun.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let transactions = revision(&c) - before;
    eprintln!(
        "etcd store, 3 members, {THREADS} threads: {} creations (2 durable writes each) in \
         {elapsed:.1} s = {:.0}/s; {transactions} transactions ({:.1} changes each); \
         latency of the two writes p50 {:?} p99 {:?}",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        (latencies.len() * 2) as f64 / transactions as f64,
        at(0.5),
        at(0.99)
    );
}

#[test]
fn without_quorum_a_write_fails_once_the_term_lapses_and_the_next_term_writes_again() {
    let test = "without_quorum_a_write_fails_once_the_term_lapses_and_the_next_term_writes_again";
    let Some(mut cluster) = etcd(test, 3) else {
        return;
    };
    let c = client(&cluster);
    let prefix = "/t-quorum";
    let election = leader(&c, prefix, 2);
    let store = open(&c, prefix, &election);
    let errors = Arc::new(AtomicU64::new(0));
    store.count_errors_into(errors.clone());
    store.insert(record("before", "1")).unwrap();
    assert_eq!(errors.load(Ordering::Relaxed), 0, "no failed commit yet");
    cluster.kill(1);
    cluster.kill(2);
    let started = Instant::now();
    let e = store.insert(record("during", "1")).unwrap_err();
    // The failed attempts are what `mec_plugin_store_errors_total` counts.
    assert!(errors.load(Ordering::Relaxed) > 0, "failed commits counted");
    let waited = started.elapsed();
    assert!(e.is_unavailable(), "{e}");
    assert!(waited < Duration::from_secs(6), "failed after {waited:?}");
    assert!(store.writable().is_err());
    assert!(
        store.failure().is_some_and(|why| why.contains("term")),
        "{:?}",
        store.failure()
    );
    cluster.restart(1);
    cluster.restart(2);
    cluster.wait_healthy();
    // The same election campaigns again; the new term's store has the acknowledged record (and
    // perhaps the unacknowledged one: its outcome was unknown).
    election.wait_for(Duration::from_secs(20), |_| election.is_leader());
    let next = open(&c, prefix, &election);
    assert!(next.get("before").is_some());
    next.insert(record("after", "1")).unwrap();
    assert!(
        store.insert(record("stale", "1")).is_err(),
        "stopped for good"
    );
    assert!(Store::read_etcd(&c, prefix).unwrap().get("stale").is_none());
}

/// Review: a batch etcd refuses outright (here: larger than its `--max-request-bytes`) was
/// already in the leader's memory, so the writer stops for good, as a journal whose `fsync`
/// failed does: the leader must not go on answering from (and writing after) a memory that
/// etcd does not hold.
#[test]
fn a_refused_batch_stops_the_store_rather_than_leave_its_memory_ahead_of_etcd() {
    let test = "a_refused_batch_stops_the_store_rather_than_leave_its_memory_ahead_of_etcd";
    let Some(cluster) = Cluster::start_with(test, 1, &["--max-request-bytes=65536"]) else {
        support::skip(test, MISSING);
        return;
    };
    let c = client(&cluster);
    let prefix = "/t-refused";
    let election = leader(&c, prefix, 5);
    let store = open(&c, prefix, &election);
    store.insert(record("small", "1")).unwrap();
    let mut big = record("big", "1");
    big.request = Arc::from(format!(r#"{{"x":"{}"}}"#, "y".repeat(200_000)));
    let e = store.insert(big).unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    let read = Store::read_etcd(&c, prefix).unwrap();
    assert!(read.get("big").is_none(), "etcd refused it");
    assert!(
        store.writable().is_err(),
        "the store's memory holds 'big', etcd does not: it stops"
    );
    assert!(store.insert(record("after", "1")).is_err());
    drop(store);
    // The next store of the term reads etcd again and writes.
    let store = open(&c, prefix, &election);
    assert!(store.get("big").is_none());
    store.insert(record("after", "1")).unwrap();
    drop(store);
    step_down(election);
}

/// Under many concurrent writers of the same few keys (batched into shared transactions, retried
/// after unknown outcomes), etcd applies each key's changes in the order the store made them (each change counts
/// up the record's `detail` under the records lock; no revision of etcd holds a count lower
/// than an earlier revision's), and the last state is the store's.
#[test]
fn concurrent_updates_of_a_key_reach_etcd_in_the_order_they_were_made() {
    let test = "concurrent_updates_of_a_key_reach_etcd_in_the_order_they_were_made";
    let Some(cluster) = etcd(test, 3) else {
        return;
    };
    let c = client(&cluster);
    let prefix = "/t-order";
    let election = leader(&c, prefix, 5);
    let store = Arc::new(open(&c, prefix, &election));
    const KEYS: usize = 4;
    for k in 0..KEYS {
        store.insert(record(&format!("k{k}"), "1")).unwrap();
    }
    let before = revision(&c);
    let count = |r: &Record| -> u64 { r.detail.as_deref().map_or(0, |d| d.parse().unwrap()) };
    std::thread::scope(|s| {
        for t in 0..16 {
            let store = &store;
            s.spawn(move || {
                // Bounded in count.
                for n in 0..40 {
                    let id = format!("k{}", (t + n) % KEYS);
                    store
                        .update(&id, |r| r.detail = Some((count(r) + 1).to_string().into()))
                        .unwrap();
                }
            });
        }
    });
    let after = revision(&c);
    assert!(after - before > 2, "several transactions");
    let mut last = [0u64; KEYS];
    for at in before..=after {
        // Changes after the creation write the record's mutable part.
        let read = c
            .range(&Range::prefix("/t-order/progress/").at(at))
            .unwrap();
        for kv in read.kvs {
            let r: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
            let k: usize = r["id"].as_str().unwrap()[1..].parse().unwrap();
            let n: u64 = r["detail"].as_str().map_or(0, |d| d.parse().unwrap());
            assert!(
                n >= last[k],
                "k{k} went from {} back to {n} at revision {at}",
                last[k]
            );
            last[k] = n;
        }
    }
    assert_eq!(last.iter().sum::<u64>(), 16 * 40, "every change landed");
    let read = Store::read_etcd(&c, prefix).unwrap();
    assert_eq!(summary(&read), summary(&store));
    assert!(store.writable().is_ok(), "{:?}", store.failure());
}
