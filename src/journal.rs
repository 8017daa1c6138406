//! The durable form of the records in `state_dir`: an append-only journal of versioned,
//! checksummed JSON lines, periodic snapshots that bound its size, group-committed `fsync`s,
//! replay at start-up, and a lock file against a second process. Only [`store`](crate::store)
//! uses it.
//!
//! Files (gen = a generation number, 20 digits):
//!
//! - `LOCK` — holds the pid of the process using the directory. The lock itself is a `flock`
//!   on the directory (and on `LOCK`, as before): deleting `LOCK` by hand, as a "stale" lock,
//!   cannot let a second process write the same journal.
//! - `snapshot-<gen>.jsonl` — every record as of the start of `journal-<gen>.jsonl`; written
//!   to a `.tmp` file, fsynced, then renamed, so it exists only when complete.
//! - `journal-<gen>.jsonl` — changes since that snapshot.
//!
//! Every line is `<crc32 of the JSON, 8 hex digits> <format version> <JSON entry>\n`. A journal
//! file is kept extended ahead of its entries with zero bytes (by the flusher thread, off the
//! records lock), and its entries end where the zeros begin (or at the end of the file). On
//! start the newest snapshot is loaded and the journals from its generation on are replayed in
//! order. In the last journal, bytes after the last valid entry that do not check out (a
//! partial line, a line failing its checksum, garbage before or among the zeros) with no valid
//! entry after them are a write torn by a crash or power cut: logged (file, offset, bytes
//! dropped), zeroed, and the start goes on. Damage followed by a valid entry, or inside an
//! earlier journal or a snapshot, stops the start with the file, the byte offset and how many
//! valid entries follow it, and the file is left as it is.

use std::borrow::Cow;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use log::{info, warn};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Version written in every line; lines of other versions are refused.
const FORMAT_VERSION: u32 = 1;

/// A journal is compacted once it is larger than this and than a quarter of the last snapshot:
/// replay reads the snapshot and the journal, so this bounds start-up time to about 1.25 times
/// that of the snapshot alone, for at most five times the writes.
const COMPACT_MIN_BYTES: u64 = 16 << 20;

/// Journal files hold zero bytes ahead of the entries written into them: this many when the
/// journal is opened at start-up, then the flusher keeps at least half of it ahead, adding
/// [`EXTEND_AHEAD_BYTES`] after a flush when less is left. An `fdatasync` after an entry then
/// writes only that entry's pages: the file's size and block map are unchanged, so there is no
/// file-system metadata to commit with it (measured with `examples/bench.rs`: p50 0.28 → 0.21
/// ms alone, and fewer, shorter flushes under load). The zeros cost one longer flush per
/// extension.
///
/// A file started by a compaction, or an entry larger than the room, grows the file by itself
/// until the flusher adds room: zeros are never written under the records lock (8 MiB of them
/// there, written out by the next flush, made the compactions' latency spikes: max latency
/// 32–56 → 21–32 ms, p99 mean 3.32 → 2.91 ms, 5 pairs of 12-s runs).
pub const PREALLOCATE_BYTES: u64 = 8 << 20;

/// One change of the records, externally tagged (`{"put": {...}}`: an internally tagged enum
/// would buffer its content, which `RawValue` cannot come from). These are the journal's own
/// types: the API types may change without changing what is on disk.
///
/// Strings are borrowed where they can be: an entry being written borrows from the record it
/// describes, and one being replayed from its line (ids, labels, targets, the request and
/// JSON bodies), so neither direction copies them into short-lived `String`s.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Entry<'a> {
    /// A whole record: a creation, or a record of a snapshot.
    Put(#[serde(borrow)] RecordEntry<'a>),
    /// The mutable part of a record changed.
    Update(#[serde(borrow)] UpdateEntry<'a>),
    /// A record was removed.
    Remove {
        #[serde(borrow)]
        id: Cow<'a, str>,
    },
}

/// A whole record on disk.
#[derive(Debug, Serialize, Deserialize)]
pub struct RecordEntry<'a> {
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(borrow)]
    pub region: Cow<'a, str>,
    /// The caller's request, compact JSON, stored verbatim.
    #[serde(borrow)]
    pub request: &'a RawValue,
    #[serde(borrow)]
    pub steps: Vec<StepEntry<'a>>,
    pub applied: usize,
    pub status: StatusEntry,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Cow<'a, str>>,
    pub created: i64,
    pub modified: i64,
    /// The platform URL (credentials masked) the steps are sent to; absent in entries
    /// written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub platform: Option<Cow<'a, str>>,
    /// Indices of the applied steps whose rule the platform already had in place before
    /// the request (their prior state: a MEC 011 rule already ACTIVE), which its removal
    /// leaves as they are; absent when none (and in entries written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<Vec<usize>>,
}

/// A change of a record's status, detail or applied count.
#[derive(Debug, Serialize, Deserialize)]
pub struct UpdateEntry<'a> {
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    pub applied: usize,
    pub status: StatusEntry,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Cow<'a, str>>,
    pub modified: i64,
    /// As [`RecordEntry::kept`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<Vec<usize>>,
    /// The platform URL the record's steps are sent to from now on, only in the update that
    /// changed it (a DELETE with `?adopt=true`); absent, the record's platform is unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub platform: Option<Cow<'a, str>>,
}

/// A planned platform call on disk.
#[derive(Debug, Serialize, Deserialize)]
pub struct StepEntry<'a> {
    #[serde(borrow)]
    pub label: Cow<'a, str>,
    #[serde(borrow)]
    pub target: Cow<'a, str>,
    /// The body, embedded as JSON when it is JSON (every driver's is): replay then only checks
    /// it instead of unescaping a string (measured: a third of the decoding time)...
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub json: Option<&'a RawValue>,
    /// ... or as a string when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Cow<'a, str>>,
}

/// Statuses on disk (`DELETED` is never stored: a deleted record is removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusEntry {
    Pending,
    Created,
    Failed,
    Deleting,
}

/// Why the journal cannot be used.
#[derive(Debug)]
pub enum JournalError {
    /// Another process holds the directory.
    Locked { dir: PathBuf, holder: String },
    /// A file is damaged at this offset and it is not a torn write; it was left untouched.
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
        /// Whole entries found after the damage (`None`: the damaged line itself was written
        /// whole but cannot be read by this build).
        entries_after: Option<usize>,
        /// Damaged lines from there on with none of their bytes missing (see `After`).
        whole_damaged: usize,
    },
    /// A file the state needs is not there (a partial restore, a backup taken during a
    /// compaction, a file deleted by hand); nothing was changed.
    Missing {
        dir: PathBuf,
        /// The missing file.
        file: String,
        /// Why the start needs it.
        why: String,
    },
    /// Reading or writing failed.
    Io { path: PathBuf, error: io::Error },
    /// The file system of the state directory has no room (ENOSPC) or the quota is used up
    /// (EDQUOT): nothing was left half-written; writes resume once there is room.
    NoSpace {
        dir: PathBuf,
        path: PathBuf,
        error: io::Error,
    },
}

impl JournalError {
    /// Whether the state directory is out of space (writes resume once it has room again).
    pub fn is_no_space(&self) -> bool {
        matches!(self, JournalError::NoSpace { .. })
    }

    /// Whether another process holds the state directory's lock.
    pub fn is_locked(&self) -> bool {
        matches!(self, JournalError::Locked { .. })
    }
}

/// The name of the errno of a full file system, if `error` is one.
fn no_space_errno(error: &io::Error) -> Option<&'static str> {
    match error.raw_os_error() {
        Some(libc::ENOSPC) => Some("ENOSPC"),
        Some(libc::EDQUOT) => Some("EDQUOT"),
        _ => None,
    }
}

/// Maps a failed write of `path` in state directory `dir`: a full file system is
/// [`JournalError::NoSpace`].
fn write_err<'a>(dir: &'a Path, path: &'a Path) -> impl FnOnce(io::Error) -> JournalError + 'a {
    move |error| match no_space_errno(&error) {
        Some(_) => JournalError::NoSpace {
            dir: dir.to_path_buf(),
            path: path.to_path_buf(),
            error,
        },
        None => JournalError::Io {
            path: path.to_path_buf(),
            error,
        },
    }
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalError::Missing { dir, file, why } => write!(
                f,
                "state directory {} lacks {file}, which {why}: starting would silently drop \
                 those records and lose track of their rules on the platforms. Put the file \
                 back from where the others came from (a backup or copy holds the files of a \
                 state directory together), or start on an empty state directory and \
                 --import-state an export",
                dir.display()
            ),
            JournalError::Locked { dir, holder } => write!(
                f,
                "state directory {} is in use by another mec-plugin process ({holder}); \
                 stop it or pick another --state-dir",
                dir.display()
            ),
            JournalError::Corrupt {
                file,
                offset,
                reason,
                entries_after,
                whole_damaged,
            } => {
                write!(
                    f,
                    "{} is damaged at byte offset {offset}: {reason}",
                    file.display()
                )?;
                match entries_after {
                    Some(0) if *whole_damaged > 0 => {
                        let lines = match whole_damaged {
                            1 => {
                                "1 line from there on is a whole entry failing its checksum".into()
                            }
                            n => format!(
                                "{n} lines from there on are whole entries failing their checksums"
                            ),
                        };
                        write!(
                            f,
                            "; {lines}, so not torn by a crash (which leaves bytes out or garbles \
                             them) but changed after being written (line endings converted to \
                             CRLF? edited by hand?)"
                        )?
                    }
                    Some(n) => write!(
                        f,
                        "; {n} valid entr{} follow{} the damage, so it is not a write torn by a \
                         crash",
                        if *n == 1 { "y" } else { "ies" },
                        if *n == 1 { "s" } else { "" }
                    )?,
                    None => f.write_str("; the line was written whole")?,
                }
                write!(
                    f,
                    ". The file was left untouched: restore it from a backup. Cutting it at \
                     byte offset {offset} would start without every change recorded from there \
                     on, acknowledged ones included"
                )
            }
            JournalError::Io { path, error } => write!(f, "{}: {error}", path.display()),
            JournalError::NoSpace { dir, path, error } => write!(
                f,
                "state_dir {} is full: writing {} failed: {error} ({})",
                dir.display(),
                path.display(),
                no_space_errno(error).unwrap_or("no space")
            ),
        }
    }
}

impl std::error::Error for JournalError {}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |error| JournalError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// The open journal of a state directory.
pub struct Journal {
    dir: PathBuf,
    fsync: bool,
    shared: Arc<Shared>,
    /// The thread that makes written entries durable (none with `fsync = false`).
    flusher: Option<std::thread::JoinHandle<()>>,
    /// Held for the life of the process (flock is released when it is closed).
    _lock: DirLock,
}

/// What the callers and the flusher thread share.
struct Shared {
    writer: Mutex<Writer>,
    sync: Mutex<SyncState>,
    /// Signalled when an entry waits to be made durable (or the journal closes).
    wanted: Condvar,
    /// Signalled (with the writer lock) when the flusher ends an extension.
    extended: Condvar,
    /// Signalled when an `fsync` ends: flush `g` signals `synced[g % 2]`, which only the
    /// callers it covers wait on (waking the others would only put them back to sleep).
    synced: [Condvar; 2],
    /// Set with `SyncState::failed`, read by appends without taking the sync lock.
    stopped: AtomicBool,
    /// Why the last append could not be written for want of space (cleared by the next one
    /// written, or by [`Journal::no_space`] finding room again).
    full: Mutex<Option<String>>,
    /// `full` is set: read by appends without taking its lock.
    is_full: AtomicBool,
}

impl Shared {
    /// The state shared with the flusher, around `writer`; `full` says why the state
    /// directory is full, if it is.
    fn new(writer: Writer, full: Option<String>) -> Shared {
        Shared {
            writer: Mutex::new(writer),
            sync: Mutex::new(SyncState {
                synced: 0,
                wanted: 0,
                flushes: 0,
                flushing: 0,
                failed: None,
                closing: false,
            }),
            wanted: Condvar::new(),
            extended: Condvar::new(),
            synced: [Condvar::new(), Condvar::new()],
            stopped: AtomicBool::new(false),
            is_full: AtomicBool::new(full.is_some()),
            full: Mutex::new(full),
        }
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sync_state(&self) -> MutexGuard<'_, SyncState> {
        self.sync.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the journal for good after a failed `fsync`: the page cache may have dropped
    /// what it held, and a later `fsync` of the same file would not say so. Every caller
    /// waiting, and every later one, gets `reason`.
    fn fail(&self, reason: String) {
        let mut state = self.sync_state();
        state.failed.get_or_insert(reason);
        self.stopped.store(true, Ordering::Release);
        self.synced.iter().for_each(Condvar::notify_all);
    }

    /// Stops the journal for good, as a failed `fsync` does, if its file or the snapshot it
    /// follows was deleted ([`Writer::deleted`]); whether it did.
    fn stop_if_deleted(&self) -> bool {
        let Some(reason) = self.writer().deleted() else {
            return false;
        };
        log::error!("{reason}");
        self.fail(reason);
        true
    }

    /// Why the state directory is full, if it is (set by plain assignment: a poisoned lock
    /// is usable).
    fn full(&self) -> MutexGuard<'_, Option<String>> {
        self.full.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that the state directory is full (`Some`) or has room again (`None`).
    fn set_full(&self, why: Option<String>) {
        let mut full = self.full();
        self.is_full.store(why.is_some(), Ordering::Release);
        *full = why;
    }

    /// The error every caller gets once the journal is stopped.
    fn stopped_error(&self, dir: &Path) -> Option<JournalError> {
        let reason = self.sync_state().failed.clone()?;
        Some(JournalError::Io {
            path: dir.to_path_buf(),
            error: io::Error::other(reason),
        })
    }
}

struct Writer {
    file: Arc<File>,
    path: PathBuf,
    generation: u64,
    /// The snapshot the current journal follows, open (none before the first compaction),
    /// and its path: watched with the journal for being deleted (see [`Writer::deleted`]).
    snapshot: Option<(File, PathBuf)>,
    /// Sequence number of the last entry written.
    written: u64,
    /// Bytes of entries in the current journal file (where the next one is written).
    bytes: u64,
    /// Length of the current journal file: entries, then zeros up to here.
    allocated: u64,
    /// Bytes of the snapshot the current journal follows.
    snapshot_bytes: u64,
    /// A compaction is running (only one at a time).
    compacting: bool,
    /// Compactions failed in a row, and when to try again (with back-off).
    compaction_failures: u32,
    retry_compaction_at: Option<std::time::Instant>,
    /// The flusher is writing zeros past `allocated` (see [`extend_ahead`]).
    extending: bool,
}

impl Writer {
    /// Why the state can no longer be made durable if the journal file being written, or the
    /// snapshot it follows, was deleted (its link count is 0: the state directory removed or
    /// emptied under the running process): entries written to it would be acknowledged and
    /// then found nowhere by the next start. A file of an older generation that a compaction
    /// removes is neither: both are replaced, under the writer lock, before the old files are
    /// removed. Two `fstat`s, read under the writer lock.
    fn deleted(&self) -> Option<String> {
        let unlinked = |file: &File| file.metadata().is_ok_and(|m| m.nlink() == 0);
        let (kind, path) = if unlinked(&self.file) {
            ("journal", &self.path)
        } else {
            match &self.snapshot {
                Some((file, path)) if unlinked(file) => ("snapshot", path),
                _ => return None,
            }
        };
        Some(format!(
            "the {kind} file {} was deleted (the state directory removed or emptied while the \
             service ran?): no change can be made durable any more; restart the service \
             (changes acknowledged before the deletion went with the file)",
            path.display()
        ))
    }

    /// Counts a failed compaction and sets when to try again (doubling back-off); returns
    /// the delay.
    fn compaction_failed(&mut self) -> std::time::Duration {
        self.compaction_failures += 1;
        let delay = COMPACTION_RETRY_INITIAL
            .saturating_mul(1 << (self.compaction_failures - 1).min(10))
            .min(COMPACTION_RETRY_MAX);
        self.retry_compaction_at = Some(std::time::Instant::now() + delay);
        delay
    }
}

struct SyncState {
    /// Entries up to this sequence number are on disk.
    synced: u64,
    /// The highest sequence number a caller waits for.
    wanted: u64,
    /// Flushes started so far; the last one covers entries up to `flushing`.
    flushes: u64,
    flushing: u64,
    failed: Option<String>,
    closing: bool,
}

/// What a start-up replay found.
#[derive(Debug, Default)]
pub struct ReplayStats {
    pub entries: usize,
    pub torn_tail: bool,
}

impl Journal {
    /// Opens (creating if needed, but not its parents) the state directory, takes its lock
    /// and replays its records in order into `apply`.
    pub fn open(
        dir: &Path,
        fsync: bool,
        mut apply: impl FnMut(Entry<'_>),
    ) -> Result<(Journal, ReplayStats), JournalError> {
        make_state_dir(dir)?;
        let lock = take_lock(dir)?;
        let (snapshots, journals) = generations(dir)?;
        let loaded = replay_all(dir, &snapshots, &journals, &mut apply)?;
        let path = dir.join(journal_name(loaded.generation));
        let file = open_journal(&path)?;
        if loaded.fresh {
            sync_dir(dir)?;
        }
        let (allocated, full) = room_ahead(dir, &path, &file, loaded.bytes, loaded.allocated)?;
        let shared = Arc::new(Shared::new(
            Writer {
                file,
                path,
                generation: loaded.generation,
                snapshot: loaded.snapshot,
                written: 0,
                bytes: loaded.bytes,
                allocated,
                snapshot_bytes: loaded.snapshot_bytes,
                compacting: false,
                compaction_failures: 0,
                retry_compaction_at: None,
                extending: false,
            },
            full,
        ));
        let flusher = if fsync {
            let shared = shared.clone();
            let spawned = std::thread::Builder::new()
                .name("journal-flush".into())
                .spawn(move || flush_loop(&shared));
            Some(spawned.map_err(io_err(dir))?)
        } else {
            None
        };
        let journal = Journal {
            dir: dir.to_path_buf(),
            fsync,
            shared,
            flusher,
            _lock: lock,
        };
        Ok((journal, loaded.stats))
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.shared.writer()
    }

    fn sync_state(&self) -> MutexGuard<'_, SyncState> {
        self.shared.sync_state()
    }

    /// Writes one entry (not yet durable) and returns its sequence number for [`wait`].
    /// Callers serialise appends with their own lock so that the journal's order is the order
    /// of the changes.
    ///
    /// [`wait`]: Journal::wait
    pub fn append(&self, entry: &Entry) -> Result<u64, JournalError> {
        // Nothing more is written once stopped: after a failed start of a compaction the next
        // journal may exist, and only the last journal may end with a torn entry.
        if self.shared.stopped.load(Ordering::Acquire) {
            if let Some(e) = self.shared.stopped_error(&self.dir) {
                return Err(e);
            }
        }
        #[cfg(test)]
        if FAIL_APPEND_IN.with(|n| n.replace(n.get().saturating_sub(1)) == 1) {
            return Err(io_err(&self.dir)(io::Error::other(
                "injected write failure",
            )));
        }
        let line = encode(entry);
        // One entry, one line: a line break inside would read back as damage at the next
        // start. Requests are compacted when parsed, so this is only a last guard.
        if line[..line.len() - 1].contains('\n') {
            return Err(io_err(&self.dir)(io::Error::other(
                "a journal entry would span two lines; not written",
            )));
        }
        let mut w = self.writer();
        let end = w.bytes + line.len() as u64;
        // The flusher keeps room ahead (off the records lock). An entry larger than the room,
        // or one that outruns it, grows the file by itself (no zeros written under the records
        // lock), once the flusher is not writing zeros there.
        while end > w.allocated && w.extending {
            w = self
                .shared
                .extended
                .wait(w)
                .unwrap_or_else(|p| p.into_inner());
        }
        w.allocated = w.allocated.max(end);
        // Over the zeros; a failed write is zeroed again (as far as that works) and the next
        // entry is written in its place.
        let written = space_permitting(|| w.file.write_all_at(line.as_bytes(), w.bytes));
        if let Err(e) = written {
            let _ = write_zeros(&w.file, w.bytes, end);
            let path = w.path.clone();
            drop(w);
            let error = write_err(&self.dir, &path)(e);
            if error.is_no_space() {
                self.shared.set_full(Some(error.to_string()));
            }
            return Err(error);
        }
        w.bytes = end;
        w.written += 1;
        let seq = w.written;
        drop(w);
        if self.shared.is_full.load(Ordering::Acquire) {
            self.shared.set_full(None);
        }
        Ok(seq)
    }

    /// Returns once entry `seq` is on disk. Concurrent callers share `fsync`s (group commit):
    /// the flusher thread syncs everything written so far, and starts the next `fsync` as
    /// soon as one ends if anyone waits for more, without waiting to be woken.
    pub fn wait(&self, seq: u64) -> Result<(), JournalError> {
        if !self.fsync {
            // No flusher looks after each flush: a deleted file is looked for here (`fstat`).
            if self.shared.stop_if_deleted() {
                return Err(self.shared.stopped_error(&self.dir).expect("stopped"));
            }
            return Ok(());
        }
        #[cfg(test)]
        if FAIL_WAIT_IN.with(|n| n.replace(n.get().saturating_sub(1)) == 1) {
            // As a failed fsync covering this entry would: the journal stops for good.
            self.shared.fail("injected fsync failure".into());
        }
        let mut state = self.sync_state();
        loop {
            if state.failed.is_some() {
                drop(state);
                return Err(self.shared.stopped_error(&self.dir).expect("failed"));
            }
            if state.synced >= seq {
                return Ok(());
            }
            if state.wanted < seq {
                state.wanted = seq;
                self.shared.wanted.notify_one();
            }
            // Covered by the flush in progress, or by the next one.
            let flush = if state.flushing >= seq {
                state.flushes
            } else {
                state.flushes + 1
            };
            state = self.shared.synced[(flush % 2) as usize]
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The error every write gets once the journal stopped (after a failed `fsync`), if it did.
    pub fn stopped(&self) -> Option<JournalError> {
        self.shared.stopped_error(&self.dir)
    }

    /// Why the journal stopped, if it did (after a failed `fsync`, or once its file was
    /// deleted: looked at first, which stops it).
    pub fn failure(&self) -> Option<String> {
        if !self.shared.stopped.load(Ordering::Acquire) {
            self.shared.stop_if_deleted();
        }
        self.shared.sync_state().failed.clone()
    }

    /// Why changes cannot be written now for want of space (the last append failed with
    /// ENOSPC or EDQUOT), if so. Looks for room again first: writes [`PROBE_BYTES`] of zeros
    /// ahead of the entries (room the next entries use); if that works, space is back.
    pub fn no_space(&self) -> Option<String> {
        if !self.shared.is_full.load(Ordering::Acquire) {
            return None;
        }
        let (file, from) = {
            let mut w = self.writer();
            if w.extending {
                drop(w);
                return self.shared.full().clone();
            }
            w.extending = true;
            (w.file.clone(), w.allocated)
        };
        let written = space_permitting(|| write_zeros(&file, from, from + PROBE_BYTES));
        {
            let mut w = self.writer();
            if Arc::ptr_eq(&w.file, &file) {
                if written.is_ok() {
                    w.allocated = w.allocated.max(from + PROBE_BYTES);
                }
                w.extending = false;
            }
            self.shared.extended.notify_all();
        }
        match written {
            Ok(()) => {
                info!("state_dir {} has room again", self.dir.display());
                self.shared.set_full(None);
                None
            }
            Err(_) => self.shared.full().clone(),
        }
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Tests: stops the journal as a failed `fsync` would.
    #[cfg(test)]
    pub(crate) fn stop(&self, reason: &str) {
        self.shared.fail(reason.to_string());
    }

    /// True when the journal has grown enough to be worth compacting.
    pub fn wants_compaction(&self) -> bool {
        let w = self.writer();
        if w.compacting {
            return false;
        }
        match w.retry_compaction_at {
            // A failed one is tried again after its back-off, whatever the journal's size.
            Some(at) => std::time::Instant::now() >= at,
            None => w.bytes > COMPACT_MIN_BYTES.max(w.snapshot_bytes / 4),
        }
    }

    /// First half of a compaction, called under the caller's lock together with taking a
    /// copy of all records: every entry written so far is made durable and a new journal
    /// generation is started. Returns the new generation, or `None` if a compaction is
    /// already running.
    pub fn rotate(&self) -> Result<Option<u64>, JournalError> {
        let mut w = self.writer();
        if w.compacting {
            return Ok(None);
        }
        if let Err(e) = sync_data(&w.file) {
            let path = w.path.clone();
            drop(w);
            self.shared
                .fail(format!("fsync of {} failed: {e}", path.display()));
            return Err(io_err(&path)(e));
        }
        let generation = w.generation + 1;
        let path = self.dir.join(journal_name(generation));
        // Not created for want of space (or inodes): this journal stays the last one and
        // takes the entries; tried again after a back-off, as a failed snapshot is.
        let opened = match open_journal(&path) {
            Err(JournalError::Io { error, .. }) if no_space_errno(&error).is_some() => {
                let error = write_err(&self.dir, &path)(error);
                let delay = w.compaction_failed();
                warn!(
                    "compaction into generation {generation} not started ({error}); the journal \
                     keeps every change; next attempt in {} s",
                    delay.as_secs()
                );
                return Err(error);
            }
            opened => opened,
        };
        // Entries must not go on into this journal once the next one may exist on disk: a
        // torn entry is accepted only at the end of the last journal.
        let file = match opened.and_then(|file| sync_dir(&self.dir).map(|()| file)) {
            Ok(file) => file,
            Err(e) => {
                drop(w);
                self.shared
                    .fail(format!("starting {} failed: {e}", path.display()));
                return Err(e);
            }
        };
        let upto = w.written;
        *w = Writer {
            file,
            path,
            generation,
            snapshot: w.snapshot.take(),
            written: upto,
            bytes: 0,
            allocated: 0,
            snapshot_bytes: w.snapshot_bytes,
            compacting: true,
            compaction_failures: w.compaction_failures,
            retry_compaction_at: None,
            extending: false,
        };
        drop(w);
        let mut state = self.sync_state();
        state.synced = state.synced.max(upto);
        self.shared.synced.iter().for_each(Condvar::notify_all);
        Ok(Some(generation))
    }

    /// Second half of a compaction, without any lock: writes the snapshot of generation
    /// `generation` (the records as of its rotation), then removes the files it replaces. A
    /// crash at any point leaves either the old files or the new snapshot complete.
    pub fn write_snapshot<'e>(
        &self,
        generation: u64,
        records: impl Iterator<Item = Entry<'e>>,
    ) -> Result<(), JournalError> {
        let result = self.write_snapshot_files(generation, records);
        let mut w = self.writer();
        w.compacting = false;
        match &result {
            Ok(bytes) => {
                w.snapshot_bytes = *bytes;
                w.compaction_failures = 0;
                w.retry_compaction_at = None;
            }
            Err(e) => {
                // The files it replaces are all still there: nothing is lost. It is tried
                // again after a back-off (the journal may never reach its bound again).
                let delay = w.compaction_failed();
                warn!(
                    "compaction into generation {generation} failed ({e}); the journal keeps \
                     every change; next attempt in {} s",
                    delay.as_secs()
                );
            }
        }
        result.map(|_| ())
    }

    fn write_snapshot_files<'e>(
        &self,
        generation: u64,
        records: impl Iterator<Item = Entry<'e>>,
    ) -> Result<u64, JournalError> {
        let tmp = self.dir.join(format!("{}.tmp", snapshot_name(generation)));
        let written = self.write_snapshot_tmp(&tmp, records);
        if written.is_err() {
            // No partial file is left behind (on a full disk it holds the room the journal
            // needs): the journals it would have replaced are intact.
            let _ = fs::remove_file(&tmp);
        }
        let (bytes, file) = written?;
        let path = self.dir.join(snapshot_name(generation));
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(write_err(&self.dir, &path)(e));
        }
        sync_dir(&self.dir)?;
        // The snapshot watched for deletion is this one from now on, before the one it
        // replaces is removed (which is then no deletion of the state).
        self.writer().snapshot = Some((file, path.clone()));
        for item in fs::read_dir(&self.dir)
            .map_err(io_err(&self.dir))?
            .flatten()
        {
            let name = item.file_name().to_string_lossy().into_owned();
            let old = generation_of(&name, "journal-")
                .or_else(|| generation_of(&name, "snapshot-"))
                .is_some_and(|g| g < generation);
            if old {
                fs::remove_file(item.path()).map_err(io_err(&item.path()))?;
            }
        }
        sync_dir(&self.dir)?;
        info!("state compacted into {} ({bytes} bytes)", path.display());
        Ok(bytes)
    }

    /// Writes the snapshot's lines into `tmp` and makes them durable; returns their size and
    /// the file.
    fn write_snapshot_tmp<'e>(
        &self,
        tmp: &Path,
        records: impl Iterator<Item = Entry<'e>>,
    ) -> Result<(u64, File), JournalError> {
        let file = File::create(tmp).map_err(write_err(&self.dir, tmp))?;
        let mut out = io::BufWriter::with_capacity(1 << 20, file);
        let (mut bytes, mut paced) = (0u64, 0u64);
        for entry in records {
            let line = encode(&entry);
            bytes += line.len() as u64;
            #[cfg(test)]
            if FAIL_SNAPSHOT_AFTER.with(|n| n.get() > 0 && bytes > n.get()) {
                return Err(write_err(&self.dir, tmp)(io::Error::from_raw_os_error(
                    libc::ENOSPC,
                )));
            }
            out.write_all(line.as_bytes())
                .map_err(write_err(&self.dir, tmp))?;
            let in_file = bytes - out.buffer().len() as u64;
            if in_file - paced >= SNAPSHOT_PACE_BYTES {
                write_out(out.get_ref(), paced, in_file);
                paced = in_file;
            }
        }
        let file = out
            .into_inner()
            .map_err(|e| write_err(&self.dir, tmp)(e.into_error()))?;
        file.sync_all().map_err(write_err(&self.dir, tmp))?;
        Ok((bytes, file))
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.sync_state().closing = true;
        self.shared.wanted.notify_one();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

/// The flusher thread: while callers wait for entries, `fsync`s everything written so far and
/// wakes them. Ends when the journal closes, or after a failed `fsync` (after which the page
/// cache may have dropped the data: nothing written since can be trusted to be durable, so
/// every caller gets the error and the service stops taking changes rather than
/// acknowledging what may be lost).
fn flush_loop(shared: &Shared) {
    let mut state = shared.sync_state();
    loop {
        while state.wanted <= state.synced && !state.closing {
            state = shared.wanted.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        if state.wanted <= state.synced {
            return; // closing, nothing owed
        }
        // Under the sync lock: every caller waiting for the next flush is covered by this one.
        let (file, path, upto) = {
            let w = shared.writer();
            (w.file.clone(), w.path.clone(), w.written)
        };
        state.flushes += 1;
        state.flushing = upto;
        let flush = state.flushes;
        drop(state);
        if let Err(e) = sync_data(&file) {
            shared.fail(format!("fsync of {} failed: {e}", path.display()));
            return;
        }
        // Durable in a file the next start will not find: nothing it covers is acknowledged.
        if shared.stop_if_deleted() {
            return;
        }
        state = shared.sync_state();
        state.synced = state.synced.max(upto);
        shared.synced[(flush % 2) as usize].notify_all();
        drop(state);
        extend_ahead(shared);
        state = shared.sync_state();
    }
}

#[cfg(test)]
thread_local! {
    /// Tests: the `n`th next append made on this thread fails as a full disk would (0: none).
    pub(crate) static FAIL_APPEND_IN: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    /// Tests: the `n`th next wait for durability on this thread fails as a failed `fsync`
    /// would, after its entry was written (0: none).
    pub(crate) static FAIL_WAIT_IN: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    /// Tests: snapshots written on this thread fail with ENOSPC once past this many bytes (0:
    /// never).
    pub(crate) static FAIL_SNAPSHOT_AFTER: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Tests: while set, appends (and the probe for room) made on this thread fail with ENOSPC.
    pub(crate) static FAIL_APPEND_NO_SPACE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `write`, a write that takes room in the state directory. Tests can make it fail with
/// ENOSPC instead (`FAIL_APPEND_NO_SPACE`).
fn space_permitting<T>(write: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    #[cfg(test)]
    if FAIL_APPEND_NO_SPACE.with(|fail| fail.get()) {
        return Err(io::Error::from_raw_os_error(libc::ENOSPC));
    }
    write()
}

/// `fdatasync` of a journal file. Tests can make the next one fail.
fn sync_data(file: &File) -> io::Result<()> {
    #[cfg(test)]
    if tests::FAIL_NEXT_SYNC.with(|fail| fail.replace(false)) {
        return Err(io::Error::other("injected fsync failure"));
    }
    file.sync_data()
}

/// What [`Journal::no_space`] writes to find out whether the state directory has room again.
const PROBE_BYTES: u64 = 64 << 10;

/// First delay before a failed compaction is tried again; it doubles per failure up to
/// [`COMPACTION_RETRY_MAX`].
const COMPACTION_RETRY_INITIAL: std::time::Duration = std::time::Duration::from_secs(1);
const COMPACTION_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(300);

/// What [`extend_ahead`] adds at a time: short enough not to hold up the next flush for long.
const EXTEND_AHEAD_BYTES: u64 = 1 << 20;

/// The generations of the snapshots and of the journals in `dir`, oldest first; removes
/// the `.tmp` of an interrupted compaction (the journals it would have replaced are intact).
fn generations(dir: &Path) -> Result<(Vec<u64>, Vec<u64>), JournalError> {
    let mut snapshots = Vec::new();
    let mut journals = Vec::new();
    for item in fs::read_dir(dir).map_err(io_err(dir))? {
        let item = item.map_err(io_err(dir))?;
        let name = item.file_name().to_string_lossy().into_owned();
        if let Some(g) = generation_of(&name, "snapshot-") {
            snapshots.push(g);
        } else if let Some(g) = generation_of(&name, "journal-") {
            journals.push(g);
        } else if name.starts_with("snapshot-") && name.ends_with(".tmp") {
            let _ = fs::remove_file(item.path());
        }
    }
    snapshots.sort_unstable();
    journals.sort_unstable();
    Ok((snapshots, journals))
}

/// What a start found on disk, and where the journal goes on.
struct Loaded {
    stats: ReplayStats,
    /// Bytes of the newest snapshot (0: none).
    snapshot_bytes: u64,
    /// That snapshot, open, and its path.
    snapshot: Option<(File, PathBuf)>,
    /// The journal written from now on: the last one replayed, or a new one (`fresh`).
    generation: u64,
    fresh: bool,
    /// Bytes of entries in that journal, and its length (entries, then zeros).
    bytes: u64,
    allocated: u64,
}

/// Replays the newest snapshot and the journals from its generation on, in order, then
/// removes the files older than that snapshot.
fn replay_all(
    dir: &Path,
    snapshots: &[u64],
    journals: &[u64],
    apply: &mut impl FnMut(Entry<'_>),
) -> Result<Loaded, JournalError> {
    let base = snapshots.last().copied().unwrap_or(0);
    let live: Vec<u64> = journals.iter().copied().filter(|&g| g >= base).collect();
    check_generations(dir, base, &live)?;
    let mut stats = ReplayStats::default();
    let mut snapshot_bytes = 0;
    let mut snapshot = None;
    if base > 0 {
        let path = dir.join(snapshot_name(base));
        let replayed = replay_file(&path, false, apply)?;
        debug_assert!(!replayed.torn);
        stats.entries += replayed.entries;
        snapshot_bytes = replayed.valid;
        snapshot = Some((File::open(&path).map_err(io_err(&path))?, path));
    }
    let (mut bytes, mut allocated) = (0, 0);
    for (i, &g) in live.iter().enumerate() {
        let path = dir.join(journal_name(g));
        let is_last = i + 1 == live.len();
        let replayed = replay_file(&path, is_last, apply)?;
        stats.entries += replayed.entries;
        stats.torn_tail |= replayed.torn;
        bytes = replayed.valid;
        allocated = replayed.total;
    }
    // Files older than the snapshot are no longer needed.
    for &g in journals.iter().filter(|&&g| g < base) {
        let _ = fs::remove_file(dir.join(journal_name(g)));
    }
    for &g in snapshots.iter().filter(|&&g| g < base) {
        let _ = fs::remove_file(dir.join(snapshot_name(g)));
    }
    Ok(Loaded {
        stats,
        snapshot_bytes,
        snapshot,
        generation: live.last().copied().unwrap_or(base.max(1)),
        fresh: live.is_empty(),
        bytes,
        allocated,
    })
}

/// Checks that the files a start replays are all there: the journals from the newest
/// snapshot's generation `base` on (from generation 1 without a snapshot), with no gap. A
/// compaction creates journal `g` before it writes snapshot `g`, and removes only the files
/// older than that snapshot, so any other set means a file was lost; found by an audit, the
/// start went on without it (a state without its snapshot replayed its last journal alone,
/// dropping 230 of 242 records without a word).
fn check_generations(dir: &Path, base: u64, live: &[u64]) -> Result<(), JournalError> {
    let missing = |file: String, why: String| JournalError::Missing {
        dir: dir.to_path_buf(),
        file,
        why,
    };
    let mut expected = base.max(1);
    for &g in live {
        if g == expected {
            expected += 1;
        } else if expected == 1 {
            return Err(missing(
                snapshot_name(g),
                format!(
                    "holds every record older than {} (the first journal is generation 1)",
                    journal_name(g)
                ),
            ));
        } else {
            return Err(missing(
                journal_name(expected),
                format!("holds changes made before those of {}", journal_name(g)),
            ));
        }
    }
    if base > 0 && live.is_empty() {
        return Err(missing(
            journal_name(base),
            format!("holds the changes made after {}", snapshot_name(base)),
        ));
    }
    Ok(())
}

/// Makes room for the first entries at start-up rather than in the first request's time:
/// zeros up to half a [`PREALLOCATE_BYTES`] past the entries. Returns the file's new length,
/// and why the state directory is full if there was no room: that does not refuse the start
/// (reads need no room, and changes answer 507 until there is room again, as at run time).
fn room_ahead(
    dir: &Path,
    path: &Path,
    file: &File,
    bytes: u64,
    allocated: u64,
) -> Result<(u64, Option<String>), JournalError> {
    if allocated >= bytes + PREALLOCATE_BYTES / 2 {
        return Ok((allocated, None));
    }
    let extended = space_permitting(|| extend(file, allocated, bytes + PREALLOCATE_BYTES / 2));
    match extended.and_then(|to| sync_data(file).map(|()| to)) {
        Ok(to) => Ok((to, None)),
        Err(e) => match write_err(dir, path)(e) {
            error @ JournalError::NoSpace { .. } => {
                warn!("{error}; starting without room ahead of the entries");
                Ok((allocated, Some(error.to_string())))
            }
            error => Err(error),
        },
    }
}

/// Run by the flusher between flushes: when less than half a [`PREALLOCATE_BYTES`] of zeros
/// is left ahead of the entries, writes [`EXTEND_AHEAD_BYTES`] more past them, outside every
/// lock, so that appends (made under the records lock) do not have to.
fn extend_ahead(shared: &Shared) {
    let (file, from) = {
        let mut w = shared.writer();
        if w.extending || w.allocated - w.bytes >= PREALLOCATE_BYTES / 2 {
            return;
        }
        w.extending = true;
        (w.file.clone(), w.allocated)
    };
    // Nothing else writes past `allocated` while `extending` is set.
    let written = write_zeros(&file, from, from + EXTEND_AHEAD_BYTES);
    let mut w = shared.writer();
    // A compaction may have started a new file meanwhile: the zeros then went to the old one.
    if Arc::ptr_eq(&w.file, &file) {
        if written.is_ok() {
            w.allocated = from + EXTEND_AHEAD_BYTES;
        }
        w.extending = false;
    }
    shared.extended.notify_all();
}

/// Serialises one entry as a journal line.
pub fn encode(entry: &Entry) -> String {
    let json = serde_json::to_string(entry).expect("journal entries always serialise");
    format!(
        "{:08x} {FORMAT_VERSION} {json}\n",
        crc32fast::hash(json.as_bytes())
    )
}

/// Checks and parses one line (without its newline).
fn decode(line: &[u8]) -> Result<Entry<'_>, BadLine> {
    let damaged = |why: &str| BadLine::Damaged(why.to_string());
    let (crc, version, json) = fields(line).map_err(damaged)?;
    if crc32fast::hash(json.as_bytes()) != crc {
        return Err(damaged("checksum mismatch"));
    }
    // From here on the line is exactly what was written: it is not torn, only unreadable.
    if version != FORMAT_VERSION.to_string() {
        return Err(BadLine::Unreadable(format!(
            "format version {version} is not supported (this build reads {FORMAT_VERSION}; was it written by a newer mec-plugin?)"
        )));
    }
    serde_json::from_slice(json.as_bytes())
        .map_err(|e| BadLine::Unreadable(format!("unreadable entry: {e}")))
}

/// A line's checksum, version and JSON, or why it has not that shape.
fn fields(line: &[u8]) -> Result<(u32, &str, &str), &'static str> {
    let text = std::str::from_utf8(line).map_err(|_| "not UTF-8")?;
    let mut parts = text.splitn(3, ' ');
    let (Some(crc), Some(version), Some(json)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("not a journal line");
    };
    let crc = u32::from_str_radix(crc, 16).map_err(|_| "bad checksum field")?;
    Ok((crc, version, json))
}

/// Why a line does not check out.
enum BadLine {
    /// Its bytes are not what was written (incomplete, checksum mismatch): at the end of the
    /// last journal this is a write torn by a crash.
    Damaged(String),
    /// Written whole, but this build cannot read it: never torn, always refused.
    Unreadable(String),
}

/// What replaying one file found.
struct Replayed {
    entries: usize,
    /// Bytes of entries: where the next one goes.
    valid: u64,
    /// Length of the file (entries, then zeros).
    total: u64,
    /// A torn last entry was cut off.
    torn: bool,
}

/// Replays one file: its entries end at its end or where its zeros begin. In the last journal
/// (`may_be_torn`), damage with no valid entry after it is a write torn by a power cut or a
/// crash if every damaged line misses bytes (a partial line, zeros where a page did not reach
/// the disk, stray bytes among the zeros): it is logged and zeroed, and the file is used up to
/// it. Damage with a valid entry after it, a damaged line that is a whole entry failing its
/// checksum (changed after it was written, perhaps an acknowledged entry: see `After`), or
/// damage in any other file, is refused and left untouched.
fn replay_file(
    path: &Path,
    may_be_torn: bool,
    apply: &mut impl FnMut(Entry<'_>),
) -> Result<Replayed, JournalError> {
    let file = File::open(path).map_err(io_err(path))?;
    let total = file.metadata().map_err(io_err(path))?.len();
    let (entries, offset, damage) = read_entries(path, file, total, apply)?;
    let Some(reason) = damage else {
        return Ok(Replayed {
            entries,
            valid: offset,
            total,
            torn: false,
        });
    };
    let after = scan_after(path, offset)?;
    if !may_be_torn || after.entries > 0 || after.whole_damaged > 0 {
        return Err(JournalError::Corrupt {
            file: path.to_path_buf(),
            offset,
            reason,
            entries_after: Some(after.entries),
            whole_damaged: after.whole_damaged,
        });
    }
    let dropped = after.data_end.saturating_sub(offset);
    warn!(
        "{}: the last record (byte offset {offset}) was torn by a crash or power cut ({reason}); \
         no valid entry follows it: {dropped} byte(s) dropped (zeroed) and the start goes on",
        path.display()
    );
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    write_zeros(&file, offset, after.data_end).map_err(io_err(path))?;
    sync_data(&file).map_err(io_err(path))?;
    Ok(Replayed {
        entries,
        valid: offset,
        total,
        torn: true,
    })
}

/// Applies the entries of `file` (of length `total`) in order, up to its end, the zeros after
/// its entries, or the first line that does not check out. Returns how many were applied, the
/// offset where they end and, when they end at damage, what it is. A line written whole that
/// this build cannot read is refused: never a torn write.
fn read_entries(
    path: &Path,
    file: File,
    total: u64,
    apply: &mut impl FnMut(Entry<'_>),
) -> Result<(usize, u64, Option<String>), JournalError> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let (mut offset, mut entries) = (0u64, 0usize);
    loop {
        line.clear();
        let zeros = reader.fill_buf().map_err(io_err(path))?.first() == Some(&0);
        if zeros {
            // The zeros are scanned, not read into `line`: they are megabytes long.
            let (n, only_zeros) = skip_zeros(&mut reader).map_err(io_err(path))?;
            if only_zeros && offset + n == total {
                return Ok((entries, offset, None));
            }
            let damage = "zero bytes followed by data".to_string();
            return Ok((entries, offset, Some(damage)));
        }
        let (n, ended) = read_line_until_nul(&mut reader, &mut line).map_err(io_err(path))?;
        if n == 0 {
            return Ok((entries, offset, None));
        }
        if !ended {
            return Ok((entries, offset, Some("line without its end".to_string())));
        }
        match decode(&line[..n - 1]) {
            Ok(entry) => {
                apply(entry);
                entries += 1;
                offset += n as u64;
            }
            Err(BadLine::Damaged(reason)) => return Ok((entries, offset, Some(reason))),
            Err(BadLine::Unreadable(reason)) => {
                return Err(JournalError::Corrupt {
                    file: path.to_path_buf(),
                    offset,
                    reason,
                    entries_after: None,
                    whole_damaged: 0,
                });
            }
        }
    }
}

/// What follows a damaged byte offset of a file.
struct After {
    /// Complete lines there that pass their checksum (whatever precedes them on their line,
    /// up to a zero byte): entries that were written whole after the damage.
    entries: usize,
    /// Complete lines there that fail their checksum although they are entries written
    /// whole: they end with their newline, hold no zero byte, and what follows their checksum
    /// and version still reads as an entry. A crash tears a write by leaving bytes out (a line
    /// cut short, the zeros the file was preallocated with where a page did not reach the
    /// disk) or, on some devices, by garbling what was being written; neither leaves a whole
    /// entry behind. Such a line was changed after it was written (line endings converted to
    /// CRLF, an edit by hand, bit rot) and may be an acknowledged entry.
    whole_damaged: usize,
    /// One past the last byte that is not zero (the damage's own offset if none is).
    data_end: u64,
}

/// Scans `path` from `from` on for whole entries. A line is a candidate from its start or
/// from just after a zero byte (entries never contain one: JSON escapes control characters),
/// up to its newline. Reads the file a buffer at a time: the zeros may be megabytes.
fn scan_after(path: &Path, from: u64) -> Result<After, JournalError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(path).map_err(io_err(path))?;
    file.seek(SeekFrom::Start(from)).map_err(io_err(path))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut candidate = Vec::new();
    let mut after = After {
        entries: 0,
        whole_damaged: 0,
        data_end: from,
    };
    let mut at = from;
    // Whether the line being scanned holds a zero byte (`candidate` restarts after one).
    let mut line_has_zero = false;
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            return Ok(after);
        }
        for &b in &buf[..n] {
            at += 1;
            match b {
                0 => {
                    candidate.clear();
                    line_has_zero = true;
                }
                b'\n' => {
                    after.data_end = at;
                    if checks_out(&candidate) || ends_with_entry(&candidate) {
                        after.entries += 1;
                    } else if !line_has_zero && reads_as_entry(&candidate) {
                        after.whole_damaged += 1;
                    }
                    candidate.clear();
                    line_has_zero = false;
                }
                _ => {
                    after.data_end = at;
                    candidate.push(b);
                }
            }
        }
    }
}

/// Whether `line` (without its newline) is a whole entry as written: its checksum matches.
fn checks_out(line: &[u8]) -> bool {
    !matches!(decode(line), Err(BadLine::Damaged(_)))
}

/// Whether `line` has an entry's [`fields`], whatever its checksum, with JSON that reads as an
/// entry (trailing whitespace such as a CR allowed, as JSON allows).
fn reads_as_entry(line: &[u8]) -> bool {
    fields(line)
        .is_ok_and(|(_, _, json)| serde_json::from_slice::<Entry<'_>>(json.as_bytes()).is_ok())
}

/// Whether a whole entry ends `line` after bytes that are not one (the previous line's
/// newline was damaged: both read as one line). An entry starts with its checksum, its
/// version and `{"`, which never occur together inside an entry (compact JSON has no spaces
/// outside strings, and `"` is escaped inside them), so only real starts are checked.
fn ends_with_entry(line: &[u8]) -> bool {
    (1..line.len()).any(|i| {
        let rest = &line[i..];
        let version = rest
            .get(9..)
            .map_or(0, |v| v.iter().take_while(|b| b.is_ascii_digit()).count());
        rest.len() > 12 + version
            && version > 0
            && rest[..8].iter().all(u8::is_ascii_hexdigit)
            && rest[8] == b' '
            && rest[9 + version..].starts_with(b" {\"")
            && checks_out(rest)
    })
}

/// Consumes a run of zero bytes and what follows it on the same line (up to and including its
/// newline, or to the end of the file) without keeping it; returns its length and whether it
/// was all zero bytes.
fn skip_zeros(reader: &mut impl BufRead) -> io::Result<(u64, bool)> {
    let (mut n, mut only_zeros) = (0u64, true);
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok((n, only_zeros));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        only_zeros &= buf[..take].iter().all(|&b| b == 0);
        reader.consume(take);
        n += take as u64;
        if done || !only_zeros {
            return Ok((n, only_zeros));
        }
    }
}

/// Reads one line into `line`, up to and including its newline; stops before a zero byte
/// (which no entry contains) or at the end of the file. Returns its length and whether it
/// ended with a newline.
fn read_line_until_nul(reader: &mut impl BufRead, line: &mut Vec<u8>) -> io::Result<(usize, bool)> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok((line.len(), false));
        }
        match buf.iter().position(|&b| b == b'\n' || b == 0) {
            Some(i) if buf[i] == b'\n' => {
                line.extend_from_slice(&buf[..=i]);
                reader.consume(i + 1);
                return Ok((line.len(), true));
            }
            Some(i) => {
                line.extend_from_slice(&buf[..i]);
                reader.consume(i);
                return Ok((line.len(), false));
            }
            None => {
                let len = buf.len();
                line.extend_from_slice(buf);
                reader.consume(len);
            }
        }
    }
}

/// Opens a journal file for writing at chosen offsets, creating it if needed.
fn open_journal(path: &Path) -> Result<Arc<File>, JournalError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map(Arc::new)
        .map_err(io_err(path))
}

/// A snapshot is written to disk this much at a time while it is produced, rather than all at
/// its final `fsync`: one long burst of writes would queue the journal's flushes (the durable
/// requests) behind it for the whole of it.
const SNAPSHOT_PACE_BYTES: u64 = 1 << 20;

/// Writes `from..to` of `file` to disk and waits for it (no cache flush: the final `fsync`
/// does that). Best effort: the final `fsync` still covers everything if this fails.
fn write_out(file: &File, from: u64, to: u64) {
    #[cfg(target_os = "linux")]
    {
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // SAFETY: a plain system call on a descriptor we own; no memory is passed.
        unsafe { libc::sync_file_range(file.as_raw_fd(), from as i64, (to - from) as i64, flags) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, from, to);
}

/// Writes zeros from `allocated` to the first multiple of [`PREALLOCATE_BYTES`] past `end`;
/// returns that length.
fn extend(file: &File, allocated: u64, end: u64) -> io::Result<u64> {
    let to = (end + PREALLOCATE_BYTES) / PREALLOCATE_BYTES * PREALLOCATE_BYTES;
    write_zeros(file, allocated, to)?;
    Ok(to)
}

/// Writes zero bytes over `from..to` of `file`.
fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK.min((to - from) as usize)];
    let mut at = from;
    while at < to {
        let n = zeros.len().min((to - at) as usize);
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

fn snapshot_name(generation: u64) -> String {
    format!("snapshot-{generation:020}.jsonl")
}

fn journal_name(generation: u64) -> String {
    format!("journal-{generation:020}.jsonl")
}

fn generation_of(name: &str, prefix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    #[cfg(test)]
    if tests::FAIL_NEXT_DIR_SYNC.with(|fail| fail.replace(false)) {
        return Err(io_err(dir)(io::Error::other(
            "injected directory fsync failure",
        )));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Creates the state directory if it is not there. Only it: a missing parent is most likely a
/// mistyped path, which would otherwise start on a new, empty state without a word.
fn make_state_dir(dir: &Path) -> Result<(), JournalError> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let why = match fs::create_dir(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            io::Error::new(e.kind(), "exists and is not a directory")
        }
        // ENOENT also comes from a parent that is there but takes no new directory
        // (`/proc/sys`): only a parent really missing is reported as one, else the OS's word.
        Err(e) if e.kind() == io::ErrorKind::NotFound && fs::metadata(parent).is_ok() => {
            io::Error::new(e.kind(), format!("cannot be created: {e}"))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => io::Error::new(
            e.kind(),
            format!(
                "its parent directory {} does not exist (a state directory is created, its \
                     parents are not: is the path right?)",
                parent.display()
            ),
        ),
        Err(e) => e,
    };
    Err(io_err(dir)(why))
}

/// A state directory's lock: `flock`s on the directory itself and on its `LOCK` file, held
/// while open.
struct DirLock {
    _dir: File,
    _file: File,
}

/// Takes `flock` on `file` without waiting: `Ok(false)` when another holds it, an error when
/// the file system cannot lock it.
fn flocked(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a file descriptor we own; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(false),
        _ => Err(error),
    }
}

/// Takes the directory's lock, or says who holds it. The directory itself is locked first: a
/// `LOCK` file deleted while its process runs (an audit found that a second process then took
/// a new `LOCK` and both wrote the journal, each overwriting the other's entries) gets a new
/// inode and a new lock, the directory does not. `LOCK` is locked too, so that a process of an
/// earlier version, which locks only it, is still seen.
fn take_lock(dir: &Path) -> Result<DirLock, JournalError> {
    let path = dir.join("LOCK");
    let locked = || {
        let holder = match fs::read_to_string(&path) {
            Ok(pid) => format!("pid {}", pid.trim()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                "unknown pid: its LOCK file was deleted, the directory is locked all the same"
                    .into()
            }
            Err(_) => "unknown pid".into(),
        };
        JournalError::Locked {
            dir: dir.to_path_buf(),
            holder,
        }
    };
    let handle = File::open(dir).map_err(io_err(dir))?;
    match flocked(&handle) {
        Ok(true) => {}
        Ok(false) => return Err(locked()),
        // A file system that cannot lock a directory (some network and FUSE ones) keeps the
        // lock on `LOCK` alone, as before the directory's own lock.
        Err(e) => warn!(
            "{}: cannot lock the directory itself ({e}); only its LOCK file keeps a second \
             process out: do not delete it while the service runs",
            dir.display()
        ),
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path))?;
    if !flocked(&file).unwrap_or(false) {
        return Err(locked());
    }
    // The pid only tells a second process who holds the lock: the lock is the flock. Writing
    // it may fail on a full file system, which a start must survive (changes answer 507).
    if let Err(e) = file
        .set_len(0)
        .and_then(|()| write!(file, "{}", std::process::id()))
    {
        warn!(
            "{}: cannot write this process's pid ({e}); the lock is held all the same",
            path.display()
        );
    }
    Ok(DirLock {
        _dir: handle,
        _file: file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Makes the next [`sync_data`] called on this thread fail.
        pub(super) static FAIL_NEXT_SYNC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        /// Makes the next [`sync_dir`] called on this thread fail.
        pub(super) static FAIL_NEXT_DIR_SYNC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mec-journal-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// Operator audit: `--state-dir /proc/sys/state` (its parent is there, but no directory
    /// can be made in it: ENOENT) was reported as "its parent directory /proc/sys does not
    /// exist". Only a missing parent is said to be one; both errors name the path.
    #[test]
    fn a_state_dir_is_said_to_lack_its_parent_only_when_the_parent_is_missing() {
        let dir = temp_dir("state-dir-parent");
        let missing = dir.join("typo").join("state");
        let e = make_state_dir(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: ", missing.display()))
                && e.contains(&format!(
                    "its parent directory {} does not exist",
                    dir.join("typo").display()
                )),
            "{e}"
        );
        fs::create_dir(&dir).unwrap();
        make_state_dir(&dir.join("state")).unwrap();
        assert!(dir.join("state").is_dir());
        let _ = fs::remove_dir_all(&dir);

        let proc_sys = Path::new("/proc/sys");
        if !proc_sys.is_dir() {
            eprintln!("skipped the /proc/sys case: no /proc/sys here");
            return;
        }
        let state = proc_sys.join("mec-plugin-state");
        let e = make_state_dir(&state).unwrap_err().to_string();
        // As root ENOENT ("cannot be created: No such file or directory"); else EACCES.
        assert!(
            e.starts_with(&format!("{}: ", state.display())) && !e.contains("parent"),
            "{e}"
        );
    }

    fn put(id: &str) -> Entry<'_> {
        Entry::Put(RecordEntry {
            id: id.into(),
            region: "2".into(),
            request: serde_json::from_str(r#"{"appLatency":{"timeUnit":"ms","latency":1}}"#)
                .unwrap(),
            steps: vec![StepEntry {
                label: "l".into(),
                target: "/t".into(),
                json: Some(serde_json::from_str("{}").unwrap()),
                body: None,
            }],
            applied: 1,
            status: StatusEntry::Pending,
            detail: None,
            created: 1,
            modified: 1,
            platform: None,
            kept: None,
        })
    }

    /// Writes `bytes` where the entries of the journal file end, as the next write would.
    fn write_after_entries(path: &Path, bytes: &[u8]) -> u64 {
        let data = fs::read(path).unwrap();
        let end = data.iter().position(|&b| b == 0).unwrap_or(data.len()) as u64;
        let f = OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(bytes, end).unwrap();
        end
    }

    /// Opens the journal in `dir`, makes a record of each id durable, and closes it.
    fn write_ids(dir: &Path, ids: &[&str]) {
        let (j, _) = Journal::open(dir, true, |_| {}).unwrap();
        for id in ids {
            j.wait(j.append(&put(id)).unwrap()).unwrap();
        }
    }

    fn ids(dir: &Path) -> Result<Vec<String>, JournalError> {
        let mut seen = Vec::new();
        let (journal, _) = Journal::open(dir, true, |e| match e {
            Entry::Put(r) => seen.push(r.id.into_owned()),
            Entry::Remove { id } => seen.retain(|x| *x != id),
            Entry::Update(_) => {}
        })?;
        drop(journal);
        Ok(seen)
    }

    #[test]
    fn escaped_and_non_ascii_strings_read_back_as_written() {
        // Borrowed from the line when they can be, unescaped into their own copy when not.
        let (label, target, body) = ("rule \"q\" ü\\", "/t/\u{1}é", "not \"json\"\n");
        let detail = "why: \"this\"\tü";
        let entry = Entry::Put(RecordEntry {
            id: "i\"d".into(),
            region: "ré\\gion".into(),
            request: serde_json::from_str(r#"{"a":"\"ü\u0041"}"#).unwrap(),
            steps: vec![StepEntry {
                label: label.into(),
                target: target.into(),
                json: None,
                body: Some(body.into()),
            }],
            applied: 1,
            status: StatusEntry::Failed,
            detail: Some(detail.into()),
            created: 1,
            modified: 2,
            platform: Some("http://mep:1".into()),
            kept: Some(vec![0]),
        });
        let line = encode(&entry);
        let Ok(Entry::Put(back)) = decode(line.trim_end().as_bytes()) else {
            panic!("{line}");
        };
        assert_eq!((&*back.id, &*back.region), ("i\"d", "ré\\gion"));
        assert_eq!(back.request.get(), r#"{"a":"\"ü\u0041"}"#);
        let step = &back.steps[0];
        assert_eq!((&*step.label, &*step.target), (label, target));
        assert_eq!(step.body.as_deref(), Some(body));
        assert_eq!(back.detail.as_deref(), Some(detail));
    }

    #[test]
    fn entries_survive_a_reopen_in_order() {
        let dir = temp_dir("reopen");
        {
            let (j, _) = Journal::open(&dir, true, |_| {}).unwrap();
            for id in ["a", "b", "c"] {
                let seq = j.append(&put(id)).unwrap();
                j.wait(seq).unwrap();
            }
            j.wait(j.append(&Entry::Remove { id: "b".into() }).unwrap())
                .unwrap();
        }
        assert_eq!(ids(&dir).unwrap(), ["a", "c"]);
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_cut_off() {
        let dir = temp_dir("torn");
        write_ids(&dir, &["a"]);
        let path = dir.join(journal_name(1));
        let whole = encode(&put("b"));
        let end = write_after_entries(&path, &whole.as_bytes()[..whole.len() / 2]);
        assert_eq!(ids(&dir).unwrap(), ["a"]);
        let data = fs::read(&path).unwrap();
        assert!(
            data[end as usize..].iter().all(|&b| b == 0),
            "cut where it began (and zeros written after it again)"
        );
        let (j, stats) = Journal::open(&dir, true, |_| {}).unwrap();
        assert!(!stats.torn_tail, "cut off the first time");
        j.wait(j.append(&put("c")).unwrap()).unwrap();
        drop(j);
        assert_eq!(
            ids(&dir).unwrap(),
            ["a", "c"],
            "appends after a cut torn tail are readable"
        );
    }

    #[test]
    fn a_corrupted_middle_refuses_to_start_naming_file_and_offset_and_leaves_it() {
        let dir = temp_dir("corrupt");
        write_ids(&dir, &["a", "b", "c"]);
        let path = dir.join(journal_name(1));
        let mut bytes = fs::read(&path).unwrap();
        let second = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
        bytes[second + 20] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let err = ids(&dir).unwrap_err().to_string();
        assert!(
            err.contains(&format!("damaged at byte offset {second}")),
            "{err}"
        );
        assert!(err.contains("journal-"), "{err}");
        assert_eq!(
            fs::read(&path).unwrap(),
            bytes,
            "the damaged file is not modified"
        );
    }

    #[test]
    fn a_whole_last_line_this_build_cannot_read_is_refused_not_cut_off() {
        let dir = temp_dir("newer");
        write_ids(&dir, &["a"]);
        let path = dir.join(journal_name(1));
        let json = r#"{"put":{"id":"b"}}"#;
        let line = format!("{:08x} 2 {json}\n", crc32fast::hash(json.as_bytes()));
        write_after_entries(&path, line.as_bytes());
        let before = fs::read(&path).unwrap();
        let err = ids(&dir).unwrap_err().to_string();
        assert!(err.contains("format version 2 is not supported"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), before, "nothing is cut off");
    }

    #[test]
    fn journals_are_preallocated_and_entries_end_where_the_zeros_begin() {
        let dir = temp_dir("zeros");
        let path = dir.join(journal_name(1));
        let line_len = encode(&put("a")).len() as u64;
        {
            let (j, _) = Journal::open(&dir, true, |_| {}).unwrap();
            j.wait(j.append(&put("a")).unwrap()).unwrap();
            assert_eq!(fs::metadata(&path).unwrap().len(), PREALLOCATE_BYTES);
        }
        write_ids(&dir, &["b"]);
        let data = fs::read(&path).unwrap();
        assert_eq!(data.len() as u64, PREALLOCATE_BYTES, "not extended again");
        assert!(data[..2 * line_len as usize].iter().all(|&b| b != 0));
        assert!(data[2 * line_len as usize..].iter().all(|&b| b == 0));
        assert_eq!(ids(&dir).unwrap(), ["a", "b"]);

        // An entry larger than what is left grows the file by itself, without writing a step
        // of zeros under the records lock; the flusher adds room after it.
        let (j, _) = Journal::open(&dir, true, |_| {}).unwrap();
        let big = Entry::Remove {
            id: "x".repeat(PREALLOCATE_BYTES as usize).into(),
        };
        j.wait(j.append(&big).unwrap()).unwrap();
        drop(j);
        let data = fs::read(&path).unwrap();
        let end = 2 * line_len as usize + encode(&big).len();
        assert!(data.len() >= end && data.len() <= end + EXTEND_AHEAD_BYTES as usize);
        assert!(data[end..].iter().all(|&b| b == 0));
        assert_eq!(ids(&dir).unwrap(), ["a", "b"]);
    }

    #[test]
    fn the_flusher_adds_room_ahead_once_less_than_half_a_step_is_left() {
        let dir = temp_dir("ahead");
        let path = dir.join(journal_name(1));
        let (j, _) = Journal::open(&dir, true, |_| {}).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), PREALLOCATE_BYTES);
        // Leaves less than half a step of zeros, without the append extending the file.
        let big = Entry::Remove {
            id: "x".repeat(PREALLOCATE_BYTES as usize * 5 / 8).into(),
        };
        j.wait(j.append(&big).unwrap()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while fs::metadata(&path).unwrap().len() == PREALLOCATE_BYTES {
            assert!(std::time::Instant::now() < deadline, "no room added");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(j);
        // One flusher step, not the append's own 8 MiB.
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            PREALLOCATE_BYTES + EXTEND_AHEAD_BYTES
        );
        let data = fs::read(&path).unwrap();
        let end = encode(&big).len();
        assert!(data[end..].iter().all(|&b| b == 0));
        assert!(ids(&dir).unwrap().is_empty(), "the entry replays");
    }

    #[test]
    fn data_after_zeros_that_are_not_the_end_refuses_to_start() {
        let dir = temp_dir("holes");
        write_ids(&dir, &["a"]);
        let path = dir.join(journal_name(1));
        let line = encode(&put("b"));
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        let end = line.len() as u64;
        // a whole entry 100 bytes after the end of the entries, then more zeros
        f.write_all_at(line.as_bytes(), end + 100).unwrap();
        drop(f);
        let before = fs::read(&path).unwrap();
        let err = ids(&dir).unwrap_err().to_string();
        assert!(
            err.contains(&format!("damaged at byte offset {end}")),
            "{err}"
        );
        assert!(err.contains("zero bytes followed by data"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), before, "left untouched");
    }

    #[test]
    fn zeros_then_the_beginning_of_an_entry_at_the_end_are_a_torn_write() {
        // What a power cut can leave: the page with the start of the next entry written, an
        // earlier page of zeros not. Nothing after the zeros was acknowledged.
        let dir = temp_dir("zeros-torn");
        write_ids(&dir, &["a"]);
        let path = dir.join(journal_name(1));
        let len = fs::metadata(&path).unwrap().len();
        let whole = encode(&put("b"));
        let partial = &whole.as_bytes()[..whole.len() / 2];
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(partial, len - partial.len() as u64).unwrap();
        drop(f);
        let (j, stats) = Journal::open(&dir, true, |_| {}).unwrap();
        assert!(stats.torn_tail);
        j.wait(j.append(&put("c")).unwrap()).unwrap();
        drop(j);
        assert_eq!(ids(&dir).unwrap(), ["a", "c"]);
        let data = fs::read(&path).unwrap();
        let entries = encode(&put("a")) + &encode(&put("c"));
        assert_eq!(&data[..entries.len()], entries.as_bytes());
        assert!(
            data[entries.len()..].iter().all(|&b| b == 0),
            "the torn bytes are gone"
        );
    }

    /// The journal file's bytes after `damage`, then a reopen: the ids it holds.
    fn damage_last_entry(
        name: &str,
        damage: impl FnOnce(&mut Vec<u8>, usize),
    ) -> (PathBuf, Vec<u8>, usize) {
        let dir = temp_dir(name);
        write_ids(&dir, &["a", "b"]);
        let path = dir.join(journal_name(1));
        let mut bytes = fs::read(&path).unwrap();
        let last = encode(&put("a")).len();
        damage(&mut bytes, last);
        fs::write(&path, &bytes).unwrap();
        (dir, bytes, last)
    }

    /// Changes the bytes of a journal file whose first entry ends at the given offset.
    type Damage = fn(&mut Vec<u8>, usize);

    #[test]
    fn a_last_entry_with_missing_bytes_is_a_torn_write_zeroed_at_start() {
        let damages: [(&str, Damage); 4] = [
            ("torn-garbled", |b, last| {
                // what some devices leave of a page being written at a power cut: the last
                // entry's bytes after its head garbled, its newline there by chance
                let len = encode(&put("b")).len();
                b[last + 20..last + len - 1].fill(0x7f);
            }),
            ("torn-cut-short", |b, last| {
                // the last entry's second half, its newline included, never reached the disk
                let len = encode(&put("b")).len();
                b[last + len / 2..last + len].fill(0);
            }),
            ("torn-zeroed-start", |b, last| b[last..last + 12].fill(0)),
            ("torn-garbage-among-zeros", |b, last| {
                // the last entry's page lost, and stray bytes further on among the zeros
                let len = encode(&put("b")).len();
                b[last..last + len].fill(0);
                b[last + 5000..last + 5010].copy_from_slice(b"0123456789");
                b[last + 70_000..last + 70_003].copy_from_slice(b"{\n}");
            }),
        ];
        for (name, damage) in damages {
            let (dir, _, last) = damage_last_entry(name, damage);
            let (j, stats) = Journal::open(&dir, true, |_| {}).unwrap();
            assert!(stats.torn_tail, "{name}");
            j.wait(j.append(&put("c")).unwrap()).unwrap();
            drop(j);
            assert_eq!(ids(&dir).unwrap(), ["a", "c"], "{name}");
            let data = fs::read(dir.join(journal_name(1))).unwrap();
            let end = last + encode(&put("c")).len();
            assert!(
                data[end..].iter().all(|&b| b == 0),
                "{name}: the torn bytes are zeroed"
            );
        }
    }

    #[test]
    fn whole_lines_failing_their_checksum_are_refused_not_cut_off_as_torn() {
        // Every byte of the damaged lines is there and they still read as entries: no crash
        // did that. A letter of the last entry changed by hand, or every line's end converted
        // to CRLF (which zeroed every record, acknowledged ones included, when it was taken
        // for a torn write).
        let damages: [(&str, Damage, &str); 2] = [
            (
                "whole-edited",
                |b, last| {
                    let at = last + b[last..].windows(5).position(|w| w == br#""id":"#).unwrap();
                    assert_eq!(b[at + 5], b'"');
                    b[at + 6] ^= 0x20;
                },
                "1 line from there on is a whole entry failing its checksum",
            ),
            (
                "whole-crlf",
                |b, _| {
                    let end = b.iter().position(|&x| x == 0).unwrap();
                    let converted: Vec<u8> = b[..end]
                        .iter()
                        .flat_map(|&x| if x == b'\n' { vec![b'\r', x] } else { vec![x] })
                        .collect();
                    b.splice(..end, converted);
                },
                "2 lines from there on are whole entries failing their checksums",
            ),
        ];
        for (name, damage, says) in damages {
            let (dir, bytes, _) = damage_last_entry(name, damage);
            let err = ids(&dir).unwrap_err().to_string();
            assert!(err.contains(says), "{name}: {err}");
            assert!(err.contains("not torn by a crash"), "{name}: {err}");
            assert!(err.contains("left untouched"), "{name}: {err}");
            assert_eq!(
                fs::read(dir.join(journal_name(1))).unwrap(),
                bytes,
                "{name}"
            );
        }
    }

    #[test]
    fn damage_followed_by_a_valid_entry_refuses_and_says_how_many_follow() {
        let (dir, bytes, _) = damage_last_entry("followed", |b, _| {
            // the first entry damaged: the second, whole, follows it
            b[30] ^= 0x20;
        });
        let err = ids(&dir).unwrap_err().to_string();
        assert!(err.contains("damaged at byte offset 0"), "{err}");
        assert!(err.contains("1 valid entry follows the damage"), "{err}");
        assert!(
            err.contains("acknowledged ones included"),
            "says what cutting would drop: {err}"
        );
        assert_eq!(fs::read(dir.join(journal_name(1))).unwrap(), bytes);
    }

    #[test]
    fn a_damaged_line_end_that_joins_the_last_entry_to_the_one_before_refuses_the_start() {
        // "a", then "b" whose newline is damaged: "b" and the whole entry "c" read as one line
        // failing its checksum, but "c" was written whole after the damage.
        let dir = temp_dir("joined");
        write_ids(&dir, &["a", "b", "c"]);
        let path = dir.join(journal_name(1));
        let mut bytes = fs::read(&path).unwrap();
        let newline = encode(&put("a")).len() + encode(&put("b")).len() - 1;
        assert_eq!(bytes[newline], b'\n');
        bytes[newline] = b'x';
        fs::write(&path, &bytes).unwrap();
        let err = ids(&dir).unwrap_err().to_string();
        assert!(err.contains("1 valid entry follows the damage"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), bytes, "left untouched");
    }

    #[test]
    fn a_damaged_end_of_an_earlier_journal_or_of_a_snapshot_refuses_the_start() {
        // An earlier journal: its end was made durable before the next one was started.
        let dir = temp_dir("earlier");
        {
            let (j, _) = Journal::open(&dir, true, |_| {}).unwrap();
            j.wait(j.append(&put("a")).unwrap()).unwrap();
            j.rotate().unwrap().unwrap();
            j.wait(j.append(&put("b")).unwrap()).unwrap();
        }
        let first = dir.join(journal_name(1));
        write_after_entries(&first, b"0000 1 {");
        let err = ids(&dir).unwrap_err().to_string();
        assert!(
            err.contains(&journal_name(1)) && err.contains("0 valid entries follow"),
            "{err}"
        );
        // A snapshot: written whole before it was renamed into place.
        let dir = temp_dir("snapshot-end");
        {
            let (j, _) = Journal::open(&dir, true, |_| {}).unwrap();
            j.wait(j.append(&put("a")).unwrap()).unwrap();
            let g = j.rotate().unwrap().unwrap();
            j.write_snapshot(g, [put("a")].into_iter()).unwrap();
        }
        let snapshot = dir.join(snapshot_name(2));
        let mut bytes = fs::read(&snapshot).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0x20;
        fs::write(&snapshot, &bytes).unwrap();
        let err = ids(&dir).unwrap_err().to_string();
        assert!(
            err.contains(&snapshot_name(2)) && err.contains("checksum"),
            "{err}"
        );
        assert_eq!(fs::read(&snapshot).unwrap(), bytes, "left untouched");
    }

    /// Found by an audit: a state directory without its snapshot replayed its last journal
    /// alone and started on part of the records, silently. A missing snapshot, a journal
    /// missing after a snapshot or between two journals stop the start, naming the file, and
    /// nothing is changed; every set a compaction leaves, crashed or not, still opens.
    #[test]
    fn a_missing_snapshot_or_journal_stops_the_start() {
        let compacted = |name: &str| {
            let dir = temp_dir(name);
            {
                let (j, _) = Journal::open(&dir, true, |_| {}).unwrap();
                j.wait(j.append(&put("a")).unwrap()).unwrap();
                let g = j.rotate().unwrap().unwrap();
                j.wait(j.append(&put("b")).unwrap()).unwrap();
                j.write_snapshot(g, [put("a")].into_iter()).unwrap();
                j.wait(j.append(&put("c")).unwrap()).unwrap();
            }
            assert_eq!(ids(&dir).unwrap(), ["a", "b", "c"]);
            dir
        };
        let refused = |dir: &Path, file: String| {
            let before = fs::read_dir(dir).unwrap().count();
            let err = ids(dir).unwrap_err().to_string();
            assert!(
                err.contains(&format!("lacks {file}")) && err.contains("silently drop"),
                "{err}"
            );
            assert_eq!(
                fs::read_dir(dir).unwrap().count(),
                before,
                "nothing changed"
            );
        };
        let dir = compacted("missing-snapshot");
        fs::remove_file(dir.join(snapshot_name(2))).unwrap();
        refused(&dir, snapshot_name(2));
        let dir = compacted("missing-journal");
        fs::remove_file(dir.join(journal_name(2))).unwrap();
        refused(&dir, journal_name(2));
        // A gap between journals (journals 1 and 2 of a compaction that never wrote its
        // snapshot, the second renamed 3).
        let dir = temp_dir("journal-gap");
        {
            let (j, _) = Journal::open(&dir, true, |_| {}).unwrap();
            j.wait(j.append(&put("a")).unwrap()).unwrap();
            j.rotate().unwrap().unwrap();
            j.wait(j.append(&put("b")).unwrap()).unwrap();
        }
        assert_eq!(ids(&dir).unwrap(), ["a", "b"]);
        fs::rename(dir.join(journal_name(2)), dir.join(journal_name(3))).unwrap();
        refused(&dir, journal_name(2));
        fs::remove_file(dir.join(journal_name(1))).unwrap();
        refused(&dir, snapshot_name(3));
    }

    #[test]
    fn a_second_process_on_the_same_directory_is_refused() {
        let dir = temp_dir("lock");
        let (j, _) = Journal::open(&dir, true, |_| {}).unwrap();
        // flock locks belong to the open file description: a second open conflicts even in
        // the same process, as another process's would.
        let err = Journal::open(&dir, true, |_| {}).err().unwrap().to_string();
        assert!(
            err.contains("in use by another mec-plugin process"),
            "{err}"
        );
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(j);
        assert!(
            Journal::open(&dir, true, |_| {}).is_ok(),
            "free again once closed"
        );
    }

    #[test]
    fn compaction_replaces_the_journal_by_a_snapshot() {
        let dir = temp_dir("compact");
        {
            let (j, _) = Journal::open(&dir, true, |_| {}).unwrap();
            for id in ["a", "b"] {
                j.wait(j.append(&put(id)).unwrap()).unwrap();
            }
            let g = j.rotate().unwrap().unwrap();
            assert_eq!(j.rotate().unwrap(), None, "one compaction at a time");
            j.wait(j.append(&put("c")).unwrap()).unwrap();
            j.write_snapshot(g, [put("a"), put("b")].into_iter())
                .unwrap();
        }
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n == &journal_name(1)),
            "old journal removed: {names:?}"
        );
        assert_eq!(ids(&dir).unwrap(), ["a", "b", "c"]);
    }

    #[test]
    fn a_compaction_interrupted_before_its_rename_loses_nothing() {
        let dir = temp_dir("interrupted");
        {
            let (j, _) = Journal::open(&dir, true, |_| {}).unwrap();
            j.wait(j.append(&put("a")).unwrap()).unwrap();
            j.rotate().unwrap().unwrap();
            j.wait(j.append(&put("b")).unwrap()).unwrap();
        }
        // the crash left a half-written snapshot behind
        fs::write(dir.join(format!("{}.tmp", snapshot_name(2))), "garbage").unwrap();
        assert_eq!(ids(&dir).unwrap(), ["a", "b"]);
        assert!(!dir.join(format!("{}.tmp", snapshot_name(2))).exists());
    }

    #[test]
    fn a_compaction_interrupted_after_its_rename_loses_nothing() {
        let dir = temp_dir("renamed");
        {
            let (j, _) = Journal::open(&dir, true, |_| {}).unwrap();
            j.wait(j.append(&put("a")).unwrap()).unwrap();
            j.rotate().unwrap().unwrap();
            j.wait(j.append(&put("b")).unwrap()).unwrap();
        }
        // the snapshot was renamed but the old journal not yet removed
        let mut snap = File::create(dir.join(snapshot_name(2))).unwrap();
        snap.write_all(encode(&put("a")).as_bytes()).unwrap();
        drop(snap);
        assert_eq!(ids(&dir).unwrap(), ["a", "b"]);
        assert!(
            !dir.join(journal_name(1)).exists(),
            "the replaced journal is cleaned up"
        );
    }

    #[test]
    fn a_compaction_that_runs_out_of_space_leaves_no_partial_file_and_is_retried_later() {
        let dir = temp_dir("snapshot-full");
        let (j, _) = Journal::open(&dir, true, |_| {}).unwrap();
        for id in ["a", "b"] {
            j.wait(j.append(&put(id)).unwrap()).unwrap();
        }
        let g = j.rotate().unwrap().unwrap();
        FAIL_SNAPSHOT_AFTER.with(|n| n.set(10));
        let err = j
            .write_snapshot(g, [put("a"), put("b")].into_iter())
            .unwrap_err();
        FAIL_SNAPSHOT_AFTER.with(|n| n.set(0));
        assert!(err.is_no_space(), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&dir.display().to_string()) && text.contains("ENOSPC"),
            "{text}"
        );
        let tmp: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(tmp.is_empty(), "the partial snapshot is removed: {tmp:?}");
        assert!(!j.wants_compaction(), "not again before its back-off");
        j.writer().retry_compaction_at = Some(std::time::Instant::now());
        assert!(
            j.wants_compaction(),
            "again after it, however small the journal"
        );
        let g = j.rotate().unwrap().unwrap();
        j.write_snapshot(g, [put("a"), put("b")].into_iter())
            .unwrap();
        assert!(!j.wants_compaction(), "done: back to the size bound");
        drop(j);
        assert_eq!(ids(&dir).unwrap(), ["a", "b"]);
    }

    #[test]
    fn a_start_on_a_full_state_directory_goes_on_and_writes_resume_once_it_has_room() {
        let dir = temp_dir("start-full");
        write_ids(&dir, &["a"]);
        // No zeros ahead of the entries (a journal that outgrew them): room is asked for at
        // start, and the disk has none.
        let path = dir.join(journal_name(1));
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(encode(&put("a")).len() as u64).unwrap();
        drop(file);
        FAIL_APPEND_NO_SPACE.with(|fail| fail.set(true));
        let opened = Journal::open(&dir, true, |_| {});
        let (j, _) = opened.expect("the start goes on: reads need no room");
        let reason = j.no_space().expect("full, said by health");
        assert!(reason.contains("ENOSPC"), "{reason}");
        assert!(j.append(&put("b")).unwrap_err().is_no_space());
        FAIL_APPEND_NO_SPACE.with(|fail| fail.set(false));
        assert_eq!(j.no_space(), None, "room again");
        j.wait(j.append(&put("b")).unwrap()).unwrap();
        drop(j);
        assert_eq!(ids(&dir).unwrap(), ["a", "b"]);
    }

    #[test]
    fn a_failed_fsync_at_the_start_of_a_compaction_stops_the_journal() {
        let dir = temp_dir("rotate-fails");
        let (j, _) = Journal::open(&dir, true, |_| {}).unwrap();
        j.wait(j.append(&put("a")).unwrap()).unwrap();
        let b = j.append(&put("b")).unwrap();
        // The rotation's fsync (on this thread) fails; the flusher's own would succeed.
        FAIL_NEXT_SYNC.with(|fail| fail.set(true));
        let err = j.rotate().unwrap_err().to_string();
        assert!(err.contains("injected fsync failure"), "{err}");
        // What that fsync should have made durable is never acknowledged, nor anything later.
        let err = j.wait(b).unwrap_err().to_string();
        assert!(err.contains("injected fsync failure"), "{err}");
        let err = j.append(&put("c")).unwrap_err();
        assert!(err.to_string().contains("fsync"), "{err}");
    }

    #[test]
    fn a_failed_directory_fsync_at_the_start_of_a_compaction_stops_the_journal() {
        let dir = temp_dir("rotate-dir-fails");
        let (j, _) = Journal::open(&dir, true, |_| {}).unwrap();
        j.wait(j.append(&put("a")).unwrap()).unwrap();
        FAIL_NEXT_DIR_SYNC.with(|fail| fail.set(true));
        let err = j.rotate().unwrap_err().to_string();
        assert!(err.contains("injected directory fsync failure"), "{err}");
        // The next journal may exist on disk: nothing more is written to this one (a torn
        // entry there would no longer be at the end of the last journal).
        let err = j.append(&put("b")).unwrap_err();
        assert!(err.to_string().contains("directory fsync"), "{err}");
        drop(j);
        let mut ids = Vec::new();
        let (_, stats) = Journal::open(&dir, true, |e| {
            if let Entry::Put(r) = e {
                ids.push(r.id.to_string());
            }
        })
        .unwrap();
        assert_eq!(ids, ["a"], "{stats:?}");
    }

    #[test]
    fn a_deleted_journal_file_stops_the_journal_and_acknowledges_nothing_more() {
        let dir = temp_dir("journal-deleted");
        let (j, _) = Journal::open(&dir, true, |_| {}).unwrap();
        j.wait(j.append(&put("a")).unwrap()).unwrap();
        assert_eq!(j.failure(), None);
        fs::remove_dir_all(&dir).unwrap();
        // Written and fsynced into a file the next start will not find: not acknowledged.
        let b = j.append(&put("b")).unwrap();
        let err = j.wait(b).unwrap_err().to_string();
        let file = dir.join(journal_name(1));
        assert!(
            err.contains(&format!("the journal file {} was deleted", file.display())),
            "{err}"
        );
        assert!(j.failure().unwrap().contains("was deleted"));
        let err = j.append(&put("c")).unwrap_err().to_string();
        assert!(err.contains("was deleted"), "{err}");
    }

    #[test]
    fn a_deleted_journal_file_is_seen_by_failure_without_a_write() {
        let dir = temp_dir("journal-deleted-idle");
        let (j, _) = Journal::open(&dir, true, |_| {}).unwrap();
        j.wait(j.append(&put("a")).unwrap()).unwrap();
        fs::remove_file(dir.join(journal_name(1))).unwrap();
        // What `/healthz` and the metrics read.
        let why = j.failure().expect("stopped");
        assert!(
            why.contains("journal file") && why.contains("restart"),
            "{why}"
        );
        assert!(j.stopped().is_some());
    }

    #[test]
    fn a_deleted_journal_file_stops_a_journal_without_fsync_too() {
        let dir = temp_dir("journal-deleted-nofsync");
        let (j, _) = Journal::open(&dir, false, |_| {}).unwrap();
        j.wait(j.append(&put("a")).unwrap()).unwrap();
        fs::remove_file(dir.join(journal_name(1))).unwrap();
        let err = j.wait(j.append(&put("b")).unwrap()).unwrap_err();
        assert!(err.to_string().contains("was deleted"), "{err}");
    }

    #[test]
    fn a_deleted_snapshot_stops_the_journal() {
        let dir = temp_dir("snapshot-deleted");
        let (j, _) = Journal::open(&dir, true, |_| {}).unwrap();
        j.wait(j.append(&put("a")).unwrap()).unwrap();
        let g = j.rotate().unwrap().unwrap();
        j.write_snapshot(g, [put("a")].into_iter()).unwrap();
        assert_eq!(j.failure(), None, "the replaced generation is no deletion");
        fs::remove_file(dir.join(snapshot_name(g))).unwrap();
        let err = j
            .wait(j.append(&put("b")).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("the snapshot file"), "{err}");
        drop(j);
        // The same, for a snapshot found at start-up.
        let dir = temp_dir("snapshot-deleted-at-start");
        {
            let (j, _) = Journal::open(&dir, true, |_| {}).unwrap();
            let g = j.rotate().unwrap().unwrap();
            j.write_snapshot(g, [put("a")].into_iter()).unwrap();
        }
        let (j, _) = Journal::open(&dir, true, |_| {}).unwrap();
        assert_eq!(j.failure(), None);
        fs::remove_file(dir.join(snapshot_name(2))).unwrap();
        assert!(j.failure().unwrap().contains("snapshot"));
    }

    #[test]
    fn compactions_under_concurrent_writers_are_not_taken_for_a_deletion() {
        let dir = temp_dir("compact-not-deleted");
        let (j, _) = Journal::open(&dir, true, |_| {}).unwrap();
        let j = Arc::new(j);
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let j = j.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let seq = j.append(&put(&format!("{t}-{i}"))).unwrap();
                        j.wait(seq).unwrap();
                    }
                })
            })
            .collect();
        for _ in 0..20 {
            if let Some(g) = j.rotate().unwrap() {
                j.write_snapshot(g, [put("s")].into_iter()).unwrap();
            }
            assert_eq!(j.failure(), None);
        }
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(j.failure(), None);
    }

    #[test]
    fn group_commit_makes_every_waiter_durable() {
        let dir = temp_dir("group");
        let (j, _) = Journal::open(&dir, true, |_| {}).unwrap();
        let j = Arc::new(j);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let j = j.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let seq = j.append(&put(&format!("{t}-{i}"))).unwrap();
                        j.wait(seq).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(j);
        assert_eq!(ids(&dir).unwrap().len(), 400);
    }
}
