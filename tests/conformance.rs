//! Conformance of what the `etsi-mec011` driver sends with ETSI's own description of MEC 011
//! v2.1.1 (`MecAppSupportApi.yaml`, read-only in `../shared/reference/etsi-mec011/` beside the
//! clone): Stoplight Prism serves it as a validating mock platform (`prism mock --errors`),
//! which answers a request that violates the spec with a 4xx and logs the violation. The
//! plugin activates and deactivates rules against it through its API, and every body the
//! driver can fall back to (when a platform refuses to let it read a rule) is sent too; the
//! test fails on any violation.
//!
//! Prism is found at `$MEC_PLUGIN_PRISM`, else `target/prism/node_modules/.bin/prism` (where
//! `.ci/run` installs it: `npm install --prefix target/prism @stoplight/prism-cli`), else on
//! the `PATH`. Without it, or without the yaml, the test is skipped (`support::skip`).

mod support;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mec_plugin::config::{DriverKind, MepConfig};
use mec_plugin::mep::agent::MepClient;
use mec_plugin::mep::etsi::{APP_INSTANCE_HEADER, EtsiMec011};
use mec_plugin::mep::{Driver, Step};
use mec_plugin::model::parse_creation;
use serde_json::{Value, json};
use support::{Plugin, server_section, temp_dir};

const SPEC: &str = "../shared/reference/etsi-mec011/MecAppSupportApi.yaml";

/// The Prism executable, if installed.
fn prism() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MEC_PLUGIN_PRISM") {
        return Some(PathBuf::from(path));
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/prism/node_modules/.bin/prism");
    if local.exists() {
        return Some(local);
    }
    let on_path = Command::new("prism")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    on_path.then(|| PathBuf::from("prism"))
}

/// Prism running on a copy of the spec; killed when dropped.
struct Mock {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Mock {
    /// Serves `spec` as a validating mock. Prism serves the `paths` as written, without the
    /// `servers` base path: the copy prefixes them with `/mec_app_support/v1`, which the
    /// driver appends to the region's `url` (the apiRoot). Its examples show rules `ACTIVE`;
    /// the copy shows them `INACTIVE`, so that activating one is a PUT (a rule already ACTIVE
    /// is only read).
    fn start(prism: &Path, spec: &str, dir: &Path) -> Mock {
        let copy = dir.join("MecAppSupportApi.yaml");
        let text: String = spec
            .lines()
            .map(|line| match line.strip_prefix("  /") {
                Some(path) => format!("  /mec_app_support/v1/{path}\n"),
                None => format!("{}\n", line.replace("state: ACTIVE", "state: INACTIVE")),
            })
            .collect();
        std::fs::write(&copy, text).unwrap();
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let log = dir.join("prism.log");
        let child = Command::new(prism)
            .args([
                "mock",
                "--errors",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .arg(&copy)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join("prism.err")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", prism.display()));
        let mock = Mock { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(90);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "Prism did not listen within 90 s: {}",
                mock.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        mock
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The violations Prism logged.
    fn violations(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("Violation") || l.contains("✖"))
            .map(str::to_string)
            .collect()
    }
}

/// Requests covering what the driver can send: every v2.1.1 action the northbound names map
/// to, tunnels, MAC addresses, QoS fields, both DNS address types.
fn requests() -> Vec<Value> {
    let filter = json!({"srcAddress": ["10.0.0.0/24"], "dstAddress": ["192.0.2.10"],
        "srcPort": ["1000"], "dstPort": ["80"], "Protocol": ["tcp"], "Token": ["t1"],
        "srcTunnelAddress": ["198.51.100.1"], "dstTunnelAddress": ["198.51.100.2"],
        "srcTunnelPort": ["2152"], "dstTunnelPort": ["2152"], "qci": 9, "dscp": 10, "tc": 1});
    let interface = json!({"interfaceType": "TUNNEL",
        "tunnelInfo": {"tunnelType": "GTP-U", "tunnelDstAddress": "198.51.100.3",
                       "tunnelSrcAddress": "198.51.100.4"},
        "srcMACAddress": "aa:bb:cc:dd:ee:ff", "dstMACAddress": "00:11:22:33:44:55",
        "dstIPAddress": "192.0.2.20"});
    let actions = [
        "DROP",
        "FORWARD",
        "DECAPSULATED",
        "PASSTHROUGH",
        "DUPLICATED_DECAPSULATED",
    ];
    actions
        .iter()
        .enumerate()
        .map(|(i, action)| {
            let mut rule = json!({"trafficRuleId": format!("tr-{i}"), "filterType": "FLOW",
                "priority": i + 1, "trafficFilter": [filter], "action": action});
            if *action != "DROP" {
                rule["dstInterface"] = json!([interface]);
            }
            json!({"RegionId": "4", "appInstanceId": format!("app-{i}"),
            "appTrafficRule": [rule],
            "appDNSRule": [
                {"dnsRuleId": format!("dns-{i}"), "domainName": "www.example.org",
                 "ipAddressType": "IP_V4", "ipAddress": "192.0.2.30", "ttl": 60},
                {"dnsRuleId": format!("dns6-{i}"), "domainName": "www.example.org",
                 "ipAddressType": "IP_V6", "ipAddress": "2001:db8::1"}
            ]})
        })
        .collect()
}

#[test]
fn what_the_etsi_driver_sends_conforms_to_mec011_v2_1_1() {
    let Some(prism) = prism() else {
        return support::skip(
            "what_the_etsi_driver_sends_conforms_to_mec011_v2_1_1",
            "Stoplight Prism is not installed (npm install --prefix target/prism @stoplight/prism-cli, or set MEC_PLUGIN_PRISM)",
        );
    };
    let spec_path = Path::new(env!("CARGO_MANIFEST_DIR")).join(SPEC);
    let Ok(spec) = std::fs::read_to_string(&spec_path) else {
        return support::skip(
            "what_the_etsi_driver_sends_conforms_to_mec011_v2_1_1",
            &format!("the ETSI yaml is missing at {}", spec_path.display()),
        );
    };
    let dir = temp_dir("prism");
    std::fs::create_dir_all(&dir).unwrap();
    let mock = Mock::start(&prism, &spec, &dir);

    // Through the plugin: activation (GET, then PUT of the rule read back with state ACTIVE)
    // and deactivation.
    let p = Plugin::start(&format!(
        "{}[[region]]\nid = \"4\"\nlatitude = 43.6\nlongitude = 7.06\nrange_km = 10.0\n[region.mep]\ndriver = \"etsi-mec011\"\nurl = \"{}\"\ntimeout_ms = 10000\n",
        server_section(""),
        mock.url()
    ));
    for request in requests() {
        let r = p.post(&request.to_string());
        assert_eq!(
            r.status,
            201,
            "{request}: {:?}\nviolations: {:#?}",
            r.json,
            mock.violations()
        );
        let id = r.json["RequestId"].as_str().unwrap();
        let d = p.delete(id);
        assert_eq!(d.status, 201, "{:?}", d.json);
    }

    // The bodies the driver falls back to when it cannot read a rule (a GET refused with
    // 403): the rule built from the request, ACTIVE and INACTIVE.
    let driver = EtsiMec011::new(&MepConfig::new(
        DriverKind::EtsiMec011,
        &mock.url(),
        Duration::from_secs(10),
    ));
    let client = MepClient::new(&MepConfig::new(
        DriverKind::EtsiMec011,
        &mock.url(),
        Duration::from_secs(10),
    ));
    let mut sent = 0;
    for request in requests() {
        let request = parse_creation(request.to_string().as_bytes()).unwrap();
        let steps: Vec<Step> = driver.plan("req", &request).unwrap();
        let app = request.app_instance_id.clone().unwrap();
        for step in &steps {
            let inactive = step
                .body()
                .replace(r#""state":"ACTIVE""#, r#""state":"INACTIVE""#);
            for body in [step.body(), inactive.as_str()] {
                let answer = client.send_with(
                    "PUT",
                    &client.url(step.target()),
                    Some(body),
                    &[(APP_INSTANCE_HEADER, app.as_str())],
                );
                assert!(
                    answer.is_ok(),
                    "{} {body}: {answer:?}\nviolations: {:#?}",
                    step.target(),
                    mock.violations()
                );
                sent += 1;
            }
        }
    }
    assert!(sent >= 30, "{sent}");

    let log = mock.log();
    assert!(
        log.matches("passed the validation rules").count() >= sent,
        "every request was validated: {log}"
    );
    assert_eq!(mock.violations(), Vec::<String>::new());
    drop(p);
    drop(mock);
    let _ = std::fs::remove_dir_all(dir);
}
