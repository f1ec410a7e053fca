//! Processes asked to exit: the `signal_generate` probe's records, drained from the kernel
//! map every tick, and the requests that came before the daemon started
//! (`meta::early_exits`), kept here until the process is gone.
use std::collections::HashMap;

use hangwatch_ebpf::{EXIT_SIGNAL_FROM_KERNEL, ExitSignal};

use super::ThreadKey;

pub const SIGINT: u32 = 2;
pub const SIGQUIT: u32 = 3;
pub const SIGTERM: u32 = 15;

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
    /// Who sent it, when known (not for a signal pending since before the daemon, nor for
    /// one a plain handler is handling).
    pub sender_pid: Option<u32>,
    pub sender_comm: Option<String>,
    pub found: ExitFound,
}

/// How the daemon knows the process was asked to exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitFound {
    /// The probe saw the signal sent.
    SignalSent,
    /// At the daemon's start, thread `tid` was in its handler of the signal (its stack's
    /// signal frame), and still is: the signal came before the daemon.
    InHandler { tid: u32 },
    /// At the daemon's start the signal was pending, blocked by every thread, and still
    /// is.
    Pending,
}

impl ExitFound {
    /// The name reports give it (`exit.found`).
    pub fn name(self) -> &'static str {
        match self {
            Self::SignalSent => "signal_sent",
            Self::InHandler { .. } => "in_handler",
            Self::Pending => "pending",
        }
    }

    pub fn before_start(self) -> bool {
        self != Self::SignalSent
    }
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

#[derive(Debug, Default)]
pub struct ExitTable {
    by_tgid: HashMap<u32, ExitRequest>,
}

impl ExitTable {
    /// Folds newly drained signals in: the first signal to a process is kept, later ones
    /// only count (unless the pid now names another process).
    pub fn merge(&mut self, drained: impl IntoIterator<Item = (u32, ExitSignal)>) {
        for (tgid, signal) in drained {
            let request = request_of(tgid, &signal);
            match self.by_tgid.get_mut(&tgid) {
                Some(known) if known.target == request.target => {
                    known.signals = known.signals.saturating_add(signal.count);
                }
                _ => {
                    self.by_tgid.insert(tgid, request);
                }
            }
        }
    }

    /// Adds a request found otherwise than by the probe (`meta::early_exits`), unless
    /// the process has one already.
    pub fn insert_found(&mut self, request: ExitRequest) {
        self.by_tgid.entry(request.tgid).or_insert(request);
    }

    /// Keeps the requests whose process is still there.
    pub fn retain(&mut self, mut alive: impl FnMut(&ExitRequest) -> bool) {
        self.by_tgid.retain(|_, r| alive(r));
    }

    pub fn requests(&self) -> Vec<ExitRequest> {
        self.by_tgid.values().cloned().collect()
    }

    pub fn get(&self, tgid: u32) -> Option<&ExitRequest> {
        self.by_tgid.get(&tgid)
    }

    pub fn len(&self) -> usize {
        self.by_tgid.len()
    }
}

fn request_of(tgid: u32, signal: &ExitSignal) -> ExitRequest {
    let name_len = signal
        .sender_comm
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(16);
    ExitRequest {
        target: ThreadKey {
            tid: signal.target_tid,
            start_boottime_ns: signal.target_start_boottime_ns,
        },
        tgid,
        sig: signal.sig,
        first_at_ns: signal.first_at_ns,
        signals: signal.count,
        from_kernel: signal.flags & EXIT_SIGNAL_FROM_KERNEL != 0,
        sender_pid: Some(signal.sender_tgid),
        sender_comm: Some(String::from_utf8_lossy(&signal.sender_comm[..name_len]).into_owned()),
        found: ExitFound::SignalSent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(tid: u32, start: u64, at: u64) -> ExitSignal {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"kill");
        ExitSignal {
            first_at_ns: at,
            last_at_ns: at,
            target_start_boottime_ns: start,
            target_tid: tid,
            sender_tgid: 1,
            sender_comm: comm,
            sig: 15,
            count: 1,
            flags: 0,
            _pad: 0,
        }
    }

    #[test]
    fn keeps_the_first_signal_and_counts_the_rest() {
        let mut t = ExitTable::default();
        t.merge([(10, signal(10, 5, 100))]);
        t.merge([(10, signal(10, 5, 900))]);
        let r = t.get(10).expect("kept");
        assert_eq!((r.first_at_ns, r.signals), (100, 2));
        assert_eq!(r.sender_comm.as_deref(), Some("kill"));
        // The pid now names another process: a new request.
        t.merge([(10, signal(10, 6, 2000))]);
        assert_eq!(t.get(10).expect("new").first_at_ns, 2000);
        t.retain(|_| false);
        assert_eq!(t.len(), 0);
    }
}
