//! The simulated driver (`driver = "simulated"`): an in-process platform that keeps the rules
//! it is given, for trying the plugin out without a MEP. It accepts every rule the contract
//! can express (never refuses), plans one step per rule (the rule re-serialised compactly in
//! the contract's spelling) and logs each change at info level. Its rules live in memory
//! only: a restart of the plugin empties the platform.

use std::collections::BTreeMap;
use std::sync::Mutex;

use log::info;

use super::{Driver, MepError, Refusal, Step, planned_elsewhere};
use crate::config::DriverKind;
use crate::model::CreationRequest;
use crate::util::lock;

/// The simulated platform of one region.
#[derive(Debug)]
pub struct Simulated {
    region_id: String,
    /// (target, body) → label of the step that installed it.
    rules: Mutex<BTreeMap<(String, String), String>>,
}

impl Simulated {
    pub fn new(region_id: &str) -> Simulated {
        Simulated {
            region_id: region_id.to_string(),
            rules: Mutex::new(BTreeMap::new()),
        }
    }

    /// The steps currently installed, sorted by target then body.
    pub fn installed(&self) -> Vec<Step> {
        lock(&self.rules)
            .iter()
            .map(|((target, body), label)| Step::new(label, target, body))
            .collect()
    }
}

impl Driver for Simulated {
    fn kind(&self) -> DriverKind {
        DriverKind::Simulated
    }

    /// Its targets: `/dns_rules/<id>` and `/traffic_rules/<id>`, the id one encoded segment.
    fn plans(&self, step: &Step) -> bool {
        ["/dns_rules/", "/traffic_rules/"].iter().any(|collection| {
            step.target()
                .strip_prefix(collection)
                .is_some_and(|id| !id.is_empty() && !id.contains('/'))
        })
    }

    fn plan(&self, _request_id: &str, request: &CreationRequest) -> Result<Vec<Step>, Refusal> {
        let mut steps = Vec::new();
        for rule in request.dns_rules() {
            steps.push(Step::new(
                &format!("DNS rule '{}' ({})", rule.dns_rule_id, rule.domain_name),
                &format!("/dns_rules/{}", encode(&rule.dns_rule_id)),
                &serde_json::to_string(rule).expect("a DNS rule serialises"),
            ));
        }
        for rule in request.traffic_rules() {
            steps.push(Step::new(
                &format!("traffic rule '{}'", rule.traffic_rule_id),
                &format!("/traffic_rules/{}", encode(&rule.traffic_rule_id)),
                &serde_json::to_string(rule).expect("a traffic rule serialises"),
            ));
        }
        Ok(steps)
    }

    fn apply(&self, step: &Step) -> Result<(), MepError> {
        lock(&self.rules).insert(
            (step.target().to_string(), step.body().to_string()),
            step.label().to_string(),
        );
        info!(
            "simulated MEP of region {}: applied {}",
            self.region_id,
            step.label()
        );
        Ok(())
    }

    fn remove(&self, step: &Step) -> Result<(), MepError> {
        // A real platform's rule (the region was switched to `simulated` since): it is not
        // here to remove, and taking it as removed would forget it on that platform.
        if !self.plans(step) {
            let url = format!("simulated platform of region {}", self.region_id);
            return Err(planned_elsewhere(DriverKind::Simulated, url, step));
        }
        let removed = lock(&self.rules)
            .remove(&(step.target().to_string(), step.body().to_string()))
            .is_some();
        if removed {
            info!(
                "simulated MEP of region {}: removed {}",
                self.region_id,
                step.label()
            );
        } else {
            info!(
                "simulated MEP of region {}: {} was not installed (nothing to remove)",
                self.region_id,
                step.label()
            );
        }
        Ok(())
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so that an id such as
/// `../x` stays one path segment.
fn encode(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_creation;

    const REQUEST: &str = r#"{"RegionId":"2",
        "appTrafficRule":[{"trafficRuleId":"tr1","filterType":"PACKET","priority":3,
            "trafficFilter":[{"srcAddress":["10.0.0.0/8"],"protocol":["sctp"],"qci":9}],
            "action":"DUPLICATE_AS_IS"}],
        "appDNSRule":[{"dnsRuleId":"111","domainName":"pfrag.gr","ipAddressType":"IP_V6",
            "ipAddress":"2001:db8::1","ttl":30}]}"#;

    fn request() -> CreationRequest {
        parse_creation(REQUEST.as_bytes()).unwrap()
    }

    #[test]
    fn plans_one_step_per_rule_dns_first_and_never_refuses() {
        let sim = Simulated::new("2");
        let steps = sim.plan("r1", &request()).unwrap();
        assert_eq!(
            steps,
            vec![
                Step::new(
                    "DNS rule '111' (pfrag.gr)",
                    "/dns_rules/111",
                    r#"{"dnsRuleId":"111","domainName":"pfrag.gr","ipAddressType":"IP_V6","ipAddress":"2001:db8::1","ttl":30}"#
                ),
                Step::new(
                    "traffic rule 'tr1'",
                    "/traffic_rules/tr1",
                    r#"{"trafficRuleId":"tr1","filterType":"PACKET","priority":3,"trafficFilter":[{"srcAddress":["10.0.0.0/8"],"Protocol":["sctp"],"qci":9}],"action":"DUPLICATE_AS_IS"}"#
                ),
            ]
        );
        assert_eq!(sim.kind(), DriverKind::Simulated);
    }

    #[test]
    fn ids_are_one_path_segment() {
        assert_eq!(encode("../x y"), "..%2Fx%20y");
        assert_eq!(encode("tr-1_a.b~"), "tr-1_a.b~");
        assert_eq!(encode("é"), "%C3%A9");
    }

    #[test]
    fn keeps_what_it_is_given_and_removal_is_idempotent() {
        let sim = Simulated::new("2");
        let steps = sim.plan("r1", &request()).unwrap();
        assert!(sim.installed().is_empty());
        for s in steps.iter().rev() {
            sim.apply(s).unwrap();
        }
        sim.apply(&steps[0]).unwrap();
        assert_eq!(sim.installed(), steps, "sorted by target, no duplicates");
        sim.remove(&steps[0]).unwrap();
        assert_eq!(sim.installed(), vec![steps[1].clone()]);
        sim.remove(&steps[0]).unwrap();
        sim.remove(&steps[1]).unwrap();
        assert!(sim.installed().is_empty());
    }

    #[test]
    fn same_target_with_another_body_is_another_rule() {
        let sim = Simulated::new("2");
        let a = Step::new("a", "/dns_rules/1", "{\"x\":1}");
        let b = Step::new(a.label(), a.target(), "{\"x\":2}");
        sim.apply(&a).unwrap();
        sim.apply(&b).unwrap();
        sim.remove(&a).unwrap();
        assert_eq!(sim.installed(), vec![b]);
    }
}
