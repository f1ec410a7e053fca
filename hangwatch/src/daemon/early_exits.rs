//! Exit requests from before the start, followed by the detection loop: takes the /proc
//! scan (`meta::early_exits`, on its own thread) when it is done, has the enrich stage
//! read the stack of each thread maybe in an exit signal's handler (once: the signal
//! frame decides), and turns what holds into exit requests for the `stuck_exit` rule.
//! Each found request is checked again at every tick: the handler has not returned, the
//! signal is still pending; one that stopped holding is dropped (not reported).
use std::{
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::{
    enrich::{Check, Enrich, Job, ParkChecks, ParkVerdict, StackCheck},
    meta::{
        ThreadProc,
        early_exits::{self, Found, Scan},
        futex_owner, thread_proc,
    },
    probe::Probes,
    state::{
        ExitTable, ThreadKey,
        exits::{ExitFound, ExitRequest},
    },
};

/// A stack the enrich stage did not read (a cold cache, a spent budget) is asked for
/// again after this, up to `ATTEMPTS` times.
const RETRY_AFTER: Duration = Duration::from_secs(2);
const ATTEMPTS: u8 = 3;

pub struct EarlyExits {
    scan: Option<mpsc::Receiver<Scan>>,
    /// When the daemon started: the found requests' start (they are at least as old).
    started_ns: u64,
    /// Handler checks not yet handed to the enrich stage (its queue was full, or the
    /// stack could not be read yet), with the attempts made.
    to_check: Vec<(u32, ThreadKey, u8)>,
    /// Handed over and not answered: asked again after `RETRY_AFTER`.
    asked: Vec<(u32, ThreadKey, u8, Instant)>,
    verdicts: (mpsc::SyncSender<ParkVerdict>, mpsc::Receiver<ParkVerdict>),
}

impl EarlyExits {
    pub fn start(started_ns: u64) -> Self {
        let scan = early_exits::spawn(std::process::id())
            .map_err(|err| {
                tracing::warn!("cannot scan for exit signals sent before the start: {err}")
            })
            .ok();
        Self {
            scan,
            started_ns,
            to_check: Vec::new(),
            asked: Vec::new(),
            verdicts: mpsc::sync_channel(early_exits::MAX_HANDLER_CHECKS),
        }
    }

    /// Folds what is known by now into `exits`, and drops the found requests that no
    /// longer hold. Returns, when the scan arrives, the threads it left out for its
    /// bounds (the `early_exit_checks` limit).
    pub fn step(
        &mut self,
        exits: &mut ExitTable,
        probes: &mut Probes,
        enrich: &Enrich,
    ) -> Option<usize> {
        let mut capped = None;
        if let Some(scan) = self.scan.as_ref().and_then(|rx| rx.try_recv().ok()) {
            self.scan = None;
            capped = Some(scan.capped);
            tracing::debug!(
                "exit signals before the start: {} processes, {} threads read, {} found, {} left out",
                scan.processes,
                scan.threads_read,
                scan.found.len(),
                scan.capped
            );
            for found in scan.found {
                match found {
                    Found::Pending {
                        tgid,
                        leader,
                        signals,
                    } => {
                        if let Some(sig) = early_exits::first_exit_signal(signals) {
                            exits.insert_found(self.request(tgid, leader, sig, ExitFound::Pending));
                        }
                    }
                    Found::MaybeInHandler { tgid, thread, .. } => {
                        self.to_check.push((tgid, thread, 0));
                    }
                }
            }
        }
        let now = Instant::now();
        self.asked.retain(|&(tgid, key, attempts, at)| {
            let due = now.duration_since(at) >= RETRY_AFTER;
            if due && attempts < ATTEMPTS {
                self.to_check.push((tgid, key, attempts));
            }
            !due
        });
        if !self.to_check.is_empty() {
            self.ask(probes, enrich, now);
        }
        while let Ok(verdict) = self.verdicts.1.try_recv() {
            self.asked
                .retain(|&(_, key, ..)| key.tid != verdict.thread.tid);
            let Some(handler) = verdict.signal_handler else {
                continue; // no signal frame: it blocks the signal for its own reasons
            };
            let Some(sig) = handler
                .signal_number
                .filter(|&s| early_exits::EXIT_SIGNALS & (1 << (s - 1)) != 0)
            else {
                continue; // another signal's handler, or which one is not known
            };
            let tgid = verdict.tgid;
            let mut request = self.request(
                tgid,
                verdict.thread,
                sig,
                ExitFound::InHandler {
                    tid: verdict.thread.tid,
                },
            );
            request.from_kernel =
                handler.sent_by == Some(crate::stack::user::signal_frame::SentBy::Kernel);
            request.sender_pid = handler.sender_pid;
            request.sender_comm = handler
                .sender_pid
                .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok())
                .map(|comm| comm.trim_end().to_owned());
            exits.insert_found(request);
        }
        exits.retain(|r| match r.found {
            ExitFound::SignalSent => true,
            ExitFound::InHandler { tid } => early_exits::still_holds(r.tgid, Some(tid), r.sig),
            ExitFound::Pending => early_exits::still_holds(r.tgid, None, r.sig),
        });
        capped
    }

    fn request(&self, tgid: u32, target: ThreadKey, sig: u32, found: ExitFound) -> ExitRequest {
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

    /// Hands the handler checks to the enrich stage: a blocked thread's stack from its
    /// `dump_stacks` record, a running one's from a sample.
    fn ask(&mut self, probes: &mut Probes, enrich: &Enrich, now: Instant) {
        self.to_check
            .retain(|(tgid, key, _)| matches!(thread_proc(*tgid, *key), ThreadProc::Alive { .. }));
        let running: Vec<bool> = self
            .to_check
            .iter()
            .map(|&(tgid, key, _)| {
                futex_owner::proc_thread(tgid, key.tid).is_some_and(|t| t.state == 'R')
            })
            .collect();
        // The blocked ones' records in as few iterator runs as the request map allows.
        let blocked: Vec<u32> = self
            .to_check
            .iter()
            .zip(&running)
            .filter(|(_, running)| !**running)
            .map(|((_, key, _), _)| key.tid)
            .collect();
        let mut records = Vec::new();
        for chunk in blocked.chunks(hangwatch_ebpf::MAX_STACK_REQUESTS as usize) {
            match probes.dump_stacks(chunk) {
                Ok(mut got) => records.append(&mut got),
                Err(err) => tracing::debug!("cannot read the stacks of handler checks: {err}"),
            }
        }
        let threads: Vec<StackCheck> = self
            .to_check
            .iter()
            .zip(running)
            .map(|(&(tgid, key, _), running)| {
                let record = records.iter().find(|r| r.tid == key.tid).copied();
                StackCheck {
                    thread: ThreadKey {
                        tid: key.tid,
                        start_boottime_ns: record
                            .map_or(key.start_boottime_ns, |r| r.start_boottime_ns),
                    },
                    tgid,
                    since_ns: 0,
                    running,
                    record,
                }
            })
            .collect();
        let job = Job::ParkChecks(ParkChecks {
            check: Check::SignalHandler,
            threads,
            verdicts: self.verdicts.0.clone(),
        });
        // A full queue: asked again at the next tick.
        if enrich.send(job).is_ok() {
            self.asked.extend(
                self.to_check
                    .drain(..)
                    .map(|(tgid, key, attempts)| (tgid, key, attempts + 1, now)),
            );
        }
    }
}
