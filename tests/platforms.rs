//! What the plugin believes is on its platforms stays true, end to end: a late answer never
//! orphans a rule (the settle window), a call that was never written is not applied, the
//! bound on the calls one request may cause, and the DELETE of a request whose region is no
//! longer configured.

mod support;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::fake_llmec::{DNS_PATH, FakeLlMec};
use support::{Plugin, eventually, llmec_region, server_section, simulated_region, temp_dir};

/// The seed example's traffic rule alone (one LL-MEC call).
fn traffic_only() -> String {
    let mut v: Value = serde_json::from_str(include_str!("data/seed-trafficrule.json")).unwrap();
    v.as_object_mut().unwrap().remove("appDNSRule");
    v.to_string()
}

/// `n` DNS rules (one LL-MEC call each).
fn dns_rules(n: usize) -> String {
    let rules: Vec<Value> = (0..n)
        .map(|i| {
            serde_json::json!({"dnsRuleId": format!("d{i}"), "domainName": format!("n{i}.example.org"),
                "ipAddressType": "IP_V4", "ipAddress": "172.24.248.5"})
        })
        .collect();
    serde_json::json!({"RegionId": "2", "appDNSRule": rules}).to_string()
}

/// The configuration of one LL-MEC region "2" on `fake` (timeout 1 s).
fn llmec_config(fake: &FakeLlMec) -> String {
    format!(
        "{}{}",
        server_section(""),
        llmec_region("2", &fake.url(), 1000)
    )
}

/// Creates each of `bodies` on `config` over the state in `dir`, then stops: their ids.
fn created_in(config: &str, dir: &std::path::Path, bodies: &[String]) -> Vec<String> {
    let p = Plugin::start_in(config, dir);
    let ids = bodies
        .iter()
        .map(|body| {
            let r = p.post(body);
            assert_eq!(r.status, 201, "{:?}", r.json);
            r.json["RequestId"].as_str().unwrap().to_string()
        })
        .collect();
    p.stop();
    ids
}

fn status_detail(p: &Plugin, id: &str) -> String {
    p.get(&format!("/service/requests/{id}")).json["statusDetail"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The differential case: the platform answers the rule's POST only after 800 ms (timeout
/// 300 ms), then installs it. The undo's DELETE reaches it first and is answered `absent`
/// (200 when `absent_ok`, else 404), which proves nothing: the removal is sent again once the
/// settle window (1.5 s here) has passed, and nothing stays on the platform.
fn a_late_apply_is_removed_after_the_settle_window(absent_ok: bool) {
    let fake = FakeLlMec::start();
    let settle = Duration::from_millis(1500);
    let p = Plugin::start(&format!(
        "{}{}settle_ms = {}\n",
        server_section(""),
        llmec_region("2", &fake.url(), 300),
        settle.as_millis()
    ));
    fake.late_posts(Duration::from_millis(800));
    fake.absent_delete_ok(absent_ok);
    let started = Instant::now();
    let r = p.post(&traffic_only());
    r.problem(504);
    let id = r.json["RequestId"].as_str().unwrap().to_string();
    // The early removal was answered, the late POST then landed: the record still covers it.
    assert!(
        eventually(Duration::from_secs(5), || !fake.installed().is_empty()),
        "the late POST installs the rule"
    );
    if started.elapsed() < settle {
        let detail = status_detail(&p, &id);
        assert!(detail.contains("settle window"), "{detail}");
    }
    // Within the settle window plus one retry, nothing is left and the record says so.
    assert!(
        eventually(Duration::from_secs(8), || fake.installed().is_empty()),
        "the removal is repeated after the window: {:?}",
        fake.calls()
    );
    assert!(started.elapsed() >= settle, "not removed before the window");
    let deletes = fake.calls().iter().filter(|c| c.method == "DELETE").count();
    assert!(deletes >= 2, "the early removal, then one after the window");
    assert!(eventually(Duration::from_secs(3), || status_detail(
        &p, &id
    )
    .contains("has since been removed from the platform")));
    let detail = status_detail(&p, &id);
    assert!(detail.contains("did not answer in time"), "{detail}");
    // Nothing left: the DELETE of the request answers 201 without a platform call.
    fake.clear_calls();
    assert_eq!(p.delete(&id).status, 201);
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
}

#[test]
fn a_late_apply_after_an_early_removal_answered_200_is_removed_after_the_settle_window() {
    a_late_apply_is_removed_after_the_settle_window(true);
}

#[test]
fn a_late_apply_after_an_early_removal_answered_404_is_removed_after_the_settle_window() {
    a_late_apply_is_removed_after_the_settle_window(false);
}

/// The review's case: a removal times out (300 ms) and the platform carries it out later
/// (800 ms). Another request's apply of the same rule in between would be taken away by it
/// while that request says CREATED: the apply waits until the removal's settle window (1.5 s)
/// has passed, and the rule is on the platform at the end.
#[test]
fn an_apply_waits_for_a_removal_of_its_rule_that_may_still_land() {
    let fake = FakeLlMec::start();
    let settle = Duration::from_millis(1500);
    let p = Plugin::start(&format!(
        "{}{}settle_ms = {}\n",
        server_section(""),
        llmec_region("2", &fake.url(), 300),
        settle.as_millis()
    ));
    let first = p.post(&traffic_only());
    assert_eq!(first.status, 201, "{:?}", first.json);
    let a = first.json["RequestId"].as_str().unwrap().to_string();
    assert_eq!(fake.installed().len(), 1);

    fake.late_deletes(Duration::from_millis(800));
    let removal_sent = Instant::now();
    let r = p.delete(&a);
    assert_eq!(r.status, 202, "{:?}", r.json);
    fake.late_deletes(Duration::ZERO);
    let second = p.post(&traffic_only());
    let answered = removal_sent.elapsed();
    assert_eq!(second.status, 201, "{:?}", second.json);
    let b = second.json["RequestId"].as_str().unwrap().to_string();
    // Past the late removal: the rule stays on the platform for the CREATED request.
    std::thread::sleep(Duration::from_millis(1000));
    let record = p.get(&format!("/service/requests/{b}"));
    assert_eq!(record.json["status"], "CREATED", "{:?}", record.json);
    assert_eq!(fake.installed().len(), 1, "{:?}", fake.calls());
    assert!(
        answered >= settle,
        "the apply waited for the removal's window: answered after {answered:?}"
    );
    // The first request goes without taking the rule away (B holds it); B's removal does.
    assert!(
        eventually(Duration::from_secs(10), || p
            .get(&format!("/service/requests/{a}"))
            .status
            == 404),
        "{:?}",
        p.get(&format!("/service/requests/{a}")).json
    );
    assert_eq!(fake.installed().len(), 1, "{:?}", fake.calls());
    assert_eq!(p.delete(&b).status, 201);
    assert!(fake.installed().is_empty(), "{:?}", fake.calls());
}

/// Found by an audit: while a platform answered 500 to everything, the reconciler sent the
/// removals of the failed requests holding a rule one after another, each of unknown outcome,
/// each extending the rule's settle window, and removals go first: a new creation of that rule
/// waited without bound (90 to 435 s seen), holding a worker, and failed in the end, adding
/// one more holder. It now waits at most the region's `settle_ms` and `timeout_ms` together
/// for its turn, then gets 503 with nothing recorded or sent; once the platform works again,
/// the holders go and the rule can be created.
#[test]
fn a_creation_waits_a_bounded_time_for_removals_of_its_rule_that_keep_failing() {
    let fake = FakeLlMec::start();
    let p = Plugin::start(&format!(
        "{}{}settle_ms = 600\n",
        server_section(""),
        llmec_region("2", &fake.url(), 200)
    ));
    // Four creations of the rule at once, each call left unanswered past the timeout (200 ms):
    // their applies run together, and each leaves a FAILED request that may hold the rule.
    fake.delay(Duration::from_millis(300));
    let failed: Vec<String> = std::thread::scope(|scope| {
        let posts: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| p.post(&traffic_only())))
            .collect();
        posts
            .into_iter()
            .map(|post| {
                let r = post.join().unwrap();
                r.problem(504);
                r.json["RequestId"].as_str().unwrap().to_string()
            })
            .collect()
    });
    // The reconciler now removes them one after another, again and again, each removal timing
    // out: the rule's settle window (600 ms) never passes.
    std::thread::sleep(Duration::from_millis(1000));
    let calls = fake.calls().len();
    let started = Instant::now();
    let r = p.post(&traffic_only());
    let took = started.elapsed();
    r.problem(503);
    assert!(
        took >= Duration::from_millis(700),
        "answered after {took:?}"
    );
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    let detail = r.json["detail"].as_str().unwrap();
    assert!(
        detail.contains("waited 800 ms") && detail.contains("nothing was recorded or sent"),
        "{detail}"
    );
    assert!(r.json.get("RequestId").is_none(), "{:?}", r.json);
    assert!(
        fake.calls().len() > calls,
        "the removals went on meanwhile: {:?}",
        fake.calls()
    );
    let listed = p.get("/service/requests").json;
    assert_eq!(listed.as_array().unwrap().len(), 4, "{listed}");
    // The platform works again: the holders' rules go, and the rule can be created.
    fake.delay(Duration::ZERO);
    assert!(
        eventually(Duration::from_secs(10), || failed.iter().all(|id| {
            status_detail(&p, id).contains("has since been removed from the platform")
        })),
        "{:?}",
        p.get("/service/requests").json
    );
    let r = p.post(&traffic_only());
    assert_eq!(r.status, 201, "{:?}", r.json);
    assert_eq!(fake.installed().len(), 1, "{:?}", fake.calls());
}

/// Found by an audit: the reconciler sent every due removal of a pass in turn, so a region
/// whose platform hung cost one timeout per request, and a pass over ten of them held up the
/// removals of the other regions (and the journal's compaction) for ten timeouts. A region
/// whose platform did not answer is sent no other removal in the pass: another region's
/// request, behind them, is removed as soon as its platform takes it.
#[test]
fn a_hanging_platform_costs_one_timeout_a_pass_not_one_a_request() {
    let (bad, good) = (FakeLlMec::start(), FakeLlMec::start());
    let p = Plugin::start(&format!(
        "{}{}{}",
        server_section(""),
        llmec_region("2", &bad.url(), 300),
        llmec_region("3", &good.url(), 1000)
    ));
    let dns = |region: &str, name: &str| {
        serde_json::json!({"RegionId": region, "appDNSRule": [{"dnsRuleId": "d",
            "domainName": format!("{name}.example.org"), "ipAddressType": "IP_V4",
            "ipAddress": "172.24.248.5"}]})
        .to_string()
    };
    let created = |body: String| {
        let r = p.post(&body);
        assert_eq!(r.status, 201, "{:?}", r.json);
        r.json["RequestId"].as_str().unwrap().to_string()
    };
    let stuck: Vec<String> = (0..10)
        .map(|i| created(dns("2", &format!("b{i}"))))
        .collect();
    // Created last, so its removal comes after the others' in every pass.
    let other = created(dns("3", "g"));
    bad.delay(Duration::from_secs(3));
    for id in &stuck {
        assert_eq!(p.delete(id).status, 202);
    }
    good.fail_all(403);
    assert_eq!(p.delete(&other).status, 202);
    good.heal();
    let started = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || p
            .get(&format!("/service/requests/{other}"))
            .status
            == 404),
        "{:?}",
        p.get(&format!("/service/requests/{other}")).json
    );
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "removed after {took:?}");
    assert!(good.installed().is_empty(), "{:?}", good.calls());
    for id in &stuck {
        assert_eq!(
            p.get(&format!("/service/requests/{id}")).json["status"],
            "DELETING"
        );
    }
}

#[test]
fn a_gateway_s_504_in_front_of_the_platform_answers_504_and_its_step_is_removed() {
    let fake = FakeLlMec::start();
    let p = Plugin::start(&format!(
        "{}{}",
        server_section(""),
        llmec_region("2", &fake.url(), 1000)
    ));
    fake.fail_nth_post(1, 504);
    let r = p.post(&traffic_only());
    let detail = r.problem(504);
    assert_eq!(r.json["title"], "MEC platform timed out", "{detail}");
    // The platform may have taken it behind the gateway: the removal is sent.
    assert!(
        eventually(Duration::from_secs(5), || fake
            .calls()
            .iter()
            .any(|c| c.method == "DELETE")),
        "{:?}",
        fake.calls()
    );
}

#[test]
fn a_platform_that_refuses_connections_applied_nothing_and_its_request_is_deleted_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let p = Plugin::start(&format!(
        "{}{}",
        server_section(""),
        llmec_region("2", &url, 1000)
    ));
    let r = p.post(&traffic_only());
    let detail = r.problem(502);
    assert!(detail.contains("nothing was sent"), "{detail}");
    let id = r.json["RequestId"].as_str().unwrap().to_string();
    let record = p.get(&format!("/service/requests/{id}"));
    assert_eq!(record.json["status"], "FAILED");
    let detail = status_detail(&p, &id);
    assert!(!detail.contains("may remain"), "{detail}");
    let started = Instant::now();
    let d = p.delete(&id);
    assert_eq!(d.status, 201, "{:?}", d.json);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(p.get(&format!("/service/requests/{id}")).status, 404);
}

#[test]
fn a_request_may_cause_max_calls_platform_calls_and_not_one_more() {
    let fake = FakeLlMec::start();
    let p = Plugin::start(&format!(
        "{}{}max_calls = 3\n",
        server_section(""),
        llmec_region("2", &fake.url(), 1000)
    ));
    // At the bound: accepted.
    let r = p.post(&dns_rules(3));
    assert_eq!(r.status, 201, "{:?}", r.json);
    assert_eq!(fake.installed().len(), 3);
    // Just past it (DNS calls count too): refused naming the count, nothing sent.
    fake.clear_calls();
    let detail = p.post(&dns_rules(4)).problem(422);
    assert!(
        detail.contains('4') && detail.contains("max_calls (3)"),
        "{detail}"
    );
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    assert!(fake.installed().iter().all(|(path, _)| path == DNS_PATH));
}

#[test]
fn a_delete_in_a_region_no_longer_configured_is_409_until_forgotten_deliberately() {
    let fake = FakeLlMec::start();
    let dir = temp_dir("region-gone");
    let p = Plugin::start_in(
        &format!(
            "{}{}{}",
            server_section(""),
            llmec_region("2", &fake.url(), 1000),
            simulated_region("3")
        ),
        &dir,
    );
    let r = p.post(&traffic_only());
    assert_eq!(r.status, 201, "{:?}", r.json);
    let id = r.json["RequestId"].as_str().unwrap().to_string();
    p.stop();

    // Region 2 removed from the configuration.
    let p = Plugin::start_in(
        &format!("{}{}", server_section(""), simulated_region("3")),
        &dir,
    );
    let path = format!("/service/requests/{id}");
    let before = p.get(&path).json;
    let detail = p.delete(&id).problem(409);
    assert!(detail.contains("region '2'"), "{detail}");
    assert!(
        detail.contains(&fake.url()),
        "names the platform URL: {detail}"
    );
    assert_eq!(p.get(&path).json, before, "the record is unchanged");
    assert_eq!(fake.installed().len(), 1);

    let r = p.call("DELETE", &format!("{path}?forget=true"), None);
    assert_eq!(r.status, 201, "{:?}", r.json);
    assert_eq!(r.json["status"], "DELETED");
    assert_eq!(p.get(&path).status, 404);
    assert_eq!(fake.installed().len(), 1, "left on the platform, as asked");
    let metrics = ureq::get(format!("http://{}/metrics", p.app.local_addr()))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains("mec_plugin_requests_forgotten_total 1"),
        "{metrics}"
    );
}

/// A region switched from LL-MEC to `simulated` with its `url` left in place (the review's
/// case, which answered 201 and forgot a rule still on the platform): the simulated platform
/// did not plan the request's rule, so a DELETE leaves it DELETING, the reconciler leaves it
/// alone and says why, `?forget=true` drops it, and putting the earlier driver back removes a
/// second request's rule.
#[test]
fn after_a_driver_change_a_request_is_forgotten_or_removed_by_the_earlier_driver_never_taken_as_removed()
 {
    let fake = FakeLlMec::start();
    let dir = temp_dir("driver-changed");
    let llmec = llmec_config(&fake);
    let ids = created_in(&llmec, &dir, &[traffic_only(), dns_rules(1)]);
    let (first, second) = (ids[0].clone(), ids[1].clone());
    assert_eq!(fake.installed().len(), 2);

    let simulated = llmec.replace("driver = \"llmec\"", "driver = \"simulated\"");
    let p = Plugin::start_in(&simulated, &dir);
    fake.clear_calls();
    for id in [&first, &second] {
        let r = p.delete(id);
        assert_eq!(r.status, 202, "{:?}", r.json);
        assert_eq!(r.json["status"], "DELETING", "{:?}", r.json);
    }
    assert!(
        eventually(Duration::from_secs(5), || status_detail(&p, &first)
            .contains(
                "planned by another driver than region '2''s 'simulated'"
            )),
        "{}",
        status_detail(&p, &first)
    );
    assert_eq!(fake.installed().len(), 2, "nothing taken as removed");
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());

    let r = p.call(
        "DELETE",
        &format!("/service/requests/{first}?forget=true"),
        None,
    );
    assert_eq!(r.status, 201, "{:?}", r.json);
    assert_eq!(p.get(&format!("/service/requests/{first}")).status, 404);
    assert_eq!(fake.installed().len(), 2, "left on the platform, as asked");
    p.stop();

    // The earlier driver back: the reconciler removes the second request's rule.
    let p = Plugin::start_in(&llmec, &dir);
    assert!(
        eventually(Duration::from_secs(10), || p
            .get(&format!("/service/requests/{second}"))
            .status
            == 404),
        "{}",
        status_detail(&p, &second)
    );
    assert_eq!(
        fake.installed().len(),
        1,
        "only the forgotten one's rule is left"
    );
}

/// A region renamed (2 → 4) on the same LL-MEC platform, with a CREATED request of region 2
/// recorded: region 4's DELETE of the same rule would remove it from under that request
/// (rules are shared per region). The start is refused, exit code 2, naming the request, both
/// regions and the platform. With another driver on that URL (a gateway), or with the request
/// deleted first, it starts.
#[test]
fn a_start_that_gives_a_removed_regions_platform_to_another_region_is_refused_while_it_holds_rules()
{
    let fake = FakeLlMec::start();
    let dir = temp_dir("region-renamed");
    let before = llmec_config(&fake);
    let id = created_in(&before, &dir, &[dns_rules(1)]).remove(0);

    let start = |text: &str| {
        let mut config = mec_plugin::config::Config::parse(text, "test.toml").unwrap();
        config.server.state_dir = dir.clone();
        mec_plugin::app::App::start(&config)
    };
    let renamed = before.replace("id = \"2\"", "id = \"4\"");
    let Err(e) = start(&renamed) else {
        panic!("the start is refused");
    };
    assert_eq!(e.exit_code(), 2, "{e}");
    let text = e.to_string();
    for part in [
        format!("request {id} of region '2'"),
        "region '4' now drives with the same driver".to_string(),
        fake.url(),
    ] {
        assert!(text.contains(&part), "{part:?} not in {text}");
    }
    // The same platform spelt otherwise is the same platform (found by an audit: the URL was
    // compared as written, and these started).
    let url = fake.url();
    let rest = url.strip_prefix("http://").unwrap();
    for respelt in [
        format!("HTTP://{rest}"),
        format!("http://mtp:secret@{rest}"),
        format!("Http://{rest}/"),
    ] {
        let text = renamed.replace(&url, &respelt);
        assert_ne!(text, renamed);
        let Err(e) = start(&text) else {
            panic!("the start with {respelt} is refused");
        };
        assert_eq!(e.exit_code(), 2, "{e}");
    }
    // Another driver on that URL shares nothing with the request's rules.
    let other_driver = renamed.replace("driver = \"llmec\"", "driver = \"etsi-mec011\"");
    let app = start(&other_driver).expect("another driver's region starts");
    app.stop(Duration::from_secs(2));
    // Deleted under the earlier configuration first: the rename starts.
    let p = Plugin::start_in(&before, &dir);
    assert_eq!(p.delete(&id).status, 201);
    p.stop();
    let app = start(&renamed).expect("nothing held: it starts");
    app.stop(Duration::from_secs(2));
    assert!(fake.installed().is_empty());
}
