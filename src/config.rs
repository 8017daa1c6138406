//! `regions.toml`: the raw serde shape (unknown keys refused) and its one-time conversion into
//! a validated [`Config`] that the rest of the program only reads. Every error names the file,
//! the line, the region and the key.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::model::ApiStyle;
use crate::retry::RetryPolicy;
use crate::util::redact;

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub regions: Vec<RegionConfig>,
}

/// `[server]`: the northbound side.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Northbound listen address (default `127.0.0.1:8082`).
    pub listen: SocketAddr,
    /// Directory for durable state (default `state`).
    pub state_dir: PathBuf,
    /// Request-handling threads (default 8).
    pub workers: usize,
    /// Spelling of response keys (default `spec`).
    pub api_style: ApiStyle,
    /// Largest accepted request body (default 1 MiB).
    pub max_body_bytes: usize,
    /// Bound on each socket read and write, and on receiving a whole request body; an idle
    /// keep-alive connection is closed after it (default 5 s).
    pub read_timeout: Duration,
    /// Accepted and ignored since connections no longer have threads (default 128).
    pub connection_threads: usize,
    /// An idle keep-alive connection is closed, silently, after this (default 5 s).
    pub idle_timeout: Duration,
    /// Largest request head: request line plus header fields (default 16384 bytes).
    pub max_head_bytes: usize,
    /// Most header fields in a request head (default 100).
    pub max_headers: usize,
    /// Most connections served at once; one more gets 503 (default 1024).
    pub max_connections: usize,
    /// Force every change to disk before acknowledging it (default true; false only for
    /// benchmarks: changes then survive a crash of the process but not of the machine).
    pub fsync: bool,
    /// Backoff of background removals (defaults 1 s doubling up to 60 s).
    pub retry: RetryPolicy,
    /// Bearer token required on `/MEC/v1` and `/metrics` (read from `token_file`).
    pub token: Option<Secret>,
    /// Northbound TLS certificate chain and key (PEM, read from `tls_cert` / `tls_key`).
    pub tls: Option<TlsFiles>,
    /// Requests kept at most: a creation beyond is refused with 507 (default 100,000).
    pub max_requests: usize,
}

/// PEM contents of the northbound certificate chain and private key.
#[derive(Clone)]
pub struct TlsFiles {
    pub cert_pem: Vec<u8>,
    pub key_pem: Secret,
}

impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TlsFiles {{ cert_pem: {} bytes, key_pem: *** }}",
            self.cert_pem.len()
        )
    }
}

/// One `[[region]]`.
#[derive(Debug, Clone)]
pub struct RegionConfig {
    pub id: String,
    pub description: String,
    pub latitude: f64,
    pub longitude: f64,
    pub altitude: f64,
    pub range_km: f64,
    pub mep: MepConfig,
}

/// Default of `[region.mep] max_calls`.
pub const DEFAULT_MAX_CALLS: usize = 1024;

/// `[region.mep]`: how to reach the region's MEC platform.
#[derive(Debug, Clone)]
pub struct MepConfig {
    pub driver: DriverKind,
    /// Base URL (`http://` or `https://`), without a trailing slash. For the simulated
    /// driver it is only a label and defaults to `simulated:`.
    pub url: String,
    /// Bound on each platform call, connect included (default 3 s).
    pub timeout: Duration,
    /// PEM certificates of a private CA to trust for `https://` (in addition to none: when
    /// set, only these are trusted), read from `ca_file` at start-up.
    pub ca_pem: Option<Vec<u8>>,
    /// Bearer token sent as `Authorization: Bearer <token>`, read from `token_file`.
    pub token: Option<Secret>,
    /// EdgeGallery `appName` (1-63 characters); derived from the request id when absent.
    pub app_name: Option<String>,
    /// Polling of asynchronous platform tasks (EdgeGallery): interval (default 1 s) ...
    pub poll_interval: Duration,
    /// ... and how many polls before the task counts as timed out (default 30).
    pub poll_attempts: u32,
    /// Most rule calls one request may cause on the platform (default 1024): LL-MEC calls,
    /// MEC 011 rules, EdgeGallery configurations; reads and task polls are not counted.
    pub max_calls: usize,
    /// How long after an apply whose outcome is unknown (timeout, broken exchange, 502/504)
    /// it may still land on the platform (default 2 × `timeout`): a removal sent earlier is
    /// sent again once this has passed.
    pub settle: Duration,
}

impl MepConfig {
    /// A platform at `url` with the defaults of every optional key.
    pub fn new(driver: DriverKind, url: &str, timeout: Duration) -> MepConfig {
        MepConfig {
            driver,
            url: url.trim_end_matches('/').to_string(),
            timeout,
            ca_pem: None,
            token: None,
            app_name: None,
            poll_interval: Duration::from_secs(1),
            poll_attempts: 30,
            max_calls: DEFAULT_MAX_CALLS,
            settle: timeout * 2,
        }
    }
}

/// A credential: its `Debug` never shows it, so it cannot end up in a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The MEP dialects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DriverKind {
    /// EURECOM LL-MEC REST API.
    Llmec,
    /// An in-process platform that keeps the rules it is given (for trying the plugin out).
    Simulated,
    /// EdgeGallery MEP, Mm5 application configuration (`/mepcfg/app_lcm/v1`).
    Edgegallery,
    /// ETSI GS MEC 011 rules API (`/mec_app_support/v1`): activation and deactivation.
    EtsiMec011,
}

impl DriverKind {
    pub fn name(self) -> &'static str {
        match self {
            DriverKind::Llmec => "llmec",
            DriverKind::Simulated => "simulated",
            DriverKind::Edgegallery => "edgegallery",
            DriverKind::EtsiMec011 => "etsi-mec011",
        }
    }
}

/// A configuration error: where and what.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.message)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: Option<Spanned<RawServer>>,
    #[serde(default)]
    region: Vec<Spanned<RawRegion>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<String>>,
    state_dir: Option<String>,
    workers: Option<Spanned<i64>>,
    api_style: Option<ApiStyle>,
    max_body_bytes: Option<Spanned<i64>>,
    read_timeout_ms: Option<Spanned<i64>>,
    connection_threads: Option<Spanned<i64>>,
    idle_timeout_ms: Option<Spanned<i64>>,
    max_head_bytes: Option<Spanned<i64>>,
    max_headers: Option<Spanned<i64>>,
    max_connections: Option<Spanned<i64>>,
    fsync: Option<bool>,
    retry_initial_ms: Option<Spanned<i64>>,
    retry_max_ms: Option<Spanned<i64>>,
    token_file: Option<Spanned<String>>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    max_requests: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    id: Spanned<String>,
    #[serde(default)]
    description: String,
    latitude: Spanned<f64>,
    longitude: Spanned<f64>,
    #[serde(default)]
    altitude: f64,
    range_km: Spanned<f64>,
    mep: Spanned<RawMep>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMep {
    driver: DriverKind,
    url: Option<Spanned<String>>,
    timeout_ms: Option<Spanned<i64>>,
    ca_file: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    app_name: Option<Spanned<String>>,
    poll_interval_ms: Option<Spanned<i64>>,
    poll_attempts: Option<Spanned<i64>>,
    max_calls: Option<Spanned<i64>>,
    settle_ms: Option<Spanned<i64>>,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, &file)
    }

    /// Parses and validates configuration text; `file` only names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            file: file.to_string(),
            message,
        };
        let at = |span: Range<usize>| line_of(text, span.start);
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| format!("line {}: ", line_of(text, s.start)))
                .unwrap_or_default();
            err(format!("{line}{}", e.message()))
        })?;

        let server = match raw.server {
            Some(s) => {
                let s = s.into_inner();
                let listen = match s.listen {
                    Some(l) => l.get_ref().parse::<SocketAddr>().map_err(|_| {
                        err(format!(
                            "line {}: [server] listen = '{}' is not an address:port such as 127.0.0.1:8082",
                            at(l.span()),
                            l.get_ref()
                        ))
                    })?,
                    None => default_listen(),
                };
                let int = |v: Option<Spanned<i64>>, key: &str, min: i64, max: i64, default: i64| {
                    match v {
                        None => Ok(default),
                        Some(v) if (min..=max).contains(v.get_ref()) => Ok(*v.get_ref()),
                        Some(v) => Err(err(format!(
                            "line {}: [server] {key} = {} is out of range {min}..={max}",
                            at(v.span()),
                            v.get_ref()
                        ))),
                    }
                };
                ServerConfig {
                    listen,
                    state_dir: PathBuf::from(s.state_dir.unwrap_or_else(|| "state".into())),
                    workers: int(s.workers, "workers", 1, 1024, 8)? as usize,
                    api_style: s.api_style.unwrap_or(ApiStyle::Spec),
                    max_body_bytes: int(
                        s.max_body_bytes,
                        "max_body_bytes",
                        1024,
                        64 << 20,
                        1 << 20,
                    )? as usize,
                    read_timeout: Duration::from_millis(int(
                        s.read_timeout_ms,
                        "read_timeout_ms",
                        100,
                        600_000,
                        5000,
                    )? as u64),
                    connection_threads: int(
                        s.connection_threads.inspect(|v| {
                            log::warn!(
                                "line {}: [server] connection_threads is accepted and ignored: \
                                 connections no longer have threads of their own (see \
                                 max_connections)",
                                at(v.span())
                            )
                        }),
                        "connection_threads",
                        4,
                        4096,
                        128,
                    )? as usize,
                    idle_timeout: Duration::from_millis(int(
                        s.idle_timeout_ms,
                        "idle_timeout_ms",
                        100,
                        3_600_000,
                        5000,
                    )? as u64),
                    max_head_bytes: int(s.max_head_bytes, "max_head_bytes", 1024, 1 << 20, 16384)?
                        as usize,
                    max_headers: int(s.max_headers, "max_headers", 8, 1000, 100)? as usize,
                    max_connections: int(s.max_connections, "max_connections", 1, 65536, 1024)?
                        as usize,
                    fsync: s.fsync.unwrap_or(true),
                    max_requests: int(s.max_requests, "max_requests", 1, 100_000_000, 100_000)?
                        as usize,
                    retry: RetryPolicy {
                        initial: Duration::from_millis(int(
                            s.retry_initial_ms,
                            "retry_initial_ms",
                            10,
                            3_600_000,
                            1000,
                        )? as u64),
                        max: Duration::from_millis(int(
                            s.retry_max_ms,
                            "retry_max_ms",
                            10,
                            86_400_000,
                            60_000,
                        )? as u64),
                    },
                    token: match &s.token_file {
                        Some(t) => Some(read_token(text, file, t, "[server] token_file")?),
                        None => None,
                    },
                    tls: match (&s.tls_cert, &s.tls_key) {
                        (None, None) => None,
                        (Some(cert), Some(key)) => {
                            let cert_pem = read_file(text, file, cert, "[server] tls_cert")?;
                            if !String::from_utf8_lossy(&cert_pem)
                                .contains("-----BEGIN CERTIFICATE-----")
                            {
                                return Err(err(format!(
                                    "line {}: [server] tls_cert = '{}' holds no PEM certificate",
                                    at(cert.span()),
                                    cert.get_ref()
                                )));
                            }
                            let key_pem = read_file(text, file, key, "[server] tls_key")?;
                            if !String::from_utf8_lossy(&key_pem).contains("PRIVATE KEY-----") {
                                return Err(err(format!(
                                    "line {}: [server] tls_key = '{}' holds no PEM private key",
                                    at(key.span()),
                                    key.get_ref()
                                )));
                            }
                            let key_pem =
                                Secret::new(String::from_utf8_lossy(&key_pem).into_owned());
                            Some(TlsFiles { cert_pem, key_pem })
                        }
                        (Some(v), None) | (None, Some(v)) => {
                            return Err(err(format!(
                                "line {}: [server] tls_cert and tls_key must be given together",
                                at(v.span())
                            )));
                        }
                    },
                }
            }
            None => ServerConfig::default(),
        };

        let mut regions = Vec::new();
        let mut seen = HashSet::new();
        for (i, r) in raw.region.into_iter().enumerate() {
            let region_line = at(r.span());
            let r = r.into_inner();
            let id = r.id.get_ref().clone();
            let name = if id.is_empty() {
                format!("#{}", i + 1)
            } else {
                format!("'{id}'")
            };
            let bad = |span: Range<usize>, key: &str, what: String| {
                err(format!("line {}: region {name}: {key} {what}", at(span)))
            };
            if id.trim().is_empty() {
                return Err(bad(r.id.span(), "id", "must not be empty".into()));
            }
            if id.len() > 63
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(bad(
                    r.id.span(),
                    "id",
                    "must be 1-63 characters of letters, digits, '-', '_' or '.'".into(),
                ));
            }
            if !seen.insert(id.clone()) {
                return Err(bad(
                    r.id.span(),
                    "id",
                    "is used by another region (ids must be unique)".into(),
                ));
            }
            let range_check = |v: &Spanned<f64>, key: &str, lo: f64, hi: f64| {
                let x = *v.get_ref();
                if x.is_finite() && (lo..=hi).contains(&x) {
                    Ok(x)
                } else {
                    Err(bad(
                        v.span(),
                        key,
                        format!("= {x} is out of range {lo}..{hi}"),
                    ))
                }
            };
            let latitude = range_check(&r.latitude, "latitude", -90.0, 90.0)?;
            let longitude = range_check(&r.longitude, "longitude", -180.0, 180.0)?;
            if !r.altitude.is_finite() {
                return Err(err(format!(
                    "line {region_line}: region {name}: altitude must be a finite number"
                )));
            }
            let range_km = *r.range_km.get_ref();
            if !(range_km.is_finite() && range_km > 0.0) {
                return Err(bad(
                    r.range_km.span(),
                    "range_km",
                    format!("= {range_km} must be greater than 0"),
                ));
            }
            let mep_span = r.mep.span();
            let mep = r.mep.into_inner();
            let timeout_ms = match mep.timeout_ms {
                None => 3000,
                Some(t) if (1..=600_000).contains(t.get_ref()) => *t.get_ref(),
                Some(t) => {
                    return Err(bad(
                        t.span(),
                        "mep.timeout_ms",
                        format!("= {} is out of range 1..=600000", t.get_ref()),
                    ));
                }
            };
            let url = match (mep.driver, mep.url) {
                (_, Some(u)) => {
                    let checked = check_url(u.get_ref()).map_err(|why| {
                        bad(
                            u.span(),
                            "mep.url",
                            format!("= '{}' {why}", redact(u.get_ref())),
                        )
                    })?;
                    if mep.driver == DriverKind::Simulated {
                        u.get_ref().clone()
                    } else {
                        checked
                    }
                }
                (DriverKind::Simulated, None) => "simulated:".to_string(),
                (_, None) => {
                    return Err(bad(
                        mep_span,
                        "mep.url",
                        "is required for this driver".into(),
                    ));
                }
            };
            let mut mep_config =
                MepConfig::new(mep.driver, &url, Duration::from_millis(timeout_ms as u64));
            if let Some(ca) = &mep.ca_file {
                let pem = read_file(text, file, ca, &format!("region {name}: mep.ca_file"))?;
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(bad(
                        ca.span(),
                        "mep.ca_file",
                        format!("= '{}' holds no PEM certificate", ca.get_ref()),
                    ));
                }
                mep_config.ca_pem = Some(pem);
            }
            if let Some(t) = &mep.token_file {
                mep_config.token = Some(read_token(
                    text,
                    file,
                    t,
                    &format!("region {name}: mep.token_file"),
                )?);
            }
            if let Some(name) = &mep.app_name {
                let n = name.get_ref();
                if n.is_empty() || n.chars().count() > 63 {
                    return Err(bad(
                        name.span(),
                        "mep.app_name",
                        "must be 1-63 characters".into(),
                    ));
                }
                mep_config.app_name = Some(n.clone());
            }
            if let Some(v) = &mep.poll_interval_ms {
                if !(10..=60_000).contains(v.get_ref()) {
                    return Err(bad(
                        v.span(),
                        "mep.poll_interval_ms",
                        format!("= {} is out of range 10..=60000", v.get_ref()),
                    ));
                }
                mep_config.poll_interval = Duration::from_millis(*v.get_ref() as u64);
            }
            if let Some(v) = &mep.poll_attempts {
                if !(1..=10_000).contains(v.get_ref()) {
                    return Err(bad(
                        v.span(),
                        "mep.poll_attempts",
                        format!("= {} is out of range 1..=10000", v.get_ref()),
                    ));
                }
                mep_config.poll_attempts = *v.get_ref() as u32;
            }
            if let Some(v) = &mep.max_calls {
                if !(1..=100_000).contains(v.get_ref()) {
                    return Err(bad(
                        v.span(),
                        "mep.max_calls",
                        format!("= {} is out of range 1..=100000", v.get_ref()),
                    ));
                }
                mep_config.max_calls = *v.get_ref() as usize;
            }
            if let Some(v) = &mep.settle_ms {
                if !(0..=3_600_000).contains(v.get_ref()) {
                    return Err(bad(
                        v.span(),
                        "mep.settle_ms",
                        format!("= {} is out of range 0..=3600000", v.get_ref()),
                    ));
                }
                mep_config.settle = Duration::from_millis(*v.get_ref() as u64);
            }
            regions.push(RegionConfig {
                id,
                description: r.description,
                latitude,
                longitude,
                altitude: r.altitude,
                range_km,
                mep: mep_config,
            });
        }
        if regions.is_empty() {
            return Err(err(
                "no [[region]] is configured; at least one is needed".into()
            ));
        }
        Ok(Config { server, regions })
    }

    /// One line per region for `--check` and the start-up log (credentials in a URL masked).
    pub fn summary(&self) -> Vec<String> {
        self.regions
            .iter()
            .map(|r| {
                format!(
                    "region {}: lat {} lon {} alt {} range {} km, driver {}, MEP {}",
                    r.id,
                    r.latitude,
                    r.longitude,
                    r.altitude,
                    r.range_km,
                    r.mep.driver.name(),
                    redact(&r.mep.url)
                )
            })
            .collect()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            state_dir: PathBuf::from("state"),
            workers: 8,
            api_style: ApiStyle::Spec,
            max_body_bytes: 1 << 20,
            read_timeout: Duration::from_secs(5),
            connection_threads: 128,
            idle_timeout: Duration::from_secs(5),
            max_head_bytes: 16384,
            max_headers: 100,
            max_connections: 1024,
            fsync: true,
            retry: RetryPolicy::default(),
            token: None,
            tls: None,
            max_requests: 100_000,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8082))
}

/// Reads a file named in the configuration, relative to the configuration file's directory;
/// errors name the file, line and key (`what`).
fn read_file(
    text: &str,
    file: &str,
    value: &Spanned<String>,
    what: &str,
) -> Result<Vec<u8>, ConfigError> {
    let base = Path::new(file).parent().unwrap_or(Path::new(""));
    let path = base.join(value.get_ref());
    std::fs::read(&path).map_err(|e| ConfigError {
        file: file.to_string(),
        message: format!(
            "line {}: {what} = '{}': cannot read {}: {e}",
            line_of(text, value.span().start),
            value.get_ref(),
            path.display()
        ),
    })
}

/// Reads a file holding one bearer token: visible ASCII only (0x21..=0x7E), what an HTTP header
/// carries on both sides (the server answers a bare 400 to any other byte, the client refuses
/// to send it).
fn read_token(
    text: &str,
    file: &str,
    value: &Spanned<String>,
    what: &str,
) -> Result<Secret, ConfigError> {
    let bytes = read_file(text, file, value, what)?;
    let token = String::from_utf8(bytes).unwrap_or_default();
    let token = token.trim();
    if token.is_empty() || !token.bytes().all(|b| (0x21..=0x7E).contains(&b)) {
        return Err(ConfigError {
            file: file.to_string(),
            message: format!(
                "line {}: {what} = '{}' must hold one token of visible ASCII characters (no spaces, control or non-ASCII characters such as 'é'): an HTTP header cannot carry others",
                line_of(text, value.span().start),
                value.get_ref()
            ),
        });
    }
    Ok(Secret::new(token.to_string()))
}

/// 1-based line number of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Checks a MEP base URL and returns it without a trailing slash.
fn check_url(url: &str) -> Result<String, String> {
    let uri: ureq::http::Uri = url.parse().map_err(|e| format!("is not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err("must start with http:// or https://".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    // The parser drops a fragment and an empty query without a word, and keeps a port it
    // cannot read as none (the scheme's default): look at the text itself.
    if uri.query().is_some() || url.contains('?') {
        return Err("must not have a query string".into());
    }
    if url.contains('#') {
        return Err("must not have a fragment ('#...'): calls would all go to its path".into());
    }
    if let Some(authority) = uri.authority() {
        let host_port = authority
            .as_str()
            .rsplit_once('@')
            .map_or(authority.as_str(), |(_, h)| h);
        // An IPv6 literal's colons are inside its brackets.
        let after_host = match host_port.rfind(']') {
            Some(end) => &host_port[end + 1..],
            None => host_port,
        };
        if let Some((_, port)) = after_host.rsplit_once(':') {
            let valid = port.bytes().all(|b| b.is_ascii_digit())
                && matches!(port.parse::<u16>(), Ok(p) if p > 0);
            if !valid {
                return Err(format!("has port '{port}': a port is a number 1..65535"));
            }
        }
    }
    Ok(url.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[region]]
id = "2"
latitude = 43.6
longitude = 7.06
range_km = 10.0
[region.mep]
driver = "llmec"
url = "http://127.0.0.1:13000/"
"#;

    fn parse_err(text: &str) -> String {
        Config::parse(text, "regions.toml").unwrap_err().to_string()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL, "regions.toml").unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8082");
        assert_eq!(c.server.workers, 8);
        assert_eq!(c.server.max_body_bytes, 1 << 20);
        assert_eq!(c.server.max_requests, 100_000);
        assert_eq!(c.server.api_style, ApiStyle::Spec);
        assert_eq!(c.regions[0].mep.url, "http://127.0.0.1:13000");
        assert_eq!(c.regions[0].mep.timeout, Duration::from_secs(3));
        assert_eq!(c.regions[0].altitude, 0.0);
    }

    #[test]
    fn full_server_section_is_read() {
        let text = format!(
            "[server]\nlisten = \"0.0.0.0:9000\"\nstate_dir = \"/var/lib/x\"\nworkers = 3\napi_style = \"camel\"\nmax_body_bytes = 4096\nread_timeout_ms = 700\nconnection_threads = 16\nmax_requests = 5\n{MINIMAL}"
        );
        let c = Config::parse(&text, "f").unwrap();
        assert_eq!(c.server.max_requests, 5);
        assert_eq!(c.server.listen.port(), 9000);
        assert_eq!(c.server.workers, 3);
        assert_eq!(c.server.api_style, ApiStyle::Camel);
        assert_eq!(c.server.max_body_bytes, 4096);
        assert_eq!(c.server.read_timeout, Duration::from_millis(700));
        assert_eq!(c.server.connection_threads, 16);
        assert_eq!(c.server.state_dir, PathBuf::from("/var/lib/x"));
    }

    #[test]
    fn the_front_end_bounds_are_read_with_their_defaults_and_ranges() {
        let c = Config::parse(MINIMAL, "f").unwrap();
        assert_eq!(c.server.idle_timeout, Duration::from_secs(5));
        assert_eq!(
            (
                c.server.max_head_bytes,
                c.server.max_headers,
                c.server.max_connections
            ),
            (16384, 100, 1024)
        );
        let text = format!(
            "[server]\nidle_timeout_ms = 1500\nmax_head_bytes = 4096\nmax_headers = 20\nmax_connections = 7\n{MINIMAL}"
        );
        let c = Config::parse(&text, "f").unwrap();
        assert_eq!(c.server.idle_timeout, Duration::from_millis(1500));
        assert_eq!(
            (
                c.server.max_head_bytes,
                c.server.max_headers,
                c.server.max_connections
            ),
            (4096, 20, 7)
        );
        for bad in [
            "max_head_bytes = 100",
            "max_headers = 0",
            "max_connections = 0",
            "idle_timeout_ms = 1",
        ] {
            let e = parse_err(&format!("[server]\n{bad}\n{MINIMAL}"));
            assert!(e.contains("out of range"), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_key_is_refused_with_file_and_line() {
        let e = parse_err(&MINIMAL.replace("range_km = 10.0", "range_km = 10.0\nradius = 3"));
        assert!(e.starts_with("regions.toml: line 7"), "{e}");
        assert!(e.contains("radius"), "{e}");
    }

    #[test]
    fn duplicate_region_id_is_refused() {
        let e = parse_err(&format!("{MINIMAL}{MINIMAL}"));
        assert!(
            e.contains("region '2': id is used by another region"),
            "{e}"
        );
        assert!(e.contains("line 12"), "{e}");
    }

    #[test]
    fn empty_region_id_is_refused() {
        let e = parse_err(&MINIMAL.replace("id = \"2\"", "id = \"\""));
        assert!(e.contains("id must not be empty"), "{e}");
    }

    #[test]
    fn out_of_range_coordinates_are_refused_naming_region_and_key() {
        let e = parse_err(&MINIMAL.replace("latitude = 43.6", "latitude = 91.0"));
        assert!(
            e.contains("line 4: region '2': latitude = 91 is out of range"),
            "{e}"
        );
        let e = parse_err(&MINIMAL.replace("longitude = 7.06", "longitude = -180.5"));
        assert!(e.contains("longitude"), "{e}");
    }

    #[test]
    fn non_positive_range_is_refused() {
        let e = parse_err(&MINIMAL.replace("range_km = 10.0", "range_km = 0.0"));
        assert!(e.contains("range_km = 0 must be greater than 0"), "{e}");
    }

    #[test]
    fn unparsable_url_is_refused() {
        let e = parse_err(&MINIMAL.replace("http://127.0.0.1:13000/", "not a url"));
        assert!(e.contains("line 9: region '2': mep.url"), "{e}");
        let e = parse_err(&MINIMAL.replace("http://127.0.0.1:13000/", "ftp://127.0.0.1/"));
        assert!(e.contains("http:// or https://"), "{e}");
    }

    #[test]
    fn a_url_with_a_query_or_a_fragment_is_refused() {
        for (url, needle) in [
            ("http://127.0.0.1:13001/#frag", "must not have a fragment"),
            ("http://127.0.0.1:13001/api#", "must not have a fragment"),
            ("http://127.0.0.1:13001/?x=1", "must not have a query"),
            ("http://127.0.0.1:13001/?", "must not have a query"),
        ] {
            let e = parse_err(&MINIMAL.replace("http://127.0.0.1:13000/", url));
            assert!(e.contains("line 9: region '2': mep.url"), "{url}: {e}");
            assert!(e.contains(needle), "{url}: {e}");
        }
    }

    #[test]
    fn a_url_with_an_invalid_port_is_refused() {
        for url in [
            "http://127.0.0.1:99999",
            "http://127.0.0.1:65536/api",
            "http://127.0.0.1:0",
            "http://127.0.0.1:/",
            "http://127.0.0.1:+80",
            "http://[::1]:70000",
        ] {
            let e = parse_err(&MINIMAL.replace("http://127.0.0.1:13000/", url));
            assert!(e.contains("line 9: region '2': mep.url"), "{url}: {e}");
            assert!(e.contains("a port is a number 1..65535"), "{url}: {e}");
        }
        for (url, kept) in [
            ("http://127.0.0.1:65535/", "http://127.0.0.1:65535"),
            ("https://[::1]:8443/api/", "https://[::1]:8443/api"),
            ("http://mep.example", "http://mep.example"),
            ("http://[::1]/", "http://[::1]"),
        ] {
            let c = Config::parse(&MINIMAL.replace("http://127.0.0.1:13000/", url), "f")
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(c.regions[0].mep.url, kept);
        }
    }

    #[test]
    fn credentials_in_a_url_are_masked_in_the_summary_and_in_errors() {
        let text = MINIMAL.replace(
            "http://127.0.0.1:13000/",
            "http://admin:s3cret@127.0.0.1:13002",
        );
        let c = Config::parse(&text, "f").unwrap();
        assert_eq!(c.regions[0].mep.url, "http://admin:s3cret@127.0.0.1:13002");
        let summary = c.summary().join("\n");
        assert!(
            summary.contains("MEP http://***@127.0.0.1:13002"),
            "{summary}"
        );
        assert!(!summary.contains("s3cret"), "{summary}");
        for url in [
            "http://admin:s3cret@127.0.0.1:13002/#x",
            "http://admin:s3cret@127.0.0.1:99999",
        ] {
            let e = parse_err(&MINIMAL.replace("http://127.0.0.1:13000/", url));
            assert!(e.contains("mep.url = 'http://***@127.0.0.1:"), "{e}");
            assert!(!e.contains("s3cret") && !e.contains("admin"), "{e}");
        }
    }

    #[test]
    fn unknown_driver_is_refused() {
        let e = parse_err(&MINIMAL.replace("\"llmec\"", "\"openness\""));
        assert!(e.contains("line 8"), "{e}");
        assert!(e.contains("openness"), "{e}");
    }

    #[test]
    fn missing_url_is_refused_for_a_real_platform_but_not_for_the_simulated_one() {
        let no_url = MINIMAL.replace("url = \"http://127.0.0.1:13000/\"\n", "");
        assert!(parse_err(&no_url).contains("mep.url is required"));
        let sim = Config::parse(&no_url.replace("llmec", "simulated"), "f").unwrap();
        assert_eq!(sim.regions[0].mep.driver, DriverKind::Simulated);
    }

    #[test]
    fn bad_listen_address_and_worker_count_are_refused() {
        let e = parse_err(&format!("[server]\nlisten = \"localhost\"\n{MINIMAL}"));
        assert!(e.contains("line 2: [server] listen"), "{e}");
        let e = parse_err(&format!("[server]\nworkers = 0\n{MINIMAL}"));
        assert!(e.contains("workers = 0 is out of range"), "{e}");
    }

    #[test]
    fn every_driver_name_is_accepted() {
        for name in ["llmec", "simulated", "edgegallery", "etsi-mec011"] {
            let c =
                Config::parse(&MINIMAL.replace("\"llmec\"", &format!("\"{name}\"")), "f").unwrap();
            assert_eq!(c.regions[0].mep.driver.name(), name);
        }
    }

    #[test]
    fn credentials_and_ca_are_read_relative_to_the_config_file_and_never_shown() {
        let dir = std::env::temp_dir().join(format!("mec-config-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), "s3cr3t\n").unwrap();
        std::fs::write(
            dir.join("ca.pem"),
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let file = dir.join("regions.toml").display().to_string();
        let text = MINIMAL.replace(
            "url = ",
            "token_file = \"token\"\nca_file = \"ca.pem\"\nurl = ",
        );
        let c = Config::parse(&text, &file).unwrap();
        let mep = &c.regions[0].mep;
        assert_eq!(mep.token.as_ref().unwrap().expose(), "s3cr3t");
        assert!(mep.ca_pem.is_some());
        assert!(
            !format!("{c:?}").contains("s3cr3t"),
            "the token never shows in Debug"
        );
        let e =
            parse_err(&MINIMAL.replace("url = ", "token_file = \"/nonexistent/token\"\nurl = "));
        assert!(
            e.contains("line 9: region '2': mep.token_file") && e.contains("/nonexistent/token"),
            "{e}"
        );
        std::fs::write(dir.join("not-a-ca"), "hello").unwrap();
        let e = Config::parse(
            &MINIMAL.replace("url = ", "ca_file = \"not-a-ca\"\nurl = "),
            &file,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("holds no PEM certificate"), "{e}");
    }

    #[test]
    fn tokens_must_be_visible_ascii() {
        let dir = std::env::temp_dir().join(format!("mec-config-ascii-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("regions.toml").display().to_string();
        let server = |name: &str| format!("[server]\ntoken_file = \"{name}\"\n{MINIMAL}");
        let region =
            |name: &str| MINIMAL.replace("url = ", &format!("token_file = \"{name}\"\nurl = "));
        std::fs::write(dir.join("good"), "A-z0~9!._\n").unwrap();
        for text in [server("good"), region("good")] {
            Config::parse(&text, &file).unwrap();
        }
        for (name, content) in [
            ("accent", "j\u{e9}ton\n".as_bytes()),
            ("nbsp", "to\u{a0}ken".as_bytes()),
            ("latin1", b"j\xe9ton".as_slice()),
            ("space", b"to ken".as_slice()),
            ("tab", b"to\tken".as_slice()),
            ("del", b"to\x7fken".as_slice()),
            ("empty", b" \n".as_slice()),
        ] {
            std::fs::write(dir.join(name), content).unwrap();
            for (text, key) in [
                (server(name), "[server] token_file"),
                (region(name), "region '2': mep.token_file"),
            ] {
                let e = Config::parse(&text, &file).unwrap_err().to_string();
                assert!(e.contains(key), "{name}: {e}");
                assert!(e.contains("visible ASCII"), "{name}: {e}");
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn polling_and_app_name_are_read_and_bounded() {
        let text = MINIMAL.replace(
            "url = ",
            "poll_interval_ms = 50\npoll_attempts = 4\napp_name = \"video\"\nurl = ",
        );
        let mep = Config::parse(&text, "f").unwrap().regions[0].mep.clone();
        assert_eq!(
            (mep.poll_interval, mep.poll_attempts),
            (Duration::from_millis(50), 4)
        );
        assert_eq!(mep.app_name.as_deref(), Some("video"));
        assert!(
            parse_err(&MINIMAL.replace("url = ", "poll_attempts = 0\nurl = "))
                .contains("poll_attempts")
        );
        let long = "a".repeat(64);
        assert!(
            parse_err(&MINIMAL.replace("url = ", &format!("app_name = \"{long}\"\nurl = ")))
                .contains("1-63")
        );
    }

    #[test]
    fn max_calls_and_settle_window_are_read_and_bounded() {
        let mep = Config::parse(MINIMAL, "f").unwrap().regions[0].mep.clone();
        assert_eq!(mep.max_calls, DEFAULT_MAX_CALLS);
        assert_eq!(mep.settle, mep.timeout * 2, "default: twice the timeout");
        let text = MINIMAL.replace(
            "url = ",
            "timeout_ms = 300\nmax_calls = 7\nsettle_ms = 1500\nurl = ",
        );
        let mep = Config::parse(&text, "f").unwrap().regions[0].mep.clone();
        assert_eq!(
            (mep.max_calls, mep.settle),
            (7, Duration::from_millis(1500))
        );
        let text = MINIMAL.replace("url = ", "timeout_ms = 300\nurl = ");
        let mep = Config::parse(&text, "f").unwrap().regions[0].mep.clone();
        assert_eq!(mep.settle, Duration::from_millis(600));
        for bad in ["max_calls = 0", "max_calls = 100001", "settle_ms = -1"] {
            let e = parse_err(&MINIMAL.replace("url = ", &format!("{bad}\nurl = ")));
            assert!(e.contains(bad.split(' ').next().unwrap()), "{bad}: {e}");
        }
    }

    #[test]
    fn a_config_without_regions_is_refused() {
        assert!(parse_err("[server]\n").contains("no [[region]]"));
    }
}
