//! `stuck_exit`: a process asked to exit (SIGTERM, SIGINT or SIGQUIT from another process)
//! that has not exited within its grace time. One episode per process, whatever the number
//! of signals; it ends when the process exits. A ^C or ^\ typed at a terminal comes from
//! the kernel and is left out: interactive programs (shells, REPLs) handle those and go on
//! on purpose.
use std::time::Duration;

use super::{Candidate, reached};
use crate::{
    kind::HangKind,
    state::{ExitRequest, exits::SIGTERM},
};

#[derive(Debug, Clone)]
pub struct StuckExit {
    pub grace: Duration,
}

impl StuckExit {
    /// stuck_exit's threshold check: `grace` has passed since the process was first asked
    /// to exit.
    pub fn crossed(grace: Duration, request: &ExitRequest, now_ns: u64) -> bool {
        reached(now_ns.saturating_sub(request.first_at_ns), grace)
    }

    pub fn check(&self, request: &ExitRequest, now_ns: u64) -> Option<Candidate> {
        if request.from_kernel && request.sig != SIGTERM {
            return None;
        }
        Self::crossed(self.grace, request, now_ns).then(|| Candidate {
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
    use crate::state::{
        ThreadKey,
        exits::{SIGINT, SIGQUIT},
    };

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
            sender_pid: Some(1),
            sender_comm: Some("systemd".into()),
            found: crate::state::exits::ExitFound::SignalSent,
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
