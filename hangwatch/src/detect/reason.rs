//! Why a deadlock was reported: the rule that fired and the facts it relied on. Carried
//! from the detector through the episode to the event (`reason`), so that whoever reads
//! the report can check the claim against the stacks instead of taking it on trust.
use serde::Serialize;

/// Which of the deadlock rules fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadlockRule {
    /// A cycle of lock owners: each member waits on a lock the next one holds.
    LockCycle,
    /// A cycle of priority-inheritance locks that the kernel refused to close
    /// (`FUTEX_LOCK_PI` returned EDEADLK) and glibc turned into a wait for ever.
    PiPark,
    /// A whole process in which no thread can make progress and nothing outside can wake
    /// any of them.
    WholeProcess,
}

impl DeadlockRule {
    /// The name in events.
    pub fn name(self) -> &'static str {
        match self {
            Self::LockCycle => "lock_cycle",
            Self::PiPark => "pi_park",
            Self::WholeProcess => "whole_process",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadlockReason {
    pub rule: DeadlockRule,
    /// The facts the rule relied on, one sentence each.
    pub evidence: Vec<String>,
}
