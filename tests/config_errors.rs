//! Every error `Config::parse` reports, byte for byte: one configuration per check (each key
//! of each table with a bad value, a missing key, a wrong type), in the layouts TOML allows
//! (header tables, inline tables, dotted keys, a second region, `[store]` first or last), so
//! that the line an error names does not move when the way it is found changes.

use mec_plugin::config::Config;

/// A region as the README writes it (`[[region]]` then `[region.mep]`), `id = "2"`.
const MINIMAL: &str = r#"
[[region]]
id = "2"
latitude = 43.6
longitude = 7.06
range_km = 10.0
[region.mep]
driver = "llmec"
url = "http://127.0.0.1:13000/"
"#;

/// The same region in other layouts: the mep as an inline table, as dotted keys, and the
/// whole region as an inline table in an array.
const INLINE_MEP: &str = "[[region]]\nid = \"i\"\nlatitude = 1.0\nlongitude = 2.0\nrange_km = 3.0\nmep = { driver = \"llmec\", url = \"http://m:1\" }\n";
const DOTTED_MEP: &str = "[[region]]\nid = \"d\"\nlatitude = 1.0\nlongitude = 2.0\nrange_km = 3.0\nmep.driver = \"llmec\"\nmep.url = \"http://m:1\"\n";
const INLINE_REGION: &str = "region = [\n  { id = \"r\", latitude = 1.0, longitude = 2.0, range_km = 3.0,\n    mep = { driver = \"llmec\", url = \"http://m:1\" } },\n]\n";

/// `[server]` holding `body`, then MINIMAL.
fn server(body: &str) -> String {
    format!("[server]\n{body}\n{MINIMAL}")
}

/// `top` (a root key) before MINIMAL.
fn before(top: &str) -> String {
    format!("{top}\n{MINIMAL}")
}

/// `bottom` (a table) after MINIMAL.
fn after(bottom: &str) -> String {
    format!("{MINIMAL}{bottom}\n")
}

/// MINIMAL with `from` replaced by `to`.
fn region(from: &str, to: &str) -> String {
    MINIMAL.replace(from, to)
}

/// MINIMAL with `line` added to its `[region.mep]`.
fn mep(line: &str) -> String {
    format!("{MINIMAL}{line}\n")
}

/// `[store]` holding `body`, before the region.
fn store_first(body: &str) -> String {
    format!("[store]\n{body}\n{MINIMAL}")
}

/// `[store]` holding `body` after a blank line, after the region.
fn store_last(body: &str) -> String {
    format!("{MINIMAL}\n[store]\n\n{body}\n")
}

/// The files the cases name, in `dir` (the configuration's directory).
fn write_files(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("cert.pem"), "-----BEGIN CERTIFICATE-----\nx\n").unwrap();
    std::fs::write(dir.join("key.pem"), "-----BEGIN RSA KEY-----\nx\n").unwrap();
    std::fs::write(dir.join("token-bad"), "a b\n").unwrap();
    std::fs::write(dir.join("token-ok"), "s3cret\n").unwrap();
    std::fs::write(dir.join("empty"), "").unwrap();
    std::fs::write(dir.join("token-long"), "t".repeat(16001)).unwrap();
}

/// Each configuration with the message of its error (without the file name).
fn cases() -> Vec<(String, &'static str)> {
    vec![
        (
            server("workers = 2\nworkers = 3"),
            "line 3: duplicate key `workers`",
        ),
        (
            format!("[server]\n[server]\n{MINIMAL}"),
            "line 2: duplicate key `server`",
        ),
        (
            region("longitude = 7.06", "longitude = 7.06\nlongitude = 8"),
            "line 6: duplicate key `longitude`",
        ),
        (
            server("listen = \"localhost\""),
            "line 2: [server] listen = 'localhost' is not an address:port such as 127.0.0.1:8082",
        ),
        (
            server("listen = \"1.2.3.4\""),
            "line 2: [server] listen = '1.2.3.4' is not an address:port such as 127.0.0.1:8082",
        ),
        (
            server("workers = 0"),
            "line 2: [server] workers = 0 is out of range 1..=1024",
        ),
        (
            server("workers = 1025"),
            "line 2: [server] workers = 1025 is out of range 1..=1024",
        ),
        (
            server("max_body_bytes = 1"),
            "line 2: [server] max_body_bytes = 1 is out of range 1024..=67108864",
        ),
        (
            server("read_timeout_ms = 1"),
            "line 2: [server] read_timeout_ms = 1 is out of range 100..=600000",
        ),
        (
            server("connection_threads = -1"),
            "line 2: [server] connection_threads = -1 is out of range 0..=9223372036854775807",
        ),
        (
            server("idle_timeout_ms = 1"),
            "line 2: [server] idle_timeout_ms = 1 is out of range 100..=3600000",
        ),
        (
            server("max_head_bytes = 1"),
            "line 2: [server] max_head_bytes = 1 is out of range 1024..=1048576",
        ),
        (
            server("max_headers = 1001"),
            "line 2: [server] max_headers = 1001 is out of range 8..=1000",
        ),
        (
            server("max_connections = 0"),
            "line 2: [server] max_connections = 0 is out of range 1..=65536",
        ),
        (
            server("max_requests = 0"),
            "line 2: [server] max_requests = 0 is out of range 1..=100000000",
        ),
        (
            server("retry_initial_ms = 1"),
            "line 2: [server] retry_initial_ms = 1 is out of range 10..=3600000",
        ),
        (
            server("retry_max_ms = 86400001"),
            "line 2: [server] retry_max_ms = 86400001 is out of range 10..=86400000",
        ),
        (
            server("retry_initial_ms = 5000\nretry_max_ms = 300"),
            "line 2: [server] retry_initial_ms = 5000 is more than retry_max_ms = 300: the first delay before a retry cannot be longer than the longest (raise retry_max_ms or lower retry_initial_ms)",
        ),
        (
            server("retry_max_ms = 300"),
            "line 2: [server] retry_max_ms = 300 is less than retry_initial_ms = 1000 (its default): the longest delay before a retry cannot be shorter than the first (set retry_initial_ms too)",
        ),
        (
            server("token_file = \"/nonexistent/token\""),
            "line 2: [server] token_file = '/nonexistent/token': cannot read /nonexistent/token: No such file or directory (os error 2)",
        ),
        (
            server("token_file = \"token-bad\""),
            "line 2: [server] token_file = 'token-bad' must hold one token of visible ASCII characters (no spaces, control or non-ASCII characters such as 'é'): an HTTP header cannot carry others",
        ),
        (
            server("tls_cert = \"cert.pem\""),
            "line 2: [server] tls_cert and tls_key must be given together",
        ),
        (
            server("tls_key = \"key.pem\""),
            "line 2: [server] tls_cert and tls_key must be given together",
        ),
        (
            server("tls_cert = \"/nonexistent/cert\"\ntls_key = \"key.pem\""),
            "line 2: [server] tls_cert = '/nonexistent/cert': cannot read /nonexistent/cert: No such file or directory (os error 2)",
        ),
        (
            server("tls_cert = \"key.pem\"\ntls_key = \"key.pem\""),
            "line 2: [server] tls_cert = 'key.pem' holds no PEM certificate",
        ),
        (
            server("tls_cert = \"cert.pem\"\ntls_key = \"/nonexistent/key\""),
            "line 3: [server] tls_key = '/nonexistent/key': cannot read /nonexistent/key: No such file or directory (os error 2)",
        ),
        (
            server("tls_cert = \"cert.pem\"\ntls_key = \"cert.pem\""),
            "line 3: [server] tls_key = 'cert.pem' holds no PEM private key",
        ),
        (
            server("workers = \"8\""),
            "line 2: [server] workers: invalid type: string \"8\", expected i64",
        ),
        (
            server("fsync = 1"),
            "line 2: [server] fsync: invalid type: integer `1`, expected a boolean",
        ),
        (
            server("api_style = \"snake\""),
            "line 2: [server] api_style: unknown variant `snake`, expected `spec` or `camel`",
        ),
        (
            server("state_dir = 3"),
            "line 2: [server] state_dir: invalid type: integer `3`, expected a string",
        ),
        (
            server("zz = 1"),
            "line 2: [server] zz: unknown field `zz`, expected one of `listen`, `state_dir`, `workers`, `api_style`, `max_body_bytes`, `max_body_memory_bytes`, `read_timeout_ms`, `connection_threads`, `idle_timeout_ms`, `max_head_bytes`, `max_headers`, `max_connections`, `log_requests_per_s`, `fsync`, `retry_initial_ms`, `retry_max_ms`, `token_file`, `tls_cert`, `tls_key`, `max_requests`, `failed_retention_s`",
        ),
        (
            server("\n\nworkers = 0"),
            "line 4: [server] workers = 0 is out of range 1..=1024",
        ),
        (
            server("workers = 4\nmax_headers = 2"),
            "line 3: [server] max_headers = 2 is out of range 8..=1000",
        ),
        (
            before("server = { workers = 0 }"),
            "line 1: [server] workers = 0 is out of range 1..=1024",
        ),
        (
            before("server.workers = 0"),
            "line 1: [server] workers = 0 is out of range 1..=1024",
        ),
        (
            before("server = 1"),
            "line 1: server: invalid type: integer `1`, expected struct RawServer",
        ),
        (
            after("[server]\ntls_key = \"key.pem\""),
            "line 11: [server] tls_cert and tls_key must be given together",
        ),
        (
            region("id = \"2\"", "id = \"\""),
            "line 3: region #1: id must not be empty",
        ),
        (
            region("id = \"2\"", "id = \" \""),
            "line 3: region ' ': id must not be empty",
        ),
        (
            region("id = \"2\"", "id = \"a/b\""),
            "line 3: region 'a/b': id must be 1-63 characters of letters, digits, '-', '_' or '.'",
        ),
        (
            region(
                "id = \"2\"",
                "id = \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"",
            ),
            "line 3: region 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa': id must be 1-63 characters of letters, digits, '-', '_' or '.'",
        ),
        (
            region("id = \"2\"", "id = 2"),
            "line 3: [[region]] number 1: id: invalid type: integer `2`, expected a string",
        ),
        (
            region("id = \"2\"\n", ""),
            "line 2: [[region]] number 1: missing field `id`",
        ),
        (
            region("latitude = 43.6", "latitude = 91.0"),
            "line 4: region '2': latitude = 91 is out of range -90..90",
        ),
        (
            region("latitude = 43.6", "latitude = 91"),
            "line 4: region '2': latitude = 91 is out of range -90..90",
        ),
        (
            region("latitude = 43.6", "latitude = nan"),
            "line 4: region '2': latitude = NaN is out of range -90..90",
        ),
        (
            region("latitude = 43.6", "latitude = -inf"),
            "line 4: region '2': latitude = -inf is out of range -90..90",
        ),
        (
            region("latitude = 43.6", "latitude = \"north\""),
            "line 4: region '2': latitude: invalid type: string \"north\", expected f64",
        ),
        (
            region("longitude = 7.06", "longitude = -180.5"),
            "line 5: region '2': longitude = -180.5 is out of range -180..180",
        ),
        (
            region("longitude = 7.06", "longitude = 7.06\naltitude = nan"),
            "line 6: region '2': altitude must be a finite number",
        ),
        (
            region("longitude = 7.06", "longitude = 7.06\naltitude = inf"),
            "line 6: region '2': altitude must be a finite number",
        ),
        (
            region("longitude = 7.06", "longitude = 7.06\ndescription = 1"),
            "line 6: region '2': description: invalid type: integer `1`, expected a string",
        ),
        (
            region("range_km = 10.0", "range_km = 0.0"),
            "line 6: region '2': range_km = 0 must be a finite number greater than 0",
        ),
        (
            region("range_km = 10.0", "range_km = -1"),
            "line 6: region '2': range_km = -1 must be a finite number greater than 0",
        ),
        (
            region("range_km = 10.0", "range_km = nan"),
            "line 6: region '2': range_km = NaN must be a finite number greater than 0",
        ),
        (
            region("range_km = 10.0", "range_km = inf"),
            "line 6: region '2': range_km = inf must be a finite number greater than 0",
        ),
        (
            region("range_km = 10.0\n", ""),
            "line 2: region '2': missing field `range_km`",
        ),
        (
            region("range_km = 10.0", "range_km = 10.0\nradius = 3"),
            "line 7: region '2': radius: unknown field `radius`, expected one of `id`, `description`, `latitude`, `longitude`, `altitude`, `range_km`, `mep`",
        ),
        (
            region("\"llmec\"", "\"openness\""),
            "line 8: region '2': mep.driver: unknown variant `openness`, expected one of `llmec`, `simulated`, `edgegallery`, `etsi-mec011`",
        ),
        (
            region("driver = \"llmec\"\n", ""),
            "line 7: region '2': mep: missing field `driver`",
        ),
        (
            region("url = \"http://127.0.0.1:13000/\"\n", ""),
            "line 7: region '2': mep.url is required for this driver",
        ),
        (
            region("http://127.0.0.1:13000/", "not a url"),
            "line 9: region '2': mep.url = 'not a url' is not a URL (invalid uri character)",
        ),
        (
            region("http://127.0.0.1:13000/", "ftp://127.0.0.1/"),
            "line 9: region '2': mep.url = 'ftp://127.0.0.1/' must start with http:// or https://",
        ),
        (
            region(
                "http://127.0.0.1:13000/",
                "http://admin:s3cret@127.0.0.1:99999",
            ),
            "line 9: region '2': mep.url = 'http://***@127.0.0.1:99999' has port '99999': a port is a number 1..65535",
        ),
        (
            region("http://127.0.0.1:13000/", "http://127.0.0.1:13001/?x=1"),
            "line 9: region '2': mep.url = 'http://127.0.0.1:13001/?x=1' must not have a query string",
        ),
        (
            region("url = \"http://127.0.0.1:13000/\"", "url = 1"),
            "line 9: region '2': mep.url: invalid type: integer `1`, expected a string",
        ),
        (
            region(
                "[region.mep]\ndriver = \"llmec\"\nurl = \"http://127.0.0.1:13000/\"\n",
                "",
            ),
            "line 2: region '2': missing field `mep`",
        ),
        (
            mep("timeout_ms = 0"),
            "line 10: region '2': mep.timeout_ms = 0 is out of range 1..=600000",
        ),
        (
            mep("timeout_ms = 600001"),
            "line 10: region '2': mep.timeout_ms = 600001 is out of range 1..=600000",
        ),
        (
            mep("ca_file = \"/nonexistent/ca\""),
            "line 10: region '2': mep.ca_file = '/nonexistent/ca': cannot read /nonexistent/ca: No such file or directory (os error 2)",
        ),
        (
            mep("ca_file = \"key.pem\""),
            "line 10: region '2': mep.ca_file = 'key.pem' holds no PEM certificate",
        ),
        (
            mep("token_file = \"/nonexistent/token\""),
            "line 10: region '2': mep.token_file = '/nonexistent/token': cannot read /nonexistent/token: No such file or directory (os error 2)",
        ),
        (
            mep("token_file = \"token-bad\""),
            "line 10: region '2': mep.token_file = 'token-bad' must hold one token of visible ASCII characters (no spaces, control or non-ASCII characters such as 'é'): an HTTP header cannot carry others",
        ),
        (
            mep("token_file = \"token-long\""),
            "line 10: region '2': mep.token_file = 'token-long' holds a token of 16001 bytes: at most 16000, so that the header line that carries it fits the platform connection's 16 KiB",
        ),
        (server("token_file = \"token-long\""), "accepted"),
        (
            mep("token_file = \"empty\""),
            "line 10: region '2': mep.token_file = 'empty' must hold one token of visible ASCII characters (no spaces, control or non-ASCII characters such as 'é'): an HTTP header cannot carry others",
        ),
        (
            mep("app_name = \"\""),
            "line 10: region '2': mep.app_name must be 1-63 characters",
        ),
        (
            mep("app_name = \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\""),
            "line 10: region '2': mep.app_name must be 1-63 characters",
        ),
        (
            mep("poll_interval_ms = 9"),
            "line 10: region '2': mep.poll_interval_ms = 9 is out of range 10..=60000",
        ),
        (
            mep("poll_attempts = 0"),
            "line 10: region '2': mep.poll_attempts = 0 is out of range 1..=10000",
        ),
        (
            mep("poll_attempts = 10001"),
            "line 10: region '2': mep.poll_attempts = 10001 is out of range 1..=10000",
        ),
        (
            mep("max_calls = 0"),
            "line 10: region '2': mep.max_calls = 0 is out of range 1..=100000",
        ),
        (
            mep("settle_ms = -1"),
            "line 10: region '2': mep.settle_ms = -1 is out of range 0..=3600000",
        ),
        (
            mep("aliases = [\"x\"]"),
            "line 10: region '2': mep.aliases = 'x' must start with http:// or https://",
        ),
        (
            mep("aliases = [\"http://a:1\", \"http://b:0\"]"),
            "line 10: region '2': mep.aliases = 'http://b:0' has port '0': a port is a number 1..65535",
        ),
        (
            mep("aliases = [\n  \"http://a:1\",\n  \"http://b:0\",\n]"),
            "line 12: region '2': mep.aliases = 'http://b:0' has port '0': a port is a number 1..65535",
        ),
        (
            mep("aliases = \"http://a:1\""),
            "line 10: region '2': mep.aliases: invalid type: string \"http://a:1\", expected a sequence",
        ),
        (
            mep("aliases = [1]"),
            "line 10: region '2': mep.aliases[0]: invalid type: integer `1`, expected a string",
        ),
        (
            mep("zz = 1"),
            "line 10: region '2': mep.zz: unknown field `zz`, expected one of `driver`, `url`, `timeout_ms`, `ca_file`, `token_file`, `app_name`, `poll_interval_ms`, `poll_attempts`, `max_calls`, `settle_ms`, `aliases`",
        ),
        (
            format!(
                "{MINIMAL}{}",
                "\n[[region]]\nid = \"2\"\nlatitude = 43.6\nlongitude = 7.06\nrange_km = 10.0\n[region.mep]\ndriver = \"llmec\"\nurl = \"http://127.0.0.1:13000/\"\n"
            ),
            "line 12: region '2': id is used by another region (ids must be unique)",
        ),
        (
            format!(
                "{MINIMAL}{}",
                "\n[[region]]\nid = \"3\"\nlatitude = 99.0\nlongitude = 7.06\nrange_km = 10.0\n[region.mep]\ndriver = \"llmec\"\nurl = \"http://127.0.0.1:13000/\"\n"
            ),
            "line 13: region '3': latitude = 99 is out of range -90..90",
        ),
        (
            format!(
                "{MINIMAL}{}",
                "\n[[region]]\nid = \"3\"\nlatitude = 43.6\nlongitude = 7.06\nrange_km = 10.0\n[region.mep]\ndriver = \"llmec\"\nurl = \"http://127.0.0.1:13000\"\n"
            ),
            "line 18: region '3': mep.url = 'http://127.0.0.1:13000' is the platform of region '2' too (its url or an alias): a platform serves one region, since the rules requests share on it are tracked per region",
        ),
        (
            format!("{INLINE_MEP}{DOTTED_MEP}"),
            "line 13: region 'd': mep.url = 'http://m:1' is the platform of region 'i' too (its url or an alias): a platform serves one region, since the rules requests share on it are tracked per region",
        ),
        (
            format!(
                "{}{DOTTED_MEP}",
                INLINE_MEP.replace(
                    "url = \"http://m:1\"",
                    "url = \"http://n:1\", aliases = [\"http://u:secret@M:1/\"]"
                )
            ),
            "line 13: region 'd': mep.url = 'http://m:1' is the platform of region 'i' too (its url or an alias): a platform serves one region, since the rules requests share on it are tracked per region",
        ),
        (
            format!(
                "{INLINE_MEP}{}",
                DOTTED_MEP.replace(
                    "mep.url = \"http://m:1\"",
                    "mep.url = \"http://n:1\"\nmep.aliases = [\"http://a:1\", \"HTTP://m:1\"]"
                )
            ),
            "line 14: region 'd': mep.aliases = 'HTTP://m:1' is the platform of region 'i' too (its url or an alias): a platform serves one region, since the rules requests share on it are tracked per region",
        ),
        (
            format!(
                "{MINIMAL}{}",
                "\n[[region]]\nid = \"\"\nlatitude = 43.6\nlongitude = 7.06\nrange_km = 10.0\n[region.mep]\ndriver = \"llmec\"\nurl = \"http://127.0.0.1:0\"\n"
            ),
            "line 12: region #2: id must not be empty",
        ),
        (
            format!(
                "{MINIMAL}{}",
                "\n[[region]]\nid = \"3\"\nlatitude = 43.6\nlongitude = 7.06\nrange_km = 10.0\n[region.mep]\ndriver = \"llmec\"\nurl = \"http://127.0.0.1:13000/\"\ntimeout_ms = 0\n"
            ),
            "line 19: region '3': mep.timeout_ms = 0 is out of range 1..=600000",
        ),
        (
            INLINE_MEP.replace("1.0", "91.0"),
            "line 3: region 'i': latitude = 91 is out of range -90..90",
        ),
        (
            INLINE_MEP.replace("range_km = 3.0", "range_km = 3.0\naltitude = nan"),
            "line 6: region 'i': altitude must be a finite number",
        ),
        (
            INLINE_MEP.replace(", url = \"http://m:1\"", ""),
            "line 6: region 'i': mep.url is required for this driver",
        ),
        (
            INLINE_MEP.replace("http://m:1", "http://m:0"),
            "line 6: region 'i': mep.url = 'http://m:0' has port '0': a port is a number 1..65535",
        ),
        (
            INLINE_MEP.replace("driver = \"llmec\"", "driver = \"llmec\", timeout_ms = 0"),
            "line 6: region 'i': mep.timeout_ms = 0 is out of range 1..=600000",
        ),
        (
            DOTTED_MEP.replace("1.0", "91.0"),
            "line 3: region 'd': latitude = 91 is out of range -90..90",
        ),
        (
            DOTTED_MEP.replace("range_km = 3.0", "range_km = 3.0\naltitude = nan"),
            "line 6: region 'd': altitude must be a finite number",
        ),
        (
            DOTTED_MEP.replace("mep.url = \"http://m:1\"\n", ""),
            "line 6: region 'd': mep.url is required for this driver",
        ),
        (
            DOTTED_MEP.replace("http://m:1", "http://m:0"),
            "line 7: region 'd': mep.url = 'http://m:0' has port '0': a port is a number 1..65535",
        ),
        (
            DOTTED_MEP.replace(
                "mep.driver = \"llmec\"",
                "mep.driver = \"llmec\"\nmep.timeout_ms = 0",
            ),
            "line 7: region 'd': mep.timeout_ms = 0 is out of range 1..=600000",
        ),
        (
            INLINE_REGION.replace("1.0", "91.0"),
            "line 2: region 'r': latitude = 91 is out of range -90..90",
        ),
        (
            INLINE_REGION.replace("3.0", "3.0, altitude = nan"),
            "line 2: region 'r': altitude must be a finite number",
        ),
        (
            INLINE_REGION.replace(", url = \"http://m:1\"", ""),
            "line 3: region 'r': mep.url is required for this driver",
        ),
        (
            INLINE_REGION.replace("http://m:1", "http://m:0"),
            "line 3: region 'r': mep.url = 'http://m:0' has port '0': a port is a number 1..65535",
        ),
        (
            INLINE_REGION.replace("driver = \"llmec\"", "driver = \"llmec\", timeout_ms = 0"),
            "line 3: region 'r': mep.timeout_ms = 0 is out of range 1..=600000",
        ),
        (
            "region = 1\n".to_string(),
            "line 1: region: invalid type: integer `1`, expected a sequence",
        ),
        (
            "[region]\nid = \"x\"\n".to_string(),
            "line 1: region: invalid type: map, expected a sequence: write each region as [[region]] (an array of tables)",
        ),
        (
            "region = { id = \"x\" }\n".to_string(),
            "line 1: region: invalid type: map, expected a sequence: write each region as [[region]] (an array of tables)",
        ),
        (
            format!("{MINIMAL}[region]\nid = \"x\"\n"),
            "line 10: duplicate key `region`",
        ),
        (
            "[server]\n".to_string(),
            "no [[region]] is configured; at least one is needed",
        ),
        (
            "".to_string(),
            "no [[region]] is configured; at least one is needed",
        ),
        (
            "[[region]\n".to_string(),
            "line 1: unclosed array table, expected `]`",
        ),
        (
            region(
                "[region.mep]\ndriver = \"llmec\"\nurl = \"http://127.0.0.1:13000/\"\n",
                "mep = 1\n",
            ),
            "line 7: region '2': mep: invalid type: integer `1`, expected struct RawMep",
        ),
        (
            store_first("kind = \"raft\""),
            "line 2: [store] kind = 'raft' must be \"journal\" or \"etcd\"",
        ),
        (
            store_last("kind = \"raft\""),
            "line 13: [store] kind = 'raft' must be \"journal\" or \"etcd\"",
        ),
        (
            store_first("kind = 1"),
            "line 2: [store] kind: invalid type: integer `1`, expected a string",
        ),
        (
            store_last("kind = 1"),
            "line 13: [store] kind: invalid type: integer `1`, expected a string",
        ),
        (
            store_first("kind = \"etcd\"\nadvertise_url = \"http://h:1\""),
            "line 1: [store] endpoints is required with kind = \"etcd\"",
        ),
        (
            store_last("kind = \"etcd\"\nadvertise_url = \"http://h:1\""),
            "line 11: [store] endpoints is required with kind = \"etcd\"",
        ),
        (
            store_first("kind = \"etcd\"\nendpoints = [\"http://e:2379\"]"),
            "line 1: [store] advertise_url is required with kind = \"etcd\"",
        ),
        (
            store_last("kind = \"etcd\"\nendpoints = [\"http://e:2379\"]"),
            "line 11: [store] advertise_url is required with kind = \"etcd\"",
        ),
        (
            store_first("endpoints = []"),
            "line 2: [store] endpoints must list at least one URL",
        ),
        (
            store_last("endpoints = []"),
            "line 13: [store] endpoints must list at least one URL",
        ),
        (
            store_first("endpoints = [\n]"),
            "line 2: [store] endpoints must list at least one URL",
        ),
        (
            store_last("endpoints = [\n]"),
            "line 13: [store] endpoints must list at least one URL",
        ),
        (
            store_first("endpoints = [\"e:2379\"]"),
            "line 2: [store] endpoints 'e:2379' must start with http:// or https://",
        ),
        (
            store_last("endpoints = [\"e:2379\"]"),
            "line 13: [store] endpoints 'e:2379' must start with http:// or https://",
        ),
        (
            store_first("endpoints = [\"http://e:1\", \"ftp://e\"]"),
            "line 2: [store] endpoints 'ftp://e' must start with http:// or https://",
        ),
        (
            store_last("endpoints = [\"http://e:1\", \"ftp://e\"]"),
            "line 13: [store] endpoints 'ftp://e' must start with http:// or https://",
        ),
        (
            store_first("endpoints = [\n  \"http://e:1\",\n  \"ftp://e\",\n]"),
            "line 4: [store] endpoints 'ftp://e' must start with http:// or https://",
        ),
        (
            store_last("endpoints = [\n  \"http://e:1\",\n  \"ftp://e\",\n]"),
            "line 15: [store] endpoints 'ftp://e' must start with http:// or https://",
        ),
        (
            store_first("endpoints = \"http://e:1\""),
            "line 2: [store] endpoints: invalid type: string \"http://e:1\", expected a sequence",
        ),
        (
            store_last("endpoints = \"http://e:1\""),
            "line 13: [store] endpoints: invalid type: string \"http://e:1\", expected a sequence",
        ),
        (
            store_first("endpoints = [1]"),
            "line 2: [store] endpoints[0]: invalid type: integer `1`, expected a string",
        ),
        (
            store_last("endpoints = [1]"),
            "line 13: [store] endpoints[0]: invalid type: integer `1`, expected a string",
        ),
        (
            store_first("advertise_url = \"h:1\""),
            "line 2: [store] advertise_url = 'h:1' must start with http:// or https://",
        ),
        (
            store_last("advertise_url = \"h:1\""),
            "line 13: [store] advertise_url = 'h:1' must start with http:// or https://",
        ),
        (
            store_first("advertise_url = \"http://h:1/?q\""),
            "line 2: [store] advertise_url = 'http://h:1/?q' must not have a query string",
        ),
        (
            store_last("advertise_url = \"http://h:1/?q\""),
            "line 13: [store] advertise_url = 'http://h:1/?q' must not have a query string",
        ),
        (
            store_first("advertise_url = \"http://h:1/MEC/v1\""),
            "line 2: [store] advertise_url = 'http://h:1/MEC/v1' has path '/MEC/v1': give scheme://host:port only (requests are forwarded with their own path, /MEC/v1/...)",
        ),
        (
            store_last("advertise_url = \"http://h:1/MEC/v1\""),
            "line 13: [store] advertise_url = 'http://h:1/MEC/v1' has path '/MEC/v1': give scheme://host:port only (requests are forwarded with their own path, /MEC/v1/...)",
        ),
        (
            store_first("lease_ttl_s = 0"),
            "line 2: [store] lease_ttl_s = 0 is out of range 1..=60",
        ),
        (
            store_last("lease_ttl_s = 0"),
            "line 13: [store] lease_ttl_s = 0 is out of range 1..=60",
        ),
        (
            store_first("lease_ttl_s = 61"),
            "line 2: [store] lease_ttl_s = 61 is out of range 1..=60",
        ),
        (
            store_last("lease_ttl_s = 61"),
            "line 13: [store] lease_ttl_s = 61 is out of range 1..=60",
        ),
        (
            store_first("prefix = \"/mec-plugin/records\""),
            "line 2: [store] prefix = '/mec-plugin/records' must not have a segment 'records': the records of a group of instances are under <prefix>/records/ and <prefix>/progress/, so such a prefix could be inside another group's records",
        ),
        (
            store_first("prefix = \"/mec-plugin/progress\""),
            "line 2: [store] prefix = '/mec-plugin/progress' must not have a segment 'progress': the records of a group of instances are under <prefix>/records/ and <prefix>/progress/, so such a prefix could be inside another group's records",
        ),
        (
            store_last("prefix = \"/a/records/b\""),
            "line 13: [store] prefix = '/a/records/b' must not have a segment 'records': the records of a group of instances are under <prefix>/records/ and <prefix>/progress/, so such a prefix could be inside another group's records",
        ),
        (
            store_first("endpoints = [\"http://e:2379\", \"http://e:2380/v3\"]"),
            "line 2: [store] endpoints 'http://e:2380/v3' has path '/v3': leave out etcd's '/v3' (the client adds /v3/... itself); a proxy's own path may stay",
        ),
        (
            store_first("prefix = \"mec\""),
            "line 2: [store] prefix = 'mec' must start with '/', have no empty segment nor trailing '/', and be 2-256 visible ASCII characters",
        ),
        (
            store_last("prefix = \"mec\""),
            "line 13: [store] prefix = 'mec' must start with '/', have no empty segment nor trailing '/', and be 2-256 visible ASCII characters",
        ),
        (
            store_first("prefix = \"/\""),
            "line 2: [store] prefix = '/' must start with '/', have no empty segment nor trailing '/', and be 2-256 visible ASCII characters",
        ),
        (
            store_last("prefix = \"/\""),
            "line 13: [store] prefix = '/' must start with '/', have no empty segment nor trailing '/', and be 2-256 visible ASCII characters",
        ),
        (
            store_first("prefix = \"/a/\""),
            "line 2: [store] prefix = '/a/' must start with '/', have no empty segment nor trailing '/', and be 2-256 visible ASCII characters",
        ),
        (
            store_last("prefix = \"/a/\""),
            "line 13: [store] prefix = '/a/' must start with '/', have no empty segment nor trailing '/', and be 2-256 visible ASCII characters",
        ),
        (
            store_first("prefix = \"/a//b\""),
            "line 2: [store] prefix = '/a//b' must start with '/', have no empty segment nor trailing '/', and be 2-256 visible ASCII characters",
        ),
        (
            store_last("prefix = \"/a//b\""),
            "line 13: [store] prefix = '/a//b' must start with '/', have no empty segment nor trailing '/', and be 2-256 visible ASCII characters",
        ),
        (
            store_first("prefix = \"/a b\""),
            "line 2: [store] prefix = '/a b' must start with '/', have no empty segment nor trailing '/', and be 2-256 visible ASCII characters",
        ),
        (
            store_last("prefix = \"/a b\""),
            "line 13: [store] prefix = '/a b' must start with '/', have no empty segment nor trailing '/', and be 2-256 visible ASCII characters",
        ),
        (
            store_first("user = \"u\""),
            "line 2: [store] user and password_file must be given together",
        ),
        (
            store_last("user = \"u\""),
            "line 13: [store] user and password_file must be given together",
        ),
        (
            store_first("password_file = \"token-ok\""),
            "line 2: [store] user and password_file must be given together",
        ),
        (
            store_last("password_file = \"token-ok\""),
            "line 13: [store] user and password_file must be given together",
        ),
        (
            store_first("user = \"\"\npassword_file = \"token-ok\""),
            "line 2: [store] user must not be empty",
        ),
        (
            store_last("user = \"\"\npassword_file = \"token-ok\""),
            "line 13: [store] user must not be empty",
        ),
        (
            store_first("user = \"u\"\npassword_file = \"/nonexistent/pw\""),
            "line 3: [store] password_file = '/nonexistent/pw': cannot read /nonexistent/pw: No such file or directory (os error 2)",
        ),
        (
            store_last("user = \"u\"\npassword_file = \"/nonexistent/pw\""),
            "line 14: [store] password_file = '/nonexistent/pw': cannot read /nonexistent/pw: No such file or directory (os error 2)",
        ),
        (
            store_first("user = \"u\"\npassword_file = \"token-bad\""),
            "line 3: [store] password_file = 'token-bad' must hold one token of visible ASCII characters (no spaces, control or non-ASCII characters such as 'é'): an HTTP header cannot carry others",
        ),
        (
            store_last("user = \"u\"\npassword_file = \"token-bad\""),
            "line 14: [store] password_file = 'token-bad' must hold one token of visible ASCII characters (no spaces, control or non-ASCII characters such as 'é'): an HTTP header cannot carry others",
        ),
        (
            store_first("ca_file = \"/nonexistent/ca\""),
            "line 2: [store] ca_file = '/nonexistent/ca': cannot read /nonexistent/ca: No such file or directory (os error 2)",
        ),
        (
            store_last("ca_file = \"/nonexistent/ca\""),
            "line 13: [store] ca_file = '/nonexistent/ca': cannot read /nonexistent/ca: No such file or directory (os error 2)",
        ),
        (
            store_first("ca_file = \"key.pem\""),
            "line 2: [store] ca_file = 'key.pem' holds no PEM certificate",
        ),
        (
            store_last("ca_file = \"key.pem\""),
            "line 13: [store] ca_file = 'key.pem' holds no PEM certificate",
        ),
        (
            store_first("zz = 1"),
            "line 2: [store] zz: unknown field `zz`, expected one of `kind`, `endpoints`, `prefix`, `lease_ttl_s`, `advertise_url`, `ca_file`, `user`, `password_file`",
        ),
        (
            store_last("zz = 1"),
            "line 13: [store] zz: unknown field `zz`, expected one of `kind`, `endpoints`, `prefix`, `lease_ttl_s`, `advertise_url`, `ca_file`, `user`, `password_file`",
        ),
        (
            before("store = { kind = \"etcd\" }"),
            "line 1: [store] endpoints is required with kind = \"etcd\"",
        ),
        (
            before("store = { kind = \"etcd\", endpoints = [\"http://e:1\"] }"),
            "line 1: [store] advertise_url is required with kind = \"etcd\"",
        ),
        (
            before("store.kind = \"etcd\""),
            "line 1: [store] endpoints is required with kind = \"etcd\"",
        ),
        (
            before("store = \"etcd\""),
            "line 1: store: invalid type: string \"etcd\", expected struct RawStore",
        ),
    ]
}

#[test]
fn every_configuration_error_names_the_same_line_and_says_the_same() {
    let dir = std::env::temp_dir().join(format!("mec-config-errors-{}", std::process::id()));
    write_files(&dir);
    let file = dir.join("regions.toml");
    let mut wrong = Vec::new();
    for (text, expected) in cases() {
        let got = match Config::parse(&text, file.to_str().unwrap()) {
            Ok(_) => "accepted".to_string(),
            Err(e) => e.message,
        };
        if got != expected {
            wrong.push(format!(
                "{text:?}\n  expected: {expected}\n  got:      {got}"
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
