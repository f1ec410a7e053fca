//! The pipeline, in one place:
//!
//! probes (BPF task storage) -> scan (task iterator) -> thread samples -> detectors
//!   -> episodes -> enrich (stacks, process) -> sinks
//!
//! The scan loop runs on its own thread; `run` waits for SIGTERM/SIGINT on the calling
//! thread and returns within a second of it, whatever the scan is doing (a read of /proc
//! can block on a hung process; the kernel detaches our fd-based links when we exit).
use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use hangwatch_ebpf::StackRecord;
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::{
    api, clock,
    detect::{Detectors, HangKind, LockFacts, Targets},
    episode::{Episode, EpisodeKey, Tracker, Transition},
    meta::{self, OwnerCache, ProcessCache, ThreadProc, futex_owner, thread_proc},
    probe::{Lookup, PROBES, ProbeSelection, Probes, ThreadHandle, preflight},
    sink::{
        BlockedOn, CycleMember, EventType, HangEvent, OutputFormat, Resolution, StdoutSink,
        Workload,
    },
    stack::StackTaker,
    state::{
        FutexCall, Refresh, ThreadKey, ThreadSample, ThreadTable, Wait, futex_op_name, syscall_name,
    },
};

/// A `blocked_on` chain stops after this many owners.
const MAX_CHAIN: usize = 16;

/// The share of one core the full walks may take; beyond it they are spaced out.
const WALK_CPU_SHARE: f64 = 0.004;

/// How long shutdown waits for the scan thread before exiting anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct Config {
    pub detectors: Detectors,
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub scan_interval: Duration,
    pub output: OutputFormat,
    /// Where the HTTP API and `/metrics` listen; `None` for off.
    pub listen: Option<std::net::SocketAddr>,
    /// Where events are POSTed, if anywhere.
    pub webhook: Option<crate::sink::WebhookUrl>,
    /// The optional probe groups to attach besides `sched_switch`.
    pub probes: ProbeSelection,
    /// The Kubernetes node this daemon runs on: when set, its pods are watched to name the
    /// namespace, pod and container of hung processes.
    pub node_name: Option<String>,
}

fn enabled_probes(selection: ProbeSelection) -> usize {
    PROBES.iter().filter(|p| selection.enabled(p.group)).count()
}

/// Runs until SIGTERM or SIGINT. Start-up failures are returned before anything runs.
pub fn run(config: Config) -> anyhow::Result<()> {
    let preflight = preflight::check()?;
    if preflight.mounted_tracefs {
        tracing::info!("mounted tracefs at /sys/kernel/tracing");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (wake_tx, wake_rx) = mpsc::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
    let (done_tx, done_rx) = mpsc::channel::<()>();

    // Signals first, so that a SIGTERM during load is not lost.
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("cannot install signal handlers")?;

    // The HTTP server first: a taken port fails the start before the probes load, and
    // /healthz answers 503 until they are attached.
    let surfaces = api::Surfaces::start(&config)?;
    let pods = match &config.node_name {
        Some(node) => Some(meta::pods::watch_node(node.clone())?),
        None => None,
    };

    let scan_stop = stop.clone();
    thread::Builder::new()
        .name("hangwatch-scan".into())
        .spawn(move || {
            let result = Scanner::start(config, surfaces, pods);
            match result {
                Ok(mut scanner) => {
                    let _ = ready_tx.send(Ok(()));
                    scanner.run(&scan_stop, &wake_rx);
                    scanner.log_summary();
                }
                Err(err) => {
                    let _ = ready_tx.send(Err(err));
                }
            }
            let _ = done_tx.send(());
        })
        .context("cannot start the scan thread")?;

    // Wait for the probes or a signal, whichever comes first.
    loop {
        match ready_rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Ok(())) => break,
            Ok(Err(err)) => return Err(err),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if signals.pending().next().is_some() {
                    return Ok(());
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                anyhow::bail!("the scan thread died during start-up")
            }
        }
    }

    let signal = signals.forever().next();
    tracing::info!("received signal {}, detaching", signal.unwrap_or_default());
    stop.store(true, Ordering::SeqCst);
    let _ = wake_tx.send(());
    if done_rx.recv_timeout(SHUTDOWN_GRACE).is_err() {
        tracing::warn!("the scan is stuck; exiting without it (the kernel detaches the probes)");
    }
    Ok(())
}

/// The scan loop's state: everything that lives from one scan to the next.
struct Scanner {
    probes: Probes,
    config: Config,
    targets: Targets,
    tracker: Tracker,
    processes: ProcessCache,
    stacks: StackTaker,
    /// Lock owners read from the waiters' processes, per wait.
    owners: OwnerCache,
    /// This scan's lock owners.
    locks: LockFacts,
    sink: StdoutSink,
    /// The other outputs: the API store, the metrics, the webhook.
    surfaces: api::Surfaces,
    /// The last report of each open episode, which its `resolved` event repeats.
    reports: HashMap<EpisodeKey, HangEvent>,
    /// Threads that may cross a threshold before the next full walk.
    table: ThreadTable<ThreadHandle>,
    walk_interval: Duration,
    next_walk: Option<Instant>,
    /// False when this kernel cannot open thread pidfds (before 6.9): then every tick walks.
    per_thread_reads: bool,
    /// Walks were spaced out beyond `walk_interval` (logged once).
    walks_stretched: bool,
    scans: u64,
    walks: u64,
    walk_time: Duration,
    scan_time: Duration,
}

impl Scanner {
    fn start(
        config: Config,
        mut surfaces: api::Surfaces,
        pods: Option<Arc<meta::pods::PodIndex>>,
    ) -> anyhow::Result<Self> {
        let mut probes = Probes::load(config.probes)?;
        for d in &probes.degraded {
            tracing::warn!(
                "probe {} not attached ({}): {}",
                d.spec.program,
                d.reason,
                d.spec.without.unwrap_or_default()
            );
        }
        probes.set_scan_config(config.detectors.scan_config())?;
        let sink = StdoutSink::spawn(config.output).context("cannot start the output thread")?;
        surfaces.probes_attached(&probes);
        tracing::info!(
            "probes attached ({} of {} asked for); scanning every {:?}; d_state {}; lock_wait {}; deadlock {}; off_cpu {}",
            enabled_probes(config.probes) - probes.degraded.len(),
            enabled_probes(config.probes),
            config.scan_interval,
            config
                .detectors
                .d_state
                .as_ref()
                .map_or("off".to_owned(), |d| format!("after {:?}", d.threshold)),
            config
                .detectors
                .lock_wait
                .as_ref()
                .map_or("off".to_owned(), |l| format!("after {:?}", l.threshold)),
            config
                .detectors
                .deadlock
                .as_ref()
                .map_or("off".to_owned(), |d| format!("held {:?}", d.hold)),
            match &config.detectors.off_cpu {
                Some(o) if !(config.pids.is_empty() && config.comms.is_empty()) => format!(
                    "after {:?} for pids {:?} comms {:?}",
                    o.threshold, config.pids, config.comms
                ),
                _ => "off (no --pid/--comm)".to_owned(),
            }
        );
        Ok(Self {
            probes,
            targets: Targets::new(config.pids.clone(), config.comms.clone()),
            walk_interval: config.detectors.walk_interval(config.scan_interval),
            config,
            tracker: Tracker::default(),
            processes: ProcessCache::with_pods(pods),
            stacks: StackTaker::default(),
            owners: OwnerCache::default(),
            locks: LockFacts::default(),
            sink,
            surfaces,
            reports: HashMap::new(),
            table: ThreadTable::default(),
            next_walk: None,
            per_thread_reads: true,
            walks_stretched: false,
            scans: 0,
            walks: 0,
            walk_time: Duration::ZERO,
            scan_time: Duration::ZERO,
        })
    }

    fn run(&mut self, stop: &AtomicBool, wake: &mpsc::Receiver<()>) {
        while !stop.load(Ordering::SeqCst) {
            let started = Instant::now();
            if let Err(err) = self.scan_once(started) {
                tracing::error!("scan failed: {err:#}");
            }
            self.scans += 1;
            self.scan_time += started.elapsed();
            self.publish_figures(started.elapsed());
            let next = started + self.config.scan_interval;
            // Sleeps until the next scan, or returns at once on shutdown.
            match wake.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Brings the thread table up to date: a full walk when one is due, else a re-read of
    /// each candidate.
    fn update_table(&mut self, started: Instant, selected: &HashSet<u32>) -> anyhow::Result<()> {
        let walk_due = !self.per_thread_reads || self.next_walk.is_none_or(|at| started >= at);
        if !walk_due {
            let probes = &self.probes;
            self.table.refresh(clock::monotonic_ns(), |handle| {
                match probes.read_thread(handle) {
                    Ok(Lookup::Found(state)) => Refresh::State(state),
                    Ok(Lookup::NoState) => Refresh::Unchanged,
                    Ok(Lookup::Gone) => Refresh::Gone,
                    Err(err) => {
                        tracing::debug!("cannot read a thread's state: {err}");
                        Refresh::Unchanged
                    }
                }
            });
            return Ok(());
        }
        let full = self.probes.set_watched(selected)?;
        if full > 0 {
            tracing::warn!(
                "{full} selected processes do not fit the watch map and are not watched"
            );
        }
        let walk_started = Instant::now();
        let cpu_before = clock::thread_cpu_time();
        let records = self.probes.scan_threads()?;
        // CPU time, not wall time: a busy machine makes walks slower, not costlier.
        let took = clock::thread_cpu_time().saturating_sub(cpu_before);
        self.walks += 1;
        self.walk_time += walk_started.elapsed();
        // A walk costs about a microsecond per thread of the machine: on a machine with very
        // many threads, walk less often so that walking stays within WALK_CPU_SHARE of a core
        // (detection of newly blocked threads then takes up to that interval longer).
        let interval = self.walk_interval.max(took.mul_f64(1.0 / WALK_CPU_SHARE));
        if interval > self.walk_interval && !self.walks_stretched {
            self.walks_stretched = true;
            tracing::info!(
                "a full walk takes {took:?} of CPU: walking every {interval:?} instead of every {:?} to stay within {:.1}% of a core",
                self.walk_interval,
                WALK_CPU_SHARE * 100.0
            );
        }
        self.next_walk = Some(started + interval);
        let probes = &self.probes;
        let per_thread_reads = &mut self.per_thread_reads;
        self.table.replace(&records, |record| {
            // Only candidates a detector may report before the next walk are re-read each
            // tick: a futex wait that cannot be a lock with an owner (a condvar, a
            // semaphore...) matters only to the whole-process deadlock rule, which the walks
            // serve. Idle machines have thousands of those.
            if !crate::state::needs_ticks(record) {
                return None;
            }
            match probes.open_thread(record.tid) {
            Ok(handle) => Some(handle),
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                if std::mem::replace(per_thread_reads, false) {
                    tracing::info!(
                        "this kernel has no thread pidfds (Linux 6.9+): walking every thread at each scan"
                    );
                }
                None
            }
            // Exited since the walk: the next refresh or walk drops it.
            Err(_) => None,
            }
        });
        Ok(())
    }

    fn scan_once(&mut self, started: Instant) -> anyhow::Result<()> {
        let selected = self.targets.resolve(started);
        self.update_table(started, &selected)?;
        let now_ns = clock::monotonic_ns();
        let sample_list = self.table.samples();
        let samples: HashMap<ThreadKey, &ThreadSample> =
            sample_list.iter().map(|s| (s.key, s)).collect();
        self.read_lock_owners(&sample_list, now_ns);
        let candidates = self.config.detectors.detect(
            &sample_list,
            &selected,
            &self.locks,
            &mut confirm_deadlock,
            now_ns,
        );
        let transitions = self.tracker.step(&candidates, now_ns);
        if transitions.is_empty() {
            return Ok(());
        }

        let wanted: Vec<u32> = transitions
            .iter()
            .flat_map(|t| match t {
                Transition::Opened(e) | Transition::Updated(e) => std::iter::once(e.key.thread.tid)
                    .chain(e.members.iter().map(|m| m.tid))
                    .collect(),
                Transition::Ended(_) => Vec::new(),
            })
            .collect::<HashSet<u32>>()
            .into_iter()
            .collect();
        let stacks: HashMap<ThreadKey, StackRecord> = self
            .probes
            .dump_stacks(&wanted)?
            .into_iter()
            .map(|s| {
                let key = ThreadKey {
                    tid: s.tid,
                    start_boottime_ns: s.start_boottime_ns,
                };
                (key, s)
            })
            .collect();

        let now_wall = SystemTime::now();
        for transition in transitions {
            let reported = Instant::now();
            let event = match transition {
                Transition::Opened(episode) => self.report(
                    EventType::Hang,
                    &episode,
                    &samples,
                    &stacks,
                    now_ns,
                    now_wall,
                ),
                Transition::Updated(episode) => self.report(
                    EventType::Update,
                    &episode,
                    &samples,
                    &stacks,
                    now_ns,
                    now_wall,
                ),
                Transition::Ended(episode) => self.resolve(&episode, &samples, now_ns),
            };
            self.surfaces.metrics().report(reported.elapsed());
            if let Some(event) = event {
                self.surfaces.hub.publish(&event);
                self.sink.send(event);
            }
        }
        let live: HashSet<u32> = self.tracker.open_episodes().map(|e| e.tgid).collect();
        self.processes
            .retain(|tgid| live.contains(&tgid) || selected.contains(&tgid));
        Ok(())
    }

    /// Reads the owner of the lock each futex waiter waits on (cached per wait).
    fn read_lock_owners(&mut self, samples: &[ThreadSample], now_ns: u64) {
        self.locks.owners.clear();
        if !self.config.detectors.wants_futex_waits() {
            return;
        }
        let mut live = HashSet::new();
        for sample in samples {
            // Condvar and semaphore waits name no owner: skip them before any lookup, an idle
            // machine has thousands.
            let Some(call) = sample.futex_wait().filter(|c| c.may_have_owner()) else {
                continue;
            };
            live.insert((sample.key, sample.off_cpu_at_ns));
            if let Some(owner) =
                self.owners
                    .owner(sample.tgid, sample.key, sample.off_cpu_at_ns, &call, now_ns)
            {
                self.locks.owners.insert(sample.key, owner);
            }
        }
        self.owners.retain(|k| live.contains(k));
    }

    /// The owners from the lock `start` waits on: each owner, what it waits on, and so on
    /// until a thread not in a lock wait, or one already in the chain.
    fn blocked_on(
        &self,
        tgid: u32,
        start: &ThreadSample,
        samples: &HashMap<ThreadKey, &ThreadSample>,
    ) -> Vec<BlockedOn> {
        let by_tid: HashMap<u32, &ThreadSample> = samples
            .values()
            .filter(|s| s.tgid == tgid)
            .map(|s| (s.key.tid, *s))
            .collect();
        let mut chain = Vec::new();
        let mut seen = HashSet::from([start.key.tid]);
        let mut next = self.locks.owners.get(&start.key).copied();
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
                        owner_tid: self.locks.owners.get(&s.key).copied(),
                        cycle,
                    }
                }
                // Not a candidate: running, or in a wait the scan does not report.
                None => match futex_owner::proc_thread(tgid, tid) {
                    Some(t) => {
                        let syscall = t.syscall.filter(|_| t.state != 'R');
                        let call = syscall.as_ref().and_then(FutexCall::from_syscall);
                        BlockedOn {
                            tid,
                            thread_name: t.name,
                            state: t.state,
                            syscall: syscall
                                .map_or_else(|| "running".into(), |s| syscall_name(s.nr)),
                            futex_op: syscall.filter(|_| call.is_some()).map(|s| {
                                let op = if s.nr == libc::SYS_futex {
                                    s.args[1]
                                } else {
                                    s.args[3]
                                };
                                futex_op_name(s.nr, op as u32)
                            }),
                            owner_tid: call
                                .filter(|_| !cycle)
                                .and_then(|c| futex_owner::read_owner(tgid, &c)),
                            cycle,
                        }
                    }
                    None => break, // exited meanwhile
                },
            };
            next = if cycle { None } else { link.owner_tid };
            chain.push(link);
        }
        chain
    }

    fn report(
        &mut self,
        event: EventType,
        episode: &Episode,
        samples: &HashMap<ThreadKey, &ThreadSample>,
        stacks: &HashMap<ThreadKey, StackRecord>,
        now_ns: u64,
        now_wall: SystemTime,
    ) -> Option<HangEvent> {
        let sample = samples.get(&episode.key.thread)?;
        let thread = thread_proc(sample.tgid, sample.key);
        let syscall = match thread {
            ThreadProc::Alive { syscall } => syscall,
            ThreadProc::Gone => None,
        };
        let process = self.processes.get(sample.tgid);
        let thread_stacks =
            self.stacks
                .take(sample.tgid, stacks.get(&sample.key), sample.kernel_thread);
        let with_owner = |s: &ThreadSample, locks: &LockFacts| Wait {
            owner_tid: locks.owners.get(&s.key).copied(),
            ..s.wait()
        };
        let mut cycle = Vec::new();
        if episode.key.kind == HangKind::Deadlock {
            for member in &episode.members {
                let Some(m) = samples.get(member) else {
                    continue;
                };
                let member_stacks = if *member == sample.key {
                    thread_stacks.clone()
                } else {
                    self.stacks
                        .take(m.tgid, stacks.get(member), m.kernel_thread)
                };
                cycle.push(CycleMember {
                    tid: member.tid,
                    thread_name: m.thread_name.to_string(),
                    wait: with_owner(m, &self.locks),
                    blocked_here: member_stacks.blocked_here,
                    user_stack: member_stacks.user_stack,
                    kernel_stack: member_stacks.kernel_stack,
                });
            }
        }
        let blocked_on = if self.locks.owners.contains_key(&sample.key) {
            self.blocked_on(sample.tgid, sample, samples)
        } else {
            Vec::new()
        };
        let report = HangEvent {
            event,
            id: episode.id.clone(),
            kind: episode.key.kind,
            pid: sample.tgid,
            tid: sample.key.tid,
            comm: process
                .as_ref()
                .map_or_else(|| sample.thread_name.to_string(), |p| p.comm.clone()),
            thread_name: sample.thread_name.to_string(),
            exe: process.as_ref().and_then(|p| p.exe.clone()),
            cmdline: process
                .as_ref()
                .map(|p| p.cmdline.clone())
                .unwrap_or_default(),
            cgroup: process.as_ref().and_then(|p| p.cgroup.clone()),
            workload: Workload::of(process.as_ref()),
            started_at: clock::rfc3339(clock::wall_time_of(episode.key.since_ns, now_ns, now_wall)),
            duration_ms: millis(episode.duration(now_ns)),
            threshold_ms: millis(episode.threshold),
            blocked_since_before_start: sample.blocked_before_attach,
            wait: with_owner(sample, &self.locks).with_proc_syscall(syscall),
            blocked_on,
            cycle,
            stacks: thread_stacks,
            resolution: None,
        };
        self.reports.insert(episode.key, report.clone());
        Some(report)
    }

    fn resolve(
        &mut self,
        episode: &Episode,
        samples: &HashMap<ThreadKey, &ThreadSample>,
        now_ns: u64,
    ) -> Option<HangEvent> {
        let mut report = self.reports.remove(&episode.key)?;
        // Still in the scan (a new wait, or woken) or still in /proc: it moved on.
        let resolution = if samples.contains_key(&episode.key.thread)
            || thread_proc(episode.tgid, episode.key.thread) != ThreadProc::Gone
        {
            Resolution::Running
        } else {
            Resolution::Exited
        };
        report.event = EventType::Resolved;
        // The switch-in that ended the wait when the last read saw it, else now: an exit
        // or a wakeup between two ticks is known only to the tick.
        let ended_ns = self
            .table
            .wait_end(&episode.key.thread, episode.key.since_ns)
            .unwrap_or(now_ns);
        report.duration_ms = millis(episode.duration(ended_ns));
        report.resolution = Some(resolution);
        Some(report)
    }

    /// Hands this scan's figures to the status and the metrics, and answers the API's
    /// stack requests (this thread owns the iterators).
    fn publish_figures(&mut self, took: Duration) {
        self.surfaces
            .answer_stack_requests(&mut self.probes, &mut self.stacks);
        let figures = api::ScanFigures {
            took,
            scans: self.scans,
            walks: self.walks,
            scan_time: self.scan_time,
            walk_time: self.walk_time,
            tracked_threads: self.table.len(),
            watched_processes: self.targets.resolve(Instant::now()).len(),
            bpf_counters: self.probes.counters().unwrap_or_default(),
            kernel_symbolize: (self.stacks.kernel.spent, self.stacks.kernel.failures),
            user_stacks: (self.stacks.user.spent, self.stacks.user.captured),
            module_cache: self.stacks.user.module_cache(),
            stdout_dropped: self.sink.dropped.load(Ordering::Relaxed),
        };
        self.surfaces.after_scan(&figures);
    }

    fn log_summary(&self) {
        let counters = self
            .probes
            .counters()
            .map(|c| {
                c.iter()
                    .map(|(k, v)| format!("{k:?}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|e| format!("unreadable: {e}"));
        let mean = |total: Duration, n: u64| total.checked_div(n.max(1) as u32).unwrap_or_default();
        tracing::info!(
            "detached after {} scans (mean {:?}) and {} full walks (mean {:?}, every {:?}), {} candidate threads at the end; counters: {counters}; events dropped: {}; processes vanished: {}; kernel symbolization {:?}; user stacks: {} in {:?}, module cache {:?} (hits, misses); lock owner reads: {}",
            self.scans,
            mean(self.scan_time, self.scans),
            self.walks,
            mean(self.walk_time, self.walks),
            self.walk_interval,
            self.table.len(),
            self.sink.dropped.load(Ordering::Relaxed),
            self.processes.vanished,
            self.stacks.kernel.spent,
            self.stacks.user.captured,
            self.stacks.user.spent,
            self.stacks.user.module_cache(),
            self.owners.reads_done,
        );
        for stats in self.probes.program_stats() {
            tracing::info!("{stats}");
        }
    }
}

/// A deadlock seen in the samples, checked against /proc now: every member still alive,
/// in the same futex wait, with no kill pending; for a whole process, no other thread.
fn confirm_deadlock(members: &[&ThreadSample], whole_process: bool) -> bool {
    let Some(tgid) = members.first().map(|m| m.tgid) else {
        return false;
    };
    if whole_process && futex_owner::thread_count(tgid) != Some(members.len()) {
        return false;
    }
    members.iter().all(|m| {
        let Some(now) = futex_owner::proc_thread(tgid, m.key.tid) else {
            return false;
        };
        let same_wait = match (
            now.syscall.as_ref().and_then(FutexCall::from_syscall),
            m.futex_wait(),
        ) {
            (Some(now), Some(then)) => now.uaddr == then.uaddr,
            _ => false,
        };
        same_wait && now.state == 'S' && !futex_owner::kill_pending(tgid, m.key.tid)
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
