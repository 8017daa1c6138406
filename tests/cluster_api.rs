//! Instances sharing one etcd store (`[store] kind = "etcd"`), in this process on loopback,
//! against a real 1-member etcd (`support/etcd.rs`) and a fake LL-MEC platform: one leader and
//! one follower; a follower forwards changes (once) and relays the leader's answer unchanged,
//! reads the leader's records from etcd (and asks the leader for a page after a request it
//! removed lately); `/healthz` and `mec_plugin_leader` tell the roles; a
//! stopped leader is replaced by the follower, which sees the records; without etcd, changes
//! and reads answer 503 with `Retry-After`. Skipped, saying so, where etcd is not installed.

mod support;

use std::net::TcpListener;
use std::time::Duration;

use mec_plugin::app::App;
use mec_plugin::config::Config;
use mec_plugin::leader::Role;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;
use support::etcd::{Cluster, MISSING};
use support::fake_llmec::FakeLlMec;
use support::{eventually, llmec_region, server_section, temp_dir};

const DNS: &str = r#"{"RegionId":"2","appDNSRule":[{"dnsRuleId":"111","domainName":"pfrag.gr","ipAddressType":"IP_V4","ipAddress":"172.24.248.5","ttl":0}]}"#;

/// The lease of the instances here: short, so that failovers are quick.
const TTL_S: u64 = 2;

/// Bound on a role change (a lease, a follower's poll, a recovery).
const ROLE_WITHIN: Duration = Duration::from_secs(10);

fn etcd(test: &str) -> Option<Cluster> {
    let cluster = Cluster::start(test, 1);
    if cluster.is_none() {
        support::skip(test, MISSING);
    }
    cluster
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One instance: its app and base URL.
struct Instance {
    app: App,
    url: String,
}

impl Instance {
    fn start(etcd: &Cluster, prefix: &str, mep: &FakeLlMec) -> Instance {
        Instance::start_with(etcd, prefix, mep, "")
    }

    /// With `server_extra` in `[server]`.
    fn start_with(etcd: &Cluster, prefix: &str, mep: &FakeLlMec, server_extra: &str) -> Instance {
        Instance::start_full(etcd, prefix, mep, server_extra, "")
    }

    /// With `server_extra` in `[server]` and `store_extra` in `[store]`.
    fn start_full(
        etcd: &Cluster,
        prefix: &str,
        mep: &FakeLlMec,
        server_extra: &str,
        store_extra: &str,
    ) -> Instance {
        let port = free_port();
        let scheme = if server_extra.contains("tls_cert") {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://127.0.0.1:{port}");
        let endpoints: Vec<String> = etcd
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        let text = format!(
            "{}[store]\nkind = \"etcd\"\nendpoints = [{}]\nprefix = \"{prefix}\"\nlease_ttl_s = {TTL_S}\nadvertise_url = \"{url}\"\n{store_extra}\n{}",
            server_section(server_extra).replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
            endpoints.join(", "),
            llmec_region("2", &mep.url(), 2000)
        );
        let mut config = Config::parse(&text, "test.toml").expect("valid configuration");
        config.server.state_dir = temp_dir("unused-state");
        let app = App::start(&config).expect("the instance starts");
        Instance { app, url }
    }

    /// [`start`](Instance::start), then waits until it has a role (leads or follows).
    fn started(etcd: &Cluster, prefix: &str, mep: &FakeLlMec) -> Instance {
        let instance = Instance::start(etcd, prefix, mep);
        assert!(
            eventually(ROLE_WITHIN, || instance.ready()),
            "the instance on {prefix} has no role"
        );
        instance
    }

    fn role(&self) -> Role {
        self.app.cluster.as_ref().unwrap().role()
    }

    fn ready(&self) -> bool {
        self.app
            .cluster
            .as_ref()
            .unwrap()
            .wait_ready(Duration::from_millis(50))
    }
}

/// An answer, whole.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: Option<String>,
    location: Option<String>,
    retry_after: Option<String>,
    www_authenticate: Option<String>,
    link: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

fn agent() -> ureq::Agent {
    support::agent(Duration::from_secs(20))
}

/// Posts the DNS request to the instance at `base`: its answer, whatever it is.
fn post_dns(base: &str) -> Answer {
    call("POST", base, "/MEC/v1/service/requests", Some(DNS), &[])
}

/// Creates the DNS request through the instance at `base`; its id.
fn create(base: &str) -> String {
    let created = post_dns(base);
    assert_eq!(created.status, 201, "{created:?}");
    created.json()["RequestId"].as_str().unwrap().to_string()
}

/// `method` `url` + `path` with an optional JSON body and extra headers.
fn call(
    method: &str,
    base: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Answer {
    call_via(&agent(), method, base, path, body, headers)
}

/// [`call`] through `agent`.
fn call_via(
    agent: &ureq::Agent,
    method: &str,
    base: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut request = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let result = support::send(agent, request, body, "application/json");
    let mut response = result.unwrap_or_else(|e| panic!("{method} {base}{path}: {e}"));
    let header = |n: &str| support::header_of(&response, n);
    let (content_type, location, retry_after) = (
        header("content-type"),
        header("location"),
        header("retry-after"),
    );
    let (www_authenticate, link) = (header("www-authenticate"), header("link"));
    Answer {
        status: response.status().as_u16(),
        content_type,
        location,
        retry_after,
        www_authenticate,
        link,
        body: response.body_mut().read_to_string().unwrap_or_default(),
    }
}

fn get(base: &str, path: &str) -> Answer {
    call("GET", base, path, None, &[])
}

/// Two instances on `prefix`, the first started (and leading) before the second.
fn pair(etcd: &Cluster, prefix: &str, mep: &FakeLlMec) -> (Instance, Instance) {
    let leader = Instance::start(etcd, prefix, mep);
    assert!(
        eventually(ROLE_WITHIN, || leader.ready()),
        "the first instance leads"
    );
    assert_eq!(leader.role(), Role::Leader);
    let follower = Instance::start(etcd, prefix, mep);
    assert!(
        eventually(ROLE_WITHIN, || follower.ready()),
        "the second follows"
    );
    assert_eq!(
        follower.role(),
        Role::Follower {
            leader_url: leader.url.clone()
        }
    );
    (leader, follower)
}

fn assert_unavailable(answer: &Answer, what: &str) {
    assert_eq!(answer.status, 503, "{what}: {answer:?}");
    assert_eq!(
        answer.content_type.as_deref(),
        Some("application/problem+json"),
        "{what}"
    );
    assert!(answer.retry_after.is_some(), "{what}: Retry-After");
}

#[test]
fn one_leader_one_follower_which_forwards_changes_and_reads_the_leaders_records() {
    let test = "one_leader_one_follower_which_forwards_changes_and_reads_the_leaders_records";
    let Some(etcd) = etcd(test) else {
        return;
    };
    let mep = FakeLlMec::start();
    let (leader, follower) = pair(&etcd, "/t1", &mep);

    // Health and metrics tell the roles.
    let health = get(&leader.url, "/healthz");
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.json()["role"], "leader");
    assert_eq!(health.json()["etcd"], "reachable");
    assert_eq!(health.json()["leader"], leader.url.as_str());
    let health = get(&follower.url, "/healthz");
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.json()["role"], "follower");
    assert_eq!(health.json()["leader"], leader.url.as_str());
    assert!(
        get(&leader.url, "/metrics")
            .body
            .contains("\nmec_plugin_leader 1\n")
    );
    let metrics = get(&follower.url, "/metrics").body;
    assert!(metrics.contains("\nmec_plugin_leader 0\n"), "{metrics}");
    assert!(
        metrics.contains("\nmec_plugin_store_errors_total "),
        "{metrics}"
    );

    // A creation through the follower is made by the leader; its answer comes back as is.
    let created = post_dns(&follower.url);
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.content_type.as_deref(), Some("application/json"));
    let id = created.json()["RequestId"].as_str().unwrap().to_string();
    assert_eq!(
        created.location.as_deref(),
        Some(format!("/MEC/v1/service/requests/{id}").as_str())
    );
    assert_eq!(
        mep.installed().len(),
        1,
        "the leader called the platform once"
    );

    // Both read it: the leader from its records, the follower from etcd.
    let on_leader = get(&leader.url, &format!("/MEC/v1/service/requests/{id}"));
    let on_follower = get(&follower.url, &format!("/MEC/v1/service/requests/{id}"));
    assert_eq!(on_leader.status, 200, "{on_leader:?}");
    assert_eq!(
        (on_follower.status, &on_follower.body),
        (200, &on_leader.body)
    );
    // One request is read by its key alone; an unknown one is the leader's 404 too.
    let unknown = "/MEC/v1/service/requests/00000000-0000-4000-8000-000000000000";
    let (missing, missing_on_leader) = (get(&follower.url, unknown), get(&leader.url, unknown));
    assert_eq!(
        (missing.status, &missing.body),
        (404, &missing_on_leader.body)
    );
    let listing = get(&follower.url, "/MEC/v1/service/requests");
    assert_eq!(
        listing.body,
        get(&leader.url, "/MEC/v1/service/requests").body
    );
    assert_eq!(listing.json().as_array().unwrap().len(), 1);
    let region = get(&follower.url, "/MEC/v1/service/regions/2");
    assert_eq!(region.json().as_array().unwrap().len(), 1, "{region:?}");

    // An error of the leader is relayed as is too.
    let refused = call(
        "POST",
        &follower.url,
        "/MEC/v1/service/requests",
        Some(&DNS.replace("\"2\"", "\"77\"")),
        &[],
    );
    let direct = call(
        "POST",
        &leader.url,
        "/MEC/v1/service/requests",
        Some(&DNS.replace("\"2\"", "\"77\"")),
        &[],
    );
    assert_eq!((refused.status, &refused.body), (422, &direct.body));
    assert_eq!(
        refused.content_type.as_deref(),
        Some("application/problem+json")
    );

    // The configuration's answers come from every instance.
    for path in ["/MEC/v1/service/regions", "/MEC/v1/swagger.json"] {
        assert_eq!(
            get(&follower.url, path).body,
            get(&leader.url, path).body,
            "{path}"
        );
    }

    // A request another instance forwarded is not forwarded again.
    let again = call(
        "POST",
        &follower.url,
        "/MEC/v1/service/requests",
        Some(DNS),
        &[("X-Mec-Plugin-Forwarded", "1")],
    );
    assert_unavailable(&again, "a forwarded request at a follower");
    assert_eq!(mep.installed().len(), 1, "nothing more was sent");

    // A removal through the follower.
    let removed = call(
        "DELETE",
        &follower.url,
        &format!("/MEC/v1/service/requests/{id}"),
        None,
        &[],
    );
    assert_eq!(removed.status, 201, "{removed:?}");
    assert_eq!(removed.json()["status"], "DELETED", "{removed:?}");
    assert!(mep.installed().is_empty());
    assert_eq!(get(&follower.url, "/MEC/v1/service/requests").body, "[]");
    follower.app.stop(Duration::from_secs(2));
    leader.app.stop(Duration::from_secs(2));
}

#[test]
fn a_stopped_leader_is_replaced_by_the_follower_which_sees_its_records() {
    let test = "a_stopped_leader_is_replaced_by_the_follower_which_sees_its_records";
    let Some(etcd) = etcd(test) else {
        return;
    };
    let mep = FakeLlMec::start();
    let (leader, follower) = pair(&etcd, "/t2", &mep);
    let id = create(&leader.url);
    leader.app.stop(Duration::from_secs(2));
    assert!(
        eventually(ROLE_WITHIN, || follower.role() == Role::Leader
            && follower.ready()),
        "the follower takes over"
    );
    let health = get(&follower.url, "/healthz");
    assert_eq!(health.json()["role"], "leader", "{health:?}");
    assert_eq!(health.json()["requests"], 1, "{health:?}");
    let read = get(&follower.url, &format!("/MEC/v1/service/requests/{id}"));
    assert_eq!(read.status, 200, "{read:?}");
    assert_eq!(read.json()["status"], "CREATED");
    let metrics = get(&follower.url, "/metrics").body;
    assert!(metrics.contains("\nmec_plugin_leader 1\n"), "{metrics}");
    let removed = call(
        "DELETE",
        &follower.url,
        &format!("/MEC/v1/service/requests/{id}"),
        None,
        &[],
    );
    assert_eq!(removed.status, 201, "{removed:?}");
    assert!(mep.installed().is_empty());
    follower.app.stop(Duration::from_secs(2));
}

#[test]
fn without_etcd_changes_and_reads_answer_503_with_retry_after_and_no_platform_is_called() {
    let test =
        "without_etcd_changes_and_reads_answer_503_with_retry_after_and_no_platform_is_called";
    let Some(mut etcd) = etcd(test) else {
        return;
    };
    let mep = FakeLlMec::start();
    let (leader, follower) = pair(&etcd, "/t3", &mep);
    let id = create(&follower.url);
    etcd.kill(0);
    // Within the lease, neither instance keeps a role.
    assert!(
        eventually(ROLE_WITHIN, || leader.role() == Role::Unknown
            && follower.role() == Role::Unknown),
        "both lose their role"
    );
    mep.clear_calls();
    for instance in [&leader, &follower] {
        let post = post_dns(&instance.url);
        assert_unavailable(&post, "a creation without etcd");
        let delete = call(
            "DELETE",
            &instance.url,
            &format!("/MEC/v1/service/requests/{id}"),
            None,
            &[],
        );
        assert_unavailable(&delete, "a removal without etcd");
        for path in [
            "/MEC/v1/service/requests".to_string(),
            format!("/MEC/v1/service/requests/{id}"),
            "/MEC/v1/service/regions/2".to_string(),
        ] {
            assert_unavailable(&get(&instance.url, &path), &path);
        }
        let health = get(&instance.url, "/healthz");
        assert_unavailable(&health, "health");
        assert_eq!(health.json()["role"], "unknown", "{health:?}");
        assert_eq!(health.json()["etcd"], "unreachable", "{health:?}");
        assert_eq!(get(&instance.url, "/MEC/v1/service/regions").status, 200);
        let metrics = get(&instance.url, "/metrics").body;
        assert!(metrics.contains("\nmec_plugin_leader 0\n"), "{metrics}");
        assert!(
            !metrics.contains("\nmec_plugin_store_errors_total 0\n"),
            "{metrics}"
        );
    }
    assert!(mep.calls().is_empty(), "no platform call without etcd");
    assert_eq!(mep.installed().len(), 1, "the rule stays");

    // Back: one leads again and the record is there.
    etcd.restart(0);
    etcd.wait_healthy();
    assert!(
        eventually(ROLE_WITHIN, || leader.ready() && follower.ready()),
        "roles again once etcd is back"
    );
    let read = get(&follower.url, &format!("/MEC/v1/service/requests/{id}"));
    assert_eq!(read.status, 200, "{read:?}");
    follower.app.stop(Duration::from_secs(2));
    leader.app.stop(Duration::from_secs(2));
}

#[test]
fn the_bearer_token_applies_between_instances_too() {
    let test = "the_bearer_token_applies_between_instances_too";
    let Some(etcd) = etcd(test) else {
        return;
    };
    let mep = FakeLlMec::start();
    let dir = temp_dir("cluster-token");
    std::fs::write(dir.join("token"), "s3cret\n").unwrap();
    let token_file = format!("token_file = \"{}\"", dir.join("token").display());
    let leader = Instance::start_with(&etcd, "/t4", &mep, &token_file);
    assert!(eventually(ROLE_WITHIN, || leader.ready()));
    let follower = Instance::start_with(&etcd, "/t4", &mep, &token_file);
    assert!(eventually(ROLE_WITHIN, || follower.ready()));
    let path = "/MEC/v1/service/requests";
    let bare = call("POST", &follower.url, path, Some(DNS), &[]);
    assert_eq!(bare.status, 401, "{bare:?}");
    let wrong = [("Authorization", "Bearer nope")];
    assert_eq!(
        call("POST", &follower.url, path, Some(DNS), &wrong).status,
        401
    );
    assert!(mep.calls().is_empty());
    let auth = [("Authorization", "Bearer s3cret")];
    let created = call("POST", &follower.url, path, Some(DNS), &auth);
    assert_eq!(created.status, 201, "{created:?}");
    let listing = call("GET", &follower.url, path, None, &auth);
    assert_eq!(listing.json().as_array().unwrap().len(), 1, "{listing:?}");
    // An instance whose token differs from the leader's (a rollout of a new token): its
    // forwarded change gets the leader's 401, challenge included.
    std::fs::write(dir.join("other"), "other\n").unwrap();
    let other_file = format!("token_file = \"{}\"", dir.join("other").display());
    let odd = Instance::start_with(&etcd, "/t4", &mep, &other_file);
    assert!(eventually(ROLE_WITHIN, || odd.ready()));
    let refused = call(
        "POST",
        &odd.url,
        path,
        Some(DNS),
        &[("Authorization", "Bearer other")],
    );
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(
        refused.www_authenticate.as_deref(),
        Some("Bearer realm=\"mec-plugin\""),
        "relayed"
    );
    odd.app.stop(Duration::from_secs(2));
    follower.app.stop(Duration::from_secs(2));
    leader.app.stop(Duration::from_secs(2));
}

/// The binary with `NOTIFY_SOCKET`: `READY=1` only once it has a role.
mod readiness {
    use std::os::unix::net::UnixDatagram;
    use std::process::{Command, Stdio};

    use super::*;

    const BIN: &str = env!("CARGO_BIN_EXE_mec-plugin");

    /// Runs the binary on `endpoint`, listening on `port`; killed when dropped.
    struct Binary(std::process::Child);

    impl Drop for Binary {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn start(dir: &std::path::Path, endpoint: &str, port: u16, socket: &std::path::Path) -> Binary {
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\nkind = \"etcd\"\nendpoints = [\"{endpoint}\"]\nprefix = \"/ready\"\nlease_ttl_s = {TTL_S}\nadvertise_url = \"http://127.0.0.1:{port}\"\n{}",
            support::simulated_region("2")
        );
        let path = dir.join("regions.toml");
        std::fs::write(&path, config).unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .env("NOTIFY_SOCKET", socket)
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Binary(child)
    }

    /// The next notification within `bound`, if any.
    fn next(socket: &UnixDatagram, bound: Duration) -> Option<String> {
        socket.set_read_timeout(Some(bound)).unwrap();
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    #[test]
    fn ready_is_sent_only_once_the_instance_has_a_role() {
        let test = "ready_is_sent_only_once_the_instance_has_a_role";
        let Some(etcd) = super::etcd(test) else {
            return;
        };
        let dir = temp_dir("cluster-ready");
        let socket_path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&socket_path).unwrap();

        // etcd unreachable: serving, but not ready, and health says why.
        let port = free_port();
        let nowhere = format!("http://127.0.0.1:{}", free_port());
        let waiting = start(&dir, &nowhere, port, &socket_path);
        let url = format!("http://127.0.0.1:{port}");
        assert!(
            eventually(ROLE_WITHIN, || TcpStream::connect(("127.0.0.1", port))
                .is_ok()),
            "the instance listens"
        );
        let health = get(&url, "/healthz");
        assert_unavailable(&health, "health without etcd");
        assert_eq!(health.json()["role"], "unknown");
        assert_eq!(health.json()["etcd"], "unreachable");
        assert_eq!(get(&url, "/MEC/v1/service/regions").status, 200);
        let early = next(&socket, Duration::from_secs(3));
        assert!(
            early.as_deref().is_none_or(|m| !m.contains("READY=1")),
            "{early:?}"
        );
        drop(waiting);

        // etcd there: READY=1, leading.
        let port = free_port();
        let _leading = start(&dir, &etcd.endpoints()[0], port, &socket_path);
        let mut ready = None;
        let deadline = std::time::Instant::now() + ROLE_WITHIN;
        while ready.is_none() && std::time::Instant::now() < deadline {
            ready = next(&socket, Duration::from_secs(1)).filter(|m| m.contains("READY=1"));
        }
        let ready = ready.expect("READY=1 once leading");
        assert!(ready.contains("leading"), "{ready}");
        let health = get(&format!("http://127.0.0.1:{port}"), "/healthz");
        assert_eq!(health.status, 200, "{health:?}");
        assert_eq!(health.json()["role"], "leader");
    }

    use std::net::TcpStream;
}

#[test]
fn a_leader_that_cannot_be_reached_answers_503_saying_nothing_was_sent() {
    let test = "a_leader_that_cannot_be_reached_answers_503_saying_nothing_was_sent";
    let Some(etcd) = etcd(test) else {
        return;
    };
    let mep = FakeLlMec::start();
    // A leader key held by an instance that listens nowhere (its lease outlives the test).
    let client = etcd.client(Duration::from_secs(2));
    let lease = client.lease_grant(60).unwrap();
    let gone = format!("http://127.0.0.1:{}", free_port());
    client
        .put(b"/t5/leader", gone.as_bytes(), lease.id)
        .unwrap();
    let follower = Instance::started(&etcd, "/t5", &mep);
    assert_eq!(follower.role(), Role::Follower { leader_url: gone });
    let post = post_dns(&follower.url);
    assert_unavailable(&post, "a creation for an unreachable leader");
    assert!(post.body.contains("nothing was sent"), "{post:?}");
    // Reads do not need the leader.
    let listing = get(&follower.url, "/MEC/v1/service/requests");
    assert_eq!((listing.status, listing.body.as_str()), (200, "[]"));
    // Not even a page after a request etcd does not have: the leader cannot be asked where
    // it stood, so the follower answers its own 400.
    let page = get(
        &follower.url,
        "/MEC/v1/service/requests?after=00000000-0000-4000-8000-000000000000",
    );
    assert_eq!(page.status, 400, "{page:?}");
    assert!(page.body.contains("names no stored request"), "{page:?}");
    assert!(mep.calls().is_empty());
    follower.app.stop(Duration::from_secs(2));

    // A leader whose TLS handshake fails (a certificate this follower does not trust) got
    // nothing either: 503, not 502 "may have been made".
    let pki = support::tls::TestPki::generate("untrusted-leader");
    let upstream = format!("127.0.0.1:{}", mep.port()).parse().unwrap();
    let front = support::tls::TlsFront::start(&pki, upstream);
    let untrusted = format!("https://127.0.0.1:{}", front.port());
    client
        .put(b"/t5b/leader", untrusted.as_bytes(), lease.id)
        .unwrap();
    let follower = Instance::started(&etcd, "/t5b", &mep);
    let post = post_dns(&follower.url);
    assert_unavailable(
        &post,
        "a creation for a leader whose certificate is not trusted",
    );
    assert!(post.body.contains("nothing was sent"), "{post:?}");
    assert!(mep.calls().is_empty());
    follower.app.stop(Duration::from_secs(2));
}

#[test]
fn a_change_the_leader_took_but_never_answered_is_502_without_retry_after() {
    let test = "a_change_the_leader_took_but_never_answered_is_502_without_retry_after";
    let Some(etcd) = etcd(test) else {
        return;
    };
    let mep = FakeLlMec::start();
    // A "leader" that reads each forwarded request and closes without answering: whether it
    // made the change is unknown, so a blind retry (which 503 + Retry-After invites) could
    // create the request twice.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let leader_url = format!("http://{}", silent.local_addr().unwrap());
    let reader = std::thread::spawn(move || {
        let (mut conn, _) = silent.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        while !got.ends_with(DNS.as_bytes()) {
            match std::io::Read::read(&mut conn, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got
    });
    let client = etcd.client(Duration::from_secs(2));
    let lease = client.lease_grant(60).unwrap();
    client
        .put(b"/t9/leader", leader_url.as_bytes(), lease.id)
        .unwrap();
    let follower = Instance::started(&etcd, "/t9", &mep);
    let post = post_dns(&follower.url);
    assert_eq!(post.status, 502, "{post:?}");
    assert_eq!(post.retry_after, None, "{post:?}");
    assert!(
        post.body.contains("urn:mec-plugin:problem:leader-answer"),
        "{post:?}"
    );
    assert!(
        post.body.contains("may or may not have been made"),
        "{post:?}"
    );
    let got = reader.join().unwrap();
    assert!(got.ends_with(DNS.as_bytes()), "the change was sent whole");
    assert!(mep.calls().is_empty());
    follower.app.stop(Duration::from_secs(2));
}

#[test]
fn after_etcd_lost_its_data_the_instances_that_knew_more_refuse_to_go_on_with_it() {
    let test = "after_etcd_lost_its_data_the_instances_that_knew_more_refuse_to_go_on_with_it";
    let Some(mut etcd) = etcd(test) else {
        return;
    };
    let mep = FakeLlMec::start();
    let (leader, follower) = pair(&etcd, "/t10", &mep);
    let id = create(&leader.url);
    assert_eq!(mep.installed().len(), 1);
    // etcd loses its disk: the record is gone from it, its rule is still on the platform.
    etcd.wipe(0);
    // Neither instance goes on with it: the leader loses its lease, and neither may lead (nor
    // follow, nor read) on an etcd below the revisions it was answered at. The follower is
    // the one that used to win the election on the empty etcd and forget the record.
    for instance in [&leader, &follower] {
        let refused = eventually(Duration::from_secs(3 * TTL_S + 10), || {
            let health = get(&instance.url, "/healthz");
            health.status == 503 && health.body.contains("etcd lost data")
        });
        assert!(refused, "{:?}", get(&instance.url, "/healthz"));
    }
    std::thread::sleep(Duration::from_secs(TTL_S + 1));
    for instance in [&leader, &follower] {
        assert_eq!(instance.role(), Role::Unknown);
        let post = post_dns(&instance.url);
        assert_unavailable(&post, "a creation on an etcd that went back");
        assert!(post.body.contains("restore etcd's data"), "{post:?}");
        let got = get(&instance.url, &format!("/MEC/v1/service/requests/{id}"));
        assert_unavailable(&got, "no answer from what etcd lost");
    }
    assert_eq!(mep.calls().len(), 1, "no platform call: {:?}", mep.calls());
    assert_eq!(mep.installed().len(), 1);
    leader.app.stop(Duration::from_secs(2));
    follower.app.stop(Duration::from_secs(2));
    // A restart accepts what etcd holds now (the operator's choice).
    let restarted = Instance::started(&etcd, "/t10", &mep);
    let listing = get(&restarted.url, "/MEC/v1/service/requests");
    assert_eq!((listing.status, listing.body.as_str()), (200, "[]"));
    restarted.app.stop(Duration::from_secs(2));
}

#[test]
fn a_leader_without_quorum_never_lists_a_creation_etcd_did_not_commit() {
    let test = "a_leader_without_quorum_never_lists_a_creation_etcd_did_not_commit";
    let Some(etcd) = etcd(test) else {
        return;
    };
    let mep = FakeLlMec::start();
    let leader = Instance::started(&etcd, "/t11", &mep);
    assert_eq!(leader.role(), Role::Leader);
    // etcd stops answering (no quorum): a creation is recorded PENDING in the leader's
    // memory, and its commit waits.
    etcd.pause(0);
    let post = std::thread::spawn({
        let url = leader.url.clone();
        move || post_dns(&url)
    });
    std::thread::sleep(Duration::from_millis(300));
    let listing = get(&leader.url, "/MEC/v1/service/requests");
    assert_unavailable(&listing, "a listing while a creation is not committed");
    assert!(!listing.body.contains("PENDING"), "{listing:?}");
    let post = post.join().unwrap();
    assert_unavailable(&post, "the creation itself");
    assert!(
        mep.calls().is_empty(),
        "nothing called before it was recorded"
    );
    etcd.resume(0);
    // Back: the creation never existed (its record was not committed) or is rolled back.
    assert!(eventually(ROLE_WITHIN, || leader.ready()));
    let listing = eventually_ok(&leader.url, "/MEC/v1/service/requests");
    assert!(!listing.contains("CREATED"), "{listing}");
    leader.app.stop(Duration::from_secs(2));
}

/// The body of `path` once it answers 200 (within [`ROLE_WITHIN`]).
fn eventually_ok(base: &str, path: &str) -> String {
    let mut last = None;
    let ok = eventually(ROLE_WITHIN, || {
        let answer = get(base, path);
        let ok = answer.status == 200;
        last = Some(answer);
        ok
    });
    assert!(ok, "{last:?}");
    last.map(|a| a.body).unwrap_or_default()
}

#[test]
fn an_https_leader_is_reached_through_the_chain_of_tls_cert() {
    let test = "an_https_leader_is_reached_through_the_chain_of_tls_cert";
    let Some(etcd) = etcd(test) else {
        return;
    };
    let mep = FakeLlMec::start();
    let pki = support::tls::TestPki::generate("cluster");
    // The chain as deployed: the instance's certificate, then the CA that signed it.
    let chain = pki.dir.join("chain.pem");
    std::fs::write(&chain, format!("{}{}", pki.cert_pem, pki.ca_pem)).unwrap();
    let tls = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        chain.display(),
        pki.key_file.display()
    );
    let leader = Instance::start_with(&etcd, "/t6", &mep, &tls);
    assert!(eventually(ROLE_WITHIN, || leader.ready()));
    let follower = Instance::start_with(&etcd, "/t6", &mep, &tls);
    assert!(eventually(ROLE_WITHIN, || follower.ready()));
    assert!(leader.url.starts_with("https://"));
    let ca = rustls_pki_types::CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap();
    let trusting = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(20)))
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&[
                    ureq::tls::Certificate::from_der(ca.as_ref()).to_owned(),
                ]))
                .build(),
        )
        .build()
        .new_agent();
    let path = "/MEC/v1/service/requests";
    let created = call_via(&trusting, "POST", &follower.url, path, Some(DNS), &[]);
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(mep.installed().len(), 1);
    follower.app.stop(Duration::from_secs(2));
    leader.app.stop(Duration::from_secs(2));
}

/// Review: `App::stop` of a leader whose term wrote records steps down at once: when it
/// returns, the leader key is gone (its lease revoked), not merely left to expire.
#[test]
fn a_stopped_leader_has_revoked_its_lease_when_stop_returns() {
    let test = "a_stopped_leader_has_revoked_its_lease_when_stop_returns";
    let Some(etcd) = etcd(test) else {
        return;
    };
    let mep = FakeLlMec::start();
    let leader = Instance::started(&etcd, "/t-revoke", &mep);
    let created = post_dns(&leader.url);
    assert_eq!(created.status, 201, "{created:?}");
    let client = etcd.client(Duration::from_secs(1));
    let key = mec_plugin::leader::leader_key("/t-revoke");
    assert!(
        client.get(&key).unwrap().is_some(),
        "the leader key is held"
    );
    leader.app.stop(Duration::from_secs(2));
    assert!(
        client.get(&key).unwrap().is_none(),
        "the lease is revoked when stop returns"
    );
}

/// Review: a leader whose store stopped for good while its term goes on (here another writer
/// moved `<prefix>/writer`, as a second store of the term would) opens the term's store
/// again from etcd instead of answering 503 until it is restarted.
#[test]
fn a_leader_whose_store_stopped_reopens_it_for_the_same_term() {
    let test = "a_leader_whose_store_stopped_reopens_it_for_the_same_term";
    let Some(etcd) = etcd(test) else {
        return;
    };
    let mep = FakeLlMec::start();
    let leader = Instance::started(&etcd, "/t-reopen", &mep);
    let client = etcd.client(Duration::from_secs(1));
    client
        .put(b"/t-reopen/writer", b"someone else", 0)
        .expect("put");
    let post = || post_dns(&leader.url);
    let first = post();
    assert_unavailable(&first, "the write its store could not commit");
    assert!(
        eventually(ROLE_WITHIN, || post().status == 201),
        "the same term writes again once its store is read again"
    );
    assert_eq!(leader.role(), Role::Leader);
    leader.app.stop(Duration::from_secs(2));
}

/// A page cursor naming a request deleted lately: the leader remembers where the last removed
/// requests stood (`store`'s removed cursors) and goes on from there; a follower, whose etcd
/// read no longer has the request, asks the leader for that page instead of refusing it
/// (same status, body and `Link`). A cursor that never named a request is refused by both.
#[test]
fn a_page_after_a_request_deleted_lately_is_the_leaders_page_on_a_follower_too() {
    let test = "a_page_after_a_request_deleted_lately_is_the_leaders_page_on_a_follower_too";
    let Some(etcd) = etcd(test) else {
        return;
    };
    let mep = FakeLlMec::start();
    let (leader, follower) = pair(&etcd, "/t-cursor", &mep);
    let ids: Vec<String> = (0..4).map(|_| create(&leader.url)).collect();
    let removed = call(
        "DELETE",
        &follower.url,
        &format!("/MEC/v1/service/requests/{}", ids[1]),
        None,
        &[],
    );
    assert_eq!(removed.status, 201, "{removed:?}");
    let pages = [
        format!("/MEC/v1/service/requests?limit=1&after={}", ids[1]),
        format!("/MEC/v1/service/requests?after={}", ids[1]),
        format!("/MEC/v1/service/regions/2?limit=1&after={}", ids[1]),
    ];
    for path in &pages {
        let (on_leader, on_follower) = (get(&leader.url, path), get(&follower.url, path));
        assert_eq!(on_leader.status, 200, "{path}: {on_leader:?}");
        assert_eq!(
            (
                on_follower.status,
                &on_follower.body,
                &on_follower.content_type
            ),
            (200, &on_leader.body, &on_leader.content_type),
            "{path}"
        );
        assert_eq!(
            on_follower.json()[0]["RequestId"],
            ids[2].as_str(),
            "{path}"
        );
    }
    assert_eq!(
        get(&follower.url, &pages[0]).link.as_deref(),
        Some(
            format!(
                "</MEC/v1/service/requests?limit=1&after={}>; rel=\"next\"",
                ids[2]
            )
            .as_str()
        ),
        "the leader's Link comes along"
    );
    // A cursor that never named a request: 400 from both, the same problem.
    let never = "/MEC/v1/service/requests?after=00000000-0000-4000-8000-000000000000";
    let (on_leader, on_follower) = (get(&leader.url, never), get(&follower.url, never));
    assert_eq!(on_leader.status, 400, "{on_leader:?}");
    assert_eq!(
        (on_follower.status, &on_follower.body),
        (400, &on_leader.body)
    );
    // A cursor of a live request is placed by the follower's own read.
    let own = get(
        &follower.url,
        &format!("/MEC/v1/service/requests?after={}", ids[2]),
    );
    assert_eq!(own.json()[0]["RequestId"], ids[3].as_str(), "{own:?}");
    follower.app.stop(Duration::from_secs(2));
    leader.app.stop(Duration::from_secs(2));
}

/// An etcd auth call through the JSON gateway (`/v3/auth/<path>`), as root once `token` is
/// given; panics unless etcd answers 200.
fn etcd_auth(endpoint: &str, path: &str, body: &Value, token: Option<&str>) -> Value {
    let mut request = agent().post(format!("{endpoint}/v3/auth/{path}"));
    if let Some(token) = token {
        request = request.header("authorization", token);
    }
    let mut answer = request
        .config()
        .http_status_as_error(false)
        .build()
        .send(body.to_string())
        .unwrap();
    let text = answer.body_mut().read_to_string().unwrap();
    assert_eq!(answer.status().as_u16(), 200, "auth/{path}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// etcd's JSON for a permission of `kind` on one key, or on every key under `key` (`prefix`).
fn permission(kind: &str, key: &str, prefix: bool) -> Value {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut perm = serde_json::json!({"permType": kind, "key": b64(key.as_bytes())});
    if prefix {
        let mut end = key.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        perm["range_end"] = b64(&end).into();
    }
    perm
}

#[test]
fn a_user_that_may_not_write_the_records_gets_an_answer_and_the_store_recovers_once_it_may() {
    let test =
        "a_user_that_may_not_write_the_records_gets_an_answer_and_the_store_recovers_once_it_may";
    let Some(etcd) = etcd(test) else { return };
    let e = &etcd.endpoints()[0];
    let prefix = "/denied";
    // Root first (etcd refuses to enable authentication without it), then a user whose role
    // may run the election (`<prefix>/leader`) and set the writer tag, but only read the
    // records: a plausible slip in its grants.
    use serde_json::json;
    etcd_auth(e, "role/add", &json!({"name": "mec"}), None);
    for (kind, key, under) in [
        ("READWRITE", format!("{prefix}/leader"), false),
        ("READWRITE", format!("{prefix}/writer"), false),
        ("READ", format!("{prefix}/records/"), true),
        ("READ", format!("{prefix}/progress/"), true),
        ("READ", format!("{prefix}/importing"), false),
    ] {
        let perm = permission(kind, &key, under);
        etcd_auth(e, "role/grant", &json!({"name": "mec", "perm": perm}), None);
    }
    for (user, password, role) in [("root", "root-pw", "root"), ("mec", "mec-pw", "mec")] {
        let added = json!({"name": user, "password": password});
        etcd_auth(e, "user/add", &added, None);
        etcd_auth(e, "user/grant", &json!({"user": user, "role": role}), None);
    }
    etcd_auth(e, "enable", &json!({}), None);
    let root = etcd_auth(
        e,
        "authenticate",
        &json!({"name": "root", "password": "root-pw"}),
        None,
    )["token"]
        .as_str()
        .unwrap()
        .to_string();

    let dir = temp_dir("etcd-password");
    let password = dir.join("password");
    std::fs::write(&password, "mec-pw\n").unwrap();
    let mep = FakeLlMec::start();
    let workers = 2;
    let leader = Instance::start_full(
        &etcd,
        prefix,
        &mep,
        &format!("workers = {workers}"),
        &format!("user = \"mec\"\npassword_file = \"{}\"", password.display()),
    );
    assert!(
        eventually(ROLE_WITHIN, || leader.ready()
            && leader.role() == Role::Leader),
        "the instance leads: the election's keys are its to write"
    );

    // A creation answers at once, saying what is wrong and what to do, and calls nothing.
    let started = std::time::Instant::now();
    let refused = post_dns(&leader.url);
    assert!(started.elapsed() < Duration::from_secs(10), "{refused:?}");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(
        refused.content_type.as_deref(),
        Some("application/problem+json")
    );
    let problem = refused.json();
    assert_eq!(problem["type"], "urn:mec-plugin:problem:unavailable");
    let detail = problem["detail"].as_str().unwrap();
    for part in [
        "etcd user 'mec'",
        "permission denied",
        "/denied/records/<id>, /denied/progress/<id>",
        "readwrite on the prefix /denied/",
    ] {
        assert!(detail.contains(part), "{part:?} not in {detail}");
    }

    // More creations than workers, at once: each is answered, none holds its worker.
    let started = std::time::Instant::now();
    let answers: Vec<Answer> = std::thread::scope(|scope| {
        let posts: Vec<_> = (0..workers * 3)
            .map(|_| scope.spawn(|| post_dns(&leader.url)))
            .collect();
        posts.into_iter().map(|p| p.join().unwrap()).collect()
    });
    assert!(started.elapsed() < Duration::from_secs(10));
    for answer in &answers {
        assert_eq!(answer.status, 503, "{answer:?}");
        assert_eq!(
            answer.content_type.as_deref(),
            Some("application/problem+json")
        );
    }
    let health = get(&leader.url, "/healthz");
    assert!(matches!(health.status, 200 | 503), "{health:?}");
    assert!(
        mep.calls().is_empty(),
        "no platform call for a creation whose PENDING record was refused: {:?}",
        mep.calls()
    );

    // Once the role may write the records, the store opens again by itself.
    for part in ["records", "progress"] {
        let perm = permission("READWRITE", &format!("{prefix}/{part}/"), true);
        etcd_auth(
            e,
            "role/grant",
            &json!({"name": "mec", "perm": perm}),
            Some(&root),
        );
    }
    let mut last = None;
    let created = eventually(Duration::from_secs(20), || {
        let answer = post_dns(&leader.url);
        let ok = answer.status == 201;
        last = Some(answer);
        if !ok {
            std::thread::sleep(Duration::from_millis(200));
        }
        ok
    });
    assert!(created, "{last:?}");
    assert!(!mep.calls().is_empty(), "the creation reached the platform");
    // Only that creation is recorded: the refused ones left nothing behind.
    let listed = get(&leader.url, "/MEC/v1/service/requests");
    assert_eq!(listed.status, 200, "{listed:?}");
    assert_eq!(
        listed.json().as_array().map(Vec::len),
        Some(1),
        "{listed:?}"
    );

    // An instance whose password etcd refuses knows no leader, and says why (it used to say
    // only "etcd unreachable").
    let wrong = dir.join("wrong-password");
    std::fs::write(&wrong, "not-mec-pw\n").unwrap();
    let refused = Instance::start_full(
        &etcd,
        prefix,
        &mep,
        "",
        &format!("user = \"mec\"\npassword_file = \"{}\"", wrong.display()),
    );
    let says = |a: &Answer| a.status == 503 && a.body.contains("refused the credentials");
    assert!(
        eventually(Duration::from_secs(5), || says(&get(
            &refused.url,
            "/healthz"
        ))),
        "{:?}",
        get(&refused.url, "/healthz")
    );
    let post = post_dns(&refused.url);
    assert!(says(&post), "{post:?}");
    assert_eq!(refused.role(), Role::Unknown);
    refused.app.stop(Duration::from_secs(2));

    // With a token, the open /healthz keeps etcd's words to itself; authenticated calls say.
    std::fs::write(dir.join("token"), "s3cret\n").unwrap();
    let token_file = format!("token_file = \"{}\"", dir.join("token").display());
    let guarded = Instance::start_full(
        &etcd,
        prefix,
        &mep,
        &token_file,
        &format!("user = \"mec\"\npassword_file = \"{}\"", wrong.display()),
    );
    let auth = [("Authorization", "Bearer s3cret")];
    let authenticated = || {
        call(
            "POST",
            &guarded.url,
            "/MEC/v1/service/requests",
            Some(DNS),
            &auth,
        )
    };
    assert!(
        eventually(Duration::from_secs(5), || says(&authenticated())),
        "{:?}",
        authenticated()
    );
    let health = get(&guarded.url, "/healthz");
    assert_eq!(health.status, 503, "{health:?}");
    assert!(!health.body.contains("credentials"), "{health:?}");
    assert!(
        !health.body.contains("127.0.0.1"),
        "no etcd address: {health:?}"
    );
    assert!(health.body.contains("why: in the log"), "{health:?}");
    guarded.app.stop(Duration::from_secs(2));
    let _ = std::fs::remove_dir_all(dir);
}

/// Review finding M1 (etcd): an import killed halfway left part of its records, on which the
/// instances then led without a word. Its marker (`<prefix>/importing`, left by the
/// interrupted import with part of the records) now keeps every instance from leading on
/// them: the leader's load refuses (its `/healthz`, and every change and read through any
/// instance, answer 503 saying so, with how to start over) and no platform is called; once
/// the partial import is deleted the leader opens the prefix without a restart.
#[test]
fn an_interrupted_import_keeps_every_instance_from_leading_until_it_is_deleted() {
    let test = "an_interrupted_import_keeps_every_instance_from_leading_until_it_is_deleted";
    let Some(etcd) = etcd(test) else {
        return;
    };
    let mep = FakeLlMec::start();
    let client = etcd.client(Duration::from_secs(2));
    // What an import of 1,000 records interrupted after its first transaction leaves.
    let record = r#"{"seq":0,"id":"r1","region":"2","request":{"n":1},"steps":[],"applied":0,"status":"created","created":1,"modified":1}"#;
    let marker =
        r#"{"host":"ops-1","pid":4242,"started":"2026-01-02T03:04:05.000Z","records":1000}"#;
    client
        .put(b"/t13/records/r1", record.as_bytes(), 0)
        .unwrap();
    client.put(b"/t13/importing", marker.as_bytes(), 0).unwrap();
    let instances = [
        Instance::start(&etcd, "/t13", &mep),
        Instance::start(&etcd, "/t13", &mep),
    ];
    let says_why = |body: &str| {
        body.contains("an import into etcd prefix /t13 did not finish")
            && body.contains("by pid 4242 on ops-1, of 1000 record(s)")
            && body.contains("etcdctl del --prefix /t13/records/ && etcdctl del /t13/importing")
    };
    let leader_refuses = eventually(ROLE_WITHIN, || {
        instances.iter().any(|i| {
            let health = get(&i.url, "/healthz");
            i.role() == Role::Leader && health.status == 503 && says_why(&health.body)
        })
    });
    let healths: Vec<Answer> = instances.iter().map(|i| get(&i.url, "/healthz")).collect();
    assert!(leader_refuses, "{healths:?}");
    for instance in &instances {
        let listing = get(&instance.url, "/MEC/v1/service/requests");
        assert_unavailable(&listing, "a listing of a partial import");
        assert!(says_why(&listing.body), "{listing:?}");
        let one = get(&instance.url, "/MEC/v1/service/requests/r1");
        assert_unavailable(&one, "a record of a partial import");
        let post = post_dns(&instance.url);
        assert_unavailable(&post, "a change on a partial import");
        assert!(says_why(&post.body), "{post:?}");
    }
    assert!(mep.calls().is_empty(), "{:?}", mep.calls());
    // The operator deletes the partial import, as the 503s say.
    client
        .delete(b"/t13/records/", Some(b"/t13/records0"))
        .unwrap();
    client.delete(b"/t13/importing", None).unwrap();
    let opened = eventually(ROLE_WITHIN, || {
        instances
            .iter()
            .any(|i| i.role() == Role::Leader && get(&i.url, "/healthz").status == 200)
    });
    assert!(
        opened,
        "{:?}",
        instances
            .iter()
            .map(|i| get(&i.url, "/healthz"))
            .collect::<Vec<_>>()
    );
    let leader = instances.iter().find(|i| i.role() == Role::Leader).unwrap();
    let listing = get(&leader.url, "/MEC/v1/service/requests");
    assert_eq!((listing.status, listing.body.as_str()), (200, "[]"));
    for instance in instances {
        instance.app.stop(Duration::from_secs(2));
    }
}
