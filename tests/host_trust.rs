//! Black-box, the real binary: an `https://` platform without `ca_file` is verified against the
//! host's trust store, which is `SSL_CERT_FILE` here (with `SSL_CERT_DIR` an empty directory,
//! so that the machine's own store plays no part), and the store is never read when no peer
//! is `https://` (the shipped configuration, an `http://` platform).

#[path = "support/child.rs"]
mod child;
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use child::Child;
use serde_json::Value;
use support::fake_llmec::FakeLlMec;
use support::tls::{TestPki, TlsFront};
use support::{eventually, llmec_region, temp_dir};

/// What every log line about reading the store says.
const STORE_READ: &str = "from the host's trust store";

/// A DNS rule on region "2".
const DNS: &str = r#"{"RegionId":"2","appDNSRule":[{"dnsRuleId":"1","domainName":"app.example.org","ipAddressType":"IP_V4","ipAddress":"10.0.0.1"}]}"#;

/// The plugin's answer to a creation: status, content type, JSON body.
fn create(addr: SocketAddr) -> (u16, String, Value) {
    let agent = support::agent(Duration::from_secs(20));
    let url = format!("http://{addr}/MEC/v1/service/requests");
    let request = ureq::http::Request::builder().method("POST").uri(&url);
    let mut response = support::send(&agent, request, Some(DNS), "application/json")
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let content_type = support::header_of(&response, "content-type").unwrap_or_default();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (
        response.status().as_u16(),
        content_type,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// The binary with region "2" on LL-MEC at `url` (no `ca_file`), its state and configuration in
/// `root`, and `SSL_CERT_FILE` = `cert_file` (with `SSL_CERT_DIR` an empty directory) if given.
fn start(root: &Path, url: &str, cert_file: Option<&Path>) -> Child {
    let port = child::free_port();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = '{}'\nfsync = false\n\n{}",
        root.join("state").display(),
        llmec_region("2", url, 3000)
    );
    let config: PathBuf = root.join("regions.toml");
    std::fs::write(&config, text).unwrap();
    let empty_dir = root.join("no-certificates");
    std::fs::create_dir_all(&empty_dir).unwrap();
    let env: Vec<(&str, &Path)> = match cert_file {
        Some(file) => vec![("SSL_CERT_FILE", file), ("SSL_CERT_DIR", &empty_dir)],
        None => Vec::new(),
    };
    Child::start_config_with_env(&config, port, temp_dir("host-trust-run"), &env)
}

/// Log lines of `child` containing `text`, once the start-up lines are in.
fn lines_with(child: &Child, text: &str) -> Vec<String> {
    eventually(Duration::from_secs(5), || {
        child.logs().iter().any(|l| l.contains("ready: API at"))
    });
    thread::sleep(Duration::from_millis(100));
    child
        .logs()
        .into_iter()
        .filter(|l| l.contains(text))
        .collect()
}

/// A fake LL-MEC behind an HTTPS front whose certificate `pki`'s CA signed.
fn https_platform(pki: &TestPki) -> (FakeLlMec, TlsFront, String) {
    let mep = FakeLlMec::start();
    let addr: SocketAddr = format!("127.0.0.1:{}", mep.port()).parse().unwrap();
    let front = TlsFront::start(pki, addr);
    let url = format!("https://127.0.0.1:{}", front.port());
    (mep, front, url)
}

#[test]
fn an_https_platform_without_ca_file_is_trusted_through_ssl_cert_file() {
    let pki = TestPki::generate("host-trust");
    let (mep, _front, url) = https_platform(&pki);
    let root = temp_dir("host-trust-ok");
    let plugin = start(&root, &url, Some(&pki.ca_file));

    let (status, _, json) = create(plugin.addr);
    assert_eq!(status, 201, "{json}");
    assert_eq!(mep.calls().len(), 1, "the rule reached the platform");

    let read = lines_with(&plugin, STORE_READ);
    assert_eq!(read.len(), 1, "read once: {read:?}");
    assert!(read[0].contains("read 1 certificate(s)"), "{}", read[0]);
    assert!(read[0].contains("SSL_CERT_FILE="), "{}", read[0]);
}

#[test]
fn an_https_platform_whose_ca_is_not_in_the_host_store_is_refused_before_any_call() {
    let pki = TestPki::generate("host-trust-platform");
    let other = TestPki::generate("host-trust-other");
    let (mep, _front, url) = https_platform(&pki);
    let root = temp_dir("host-trust-other");
    let plugin = start(&root, &url, Some(&other.ca_file));

    let (status, content_type, json) = create(plugin.addr);
    assert_eq!(status, 502, "{json}");
    assert_eq!(content_type, "application/problem+json");
    let detail = json["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("unreachable (nothing was sent)") && detail.contains("certificate"),
        "{json}"
    );
    assert!(mep.calls().is_empty(), "nothing reached the platform");
}

#[test]
fn an_empty_host_store_is_logged_as_an_error_saying_what_to_do() {
    let pki = TestPki::generate("host-trust-empty");
    let (_mep, _front, url) = https_platform(&pki);
    let root = temp_dir("host-trust-empty");
    let empty = root.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let plugin = start(&root, &url, Some(&empty));

    let read = lines_with(&plugin, STORE_READ);
    assert!(
        read.len() == 1 && read[0].contains("read 0 certificate(s)"),
        "{read:?}"
    );
    let errors = lines_with(&plugin, "holds no certificate");
    assert_eq!(errors.len(), 1, "{:?}", plugin.logs());
    assert!(errors[0].contains("ERROR"), "{}", errors[0]);
    for remedy in ["CA package", "SSL_CERT_FILE", "ca_file"] {
        assert!(errors[0].contains(remedy), "{}", errors[0]);
    }
    let (status, _, json) = create(plugin.addr);
    assert_eq!(status, 502, "{json}");
}

#[test]
fn without_an_https_peer_the_host_store_is_never_read() {
    // An http platform, used.
    let mep = FakeLlMec::start();
    let root = temp_dir("host-trust-http");
    let plugin = start(&root, &mep.url(), None);
    let (status, _, json) = create(plugin.addr);
    assert_eq!(status, 201, "{json}");
    assert_eq!(mep.calls().len(), 1);
    assert_eq!(lines_with(&plugin, "trust store"), Vec::<String>::new());

    // The shipped configuration.
    let shipped = Child::start_shipped("host-trust-shipped");
    assert_eq!(lines_with(&shipped, "trust store"), Vec::<String>::new());
}
