//! The hang kinds and what is kept per kind: the vocabulary every stage shares (the rules
//! set thresholds per kind, the detectors report a kind, events and metrics name it), so
//! it sits below all of them (docs/layout.md, "Layers").
use std::time::Duration;

use serde::Serialize;

/// The hang kinds. Their names are part of the contract (MISSION.md).
///
/// Adding a kind is this one place: the variant, its name in [`HangKind::as_str`], where it
/// is on and after how long in [`HangKind::default_rule`] (the compiler asks for both), and
/// its entry in [`HangKind::ALL`]. The config keys of a `[[rule]]`, `check-config`, the
/// per-kind threshold tables ([`PerKind`]), the metrics' series and the scan filter follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HangKind {
    DState,
    OffCpu,
    LockWait,
    Deadlock,
    LoopStall,
    OnCpu,
    StuckExit,
}

impl HangKind {
    /// Every kind, in declaration order ([`PerKind`] is indexed by it; a test checks).
    pub const ALL: [Self; 7] = [
        Self::DState,
        Self::OffCpu,
        Self::LockWait,
        Self::Deadlock,
        Self::LoopStall,
        Self::OnCpu,
        Self::StuckExit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::DState => "d_state",
            Self::OffCpu => "off_cpu",
            Self::LockWait => "lock_wait",
            Self::Deadlock => "deadlock",
            Self::LoopStall => "loop_stall",
            Self::OnCpu => "on_cpu",
            Self::StuckExit => "stuck_exit",
        }
    }

    /// The kind named `name` as in events and config keys (`"lock_wait"`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Where the kind is on before any rule, and its threshold there (MISSION.md's table).
    /// For a [`Scope::Selected`] kind the threshold is the one `--threshold` defaults to.
    pub fn default_rule(self) -> KindDefault {
        let (scope, threshold) = match self {
            Self::DState => (Scope::Everywhere, Duration::from_secs(10)),
            Self::OffCpu => (Scope::Selected, Duration::from_secs(5)),
            Self::LockWait => (Scope::Everywhere, Duration::from_secs(5)),
            // How long the deadlock must hold.
            Self::Deadlock => (Scope::Everywhere, Duration::from_secs(1)),
            // How long an event-loop thread may stay away from its wait.
            Self::LoopStall => (Scope::Everywhere, Duration::from_secs(2)),
            Self::OnCpu => (Scope::Selected, Duration::from_secs(5)),
            // The grace time after SIGTERM/SIGINT/SIGQUIT.
            Self::StuckExit => (Scope::Everywhere, Duration::from_secs(10)),
        };
        KindDefault { scope, threshold }
    }
}

impl std::fmt::Display for HangKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which processes a kind watches when no rule says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every process of the machine (quiet on idle waits by construction).
    Everywhere,
    /// Only the processes a rule (or `--pid`, `--comm`) selects: the kind would be noise
    /// machine-wide (any idle thread is off-CPU).
    Selected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindDefault {
    pub scope: Scope,
    pub threshold: Duration,
}

/// One value per hang kind: a fixed array indexed by [`HangKind`], so a table of thresholds
/// grows with the enum and a lookup is an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerKind<T>([T; HangKind::ALL.len()]);

impl<T> PerKind<T> {
    pub fn from_fn(mut f: impl FnMut(HangKind) -> T) -> Self {
        Self(HangKind::ALL.map(&mut f))
    }

    pub fn iter(&self) -> impl Iterator<Item = (HangKind, &T)> {
        HangKind::ALL.into_iter().zip(self.0.iter())
    }
}

impl<T: Default> Default for PerKind<T> {
    fn default() -> Self {
        Self::from_fn(|_| T::default())
    }
}

impl<T> std::ops::Index<HangKind> for PerKind<T> {
    type Output = T;
    fn index(&self, kind: HangKind) -> &T {
        &self.0[kind as usize]
    }
}

impl<T> std::ops::IndexMut<HangKind> for PerKind<T> {
    fn index_mut(&mut self, kind: HangKind) -> &mut T {
        &mut self.0[kind as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_in_all_in_declaration_order() {
        for (i, kind) in HangKind::ALL.into_iter().enumerate() {
            assert_eq!(kind as usize, i, "{kind}");
            assert_eq!(HangKind::from_name(kind.as_str()), Some(kind));
        }
        assert_eq!(HangKind::from_name("loop"), None);
    }
}
