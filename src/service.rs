//! Applying and removing a request's rules on its region's platform, atomically: a creation is
//! recorded PENDING, its steps are applied in order (DNS first, then traffic), and if one fails
//! the ones applied are undone in reverse order. Each step is recorded as possibly applied
//! before it is sent. No lock is held while a platform is called.

use std::sync::Arc;

use log::{info, warn};

use crate::config::{Config, RegionConfig};
use crate::error::ApiError;
use crate::mep::{self, Driver, MepError, Step};
use crate::model::{CreationRequest, Status};
use crate::store::{Record, Store};
use crate::util::{new_uuid, now_millis};

/// A configured region and the driver of its platform.
pub struct Region {
    pub config: RegionConfig,
    pub driver: Arc<dyn Driver>,
}

/// The regions and the records: everything the API operates on.
pub struct Service {
    regions: Vec<Region>,
    store: Store,
}

impl Service {
    /// Builds the service with the drivers the configuration names.
    pub fn new(config: &Config) -> Service {
        let regions = config
            .regions
            .iter()
            .map(|r| Region {
                config: r.clone(),
                driver: mep::build(&r.id, &r.mep),
            })
            .collect();
        Service::with_regions(regions)
    }

    /// Builds the service with the given regions (tests use this to inject drivers).
    pub fn with_regions(regions: Vec<Region>) -> Service {
        Service {
            regions,
            store: Store::new(),
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

    pub fn list(&self, region_id: Option<&str>) -> Vec<Record> {
        self.store.list(region_id)
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
        let now = now_millis();
        let steps = Arc::new(steps);
        self.store.insert(Record {
            id: id.clone(),
            request: Arc::new(request),
            status: Status::Pending,
            detail: None,
            created_at: now,
            last_modified: now,
            steps: steps.clone(),
            applied: 0,
        });

        let mut failure = None;
        for (k, step) in steps.iter().enumerate() {
            // Recorded before it is sent: from here on the step may be on the platform.
            self.set_applied(&id, k + 1);
            if let Err(error) = driver.apply(step) {
                if !error.is_ambiguous() {
                    self.set_applied(&id, k);
                }
                failure = Some((step, error));
                break;
            }
        }
        let Some((failed_step, error)) = failure else {
            self.finish(&id, Status::Created, None);
            info!(
                "request {id}: {} rule call(s) applied in region {}",
                steps.len(),
                region.config.id
            );
            return Ok(id);
        };

        warn!(
            "request {id}: {} failed in region {}: {error}; undoing",
            failed_step.label, region.config.id
        );
        let detail = match self.undo(&id, driver.as_ref(), &steps) {
            Ok(()) => format!(
                "{} failed: {error}; every rule applied before it was removed again",
                failed_step.label
            ),
            Err((left, undo_step, undo_error)) => format!(
                "{} failed: {error}; then removing {} failed: {undo_error}; {left} rule call(s) may remain on the platform, DELETE this request to retry their removal",
                failed_step.label, undo_step.label
            ),
        };
        self.finish(&id, Status::Failed, Some(detail));
        Err(ApiError::Mep {
            region_id: region.config.id.clone(),
            request_id: Some(id),
            error,
        })
    }

    /// Removes every rule of a request from its platform, then forgets the request. Returns the
    /// final record (status DELETED). If the platform cannot remove them, the request stays
    /// recorded with what is still applied, so the caller can retry.
    pub fn delete(&self, id: &str) -> Result<Record, ApiError> {
        let started = self
            .store
            .update(id, |r| match r.status {
                Status::Pending | Status::Deleting => Err(ApiError::Conflict {
                    request_id: id.to_string(),
                    detail: format!("is {:?}; retry once that finishes", r.status).to_uppercase(),
                }),
                previous => {
                    r.status = Status::Deleting;
                    r.last_modified = now_millis();
                    Ok((previous, r.clone()))
                }
            })
            .ok_or_else(|| ApiError::RequestNotFound {
                request_id: id.to_string(),
            })?;
        let (previous, record) = started?;
        let Some(region) = self.region(record.region_id()) else {
            let detail = format!(
                "region '{}' is no longer configured; its rules cannot be removed",
                record.region_id()
            );
            self.finish(id, previous, Some(detail.clone()));
            return Err(ApiError::Internal { detail });
        };

        match self.undo(id, region.driver.as_ref(), &record.steps) {
            Ok(()) => {
                let mut record = self.store.remove(id).unwrap_or(record);
                record.status = Status::Deleted;
                record.applied = 0;
                record.last_modified = now_millis();
                info!("request {id}: removed from region {}", region.config.id);
                Ok(record)
            }
            Err((left, step, error)) => {
                let status = if left == record.applied {
                    previous
                } else {
                    Status::Failed
                };
                let detail = format!(
                    "removing {} failed: {error}; {left} rule call(s) still on the platform, retry DELETE",
                    step.label
                );
                warn!("request {id}: {detail}");
                self.finish(id, status, Some(detail));
                Err(ApiError::Mep {
                    region_id: region.config.id.clone(),
                    request_id: None,
                    error,
                })
            }
        }
    }

    /// Removes the applied steps of a request in reverse order, recording each removal; a step
    /// another request of the region also holds stays on the platform. On a failure, returns
    /// how many steps may remain and which removal failed.
    fn undo<'a>(
        &self,
        id: &str,
        driver: &dyn Driver,
        steps: &'a [Step],
    ) -> Result<(), (usize, &'a Step, MepError)> {
        let applied = self.store.get(id).map_or(0, |r| r.applied);
        for k in (0..applied).rev() {
            if self.store.release_if_shared(id, k) {
                continue;
            }
            driver
                .remove(&steps[k])
                .map_err(|e| (k + 1, &steps[k], e))?;
            self.set_applied(id, k);
        }
        Ok(())
    }

    fn set_applied(&self, id: &str, applied: usize) {
        self.store.update(id, |r| r.applied = applied);
    }

    fn finish(&self, id: &str, status: Status, detail: Option<String>) {
        self.store.update(id, |r| {
            r.status = status;
            r.detail = detail;
            r.last_modified = now_millis();
        });
    }
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
                .map(|label| Step {
                    label,
                    target: "/x".into(),
                    body: "{}".into(),
                })
                .collect())
        }
        fn apply(&self, step: &Step) -> Result<(), MepError> {
            if let Some((label, e)) = self.fail_apply.lock().unwrap().clone() {
                if label == step.label {
                    if e.is_ambiguous() {
                        self.on.lock().unwrap().insert(step.label.clone());
                    }
                    return Err(e);
                }
            }
            self.on.lock().unwrap().insert(step.label.clone());
            Ok(())
        }
        fn remove(&self, step: &Step) -> Result<(), MepError> {
            if self.fail_remove.lock().unwrap().as_deref() == Some(step.label.as_str()) {
                return Err(MepError::Unreachable {
                    url: "u".into(),
                    reason: "down".into(),
                });
            }
            self.on.lock().unwrap().remove(&step.label);
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
            mep: MepConfig {
                driver: DriverKind::Simulated,
                url: "simulated:".into(),
                timeout: Duration::from_secs(1),
            },
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
    fn a_failed_undo_keeps_what_may_remain_and_delete_retries_it() {
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
        // still failing: DELETE keeps the record
        assert_eq!(s.delete(&id).unwrap_err().status(), 502);
        assert_eq!(s.get(&id).unwrap().status, Status::Failed);
        // platform recovers: DELETE removes the rest and forgets the request
        *d.fail_remove.lock().unwrap() = None;
        assert_eq!(s.delete(&id).unwrap().status, Status::Deleted);
        assert!(s.get(&id).is_none() && on(&d).is_empty());
    }

    #[test]
    fn delete_of_an_unknown_or_busy_request_is_refused() {
        let (s, _) = service();
        assert_eq!(s.delete("nope").unwrap_err().status(), 404);
        let id = s.create(request(&["a"])).unwrap();
        s.store.update(&id, |r| r.status = Status::Pending);
        assert_eq!(s.delete(&id).unwrap_err().status(), 409);
    }

    #[test]
    fn a_partial_removal_marks_the_request_failed() {
        let (s, d) = service();
        let id = s.create(request(&["a", "b"])).unwrap();
        *d.fail_remove.lock().unwrap() = Some("a".into());
        assert!(s.delete(&id).is_err());
        let r = s.get(&id).unwrap();
        assert_eq!((r.status, r.applied), (Status::Failed, 1));
        let untouched = s.create(request(&["a2"])).unwrap();
        *d.fail_remove.lock().unwrap() = Some("a2".into());
        assert!(s.delete(&untouched).is_err());
        assert_eq!(
            s.get(&untouched).unwrap().status,
            Status::Created,
            "nothing removed: still CREATED"
        );
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
