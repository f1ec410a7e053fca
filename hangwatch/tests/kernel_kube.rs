//! Container and pod attribution from real cgroups, names from a Kubernetes API.
//!
//! The test makes cgroups in the shapes kubelet and the runtimes make (cgroup v2 with the
//! systemd driver for containerd and CRI-O, the cgroupfs driver in a v1 hierarchy for
//! Docker), moves a deadlocking abba.c into each, and runs the daemon with `--node-name
//! node-1` and a kubeconfig pointing at a local HTTP server that answers the pod list and
//! watch with tests/fixtures/pods-node-1.json, through the same kube-rs client the DaemonSet
//! uses. Each deadlock's event must carry the container id and pod UID from the cgroup and
//! the namespace, pod and container names from the API; so must the API, the CLI's table
//! and the metrics' labels. Every cgroup made is removed at the end, also on failure.

mod common;

use std::{
    fs,
    io::{BufRead, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use common::*;

/// The pods of node-1, as `GET /api/v1/pods?fieldSelector=spec.nodeName=node-1` answers.
const NODE_PODS: &str = include_str!("fixtures/pods-node-1.json");
/// The DaemonSet's pods, as `GET /api/v1/namespaces/hangwatch/pods?labelSelector=...` answers.
const HANGWATCH_PODS: &str = include_str!("fixtures/hangwatch-pods.json");

/// The cluster API's token, as the daemon's token file and the Secret hold it.
const CLUSTER_TOKEN: &str = "hangwatch-test-token-0123456789ab";
/// The same, base64 as in a Secret's `data`.
const CLUSTER_TOKEN_BASE64: &str = "aGFuZ3dhdGNoLXRlc3QtdG9rZW4tMDEyMzQ1Njc4OWFi";
/// The bearer token of the kubeconfig's user whom RBAC grants the hangwatch-reader Role.
const READER: &str = "test-token";

/// What the test API server answers.
#[derive(Clone, Default)]
struct Routes {
    /// RBAC of the reader Role: the bearer tokens allowed to read the token Secret and to
    /// use the pod proxy (others get 403, as the API server answers a user RBAC denies).
    readers: Vec<&'static str>,
    /// `/api/v1/pods`: the node watch (list, then a watch held open).
    node_pods: Option<&'static str>,
    /// `/api/v1/namespaces/hangwatch/pods`: the DaemonSet's pods.
    hangwatch_pods: Option<&'static str>,
    /// Pod proxy: pod name -> the daemon its `NAME:9924/proxy/...` reaches (`None`: the
    /// API server cannot reach the pod and answers 503, as it does when the dial fails).
    proxies: Vec<(&'static str, Option<String>)>,
}

/// A minimal API server for the routes above. Records each request line and its
/// Authorization header.
struct ApiServer {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl ApiServer {
    fn start(routes: Routes) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        listener.set_nonblocking(true).expect("nonblocking");
        {
            let requests = Arc::clone(&requests);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let requests = Arc::clone(&requests);
                            let stop = Arc::clone(&stop);
                            let routes = routes.clone();
                            thread::spawn(move || serve(stream, &routes, &requests, &stop));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(20)),
                    }
                }
            });
        }
        Self {
            url,
            requests,
            stop,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A kubeconfig for this server, with the reader's bearer token, written into `dir`.
    fn kubeconfig(&self, dir: &Path) -> String {
        self.kubeconfig_for(dir, READER)
    }

    /// A kubeconfig for this server with the bearer token `token`.
    fn kubeconfig_for(&self, dir: &Path, token: &str) -> String {
        let path = dir.join(format!("kubeconfig-{token}"));
        fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n\
                 users:\n- name: test\n  user:\n    token: {token}\n\
                 contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
                 current-context: test\n",
                self.url
            ),
        )
        .expect("write kubeconfig");
        path.to_string_lossy().into_owned()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn respond(out: &mut TcpStream, status: &str, body: &str) {
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = out.flush();
}

fn status_json(code: u16, reason: &str, message: &str) -> String {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    })
    .to_string()
}

/// One connection: HTTP/1.1 keep-alive, GETs only.
fn serve(stream: TcpStream, routes: &Routes, requests: &Mutex<Vec<String>>, stop: &AtomicBool) {
    stream.set_nonblocking(false).ok();
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut authorization = String::new();
        let mut cluster_token = None;
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let lower = header.to_ascii_lowercase();
            if lower.starts_with("authorization:") {
                authorization = header["authorization:".len()..].trim().to_owned();
            } else if lower.starts_with("x-hangwatch-token:") {
                cluster_token = Some(header["x-hangwatch-token:".len()..].trim().to_owned());
            } else if let Some(n) = lower.strip_prefix("content-length:") {
                length = n.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let request_line = request_line.trim_end().to_owned();
        requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{request_line} [{authorization}]"));
        let target = request_line.split(' ').nth(1).unwrap_or("").to_owned();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let watch = query
            .split('&')
            .any(|p| p == "watch=true" || p == "watch=1");
        let proxied = path
            .strip_prefix("/api/v1/namespaces/hangwatch/pods/")
            .and_then(|rest| rest.split_once(":9925/proxy"));
        // RBAC of the reader Role: the token Secret and the pod proxy.
        let reader = routes
            .readers
            .iter()
            .any(|t| authorization == format!("Bearer {t}"));
        let guarded =
            proxied.is_some() || path.starts_with("/api/v1/namespaces/hangwatch/secrets/");
        if guarded && !reader {
            let (resource, verb) = if proxied.is_some() {
                ("pods/proxy", "get")
            } else {
                ("secrets", "get")
            };
            respond(
                &mut out,
                "403 Forbidden",
                &status_json(
                    403,
                    "Forbidden",
                    &format!(
                        "{resource} is forbidden: User \"denied\" cannot {verb} resource \"{resource}\" in API group \"\" in the namespace \"hangwatch\""
                    ),
                ),
            );
            continue;
        }
        if let (Some(pods), "/api/v1/pods", false) = (routes.node_pods, path, watch) {
            respond(&mut out, "200 OK", pods);
        } else if let (Some(_), "/api/v1/pods", true) = (routes.node_pods, path, watch) {
            // No change to report: hold the stream open (as the API server does until its
            // timeout) and end it when the test is done.
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            let _ = out.flush();
            while !stop.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(50));
            }
            let _ = write!(out, "0\r\n\r\n");
            return;
        } else if let (Some(pods), "/api/v1/namespaces/hangwatch/pods") =
            (routes.hangwatch_pods, path)
        {
            respond(&mut out, "200 OK", pods);
        } else if path == "/api/v1/namespaces/hangwatch/secrets/hangwatch-api-token" {
            let secret = serde_json::json!({
                "kind": "Secret", "apiVersion": "v1",
                "metadata": {"name": "hangwatch-api-token", "namespace": "hangwatch"},
                "type": "Opaque",
                "data": {"token": CLUSTER_TOKEN_BASE64},
            });
            respond(&mut out, "200 OK", &secret.to_string());
        } else if let Some((pod, rest)) = proxied {
            match routes.proxies.iter().find(|(name, _)| *name == pod) {
                Some((_, Some(daemon))) => {
                    let url = if query.is_empty() {
                        format!("{daemon}{rest}")
                    } else {
                        format!("{daemon}{rest}?{query}")
                    };
                    // As the API server does: the user's Authorization stays behind (it
                    // was for the API server), the other headers go along.
                    let headers: Vec<(&str, &str)> = cluster_token
                        .as_deref()
                        .map(|t| ("X-Hangwatch-Token", t))
                        .into_iter()
                        .collect();
                    let answer = http_with("GET", &url, &headers);
                    respond(&mut out, &format!("{} OK", answer.status), &answer.text);
                }
                Some((_, None)) => respond(
                    &mut out,
                    "503 Service Unavailable",
                    &status_json(
                        503,
                        "ServiceUnavailable",
                        "error trying to reach service: dial tcp 10.244.2.7:9924: connect: connection refused",
                    ),
                ),
                None => respond(
                    &mut out,
                    "404 Not Found",
                    &status_json(404, "NotFound", &format!("pods \"{pod}\" not found")),
                ),
            }
        } else {
            respond(
                &mut out,
                "404 Not Found",
                &status_json(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            );
        }
    }
}

/// The mount point of a cgroup hierarchy: cgroup2, or the v1 one with `option` (e.g.
/// `name=systemd`).
fn cgroup_mount(fstype: &str, option: Option<&str>) -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let (point, kind, options) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
        let matches = *kind == fstype && option.is_none_or(|o| options.split(',').any(|x| x == o));
        matches.then(|| PathBuf::from(point))
    })
}

/// Cgroups made by the test under `<mount>/<top>`, removed on drop: any process still in
/// them is moved back to the hierarchy's root first, then the directories are removed
/// deepest first.
struct TestCgroups {
    tops: Vec<(PathBuf, PathBuf)>,
}

impl TestCgroups {
    /// Makes `<mount>/<relative>` (and its parents), returns its path.
    fn make(&mut self, mount: &Path, top: &str, relative: &str) -> PathBuf {
        let top_dir = mount.join(top);
        if !self.tops.iter().any(|(_, t)| *t == top_dir) {
            self.tops.push((mount.to_path_buf(), top_dir.clone()));
        }
        let dir = top_dir.join(relative.trim_start_matches('/'));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        dir
    }

    fn enter(dir: &Path, pid: u32) {
        fs::write(dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", dir.display()));
    }
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        for (mount, top) in self.tops.drain(..) {
            let mut dirs = Vec::new();
            collect_dirs(&top, &mut dirs);
            // Deepest first.
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for dir in &dirs {
                if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                    for pid in procs.split_whitespace() {
                        let _ = fs::write(mount.join("cgroup.procs"), pid);
                    }
                }
                let mut removed = false;
                for _ in 0..50 {
                    if fs::remove_dir(dir).is_ok() || !dir.exists() {
                        removed = true;
                        break;
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                if !removed {
                    eprintln!(
                        "warning: could not remove the test cgroup {}",
                        dir.display()
                    );
                }
            }
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_path_buf());
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&entry.path(), out);
        }
    }
}

/// One workload of the fixture, the cgroup shape it is placed in, and what the event must
/// say about it.
struct Case {
    what: &'static str,
    /// The cgroup path below the test's top directory.
    path: String,
    container_id: &'static str,
    pod_uid: &'static str,
    namespace: &'static str,
    pod: &'static str,
    container: &'static str,
}

#[test]
#[ignore = "needs root: loads BPF programs, makes cgroups"]
fn events_name_the_container_and_pod_of_real_cgroups() {
    require_root();
    let v2 = cgroup_mount("cgroup2", None).expect("a cgroup2 hierarchy is mounted");
    let v1_systemd = cgroup_mount("cgroup", Some("name=systemd"));
    let top = format!("hangwatch-test-{}", std::process::id());

    let containerd = Case {
        what: "cgroup v2, systemd driver, containerd",
        path: "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1e0c3f4a_5b6d_4e7f_8a9b_0c1d2e3f4a5b.slice/cri-containerd-7e5f4c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3a2918abc.scope".into(),
        container_id: "7e5f4c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3a2918abc",
        pod_uid: "1e0c3f4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b",
        namespace: "payments",
        pod: "api-7f9c8d6b5-x2k4q",
        container: "web",
    };
    let crio = Case {
        what: "cgroup v2, systemd driver, CRI-O",
        path: "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod6f2e9d1c_0b3a_4c5d_9e8f_7a6b5c4d3e2f.slice/crio-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope".into(),
        container_id: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        pod_uid: "6f2e9d1c-0b3a-4c5d-9e8f-7a6b5c4d3e2f",
        namespace: "batch",
        pod: "report-28930140-q8z7m",
        container: "report",
    };
    let docker_v1 = Case {
        what: "cgroup v1, cgroupfs driver, Docker",
        path: "kubepods/burstable/poda0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d/fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210".into(),
        container_id: "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210",
        pod_uid: "a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d",
        namespace: "legacy",
        pod: "db-0",
        container: "postgres",
    };
    let mut cases = vec![(containerd, v2.clone()), (crio, v2.clone())];
    match &v1_systemd {
        Some(mount) => cases.push((docker_v1, mount.clone())),
        None => eprintln!("no v1 name=systemd hierarchy here: the cgroup v1 case is skipped"),
    }

    let api = ApiServer::start(Routes {
        node_pods: Some(NODE_PODS),
        ..Routes::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = api.kubeconfig(dir.path());

    // Declared before the programs, so dropped after them: the processes are dead when the
    // cgroups are removed.
    let mut cgroups = TestCgroups { tops: Vec::new() };
    let mut running = Vec::new();
    for (case, mount) in &cases {
        let cgroup = cgroups.make(mount, &top, &case.path);
        let abba = Abba::start();
        TestCgroups::enter(&cgroup, abba.pid());
        let seen = fs::read_to_string(format!("/proc/{}/cgroup", abba.pid())).expect("cgroup");
        assert!(
            seen.contains(&case.path),
            "{}: pid {} not in {}: {seen}",
            case.what,
            abba.pid(),
            cgroup.display()
        );
        running.push(abba);
    }

    let daemon = Daemon::start_with_env(&[("KUBECONFIG", &kubeconfig)], &["--node-name", "node-1"]);
    let synced = wait_until(Duration::from_secs(10), || {
        daemon.stderr().contains("3 pods on node node-1 (synced)")
    });
    assert!(
        synced,
        "the pod list was not read; requests: {:?}\n{}",
        api.requests(),
        daemon.stderr()
    );
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.contains("fieldSelector=spec.nodeName%3Dnode-1")
                && r.contains("[Bearer test-token]")),
        "the list is not limited to this node's pods, or without the kubeconfig's token: {requests:?}"
    );

    let mut ids = Vec::new();
    for ((case, _), abba) in cases.iter().zip(&mut running) {
        abba.deadlock();
        let pid = abba.pid();
        let hang = daemon.wait_for_event(case.what, Duration::from_secs(5), |v| {
            str_of(v, "/event") == "hang"
                && str_of(v, "/kind") == "deadlock"
                && u64_of(v, "/pid") == u64::from(pid)
        });
        let v = &hang.value;
        let what = case.what;
        assert_eq!(str_of(v, "/container_id"), case.container_id, "{what}: {v}");
        assert_eq!(str_of(v, "/pod_uid"), case.pod_uid, "{what}: {v}");
        assert_eq!(str_of(v, "/namespace"), case.namespace, "{what}: {v}");
        assert_eq!(str_of(v, "/pod"), case.pod, "{what}: {v}");
        assert_eq!(str_of(v, "/container"), case.container, "{what}: {v}");
        ids.push(str_of(v, "/id").to_owned());
    }

    // The same fields through the API, the CLI's table and the metrics.
    let endpoint = daemon.endpoint();
    let hangs = get_ok(&format!("{endpoint}/api/v1/hangs")).json;
    for ((case, _), id) in cases.iter().zip(&ids) {
        let hang = hangs["hangs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|h| str_of(h, "/id") == id)
            .unwrap_or_else(|| panic!("{id} not in /api/v1/hangs: {hangs}"));
        assert_eq!(str_of(hang, "/pod"), case.pod, "{hang}");
        assert_eq!(str_of(hang, "/container_id"), case.container_id, "{hang}");
    }
    let table = cli_ok(&endpoint, &["list", "--kind", "deadlock"]).stdout;
    let metrics = get_ok(&format!("{endpoint}/metrics")).text;
    for (case, _) in &cases {
        let place = format!("{}/{}/{} abba[", case.namespace, case.pod, case.container);
        assert!(table.contains(&place), "{place} not in the table:\n{table}");
        let series = format!(
            "hangwatch_hung_threads{{comm=\"abba\",container=\"{}\",kind=\"deadlock\",namespace=\"{}\",pod=\"{}\"}} 1",
            case.container, case.namespace, case.pod
        );
        assert!(
            metrics.contains(&series),
            "{series} not in /metrics:\n{metrics}"
        );
    }
    drop(running);
    drop(cgroups);
    for (_, mount) in &cases {
        assert!(
            !mount.join(&top).exists(),
            "test cgroups left under {}",
            mount.display()
        );
    }
}

/// `hangwatch list --all-nodes` from a "laptop": the kubeconfig points at the API server,
/// which lists the DaemonSet's pods and proxies each pod's API; node-1's pod reaches a real
/// daemon watching a real deadlock, node-2's cannot be reached, node-3's is Pending.
#[test]
#[ignore = "needs root: loads BPF programs"]
fn list_all_nodes_merges_the_daemonset_pods_through_the_pod_proxy() {
    require_root();
    let mut abba = Abba::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token");
    fs::write(&token_file, CLUSTER_TOKEN).expect("token file");
    let token_path = token_file.to_string_lossy().into_owned();
    let daemon = Daemon::start(&[
        "--cluster-api-listen",
        "127.0.0.1:0",
        "--cluster-api-token-file",
        &token_path,
    ]);
    abba.deadlock();
    let pid = abba.pid();
    let hang = daemon.wait_for_event("deadlock for abba", Duration::from_secs(5), |v| {
        str_of(v, "/event") == "hang"
            && str_of(v, "/kind") == "deadlock"
            && u64_of(v, "/pid") == u64::from(pid)
    });
    let id = str_of(&hang.value, "/id").to_owned();
    let api = ApiServer::start(Routes {
        hangwatch_pods: Some(HANGWATCH_PODS),
        readers: vec![READER],
        proxies: vec![
            ("hangwatch-7xk2p", Some(daemon.cluster_endpoint())),
            ("hangwatch-m9q4d", None),
        ],
        ..Routes::default()
    });
    let kubeconfig = api.kubeconfig(dir.path());
    let denied_kubeconfig = api.kubeconfig_for(dir.path(), "denied-token");
    let list_as = |kubeconfig: &str, extra: &[&str]| {
        let mut command = Command::new(HANGWATCH);
        command
            .args(["list", "--all-nodes", "--kind", "deadlock"])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            // Nothing listens there: every answer must come through the API server.
            .env("HANGWATCH_ENDPOINT", "http://127.0.0.1:9");
        let out = command.output().expect("run hangwatch list");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!(
            "$ hangwatch list --all-nodes {extra:?} -> {:?}\n{stdout}{stderr}",
            out.status
        );
        (out.status.code(), stdout, stderr)
    };
    let list = |extra: &[&str]| list_as(&kubeconfig, extra);

    let (code, stdout, _) = list(&["--json"]);
    assert_eq!(code, Some(0));
    let answer: Value = serde_json::from_str(&stdout).expect("JSON");
    let mine: Vec<&Value> = answer["hangs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| str_of(h, "/id") == id)
        .collect();
    assert_eq!(mine.len(), 1, "{answer}");
    assert_eq!(str_of(mine[0], "/node"), "node-1", "{answer}");
    assert_eq!(
        str_of(mine[0], "/hangwatch_pod"),
        "hangwatch-7xk2p",
        "{answer}"
    );
    assert_eq!(answer["nodes"], 3, "{answer}");
    let errors = answer["errors"].as_array().cloned().unwrap_or_default();
    let error_of = |node: &str| {
        errors
            .iter()
            .find(|e| str_of(e, "/node") == node)
            .map(|e| str_of(e, "/error").to_owned())
            .unwrap_or_else(|| panic!("no error for {node}: {answer}"))
    };
    assert!(
        error_of("node-2").contains("connection refused"),
        "{answer}"
    );
    assert!(error_of("node-3").contains("Pending"), "{answer}");

    let (code, table, stderr) = list(&["--exit-code"]);
    assert_eq!(code, Some(3), "--exit-code with a hang");
    let row = table
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("{id} not in the table:\n{table}"));
    assert!(
        row.trim_start().starts_with("node-1"),
        "NODE column first: {row}"
    );
    assert!(
        table.lines().next().is_some_and(|h| h.contains("NODE")),
        "{table}"
    );
    assert!(
        stderr.contains("node node-2 (pod hangwatch-m9q4d) did not answer"),
        "{stderr}"
    );
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("GET /api/v1/namespaces/hangwatch/pods?")
                && r.contains("labelSelector=app.kubernetes.io%2Fname%3Dhangwatch")),
        "{requests:?}"
    );
    assert!(
        requests.iter().any(|r| r.contains(
            "/api/v1/namespaces/hangwatch/pods/hangwatch-7xk2p:9925/proxy/api/v1/hangs?kind=deadlock"
        ) && r.contains("[Bearer test-token]")),
        "{requests:?}"
    );

    // One node's daemon: `show` and `threads` with --node ask only that node's pod.
    let on_node = |args: &[&str]| {
        let out = Command::new(HANGWATCH)
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .env("HANGWATCH_ENDPOINT", "http://127.0.0.1:9")
            .output()
            .expect("run hangwatch");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("$ hangwatch {args:?} -> {:?}\n{stdout}{stderr}", out.status);
        (out.status.code(), stdout, stderr)
    };
    let (code, stdout, _) = on_node(&["show", &id, "--node", "node-1", "--json"]);
    assert_eq!(code, Some(0));
    let shown: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(str_of(&shown, "/id"), id, "{shown}");
    assert_eq!(str_of(&shown, "/kind"), "deadlock", "{shown}");
    let pid_arg = pid.to_string();
    let (code, stdout, _) = on_node(&["threads", &pid_arg, "--node", "node-1", "--json"]);
    assert_eq!(code, Some(0));
    let dump: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(u64_of(&dump, "/pid"), u64::from(pid), "{dump}");
    assert!(
        dump["threads"].as_array().is_some_and(|t| t.len() >= 3),
        "abba's threads: {dump}"
    );
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.contains("fieldSelector=spec.nodeName%3Dnode-1")),
        "--node asks the API server for that node's pod: {requests:?}"
    );
    assert!(
        requests.iter().any(|r| r.contains(&format!(
            "/pods/hangwatch-7xk2p:9925/proxy/api/v1/threads/{pid}"
        ))),
        "{requests:?}"
    );
    // A node without a hangwatch pod is named as such; one whose pod is unreachable says so.
    let (code, _, stderr) = on_node(&["show", &id, "--node", "node-9"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("runs on node node-9"), "{stderr}");
    let (code, _, stderr) = on_node(&["show", &id, "--node", "node-2"]);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("node node-2 (pod hangwatch-m9q4d) did not answer"),
        "{stderr}"
    );

    // A user RBAC does not grant the reader Role: refused by the API server (403), and the
    // CLI says which grant is missing.
    let (code, stdout, stderr) = list_as(&denied_kubeconfig, &["--json"]);
    assert_ne!(code, Some(0), "a denied user listed hangs: {stdout}");
    assert!(!stdout.contains(&id), "{stdout}");
    assert!(
        stderr.contains("refused") && stderr.contains("hangwatch-reader"),
        "the CLI does not say what is missing: {stderr}"
    );
    // The cluster listener itself, reached without the API server: nothing without the
    // token, 401; with it, the hang.
    let cluster = daemon.cluster_endpoint();
    let bare = http("GET", &format!("{cluster}/api/v1/hangs"));
    assert_eq!(bare.status, 401, "{}", bare.text);
    let wrong = http_with(
        "GET",
        &format!("{cluster}/api/v1/threads/1"),
        &[("X-Hangwatch-Token", "not-the-token-not-the-token")],
    );
    assert_eq!(wrong.status, 401, "{}", wrong.text);
    let right = http_with(
        "GET",
        &format!("{cluster}/api/v1/hangs"),
        &[("X-Hangwatch-Token", CLUSTER_TOKEN)],
    );
    assert!(right.text.contains(&id), "{}", right.text);
    assert!(
        !right.text.contains("0xffffffff"),
        "a cluster caller got a kernel address: {}",
        right.text
    );
}
