//! Transitions -> events: what every report carries (the thread, its process, its wait
//! and stacks), what each kind adds (a deadlock's cycle, a lock's owner chain, a loop's
//! stall, a stuck exit's threads), and the `resolved` event that repeats the last report.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use hangwatch_ebpf::StackRecord;

use super::{
    Check, EXIT_OTHERS_DUE, MAX_EXIT_STACKS, MAX_HOLDER_STACKS, ParkChecks, ParkVerdict,
    REPORT_DUE, StacksJob, Tick,
    cmdline::CmdlineCache,
    stacks::{Budget, NewerHangs, StackReader},
};
use crate::{
    clock,
    detect::{
        lock_wait::Ownerless,
        loop_stall::{driver_frame, is_parked},
    },
    episode::{Episode, EpisodeKey, Transition},
    kind::HangKind,
    meta::{ProcessInfo, ThreadProc, futex_owner, thread_proc, wchan},
    metrics::Metrics,
    sink::{
        BlockedOn, CycleMember, EventType, ExitInfo, HangEvent, LoopStallInfo, Resolution, Workload,
    },
    stack::{ThreadStacks, UserRegisters, user::UserStack},
    state::{
        FutexCall, ThreadKey, ThreadSample, Wait, exits::ExitFound, futex_op_name, syscall_name,
    },
};

/// A `blocked_on` chain stops after this many owners.
const MAX_CHAIN: usize = 16;
/// A `threads --stacks` answer may take this long; threads past it are listed unread.
const STACKS_BUDGET: Duration = Duration::from_secs(2);

/// The stage's memory: the readers and the last report of each open episode.
pub struct Reports {
    reader: StackReader,
    cmdlines: CmdlineCache,
    /// The last report of each open episode, which its `resolved` event repeats.
    open: HashMap<EpisodeKey, HangEvent>,
    /// The user stacks read of threads still in the same wait (their switch-out), with
    /// the registers they were read from: a thread's user stack cannot change while it is
    /// in the kernel, so its updates, and the other episodes, cycles and lock chains it is
    /// in, carry it without unwinding it again (in a mass hang of 2,000 threads the updates
    /// had unwound every stack a second time). Kept for the threads of open episodes.
    user_by_wait: HashMap<(ThreadKey, u64), (UserRegisters, UserStack)>,
    metrics: Arc<Metrics>,
    /// The daemon is stopping: no target is read (its command line included).
    stopping: bool,
    /// Ticks opening a hang waiting for the stage: the reads a report can do without give
    /// way to them.
    newer: NewerHangs,
}

impl Reports {
    pub fn new(reader: StackReader, metrics: Arc<Metrics>, newer: NewerHangs) -> Self {
        Self {
            reader,
            cmdlines: CmdlineCache::default(),
            open: HashMap::new(),
            user_by_wait: HashMap::new(),
            metrics,
            stopping: false,
            newer,
        }
    }

    /// The event of one transition.
    pub fn build(
        &mut self,
        transition: &Transition,
        tick: &Tick,
        budget: &Budget,
        stopping: bool,
    ) -> Option<HangEvent> {
        self.stopping = stopping;
        let event = match transition {
            Transition::Opened(episode) => self.report(EventType::Hang, episode, tick, budget),
            Transition::Updated(episode) => self.report(EventType::Update, episode, tick, budget),
            Transition::Ended(episode) => return self.resolve(episode, tick),
        }?;
        self.open.insert(transition.episode().key, event.clone());
        self.publish_reader_figures();
        Some(event)
    }

    fn publish_reader_figures(&mut self) {
        self.reader.publish_figures();
    }

    /// Every open episode ends `daemon_stopped` (the daemon stops: whether they end is not
    /// known).
    pub fn close_all(&mut self, now_ns: u64) -> Vec<HangEvent> {
        self.open
            .drain()
            .map(|(key, mut event)| {
                event.event = EventType::Resolved;
                event.duration_ms =
                    millis(Duration::from_nanos(now_ns.saturating_sub(key.since_ns)));
                event.resolution = Some(Resolution::DaemonStopped);
                event
            })
            .collect()
    }

    fn report(
        &mut self,
        event: EventType,
        episode: &Episode,
        tick: &Tick,
        budget: &Budget,
    ) -> Option<HangEvent> {
        if episode.key.kind == HangKind::StuckExit {
            return self.report_exit(event, episode, tick, budget);
        }
        let sample = tick.samples.get(&episode.key.thread)?;
        // The syscall the walk read from the thread's saved registers is the report's; /proc
        // is read only when the walk's is stale (the thread ran and blocked again since) and
        // for a loop stall, which says what the loop thread is doing now. In a mass hang
        // these two reads per report were most of the stage's own CPU. /proc's syscall file
        // takes no mm lock: read on this thread.
        let syscall = if sample.wait().syscall.is_none() || episode.key.kind == HangKind::LoopStall
        {
            match thread_proc(sample.tgid, sample.key) {
                ThreadProc::Alive { syscall } => syscall,
                ThreadProc::Gone => None,
            }
        } else {
            None
        };
        let thread_stacks = self.stacks_of(sample, tick.stacks.get(&sample.key), budget);
        // A lock wait without an owner is reported only when its stack shows a lock.
        let owner = tick.owners.get(&sample.key).copied();
        let symbols = thread_stacks
            .user_stack
            .iter()
            .filter_map(|f| f.symbol.as_deref());
        let lock = match Ownerless::of(episode.key.kind, sample, owner, symbols) {
            Ownerless::NotALock => return None,
            verdict => verdict.lock(),
        };
        // The first report of an episode is its `hang`, even at an update.
        let event = match self.open.contains_key(&episode.key) {
            false if event == EventType::Update => EventType::Hang,
            _ => event,
        };
        let mut cycle = Vec::new();
        if episode.key.kind == HangKind::Deadlock {
            for member in &episode.members {
                let Some(m) = tick.samples.get(member) else {
                    continue;
                };
                let member_stacks = if *member == sample.key {
                    thread_stacks.clone()
                } else {
                    self.stacks_of(m, tick.stacks.get(member), budget)
                };
                let wait = self.wait_of(m, tick);
                cycle.push(CycleMember::of(
                    member.tid,
                    m.thread_name.to_string(),
                    wait,
                    member_stacks,
                ));
            }
        }
        let blocked_on = if tick.owners.contains_key(&sample.key) {
            // The holders' stacks come after the report's own: they give way to newer hangs.
            self.blocked_on(sample, tick, &budget.yielding(&self.newer))
        } else {
            Vec::new()
        };
        let driver = tick.drivers.get(&sample.key);
        let stall = (episode.key.kind == HangKind::LoopStall)
            .then(|| {
                sample.event_loop.or_else(|| {
                    // Recognized from its stack: no loop wait seen (yet).
                    driver.map(|_| crate::state::LoopState {
                        waits: 0,
                        in_wait: false,
                        back_at_ns: episode.key.since_ns,
                        in_futex: false,
                        futex_left_at_ns: 0,
                    })
                })
            })
            .flatten()
            .map(|lp| {
                let blocked = !sample.not_blocked() && !sample.woken;
                let syscall = blocked
                    .then(|| syscall.as_ref().map(|s| syscall_name(s.nr)))
                    .flatten()
                    .or_else(|| blocked.then(|| sample.wait().syscall).flatten());
                LoopStallInfo {
                    doing: match (&syscall, blocked) {
                        (Some(name), _) => format!("blocked in {name}"),
                        (None, true) => "blocked".to_owned(),
                        (None, false) => "running on CPU".to_owned(),
                    },
                    on_cpu: !blocked,
                    syscall,
                    last_return_at: clock::rfc3339(clock::wall_time_of(
                        episode.key.since_ns,
                        tick.now_ns,
                        tick.now_wall,
                    )),
                    loop_waits: lp.waits,
                    parking_worker: tick.parkers.contains(&sample.key),
                    recognized_from: match (sample.event_loop, driver) {
                        (None, Some(_)) => "stack",
                        _ => "loop_waits",
                    },
                    driver_frame: sample
                        .event_loop
                        .is_none()
                        .then(|| driver.map(ToString::to_string))
                        .flatten(),
                }
            });
        let process = tick.processes.get(&sample.tgid);
        let wait = self.wait_of(sample, tick).with_proc_syscall(syscall);
        let base = self.event_of(
            event,
            episode,
            (sample.key.tid, sample.thread_name.to_string()),
            process,
            wait,
            thread_stacks,
            tick,
        );
        Some(HangEvent {
            blocked_since_before_start: sample.blocked_before_attach,
            blocked_on,
            cycle,
            stall,
            lock,
            ..base
        })
    }

    /// A reported thread's wait, with its lock's owner and its wait channel: from the
    /// kernel stack of its `dump_stacks` record while it is blocked (`/proc/.../wchan`
    /// when that cannot say).
    fn wait_of(&mut self, s: &ThreadSample, tick: &Tick) -> Wait {
        let from_stack = (!s.not_blocked())
            .then(|| tick.stacks.get(&s.key))
            .flatten()
            .and_then(|record| self.reader.wchan(record));
        Wait {
            owner_tid: tick.owners.get(&s.key).copied(),
            wchan: from_stack.or_else(|| wchan(s.tgid, s.key.tid)),
            ..s.wait()
        }
    }

    /// The stacks of a thread: from the `dump_stacks` record while it is blocked; while it
    /// runs, its saved registers are stale and its stack is sampled on CPU.
    fn stacks_of(
        &mut self,
        sample: &ThreadSample,
        record: Option<&StackRecord>,
        budget: &Budget,
    ) -> ThreadStacks {
        if sample.not_blocked() && !sample.kernel_thread {
            return self
                .reader
                .running(sample.tgid, sample.key.tid, record, budget);
        }
        let wait = (sample.key, sample.off_cpu_at_ns);
        let regs = record.filter(|r| r.user_ip != 0).map(UserRegisters::of);
        // The same wait (the walk saw no switch since) and, when this tick's record has
        // registers, the same ones: the stack read earlier in this wait is the stack now.
        if let Some((read_from, user)) = self.user_by_wait.get(&wait)
            && regs.is_none_or(|regs| regs == *read_from)
        {
            return self.reader.blocked_with_user(
                record,
                sample.kernel_thread,
                *read_from,
                user.clone(),
            );
        }
        let stacks = self
            .reader
            .blocked(sample.tgid, record, sample.kernel_thread, budget);
        if let Some(regs) = regs
            && stacks.user_read_whole()
        {
            if self.user_by_wait.len() >= 2 * self.open.len() + MAX_HOLDER_STACKS * 16 {
                let live: HashSet<ThreadKey> = self.open.keys().map(|k| k.thread).collect();
                self.user_by_wait
                    .retain(|(thread, _), _| live.contains(thread));
            }
            self.user_by_wait.insert(wait, (regs, stacks.user_part()));
        }
        stacks
    }

    /// A `stuck_exit` report: the process, the signal, and every thread with its wait;
    /// stacks for the first `MAX_EXIT_STACKS` (the signalled thread first).
    fn report_exit(
        &mut self,
        event: EventType,
        episode: &Episode,
        tick: &Tick,
        budget: &Budget,
    ) -> Option<HangEvent> {
        let request = tick.exits.get(&episode.tgid)?;
        let tgid = request.tgid;
        let by_tid: HashMap<u32, &StackRecord> = tick.stacks.values().map(|r| (r.tid, r)).collect();
        let mut tids = futex_owner::task_ids(tgid);
        // The signalled thread first, so that it is among those with stacks.
        tids.sort_unstable_by_key(|&tid| (tid != request.target.tid, tid));
        let total = tids.len();
        // The signalled thread's stack is the report's; the others' give way to newer hangs
        // and get `EXIT_OTHERS_DUE` between them.
        let others = budget.yielding(&self.newer);
        let mut others_due = None;
        let mut threads = Vec::new();
        let mut main = None;
        for (i, tid) in tids.into_iter().enumerate() {
            let Some(t) = futex_owner::proc_thread(tgid, tid) else {
                continue; // exited meanwhile
            };
            let wait = Wait::from_proc(t.state, t.syscall);
            let signalled = tid == request.target.tid;
            if !signalled && others_due.is_none() {
                others_due = Some(Instant::now() + crate::clock::stretched(EXIT_OTHERS_DUE));
            }
            let others_spent = !signalled && others_due.is_some_and(|due| Instant::now() >= due);
            let thread_stacks = if i >= MAX_EXIT_STACKS {
                ThreadStacks::failed(format!(
                    "not captured: a stuck_exit report carries the stacks of {MAX_EXIT_STACKS} of the process's {total} threads"
                ))
            } else if others_spent {
                self.metrics.limit("exit_stacks", 1);
                ThreadStacks::failed(format!(
                    "not captured: a stuck_exit report spends {EXIT_OTHERS_DUE:?} on the stacks of threads other than the signalled one"
                ))
            } else {
                let budget = if signalled { budget } else { &others };
                if t.state == 'R' {
                    self.reader
                        .running(tgid, tid, by_tid.get(&tid).copied(), budget)
                } else {
                    self.reader
                        .blocked(tgid, by_tid.get(&tid).copied(), false, budget)
                }
            };
            if signalled {
                main = Some((t.name.clone(), wait.clone(), thread_stacks.clone()));
            }
            threads.push(CycleMember::of(tid, t.name, wait, thread_stacks));
        }
        let (thread_name, wait, thread_stacks) = main?;
        let base = self.event_of(
            event,
            episode,
            (request.target.tid, thread_name),
            tick.processes.get(&tgid),
            wait,
            thread_stacks,
            tick,
        );
        Some(HangEvent {
            blocked_since_before_start: request.found.before_start(),
            exit: Some(ExitInfo {
                signal: request.signal_name(),
                sender_pid: request.sender_pid,
                sender_comm: request.sender_comm.clone(),
                signals: request.signals,
                found: request.found.name(),
                handler_tid: match request.found {
                    ExitFound::InHandler { tid } => Some(tid),
                    _ => None,
                },
            }),
            threads,
            ..base
        })
    }

    fn resolve(&mut self, episode: &Episode, tick: &Tick) -> Option<HangEvent> {
        let mut report = self.open.remove(&episode.key)?;
        let (resolution, ended_ns) = tick
            .ended
            .get(&episode.key)
            .copied()
            .unwrap_or((Resolution::Running, tick.now_ns));
        report.event = EventType::Resolved;
        report.duration_ms = millis(episode.duration(ended_ns));
        report.resolution = Some(resolution);
        Some(report)
    }

    /// The owners from the lock `start` waits on: each owner, what it waits on, and so on
    /// until a thread not in a lock wait, or one already in the chain.
    fn blocked_on(&mut self, start: &ThreadSample, tick: &Tick, budget: &Budget) -> Vec<BlockedOn> {
        let tgid = start.tgid;
        let by_tid: HashMap<u32, &ThreadSample> = tick
            .samples
            .values()
            .filter(|s| s.tgid == tgid)
            .map(|s| (s.key.tid, s))
            .collect();
        let records: HashMap<u32, &StackRecord> =
            tick.stacks.values().map(|r| (r.tid, r)).collect();
        let mut chain = Vec::new();
        let mut seen = HashSet::from([start.key.tid]);
        let mut next = tick.owners.get(&start.key).copied();
        while let Some(tid) = next {
            if chain.len() >= MAX_CHAIN {
                break;
            }
            let cycle = !seen.insert(tid);
            let link = match by_tid.get(&tid) {
                Some(s) => {
                    let wait = s.wait();
                    BlockedOn {
                        tid,
                        thread_name: s.thread_name.to_string(),
                        state: wait.state.letter(),
                        syscall: wait.syscall.clone().unwrap_or_else(|| "running".into()),
                        futex_op: wait.futex.map(|f| f.op),
                        owner_tid: tick.owners.get(&s.key).copied(),
                        cycle,
                        ..BlockedOn::default()
                    }
                }
                // Not a candidate: running, or in a wait the scan does not report.
                None => match futex_owner::proc_thread(tgid, tid) {
                    Some(t) => {
                        let syscall = t.syscall.filter(|_| t.state != 'R');
                        let call = syscall.as_ref().and_then(FutexCall::from_syscall);
                        let owner_tid = match call.filter(|_| !cycle) {
                            // The lock word is in the process's memory: on the reader.
                            Some(call) => self
                                .reader
                                .read_memory(
                                    tgid,
                                    crate::clock::stretched(super::READ_DEADLINE),
                                    move || futex_owner::read_owner(tgid, &call),
                                )
                                .ok()
                                .flatten(),
                            None => None,
                        };
                        BlockedOn {
                            tid,
                            thread_name: t.name,
                            state: t.state,
                            syscall: syscall
                                .as_ref()
                                .map_or_else(|| "running".into(), |s| syscall_name(s.nr)),
                            futex_op: syscall.as_ref().filter(|_| call.is_some()).map(|s| {
                                let op = if s.nr == libc::SYS_futex {
                                    s.args[1]
                                } else {
                                    s.args[3]
                                };
                                futex_op_name(s.nr, op as u32)
                            }),
                            owner_tid,
                            cycle,
                            ..BlockedOn::default()
                        }
                    }
                    None => break, // exited meanwhile
                },
            };
            next = if cycle { None } else { link.owner_tid };
            // Where the holder is stuck: its stacks, like a cycle member's.
            let link = if cycle {
                link
            } else if chain.len() >= MAX_HOLDER_STACKS {
                link.with_stacks(ThreadStacks::failed(format!(
                    "not read: a report carries the stacks of the first {MAX_HOLDER_STACKS} holders"
                )))
            } else {
                let record = records.get(&tid).copied();
                let stacks = match by_tid.get(&tid) {
                    Some(s) => self.stacks_of(s, record, budget),
                    None if link.state == 'R' => self.reader.running(tgid, tid, record, budget),
                    None => self.reader.blocked(tgid, record, false, budget),
                };
                link.with_stacks(stacks)
            };
            chain.push(link);
        }
        chain
    }

    /// An event of `episode` with what every kind fills the same way (the episode, the
    /// thread, its process, its wait and stacks); the kind-specific parts are left empty.
    #[expect(
        clippy::too_many_arguments,
        reason = "the parts every report shares, from four sources"
    )]
    fn event_of(
        &mut self,
        event: EventType,
        episode: &Episode,
        (tid, thread_name): (u32, String),
        process: Option<&ProcessInfo>,
        wait: Wait,
        stacks: ThreadStacks,
        tick: &Tick,
    ) -> HangEvent {
        let cmdline = if self.stopping {
            super::cmdline::Cmdline {
                error: Some("not read: the daemon is stopping".into()),
                ..super::cmdline::Cmdline::default()
            }
        } else if process.is_some() {
            self.cmdlines.get(episode.tgid, &mut self.reader)
        } else {
            super::cmdline::Cmdline::default()
        };
        HangEvent {
            event,
            id: episode.id.clone(),
            kind: episode.key.kind,
            pid: episode.tgid,
            tid,
            comm: process.map_or_else(|| thread_name.clone(), |p| p.comm.clone()),
            thread_name,
            exe: process.and_then(|p| p.exe.clone()),
            cmdline: cmdline.args,
            cmdline_truncated: cmdline.truncated,
            cmdline_error: cmdline.error,
            cgroup: process.and_then(|p| p.cgroup.clone()),
            workload: Workload::of(process),
            started_at: clock::rfc3339(clock::wall_time_of(
                episode.key.since_ns,
                tick.now_ns,
                tick.now_wall,
            )),
            duration_ms: millis(episode.duration(tick.now_ns)),
            threshold_ms: millis(episode.threshold),
            blocked_since_before_start: false,
            wait,
            blocked_on: Vec::new(),
            cycle: Vec::new(),
            stall: None,
            exit: None,
            threads: Vec::new(),
            reason: episode.reason.as_deref().cloned(),
            lock: None,
            stacks,
            resolution: None,
        }
    }

    /// Readies the readers before the first report (`StackReader::warm`).
    pub fn warm(&mut self) {
        self.reader.warm();
    }

    /// Reads the stacks of loop threads in a futex wait, once per wait, to tell a parked
    /// worker from a stuck one, and of threads of processes with a loop fd, once per wait
    /// or run, for a loop's driver; the verdicts go back to the detection thread.
    pub fn park_checks(&mut self, checks: ParkChecks, stopping: bool) {
        let budget = Budget::until(
            Instant::now() + crate::clock::stretched(REPORT_DUE),
            stopping,
        )
        .yielding(&self.newer);
        for check in checks.threads {
            let read = if check.running {
                self.reader
                    .user_sampled(check.tgid, check.thread.tid, &budget)
            } else {
                self.reader
                    .user_only(check.tgid, check.record.as_ref(), &budget)
            };
            let frames = match read {
                Ok(stack) => stack.frames,
                // Not read yet (a cold cache, a spent budget): no verdict, asked again later.
                Err(not_read) if not_read.later => continue,
                Err(_) => Vec::new(),
            };
            let symbols = frames.iter().filter_map(|f| f.symbol.as_deref());
            // A stack that cannot be read cannot tell: quiet by default, as parked (and
            // without a driver).
            let parked = frames.is_empty() || is_parked(symbols.clone());
            let driver = match checks.check {
                Check::Park => None,
                Check::Driver => driver_frame(symbols).map(Arc::from),
            };
            let verdict = ParkVerdict {
                check: checks.check,
                thread: check.thread,
                since_ns: check.since_ns,
                parked,
                seen_parked: parked && !frames.is_empty(),
                driver,
            };
            if checks.verdicts.try_send(verdict).is_err() {
                return; // the detection thread is gone, or behind: it asks again
            }
        }
    }

    /// Symbolizes the stacks of a `threads --stacks` request, unless its caller gave up.
    pub fn answer_stacks(&mut self, job: StacksJob, stopping: bool) {
        let StacksJob { request, records } = job;
        if request.reply.is_closed() {
            self.metrics.dropped("stack_requests", "caller_gone", 1);
            return;
        }
        let due = Instant::now() + crate::clock::stretched(STACKS_BUDGET);
        let mut answer = Vec::with_capacity(records.len());
        for record in &records {
            let budget = match Budget::until(due, stopping).check() {
                Ok(()) => Budget::Until(due).yielding(&self.newer),
                Err(_) if stopping => Budget::Skip("not read: the daemon is stopping".into()),
                Err(_) => Budget::Skip(format!(
                    "not read: the request's {STACKS_BUDGET:?} were spent on other threads"
                )),
            };
            if request.reply.is_closed() {
                self.metrics.dropped("stack_requests", "caller_gone", 1);
                return;
            }
            answer.push(crate::api::threads::ThreadStacksOf {
                tid: record.tid,
                // Kernel threads have no user registers; `blocked` then says so.
                stacks: self
                    .reader
                    .blocked(request.pid, Some(record), false, &budget),
            });
        }
        let _ = request.reply.send(Ok(answer));
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
