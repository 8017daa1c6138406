//! The one outbound HTTP client every MEP driver uses: bounded in time and size, deaf to proxy
//! environment variables, and the single place where per-MEP transport settings (TLS trust and
//! a bearer token) are put together.
//!
//! Guarantees of [`MepClient::send`] and [`MepClient::send_with`]:
//! - it returns within the region's `timeout` (connect, TLS handshake, request, answer and body
//!   included), plus scheduling noise;
//! - it never goes through a proxy, whatever `http_proxy`, `HTTPS_PROXY`, `ALL_PROXY` or
//!   `NO_PROXY` say: MEPs sit next to the plugin, and a proxy picked up from a service manager's
//!   environment would silently reroute (and could log) southbound calls;
//! - it never follows redirects (a 3xx is a refusal): credentials must not travel to another
//!   host, and a POST must not silently become a GET;
//! - it reads at most [`MAX_ANSWER_BYTES`] of an answer;
//! - it tells a failure before any byte of the request was written (connection refused, name
//!   resolution, TLS handshake, connect timeout: [`MepError::NotSent`], which the platform
//!   cannot have acted on) from one after (`Unreachable`, `Timeout`: the outcome is unknown).
//!   ureq's errors do not say which it was, so every byte goes through `Coalesced`, which
//!   notes on the calling thread that the request started to be written; conservative: a byte
//!   handed to a failing write counts as written;
//! - `https://` is verified, always: against exactly the certificates of the region's
//!   `ca_file` when one is configured (the host's trust store is then *not* trusted), else
//!   against the host's trust store (read once per process, at the first client that needs it:
//!   see `host_roots`; a plain `http://` MEP without `ca_file` trusts nothing, so the store is
//!   not read for it). No roots are compiled into the binary. There is no setting that skips
//!   verification, and a `ca_file` holding no usable certificate trusts nothing (every HTTPS
//!   call fails) rather than falling back to the host's store;
//! - with a `token_file`, every call carries `Authorization: Bearer <token>`;
//! - it logs each call at debug level (method, URL, status, milliseconds) and never logs
//!   credentials: the token appears in no log line, error or `Debug` output (it is held as a
//!   header value marked sensitive, and the client's `Debug` only says whether one is set),
//!   and user information in a URL is masked in logs and in errors. (ureq's own *trace* level
//!   dumps the wire unredacted; the plugin never enables trace logging for it.)

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use log::{error, warn};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use ureq::Agent;
use ureq::http::{self, HeaderValue, Method};
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, DefaultConnector, NextTimeout, Transport,
};

use super::MepError;
use crate::config::MepConfig;
use crate::util::redact;

/// Largest answer body read from a MEP.
pub const MAX_ANSWER_BYTES: u64 = 1024 * 1024;

/// Longest `detail` kept from an error answer, in characters.
const MAX_DETAIL_CHARS: usize = 200;

/// A 2xx answer of [`MepClient::send_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    /// The answer's `ETag` header, if it has one (and it is text).
    pub etag: Option<String>,
}

/// Which certificates `https://` calls are verified against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// The host's trust store (an `https://` URL and no `ca_file`), see `host_roots`.
    HostStore,
    /// Exactly the certificates of the region's `ca_file` (how many were usable).
    PrivateCa { certificates: usize },
    /// No certificate (an `http://` URL and no `ca_file`): the host's store is not read for
    /// a client that makes no `https://` call, and a stray one fails verification.
    Nothing,
}

/// The `Authorization` header of every call.
enum Credential {
    None,
    /// `Bearer <token>`, marked sensitive.
    Bearer(HeaderValue),
    /// The token cannot be written in a header (not visible ASCII); every call fails saying
    /// so. (The configuration refuses such tokens; this is a second line of defence.)
    Unusable,
}

/// An HTTP client for one MEP. Cheap to share (`&self` everywhere); connections are pooled.
pub struct MepClient {
    agent: Agent,
    base_url: String,
    timeout: Duration,
    trust: Trust,
    credential: Credential,
}

/// Written by hand so that no credential can end up in a `{:?}`.
impl fmt::Debug for MepClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token = match self.credential {
            Credential::None => "none",
            Credential::Bearer(_) => "set",
            Credential::Unusable => "unusable",
        };
        f.debug_struct("MepClient")
            .field("base_url", &redact(&self.base_url))
            .field("timeout", &self.timeout)
            .field("trust", &self.trust)
            .field("token", &token)
            .finish_non_exhaustive()
    }
}

/// Idle keep-alive connections kept per platform (each region has its own client).
const IDLE_CONNECTIONS_PER_MEP: usize = 32;

/// Wraps every platform connection in a [`Coalesced`] transport.
#[derive(Debug)]
struct Coalescing;

impl Connector<Box<dyn Transport>> for Coalescing {
    type Out = Coalesced;

    fn connect(
        &self,
        _: &ConnectionDetails,
        chained: Option<Box<dyn Transport>>,
    ) -> Result<Option<Coalesced>, ureq::Error> {
        Ok(chained.map(|inner| Coalesced {
            inner,
            pending: Vec::new(),
        }))
    }
}

thread_local! {
    /// Whether the call running on this thread has written any byte of its request to a
    /// connection (set by [`Coalesced`], through which every byte goes; reset by
    /// [`MepClient::send_with`]). ureq runs a call's I/O on the calling thread, and opens the
    /// connection (TCP connect, TLS handshake) before any byte reaches a [`Coalesced`]: a
    /// failure while this is false happened before the request was written.
    static WRITTEN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Holds what ureq transmits until it waits for the answer, then sends it in one write. ureq
/// transmits a request's head and its body separately: two segments, and a platform that
/// reads the head, sleeps and is woken again for the body (measured with the bench: one
/// `sendto` in five per durable POST, and their costliest part, loopback delivery).
struct Coalesced {
    inner: Box<dyn Transport>,
    pending: Vec<u8>,
}

/// The bound on a platform's answer head (status line and headers) and on each line of the
/// head of a request to it, instead of ureq's 64 KiB and 128 KiB: ureq sizes a connection's
/// buffers by them (here 32 KiB in, 16 KiB out, instead of 128 KiB each) and fills them with
/// zeros when the connection is first used, so that every worker that had called a platform
/// held ~400 kB more (2 MB of RssAnon after the README's requests on one LL-MEC region,
/// BENCHMARKS.md "Footprint"). Bodies pass through the buffers in pieces and are not bounded
/// by this. Platform heads are a few hundred bytes; a platform's `token_file` is at most
/// `config::MAX_PLATFORM_TOKEN_BYTES`, so its header line fits (checked below). The etcd
/// client and a follower's forwarding keep ureq's bounds (`None`): they carry heads a
/// northbound client sent.
pub(crate) const PLATFORM_HEAD_BYTES: usize = 16 * 1024;

/// ureq writes a head line by line through the output buffer and keeps two bytes of it spare
/// (`a_header_line_up_to_the_bound_is_sent_and_a_longer_one_is_not`).
const _: () = assert!(
    "authorization: Bearer \r\n".len() + crate::config::MAX_PLATFORM_TOKEN_BYTES + 2
        <= PLATFORM_HEAD_BYTES
);

/// Held bytes beyond which they are sent without waiting for the rest of the request.
const COALESCE_BYTES: usize = 64 * 1024;

impl Coalesced {
    fn send_pending(&mut self, timeout: NextTimeout) -> Result<(), ureq::Error> {
        if !self.pending.is_empty() {
            // Before the write: a write that fails part-way may still have reached the peer.
            WRITTEN.set(true);
        }
        let mut sent = 0;
        while sent < self.pending.len() {
            let output = self.inner.buffers().output();
            let n = output.len().min(self.pending.len() - sent);
            output[..n].copy_from_slice(&self.pending[sent..sent + n]);
            self.inner.transmit_output(n, timeout)?;
            sent += n;
        }
        self.pending.clear();
        Ok(())
    }
}

impl fmt::Debug for Coalesced {
    // Not the held bytes: they may carry the bearer token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalesced")
            .field("inner", &self.inner)
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl Transport for Coalesced {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        let output = &self.inner.buffers().output()[..amount];
        self.pending.extend_from_slice(output);
        if self.pending.len() >= COALESCE_BYTES {
            self.send_pending(timeout)?;
        }
        Ok(())
    }

    fn maybe_await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.send_pending(timeout)?;
        self.inner.maybe_await_input(timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.send_pending(timeout)?;
        self.inner.await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        self.inner.is_open()
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}

/// Resolves IP-literal hosts without a lookup. ureq resolves the host of every call before it
/// looks into its connection pool, and with a timeout set its default resolver does that on a
/// new thread each time — a thread per platform call even for `127.0.0.1` (measured: ~11% of
/// the CPU of a durable creation). Names still go through the default resolver.
#[derive(Debug)]
pub(crate) struct LiteralResolver;

impl Resolver for LiteralResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let literal = uri.authority().and_then(|a| {
            let host = a.host().trim_start_matches('[').trim_end_matches(']');
            let port = a.port_u16().or_else(|| match uri.scheme_str() {
                Some("https") => Some(443),
                Some("http") => Some(80),
                _ => None,
            })?;
            Some(SocketAddr::new(host.parse::<IpAddr>().ok()?, port))
        });
        match literal {
            Some(addr) => {
                let mut addrs = self.empty();
                addrs.push(addr);
                Ok(addrs)
            }
            None => DefaultResolver::default().resolve(uri, config, timeout),
        }
    }
}

impl MepClient {
    /// Builds the client for a region's `[region.mep]` section.
    pub fn new(mep: &MepConfig) -> MepClient {
        let base_url = mep.url.trim_end_matches('/').to_string();
        let shown = redact(&base_url);
        let (tls, trust, unreadable) = tls_trusting(mep.ca_pem.as_deref(), is_https(&base_url));
        if unreadable > 0 {
            warn!(
                "MEP {shown}: {unreadable} certificate(s) of the CA file could not be read and are not trusted"
            );
        }
        if trust == (Trust::PrivateCa { certificates: 0 }) {
            error!(
                "MEP {shown}: the CA file holds no usable certificate: every https call to this MEP will fail"
            );
        }
        let credential = match &mep.token {
            None => Credential::None,
            Some(token) => match HeaderValue::from_str(&format!("Bearer {}", token.expose())) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    if has_scheme(&base_url, "http://") {
                        warn!(
                            "MEP {shown}: the bearer token is sent over plain http; use an https:// URL"
                        );
                    }
                    Credential::Bearer(value)
                }
                Err(_) => {
                    error!(
                        "MEP {shown}: the token cannot be sent in an HTTP header (it holds characters other than visible ASCII): every call to this MEP will fail"
                    );
                    Credential::Unusable
                }
            },
        };
        // ureq keeps 3 idle connections per host by default: fewer than the workers that call
        // one platform at once, so connections would be opened and closed constantly.
        let config = outbound_config(
            tls,
            mep.timeout,
            IDLE_CONNECTIONS_PER_MEP,
            IDLE_CONNECTIONS_PER_MEP,
            Some(PLATFORM_HEAD_BYTES),
        );
        MepClient {
            agent: Agent::with_parts(
                config,
                DefaultConnector::default().chain(Coalescing),
                LiteralResolver,
            ),
            base_url,
            timeout: mep.timeout,
            trust,
            credential,
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

    /// What `https://` calls are verified against.
    pub fn trust(&self) -> Trust {
        self.trust
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
    /// the answer (see [`send_with`](Self::send_with)).
    pub fn send(
        &self,
        method: &str,
        url: &str,
        json_body: Option<&str>,
    ) -> Result<(u16, String), MepError> {
        self.send_with(method, url, json_body, &[])
            .map(|answer| (answer.status, answer.body))
    }

    /// [`send`](Self::send) with extra request headers (e.g. `If-Match`, `X-AppinstanceID`),
    /// giving the whole 2xx [`Answer`], its `ETag` included. Any other status is
    /// [`MepError::Refused`] whose detail is taken from the answer: the `detail` (else `title`)
    /// of a JSON (ProblemDetails) object, followed by `(MEP code N)` when the object's `status`
    /// holds a code other than the HTTP status (EdgeGallery puts its own error codes there);
    /// else the answer's first 200 characters.
    pub fn send_with(
        &self,
        method: &str,
        url: &str,
        json_body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, MepError> {
        let shown = redact(url);
        let started = Instant::now();
        let result = self.exchange(method, url, json_body, headers, &shown);
        let ms = started.elapsed().as_millis();
        match &result {
            Ok(answer) => debug!("MEP call {method} {shown} -> {} in {ms} ms", answer.status),
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
        headers: &[(&str, &str)],
        shown: &str,
    ) -> Result<Answer, MepError> {
        let invalid = |reason: String| MepError::NotSent {
            url: shown.to_string(),
            reason,
        };
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| invalid(format!("invalid HTTP method '{method}'")))?;
        let mut builder = http::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        match &self.credential {
            Credential::None => {}
            Credential::Bearer(value) => {
                builder = builder.header(http::header::AUTHORIZATION, value.clone());
            }
            Credential::Unusable => {
                return Err(invalid(
                    "the configured token cannot be sent in an HTTP header (it holds characters other than visible ASCII)".into(),
                ));
            }
        }
        WRITTEN.set(false);
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
        let mut response = sent.map_err(|e| classify(e, shown, WRITTEN.get()))?;
        let status = response.status().as_u16();
        let etag = response
            .headers()
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // Redirects are never followed (a platform's URL is configured, not discovered), but
        // where one pointed tells the operator what is wrong: `http://` for `https://`, a
        // base path missing a segment.
        let location = match status {
            300..=399 => response
                .headers()
                .get(http::header::LOCATION)
                .map(|v| redact(&String::from_utf8_lossy(v.as_bytes()))),
            _ => None,
        };
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_vec();
        if (200..300).contains(&status) {
            // The platform said yes; an answer we cannot read leaves the outcome uncertain,
            // which `Unreachable`/`Timeout` (both "ambiguous") convey.
            let body = body.map_err(|e| classify(e, shown, true))?;
            Ok(Answer {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
                etag,
            })
        } else {
            let mut detail = match body {
                Ok(body) => detail_of(&String::from_utf8_lossy(&body), status),
                Err(ureq::Error::BodyExceedsLimit(_)) => "(answer larger than 1 MiB)".to_string(),
                Err(_) => String::new(),
            };
            if let Some(location) = location {
                let location: String = location.chars().take(200).collect();
                let sep = if detail.is_empty() { "" } else { "; " };
                detail = format!(
                    "{detail}{sep}redirected to '{location}' (not followed: fix the platform's url)"
                );
            }
            Err(MepError::Refused {
                url: shown.to_string(),
                status,
                detail,
            })
        }
    }
}

/// Whether `url` is an `https://` one (the scheme in any case).
pub(crate) fn is_https(url: &str) -> bool {
    has_scheme(url, "https://")
}

/// Whether `url` starts with `scheme` (`"http://"`, `"https://"`) in any case, as the
/// configuration accepts it.
pub(crate) fn has_scheme(url: &str, scheme: &str) -> bool {
    url.get(..scheme.len())
        .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
}

/// TLS for a client that calls an `https://` peer (`https`) or only `http://` ones: trusting
/// exactly the certificates of `ca_pem` (a private CA file) when there is one; else the host's
/// trust store if `https` ([`host_roots`], read at the first such client); else nothing, so
/// that the store is never read for plain-http peers and a stray `https://` call fails
/// verification. With what it trusts and how many certificate blocks of `ca_pem` could not
/// be read. The caller says what that means for the peer it calls.
pub(crate) fn tls_trusting(ca_pem: Option<&[u8]>, https: bool) -> (TlsConfig, Trust, usize) {
    let (roots, trust, unreadable) = match (ca_pem, https) {
        (Some(pem), _) => {
            let (certificates, unreadable) = private_roots(pem);
            let trust = Trust::PrivateCa {
                certificates: certificates.len(),
            };
            (RootCerts::new_with_certs(&certificates), trust, unreadable)
        }
        (None, true) => (host_roots(), Trust::HostStore, 0),
        (None, false) => (RootCerts::new_with_certs(&[]), Trust::Nothing, 0),
    };
    (
        TlsConfig::builder().root_certs(roots).build(),
        trust,
        unreadable,
    )
}

/// Load errors of the host's trust store logged one line each; the rest are counted.
const HOST_STORE_ERRORS_LOGGED: usize = 5;

/// The host's trust store (the OS's CA bundle and directory, as OpenSSL finds them, or
/// `SSL_CERT_FILE`/`SSL_CERT_DIR`), read at the first call and kept for the process: what
/// `https://` peers without a `ca_file` are verified against. Logs once how many certificates
/// it holds and where they came from, each error reading it (a few), and an error when it
/// holds none. Every client shares the one list.
pub(crate) fn host_roots() -> RootCerts {
    static HOST_ROOTS: OnceLock<RootCerts> = OnceLock::new();
    HOST_ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let certificates: Vec<Certificate<'static>> = found
                .certs
                .iter()
                .map(|der| Certificate::from_der(der.as_ref()).to_owned())
                .collect();
            let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
            for (level, line) in
                host_store_report(certificates.len(), &errors, &host_store_source())
            {
                log::log!(level, "{line}");
            }
            RootCerts::Specific(Arc::new(certificates))
        })
        .clone()
}

/// Where [`rustls_native_certs::load_native_certs`] reads: `SSL_CERT_FILE`/`SSL_CERT_DIR`
/// when either is set (and then only there), else the OS's file and directories found by
/// openssl-probe.
fn host_store_source() -> String {
    let file = std::env::var_os("SSL_CERT_FILE");
    let dirs = std::env::var_os("SSL_CERT_DIR").filter(|d| !d.is_empty());
    if file.is_some() || dirs.is_some() {
        let mut named = Vec::new();
        if let Some(file) = file {
            named.push(format!("SSL_CERT_FILE={}", file.to_string_lossy()));
        }
        if let Some(dirs) = dirs {
            named.push(format!("SSL_CERT_DIR={}", dirs.to_string_lossy()));
        }
        return named.join(", ");
    }
    let probe = openssl_probe::probe();
    let places: Vec<String> = probe
        .cert_file
        .iter()
        .chain(&probe.cert_dir)
        .map(|p| p.display().to_string())
        .collect();
    if places.is_empty() {
        "no CA file or directory in the OS's usual places".to_string()
    } else {
        places.join(", ")
    }
}

/// The log lines of a reading of the host's trust store that found `certificates` with
/// `errors`, from `source`: an info line, a warning per error (at most
/// [`HOST_STORE_ERRORS_LOGGED`], then one counting the rest), and an error when nothing was
/// found.
fn host_store_report(
    certificates: usize,
    errors: &[String],
    source: &str,
) -> Vec<(log::Level, String)> {
    let mut lines = vec![(
        log::Level::Info,
        format!(
            "read {certificates} certificate(s) from the host's trust store ({source}): what https peers without a ca_file are verified against"
        ),
    )];
    for error in errors.iter().take(HOST_STORE_ERRORS_LOGGED) {
        lines.push((
            log::Level::Warn,
            format!("host's trust store: {}", one_line(error, MAX_DETAIL_CHARS)),
        ));
    }
    if errors.len() > HOST_STORE_ERRORS_LOGGED {
        lines.push((
            log::Level::Warn,
            format!(
                "host's trust store: {} more error(s) not shown",
                errors.len() - HOST_STORE_ERRORS_LOGGED
            ),
        ));
    }
    if certificates == 0 {
        lines.push((
            log::Level::Error,
            "the host's trust store holds no certificate: every https call verified against it (a MEP or etcd endpoint without ca_file, a leader without [server] tls_cert) will fail; install the OS's CA package (ca-certificates), point SSL_CERT_FILE at a PEM bundle, or set ca_file".to_string(),
        ));
    }
    lines
}

/// The one outbound policy of the plugin's HTTP clients (platforms and etcd): never a proxy
/// from the environment (what `Config::default()` would take), no redirects, every status an
/// answer rather than an error, `timeout` for the whole call and for connecting, our user
/// agent, JSON accepted, and the given numbers of idle connections kept.
pub(crate) fn outbound_config(
    tls: TlsConfig,
    timeout: Duration,
    idle_per_host: usize,
    idle_total: usize,
    head_bytes: Option<usize>,
) -> ureq::config::Config {
    let builder = Agent::config_builder()
        .proxy(None)
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(timeout))
        .timeout_connect(Some(timeout))
        .tls_config(tls)
        .user_agent(concat!("mec-plugin/", env!("CARGO_PKG_VERSION")))
        .accept("application/json")
        .max_idle_connections_per_host(idle_per_host)
        .max_idle_connections(idle_total);
    match head_bytes {
        None => builder.build(),
        // The answer's head must be in the input buffer whole, with room to tell that it is
        // too long (an input buffer of the head's size fills up and then waits for the peer);
        // a request is written through the output buffer one header line at a time.
        Some(bytes) => builder
            .max_response_header_size(bytes)
            .input_buffer_size(2 * bytes)
            .output_buffer_size(bytes)
            .build(),
    }
}

/// The certificates of a PEM file (`ca_file`), and how many of its certificate blocks could
/// not be read. Other PEM blocks (keys, ...) are ignored.
fn private_roots(pem: &[u8]) -> (Vec<Certificate<'static>>, usize) {
    let mut certificates = Vec::new();
    let mut unreadable = 0;
    for item in CertificateDer::pem_slice_iter(pem) {
        match item {
            Ok(der) => certificates.push(Certificate::from_der(der.as_ref()).to_owned()),
            Err(_) => unreadable += 1,
        }
    }
    (certificates, unreadable)
}

/// Whether a transport error of a client that does not count written bytes came before the
/// request left (no connection, no name, a TLS handshake refused, a connect timeout), so
/// that the peer cannot have acted on it: the etcd client (try the next endpoint) and the
/// forwarding of a change to the leader (503 "nothing was sent") ask it. A TLS handshake
/// failure may come as an `io` error wrapping rustls' own.
pub fn never_left(e: &ureq::Error) -> bool {
    use std::io::ErrorKind;
    match e {
        ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::Tls(_)
        | ureq::Error::Rustls(_)
        | ureq::Error::BadUri(_)
        | ureq::Error::Timeout(ureq::Timeout::Resolve | ureq::Timeout::Connect) => true,
        ureq::Error::Io(io) => {
            matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::AddrNotAvailable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::HostUnreachable
            ) || io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(refused_handshake)
        }
        _ => false,
    }
}

/// A TLS failure only a handshake gives (the peer's certificate refused, or none): the
/// request, written after the handshake, never left.
fn refused_handshake(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::PeerIncompatible(_)
            | rustls::Error::InappropriateHandshakeMessage { .. }
    )
}

/// Maps a transport error: one before any byte of the request was `written` to `NotSent`,
/// else time limits to `Timeout` and everything else to `Unreachable`. Conservative: a byte
/// handed to the socket counts as written even if the write then failed.
fn classify(e: ureq::Error, url: &str, written: bool) -> MepError {
    let url = url.to_string();
    if !written {
        let reason = match e {
            ureq::Error::Timeout(_) => "no connection within the timeout".to_string(),
            // ureq-proto's `OutputOverflow`, which ureq does not name: a line of the head did
            // not fit the output buffer (`PLATFORM_HEAD_BYTES`).
            other if other.to_string().contains("output too small") => format!(
                "a line of the request's head is longer than {PLATFORM_HEAD_BYTES} bytes (its path, or a header)"
            ),
            other => one_line(&other.to_string(), MAX_DETAIL_CHARS),
        };
        return MepError::NotSent { url, reason };
    }
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

/// A short, single-line detail from an error answer with HTTP status `status`.
fn detail_of(body: &str, status: u16) -> String {
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(body) {
        let text = ["detail", "title"]
            .iter()
            .find_map(|key| match map.get(*key) {
                Some(serde_json::Value::String(text)) if !text.trim().is_empty() => Some(text),
                _ => None,
            });
        // The ProblemDetails `status` member: the HTTP status by the RFC, but EdgeGallery
        // writes its own error code there.
        let code = match map.get("status") {
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            _ => None,
        }
        .filter(|code| code.trim() != status.to_string());
        match (text, code) {
            (Some(text), None) => return one_line(text, MAX_DETAIL_CHARS),
            (Some(text), Some(code)) => {
                return format!(
                    "{} (MEP code {})",
                    one_line(text, MAX_DETAIL_CHARS),
                    one_line(&code, 20)
                );
            }
            (None, _) => {}
        }
    }
    one_line(body, MAX_DETAIL_CHARS)
}

/// At most `max` characters, control characters (newlines included) replaced by spaces, so
/// that a platform's answer cannot forge log lines.
pub(crate) fn one_line(text: &str, max: usize) -> String {
    text.trim()
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
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

    /// A transport that records what it is asked to transmit.
    #[derive(Debug)]
    struct Recorder {
        buffers: ureq::unversioned::transport::LazyBuffers,
        sent: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    }

    impl Transport for Recorder {
        fn buffers(&mut self) -> &mut dyn Buffers {
            &mut self.buffers
        }
        fn transmit_output(&mut self, amount: usize, _: NextTimeout) -> Result<(), ureq::Error> {
            let bytes = self.buffers.output()[..amount].to_vec();
            self.sent.lock().unwrap().push(bytes);
            Ok(())
        }
        fn await_input(&mut self, _: NextTimeout) -> Result<bool, ureq::Error> {
            Ok(false)
        }
        fn is_open(&mut self) -> bool {
            true
        }
    }

    #[test]
    fn a_request_is_transmitted_in_one_write_when_the_answer_is_awaited() {
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorder = Recorder {
            buffers: ureq::unversioned::transport::LazyBuffers::new(1024, 1024),
            sent: sent.clone(),
        };
        let mut t = Coalesced {
            inner: Box::new(recorder),
            pending: Vec::new(),
        };
        let timeout = NextTimeout {
            after: Duration::from_secs(1).into(),
            reason: ureq::Timeout::Global,
            per_read: None,
            per_write: None,
        };
        for part in [&b"POST / HTTP/1.1\r\n\r\n"[..], b"{\"a\":1}"] {
            t.buffers().output()[..part.len()].copy_from_slice(part);
            t.transmit_output(part.len(), timeout).unwrap();
        }
        assert!(
            sent.lock().unwrap().is_empty(),
            "held until the answer is awaited"
        );
        assert!(
            !format!("{t:?}").contains("POST"),
            "Debug shows no held bytes"
        );
        t.await_input(timeout).unwrap();
        assert_eq!(
            *sent.lock().unwrap(),
            [b"POST / HTTP/1.1\r\n\r\n{\"a\":1}".to_vec()]
        );

        // Large bodies are not held whole: at most COALESCE_BYTES, in output-sized writes.
        sent.lock().unwrap().clear();
        let chunk = vec![b'x'; 1024];
        for _ in 0..(COALESCE_BYTES / 1024) {
            t.buffers().output()[..1024].copy_from_slice(&chunk);
            t.transmit_output(1024, timeout).unwrap();
        }
        let writes = sent.lock().unwrap().len();
        assert_eq!(
            writes,
            COALESCE_BYTES / 1024,
            "sent once the limit was reached"
        );
        t.maybe_await_input(timeout).unwrap();
        assert_eq!(sent.lock().unwrap().len(), writes, "nothing left to send");
    }

    /// A one-shot server answering `answer` (raw HTTP) to the first connection; returns the
    /// base URL and a handle yielding the raw request it read.
    fn one_shot(answer: &str) -> (String, std::thread::JoinHandle<String>) {
        let answer = answer.to_string();
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

    /// An answer whose head is `head_bytes` long (a padding header), with a `{}` body.
    fn answer_with_head_of(head_bytes: usize) -> String {
        let start = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\nX-Pad: ";
        let pad = head_bytes - start.len() - "\r\n\r\n".len();
        format!("{start}{}\r\n\r\n{{}}", "p".repeat(pad))
    }

    #[test]
    fn an_answer_head_up_to_the_bound_is_read_and_a_longer_one_is_refused_saying_so() {
        for (head, ok) in [
            (PLATFORM_HEAD_BYTES, true),
            (PLATFORM_HEAD_BYTES + 1, false),
            // Past the input buffer (twice the bound): still the same error, not a wait.
            (3 * PLATFORM_HEAD_BYTES, false),
        ] {
            let (url, server) = one_shot(&answer_with_head_of(head));
            let client = MepClient::new(&mep(&url, 3000));
            let got = client.send("GET", &client.url("/x"), None);
            server.join().unwrap();
            match got {
                Ok(answer) => assert!(ok, "{head}: {answer:?}"),
                // Sent: the platform may have acted on it, so an unknown outcome.
                Err(MepError::Unreachable { reason, .. }) => {
                    assert!(!ok, "{head}: {reason}");
                    assert!(reason.contains("response header is too big"), "{reason}");
                    assert!(reason.contains("> 16384"), "{reason}");
                }
                Err(e) => panic!("{head}: {e:?}"),
            }
        }
    }

    #[test]
    fn a_header_line_up_to_the_bound_is_sent_and_a_longer_one_is_not() {
        // "authorization: Bearer <token>" plus CRLF, the line ureq writes in one piece, and the
        // two bytes of the output buffer ureq keeps spare (measured: one more byte is refused).
        let at_bound = PLATFORM_HEAD_BYTES - "authorization: Bearer \r\n".len() - 2;
        for (length, ok) in [
            (crate::config::MAX_PLATFORM_TOKEN_BYTES, true),
            (at_bound, true),
            (at_bound + 1, false),
        ] {
            let (url, server) =
                one_shot("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
            let token = "t".repeat(length);
            let client = MepClient::new(&with_token(&url, &token));
            let got = client.send("GET", &client.url("/x"), None);
            if ok {
                assert_eq!(got, Ok((200, "{}".to_string())), "{length}");
                assert!(server.join().unwrap().contains(&token), "{length}");
                continue;
            }
            let Err(MepError::NotSent { reason, .. }) = got else {
                panic!("{length}: {got:?}");
            };
            assert_eq!(
                reason,
                "a line of the request's head is longer than 16384 bytes (its path, or a header)"
            );
            assert!(!reason.contains(&token));
            // Nothing was written: the one-shot server saw the connection close unread (or
            // failed writing its answer to it).
            if let Ok(raw) = server.join() {
                assert_eq!(raw, "", "{length}");
            }
        }
    }

    #[test]
    fn proxy_from_environment_is_never_used() {
        let client = MepClient::new(&mep("http://127.0.0.1:1", 500));
        assert!(client.agent_config().proxy().is_none());
        // And the buffers are sized by the head bound, not ureq's 128 KiB.
        assert_eq!(client.agent_config().max_response_header_size(), 16 * 1024);
        assert_eq!(client.agent_config().input_buffer_size(), 32 * 1024);
        assert_eq!(client.agent_config().output_buffer_size(), 16 * 1024);
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
        assert_eq!(
            e,
            MepError::Refused {
                url: format!("{url}/r"),
                status: 302,
                detail: "redirected to 'http://127.0.0.1:1/elsewhere' (not followed: fix the \
                    platform's url)"
                    .into()
            }
        );
        // Credentials in the target are masked like any other URL.
        let (url, server) = one_shot(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: https://u:pw@127.0.0.1:1/x\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n",
        );
        let client = MepClient::new(&mep(&url, 3000));
        let e = client.send("DELETE", &client.url("/r"), None).unwrap_err();
        server.join().unwrap();
        assert!(e.to_string().contains("'https://***@127.0.0.1:1/x'"), "{e}");
        assert!(!e.to_string().contains("pw"), "{e}");
    }

    #[test]
    fn a_refused_connection_is_not_sent() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let client = MepClient::new(&mep(&url, 2000));
        let e = client
            .send("POST", &client.url("/r"), Some("{}"))
            .unwrap_err();
        assert!(matches!(e, MepError::NotSent { .. }), "{e:?}");
        assert!(!e.is_ambiguous(), "nothing was written: not applied");
    }

    #[test]
    fn an_unresolvable_name_is_not_sent() {
        // `.invalid` never resolves (RFC 6761); no query leaves the machine for it.
        let client = MepClient::new(&mep("http://mep.invalid:8080", 2000));
        let e = client
            .send("POST", &client.url("/r"), Some("{}"))
            .unwrap_err();
        assert!(matches!(e, MepError::NotSent { .. }), "{e:?}");
    }

    #[test]
    fn a_failed_tls_handshake_is_not_sent() {
        // A plain-text server behind an https:// URL: the handshake fails before the request.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            std::thread::sleep(Duration::from_millis(100));
        });
        let client = MepClient::new(&mep(&url, 2000));
        let e = client
            .send("POST", &client.url("/r"), Some("{}"))
            .unwrap_err();
        server.join().unwrap();
        assert!(matches!(e, MepError::NotSent { .. }), "{e:?}");
    }

    #[test]
    fn a_connection_cut_after_the_request_was_written_is_ambiguous() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            // Read the request, then hang up without an answer.
        });
        let client = MepClient::new(&mep(&url, 2000));
        let e = client
            .send("POST", &client.url("/r"), Some("{}"))
            .unwrap_err();
        server.join().unwrap();
        assert!(matches!(e, MepError::Unreachable { .. }), "{e:?}");
        assert!(e.is_ambiguous(), "the platform may have acted on it");
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
        assert_eq!(detail_of(r#"{"title":"T","detail":"D"}"#, 500), "D");
        assert_eq!(detail_of(r#"{"title":"T"}"#, 500), "T");
        assert_eq!(detail_of("plain\ntext", 500), "plain text");
        assert_eq!(detail_of(&"x".repeat(500), 500).len(), 200);
        assert_eq!(detail_of("", 500), "");
    }

    #[test]
    fn a_problem_status_other_than_the_http_status_is_kept_as_the_mep_code() {
        let eg = r#"{"title":"Bad Request","status":4,"detail":"app instance has other operation in progress"}"#;
        assert_eq!(
            detail_of(eg, 403),
            "app instance has other operation in progress (MEP code 4)"
        );
        assert_eq!(
            detail_of(r#"{"status":"E40001","detail":"duplicate dns entry"}"#, 400),
            "duplicate dns entry (MEP code E40001)"
        );
        // RFC 7807 usage: the same as the HTTP status, not repeated.
        assert_eq!(detail_of(r#"{"status":404,"detail":"gone"}"#, 404), "gone");
        // A code alone is no detail: the answer's text is shown.
        assert_eq!(detail_of(r#"{"status":7}"#, 500), r#"{"status":7}"#);
    }

    #[test]
    fn credentials_in_urls_are_masked() {
        let client = MepClient::new(&mep("http://u:p@127.0.0.1:1/", 100));
        assert_eq!(client.base_url(), "http://u:p@127.0.0.1:1");
        assert!(!format!("{client:?}").contains(":p@"));
    }

    fn with_token(url: &str, token: &str) -> MepConfig {
        let mut m = mep(url, 3000);
        m.token = Some(crate::config::Secret::new(token.to_string()));
        m
    }

    #[test]
    fn the_token_is_sent_as_a_bearer_header_and_never_shown() {
        let token = "s3cr3t-T0ken.value";
        let (url, server) =
            one_shot("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
        let client = MepClient::new(&with_token(&url, token));
        client.send("GET", &client.url("/x"), None).unwrap();
        let raw = server.join().unwrap();
        assert!(
            raw.lines()
                .any(|l| l.eq_ignore_ascii_case(&format!("authorization: Bearer {token}"))),
            "{raw}"
        );
        let shown = format!("{client:?}");
        assert!(!shown.contains(token), "{shown}");
        assert!(shown.contains("token: \"set\""), "{shown}");

        // Nor in errors.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let client = MepClient::new(&with_token(&closed, token));
        let e = client
            .send("POST", &client.url("/r"), Some("{}"))
            .unwrap_err();
        assert!(!format!("{e} {e:?}").contains(token));
    }

    #[test]
    fn without_a_token_no_authorization_header_is_sent() {
        let (url, server) =
            one_shot("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
        let client = MepClient::new(&mep(&url, 3000));
        client.send("GET", &client.url("/x"), None).unwrap();
        let raw = server.join().unwrap().to_ascii_lowercase();
        assert!(!raw.contains("authorization"), "{raw}");
    }

    #[test]
    fn a_token_that_cannot_be_a_header_fails_every_call_without_showing_it() {
        let client = MepClient::new(&with_token("http://127.0.0.1:1", "jeton\u{7f}x"));
        let e = client.send("GET", &client.url("/x"), None).unwrap_err();
        assert!(matches!(e, MepError::NotSent { .. }), "{e:?}");
        assert!(e.to_string().contains("token"), "{e}");
        assert!(!format!("{e} {e:?} {client:?}").contains("jeton"));
    }

    #[test]
    fn extra_headers_are_sent_and_the_etag_is_returned() {
        let (url, server) = one_shot(
            "HTTP/1.1 200 OK\r\nETag: \"v7\"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        );
        let client = MepClient::new(&mep(&url, 3000));
        let answer = client
            .send_with(
                "PUT",
                &client.url("/r"),
                Some("{}"),
                &[("If-Match", "\"v6\""), ("X-AppinstanceID", "app-1")],
            )
            .unwrap();
        assert_eq!(
            answer,
            Answer {
                status: 200,
                body: "{}".into(),
                etag: Some("\"v7\"".into())
            }
        );
        let raw = server.join().unwrap().to_ascii_lowercase();
        assert!(raw.contains("if-match: \"v6\"\r\n"), "{raw}");
        assert!(raw.contains("x-appinstanceid: app-1\r\n"), "{raw}");
    }

    #[test]
    fn an_invalid_extra_header_is_an_error_not_a_call() {
        let client = MepClient::new(&mep("http://127.0.0.1:1", 500));
        let e = client
            .send_with("GET", &client.url("/x"), None, &[("X-Bad", "a\nb")])
            .unwrap_err();
        assert!(e.to_string().contains("invalid request"), "{e}");
    }

    fn ca_pem(names: &[&str]) -> String {
        names
            .iter()
            .map(|n| {
                rcgen::generate_simple_self_signed(vec![n.to_string()])
                    .unwrap()
                    .cert
                    .pem()
            })
            .collect()
    }

    fn trusted(client: &MepClient) -> Option<usize> {
        let tls = client.agent_config().tls_config();
        assert!(!tls.disable_verification());
        match tls.root_certs() {
            RootCerts::Specific(certs) => Some(certs.len()),
            other => panic!("unexpected roots {other:?}: only listed certificates are trusted"),
        }
    }

    fn host_list(client: &MepClient) -> Arc<Vec<Certificate<'static>>> {
        match client.agent_config().tls_config().root_certs() {
            RootCerts::Specific(certs) => certs.clone(),
            other => panic!("unexpected roots {other:?}"),
        }
    }

    #[test]
    fn https_trusts_the_host_store_or_exactly_the_private_ca() {
        let host = MepClient::new(&mep("https://mep.example:8443", 500));
        assert_eq!(host.trust(), Trust::HostStore);
        assert!(trusted(&host).is_some());
        // Read once: every client shares the one list.
        let other = MepClient::new(&mep("https://other.example", 500));
        assert!(Arc::ptr_eq(&host_list(&host), &host_list(&other)));

        let mut config = mep("https://mep.example:8443", 500);
        config.ca_pem = Some(ca_pem(&["a.example", "b.example"]).into_bytes());
        let private = MepClient::new(&config);
        assert_eq!(private.trust(), Trust::PrivateCa { certificates: 2 });
        assert_eq!(trusted(&private), Some(2));
        assert!(format!("{private:?}").contains("PrivateCa"));
    }

    #[test]
    fn a_ca_file_without_a_usable_certificate_trusts_nothing() {
        let mut config = mep("https://mep.example:8443", 500);
        config.ca_pem =
            Some(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".to_vec());
        let client = MepClient::new(&config);
        assert_eq!(client.trust(), Trust::PrivateCa { certificates: 0 });
        assert_eq!(trusted(&client), Some(0), "never the host's store instead");
    }

    #[test]
    fn a_plain_http_mep_without_a_ca_file_trusts_nothing() {
        let client = MepClient::new(&mep("http://127.0.0.1:1", 500));
        assert_eq!(client.trust(), Trust::Nothing);
        assert_eq!(trusted(&client), Some(0));
    }

    #[test]
    fn only_an_https_peer_without_a_ca_file_needs_the_host_store() {
        let pem = ca_pem(&["a.example"]).into_bytes();
        for https in [false, true] {
            let (_, trust, unreadable) = tls_trusting(Some(&pem), https);
            assert_eq!(
                (trust, unreadable),
                (Trust::PrivateCa { certificates: 1 }, 0)
            );
        }
        let (tls, trust, _) = tls_trusting(None, false);
        assert_eq!(trust, Trust::Nothing);
        assert!(matches!(tls.root_certs(), RootCerts::Specific(c) if c.is_empty()));
        let (_, trust, _) = tls_trusting(None, true);
        assert_eq!(trust, Trust::HostStore);
    }

    #[test]
    fn https_is_told_by_the_scheme_in_any_case() {
        assert!(is_https("https://mep.example"));
        assert!(is_https("HTTPS://127.0.0.1:8443/api"));
        assert!(!is_https("http://mep.example"));
        assert!(!is_https("http://https.example"));
        assert!(!is_https("https:/"));
        // The plain-http token warning and the etcd endpoints ask the same way.
        assert!(has_scheme("HTTP://mep.example", "http://"));
        assert!(has_scheme("Http://127.0.0.1:13000", "http://"));
        assert!(!has_scheme("https://mep.example", "http://"));
        assert!(!has_scheme("http:", "http://"));
    }

    #[test]
    fn the_host_store_report_says_how_many_and_from_where() {
        let lines = host_store_report(140, &[], "/etc/ssl/certs/ca-certificates.crt");
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].0, log::Level::Info);
        assert!(lines[0].1.contains("140 certificate(s)"), "{}", lines[0].1);
        assert!(lines[0].1.contains("/etc/ssl/certs/ca-certificates.crt"));
    }

    #[test]
    fn the_host_store_report_warns_for_a_few_errors_and_counts_the_rest() {
        let errors: Vec<String> = (0..8).map(|i| format!("cannot read\nfile {i}")).collect();
        let lines = host_store_report(3, &errors, "SSL_CERT_DIR=/x");
        let warnings: Vec<&String> = lines
            .iter()
            .filter(|(level, _)| *level == log::Level::Warn)
            .map(|(_, line)| line)
            .collect();
        assert_eq!(warnings.len(), HOST_STORE_ERRORS_LOGGED + 1);
        assert!(warnings.iter().all(|line| !line.contains('\n')));
        assert!(warnings[HOST_STORE_ERRORS_LOGGED].contains("3 more"));
        assert!(lines.iter().all(|(level, _)| *level != log::Level::Error));
    }

    #[test]
    fn an_empty_host_store_is_an_error_saying_what_to_do() {
        let lines = host_store_report(0, &[], "SSL_CERT_FILE=/empty.pem");
        let (level, line) = lines.last().unwrap();
        assert_eq!(*level, log::Level::Error);
        for remedy in ["CA package", "SSL_CERT_FILE", "ca_file"] {
            assert!(line.contains(remedy), "{line}");
        }
    }

    #[test]
    fn private_roots_skip_other_pem_blocks_and_count_unreadable_certificates() {
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let pem = format!(
            "{}{key}-----BEGIN CERTIFICATE-----\n####\n-----END CERTIFICATE-----\n",
            ca_pem(&["a.example"])
        );
        let (certificates, unreadable) = private_roots(pem.as_bytes());
        assert_eq!((certificates.len(), unreadable), (1, 1));
    }
}
