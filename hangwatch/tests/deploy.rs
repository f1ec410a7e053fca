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

use common::{deploy_dir, find_tool, prometheus_rules_file};

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
        assert!(report.contains("11 objects valid"), "{report}");
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

/// docs/security.md in the manifests: the per-process API is not on the pod network
/// without the token, the NetworkPolicy lets only Prometheus reach /metrics, the pod is
/// node-critical.
#[test]
fn the_daemonset_serves_the_api_only_with_a_token() {
    let deploy = deploy_dir();
    let read = |name: &str| -> serde_yaml_ng::Value {
        let path = deploy.join("core").join(name);
        let text =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("parsing {name}: {e}"))
    };
    let daemonset = read("daemonset.yaml");
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(
        pod["priorityClassName"].as_str(),
        Some("system-node-critical")
    );
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(
        !args.iter().any(|a| a.starts_with("--listen")),
        "the old all-in-one listener: {args:?}"
    );
    assert!(args.contains(&"--metrics-listen=0.0.0.0:9924"), "{args:?}");
    assert!(args.contains(&"--redact-kernel-addresses"), "{args:?}");
    let token_file = args
        .iter()
        .find_map(|a| a.strip_prefix("--cluster-api-token-file="))
        .expect("the cluster API has a token file");
    let mounts = container["volumeMounts"].as_sequence().expect("mounts");
    let token_mount = mounts
        .iter()
        .find(|m| m["name"].as_str() == Some("api-token"))
        .expect("the token is mounted");
    let mount_path = token_mount["mountPath"].as_str().expect("mountPath");
    assert!(
        token_file.starts_with(mount_path),
        "{token_file} not under {mount_path}"
    );
    let volumes = pod["volumes"].as_sequence().expect("volumes");
    let secret = volumes
        .iter()
        .find(|v| v["name"].as_str() == Some("api-token"))
        .expect("the token volume");
    assert_eq!(
        secret["secret"]["secretName"].as_str(),
        Some("hangwatch-api-token")
    );

    let policy = read("networkpolicy.yaml");
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
    let reader = read("rbac-reader.yaml");
    assert!(
        serde_yaml_ng::to_string(&reader["rules"])
            .expect("yaml")
            .contains("hangwatch-api-token"),
        "the reader Role reads the token Secret, and only it"
    );
}
