//! A fake EdgeGallery MEP for integration tests: a real HTTP server on `127.0.0.1` (and, with
//! [`FakeEdgeGallery::start_https`], the same behind HTTPS) implementing the Mm5 application
//! configuration calls of `mep-dialects.md` §2 the way EdgeGallery's MEP does:
//!
//! - `POST /mepcfg/app_lcm/v1/applications/{id}/appd_configuration` (AppDConfig): refused 400
//!   for a bad body or a duplicate instance or appName, 403 while another task of the instance
//!   runs; else it starts a task and answers a TaskProgress `PROCESSING`;
//! - `DELETE` the same path: 404 ("app instance not found") unless a configuration is
//!   *committed* for the instance, which is the case only once its creation's task succeeded;
//!   403 while a task of the instance runs; else a task;
//! - `GET` the same path: the committed AppDConfig, or 404;
//! - `GET /mepcfg/app_lcm/v1/tasks/{taskId}/appd_configuration`: the task's TaskProgress. A
//!   task ends after [`polls_to_finish`](FakeEdgeGallery::polls_to_finish) polls (default 2)
//!   or, if set, [`finish_tasks_after`](FakeEdgeGallery::finish_tasks_after) a time even if
//!   nobody polls (as EdgeGallery's own worker would); ending `SUCCESS` commits the change.
//!
//! Each configuration call must carry `X-AppinstanceID` equal to the path's (decoded) id (a
//! task's poll, its task's instance), and,
//! with [`require_token`](FakeEdgeGallery::require_token), `Authorization: Bearer <token>`;
//! errors are ProblemDetails whose `status` is an EdgeGallery-style code (not the HTTP
//! status). Every call is recorded (method, raw path, headers, body). Injectable faults: the
//! next task ends in FAILURE with a reason, tasks stay PROCESSING until
//! [`unstick`](FakeEdgeGallery::unstick), the next configuration calls answer a given status
//! and ProblemDetails, every call answers a 5xx, and delays (every call, or POSTs only) after
//! which the call is handled as usual even if the client gave up.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mec_plugin::util::lock;
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};
use tiny_http_fork::{Header, Request, Response, Server};

use super::tls::{TestPki, TlsFront};

/// Base path of the Mm5 application configuration API.
pub const BASE: &str = "/mepcfg/app_lcm/v1";

/// EdgeGallery-style error codes the fake puts in ProblemDetails `status`.
pub const CODE_INVALID: i64 = 40001;
pub const CODE_DUPLICATE: i64 = 40002;
pub const CODE_UNAUTHORIZED: i64 = 40101;
pub const CODE_IN_PROGRESS: i64 = 40301;
pub const CODE_NOT_FOUND: i64 = 40401;

const MAX_BODY: u64 = 1024 * 1024;
/// The request headers a [`Call`] records (when present).
pub const RECORDED_HEADERS: [&str; 7] = [
    "authorization",
    "x-appinstanceid",
    "content-type",
    "accept",
    "user-agent",
    "if-match",
    "content-length",
];

pub use super::Call;

/// An answer injected in place of the normal one.
#[derive(Debug, Clone)]
struct Fault {
    status: u16,
    code: i64,
    detail: String,
}

#[derive(Debug, Clone)]
enum Op {
    Create(String),
    Delete,
}

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Success,
    Failure(String),
    Stuck,
}

#[derive(Debug)]
struct Task {
    instance: String,
    op: Op,
    outcome: Outcome,
    polls: u32,
    created: Instant,
    /// `None` while PROCESSING.
    ended: Option<Outcome>,
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    committed: BTreeMap<String, String>,
    tasks: HashMap<String, Task>,
    next_task: u64,
    polls_to_finish: u32,
    finish_after: Option<Duration>,
    stuck: bool,
    next_task_failure: Option<String>,
    next_answers: VecDeque<Fault>,
    fail_all: Option<Fault>,
    delay: Duration,
    post_delay: Duration,
    token: Option<String>,
}

impl State {
    /// Ends the tasks that are due; `polled` counts a poll of that task first.
    fn advance(&mut self, polled: Option<&str>) {
        if let Some(id) = polled {
            if let Some(task) = self.tasks.get_mut(id) {
                task.polls += 1;
            }
        }
        let (k, after) = (self.polls_to_finish, self.finish_after);
        let mut ended = Vec::new();
        for (id, task) in &mut self.tasks {
            if task.ended.is_some() || task.outcome == Outcome::Stuck {
                continue;
            }
            let due = task.polls >= k || after.is_some_and(|a| task.created.elapsed() >= a);
            if due {
                task.ended = Some(task.outcome.clone());
                ended.push(id.clone());
            }
        }
        for id in ended {
            let task = &self.tasks[&id];
            if task.ended == Some(Outcome::Success) {
                let instance = task.instance.clone();
                match &task.op {
                    Op::Create(body) => {
                        let body = body.clone();
                        self.committed.insert(instance, body);
                    }
                    Op::Delete => {
                        self.committed.remove(&instance);
                    }
                }
            }
        }
    }

    fn locked(&self, instance: &str) -> bool {
        self.tasks
            .values()
            .any(|t| t.instance == instance && t.ended.is_none())
    }

    fn new_task(&mut self, instance: &str, op: Op) -> String {
        self.next_task += 1;
        let id = format!("task-{:04}", self.next_task);
        let outcome = if self.stuck {
            Outcome::Stuck
        } else if let Some(reason) = self.next_task_failure.take() {
            Outcome::Failure(reason)
        } else {
            Outcome::Success
        };
        self.tasks.insert(
            id.clone(),
            Task {
                instance: instance.to_string(),
                op,
                outcome,
                polls: 0,
                created: Instant::now(),
                ended: None,
            },
        );
        id
    }

    fn progress(&self, id: &str) -> Value {
        let task = &self.tasks[id];
        let (result, phase, detailed) = match &task.ended {
            None => ("PROCESSING", "0", String::new()),
            Some(Outcome::Success) => ("SUCCESS", "100", String::new()),
            Some(Outcome::Failure(reason)) => ("FAILURE", "100", reason.clone()),
            Some(Outcome::Stuck) => unreachable!("a stuck task never ends"),
        };
        json!({"taskId": id, "appInstanceId": task.instance, "configResult": result,
               "configPhase": phase, "Detailed": detailed})
    }
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

/// A fake EdgeGallery MEP. Shuts down when dropped.
pub struct FakeEdgeGallery {
    shared: Arc<Shared>,
    http: Option<Arc<Server>>,
    http_addr: SocketAddr,
    dispatcher: Option<JoinHandle<()>>,
    tls: Option<TlsFront>,
}

impl FakeEdgeGallery {
    /// Starts the fake over plain HTTP on a free port of 127.0.0.1.
    pub fn start() -> FakeEdgeGallery {
        let (http, http_addr) = super::fake_platform_server("EdgeGallery");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                polls_to_finish: 2,
                ..State::default()
            }),
            closing: AtomicBool::new(false),
        });
        let dispatcher = super::dispatch("eg", &http, &shared, handle);
        FakeEdgeGallery {
            shared,
            http: Some(http),
            http_addr,
            dispatcher: Some(dispatcher),
            tls: None,
        }
    }

    /// Starts the fake behind HTTPS with `pki`'s server certificate.
    pub fn start_https(pki: &TestPki) -> FakeEdgeGallery {
        let mut fake = FakeEdgeGallery::start();
        fake.tls = Some(TlsFront::start(pki, fake.http_addr));
        fake
    }

    /// The MEP URL to configure: `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        match &self.tls {
            Some(front) => format!("https://127.0.0.1:{}", front.port()),
            None => format!("http://{}", self.http_addr),
        }
    }

    /// The path of an instance's configuration, as the driver must call it.
    pub fn config_path(encoded_instance: &str) -> String {
        format!("{BASE}/applications/{encoded_instance}/appd_configuration")
    }

    fn state(&self) -> MutexGuard<'_, State> {
        let mut state = lock(&self.shared.state);
        state.advance(None);
        state
    }

    /// Every call received so far, in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.state().calls.clear();
    }

    /// The committed configurations: instance id → AppDConfig body as received.
    pub fn committed(&self) -> BTreeMap<String, String> {
        self.state().committed.clone()
    }

    /// Tasks not ended yet.
    pub fn running_tasks(&self) -> usize {
        self.state()
            .tasks
            .values()
            .filter(|t| t.ended.is_none())
            .count()
    }

    /// Tasks end after `k` polls (at least 1).
    pub fn polls_to_finish(&self, k: u32) {
        self.state().polls_to_finish = k.max(1);
    }

    /// Tasks also end this long after they started, polled or not.
    pub fn finish_tasks_after(&self, after: Option<Duration>) {
        self.state().finish_after = after;
    }

    /// The next task started ends in FAILURE with this `Detailed` reason, changing nothing.
    pub fn fail_next_task(&self, reason: &str) {
        self.state().next_task_failure = Some(reason.to_string());
    }

    /// Tasks started from now on stay PROCESSING (their instance stays locked).
    pub fn stick(&self) {
        self.state().stuck = true;
    }

    /// Stuck tasks succeed (at once) and new ones run normally again.
    pub fn unstick(&self) {
        let mut state = self.state();
        state.stuck = false;
        for task in state.tasks.values_mut() {
            if task.outcome == Outcome::Stuck {
                task.outcome = Outcome::Success;
                task.polls = u32::MAX / 2;
            }
        }
        state.advance(None);
    }

    /// The next configuration call (POST or DELETE) answers `status` with a ProblemDetails
    /// holding `code` and `detail`, and changes nothing. Several can be queued.
    pub fn answer_next(&self, status: u16, code: i64, detail: &str) {
        self.state().next_answers.push_back(Fault {
            status,
            code,
            detail: detail.to_string(),
        });
    }

    /// Every call (task polls included) answers `status`, until [`heal`](Self::heal).
    pub fn fail_all(&self, status: u16) {
        self.state().fail_all = Some(Fault {
            status,
            code: i64::from(status) * 100,
            detail: format!("injected fault: HTTP {status}"),
        });
    }

    /// Clears `fail_all`, queued answers and delays.
    pub fn heal(&self) {
        let mut state = self.state();
        state.fail_all = None;
        state.next_answers.clear();
        state.delay = Duration::ZERO;
        state.post_delay = Duration::ZERO;
    }

    /// Every call waits `delay` before being handled (then is handled as usual).
    pub fn delay(&self, delay: Duration) {
        self.state().delay = delay;
    }

    /// POSTs wait `delay` before being handled (then are handled as usual).
    pub fn delay_posts(&self, delay: Duration) {
        self.state().post_delay = delay;
    }

    /// Calls without `Authorization: Bearer <token>` are answered 401.
    pub fn require_token(&self, token: &str) {
        self.state().token = Some(token.to_string());
    }
}

impl Drop for FakeEdgeGallery {
    fn drop(&mut self) {
        drop(self.tls.take());
        self.shared.closing.store(true, Ordering::SeqCst);
        if let Some(dispatcher) = self.dispatcher.take() {
            let _ = dispatcher.join();
        }
        // tiny_http's accept thread only notices that its server is gone on its next accept.
        drop(self.http.take());
        let _ = TcpStream::connect_timeout(&self.http_addr, Duration::from_millis(200));
    }
}

fn problem(status: u16, code: i64, detail: &str) -> (u16, Value) {
    (
        status,
        json!({"type": "about:blank", "title": "MEP error", "status": code, "detail": detail}),
    )
}

/// The decoded id of `{BASE}/{collection}/{id}/appd_configuration`.
fn id_in(path: &str, collection: &str) -> Option<String> {
    let segment = path
        .strip_prefix(BASE)?
        .strip_prefix('/')?
        .strip_prefix(collection)?
        .strip_prefix('/')?
        .strip_suffix("/appd_configuration")?;
    if segment.is_empty() || segment.contains('/') {
        return None;
    }
    Some(percent_decode_str(segment).decode_utf8_lossy().into_owned())
}

fn handle(mut request: Request, shared: &Shared) {
    let method = request.method().as_str().to_ascii_uppercase();
    let path = request.url().to_string();
    // tiny_http_fork only looks headers up by name: these are the ones recorded.
    let headers: Vec<(String, String)> = RECORDED_HEADERS
        .iter()
        .filter_map(|name| {
            request
                .headers()
                .get(name)
                .map(|v| (name.to_string(), v.to_string()))
        })
        .collect();
    let mut body = Vec::new();
    let _ = request.as_reader().take(MAX_BODY).read_to_end(&mut body);
    let call = Call {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let delay = {
        let mut state = lock(&shared.state);
        state.calls.push(call.clone());
        if call.method == "POST" {
            state.delay + state.post_delay
        } else {
            state.delay
        }
    };
    if !super::delay_unless_closing(&shared.closing, delay) {
        return;
    }
    let (status, answer) = answer(&call, &mut lock(&shared.state));
    let response = Response::from_string(answer.to_string())
        .with_status_code(status)
        .with_header(
            Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
                .expect("a valid header"),
        );
    let _ = request.respond(response);
}

fn answer(call: &Call, state: &mut State) -> (u16, Value) {
    state.advance(None);
    if let Some(f) = &state.fail_all {
        return problem(f.status, f.code, &f.detail);
    }
    if let Some(token) = &state.token {
        if call.header("authorization") != Some(&format!("Bearer {token}")) {
            return problem(401, CODE_UNAUTHORIZED, "missing or wrong access token");
        }
    }
    if let Some(task) = id_in(&call.path, "tasks") {
        if call.method != "GET" {
            return problem(405, CODE_INVALID, "method not allowed");
        }
        let Some(instance) = state.tasks.get(&task).map(|t| t.instance.clone()) else {
            return problem(404, CODE_NOT_FOUND, "task not found");
        };
        // A task's instance header too (found by an audit: the driver's polls lacked it).
        if call.header("x-appinstanceid") != Some(instance.as_str()) {
            return problem(
                401,
                CODE_UNAUTHORIZED,
                "UnAuthorization to access the resource",
            );
        }
        state.advance(Some(&task));
        return (200, state.progress(&task));
    }
    let Some(instance) = id_in(&call.path, "applications") else {
        return problem(404, CODE_NOT_FOUND, "no such resource");
    };
    if call.method == "GET" {
        return match state.committed.get(&instance) {
            Some(body) => (200, serde_json::from_str(body).unwrap_or(Value::Null)),
            None => problem(404, CODE_NOT_FOUND, "app instance not found"),
        };
    }
    if call.header("x-appinstanceid") != Some(instance.as_str()) {
        return problem(
            401,
            CODE_UNAUTHORIZED,
            "UnAuthorization to access the resource",
        );
    }
    if matches!(call.method.as_str(), "POST" | "DELETE") {
        if let Some(f) = state.next_answers.pop_front() {
            return problem(f.status, f.code, &f.detail);
        }
    }
    match call.method.as_str() {
        "POST" => {
            let config: Value = match serde_json::from_str(&call.body) {
                Ok(v) => v,
                Err(_) => return problem(400, CODE_INVALID, "unmarshal request body error"),
            };
            let app_name = config["appName"].as_str().unwrap_or("");
            if app_name.is_empty() || app_name.chars().count() > 63 {
                return problem(400, CODE_INVALID, "Invalid value for input on:  AppName");
            }
            if state.committed.contains_key(&instance) {
                return problem(400, CODE_DUPLICATE, "duplicate app instance");
            }
            let name_taken = state
                .committed
                .values()
                .any(|b| serde_json::from_str::<Value>(b).is_ok_and(|v| v["appName"] == app_name));
            if name_taken {
                return problem(400, CODE_DUPLICATE, "duplicate app name");
            }
            if state.locked(&instance) {
                return problem(
                    403,
                    CODE_IN_PROGRESS,
                    "app instance has other operation in progress",
                );
            }
            let task = state.new_task(&instance, Op::Create(call.body.clone()));
            (200, state.progress(&task))
        }
        "DELETE" => {
            if !state.committed.contains_key(&instance) {
                return problem(404, CODE_NOT_FOUND, "app instance not found");
            }
            if state.locked(&instance) {
                return problem(
                    403,
                    CODE_IN_PROGRESS,
                    "app instance has other operation in progress",
                );
            }
            let task = state.new_task(&instance, Op::Delete);
            (200, state.progress(&task))
        }
        _ => problem(405, CODE_INVALID, "method not allowed"),
    }
}
