//! The HTTP front end when the process runs out of file descriptors. It lowers the process-wide
//! RLIMIT_NOFILE, so it is the only test of its binary (no other test can be hit by EMFILE).

#[path = "support/raw.rs"]
mod raw;

use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use raw::*;

fn nofile_limit() -> libc::rlimit {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit to write into.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    limit
}

fn set_nofile_limit(limit: &libc::rlimit) {
    // SAFETY: `limit` is a valid rlimit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, limit) }, 0);
}

/// Restores the saved limit even if the test fails half-way.
struct Restore(libc::rlimit);

impl Drop for Restore {
    fn drop(&mut self) {
        set_nofile_limit(&self.0);
    }
}

#[test]
fn the_server_accepts_again_after_file_descriptors_ran_out_and_were_freed() {
    let server = start(options(2000, 2));
    let addr = server.local_addr();
    assert_eq!(
        get_within(addr, "/before", Duration::from_secs(1)).status,
        200
    );

    let saved = nofile_limit();
    let restore = Restore(saved);
    let open_now = std::fs::read_dir("/proc/self/fd").unwrap().count() as libc::rlim_t;
    set_nofile_limit(&libc::rlimit {
        rlim_cur: open_now + 40,
        rlim_max: saved.rlim_max,
    });

    // Open connections until this process cannot create another socket. The server needs two
    // descriptors per accepted connection, so it runs out first and its accept fails (or its
    // set-up of an accepted connection panics) while later connections queue in the backlog.
    let mut held: Vec<TcpStream> = Vec::new();
    let mut out_of_descriptors = false;
    let started = Instant::now();
    while held.len() < 1000 && started.elapsed() < Duration::from_secs(10) {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(s) => held.push(s),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                out_of_descriptors = true;
                break;
            }
            Err(e) => panic!(
                "unexpected connect error after {} connections: {e}",
                held.len()
            ),
        }
    }
    assert!(
        out_of_descriptors,
        "the descriptor limit was never reached ({} connections)",
        held.len()
    );
    thread::sleep(Duration::from_millis(500)); // the accept loop meets EMFILE and backs off

    drop(held);
    drop(restore);

    // Answered again within a few seconds (the accept back-off is at most 1 s).
    let recovered = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let answer =
            std::panic::catch_unwind(|| get_within(addr, "/after", Duration::from_secs(2)));
        match answer {
            Ok(response) => {
                assert_eq!(response.status, 200);
                break;
            }
            Err(_) if recovered.elapsed() < Duration::from_secs(5) && attempts < 5 => {
                thread::sleep(Duration::from_millis(200));
            }
            Err(_) => panic!(
                "not serving {:?} after the descriptors were freed",
                recovered.elapsed()
            ),
        }
    }
    assert!(
        recovered.elapsed() < Duration::from_secs(5),
        "recovery took {:?}",
        recovered.elapsed()
    );
    let stopping = Instant::now();
    server.shutdown(Duration::from_secs(3));
    assert!(
        stopping.elapsed() < Duration::from_secs(1),
        "shutdown took {:?}",
        stopping.elapsed()
    );
}
