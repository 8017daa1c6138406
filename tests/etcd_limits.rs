//! The limits of the etcd store (issue 15) that had no test at their edge, each at it and one
//! past it, against a real 1-member etcd (`support/etcd.rs`): `[store] prefix` (2..=256
//! characters); a record estimated at `MAX_RECORD_BYTES` (committed) and one byte more
//! (refused, nothing written); an import's transactions (126 keys and `MAX_TXN_BYTES`, then
//! the next one) and its records (one of `MAX_TXN_BYTES` imported, one byte more refused
//! before anything is written); a prefix read in pages of 127 records (126 to 255), also
//! when its records are as large as a transaction (more than one 256 MiB answer in all).
//! The client's bound on one etcd answer (256 MiB) against a fake gateway: exactly it is read,
//! one byte more refused.
//! Skipped, saying so, where etcd is not installed.

mod support;

use std::sync::Arc;
use std::time::Duration;

use mec_plugin::config::Config;
use mec_plugin::etcd::{Client, Range};
use mec_plugin::etcd_store::{
    ImportError, MAX_RECORD_BYTES, MAX_TXN_BYTES, import, records_prefix,
};
use mec_plugin::leader::{Election, Settings};
use mec_plugin::mep::Step;
use mec_plugin::model::Status;
use mec_plugin::store::{Fence, Record, Store, StoreError};
use support::etcd::{Cluster, MISSING, step_down};

fn etcd(test: &str) -> Option<Cluster> {
    let cluster = Cluster::start(test, 1);
    if cluster.is_none() {
        support::skip(test, MISSING);
    }
    cluster
}

/// The store's revision now: each committed transaction adds one.
fn revision(client: &Client) -> i64 {
    client.range(&Range::key("/none")).unwrap().revision
}

/// How many keys under `prefix`'s records.
fn stored(client: &Client, prefix: &str) -> i64 {
    client
        .range(&Range::prefix(records_prefix(prefix)).limit(1))
        .unwrap()
        .count
}

/// A record entry's JSON (the import's line), padded so that it takes `bytes` in etcd (key and
/// value, the value with its `seq`) as the `n`th record of `prefix`; `None`: unpadded.
fn entry(prefix: &str, id: &str, n: usize, bytes: Option<usize>) -> (String, Vec<u8>) {
    let json = |pad: &str| {
        format!(
            "{{\"id\":\"{id}\",\"region\":\"2\",\"request\":{{\"transportDependencies\":[{{\
             \"transport\":{{\"type\":\"RPC\",\"protocol\":\"p\",\"version\":\"1\",\
             \"security\":{{\"pad\":\"{pad}\"}}}},\"serializers\":\"PROTOBUF3\",\"labels\":[]}}]}},\
             \"steps\":[],\
             \"applied\":0,\"status\":\"created\",\"created\":1,\"modified\":1}}"
        )
    };
    let size = |json: &str| {
        records_prefix(prefix).len() + id.len() + json.len() - 1 + {
            format!("{{\"seq\":{n},").len()
        }
    };
    let bare = json("");
    let pad = bytes.map_or(0, |b| b - size(&bare));
    let json = json(&"y".repeat(pad));
    if let Some(bytes) = bytes {
        assert_eq!(size(&json), bytes, "the test's own arithmetic");
    }
    (id.to_string(), json.into_bytes())
}

/// Imports `records` under `prefix`: how many transactions it took.
fn transactions(client: &Client, prefix: &str, records: Vec<(String, Vec<u8>)>) -> i64 {
    let count = records.len();
    let before = revision(client);
    assert_eq!(import(client, prefix, records).unwrap(), count);
    revision(client) - before
}

#[test]
fn the_store_prefix_takes_2_to_256_characters() {
    let config = |prefix: &str| {
        Config::parse(
            &format!(
                "[store]\nkind = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\n\
                 advertise_url = \"http://127.0.0.1:1\"\nprefix = \"{prefix}\"\n{}",
                support::simulated_region("2")
            ),
            "test.toml",
        )
        .map(|c| c.store.prefix)
        .map_err(|e| e.to_string())
    };
    let longest = format!("/{}", "p".repeat(255));
    assert_eq!(config("/a").unwrap(), "/a");
    assert_eq!(config(&longest).unwrap(), longest);
    for refused in ["/".to_string(), format!("{longest}q")] {
        let e = config(&refused).unwrap_err();
        assert!(e.contains("[store] prefix") && e.contains("2-256"), "{e}");
    }
}

#[test]
fn a_record_estimated_at_the_bound_is_committed_and_one_byte_more_is_refused() {
    let test = "a_record_estimated_at_the_bound_is_committed_and_one_byte_more_is_refused";
    let Some(cluster) = etcd(test) else {
        return;
    };
    let client = Arc::new(cluster.client(Duration::from_secs(2)));
    let prefix = "/t-record";
    let election = Arc::new(Election::start(
        client.clone(),
        &Settings {
            prefix: prefix.into(),
            lease_ttl_s: 5,
            advertise_url: "http://127.0.0.1:1".into(),
        },
    ));
    election.wait_for(Duration::from_secs(15), |_| election.is_leader());
    let fence = Fence {
        election: election.clone(),
        term: election.term().expect("leading"),
    };
    let store = Store::open_etcd(client.clone(), prefix, fence).unwrap();
    // The store's estimate: the request, each step's label, target and body + 48, the detail
    // and the platform, + 256.
    let record = |id: &str, estimate: usize| {
        let step = Step::new("l", "/t", "{}");
        let pad = estimate - 256 - (1 + 2 + 2 + 48) - r#"{"x":""}"#.len();
        Record::new(
            id.into(),
            "2".into(),
            Arc::from(format!(r#"{{"x":"{}"}}"#, "y".repeat(pad))),
            Status::Created,
            Arc::from([step]),
            1,
            1_700_000_000_000,
        )
    };
    store.insert(record("at", MAX_RECORD_BYTES)).unwrap();
    let e = store
        .insert(record("past", MAX_RECORD_BYTES + 1))
        .unwrap_err();
    assert!(
        matches!(e, StoreError::TooLarge(_))
            && e.to_string()
                .contains(&format!("about {}", MAX_RECORD_BYTES + 1)),
        "{e}"
    );
    assert!(
        store.writable().is_ok(),
        "a refusal does not stop the store"
    );
    let read = Store::read_etcd(&client, prefix).unwrap();
    assert_eq!(read.len(), 1);
    assert!(read.get("at").is_some() && read.get("past").is_none());
    drop(store);
    // Let the dropped store's writer go, then step down.
    step_down(election);
}

#[test]
fn an_import_transaction_takes_126_keys_or_1_mib_and_one_more_starts_the_next() {
    let test = "an_import_transaction_takes_126_keys_or_1_mib_and_one_more_starts_the_next";
    let Some(cluster) = etcd(test) else {
        return;
    };
    let client = cluster.client(Duration::from_secs(5));
    // Keys: 126, with the leader key's and the import marker's comparisons and one per key,
    // make the 128 comparisons etcd takes (`--max-txn-ops`); one more key starts a second
    // transaction (and the marker: a transaction between requires it, the last deletes it).
    for (prefix, count, expected) in [("/t-126", 126, 1), ("/t-127", 127, 2)] {
        let records = (0..count)
            .map(|n| entry(prefix, &format!("r{n:03}"), n, None))
            .collect();
        assert_eq!(transactions(&client, prefix, records), expected, "{prefix}");
        let read = Store::read_etcd(&client, prefix).unwrap();
        let ids: Vec<String> = read.list(None).iter().map(|r| r.id.to_string()).collect();
        let expected_ids: Vec<String> = (0..count).map(|n| format!("r{n:03}")).collect();
        assert_eq!(ids, expected_ids, "{prefix}: all, in order");
        let marker = client
            .get(format!("{prefix}/importing").as_bytes())
            .unwrap();
        assert!(
            marker.is_none(),
            "{prefix}: the finished import took its marker away"
        );
    }
    // Bytes: two records of exactly MAX_TXN_BYTES in all share one; one byte more, two.
    let half = MAX_TXN_BYTES / 2;
    for (prefix, extra, expected) in [("/t-mib", 0, 1), ("/t-mib1", 1, 2)] {
        let records = vec![
            entry(prefix, "a", 0, Some(half)),
            entry(prefix, "b", 1, Some(MAX_TXN_BYTES - half + extra)),
        ];
        assert_eq!(transactions(&client, prefix, records), expected, "{prefix}");
        assert_eq!(stored(&client, prefix), 2);
    }
}

#[test]
fn an_imported_record_takes_at_most_one_transaction_and_one_byte_more_writes_nothing() {
    let test = "an_imported_record_takes_at_most_one_transaction_and_one_byte_more_writes_nothing";
    let Some(cluster) = etcd(test) else {
        return;
    };
    let client = cluster.client(Duration::from_secs(5));
    let prefix = "/t-one";
    let records = vec![
        entry(prefix, "small", 0, None),
        entry(prefix, "whole", 1, Some(MAX_TXN_BYTES)),
    ];
    assert_eq!(transactions(&client, prefix, records), 2);
    // One byte more, after records that would fit: refused before any is written.
    let prefix = "/t-past";
    let records = vec![
        entry(prefix, "small", 0, None),
        entry(prefix, "over", 1, Some(MAX_TXN_BYTES + 1)),
    ];
    let before = revision(&client);
    match import(&client, prefix, records) {
        Err(ImportError::TooLarge { id, bytes }) => {
            assert_eq!((id.as_str(), bytes), ("over", MAX_TXN_BYTES + 1));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(revision(&client), before, "nothing written");
    assert_eq!(stored(&client, prefix), 0);
    // Through `--import-state`: refused as a bad input (exit 2), naming the record.
    let dir = support::temp_dir("etcd-limits-import");
    let file = dir.join("state.jsonl");
    let (_, small) = entry(prefix, "small", 0, None);
    let (_, over) = entry(prefix, "over", 1, Some(MAX_TXN_BYTES + 1));
    let mut text = small;
    text.push(b'\n');
    text.extend_from_slice(&over);
    std::fs::write(&file, text).unwrap();
    let config = Config::parse(
        &format!(
            "[store]\nkind = \"etcd\"\nendpoints = [\"{}\"]\nprefix = \"{prefix}\"\n\
             advertise_url = \"http://127.0.0.1:1\"\n{}",
            cluster.endpoints()[0],
            support::simulated_region("2")
        ),
        "test.toml",
    )
    .unwrap();
    let e = mec_plugin::migrate::import(&config, &file).unwrap_err();
    assert_eq!(e.exit_code(), 2, "{e}");
    assert!(
        e.to_string().contains("record over takes")
            && e.to_string().contains("nothing was imported"),
        "{e}"
    );
    assert_eq!(stored(&client, prefix), 0);
}

#[test]
fn a_prefix_is_read_whole_in_pages_of_127_records() {
    let test = "a_prefix_is_read_whole_in_pages_of_127_records";
    let Some(cluster) = etcd(test) else {
        return;
    };
    let client = cluster.client(Duration::from_secs(5));
    // `etcd_store`'s page: 127 keys.
    for count in [126, 127, 128, 254, 255] {
        let prefix = format!("/t-page{count}");
        let records: Vec<_> = (0..count)
            .map(|n| entry(&prefix, &format!("r{n:04}"), n, None))
            .collect();
        assert_eq!(import(&client, &prefix, records).unwrap(), count);
        let read = Store::read_etcd(&client, &prefix).unwrap();
        let ids: Vec<String> = read.list(None).iter().map(|r| r.id.to_string()).collect();
        let expected: Vec<String> = (0..count).map(|n| format!("r{n:04}")).collect();
        assert_eq!(ids, expected, "{count} records, each once, in order");
    }
}

/// The bound on one etcd answer (`etcd::MAX_ANSWER_BYTES`, 256 MiB) against a page of records
/// each as large as one transaction takes: values travel in base64 (4/3), so a page of 500
/// of them was ~680 MiB, refused; a prefix holding more than 256 MiB of them in a row must be
/// read whole (else no leader can open its store nor a follower answer a read, for good).
#[test]
fn a_prefix_of_records_as_large_as_a_transaction_is_read_past_the_answer_bound() {
    let test = "a_prefix_of_records_as_large_as_a_transaction_is_read_past_the_answer_bound";
    let Some(cluster) = etcd(test) else {
        return;
    };
    let client = cluster.client(Duration::from_secs(30));
    let prefix = "/t-big";
    // Enough for a page of 500 to exceed the bound in base64: 256 MiB × 3/4 / 1 MiB = 192.
    let count = (mec_plugin::etcd::MAX_ANSWER_BYTES as usize * 3 / 4) / MAX_TXN_BYTES + 8;
    let records = (0..count).map(|n| entry(prefix, &format!("r{n:04}"), n, Some(MAX_TXN_BYTES)));
    assert_eq!(import(&client, prefix, records).unwrap(), count);
    let read = Store::read_etcd(&client, prefix).map(|s| s.len());
    assert_eq!(read.map_err(|e| e.to_string()), Ok(count));
}

/// A fake etcd gateway on loopback answering every call 200 with a range answer padded with
/// spaces (valid JSON) to the length `length` holds.
fn fake_gateway(length: Arc<std::sync::atomic::AtomicU64>) -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let length = length.load(std::sync::atomic::Ordering::SeqCst);
            std::thread::spawn(move || {
                let _ = stream.set_write_timeout(Some(Duration::from_secs(20)));
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let (mut line, mut body) = (String::new(), 0usize);
                while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        body = v.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let _ = reader.read_exact(&mut vec![0; body]);
                let json = br#"{"header":{"revision":"7"},"count":"0"}"#;
                let mut out = stream;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: \
                     {length}\r\nConnection: close\r\n\r\n"
                );
                let spaces = vec![b' '; 1 << 20];
                let mut left = length as usize - json.len();
                let mut write = || -> std::io::Result<()> {
                    out.write_all(head.as_bytes())?;
                    out.write_all(json)?;
                    while left > 0 {
                        let n = left.min(spaces.len());
                        out.write_all(&spaces[..n])?;
                        left -= n;
                    }
                    out.flush()
                };
                let _ = write();
            });
        }
    });
    url
}

#[test]
fn an_etcd_answer_of_exactly_256_mib_is_read_and_one_byte_more_is_refused() {
    use mec_plugin::etcd::MAX_ANSWER_BYTES;
    let length = Arc::new(std::sync::atomic::AtomicU64::new(MAX_ANSWER_BYTES));
    let client = Client::new(mec_plugin::etcd::Options {
        endpoints: vec![fake_gateway(length.clone())],
        ca_pem: None,
        user: None,
        password: None,
        timeout: Duration::from_secs(60),
    })
    .unwrap();
    let read = client.range(&Range::key("/x")).unwrap();
    assert_eq!((read.revision, read.count), (7, 0));
    length.store(MAX_ANSWER_BYTES + 1, std::sync::atomic::Ordering::SeqCst);
    let e = client.range(&Range::key("/x")).unwrap_err();
    assert!(
        matches!(e, mec_plugin::etcd::EtcdError::Malformed { .. }),
        "{e:?}"
    );
    let e = e.to_string();
    assert!(
        e.contains(&format!(
            "answer is larger than the bound on an answer ({MAX_ANSWER_BYTES} bytes)"
        )) && !e.contains("quorum"),
        "{e}"
    );
}
