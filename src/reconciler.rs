//! The background side of the record lifecycle: start-up recovery ([`recover`]) and the
//! reconciler thread ([`Reconciler`]), which removes the rules of FAILED and DELETING requests
//! (and rolls back a PENDING one nobody works on) as their attempts fall due, with exponential
//! backoff, and compacts the journal when it is due. It works through [`Service`]'s undo and
//! [`Record`]'s transitions, like a DELETE; `service` does not depend on it.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{error, info, warn};

use crate::model::Status;
use crate::service::{
    Service, Undo, driver_changed, epoch_millis, millis_until, region_gone, settling,
};
use crate::store::{Record, StoreError};
use crate::util::now_millis;

/// The running reconciler thread. Dropping it asks the thread to stop without waiting for it.
pub struct Reconciler {
    service: Arc<Service>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reconciler {
    /// Starts the reconciler thread for `service`; an error when the thread cannot be spawned.
    pub fn start(service: Arc<Service>) -> io::Result<Reconciler> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (service, stop) = (service.clone(), stop.clone());
            thread::Builder::new()
                .name("reconciler".into())
                .spawn(move || run(&service, &stop))?
        };
        Ok(Reconciler {
            service,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it: its pass in progress (maybe a platform call) ends
    /// first.
    pub fn stop(mut self) {
        self.ask_to_stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    fn ask_to_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.service.wake_reconciler();
    }
}

impl Drop for Reconciler {
    fn drop(&mut self) {
        self.ask_to_stop();
    }
}

/// Runs until `stop` is set: removals as they fall due, FAILED requests past
/// `failed_retention_s` ([`Service::expire_failed`], every [`Service::expiry_every`]), and
/// journal compaction when it is needed; between passes it sleeps until the next is due (at
/// most 1 s) or it is woken.
fn run(service: &Service, stop: &AtomicBool) {
    let mut last_expiry = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let next = reconcile_pass(service, stop)
            .unwrap_or(Duration::MAX)
            .min(Duration::from_secs(1));
        if service
            .expiry_every()
            .is_some_and(|every| last_expiry.elapsed() >= every)
        {
            last_expiry = Instant::now();
            service.expire_failed(now_millis());
        }
        compact_if_needed(service);
        service.wait_for_work(next);
    }
}

/// Compacts the journal if it is due; a failure is logged (the next look tries again).
fn compact_if_needed(service: &Service) {
    if let Err(e) = service.store.compact_if_needed() {
        error!("compaction failed (the journal keeps growing until it succeeds): {e}");
    }
}

/// Start-up: a request caught PENDING by a crash was never acknowledged, so it is rolled back:
/// it becomes FAILED ([`Record::interrupted`]) and the reconciler removes what the journal
/// says may have been applied. A request caught DELETING is finished by the reconciler. The
/// drivers are told which steps of PENDING, FAILED and DELETING requests may have been sent
/// without their outcome being seen (see
/// [`Driver::outcome_unknown_after_restart`](crate::mep::Driver::outcome_unknown_after_restart)):
/// a DELETING request may have been FAILED, with a creation the platform never answered,
/// before its DELETE.
pub fn recover(service: &Service) -> Result<(), StoreError> {
    let now = now_millis();
    for record in service.list(None) {
        if matches!(
            record.status,
            Status::Pending | Status::Failed | Status::Deleting
        ) {
            if let Some(region) = service.region(&record.region_id) {
                for step in record.steps.iter().take(record.applied) {
                    region.driver.outcome_unknown_after_restart(step);
                }
                // The earlier run may have sent the last applied step up to its end: its apply
                // (a creation), or its removal (an undo, a DELETE), which may still land and
                // take away another request's apply of the same rule.
                if record.applied > 0 {
                    service.note_unsettled(&record.id, record.applied - 1, region);
                    service.removal_may_land(region, &record.steps[record.applied - 1]);
                }
            }
        }
        if record.status != Status::Pending {
            continue;
        }
        let detail = rolled_back("a restart", record.applied);
        warn!("request {}: {detail}", record.id);
        match service
            .store
            .update(&record.id, |r| r.interrupted(detail, now))
        {
            Ok(_) => {}
            // A start on a full state directory serves reads all the same: the record stays
            // PENDING, which the reconciler rolls back once there is room.
            Err(e) if e.is_no_space() => warn!(
                "request {}: its roll-back cannot be recorded now ({e}); the reconciler rolls \
                 it back once the state directory has room",
                record.id
            ),
            Err(e) => return Err(e),
        }
    }
    service.warn_moved_regions();
    let backlog = service.backlog();
    if backlog > 0 {
        info!("{backlog} request(s) have rules to remove; the reconciler takes them now");
    }
    Ok(())
}

/// One pass of the reconciler: retries every removal that is due. Returns how long until the
/// next one is due (`None`: nothing pending).
#[cfg(test)]
pub fn reconcile_once(service: &Service) -> Option<Duration> {
    reconcile_pass(service, &AtomicBool::new(false))
}

/// Least time between two looks at the journal's size within one pass.
const COMPACTION_CHECK_EVERY: Duration = Duration::from_secs(1);

/// One pass (see [`reconcile_once`]), which ends early when `stop` is set: the records not
/// taken yet are given back as they were. A region whose platform did not answer one removal
/// (no connection, no answer in time) is sent no other in this pass: its other records are
/// due again when that one is (and go before it), so a dead platform costs one timeout a
/// pass, not one a record
/// (found by an audit: 30 records on a hanging platform made each pass last 90 s, during which
/// the other regions' removals and the journal's compaction waited). Compaction is looked at
/// between records too.
fn reconcile_pass(service: &Service, stop: &AtomicBool) -> Option<Duration> {
    let now = now_millis();
    let due = service.store.claim(
        |r| r.needs_removal() && r.next_attempt <= now,
        |r| {
            let claimed = r.claim();
            debug_assert!(claimed, "only a record nobody works on needs removal");
        },
    );
    // Fewest attempts first, then oldest: a record left for a silent region keeps its count, so
    // the next pass sends its removal before the one that found the platform silent again. A
    // rule the platform hangs on alone therefore holds up neither the region's other removals
    // for ever (a review's finding), and a dead platform is still sent one removal a pass.
    let mut due = due;
    due.sort_unstable_by_key(|r| (r.attempts, r.seq));
    let mut silent: Vec<(Arc<str>, i64)> = Vec::new();
    let mut compaction_checked = Instant::now();
    for record in due {
        let deferred = silent
            .iter()
            .find(|(region, _)| *region == record.region_id);
        if stop.load(Ordering::Relaxed) || deferred.is_some() {
            let at = deferred.map_or(record.next_attempt, |(_, at)| *at);
            let _ = service
                .store
                .update(&record.id, |r| r.leave_to_reconciler(at));
            continue;
        }
        if compaction_checked.elapsed() >= COMPACTION_CHECK_EVERY {
            compaction_checked = Instant::now();
            compact_if_needed(service);
        }
        let outcome = reconcile(service, &record);
        if let Ok(Some(at)) = outcome {
            info!(
                "region {}: its platform did not answer; its other removals wait until the next attempt",
                record.region_id
            );
            silent.push((record.region_id.clone(), at));
        }
        if let Err(e) = outcome {
            let attempts = record.attempts + 1;
            let at = service.retry.next_at(attempts);
            error!(
                "request {}: the state could not be made durable: {e}; next attempt in {} ms",
                record.id,
                millis_until(at)
            );
            let _ = service
                .store
                .update(&record.id, |r| r.back_off(attempts, at));
        }
    }
    let now = now_millis();
    service
        .store
        .earliest(Record::needs_removal, |r| r.next_attempt)
        .map(|at| Duration::from_millis((at - now).max(0) as u64))
}

/// Removes what the `claimed` record holds on its platform (a PENDING one is rolled back
/// first) and records how that went; the record is given back in every case but an error,
/// which [`reconcile_pass`] handles. `Some(at)`: the platform did not answer (see
/// [`MepError::is_silence`](crate::mep::MepError::is_silence)); the record is due again at
/// `at`.
fn reconcile(service: &Service, claimed: &Record) -> Result<Option<i64>, StoreError> {
    let id = &claimed.id;
    let mut record = claimed.clone();
    if record.status == Status::Pending {
        let detail = rolled_back("a failure to record its state", record.applied);
        warn!("request {id}: {detail}");
        if let Some(now) = service.store.update(id, |r| {
            r.interrupted(detail, now_millis());
            r.clone()
        })? {
            record = now;
        }
    }
    if let Some(current) = service.moved(&record) {
        return leave_alone(service, &record, platform_changed(&record, current));
    }
    if let Some(driver) = service.foreign(&record) {
        return leave_alone(service, &record, driver_changed(&record.region_id, driver));
    }
    info!(
        "request {id}: removing {} rule call(s) from region {} (attempt {})",
        record.applied,
        record.region_id,
        record.attempts + 1
    );
    let Some(undone) = service.undo_record(&record) else {
        let detail = region_gone(&record.region_id);
        error!("request {id}: {detail}");
        let at = now_millis() + service.retry.max.as_millis() as i64;
        service.store.update(id, |r| r.stuck(detail, at))?;
        return Ok(None);
    };
    record_outcome(service, &record, undone)
}

/// Leaves the claimed `record` alone, for `why`: its steps were applied on another platform
/// than its region's current one, or planned by another driver than its region's now, so
/// they are neither removed nor taken as removed until a DELETE says what to do
/// (`?adopt=true`, `?forget=true`) or the configuration goes back. Logged once; its detail
/// says so (written once: the same detail again changes nothing durable); looked at again
/// after the longest backoff.
fn leave_alone(service: &Service, record: &Record, why: String) -> Result<Option<i64>, StoreError> {
    service.log_left_alone_once(record, &why);
    let detail = match record.status {
        Status::Deleting => why,
        _ => format!("{}; {why}", reason(record)),
    };
    let at = now_millis() + service.retry.max.as_millis() as i64;
    service.store.update(&record.id, |r| r.stuck(detail, at))?;
    Ok(None)
}

/// What the detail of a request whose region's platform URL changed says.
fn platform_changed(record: &Record, current: &str) -> String {
    format!(
        "its rules were applied on the platform {}, but region '{}' is now configured with {current}: they are not removed from either until a DELETE says which (?adopt=true: the same platform at a new address, removed there; ?forget=true: left where they are)",
        record.platform.as_deref().unwrap_or_default(),
        record.region_id
    )
}

/// Records how the reconciler's removal of `record`'s steps went; `Some(at)` as
/// [`reconcile`] says.
fn record_outcome(
    service: &Service,
    record: &Record,
    undone: Result<(), Undo<'_>>,
) -> Result<Option<i64>, StoreError> {
    let id = &record.id;
    match undone {
        Ok(()) if record.status == Status::Deleting => {
            service.store.remove(id)?;
            info!("request {id}: removed from region {}", record.region_id);
        }
        Ok(()) => {
            let detail = format!(
                "{}; every rule call it may have applied has since been removed from the platform",
                reason(record)
            );
            service
                .store
                .update(id, |r| r.undone(detail, now_millis()))?;
            info!(
                "request {id}: every rule removed from region {}",
                record.region_id
            );
        }
        Err(Undo::Platform { left, step, error }) => {
            let attempts = record.attempts + 1;
            let at = service.retry.next_at(attempts);
            let detail = format!(
                "{}; removal attempt {attempts} failed at {}: {error}; {left} rule call(s) still on the platform; next attempt in {} s",
                reason(record),
                step.label(),
                (millis_until(at) / 1000).max(1)
            );
            warn!("request {id}: {detail}");
            service
                .store
                .update(id, |r| r.retry(attempts, at, detail, now_millis()))?;
            return Ok(error.is_silence().then_some(at));
        }
        Err(Undo::Settling { step, until, .. }) => {
            let detail = format!("{}; {}", reason(record), settling(step, until));
            info!("request {id}: {detail}");
            let until = epoch_millis(until);
            service
                .store
                .update(id, |r| r.settling(until, detail, now_millis()))?;
        }
        Err(Undo::State(e)) => return Err(e),
    }
    Ok(None)
}

/// The detail of a creation that `cause` interrupted, rolled back.
fn rolled_back(cause: &str, applied: usize) -> String {
    if applied == 0 {
        format!("interrupted by {cause} before any rule was applied")
    } else {
        format!(
            "interrupted by {cause} while being applied (never acknowledged), so rolled back; {applied} rule call(s) may be on the platform and are being removed"
        )
    }
}

/// The first clause of a status detail: why the request got where it is, kept at the front
/// while the reconciler reports its attempts after it. Without a detail, what its status
/// says (a DELETE's removal restarted after a crash has none: it did not fail).
fn reason(record: &Record) -> &str {
    let by_status = match record.status {
        Status::Deleting => "being deleted",
        Status::Pending => "being rolled back",
        _ => "failed",
    };
    record
        .detail
        .as_deref()
        .and_then(|d| d.split("; ").next())
        .filter(|r| !r.is_empty())
        .unwrap_or(by_status)
}

#[cfg(test)]
mod tests {
    //! The reconciler finishing what creations and DELETEs left (with the service's scripted
    //! platform), and recovery.
    use std::time::{Duration, Instant};

    use super::*;
    use crate::mep::MepError;
    use crate::service::Deletion;
    use crate::service::Removal;
    use crate::service::tests::{
        durable, fail_append_in, moved_to, on, recorded_id, request, service, service_settling,
    };
    use crate::store::Store;

    /// Found by an audit: a start on a full state directory failed (exit 1, and systemd
    /// restarted it in a loop, reads included) when a crash had left a creation PENDING,
    /// because recovery could not record its roll-back.
    #[test]
    fn a_start_on_a_full_state_dir_leaves_a_creation_caught_pending_to_the_reconciler() {
        let (s, d, dir) = durable("pending-full");
        let id = s.create(request(&["a"])).unwrap();
        // As a crash during its creation leaves it.
        s.store.update(&id, |r| r.status = Status::Pending).unwrap();
        crate::journal::FAIL_APPEND_NO_SPACE.with(|c| c.set(true));
        recover(&s).expect("a full state directory does not stop the start");
        assert_eq!(s.get(&id).unwrap().status, Status::Pending);
        // Still no room: nothing is removed whose roll-back cannot be recorded.
        reconcile_once(&s);
        assert_eq!(on(&d), ["a"]);
        crate::journal::FAIL_APPEND_NO_SPACE.with(|c| c.set(false));
        // Room again, and its backoff runs out.
        s.store.update(&id, |r| r.next_attempt = 0).unwrap();
        reconcile_once(&s);
        let r = s.get(&id).unwrap();
        assert_eq!((r.status, r.applied), (Status::Failed, 0));
        assert!(on(&d).is_empty(), "rolled back once there is room");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_detail_without_a_reason_says_what_the_status_says() {
        let record = |status, detail: Option<&str>| {
            let mut r = Record::new(
                "r".into(),
                "1".into(),
                "{}".into(),
                status,
                Arc::from(Vec::new()),
                0,
                0,
            );
            r.detail = detail.map(Into::into);
            r
        };
        // A DELETE's removal restarted after a crash has no detail: it did not fail.
        assert_eq!(reason(&record(Status::Deleting, None)), "being deleted");
        assert_eq!(reason(&record(Status::Pending, None)), "being rolled back");
        assert_eq!(reason(&record(Status::Failed, None)), "failed");
        let why = Some("DNS rule 'd' failed: refused; more");
        assert_eq!(
            reason(&record(Status::Deleting, why)),
            "DNS rule 'd' failed: refused"
        );
    }

    #[test]
    fn after_a_restart_an_apply_waits_for_a_removal_the_earlier_run_may_have_sent() {
        let settle = Duration::from_millis(300);
        let (s, d) = service_settling(Store::in_memory(), settle);
        let id = s.create(request(&["a"])).unwrap();
        // As a crash during its DELETE leaves it: the removal of "a" may still land.
        s.store
            .update(&id, |r| r.status = Status::Deleting)
            .unwrap();
        recover(&s).unwrap();
        let started = Instant::now();
        let other = s.create(request(&["a"])).unwrap();
        assert!(started.elapsed() >= settle, "{:?}", started.elapsed());
        assert_eq!(s.get(&other).unwrap().status, Status::Created);
        // A rule of no such record is applied at once.
        let started = Instant::now();
        s.create(request(&["b"])).unwrap();
        assert!(started.elapsed() < settle, "{:?}", started.elapsed());
        assert!(on(&d).contains(&"b".to_string()), "{:?}", on(&d));
    }

    #[test]
    fn recovery_rolls_back_a_creation_caught_pending_and_the_reconciler_removes_its_steps() {
        let (s, d) = service();
        let id = s.create(request(&["a", "b"])).unwrap();
        // As a crash leaves it: PENDING, nobody on it (`busy` is not journaled).
        s.store.update(&id, |r| r.status = Status::Pending).unwrap();
        recover(&s).unwrap();
        let r = s.get(&id).unwrap();
        assert_eq!((r.status, r.applied, r.busy), (Status::Failed, 2, false));
        assert!(r.detail.unwrap().contains("interrupted by a restart"));
        assert_eq!(s.backlog(), 1);
        reconcile_once(&s);
        assert!(on(&d).is_empty());
        assert_eq!(s.get(&id).unwrap().applied, 0);
    }

    #[test]
    fn the_reconciler_thread_finishes_an_accepted_delete_and_stops_when_asked() {
        let (s, d) = service();
        let s = Arc::new(s);
        let reconciler = Reconciler::start(s.clone()).unwrap();
        let id = s.create(request(&["a"])).unwrap();
        *d.fail_remove.lock().unwrap() = Some("a".into());
        assert!(matches!(
            s.delete(&id, false).unwrap(),
            Removal::Accepted(_)
        ));
        *d.fail_remove.lock().unwrap() = None;
        // A second DELETE makes it due now and wakes the thread.
        s.delete(&id, false).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.get(&id).is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(s.get(&id).is_none(), "finished by the thread");
        assert!(on(&d).is_empty());
        reconciler.stop();
    }

    #[test]
    fn a_rule_held_only_by_a_request_whose_removal_is_pending_is_removed_not_released() {
        let (s, d) = service();
        // B applies "x", fails at "y" and cannot remove "x": FAILED, removal pending.
        *d.fail_apply.lock().unwrap() = Some((
            "y".into(),
            MepError::Refused {
                url: "u".into(),
                status: 400,
                detail: String::new(),
            },
        ));
        *d.fail_remove.lock().unwrap() = Some("x".into());
        let b = recorded_id(s.create(request(&["x", "y"])).unwrap_err());
        assert_eq!(s.get(&b).unwrap().applied, 1);
        // A activates the same rule and is deleted while B's removal still fails: A's DELETE
        // cannot say "removed" (201) while the rule is on the platform.
        *d.fail_apply.lock().unwrap() = None;
        let a = s.create(request(&["x"])).unwrap();
        let Removal::Accepted(r) = s.delete(&a, false).unwrap() else {
            panic!("201 while the rule is still on the platform")
        };
        assert_eq!(r.status, Status::Deleting);
        assert_eq!(on(&d), ["x"]);
        // Once the platform removes it, both requests are done.
        *d.fail_remove.lock().unwrap() = None;
        for _ in 0..3 {
            s.store.update(&a, |r| r.next_attempt = 0).unwrap();
            s.store.update(&b, |r| r.next_attempt = 0).unwrap();
            reconcile_once(&s);
        }
        assert!(on(&d).is_empty());
        assert!(s.get(&a).is_none());
        assert_eq!(s.get(&b).unwrap().applied, 0);
    }

    #[test]
    fn a_removal_sent_within_the_settle_window_is_sent_again_after_it() {
        let settle = Duration::from_millis(300);
        let (s, d) = service_settling(Store::in_memory(), settle);
        *d.fail_apply.lock().unwrap() = Some(("b".into(), MepError::Timeout { url: "u".into() }));
        let started = Instant::now();
        let e = s.create(request(&["a", "b"])).unwrap_err();
        assert_eq!(e.status(), 504);
        let id = recorded_id(e);
        // The early removal of "b" was answered; the record still counts it, and "a".
        let r = s.get(&id).unwrap();
        assert_eq!((r.status, r.applied), (Status::Failed, 2));
        let detail = r.detail.unwrap();
        assert!(detail.contains("settle window"), "{detail}");
        // The late apply lands after the early removal.
        d.on.lock().unwrap().insert("b".into());
        if started.elapsed() < settle {
            reconcile_once(&s);
            assert!(
                on(&d).contains(&"b".to_string()),
                "not due before the window"
            );
        }
        std::thread::sleep(settle.saturating_sub(started.elapsed()) + Duration::from_millis(20));
        reconcile_once(&s);
        assert!(on(&d).is_empty(), "{:?}", on(&d));
        let r = s.get(&id).unwrap();
        assert_eq!((r.status, r.applied), (Status::Failed, 0));
        assert!(r.detail.unwrap().contains("has since been removed"));
    }

    #[test]
    fn an_apply_that_may_still_land_is_not_released_to_another_request_within_the_window() {
        let settle = Duration::from_millis(300);
        let (s, d) = service_settling(Store::in_memory(), settle);
        // B holds "x"; A's apply of the same rule times out (it may land later).
        let b = s.create(request(&["x"])).unwrap();
        *d.fail_apply.lock().unwrap() = Some(("x".into(), MepError::Timeout { url: "u".into() }));
        let started = Instant::now();
        let a = recorded_id(s.create(request(&["x"])).unwrap_err());
        *d.fail_apply.lock().unwrap() = None;
        if started.elapsed() >= settle {
            return; // too slow a machine to be within the window
        }
        // Within A's window, B is deleted: "x" is removed from the platform...
        s.delete(&b, false).unwrap();
        // ...and then A's late apply lands.
        d.on.lock().unwrap().insert("x".into());
        std::thread::sleep(settle.saturating_sub(started.elapsed()) + Duration::from_millis(20));
        for _ in 0..3 {
            s.store.update(&a, |r| r.next_attempt = 0).unwrap();
            reconcile_once(&s);
        }
        assert!(
            on(&d).is_empty(),
            "A let go of a rule its late apply put back: orphan {:?}",
            on(&d)
        );
    }

    #[test]
    fn a_delete_within_the_settle_window_is_accepted_and_finished_after_it() {
        let settle = Duration::from_millis(300);
        let (s, d) = service_settling(Store::in_memory(), settle);
        *d.fail_apply.lock().unwrap() = Some(("a".into(), MepError::Timeout { url: "u".into() }));
        let started = Instant::now();
        let id = recorded_id(s.create(request(&["a"])).unwrap_err());
        d.on.lock().unwrap().insert("a".into());
        if started.elapsed() < settle {
            let Removal::Accepted(r) = s.delete(&id, false).unwrap() else {
                panic!("a DELETE within the window cannot say the rule is gone")
            };
            assert_eq!(r.status, Status::Deleting);
        }
        std::thread::sleep(settle.saturating_sub(started.elapsed()) + Duration::from_millis(20));
        reconcile_once(&s);
        assert!(on(&d).is_empty());
        assert!(s.get(&id).is_none() || s.get(&id).unwrap().applied == 0);
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
        let id = recorded_id(s.create(request(&["a", "b", "c"])).unwrap_err());
        let r = s.get(&id).unwrap();
        assert_eq!((r.status, r.applied), (Status::Failed, 1));
        assert_eq!(on(&d), ["a"]);
        assert!(r.detail.unwrap().contains("1 rule call(s) may remain"));
        assert_eq!(s.backlog(), 1);
        // still failing: the reconciler retries later and says so
        s.store.update(&id, |r| r.next_attempt = 0).unwrap();
        assert!(reconcile_once(&s).is_some(), "another attempt is scheduled");
        let r = s.get(&id).unwrap();
        assert_eq!((r.status, r.applied, r.attempts), (Status::Failed, 1, 1));
        assert!(r.detail.unwrap().contains("removal attempt 1 failed"));
        // the platform recovers
        *d.fail_remove.lock().unwrap() = None;
        s.store.update(&id, |r| r.next_attempt = 0).unwrap();
        assert!(reconcile_once(&s).is_none(), "nothing left to do");
        let r = s.get(&id).unwrap();
        assert_eq!(
            (r.status, r.applied),
            (Status::Failed, 0),
            "listed FAILED until deleted"
        );
        assert!(on(&d).is_empty());
        assert!(matches!(s.delete(&id, false).unwrap(), Removal::Done(_)));
        assert!(s.get(&id).is_none());
    }

    /// A region whose platform did not answer one removal is sent no other in that pass, and
    /// the record that found it silent goes after the others in the next: a rule the platform
    /// hangs on alone (here "a", unreachable) holds up the region's other removals for one
    /// pass, never for ever (a review found the oldest record probing first in every pass).
    #[test]
    fn a_silent_platform_gets_one_removal_a_pass_and_the_prober_goes_last_next() {
        let (s, d) = service();
        let ids: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(|rule| s.create(request(&[rule])).unwrap())
            .collect();
        for (id, rule) in ids.iter().zip(["a", "b", "c"]) {
            *d.fail_remove.lock().unwrap() = Some(rule.into());
            let removal = s.delete(id, false).unwrap();
            assert!(
                matches!(removal, Removal::Accepted(_)),
                "{rule}: {removal:?}"
            );
        }
        *d.fail_remove.lock().unwrap() = Some("a".into());
        let due_now = |s: &Service| {
            for id in &ids {
                s.store.update(id, |r| r.next_attempt = 0).unwrap();
            }
        };
        due_now(&s);
        reconcile_once(&s);
        // "a" (the oldest) found the platform silent: "b" and "c" were not sent.
        assert_eq!(on(&d), ["a", "b", "c"]);
        assert!(ids.iter().all(|id| s.get(id).is_some_and(|r| !r.busy)));
        due_now(&s);
        reconcile_once(&s);
        assert_eq!(on(&d), ["a"], "the others went first in the next pass");
        assert!(s.get(&ids[1]).is_none() && s.get(&ids[2]).is_none());
        assert_eq!(s.get(&ids[0]).unwrap().status, Status::Deleting);
    }

    #[test]
    fn a_delete_the_platform_refuses_is_accepted_and_finished_in_the_background() {
        let (s, d) = service();
        let id = s.create(request(&["a", "b"])).unwrap();
        *d.fail_remove.lock().unwrap() = Some("a".into());
        let Removal::Accepted(r) = s.delete(&id, false).unwrap() else {
            panic!("accepted")
        };
        assert_eq!((r.status, r.applied), (Status::Deleting, 1));
        assert!(r.detail.unwrap().contains("retrying in the background"));
        // a second DELETE answers the same
        assert!(matches!(
            s.delete(&id, false).unwrap(),
            Removal::Accepted(_)
        ));
        *d.fail_remove.lock().unwrap() = None;
        reconcile_once(&s);
        assert!(
            s.get(&id).is_none(),
            "removed once the platform took the rules off"
        );
        assert!(on(&d).is_empty());
    }

    #[test]
    fn a_removal_whose_state_could_not_be_written_is_retried_by_the_reconciler() {
        let (s, d, dir) = durable("delete-write-fails");
        let id = s.create(request(&["a"])).unwrap();
        // The DELETE records DELETING, removes the rule, then cannot record that.
        fail_append_in(2);
        let e = s.delete(&id, false).unwrap_err();
        assert_eq!((e.status(), e.request_id()), (500, Some(id.as_str())));
        let r = s.get(&id).unwrap();
        assert_eq!(
            (r.status, r.busy),
            (Status::Deleting, false),
            "left to the reconciler"
        );
        assert_eq!(s.backlog(), 1);
        s.store.update(&id, |r| r.next_attempt = 0).unwrap();
        reconcile_once(&s);
        assert!(s.get(&id).is_none(), "finished by the reconciler");
        assert!(on(&d).is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_creation_whose_state_could_not_be_written_is_rolled_back_by_the_reconciler() {
        let (s, d, dir) = durable("create-write-fails");
        // Recorded PENDING, applied, then CREATED cannot be recorded: never acknowledged.
        fail_append_in(2);
        let e = s.create(request(&["a"])).unwrap_err();
        let r = s.list(None)[0].clone();
        assert_eq!(
            (e.status(), e.request_id()),
            (500, Some(&*r.id)),
            "names the record"
        );
        assert_eq!((r.status, r.busy, r.applied), (Status::Pending, false, 1));
        assert_eq!(on(&d), ["a"]);
        // The reconciler rolls it back, as a restart would.
        s.store.update(&r.id, |r| r.next_attempt = 0).unwrap();
        reconcile_once(&s);
        let r = s.get(&r.id).unwrap();
        assert_eq!((r.status, r.busy, r.applied), (Status::Failed, false, 0));
        assert!(r.detail.unwrap().contains("failure to record its state"));
        assert!(on(&d).is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_reconciler_that_cannot_record_its_progress_backs_off() {
        let (s, _, dir) = durable("reconcile-write-fails");
        let id = s.create(request(&["a"])).unwrap();
        s.store
            .update(&id, |r| {
                r.status = Status::Deleting;
                r.next_attempt = 0;
            })
            .unwrap();
        fail_append_in(1);
        let next = reconcile_once(&s).expect("still to do");
        assert!(
            next >= Duration::from_millis(400),
            "retried after a backoff: {next:?}"
        );
        let r = s.get(&id).unwrap();
        assert_eq!((r.status, r.busy, r.attempts), (Status::Deleting, false, 1));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn recovery_and_the_reconciler_leave_a_request_whose_platform_moved_alone_until_adopted() {
        let (s, a) = service();
        let ids: Vec<String> = ["p", "f", "d"]
            .iter()
            .map(|label| s.create(request(&[label])).unwrap())
            .collect();
        // As a crash or a refused removal leaves them: PENDING, FAILED, DELETING, each with its
        // step applied on the platform "simulated:".
        for (id, status) in ids
            .iter()
            .zip([Status::Pending, Status::Failed, Status::Deleting])
        {
            s.store
                .update(id, |r| {
                    r.status = status;
                    r.detail = Some("why it got here".into());
                })
                .unwrap();
        }
        // Started again with the region's url changed.
        let (s, b) = moved_to(s, "http://b:2");
        recover(&s).unwrap();
        assert_eq!(
            s.get(&ids[0]).unwrap().status,
            Status::Failed,
            "rolled back"
        );
        assert_eq!(
            s.backlog(),
            3,
            "their rules still have to come off somewhere"
        );
        for pass in 0..2 {
            for id in &ids {
                s.store.update(id, |r| r.next_attempt = 0).unwrap();
            }
            assert!(
                reconcile_once(&s).unwrap() >= Duration::from_millis(59_000),
                "looked at again after the longest backoff, not every pass"
            );
            assert!(
                b.removals.lock().unwrap().is_empty(),
                "pass {pass}: B not called"
            );
            assert!(
                a.removals.lock().unwrap().is_empty(),
                "pass {pass}: A not called"
            );
            assert_eq!(
                crate::util::lock(&s.moved_logged).len(),
                3,
                "logged once each"
            );
            // The reason a FAILED request got there stays in front.
            let reasons = ["interrupted by a restart", "why it got here; ", "its rules"];
            for (id, reason) in ids.iter().zip(reasons) {
                let r = s.get(id).unwrap();
                assert_eq!((r.applied, r.busy), (1, false), "{id}");
                let detail = r.detail.unwrap();
                assert!(detail.starts_with(reason), "{detail}");
                for part in ["simulated:", "http://b:2", "adopt=true", "forget=true"] {
                    assert!(detail.contains(part), "{part}: {detail}");
                }
            }
        }
        // The DELETING one adopted: it and the others applied on the same old URL are
        // re-pointed (the platform moved), due at once, and removed on B by the reconciler.
        let Removal::Accepted(_) = s.delete_as(&ids[2], Deletion::Adopt).unwrap() else {
            panic!("already DELETING: handed to the reconciler")
        };
        assert!(
            crate::util::lock(&s.moved_logged).is_empty(),
            "none moved any more"
        );
        reconcile_once(&s);
        assert!(s.get(&ids[2]).is_none(), "the DELETING one is gone");
        for id in &ids[..2] {
            let r = s.get(id).unwrap();
            assert_eq!(
                (r.status, r.applied),
                (Status::Failed, 0),
                "FAILED, rules off"
            );
        }
        let mut removed = b.removals.lock().unwrap().clone();
        removed.sort();
        assert_eq!(removed, ["d", "f", "p"]);
        assert!(a.removals.lock().unwrap().is_empty());
    }
}
