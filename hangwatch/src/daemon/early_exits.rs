//! Exit requests from before the start, followed by the detection loop: takes what the
//! /proc scan (`meta::early_exits`, on its own thread) found as it arrives, and turns it
//! into exit requests for the `stuck_exit` rule. Each is checked again at every tick (the
//! handler has not returned, the signal is still pending); one that stopped holding is
//! dropped, not reported.
use std::sync::mpsc;

use crate::{
    meta::early_exits::{self, Found, Scan},
    stack::user::signal_frame::SentBy,
    state::{
        ExitTable, ThreadKey,
        exits::{ExitFound, ExitRequest},
    },
};

pub struct EarlyExits {
    scan: Option<mpsc::Receiver<Scan>>,
    /// When the daemon started: the found requests' start (they are at least as old).
    started_ns: u64,
}

impl EarlyExits {
    pub fn start(started_ns: u64) -> Self {
        let scan = early_exits::spawn(std::process::id())
            .map_err(|err| {
                tracing::warn!("cannot scan for exit signals sent before the start: {err}");
            })
            .ok();
        Self { scan, started_ns }
    }

    /// Folds what the scan found by now into `exits`, and drops the found requests that no
    /// longer hold. Returns the threads the scan left out for its bounds when it says so
    /// (the `early_exit_checks` limit).
    pub fn step(&mut self, exits: &mut ExitTable) -> Option<usize> {
        let mut capped = None;
        while let Some(scan) = self.scan.as_ref().and_then(|rx| rx.try_recv().ok()) {
            if scan.processes > 0 {
                capped = Some(scan.capped);
                tracing::debug!(
                    "exit signals before the start: {} processes, {} threads read, {} left out",
                    scan.processes,
                    scan.threads_read,
                    scan.capped
                );
            }
            for found in scan.found {
                exits.insert_found(self.request(found));
            }
        }
        exits.retain(|r| match r.found {
            ExitFound::SignalSent => true,
            ExitFound::InHandler { tid } => early_exits::still_holds(r.tgid, Some(tid), r.sig),
            ExitFound::Pending => early_exits::still_holds(r.tgid, None, r.sig),
        });
        capped
    }

    fn request(&self, found: Found) -> ExitRequest {
        let blank = |tgid: u32, target: ThreadKey, sig: u32, found: ExitFound| ExitRequest {
            target,
            tgid,
            sig,
            first_at_ns: self.started_ns,
            signals: 1,
            from_kernel: false,
            sender_pid: None,
            sender_comm: None,
            found,
        };
        match found {
            Found::Pending {
                tgid,
                leader,
                signals,
            } => {
                // The strongest exit signal pending.
                let sig = early_exits::first_exit_signal(signals).unwrap_or(SIGTERM_NR);
                blank(tgid, leader, sig, ExitFound::Pending)
            }
            Found::InHandler {
                tgid,
                thread,
                handler,
            } => {
                let sig = handler.signal_number.unwrap_or(SIGTERM_NR);
                let mut request =
                    blank(tgid, thread, sig, ExitFound::InHandler { tid: thread.tid });
                request.from_kernel = handler.sent_by == Some(SentBy::Kernel);
                request.sender_pid = handler.sender_pid;
                request.sender_comm = handler
                    .sender_pid
                    .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok())
                    .map(|comm| comm.trim_end().to_owned());
                request
            }
        }
    }
}

const SIGTERM_NR: u32 = crate::state::exits::SIGTERM;
