//! The LL-MEC driver end to end against the fake LL-MEC platform: exact calls and bodies,
//! error answers, timeouts, outages, and the proxy environment being ignored.

mod support;

use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use mec_plugin::config::{DriverKind, MepConfig};
use mec_plugin::mep::agent::MepClient;
use mec_plugin::mep::llmec::LlMec;
use mec_plugin::mep::{Driver, MepError, Step};
use mec_plugin::model::parse_creation;
use support::Call;
use support::fake_llmec::{DNS_PATH, FakeLlMec, TRAFFIC_PATH};

/// The rules of `seed-examples/trafficrule.json`.
const SEED: &str = include_str!("data/seed-trafficrule.json");

const DNS_BODY: &str =
    r#"{"url":"pfrag.gr","mec-ipaddr":"172.24.248.5","mec-macaddr":"00:00:00:00:00:00","type":1}"#;
const TRAFFIC_BODY: &str = r#"{"ue_list":["208930100001114"],"service_ip":"195.251.255.142","port":"80","transport":1,"mec_ipaddr":"172.16.0.111","mec_macaddr":"00:11:22:33:44:55","type":2}"#;

fn mep(url: &str, timeout: Duration) -> MepConfig {
    MepConfig::new(DriverKind::Llmec, url, timeout)
}

fn driver(fake: &FakeLlMec, timeout: Duration) -> LlMec {
    LlMec::new(&mep(&fake.url(), timeout))
}

fn seed_steps(driver: &LlMec) -> Vec<Step> {
    let request = parse_creation(SEED.as_bytes()).unwrap();
    driver.plan("req-1", &request).unwrap()
}

fn call(method: &str, path: &str, body: &str) -> Call {
    Call {
        headers: Vec::new(),
        method: method.into(),
        path: path.into(),
        body: body.into(),
    }
}

fn installed(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(p, b)| (p.to_string(), b.to_string()))
        .collect()
}

#[test]
fn apply_then_remove_sends_the_exact_llmec_calls() {
    let fake = FakeLlMec::start();
    let llmec = driver(&fake, Duration::from_secs(3));
    let steps = seed_steps(&llmec);
    assert_eq!(steps.len(), 2);
    for step in &steps {
        llmec.apply(step).unwrap();
    }
    assert_eq!(
        fake.calls(),
        vec![
            call("POST", DNS_PATH, DNS_BODY),
            call("POST", TRAFFIC_PATH, TRAFFIC_BODY)
        ]
    );
    assert_eq!(
        fake.installed(),
        installed(&[(DNS_PATH, DNS_BODY), (TRAFFIC_PATH, TRAFFIC_BODY)])
    );

    fake.clear_calls();
    for step in steps.iter().rev() {
        llmec.remove(step).unwrap();
    }
    assert_eq!(
        fake.calls(),
        vec![
            call("DELETE", TRAFFIC_PATH, TRAFFIC_BODY),
            call("DELETE", DNS_PATH, DNS_BODY)
        ]
    );
    assert!(fake.installed().is_empty());

    // Removing what the platform no longer has (it answers 404) succeeds.
    llmec.remove(&steps[0]).unwrap();
    assert_eq!(fake.calls().len(), 3);
}

#[test]
fn error_answers_are_refusals_with_the_platform_detail() {
    let fake = FakeLlMec::start();
    let llmec = driver(&fake, Duration::from_secs(3));
    let steps = seed_steps(&llmec);

    fake.fail_nth_post(2, 400);
    llmec.apply(&steps[0]).unwrap();
    let e = llmec.apply(&steps[1]).unwrap_err();
    assert_eq!(
        e,
        MepError::Refused {
            url: format!("{}{TRAFFIC_PATH}", fake.url()),
            status: 400,
            detail: "injected fault: HTTP 400".into()
        }
    );
    assert!(!e.is_ambiguous());
    assert_eq!(fake.installed(), installed(&[(DNS_PATH, DNS_BODY)]));
    // Only that one POST failed.
    llmec.apply(&steps[1]).unwrap();
    assert_eq!(fake.installed().len(), 2);

    fake.fail_all(503);
    let e = llmec.remove(&steps[0]).unwrap_err();
    assert!(matches!(e, MepError::Refused { status: 503, .. }), "{e:?}");
    assert_eq!(fake.installed().len(), 2, "a failed DELETE removes nothing");
    fake.heal();
    llmec.remove(&steps[0]).unwrap();
    assert_eq!(fake.installed(), installed(&[(TRAFFIC_PATH, TRAFFIC_BODY)]));
}

#[test]
fn other_paths_and_methods_are_not_found() {
    let fake = FakeLlMec::start();
    let client = MepClient::new(&mep(&fake.url(), Duration::from_secs(3)));
    for (method, path) in [("GET", DNS_PATH), ("PUT", TRAFFIC_PATH), ("POST", "/api/x")] {
        let e = client
            .send(method, &client.url(path), Some("{}"))
            .unwrap_err();
        assert!(matches!(e, MepError::Refused { status: 404, .. }), "{e:?}");
    }
    assert_eq!(fake.calls().len(), 3);
    assert!(fake.installed().is_empty());
}

#[test]
fn a_platform_slower_than_the_timeout_is_a_timeout_within_the_bound() {
    let fake = FakeLlMec::start();
    let timeout = Duration::from_millis(400);
    let llmec = driver(&fake, timeout);
    let steps = seed_steps(&llmec);
    fake.delay(Duration::from_secs(3));
    let started = Instant::now();
    let e = llmec.apply(&steps[0]).unwrap_err();
    let took = started.elapsed();
    assert_eq!(
        e,
        MepError::Timeout {
            url: format!("{}{DNS_PATH}", fake.url())
        }
    );
    assert!(e.is_ambiguous());
    assert!(took >= timeout, "{took:?}");
    assert!(took < timeout + Duration::from_millis(1000), "{took:?}");
}

#[test]
fn a_delayed_call_does_not_hold_up_other_connections() {
    let fake = FakeLlMec::start();
    let slow = driver(&fake, Duration::from_secs(5));
    let steps = seed_steps(&slow);
    fake.delay(Duration::from_millis(1500));
    let started = Instant::now();
    std::thread::scope(|s| {
        let pending = s.spawn(|| slow.apply(&steps[0]));
        // Let the slow call arrive, then serve another client without delay.
        while fake.calls().is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
        fake.delay(Duration::ZERO);
        let fast = driver(&fake, Duration::from_secs(5));
        fast.apply(&steps[1]).unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "{:?}",
            started.elapsed()
        );
        pending.join().unwrap().unwrap();
    });
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(fake.installed().len(), 2);
}

#[test]
fn a_stopped_platform_is_unreachable_and_comes_back_on_restart() {
    let fake = FakeLlMec::start();
    let llmec = driver(&fake, Duration::from_secs(3));
    let steps = seed_steps(&llmec);
    // Leaves a pooled keep-alive connection behind, which stop() must reset too.
    llmec.apply(&steps[0]).unwrap();

    fake.stop();
    assert!(TcpStream::connect(("127.0.0.1", fake.port())).is_err());
    let started = Instant::now();
    let e = llmec.apply(&steps[1]).unwrap_err();
    // Refused at connect: nothing was written, so nothing can have been applied.
    assert!(matches!(e, MepError::NotSent { .. }), "{e:?}");
    assert!(!e.is_ambiguous());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let e = llmec.remove(&steps[0]).unwrap_err();
    assert!(matches!(e, MepError::NotSent { .. }), "{e:?}");

    fake.restart();
    llmec.apply(&steps[1]).unwrap();
    assert_eq!(fake.installed().len(), 2, "state survives an outage");
}

#[test]
fn dropping_the_fake_closes_its_port() {
    let fake = FakeLlMec::start();
    let port = fake.port();
    let llmec = driver(&fake, Duration::from_secs(3));
    llmec.apply(&seed_steps(&llmec)[0]).unwrap();
    fake.delay(Duration::from_secs(30));
    let started = Instant::now();
    drop(fake);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

const CHILD_MARKER: &str = "LLMEC_DRIVER_PROXY_CHILD";

/// Runs [`proxy_child`] in a child process whose environment names a proxy for every scheme
/// (setting variables in this multi-threaded process would race with the other tests).
#[test]
fn proxy_environment_is_ignored() {
    // A "proxy" that records whether anyone connected to it.
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    proxy.set_nonblocking(true).unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["proxy_child", "--exact", "--ignored", "--test-threads=1"])
        .env(CHILD_MARKER, "1")
        .env("ALL_PROXY", &proxy_url)
        .env("all_proxy", &proxy_url)
        .env("HTTP_PROXY", &proxy_url)
        .env("http_proxy", &proxy_url)
        .env("HTTPS_PROXY", &proxy_url)
        .env("https_proxy", &proxy_url)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        proxy.accept().is_err(),
        "the MEP client connected to the proxy from the environment"
    );
}

#[test]
#[ignore = "run by proxy_environment_is_ignored in a child process with proxy variables set"]
fn proxy_child() {
    if std::env::var_os(CHILD_MARKER).is_none() {
        eprintln!("proxy_child only checks something when run by proxy_environment_is_ignored");
        return;
    }
    assert!(
        ureq::Proxy::try_from_env().is_some(),
        "the proxy variables are in effect"
    );
    let fake = FakeLlMec::start();
    let llmec = driver(&fake, Duration::from_secs(3));
    let steps = seed_steps(&llmec);
    llmec.apply(&steps[0]).unwrap();
    llmec.remove(&steps[0]).unwrap();
    assert_eq!(fake.calls().len(), 2);
}
