//! Counters and latency histograms of the northbound API and of platform calls, and their
//! Prometheus text exposition (`GET /metrics`). Small and dependency-free: a few maps behind
//! short-lived mutexes, updated once per request or platform call.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use crate::util::lock;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram with [`BUCKETS`].
#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(i) = BUCKETS.iter().position(|&b| seconds <= b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }

    /// Writes `<name>_bucket`, `_sum` and `_count` lines with the given labels.
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(self.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// What happened to a platform call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Ok,
    Refused,
    Unreachable,
    Timeout,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Unreachable => "unreachable",
            Outcome::Timeout => "timeout",
        }
    }
}

#[derive(Debug, Default)]
struct Northbound {
    /// (route, method, status) → count
    requests: BTreeMap<(&'static str, String, u16), u64>,
    /// route → latency
    latency: BTreeMap<&'static str, Histogram>,
}

#[derive(Debug, Default)]
struct Southbound {
    /// (region, operation, outcome) → count
    calls: BTreeMap<(String, &'static str, Outcome), u64>,
    /// (region, operation) → latency
    latency: BTreeMap<(String, &'static str), Histogram>,
}

/// All metrics of one plugin.
#[derive(Debug, Default)]
pub struct Metrics {
    northbound: Mutex<Northbound>,
    southbound: Mutex<Southbound>,
    /// Records dropped by `DELETE ...?forget=true` with their rules possibly left behind.
    forgotten: std::sync::atomic::AtomicU64,
    /// Failed etcd calls and commits (`mec_plugin_store_errors_total`); an `Arc` so that a
    /// store backend can count into it ([`Metrics::store_errors`]).
    store_errors: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Connections past `max_connections` closed without their 503
    /// (`mec_plugin_http_connections_dropped_total`).
    dropped_connections: std::sync::atomic::AtomicU64,
    /// Bytes the request bodies hold, kept by the server (`mec_plugin_http_body_bytes`).
    body_bytes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Point-in-time values read when the metrics are scraped.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Number of stored requests by status name.
    pub requests_by_status: BTreeMap<&'static str, usize>,
    /// Requests with rules the reconciler still has to remove.
    pub reconciler_backlog: usize,
    /// Seconds since the process started.
    pub uptime_seconds: f64,
    /// Changes can still be made durable (false once the journal stopped).
    pub state_writable: bool,
    /// With an etcd store: whether this instance leads (`mec_plugin_leader`); `None` with the
    /// journal (neither it nor `mec_plugin_store_errors_total` is shown then).
    pub leader: Option<bool>,
}

impl Metrics {
    /// Counts one northbound request. `route` is a route template (bounded cardinality).
    pub fn northbound(&self, route: &'static str, method: &str, status: u16, took: Duration) {
        // Methods are bounded too: anything unusual is counted as OTHER.
        let method = match method {
            "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS" => method,
            _ => "OTHER",
        };
        let mut n = lock(&self.northbound);
        *n.requests
            .entry((route, method.to_string(), status))
            .or_default() += 1;
        n.latency
            .entry(route)
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// Counts one platform call (`operation` is `apply` or `remove`).
    pub fn southbound(
        &self,
        region: &str,
        operation: &'static str,
        outcome: Outcome,
        took: Duration,
    ) {
        let mut s = lock(&self.southbound);
        *s.calls
            .entry((region.to_string(), operation, outcome))
            .or_default() += 1;
        s.latency
            .entry((region.to_string(), operation))
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// Counts one record dropped by `DELETE ...?forget=true`.
    pub fn forgotten(&self) {
        self.forgotten
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts one connection past `max_connections` closed without its 503.
    pub fn dropped_connection(&self) {
        self.dropped_connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Where the server keeps the bytes the request bodies hold.
    pub fn body_bytes(&self) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
        self.body_bytes.clone()
    }

    /// Counts one failed etcd call or commit.
    pub fn store_error(&self) {
        self.store_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The counter of failed etcd calls and commits, for a store backend to count into.
    pub fn store_errors(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.store_errors.clone()
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(8 * 1024);
        header(
            &mut out,
            "mec_plugin_build_info",
            "gauge",
            "Version of the running plugin.",
        );
        let _ = writeln!(
            out,
            "mec_plugin_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        single(
            &mut out,
            "mec_plugin_uptime_seconds",
            "Seconds since the plugin started.",
            format_args!("{:.3}", gauges.uptime_seconds),
        );
        self.render_northbound(&mut out);
        self.render_southbound(&mut out);
        counter(
            &mut out,
            "mec_plugin_requests_forgotten_total",
            "Requests dropped by DELETE ?forget=true (region no longer configured, or its platform URL or driver changed), their rules possibly left on the platform.",
            &self.forgotten,
        );
        counter(
            &mut out,
            "mec_plugin_http_connections_dropped_total",
            "Connections past max_connections closed without their 503 (every refusal place taken, or a TLS handshake not completed in time).",
            &self.dropped_connections,
        );
        single(
            &mut out,
            "mec_plugin_http_body_bytes",
            "Bytes of memory the request bodies hold: being received, waiting for a worker or being handled (at most max_body_memory_bytes).",
            self.body_bytes.load(std::sync::atomic::Ordering::Relaxed),
        );
        render_gauges(&mut out, gauges);
        if let Some(leader) = gauges.leader {
            single(
                &mut out,
                "mec_plugin_leader",
                "1 while this instance leads the instances sharing its etcd prefix, else 0.",
                u8::from(leader),
            );
            counter(
                &mut out,
                "mec_plugin_store_errors_total",
                "Failed etcd calls and commits, the leader election's included (etcd unreachable, without quorum, or this instance deposed).",
                &self.store_errors,
            );
        }
        out
    }

    /// The northbound requests' counts and latencies.
    fn render_northbound(&self, out: &mut String) {
        let n = lock(&self.northbound);
        header(
            out,
            "mec_plugin_http_requests_total",
            "counter",
            "Northbound requests by route, method and status.",
        );
        for ((route, method, status), count) in &n.requests {
            let _ = writeln!(
                out,
                "mec_plugin_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {count}"
            );
        }
        header(
            out,
            "mec_plugin_http_request_duration_seconds",
            "histogram",
            "Northbound request handling time by route.",
        );
        for (route, h) in &n.latency {
            h.write(
                out,
                "mec_plugin_http_request_duration_seconds",
                &format!("route=\"{route}\""),
            );
        }
    }

    /// The platform calls' counts and latencies.
    fn render_southbound(&self, out: &mut String) {
        let s = lock(&self.southbound);
        header(
            out,
            "mec_plugin_mep_calls_total",
            "counter",
            "Platform calls by region, operation and outcome.",
        );
        for ((region, operation, outcome), count) in &s.calls {
            let _ = writeln!(
                out,
                "mec_plugin_mep_calls_total{{region=\"{}\",operation=\"{operation}\",outcome=\"{}\"}} {count}",
                escape(region),
                outcome.name()
            );
        }
        header(
            out,
            "mec_plugin_mep_call_duration_seconds",
            "histogram",
            "Platform call time by region and operation.",
        );
        for ((region, operation), h) in &s.latency {
            let labels = format!("region=\"{}\",operation=\"{operation}\"", escape(region));
            h.write(out, "mec_plugin_mep_call_duration_seconds", &labels);
        }
    }
}

/// The values read when the metrics are scraped.
fn render_gauges(out: &mut String, gauges: &Gauges) {
    header(
        out,
        "mec_plugin_requests",
        "gauge",
        "Stored rule requests by status.",
    );
    for (status, count) in &gauges.requests_by_status {
        let _ = writeln!(out, "mec_plugin_requests{{status=\"{status}\"}} {count}");
    }
    single(
        out,
        "mec_plugin_reconciler_backlog",
        "Requests whose rules still have to come off a platform, those being removed included.",
        gauges.reconciler_backlog,
    );
    single(
        out,
        "mec_plugin_state_writable",
        "1 while changes can be made durable; 0 while state_dir is full (1 again once there is room), once the journal stopped after a failed fsync or the deletion of its file (restart needed), or on an etcd instance that does not lead.",
        u8::from(gauges.state_writable),
    );
}

/// The `# HELP` and `# TYPE` lines of metric `name`.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A counter without labels: its header and its one sample.
fn counter(out: &mut String, name: &str, help: &str, value: &std::sync::atomic::AtomicU64) {
    header(out, name, "counter", help);
    let value = value.load(std::sync::atomic::Ordering::Relaxed);
    let _ = writeln!(out, "{name} {value}");
}

/// A gauge without labels: its header and its one sample.
fn single(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

/// Escapes a label value (backslash, quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_are_exposed_in_prometheus_text_format() {
        let m = Metrics::default();
        m.northbound(
            "/MEC/v1/service/requests",
            "POST",
            201,
            Duration::from_millis(3),
        );
        m.northbound(
            "/MEC/v1/service/requests",
            "POST",
            201,
            Duration::from_millis(30),
        );
        m.northbound(
            "/MEC/v1/service/requests",
            "BREW",
            405,
            Duration::from_millis(1),
        );
        m.southbound("2", "apply", Outcome::Ok, Duration::from_millis(2));
        m.southbound("2", "remove", Outcome::Timeout, Duration::from_secs(3));
        let mut gauges = Gauges {
            reconciler_backlog: 1,
            ..Gauges::default()
        };
        gauges.requests_by_status.insert("CREATED", 4);
        let text = m.render(&gauges);
        for line in [
            "mec_plugin_http_requests_total{route=\"/MEC/v1/service/requests\",method=\"POST\",status=\"201\"} 2",
            "mec_plugin_http_requests_total{route=\"/MEC/v1/service/requests\",method=\"OTHER\",status=\"405\"} 1",
            "mec_plugin_http_request_duration_seconds_bucket{route=\"/MEC/v1/service/requests\",le=\"0.005\"} 2",
            "mec_plugin_http_request_duration_seconds_bucket{route=\"/MEC/v1/service/requests\",le=\"+Inf\"} 3",
            "mec_plugin_http_request_duration_seconds_count{route=\"/MEC/v1/service/requests\"} 3",
            "mec_plugin_mep_calls_total{region=\"2\",operation=\"apply\",outcome=\"ok\"} 1",
            "mec_plugin_mep_calls_total{region=\"2\",operation=\"remove\",outcome=\"timeout\"} 1",
            "mec_plugin_mep_call_duration_seconds_bucket{region=\"2\",operation=\"remove\",le=\"2.5\"} 0",
            "mec_plugin_mep_call_duration_seconds_bucket{region=\"2\",operation=\"remove\",le=\"5\"} 1",
            "mec_plugin_requests{status=\"CREATED\"} 4",
            "mec_plugin_reconciler_backlog 1",
            "# TYPE mec_plugin_http_request_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        assert!(text.contains("mec_plugin_build_info{version=\""));
    }

    /// Operator audit: the HELP of `state_writable` named only a failed `fsync` (restart
    /// needed), though a full `state_dir` also makes it 0 and clears by itself; that of
    /// `requests_forgotten_total` named only a region no longer configured.
    #[test]
    fn help_texts_name_every_case_of_their_metric_on_one_line() {
        let text = Metrics::default().render(&Gauges::default());
        let help = |name: &str| {
            let start = format!("# HELP {name} ");
            let line = text.lines().find(|l| l.starts_with(&start));
            line.unwrap_or_else(|| panic!("no HELP for {name}\n{text}"))
                .to_string()
        };
        let writable = help("mec_plugin_state_writable");
        for case in ["full", "room", "fsync", "deletion", "restart", "etcd"] {
            assert!(writable.contains(case), "{case}: {writable}");
        }
        let forgotten = help("mec_plugin_requests_forgotten_total");
        for case in ["no longer configured", "platform URL", "driver"] {
            assert!(forgotten.contains(case), "{case}: {forgotten}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
