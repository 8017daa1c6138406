//! The LL-MEC dialect (EURECOM's MEP, `driver = "llmec"`): four calls, each keyed on the
//! platform by its exact JSON body.
//!
//! | step | apply | remove |
//! | --- | --- | --- |
//! | one per DNS rule | `POST /api/mp1/traffic/all` | `DELETE` with the same body |
//! | one per traffic filter × destination address × port × protocol | `POST /api/mp1/traffic/imsi` | `DELETE` with the same body |
//!
//! The dialect can only *redirect the traffic of listed subscribers (IMSIs) towards one IPv4
//! service address and port to the MEC application's interface*. Everything else a request may
//! say is refused before anything is sent, naming the rule and field, rather than silently
//! dropped (the original plugin sent the first address and port of the first filter and
//! ignored the rest). What is accepted and refused:
//!
//! - **DNS rules**: `IP_V4` only. The reference gives no IPv6 form for `mec-ipaddr` and the
//!   platform's redirection is IPv4-only as far as is documented, so `IP_V6` is refused.
//!   `ttl` has no field in the dialect; it only governs caching of the DNS answer, not where
//!   traffic goes, so it is accepted and not sent.
//! - **Actions**: only `FORWARD` (redirection, what the original deployment used). The
//!   dialect has no drop, duplication or passthrough, and the reference does not say whether
//!   redirected packets arrive with or without their tunnel encapsulation, so the variants that
//!   promise one or the other (`FORWARD_AS_IS`, `DECAPSULATED`) are refused too rather than
//!   honoured by chance, as are `DROP`, `PASSTHROUGH`, `DUPLICATED_DECAPSULATED` and
//!   `DUPLICATE_AS_IS`.
//! - **Filter type**: `FLOW` only (LL-MEC matches inner flows); `PACKET` is refused.
//! - **Priority**: not expressible; the platform orders nothing, so it is accepted and not sent.
//! - **Destination interface**: exactly one, of type `IP` or `MAC`, with an IPv4
//!   `dstIPAddress`; `dstMACAddress` is optional (`00:00:00:00:00:00` when absent, `-`
//!   separators written as `:`); `srcMACAddress` and `tunnelInfo` are refused.
//! - **Filters**: `srcAddress` required (subscriber IMSIs, 6–15 digits: this deployment keys
//!   redirects by IMSI, so an IP address there is refused), `dstAddress` required (single IPv4
//!   addresses; prefixes, ranges and IPv6 are refused), `dstPort` required (single ports; the
//!   dialect has no "any port", and ranges are refused), `Protocol` optional (`tcp`, `udp`,
//!   `any`, case-insensitive; absent = any). `srcPort`, `Token`, the four tunnel fields, `qci`,
//!   `dscp` and `tc` are refused when present and non-empty.
//! - At most the region's `max_calls` calls per request (DNS and traffic together; expansion
//!   stops as soon as a request goes past it), holding at most [`MAX_IMSI_BYTES`] of IMSI lists
//!   in all (each call repeats its filter's list, and every call is kept with the request);
//!   identical calls within a request are sent once.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use serde::Serialize;

use super::agent::MepClient;
use super::{Driver, MepError, Refusal, Step, planned_elsewhere};
use crate::config::{DriverKind, MepConfig};
use crate::model::{
    Action, CreationRequest, DnsRule, FilterType, InterfaceType, IpAddressType, TrafficFilter,
    TrafficRule,
};

/// Path of DNS redirects.
pub const DNS_TARGET: &str = "/api/mp1/traffic/all";
/// Path of traffic redirects.
pub const TRAFFIC_TARGET: &str = "/api/mp1/traffic/imsi";
/// Most bytes of IMSI lists the calls of one request may carry together: each call repeats
/// its filter's whole list, so a 1 MiB body could otherwise expand to a gigabyte of calls held
/// in memory and in the journal.
pub const MAX_IMSI_BYTES: usize = 4 << 20;

/// What the traffic rules of a request may still expand to.
struct Budget {
    calls: usize,
    /// The bound `calls` started from, for messages.
    max_calls: usize,
    imsi_bytes: usize,
}

const NO_MAC: &str = "00:00:00:00:00:00";

impl Budget {
    /// Counts the calls filter `f` (at `at`) expands to against what is left, or refuses it
    /// when they would exceed the region's `max_calls` or the bound on IMSI bytes.
    fn spend(&mut self, at: &str, f: &Filter<'_>) -> Result<(), Refusal> {
        let calls = f
            .addresses
            .len()
            .saturating_mul(f.ports.len())
            .saturating_mul(f.transports.len());
        if calls > self.calls {
            return Err(refuse(
                at.to_string(),
                format!(
                    "the request expands to more than the region's max_calls ({}) LL-MEC calls (one per destination address, port and protocol); split it",
                    self.max_calls
                ),
            ));
        }
        // Each IMSI is written as "...", in every call of the filter.
        let list: usize = f.imsis.iter().map(|imsi| imsi.len() + 3).sum();
        let imsi_bytes = calls.saturating_mul(list);
        if imsi_bytes > self.imsi_bytes {
            return Err(refuse(
                at.to_string(),
                format!(
                    "the request expands to LL-MEC calls carrying more than {MAX_IMSI_BYTES} bytes of IMSI lists (each call for a destination address, port and protocol repeats the filter's srcAddress list); split it"
                ),
            ));
        }
        self.calls -= calls;
        self.imsi_bytes -= imsi_bytes;
        Ok(())
    }
}

/// The LL-MEC driver of one region.
#[derive(Debug)]
pub struct LlMec {
    client: MepClient,
    /// The region's `max_calls`: what one request may expand to.
    max_calls: usize,
}

/// Body of `/api/mp1/traffic/all` (field order is the wire order).
#[derive(Serialize)]
struct DnsRedirect<'a> {
    url: &'a str,
    #[serde(rename = "mec-ipaddr")]
    mec_ipaddr: &'a str,
    #[serde(rename = "mec-macaddr")]
    mec_macaddr: &'a str,
    #[serde(rename = "type")]
    kind: u8,
}

/// Body of `/api/mp1/traffic/imsi` (field order is the wire order).
#[derive(Serialize)]
struct TrafficRedirect<'a> {
    ue_list: &'a [String],
    service_ip: &'a str,
    port: &'a str,
    transport: u8,
    mec_ipaddr: &'a str,
    mec_macaddr: &'a str,
    #[serde(rename = "type")]
    kind: u8,
}

/// LL-MEC's `transport` codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Transport {
    Any = 0,
    Tcp = 1,
    Udp = 2,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Any => "any",
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

impl LlMec {
    pub fn new(mep: &MepConfig) -> LlMec {
        LlMec {
            client: MepClient::new(mep),
            max_calls: mep.max_calls,
        }
    }
}

impl Driver for LlMec {
    fn kind(&self) -> DriverKind {
        DriverKind::Llmec
    }

    fn plans(&self, step: &Step) -> bool {
        [DNS_TARGET, TRAFFIC_TARGET].contains(&step.target())
    }

    fn plan(&self, _request_id: &str, request: &CreationRequest) -> Result<Vec<Step>, Refusal> {
        plan(request, self.max_calls)
    }

    fn apply(&self, step: &Step) -> Result<(), MepError> {
        self.client
            .send("POST", &self.client.url(step.target()), Some(step.body()))
            .map(|_| ())
    }

    fn remove(&self, step: &Step) -> Result<(), MepError> {
        // A step another driver planned (the region's driver was changed) would be sent to a
        // path LL-MEC does not have, and its 404 taken for "removed": the rule would stay on
        // the platform with no record of it.
        if !self.plans(step) {
            return Err(planned_elsewhere(
                DriverKind::Llmec,
                self.client.url(step.target()),
                step,
            ));
        }
        match self
            .client
            .send("DELETE", &self.client.url(step.target()), Some(step.body()))
        {
            Ok(_) | Err(MepError::Refused { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The steps for a request: DNS rules first, then traffic rules, each in request order.
fn plan(request: &CreationRequest, max_calls: usize) -> Result<Vec<Step>, Refusal> {
    // Found by an audit: it was ignored, where EdgeGallery refuses it.
    if request.app_instance_id.is_some() {
        return Err(refuse(
            "appInstanceId".to_string(),
            "LL-MEC has no application instance to name (its rules are keyed by their own \
             content); an appInstanceId cannot be given",
        ));
    }
    let mut steps = Vec::new();
    for (i, rule) in request.dns_rules().iter().enumerate() {
        steps.push(dns_step(i, rule)?);
    }
    if steps.len() > max_calls {
        return Err(refuse(
            "appDNSRule".to_string(),
            format!(
                "the request needs {} LL-MEC calls for its DNS rules alone, more than the region's max_calls ({max_calls}); split it",
                steps.len()
            ),
        ));
    }
    let mut budget = Budget {
        calls: max_calls - steps.len(),
        max_calls,
        imsi_bytes: MAX_IMSI_BYTES,
    };
    for (i, rule) in request.traffic_rules().iter().enumerate() {
        traffic_steps(i, rule, &mut budget, &mut steps)?;
    }
    let mut seen = HashSet::new();
    steps.retain(|s| seen.insert((s.target().to_string(), s.body().to_string())));
    Ok(steps)
}

fn refuse(rule: String, reason: impl Into<String>) -> Refusal {
    Refusal {
        rule,
        reason: reason.into(),
    }
}

fn to_json(body: &impl Serialize) -> String {
    serde_json::to_string(body).expect("a struct of strings and integers serialises")
}

fn dns_step(i: usize, rule: &DnsRule) -> Result<Step, Refusal> {
    let at = format!("appDNSRule[{i}] '{}'", rule.dns_rule_id);
    if rule.ip_address_type != IpAddressType::IpV4 {
        return Err(refuse(
            format!("{at} ipAddressType"),
            "LL-MEC redirects DNS names to IPv4 addresses only; IP_V6 is not supported by this platform",
        ));
    }
    if rule.ip_address.parse::<Ipv4Addr>().is_err() {
        return Err(refuse(
            format!("{at} ipAddress"),
            format!("'{}' is not an IPv4 address", rule.ip_address),
        ));
    }
    let body = DnsRedirect {
        url: &rule.domain_name,
        mec_ipaddr: &rule.ip_address,
        mec_macaddr: NO_MAC,
        kind: 1,
    };
    Ok(Step::new(
        &format!("DNS rule '{}' ({})", rule.dns_rule_id, rule.domain_name),
        DNS_TARGET,
        &to_json(&body),
    ))
}

fn traffic_steps(
    i: usize,
    rule: &TrafficRule,
    budget: &mut Budget,
    steps: &mut Vec<Step>,
) -> Result<(), Refusal> {
    let at = format!("appTrafficRule[{i}] '{}'", rule.traffic_rule_id);
    if rule.action != Action::Forward {
        return Err(refuse(
            format!("{at} action"),
            format!(
                "LL-MEC can only redirect traffic (action FORWARD); {} is not supported by this platform",
                rule.action.name()
            ),
        ));
    }
    if rule.filter_type != FilterType::Flow {
        return Err(refuse(
            format!("{at} filterType"),
            "LL-MEC matches flows only (filterType FLOW); PACKET is not supported by this platform",
        ));
    }
    let (mec_ip, mec_mac) = destination(&at, rule)?;

    // Check every filter and count its calls before building any, so that a combinatorial
    // request is refused without being expanded.
    let mut checked = Vec::with_capacity(rule.traffic_filter.len());
    for (j, filter) in rule.traffic_filter.iter().enumerate() {
        let at = format!("{at} trafficFilter[{j}]");
        let f = check_filter(&at, filter)?;
        budget.spend(&at, &f)?;
        checked.push(f);
    }
    for (j, f) in checked.iter().enumerate() {
        for address in &f.addresses {
            for port in &f.ports {
                for &transport in &f.transports {
                    let body = TrafficRedirect {
                        ue_list: f.imsis,
                        service_ip: address,
                        port,
                        transport: transport as u8,
                        mec_ipaddr: mec_ip,
                        mec_macaddr: &mec_mac,
                        kind: 2,
                    };
                    steps.push(Step::new(
                        &format!(
                            "traffic rule '{}' filter {j} ({address}:{port}/{})",
                            rule.traffic_rule_id,
                            transport.name()
                        ),
                        TRAFFIC_TARGET,
                        &to_json(&body),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The MEC application's address and MAC from `dstInterface[0]`.
fn destination<'r>(at: &str, rule: &'r TrafficRule) -> Result<(&'r str, String), Refusal> {
    let interfaces = rule.dst_interface.as_deref().unwrap_or(&[]);
    let Some(interface) = interfaces.first() else {
        return Err(refuse(
            format!("{at} dstInterface"),
            "LL-MEC needs the MEC application's address to redirect to (dstInterface[0].dstIPAddress)",
        ));
    };
    if interfaces.len() > 1 {
        return Err(refuse(
            format!("{at} dstInterface[1]"),
            "LL-MEC redirects to a single interface; only one dstInterface can be given",
        ));
    }
    let at = format!("{at} dstInterface[0]");
    if interface.interface_type == InterfaceType::Tunnel || interface.tunnel_info.is_some() {
        return Err(refuse(
            format!(
                "{at}.{}",
                if interface.tunnel_info.is_some() {
                    "tunnelInfo"
                } else {
                    "interfaceType"
                }
            ),
            "LL-MEC cannot redirect into a tunnel",
        ));
    }
    if interface.src_mac_address.is_some() {
        return Err(refuse(
            format!("{at}.srcMACAddress"),
            "LL-MEC cannot set the source MAC address of redirected traffic",
        ));
    }
    let Some(ip) = interface.dst_ip_address.as_deref() else {
        return Err(refuse(
            format!("{at}.dstIPAddress"),
            "LL-MEC needs the MEC application's IPv4 address to redirect to",
        ));
    };
    if ip.parse::<Ipv4Addr>().is_err() {
        return Err(refuse(
            format!("{at}.dstIPAddress"),
            format!("'{ip}' is not an IPv4 address; LL-MEC redirects to IPv4 addresses only"),
        ));
    }
    let mac = interface
        .dst_mac_address
        .as_deref()
        .map_or_else(|| NO_MAC.to_string(), |m| m.replace('-', ":"));
    Ok((ip, mac))
}

/// One filter, checked: what its calls are made of.
struct Filter<'r> {
    imsis: &'r [String],
    addresses: Vec<&'r str>,
    ports: Vec<&'r str>,
    transports: Vec<Transport>,
}

/// The lists LL-MEC can filter on; any other member of a filter is refused.
const FILTERED_ON: [&str; 4] = ["srcAddress", "dstAddress", "dstPort", "Protocol"];

fn check_filter<'r>(at: &str, filter: &'r TrafficFilter) -> Result<Filter<'r>, Refusal> {
    let unsupported = filter.lists().into_iter().filter_map(|(key, list)| {
        let present = list.is_some_and(|l| !l.is_empty());
        (present && !FILTERED_ON.contains(&key)).then_some(key)
    });
    let numbers = filter.numbers().into_iter();
    if let Some(key) = unsupported
        .chain(numbers.filter_map(|(k, v)| v.map(|_| k)))
        .next()
    {
        return Err(refuse(
            format!("{at}.{key}"),
            format!("LL-MEC cannot filter on {key}"),
        ));
    }
    Ok(Filter {
        imsis: imsis(at, filter)?,
        addresses: addresses(at, filter)?,
        ports: ports(at, filter)?,
        transports: transports(at, filter)?,
    })
}

/// `srcAddress`: the subscribers' IMSIs, at least one.
fn imsis<'r>(at: &str, filter: &'r TrafficFilter) -> Result<&'r [String], Refusal> {
    let imsis = filter.src_address.as_deref().unwrap_or(&[]);
    if imsis.is_empty() {
        return Err(refuse(
            format!("{at}.srcAddress"),
            "LL-MEC redirects the traffic of listed subscribers: srcAddress must list their IMSIs",
        ));
    }
    for (k, imsi) in imsis.iter().enumerate() {
        if !(6..=15).contains(&imsi.len()) || !imsi.bytes().all(|b| b.is_ascii_digit()) {
            return Err(refuse(
                format!("{at}.srcAddress[{k}]"),
                format!(
                    "'{imsi}' is not an IMSI (6-15 digits); in the LL-MEC dialect srcAddress lists subscriber IMSIs"
                ),
            ));
        }
    }
    Ok(imsis)
}

/// `dstAddress`: single IPv4 addresses, at least one.
fn addresses<'r>(at: &str, filter: &'r TrafficFilter) -> Result<Vec<&'r str>, Refusal> {
    let addresses = filter.dst_address.as_deref().unwrap_or(&[]);
    if addresses.is_empty() {
        return Err(refuse(
            format!("{at}.dstAddress"),
            "LL-MEC needs the service address whose traffic is redirected",
        ));
    }
    let mut checked = Vec::with_capacity(addresses.len());
    for (k, address) in addresses.iter().enumerate() {
        if address.parse::<Ipv4Addr>().is_err() {
            return Err(refuse(
                format!("{at}.dstAddress[{k}]"),
                format!(
                    "'{address}' is not a single IPv4 address; LL-MEC cannot express prefixes, ranges or IPv6"
                ),
            ));
        }
        checked.push(address.as_str());
    }
    Ok(checked)
}

/// `dstPort`: single ports, at least one.
fn ports<'r>(at: &str, filter: &'r TrafficFilter) -> Result<Vec<&'r str>, Refusal> {
    let ports = filter.dst_port.as_deref().unwrap_or(&[]);
    if ports.is_empty() {
        return Err(refuse(
            format!("{at}.dstPort"),
            "LL-MEC needs a destination port (it has no 'any port')",
        ));
    }
    let mut checked = Vec::with_capacity(ports.len());
    for (k, port) in ports.iter().enumerate() {
        let p = port.trim();
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err() {
            return Err(refuse(
                format!("{at}.dstPort[{k}]"),
                format!("'{port}' is not a single port; LL-MEC cannot express port ranges"),
            ));
        }
        checked.push(p);
    }
    Ok(checked)
}

/// `Protocol`: tcp, udp or any (none: any), each once.
fn transports(at: &str, filter: &TrafficFilter) -> Result<Vec<Transport>, Refusal> {
    let mut transports = Vec::new();
    let protocols = filter.protocol.as_deref().unwrap_or(&[]);
    for (k, protocol) in protocols.iter().enumerate() {
        let t = match protocol.trim().to_ascii_lowercase().as_str() {
            "tcp" => Transport::Tcp,
            "udp" => Transport::Udp,
            "any" => Transport::Any,
            _ => {
                return Err(refuse(
                    format!("{at}.Protocol[{k}]"),
                    format!("'{protocol}' is not supported by LL-MEC (tcp, udp or any)"),
                ));
            }
        };
        if !transports.contains(&t) {
            transports.push(t);
        }
    }
    if transports.is_empty() {
        transports.push(Transport::Any);
    }
    Ok(transports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_creation;

    fn seed() -> serde_json::Value {
        serde_json::from_str(crate::mep::fixtures::SEED).unwrap()
    }

    fn plan_of(v: &serde_json::Value) -> Result<Vec<Step>, Refusal> {
        let request = parse_creation(v.to_string().as_bytes()).unwrap();
        plan(&request, crate::config::DEFAULT_MAX_CALLS)
    }

    /// The seed with a change to its traffic filter 0.
    fn with_filter(edit: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
        let mut v = seed();
        edit(&mut v["appTrafficRule"][0]["trafficFilter"][0]);
        v
    }

    /// A change to a part of a request, for tables of cases.
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;

    fn refusal(v: &serde_json::Value) -> Refusal {
        plan_of(v).unwrap_err()
    }

    #[test]
    fn an_app_instance_id_is_refused_not_ignored() {
        let mut v = seed();
        v["appInstanceId"] = "app-1".into();
        let r = refusal(&v);
        assert_eq!(r.rule, "appInstanceId");
        assert!(r.reason.contains("cannot be given"), "{r}");
    }

    #[test]
    fn a_step_of_another_driver_is_not_removed() {
        let config = crate::config::MepConfig::new(
            crate::config::DriverKind::Llmec,
            "http://127.0.0.1:1",
            std::time::Duration::from_millis(100),
        );
        let step = Step::new(
            "DNS rule 'd1'",
            "/mec_app_support/v1/applications/app-1/dns_rules/d1",
            "{}",
        );
        let e = LlMec::new(&config).remove(&step).unwrap_err();
        assert!(e.to_string().contains("planned by another driver"), "{e}");
        assert!(!e.to_string().contains("refused"), "not sent: {e}");
    }

    #[test]
    fn seed_example_gives_exact_bodies() {
        let steps = plan_of(&seed()).unwrap();
        assert_eq!(
            steps,
            vec![
                Step::new(
                    "DNS rule '111' (pfrag.gr)",
                    "/api/mp1/traffic/all",
                    r#"{"url":"pfrag.gr","mec-ipaddr":"172.24.248.5","mec-macaddr":"00:00:00:00:00:00","type":1}"#
                ),
                Step::new(
                    "traffic rule 'tr1' filter 0 (195.251.255.142:80/tcp)",
                    "/api/mp1/traffic/imsi",
                    r#"{"ue_list":["208930100001114"],"service_ip":"195.251.255.142","port":"80","transport":1,"mec_ipaddr":"172.16.0.111","mec_macaddr":"00:11:22:33:44:55","type":2}"#
                ),
            ]
        );
    }

    #[test]
    fn filters_expand_to_addresses_by_ports_by_protocols() {
        let mut v = seed();
        v["appDNSRule"] = serde_json::json!([]);
        let f0 = serde_json::json!({"srcAddress": ["208930100001114", "208930100001115"],
            "dstAddress": ["10.0.0.1", "10.0.0.2"], "dstPort": ["80", "443"], "Protocol": ["TCP", "udp"]});
        let f1 = serde_json::json!({"srcAddress": ["208930100001116"],
            "dstAddress": ["10.0.0.3", "10.0.0.4"], "dstPort": ["53", "5353"], "protocol": ["udp", "Any"]});
        v["appTrafficRule"][0]["trafficFilter"] = serde_json::json!([f0, f1]);
        let steps = plan_of(&v).unwrap();
        assert_eq!(steps.len(), 16);
        let labels: Vec<&str> = steps.iter().map(|s| s.label()).collect();
        assert_eq!(labels[0], "traffic rule 'tr1' filter 0 (10.0.0.1:80/tcp)");
        assert_eq!(labels[1], "traffic rule 'tr1' filter 0 (10.0.0.1:80/udp)");
        assert_eq!(labels[2], "traffic rule 'tr1' filter 0 (10.0.0.1:443/tcp)");
        assert_eq!(labels[4], "traffic rule 'tr1' filter 0 (10.0.0.2:80/tcp)");
        assert_eq!(labels[8], "traffic rule 'tr1' filter 1 (10.0.0.3:53/udp)");
        assert_eq!(
            labels[15],
            "traffic rule 'tr1' filter 1 (10.0.0.4:5353/any)"
        );
        assert_eq!(
            steps[15].body(),
            r#"{"ue_list":["208930100001116"],"service_ip":"10.0.0.4","port":"5353","transport":0,"mec_ipaddr":"172.16.0.111","mec_macaddr":"00:11:22:33:44:55","type":2}"#
        );
        assert!(steps[0].body().starts_with(
            r#"{"ue_list":["208930100001114","208930100001115"],"service_ip":"10.0.0.1","port":"80","transport":1,"#
        ));
        let distinct: HashSet<&str> = steps.iter().map(|s| s.body()).collect();
        assert_eq!(distinct.len(), 16);
    }

    #[test]
    fn no_protocol_means_any_and_no_mac_means_zero_mac() {
        let mut v = with_filter(|f| {
            f.as_object_mut().unwrap().remove("Protocol");
        });
        v["appTrafficRule"][0]["dstInterface"][0]
            .as_object_mut()
            .unwrap()
            .remove("dstMACAddress");
        let steps = plan_of(&v).unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!(
            steps[1].body(),
            r#"{"ue_list":["208930100001114"],"service_ip":"195.251.255.142","port":"80","transport":0,"mec_ipaddr":"172.16.0.111","mec_macaddr":"00:00:00:00:00:00","type":2}"#
        );
        assert_eq!(
            steps[1].label(),
            "traffic rule 'tr1' filter 0 (195.251.255.142:80/any)"
        );
    }

    #[test]
    fn identical_calls_are_planned_once() {
        let v = with_filter(|f| {
            f["Protocol"] = serde_json::json!(["tcp", "TCP"]);
            f["dstPort"] = serde_json::json!(["80", "80"]);
        });
        assert_eq!(plan_of(&v).unwrap().len(), 2);
    }

    #[test]
    fn request_without_rules_plans_nothing() {
        let v = serde_json::json!({"RegionId": "2"});
        assert_eq!(plan_of(&v).unwrap(), vec![]);
    }

    #[test]
    fn ipv6_dns_rule_is_refused() {
        let mut v = seed();
        v["appDNSRule"][0]["ipAddressType"] = "IP_V6".into();
        v["appDNSRule"][0]["ipAddress"] = "2001:db8::1".into();
        let r = refusal(&v);
        assert_eq!(r.rule, "appDNSRule[0] '111' ipAddressType");
        assert!(r.reason.contains("IPv4"), "{r}");
    }

    #[test]
    fn actions_other_than_forward_are_refused() {
        for action in [
            "DROP",
            "DECAPSULATED",
            "FORWARD_AS_IS",
            "PASSTHROUGH",
            "DUPLICATED_DECAPSULATED",
            "DUPLICATE_AS_IS",
        ] {
            let mut v = seed();
            v["appTrafficRule"][0]["action"] = action.into();
            let r = refusal(&v);
            assert_eq!(r.rule, "appTrafficRule[0] 'tr1' action");
            assert!(r.reason.contains(action), "{r}");
        }
    }

    #[test]
    fn packet_filter_type_is_refused() {
        let mut v = seed();
        v["appTrafficRule"][0]["filterType"] = "PACKET".into();
        assert_eq!(refusal(&v).rule, "appTrafficRule[0] 'tr1' filterType");
    }

    #[test]
    fn destination_interface_problems_are_refused() {
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|r| {
                    r.as_object_mut().unwrap().remove("dstInterface");
                }),
                "appTrafficRule[0] 'tr1' dstInterface",
            ),
            (
                Box::new(|r| r["dstInterface"] = serde_json::json!([])),
                "appTrafficRule[0] 'tr1' dstInterface",
            ),
            (
                Box::new(|r| {
                    r["dstInterface"][0]
                        .as_object_mut()
                        .unwrap()
                        .remove("dstIPAddress");
                }),
                "appTrafficRule[0] 'tr1' dstInterface[0].dstIPAddress",
            ),
            (
                Box::new(|r| r["dstInterface"][0]["dstIPAddress"] = "2001:db8::2".into()),
                "appTrafficRule[0] 'tr1' dstInterface[0].dstIPAddress",
            ),
            (
                Box::new(|r| r["dstInterface"][0]["srcMACAddress"] = "00:11:22:33:44:66".into()),
                "appTrafficRule[0] 'tr1' dstInterface[0].srcMACAddress",
            ),
            (
                Box::new(|r| r["dstInterface"][0]["interfaceType"] = "TUNNEL".into()),
                "appTrafficRule[0] 'tr1' dstInterface[0].interfaceType",
            ),
            (
                Box::new(|r| {
                    r["dstInterface"][0]["tunnelInfo"] = serde_json::json!({"tunnelType": "GRE",
                        "tunnelDstAddress": "1.1.1.1", "tunnelSrcAddress": "2.2.2.2"})
                }),
                "appTrafficRule[0] 'tr1' dstInterface[0].tunnelInfo",
            ),
            (
                Box::new(|r| {
                    let second = r["dstInterface"][0].clone();
                    r["dstInterface"].as_array_mut().unwrap().push(second);
                }),
                "appTrafficRule[0] 'tr1' dstInterface[1]",
            ),
        ];
        for (edit, rule) in cases {
            let mut v = seed();
            edit(&mut v["appTrafficRule"][0]);
            assert_eq!(refusal(&v).rule, rule);
        }
    }

    #[test]
    fn dash_separated_mac_is_written_with_colons() {
        let mut v = seed();
        v["appTrafficRule"][0]["dstInterface"][0]["dstMACAddress"] = "00-11-22-33-44-55".into();
        assert!(
            plan_of(&v).unwrap()[1]
                .body()
                .contains(r#""mec_macaddr":"00:11:22:33:44:55""#)
        );
    }

    #[test]
    fn filter_fields_llmec_cannot_express_are_refused() {
        let cases = [
            ("srcPort", serde_json::json!(["1234"])),
            ("Token", serde_json::json!(["t"])),
            ("srcTunnelAddress", serde_json::json!(["1.1.1.1"])),
            ("dstTunnelAddress", serde_json::json!(["1.1.1.1"])),
            ("srcTunnelPort", serde_json::json!(["2152"])),
            ("dstTunnelPort", serde_json::json!(["2152"])),
            ("qci", serde_json::json!(9)),
            ("dscp", serde_json::json!(0)),
            ("tc", serde_json::json!(1)),
        ];
        for (key, value) in cases {
            let v = with_filter(|f| f[key] = value);
            let r = refusal(&v);
            assert_eq!(
                r.rule,
                format!("appTrafficRule[0] 'tr1' trafficFilter[0].{key}")
            );
        }
        // Present but empty lists say nothing: accepted.
        let v = with_filter(|f| f["srcPort"] = serde_json::json!([]));
        assert!(plan_of(&v).is_ok());
    }

    #[test]
    fn missing_or_inexpressible_filter_values_are_refused() {
        let at = "appTrafficRule[0] 'tr1' trafficFilter[0]";
        let cases: Vec<(Edit, String)> = vec![
            (
                Box::new(|f| {
                    f.as_object_mut().unwrap().remove("srcAddress");
                }),
                format!("{at}.srcAddress"),
            ),
            (
                Box::new(|f| f["srcAddress"] = serde_json::json!([])),
                format!("{at}.srcAddress"),
            ),
            (
                Box::new(|f| f["srcAddress"] = serde_json::json!(["208930100001114", "10.0.0.9"])),
                format!("{at}.srcAddress[1]"),
            ),
            (
                Box::new(|f| {
                    f.as_object_mut().unwrap().remove("dstAddress");
                }),
                format!("{at}.dstAddress"),
            ),
            (
                Box::new(|f| f["dstAddress"] = serde_json::json!(["10.0.0.0/24"])),
                format!("{at}.dstAddress[0]"),
            ),
            (
                Box::new(|f| f["dstAddress"] = serde_json::json!(["10.0.0.1", "2001:db8::1"])),
                format!("{at}.dstAddress[1]"),
            ),
            (
                Box::new(|f| {
                    f.as_object_mut().unwrap().remove("dstPort");
                }),
                format!("{at}.dstPort"),
            ),
            (
                Box::new(|f| f["dstPort"] = serde_json::json!(["80", "1000-2000"])),
                format!("{at}.dstPort[1]"),
            ),
            (
                Box::new(|f| f["Protocol"] = serde_json::json!(["tcp", "sctp"])),
                format!("{at}.Protocol[1]"),
            ),
        ];
        for (edit, rule) in cases {
            let v = with_filter(edit);
            let r = refusal(&v);
            assert_eq!(r.rule, rule, "{r}");
        }
    }

    #[test]
    fn refusal_names_the_right_rule_and_filter() {
        let mut v = seed();
        let mut second = v["appTrafficRule"][0].clone();
        second["trafficRuleId"] = "tr2".into();
        let good = second["trafficFilter"][0].clone();
        let mut bad = good.clone();
        bad["Protocol"] = serde_json::json!(["icmp"]);
        second["trafficFilter"] = serde_json::json!([good, bad]);
        v["appTrafficRule"].as_array_mut().unwrap().push(second);
        let r = refusal(&v);
        assert_eq!(
            r.rule,
            "appTrafficRule[1] 'tr2' trafficFilter[1].Protocol[0]"
        );
        assert!(r.to_string().contains("icmp"));
    }

    #[test]
    fn step_cap_refuses_combinatorial_requests() {
        let addresses: Vec<String> = (0..32).map(|i| format!("10.0.0.{i}")).collect();
        let ports: Vec<String> = (1..=16).map(|p| p.to_string()).collect();
        // 32 × 16 × 2 = 1024 traffic calls + 1 DNS call: one too many.
        let v = with_filter(|f| {
            f["dstAddress"] = serde_json::json!(addresses);
            f["dstPort"] = serde_json::json!(ports);
            f["Protocol"] = serde_json::json!(["tcp", "udp"]);
        });
        let r = refusal(&v);
        assert_eq!(r.rule, "appTrafficRule[0] 'tr1' trafficFilter[0]");
        assert!(r.reason.contains("1024"), "{r}");
        // Exactly at the cap: accepted.
        let mut v = v;
        v["appDNSRule"] = serde_json::json!([]);
        assert_eq!(plan_of(&v).unwrap().len(), 1024);
    }

    #[test]
    fn imsi_lists_repeated_in_every_call_are_bounded_in_total() {
        // 57,000 IMSIs (under 1 MiB of body) × 512 calls would be a gigabyte of calls.
        let imsis: Vec<String> = (0..57_000u64)
            .map(|i| (208_930_100_000_000 + i).to_string())
            .collect();
        let addresses: Vec<String> = (0..32).map(|i| format!("10.0.0.{i}")).collect();
        let ports: Vec<String> = (1..=16).map(|p| p.to_string()).collect();
        let v = with_filter(|f| {
            f["srcAddress"] = serde_json::json!(imsis);
            f["dstAddress"] = serde_json::json!(addresses);
            f["dstPort"] = serde_json::json!(ports);
        });
        let r = refusal(&v);
        assert_eq!(r.rule, "appTrafficRule[0] 'tr1' trafficFilter[0]");
        assert!(r.reason.contains("bytes of IMSI lists"), "{r}");
        // The same list in one call is fine: what is bounded is the repetition.
        let v = with_filter(|f| f["srcAddress"] = serde_json::json!(imsis));
        let steps = plan_of(&v).unwrap();
        let bytes: usize = steps.iter().map(|s| s.body().len()).sum();
        assert!(bytes < MAX_IMSI_BYTES, "{bytes}");
    }
}
