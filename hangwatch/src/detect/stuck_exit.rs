//! `stuck_exit`: a process asked to exit (SIGTERM, SIGINT or SIGQUIT from another process)
//! that has not exited within its grace time. One episode per process, whatever the number
//! of signals; it ends when the process exits. A ^C or ^\ typed at a terminal comes from
//! the kernel and is left out: interactive programs (shells, REPLs) handle those and go on
//! on purpose.
use std::time::Duration;

use super::{Candidate, HangKind};
use crate::state::ThreadKey;

pub const SIGINT: u32 = 2;
pub const SIGQUIT: u32 = 3;
pub const SIGTERM: u32 = 15;

#[derive(Debug, Clone)]
pub struct StuckExit {
    pub grace: Duration,
}

/// A process that was sent an exit signal, as the daemon keeps it until the process exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitRequest {
    /// The thread the signal was sent to (the group leader for kill(2)).
    pub target: ThreadKey,
    pub tgid: u32,
    pub sig: u32,
    pub first_at_ns: u64,
    pub signals: u32,
    pub from_kernel: bool,
    pub sender_pid: u32,
    pub sender_comm: String,
}

impl ExitRequest {
    pub fn signal_name(&self) -> &'static str {
        match self.sig {
            SIGINT => "SIGINT",
            SIGQUIT => "SIGQUIT",
            SIGTERM => "SIGTERM",
            _ => "signal",
        }
    }
}

impl StuckExit {
    pub fn check(&self, request: &ExitRequest, now_ns: u64) -> Option<Candidate> {
        if request.from_kernel && request.sig != SIGTERM {
            return None;
        }
        let waited = now_ns.saturating_sub(request.first_at_ns);
        (u128::from(waited) >= self.grace.as_nanos()).then(|| Candidate {
            thread: request.target,
            tgid: request.tgid,
            kind: HangKind::StuckExit,
            threshold: self.grace,
            since_ns: request.first_at_ns,
            members: Vec::new(),
            reason: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn request(sig: u32, from_kernel: bool) -> ExitRequest {
        ExitRequest {
            target: ThreadKey {
                tid: 10,
                start_boottime_ns: 1,
            },
            tgid: 10,
            sig,
            first_at_ns: 5 * SEC,
            signals: 1,
            from_kernel,
            sender_pid: 1,
            sender_comm: "systemd".into(),
        }
    }

    #[test]
    fn after_the_grace_time_only() {
        let s = StuckExit {
            grace: Duration::from_secs(10),
        };
        assert!(s.check(&request(SIGTERM, false), 14 * SEC).is_none());
        let c = s.check(&request(SIGTERM, false), 15 * SEC).expect("10 s");
        assert_eq!((c.kind, c.since_ns), (HangKind::StuckExit, 5 * SEC));
        assert!(
            s.check(&request(SIGINT, false), 15 * SEC).is_some(),
            "kill -INT"
        );
        assert!(s.check(&request(SIGINT, true), 60 * SEC).is_none(), "^C");
        assert!(s.check(&request(SIGQUIT, true), 60 * SEC).is_none(), "^\\");
    }
}
