//! Shared integration-test harness: the plugin started in-process on 127.0.0.1:0 from a
//! configuration text, a small HTTP client, and the fake platforms.
#![allow(dead_code)]

pub mod etcd;
pub mod fake_edgegallery;
pub mod fake_etsi;
pub mod fake_llmec;
pub mod raw;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mec_plugin::app::App;
use mec_plugin::config::Config;
use serde_json::Value;

/// A plugin running in this process.
pub struct Plugin {
    pub app: App,
    pub base: String,
    agent: ureq::Agent,
}

/// The tests' HTTP client: every status is an answer (not an error), no proxy, each call
/// bounded by `timeout`.
pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(timeout))
        .build()
        .new_agent()
}

/// Sends `request` through `agent`, with `body` (of `content_type`) or none: the one way the
/// tests' HTTP clients build and send a request.
pub fn send(
    agent: &ureq::Agent,
    request: ureq::http::request::Builder,
    body: Option<&str>,
    content_type: &str,
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    match body {
        Some(b) => agent.run(
            request
                .header("Content-Type", content_type)
                .body(b.as_bytes().to_vec())
                .unwrap(),
        ),
        None => agent.run(request.body(()).unwrap()),
    }
}

/// A header of `response` as text ("" when it is not ASCII), if present.
pub fn header_of<B>(response: &ureq::http::Response<B>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or("").to_string())
}

/// `[server]` section for tests: loopback, port 0, short read timeout.
pub fn server_section(extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nread_timeout_ms = 2000\nretry_initial_ms = 100\nretry_max_ms = 400\n{extra}\n"
    )
}

/// A `[[region]]` driven by LL-MEC at `url`.
pub fn llmec_region(id: &str, url: &str, timeout_ms: u64) -> String {
    format!(
        "[[region]]\nid = \"{id}\"\ndescription = \"test {id}\"\nlatitude = 43.6\nlongitude = 7.06\naltitude = 1.5\nrange_km = 10.0\n[region.mep]\ndriver = \"llmec\"\nurl = \"{url}\"\ntimeout_ms = {timeout_ms}\n"
    )
}

/// A `[[region]]` with the simulated platform.
pub fn simulated_region(id: &str) -> String {
    format!(
        "[[region]]\nid = \"{id}\"\nlatitude = 45.07\nlongitude = 7.68\nrange_km = 15.0\n[region.mep]\ndriver = \"simulated\"\n"
    )
}

/// A fresh, empty directory under the system's temporary directory.
pub fn temp_dir(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("mec-plugin-test-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Plugin {
    /// Starts the plugin with this configuration text and a fresh state directory.
    pub fn start(config_text: &str) -> Plugin {
        Plugin::start_in(config_text, &temp_dir("state"))
    }

    /// Starts the plugin with this configuration text on the state in `state_dir`.
    pub fn start_in(config_text: &str, state_dir: &Path) -> Plugin {
        let mut config = Config::parse(config_text, "test.toml").expect("test config is valid");
        config.server.state_dir = state_dir.to_path_buf();
        let app = App::start(&config).expect("plugin starts");
        let base = format!("http://{}/MEC/v1", app.local_addr());
        let agent = agent(Duration::from_secs(20));
        Plugin { app, base, agent }
    }

    /// Sends a request; returns status, content type and JSON body (Null when empty).
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        self.call_with_type(method, path, body, "application/json")
    }

    pub fn call_with_type(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        content_type: &str,
    ) -> Reply {
        let url = format!("{}{}", self.base, path);
        let request = ureq::http::Request::builder().method(method).uri(&url);
        let result = send(&self.agent, request, body, content_type);
        let mut response = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = response.status().as_u16();
        let header = |n: &str| header_of(&response, n);
        let content_type = header("content-type").unwrap_or_default();
        let allow = header("allow");
        let (link, location) = (header("link"), header("location"));
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Reply {
            status,
            content_type,
            allow,
            link,
            location,
            json,
        }
    }

    /// Stops the plugin (as a shutdown would), releasing its state directory.
    pub fn stop(self) {
        self.app.stop(Duration::from_secs(2));
    }

    pub fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None)
    }

    pub fn post(&self, body: &str) -> Reply {
        self.call("POST", "/service/requests", Some(body))
    }

    pub fn delete(&self, id: &str) -> Reply {
        self.call("DELETE", &format!("/service/requests/{id}"), None)
    }

    /// GET of a path outside `/MEC/v1` (health, metrics): status and body.
    pub fn get_root(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.app.local_addr());
        let mut r = self
            .agent
            .get(&url)
            .call()
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        )
    }
}

/// What the plugin answered.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub allow: Option<String>,
    pub link: Option<String>,
    pub location: Option<String>,
    pub json: Value,
}

impl Reply {
    /// Asserts an RFC 7807 problem with this status and returns its detail.
    pub fn problem(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{:?}", self.json);
        assert_eq!(
            self.content_type, "application/problem+json",
            "{:?}",
            self.json
        );
        for key in ["type", "title", "status", "detail"] {
            assert!(
                self.json.get(key).is_some(),
                "problem without {key}: {:?}",
                self.json
            );
        }
        assert_eq!(self.json["status"], status);
        self.json["detail"].as_str().unwrap().to_string()
    }
}

/// One call the fake received, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub method: String,
    /// Path as requested, still percent-encoded.
    pub path: String,
    /// The recorded headers present, names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Call {
    /// The value of a header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The HTTP server of a fake platform on a free port of 127.0.0.1, and its address.
pub fn fake_platform_server(name: &str) -> (Arc<tiny_http_fork::Server>, SocketAddr) {
    let http = tiny_http_fork::Server::new(
        // tiny_http serves each keep-alive connection on one thread for its whole life and
        // queues new connections when it believes threads are free: with its default of 4
        // threads, the plugin's pooled connections would starve one another.
        tiny_http_fork::ServerConfig::new_http("127.0.0.1:0")
            .expect("loopback address")
            .set_min_threads(64),
    )
    .unwrap_or_else(|e| panic!("fake {name}: listener: {e}"));
    let addr = *http
        .server_addr()
        .to_ip()
        .unwrap_or_else(|| panic!("fake {name}: the listener has no IP address"));
    (Arc::new(http), addr)
}

/// A fake platform's state shared by its dispatcher and request threads.
pub trait FakeState: Send + Sync + 'static {
    /// Set when the fake is stopped: its loops and pending answers end.
    fn closing(&self) -> &AtomicBool;
}

/// Starts the dispatch loop of a fake platform (`name`, for thread names and messages): it
/// hands each request of `http` to a thread of its own running `handle`, until the state is
/// closing. The one loop of the three fakes.
pub fn dispatch<S: FakeState>(
    name: &str,
    http: &Arc<tiny_http_fork::Server>,
    shared: &Arc<S>,
    handle: fn(tiny_http_fork::Request, &S),
) -> JoinHandle<()> {
    let (http, shared) = (Arc::clone(http), Arc::clone(shared));
    let thread_name = format!("fake-{name}-handle");
    thread::Builder::new()
        .name(format!("fake-{name}-dispatch"))
        .spawn(move || {
            while !shared.closing().load(Ordering::SeqCst) {
                match http.recv_timeout(Duration::from_millis(50)) {
                    Ok(Ok(Some(request))) => {
                        let shared = Arc::clone(&shared);
                        let _ = thread::Builder::new()
                            .name(thread_name.clone())
                            .spawn(move || handle(request, &shared));
                    }
                    Ok(Ok(None)) | Ok(Err(_)) => {}
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        })
        .unwrap_or_else(|e| panic!("fake {name}: dispatcher thread: {e}"))
}

/// Waits `delay` (an injected slowness) unless the fake closes first; returns whether the
/// whole delay passed (false: closing, answer nothing).
pub fn delay_unless_closing(closing: &AtomicBool, delay: Duration) -> bool {
    let deadline = Instant::now() + delay;
    while Instant::now() < deadline {
        if closing.load(Ordering::SeqCst) {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        thread::sleep(Duration::from_millis(5).min(left));
    }
    true
}

/// Polls `done` every 20 ms until it holds, for at most `limit`; returns whether it held.
pub fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// The example body files, read from `examples/`.
pub fn example(name: &str) -> String {
    std::fs::read_to_string(format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Set by `.ci/run` once it has installed every outside component (etcd, Prism, nginx, a
/// mountable tmpfs): a test that would skip for want of one fails instead.
pub const REQUIRE_EXTERNAL: &str = "MEC_PLUGIN_REQUIRE_EXTERNAL";

/// Reports that `test` cannot run here because `why` (an outside component is missing, say)
/// and returns, so the caller can `return` at once; panics instead when [`REQUIRE_EXTERNAL`]
/// is set. The line goes to stderr directly, past the test harness's capture, so that a
/// passing run still says plainly what it skipped.
pub fn skip(test: &str, why: &str) {
    if std::env::var_os(REQUIRE_EXTERNAL).is_some() {
        panic!("{test} cannot run: {why} ({REQUIRE_EXTERNAL} is set, so skipping is an error)");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}
