//! Applying and removing a request's rules on its region's platform, atomically: a creation is
//! recorded PENDING, its steps are applied in order (DNS first, then traffic), and if one fails
//! the ones applied are undone in reverse order. Each step is recorded as possibly applied
//! before it is sent. Removals a platform refuses are retried by the
//! [reconciler](crate::reconciler) with exponential backoff until they succeed. Every change of
//! a record goes through one of [`Record`]'s transitions. No lock is held while a platform is
//! called; each call holds a [turn](crate::turns) on its platform rule.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use log::{error, info, warn};

use crate::config::{Config, DriverKind, RegionConfig};
use crate::error::ApiError;
use crate::mep::{self, Applied, Driver, MepError, Step};
use crate::metrics::{Gauges, Metrics, Outcome};
use crate::model::{CreationRequest, Status};
pub use crate::retry::RetryPolicy;
use crate::store::{Page, Record, RemovalClaim, Store, StoreError};
use crate::turns::{Turn, Turns};
use crate::util::{lock, new_uuid, now_millis, redact, same_platform};

/// A configured region and the driver of its platform.
pub struct Region {
    pub config: RegionConfig,
    pub driver: Arc<dyn Driver>,
}

impl Region {
    /// The configured regions, each with the driver its `[region.mep]` names.
    pub fn all(configs: &[RegionConfig]) -> Vec<Region> {
        configs
            .iter()
            .map(|r| Region {
                config: r.clone(),
                driver: mep::build(&r.id, &r.mep),
            })
            .collect()
    }
}

/// Why changes cannot be made durable now.
#[derive(Debug, Clone, PartialEq)]
pub enum StateProblem {
    /// The journal stopped after a failed `fsync`: only a restart helps.
    Stopped(String),
    /// The state directory is full: writes resume once it has room.
    NoSpace(String),
}

/// How a DELETE ended.
#[derive(Debug)]
pub enum Removal {
    /// Every rule is off the platform and the request is forgotten (status DELETED).
    Done(Record),
    /// The platform could not remove them now: the request is DELETING and the reconciler
    /// keeps trying; the record says what is pending.
    Accepted(Record),
}

/// What a DELETE asks for (`DELETE ...?forget=true`, `?adopt=true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Deletion {
    /// Remove the rules from the platform they were applied on, then forget the request.
    #[default]
    Remove,
    /// For a request whose rules cannot be removed (its region is no longer configured, or
    /// its region's platform URL changed since they were applied): drop the record and leave
    /// the rules where they are. Otherwise the same as [`Deletion::Remove`].
    Forget,
    /// For a request whose region's platform URL changed since its rules were applied: the
    /// new URL is the same platform at a new address, so the record is re-pointed to it
    /// (journaled) and its rules are removed there. Otherwise the same as
    /// [`Deletion::Remove`].
    Adopt,
    /// Both `?forget=true` and `?adopt=true`: they contradict each other for a request whose
    /// region's platform URL changed, which is refused (400, the record unchanged); for one
    /// whose region is no longer configured `forget` applies; otherwise the same as
    /// [`Deletion::Remove`].
    ForgetAndAdopt,
}

/// The regions and the records: everything the API operates on.
pub struct Service {
    regions: Vec<Region>,
    pub(crate) store: Store,
    /// Counters and latencies of the API and of platform calls; shared by the services of an
    /// etcd cluster's successive terms ([`Service::with_metrics`]).
    pub metrics: Arc<Metrics>,
    started: Instant,
    pub(crate) retry: RetryPolicy,
    /// Set to wake the reconciler before its next due time: the reconciler
    /// ([`crate::reconciler`]) waits on it, a DELETE that leaves it work rings it. Kept here,
    /// not in the reconciler, so that `service` does not depend on `reconciler`.
    wake: (Mutex<bool>, Condvar),
    /// Applies and removals of one platform rule do not cross (see [`crate::turns`]).
    turns: Turns,
    /// `[server] max_requests`: a creation beyond is refused before anything is recorded.
    max_requests: usize,
    /// `[server] failed_retention_s` (zero: FAILED requests stay until deleted).
    failed_retention: Duration,
    /// Requests with a step whose apply outcome is unknown, and until when it may still land
    /// on the platform (see [`Unsettled`]). Not journaled: rebuilt at start-up.
    unsettled: Mutex<HashMap<Arc<str>, Unsettled>>,
    /// Each region's platform URL (credentials masked), shared by its records.
    platforms: HashMap<String, Arc<str>>,
    /// Each region's other URLs of the same platform (`[region.mep] aliases`, credentials
    /// masked): records applied through one of them are on the current platform.
    aliases: HashMap<String, Vec<Arc<str>>>,
    /// Records whose rules the reconciler leaves alone (applied on another platform than their
    /// region's current one, or planned by another driver), already logged (once per record).
    pub(crate) moved_logged: Mutex<HashSet<Arc<str>>>,
}

/// What a request whose region's driver changed since its rules were applied says, and the
/// two ways out.
pub(crate) fn driver_changed(region_id: &str, driver: DriverKind) -> String {
    format!(
        "its rules were planned by another driver than region '{region_id}''s '{}' (the region's driver was changed): {DRIVER_CHANGED_WAYS_OUT}",
        driver.name()
    )
}

/// The two ways out for requests whose rules another driver planned.
const DRIVER_CHANGED_WAYS_OUT: &str = "they are not removed until the region's earlier driver \
    is configured again, or a DELETE with ?forget=true leaves them where they are";

/// A step whose apply was sent but whose outcome was not seen (timeout, broken exchange, a
/// 5xx but 501 and 505): the platform may still carry it out until `until` (its region's
/// `settle_ms` after it was sent). A removal of it sent before then proves nothing (the
/// platform may answer 200 or 404 and apply the late call afterwards), so the step stays
/// "possibly applied" until a removal is sent after `until`. Only the last step a creation
/// sent can be in that state: each step is sent only after the one before it succeeded.
#[derive(Debug, Clone, Copy)]
struct Unsettled {
    step: usize,
    until: Instant,
}

/// The answer to a change that could not be made durable; `request_id` when the request's
/// record may stay (the answer then names it).
fn state_error(e: StoreError, request_id: Option<&str>) -> ApiError {
    error!("the state could not be made durable: {e}");
    if let StoreError::TooLarge(detail) = e {
        return ApiError::RecordTooLarge { detail };
    }
    if e.is_unavailable() {
        // etcd unreachable or without quorum, or this instance no longer leads: another
        // attempt (here or at the new leader) may succeed.
        return ApiError::Unavailable {
            detail: e.to_string(),
            request_id: request_id.map(str::to_string),
        };
    }
    ApiError::StateWrite {
        detail: e.to_string(),
        no_space: e.is_no_space(),
        request_id: request_id.map(str::to_string),
    }
}

impl Service {
    /// Opens the durable state in `state_dir` and builds the drivers the configuration names.
    /// What a crash left half-done is resolved by [`crate::reconciler::recover`], which
    /// [`App::start`](crate::app::App::start) calls before serving.
    pub fn open(config: &Config) -> Result<Service, StoreError> {
        let started = std::time::Instant::now();
        let (store, stats) = Store::open(&config.server.state_dir, config.server.fsync)?;
        info!(
            "state: {} record(s) from {} journal entries in {} loaded in {} ms{}",
            store.len(),
            stats.entries,
            config.server.state_dir.display(),
            started.elapsed().as_millis(),
            if stats.torn_tail {
                " (a torn last entry was ignored)"
            } else {
                ""
            }
        );
        let mut service =
            Service::with_store(Region::all(&config.regions), store, config.server.retry);
        service.max_requests = config.server.max_requests;
        service.failed_retention = config.server.failed_retention;
        Ok(service)
    }

    /// A service with in-memory records (tests use this to inject drivers).
    pub fn with_regions(regions: Vec<Region>) -> Service {
        Service::with_store(regions, Store::in_memory(), RetryPolicy::default())
    }

    pub fn with_store(regions: Vec<Region>, store: Store, retry: RetryPolicy) -> Service {
        store.index_rules(
            regions
                .iter()
                .map(|r| (r.config.id.as_str(), r.driver.rule_identity())),
        );
        let platforms: HashMap<String, Arc<str>> = regions
            .iter()
            .map(|r| (r.config.id.clone(), Arc::from(redact(&r.config.mep.url))))
            .collect();
        let aliases: HashMap<String, Vec<Arc<str>>> = regions
            .iter()
            .map(|r| {
                let masked = r.config.mep.aliases.iter().map(|a| Arc::from(redact(a)));
                (r.config.id.clone(), masked.collect())
            })
            .collect();
        store.current_platforms(platforms.iter().map(|(id, p)| {
            let names = aliases.get(id).cloned().unwrap_or_default();
            (id.as_str(), p.clone(), names)
        }));
        Service {
            regions,
            store,
            metrics: Arc::new(Metrics::default()),
            started: Instant::now(),
            retry,
            wake: (Mutex::new(false), Condvar::new()),
            turns: Turns::default(),
            max_requests: usize::MAX,
            failed_retention: Duration::ZERO,
            unsettled: Mutex::new(HashMap::new()),
            platforms,
            aliases,
            moved_logged: Mutex::new(HashSet::new()),
        }
    }

    /// [`state_error`], counted in `mec_plugin_store_errors_total` when etcd is unavailable.
    fn state_error(&self, e: StoreError, request_id: Option<&str>) -> ApiError {
        if e.is_unavailable() {
            self.metrics.store_error();
        }
        state_error(e, request_id)
    }

    /// Counts in `metrics` instead of its own (the services of an etcd cluster's successive
    /// terms share one).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Service {
        self.metrics = metrics;
        self
    }

    /// Refuses creations (507) once `max` requests are kept.
    pub fn limit_requests(mut self, max: usize) -> Service {
        self.max_requests = max;
        self
    }

    /// Deletes FAILED requests with nothing on a platform `retention` after their last change
    /// ([`expire_failed`](Service::expire_failed); zero: never).
    pub fn retain_failed(mut self, retention: Duration) -> Service {
        self.failed_retention = retention;
        self
    }

    /// How often [`expire_failed`](Service::expire_failed) is worth running: a quarter of the
    /// retention, between 1 s and a minute (`None`: FAILED requests are kept).
    pub fn expiry_every(&self) -> Option<Duration> {
        (!self.failed_retention.is_zero()).then(|| {
            (self.failed_retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
        })
    }

    /// Deletes the FAILED requests that hold nothing on any platform and have not changed for
    /// `[server] failed_retention_s`, as their DELETE would (nothing is sent): an orchestrator
    /// that retries failed creations would otherwise fill `max_requests` with them, refusing
    /// creations in every region (507) because one platform refuses. Returns how many.
    pub fn expire_failed(&self, now: i64) -> usize {
        if self.failed_retention.is_zero() {
            return 0;
        }
        let before = now - self.failed_retention.as_millis() as i64;
        let expired: Vec<Arc<str>> = self
            .store
            .list(None)
            .iter()
            .filter(|r| r.status == Status::Failed && r.applied == 0 && !r.busy)
            .filter(|r| r.last_modified <= before)
            .map(|r| r.id.clone())
            .collect();
        let mut deleted = 0;
        for id in expired {
            match self.delete_as(&id, Deletion::Remove) {
                Ok(Removal::Done(_)) => deleted += 1,
                Ok(_) => {}
                Err(e) => debug!("request {id}: not expired now: {e}"),
            }
        }
        if deleted > 0 {
            info!(
                "{deleted} FAILED request(s) with nothing on a platform deleted, {} s after they failed ([server] failed_retention_s)",
                self.failed_retention.as_secs()
            );
        }
        deleted
    }

    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    pub fn region(&self, id: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.config.id == id)
    }

    pub fn get(&self, id: &str) -> Option<Record> {
        self.store.get(id)
    }

    pub fn list(&self, region_id: Option<&str>) -> Vec<Arc<Record>> {
        self.store.list(region_id)
    }

    /// Up to `limit` requests (all, or one region's) in creation order after request `after`;
    /// `None` when `after` names no request.
    pub fn page(&self, region_id: Option<&str>, after: Option<&str>, limit: usize) -> Option<Page> {
        self.store.page(region_id, after, limit)
    }

    /// How many requests are recorded.
    pub fn list_len(&self) -> usize {
        self.store.len()
    }

    /// Whether a change could be made durable now ([`Store::writable`]): an etcd leader's
    /// term is still valid; the journal has not stopped.
    pub fn writable(&self) -> Result<(), StoreError> {
        self.store.writable()
    }

    /// Returns once every change made so far is committed ([`Store::settled`]).
    pub fn settled(&self) -> Result<(), StoreError> {
        self.store.settled()
    }

    /// Why changes can no longer be made durable, if so (the journal stopped after a failed
    /// `fsync`; only a restart helps).
    pub fn state_failure(&self) -> Option<String> {
        self.store.failure()
    }

    /// Why changes cannot be made durable now, if so: the journal stopped for good, or the
    /// state directory is full (looked at again first: this ends once it has room).
    pub fn state_problem(&self) -> Option<StateProblem> {
        if let Some(reason) = self.store.failure() {
            return Some(StateProblem::Stopped(reason));
        }
        self.store.no_space().map(StateProblem::NoSpace)
    }

    /// Test hook: stops the journal as a failed `fsync` would.
    #[cfg(test)]
    pub(crate) fn stop_journal(&self, reason: &str) {
        self.store.stop_journal(reason);
    }

    /// Requests whose rules still have to be removed, those being removed now included
    /// ([`Record::has_rules_to_remove`]).
    pub fn backlog(&self) -> usize {
        self.store.count(Record::has_rules_to_remove)
    }

    /// Records a creation request and applies all its rules; returns its id once every rule is
    /// on the platform. On failure, what was applied is undone and the request stays recorded
    /// as FAILED; the error carries its id.
    pub fn create(&self, request: CreationRequest) -> Result<String, ApiError> {
        let region = self
            .region(&request.region_id)
            .ok_or_else(|| ApiError::UnknownRegion {
                region_id: request.region_id.clone(),
            })?;
        let driver = &region.driver;
        let id = new_uuid();
        let steps = driver
            .plan(&id, &request)
            .map_err(|refusal| ApiError::Unsupported {
                region_id: region.config.id.clone(),
                driver: driver.kind().name(),
                detail: refusal.to_string(),
            })?;
        let max_calls = region.config.mep.max_calls;
        if steps.len() > max_calls {
            return Err(ApiError::Unsupported {
                region_id: region.config.id.clone(),
                driver: driver.kind().name(),
                detail: format!(
                    "the request needs {} rule calls on the platform, more than the region's max_calls ({max_calls}); split it",
                    steps.len()
                ),
            });
        }
        let text = serde_json::to_string(&request).expect("a request serialises");
        let steps: Arc<[Step]> = Arc::from(steps);
        // Recorded with the first step already counted: it may be on the platform as soon as
        // it is sent, and the record is durable before that.
        let first = usize::from(!steps.is_empty());
        let mut record = Record::new(
            Arc::from(id.as_str()),
            Arc::from(region.config.id.as_str()),
            Arc::from(text),
            Status::Pending,
            steps.clone(),
            first,
            now_millis(),
        );
        record.platform = self.platforms.get(&region.config.id).cloned();
        // Until the creation ends, a DELETE is refused and the reconciler leaves it alone.
        let claimed = record.claim();
        debug_assert!(claimed, "a new record is nobody's");
        // The first step's turn is taken before the record says the step may be applied; a
        // creation that cannot have it in time is refused with nothing recorded or sent.
        let turn = match steps.first() {
            Some(step) => Some(self.apply_turn(region, step).map_err(|why| {
                warn!("creation in region {} refused: {why}", region.config.id);
                ApiError::Unavailable {
                    detail: format!("{why}; nothing was recorded or sent"),
                    request_id: None,
                }
            })?),
            None => None,
        };
        // Written but not durable (the journal stopped): left to the reconciler like the rest.
        let inserted = self
            .store
            .insert_within(record, self.max_requests)
            .map_err(|e| self.abandon(&id, e))?;
        if !inserted {
            return Err(ApiError::RequestLimit {
                stored: self.store.len(),
                limit: self.max_requests,
            });
        }
        match self.apply_all(&id, region, &steps, turn) {
            Ok(()) => Ok(id),
            Err(ApplyFailure::Platform(answer)) => Err(answer),
            Err(ApplyFailure::State(e)) => Err(self.abandon(&id, e)),
        }
    }

    /// Applies the steps of the PENDING request `id` in order (the first one's turn is
    /// `turn`) and records it CREATED; if one fails, undoes them and records it FAILED.
    fn apply_all(
        &self,
        id: &str,
        region: &Region,
        steps: &[Step],
        mut turn: Option<Turn<'_>>,
    ) -> Result<(), ApplyFailure> {
        let driver = &region.driver;
        let mut failure = None;
        for (k, step) in steps.iter().enumerate() {
            let _turn = match turn.take() {
                Some(first) => first,
                None => match self.apply_turn(region, step) {
                    Ok(next) => {
                        self.store.update(id, |r| r.sending(k))?;
                        next
                    }
                    Err(why) => {
                        let url = self.platforms.get(&region.config.id);
                        let error = MepError::NotSent {
                            url: url.map_or_else(String::new, |u| u.to_string()),
                            reason: why,
                        };
                        failure = Some((step, error));
                        break;
                    }
                },
            };
            match self.call(&region.config.id, "apply", || driver.apply_with_prior(step)) {
                Ok(Applied::Changed) => {}
                Ok(Applied::AlreadyInPlace) => {
                    if self
                        .store
                        .keep_unless_changed_by_another(id, k, now_millis())?
                    {
                        info!(
                            "request {id}: {} was already in place on the platform; its removal will leave it so",
                            step.label()
                        );
                    }
                }
                Err(error) => {
                    if error.is_ambiguous() {
                        self.note_unsettled(id, k, region);
                    } else {
                        self.store.update(id, |r| r.step_off(k))?;
                    }
                    failure = Some((step, error));
                    break;
                }
            }
        }
        // The turn of the failed step is given back here: the undo takes its own.
        if let Some((failed_step, error)) = failure {
            let answer = self.fail_creation(id, region, steps, failed_step, error)?;
            return Err(ApplyFailure::Platform(answer));
        }
        self.store.update(id, |r| r.created(now_millis()))?;
        info!(
            "request {id}: {} rule call(s) applied in region {}",
            steps.len(),
            region.config.id
        );
        Ok(())
    }

    /// `failed_step` of the PENDING request `id` failed with `error`: undoes the steps applied
    /// before it (what cannot be removed now is left to the reconciler) and records the
    /// request FAILED. Returns the answer to the creation.
    fn fail_creation(
        &self,
        id: &str,
        region: &Region,
        steps: &[Step],
        failed_step: &Step,
        error: MepError,
    ) -> Result<ApiError, StoreError> {
        warn!(
            "request {id}: {} failed in region {}: {error}; undoing",
            failed_step.label(),
            region.config.id
        );
        let detail = match self.undo(id, region, steps) {
            Ok(()) => format!(
                "{} failed: {error}; every rule applied before it was removed again",
                failed_step.label()
            ),
            Err(Undo::Platform {
                left,
                step,
                error: undo_error,
            }) => format!(
                "{} failed: {error}; then removing {} failed: {undo_error}; {left} rule call(s) may remain on the platform and are removed in the background",
                failed_step.label(),
                step.label()
            ),
            Err(Undo::Settling { left, step, until }) => format!(
                "{} failed: {error}; {}; {left} rule call(s) may remain on the platform until then",
                failed_step.label(),
                settling(step, until)
            ),
            Err(Undo::State(e)) => return Err(e),
        };
        let retry_at = match self.unsettled_until(id) {
            Some(until) => epoch_millis(until),
            None => self.retry.next_at(1),
        };
        self.store
            .update(id, |r| r.failed(detail, retry_at, now_millis()))?;
        Ok(ApiError::Mep {
            region_id: region.config.id.clone(),
            request_id: Some(id.to_string()),
            error,
        })
    }

    /// A creation or removal that stopped because its state could not be recorded: it is
    /// left to the reconciler (a PENDING creation is rolled back, as a restart would), which
    /// tries again after a backoff. Only runtime fields change, so this writes nothing. The
    /// answer names the request when its record stays (a creation whose first entry was not
    /// written leaves none).
    fn abandon(&self, id: &str, e: StoreError) -> ApiError {
        let stays = self.leave_to_reconciler(id);
        self.state_error(e, stays.then_some(id))
    }

    /// Gives record `id` back to the reconciler after a backoff; whether it is still kept.
    fn leave_to_reconciler(&self, id: &str) -> bool {
        let retry_at = self.retry.next_at(1);
        self.store
            .update(id, |r| r.leave_to_reconciler(retry_at))
            .ok()
            .flatten()
            .is_some()
    }

    /// The turn to apply `step` in `region`, waited for at most the region's `settle_ms` and
    /// `timeout_ms` together: a removal of the rule in flight, then its settle window if its
    /// outcome is unknown. Past that, removals of the rule keep failing on the platform (see
    /// [`crate::turns`]): why the apply is not made.
    fn apply_turn(&self, region: &Region, step: &Step) -> Result<Turn<'_>, String> {
        let mep = &region.config.mep;
        let bound = mep.settle + mep.timeout;
        self.turns
            .apply_within(self.rule_of(region, step), Instant::now() + bound)
            .ok_or_else(|| {
                format!(
                    "{} waited {} ms (the region's settle_ms and timeout_ms) for removals of the \
                     same platform rule, whose outcome the platform left unknown, to settle",
                    step.label(),
                    bound.as_millis()
                )
            })
    }

    /// The fingerprint of the platform rule `step` sets in `region`.
    fn rule_of(&self, region: &Region, step: &Step) -> u64 {
        region
            .driver
            .rule_identity()
            .fingerprint(&region.config.id, step)
    }

    /// Removes every rule of a request from its platform, then forgets the request
    /// ([`Removal::Done`]). If the platform cannot remove them now, the request stays recorded
    /// as DELETING and the reconciler retries ([`Removal::Accepted`]); a DELETE of a request
    /// already DELETING answers the same and retries at once.
    ///
    /// A request whose region is no longer configured, with rules that may be on its platform,
    /// is refused ([`ApiError::RegionGone`], the record unchanged) unless `forget` is set:
    /// then the record is dropped and its rules are left where they are (logged, counted).
    /// The same for a request whose region's platform URL changed since its rules were
    /// applied ([`ApiError::PlatformChanged`]; see [`Service::delete_as`]).
    pub fn delete(&self, id: &str, forget: bool) -> Result<Removal, ApiError> {
        let how = if forget {
            Deletion::Forget
        } else {
            Deletion::Remove
        };
        self.delete_as(id, how)
    }

    /// [`delete`](Service::delete), saying what to do with a request whose rules cannot be
    /// removed from its region's current platform: one whose region is no longer configured
    /// ([`ApiError::RegionGone`] unless [`Deletion::Forget`]), or whose region's platform URL
    /// changed since its rules were applied ([`ApiError::PlatformChanged`] unless
    /// [`Deletion::Forget`], or [`Deletion::Adopt`]: re-pointed to the current platform, then
    /// removed there). Either refusal leaves the record unchanged and calls no platform.
    pub fn delete_as(&self, id: &str, how: Deletion) -> Result<Removal, ApiError> {
        if let Some(forgotten) = self.where_to_remove(id, how)? {
            return Ok(forgotten);
        }
        let record = match self.claim_removal(id)? {
            (RemovalClaim::Claimed, record) => record,
            // Queued: already DELETING, now due for the reconciler (`InUse` was refused).
            (_, record) => {
                self.wake_reconciler();
                return Ok(Removal::Accepted(record));
            }
        };
        let Some(undone) = self.undo_record(&record) else {
            self.store
                .update(id, Record::release)
                .map_err(|e| self.abandon(id, e))?;
            return Err(ApiError::Internal {
                detail: region_gone(&record.region_id),
            });
        };
        match undone {
            Ok(()) => {
                // Whether or not its removal was written, the record may be read back at the
                // next start (a removal not made durable): the answer names it.
                let mut record = self
                    .store
                    .remove(id)
                    .map_err(|e| {
                        self.leave_to_reconciler(id);
                        self.state_error(e, Some(id))
                    })?
                    .unwrap_or(record);
                record.removed(now_millis());
                info!("request {id}: removed from region {}", record.region_id);
                Ok(Removal::Done(record))
            }
            Err(Undo::Platform { left, step, error }) => {
                let at = self.retry.next_at(1);
                let detail = format!(
                    "removing {} failed: {error}; {left} rule call(s) still on the platform; retrying in the background",
                    step.label()
                );
                warn!(
                    "request {id}: {detail} (next attempt in {} ms)",
                    millis_until(at)
                );
                self.accepted(id, record, |r| r.retry(1, at, detail, now_millis()))
            }
            Err(Undo::Settling { left, step, until }) => {
                let detail = format!(
                    "{}; {left} rule call(s) may remain on the platform until then",
                    settling(step, until)
                );
                info!("request {id}: {detail}");
                let until = epoch_millis(until);
                self.accepted(id, record, |r| r.settling(until, detail, now_millis()))
            }
            Err(Undo::State(e)) => Err(self.abandon(id, e)),
        }
    }

    /// Before a DELETE of request `id` claims it: whether its rules can be removed from its
    /// region's current platform (`Ok(None)`: go on; an unknown request is left to the claim).
    /// When they cannot, `how` decides: refused (the record unchanged), forgotten (the
    /// answer), or, for a platform that moved, re-pointed to the current URL (`Ok(None)`).
    fn where_to_remove(&self, id: &str, how: Deletion) -> Result<Option<Removal>, ApiError> {
        let Some(record) = self.store.get(id) else {
            return Ok(None);
        };
        if record.applied == 0 {
            return Ok(None);
        }
        if self.region(&record.region_id).is_none() {
            if matches!(how, Deletion::Forget | Deletion::ForgetAndAdopt) {
                let why = format!("region '{}' is no longer configured", record.region_id);
                return self.forget(id, &why).map(Some);
            }
            return Err(ApiError::RegionGone {
                request_id: id.to_string(),
                region_id: record.region_id.to_string(),
                platform: record.platform.as_deref().map(str::to_string),
            });
        }
        let Some(current) = self.moved(&record) else {
            // Planned by the region's earlier driver: forgetting is the way out that the
            // README gives (or putting the earlier driver back); removing stays refused by the
            // driver, nothing sent.
            if let (Some(driver), Deletion::Forget) = (self.foreign(&record), how) {
                let why = format!(
                    "region '{}' is now driven by '{}', which did not plan its rules",
                    record.region_id,
                    driver.name()
                );
                return self.forget(id, &why).map(Some);
            }
            return Ok(None);
        };
        let recorded = record.platform.as_deref().unwrap_or_default();
        match how {
            Deletion::Forget => {
                let why = format!(
                    "region '{}' is now configured with the platform {current}",
                    record.region_id
                );
                self.forget(id, &why).map(Some)
            }
            Deletion::Adopt => {
                self.adopt(id, recorded, current)?;
                Ok(None)
            }
            Deletion::ForgetAndAdopt => Err(ApiError::BadRequest {
                detail: format!(
                    "request '{id}': query parameters 'forget' and 'adopt' are both true, but its rules were applied on the platform {recorded} and region '{}' is now configured with {current}: give one (adopt: the same platform at a new address, the rules are removed there; forget: another platform, the rules stay where they are)",
                    record.region_id
                ),
            }),
            Deletion::Remove => Err(ApiError::PlatformChanged {
                request_id: id.to_string(),
                region_id: record.region_id.to_string(),
                recorded: recorded.to_string(),
                current: current.to_string(),
            }),
        }
    }

    /// Re-points request `id`, whose rules were applied on `recorded`, to its region's
    /// `current` platform (`DELETE ...?adopt=true`: the same platform at a new address),
    /// journaled, so that its rules are removed there; so are the region's other requests
    /// applied on `recorded` ([`Store::repoint`]).
    fn adopt(&self, id: &str, recorded: &str, current: &Arc<str>) -> Result<(), ApiError> {
        let repointed = self
            .store
            .repoint(id, current, now_millis())
            .map_err(|e| self.state_error(e, Some(id)))?
            .ok_or_else(|| ApiError::RequestNotFound {
                request_id: id.to_string(),
            })?;
        if !repointed {
            return Err(in_use(id));
        }
        // Those re-pointed are no longer moved: a later move is logged again.
        lock(&self.moved_logged)
            .retain(|id| self.store.get(id).is_some_and(|r| self.moved(&r).is_some()));
        // The region's other requests re-pointed with it may be waiting for removal.
        self.wake_reconciler();
        warn!(
            "request {id}: re-pointed on request (DELETE ?adopt=true) from the platform {recorded}, on which its rules were applied, to {current}, its region's current URL, taken for the same platform (as are the region's other requests applied on {recorded}); its rules are removed there"
        );
        Ok(())
    }

    /// The current platform URL of `record`'s region when `record` holds steps applied on
    /// another one (the region's `url` changed since): they must not be removed there, nor
    /// taken as removed. A record that did not record its platform, or recorded one of the
    /// region's `aliases`, counts as on the current one; one whose region is no longer
    /// configured is [`ApiError::RegionGone`]'s case.
    pub(crate) fn moved(&self, record: &Record) -> Option<&Arc<str>> {
        if record.applied == 0 {
            return None;
        }
        let recorded = record.platform.as_deref()?;
        let current = self.platforms.get(&*record.region_id)?;
        let alias = self
            .aliases
            .get(&*record.region_id)
            .is_some_and(|names| names.iter().any(|a| same_platform(a, recorded)));
        (!same_platform(current, recorded) && !alias).then_some(current)
    }

    /// Refuses records that a configured region could take rules away from: a CREATED request
    /// of a region no longer configured whose rules are on the platform (its recorded URL, or
    /// an alias) that another configured region now drives with the same driver (its steps
    /// are that driver's). Rules are shared per region, so that region's DELETEs would remove
    /// rules the request still holds (a region renamed, or its platform given to another).
    /// Checked at start and by each etcd leader before it recovers.
    pub fn check_platforms_taken_over(&self) -> Result<(), String> {
        for record in self.store.list(None) {
            if record.status != Status::Created
                || record.applied == 0
                || self.region(&record.region_id).is_some()
            {
                continue;
            }
            let Some(platform) = record.platform.as_deref() else {
                continue;
            };
            let taker = self.regions.iter().find(|region| {
                // A simulated platform is each region's own, in this process.
                if region.driver.kind() == DriverKind::Simulated {
                    return false;
                }
                let id = &*region.config.id;
                let on = self
                    .platforms
                    .get(id)
                    .is_some_and(|p| same_platform(p, platform))
                    || self
                        .aliases
                        .get(id)
                        .is_some_and(|names| names.iter().any(|a| same_platform(a, platform)));
                on && record.steps[..record.applied]
                    .iter()
                    .all(|step| region.driver.plans(step))
            });
            if let Some(region) = taker {
                return Err(format!(
                    "request {} of region '{}', which is no longer configured, holds {} rule call(s) on the platform {platform}, which region '{}' now drives with the same driver: a DELETE in region '{}' would remove rules this request still holds. Start with region '{}' configured again in its place and DELETE that region's requests (their rules are removed) before giving its platform to another region; to keep the requests and their rules, keep the region's id",
                    record.id,
                    record.region_id,
                    record.applied,
                    region.config.id,
                    region.config.id,
                    record.region_id
                ));
            }
        }
        Ok(())
    }

    /// The driver of `record`'s region when one of its applied steps was planned by another
    /// driver (the region's `driver` changed since): the current one cannot remove it, and
    /// must not take it as removed. `None` for a region no longer configured.
    pub(crate) fn foreign(&self, record: &Record) -> Option<DriverKind> {
        let region = self.region(&record.region_id)?;
        let driver = &region.driver;
        record.steps[..record.applied]
            .iter()
            .any(|step| !driver.plans(step))
            .then(|| driver.kind())
    }

    /// Logs `why`, once per record, when the reconciler leaves `record`'s rules alone (applied
    /// on another platform than its region's current one, or planned by another driver).
    pub(crate) fn log_left_alone_once(&self, record: &Record, why: &str) {
        if lock(&self.moved_logged).insert(record.id.clone()) {
            warn!("request {}: {why}", record.id);
        }
    }

    /// Per configured region whose platform URL changed: how many records hold rules applied
    /// on an earlier URL, and those URLs (at start-up, one warning per region).
    pub fn moved_records(&self) -> BTreeMap<Arc<str>, (usize, BTreeSet<Arc<str>>)> {
        let mut moved: BTreeMap<Arc<str>, (usize, BTreeSet<Arc<str>>)> = BTreeMap::new();
        for record in self.list(None) {
            if self.moved(&record).is_none() {
                continue;
            }
            let (count, earlier) = moved.entry(record.region_id.clone()).or_default();
            *count += 1;
            earlier.extend(record.platform.clone());
        }
        moved
    }

    /// Logs one warning per region whose platform URL changed while records hold rules applied
    /// on an earlier one (start-up and each etcd leader's recovery).
    pub fn warn_moved_regions(&self) {
        let mut foreign: BTreeMap<Arc<str>, usize> = BTreeMap::new();
        for record in self.store.list(None) {
            if self.moved(&record).is_none() && self.foreign(&record).is_some() {
                *foreign.entry(record.region_id.clone()).or_default() += 1;
            }
        }
        for (region, count) in foreign {
            let driver = self.region(&region).map(|r| r.driver.kind());
            warn!(
                "region '{region}': {count} request(s) hold rules planned by another driver than '{}': {DRIVER_CHANGED_WAYS_OUT}",
                driver.map_or("", DriverKind::name),
            );
        }
        for (region, (count, earlier)) in self.moved_records() {
            let earlier: Vec<&str> = earlier.iter().map(|p| &**p).collect();
            warn!(
                "region '{region}': {count} request(s) hold rules applied on {} but the region is now configured with {}; they are neither removed from it nor taken as removed: DELETE each with ?adopt=true if that is the same platform at a new address (the rules are removed there), or with ?forget=true if not (the rules stay where they are); or set the region's url back",
                earlier.join(", "),
                self.platforms.get(&*region).map_or("", |p| p)
            );
        }
    }

    /// A DELETE takes record `id` ([`Record::claim_removal`]): what it found, and the record
    /// as it is now. A record in use is refused.
    fn claim_removal(&self, id: &str) -> Result<(RemovalClaim, Record), ApiError> {
        let now = now_millis();
        let (claim, record) = self
            .store
            .update(id, |r| (r.claim_removal(now), r.clone()))
            .map_err(|e| {
                // Only a failed fsync (which stops the journal) leaves the claim made: one
                // that was not written leaves the record as it was, maybe claimed by another
                // caller since, so it is not released here.
                if self.store.failure().is_some() {
                    self.abandon(id, e)
                } else {
                    self.state_error(e, Some(id))
                }
            })?
            .ok_or_else(|| ApiError::RequestNotFound {
                request_id: id.to_string(),
            })?;
        if claim == RemovalClaim::InUse {
            return Err(in_use(id));
        }
        Ok((claim, record))
    }

    /// A DELETE that could not finish now ends with `change` (which gives the record back):
    /// the reconciler takes over, woken now. `record` answers if the record is gone.
    fn accepted(
        &self,
        id: &str,
        record: Record,
        change: impl FnOnce(&mut Record),
    ) -> Result<Removal, ApiError> {
        let record = self
            .store
            .update(id, |r| {
                change(r);
                r.clone()
            })
            .map_err(|e| self.abandon(id, e))?
            .unwrap_or(record);
        self.wake_reconciler();
        Ok(Removal::Accepted(record))
    }

    /// Drops the record of request `id`, whose rules cannot be removed (`why`: its region is no
    /// longer configured, or its platform URL or driver changed), leaving its rules where they are
    /// (`DELETE ...?forget=true`). One re-pointed since `why` was found (a concurrent
    /// `?adopt=true`) is removed as a plain DELETE removes it.
    fn forget(&self, id: &str, why: &str) -> Result<Removal, ApiError> {
        let not_found = || ApiError::RequestNotFound {
            request_id: id.to_string(),
        };
        let claimed = self
            .store
            .update(id, Record::claim)
            .map_err(|e| self.state_error(e, Some(id)))?
            .ok_or_else(not_found)?;
        if !claimed {
            return Err(in_use(id));
        }
        // Checked again on the claimed record (which nothing re-points now): a concurrent
        // `?adopt=true` of another request may have re-pointed it since the caller looked, and
        // released to it rules that only its removal takes off. Removed as usual then.
        let now = self.store.get(id).ok_or_else(not_found)?;
        if self.region(&now.region_id).is_some()
            && self.moved(&now).is_none()
            && self.foreign(&now).is_none()
        {
            self.store
                .update(id, Record::release)
                .map_err(|e| self.state_error(e, Some(id)))?;
            return self.delete_as(id, Deletion::Remove);
        }
        let mut record = self
            .store
            .remove(id)
            .map_err(|e| self.abandon(id, e))?
            .ok_or_else(not_found)?;
        self.lock_unsettled().remove(id);
        lock(&self.moved_logged).remove(id);
        self.metrics.forgotten();
        warn!(
            "request {id}: forgotten on request (DELETE ?forget=true); {why}, and {} rule call(s) may remain on the platform {}",
            record.applied,
            record.platform.as_deref().unwrap_or("(URL not recorded)")
        );
        record.forgotten(now_millis());
        Ok(Removal::Done(record))
    }

    /// Makes the reconciler look for work now.
    pub fn wake_reconciler(&self) {
        let (flag, condvar) = &self.wake;
        *lock(flag) = true;
        condvar.notify_all();
    }

    /// Waits up to `timeout` for [`wake_reconciler`](Service::wake_reconciler) (the
    /// reconciler's sleep between passes); a wake-up rung while it was not waiting ends the
    /// next wait at once.
    pub(crate) fn wait_for_work(&self, timeout: Duration) {
        let (flag, condvar) = &self.wake;
        let woken = lock(flag);
        let (mut woken, _) = condvar
            .wait_timeout_while(woken, timeout, |w| !*w)
            .unwrap_or_else(PoisonError::into_inner);
        *woken = false;
    }

    /// Undoes `record`'s applied steps on its region's platform; `None` when the region is no
    /// longer configured and steps may be on its platform (a record with nothing applied needs
    /// no region).
    pub(crate) fn undo_record<'a>(&self, record: &'a Record) -> Option<Result<(), Undo<'a>>> {
        match self.region(&record.region_id) {
            Some(region) => Some(self.undo(&record.id, region, &record.steps)),
            None if record.applied == 0 => Some(Ok(())),
            None => None,
        }
    }

    /// Removes the applied steps of a request in reverse order, recording each removal; a step
    /// another request of the region also holds stays on the platform. On a platform failure,
    /// says how many steps may remain and which removal failed.
    fn undo<'a>(&self, id: &str, region: &Region, steps: &'a [Step]) -> Result<(), Undo<'a>> {
        let Some(record) = self.store.get(id) else {
            return Ok(());
        };
        debug_assert!(
            self.moved(&record).is_none(),
            "request {id}: its rules are on another platform than the region's current one"
        );
        for k in (0..record.applied).rev() {
            let _turn = self.turns.remove(self.rule_of(region, &steps[k]));
            // In place before this request: left as it was. Read under the turn, not from
            // `record`: a release may have handed this request the removal meanwhile.
            if self.store.keeps(id, k) {
                self.step_off(id, k).map_err(Undo::State)?;
                continue;
            }
            // This request's apply of it may still land: another request's hold does not
            // cover that (it may be removed before the late apply lands), so this one keeps
            // the step until the window has passed. Holders cannot change under the turn.
            if let Some(until) = self.unsettled_step_until(id, k) {
                if self.store.is_shared(id, k) {
                    return Err(Undo::Settling {
                        left: k + 1,
                        step: &steps[k],
                        until,
                    });
                }
            }
            if self
                .store
                .release_if_shared(id, k, now_millis())
                .map_err(Undo::State)?
            {
                continue;
            }
            let sent = Instant::now();
            self.call(&region.config.id, "remove", || {
                region.driver.remove(&steps[k])
            })
            .map_err(|error| {
                if error.is_ambiguous() {
                    // Set under the turn: no apply of the rule slips in before it.
                    self.removal_may_land(region, &steps[k]);
                }
                Undo::Platform {
                    left: k + 1,
                    step: &steps[k],
                    error,
                }
            })?;
            if let Some(until) = self.settles_after(id, k, sent) {
                return Err(Undo::Settling {
                    left: k + 1,
                    step: &steps[k],
                    until,
                });
            }
            self.step_off(id, k).map_err(Undo::State)?;
        }
        self.lock_unsettled().remove(id);
        Ok(())
    }

    fn lock_unsettled(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Unsettled>> {
        // Every change is one insert or remove: consistent even after a panic elsewhere.
        lock(&self.unsettled)
    }

    /// Step `k` of request `id` was sent now (or, at start-up, may have been sent up to now)
    /// and its outcome is unknown: it may land on `region`'s platform for `settle_ms`.
    pub(crate) fn note_unsettled(&self, id: &str, k: usize, region: &Region) {
        let until = Instant::now() + region.config.mep.settle;
        self.lock_unsettled()
            .insert(Arc::from(id), Unsettled { step: k, until });
    }

    /// A removal of `step` in `region` may have been sent up to now (by an earlier run, or
    /// term) with its outcome unknown: applies of its rule wait for the region's `settle_ms`.
    pub(crate) fn removal_may_land(&self, region: &Region, step: &Step) {
        let until = Instant::now() + region.config.mep.settle;
        self.turns
            .removal_may_land(self.rule_of(region, step), until);
    }

    /// Until when a step of request `id` may still land on its platform, if one may.
    fn unsettled_until(&self, id: &str) -> Option<Instant> {
        self.lock_unsettled()
            .get(id)
            .map(|u| u.until)
            .filter(|until| *until > Instant::now())
    }

    /// Until when step `k` of request `id` may still land on its platform, if it may.
    fn unsettled_step_until(&self, id: &str, k: usize) -> Option<Instant> {
        self.lock_unsettled()
            .get(id)
            .filter(|u| u.step == k && u.until > Instant::now())
            .map(|u| u.until)
    }

    /// A removal of step `k` of request `id`, sent at `sent`, succeeded: if it was sent while
    /// that step's apply could still land, when to send it again; else `None` (and the step
    /// is settled).
    fn settles_after(&self, id: &str, k: usize, sent: Instant) -> Option<Instant> {
        let mut unsettled = self.lock_unsettled();
        let entry = *unsettled.get(id)?;
        if k != entry.step {
            return None;
        }
        if sent < entry.until {
            return Some(entry.until);
        }
        unsettled.remove(id);
        None
    }

    /// Makes one platform call, counting it in the metrics.
    fn call<T>(
        &self,
        region: &str,
        operation: &'static str,
        f: impl FnOnce() -> Result<T, MepError>,
    ) -> Result<T, MepError> {
        // Recorded first or not called: an instance that can no longer record (a deposed or
        // cut-off etcd leader, a stopped journal) never calls a platform.
        if let Err(e) = self.store.writable() {
            if e.is_unavailable() {
                self.metrics.store_error();
            }
            let url = self.platforms.get(region).map_or("", |u| u).to_string();
            return Err(MepError::NotSent {
                url,
                reason: format!("not sent: the state cannot be recorded ({e})"),
            });
        }
        let started = Instant::now();
        let result = f();
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(e) => outcome_of(e),
        };
        self.metrics
            .southbound(region, operation, outcome, started.elapsed());
        result
    }

    /// Values for the metrics exposition, read now.
    pub fn gauges(&self) -> Gauges {
        let mut gauges = Gauges {
            reconciler_backlog: self.backlog(),
            state_writable: self.state_problem().is_none(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            ..Gauges::default()
        };
        for status in [
            Status::Pending,
            Status::Created,
            Status::Failed,
            Status::Deleting,
        ] {
            let count = self.store.count(|r| r.status == status);
            gauges.requests_by_status.insert(status.name(), count);
        }
        gauges
    }

    /// Records that step `k` of request `id` is off the platform ([`Record::step_off`]).
    fn step_off(&self, id: &str, k: usize) -> Result<(), StoreError> {
        self.store.update(id, |r| r.step_off(k)).map(|_| ())
    }
}

/// Why the rules of a request in region `region_id` cannot be removed.
pub(crate) fn region_gone(region_id: &str) -> String {
    format!("region '{region_id}' is no longer configured; its rules cannot be removed")
}

/// What the detail of a request says while `step`'s removal waits for the settle window.
pub(crate) fn settling(step: &Step, until: Instant) -> String {
    format!(
        "the apply of {} may still land on the platform (its outcome is unknown; the platform may still carry it out), so it is removed (again) after the settle window, in {} ms",
        step.label(),
        until.saturating_duration_since(Instant::now()).as_millis()
    )
}

/// `at` in milliseconds since the Unix epoch, rounded up, so that once the clock says so,
/// `at` has passed: a removal due at the end of a settle window and taken up a millisecond
/// early was sent within the window, and then once more (found by an audit: three removals
/// after a restart where two were due).
pub(crate) fn epoch_millis(at: Instant) -> i64 {
    let left = at.saturating_duration_since(Instant::now());
    // `now_millis` drops up to a millisecond of the present: one more.
    now_millis() + left.as_nanos().div_ceil(1_000_000) as i64 + 1
}

/// Milliseconds from now until `at` (ms since the Unix epoch); 0 if it has passed.
pub(crate) fn millis_until(at: i64) -> u64 {
    (at - now_millis()).max(0) as u64
}

/// The refusal of an operation on request `id` while another works on it.
fn in_use(id: &str) -> ApiError {
    ApiError::Conflict {
        request_id: id.to_string(),
        detail: "its rules are being applied or removed right now; retry once that finishes".into(),
    }
}

/// Why a creation's steps did not all end up on the platform.
enum ApplyFailure {
    /// A platform call failed: the steps were undone (what could not be is left to the
    /// reconciler) and the request is recorded FAILED; the answer to give.
    Platform(ApiError),
    /// A change could not be recorded: the creation is left to the reconciler.
    State(StoreError),
}

impl From<StoreError> for ApplyFailure {
    fn from(e: StoreError) -> Self {
        ApplyFailure::State(e)
    }
}

/// Why an undo stopped.
pub(crate) enum Undo<'a> {
    /// The platform failed to remove `step`; `left` steps may remain.
    Platform {
        left: usize,
        step: &'a Step,
        error: MepError,
    },
    /// `step`'s removal succeeded before its apply (whose outcome is unknown) settled, or was
    /// held back since another request holds its rule: it is sent again (or released) after
    /// `until`; `left` steps may remain until then.
    Settling {
        left: usize,
        step: &'a Step,
        until: Instant,
    },
    /// A removal could not be recorded.
    State(StoreError),
}

/// How a failed platform call is counted in the metrics: a read before a change by the read's
/// own failure; a gateway's 504 as a timeout, as the northbound answer says (found by an
/// audit: it was counted `refused` beside a 504 "timed out").
fn outcome_of(e: &MepError) -> Outcome {
    match e {
        MepError::Refused { status: 504, .. } => Outcome::Timeout,
        MepError::Refused { .. } => Outcome::Refused,
        MepError::Unreachable { .. } | MepError::NotSent { .. } => Outcome::Unreachable,
        MepError::Timeout { .. } => Outcome::Timeout,
        MepError::BeforeChange(e) => outcome_of(e),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #[test]
    fn a_gateways_504_is_counted_as_a_timeout_and_other_refusals_as_refusals() {
        use super::{MepError, Outcome, outcome_of};
        let refused = |status| MepError::Refused {
            url: "u".into(),
            status,
            detail: String::new(),
        };
        assert!(matches!(outcome_of(&refused(504)), Outcome::Timeout));
        assert!(matches!(outcome_of(&refused(502)), Outcome::Refused));
        let read_first = MepError::BeforeChange(Box::new(refused(504)));
        assert!(matches!(outcome_of(&read_first), Outcome::Timeout));
    }

    use std::collections::BTreeSet;
    use std::sync::{Mutex, mpsc};
    use std::time::Duration;

    use super::*;
    use crate::config::{DriverKind, MepConfig};
    use crate::mep::Refusal;
    use crate::model::parse_creation;

    /// A platform that keeps steps by label and fails the calls it is told to. Every step it
    /// plans is one platform rule for the service (same target and body), so two requests
    /// with a label in common share that rule.
    #[derive(Default)]
    pub(crate) struct Scripted {
        pub(crate) on: Mutex<BTreeSet<String>>,
        pub(crate) fail_apply: Mutex<Option<(String, MepError)>>,
        pub(crate) fail_remove: Mutex<Option<String>>,
        /// The next apply (or removal) says it has started, then waits to be let go.
        pub(crate) apply_gate: Mutex<Option<Gate>>,
        pub(crate) remove_gate: Mutex<Option<Gate>>,
        /// The next apply takes effect, says so, then waits to be let go before it answers.
        pub(crate) answer_gate: Mutex<Option<Gate>>,
        /// Answers an apply of a rule that is on already [`Applied::AlreadyInPlace`] (as a
        /// MEC 011 platform does), when set; otherwise every apply is a change.
        pub(crate) reports_prior: std::sync::atomic::AtomicBool,
        /// The label of every removal it was asked for, in order.
        pub(crate) removals: Mutex<Vec<String>>,
    }

    /// Tells `entered` that a call started, waits on `release`, then answers (refusing when
    /// `refuse`).
    pub(crate) struct Gate {
        entered: mpsc::Sender<()>,
        release: mpsc::Receiver<()>,
        refuse: bool,
    }

    impl Gate {
        /// Puts a gate in `slot`; returns the receiver of its "entered" and the sender that
        /// lets the call go.
        pub(crate) fn install(
            slot: &Mutex<Option<Gate>>,
            refuse: bool,
        ) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
            let (entered, entered_rx) = mpsc::channel();
            let (release_tx, release) = mpsc::channel();
            *slot.lock().unwrap() = Some(Gate {
                entered,
                release,
                refuse,
            });
            (entered_rx, release_tx)
        }

        /// Passes the gate; whether the call is refused.
        fn pass(gate: &Mutex<Option<Gate>>) -> bool {
            let Some(gate) = gate.lock().unwrap().take() else {
                return false;
            };
            gate.entered.send(()).unwrap();
            gate.release.recv().unwrap();
            gate.refuse
        }
    }

    pub(crate) fn unavailable() -> MepError {
        MepError::Refused {
            url: "u".into(),
            status: 503,
            detail: String::new(),
        }
    }

    impl Driver for Scripted {
        fn kind(&self) -> DriverKind {
            DriverKind::Simulated
        }
        fn plan(&self, _: &str, request: &CreationRequest) -> Result<Vec<Step>, Refusal> {
            let dns = request.dns_rules().iter().map(|d| d.dns_rule_id.clone());
            let traffic = request
                .traffic_rules()
                .iter()
                .map(|t| t.traffic_rule_id.clone());
            // One platform rule per label: requests using the same label share it.
            Ok(dns
                .chain(traffic)
                .map(|label| Step::new(&label, "/x", &format!(r#"{{"rule":"{label}"}}"#)))
                .collect())
        }
        fn apply(&self, step: &Step) -> Result<(), MepError> {
            self.apply_with_prior(step).map(|_| ())
        }
        fn apply_with_prior(&self, step: &Step) -> Result<Applied, MepError> {
            if Gate::pass(&self.apply_gate) {
                return Err(unavailable());
            }
            if let Some((label, e)) = self.fail_apply.lock().unwrap().clone() {
                if label == step.label() {
                    if e.is_ambiguous() {
                        self.on.lock().unwrap().insert(step.label().to_string());
                    }
                    return Err(e);
                }
            }
            let new = self.on.lock().unwrap().insert(step.label().to_string());
            if Gate::pass(&self.answer_gate) {
                return Err(unavailable());
            }
            let prior = self.reports_prior.load(std::sync::atomic::Ordering::SeqCst);
            Ok(if prior && !new {
                Applied::AlreadyInPlace
            } else {
                Applied::Changed
            })
        }
        fn plans(&self, step: &Step) -> bool {
            step.target() == "/x"
        }
        fn remove(&self, step: &Step) -> Result<(), MepError> {
            self.removals.lock().unwrap().push(step.label().to_string());
            if Gate::pass(&self.remove_gate) {
                return Err(unavailable());
            }
            if self.fail_remove.lock().unwrap().as_deref() == Some(step.label()) {
                return Err(MepError::Unreachable {
                    url: "u".into(),
                    reason: "down".into(),
                });
            }
            self.on.lock().unwrap().remove(step.label());
            Ok(())
        }
    }

    pub(crate) fn service() -> (Service, Arc<Scripted>) {
        service_with(Store::in_memory())
    }

    pub(crate) fn service_with(store: Store) -> (Service, Arc<Scripted>) {
        service_settling(store, Duration::ZERO)
    }

    /// A service whose region's settle window is `settle`.
    pub(crate) fn service_settling(store: Store, settle: Duration) -> (Service, Arc<Scripted>) {
        service_on(store, "simulated:", settle)
    }

    /// The records of `s` in a service whose region "2" is configured with the platform URL
    /// `url` (as after a restart with the region's `url` changed), with a fresh platform.
    pub(crate) fn moved_to(s: Service, url: &str) -> (Service, Arc<Scripted>) {
        service_on(s.store, url, Duration::ZERO)
    }

    /// A service whose region "2" has the platform at `url` with the settle window `settle`.
    fn service_on(store: Store, url: &str, settle: Duration) -> (Service, Arc<Scripted>) {
        let driver = Arc::new(Scripted::default());
        let mut mep = MepConfig::new(DriverKind::Simulated, url, Duration::from_secs(1));
        mep.settle = settle;
        let config = RegionConfig {
            id: "2".into(),
            description: String::new(),
            latitude: 0.0,
            longitude: 0.0,
            altitude: 0.0,
            range_km: 1.0,
            mep,
        };
        let regions = vec![Region {
            config,
            driver: driver.clone(),
        }];
        (
            Service::with_store(regions, store, RetryPolicy::default()),
            driver,
        )
    }

    /// Runs `f` on the service on another thread.
    pub(crate) fn on_thread<T: Send + 'static>(
        s: &Arc<Service>,
        f: impl FnOnce(&Service) -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let s = s.clone();
        std::thread::spawn(move || f(&s))
    }

    /// Records and the rules held on the platform agree: every rule on it is covered by a
    /// record's applied steps, and every CREATED record's rules are on it.
    pub(crate) fn agree(s: &Service, d: &Scripted) {
        let records = s.list(None);
        for label in on(d) {
            assert!(
                records.iter().any(|r| r.applied > 0),
                "rule {label} is on the platform, but no record holds it: {records:?}"
            );
        }
        for r in records.iter().filter(|r| r.status == Status::Created) {
            assert_eq!(on(d).len(), 1, "{} is CREATED but its rule is gone", r.id);
        }
    }

    /// A durable service in a fresh state directory.
    pub(crate) fn durable(name: &str) -> (Service, Arc<Scripted>, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("mec-service-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (store, _) = Store::open(&dir, true).unwrap();
        let (s, d) = service_with(store);
        (s, d, dir)
    }

    /// Makes the `n`th next journal append on this thread fail.
    pub(crate) fn fail_append_in(n: u32) {
        crate::journal::FAIL_APPEND_IN.with(|c| c.set(n));
    }

    pub(crate) fn request(dns_ids: &[&str]) -> CreationRequest {
        let rules: Vec<String> = dns_ids
            .iter()
            .map(|id| format!(r#"{{"dnsRuleId":"{id}","domainName":"a.b","ipAddressType":"IP_V4","ipAddress":"1.2.3.4"}}"#))
            .collect();
        parse_creation(
            format!(r#"{{"RegionId":"2","appDNSRule":[{}]}}"#, rules.join(",")).as_bytes(),
        )
        .unwrap()
    }

    pub(crate) fn on(d: &Scripted) -> Vec<String> {
        d.on.lock().unwrap().iter().cloned().collect()
    }

    /// The id of the request a failed creation recorded (its error names it).
    pub(crate) fn recorded_id(e: ApiError) -> String {
        let ApiError::Mep {
            request_id: Some(id),
            ..
        } = e
        else {
            panic!("{e:?}")
        };
        id
    }

    #[test]
    fn an_unavailable_etcd_store_answers_503_with_retry_after_and_is_counted() {
        let (s, _) = service();
        let e = s.state_error(
            StoreError::Unavailable("etcd unreachable".into()),
            Some("x"),
        );
        let response = e.to_response(crate::model::ApiStyle::Spec);
        assert_eq!(response.status, 503);
        assert!(response.header("Retry-After").is_some());
        assert!(e.to_string().contains("etcd unreachable"), "{e}");
        // The record of the creation may stay: the answer names it, as a journal error does.
        assert_eq!(e.request_id(), Some("x"));
        assert_eq!(
            response.header("Location"),
            Some("/MEC/v1/service/requests/x")
        );
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(body["RequestId"], "x", "{body}");
        assert!(
            body["detail"].as_str().unwrap().contains("request x"),
            "{body}"
        );
        let gauges = Gauges {
            leader: Some(true),
            ..Gauges::default()
        };
        let text = s.metrics.render(&gauges);
        assert!(
            text.contains("\nmec_plugin_store_errors_total 1\n"),
            "{text}"
        );
        assert!(text.contains("\nmec_plugin_leader 1\n"), "{text}");
        let journal = s.metrics.render(&Gauges::default());
        assert!(
            !journal.contains("mec_plugin_leader"),
            "not shown with the journal"
        );
    }

    #[test]
    fn a_record_too_large_for_etcd_answers_413_not_a_retry() {
        let e = state_error(StoreError::TooLarge("request x: too large".into()), None);
        let response = e.to_response(crate::model::ApiStyle::Spec);
        assert_eq!(response.status, 413);
        assert!(response.header("Retry-After").is_none());
        assert!(e.to_string().contains("split the request's rules"), "{e}");
    }

    #[test]
    fn no_platform_call_is_made_once_the_state_cannot_be_recorded() {
        let (s, d, dir) = durable("unwritable");
        let id = s.create(request(&["a"])).unwrap();
        s.stop_journal("fsync of journal-1 failed: EIO");
        // The journal's own error (only a restart helps), not etcd's "try again".
        let e = s.store.writable().unwrap_err();
        assert!(!e.is_unavailable() && e.to_string().contains("EIO"), "{e}");
        let called = std::sync::atomic::AtomicBool::new(false);
        let answer = s.call("2", "remove", || {
            called.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        });
        assert!(
            !called.load(std::sync::atomic::Ordering::SeqCst),
            "not called"
        );
        match answer {
            Err(MepError::NotSent { reason, .. }) => {
                assert!(reason.contains("the state cannot be recorded"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // A removal is refused before anything reaches the platform.
        assert!(s.delete(&id, false).is_err());
        assert_eq!(on(&d), ["a"], "the rule is still on the platform");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_creation_applies_every_step_and_is_recorded_created() {
        let (s, d) = service();
        let id = s.create(request(&["a", "b"])).unwrap();
        let r = s.get(&id).unwrap();
        assert_eq!((r.status, r.applied), (Status::Created, 2));
        assert_eq!(on(&d), ["a", "b"]);
    }

    #[test]
    fn a_refused_step_undoes_the_earlier_ones_and_records_failed() {
        let (s, d) = service();
        *d.fail_apply.lock().unwrap() = Some((
            "c".into(),
            MepError::Refused {
                url: "u".into(),
                status: 500,
                detail: String::new(),
            },
        ));
        let e = s.create(request(&["a", "b", "c"])).unwrap_err();
        let id = recorded_id(e);
        let r = s.get(&id).unwrap();
        assert_eq!((r.status, r.applied), (Status::Failed, 0));
        assert!(r.detail.unwrap().contains("removed again"));
        assert!(on(&d).is_empty());
    }

    #[test]
    fn an_ambiguous_failure_also_removes_the_step_that_may_have_been_applied() {
        let gateway_timeout = MepError::Refused {
            url: "u".into(),
            status: 504,
            detail: String::new(),
        };
        for (error, status) in [
            (MepError::Timeout { url: "u".into() }, 504),
            (gateway_timeout, 504),
        ] {
            let (s, d) = service();
            *d.fail_apply.lock().unwrap() = Some(("b".into(), error.clone()));
            let e = s.create(request(&["a", "b"])).unwrap_err();
            assert_eq!(e.status(), status, "{error}");
            assert!(on(&d).is_empty(), "{error}: the step must be removed too");
        }
    }

    #[test]
    fn a_rule_held_by_another_created_request_is_released_and_the_delete_answers_201() {
        let (s, d) = service();
        let a = s.create(request(&["x"])).unwrap();
        let b = s.create(request(&["x"])).unwrap();
        assert!(matches!(s.delete(&a, false).unwrap(), Removal::Done(_)));
        assert_eq!(on(&d), ["x"], "still held by B");
        assert!(matches!(s.delete(&b, false).unwrap(), Removal::Done(_)));
        assert!(on(&d).is_empty());
    }

    #[test]
    fn delete_of_an_unknown_or_busy_request_is_refused() {
        let (s, _) = service();
        assert_eq!(s.delete("nope", false).unwrap_err().status(), 404);
        let id = s.create(request(&["a"])).unwrap();
        s.store.update(&id, |r| r.status = Status::Pending).unwrap();
        assert_eq!(s.delete(&id, false).unwrap_err().status(), 409);
        s.store
            .update(&id, |r| {
                r.status = Status::Created;
                r.busy = true;
            })
            .unwrap();
        assert_eq!(s.delete(&id, false).unwrap_err().status(), 409);
    }

    #[test]
    fn backoff_doubles_up_to_its_bound_with_jitter() {
        let p = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        for (failures, upper) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let d = p.delay(failures).as_millis();
            assert!(
                d >= upper / 2 && d <= upper,
                "{failures}: {d} not in {}..={upper}",
                upper / 2
            );
        }
    }

    #[test]
    fn an_identical_rule_of_two_requests_stays_until_the_last_one_is_deleted() {
        let (s, d) = service();
        let first = s.create(request(&["same"])).unwrap();
        let second = s.create(request(&["same"])).unwrap();
        s.delete(&first, false).unwrap();
        assert_eq!(on(&d), ["same"], "the second request still needs it");
        s.delete(&second, false).unwrap();
        assert!(on(&d).is_empty());
    }

    /// A service whose platform reports rules already in place, with `before` on it already
    /// (as its descriptor left them).
    fn service_with_prior(before: &[&str]) -> (Arc<Service>, Arc<Scripted>) {
        let (s, d) = service();
        d.reports_prior
            .store(true, std::sync::atomic::Ordering::SeqCst);
        d.on.lock()
            .unwrap()
            .extend(before.iter().map(|l| l.to_string()));
        (Arc::new(s), d)
    }

    /// Creates request `first` on another thread and holds its (only) apply at `gate` while
    /// `second` is created; then lets the first go. Returns both ids (first, second).
    fn create_across(
        s: &Arc<Service>,
        gate: &Mutex<Option<Gate>>,
        first: &'static str,
        second: &str,
    ) -> [String; 2] {
        let (entered, release) = Gate::install(gate, false);
        let held = on_thread(s, move |s| s.create(request(&[first])));
        entered.recv().unwrap();
        let second = s.create(request(&[second])).unwrap();
        release.send(()).unwrap();
        [held.join().unwrap().unwrap(), second]
    }

    #[test]
    fn a_rule_in_place_before_two_concurrent_creations_stays_after_both_are_deleted() {
        for first_deleted in [0, 1] {
            let (s, d) = service_with_prior(&["same"]);
            // The first one's call is in flight when the second one's is answered "already
            // in place": neither changed the rule, whichever is answered first.
            let ids = create_across(&s, &d.apply_gate, "same", "same");
            for id in [&ids[first_deleted], &ids[1 - first_deleted]] {
                s.delete(id, false).unwrap();
                assert_eq!(
                    on(&d),
                    ["same"],
                    "active before either request: left active"
                );
            }
        }
    }

    #[test]
    fn a_rule_activated_by_one_of_two_concurrent_creations_is_removed_with_the_last() {
        for first_deleted in [0, 1] {
            let (s, d) = service_with_prior(&[]);
            // The first one activates it; the second is answered "already in place" while
            // the first one's answer is still on its way.
            let ids = create_across(&s, &d.answer_gate, "same", "same");
            s.delete(&ids[first_deleted], false).unwrap();
            assert_eq!(on(&d), ["same"], "the other request still holds it");
            s.delete(&ids[1 - first_deleted], false).unwrap();
            assert!(
                on(&d).is_empty(),
                "activated by the plugin: removed with the last"
            );
        }
    }

    #[test]
    fn a_step_kept_when_its_undo_began_but_handed_over_since_is_removed() {
        let (s, d) = service_with_prior(&[]);
        // `a` activates the rule.
        let a = s.create(request(&["same"])).unwrap();
        // `b`, a creation now undoing its steps, found the rule in place while `a`'s answer
        // was on its way (so it kept it).
        let steps = s.get(&a).unwrap().steps;
        let mut b = Record::new(
            Arc::from("b"),
            Arc::from("2"),
            Arc::from("{}"),
            Status::Pending,
            steps.clone(),
            1,
            now_millis(),
        );
        b.kept = Some(Arc::from([0]));
        assert!(b.claim());
        s.store.insert(b).unwrap();
        let rule = s.rule_of(s.region("2").unwrap(), &steps[0]);
        // `b`'s undo has read its record and waits for its turn on the rule...
        let held = s.turns.remove(rule);
        let undo = on_thread(&s, move |s| {
            let region = s.region("2").unwrap();
            s.undo("b", region, &steps).is_ok()
        });
        while s.turns.removals_waiting(rule) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // ...when `a` leaves: `b` takes over the removal of what `a` activated.
        s.store
            .update(&a, |r| r.claim_removal(now_millis()))
            .unwrap();
        assert!(s.store.release_if_shared(&a, 0, now_millis()).unwrap());
        drop(held);
        assert!(undo.join().unwrap(), "undone");
        assert!(
            on(&d).is_empty(),
            "activated by `a`: removed by the last holder"
        );
    }

    #[test]
    fn a_time_due_in_epoch_milliseconds_is_never_reached_before_the_instant() {
        for k in 0..200u64 {
            let at = Instant::now() + Duration::from_micros(100 + k * 37 % 2000);
            let due = epoch_millis(at);
            while now_millis() < due {
                std::hint::spin_loop();
            }
            assert!(
                Instant::now() >= at,
                "due at {due} before the instant, round {k}"
            );
        }
    }

    #[test]
    fn a_removal_waits_for_a_creation_in_flight_of_the_same_rule_and_sees_its_outcome() {
        let (s, d) = service();
        let s = Arc::new(s);
        let first = s.create(request(&["same"])).unwrap();
        // A second request's call for the same rule is in flight...
        let (entered, release) = Gate::install(&d.apply_gate, true);
        let second = on_thread(&s, |s| s.create(request(&["same"])));
        entered.recv().unwrap();
        // ...when the first is deleted: its removal must not count on the second.
        let delete = on_thread(&s, move |s| s.delete(&first, false).map(|_| ()));
        std::thread::sleep(Duration::from_millis(50));
        release.send(()).unwrap();
        assert_eq!(second.join().unwrap().unwrap_err().status(), 502);
        delete.join().unwrap().unwrap();
        assert!(
            on(&d).is_empty(),
            "the second was refused, so the first's removal takes the rule off"
        );
        agree(&s, &d);
    }

    #[test]
    fn a_creation_waits_for_a_removal_in_flight_of_the_same_rule() {
        let (s, d) = service();
        let s = Arc::new(s);
        let first = s.create(request(&["same"])).unwrap();
        let (entered, release) = Gate::install(&d.remove_gate, false);
        let delete = on_thread(&s, move |s| s.delete(&first, false).map(|_| ()));
        entered.recv().unwrap();
        // A new request with the same rule, while the first one's removal is in flight.
        let second = on_thread(&s, |s| s.create(request(&["same"])));
        std::thread::sleep(Duration::from_millis(100));
        release.send(()).unwrap();
        delete.join().unwrap().unwrap();
        let second = second.join().unwrap().unwrap();
        assert_eq!(s.get(&second).unwrap().status, Status::Created);
        assert_eq!(on(&d), ["same"], "applied after the removal, not before");
        agree(&s, &d);
    }

    #[test]
    fn a_failed_fsync_after_the_final_created_update_answers_with_the_request_id() {
        let (s, _, dir) = durable("created-fsync-fails");
        // The PENDING record is durable; the CREATED update is written, then its fsync fails.
        crate::journal::FAIL_WAIT_IN.with(|c| c.set(2));
        let e = s.create(request(&["a"])).unwrap_err();
        let r = s.list(None)[0].clone();
        assert_eq!(r.status, Status::Created, "in memory, maybe on disk");
        assert_eq!((e.status(), e.request_id()), (500, Some(&*r.id)));
        let response = e.to_response(crate::model::ApiStyle::Spec);
        assert_eq!(
            response.header("Location"),
            Some(format!("/MEC/v1/service/requests/{}", r.id).as_str())
        );
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(body["RequestId"], *r.id);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_removal_written_but_not_made_durable_answers_with_the_request_id() {
        let (s, _, dir) = durable("remove-fsync-fails");
        let id = s.create(request(&["a"])).unwrap();
        // DELETING (1), the rule's removal (2), then the removal of the record is written and
        // its fsync fails: gone from memory, but it may be read back at the next start.
        crate::journal::FAIL_WAIT_IN.with(|c| c.set(3));
        let e = s.delete(&id, false).unwrap_err();
        assert!(s.get(&id).is_none(), "the removal was applied in memory");
        assert_eq!(
            (e.status(), e.request_id()),
            (500, Some(id.as_str())),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_delete_whose_claim_was_not_written_leaves_the_record_as_it_was() {
        let (s, _, dir) = durable("claim-not-written");
        let id = s.create(request(&["a"])).unwrap();
        s.store.update(&id, |r| r.next_attempt = 7).unwrap();
        // The DELETING entry is not written: the record was not claimed by this DELETE, and
        // by the time it answers it may be another caller's (the reconciler's, another
        // DELETE's) whose busy flag and schedule are not this one's to reset.
        fail_append_in(1);
        let e = s.delete(&id, false).unwrap_err();
        assert_eq!(
            (e.status(), e.request_id()),
            (500, Some(id.as_str())),
            "{e}"
        );
        let r = s.get(&id).unwrap();
        assert_eq!(
            (r.status, r.busy, r.next_attempt),
            (Status::Created, false, 7)
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_creation_whose_first_entry_was_not_written_names_no_request() {
        let (s, d, dir) = durable("insert-fails");
        fail_append_in(1);
        let e = s.create(request(&["a"])).unwrap_err();
        assert_eq!((e.status(), e.request_id()), (500, None));
        assert!(s.list(None).is_empty() && on(&d).is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_full_state_directory_answers_507_naming_it_and_the_request() {
        let (s, d, dir) = durable("no-space");
        let id = s.create(request(&["a"])).unwrap();
        crate::journal::FAIL_APPEND_NO_SPACE.with(|c| c.set(true));
        let e = s.create(request(&["b"])).unwrap_err();
        assert_eq!(
            (e.status(), e.request_id()),
            (507, None),
            "nothing recorded: {e}"
        );
        let detail = e.to_string();
        assert!(
            detail.contains(&dir.display().to_string()) && detail.contains("ENOSPC"),
            "{detail}"
        );
        let e = s.delete(&id, false).unwrap_err();
        assert_eq!((e.status(), e.request_id()), (507, Some(id.as_str())));
        assert_eq!(
            on(&d),
            ["a"],
            "nothing sent for the creation, nothing removed"
        );
        assert!(matches!(s.state_problem(), Some(StateProblem::NoSpace(_))));
        assert!(!s.gauges().state_writable);
        assert_eq!(s.get(&id).unwrap().status, Status::Created, "reads work");
        // Room again: found by the probe, and writes resume without a restart.
        crate::journal::FAIL_APPEND_NO_SPACE.with(|c| c.set(false));
        assert_eq!(s.state_problem(), None);
        assert!(s.gauges().state_writable);
        assert!(matches!(s.delete(&id, false).unwrap(), Removal::Done(_)));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_creation_beyond_max_requests_is_refused_with_507_and_nothing_sent() {
        let (s, d, dir) = durable("max-requests");
        let s = s.limit_requests(2);
        s.create(request(&["a"])).unwrap();
        s.create(request(&["b"])).unwrap();
        let e = s.create(request(&["c"])).unwrap_err();
        assert_eq!(e.status(), 507);
        assert!(e.to_string().contains("max_requests"), "{e}");
        assert_eq!(on(&d), ["a", "b"]);
        assert_eq!(s.list_len(), 2);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn failed_requests_with_nothing_on_a_platform_are_deleted_after_the_retention() {
        let (s, _d) = service();
        let s = s.retain_failed(Duration::from_secs(60));
        assert_eq!(s.expiry_every(), Some(Duration::from_secs(15)));
        let ids: Vec<String> = ["a", "b", "c", "d"]
            .iter()
            .map(|rule| s.create(request(&[rule])).unwrap())
            .collect();
        let now = now_millis();
        // (status, steps possibly on the platform, ms since the last change)
        let cases = [
            (Status::Failed, 0, 60_000),
            (Status::Failed, 0, 59_000),
            (Status::Failed, 1, 61_000),
            (Status::Created, 1, 61_000),
        ];
        for (id, (status, applied, age)) in ids.iter().zip(cases) {
            s.store
                .update(id, |r| {
                    r.status = status;
                    r.applied = applied;
                    r.last_modified = now - age;
                })
                .unwrap();
        }
        assert_eq!(s.expire_failed(now), 1);
        assert!(
            s.get(&ids[0]).is_none(),
            "failed a minute ago, nothing applied"
        );
        for id in &ids[1..] {
            assert!(s.get(id).is_some(), "{id}");
        }
        let s = s.retain_failed(Duration::ZERO);
        assert_eq!(s.expiry_every(), None);
        assert_eq!(
            s.expire_failed(now + 1_000_000_000),
            0,
            "kept until a DELETE"
        );
    }

    #[test]
    fn a_deleting_request_of_a_region_no_longer_configured_with_nothing_applied_is_forgotten() {
        let (s, _) = service();
        let id = s.create(request(&["a"])).unwrap();
        s.store
            .update(&id, |r| {
                r.applied = 0;
                r.status = Status::Failed;
            })
            .unwrap();
        let gone = Service::with_store(Vec::new(), s.store, RetryPolicy::default());
        assert!(matches!(gone.delete(&id, false).unwrap(), Removal::Done(_)));
        assert!(gone.get(&id).is_none());
    }

    #[test]
    fn a_delete_in_a_region_no_longer_configured_is_refused_until_forgotten_deliberately() {
        let (s, d) = service();
        let id = s.create(request(&["a"])).unwrap();
        let gone = Service::with_store(Vec::new(), s.store, RetryPolicy::default());
        let before = gone.get(&id).unwrap();
        let e = gone.delete(&id, false).unwrap_err();
        assert_eq!(e.status(), 409);
        let text = e.to_string();
        assert!(text.contains("region '2'"), "{text}");
        assert!(text.contains("simulated:"), "the platform URL: {text}");
        assert!(text.contains("forget=true"), "{text}");
        let after = gone.get(&id).unwrap();
        assert_eq!(
            (after.status, after.applied, after.busy, &after.detail),
            (before.status, before.applied, false, &before.detail),
            "the record is unchanged"
        );
        let Removal::Done(r) = gone.delete(&id, true).unwrap() else {
            panic!()
        };
        assert_eq!(r.status, Status::Deleted);
        assert!(gone.get(&id).is_none());
        assert_eq!(on(&d), ["a"], "left on the platform, as asked");
        assert!(
            gone.metrics
                .render(&Gauges::default())
                .contains("mec_plugin_requests_forgotten_total 1")
        );
    }

    #[test]
    fn an_unknown_region_is_refused_before_anything_is_recorded() {
        let (s, _) = service();
        let mut r = request(&["a"]);
        r.region_id = "9".into();
        assert_eq!(s.create(r).unwrap_err().status(), 422);
        assert!(s.list(None).is_empty());
    }

    /// A CREATED request with rule "a" on the platform at `http://a:1`, now in a service whose
    /// region "2" names `http://b:2`; the old platform and the new one.
    fn created_then_moved() -> (Service, String, Arc<Scripted>, Arc<Scripted>) {
        let (s, a) = service_on(Store::in_memory(), "http://a:1", Duration::ZERO);
        let id = s.create(request(&["a"])).unwrap();
        let (s, b) = moved_to(s, "http://b:2");
        (s, id, a, b)
    }

    /// Found by an audit: the recorded URL was compared as written, so `HTTP://`, a host in
    /// capitals or credentials added made the same platform another one: the request's DELETE
    /// was 409, and a rule it shared with a later request was taken off under it.
    #[test]
    fn the_same_platform_spelt_otherwise_after_a_restart_is_not_a_move() {
        for respelt in [
            "HTTP://a:1",
            "http://A:1/",
            "http://mtp:secret@a:1",
            "http://a:1",
        ] {
            let (s, a) = service_on(Store::in_memory(), "http://a:1", Duration::ZERO);
            let first = s.create(request(&["a"])).unwrap();
            let (s, again) = moved_to(s, respelt);
            let record = s.get(&first).unwrap();
            assert_eq!(s.moved(&record), None, "{respelt}");
            assert_eq!(s.moved_records().len(), 0, "{respelt}");
            // A later request shares rule "a": its DELETE leaves the rule to the first.
            let second = s.create(request(&["a"])).unwrap();
            s.delete(&second, false).unwrap();
            let removals = || again.removals.lock().unwrap().clone();
            assert!(
                removals().is_empty(),
                "{respelt}: the first still holds 'a'"
            );
            s.delete(&first, false).unwrap();
            assert_eq!(removals(), ["a"], "{respelt}");
            assert!(a.removals.lock().unwrap().is_empty());
        }
    }

    #[test]
    fn a_delete_after_the_region_url_changed_is_409_naming_both_platforms_and_calls_neither() {
        let (s, id, a, b) = created_then_moved();
        let before = s.get(&id).unwrap();
        assert_eq!(s.moved(&before).map(|p| &**p), Some("http://b:2"));
        let e = s.delete(&id, false).unwrap_err();
        assert_eq!(
            e,
            ApiError::PlatformChanged {
                request_id: id.clone(),
                region_id: "2".into(),
                recorded: "http://a:1".into(),
                current: "http://b:2".into(),
            }
        );
        let text = e.to_string();
        for part in [
            "region '2'",
            "http://a:1",
            "http://b:2",
            "adopt=true",
            "forget=true",
        ] {
            assert!(text.contains(part), "{part}: {text}");
        }
        let response = e.to_response(crate::model::ApiStyle::Spec);
        assert_eq!(response.status, 409);
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(body["type"], "urn:mec-plugin:problem:platform-changed");
        assert_eq!(
            (&body["RequestId"], &body["RegionId"]),
            (&serde_json::json!(id), &serde_json::json!("2"))
        );
        assert_eq!(body["platform"], "http://a:1");
        assert_eq!(body["currentPlatform"], "http://b:2");
        assert_eq!(
            response.header("Location"),
            Some(format!("/MEC/v1/service/requests/{id}").as_str())
        );
        let after = s.get(&id).unwrap();
        assert_eq!(
            (after.status, after.applied, after.busy, after.platform),
            (Status::Created, 1, false, before.platform),
            "the record is unchanged"
        );
        assert!(b.removals.lock().unwrap().is_empty(), "nothing sent to B");
        assert_eq!(on(&a), ["a"], "still on A");
    }

    #[test]
    fn forget_drops_a_request_whose_platform_moved_and_leaves_its_rules_on_the_old_one() {
        let (s, id, a, b) = created_then_moved();
        let Removal::Done(r) = s.delete_as(&id, Deletion::Forget).unwrap() else {
            panic!()
        };
        assert_eq!((r.status, r.applied), (Status::Deleted, 1));
        assert!(s.get(&id).is_none());
        assert_eq!(on(&a), ["a"]);
        assert!(b.removals.lock().unwrap().is_empty());
        let metrics = s.metrics.render(&Gauges::default());
        assert!(metrics.contains("mec_plugin_requests_forgotten_total 1"));
    }

    #[test]
    fn forget_and_adopt_together_are_refused_for_a_request_whose_platform_moved() {
        let (s, id, a, b) = created_then_moved();
        let e = s.delete_as(&id, Deletion::ForgetAndAdopt).unwrap_err();
        assert_eq!(e.status(), 400);
        let text = e.to_string();
        assert!(
            text.contains("http://a:1") && text.contains("give one"),
            "{text}"
        );
        assert_eq!(s.get(&id).unwrap().platform.as_deref(), Some("http://a:1"));
        assert!(a.removals.lock().unwrap().is_empty() && b.removals.lock().unwrap().is_empty());
        // For a region no longer configured, forget is what applies.
        let gone = Service::with_store(Vec::new(), s.store, RetryPolicy::default());
        assert!(matches!(
            gone.delete_as(&id, Deletion::ForgetAndAdopt).unwrap(),
            Removal::Done(_)
        ));
        assert_eq!(on(&a), ["a"]);
    }

    /// Two requests holding rule "a" on "http://a:1", the region's url then changed to
    /// "http://b:2": the service on B, B, and the two ids.
    fn two_holding_a_rule_moved_to_b() -> (Service, Arc<Scripted>, String, String) {
        let (s, a) = service_on(Store::in_memory(), "http://a:1", Duration::ZERO);
        let first = s.create(request(&["a"])).unwrap();
        let second = s.create(request(&["a"])).unwrap();
        drop(a);
        let (s, b) = moved_to(s, "http://b:2");
        (s, b, first, second)
    }

    #[test]
    fn adopting_one_request_re_points_the_others_applied_on_the_same_platform() {
        let (s, b, first, second) = two_holding_a_rule_moved_to_b();
        // The same platform at a new address: B holds what A held.
        b.on.lock().unwrap().insert("a".into());
        // The reconciler left the second alone while it was moved (looked at again much later).
        s.store
            .update(&second, |r| r.stuck("platform changed", i64::MAX))
            .unwrap();
        *lock(&s.wake.0) = false;
        assert!(matches!(
            s.delete_as(&first, Deletion::Adopt).unwrap(),
            Removal::Done(_)
        ));
        assert_eq!(s.get(&second).unwrap().next_attempt, 0, "due at once");
        assert!(*lock(&s.wake.0), "the reconciler is woken");
        assert!(
            b.removals.lock().unwrap().is_empty(),
            "the second request still holds the rule: released to it, not removed"
        );
        // Adopting says where the platform is now, for every request applied on it.
        let other = s.get(&second).unwrap();
        assert_eq!(other.platform.as_deref(), Some("http://b:2"));
        assert!(s.moved_records().is_empty());
        assert!(matches!(
            s.delete(&second, false).unwrap(),
            Removal::Done(_)
        ));
        assert_eq!(*b.removals.lock().unwrap(), ["a"]);
        assert!(on(&b).is_empty());
    }

    #[test]
    fn a_forget_that_finds_its_request_re_pointed_since_removes_it_as_usual() {
        let (s, b, first, second) = two_holding_a_rule_moved_to_b();
        b.on.lock().unwrap().insert("a".into());
        // `?forget=true` on `second` saw it moved; before it takes the record, `?adopt=true`
        // on `first` re-points both and releases the rule to `second`, which holds it.
        assert!(s.moved(&s.get(&second).unwrap()).is_some());
        assert!(matches!(
            s.delete_as(&first, Deletion::Adopt).unwrap(),
            Removal::Done(_)
        ));
        assert!(b.removals.lock().unwrap().is_empty());
        // On the current platform now: the last holder takes the rule off, as a plain DELETE.
        let Removal::Done(r) = s.forget(&second, "seen moved").unwrap() else {
            panic!()
        };
        assert_eq!((r.status, r.applied), (Status::Deleted, 0));
        assert!(s.get(&second).is_none());
        assert!(on(&b).is_empty(), "not left behind on the platform");
    }

    #[test]
    fn adopt_re_points_the_request_to_the_current_platform_and_removes_its_rules_there() {
        let (s, id, a, b) = created_then_moved();
        // The same platform at a new address: B holds what A held.
        b.on.lock().unwrap().insert("a".into());
        let Removal::Done(r) = s.delete_as(&id, Deletion::Adopt).unwrap() else {
            panic!()
        };
        assert_eq!(
            (r.status, r.platform.as_deref()),
            (Status::Deleted, Some("http://b:2"))
        );
        assert!(on(&b).is_empty(), "removed on B");
        assert_eq!(*b.removals.lock().unwrap(), ["a"]);
        assert!(a.removals.lock().unwrap().is_empty());
    }

    #[test]
    fn adopt_and_forget_change_nothing_for_a_request_on_its_region_s_current_platform() {
        let (s, d) = service();
        for how in [Deletion::Adopt, Deletion::Forget, Deletion::ForgetAndAdopt] {
            let id = s.create(request(&["a"])).unwrap();
            assert!(matches!(s.delete_as(&id, how).unwrap(), Removal::Done(_)));
            assert!(on(&d).is_empty(), "{how:?}: removed from the platform");
        }
    }

    #[test]
    fn the_re_pointing_is_journaled_and_survives_a_restart() {
        let (s, a, dir) = durable("adopt-journaled");
        let id = s.create(request(&["a"])).unwrap();
        drop(a);
        let (s, b) = moved_to(s, "http://b:2");
        *b.fail_remove.lock().unwrap() = Some("a".into());
        let Removal::Accepted(r) = s.delete_as(&id, Deletion::Adopt).unwrap() else {
            panic!("B refused the removal")
        };
        assert_eq!(r.status, Status::Deleting);
        drop(s);
        let (store, _) = Store::open(&dir, true).unwrap();
        let r = store.get(&id).unwrap();
        assert_eq!(
            (r.status, r.applied, r.platform.as_deref()),
            (Status::Deleting, 1, Some("http://b:2"))
        );
        // On B now: removed there by a plain DELETE.
        let (s, b) = service_on(store, "http://b:2", Duration::ZERO);
        assert!(matches!(
            s.delete(&id, false).unwrap(),
            Removal::Accepted(_) | Removal::Done(_)
        ));
        crate::reconciler::reconcile_once(&s);
        assert!(s.get(&id).is_none());
        assert_eq!(*b.removals.lock().unwrap(), ["a"]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_record_without_a_recorded_platform_or_with_nothing_applied_is_removed_as_usual() {
        let (s, a) = service_on(Store::in_memory(), "http://a:1", Duration::ZERO);
        let legacy = s.create(request(&["x"])).unwrap();
        s.store.update(&legacy, |r| r.platform = None).unwrap();
        let empty = recorded_id(
            {
                *a.fail_apply.lock().unwrap() = Some((
                    "y".into(),
                    MepError::Refused {
                        url: "u".into(),
                        status: 400,
                        detail: String::new(),
                    },
                ));
                s.create(request(&["y"]))
            }
            .unwrap_err(),
        );
        let (s, b) = moved_to(s, "http://b:2");
        assert!(s.moved_records().is_empty());
        assert!(matches!(
            s.delete(&legacy, false).unwrap(),
            Removal::Done(_)
        ));
        assert_eq!(
            *b.removals.lock().unwrap(),
            ["x"],
            "counted as on the current one"
        );
        assert!(matches!(s.delete(&empty, false).unwrap(), Removal::Done(_)));
    }

    #[test]
    fn a_request_on_the_old_platform_does_not_hold_a_rule_for_one_on_the_new_platform() {
        let (s, id, a, b) = created_then_moved();
        // A new request sets the same rule on B.
        let new = s.create(request(&["a"])).unwrap();
        assert_eq!(on(&b), ["a"]);
        // Its removal must call B: the old request's rule is on A, not on B.
        assert!(matches!(s.delete(&new, false).unwrap(), Removal::Done(_)));
        assert!(on(&b).is_empty(), "removed from B");
        assert_eq!(on(&a), ["a"], "the old request's rule stays on A");
        assert_eq!(s.get(&id).unwrap().applied, 1);
        let moved = s.moved_records();
        assert_eq!(moved.len(), 1);
        let (count, earlier) = &moved["2"];
        assert_eq!(*count, 1);
        assert_eq!(
            earlier.iter().map(|p| &**p).collect::<Vec<_>>(),
            ["http://a:1"]
        );
    }

    #[test]
    fn a_request_applied_through_an_alias_of_the_platform_is_removed_as_usual() {
        let (s, a) = service_on(Store::in_memory(), "http://a:1", Duration::ZERO);
        let old = s.create(request(&["a"])).unwrap();
        drop(a);
        let (moved, b) = moved_to(s, "http://b:2");
        let mut regions = moved.regions;
        regions[0].config.mep.aliases = vec!["http://u:secret@a:1".into()];
        let s = Service::with_store(regions, moved.store, RetryPolicy::default());
        // Credentials are left out of the comparison: "http://***@a:1" is "http://a:1" (they
        // made it another platform before an audit).
        assert_eq!(s.moved(&s.get(&old).unwrap()), None);
        let mut regions = s.regions;
        regions[0].config.mep.aliases = vec!["HTTP://A:1/".into()];
        let s = Service::with_store(regions, s.store, RetryPolicy::default());
        assert!(s.moved_records().is_empty());
        b.on.lock().unwrap().insert("a".into());
        // A new request of the same rule on B: the old one holds it there too.
        let new = s.create(request(&["a"])).unwrap();
        assert!(matches!(s.delete(&old, false).unwrap(), Removal::Done(_)));
        assert!(
            b.removals.lock().unwrap().is_empty(),
            "released to the new one"
        );
        assert!(matches!(s.delete(&new, false).unwrap(), Removal::Done(_)));
        assert_eq!(*b.removals.lock().unwrap(), ["a"]);
        assert!(on(&b).is_empty());
    }
}
