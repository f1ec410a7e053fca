//! Exit requests from before the start, followed by the detection loop. On a thread of
//! its own: the /proc scan (`meta::early_exits`), whose pending signals are sent at once,
//! then the stack of each thread maybe in a handler searched for its signal frame
//! (`stack::user::signal_frame::find_in_memory`: raw, no module read). The loop takes
//! what arrived at each tick and turns it into exit requests for the `stuck_exit` rule.
//! Each is checked again at every tick (the handler has not returned, the signal is still
//! pending); one that stopped holding is dropped, not reported.
use std::{sync::mpsc, thread};

use crate::{
    meta::{
        early_exits::{self, MaybeInHandler, Pending, Scan},
        signal_masks::signal_bit,
    },
    stack::user::signal_frame::{self, SentBy, SignalHandler},
    state::{
        ExitTable, ThreadKey,
        exits::{ExitFound, ExitRequest},
    },
};

/// What the scan's thread sends.
enum Message {
    Scanned(Scan),
    /// Thread `thread` of `tgid` is in its handler of an exit signal.
    InHandler {
        tgid: u32,
        thread: ThreadKey,
        handler: SignalHandler,
    },
}

/// Scans /proc, sends the pending signals, then reads the stacks of the threads maybe in
/// a handler, sending each one in.
fn spawn(own_pid: u32) -> std::io::Result<mpsc::Receiver<Message>> {
    let (tx, rx) = mpsc::sync_channel(early_exits::MAX_HANDLER_CHECKS + 1);
    thread::Builder::new()
        .name("hw-early-exits".into())
        .spawn(move || {
            let (scan, maybe) = early_exits::scan(own_pid);
            if tx.send(Message::Scanned(scan)).is_err() {
                return;
            }
            for MaybeInHandler {
                tgid,
                thread,
                signals,
                blocked,
            } in maybe
            {
                let Some(handler) =
                    signal_frame::find_in_memory(tgid, thread.tid, blocked, signals)
                else {
                    continue;
                };
                // A handler of another signal whose mask holds an exit signal, or one
                // where which signal is not known: not taken for an exit.
                let exit = handler
                    .signal_number
                    .is_some_and(|n| early_exits::first_exit_signal(signal_bit(n)).is_some());
                if exit
                    && tx
                        .send(Message::InHandler {
                            tgid,
                            thread,
                            handler,
                        })
                        .is_err()
                {
                    return;
                }
            }
        })?;
    Ok(rx)
}

pub struct EarlyExits {
    scan: Option<mpsc::Receiver<Message>>,
    /// When the daemon started: the found requests' start (they are at least as old).
    started_ns: u64,
}

impl EarlyExits {
    pub fn start(started_ns: u64) -> Self {
        let scan = spawn(std::process::id())
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
        while let Some(message) = self.scan.as_ref().and_then(|rx| rx.try_recv().ok()) {
            match message {
                Message::Scanned(scan) => {
                    capped = Some(scan.capped);
                    tracing::debug!(
                        "exit signals before the start: {} processes, {} threads read, {} left out",
                        scan.processes,
                        scan.threads_read,
                        scan.capped
                    );
                    for Pending {
                        tgid,
                        leader,
                        signals,
                    } in scan.pending
                    {
                        exits.insert_found(self.pending(tgid, leader, signals));
                    }
                }
                Message::InHandler {
                    tgid,
                    thread,
                    handler,
                } => exits.insert_found(self.in_handler(tgid, thread, &handler)),
            }
        }
        exits.retain(|r| match r.found {
            ExitFound::SignalSent => true,
            ExitFound::InHandler { tid } => early_exits::still_holds(r.tgid, Some(tid), r.sig),
            ExitFound::Pending => early_exits::still_holds(r.tgid, None, r.sig),
        });
        capped
    }

    fn blank(&self, tgid: u32, target: ThreadKey, sig: u32, found: ExitFound) -> ExitRequest {
        ExitRequest {
            target,
            tgid,
            sig,
            first_at_ns: self.started_ns,
            signals: 1,
            from_kernel: false,
            sender_pid: None,
            sender_comm: None,
            found,
        }
    }

    /// The strongest exit signal of `signals`, pending for `tgid`.
    fn pending(&self, tgid: u32, leader: ThreadKey, signals: u64) -> ExitRequest {
        let sig = early_exits::first_exit_signal(signals).unwrap_or(SIGTERM_NR);
        self.blank(tgid, leader, sig, ExitFound::Pending)
    }

    fn in_handler(&self, tgid: u32, thread: ThreadKey, handler: &SignalHandler) -> ExitRequest {
        let sig = handler.signal_number.unwrap_or(SIGTERM_NR);
        let mut request = self.blank(tgid, thread, sig, ExitFound::InHandler { tid: thread.tid });
        request.from_kernel = handler.sent_by == Some(SentBy::Kernel);
        request.sender_pid = handler.sender_pid;
        request.sender_comm = handler
            .sender_pid
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok())
            .map(|comm| comm.trim_end().to_owned());
        request
    }
}

const SIGTERM_NR: u32 = crate::state::exits::SIGTERM;
