//! Several instances on one etcd store (`[store] kind = "etcd"`): the election, and the
//! leader's [`Service`] of each term it leads (recovered, with its reconciler), published for
//! the API while the term lasts; a follower's linearizable reads and its forwarding of changes
//! (and of a page after a request removed lately, which only the leader can place) to the
//! leader.
//!
//! A term-watcher thread (`cluster-terms`) follows the [`Election`]: when this instance leads
//! with term T it opens the store of T ([`Store::open_etcd`], every write fenced on T), builds a
//! `Service` over the configured regions' drivers (built once, shared by every term) and one
//! long-lived [`Metrics`], runs [`reconciler::recover`] exactly as a journal start does, starts
//! that term's [`Reconciler`] and publishes the service. When the term ends (lease lapsed,
//! deposed, etcd cut off) it unpublishes it and stops its reconciler; requests still in flight
//! keep their `Arc<Service>`, whose fenced store refuses their writes and whose
//! `Service::call` no longer calls platforms.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{error, info, warn};
use ureq::Agent;
use ureq::http;
use ureq::unversioned::transport::DefaultConnector;

use crate::config::{Config, DriverKind, MepConfig, StoreConfig};
use crate::error::ApiError;
use crate::etcd::Client;
use crate::http::{FORWARDED, JSON, PROBLEM_JSON, Request, Response};
use crate::leader::{self, Election, Role, Settings, Term};
use crate::mep::agent;
use crate::metrics::{Gauges, Metrics};
use crate::reconciler::{self, Reconciler};
use crate::retry::RetryPolicy;
use crate::service::{Region, Service};
use crate::store::{Fence, Store, StoreError};
use crate::util::{lock, redact};

/// How often the term watcher looks at the election when nothing wakes it.
const WATCH_EVERY: Duration = Duration::from_millis(100);

/// Pause before opening a term's store again after a failure (etcd unreachable).
const RETRY_OPEN: Duration = Duration::from_millis(250);

/// Longest pause before opening a term's store again: the pause doubles from [`RETRY_OPEN`]
/// while the stores of one term keep stopping or failing to open soon after (etcd refusing
/// the writes: a user without the permission, a reconciler writing at once), so that neither
/// etcd nor the log is hammered; a new term, or a store that lasted this long, starts again
/// from [`RETRY_OPEN`].
const RETRY_OPEN_MAX: Duration = Duration::from_secs(5);

/// Bound on the wait for the writer threads of dropped stores at a stop (one etcd call each).
const WRITERS_WITHIN: Duration = Duration::from_secs(3);

/// The largest answer relayed from the leader (its body, in bytes): a change's answer is a
/// few KiB (a creation's view echoes its request, whose record etcd bounds to
/// [`MAX_RECORD_BYTES`](crate::etcd_store::MAX_RECORD_BYTES)); a larger one is
/// answered 502 ([`ApiError::LeaderAnswer`]), with at most this much read.
pub const MAX_FORWARDED_ANSWER: u64 = 64 << 20;

/// The instances' part on this one: election, published service, forwarding.
pub struct Cluster {
    shared: Arc<Shared>,
    watcher: Option<JoinHandle<()>>,
}

/// The leader's service of one term, while it is published.
struct Leading {
    term: Term,
    service: Arc<Service>,
    reconciler: Reconciler,
}

struct Shared {
    client: Arc<Client>,
    advertise_url: String,
    election: Arc<Election>,
    prefix: String,
    regions: Vec<Region>,
    metrics: Arc<Metrics>,
    retry: RetryPolicy,
    max_requests: usize,
    failed_retention: Duration,
    started: Instant,
    current: Mutex<Option<Leading>>,
    /// Why the last opening of a term's store failed, and the term, until one succeeds: what
    /// the 503s of a leader still taking over in that term say.
    lead_error: Mutex<Option<(Term, String)>>,
    stop: AtomicBool,
    /// Forwards changes to the leader's `advertise_url`.
    forward: Forwarding,
}

/// The bound on one etcd call of this instance: [`etcd_timeout_for`] its `lease_ttl_s`.
pub fn etcd_timeout(store: &StoreConfig) -> Duration {
    etcd_timeout_for(store.lease_ttl_s)
}

/// Bounds of [`etcd_timeout_for`].
const ETCD_TIMEOUT_MIN: Duration = Duration::from_millis(200);
const ETCD_TIMEOUT_MAX: Duration = Duration::from_secs(2);

/// The bound on one etcd call under a lease of `lease_ttl_s`: well inside the lease, so that
/// a leader learns in time that it cannot renew: a fifth of it, between 200 ms and 2 s.
pub fn etcd_timeout_for(lease_ttl_s: u64) -> Duration {
    (Duration::from_secs(lease_ttl_s) / 5).clamp(ETCD_TIMEOUT_MIN, ETCD_TIMEOUT_MAX)
}

impl Cluster {
    /// Connects to etcd (lazily: nothing is sent yet), starts campaigning and the term
    /// watcher. `Err` names what in `[store]` cannot be used.
    pub fn start(config: &Config) -> Result<Cluster, String> {
        let store = &config.store;
        let options = crate::etcd_store::etcd_options(store, etcd_timeout(store))?;
        let client = Arc::new(Client::new(options)?);
        let advertise_url = store
            .advertise_url
            .clone()
            .ok_or("[store] advertise_url is required with kind = \"etcd\"")?;
        let settings = Settings {
            prefix: store.prefix.clone(),
            lease_ttl_s: store.lease_ttl_s,
            advertise_url,
        };
        let metrics = Arc::new(Metrics::default());
        let election = Arc::new(Election::start_counting(
            client.clone(),
            &settings,
            metrics.store_errors(),
        ));
        let advertise_url = settings.advertise_url;
        let regions = Region::all(&config.regions);
        let shared = Arc::new(Shared {
            client,
            advertise_url,
            election,
            prefix: store.prefix.clone(),
            regions,
            metrics,
            retry: config.server.retry,
            max_requests: config.server.max_requests,
            failed_retention: config.server.failed_retention,
            started: Instant::now(),
            current: Mutex::new(None),
            lead_error: Mutex::new(None),
            stop: AtomicBool::new(false),
            forward: Forwarding::new(config),
        });
        let watcher = {
            let shared = shared.clone();
            thread::Builder::new()
                .name("cluster-terms".into())
                .spawn(move || watch(&shared))
                .map_err(|e| format!("cannot start the term watcher thread: {e}"))?
        };
        Ok(Cluster {
            shared,
            watcher: Some(watcher),
        })
    }

    /// This instance's role now (a leader whose lease may have lapsed is `Unknown`).
    pub fn role(&self) -> Role {
        self.shared.election.role()
    }

    /// Waits up to `timeout` for a known role: leading with its service published, or
    /// following a known leader. Whether it has one.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.role() {
                Role::Follower { .. } => return true,
                Role::Leader if self.leader_service().is_some() => return true,
                _ => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            thread::sleep((deadline - now).min(Duration::from_millis(20)));
        }
    }

    /// Why the election knows no role, if its last etcd call said.
    pub fn why_unknown(&self) -> Option<String> {
        self.shared.election.why_unknown()
    }

    /// What an instance that knows no leader says, and why when the election's last etcd call
    /// told (a refused password, a TLS failure, no quorum): `detailed` false leaves etcd's
    /// words (its addresses, user, TLS errors) out, for the open `/healthz` of a protected API.
    pub fn no_leader(&self, detailed: bool) -> String {
        explained(
            "no leader known: etcd unreachable or without quorum, or an election under way",
            self.shared.election.why_unknown(),
            detailed,
        )
    }

    /// What a leader that has not published its service yet says: taking over, and why this
    /// term's last attempt failed if one did (`detailed` as for [`no_leader`](Cluster::no_leader)).
    pub fn taking_over(&self, detailed: bool) -> String {
        let term = self.shared.election.term();
        let failed = lock(&self.shared.lead_error)
            .as_ref()
            .filter(|(failed, _)| Some(*failed) == term)
            .map(|(_, e)| format!("the last attempt failed: {e}"));
        explained(
            "this instance is taking over as the leader (recovering the records)",
            failed,
            detailed,
        )
    }

    /// The leader's service of the current term, once recovered and published; `None` when
    /// this instance does not lead (or its term just ended).
    pub fn leader_service(&self) -> Option<Arc<Service>> {
        let term = self.shared.election.term()?;
        let current = lock(&self.shared.current);
        current
            .as_ref()
            .filter(|leading| leading.term == term)
            .map(|leading| leading.service.clone())
    }

    /// This instance's `advertise_url`.
    pub fn advertise_url(&self) -> &str {
        &self.shared.advertise_url
    }

    /// The configured regions in a service without records (regions and OpenAPI answers).
    pub fn regions(&self) -> Service {
        self.over(Store::in_memory())
    }

    /// A service over the configured regions and `store`, for answers that call no platform.
    fn over(&self, store: Store) -> Service {
        Service::with_store(self.shared.region_copies(), store, self.shared.retry)
    }

    /// The metrics shared by every term.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The records now, read from etcd (linearizable) into a service over the configured
    /// regions that calls no platform: a follower's reads.
    pub fn read(&self) -> Result<Service, ApiError> {
        let store = Store::read_etcd(&self.shared.client, &self.shared.prefix)
            .map_err(|e| self.store_error(e))?;
        Ok(self.over(store))
    }

    /// [`read`](Cluster::read) of one request: only its key is read (linearizable); the
    /// service holds that record or none.
    pub fn read_one(&self, id: &str) -> Result<Service, ApiError> {
        let store = Store::in_memory();
        let record = Store::read_etcd_record(&self.shared.client, &self.shared.prefix, id)
            .map_err(|e| self.store_error(e))?;
        if let Some(record) = record {
            store.insert(record).map_err(|e| self.store_error(e))?;
        }
        Ok(self.over(store))
    }

    /// Counts `e` and gives the API's answer to it (503 + `Retry-After` when etcd cannot be
    /// read).
    pub fn store_error(&self, e: StoreError) -> ApiError {
        self.shared.metrics.store_error();
        warn!("etcd store: {e}");
        ApiError::Unavailable {
            detail: e.to_string(),
            request_id: None,
        }
    }

    /// Whether etcd answers now: known from the election while it has a role, else probed.
    pub fn etcd_reachable(&self) -> bool {
        if self.role() != Role::Unknown {
            return true;
        }
        let key = leader::leader_key(&self.shared.prefix);
        match self.shared.client.get(&key) {
            Ok(_) => true,
            Err(_) => {
                self.shared.metrics.store_error();
                false
            }
        }
    }

    /// The gauges of `/metrics`: the leader's records when this instance leads, else none.
    pub fn gauges(&self) -> Gauges {
        let mut gauges = match self.leader_service() {
            Some(service) => service.gauges(),
            None => Gauges {
                state_writable: false,
                ..Gauges::default()
            },
        };
        gauges.uptime_seconds = self.shared.started.elapsed().as_secs_f64();
        gauges.leader = Some(self.role() == Role::Leader);
        gauges
    }

    /// Sends `request` to the leader at `leader_url` (its `advertise_url`) with the same
    /// method, path, query, body, `Authorization` and `Content-Type`, marked
    /// `X-Mec-Plugin-Forwarded: 1`, and gives its answer unchanged: status, `Content-Type`,
    /// `Location`, `Retry-After`, `WWW-Authenticate` and body (at most
    /// [`MAX_FORWARDED_ANSWER`] bytes, read whole before it is relayed).
    pub fn forward(&self, request: &Request, leader_url: &str) -> Result<Response, ApiError> {
        let mut answer = self.send_to_leader(request, leader_url)?;
        let status = answer.status().as_u16();
        relay(&mut answer).map_err(|why| ApiError::LeaderAnswer {
            detail: format!(
                "the leader at {} answered {status}, but its answer cannot be relayed: {why}; \
                 the leader answered, so the change may have been made: read the requests \
                 before retrying",
                redact(leader_url)
            ),
        })
    }

    /// A follower's listing whose `after` names no record of its etcd read (a request removed
    /// lately: the leader remembers where the last ones stood, see `store`'s removed
    /// cursors): the leader's answer to the same request, its body streamed through as it
    /// comes (a page has no bound but its `limit`) with its `Link`, within the bound of a
    /// forwarded change ([`forwarding_timeout`]: a page that takes longer is cut short). `Err`
    /// when the leader could not be asked or its answer is not the API's: the caller answers
    /// from its read.
    pub fn forward_listing(&self, request: &Request, leader_url: &str) -> Result<Response, String> {
        let answer = self
            .send_to_leader(request, leader_url)
            .map_err(|e| e.to_string())?;
        let header = |name: &str| header_of(&answer, name);
        let content_type = api_content_type(header("content-type").as_deref())?;
        let relayed = [
            ("Link", header("link")),
            ("Retry-After", header("retry-after")),
            ("WWW-Authenticate", header("www-authenticate")),
        ];
        let status = answer.status().as_u16();
        let mut body = answer.into_body().into_reader();
        let mut response = Response::stream(status, content_type, move |out| {
            std::io::copy(&mut body, out).map(|_| ())
        });
        for (name, value) in relayed {
            if let Some(value) = value {
                response = response.with_header(name, value);
            }
        }
        Ok(response)
    }

    /// [`forward`](Cluster::forward)'s request to the leader, up to its answer's head.
    fn send_to_leader(
        &self,
        request: &Request,
        leader_url: &str,
    ) -> Result<http::Response<ureq::Body>, ApiError> {
        let path = request.path();
        let target = match request.query() {
            Some(query) => format!("{}{path}?{query}", leader_url.trim_end_matches('/')),
            None => format!("{}{path}", leader_url.trim_end_matches('/')),
        };
        let shown = redact(leader_url);
        let unavailable = |why: String| ApiError::Unavailable {
            detail: format!("the leader at {shown} {why}"),
            request_id: None,
        };
        let mut builder = http::Request::builder()
            .method(request.method.as_str())
            .uri(&target)
            .header(FORWARDED, "1");
        if let Some(authorization) = &request.authorization {
            builder = builder.header("authorization", authorization.as_str());
        }
        if let Some(content_type) = &request.content_type {
            builder = builder.header("content-type", content_type.as_str());
        }
        let forward = self.shared.forward.agent_for(&target);
        let sent = if request.body.is_empty() {
            builder.body(()).map(|r| forward.run(r))
        } else {
            builder.body(request.body.clone()).map(|r| forward.run(r))
        };
        let sent = sent.map_err(|e| unavailable(format!("cannot be sent this request: {e}")))?;
        sent.map_err(|e| {
            if agent::never_left(&e) {
                unavailable(format!("cannot be reached ({e}); nothing was sent"))
            } else {
                // Sent, no answer: not "try again later" (503 with Retry-After would invite a
                // blind retry, and a second creation), but the relay's "may have been made".
                ApiError::LeaderAnswer {
                    detail: format!(
                        "the leader at {shown} did not answer ({e}); the change may or may not \
                         have been made: read the requests before retrying"
                    ),
                }
            }
        })
    }

    /// Stops the term watcher and this term's reconciler; the lease is revoked (the leader key
    /// goes, another instance takes over at once) when the last holder of the election goes.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.join();
        }
        self.shared.unpublish();
        self.shared.wait_for_writers();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// `general`, then `reason` when there is one: itself when `detailed`, else only that the log
/// and the authenticated answers hold it.
fn explained(general: &str, reason: Option<String>, detailed: bool) -> String {
    match reason {
        Some(reason) if detailed => format!("{general}; {reason}"),
        Some(_) => format!("{general} (why: in the log, and in the 503s of authenticated calls)"),
        None => general.to_string(),
    }
}

/// The API's media type a leader's `Content-Type` names (none: JSON).
fn api_content_type(given: Option<&str>) -> Result<&'static str, String> {
    match given {
        Some(JSON) | None => Ok(JSON),
        Some(PROBLEM_JSON) => Ok(PROBLEM_JSON),
        Some(other) => Err(format!("its Content-Type '{other}' is not the API's")),
    }
}

/// The value of the leader's answer's header `name`, when it is text.
fn header_of(answer: &http::Response<ureq::Body>, name: &str) -> Option<String> {
    answer
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The leader's answer as this instance's: status, `Content-Type` (the API's two JSON types),
/// `Location`, `Retry-After`, `WWW-Authenticate` (a 401) and body.
fn relay(answer: &mut http::Response<ureq::Body>) -> Result<Response, String> {
    let header = |name: &str| header_of(answer, name);
    let content_type = api_content_type(header("content-type").as_deref())?;
    let relayed = [
        ("Location", header("location")),
        ("Retry-After", header("retry-after")),
        ("WWW-Authenticate", header("www-authenticate")),
    ];
    let too_large = || format!("its body is larger than the {MAX_FORWARDED_ANSWER} bytes relayed");
    // Refused before a byte of the body is read when its length says so; else read up to the
    // bound (a body without a length, or longer than it said, stops there).
    let length = header("content-length").and_then(|v| v.parse::<u64>().ok());
    if length.is_some_and(|length| length > MAX_FORWARDED_ANSWER) {
        return Err(too_large());
    }
    let status = answer.status().as_u16();
    let body = answer
        .body_mut()
        .with_config()
        .limit(MAX_FORWARDED_ANSWER)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => too_large(),
            e => format!("its body could not be read ({e})"),
        })?;
    let mut response = Response {
        status,
        content_type,
        headers: Vec::new(),
        body,
        stream: None,
    };
    for (name, value) in relayed {
        if let Some(value) = value {
            response = response.with_header(name, value);
        }
    }
    Ok(response)
}

/// Bounds of [`forwarding_timeout`].
const FORWARD_TIMEOUT_MIN: Duration = Duration::from_secs(30);
const FORWARD_TIMEOUT_MAX: Duration = Duration::from_secs(600);

/// The calls of one request counted in [`forwarding_timeout`], whatever `max_calls` allows.
const FORWARD_CALLS_COUNTED: usize = 8;

/// The agents that forward changes, bounded by [`forwarding_timeout`]. `https://` leaders are
/// verified against the certificates of `[server] tls_cert` (the instances' own chain: put
/// the CA that signed them there), else against the host's trust store. Leader URLs are known
/// only at run time: without `tls_cert`, the agent built at start-up trusts nothing, and the
/// one trusting the host's store (which reads it) is built at the first `https://` forward,
/// so that instances advertising `http://` URLs never read it.
struct Forwarding {
    /// Every leader, when `tls_cert` gives the CA; else the `http://` ones.
    agent: Agent,
    /// `https://` leaders without `tls_cert` (`None`: `tls_cert` is set).
    host_trusting: Option<OnceLock<Agent>>,
    timeout: Duration,
}

impl Forwarding {
    fn new(config: &Config) -> Forwarding {
        let ca = config
            .server
            .tls
            .as_ref()
            .map(|tls| tls.cert_pem.as_slice());
        let timeout = forwarding_timeout(config.regions.iter().map(|r| &r.mep));
        Forwarding {
            agent: Forwarding::agent(ca, false, timeout),
            host_trusting: ca.is_none().then(OnceLock::new),
            timeout,
        }
    }

    fn agent(ca: Option<&[u8]>, https: bool, timeout: Duration) -> Agent {
        let (tls, _, _) = agent::tls_trusting(ca, https);
        let config = agent::outbound_config(tls, timeout, 8, 32, None);
        Agent::with_parts(config, DefaultConnector::default(), agent::LiteralResolver)
    }

    /// The agent for a request to `url`.
    fn agent_for(&self, url: &str) -> &Agent {
        match &self.host_trusting {
            Some(lazy) if agent::is_https(url) => {
                lazy.get_or_init(|| Forwarding::agent(None, true, self.timeout))
            }
            _ => &self.agent,
        }
    }
}

/// The bound on a forwarded change: generous enough for a leader's platform calls, i.e. the
/// longest region's `timeout_ms` times its `max_calls` (at most
/// [`FORWARD_CALLS_COUNTED`]) twice (apply, then undo), plus, for an EdgeGallery platform
/// (the one driver that polls), its polls, each a `poll_interval` and then up to `timeout_ms`
/// for the answer (found by an audit: counting the interval only, a follower gave up with a
/// 502 on a creation its leader then finished); between 30 s and 600 s.
pub fn forwarding_timeout<'a>(meps: impl IntoIterator<Item = &'a MepConfig>) -> Duration {
    let longest = meps
        .into_iter()
        .map(|mep| {
            let calls = mep.max_calls.min(FORWARD_CALLS_COUNTED) as u32 * 2;
            let calls = mep.timeout.checked_mul(calls).unwrap_or(Duration::MAX);
            let polls = match mep.driver {
                DriverKind::Edgegallery => mep
                    .poll_interval
                    .saturating_add(mep.timeout)
                    .checked_mul(mep.poll_attempts)
                    .unwrap_or(Duration::MAX),
                _ => Duration::ZERO,
            };
            calls.saturating_add(polls)
        })
        .max()
        .unwrap_or_default();
    longest.clamp(FORWARD_TIMEOUT_MIN, FORWARD_TIMEOUT_MAX)
}

impl Shared {
    fn region_copies(&self) -> Vec<Region> {
        self.regions
            .iter()
            .map(|r| Region {
                config: r.config.clone(),
                driver: r.driver.clone(),
            })
            .collect()
    }

    fn published_term(&self) -> Option<Term> {
        lock(&self.current).as_ref().map(|leading| leading.term)
    }

    /// Sleeps `pause`, or less once the instance stops.
    fn pause(&self, pause: Duration) {
        let until = Instant::now() + pause;
        while !self.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now >= until {
                return;
            }
            thread::sleep((until - now).min(WATCH_EVERY));
        }
    }

    /// Whether the published service's store stopped for good while its term may go on (etcd
    /// refused a batch): its memory may be ahead of etcd, so the term's store is opened again.
    fn published_store_stopped(&self) -> bool {
        let service = lock(&self.current)
            .as_ref()
            .map(|leading| leading.service.clone());
        match service.map(|service| service.writable()) {
            Some(Err(e)) => {
                warn!("the store of this term stopped ({e}); reading it from etcd again");
                true
            }
            _ => false,
        }
    }

    /// Unpublishes the service of the term that ended and stops its reconciler (outside the
    /// lock: it may be finishing a platform call).
    fn unpublish(&self) {
        let ended = lock(&self.current).take();
        if let Some(leading) = ended {
            info!(
                "term of lease {:x} over: its reconciler stops and its service is no longer \
                 published",
                leading.term.lease
            );
            leading.reconciler.stop();
        }
    }

    /// Waits (bounded) until the writer threads of the stores dropped let go of the election,
    /// so that dropping this instance's last holder steps down at once, revoking the lease,
    /// before `stop` returns (not later on a writer thread, or never if the process exits).
    fn wait_for_writers(&self) {
        let deadline = Instant::now() + WRITERS_WITHIN;
        while Arc::strong_count(&self.election) > 1 {
            if Instant::now() >= deadline {
                warn!("stopping: the election is still held; the lease expires by itself");
                return;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Opens the store of `term`, recovers it and publishes its service.
    fn lead(&self, term: Term) -> Result<(), String> {
        let started = Instant::now();
        let fence = Fence {
            election: self.election.clone(),
            term,
        };
        let store = Store::open_etcd(self.client.clone(), &self.prefix, fence)
            .map_err(|e| format!("cannot open the store: {e}"))?;
        store.count_errors_into(self.metrics.store_errors());
        let records = store.len();
        let service = Service::with_store(self.region_copies(), store, self.retry)
            .limit_requests(self.max_requests)
            .retain_failed(self.failed_retention)
            .with_metrics(self.metrics.clone());
        service
            .check_platforms_taken_over()
            .map_err(|e| format!("the configuration does not fit the records: {e}"))?;
        reconciler::recover(&service).map_err(|e| format!("cannot recover: {e}"))?;
        let service = Arc::new(service);
        let reconciler = Reconciler::start(service.clone())
            .map_err(|e| format!("cannot start the reconciler: {e}"))?;
        info!(
            "leading with lease {:x}: {records} record(s) loaded and recovered in {} ms",
            term.lease,
            started.elapsed().as_millis()
        );
        *lock(&self.current) = Some(Leading {
            term,
            service,
            reconciler,
        });
        *lock(&self.lead_error) = None;
        Ok(())
    }
}

/// The term watcher: publishes the service of each term this instance leads, unpublishes it
/// when the term ends.
fn watch(shared: &Shared) {
    // The pause before the next opening of the same term's store, and when it was last opened.
    let mut pause = RETRY_OPEN;
    let mut opened: Option<(Term, Instant)> = None;
    while !shared.stop.load(Ordering::SeqCst) {
        let term = shared.election.term();
        let published = shared.published_term();
        if term != published || (term.is_some() && shared.published_store_stopped()) {
            if published.is_some() {
                shared.unpublish();
            }
            if let Some(term) = term {
                match opened {
                    Some((last, at)) if last == term && at.elapsed() < RETRY_OPEN_MAX => {
                        // Stopped again soon after it opened: wait, longer each time.
                        shared.pause(pause);
                        pause = (pause * 2).min(RETRY_OPEN_MAX);
                        let stopping = shared.stop.load(Ordering::SeqCst);
                        if stopping || shared.election.term() != Some(term) {
                            // The instance stops, or the term ended meanwhile: look again.
                            continue;
                        }
                    }
                    _ => pause = RETRY_OPEN,
                }
                opened = Some((term, Instant::now()));
                if let Err(e) = shared.lead(term) {
                    shared.metrics.store_error();
                    error!("leading with lease {:x}: {e}; trying again", term.lease);
                    *lock(&shared.lead_error) = Some((term, e));
                    continue;
                }
            }
        }
        let leading = shared.published_term().is_some();
        shared
            .election
            .wait_for(WATCH_EVERY, |role| (*role == Role::Leader) != leading);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DriverKind;

    #[test]
    fn the_etcd_timeout_is_a_fifth_of_the_lease_within_its_clamps() {
        let ms = |ttl| etcd_timeout_for(ttl).as_millis();
        // The lower clamp: 1 s gives exactly 200 ms; below it (0, which [store] refuses) too.
        assert_eq!((ms(0), ms(1), ms(2)), (200, 200, 400));
        // The upper one: 10 s gives exactly 2 s; 11 s and the longest lease stay there.
        assert_eq!((ms(9), ms(10), ms(11), ms(60)), (1800, 2000, 2000, 2000));
        assert_eq!(ms(u64::MAX), 2000, "no overflow");
        let store = StoreConfig {
            lease_ttl_s: 5,
            ..StoreConfig::default()
        };
        assert_eq!(etcd_timeout(&store), Duration::from_secs(1));
    }

    #[test]
    fn the_host_store_is_read_for_forwarding_only_at_the_first_https_leader() {
        let config = Config::parse(
            "[[region]]\nid = \"1\"\nlatitude = 45.0\nlongitude = 7.0\nrange_km = 1.0\n[region.mep]\ndriver = \"simulated\"\n",
            "test.toml",
        )
        .unwrap();
        let forwarding = Forwarding::new(&config);
        let roots = |agent: &Agent| match agent.config().tls_config().root_certs() {
            ureq::tls::RootCerts::Specific(certs) => certs.len(),
            other => panic!("unexpected roots {other:?}"),
        };
        let plain = forwarding.agent_for("http://127.0.0.1:1");
        assert_eq!(roots(plain), 0, "an http leader needs no certificate");
        let lazy = forwarding.host_trusting.as_ref().unwrap();
        assert!(lazy.get().is_none(), "not built before an https leader");
        let https = forwarding.agent_for("https://127.0.0.1:1");
        assert!(!std::ptr::eq(plain, https));
        assert!(lazy.get().is_some());
        assert!(std::ptr::eq(
            https,
            forwarding.agent_for("https://leader:8443")
        ));
    }

    /// A platform whose bound in [`forwarding_timeout`] is `timeout_ms` × 2 × min(max_calls,
    /// 8) (LL-MEC: it does not poll, `poll_ms` and `polls` are not counted).
    fn mep(timeout_ms: u64, max_calls: usize, poll_ms: u64, polls: u32) -> MepConfig {
        platform(DriverKind::Llmec, timeout_ms, max_calls, poll_ms, polls)
    }

    /// An EdgeGallery platform: [`mep`]'s bound plus `polls` × (`poll_ms` + `timeout_ms`).
    fn eg(timeout_ms: u64, max_calls: usize, poll_ms: u64, polls: u32) -> MepConfig {
        platform(
            DriverKind::Edgegallery,
            timeout_ms,
            max_calls,
            poll_ms,
            polls,
        )
    }

    fn platform(
        driver: DriverKind,
        timeout_ms: u64,
        max_calls: usize,
        poll_ms: u64,
        polls: u32,
    ) -> MepConfig {
        let mut mep = MepConfig::new(
            driver,
            "http://127.0.0.1:1",
            Duration::from_millis(timeout_ms),
        );
        mep.max_calls = max_calls;
        mep.poll_interval = Duration::from_millis(poll_ms);
        mep.poll_attempts = polls;
        mep
    }

    #[test]
    fn the_forwarding_timeout_covers_the_longest_region_within_its_clamps() {
        let ms = |meps: &[MepConfig]| forwarding_timeout(meps).as_millis();
        // The lower clamp, 30 s: 29.999 s is raised, 30 s is kept, 30.001 s too.
        assert_eq!(ms(&[mep(14_999, 1, 0, 0)]), 30_000, "29.998 s");
        assert_eq!(ms(&[eg(0, 1, 1, 29_999)]), 30_000, "29.999 s");
        assert_eq!(ms(&[mep(15_000, 1, 0, 0)]), 30_000, "exactly 30 s");
        assert_eq!(ms(&[eg(0, 1, 1, 30_001)]), 30_001);
        assert_eq!(ms(&[]), 30_000, "no region");
        // The upper clamp, 600 s: 600 s is kept, 600.001 s is lowered.
        assert_eq!(ms(&[mep(37_500, 8, 0, 0)]), 600_000, "exactly 600 s");
        assert_eq!(ms(&[mep(37_500, 8, 1, 0)]), 600_000, "no polls counted");
        assert_eq!(ms(&[eg(37_500, 8, 1, 1)]), 600_000, "637.501 s");
        assert_eq!(ms(&[eg(30_000, 8, 29_999, 1)]), 539_999);
        // Each EdgeGallery poll may wait its timeout for the answer; LL-MEC does not poll.
        assert_eq!(ms(&[eg(1_000, 1, 100, 40)]), 46_000);
        assert_eq!(ms(&[mep(1_000, 1, 100, 40)]), 30_000);
        // At most 8 calls count: 9 or 100,000 give what 8 do.
        assert_eq!(ms(&[mep(2_000, 8, 0, 0)]), 32_000);
        assert_eq!(ms(&[mep(2_000, 9, 0, 0)]), 32_000);
        assert_eq!(ms(&[mep(2_000, 100_000, 0, 0)]), 32_000);
        assert_eq!(ms(&[mep(2_000, 7, 0, 0)]), 30_000, "28 s");
        // The longest region wins; huge values saturate instead of overflowing.
        let regions = [
            mep(1_000, 1, 0, 0),
            eg(2_000, 1, 100, 10),
            mep(5_000, 2, 0, 0),
        ];
        assert_eq!(ms(&regions), 30_000, "the longest, 25 s, raised to 30 s");
        let regions = [
            mep(30_000, 1, 0, 0),
            eg(2_000, 1, 100, 20),
            mep(5_000, 2, 0, 0),
        ];
        assert_eq!(
            ms(&regions),
            60_000,
            "LL-MEC's 60 s over EdgeGallery's 46 s"
        );
        assert_eq!(ms(&[eg(u64::MAX / 4, 8, u64::MAX / 2, u32::MAX)]), 600_000);
    }
}
