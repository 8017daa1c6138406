//! A region whose MEP `url` changes between two runs of the real binary: the requests created
//! on the old platform are never removed against the new URL (by a DELETE, the reconciler, or
//! start-up recovery's roll-back), which could find nothing there and forget rules left on the
//! old platform. A DELETE answers 409 `platform-changed` naming both platforms until it says
//! which it is: `?forget=true` (another platform: the rules stay where they are) or
//! `?adopt=true` (the same platform at a new address: removed there), or the old URL is listed
//! in `[region.mep] aliases`. An etcd leader behaves the same. The new address of
//! "the same platform" is a second port of the fake LL-MEC relaying to the same rules
//! ([`FakeLlMec::add_front`]), so that calls through it can be told from calls to the old one.

#[path = "support/child.rs"]
mod child;
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use child::Child;
use serde_json::Value;
use support::etcd::{Cluster, MISSING};
use support::fake_llmec::{DNS_PATH, FakeLlMec};
use support::{eventually, llmec_region, temp_dir};

/// Bound on what the reconciler is given to act (it would act at once on a due record).
const PASSES: Duration = Duration::from_millis(1500);
/// Bound on what the reconciler must finish (a removal held back by the settle window included).
const FINISH: Duration = Duration::from_secs(15);

/// What the plugin answered.
struct Answer {
    status: u16,
    location: Option<String>,
    json: Value,
}

/// `method` on `/MEC/v1<path>`.
fn call(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Answer {
    call_at(addr, method, &format!("/MEC/v1{path}"), body)
}

/// `method` on `target`, the whole path.
fn call_at(addr: SocketAddr, method: &str, target: &str, body: Option<&str>) -> Answer {
    let agent = support::agent(Duration::from_secs(20));
    let url = format!("http://{addr}{target}");
    let request = ureq::http::Request::builder().method(method).uri(&url);
    let mut response = support::send(&agent, request, body, "application/json")
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let location = support::header_of(&response, "location");
    let text = response.body_mut().read_to_string().unwrap_or_default();
    Answer {
        status: response.status().as_u16(),
        location,
        json: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

/// A DNS rule of its own for each `n` (different bodies are different LL-MEC rules).
fn dns(n: u8) -> String {
    format!(
        r#"{{"RegionId":"2","appDNSRule":[{{"dnsRuleId":"{n}","domainName":"app{n}.example.org","ipAddressType":"IP_V4","ipAddress":"10.0.0.{n}"}}]}}"#
    )
}

fn create(addr: SocketAddr, n: u8) -> String {
    let r = call(addr, "POST", "/service/requests", Some(&dns(n)));
    assert_eq!(r.status, 201, "{}", r.json);
    r.json["RequestId"].as_str().unwrap().to_string()
}

fn delete(addr: SocketAddr, id: &str, query: &str) -> Answer {
    call(
        addr,
        "DELETE",
        &format!("/service/requests/{id}{query}"),
        None,
    )
}

/// A run: region "2" on LL-MEC at `url`, the state in `root`; removals retried only after
/// 30 s, so that a DELETE left to the reconciler is still DELETING when the run is killed.
fn start(root: &Path, url: &str) -> Child {
    start_with(root, url, "", "")
}

/// [`start`] with the records in etcd at `endpoint` instead of the journal: the instance leads
/// alone (once the lease of an earlier run lapsed).
fn start_on_etcd(root: &Path, url: &str, endpoint: &str) -> Child {
    start_with(
        root,
        url,
        &format!(
            "[store]\nkind = \"etcd\"\nendpoints = [\"{endpoint}\"]\nprefix = \"{PREFIX}\"\nlease_ttl_s = 2\nadvertise_url = \"http://127.0.0.1:{{port}}\"\n\n"
        ),
        "",
    )
}

/// `[store] prefix` of the etcd test.
const PREFIX: &str = "/mec-platform-moved";

/// [`start`] with `store` (where `{port}` is the listening port) after `[server]`, and `mep`
/// added to `[region.mep]`.
fn start_with(root: &Path, url: &str, store: &str, mep: &str) -> Child {
    let port = child::free_port();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = '{}'\nfsync = false\nretry_initial_ms = 30000\nretry_max_ms = 60000\n\n{}{}",
        root.join("state").display(),
        store.replace("{port}", &port.to_string()),
        llmec_region("2", url, 1000) + mep
    );
    let config: PathBuf = root.join(format!("regions-{port}.toml"));
    std::fs::write(&config, text).unwrap();
    Child::start_config(&config, port, child::temp_dir("platform-moved-run"))
}

/// The 409 of a request created on `recorded` and deleted after the region moved to
/// `current`: the record named, both platforms, the two ways out.
fn assert_platform_changed(r: &Answer, id: &str, recorded: &str, current: &str) {
    assert_eq!(r.status, 409, "{}", r.json);
    let p = &r.json;
    assert_eq!(p["type"], "urn:mec-plugin:problem:platform-changed", "{p}");
    assert_eq!(
        (
            &p["RequestId"],
            &p["RegionId"],
            &p["platform"],
            &p["currentPlatform"]
        ),
        (
            &Value::from(id),
            &Value::from("2"),
            &Value::from(recorded),
            &Value::from(current)
        ),
        "{p}"
    );
    let detail = p["detail"].as_str().unwrap();
    for part in [
        id,
        "region '2'",
        recorded,
        current,
        "adopt=true",
        "forget=true",
    ] {
        assert!(detail.contains(part), "{part}: {detail}");
    }
    assert_eq!(
        r.location.as_deref(),
        Some(format!("/MEC/v1/service/requests/{id}").as_str())
    );
}

#[test]
fn a_request_is_never_removed_against_a_new_platform_url_and_forget_leaves_it_on_the_old_one() {
    let (a, b) = (FakeLlMec::start(), FakeLlMec::start());
    let root = temp_dir("platform-moved-forget");
    let plugin = start(&root, &a.url());
    let id = create(plugin.addr, 1);
    assert_eq!(a.installed().len(), 1);
    drop(plugin);

    let plugin = start(&root, &b.url());
    let logs = plugin.logs().join("\n");
    assert!(
        logs.contains(&format!(
            "region '2': 1 request(s) hold rules applied on {}",
            a.url()
        )),
        "one warning for the region at start-up: {logs}"
    );
    thread::sleep(PASSES);
    let r = delete(plugin.addr, &id, "");
    assert_platform_changed(&r, &id, &a.url(), &b.url());
    let r = call(plugin.addr, "GET", &format!("/service/requests/{id}"), None);
    assert_eq!(
        (r.status, &r.json["status"]),
        (200, &Value::from("CREATED"))
    );

    let r = delete(plugin.addr, &id, "?forget=true");
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(r.json["status"], "DELETED");
    let r = call(plugin.addr, "GET", &format!("/service/requests/{id}"), None);
    assert_eq!(r.status, 404);
    assert!(b.calls().is_empty(), "B was never called: {:?}", b.calls());
    assert_eq!(a.installed().len(), 1, "left on A, as asked");
    assert!(
        plugin
            .metrics(false)
            .contains("mec_plugin_requests_forgotten_total 1"),
        "counted"
    );
    let _ = std::fs::remove_dir_all(root);
}

/// On platform `a`, through the plugin at `plugin`: a request left DELETING (A refuses its
/// removal; the reconciler retries only in 30 s), then one caught PENDING by a `kill -9`
/// while A holds its creation's answer back (the POST lands on A after the kill). Returns
/// the DELETING one's id; the plugin is killed.
fn leave_deleting_and_pending(plugin: Child, a: &FakeLlMec) -> String {
    let addr = plugin.addr;
    let deleting = create(addr, 2);
    a.fail_all(503);
    let r = delete(addr, &deleting, "");
    assert_eq!(
        (r.status, &r.json["status"]),
        (202, &Value::from("DELETING"))
    );
    a.heal();
    let before = a.calls().len();
    // Long enough that the kill comes first on a busy machine.
    a.late_posts(Duration::from_secs(2));
    // Its answer never comes: the plugin is killed under it.
    let post = thread::spawn(move || {
        let agent = ureq::Agent::config_builder()
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .new_agent();
        let request = ureq::http::Request::builder()
            .method("POST")
            .uri(format!("http://{addr}/MEC/v1/service/requests"));
        let _ = support::send(&agent, request, Some(&dns(3)), "application/json");
    });
    assert!(eventually(Duration::from_secs(10), || a.calls().len() > before));
    plugin.signal(libc::SIGKILL);
    drop(plugin);
    let _ = post.join();
    a.late_posts(Duration::ZERO);
    assert!(
        eventually(Duration::from_secs(10), || a.installed().len() == 3),
        "{:?}",
        a.installed()
    );
    deleting
}

#[test]
fn adopt_removes_created_pending_and_deleting_requests_on_the_same_platform_at_its_new_address() {
    let a = FakeLlMec::start();
    let root = temp_dir("platform-moved-adopt");
    let plugin = start(&root, &a.url());
    let created = create(plugin.addr, 1);
    let deleting = leave_deleting_and_pending(plugin, &a);

    // The same platform at a new address.
    let front = a.add_front();
    let new_url = format!("http://127.0.0.1:{front}");
    let plugin = start(&root, &new_url);
    let addr = plugin.addr;
    let listing = call(addr, "GET", "/service/requests", None).json;
    let ids: Vec<String> = listing
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["RequestId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3, "{listing}");
    assert!(ids[..2] == [created.clone(), deleting.clone()], "{listing}");
    let pending = ids[2].clone();
    let statuses: Vec<&Value> = listing
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["status"])
        .collect();
    assert_eq!(statuses, ["CREATED", "DELETING", "FAILED"], "rolled back");
    let logs = plugin.logs().join("\n");
    assert!(
        logs.contains(&format!(
            "region '2': 3 request(s) hold rules applied on {}",
            a.url()
        )),
        "{logs}"
    );

    // Neither recovery nor the reconciler calls the new address; nor does a plain DELETE.
    thread::sleep(PASSES);
    for id in [&created, &deleting, &pending] {
        assert_platform_changed(&delete(addr, id, ""), id, &a.url(), &new_url);
    }
    assert!(a.calls_via(front).is_empty(), "{:?}", a.calls_via(front));
    let detail = call(addr, "GET", &format!("/service/requests/{deleting}"), None).json;
    assert!(
        detail["statusDetail"]
            .as_str()
            .is_some_and(|d| d.contains("adopt=true")),
        "{detail}"
    );
    assert_eq!(a.installed().len(), 3);

    // One adopted: it is removed through the new address, and the others applied on the old
    // one are re-pointed with it (the platform moved): the reconciler takes up the DELETING
    // one at once, and a plain DELETE now removes any (409 in use while the reconciler works
    // on it, 404 once it finished).
    let r = delete(addr, &created, "?adopt=true");
    assert!(matches!(r.status, 201 | 202), "{} {}", r.status, r.json);
    for id in [&deleting, &pending] {
        assert!(
            eventually(FINISH, || matches!(
                delete(addr, id, "").status,
                201 | 202 | 404
            )),
            "{id}: {}",
            delete(addr, id, "").json
        );
    }
    let gone =
        |id: &String| call(addr, "GET", &format!("/service/requests/{id}"), None).status == 404;
    assert!(
        eventually(FINISH, || [&created, &deleting, &pending]
            .into_iter()
            .all(gone)),
        "{}",
        call(addr, "GET", "/service/requests", None).json
    );
    assert!(a.installed().is_empty(), "{:?}", a.installed());
    let removals = a.calls_via(front);
    assert!(
        removals.len() >= 3
            && removals
                .iter()
                .all(|c| c.method == "DELETE" && c.path == DNS_PATH),
        "{removals:?}"
    );
    let logs = plugin.logs().join("\n");
    assert!(
        logs.contains("re-pointed on request (DELETE ?adopt=true)"),
        "{logs}"
    );
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn an_etcd_leader_refuses_the_same_way_and_its_re_pointing_is_committed_in_etcd() {
    let test = "an_etcd_leader_refuses_the_same_way_and_its_re_pointing_is_committed_in_etcd";
    let Some(etcd) = Cluster::start(test, 1) else {
        support::skip(test, MISSING);
        return;
    };
    let endpoint = etcd.endpoints()[0].clone();
    let a = FakeLlMec::start();
    let root = temp_dir("platform-moved-etcd");
    let plugin = start_on_etcd(&root, &a.url(), &endpoint);
    let id = create(plugin.addr, 1);
    drop(plugin);

    let front = a.add_front();
    let new_url = format!("http://127.0.0.1:{front}");
    let plugin = start_on_etcd(&root, &new_url, &endpoint);
    let addr = plugin.addr;
    // It follows the killed run's key until that lease lapses, then leads.
    let leads = || {
        let health = call_at(addr, "GET", "/healthz", None);
        health.json["role"] == "leader"
    };
    assert!(
        eventually(Duration::from_secs(15), leads),
        "{:?}",
        plugin.logs()
    );
    thread::sleep(PASSES);
    let logs = plugin.logs().join("\n");
    assert!(
        logs.contains(&format!(
            "region '2': 1 request(s) hold rules applied on {}",
            a.url()
        )),
        "the leader's recovery warns: {logs}"
    );
    assert_platform_changed(&delete(addr, &id, ""), &id, &a.url(), &new_url);
    assert!(a.calls_via(front).is_empty(), "{:?}", a.calls_via(front));

    // Adopted while the platform refuses: DELETING, and re-pointed in etcd.
    a.fail_all(503);
    let r = delete(addr, &id, "?adopt=true");
    assert_eq!(
        (r.status, &r.json["status"]),
        (202, &Value::from("DELETING"))
    );
    // A change after the creation: in the record's mutable part.
    let key = format!("{PREFIX}/progress/{id}");
    let stored = etcd
        .client(Duration::from_secs(5))
        .get(key.as_bytes())
        .unwrap()
        .expect("the record is in etcd");
    let stored: Value = serde_json::from_slice(&stored.value).unwrap();
    assert_eq!(
        stored["platform"],
        Value::from(new_url.as_str()),
        "{stored}"
    );
    a.heal();
    // A DELETE makes it due now: removed through the new address.
    assert!(matches!(delete(addr, &id, "").status, 201 | 202));
    assert!(eventually(FINISH, || {
        call(addr, "GET", &format!("/service/requests/{id}"), None).status == 404
    }));
    assert!(a.installed().is_empty(), "{:?}", a.installed());
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn with_the_old_url_as_an_alias_the_reconciler_finishes_removals_through_the_new_one() {
    let a = FakeLlMec::start();
    let root = temp_dir("platform-moved-alias");
    let plugin = start(&root, &a.url());
    let id = create(plugin.addr, 1);
    a.fail_all(503);
    let r = delete(plugin.addr, &id, "");
    assert_eq!(
        (r.status, &r.json["status"]),
        (202, &Value::from("DELETING"))
    );
    drop(plugin);
    a.heal();

    let front = a.add_front();
    let new_url = format!("http://127.0.0.1:{front}");
    let plugin = start_with(
        &root,
        &new_url,
        "",
        &format!("aliases = [\"{}\"]\n", a.url()),
    );
    assert!(
        eventually(FINISH, || {
            call(plugin.addr, "GET", &format!("/service/requests/{id}"), None).status == 404
        }),
        "{:?}",
        plugin.logs()
    );
    assert!(a.installed().is_empty(), "{:?}", a.installed());
    assert!(
        !a.calls_via(front).is_empty(),
        "removed through the new address"
    );
    assert!(!plugin.logs().join("\n").contains("hold rules applied on"));
    let _ = std::fs::remove_dir_all(root);
}
