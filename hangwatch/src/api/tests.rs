//! The API over real HTTP on loopback and a unix socket, with a store fed synthetic events
//! (no probes, no root needed but for the socket's owner): answers, 4xx JSON errors for
//! every kind of bad input, what each listener serves, what each caller sees.
use std::{
    io::{Read, Write},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use axum::{body::Body, http::Request};
use serde_json::Value;
use tower::ServiceExt;

use super::{
    Api, Listeners,
    access::{Caller, LocalCaller},
    listeners::Limits,
    options::ClusterListener,
    router, serve,
};
use crate::{
    meta::owner::Owner,
    metrics::Metrics,
    sink::{EventType, Store, store::tests::event},
};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

struct Server {
    /// The cluster listener: the whole API for a token holder (the tests' way in over TCP).
    addr: SocketAddr,
    metrics: SocketAddr,
    socket: PathBuf,
    api: Arc<Api>,
    _dir: tempfile::TempDir,
}

fn start() -> Server {
    start_with(Limits::default())
}

fn start_with(limits: Limits) -> Server {
    let store = Arc::new(Store::new(Value::Null));
    let api = Api::new(store, Arc::new(Metrics::new()), Duration::from_millis(200));
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token");
    let socket = dir.path().join("run/api.sock");
    let bound = serve(
        Listeners {
            metrics: Some("127.0.0.1:0".parse().expect("addr")),
            socket: Some(socket.clone()),
            socket_group: None,
            cluster: Some(ClusterListener {
                addr: "127.0.0.1:0".parse().expect("addr"),
                token_file: Some(token_file),
            }),
            limits,
        },
        Arc::clone(&api),
    )
    .expect("serves");
    Server {
        addr: bound.cluster.expect("cluster listener"),
        metrics: bound.metrics.expect("metrics listener"),
        socket,
        api,
        _dir: dir,
    }
}

/// (status, body) of a request to `addr`; the body parsed as JSON when it is JSON.
fn request_to(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
) -> (u16, Value, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let with = |r: ureq::RequestBuilder<ureq::typestate::WithoutBody>| match token {
        Some(t) => r.header(super::TOKEN_HEADER, t),
        None => r,
    };
    let response = match method {
        "GET" => with(agent.get(&url)).call(),
        "POST" => match token {
            Some(t) => agent.post(&url).header(super::TOKEN_HEADER, t).send(""),
            None => agent.post(&url).send(""),
        },
        "DELETE" => with(agent.delete(&url)).call(),
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

fn request(server: &Server, method: &str, path: &str) -> (u16, Value, String) {
    request_to(server.addr, Some(TOKEN), method, path)
}

fn get(server: &Server, path: &str) -> (u16, Value) {
    let (status, json, _) = request(server, "GET", path);
    (status, json)
}

/// GET over the unix socket as this process (HTTP/1.0: the answer ends with the
/// connection), as the CLI does.
fn socket_get(server: &Server, path: &str) -> (u16, Value) {
    let mut stream = std::os::unix::net::UnixStream::connect(&server.socket).expect("connects");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {answer}"));
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// GET through the API's router as `caller`, as its listener would hand the request over.
async fn as_caller(api: &Arc<Api>, caller: &Caller, path: &str) -> (u16, Value) {
    let mut request = Request::get(path).body(Body::empty()).expect("request");
    request.extensions_mut().insert(caller.clone());
    let response = router(Arc::clone(api))
        .oneshot(request)
        .await
        .expect("infallible");
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn user(uid: u32, kernel_addresses: bool) -> Caller {
    Caller::Local(LocalCaller {
        pid: None,
        uid,
        gid: uid,
        cap_eff: 0,
        kernel_addresses,
    })
}

fn owned_by(uid: u32) -> Option<Owner> {
    Some(Owner {
        uids: [uid; 3],
        gids: [uid; 3],
        dumpable: true,
    })
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
    store.record(&event(EventType::Hang, "off_cpu-7-a", 7, 1500), None);
    store.record(&event(EventType::Hang, "off_cpu-8-b", 8, 2500), None);
    store.record(&event(EventType::Resolved, "off_cpu-7-a", 7, 3000), None);

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

#[test]
fn the_metrics_port_serves_aggregates_only() {
    let server = start();
    let (status, _, text) = request_to(server.metrics, None, "GET", "/metrics");
    assert_eq!(status, 200);
    assert!(text.contains("hangwatch_build_info"), "{text}");
    for path in [
        "/api/v1/hangs",
        "/api/v1/hangs/off_cpu-1-ffff",
        "/api/v1/history",
        "/api/v1/threads/1?stacks=true",
        "/api/v1/status",
        "/api/v1/watch",
    ] {
        let (status, json, text) = request_to(server.metrics, Some(TOKEN), "GET", path);
        assert_eq!(status, 401, "{path}: {text}");
        assert!(
            json["error"]
                .as_str()
                .is_some_and(|e| e.contains("unix socket")),
            "{text}"
        );
    }
    assert_eq!(request_to(server.metrics, None, "GET", "/nothing").0, 404);
}

#[test]
fn the_cluster_listener_needs_the_token() {
    let server = start();
    for token in [None, Some("wrong"), Some("")] {
        let (status, json, text) = request_to(server.addr, token, "GET", "/api/v1/hangs");
        assert_eq!(status, 401, "{token:?}: {text}");
        assert!(json["error"].is_string(), "{text}");
    }
    assert_eq!(get(&server, "/api/v1/hangs").0, 200);
    // A token file emptied (a Secret deleted): nothing gets in.
    let token_file = server._dir.path().join("token");
    std::fs::write(&token_file, "").expect("empty");
    assert_eq!(get(&server, "/api/v1/hangs").0, 503);
}

#[test]
fn the_socket_is_roots_and_knows_its_caller() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let server = start();
    let meta = std::fs::metadata(&server.socket).expect("socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o777, 0o600);
    // SAFETY: geteuid cannot fail.
    assert_eq!(meta.uid(), unsafe { libc::geteuid() });
    server.api.store.record(
        &event(EventType::Hang, "off_cpu-9-c", 9, 100),
        owned_by(4321),
    );
    let (status, body) = socket_get(&server, "/api/v1/hangs");
    assert_eq!(status, 200, "{body}");
    // This process reads its own threads over the socket, whoever runs the tests.
    let (status, body) = socket_get(&server, &format!("/api/v1/threads/{}", std::process::id()));
    assert_eq!(status, 200, "{body}");
    // A second daemon on the same socket is refused; a stale socket is replaced.
    let again = super::listeners::bind_socket(&server.socket, None);
    assert!(
        matches!(again, Err(super::listeners::SocketError::InUse { .. })),
        "{again:?}"
    );
}

#[tokio::test]
async fn each_caller_sees_only_what_it_could_read_itself() {
    let store = Arc::new(Store::new(Value::Null));
    let api = Api::new(store, Arc::new(Metrics::new()), Duration::from_millis(200));
    let mut mine = event(EventType::Hang, "off_cpu-1-a", 1, 100);
    mine.stacks.kernel_stack = vec![crate::stack::Frame {
        address: "0xffffffff820cb41e".into(),
        symbol: Some("futex_wait".into()),
        offset: Some(0x1e),
        module: Some("kernel".into()),
        file: None,
        line: None,
        inlined: false,
        python: false,
        tag: crate::stack::FrameTag::Kernel,
    }];
    api.store.record(&mine, owned_by(1000));
    api.store
        .record(&event(EventType::Hang, "off_cpu-2-b", 2, 200), owned_by(0));
    api.store
        .record(&event(EventType::Hang, "off_cpu-3-c", 3, 300), None);
    api.store
        .record(&event(EventType::Resolved, "off_cpu-2-b", 2, 400), None);

    let alice = user(1000, false);
    let (status, body) = as_caller(&api, &alice, "/api/v1/hangs").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = body["hangs"]
        .as_array()
        .expect("hangs")
        .iter()
        .filter_map(|h| h["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["off_cpu-1-a"],
        "only her own process's episode: {body}"
    );
    let text = body.to_string();
    assert!(
        !text.contains("0xffffffff"),
        "no kernel address for her: {text}"
    );
    assert!(text.contains("futex_wait"), "the symbol stays: {text}");

    let (status, body) = as_caller(&api, &alice, "/api/v1/hangs/off_cpu-2-b").await;
    assert_eq!(status, 403, "root's episode: {body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("uid 1000")),
        "{body}"
    );
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(1),
        "nothing but the error: {body}"
    );
    let (status, _) = as_caller(&api, &alice, "/api/v1/hangs/off_cpu-3-c").await;
    assert_eq!(status, 403, "owner unknown: only CAP_SYS_PTRACE");
    let (_, body) = as_caller(&api, &alice, "/api/v1/history").await;
    assert_eq!(body["history"].as_array().map(Vec::len), Some(0), "{body}");
    let (status, body) = as_caller(&api, &alice, "/api/v1/threads/1").await;
    assert_eq!(status, 403, "pid 1 is root's: {body}");

    // Root with CAP_SYSLOG where kallsyms shows addresses: everything, addresses kept.
    let root = Caller::Local(LocalCaller {
        pid: None,
        uid: 0,
        gid: 0,
        cap_eff: u64::MAX >> 23,
        kernel_addresses: true,
    });
    let (_, body) = as_caller(&api, &root, "/api/v1/hangs").await;
    assert_eq!(body["hangs"].as_array().map(Vec::len), Some(2), "{body}");
    assert!(body.to_string().contains("0xffffffff820cb41e"), "{body}");
    let (_, body) = as_caller(&api, &root, "/api/v1/history").await;
    assert_eq!(body["history"][0]["id"], "off_cpu-2-b");
    // The cluster caller: every process, never an address.
    let (_, body) = as_caller(&api, &Caller::Cluster, "/api/v1/hangs").await;
    assert_eq!(body["hangs"].as_array().map(Vec::len), Some(2), "{body}");
    assert!(!body.to_string().contains("0xffffffff"), "{body}");
    // No caller at all (a socket whose peer could not be read): 401.
    let response = router(Arc::clone(&api))
        .oneshot(
            Request::get("/api/v1/hangs")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(response.status().as_u16(), 401);
}

#[test]
fn connections_beyond_the_limit_are_refused_and_idle_ones_closed() {
    let server = start_with(Limits {
        max_connections: 2,
        header_timeout: Duration::from_millis(300),
    });
    let idle: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(server.metrics).expect("connects"))
        .collect();
    // Let the server accept both before the third comes.
    std::thread::sleep(Duration::from_millis(100));
    let mut third = std::net::TcpStream::connect(server.metrics).expect("connects");
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = third.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
    let mut answer = Vec::new();
    let read = third.read_to_end(&mut answer);
    assert!(
        read.is_err() || answer.is_empty(),
        "the third connection got an answer: {}",
        String::from_utf8_lossy(&answer)
    );
    let text = server.api.metrics.render();
    assert!(
        text.contains("hangwatch_limits_total{limit=\"http_connections\"} 1"),
        "{text}"
    );
    // The two that said nothing are closed after the header timeout...
    for mut stream in idle {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        assert!(
            matches!(stream.read(&mut buf), Ok(0) | Err(_)),
            "an idle connection stayed open"
        );
    }
    // ... which frees their slots.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(request_to(server.metrics, None, "GET", "/metrics").0, 200);
}

#[test]
fn a_kept_alive_connection_is_closed_once_idle() {
    let server = start_with(Limits {
        max_connections: 4,
        header_timeout: Duration::from_millis(300),
    });
    let mut stream = std::net::TcpStream::connect(server.metrics).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    // The answer (a JSON 503: no probes here), then the connection stays for the next
    // request until the idle timeout.
    let mut answer = [0u8; 4096];
    let n = stream.read(&mut answer).expect("an answer");
    let head = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    // Closed by the server (EOF), not left open until the client's 5 s read timeout.
    let mut rest = Vec::new();
    assert!(
        stream.read_to_end(&mut rest).is_ok(),
        "an idle kept-alive connection stayed open"
    );
}
