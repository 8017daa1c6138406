//! The ETSI GS MEC 011 v2.1.1 dialect (`driver = "etsi-mec011"`): the rules API of the MEC
//! application support service, base `{url}/mec_app_support/v1` (`url` is the apiRoot).
//!
//! On such a platform the rules of an application instance come from its descriptor: this API
//! cannot create or delete them, only read them and switch their `state`. Applying a request
//! therefore means *activating* each of its rules, removing it *deactivating* them:
//!
//! | step | apply | remove |
//! | --- | --- | --- |
//! | one per DNS rule | `PUT /applications/{app}/dns_rules/{dnsRuleId}` with `state: ACTIVE` | the same `PUT` with `state: INACTIVE` |
//! | one per traffic rule | `PUT /applications/{app}/traffic_rules/{trafficRuleId}` with `state: ACTIVE` | the same `PUT` with `state: INACTIVE` |
//!
//! DNS rules come first, then traffic rules, each in request order. `{app}` is the request's
//! `appInstanceId` extension field when present, else its RequestId. Every id placed in a path
//! is percent-encoded by [`wire::path_segment`](super::wire::path_segment) (everything but
//! `A-Z a-z 0-9 - _ ~`, dots included), so an id such as `../../x` or `a b` is always one
//! path segment and can never change which resource is called. A step's `target` is that
//! encoded path (relative to the region's URL) and its `body` the full MEC 011 rule built from
//! the request with `state: ACTIVE` (the removal's fallback body is identical but for
//! `state: INACTIVE`): what is sent when the platform's own rule cannot be read (see below).
//!
//! Every call carries `X-AppinstanceID: {app}` (EdgeGallery's implementation requires it equal
//! to the path's id; the driver decodes it back from the step's target). An `appInstanceId`
//! that cannot travel verbatim in a header (other than visible ASCII and inner spaces) is
//! refused before anything is sent.
//!
//! **Read-modify-write.** Before each `PUT` the driver `GET`s the rule and puts back exactly
//! what the platform returned (members in its order, values as written, fields the plugin
//! does not know included) with only `state` changed: MEC 011's PUT carries "updated
//! attributes that are allowed to be changed", and `state` is the one that "may be updated
//! using HTTP PUT method". A rule already in the wanted state is not written: on activation
//! that is [`Applied::AlreadyInPlace`], which the service records so that the removal leaves
//! the rule ACTIVE. A `GET` refused with 403 (or answered with something that is not a rule)
//! falls back to the body built from the request (the step's body, logged at debug level).
//! The `GET` also tells "the platform does not know this rule" apart before anything is
//! written, and gives the rule's `ETag` on platforms that have one: the `PUT` then carries
//! `If-Match: <etag>`, so a change made on the platform in between is never overwritten
//! blindly. On `412 Precondition Failed` the driver reads the rule again and retries the `PUT`
//! once with what it read; a second 412 is a refusal. A platform without ETags, or with weak
//! ones (`W/"..."`, which `If-Match` never matches), gets the `PUT` without `If-Match`. Each
//! call is bounded by the region's `timeout`, so one step takes at most four of them (GET,
//! PUT, GET, PUT).
//!
//! **Answers.** A 404 when applying (on the `GET` or the `PUT`) is a refusal naming the rule
//! and the application: the platform only knows the rules of the application's descriptor. A
//! 404 when removing counts as removed. Other error answers are refusals carrying the
//! ProblemDetails `detail` (or `title`) of the answer.
//!
//! **Field mapping** (northbound MEC 010-2 → MEC 011 `TrafficRule`): `trafficRuleId`,
//! `filterType` and `priority` as they are (priority 0–255, as MEC 011 requires; integral
//! decimals such as `2.0` are written `2`); filters: `srcAddress`, `dstAddress`, `srcPort`,
//! `dstPort` as they are, `Protocol` → `protocol`, `Token` → `token`, `srcTunnelAddress`,
//! `dstTunnelAddress` → `tgtTunnelAddress`, `srcTunnelPort`, `dstTunnelPort`, `qci` → `qCI`,
//! `dscp` → `dSCP`, `tc` → `tC`; actions: `FORWARD` and `DECAPSULATED` → `FORWARD_DECAPSULATED`
//! (the contract's enum is MEC 010-2 v1's `FORWARD_DECAPSULATED` split in two; traffic
//! forwarded to an application leaves the GTP-U tunnel), `DUPLICATED_DECAPSULATED` →
//! `DUPLICATE_DECAPSULATED` (a misspelling of it), `DROP` and `PASSTHROUGH` as they are;
//! `FORWARD_AS_IS` and `DUPLICATE_AS_IS` are refused (see [`v2_action`]); `dstInterface` is a single object in MEC 011: `dstInterface[0]`
//! is sent, a rule with two interfaces is refused; interface `interfaceType` as is,
//! `tunnelInfo.tunnelType` `GTP-U` → `GTP_U` (`GRE` as is), `srcMACAddress` → `srcMacAddress`,
//! `dstMACAddress` → `dstMacAddress` (written with `:`), `dstIPAddress` → `dstIpAddress`;
//! `tunnelSpecificData` has no MEC 011 form and is refused. DNS rules (`DnsRule`):
//! `dnsRuleId`, `domainName`, `ipAddressType`, `ipAddress`, `ttl` as they are.
//!
//! **Caveat.** The platform keys a rule by (application, rule id), the plugin a step by its
//! target and body: two requests that activate the same rule of the same application with the
//! same content share it (the rule stays active until the last of them is deleted), but with
//! different contents they do not, and deleting either deactivates the rule.

use std::fmt;

use percent_encoding::percent_decode_str;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::{Number, Value};

use super::agent::MepClient;
use super::wire::{Filter, TokenKey, Tunnel, action_name, path_segment};
use super::{Applied, Driver, MepError, Refusal, RuleIdentity, Step, planned_elsewhere};
use crate::config::{DriverKind, MepConfig};
use crate::model::integral;
use crate::model::{
    Action, CreationRequest, DnsRule, FilterType, InterfaceDescriptor, InterfaceType,
    IpAddressType, TrafficFilter, TrafficRule,
};

/// Base path of the MEC 011 API, relative to the region's URL.
pub const BASE: &str = "/mec_app_support/v1";

/// The header carrying the application instance id on every call.
pub const APP_INSTANCE_HEADER: &str = "X-AppinstanceID";

/// Highest MEC 011 traffic rule priority.
const MAX_PRIORITY: u64 = 255;

/// The two kinds of rules of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    Dns,
    Traffic,
}

impl RuleKind {
    /// The collection's path segment.
    pub fn collection(self) -> &'static str {
        match self {
            RuleKind::Dns => "dns_rules",
            RuleKind::Traffic => "traffic_rules",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            RuleKind::Dns => "DNS rule",
            RuleKind::Traffic => "traffic rule",
        }
    }

    fn from_collection(segment: &str) -> Option<RuleKind> {
        match segment {
            "dns_rules" => Some(RuleKind::Dns),
            "traffic_rules" => Some(RuleKind::Traffic),
            _ => None,
        }
    }
}

/// `{BASE}/applications/{app}/{collection}/{rule}`, every id encoded.
pub fn rule_target(app_instance_id: &str, kind: RuleKind, rule_id: &str) -> String {
    format!(
        "{BASE}/applications/{}/{}/{}",
        path_segment(app_instance_id),
        kind.collection(),
        path_segment(rule_id)
    )
}

/// A step's target read back: which rule of which application.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RulePath {
    app: String,
    kind: RuleKind,
    rule: String,
}

impl RulePath {
    fn parse(target: &str) -> Option<RulePath> {
        let rest = target.strip_prefix(BASE)?.strip_prefix("/applications/")?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [app, collection, rule] = parts[..] else {
            return None;
        };
        let decode = |s: &str| {
            percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|c| c.into_owned())
                .filter(|d| !d.is_empty())
        };
        Some(RulePath {
            app: decode(app)?,
            kind: RuleKind::from_collection(collection)?,
            rule: decode(rule)?,
        })
    }
}

impl fmt::Display for RulePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} '{}' of application '{}'",
            self.kind.noun(),
            self.rule,
            self.app
        )
    }
}

/// What the driver needs from HTTP: one call with extra request headers. Implemented by
/// [`MepClient`]; unit tests script it.
pub trait Transport: Send + Sync {
    /// `target` appended to the platform's base URL.
    fn url(&self, target: &str) -> String;

    /// Sends one call. A 2xx answer gives its `ETag` header, if any, and its body; any other
    /// status is [`MepError::Refused`] (with the ProblemDetails `detail` of the answer).
    fn call(
        &self,
        method: &str,
        url: &str,
        json_body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<(Option<String>, String), MepError>;
}

impl Transport for MepClient {
    fn url(&self, target: &str) -> String {
        MepClient::url(self, target)
    }

    fn call(
        &self,
        method: &str,
        url: &str,
        json_body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<(Option<String>, String), MepError> {
        self.send_with(method, url, json_body, headers)
            .map(|answer| (answer.etag, answer.body))
    }
}

/// The ETSI MEC 011 driver of one region.
pub struct EtsiMec011 {
    transport: Box<dyn Transport>,
}

impl fmt::Debug for EtsiMec011 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtsiMec011").finish_non_exhaustive()
    }
}

impl EtsiMec011 {
    pub fn new(mep: &MepConfig) -> EtsiMec011 {
        EtsiMec011::with_transport(Box::new(MepClient::new(mep)))
    }

    /// The driver over another transport (tests).
    pub fn with_transport(transport: Box<dyn Transport>) -> EtsiMec011 {
        EtsiMec011 { transport }
    }

    /// Reads the rule at `url`: its ETag (strong ones only) and, when the answer is a JSON
    /// object, the rule as the platform holds it. A 403 ("not allowed given the current
    /// status of the resource", which MEC 011 lists for GET) gives neither: the caller then
    /// falls back to the body built from the request.
    fn read(&self, url: &str, rule: &RulePath) -> Result<Current, MepError> {
        let app_header = (APP_INSTANCE_HEADER, rule.app.as_str());
        match self.transport.call("GET", url, None, &[app_header]) {
            // A weak ETag (`W/"..."`) never satisfies `If-Match` (RFC 9110 §13.1.1 compares
            // strongly): sending it would only earn two 412s, so it counts as none.
            Ok((etag, body)) => Ok(Current {
                etag: etag.filter(|tag| !tag.starts_with("W/")),
                rule: match serde_json::from_str::<RawObject>(&body) {
                    Ok(rule) => Some(rule),
                    Err(_) => {
                        debug!(
                            "{rule}: the GET answer is not a rule object; the PUT carries the body built from the request"
                        );
                        None
                    }
                },
            }),
            Err(MepError::Refused { status: 403, .. }) => {
                debug!(
                    "{rule}: the platform refused to read it (403); the PUT carries the body built from the request"
                );
                Ok(Current {
                    etag: None,
                    rule: None,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Sets the `state` of the rule at `step.target()` to `want` by read-modify-write: GET the
    /// rule, PUT back exactly what the platform returned with only `state` changed (with
    /// `If-Match` when it gave an ETag), re-reading and retrying once on 412. A rule already
    /// in `want` is left alone ([`Applied::AlreadyInPlace`]). When the rule cannot be read
    /// (403, or an answer that is not a rule), the PUT carries `fallback`, the body built from
    /// the request. A 404 is `unknown`'s answer. Any other failure of the read is
    /// [`MepError::BeforeChange`]: the rule was not changed, and a creation's undo must not
    /// change it either.
    fn set_state(
        &self,
        step: &Step,
        want: &str,
        fallback: &str,
        unknown: impl Fn(&RulePath, MepError) -> Result<Applied, MepError>,
    ) -> Result<Applied, MepError> {
        let url = self.transport.url(step.target());
        let Some(rule) = RulePath::parse(step.target()) else {
            return Err(planned_elsewhere(DriverKind::EtsiMec011, url, step));
        };
        let app_header = (APP_INSTANCE_HEADER, rule.app.as_str());
        let mut retried = false;
        loop {
            // Nothing was changed yet (a PUT before this read, if any, got 412): whatever
            // went wrong with the read, the platform's rule is as it was.
            let current = match self.read(&url, &rule) {
                Ok(current) => current,
                Err(e @ MepError::Refused { status: 404, .. }) => return unknown(&rule, e),
                Err(e) => return Err(MepError::BeforeChange(Box::new(e))),
            };
            let body = match current.rule {
                Some(platform_rule) => {
                    if platform_rule.state().as_deref() == Some(want) {
                        return Ok(Applied::AlreadyInPlace);
                    }
                    platform_rule.with_state(want)
                }
                None => fallback.to_string(),
            };
            let mut headers = vec![app_header];
            if let Some(tag) = current.etag.as_deref() {
                headers.push(("If-Match", tag));
            }
            match self.transport.call("PUT", &url, Some(&body), &headers) {
                Ok(_) => return Ok(Applied::Changed),
                Err(e @ MepError::Refused { status: 404, .. }) => return unknown(&rule, e),
                Err(MepError::Refused { status: 412, .. }) if !retried => retried = true,
                Err(MepError::Refused {
                    url,
                    status: 412,
                    detail,
                }) => {
                    return Err(MepError::Refused {
                        url,
                        status: 412,
                        detail: with_platform_detail(
                            format!(
                                "{rule} changed on the platform twice while it was being updated (412 Precondition Failed after re-reading it); retry later"
                            ),
                            &detail,
                        ),
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A rule as read from the platform.
struct Current {
    etag: Option<String>,
    /// `None` when it could not be read (403) or the answer was not a rule.
    rule: Option<RawObject>,
}

/// A JSON object as the platform wrote it: its members in their order, each value exactly
/// as written (numbers, nested objects and fields the plugin does not know included), so
/// that the rule is put back as it was read with only `state` changed.
struct RawObject(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = RawObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawObject, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Box<RawValue>>()? {
                    members.push(member);
                }
                Ok(RawObject(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

impl RawObject {
    /// The `state` member, when it is a string.
    fn state(&self) -> Option<String> {
        self.0
            .iter()
            .find(|(key, _)| key == "state")
            .and_then(|(_, value)| serde_json::from_str(value.get()).ok())
    }

    /// The object written back with `state` set to `state` (added at the end if absent).
    fn with_state(&self, state: &str) -> String {
        let state = Value::from(state).to_string();
        let mut out = String::from("{");
        let mut found = false;
        for (key, value) in &self.0 {
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(&Value::from(key.as_str()).to_string());
            out.push(':');
            if key == "state" {
                found = true;
                out.push_str(&state);
            } else {
                out.push_str(value.get());
            }
        }
        if !found {
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(r#""state":"#);
            out.push_str(&state);
        }
        out.push('}');
        out
    }
}

/// `ours`, followed by what the platform said when it said something.
fn with_platform_detail(ours: String, platform: &str) -> String {
    if platform.is_empty() {
        ours
    } else {
        format!("{ours} (platform: {platform})")
    }
}

impl Driver for EtsiMec011 {
    fn kind(&self) -> DriverKind {
        DriverKind::EtsiMec011
    }

    fn plans(&self, step: &Step) -> bool {
        RulePath::parse(step.target()).is_some()
    }

    /// A MEC 011 rule is identified by its path (application and rule id), whatever the
    /// content two requests gave it: deactivating it affects every request that activated it.
    fn rule_identity(&self) -> RuleIdentity {
        RuleIdentity::Target
    }

    fn plan(&self, request_id: &str, request: &CreationRequest) -> Result<Vec<Step>, Refusal> {
        plan(request_id, request)
    }

    fn apply(&self, step: &Step) -> Result<(), MepError> {
        self.apply_with_prior(step).map(|_| ())
    }

    /// Activates the rule unless it is ACTIVE already ([`Applied::AlreadyInPlace`]: the
    /// request then did not change it, and its removal leaves it ACTIVE).
    fn apply_with_prior(&self, step: &Step) -> Result<Applied, MepError> {
        self.set_state(step, "ACTIVE", step.body(), |rule, e| match e {
            MepError::Refused {
                url,
                status,
                detail,
            } => Err(MepError::Refused {
                url,
                status,
                detail: with_platform_detail(
                    format!("the platform does not know {rule}: rules must come from the application's descriptor"),
                    &detail,
                ),
            }),
            other => Err(other),
        })
    }

    fn remove(&self, step: &Step) -> Result<(), MepError> {
        self.set_state(step, "INACTIVE", &inactive(step.body()), |_, _| {
            Ok(Applied::Changed)
        })
        .map(|_| ())
    }
}

const ACTIVE_END: &str = r#""state":"ACTIVE"}"#;
const INACTIVE_END: &str = r#""state":"INACTIVE"}"#;

/// The removal body of an apply body: the same rule with `state: INACTIVE`.
fn inactive(active: &str) -> String {
    if let Some(start) = active.strip_suffix(ACTIVE_END) {
        return format!("{start}{INACTIVE_END}");
    }
    // Not written by `plan` (which puts `state` last): set the field in a parsed copy.
    match serde_json::from_str::<serde_json::Value>(active) {
        Ok(serde_json::Value::Object(mut rule)) => {
            rule.insert("state".into(), "INACTIVE".into());
            serde_json::Value::Object(rule).to_string()
        }
        _ => active.to_string(),
    }
}

/// MEC 011 `DnsRule` (field order is the wire order).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MecDnsRule<'a> {
    dns_rule_id: &'a str,
    domain_name: &'a str,
    ip_address_type: IpAddressType,
    ip_address: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<u64>,
    state: &'static str,
}

/// MEC 011 `TrafficRule` (field order is the wire order).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MecTrafficRule<'a> {
    traffic_rule_id: &'a str,
    filter_type: FilterType,
    priority: u64,
    traffic_filter: Vec<Filter<'a>>,
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dst_interface: Option<MecInterface<'a>>,
    state: &'static str,
}

/// MEC 011 `InterfaceDescriptor`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MecInterface<'a> {
    interface_type: InterfaceType,
    #[serde(skip_serializing_if = "Option::is_none")]
    tunnel_info: Option<Tunnel<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    src_mac_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dst_mac_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dst_ip_address: Option<&'a str>,
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

/// A non-negative integer (integral decimals such as `2.0` included), at most `max`.
fn uint(n: &Number, max: u64) -> Option<u64> {
    integral(n).filter(|v| *v <= max)
}

/// The steps for a request: DNS rules first, then traffic rules, each in request order.
fn plan(request_id: &str, request: &CreationRequest) -> Result<Vec<Step>, Refusal> {
    let app = match request.app_instance_id.as_deref() {
        Some(app) => {
            check_app_instance_id(app)?;
            app
        }
        None => request_id,
    };
    let mut steps = Vec::new();
    for (i, rule) in request.dns_rules().iter().enumerate() {
        steps.push(dns_step(app, i, rule)?);
    }
    for (i, rule) in request.traffic_rules().iter().enumerate() {
        steps.push(traffic_step(app, i, rule)?);
    }
    Ok(steps)
}

/// The id travels verbatim in the `X-AppinstanceID` header, which must equal the path's id:
/// visible ASCII and inner spaces only (header parsers trim outer spaces and may refuse or
/// mangle other bytes).
fn check_app_instance_id(app: &str) -> Result<(), Refusal> {
    let header_safe = app.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if !header_safe || app.trim() != app {
        return Err(refuse(
            "appInstanceId".to_string(),
            format!(
                "'{app}' cannot be sent in the X-AppinstanceID header MEC 011 platforms require: use visible ASCII characters without leading or trailing spaces"
            ),
        ));
    }
    Ok(())
}

fn dns_step(app: &str, i: usize, rule: &DnsRule) -> Result<Step, Refusal> {
    let at = format!("appDNSRule[{i}] '{}'", rule.dns_rule_id);
    let ttl = match &rule.ttl {
        None => None,
        Some(n) => Some(uint(n, u32::MAX as u64).ok_or_else(|| {
            refuse(
                format!("{at} ttl"),
                format!("{n} is not an integer in 0..={}", u32::MAX),
            )
        })?),
    };
    let body = MecDnsRule {
        dns_rule_id: &rule.dns_rule_id,
        domain_name: &rule.domain_name,
        ip_address_type: rule.ip_address_type,
        ip_address: &rule.ip_address,
        ttl,
        state: "ACTIVE",
    };
    Ok(Step::new(
        &format!("DNS rule '{}' ({})", rule.dns_rule_id, rule.domain_name),
        &rule_target(app, RuleKind::Dns, &rule.dns_rule_id),
        &to_json(&body),
    ))
}

fn traffic_step(app: &str, i: usize, rule: &TrafficRule) -> Result<Step, Refusal> {
    let at = format!("appTrafficRule[{i}] '{}'", rule.traffic_rule_id);
    let priority = uint(&rule.priority, MAX_PRIORITY).ok_or_else(|| {
        refuse(
            format!("{at} priority"),
            format!(
                "{} is out of the MEC 011 range 0..={MAX_PRIORITY}",
                rule.priority
            ),
        )
    })?;
    let traffic_filter = rule
        .traffic_filter
        .iter()
        .enumerate()
        .map(|(j, f)| filter(&format!("{at} trafficFilter[{j}]"), f))
        .collect::<Result<Vec<_>, _>>()?;
    let interfaces = rule.dst_interface.as_deref().unwrap_or(&[]);
    if interfaces.len() > 1 {
        return Err(refuse(
            format!("{at} dstInterface[1]"),
            "a MEC 011 traffic rule has a single destination interface; only one dstInterface can be given",
        ));
    }
    let dst_interface = match interfaces.first() {
        Some(interface) => Some(destination(&format!("{at} dstInterface[0]"), interface)?),
        None => None,
    };
    let body = MecTrafficRule {
        traffic_rule_id: &rule.traffic_rule_id,
        filter_type: rule.filter_type,
        priority,
        traffic_filter,
        action: v2_action(&at, rule.action)?,
        dst_interface,
        state: "ACTIVE",
    };
    Ok(Step::new(
        &format!("traffic rule '{}'", rule.traffic_rule_id),
        &rule_target(app, RuleKind::Traffic, &rule.traffic_rule_id),
        &to_json(&body),
    ))
}

/// The MEC 011 v2.1.1 name of `action` (the version whose `TrafficRule.Action` enum is `DROP,
/// FORWARD_DECAPSULATED, FORWARD_ENCAPSULATED, PASSTHROUGH, DUPLICATE_DECAPSULATED,
/// DUPLICATE_ENCAPSULATED`). v1.1.1's `FORWARD_AS_IS` and `DUPLICATE_AS_IS` are not in it, and
/// nothing in v2.1.1 keeps their meaning: "as is" leaves a packet as it arrived, whereas
/// `*_ENCAPSULATED` has the platform wrap it into the tunnel of `dstInterface.tunnelInfo`, and
/// `*_DECAPSULATED` strips the tunnel; mapping either would change what the rule does to the
/// traffic. So such a rule is refused (422, naming it) rather than sent with a name a v2.1.1
/// platform rejects or a meaning the caller did not ask for.
fn v2_action(at: &str, action: Action) -> Result<&'static str, Refusal> {
    match action {
        Action::ForwardAsIs | Action::DuplicateAsIs => Err(refuse(
            format!("{at} action"),
            format!(
                "'{}' is a MEC 011 v1.1.1 action that v2.1.1 (the version this driver speaks) does not have, and none of its actions keeps packets as they are (FORWARD_ENCAPSULATED/DUPLICATE_ENCAPSULATED add a tunnel, *_DECAPSULATED remove it); choose one of those",
                action_name(action)
            ),
        )),
        other => Ok(action_name(other)),
    }
}

fn filter<'a>(at: &str, f: &'a TrafficFilter) -> Result<Filter<'a>, Refusal> {
    let number = |n: &Option<Number>, key: &str, max: u64| match n {
        None => Ok(None),
        Some(v) => uint(v, max).map(Some).ok_or_else(|| {
            refuse(
                format!("{at}.{key}"),
                format!("{v} is not an integer in 0..={max}"),
            )
        }),
    };
    let qos = [
        number(&f.qci, "qci", 255)?,
        number(&f.dscp, "dscp", 63)?,
        number(&f.tc, "tc", 255)?,
    ];
    Ok(Filter::new(f, TokenKey::Token, qos))
}

fn destination<'a>(at: &str, i: &'a InterfaceDescriptor) -> Result<MecInterface<'a>, Refusal> {
    let tunnel_info = match &i.tunnel_info {
        None => None,
        Some(t) => {
            if t.tunnel_specific_data.is_some() {
                return Err(refuse(
                    format!("{at}.tunnelInfo.tunnelSpecificData"),
                    "MEC 011 has no field for tunnel-specific data; remove it",
                ));
            }
            Some(Tunnel::new(t))
        }
    };
    Ok(MecInterface {
        interface_type: i.interface_type,
        tunnel_info,
        src_mac_address: i.src_mac_address.as_deref().map(colon_mac),
        dst_mac_address: i.dst_mac_address.as_deref().map(colon_mac),
        dst_ip_address: i.dst_ip_address.as_deref(),
    })
}

/// A MAC address written with `:` (the contract also accepts `-`).
fn colon_mac(mac: &str) -> String {
    mac.replace('-', ":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_creation;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    const DNS_ACTIVE: &str = r#"{"dnsRuleId":"111","domainName":"pfrag.gr","ipAddressType":"IP_V4","ipAddress":"172.24.248.5","ttl":0,"state":"ACTIVE"}"#;
    const TRAFFIC_ACTIVE: &str = r#"{"trafficRuleId":"tr1","filterType":"FLOW","priority":0,"trafficFilter":[{"srcAddress":["208930100001114"],"dstAddress":["195.251.255.142"],"dstPort":["80"],"protocol":["tcp"]}],"action":"FORWARD_DECAPSULATED","dstInterface":{"interfaceType":"IP","dstMacAddress":"00:11:22:33:44:55","dstIpAddress":"172.16.0.111"},"state":"ACTIVE"}"#;

    fn seed() -> serde_json::Value {
        serde_json::from_str(crate::mep::fixtures::SEED).unwrap()
    }

    fn plan_of(v: &serde_json::Value) -> Result<Vec<Step>, Refusal> {
        let request = parse_creation(v.to_string().as_bytes()).unwrap();
        plan("req-1", &request)
    }

    fn refusal(v: &serde_json::Value) -> Refusal {
        plan_of(v).unwrap_err()
    }

    #[test]
    fn seed_example_gives_exact_bodies_dns_first() {
        let steps = plan_of(&seed()).unwrap();
        assert_eq!(
            steps,
            vec![
                Step::new(
                    "DNS rule '111' (pfrag.gr)",
                    "/mec_app_support/v1/applications/req-1/dns_rules/111",
                    DNS_ACTIVE
                ),
                Step::new(
                    "traffic rule 'tr1'",
                    "/mec_app_support/v1/applications/req-1/traffic_rules/tr1",
                    TRAFFIC_ACTIVE
                ),
            ]
        );
        assert_eq!(
            inactive(DNS_ACTIVE),
            DNS_ACTIVE.replace(r#""state":"ACTIVE""#, r#""state":"INACTIVE""#)
        );
        assert_eq!(
            inactive(TRAFFIC_ACTIVE),
            TRAFFIC_ACTIVE.replace(r#""state":"ACTIVE""#, r#""state":"INACTIVE""#)
        );
    }

    #[test]
    fn the_app_instance_id_extension_names_the_application() {
        let mut v = seed();
        v["appInstanceId"] = "5abe4782-2c70-4e47-9a4e-0ee3a1a0fd1f".into();
        let steps = plan_of(&v).unwrap();
        assert_eq!(
            steps[0].target(),
            "/mec_app_support/v1/applications/5abe4782-2c70-4e47-9a4e-0ee3a1a0fd1f/dns_rules/111"
        );
        assert_eq!(
            steps[1].target(),
            "/mec_app_support/v1/applications/5abe4782-2c70-4e47-9a4e-0ee3a1a0fd1f/traffic_rules/tr1"
        );
    }

    #[test]
    fn every_field_is_mapped() {
        let mut v = seed();
        v["appDNSRule"][0]["ipAddressType"] = "IP_V6".into();
        v["appDNSRule"][0]["ipAddress"] = "2001:db8::5".into();
        v["appDNSRule"][0].as_object_mut().unwrap().remove("ttl");
        v["appTrafficRule"][0] = serde_json::json!({
            "trafficRuleId": "tr2", "filterType": "PACKET", "priority": 2.0,
            "trafficFilter": [{
                "srcAddress": ["10.0.0.0/8"], "dstAddress": ["192.168.1.1"], "srcPort": ["1000-2000"],
                "dstPort": ["8080"], "protocol": ["udp"], "token": ["t1"],
                "srcTunnelAddress": ["10.1.1.1"], "dstTunnelAddress": ["10.2.2.2"],
                "srcTunnelPort": ["2152"], "dstTunnelPort": ["2153"], "qci": 9, "dscp": 46, "tc": 1
            }, {"dstAddress": ["192.168.1.2"]}],
            "action": "DUPLICATED_DECAPSULATED",
            "dstInterface": [{"interfaceType": "TUNNEL",
                "tunnelInfo": {"tunnelType": "GTP-U", "tunnelDstAddress": "10.3.3.3", "tunnelSrcAddress": "10.4.4.4"},
                "srcMACAddress": "aa-bb-cc-dd-ee-ff", "dstMACAddress": "00:11:22:33:44:55", "dstIPAddress": "10.5.5.5"}]
        });
        let steps = plan_of(&v).unwrap();
        assert_eq!(
            steps[0].body(),
            r#"{"dnsRuleId":"111","domainName":"pfrag.gr","ipAddressType":"IP_V6","ipAddress":"2001:db8::5","state":"ACTIVE"}"#
        );
        assert_eq!(
            steps[1].body(),
            concat!(
                r#"{"trafficRuleId":"tr2","filterType":"PACKET","priority":2,"trafficFilter":["#,
                r#"{"srcAddress":["10.0.0.0/8"],"dstAddress":["192.168.1.1"],"srcPort":["1000-2000"],"dstPort":["8080"],"#,
                r#""protocol":["udp"],"token":["t1"],"srcTunnelAddress":["10.1.1.1"],"tgtTunnelAddress":["10.2.2.2"],"#,
                r#""srcTunnelPort":["2152"],"dstTunnelPort":["2153"],"qCI":9,"dSCP":46,"tC":1},"#,
                r#"{"dstAddress":["192.168.1.2"]}],"action":"DUPLICATE_DECAPSULATED","#,
                r#""dstInterface":{"interfaceType":"TUNNEL","tunnelInfo":{"tunnelType":"GTP_U","tunnelDstAddress":"10.3.3.3","tunnelSrcAddress":"10.4.4.4"},"#,
                r#""srcMacAddress":"aa:bb:cc:dd:ee:ff","dstMacAddress":"00:11:22:33:44:55","dstIpAddress":"10.5.5.5"},"state":"ACTIVE"}"#
            )
        );
        assert!(inactive(steps[1].body()).ends_with(r#","state":"INACTIVE"}"#));
    }

    #[test]
    fn actions_map_to_mec011_spellings() {
        for (northbound, mec011) in [
            ("DROP", "DROP"),
            ("FORWARD", "FORWARD_DECAPSULATED"),
            ("DECAPSULATED", "FORWARD_DECAPSULATED"),
            ("PASSTHROUGH", "PASSTHROUGH"),
            ("DUPLICATED_DECAPSULATED", "DUPLICATE_DECAPSULATED"),
        ] {
            let mut v = seed();
            v["appTrafficRule"][0]["action"] = northbound.into();
            let body = plan_of(&v).unwrap()[1].body().to_string();
            assert!(
                body.contains(&format!(r#""action":"{mec011}","#)),
                "{northbound}: {body}"
            );
        }
    }

    #[test]
    fn v1_actions_missing_from_v2_1_1_are_refused_naming_the_rule() {
        for northbound in ["FORWARD_AS_IS", "DUPLICATE_AS_IS"] {
            let mut v = seed();
            v["appTrafficRule"][0]["action"] = northbound.into();
            let refusal = plan_of(&v).unwrap_err();
            assert!(refusal.rule.contains("appTrafficRule[0]"), "{refusal}");
            assert!(refusal.rule.ends_with("action"), "{refusal}");
            assert!(refusal.reason.contains(northbound), "{refusal}");
            assert!(refusal.reason.contains("v2.1.1"), "{refusal}");
        }
    }

    #[test]
    fn no_interface_sends_none_and_gre_is_kept() {
        let mut v = seed();
        v["appTrafficRule"][0]
            .as_object_mut()
            .unwrap()
            .remove("dstInterface");
        assert!(!plan_of(&v).unwrap()[1].body().contains("dstInterface"));
        v["appTrafficRule"][0]["dstInterface"] = serde_json::json!([]);
        assert!(!plan_of(&v).unwrap()[1].body().contains("dstInterface"));
        v["appTrafficRule"][0]["dstInterface"] = serde_json::json!([{"interfaceType": "TUNNEL",
            "tunnelInfo": {"tunnelType": "GRE", "tunnelDstAddress": "1.1.1.1", "tunnelSrcAddress": "2.2.2.2"}}]);
        assert!(
            plan_of(&v).unwrap()[1]
                .body()
                .contains(r#""dstInterface":{"interfaceType":"TUNNEL","tunnelInfo":{"tunnelType":"GRE","tunnelDstAddress":"1.1.1.1","tunnelSrcAddress":"2.2.2.2"}}"#)
        );
    }

    #[test]
    fn inexpressible_rules_are_refused_naming_the_field() {
        let mut v = seed();
        let second = v["appTrafficRule"][0]["dstInterface"][0].clone();
        v["appTrafficRule"][0]["dstInterface"]
            .as_array_mut()
            .unwrap()
            .push(second);
        let r = refusal(&v);
        assert_eq!(r.rule, "appTrafficRule[0] 'tr1' dstInterface[1]");
        assert!(r.reason.contains("single destination interface"), "{r}");

        let mut v = seed();
        v["appTrafficRule"][0]["priority"] = 256.into();
        let r = refusal(&v);
        assert_eq!(r.rule, "appTrafficRule[0] 'tr1' priority");
        assert!(r.reason.contains("0..=255"), "{r}");

        let mut v = seed();
        v["appTrafficRule"][0]["dstInterface"][0] = serde_json::json!({"interfaceType": "TUNNEL",
            "tunnelInfo": {"tunnelType": "GTP-U", "tunnelDstAddress": "1.1.1.1", "tunnelSrcAddress": "2.2.2.2",
                           "tunnelSpecificData": {"teid": 1}}});
        assert_eq!(
            refusal(&v).rule,
            "appTrafficRule[0] 'tr1' dstInterface[0].tunnelInfo.tunnelSpecificData"
        );

        for bad in [" lead", "trail ", "caf\u{e9}", "tab\there"] {
            let mut v = seed();
            v["appInstanceId"] = bad.into();
            let Ok(request) = parse_creation(v.to_string().as_bytes()) else {
                continue; // refused earlier by validation (control characters)
            };
            let r = plan("req-1", &request).unwrap_err();
            assert_eq!(r.rule, "appInstanceId", "{bad:?}");
            assert!(r.reason.contains("X-AppinstanceID"), "{r}");
        }
    }

    #[test]
    fn ids_are_percent_encoded_and_never_change_the_path() {
        for (app, rule) in [
            ("../../x", "tr1"),
            ("a b", "../dns_rules/1"),
            ("..", ".."),
            ("x/traffic_rules/y", "%2F"),
            ("app?x=1#f", "r/../../.."),
        ] {
            let target = rule_target(app, RuleKind::Traffic, rule);
            let segments: Vec<&str> = target.split('/').collect();
            assert_eq!(segments.len(), 7, "{target}");
            assert_eq!(
                &segments[..4],
                ["", "mec_app_support", "v1", "applications"]
            );
            assert_eq!(segments[5], "traffic_rules");
            for s in [segments[4], segments[6]] {
                assert!(s != "." && s != "..", "{target}");
                assert!(
                    s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)),
                    "{target}"
                );
            }
            let back = RulePath::parse(&target).unwrap();
            assert_eq!(
                (back.app.as_str(), back.kind, back.rule.as_str()),
                (app, RuleKind::Traffic, rule)
            );
        }

        let mut v = seed();
        v["appInstanceId"] = "../../x".into();
        v["appDNSRule"][0]["dnsRuleId"] = "a b".into();
        let steps = plan_of(&v).unwrap();
        assert_eq!(
            steps[0].target(),
            "/mec_app_support/v1/applications/%2E%2E%2F%2E%2E%2Fx/dns_rules/a%20b"
        );
        assert!(
            steps[0].body().contains(r#""dnsRuleId":"a b""#),
            "the body keeps the id as is"
        );
    }

    // ---- apply/remove against a scripted transport ----

    /// One call the scripted transport received.
    #[derive(Debug, Clone, PartialEq)]
    struct Sent {
        method: String,
        url: String,
        body: Option<String>,
        headers: Vec<(String, String)>,
    }

    /// A scripted answer: the ETag of a 2xx, or an error.
    type Scripted = Result<(Option<String>, String), MepError>;

    /// Answers calls from a script, in order; records them.
    #[derive(Default, Clone)]
    struct Script {
        answers: Arc<Mutex<VecDeque<Scripted>>>,
        sent: Arc<Mutex<Vec<Sent>>>,
    }

    impl Script {
        fn new(answers: Vec<Scripted>) -> Script {
            Script {
                answers: Arc::new(Mutex::new(answers.into())),
                sent: Arc::default(),
            }
        }

        fn sent(&self) -> Vec<Sent> {
            self.sent.lock().unwrap().clone()
        }

        fn driver(&self) -> EtsiMec011 {
            EtsiMec011::with_transport(Box::new(self.clone()))
        }
    }

    impl Transport for Script {
        fn url(&self, target: &str) -> String {
            format!("http://mep{target}")
        }

        fn call(
            &self,
            method: &str,
            url: &str,
            json_body: Option<&str>,
            headers: &[(&str, &str)],
        ) -> Result<(Option<String>, String), MepError> {
            self.sent.lock().unwrap().push(Sent {
                method: method.into(),
                url: url.into(),
                body: json_body.map(str::to_string),
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            });
            self.answers
                .lock()
                .unwrap()
                .pop_front()
                .expect("a call the script did not expect")
        }
    }

    /// A 2xx answer without a body (a GET answered so gives no rule to modify).
    fn ok(etag: Option<&str>) -> Scripted {
        Ok((etag.map(str::to_string), String::new()))
    }

    /// A GET answered with `rule`.
    fn rule(etag: Option<&str>, rule: &str) -> Scripted {
        Ok((etag.map(str::to_string), rule.to_string()))
    }

    fn refused(status: u16, detail: &str) -> Scripted {
        Err(MepError::Refused {
            url: "http://mep/x".into(),
            status,
            detail: detail.into(),
        })
    }

    fn seed_steps_for(app: &str) -> Vec<Step> {
        let mut v = seed();
        v["appInstanceId"] = app.into();
        plan_of(&v).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const TRAFFIC_URL: &str =
        "http://mep/mec_app_support/v1/applications/app%201/traffic_rules/tr1";

    #[test]
    fn apply_reads_then_puts_with_the_etag_and_the_app_header() {
        let steps = seed_steps_for("app 1");
        let script = Script::new(vec![ok(Some("\"v7\"")), ok(Some("\"v8\""))]);
        script.driver().apply(&steps[1]).unwrap();
        assert_eq!(
            script.sent(),
            vec![
                Sent {
                    method: "GET".into(),
                    url: TRAFFIC_URL.into(),
                    body: None,
                    headers: headers(&[("X-AppinstanceID", "app 1")]),
                },
                Sent {
                    method: "PUT".into(),
                    url: TRAFFIC_URL.into(),
                    body: Some(steps[1].body().to_string()),
                    headers: headers(&[("X-AppinstanceID", "app 1"), ("If-Match", "\"v7\"")]),
                },
            ]
        );
    }

    /// The platform's own traffic rule `tr1` (from its descriptor): priority 5, a field the
    /// plugin does not know, and `state`.
    fn platform_rule(state: &str) -> String {
        format!(
            r#"{{"trafficRuleId":"tr1","filterType":"FLOW","priority":5,"trafficFilter":[{{"dstAddress":["10.0.0.1"]}}],"action":"DROP","vendorExtension":{{"k":[1,2]}},"state":"{state}"}}"#
        )
    }

    /// `rule` with its `state` replaced, as a JSON value.
    fn with_state(rule: &str, state: &str) -> serde_json::Value {
        let mut v: serde_json::Value = serde_json::from_str(rule).unwrap();
        v["state"] = state.into();
        v
    }

    #[test]
    fn activation_puts_back_the_platform_s_rule_with_only_its_state_changed() {
        let steps = seed_steps_for("app 1");
        let inactive_rule = platform_rule("INACTIVE");
        let script = Script::new(vec![rule(Some("\"v7\""), &inactive_rule), ok(None)]);
        assert_eq!(
            script.driver().apply_with_prior(&steps[1]),
            Ok(Applied::Changed)
        );
        let sent = script.sent();
        assert_eq!(sent.len(), 2);
        let body: serde_json::Value =
            serde_json::from_str(sent[1].body.as_deref().unwrap()).unwrap();
        assert_eq!(
            body,
            with_state(&inactive_rule, "ACTIVE"),
            "priority 5 and extras kept"
        );
        assert_eq!(
            sent[1].headers,
            headers(&[("X-AppinstanceID", "app 1"), ("If-Match", "\"v7\"")])
        );
    }

    #[test]
    fn a_rule_already_active_is_not_put_and_counts_as_in_place() {
        let steps = seed_steps_for("app 1");
        let script = Script::new(vec![rule(None, &platform_rule("ACTIVE"))]);
        assert_eq!(
            script.driver().apply_with_prior(&steps[1]),
            Ok(Applied::AlreadyInPlace)
        );
        assert_eq!(script.sent().len(), 1, "only the GET");
    }

    #[test]
    fn deactivation_puts_back_the_platform_s_rule_with_only_its_state_changed() {
        let steps = seed_steps_for("app 1");
        let active_rule = platform_rule("ACTIVE");
        let script = Script::new(vec![rule(None, &active_rule), ok(None)]);
        script.driver().remove(&steps[1]).unwrap();
        let sent = script.sent();
        let body: serde_json::Value =
            serde_json::from_str(sent[1].body.as_deref().unwrap()).unwrap();
        assert_eq!(body, with_state(&active_rule, "INACTIVE"));
        // Already inactive: nothing to put.
        let script = Script::new(vec![rule(None, &platform_rule("INACTIVE"))]);
        script.driver().remove(&steps[1]).unwrap();
        assert_eq!(script.sent().len(), 1);
    }

    #[test]
    fn a_get_refused_with_403_falls_back_to_the_body_built_from_the_request() {
        let steps = seed_steps_for("app 1");
        let script = Script::new(vec![refused(403, "not allowed now"), ok(None)]);
        assert_eq!(
            script.driver().apply_with_prior(&steps[0]),
            Ok(Applied::Changed)
        );
        let sent = script.sent();
        assert_eq!(sent[1].method, "PUT");
        assert_eq!(sent[1].body.as_deref(), Some(steps[0].body()));
        assert_eq!(sent[1].headers, headers(&[("X-AppinstanceID", "app 1")]));
    }

    #[test]
    fn after_a_412_the_rule_read_again_is_the_one_put_back() {
        let steps = seed_steps_for("app 1");
        let first = platform_rule("INACTIVE");
        let changed = first.replace(r#""priority":5"#, r#""priority":9"#);
        let script = Script::new(vec![
            rule(Some("\"1\""), &first),
            refused(412, ""),
            rule(Some("\"2\""), &changed),
            ok(None),
        ]);
        script.driver().apply(&steps[1]).unwrap();
        let sent = script.sent();
        assert_eq!(sent.len(), 4);
        let body: serde_json::Value =
            serde_json::from_str(sent[3].body.as_deref().unwrap()).unwrap();
        assert_eq!(body, with_state(&changed, "ACTIVE"));
        assert_eq!(
            sent[3].headers[1],
            ("If-Match".to_string(), "\"2\"".to_string())
        );
    }

    #[test]
    fn without_an_etag_the_put_has_no_if_match() {
        let steps = seed_steps_for("app 1");
        let script = Script::new(vec![ok(None), ok(None)]);
        script.driver().remove(&steps[0]).unwrap();
        let sent = script.sent();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[1].method, "PUT");
        assert_eq!(
            sent[1].headers,
            headers(&[("X-AppinstanceID", "app 1")]),
            "no If-Match"
        );
        assert_eq!(sent[1].body.as_deref(), Some(inactive(DNS_ACTIVE).as_str()));
    }

    #[test]
    fn a_weak_etag_is_not_sent_as_if_match() {
        let steps = seed_steps_for("app 1");
        let script = Script::new(vec![ok(Some("W/\"v1\"")), ok(None)]);
        script.driver().apply(&steps[0]).unwrap();
        assert_eq!(
            script.sent()[1].headers,
            headers(&[("X-AppinstanceID", "app 1")])
        );
    }

    #[test]
    fn a_412_is_read_again_and_retried_once_with_the_new_etag() {
        let steps = seed_steps_for("app 1");
        let script = Script::new(vec![
            ok(Some("\"v1\"")),
            refused(412, "stale"),
            ok(Some("\"v2\"")),
            ok(Some("\"v3\"")),
        ]);
        script.driver().apply(&steps[1]).unwrap();
        let sent = script.sent();
        let shape: Vec<(&str, Option<&str>)> = sent
            .iter()
            .map(|s| {
                (
                    s.method.as_str(),
                    s.headers
                        .iter()
                        .find(|(k, _)| k == "If-Match")
                        .map(|(_, v)| v.as_str()),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                ("GET", None),
                ("PUT", Some("\"v1\"")),
                ("GET", None),
                ("PUT", Some("\"v2\""))
            ]
        );
        assert!(sent.iter().all(|s| {
            s.headers
                .contains(&("X-AppinstanceID".into(), "app 1".into()))
        }));
    }

    #[test]
    fn a_second_412_is_a_refusal() {
        let steps = seed_steps_for("app 1");
        let script = Script::new(vec![
            ok(Some("\"v1\"")),
            refused(412, ""),
            ok(Some("\"v2\"")),
            refused(412, "etag mismatch"),
        ]);
        let e = script.driver().apply(&steps[1]).unwrap_err();
        let MepError::Refused { status, detail, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(*status, 412);
        assert!(
            detail.contains(
                "traffic rule 'tr1' of application 'app 1' changed on the platform twice"
            ) && detail.contains("(platform: etag mismatch)"),
            "{detail}"
        );
        assert!(!e.is_ambiguous());
        assert_eq!(script.sent().len(), 4, "no third attempt");
    }

    #[test]
    fn an_unknown_rule_is_a_clear_refusal_on_apply_and_success_on_removal() {
        let steps = seed_steps_for("app 1");
        // Unknown on the GET: nothing is written.
        let script = Script::new(vec![refused(404, "no such rule")]);
        let e = script.driver().apply(&steps[1]).unwrap_err();
        let MepError::Refused { status, detail, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(*status, 404);
        assert_eq!(
            detail,
            "the platform does not know traffic rule 'tr1' of application 'app 1': rules must come from the application's descriptor (platform: no such rule)"
        );
        assert_eq!(script.sent().len(), 1);

        // Gone between the GET and the PUT.
        let script = Script::new(vec![ok(None), refused(404, "")]);
        let e = script.driver().apply(&steps[0]).unwrap_err();
        assert!(
            e.to_string().ends_with(
                "the platform does not know DNS rule '111' of application 'app 1': rules must come from the application's descriptor"
            ),
            "{e}"
        );

        // Removal: 404 on the GET or the PUT is success.
        let script = Script::new(vec![refused(404, "")]);
        script.driver().remove(&steps[1]).unwrap();
        assert_eq!(script.sent().len(), 1, "no PUT for a rule that is gone");
        let script = Script::new(vec![ok(None), refused(404, "")]);
        script.driver().remove(&steps[1]).unwrap();
        let script = Script::new(vec![ok(Some("a")), refused(412, ""), refused(404, "")]);
        script.driver().remove(&steps[1]).unwrap();
    }

    #[test]
    fn other_failures_pass_through_those_of_the_read_as_before_change() {
        let steps = seed_steps_for("app 1");
        let script = Script::new(vec![refused(503, "maintenance")]);
        let Err(MepError::BeforeChange(read)) = script.driver().apply(&steps[0]) else {
            panic!("a failed GET changed nothing")
        };
        assert_eq!(Err(*read), refused(503, "maintenance"));
        let timeout = MepError::Timeout {
            url: TRAFFIC_URL.into(),
        };
        // The read of a removal too; after a PUT's 412 (not applied), the second read too.
        let script = Script::new(vec![Err(timeout.clone())]);
        let before = MepError::BeforeChange(Box::new(timeout.clone()));
        assert_eq!(script.driver().remove(&steps[1]), Err(before.clone()));
        let script = Script::new(vec![ok(None), refused(412, ""), Err(timeout.clone())]);
        assert_eq!(script.driver().apply(&steps[1]), Err(before));
        let script = Script::new(vec![ok(None), Err(timeout.clone())]);
        assert_eq!(script.driver().remove(&steps[1]), Err(timeout.clone()));
        let script = Script::new(vec![ok(None), refused(400, "X-AppinstanceID mismatch")]);
        assert_eq!(
            script.driver().apply(&steps[1]),
            refused(400, "X-AppinstanceID mismatch").map(|_| ())
        );
    }

    #[test]
    fn a_step_of_another_driver_is_not_sent() {
        let script = Script::new(vec![]);
        let step = Step::new("DNS rule '111' (pfrag.gr)", "/api/mp1/traffic/all", "{}");
        let e = script.driver().remove(&step).unwrap_err();
        assert!(e.to_string().contains("planned by another driver"), "{e}");
        assert!(script.sent().is_empty());
    }

    #[test]
    fn inactive_body_of_a_foreign_body_sets_the_state() {
        assert_eq!(
            inactive(r#"{"state":"ACTIVE","dnsRuleId":"1"}"#),
            r#"{"dnsRuleId":"1","state":"INACTIVE"}"#
        );
        assert_eq!(inactive("not json"), "not json");
    }
}
