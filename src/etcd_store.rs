//! The etcd backend of the store (issue 15; the store depends on it, not the reverse): the
//! leader's records under `<prefix>/records/<id>` and `<prefix>/progress/<id>`, committed by
//! one writer thread in transactions fenced on the leader's term; a prefix read at one
//! revision in creation order; the migration's import into an empty prefix; the etcd client
//! options of `[store]`.
//!
//! - A record's key holds the whole record as created: its journal `put` entry's JSON
//!   (`RecordEntry`) with one more field first, `seq`, its place in the creation order, given
//!   when it is created and never changed (a store loaded from etcd keeps the records' `seq`
//!   and numbers its new ones after the largest). Its `progress` key holds its mutable part as
//!   last changed (an `UpdateEntry`'s JSON, with the platform), read over the record's own
//!   fields: a change after the creation puts only that (idempotent), so the steps of a large
//!   request do not each write the whole record again. A removal deletes both keys. Creation
//!   order = `seq` (records created in one transaction share their create revision; the
//!   create revision breaks ties only among values without one).
//! - Under the records lock the store only queues a change (a pointer to the record) and gets
//!   a sequence number; the caller waits for it without the lock. The writer takes every
//!   queued change, in order, into one transaction (the last change of a record wins: etcd
//!   refuses a key twice in one transaction), at most [`MAX_TXN_OPS`] operations and
//!   [`MAX_TXN_BYTES`] of keys and values, fenced on the captured term
//!   ([`crate::leader::fence`]).
//! - Each transaction also compares and sets `<prefix>/writer`, a tag naming the store and the
//!   batch: a transaction whose outcome was unknown (timeout, no quorum) is retried as is and
//!   commits at most once (a retry that finds its own tag knows the first attempt landed), and a
//!   late duplicate of an old attempt can never overwrite a newer batch.
//! - Transient errors are retried while the term is valid; once the term lapses or the fence
//!   fails (deposed), the writer stops for good: every waiting and later change gets
//!   the store's `StoreError::Unavailable`, and `Store::failure` says why. A transaction etcd
//!   refuses outright fails the changes of that batch and stops the writer too (its changes
//!   are in the store's memory already, as a journal's after a failed `fsync`); the cluster
//!   then opens the term's store again from etcd.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::warn;
use serde::Deserialize;

use crate::config::StoreConfig;
use crate::etcd::{
    Client, Cmp, Compare, EtcdError, KeyValue, Op, OpResponse, Options, Range, Target, Txn,
    TxnResponse, prefix_end,
};
use crate::leader::{Election, Term, fence, leader_key};
use crate::util::{lock, new_uuid, wait};

/// What the writer stores under a record's key: the store's records implement it (this module
/// does not depend on the store).
pub(crate) trait Value: Send + Sync {
    /// The record's JSON (its journal `put` entry's content).
    fn json(&self) -> Vec<u8>;
    /// The JSON of its mutable part (its journal `update` entry's content, with its platform):
    /// what a change after its creation writes, under `<prefix>/progress/<id>`, so that the
    /// steps of a large request do not each write the whole record again.
    fn progress_json(&self) -> Vec<u8>;
    /// Its place in the creation order, given at its creation and never changed.
    fn seq(&self) -> u64;
}

/// etcd's default `--max-txn-ops`: operations (and comparisons) of one transaction.
pub const MAX_TXN_OPS: usize = 128;

/// Bound on the keys and values of one transaction: well under etcd's default
/// `--max-request-bytes` (1.5 MiB), so that a batch is never refused for its size.
pub const MAX_TXN_BYTES: usize = 1 << 20;

/// The largest record (estimated from its parts) a creation may write: one fits a transaction
/// alone.
pub const MAX_RECORD_BYTES: usize = MAX_TXN_BYTES - (64 << 10);

/// The largest request etcd takes by default (`--max-request-bytes`), so the largest value it
/// can hold unless its operator raised that.
const ETCD_MAX_REQUEST_BYTES: u64 = 3 << 19;

/// Keys read per page of a prefix: as many as always fit one answer
/// ([`MAX_ANSWER_BYTES`](crate::etcd::MAX_ANSWER_BYTES)), each value as large as etcd takes
/// and in base64 (4/3), with its key and fields (127). Pages of 500 records near
/// [`MAX_RECORD_BYTES`] made answers of ~640 MiB: refused, so that no instance could read
/// the prefix any more.
const PAGE: i64 = (crate::etcd::MAX_ANSWER_BYTES / (ETCD_MAX_REQUEST_BYTES * 4 / 3 + 1024)) as i64;

/// First and longest pause between two attempts of a transaction.
const RETRY_FIRST: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_millis(500);

/// Attempts of one transaction whose credentials etcd refuses (each after a fresh
/// authentication, see [`Client`]): a token of another member after a switch of endpoint
/// goes away; credentials that stay refused are a misconfiguration, which the term would not
/// end (renewing the lease needs no token).
const AUTH_ATTEMPTS: u32 = 3;

/// Refused batches remembered for their waiters.
const REFUSED_KEPT: usize = 256;

/// Attempts of one transaction of an import (transient errors).
const IMPORT_ATTEMPTS: u32 = 5;

/// `<prefix>/records/`.
pub fn records_prefix(prefix: &str) -> String {
    format!("{}/records/", prefix.trim_end_matches('/'))
}

/// `<prefix>/progress/`: each record's mutable part (see [`Value::progress_json`]).
pub fn progress_prefix(prefix: &str) -> String {
    format!("{}/progress/", prefix.trim_end_matches('/'))
}

/// `<prefix>/writer`: the tag of the last batch the leader's writer committed.
pub fn writer_key(prefix: &str) -> Vec<u8> {
    format!("{}/writer", prefix.trim_end_matches('/')).into_bytes()
}

/// `<prefix>/importing`: present while an import into the prefix is under way, or after one
/// was interrupted (see [`import`]); no instance leads on the prefix while it exists.
pub fn importing_key(prefix: &str) -> Vec<u8> {
    format!("{}/importing", prefix.trim_end_matches('/')).into_bytes()
}

/// What the import marker holds: who wrote it, when, and how many records it was to write.
#[derive(serde::Serialize, Deserialize)]
struct ImportMarker {
    host: String,
    pid: u32,
    started: String,
    records: usize,
}

impl ImportMarker {
    /// The marker of an import of `records` records by this process, now.
    fn now(records: usize) -> ImportMarker {
        ImportMarker {
            host: host_name(),
            pid: std::process::id(),
            started: crate::util::rfc3339(crate::util::now_millis()),
            records,
        }
    }
}

/// This host's name ("unknown host" when it cannot be read).
fn host_name() -> String {
    let mut name = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let ok = unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) } == 0;
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    match String::from_utf8_lossy(&name[..end]) {
        n if ok && !n.is_empty() => n.into_owned(),
        _ => "unknown host".into(),
    }
}

/// Why no instance leads on `prefix`, and what to do, while its import marker holds `value`:
/// an import began and has not finished (interrupted, or still running), so the prefix holds
/// part of its records.
pub fn unfinished_import(prefix: &str, value: &[u8]) -> String {
    let prefix = prefix.trim_end_matches('/');
    let who = match serde_json::from_slice::<ImportMarker>(value) {
        Ok(m) => format!(
            "begun {} by pid {} on {}, of {} record(s)",
            m.started, m.pid, m.host, m.records
        ),
        Err(_) => {
            let raw = String::from_utf8_lossy(value);
            format!(
                "its marker holds {:?}",
                raw.chars().take(200).collect::<String>()
            )
        }
    };
    format!(
        "an import into etcd prefix {prefix} did not finish ({who}; {prefix}/importing \
         exists): the prefix holds part of its records, and no instance leads on it. Unless \
         that import still runs, start over: stop every instance of the prefix, delete the \
         partial import (etcdctl del --prefix {prefix}/records/ && etcdctl del \
         {prefix}/importing) and import again"
    )
}

/// Record `id`'s key under `records` (or [`progress_prefix`]).
fn record_key(records: &str, id: &str) -> Vec<u8> {
    format!("{records}{id}").into_bytes()
}

/// The etcd client options of `[store]`, each call bounded by `timeout`: reads `ca_file` (PEM)
/// and `password_file` (its first line); errors name the file.
pub fn etcd_options(store: &StoreConfig, timeout: Duration) -> Result<Options, String> {
    if store.endpoints.is_empty() {
        return Err("[store] endpoints: no etcd endpoint given".into());
    }
    let ca_pem = match &store.ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("[store] ca_file {}: cannot read it: {e}", path.display()))?;
            if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                return Err(format!(
                    "[store] ca_file {}: no PEM certificate in it",
                    path.display()
                ));
            }
            Some(pem)
        }
        None => None,
    };
    let password = match &store.password_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "[store] password_file {}: cannot read it: {e}",
                    path.display()
                )
            })?;
            let password = text.lines().next().unwrap_or("").to_string();
            if password.is_empty() {
                return Err(format!(
                    "[store] password_file {}: its first line is empty",
                    path.display()
                ));
            }
            Some(password)
        }
        None => None,
    };
    if store.user.is_some() != password.is_some() {
        return Err("[store] user and password_file go together".into());
    }
    Ok(Options {
        endpoints: store.endpoints.clone(),
        ca_pem,
        user: store.user.clone(),
        password,
        timeout,
    })
}

/// A record's value in etcd: its JSON object (a record entry's, never empty) with `seq` first.
fn with_seq(json: &[u8], seq: u64) -> Vec<u8> {
    debug_assert!(json.starts_with(b"{\"id\":"));
    let mut value = Vec::with_capacity(json.len() + 24);
    value.extend_from_slice(format!("{{\"seq\":{seq},").as_bytes());
    value.extend_from_slice(&json[1..]);
    value
}

/// A value's `seq` (0 when absent: written by something else than this module).
fn seq_of(value: &[u8]) -> u64 {
    #[derive(Deserialize)]
    struct Seq {
        #[serde(default)]
        seq: u64,
    }
    serde_json::from_slice::<Seq>(value).map_or(0, |s| s.seq)
}

/// A record's keys and values in etcd: the whole record as created, and its mutable part as
/// last changed, if it changed since.
pub(crate) struct Stored {
    pub record: KeyValue,
    pub progress: Option<KeyValue>,
}

/// What [`load`] read, all at one revision.
pub(crate) struct Loaded {
    pub revision: i64,
    /// The records' `seq` and keys and values, in creation order.
    pub records: Vec<(u64, Stored)>,
    pub leader: Option<KeyValue>,
    /// The writer tag (see [`writer_key`]).
    pub writer: Option<Vec<u8>>,
    /// The import marker's value, if an import began and did not finish (see [`import`]).
    pub importing: Option<Vec<u8>>,
}

/// Reads the leader key, the writer tag and every record of `prefix` at one revision
/// (linearizable), the records page by page, sorted into creation order.
pub(crate) fn load(client: &Client, prefix: &str) -> Result<Loaded, EtcdError> {
    let started = Instant::now();
    let heads = Txn::new()
        .then(Op::Range(Range::key(leader_key(prefix))))
        .then(Op::Range(Range::key(writer_key(prefix))))
        .then(Op::Range(Range::key(importing_key(prefix))));
    let answer = client.txn(&heads)?;
    let revision = answer.revision;
    let mut read = answer.responses.into_iter().map(|r| match r {
        OpResponse::Range(range) => range.kvs.into_iter().next(),
        _ => None,
    });
    let leader = read.next().flatten();
    let writer = read.next().flatten().map(|kv| kv.value);
    let importing = read.next().flatten().map(|kv| kv.value);
    let records_prefix = records_prefix(prefix);
    let progress_prefix = progress_prefix(prefix);
    let records = read_all(client, &records_prefix, revision)?;
    let mut progress: HashMap<Vec<u8>, KeyValue> = read_all(client, &progress_prefix, revision)?
        .into_iter()
        .map(|kv| (kv.key[progress_prefix.len()..].to_vec(), kv))
        .collect();
    let mut ordered: Vec<(u64, Stored)> = records
        .into_iter()
        .map(|record| {
            let progress = progress.remove(&record.key[records_prefix.len()..]);
            (seq_of(&record.value), Stored { record, progress })
        })
        .collect();
    ordered.sort_unstable_by(|(a, x), (b, y)| {
        (a, x.record.create_revision, &x.record.key).cmp(&(
            b,
            y.record.create_revision,
            &y.record.key,
        ))
    });
    if !progress.is_empty() {
        // Written only after the record and removed with it: left by something else.
        warn!(
            "etcd store: {} key(s) under {progress_prefix} belong to no record and are \
             ignored",
            progress.len()
        );
    }
    debug!(
        "etcd store: {} record(s) of {prefix} read at revision {revision} in {} ms",
        ordered.len(),
        started.elapsed().as_millis()
    );
    Ok(Loaded {
        revision,
        records: ordered,
        leader,
        writer,
        importing,
    })
}

/// Every key and value under `prefix` at `revision`, page by page.
fn read_all(client: &Client, prefix: &str, revision: i64) -> Result<Vec<KeyValue>, EtcdError> {
    let end = prefix_end(prefix.as_bytes());
    let mut from = prefix.as_bytes().to_vec();
    let mut all = Vec::new();
    loop {
        let range = Range::between(from.clone(), end.clone())
            .limit(PAGE)
            .at(revision);
        let page = client.range(&range)?;
        if let Some(last) = page.kvs.last() {
            from = last.key.clone();
            from.push(0);
        }
        let more = page.more && !page.kvs.is_empty();
        all.extend(page.kvs);
        if !more {
            return Ok(all);
        }
    }
}

/// Reads record `id` of `prefix` now (linearizable): its keys and values, if it exists, and
/// the import marker's value, if an import began and did not finish.
pub(crate) fn load_one(
    client: &Client,
    prefix: &str,
    id: &str,
) -> Result<(Option<Stored>, Option<Vec<u8>>), EtcdError> {
    let read = Txn::new()
        .then(Op::Range(Range::key(record_key(
            &records_prefix(prefix),
            id,
        ))))
        .then(Op::Range(Range::key(record_key(
            &progress_prefix(prefix),
            id,
        ))))
        .then(Op::Range(Range::key(importing_key(prefix))));
    let mut read = client.txn(&read)?.responses.into_iter().map(|r| match r {
        OpResponse::Range(range) => range.kvs.into_iter().next(),
        _ => None,
    });
    let record = read.next().flatten();
    let progress = read.next().flatten();
    let importing = read.next().flatten().map(|kv| kv.value);
    Ok((record.map(|record| Stored { record, progress }), importing))
}

/// What one change of a record writes.
pub(crate) enum Write {
    /// The whole record: its creation.
    Whole(Arc<dyn Value>),
    /// Its mutable part, as it is now: a change after its creation.
    Progress(Arc<dyn Value>),
    /// Its removal: both of its keys.
    Remove,
}

/// Where the records' keys are.
struct Keys {
    records: String,
    progress: String,
}

/// One queued change.
struct Queued {
    seq: u64,
    id: Arc<str>,
    write: Write,
    /// Its operations, once built (a change that did not fit the last batch).
    built: Option<Built>,
}

/// The operations of the changes of one record in a batch.
struct Built {
    ops: Vec<Op>,
    /// The bytes of their keys and values.
    size: usize,
    /// They put the whole record.
    whole: bool,
}

impl Queued {
    /// Its operations; a change of the mutable part puts the whole record when the batch puts
    /// it already (`whole_in_batch`: its creation), as one operation of a key per transaction.
    fn build(&mut self, keys: &Keys, whole_in_batch: bool) -> Built {
        if let Some(built) = self.built.take() {
            return built;
        }
        let key = record_key(&keys.records, &self.id);
        match &self.write {
            Write::Remove => {
                let progress_key = record_key(&keys.progress, &self.id);
                Built {
                    size: key.len() + progress_key.len(),
                    ops: vec![Op::delete(key), Op::delete(progress_key)],
                    whole: false,
                }
            }
            Write::Progress(record) if !whole_in_batch => {
                let key = record_key(&keys.progress, &self.id);
                let value = record.progress_json();
                Built {
                    size: key.len() + value.len(),
                    ops: vec![Op::put(key, value)],
                    whole: false,
                }
            }
            Write::Whole(record) | Write::Progress(record) => {
                let value = with_seq(&record.json(), record.seq());
                Built {
                    size: key.len() + value.len(),
                    ops: vec![Op::put(key, value)],
                    whole: true,
                }
            }
        }
    }
}

/// The state the store's callers and the writer thread share.
#[derive(Default)]
struct State {
    queue: VecDeque<Queued>,
    /// The sequence number of the last change queued.
    enqueued: u64,
    /// Every change up to this one was committed or refused.
    done: u64,
    /// Refused batches (first and last sequence number) and why, newest last.
    refused: VecDeque<(u64, u64, String)>,
    /// Why the writer stopped for good.
    failed: Option<String>,
    /// The store was dropped.
    closed: bool,
}

struct Shared {
    client: Arc<Client>,
    election: Arc<Election>,
    term: Term,
    leader_key: Vec<u8>,
    keys: Keys,
    state: Mutex<State>,
    /// The writer waits here for changes.
    queued: Condvar,
    /// Callers wait here for their changes.
    done: Condvar,
    /// Where failed commits are counted (`mec_plugin_store_errors_total`), once given.
    errors: std::sync::OnceLock<Arc<std::sync::atomic::AtomicU64>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn count_error(&self) {
        if let Some(errors) = self.errors.get() {
            errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Why the term is no longer valid, if it is not.
    fn term_over(&self) -> Option<String> {
        match self.election.term() {
            Some(term) if term == self.term => None,
            _ => Some(format!(
                "this instance's term as leader is over (lease {:x}, leader key revision {})",
                self.term.lease, self.term.create_revision
            )),
        }
    }

    /// Stops the writer for good (the first reason stays).
    fn fail(&self, reason: String) {
        let mut state = self.lock();
        if state.failed.is_none() {
            warn!("the etcd store stops: {reason}");
            state.failed = Some(reason);
        }
        self.done.notify_all();
        self.queued.notify_all();
    }

    /// Moves every queued change to `carry`, waiting for one if there is none; false once the
    /// writer is to stop.
    fn take(&self, carry: &mut VecDeque<Queued>) -> bool {
        let mut state = self.lock();
        loop {
            if state.failed.is_some() || state.closed {
                return false;
            }
            if !state.queue.is_empty() || !carry.is_empty() {
                carry.extend(state.queue.drain(..));
                return true;
            }
            state = wait(&self.queued, state);
        }
    }

    /// The changes up to `last` are done: committed, or refused for `refused`.
    fn finish(&self, first: u64, last: u64, refused: Option<String>) {
        let mut state = self.lock();
        if let Some(reason) = refused {
            if state.refused.len() == REFUSED_KEPT {
                state.refused.pop_front();
            }
            state.refused.push_back((first, last, reason));
        }
        state.done = last;
        self.done.notify_all();
    }
}

/// The etcd backend of one store: its queue and its writer thread.
pub(crate) struct EtcdWriter {
    shared: Arc<Shared>,
}

impl EtcdWriter {
    /// Starts the writer of `prefix` for `election`'s `term`; `writer_tag` is the tag the
    /// prefix holds now (see [`writer_key`]).
    pub(crate) fn start(
        client: Arc<Client>,
        prefix: &str,
        (election, term): (Arc<Election>, Term),
        writer_tag: Option<Vec<u8>>,
    ) -> EtcdWriter {
        let marker = Marker {
            key: writer_key(prefix),
            expected: writer_tag,
            tag_prefix: format!("{}:{}:", term.create_revision, new_uuid()),
            batch: 0,
        };
        let shared = Arc::new(Shared {
            client,
            leader_key: leader_key(prefix),
            keys: Keys {
                records: records_prefix(prefix),
                progress: progress_prefix(prefix),
            },
            election,
            term,
            state: Mutex::default(),
            queued: Condvar::new(),
            done: Condvar::new(),
            errors: std::sync::OnceLock::new(),
        });
        let thread_shared = shared.clone();
        // Not joined: a stopped store's writer ends after its current call.
        std::thread::Builder::new()
            .name("etcd-store".into())
            .spawn(move || run(&thread_shared, marker))
            .expect("spawning the etcd-store thread");
        EtcdWriter { shared }
    }

    /// Counts every failed commit attempt into `counter` from now on.
    pub(crate) fn count_errors_into(&self, counter: Arc<std::sync::atomic::AtomicU64>) {
        let _ = self.shared.errors.set(counter);
    }

    /// Queues the change of record `id` (what it writes: its value now, or its removal)
    /// under the records lock: no call, no serialisation. Returns the sequence number to
    /// [`wait`](EtcdWriter::wait) for, or why the writer stopped.
    pub(crate) fn enqueue(&self, id: Arc<str>, write: Write) -> Result<u64, String> {
        if let Some(reason) = self.shared.term_over() {
            self.shared.fail(reason);
        }
        let mut state = self.shared.lock();
        if let Some(reason) = &state.failed {
            return Err(reason.clone());
        }
        state.enqueued += 1;
        let seq = state.enqueued;
        state.queue.push_back(Queued {
            seq,
            id,
            write,
            built: None,
        });
        self.shared.queued.notify_one();
        Ok(seq)
    }

    /// Returns once change `seq` is committed in etcd; why not if it was refused or the writer
    /// stopped before it was.
    pub(crate) fn wait(&self, seq: u64) -> Result<(), String> {
        let mut state = self.shared.lock();
        loop {
            if state.done >= seq {
                let refused = state
                    .refused
                    .iter()
                    .find(|(first, last, _)| (*first..=*last).contains(&seq));
                return match refused {
                    Some((_, _, reason)) => Err(reason.clone()),
                    None => Ok(()),
                };
            }
            if let Some(reason) = &state.failed {
                return Err(reason.clone());
            }
            state = wait(&self.shared.done, state);
        }
    }

    /// Returns once every change queued so far is committed in etcd; why not if the last of
    /// them was refused or the writer stopped first (its term lapsed: bounded by the lease).
    /// A leader's reads wait for it, so that they never show a change etcd may not keep.
    pub(crate) fn settled(&self) -> Result<(), String> {
        let seq = self.shared.lock().enqueued;
        self.wait(seq)
    }

    /// Why the writer stopped for good, if it did (a term found over stops it now).
    pub(crate) fn failure(&self) -> Option<String> {
        if let Some(reason) = self.shared.term_over() {
            self.shared.fail(reason);
        }
        self.shared.lock().failed.clone()
    }
}

impl Drop for EtcdWriter {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.queued.notify_all();
    }
}

/// The writer tag: what `<prefix>/writer` holds now, and how the next batch's tag is named.
struct Marker {
    key: Vec<u8>,
    expected: Option<Vec<u8>>,
    /// `<term's revision>:<a uuid of this store>:`.
    tag_prefix: String,
    batch: u64,
}

impl Marker {
    fn compare(&self) -> Compare {
        match &self.expected {
            None => Compare::absent(self.key.clone()),
            Some(tag) => Compare::new(self.key.clone(), Cmp::Equal, Target::Value(tag.clone())),
        }
    }

    fn next_tag(&self) -> Vec<u8> {
        format!("{}{}", self.tag_prefix, self.batch + 1).into_bytes()
    }
}

/// One transaction's worth of changes.
struct Batch {
    ops: Vec<Op>,
    first: u64,
    last: u64,
}

/// Takes changes from the front of `carry` into one batch: the last change of a record wins
/// (one operation of a key per transaction), at most [`MAX_TXN_OPS`] − 1 operations (one is
/// the writer tag's) and [`MAX_TXN_BYTES`] (a larger change goes alone).
fn next_batch(carry: &mut VecDeque<Queued>, keys: &Keys) -> Batch {
    let mut records: Vec<Built> = Vec::new();
    let mut slots: HashMap<Arc<str>, usize> = HashMap::new();
    let (mut ops, mut bytes) = (0, 0);
    let mut batch = Batch {
        ops: Vec::new(),
        first: carry.front().map_or(0, |q| q.seq),
        last: 0,
    };
    while let Some(queued) = carry.front_mut() {
        let slot = slots.get(&queued.id).copied();
        let built = queued.build(keys, slot.is_some_and(|i| records[i].whole));
        let (ops_before, bytes_before) =
            slot.map_or((0, 0), |i| (records[i].ops.len(), records[i].size));
        let ops_after = ops + built.ops.len() - ops_before;
        let bytes_after = bytes + built.size - bytes_before;
        if !records.is_empty() && (ops_after >= MAX_TXN_OPS || bytes_after > MAX_TXN_BYTES) {
            queued.built = Some(built);
            break;
        }
        match slot {
            Some(i) => records[i] = built,
            None => {
                slots.insert(queued.id.clone(), records.len());
                records.push(built);
            }
        }
        (ops, bytes) = (ops_after, bytes_after);
        batch.last = queued.seq;
        carry.pop_front();
    }
    batch.ops = records.into_iter().flat_map(|r| r.ops).collect();
    batch
}

/// The writer thread: batch after batch until the store is dropped or the writer stops.
fn run(shared: &Shared, mut marker: Marker) {
    let mut carry = VecDeque::new();
    while shared.take(&mut carry) {
        let batch = next_batch(&mut carry, &shared.keys);
        let (first, last) = (batch.first, batch.last);
        match commit(shared, batch, &mut marker) {
            Ok(()) => shared.finish(first, last, None),
            Err(Stop::Refused(reason)) => {
                // Its changes are in the store's memory already (as a journal's entries are
                // once written): going on would leave that memory ahead of etcd. As a journal
                // whose fsync failed, the writer stops; the term's next store reads etcd again.
                warn!("etcd refused a batch of changes: {reason}");
                shared.finish(first, last, Some(reason.clone()));
                shared.fail(format!("etcd refused a batch of changes: {reason}"));
                return;
            }
            Err(Stop::ForGood(reason)) => {
                shared.fail(reason);
                return;
            }
        }
    }
}

/// Why a batch was not committed.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// etcd refused it (not applied): its changes fail, and the writer stops.
    Refused(String),
    /// The term is over or the store closed: nothing more is written.
    ForGood(String),
}

/// Commits `batch` in one transaction fenced on the term and on the writer tag, retrying
/// transient errors while the term is valid.
fn commit(shared: &Shared, batch: Batch, marker: &mut Marker) -> Result<(), Stop> {
    let tag = marker.next_tag();
    let mut success = batch.ops;
    success.push(Op::put(marker.key.clone(), tag.clone()));
    let txn = Txn {
        compare: vec![marker.compare()],
        success,
        failure: vec![Op::Range(Range::key(marker.key.clone()))],
    };
    let txn = fence(txn, &shared.leader_key, shared.term);
    let mut pause = RETRY_FIRST;
    let mut auth_refused = 0;
    for attempt in 0u32.. {
        if shared.lock().closed {
            return Err(Stop::ForGood("the store was closed".into()));
        }
        if let Some(reason) = shared.term_over() {
            return Err(Stop::ForGood(reason));
        }
        match shared.client.txn(&txn) {
            Ok(answer) => {
                resolve(answer, shared.term, &tag)?;
                marker.expected = Some(tag);
                marker.batch += 1;
                return Ok(());
            }
            Err(e @ EtcdError::AuthRefused { .. }) if auth_refused + 1 >= AUTH_ATTEMPTS => {
                shared.count_error();
                return Err(Stop::Refused(format!(
                    "{e} ({AUTH_ATTEMPTS} times, each after authenticating again): check \
                     [store] user and password_file against the etcd user"
                )));
            }
            Err(EtcdError::PermissionDenied { endpoint, reason }) => {
                shared.count_error();
                return Err(Stop::Refused(denied(shared, &endpoint, &reason)));
            }
            // Applied, but to data etcd rolled back: not a refusal; the writer stops for good.
            Err(e @ EtcdError::WentBack { .. }) => {
                shared.count_error();
                return Err(Stop::ForGood(e.to_string()));
            }
            Err(e) if transient(&e) => {
                shared.count_error();
                if matches!(e, EtcdError::AuthRefused { .. }) {
                    auth_refused += 1;
                }
                if attempt == 0 {
                    warn!("etcd store: a commit failed, retrying while the term lasts: {e}");
                } else {
                    debug!("etcd store: attempt {} failed: {e}", attempt + 1);
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(RETRY_MAX);
            }
            Err(e) => {
                shared.count_error();
                return Err(Stop::Refused(format!("etcd refused the change: {e}")));
            }
        }
    }
    unreachable!("the attempts are not counted out")
}

/// Why a batch is refused when etcd denies the user's roles the transaction: what it
/// touches, and what the operator is to do about it.
fn denied(shared: &Shared, endpoint: &str, reason: &str) -> String {
    let records = &shared.keys.records;
    let prefix = records.strip_suffix("records/").unwrap_or(records);
    let user = shared.client.user().map_or_else(
        || "this instance (no [store] user)".to_string(),
        |u| format!("etcd user '{u}'"),
    );
    format!(
        "etcd at {endpoint} denied {user} a write of the store ({reason}), which writes \
         {records}<id>, {}<id> and {} and reads {}: grant the user's role readwrite on the \
         prefix {prefix} (etcdctl role grant-permission ROLE readwrite {prefix} \
         --prefix=true); the store opens again by itself once it may",
        shared.keys.progress,
        String::from_utf8_lossy(&writer_key(prefix)),
        String::from_utf8_lossy(&shared.leader_key),
    )
}

/// Whether an error may go away by itself (a retry of the same transaction is safe: see the
/// writer tag). A refused token may (the client authenticated again already, and [`commit`]
/// bounds its retries); a denied permission does not.
fn transient(e: &EtcdError) -> bool {
    match e {
        EtcdError::Unreachable { .. }
        | EtcdError::NoQuorum { .. }
        | EtcdError::Malformed { .. }
        | EtcdError::AuthRefused { .. } => true,
        EtcdError::PermissionDenied { .. } => false,
        // An overloaded etcd (its apply lagging) turns requests away before proposing them:
        // not a refusal of the change, which would stop the writer.
        EtcdError::Refused { message, .. } => message.contains("too many requests"),
        _ => false,
    }
}

/// What a transaction's answer means: committed (now, or by an earlier attempt that left
/// `tag`), or the writer must stop (deposed, or another writer in this term).
fn resolve(answer: TxnResponse, term: Term, tag: &[u8]) -> Result<(), Stop> {
    if answer.succeeded {
        return Ok(());
    }
    let read = |i: usize| match answer.responses.get(i) {
        Some(OpResponse::Range(range)) => range.kvs.first(),
        _ => None,
    };
    match read(0) {
        Some(kv) if term.holds(kv) => {}
        _ => {
            return Err(Stop::ForGood(
                "deposed: the leader key is no longer this term's".into(),
            ));
        }
    }
    if read(1).is_some_and(|kv| kv.value == tag) {
        // A timed-out attempt landed after all.
        return Ok(());
    }
    Err(Stop::ForGood(
        "another store wrote the records in this term (its writer tag changed)".into(),
    ))
}

/// Why an import into etcd did not complete.
#[derive(Debug)]
pub enum ImportError {
    /// The leader key exists: instances are running on the prefix. Nothing was written.
    Running { leader: String },
    /// The prefix holds records already. Nothing was written.
    NotEmpty { records: i64 },
    /// An earlier import into the prefix did not finish: its marker holds this value (see
    /// [`unfinished_import`]). Nothing was written.
    Unfinished { marker: Vec<u8> },
    /// etcd could not be read or written; `written` records were committed before.
    Etcd { written: usize, error: EtcdError },
    /// An instance started, or other records appeared, while importing: `written` records
    /// were committed before.
    Interrupted { written: usize, reason: String },
    /// A record's key and value (`bytes`) would exceed what one transaction takes
    /// ([`MAX_TXN_BYTES`]): etcd could refuse it halfway through the import. Nothing was
    /// written.
    TooLarge { id: String, bytes: usize },
}

/// Writes `records` (checked, unique ids; each its id and its record entry's JSON) under an
/// empty `prefix` in their order, which becomes the creation order, in bounded transactions
/// each guarded by "no leader key" and "none of its keys exists". Returns how many. A record
/// larger than one transaction takes is refused before anything is written.
///
/// etcd cannot take them all in one transaction, so an import of more than one transaction
/// is made detectable instead: the first transaction also puts the import marker
/// ([`importing_key`]: who, when, how many), every later one requires it as put, and the last
/// one deletes it. An import interrupted in between (killed, etcd lost) leaves the marker
/// with part of the records: no instance leads on the prefix while it exists (the leader's
/// load, and a follower's read, refuse it with [`unfinished_import`]), and an import again
/// refuses it, saying how to start over.
pub fn import(
    client: &Client,
    prefix: &str,
    records: impl IntoIterator<Item = (String, Vec<u8>)>,
) -> Result<usize, ImportError> {
    let records: Vec<(String, Vec<u8>)> = records.into_iter().collect();
    let records_prefix = records_prefix(prefix);
    for (n, (id, json)) in records.iter().enumerate() {
        // The key, and the value `with_seq` makes of the JSON.
        let value = format!("{{\"seq\":{n},").len() + json.len().saturating_sub(1);
        let bytes = records_prefix.len() + id.len() + value;
        if bytes > MAX_TXN_BYTES {
            return Err(ImportError::TooLarge {
                id: id.clone(),
                bytes,
            });
        }
    }
    let etcd = |error| ImportError::Etcd { written: 0, error };
    let importing = importing_key(prefix);
    if let Some(kv) = client.get(&importing).map_err(etcd)? {
        return Err(ImportError::Unfinished { marker: kv.value });
    }
    let leader = leader_key(prefix);
    if let Some(kv) = client.get(&leader).map_err(etcd)? {
        return Err(ImportError::Running {
            leader: String::from_utf8_lossy(&kv.value).into_owned(),
        });
    }
    let existing = client
        .range(&Range::prefix(records_prefix.clone()).limit(1))
        .map_err(etcd)?;
    if existing.count > 0 {
        return Err(ImportError::NotEmpty {
            records: existing.count,
        });
    }
    let total = records.len();
    let mut batches: Vec<Vec<(Vec<u8>, Vec<u8>)>> = Vec::new();
    let mut batch: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut bytes = 0;
    for (n, (id, json)) in records.into_iter().enumerate() {
        let key = record_key(&records_prefix, &id);
        let value = with_seq(&json, n as u64);
        let size = key.len() + value.len();
        // One comparison per key, one for the leader key and one for the marker; one
        // operation per key, one for the marker and one for the orphans' deletion.
        if !batch.is_empty() && (batch.len() + 3 > MAX_TXN_OPS || bytes + size > MAX_TXN_BYTES) {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += size;
        batch.push((key, value));
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    let marker = serde_json::to_vec(&ImportMarker::now(total)).expect("a marker serialises");
    let last = batches.len().saturating_sub(1);
    let mut written = 0;
    for (i, batch) in batches.iter().enumerate() {
        let step = ImportStep {
            importing: &importing,
            marker: &marker,
            first: i == 0,
            last: i == last,
        };
        // Mutable parts left without their records (their keys deleted by hand) must not apply
        // to records imported under their ids: the first transaction deletes them all.
        let orphans = step.first.then(|| {
            let progress = progress_prefix(prefix);
            Op::Delete {
                range_end: Some(prefix_end(progress.as_bytes())),
                key: progress.into_bytes(),
            }
        });
        written += import_batch(client, &leader, batch, &step, orphans, written)?;
    }
    debug!("imported {written} record(s) under {records_prefix}");
    Ok(written)
}

/// Where one transaction of an import stands towards the import marker.
struct ImportStep<'a> {
    importing: &'a [u8],
    /// The marker's value (this import's).
    marker: &'a [u8],
    /// The first transaction: the marker must be absent, and is put unless this is also the
    /// last one (then there is no "between" to detect).
    first: bool,
    /// The last transaction: the marker is deleted unless this is also the first one.
    last: bool,
}

impl ImportStep<'_> {
    /// The comparison on the marker and the operation on it, if any.
    fn marker(&self) -> (Compare, Option<Op>) {
        let key = self.importing.to_vec();
        let compare = if self.first {
            Compare::absent(key.clone())
        } else {
            Compare::new(key.clone(), Cmp::Equal, Target::Value(self.marker.to_vec()))
        };
        let op = match (self.first, self.last) {
            (true, true) => None,
            (true, false) => Some(Op::put(key, self.marker.to_vec())),
            (false, true) => Some(Op::delete(key)),
            (false, false) => None,
        };
        (compare, op)
    }
}

/// Commits one transaction of an import, with `also` (the first one's deletion of orphaned
/// mutable parts); `written` records were before it.
fn import_batch(
    client: &Client,
    leader: &[u8],
    batch: &[(Vec<u8>, Vec<u8>)],
    step: &ImportStep<'_>,
    also: Option<Op>,
    written: usize,
) -> Result<usize, ImportError> {
    let (marker_compare, marker_op) = step.marker();
    let mut txn = Txn::new()
        .when(Compare::absent(leader.to_vec()))
        .when(marker_compare);
    for (key, value) in batch {
        txn = txn
            .when(Compare::absent(key.clone()))
            .then(Op::put(key.clone(), value.clone()));
    }
    for op in [marker_op, also].into_iter().flatten() {
        txn = txn.then(op);
    }
    let (first_key, first_value) = &batch[0];
    let txn = txn
        .otherwise(Op::Range(Range::key(leader.to_vec())))
        .otherwise(Op::Range(Range::key(first_key.clone())))
        .otherwise(Op::Range(Range::key(step.importing.to_vec())));
    let mut attempt = 0;
    let answer = loop {
        attempt += 1;
        match client.txn(&txn) {
            Ok(answer) => break answer,
            Err(e) if transient(&e) && attempt < IMPORT_ATTEMPTS => {
                warn!("import: a transaction failed, retrying: {e}");
                std::thread::sleep(RETRY_MAX);
            }
            Err(error) => return Err(ImportError::Etcd { written, error }),
        }
    };
    if answer.succeeded {
        return Ok(batch.len());
    }
    let read = |i: usize| match answer.responses.get(i) {
        Some(OpResponse::Range(range)) => range.kvs.first().cloned(),
        _ => None,
    };
    if let Some(kv) = read(0) {
        return Err(ImportError::Interrupted {
            written,
            reason: format!(
                "an instance started meanwhile (the leader key is held by {})",
                String::from_utf8_lossy(&kv.value)
            ),
        });
    }
    match read(1) {
        // An attempt whose answer was lost had committed the whole batch (and its marker
        // operation: the records and the marker change in one transaction).
        Some(kv) if kv.value == *first_value => Ok(batch.len()),
        _ => match read(2) {
            Some(kv) if kv.value != step.marker => Err(ImportError::Interrupted {
                written,
                reason: format!(
                    "another import began meanwhile: {}",
                    unfinished_import_marker(&kv.value)
                ),
            }),
            None if !step.first => Err(ImportError::Interrupted {
                written,
                reason: "the import marker was deleted meanwhile".into(),
            }),
            _ => Err(ImportError::Interrupted {
                written,
                reason: "records appeared under the prefix meanwhile (another import?)".into(),
            }),
        },
    }
}

/// A marker's value as shown in messages.
fn unfinished_import_marker(value: &[u8]) -> String {
    String::from_utf8_lossy(value).chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::RangeResponse;
    use crate::mep::Step;
    use crate::model::Status;
    use crate::store::{Record, RecordEntry};

    fn record(id: &str, body_bytes: usize) -> Arc<Record> {
        let mut r = Record::new(
            id.into(),
            "1".into(),
            Arc::from(format!(r#"{{"x":"{}"}}"#, "y".repeat(body_bytes))),
            Status::Created,
            Arc::from([Step::new("l", "/t", "{}")]),
            1,
            5,
        );
        r.seq = 3;
        Arc::new(r)
    }

    fn keys() -> Keys {
        Keys {
            records: "/p/records/".into(),
            progress: "/p/progress/".into(),
        }
    }

    fn queued(seq: u64, id: &str, write: Write) -> Queued {
        Queued {
            seq,
            id: id.into(),
            write,
            built: None,
        }
    }

    fn whole(seq: u64, id: &str, body_bytes: usize) -> Queued {
        queued(seq, id, Write::Whole(record(id, body_bytes)))
    }

    fn progress(seq: u64, id: &str, body_bytes: usize) -> Queued {
        queued(seq, id, Write::Progress(record(id, body_bytes)))
    }

    fn text(op: &Op) -> String {
        match op {
            Op::Put { key, value, .. } => format!(
                "put {} {}",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(value)
            ),
            Op::Delete { key, .. } => format!("delete {}", String::from_utf8_lossy(key)),
            Op::Range(range) => format!("range {}", String::from_utf8_lossy(&range.key)),
        }
    }

    #[test]
    fn a_value_is_the_record_entry_with_its_seq_first_and_reads_back() {
        let r = record("a", 3);
        let value = with_seq(&r.json(), r.seq());
        let text = std::str::from_utf8(&value).unwrap();
        assert!(
            text.starts_with(r#"{"seq":3,"id":"a","region":"1","#),
            "{text}"
        );
        assert_eq!(seq_of(&value), 3);
        let entry: RecordEntry = serde_json::from_slice(&value).unwrap();
        assert_eq!((&*entry.id, entry.applied, entry.created), ("a", 1, 5));
        assert_eq!(seq_of(br#"{"id":"x"}"#), 0, "no seq: first");
    }

    #[test]
    fn the_last_change_of_a_record_wins_in_a_batch_in_queue_order() {
        let mut carry: VecDeque<Queued> = [
            whole(1, "a", 1),
            whole(2, "b", 1),
            progress(3, "c", 1),
            progress(4, "a", 2),
            queued(5, "b", Write::Remove),
            progress(6, "c", 3),
        ]
        .into();
        let batch = next_batch(&mut carry, &keys());
        assert!(carry.is_empty());
        assert_eq!((batch.first, batch.last), (1, 6));
        let ops: Vec<String> = batch.ops.iter().map(text).collect();
        assert_eq!(ops.len(), 4, "{ops:#?}");
        // A creation and a later change in one batch: the whole record as it is now.
        assert!(
            ops[0].starts_with(r#"put /p/records/a {"seq":3,"id":"a","#),
            "{}",
            ops[0]
        );
        assert!(ops[0].contains(r#""x":"yy""#), "{}", ops[0]);
        // A removal deletes both keys.
        assert_eq!(ops[1..3], ["delete /p/records/b", "delete /p/progress/b"]);
        // A change after the creation: the mutable part only, as last changed.
        assert_eq!(
            ops[3],
            r#"put /p/progress/c {"id":"c","applied":1,"status":"created","modified":5}"#
        );
    }

    #[test]
    fn an_import_puts_its_marker_in_its_first_transaction_and_deletes_it_in_its_last() {
        let marker = serde_json::to_vec(&ImportMarker::now(300)).unwrap();
        let step = |first, last| ImportStep {
            importing: b"/p/importing",
            marker: &marker,
            first,
            last,
        };
        let ops = |first, last| {
            let (compare, op) = step(first, last).marker();
            (compare, op.as_ref().map(text))
        };
        let (compare, op) = ops(true, false);
        assert_eq!(compare, Compare::absent(b"/p/importing".to_vec()));
        assert!(op.unwrap().starts_with("put /p/importing {\"host\":"));
        let (compare, op) = ops(false, false);
        let as_put = Compare::new(
            b"/p/importing".to_vec(),
            Cmp::Equal,
            Target::Value(marker.clone()),
        );
        assert_eq!(compare, as_put);
        assert_eq!(
            op, None,
            "a transaction between requires the marker, as put"
        );
        assert_eq!(ops(false, true).0, as_put);
        assert_eq!(ops(false, true).1.as_deref(), Some("delete /p/importing"));
        assert_eq!(ops(true, true).1, None, "one transaction needs no marker");
        let why = unfinished_import("/p", &marker);
        assert!(
            why.contains(&format!("by pid {} on ", std::process::id())),
            "{why}"
        );
        assert!(why.contains("of 300 record(s)"), "{why}");
        assert!(
            why.contains("etcdctl del --prefix /p/records/ && etcdctl del /p/importing"),
            "{why}"
        );
        assert!(unfinished_import("/p", b"\xffjunk").contains("its marker holds"));
    }

    #[test]
    fn a_batch_is_bounded_in_operations_and_bytes() {
        let mut carry: VecDeque<Queued> = (0..300)
            .map(|n| whole(n + 1, &format!("r{n}"), 10))
            .collect();
        let mut sizes = Vec::new();
        while !carry.is_empty() {
            sizes.push(next_batch(&mut carry, &keys()).ops.len());
        }
        assert_eq!(
            sizes,
            [127, 127, 46],
            "one operation left for the writer tag"
        );
        // Removals take two operations each: 63 of them fill 126, the 64th does not fit.
        let mut carry: VecDeque<Queued> = (0..100)
            .map(|n| queued(n + 1, &format!("r{n}"), Write::Remove))
            .collect();
        let mut sizes = Vec::new();
        while !carry.is_empty() {
            sizes.push(next_batch(&mut carry, &keys()).ops.len());
        }
        assert_eq!(sizes, [126, 74]);
        // 300 KB each: three fit 1 MiB; one larger than the bound goes alone.
        let mut carry: VecDeque<Queued> = (0..7)
            .map(|n| {
                let size = if n == 3 { 1_100_000 } else { 300_000 };
                whole(n + 1, &format!("r{n}"), size)
            })
            .collect();
        let mut batches = Vec::new();
        while !carry.is_empty() {
            let batch = next_batch(&mut carry, &keys());
            batches.push((batch.ops.len(), batch.first, batch.last));
        }
        assert_eq!(batches, [(3, 1, 3), (1, 4, 4), (3, 5, 7)]);
        // The changes of a large record after its creation are small.
        let mut carry: VecDeque<Queued> = (0..4).map(|n| progress(n + 1, "big", 300_000)).collect();
        let built = carry[0].build(&keys(), false);
        assert!(built.size < 100, "{}", built.size);
        assert_eq!(next_batch(&mut carry, &keys()).ops.len(), 1);
    }

    #[test]
    fn a_page_of_the_largest_values_fits_one_answer_and_one_more_would_not() {
        let largest = ETCD_MAX_REQUEST_BYTES * 4 / 3 + 1024;
        let bound = crate::etcd::MAX_ANSWER_BYTES;
        assert_eq!(PAGE, 127);
        assert!(PAGE as u64 * largest <= bound);
        assert!((PAGE as u64 + 1) * largest > bound);
        // Our own records (one transaction at most, in base64) leave room.
        assert!(PAGE as u64 * (MAX_TXN_BYTES as u64 * 4 / 3 + 1024) < bound * 3 / 4);
    }

    #[test]
    fn a_batch_takes_exactly_max_txn_bytes_and_one_byte_more_starts_the_next() {
        let size = |id: &str, body: usize| whole(1, id, body).build(&keys(), false).size;
        // Two changes of exactly MAX_TXN_BYTES in all, then one byte more.
        let first = size("a", 400_000);
        let probe = size("b", 400_000);
        let fill = 400_000 + (MAX_TXN_BYTES - first - probe);
        assert_eq!(first + size("b", fill), MAX_TXN_BYTES);
        for (extra, expected) in [(0, vec![2]), (1, vec![1, 1])] {
            let mut carry: VecDeque<Queued> =
                [whole(1, "a", 400_000), whole(2, "b", fill + extra)].into();
            let mut batches = Vec::new();
            while !carry.is_empty() {
                batches.push(next_batch(&mut carry, &keys()).ops.len());
            }
            assert_eq!(batches, expected, "{extra} byte(s) past");
        }
        // A change of a record already in the batch counts by its new size only.
        let mut carry: VecDeque<Queued> = [
            whole(1, "a", 400_000),
            whole(2, "b", 10),
            progress(3, "b", fill),
        ]
        .into();
        assert_eq!(next_batch(&mut carry, &keys()).ops.len(), 2);
        assert!(carry.is_empty());
    }

    fn answer(leader_revision: Option<i64>, tag: Option<&[u8]>) -> TxnResponse {
        let range = |kv: Option<KeyValue>| {
            OpResponse::Range(RangeResponse {
                kvs: kv.into_iter().collect(),
                ..RangeResponse::default()
            })
        };
        let kv = |value: &[u8], create_revision| KeyValue {
            key: Vec::new(),
            value: value.to_vec(),
            create_revision,
            mod_revision: 0,
            version: 1,
            lease: 0,
        };
        TxnResponse {
            succeeded: false,
            revision: 9,
            responses: vec![
                // The leader key, on lease 7 (the tests' term's).
                range(leader_revision.map(|r| KeyValue {
                    lease: 7,
                    ..kv(b"url", r)
                })),
                range(tag.map(|t| kv(t, 1))),
            ],
        }
    }

    #[test]
    fn a_failed_comparison_tells_deposed_from_landed_from_another_writer() {
        let term = Term {
            lease: 7,
            create_revision: 42,
        };
        let mut ok = answer(None, None);
        ok.succeeded = true;
        assert_eq!(resolve(ok, term, b"t:2"), Ok(()));
        let deposed = Err(Stop::ForGood(
            "deposed: the leader key is no longer this term's".into(),
        ));
        assert_eq!(resolve(answer(None, None), term, b"t:2"), deposed);
        assert_eq!(
            resolve(answer(Some(43), Some(b"t:2")), term, b"t:2"),
            deposed
        );
        assert_eq!(
            resolve(answer(Some(42), Some(b"t:2")), term, b"t:2"),
            Ok(()),
            "an earlier attempt landed"
        );
        // The term's revision on another lease: an etcd that lost its data counted again.
        let other_lease = Term { lease: 8, ..term };
        assert_eq!(
            resolve(answer(Some(42), Some(b"t:2")), other_lease, b"t:2"),
            deposed
        );
        assert!(matches!(
            resolve(answer(Some(42), Some(b"u:1")), term, b"t:2"),
            Err(Stop::ForGood(why)) if why.contains("another store")
        ));
    }

    #[test]
    fn an_overloaded_etcd_is_waited_for_and_a_refusal_is_not() {
        let refused = |code, message: &str| EtcdError::Refused {
            endpoint: "http://127.0.0.1:2379".into(),
            status: 429,
            code,
            message: message.into(),
        };
        // etcd's ErrGRPCTooManyRequests (RESOURCE_EXHAUSTED): not applied, a retry is safe.
        assert!(transient(&refused(8, "etcdserver: too many requests")));
        assert!(!transient(&refused(3, "etcdserver: request is too large")));
        assert!(!transient(&refused(
            8,
            "etcdserver: mvcc: database space exceeded"
        )));
    }

    #[test]
    fn a_refused_token_is_retried_and_a_denied_permission_is_not() {
        // What etcd's code 16 (an expired or unknown token, refused again after the client
        // authenticated anew) and code 7 become (see etcd.rs's `unary_errors_are_told_apart`).
        let token = EtcdError::AuthRefused {
            endpoint: "http://e".into(),
            reason: "etcdserver: invalid auth token".into(),
        };
        assert!(
            transient(&token),
            "retried, at most AUTH_ATTEMPTS times by commit"
        );
        let denied = EtcdError::PermissionDenied {
            endpoint: "http://e".into(),
            reason: "etcdserver: permission denied".into(),
        };
        assert!(!transient(&denied), "no retry grants a permission");
    }

    #[test]
    fn options_read_the_files_and_name_them_when_they_cannot() {
        let dir = std::env::temp_dir().join(format!("etcd-options-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let password = dir.join("pw");
        std::fs::write(&password, "s3cret\n").unwrap();
        let mut store = StoreConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            user: Some("root".into()),
            password_file: Some(password.clone()),
            ..StoreConfig::default()
        };
        let options = etcd_options(&store, Duration::from_secs(2)).unwrap();
        assert_eq!(options.password.as_deref(), Some("s3cret"));
        assert_eq!(options.timeout, Duration::from_secs(2));
        store.ca_file = Some(dir.join("missing.pem"));
        let e = etcd_options(&store, Duration::from_secs(2)).unwrap_err();
        assert!(e.contains("ca_file") && e.contains("missing.pem"), "{e}");
        std::fs::write(dir.join("bad.pem"), "not a certificate").unwrap();
        store.ca_file = Some(dir.join("bad.pem"));
        let e = etcd_options(&store, Duration::from_secs(2)).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        store.ca_file = None;
        std::fs::write(&password, "\n").unwrap();
        let e = etcd_options(&store, Duration::from_secs(2)).unwrap_err();
        assert!(e.contains("password_file") && e.contains("empty"), "{e}");
        store.password_file = None;
        let e = etcd_options(&store, Duration::from_secs(2)).unwrap_err();
        assert!(e.contains("go together"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
