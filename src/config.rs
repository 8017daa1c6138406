//! `regions.toml`: the raw serde shape (unknown keys refused) and its one-time conversion into
//! a validated [`Config`] that the rest of the program only reads. Every error names the file,
//! the line, the region and the key.
//!
//! The conversion goes table by table (`[server]`, each `[[region]]`, its `[region.mep]`),
//! reading each value with the one check of its kind (a count, milliseconds, a number in a
//! range, an address, a file, a PEM file, a token); every default is a constant of
//! [`defaults`].
//!
//! The raw structs hold plain values (their serde derives are the one place the keys are
//! written): a check that fails finds the line it names by the key path of the value
//! (`region`, 2, `mep`, `url`) in toml's own parse of the text, which keeps the span of every
//! value and which `toml::from_str` goes through anyway. `toml::Spanned` fields would keep
//! the spans at hand, but cost a deserializer per field type (about 64 kB of the binary).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};

use crate::model::ApiStyle;
use crate::retry::RetryPolicy;
use crate::util::redact;

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub regions: Vec<RegionConfig>,
    /// `[store]`: where the records live (default: the journal in `[server] state_dir`).
    pub store: StoreConfig,
    /// What is accepted but deserves a word (a key that is ignored), each naming its line:
    /// the start logs them at warning level once its logger is set up, `--check` prints them.
    pub warnings: Vec<String>,
}

/// `[store] kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreKind {
    /// The embedded journal in `[server] state_dir` (the default).
    #[default]
    Journal,
    /// An etcd cluster shared by the instances of one `prefix`: one leads, the others follow.
    Etcd,
}

/// `[store]`: the journal (default), or etcd for several instances (issue 15).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// etcd client URLs (`http://` or `https://`), tried in turn.
    pub endpoints: Vec<String>,
    /// One cluster of instances per prefix (default `/mec-plugin`).
    pub prefix: String,
    /// The leader's lease, in seconds (default 5).
    pub lease_ttl_s: u64,
    /// This instance's northbound base URL as the other instances reach it (required with etcd).
    pub advertise_url: Option<String>,
    /// PEM CA certificates that `https://` endpoints are verified against.
    pub ca_file: Option<PathBuf>,
    /// An etcd user, with its password read from `password_file`.
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Journal,
            endpoints: Vec::new(),
            prefix: defaults::STORE_PREFIX.to_string(),
            lease_ttl_s: defaults::LEASE_TTL_S,
            advertise_url: None,
            ca_file: None,
            user: None,
            password_file: None,
        }
    }
}

/// `[server]`: the northbound side.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Northbound listen address (default [`defaults::LISTEN`]).
    pub listen: SocketAddr,
    /// Directory for durable state (default [`defaults::STATE_DIR`]).
    pub state_dir: PathBuf,
    /// Request-handling threads (default [`defaults::WORKERS`]).
    pub workers: usize,
    /// Spelling of response keys (default [`defaults::API_STYLE`]).
    pub api_style: ApiStyle,
    /// Largest accepted request body (default [`defaults::MAX_BODY_BYTES`]).
    pub max_body_bytes: usize,
    /// Most memory the request bodies take at once, over all connections: being received,
    /// waiting for a worker or being handled; a body that would pass it gets 503 (default
    /// [`defaults::MAX_BODY_MEMORY_BYTES`]; at least `max_body_bytes`).
    pub max_body_memory_bytes: usize,
    /// Bound on each socket read and write, and on receiving a whole request body; an idle
    /// keep-alive connection is closed after it (default [`defaults::READ_TIMEOUT`]).
    pub read_timeout: Duration,
    /// Accepted and ignored since connections no longer have threads (default
    /// [`defaults::CONNECTION_THREADS`]).
    pub connection_threads: usize,
    /// An idle keep-alive connection is closed, silently, after this (default
    /// [`defaults::IDLE_TIMEOUT`]).
    pub idle_timeout: Duration,
    /// Largest request head: request line plus header fields (default
    /// [`defaults::MAX_HEAD_BYTES`]).
    pub max_head_bytes: usize,
    /// Most header fields in a request head (default [`defaults::MAX_HEADERS`]).
    pub max_headers: usize,
    /// Most connections served at once; one more gets 503 (default
    /// [`defaults::MAX_CONNECTIONS`]).
    pub max_connections: usize,
    /// Most request log lines a second for answers below 500, the others counted in a summary
    /// line; 0 for none (default [`defaults::LOG_REQUESTS_PER_S`]).
    pub log_requests_per_s: usize,
    /// Force every change to disk before acknowledging it ([`defaults::FSYNC`] by default;
    /// false only for benchmarks: changes then survive a crash of the process but not of the
    /// machine).
    pub fsync: bool,
    /// Backoff of background removals (defaults [`defaults::RETRY_INITIAL`] doubling up to
    /// [`defaults::RETRY_MAX`]).
    pub retry: RetryPolicy,
    /// Bearer token required on `/MEC/v1` and `/metrics` (read from `token_file`).
    pub token: Option<Secret>,
    /// Northbound TLS certificate chain and key (PEM, read from `tls_cert` / `tls_key`).
    pub tls: Option<TlsFiles>,
    /// Requests kept at most: a creation beyond is refused with 507 (default
    /// [`defaults::MAX_REQUESTS`]).
    pub max_requests: usize,
    /// How long a FAILED request with nothing on a platform is kept after its last change
    /// before it is deleted by itself (`failed_retention_s`; zero: until a DELETE; default
    /// [`defaults::FAILED_RETENTION`]).
    pub failed_retention: Duration,
}

/// The northbound certificate chain (PEM, as read from `tls_cert`) and the rustls server
/// configuration of it and `tls_key`, built once when the configuration is loaded: that
/// checks the pair (so that `--check` refuses what the start would), and the server serves
/// with it. The key is kept only inside the rustls configuration.
#[derive(Clone)]
pub struct TlsFiles {
    pub cert_pem: Vec<u8>,
    pub server: Arc<rustls::ServerConfig>,
}

impl TlsFiles {
    /// The chain `cert_pem` with the private key `key_pem` (ring provider), or which key is
    /// wrong (`tls_cert` or `tls_key`) and what is wrong with it, worded to follow
    /// "`<key> = '<file>'`".
    pub fn new(cert_pem: Vec<u8>, key_pem: &str) -> Result<TlsFiles, (&'static str, String)> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                (
                    "tls_cert",
                    format!("holds a PEM certificate chain that cannot be read: {e}"),
                )
            })?;
        if chain.is_empty() {
            return Err(("tls_cert", "holds no PEM certificate".into()));
        }
        let key = key_pem;
        // PKCS#8 `ENCRYPTED PRIVATE KEY`, or OpenSSL's legacy `Proc-Type: 4,ENCRYPTED` header.
        if key.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") || key.contains("4,ENCRYPTED") {
            return Err((
                "tls_key",
                "holds an encrypted private key: the plugin cannot ask for its passphrase \
                 (write it decrypted, readable by the service only: openssl pkey -in <file> \
                 -out <new file>)"
                    .into(),
            ));
        }
        let private_key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| {
            (
                "tls_key",
                format!("holds no usable private key (PEM PKCS#8, PKCS#1 or SEC1 expected): {e}"),
            )
        })?;
        provider
            .key_provider
            .load_private_key(private_key.clone_key())
            .map_err(|e| ("tls_key", format!("holds an unusable private key: {e}")))?;
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| {
                (
                    "tls_cert",
                    format!("cannot be used: TLS set-up failed: {e}"),
                )
            })?
            .with_no_client_auth()
            .with_single_cert(chain, private_key)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => (
                    "tls_key",
                    "is not the key of the first certificate in tls_cert (is it another \
                     certificate's key?)"
                        .into(),
                ),
                e => ("tls_key", format!("cannot be used with tls_cert: {e}")),
            })?;
        Ok(TlsFiles {
            cert_pem,
            server: Arc::new(config),
        })
    }
}

impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TlsFiles {{ cert_pem: {} bytes, key: *** }}",
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

/// The default of every optional key, each written once: [`ServerConfig::default`] and
/// [`MepConfig::new`] (and so [`Config::parse`]) take them from here, and a test checks
/// README's configuration table against them.
pub mod defaults {
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
    use std::time::Duration;

    use crate::model::ApiStyle;
    use crate::retry::RetryPolicy;

    /// `[server] listen`.
    pub const LISTEN: SocketAddr =
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 8082));
    /// `[server] state_dir`.
    pub const STATE_DIR: &str = "state";
    /// `[server] workers`.
    pub const WORKERS: usize = 8;
    /// `[server] api_style`.
    pub const API_STYLE: ApiStyle = ApiStyle::Spec;
    /// `[server] max_body_bytes`.
    pub const MAX_BODY_BYTES: usize = 1 << 20;
    /// `[server] max_body_memory_bytes`: 64 bodies of the largest size at once, thousands of
    /// the few-kB bodies an orchestrator sends, where `max_connections` full bodies would be
    /// 1 GiB.
    pub const MAX_BODY_MEMORY_BYTES: usize = 64 << 20;
    /// `[server] read_timeout_ms`.
    pub const READ_TIMEOUT: Duration = Duration::from_millis(5000);
    /// `[server] connection_threads` (accepted and ignored).
    pub const CONNECTION_THREADS: usize = 128;
    /// `[server] idle_timeout_ms`.
    pub const IDLE_TIMEOUT: Duration = Duration::from_millis(5000);
    /// `[server] max_head_bytes`.
    pub const MAX_HEAD_BYTES: usize = 16384;
    /// `[server] max_headers`.
    pub const MAX_HEADERS: usize = 100;
    /// `[server] max_connections`.
    pub const MAX_CONNECTIONS: usize = 1024;
    /// `[server] log_requests_per_s`: with the summaries, a few thousand lines in journald's
    /// default window (10,000 messages per 30 s per service), leaving room for the warnings
    /// and errors.
    pub const LOG_REQUESTS_PER_S: usize = 100;
    /// `[server] fsync`.
    pub const FSYNC: bool = true;
    /// `[server] retry_initial_ms` (the retry policy's own default).
    pub const RETRY_INITIAL: Duration = RetryPolicy::DEFAULT_INITIAL;
    /// `[server] retry_max_ms` (the retry policy's own default).
    pub const RETRY_MAX: Duration = RetryPolicy::DEFAULT_MAX;
    /// `[server] max_requests`.
    pub const MAX_REQUESTS: usize = 100_000;
    /// `[server] failed_retention_s`: a week, for the orchestrator (or an operator) to look at
    /// a failure, while an orchestrator that retries failed creations cannot fill
    /// `max_requests` with them.
    pub const FAILED_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
    /// `[[region]] description`.
    pub const DESCRIPTION: &str = "";
    /// `[[region]] altitude`.
    pub const ALTITUDE: f64 = 0.0;
    /// `[region.mep] url` of the simulated driver, for which it is only a label.
    pub const SIMULATED_URL: &str = "simulated:";
    /// `[region.mep] timeout_ms`.
    pub const TIMEOUT: Duration = Duration::from_millis(3000);
    /// `[region.mep] poll_interval_ms`.
    pub const POLL_INTERVAL: Duration = Duration::from_millis(1000);
    /// `[region.mep] poll_attempts`.
    pub const POLL_ATTEMPTS: u32 = 30;
    /// `[region.mep] max_calls`.
    pub const MAX_CALLS: usize = 1024;
    /// `[region.mep] settle_ms` is this many times the region's `timeout_ms`.
    pub const SETTLE_TIMEOUTS: u32 = 2;
    /// `[store] kind`.
    pub const STORE_KIND: &str = "journal";
    /// `[store] prefix`.
    pub const STORE_PREFIX: &str = "/mec-plugin";
    /// `[store] lease_ttl_s`.
    pub const LEASE_TTL_S: u64 = 5;
}

/// Default of `[region.mep] max_calls`.
pub use defaults::MAX_CALLS as DEFAULT_MAX_CALLS;

/// `[region.mep]`: how to reach the region's MEC platform.
#[derive(Debug, Clone)]
pub struct MepConfig {
    pub driver: DriverKind,
    /// Base URL (`http://` or `https://`), without a trailing slash. For the simulated
    /// driver it is only a label and defaults to [`defaults::SIMULATED_URL`].
    pub url: String,
    /// Bound on each platform call, connect included (default [`defaults::TIMEOUT`]).
    pub timeout: Duration,
    /// PEM certificates of a private CA to trust for `https://` (in addition to none: when
    /// set, only these are trusted), read from `ca_file` at start-up.
    pub ca_pem: Option<Vec<u8>>,
    /// Bearer token sent as `Authorization: Bearer <token>`, read from `token_file`.
    pub token: Option<Secret>,
    /// EdgeGallery `appName` (1-63 characters); derived from the request id when absent.
    pub app_name: Option<String>,
    /// Polling of asynchronous platform tasks (EdgeGallery): interval (default
    /// [`defaults::POLL_INTERVAL`]) ...
    pub poll_interval: Duration,
    /// ... and how many polls before the task counts as timed out (default
    /// [`defaults::POLL_ATTEMPTS`]).
    pub poll_attempts: u32,
    /// Most rule calls one request may cause on the platform (default
    /// [`defaults::MAX_CALLS`]): LL-MEC calls, MEC 011 rules, EdgeGallery configurations;
    /// reads and task polls are not counted.
    pub max_calls: usize,
    /// How long after an apply whose outcome is unknown (timeout, broken exchange, a 5xx)
    /// it may still land on the platform (default [`defaults::SETTLE_TIMEOUTS`] ×
    /// `timeout`): a removal sent earlier is sent again once this has passed.
    pub settle: Duration,
    /// Other URLs of the same platform (`aliases`, each without a trailing slash): rules
    /// applied through one of them (an earlier `url`, or the address another instance of an
    /// etcd cluster reaches it at) count as applied on this platform and are removed through
    /// `url`. Empty by default: a request applied through any other URL is not removed here
    /// (see README, "Changing a region's platform URL").
    pub aliases: Vec<String>,
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
            poll_interval: defaults::POLL_INTERVAL,
            poll_attempts: defaults::POLL_ATTEMPTS,
            max_calls: defaults::MAX_CALLS,
            settle: timeout * defaults::SETTLE_TIMEOUTS,
            aliases: Vec::new(),
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
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
    server: Option<RawServer>,
    #[serde(default)]
    region: Vec<RawRegion>,
    #[serde(default)]
    store: Option<RawStore>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    kind: Option<String>,
    endpoints: Option<Vec<String>>,
    prefix: Option<String>,
    lease_ttl_s: Option<i64>,
    advertise_url: Option<String>,
    ca_file: Option<String>,
    user: Option<String>,
    password_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    state_dir: Option<String>,
    workers: Option<i64>,
    api_style: Option<ApiStyle>,
    max_body_bytes: Option<i64>,
    max_body_memory_bytes: Option<i64>,
    read_timeout_ms: Option<i64>,
    connection_threads: Option<i64>,
    idle_timeout_ms: Option<i64>,
    max_head_bytes: Option<i64>,
    max_headers: Option<i64>,
    max_connections: Option<i64>,
    log_requests_per_s: Option<i64>,
    fsync: Option<bool>,
    retry_initial_ms: Option<i64>,
    retry_max_ms: Option<i64>,
    token_file: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    max_requests: Option<i64>,
    failed_retention_s: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    id: String,
    description: Option<String>,
    latitude: f64,
    longitude: f64,
    altitude: Option<f64>,
    range_km: f64,
    mep: RawMep,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMep {
    driver: DriverKind,
    url: Option<String>,
    timeout_ms: Option<i64>,
    ca_file: Option<String>,
    token_file: Option<String>,
    app_name: Option<String>,
    poll_interval_ms: Option<i64>,
    poll_attempts: Option<i64>,
    max_calls: Option<i64>,
    settle_ms: Option<i64>,
    aliases: Option<Vec<String>>,
}

impl Config {
    /// Reads and validates a configuration file, its state directory included
    /// ([`Config::load_with`] without an override).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, None)
    }

    /// Reads and validates a configuration file, with `state_dir` (the command line's
    /// `--state-dir`, relative to the working directory) in place of `[server] state_dir`;
    /// `--check` and the start share it. Beyond [`Config::parse`], the state directory a
    /// journal store will use is looked at (never written, nor its lock taken: `--check`
    /// may run beside the service): a path that is not a directory, or whose parent is
    /// missing, is refused here (exit 2) rather than at the start (exit 1, which systemd
    /// retries).
    pub fn load_with(path: &Path, state_dir: Option<&Path>) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            message: format!("cannot read: {e}"),
        })?;
        let mut config = Config::parse(&text, &file)?;
        if let Some(dir) = state_dir {
            config.server.state_dir = dir.to_path_buf();
        }
        if config.store.kind == StoreKind::Journal {
            let dir = &config.server.state_dir;
            if let Err(why) = check_state_dir(dir) {
                return Err(match state_dir {
                    Some(_) => ConfigError {
                        file: "command line".into(),
                        message: format!("--state-dir '{}' {why}", dir.display()),
                    },
                    None => Table::new(&text, &file, "[server] ", [At::Key("server")])
                        .error("state_dir", format_args!("= '{}' {why}", dir.display())),
                });
            }
        }
        Ok(config)
    }

    /// Parses and validates configuration text; `file` only names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let toml_error = |e: &toml::de::Error, at: String| {
            let line = e
                .span()
                .map(|s| format!("line {}: ", line_of(text, s.start)))
                .unwrap_or_default();
            // toml says only "duplicate key"; its span is the key (or the table's header).
            let named = match (e.message(), e.span().and_then(|s| text.get(s))) {
                (m, Some(key)) if m.trim_end() == "duplicate key" => {
                    let key: String = key.trim().chars().take(64).collect();
                    format!(" `{key}`")
                }
                _ => String::new(),
            };
            ConfigError {
                file: file.to_string(),
                message: format!("{line}{at}{}{named}", e.message().trim_end()),
            }
        };
        // A value of the wrong type names its key and region as every other error does: found
        // from the error's span in toml's parse of the text (serde_path_to_error around the
        // raw structs would say the same, for 90 kB of the binary).
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|span| key_path_at(text, span.start))
                .unwrap_or_default();
            let mut error = toml_error(&e, at.clone());
            // `[region]` (or `region = { ... }`) is one table where an array of them is read:
            // serde's words for it name no TOML syntax, so the fix is said too.
            if at == "region: " && e.message().starts_with("invalid type: map,") {
                error.message += ": write each region as [[region]] (an array of tables)";
            }
            error
        })?;
        // Without a [server] table, its defaults, resolved as the table's (state_dir relative
        // to this file's directory).
        let server_at = Table::new(text, file, "[server] ", [At::Key("server")]);
        let warnings = server_warnings(
            &server_at,
            raw.server
                .as_ref()
                .is_some_and(|s| s.connection_threads.is_some()),
        );
        let server = server_table(&server_at, raw.server.unwrap_or_default())?;
        let mut regions = Vec::new();
        let mut seen = HashSet::new();
        for (i, r) in raw.region.into_iter().enumerate() {
            regions.push(region_table(text, file, i, r, &mut seen)?);
        }
        check_platforms_unshared(text, file, &regions)?;
        if regions.is_empty() {
            return Err(ConfigError {
                file: file.to_string(),
                message: "no [[region]] is configured; at least one is needed".into(),
            });
        }
        let store = match raw.store {
            Some(s) => store_table(&Table::new(text, file, "[store] ", [At::Key("store")]), s)?,
            None => StoreConfig::default(),
        };
        Ok(Config {
            server,
            regions,
            store,
            warnings,
        })
    }

    /// One line per region for `--check` and the start-up log (credentials in a URL masked),
    /// after one for an etcd store.
    pub fn summary(&self) -> Vec<String> {
        let store = &self.store;
        let etcd = (store.kind == StoreKind::Etcd).then(|| {
            let endpoints: Vec<String> = store.endpoints.iter().map(|e| redact(e)).collect();
            format!(
                "store: etcd at {} under {} (lease {} s), advertised as {}",
                endpoints.join(", "),
                store.prefix,
                store.lease_ttl_s,
                redact(store.advertise_url.as_deref().unwrap_or(""))
            )
        });
        let regions = self.regions.iter().map(|r| {
            // A simulated platform has no address: its internal `simulated:` would read as a
            // stray colon.
            let mep = match r.mep.driver {
                DriverKind::Simulated => String::new(),
                _ => format!(", MEP {}", redact(&r.mep.url)),
            };
            format!(
                "region {}: lat {} lon {} alt {} range {} km, driver {}{mep}",
                r.id,
                r.latitude,
                r.longitude,
                r.altitude,
                r.range_km,
                r.mep.driver.name(),
            )
        });
        etcd.into_iter().chain(regions).collect()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: defaults::LISTEN,
            state_dir: PathBuf::from(defaults::STATE_DIR),
            workers: defaults::WORKERS,
            api_style: defaults::API_STYLE,
            max_body_bytes: defaults::MAX_BODY_BYTES,
            max_body_memory_bytes: defaults::MAX_BODY_MEMORY_BYTES,
            read_timeout: defaults::READ_TIMEOUT,
            connection_threads: defaults::CONNECTION_THREADS,
            idle_timeout: defaults::IDLE_TIMEOUT,
            max_head_bytes: defaults::MAX_HEAD_BYTES,
            max_headers: defaults::MAX_HEADERS,
            max_connections: defaults::MAX_CONNECTIONS,
            log_requests_per_s: defaults::LOG_REQUESTS_PER_S,
            fsync: defaults::FSYNC,
            retry: RetryPolicy {
                initial: defaults::RETRY_INITIAL,
                max: defaults::RETRY_MAX,
            },
            token: None,
            tls: None,
            max_requests: defaults::MAX_REQUESTS,
            failed_retention: defaults::FAILED_RETENTION,
        }
    }
}

/// Where values are read from, for errors and relative paths: the file's text (line numbers),
/// its name, the table's prefix in messages (`[server] `, `region 'x': `, `region 'x': mep.`)
/// and its key path in the document (`server`, `region`/2, `region`/2/`mep`). Its methods are
/// the one check of each kind of value; every error they return reads
/// `line N: <prefix><key> ...`, N the line of the value that failed, found by its key path
/// ([`offset_of`]).
struct Table<'a> {
    text: &'a str,
    file: &'a str,
    prefix: String,
    path: Vec<At>,
}

/// A step of a key path in the document: a key of a table or an item of an array.
#[derive(Debug, Clone, Copy)]
enum At {
    Key(&'static str),
    Item(usize),
}

impl<'a> Table<'a> {
    fn new(
        text: &'a str,
        file: &'a str,
        prefix: impl Into<String>,
        path: impl Into<Vec<At>>,
    ) -> Table<'a> {
        Table {
            text,
            file,
            prefix: prefix.into(),
            path: path.into(),
        }
    }

    /// The table at `key` of this one, with its own prefix.
    fn table(&self, key: &'static str, prefix: impl Into<String>) -> Table<'a> {
        let mut path = self.path.clone();
        path.push(At::Key(key));
        Table::new(self.text, self.file, prefix, path)
    }

    /// The line of the value at `at` in this table (`&[]`: the table itself).
    fn line(&self, at: &[At]) -> usize {
        line_of(self.text, offset_of(self.text, self.path.iter().chain(at)))
    }

    /// `line N: <prefix><key> <what>`, N the line of `key`'s value.
    fn error(&self, key: &'static str, what: impl fmt::Display) -> ConfigError {
        self.error_at(&[At::Key(key)], key, what)
    }

    /// `line N: <prefix><key> <what>`, N the line of the value at `at` in this table.
    fn error_at(&self, at: &[At], key: &str, what: impl fmt::Display) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            message: format!("line {}: {}{key} {what}", self.line(at), self.prefix),
        }
    }

    /// `line N: <prefix><first> and <second> must be given together`, for two keys that go
    /// in pairs of which only one is given (`first_given`: which); N is that one's line.
    fn unpaired(
        &self,
        first: &'static str,
        second: &'static str,
        first_given: bool,
    ) -> ConfigError {
        let given = if first_given { first } else { second };
        self.error_at(
            &[At::Key(given)],
            first,
            format_args!("and {second} must be given together"),
        )
    }

    /// An integer key within `range`, as a `T` (`into`), or `default` when absent.
    fn int<T>(
        &self,
        value: Option<i64>,
        key: &'static str,
        range: RangeInclusive<i64>,
        default: T,
        into: fn(i64) -> T,
    ) -> Result<T, ConfigError> {
        let Some(v) = value else {
            return Ok(default);
        };
        if !range.contains(&v) {
            let (min, max) = (range.start(), range.end());
            return Err(self.error(key, format_args!("= {v} is out of range {min}..={max}")));
        }
        Ok(into(v))
    }

    /// A count (threads, bytes, calls): an integer key within `range`.
    fn count(
        &self,
        value: Option<i64>,
        key: &'static str,
        range: RangeInclusive<i64>,
        default: usize,
    ) -> Result<usize, ConfigError> {
        self.int(value, key, range, default, |v| v as usize)
    }

    /// A duration in milliseconds (the `*_ms` keys): an integer key within `range`.
    fn millis(
        &self,
        value: Option<i64>,
        key: &'static str,
        range: RangeInclusive<i64>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        self.int(value, key, range, default, |v| {
            Duration::from_millis(v as u64)
        })
    }

    /// A socket address (`ip:port`), or `default` when absent.
    fn address(
        &self,
        value: Option<&str>,
        key: &'static str,
        default: SocketAddr,
    ) -> Result<SocketAddr, ConfigError> {
        let Some(v) = value else {
            return Ok(default);
        };
        v.parse().map_err(|_| {
            self.error(
                key,
                format_args!(
                    "= '{v}' is not an address:port such as {}",
                    defaults::LISTEN
                ),
            )
        })
    }

    /// A finite number within `range` (shown as `lo..hi` in errors).
    fn float(
        &self,
        x: f64,
        key: &'static str,
        range: RangeInclusive<f64>,
    ) -> Result<f64, ConfigError> {
        if x.is_finite() && range.contains(&x) {
            return Ok(x);
        }
        let (lo, hi) = (range.start(), range.end());
        Err(self.error(key, format_args!("= {x} is out of range {lo}..{hi}")))
    }

    /// The path a key names, relative to the configuration file's directory.
    fn path(&self, value: &str) -> PathBuf {
        let base = Path::new(self.file).parent().unwrap_or(Path::new(""));
        base.join(value)
    }

    /// The contents of a file named by a key, relative to the configuration file's directory.
    fn file(&self, value: &str, key: &'static str) -> Result<Vec<u8>, ConfigError> {
        let path = self.path(value);
        std::fs::read(&path).map_err(|e| {
            self.error(
                key,
                format_args!("= '{value}': cannot read {}: {e}", path.display()),
            )
        })
    }

    /// A PEM file that must contain `marker`; `holds` names what it must hold in the error.
    fn pem(
        &self,
        value: &str,
        key: &'static str,
        marker: &str,
        holds: &str,
    ) -> Result<Vec<u8>, ConfigError> {
        let pem = self.file(value, key)?;
        if !String::from_utf8_lossy(&pem).contains(marker) {
            return Err(self.error(key, format_args!("= '{value}' holds no {holds}")));
        }
        Ok(pem)
    }

    /// A file holding one bearer token: visible ASCII only (0x21..=0x7E), what an HTTP header
    /// carries on both sides (the server answers a bare 400 to any other byte, the client
    /// refuses to send it).
    fn token(&self, value: &str, key: &'static str) -> Result<Secret, ConfigError> {
        let bytes = self.file(value, key)?;
        let token = String::from_utf8(bytes).unwrap_or_default();
        let token = token.trim();
        if token.is_empty() || !token.bytes().all(|b| (0x21..=0x7E).contains(&b)) {
            return Err(self.error(
                key,
                format_args!(
                    "= '{value}' must hold one token of visible ASCII characters (no spaces, control or non-ASCII characters such as 'é'): an HTTP header cannot carry others"
                ),
            ));
        }
        Ok(Secret::new(token.to_string()))
    }
}

/// The longest token a platform's `token_file` may hold (surrounding whitespace aside): it goes
/// in one header line of every call, and a platform connection writes lines of at most
/// `mep::agent::PLATFORM_HEAD_BYTES` (16 KiB; `agent` checks at compile time that the line
/// fits). Bearer tokens, JWTs included, are a few hundred bytes to a few kB.
pub const MAX_PLATFORM_TOKEN_BYTES: usize = 16_000;

/// `[server]`.
fn server_table(t: &Table, s: RawServer) -> Result<ServerConfig, ConfigError> {
    let (max_body_bytes, max_body_memory_bytes) = body_limits(t, &s)?;
    Ok(ServerConfig {
        listen: t.address(s.listen.as_deref(), "listen", defaults::LISTEN)?,
        // Relative to the configuration file's directory, as every path the file names.
        state_dir: match s.state_dir.as_deref() {
            Some(dir) if dir.trim().is_empty() => {
                return Err(t.error("state_dir", "must not be empty"));
            }
            dir => t.path(dir.unwrap_or(defaults::STATE_DIR)),
        },
        workers: t.count(s.workers, "workers", 1..=1024, defaults::WORKERS)?,
        api_style: s.api_style.unwrap_or(defaults::API_STYLE),
        max_body_bytes,
        max_body_memory_bytes,
        read_timeout: t.millis(
            s.read_timeout_ms,
            "read_timeout_ms",
            100..=600_000,
            defaults::READ_TIMEOUT,
        )?,
        // Ignored: any count is accepted, so that a file written for an earlier version starts.
        connection_threads: t.count(
            s.connection_threads,
            "connection_threads",
            0..=i64::MAX,
            defaults::CONNECTION_THREADS,
        )?,
        idle_timeout: t.millis(
            s.idle_timeout_ms,
            "idle_timeout_ms",
            100..=3_600_000,
            defaults::IDLE_TIMEOUT,
        )?,
        max_head_bytes: t.count(
            s.max_head_bytes,
            "max_head_bytes",
            1024..=1 << 20,
            defaults::MAX_HEAD_BYTES,
        )?,
        max_headers: t.count(
            s.max_headers,
            "max_headers",
            8..=1000,
            defaults::MAX_HEADERS,
        )?,
        max_connections: t.count(
            s.max_connections,
            "max_connections",
            1..=65536,
            defaults::MAX_CONNECTIONS,
        )?,
        log_requests_per_s: t.count(
            s.log_requests_per_s,
            "log_requests_per_s",
            0..=1_000_000,
            defaults::LOG_REQUESTS_PER_S,
        )?,
        fsync: s.fsync.unwrap_or(defaults::FSYNC),
        max_requests: t.count(
            s.max_requests,
            "max_requests",
            1..=100_000_000,
            defaults::MAX_REQUESTS,
        )?,
        failed_retention: t.int(
            s.failed_retention_s,
            "failed_retention_s",
            0..=31_536_000,
            defaults::FAILED_RETENTION,
            |v| Duration::from_secs(v as u64),
        )?,
        retry: retry_policy(t, &s)?,
        token: match &s.token_file {
            Some(v) => Some(t.token(v, "token_file")?),
            None => None,
        },
        tls: tls_files(t, &s.tls_cert, &s.tls_key)?,
    })
}

/// Whether `dir` can be a state directory, as far as looking can tell (nothing is created or
/// locked): a directory, or a path whose parent is one (the start creates the directory
/// itself, never its parents: a missing parent is most likely a mistyped path). What cannot
/// be looked at (no permission on a parent) is left to the start, which says why.
fn check_state_dir(dir: &Path) -> Result<(), String> {
    use std::io::ErrorKind::{NotADirectory, NotFound};
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err("exists and is not a directory".into()),
        Err(e) if matches!(e.kind(), NotFound | NotADirectory) => {
            let parent = dir
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            match std::fs::metadata(parent) {
                Ok(meta) if meta.is_dir() => Ok(()),
                Ok(_) => Err(format!(
                    "cannot be created: its parent {} is not a directory",
                    parent.display()
                )),
                Err(e) if matches!(e.kind(), NotFound | NotADirectory) => Err(format!(
                    "does not exist and its parent directory {} does not exist either (a state \
                     directory is created, its parents are not: is the path right?)",
                    parent.display()
                )),
                Err(_) => Ok(()),
            }
        }
        Err(_) => Ok(()),
    }
}

/// The warnings of `[server]` (`t`): `connection_threads`, accepted and ignored, when given.
fn server_warnings(t: &Table, connection_threads: bool) -> Vec<String> {
    let ignored = connection_threads.then(|| {
        format!(
            "{}: line {}: [server] connection_threads is accepted and ignored: connections no \
             longer have threads of their own (see max_connections)",
            t.file,
            t.line(&[At::Key("connection_threads")])
        )
    });
    ignored.into_iter().collect()
}

/// The largest body a request may have.
const MAX_BODY_BYTES_RANGE: RangeInclusive<i64> = 1024..=64 << 20;
// Without `max_body_memory_bytes`, any `max_body_bytes` fits in its default.
const _: () = assert!(defaults::MAX_BODY_MEMORY_BYTES as i64 >= *MAX_BODY_BYTES_RANGE.end());

/// `[server] max_body_bytes` and `max_body_memory_bytes`: the memory of all bodies at once
/// holds at least one of the largest.
fn body_limits(t: &Table, s: &RawServer) -> Result<(usize, usize), ConfigError> {
    let one = t.count(
        s.max_body_bytes,
        "max_body_bytes",
        MAX_BODY_BYTES_RANGE,
        defaults::MAX_BODY_BYTES,
    )?;
    let all = t.count(
        s.max_body_memory_bytes,
        "max_body_memory_bytes",
        1024..=1 << 40,
        defaults::MAX_BODY_MEMORY_BYTES,
    )?;
    if all < one {
        return Err(t.error(
            "max_body_memory_bytes",
            format_args!(
                "= {all} is less than max_body_bytes = {one}: a body of the largest size would \
                 never fit (raise max_body_memory_bytes or lower max_body_bytes)"
            ),
        ));
    }
    Ok((one, all))
}

/// `[server] retry_initial_ms` and `retry_max_ms`: the first delay no longer than the
/// longest (the reconciler would otherwise wait `retry_max_ms` from the first retry on,
/// which the file does not say).
fn retry_policy(t: &Table, s: &RawServer) -> Result<RetryPolicy, ConfigError> {
    let policy = RetryPolicy {
        initial: t.millis(
            s.retry_initial_ms,
            "retry_initial_ms",
            10..=3_600_000,
            defaults::RETRY_INITIAL,
        )?,
        max: t.millis(
            s.retry_max_ms,
            "retry_max_ms",
            10..=86_400_000,
            defaults::RETRY_MAX,
        )?,
    };
    if policy.initial > policy.max {
        let (initial, max) = (policy.initial.as_millis(), policy.max.as_millis());
        // At the line of retry_initial_ms when the file gives it, else of retry_max_ms.
        return Err(match s.retry_initial_ms {
            Some(_) => t.error(
                "retry_initial_ms",
                format_args!(
                    "= {initial} is more than retry_max_ms = {max}: the first delay before a \
                     retry cannot be longer than the longest (raise retry_max_ms or lower \
                     retry_initial_ms)"
                ),
            ),
            None => t.error(
                "retry_max_ms",
                format_args!(
                    "= {max} is less than retry_initial_ms = {initial} (its default): the \
                     longest delay before a retry cannot be shorter than the first (set \
                     retry_initial_ms too)"
                ),
            ),
        });
    }
    Ok(policy)
}

/// `[server] tls_cert` and `tls_key`: both or neither, and the key that of the chain's first
/// certificate.
fn tls_files(
    t: &Table,
    cert: &Option<String>,
    key: &Option<String>,
) -> Result<Option<TlsFiles>, ConfigError> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => {
            let cert_pem = t.pem(
                cert,
                "tls_cert",
                "-----BEGIN CERTIFICATE-----",
                "PEM certificate",
            )?;
            let key_pem = t.pem(key, "tls_key", "PRIVATE KEY-----", "PEM private key")?;
            // The pair is checked here, not first at the listener: a key that does not fit
            // (or is encrypted) is an invalid configuration (exit 2, `--check` says so), not a
            // failed start that systemd would retry forever.
            TlsFiles::new(cert_pem, &String::from_utf8_lossy(&key_pem))
                .map(Some)
                .map_err(|(which, what)| {
                    let file = if which == "tls_cert" { cert } else { key };
                    t.error(which, format_args!("= '{file}' {what}"))
                })
        }
        (Some(_), None) | (None, Some(_)) => Err(t.unpaired("tls_cert", "tls_key", cert.is_some())),
    }
}

/// The `i`-th `[[region]]`; `seen` holds the ids of the regions before it.
fn region_table(
    text: &str,
    file: &str,
    i: usize,
    r: RawRegion,
    seen: &mut HashSet<String>,
) -> Result<RegionConfig, ConfigError> {
    let id = r.id;
    let name = if id.is_empty() {
        format!("#{}", i + 1)
    } else {
        format!("'{id}'")
    };
    let path = [At::Key("region"), At::Item(i)];
    let t = Table::new(text, file, format!("region {name}: "), path);
    if id.trim().is_empty() {
        return Err(t.error("id", "must not be empty"));
    }
    if id.len() > 63
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(t.error(
            "id",
            "must be 1-63 characters of letters, digits, '-', '_' or '.'",
        ));
    }
    if !seen.insert(id.clone()) {
        return Err(t.error("id", "is used by another region (ids must be unique)"));
    }
    let latitude = t.float(r.latitude, "latitude", -90.0..=90.0)?;
    let longitude = t.float(r.longitude, "longitude", -180.0..=180.0)?;
    let altitude = r.altitude.unwrap_or(defaults::ALTITUDE);
    if !altitude.is_finite() {
        return Err(t.error("altitude", "must be a finite number"));
    }
    let range_km = r.range_km;
    if !(range_km.is_finite() && range_km > 0.0) {
        return Err(t.error(
            "range_km",
            format_args!("= {range_km} must be a finite number greater than 0"),
        ));
    }
    let mep = mep_table(&t.table("mep", format!("region {name}: mep.")), r.mep)?;
    Ok(RegionConfig {
        id,
        description: r
            .description
            .unwrap_or_else(|| defaults::DESCRIPTION.into()),
        latitude,
        longitude,
        altitude,
        range_km,
        mep,
    })
}

/// `[region.mep]`.
fn mep_table(t: &Table, mep: RawMep) -> Result<MepConfig, ConfigError> {
    let timeout = t.millis(mep.timeout_ms, "timeout_ms", 1..=600_000, defaults::TIMEOUT)?;
    let url = match (mep.driver, &mep.url) {
        (_, Some(u)) => {
            let checked = check_url(u)
                .map_err(|why| t.error("url", format_args!("= '{}' {why}", redact(u))))?;
            if mep.driver == DriverKind::Simulated {
                u.clone()
            } else {
                checked
            }
        }
        (DriverKind::Simulated, None) => defaults::SIMULATED_URL.to_string(),
        (_, None) => return Err(t.error_at(&[], "url", "is required for this driver")),
    };
    let mut config = MepConfig::new(mep.driver, &url, timeout);
    if let Some(ca) = &mep.ca_file {
        let pem = t.pem(
            ca,
            "ca_file",
            "-----BEGIN CERTIFICATE-----",
            "PEM certificate",
        )?;
        config.ca_pem = Some(pem);
    }
    if let Some(v) = &mep.token_file {
        let token = t.token(v, "token_file")?;
        let bytes = token.expose().len();
        if bytes > MAX_PLATFORM_TOKEN_BYTES {
            return Err(t.error(
                "token_file",
                format_args!(
                    "= '{v}' holds a token of {bytes} bytes: at most {MAX_PLATFORM_TOKEN_BYTES}, so that the header line that carries it fits the platform connection's 16 KiB"
                ),
            ));
        }
        config.token = Some(token);
    }
    if let Some(name) = mep.app_name {
        if name.is_empty() || name.chars().count() > 63 {
            return Err(t.error("app_name", "must be 1-63 characters"));
        }
        config.app_name = Some(name);
    }
    config.poll_interval = t.millis(
        mep.poll_interval_ms,
        "poll_interval_ms",
        10..=60_000,
        config.poll_interval,
    )?;
    config.poll_attempts = t.int(
        mep.poll_attempts,
        "poll_attempts",
        1..=10_000,
        config.poll_attempts,
        |v| v as u32,
    )?;
    config.max_calls = t.count(mep.max_calls, "max_calls", 1..=100_000, config.max_calls)?;
    config.settle = t.millis(mep.settle_ms, "settle_ms", 0..=3_600_000, config.settle)?;
    for (i, alias) in mep.aliases.iter().flatten().enumerate() {
        let checked = check_url(alias).map_err(|why| {
            t.error_at(
                &[At::Key("aliases"), At::Item(i)],
                "aliases",
                format_args!("= '{}' {why}", redact(alias)),
            )
        })?;
        let alias = if mep.driver == DriverKind::Simulated {
            alias.clone()
        } else {
            checked
        };
        config.aliases.push(alias.trim_end_matches('/').to_string());
    }
    Ok(config)
}

/// Each platform serves one region: no `url` or alias of one region's `[region.mep]` names
/// the platform of another region with the same driver (compared by [`platform_key`](crate::util::platform_key); two
/// drivers' rules are at different paths). Which requests share a rule on a
/// platform is worked out within a region (the rule index, the turns, a MEC 011 rule's prior
/// state), so the DELETE of a request in one region would take off a rule that a request in
/// the other still holds. The simulated platform is each region's own.
fn check_platforms_unshared(
    text: &str,
    file: &str,
    regions: &[RegionConfig],
) -> Result<(), ConfigError> {
    let mut owners: HashMap<(DriverKind, String), &str> = HashMap::new();
    for (i, r) in regions.iter().enumerate() {
        if r.mep.driver == DriverKind::Simulated {
            continue;
        }
        let t = Table::new(
            text,
            file,
            format!("region '{}': mep.", r.id),
            [At::Key("region"), At::Item(i), At::Key("mep")],
        );
        let urls = std::iter::once((None, &r.mep.url))
            .chain(r.mep.aliases.iter().enumerate().map(|(j, a)| (Some(j), a)));
        let mut own = Vec::new();
        for (j, url) in urls {
            // Another driver's rules are at other paths (a gateway routing them apart).
            let key = (r.mep.driver, crate::util::platform_key(url));
            if let Some(other) = owners.get(&key) {
                let what = format_args!(
                    "= '{}' is the platform of region '{other}' too (its url or an alias): a \
                     platform serves one region, since the rules requests share on it are \
                     tracked per region",
                    redact(url)
                );
                return Err(match j {
                    None => t.error("url", what),
                    Some(j) => t.error_at(&[At::Key("aliases"), At::Item(j)], "aliases", what),
                });
            }
            own.push(key);
        }
        for key in own {
            owners.insert(key, &r.id);
        }
    }
    Ok(())
}

/// `[store]`: the keys of etcd are read (and checked) whatever the kind; `endpoints` and
/// `advertise_url` are required with `kind = "etcd"`.
fn store_table(t: &Table, s: RawStore) -> Result<StoreConfig, ConfigError> {
    let kind = match s.kind.as_deref() {
        None => StoreKind::Journal,
        Some(k) => match k {
            "journal" => StoreKind::Journal,
            "etcd" => StoreKind::Etcd,
            other => {
                return Err(t.error(
                    "kind",
                    format_args!("= '{other}' must be \"journal\" or \"etcd\""),
                ));
            }
        },
    };
    let endpoints = store_endpoints(t, &s.endpoints)?;
    if kind == StoreKind::Etcd && endpoints.is_empty() {
        return Err(t.error_at(&[], "endpoints", "is required with kind = \"etcd\""));
    }
    let advertise_url = match &s.advertise_url {
        Some(u) => Some(
            check_base_url(u)
                .map_err(|why| t.error("advertise_url", format_args!("= '{}' {why}", redact(u))))?,
        ),
        None if kind == StoreKind::Etcd => {
            return Err(t.error_at(&[], "advertise_url", "is required with kind = \"etcd\""));
        }
        None => None,
    };
    let (user, password_file) = store_credentials(t, &s.user, &s.password_file)?;
    let ca_file = match &s.ca_file {
        Some(v) => {
            t.pem(
                v,
                "ca_file",
                "-----BEGIN CERTIFICATE-----",
                "PEM certificate",
            )?;
            Some(t.path(v))
        }
        None => None,
    };
    Ok(StoreConfig {
        kind,
        endpoints,
        prefix: store_prefix(t, &s.prefix)?,
        lease_ttl_s: t.int(
            s.lease_ttl_s,
            "lease_ttl_s",
            1..=MAX_LEASE_TTL_S,
            defaults::LEASE_TTL_S,
            |v| v as u64,
        )?,
        advertise_url,
        ca_file,
        user,
        password_file,
    })
}

/// The longest `[store] lease_ttl_s`: a dead leader is replaced within it, so past a minute
/// nothing could be changed for too long.
const MAX_LEASE_TTL_S: i64 = 60;

/// `[store] endpoints`: a non-empty list of `http://` or `https://` URLs when given.
fn store_endpoints(t: &Table, value: &Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    let Some(list) = value else {
        return Ok(Vec::new());
    };
    if list.is_empty() {
        return Err(t.error("endpoints", "must list at least one URL"));
    }
    list.iter()
        .enumerate()
        .map(|(i, e)| {
            check_etcd_endpoint(e).map_err(|why| {
                t.error_at(
                    &[At::Key("endpoints"), At::Item(i)],
                    "endpoints",
                    format_args!("'{}' {why}", redact(e)),
                )
            })
        })
        .collect()
}

/// `[store] prefix`: starts with '/', no empty segment nor trailing '/', visible ASCII.
fn store_prefix(t: &Table, value: &Option<String>) -> Result<String, ConfigError> {
    let Some(p) = value else {
        return Ok(defaults::STORE_PREFIX.to_string());
    };
    let valid = p.len() >= 2
        && p.len() <= 256
        && p.starts_with('/')
        && !p.ends_with('/')
        && !p.contains("//")
        && p.bytes().all(|b| (0x21..=0x7E).contains(&b));
    if !valid {
        return Err(t.error(
            "prefix",
            format_args!(
                "= '{p}' must start with '/', have no empty segment nor trailing '/', and be \
                 2-256 visible ASCII characters"
            ),
        ));
    }
    // Every group's records are under `<its prefix>/records/` and `<its prefix>/progress/`: a
    // group whose prefix has such a segment could sit inside another's records, which would
    // read its keys as records. The first segment cannot be: a group's prefix has at least
    // one segment before it.
    if let Some(segment) = p
        .split('/')
        .skip(2)
        .find(|segment| ["records", "progress"].contains(segment))
    {
        return Err(t.error(
            "prefix",
            format_args!(
                "= '{p}' must not have a segment '{segment}': the records of a group of \
                 instances are under <prefix>/records/ and <prefix>/progress/, so such a \
                 prefix could be inside another group's records"
            ),
        ));
    }
    Ok(p.clone())
}

/// `[store] user` and `password_file`: both or neither; the password file must be readable.
fn store_credentials(
    t: &Table,
    user: &Option<String>,
    password_file: &Option<String>,
) -> Result<(Option<String>, Option<PathBuf>), ConfigError> {
    match (user, password_file) {
        (None, None) => Ok((None, None)),
        (Some(user), Some(file)) => {
            if user.is_empty() {
                return Err(t.error("user", "must not be empty"));
            }
            t.token(file, "password_file")?;
            Ok((Some(user.clone()), Some(t.path(file))))
        }
        (Some(_), None) | (None, Some(_)) => {
            Err(t.unpaired("user", "password_file", user.is_some()))
        }
    }
}

/// Where the value at `path` starts in `text`: found in toml's own parse of the text with
/// the span of every key and value (the one `toml::from_str` deserializes the raw structs
/// from: the same code, and the same spans), so only when an error or a warning names a
/// line. A path the parse lacks (never: its value was deserialized from there) gives where its
/// nearest ancestor starts.
fn offset_of<'p>(text: &str, path: impl IntoIterator<Item = &'p At>) -> usize {
    let Ok(root) = DeTable::parse(text) else {
        return 0;
    };
    let mut start = root.span().start;
    let root = DeValue::Table(root.into_inner());
    let mut value = &root;
    for at in path {
        let next = match *at {
            At::Key(key) => value.get(key),
            At::Item(i) => value.get(i),
        };
        let Some(next) = next else {
            break;
        };
        start = next.span().start;
        value = next.get_ref();
    }
    start
}

/// 1-based line number of a byte offset.
/// Where the key or value at byte `offset` is, as the other errors say it (what a value
/// the TOML reader refused names): `[server] workers: `, `region '2': mep.timeout_ms: ` (a
/// region by its id when it has one, else by its place), `[[region]] number 2: `; empty at
/// the top or when the text does not parse.
fn key_path_at(text: &str, offset: usize) -> String {
    let Ok(root) = DeTable::parse(text) else {
        return String::new();
    };
    let root = DeValue::Table(root.into_inner());
    let mut path = Vec::new();
    if !find_offset(&root, offset, &mut path) {
        return String::new();
    }
    let (head, rest, region) = match path.as_slice() {
        [Part::Key("region"), Part::Item(i), rest @ ..] => {
            let id = root
                .get("region")
                .and_then(|r| r.get_ref().get(*i))
                .and_then(|r| r.get_ref().get("id"))
                .map(|id| id.get_ref());
            let head = match id {
                Some(DeValue::String(id)) => format!("region '{}'", id.escape_debug()),
                _ => format!("[[region]] number {}", i + 1),
            };
            (head, rest, true)
        }
        [Part::Key(key)] => return format!("{key}: "),
        [Part::Key(table), rest @ ..] => (format!("[{table}]"), rest, false),
        _ => return String::new(),
    };
    let mut keys = String::new();
    for part in rest {
        match part {
            Part::Key(key) if keys.is_empty() => keys.push_str(key),
            Part::Key(key) => keys.push_str(&format!(".{key}")),
            Part::Item(i) => keys.push_str(&format!("[{i}]")),
        }
    }
    match (region, keys.is_empty()) {
        (_, true) => format!("{head}: "),
        (true, false) => format!("{head}: {keys}: "),
        (false, false) => format!("{head} {keys}: "),
    }
}

/// A step of [`find_offset`]'s path.
enum Part<'t> {
    Key(&'t str),
    Item(usize),
}

/// Whether the key or value at `offset` is in `value`: then `path` leads to it (the deepest
/// key or item whose span holds it, or a table whose header does).
fn find_offset<'t>(value: &'t DeValue<'t>, offset: usize, path: &mut Vec<Part<'t>>) -> bool {
    let holds = |span: std::ops::Range<usize>| span.contains(&offset);
    match value {
        DeValue::Table(table) => table.iter().any(|(key, child)| {
            path.push(Part::Key(key.get_ref().as_ref()));
            let found = find_offset(child.get_ref(), offset, path)
                || holds(key.span())
                || holds(child.span());
            if !found {
                path.pop();
            }
            found
        }),
        DeValue::Array(items) => items.iter().enumerate().any(|(i, child)| {
            path.push(Part::Item(i));
            let found = find_offset(child.get_ref(), offset, path) || holds(child.span());
            if !found {
                path.pop();
            }
            found
        }),
        _ => false,
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A URL as [`check_url`] wants, and its path.
fn checked_with_path(url: &str) -> Result<(String, String), String> {
    let url = check_url(url)?;
    let path = url
        .parse::<ureq::http::Uri>()
        .map(|uri| uri.path().to_string())
        .unwrap_or_default();
    Ok((url, path))
}

/// Checks `[store] advertise_url`: a URL as [`check_url`] wants, with no path, since the
/// instances forward a request to it with the request's own path (`/MEC/v1/...`).
fn check_base_url(url: &str) -> Result<String, String> {
    let (url, path) = checked_with_path(url)?;
    if !matches!(path.as_str(), "" | "/") {
        return Err(format!(
            "has path '{path}': give scheme://host:port only (requests are forwarded with their \
             own path, /MEC/v1/...)"
        ));
    }
    Ok(url)
}

/// An etcd endpoint: a URL as [`check_url`] wants, whose path (a proxy's, if any) does not
/// hold etcd's own `v3`: the client adds `/v3/...` itself.
fn check_etcd_endpoint(url: &str) -> Result<String, String> {
    let (url, path) = checked_with_path(url)?;
    if path.split('/').any(|segment| segment.starts_with("v3")) {
        return Err(format!(
            "has path '{path}': leave out etcd's '/v3' (the client adds /v3/... itself); a \
             proxy's own path may stay"
        ));
    }
    Ok(url)
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
            if !valid && !authority.as_str().contains('@') && url.contains('@') {
                // What reads as the port may be the start of a password (`user:pa/ss@host`).
                return Err("has a port that is no number 1..65535 (a user or password \
                     holding '/', '?', '#' or '@' must be percent-encoded)"
                    .into());
            }
            if !valid {
                return Err(format!("has port '{port}': a port is a number 1..65535"));
            }
        }
    }
    // `http://user:12/3@host` reads as host `user`, port 12 and a path: a password (or user)
    // holding `/`, `?`, `#` or `@` must be percent-encoded.
    if uri.path().contains('@') {
        return Err(
            "has an '@' in its path: a user or password holding '/', '?', '#' or '@' \
             must be percent-encoded (%2F, %3F, %23, %40)"
                .into(),
        );
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
    fn aliases_are_checked_as_urls_and_kept_without_a_trailing_slash() {
        assert!(
            Config::parse(MINIMAL, "f").unwrap().regions[0]
                .mep
                .aliases
                .is_empty()
        );
        let c = Config::parse(
            &format!("{MINIMAL}aliases = [\"http://old:8080/\", \"https://u:p@mep.example\"]\n"),
            "f",
        )
        .unwrap();
        assert_eq!(
            c.regions[0].mep.aliases,
            ["http://old:8080", "https://u:p@mep.example"]
        );
        let e = parse_err(&format!("{MINIMAL}aliases = [\"ftp://secret:pw@old\"]\n"));
        assert!(e.contains("aliases") && e.contains("region '2'"), "{e}");
        assert!(!e.contains("secret:pw"), "credentials masked: {e}");
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

    /// Review 3, L3: `connection_threads` was documented "accepted and ignored" yet values
    /// outside 4..=4096 refused the start, and its warning was logged before the logger was
    /// set up. Any count is accepted, with a warning naming its line that the start logs.
    #[test]
    fn connection_threads_is_ignored_whatever_its_count_with_a_warning_naming_its_line() {
        for n in [0_i64, 1, 5000, 1 << 40] {
            let c = Config::parse(
                &format!("[server]\nworkers = 2\nconnection_threads = {n}\n{MINIMAL}"),
                "f",
            )
            .unwrap();
            assert_eq!(
                c.warnings,
                [
                    "f: line 3: [server] connection_threads is accepted and ignored: connections no longer have threads of their own (see max_connections)"
                ]
            );
        }
        assert!(Config::parse(MINIMAL, "f").unwrap().warnings.is_empty());
        let e = parse_err(&format!("[server]\nconnection_threads = -1\n{MINIMAL}"));
        assert!(
            e.contains("line 2: [server] connection_threads = -1"),
            "{e}"
        );
    }

    /// Review 3, L3: `retry_initial_ms > retry_max_ms` was accepted silently.
    #[test]
    fn a_first_retry_delay_longer_than_the_longest_is_refused_naming_both_keys() {
        let e = parse_err(&format!(
            "[server]\nretry_max_ms = 300\nretry_initial_ms = 5000\n{MINIMAL}"
        ));
        assert!(
            e.contains("line 3: [server] retry_initial_ms = 5000 is more than retry_max_ms = 300"),
            "{e}"
        );
        let c = Config::parse(
            &format!("[server]\nretry_initial_ms = 300\nretry_max_ms = 300\n{MINIMAL}"),
            "f",
        )
        .unwrap();
        assert_eq!(c.server.retry.initial, c.server.retry.max);
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
    fn state_dir_is_relative_to_the_configuration_file_and_never_empty() {
        let state_dir = |server: &str| {
            let text = format!("{server}{MINIMAL}");
            Config::parse(&text, "/etc/mec-plugin/regions.toml").map(|c| c.server.state_dir)
        };
        let under = |p: &str| Ok(PathBuf::from(p));
        assert_eq!(state_dir(""), under("/etc/mec-plugin/state"), "no [server]");
        assert_eq!(state_dir("[server]\n"), under("/etc/mec-plugin/state"));
        assert_eq!(
            state_dir("[server]\nstate_dir = \"st\"\n"),
            under("/etc/mec-plugin/st")
        );
        assert_eq!(
            state_dir("[server]\nstate_dir = \"/var/lib/x\"\n"),
            under("/var/lib/x")
        );
        for empty in ["\"\"", "\"  \""] {
            let err = state_dir(&format!("[server]\nstate_dir = {empty}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("line 2: [server] state_dir must not be empty"),
                "{err}"
            );
        }
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
        assert_eq!(c.server.log_requests_per_s, 100);
        let c = Config::parse(&format!("[server]\nlog_requests_per_s = 0\n{MINIMAL}"), "f");
        assert_eq!(c.unwrap().server.log_requests_per_s, 0);
        let c = Config::parse(
            &format!("[server]\nlog_requests_per_s = 1000000\n{MINIMAL}"),
            "f",
        );
        assert_eq!(c.unwrap().server.log_requests_per_s, 1_000_000);
        let c = Config::parse(MINIMAL, "f").unwrap();
        assert_eq!(c.server.failed_retention, defaults::FAILED_RETENTION);
        for (text, kept) in [("0", 0), ("31536000", 31_536_000)] {
            let c = Config::parse(
                &format!("[server]\nfailed_retention_s = {text}\n{MINIMAL}"),
                "f",
            );
            assert_eq!(
                c.unwrap().server.failed_retention,
                Duration::from_secs(kept)
            );
        }
        for bad in [
            "max_head_bytes = 100",
            "max_headers = 0",
            "max_connections = 0",
            "idle_timeout_ms = 1",
            "log_requests_per_s = -1",
            "log_requests_per_s = 1000001",
            "failed_retention_s = -1",
            "failed_retention_s = 31536001",
        ] {
            let e = parse_err(&format!("[server]\n{bad}\n{MINIMAL}"));
            assert!(e.contains("out of range"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_body_memory_bound_is_read_within_its_range_and_above_max_body_bytes() {
        let memory = |text: &str| {
            Config::parse(&format!("[server]\n{text}\n{MINIMAL}"), "f")
                .map(|c| (c.server.max_body_bytes, c.server.max_body_memory_bytes))
        };
        assert_eq!(memory("").unwrap(), (1 << 20, 64 << 20));
        // The largest body alone, at both ends of the range.
        for (text, pair) in [
            (
                "max_body_bytes = 1024\nmax_body_memory_bytes = 1024",
                (1024, 1024),
            ),
            (
                "max_body_memory_bytes = 1099511627776",
                (1 << 20, 1_099_511_627_776),
            ),
            // The largest max_body_bytes fits in the default.
            ("max_body_bytes = 67108864", (64 << 20, 64 << 20)),
        ] {
            assert_eq!(memory(text).unwrap(), pair, "{text}");
        }
        for bad in [
            "max_body_memory_bytes = 1023",
            "max_body_memory_bytes = 1099511627777",
        ] {
            let e = memory(bad).unwrap_err().to_string();
            assert!(
                e.contains("line 2: [server] max_body_memory_bytes = "),
                "{e}"
            );
            assert!(e.contains("out of range 1024..=1099511627776"), "{e}");
        }
        let e = memory("max_body_bytes = 4096\nmax_body_memory_bytes = 4095")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "line 3: [server] max_body_memory_bytes = 4095 is less than max_body_bytes = \
                 4096: a body of the largest size would never fit"
            ),
            "{e}"
        );
        assert!(memory("max_body_bytes = 4096\nmax_body_memory_bytes = 4096").is_ok());
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
    fn two_regions_on_one_platform_are_refused() {
        let second = MINIMAL.replace("id = \"2\"", "id = \"3\"");
        // The same URL, spelled differently: case, default port, trailing slash, credentials.
        for url in ["http://127.0.0.1:13000", "HTTP://u:p@127.0.0.1:13000/"] {
            let other = second.replace("http://127.0.0.1:13000/", url);
            let e = parse_err(&format!("{MINIMAL}{other}"));
            assert!(
                e.contains("line 18: region '3': mep.url = '")
                    && e.contains("is the platform of region '2' too"),
                "{url}: {e}"
            );
            assert!(!e.contains("u:p@"), "credentials masked: {e}");
        }
        // An alias of one region is the URL of the other.
        let e = parse_err(&format!(
            "{MINIMAL}aliases = [\"http://mep.example\"]\n{}",
            second.replace("http://127.0.0.1:13000/", "http://MEP.example:80")
        ));
        assert!(
            e.contains(
                "region '3': mep.url = 'http://MEP.example:80' is the platform of region '2'"
            ),
            "{e}"
        );
        // Another driver's rules are at other paths: allowed on one origin (a gateway).
        let etsi = second.replace("driver = \"llmec\"", "driver = \"etsi-mec011\"");
        assert!(Config::parse(&format!("{MINIMAL}{etsi}"), "f").is_ok());
        // Another port, path or scheme is another platform; simulated regions are their own.
        for url in [
            "http://127.0.0.1:13001",
            "http://127.0.0.1:13000/other",
            "https://127.0.0.1:13000",
        ] {
            let other = second.replace("http://127.0.0.1:13000/", url);
            assert!(
                Config::parse(&format!("{MINIMAL}{other}"), "f").is_ok(),
                "{url}"
            );
        }
        let simulated = |id: &str| {
            format!(
                "[[region]]\nid = \"{id}\"\nlatitude = 1.0\nlongitude = 1.0\nrange_km = 1.0\n\
                 [region.mep]\ndriver = \"simulated\"\n"
            )
        };
        let two = format!("{}{}", simulated("a"), simulated("b"));
        assert!(Config::parse(&two, "f").is_ok());
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
        assert!(
            e.contains("range_km = 0 must be a finite number greater than 0"),
            "{e}"
        );
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
    fn a_password_holding_a_slash_is_refused_and_never_shown() {
        for url in [
            "http://alice:12/34@127.0.0.1:13001",
            "http://alice:Xy/Ss@127.0.0.1:13001",
            "http://alice:Xy?Ss@127.0.0.1:13001",
            "http://alice:Xy#Ss@127.0.0.1:13001",
            "http//alice:XySs@127.0.0.1:13001",
        ] {
            let e = parse_err(&MINIMAL.replace("http://127.0.0.1:13000/", url));
            assert!(e.contains("line 9: region '2': mep.url"), "{url}: {e}");
            assert!(e.contains("***@127.0.0.1:13001"), "{url}: {e}");
            for secret in ["34", "Xy", "Ss", "alice"] {
                assert!(!e.contains(secret), "{url}: {e}");
            }
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

    /// Review 3, M2: a key that is not the certificate's, or an encrypted one, passed
    /// `--check` and failed only at the listener (exit 1, no file or line: a restart loop
    /// under systemd). Loading the configuration now refuses it, naming the key and its line.
    #[test]
    fn a_tls_key_that_does_not_fit_the_certificate_or_is_encrypted_is_a_configuration_error() {
        let dir = std::env::temp_dir().join(format!("mec-config-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key, other) = crate::util::self_signed();
        std::fs::write(dir.join("cert.pem"), &cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        std::fs::write(dir.join("other.pem"), other).unwrap();
        std::fs::write(
            dir.join("enc.pem"),
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHDBOBgkqhkiG9w0BBQ0w\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap();
        let file = dir.join("regions.toml").display().to_string();
        let with = |key: &str| {
            format!("[server]\ntls_cert = \"cert.pem\"\ntls_key = \"{key}\"\n{MINIMAL}")
        };
        let c = Config::parse(&with("key.pem"), &file).unwrap();
        assert!(c.server.tls.is_some());
        let e = Config::parse(&with("other.pem"), &file)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "line 3: [server] tls_key = 'other.pem' is not the key of the first certificate in tls_cert"
            ),
            "{e}"
        );
        let e = Config::parse(&with("enc.pem"), &file)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 3: [server] tls_key = 'enc.pem' holds an encrypted private key"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bad_tls_key_is_an_error_naming_tls_key_and_a_bad_chain_one_naming_tls_cert() {
        let (cert, key, other_key) = crate::util::self_signed();
        let with = |cert: &str, key: &str| TlsFiles::new(cert.as_bytes().to_vec(), key);
        assert!(with(&cert, &key).is_ok());
        for bad in [
            "-----BEGIN PRIVATE KEY-----\nnot a key!\n-----END PRIVATE KEY-----\n",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            other_key.as_str(),
            "no PEM at all",
        ] {
            let Err((which, what)) = with(&cert, bad) else {
                panic!("accepted {bad}");
            };
            assert_eq!(which, "tls_key", "{what}");
        }
        let Err((which, what)) = with(
            "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
            &key,
        ) else {
            panic!("accepted");
        };
        assert_eq!(which, "tls_cert", "{what}");
    }

    /// Review 3, M3: `--check` passed a `state_dir` whose parent is missing, or a regular
    /// file, which the start then refused (exit 1). Loading refuses them, naming the key and
    /// its line (or `--state-dir`), and creates nothing.
    #[test]
    fn a_state_dir_that_is_a_file_or_has_no_parent_is_refused_by_loading_without_creating_it() {
        let dir = std::env::temp_dir().join(format!("mec-config-statedir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("afile"), "x").unwrap();
        let path = dir.join("regions.toml");
        let load = |state_dir: &str, over: Option<&Path>| {
            let text = format!(
                "[server]\nlisten = \"127.0.0.1:1\"\nstate_dir = \"{state_dir}\"\n{MINIMAL}"
            );
            std::fs::write(&path, text).unwrap();
            Config::load_with(&path, over).map_err(|e| e.to_string())
        };
        let e = load("typo/st", None).unwrap_err();
        assert!(
            e.contains(&format!(
                "line 3: [server] state_dir = '{}' does not exist and its parent directory {} does not exist either",
                dir.join("typo/st").display(),
                dir.join("typo").display()
            )),
            "{e}"
        );
        let e = load("afile", None).unwrap_err();
        assert!(
            e.contains(&format!(
                "line 3: [server] state_dir = '{}' exists and is not a directory",
                dir.join("afile").display()
            )),
            "{e}"
        );
        let e = load("afile/st", None).unwrap_err();
        assert!(
            e.contains("its parent") && e.contains("is not a directory"),
            "{e}"
        );
        // Created at the start, not here; an existing one is fine.
        assert_eq!(load("st", None).unwrap().server.state_dir, dir.join("st"));
        assert!(!dir.join("st").exists());
        assert!(load(".", None).is_ok());
        // --state-dir replaces the key, and is checked in its place.
        let over = dir.join("nope/st");
        let e = load("afile", Some(&over)).unwrap_err();
        assert!(
            e.starts_with(&format!(
                "command line: --state-dir '{}' does not exist",
                over.display()
            )),
            "{e}"
        );
        assert_eq!(load("afile", Some(&dir)).unwrap().server.state_dir, dir);
        assert!(!dir.join("typo").exists() && !dir.join("nope").exists());
        let _ = std::fs::remove_dir_all(&dir);
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

    /// A fresh directory for token files (`tag` names it), and the configuration file's name.
    fn token_dir(tag: &str) -> (std::path::PathBuf, String) {
        let dir = std::env::temp_dir().join(format!("mec-config-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("regions.toml").display().to_string();
        (dir, file)
    }

    /// The minimal configuration with the northbound `token_file` `name`.
    fn server_token(name: &str) -> String {
        format!("[server]\ntoken_file = \"{name}\"\n{MINIMAL}")
    }

    /// The minimal configuration with region 2's platform `token_file` `name`.
    fn platform_token(name: &str) -> String {
        MINIMAL.replace("url = ", &format!("token_file = \"{name}\"\nurl = "))
    }

    #[test]
    fn a_platform_token_is_at_most_16000_bytes_and_other_tokens_are_not_bounded() {
        let (dir, file) = token_dir("long");
        // Surrounding whitespace is not part of the token.
        let at = format!(" {}\n", "t".repeat(MAX_PLATFORM_TOKEN_BYTES));
        std::fs::write(dir.join("at"), at).unwrap();
        std::fs::write(dir.join("past"), "t".repeat(MAX_PLATFORM_TOKEN_BYTES + 1)).unwrap();
        for text in [
            server_token("at"),
            platform_token("at"),
            server_token("past"),
        ] {
            Config::parse(&text, &file).unwrap();
        }
        let e = Config::parse(&platform_token("past"), &file)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "region '2': mep.token_file = 'past' holds a token of 16001 bytes: at most 16000"
            ),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tokens_must_be_visible_ascii() {
        let (dir, file) = token_dir("ascii");
        std::fs::write(dir.join("good"), "A-z0~9!._\n").unwrap();
        for text in [server_token("good"), platform_token("good")] {
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
                (server_token(name), "[server] token_file"),
                (platform_token(name), "region '2': mep.token_file"),
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

    /// The keys a table accepts, as its "unknown field" error lists them.
    fn accepted_keys(table: &str, prefix: &str) -> Vec<String> {
        let e = parse_err(&table.replace("@", "zz_unknown = 1"));
        let (_, list) = e
            .split_once("expected one of ")
            .unwrap_or_else(|| panic!("{e}"));
        list.split(", ")
            .map(|k| format!("{prefix}{}", k.trim_matches('`')))
            .collect()
    }

    /// README's configuration table: (key, default) per row; a row naming two keys
    /// (`a` / `b`, the second maybe relative to the first's table) gives one for each, the
    /// default split the same way when it is.
    fn readme_defaults() -> Vec<(String, String)> {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md is readable");
        let section = readme
            .split("\n## Configuration\n")
            .nth(1)
            .expect("README has a Configuration section");
        let section = section.split("\n## ").next().unwrap();
        let mut rows = Vec::new();
        for line in section.lines().filter(|l| l.starts_with("| `")) {
            let mut cells = line.trim_start_matches("| ").splitn(3, " | ");
            let (keys, default) = (cells.next().unwrap(), cells.next().unwrap());
            let keys: Vec<&str> = keys.split(" / ").map(|k| k.trim_matches('`')).collect();
            let defaults: Vec<&str> = default.split(" / ").collect();
            for (i, key) in keys.iter().enumerate() {
                let key = if key.contains('.') {
                    key.to_string()
                } else {
                    let table = keys[0].rsplit_once('.').unwrap().0;
                    format!("{table}.{key}")
                };
                let default = if defaults.len() == keys.len() {
                    defaults[i]
                } else {
                    default
                };
                rows.push((key, default.to_string()));
            }
        }
        rows
    }

    /// Every key README's table must list, with the default it must show: from
    /// [`defaults`], as README spells it, or `–` for keys that have none.
    fn expected_defaults() -> Vec<(&'static str, String)> {
        let code = |v: &dyn fmt::Display| format!("`{v}`");
        let quoted = |v: &dyn fmt::Display| format!("`\"{v}\"`");
        let ms = |d: Duration| code(&d.as_millis());
        let none = "–".to_string();
        let required = "– (required)".to_string();
        vec![
            ("server.listen", quoted(&defaults::LISTEN)),
            ("server.state_dir", quoted(&defaults::STATE_DIR)),
            ("server.workers", code(&defaults::WORKERS)),
            (
                "server.api_style",
                quoted(&format!("{:?}", defaults::API_STYLE).to_lowercase()),
            ),
            ("server.max_body_bytes", code(&defaults::MAX_BODY_BYTES)),
            (
                "server.max_body_memory_bytes",
                code(&defaults::MAX_BODY_MEMORY_BYTES),
            ),
            ("server.read_timeout_ms", ms(defaults::READ_TIMEOUT)),
            ("server.idle_timeout_ms", ms(defaults::IDLE_TIMEOUT)),
            ("server.max_head_bytes", code(&defaults::MAX_HEAD_BYTES)),
            ("server.max_headers", code(&defaults::MAX_HEADERS)),
            ("server.max_connections", code(&defaults::MAX_CONNECTIONS)),
            (
                "server.log_requests_per_s",
                code(&defaults::LOG_REQUESTS_PER_S),
            ),
            (
                "server.connection_threads",
                code(&defaults::CONNECTION_THREADS),
            ),
            ("server.fsync", code(&defaults::FSYNC)),
            ("server.retry_initial_ms", ms(defaults::RETRY_INITIAL)),
            ("server.retry_max_ms", ms(defaults::RETRY_MAX)),
            ("server.token_file", none.clone()),
            ("server.tls_cert", none.clone()),
            ("server.tls_key", none.clone()),
            ("server.max_requests", code(&defaults::MAX_REQUESTS)),
            (
                "server.failed_retention_s",
                code(&defaults::FAILED_RETENTION.as_secs()),
            ),
            ("region.id", required.clone()),
            (
                "region.description",
                format!("`{:?}`", defaults::DESCRIPTION),
            ),
            ("region.latitude", required.clone()),
            ("region.longitude", required.clone()),
            ("region.altitude", format!("`{:?}`", defaults::ALTITUDE)),
            ("region.range_km", required.clone()),
            ("region.mep.driver", required.clone()),
            ("region.mep.url", "– (required but for `simulated`)".into()),
            ("region.mep.timeout_ms", ms(defaults::TIMEOUT)),
            ("region.mep.ca_file", none.clone()),
            ("region.mep.token_file", none.clone()),
            ("region.mep.poll_interval_ms", ms(defaults::POLL_INTERVAL)),
            ("region.mep.poll_attempts", code(&defaults::POLL_ATTEMPTS)),
            (
                "region.mep.app_name",
                format!("`{}<RequestId>`", crate::mep::edgegallery::APP_NAME_PREFIX),
            ),
            ("region.mep.max_calls", code(&defaults::MAX_CALLS)),
            (
                "region.mep.settle_ms",
                format!("{} × `timeout_ms`", defaults::SETTLE_TIMEOUTS),
            ),
            ("region.mep.aliases", "`[]`".into()),
            ("store.kind", quoted(&defaults::STORE_KIND)),
            ("store.endpoints", "– (required with `etcd`)".into()),
            ("store.prefix", quoted(&defaults::STORE_PREFIX)),
            ("store.lease_ttl_s", code(&defaults::LEASE_TTL_S)),
            ("store.advertise_url", "– (required with `etcd`)".into()),
            ("store.ca_file", none.clone()),
            ("store.user", none.clone()),
            ("store.password_file", none.clone()),
        ]
    }

    #[test]
    fn the_readme_table_shows_every_key_with_its_default() {
        let expected = expected_defaults();
        let readme = readme_defaults();
        for (key, default) in &expected {
            let row = readme.iter().find(|(k, _)| k == key);
            let Some((_, shown)) = row else {
                panic!("README's configuration table has no row for {key}");
            };
            assert_eq!(shown, default, "README's default of {key}");
        }
        let mut documented: Vec<&str> = readme.iter().map(|(k, _)| k.as_str()).collect();
        let mut listed: Vec<&str> = expected.iter().map(|(k, _)| *k).collect();
        let mut accepted = accepted_keys(&format!("[server]\n@\n{MINIMAL}"), "server.");
        accepted.extend(accepted_keys(
            &MINIMAL.replace("range_km = 10.0", "range_km = 10.0\n@"),
            "region.",
        ));
        accepted.extend(accepted_keys(
            &MINIMAL.replace("url = ", "@\nurl = "),
            "region.mep.",
        ));
        accepted.extend(accepted_keys(&format!("[store]\n@\n{MINIMAL}"), "store."));
        accepted.retain(|k| k != "region.mep");
        let mut accepted: Vec<&str> = accepted.iter().map(String::as_str).collect();
        for keys in [&mut documented, &mut listed, &mut accepted] {
            keys.sort_unstable();
        }
        assert_eq!(documented, accepted, "README documents every key, once");
        assert_eq!(listed, accepted, "this test checks every key's default");
    }

    /// `[store]` with `body` before MINIMAL.
    fn store(body: &str) -> Result<StoreConfig, ConfigError> {
        Config::parse(&format!("[store]\n{body}\n{MINIMAL}"), "regions.toml").map(|c| c.store)
    }

    const ETCD: &str = "kind = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nadvertise_url = \"http://10.0.0.1:8082\"";

    #[test]
    fn the_store_is_the_journal_unless_configured() {
        let c = Config::parse(MINIMAL, "f").unwrap();
        assert_eq!(c.store.kind, StoreKind::Journal);
        assert_eq!(c.store.prefix, "/mec-plugin");
        assert_eq!(c.store.lease_ttl_s, 5);
        assert!(c.store.endpoints.is_empty() && c.store.advertise_url.is_none());
        let s = store("kind = \"journal\"").unwrap();
        assert_eq!(s.kind, StoreKind::Journal);
    }

    #[test]
    fn an_etcd_store_reads_every_key() {
        let dir = std::env::temp_dir().join(format!("mec-store-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), "-----BEGIN CERTIFICATE-----\nx\n").unwrap();
        std::fs::write(dir.join("pw"), "s3cret\n").unwrap();
        let text = format!(
            "[store]\nkind = \"etcd\"\nendpoints = [\"https://a:2379/\", \"http://[::1]:2379\"]\nprefix = \"/a/b\"\nlease_ttl_s = 60\nadvertise_url = \"https://h1:8443/\"\nca_file = \"ca.pem\"\nuser = \"root\"\npassword_file = \"pw\"\n{MINIMAL}"
        );
        let file = dir.join("regions.toml");
        let s = Config::parse(&text, file.to_str().unwrap()).unwrap().store;
        assert_eq!(s.kind, StoreKind::Etcd);
        assert_eq!(s.endpoints, ["https://a:2379", "http://[::1]:2379"]);
        assert_eq!(s.prefix, "/a/b");
        assert_eq!(s.lease_ttl_s, 60);
        assert_eq!(s.advertise_url.as_deref(), Some("https://h1:8443"));
        assert_eq!(s.ca_file, Some(dir.join("ca.pem")));
        assert_eq!(s.user.as_deref(), Some("root"));
        assert_eq!(s.password_file, Some(dir.join("pw")));
        let _ = std::fs::remove_dir_all(&dir);
        let s = store(ETCD).unwrap();
        assert_eq!((s.prefix.as_str(), s.lease_ttl_s), ("/mec-plugin", 5));
        let c = Config::parse(&format!("[store]\n{ETCD}\n{MINIMAL}"), "f").unwrap();
        assert_eq!(
            c.summary()[0],
            "store: etcd at http://127.0.0.1:2379 under /mec-plugin (lease 5 s), advertised as http://10.0.0.1:8082"
        );
        assert_eq!(
            store(&format!("{ETCD}\nlease_ttl_s = 1"))
                .unwrap()
                .lease_ttl_s,
            1
        );
    }

    #[test]
    fn a_bad_store_key_is_refused_with_its_line() {
        let err = |body: &str| store(body).unwrap_err().to_string();
        let cases: &[(&str, &str)] = &[
            ("kind = \"raft\"", "line 2: [store] kind = 'raft' must be"),
            (
                "kind = \"etcd\"\nadvertise_url = \"http://h:1\"",
                "[store] endpoints is required",
            ),
            (
                "kind = \"etcd\"\nendpoints = [\"http://e:2379\"]",
                "[store] advertise_url is required",
            ),
            (
                "endpoints = []",
                "line 2: [store] endpoints must list at least one URL",
            ),
            ("endpoints = [\"e:2379\"]", "[store] endpoints 'e:2379'"),
            (
                "endpoints = [\"ftp://e\"]",
                "must start with http:// or https://",
            ),
            ("advertise_url = \"h:1\"", "[store] advertise_url"),
            (
                "advertise_url = \"http://h:1/?q\"",
                "must not have a query string",
            ),
            (
                "advertise_url = \"http://h:1/MEC/v1\"",
                "has path '/MEC/v1': give scheme://host:port only",
            ),
            (
                "lease_ttl_s = 0",
                "[store] lease_ttl_s = 0 is out of range 1..=60",
            ),
            (
                "lease_ttl_s = 61",
                "[store] lease_ttl_s = 61 is out of range 1..=60",
            ),
            (
                "prefix = \"mec\"",
                "[store] prefix = 'mec' must start with '/'",
            ),
            ("prefix = \"/\"", "[store] prefix = '/'"),
            ("prefix = \"/a/\"", "[store] prefix = '/a/'"),
            ("prefix = \"/a//b\"", "[store] prefix"),
            ("prefix = \"/a b\"", "[store] prefix"),
            (
                "user = \"u\"",
                "[store] user and password_file must be given together",
            ),
            (
                "password_file = \"pw\"",
                "[store] user and password_file must be given together",
            ),
            (
                "user = \"u\"\npassword_file = \"/nonexistent/pw\"",
                "[store] password_file",
            ),
            (
                "ca_file = \"/nonexistent/ca\"",
                "[store] ca_file = '/nonexistent/ca': cannot read",
            ),
            ("zz = 1", "unknown field `zz`"),
        ];
        for (body, expected) in cases {
            let e = err(body);
            assert!(e.contains(expected), "{body}: {e}");
        }
        assert!(err(&format!("{ETCD}\nprefix = \"{}\"", "/x".repeat(129))).contains("prefix"));
    }

    #[test]
    fn a_line_is_found_by_the_key_path_of_its_value() {
        let text = format!(
            "[server]\n\nconnection_threads = 8\n{MINIMAL}[store]\nendpoints = [\n\"a\",\n\"b\"]\n"
        );
        let server = Table::new(&text, "f", "[server] ", [At::Key("server")]);
        assert_eq!(server.line(&[At::Key("connection_threads")]), 3);
        assert_eq!(server.line(&[]), 1);
        let store = Table::new(&text, "f", "[store] ", [At::Key("store")]);
        let b = [At::Key("endpoints"), At::Item(1)];
        assert_eq!((store.line(&[]), store.line(&b)), (13, 16));
        let region = Table::new(&text, "f", "", [At::Key("region"), At::Item(0)]);
        assert_eq!(region.line(&[At::Key("range_km")]), 9);
        assert_eq!(region.table("mep", "").line(&[At::Key("url")]), 12);
    }

    #[test]
    fn a_config_without_regions_is_refused() {
        assert!(parse_err("[server]\n").contains("no [[region]]"));
    }
}
