//! Rules: which processes a rule selects, and the threshold it sets per hang kind.
//!
//! A process's thresholds start from the base (each kind's default, or the flag or
//! top-level key that sets it) and every rule that matches the process, in order, sets the
//! kinds it names: the last matching rule wins, kind by kind. So a broad rule first and
//! narrower exceptions after it read the way they apply.
use std::{collections::BTreeMap, fmt, time::Duration};

use globset::{GlobBuilder, GlobMatcher};

use crate::{
    kind::{HangKind, PerKind, Scope},
    meta::pods::PodRef,
};

/// What a rule does to one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// Silenced for the processes the rule selects.
    Off,
    /// Reported after this long.
    After(Duration),
}

impl Setting {
    pub fn duration(self) -> Option<Duration> {
        match self {
            Self::Off => None,
            Self::After(d) => Some(d),
        }
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::After(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

/// The facts about a process that rules select on, from the process metadata cache.
/// Kubernetes facts (namespace, pod, container) go here beside a selector field each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Process<'a> {
    pub pid: u32,
    pub comm: &'a str,
    pub exe: Option<&'a str>,
    pub cgroup: Option<&'a str>,
    /// Its pod, when hangwatch watches this node's pods and knows it.
    pub pod: Option<&'a PodRef>,
}

/// The processes a rule applies to: every field given must match (an empty selector is
/// refused when the file is read). Adding a selector is a field here, its line in
/// `matches` (the destructuring makes the compiler ask), and its key in `file.rs`.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    pub pid: Option<u32>,
    /// The process name (`/proc/PID/comm`, at most 15 bytes).
    pub comm: Option<Pattern>,
    /// The executable's path (`/proc/PID/exe`).
    pub exe: Option<Pattern>,
    /// The cgroup v2 path (`/proc/PID/cgroup`): this cgroup or any below it.
    pub cgroup: Option<CgroupPattern>,
    /// The Kubernetes namespace, pod name and container name of its pod (known when
    /// hangwatch watches the node's pods: `--node-name`).
    pub namespace: Option<Pattern>,
    pub pod: Option<Pattern>,
    pub container: Option<Pattern>,
    /// Pod labels that must all be there, each value matching.
    pub labels: BTreeMap<String, Pattern>,
}

impl Selector {
    pub fn matches(&self, p: &Process<'_>) -> bool {
        let Self {
            pid,
            comm,
            exe,
            cgroup,
            namespace,
            pod,
            container,
            labels,
        } = self;
        let of_pod = |pattern: &Option<Pattern>, field: fn(&PodRef) -> Option<&str>| {
            pattern
                .as_ref()
                .is_none_or(|want| p.pod.and_then(field).is_some_and(|v| want.matches(v)))
        };
        pid.is_none_or(|pid| pid == p.pid)
            && comm.as_ref().is_none_or(|c| c.matches(p.comm))
            && exe
                .as_ref()
                .is_none_or(|e| p.exe.is_some_and(|exe| e.matches(exe)))
            && cgroup
                .as_ref()
                .is_none_or(|c| p.cgroup.is_some_and(|cg| c.matches(cg)))
            && of_pod(namespace, |r| Some(&r.namespace))
            && of_pod(pod, |r| Some(&r.pod))
            && of_pod(container, |r| r.container.as_deref())
            && labels.iter().all(|(key, want)| {
                p.pod
                    .and_then(|r| r.labels.get(key))
                    .is_some_and(|v| want.matches(v))
            })
    }

    pub fn is_empty(&self) -> bool {
        let Self {
            pid,
            comm,
            exe,
            cgroup,
            namespace,
            pod,
            container,
            labels,
        } = self;
        pid.is_none()
            && comm.is_none()
            && exe.is_none()
            && cgroup.is_none()
            && namespace.is_none()
            && pod.is_none()
            && container.is_none()
            && labels.is_empty()
    }

    /// Whether the selector names nothing but a pid (then the process needs no look-up
    /// to be found, only to be checked).
    fn pid_only(&self) -> Option<u32> {
        let others = Self {
            pid: None,
            ..self.clone()
        };
        self.pid.filter(|_| others.is_empty())
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            pid,
            comm,
            exe,
            cgroup,
            namespace,
            pod,
            container,
            labels,
        } = self;
        let mut parts = Vec::new();
        if let Some(pid) = pid {
            parts.push(format!("pid = {pid}"));
        }
        if let Some(comm) = comm {
            parts.push(format!("comm = {:?}", comm.text()));
        }
        if let Some(exe) = exe {
            parts.push(format!("exe = {:?}", exe.text()));
        }
        if let Some(cgroup) = cgroup {
            parts.push(format!("cgroup = {:?}", cgroup.0.text()));
        }
        for (key, value) in [
            ("namespace", namespace),
            ("pod", pod),
            ("container", container),
        ] {
            if let Some(v) = value {
                parts.push(format!("{key} = {:?}", v.text()));
            }
        }
        if !labels.is_empty() {
            let pairs: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k:?} = {:?}", v.text()))
                .collect();
            parts.push(format!("labels = {{ {} }}", pairs.join(", ")));
        }
        f.write_str(&parts.join(", "))
    }
}

/// A name or path to match: exactly, or as a glob when it has `*`, `?`, `[` or `{`.
#[derive(Debug, Clone)]
pub struct Pattern {
    text: String,
    glob: Option<GlobMatcher>,
}

impl Pattern {
    /// Matches `text` exactly (what `--comm` does).
    pub fn exact(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            glob: None,
        }
    }

    /// A glob when `text` has glob characters, else exact. For a path, `*` stops at `/`
    /// and `**` crosses it.
    pub fn glob(text: &str, path: bool) -> Result<Self, String> {
        if !text.contains(['*', '?', '[', '{']) {
            return Ok(Self::exact(text));
        }
        let glob = GlobBuilder::new(text)
            .literal_separator(path)
            .build()
            .map_err(|e| format!("bad glob: {}", e.kind()))?;
        Ok(Self {
            text: text.to_owned(),
            glob: Some(glob.compile_matcher()),
        })
    }

    pub fn matches(&self, s: &str) -> bool {
        match &self.glob {
            Some(glob) => glob.is_match(s),
            None => self.text == s,
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

/// A cgroup path or glob; matches that cgroup and every cgroup below it.
#[derive(Debug, Clone)]
pub struct CgroupPattern(Pattern);

impl CgroupPattern {
    pub fn new(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err("a cgroup path starts with / (as in /proc/PID/cgroup)".into());
        }
        let trimmed = if text.len() > 1 {
            text.trim_end_matches('/')
        } else {
            text
        };
        Pattern::glob(trimmed, true).map(Self)
    }

    pub fn matches(&self, cgroup: &str) -> bool {
        if self.0.text == "/" {
            return true;
        }
        // The cgroup itself, then each ancestor: "/a/b/c", "/a/b", "/a".
        let mut path = cgroup;
        loop {
            if self.0.matches(path) {
                return true;
            }
            match path.rfind('/') {
                Some(0) | None => return false,
                Some(i) => path = &path[..i],
            }
        }
    }
}

/// One rule: whom it selects, what it sets, and where it came from (for `check-config`).
#[derive(Debug, Clone)]
pub struct Rule {
    pub selector: Selector,
    pub set: PerKind<Option<Setting>>,
    /// `FILE:LINE` of its table, or the flag or key it stands for.
    pub origin: String,
}

impl Rule {
    /// What the rule does, without its origin: `comm = "app*" -> off_cpu 30s, lock_wait off`.
    pub fn describe(&self) -> String {
        let set: Vec<String> = self
            .set
            .iter()
            .filter_map(|(kind, s)| Some(format!("{kind} {}", s.as_ref()?)))
            .collect();
        format!("{} -> {}", self.selector, set.join(", "))
    }
}

/// The base thresholds and the rules, as the detectors ask them.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The threshold of each kind for every process before any rule; `None` is off.
    pub base: PerKind<Option<Duration>>,
    pub rules: Vec<Rule>,
}

impl Default for Rules {
    /// MISSION.md's defaults: the `Everywhere` kinds on, the `Selected` ones off.
    fn default() -> Self {
        Self {
            base: PerKind::from_fn(|kind| {
                let d = kind.default_rule();
                (d.scope == Scope::Everywhere).then_some(d.threshold)
            }),
            rules: Vec::new(),
        }
    }
}

impl Rules {
    /// The thresholds of every kind for process `p`.
    pub fn thresholds_for(&self, p: &Process<'_>) -> PerKind<Option<Duration>> {
        let mut out = self.base;
        for rule in self.rules.iter().filter(|r| r.selector.matches(p)) {
            for (kind, setting) in rule.set.iter() {
                if let Some(setting) = setting {
                    out[kind] = setting.duration();
                }
            }
        }
        out
    }

    /// One line for the log: each kind's base threshold and how many rules set it.
    pub fn summary(&self) -> String {
        HangKind::ALL
            .into_iter()
            .map(|kind| {
                let base = match self.base[kind] {
                    Some(d) => format!("after {}", humantime::format_duration(d)),
                    None if kind.default_rule().scope == Scope::Selected => {
                        "only where selected".to_owned()
                    }
                    None => "off".to_owned(),
                };
                match self.rules.iter().filter(|r| r.set[kind].is_some()).count() {
                    0 => format!("{kind} {base}"),
                    n => format!("{kind} {base} ({n} rule(s) set it)"),
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The smallest threshold any process can have for `kind`; `None` if off for all.
    pub fn smallest(&self, kind: HangKind) -> Option<Duration> {
        self.rules
            .iter()
            .filter_map(|r| r.set[kind].and_then(Setting::duration))
            .chain(self.base[kind])
            .min()
    }

    /// No rule sets `kind`: every process has the base threshold, no look-up needed.
    pub fn uniform(&self, kind: HangKind) -> bool {
        self.rules.iter().all(|r| r.set[kind].is_none())
    }

    /// The rules that can turn on a kind watched only in selected processes.
    fn selecting(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(|r| {
            r.set.iter().any(|(kind, s)| {
                kind.default_rule().scope == Scope::Selected && matches!(s, Some(Setting::After(_)))
            })
        })
    }

    /// Whether finding the selected processes takes a look at every process (some rule
    /// selects by name, path or cgroup), or the pids the rules name are enough.
    pub fn selects_by_facts(&self) -> bool {
        self.selecting().any(|r| r.selector.pid_only().is_none())
    }

    /// The pids named by rules that can turn on a selected-only kind.
    pub fn selected_pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.selecting().filter_map(|r| r.selector.pid)
    }

    /// Whether any selected-only kind is on in `thresholds`.
    pub fn is_selected(thresholds: &PerKind<Option<Duration>>) -> bool {
        thresholds
            .iter()
            .any(|(kind, t)| kind.default_rule().scope == Scope::Selected && t.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn rule(selector: Selector, set: &[(HangKind, Setting)]) -> Rule {
        let mut per = PerKind::default();
        for (kind, setting) in set {
            per[*kind] = Some(*setting);
        }
        Rule {
            selector,
            set: per,
            origin: "test".into(),
        }
    }

    fn comm(text: &str) -> Selector {
        Selector {
            comm: Some(Pattern::glob(text, false).expect("glob")),
            ..Selector::default()
        }
    }

    fn process<'a>(pid: u32, comm: &'a str, exe: &'a str, cgroup: &'a str) -> Process<'a> {
        Process {
            pid,
            comm,
            exe: Some(exe),
            cgroup: Some(cgroup),
            pod: None,
        }
    }

    #[test]
    fn defaults_are_the_missions() {
        let rules = Rules::default();
        let t = rules.thresholds_for(&process(1, "init", "/sbin/init", "/"));
        assert_eq!(t[HangKind::DState], Some(S(10)));
        assert_eq!(t[HangKind::LockWait], Some(S(5)));
        assert_eq!(t[HangKind::Deadlock], Some(S(1)));
        assert_eq!(t[HangKind::OffCpu], None);
        assert!(!rules.selects_by_facts());
    }

    #[test]
    fn later_matching_rules_override_earlier_ones_kind_by_kind() {
        let rules = Rules {
            rules: vec![
                rule(
                    comm("py*"),
                    &[
                        (HangKind::OffCpu, Setting::After(S(30))),
                        (HangKind::LockWait, Setting::Off),
                    ],
                ),
                rule(comm("python3"), &[(HangKind::OffCpu, Setting::After(S(2)))]),
            ],
            ..Rules::default()
        };
        let python = rules.thresholds_for(&process(7, "python3", "/usr/bin/python3", "/"));
        assert_eq!(python[HangKind::OffCpu], Some(S(2)), "the later rule wins");
        assert_eq!(
            python[HangKind::LockWait],
            None,
            "the earlier one still applies"
        );
        assert_eq!(python[HangKind::DState], Some(S(10)), "untouched: the base");
        let pypy = rules.thresholds_for(&process(8, "pypy", "/usr/bin/pypy", "/"));
        assert_eq!(pypy[HangKind::OffCpu], Some(S(30)));
        let other = rules.thresholds_for(&process(9, "bash", "/bin/bash", "/"));
        assert_eq!(other[HangKind::OffCpu], None);
        assert_eq!(rules.smallest(HangKind::OffCpu), Some(S(2)));
        assert_eq!(rules.smallest(HangKind::LockWait), Some(S(5)));
        assert!(rules.uniform(HangKind::DState) && !rules.uniform(HangKind::LockWait));
        assert!(rules.selects_by_facts());
    }

    #[test]
    fn every_field_of_a_selector_must_match() {
        let s = Selector {
            pid: Some(7),
            exe: Some(Pattern::glob("/usr/**/python*", true).expect("glob")),
            cgroup: Some(CgroupPattern::new("/system.slice/app.service/").expect("cgroup")),
            ..Selector::default()
        };
        let p = process(
            7,
            "python3",
            "/usr/local/bin/python3.11",
            "/system.slice/app.service/worker",
        );
        assert!(s.matches(&p));
        assert!(!s.matches(&Process { pid: 8, ..p }));
        assert!(!s.matches(&Process { exe: None, ..p }));
        assert!(!s.matches(&Process {
            cgroup: Some("/system.slice/app.service2"),
            ..p
        }));
        let rules = Rules {
            rules: vec![rule(s, &[(HangKind::OffCpu, Setting::After(S(1)))])],
            ..Rules::default()
        };
        assert!(rules.selects_by_facts());
    }

    #[test]
    fn globs_in_paths_stop_at_slashes() {
        let one = Pattern::glob("/usr/bin/*", true).expect("glob");
        assert!(one.matches("/usr/bin/python3"));
        assert!(!one.matches("/usr/bin/x/python3"));
        let any = Pattern::glob("**/lock_read", true).expect("glob");
        assert!(any.matches("/tmp/a/b/lock_read"));
        assert!(Pattern::glob("[", true).is_err());
        let cg = CgroupPattern::new("/kubepods.slice/*/cri-containerd-*.scope").expect("cgroup");
        assert!(cg.matches("/kubepods.slice/pod1/cri-containerd-abc.scope"));
        assert!(cg.matches("/kubepods.slice/pod1/cri-containerd-abc.scope/sub"));
        assert!(!cg.matches("/kubepods.slice/cri-containerd-abc.scope"));
        assert!(
            CgroupPattern::new("/")
                .expect("root")
                .matches("/user.slice")
        );
        assert!(CgroupPattern::new("user.slice").is_err());
    }

    #[test]
    fn pid_rules_need_no_look_up_of_every_process() {
        let rules = Rules {
            rules: vec![rule(
                Selector {
                    pid: Some(42),
                    ..Selector::default()
                },
                &[(HangKind::OffCpu, Setting::After(S(1)))],
            )],
            ..Rules::default()
        };
        assert!(!rules.selects_by_facts());
        assert_eq!(rules.selected_pids().collect::<Vec<_>>(), vec![42]);
    }
}
