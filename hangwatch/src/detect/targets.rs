//! Which processes `off_cpu` watches: the `--pid`s given, and the processes whose name is
//! one of the `--comm`s, looked up in /proc at most once a second so new ones are found.
use std::{
    collections::HashSet,
    fs,
    time::{Duration, Instant},
};

use super::Selected;

const COMM_REFRESH: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct Targets {
    pids: Vec<u32>,
    comms: Vec<String>,
    by_comm: HashSet<u32>,
    refreshed: Option<Instant>,
}

impl Targets {
    pub fn new(pids: Vec<u32>, comms: Vec<String>) -> Self {
        Self {
            pids,
            comms,
            ..Self::default()
        }
    }

    /// The selected tgids now.
    pub fn resolve(&mut self, now: Instant) -> Selected {
        if !self.comms.is_empty()
            && self
                .refreshed
                .is_none_or(|at| now.duration_since(at) >= COMM_REFRESH)
        {
            self.by_comm = processes_named(&self.comms);
            self.refreshed = Some(now);
        }
        self.pids
            .iter()
            .copied()
            .chain(self.by_comm.iter().copied())
            .collect()
    }
}

fn processes_named(comms: &[String]) -> HashSet<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return HashSet::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comms.iter().any(|c| c == comm.trim_end()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_process_by_name() {
        let me = std::process::id();
        let comm = fs::read_to_string(format!("/proc/{me}/comm")).expect("own comm");
        let mut targets = Targets::new(vec![1], vec![comm.trim_end().to_owned()]);
        let selected = targets.resolve(Instant::now());
        assert!(selected.contains(&me), "{selected:?}");
        assert!(selected.contains(&1));
    }
}
