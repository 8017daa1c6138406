//! The HTTP front end under hostile and broken clients: huge declared bodies, stalled and
//! trickled bodies, bursts, many idle and half-sent connections, idle keep-alive, an idle
//! listener, handler panics, and shutdown. Raw HTTP/1.1 over loopback sockets; every client
//! socket has a timeout and every loop a bound. (Descriptor exhaustion changes a process-wide
//! limit, so it has its own test binary: `robustness_fd.rs`.)

#[path = "support/raw.rs"]
mod raw;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use mec_plugin::http::{Request, Response};
use mec_plugin::server::{RequestHandler, Server};
use raw::*;

const MS: Duration = Duration::from_millis(1);

fn assert_problem(response: &RawResponse, status: u16) {
    assert_eq!(response.status, status, "{response:?}");
    assert_eq!(
        response.header("Content-Type"),
        Some("application/problem+json"),
        "{response:?}"
    );
    assert_eq!(response.json()["status"], status);
}

/// The echo handler, keeping what the server tells it of every answered request.
#[derive(Default)]
struct Recorder {
    answered: Mutex<Vec<(String, String, u16)>>,
}

impl RequestHandler for Recorder {
    fn handle(&self, request: &Request) -> Response {
        echo_handler().handle(request)
    }

    fn answered(&self, request: &Request, status: u16, _took: Duration) {
        let entry = (request.method.clone(), request.path().to_string(), status);
        self.answered.lock().unwrap().push(entry);
    }
}

#[test]
fn every_answered_request_is_told_to_the_handler_once_refusals_and_panics_included() {
    let recorder = Arc::new(Recorder::default());
    let server = Server::start(options(300, 2), recorder.clone()).expect("the server starts");
    let addr = server.local_addr();

    assert_eq!(get_within(addr, "/ok", 1000 * MS).status, 200);
    // 413: declared over the limit, and sent over the limit without a length (chunked).
    let too_large = exchange(addr, &post_head("/big", MAX_BODY as u64 + 1)).unwrap();
    assert_problem(&too_large, 413);
    let chunk = "x".repeat(MAX_BODY + 1);
    let chunked = format!(
        "POST /chunked HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    assert_problem(&exchange(addr, &chunked).unwrap(), 413);
    // 400: the client ends its side after 3 of 2000 declared bytes.
    let mut cut = connect(addr);
    cut.write_all(format!("{}abc", post_head("/cut", 2000)).as_bytes())
        .unwrap();
    cut.shutdown(std::net::Shutdown::Write).unwrap();
    assert_problem(&read_response(&mut BufReader::new(&cut)).unwrap(), 400);
    // 408: the body stalls past read_timeout.
    let mut stalled = connect(addr);
    stalled
        .write_all(format!("{}{{", post_head("/stalled", 2000)).as_bytes())
        .unwrap();
    assert_problem(&read_response(&mut BufReader::new(&stalled)).unwrap(), 408);
    // 500: the handler panicked.
    assert_problem(&get_within(addr, "/panic", 1000 * MS), 500);

    let mut answered = recorder.answered.lock().unwrap().clone();
    answered.sort();
    let expected = [
        ("GET", "/ok", 200),
        ("GET", "/panic", 500),
        ("POST", "/big", 413),
        ("POST", "/chunked", 413),
        ("POST", "/cut", 400),
        ("POST", "/stalled", 408),
    ]
    .map(|(m, p, s)| (m.to_string(), p.to_string(), s));
    assert_eq!(answered, expected);
    server.shutdown(100 * MS);
}

#[test]
fn a_body_declared_at_a_terabyte_gets_413_and_the_server_keeps_serving() {
    let server = start(options(1000, 2));
    let addr = server.local_addr();

    // A client that sends the head and goes away.
    let mut gone = connect(addr);
    gone.write_all(post_head("/x", 1_000_000_000_000).as_bytes())
        .unwrap();
    assert_problem(&read_response(&mut BufReader::new(&gone)).unwrap(), 413);
    drop(gone);
    assert_eq!(get_within(addr, "/after-one", 1000 * MS).status, 200);

    // Two clients (as many as workers) that keep their connections open after the 413.
    let held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = connect(addr);
            s.write_all(post_head("/x", 1_000_000_000_000).as_bytes())
                .unwrap();
            assert_problem(&read_response(&mut BufReader::new(&s)).unwrap(), 413);
            s
        })
        .collect();
    let answer = get_within(addr, "/while-held", 1000 * MS);
    assert_eq!(answer.json()["path"], "/while-held");
    drop(held);
}

#[test]
fn a_stalled_body_releases_the_only_worker_within_the_bound() {
    let server = start(options(500, 1));
    let addr = server.local_addr();
    let started = Instant::now();
    let mut stalled = connect(addr);
    stalled
        .write_all(post_head("/stalled", 2528).as_bytes())
        .unwrap();
    stalled.write_all(b"{").unwrap();
    thread::sleep(100 * MS); // the only worker is now waiting for the rest of the body

    assert_eq!(get_within(addr, "/other", 2000 * MS).status, 200);

    // The stalled client got 408 (or, at worst, its connection was closed) in the same bound.
    stalled.set_read_timeout(Some(3000 * MS)).unwrap();
    match read_response(&mut BufReader::new(&stalled)) {
        Ok(response) => assert_problem(&response, 408),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the stalled client was neither answered nor closed: {e}"
        ),
    }
    assert!(
        started.elapsed() < 2500 * MS,
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_trickled_body_is_cut_off_within_twice_the_read_timeout_while_others_are_served() {
    let server = start(options(500, 1));
    let addr = server.local_addr();
    let mut trickler = connect(addr);
    trickler
        .write_all(post_head("/trickle", 2528).as_bytes())
        .unwrap();
    let started = Instant::now();
    let mut writer = trickler.try_clone().unwrap();
    let trickle = thread::spawn(move || {
        // One byte every 100 ms, for at most 5 s or until the server cuts the connection.
        for _ in 0..50 {
            if writer.write_all(b" ").is_err() {
                return true;
            }
            thread::sleep(100 * MS);
        }
        false
    });

    thread::sleep(150 * MS);
    assert_eq!(get_within(addr, "/meanwhile", 2000 * MS).status, 200);

    let refusal = read_response(&mut BufReader::new(&trickler)).expect("the trickler is answered");
    let answered = started.elapsed();
    assert_problem(&refusal, 408);
    assert!(answered <= 1000 * MS + 300 * MS, "408 after {answered:?}");

    // Answering does not end the drain of the rest of the body; the server also cuts the
    // connection about one read timeout later, so the trickler cannot hold a thread.
    let closed = time_until_closed(&mut trickler, 3000 * MS);
    assert!(
        closed.is_some(),
        "the connection of a trickler was never closed"
    );
    assert_eq!(get_within(addr, "/after", 1000 * MS).status, 200);
    drop(trickler);
    trickle.join().unwrap();
}

#[test]
fn a_burst_of_64_keep_alive_connections_is_answered_within_2_s() {
    let mut opts = options(5000, 4);
    opts.connection_threads = 128;
    let server = start(opts);
    let addr = server.local_addr();
    let start_line = Arc::new(Barrier::new(64));
    let hold = Arc::new(Barrier::new(65));
    let clients: Vec<_> = (0..64)
        .map(|i| {
            let (start_line, hold) = (Arc::clone(&start_line), Arc::clone(&hold));
            thread::spawn(move || {
                start_line.wait();
                let started = Instant::now();
                let mut s = TcpStream::connect_timeout(&addr, 2000 * MS).expect("connect");
                s.set_read_timeout(Some(2000 * MS)).unwrap();
                s.write_all(get_text(&format!("/burst/{i}"), false).as_bytes())
                    .unwrap();
                let answer = read_response(&mut BufReader::new(&s));
                let took = started.elapsed();
                hold.wait(); // keep the connection open until every client has its answer
                (answer.map(|r| r.status), took)
            })
        })
        .collect();
    hold.wait();
    for (i, client) in clients.into_iter().enumerate() {
        let (status, took) = client.join().unwrap();
        assert_eq!(status.unwrap_or_else(|e| panic!("client {i}: {e}")), 200);
        assert!(took <= 2000 * MS, "client {i} took {took:?}");
    }
}

#[test]
fn a_request_is_answered_within_1_s_while_300_idle_and_100_half_sent_connections_are_open() {
    let mut opts = options(10_000, 2);
    opts.connection_threads = 32;
    let server = start(opts);
    let addr = server.local_addr();
    let idle: Vec<TcpStream> = (0..300).map(|_| connect(addr)).collect();
    let half_sent: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut s = connect(addr);
            s.write_all(b"POST /x HTTP/1.1\r\nHost: test\r\nContent-Le")
                .unwrap();
            s
        })
        .collect();
    thread::sleep(100 * MS);
    assert_eq!(get_within(addr, "/still-here", 1000 * MS).status, 200);
    drop((idle, half_sent));
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_read_timeout() {
    let server = start(options(500, 1));
    let mut stream = connect(server.local_addr());
    stream
        .write_all(get_text("/first", false).as_bytes())
        .unwrap();
    assert_eq!(
        read_response(&mut BufReader::new(&stream)).unwrap().status,
        200
    );
    let closed = time_until_closed(&mut stream, 3000 * MS).expect("the idle connection was closed");
    assert!(
        closed >= 300 * MS && closed <= 1500 * MS,
        "closed after {closed:?}"
    );
}

#[test]
fn the_listener_still_accepts_after_idling_three_read_timeouts() {
    let server = start(options(300, 1));
    let addr = server.local_addr();
    assert_eq!(get_within(addr, "/before", 1000 * MS).status, 200);
    thread::sleep(3 * 300 * MS + 100 * MS);
    assert_eq!(get_within(addr, "/after-idle", 1000 * MS).status, 200);
}

#[test]
fn a_handler_panic_becomes_a_500_problem_and_the_only_worker_keeps_serving() {
    let server = start(options(1000, 1));
    let addr = server.local_addr();
    let response = exchange(addr, &get_text("/panic", true)).unwrap();
    assert_problem(&response, 500);
    assert!(!String::from_utf8_lossy(&response.body).contains("requested by the test"));
    assert_eq!(get_within(addr, "/fine", 1000 * MS).status, 200);
}

#[test]
fn bodies_up_to_the_limit_are_read_in_full_and_chunked_bodies_over_it_get_413() {
    let server = start(options(1000, 2));
    let addr = server.local_addr();
    let body = "x".repeat(MAX_BODY);
    let answer = exchange(
        addr,
        &format!("{}{body}", post_head("/full", MAX_BODY as u64)),
    )
    .unwrap();
    assert_eq!(answer.json()["bodyLength"], MAX_BODY);

    let expect = format!(
        "POST /continue HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\nExpect: 100-continue\r\n\r\n{}",
        "y".repeat(2000)
    );
    assert_eq!(exchange(addr, &expect).unwrap().json()["bodyLength"], 2000);

    let chunk = "z".repeat(1000);
    let mut chunked =
        String::from("POST /chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..5 {
        chunked.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    chunked.push_str("0\r\n\r\n");
    assert_problem(&exchange(addr, &chunked).unwrap(), 413);
    assert_eq!(get_within(addr, "/after", 1000 * MS).status, 200);
}

#[test]
fn shutdown_refuses_new_connections_and_waits_for_a_slow_request_to_complete() {
    let server = start(options(2000, 2));
    let addr = server.local_addr();
    let slow = thread::spawn(move || exchange(addr, &get_text("/slow?ms=800", true)));
    thread::sleep(200 * MS); // the slow request is now in the handler

    let checker = thread::spawn(move || {
        thread::sleep(100 * MS); // shutdown has begun
        match TcpStream::connect_timeout(&addr, 1000 * MS) {
            Err(_) => true,
            Ok(mut s) => {
                s.set_read_timeout(Some(1000 * MS)).unwrap();
                let _ = s.write_all(get_text("/late", true).as_bytes());
                read_response(&mut BufReader::new(&s)).is_err()
            }
        }
    });
    let started = Instant::now();
    server.shutdown(Duration::from_secs(3));
    let took = started.elapsed();

    let answer = slow.join().unwrap().expect("the slow request completes");
    assert_eq!(answer.json()["path"], "/slow");
    assert!(
        took >= 400 * MS && took < 2000 * MS,
        "shutdown took {took:?}"
    );
    assert!(
        checker.join().unwrap(),
        "a connection made during shutdown was served"
    );
    assert!(
        TcpStream::connect_timeout(&addr, 1000 * MS).is_err(),
        "still accepting after shutdown"
    );
}

#[test]
fn shutdown_returns_within_its_grace_when_a_request_outlives_it() {
    let server = start(options(2000, 1));
    let addr = server.local_addr();
    let slow = thread::spawn(move || exchange(addr, &get_text("/slow?ms=3000", true)));
    thread::sleep(200 * MS);
    let started = Instant::now();
    server.shutdown(300 * MS);
    let took = started.elapsed();
    assert!(took < 1000 * MS, "shutdown took {took:?}");
    // The request that outlived the grace period has its connection closed.
    assert!(slow.join().unwrap().is_err());
}

#[test]
fn wait_returns_when_the_shutdown_handle_is_triggered() {
    let server: Server = start(options(1000, 1));
    let handle = server.shutdown_handle();
    let trigger = thread::spawn(move || {
        thread::sleep(100 * MS);
        handle.trigger();
    });
    let started = Instant::now();
    server.wait();
    assert!(started.elapsed() >= 50 * MS && started.elapsed() < 2000 * MS);
    trigger.join().unwrap();
    server.shutdown(Duration::from_secs(1));
}

#[test]
fn shutdown_of_an_idle_server_with_several_workers_returns_at_once() {
    for _ in 0..5 {
        let server = start(options(1000, 8));
        assert_eq!(
            get_within(server.local_addr(), "/one", 1000 * MS).status,
            200
        );
        let started = Instant::now();
        server.shutdown(Duration::from_secs(3));
        assert!(
            started.elapsed() < 500 * MS,
            "shutdown took {:?}",
            started.elapsed()
        );
    }
}
