//! The repository's `deploy/` directory and the Prometheus rules it ships.
use std::path::{Path, PathBuf};

/// The repository's deploy/ directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The PrometheusRule's `spec` as a Prometheus rules file; with `for_override`, every
/// alert's `for:` replaced (the end-to-end test cannot wait minutes).
pub fn prometheus_rules_file(for_override: Option<&str>) -> String {
    let text = std::fs::read_to_string(deploy_dir().join("monitoring/prometheusrule.yaml"))
        .expect("read prometheusrule.yaml");
    let rule: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("valid YAML");
    let mut spec = rule["spec"].clone();
    if let Some(duration) = for_override {
        let groups = spec["groups"].as_sequence_mut().expect("groups");
        for group in groups {
            for r in group["rules"].as_sequence_mut().expect("rules") {
                if let Some(map) = r.as_mapping_mut()
                    && map.contains_key("for")
                {
                    map.insert("for".into(), duration.into());
                }
            }
        }
    }
    serde_yaml_ng::to_string(&spec).expect("serializes")
}
