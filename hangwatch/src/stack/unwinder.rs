//! The unwinder process: user stacks are unwound and symbolized in a child process
//! (`hangwatch unwinder`, hidden), because doing so reads the watched programs' module
//! files, and a read of a file on a FUSE mount whose server took the request and never
//! answers cannot be interrupted, not even by SIGKILL (`meta::helper` says why that must
//! not happen in the daemon). What it is asked, what it answers, and its main loop.
//!
//! The caches (unwind tables, symbolizers, Python layouts) live in the helper: a helper
//! killed for a missed deadline takes them along, and the next one starts cold.
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    UserRegisters, UserStacks,
    on_cpu::{self, SampleError},
    taker::{UnwoundSample, unwind_sample},
    user::UserStack,
};
use crate::meta::reader::FileId;

/// One request to the unwinder.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// Module files not to read (they resisted a read), and why.
    pub avoid: Vec<(FileId, String)>,
    pub task: Task,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// The user stack of blocked thread `tid` from its saved registers.
    Capture {
        pid: u32,
        tid: u32,
        regs: UserRegisters,
    },
    /// One perf sample of running thread `tid`, its user stack unwound.
    Sample {
        pid: u32,
        tid: u32,
        timeout: Duration,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub answer: Answer,
    /// What the unwinder spent and counted since its previous reply.
    pub figures: Figures,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Stack(Box<UserStack>),
    Sampled(Sampled),
}

/// A sample of a running thread, or why there is none.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampled {
    Unwound(Box<UnwoundSample>),
    /// It did not run within the timeout: it went off-CPU (its saved registers serve).
    NotRunning,
    Failed(String),
}

/// Counters of the unwinder, as increments since its previous reply.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figures {
    pub spent: Duration,
    pub captured: u64,
    pub module_hits: u64,
    pub module_misses: u64,
    pub sections_refused: u64,
    pub symbolizer_paths_evicted: u64,
    pub symbolizer_rebuilds: u64,
}

impl Figures {
    /// The totals of this process now.
    fn of(user: &UserStacks) -> Self {
        let (module_hits, module_misses) = user.module_cache();
        let (symbolizer_paths_evicted, symbolizer_rebuilds) = super::user::symbolizer::evictions();
        Self {
            spent: user.spent,
            captured: user.captured,
            module_hits,
            module_misses,
            sections_refused: super::user::sections_refused(),
            symbolizer_paths_evicted,
            symbolizer_rebuilds,
        }
    }

    fn since(self, before: Self) -> Self {
        Self {
            spent: self.spent.saturating_sub(before.spent),
            captured: self.captured.saturating_sub(before.captured),
            module_hits: self.module_hits.saturating_sub(before.module_hits),
            module_misses: self.module_misses.saturating_sub(before.module_misses),
            sections_refused: self
                .sections_refused
                .saturating_sub(before.sections_refused),
            symbolizer_paths_evicted: self
                .symbolizer_paths_evicted
                .saturating_sub(before.symbolizer_paths_evicted),
            symbolizer_rebuilds: self
                .symbolizer_rebuilds
                .saturating_sub(before.symbolizer_rebuilds),
        }
    }
}

/// `hangwatch unwinder`: answers the daemon's requests until it closes the pipe.
pub fn serve() -> anyhow::Result<()> {
    let mut user = UserStacks::new();
    let mut published = Figures::default();
    crate::meta::helper::serve(move |request: Request| {
        user.avoid_files(request.avoid.into_iter().collect());
        let answer = match request.task {
            Task::Capture { pid, tid, regs } => {
                Answer::Stack(Box::new(user.capture(pid, tid, regs)))
            }
            Task::Sample { pid, tid, timeout } => {
                Answer::Sampled(match on_cpu::sample_running(tid, timeout) {
                    Ok(sample) => Sampled::Unwound(Box::new(unwind_sample(&mut user, pid, sample))),
                    Err(SampleError::NoSample { .. }) => Sampled::NotRunning,
                    Err(err) => Sampled::Failed(err.to_string()),
                })
            }
        };
        let now = Figures::of(&user);
        let figures = now.since(published);
        published = now;
        Reply { answer, figures }
    })
}
