//! Moving a deployment's state between stores: `--export-state` writes every record as one
//! JSON line (the content of the journal's `put` entry, in creation order) and
//! `--import-state` checks a whole file of such lines, then inserts it into an empty store.
//!
//! Both open the state as a start does, so the state directory's `LOCK` makes them fail while
//! the service runs. An import writes nothing unless every line checks out and the target
//! holds no record; into a journal it writes all of them or, interrupted, none (one snapshot
//! renamed into place). Records are imported as they were: a PENDING one is rolled back by the
//! next start's recovery, exactly as after a crash; a DELETING one is removed by the
//! reconciler.
//!
//! With `[store] kind = "etcd"` the state is the configured prefix: an export reads it
//! (linearizable, at one revision; the instances may run); an import refuses a prefix that
//! holds records, a leader key (instances running) or the marker of an import that did not
//! finish, then writes in creation order in bounded transactions, each guarded by "no leader
//! key", the first putting the marker and the last deleting it
//! ([`crate::etcd_store::import`]): interrupted, it leaves the marker, on which no instance
//! leads.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::de::IgnoredAny;

use crate::config::{Config, StoreKind};
use crate::etcd::Client;
use crate::etcd_store::{ImportError, etcd_options};
use crate::store::{RecordEntry, Store, StoreError};

/// Bound on each etcd call of an export or import.
const ETCD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The fields of a line: those of [`RecordEntry`]; any other is refused (a misspelt optional
/// field would otherwise be dropped without a word).
const FIELDS: [&str; 11] = [
    "id", "region", "request", "steps", "applied", "status", "detail", "created", "modified",
    "platform", "kept",
];

/// Why an export or import did nothing (or, for [`MigrateError::Write`], left a partial file).
#[derive(Debug)]
pub enum MigrateError {
    /// The state could not be opened (in use by the running service, damaged) or written.
    Store(StoreError),
    /// The state directory to export does not exist.
    NoState(PathBuf),
    /// The state directory is on a read-only file system: an import cannot write it.
    ReadOnly(PathBuf),
    /// A read-only state directory could not be copied to `copy` for its export.
    Copy {
        dir: PathBuf,
        copy: PathBuf,
        error: io::Error,
    },
    /// The file could not be read.
    Read { file: String, error: io::Error },
    /// The export file could not be written (it may hold part of the records).
    Write { file: String, error: io::Error },
    /// A line of the import is wrong; nothing was written.
    BadLine {
        file: String,
        line: usize,
        reason: String,
    },
    /// More records than `[server] max_requests`; nothing was written.
    TooMany {
        file: String,
        records: usize,
        max: usize,
    },
    /// The target store already holds records; nothing was written.
    NotEmpty { dir: PathBuf, records: usize },
    /// Writing the records into the state directory failed: it holds none of them, or all
    /// (all or nothing: [`Store::insert_entries`]).
    NotWritten { dir: PathBuf, error: StoreError },
    /// etcd could not be used (its options, a call); nothing was written.
    Etcd { reason: String },
    /// The etcd prefix already holds records; nothing was written.
    PrefixNotEmpty { prefix: String, records: i64 },
    /// An earlier import into the etcd prefix did not finish (its marker is there, with
    /// part of its records); nothing was written.
    ImportUnfinished { prefix: String, marker: Vec<u8> },
    /// An import into etcd stopped after `written` records: the prefix holds them and the
    /// import marker, on which no instance leads.
    PartialImport {
        prefix: String,
        written: usize,
        reason: String,
    },
    /// Instances run on the etcd prefix (its leader key exists); nothing was written.
    Running { prefix: String, leader: String },
    /// A record is larger than one etcd transaction takes; nothing was written.
    TooLargeForEtcd { id: String, bytes: usize },
}

impl MigrateError {
    /// The process's exit code: 2 when the input is refused (a bad file, a store that is not
    /// empty), 1 when the state or a file could not be used.
    pub fn exit_code(&self) -> u8 {
        match self {
            MigrateError::BadLine { .. }
            | MigrateError::TooMany { .. }
            | MigrateError::NotEmpty { .. }
            | MigrateError::PrefixNotEmpty { .. }
            | MigrateError::ImportUnfinished { .. }
            | MigrateError::TooLargeForEtcd { .. } => 2,
            MigrateError::Store(_)
            | MigrateError::Etcd { .. }
            | MigrateError::Running { .. }
            | MigrateError::NotWritten { .. }
            | MigrateError::PartialImport { .. }
            | MigrateError::NoState(_)
            | MigrateError::ReadOnly(_)
            | MigrateError::Copy { .. }
            | MigrateError::Read { .. }
            | MigrateError::Write { .. } => 1,
        }
    }
}

impl fmt::Display for MigrateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The service is named only when it may be the cause: a damaged or unreadable
            // state is not mended by stopping anything.
            MigrateError::Store(e) if e.is_locked() => write!(
                f,
                "cannot use the state (an export or import needs the service stopped): {e}"
            ),
            MigrateError::Store(e) => write!(f, "cannot use the state: {e}"),
            MigrateError::NoState(dir) => write!(
                f,
                "state directory {} does not exist: nothing to export (check [server] \
                 state_dir or --state-dir)",
                dir.display()
            ),
            MigrateError::ReadOnly(dir) => write!(
                f,
                "state directory {} is on a read-only file system: an import writes it; \
                 nothing was imported (import into a writable state_dir)",
                dir.display()
            ),
            MigrateError::Copy { dir, copy, error } => write!(
                f,
                "cannot copy the read-only state directory {} to {} to export it: {error} \
                 (point TMPDIR at a file system with room)",
                dir.display(),
                copy.display()
            ),
            MigrateError::Read { file, error } => write!(f, "cannot read {file}: {error}"),
            MigrateError::Write { file, error } => {
                write!(f, "cannot write {file} (it may be incomplete): {error}")
            }
            MigrateError::BadLine { file, line, reason } => {
                write!(f, "{file}: line {line}: {reason}; nothing was imported")
            }
            MigrateError::TooMany { file, records, max } => write!(
                f,
                "{file} holds {records} records, more than [server] max_requests ({max}); \
                 nothing was imported"
            ),
            MigrateError::NotEmpty { dir, records } => write!(
                f,
                "state directory {} already holds {records} record(s): an import never \
                 overwrites a store; nothing was imported (import into an empty state_dir)",
                dir.display()
            ),
            MigrateError::NotWritten { dir, error } => write!(
                f,
                "writing the records into state directory {} failed: {error}; an import is \
                 all or nothing: the state holds none of them, or all of them if the failure \
                 came once they were in place (--export-state shows which)",
                dir.display()
            ),
            MigrateError::Etcd { reason } => {
                write!(f, "{reason}; nothing was imported or exported")
            }
            MigrateError::ImportUnfinished { prefix, marker } => write!(
                f,
                "{}; nothing was imported",
                crate::etcd_store::unfinished_import(prefix, marker)
            ),
            MigrateError::PartialImport {
                prefix,
                written,
                reason,
            } => write!(
                f,
                "{reason}; {written} record(s) were imported before: etcd prefix {prefix} \
                 holds a partial import, on which no instance leads ({prefix}/importing \
                 stays). Start over: delete it (etcdctl del --prefix {prefix}/records/ && \
                 etcdctl del {prefix}/importing) and import again"
            ),
            MigrateError::PrefixNotEmpty { prefix, records } => write!(
                f,
                "etcd prefix {prefix} already holds {records} record(s): an import never \
                 overwrites a store; nothing was imported (import into an empty prefix)"
            ),
            MigrateError::TooLargeForEtcd { id, bytes } => write!(
                f,
                "record {id} takes {bytes} bytes in etcd, more than one transaction takes \
                 ({} bytes); nothing was imported (keep it in a journal store, or delete it \
                 there before exporting)",
                crate::etcd_store::MAX_TXN_BYTES
            ),
            MigrateError::Running { prefix, leader } => write!(
                f,
                "instances are running on etcd prefix {prefix} (the leader is {leader}): stop \
                 every instance before an import; nothing was imported"
            ),
        }
    }
}

impl std::error::Error for MigrateError {}

impl From<StoreError> for MigrateError {
    fn from(e: StoreError) -> Self {
        MigrateError::Store(e)
    }
}

/// How a file argument is shown in messages: `-` is the standard `stream`.
fn shown(path: &Path, stream: &str) -> String {
    if path == Path::new("-") {
        format!("standard {stream}")
    } else {
        path.display().to_string()
    }
}

/// Writes every record of the configured state to `to` (`-`: standard output); returns how
/// many.
pub fn export(config: &Config, to: &Path) -> Result<usize, MigrateError> {
    let dir = &config.server.state_dir;
    let journal = config.store.kind == StoreKind::Journal;
    if journal && !dir.is_dir() {
        return Err(MigrateError::NoState(dir.clone()));
    }
    // A state directory on a read-only file system: its LOCK cannot be created, and nothing
    // can be writing the state, so it is exported from a copy (opening a store takes its lock
    // and may repair a torn tail). Declared before the store, so removed after it.
    let copy = if journal && on_read_only_file_system(dir) {
        Some(StateCopy::of(dir)?)
    } else {
        None
    };
    let store = match (config.store.kind, &copy) {
        (StoreKind::Etcd, _) => {
            let client = etcd_client(config)?;
            Store::read_etcd(&client, &config.store.prefix).map_err(|e| MigrateError::Etcd {
                reason: format!("cannot read etcd prefix {}: {e}", config.store.prefix),
            })?
        }
        (StoreKind::Journal, Some(copy)) => {
            log::info!(
                "{} is on a read-only file system, so nothing can write it: exported from a \
                 copy in {}, without its lock",
                dir.display(),
                copy.dir.display()
            );
            Store::open(&copy.dir, false)?.0
        }
        (StoreKind::Journal, None) => Store::open(dir, config.server.fsync)?.0,
    };
    let failed = |error| MigrateError::Write {
        file: shown(to, "output"),
        error,
    };
    if to == Path::new("-") {
        let mut out = io::stdout().lock();
        let n = write_records(&store, &mut out).map_err(failed)?;
        out.flush().map_err(failed)?;
        Ok(n)
    } else {
        let file = File::create(to).map_err(failed)?;
        let mut out = BufWriter::new(file);
        let n = write_records(&store, &mut out).map_err(failed)?;
        let file = out.into_inner().map_err(|e| failed(e.into_error()))?;
        // Only a regular file is forced to disk: a pipe, a FIFO, /dev/stdout or /dev/null
        // answers fsync with EINVAL once every line was written.
        if file.metadata().map_err(failed)?.is_file() {
            file.sync_all().map_err(failed)?;
        }
        Ok(n)
    }
}

/// Whether `dir` is on a file system mounted read-only (`statvfs`'s `ST_RDONLY`); `false`
/// when that cannot be told (`dir` missing).
fn on_read_only_file_system(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statvfs(3) reads the NUL-terminated path and fills the zeroed struct it is given.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    rc == 0 && stat.f_flag & libc::ST_RDONLY != 0
}

/// A private copy (mode 0700, under the temporary directory) of the files of a state directory
/// that cannot be written, for a store to be opened on; removed when dropped.
struct StateCopy {
    dir: PathBuf,
}

impl StateCopy {
    /// Copies every regular file of `from`.
    fn of(from: &Path) -> Result<StateCopy, MigrateError> {
        use std::os::unix::fs::DirBuilderExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("mec-plugin-export-{}-{nanos}", std::process::id()));
        let failed = |error| MigrateError::Copy {
            dir: from.to_path_buf(),
            copy: dir.clone(),
            error,
        };
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(failed)?;
        let copy = StateCopy { dir: dir.clone() };
        for entry in std::fs::read_dir(from).map_err(failed)? {
            let entry = entry.map_err(failed)?;
            if entry.file_type().map_err(failed)?.is_file() {
                std::fs::copy(entry.path(), copy.dir.join(entry.file_name())).map_err(failed)?;
            }
        }
        Ok(copy)
    }
}

impl Drop for StateCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes the records of `store`, in creation order, one JSON line each.
pub fn write_records(store: &Store, out: &mut impl Write) -> io::Result<usize> {
    let records = store.list(None);
    for record in &records {
        // Through serde_json's `Vec` writer, as the journal and the etcd store write records:
        // one copy of the serialising code, not one per output type (issue 11 item 8).
        let mut line = serde_json::to_vec(&record.to_record_entry())?;
        line.push(b'\n');
        out.write_all(&line)?;
    }
    Ok(records.len())
}

/// Checks every line of `from` (`-`: standard input), then inserts them all, durably, into the
/// configured state, which must hold no record; returns how many.
pub fn import(config: &Config, from: &Path) -> Result<usize, MigrateError> {
    let file = shown(from, "input");
    let mut bytes = Vec::new();
    let read = if from == Path::new("-") {
        io::stdin().lock().read_to_end(&mut bytes)
    } else {
        File::open(from).and_then(|mut f| f.read_to_end(&mut bytes))
    };
    read.map_err(|error| MigrateError::Read {
        file: file.clone(),
        error,
    })?;
    let regions: HashSet<&str> = config.regions.iter().map(|r| &*r.id).collect();
    let entries = parse(&bytes, &regions).map_err(|(line, reason)| MigrateError::BadLine {
        file: file.clone(),
        line,
        reason,
    })?;
    let max = config.server.max_requests;
    if entries.len() > max {
        return Err(MigrateError::TooMany {
            file,
            records: entries.len(),
            max,
        });
    }
    if config.store.kind == StoreKind::Etcd {
        return import_etcd(config, &entries);
    }
    let dir = &config.server.state_dir;
    if on_read_only_file_system(dir) {
        return Err(MigrateError::ReadOnly(dir.clone()));
    }
    let (store, _) = Store::open(dir, config.server.fsync)?;
    if !store.is_empty() {
        return Err(MigrateError::NotEmpty {
            dir: dir.clone(),
            records: store.len(),
        });
    }
    store
        .insert_entries(entries)
        .map_err(|error| MigrateError::NotWritten {
            dir: dir.clone(),
            error,
        })
}

/// The etcd client of `[store]`.
fn etcd_client(config: &Config) -> Result<Client, MigrateError> {
    etcd_options(&config.store, ETCD_TIMEOUT)
        .and_then(Client::new)
        .map_err(|reason| MigrateError::Etcd { reason })
}

/// Writes the checked `entries` under the configured etcd prefix.
fn import_etcd(config: &Config, entries: &[RecordEntry<'_>]) -> Result<usize, MigrateError> {
    let client = etcd_client(config)?;
    let prefix = &config.store.prefix;
    let records = entries.iter().map(|entry| {
        let json = serde_json::to_vec(entry).expect("a record serialises");
        (entry.id.to_string(), json)
    });
    crate::etcd_store::import(&client, prefix, records).map_err(|e| match e {
        ImportError::Running { leader } => MigrateError::Running {
            prefix: prefix.clone(),
            leader,
        },
        ImportError::NotEmpty { records } => MigrateError::PrefixNotEmpty {
            prefix: prefix.clone(),
            records,
        },
        ImportError::Unfinished { marker } => MigrateError::ImportUnfinished {
            prefix: prefix.clone(),
            marker,
        },
        ImportError::Etcd { written: 0, error } => MigrateError::Etcd {
            reason: format!("etcd: {error}"),
        },
        ImportError::Interrupted { written: 0, reason } => MigrateError::Etcd { reason },
        ImportError::Etcd { written, error } => MigrateError::PartialImport {
            prefix: prefix.clone(),
            written,
            reason: format!("etcd: {error}"),
        },
        ImportError::Interrupted { written, reason } => MigrateError::PartialImport {
            prefix: prefix.clone(),
            written,
            reason,
        },
        ImportError::TooLarge { id, bytes } => MigrateError::TooLargeForEtcd { id, bytes },
    })
}

/// Parses and checks every line of an import; on the first bad one, its number (from 1) and
/// what is wrong with it. Blank lines are skipped.
pub(crate) fn parse<'a>(
    bytes: &'a [u8],
    regions: &HashSet<&str>,
) -> Result<Vec<RecordEntry<'a>>, (usize, String)> {
    let mut entries = Vec::new();
    let mut ids = HashSet::new();
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        let n = i + 1;
        let line = std::str::from_utf8(line).map_err(|e| (n, format!("not UTF-8: {e}")))?;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let entry = parse_line(line, regions).map_err(|reason| (n, reason))?;
        if !ids.insert(entry.id.clone()) {
            return Err((
                n,
                format!("duplicate id '{}' (seen on an earlier line)", entry.id),
            ));
        }
        entries.push(entry);
    }
    Ok(entries)
}

/// Parses and checks one line (the duplicate ids aside).
fn parse_line<'a>(line: &'a str, regions: &HashSet<&str>) -> Result<RecordEntry<'a>, String> {
    let fields: BTreeMap<Cow<str>, IgnoredAny> =
        serde_json::from_slice(line.as_bytes()).map_err(|e| json_error(&e))?;
    if let Some(unknown) = fields.keys().find(|k| !FIELDS.contains(&k.as_ref())) {
        return Err(format!(
            "unknown field '{unknown}' (the fields are {})",
            FIELDS.join(", ")
        ));
    }
    let entry: RecordEntry = serde_json::from_slice(line.as_bytes()).map_err(|e| json_error(&e))?;
    check(&entry, regions)?;
    Ok(entry)
}

/// What is wrong with a line's JSON, without serde's position in the line (always line 1).
fn json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" at line ") {
        Some(at) => &text[..at],
        None => &text,
    };
    match e.classify() {
        serde_json::error::Category::Data => format!("invalid record: {text}"),
        _ => format!("malformed JSON at column {}: {text}", e.column()),
    }
}

/// Longest id an import takes (the plugin's own are UUIDs of 36 characters).
const MAX_ID: usize = 256;

/// The checks serde does not do: what the store relies on, and the region.
fn check(entry: &RecordEntry, regions: &HashSet<&str>) -> Result<(), String> {
    if entry.id.is_empty() {
        return Err("empty id".into());
    }
    // An id is a segment of the request's URL path, sent as it is (found by an audit: an id
    // with a space or a '/' was imported and could then be neither read nor deleted).
    let unreserved = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
    if entry.id.len() > MAX_ID || !entry.id.chars().all(unreserved) {
        let shown: String = entry.id.chars().take(64).collect();
        return Err(format!(
            "record '{}{}': an id is at most {MAX_ID} letters, digits, '-', '.', '_' or '~' \
             (the plugin's own ids are UUIDs): it is the request's URL path",
            shown.escape_debug(),
            if shown.len() < entry.id.len() {
                "..."
            } else {
                ""
            }
        ));
    }
    if !regions.contains(&*entry.region) {
        return Err(format!(
            "record '{}': region '{}' is not in the configuration (its rules could not be \
             removed; add the region first)",
            entry.id, entry.region
        ));
    }
    if !entry.request.get().starts_with('{') {
        return Err(format!(
            "record '{}': request is not a JSON object",
            entry.id
        ));
    }
    // What a read of the request needs (found by an audit: any object was taken, and its
    // views broke: keys written twice, a listing cut, a 500): a creation request, with only
    // the keys the plugin stores of one (as its model writes them back; not `RegionId`,
    // `status` and the other keys its view writes itself).
    let request = crate::model::read_stored(entry.request.get()).map_err(|e| {
        format!(
            "record '{}': request is not a creation request: {e}",
            entry.id
        )
    })?;
    let stored = serde_json::to_string(&request).map_err(|e| json_error(&e))?;
    let keys = |json: &str| -> Result<BTreeMap<String, IgnoredAny>, String> {
        serde_json::from_str(json).map_err(|e| json_error(&e))
    };
    let kept = keys(&stored)?;
    if let Some(key) = keys(entry.request.get())?
        .into_keys()
        .find(|k| !kept.contains_key(k))
    {
        return Err(format!(
            "record '{}': request has '{key}', which a stored request is kept without (the \
             plugin writes it itself, or it is null): remove it",
            entry.id
        ));
    }
    if entry.applied > entry.steps.len() {
        return Err(format!(
            "record '{}': applied ({}) is more than its steps ({})",
            entry.id,
            entry.applied,
            entry.steps.len()
        ));
    }
    if let Some(k) = entry
        .kept
        .iter()
        .flatten()
        .find(|&&k| k >= entry.steps.len())
    {
        return Err(format!(
            "record '{}': kept names step {k}, but it has {} steps",
            entry.id,
            entry.steps.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"id":"a","region":"2","request":{"appLatency":{"timeUnit":"ms","latency":1}},"steps":[{"label":"DNS rule","target":"/dns_rules/d","json":{"x":1}},{"label":"raw","target":"/t","body":"not json"}],"applied":2,"status":"created","created":1,"modified":2,"platform":"http://mep","kept":[1]}"#;

    fn regions() -> HashSet<&'static str> {
        ["2", "3"].into_iter().collect()
    }

    /// The error of parsing `text`: its line number and reason.
    fn refused(text: &str) -> (usize, String) {
        match parse(text.as_bytes(), &regions()) {
            Ok(entries) => panic!("accepted {} entries of {text}", entries.len()),
            Err(e) => e,
        }
    }

    /// `GOOD` with `from` replaced by `to`.
    fn good_with(from: &str, to: &str) -> String {
        assert!(GOOD.contains(from), "{from}");
        GOOD.replacen(from, to, 1)
    }

    #[test]
    fn good_lines_parse_in_order_and_blank_lines_are_skipped() {
        let b = GOOD
            .replace(r#""id":"a""#, r#""id":"b""#)
            .replace(r#""region":"2""#, r#""region":"3""#);
        let text = format!("{GOOD}\n\n{b}\r\n");
        let entries = parse(text.as_bytes(), &regions()).unwrap();
        let ids: Vec<&str> = entries.iter().map(|e| &*e.id).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(entries[0].steps.len(), 2);
        assert_eq!(entries[0].kept.as_deref(), Some(&[1][..]));
        assert!(parse(b"", &regions()).unwrap().is_empty());
    }

    #[test]
    fn each_kind_of_bad_line_is_refused_with_its_number_and_what_is_wrong() {
        let cases = [
            ("{\"id\":".to_string(), "malformed JSON at column 6"),
            ("[1, 2]".to_string(), "invalid record"),
            (good_with(r#""region":"2","#, ""), "missing field `region`"),
            (
                good_with(r#""status":"created""#, r#""status":"deleted""#),
                "unknown variant `deleted`",
            ),
            (
                good_with(r#""applied":2"#, r#""applied":3"#),
                "record 'a': applied (3) is more than its steps (2)",
            ),
            (
                good_with(r#""applied":2"#, r#""applied":-1"#),
                "invalid record",
            ),
            (
                good_with(r#""region":"2""#, r#""region":"9""#),
                "region '9' is not in the configuration",
            ),
            (good_with(r#""id":"a""#, r#""id":"""#), "empty id"),
            (
                good_with(r#""kept":[1]"#, r#""kept":[2]"#),
                "kept names step 2",
            ),
            (
                good_with(
                    r#""request":{"appLatency":{"timeUnit":"ms","latency":1}}"#,
                    r#""request":[1]"#,
                ),
                "request is not a JSON object",
            ),
            (
                good_with(r#""platform""#, r#""platfrom""#),
                "unknown field 'platfrom'",
            ),
            (GOOD.to_string(), "duplicate id 'a'"),
            // Found by an audit: these were imported, and broke the reads.
            (
                good_with(
                    r#""request":{"appLatency":{"timeUnit":"ms","latency":1}}"#,
                    r#""request":{"foo":1}"#,
                ),
                "request is not a creation request: unknown field `foo`",
            ),
            (
                good_with(
                    r#""request":{"appLatency":{"timeUnit":"ms","latency":1}}"#,
                    r#""request":{"RegionId":"3","status":"BOGUS"}"#,
                ),
                "request has 'RegionId', which a stored request is kept without (the plugin \
                 writes it itself",
            ),
            (
                good_with(
                    r#""request":{"appLatency":{"timeUnit":"ms","latency":1}}"#,
                    r#""request":{"requestId":"x","appLatency":null}"#,
                ),
                "request has 'appLatency', which a stored request is kept without",
            ),
            (
                good_with(r#""id":"a""#, r#""id":"a b""#),
                "record 'a b': an id is at most 256 letters, digits",
            ),
            (
                good_with(r#""id":"a""#, r#""id":"a/b""#),
                "record 'a/b': an id",
            ),
            (
                good_with(r#""id":"a""#, r#""id":"a\nb""#),
                "record 'a\\nb': an id",
            ),
            (
                good_with(r#""id":"a""#, &format!(r#""id":"{}""#, "x".repeat(257))),
                &format!("record '{}...': an id", "x".repeat(64)),
            ),
        ];
        let at_most = good_with(r#""id":"a""#, &format!(r#""id":"{}""#, "x".repeat(256)));
        assert_eq!(parse(at_most.as_bytes(), &regions()).unwrap().len(), 1);
        for (bad, reason) in cases {
            let text = format!("{GOOD}\n\n{bad}\n");
            let (line, why) = refused(&text);
            assert_eq!(line, 3, "{bad}: {why}");
            assert!(why.contains(reason), "{bad}: '{why}' lacks '{reason}'");
        }
        let mut bytes = format!("{GOOD}\n").into_bytes();
        bytes.extend_from_slice(b"\xff\n");
        let (line, why) = parse(&bytes, &regions()).map(|_| ()).unwrap_err();
        assert_eq!((line, why.starts_with("not UTF-8")), (2, true), "{why}");
    }

    /// Review finding M1: an import killed halfway left part of its records in the journal,
    /// which then started on them without a word. Made to fail halfway whichever way it
    /// writes (its 25th journal entry, or past half of a snapshot's bytes), it leaves none.
    #[test]
    fn an_import_into_the_journal_that_fails_halfway_leaves_no_record() {
        let dir = std::env::temp_dir().join(format!("mec-migrate-halfway-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let text: String = (0..50)
            .map(|n| good_with(r#""id":"a""#, &format!(r#""id":"i{n:02}""#)) + "\n")
            .collect();
        let (store, _) = Store::open(&dir, true).unwrap();
        crate::journal::FAIL_APPEND_IN.with(|n| n.set(25));
        crate::journal::FAIL_SNAPSHOT_AFTER.with(|n| n.set(text.len() as u64 / 2));
        let failed = store.insert_entries(parse(text.as_bytes(), &regions()).unwrap());
        crate::journal::FAIL_APPEND_IN.with(|n| n.set(0));
        crate::journal::FAIL_SNAPSHOT_AFTER.with(|n| n.set(0));
        assert!(failed.is_err());
        drop(store);
        let (store, _) = Store::open(&dir, true).unwrap();
        assert!(store.is_empty(), "{} record(s) left", store.len());
        // Then whole, in the file's order, as one snapshot.
        let entries = parse(text.as_bytes(), &regions()).unwrap();
        assert_eq!(store.insert_entries(entries).unwrap(), 50);
        drop(store);
        let (store, stats) = Store::open(&dir, true).unwrap();
        assert_eq!(stats.entries, 50);
        let mut out = Vec::new();
        write_records(&store, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), text);
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_export_is_read_back_as_the_same_records_and_written_out_byte_for_byte() {
        let text = format!("{GOOD}\n{}\n", good_with(r#""id":"a""#, r#""id":"0""#));
        let store = Store::in_memory();
        let entries = parse(text.as_bytes(), &regions()).unwrap();
        assert_eq!(store.insert_entries(entries).unwrap(), 2);
        let mut out = Vec::new();
        assert_eq!(write_records(&store, &mut out).unwrap(), 2);
        // In the order of the file (not of the ids), each line as it was.
        assert_eq!(String::from_utf8(out).unwrap(), text);
        let record = store.get("a").unwrap();
        assert_eq!(record.steps[1].body(), "not json");
        assert!(record.is_kept(1));
    }
}
