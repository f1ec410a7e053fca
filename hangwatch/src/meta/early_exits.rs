//! Exit requests that came before the daemon started, found once at its start from
//! /proc: the probe on `signal_generate` sees only signals sent while it is attached, and
//! a process asked to exit before that leaves two traces while it does not exit:
//!
//! - the exit signal **pending**, blocked by every thread (`ShdPnd` with `SigBlk`): it was
//!   sent and nobody takes it;
//! - a thread **in its handler** of the signal: entering a handler adds the signal to the
//!   thread's blocked mask until the handler returns, so a thread of a process with a
//!   handler for an exit signal (`SigCgt`) that blocks it now is *maybe* in that handler.
//!   Its stack decides: read once, raw, and searched for the kernel's signal frame
//!   (`stack::user::signal_frame::find_in_memory`: no unwinding, so no module is read).
//!
//! A handler that returned (one that sets a flag for the main loop) leaves no trace: that
//! case is not found, and said so in docs/detection.md.
//!
//! The daemon runs the scan on a thread of its own, and detection never waits for it
//! (`daemon/early_exits.rs`): the pending signals come first (/proc's `status` files take
//! no lock of a process's memory), the handlers after (their stacks are read through
//! `/proc/PID/mem`, which waits for a process's mm lock: one stuck there holds up only the
//! handlers found after it).
use std::{collections::HashMap, fs};

use super::{
    signal_masks::{SignalMasks, signal_bit as bit},
    thread_key,
};
use crate::state::{
    ThreadKey,
    exits::{SIGINT, SIGQUIT, SIGTERM},
};

/// The exit signals' bits.
pub const EXIT_SIGNALS: u64 = bit(SIGTERM) | bit(SIGINT) | bit(SIGQUIT);
/// Thread `status` files read at most (processes with a handler for an exit signal only).
const MAX_THREADS_READ: usize = 50_000;
/// Threads whose stacks are read at most, and per process: those whose blocked mask is
/// the least common in their process first (the thread in a handler has one of its own;
/// a program that blocks the signal in every worker has many alike).
pub const MAX_HANDLER_CHECKS: usize = 64;
const MAX_HANDLER_CHECKS_PER_PROCESS: usize = 4;

/// Exit signals pending for process `tgid`, blocked by every thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub tgid: u32,
    pub leader: ThreadKey,
    pub signals: u64,
}

#[derive(Debug, Default)]
pub struct Scan {
    pub pending: Vec<Pending>,
    pub processes: usize,
    pub threads_read: usize,
    /// Threads not read, or not checked, for the bounds above.
    pub capped: usize,
}

/// A thread that blocks exit signals its process handles (`signals`), now (`blocked`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaybeInHandler {
    pub tgid: u32,
    pub thread: ThreadKey,
    pub signals: u64,
    pub blocked: u64,
}

/// The pending exit signals (in the scan), and the threads maybe in an exit signal's
/// handler, least common blocked mask first, within the bounds.
pub fn scan(own_pid: u32) -> (Scan, Vec<MaybeInHandler>) {
    let mut scan = Scan::default();
    let Ok(dir) = fs::read_dir("/proc") else {
        return (scan, Vec::new());
    };
    let pids = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok());
    let mut candidates: Vec<(usize, MaybeInHandler)> = Vec::new();
    for tgid in pids.filter(|&p| p != own_pid) {
        let Some(process) = SignalMasks::of(tgid, tgid) else {
            continue; // gone
        };
        scan.processes += 1;
        // A shared pending signal goes to any thread that does not block it, at once: one
        // that stays pending is blocked by all (the daemon checks again that it stays).
        let pending = process.shared_pending & EXIT_SIGNALS;
        if pending != 0
            && let Some(leader) = thread_key(tgid, tgid)
        {
            scan.pending.push(Pending {
                tgid,
                leader,
                signals: pending,
            });
        }
        let caught = process.caught & EXIT_SIGNALS;
        if caught == 0 {
            continue;
        }
        let tids = super::futex_owner::task_ids(tgid);
        if scan.threads_read + tids.len() > MAX_THREADS_READ {
            scan.capped += tids.len();
            continue;
        }
        let masks: Vec<(u32, SignalMasks)> = tids
            .into_iter()
            .filter_map(|tid| Some((tid, SignalMasks::of(tgid, tid)?)))
            .collect();
        scan.threads_read += masks.len();
        let mut alike: HashMap<u64, usize> = HashMap::new();
        for (_, m) in &masks {
            *alike.entry(m.blocked).or_default() += 1;
        }
        let mut maybe: Vec<(usize, u32, u64)> = masks
            .iter()
            .filter(|(_, m)| m.blocked & caught != 0)
            .map(|(tid, m)| (alike[&m.blocked], *tid, m.blocked))
            .collect();
        maybe.sort_unstable();
        scan.capped += maybe.len().saturating_sub(MAX_HANDLER_CHECKS_PER_PROCESS);
        for (rarity, tid, blocked) in maybe.into_iter().take(MAX_HANDLER_CHECKS_PER_PROCESS) {
            if let Some(thread) = thread_key(tgid, tid) {
                candidates.push((
                    rarity,
                    MaybeInHandler {
                        tgid,
                        thread,
                        signals: blocked & caught,
                        blocked,
                    },
                ));
            }
        }
    }
    candidates.sort_by_key(|(rarity, _)| *rarity);
    scan.capped += candidates.len().saturating_sub(MAX_HANDLER_CHECKS);
    let maybe = candidates
        .into_iter()
        .take(MAX_HANDLER_CHECKS)
        .map(|(_, m)| m)
        .collect();
    (scan, maybe)
}

/// Whether a request found at the start still holds: the handler thread still blocks
/// the signal (it has not returned from the handler), or the signal is still pending.
pub fn still_holds(tgid: u32, handler_tid: Option<u32>, signal: u32) -> bool {
    match handler_tid {
        Some(tid) => SignalMasks::of(tgid, tid).is_some_and(|m| m.blocked & bit(signal) != 0),
        None => SignalMasks::of(tgid, tgid).is_some_and(|m| m.any_pending() & bit(signal) != 0),
    }
}

/// The exit signal of `mask` a request names: SIGTERM before SIGINT before SIGQUIT.
pub fn first_exit_signal(mask: u64) -> Option<u32> {
    [SIGTERM, SIGINT, SIGQUIT]
        .into_iter()
        .find(|&s| mask & bit(s) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_signal_named_is_the_strongest() {
        assert_eq!(first_exit_signal(bit(SIGINT) | bit(SIGTERM)), Some(SIGTERM));
        assert_eq!(first_exit_signal(bit(SIGQUIT)), Some(SIGQUIT));
        assert_eq!(first_exit_signal(bit(10)), None);
    }

    #[test]
    fn a_thread_blocking_a_caught_exit_signal_is_a_candidate_and_others_are_not() {
        // This test process: a thread blocks SIGQUIT while a handler for it is installed.
        use std::sync::{Arc, Barrier};
        // SAFETY: installing a handler that does nothing, for a signal nothing sends.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            extern "C" fn ignore(_: libc::c_int) {}
            action.sa_sigaction = ignore as *const () as usize;
            libc::sigaction(libc::SIGQUIT, &action, std::ptr::null_mut());
        }
        let ready = Arc::new(Barrier::new(2));
        let done = Arc::new(Barrier::new(2));
        let (r, d) = (ready.clone(), done.clone());
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let blocker = std::thread::spawn(move || {
            // SAFETY: plain calls on this thread's own mask.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGQUIT);
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                tid_tx.send(libc::gettid() as u32).unwrap();
            }
            r.wait();
            d.wait();
        });
        let tid = tid_rx.recv().unwrap();
        ready.wait();
        let (_, maybe) = scan(0);
        let pid = std::process::id();
        // (Other tests of this process may run threads that block every signal.)
        let ours: Vec<&MaybeInHandler> = maybe.iter().filter(|m| m.tgid == pid).collect();
        assert!(
            ours.iter()
                .any(|m| m.thread.tid == tid && m.signals & bit(SIGQUIT) != 0),
            "{ours:?}"
        );
        // SAFETY: gettid has no preconditions.
        let this_thread = u32::try_from(unsafe { libc::gettid() }).expect("tid");
        assert!(
            ours.iter().all(|m| m.thread.tid != this_thread),
            "a thread that blocks nothing: {ours:?}"
        );
        done.wait();
        blocker.join().unwrap();
    }
}
