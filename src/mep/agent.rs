//! The one outbound HTTP client every MEP driver uses: bounded in time and size, deaf to proxy
//! environment variables, and the single place where per-MEP transport settings (and, later,
//! a private CA and a bearer token) are put together.
//!
//! Guarantees of [`MepClient::send`]:
//! - it returns within the region's `timeout` (connect, request, answer and body included),
//!   plus scheduling noise;
//! - it never goes through a proxy, whatever `http_proxy`, `HTTPS_PROXY`, `ALL_PROXY` or
//!   `NO_PROXY` say: MEPs sit next to the plugin, and a proxy picked up from a service manager's
//!   environment would silently reroute (and could log) southbound calls;
//! - it never follows redirects (a 3xx is a refusal): credentials must not travel to another
//!   host, and a POST must not silently become a GET;
//! - it reads at most [`MAX_ANSWER_BYTES`] of an answer;
//! - it logs each call at debug level (method, URL, status, milliseconds) and never logs
//!   credentials: user information in a URL is masked in logs and in errors.

use std::fmt;
use std::time::{Duration, Instant};

use log::debug;
use ureq::Agent;
use ureq::http::{self, Method};

use super::MepError;
use crate::config::MepConfig;

/// Largest answer body read from a MEP.
pub const MAX_ANSWER_BYTES: u64 = 1024 * 1024;

/// Longest `detail` kept from an error answer, in characters.
const MAX_DETAIL_CHARS: usize = 200;

/// An HTTP client for one MEP. Cheap to share (`&self` everywhere); connections are pooled.
pub struct MepClient {
    agent: Agent,
    base_url: String,
    timeout: Duration,
}

/// Written by hand so that no future credential field can end up in a `{:?}`.
impl fmt::Debug for MepClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MepClient")
            .field("base_url", &redact(&self.base_url))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl MepClient {
    /// Builds the client for a region's `[region.mep]` section.
    pub fn new(mep: &MepConfig) -> MepClient {
        let config = Agent::config_builder()
            // Never `Proxy::try_from_env()` (what `Config::default()` does).
            .proxy(None)
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(mep.timeout))
            .timeout_connect(Some(mep.timeout))
            .user_agent(concat!("mec-plugin/", env!("CARGO_PKG_VERSION")))
            .accept("application/json")
            .build();
        MepClient {
            agent: Agent::new_with_config(config),
            base_url: mep.url.trim_end_matches('/').to_string(),
            timeout: mep.timeout,
        }
    }

    /// The MEP's base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The bound on each call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `target` (a path starting with `/`) appended to the base URL.
    pub fn url(&self, target: &str) -> String {
        format!("{}{}", self.base_url, target)
    }

    /// The agent's configuration, for inspection (tests).
    pub fn agent_config(&self) -> &ureq::config::Config {
        self.agent.config()
    }

    /// Sends one call with an optional JSON body (sent as is, with
    /// `Content-Type: application/json`, also on DELETE). Returns the status and the body of a
    /// 2xx answer; any other status is [`MepError::Refused`] with a short detail taken from
    /// the answer (its `detail` or `title` field when it is a JSON object, else its first 200
    /// characters).
    pub fn send(
        &self,
        method: &str,
        url: &str,
        json_body: Option<&str>,
    ) -> Result<(u16, String), MepError> {
        let shown = redact(url);
        let started = Instant::now();
        let result = self.exchange(method, url, json_body, &shown);
        let ms = started.elapsed().as_millis();
        match &result {
            Ok((status, _)) => debug!("MEP call {method} {shown} -> {status} in {ms} ms"),
            Err(MepError::Refused { status, .. }) => {
                debug!("MEP call {method} {shown} -> {status} in {ms} ms")
            }
            Err(e) => debug!("MEP call {method} {shown} failed after {ms} ms: {e}"),
        }
        result
    }

    fn exchange(
        &self,
        method: &str,
        url: &str,
        json_body: Option<&str>,
        shown: &str,
    ) -> Result<(u16, String), MepError> {
        let invalid = |reason: String| MepError::Unreachable {
            url: shown.to_string(),
            reason,
        };
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| invalid(format!("invalid HTTP method '{method}'")))?;
        let builder = http::Request::builder().method(method).uri(url);
        let sent = match json_body {
            Some(body) => {
                let request = builder
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .map_err(|e| invalid(format!("invalid request: {e}")))?;
                self.agent.run(request)
            }
            None => {
                let request = builder
                    .body(())
                    .map_err(|e| invalid(format!("invalid request: {e}")))?;
                self.agent.run(request)
            }
        };
        let mut response = sent.map_err(|e| classify(e, shown))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_vec();
        if (200..300).contains(&status) {
            // The platform said yes; an answer we cannot read leaves the outcome uncertain,
            // which `Unreachable`/`Timeout` (both "ambiguous") convey.
            let body = body.map_err(|e| classify(e, shown))?;
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        } else {
            let detail = match body {
                Ok(body) => detail_of(&String::from_utf8_lossy(&body)),
                Err(ureq::Error::BodyExceedsLimit(_)) => "(answer larger than 1 MiB)".to_string(),
                Err(_) => String::new(),
            };
            Err(MepError::Refused {
                url: shown.to_string(),
                status,
                detail,
            })
        }
    }
}

/// Maps a transport error: time limits to `Timeout`, everything else to `Unreachable`.
fn classify(e: ureq::Error, url: &str) -> MepError {
    let url = url.to_string();
    match e {
        ureq::Error::Timeout(_) => MepError::Timeout { url },
        ureq::Error::Io(ref io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) =>
        {
            MepError::Timeout { url }
        }
        ureq::Error::BodyExceedsLimit(_) => MepError::Unreachable {
            url,
            reason: "answer larger than 1 MiB".to_string(),
        },
        other => MepError::Unreachable {
            url,
            reason: one_line(&other.to_string(), MAX_DETAIL_CHARS),
        },
    }
}

/// A short, single-line detail from an error answer.
fn detail_of(body: &str) -> String {
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(body) {
        for key in ["detail", "title"] {
            if let Some(serde_json::Value::String(text)) = map.get(key) {
                if !text.trim().is_empty() {
                    return one_line(text, MAX_DETAIL_CHARS);
                }
            }
        }
    }
    one_line(body, MAX_DETAIL_CHARS)
}

/// At most `max` characters, control characters (newlines included) replaced by spaces, so
/// that a platform's answer cannot forge log lines.
fn one_line(text: &str, max: usize) -> String {
    text.trim()
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The URL with any `user:password@` masked, for logs and errors.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DriverKind;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn mep(url: &str, timeout_ms: u64) -> MepConfig {
        MepConfig::new(DriverKind::Llmec, url, Duration::from_millis(timeout_ms))
    }

    /// A one-shot server answering `answer` (raw HTTP) to the first connection; returns the
    /// base URL and a handle yielding the raw request it read.
    fn one_shot(answer: &'static str) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then a Content-Length body if any.
            loop {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&seen).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if seen.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            s.write_all(answer.as_bytes()).unwrap();
            String::from_utf8_lossy(&seen).to_string()
        });
        (url, handle)
    }

    #[test]
    fn proxy_from_environment_is_never_used() {
        let client = MepClient::new(&mep("http://127.0.0.1:1", 500));
        assert!(client.agent_config().proxy().is_none());
        assert!(!client.agent_config().http_status_as_error());
        assert_eq!(client.agent_config().max_redirects(), 0);
    }

    #[test]
    fn sends_json_body_on_delete_and_returns_2xx_body() {
        let (url, server) =
            one_shot("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
        let client = MepClient::new(&mep(&url, 3000));
        let got = client
            .send("DELETE", &client.url("/api/x"), Some(r#"{"a":1}"#))
            .unwrap();
        assert_eq!(got, (200, "{}".to_string()));
        let raw = server.join().unwrap();
        assert!(raw.starts_with("DELETE /api/x HTTP/1.1\r\n"), "{raw}");
        assert!(
            raw.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{raw}"
        );
        assert!(raw.ends_with(r#"{"a":1}"#), "{raw}");
    }

    #[test]
    fn error_status_is_refused_with_detail_from_problem_json() {
        let (url, server) = one_shot(
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 46\r\nConnection: close\r\n\r\n{\"title\":\"Oops\",\"detail\":\"rule table is full\"}",
        );
        let client = MepClient::new(&mep(&url, 3000));
        let e = client
            .send("POST", &client.url("/r"), Some("{}"))
            .unwrap_err();
        server.join().unwrap();
        assert_eq!(
            e,
            MepError::Refused {
                url: format!("{url}/r"),
                status: 500,
                detail: "rule table is full".into()
            }
        );
    }

    #[test]
    fn redirect_is_not_followed() {
        let (url, server) = one_shot(
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/elsewhere\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        let client = MepClient::new(&mep(&url, 3000));
        let e = client
            .send("POST", &client.url("/r"), Some("{}"))
            .unwrap_err();
        server.join().unwrap();
        assert!(matches!(e, MepError::Refused { status: 302, .. }), "{e:?}");
    }

    #[test]
    fn refused_connection_is_unreachable() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let client = MepClient::new(&mep(&url, 2000));
        let e = client
            .send("POST", &client.url("/r"), Some("{}"))
            .unwrap_err();
        assert!(matches!(e, MepError::Unreachable { .. }), "{e:?}");
        assert!(e.is_ambiguous());
    }

    #[test]
    fn silent_platform_is_a_timeout_within_the_bound() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let client = MepClient::new(&mep(&url, 300));
        let started = Instant::now();
        // Accepted by the kernel's backlog, never answered.
        let e = client
            .send("POST", &client.url("/r"), Some("{}"))
            .unwrap_err();
        let took = started.elapsed();
        assert!(e.is_timeout(), "{e:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
        drop(listener);
    }

    #[test]
    fn detail_prefers_detail_then_title_then_text() {
        assert_eq!(detail_of(r#"{"title":"T","detail":"D"}"#), "D");
        assert_eq!(detail_of(r#"{"title":"T"}"#), "T");
        assert_eq!(detail_of("plain\ntext"), "plain text");
        assert_eq!(detail_of(&"x".repeat(500)).len(), 200);
        assert_eq!(detail_of(""), "");
    }

    #[test]
    fn credentials_in_urls_are_masked() {
        assert_eq!(
            redact("http://user:secret@mep:8080/api?x=@y"),
            "http://***@mep:8080/api?x=@y"
        );
        assert_eq!(redact("http://mep/a@b"), "http://mep/a@b");
        assert_eq!(redact("simulated:"), "simulated:");
        let client = MepClient::new(&mep("http://u:p@127.0.0.1:1/", 100));
        assert_eq!(client.base_url(), "http://u:p@127.0.0.1:1");
        assert!(!format!("{client:?}").contains(":p@"));
    }
}
