//! The records of rule requests: one mutex-guarded map, held only for in-memory work (never
//! across a platform call, an `fsync` or an etcd call), made durable by a backend: the
//! [`journal`](crate::journal) in `state_dir`, or [etcd](crate::etcd_store) (the leader's store
//! of one term), or nothing (tests, a follower's read). Every change is handed to the backend
//! under the lock — so the backend's order is the order of the changes — and is durable before
//! the call that made it returns. Each record says which of its planned steps may be on the
//! platform.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::ops::{Bound, Range};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::etcd_store::{EtcdWriter, MAX_RECORD_BYTES, Stored, Value as EtcdValue, Write};
/// A whole record's durable form (the journal's `put` entry): also a line of an export, so that
/// [`migrate`](crate::migrate) depends on the store, not on the journal behind it.
pub(crate) use crate::journal::RecordEntry;
use crate::journal::{
    Entry, Journal, JournalError, ReplayStats, StatusEntry, StepEntry, UpdateEntry,
};
use crate::mep::{RuleIdentity, Step};
use crate::model::Status;
use crate::util::{lock, same_platform};

/// One rule request and what the plugin knows about its rules on the platform.
///
/// Kept small because every request not yet deleted stays in memory: the id is shared with
/// the key of the store's map, the region id with the other records of the region, and the
/// request and steps with every copy handed out.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: Arc<str>,
    /// Shared with the other records of the region (the store interns it).
    pub region_id: Arc<str>,
    /// What the caller sent, as compact JSON (without `RegionId`); kept as text because that
    /// is ten times smaller than a parsed tree.
    pub request: Arc<str>,
    pub status: Status,
    /// Why the request is FAILED, or what a removal is waiting for.
    pub detail: Option<Box<str>>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub last_modified: i64,
    /// What will be (or was) sent to the platform, in apply order.
    pub steps: Arc<[Step]>,
    /// `steps[..applied]` may be on the platform; `steps[applied..]` certainly are not.
    pub applied: usize,
    /// The platform URL (credentials masked) the steps are sent to, shared with the other
    /// records of the platform; `None` for a record journaled before it was recorded.
    pub platform: Option<Arc<str>>,
    /// Applied steps whose rule the platform already had in place before this request (a
    /// MEC 011 rule already ACTIVE): this request did not change it, so its removal leaves
    /// it as it was (no platform call), unless a request that changed the rule hands its
    /// removal over ([`Record::take_over`]). `None` when there is none.
    pub kept: Option<Arc<[usize]>>,
    /// Not journaled: an operation on this record is in flight.
    pub busy: bool,
    /// Not journaled: failed background removal attempts so far.
    pub attempts: u32,
    /// Not journaled: when the reconciler may next try (ms since the epoch).
    pub next_attempt: i64,
    /// Not journaled: the record's place in the creation order, given when it is inserted
    /// under the records lock (at start-up: the order of the snapshot, which is written in
    /// this order, then of the journal). Unique and never changed, so two requests created in
    /// the same millisecond keep their order, and one created while a client pages is never
    /// placed before a page already served.
    pub seq: u64,
}

impl Record {
    /// A new record with no runtime state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: Arc<str>,
        region_id: Arc<str>,
        request: Arc<str>,
        status: Status,
        steps: Arc<[Step]>,
        applied: usize,
        now: i64,
    ) -> Record {
        Record {
            id,
            region_id,
            request,
            status,
            detail: None,
            created_at: now,
            last_modified: now,
            steps,
            applied,
            platform: None,
            kept: None,
            busy: false,
            attempts: 0,
            next_attempt: 0,
            seq: 0,
        }
    }

    /// Whether the background reconciler has work on it: rules that must come off the
    /// platform and nobody is working on it. A PENDING record nobody works on is a creation
    /// abandoned because its state could not be recorded: it is rolled back.
    pub fn needs_removal(&self) -> bool {
        !self.busy && self.has_rules_to_remove()
    }

    /// Whether rules of this request must still come off the platform, whoever works on
    /// them now: the reconciler's backlog (`mec_plugin_reconciler_backlog`). Unlike
    /// [`needs_removal`](Record::needs_removal), a record in the middle of a removal counts:
    /// on a platform that hangs every attempt lasts `timeout_ms`, and a gauge that read 0
    /// then would reset the alerts built on it. A PENDING record someone works on is a
    /// creation in flight, not backlog.
    pub fn has_rules_to_remove(&self) -> bool {
        match self.status {
            Status::Deleting => true,
            Status::Failed => self.applied > 0,
            Status::Pending => !self.busy,
            _ => false,
        }
    }

    fn to_entry(&self) -> Entry<'_> {
        Entry::Put(self.to_record_entry())
    }

    /// The record as its journal `put` entry's content: also one line of an export
    /// ([`migrate`](crate::migrate)).
    pub(crate) fn to_record_entry(&self) -> RecordEntry<'_> {
        RecordEntry {
            id: Cow::Borrowed(&self.id),
            region: Cow::Borrowed(&self.region_id),
            request: serde_json::from_str(&self.request).expect("stored requests are JSON"),
            steps: self.steps.iter().map(StepEntry::from).collect(),
            applied: self.applied,
            status: self.status.into(),
            detail: self.detail.as_deref().map(Cow::Borrowed),
            created: self.created_at,
            modified: self.last_modified,
            platform: self.platform.as_deref().map(Cow::Borrowed),
            kept: self.kept.as_deref().map(<[usize]>::to_vec),
        }
    }

    /// The journal entry of a change of the mutable part; with the record's platform when
    /// `repointed` (only the update that changed it carries it).
    fn update_entry(&self, repointed: bool) -> Entry<'_> {
        Entry::Update(UpdateEntry {
            id: Cow::Borrowed(&self.id),
            applied: self.applied,
            status: self.status.into(),
            detail: self.detail.as_deref().map(Cow::Borrowed),
            modified: self.last_modified,
            kept: self.kept.as_deref().map(<[usize]>::to_vec),
            platform: self
                .platform
                .as_deref()
                .filter(|_| repointed)
                .map(Cow::Borrowed),
        })
    }

    /// The journaled part of the record, to tell whether a change must be written.
    #[allow(clippy::type_complexity)]
    fn durable_state(&self) -> (Status, &Option<Box<str>>, usize, i64, Option<&[usize]>) {
        (
            self.status,
            &self.detail,
            self.applied,
            self.last_modified,
            self.kept.as_deref(),
        )
    }

    /// Whether step `k` found its rule already in place (see [`Record::kept`]).
    pub fn is_kept(&self, k: usize) -> bool {
        self.kept.as_deref().is_some_and(|kept| kept.contains(&k))
    }

    /// Whether the apply of step `j` may still be on its way, or answered but its outcome not
    /// yet recorded: `j` is the last step a creation at work counts. (Also true while that
    /// creation undoes its steps: the guess errs on the side [`Store::release_if_shared`]
    /// corrects.)
    fn apply_may_be_unanswered(&self, j: usize) -> bool {
        self.status == Status::Pending && self.busy && j + 1 == self.applied
    }

    /// Whether step `j` holds the platform rule of `step` without keeping it: this request
    /// changed the rule (or may have, or took over from one that did), so that the last
    /// request holding it must remove it.
    fn changed(&self, j: usize, step: &Step, identity: RuleIdentity) -> bool {
        j < self.applied && identity.same(step, &self.steps[j]) && !self.is_kept(j)
    }
}

/// What [`Record::claim_removal`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovalClaim {
    /// The record is now DELETING and the caller's to remove.
    Claimed,
    /// Already DELETING and nobody works on it: it is due for the reconciler now.
    Queued,
    /// A creation or another removal works on it: nothing changed.
    InUse,
}

/// The lifecycle. Every change of a record's status, of what it says may be on the platform,
/// and of who works on it goes through one of these transitions (`service` and `reconciler`
/// call them inside [`Store::update`], which journals what they change). Each keeps one or
/// both of the invariants (ARCHITECTURE.md):
///
/// - **covers**: a record always covers what may be on the platform: `applied` rises before a
///   step is sent and falls only once the step is known to be off (or kept, or released);
///   nothing else changes it.
/// - **one operation**: one operation per request at a time: `busy` is taken by one caller
///   (a creation, a DELETE, the reconciler, a forget) and given back by the same one.
///
/// ```text
///            created                     claim_removal              (store removes it)
///  PENDING ───────────▶ CREATED ─────────────────────────▶ DELETING ────────────▶ DELETED
///     │ failed / interrupted                                  ▲  retry, settling, stuck
///     ▼                            claim_removal              │  (stays DELETING)
///  FAILED ────────────────────────────────────────────────────┘
///     retry, settling, stuck, undone (stays FAILED; the reconciler removes what it holds)
/// ```
impl Record {
    /// Takes the record for one operation; `false` (nothing changed) if another has it.
    /// Keeps *one operation*.
    #[must_use]
    pub fn claim(&mut self) -> bool {
        !std::mem::replace(&mut self.busy, true)
    }

    /// Gives the record back with nothing else changed: the operation that claimed it ends.
    /// Keeps *one operation*.
    pub fn release(&mut self) {
        self.busy = false;
    }

    /// Gives the record back to the reconciler, due at `at` (ms since the epoch): its
    /// operation stopped because its state could not be recorded. Keeps *one operation*.
    pub fn leave_to_reconciler(&mut self, at: i64) {
        self.busy = false;
        self.next_attempt = at;
    }

    /// Gives the record back after the reconciler's attempt number `attempts` could not record
    /// its progress; due again at `at`. Keeps *one operation*.
    pub fn back_off(&mut self, attempts: u32, at: i64) {
        self.attempts = attempts;
        self.leave_to_reconciler(at);
    }

    /// Step `k`, the next one, is about to be sent: from now on it may be on the platform.
    /// Made durable before the call. Keeps *covers*.
    pub fn sending(&mut self, k: usize) {
        debug_assert_eq!(
            self.applied, k,
            "request {}: steps are sent in order",
            self.id
        );
        self.applied = k + 1;
    }

    /// Step `k`, the last one counted, is not on the platform (its apply was refused before
    /// it took effect, or its removal succeeded) or is no longer this request's to remove
    /// (kept as it was, or held by another request). Keeps *covers*.
    pub fn step_off(&mut self, k: usize) {
        debug_assert_eq!(
            self.applied,
            k + 1,
            "request {}: removed in reverse",
            self.id
        );
        self.applied = k;
    }

    /// PENDING → CREATED: every step is on the platform; the creation gives the record back.
    /// Keeps *one operation*.
    pub fn created(&mut self, now: i64) {
        debug_assert_eq!(self.status, Status::Pending, "request {}", self.id);
        self.status = Status::Created;
        self.last_modified = now;
        self.busy = false;
    }

    /// PENDING → FAILED: a step failed and the creation undid what it could; the steps still
    /// counted are the reconciler's to remove from `retry_at` on. The creation gives the
    /// record back. Keeps *covers* (`applied` unchanged) and *one operation*.
    pub fn failed(&mut self, detail: impl Into<Box<str>>, retry_at: i64, now: i64) {
        debug_assert_eq!(self.status, Status::Pending, "request {}", self.id);
        self.status = Status::Failed;
        self.detail = Some(detail.into());
        self.last_modified = now;
        self.next_attempt = retry_at;
        self.busy = false;
    }

    /// PENDING → FAILED: a creation that will never finish (stopped by a restart, or by a
    /// failure to record its state) is rolled back: what it may have applied is removed like
    /// a failed creation's. Whoever works on it keeps it. Keeps *covers* (`applied`
    /// unchanged).
    pub fn interrupted(&mut self, detail: impl Into<Box<str>>, now: i64) {
        debug_assert_eq!(self.status, Status::Pending, "request {}", self.id);
        self.status = Status::Failed;
        self.detail = Some(detail.into());
        self.last_modified = now;
    }

    /// A DELETE takes the record: CREATED or FAILED → DELETING, claimed by the caller. One
    /// already DELETING that nobody works on is due for the reconciler now (and stays
    /// unclaimed); one in use, or still PENDING, is refused. Keeps *one operation*.
    pub fn claim_removal(&mut self, now: i64) -> RemovalClaim {
        if self.busy || self.status == Status::Pending {
            return RemovalClaim::InUse;
        }
        if self.status == Status::Deleting {
            self.next_attempt = 0;
            return RemovalClaim::Queued;
        }
        self.busy = true;
        self.status = Status::Deleting;
        self.detail = None;
        self.last_modified = now;
        RemovalClaim::Claimed
    }

    /// Removal attempt number `attempts` failed on the platform: the steps still counted stay
    /// (FAILED or DELETING, as it was) and are tried again at `at`. The remover gives the
    /// record back. Keeps *covers* and *one operation*.
    pub fn retry(&mut self, attempts: u32, at: i64, detail: impl Into<Box<str>>, now: i64) {
        self.attempts = attempts;
        self.next_attempt = at;
        self.detail = Some(detail.into());
        self.last_modified = now;
        self.busy = false;
    }

    /// A removal waits for the settle window of a step whose apply may still land, until
    /// `until`: the step stays counted until a removal is sent after it. The remover gives the
    /// record back. Keeps *covers* and *one operation*.
    pub fn settling(&mut self, until: i64, detail: impl Into<Box<str>>, now: i64) {
        self.next_attempt = until;
        self.detail = Some(detail.into());
        self.last_modified = now;
        self.busy = false;
    }

    /// The reconciler cannot remove the steps (their region is no longer configured): they
    /// stay counted, looked at again at `at`. It gives the record back. Keeps *covers* and
    /// *one operation*.
    pub fn stuck(&mut self, detail: impl Into<Box<str>>, at: i64) {
        self.detail = Some(detail.into());
        self.next_attempt = at;
        self.busy = false;
    }

    /// A FAILED request's steps are all off the platform: it stays listed FAILED, with nothing
    /// left for the reconciler. It gives the record back. Keeps *one operation*.
    pub fn undone(&mut self, detail: impl Into<Box<str>>, now: i64) {
        debug_assert_eq!(self.applied, 0, "request {}: still holds steps", self.id);
        self.attempts = 0;
        self.detail = Some(detail.into());
        self.last_modified = now;
        self.busy = false;
    }

    /// Step `k`, just applied, found its rule in place and no other request had changed it:
    /// its removal makes no call. Keeps *covers* (`applied` unchanged).
    pub fn keep(&mut self, k: usize, now: i64) {
        let mut kept = self.kept.as_deref().unwrap_or(&[]).to_vec();
        kept.push(k);
        self.kept = Some(Arc::from(kept));
        self.last_modified = now;
    }

    /// Another request that changed the rule of steps `js` (kept by this one) leaves it to
    /// this one: their removal now takes the rule off. Keeps *covers*.
    pub fn take_over(&mut self, js: &[usize]) {
        let kept: Vec<usize> = self
            .kept
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .copied()
            .filter(|k| !js.contains(k))
            .collect();
        self.kept = (!kept.is_empty()).then(|| Arc::from(kept));
    }

    /// DELETING → DELETED, on the copy the store handed back when it forgot the request:
    /// every step is off the platform. Keeps *covers*.
    pub fn removed(&mut self, now: i64) {
        self.status = Status::Deleted;
        self.applied = 0;
        self.busy = false;
        self.last_modified = now;
    }

    /// → DELETED, on the copy the store handed back when it forgot the request on request
    /// (`?forget=true`): its steps are left where they are, and `applied` still says how
    /// many may remain.
    pub fn forgotten(&mut self, now: i64) {
        self.status = Status::Deleted;
        self.busy = false;
        self.last_modified = now;
    }
}

/// Why the state could not be made durable (or, from etcd, read).
#[derive(Debug)]
pub enum StoreError {
    /// The journal in `state_dir` failed (see [`JournalError`]).
    Journal(JournalError),
    /// The etcd store cannot commit or read now: etcd unreachable or without quorum, or this
    /// instance no longer leads (its term is over). Answered 503 with `Retry-After`.
    Unavailable(String),
    /// The record is larger than one etcd transaction takes: nothing was written, and no retry
    /// can succeed (answered 413).
    TooLarge(String),
}

impl StoreError {
    /// Whether the state directory is out of space (writes resume once it has room again).
    pub fn is_no_space(&self) -> bool {
        matches!(self, StoreError::Journal(e) if e.is_no_space())
    }

    /// Whether another process holds the state directory (a running service, most likely).
    pub fn is_locked(&self) -> bool {
        matches!(self, StoreError::Journal(e) if e.is_locked())
    }

    /// Whether the store may work again without a restart (etcd back, another leader).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Journal(e) => e.fmt(f),
            StoreError::Unavailable(reason) => write!(f, "the etcd store is unavailable: {reason}"),
            StoreError::TooLarge(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<JournalError> for StoreError {
    fn from(e: JournalError) -> Self {
        StoreError::Journal(e)
    }
}

/// What fences an etcd store's writes: the election and the term the store was opened in.
/// Every write is a transaction that commits only while the leader key is still that term's.
pub struct Fence {
    pub election: Arc<crate::leader::Election>,
    pub term: crate::leader::Term,
}

/// All records, keyed by request id (the key is the record's own `id`, not a copy).
pub struct Store {
    records: Mutex<Records>,
    /// One copy of each region id for all the records of the region. Region ids are few and
    /// come from the configuration (or from a journal written with an older one), so they are
    /// never forgotten.
    regions: Mutex<Regions>,
    /// Taken only while `records` is held, and kept in step with it.
    rules: Mutex<RuleIndex>,
    durability: Durability,
}

/// Where the store's changes are made durable.
enum Durability {
    /// Nowhere: tests, tools, and a follower's read of etcd.
    Memory,
    /// The journal in `state_dir`.
    Journal(Journal),
    /// etcd, fenced on the leader's term (see [`crate::etcd_store`]).
    Etcd(EtcdWriter),
}

/// One change of the records, as the backend is handed it under the records lock: borrowed,
/// so that each backend takes what it needs (the journal an entry, written at once; etcd the
/// whole record, a pointer queued for its writer).
pub(crate) enum Change<'a> {
    /// A new record.
    Create(&'a Arc<Record>),
    /// A record's durable part changed (the whole record as it is now).
    Update(&'a Arc<Record>),
    /// A record was removed.
    Remove(&'a Arc<str>),
    /// A record's platform changed ([`Store::repoint`]), with its mutable part.
    Repoint(&'a Arc<Record>),
}

impl Change<'_> {
    /// The journal entry of the change.
    fn entry(&self) -> Entry<'_> {
        match self {
            Change::Create(record) => record.to_entry(),
            Change::Update(record) => record.update_entry(false),
            Change::Repoint(record) => record.update_entry(true),
            Change::Remove(id) => Entry::Remove {
                id: Cow::Borrowed(id),
            },
        }
    }
}

/// A record's place in the creation order ([`Record::seq`]), and its id.
type Created = (u64, Arc<str>);

/// A record loaded (replayed, or read from etcd) and its id.
type Keyed = (Arc<str>, Record);

/// The records and the index of each region's requests in creation order, kept in step under
/// one lock: a region's listing reads its own requests only.
#[derive(Default)]
struct Records {
    /// Each record behind its own `Arc`, so that a listing or a compaction copies pointers
    /// under the lock, not records (a change replaces the `Arc`, or copies a record still
    /// shared with a listing).
    by_id: BTreeMap<Arc<str>, Arc<Record>>,
    /// Per region, its records in creation order (a region's entry goes when it is empty).
    by_region: HashMap<Arc<str>, BTreeSet<Created>>,
    /// The places of the last [`REMOVED_CURSORS`] removed records, oldest first: a page
    /// asked for after a request deleted since (a client deleting what it lists) goes on
    /// where that request stood instead of being refused.
    removed: VecDeque<Created>,
    removed_at: HashMap<Arc<str>, u64>,
    /// The [`Record::seq`] of the next record inserted.
    next_seq: u64,
}

/// How many removed records a listing's `after` can still name (about 100 bytes each).
const REMOVED_CURSORS: usize = 10_000;

impl Records {
    /// Inserts a new record, given its place [`next_seq`](Records::next_seq) beforehand: last
    /// in the creation order.
    fn insert(&mut self, record: Arc<Record>) {
        debug_assert_eq!(record.seq, self.next_seq, "record {}", record.id);
        self.next_seq = record.seq + 1;
        index_region(&mut self.by_region, &record);
        if let Some(old) = self.by_id.insert(record.id.clone(), record) {
            debug_assert!(false, "record {} inserted twice", old.id);
        }
    }

    fn remove(&mut self, id: &str) -> Option<Arc<Record>> {
        let record = self.by_id.remove(id)?;
        if let Some(set) = self.by_region.get_mut(&*record.region_id) {
            set.remove(&(record.seq, record.id.clone()));
            if set.is_empty() {
                self.by_region.remove(&*record.region_id);
            }
        }
        if self.removed.len() == REMOVED_CURSORS {
            if let Some((_, old)) = self.removed.pop_front() {
                self.removed_at.remove(&old);
            }
        }
        self.removed.push_back((record.seq, record.id.clone()));
        self.removed_at.insert(record.id.clone(), record.seq);
        Some(record)
    }

    fn values(&self) -> impl Iterator<Item = &Arc<Record>> {
        self.by_id.values()
    }

    /// The records of `region`, in creation order.
    fn in_region(&self, region: &str) -> impl Iterator<Item = &Arc<Record>> {
        self.by_region
            .get(region)
            .into_iter()
            .flatten()
            .filter_map(|(_, id)| self.by_id.get(id))
    }

    fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// Adds `record` to its region's entry of [`Records::by_region`].
fn index_region(by_region: &mut HashMap<Arc<str>, BTreeSet<Created>>, record: &Record) {
    by_region
        .entry(record.region_id.clone())
        .or_default()
        .insert((record.seq, record.id.clone()));
}

/// One page of a listing, in creation order.
pub struct Page {
    /// Pointers to the records (the lock was released once they were taken).
    pub records: Vec<Arc<Record>>,
    /// More records follow the last one.
    pub more: bool,
}

/// How many applied steps of each region hold each platform rule, by a fingerprint of what
/// makes two steps one rule there ([`RuleIdentity`]): [`Store::release_if_shared`] asks it
/// instead of scanning every record (10–16 ms under the lock for 100,000 records). A count no
/// larger than the record's own steps proves that no other record holds the rule; anything
/// more (a shared rule, or two fingerprints that collide) is checked by the scan. Known once
/// [`Store::index_rules`] gives the regions' identities; counted when first needed (counting
/// 100,000 records takes ~60 ms, which start-up does not wait for).
#[derive(Default)]
struct RuleIndex {
    /// The identities are known.
    known: bool,
    /// `counts` holds every applied step.
    on: bool,
    identities: HashMap<Arc<str>, RuleIdentity>,
    counts: HashMap<u64, u32>,
    /// Each configured region's platform URL (credentials masked) and its other URLs
    /// (`aliases`), for records that recorded one of those or none
    /// ([`Store::current_platforms`]).
    platforms: HashMap<Arc<str>, Platform>,
}

impl RuleIndex {
    /// Records of regions no longer configured count as [`RuleIdentity::Call`].
    fn identity(&self, region: &str) -> RuleIdentity {
        self.identities
            .get(region)
            .copied()
            .unwrap_or(RuleIdentity::Call)
    }

    /// The platform `record`'s steps are on: its region's current one when it recorded none
    /// (recorded before records kept it) or one of the region's aliases, else the one it
    /// recorded.
    fn platform_of<'a>(&'a self, record: &'a Record) -> Option<&'a str> {
        let own = record.platform.as_deref();
        match self.platforms.get(&*record.region_id) {
            Some((current, aliases))
                if own.is_none_or(|own| aliases.iter().any(|a| same_platform(a, own))) =>
            {
                Some(current)
            }
            _ => own,
        }
    }

    fn key(&self, region: &str, step: &Step) -> u64 {
        self.identity(region).fingerprint(region, step)
    }

    /// `record.steps[range]` became applied (`add`) or stopped being applied.
    fn count(&mut self, record: &Record, range: Range<usize>, add: bool) {
        if !self.on {
            return;
        }
        let identity = self.identity(&record.region_id);
        for step in &record.steps[range] {
            let key = identity.fingerprint(&record.region_id, step);
            if add {
                *self.counts.entry(key).or_default() += 1;
            } else if let Some(n) = self.counts.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.counts.remove(&key);
                }
            } else {
                debug_assert!(false, "rule index out of step for {}", record.id);
            }
        }
    }

    /// `record`'s applied count went from `before` to its current value.
    fn moved(&mut self, record: &Record, before: usize) {
        let after = record.applied;
        if after > before {
            self.count(record, before..after, true);
        } else if after < before {
            self.count(record, after..before, false);
        }
    }

    /// Whether steps of records other than `record` may hold the rule of `step` (false is
    /// certain; true is to be checked).
    fn may_be_shared(&self, record: &Record, step: &Step) -> bool {
        if !self.on {
            return true;
        }
        let key = self.key(&record.region_id, step);
        let total = self.counts.get(&key).copied().unwrap_or(0) as usize;
        let own = record.steps[..record.applied]
            .iter()
            .filter(|s| self.key(&record.region_id, s) == key)
            .count();
        total > own
    }
}

/// Whether two records' platforms ([`RuleIndex::platform_of`]) are one ([`same_platform`]):
/// the URL a record kept may be spelt otherwise than the region's now (`HTTP://`, a host in
/// capitals, credentials added).
fn on_one_platform(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => same_platform(a, b),
        (a, b) => a == b,
    }
}

/// A region's platform URL and its other URLs (`aliases`), credentials masked.
type Platform = (Arc<str>, Vec<Arc<str>>);

/// Counts the rules of all `records` into `rules`, unless done or not possible yet.
fn count_all(records: &Records, rules: &mut RuleIndex) {
    if !rules.known || rules.on {
        return;
    }
    rules.on = true;
    rules.counts = HashMap::with_capacity(records.values().map(|r| r.applied).sum());
    for record in records.values() {
        rules.count(record, 0..record.applied, true);
    }
}

/// Whether a record other than `record` holds the platform rule of `record.steps[k]` and
/// keeps it. Only a request that keeps its rules counts: one whose own removal is pending
/// (FAILED, DELETING) would leave the rule on the platform after this request said it was
/// removed, so the rule is removed here instead (removals are idempotent). A PENDING one is
/// counted: its apply of this rule was answered (the turn says no call for it is in flight),
/// and it either becomes CREATED or removes the rule itself.
fn shared_by_another(records: &Records, rules: &RuleIndex, record: &Record, k: usize) -> bool {
    let step = &record.steps[k];
    rules.may_be_shared(record, step) && holders(records, rules, record, k).next().is_some()
}

/// The records other than `record` that hold the platform rule of `record.steps[k]` and keep
/// it (CREATED or PENDING, see [`shared_by_another`]).
fn holders<'a>(
    records: &'a Records,
    rules: &'a RuleIndex,
    record: &'a Record,
    k: usize,
) -> impl Iterator<Item = &'a Arc<Record>> + 'a {
    let step = &record.steps[k];
    let identity = rules.identity(&record.region_id);
    records.values().filter(move |r| {
        *r.id != *record.id
            && matches!(r.status, Status::Created | Status::Pending)
            && r.region_id == record.region_id
            && on_one_platform(rules.platform_of(r), rules.platform_of(record))
            && r.steps[..r.applied]
                .iter()
                .any(|other| identity.same(step, other))
    })
}

/// The holders (see [`holders`]) that keep the rule of `record.steps[k]` as they found it,
/// with the steps that keep it: when `record`, which changed the rule, releases it, they take
/// over its removal.
fn heirs(
    records: &Records,
    rules: &RuleIndex,
    record: &Record,
    k: usize,
) -> Vec<(Arc<str>, Vec<usize>)> {
    let step = &record.steps[k];
    let identity = rules.identity(&record.region_id);
    holders(records, rules, record, k)
        .filter_map(|r| {
            let js: Vec<usize> = (0..r.applied)
                .filter(|&j| r.is_kept(j) && identity.same(step, &r.steps[j]))
                .collect();
            (!js.is_empty()).then(|| (r.id.clone(), js))
        })
        .collect()
}

/// The region ids the records share.
#[derive(Default)]
struct Regions(HashSet<Arc<str>>);

impl Regions {
    /// The shared copy of region id `id`.
    fn intern(&mut self, id: &str) -> Arc<str> {
        if let Some(shared) = self.0.get(id) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(id);
        self.0.insert(shared.clone());
        shared
    }
}

impl Store {
    /// A store that keeps nothing on disk (tests, and tools that need no durability).
    pub fn in_memory() -> Store {
        Store {
            records: Mutex::default(),
            regions: Mutex::default(),
            rules: Mutex::default(),
            durability: Durability::Memory,
        }
    }

    /// Opens the durable store in `dir`, replaying what is there. With `fsync` off, changes
    /// are written but not forced to disk (they survive a crash of the process, not of the
    /// machine): for benchmarks only.
    pub fn open(dir: &Path, fsync: bool) -> Result<(Store, ReplayStats), StoreError> {
        // Replayed into a hash map (each entry is one lookup by id), then built into the
        // ordered map in one pass from sorted entries, which also packs its nodes full.
        let mut replayed = HashMap::new();
        let mut regions = Regions::default();
        let mut next_seq = 0;
        let (journal, stats) = Journal::open(dir, fsync, |entry| {
            replay(&mut replayed, &mut regions, &mut next_seq, entry)
        })?;
        let store = Store::built(
            replayed.into_iter().collect(),
            next_seq,
            regions,
            Durability::Journal(journal),
        );
        Ok((store, stats))
    }

    /// A store of `loaded` records (their `seq` given), keyed by id.
    fn built(
        mut loaded: Vec<Keyed>,
        next_seq: u64,
        regions: Regions,
        durability: Durability,
    ) -> Store {
        // Built into the ordered map in one pass from sorted entries, which also packs its
        // nodes full.
        loaded.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut records = Records {
            next_seq,
            ..Records::default()
        };
        for (_, record) in &loaded {
            index_region(&mut records.by_region, record);
        }
        records.by_id = loaded
            .into_iter()
            .map(|(id, record)| (id, Arc::new(record)))
            .collect();
        Store {
            records: Mutex::new(records),
            regions: Mutex::new(regions),
            rules: Mutex::default(),
            durability,
        }
    }

    /// The journal, when the store is kept in one.
    fn journal(&self) -> Option<&Journal> {
        match &self.durability {
            Durability::Journal(journal) => Some(journal),
            _ => None,
        }
    }

    /// Says what makes two steps one rule in each region (regions not listed count as
    /// [`RuleIdentity::Call`]), so that the rules the records hold can be counted (at the
    /// first [`release_if_shared`](Store::release_if_shared), or [`count_rules`]). Called once
    /// the drivers are known.
    ///
    /// [`count_rules`]: Store::count_rules
    pub fn index_rules<'a>(&self, identities: impl IntoIterator<Item = (&'a str, RuleIdentity)>) {
        let _records = self.lock();
        let mut rules = self.rules();
        let platforms = std::mem::take(&mut rules.platforms);
        *rules = RuleIndex {
            known: true,
            on: false,
            identities: identities
                .into_iter()
                .map(|(region, identity)| (Arc::from(region), identity))
                .collect(),
            counts: HashMap::new(),
            platforms,
        };
    }

    /// Says each configured region's platform URL and its other URLs (`aliases`), credentials
    /// masked: a record that recorded none of its own, or an alias, counts as on it. Two
    /// requests share a platform rule only on the same platform: a request applied on a
    /// region's earlier URL does not hold a rule for one applied on its current URL
    /// ([`release_if_shared`](Store::release_if_shared)).
    pub fn current_platforms<'a>(
        &self,
        platforms: impl IntoIterator<Item = (&'a str, Arc<str>, Vec<Arc<str>>)>,
    ) {
        let _records = self.lock();
        self.rules().platforms = platforms
            .into_iter()
            .map(|(region, current, aliases)| (Arc::from(region), (current, aliases)))
            .collect();
    }

    /// Counts the rules every record holds now, if [`index_rules`](Store::index_rules) was
    /// called and they are not counted yet.
    pub fn count_rules(&self) {
        let records = self.lock();
        count_all(&records, &mut self.rules());
    }

    /// The rule index; taken only with the records lock held.
    fn rules(&self) -> MutexGuard<'_, RuleIndex> {
        lock(&self.rules)
    }

    fn lock(&self) -> MutexGuard<'_, Records> {
        // Every mutation is journaled then applied as plain assignments, so a panic while
        // holding the lock cannot leave a half-changed record: a poisoned lock is usable.
        lock(&self.records)
    }

    /// Hands `change` to the backend (under the records lock): the journal writes its entry,
    /// etcd's writer queues it. Returns the sequence to wait for.
    fn write(&self, change: Change<'_>) -> Result<u64, StoreError> {
        match &self.durability {
            Durability::Memory => Ok(0),
            Durability::Journal(j) => Ok(j.append(&change.entry())?),
            Durability::Etcd(w) => {
                let (id, write) = match change {
                    Change::Create(record) => {
                        check_etcd_size(record)?;
                        (record.id.clone(), Write::Whole(record.clone()))
                    }
                    Change::Update(record) | Change::Repoint(record) => {
                        (record.id.clone(), Write::Progress(record.clone()))
                    }
                    Change::Remove(id) => (id.clone(), Write::Remove),
                };
                w.enqueue(id, write).map_err(StoreError::Unavailable)
            }
        }
    }

    /// Waits, without the records lock, until `seq` is durable.
    fn durable(&self, seq: u64) -> Result<(), StoreError> {
        match &self.durability {
            _ if seq == 0 => Ok(()),
            Durability::Memory => Ok(()),
            Durability::Journal(j) => Ok(j.wait(seq)?),
            Durability::Etcd(w) => w.wait(seq).map_err(StoreError::Unavailable),
        }
    }

    /// Adds a new record; returns once it is durable. Ids are fresh UUIDs, so an existing one
    /// is never replaced.
    pub fn insert(&self, record: Record) -> Result<(), StoreError> {
        self.insert_within(record, usize::MAX).map(|_| ())
    }

    /// Adds a new record unless `max` records are kept already (`Ok(false)`: nothing was
    /// written); returns once it is durable. Checked and inserted under one lock, so
    /// concurrent creations cannot pass the bound together.
    pub fn insert_within(&self, mut record: Record, max: usize) -> Result<bool, StoreError> {
        record.region_id = lock(&self.regions).intern(&record.region_id);
        let seq = {
            let mut records = self.lock();
            if records.len() >= max {
                return Ok(false);
            }
            self.add(&mut records, record)?
        };
        self.durable(seq)?;
        Ok(true)
    }

    /// Journals `record` as a creation and adds it to the map and the rule index, under the
    /// records lock the caller holds; returns the sequence to wait for.
    fn add(&self, records: &mut Records, record: Record) -> Result<u64, StoreError> {
        self.add_as(records, record, |record| self.write(Change::Create(record)))
    }

    /// Adds `record` to `records` after its creation order is given and `write` made it
    /// durable (or queued it); returns what `write` did.
    fn add_as(
        &self,
        records: &mut Records,
        mut record: Record,
        write: impl FnOnce(&Arc<Record>) -> Result<u64, StoreError>,
    ) -> Result<u64, StoreError> {
        record.seq = records.next_seq;
        let record = Arc::new(record);
        let seq = write(&record)?;
        self.rules().count(&record, 0..record.applied, true);
        records.insert(record);
        Ok(seq)
    }

    /// Adds the records of an import ([`migrate`](crate::migrate)) in the order given, which
    /// becomes their creation order; returns once all are durable. The caller has checked
    /// them ([`RecordEntry`]s of unique ids) and that the store holds none.
    ///
    /// Into the journal, all or nothing: they are written as the snapshot of a new
    /// generation (a compaction: a `.tmp` file, fsynced, renamed into place, the directory
    /// fsynced), never entry by entry, so that a crash or a failure leaves either the state
    /// as it was or every record (an import killed halfway left a partial state that then
    /// started without a word: review finding M1). Etcd's bounded transactions cannot do
    /// that; see [`crate::etcd_store::import`].
    pub(crate) fn insert_entries<'a>(
        &self,
        entries: impl IntoIterator<Item = RecordEntry<'a>>,
    ) -> Result<usize, StoreError> {
        let journal = self.journal();
        let mut last = 0;
        let mut count = 0;
        for entry in entries {
            let record = from_record_entry(entry, &mut lock(&self.regions));
            let mut records = self.lock();
            last = match journal {
                Some(_) => self.add_as(&mut records, record, |_| Ok(0))?,
                None => self.add(&mut records, record)?,
            };
            count += 1;
        }
        match journal {
            Some(journal) if count > 0 => {
                if !self.compact(journal)? {
                    return Err(StoreError::Journal(crate::journal::JournalError::Io {
                        path: journal.dir().to_path_buf(),
                        error: std::io::Error::other("a compaction is running"),
                    }));
                }
            }
            Some(_) => {}
            None => self.durable(last)?,
        }
        Ok(count)
    }

    /// A copy of one record (cheap: the request and steps are shared).
    pub fn get(&self, id: &str) -> Option<Record> {
        self.lock().by_id.get(id).map(|r| Record::clone(r))
    }

    /// All records, or one region's, in creation order: shared, not copied (one pointer each
    /// under the lock). The lock is released before the caller serialises them.
    pub fn list(&self, region_id: Option<&str>) -> Vec<Arc<Record>> {
        self.page(region_id, None, usize::MAX)
            .expect("no cursor to miss")
            .records
    }

    /// Up to `limit` records, all or one region's, in creation order, after the record `after`
    /// (which need not be of that region, and may have been removed lately); `None` when `after`
    /// names no record. A region's page reads only that region's index; the whole list merges
    /// the regions' indexes (few: they come from the configuration).
    pub fn page(&self, region_id: Option<&str>, after: Option<&str>, limit: usize) -> Option<Page> {
        let records = self.lock();
        let from: Bound<Created> = match after {
            Some(id) => match records.by_id.get(id) {
                Some(r) => Bound::Excluded((r.seq, r.id.clone())),
                None => Bound::Excluded((*records.removed_at.get(id)?, Arc::from(id))),
            },
            None => Bound::Unbounded,
        };
        let sets: Vec<&BTreeSet<Created>> = match region_id {
            Some(region) => records.by_region.get(region).into_iter().collect(),
            None => records.by_region.values().collect(),
        };
        let mut heads: Vec<_> = sets
            .into_iter()
            .map(|set| set.range((from.clone(), Bound::Unbounded)).peekable())
            .collect();
        let mut page = Page {
            records: Vec::new(),
            more: false,
        };
        loop {
            // The region whose next record was created first.
            let next = heads
                .iter_mut()
                .enumerate()
                .filter_map(|(i, h)| h.peek().map(|key| (i, *key)))
                .min_by(|a, b| a.1.cmp(b.1))
                .map(|(i, _)| i);
            let Some(i) = next else {
                return Some(page);
            };
            if page.records.len() == limit {
                page.more = true;
                return Some(page);
            }
            let (_, id) = heads[i].next().expect("peeked");
            page.records.push(records.by_id[id].clone());
        }
    }

    /// Copies of the records `pick` selects, after `mark` was applied to each under the lock
    /// (the reconciler uses it to claim work). `mark` must only change runtime fields.
    pub fn claim(&self, pick: impl Fn(&Record) -> bool, mark: impl Fn(&mut Record)) -> Vec<Record> {
        let mut records = self.lock();
        records
            .by_id
            .values_mut()
            .filter(|r| pick(r))
            .map(|r| {
                let r = Arc::make_mut(r);
                let applied = r.applied;
                mark(r);
                debug_assert_eq!(applied, r.applied, "claim changed what {} holds", r.id);
                r.clone()
            })
            .collect()
    }

    /// Changes one record under the lock and returns once the change is durable; `Ok(None)`
    /// if the record does not exist. `change` must be quick and must not call out (no I/O, no
    /// platform call). Changes of runtime-only fields are not journaled.
    pub fn update<T>(
        &self,
        id: &str,
        change: impl FnOnce(&mut Record) -> T,
    ) -> Result<Option<T>, StoreError> {
        let (result, seq) = {
            let mut records = self.lock();
            let Some(record) = records.by_id.get_mut(id) else {
                return Ok(None);
            };
            let mut changed = Record::clone(record);
            let result = change(&mut changed);
            debug_assert!(
                Arc::ptr_eq(&changed.steps, &record.steps)
                    && Arc::ptr_eq(&changed.region_id, &record.region_id),
                "a record's steps and region never change"
            );
            let durable_change = changed.durable_state() != record.durable_state();
            let changed = Arc::new(changed);
            let seq = if durable_change {
                self.write(Change::Update(&changed))?
            } else {
                0
            };
            self.rules().moved(&changed, record.applied);
            *record = changed;
            (result, seq)
        };
        self.durable(seq)?;
        Ok(Some(result))
    }

    /// Lowers record `id`'s applied count to `k` without a platform call if another CREATED
    /// (or PENDING) record of the same region also holds the platform rule of `steps[k]` (the region's
    /// [`RuleIdentity`], given to [`index_rules`](Store::index_rules), says when two steps are
    /// one rule on the platform: LL-MEC keys rules by body, MEC 011 by path), since
    /// removing it would take it from the other request too. Returns whether it did. Check and
    /// release are one step under the lock, so of two requests sharing a rule exactly one
    /// removes it from the platform.
    ///
    /// A holder that kept the rule as it found it (a guess made while this request's apply
    /// may still have been unanswered, see [`keep_unless_changed_by_another`]) takes over
    /// its removal: this request changed the rule (or may have), so whoever holds it last
    /// must take it off. The take-overs are written before the release, so a replay that
    /// has the release has them too.
    ///
    /// [`keep_unless_changed_by_another`]: Store::keep_unless_changed_by_another
    pub fn release_if_shared(&self, id: &str, k: usize, now: i64) -> Result<bool, StoreError> {
        let seq = {
            let mut records = self.lock();
            let mut rules = self.rules();
            count_all(&records, &mut rules);
            let Some(record) = records.by_id.get(id) else {
                return Ok(false);
            };
            if !shared_by_another(&records, &rules, record, k) {
                return Ok(false);
            }
            let heirs = if record.is_kept(k) {
                Vec::new()
            } else {
                heirs(&records, &rules, record, k)
            };
            // Each change is written before it is made in memory (as `update` does): one
            // that could not be written is not taken as made (a hand-over lost from the
            // journal would leave the last holder keeping a rule the plugin changed).
            for (heir, js) in heirs {
                let heir = records.by_id.get_mut(&*heir).expect("listed above");
                let mut changed = Record::clone(heir);
                changed.take_over(&js);
                let changed = Arc::new(changed);
                self.write(Change::Update(&changed))?;
                *heir = changed;
            }
            let record = records.by_id.get_mut(id).expect("looked up above");
            let mut changed = Record::clone(record);
            changed.step_off(k);
            changed.last_modified = now;
            let changed = Arc::new(changed);
            let seq = self.write(Change::Update(&changed))?;
            rules.moved(&changed, record.applied);
            *record = changed;
            seq
        };
        self.durable(seq)?;
        Ok(true)
    }

    /// Whether another CREATED (or PENDING) record holds the platform rule of step `k` of
    /// record `id`, so that [`release_if_shared`](Store::release_if_shared) would release it.
    pub fn is_shared(&self, id: &str, k: usize) -> bool {
        let records = self.lock();
        let mut rules = self.rules();
        count_all(&records, &mut rules);
        records
            .by_id
            .get(id)
            .is_some_and(|record| shared_by_another(&records, &rules, record, k))
    }

    /// Step `k` of record `id` found its platform rule already in place: records it as kept
    /// (its removal will leave the rule as it was) unless another record of the region holds
    /// the rule as one it changed itself (not kept) and answered, in which case the rule is
    /// in place because of that request and this one shares it like any other. Returns
    /// whether it was kept. Check and change are one step under the lock.
    ///
    /// A holder whose apply of the rule may still be unanswered (its outcome not recorded)
    /// does not count: it may find the rule in place too (two creations of a rule active
    /// before either would each count the other as its changer, and the last DELETE would
    /// deactivate it). If it turns out to have changed the rule, the guess is corrected when
    /// it leaves: [`release_if_shared`](Store::release_if_shared) hands the removal to the
    /// holders that kept it.
    pub fn keep_unless_changed_by_another(
        &self,
        id: &str,
        k: usize,
        now: i64,
    ) -> Result<bool, StoreError> {
        let seq = {
            let mut records = self.lock();
            let rules = self.rules();
            let Some(record) = records.by_id.get(id) else {
                return Ok(false);
            };
            let step = &record.steps[k];
            let identity = rules.identity(&record.region_id);
            // Only a request on the same platform can have changed this rule (a region's
            // url may have changed since older requests were applied).
            let platform = rules.platform_of(record);
            let changed_by_another = records.in_region(&record.region_id).any(|r| {
                *r.id != *id
                    && on_one_platform(rules.platform_of(r), platform)
                    && (0..r.applied)
                        .any(|j| r.changed(j, step, identity) && !r.apply_may_be_unanswered(j))
            });
            drop(rules);
            if changed_by_another {
                return Ok(false);
            }
            let record = records.by_id.get_mut(id).expect("looked up above");
            Arc::make_mut(record).keep(k, now);
            self.write(Change::Update(record))?
        };
        self.durable(seq)?;
        Ok(true)
    }

    /// Whether step `k` of record `id` keeps its rule as it found it (read now: another
    /// request's release may have handed it the removal, see
    /// [`release_if_shared`](Store::release_if_shared)).
    pub fn keeps(&self, id: &str, k: usize) -> bool {
        self.lock().by_id.get(id).is_some_and(|r| r.is_kept(k))
    }

    /// Records that the steps of record `id` are on `platform` from now on: its region's URL
    /// changed and a DELETE with `?adopt=true` says that the new one is the same platform.
    /// So are those of every other record of its region that recorded the same earlier URL:
    /// the platform moved, not one request (left behind, such a record would not count as
    /// holding the rules `id` holds there, whose removal would take them from it too).
    /// Journaled with the platform (the one update per record that carries it). `Ok(None)`:
    /// no such record; `Ok(Some(false))`: another operation works on one of them, and
    /// nothing changed.
    pub fn repoint(
        &self,
        id: &str,
        platform: &Arc<str>,
        now: i64,
    ) -> Result<Option<bool>, StoreError> {
        let seq = {
            let mut records = self.lock();
            let Some(record) = records.by_id.get(id) else {
                return Ok(None);
            };
            let earlier = record.platform.clone();
            let moved: Vec<Arc<str>> = match &earlier {
                Some(earlier) => records
                    .in_region(&record.region_id)
                    .filter(|r| {
                        r.platform
                            .as_deref()
                            .is_some_and(|p| same_platform(p, earlier))
                    })
                    .map(|r| r.id.clone())
                    .collect(),
                None => vec![record.id.clone()],
            };
            if moved.iter().any(|m| records.by_id[&**m].busy) {
                return Ok(Some(false));
            }
            let mut seq = 0;
            for m in moved {
                let record = records.by_id.get_mut(&*m).expect("listed above");
                let mut changed = Record::clone(record);
                changed.platform = Some(platform.clone());
                changed.last_modified = now;
                // Left alone while moved: due now that its platform is known again.
                changed.next_attempt = 0;
                let changed = Arc::new(changed);
                seq = self.write(Change::Repoint(&changed))?;
                *record = changed;
            }
            seq
        };
        self.durable(seq)?;
        Ok(Some(true))
    }

    /// Removes a record once durable, returning it.
    pub fn remove(&self, id: &str) -> Result<Option<Record>, StoreError> {
        let (record, seq) = {
            let mut records = self.lock();
            let Some((id, _)) = records.by_id.get_key_value(id) else {
                return Ok(None);
            };
            let id = id.clone();
            let seq = self.write(Change::Remove(&id))?;
            let record = records.remove(&id);
            if let Some(r) = &record {
                self.rules().count(r, 0..r.applied, false);
            }
            (record.map(Arc::unwrap_or_clone), seq)
        };
        self.durable(seq)?;
        Ok(record)
    }

    /// Why the backend stopped, if it did: nothing more can be made durable (the journal after
    /// a failed `fsync`; an etcd store once its term is over or its writer was deposed).
    pub fn failure(&self) -> Option<String> {
        match &self.durability {
            Durability::Memory => None,
            Durability::Journal(j) => j.failure(),
            Durability::Etcd(w) => w.failure(),
        }
    }

    /// Counts the etcd backend's failed commits into `counter` (`mec_plugin_store_errors_total`);
    /// nothing for the journal, whose failures `/healthz` and `mec_plugin_state_writable` show.
    pub fn count_errors_into(&self, counter: Arc<std::sync::atomic::AtomicU64>) {
        if let Durability::Etcd(w) = &self.durability {
            w.count_errors_into(counter);
        }
    }

    /// Why changes cannot be written now for want of space, if so (looks for room first).
    pub fn no_space(&self) -> Option<String> {
        self.journal().and_then(Journal::no_space)
    }

    /// The leader's store of one term: every record under `<prefix>/records/`, read at one
    /// revision (linearizable) in creation order; every later write is a transaction fenced on
    /// `fence.term`, committed before the call that made it returns (see
    /// [`crate::etcd_store`]). Refused when the term is over, or was already over at the
    /// revision read.
    pub fn open_etcd(
        client: Arc<crate::etcd::Client>,
        prefix: &str,
        fence: Fence,
    ) -> Result<Store, StoreError> {
        let started = std::time::Instant::now();
        let term_over = || {
            StoreError::Unavailable(format!(
                "not the leader of {prefix} (any more): the term of lease {:x} is over",
                fence.term.lease
            ))
        };
        if fence.election.term() != Some(fence.term) {
            return Err(term_over());
        }
        let loaded = crate::etcd_store::load(&client, prefix).map_err(etcd_unavailable)?;
        match &loaded.leader {
            Some(kv) if fence.term.holds(kv) => {}
            _ => return Err(term_over()),
        }
        // Part of an import's records: leading on them would serve (and forget) the rest.
        refuse_unfinished_import(prefix, loaded.importing.as_deref())?;
        let (records, next_seq, regions) = records_of(&loaded.records, prefix)?;
        let count = records.len();
        let writer = EtcdWriter::start(client, prefix, (fence.election, fence.term), loaded.writer);
        let store = Store::built(records, next_seq, regions, Durability::Etcd(writer));
        log::info!(
            "state: {count} record(s) of etcd prefix {prefix} loaded at revision {} in {} ms",
            loaded.revision,
            started.elapsed().as_millis()
        );
        Ok(store)
    }

    /// A follower's read: the records under `<prefix>/records/` now (linearizable), in creation
    /// order, in a store that keeps nothing.
    pub fn read_etcd(client: &crate::etcd::Client, prefix: &str) -> Result<Store, StoreError> {
        let loaded = crate::etcd_store::load(client, prefix).map_err(etcd_unavailable)?;
        refuse_unfinished_import(prefix, loaded.importing.as_deref())?;
        let (records, next_seq, regions) = records_of(&loaded.records, prefix)?;
        Ok(Store::built(records, next_seq, regions, Durability::Memory))
    }

    /// A follower's read of one record (linearizable): its keys now, without reading the
    /// others (its runtime fields empty, as [`read_etcd`](Store::read_etcd)'s).
    pub fn read_etcd_record(
        client: &crate::etcd::Client,
        prefix: &str,
        id: &str,
    ) -> Result<Option<Record>, StoreError> {
        let (stored, importing) =
            crate::etcd_store::load_one(client, prefix, id).map_err(etcd_unavailable)?;
        refuse_unfinished_import(prefix, importing.as_deref())?;
        let Some(stored) = stored else {
            return Ok(None);
        };
        let (mut records, _, _) = records_of(&[(0, stored)], prefix)?;
        Ok(records.pop().map(|(_, record)| record))
    }

    /// Whether a change could be made durable now: the journal has not stopped; an etcd
    /// store's term is still valid and its writer has not stopped. Checked before every
    /// platform call, so that an instance that cannot record first does not call.
    pub fn writable(&self) -> Result<(), StoreError> {
        match &self.durability {
            Durability::Memory => Ok(()),
            // Its own error: only a restart helps, which `Unavailable` would not say.
            Durability::Journal(j) => j.stopped().map_or(Ok(()), |e| Err(e.into())),
            Durability::Etcd(w) => w
                .failure()
                .map_or(Ok(()), |r| Err(StoreError::Unavailable(r))),
        }
    }

    /// Returns once every change made so far is committed (an etcd store; the journal's
    /// and memory's reads need no wait): what a leader's reads wait for, so that they never
    /// show a change etcd did not commit (a PENDING record written while etcd has no quorum).
    pub fn settled(&self) -> Result<(), StoreError> {
        match &self.durability {
            Durability::Etcd(w) => w.settled().map_err(StoreError::Unavailable),
            Durability::Memory | Durability::Journal(_) => Ok(()),
        }
    }

    /// Tests: stops the journal as a failed `fsync` would.
    #[cfg(test)]
    pub(crate) fn stop_journal(&self, reason: &str) {
        if let Some(j) = self.journal() {
            j.stop(reason);
        }
    }

    /// How many records `pick` selects.
    pub fn count(&self, pick: impl Fn(&Record) -> bool) -> usize {
        self.lock().values().filter(|r| pick(r)).count()
    }

    /// The smallest `key` among the records `pick` selects.
    pub fn earliest(
        &self,
        pick: impl Fn(&Record) -> bool,
        key: impl Fn(&Record) -> i64,
    ) -> Option<i64> {
        self.lock()
            .values()
            .filter(|r| pick(r))
            .map(|r| key(r))
            .min()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Compacts the journal if it has grown past its bound: a copy of the records is taken
    /// under the lock together with starting a new journal, and written out without it.
    pub fn compact_if_needed(&self) -> Result<bool, StoreError> {
        let Some(journal) = self.journal() else {
            return Ok(false);
        };
        if !journal.wants_compaction() {
            return Ok(false);
        }
        self.compact(journal)
    }

    /// Starts the next generation and writes the snapshot of the records at its start.
    fn compact(&self, journal: &Journal) -> Result<bool, StoreError> {
        let (generation, copy) = {
            let records = self.lock();
            let Some(generation) = journal.rotate()? else {
                return Ok(false);
            };
            (generation, records.values().cloned().collect::<Vec<_>>())
        };
        // In creation order, which the next start gives the records back (off the lock).
        let mut copy = copy;
        copy.sort_unstable_by_key(|r| r.seq);
        journal.write_snapshot(generation, copy.iter().map(|r| r.to_entry()))?;
        Ok(true)
    }
}

/// Refuses a prefix whose import began and did not finish (its marker holds `importing`):
/// its records are partial ([`crate::etcd_store::import`]).
fn refuse_unfinished_import(prefix: &str, importing: Option<&[u8]>) -> Result<(), StoreError> {
    match importing {
        Some(value) => Err(StoreError::Unavailable(
            crate::etcd_store::unfinished_import(prefix, value),
        )),
        None => Ok(()),
    }
}

/// What the etcd backend stores of a record.
impl EtcdValue for Record {
    fn json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.to_record_entry()).expect("a record serialises")
    }

    fn progress_json(&self) -> Vec<u8> {
        let Entry::Update(mut update) = self.update_entry(true) else {
            unreachable!("an update entry");
        };
        // Always with the platform: the last change's value is all that is kept.
        update.platform = self.platform.as_deref().map(Cow::Borrowed);
        serde_json::to_vec(&update).expect("an update serialises")
    }

    fn seq(&self) -> u64 {
        self.seq
    }
}

/// Refuses a creation whose record could not fit one etcd transaction (estimated from its
/// parts, before anything changes).
fn check_etcd_size(record: &Record) -> Result<(), StoreError> {
    let steps: usize = record
        .steps
        .iter()
        .map(|s| s.label().len() + s.target().len() + s.body().len() + 48)
        .sum();
    let size = record.request.len()
        + steps
        + record.detail.as_deref().map_or(0, str::len)
        + record.platform.as_deref().map_or(0, str::len)
        + 256;
    if size > MAX_RECORD_BYTES {
        return Err(StoreError::TooLarge(format!(
            "request {}: its record (about {size} bytes) is larger than one etcd transaction \
             takes ({MAX_RECORD_BYTES} bytes)",
            record.id
        )));
    }
    Ok(())
}

fn etcd_unavailable(e: crate::etcd::EtcdError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The records of etcd `values` (their `seq`, and the keys and values of each, in creation
/// order), each keeping its `seq` and its mutable part as last changed; the `seq` of the next
/// record; the region ids they share.
fn records_of(
    values: &[(u64, Stored)],
    prefix: &str,
) -> Result<(Vec<Keyed>, u64, Regions), StoreError> {
    let records_prefix = crate::etcd_store::records_prefix(prefix);
    let mut regions = Regions::default();
    let mut records = Vec::with_capacity(values.len());
    let mut next_seq = 0;
    for (seq, stored) in values {
        let damaged = |kv: &crate::etcd::KeyValue, why: String| {
            StoreError::Unavailable(format!(
                "etcd key {} is not a record this build reads: {why}",
                String::from_utf8_lossy(&kv.key)
            ))
        };
        let kv = &stored.record;
        let entry: RecordEntry =
            serde_json::from_slice(&kv.value).map_err(|e| damaged(kv, e.to_string()))?;
        if kv.key.strip_prefix(records_prefix.as_bytes()) != Some(entry.id.as_bytes()) {
            return Err(damaged(kv, format!("it holds record '{}'", entry.id)));
        }
        let mut record = from_record_entry(entry, &mut regions);
        if let Some(kv) = &stored.progress {
            let update: UpdateEntry =
                serde_json::from_slice(&kv.value).map_err(|e| damaged(kv, e.to_string()))?;
            if *update.id != *record.id {
                return Err(damaged(kv, format!("it holds record '{}'", update.id)));
            }
            apply_update(&mut record, update, &mut regions);
        }
        record.seq = *seq;
        next_seq = next_seq.max(seq + 1);
        records.push((record.id.clone(), record));
    }
    Ok((records, next_seq, regions))
}

/// Applies a change of a record's mutable part (a replayed journal `update` entry, or the
/// mutable part of an etcd record).
fn apply_update(record: &mut Record, u: UpdateEntry<'_>, regions: &mut Regions) {
    record.applied = u.applied.min(record.steps.len());
    record.status = u.status.into();
    record.detail = u.detail.map(Box::from);
    record.last_modified = u.modified;
    record.kept = u.kept.map(Arc::from);
    if let Some(platform) = u.platform {
        record.platform = Some(regions.intern(&platform));
    }
}

/// The record a journal `put` entry (or a line of an import) describes, with no runtime state;
/// its region and platform shared through `regions`.
fn from_record_entry(r: RecordEntry<'_>, regions: &mut Regions) -> Record {
    let mut record = Record::new(
        Arc::from(&*r.id),
        regions.intern(&r.region),
        Arc::from(r.request.get()),
        r.status.into(),
        r.steps.iter().map(Step::from).collect(),
        r.applied,
        r.created,
    );
    record.detail = r.detail.map(Box::from);
    record.last_modified = r.modified;
    record.platform = r.platform.map(|p| regions.intern(&p));
    record.kept = r.kept.map(Arc::from);
    record
}

/// Applies one replayed journal entry to the map.
/// Strings are copied from the entry (which borrows them from its line) straight into the
/// record's own allocations.
fn replay(
    records: &mut HashMap<Arc<str>, Record>,
    regions: &mut Regions,
    next_seq: &mut u64,
    entry: Entry<'_>,
) {
    match entry {
        Entry::Put(r) => {
            let mut record = from_record_entry(r, regions);
            record.seq = *next_seq;
            *next_seq += 1;
            records.insert(record.id.clone(), record);
        }
        Entry::Update(u) => {
            if let Some(record) = records.get_mut(&*u.id) {
                apply_update(record, u, regions);
            }
        }
        Entry::Remove { id } => {
            records.remove(&*id);
        }
    }
}

// The journal's step and status types are the on-disk form of the record's: the two
// directions of each live here, with the rest of the Record <-> Entry mapping.

impl<'a> From<&'a Step> for StepEntry<'a> {
    fn from(s: &'a Step) -> Self {
        // Embedded only when it reads back byte for byte (removal replays the exact body):
        // parsing accepts surrounding whitespace, which an embedded value would lose.
        // And only without a line break, which would split the journal line.
        let json = serde_json::from_slice::<&serde_json::value::RawValue>(s.body().as_bytes())
            .ok()
            .filter(|j| j.get() == s.body() && !s.body().contains('\n'));
        let body = match json {
            Some(_) => None,
            None => Some(Cow::Borrowed(s.body())),
        };
        StepEntry {
            label: Cow::Borrowed(s.label()),
            target: Cow::Borrowed(s.target()),
            json,
            body,
        }
    }
}

impl From<&StepEntry<'_>> for Step {
    fn from(s: &StepEntry<'_>) -> Self {
        let body = match (s.json, &s.body) {
            (Some(json), _) => json.get(),
            (None, Some(body)) => body,
            (None, None) => "",
        };
        Step::new(&s.label, &s.target, body)
    }
}

impl From<Status> for StatusEntry {
    fn from(s: Status) -> Self {
        match s {
            Status::Pending => StatusEntry::Pending,
            Status::Created => StatusEntry::Created,
            Status::Failed => StatusEntry::Failed,
            Status::Deleting | Status::Deleted => StatusEntry::Deleting,
        }
    }
}

impl From<StatusEntry> for Status {
    fn from(s: StatusEntry) -> Self {
        match s {
            StatusEntry::Pending => Status::Pending,
            StatusEntry::Created => Status::Created,
            StatusEntry::Failed => Status::Failed,
            StatusEntry::Deleting => Status::Deleting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, region: &str) -> Record {
        Record::new(
            id.into(),
            region.into(),
            Arc::from("{}"),
            Status::Pending,
            Arc::from([]),
            0,
            1,
        )
    }

    /// A record as a creation leaves it: `status`, `applied` steps of three, nobody on it.
    fn at(status: Status, applied: usize) -> Record {
        let steps: Arc<[Step]> = (0..3)
            .map(|i| Step::new(&i.to_string(), "/t", "{}"))
            .collect();
        Record::new(
            "r".into(),
            "1".into(),
            "{}".into(),
            status,
            steps,
            applied,
            1,
        )
    }

    fn stored(key: &str, value: Vec<u8>) -> crate::etcd::KeyValue {
        crate::etcd::KeyValue {
            key: key.into(),
            value,
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            lease: 0,
        }
    }

    #[test]
    fn an_etcd_record_reads_back_with_its_mutable_part_as_last_changed() {
        let created = at(Status::Pending, 0);
        let mut changed = at(Status::Deleting, 2);
        changed.detail = Some("removing".into());
        changed.last_modified = 9;
        changed.kept = Some(Arc::from([1]));
        changed.platform = Some("http://moved".into());
        let record = stored("/p/records/r", created.json());
        let progress = Some(stored("/p/progress/r", changed.progress_json()));
        let (read, next_seq, _) = records_of(&[(4, Stored { record, progress })], "/p").unwrap();
        let (id, r) = &read[0];
        assert_eq!((&**id, next_seq, r.seq), ("r", 5, 4));
        assert_eq!(r.durable_state(), changed.durable_state());
        assert_eq!(r.platform.as_deref(), Some("http://moved"));
        assert_eq!(r.steps.len(), 3);

        // Without a later change: the record as created.
        let record = stored("/p/records/r", created.json());
        let (read, _, _) = records_of(
            &[(
                0,
                Stored {
                    record,
                    progress: None,
                },
            )],
            "/p",
        )
        .unwrap();
        assert_eq!(read[0].1.durable_state(), created.durable_state());

        // Another record's mutable part is refused, naming the key.
        let record = stored("/p/records/r", created.json());
        let mut other = at(Status::Created, 3);
        other.id = "s".into();
        let progress = Some(stored("/p/progress/r", other.progress_json()));
        let Err(StoreError::Unavailable(why)) =
            records_of(&[(0, Stored { record, progress })], "/p")
        else {
            panic!("refused");
        };
        assert_eq!(
            why,
            "etcd key /p/progress/r is not a record this build reads: it holds record 's'"
        );
    }

    #[test]
    fn a_claimed_record_is_refused_to_every_other_operation_until_released() {
        let mut r = at(Status::Created, 3);
        assert!(r.claim());
        assert!(!r.claim(), "one operation at a time");
        assert_eq!(r.claim_removal(5), RemovalClaim::InUse);
        assert_eq!((r.status, r.last_modified), (Status::Created, 1));
        assert!(!r.needs_removal(), "not the reconciler's either");
        r.release();
        assert!(r.claim());
    }

    #[test]
    fn the_backlog_counts_a_removal_in_progress_but_not_a_creation_in_flight() {
        let mut deleting = at(Status::Deleting, 1);
        deleting.busy = true;
        assert!(deleting.has_rules_to_remove() && !deleting.needs_removal());
        let mut failed = at(Status::Failed, 1);
        failed.busy = true;
        assert!(failed.has_rules_to_remove());
        assert!(!at(Status::Failed, 0).has_rules_to_remove());
        let mut pending = at(Status::Pending, 1);
        assert!(pending.has_rules_to_remove(), "abandoned: rolled back");
        pending.busy = true;
        assert!(!pending.has_rules_to_remove(), "a creation in flight");
        assert!(!at(Status::Created, 2).has_rules_to_remove());
    }

    #[test]
    fn claim_removal_takes_a_created_or_failed_record_and_refuses_a_pending_one() {
        for status in [Status::Created, Status::Failed] {
            let mut r = at(status, 2);
            r.detail = Some("why".into());
            assert_eq!(r.claim_removal(5), RemovalClaim::Claimed);
            assert_eq!(
                (
                    r.status,
                    r.busy,
                    r.detail.is_none(),
                    r.last_modified,
                    r.applied
                ),
                (Status::Deleting, true, true, 5, 2)
            );
        }
        let mut pending = at(Status::Pending, 1);
        assert_eq!(pending.claim_removal(5), RemovalClaim::InUse);
        assert_eq!((pending.status, pending.busy), (Status::Pending, false));
    }

    #[test]
    fn claim_removal_of_a_deleting_record_makes_it_due_without_taking_it() {
        let mut r = at(Status::Deleting, 2);
        r.next_attempt = 99;
        assert_eq!(r.claim_removal(5), RemovalClaim::Queued);
        assert_eq!((r.next_attempt, r.busy, r.last_modified), (0, false, 1));
        assert!(r.needs_removal(), "the reconciler takes it now");
    }

    #[test]
    fn applied_rises_before_each_send_and_falls_only_step_by_step() {
        let mut r = at(Status::Pending, 1);
        r.sending(1);
        r.sending(2);
        assert_eq!(r.applied, 3);
        r.step_off(2);
        r.step_off(1);
        assert_eq!(r.applied, 1);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "in order")]
    fn a_step_sent_out_of_order_is_a_bug() {
        at(Status::Pending, 1).sending(2);
    }

    #[test]
    fn a_creation_ends_created_or_failed_and_gives_the_record_back() {
        let mut r = at(Status::Pending, 3);
        assert!(r.claim());
        r.created(7);
        assert_eq!(
            (r.status, r.busy, r.last_modified),
            (Status::Created, false, 7)
        );

        let mut r = at(Status::Pending, 2);
        assert!(r.claim());
        r.failed("b failed", 50, 7);
        assert_eq!(
            (r.status, r.busy, r.applied, r.next_attempt, r.last_modified),
            (Status::Failed, false, 2, 50, 7),
            "what may be on the platform stays counted"
        );
        assert_eq!(r.detail.as_deref(), Some("b failed"));
        assert!(r.needs_removal());
    }

    #[test]
    fn an_interrupted_creation_is_failed_with_its_steps_counted_and_its_claim_kept() {
        let mut r = at(Status::Pending, 2);
        assert!(r.claim());
        r.interrupted("a restart", 7);
        assert_eq!((r.status, r.applied, r.busy), (Status::Failed, 2, true));
    }

    #[test]
    fn a_removal_that_must_wait_keeps_its_steps_and_gives_the_record_back() {
        for status in [Status::Failed, Status::Deleting] {
            let mut r = at(status, 2);
            assert!(r.claim());
            r.retry(3, 40, "attempt 3 failed", 7);
            assert_eq!(
                (
                    r.status,
                    r.applied,
                    r.busy,
                    r.attempts,
                    r.next_attempt,
                    r.last_modified
                ),
                (status, 2, false, 3, 40, 7)
            );
            assert!(r.claim());
            r.settling(60, "settling", 8);
            assert_eq!((r.applied, r.busy, r.next_attempt), (2, false, 60));
            assert!(r.claim());
            r.stuck("region gone", 90);
            assert_eq!(
                (r.applied, r.busy, r.next_attempt, r.last_modified),
                (2, false, 90, 8)
            );
            assert!(r.claim());
            r.back_off(4, 95);
            assert_eq!((r.busy, r.attempts, r.next_attempt), (false, 4, 95));
            assert!(r.claim());
            r.leave_to_reconciler(97);
            assert_eq!((r.busy, r.attempts, r.next_attempt), (false, 4, 97));
        }
    }

    #[test]
    fn a_failed_request_with_its_steps_removed_has_nothing_left_for_the_reconciler() {
        let mut r = at(Status::Failed, 1);
        assert!(r.claim());
        r.retry(2, 40, "attempt 2 failed", 7);
        assert!(r.claim());
        r.step_off(0);
        r.undone("every rule removed", 9);
        assert_eq!(
            (r.status, r.applied, r.busy, r.attempts),
            (Status::Failed, 0, false, 0)
        );
        assert!(!r.needs_removal());
    }

    #[test]
    fn a_removed_request_holds_nothing_and_a_forgotten_one_says_what_it_left() {
        let mut r = at(Status::Deleting, 0);
        r.removed(9);
        assert_eq!(
            (r.status, r.applied, r.last_modified),
            (Status::Deleted, 0, 9)
        );
        let mut r = at(Status::Created, 2);
        assert!(r.claim());
        r.forgotten(9);
        assert_eq!((r.status, r.applied, r.busy), (Status::Deleted, 2, false));
    }

    /// What the old inline closures journaled, the transitions journal: a hand-over (claim,
    /// release, leave to the reconciler, back off, a queued DELETE) writes nothing; a change of
    /// status, detail, applied or last modified writes one entry.
    #[test]
    fn only_transitions_that_change_what_a_record_says_are_journaled() {
        let dir = temp_dir("transitions");
        let mut expected = 0;
        {
            let (s, _) = Store::open(&dir, false).unwrap();
            let step = |change: fn(&mut Record), writes: bool, expected: &mut usize| {
                s.update("r", change).unwrap().expect("recorded");
                *expected += usize::from(writes);
            };
            s.insert(at(Status::Pending, 1)).unwrap();
            expected += 1;
            step(|r| assert!(r.claim()), false, &mut expected);
            step(Record::release, false, &mut expected);
            step(|r| assert!(r.claim()), false, &mut expected);
            step(|r| r.leave_to_reconciler(50), false, &mut expected);
            step(|r| r.back_off(2, 60), false, &mut expected);
            step(|r| assert!(r.claim()), false, &mut expected);
            step(|r| r.sending(1), true, &mut expected);
            step(|r| r.failed("b failed", 70, 5), true, &mut expected);
            step(|r| assert!(r.claim()), false, &mut expected);
            step(
                |r| r.retry(1, 80, "attempt 1 failed", 6),
                true,
                &mut expected,
            );
            step(|r| assert!(r.claim()), false, &mut expected);
            step(|r| r.settling(90, "settling", 7), true, &mut expected);
            step(|r| assert!(r.claim()), false, &mut expected);
            step(|r| r.stuck("region gone", 95), true, &mut expected);
            step(
                |r| assert_eq!(r.claim_removal(8), RemovalClaim::Claimed),
                true,
                &mut expected,
            );
            step(Record::release, false, &mut expected);
            step(
                |r| assert_eq!(r.claim_removal(9), RemovalClaim::Queued),
                false,
                &mut expected,
            );
        }
        let (s, stats) = Store::open(&dir, false).unwrap();
        assert_eq!(stats.entries, expected);
        let r = s.get("r").unwrap();
        assert_eq!(
            (r.status, r.applied, r.last_modified, r.detail, r.busy),
            (Status::Deleting, 2, 8, None, false)
        );
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("mec-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// Writes `entries` as the first journal of `dir`, in the journal's line format.
    fn write_journal(dir: &std::path::Path, entries: &[&str]) {
        std::fs::create_dir_all(dir).unwrap();
        let lines: String = entries
            .iter()
            .map(|json| format!("{:08x} 1 {json}\n", crc32fast::hash(json.as_bytes())))
            .collect();
        std::fs::write(dir.join(format!("journal-{:020}.jsonl", 1)), lines).unwrap();
    }

    #[test]
    fn step_bodies_come_back_byte_for_byte_json_or_not() {
        for body in [
            r#"{"url":"a.b","type":1}"#,
            "not json",
            " {\"padded\": true} ",
            "",
        ] {
            let step = Step::new("l", "/t", body);
            let line = serde_json::to_string(&StepEntry::from(&step)).unwrap();
            let back: StepEntry = serde_json::from_str(&line).unwrap();
            assert_eq!(Step::from(&back), step, "{line}");
        }
        let embedded =
            serde_json::to_string(&StepEntry::from(&Step::new("l", "/t", r#"{"a":1}"#))).unwrap();
        assert!(embedded.contains(r#""json":{"a":1}"#), "{embedded}");
    }

    #[test]
    fn a_journal_written_before_the_platform_url_was_recorded_still_replays() {
        let dir = temp_dir("old-format");
        write_journal(
            &dir,
            &[
                r#"{"put":{"id":"a","region":"2","request":{},"steps":[{"label":"l","target":"/t","json":{"x":1}}],"applied":1,"status":"created","created":1,"modified":1}}"#,
                r#"{"update":{"id":"a","applied":1,"status":"deleting","modified":2}}"#,
            ],
        );
        let (s, _) = Store::open(&dir, false).unwrap();
        let r = s.get("a").unwrap();
        assert!(r.kept.is_none() && !r.is_kept(0));
        assert_eq!(
            (r.status, r.applied, r.platform),
            (Status::Deleting, 1, None)
        );
        // Written again with the new field, it reads back.
        let mut b = record("b", "2");
        b.platform = Some(Arc::from("http://mep:1"));
        s.insert(b).unwrap();
        drop(s);
        let (s, _) = Store::open(&dir, false).unwrap();
        assert_eq!(
            s.get("b").unwrap().platform.as_deref(),
            Some("http://mep:1")
        );
        assert_eq!(s.get("a").unwrap().platform, None);
        drop(s);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_step_is_kept_unless_another_request_changed_its_rule_and_kept_survives_a_restart() {
        let dir = temp_dir("kept");
        let (s, _) = Store::open(&dir, false).unwrap();
        s.index_rules([("2", RuleIdentity::Target)]);
        let with_step = |id: &str| {
            let mut r = record(id, "2");
            r.steps = Arc::from([Step::new("r", "/rules/r1", r#"{"state":"ACTIVE"}"#)]);
            r.applied = 1;
            r.status = Status::Created;
            r
        };
        // Nobody else holds the rule: it was in place before the request.
        s.insert(with_step("a")).unwrap();
        assert!(s.keep_unless_changed_by_another("a", 0, 2).unwrap());
        assert!(s.get("a").unwrap().is_kept(0));
        // Held by a request that only kept it too: kept again.
        s.insert(with_step("b")).unwrap();
        assert!(s.keep_unless_changed_by_another("b", 0, 2).unwrap());
        // Held by a request that changed it (activated it): shared, not kept.
        s.insert(with_step("c")).unwrap();
        s.insert(with_step("d")).unwrap();
        assert!(!s.keep_unless_changed_by_another("d", 0, 2).unwrap());
        assert!(!s.get("d").unwrap().is_kept(0));
        drop(s);
        let (s, _) = Store::open(&dir, false).unwrap();
        assert!(s.get("a").unwrap().is_kept(0), "journaled");
        assert!(!s.get("c").unwrap().is_kept(0));
        drop(s);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A store in `dir` where "a" and "b" hold one rule, both CREATED: "a" changed it (its
    /// apply was unanswered when "b" found it in place and kept it) and has claimed its
    /// removal; "b" keeps it.
    fn a_changed_b_kept(dir: &Path) -> Store {
        let (s, _) = Store::open(dir, false).unwrap();
        s.index_rules([("2", RuleIdentity::Target)]);
        let step = Step::new("r", "/rules/r1", r#"{"state":"ACTIVE"}"#);
        let holding = |id: &str| {
            let mut r = record(id, "2");
            r.steps = Arc::from([step.clone()]);
            r.applied = 1;
            r.status = Status::Pending;
            r
        };
        // "a" is a creation at work whose apply is not answered yet: not a changer.
        let mut a = holding("a");
        assert!(a.claim());
        s.insert(a).unwrap();
        s.insert(holding("b")).unwrap();
        s.update("b", |r| assert!(r.claim())).unwrap();
        assert!(s.keep_unless_changed_by_another("b", 0, 2).unwrap());
        // "a" turns out to have changed the rule, and goes first.
        s.update("a", |r| r.created(3)).unwrap();
        s.update("b", |r| r.created(3)).unwrap();
        s.update("a", |r| {
            assert_eq!(r.claim_removal(4), RemovalClaim::Claimed)
        })
        .unwrap();
        s
    }

    #[test]
    fn a_holder_whose_apply_is_unanswered_does_not_count_as_a_changer_and_hands_over_its_removal() {
        let dir = temp_dir("kept-handover");
        let s = a_changed_b_kept(&dir);
        // "b" takes over its removal.
        assert!(s.release_if_shared("a", 0, 5).unwrap());
        assert!(
            !s.keeps("b", 0),
            "the last holder must remove what a changed"
        );
        assert!(
            !s.release_if_shared("b", 0, 6).unwrap(),
            "nobody else holds it"
        );
        drop(s);
        let (s, _) = Store::open(&dir, false).unwrap();
        assert!(
            !s.get("b").unwrap().is_kept(0),
            "the take-over is journaled"
        );
        assert_eq!(s.get("a").unwrap().applied, 0);
        drop(s);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_hand_over_that_could_not_be_written_is_not_taken_as_made() {
        let dir = temp_dir("kept-handover-failed");
        let s = a_changed_b_kept(&dir);
        // The hand-over to "b" cannot be written: nothing changes, in memory either.
        crate::journal::FAIL_APPEND_IN.with(|n| n.set(1));
        assert!(s.release_if_shared("a", 0, 5).is_err());
        assert!(s.keeps("b", 0), "not handed over: not written");
        assert_eq!(s.get("a").unwrap().applied, 1, "not released: not written");
        // Tried again, it is written, and a restart finds it.
        assert!(s.release_if_shared("a", 0, 6).unwrap());
        drop(s);
        let (s, _) = Store::open(&dir, false).unwrap();
        assert!(
            !s.get("b").unwrap().is_kept(0),
            "the last holder must remove what a changed"
        );
        assert_eq!(s.get("a").unwrap().applied, 0);
        drop(s);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_repointing_moves_every_record_of_the_region_on_the_same_url_or_none() {
        let s = Store::in_memory();
        let on = |id: &str, region: &str, platform: Option<&str>| {
            let mut r = record(id, region);
            r.platform = platform.map(Arc::from);
            r
        };
        s.insert(on("a", "2", Some("http://old"))).unwrap();
        s.insert(on("b", "2", Some("http://old"))).unwrap();
        s.insert(on("c", "2", Some("http://other"))).unwrap();
        s.insert(on("d", "3", Some("http://old"))).unwrap();
        s.insert(on("e", "2", None)).unwrap();
        let new: Arc<str> = Arc::from("http://new");
        // One of them busy: nothing changes.
        s.update("b", |r| assert!(r.claim())).unwrap();
        assert_eq!(s.repoint("a", &new, 2).unwrap(), Some(false));
        assert_eq!(s.get("a").unwrap().platform.as_deref(), Some("http://old"));
        s.update("b", |r| r.busy = false).unwrap();
        assert_eq!(s.repoint("a", &new, 2).unwrap(), Some(true));
        let platform = |id: &str| s.get(id).unwrap().platform.as_deref().map(str::to_string);
        assert_eq!(
            ["a", "b", "c", "d", "e"].map(platform),
            [
                Some("http://new".into()),
                Some("http://new".into()),
                Some("http://other".into()),
                Some("http://old".into()),
                None
            ]
        );
        assert_eq!(s.repoint("x", &new, 3).unwrap(), None);
    }

    #[test]
    fn records_are_listed_all_or_per_region() {
        let s = Store::in_memory();
        s.insert(record("b", "1")).unwrap();
        s.insert(record("a", "2")).unwrap();
        assert_eq!(
            s.list(None).iter().map(|r| &*r.id).collect::<Vec<_>>(),
            ["b", "a"],
            "in creation order"
        );
        assert_eq!(s.list(Some("1")).len(), 1);
        assert!(s.list(Some("3")).is_empty());
    }

    #[test]
    fn a_step_held_by_another_record_of_the_region_is_released_without_removal() {
        for indexed in [false, true] {
            shared_steps_are_released(indexed);
        }
    }

    fn shared_steps_are_released(indexed: bool) {
        let s = Store::in_memory();
        if indexed {
            s.index_rules([("1", RuleIdentity::Call), ("2", RuleIdentity::Call)]);
        }
        let step = Step::new("l", "/t", "{}");
        for (id, region) in [("a", "1"), ("b", "1"), ("c", "2")] {
            let mut r = record(id, region);
            r.steps = Arc::from([step.clone()]);
            r.applied = 1;
            s.insert(r).unwrap();
        }
        assert!(
            s.release_if_shared("a", 0, 2).unwrap(),
            "b holds the same step in region 1"
        );
        assert_eq!(s.get("a").unwrap().applied, 0);
        assert!(
            !s.release_if_shared("b", 0, 2).unwrap(),
            "a released it: b must remove it"
        );
        assert_eq!(s.get("b").unwrap().applied, 1);
        assert!(
            !s.release_if_shared("c", 0, 2).unwrap(),
            "region 2 shares nothing with region 1"
        );
    }

    #[test]
    fn the_rule_index_tells_shared_rules_by_the_regions_identity() {
        let s = Store::in_memory();
        s.index_rules([("call", RuleIdentity::Call), ("path", RuleIdentity::Target)]);
        s.count_rules();
        // Same target, other body, other label: one rule by path, two calls.
        let (x, y) = (
            Step::new("rule x", "/t", "1"),
            Step::new("rule y", "/t", "2"),
        );
        for (id, region, step) in [
            ("a", "call", &x),
            ("b", "call", &y),
            ("c", "path", &x),
            ("d", "path", &y),
        ] {
            let mut r = record(id, region);
            r.steps = Arc::from([step.clone()]);
            r.applied = 1;
            s.insert(r).unwrap();
        }
        assert!(!s.release_if_shared("a", 0, 2).unwrap());
        assert!(s.release_if_shared("c", 0, 2).unwrap());
        assert!(!s.release_if_shared("d", 0, 2).unwrap());
        // Same call under another label: shared.
        let mut r = record("e", "call");
        r.steps = Arc::from([Step::new("rule x again", "/t", "1")]);
        r.applied = 1;
        s.insert(r).unwrap();
        assert!(s.release_if_shared("e", 0, 2).unwrap());
        assert!(!s.release_if_shared("a", 0, 2).unwrap());
        let expected = counted(&s);
        assert_eq!(s.rules().counts, expected);
    }

    /// The index counts recomputed from the records.
    fn counted(s: &Store) -> HashMap<u64, u32> {
        let records = s.lock();
        let rules = s.rules();
        let mut counts = HashMap::new();
        for r in records.values() {
            for step in &r.steps[..r.applied] {
                *counts.entry(rules.key(&r.region_id, step)).or_default() += 1;
            }
        }
        counts
    }

    #[test]
    fn the_rule_index_stays_equal_to_a_recount_through_every_kind_of_change() {
        let s = Store::in_memory();
        s.index_rules([("1", RuleIdentity::Call), ("2", RuleIdentity::Target)]);
        s.count_rules();
        let steps: Vec<Step> = (0..4)
            .map(|i| Step::new(&format!("l{i}"), &format!("/t{}", i % 2), &format!("b{i}")))
            .collect();
        // A small deterministic generator (xorshift): the sequence is the same on every run.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for round in 0..2000 {
            let id = format!("r{}", next(12));
            match next(5) {
                0 | 1 => {
                    let mut r = record(&id, ["1", "2", "3"][next(3) as usize]);
                    let n = 1 + next(3) as usize;
                    r.steps = (0..n)
                        .map(|_| steps[next(4) as usize].clone())
                        .collect::<Vec<_>>()
                        .into();
                    r.applied = next(n as u64 + 1) as usize;
                    // Few distinct times: records created in the same millisecond.
                    r.created_at = next(4) as i64;
                    if s.get(&id).is_none() {
                        s.insert(r).unwrap();
                    }
                }
                2 => {
                    let to = next(4) as usize;
                    s.update(&id, |r| r.applied = to.min(r.steps.len()))
                        .unwrap();
                }
                3 => {
                    if let Some(r) = s.get(&id).filter(|r| r.applied > 0) {
                        s.release_if_shared(&id, r.applied - 1, round).unwrap();
                    }
                }
                _ => {
                    s.remove(&id).unwrap();
                }
            }
            let expected = counted(&s);
            assert_eq!(s.rules().counts, expected, "after round {round}");
            let recounted = regions_recounted(&s);
            assert_eq!(
                s.lock().by_region,
                recounted,
                "region index after round {round}"
            );
        }
    }

    /// The per-region index recomputed from the records.
    fn regions_recounted(s: &Store) -> HashMap<Arc<str>, BTreeSet<Created>> {
        let mut by_region: HashMap<Arc<str>, BTreeSet<Created>> = HashMap::new();
        for r in s.lock().values() {
            index_region(&mut by_region, r);
        }
        by_region
    }

    #[test]
    fn pages_follow_the_creation_order_across_regions_and_per_region() {
        let s = Store::in_memory();
        // (id, region, created): ids out of creation order, creation times out of the order
        // of insertion (a clock stepped back) and tied: insertion order is what counts.
        for (id, region, created) in [
            ("e", "1", 1),
            ("d", "2", 3),
            ("c", "1", 3),
            ("a", "2", 2),
            ("b", "3", 3),
        ] {
            let mut r = record(id, region);
            r.created_at = created;
            s.insert(r).unwrap();
        }
        let ids = |p: &Page| {
            p.records
                .iter()
                .map(|r| r.id.to_string())
                .collect::<Vec<_>>()
        };
        let all = s.page(None, None, usize::MAX).unwrap();
        assert_eq!(
            (ids(&all), all.more),
            (
                vec!["e", "d", "c", "a", "b"]
                    .into_iter()
                    .map(String::from)
                    .collect(),
                false
            )
        );
        let first = s.page(None, None, 2).unwrap();
        assert_eq!(
            (ids(&first), first.more),
            (vec!["e".to_string(), "d".into()], true)
        );
        let next = s.page(None, Some("d"), 2).unwrap();
        assert_eq!(
            (ids(&next), next.more),
            (vec!["c".to_string(), "a".into()], true)
        );
        let last = s.page(None, Some("a"), 2).unwrap();
        assert_eq!((ids(&last), last.more), (vec!["b".to_string()], false));
        let region = s.page(Some("1"), Some("e"), 1).unwrap();
        assert_eq!((ids(&region), region.more), (vec!["c".to_string()], false));
        // A cursor from another region still places the page.
        assert_eq!(ids(&s.page(Some("1"), Some("d"), 5).unwrap()), ["c"]);
        assert!(s.page(Some("9"), None, 5).unwrap().records.is_empty());
        assert!(s.page(None, Some("zz"), 5).is_none(), "unknown cursor");
        s.remove("c").unwrap();
        assert_eq!(ids(&s.page(Some("1"), None, 5).unwrap()), ["e"]);
        s.remove("e").unwrap();
        assert!(
            !s.lock().by_region.contains_key("1"),
            "an emptied region is forgotten"
        );
    }

    #[test]
    fn a_page_after_a_request_deleted_since_goes_on_where_it_stood() {
        // A client that deletes what it lists, then asks for the next page after the last
        // request it deleted.
        let s = Store::in_memory();
        for (id, region, created) in [("a", "1", 1), ("b", "2", 2), ("c", "1", 3), ("d", "2", 4)] {
            let mut r = record(id, region);
            r.created_at = created;
            s.insert(r).unwrap();
        }
        let first = s.page(None, None, 2).unwrap();
        assert!(first.more);
        for r in &first.records {
            s.remove(&r.id).unwrap();
        }
        let ids = |p: Page| {
            p.records
                .iter()
                .map(|r| r.id.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(s.page(None, Some("b"), 2).unwrap()), ["c", "d"]);
        assert_eq!(ids(s.page(Some("1"), Some("b"), 2).unwrap()), ["c"]);
        assert!(
            s.page(None, Some("never"), 2).is_none(),
            "an unknown cursor"
        );
    }

    #[test]
    fn a_creation_beyond_the_bound_writes_nothing() {
        let s = Store::in_memory();
        assert!(s.insert_within(record("a", "1"), 2).unwrap());
        assert!(s.insert_within(record("b", "1"), 2).unwrap());
        assert!(!s.insert_within(record("c", "1"), 2).unwrap());
        assert_eq!(s.len(), 2);
        assert!(s.get("c").is_none());
    }

    #[test]
    fn update_changes_and_remove_forgets() {
        let s = Store::in_memory();
        s.insert(record("a", "1")).unwrap();
        assert_eq!(
            s.update("a", |r| {
                r.status = Status::Created;
                7
            })
            .unwrap(),
            Some(7)
        );
        assert_eq!(s.get("a").unwrap().status, Status::Created);
        assert!(s.update("zz", |_| ()).unwrap().is_none());
        assert!(s.remove("a").unwrap().is_some());
        assert!(s.get("a").is_none() && s.is_empty());
    }

    #[test]
    fn every_change_survives_a_restart_and_runtime_fields_do_not() {
        let dir = temp_dir("restart");
        {
            let (s, _) = Store::open(&dir, true).unwrap();
            let mut r = record("a", "1");
            r.request = Arc::from(r#"{"appLatency":{"timeUnit":"ms","latency":2.50}}"#);
            r.steps = Arc::from([Step::new("l", "/t", "{\"x\":1}")]);
            s.insert(r).unwrap();
            s.insert(record("b", "1")).unwrap();
            s.update("a", |r| {
                r.status = Status::Failed;
                r.detail = Some("why".into());
                r.applied = 1;
                r.busy = true;
                r.last_modified = 9;
            })
            .unwrap();
            s.remove("b").unwrap();
        }
        let (s, stats) = Store::open(&dir, true).unwrap();
        assert_eq!(stats.entries, 4);
        let a = s.get("a").unwrap();
        assert_eq!(
            (a.status, a.applied, a.last_modified, a.busy),
            (Status::Failed, 1, 9, false)
        );
        assert_eq!(a.detail.as_deref(), Some("why"));
        assert_eq!(
            &*a.request,
            r#"{"appLatency":{"timeUnit":"ms","latency":2.50}}"#
        );
        assert_eq!(a.steps[0].body(), "{\"x\":1}");
        assert!(s.get("b").is_none());
    }

    #[test]
    fn compaction_keeps_every_record() {
        let dir = temp_dir("compact");
        {
            let (s, _) = Store::open(&dir, false).unwrap();
            for i in 0..3 {
                s.insert(record(&format!("r{i}"), "1")).unwrap();
            }
            // force one: the bound is for real use
            let journal = s.journal().unwrap();
            let generation = {
                let _records = s.lock();
                journal.rotate().unwrap().unwrap()
            };
            s.remove("r1").unwrap();
            journal
                .write_snapshot(generation, s.list(None).iter().map(|r| r.to_entry()))
                .unwrap();
        }
        let (s, _) = Store::open(&dir, true).unwrap();
        assert_eq!(
            s.list(None).iter().map(|r| &*r.id).collect::<Vec<_>>(),
            ["r0", "r2"]
        );
    }

    #[test]
    fn the_creation_order_survives_a_compaction_and_a_restart() {
        let dir = temp_dir("order");
        let order = ["z", "a", "m", "b"];
        {
            let (s, _) = Store::open(&dir, false).unwrap();
            // Same millisecond, ids out of order; two before the snapshot, two after it.
            for id in &order[..2] {
                s.insert(record(id, "1")).unwrap();
            }
            assert!(s.compact(s.journal().unwrap()).unwrap());
            for id in &order[2..] {
                s.insert(record(id, "1")).unwrap();
            }
        }
        let (s, _) = Store::open(&dir, true).unwrap();
        let page = s.page(None, None, usize::MAX).unwrap();
        assert_eq!(
            page.records.iter().map(|r| &*r.id).collect::<Vec<_>>(),
            order
        );
        s.insert(record("c", "1")).unwrap();
        let last = s.page(Some("1"), Some("b"), 5).unwrap();
        assert_eq!(
            last.records.iter().map(|r| &*r.id).collect::<Vec<_>>(),
            ["c"]
        );
    }
}

/// Every interleaving of two and three creations of one platform rule and their deletions, as
/// `service` drives the store (each step's record changes where it makes them, the turns
/// respected), against a platform that answers "already in place" for a rule that is on: the
/// rule ends as it was before the requests, whatever the order of the answers, the checks and
/// the deletions.
#[cfg(test)]
mod interleavings {
    use super::*;

    /// What one creation (`i` of the schedule) does, in its order.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Event {
        /// Takes the apply turn and records the step as possibly applied.
        Send(usize),
        /// The platform carries out the apply.
        Land(usize),
        /// The answer is recorded (kept or not); the apply turn is given back.
        Answer(usize),
        /// PENDING → CREATED.
        Created(usize),
        /// A DELETE, under the removal turn: kept, released, or removed from the platform.
        Delete(usize),
    }

    impl Event {
        fn creation(self) -> usize {
            match self {
                Event::Send(i)
                | Event::Land(i)
                | Event::Answer(i)
                | Event::Created(i)
                | Event::Delete(i) => i,
            }
        }
    }

    struct World {
        store: Store,
        /// The rule is on the platform.
        on: bool,
        /// What each creation's apply found: in place already.
        in_place: Vec<bool>,
        step: Step,
    }

    impl World {
        fn new(n: usize, on: bool) -> World {
            let store = Store::in_memory();
            store.index_rules([("2", RuleIdentity::Target)]);
            World {
                store,
                on,
                in_place: vec![false; n],
                step: Step::new("r", "/rules/r1", r#"{"state":"ACTIVE"}"#),
            }
        }

        fn run(&mut self, event: Event) {
            let id = event.creation().to_string();
            match event {
                Event::Send(_) => {
                    let mut r = Record::new(
                        id.into(),
                        "2".into(),
                        "{}".into(),
                        Status::Pending,
                        Arc::from([self.step.clone()]),
                        1,
                        1,
                    );
                    assert!(r.claim());
                    self.store.insert(r).unwrap();
                }
                Event::Land(i) => {
                    self.in_place[i] = self.on;
                    self.on = true;
                }
                Event::Answer(i) => {
                    if self.in_place[i] {
                        self.store
                            .keep_unless_changed_by_another(&id, 0, 2)
                            .unwrap();
                    }
                }
                Event::Created(_) => {
                    self.store.update(&id, |r| r.created(3)).unwrap();
                }
                Event::Delete(_) => self.delete(&id),
            }
        }

        /// `Service::delete` and its undo, for the one step.
        fn delete(&mut self, id: &str) {
            let claim = self.store.update(id, |r| r.claim_removal(4)).unwrap();
            assert_eq!(claim, Some(RemovalClaim::Claimed));
            if self.store.keeps(id, 0) {
                self.store.update(id, |r| r.step_off(0)).unwrap();
            } else if !self.store.release_if_shared(id, 0, 5).unwrap() {
                self.on = false;
                self.store.update(id, |r| r.step_off(0)).unwrap();
            }
            self.store.remove(id).unwrap();
        }
    }

    /// The event creation `i` may run next, given how many of its five ran, and whether some
    /// apply turn is held (a deletion waits for it).
    fn next(i: usize, done: usize, turn_held: bool) -> Option<Event> {
        match done {
            0 => Some(Event::Send(i)),
            1 => Some(Event::Land(i)),
            2 => Some(Event::Answer(i)),
            3 => Some(Event::Created(i)),
            4 if !turn_held => Some(Event::Delete(i)),
            _ => None,
        }
    }

    /// Runs every schedule of `n` creations (depth first, replaying each from the start);
    /// returns how many ran.
    fn every_schedule(n: usize, on_before: bool) -> usize {
        walk(n, on_before, &mut Vec::new(), &mut vec![0; n])
    }

    fn walk(n: usize, on_before: bool, schedule: &mut Vec<Event>, done: &mut [usize]) -> usize {
        // An apply turn is held from Send to Answer.
        let turn_held = done.iter().any(|&d| (1..3).contains(&d));
        // The creations are alike: they start in the order of their numbers, which leaves
        // out only schedules that are the same up to renaming.
        let choices: Vec<Event> = (0..n)
            .filter(|&i| done[i] > 0 || i == 0 || done[i - 1] > 0)
            .filter_map(|i| next(i, done[i], turn_held))
            .collect();
        if choices.is_empty() {
            assert!(done.iter().all(|&d| d == 5), "stuck: {schedule:?}");
            let mut world = World::new(n, on_before);
            for &event in schedule.iter() {
                world.run(event);
            }
            assert_eq!(
                world.on, on_before,
                "the rule was on: {on_before} before; after {schedule:?}: {}",
                world.on
            );
            assert!(world.store.is_empty());
            return 1;
        }
        let mut runs = 0;
        for event in choices {
            schedule.push(event);
            done[event.creation()] += 1;
            runs += walk(n, on_before, schedule, done);
            done[event.creation()] -= 1;
            schedule.pop();
        }
        runs
    }

    #[test]
    fn two_creations_and_deletions_of_one_rule_leave_it_as_it_was_in_every_order() {
        for on_before in [true, false] {
            assert!(every_schedule(2, on_before) > 100);
        }
    }

    #[test]
    fn three_creations_and_deletions_of_one_rule_leave_it_as_it_was_in_every_order() {
        for on_before in [true, false] {
            assert!(every_schedule(3, on_before) > 80_000);
        }
    }
}
