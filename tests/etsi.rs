//! The `etsi-mec011` driver end to end: the real server on 127.0.0.1:0 against the fake MEC 011
//! platform: activation and deactivation with exact paths, bodies and headers, the
//! `appInstanceId` extension, unknown rules, ETags and 412, a platform failing removals, and
//! hostile ids.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::fake_etsi::{Call, DNS, FakeEtsi, TRAFFIC};
use support::tls::{TestPki, TlsFront};
use support::{Plugin, Reply, eventually, example, server_section};

/// A `[[region]]` driven by a MEC 011 platform at `url`.
fn etsi_region(id: &str, url: &str, timeout_ms: u64) -> String {
    format!(
        "[[region]]\nid = \"{id}\"\nlatitude = 43.6\nlongitude = 7.06\nrange_km = 10.0\n[region.mep]\ndriver = \"etsi-mec011\"\nurl = \"{url}\"\ntimeout_ms = {timeout_ms}\n"
    )
}

fn plugin(mep: &FakeEtsi) -> Plugin {
    Plugin::start(&format!(
        "{}{}",
        server_section(""),
        etsi_region("2", &mep.url(), 1000)
    ))
}

/// The rules of `examples/traffic-and-dns.json` as the platform knows them from the
/// application's descriptor (MEC 011 spelling; stored INACTIVE).
fn descriptor_traffic() -> Value {
    json!({"trafficRuleId": "tr-video", "filterType": "FLOW", "priority": 1,
           "trafficFilter": [{"srcAddress": ["208930100001114"], "dstAddress": ["195.251.255.142"],
                              "dstPort": ["80"], "protocol": ["tcp"]}],
           "action": "FORWARD_DECAPSULATED",
           "dstInterface": {"interfaceType": "IP", "dstMacAddress": "00:11:22:33:44:55",
                            "dstIpAddress": "172.16.0.111"}})
}

fn descriptor_dns() -> Value {
    json!({"dnsRuleId": "dns-video", "domainName": "video.example.org", "ipAddressType": "IP_V4",
           "ipAddress": "172.16.0.111", "ttl": 30})
}

/// What the plugin sends for the example's rules, `state` aside.
const DNS_ACTIVE: &str = r#"{"dnsRuleId":"dns-video","domainName":"video.example.org","ipAddressType":"IP_V4","ipAddress":"172.16.0.111","ttl":30,"state":"ACTIVE"}"#;
const TRAFFIC_ACTIVE: &str = r#"{"trafficRuleId":"tr-video","filterType":"FLOW","priority":1,"trafficFilter":[{"srcAddress":["208930100001114"],"dstAddress":["195.251.255.142"],"dstPort":["80"],"protocol":["tcp"]}],"action":"FORWARD_DECAPSULATED","dstInterface":{"interfaceType":"IP","dstMacAddress":"00:11:22:33:44:55","dstIpAddress":"172.16.0.111"},"state":"ACTIVE"}"#;

/// Asserts that two JSON texts are the same value (the platform keeps a rule's members in its
/// own order: the plugin puts back what it read, with only `state` changed).
fn same_json(actual: &str, expected: &str) {
    let parse = |text: &str| -> Value {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    assert_eq!(parse(actual), parse(expected), "{actual}");
}

fn inactive(active: &str) -> String {
    active.replace(r#""state":"ACTIVE""#, r#""state":"INACTIVE""#)
}

/// The example request, with `appInstanceId` when given.
fn request(app: Option<&str>) -> String {
    let mut v: Value = serde_json::from_str(&example("traffic-and-dns.json")).unwrap();
    if let Some(app) = app {
        v["appInstanceId"] = app.into();
    }
    v.to_string()
}

fn preload(mep: &FakeEtsi, app: &str) {
    mep.preload(app, &[descriptor_traffic()], &[descriptor_dns()]);
}

fn rule_path(app_segment: &str, collection: &str, id: &str) -> String {
    format!("/mec_app_support/v1/applications/{app_segment}/{collection}/{id}")
}

fn created_id(reply: &Reply) -> String {
    assert_eq!(reply.status, 201, "{:?}", reply.json);
    reply.json["RequestId"].as_str().unwrap().to_string()
}

/// (method, path) of each call.
fn shape(calls: &[Call]) -> Vec<(String, String)> {
    calls
        .iter()
        .map(|c| (c.method.clone(), c.path.clone()))
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect()
}

#[test]
fn a_creation_activates_each_rule_with_exact_paths_bodies_and_headers() {
    let mep = FakeEtsi::start();
    preload(&mep, "app-1");
    let p = plugin(&mep);
    created_id(&p.post(&request(Some("app-1"))));

    let dns = rule_path("app-1", DNS, "dns-video");
    let traffic = rule_path("app-1", TRAFFIC, "tr-video");
    let calls = mep.calls();
    assert_eq!(
        shape(&calls),
        pairs(&[
            ("GET", &dns),
            ("PUT", &dns),
            ("GET", &traffic),
            ("PUT", &traffic)
        ]),
        "DNS first, each rule read then written"
    );
    same_json(&calls[1].body, DNS_ACTIVE);
    same_json(&calls[3].body, TRAFFIC_ACTIVE);
    for call in &calls {
        assert_eq!(call.header("X-AppinstanceID"), Some("app-1"), "{call:?}");
        assert_eq!(call.header("If-Match"), None, "the platform gave no ETag");
    }
    for put in &calls[1..] {
        if put.method == "PUT" {
            assert_eq!(put.header("Content-Type"), Some("application/json"));
        }
    }
    assert_eq!(
        mep.state("app-1", DNS, "dns-video").as_deref(),
        Some("ACTIVE")
    );
    assert_eq!(
        mep.state("app-1", TRAFFIC, "tr-video").as_deref(),
        Some("ACTIVE")
    );
}

#[test]
fn without_app_instance_id_the_request_id_names_the_application() {
    let mep = FakeEtsi::start();
    mep.preload_any(&[descriptor_traffic()], &[descriptor_dns()]);
    let p = plugin(&mep);
    let id = created_id(&p.post(&request(None)));
    let puts = mep.puts();
    assert_eq!(puts.len(), 2);
    assert_eq!(puts[0].path, rule_path(&id, DNS, "dns-video"));
    assert_eq!(puts[1].path, rule_path(&id, TRAFFIC, "tr-video"));
    assert!(
        puts.iter()
            .all(|c| c.header("X-AppinstanceID") == Some(&id))
    );
    assert_eq!(
        mep.state(&id, TRAFFIC, "tr-video").as_deref(),
        Some("ACTIVE")
    );
}

#[test]
fn an_unknown_rule_is_502_naming_it_and_the_earlier_rules_are_deactivated() {
    let mep = FakeEtsi::start();
    // The descriptor has the DNS rule only.
    mep.preload("app-1", &[], &[descriptor_dns()]);
    let p = plugin(&mep);
    let r = p.post(&request(Some("app-1")));
    let detail = r.problem(502);
    assert!(
        detail.contains("the platform does not know traffic rule 'tr-video' of application 'app-1': rules must come from the application's descriptor"),
        "{detail}"
    );
    let dns = rule_path("app-1", DNS, "dns-video");
    let traffic = rule_path("app-1", TRAFFIC, "tr-video");
    let calls = mep.calls();
    assert_eq!(
        shape(&calls),
        pairs(&[
            ("GET", &dns),
            ("PUT", &dns),
            ("GET", &traffic),
            ("GET", &dns),
            ("PUT", &dns)
        ])
    );
    same_json(&calls[1].body, DNS_ACTIVE);
    same_json(&calls[4].body, &inactive(DNS_ACTIVE));
    assert_eq!(
        mep.state("app-1", DNS, "dns-video").as_deref(),
        Some("INACTIVE")
    );
    let id = r.json["RequestId"].as_str().unwrap();
    assert_eq!(
        p.get(&format!("/service/requests/{id}")).json["status"],
        "FAILED"
    );
}

#[test]
fn delete_deactivates_in_reverse_order_then_answers_201() {
    let mep = FakeEtsi::start();
    preload(&mep, "app-1");
    let p = plugin(&mep);
    let id = created_id(&p.post(&request(Some("app-1"))));
    mep.clear_calls();
    let r = p.delete(&id);
    assert_eq!(r.status, 201, "{:?}", r.json);
    assert_eq!(r.json["status"], "DELETED");
    let puts = mep.puts();
    assert_eq!(
        shape(&puts),
        pairs(&[
            ("PUT", &rule_path("app-1", TRAFFIC, "tr-video")),
            ("PUT", &rule_path("app-1", DNS, "dns-video"))
        ])
    );
    same_json(&puts[0].body, &inactive(TRAFFIC_ACTIVE));
    same_json(&puts[1].body, &inactive(DNS_ACTIVE));
    assert!(
        mep.calls()
            .iter()
            .all(|c| c.header("X-AppinstanceID") == Some("app-1"))
    );
    assert!(mep.active().is_empty(), "{:?}", mep.active());
    // The rules stay known to the platform: only their state changed.
    assert!(mep.rule("app-1", TRAFFIC, "tr-video").is_some());
    p.get(&format!("/service/requests/{id}")).problem(404);
}

#[test]
fn etags_are_sent_as_if_match_and_a_412_is_read_again_and_retried_once() {
    let mep = FakeEtsi::start();
    preload(&mep, "app-1");
    mep.require_if_match();
    mep.concurrent_change("app-1", TRAFFIC, "tr-video", 1);
    let p = plugin(&mep);
    let id = created_id(&p.post(&request(Some("app-1"))));

    let traffic = rule_path("app-1", TRAFFIC, "tr-video");
    let calls: Vec<Call> = mep
        .calls()
        .into_iter()
        .filter(|c| c.path == traffic)
        .collect();
    let seen: Vec<(&str, Option<&str>)> = calls
        .iter()
        .map(|c| (c.method.as_str(), c.header("If-Match")))
        .collect();
    // Preloaded at version 1; the concurrent change after the first GET makes it 2.
    assert_eq!(
        seen,
        vec![
            ("GET", None),
            ("PUT", Some("\"1\"")),
            ("GET", None),
            ("PUT", Some("\"2\""))
        ]
    );
    assert_eq!(
        mep.state("app-1", TRAFFIC, "tr-video").as_deref(),
        Some("ACTIVE")
    );
    assert_eq!(p.delete(&id).status, 201);
    assert!(mep.active().is_empty());
}

#[test]
fn a_second_412_is_502_and_the_applied_rules_are_undone() {
    let mep = FakeEtsi::start();
    preload(&mep, "app-1");
    mep.enable_etags();
    mep.concurrent_change("app-1", TRAFFIC, "tr-video", 2);
    let p = plugin(&mep);
    let detail = p.post(&request(Some("app-1"))).problem(502);
    assert!(
        detail.contains("412")
            && detail.contains(
                "traffic rule 'tr-video' of application 'app-1' changed on the platform twice"
            ),
        "{detail}"
    );
    let traffic_puts = mep
        .puts()
        .iter()
        .filter(|c| c.path.contains(TRAFFIC))
        .count();
    assert_eq!(traffic_puts, 2, "one retry, no more");
    assert!(mep.active().is_empty(), "{:?}", mep.active());
}

#[test]
fn a_removal_the_platform_fails_is_202_and_finished_by_the_reconciler_once_healed() {
    let mep = FakeEtsi::start();
    preload(&mep, "app-1");
    let p = plugin(&mep);
    let id = created_id(&p.post(&request(Some("app-1"))));
    mep.fail_all(503);
    let r = p.delete(&id);
    assert_eq!(r.status, 202, "{:?}", r.json);
    assert_eq!(r.json["status"], "DELETING");
    let detail = r.json["statusDetail"].as_str().unwrap();
    assert!(
        detail.contains("503") && detail.contains("injected fault"),
        "{detail}"
    );
    assert_eq!(
        mep.active().len(),
        2,
        "still active while the platform fails"
    );
    mep.heal();
    assert!(
        eventually(Duration::from_secs(5), || p
            .get(&format!("/service/requests/{id}"))
            .status
            == 404),
        "the reconciler deactivates them once the platform recovers"
    );
    assert!(mep.active().is_empty(), "{:?}", mep.active());
}

#[test]
fn hostile_app_instance_ids_are_one_encoded_path_segment() {
    let mep = FakeEtsi::start();
    // Rules of the same ids under the applications a path traversal could reach.
    preload(&mep, "x");
    preload(&mep, "../../x");
    preload(&mep, "a b");
    let p = plugin(&mep);
    for (app, segment) in [("../../x", "%2E%2E%2F%2E%2E%2Fx"), ("a b", "a%20b")] {
        mep.clear_calls();
        let id = created_id(&p.post(&request(Some(app))));
        let calls = mep.calls();
        assert_eq!(calls.len(), 4, "{calls:?}");
        for call in &calls {
            assert!(
                call.path
                    .starts_with(&format!("/mec_app_support/v1/applications/{segment}/")),
                "{call:?}"
            );
            assert_eq!(call.header("X-AppinstanceID"), Some(app));
        }
        assert_eq!(
            mep.state(app, TRAFFIC, "tr-video").as_deref(),
            Some("ACTIVE")
        );
        assert_eq!(p.delete(&id).status, 201);
    }
    assert!(mep.active().is_empty(), "{:?}", mep.active());
    assert!(
        mep.calls().iter().all(|c| !c.path.contains("/x/")),
        "application 'x' was never called"
    );
}

#[test]
fn a_rule_mec011_cannot_express_is_422_and_nothing_is_sent() {
    let mep = FakeEtsi::start();
    preload(&mep, "app-1");
    let p = plugin(&mep);
    let mut v: Value = serde_json::from_str(&request(Some("app-1"))).unwrap();
    let second = v["appTrafficRule"][0]["dstInterface"][0].clone();
    v["appTrafficRule"][0]["dstInterface"]
        .as_array_mut()
        .unwrap()
        .push(second);
    let detail = p.post(&v.to_string()).problem(422);
    assert!(
        detail.contains("appTrafficRule[0] 'tr-video' dstInterface[1]")
            && detail.contains("etsi-mec011"),
        "{detail}"
    );
    assert!(mep.calls().is_empty());
}

#[test]
fn a_hanging_platform_is_504_within_the_timeout() {
    let mep = FakeEtsi::start();
    preload(&mep, "app-1");
    let p = Plugin::start(&format!(
        "{}{}",
        server_section(""),
        etsi_region("2", &mep.url(), 300)
    ));
    mep.delay(Duration::from_secs(2));
    let started = Instant::now();
    p.post(&request(Some("app-1"))).problem(504);
    let took = started.elapsed();
    // The GET of the first rule times out, then its undo's GET does.
    assert!(took < Duration::from_millis(1500), "{took:?}");
    mep.delay(Duration::ZERO);
}

#[test]
fn the_fake_refuses_a_put_without_the_app_header_with_problem_details() {
    use mec_plugin::config::{DriverKind, MepConfig};
    use mec_plugin::mep::MepError;
    use mec_plugin::mep::agent::MepClient;

    let mep = FakeEtsi::start();
    preload(&mep, "app-1");
    let client = MepClient::new(&MepConfig::new(
        DriverKind::EtsiMec011,
        &mep.url(),
        Duration::from_secs(2),
    ));
    let url = client.url(&rule_path("app-1", DNS, "dns-video"));
    let e = client.send("PUT", &url, Some(DNS_ACTIVE)).unwrap_err();
    let MepError::Refused { status, detail, .. } = e else {
        panic!("{e:?}")
    };
    assert_eq!(status, 400);
    assert!(detail.contains("X-AppinstanceID"), "{detail}");
    let e = client
        .send(
            "GET",
            &client.url(&rule_path("app-1", TRAFFIC, "nope")),
            None,
        )
        .unwrap_err();
    assert!(
        matches!(&e, MepError::Refused { status: 404, detail, .. } if detail.contains("no rule 'nope'")),
        "{e:?}"
    );
}

#[test]
fn over_https_with_the_region_ca_the_rules_are_activated_and_deactivated() {
    let mep = FakeEtsi::start();
    preload(&mep, "app-1");
    let pki = TestPki::generate("etsi");
    let front = TlsFront::start(&pki, mep.addr());
    let url = format!("https://127.0.0.1:{}", front.port());
    // Region 2 trusts the test CA; region 3 does not (the host's trust store only). Each has
    // its own front (a platform serves one region), with the same certificate.
    let other = TlsFront::start(&pki, mep.addr());
    let p = Plugin::start(&format!(
        "{}{}ca_file = \"{}\"\n{}",
        server_section(""),
        etsi_region("2", &url, 3000),
        pki.ca_file.display(),
        etsi_region("3", &format!("https://127.0.0.1:{}", other.port()), 3000)
    ));

    let mut untrusted: Value = serde_json::from_str(&request(Some("app-1"))).unwrap();
    untrusted["RegionId"] = "3".into();
    let detail = p.post(&untrusted.to_string()).problem(502);
    assert!(detail.contains("unreachable"), "{detail}");
    assert!(mep.calls().is_empty(), "nothing reached the platform");

    let id = created_id(&p.post(&request(Some("app-1"))));
    let puts = mep.puts();
    assert_eq!(puts.len(), 2);
    same_json(&puts[0].body, DNS_ACTIVE);
    same_json(&puts[1].body, TRAFFIC_ACTIVE);
    assert!(
        puts.iter()
            .all(|c| c.header("X-AppinstanceID") == Some("app-1"))
    );
    assert_eq!(mep.active().len(), 2);
    assert_eq!(p.delete(&id).status, 201);
    assert!(mep.active().is_empty());
}

#[test]
fn a_rule_activated_by_two_requests_stays_active_until_the_last_one_is_deleted() {
    let mep = FakeEtsi::start();
    preload(&mep, "app-1");
    let p = plugin(&mep);
    let first = created_id(&p.post(&request(Some("app-1"))));
    // the same rules, with a different TTL: one rule on the platform all the same
    let second = created_id(&p.post(&request(Some("app-1")).replace("\"ttl\":30", "\"ttl\":60")));
    assert_eq!(p.delete(&first).status, 201);
    assert_eq!(
        mep.state("app-1", DNS, "dns-video").as_deref(),
        Some("ACTIVE"),
        "still needed"
    );
    assert_eq!(
        mep.state("app-1", TRAFFIC, "tr-video").as_deref(),
        Some("ACTIVE")
    );
    assert_eq!(p.delete(&second).status, 201);
    assert_eq!(
        mep.state("app-1", DNS, "dns-video").as_deref(),
        Some("INACTIVE")
    );
    assert_eq!(
        mep.state("app-1", TRAFFIC, "tr-video").as_deref(),
        Some("INACTIVE")
    );
}

/// A deactivation that timed out (300 ms) and lands later (800 ms) must not leave INACTIVE a
/// rule another request activated meanwhile: that activation waits for the removal's settle
/// window (1.5 s), then reads the rule's state and activates it.
#[test]
fn an_activation_waits_for_a_deactivation_of_its_rule_that_may_still_land() {
    let mep = FakeEtsi::start();
    preload(&mep, "app-1");
    let p = Plugin::start(&format!(
        "{}{}settle_ms = 1500\n",
        server_section(""),
        etsi_region("2", &mep.url(), 300)
    ));
    let first = created_id(&p.post(&request(Some("app-1"))));
    mep.late_puts(Duration::from_millis(800));
    let r = p.delete(&first);
    assert_eq!(r.status, 202, "{:?}", r.json);
    mep.late_puts(Duration::ZERO);
    let second = created_id(&p.post(&request(Some("app-1"))));
    // Past the late deactivation and the first request's removal by the reconciler.
    assert!(
        eventually(Duration::from_secs(10), || p
            .get(&format!("/service/requests/{first}"))
            .status
            == 404),
        "{:?}",
        p.get(&format!("/service/requests/{first}")).json
    );
    std::thread::sleep(Duration::from_millis(500));
    let record = p.get(&format!("/service/requests/{second}"));
    assert_eq!(record.json["status"], "CREATED", "{:?}", record.json);
    for (collection, id) in [(DNS, "dns-video"), (TRAFFIC, "tr-video")] {
        assert_eq!(
            mep.state("app-1", collection, id).as_deref(),
            Some("ACTIVE"),
            "{id}: {:?}",
            shape(&mep.calls())
        );
    }
    assert_eq!(p.delete(&second).status, 201);
    for (collection, id) in [(DNS, "dns-video"), (TRAFFIC, "tr-video")] {
        assert_eq!(
            mep.state("app-1", collection, id).as_deref(),
            Some("INACTIVE")
        );
    }
}

/// The example's rules as a platform's descriptor may set them: priority 5 (the request says
/// 1) and a field the plugin does not know.
fn preload_own_data(mep: &FakeEtsi, app: &str) {
    let mut traffic = descriptor_traffic();
    traffic["priority"] = 5.into();
    traffic["vendorExtension"] = json!({"queue": 3, "tags": ["a", "b"]});
    let mut dns = descriptor_dns();
    dns["vendorExtension"] = json!({"view": "edge"});
    mep.preload(app, &[traffic], &[dns]);
}

#[test]
fn activation_and_deactivation_put_back_the_platform_s_own_rule_with_only_its_state_changed() {
    let mep = FakeEtsi::start();
    preload_own_data(&mep, "app-1");
    mep.enable_etags();
    let p = plugin(&mep);
    let before = mep.rule("app-1", TRAFFIC, "tr-video").unwrap();
    let id = created_id(&p.post(&request(Some("app-1"))));
    // The fake refuses (400) any PUT changing more than `state`: both were accepted.
    let active = mep.rule("app-1", TRAFFIC, "tr-video").unwrap();
    assert_eq!(active["priority"], 5, "the descriptor's priority is kept");
    assert_eq!(active["vendorExtension"], before["vendorExtension"]);
    assert_eq!(active["state"], "ACTIVE");
    assert_eq!(
        mep.state("app-1", DNS, "dns-video").as_deref(),
        Some("ACTIVE")
    );
    assert!(
        mep.puts()
            .iter()
            .all(|put| put.header("If-Match").is_some()),
        "each PUT carries the ETag of its GET"
    );
    assert_eq!(p.delete(&id).status, 201);
    let inactive = mep.rule("app-1", TRAFFIC, "tr-video").unwrap();
    assert_eq!(inactive["priority"], 5, "and after the deactivation");
    assert_eq!(inactive["state"], "INACTIVE");
    assert_eq!(
        mep.state("app-1", DNS, "dns-video").as_deref(),
        Some("INACTIVE")
    );
}

#[test]
fn a_rule_active_before_the_request_stays_active_after_its_delete_even_across_a_restart() {
    let mep = FakeEtsi::start();
    preload_own_data(&mep, "app-1");
    // The DNS rule was activated by its descriptor, before any request.
    mep.set_state("app-1", DNS, "dns-video", "ACTIVE");
    let dir = support::temp_dir("etsi-prior-state");
    let config = format!(
        "{}{}",
        server_section(""),
        etsi_region("2", &mep.url(), 1000)
    );
    let p = Plugin::start_in(&config, &dir);
    let id = created_id(&p.post(&request(Some("app-1"))));
    let dns = rule_path("app-1", DNS, "dns-video");
    let traffic = rule_path("app-1", TRAFFIC, "tr-video");
    assert_eq!(
        shape(&mep.calls()),
        pairs(&[("GET", &dns), ("GET", &traffic), ("PUT", &traffic)]),
        "an ACTIVE rule is read, not written"
    );
    // The prior state is journaled: a restart does not forget it.
    p.stop();
    let p = Plugin::start_in(&config, &dir);
    mep.clear_calls();
    assert_eq!(p.delete(&id).status, 201);
    assert_eq!(
        shape(&mep.calls()),
        pairs(&[("GET", &traffic), ("PUT", &traffic)]),
        "only the rule this request activated is deactivated"
    );
    assert_eq!(
        mep.state("app-1", DNS, "dns-video").as_deref(),
        Some("ACTIVE")
    );
    assert_eq!(
        mep.state("app-1", TRAFFIC, "tr-video").as_deref(),
        Some("INACTIVE")
    );
}

#[test]
fn a_failed_read_before_an_activation_changes_nothing_on_the_platform() {
    // The GET comes before the PUT: when it fails, even with a gateway's 502 or 504 (which
    // would make a failed PUT possibly applied), the rule was not changed, so the creation's
    // undo must not deactivate a rule that was ACTIVE before the request.
    for status in [502, 504] {
        let mep = FakeEtsi::start();
        preload(&mep, "app-1");
        mep.set_state("app-1", DNS, "dns-video", "ACTIVE");
        mep.fail_next_get("app-1", DNS, "dns-video", status);
        let p = plugin(&mep);
        let reply = p.post(&request(Some("app-1")));
        let detail = reply.problem(status);
        assert!(detail.contains("nothing was changed"), "{status}: {detail}");
        let dns = rule_path("app-1", DNS, "dns-video");
        assert_eq!(
            shape(&mep.calls()),
            pairs(&[("GET", &dns)]),
            "{status}: nothing is written after the failed read"
        );
        assert_eq!(
            mep.state("app-1", DNS, "dns-video").as_deref(),
            Some("ACTIVE"),
            "{status}"
        );
        let at = reply
            .location
            .as_deref()
            .expect("the FAILED record's Location");
        let record = p.get(at.trim_start_matches("/MEC/v1")).json;
        assert_eq!(record["status"], "FAILED", "{record}");
    }
}

#[test]
fn a_rule_whose_get_is_refused_with_403_is_switched_with_the_body_built_from_the_request() {
    let mep = FakeEtsi::start();
    preload(&mep, "app-1");
    mep.forbid_get("app-1", DNS, "dns-video");
    let p = plugin(&mep);
    let id = created_id(&p.post(&request(Some("app-1"))));
    assert_eq!(
        mep.state("app-1", DNS, "dns-video").as_deref(),
        Some("ACTIVE")
    );
    let dns = rule_path("app-1", DNS, "dns-video");
    let put = mep
        .puts()
        .into_iter()
        .find(|c| c.path == dns)
        .expect("the DNS rule was written");
    same_json(&put.body, DNS_ACTIVE);
    assert_eq!(p.delete(&id).status, 201);
    assert_eq!(
        mep.state("app-1", DNS, "dns-video").as_deref(),
        Some("INACTIVE")
    );
}

// Concurrent creations of the same rules, then their deletions in random order
// (ARCHITECTURE.md, "Invariants": the plugin never deactivates a rule it did not activate, and
// never leaves one it did). Every platform call is delayed a little, so that the creations'
// calls overlap: each one reads a rule while others' calls for it are in flight (where two
// creations used to count each other as the one that activated a rule ACTIVE before either).
// With ETags on, the creations that lose the race for a PUT read the rule again (412) and find
// it ACTIVE while the winner's answer is still on its way (the fake answers a change late):
// they keep the rule, and take over its removal when the winner is deleted before them.
// A failure names the order of the deletions (each with its start delay).

/// Concurrent creations of the same rules.
const CONCURRENT: usize = 8;
/// Rounds of creations then deletions, within `ROUNDS_TIME` (whichever ends first; at least
/// one round runs).
const ROUNDS: usize = 4;
const ROUNDS_TIME: Duration = Duration::from_secs(20);

/// A random number below `n` (std's randomly keyed hasher: a failure names the order it saw,
/// so nothing needs replaying).
fn random_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        % n
}

/// `CONCURRENT` creations of the example at once: every one is 201.
fn create_concurrently(p: &Plugin) -> Vec<String> {
    let body = request(Some("app-1"));
    std::thread::scope(|scope| {
        let posts: Vec<_> = (0..CONCURRENT)
            .map(|_| scope.spawn(|| p.post(&body)))
            .collect();
        posts
            .into_iter()
            .map(|post| created_id(&post.join().unwrap()))
            .collect()
    })
}

/// Deletes `ids` in a random order, each starting after a random few ms (so that some run
/// together): every one is 201. Returns the order, with each start delay.
fn delete_in_random_order(p: &Plugin, mut ids: Vec<String>) -> Vec<(String, u64)> {
    for i in (1..ids.len()).rev() {
        ids.swap(i, random_below(i as u64 + 1) as usize);
    }
    let order: Vec<(String, u64)> = ids.into_iter().map(|id| (id, random_below(40))).collect();
    std::thread::scope(|scope| {
        let deletes: Vec<_> = order
            .iter()
            .map(|(id, start)| {
                scope.spawn(move || {
                    std::thread::sleep(Duration::from_millis(*start));
                    (id, p.delete(id))
                })
            })
            .collect();
        for delete in deletes {
            let (id, reply) = delete.join().unwrap();
            assert_eq!(reply.status, 201, "DELETE {id}: {:?}", reply.json);
        }
    });
    order
}

/// Rounds of concurrent creations and deletions on a platform where the DNS rule is ACTIVE
/// beforehand when `dns_active` (the traffic rule never is), with ETags when `etags`.
fn concurrent_rounds(dns_active: bool, etags: bool) {
    let mep = FakeEtsi::start();
    preload(&mep, "app-1");
    if dns_active {
        mep.set_state("app-1", DNS, "dns-video", "ACTIVE");
    }
    if etags {
        mep.enable_etags();
    }
    mep.delay(Duration::from_millis(20));
    // The winner of a race for a PUT is answered after the losers have read the rule again.
    mep.slow_changes(Duration::from_millis(60));
    let p = plugin(&mep);
    let started = Instant::now();
    let dns_before = if dns_active { "ACTIVE" } else { "INACTIVE" };
    for round in 0..ROUNDS {
        if round > 0 && started.elapsed() > ROUNDS_TIME {
            break;
        }
        let ids = create_concurrently(&p);
        assert_eq!(mep.active().len(), 2, "round {round}: {:?}", mep.active());
        let order = delete_in_random_order(&p, ids);
        assert_eq!(
            mep.state("app-1", DNS, "dns-video").as_deref(),
            Some(dns_before),
            "round {round}: the DNS rule is left as it was before the requests; deleted: {order:?}"
        );
        assert_eq!(
            mep.state("app-1", TRAFFIC, "tr-video").as_deref(),
            Some("INACTIVE"),
            "round {round}: activated by the requests, deactivated with the last one; deleted: {order:?}"
        );
        assert_eq!(p.get("/service/requests").json, json!([]), "round {round}");
    }
}

#[test]
fn a_rule_active_before_concurrent_creations_stays_active_after_they_are_all_deleted() {
    concurrent_rounds(true, false);
}

#[test]
fn rules_activated_by_concurrent_creations_end_inactive_after_they_are_all_deleted() {
    concurrent_rounds(false, true);
}
