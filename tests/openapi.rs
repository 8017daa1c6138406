//! The OpenAPI document (`openapi/mec-plugin.json`) and the server agree: every documented
//! operation is served with one of its documented success codes, every route of the router is
//! documented with exactly the methods its `Allow` header lists, the token protects exactly the
//! operations that document 401, the document is served as shipped at
//! `GET /MEC/v1/swagger.json`, and every documented status code is one the API can produce.
//! (`.ci/schemathesis` checks the bodies and headers against the document's schemas.)

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use mec_plugin::error::ApiError;
use mec_plugin::mep::MepError;
use serde_json::Value;
use support::{Plugin, server_section, simulated_region, temp_dir};

const DOC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/mec-plugin.json");

/// The routes of the router (`src/api.rs`): template and a path that exists on a plugin whose
/// regions are "2" and "3" (`{RequestId}` is replaced by a created request).
const ROUTES: [(&str, &str); 7] = [
    ("/MEC/v1/service/regions", "/MEC/v1/service/regions"),
    (
        "/MEC/v1/service/regions/{RegionId}",
        "/MEC/v1/service/regions/3",
    ),
    ("/MEC/v1/service/requests", "/MEC/v1/service/requests"),
    (
        "/MEC/v1/service/requests/{RequestId}",
        "/MEC/v1/service/requests/{RequestId}",
    ),
    ("/MEC/v1/swagger.json", "/MEC/v1/swagger.json"),
    ("/healthz", "/healthz"),
    ("/metrics", "/metrics"),
];

const DNS: &str = r#"{"RegionId":"3","appDNSRule":[{"dnsRuleId":"1","domainName":"a.example.org","ipAddressType":"IP_V4","ipAddress":"10.0.0.1"}]}"#;

fn doc() -> Value {
    let text = std::fs::read_to_string(DOC_PATH).expect("openapi/mec-plugin.json is readable");
    serde_json::from_str(&text).expect("openapi/mec-plugin.json is JSON")
}

/// One documented operation.
#[derive(Debug, Clone)]
struct Operation {
    /// Full path template from the server's root, e.g. `/MEC/v1/service/regions/{RegionId}`.
    path: String,
    /// Upper-case method.
    method: String,
    /// Documented status codes and their response objects (`$ref`s resolved).
    responses: BTreeMap<u16, Value>,
    /// Media types it produces.
    produces: Vec<String>,
}

fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => doc
            .pointer(r.strip_prefix('#').expect("local $ref"))
            .unwrap_or_else(|| panic!("dangling $ref {r}")),
        None => v,
    }
}

/// Every operation of the document: `paths` under `basePath`, and the paths outside it
/// (`x-paths-outside-base-path`, from the server's root).
fn operations(doc: &Value) -> Vec<Operation> {
    let base = doc["basePath"].as_str().expect("basePath");
    let global_produces = &doc["produces"];
    let mut out = Vec::new();
    for (key, prefix) in [("paths", base), ("x-paths-outside-base-path", "")] {
        for (path, item) in doc[key].as_object().unwrap_or_else(|| panic!("{key}")) {
            for (method, op) in item.as_object().unwrap() {
                if method == "parameters" || method.starts_with("x-") {
                    continue;
                }
                let responses = op["responses"]
                    .as_object()
                    .unwrap_or_else(|| panic!("{method} {path}: responses"))
                    .iter()
                    .map(|(code, r)| {
                        let code: u16 = code
                            .parse()
                            .unwrap_or_else(|_| panic!("{method} {path}: status code {code}"));
                        (code, resolve(doc, r).clone())
                    })
                    .collect();
                let produces = op.get("produces").unwrap_or(global_produces);
                out.push(Operation {
                    path: format!("{prefix}{path}"),
                    method: method.to_ascii_uppercase(),
                    responses,
                    produces: produces
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|m| m.as_str().unwrap().to_string())
                        .collect(),
                });
            }
        }
    }
    out
}

/// What the plugin answered.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    allow: Option<String>,
    body: String,
}

impl Answer {
    fn problem_type(&self) -> String {
        serde_json::from_str::<Value>(&self.body)
            .ok()
            .and_then(|v| v["type"].as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    auth: Option<&str>,
) -> Answer {
    let agent = support::agent(Duration::from_secs(20));
    let url = format!("http://{addr}{path}");
    let mut request = ureq::http::Request::builder().method(method).uri(&url);
    if let Some(a) = auth {
        request = request.header("Authorization", a);
    }
    let result = support::send(&agent, request, body, "application/json");
    let mut response = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let header = |name: &str| support::header_of(&response, name);
    let (content_type, allow) = (header("content-type").unwrap_or_default(), header("allow"));
    Answer {
        status: response.status().as_u16(),
        content_type,
        allow,
        body: response.body_mut().read_to_string().unwrap_or_default(),
    }
}

fn two_regions(extra: &str) -> String {
    format!(
        "{}{}{}",
        server_section(extra),
        simulated_region("2"),
        simulated_region("3")
    )
}

fn create(addr: SocketAddr, auth: Option<&str>) -> String {
    let r = send(addr, "POST", "/MEC/v1/service/requests", Some(DNS), auth);
    assert_eq!(r.status, 201, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    v["RequestId"].as_str().unwrap().to_string()
}

/// A request to the operation that should succeed: path parameters filled, a valid body.
fn call(addr: SocketAddr, op: &Operation, auth: Option<&str>) -> Answer {
    let id = create(addr, auth);
    let path = op
        .path
        .replace("{RegionId}", "3")
        .replace("{RequestId}", &id);
    assert!(!path.contains('{'), "unknown path parameter in {}", op.path);
    let body = (op.method == "POST").then_some(DNS);
    send(addr, &op.method, &path, body, auth)
}

#[test]
fn every_documented_operation_is_served_with_a_documented_success() {
    let doc = doc();
    let p = Plugin::start(&two_regions(""));
    let addr = p.app.local_addr();
    let ops = operations(&doc);
    assert!(ops.len() >= 16, "{ops:?}");
    for op in &ops {
        let r = call(addr, op, None);
        let what = format!("{} {} -> {} {}", op.method, op.path, r.status, r.body);
        assert_ne!(r.status, 405, "{what}");
        assert!(
            !(r.status == 404 && r.problem_type().ends_with(":no-route")),
            "no route: {what}"
        );
        assert!((200..300).contains(&r.status), "{what}");
        assert!(
            op.responses.contains_key(&r.status),
            "undocumented status: {what}"
        );
        let essence = r.content_type.split(';').next().unwrap().trim();
        assert!(
            op.produces.iter().any(|m| m == essence),
            "{what}: content type {} not in {:?}",
            r.content_type,
            op.produces
        );
    }
}

#[test]
fn every_route_is_documented_with_exactly_the_methods_it_allows() {
    let doc = doc();
    let ops = operations(&doc);
    let mut documented: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for op in &ops {
        documented
            .entry(op.path.as_str())
            .or_default()
            .insert(op.method.clone());
    }
    let routes: BTreeSet<&str> = ROUTES.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        documented.keys().copied().collect::<BTreeSet<_>>(),
        routes,
        "the document's paths are the router's routes"
    );

    let p = Plugin::start(&two_regions(""));
    let addr = p.app.local_addr();
    let id = create(addr, None);
    for (template, sample) in ROUTES {
        let path = sample.replace("{RequestId}", &id);
        let r = send(addr, "PATCH", &path, Some("{}"), None);
        assert_eq!(r.status, 405, "PATCH {path}: {}", r.body);
        let allowed: BTreeSet<String> = r
            .allow
            .as_deref()
            .unwrap_or_else(|| panic!("405 without Allow on {path}"))
            .split(',')
            .map(|m| m.trim().to_string())
            .collect();
        assert_eq!(
            documented[template], allowed,
            "{template}: documented methods vs Allow"
        );
        assert!(allowed.contains("HEAD") == allowed.contains("GET"));
    }
}

#[test]
fn the_document_is_served_exactly_as_shipped() {
    let shipped = std::fs::read_to_string(DOC_PATH).unwrap();
    let p = Plugin::start(&two_regions(""));
    let r = send(
        p.app.local_addr(),
        "GET",
        "/MEC/v1/swagger.json",
        None,
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type, "application/json");
    assert!(r.body == shipped, "GET /MEC/v1/swagger.json is the file");
    let doc = doc();
    assert_eq!(doc["swagger"], "2.0");
    assert_eq!(doc["basePath"], "/MEC/v1");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn with_a_token_exactly_the_operations_documenting_401_need_it() {
    let dir = temp_dir("openapi-token");
    std::fs::write(dir.join("token"), "s3cret\n").unwrap();
    let config = two_regions(&format!("token_file = \"{}\"", dir.join("token").display()));
    let p = Plugin::start(&config);
    let addr = p.app.local_addr();
    let auth = Some("Bearer s3cret");
    for op in operations(&doc()) {
        let id = create(addr, auth);
        let path = op
            .path
            .replace("{RegionId}", "3")
            .replace("{RequestId}", &id);
        let body = (op.method == "POST").then_some(DNS);
        let r = send(addr, &op.method, &path, body, None);
        if op.responses.contains_key(&401) {
            assert_eq!(r.status, 401, "{} {path}: {}", op.method, r.body);
        } else {
            assert!(
                (200..300).contains(&r.status),
                "{} {path} is open: {} {}",
                op.method,
                r.status,
                r.body
            );
        }
        let r = call(addr, &op, auth);
        assert!(
            (200..300).contains(&r.status),
            "{} {} with the token: {} {}",
            op.method,
            op.path,
            r.status,
            r.body
        );
    }
}

/// Every error the API answers, at least one per variant of [`ApiError`].
fn every_error() -> Vec<ApiError> {
    let s = String::new;
    vec![
        ApiError::NoRoute { path: s() },
        ApiError::MethodNotAllowed {
            path: s(),
            allow: "GET",
        },
        ApiError::RequestNotFound { request_id: s() },
        ApiError::RegionNotFound { region_id: s() },
        ApiError::BadRequest { detail: s() },
        ApiError::UnsupportedMediaType { content_type: s() },
        ApiError::PayloadTooLarge { limit: 1 },
        ApiError::BodyTimeout,
        ApiError::UnknownRegion { region_id: s() },
        ApiError::Unsupported {
            region_id: s(),
            driver: "llmec",
            detail: s(),
        },
        ApiError::Conflict {
            request_id: s(),
            detail: s(),
        },
        ApiError::RegionGone {
            request_id: s(),
            region_id: s(),
            platform: None,
        },
        ApiError::PlatformChanged {
            request_id: s(),
            region_id: s(),
            recorded: s(),
            current: s(),
        },
        ApiError::Mep {
            region_id: s(),
            request_id: None,
            error: MepError::Refused {
                url: s(),
                status: 500,
                detail: s(),
            },
        },
        ApiError::Mep {
            region_id: s(),
            request_id: None,
            error: MepError::Timeout { url: s() },
        },
        ApiError::Unauthorized,
        ApiError::Internal { detail: s() },
        ApiError::StateUnavailable { detail: s() },
        ApiError::RecordTooLarge { detail: s() },
        ApiError::LeaderAnswer { detail: s() },
        ApiError::StateWrite {
            detail: s(),
            no_space: true,
            request_id: None,
        },
        ApiError::StateWrite {
            detail: s(),
            no_space: false,
            request_id: None,
        },
        ApiError::StateFull { detail: s() },
        ApiError::RequestLimit {
            stored: 2,
            limit: 1,
        },
        ApiError::HeadTimeout,
        ApiError::UriTooLong { limit: 1 },
        ApiError::HeadersTooLarge { detail: s() },
        ApiError::ExpectationFailed { expect: s() },
        ApiError::VersionNotSupported,
        ApiError::TooManyConnections { limit: 1 },
        ApiError::BodyMemoryFull { limit: 1 },
        ApiError::Unavailable {
            detail: s(),
            request_id: None,
        },
    ]
}

/// The variant's position; no wildcard, so a new variant must be added here (and to
/// [`every_error`]) before this test compiles.
fn variant(e: &ApiError) -> usize {
    match e {
        ApiError::NoRoute { .. } => 0,
        ApiError::MethodNotAllowed { .. } => 1,
        ApiError::RequestNotFound { .. } => 2,
        ApiError::RegionNotFound { .. } => 3,
        ApiError::BadRequest { .. } => 4,
        ApiError::UnsupportedMediaType { .. } => 5,
        ApiError::PayloadTooLarge { .. } => 6,
        ApiError::BodyTimeout => 7,
        ApiError::UnknownRegion { .. } => 8,
        ApiError::Unsupported { .. } => 9,
        ApiError::Conflict { .. } => 10,
        ApiError::Mep { .. } => 11,
        ApiError::Unauthorized => 12,
        ApiError::Internal { .. } => 13,
        ApiError::StateUnavailable { .. } => 14,
        ApiError::StateWrite { .. } => 15,
        ApiError::StateFull { .. } => 16,
        ApiError::RequestLimit { .. } => 17,
        ApiError::RegionGone { .. } => 18,
        ApiError::HeadTimeout => 19,
        ApiError::UriTooLong { .. } => 20,
        ApiError::HeadersTooLarge { .. } => 21,
        ApiError::ExpectationFailed { .. } => 22,
        ApiError::VersionNotSupported => 23,
        ApiError::TooManyConnections { .. } => 24,
        ApiError::Unavailable { .. } => 25,
        ApiError::RecordTooLarge { .. } => 26,
        ApiError::LeaderAnswer { .. } => 27,
        ApiError::PlatformChanged { .. } => 28,
        ApiError::BodyMemoryFull { .. } => 29,
    }
}

#[test]
fn every_documented_status_is_one_the_api_produces_and_every_error_is_documented() {
    let errors = every_error();
    let listed: BTreeSet<usize> = errors.iter().map(variant).collect();
    assert_eq!(
        listed,
        (0..30).collect(),
        "every ApiError variant is listed"
    );
    let error_codes: BTreeSet<u16> = errors.iter().map(ApiError::status).collect();
    let success_codes = BTreeSet::from([200, 201, 202]);

    let doc = doc();
    let mut documented = BTreeSet::new();
    for op in operations(&doc) {
        for (code, response) in &op.responses {
            let what = format!("{} {} {code}", op.method, op.path);
            documented.insert(*code);
            if *code < 400 {
                assert!(success_codes.contains(code), "{what}: not a success code");
                continue;
            }
            assert!(
                error_codes.contains(code),
                "{what}: no ApiError has this status"
            );
            if op.method != "HEAD" {
                assert_eq!(
                    response["schema"]["$ref"], "#/definitions/Problem",
                    "{what}: errors are problems"
                );
                assert!(
                    op.produces.iter().any(|m| m == "application/problem+json"),
                    "{what}: produces problem+json"
                );
            }
        }
    }
    // 405 answers only methods a path does not document; it is the reusable
    // `responses.MethodNotAllowed` of the document.
    assert!(doc["responses"]["MethodNotAllowed"].is_object());
    documented.insert(405);
    assert_eq!(
        error_codes.difference(&documented).collect::<Vec<_>>(),
        Vec::<&u16>::new(),
        "every status the API can answer is documented"
    );
}

#[test]
fn the_problem_type_names_every_kind_the_api_answers() {
    let doc = doc();
    let described = doc["definitions"]["Problem"]["properties"]["type"]["description"]
        .as_str()
        .unwrap()
        .to_string();
    let listed: BTreeSet<&str> = described
        .rsplit_once('(')
        .and_then(|(_, list)| list.strip_suffix(").").or(list.strip_suffix(')')))
        .unwrap()
        .split(", ")
        .collect();
    for e in every_error() {
        let kind = e
            .type_uri()
            .strip_prefix("urn:mec-plugin:problem:")
            .unwrap();
        assert!(listed.contains(kind), "{kind} is not in: {described}");
    }
}
