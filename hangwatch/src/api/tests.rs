//! The API over real HTTP on loopback, with a store fed synthetic events (no probes, no
//! root): answers, and 4xx JSON errors for every kind of bad input.
use std::{net::SocketAddr, sync::Arc};

use serde_json::Value;

use super::{Api, serve};
use crate::{
    metrics::Metrics,
    sink::{EventType, Store, store::tests::event},
};

struct Server {
    addr: SocketAddr,
    api: Arc<Api>,
}

fn start() -> Server {
    let store = Arc::new(Store::new(Value::Null));
    let api = Api::new(
        store,
        Arc::new(Metrics::new()),
        std::time::Duration::from_millis(200),
    );
    let addr = serve("127.0.0.1:0".parse().expect("addr"), Arc::clone(&api)).expect("serves");
    Server { addr, api }
}

/// (status, body) of a request; the body parsed as JSON when it is JSON.
fn request(server: &Server, method: &str, path: &str) -> (u16, Value, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://{}{path}", server.addr);
    let response = match method {
        "GET" => agent.get(&url).call(),
        "POST" => agent.post(&url).send(""),
        "DELETE" => agent.delete(&url).call(),
        other => panic!("method {other}"),
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let text = response
        .into_body()
        .read_to_string()
        .unwrap_or_else(|e| panic!("{method} {url}: body: {e}"));
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, json, text)
}

fn get(server: &Server, path: &str) -> (u16, Value) {
    let (status, json, _) = request(server, "GET", path);
    (status, json)
}

#[test]
fn healthz_is_ready_only_once_the_probes_are_attached() {
    let server = start();
    let (status, body) = get(&server, "/healthz");
    assert_eq!(status, 503);
    assert!(body["error"].as_str().is_some(), "{body}");
    let (tx, _rx) = std::sync::mpsc::sync_channel(4);
    server.api.probes_attached(None, tx);
    let (status, _, text) = request(&server, "GET", "/healthz");
    assert_eq!((status, text.as_str()), (200, "ok\n"));
}

#[test]
fn hangs_history_and_one_episode() {
    let server = start();
    let store = &server.api.store;
    store.record(&event(EventType::Hang, "off_cpu-7-a", 7, 1500));
    store.record(&event(EventType::Hang, "off_cpu-8-b", 8, 2500));
    store.record(&event(EventType::Resolved, "off_cpu-7-a", 7, 3000));

    let (status, body) = get(&server, "/api/v1/hangs");
    assert_eq!(status, 200, "{body}");
    let hangs = body["hangs"].as_array().expect("hangs");
    assert_eq!(hangs.len(), 1);
    assert_eq!(hangs[0]["id"], "off_cpu-8-b");
    assert_eq!(hangs[0]["wait"]["state"], "S");

    let (_, body) = get(&server, "/api/v1/hangs?kind=d_state");
    assert_eq!(body["hangs"].as_array().map(Vec::len), Some(0));
    let (_, body) = get(&server, "/api/v1/hangs?pid=100&kind=off_cpu");
    assert_eq!(body["hangs"].as_array().map(Vec::len), Some(1));

    let (status, body) = get(&server, "/api/v1/hangs/off_cpu-7-a");
    assert_eq!(status, 200);
    assert_eq!(body["event"], "resolved");
    assert_eq!(body["duration_ms"], 3000);

    let (status, body) = get(&server, "/api/v1/history?limit=1");
    assert_eq!(status, 200);
    assert_eq!(body["history"][0]["id"], "off_cpu-7-a");
    assert_eq!(body["capacity"], crate::sink::HISTORY_CAPACITY);

    let (status, body) = get(&server, "/api/v1/status");
    assert_eq!(status, 200);
    assert_eq!(body["open_episodes"], 1);
    assert_eq!(body["events"]["hang"], 2);
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn wrong_inputs_get_4xx_with_a_json_error() {
    let server = start();
    let cases: &[(&str, &str, u16)] = &[
        ("GET", "/api/v1/hangs/off_cpu-1-ffff", 404),
        ("GET", "/api/v1/hangs/..%2F..%2Fetc%2Fpasswd", 400),
        ("GET", &format!("/api/v1/hangs/{}", "x".repeat(300)), 400),
        ("GET", "/api/v1/threads/abc", 400),
        ("GET", "/api/v1/threads/-1", 400),
        ("GET", "/api/v1/threads/0", 400),
        ("GET", "/api/v1/threads/99999999999999999999999", 400),
        ("GET", "/api/v1/threads/4194304", 404),
        ("GET", "/api/v1/threads/1?stacks=maybe", 400),
        ("GET", "/api/v1/history?limit=100000000000000000000000", 400),
        ("GET", "/api/v1/history?limit=0", 400),
        ("GET", "/api/v1/history?limit=ten", 400),
        ("GET", "/api/v1/history?limit=%ff", 400),
        ("GET", "/api/v1/hangs?pid=abc", 400),
        ("GET", "/api/v1/hangs?colour=red", 400),
        ("GET", "/api/v1/status?verbose=1", 400),
        ("GET", "/api/v2/hangs", 404),
        ("GET", "/", 404),
        ("POST", "/api/v1/hangs", 405),
        ("DELETE", "/api/v1/hangs/off_cpu-1-ffff", 405),
    ];
    for (method, path, expected) in cases {
        let (status, json, text) = request(&server, method, path);
        assert_eq!(status, *expected, "{method} {path}: {text}");
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path}: no JSON error: {text}"
        );
    }
    // Still serving.
    assert_eq!(get(&server, "/api/v1/hangs").0, 200);
}

#[test]
fn threads_of_a_process_without_probes_come_from_proc() {
    let server = start();
    let (status, body) = get(&server, &format!("/api/v1/threads/{}", std::process::id()));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pid"], std::process::id());
    assert!(body["threads"].as_array().is_some_and(|t| !t.is_empty()));
    assert!(body["state_error"].as_str().is_some());
    let (_, body) = get(
        &server,
        &format!("/api/v1/threads/{}?stacks=true", std::process::id()),
    );
    assert_eq!(body["stacks_error"], "the probes are not loaded yet");
}

#[test]
fn metrics_are_prometheus_text() {
    let server = start();
    let (status, _, text) = request(&server, "GET", "/metrics");
    assert_eq!(status, 200);
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses");
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "hangwatch_build_info"),
        "{text}"
    );
}
