//! The EdgeGallery driver end to end: the real server against the fake EdgeGallery MEP over
//! HTTP and HTTPS (test CA), covering the task polling outcomes (success, FAILURE, stuck),
//! error answers, removal, a lost answer, the bearer token (sent, never logged) and the TLS
//! trust rules of the MEP client.

mod support;

use std::path::PathBuf;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use mec_plugin::config::{DriverKind, MepConfig, Secret};
use mec_plugin::mep::agent::MepClient;
use mec_plugin::mep::edgegallery::EdgeGallery;
use mec_plugin::mep::{Driver, MepError};
use mec_plugin::model::parse_creation;
use mec_plugin::util::lock;
use support::fake_edgegallery::{CODE_IN_PROGRESS, CODE_INVALID, FakeEdgeGallery};
use support::tls::TestPki;
use support::{Plugin, Reply, eventually, example, server_section, temp_dir};

const TOKEN: &str = "eg-T0ken-5ecret";

/// Captures every log line of this test binary (debug level and above), so that tests can
/// check what was, and was not, logged.
struct Capture;

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Debug
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let line = format!("{} {}: {}", record.level(), record.target(), record.args());
            lock(&LINES).push(line);
        }
    }

    fn flush(&self) {}
}

static CAPTURE: Capture = Capture;

fn capture_logs() {
    // Only the first call installs it; later ones fail harmlessly.
    if log::set_logger(&CAPTURE).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
}

fn logged() -> Vec<String> {
    lock(&LINES).clone()
}

fn token_file() -> PathBuf {
    let path = temp_dir("eg-token").join("token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    path
}

/// A `[[region]]` "eg" on the EdgeGallery MEP at `url`, polling every 20 ms at most 5 times.
fn eg_region(url: &str, timeout_ms: u64, extra: &str) -> String {
    format!(
        "[[region]]\nid = \"eg\"\nlatitude = 43.6\nlongitude = 7.06\nrange_km = 10.0\n[region.mep]\ndriver = \"edgegallery\"\nurl = \"{url}\"\ntimeout_ms = {timeout_ms}\npoll_interval_ms = 20\npoll_attempts = 5\n{extra}"
    )
}

fn plugin_with(fake: &FakeEdgeGallery, timeout_ms: u64, extra: &str) -> Plugin {
    let extra = format!("token_file = \"{}\"\n{extra}", token_file().display());
    Plugin::start(&format!(
        "{}{}",
        server_section(""),
        eg_region(&fake.url(), timeout_ms, &extra)
    ))
}

fn plugin(fake: &FakeEdgeGallery) -> Plugin {
    fake.require_token(TOKEN);
    plugin_with(fake, 1000, "")
}

/// `examples/traffic-and-dns.json` for region "eg".
fn traffic_and_dns() -> String {
    let body = example("traffic-and-dns.json");
    assert!(body.contains(r#""RegionId": "2""#));
    body.replace(r#""RegionId": "2""#, r#""RegionId": "eg""#)
}

/// The AppDConfig the driver sends for [`traffic_and_dns`] as request `id`.
fn expected_body(id: &str) -> String {
    format!(
        r#"{{"appName":"mecplugin-{id}","appSupportMp1":true,"appTrafficRule":[{{"trafficRuleId":"tr-video","filterType":"FLOW","priority":1,"trafficFilter":[{{"srcAddress":["208930100001114"],"dstAddress":["195.251.255.142"],"dstPort":["80"],"protocol":["tcp"]}}],"action":"FORWARD_DECAPSULATED","dstInterface":[{{"interfaceType":"IP","dstMacAddress":"00:11:22:33:44:55","dstIpAddress":"172.16.0.111"}}]}}],"appDNSRule":[{{"dnsRuleId":"dns-video","domainName":"video.example.org","ipAddressType":"IP_V4","ipAddress":"172.16.0.111","ttl":30}}]}}"#
    )
}

fn config_path(id: &str) -> String {
    FakeEdgeGallery::config_path(id)
}

fn created_id(reply: &Reply) -> String {
    assert_eq!(reply.status, 201, "{:?}", reply.json);
    reply.json["RequestId"].as_str().unwrap().to_string()
}

/// The `statusDetail` of request `id` ("" when it has none).
fn status_detail(p: &Plugin, id: &str) -> String {
    p.get(&format!("/service/requests/{id}")).json["statusDetail"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Removed from the MEP (the fake has nothing committed) and shown so on request `id`.
fn removed_in_the_end(fake: &FakeEdgeGallery, p: &Plugin, id: &str) {
    assert!(
        eventually(Duration::from_secs(5), || fake.committed().is_empty()),
        "the reconciler removes it: {:?}",
        fake.calls()
    );
    assert!(eventually(Duration::from_secs(2), || status_detail(p, id)
        .contains("removed from the platform")));
}

/// The stuck creation task ends: the MEP commits the configuration after all.
fn commit_late(fake: &FakeEdgeGallery) {
    fake.unstick();
    assert_eq!(
        fake.committed().len(),
        1,
        "the MEP finished the creation after all"
    );
}

/// A configuration for the tests that restart the plugin on its state directory. A long
/// timeout only widens the settle window (2 × (3 s + 5 × 20 ms)): the tests must see the MEP
/// commit inside it even on a slow machine.
fn restart_config(fake: &FakeEdgeGallery) -> String {
    format!(
        "{}{}",
        server_section(""),
        eg_region(
            &fake.url(),
            3000,
            // The service's own settle window (2 × timeout by default) kept short: these
            // tests are about the driver's, which is longer.
            &format!(
                "token_file = \"{}\"\nsettle_ms = 1000\n",
                token_file().display()
            )
        )
    )
}

/// How many DELETEs the MEP received.
fn deletes(fake: &FakeEdgeGallery) -> usize {
    fake.calls().iter().filter(|c| c.method == "DELETE").count()
}

fn failed_id(reply: &Reply) -> String {
    reply.json["RequestId"]
        .as_str()
        .expect("the error carries the RequestId")
        .to_string()
}

#[test]
fn a_creation_answers_201_only_after_its_task_succeeded_with_the_exact_call() {
    let fake = FakeEdgeGallery::start();
    fake.polls_to_finish(3);
    let p = plugin(&fake);
    let id = created_id(&p.post(&traffic_and_dns()));

    let calls = fake.calls();
    assert_eq!(calls.len(), 4, "one POST, then three polls: {calls:#?}");
    let post = &calls[0];
    assert_eq!(post.method, "POST");
    assert_eq!(post.path, config_path(&id));
    assert_eq!(post.body, expected_body(&id));
    assert_eq!(
        post.header("authorization"),
        Some(&*format!("Bearer {TOKEN}"))
    );
    assert_eq!(post.header("x-appinstanceid"), Some(id.as_str()));
    assert_eq!(post.header("content-type"), Some("application/json"));
    for poll in &calls[1..] {
        assert_eq!(poll.method, "GET");
        assert_eq!(
            poll.path,
            "/mepcfg/app_lcm/v1/tasks/task-0001/appd_configuration"
        );
        assert_eq!(
            poll.header("authorization"),
            Some(&*format!("Bearer {TOKEN}"))
        );
    }
    assert_eq!(
        fake.committed().get(&id),
        Some(&expected_body(&id)),
        "committed before the 201"
    );
    let stored = p.get(&format!("/service/requests/{id}"));
    assert_eq!(stored.json["status"], "CREATED");
}

#[test]
fn a_failed_task_is_502_with_its_reason_and_leaves_nothing() {
    let fake = FakeEdgeGallery::start();
    let p = plugin(&fake);
    fake.fail_next_task("dataplane: no route to 172.16.0.111");
    let r = p.post(&traffic_and_dns());
    let detail = r.problem(502);
    assert!(
        detail.contains("FAILURE: dataplane: no route to 172.16.0.111"),
        "{detail}"
    );
    let id = failed_id(&r);
    let stored = p.get(&format!("/service/requests/{id}")).json;
    assert_eq!(stored["status"], "FAILED");
    assert!(fake.committed().is_empty());
    assert_eq!(fake.running_tasks(), 0);
    assert!(
        fake.calls().iter().all(|c| c.method != "DELETE"),
        "a FAILURE is not ambiguous: nothing to remove"
    );
    assert_eq!(p.delete(&id).status, 201);
}

#[test]
fn a_task_stuck_processing_is_504_and_its_configuration_is_removed_once_the_mep_recovers() {
    let fake = FakeEdgeGallery::start();
    let p = plugin(&fake);
    fake.stick();
    let started = Instant::now();
    let r = p.post(&traffic_and_dns());
    r.problem(504);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let id = failed_id(&r);
    let stored = p.get(&format!("/service/requests/{id}")).json;
    assert_eq!(stored["status"], "FAILED");
    assert!(
        stored["statusDetail"]
            .as_str()
            .unwrap()
            .contains("may remain"),
        "{stored:?}"
    );
    assert_eq!(fake.running_tasks(), 1);

    // While the task runs, a DELETE would be answered 404 and the configuration committed
    // later: the driver asks the task instead, and the reconciler keeps coming back.
    thread::sleep(Duration::from_millis(500));
    assert!(fake.calls().iter().all(|c| c.method != "DELETE"));
    assert!(fake.calls().iter().filter(|c| c.method == "GET").count() > 5);

    commit_late(&fake);
    removed_in_the_end(&fake, &p, &id);
    assert!(
        fake.calls()
            .iter()
            .any(|c| c.method == "DELETE" && c.path == config_path(&id))
    );
    assert_eq!(p.delete(&id).status, 201);
}

#[test]
fn a_lost_post_answer_is_504_and_a_configuration_committed_later_is_removed() {
    let fake = FakeEdgeGallery::start();
    fake.require_token(TOKEN);
    let p = plugin_with(&fake, 600, "");
    // The POST is handled only after the client gave up; its task then ends on its own.
    fake.delay_posts(Duration::from_millis(900));
    fake.finish_tasks_after(Some(Duration::from_millis(50)));
    let started = Instant::now();
    let r = p.post(&traffic_and_dns());
    r.problem(504);
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "{:?}",
        started.elapsed()
    );
    let id = failed_id(&r);
    assert!(
        eventually(Duration::from_secs(3), || fake
            .committed()
            .contains_key(&id)),
        "the MEP took the late POST"
    );
    removed_in_the_end(&fake, &p, &id);
    assert_eq!(p.delete(&id).status, 201);
}

#[test]
fn after_a_restart_a_404_is_not_taken_as_absence_while_the_creation_may_still_run() {
    let fake = FakeEdgeGallery::start();
    fake.require_token(TOKEN);
    let dir = temp_dir("eg-restart");
    let config = restart_config(&fake);
    let p = Plugin::start_in(&config, &dir);
    fake.stick();
    let r = p.post(&traffic_and_dns());
    r.problem(504);
    let id = failed_id(&r);
    // What this run saw of the creation (its task) goes with it.
    p.stop();

    let p = Plugin::start_in(&config, &dir);
    // The MEP answers 404 while the task runs; the reconciler keeps coming back instead of
    // believing it.
    assert!(eventually(Duration::from_secs(3), || deletes(&fake) >= 2));
    let detail = status_detail(&p, &id);
    assert!(!detail.contains("removed from the platform"), "{detail}");
    assert!(fake.committed().is_empty());

    commit_late(&fake);
    removed_in_the_end(&fake, &p, &id);
}

#[test]
fn after_a_restart_a_deleting_request_whose_creation_may_still_run_is_not_forgotten_early() {
    let fake = FakeEdgeGallery::start();
    fake.require_token(TOKEN);
    let dir = temp_dir("eg-restart-deleting");
    let config = restart_config(&fake);
    let p = Plugin::start_in(&config, &dir);
    fake.stick();
    let id = failed_id(&p.post(&traffic_and_dns()));
    // Deleted while its creation task still runs (409 while the reconciler is at it).
    let path = format!("/service/requests/{id}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut reply = p.delete(&id);
    while reply.status == 409 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
        reply = p.delete(&id);
    }
    assert_eq!(reply.status, 202, "{:?}", reply.json);
    assert_eq!(reply.json["status"], "DELETING");
    p.stop();

    // A DELETING request may have been a FAILED one whose creation was never answered: the
    // new run does not take the MEP's 404 for its absence while the task may still commit.
    let p = Plugin::start_in(&config, &dir);
    assert!(eventually(Duration::from_secs(3), || deletes(&fake) >= 2));
    assert_eq!(p.get(&path).status, 200, "still recorded");
    assert!(fake.committed().is_empty());

    commit_late(&fake);
    assert!(
        eventually(Duration::from_secs(8), || fake.committed().is_empty()
            && p.get(&path).status == 404),
        "removed from the MEP, then forgotten: {:?}",
        fake.calls()
    );
}

#[test]
fn a_problem_details_answer_is_502_with_its_detail_and_mep_code() {
    let fake = FakeEdgeGallery::start();
    let p = plugin(&fake);
    fake.answer_next(400, CODE_INVALID, "Invalid value for input on: Priority");
    let r = p.post(&traffic_and_dns());
    let detail = r.problem(502);
    assert!(
        detail.contains("400: Invalid value for input on: Priority (MEP code 40001)"),
        "{detail}"
    );
    let id = failed_id(&r);
    assert_eq!(
        p.get(&format!("/service/requests/{id}")).json["status"],
        "FAILED"
    );
    assert!(fake.committed().is_empty());
    assert!(fake.calls().iter().all(|c| c.method != "DELETE"));

    fake.fail_all(503);
    let detail = p.post(&traffic_and_dns()).problem(502);
    assert!(detail.contains("503"), "{detail}");
    fake.heal();
    assert!(fake.committed().is_empty());
}

#[test]
fn delete_sends_a_delete_follows_its_task_and_answers_201() {
    let fake = FakeEdgeGallery::start();
    let p = plugin(&fake);
    let id = created_id(&p.post(&traffic_and_dns()));
    fake.clear_calls();
    let r = p.delete(&id);
    assert_eq!(r.status, 201, "{:?}", r.json);
    assert_eq!(r.json["status"], "DELETED");
    let calls = fake.calls();
    assert_eq!(calls[0].method, "DELETE");
    assert_eq!(calls[0].path, config_path(&id));
    assert_eq!(calls[0].body, "", "no body");
    assert_eq!(calls[0].header("x-appinstanceid"), Some(id.as_str()));
    assert_eq!(
        calls[0].header("authorization"),
        Some(&*format!("Bearer {TOKEN}"))
    );
    assert!(calls.len() >= 3 && calls[1..].iter().all(|c| c.method == "GET"));
    assert!(fake.committed().is_empty());
    p.get(&format!("/service/requests/{id}")).problem(404);
}

#[test]
fn a_delete_whose_task_hangs_is_accepted_and_finished_by_the_reconciler() {
    let fake = FakeEdgeGallery::start();
    let p = plugin(&fake);
    let id = created_id(&p.post(&traffic_and_dns()));
    fake.stick();
    let r = p.delete(&id);
    assert_eq!(r.status, 202, "{:?}", r.json);
    assert_eq!(r.json["status"], "DELETING");
    // Further DELETEs meet "another operation in progress" until the task ends.
    thread::sleep(Duration::from_millis(300));
    assert_eq!(fake.committed().len(), 1);
    fake.unstick();
    assert!(eventually(Duration::from_secs(5), || p
        .get(&format!("/service/requests/{id}"))
        .status
        == 404));
    assert!(fake.committed().is_empty());
}

fn mep_config(url: &str) -> MepConfig {
    let mut mep = MepConfig::new(DriverKind::Edgegallery, url, Duration::from_secs(2));
    mep.poll_interval = Duration::from_millis(10);
    mep.poll_attempts = 5;
    mep
}

fn seed_steps(driver: &EdgeGallery, id: &str) -> Vec<mec_plugin::mep::Step> {
    let request = parse_creation(traffic_and_dns().as_bytes()).unwrap();
    driver.plan(id, &request).unwrap()
}

#[test]
fn another_operation_in_progress_is_a_plain_refusal() {
    let fake = FakeEdgeGallery::start();
    let driver = EdgeGallery::new(&mep_config(&fake.url()));
    let steps = seed_steps(&driver, "a-1");
    fake.answer_next(
        403,
        CODE_IN_PROGRESS,
        "app instance has other operation in progress",
    );
    let e = driver.apply(&steps[0]).unwrap_err();
    assert!(matches!(e, MepError::Refused { status: 403, .. }), "{e:?}");
    assert!(!e.is_ambiguous());
    assert!(e.to_string().contains("other operation in progress"), "{e}");
    // Nothing pending: a removal is one DELETE answered 404, which counts as done.
    driver.remove(&steps[0]).unwrap();
}

#[test]
fn a_hostile_id_is_one_path_segment_on_the_wire() {
    let fake = FakeEdgeGallery::start();
    let driver = EdgeGallery::new(&mep_config(&fake.url()));
    let steps = seed_steps(&driver, "../../x y");
    driver.apply(&steps[0]).unwrap();
    let post = &fake.calls()[0];
    assert_eq!(
        post.path,
        "/mepcfg/app_lcm/v1/applications/%2E%2E%2F%2E%2E%2Fx%20y/appd_configuration"
    );
    assert_eq!(post.header("x-appinstanceid"), Some("../../x y"));
    assert!(fake.committed().contains_key("../../x y"));
    driver.remove(&steps[0]).unwrap();
    assert!(fake.committed().is_empty());
}

fn https_config(fake: &FakeEdgeGallery, ca_pem: Option<&str>) -> MepConfig {
    let mut mep = mep_config(&fake.url());
    mep.ca_pem = ca_pem.map(|pem| pem.as_bytes().to_vec());
    mep.token = Some(Secret::new(TOKEN.to_string()));
    mep
}

#[test]
fn https_with_the_private_ca_works_and_carries_the_token() {
    let pki = TestPki::generate("eg-ok");
    let fake = FakeEdgeGallery::start_https(&pki);
    fake.require_token(TOKEN);
    assert!(fake.url().starts_with("https://127.0.0.1:"));
    let driver = EdgeGallery::new(&https_config(&fake, Some(&pki.ca_pem)));
    let steps = seed_steps(&driver, "tls-1");
    driver.apply(&steps[0]).unwrap();
    assert!(fake.committed().contains_key("tls-1"));
    driver.remove(&steps[0]).unwrap();
    assert!(fake.committed().is_empty());
    let calls = fake.calls();
    assert!(calls.len() >= 4);
    for call in calls {
        assert_eq!(
            call.header("authorization"),
            Some(&*format!("Bearer {TOKEN}"))
        );
    }
}

#[test]
fn https_is_refused_without_the_private_ca_or_with_another_one() {
    let pki = TestPki::generate("eg-trust");
    let other = TestPki::generate("eg-other");
    let fake = FakeEdgeGallery::start_https(&pki);
    for ca in [None, Some(other.ca_pem.as_str())] {
        let client = MepClient::new(&https_config(&fake, ca));
        let e = client
            .send("GET", &client.url(&config_path("x")), None)
            .unwrap_err();
        // Refused in the handshake: before the request was written.
        let MepError::NotSent { reason, .. } = &e else {
            panic!("{e:?}")
        };
        assert!(
            reason.to_ascii_lowercase().contains("certificate"),
            "{reason}"
        );
        assert!(!format!("{e} {e:?} {client:?}").contains(TOKEN));
    }
    assert!(fake.calls().is_empty(), "nothing reached the platform");
}

#[test]
fn https_through_the_plugin_with_ca_file_and_token_file_never_logs_the_token() {
    capture_logs();
    let pki = TestPki::generate("eg-plugin");
    let fake = FakeEdgeGallery::start_https(&pki);
    fake.require_token(TOKEN);
    let extra = format!("ca_file = \"{}\"\n", pki.ca_file.display());
    let p = plugin_with(&fake, 2000, &extra);
    let id = created_id(&p.post(&traffic_and_dns()));
    assert_eq!(fake.committed().get(&id), Some(&expected_body(&id)));
    // An error answer, logged as a warning, too.
    fake.answer_next(401, 40101, "missing or wrong access token");
    p.post(&traffic_and_dns()).problem(502);
    assert_eq!(p.delete(&id).status, 201);
    assert!(fake.committed().is_empty());

    let lines = logged();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("MEP call POST {}", fake.url()))),
        "the MEP calls were logged: {lines:#?}"
    );
    let leaks: Vec<&String> = lines.iter().filter(|l| l.contains(TOKEN)).collect();
    assert!(leaks.is_empty(), "the token was logged: {leaks:#?}");
}
