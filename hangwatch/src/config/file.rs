//! The config file: TOML, one key per flag of `hangwatch run` (`--d-state-threshold` is
//! `d_state_threshold`) and `[[rule]]` tables. Unknown keys are refused; every error names
//! `FILE:LINE:COL` and the reason (toml's errors carry the byte span of the bad key or value).
use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{
    Deserialize, Deserializer,
    de::{self, MapAccess, Visitor},
};

use super::{
    CgroupPattern, Listen, OutputFormat, Pattern, Rule, Selector, Setting, SocketPath, WebhookUrl,
    parse_duration, parse_listen, parse_scan_interval, parse_setting, parse_socket, parse_webhook,
    value::from_str_with,
};
use crate::{
    kind::{HangKind, PerKind},
    logging::LogFormat,
};

/// The file as written. `None` and empty lists are keys the file does not set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `--pid`: processes whose threads `off_cpu` watches, with `threshold`.
    #[serde(default, deserialize_with = "pids")]
    pub pid: Vec<u32>,
    /// `--comm`: the same by process name (exact).
    #[serde(default)]
    pub comm: Vec<String>,
    /// `--threshold`: the `off_cpu` threshold of `pid` and `comm`.
    #[serde(default, deserialize_with = "duration")]
    pub threshold: Option<Duration>,
    #[serde(default, deserialize_with = "setting")]
    pub d_state_threshold: Option<Setting>,
    #[serde(default, deserialize_with = "setting")]
    pub lock_wait_threshold: Option<Setting>,
    #[serde(default, deserialize_with = "setting")]
    pub deadlock_threshold: Option<Setting>,
    #[serde(default, deserialize_with = "setting")]
    pub loop_stall_threshold: Option<Setting>,
    /// `--on-cpu-threshold`: the `on_cpu` threshold of `pid` and `comm`.
    #[serde(default, deserialize_with = "setting")]
    pub on_cpu_threshold: Option<Setting>,
    #[serde(default, deserialize_with = "setting")]
    pub stuck_exit_grace: Option<Setting>,
    #[serde(default, deserialize_with = "scan_interval")]
    pub scan_interval: Option<Duration>,
    pub output: Option<OutputFormat>,
    #[serde(default, deserialize_with = "listen")]
    pub listen: Option<Listen>,
    #[serde(default, deserialize_with = "webhook")]
    pub webhook: Option<WebhookUrl>,
    /// `--webhook-ca`: the CA certificates (PEM) an https webhook is checked against.
    pub webhook_ca: Option<PathBuf>,
    /// `--webhook-token-file`: the bearer token sent to the webhook.
    pub webhook_token_file: Option<PathBuf>,
    pub webhook_follow_redirects: Option<bool>,
    pub webhook_env_proxy: Option<bool>,
    /// `--log-format`: the daemon's own log on stderr.
    pub log_format: Option<LogFormat>,
    pub wakeup_probe: Option<bool>,
    pub futex_probes: Option<bool>,
    /// `[api]`: the per-process API's socket, the cluster listener, redaction.
    pub api: Option<ExposeFile>,
    /// `[[rule]]` tables, in file order.
    #[serde(default, rename = "rule")]
    pub rules: Vec<toml::Spanned<RuleTable>>,
    /// Where the file was read from, for the rules' origins.
    #[serde(skip)]
    pub path: String,
    /// The file's text, to turn spans into lines.
    #[serde(skip)]
    text: String,
}

fn pids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    Vec::<Pid>::deserialize(d).map(|pids| pids.into_iter().map(|p| p.0).collect())
}

/// A pid: a positive integer that fits a pid_t.
struct Pid(u32);

impl<'de> Deserialize<'de> for Pid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Pid;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a pid (a positive integer)")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Pid, E> {
                u32::try_from(v)
                    .ok()
                    .filter(|&p| p > 0 && i32::try_from(p).is_ok())
                    .map(Pid)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Pid, E> {
                i64::try_from(v)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
                    .and_then(|v| self.visit_i64(v))
            }
        }
        d.deserialize_i64(V)
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    from_str_with(d, "a duration such as \"5s\"", parse_duration).map(Some)
}

fn setting<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Setting>, D::Error> {
    from_str_with(d, "a duration such as \"5s\", or \"off\"", parse_setting).map(Some)
}

fn scan_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    from_str_with(d, "a duration such as \"200ms\"", parse_scan_interval).map(Some)
}

fn listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Listen>, D::Error> {
    from_str_with(
        d,
        "an address such as \"127.0.0.1:9924\", or \"off\"",
        parse_listen,
    )
    .map(Some)
}

fn webhook<'de, D: Deserializer<'de>>(d: D) -> Result<Option<WebhookUrl>, D::Error> {
    from_str_with(d, "an http:// or https:// URL", parse_webhook).map(Some)
}

fn socket<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketPath>, D::Error> {
    from_str_with(d, "an absolute path, or \"off\"", parse_socket).map(Some)
}

fn cluster_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Listen>, D::Error> {
    from_str_with(
        d,
        "an address such as \"0.0.0.0:9925\", or \"off\"",
        parse_listen,
    )
    .map(Some)
}

/// The config file's `[api]` table: the flags' twins.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExposeFile {
    #[serde(default, deserialize_with = "socket")]
    pub socket: Option<SocketPath>,
    pub socket_group: Option<String>,
    #[serde(default, deserialize_with = "cluster_listen")]
    pub cluster_listen: Option<Listen>,
    pub cluster_token_file: Option<PathBuf>,
    pub redact_kernel_addresses: Option<bool>,
    pub redact_cmdline: Option<bool>,
}

/// One `[[rule]]` table: selector keys and hang-kind keys side by side,
/// `comm = "gunicorn"`, `off_cpu = "30s"`, `lock_wait = "off"`.
#[derive(Debug, Clone, Default)]
pub struct RuleTable {
    pub selector: Selector,
    pub set: PerKind<Option<Setting>>,
}

/// The keys a rule may have besides the hang kinds.
const SELECTOR_KEYS: [&str; 8] = [
    "pid",
    "comm",
    "exe",
    "cgroup",
    "namespace",
    "pod",
    "container",
    "labels",
];

enum RuleKey {
    Pid,
    Comm,
    Exe,
    Cgroup,
    Namespace,
    Pod,
    Container,
    Labels,
    Kind(HangKind),
}

impl<'de> Deserialize<'de> for RuleKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Key;
        impl Visitor<'_> for Key {
            type Value = RuleKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a selector or a hang kind")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<RuleKey, E> {
                Ok(match key {
                    "pid" => RuleKey::Pid,
                    "comm" => RuleKey::Comm,
                    "exe" => RuleKey::Exe,
                    "cgroup" => RuleKey::Cgroup,
                    "namespace" => RuleKey::Namespace,
                    "pod" => RuleKey::Pod,
                    "container" => RuleKey::Container,
                    "labels" => RuleKey::Labels,
                    other => RuleKey::Kind(HangKind::from_name(other).ok_or_else(|| {
                        E::custom(format!(
                            "unknown key `{other}` in a rule: expected a selector ({}) or a hang kind ({})",
                            SELECTOR_KEYS.join(", "),
                            kind_names()
                        ))
                    })?),
                })
            }
        }
        d.deserialize_identifier(Key)
    }
}

fn kind_names() -> String {
    HangKind::ALL.map(HangKind::as_str).join(", ")
}

/// A rule's value, a newtype parsed from a string (`map.next_value` needs a type).
macro_rules! parsed {
    ($name:ident, $t:ty, $expecting:expr, $parse:expr) => {
        struct $name($t);
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                from_str_with(d, $expecting, $parse).map(Self)
            }
        }
    };
}

parsed!(CommValue, Pattern, "a process name or glob", |t| {
    if t.is_empty() {
        return Err("empty".into());
    }
    Pattern::glob(t, false)
});
parsed!(NameValue, Pattern, "a Kubernetes name or glob", |t| {
    if t.is_empty() {
        return Err("empty".into());
    }
    Pattern::glob(t, false)
});
parsed!(ExeValue, Pattern, "an executable path or glob", |t| {
    if !t.starts_with('/') && !t.starts_with('*') {
        return Err("an executable path is absolute (or starts with a glob: **/name)".into());
    }
    Pattern::glob(t, true)
});
parsed!(
    CgroupValue,
    CgroupPattern,
    "a cgroup path or glob",
    CgroupPattern::new
);
parsed!(
    SettingValue,
    Setting,
    "a duration such as \"5s\", or \"off\"",
    parse_setting
);

impl<'de> Deserialize<'de> for RuleTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Table;
        impl<'de> Visitor<'de> for Table {
            type Value = RuleTable;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rule table")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RuleTable, A::Error> {
                let mut rule = RuleTable::default();
                // TOML itself refuses a key given twice in one table.
                while let Some(key) = map.next_key::<RuleKey>()? {
                    match key {
                        RuleKey::Pid => rule.selector.pid = Some(map.next_value::<Pid>()?.0),
                        RuleKey::Comm => {
                            rule.selector.comm = Some(map.next_value::<CommValue>()?.0);
                        }
                        RuleKey::Exe => rule.selector.exe = Some(map.next_value::<ExeValue>()?.0),
                        RuleKey::Cgroup => {
                            rule.selector.cgroup = Some(map.next_value::<CgroupValue>()?.0);
                        }
                        RuleKey::Namespace => {
                            rule.selector.namespace = Some(map.next_value::<NameValue>()?.0);
                        }
                        RuleKey::Pod => rule.selector.pod = Some(map.next_value::<NameValue>()?.0),
                        RuleKey::Container => {
                            rule.selector.container = Some(map.next_value::<NameValue>()?.0);
                        }
                        RuleKey::Labels => {
                            rule.selector.labels = map
                                .next_value::<std::collections::BTreeMap<String, NameValue>>()?
                                .into_iter()
                                .map(|(k, v)| (k, v.0))
                                .collect();
                        }
                        RuleKey::Kind(kind) => {
                            rule.set[kind] = Some(map.next_value::<SettingValue>()?.0);
                        }
                    }
                }
                Ok(rule)
            }
        }
        d.deserialize_map(Table)
    }
}

/// A config file that cannot be used, with every reason found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
}

/// One thing wrong in a config file, where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}:{line}:{column}: {reason}")]
pub struct Problem {
    pub path: String,
    pub line: usize,
    pub column: usize,
    pub reason: String,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    /// Parses `text`, read from `path` (which only names it in errors and origins).
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let problem = |offset: usize, reason: String| {
            let (line, column) = line_column(text, offset);
            Problem {
                path: path.to_owned(),
                line,
                column,
                reason,
            }
        };
        let mut file: Self = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            ConfigError::Invalid(vec![problem(offset, e.message().trim_end().to_owned())])
        })?;
        // What serde cannot see within one value: a rule as a whole.
        let problems: Vec<Problem> = file
            .rules
            .iter()
            .filter_map(|rule| {
                let reason = if rule.get_ref().selector.is_empty() {
                    format!(
                        "this rule selects no process: give at least one of {}",
                        SELECTOR_KEYS.join(", ")
                    )
                } else if rule.get_ref().set.iter().all(|(_, s)| s.is_none()) {
                    format!(
                        "this rule sets no threshold: give at least one hang kind ({}) a duration or \"off\"",
                        kind_names()
                    )
                } else {
                    return None;
                };
                Some(problem(rule.span().start, reason))
            })
            .collect();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        file.path = path.to_owned();
        file.text = text.to_owned();
        Ok(file)
    }

    /// The `[[rule]]` tables as rules, each with its `FILE:LINE` as origin.
    pub fn rules(&self) -> Vec<Rule> {
        self.rules
            .iter()
            .map(|r| {
                let (line, _) = line_column(&self.text, r.span().start);
                let RuleTable { selector, set } = r.get_ref().clone();
                Rule {
                    selector,
                    set,
                    origin: format!("{}:{line}", self.path),
                }
            })
            .collect()
    }
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one problem of `text`, as (line, reason).
    fn refused(text: &str) -> (usize, String) {
        match ConfigFile::parse(text, "t.toml") {
            Ok(file) => panic!("accepted: {file:?}"),
            Err(ConfigError::Invalid(problems)) => {
                assert_eq!(problems.len(), 1, "{problems:?}");
                let p = &problems[0];
                assert_eq!(p.path, "t.toml");
                let shown = p.to_string();
                assert!(
                    shown.starts_with(&format!("t.toml:{}:{}: ", p.line, p.column)),
                    "{shown}"
                );
                (p.line, p.reason.clone())
            }
            Err(other) => panic!("{other}"),
        }
    }

    const EXAMPLE: &str = include_str!("../../../deploy/hangwatch.toml.example");

    #[test]
    fn the_example_config_parses() {
        let file = ConfigFile::parse(EXAMPLE, "hangwatch.toml.example").expect("valid");
        assert!(!file.rules().is_empty());
        assert!(
            file.rules()[0]
                .origin
                .starts_with("hangwatch.toml.example:")
        );
    }

    #[test]
    fn every_key_is_read() {
        let file = ConfigFile::parse(
            r#"
pid = [42]
comm = ["gunicorn"]
threshold = "2s"
d_state_threshold = "off"
lock_wait_threshold = "3s"
deadlock_threshold = "500ms"
scan_interval = "100ms"
output = "json"
listen = "off"
webhook = "https://127.0.0.1:9/hook"
webhook_ca = "/etc/hangwatch/ca.pem"
webhook_token_file = "/run/secrets/token"
webhook_follow_redirects = true
webhook_env_proxy = false
log_format = "json"
wakeup_probe = true
futex_probes = false

[[rule]]
exe = "/usr/bin/python3*"
cgroup = "/system.slice"
off_cpu = "30s"
lock_wait = "off"

[[rule]]
pid = 7
comm = "py*"
d_state = "1m"
deadlock = "2s"
"#,
            "t.toml",
        )
        .expect("valid");
        assert_eq!(file.pid, vec![42]);
        assert_eq!(file.comm, vec!["gunicorn".to_owned()]);
        assert_eq!(file.threshold, Some(Duration::from_secs(2)));
        assert_eq!(file.d_state_threshold, Some(Setting::Off));
        assert_eq!(
            file.deadlock_threshold,
            Some(Setting::After(Duration::from_millis(500)))
        );
        assert_eq!(file.scan_interval, Some(Duration::from_millis(100)));
        assert_eq!(file.output, Some(OutputFormat::Json));
        assert_eq!(file.listen, Some(Listen(None)));
        assert!(file.webhook.as_ref().is_some_and(WebhookUrl::is_https));
        assert_eq!(
            file.webhook_ca.as_deref(),
            Some(Path::new("/etc/hangwatch/ca.pem"))
        );
        assert_eq!(
            file.webhook_token_file.as_deref(),
            Some(Path::new("/run/secrets/token"))
        );
        assert_eq!(
            (file.webhook_follow_redirects, file.webhook_env_proxy),
            (Some(true), Some(false))
        );
        assert_eq!(file.log_format, Some(LogFormat::Json));
        assert_eq!(
            (file.wakeup_probe, file.futex_probes),
            (Some(true), Some(false))
        );
        let rules = file.rules();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].origin, "t.toml:20");
        assert_eq!(rules[1].origin, "t.toml:26");
        assert_eq!(
            rules[0].set[HangKind::OffCpu],
            Some(Setting::After(Duration::from_secs(30)))
        );
        assert_eq!(rules[0].set[HangKind::LockWait], Some(Setting::Off));
        assert_eq!(rules[1].selector.pid, Some(7));
        assert_eq!(
            rules[1].selector.to_string(),
            "pid = 7, comm = \"py*\"".to_owned()
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let (line, reason) = refused("scan_interval = \"1s\"\nscan_intervall = \"1s\"\n");
        assert_eq!(line, 2);
        assert!(reason.contains("scan_intervall"), "{reason}");
        let (line, reason) =
            refused("[[rule]]\ncomm = \"x\"\noff_cpu = \"1s\"\nexec = \"/bin/x\"\n");
        assert_eq!(line, 4);
        assert!(
            reason.contains("unknown key `exec`") && reason.contains("exe"),
            "{reason}"
        );
    }

    #[test]
    fn an_unknown_hang_kind_is_refused_naming_the_kinds() {
        let (line, reason) = refused("\n[[rule]]\ncomm = \"x\"\nlock_waits = \"1s\"\n");
        assert_eq!(line, 4);
        assert!(
            reason.contains("lock_waits") && reason.contains("lock_wait, deadlock"),
            "{reason}"
        );
    }

    #[test]
    fn bad_durations_are_refused_with_their_line() {
        let (line, reason) = refused("\n\nd_state_threshold = \"5 sekonds\"\n");
        assert_eq!(line, 3);
        assert!(reason.contains("sekonds"), "{reason}");
        let (line, reason) = refused("[[rule]]\ncomm = \"x\"\n\noff_cpu = \"5 sekonds\"\n");
        assert_eq!(line, 4);
        assert!(reason.contains("sekonds"), "{reason}");
        let (line, reason) = refused("scan_interval = \"1ms\"\n");
        assert_eq!(line, 1);
        assert!(reason.contains("between"), "{reason}");
    }

    #[test]
    fn bad_selectors_are_refused_with_their_line() {
        let (line, reason) = refused("[[rule]]\npid = \"abc\"\noff_cpu = \"1s\"\n");
        assert_eq!(line, 2);
        assert!(
            reason.contains("invalid type") && reason.contains("expected a pid"),
            "{reason}"
        );
        let (line, reason) = refused("[[rule]]\noff_cpu = \"1s\"\npid = -3\n");
        assert_eq!(line, 3);
        assert!(reason.contains("invalid value"), "{reason}");
        let (line, _) = refused("pid = [1, 0]\n");
        assert_eq!(line, 1);
        let (line, reason) = refused("[[rule]]\ncgroup = \"system.slice\"\noff_cpu = \"1s\"\n");
        assert_eq!(line, 2);
        assert!(reason.contains("starts with /"), "{reason}");
        let (line, reason) = refused("[[rule]]\nexe = \"/usr/bin/[\"\noff_cpu = \"1s\"\n");
        assert_eq!(line, 2);
        assert!(reason.contains("glob"), "{reason}");
        let (line, reason) =
            refused("[[rule]]\ncomm = \"a\"\noff_cpu = \"1s\"\n\n[[rule]]\noff_cpu = \"1s\"\n");
        assert_eq!(line, 5, "the empty rule's table");
        assert!(reason.contains("selects no process"), "{reason}");
        let (line, reason) = refused("# x\n[[rule]]\ncomm = \"a\"\n");
        assert_eq!(line, 2);
        assert!(reason.contains("sets no threshold"), "{reason}");
    }

    #[test]
    fn wrong_types_are_refused_with_their_line() {
        let (line, reason) = refused("wakeup_probe = \"yes\"\n");
        assert_eq!(line, 1);
        assert!(reason.contains("invalid type"), "{reason}");
        let (line, reason) = refused("\nlock_wait_threshold = 5\n");
        assert_eq!(line, 2);
        assert!(
            reason.contains("invalid type") && reason.contains("\"5s\""),
            "{reason}"
        );
        let (line, reason) = refused("pid = 42\n");
        assert_eq!(line, 1);
        assert!(reason.contains("invalid type"), "{reason}");
        let (line, reason) = refused("output = \"yaml\"\n");
        assert_eq!(line, 1);
        assert!(reason.contains("json"), "{reason}");
        let (line, _) = refused("rule = 3\n");
        assert_eq!(line, 1);
    }

    #[test]
    fn toml_syntax_errors_have_a_line_too() {
        let (line, _) = refused("a = 1\nb = \n");
        assert_eq!(line, 2);
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(line_column("ab\ncdé f", 8), (2, 5));
        assert_eq!(line_column("", 0), (1, 1));
    }
}

#[cfg(test)]
mod kubernetes_selector_tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        config::{Process, Rules},
        meta::pods::PodRef,
    };

    #[test]
    fn rules_select_by_namespace_pod_container_and_labels() {
        let file = ConfigFile::parse(
            r#"
[[rule]]
namespace = "payments"
pod = "api-*"
labels = { tier = "front*" }
loop_stall = "10s"

[[rule]]
namespace = "payments"
container = "sidecar"
stuck_exit = "off"
"#,
            "k8s.toml",
        )
        .expect("valid");
        let rules = Rules {
            rules: file.rules(),
            ..Rules::default()
        };
        let pod = |name: &str, container: &str, tier: &str| PodRef {
            namespace: "payments".into(),
            pod: name.into(),
            container: Some(container.into()),
            labels: BTreeMap::from([("tier".to_owned(), tier.to_owned())]),
        };
        let of = |pod: Option<&PodRef>| {
            rules.thresholds_for(&Process {
                pid: 7,
                comm: "api",
                exe: None,
                cgroup: None,
                pod,
            })
        };
        let api = pod("api-7f9c", "web", "frontend");
        assert_eq!(
            of(Some(&api))[HangKind::LoopStall],
            Some(Duration::from_secs(10))
        );
        assert!(of(Some(&api))[HangKind::StuckExit].is_some());
        let sidecar = pod("api-7f9c", "sidecar", "frontend");
        assert_eq!(of(Some(&sidecar))[HangKind::StuckExit], None, "silenced");
        let backend = pod("api-1", "web", "backend");
        assert_eq!(
            of(Some(&backend))[HangKind::LoopStall],
            Some(Duration::from_secs(2)),
            "a label that does not match"
        );
        assert_eq!(
            of(None)[HangKind::LoopStall],
            Some(Duration::from_secs(2)),
            "outside Kubernetes nothing matches a pod selector"
        );
        let err = ConfigFile::parse("[[rule]]\nnamespace = \"\"\nd_state = \"1s\"\n", "k.toml")
            .expect_err("empty namespace");
        assert!(err.to_string().starts_with("k.toml:2:"), "{err}");
    }
}
