//! The records of rule requests: one mutex-guarded map, held only for in-memory reads and
//! writes (never across a platform call). Every record says which of its planned steps may be
//! on the platform, so the plugin always knows what is installed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::mep::Step;
use crate::model::{CreationRequest, Status};

/// One rule request and what the plugin knows about its rules on the platform.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: String,
    /// What the caller sent (immutable once recorded).
    pub request: Arc<CreationRequest>,
    pub status: Status,
    /// Why the request is FAILED, or what a removal could not finish.
    pub detail: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub last_modified: i64,
    /// What will be (or was) sent to the platform, in apply order.
    pub steps: Arc<Vec<Step>>,
    /// `steps[..applied]` may be on the platform; `steps[applied..]` certainly are not.
    pub applied: usize,
}

impl Record {
    pub fn region_id(&self) -> &str {
        &self.request.region_id
    }
}

/// All records, keyed by request id.
#[derive(Debug, Default)]
pub struct Store {
    records: Mutex<BTreeMap<String, Record>>,
}

impl Store {
    pub fn new() -> Store {
        Store::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Record>> {
        // A panic while holding the lock cannot leave a half-written record (every mutation
        // is a single assignment), so a poisoned lock is safe to keep using.
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a new record. Ids are fresh UUIDs, so an existing one is never replaced.
    pub fn insert(&self, record: Record) {
        self.lock().insert(record.id.clone(), record);
    }

    /// A copy of one record (cheap: the request and steps are shared).
    pub fn get(&self, id: &str) -> Option<Record> {
        self.lock().get(id).cloned()
    }

    /// Copies of all records, or of one region's, in id order. The lock is released before
    /// the caller serialises them.
    pub fn list(&self, region_id: Option<&str>) -> Vec<Record> {
        self.lock()
            .values()
            .filter(|r| region_id.is_none_or(|id| r.region_id() == id))
            .cloned()
            .collect()
    }

    /// Changes one record under the lock; `None` if it does not exist. `change` must be quick
    /// and must not call out (no I/O, no platform call).
    pub fn update<T>(&self, id: &str, change: impl FnOnce(&mut Record) -> T) -> Option<T> {
        self.lock().get_mut(id).map(change)
    }

    /// Lowers record `id`'s applied count to `k` without a platform call if another record of
    /// the same region also holds `steps[k]` (an identical rule — LL-MEC keys rules by body, so
    /// removing it would take it from the other request too). Returns whether it did. Check and
    /// release are one step under the lock, so of two requests sharing a rule exactly one
    /// removes it from the platform.
    pub fn release_if_shared(&self, id: &str, k: usize) -> bool {
        let mut records = self.lock();
        let Some(record) = records.get(id) else {
            return false;
        };
        let (region, step) = (record.region_id().to_string(), record.steps[k].clone());
        let shared = records
            .values()
            .any(|r| r.id != id && r.region_id() == region && r.steps[..r.applied].contains(&step));
        if shared {
            if let Some(r) = records.get_mut(id) {
                r.applied = k;
            }
        }
        shared
    }

    /// Removes a record, returning it.
    pub fn remove(&self, id: &str) -> Option<Record> {
        self.lock().remove(id)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, region: &str) -> Record {
        let request = CreationRequest {
            region_id: region.into(),
            ..Default::default()
        };
        Record {
            id: id.into(),
            request: Arc::new(request),
            status: Status::Pending,
            detail: None,
            created_at: 1,
            last_modified: 1,
            steps: Arc::new(Vec::new()),
            applied: 0,
        }
    }

    #[test]
    fn records_are_listed_all_or_per_region() {
        let s = Store::new();
        s.insert(record("b", "1"));
        s.insert(record("a", "2"));
        assert_eq!(
            s.list(None)
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(s.list(Some("1")).len(), 1);
        assert!(s.list(Some("3")).is_empty());
    }

    #[test]
    fn a_step_held_by_another_record_of_the_region_is_released_without_removal() {
        let s = Store::new();
        let step = Step {
            label: "l".into(),
            target: "/t".into(),
            body: "{}".into(),
        };
        for (id, region) in [("a", "1"), ("b", "1"), ("c", "2")] {
            let mut r = record(id, region);
            r.steps = Arc::new(vec![step.clone()]);
            r.applied = 1;
            s.insert(r);
        }
        assert!(
            s.release_if_shared("a", 0),
            "b holds the same step in region 1"
        );
        assert_eq!(s.get("a").unwrap().applied, 0);
        assert!(
            !s.release_if_shared("b", 0),
            "a released it: b must remove it"
        );
        assert_eq!(s.get("b").unwrap().applied, 1);
        assert!(
            !s.release_if_shared("c", 0),
            "region 2 shares nothing with region 1"
        );
    }

    #[test]
    fn update_changes_and_remove_forgets() {
        let s = Store::new();
        s.insert(record("a", "1"));
        assert_eq!(
            s.update("a", |r| {
                r.status = Status::Created;
                7
            }),
            Some(7)
        );
        assert_eq!(s.get("a").unwrap().status, Status::Created);
        assert!(s.update("zz", |_| ()).is_none());
        assert!(s.remove("a").is_some());
        assert!(s.get("a").is_none() && s.is_empty());
    }
}
