//! A fake ETSI GS MEC 011 platform (rules API, `mep-dialects.md` §3) for integration tests: a
//! real HTTP server on `127.0.0.1:0` that knows the rules of some application instances (as
//! if from their descriptors), answers `GET`/`PUT` of them, optionally with ETags and
//! `If-Match` enforcement, records every call (method, raw path, headers, body) and takes
//! injected faults: failing answers, delays, concurrent changes.
//!
//! What it checks like a real platform would:
//! - `PUT` needs `X-AppinstanceID` equal to the (decoded) application id of the path, a JSON
//!   object whose `trafficRuleId`/`dnsRuleId` is the path's rule id and whose `state` is
//!   `ACTIVE` or `INACTIVE`, and which is the rule as the platform holds it with only `state`
//!   changed (MEC 011: `state` is the attribute a PUT may update); otherwise 400
//!   ProblemDetails. The platform's rules have their own data (priority, fields the plugin
//!   does not know), `INACTIVE` or `ACTIVE` beforehand ([`set_state`](FakeEtsi::set_state));
//! - a rule whose `GET` is forbidden ([`forbid_get`](FakeEtsi::forbid_get)) answers it 403
//!   ProblemDetails, and takes only the `state` of a `PUT` (whose other fields it cannot
//!   expect the client to know);
//! - a rule's next `GET` may answer a gateway's bare 502 or 504
//!   ([`fail_next_get`](FakeEtsi::fail_next_get));
//! - an application or rule it does not know is 404 ProblemDetails;
//! - with [`enable_etags`](FakeEtsi::enable_etags), answers carry `ETag: "<version>"` and a
//!   `PUT` whose `If-Match` differs is 412 (with [`require_if_match`](FakeEtsi::require_if_match)
//!   a `PUT` without it is 428).
//!
//! Path segments are percent-decoded by the fake, so a rule of application `../../x` is only
//! reached through `/applications/..%2F..%2Fx/...`.
//!
//! ```ignore
//! let mep = FakeEtsi::start();
//! mep.preload("app-1", &[traffic_rule_json], &[dns_rule_json]); // stored INACTIVE
//! mep.enable_etags();
//! mep.concurrent_change("app-1", TRAFFIC, "tr1", 1); // the next GET's ETag goes stale
//! assert_eq!(mep.state("app-1", TRAFFIC, "tr1").as_deref(), Some("ACTIVE"));
//! ```

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use mec_plugin::util::lock;
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};
use tiny_http_fork::{Header, Request, Response, Server};

/// Base path of the API.
pub const BASE: &str = "/mec_app_support/v1";
/// Collection of traffic rules.
pub const TRAFFIC: &str = "traffic_rules";
/// Collection of DNS rules.
pub const DNS: &str = "dns_rules";

/// The headers a [`Call`] records (tiny_http cannot list a request's headers).
const RECORDED_HEADERS: [&str; 7] = [
    "x-appinstanceid",
    "if-match",
    "content-type",
    "authorization",
    "accept",
    "host",
    "user-agent",
];

const MAX_BODY: u64 = 1024 * 1024;

pub use super::Call;

/// Key of a rule: application, collection, rule id (all decoded).
type Key = (String, &'static str, String);

struct Rule {
    body: Value,
    version: u64,
}

#[derive(Default)]
struct State {
    rules: BTreeMap<Key, Rule>,
    calls: Vec<Call>,
    etags: bool,
    require_if_match: bool,
    /// Rule → how many of its next GETs are followed by a change on the platform.
    concurrent: HashMap<Key, u32>,
    puts: u64,
    failing_puts: BTreeMap<u64, u16>,
    fail_all: Option<u16>,
    delay: Duration,
    /// How long a PUT that changed a rule waits, once changed, before it is answered.
    slow_changes: Duration,
    /// Extra wait of every PUT before it is handled (see [`FakeEtsi::late_puts`]).
    put_delay: Duration,
    /// Rules every application instance has (see `preload_any`).
    template: Option<(Vec<Value>, Vec<Value>)>,
    /// Rules whose GET answers 403.
    forbidden: std::collections::HashSet<Key>,
    /// Rules whose next GET answers this status with an empty body (a gateway's 502 or 504).
    failing: HashMap<Key, u16>,
}

struct Shared {
    state: Mutex<State>,
    closing: AtomicBool,
}

impl super::FakeState for Shared {
    fn closing(&self) -> &AtomicBool {
        &self.closing
    }
}

/// A fake MEC 011 platform. Shuts down when dropped.
pub struct FakeEtsi {
    shared: Arc<Shared>,
    addr: SocketAddr,
    http: Option<Arc<Server>>,
    dispatcher: Option<JoinHandle<()>>,
}

impl FakeEtsi {
    /// Starts the fake (plain HTTP) on a free port of 127.0.0.1. For HTTPS, put a
    /// `tls::TlsFront` before [`addr`](Self::addr).
    pub fn start() -> FakeEtsi {
        let (http, addr) = super::fake_platform_server("MEC 011");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            closing: AtomicBool::new(false),
        });
        let dispatcher = super::dispatch("etsi", &http, &shared, handle);
        FakeEtsi {
            shared,
            addr,
            http: Some(http),
            dispatcher: Some(dispatcher),
        }
    }

    /// `http://127.0.0.1:PORT`, the MEP URL to configure.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The plain HTTP address (what an HTTPS front relays to).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Makes the rules of application `app` known, as its descriptor would, all INACTIVE
    /// (whatever `state` they carry). Replaces rules with the same ids.
    pub fn preload(&self, app: &str, traffic_rules: &[Value], dns_rules: &[Value]) {
        insert_rules(&mut lock(&self.shared.state), app, traffic_rules, dns_rules);
    }

    /// Makes these rules known for *every* application instance id (each instance gets its
    /// own INACTIVE copy when first called), for requests whose id is only known once sent.
    pub fn preload_any(&self, traffic_rules: &[Value], dns_rules: &[Value]) {
        lock(&self.shared.state).template = Some((traffic_rules.to_vec(), dns_rules.to_vec()));
    }

    /// The rule as the platform has it now.
    pub fn rule(&self, app: &str, collection: &str, id: &str) -> Option<Value> {
        lock(&self.shared.state)
            .rules
            .get(&key(app, collection, id))
            .map(|r| r.body.clone())
    }

    /// The rule's `state` now (`ACTIVE`/`INACTIVE`).
    pub fn state(&self, app: &str, collection: &str, id: &str) -> Option<String> {
        self.rule(app, collection, id)
            .and_then(|r| r["state"].as_str().map(str::to_string))
    }

    /// The rules that are ACTIVE, as (app, collection, id), sorted.
    pub fn active(&self) -> Vec<(String, String, String)> {
        lock(&self.shared.state)
            .rules
            .iter()
            .filter(|(_, r)| r.body["state"] == "ACTIVE")
            .map(|((a, c, i), _)| (a.clone(), c.to_string(), i.clone()))
            .collect()
    }

    /// Answers carry `ETag`, and a `PUT` with a stale `If-Match` is 412.
    pub fn enable_etags(&self) {
        lock(&self.shared.state).etags = true;
    }

    /// With ETags on, a `PUT` without `If-Match` is 428.
    pub fn require_if_match(&self) {
        let mut state = lock(&self.shared.state);
        state.etags = true;
        state.require_if_match = true;
    }

    /// The rule changes on the platform (its ETag moves on) right after each of its next
    /// `times` GETs are answered, so that the ETag the client just read is stale.
    pub fn concurrent_change(&self, app: &str, collection: &str, id: &str, times: u32) {
        lock(&self.shared.state)
            .concurrent
            .insert(key(app, collection, id), times);
    }

    /// Sets the stored `state` of a rule (e.g. ACTIVE beforehand, as its descriptor may say).
    pub fn set_state(&self, app: &str, collection: &str, id: &str, state: &str) {
        let mut s = lock(&self.shared.state);
        let rule = s
            .rules
            .get_mut(&key(app, collection, id))
            .unwrap_or_else(|| panic!("no rule {app}/{collection}/{id} preloaded"));
        rule.body["state"] = state.into();
        rule.version += 1;
    }

    /// The `GET` of this rule answers 403 from now on.
    pub fn forbid_get(&self, app: &str, collection: &str, id: &str) {
        lock(&self.shared.state)
            .forbidden
            .insert(key(app, collection, id));
    }

    /// The next `GET` of this rule answers `status` with an empty body, as a gateway in front
    /// of the platform would; later ones are served again.
    pub fn fail_next_get(&self, app: &str, collection: &str, id: &str, status: u16) {
        lock(&self.shared.state)
            .failing
            .insert(key(app, collection, id), status);
    }

    /// Every call received so far, in arrival order (faults included).
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.shared.state).calls.clone()
    }

    /// The `PUT`s received so far.
    pub fn puts(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == "PUT")
            .collect()
    }

    pub fn clear_calls(&self) {
        lock(&self.shared.state).calls.clear();
    }

    /// The `n`-th PUT from now (1 = the next one) answers `status` and changes nothing.
    pub fn fail_nth_put(&self, n: u64, status: u16) {
        assert!(n >= 1, "fail_nth_put counts from 1 (the next PUT)");
        let mut state = lock(&self.shared.state);
        let at = state.puts + n;
        state.failing_puts.insert(at, status);
    }

    /// Every call answers `status` and changes nothing, until [`heal`](Self::heal).
    pub fn fail_all(&self, status: u16) {
        lock(&self.shared.state).fail_all = Some(status);
    }

    /// Clears `fail_all`, pending `fail_nth_put`s, concurrent changes and the delay.
    pub fn heal(&self) {
        let mut state = lock(&self.shared.state);
        state.fail_all = None;
        state.failing_puts.clear();
        state.concurrent.clear();
        state.delay = Duration::ZERO;
        state.slow_changes = Duration::ZERO;
        state.put_delay = Duration::ZERO;
    }

    /// Every call from now on waits `delay` before being handled (other connections are
    /// served meanwhile). `Duration::ZERO` removes it.
    pub fn delay(&self, delay: Duration) {
        lock(&self.shared.state).delay = delay;
    }

    /// Every PUT from now on waits `delay` before being handled, then changes the rule whether
    /// or not the client is still waiting (a late change). `Duration::ZERO` removes it.
    pub fn late_puts(&self, delay: Duration) {
        lock(&self.shared.state).put_delay = delay;
    }

    /// A PUT that changes a rule from now on makes the change at once, then waits `delay`
    /// before answering (other calls see the change meanwhile). `Duration::ZERO` removes it.
    pub fn slow_changes(&self, delay: Duration) {
        lock(&self.shared.state).slow_changes = delay;
    }
}

impl Drop for FakeEtsi {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        if let Some(dispatcher) = self.dispatcher.take() {
            let _ = dispatcher.join();
        }
        // tiny_http's accept thread notices that its server is gone on its next accept.
        drop(self.http.take());
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Stores rules of `app`, INACTIVE.
fn insert_rules(state: &mut State, app: &str, traffic_rules: &[Value], dns_rules: &[Value]) {
    for (collection, rules, id_key) in [
        (TRAFFIC, traffic_rules, "trafficRuleId"),
        (DNS, dns_rules, "dnsRuleId"),
    ] {
        for rule in rules {
            let mut body = rule.clone();
            let id = body[id_key]
                .as_str()
                .unwrap_or_else(|| panic!("preloaded rule without {id_key}: {rule}"))
                .to_string();
            body["state"] = "INACTIVE".into();
            state
                .rules
                .insert((app.to_string(), collection, id), Rule { body, version: 1 });
        }
    }
}

fn key(app: &str, collection: &str, id: &str) -> Key {
    let collection = match collection {
        TRAFFIC => TRAFFIC,
        DNS => DNS,
        other => panic!("unknown collection '{other}': use TRAFFIC or DNS"),
    };
    (app.to_string(), collection, id.to_string())
}

/// An answer: status, body, content type, ETag.
struct Answer {
    status: u16,
    body: String,
    problem: bool,
    etag: Option<String>,
}

fn problem(status: u16, title: &str, detail: String, instance: &str) -> Answer {
    Answer {
        status,
        body: json!({"type": "about:blank", "title": title, "status": status,
                     "detail": detail, "instance": instance})
        .to_string(),
        problem: true,
        etag: None,
    }
}

fn etag_of(version: u64) -> String {
    format!("\"{version}\"")
}

/// `/mec_app_support/v1/applications/{app}/{collection}[/{id}]`, decoded.
fn route(path: &str) -> Option<(String, &'static str, Option<String>)> {
    let rest = path.strip_prefix(BASE)?.strip_prefix("/applications/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    let decode = |s: &str| {
        percent_decode_str(s)
            .decode_utf8()
            .ok()
            .map(|c| c.into_owned())
    };
    let collection = match parts.get(1).copied() {
        Some(TRAFFIC) => TRAFFIC,
        Some(DNS) => DNS,
        _ => return None,
    };
    match parts[..] {
        [app, _] => Some((decode(app)?, collection, None)),
        [app, _, id] => Some((decode(app)?, collection, Some(decode(id)?))),
        _ => None,
    }
}

fn handle(mut request: Request, shared: &Shared) {
    let method = request.method().as_str().to_ascii_uppercase();
    let path = request.url().to_string();
    let headers: Vec<(String, String)> = RECORDED_HEADERS
        .iter()
        .filter_map(|name| {
            request
                .headers()
                .get(name)
                .map(|v| (name.to_string(), v.as_str().to_string()))
        })
        .collect();
    let mut body = Vec::new();
    let _ = request.as_reader().take(MAX_BODY).read_to_end(&mut body);
    let body = String::from_utf8_lossy(&body).into_owned();
    let call = Call {
        method,
        path,
        headers,
        body,
    };

    let delay = {
        let mut state = lock(&shared.state);
        state.calls.push(call.clone());
        if call.method == "PUT" {
            state.delay + state.put_delay
        } else {
            state.delay
        }
    };
    if !super::delay_unless_closing(&shared.closing, delay) {
        return;
    }

    let (answer, slow) = {
        let mut state = lock(&shared.state);
        (answer(&call, &mut state), state.slow_changes)
    };
    if call.method == "PUT"
        && answer.status < 300
        && !super::delay_unless_closing(&shared.closing, slow)
    {
        return;
    }
    let content_type = if answer.problem {
        "application/problem+json"
    } else {
        "application/json"
    };
    let mut response = Response::from_string(answer.body)
        .with_status_code(answer.status)
        .with_header(
            Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
                .expect("a valid header"),
        );
    if let Some(etag) = answer.etag {
        response = response.with_header(
            Header::from_bytes(&b"ETag"[..], etag.as_bytes()).expect("a valid header"),
        );
    }
    let _ = request.respond(response);
}

/// What the platform answers to `call`, and what it does to the state.
fn answer(call: &Call, state: &mut State) -> Answer {
    let path = call.path.as_str();
    let injected = if call.method == "PUT" {
        state.puts += 1;
        let n = state.puts;
        let nth = state.failing_puts.remove(&n);
        state.fail_all.or(nth)
    } else {
        state.fail_all
    };
    if let Some(status) = injected {
        return problem(
            status,
            "Injected fault",
            format!("injected fault: HTTP {status}"),
            path,
        );
    }
    let Some((app, collection, id)) = route(path) else {
        return problem(404, "Not Found", format!("no resource at {path}"), path);
    };
    let mut app_known = state.rules.keys().any(|(a, _, _)| *a == app);
    if !app_known {
        if let Some((traffic, dns)) = state.template.clone() {
            insert_rules(state, &app, &traffic, &dns);
            app_known = true;
        }
    }
    if !app_known {
        return problem(
            404,
            "Not Found",
            format!("application instance '{app}' is not known"),
            path,
        );
    }
    let Some(id) = id else {
        if call.method != "GET" {
            return problem(
                405,
                "Method Not Allowed",
                format!("{} is not allowed on a rule collection", call.method),
                path,
            );
        }
        let list: Vec<Value> = state
            .rules
            .iter()
            .filter(|((a, c, _), _)| *a == app && *c == collection)
            .map(|(_, r)| r.body.clone())
            .collect();
        return Answer {
            status: 200,
            body: Value::Array(list).to_string(),
            problem: false,
            etag: None,
        };
    };
    let rule_key = (app.clone(), collection, id.clone());
    let etags = state.etags;
    let require_if_match = state.require_if_match;
    if !state.rules.contains_key(&rule_key) {
        return problem(
            404,
            "Not Found",
            format!("application instance '{app}' has no rule '{id}' in {collection}"),
            path,
        );
    }
    let forbidden = state.forbidden.contains(&rule_key);
    if call.method == "GET" {
        if let Some(status) = state.failing.remove(&rule_key) {
            return Answer {
                status,
                body: String::new(),
                problem: false,
                etag: None,
            };
        }
    }
    let Some(rule) = state.rules.get_mut(&rule_key) else {
        unreachable!("looked up above")
    };
    match call.method.as_str() {
        "GET" if forbidden => problem(
            403,
            "Forbidden",
            "the operation is not allowed given the current status of the resource".into(),
            path,
        ),
        "GET" => {
            let answer = Answer {
                status: 200,
                body: rule.body.to_string(),
                problem: false,
                etag: etags.then(|| etag_of(rule.version)),
            };
            if let Some(left) = state.concurrent.get_mut(&rule_key) {
                if *left > 0 {
                    *left -= 1;
                    let rule = state.rules.get_mut(&rule_key).expect("looked up above");
                    rule.version += 1;
                }
            }
            answer
        }
        "PUT" => {
            if call.header("x-appinstanceid") != Some(app.as_str()) {
                return problem(
                    400,
                    "Bad Request",
                    format!(
                        "X-AppinstanceID {:?} does not match the application instance '{app}' of the path",
                        call.header("x-appinstanceid")
                    ),
                    path,
                );
            }
            if etags {
                match call.header("if-match") {
                    Some(tag) if tag != etag_of(rule.version) => {
                        return problem(
                            412,
                            "Precondition Failed",
                            format!("If-Match {tag} does not match the current ETag"),
                            path,
                        );
                    }
                    None if require_if_match => {
                        return problem(
                            428,
                            "Precondition Required",
                            "If-Match is required".into(),
                            path,
                        );
                    }
                    _ => {}
                }
            }
            let id_key = if collection == TRAFFIC {
                "trafficRuleId"
            } else {
                "dnsRuleId"
            };
            let new: Value = match serde_json::from_str(&call.body) {
                Ok(v @ Value::Object(_)) => v,
                _ => {
                    return problem(
                        400,
                        "Bad Request",
                        "the body is not a JSON object".into(),
                        path,
                    );
                }
            };
            if new[id_key] != Value::String(id.clone()) {
                return problem(
                    400,
                    "Bad Request",
                    format!("{id_key} of the body is not the path's '{id}'"),
                    path,
                );
            }
            if !matches!(new["state"].as_str(), Some("ACTIVE" | "INACTIVE")) {
                return problem(
                    400,
                    "Bad Request",
                    "state must be ACTIVE or INACTIVE".into(),
                    path,
                );
            }
            let without_state = |v: &Value| {
                let mut v = v.clone();
                if let Some(object) = v.as_object_mut() {
                    object.remove("state");
                }
                v
            };
            if forbidden {
                // It could not be read: only its state is taken.
                rule.body["state"] = new["state"].clone();
            } else if without_state(&new) != without_state(&rule.body) {
                return problem(
                    400,
                    "Bad Request",
                    format!(
                        "only state may be updated: the body {new} differs from the rule {} in other fields",
                        rule.body
                    ),
                    path,
                );
            } else {
                rule.body = new;
            }
            rule.version += 1;
            Answer {
                status: 200,
                body: rule.body.to_string(),
                problem: false,
                etag: etags.then(|| etag_of(rule.version)),
            }
        }
        other => problem(
            405,
            "Method Not Allowed",
            format!("{other} is not allowed on a rule"),
            path,
        ),
    }
}
