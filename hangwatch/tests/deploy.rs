//! deploy/ is checked like code: every manifest against the Kubernetes and Prometheus
//! Operator schemas (deploy/tests/validate.py, offline), the alert rules with `promtool check
//! rules` and their unit tests with `promtool test rules` (deploy/tests/rules-test.yaml).
//!
//! The tools come from `cargo xtask setup` (Debian's prometheus package, a venv under
//! target/). Under `cargo xtask test` (HANGWATCH_DEPLOY_VENV set) a missing tool fails the
//! test; under a bare `cargo test` it is skipped with the reason.

mod common;

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use self::common::{deploy_dir, find_tool, prometheus_rules_file};

/// Whether `cargo xtask test` promised the tools.
fn tools_required() -> bool {
    env::var_os("HANGWATCH_DEPLOY_VENV").is_some()
}

/// The venv's python, or `None` (after saying why) when the test is to be skipped.
fn venv_python() -> Option<PathBuf> {
    let venv = env::var_os("HANGWATCH_DEPLOY_VENV").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-venv"),
        PathBuf::from,
    );
    let python = venv.join("bin/python");
    if python.is_file() {
        return Some(python);
    }
    assert!(
        !tools_required(),
        "{} is missing: `cargo xtask setup` should have made it",
        python.display()
    );
    eprintln!(
        "skipped: no validator venv at {} (run `cargo xtask setup`)",
        venv.display()
    );
    None
}

fn promtool() -> Option<PathBuf> {
    let found = find_tool("promtool");
    if found.is_none() {
        assert!(
            !tools_required(),
            "promtool is missing: `cargo xtask setup` installs Debian's prometheus package"
        );
        eprintln!("skipped: promtool is missing (apt-get install prometheus)");
    }
    found
}

/// Runs `cmd`, panics with its output unless it succeeds; returns stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

#[test]
fn manifests_validate_against_the_schemas() {
    let Some(python) = venv_python() else { return };
    let deploy = deploy_dir();
    let script = deploy.join("tests/validate.py");
    let report = run(Command::new(&python).arg(&script).arg(&deploy));
    eprint!("{report}");
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
        "NetworkPolicy",
        "Role",
    ] {
        assert!(
            report.lines().any(|l| l.starts_with(&format!("{kind}/"))),
            "{kind} was not validated:\n{report}"
        );
    }
    // Where kubectl is installed, kustomize's own rendering is validated too (the script's
    // rendering only covers the kustomization fields deploy/ uses).
    if let Some(kubectl) = find_tool("kubectl") {
        let rendered = run(Command::new(kubectl).arg("kustomize").arg(&deploy));
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("rendered.yaml");
        fs::write(&file, &rendered).expect("write rendered manifests");
        let report = run(Command::new(&python)
            .arg(&script)
            .arg(&deploy)
            .arg("--rendered")
            .arg(&file));
        assert!(report.contains("12 objects valid"), "{report}");
    } else {
        eprintln!("kubectl is not installed: `kubectl kustomize deploy/` not checked");
    }
}

#[test]
fn alert_rules_check_and_pass_their_unit_tests() {
    let Some(promtool) = promtool() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = dir.path().join("hangwatch.rules.yaml");
    fs::write(&rules, prometheus_rules_file(None)).expect("write rules");
    fs::copy(
        deploy_dir().join("tests/rules-test.yaml"),
        dir.path().join("rules-test.yaml"),
    )
    .expect("copy rules-test.yaml");
    let checked = run(Command::new(&promtool).args(["check", "rules"]).arg(&rules));
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = run(Command::new(&promtool).current_dir(dir.path()).args([
        "test",
        "rules",
        "rules-test.yaml",
    ]));
    assert!(tested.contains("SUCCESS"), "{tested}");
}

fn yaml(path: &Path) -> serde_yaml_ng::Value {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The settings and rules of the DaemonSet: core/kustomization.yaml makes the ConfigMap from
/// a file (with the hash suffix that rolls the pods on a change), the DaemonSet mounts it
/// where its `--config` points, and `hangwatch check-config` accepts the content.
#[test]
fn the_config_map_is_where_config_points_and_passes_check_config() {
    let core = deploy_dir().join("core");
    let kustomization = yaml(&core.join("kustomization.yaml"));
    let generator = kustomization["configMapGenerator"]
        .as_sequence()
        .and_then(|g| g.iter().find(|g| g["name"] == "hangwatch-config"))
        .unwrap_or_else(|| panic!("core/kustomization.yaml generates no hangwatch-config"));
    assert_ne!(
        generator["options"]["disableNameSuffixHash"].as_bool(),
        Some(true),
        "without the hash suffix a changed ConfigMap would not roll the pods"
    );
    let files = generator["files"].as_sequence().expect("files");
    assert_eq!(files.len(), 1, "one file: {files:?}");
    let spec = files[0].as_str().expect("a file");
    let (key, file) = spec.split_once('=').unwrap_or((spec, spec));

    let daemonset = yaml(&core.join("daemonset.yaml"));
    let pod = &daemonset["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_sequence()
        .and_then(|v| {
            v.iter()
                .find(|v| v["configMap"]["name"] == "hangwatch-config")
        })
        .unwrap_or_else(|| panic!("the DaemonSet has no volume of the ConfigMap"));
    let container = &pod["containers"][0];
    let mount = container["volumeMounts"]
        .as_sequence()
        .and_then(|m| m.iter().find(|m| m["name"] == volume["name"]))
        .unwrap_or_else(|| panic!("the ConfigMap's volume is not mounted"));
    let mount_path = mount["mountPath"].as_str().expect("mountPath");
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .filter_map(serde_yaml_ng::Value::as_str)
        .collect();
    assert!(
        args.contains(&format!("--config={mount_path}/{key}").as_str()),
        "--config does not point at the mounted {key}: {args:?}"
    );

    // The content, under the name the pod sees, through the daemon's own check.
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join(key);
    fs::copy(core.join(file), &copy).expect("copy the ConfigMap's file");
    let out = Command::new(common::HANGWATCH)
        .arg("check-config")
        .arg(&copy)
        .output()
        .expect("run hangwatch check-config");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check-config refused the ConfigMap's {key}:\n{}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let setting = |key: &str, value: &str| {
        stdout
            .lines()
            .any(|l| l.split_whitespace().eq([key, value]))
    };
    assert!(setting("output", "json"), "{stdout}");
    assert!(setting("log_format", "json"), "{stdout}");
    let port = container["ports"][0]["containerPort"]
        .as_u64()
        .expect("containerPort");
    assert!(
        setting("listen", &format!("0.0.0.0:{port}")),
        "/metrics must listen on the container port {port}:\n{stdout}"
    );
    // docs/security.md: the per-process API is on the pod network only with the token of
    // the Secret the DaemonSet mounts, and events carry no kernel addresses.
    assert!(setting("api.redact_kernel_addresses", "true"), "{stdout}");
    assert!(setting("api.cluster_listen", "0.0.0.0:9925"), "{stdout}");
    let token_file = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("api.cluster_token_file"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("the cluster API has no token file:\n{stdout}"));
    let mounts = container["volumeMounts"].as_sequence().expect("mounts");
    let token_mount = mounts
        .iter()
        .find(|m| m["name"].as_str() == Some("api-token"))
        .expect("the token is mounted");
    let token_dir = token_mount["mountPath"].as_str().expect("mountPath");
    assert!(
        token_file.starts_with(token_dir),
        "{token_file} not under {token_dir}"
    );
    let secret = pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["name"].as_str() == Some("api-token"))
        .expect("the token volume");
    assert_eq!(
        secret["secret"]["secretName"].as_str(),
        Some("hangwatch-api-token")
    );
    assert!(
        stdout.contains("namespace = \"kube-system\" -> stuck_exit 35s"),
        "{stdout}"
    );
}

/// docs/security.md in the manifests: the NetworkPolicy lets only Prometheus reach
/// /metrics, the reader Role reads the token Secret, the pod is node-critical (the API's
/// settings are checked with the ConfigMap above).
#[test]
fn the_pod_network_reaches_only_metrics_and_the_pod_is_node_critical() {
    let core = deploy_dir().join("core");
    let daemonset = yaml(&core.join("daemonset.yaml"));
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(
        pod["priorityClassName"].as_str(),
        Some("system-node-critical")
    );
    let policy = yaml(&core.join("networkpolicy.yaml"));
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str(),
        Some("hangwatch")
    );
    let rules = policy["spec"]["ingress"].as_sequence().expect("ingress");
    let metrics_rule = rules
        .iter()
        .find(|r| r["ports"][0]["port"].as_str() == Some("metrics"))
        .expect("a rule for the metrics port");
    assert_eq!(
        metrics_rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str(),
        Some("prometheus"),
        "only Prometheus scrapes"
    );
    let reader = yaml(&core.join("rbac-reader.yaml"));
    assert!(
        serde_yaml_ng::to_string(&reader["rules"])
            .expect("yaml")
            .contains("hangwatch-api-token"),
        "the reader Role reads the token Secret, and only it"
    );
}

/// The stale top-level copy of the DaemonSet is gone: every manifest under deploy/ is in a
/// kustomization.
#[test]
fn every_manifest_is_in_a_kustomization() {
    let deploy = deploy_dir();
    let mut listed = Vec::new();
    for dir in [
        deploy.clone(),
        deploy.join("core"),
        deploy.join("monitoring"),
    ] {
        let k = yaml(&dir.join("kustomization.yaml"));
        for r in k["resources"].as_sequence().into_iter().flatten() {
            listed.push(dir.join(r.as_str().expect("a path")));
        }
    }
    for dir in [
        deploy.clone(),
        deploy.join("core"),
        deploy.join("monitoring"),
    ] {
        for entry in fs::read_dir(&dir).expect("read deploy/") {
            let path = entry.expect("entry").path();
            let manifest = path.extension().is_some_and(|e| e == "yaml")
                && path.file_name().is_some_and(|n| n != "kustomization.yaml");
            assert!(
                !manifest || listed.contains(&path),
                "{} is in no kustomization",
                path.display()
            );
        }
    }
}

/// GitHub's anchor of a Markdown heading: lower case, spaces to dashes, punctuation gone.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Every alert links to its section of docs/runbooks.md, and that section exists.
#[test]
fn every_alert_has_a_runbook_section() {
    let runbooks_path = deploy_dir().join("../docs/runbooks.md");
    let runbooks = fs::read_to_string(&runbooks_path).expect("read docs/runbooks.md");
    let anchors: Vec<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(anchor)
        .collect();
    let rule = yaml(&deploy_dir().join("monitoring/prometheusrule.yaml"));
    let mut alerts = 0;
    for group in rule["spec"]["groups"].as_sequence().expect("groups") {
        for r in group["rules"].as_sequence().expect("rules") {
            let Some(alert) = r["alert"].as_str() else {
                continue;
            };
            alerts += 1;
            let url = r["annotations"]["runbook_url"]
                .as_str()
                .unwrap_or_else(|| panic!("{alert} has no runbook_url"));
            let (page, fragment) = url
                .split_once('#')
                .unwrap_or_else(|| panic!("{alert}: {url} has no #anchor"));
            assert!(page.ends_with("/docs/runbooks.md"), "{alert}: {url}");
            assert_eq!(
                fragment,
                anchor(alert),
                "{alert}: the anchor is the alert's name"
            );
            assert!(
                anchors.iter().any(|a| a == fragment),
                "{alert}: docs/runbooks.md has no section `## {alert}` (anchors: {anchors:?})"
            );
        }
    }
    assert!(alerts >= 9, "{alerts} alerts");
}

/// The dashboard selects a cluster: the variable exists and every query is filtered by it.
#[test]
fn the_dashboard_queries_follow_the_cluster_variable() {
    let path = deploy_dir().join("monitoring/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).expect("read the dashboard"))
            .expect("dashboard JSON");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    let cluster = variables
        .iter()
        .find(|v| v["name"] == "cluster")
        .expect("a `cluster` variable");
    assert!(
        cluster["definition"]
            .as_str()
            .is_some_and(|d| d.contains("cluster)")),
        "{cluster}"
    );
    let node = variables
        .iter()
        .find(|v| v["name"] == "node")
        .expect("a `node` variable");
    assert!(
        node["definition"]
            .as_str()
            .is_some_and(|d| d.contains("cluster=~\"$cluster\"")),
        "the node list follows the cluster: {node}"
    );
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            queries += 1;
            assert!(
                expr.contains("cluster=~\"$cluster\""),
                "panel {}: {expr}",
                panel["title"]
            );
        }
    }
    assert!(queries > 10, "{queries} queries");
}
