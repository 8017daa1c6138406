//! The northbound request model (ETSI MEC 010-2 fields of the API contract) and its two JSON
//! spellings. Bodies in either spelling are accepted (the camel keys are serde aliases);
//! responses are written in the spelling of `[server] api_style` by [`ApiStyle`]
//! (`spelling`: the one table of renamed keys). Free-form objects are kept as the JSON the
//! caller sent, compacted (the whitespace between tokens removed, nothing else changed), and
//! numbers exactly as sent. The contract's paths ([`BASE`], [`request_location`]) are here too,
//! below both `api` (which routes them) and `error` (whose answers may name a request).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::Number;
use serde_json::value::RawValue;

mod spelling;

pub use spelling::{ApiStyle, CAMEL};

/// The API's base path (the contract's `basePath`).
pub const BASE: &str = "/MEC/v1";

/// The path of stored request `id` (its `Location`).
pub fn request_location(id: &str) -> String {
    format!("{BASE}/service/requests/{id}")
}

/// A creation request as the caller sent it (`MECTrafficServiceCreationRequest`): the region
/// and the MEC application's requirements. Serialising it writes the application part only;
/// identity and status are added by the stored request's view in the output spelling.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreationRequest {
    /// Required (checked by [`validate`]); a default here lets stored requests, which are
    /// kept without it, be read back.
    #[serde(rename = "RegionId", alias = "regionId", default, skip_serializing)]
    pub region_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_service_required: Option<Vec<ServiceDependency>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_service_optional: Option<Vec<ServiceDependency>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_service_produced: Option<Vec<ServiceDescriptor>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport_dependencies: Option<Vec<TransportDependency>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_traffic_rule: Option<Vec<TrafficRule>>,
    #[serde(rename = "appDNSRule", skip_serializing_if = "Option::is_none")]
    pub app_dns_rule: Option<Vec<DnsRule>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_latency: Option<LatencyDescriptor>,
    /// Extension: the application instance whose rules an `etsi-mec011` platform already
    /// knows; other drivers use the RequestId. Accepted in this spelling only.
    #[serde(rename = "appInstanceId", skip_serializing_if = "Option::is_none")]
    pub app_instance_id: Option<String>,
    /// Fields the plugin assigns; accepted and ignored so that a stored request can be re-sent.
    #[serde(rename = "RequestId", alias = "requestId", default, skip_serializing)]
    pub(crate) _request_id: Option<IgnoredAny>,
    #[serde(rename = "status", default, skip_serializing)]
    pub(crate) _status: Option<IgnoredAny>,
    #[serde(rename = "createdAt", default, skip_serializing)]
    pub(crate) _created_at: Option<IgnoredAny>,
    #[serde(rename = "lastModified", default, skip_serializing)]
    pub(crate) _last_modified: Option<IgnoredAny>,
    #[serde(rename = "statusDetail", default, skip_serializing)]
    pub(crate) _status_detail: Option<IgnoredAny>,
}

impl CreationRequest {
    pub fn dns_rules(&self) -> &[DnsRule] {
        self.app_dns_rule.as_deref().unwrap_or(&[])
    }

    pub fn traffic_rules(&self) -> &[TrafficRule] {
        self.app_traffic_rule.as_deref().unwrap_or(&[])
    }
}

/// A free-form JSON object kept as the text the caller sent, without the whitespace between
/// its tokens: a record's request is one line of the journal, so a pretty-printed object must
/// not bring its newlines along (the start after would read a damaged journal).
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct FreeForm(Box<RawValue>);

impl std::ops::Deref for FreeForm {
    type Target = RawValue;

    fn deref(&self) -> &RawValue {
        &self.0
    }
}

impl<'de> Deserialize<'de> for FreeForm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        if !raw.get().bytes().any(is_json_whitespace) {
            return Ok(FreeForm(raw));
        }
        RawValue::from_string(compact(raw.get()))
            .map(FreeForm)
            .map_err(serde::de::Error::custom)
    }
}

fn is_json_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Valid JSON text without the whitespace between its tokens (strings are left as they are).
fn compact(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c.is_ascii() && is_json_whitespace(c as u8) {
            continue;
        } else if c == '"' {
            in_string = true;
        }
        out.push(c);
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryRef {
    pub href: String,
    pub id: String,
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceDependency {
    pub ser_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ser_category: Option<CategoryRef>,
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ser_transport_dependencies: Option<Vec<TransportDependency>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_permissions: Option<FreeForm>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceDescriptor {
    pub ser_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ser_category: Option<CategoryRef>,
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transports_supported: Option<TransportsSupported>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportsSupported {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport: Option<TransportDescriptor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serializers: Option<Serializers>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportDescriptor {
    #[serde(rename = "type")]
    pub transport_type: TransportType,
    pub protocol: String,
    pub version: String,
    pub security: FreeForm,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportDependency {
    pub transport: TransportDescriptor,
    pub serializers: Serializers,
    pub labels: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TransportType {
    RestHttp,
    MbTopicBased,
    MbRouting,
    MbPubsub,
    Rpc,
    RpcStreaming,
    Websocket,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Serializers {
    #[serde(rename = "JSON")]
    Json,
    #[serde(rename = "XML")]
    Xml,
    #[serde(rename = "PROTOBUF3")]
    Protobuf3,
    /// The misspelling found in some MEC data models and generated clients, kept as sent.
    #[serde(rename = "PROBOBUF3")]
    Probobuf3,
}

/// `TrafficRuleDescriptor`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficRule {
    pub traffic_rule_id: String,
    pub filter_type: FilterType,
    pub priority: Number,
    pub traffic_filter: Vec<TrafficFilter>,
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_interface: Option<Vec<InterfaceDescriptor>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FilterType {
    Flow,
    Packet,
}

/// Traffic rule actions of the contract (MEC 010-2 v1 spellings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    Drop,
    Forward,
    Decapsulated,
    ForwardAsIs,
    Passthrough,
    DuplicatedDecapsulated,
    DuplicateAsIs,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Drop => "DROP",
            Action::Forward => "FORWARD",
            Action::Decapsulated => "DECAPSULATED",
            Action::ForwardAsIs => "FORWARD_AS_IS",
            Action::Passthrough => "PASSTHROUGH",
            Action::DuplicatedDecapsulated => "DUPLICATED_DECAPSULATED",
            Action::DuplicateAsIs => "DUPLICATE_AS_IS",
        }
    }
}

/// `TrafficFilter`. `Protocol` and `Token` are spelled `protocol`/`token` by the MTP client.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficFilter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_address: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_address: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_port: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<Vec<String>>,
    #[serde(
        rename = "Protocol",
        alias = "protocol",
        skip_serializing_if = "Option::is_none"
    )]
    pub protocol: Option<Vec<String>>,
    #[serde(
        rename = "Token",
        alias = "token",
        skip_serializing_if = "Option::is_none"
    )]
    pub token: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_tunnel_address: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_tunnel_address: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_tunnel_port: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_tunnel_port: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qci: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dscp: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tc: Option<Number>,
}

impl TrafficFilter {
    /// The filter's list members with their keys, in the contract's order: the one place
    /// that pairs each key with its field (validation and the drivers' checks go through it).
    pub fn lists(&self) -> [(&'static str, Option<&[String]>); 10] {
        [
            ("srcAddress", self.src_address.as_deref()),
            ("dstAddress", self.dst_address.as_deref()),
            ("srcPort", self.src_port.as_deref()),
            ("dstPort", self.dst_port.as_deref()),
            ("Protocol", self.protocol.as_deref()),
            ("Token", self.token.as_deref()),
            ("srcTunnelAddress", self.src_tunnel_address.as_deref()),
            ("dstTunnelAddress", self.dst_tunnel_address.as_deref()),
            ("srcTunnelPort", self.src_tunnel_port.as_deref()),
            ("dstTunnelPort", self.dst_tunnel_port.as_deref()),
        ]
    }

    /// The list members whose keys are among `keys`, in the contract's order.
    pub fn lists_of<'a>(
        &'a self,
        keys: &'a [&str],
    ) -> impl Iterator<Item = (&'static str, Option<&'a [String]>)> + 'a {
        self.lists()
            .into_iter()
            .filter(|(key, _)| keys.contains(key))
    }

    /// The port lists: `srcPort`, `dstPort`, `srcTunnelPort`, `dstTunnelPort`.
    pub fn ports(&self) -> impl Iterator<Item = (&'static str, Option<&[String]>)> {
        self.lists_of(&["srcPort", "dstPort", "srcTunnelPort", "dstTunnelPort"])
    }

    /// The numeric members with their keys: `qci`, `dscp`, `tc`.
    pub fn numbers(&self) -> [(&'static str, Option<&Number>); 3] {
        [
            ("qci", self.qci.as_ref()),
            ("dscp", self.dscp.as_ref()),
            ("tc", self.tc.as_ref()),
        ]
    }
}

/// `InterfaceDescriptor`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceDescriptor {
    #[serde(rename = "interfaceType")]
    pub interface_type: InterfaceType,
    #[serde(rename = "tunnelInfo", skip_serializing_if = "Option::is_none")]
    pub tunnel_info: Option<TunnelInfo>,
    #[serde(rename = "srcMACAddress", skip_serializing_if = "Option::is_none")]
    pub src_mac_address: Option<String>,
    #[serde(rename = "dstMACAddress", skip_serializing_if = "Option::is_none")]
    pub dst_mac_address: Option<String>,
    #[serde(rename = "dstIPAddress", skip_serializing_if = "Option::is_none")]
    pub dst_ip_address: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum InterfaceType {
    Tunnel,
    Mac,
    Ip,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelInfo {
    pub tunnel_type: TunnelType,
    pub tunnel_dst_address: String,
    pub tunnel_src_address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel_specific_data: Option<FreeForm>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TunnelType {
    #[serde(rename = "GTP-U")]
    GtpU,
    #[serde(rename = "GRE")]
    Gre,
}

/// `DNSRuleDescriptor`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsRule {
    pub dns_rule_id: String,
    pub domain_name: String,
    pub ip_address_type: IpAddressType,
    pub ip_address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Number>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpAddressType {
    #[serde(rename = "IP_V4")]
    IpV4,
    #[serde(rename = "IP_V6")]
    IpV6,
}

/// `LatencyDescriptor`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LatencyDescriptor {
    pub time_unit: String,
    pub latency: Number,
}

/// Lifecycle of a stored request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Its rules are being applied.
    Pending,
    /// All its rules are on the platform.
    Created,
    /// Applying failed; the record says what, if anything, is still on the platform.
    Failed,
    /// Its rules are being removed (an extension of the contract's enum).
    Deleting,
    /// Its rules were removed; only seen in the answer to DELETE.
    Deleted,
}

impl Status {
    /// The name the API shows.
    pub fn name(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Created => "CREATED",
            Status::Failed => "FAILED",
            Status::Deleting => "DELETING",
            Status::Deleted => "DELETED",
        }
    }
}

/// Parses a creation body. The error names the JSON path of the offending field.
pub fn parse_creation(body: &[u8]) -> Result<CreationRequest, String> {
    let request = read(body).map_err(|e| match e {
        Unreadable::At(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." || path.is_empty() {
                format!("invalid body: {inner}")
            } else {
                format!("invalid body at '{path}': {inner}")
            }
        }
        Unreadable::After(e) => format!("invalid body: data after the JSON object: {e}"),
    })?;
    validate(&request)?;
    Ok(request)
}

/// Reads a stored request back from the compact JSON it is kept as. Through the same reader
/// as the bodies ([`parse_creation`]), so that the model's deserializers are compiled once
/// (a plain `serde_json::from_str` was a second copy of them, 60 kB; issue 11 item 8).
pub fn read_stored(json: &str) -> Result<CreationRequest, serde_json::Error> {
    read(json.as_bytes()).map_err(|e| match e {
        Unreadable::At(e) => e.into_inner(),
        Unreadable::After(e) => e,
    })
}

/// Why JSON is not a creation request: the value itself (with its path), or what follows it.
enum Unreadable {
    At(serde_path_to_error::Error<serde_json::Error>),
    After(serde_json::Error),
}

/// One JSON value as a creation request, nothing but whitespace after it.
fn read(json: &[u8]) -> Result<CreationRequest, Unreadable> {
    let de = &mut serde_json::Deserializer::from_slice(json);
    let request = serde_path_to_error::deserialize(&mut *de).map_err(Unreadable::At)?;
    de.end().map_err(Unreadable::After)?;
    Ok(request)
}

/// Checks what serde's shapes cannot: identifiers, addresses, ports, numeric ranges.
pub fn validate(request: &CreationRequest) -> Result<(), String> {
    if request.region_id.trim().is_empty() {
        return Err("'RegionId' is required and must not be empty".into());
    }
    // Rule ids are unique per kind within a request.
    let mut ids = HashSet::new();
    for (i, dns) in request.dns_rules().iter().enumerate() {
        let at = format!("appDNSRule[{i}]");
        check_id(&dns.dns_rule_id, &format!("{at}.dnsRuleId"))?;
        if !ids.insert(("dns", dns.dns_rule_id.as_str())) {
            return Err(format!(
                "{at}.dnsRuleId '{}' is used twice in this request",
                dns.dns_rule_id
            ));
        }
        check_dns_rule(&at, dns)?;
    }
    for (i, rule) in request.traffic_rules().iter().enumerate() {
        let at = format!("appTrafficRule[{i}]");
        check_id(&rule.traffic_rule_id, &format!("{at}.trafficRuleId"))?;
        if !ids.insert(("traffic", rule.traffic_rule_id.as_str())) {
            return Err(format!(
                "{at}.trafficRuleId '{}' is used twice in this request",
                rule.traffic_rule_id
            ));
        }
        check_traffic_rule(&at, rule)?;
    }
    if let Some(app) = &request.app_instance_id {
        check_id(app, "appInstanceId")?;
    }
    for (at, raw) in free_forms(request) {
        check_depth(raw, &at)?;
    }
    if let Some(latency) = &request.app_latency {
        check_latency(&latency.latency)?;
    }
    Ok(())
}

/// `appLatency.latency`: a finite number, not negative. It is kept as written (arbitrary
/// precision), so a number no `f64` holds (`1e999`) parses: it is refused as not finite, not
/// as negative; a negative one is refused as negative whatever its size.
fn check_latency(n: &Number) -> Result<(), String> {
    let negative = || format!("appLatency.latency = {n} must not be negative");
    match n.as_f64() {
        Some(l) if l < 0.0 => Err(negative()),
        Some(_) => Ok(()),
        None if n.to_string().starts_with('-') => Err(negative()),
        None => Err(format!("appLatency.latency = {n} must be a finite number")),
    }
}

/// A DNS rule at `at` (its id is checked by [`validate`]).
fn check_dns_rule(at: &str, dns: &DnsRule) -> Result<(), String> {
    check_domain(&dns.domain_name)
        .map_err(|why| format!("{at}.domainName '{}' {why}", dns.domain_name))?;
    let (ok, kind) = match dns.ip_address_type {
        IpAddressType::IpV4 => (dns.ip_address.parse::<Ipv4Addr>().is_ok(), "IPv4"),
        IpAddressType::IpV6 => (dns.ip_address.parse::<Ipv6Addr>().is_ok(), "IPv6"),
    };
    if !ok {
        return Err(format!(
            "{at}.ipAddress '{}' is not an {kind} address",
            dns.ip_address
        ));
    }
    if let Some(ttl) = &dns.ttl {
        check_uint(ttl, u32::MAX as u64, &format!("{at}.ttl"))?;
    }
    Ok(())
}

/// A traffic rule at `at` (its id is checked by [`validate`]).
fn check_traffic_rule(at: &str, rule: &TrafficRule) -> Result<(), String> {
    check_uint(&rule.priority, u32::MAX as u64, &format!("{at}.priority"))?;
    if rule.traffic_filter.is_empty() {
        return Err(format!("{at}.trafficFilter must have at least one filter"));
    }
    for (j, filter) in rule.traffic_filter.iter().enumerate() {
        let at = format!("{at}.trafficFilter[{j}]");
        for (key, ports) in filter.ports() {
            for (k, port) in ports.into_iter().flatten().enumerate() {
                check_port(port).map_err(|why| format!("{at}.{key}[{k}] '{port}' {why}"))?;
            }
        }
        for ((key, value), max) in filter.numbers().into_iter().zip([255, 63, 255]) {
            if let Some(v) = value {
                check_uint(v, max, &format!("{at}.{key}"))?;
            }
        }
    }
    for (j, interface) in rule.dst_interface.iter().flatten().enumerate() {
        check_interface(&format!("{at}.dstInterface[{j}]"), interface)?;
    }
    Ok(())
}

fn check_interface(at: &str, interface: &InterfaceDescriptor) -> Result<(), String> {
    if let Some(ip) = &interface.dst_ip_address {
        if ip.parse::<IpAddr>().is_err() {
            return Err(format!("{at}.dstIPAddress '{ip}' is not an IP address"));
        }
    }
    for (key, mac) in [
        ("srcMACAddress", &interface.src_mac_address),
        ("dstMACAddress", &interface.dst_mac_address),
    ] {
        if let Some(mac) = mac {
            if !is_mac(mac) {
                return Err(format!(
                    "{at}.{key} '{mac}' is not a MAC address like 00:11:22:33:44:55"
                ));
            }
        }
    }
    Ok(())
}

/// Most characters in an id (rule ids, `appInstanceId`): the OpenAPI document's `maxLength`,
/// which JSON Schema counts in characters.
const MAX_ID_CHARS: usize = 256;

fn check_id(id: &str, at: &str) -> Result<(), String> {
    if id.trim().is_empty() {
        return Err(format!("{at} must not be empty"));
    }
    if id.chars().count() > MAX_ID_CHARS {
        return Err(format!("{at} must be at most {MAX_ID_CHARS} characters"));
    }
    if id.chars().any(char::is_control) {
        return Err(format!("{at} must not contain control characters"));
    }
    Ok(())
}

/// A non-negative integer up to `max`. Integral decimals such as `1.0` count: Java clients
/// may serialise a BigDecimal or float that way.
fn check_uint(n: &Number, max: u64, at: &str) -> Result<(), String> {
    match integral(n) {
        Some(v) if v <= max => Ok(()),
        _ => Err(format!("{at} = {n} must be an integer in 0..={max}")),
    }
}

/// The value of a non-negative integer, integral decimals such as `2.0` or `2.5e1` included
/// (Java clients may write a BigDecimal or a float that way); drivers send it as a plain
/// integer. Read exactly from the number as the caller wrote it: `0.99999999999999999999` is
/// no integer, though it is `1.0` as an `f64` (which an audit found taken as 1).
pub fn integral(n: &Number) -> Option<u64> {
    n.as_u64().or_else(|| exact_integer(&n.to_string()))
}

/// The value of a JSON number's text when it is exactly a non-negative integer up to
/// `u64::MAX` (a zero with a sign too); `None` otherwise, without rounding.
fn exact_integer(text: &str) -> Option<u64> {
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (text, None),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{whole}{fraction}");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let significant = digits.trim_start_matches('0');
    if significant.is_empty() {
        return Some(0);
    }
    if negative {
        return None;
    }
    // Where the decimal point falls, counted from the first significant digit.
    let exponent: i64 = exponent.map_or(Some(0), |e| e.parse().ok())?;
    let leading_zeros = (digits.len() - significant.len()) as i64;
    let point = whole.len() as i64 + exponent - leading_zeros;
    let significant = significant.trim_end_matches('0');
    let zeros = point.checked_sub(significant.len() as i64)?;
    if zeros < 0 || point > 20 {
        return None;
    }
    format!("{significant}{}", "0".repeat(zeros as usize))
        .parse()
        .ok()
}

/// Deepest nesting accepted inside a free-form object.
const MAX_FREE_FORM_DEPTH: usize = 32;

/// Free-form objects are kept verbatim without being parsed into a tree, so serde_json's
/// recursion limit does not apply to them: their nesting is bounded here instead. The
/// contract types them as objects.
fn check_depth(raw: &RawValue, at: &str) -> Result<(), String> {
    if !raw.get().starts_with('{') {
        return Err(format!("{at} must be a JSON object"));
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in raw.get().bytes() {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'[' | b'{') => {
                depth += 1;
                if depth > MAX_FREE_FORM_DEPTH {
                    return Err(format!(
                        "{at} is nested deeper than {MAX_FREE_FORM_DEPTH} levels"
                    ));
                }
            }
            (false, _, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Every free-form object of a request, with its path.
fn free_forms(request: &CreationRequest) -> Vec<(String, &RawValue)> {
    let mut out = Vec::new();
    for (key, list) in [
        ("appServiceRequired", &request.app_service_required),
        ("appServiceOptional", &request.app_service_optional),
    ] {
        for (i, s) in list.iter().flatten().enumerate() {
            if let Some(p) = &s.requested_permissions {
                out.push((format!("{key}[{i}].requestedPermissions"), &**p));
            }
            for (j, d) in s.ser_transport_dependencies.iter().flatten().enumerate() {
                out.push((
                    format!("{key}[{i}].serTransportDependencies[{j}].transport.security"),
                    &*d.transport.security,
                ));
            }
        }
    }
    for (i, s) in request.app_service_produced.iter().flatten().enumerate() {
        if let Some(t) = s
            .transports_supported
            .as_ref()
            .and_then(|t| t.transport.as_ref())
        {
            out.push((
                format!("appServiceProduced[{i}].transportsSupported.transport.security"),
                &*t.security,
            ));
        }
    }
    for (i, d) in request.transport_dependencies.iter().flatten().enumerate() {
        out.push((
            format!("transportDependencies[{i}].transport.security"),
            &*d.transport.security,
        ));
    }
    for (i, rule) in request.traffic_rules().iter().enumerate() {
        for (j, interface) in rule.dst_interface.iter().flatten().enumerate() {
            if let Some(data) = interface
                .tunnel_info
                .as_ref()
                .and_then(|t| t.tunnel_specific_data.as_ref())
            {
                out.push((
                    format!("appTrafficRule[{i}].dstInterface[{j}].tunnelInfo.tunnelSpecificData"),
                    &**data,
                ));
            }
        }
    }
    out
}

fn check_domain(name: &str) -> Result<(), &'static str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return Err("must be 1-253 characters");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '*')
    };
    if name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err("is not a domain name (labels of letters, digits, '-', at most 63 each)")
    }
}

/// A port 0-65535 or a range `a-b` of two (a <= b), in ASCII digits only: the drivers send a
/// port as it was written, so a sign or whitespace that `u16`'s parser (or a trim) would take
/// reaches a platform that may not.
fn check_port(port: &str) -> Result<(), &'static str> {
    let parse = |p: &str| {
        Some(p)
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u16>().ok())
            .ok_or("is not a port 0-65535 or a range a-b (ASCII digits only, no sign or space)")
    };
    match port.split_once('-') {
        Some((a, b)) if parse(a)? <= parse(b)? => Ok(()),
        Some(_) => Err("is a range whose start is after its end"),
        None => parse(port).map(|_| ()),
    }
}

fn is_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split([':', '-']).collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn integers_written_as_decimals_are_read_exactly() {
        let read = |text: &str| super::integral(&serde_json::from_str(text).unwrap());
        for (text, value) in [
            ("7", Some(7)),
            ("2.0", Some(2)),
            ("2.50e1", Some(25)),
            ("1e3", Some(1000)),
            ("1E+3", Some(1000)),
            ("1000e-3", Some(1)),
            ("0.0", Some(0)),
            ("-0.0", Some(0)),
            ("0e99999999999999999999", Some(0)),
            ("18446744073709551615.000", Some(u64::MAX)),
            ("1.8446744073709551615e19", Some(u64::MAX)),
            ("0.99999999999999999999", None),
            ("4294967295.0000001", None),
            ("1e-400", None),
            ("0.05", None),
            ("2.5", None),
            ("-1", None),
            ("-1.0", None),
            ("18446744073709551616.0", None),
            ("1e20", None),
            ("1e99999999999999999999", None),
        ] {
            assert_eq!(read(text), value, "{text}");
        }
    }

    use super::*;

    const DNS_SPEC: &str = r#"{"RegionId":"2","appDNSRule":[{"dnsRuleId":"111","domainName":"pfrag.gr","ipAddressType":"IP_V4","ipAddress":"172.24.248.5","ttl":0}]}"#;

    fn err(body: &str) -> String {
        parse_creation(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn spec_spelling_is_accepted() {
        let r = parse_creation(DNS_SPEC.as_bytes()).unwrap();
        assert_eq!(r.region_id, "2");
        assert_eq!(r.dns_rules()[0].domain_name, "pfrag.gr");
    }

    #[test]
    fn camel_spelling_is_accepted() {
        let body = r#"{"regionId":"2","appTrafficRule":[{"trafficRuleId":"t","filterType":"FLOW","priority":1,
            "trafficFilter":[{"dstAddress":["10.0.0.1"],"protocol":["tcp"],"token":["x"]}],"action":"FORWARD"}]}"#;
        let r = parse_creation(body.as_bytes()).unwrap();
        let f = &r.traffic_rules()[0].traffic_filter[0];
        assert_eq!(f.protocol.as_deref(), Some(&["tcp".to_string()][..]));
        assert_eq!(f.token.as_deref(), Some(&["x".to_string()][..]));
    }

    #[test]
    fn both_spellings_of_one_key_are_refused() {
        let e = err(r#"{"RegionId":"2","regionId":"3"}"#);
        assert!(e.contains("duplicate field"), "{e}");
    }

    #[test]
    fn unknown_fields_are_refused_with_their_path() {
        let e = err(r#"{"RegionId":"2","appDnsRule":[]}"#);
        assert!(e.contains("appDnsRule"), "{e}");
        let e = err(
            r#"{"RegionId":"2","appDNSRule":[{"dnsRuleId":"1","domainName":"a.b","ipAddressType":"IP_V4","ipAddress":"1.2.3.4","tll":3}]}"#,
        );
        assert!(e.contains("appDNSRule[0]") && e.contains("tll"), "{e}");
    }

    #[test]
    fn missing_required_field_names_the_field() {
        let e = err(r#"{"appDNSRule":[]}"#);
        assert!(e.contains("RegionId"), "{e}");
        let e = err(
            r#"{"RegionId":"2","appDNSRule":[{"dnsRuleId":"1","ipAddressType":"IP_V4","ipAddress":"1.2.3.4"}]}"#,
        );
        assert!(
            e.contains("appDNSRule[0]") && e.contains("domainName"),
            "{e}"
        );
    }

    #[test]
    fn wrong_enum_and_type_name_the_path() {
        let e = err(&DNS_SPEC.replace("IP_V4", "IPV4"));
        assert!(e.contains("appDNSRule[0].ipAddressType"), "{e}");
        let e = err(&DNS_SPEC.replace("\"ttl\":0", "\"ttl\":\"zero\""));
        assert!(e.contains("appDNSRule[0].ttl"), "{e}");
    }

    #[test]
    fn semantic_checks_name_the_field() {
        assert!(
            err(&DNS_SPEC.replace("172.24.248.5", "172.24.248"))
                .contains("appDNSRule[0].ipAddress")
        );
        assert!(err(&DNS_SPEC.replace("\"ttl\":0", "\"ttl\":-1")).contains("appDNSRule[0].ttl"));
        assert!(err(&DNS_SPEC.replace("pfrag.gr", "bad name")).contains("domainName"));
        assert!(
            err(&DNS_SPEC.replace("\"RegionId\":\"2\"", "\"RegionId\":\"\"")).contains("RegionId")
        );
        let two = DNS_SPEC.replace("[{", "[{\"dnsRuleId\":\"111\",\"domainName\":\"a.b\",\"ipAddressType\":\"IP_V4\",\"ipAddress\":\"1.1.1.1\"},{");
        assert!(err(&two).contains("used twice"));
    }

    #[test]
    fn free_form_fields_must_be_objects() {
        let body = r#"{"RegionId":"2","transportDependencies":[{"transport":{"type":"RPC","protocol":"p","version":"1","security":5},"serializers":"PROTOBUF3","labels":[]}]}"#;
        assert!(
            err(body).contains("transportDependencies[0].transport.security must be a JSON object")
        );
        let ok =
            parse_creation(body.replace("\"security\":5", "\"security\":{}").as_bytes()).unwrap();
        let out = serde_json::to_string(&ok).unwrap();
        assert!(
            out.contains("\"serializers\":\"PROTOBUF3\""),
            "kept as sent: {out}"
        );
    }

    #[test]
    fn a_stored_request_can_be_sent_again() {
        let body = r#"{"RegionId":"2","RequestId":"x","status":"FAILED","statusDetail":"why","createdAt":"t","lastModified":"t"}"#;
        assert!(parse_creation(body.as_bytes()).is_ok());
    }

    #[test]
    fn ids_are_at_most_256_characters_whatever_their_bytes() {
        let dns = |id: &str| DNS_SPEC.replace("\"111\"", &format!("\"{id}\""));
        for id in ["a".repeat(256), "é".repeat(256), "€".repeat(256)] {
            assert!(
                parse_creation(dns(&id).as_bytes()).is_ok(),
                "{} characters, {} bytes",
                id.chars().count(),
                id.len()
            );
        }
        for id in ["a".repeat(257), "é".repeat(257)] {
            assert_eq!(
                err(&dns(&id)),
                "appDNSRule[0].dnsRuleId must be at most 256 characters"
            );
        }
        // The one check of every id: traffic rules' and appInstanceId too.
        assert!(check_id(&"é".repeat(256), "appInstanceId").is_ok());
        assert_eq!(
            check_id(&"é".repeat(257), "appInstanceId").unwrap_err(),
            "appInstanceId must be at most 256 characters"
        );
    }

    #[test]
    fn a_latency_is_a_finite_number_not_negative() {
        let with = |latency: &str| {
            format!(r#"{{"RegionId":"2","appLatency":{{"timeUnit":"ms","latency":{latency}}}}}"#)
        };
        for ok in ["0", "-0", "20", "0.5", "2.0", "1e300"] {
            assert!(parse_creation(with(ok).as_bytes()).is_ok(), "{ok}");
        }
        // serde_json writes an exponent with its sign: the value, not the bytes, as sent.
        assert_eq!(
            err(&with("1e999")),
            "appLatency.latency = 1e+999 must be a finite number"
        );
        for (negative, shown) in [("-1", "-1"), ("-0.5", "-0.5"), ("-1e999", "-1e+999")] {
            assert_eq!(
                err(&with(negative)),
                format!("appLatency.latency = {shown} must not be negative")
            );
        }
    }

    #[test]
    fn ports_must_be_ports_or_ranges() {
        assert!(check_port("80").is_ok());
        assert!(check_port("1000-2000").is_ok());
        assert!(check_port("2000-1000").is_err());
        assert!(check_port("http").is_err());
        assert!(check_port("70000").is_err());
    }

    #[test]
    fn ports_are_ascii_digits_only_as_they_are_sent_to_platforms() {
        for ok in ["0", "80", "65535", "0-65535", "80-80", "1000-2000"] {
            assert_eq!(check_port(ok), Ok(()), "{ok}");
        }
        for bad in [
            "+80",
            " 81 ",
            "81 ",
            "\t81",
            "81\n",
            "",
            "-",
            "-80",
            "80-",
            "1-+2",
            "+1-2",
            "1 -2",
            "1- 2",
            "1-2-3",
            "65536",
            "99999999999999999999",
            "0x50",
            "80.0",
            "٨٠",
            "８０",
        ] {
            assert!(check_port(bad).is_err(), "{bad:?}");
        }
        let rule = |port: &str| {
            format!(
                r#"{{"RegionId":"2","appTrafficRule":[{{"trafficRuleId":"t","filterType":"FLOW","priority":1,"trafficFilter":[{{"srcPort":["1"],"dstPort":["{port}"]}}],"action":"DROP"}}]}}"#
            )
        };
        assert_eq!(
            err(&rule("+80")),
            "appTrafficRule[0].trafficFilter[0].dstPort[0] '+80' is not a port 0-65535 or a range \
             a-b (ASCII digits only, no sign or space)"
        );
        assert!(err(&rule(" 81 ")).contains("dstPort[0] ' 81 ' is not a port"));
    }

    #[test]
    fn malformed_and_deeply_nested_json_is_an_error_not_a_crash() {
        assert!(err("{").contains("invalid body"));
        assert!(err("[]").contains("invalid body"));
        let deep = format!(
            r#"{{"RegionId":"2","appServiceRequired":[{{"serName":"s","version":"1","requestedPermissions":{{"a":{}1{}}}}}]}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let e = err(&deep);
        assert!(
            e.contains("appServiceRequired[0].requestedPermissions is nested deeper"),
            "{e}"
        );
        let deep_typed = format!(
            r#"{{"RegionId":"2","appDNSRule":{}1{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(err(&deep_typed).contains("invalid body"));
        let braces_in_strings = r#"{"RegionId":"2","transportDependencies":[{"transport":{"type":"RPC","protocol":"p","version":"1","security":{"k":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{"}},"serializers":"JSON","labels":[]}]}"#;
        assert!(
            parse_creation(braces_in_strings.as_bytes()).is_ok(),
            "brackets inside strings do not count"
        );
    }

    #[test]
    fn numbers_and_free_form_objects_are_kept_as_sent() {
        let body = r#"{"RegionId":"2","appLatency":{"timeUnit":"ms","latency":100},"transportDependencies":[{"transport":{"type":"REST_HTTP","protocol":"HTTP","version":"2","security":{"a" : [1, 2.50]}},"serializers":"JSON","labels":["x"]}],
            "appTrafficRule":[{"trafficRuleId":"t","filterType":"FLOW","priority":0,"trafficFilter":[{"qci":1}],"action":"DROP"}]}"#;
        let r = parse_creation(body.as_bytes()).unwrap();
        let out = serde_json::to_string(&r).unwrap();
        assert!(out.contains(r#""latency":100}"#), "{out}");
        assert!(out.contains(r#""security":{"a":[1,2.50]}"#), "{out}");
        assert!(out.contains(r#""priority":0,"#), "{out}");
        assert!(err(&body.replace("\"priority\":0", "\"priority\":0.5")).contains("priority"));
        let integral = body.replace("\"priority\":0", "\"priority\":2.0");
        let kept = serde_json::to_string(&parse_creation(integral.as_bytes()).unwrap()).unwrap();
        assert!(
            kept.contains(r#""priority":2.0,"#),
            "an integral decimal is accepted and kept as sent: {kept}"
        );
    }

    #[test]
    fn pretty_printed_free_form_objects_are_compacted_but_their_strings_kept() {
        let body = "{\"RegionId\":\"2\",\"transportDependencies\":[{\"transport\":{\"type\":\"REST_HTTP\",\"protocol\":\"HTTP\",\"version\":\"2\",\"security\":{\n\t\"a b\" : [ 1,\r\n 2.50 ],\n  \"q\": \"x \\\" \\\\ \\n y\"\n}},\"serializers\":\"JSON\",\"labels\":[]}]}";
        let r = parse_creation(body.as_bytes()).unwrap();
        let out = serde_json::to_string(&r).unwrap();
        assert!(!out.contains('\n'), "one journal line: {out}");
        assert!(
            out.contains(r#""security":{"a b":[1,2.50],"q":"x \" \\ \n y"}"#),
            "{out}"
        );
    }

    #[test]
    fn data_after_the_body_is_refused() {
        for body in [
            r#"{"RegionId":"2"}{"RegionId":"3"}"#,
            r#"{"RegionId":"2"} garbage"#,
        ] {
            assert!(err(body).contains("data after the JSON object"), "{body}");
        }
        assert!(
            parse_creation(b"{\"RegionId\":\"2\"} \r\n").is_ok(),
            "whitespace is fine"
        );
    }

    #[test]
    fn traffic_filter_keys_follow_the_output_style() {
        let f = TrafficFilter {
            protocol: Some(vec!["tcp".into()]),
            token: Some(vec!["t".into()]),
            ..Default::default()
        };
        let spec = ApiStyle::Spec.to_vec(&f).unwrap();
        assert_eq!(spec, br#"{"Protocol":["tcp"],"Token":["t"]}"#);
        let camel = ApiStyle::Camel.to_vec(&f).unwrap();
        assert_eq!(camel, br#"{"protocol":["tcp"],"token":["t"]}"#);
    }
}
