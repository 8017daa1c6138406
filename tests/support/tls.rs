//! HTTPS for the fake platforms: a throw-away PKI generated at test run time, and a
//! TLS-terminating front that serves a fake's plain HTTP port over HTTPS.
//!
//! [`TestPki::generate`] makes (with rcgen, nothing committed) a CA and a server certificate
//! for `127.0.0.1` and `localhost` signed by it, and writes them to a fresh temporary
//! directory: `ca.pem` (what a region's `ca_file` names), `server.pem`, `server.key`.
//!
//! [`TlsFront::start`] listens on a free port of 127.0.0.1 and, for each connection, completes
//! a TLS handshake with that server certificate, then relays the decrypted bytes to a plain
//! HTTP server (the fake) and back. The TLS server is the machine's Python 3 `ssl` module, run
//! as a child process: the tests cannot use rustls directly (it is in the tree only through
//! ureq, not a dependency of the package), and `tiny_http_fork`'s `ssl-rustls` feature cannot
//! start a server here (it enables rustls's default aws-lc-rs provider next to ureq's ring,
//! and rustls then has no process-wide provider to pick). CPython 3 is on every machine of this
//! project's kind. The child ends when the front is dropped, and on its own when the test
//! process dies (it watches its standard input).
//!
//! ```ignore
//! let pki = TestPki::generate("mep");
//! let front = TlsFront::start(&pki, plain_http_addr);
//! let url = format!("https://127.0.0.1:{}", front.port());
//! let mut mep = MepConfig::new(driver, &url, timeout);
//! mep.ca_pem = Some(pki.ca_pem.clone().into_bytes());
//! ```

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A CA and a server certificate for `127.0.0.1`/`localhost` signed by it, in PEM, also
/// written to files.
pub struct TestPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub dir: PathBuf,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TestPki {
    /// Generates a new CA and server certificate; `name` only names the directory and the CA.
    pub fn generate(name: &str) -> TestPki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("mec-plugin test CA {name}"));
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");

        let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("server certificate parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &ca).expect("server certificate");

        let dir = super::temp_dir(&format!("pki-{name}"));
        let pki = TestPki {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_file: dir.join("ca.pem"),
            cert_file: dir.join("server.pem"),
            key_file: dir.join("server.key"),
            dir,
        };
        std::fs::write(&pki.ca_file, &pki.ca_pem).unwrap();
        std::fs::write(&pki.cert_file, &pki.cert_pem).unwrap();
        std::fs::write(&pki.key_file, &pki.key_pem).unwrap();
        pki
    }
}

/// The TLS server: a thread per connection relaying between the TLS client and the upstream
/// plain server until either side closes.
const RELAY: &str = r#"
import os, select, socket, ssl, sys, threading
cert, key, upstream = sys.argv[1], sys.argv[2], int(sys.argv[3])
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.bind(("127.0.0.1", 0))
listener.listen(128)
print(listener.getsockname()[1], flush=True)

def watch_parent():
    sys.stdin.read()
    os._exit(0)

def serve(raw):
    try:
        raw.settimeout(10)
        tls = context.wrap_socket(raw, server_side=True)
        tls.settimeout(None)
    except (OSError, ssl.SSLError):
        raw.close()
        return
    try:
        up = socket.create_connection(("127.0.0.1", upstream))
    except OSError:
        tls.close()
        return
    try:
        while True:
            ready = [tls] if tls.pending() else select.select([tls, up], [], [])[0]
            for s in ready:
                data = s.recv(65536)
                if not data:
                    return
                (up if s is tls else tls).sendall(data)
    except (OSError, ssl.SSLError):
        pass
    finally:
        for s in (tls, up):
            try:
                s.close()
            except OSError:
                pass

threading.Thread(target=watch_parent, daemon=True).start()
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;

/// An HTTPS front for a plain HTTP server on 127.0.0.1. Stops when dropped.
pub struct TlsFront {
    child: Child,
    /// Held open: the child exits when it reads end-of-file.
    stdin: Option<ChildStdin>,
    port: u16,
}

impl TlsFront {
    /// Serves `upstream` over HTTPS with `pki`'s server certificate on a free port.
    pub fn start(pki: &TestPki, upstream: SocketAddr) -> TlsFront {
        let spawn = |python: &str| {
            Command::new(python)
                .arg("-c")
                .arg(RELAY)
                .arg(&pki.cert_file)
                .arg(&pki.key_file)
                .arg(upstream.port().to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
        };
        let mut child = spawn("python3")
            .or_else(|_| spawn("/usr/bin/python3"))
            .expect("the HTTPS front of the fake platforms needs python3 (with its ssl module)");
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("the TLS front says its port");
        let Ok(port) = line.trim().parse::<u16>() else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the TLS front (python3 ssl) did not start: it printed {line:?}");
        };
        TlsFront { child, stdin, port }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A rustls client configuration that trusts exactly `ca`.
pub fn rustls_client(
    ca: &rustls::pki_types::CertificateDer<'static>,
) -> std::sync::Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}
