//! Turns on platform rules: the calls that apply one platform rule may run together, a call
//! that removes it runs alone. The service takes a turn around each step's platform call and
//! the record change that goes with it, so that a removal's "does another request still hold
//! this rule?" is never answered while another request's call for that rule is in flight (its
//! outcome would change the answer), and an apply never overtakes a removal of the same rule
//! (the removal would take away what the apply just put there).
//!
//! A turn is held by one thread for one call, never two at once, so turns cannot deadlock;
//! a wait lasts at most as long as the calls ahead of it, which the platform timeout bounds.
//! A waiting removal makes later applies of its rule wait too, so a steady stream of
//! creations cannot starve it.
//!
//! A removal whose outcome is unknown (it timed out, or a restart cut it) may still be carried
//! out by the platform until its settle window has passed: applies of its rule wait until then
//! ([`Turns::removal_may_land`]), or the late removal would take away what they put there
//! while their requests say CREATED. Each such removal extends the wait, and removals go
//! first, so while a failing platform is sent one removal of the rule after another (the
//! reconciler undoing the failed requests that hold it) an apply could wait for ever: the
//! service therefore waits for an apply's turn only until a deadline
//! ([`Turns::apply_within`]), and refuses the apply then without calling the platform (an
//! audit saw creations wait 90 to 435 s, holding the workers every region needs).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Instant;

use crate::util::{lock, wait};

/// The rules with calls in flight, by fingerprint ([`crate::mep::RuleIdentity::fingerprint`]):
/// two rules with the same fingerprint only share turns, which costs waiting, never
/// correctness.
#[derive(Default)]
pub struct Turns {
    rules: Mutex<HashMap<u64, Rule>>,
    changed: Condvar,
    /// How many rules were left by the last sweep of passed marks (read and set under the
    /// `rules` lock): the next sweep comes once there are twice as many, so that marking N
    /// rules (a recovery with N unfinished requests) costs O(N), not O(N²).
    swept: AtomicUsize,
}

/// Rules kept before the first sweep of passed marks.
const SWEEP_FROM: usize = 64;

#[derive(Default)]
struct Rule {
    applying: u32,
    removing: bool,
    /// Removals waiting for their turn: applies arriving now wait behind them.
    removals_waiting: u32,
    /// Threads waiting for a turn on this rule.
    waiting: u32,
    /// A removal of this rule whose outcome is unknown may land on the platform until then.
    removal_lands_until: Option<Instant>,
}

impl Rule {
    fn idle(&self) -> bool {
        self.idle_at(Instant::now())
    }

    fn idle_at(&self, now: Instant) -> bool {
        self.applying == 0
            && !self.removing
            && self.removals_waiting == 0
            && self.waiting == 0
            && self.removal_lands_until.is_none_or(|until| until <= now)
    }

    /// How long an apply must still wait for a removal that may land, if it must.
    fn unsettled_removal(&mut self) -> Option<std::time::Duration> {
        let now = Instant::now();
        match self.removal_lands_until {
            Some(until) if until > now => Some(until - now),
            _ => {
                self.removal_lands_until = None;
                None
            }
        }
    }
}

/// A turn on one rule, given back when dropped.
#[must_use = "the turn ends when this is dropped"]
pub struct Turn<'a> {
    turns: &'a Turns,
    key: u64,
    removal: bool,
}

impl Turns {
    /// Waits until no removal of rule `key` runs or waits, then returns a turn to apply it.
    #[cfg(test)]
    pub fn apply(&self, key: u64) -> Turn<'_> {
        self.take(key, false, None)
            .expect("a wait without a deadline ends with a turn")
    }

    /// [`apply`](Self::apply), waiting until `deadline` at most: `None` then.
    pub fn apply_within(&self, key: u64, deadline: Instant) -> Option<Turn<'_>> {
        self.take(key, false, Some(deadline))
    }

    /// Waits until nothing else runs on rule `key`, then returns a turn to remove it.
    pub fn remove(&self, key: u64) -> Turn<'_> {
        self.take(key, true, None)
            .expect("a wait without a deadline ends with a turn")
    }

    /// A removal of rule `key` whose outcome is unknown may still land on the platform until
    /// `until`: applies of the rule wait until then (a later `until` extends the wait).
    pub fn removal_may_land(&self, key: u64, until: Instant) {
        let mut rules = lock(&self.rules);
        let rule = rules.entry(key).or_default();
        rule.removal_lands_until = rule.removal_lands_until.max(Some(until));
        // Forget the rules whose windows have passed with nothing else on them, once they
        // may have piled up (a passed mark holds nothing up meanwhile).
        if rules.len() >= (2 * self.swept.load(Ordering::Relaxed)).max(SWEEP_FROM) {
            let now = Instant::now();
            rules.retain(|_, rule| !rule.idle_at(now));
            self.swept.store(rules.len(), Ordering::Relaxed);
        }
    }

    fn take(&self, key: u64, removal: bool, deadline: Option<Instant>) -> Option<Turn<'_>> {
        let mut rules = lock(&self.rules);
        if removal {
            rules.entry(key).or_default().removals_waiting += 1;
        }
        loop {
            let rule = rules.entry(key).or_default();
            if removal && !rule.removing && rule.applying == 0 {
                rule.removals_waiting -= 1;
                rule.removing = true;
                break;
            }
            let settling = (!removal).then(|| rule.unsettled_removal()).flatten();
            if !removal && !rule.removing && rule.removals_waiting == 0 && settling.is_none() {
                rule.applying += 1;
                break;
            }
            let left = match deadline.map(|d| d.saturating_duration_since(Instant::now())) {
                Some(left) if left.is_zero() => {
                    if rule.idle() {
                        rules.remove(&key);
                    }
                    return None;
                }
                Some(left) => Some(settling.map_or(left, |s| s.min(left))),
                None => settling,
            };
            rule.waiting += 1;
            rules = match left {
                // Nothing wakes this wait when the window or the deadline ends: it times out.
                Some(left) => {
                    self.changed
                        .wait_timeout(rules, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => wait(&self.changed, rules),
            };
            rules.entry(key).or_default().waiting -= 1;
        }
        Some(Turn {
            turns: self,
            key,
            removal,
        })
    }

    /// How many rules have a call in flight or waiting (tests).
    #[cfg(test)]
    fn busy_rules(&self) -> usize {
        lock(&self.rules).len()
    }

    /// How many removals of rule `key` wait for their turn (tests).
    #[cfg(test)]
    pub(crate) fn removals_waiting(&self, key: u64) -> u32 {
        lock(&self.rules)
            .get(&key)
            .map_or(0, |r| r.removals_waiting)
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut rules = lock(&self.turns.rules);
        let Some(rule) = rules.get_mut(&self.key) else {
            return;
        };
        if self.removal {
            rule.removing = false;
        } else {
            rule.applying -= 1;
        }
        let wake = rule.waiting > 0;
        if rule.idle() {
            rules.remove(&self.key);
        }
        drop(rules);
        if wake {
            self.turns.changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    use super::*;

    const SHORT: Duration = Duration::from_millis(100);

    #[test]
    fn applies_of_one_rule_run_together_and_other_rules_are_not_held_up() {
        let t = Turns::default();
        let a = t.apply(1);
        let b = t.apply(1);
        let other = t.remove(2);
        drop((a, b, other));
        assert_eq!(t.busy_rules(), 0, "idle rules are forgotten");
    }

    /// Runs `second` on another thread while `first` is held; returns whether it got its
    /// turn before `first` was dropped, and whether it got it at all afterwards.
    fn waits(t: &Arc<Turns>, first: Turn<'_>, second: fn(&Turns) -> Turn<'_>) -> (bool, bool) {
        let (tx, rx) = mpsc::channel();
        let t2 = t.clone();
        let h = thread::spawn(move || {
            let _turn = second(&t2);
            tx.send(()).unwrap();
        });
        let early = rx.recv_timeout(SHORT).is_ok();
        drop(first);
        let late = early || rx.recv_timeout(Duration::from_secs(5)).is_ok();
        h.join().unwrap();
        (early, late)
    }

    #[test]
    fn a_removal_waits_for_the_applies_in_flight_and_an_apply_for_the_removal() {
        let t = Arc::new(Turns::default());
        assert_eq!(waits(&t, t.apply(7), |t| t.remove(7)), (false, true));
        assert_eq!(waits(&t, t.remove(7), |t| t.apply(7)), (false, true));
        assert_eq!(waits(&t, t.remove(7), |t| t.remove(7)), (false, true));
        assert_eq!(waits(&t, t.apply(7), |t| t.apply(7)), (true, true));
        assert_eq!(t.busy_rules(), 0);
    }

    #[test]
    fn an_apply_waits_for_a_removal_that_may_land_and_a_removal_does_not() {
        let t = Turns::default();
        let window = Duration::from_millis(200);
        t.removal_may_land(5, Instant::now() + window);
        // A shorter window does not shorten it.
        t.removal_may_land(5, Instant::now());
        let started = Instant::now();
        drop(t.remove(5));
        assert!(started.elapsed() < window, "removals are not held");
        drop(t.apply(6));
        assert!(started.elapsed() < window, "other rules are not held");
        drop(t.apply(5));
        assert!(started.elapsed() >= window, "{:?}", started.elapsed());
        // Once the window has passed, the rule is forgotten.
        assert_eq!(t.busy_rules(), 0);
    }

    #[test]
    fn passed_marks_are_swept_once_they_pile_up_and_marks_in_their_window_are_kept() {
        let t = Turns::default();
        let later = Instant::now() + Duration::from_secs(60);
        for key in 0..1000 {
            t.removal_may_land(key, later);
        }
        assert_eq!(t.busy_rules(), 1000, "every mark in its window is kept");
        let t = Turns::default();
        for key in 0..10_000 {
            t.removal_may_land(key, Instant::now());
        }
        assert!(t.busy_rules() <= 2 * SWEEP_FROM, "{}", t.busy_rules());
        let started = Instant::now();
        drop(t.apply(5));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a passed mark holds nothing"
        );
    }

    /// An apply waits until its deadline at most, whether a removal runs or may still land,
    /// takes nothing when it gives up, and gets its turn at once when nothing is in the way.
    #[test]
    fn an_apply_within_a_deadline_gives_up_then_and_leaves_nothing() {
        let t = Turns::default();
        let removal = t.remove(4);
        let started = Instant::now();
        assert!(t.apply_within(4, started + SHORT).is_none());
        assert!(started.elapsed() >= SHORT && started.elapsed() < 10 * SHORT);
        drop(removal);
        assert_eq!(t.busy_rules(), 0, "nothing left by the apply that gave up");
        t.removal_may_land(4, Instant::now() + Duration::from_secs(60));
        let started = Instant::now();
        assert!(t.apply_within(4, started + SHORT).is_none());
        assert!(started.elapsed() >= SHORT && started.elapsed() < 10 * SHORT);
        assert!(
            t.apply_within(4, Instant::now()).is_none(),
            "a passed deadline"
        );
        assert_eq!(t.busy_rules(), 1, "the mark stays");
        let turn = t.apply_within(5, Instant::now() + SHORT).unwrap();
        drop(turn);
        // A window ending before the deadline: the turn comes then.
        t.removal_may_land(6, Instant::now() + SHORT);
        let started = Instant::now();
        let turn = t.apply_within(6, started + Duration::from_secs(5));
        assert!(turn.is_some() && started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_waiting_removal_holds_up_later_applies_so_it_is_not_starved() {
        let t = Arc::new(Turns::default());
        let first = t.apply(3);
        let (removed_tx, removed_rx) = mpsc::channel();
        let t2 = t.clone();
        let remover = thread::spawn(move || {
            let _turn = t2.remove(3);
            removed_tx.send(()).unwrap();
            thread::sleep(SHORT);
        });
        // Wait until the removal is queued.
        while lock(&t.rules)
            .get(&3)
            .is_none_or(|r| r.removals_waiting == 0)
        {
            thread::sleep(Duration::from_millis(1));
        }
        let (applied_tx, applied_rx) = mpsc::channel();
        let t3 = t.clone();
        let applier = thread::spawn(move || {
            let _turn = t3.apply(3);
            applied_tx.send(()).unwrap();
        });
        assert!(
            applied_rx.recv_timeout(SHORT).is_err(),
            "queued behind the removal"
        );
        drop(first);
        removed_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        applied_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        remover.join().unwrap();
        applier.join().unwrap();
        assert_eq!(t.busy_rules(), 0);
    }
}
