//! Operating it: health, metrics, bearer-token authentication and finding regions by
//! position, through the real server on 127.0.0.1:0.

mod support;

use std::time::Duration;

use support::fake_llmec::FakeLlMec;
use support::{Plugin, llmec_region, server_section, simulated_region, temp_dir};

const DNS: &str = r#"{"RegionId":"2","appDNSRule":[{"dnsRuleId":"1","domainName":"a.example.org","ipAddressType":"IP_V4","ipAddress":"10.0.0.1"}]}"#;

/// Regions around Sophia-Antipolis (2, 10 km), Nice (n, 25 km) and Turin (3, 15 km).
fn three_regions(mep: &FakeLlMec) -> String {
    format!(
        "{}{}{}[[region]]\nid = \"n\"\nlatitude = 43.7102\nlongitude = 7.2620\nrange_km = 25.0\n[region.mep]\ndriver = \"simulated\"\n",
        server_section(""),
        llmec_region("2", &mep.url(), 1000)
            .replace("latitude = 43.6", "latitude = 43.6143899")
            .replace("longitude = 7.06", "longitude = 7.068931"),
        simulated_region("3")
    )
}

fn raw_get(p: &Plugin, path: &str, auth: Option<&str>) -> (u16, String, Option<String>) {
    let addr = p.app.local_addr();
    let agent = support::agent(Duration::from_secs(10));
    let mut request = agent.get(format!("http://{addr}{path}"));
    if let Some(a) = auth {
        request = request.header("Authorization", a);
    }
    let mut response = request.call().unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    (
        status,
        response.body_mut().read_to_string().unwrap(),
        challenge,
    )
}

#[test]
fn healthz_answers_200_json_when_serving() {
    let mep = FakeLlMec::start();
    let p = Plugin::start(&three_regions(&mep));
    let (status, body, _) = raw_get(&p, "/healthz", None);
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "ok");
    assert_eq!(json["regions"], 3);
}

#[test]
fn metrics_count_requests_platform_calls_and_records_after_traffic() {
    let mep = FakeLlMec::start();
    let p = Plugin::start(&three_regions(&mep));
    let id = p.post(DNS).json["RequestId"].as_str().unwrap().to_string();
    p.get("/service/requests");
    p.get("/service/requests/nope");
    mep.fail_all(403);
    p.post(DNS);
    let (status, text, _) = raw_get(&p, "/metrics", None);
    assert_eq!(status, 200);
    for needle in [
        "mec_plugin_http_requests_total{route=\"/MEC/v1/service/requests\",method=\"POST\",status=\"201\"} 1",
        "mec_plugin_http_requests_total{route=\"/MEC/v1/service/requests\",method=\"POST\",status=\"502\"} 1",
        "mec_plugin_http_requests_total{route=\"/MEC/v1/service/requests/{RequestId}\",method=\"GET\",status=\"404\"} 1",
        "mec_plugin_http_request_duration_seconds_bucket{route=\"/MEC/v1/service/requests\",le=\"+Inf\"}",
        "mec_plugin_mep_calls_total{region=\"2\",operation=\"apply\",outcome=\"ok\"} 1",
        "mec_plugin_mep_calls_total{region=\"2\",operation=\"apply\",outcome=\"refused\"} 1",
        "mec_plugin_mep_call_duration_seconds_count{region=\"2\",operation=\"apply\"} 2",
        "mec_plugin_requests{status=\"CREATED\"} 1",
        "mec_plugin_requests{status=\"FAILED\"} 1",
        "mec_plugin_reconciler_backlog 0",
        "mec_plugin_state_writable 1",
        "mec_plugin_build_info{version=",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    assert!(!id.is_empty());
}

#[test]
fn metrics_count_the_requests_the_server_refuses_itself_under_their_route() {
    let config = format!(
        "{}{}",
        server_section("max_body_bytes = 1024"),
        simulated_region("3")
    );
    let p = Plugin::start(&config);
    let big = DNS.replace("a.example.org", &format!("{}.org", "a".repeat(2048)));
    p.post(&big).problem(413);
    let (status, text, _) = raw_get(&p, "/metrics", None);
    assert_eq!(status, 200);
    for needle in [
        "mec_plugin_http_requests_total{route=\"/MEC/v1/service/requests\",method=\"POST\",status=\"413\"} 1",
        "mec_plugin_http_request_duration_seconds_count{route=\"/MEC/v1/service/requests\"} 1",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

#[test]
fn with_a_token_the_api_and_metrics_need_it_and_healthz_does_not() {
    let dir = temp_dir("token");
    std::fs::write(dir.join("token"), "t0ken-abc\n").unwrap();
    let config = format!(
        "{}{}",
        server_section(&format!("token_file = \"{}\"", dir.join("token").display())),
        simulated_region("3")
    );
    let p = Plugin::start(&config);
    for path in [
        "/MEC/v1/service/regions",
        "/metrics",
        "/MEC/v1/service/requests/x",
        "/MEC/v1/nothing",
    ] {
        let (status, body, challenge) = raw_get(&p, path, None);
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(
            challenge.as_deref(),
            Some("Bearer realm=\"mec-plugin\""),
            "{path}"
        );
        assert!(body.contains("\"status\":401"), "{body}");
        assert_eq!(raw_get(&p, path, Some("Bearer wrong")).0, 401, "{path}");
        assert_eq!(
            raw_get(&p, path, Some("t0ken-abc")).0,
            401,
            "{path}: the scheme is required"
        );
    }
    assert_eq!(
        raw_get(&p, "/MEC/v1/service/regions", Some("Bearer t0ken-abc")).0,
        200
    );
    assert_eq!(raw_get(&p, "/metrics", Some("Bearer t0ken-abc")).0, 200);
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        assert_eq!(
            raw_get(
                &p,
                "/MEC/v1/service/regions",
                Some(&format!("{scheme} t0ken-abc"))
            )
            .0,
            200,
            "the scheme is case-insensitive (RFC 7235): {scheme}"
        );
    }
    assert_eq!(
        raw_get(&p, "/MEC/v1/service/requests/x", Some("Bearer t0ken-abc")).0,
        404
    );
    assert_eq!(raw_get(&p, "/healthz", None).0, 200, "healthz stays open");
    assert_eq!(
        raw_get(&p, "/elsewhere", None).0,
        404,
        "outside the API: plain 404"
    );
}

#[test]
fn regions_are_found_by_position_nearest_first() {
    let mep = FakeLlMec::start();
    let p = Plugin::start(&three_regions(&mep));
    let ids = |query: &str| -> Vec<String> {
        let r = p.get(&format!("/service/regions?{query}"));
        assert_eq!(r.status, 200, "{query}: {:?}", r.json);
        r.json["Regions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["MECRegionInfo"]["RegionId"].as_str().unwrap().to_string())
            .collect()
    };
    // Antibes: 6 km from Sophia, 19 km from Nice
    assert_eq!(ids("latitude=43.5808&longitude=7.1251"), ["2", "n"]);
    // Nice itself: outside Sophia's 10 km
    assert_eq!(ids("latitude=43.7102&longitude=7.2620"), ["n"]);
    // Turin
    assert_eq!(ids("longitude=7.6869&latitude=45.0703"), ["3"]);
    // the open sea
    assert!(ids("latitude=40.0&longitude=5.0").is_empty());
    // without a query: every region, in configuration order
    assert_eq!(
        p.get("/service/regions").json["Regions"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn a_bad_position_query_is_400() {
    let mep = FakeLlMec::start();
    let p = Plugin::start(&three_regions(&mep));
    for (query, needle) in [
        ("latitude=43.6", "'longitude' is missing"),
        ("latitude=abc&longitude=7", "not a number"),
        ("latitude=100&longitude=7", "out of range"),
        ("latitude=43&longitude=181", "out of range"),
        ("lat=43&longitude=7", "'latitude' is missing"),
        (
            "latitude=43.6&longitude=7.06&latitude=45.07",
            "'latitude' is given more than once",
        ),
    ] {
        let d = p.get(&format!("/service/regions?{query}")).problem(400);
        assert!(d.contains(needle), "{query}: {d}");
    }
}

#[test]
fn unknown_query_parameters_of_get_routes_are_ignored() {
    let mep = FakeLlMec::start();
    let p = Plugin::start(&three_regions(&mep));
    let all = p.get("/service/regions");
    for path in [
        "/service/regions?_=1733500000000",
        "/service/regions?_=1&cache=no",
    ] {
        let r = p.get(path);
        assert_eq!(r.status, 200, "{path}: {:?}", r.json);
        assert_eq!(r.json, all.json, "{path}");
    }
    for path in ["/service/requests?_=1", "/service/regions/2?_=1"] {
        assert_eq!(p.get(path).status, 200, "{path}");
    }
    // Known parameters are still validated beside an unknown one.
    p.get("/service/regions?_=1&latitude=x&longitude=7")
        .problem(400);
}

/// A start that cannot listen (the address is taken) returns only once nothing of it holds
/// the state: a start right after, on the same state directory, is not told it is in use.
#[test]
fn a_start_that_cannot_listen_leaves_the_state_to_the_next_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let state = temp_dir("listen-taken");
    let text = format!("{}{}", server_section(""), simulated_region("3"));
    let mut config = mec_plugin::config::Config::parse(&text, "test.toml").unwrap();
    config.server.state_dir = state.clone();
    config.server.listen = taken.local_addr().unwrap();
    for _ in 0..20 {
        match mec_plugin::app::App::start(&config) {
            Err(e) => assert!(e.to_string().contains("cannot start serving"), "{e}"),
            Ok(_) => panic!("started on a taken address"),
        }
    }
    let p = Plugin::start_in(&text, &state);
    assert_eq!(p.call("GET", "/service/regions", None).status, 200);
}
