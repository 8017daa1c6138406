//! The EdgeGallery dialect (`driver = "edgegallery"`): the MEP's Mm5 application configuration
//! API, base `{url}/mepcfg/app_lcm/v1`. One configuration (an `AppDConfig`: every traffic and
//! DNS rule of an application instance) per request, applied asynchronously by the MEP.
//!
//! | step | apply | remove |
//! | --- | --- | --- |
//! | one per request (with at least one rule) | `POST /applications/{id}/appd_configuration` with the AppDConfig, then `GET /tasks/{taskId}/appd_configuration` until the task ends | `DELETE` the same path (no body), then the same polling |
//!
//! `{id}`, the application instance, is the request's RequestId (a UUID). Every id placed in a
//! path (instance and task ids) is percent-encoded: everything but `A-Z a-z 0-9 - _ ~` (dots
//! included), so an id such as `../../x` or `a b` is always one path segment and never a dot
//! segment. Every call, a task's polls included, carries `X-AppinstanceID: {id}` (EdgeGallery
//! requires it equal to the path's id). A step's `target` is the encoded configuration path and
//! its `body` the exact AppDConfig sent, so the journal holds it.
//!
//! **Tasks.** Both calls answer a TaskProgress (`configResult` PROCESSING); the driver polls
//! the task every `poll_interval`, at most `poll_attempts` times. `SUCCESS` is success;
//! `FAILURE` is a refusal carrying the task's `Detailed` reason (the MEP reverted what it had
//! applied, so nothing is left); a task still PROCESSING after the last poll is a timeout, which
//! the service treats as "may be applied" and removes. Polls that fail (unreachable, 5xx) are
//! retried within the same budget; if the last one failed, that failure is reported, always
//! as ambiguous (the configuration may be applied).
//!
//! **Outcome not known yet.** EdgeGallery answers `DELETE` with 404 ("app instance not found")
//! while the task that creates the configuration is still running, and commits it later. So a
//! 404 only proves absence once the creation is settled. The driver remembers (in memory) each
//! creation whose outcome it could not see — the `POST` answer was lost, or its task was still
//! PROCESSING — and when removing it: first asks that task once (still PROCESSING: the removal
//! fails now and the reconciler retries later), and takes a 404 as "absent" only after
//! `2 × (timeout + poll_interval × poll_attempts)` since the creation was sent. The memory is
//! rebuilt at start-up from the journal: every step of a request left PENDING or FAILED by the
//! previous run is taken as such a creation sent at the restart (its task is not known), so a
//! restart delays trusting a 404 by one window instead of trusting it at once.
//!
//! **Answers.** Error answers are refusals whose detail is the ProblemDetails `detail` with
//! EdgeGallery's own code (its `status` member) when it differs from the HTTP status; `403`
//! (another operation on this instance is in progress) is a refusal like the others: nothing
//! was applied. A `504 Gateway Timeout` to the `POST` (from a gateway in front of the MEP) is
//! treated like the driver's own timeout: the MEP may have taken the configuration. A 404 to
//! the `DELETE` counts as removed (see above).
//!
//! **Field mapping** (northbound MEC 010-2 → EdgeGallery AppDConfig):
//!
//! | northbound | EdgeGallery |
//! | --- | --- |
//! | (RequestId) | path `{appInstanceId}`, header `X-AppinstanceID` |
//! | (region's `app_name`, else `mecplugin-<RequestId>`) | `appName` |
//! | – | `appSupportMp1: true` |
//! | `appTrafficRule[]` | `appTrafficRule[]` |
//! | `trafficRuleId`, `filterType` (`FLOW`/`PACKET`) | the same |
//! | `priority` | `priority` (integer; `2.0` is written `2`) |
//! | `trafficFilter[].srcAddress`, `dstAddress`, `srcPort`, `dstPort` | the same |
//! | `Protocol` (`protocol`) | `protocol` |
//! | `Token` (`token`) | `tag` |
//! | `srcTunnelAddress` | `srcTunnelAddress` |
//! | `dstTunnelAddress` | `tgtTunnelAddress` |
//! | `srcTunnelPort`, `dstTunnelPort` | the same |
//! | `qci`, `dscp`, `tc` | `qCI`, `dSCP`, `tC` |
//! | `action` `FORWARD`, `DECAPSULATED` | `FORWARD_DECAPSULATED` |
//! | `action` `DUPLICATED_DECAPSULATED` | `DUPLICATE_DECAPSULATED` |
//! | `action` `DROP`, `FORWARD_AS_IS`, `PASSTHROUGH`, `DUPLICATE_AS_IS` | the same |
//! | `dstInterface[]` (at most 2) `interfaceType` (`TUNNEL`/`MAC`/`IP`) | the same |
//! | `tunnelInfo.tunnelType` `GTP-U` / `GRE` | `GTP_U` / `GRE` |
//! | `tunnelInfo.tunnelDstAddress`, `tunnelSrcAddress` | the same |
//! | `srcMACAddress`, `dstMACAddress`, `dstIPAddress` | `srcMacAddress`, `dstMacAddress`, `dstIpAddress` |
//! | `appDNSRule[]` `dnsRuleId`, `domainName`, `ipAddressType`, `ipAddress`, `ttl` | the same (`ttl` as an integer) |
//!
//! Why `FORWARD` becomes `FORWARD_DECAPSULATED`: the contract's action enum is MEC 010-2 v1's,
//! where `FORWARD_DECAPSULATED` was split into `FORWARD` and `DECAPSULATED`; and traffic
//! forwarded to a MEC application is meant for the application itself, which expects plain IP
//! packets, not GTP-U (what LL-MEC's redirection does too). `FORWARD_AS_IS` stays available for
//! an application that wants the tunnel. `DUPLICATED_DECAPSULATED` is MEC 010-2 v1's spelling
//! of `DUPLICATE_DECAPSULATED`. Absent optional fields are not sent; the rule `state` is not
//! sent (EdgeGallery's default is ACTIVE). Fields of the request that are not rules
//! (`appServiceRequired`, `appLatency`, ...) are not part of an AppDConfig and are not sent.
//!
//! **Refused** before anything is sent (each what EdgeGallery would reject or silently change):
//! more than 16 traffic rules or 32 DNS rules; more than 16 filters per rule; more than 64
//! source or destination addresses per filter, or one longer than 64 characters; more than 8
//! protocols or 8 tokens per filter, or one outside 1–8 characters; a port that is not a
//! plain number (EdgeGallery takes no ranges); a tunnel address that is not an IP address;
//! `qci`, `dscp` or `tc` equal to 0 (EdgeGallery reads 0 as "not set", so the filter would
//! match everything); a priority outside 1–255 (the contract allows 0); rule ids over 63
//! characters; domain names over 255; two DNS rules for one domain name; more than 2
//! `dstInterface`; `tunnelSpecificData` (EdgeGallery's tunnel info has no such field and would
//! drop it); an IP address that does not match `ipAddressType`; the `appInstanceId` extension
//! (this driver configures one instance per request, named by its RequestId); an AppDConfig over
//! 32 KiB. A request without any rule plans nothing.
//!
//! **`app_name`.** EdgeGallery refuses a second configuration with an `appName` already in
//! use. With the region's `app_name` set, every request of the region uses that name, so only
//! one request at a time can hold a configuration there; without it each request gets its own
//! (`mecplugin-` and its RequestId, 46 characters).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};

use super::agent::{Answer, MepClient, one_line};
use super::wire::{Filter, TokenKey, Tunnel, action_name, path_segment};
use super::{Driver, MepError, Refusal, Step, planned_elsewhere};
use crate::config::{DriverKind, MepConfig};
use crate::model::integral;
use crate::model::{
    CreationRequest, DnsRule, FilterType, InterfaceDescriptor, InterfaceType, IpAddressType,
    TrafficFilter, TrafficRule,
};
use crate::util::lock;

/// Base path of the Mm5 application configuration API, relative to the MEP URL.
pub const BASE: &str = "/mepcfg/app_lcm/v1";
/// Header EdgeGallery requires equal to the path's application instance id.
pub const APP_INSTANCE_HEADER: &str = "X-AppinstanceID";
/// Prefix of the `appName` derived from a RequestId.
pub const APP_NAME_PREFIX: &str = "mecplugin-";

/// EdgeGallery's limits.
pub const MAX_TRAFFIC_RULES: usize = 16;
pub const MAX_DNS_RULES: usize = 32;
pub const MAX_FILTERS: usize = 16;
pub const MAX_ADDRESSES: usize = 64;
pub const MAX_ADDRESS_CHARS: usize = 64;
pub const MAX_PROTOCOLS: usize = 8;
pub const MAX_TAGS: usize = 8;
/// Longest protocol or tag.
pub const MAX_ITEM_CHARS: usize = 8;
pub const MAX_INTERFACES: usize = 2;
pub const MAX_ID_CHARS: usize = 63;
pub const MAX_DOMAIN_CHARS: usize = 255;
pub const MAX_APP_NAME_CHARS: usize = 63;
pub const MAX_BODY_BYTES: usize = 32 * 1024;

/// The EdgeGallery driver of one region.
#[derive(Debug)]
pub struct EdgeGallery {
    client: MepClient,
    app_name: Option<String>,
    poll_interval: Duration,
    poll_attempts: u32,
    /// Creations whose outcome was not seen, by step target (see the module doc).
    unsettled: Mutex<HashMap<String, Unsettled>>,
}

/// What is known of a creation whose outcome was not seen.
#[derive(Debug, Clone)]
struct Unsettled {
    /// Its task, when the `POST` was answered.
    task: Option<String>,
    /// When the `POST` was sent.
    since: Instant,
}

/// The request body (field order is the wire order).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AppDConfig<'a> {
    app_name: &'a str,
    app_support_mp1: bool,
    app_traffic_rule: Vec<EgTrafficRule<'a>>,
    #[serde(rename = "appDNSRule")]
    app_dns_rule: Vec<EgDnsRule<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EgTrafficRule<'a> {
    traffic_rule_id: &'a str,
    filter_type: &'static str,
    priority: u64,
    traffic_filter: Vec<Filter<'a>>,
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dst_interface: Option<Vec<EgInterface<'a>>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EgInterface<'a> {
    interface_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tunnel_info: Option<Tunnel<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    src_mac_address: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dst_mac_address: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dst_ip_address: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EgDnsRule<'a> {
    dns_rule_id: &'a str,
    domain_name: &'a str,
    ip_address_type: &'static str,
    ip_address: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<u64>,
}

/// EdgeGallery's TaskProgress (only what the driver reads).
#[derive(Debug, Deserialize)]
struct TaskProgress {
    #[serde(rename = "taskId", default)]
    task_id: Option<String>,
    #[serde(rename = "configResult", default)]
    config_result: Option<String>,
    #[serde(rename = "Detailed", alias = "detailed", alias = "details", default)]
    detailed: Option<String>,
}

/// Where a task stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TaskState {
    Processing,
    Success,
    /// With the task's `Detailed` reason.
    Failure(String),
}

impl TaskProgress {
    fn parse(body: &str) -> Option<TaskProgress> {
        serde_json::from_str(body).ok()
    }

    fn state(&self) -> TaskState {
        match self
            .config_result
            .as_deref()
            .map(|r| r.trim().to_ascii_uppercase())
            .as_deref()
        {
            Some("SUCCESS") => TaskState::Success,
            Some("FAILURE") => TaskState::Failure(
                self.detailed
                    .as_deref()
                    .map(|d| one_line(d, 200))
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| "no reason given".into()),
            ),
            _ => TaskState::Processing,
        }
    }
}

fn filter_type_name(filter: FilterType) -> &'static str {
    match filter {
        FilterType::Flow => "FLOW",
        FilterType::Packet => "PACKET",
    }
}

fn interface_type_name(interface: InterfaceType) -> &'static str {
    match interface {
        InterfaceType::Tunnel => "TUNNEL",
        InterfaceType::Mac => "MAC",
        InterfaceType::Ip => "IP",
    }
}

fn ip_type_name(t: IpAddressType) -> &'static str {
    match t {
        IpAddressType::IpV4 => "IP_V4",
        IpAddressType::IpV6 => "IP_V6",
    }
}

/// Path of an application instance's configuration, relative to the MEP URL.
pub fn config_target(app_instance_id: &str) -> String {
    format!(
        "{BASE}/applications/{}/appd_configuration",
        path_segment(app_instance_id)
    )
}

/// Path of a configuration task, relative to the MEP URL.
pub fn task_target(task_id: &str) -> String {
    format!("{BASE}/tasks/{}/appd_configuration", path_segment(task_id))
}

/// The application instance id of a configuration path, decoded.
fn instance_of(target: &str) -> Option<String> {
    let segment = target
        .strip_prefix(BASE)?
        .strip_prefix("/applications/")?
        .strip_suffix("/appd_configuration")?;
    if segment.is_empty() || segment.contains('/') {
        return None;
    }
    Some(percent_decode_str(segment).decode_utf8_lossy().into_owned())
}

/// The `appName` of a request without a configured one: `mecplugin-` and the RequestId, at
/// most 63 characters.
pub fn derived_app_name(request_id: &str) -> String {
    format!("{APP_NAME_PREFIX}{request_id}")
        .chars()
        .take(MAX_APP_NAME_CHARS)
        .collect()
}

impl EdgeGallery {
    pub fn new(mep: &MepConfig) -> EdgeGallery {
        EdgeGallery {
            client: MepClient::new(mep),
            app_name: mep.app_name.clone(),
            poll_interval: mep.poll_interval,
            poll_attempts: mep.poll_attempts.max(1),
            unsettled: Mutex::new(HashMap::new()),
        }
    }

    fn unsettled(&self) -> MutexGuard<'_, HashMap<String, Unsettled>> {
        // Every change is one insert or remove: consistent even after a panic elsewhere.
        lock(&self.unsettled)
    }

    /// How long after a creation was sent a 404 is believed: its longest possible run.
    fn settle_window(&self) -> Duration {
        (self.client.timeout() + self.poll_interval * self.poll_attempts) * 2
    }

    /// One look at a task (of the application instance `instance`: every call carries its
    /// header, task polls too; found by an audit: they went without it).
    fn task_state(&self, task: &str, instance: &str) -> Result<Option<TaskState>, MepError> {
        let url = self.client.url(&task_target(task));
        let headers = [(APP_INSTANCE_HEADER, instance)];
        match self.client.send_with("GET", &url, None, &headers) {
            Ok(answer) => match TaskProgress::parse(&answer.body) {
                Some(progress) => Ok(Some(progress.state())),
                None => Err(MepError::Unreachable {
                    url,
                    reason: "the answer is not a TaskProgress".into(),
                }),
            },
            Err(MepError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Follows the task an accepted call answered with until it ends. On error, also gives
    /// the task id when there is one.
    fn follow(
        &self,
        answer: &Answer,
        url: &str,
        instance: &str,
    ) -> Result<(), (Option<String>, MepError)> {
        let Some(progress) = TaskProgress::parse(&answer.body) else {
            return Err((
                None,
                MepError::Unreachable {
                    url: url.to_string(),
                    reason: format!(
                        "answered HTTP {} with no task to follow (not a TaskProgress); the outcome is unknown",
                        answer.status
                    ),
                },
            ));
        };
        let task = progress.task_id.clone().filter(|t| !t.trim().is_empty());
        match (progress.state(), task) {
            (TaskState::Success, _) => Ok(()),
            (TaskState::Failure(reason), task) => Err((
                task.clone(),
                failed(url, answer.status, task.as_deref(), &reason),
            )),
            (TaskState::Processing, None) => Err((
                None,
                MepError::Unreachable {
                    url: url.to_string(),
                    reason: format!(
                        "answered HTTP {} PROCESSING without a taskId to follow; the outcome is unknown",
                        answer.status
                    ),
                },
            )),
            (TaskState::Processing, Some(task)) => self
                .poll(&task, instance)
                .map_err(|e| (Some(task.clone()), e)),
        }
    }

    /// Polls a task every `poll_interval`, at most `poll_attempts` times.
    fn poll(&self, task: &str, instance: &str) -> Result<(), MepError> {
        let url = self.client.url(&task_target(task));
        let headers = [(APP_INSTANCE_HEADER, instance)];
        let started = Instant::now();
        let mut last_error = None;
        for attempt in 1..=self.poll_attempts {
            std::thread::sleep(self.poll_interval);
            match self.client.send_with("GET", &url, None, &headers) {
                Ok(answer) => match TaskProgress::parse(&answer.body).map(|p| p.state()) {
                    Some(TaskState::Success) => {
                        debug!(
                            "EdgeGallery task {task}: SUCCESS after {attempt} poll(s), {} ms",
                            started.elapsed().as_millis()
                        );
                        return Ok(());
                    }
                    Some(TaskState::Failure(reason)) => {
                        return Err(failed(&url, answer.status, Some(task), &reason));
                    }
                    Some(TaskState::Processing) => last_error = None,
                    None => {
                        last_error = Some(MepError::Unreachable {
                            url: url.clone(),
                            reason: "the answer is not a TaskProgress".into(),
                        })
                    }
                },
                // The POST was sent: a poll that could not be is no proof of anything.
                Err(e) => last_error = Some(e.within_exchange()),
            }
        }
        debug!(
            "EdgeGallery task {task}: not ended after {} poll(s), {} ms",
            self.poll_attempts,
            started.elapsed().as_millis()
        );
        Err(match last_error {
            None => MepError::Timeout { url },
            // The configuration may be applied whatever the poll was answered: ambiguous.
            Some(MepError::Refused {
                url,
                status,
                detail,
            }) => MepError::Unreachable {
                url,
                reason: format!("answered HTTP {status} while the task was followed: {detail}"),
            },
            Some(e) => e,
        })
    }
}

/// The refusal of a task that ended in FAILURE (the MEP reverted its changes).
fn failed(url: &str, status: u16, task: Option<&str>, reason: &str) -> MepError {
    MepError::Refused {
        url: url.to_string(),
        status,
        detail: format!(
            "configuration task {} ended in FAILURE: {reason}",
            task.unwrap_or("(unnamed)")
        ),
    }
}

impl Driver for EdgeGallery {
    fn kind(&self) -> DriverKind {
        DriverKind::Edgegallery
    }

    fn plans(&self, step: &Step) -> bool {
        instance_of(step.target()).is_some()
    }

    fn plan(&self, request_id: &str, request: &CreationRequest) -> Result<Vec<Step>, Refusal> {
        plan(self.app_name.as_deref(), request_id, request)
    }

    fn apply(&self, step: &Step) -> Result<(), MepError> {
        let url = self.client.url(step.target());
        let Some(instance) = instance_of(step.target()) else {
            return Err(planned_elsewhere(DriverKind::Edgegallery, url, step));
        };
        let headers = [(APP_INSTANCE_HEADER, instance.as_str())];
        let since = Instant::now();
        let answer = match self
            .client
            .send_with("POST", &url, Some(step.body()), &headers)
        {
            Ok(answer) => answer,
            // A gateway in front of the MEP gave up waiting for it: like our own timeout.
            Err(MepError::Refused {
                url, status: 504, ..
            }) => {
                self.unsettled()
                    .insert(step.target().to_string(), Unsettled { task: None, since });
                return Err(MepError::Timeout { url });
            }
            Err(e) => {
                if e.is_ambiguous() {
                    self.unsettled()
                        .insert(step.target().to_string(), Unsettled { task: None, since });
                }
                return Err(e);
            }
        };
        match self.follow(&answer, &url, &instance) {
            Ok(()) => {
                self.unsettled().remove(step.target());
                Ok(())
            }
            Err((task, e)) => {
                if e.is_ambiguous() {
                    self.unsettled()
                        .insert(step.target().to_string(), Unsettled { task, since });
                } else {
                    self.unsettled().remove(step.target());
                }
                Err(e)
            }
        }
    }

    fn outcome_unknown_after_restart(&self, step: &Step) {
        // Counted from now: the earlier run may have sent the POST up to its last moment.
        self.unsettled()
            .entry(step.target().to_string())
            .or_insert(Unsettled {
                task: None,
                since: Instant::now(),
            });
    }

    fn remove(&self, step: &Step) -> Result<(), MepError> {
        let url = self.client.url(step.target());
        let Some(instance) = instance_of(step.target()) else {
            return Err(planned_elsewhere(DriverKind::Edgegallery, url, step));
        };
        let headers = [(APP_INSTANCE_HEADER, instance.as_str())];

        // A creation whose task may still be running: a DELETE would be answered 404 now and
        // the configuration committed later.
        let unsettled = self.unsettled().get(step.target()).cloned();
        if let Some(Unsettled {
            task: Some(task),
            since,
        }) = &unsettled
        {
            match self.task_state(task, &instance)? {
                Some(TaskState::Processing) => {
                    return Err(MepError::Refused {
                        url: self.client.url(&task_target(task)),
                        status: 200,
                        detail: format!(
                            "configuration task {task} that creates this configuration is still PROCESSING; the configuration is removed once it ends"
                        ),
                    });
                }
                // Ended: a 404 from now on means absent.
                Some(_) => {
                    self.unsettled().remove(step.target());
                }
                // The MEP no longer knows the task: as if the POST answer had been lost.
                None => {
                    self.unsettled().insert(
                        step.target().to_string(),
                        Unsettled {
                            task: None,
                            since: *since,
                        },
                    );
                }
            }
        }

        match self.client.send_with("DELETE", &url, None, &headers) {
            Err(MepError::Refused { status: 404, .. }) => {
                let pending = self.unsettled().get(step.target()).cloned();
                if let Some(Unsettled { since, .. }) = pending {
                    if since.elapsed() < self.settle_window() {
                        return Err(MepError::Refused {
                            url,
                            status: 404,
                            detail: "the MEP does not have this configuration (yet), but the outcome of its creation is not known: the MEP may still be processing it; checked again later".into(),
                        });
                    }
                }
                self.unsettled().remove(step.target());
                Ok(())
            }
            Err(e) => Err(e),
            Ok(answer) => {
                // The configuration was committed: its creation is settled.
                self.unsettled().remove(step.target());
                self.follow(&answer, &url, &instance).map_err(|(_, e)| e)
            }
        }
    }
}

/// The steps of a request: one AppDConfig, or none without rules.
fn plan(
    app_name: Option<&str>,
    request_id: &str,
    request: &CreationRequest,
) -> Result<Vec<Step>, Refusal> {
    if request.app_instance_id.is_some() {
        return Err(refuse(
            "appInstanceId",
            "the EdgeGallery driver configures one application instance per request, identified by its RequestId; an appInstanceId cannot be given",
        ));
    }
    let traffic = request.traffic_rules();
    let dns = request.dns_rules();
    if traffic.is_empty() && dns.is_empty() {
        return Ok(Vec::new());
    }
    if request_id.is_empty() || request_id.chars().any(|c| c.is_control()) {
        return Err(refuse(
            "RequestId",
            "is empty or holds control characters: it cannot name an EdgeGallery application instance",
        ));
    }
    if traffic.len() > MAX_TRAFFIC_RULES {
        return Err(refuse(
            "appTrafficRule",
            format!(
                "{} traffic rules; EdgeGallery takes at most {MAX_TRAFFIC_RULES} per application",
                traffic.len()
            ),
        ));
    }
    if dns.len() > MAX_DNS_RULES {
        return Err(refuse(
            "appDNSRule",
            format!(
                "{} DNS rules; EdgeGallery takes at most {MAX_DNS_RULES} per application",
                dns.len()
            ),
        ));
    }
    let app_name = app_name.map_or_else(|| derived_app_name(request_id), str::to_string);
    let config = AppDConfig {
        app_name: &app_name,
        app_support_mp1: true,
        app_traffic_rule: traffic
            .iter()
            .enumerate()
            .map(|(i, rule)| traffic_rule(i, rule))
            .collect::<Result<_, _>>()?,
        app_dns_rule: dns_rules(dns)?,
    };
    let body = serde_json::to_string(&config).expect("an AppDConfig serialises");
    if body.len() > MAX_BODY_BYTES {
        return Err(refuse(
            "request",
            format!(
                "its EdgeGallery configuration is {} bytes; EdgeGallery takes at most {MAX_BODY_BYTES}",
                body.len()
            ),
        ));
    }
    Ok(vec![Step::new(
        &format!(
            "EdgeGallery configuration of application instance '{request_id}' ({} traffic rule(s), {} DNS rule(s))",
            traffic.len(),
            dns.len()
        ),
        &config_target(request_id),
        &body,
    )])
}

fn refuse(rule: impl Into<String>, reason: impl Into<String>) -> Refusal {
    Refusal {
        rule: rule.into(),
        reason: reason.into(),
    }
}

fn check_id(at: &str, key: &str, id: &str) -> Result<(), Refusal> {
    let n = id.chars().count();
    if n > MAX_ID_CHARS {
        return Err(refuse(
            format!("{at} {key}"),
            format!("is {n} characters; EdgeGallery takes rule ids of 1-{MAX_ID_CHARS}"),
        ));
    }
    Ok(())
}

fn traffic_rule(i: usize, rule: &TrafficRule) -> Result<EgTrafficRule<'_>, Refusal> {
    let at = format!("appTrafficRule[{i}] '{}'", rule.traffic_rule_id);
    check_id(&at, "trafficRuleId", &rule.traffic_rule_id)?;
    let priority = integral(&rule.priority)
        .filter(|p| (1..=255).contains(p))
        .ok_or_else(|| {
            refuse(
                format!("{at} priority"),
                format!(
                    "{} is outside 1-255, the priorities EdgeGallery takes (0 is not one)",
                    rule.priority
                ),
            )
        })?;
    if rule.traffic_filter.len() > MAX_FILTERS {
        return Err(refuse(
            format!("{at} trafficFilter"),
            format!(
                "{} filters; EdgeGallery takes at most {MAX_FILTERS} per rule",
                rule.traffic_filter.len()
            ),
        ));
    }
    let traffic_filter = rule
        .traffic_filter
        .iter()
        .enumerate()
        .map(|(j, f)| filter(&format!("{at} trafficFilter[{j}]"), f))
        .collect::<Result<_, _>>()?;
    let dst_interface = match &rule.dst_interface {
        None => None,
        Some(interfaces) if interfaces.len() > MAX_INTERFACES => {
            return Err(refuse(
                format!("{at} dstInterface"),
                format!(
                    "{} interfaces; EdgeGallery takes at most {MAX_INTERFACES}",
                    interfaces.len()
                ),
            ));
        }
        Some(interfaces) => Some(
            interfaces
                .iter()
                .enumerate()
                .map(|(k, d)| interface(&format!("{at} dstInterface[{k}]"), d))
                .collect::<Result<_, _>>()?,
        ),
    };
    Ok(EgTrafficRule {
        traffic_rule_id: &rule.traffic_rule_id,
        filter_type: filter_type_name(rule.filter_type),
        priority,
        traffic_filter,
        action: action_name(rule.action),
        dst_interface,
    })
}

/// One traffic filter, checked against EdgeGallery's limits: addresses, ports, protocols and
/// tags, tunnel addresses, then the QoS numbers.
fn filter<'r>(at: &str, f: &'r TrafficFilter) -> Result<Filter<'r>, Refusal> {
    for (key, list) in f.lists_of(&["srcAddress", "dstAddress"]) {
        check_addresses(&format!("{at}.{key}"), list.unwrap_or(&[]))?;
    }
    for (key, list) in f.ports() {
        for (k, port) in list.into_iter().flatten().enumerate() {
            if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err(refuse(
                    format!("{at}.{key}[{k}]"),
                    format!("'{port}' is not a single port number; EdgeGallery takes no ranges"),
                ));
            }
        }
    }
    for ((key, list), max) in f
        .lists_of(&["Protocol", "Token"])
        .zip([MAX_PROTOCOLS, MAX_TAGS])
    {
        check_items(&format!("{at}.{key}"), list.unwrap_or(&[]), max)?;
    }
    for (key, list) in f.lists_of(&["srcTunnelAddress", "dstTunnelAddress"]) {
        for (k, address) in list.into_iter().flatten().enumerate() {
            if address.parse::<IpAddr>().is_err() {
                return Err(refuse(
                    format!("{at}.{key}[{k}]"),
                    format!("'{address}' is not an IP address, as EdgeGallery requires"),
                ));
            }
        }
    }
    Ok(Filter::new(f, TokenKey::Tag, qos(at, f)?))
}

/// An address list at `at`: at most [`MAX_ADDRESSES`], each at most [`MAX_ADDRESS_CHARS`].
fn check_addresses(at: &str, list: &[String]) -> Result<(), Refusal> {
    if list.len() > MAX_ADDRESSES {
        return Err(refuse(
            at,
            format!(
                "{} addresses; EdgeGallery takes at most {MAX_ADDRESSES} per filter",
                list.len()
            ),
        ));
    }
    for (k, address) in list.iter().enumerate() {
        if address.chars().count() > MAX_ADDRESS_CHARS {
            return Err(refuse(
                format!("{at}[{k}]"),
                format!("is longer than the {MAX_ADDRESS_CHARS} characters EdgeGallery takes"),
            ));
        }
    }
    Ok(())
}

/// A list of protocols or tags at `at`: at most `max` entries of 1-[`MAX_ITEM_CHARS`]
/// characters.
fn check_items(at: &str, list: &[String], max: usize) -> Result<(), Refusal> {
    if list.len() > max {
        return Err(refuse(
            at,
            format!(
                "{} entries; EdgeGallery takes at most {max} per filter",
                list.len()
            ),
        ));
    }
    for (k, item) in list.iter().enumerate() {
        if !(1..=MAX_ITEM_CHARS).contains(&item.chars().count()) {
            return Err(refuse(
                format!("{at}[{k}]"),
                format!("'{item}' is not 1-{MAX_ITEM_CHARS} characters, as EdgeGallery requires"),
            ));
        }
    }
    Ok(())
}

/// `qci`, `dscp` and `tc` as integers; 0 is refused (EdgeGallery reads it as "not set").
fn qos(at: &str, f: &TrafficFilter) -> Result<[Option<u64>; 3], Refusal> {
    let mut numbers = [None; 3];
    for (slot, (key, value)) in numbers.iter_mut().zip(f.numbers()) {
        let Some(n) = value else { continue };
        match integral(n) {
            Some(0) => {
                return Err(refuse(
                    format!("{at}.{key}"),
                    "EdgeGallery reads 0 as 'not set', so this filter would match every value; leave it out to match any",
                ));
            }
            Some(v) => *slot = Some(v),
            None => {
                return Err(refuse(
                    format!("{at}.{key}"),
                    format!("{n} is not an integer"),
                ));
            }
        }
    }
    Ok(numbers)
}

fn interface<'r>(at: &str, d: &'r InterfaceDescriptor) -> Result<EgInterface<'r>, Refusal> {
    let tunnel_info = match &d.tunnel_info {
        None => None,
        Some(t) => {
            if t.tunnel_specific_data.is_some() {
                return Err(refuse(
                    format!("{at}.tunnelInfo.tunnelSpecificData"),
                    "EdgeGallery's tunnel information has no tunnelSpecificData: it would be dropped",
                ));
            }
            for (key, address) in [
                ("tunnelDstAddress", &t.tunnel_dst_address),
                ("tunnelSrcAddress", &t.tunnel_src_address),
            ] {
                if !address.is_empty() && address.parse::<IpAddr>().is_err() {
                    return Err(refuse(
                        format!("{at}.tunnelInfo.{key}"),
                        format!("'{address}' is not an IP address, as EdgeGallery requires"),
                    ));
                }
            }
            Some(Tunnel::new(t))
        }
    };
    Ok(EgInterface {
        interface_type: interface_type_name(d.interface_type),
        tunnel_info,
        src_mac_address: d.src_mac_address.as_deref(),
        dst_mac_address: d.dst_mac_address.as_deref(),
        dst_ip_address: d.dst_ip_address.as_deref(),
    })
}

fn dns_rules(rules: &[DnsRule]) -> Result<Vec<EgDnsRule<'_>>, Refusal> {
    let mut domains = HashSet::new();
    let mut out = Vec::with_capacity(rules.len());
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("appDNSRule[{i}] '{}'", rule.dns_rule_id);
        check_id(&at, "dnsRuleId", &rule.dns_rule_id)?;
        let n = rule.domain_name.chars().count();
        if n > MAX_DOMAIN_CHARS {
            return Err(refuse(
                format!("{at} domainName"),
                format!("is {n} characters; EdgeGallery takes at most {MAX_DOMAIN_CHARS}"),
            ));
        }
        // DNS names are compared without case and without the root's dot (found by an
        // audit: `a.b` and `A.B.` were two domains here, and one at the platform).
        let domain = rule.domain_name.trim_end_matches('.').to_ascii_lowercase();
        if !domains.insert(domain) {
            return Err(refuse(
                format!("{at} domainName"),
                format!(
                    "'{}' has another DNS rule in this request; EdgeGallery takes one rule per domain name",
                    rule.domain_name
                ),
            ));
        }
        let matches = match rule.ip_address_type {
            IpAddressType::IpV4 => rule.ip_address.parse::<Ipv4Addr>().is_ok(),
            IpAddressType::IpV6 => rule.ip_address.parse::<Ipv6Addr>().is_ok(),
        };
        if !matches {
            return Err(refuse(
                format!("{at} ipAddress"),
                format!(
                    "'{}' is not an address of type {}",
                    rule.ip_address,
                    ip_type_name(rule.ip_address_type)
                ),
            ));
        }
        let ttl = match &rule.ttl {
            None => None,
            Some(t) => Some(
                integral(t)
                    .filter(|t| *t <= u64::from(u32::MAX))
                    .ok_or_else(|| {
                        refuse(
                            format!("{at} ttl"),
                            format!("{t} is not an integer in 0..=4294967295"),
                        )
                    })?,
            ),
        };
        out.push(EgDnsRule {
            dns_rule_id: &rule.dns_rule_id,
            domain_name: &rule.domain_name,
            ip_address_type: ip_type_name(rule.ip_address_type),
            ip_address: &rule.ip_address,
            ttl,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Action;
    use crate::model::parse_creation;
    use serde_json::{Value, json};

    const ID: &str = "5f0c3f0e-8a53-4a8e-9d1c-3f2b1a0e9c77";

    /// The rules of `seed-examples/trafficrule.json` (its priority 0 aside: see below).
    fn seed() -> Value {
        serde_json::from_str(crate::mep::fixtures::SEED).unwrap()
    }

    fn request(v: &Value) -> CreationRequest {
        parse_creation(v.to_string().as_bytes()).unwrap()
    }

    fn plan_of(v: &Value) -> Result<Vec<Step>, Refusal> {
        plan(None, ID, &request(v))
    }

    fn refusal(v: &Value) -> Refusal {
        plan_of(v).unwrap_err()
    }

    /// The seed with priority 1.
    fn valid() -> Value {
        let mut v = seed();
        v["appTrafficRule"][0]["priority"] = 1.into();
        v
    }

    /// Found by an audit: the names were compared as written.
    #[test]
    fn two_dns_rules_for_one_domain_in_any_case_or_with_the_root_dot_are_refused() {
        for (a, b) in [
            ("pfrag.gr", "pfrag.gr"),
            ("pfrag.gr", "PFRAG.gr"),
            ("pfrag.gr", "pfrag.gr."),
        ] {
            let mut v = valid();
            let mut second = v["appDNSRule"][0].clone();
            second["dnsRuleId"] = "222".into();
            second["domainName"] = b.into();
            v["appDNSRule"][0]["domainName"] = a.into();
            v["appDNSRule"].as_array_mut().unwrap().push(second);
            let r = refusal(&v);
            assert_eq!(r.rule, "appDNSRule[1] '222' domainName", "{a} {b}");
            assert!(r.reason.contains("one rule per domain name"), "{r}");
        }
        let mut v = valid();
        let mut second = v["appDNSRule"][0].clone();
        second["dnsRuleId"] = "222".into();
        second["domainName"] = "other.pfrag.gr".into();
        v["appDNSRule"].as_array_mut().unwrap().push(second);
        assert!(plan_of(&v).is_ok());
    }

    #[test]
    fn the_seed_example_is_refused_for_its_priority_0() {
        let r = refusal(&seed());
        assert_eq!(r.rule, "appTrafficRule[0] 'tr1' priority");
        assert!(r.reason.contains("1-255"), "{r}");
    }

    #[test]
    fn the_seed_example_with_priority_1_gives_the_exact_appd_config() {
        let steps = plan_of(&valid()).unwrap();
        assert_eq!(
            steps,
            vec![Step::new(
                &format!(
                    "EdgeGallery configuration of application instance '{ID}' (1 traffic rule(s), 1 DNS rule(s))"
                ),
                &format!("/mepcfg/app_lcm/v1/applications/{ID}/appd_configuration"),
                &format!(
                    r#"{{"appName":"mecplugin-{ID}","appSupportMp1":true,"appTrafficRule":[{{"trafficRuleId":"tr1","filterType":"FLOW","priority":1,"trafficFilter":[{{"srcAddress":["208930100001114"],"dstAddress":["195.251.255.142"],"dstPort":["80"],"protocol":["tcp"]}}],"action":"FORWARD_DECAPSULATED","dstInterface":[{{"interfaceType":"IP","dstMacAddress":"00:11:22:33:44:55","dstIpAddress":"172.16.0.111"}}]}}],"appDNSRule":[{{"dnsRuleId":"111","domainName":"pfrag.gr","ipAddressType":"IP_V4","ipAddress":"172.24.248.5","ttl":0}}]}}"#
                )
            )]
        );
    }

    #[test]
    fn the_traffic_and_dns_example_gives_the_exact_appd_config() {
        let example = include_str!("../../examples/traffic-and-dns.json");
        let request = parse_creation(example.as_bytes()).unwrap();
        let steps = plan(Some("video-app"), ID, &request).unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!(
            steps[0].body(),
            r#"{"appName":"video-app","appSupportMp1":true,"appTrafficRule":[{"trafficRuleId":"tr-video","filterType":"FLOW","priority":1,"trafficFilter":[{"srcAddress":["208930100001114"],"dstAddress":["195.251.255.142"],"dstPort":["80"],"protocol":["tcp"]}],"action":"FORWARD_DECAPSULATED","dstInterface":[{"interfaceType":"IP","dstMacAddress":"00:11:22:33:44:55","dstIpAddress":"172.16.0.111"}]}],"appDNSRule":[{"dnsRuleId":"dns-video","domainName":"video.example.org","ipAddressType":"IP_V4","ipAddress":"172.16.0.111","ttl":30}]}"#
        );
    }

    #[test]
    fn every_field_is_mapped_to_its_edgegallery_name() {
        let v = json!({
          "RegionId": "2",
          "appTrafficRule": [{
              "trafficRuleId": "all", "filterType": "PACKET", "priority": 2.0,
              "trafficFilter": [{
                  "srcAddress": ["10.0.0.0/24"], "dstAddress": ["192.0.2.1"],
                  "srcPort": ["1234"], "dstPort": ["80", "443"],
                  "protocol": ["tcp", "udp"], "token": ["gold"],
                  "srcTunnelAddress": ["198.51.100.1"], "dstTunnelAddress": ["198.51.100.2"],
                  "srcTunnelPort": ["2152"], "dstTunnelPort": ["2153"],
                  "qci": 9, "dscp": 46, "tc": 2.0
              }],
              "action": "DUPLICATED_DECAPSULATED",
              "dstInterface": [
                  {"interfaceType": "TUNNEL", "tunnelInfo": {"tunnelType": "GTP-U",
                      "tunnelDstAddress": "203.0.113.1", "tunnelSrcAddress": "203.0.113.2"}},
                  {"interfaceType": "MAC", "srcMACAddress": "00-11-22-33-44-66",
                   "dstMACAddress": "00:11:22:33:44:55", "dstIPAddress": "2001:db8::5"}
              ]
          }],
          "appDNSRule": [{"dnsRuleId": "v6", "domainName": "v6.example.org",
                          "ipAddressType": "IP_V6", "ipAddress": "2001:db8::7"}]
        });
        let body: Value = serde_json::from_str(plan_of(&v).unwrap()[0].body()).unwrap();
        assert_eq!(
            body,
            json!({
              "appName": format!("mecplugin-{ID}"),
              "appSupportMp1": true,
              "appTrafficRule": [{
                  "trafficRuleId": "all", "filterType": "PACKET", "priority": 2,
                  "trafficFilter": [{
                      "srcAddress": ["10.0.0.0/24"], "dstAddress": ["192.0.2.1"],
                      "srcPort": ["1234"], "dstPort": ["80", "443"],
                      "protocol": ["tcp", "udp"], "tag": ["gold"],
                      "srcTunnelAddress": ["198.51.100.1"], "tgtTunnelAddress": ["198.51.100.2"],
                      "srcTunnelPort": ["2152"], "dstTunnelPort": ["2153"],
                      "qCI": 9, "dSCP": 46, "tC": 2
                  }],
                  "action": "DUPLICATE_DECAPSULATED",
                  "dstInterface": [
                      {"interfaceType": "TUNNEL", "tunnelInfo": {"tunnelType": "GTP_U",
                          "tunnelDstAddress": "203.0.113.1", "tunnelSrcAddress": "203.0.113.2"}},
                      {"interfaceType": "MAC", "srcMacAddress": "00-11-22-33-44-66",
                       "dstMacAddress": "00:11:22:33:44:55", "dstIpAddress": "2001:db8::5"}
                  ]
              }],
              "appDNSRule": [{"dnsRuleId": "v6", "domainName": "v6.example.org",
                              "ipAddressType": "IP_V6", "ipAddress": "2001:db8::7"}]
            })
        );
    }

    #[test]
    fn every_action_reaches_the_body_by_its_mec011_name() {
        // The names themselves are `wire`'s (tested there).
        for action in [
            Action::Drop,
            Action::Forward,
            Action::Decapsulated,
            Action::ForwardAsIs,
            Action::Passthrough,
            Action::DuplicatedDecapsulated,
            Action::DuplicateAsIs,
        ] {
            let mut v = valid();
            v["appTrafficRule"][0]["action"] = action.name().into();
            let body = plan_of(&v).unwrap()[0].body().to_string();
            let name = action_name(action);
            assert!(body.contains(&format!(r#""action":"{name}""#)), "{body}");
        }
    }

    #[test]
    fn hostile_ids_stay_one_path_segment() {
        for (id, encoded) in [
            ("../../x", "%2E%2E%2F%2E%2E%2Fx"),
            ("a b", "a%20b"),
            ("..", "%2E%2E"),
            ("a/b?c#d%e", "a%2Fb%3Fc%23d%25e"),
            (ID, ID),
        ] {
            let target = config_target(id);
            assert_eq!(
                target,
                format!("/mepcfg/app_lcm/v1/applications/{encoded}/appd_configuration")
            );
            assert_eq!(instance_of(&target).as_deref(), Some(id), "round trip");
            assert_eq!(
                task_target(id),
                format!("/mepcfg/app_lcm/v1/tasks/{encoded}/appd_configuration")
            );
        }
        let steps = plan(None, "../../x", &request(&valid())).unwrap();
        assert_eq!(
            steps[0].target(),
            "/mepcfg/app_lcm/v1/applications/%2E%2E%2F%2E%2E%2Fx/appd_configuration"
        );
        assert_eq!(instance_of("/api/mp1/traffic/all"), None);
        assert_eq!(
            instance_of("/mepcfg/app_lcm/v1/applications/a/b/appd_configuration"),
            None
        );
    }

    #[test]
    fn app_name_is_the_configured_one_or_derived_within_63_characters() {
        let steps = plan(Some("my-app"), ID, &request(&valid())).unwrap();
        assert!(steps[0].body().starts_with(r#"{"appName":"my-app","#));
        assert_eq!(derived_app_name(ID), format!("mecplugin-{ID}"));
        assert_eq!(derived_app_name(&"x".repeat(100)).chars().count(), 63);
    }

    #[test]
    fn a_request_without_rules_plans_nothing() {
        assert_eq!(plan_of(&json!({"RegionId": "2"})).unwrap(), vec![]);
    }

    #[test]
    fn an_app_instance_id_or_an_unusable_request_id_is_refused() {
        let mut v = valid();
        v["appInstanceId"] = "app-1".into();
        assert_eq!(refusal(&v).rule, "appInstanceId");
        assert_eq!(
            plan(None, "a\nb", &request(&valid())).unwrap_err().rule,
            "RequestId"
        );
    }

    /// A change to a request, for tables of cases.
    type Edit = Box<dyn Fn(&mut Value)>;

    /// Applies each edit to the valid request and checks the refusal names `expected`.
    fn assert_refused(cases: Vec<(Edit, String)>) {
        for (edit, expected) in cases {
            let mut v = valid();
            edit(&mut v);
            let r = refusal(&v);
            assert_eq!(r.rule, expected, "{r}");
            assert!(!r.reason.is_empty());
        }
    }

    /// An edit setting `key` of traffic rule 0's filter 0 to `value`.
    fn set_filter(key: &'static str, value: Value) -> Edit {
        Box::new(move |v| v["appTrafficRule"][0]["trafficFilter"][0][key] = value.clone())
    }

    const RULE: &str = "appTrafficRule[0] 'tr1'";

    #[test]
    fn more_than_edgegallery_takes_is_refused_naming_the_list() {
        let copies = |path: fn(&mut Value) -> &mut Value, n: usize| -> Edit {
            Box::new(move |v| {
                let one = path(v)[0].clone();
                *path(v) = vec![one; n].into();
            })
        };
        assert_refused(vec![
            (
                Box::new(|v| {
                    let r = v["appTrafficRule"][0].clone();
                    v["appTrafficRule"] = (0..17)
                        .map(|i| {
                            let mut r = r.clone();
                            r["trafficRuleId"] = format!("t{i}").into();
                            r
                        })
                        .collect();
                }),
                "appTrafficRule".into(),
            ),
            (
                Box::new(|v| {
                    v["appDNSRule"] = (0..33)
                        .map(|i| json!({"dnsRuleId": format!("d{i}"), "domainName": format!("n{i}.example"),
                                        "ipAddressType": "IP_V4", "ipAddress": "10.0.0.1"}))
                        .collect();
                }),
                "appDNSRule".into(),
            ),
            (
                copies(|v| &mut v["appTrafficRule"][0]["trafficFilter"], 17),
                format!("{RULE} trafficFilter"),
            ),
            (
                copies(|v| &mut v["appTrafficRule"][0]["dstInterface"], 3),
                format!("{RULE} dstInterface"),
            ),
            (
                Box::new(|v| {
                    let big: Vec<String> = (0..64)
                        .map(|i| format!("2001:0db8:0000:0000:0000:0000:0000:{i:04x}"))
                        .collect();
                    let mut f = v["appTrafficRule"][0]["trafficFilter"][0].clone();
                    f["dstAddress"] = json!(big);
                    v["appTrafficRule"][0]["trafficFilter"] = vec![f; 16].into();
                }),
                "request".into(),
            ),
        ]);
    }

    #[test]
    fn filter_values_edgegallery_would_reject_are_refused_naming_the_field() {
        let f = format!("{RULE} trafficFilter[0]");
        let strings = |n: usize, s: &str| -> Value { (0..n).map(|i| format!("{s}{i}")).collect() };
        assert_refused(vec![
            (
                set_filter("dstAddress", strings(65, "10.0.0.")),
                format!("{f}.dstAddress"),
            ),
            (
                set_filter("srcAddress", json!(["1".repeat(65)])),
                format!("{f}.srcAddress[0]"),
            ),
            (
                set_filter("Protocol", strings(9, "p")),
                format!("{f}.Protocol"),
            ),
            (
                set_filter("Protocol", json!(["tcp", "ninechars"])),
                format!("{f}.Protocol[1]"),
            ),
            (set_filter("Token", strings(9, "t")), format!("{f}.Token")),
            (set_filter("Token", json!([""])), format!("{f}.Token[0]")),
            (
                set_filter("dstPort", json!(["1000-2000"])),
                format!("{f}.dstPort[0]"),
            ),
            (
                set_filter("dstTunnelAddress", json!(["10.0.0.1", "gw.example"])),
                format!("{f}.dstTunnelAddress[1]"),
            ),
            (set_filter("qci", 0.into()), format!("{f}.qci")),
            (set_filter("dscp", 0.into()), format!("{f}.dscp")),
            (set_filter("tc", 0.into()), format!("{f}.tc")),
        ]);
    }

    #[test]
    fn rule_values_edgegallery_would_reject_are_refused_naming_the_field() {
        assert_refused(vec![
            (
                Box::new(|v| v["appTrafficRule"][0]["priority"] = 256.into()),
                format!("{RULE} priority"),
            ),
            (
                Box::new(|v| v["appTrafficRule"][0]["trafficRuleId"] = "r".repeat(64).into()),
                format!("appTrafficRule[0] '{}' trafficRuleId", "r".repeat(64)),
            ),
            (
                Box::new(|v| v["appDNSRule"][0]["dnsRuleId"] = "d".repeat(64).into()),
                format!("appDNSRule[0] '{}' dnsRuleId", "d".repeat(64)),
            ),
            (
                Box::new(|v| {
                    let mut second = v["appDNSRule"][0].clone();
                    second["dnsRuleId"] = "112".into();
                    v["appDNSRule"].as_array_mut().unwrap().push(second);
                }),
                "appDNSRule[1] '112' domainName".into(),
            ),
            (
                Box::new(|v| {
                    v["appTrafficRule"][0]["dstInterface"][0]["tunnelInfo"] = json!({
                        "tunnelType": "GRE", "tunnelDstAddress": "10.0.0.1",
                        "tunnelSrcAddress": "10.0.0.2", "tunnelSpecificData": {"key": 7}})
                }),
                format!("{RULE} dstInterface[0].tunnelInfo.tunnelSpecificData"),
            ),
            (
                Box::new(|v| {
                    v["appTrafficRule"][0]["dstInterface"][0]["tunnelInfo"] = json!({
                        "tunnelType": "GRE", "tunnelDstAddress": "gre.example",
                        "tunnelSrcAddress": "10.0.0.2"})
                }),
                format!("{RULE} dstInterface[0].tunnelInfo.tunnelDstAddress"),
            ),
        ]);
    }

    #[test]
    fn limits_themselves_are_accepted() {
        let mut v = valid();
        let f = &mut v["appTrafficRule"][0]["trafficFilter"][0];
        f["dstAddress"] = (0..64).map(|i| format!("10.0.0.{i}")).collect();
        f["Protocol"] = (0..8).map(|i| format!("p{i}")).collect();
        f["qci"] = 1.into();
        v["appTrafficRule"][0]["priority"] = 255.into();
        v["appTrafficRule"][0]["trafficRuleId"] = "r".repeat(63).into();
        assert_eq!(plan_of(&v).unwrap().len(), 1);
    }

    /// Checks that the model cannot express, made on a parsed request.
    #[test]
    fn long_domain_names_and_mismatched_addresses_are_refused() {
        let mut r = request(&valid());
        r.app_dns_rule.as_mut().unwrap()[0].domain_name = "a".repeat(256);
        assert_eq!(
            plan(None, ID, &r).unwrap_err().rule,
            "appDNSRule[0] '111' domainName"
        );
        let mut r = request(&valid());
        r.app_dns_rule.as_mut().unwrap()[0].ip_address_type = IpAddressType::IpV6;
        assert_eq!(
            plan(None, ID, &r).unwrap_err().rule,
            "appDNSRule[0] '111' ipAddress"
        );
    }

    #[test]
    fn task_progress_is_read_leniently() {
        let p = TaskProgress::parse(
            r#"{"taskId":"t1","appInstanceId":"a","configResult":"FAILURE","configPhase":"50","Detailed":"no\nroute"}"#,
        )
        .unwrap();
        assert_eq!(p.task_id.as_deref(), Some("t1"));
        assert_eq!(p.state(), TaskState::Failure("no route".into()));
        let p = TaskProgress::parse(r#"{"configResult":"success"}"#).unwrap();
        assert_eq!(p.state(), TaskState::Success);
        let p = TaskProgress::parse(r#"{"taskId":"t","configResult":"PROCESSING"}"#).unwrap();
        assert_eq!(p.state(), TaskState::Processing);
        let p = TaskProgress::parse(r#"{"configResult":"FAILURE"}"#).unwrap();
        assert_eq!(p.state(), TaskState::Failure("no reason given".into()));
        assert!(TaskProgress::parse("not json").is_none());
    }
}
