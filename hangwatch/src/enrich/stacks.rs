//! Stacks for reports: the kernel stack is symbolized here (it needs nothing from the
//! watched process); the user stack needs its memory, its maps and its binaries, so it is
//! unwound and symbolized on a reader worker (`meta::reader`) that owns the unwind and
//! symbol caches, under `READ_DEADLINE`. A miss marks the process as resisting and the
//! report says why its user stack is missing.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use hangwatch_ebpf::StackRecord;

use super::READ_DEADLINE;
use crate::{
    meta::reader::{FileId, ReadError, Resisting, Worker},
    metrics::Metrics,
    stack::{
        KernelSymbolizer, ThreadStacks, UserStacks,
        on_cpu::{self, SampleError},
        taker::{UnwoundSample, blocked_stacks, sampled_stacks, unwind_sample},
    },
};

/// Until when user stacks may be read for a report, or why not: checked at each read, so
/// that a report of many threads (a stuck exit) stops reading when it is due.
#[derive(Debug, Clone)]
pub enum Budget {
    Until(Instant),
    Skip(String),
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

    /// Whether a read may start now, or why not.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Self::Until(due) if Instant::now() < *due => Ok(()),
            Self::Until(_) => Err(format!(
                "not read: the report was due (more stacks at once than can be unwound within {:?}; `hangwatch threads PID --stacks` reads it)",
                super::REPORT_DUE
            )),
            Self::Skip(why) => Err(why.clone()),
        }
    }
}

pub struct StackReader {
    kernel: KernelSymbolizer,
    user: Worker<UserStacks>,
    pub resisting: Resisting,
    /// Module files whose read missed its deadline (a stalled mount): not read again for a
    /// while, in any process, while the rest of each process is.
    resisting_files: Resisting<FileId>,
    metrics: Arc<Metrics>,
    /// Kernel symbolization figures already in the metrics.
    kernel_published: (Duration, u64),
    /// Sections refused for their size, already in the metrics.
    sections_published: u64,
    /// Symbolizer paths evicted and rebuilds, already in the metrics.
    symbolizer_published: (u64, u64),
}

impl StackReader {
    pub fn new(metrics: Arc<Metrics>) -> std::io::Result<Self> {
        Ok(Self {
            // /proc/kallsyms is read by the first report, not at start: its table costs
            // ~12 MiB of RSS, which a daemon that never reports should not carry (measured:
            // 72 MiB with it at start, against a 64 MiB budget with 10,000 idle threads).
            kernel: KernelSymbolizer::default(),
            user: Worker::spawn("hangwatch-unwind", UserStacks::new)?,
            resisting: Resisting::default(),
            resisting_files: Resisting::default(),
            metrics,
            kernel_published: (Duration::ZERO, 0),
            sections_published: 0,
            symbolizer_published: (0, 0),
        })
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
        let refused = crate::stack::user::sections_refused();
        self.metrics.limit(
            "section_too_large",
            refused.saturating_sub(self.sections_published),
        );
        self.sections_published = refused;
        let symbolizer = crate::stack::user::symbolizer::evictions();
        self.metrics.limit(
            "symbolizer_paths",
            symbolizer.0.saturating_sub(self.symbolizer_published.0),
        );
        self.metrics.limit(
            "symbolizer_files",
            symbolizer.1.saturating_sub(self.symbolizer_published.1),
        );
        self.symbolizer_published = symbolizer;
    }

    /// Runs `task` on the user-stack worker for process `pid`, unless it resists; a miss
    /// marks it.
    pub fn read<R: Send + 'static>(
        &mut self,
        pid: u32,
        deadline: Duration,
        task: impl FnOnce(&mut UserStacks) -> R + Send + 'static,
    ) -> Result<R, ReadError> {
        read(
            &mut self.user,
            (&mut self.resisting, &mut self.resisting_files),
            &self.metrics,
            pid,
            deadline,
            task,
        )
    }

    /// Workers given up on, and those still stuck in the kernel.
    pub fn abandoned(&self) -> (u64, usize) {
        (
            self.user
                .abandoned
                .load(std::sync::atomic::Ordering::Relaxed),
            self.user.stuck(),
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
        let Self {
            kernel,
            user,
            resisting,
            resisting_files,
            metrics,
            kernel_published: _,
            sections_published: _,
            symbolizer_published: _,
        } = self;
        blocked_stacks(kernel, record, kernel_thread, |tid, regs| {
            match budget.check() {
                Err(why) => {
                    metrics.limit("report_due", 1);
                    Err(why)
                }
                Ok(()) => read(
                    user,
                    (resisting, resisting_files),
                    metrics,
                    pid,
                    READ_DEADLINE,
                    move |user| user.capture(pid, tid, regs),
                )
                .map_err(|err| err.to_string()),
            }
        })
    }

    /// The stacks of a thread that runs: one perf sample of it on a CPU (on the worker:
    /// the unwinding reads the process); if it went off-CPU meanwhile, from its record
    /// like a blocked one.
    pub fn running(
        &mut self,
        pid: u32,
        tid: u32,
        record: Option<&StackRecord>,
        budget: &Budget,
    ) -> ThreadStacks {
        if let Err(why) = budget.check() {
            self.metrics.limit("report_due", 1);
            return ThreadStacks::failed(format!("the thread runs; its stack was {why}"));
        }
        let sampled = self.read(
            pid,
            READ_DEADLINE + on_cpu::SAMPLE_TIMEOUT,
            move |user| -> Result<UnwoundSample, SampleError> {
                let sample = on_cpu::sample_running(tid, on_cpu::SAMPLE_TIMEOUT)?;
                Ok(unwind_sample(user, pid, sample))
            },
        );
        match sampled {
            Ok(Ok(sample)) => sampled_stacks(&mut self.kernel, sample),
            Ok(Err(SampleError::NoSample { .. })) => self.blocked(pid, record, false, budget),
            Ok(Err(err)) => {
                tracing::debug!("no on-CPU sample of thread {tid}: {err}");
                ThreadStacks::failed(format!("the thread runs and could not be sampled: {err}"))
            }
            Err(err) => ThreadStacks::failed(format!("the thread runs; its stack was {err}")),
        }
    }
}

/// Runs `task` on the user-stack worker for `pid` unless it resists, telling it which
/// module files resist (it reads around them); a miss marks the file it was reading, or
/// else the process. Folds what the task spent unwinding into the metrics.
fn read<R: Send + 'static>(
    user: &mut Worker<UserStacks>,
    (resisting, resisting_files): (&mut Resisting, &mut Resisting<FileId>),
    metrics: &Metrics,
    pid: u32,
    deadline: Duration,
    task: impl FnOnce(&mut UserStacks) -> R + Send + 'static,
) -> Result<R, ReadError> {
    let now = Instant::now();
    resisting.check(&pid, now)?;
    let avoid = resisting_files.current(now);
    let result = user.call(deadline, move |user| {
        user.avoid_files(avoid);
        let before = (user.spent, user.captured, user.module_cache());
        let result = task(user);
        let after = (user.spent, user.captured, user.module_cache());
        (result, before, after)
    });
    match result {
        Ok((result, before, after)) => {
            metrics.symbolized("user", after.0.saturating_sub(before.0), 0);
            metrics.user_stacks(
                after.1 - before.1,
                after.2.0 - before.2.0,
                after.2.1 - before.2.1,
            );
            Ok(result)
        }
        Err(err) => {
            match &err {
                ReadError::Missed {
                    file: Some(file), ..
                } => resisting_files.mark(file.clone(), err.to_string(), now),
                ReadError::Missed { file: None, .. } => resisting.mark(pid, err.to_string(), now),
                _ => {}
            }
            Err(err)
        }
    }
}
