//! Stacks for reports: the kernel stack is symbolized here (it needs nothing from the
//! watched process); the user stack needs its memory, its maps and its binaries, so it is
//! unwound and symbolized by the unwinder process (`stack::unwinder`, `meta::helper`) that
//! owns the unwind and symbol caches, under `READ_DEADLINE`. A miss marks the process (or
//! the module file it was reading) as resisting and the report says why its user stack is
//! missing.
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError, atomic::Ordering},
    time::{Duration, Instant},
};

use hangwatch_ebpf::StackRecord;

use super::READ_DEADLINE;
use crate::{
    meta::{
        helper::Helper,
        reader::{CPU_GRACE, FileId, ReadError, Resisting, Worker},
    },
    metrics::Metrics,
    stack::{
        KernelSymbolizer, ThreadStacks, UserRegisters, on_cpu,
        taker::{NotRead, blocked_stacks, sampled_stacks},
        unwinder::{self, Sampled},
        user::UserStack,
    },
};

/// Until when user stacks may be read for a report, or why not: checked at each read, so
/// that a report of many threads (a stuck exit) stops reading when it is due.
#[derive(Debug, Clone)]
pub enum Budget {
    Until(Instant),
    /// Until `due`, and only until a newer hang has waited `YIELD_AFTER` for the stage:
    /// the reads a report can do without (a stuck exit's other threads, the tail of a
    /// mass hang, a `threads --stacks` answer) give way to the first report of a hang
    /// that came after, so that one slow report never delays the detection of another.
    Yielding {
        due: Instant,
        newer: NewerHangs,
    },
    Skip(String),
}

/// Why a read was not started: the reason for the report, and the limit it counts.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub why: String,
    pub limit: Option<&'static str>,
}

impl Budget {
    /// Reads until `due`, none once stopping.
    pub fn until(due: Instant, stopping: bool) -> Self {
        if stopping {
            Self::Skip("not read: the daemon is stopping".into())
        } else {
            Self::Until(due)
        }
    }

    /// The same budget, giving way to newer hangs.
    pub fn yielding(&self, newer: &NewerHangs) -> Self {
        match self {
            Self::Until(due) | Self::Yielding { due, .. } => Self::Yielding {
                due: *due,
                newer: newer.clone(),
            },
            Self::Skip(why) => Self::Skip(why.clone()),
        }
    }

    /// Whether a read may start now, or why not.
    pub fn check(&self) -> Result<(), Skipped> {
        let due = match self {
            Self::Skip(why) => {
                return Err(Skipped {
                    why: why.clone(),
                    limit: None,
                });
            }
            Self::Until(due) => due,
            Self::Yielding { due, newer } => {
                let after = crate::clock::stretched(YIELD_AFTER);
                if newer.waited().is_some_and(|waited| waited >= after) {
                    return Err(Skipped {
                        why: format!(
                            "not read: a newer hang had waited {after:?} to be reported (`hangwatch threads PID --stacks` reads it)"
                        ),
                        limit: Some("report_yielded"),
                    });
                }
                due
            }
        };
        if Instant::now() < *due {
            return Ok(());
        }
        Err(Skipped {
            why: format!(
                "not read: the report was due (more stacks at once than can be unwound within {:?}; `hangwatch threads PID --stacks` reads it)",
                crate::clock::stretched(super::REPORT_DUE)
            ),
            limit: Some("report_due"),
        })
    }
}

/// How long a newer hang may wait for the reads a report can do without: about one scan,
/// so that a burst of hangs at once keeps its stacks while a hang that comes after is still
/// reported within its threshold and a scan.
pub const YIELD_AFTER: Duration = Duration::from_millis(250);

/// The ticks that open a hang, handed to the stage and not yet taken, by when each was
/// handed over (the queue's order). Ticks that only update or end episodes are not
/// counted: nothing new waits in them.
#[derive(Debug, Clone, Default)]
pub struct NewerHangs(Arc<Mutex<VecDeque<Instant>>>);

impl NewerHangs {
    fn with<R>(&self, f: impl FnOnce(&mut VecDeque<Instant>) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A tick opening a hang was handed over `at`.
    pub fn handed(&self, at: Instant) {
        self.with(|q| q.push_back(at));
    }

    /// The last one handed over did not go (the queue was full).
    pub fn withdrawn(&self) {
        self.with(|q| q.pop_back());
    }

    /// The stage took the oldest one.
    pub fn taken(&self) {
        self.with(|q| q.pop_front());
    }

    /// How long the oldest one has waited, if any waits.
    pub fn waited(&self) -> Option<Duration> {
        self.with(|q| q.front().map(Instant::elapsed))
    }
}

pub struct StackReader {
    kernel: KernelSymbolizer,
    /// The unwinder process: user stacks (their files may block uninterruptibly).
    unwinder: Helper<unwinder::Request, unwinder::Reply>,
    /// Reads of a process's memory and /proc files (a command line, a lock word): their
    /// waits are killable, so a worker thread serves.
    memory: Worker<()>,
    pub resisting: Resisting,
    /// Module files whose read missed its deadline (a stalled mount): not read again for a
    /// while, in any process, while the rest of each process is.
    resisting_files: Resisting<FileId>,
    metrics: Arc<Metrics>,
    /// Kernel symbolization figures already in the metrics.
    kernel_published: (Duration, u64),
    /// Ticks opening a hang that wait for the stage: an unwinder still working past its
    /// grace is not waited for once one of them is due (`YIELD_AFTER`).
    newer: NewerHangs,
}

impl StackReader {
    pub fn new(metrics: Arc<Metrics>, newer: NewerHangs) -> std::io::Result<Self> {
        Ok(Self {
            // /proc/kallsyms is read once the probes are attached (`warm`).
            kernel: KernelSymbolizer::default(),
            // The same binary (`/proc/self/exe` even if replaced on disk since), started
            // once the probes are attached (`warm`), or at the first user stack.
            unwinder: Helper::new("/proc/self/exe", &["unwinder"]).env(
                crate::logging::FORMAT_ENV,
                crate::logging::format_for_helpers(),
            ),
            memory: Worker::spawn("hangwatch-read", || ())?,
            resisting: Resisting::default(),
            resisting_files: Resisting::default(),
            metrics,
            kernel_published: (Duration::ZERO, 0),
            newer,
        })
    }

    /// Does now what the first report would otherwise wait for: reading /proc/kallsyms
    /// and starting the unwinder process. The first report is often the one a newer hang
    /// waits behind (a stuck exit's, then a deadlock beside it), and this cold start cost
    /// it 1-2 s on a loaded machine. Called once the probes are attached, after the load's
    /// peak of memory (aya's copy of the kernel BTF) is gone, so that the kallsyms table
    /// (about 8 MiB of RSS, measured) does not add to that peak.
    pub fn warm(&mut self) {
        self.kernel.warm();
        if let Err(err) = self.unwinder.ensure_started() {
            tracing::warn!(
                "cannot start the unwinder process: {err}; trying at the first user stack"
            );
        }
        self.publish_figures();
    }

    /// Folds the symbolization figures since the last call into the metrics.
    pub fn publish_figures(&mut self) {
        let (spent, failures) = (self.kernel.spent, self.kernel.failures);
        self.metrics.symbolized(
            "kernel",
            spent.saturating_sub(self.kernel_published.0),
            failures.saturating_sub(self.kernel_published.1),
        );
        self.kernel_published = (spent, failures);
        let (abandoned, stuck) = self.abandoned();
        self.metrics.readers(
            abandoned,
            stuck,
            self.resisting.marked + self.resisting_files.marked,
        );
    }

    /// Runs `task` (a read of process `pid`'s memory or /proc files) on the memory worker,
    /// unless the process resists; a miss marks it.
    pub fn read_memory<R: Send + 'static>(
        &mut self,
        pid: u32,
        deadline: Duration,
        task: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, ReadError> {
        let now = Instant::now();
        self.resisting.check(&pid, now)?;
        let result = self.memory.call(deadline, move |()| task());
        if let Err(err @ ReadError::Missed { .. }) = &result {
            self.resisting.mark(pid, err.to_string(), now);
        }
        result
    }

    /// Asks the unwinder `task` about process `pid` unless it resists, telling it which
    /// module files resist (it reads around them); a miss marks the file it was reading,
    /// or else the process. Folds what it spent and counted into the metrics.
    /// An unwinder still working past `deadline` is waited for up to `CPU_GRACE`, and past
    /// it while `budget` allows, unless a newer hang has waited `YIELD_AFTER`.
    fn unwind(
        &mut self,
        pid: u32,
        deadline: Duration,
        task: unwinder::Task,
        budget: &Budget,
    ) -> Result<unwinder::Answer, ReadError> {
        let now = Instant::now();
        self.resisting.check(&pid, now)?;
        let request = unwinder::Request {
            avoid: self.resisting_files.current(now).into_iter().collect(),
            task,
        };
        let newer = self.newer.clone();
        let may_work = move |elapsed: Duration| {
            newer
                .waited()
                .is_none_or(|waited| waited < crate::clock::stretched(YIELD_AFTER))
                && (elapsed < crate::clock::stretched(CPU_GRACE) || budget.check().is_ok())
        };
        match self.unwinder.call(deadline, &request, may_work) {
            Ok(reply) => {
                let f = reply.figures;
                self.metrics.symbolized("user", f.spent, 0);
                self.metrics
                    .user_stacks(f.captured, f.module_hits, f.module_misses);
                self.metrics.limit("section_too_large", f.sections_refused);
                self.metrics
                    .limit("symbolizer_paths", f.symbolizer_paths_evicted);
                self.metrics
                    .limit("symbolizer_files", f.symbolizer_rebuilds);
                Ok(reply.answer)
            }
            Err(err) => {
                match &err {
                    ReadError::Missed {
                        file: Some(file), ..
                    } => self
                        .resisting_files
                        .mark(file.clone(), err.to_string(), now),
                    ReadError::Missed { file: None, .. } => {
                        self.resisting.mark(pid, err.to_string(), now);
                    }
                    _ => {}
                }
                Err(err)
            }
        }
    }

    /// Readers given up on (unwinder processes and memory threads), and those still stuck
    /// in the kernel.
    pub fn abandoned(&mut self) -> (u64, usize) {
        (
            self.unwinder.abandoned + self.memory.abandoned.load(Ordering::Relaxed),
            self.unwinder.stuck() + self.memory.stuck(),
        )
    }

    /// The stacks of a blocked thread of `pid` from its `dump_stacks` record.
    pub fn blocked(
        &mut self,
        pid: u32,
        record: Option<&StackRecord>,
        kernel_thread: bool,
        budget: &Budget,
    ) -> ThreadStacks {
        // The user stack first (the record says where it is), then both stacks together.
        let user = record
            .filter(|r| !kernel_thread && r.user_ip != 0)
            .map(|r| self.user_stack(pid, r.tid, UserRegisters::of(r), budget));
        blocked_stacks(&mut self.kernel, record, kernel_thread, |_, _| {
            user.unwrap_or_else(|| {
                Err(NotRead {
                    why: "no user registers".into(),
                    later: false,
                })
            })
        })
    }

    /// The wait channel of a blocked thread from the kernel stack of its record
    /// (`KernelSymbolizer::wchan`).
    pub fn wchan(&mut self, record: &StackRecord) -> Option<String> {
        let depth = (record.kernel_depth as usize).min(record.kernel_stack.len());
        self.kernel.wchan(&record.kernel_stack[..depth])
    }

    /// The stacks of a blocked thread whose user stack was read earlier in the same wait
    /// (from `regs`): only the kernel stack is symbolized (see `Reports::stacks_of`). A
    /// tick without a record of the thread, or with one without its registers, still
    /// carries that user stack; the kernel stack then says why it is missing.
    pub fn blocked_with_user(
        &mut self,
        record: Option<&StackRecord>,
        kernel_thread: bool,
        regs: UserRegisters,
        user: UserStack,
    ) -> ThreadStacks {
        let mut stacks = match record {
            Some(_) => blocked_stacks(&mut self.kernel, record, kernel_thread, |_, _| {
                Ok(user.clone())
            }),
            None => ThreadStacks {
                kernel_stack_error: Some("no stack record of the thread at this tick".into()),
                ..ThreadStacks::default()
            },
        };
        if stacks.user_registers.is_none() {
            stacks.user_registers = Some(regs);
            stacks.set_user(user);
        }
        stacks
    }

    /// Only the user stack of a blocked thread of `pid` from its `dump_stacks` record: what
    /// a loop check needs. The kernel stack is left alone, so that checks, which can come
    /// at start on any machine, do not load the kernel's symbol table (12 MiB of RSS that a
    /// daemon without a report should not carry).
    pub fn user_only(
        &mut self,
        pid: u32,
        record: Option<&StackRecord>,
        budget: &Budget,
    ) -> Result<UserStack, NotRead> {
        let Some(record) = record else {
            return Err(NotRead {
                why: "the thread was gone before its stack was read".into(),
                later: false,
            });
        };
        if record.user_ip == 0 {
            return Err(NotRead {
                why: "no user registers".into(),
                later: false,
            });
        }
        self.user_stack(pid, record.tid, UserRegisters::of(record), budget)
    }

    /// The user stack of blocked thread `tid` of `pid`, within the budget.
    fn user_stack(
        &mut self,
        pid: u32,
        tid: u32,
        regs: UserRegisters,
        budget: &Budget,
    ) -> Result<UserStack, NotRead> {
        if let Err(skipped) = budget.check() {
            if let Some(limit) = skipped.limit {
                self.metrics.limit(limit, 1);
            }
            return Err(NotRead {
                why: skipped.why,
                later: true,
            });
        }
        match self.unwind(
            pid,
            crate::clock::stretched(READ_DEADLINE),
            unwinder::Task::Capture { pid, tid, regs },
            budget,
        ) {
            Ok(unwinder::Answer::Stack(stack)) => Ok(*stack),
            Ok(other) => Err(NotRead {
                why: format!("the unwinder answered {other:?} to a capture"),
                later: false,
            }),
            Err(err) => Err(NotRead {
                later: matches!(err, ReadError::Slow { .. }),
                why: err.to_string(),
            }),
        }
    }

    /// One perf sample of thread `tid` of `pid` on a CPU, unwound by the unwinder (which
    /// reads the process), within the budget: what `user_sampled` and `running` share.
    /// `Err` says why there is none, in words that follow "its stack was".
    fn sample_on_cpu(&mut self, pid: u32, tid: u32, budget: &Budget) -> Result<Sampled, NotRead> {
        if let Err(skipped) = budget.check() {
            if let Some(limit) = skipped.limit {
                self.metrics.limit(limit, 1);
            }
            return Err(NotRead {
                why: skipped.why,
                later: true,
            });
        }
        let task = unwinder::Task::Sample {
            pid,
            tid,
            timeout: crate::clock::stretched(on_cpu::SAMPLE_TIMEOUT),
        };
        match self.unwind(
            pid,
            crate::clock::stretched(READ_DEADLINE + on_cpu::SAMPLE_TIMEOUT),
            task,
            budget,
        ) {
            Ok(unwinder::Answer::Sampled(sampled)) => Ok(sampled),
            Ok(other) => Err(NotRead {
                why: format!("not sampled: the unwinder answered {other:?} to a sample"),
                later: false,
            }),
            Err(err) => Err(NotRead {
                later: matches!(err, ReadError::Slow { .. }),
                why: err.to_string(),
            }),
        }
    }

    /// Only the user stack of thread `tid` of `pid`, which runs: one perf sample of it on a
    /// CPU, as `running` takes, without the kernel callchain's symbols (a loop check's
    /// needs; see `user_only`). A thread that went off-CPU meanwhile gives no sample: not
    /// read, asked again later (its next run is another check).
    pub fn user_sampled(
        &mut self,
        pid: u32,
        tid: u32,
        budget: &Budget,
    ) -> Result<UserStack, NotRead> {
        match self.sample_on_cpu(pid, tid, budget)? {
            Sampled::Unwound(sample) => sample.user.ok_or_else(|| NotRead {
                why: "no user registers in the sample: a kernel thread".into(),
                later: false,
            }),
            Sampled::NotRunning => Err(NotRead {
                why: "it did not run while it was being sampled".into(),
                later: true,
            }),
            Sampled::Failed(err) => Err(NotRead {
                why: format!("the thread runs and could not be sampled: {err}"),
                later: false,
            }),
        }
    }

    /// The stacks of a thread that runs: one perf sample of it on a CPU (by the unwinder:
    /// the unwinding reads the process); if it went off-CPU meanwhile, from its record
    /// like a blocked one.
    pub fn running(
        &mut self,
        pid: u32,
        tid: u32,
        record: Option<&StackRecord>,
        budget: &Budget,
    ) -> ThreadStacks {
        match self.sample_on_cpu(pid, tid, budget) {
            Ok(Sampled::Unwound(sample)) => sampled_stacks(&mut self.kernel, *sample),
            Ok(Sampled::NotRunning) => self.blocked(pid, record, false, budget),
            Ok(Sampled::Failed(err)) => {
                tracing::debug!("no on-CPU sample of thread {tid}: {err}");
                ThreadStacks::failed(format!("the thread runs and could not be sampled: {err}"))
            }
            Err(not_read) => {
                ThreadStacks::failed(format!("the thread runs; its stack was {}", not_read.why))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_yielding_budget_gives_way_once_a_newer_hang_has_waited() {
        let newer = NewerHangs::default();
        let budget = Budget::Until(Instant::now() + Duration::from_secs(60)).yielding(&newer);
        assert!(budget.check().is_ok(), "nothing waits");
        newer.handed(Instant::now());
        assert!(
            budget.check().is_ok(),
            "a newer hang that just came may wait a moment"
        );
        newer.taken();
        newer.handed(Instant::now() - YIELD_AFTER);
        let skipped = budget.check().expect_err("a newer hang waited long enough");
        assert_eq!(skipped.limit, Some("report_yielded"));
        assert!(
            skipped.why.contains("a newer hang had waited"),
            "{}",
            skipped.why
        );
        newer.taken();
        assert!(budget.check().is_ok(), "taken: nothing waits");
        newer.handed(Instant::now() - YIELD_AFTER);
        newer.withdrawn();
        assert!(
            budget.check().is_ok(),
            "withdrawn (the queue was full): nothing waits"
        );
    }
}
