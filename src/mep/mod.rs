//! MEC platform (MEP) drivers: the southbound "Mm5" side. A [`Driver`] turns a request's rules
//! into an ordered list of [`Step`]s (exactly what will be sent) and applies or removes one step
//! at a time. The [`service`](crate::service) decides the order and undoes on failure; drivers
//! never touch the store.

use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use crate::config::{DriverKind, MepConfig};
use crate::model::CreationRequest;

pub mod agent;
pub mod edgegallery;
pub mod etsi;
pub mod llmec;
pub mod simulated;
pub mod wire;

/// One call's worth of work on a platform, recorded before it is applied so that the plugin
/// always knows what may be on the platform, and replayed verbatim to remove it.
///
/// Its label, target and body are kept back to back in one allocation rather than as three
/// `String`s: every stored record holds its steps for its whole life, and the two allocations
/// and 48 bytes of `String` headers saved per step are about 300 bytes of a record replayed
/// with two steps (`examples/bench.rs replay`). Two steps are equal when their labels, targets
/// and bodies are.
#[derive(Clone, PartialEq, Eq)]
pub struct Step {
    /// `label`, `target` and `body` concatenated.
    text: Box<str>,
    /// Where the label ends and the target begins in `text`.
    label_end: u32,
    /// Where the target ends and the body begins in `text`.
    target_end: u32,
}

impl Step {
    /// A step with its `label` (which rule it comes from, for messages: e.g. `DNS rule '111'`
    /// or `traffic rule 'tr1' filter 0 (195.251.255.142:80/tcp)`), `target` (path relative to
    /// the MEP URL, e.g. `/api/mp1/traffic/all`) and `body` (the exact JSON body sent to apply
    /// it and, for LL-MEC, to remove it).
    pub fn new(label: &str, target: &str, body: &str) -> Step {
        let mut text = String::with_capacity(label.len() + target.len() + body.len());
        text.push_str(label);
        text.push_str(target);
        text.push_str(body);
        // Labels and paths are short; only the body may be large, and it needs no offset.
        let offset = |n: usize| u32::try_from(n).expect("a step's label and target are short");
        Step {
            text: text.into_boxed_str(),
            label_end: offset(label.len()),
            target_end: offset(label.len() + target.len()),
        }
    }

    /// Which rule this step comes from, for messages.
    pub fn label(&self) -> &str {
        &self.text[..self.label_end as usize]
    }

    /// Path relative to the MEP URL.
    pub fn target(&self) -> &str {
        &self.text[self.label_end as usize..self.target_end as usize]
    }

    /// The exact body sent to apply it (and, for LL-MEC, to remove it).
    pub fn body(&self) -> &str {
        &self.text[self.target_end as usize..]
    }
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Step")
            .field("label", &self.label())
            .field("target", &self.target())
            .field("body", &self.body())
            .finish()
    }
}

/// Why a platform call failed.
#[derive(Debug, Clone, PartialEq)]
pub enum MepError {
    /// The platform answered with a non-success status.
    Refused {
        url: String,
        status: u16,
        detail: String,
    },
    /// The platform could not be reached or the exchange broke off.
    Unreachable { url: String, reason: String },
    /// The call failed before any byte of it was written (connection refused, name
    /// resolution, TLS handshake, connect timeout): the platform cannot have acted on it.
    NotSent { url: String, reason: String },
    /// The platform did not answer within `timeout_ms`.
    Timeout { url: String },
    /// A read made to find out what to change (a MEC 011 rule's GET before its PUT) failed:
    /// the change itself was never sent, so the platform cannot have acted on it, whatever
    /// the read's own failure (a timeout included).
    BeforeChange(Box<MepError>),
}

impl MepError {
    /// The platform timed out: our own timeout, or a gateway's 504 in front of it.
    pub fn is_timeout(&self) -> bool {
        match self {
            MepError::Timeout { .. } | MepError::Refused { status: 504, .. } => true,
            MepError::BeforeChange(e) => e.is_timeout(),
            _ => false,
        }
    }

    /// True when the platform may have applied the call although we saw no success (the
    /// answer was lost): the step must then be treated as possibly applied. A 502 or 504
    /// comes from a gateway in front of the platform that lost the platform's answer (or
    /// never got one), so the call may have been applied behind it. Any other server error
    /// too, but 501 and 505 (the call was not understood): a 500 is what a platform answers
    /// when its handler fails after it committed part of the work, a 503 what a proxy
    /// answers when its upstream connection broke after the call went out. A platform's 4xx
    /// or 3xx is its own refusal: it did nothing. A call that was never written
    /// ([`MepError::NotSent`]) is not applied either.
    pub fn is_ambiguous(&self) -> bool {
        match self {
            MepError::Refused { status, .. } => *status >= 500 && !matches!(status, 501 | 505),
            MepError::NotSent { .. } | MepError::BeforeChange(_) => false,
            MepError::Unreachable { .. } | MepError::Timeout { .. } => true,
        }
    }

    /// The platform did not answer at all (no connection, no answer in time): its other
    /// calls are likely to fail the same way, each costing up to its timeout, where an answer,
    /// even a refusal, came at once and concerned this call.
    pub fn is_silence(&self) -> bool {
        match self {
            MepError::Unreachable { .. } | MepError::NotSent { .. } | MepError::Timeout { .. } => {
                true
            }
            MepError::Refused { .. } => false,
            MepError::BeforeChange(e) => e.is_silence(),
        }
    }

    /// The same failure of a call that was part of an exchange already under way (a task
    /// poll after its POST): never "not sent", since the exchange as a whole was.
    pub fn within_exchange(self) -> MepError {
        match self {
            MepError::NotSent { url, reason } => MepError::Unreachable { url, reason },
            other => other,
        }
    }
}

impl fmt::Display for MepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MepError::Refused {
                url,
                status,
                detail,
            } if detail.is_empty() => {
                write!(f, "MEP at {url} answered HTTP {status}")
            }
            MepError::Refused {
                url,
                status,
                detail,
            } => {
                write!(f, "MEP at {url} answered HTTP {status}: {detail}")
            }
            MepError::Unreachable { url, reason } => {
                write!(f, "MEP at {url} unreachable: {reason}")
            }
            MepError::NotSent { url, reason } => {
                write!(f, "MEP at {url} unreachable (nothing was sent): {reason}")
            }
            MepError::Timeout { url } => write!(f, "MEP at {url} did not answer in time"),
            MepError::BeforeChange(e) => {
                write!(
                    f,
                    "{e} (reading the rule before changing it; nothing was changed)"
                )
            }
        }
    }
}

impl std::error::Error for MepError {}

/// What an apply found on the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The call changed the platform: the removal undoes it.
    Changed,
    /// The platform already had the rule in place before the request (a MEC 011 rule
    /// already ACTIVE): nothing was changed, and the removal must leave it as it was.
    AlreadyInPlace,
}

/// A rule the platform's dialect cannot express; nothing is sent for the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The offending rule and field, e.g. `appTrafficRule[0] 'tr1' trafficFilter[0].dstAddress`.
    pub rule: String,
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.rule, self.reason)
    }
}

/// A MEP dialect.
pub trait Driver: Send + Sync {
    /// The `driver` name in regions.toml.
    fn kind(&self) -> DriverKind;

    /// Turns a request's rules into the steps to apply, in order: DNS rules first, then
    /// traffic rules. Refuses, before anything is sent, a rule the dialect cannot express.
    fn plan(&self, request_id: &str, request: &CreationRequest) -> Result<Vec<Step>, Refusal>;

    /// Applies one step. Returns only once the platform confirmed it.
    fn apply(&self, step: &Step) -> Result<(), MepError>;

    /// [`apply`](Driver::apply), also saying whether the platform had the rule in place
    /// already (what the service records as the step's prior state). By default every
    /// apply changes the platform.
    fn apply_with_prior(&self, step: &Step) -> Result<Applied, MepError> {
        self.apply(step).map(|()| Applied::Changed)
    }

    /// Removes one previously planned step. A platform that no longer has it (404) counts as
    /// success: removal is idempotent. A step this driver did not plan ([`plans`]) is refused
    /// with [`planned_elsewhere`] and nothing is sent: its 404 would be taken for "removed".
    ///
    /// [`plans`]: Driver::plans
    fn remove(&self, step: &Step) -> Result<(), MepError>;

    /// Whether `step` is of this driver's making (its target has the shape of this driver's
    /// steps); not, when the region's driver was changed since the step was planned.
    fn plans(&self, step: &Step) -> bool;

    /// What makes two steps the same rule on the platform, so that removing one removes the
    /// other. By default: the same call ([`RuleIdentity::Call`]).
    fn rule_identity(&self) -> RuleIdentity {
        RuleIdentity::Call
    }

    /// Start-up: `step` may have been sent by an earlier run of the plugin that ended before
    /// it saw the outcome (a request caught PENDING, or FAILED or DELETING with the step
    /// possibly applied), and is about to be removed. For a platform that may still be working on it, a removal
    /// must not trust an absence too early. Nothing to do by default.
    fn outcome_unknown_after_restart(&self, step: &Step) {
        let _ = step;
    }
}

/// The refusal of a step another driver planned (the region's driver was changed since):
/// nothing was sent to `url`.
pub fn planned_elsewhere(driver: DriverKind, url: String, step: &Step) -> MepError {
    MepError::NotSent {
        url,
        reason: format!(
            "'{}' is not a path of the {} driver: this step was planned by another driver (was the region's driver changed?)",
            step.target(),
            driver.name()
        ),
    }
}

/// What makes two steps of a region one rule on its platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleIdentity {
    /// The same call: target and body (LL-MEC keys a rule by its body). The labels do not
    /// count: they name the request's own rule ids, and two requests may send the same
    /// redirect under different ids.
    Call,
    /// The same target, whatever the body (a MEC 011 rule is its path: deactivating it
    /// affects every request that activated it).
    Target,
}

impl RuleIdentity {
    /// Whether `a` and `b` are one rule on the platform.
    pub fn same(self, a: &Step, b: &Step) -> bool {
        a.target() == b.target() && (self == RuleIdentity::Target || a.body() == b.body())
    }

    /// A fingerprint of the platform rule `step` sets in region `region`: equal for steps
    /// that are one rule there (two different rules may collide, rarely).
    pub fn fingerprint(self, region: &str, step: &Step) -> u64 {
        let mut h = DefaultHasher::new();
        region.hash(&mut h);
        step.target().hash(&mut h);
        if self == RuleIdentity::Call {
            step.body().hash(&mut h);
        }
        h.finish()
    }
}

/// Builds the driver a region's `[region.mep]` section asks for.
pub fn build(region_id: &str, mep: &MepConfig) -> Arc<dyn Driver> {
    match mep.driver {
        DriverKind::Llmec => Arc::new(llmec::LlMec::new(mep)),
        DriverKind::Simulated => Arc::new(simulated::Simulated::new(region_id)),
        DriverKind::EtsiMec011 => Arc::new(etsi::EtsiMec011::new(mep)),
        DriverKind::Edgegallery => Arc::new(edgegallery::EdgeGallery::new(mep)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_driver_plans_its_own_steps_and_refuses_to_remove_the_others_unsent() {
        let example = include_str!("../../examples/traffic-and-dns.json");
        let request = crate::model::parse_creation(example.as_bytes()).unwrap();
        let kinds = [
            DriverKind::Llmec,
            DriverKind::EtsiMec011,
            DriverKind::Edgegallery,
            DriverKind::Simulated,
        ];
        let drivers: Vec<Arc<dyn Driver>> = kinds
            .iter()
            .map(|&kind| {
                let url = "http://127.0.0.1:9/base";
                build(
                    "2",
                    &MepConfig::new(kind, url, std::time::Duration::from_secs(1)),
                )
            })
            .collect();
        for planner in &drivers {
            let steps = planner.plan("r1", &request).unwrap();
            assert!(!steps.is_empty(), "{:?}", planner.kind());
            for other in &drivers {
                let own = planner.kind() == other.kind();
                for step in &steps {
                    assert_eq!(
                        other.plans(step),
                        own,
                        "{:?} of {:?}'s {step:?}",
                        other.kind(),
                        planner.kind()
                    );
                    if !own {
                        let e = other.remove(step).unwrap_err();
                        assert!(matches!(e, MepError::NotSent { .. }), "{e:?}");
                        assert!(!e.is_ambiguous());
                        assert!(e.to_string().contains("planned by another driver"), "{e}");
                    }
                }
            }
        }
    }

    #[test]
    fn only_a_platform_s_refusal_or_a_call_it_did_not_understand_is_a_definite_failure() {
        let refused = |status| MepError::Refused {
            url: "u".into(),
            status,
            detail: String::new(),
        };
        for status in [301, 307, 400, 404, 409, 412, 422, 501, 505] {
            assert!(!refused(status).is_ambiguous(), "{status}");
        }
        for status in [500, 502, 503, 504, 507, 599] {
            assert!(
                refused(status).is_ambiguous(),
                "{status}: may have been applied"
            );
        }
        assert!(MepError::Timeout { url: "u".into() }.is_ambiguous());
        let read = MepError::BeforeChange(Box::new(MepError::Timeout { url: "u".into() }));
        assert!(
            !read.is_ambiguous(),
            "the change was never sent: not applied"
        );
        assert!(read.is_timeout(), "still the platform's timeout");
        assert!(refused(504).is_timeout(), "a gateway's timeout");
        assert!(!refused(502).is_timeout());
        let not_sent = MepError::NotSent {
            url: "u".into(),
            reason: "connection refused".into(),
        };
        assert!(!not_sent.is_ambiguous(), "never written: not applied");
        assert!(not_sent.within_exchange().is_ambiguous());
        assert!(
            MepError::Unreachable {
                url: "u".into(),
                reason: "reset".into()
            }
            .is_ambiguous()
        );
    }

    #[test]
    fn a_step_gives_back_its_label_target_and_body() {
        for (label, target, body) in [
            (
                "DNS rule '111' (pfrag.gr)",
                "/api/mp1/traffic/all",
                r#"{"type":1}"#,
            ),
            ("", "", ""),
            ("", "/t", ""),
            ("l", "", "{}"),
            ("règle 'é✓'", "/règles/ü", "{\"x\":\"日本\"}"),
        ] {
            let step = Step::new(label, target, body);
            assert_eq!(
                (step.label(), step.target(), step.body()),
                (label, target, body)
            );
            assert_eq!(step.clone(), step);
        }
    }

    #[test]
    fn steps_are_equal_when_their_three_parts_are() {
        let step = Step::new("ab", "c", "d");
        assert_eq!(step, Step::new("ab", "c", "d"));
        // Same concatenated text, other boundaries: other steps.
        assert_ne!(step, Step::new("a", "bc", "d"));
        assert_ne!(step, Step::new("ab", "", "cd"));
        assert_ne!(step, Step::new("ab", "c", "e"));
        assert_eq!(
            format!("{step:?}"),
            r#"Step { label: "ab", target: "c", body: "d" }"#
        );
    }
}

/// Requests shared by the drivers' unit tests.
#[cfg(test)]
pub(crate) mod fixtures {
    /// The rules of the seed deployment's `trafficrule.json` example (shared with the
    /// integration tests).
    pub const SEED: &str = include_str!("../../tests/data/seed-trafficrule.json");
}
