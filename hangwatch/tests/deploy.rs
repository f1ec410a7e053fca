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
        assert!(report.contains("9 objects valid"), "{report}");
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
