//! Each process's thresholds, from the rules and the process's facts (name, executable,
//! cgroup, from the process cache), resolved once per process and kept until its facts
//! change; and the processes selected for the kinds that watch only selected processes
//! (`off_cpu`), which the kernel-side filter needs as a set of tgids.
//!
//! Finding the selected processes looks at every process of the machine (one read of
//! `/proc/PID/stat` each, at most once a second) only when a rule selects by something else
//! than a pid; rules that only name pids are resolved from those pids.
use std::{
    collections::{HashMap, HashSet},
    fs,
    time::{Duration, Instant},
};

use super::{Selected, Thresholds};
use crate::{
    config::{Process, Rules},
    kind::{HangKind, PerKind},
    meta::ProcessCache,
};

const SELECTION_REFRESH: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Targets {
    rules: Rules,
    /// Per tgid: the version of the process facts they came from, and the thresholds.
    resolved: HashMap<u32, (u64, PerKind<Option<Duration>>)>,
    selected: Selected,
    /// The processes seen by the last look at every process (kept in the process cache).
    listed: HashSet<u32>,
    refreshed: Option<Instant>,
}

impl Targets {
    pub fn new(rules: Rules) -> Self {
        Self {
            rules,
            resolved: HashMap::new(),
            selected: Selected::new(),
            listed: HashSet::new(),
            refreshed: None,
        }
    }

    /// The tgids selected for a selected-only kind now, refreshed at most once a second.
    pub fn resolve(&mut self, processes: &mut ProcessCache, now: Instant) -> Selected {
        if self
            .refreshed
            .is_some_and(|at| now.duration_since(at) < SELECTION_REFRESH)
        {
            return self.selected.clone();
        }
        self.refreshed = Some(now);
        let candidates: Vec<u32> = if self.rules.selects_by_facts() {
            self.listed = all_processes();
            self.listed.iter().copied().collect()
        } else {
            self.rules.selected_pids().collect()
        };
        self.selected = candidates
            .into_iter()
            .filter(|&tgid| {
                self.thresholds(processes, tgid, now)
                    .is_some_and(|t| Rules::is_selected(&t))
            })
            .collect();
        self.selected.clone()
    }

    /// The selected tgids of the last [`Targets::resolve`].
    pub fn selected(&self) -> &Selected {
        &self.selected
    }

    /// Whether the entry of `tgid` in the process cache is still of use here.
    pub fn keeps(&self, tgid: u32) -> bool {
        self.listed.contains(&tgid) || self.selected.contains(&tgid)
    }

    /// Drops the thresholds of processes neither `live` nor kept for the selection.
    pub fn retain(&mut self, live: impl Fn(u32) -> bool) {
        let (listed, selected) = (&self.listed, &self.selected);
        self.resolved
            .retain(|&tgid, _| live(tgid) || listed.contains(&tgid) || selected.contains(&tgid));
    }

    /// The thresholds of `tgid` for one scan's detectors.
    pub fn lookup<'a>(&'a mut self, processes: &'a mut ProcessCache, now: Instant) -> Lookup<'a> {
        Lookup {
            targets: self,
            processes,
            now,
        }
    }

    /// Every kind's threshold for `tgid`; `None` when the process is gone.
    fn thresholds(
        &mut self,
        processes: &mut ProcessCache,
        tgid: u32,
        now: Instant,
    ) -> Option<PerKind<Option<Duration>>> {
        let (info, version) = processes.facts(tgid, now)?;
        if let Some((v, t)) = self.resolved.get(&tgid)
            && *v == version
        {
            return Some(*t);
        }
        let t = self.rules.thresholds_for(&Process {
            pid: tgid,
            comm: &info.comm,
            exe: info.exe.as_deref(),
            cgroup: info.cgroup.as_deref(),
            pod: info.pod.as_ref(),
        });
        self.resolved.insert(tgid, (version, t));
        Some(t)
    }
}

/// [`Thresholds`] from the rules, with the process cache at hand.
pub struct Lookup<'a> {
    targets: &'a mut Targets,
    processes: &'a mut ProcessCache,
    now: Instant,
}

impl Thresholds for Lookup<'_> {
    fn of(&mut self, kind: HangKind, tgid: u32) -> Option<Duration> {
        let rules = &self.targets.rules;
        if rules.uniform(kind) {
            return rules.base[kind];
        }
        // A process that is gone is reported by nobody; the base is as good as any.
        match self.targets.thresholds(self.processes, tgid, self.now) {
            Some(t) => t[kind],
            None => self.targets.rules.base[kind],
        }
    }
}

/// The tgids in /proc now.
fn all_processes() -> HashSet<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return HashSet::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Pattern, Rule, Selector, Setting};

    fn off_cpu_rule(selector: Selector) -> Rule {
        let mut set = PerKind::default();
        set[HangKind::OffCpu] = Some(Setting::After(Duration::from_secs(1)));
        set[HangKind::LockWait] = Some(Setting::Off);
        Rule {
            selector,
            set,
            origin: "test".into(),
        }
    }

    #[test]
    fn finds_this_process_by_name_and_pid_1_by_pid() {
        let me = std::process::id();
        let comm = fs::read_to_string(format!("/proc/{me}/comm")).expect("own comm");
        let rules = Rules {
            rules: vec![
                off_cpu_rule(Selector {
                    comm: Some(Pattern::exact(comm.trim_end())),
                    ..Selector::default()
                }),
                off_cpu_rule(Selector {
                    pid: Some(1),
                    ..Selector::default()
                }),
            ],
            ..Rules::default()
        };
        let mut targets = Targets::new(rules);
        let mut processes = ProcessCache::default();
        let now = Instant::now();
        let selected = targets.resolve(&mut processes, now);
        assert!(selected.contains(&me), "{selected:?}");
        assert!(selected.contains(&1));
        assert!(targets.keeps(me));
        let mut lookup = targets.lookup(&mut processes, now);
        assert_eq!(
            lookup.of(HangKind::OffCpu, me),
            Some(Duration::from_secs(1))
        );
        assert_eq!(lookup.of(HangKind::LockWait, me), None, "silenced");
        assert_eq!(
            lookup.of(HangKind::DState, me),
            Some(Duration::from_secs(10)),
            "no rule sets it: the base"
        );
    }
}
