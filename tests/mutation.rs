//! Issue 11's mutation run: 10,000 request heads mutated from a corpus of valid requests (bytes
//! flipped, inserted, cut; header lines duplicated; CRLF variants; framing headers doubled),
//! each sent on its own connection to the real binary on a loopback port. Never a panic, never
//! a 5xx (but 505, the right answer to a mutated protocol version), every answer a well-formed
//! HTTP/1.1 response (`Server: mec-plugin`, a complete body, problem+json for every error) or a
//! close, and the plugin serves normally afterwards.
//!
//! Every other case is followed on its connection by a valid request that asks to close: only
//! the last answer may then say `Connection: close`, and the last one must (framing holds:
//! nothing is read past a refused request).
//!
//! Deterministic: case `i` is mutated by a generator seeded with (seed, i), whatever thread runs
//! it. `MEC_PLUGIN_MUTATION_SEED` overrides the seed, `MEC_PLUGIN_MUTATIONS` the count (at most
//! 1,000,000); a failure prints the seed, the case and the bytes sent. Bounded: 16 client
//! threads, 5 s per case, 150 s in all (a run that does not finish in time fails).

#[path = "support/child.rs"]
mod child;
#[path = "support/raw.rs"]
mod raw;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use child::{Child, TOKEN};
use raw::{read_until_closed, responses_in};

const DEFAULT_SEED: u64 = 0x11_2026_1206;
const DEFAULT_CASES: usize = 10_000;
const CLIENTS: usize = 16;
const CASE_LIMIT: Duration = Duration::from_secs(5);
const RUN_LIMIT: Duration = Duration::from_secs(150);

/// SplitMix64: small, fast, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, case: u64) -> Rng {
        let mut rng = Rng(seed ^ case.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        rng.next();
        rng
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn example(name: &str) -> String {
    std::fs::read_to_string(format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Valid requests, heads and bodies, each on its own.
fn corpus() -> Vec<Vec<u8>> {
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let dns = example("dns-only.json");
    let traffic = example("traffic-and-dns.json");
    let chunked: String = {
        let mut out = String::new();
        for piece in traffic.as_bytes().chunks(97) {
            out.push_str(&format!("{:x}\r\n", piece.len()));
            out.push_str(std::str::from_utf8(piece).unwrap());
            out.push_str("\r\n");
        }
        out.push_str("0\r\n\r\n");
        out
    };
    [
        format!("GET /MEC/v1/service/regions HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n"),
        "GET /healthz HTTP/1.1\r\nHost: localhost:8082\r\nUser-Agent: probe/1.0\r\nAccept: */*\r\n\r\n".to_string(),
        format!(
            "POST /MEC/v1/service/requests HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{dns}",
            dns.len()
        ),
        format!(
            "POST /MEC/v1/service/requests HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}"
        ),
        format!("HEAD /MEC/v1/service/regions HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n"),
        format!(
            "DELETE /MEC/v1/service/requests/6f1c2d3e-0000-4000-8000-000000000001 HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n"
        ),
        format!(
            "GET /MEC/v1/service/regions/2?verbose=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Accept: application/json\r\nConnection: keep-alive\r\n\r\n"
        ),
        format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"),
        "GET /healthz HTTP/1.0\r\n\r\n".to_string(),
        format!(
            "POST /MEC/v1/service/requests HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n{dns}",
            dns.len()
        ),
        "GET /MEC/v1/swagger.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_string(),
        format!(
            "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /MEC/v1/service/requests HTTP/1.1\r\nHost: a\r\n{auth}Connection: close\r\n\r\n"
        ),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

/// Appended to every other case: a valid request that asks to close, so that a connection the
/// mutated request left open ends with an answer saying `Connection: close`.
const SENTINEL: &[u8] = b"GET /healthz?sentinel HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n";

/// Whether `bytes` hold a head declaring a body (a `Content-Length`, or `chunked`) that is not
/// all there, so that bytes sent after them would be read as that body.
fn body_unfinished(bytes: &[u8]) -> bool {
    let Some(end) = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
    else {
        return false;
    };
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let body = &bytes[end..];
    if head.contains("transfer-encoding") && head.contains("chunked") {
        return !body.ends_with(b"0\r\n\r\n");
    }
    head.lines()
        .filter_map(|l| l.strip_prefix("content-length:"))
        .any(|v| v.trim().parse::<usize>().is_ok_and(|n| n > body.len()))
}

/// Bytes that make parsers stumble.
const PALETTE: &[u8] = b"\r\n: \t\0\x7f\x80\xff,;=\"/?%09afAFxX-+.HTP";

/// The end of the head (index after `\r\n\r\n`), or the whole length.
fn head_end(bytes: &[u8]) -> usize {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(bytes.len(), |i| i + 4)
}

/// Start offsets of the header lines (after the request line, before the blank line).
fn header_lines(bytes: &[u8]) -> Vec<(usize, usize)> {
    let end = head_end(bytes);
    let mut lines = Vec::new();
    let mut start = match bytes[..end].windows(2).position(|w| w == b"\r\n") {
        Some(i) => i + 2,
        None => return lines,
    };
    while start + 2 < end {
        let Some(len) = bytes[start..end].windows(2).position(|w| w == b"\r\n") else {
            break;
        };
        if len == 0 {
            break;
        }
        lines.push((start, start + len + 2));
        start += len + 2;
    }
    lines
}

/// One to three mutations of `request`, mostly in its head.
fn mutate(request: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = request.to_vec();
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        if b.is_empty() {
            b.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        }
        // Positions favour the head, where the front end's parser works.
        let head = head_end(&b).max(1);
        let at = if rng.below(5) == 0 {
            rng.below(b.len())
        } else {
            rng.below(head.min(b.len()))
        };
        match rng.below(10) {
            // Flip: a bit, or a whole byte.
            0 => b[at] ^= 1 << rng.below(8),
            1 => b[at] = PALETTE[rng.below(PALETTE.len())],
            // Insert 1-8 bytes.
            2 => {
                let n = 1 + rng.below(8);
                for _ in 0..n {
                    let byte = if rng.below(2) == 0 {
                        PALETTE[rng.below(PALETTE.len())]
                    } else {
                        rng.next() as u8
                    };
                    b.insert(at, byte);
                }
            }
            // Cut: the tail, or a range.
            3 => b.truncate(at),
            4 => {
                let n = 1 + rng.below(16);
                let end = (at + n).min(b.len());
                b.drain(at..end);
            }
            // Duplicate a header line, as is or with another value.
            5 | 6 => {
                let lines = header_lines(&b);
                if let Some(&(s, e)) = lines.get(rng.below(lines.len().max(1))) {
                    let mut line = b[s..e].to_vec();
                    if rng.below(2) == 0 {
                        if let Some(colon) = line.iter().position(|&c| c == b':') {
                            line.truncate(colon + 1);
                            line.extend_from_slice(
                                format!(" {}\r\n", rng.below(100_000)).as_bytes(),
                            );
                        }
                    }
                    let to = lines[rng.below(lines.len())].0;
                    b.splice(to..to, line);
                } else {
                    b[at] ^= 0x20;
                }
            }
            // CRLF variants: one line ending, or all of the head's.
            7 => {
                let variants: [&[u8]; 6] = [b"\n", b"\r", b"\r\r\n", b"\n\r", b"\r\n ", b"\r\n\t"];
                let variant = variants[rng.below(variants.len())];
                let ends: Vec<usize> = b[..head]
                    .windows(2)
                    .enumerate()
                    .filter(|(_, w)| *w == b"\r\n")
                    .map(|(i, _)| i)
                    .collect();
                if ends.is_empty() {
                    continue;
                }
                let chosen: Vec<usize> = if rng.below(3) == 0 {
                    ends
                } else {
                    vec![ends[rng.below(ends.len())]]
                };
                for &i in chosen.iter().rev() {
                    b.splice(i..i + 2, variant.iter().copied());
                }
            }
            // Framing headers added after the request line.
            8 => {
                let extra: &[&str] = &[
                    "Content-Length: 5\r\n",
                    "Content-Length: 0\r\n",
                    "Content-Length: 18446744073709551616\r\n",
                    "Content-Length: 1, 2\r\n",
                    "Content-Length:\r\n",
                    "Transfer-Encoding: chunked\r\n",
                    "Transfer-Encoding: gzip, chunked\r\n",
                    "Transfer-Encoding: chunked, identity\r\n",
                    "Expect: 100-continue\r\n",
                    "Expect: 200-ok\r\n",
                    "Connection: close, upgrade\r\n",
                    "Upgrade: h2c\r\n",
                    "Host: a\r\n",
                    " folded\r\n",
                    ": empty-name\r\n",
                ];
                let line = extra[rng.below(extra.len())].as_bytes().to_vec();
                let to = header_lines(&b).first().map_or(head.min(b.len()), |l| l.0);
                b.splice(to..to, line);
            }
            // Case of a stretch of the head.
            _ => {
                let end = (at + 1 + rng.below(12)).min(b.len());
                for c in &mut b[at..end] {
                    if c.is_ascii_alphabetic() {
                        *c ^= 0x20;
                    }
                }
            }
        }
    }
    b
}

/// What went wrong with one case (`Err`), or the statuses answered (none: closed silently).
/// `sentinel`: the bytes end with a valid request asking to close (see [`SENTINEL`]).
fn run_case(addr: SocketAddr, bytes: &[u8], sentinel: bool) -> Result<Vec<u16>, String> {
    let mut s = match TcpStream::connect_timeout(&addr, CASE_LIMIT) {
        Ok(s) => s,
        Err(e) => return Err(format!("cannot connect: {e}")),
    };
    s.set_write_timeout(Some(CASE_LIMIT)).unwrap();
    // The server may answer and close before reading everything: a write error is fine.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    let (all, closed) = read_until_closed(&mut s, CASE_LIMIT);
    if !closed {
        return Err(format!(
            "neither answered and closed within {CASE_LIMIT:?} of the client's end of input; read {:?}",
            String::from_utf8_lossy(&all)
        ));
    }
    // A HEAD answered normally has no body; one the front end refuses (it may not have parsed
    // the method) may carry its problem: both are well-formed, since the refusal closes.
    // (A cut request that starts with "HEAD" may be taken for a HEAD or not.)
    let head = bytes.starts_with(b"HEAD");
    let parsed = responses_in(&all, head).or_else(|e| responses_in(&all, !head).map_err(|_| e));
    let responses = match parsed {
        Ok(r) => r,
        Err(e) => {
            return Err(format!(
                "not a well-formed HTTP/1.1 response ({e}): {:?}",
                String::from_utf8_lossy(&all)
            ));
        }
    };
    for r in &responses {
        let problem = || {
            format!(
                "{} {} {:?} {:?}",
                r.version,
                r.status,
                r.headers,
                String::from_utf8_lossy(&r.body)
            )
        };
        if r.version != "HTTP/1.1" {
            return Err(format!("not HTTP/1.1: {}", problem()));
        }
        if r.status >= 500 && r.status != 505 {
            return Err(format!("a 5xx: {}", problem()));
        }
        if !(100..600).contains(&r.status) {
            return Err(format!("status out of range: {}", problem()));
        }
        if r.header("Server") != Some("mec-plugin") {
            return Err(format!("no Server: mec-plugin: {}", problem()));
        }
        if r.header("Content-Length").is_none() && r.header("Transfer-Encoding").is_none() {
            return Err(format!("no framing: {}", problem()));
        }
        if r.status >= 400 {
            if r.header("Content-Type") != Some("application/problem+json") {
                return Err(format!("an error not in problem+json: {}", problem()));
            }
            let ok = serde_json::from_slice::<serde_json::Value>(&r.body).is_ok_and(|j| {
                ["type", "title", "status", "detail"]
                    .iter()
                    .all(|k| j.get(k).is_some())
                    && j["status"] == r.status
            });
            let bodiless_head = head && r.body.is_empty();
            if !ok && !bodiless_head {
                return Err(format!("a malformed problem: {}", problem()));
            }
        }
    }
    // Framing holds: only the last answer may close the connection, and the connection ends
    // with one that says so (the sentinel asks for it; a refusal says it too). An answer
    // after a "close" would be a request read past the end of the one refused (smuggling).
    if sentinel && !responses.is_empty() {
        let closes = |r: &raw::RawResponse| {
            r.header("Connection")
                .is_some_and(|v| v.to_ascii_lowercase().contains("close"))
        };
        let last = responses.len() - 1;
        if let Some(i) = responses[..last].iter().position(closes) {
            return Err(format!(
                "answer {} of {} said Connection: close, yet more followed: {:?}",
                i + 1,
                responses.len(),
                String::from_utf8_lossy(&all)
            ));
        }
        if !closes(&responses[last]) {
            return Err(format!(
                "the connection ended without an answer saying Connection: close: {:?}",
                String::from_utf8_lossy(&all)
            ));
        }
    }
    Ok(responses.iter().map(|r| r.status).collect())
}

/// Shows bytes as a Rust byte-string literal, cut at 600.
fn escape(bytes: &[u8]) -> String {
    let shown: String = bytes[..bytes.len().min(600)]
        .iter()
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    format!("b\"{shown}\"")
}

#[test]
fn ten_thousand_mutated_heads_never_cause_a_panic_a_5xx_or_a_malformed_answer() {
    let seed = std::env::var("MEC_PLUGIN_MUTATION_SEED")
        .ok()
        .and_then(|s| {
            let s = s.trim();
            s.strip_prefix("0x")
                .map_or_else(|| s.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
        })
        .unwrap_or(DEFAULT_SEED);
    let cases = std::env::var("MEC_PLUGIN_MUTATIONS")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(DEFAULT_CASES)
        .min(1_000_000);
    let mut plugin = Child::start_with_token(
        "mutation",
        "read_timeout_ms = 1000\nidle_timeout_ms = 1000\nmax_body_bytes = 65536\n",
    );
    let addr = plugin.addr;
    let corpus = Arc::new(corpus());
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<(usize, String, Vec<u8>)>::new()));
    // Answers by status (0: closed without an answer).
    let tally = Arc::new(Mutex::new(BTreeMap::<u16, usize>::new()));
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (corpus, next, done, failures, tally) = (
                corpus.clone(),
                next.clone(),
                done.clone(),
                failures.clone(),
                tally.clone(),
            );
            thread::spawn(move || {
                loop {
                    let case = next.fetch_add(1, Ordering::Relaxed);
                    if case >= cases || started.elapsed() > RUN_LIMIT {
                        return;
                    }
                    let mut rng = Rng::new(seed, case as u64);
                    let original = &corpus[rng.below(corpus.len())];
                    let mut bytes = mutate(original, &mut rng);
                    // Not after a request whose body is unfinished: its body would swallow
                    // the sentinel's bytes, and the server rightly never answers them.
                    let sentinel = case % 2 == 0 && !body_unfinished(&bytes);
                    if sentinel {
                        bytes.extend_from_slice(SENTINEL);
                    }
                    match run_case(addr, &bytes, sentinel) {
                        Ok(statuses) => {
                            let mut tally = tally.lock().unwrap();
                            if statuses.is_empty() {
                                *tally.entry(0).or_insert(0) += 1;
                            }
                            for status in statuses {
                                *tally.entry(status).or_insert(0) += 1;
                            }
                        }
                        Err(what) => failures.lock().unwrap().push((case, what, bytes)),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let took = started.elapsed();
    let done = done.load(Ordering::Relaxed);
    eprintln!(
        "{done} mutated requests (seed {seed:#x}) in {took:?}; answers by status (0: closed \
         without one): {:?}",
        tally.lock().unwrap()
    );

    let panics: Vec<String> = plugin
        .logs()
        .into_iter()
        .filter(|l| l.contains("panicked"))
        .collect();
    let alive = plugin.alive();
    let healthy = alive && plugin.stored_requests() < u64::MAX;
    let mut failures = failures.lock().unwrap().clone();
    failures.sort_by_key(|f| f.0);
    let mut kinds = BTreeMap::<String, usize>::new();
    for (_, what, _) in &failures {
        let kind: String = what.split([':', '(']).next().unwrap_or("").to_string();
        *kinds.entry(kind).or_insert(0) += 1;
    }
    let shown: Vec<String> = failures
        .iter()
        .take(15)
        .map(|(case, what, bytes)| format!("case {case}: {what}\n    sent {}", escape(bytes)))
        .collect();
    assert!(
        failures.is_empty() && panics.is_empty() && healthy && done == cases,
        "seed {seed:#x} (MEC_PLUGIN_MUTATION_SEED), {done} of {cases} cases run in {took:?}; \
         plugin alive: {alive}; {} failing cases {kinds:?}; panics logged: {panics:?}\n{}",
        failures.len(),
        shown.join("\n")
    );
}
