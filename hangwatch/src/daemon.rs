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
    detect::{
        Detectors, Facts, HangKind, LockFacts, LoopFacts, Targets, Watch, loop_stall::is_parked,
    },
    episode::{Episode, EpisodeKey, Tracker, Transition},
    meta::{self, OwnerCache, ProcessCache, ThreadProc, futex_owner, thread_proc, wchan},
    probe::{Lookup, PROBES, ProbeSelection, Probes, ThreadHandle, preflight},
    sink::{
        BlockedOn, CycleMember, EventType, ExitInfo, HangEvent, LoopStallInfo, OutputFormat,
        Resolution, StdoutSink, Workload,
    },
    stack::{StackTaker, ThreadStacks, on_cpu::SampleError},
    state::{
        ExitTable, FutexCall, Refresh, ThreadKey, ThreadSample, ThreadTable, Wait, futex_op_name,
        syscall_name,
    },
};

/// A `blocked_on` chain stops after this many owners.
const MAX_CHAIN: usize = 16;

/// The share of one core the full walks may take; beyond it they are spaced out. With the
/// ticks' own ~0.1 % this keeps the daemon within 0.5 % of a core on a machine with 10,000
/// idle threads (README, "Performance"); a walk costs about 2 µs per thread it returns.
const WALK_CPU_SHARE: f64 = 0.003;

/// `sys_enter_loop` stays attached this long after the last loop thread that needed it, so
/// that a busy loop does not make the daemon attach and detach it at every tick.
const LOOP_PROBE_LINGER: Duration = Duration::from_secs(1);

/// How long shutdown waits for the scan thread before exiting anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct Config {
    /// The rules and the thresholds they give.
    pub detectors: Detectors,
    /// The `--config` file the settings came from, if any.
    pub config_file: Option<String>,
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
    /// Event-loop threads: the on-demand probe and the verdicts on their futex waits.
    loops: LoopFacts,
    /// When a loop thread last needed `sys_enter_loop`.
    loop_probe_wanted_at: Option<Instant>,
    loop_probe_attaches: u64,
    /// Processes sent an exit signal, until they are gone.
    exits: ExitTable,
    /// The last walk's candidates that involve walk-only threads, carried to the ticks
    /// until the next walk.
    carried: Vec<crate::detect::Candidate>,
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
            "probes attached ({} of {} asked for); scanning every {:?}; {}{}",
            enabled_probes(config.probes) - probes.degraded.len(),
            enabled_probes(config.probes),
            config.scan_interval,
            config.detectors.rules().summary(),
            config
                .config_file
                .as_ref()
                .map_or_else(String::new, |f| format!(" (config {f})")),
        );
        Ok(Self {
            probes,
            targets: Targets::new(config.detectors.rules().clone()),
            walk_interval: config.detectors.walk_interval(config.scan_interval),
            config,
            tracker: Tracker::default(),
            processes: ProcessCache::with_pods(pods),
            stacks: StackTaker::default(),
            owners: OwnerCache::default(),
            locks: LockFacts::default(),
            loops: LoopFacts::default(),
            loop_probe_wanted_at: None,
            loop_probe_attaches: 0,
            exits: ExitTable::default(),
            carried: Vec::new(),
            sink,
            surfaces,
            reports: HashMap::new(),
            table: ThreadTable::default(),
            next_walk: None,
            per_thread_reads: crate::probe::thread_pidfds(),
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
    /// Returns whether it walked.
    fn update_table(&mut self, started: Instant, selected: &HashSet<u32>) -> anyhow::Result<bool> {
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
            return Ok(false);
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
            // semaphore...) matters only to the whole-process deadlock rule (and to off_cpu
            // in a selected process, whose threads are all followed), which the walks
            // serve. Idle machines have thousands of those.
            if !crate::state::needs_ticks(record) && !selected.contains(&record.tgid) {
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
        tracing::debug!(
            "walk: {} candidates, {} followed each tick, took {took:?} of CPU",
            self.table.len(),
            self.table.ticked_len()
        );
        Ok(true)
    }

    /// Folds in the exit signals the probe recorded, and forgets processes that are gone.
    fn update_exits(&mut self) -> anyhow::Result<()> {
        if self
            .config
            .detectors
            .smallest(HangKind::StuckExit)
            .is_none()
        {
            return Ok(());
        }
        self.exits.merge(self.probes.drain_exit_signals()?);
        self.exits
            .retain(|r| thread_proc(r.tgid, r.target) != ThreadProc::Gone);
        Ok(())
    }

    /// Watches loop threads closer where the detector asks: reads the stack of one in a
    /// futex wait (once per wait) to tell a parked worker from a stuck one, and keeps
    /// `sys_enter_loop` attached while one runs away from its wait.
    fn follow_loops(&mut self, watch: &[(ThreadKey, Watch)], samples: &[ThreadSample]) {
        let by_key: HashMap<ThreadKey, &ThreadSample> =
            samples.iter().map(|s| (s.key, s)).collect();
        let checks: Vec<&ThreadSample> = watch
            .iter()
            .filter(|(_, w)| *w == Watch::CheckPark)
            .filter_map(|(k, _)| by_key.get(k).copied())
            .collect();
        if !checks.is_empty() {
            let tids: Vec<u32> = checks.iter().map(|s| s.key.tid).collect();
            let records = self.probes.dump_stacks(&tids).unwrap_or_else(|err| {
                tracing::debug!("cannot read stacks of parked loop threads: {err}");
                Vec::new()
            });
            for s in checks {
                let record = records
                    .iter()
                    .find(|r| r.tid == s.key.tid && r.start_boottime_ns == s.key.start_boottime_ns);
                let stacks = self.stacks.take(s.tgid, record, s.kernel_thread);
                // A stack that cannot be read cannot tell: quiet by default, as parked.
                let parked = stacks.user_stack.is_empty()
                    || is_parked(stacks.user_stack.iter().filter_map(|f| f.symbol.as_deref()));
                self.loops.parked.insert(s.key, (s.off_cpu_at_ns, parked));
                if parked && !stacks.user_stack.is_empty() {
                    self.loops.parkers.insert(s.key);
                }
            }
        }
        self.loops.parked.retain(|k, _| by_key.contains_key(k));
        self.loops.parkers.retain(|k| by_key.contains_key(k));

        let now = Instant::now();
        if watch.iter().any(|(_, w)| *w == Watch::Probe) {
            self.loop_probe_wanted_at = Some(now);
        }
        let wanted = self
            .loop_probe_wanted_at
            .is_some_and(|at| now.duration_since(at) < LOOP_PROBE_LINGER);
        match self.probes.set_loop_probe(wanted) {
            Ok(true) if self.loops.probe_since_ns.is_none() => {
                // From now on (not before the attach returned) returns are seen.
                self.loops.probe_since_ns = Some(clock::monotonic_ns());
                self.loop_probe_attaches += 1;
            }
            Ok(true) => {}
            Ok(false) => self.loops.probe_since_ns = None,
            Err(err) => tracing::warn!("sys_enter_loop: {err}"),
        }
    }

    fn scan_once(&mut self, started: Instant) -> anyhow::Result<()> {
        let selected = self.targets.resolve(&mut self.processes, started);
        let walked = self.update_table(started, &selected)?;
        self.update_exits()?;
        let now_ns = clock::monotonic_ns();
        // Between walks only the candidates re-read each tick are looked at again; what the
        // walk-only ones (idle condvar waiters, thousands on a big machine) gave at the last
        // walk is carried, since nothing about them changes until the next walk. This keeps
        // a tick's work proportional to the threads that can change.
        let sample_list = if walked {
            self.table.samples()
        } else {
            self.table.ticked_samples()
        };
        self.read_lock_owners(&sample_list, now_ns);
        let exits = self.exits.requests();
        let detection = self.config.detectors.detect(
            &sample_list,
            &Facts {
                selected: &selected,
                locks: &self.locks,
                loops: &self.loops,
                exits: &exits,
            },
            &mut self.targets.lookup(&mut self.processes, started),
            &mut confirm_deadlock,
            now_ns,
        );
        self.follow_loops(&detection.watch, &sample_list);
        let mut candidates = detection.candidates;
        if walked {
            let table = &self.table;
            self.carried = candidates
                .iter()
                .filter(|c| {
                    std::iter::once(&c.thread)
                        .chain(&c.members)
                        .any(|k| table.walk_only(k))
                })
                .cloned()
                .collect();
        } else {
            let fresh: HashSet<(ThreadKey, HangKind)> =
                candidates.iter().map(|c| (c.thread, c.kind)).collect();
            candidates.extend(
                self.carried
                    .iter()
                    .filter(|c| !fresh.contains(&(c.thread, c.kind)))
                    .cloned(),
            );
        }
        let transitions = self.tracker.step(&candidates, now_ns);
        // Process facts and thresholds are kept while their process has a thread in the
        // scan, an episode, an exit request, or is selected.
        if !walked {
            return self.emit(transitions, now_ns);
        }
        let sampled: HashSet<u32> = sample_list.iter().map(|s| s.tgid).collect();
        let episodes: HashSet<u32> = self.tracker.open_episodes().map(|e| e.tgid).collect();
        let asked_to_exit: HashSet<u32> = exits.iter().map(|e| e.tgid).collect();
        let live = |tgid: u32| {
            sampled.contains(&tgid) || episodes.contains(&tgid) || asked_to_exit.contains(&tgid)
        };
        let targets = &self.targets;
        self.processes
            .retain(|tgid| live(tgid) || targets.keeps(tgid));
        self.targets.retain(live);
        self.emit(transitions, now_ns)
    }

    /// Reports the episodes that opened, grew or ended at this tick.
    fn emit(&mut self, transitions: Vec<Transition>, now_ns: u64) -> anyhow::Result<()> {
        if transitions.is_empty() {
            return Ok(());
        }
        // Every candidate, walk-only ones too (an episode may be one of theirs).
        let all = self.table.samples();
        let samples: HashMap<ThreadKey, &ThreadSample> = all.iter().map(|s| (s.key, s)).collect();
        let wanted: Vec<u32> = transitions
            .iter()
            .flat_map(|t| match t {
                Transition::Opened(e) | Transition::Updated(e)
                    if e.key.kind == HangKind::StuckExit =>
                {
                    futex_owner::task_ids(e.tgid)
                }
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
        if episode.key.kind == HangKind::StuckExit {
            return self.report_exit(event, episode, stacks, now_ns, now_wall);
        }
        let sample = samples.get(&episode.key.thread)?;
        let thread = thread_proc(sample.tgid, sample.key);
        let syscall = match thread {
            ThreadProc::Alive { syscall } => syscall,
            ThreadProc::Gone => None,
        };
        let process = self.processes.get(sample.tgid);
        let thread_stacks = self.stacks_of(sample, stacks.get(&sample.key));
        let with_owner = |s: &ThreadSample, locks: &LockFacts| Wait {
            owner_tid: locks.owners.get(&s.key).copied(),
            wchan: wchan(s.tgid, s.key.tid),
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
                    self.stacks_of(m, stacks.get(member))
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
        let stall = (episode.key.kind == HangKind::LoopStall)
            .then_some(sample.event_loop)
            .flatten()
            .map(|lp| {
                let blocked = !sample.not_blocked() && !sample.woken;
                let syscall = blocked
                    .then(|| syscall.map(|s| syscall_name(s.nr)))
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
                        now_ns,
                        now_wall,
                    )),
                    loop_waits: lp.waits,
                    parking_worker: self.loops.parkers.contains(&sample.key),
                }
            });
        let report = HangEvent {
            blocked_since_before_start: sample.blocked_before_attach,
            blocked_on,
            cycle,
            stall,
            ..event_of(
                event,
                episode,
                (sample.key.tid, sample.thread_name.to_string()),
                process.as_ref(),
                with_owner(sample, &self.locks).with_proc_syscall(syscall),
                thread_stacks,
                (now_ns, now_wall),
            )
        };
        self.reports.insert(episode.key, report.clone());
        Some(report)
    }

    /// The stacks of a thread: from the `dump_stacks` record while it is blocked; while it
    /// runs, its saved registers are stale and its stack is sampled on CPU.
    fn stacks_of(&mut self, sample: &ThreadSample, record: Option<&StackRecord>) -> ThreadStacks {
        if sample.not_blocked() && !sample.kernel_thread {
            return self.running_stacks(sample.tgid, sample.key.tid, record);
        }
        self.stacks.take(sample.tgid, record, sample.kernel_thread)
    }

    /// The stacks of a running thread, from one perf sample of it on CPU (`stack/on_cpu.rs`);
    /// if it went off-CPU meanwhile, from its `dump_stacks` record like a blocked one.
    fn running_stacks(&mut self, pid: u32, tid: u32, record: Option<&StackRecord>) -> ThreadStacks {
        match self.stacks.take_running(pid, tid) {
            Ok(stacks) => stacks,
            Err(SampleError::NoSample { .. }) => self.stacks.take(pid, record, false),
            Err(err) => {
                tracing::debug!("no on-CPU sample of thread {tid}: {err}");
                let why = format!("the thread runs and could not be sampled: {err}");
                ThreadStacks {
                    kernel_stack_error: Some(why.clone()),
                    user_stack_error: Some(why),
                    ..ThreadStacks::default()
                }
            }
        }
    }

    /// A `stuck_exit` report: the process, the signal, and every thread with its stack.
    fn report_exit(
        &mut self,
        event: EventType,
        episode: &Episode,
        stacks: &HashMap<ThreadKey, StackRecord>,
        now_ns: u64,
        now_wall: SystemTime,
    ) -> Option<HangEvent> {
        let request = self.exits.get(episode.tgid)?.clone();
        let tgid = request.tgid;
        let process = self.processes.get(tgid);
        let by_tid: HashMap<u32, &StackRecord> = stacks.values().map(|r| (r.tid, r)).collect();
        let mut threads = Vec::new();
        let mut main = None;
        for tid in futex_owner::task_ids(tgid) {
            let Some(t) = futex_owner::proc_thread(tgid, tid) else {
                continue; // exited meanwhile
            };
            let wait = Wait::from_proc(t.state, t.syscall);
            let thread_stacks = if t.state == 'R' {
                self.running_stacks(tgid, tid, by_tid.get(&tid).copied())
            } else {
                self.stacks.take(tgid, by_tid.get(&tid).copied(), false)
            };
            if tid == request.target.tid {
                main = Some((t.name.clone(), wait.clone(), thread_stacks.clone()));
            }
            threads.push(CycleMember {
                tid,
                thread_name: t.name,
                wait,
                blocked_here: thread_stacks.blocked_here,
                user_stack: thread_stacks.user_stack,
                kernel_stack: thread_stacks.kernel_stack,
            });
        }
        let (thread_name, wait, thread_stacks) = main?;
        let report = HangEvent {
            exit: Some(ExitInfo {
                signal: request.signal_name(),
                sender_pid: request.sender_pid,
                sender_comm: request.sender_comm.clone(),
                signals: request.signals,
            }),
            threads,
            ..event_of(
                event,
                episode,
                (request.target.tid, thread_name),
                process.as_ref(),
                wait,
                thread_stacks,
                (now_ns, now_wall),
            )
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
        let resolution = if (episode.key.kind != HangKind::StuckExit
            && samples.contains_key(&episode.key.thread))
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
            watched_processes: self.targets.selected().len(),
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
            "detached after {} scans (mean {:?}) and {} full walks (mean {:?}, every {:?}), {} candidate threads at the end; counters: {counters}; events dropped: {}; processes vanished: {}; kernel symbolization {:?}; user stacks: {} in {:?}, module cache {:?} (hits, misses); lock owner reads: {}; sys_enter_loop attached {} times; processes asked to exit and still there: {}",
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
            self.loop_probe_attaches,
            self.exits.len(),
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

/// An event of `episode` with what every kind fills the same way (the episode, the thread,
/// its process, its wait and stacks); the kind-specific parts are left empty.
fn event_of(
    event: EventType,
    episode: &Episode,
    (tid, thread_name): (u32, String),
    process: Option<&meta::ProcessInfo>,
    wait: Wait,
    stacks: ThreadStacks,
    (now_ns, now_wall): (u64, SystemTime),
) -> HangEvent {
    HangEvent {
        event,
        id: episode.id.clone(),
        kind: episode.key.kind,
        pid: episode.tgid,
        tid,
        comm: process.map_or_else(|| thread_name.clone(), |p| p.comm.clone()),
        thread_name,
        exe: process.and_then(|p| p.exe.clone()),
        cmdline: process.map(|p| p.cmdline.clone()).unwrap_or_default(),
        cgroup: process.and_then(|p| p.cgroup.clone()),
        workload: Workload::of(process),
        started_at: clock::rfc3339(clock::wall_time_of(episode.key.since_ns, now_ns, now_wall)),
        duration_ms: millis(episode.duration(now_ns)),
        threshold_ms: millis(episode.threshold),
        blocked_since_before_start: false,
        wait,
        blocked_on: Vec::new(),
        cycle: Vec::new(),
        stall: None,
        exit: None,
        threads: Vec::new(),
        stacks,
        resolution: None,
    }
}
