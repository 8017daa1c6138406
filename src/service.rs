//! Applying and removing a request's rules on its region's platform, atomically: a creation is
//! recorded PENDING, its steps are applied in order (DNS first, then traffic), and if one fails
//! the ones applied are undone in reverse order. Each step is recorded as possibly applied
//! before it is sent. Removals a platform refuses are retried by the reconciler with
//! exponential backoff until they succeed. No lock is held while a platform is called.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use log::{error, info, warn};

use crate::config::{Config, RegionConfig};
use crate::error::ApiError;
use crate::mep::{self, Driver, MepError, Step};
use crate::metrics::{Gauges, Metrics, Outcome};
use crate::model::{CreationRequest, Status};
use crate::store::{Record, Store, StoreError};
use crate::util::{new_uuid, now_millis, random_fraction};

/// A configured region and the driver of its platform.
pub struct Region {
    pub config: RegionConfig,
    pub driver: Arc<dyn Driver>,
}

/// Backoff of background removals: `initial`, doubling per failed attempt up to `max`, each
/// delay drawn uniformly from its upper half (jitter).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    /// The delay before the attempt after `failures` failed ones.
    pub fn delay(&self, failures: u32) -> Duration {
        let doubled = self
            .initial
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        doubled.min(self.max).mul_f64(0.5 + 0.5 * random_fraction())
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
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

/// The regions and the records: everything the API operates on.
pub struct Service {
    regions: Vec<Region>,
    store: Store,
    /// Counters and latencies of the API and of platform calls.
    pub metrics: Metrics,
    started: Instant,
    retry: RetryPolicy,
    /// Set to wake the reconciler before its next due time.
    wake: (Mutex<bool>, Condvar),
}

fn state_error(e: StoreError) -> ApiError {
    error!("the state could not be made durable: {e}");
    ApiError::Internal {
        detail: format!("the state could not be made durable: {e}"),
    }
}

impl Service {
    /// Opens the durable state in `state_dir`, builds the drivers the configuration names and
    /// resolves what a crash left half-done.
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
        let regions = config
            .regions
            .iter()
            .map(|r| Region {
                config: r.clone(),
                driver: mep::build(&r.id, &r.mep),
            })
            .collect();
        let service = Service::with_store(regions, store, config.server.retry);
        service.recover()?;
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
        Service {
            regions,
            store,
            metrics: Metrics::default(),
            started: Instant::now(),
            retry,
            wake: (Mutex::new(false), Condvar::new()),
        }
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

    /// How many requests are recorded.
    pub fn list_len(&self) -> usize {
        self.store.len()
    }

    /// Requests whose rules the reconciler still has to remove.
    pub fn backlog(&self) -> usize {
        self.store.count(Record::needs_removal)
    }

    /// Start-up: a request caught PENDING by a crash was never acknowledged, so it is rolled
    /// back: it becomes FAILED and the reconciler removes what the journal says may have been
    /// applied. A request caught DELETING is finished by the reconciler. The drivers are told
    /// which steps of PENDING and FAILED requests may have been sent without their outcome
    /// being seen (see [`Driver::outcome_unknown_after_restart`]).
    fn recover(&self) -> Result<(), StoreError> {
        let now = now_millis();
        for record in self.store.list(None) {
            if matches!(record.status, Status::Pending | Status::Failed) {
                if let Some(region) = self.region(&record.region_id) {
                    for step in record.steps.iter().take(record.applied) {
                        region.driver.outcome_unknown_after_restart(step);
                    }
                }
            }
            if record.status != Status::Pending {
                continue;
            }
            let detail = if record.applied == 0 {
                "interrupted by a restart before any rule was applied".to_string()
            } else {
                format!(
                    "interrupted by a restart while being applied (never acknowledged), so rolled back; {} rule call(s) may be on the platform and are being removed",
                    record.applied
                )
            };
            warn!("request {}: {detail}", record.id);
            self.store.update(&record.id, |r| {
                r.status = Status::Failed;
                r.detail = Some(detail.into());
                r.last_modified = now;
            })?;
        }
        let backlog = self.backlog();
        if backlog > 0 {
            info!("{backlog} request(s) have rules to remove; the reconciler takes them now");
        }
        Ok(())
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
        let text = serde_json::to_string(&request).expect("a request serialises");
        let steps: Arc<[Step]> = Arc::from(steps);
        // Recorded with the first step already counted: it may be on the platform as soon as
        // it is sent, and the record is durable before that.
        let first = usize::from(!steps.is_empty());
        let record = Record::new(
            Arc::from(id.as_str()),
            Arc::from(region.config.id.as_str()),
            Arc::from(text),
            Status::Pending,
            steps.clone(),
            first,
            now_millis(),
        );
        self.store.insert(record).map_err(state_error)?;

        let mut failure = None;
        for (k, step) in steps.iter().enumerate() {
            if k > 0 {
                self.set_applied(&id, k + 1).map_err(state_error)?;
            }
            if let Err(error) = self.call(&region.config.id, "apply", || driver.apply(step)) {
                if !error.is_ambiguous() {
                    self.set_applied(&id, k).map_err(state_error)?;
                }
                failure = Some((step, error));
                break;
            }
        }
        let Some((failed_step, error)) = failure else {
            self.finish(&id, Status::Created, None)
                .map_err(state_error)?;
            info!(
                "request {id}: {} rule call(s) applied in region {}",
                steps.len(),
                region.config.id
            );
            return Ok(id);
        };

        warn!(
            "request {id}: {} failed in region {}: {error}; undoing",
            failed_step.label(),
            region.config.id
        );
        let detail = match self.undo(&id, region, &steps) {
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
            Err(Undo::State(e)) => return Err(state_error(e)),
        };
        let retry_at = now_millis() + self.retry.delay(1).as_millis() as i64;
        self.store
            .update(&id, |r| {
                r.status = Status::Failed;
                r.detail = Some(detail.into());
                r.last_modified = now_millis();
                r.next_attempt = retry_at;
            })
            .map_err(state_error)?;
        Err(ApiError::Mep {
            region_id: region.config.id.clone(),
            request_id: Some(id),
            error,
        })
    }

    /// Removes every rule of a request from its platform, then forgets the request
    /// ([`Removal::Done`]). If the platform cannot remove them now, the request stays recorded
    /// as DELETING and the reconciler retries ([`Removal::Accepted`]); a DELETE of a request
    /// already DELETING answers the same and retries at once.
    pub fn delete(&self, id: &str) -> Result<Removal, ApiError> {
        enum Claim {
            Mine(Record),
            Queued(Record),
        }
        let now = now_millis();
        let claim = self
            .store
            .update(id, |r| {
                if r.busy || r.status == Status::Pending {
                    return Err(ApiError::Conflict {
                        request_id: id.to_string(),
                        detail: "its rules are being applied or removed right now; retry once that finishes".into(),
                    });
                }
                if r.status == Status::Deleting {
                    r.next_attempt = 0;
                    return Ok(Claim::Queued(r.clone()));
                }
                r.busy = true;
                r.status = Status::Deleting;
                r.detail = None;
                r.last_modified = now;
                Ok(Claim::Mine(r.clone()))
            })
            .map_err(state_error)?
            .ok_or_else(|| ApiError::RequestNotFound { request_id: id.to_string() })??;
        let record = match claim {
            Claim::Queued(record) => {
                self.wake_reconciler();
                return Ok(Removal::Accepted(record));
            }
            Claim::Mine(record) => record,
        };
        let Some(region) = self.region(&record.region_id) else {
            let detail = format!(
                "region '{}' is no longer configured; its rules cannot be removed",
                record.region_id
            );
            self.store
                .update(id, |r| r.busy = false)
                .map_err(state_error)?;
            return Err(ApiError::Internal { detail });
        };

        match self.undo(id, region, &record.steps) {
            Ok(()) => {
                let mut record = self
                    .store
                    .remove(id)
                    .map_err(state_error)?
                    .unwrap_or(record);
                record.status = Status::Deleted;
                record.applied = 0;
                record.busy = false;
                record.last_modified = now_millis();
                info!("request {id}: removed from region {}", region.config.id);
                Ok(Removal::Done(record))
            }
            Err(Undo::Platform { left, step, error }) => {
                let delay = self.retry.delay(1);
                let detail = format!(
                    "removing {} failed: {error}; {left} rule call(s) still on the platform; retrying in the background",
                    step.label()
                );
                warn!(
                    "request {id}: {detail} (next attempt in {} ms)",
                    delay.as_millis()
                );
                let record = self
                    .store
                    .update(id, |r| {
                        r.busy = false;
                        r.detail = Some(detail.into());
                        r.last_modified = now_millis();
                        r.attempts = 1;
                        r.next_attempt = now_millis() + delay.as_millis() as i64;
                        r.clone()
                    })
                    .map_err(state_error)?
                    .unwrap_or(record);
                self.wake_reconciler();
                Ok(Removal::Accepted(record))
            }
            Err(Undo::State(e)) => Err(state_error(e)),
        }
    }

    /// One pass of the reconciler: retries every removal that is due. Returns how long until
    /// the next one is due (`None`: nothing pending).
    pub fn reconcile_once(&self) -> Option<Duration> {
        let now = now_millis();
        let due = self.store.claim(
            |r| r.needs_removal() && r.next_attempt <= now,
            |r| r.busy = true,
        );
        for record in due {
            if let Err(e) = self.reconcile(&record) {
                error!(
                    "request {}: the state could not be made durable: {e}",
                    record.id
                );
                let _ = self.store.update(&record.id, |r| r.busy = false);
            }
        }
        let now = now_millis();
        self.store
            .earliest(Record::needs_removal, |r| r.next_attempt)
            .map(|at| Duration::from_millis((at - now).max(0) as u64))
    }

    fn reconcile(&self, record: &Record) -> Result<(), StoreError> {
        let id = &record.id;
        let Some(region) = self.region(&record.region_id) else {
            let detail = format!(
                "region '{}' is no longer configured; its rules cannot be removed",
                record.region_id
            );
            error!("request {id}: {detail}");
            let next = now_millis() + self.retry.max.as_millis() as i64;
            self.store.update(id, |r| {
                r.busy = false;
                r.detail = Some(detail.into());
                r.next_attempt = next;
            })?;
            return Ok(());
        };
        info!(
            "request {id}: removing {} rule call(s) from region {} (attempt {})",
            record.applied,
            region.config.id,
            record.attempts + 1
        );
        match self.undo(id, region, &record.steps) {
            Ok(()) if record.status == Status::Deleting => {
                self.store.remove(id)?;
                info!("request {id}: removed from region {}", region.config.id);
            }
            Ok(()) => {
                let detail = format!(
                    "{}; every rule call it may have applied has since been removed from the platform",
                    reason(&record.detail)
                );
                self.store.update(id, |r| {
                    r.busy = false;
                    r.attempts = 0;
                    r.detail = Some(detail.into());
                    r.last_modified = now_millis();
                })?;
                info!(
                    "request {id}: every rule removed from region {}",
                    region.config.id
                );
            }
            Err(Undo::Platform { left, step, error }) => {
                let attempts = record.attempts + 1;
                let delay = self.retry.delay(attempts);
                let detail = format!(
                    "{}; removal attempt {attempts} failed at {}: {error}; {left} rule call(s) still on the platform; next attempt in {} s",
                    reason(&record.detail),
                    step.label(),
                    delay.as_secs().max(1)
                );
                warn!("request {id}: {detail}");
                self.store.update(id, |r| {
                    r.busy = false;
                    r.attempts = attempts;
                    r.next_attempt = now_millis() + delay.as_millis() as i64;
                    r.detail = Some(detail.into());
                    r.last_modified = now_millis();
                })?;
            }
            Err(Undo::State(e)) => return Err(e),
        }
        Ok(())
    }

    /// Runs the reconciler until `stop` is set: removals as they fall due, and journal
    /// compaction when it is needed.
    pub fn run_reconciler(&self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            let next = self
                .reconcile_once()
                .unwrap_or(Duration::MAX)
                .min(Duration::from_secs(1));
            if let Err(e) = self.store.compact_if_needed() {
                error!("compaction failed (the journal keeps growing until it succeeds): {e}");
            }
            let (flag, condvar) = &self.wake;
            let woken = flag.lock().unwrap_or_else(|p| p.into_inner());
            let (mut woken, _) = condvar
                .wait_timeout_while(woken, next, |w| !*w)
                .unwrap_or_else(|p| p.into_inner());
            *woken = false;
        }
    }

    /// Makes the reconciler look for work now.
    pub fn wake_reconciler(&self) {
        let (flag, condvar) = &self.wake;
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        condvar.notify_all();
    }

    /// Removes the applied steps of a request in reverse order, recording each removal; a step
    /// another request of the region also holds stays on the platform. On a platform failure,
    /// says how many steps may remain and which removal failed.
    fn undo<'a>(&self, id: &str, region: &Region, steps: &'a [Step]) -> Result<(), Undo<'a>> {
        let applied = self.store.get(id).map_or(0, |r| r.applied);
        for k in (0..applied).rev() {
            if self
                .store
                .release_if_shared(id, k, now_millis())
                .map_err(Undo::State)?
            {
                continue;
            }
            self.call(&region.config.id, "remove", || {
                region.driver.remove(&steps[k])
            })
            .map_err(|error| Undo::Platform {
                left: k + 1,
                step: &steps[k],
                error,
            })?;
            self.set_applied(id, k).map_err(Undo::State)?;
        }
        Ok(())
    }

    /// Makes one platform call, counting it in the metrics.
    fn call(
        &self,
        region: &str,
        operation: &'static str,
        f: impl FnOnce() -> Result<(), MepError>,
    ) -> Result<(), MepError> {
        let started = Instant::now();
        let result = f();
        let outcome = match &result {
            Ok(()) => Outcome::Ok,
            Err(MepError::Refused { .. }) => Outcome::Refused,
            Err(MepError::Unreachable { .. }) => Outcome::Unreachable,
            Err(MepError::Timeout { .. }) => Outcome::Timeout,
        };
        self.metrics
            .southbound(region, operation, outcome, started.elapsed());
        result
    }

    /// Values for the metrics exposition, read now.
    pub fn gauges(&self) -> Gauges {
        let mut gauges = Gauges {
            reconciler_backlog: self.backlog(),
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

    fn set_applied(&self, id: &str, applied: usize) -> Result<(), StoreError> {
        self.store.update(id, |r| r.applied = applied).map(|_| ())
    }

    fn finish(&self, id: &str, status: Status, detail: Option<String>) -> Result<(), StoreError> {
        self.store
            .update(id, |r| {
                r.status = status;
                r.detail = detail.map(String::into_boxed_str);
                r.last_modified = now_millis();
            })
            .map(|_| ())
    }
}

/// The first clause of a status detail: why the request got where it is, kept at the front
/// while the reconciler reports its attempts after it.
fn reason(detail: &Option<Box<str>>) -> &str {
    detail
        .as_deref()
        .and_then(|d| d.split("; ").next())
        .filter(|r| !r.is_empty())
        .unwrap_or("failed")
}

/// Why an undo stopped.
enum Undo<'a> {
    /// The platform failed to remove `step`; `left` steps may remain.
    Platform {
        left: usize,
        step: &'a Step,
        error: MepError,
    },
    /// A removal could not be recorded.
    State(StoreError),
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::config::{DriverKind, MepConfig};
    use crate::mep::Refusal;
    use crate::model::parse_creation;

    /// A platform that keeps steps by label and fails the calls it is told to.
    #[derive(Default)]
    struct Scripted {
        on: Mutex<BTreeSet<String>>,
        fail_apply: Mutex<Option<(String, MepError)>>,
        fail_remove: Mutex<Option<String>>,
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
            Ok(dns
                .chain(traffic)
                .map(|label| Step::new(&label, "/x", "{}"))
                .collect())
        }
        fn apply(&self, step: &Step) -> Result<(), MepError> {
            if let Some((label, e)) = self.fail_apply.lock().unwrap().clone() {
                if label == step.label() {
                    if e.is_ambiguous() {
                        self.on.lock().unwrap().insert(step.label().to_string());
                    }
                    return Err(e);
                }
            }
            self.on.lock().unwrap().insert(step.label().to_string());
            Ok(())
        }
        fn remove(&self, step: &Step) -> Result<(), MepError> {
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

    fn service() -> (Service, Arc<Scripted>) {
        let driver = Arc::new(Scripted::default());
        let config = RegionConfig {
            id: "2".into(),
            description: String::new(),
            latitude: 0.0,
            longitude: 0.0,
            altitude: 0.0,
            range_km: 1.0,
            mep: MepConfig::new(DriverKind::Simulated, "simulated:", Duration::from_secs(1)),
        };
        (
            Service::with_regions(vec![Region {
                config,
                driver: driver.clone(),
            }]),
            driver,
        )
    }

    fn request(dns_ids: &[&str]) -> CreationRequest {
        let rules: Vec<String> = dns_ids
            .iter()
            .map(|id| format!(r#"{{"dnsRuleId":"{id}","domainName":"a.b","ipAddressType":"IP_V4","ipAddress":"1.2.3.4"}}"#))
            .collect();
        parse_creation(
            format!(r#"{{"RegionId":"2","appDNSRule":[{}]}}"#, rules.join(",")).as_bytes(),
        )
        .unwrap()
    }

    fn on(d: &Scripted) -> Vec<String> {
        d.on.lock().unwrap().iter().cloned().collect()
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
        let ApiError::Mep {
            request_id: Some(id),
            ..
        } = e
        else {
            panic!("{e:?}")
        };
        let r = s.get(&id).unwrap();
        assert_eq!((r.status, r.applied), (Status::Failed, 0));
        assert!(r.detail.unwrap().contains("removed again"));
        assert!(on(&d).is_empty());
    }

    #[test]
    fn an_ambiguous_failure_also_removes_the_step_that_may_have_been_applied() {
        let (s, d) = service();
        *d.fail_apply.lock().unwrap() = Some(("b".into(), MepError::Timeout { url: "u".into() }));
        let e = s.create(request(&["a", "b"])).unwrap_err();
        assert_eq!(e.status(), 504);
        assert!(on(&d).is_empty(), "the timed-out step must be removed too");
    }

    #[test]
    fn a_failed_undo_is_finished_by_the_reconciler_once_the_platform_recovers() {
        let (s, d) = service();
        *d.fail_apply.lock().unwrap() = Some((
            "c".into(),
            MepError::Refused {
                url: "u".into(),
                status: 400,
                detail: String::new(),
            },
        ));
        *d.fail_remove.lock().unwrap() = Some("a".into());
        let Err(ApiError::Mep {
            request_id: Some(id),
            ..
        }) = s.create(request(&["a", "b", "c"]))
        else {
            panic!()
        };
        let r = s.get(&id).unwrap();
        assert_eq!((r.status, r.applied), (Status::Failed, 1));
        assert_eq!(on(&d), ["a"]);
        assert!(r.detail.unwrap().contains("1 rule call(s) may remain"));
        assert_eq!(s.backlog(), 1);
        // still failing: the reconciler retries later and says so
        s.store.update(&id, |r| r.next_attempt = 0).unwrap();
        assert!(s.reconcile_once().is_some(), "another attempt is scheduled");
        let r = s.get(&id).unwrap();
        assert_eq!((r.status, r.applied, r.attempts), (Status::Failed, 1, 1));
        assert!(r.detail.unwrap().contains("removal attempt 1 failed"));
        // the platform recovers
        *d.fail_remove.lock().unwrap() = None;
        s.store.update(&id, |r| r.next_attempt = 0).unwrap();
        assert!(s.reconcile_once().is_none(), "nothing left to do");
        let r = s.get(&id).unwrap();
        assert_eq!(
            (r.status, r.applied),
            (Status::Failed, 0),
            "listed FAILED until deleted"
        );
        assert!(on(&d).is_empty());
        assert!(matches!(s.delete(&id).unwrap(), Removal::Done(_)));
        assert!(s.get(&id).is_none());
    }

    #[test]
    fn delete_of_an_unknown_or_busy_request_is_refused() {
        let (s, _) = service();
        assert_eq!(s.delete("nope").unwrap_err().status(), 404);
        let id = s.create(request(&["a"])).unwrap();
        s.store.update(&id, |r| r.status = Status::Pending).unwrap();
        assert_eq!(s.delete(&id).unwrap_err().status(), 409);
        s.store
            .update(&id, |r| {
                r.status = Status::Created;
                r.busy = true;
            })
            .unwrap();
        assert_eq!(s.delete(&id).unwrap_err().status(), 409);
    }

    #[test]
    fn a_delete_the_platform_refuses_is_accepted_and_finished_in_the_background() {
        let (s, d) = service();
        let id = s.create(request(&["a", "b"])).unwrap();
        *d.fail_remove.lock().unwrap() = Some("a".into());
        let Removal::Accepted(r) = s.delete(&id).unwrap() else {
            panic!("accepted")
        };
        assert_eq!((r.status, r.applied), (Status::Deleting, 1));
        assert!(r.detail.unwrap().contains("retrying in the background"));
        // a second DELETE answers the same
        assert!(matches!(s.delete(&id).unwrap(), Removal::Accepted(_)));
        *d.fail_remove.lock().unwrap() = None;
        s.reconcile_once();
        assert!(
            s.get(&id).is_none(),
            "removed once the platform took the rules off"
        );
        assert!(on(&d).is_empty());
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
        s.delete(&first).unwrap();
        assert_eq!(on(&d), ["same"], "the second request still needs it");
        s.delete(&second).unwrap();
        assert!(on(&d).is_empty());
    }

    #[test]
    fn an_unknown_region_is_refused_before_anything_is_recorded() {
        let (s, _) = service();
        let mut r = request(&["a"]);
        r.region_id = "9".into();
        assert_eq!(s.create(r).unwrap_err().status(), 422);
        assert!(s.list(None).is_empty());
    }
}
