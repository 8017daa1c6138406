//! The northbound API end to end: the real server on 127.0.0.1:0 against fake LL-MEC
//! platforms on port 0, covering every outcome of the API table.

mod support;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::fake_llmec::FakeLlMec;
use support::{
    Plugin, eventually, example, llmec_region, server_section, simulated_region, temp_dir,
};

const DNS: &str = r#"{"RegionId":"2","appDNSRule":[{"dnsRuleId":"111","domainName":"pfrag.gr","ipAddressType":"IP_V4","ipAddress":"172.24.248.5","ttl":0}]}"#;

fn plugin_with(mep: &FakeLlMec, timeout_ms: u64, server_extra: &str) -> Plugin {
    Plugin::start(&format!(
        "{}{}{}",
        server_section(server_extra),
        llmec_region("2", &mep.url(), timeout_ms),
        simulated_region("3")
    ))
}

fn plugin(mep: &FakeLlMec) -> Plugin {
    plugin_with(mep, 1000, "")
}

/// Traffic + DNS in the contract's spelling (the seed example's shape).
fn seed_traffic() -> String {
    example("traffic-and-dns.json")
}

fn created_id(reply: &support::Reply) -> String {
    assert_eq!(reply.status, 201, "{:?}", reply.json);
    reply.json["RequestId"]
        .as_str()
        .expect("RequestId in the answer")
        .to_string()
}

#[test]
fn regions_are_listed_with_their_circles() {
    let mep = FakeLlMec::start();
    let p = plugin(&mep);
    let r = p.get("/service/regions");
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type, "application/json");
    let regions = r.json["Regions"].as_array().unwrap();
    assert_eq!(regions.len(), 2);
    let first = &regions[0]["MECRegionInfo"];
    assert_eq!(first["RegionId"], "2");
    assert_eq!(first["LocationInfo"]["latitude"], 43.6);
    assert_eq!(first["LocationInfo"]["longitude"], 7.06);
    assert_eq!(first["LocationInfo"]["altitude"], 1.5);
    assert_eq!(first["LocationInfo"]["range"], 10.0);
}

#[test]
fn an_absolute_form_request_target_is_served_like_its_path() {
    let mep = FakeLlMec::start();
    let p = plugin(&mep);
    let addr = p.app.local_addr();
    let get = |target: &str| {
        let text = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        support::raw::exchange(addr, &text).expect("answered")
    };
    let r = get(&format!("http://{addr}/MEC/v1/service/regions"));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["Regions"].as_array().unwrap().len(), 2);
    // The query survives: Sophia-Antipolis (region 2) only.
    let r = get(&format!(
        "http://{addr}/MEC/v1/service/regions?latitude=43.6&longitude=7.06"
    ));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["Regions"][0]["MECRegionInfo"]["RegionId"], "2");
    // Still routed by the path: an unknown one is 404 naming the path, not the whole URL.
    let r = get(&format!("http://{addr}/MEC/v1/service/nothing"));
    assert_eq!(r.status, 404);
    let detail = r.json()["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains("/MEC/v1/service/nothing") && !detail.contains("http://"),
        "{detail}"
    );
}

#[test]
fn a_creation_answers_201_only_after_every_rule_is_on_the_platform() {
    let mep = FakeLlMec::start();
    let p = plugin(&mep);
    let id = created_id(&p.post(&seed_traffic()));
    let installed = mep.installed();
    assert_eq!(
        installed.len(),
        2,
        "one DNS and one traffic redirect: {installed:?}"
    );
    let calls = mep.calls();
    assert_eq!(calls[0].path, "/api/mp1/traffic/all", "DNS rules go first");
    assert_eq!(calls[1].path, "/api/mp1/traffic/imsi");
    let stored = p.get(&format!("/service/requests/{id}"));
    assert_eq!(stored.status, 200);
    assert_eq!(stored.json["status"], "CREATED");
    assert_eq!(stored.json["RequestId"], id.as_str());
    assert_eq!(stored.json["RegionId"], "2");
    for key in ["createdAt", "lastModified"] {
        let t = stored.json[key].as_str().unwrap();
        assert!(t.ends_with('Z') && t.contains('T'), "{key} = {t}");
    }
}

#[test]
fn a_stored_request_is_what_the_caller_sent_numbers_included() {
    let mep = FakeLlMec::start();
    let p = plugin(&mep);
    let sent: Value = serde_json::from_str(&seed_traffic()).unwrap();
    let id = created_id(&p.post(&seed_traffic()));
    let mut stored = p.get(&format!("/service/requests/{id}")).json;
    let obj = stored.as_object_mut().unwrap();
    for key in ["RequestId", "status", "createdAt", "lastModified"] {
        assert!(obj.remove(key).is_some(), "{key} missing");
    }
    assert_eq!(
        stored, sent,
        "every field of the contract comes back as sent"
    );
}

#[test]
fn requests_are_listed_all_and_per_region() {
    let mep = FakeLlMec::start();
    let p = plugin(&mep);
    let a = created_id(&p.post(DNS));
    let b = created_id(&p.post(&DNS.replace("\"RegionId\":\"2\"", "\"RegionId\":\"3\"")));
    let all = p.get("/service/requests");
    assert_eq!(all.status, 200);
    assert_eq!(all.json.as_array().unwrap().len(), 2);
    let in2 = p.get("/service/regions/2").json;
    assert_eq!(in2.as_array().unwrap().len(), 1);
    assert_eq!(in2[0]["RequestId"], a.as_str());
    assert_eq!(p.get("/service/regions/3").json[0]["RequestId"], b.as_str());
    p.get("/service/regions/99").problem(404);
}

#[test]
fn an_invalid_body_is_400_naming_the_field_and_nothing_is_sent() {
    let mep = FakeLlMec::start();
    let p = plugin(&mep);
    let d = p.post(&DNS.replace("IP_V4", "IPv4")).problem(400);
    assert!(d.contains("appDNSRule[0].ipAddressType"), "{d}");
    let d = p
        .post(r#"{"RegionId":"2","appDNSRule":[{"dnsRuleId":"1"}]}"#)
        .problem(400);
    assert!(d.contains("domainName"), "{d}");
    p.post("{not json").problem(400);
    p.post(&format!("{}1{}", "[".repeat(50_000), "]".repeat(50_000)))
        .problem(400);
    assert!(mep.calls().is_empty());
    assert_nothing_stored(&p);
}

#[test]
fn a_rule_id_of_256_characters_is_accepted_whatever_its_bytes() {
    let mep = FakeLlMec::start();
    let p = plugin(&mep);
    let in_region_3 = DNS.replace("\"RegionId\":\"2\"", "\"RegionId\":\"3\"");
    let with = |id: &str| in_region_3.replace("\"111\"", &format!("\"{id}\""));
    // 256 characters of two bytes each: within the documented maxLength (characters).
    let long = "é".repeat(256);
    let id = created_id(&p.post(&with(&long)));
    let stored = p.get(&format!("/service/requests/{id}")).json;
    assert_eq!(stored["appDNSRule"][0]["dnsRuleId"], long.as_str());
    let d = p.post(&with(&"é".repeat(257))).problem(400);
    assert_eq!(d, "appDNSRule[0].dnsRuleId must be at most 256 characters");
}

#[test]
fn a_port_with_a_sign_or_spaces_is_400_and_nothing_is_sent() {
    let mep = FakeLlMec::start();
    let p = plugin(&mep);
    // Region 3's simulated platform takes any port the validation lets through.
    let with = |port: &str| {
        seed_traffic()
            .replace("\"RegionId\": \"2\"", "\"RegionId\": \"3\"")
            .replace(r#""dstPort": ["80"]"#, &format!(r#""dstPort": ["{port}"]"#))
    };
    assert_ne!(
        with("+80"),
        seed_traffic(),
        "the example has region 2 and port 80"
    );
    for port in ["+80", " 81 ", "81\\t", "1 - 2", "+1-2"] {
        let d = p.post(&with(port)).problem(400);
        assert!(
            d.starts_with("appTrafficRule[0].trafficFilter[0].dstPort[0] '")
                && d.contains("is not a port 0-65535 or a range a-b"),
            "{port:?}: {d}"
        );
    }
    assert_nothing_stored(&p);
    for port in ["80", "1000-2000"] {
        created_id(&p.post(&with(port)));
    }
    assert!(mep.calls().is_empty(), "region 3 is simulated");
}

#[test]
fn an_app_latency_too_large_for_a_number_is_400_saying_so_not_negative() {
    let mep = FakeLlMec::start();
    let p = plugin(&mep);
    let with = |latency: &str| {
        seed_traffic().replace(r#""latency": 20"#, &format!(r#""latency": {latency}"#))
    };
    assert_ne!(with("1e999"), seed_traffic(), "the example has a latency");
    let d = p.post(&with("1e999")).problem(400);
    assert_eq!(d, "appLatency.latency = 1e+999 must be a finite number");
    let d = p.post(&with("-20")).problem(400);
    assert_eq!(d, "appLatency.latency = -20 must not be negative");
    assert!(mep.calls().is_empty(), "nothing is sent: {:?}", mep.calls());
    assert_nothing_stored(&p);
    created_id(&p.post(&with("1e300")));
}

/// Found by an audit: integers were checked through an `f64`, so `0.99999999999999999999`
/// passed as 1 and was sent to EdgeGallery and MEC 011 platforms as 1.
#[test]
fn a_number_that_is_not_exactly_an_integer_is_400_and_an_integral_decimal_is_accepted() {
    let mep = FakeLlMec::start();
    let p = plugin(&mep);
    for ttl in ["0.99999999999999999999", "4294967295.0000001", "1e-400"] {
        let detail = p
            .post(&DNS.replace("\"ttl\":0", &format!("\"ttl\":{ttl}")))
            .problem(400);
        assert!(
            detail.contains("ttl") && detail.contains(ttl),
            "{ttl}: {detail}"
        );
    }
    assert!(mep.calls().is_empty(), "nothing sent");
    let created = p.post(&DNS.replace("\"ttl\":0", "\"ttl\":6.0e1"));
    created_id(&created);
}

#[test]
fn an_unknown_region_is_422_and_nothing_is_recorded() {
    let mep = FakeLlMec::start();
    let p = plugin(&mep);
    let d = p
        .post(&DNS.replace("\"RegionId\":\"2\"", "\"RegionId\":\"77\""))
        .problem(422);
    assert!(d.contains("'77'"), "{d}");
    assert_nothing_stored(&p);
}

#[test]
fn a_rule_the_platform_cannot_express_is_422_naming_the_rule_and_nothing_is_sent() {
    let mep = FakeLlMec::start();
    let p = plugin(&mep);
    let drop_rule = seed_traffic().replace("\"FORWARD\"", "\"DROP\"");
    let d = p.post(&drop_rule).problem(422);
    assert!(d.contains("tr-video"), "{d}");
    assert!(
        mep.calls().is_empty(),
        "nothing is sent for a refused request"
    );
    assert_nothing_stored(&p);
}

#[test]
fn a_body_over_the_limit_is_413() {
    let mep = FakeLlMec::start();
    let p = plugin_with(&mep, 1000, "max_body_bytes = 2048");
    let big = DNS.replace("pfrag.gr", &format!("{}.gr", "a".repeat(3000)));
    p.post(&big).problem(413);
    assert!(mep.calls().is_empty());
}

#[test]
fn a_non_json_content_type_is_415() {
    let mep = FakeLlMec::start();
    let p = plugin(&mep);
    let r = p.call_with_type("POST", "/service/requests", Some(DNS), "text/plain");
    r.problem(415);
}

#[test]
fn a_refusing_platform_is_502_with_the_request_recorded_failed() {
    let mep = FakeLlMec::start();
    let p = plugin(&mep);
    mep.fail_all(403);
    let r = p.post(DNS);
    let d = r.problem(502);
    assert!(d.contains("region '2'") && d.contains("403"), "{d}");
    let id = r.json["RequestId"]
        .as_str()
        .expect("the error carries the RequestId");
    let stored = p.get(&format!("/service/requests/{id}")).json;
    assert_eq!(stored["status"], "FAILED");
    mep.heal();
    assert_eq!(p.delete(id).status, 201, "a FAILED request can be deleted");
    p.get(&format!("/service/requests/{id}")).problem(404);
}

#[test]
fn an_unreachable_platform_is_502() {
    let mep = FakeLlMec::start();
    let p = plugin(&mep);
    mep.stop();
    let d = p.post(DNS).problem(502);
    assert!(d.contains("unreachable"), "{d}");
}

#[test]
fn a_hanging_platform_is_504_within_the_timeout_while_other_requests_are_served() {
    let mep = FakeLlMec::start();
    let p = Arc::new(plugin_with(&mep, 500, ""));
    mep.delay(Duration::from_secs(5));
    let slow = {
        let p = p.clone();
        thread::spawn(move || {
            let started = Instant::now();
            let r = p.post(DNS);
            (r, started.elapsed())
        })
    };
    thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(p.get("/service/regions").status, 200);
        assert_eq!(p.get("/service/requests").status, 200);
    }
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "served while the platform hangs"
    );
    let (r, took) = slow.join().unwrap();
    r.problem(504);
    assert!(
        took < Duration::from_millis(2500),
        "504 within the timeout (and one undo): {took:?}"
    );
}

/// Found by an audit: creations for a hanging platform took every worker (each holds
/// one for its calls and their undo), and `/healthz`, `/metrics` and the listings waited
/// seconds. Creations and deletions now run on at most `workers` of the `workers + 1` threads
/// at once (`server::worker_threads`), so the other requests keep one.
#[test]
fn creations_for_a_hanging_platform_leave_workers_for_reads_and_health() {
    let mep = FakeLlMec::start();
    let p = Arc::new(plugin_with(&mep, 1000, "workers = 4\n"));
    mep.delay(Duration::from_secs(5));
    // Six different rules (the same one would wait for its turn, one request at a time).
    let stuck: Vec<_> = (0..6)
        .map(|i| {
            let p = p.clone();
            let body = DNS.replace("pfrag.gr", &format!("app{i}.pfrag.gr"));
            thread::spawn(move || p.post(&body).status)
        })
        .collect();
    thread::sleep(Duration::from_millis(200));
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        for path in ["/healthz", "/metrics"] {
            let started = Instant::now();
            assert_eq!(p.get_root(path).0, 200, "{path}");
            slowest = slowest.max(started.elapsed());
        }
        for path in ["/service/requests", "/service/regions/2"] {
            let started = Instant::now();
            assert_eq!(p.get(path).status, 200, "{path}");
            slowest = slowest.max(started.elapsed());
        }
    }
    // Four slow requests at a time, each ~1 s (its call's timeout): the answers above would
    // wait a second or more if they queued behind them.
    eprintln!("slowest read {slowest:?}");
    assert!(
        slowest < Duration::from_millis(500),
        "an answer took {slowest:?} while creations wait on a hanging platform"
    );
    for creation in stuck {
        assert_eq!(creation.join().unwrap(), 504);
    }
}

/// Found by two audits: the backlog gauge left out the requests the reconciler was working
/// on, so on a platform that hangs (each attempt lasting `timeout_ms`) it read 0 most of the
/// time, resetting the alerts built on it.
#[test]
fn the_backlog_counts_a_removal_stuck_on_a_hanging_platform_all_along() {
    let mep = FakeLlMec::start();
    let p = plugin_with(&mep, 300, "");
    let id = p.post(DNS).json["RequestId"].as_str().unwrap().to_string();
    mep.late_deletes(Duration::from_secs(3));
    assert_eq!(p.delete(&id).status, 202);
    let mut zeros = 0;
    for _ in 0..20 {
        let (status, text) = p.get_root("/healthz");
        let health: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(status, 200, "{text}");
        if health["reconcilerBacklog"] != 1 {
            zeros += 1;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        zeros, 0,
        "the backlog read other than 1 in {zeros} of 20 samples"
    );
    mep.late_deletes(Duration::ZERO);
}

/// Found by an audit: FAILED requests were kept until deleted, so an orchestrator retrying
/// creations on a platform that refuses them filled `max_requests` (507 in every region).
#[test]
fn a_failed_request_with_nothing_on_the_platform_is_deleted_after_the_retention() {
    let mep = FakeLlMec::start();
    let p = plugin_with(&mep, 1000, "failed_retention_s = 1\nmax_requests = 1");
    mep.fail_all(403);
    let r = p.post(DNS);
    r.problem(502);
    let id = r.json["RequestId"].as_str().unwrap().to_string();
    assert_eq!(
        p.get(&format!("/service/requests/{id}")).json["status"],
        "FAILED"
    );
    mep.heal();
    p.post(DNS).problem(507);
    assert!(
        eventually(Duration::from_secs(10), || p
            .get(&format!("/service/requests/{id}"))
            .status
            == 404),
        "the FAILED request was kept"
    );
    assert_eq!(p.post(DNS).status, 201, "room again");
}

/// Found by an audit: a platform that applied a rule and then answered 500 (its handler failed
/// after it committed) kept the rule while the request said FAILED with nothing on the
/// platform, and its DELETE sent nothing. A 5xx now counts as possibly applied.
#[test]
fn a_rule_applied_before_a_500_answer_is_removed() {
    let mep = FakeLlMec::start();
    let p = plugin_with(&mep, 1000, "");
    mep.apply_then_fail_nth_post(1, 500);
    let r = p.post(DNS);
    let d = r.problem(502);
    assert!(d.contains("500"), "{d}");
    let id = r.json["RequestId"].as_str().unwrap().to_string();
    assert!(
        eventually(Duration::from_secs(10), || mep.installed().is_empty()),
        "the rule stayed on the platform: {:?}",
        mep.installed()
    );
    let deletes = mep.calls().iter().filter(|c| c.method == "DELETE").count();
    assert!(deletes >= 1, "{:?}", mep.calls());
    let stored = p.get(&format!("/service/requests/{id}")).json;
    assert_eq!(stored["status"], "FAILED", "{stored}");
    // Within the settle window (2 × timeout_ms) its removal is sent again: a DELETE answers
    // 202 and the reconciler finishes it (201 once the window has passed).
    let status = p.delete(&id).status;
    assert!(status == 201 || status == 202, "{status}");
    assert!(
        eventually(Duration::from_secs(10), || p
            .get(&format!("/service/requests/{id}"))
            .status
            == 404),
        "not deleted"
    );
    assert!(mep.installed().is_empty());
}

#[test]
fn a_partial_failure_undoes_the_applied_rules_in_reverse_with_identical_bodies() {
    let mep = FakeLlMec::start();
    let p = plugin(&mep);
    let body = seed_traffic().replace(r#""dstPort": ["80"]"#, r#""dstPort": ["80", "443"]"#);
    assert!(body.contains("443"), "test body has two ports");
    mep.fail_nth_post(3, 409);
    let r = p.post(&body);
    r.problem(502);
    assert!(
        mep.installed().is_empty(),
        "everything undone: {:?}",
        mep.installed()
    );
    let calls = mep.calls();
    let posts: Vec<_> = calls.iter().filter(|c| c.method == "POST").collect();
    let deletes: Vec<_> = calls.iter().filter(|c| c.method == "DELETE").collect();
    assert_eq!(posts.len(), 3);
    assert_eq!(deletes.len(), 2);
    assert_eq!(deletes[0].body, posts[1].body, "reverse order, same body");
    assert_eq!(deletes[1].body, posts[0].body);
}

#[test]
fn delete_removes_the_rules_then_answers_201() {
    let mep = FakeLlMec::start();
    let p = plugin(&mep);
    let id = created_id(&p.post(&seed_traffic()));
    let r = p.delete(&id);
    assert_eq!(r.status, 201, "{:?}", r.json);
    assert_eq!(r.json["status"], "DELETED");
    assert!(mep.installed().is_empty());
    p.get(&format!("/service/requests/{id}")).problem(404);
    p.delete(&id).problem(404);
}

#[test]
fn forget_and_adopt_are_read_percent_decoded() {
    let mep = FakeLlMec::start();
    let dir = temp_dir("api-forget-decoded");
    let both = format!(
        "{}{}{}",
        server_section(""),
        llmec_region("2", &mep.url(), 1000),
        simulated_region("3")
    );
    let p = Plugin::start_in(&both, &dir);
    let kept = created_id(&p.post(DNS));
    let other = created_id(&p.post(&DNS.replace("\"RegionId\":\"2\"", "\"RegionId\":\"3\"")));
    // What the detail shows is what was compared: the decoded value.
    let d = delete_with(&p, &other, "forget=%79es").problem(400);
    assert!(d.contains("'forget' = 'yes' must be true or false"), "{d}");
    // `%74rue` is `true`: on a request of an unchanged platform, `adopt` removes it as usual.
    let r = delete_with(&p, &other, "adopt=%74rue");
    assert_eq!(r.status, 201, "{:?}", r.json);
    assert_eq!(r.json["status"], "DELETED");
    p.stop();

    // Region 2 removed from the configuration: only `forget=true` drops its request, and
    // `forget=%74rue` is that.
    let p = Plugin::start_in(
        &format!("{}{}", server_section(""), simulated_region("3")),
        &dir,
    );
    p.delete(&kept).problem(409);
    let r = delete_with(&p, &kept, "forget=%74rue");
    assert_eq!(r.status, 201, "{:?}", r.json);
    assert_eq!(r.json["status"], "DELETED");
    p.get(&format!("/service/requests/{kept}")).problem(404);
    assert_eq!(mep.installed().len(), 1, "left on the platform, as asked");
    p.stop();
    let _ = std::fs::remove_dir_all(dir);
}

/// No request is listed.
fn assert_nothing_stored(p: &Plugin) {
    let listed = p.get("/service/requests").json;
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
}

/// DELETE of request `id` with the query `query`.
fn delete_with(p: &Plugin, id: &str, query: &str) -> support::Reply {
    p.call("DELETE", &format!("/service/requests/{id}?{query}"), None)
}

#[test]
fn a_rule_two_requests_share_under_other_rule_ids_stays_until_the_last_one_is_deleted() {
    let mep = FakeLlMec::start();
    let p = plugin(&mep);
    let first = created_id(&p.post(DNS));
    // The same redirect (domain and address) under another rule id: one rule on LL-MEC,
    // which keys rules by their body.
    let second = created_id(&p.post(&DNS.replace(r#""111""#, r#""222""#)));
    assert_eq!(mep.installed().len(), 1, "{:?}", mep.installed());
    assert_eq!(p.delete(&first).status, 201);
    assert_eq!(
        mep.installed().len(),
        1,
        "the second request still needs it: {:?}",
        mep.calls()
    );
    assert_eq!(p.delete(&second).status, 201);
    assert!(mep.installed().is_empty(), "{:?}", mep.installed());
}

#[test]
fn a_delete_the_platform_refuses_is_accepted_and_finished_by_the_reconciler() {
    let mep = FakeLlMec::start();
    let p = plugin_with(&mep, 500, "");
    let id = created_id(&p.post(DNS));
    mep.fail_all(503);
    let r = p.delete(&id);
    assert_eq!(r.status, 202, "{:?}", r.json);
    assert_eq!(r.json["status"], "DELETING");
    assert!(
        r.json["statusDetail"].as_str().unwrap().contains("503"),
        "{:?}",
        r.json
    );
    let shown = p.get(&format!("/service/requests/{id}")).json;
    assert_eq!(shown["status"], "DELETING", "shown as being removed");
    assert_eq!(
        p.delete(&id).status,
        202,
        "a repeated DELETE answers the same"
    );
    assert_eq!(
        mep.installed().len(),
        1,
        "still on the platform while it refuses"
    );
    mep.heal();
    assert!(
        eventually(Duration::from_secs(5), || p
            .get(&format!("/service/requests/{id}"))
            .status
            == 404),
        "the reconciler removes it once the platform recovers"
    );
    assert!(mep.installed().is_empty());
}

#[test]
fn a_delete_on_a_hanging_platform_is_accepted_within_the_timeout_and_finished_later() {
    let mep = FakeLlMec::start();
    let p = plugin_with(&mep, 300, "");
    let id = created_id(&p.post(DNS));
    mep.delay(Duration::from_secs(2));
    let started = Instant::now();
    assert_eq!(p.delete(&id).status, 202);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    mep.delay(Duration::ZERO);
    assert!(eventually(Duration::from_secs(6), || p
        .get(&format!("/service/requests/{id}"))
        .status
        == 404));
    assert!(eventually(Duration::from_secs(3), || mep
        .installed()
        .is_empty()));
}

#[test]
fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
    let mep = FakeLlMec::start();
    let p = plugin(&mep);
    p.get("/nothing/here").problem(404);
    let r = p.call("PUT", "/service/requests", Some("{}"));
    r.problem(405);
    assert_eq!(r.allow.as_deref(), Some("GET, HEAD, POST"));
    let r = p.call("POST", "/service/regions", Some("{}"));
    r.problem(405);
    assert_eq!(r.allow.as_deref(), Some("GET, HEAD"));
    let r = p.call("PATCH", "/service/requests/x", Some("{}"));
    assert_eq!(r.allow.as_deref(), Some("GET, HEAD, DELETE"));
}

#[test]
fn camel_style_answers_with_the_keys_the_mtp_client_reads() {
    let mep = FakeLlMec::start();
    let p = plugin_with(&mep, 1000, "api_style = \"camel\"");
    let regions = p.get("/service/regions").json;
    let info = &regions["regions"][0]["mecRegionInfo"];
    assert_eq!(info["regionId"], "2");
    assert_eq!(info["locationInfo"]["range"], 10.0);
    assert!(regions.get("Regions").is_none());
    let r = p.post(&example("traffic-and-dns-camel.json"));
    assert_eq!(r.status, 201, "{:?}", r.json);
    let id = r.json["requestId"].as_str().unwrap().to_string();
    let stored = p.get(&format!("/service/requests/{id}")).json;
    assert_eq!(stored["requestId"], id.as_str());
    assert_eq!(stored["regionId"], "2");
    assert_eq!(
        stored["appTrafficRule"][0]["trafficFilter"][0]["protocol"][0],
        "tcp"
    );
    assert!(stored.get("RequestId").is_none() && stored.get("RegionId").is_none());
    // the spec spelling is accepted too
    assert_eq!(p.post(DNS).status, 201);
}

#[test]
fn spec_style_answers_camel_bodies_with_spec_keys() {
    let mep = FakeLlMec::start();
    let p = plugin(&mep);
    let id = created_id(&p.post(&example("traffic-and-dns-camel.json")));
    let stored = p.get(&format!("/service/requests/{id}")).json;
    assert_eq!(
        stored["appTrafficRule"][0]["trafficFilter"][0]["Protocol"][0],
        "tcp"
    );
}

#[test]
fn sixteen_threads_of_creations_and_removals_leave_platform_and_records_in_agreement() {
    let mep = FakeLlMec::start();
    let p = Arc::new(plugin_with(&mep, 2000, "workers = 8"));
    let workers: Vec<_> = (0..16)
        .map(|t| {
            let p = p.clone();
            thread::spawn(move || {
                let mut kept = Vec::new();
                for i in 0..12 {
                    let body = DNS.replace("pfrag.gr", &format!("t{t}-{i}.example.org"));
                    let id = created_id(&p.post(&body));
                    if i % 3 == 0 {
                        kept.push(id);
                    } else {
                        assert_eq!(p.delete(&id).status, 201);
                    }
                }
                kept
            })
        })
        .collect();
    let kept: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let records = p.get("/service/requests").json;
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), kept.len());
    assert_eq!(
        mep.installed().len(),
        kept.len(),
        "one DNS redirect per kept request"
    );
    let mut on_platform: Vec<String> = mep
        .installed()
        .iter()
        .map(|(_, body)| {
            serde_json::from_str::<Value>(body).unwrap()["url"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut recorded: Vec<String> = records
        .iter()
        .map(|r| {
            r["appDNSRule"][0]["domainName"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    on_platform.sort();
    recorded.sort();
    assert_eq!(on_platform, recorded);
}

#[test]
fn every_example_is_accepted_by_the_shipped_configuration() {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/regions.toml")).unwrap();
    let shipped = shipped.replace("listen = \"127.0.0.1:8082\"", "listen = \"127.0.0.1:0\"");
    let p = Plugin::start(&shipped);
    for name in [
        "dns-only.json",
        "traffic-and-dns.json",
        "traffic-and-dns-camel.json",
    ] {
        let r = p.post(&example(name));
        assert_eq!(r.status, 201, "{name}: {:?}", r.json);
    }
    assert_eq!(p.get("/service/requests").json.as_array().unwrap().len(), 3);
}

#[test]
fn every_example_is_also_accepted_by_an_llmec_platform() {
    let mep = FakeLlMec::start();
    let p = plugin(&mep);
    for name in [
        "dns-only.json",
        "traffic-and-dns.json",
        "traffic-and-dns-camel.json",
    ] {
        let r = p.post(&example(name));
        assert_eq!(r.status, 201, "{name}: {:?}", r.json);
    }
}
