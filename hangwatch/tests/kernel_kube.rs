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

use std::{fs, process::Command, time::Duration};

use self::common::{kube::*, *};

/// The pods of node-1, as `GET /api/v1/pods?fieldSelector=spec.nodeName=node-1` answers.
const NODE_PODS: &str = include_str!("fixtures/pods-node-1.json");
/// The DaemonSet's pods, as `GET /api/v1/namespaces/hangwatch/pods?labelSelector=...` answers.
const HANGWATCH_PODS: &str = include_str!("fixtures/hangwatch-pods.json");

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
    let mut cgroups = TestCgroups::default();
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
