//! Load benchmark: starts the plugin in-process on 127.0.0.1:0 with simulated platforms and
//! drives it over keep-alive loopback connections, printing requests per second and latency
//! percentiles. Bounded in time and count.
//!
//!     cargo run --release --example bench -- [--seconds 5] [--connections 1,8]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use mec_plugin::app::App;
use mec_plugin::config::Config;

/// Hard cap on requests per connection per scenario, whatever the duration.
const MAX_REQUESTS_PER_CONNECTION: usize = 2_000_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_string())
    };
    let seconds: f64 = arg("--seconds", "5")
        .parse()
        .expect("--seconds is a number");
    let connections: Vec<usize> = arg("--connections", "1,8")
        .split(',')
        .map(|c| c.parse().expect("--connections is a list of numbers"))
        .collect();
    let duration = Duration::from_secs_f64(seconds.clamp(0.1, 120.0));

    let config = Config::parse(CONFIG, "bench.toml").expect("bench config");
    let app = App::start(&config).expect("plugin starts");
    let addr = app.local_addr();
    let bodies: Arc<Vec<String>> = Arc::new(
        [
            "dns-only.json",
            "traffic-and-dns.json",
            "traffic-and-dns-camel.json",
        ]
        .iter()
        .map(|f| {
            std::fs::read_to_string(format!("{}/examples/{f}", env!("CARGO_MANIFEST_DIR")))
                .expect("example bodies")
        })
        .collect(),
    );
    println!(
        "mec-plugin bench: simulated platforms, {seconds} s per scenario, keep-alive connections on {addr}"
    );
    println!(
        "{:<34} {:>5} {:>10} {:>9} {:>9} {:>9}",
        "scenario", "conns", "req/s", "p50 ms", "p99 ms", "errors"
    );
    for &c in &connections {
        run("GET /MEC/v1/service/regions", addr, c, duration, None);
    }
    for &c in &connections {
        run(
            "POST /MEC/v1/service/requests",
            addr,
            c,
            duration,
            Some(bodies.clone()),
        );
    }
    app.server.shutdown(Duration::from_secs(2));
}

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
workers = 8
[[region]]
id = "2"
latitude = 43.6143899
longitude = 7.068931
range_km = 10.0
[region.mep]
driver = "simulated"
"#;

fn run(
    scenario: &str,
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    bodies: Option<Arc<Vec<String>>>,
) {
    let (method, path) = scenario.split_once(' ').unwrap();
    let started = Instant::now();
    let threads: Vec<_> = (0..connections)
        .map(|t| {
            let (method, path, bodies) = (method.to_string(), path.to_string(), bodies.clone());
            thread::spawn(move || {
                let stream = TcpStream::connect(addr).expect("connect");
                stream.set_nodelay(true).unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                let (mut latencies, mut errors) = (Vec::new(), 0usize);
                let deadline = Instant::now() + duration;
                let mut i = t;
                while Instant::now() < deadline && latencies.len() < MAX_REQUESTS_PER_CONNECTION {
                    let body = bodies.as_ref().map(|b| b[i % b.len()].as_str()).unwrap_or("");
                    i += 1;
                    let request = format!(
                        "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let sent = Instant::now();
                    writer.write_all(request.as_bytes()).expect("send");
                    let status = read_response(&mut reader).expect("response");
                    latencies.push(sent.elapsed());
                    if !(200..300).contains(&status) {
                        errors += 1;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in threads {
        let (l, e) = t.join().unwrap();
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{:<34} {:>5} {:>10.0} {:>9.3} {:>9.3} {:>9}",
        scenario,
        connections,
        latencies.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        errors
    );
}

/// Reads one HTTP/1.1 response with a Content-Length body; returns its status.
fn read_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<u16> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut length = 0usize;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(status)
}
