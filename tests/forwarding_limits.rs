//! The bound on a leader's answer a follower relays (`cluster::MAX_FORWARDED_ANSWER`, 64 MiB),
//! at the bound and past it, against a real 1-member etcd whose leader key names a fake
//! "leader" (a small HTTP server of this test answering a body of the size asked for): exactly
//! the bound is relayed whole; one byte more (with its length, or without: chunked, or a body
//! that never ends) answers 502 problem+json (`leader-answer`), after at most the bound was
//! read, within a bounded time and memory; so does an answer cut short or not JSON. Alone in
//! its file (its own process), so that the peak memory measured is this test's. Skipped,
//! saying so, where etcd is not installed.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use mec_plugin::cluster::MAX_FORWARDED_ANSWER;
use support::etcd::{Cluster, MISSING};
use support::{Plugin, eventually, simulated_region};

const BOUND: u64 = MAX_FORWARDED_ANSWER;

/// Bound on one forwarded request here (the follower's own bound is 30 s).
const ANSWERED_WITHIN: Duration = Duration::from_secs(25);

/// How the fake leader sends its body.
#[derive(Clone, Copy, Debug)]
enum Framing {
    /// `Content-Length: n`, then n bytes.
    Length(u64),
    /// Chunked, n bytes in all.
    Chunked(u64),
    /// Chunked, until the other side stops reading.
    Endless,
    /// `Content-Length: n`, then half of it and the end of the connection.
    Short(u64),
    /// A small body as `text/html`.
    Html,
}

/// A fake leader on loopback: answers every request `201` with `application/json` and the body
/// its query asks for (`?length=n`, `?chunked=n` or `?endless`), counting the body bytes it
/// could write.
struct FakeLeader {
    url: String,
    written: Arc<AtomicU64>,
}

impl FakeLeader {
    fn start() -> FakeLeader {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let written = Arc::new(AtomicU64::new(0));
        let counter = written.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counter = counter.clone();
                thread::spawn(move || serve(stream, &counter));
            }
        });
        FakeLeader { url, written }
    }

    /// The body bytes written since the last call.
    fn take_written(&self) -> u64 {
        self.written.swap(0, Ordering::SeqCst)
    }
}

/// Reads one request (head, then its body by `Content-Length`) and answers it as its query says.
fn serve(stream: TcpStream, written: &AtomicU64) {
    stream
        .set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut target = String::new();
    let mut length = 0usize;
    let mut line = String::new();
    for n in 0..100 {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if n == 0 {
            target = line.split(' ').nth(1).unwrap_or("").to_string();
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0u8; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let framing = match query.split_once('=') {
        Some(("length", n)) => Framing::Length(n.parse().unwrap()),
        Some(("chunked", n)) => Framing::Chunked(n.parse().unwrap()),
        Some(("short", n)) => Framing::Short(n.parse().unwrap()),
        Some(("html", _)) => Framing::Html,
        _ => Framing::Endless,
    };
    let _ = answer(stream, framing, written);
}

/// Writes the answer with the body `framing` says: `x`s, 64 KiB at a time.
fn answer(mut out: TcpStream, framing: Framing, written: &AtomicU64) -> std::io::Result<()> {
    let chunk = vec![b'x'; 64 << 10];
    let (length, total) = match framing {
        Framing::Length(n) => (Some(n), n),
        Framing::Chunked(n) => (None, n),
        Framing::Endless => (None, u64::MAX),
        Framing::Short(n) => (Some(n), n / 2),
        Framing::Html => {
            return out.write_all(
                b"HTTP/1.1 201 Created\r\nContent-Type: text/html\r\nContent-Length: 2\r\n\
                  Connection: close\r\n\r\nhi",
            );
        }
    };
    let head = match length {
        Some(n) => format!("Content-Length: {n}"),
        None => "Transfer-Encoding: chunked".to_string(),
    };
    write!(
        out,
        "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nConnection: close\r\n{head}\r\n\r\n"
    )?;
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        if length.is_none() {
            write!(out, "{n:x}\r\n")?;
        }
        out.write_all(&chunk[..n])?;
        if length.is_none() {
            out.write_all(b"\r\n")?;
        }
        written.fetch_add(n as u64, Ordering::SeqCst);
        left -= n as u64;
    }
    if length.is_none() {
        out.write_all(b"0\r\n\r\n")?;
    }
    out.flush()
}

/// This process's peak resident memory (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// A POST through the follower, the fake leader's answer chosen by `query`: status, headers and
/// body length, with the time it took.
struct Relayed {
    status: u16,
    content_type: Option<String>,
    retry_after: Option<String>,
    body: Vec<u8>,
    took: Duration,
}

fn post(follower: &Plugin, query: &str) -> Relayed {
    let agent = support::agent(ANSWERED_WITHIN);
    let started = Instant::now();
    let request = ureq::http::Request::builder()
        .method("POST")
        .uri(format!("{}/service/requests?{query}", follower.base));
    let mut response = support::send(&agent, request, Some("{}"), "application/json")
        .unwrap_or_else(|e| panic!("POST ?{query}: {e}"));
    let body = response
        .body_mut()
        .with_config()
        .limit(BOUND + 1)
        .read_to_vec()
        .unwrap();
    Relayed {
        status: response.status().as_u16(),
        content_type: support::header_of(&response, "content-type"),
        retry_after: support::header_of(&response, "retry-after"),
        body,
        took: started.elapsed(),
    }
}

/// The answer past the bound: 502 problem+json saying why and that the change may have been
/// made, no `Retry-After`, in time.
fn assert_refused(relayed: &Relayed, what: &str) {
    assert_not_relayed(
        relayed,
        &format!("larger than the {BOUND} bytes relayed"),
        what,
    );
}

/// A leader's answer not relayed: 502 problem+json saying `why` and that the change may have
/// been made, no `Retry-After`, in time.
fn assert_not_relayed(relayed: &Relayed, why: &str, what: &str) {
    assert_eq!(relayed.status, 502, "{what}");
    assert_eq!(
        relayed.content_type.as_deref(),
        Some("application/problem+json"),
        "{what}"
    );
    assert!(relayed.retry_after.is_none(), "{what}: no Retry-After");
    let problem: serde_json::Value = serde_json::from_slice(&relayed.body).unwrap();
    assert_eq!(problem["type"], "urn:mec-plugin:problem:leader-answer");
    assert_eq!(problem["status"], 502);
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("answered 201")
            && detail.contains(why)
            && detail.contains("may have been made"),
        "{what}: {detail}"
    );
    assert!(relayed.took < ANSWERED_WITHIN, "{what}: {:?}", relayed.took);
}

#[test]
fn a_leaders_answer_is_relayed_up_to_64_mib_and_one_byte_more_answers_502() {
    let test = "a_leaders_answer_is_relayed_up_to_64_mib_and_one_byte_more_answers_502";
    let Some(etcd) = Cluster::start(test, 1) else {
        return support::skip(test, MISSING);
    };
    let leader = FakeLeader::start();
    // The fake holds the leader key (its lease outlives the test).
    let client = etcd.client(Duration::from_secs(2));
    let lease = client.lease_grant(60).unwrap();
    client
        .put(b"/limits/leader", leader.url.as_bytes(), lease.id)
        .unwrap();
    let follower = Plugin::start(&format!(
        "{}[store]\nkind = \"etcd\"\nendpoints = [\"{}\"]\nprefix = \"/limits\"\nlease_ttl_s = 2\nadvertise_url = \"http://127.0.0.1:1\"\n{}",
        support::server_section(""),
        etcd.endpoints()[0],
        simulated_region("2")
    ));
    let cluster = follower.app.cluster.as_ref().unwrap();
    assert!(eventually(Duration::from_secs(10), || cluster
        .wait_ready(Duration::from_millis(50))));

    // Past the bound first (the peak memory measured is theirs): with its length, the answer
    // is refused before its body is read.
    let before = peak_rss();
    let relayed = post(&follower, &format!("length={}", BOUND + 1));
    assert_refused(&relayed, "Content-Length one past the bound");
    // What the fake could write went into the sockets' buffers, not into the follower.
    assert!(leader.take_written() < BOUND / 2);
    // Without a length: read up to the bound, then refused.
    let relayed = post(&follower, &format!("chunked={}", BOUND + 1));
    assert_refused(&relayed, "chunked, one past the bound");
    leader.take_written();
    let relayed = post(&follower, "endless");
    assert_refused(&relayed, "a body that never ends");
    let written = leader.take_written();
    assert!(
        (BOUND..BOUND + (32 << 20)).contains(&written),
        "the follower stopped reading at the bound: {written} bytes written"
    );
    let grown = peak_rss().saturating_sub(before);
    assert!(
        grown < 2 * BOUND,
        "the follower's memory stays bounded: the peak grew by {grown} bytes"
    );

    // Exactly the bound, with its length and chunked: relayed whole.
    for query in [format!("length={BOUND}"), format!("chunked={BOUND}")] {
        let relayed = post(&follower, &query);
        assert_eq!(relayed.status, 201, "{query}");
        assert_eq!(
            relayed.content_type.as_deref(),
            Some("application/json"),
            "{query}"
        );
        assert_eq!(relayed.body.len() as u64, BOUND, "{query}");
        assert!(relayed.body.iter().all(|b| *b == b'x'), "{query}");
        assert!(
            relayed.took < ANSWERED_WITHIN,
            "{query}: {:?}",
            relayed.took
        );
    }

    // Other answers that cannot be relayed: cut short, or not the API's media type.
    let relayed = post(&follower, "short=1000");
    assert_not_relayed(&relayed, "its body could not be read", "cut short");
    let relayed = post(&follower, "html=1");
    assert_not_relayed(
        &relayed,
        "Content-Type 'text/html' is not the API's",
        "HTML",
    );
    follower.app.stop(Duration::from_secs(2));
}
