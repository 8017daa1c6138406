//! A blocking etcd v3 client over etcd's JSON gateway (`/v3/kv/*`, `/v3/lease/*`,
//! `/v3/auth/authenticate`), on ureq like every other outbound call: no async runtime, no gRPC.
//!
//! What it guarantees:
//! - every call returns within the configured `timeout` per endpoint tried (connect included);
//!   endpoints are tried in turn only while none could be connected to, so a call takes at most
//!   `timeout` once a request was sent, and `endpoints × timeout` when none answers; a read
//!   left unanswered is sent once more, to the next endpoint (two of these bounds);
//! - a write is sent to a second endpoint only when it could not be sent to the first
//!   (connection refused, name not found, TLS handshake failed, connect timeout): a write that
//!   reached etcd is never sent twice. After a timeout or an etcd that answers "unavailable",
//!   the *next* call starts at the next endpoint (a stopped or partitioned member must not hold
//!   the client), and a read is sent again there at once;
//! - reads are linearizable (the gateway's default; `serializable` is never set);
//! - errors are typed ([`EtcdError`]): nobody answered, etcd answered but could not commit in
//!   time (no quorum, or our timeout), a transaction's comparison failed, authentication
//!   refused, a permission the user's roles lack, a lease not found, an answer we cannot
//!   read, any other refusal;
//! - keys and values are bytes (base64 in the gateway's JSON); int64s, which the gateway writes
//!   as JSON strings, are parsed (numbers are accepted too), and a field the gateway leaves out
//!   (proto3 omits zeros, empty lists and `false`) reads as its zero;
//! - with `user`/`password`, a token from `/v3/auth/authenticate` is sent on every call (the
//!   raw `Authorization` header etcd expects, marked sensitive) and fetched again once when
//!   etcd says it is no longer valid (simple tokens expire); the password and the token appear
//!   in no log line, error or `Debug` output;
//! - `https://` endpoints are verified against exactly the certificates of `ca_file` when one
//!   is given, else against the host's trust store (read only when an endpoint is
//!   `https://`); no proxy from the environment, no redirects (as [`crate::mep::agent`]).

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use log::warn;
use serde_json::{Value, json};
use ureq::Agent;
use ureq::http::HeaderValue;
use ureq::unversioned::transport::DefaultConnector;

use crate::mep::agent::{
    LiteralResolver, Trust, has_scheme, is_https, never_left, one_line, outbound_config,
    tls_trusting,
};
use crate::util::{lock, redact};

/// Largest answer read from etcd (a range of a whole prefix can be large; etcd's own limit on
/// a request is 1.5 MiB by default, not on an answer).
pub const MAX_ANSWER_BYTES: u64 = 256 * 1024 * 1024;

/// Longest message kept from an etcd error answer, in characters.
const MAX_MESSAGE_CHARS: usize = 200;

/// Idle keep-alive connections kept per endpoint.
const IDLE_CONNECTIONS: usize = 16;

/// gRPC status codes that etcd's gateway reports (`code` of an error answer).
mod grpc {
    pub const UNKNOWN: i64 = 2;
    pub const INVALID_ARGUMENT: i64 = 3;
    pub const DEADLINE_EXCEEDED: i64 = 4;
    pub const NOT_FOUND: i64 = 5;
    pub const PERMISSION_DENIED: i64 = 7;
    pub const FAILED_PRECONDITION: i64 = 9;
    pub const UNAVAILABLE: i64 = 14;
    pub const UNAUTHENTICATED: i64 = 16;
}

/// What went wrong with an etcd call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdError {
    /// No endpoint could be connected to: nothing was sent, nothing can have changed.
    Unreachable { endpoints: String, reason: String },
    /// An endpoint took the request but etcd could not serve it: it has no leader or quorum
    /// (gRPC `UNAVAILABLE`, `DEADLINE_EXCEEDED`, "context deadline exceeded"), or no answer
    /// came within the timeout. A write's outcome is unknown.
    NoQuorum { endpoint: String, reason: String },
    /// A transaction's comparisons did not hold (its success branch was not run).
    CompareFailed,
    /// etcd refused the credentials (wrong user or password, no user where one is needed,
    /// authentication not enabled while a user is configured), or a token even after the
    /// client authenticated again.
    AuthRefused { endpoint: String, reason: String },
    /// etcd took the credentials but the user's roles do not permit the call (gRPC
    /// `PERMISSION_DENIED`, "etcdserver: permission denied"): nothing was done, and no retry
    /// helps until an operator grants the permission.
    PermissionDenied { endpoint: String, reason: String },
    /// The lease does not exist (any more): it expired or was revoked.
    LeaseNotFound { id: i64 },
    /// The answer is not what the gateway sends (not JSON, a field of the wrong type, bad
    /// base64), or its head arrived but its body could not be read in full: larger than
    /// [`MAX_ANSWER_BYTES`], or cut short (the connection ended, or the timeout passed, before
    /// its end). etcd answered, so this is no quorum matter, but a write's outcome is unknown
    /// to us all the same.
    Malformed { endpoint: String, reason: String },
    /// etcd answered at a revision below one it had answered this client at before a call
    /// that began after it: it lost data, or was restored from an older snapshot (revisions
    /// only grow, and every call here is linearizable). Records this instance knew may be
    /// missing; it does not go on with such an etcd (see [`Client::highest_revision`]).
    WentBack {
        endpoint: String,
        seen: i64,
        now: i64,
    },
    /// Any other refusal, with the HTTP status, the gRPC code (0 when the answer had none)
    /// and etcd's message.
    Refused {
        endpoint: String,
        status: u16,
        code: i64,
        message: String,
    },
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EtcdError::Unreachable { endpoints, reason } => {
                write!(f, "etcd unreachable (tried {endpoints}): {reason}")
            }
            EtcdError::NoQuorum { endpoint, reason } => {
                write!(f, "etcd at {endpoint} cannot commit (no quorum?): {reason}")
            }
            EtcdError::CompareFailed => write!(f, "etcd transaction: comparison failed"),
            EtcdError::AuthRefused { endpoint, reason } => {
                write!(f, "etcd at {endpoint} refused the credentials: {reason}")
            }
            EtcdError::PermissionDenied { endpoint, reason } => {
                write!(
                    f,
                    "etcd at {endpoint} denied the call to the user's roles: {reason}"
                )
            }
            EtcdError::LeaseNotFound { id } => write!(f, "etcd lease {id:x} not found"),
            EtcdError::WentBack {
                endpoint,
                seen,
                now,
            } => write!(
                f,
                "etcd at {endpoint} answered at revision {now}, below revision {seen} it had \
                 answered this instance at: etcd lost data or was restored from an older \
                 snapshot, so records this instance knew may be missing from it (their rules \
                 still on the platforms). This instance does not go on with it: restore etcd's \
                 data, or restart this instance to accept what etcd holds now"
            ),
            EtcdError::Malformed { endpoint, reason } => {
                write!(
                    f,
                    "etcd at {endpoint} answered something unreadable: {reason}"
                )
            }
            EtcdError::Refused {
                endpoint,
                status,
                code,
                message,
            } => write!(
                f,
                "etcd at {endpoint} refused the call: HTTP {status}, gRPC code {code}: {message}"
            ),
        }
    }
}

impl std::error::Error for EtcdError {}

/// How to reach etcd.
#[derive(Clone)]
pub struct Options {
    /// Base URLs (`http://host:2379`, `https://...`), tried in turn.
    pub endpoints: Vec<String>,
    /// PEM certificates that `https://` endpoints are verified against (else the host's trust
    /// store).
    pub ca_pem: Option<Vec<u8>>,
    /// An etcd user and its password (both or neither).
    pub user: Option<String>,
    pub password: Option<String>,
    /// The bound on one call to one endpoint, connect included.
    pub timeout: Duration,
}

/// Written by hand so that the password cannot end up in a `{:?}`.
impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let endpoints: Vec<String> = self.endpoints.iter().map(|e| redact(e)).collect();
        f.debug_struct("Options")
            .field("endpoints", &endpoints)
            .field("ca_pem", &self.ca_pem.is_some())
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// One key and its value, as a range or a transaction reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    /// The lease the key is attached to (0: none).
    pub lease: i64,
}

/// The answer to a range.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResponse {
    /// The store's revision when the range was read.
    pub revision: i64,
    pub kvs: Vec<KeyValue>,
    /// Whether more keys were in the range than `limit` let through.
    pub more: bool,
    /// How many keys are in the range (whatever the limit).
    pub count: i64,
}

/// A range: one key, or every key from `key` up to `range_end` (excluded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub key: Vec<u8>,
    pub range_end: Option<Vec<u8>>,
    /// At most this many keys (0: no limit).
    pub limit: i64,
    /// Read the store as it was at this revision (0: now), so that the pages of a large
    /// range are one consistent read.
    pub revision: i64,
}

impl Range {
    /// Exactly `key`.
    pub fn key(key: impl Into<Vec<u8>>) -> Range {
        Range {
            key: key.into(),
            range_end: None,
            limit: 0,
            revision: 0,
        }
    }

    /// Every key starting with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Range {
        let key = prefix.into();
        Range {
            range_end: Some(prefix_end(&key)),
            key,
            limit: 0,
            revision: 0,
        }
    }

    /// Every key from `from` (included) to `to` (excluded).
    pub fn between(from: impl Into<Vec<u8>>, to: impl Into<Vec<u8>>) -> Range {
        Range {
            key: from.into(),
            range_end: Some(to.into()),
            limit: 0,
            revision: 0,
        }
    }

    /// At most `limit` keys, in key order.
    pub fn limit(mut self, limit: i64) -> Range {
        self.limit = limit;
        self
    }

    /// As the store was at `revision` (0: now).
    pub fn at(mut self, revision: i64) -> Range {
        self.revision = revision;
        self
    }

    fn to_json(&self) -> Value {
        let mut request = json!({ "key": BASE64.encode(&self.key) });
        if let Some(end) = &self.range_end {
            request["range_end"] = json!(BASE64.encode(end));
        }
        if self.limit > 0 {
            request["limit"] = json!(self.limit.to_string());
        }
        if self.revision > 0 {
            request["revision"] = json!(self.revision.to_string());
        }
        request
    }
}

/// The first key after every key that starts with `prefix` (etcd's `range_end` of a prefix):
/// the prefix with its last byte below 0xff incremented and what follows dropped; `\0` (every
/// key) when there is none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// What a transaction compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The revision at which the key was created (0: the key does not exist).
    CreateRevision(i64),
    /// The revision of the key's last change.
    ModRevision(i64),
    /// How many times the key was changed since its creation (0: absent).
    Version(i64),
    Value(Vec<u8>),
    /// The lease the key is attached to.
    Lease(i64),
}

/// How a comparison holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// One comparison of a transaction: `key`'s `target` `cmp` the given value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    pub cmp: Cmp,
    pub target: Target,
}

impl Compare {
    pub fn new(key: impl Into<Vec<u8>>, cmp: Cmp, target: Target) -> Compare {
        Compare {
            key: key.into(),
            cmp,
            target,
        }
    }

    /// Holds when `key` does not exist.
    pub fn absent(key: impl Into<Vec<u8>>) -> Compare {
        Compare::new(key, Cmp::Equal, Target::CreateRevision(0))
    }

    fn to_json(&self) -> Value {
        let result = match self.cmp {
            Cmp::Equal => "EQUAL",
            Cmp::NotEqual => "NOT_EQUAL",
            Cmp::Greater => "GREATER",
            Cmp::Less => "LESS",
        };
        let mut compare = json!({ "key": BASE64.encode(&self.key), "result": result });
        let (target, field, value) = match &self.target {
            Target::CreateRevision(r) => ("CREATE", "create_revision", json!(r.to_string())),
            Target::ModRevision(r) => ("MOD", "mod_revision", json!(r.to_string())),
            Target::Version(v) => ("VERSION", "version", json!(v.to_string())),
            Target::Value(v) => ("VALUE", "value", json!(BASE64.encode(v))),
            Target::Lease(l) => ("LEASE", "lease", json!(l.to_string())),
        };
        compare["target"] = json!(target);
        compare[field] = value;
        compare
    }
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Sets `key` to `value`, attached to `lease` (0: none).
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
    },
    Range(Range),
    /// Deletes `key`, or every key up to `range_end` (excluded).
    Delete {
        key: Vec<u8>,
        range_end: Option<Vec<u8>>,
    },
}

impl Op {
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }

    pub fn delete(key: impl Into<Vec<u8>>) -> Op {
        Op::Delete {
            key: key.into(),
            range_end: None,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Op::Put { key, value, lease } => json!({ "request_put": put_json(key, value, *lease) }),
            Op::Range(range) => json!({ "request_range": range.to_json() }),
            Op::Delete { key, range_end } => {
                json!({ "request_delete_range": delete_json(key, range_end.as_deref()) })
            }
        }
    }
}

fn put_json(key: &[u8], value: &[u8], lease: i64) -> Value {
    let mut put = json!({ "key": BASE64.encode(key), "value": BASE64.encode(value) });
    if lease != 0 {
        put["lease"] = json!(lease.to_string());
    }
    put
}

fn delete_json(key: &[u8], range_end: Option<&[u8]>) -> Value {
    let mut delete = json!({ "key": BASE64.encode(key) });
    if let Some(end) = range_end {
        delete["range_end"] = json!(BASE64.encode(end));
    }
    delete
}

/// A transaction: if every comparison holds, the `success` operations, else the `failure`
/// ones, atomically.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

impl Txn {
    pub fn new() -> Txn {
        Txn::default()
    }

    pub fn when(mut self, compare: Compare) -> Txn {
        self.compare.push(compare);
        self
    }

    pub fn then(mut self, op: Op) -> Txn {
        self.success.push(op);
        self
    }

    pub fn otherwise(mut self, op: Op) -> Txn {
        self.failure.push(op);
        self
    }

    /// Whether every operation of both branches only reads: such a transaction may be sent
    /// twice.
    fn reads_only(&self) -> bool {
        let ranges = |ops: &[Op]| ops.iter().all(|op| matches!(op, Op::Range(_)));
        ranges(&self.success) && ranges(&self.failure)
    }

    fn to_json(&self) -> Value {
        let all = |ops: &[Op]| ops.iter().map(Op::to_json).collect::<Vec<_>>();
        json!({
            "compare": self.compare.iter().map(Compare::to_json).collect::<Vec<_>>(),
            "success": all(&self.success),
            "failure": all(&self.failure),
        })
    }
}

/// The answer of one operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResponse {
    Range(RangeResponse),
    Put,
    Delete { deleted: i64 },
}

/// The answer to a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether the comparisons held (the success branch ran).
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: i64,
    /// One answer per operation of the branch that ran.
    pub responses: Vec<OpResponse>,
}

impl TxnResponse {
    /// The answer itself when the comparisons held, else [`EtcdError::CompareFailed`].
    pub fn require_succeeded(self) -> Result<TxnResponse, EtcdError> {
        if self.succeeded {
            Ok(self)
        } else {
            Err(EtcdError::CompareFailed)
        }
    }
}

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    /// The TTL etcd granted, in seconds.
    pub ttl_s: i64,
}

/// The endpoints' client. Cheap to share (`&self` everywhere); connections are pooled.
pub struct Client {
    agent: Agent,
    endpoints: Vec<String>,
    /// The endpoint the next call starts at.
    preferred: AtomicUsize,
    timeout: Duration,
    credentials: Option<(String, String)>,
    /// The current auth token (held only while it is read or replaced, never during a call).
    token: Mutex<Option<HeaderValue>>,
    /// The highest revision a call was answered at
    /// ([`highest_revision`](Client::highest_revision)).
    highest: AtomicI64,
    /// Once etcd answered below it: the error every later range, put and transaction gets, so
    /// that writes of another instance raising the revision past it again do not hide the
    /// loss (only a restart clears it).
    went_back: Mutex<Option<EtcdError>>,
}

/// Written by hand so that no credential can end up in a `{:?}`.
impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.shown_endpoints())
            .field("timeout", &self.timeout)
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .finish_non_exhaustive()
    }
}

/// How one attempt on one endpoint ended, when it did not end with an answer.
enum Failure {
    /// Nothing was sent: the next endpoint may be tried.
    NotSent(String),
    /// Sent, and no answer came in time (or the connection broke after the request left).
    Lost(String),
    /// An answer's head came (status and headers) but not its whole body: see [`unread_body`].
    Unreadable(String),
}

impl Client {
    /// A client of `options.endpoints`. Refuses an empty list, an endpoint that is not an
    /// `http://` or `https://` URL, and a user without a password (or the reverse).
    pub fn new(options: Options) -> Result<Client, String> {
        if options.endpoints.is_empty() {
            return Err("no etcd endpoint given".into());
        }
        let mut endpoints = Vec::new();
        for endpoint in &options.endpoints {
            // The scheme in any case, as `[store] endpoints` accepts it.
            if !(has_scheme(endpoint, "http://") || is_https(endpoint)) {
                return Err(format!(
                    "etcd endpoint '{}' is not an http:// or https:// URL",
                    redact(endpoint)
                ));
            }
            endpoints.push(endpoint.trim_end_matches('/').to_string());
        }
        let credentials = match (options.user, options.password) {
            (Some(user), Some(password)) => Some((user, password)),
            (None, None) => None,
            _ => return Err("an etcd user needs a password, and a password a user".into()),
        };
        let https = endpoints.iter().any(|e| is_https(e));
        let (tls, trust, unreadable) = tls_trusting(options.ca_pem.as_deref(), https);
        if let Trust::PrivateCa { certificates } = trust {
            if unreadable > 0 || certificates == 0 {
                warn!(
                    "etcd CA file: {certificates} usable certificate(s), {unreadable} unreadable"
                );
            }
        }
        let config = outbound_config(
            tls,
            options.timeout,
            IDLE_CONNECTIONS,
            IDLE_CONNECTIONS * endpoints.len(),
            None,
        );
        Ok(Client {
            agent: Agent::with_parts(config, DefaultConnector::default(), LiteralResolver),
            endpoints,
            preferred: AtomicUsize::new(0),
            timeout: options.timeout,
            credentials,
            token: Mutex::new(None),
            highest: AtomicI64::new(0),
            went_back: Mutex::new(None),
        })
    }

    /// The bound on one call to one endpoint.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The endpoints, credentials masked, for logs and `/healthz`.
    pub fn shown_endpoints(&self) -> String {
        let shown: Vec<String> = self.endpoints.iter().map(|e| redact(e)).collect();
        shown.join(", ")
    }

    /// Reads a key or a range of keys (linearizable; see [`read`](Client::read)).
    pub fn range(&self, range: &Range) -> Result<RangeResponse, EtcdError> {
        let before = self.highest_revision();
        let (endpoint, answer) = self.read("/v3/kv/range", &range.to_json())?;
        let answer = parse_range(&answer).map_err(|reason| malformed(&endpoint, reason))?;
        self.advance(&endpoint, before, answer.revision)?;
        Ok(answer)
    }

    /// The key's current value, if it exists.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, EtcdError> {
        Ok(self.range(&Range::key(key))?.kvs.into_iter().next())
    }

    /// Sets `key` to `value`, attached to `lease` (0: none); returns the store's revision after.
    pub fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let before = self.highest_revision();
        let (endpoint, answer) =
            self.call("/v3/kv/put", &put_json(key, value, lease), self.timeout)?;
        let revision = header_revision(&answer).map_err(|reason| malformed(&endpoint, reason))?;
        self.advance(&endpoint, before, revision)?;
        Ok(revision)
    }

    /// The highest revision a range, put or transaction of this client was answered at (0:
    /// none yet). etcd's revision only grows, and these calls are linearizable: one that
    /// began after an answer at revision R is answered at R or later, unless etcd lost data or
    /// was restored from an older snapshot.
    pub fn highest_revision(&self) -> i64 {
        self.highest.load(Ordering::SeqCst)
    }

    /// Records an answer at `revision` to a call that began when the highest revision seen was
    /// `before`; [`EtcdError::WentBack`] if it is lower. Compared with `before`, not the
    /// highest now: a call answered meanwhile may have raised it after this one was read.
    fn advance(&self, endpoint: &str, before: i64, revision: i64) -> Result<(), EtcdError> {
        let mut went_back = lock(&self.went_back);
        if let Some(e) = went_back.as_ref() {
            return Err(e.clone());
        }
        if revision < before {
            let e = EtcdError::WentBack {
                endpoint: endpoint.to_string(),
                seen: before,
                now: revision,
            };
            *went_back = Some(e.clone());
            return Err(e);
        }
        self.highest.fetch_max(revision, Ordering::SeqCst);
        Ok(())
    }

    /// Deletes `key`, or every key up to `range_end`; returns how many were deleted.
    pub fn delete(&self, key: &[u8], range_end: Option<&[u8]>) -> Result<i64, EtcdError> {
        let body = delete_json(key, range_end);
        let (endpoint, answer) = self.call("/v3/kv/deleterange", &body, self.timeout)?;
        int(&answer, "deleted").map_err(|reason| malformed(&endpoint, reason))
    }

    /// Runs a transaction. A comparison that does not hold is an answer (`succeeded` false),
    /// not an error: see [`TxnResponse::require_succeeded`].
    pub fn txn(&self, txn: &Txn) -> Result<TxnResponse, EtcdError> {
        let before = self.highest_revision();
        let (endpoint, answer) = if txn.reads_only() {
            self.read("/v3/kv/txn", &txn.to_json())?
        } else {
            self.call("/v3/kv/txn", &txn.to_json(), self.timeout)?
        };
        let answer = parse_txn(&answer).map_err(|reason| malformed(&endpoint, reason))?;
        self.advance(&endpoint, before, answer.revision)?;
        Ok(answer)
    }

    /// Grants a lease of `ttl_s` seconds.
    pub fn lease_grant(&self, ttl_s: i64) -> Result<Lease, EtcdError> {
        let body = json!({ "TTL": ttl_s.to_string() });
        let (endpoint, answer) = self.call("/v3/lease/grant", &body, self.timeout)?;
        parse_lease(&answer).map_err(|reason| malformed(&endpoint, reason))
    }

    /// Renews a lease once, giving up after `timeout` (at most the client's); returns the TTL
    /// etcd reset it to. A lease that expired or was revoked is [`EtcdError::LeaseNotFound`].
    pub fn lease_keepalive(&self, id: i64, timeout: Duration) -> Result<i64, EtcdError> {
        let body = json!({ "ID": id.to_string() });
        let timeout = timeout.min(self.timeout);
        let (endpoint, answer) = self.call("/v3/lease/keepalive", &body, timeout)?;
        // A stream of answers, each wrapped in `result` (one here: one request was sent).
        let result = answer.get("result").unwrap_or(&answer);
        match int(result, "TTL") {
            Ok(ttl) if ttl > 0 => Ok(ttl),
            Ok(_) => Err(EtcdError::LeaseNotFound { id }),
            Err(reason) => Err(malformed(&endpoint, reason)),
        }
    }

    /// Revokes a lease: every key attached to it is deleted at once.
    pub fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        let body = json!({ "ID": id.to_string() });
        match self.call("/v3/lease/revoke", &body, self.timeout) {
            Err(EtcdError::Refused {
                code: grpc::NOT_FOUND,
                ..
            }) => Err(EtcdError::LeaseNotFound { id }),
            other => other.map(|_| ()),
        }
    }

    /// One call: `path` with `body` on the endpoints, authenticated when a user is configured
    /// (once more with a fresh token if etcd says the token is no longer valid). Returns the
    /// endpoint that answered and its (2xx) JSON answer.
    /// [`call`](Client::call) of a read. One that got no answer in time, or an
    /// "unavailable" one, is sent once more, to the next endpoint (where the client has moved
    /// on): reading twice changes nothing, and one member stopped or cut off out of three must
    /// not fail a read (a follower's role, its listings), only slow it by one timeout.
    fn read(&self, path: &str, body: &Value) -> Result<(String, Value), EtcdError> {
        match self.call(path, body, self.timeout) {
            Err(EtcdError::NoQuorum { .. }) if self.endpoints.len() > 1 => {
                self.call(path, body, self.timeout)
            }
            other => other,
        }
    }

    fn call(
        &self,
        path: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<(String, Value), EtcdError> {
        if self.credentials.is_none() {
            return self.send(path, body, None, timeout);
        }
        let token = match self.current_token() {
            Some(token) => token,
            None => self.authenticate(timeout)?,
        };
        match self.send(path, body, Some(&token), timeout) {
            Err(EtcdError::AuthRefused { .. }) if self.token_was(&token) => {
                let token = self.authenticate(timeout)?;
                self.send(path, body, Some(&token), timeout)
            }
            other => other,
        }
    }

    /// The configured etcd user, if any.
    pub fn user(&self) -> Option<&str> {
        self.credentials.as_ref().map(|(user, _)| user.as_str())
    }

    fn current_token(&self) -> Option<HeaderValue> {
        crate::util::lock(&self.token).clone()
    }

    /// Whether `token` is still the current one, forgetting it if so (etcd refused it).
    fn token_was(&self, token: &HeaderValue) -> bool {
        let mut current = crate::util::lock(&self.token);
        if current.as_ref() == Some(token) {
            *current = None;
            true
        } else {
            false
        }
    }

    /// Fetches a token for the configured user and keeps it for the next calls.
    fn authenticate(&self, timeout: Duration) -> Result<HeaderValue, EtcdError> {
        let Some((user, password)) = &self.credentials else {
            unreachable!("authenticate is only called with credentials");
        };
        let body = json!({ "name": user, "password": password });
        let (endpoint, answer) = self.send("/v3/auth/authenticate", &body, None, timeout)?;
        let token = match answer.get("token") {
            Some(Value::String(token)) if !token.is_empty() => token,
            _ => return Err(malformed(&endpoint, "no token in the answer".into())),
        };
        let mut token = HeaderValue::from_str(token)
            .map_err(|_| malformed(&endpoint, "a token that is not a header value".into()))?;
        token.set_sensitive(true);
        *crate::util::lock(&self.token) = Some(token.clone());
        Ok(token)
    }

    /// Sends one request, starting at the preferred endpoint and going on to the next only
    /// while nothing could be sent.
    fn send(
        &self,
        path: &str,
        body: &Value,
        token: Option<&HeaderValue>,
        timeout: Duration,
    ) -> Result<(String, Value), EtcdError> {
        let first = self.preferred.load(Ordering::Relaxed) % self.endpoints.len();
        let mut reasons = Vec::new();
        for n in 0..self.endpoints.len() {
            let index = (first + n) % self.endpoints.len();
            let endpoint = &self.endpoints[index];
            let shown = redact(endpoint);
            let started = Instant::now();
            let outcome = self.attempt(&format!("{endpoint}{path}"), body, token, timeout);
            let ms = started.elapsed().as_millis();
            match outcome {
                Ok((status, text)) => {
                    debug!("etcd {path} at {shown} -> {status} in {ms} ms");
                    let result = answer(&shown, status, &text);
                    let unavailable = matches!(result, Err(EtcdError::NoQuorum { .. }));
                    self.prefer(if unavailable { index + 1 } else { index });
                    return result.map(|value| (shown, value));
                }
                Err(Failure::NotSent(reason)) => {
                    debug!("etcd {path} at {shown}: not sent after {ms} ms: {reason}");
                    reasons.push(format!("{shown}: {reason}"));
                }
                Err(Failure::Lost(reason)) => {
                    debug!("etcd {path} at {shown}: no answer after {ms} ms: {reason}");
                    self.prefer(index + 1);
                    return Err(EtcdError::NoQuorum {
                        endpoint: shown,
                        reason,
                    });
                }
                Err(Failure::Unreadable(reason)) => {
                    debug!("etcd {path} at {shown}: answer not read after {ms} ms: {reason}");
                    self.prefer(index + 1);
                    return Err(malformed(&shown, reason));
                }
            }
        }
        Err(EtcdError::Unreachable {
            endpoints: self.shown_endpoints(),
            reason: reasons.join("; "),
        })
    }

    fn prefer(&self, index: usize) {
        self.preferred
            .store(index % self.endpoints.len(), Ordering::Relaxed);
    }

    /// One POST to one endpoint: its status and body, whatever the status.
    fn attempt(
        &self,
        url: &str,
        body: &Value,
        token: Option<&HeaderValue>,
        timeout: Duration,
    ) -> Result<(u16, String), Failure> {
        let mut request = self
            .agent
            .post(url)
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", token.clone());
        }
        let sent = request
            .config()
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout))
            .build()
            .send(body.to_string());
        let mut response = sent.map_err(classify)?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_string()
            .map_err(|e| Failure::Unreadable(unread_body(status, e)))?;
        Ok((status, text))
    }
}

/// Why the body of an answer whose head arrived could not be read, in words that say what
/// happened: larger than the bound, not UTF-8 text, or cut short (the connection ended or the
/// timeout passed before its end). Never "no quorum": etcd answered.
fn unread_body(status: u16, e: ureq::Error) -> String {
    let reason = one_line(&e.to_string(), MAX_MESSAGE_CHARS);
    match e {
        ureq::Error::BodyExceedsLimit(limit) => format!(
            "the HTTP {status} answer is larger than the bound on an answer ({limit} bytes): \
             not read"
        ),
        ureq::Error::Io(ref io) if io.kind() == std::io::ErrorKind::InvalidData => {
            format!("the HTTP {status} answer is not UTF-8 text ({reason})")
        }
        ureq::Error::Timeout(_) => format!(
            "the HTTP {status} answer was cut short: its end did not arrive within the \
             timeout ({reason})"
        ),
        _ => format!("the HTTP {status} answer was cut short before its end ({reason})"),
    }
}

/// Tells a failure before the request left (the next endpoint may be tried) from one after.
fn classify(e: ureq::Error) -> Failure {
    let reason = one_line(&e.to_string(), MAX_MESSAGE_CHARS);
    if never_left(&e) {
        Failure::NotSent(reason)
    } else {
        Failure::Lost(reason)
    }
}

fn malformed(endpoint: &str, reason: String) -> EtcdError {
    EtcdError::Malformed {
        endpoint: endpoint.to_string(),
        reason,
    }
}

/// The JSON of a 2xx answer, or the error an error answer says.
fn answer(endpoint: &str, status: u16, text: &str) -> Result<Value, EtcdError> {
    let parsed = serde_json::from_str::<Value>(text);
    if (200..300).contains(&status) {
        let value = parsed.map_err(|e| malformed(endpoint, format!("not JSON: {e}")))?;
        // A stream (keep-alive) reports its error in a 200 answer.
        if let Some(error @ Value::Object(_)) = value.get("error") {
            return Err(error_of(endpoint, status, error));
        }
        return Ok(value);
    }
    match parsed {
        Ok(value) => {
            let error = match value.get("error") {
                Some(error @ Value::Object(_)) => error,
                _ => &value,
            };
            Err(error_of(endpoint, status, error))
        }
        Err(_) if status == 503 || status == 504 => Err(EtcdError::NoQuorum {
            endpoint: endpoint.to_string(),
            reason: format!("HTTP {status}: {}", one_line(text, MAX_MESSAGE_CHARS)),
        }),
        Err(_) => Err(EtcdError::Refused {
            endpoint: endpoint.to_string(),
            status,
            code: 0,
            message: one_line(text, MAX_MESSAGE_CHARS),
        }),
    }
}

/// The error an etcd error object names: `{"code", "message"}` (a unary call; 3.4 also writes
/// `error`) or `{"grpc_code", "http_code", "message"}` (a stream's).
fn error_of(endpoint: &str, status: u16, error: &Value) -> EtcdError {
    let code = int(error, "code")
        .ok()
        .filter(|c| *c != 0)
        .or_else(|| int(error, "grpc_code").ok())
        .unwrap_or(0);
    let message = ["message", "error"]
        .iter()
        .find_map(|field| error.get(*field).and_then(Value::as_str))
        .unwrap_or("");
    let message = one_line(message, MAX_MESSAGE_CHARS);
    let endpoint = endpoint.to_string();
    let denied = message.contains("permission denied");
    let auth = message.contains("authentication") || message.contains("user name is empty");
    match code {
        grpc::UNAVAILABLE | grpc::DEADLINE_EXCEEDED => EtcdError::NoQuorum {
            endpoint,
            reason: message,
        },
        grpc::UNKNOWN if message.contains("deadline exceeded") => EtcdError::NoQuorum {
            endpoint,
            reason: message,
        },
        grpc::UNAUTHENTICATED => EtcdError::AuthRefused {
            endpoint,
            reason: message,
        },
        // The token was good (else etcd says UNAUTHENTICATED): authenticating again would
        // not change the user's roles.
        grpc::PERMISSION_DENIED => EtcdError::PermissionDenied {
            endpoint,
            reason: message,
        },
        grpc::INVALID_ARGUMENT | grpc::FAILED_PRECONDITION if denied => {
            EtcdError::PermissionDenied {
                endpoint,
                reason: message,
            }
        }
        grpc::INVALID_ARGUMENT | grpc::FAILED_PRECONDITION if auth => EtcdError::AuthRefused {
            endpoint,
            reason: message,
        },
        _ => EtcdError::Refused {
            endpoint,
            status,
            code,
            message,
        },
    }
}

/// An int64 field: a JSON string of digits (the gateway's spelling) or a number; absent is 0
/// (proto3 leaves zeros out).
fn int(object: &Value, field: &str) -> Result<i64, String> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(text)) => text
            .parse()
            .map_err(|_| format!("{field}: '{}' is not an int64", one_line(text, 40))),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| format!("{field}: {n} is not an int64")),
        Some(other) => Err(format!("{field}: {} is not an int64", kind(other))),
    }
}

/// A bytes field (base64); absent is empty.
fn bytes(object: &Value, field: &str) -> Result<Vec<u8>, String> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) => BASE64
            .decode(text)
            .map_err(|e| format!("{field}: not base64: {e}")),
        Some(other) => Err(format!("{field}: {} is not base64 text", kind(other))),
    }
}

/// A list field; absent is empty.
fn list<'a>(object: &'a Value, field: &str) -> Result<&'a [Value], String> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(format!("{field}: {} is not a list", kind(other))),
    }
}

fn boolean(object: &Value, field: &str) -> Result<bool, String> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!("{field}: {} is not a boolean", kind(other))),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn header_revision(answer: &Value) -> Result<i64, String> {
    match answer.get("header") {
        Some(header) => int(header, "revision").map_err(|e| format!("header.{e}")),
        None => Err("no header in the answer".into()),
    }
}

fn parse_key_value(kv: &Value) -> Result<KeyValue, String> {
    Ok(KeyValue {
        key: bytes(kv, "key")?,
        value: bytes(kv, "value")?,
        create_revision: int(kv, "create_revision")?,
        mod_revision: int(kv, "mod_revision")?,
        version: int(kv, "version")?,
        lease: int(kv, "lease")?,
    })
}

fn parse_range(answer: &Value) -> Result<RangeResponse, String> {
    let kvs = list(answer, "kvs")?
        .iter()
        .enumerate()
        .map(|(n, kv)| parse_key_value(kv).map_err(|e| format!("kvs[{n}].{e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RangeResponse {
        revision: header_revision(answer)?,
        kvs,
        more: boolean(answer, "more")?,
        count: int(answer, "count")?,
    })
}

fn parse_txn(answer: &Value) -> Result<TxnResponse, String> {
    let responses = list(answer, "responses")?
        .iter()
        .enumerate()
        .map(|(n, response)| parse_op_response(response).map_err(|e| format!("responses[{n}].{e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TxnResponse {
        succeeded: boolean(answer, "succeeded")?,
        revision: header_revision(answer)?,
        responses,
    })
}

fn parse_op_response(response: &Value) -> Result<OpResponse, String> {
    if let Some(range) = response.get("response_range") {
        let kvs = list(range, "kvs")?
            .iter()
            .enumerate()
            .map(|(n, kv)| parse_key_value(kv).map_err(|e| format!("kvs[{n}].{e}")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("response_range.{e}"))?;
        // An operation's own header carries only the revision; the transaction's counts.
        return Ok(OpResponse::Range(RangeResponse {
            revision: range.get("header").map_or(Ok(0), |h| int(h, "revision"))?,
            kvs,
            more: boolean(range, "more")?,
            count: int(range, "count")?,
        }));
    }
    if response.get("response_put").is_some() {
        return Ok(OpResponse::Put);
    }
    if let Some(delete) = response.get("response_delete_range") {
        let deleted = int(delete, "deleted").map_err(|e| format!("response_delete_range.{e}"))?;
        return Ok(OpResponse::Delete { deleted });
    }
    Err("neither response_range, response_put nor response_delete_range".into())
}

fn parse_lease(answer: &Value) -> Result<Lease, String> {
    // etcd 3.4 reports a refused grant in `error` with a 200 answer.
    match answer.get("error") {
        Some(Value::String(error)) if !error.is_empty() => {
            return Err(format!("lease not granted: {}", one_line(error, 100)));
        }
        _ => {}
    }
    let lease = Lease {
        id: int(answer, "ID")?,
        ttl_s: int(answer, "TTL")?,
    };
    if lease.id == 0 {
        return Err("no lease ID in the answer".into());
    }
    Ok(lease)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use ureq::tls::RootCerts;

    const HEADER: &str = r#""header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"7","raft_term":"2"}"#;

    #[test]
    fn a_range_answer_is_read_with_its_int64_strings_and_base64() {
        let text = format!(
            r#"{{{HEADER},"kvs":[{{"key":"L3QvYQ==","create_revision":"2","mod_revision":"5","version":"3","value":"aGVsbG8=","lease":"7587869823484739074"}}],"count":"1"}}"#
        );
        let range = parse_range(&serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(range.revision, 7);
        assert_eq!(range.count, 1);
        assert!(!range.more);
        assert_eq!(
            range.kvs,
            vec![KeyValue {
                key: b"/t/a".to_vec(),
                value: b"hello".to_vec(),
                create_revision: 2,
                mod_revision: 5,
                version: 3,
                lease: 7587869823484739074,
            }]
        );
    }

    #[test]
    fn fields_proto3_leaves_out_read_as_zero() {
        // What etcd answers for a key that does not exist, and a key with an empty value.
        let empty = parse_range(&serde_json::from_str(&format!("{{{HEADER}}}")).unwrap()).unwrap();
        assert_eq!((empty.kvs.len(), empty.count, empty.more), (0, 0, false));
        let text = format!(r#"{{{HEADER},"kvs":[{{"key":"AA==","create_revision":"3"}}]}}"#);
        let range = parse_range(&serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(range.kvs[0].value, b"");
        assert_eq!(range.kvs[0].lease, 0);
    }

    #[test]
    fn numbers_are_accepted_where_strings_are_expected() {
        let value = json!({ "header": { "revision": 9 }, "deleted": 2 });
        assert_eq!(header_revision(&value), Ok(9));
        assert_eq!(int(&value, "deleted"), Ok(2));
    }

    #[test]
    fn a_bad_field_is_named_in_the_error() {
        let text = format!(r#"{{{HEADER},"kvs":[{{"key":"AA=="}},{{"key":"!!"}}]}}"#);
        let e = parse_range(&serde_json::from_str(&text).unwrap()).unwrap_err();
        assert!(e.starts_with("kvs[1].key: not base64"), "{e}");
        let text = format!(r#"{{{HEADER},"kvs":[{{"key":"AA==","version":"x1"}}]}}"#);
        let e = parse_range(&serde_json::from_str(&text).unwrap()).unwrap_err();
        assert_eq!(e, "kvs[0].version: 'x1' is not an int64");
        let e = parse_range(&json!({ "kvs": [] })).unwrap_err();
        assert_eq!(e, "no header in the answer");
        let e = parse_range(&json!({ "header": {}, "kvs": {} })).unwrap_err();
        assert_eq!(e, "kvs: an object is not a list");
    }

    #[test]
    fn a_transaction_is_written_as_the_gateway_expects() {
        let txn = Txn::new()
            .when(Compare::absent("/p/leader"))
            .when(Compare::new(
                "/p/x",
                Cmp::NotEqual,
                Target::Value(b"v".to_vec()),
            ))
            .then(Op::Put {
                key: b"/p/leader".to_vec(),
                value: b"http://a".to_vec(),
                lease: 12,
            })
            .otherwise(Op::Range(Range::key("/p/leader")))
            .otherwise(Op::Delete {
                key: b"/p/".to_vec(),
                range_end: Some(prefix_end(b"/p/")),
            });
        assert_eq!(
            txn.to_json(),
            json!({
                "compare": [
                    {"key": "L3AvbGVhZGVy", "result": "EQUAL", "target": "CREATE", "create_revision": "0"},
                    {"key": "L3AveA==", "result": "NOT_EQUAL", "target": "VALUE", "value": "dg=="},
                ],
                "success": [{"request_put": {"key": "L3AvbGVhZGVy", "value": "aHR0cDovL2E=", "lease": "12"}}],
                "failure": [
                    {"request_range": {"key": "L3AvbGVhZGVy"}},
                    {"request_delete_range": {"key": "L3Av", "range_end": "L3Aw"}},
                ],
            })
        );
    }

    #[test]
    fn a_transaction_answer_is_read_branch_by_branch() {
        let text = format!(
            r#"{{{HEADER},"responses":[{{"response_range":{{"header":{{"revision":"7"}},"kvs":[{{"key":"AA==","create_revision":"2","value":"aGk="}}],"count":"1"}}}}]}}"#
        );
        let txn = parse_txn(&serde_json::from_str(&text).unwrap()).unwrap();
        assert!(!txn.succeeded, "succeeded is left out when false");
        assert_eq!(txn.revision, 7);
        let OpResponse::Range(range) = &txn.responses[0] else {
            panic!("{txn:?}");
        };
        assert_eq!(range.kvs[0].value, b"hi");
        assert_eq!(
            txn.clone().require_succeeded(),
            Err(EtcdError::CompareFailed)
        );

        let text = format!(
            r#"{{{HEADER},"succeeded":true,"responses":[{{"response_put":{{"header":{{"revision":"7"}}}}}},{{"response_delete_range":{{"header":{{}},"deleted":"3"}}}}]}}"#
        );
        let txn = parse_txn(&serde_json::from_str(&text).unwrap()).unwrap();
        assert!(txn.succeeded);
        assert_eq!(
            txn.responses,
            vec![OpResponse::Put, OpResponse::Delete { deleted: 3 }]
        );
        let e =
            parse_txn(&json!({"header": {}, "responses": [{"response_what": {}}]})).unwrap_err();
        assert!(e.starts_with("responses[0].neither"), "{e}");
    }

    #[test]
    fn the_end_of_a_prefix_is_its_last_byte_plus_one() {
        assert_eq!(prefix_end(b"/mec-plugin/"), b"/mec-plugin0");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
        assert_eq!(
            Range::prefix("/p/").limit(10).to_json(),
            json!({"key": "L3Av", "range_end": "L3Aw", "limit": "10"})
        );
        assert_eq!(
            Range::between("/p/b", "/p0").limit(2).at(41).to_json(),
            json!({"key": "L3AvYg==", "range_end": "L3Aw", "limit": "2", "revision": "41"})
        );
    }

    #[test]
    fn unary_errors_are_told_apart_by_their_grpc_code() {
        let e = answer(
            "http://e",
            503,
            r#"{"error":"etcdserver: request timed out","message":"etcdserver: request timed out","code":14}"#,
        );
        assert!(
            matches!(e, Err(EtcdError::NoQuorum { ref reason, .. }) if reason == "etcdserver: request timed out"),
            "{e:?}"
        );
        let e = answer(
            "http://e",
            500,
            r#"{"error":"context deadline exceeded","message":"context deadline exceeded","code":2}"#,
        );
        assert!(matches!(e, Err(EtcdError::NoQuorum { .. })), "{e:?}");
        let e = answer(
            "http://e",
            401,
            r#"{"error":"etcdserver: invalid auth token","code":16}"#,
        );
        assert!(
            matches!(e, Err(EtcdError::AuthRefused { ref reason, .. }) if reason == "etcdserver: invalid auth token"),
            "{e:?}"
        );
        // A user whose roles do not permit the call: its token was good, so it is not an
        // authentication matter (etcd 3.4's gateway answers 403 with code 7).
        let e = answer(
            "http://e",
            403,
            r#"{"error":"etcdserver: permission denied","message":"etcdserver: permission denied","code":7}"#,
        );
        assert!(
            matches!(e, Err(EtcdError::PermissionDenied { ref reason, .. }) if reason == "etcdserver: permission denied"),
            "{e:?}"
        );
        let e = answer(
            "http://e",
            400,
            r#"{"message":"etcdserver: permission denied","code":3}"#,
        );
        assert!(
            matches!(e, Err(EtcdError::PermissionDenied { .. })),
            "{e:?}"
        );
        let e = answer(
            "http://e",
            400,
            r#"{"message":"etcdserver: authentication failed, invalid user ID or password","code":3}"#,
        );
        assert!(matches!(e, Err(EtcdError::AuthRefused { .. })), "{e:?}");
        let e = answer(
            "http://e",
            400,
            r#"{"message":"illegal base64 data at input byte 0","code":3}"#,
        );
        assert_eq!(
            e,
            Err(EtcdError::Refused {
                endpoint: "http://e".into(),
                status: 400,
                code: 3,
                message: "illegal base64 data at input byte 0".into()
            })
        );
    }

    #[test]
    fn an_error_message_is_kept_to_200_characters_on_one_line() {
        let message = |text: &str| match answer("http://e", 400, text) {
            Err(EtcdError::Refused { message, .. }) => message,
            other => panic!("{other:?}"),
        };
        let at = "é".repeat(MAX_MESSAGE_CHARS);
        assert_eq!(message(&at), at, "200 characters, not bytes");
        assert_eq!(message(&format!("{at}x")), at, "one more is cut");
        let object = |m: &str| format!(r#"{{"code":3,"message":"{m}"}}"#);
        assert_eq!(message(&object(&at)), at);
        assert_eq!(message(&object(&format!("{at}x"))), at);
        assert_eq!(message("a\nb\r\n"), "a b", "one line");
    }

    #[test]
    fn a_streams_error_object_and_a_non_json_answer_are_read_too() {
        let e = answer(
            "http://e",
            503,
            r#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#,
        );
        assert!(
            matches!(e, Err(EtcdError::NoQuorum { ref reason, .. }) if reason == "etcdserver: no leader"),
            "{e:?}"
        );
        let e = answer(
            "http://e",
            200,
            r#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader"}}"#,
        );
        assert!(matches!(e, Err(EtcdError::NoQuorum { .. })), "{e:?}");
        let e = answer("http://e", 404, "404 page not found\n");
        assert!(
            matches!(e, Err(EtcdError::Refused { status: 404, code: 0, ref message, .. }) if message == "404 page not found"),
            "{e:?}"
        );
        let e = answer("http://e", 502, "<html>bad gateway</html>");
        assert!(
            matches!(e, Err(EtcdError::Refused { status: 502, .. })),
            "{e:?}"
        );
        let e = answer("http://e", 200, "{\"header\":");
        assert!(
            matches!(e, Err(EtcdError::Malformed { ref reason, .. }) if reason.starts_with("not JSON")),
            "{e:?}"
        );
    }

    #[test]
    fn a_lease_answer_is_read_and_a_missing_id_is_malformed() {
        let lease = parse_lease(&json!({"header": {}, "ID": "4111120489738891272", "TTL": "2"}));
        assert_eq!(
            lease,
            Ok(Lease {
                id: 4111120489738891272,
                ttl_s: 2
            })
        );
        assert!(parse_lease(&json!({"header": {}, "TTL": "2"})).is_err());
        assert!(parse_lease(&json!({"ID": "1", "error": "too many leases"})).is_err());
    }

    #[test]
    fn options_and_client_never_show_the_password() {
        let options = Options {
            endpoints: vec!["http://u:secret-pw@127.0.0.1:1".into()],
            ca_pem: None,
            user: Some("root".into()),
            password: Some("secret-pw".into()),
            timeout: Duration::from_secs(1),
        };
        let shown = format!("{options:?}");
        assert!(!shown.contains("secret-pw"), "{shown}");
        let client = Client::new(options).unwrap();
        let shown = format!("{client:?}");
        assert!(
            !shown.contains("secret-pw") && shown.contains("root"),
            "{shown}"
        );
    }

    #[test]
    fn only_an_https_endpoint_without_a_ca_file_is_verified_against_the_host_store() {
        let roots = |endpoints: &[&str], ca_pem: Option<Vec<u8>>| {
            let client = Client::new(Options {
                endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
                ca_pem,
                user: None,
                password: None,
                timeout: Duration::from_secs(1),
            })
            .unwrap();
            match client.agent.config().tls_config().root_certs() {
                RootCerts::Specific(certs) => certs.clone(),
                other => panic!("unexpected roots {other:?}"),
            }
        };
        // Plain http: nothing trusted, and the host's store is not read for it.
        assert!(roots(&["http://127.0.0.1:1", "http://127.0.0.1:2"], None).is_empty());
        // One https endpoint is enough to need it; it is the one list every client shares.
        let host = roots(&["http://127.0.0.1:1", "https://127.0.0.1:2"], None);
        assert!(Arc::ptr_eq(&host, &roots(&["https://127.0.0.1:3"], None)));
        // A ca_file: exactly its certificates (none usable here), never the host's store.
        let junk = b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n".to_vec();
        assert!(roots(&["https://127.0.0.1:2"], Some(junk)).is_empty());
    }

    #[test]
    fn bad_options_are_refused() {
        let options = |endpoints: &[&str], user: Option<&str>, password: Option<&str>| Options {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            ca_pem: None,
            user: user.map(str::to_string),
            password: password.map(str::to_string),
            timeout: Duration::from_secs(1),
        };
        assert!(Client::new(options(&[], None, None)).is_err());
        let e = Client::new(options(&["127.0.0.1:2379"], None, None)).unwrap_err();
        assert!(e.contains("'127.0.0.1:2379' is not an http"), "{e}");
        // The scheme in any case, as the configuration accepts it.
        assert!(Client::new(options(&["HTTP://a", "Https://b"], None, None)).is_ok());
        assert!(Client::new(options(&["http://a"], Some("root"), None)).is_err());
        assert!(Client::new(options(&["http://a"], None, Some("pw"))).is_err());
    }

    #[test]
    fn no_endpoint_listening_is_unreachable_naming_each() {
        // Two ports nothing listens on (bound, then closed).
        let ports: Vec<u16> = (0..2)
            .map(|_| {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                listener.local_addr().unwrap().port()
            })
            .collect();
        let endpoints: Vec<String> = ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        let client = Client::new(Options {
            endpoints: endpoints.clone(),
            ca_pem: None,
            user: None,
            password: None,
            timeout: Duration::from_secs(2),
        })
        .unwrap();
        match client.get(b"k") {
            Err(EtcdError::Unreachable {
                endpoints: tried,
                reason,
            }) => {
                assert_eq!(tried, endpoints.join(", "));
                assert!(
                    reason.contains(&endpoints[0]) && reason.contains(&endpoints[1]),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_answer_not_read_in_full_says_why_and_never_blames_the_quorum() {
        use std::io::{Error as IoError, ErrorKind};
        let cases = [
            (
                ureq::Error::BodyExceedsLimit(MAX_ANSWER_BYTES),
                "larger than the bound",
            ),
            (
                ureq::Error::Io(IoError::from(ErrorKind::UnexpectedEof)),
                "cut short",
            ),
            (
                ureq::Error::Io(IoError::from(ErrorKind::ConnectionReset)),
                "cut short",
            ),
            (
                ureq::Error::Timeout(ureq::Timeout::Global),
                "did not arrive within",
            ),
            (
                ureq::Error::Io(IoError::from(ErrorKind::InvalidData)),
                "not UTF-8",
            ),
        ];
        for (e, said) in cases {
            let shown = e.to_string();
            let reason = unread_body(200, e);
            assert!(reason.contains(said), "{shown}: {reason}");
            assert!(reason.starts_with("the HTTP 200 answer "), "{reason}");
            assert!(!reason.contains("quorum"), "{reason}");
        }
        let too_large = unread_body(200, ureq::Error::BodyExceedsLimit(MAX_ANSWER_BYTES));
        assert!(
            too_large.contains(&format!("({MAX_ANSWER_BYTES} bytes)")),
            "{too_large}"
        );
    }

    /// A fake etcd gateway on loopback for one call: reads the request (head and
    /// `Content-Length` body), writes `answer`, holds the connection for `hold`, closes it.
    fn fake_gateway(answer: &'static [u8], hold: Duration) -> String {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut line, mut length) = (String::new(), 0usize);
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                let lower = line.to_ascii_lowercase();
                if let Some(value) = lower.strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let _ = reader.read_exact(&mut vec![0; length.min(1 << 20)]);
            let mut out = stream;
            let _ = out.write_all(answer).and_then(|()| out.flush());
            std::thread::sleep(hold);
        });
        url
    }

    fn client_of(endpoint: String, timeout: Duration) -> Client {
        Client::new(Options {
            endpoints: vec![endpoint],
            ca_pem: None,
            user: None,
            password: None,
            timeout,
        })
        .unwrap()
    }

    #[test]
    fn an_answer_below_a_revision_seen_before_the_call_began_is_refused() {
        let client = client_of("http://127.0.0.1:1".into(), Duration::from_secs(1));
        assert_eq!(client.highest_revision(), 0);
        client.advance("e", 0, 10).unwrap();
        client.advance("e", 10, 10).unwrap();
        assert_eq!(client.highest_revision(), 10);
        // A call that began before the answer at 10 may be answered at 9: no regression.
        client.advance("e", 5, 9).unwrap();
        assert_eq!(client.highest_revision(), 10, "the highest stays");
        // One that began after it may not, and nothing goes on after it, even past 10.
        let e = client.advance("e", 10, 2).unwrap_err();
        assert_eq!(client.advance("e", 0, 50), Err(e.clone()), "sticky");
        assert_eq!(
            e,
            EtcdError::WentBack {
                endpoint: "e".into(),
                seen: 10,
                now: 2
            }
        );
        assert!(e.to_string().contains("etcd lost data"), "{e}");
        assert_eq!(client.highest_revision(), 10);
    }

    #[test]
    fn an_answer_cut_short_is_malformed_not_no_quorum() {
        // The connection ends 30 bytes into a body of 1,000.
        let answer: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
            Content-Length: 1000\r\nConnection: close\r\n\r\n{\"header\":{\"revision\":\"7\"},";
        let client = client_of(fake_gateway(answer, Duration::ZERO), Duration::from_secs(5));
        let e = client.get(b"k").unwrap_err();
        match &e {
            EtcdError::Malformed { reason, .. } => {
                assert!(reason.contains("HTTP 200 answer was cut short"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!e.to_string().contains("quorum"), "{e}");

        // The body stops 30 bytes in and the connection stays open past the timeout.
        let started = Instant::now();
        let client = client_of(fake_gateway(answer, Duration::from_secs(3)), 500 * MS);
        let e = client.get(b"k").unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3), "{e}");
        match &e {
            EtcdError::Malformed { reason, .. } => {
                assert!(
                    reason.contains("did not arrive within the timeout"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(!e.to_string().contains("quorum"), "{e}");
    }

    #[test]
    fn no_answer_within_the_timeout_is_still_no_quorum() {
        // Nothing at all comes back: etcd may well be without a quorum (it holds proposals).
        let client = client_of(fake_gateway(b"", Duration::from_secs(3)), 500 * MS);
        match client.get(b"k") {
            Err(EtcdError::NoQuorum { reason, .. }) => {
                assert!(reason.contains("timeout"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_a_read_left_unanswered_is_sent_again_to_the_next_endpoint() {
        let answer: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
            Content-Length: 78\r\n\r\n{\"header\":{\"revision\":\"7\"},\"succeeded\":true,\
            \"responses\":[{\"response_put\":{}}]}";
        let client = |endpoints: Vec<String>| {
            Client::new(Options {
                endpoints,
                ca_pem: None,
                user: None,
                password: None,
                timeout: 300 * MS,
            })
            .unwrap()
        };
        // A first member that answers nothing, a second that answers.
        let pair = || {
            let silent = fake_gateway(b"", Duration::from_secs(2));
            vec![silent, fake_gateway(answer, Duration::ZERO)]
        };
        let read = Txn::new()
            .when(Compare::absent("a"))
            .then(Op::Range(Range::key("a")))
            .otherwise(Op::Range(Range::key("b")));
        assert!(read.reads_only());
        let started = Instant::now();
        let answer = client(pair()).txn(&read).unwrap();
        assert_eq!((answer.succeeded, answer.revision), (true, 7));
        assert!(started.elapsed() < Duration::from_secs(2));
        let range = client(pair()).range(&Range::key("a")).unwrap();
        assert_eq!(range.revision, 7);

        // A write may have been carried out: it is never sent twice.
        for write in [
            Txn::new().then(Op::put("a", "1")),
            Txn::new()
                .then(Op::Range(Range::key("a")))
                .otherwise(Op::delete("a")),
        ] {
            assert!(!write.reads_only());
            let e = client(pair()).txn(&write).unwrap_err();
            assert!(matches!(e, EtcdError::NoQuorum { .. }), "{e:?}");
        }
        let e = client(pair()).put(b"a", b"1", 0).unwrap_err();
        assert!(matches!(e, EtcdError::NoQuorum { .. }), "{e:?}");
        // With one endpoint, a read is not sent twice to the member that did not answer.
        let silent = fake_gateway(b"", Duration::from_secs(2));
        let started = Instant::now();
        let e = client(vec![silent]).range(&Range::key("a")).unwrap_err();
        assert!(matches!(e, EtcdError::NoQuorum { .. }), "{e:?}");
        assert!(started.elapsed() < 600 * MS, "{:?}", started.elapsed());
    }

    const MS: Duration = Duration::from_millis(1);
}
