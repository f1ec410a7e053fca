//! The pipeline, in one place:
//!
//! probes (BPF task storage) -> scan (task iterator) -> thread samples -> detectors
//!   -> episodes -> enrich (stacks, process; `enrich/`, on its own thread) -> sinks
//!
//! This file is the detection loop: it runs on its own thread and never reads what a
//! watched process could block (its memory, its command line, its files): those reads
//! happen in the enrich stage and on reader workers under deadlines (`meta::reader`), so
//! a process stuck in the kernel costs its own report some detail, never the detection
//! of other hangs. `run` waits for SIGTERM/SIGINT on the calling thread and returns
//! within a second of it whatever any thread is doing: every read of a target is killable,
//! so the process exits and the kernel detaches the probes.
use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

pub use self::reload::ReloadSource;
use self::{
    reload::Reload,
    surfaces::{ScanFigures, Surfaces},
};
use crate::{
    clock,
    config::OutputFormat,
    detect::{Detectors, Facts, LoopFacts, Targets, Watch, checked_stretch_ns},
    enrich::{
        Check, Enrich, Job, MAX_EXIT_STACKS, ParkChecks, ParkVerdict, Sinks, StackCheck, StacksJob,
        Tick,
    },
    episode::{Episode, Tracker, Transition},
    kind::HangKind,
    meta::{
        self, LockFacts, OwnerCache, ProcessCache, ThreadProc, futex_owner,
        loop_fds::{Change as LoopFdChange, LoopFds},
        thread_proc,
    },
    probe::{Lookup, PROBES, ProbeSelection, Probes, ThreadHandle, preflight},
    sink::{Resolution, StdoutSink},
    state::{ExitTable, Refresh, ThreadKey, ThreadSample, ThreadTable},
};

mod early_exits;
mod reload;
mod surfaces;

/// The share of one core the full walks may take; beyond it they are spaced out. With the
/// ticks' own ~0.1 % this keeps the daemon within 0.5 % of a core on a machine with 10,000
/// idle threads (docs/benchmarks.md); a walk costs about 2 µs per thread it returns.
const WALK_CPU_SHARE: f64 = 0.003;
/// While a mass hang is reported (at least `MASS_EPISODES` open episodes) the walks may
/// take this share instead: their cost is then mostly the hang's own threads (2,000 threads
/// in D made a walk cost 5 ms, and spacing by it put 1.7 s between walks), and a thread
/// whose wait only a walk sees (a futex deadlock beside the mass hang) waited that long
/// past its threshold. Reporting the mass hang costs far more than the walks.
const WALK_CPU_SHARE_MASS: f64 = 0.03;
const MASS_EPISODES: usize = 100;

/// `sys_enter_loop` stays attached this long after the last loop thread that needed it, so
/// that a busy loop does not make the daemon attach and detach it at every tick.
const LOOP_PROBE_LINGER: Duration = Duration::from_secs(1);

/// How long shutdown waits for the detection loop and the sinks before exiting anyway:
/// with the time to get here, SIGTERM to exit stays under a second.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(700);

/// A park check not answered within this long is asked again.
const PARK_CHECK_RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct Config {
    /// The rules and the thresholds they give.
    pub detectors: Detectors,
    /// The `--config` file the settings came from, if any.
    pub config_file: Option<String>,
    pub scan_interval: Duration,
    pub output: OutputFormat,
    /// Where `/metrics` and `/healthz` listen; `None` for off.
    pub listen: Option<std::net::SocketAddr>,
    /// Where the per-process API is served, and what the outputs leave out.
    pub expose: crate::api::options::Exposure,
    /// Where events are POSTed, if anywhere, and how.
    pub webhook: Option<crate::sink::WebhookConfig>,
    /// The format of the daemon's own log on stderr.
    pub log_format: crate::logging::LogFormat,
    /// The `--config` file and the flags this came from, read again on SIGHUP.
    pub reload: Option<ReloadSource>,
    /// The optional probe groups to attach besides `sched_switch`.
    pub probes: ProbeSelection,
    /// The Kubernetes node this daemon runs on: when set, its pods are watched to name the
    /// namespace, pod and container of hung processes.
    pub node_name: Option<String>,
}

fn enabled_probes(selection: ProbeSelection) -> usize {
    PROBES.iter().filter(|p| selection.enabled(p.group)).count()
}

/// Runs until SIGTERM or SIGINT; SIGHUP reloads the rules (`daemon/reload.rs`). Start-up
/// failures are returned before anything runs.
pub fn run(config: Config) -> anyhow::Result<()> {
    let preflight = preflight::check()?;
    if preflight.mounted_tracefs {
        tracing::info!("mounted tracefs at /sys/kernel/tracing");
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Set with `stop`: the enrich stage reads no more targets and flushes.
    let stopping = Arc::new(AtomicBool::new(false));
    let (wake_tx, wake_rx) = mpsc::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
    let (flushed_tx, flushed_rx) = mpsc::channel::<()>();

    // Signals first, so that a SIGTERM during load is not lost.
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("cannot install signal handlers")?;

    // The HTTP server first: a taken port fails the start before the probes load, and
    // /healthz answers 503 until they are attached.
    let mut surfaces = Surfaces::start(&config)?;
    let reload = Reload::new(&config, &surfaces);
    let scan_reload = Arc::clone(&reload);
    let pods = match &config.node_name {
        Some(node) => Some(meta::pods::watch_node(node.clone())?),
        None => None,
    };
    let stdout = StdoutSink::spawn(config.output, surfaces.shared().0)
        .context("cannot start the output thread")?;
    let enrich = Enrich::spawn(
        Sinks {
            stdout,
            hub: surfaces.take_hub(),
        },
        Arc::clone(&stopping),
        flushed_tx,
    )
    .context("cannot start the enrich stage")?;

    let scan_stop = stop.clone();
    thread::Builder::new()
        .name("hangwatch-scan".into())
        .spawn(move || {
            let result = Scanner::start(config, surfaces, pods, enrich);
            match result {
                Ok(mut scanner) => {
                    let _ = ready_tx.send(Ok(()));
                    // A panic here is a bug in detection: the daemon must not stay up
                    // blind, answering /healthz. Exit non-zero; the DaemonSet restarts it.
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        scanner.run(&scan_stop, &wake_rx, &scan_reload);
                    }));
                    if ran.is_err() {
                        tracing::error!("the detection loop panicked: exiting");
                        crate::logging::finish(Instant::now() + crate::logging::FLUSH_AT_EXIT);
                        std::process::exit(70);
                    }
                    scanner.log_summary();
                }
                Err(err) => {
                    let _ = ready_tx.send(Err(err));
                }
            }
        })
        .context("cannot start the scan thread")?;

    // Wait for the probes or a signal, whichever comes first.
    loop {
        match ready_rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Ok(())) => break,
            Ok(Err(err)) => return Err(err),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if signals.pending().any(|signal| !reload.on_signal(signal)) {
                    return Ok(());
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                anyhow::bail!("the scan thread died during start-up")
            }
        }
    }

    let signal = signals.forever().find(|&signal| !reload.on_signal(signal));
    let signalled = Instant::now();
    tracing::info!("received signal {}, detaching", signal.unwrap_or_default());
    stopping.store(true, Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    let _ = wake_tx.send(());
    // The detection loop ends at once (its thread drops the probes and the enrich queue);
    // the enrich stage then ends the open episodes (`daemon_stopped`) and flushes stdout
    // and the webhook. Whatever is stuck past the grace is left to the exit: every read of
    // a target is killable, so nothing keeps this process (and its BPF links) alive.
    if flushed_rx.recv_timeout(SHUTDOWN_GRACE).is_err() {
        tracing::warn!(
            "not flushed within {SHUTDOWN_GRACE:?}; exiting anyway (the kernel detaches the probes)"
        );
    }
    tracing::debug!("stopped {:?} after the signal", signalled.elapsed());
    Ok(())
}

/// The detection loop's state: everything that lives from one scan to the next.
struct Scanner {
    probes: Probes,
    config: Config,
    targets: Targets,
    tracker: Tracker,
    processes: ProcessCache,
    /// Lock owners read from the waiters' processes, per wait (on a reader worker).
    owners: OwnerCache,
    /// This scan's lock owners.
    locks: LockFacts,
    /// Event-loop threads: the on-demand probe and the verdicts on their futex waits.
    loops: LoopFacts,
    /// Park checks handed to the enrich stage and not answered yet, by wait.
    park_checks: HashMap<(ThreadKey, u64), Instant>,
    park_verdicts: (mpsc::SyncSender<ParkVerdict>, mpsc::Receiver<ParkVerdict>),
    /// Processes with an epoll or io_uring fd, read on a thread of its own.
    loop_fds: LoopFds,
    /// When a loop thread last needed `sys_enter_loop`.
    loop_probe_wanted_at: Option<Instant>,
    loop_probe_attaches: u64,
    /// Processes sent an exit signal, until they are gone.
    exits: ExitTable,
    /// Exit requests from before the start (none when `stuck_exit` is off).
    early_exits: Option<early_exits::EarlyExits>,
    /// The last walk's candidates that involve walk-only threads, carried to the ticks
    /// until the next walk.
    carried: Vec<crate::detect::Candidate>,
    /// The next stage: turns transitions into events, off this thread.
    enrich: Enrich,
    /// The other outputs: the API store, the metrics, the webhook.
    surfaces: Surfaces,
    /// Threads that may cross a threshold before the next full walk.
    table: ThreadTable<ThreadHandle>,
    walk_interval: Duration,
    /// When the last walk started and the CPU it took; none: a walk is due now.
    last_walk: Option<(Instant, Duration)>,
    /// False when this kernel cannot open thread pidfds (before 6.9): then every tick walks.
    per_thread_reads: bool,
    /// Walks were spaced out beyond `walk_interval` (logged once).
    walks_stretched: bool,
    /// Test hook (`HANGWATCH_TEST_STALL_FILE`): while this file exists, the loop stalls.
    stall_file: Option<std::path::PathBuf>,
    scans: u64,
    walks: u64,
    walk_time: Duration,
    scan_time: Duration,
}

impl Scanner {
    fn start(
        config: Config,
        mut surfaces: Surfaces,
        pods: Option<Arc<meta::pods::PodIndex>>,
        enrich: Enrich,
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
        surfaces.probes_attached(&probes);
        // The queue is empty at start; a refusal would only leave the readers cold.
        let _ = enrich.send(Job::Warm);
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
        // After the attach: a signal sent from here on is the probe's.
        let early_exits = config
            .detectors
            .smallest(HangKind::StuckExit)
            .is_some()
            .then(|| early_exits::EarlyExits::start(clock::monotonic_ns()));
        Ok(Self {
            probes,
            targets: Targets::new(config.detectors.rules().clone()),
            walk_interval: config.detectors.walk_interval(config.scan_interval),
            config,
            tracker: Tracker::default(),
            processes: ProcessCache::with_pods(pods),
            owners: OwnerCache::new().context("cannot start the lock owner reader")?,
            locks: LockFacts::default(),
            loops: LoopFacts::default(),
            park_checks: HashMap::new(),
            park_verdicts: mpsc::sync_channel(1024),
            loop_fds: LoopFds::spawn().context("cannot start the loop fd reader")?,
            loop_probe_wanted_at: None,
            loop_probe_attaches: 0,
            exits: ExitTable::default(),
            early_exits,
            carried: Vec::new(),
            enrich,
            surfaces,
            table: ThreadTable::default(),
            last_walk: None,
            per_thread_reads: crate::probe::thread_pidfds(),
            walks_stretched: false,
            stall_file: std::env::var_os("HANGWATCH_TEST_STALL_FILE").map(Into::into),
            scans: 0,
            walks: 0,
            walk_time: Duration::ZERO,
            scan_time: Duration::ZERO,
        })
    }

    fn run(&mut self, stop: &AtomicBool, wake: &mpsc::Receiver<()>, reload: &Reload) {
        while !stop.load(Ordering::SeqCst) {
            if reload.apply_pending(
                &mut self.config.detectors,
                &mut self.targets,
                &mut self.probes,
            ) {
                self.walk_interval = self
                    .config
                    .detectors
                    .walk_interval(self.config.scan_interval);
                self.last_walk = None; // a walk now, under the new rules' kernel-side filter
            }
            self.test_stall(stop);
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

    /// The test hook: a scan stalled from outside, for the `/healthz` test.
    fn test_stall(&self, stop: &AtomicBool) {
        let Some(file) = &self.stall_file else {
            return;
        };
        while file.exists() && !stop.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The time from a walk that took `took` of CPU to the next one, for walks to stay
    /// within `share` of a core.
    fn walk_spacing(&self, took: Duration, share: f64) -> Duration {
        self.walk_interval.max(took.mul_f64(1.0 / share))
    }

    /// Brings the thread table up to date: a full walk when one is due, else a re-read of
    /// each candidate.
    /// Returns whether it walked.
    fn update_table(&mut self, started: Instant, selected: &HashSet<u32>) -> anyhow::Result<bool> {
        // The share is the one in force now, not at the last walk: a mass hang's episodes
        // open after the walk that saw them.
        let share = if self
            .tracker
            .open_episodes()
            .nth(MASS_EPISODES - 1)
            .is_some()
        {
            WALK_CPU_SHARE_MASS
        } else {
            WALK_CPU_SHARE
        };
        let walk_due = !self.per_thread_reads
            || self
                .last_walk
                .is_none_or(|(at, took)| started >= at + self.walk_spacing(took, share));
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
        self.last_walk = Some((started, took));
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
        if tracing::enabled!(tracing::Level::DEBUG) && !selected.is_empty() {
            tracing::debug!("walk: {}", selected_records(&records, selected));
        }
        // Said only where walks are spaced: without thread pidfds every scan walks.
        let interval = self.walk_spacing(took, WALK_CPU_SHARE);
        if self.per_thread_reads && interval > self.walk_interval && !self.walks_stretched {
            self.walks_stretched = true;
            tracing::info!(
                "a full walk takes {took:?} of CPU: walking every {interval:?} instead of every {:?} to stay within {:.1}% of a core",
                self.walk_interval,
                WALK_CPU_SHARE * 100.0
            );
        }
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
        if let Some(early) = &mut self.early_exits
            && let Some(capped) = early.step(&mut self.exits)
        {
            self.surfaces
                .metrics()
                .limit("early_exit_checks", capped as u64);
        }
        self.exits
            .retain(|r| thread_proc(r.tgid, r.target) != ThreadProc::Gone);
        Ok(())
    }

    /// Watches loop threads closer where the detector asks: has the enrich stage read the
    /// stack of one in a futex wait (once per wait) to tell a parked worker from a stuck
    /// one, and keeps `sys_enter_loop` attached while one runs away from its wait.
    fn follow_loops(
        &mut self,
        watch: &[(ThreadKey, Watch)],
        samples: &[ThreadSample],
        walked: bool,
    ) {
        let now = Instant::now();
        while let Ok(v) = self.park_verdicts.1.try_recv() {
            self.park_checks.remove(&(v.thread, v.since_ns));
            match v.check {
                Check::Park => {
                    self.loops.parked.insert(v.thread, (v.since_ns, v.parked));
                    if v.seen_parked {
                        self.loops.parkers.insert(v.thread);
                    }
                }
                Check::Driver => {
                    self.loops.drivers.insert(v.thread, (v.since_ns, v.driver));
                }
            }
        }
        self.park_checks
            .retain(|_, asked| now.duration_since(*asked) < PARK_CHECK_RETRY);
        let by_key: HashMap<ThreadKey, &ThreadSample> =
            samples.iter().map(|s| (s.key, s)).collect();
        for (check, wanted) in [
            (Check::Park, Watch::CheckPark),
            (Check::Driver, Watch::CheckDriver),
        ] {
            let checks: Vec<&ThreadSample> = watch
                .iter()
                .filter(|(_, w)| *w == wanted)
                .filter_map(|(k, _)| by_key.get(k).copied())
                .filter(|s| {
                    !self
                        .park_checks
                        .contains_key(&(s.key, checked_stretch_ns(s)))
                })
                .collect();
            self.ask_stacks(check, &checks, now);
        }
        // Forget the threads that left the table: only a walk's samples are all of them
        // (between walks, the threads in futex waits are not re-read, and a verdict on one
        // that came back meanwhile must stay).
        if walked {
            self.loops.parked.retain(|k, _| by_key.contains_key(k));
            self.loops.parkers.retain(|k| by_key.contains_key(k));
            self.loops.drivers.retain(|k, _| by_key.contains_key(k));
        }

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

    /// Hands the stacks of `checks` (waits not asked about yet) to the enrich stage, whose
    /// verdicts come back through `park_verdicts`: one read per wait.
    fn ask_stacks(&mut self, check: Check, checks: &[&ThreadSample], now: Instant) {
        if checks.is_empty() {
            return;
        }
        // A running thread's registers saved at its last kernel entry are stale: it is
        // sampled on CPU instead.
        let tids: Vec<u32> = checks
            .iter()
            .filter(|s| !s.not_blocked())
            .map(|s| s.key.tid)
            .collect();
        let records = if tids.is_empty() {
            Vec::new()
        } else {
            self.probes.dump_stacks(&tids).unwrap_or_else(|err| {
                tracing::debug!("cannot read stacks of loop threads ({check:?}): {err}");
                Vec::new()
            })
        };
        let threads = checks
            .iter()
            .map(|s| {
                let record = records
                    .iter()
                    .find(|r| r.tid == s.key.tid && r.start_boottime_ns == s.key.start_boottime_ns);
                StackCheck {
                    thread: s.key,
                    tgid: s.tgid,
                    since_ns: checked_stretch_ns(s),
                    running: s.not_blocked(),
                    record: record.copied(),
                }
            })
            .collect();
        let job = Job::ParkChecks(ParkChecks {
            check,
            threads,
            verdicts: self.park_verdicts.0.clone(),
        });
        // A full queue: asked again at the next tick.
        if self.enrich.send(job).is_ok() {
            for s in checks {
                self.park_checks.insert((s.key, checked_stretch_ns(s)), now);
            }
        }
    }

    /// Mirrors the processes with a loop fd (read by `meta::loop_fds` on its own thread)
    /// into the detectors' facts and the walk's filter (`LOOP_FD_TGIDS`).
    fn update_loop_fds(&mut self) {
        for change in self.loop_fds.changes() {
            let (tgid, has) = match change {
                LoopFdChange::Has(tgid) => (tgid, true),
                LoopFdChange::Gone(tgid) => (tgid, false),
            };
            match self.probes.set_loop_fd(tgid, has) {
                Ok(true) => {}
                Ok(false) => {
                    self.surfaces.metrics().limit("loop_fd_processes", 1);
                    continue;
                }
                Err(err) => {
                    tracing::debug!("LOOP_FD_TGIDS: {err}");
                    continue;
                }
            }
            if has {
                self.loops.fd_processes.insert(tgid);
            } else {
                self.loops.fd_processes.remove(&tgid);
            }
        }
    }

    fn scan_once(&mut self, started: Instant) -> anyhow::Result<()> {
        self.update_loop_fds();
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
        meta::pi_park::close_cycles(&sample_list, &mut self.locks);
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
            &mut meta::confirm::deadlock,
            now_ns,
        );
        self.follow_loops(&detection.watch, &sample_list, walked);
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

    /// Hands the episodes that opened, grew or ended at this tick to the enrich stage, with
    /// what only this tick knows: the samples, the lock owners, and the kernel stacks and
    /// user registers of the threads while they are still blocked.
    fn emit(&mut self, transitions: Vec<Transition>, now_ns: u64) -> anyhow::Result<()> {
        if transitions.is_empty() {
            return Ok(());
        }
        let tgids: HashSet<u32> = transitions.iter().map(|t| t.episode().tgid).collect();
        // Every candidate of those processes, walk-only ones too (an episode may be one of
        // theirs, and a lock chain may run through them).
        let samples: HashMap<ThreadKey, ThreadSample> = self
            .table
            .samples()
            .into_iter()
            .filter(|s| tgids.contains(&s.tgid))
            .map(|s| (s.key, s))
            .collect();
        let mut exits = HashMap::new();
        let mut wanted: HashSet<u32> = HashSet::new();
        for t in &transitions {
            match t {
                Transition::Opened(e) | Transition::Updated(e)
                    if e.key.kind == HangKind::StuckExit =>
                {
                    if let Some(request) = self.exits.get(e.tgid) {
                        // The signalled thread first: the report's stacks are capped.
                        let mut tids = futex_owner::task_ids(e.tgid);
                        tids.sort_unstable_by_key(|&tid| (tid != request.target.tid, tid));
                        let capped = tids.len().saturating_sub(MAX_EXIT_STACKS);
                        self.surfaces.metrics().limit("exit_stacks", capped as u64);
                        wanted.extend(tids.into_iter().take(MAX_EXIT_STACKS));
                        exits.insert(e.tgid, request.clone());
                    }
                }
                Transition::Opened(e) | Transition::Updated(e) => {
                    wanted.extend(
                        std::iter::once(e.key.thread.tid).chain(e.members.iter().map(|m| m.tid)),
                    );
                    wanted.extend(self.holders_of(e.key.thread, &samples));
                }
                Transition::Ended(_) => {}
            }
        }
        let wanted: Vec<u32> = wanted.into_iter().collect();
        let mut stacks = HashMap::new();
        // The iterator takes `MAX_STACK_REQUESTS` threads a run; a mass hang takes more runs.
        for chunk in wanted.chunks(hangwatch_ebpf::MAX_STACK_REQUESTS as usize) {
            for s in self.probes.dump_stacks(chunk)? {
                let key = ThreadKey {
                    tid: s.tid,
                    start_boottime_ns: s.start_boottime_ns,
                };
                stacks.insert(key, s);
            }
        }
        let ended = transitions
            .iter()
            .filter_map(|t| match t {
                Transition::Ended(e) => Some((e.key, self.resolution(e, &samples, now_ns))),
                _ => None,
            })
            .collect();
        let processes = tgids
            .iter()
            .filter_map(|&tgid| Some((tgid, self.processes.get(tgid)?)))
            .collect();
        let owners = self
            .locks
            .owners
            .iter()
            .filter(|(k, _)| samples.contains_key(k))
            .map(|(k, v)| (*k, *v))
            .collect();
        let drivers = self
            .loops
            .drivers
            .iter()
            .filter(|(k, _)| samples.contains_key(k))
            .filter_map(|(k, (_, d))| Some((*k, d.clone()?)))
            .collect();
        let tick = Tick {
            transitions,
            samples,
            owners,
            stacks,
            exits,
            processes,
            parkers: self.loops.parkers.clone(),
            drivers,
            ended,
            now_ns,
            now_wall: SystemTime::now(),
            at: Instant::now(),
        };
        if let Err(Job::Tick(tick)) = self.enrich.send(Job::Tick(Box::new(tick))) {
            // The stage is far behind: these episodes are still reported, without what
            // the stage would add, rather than not at all.
            self.surfaces.metrics().limit("enrich_queue_full", 1);
            tracing::warn!(
                "the enrich queue is full: {} transitions reported without stacks",
                tick.transitions.len()
            );
            self.surfaces.unenriched(&tick);
        }
        Ok(())
    }

    /// The first `MAX_HOLDER_STACKS` holders of the lock chain from `thread` (their stacks
    /// go in the report's `blocked_on`), as far as the lock owners known at this tick go.
    fn holders_of(
        &self,
        thread: ThreadKey,
        samples: &HashMap<ThreadKey, ThreadSample>,
    ) -> Vec<u32> {
        let mut holders = Vec::new();
        let mut current = thread;
        while holders.len() < crate::enrich::MAX_HOLDER_STACKS {
            let Some(&owner) = self.locks.owners.get(&current) else {
                break;
            };
            if owner == thread.tid || holders.contains(&owner) {
                break; // a cycle: its members are taken already
            }
            holders.push(owner);
            match samples.values().find(|s| s.key.tid == owner) {
                Some(s) => current = s.key,
                None => break, // not a candidate: its own owner is read by the report
            }
        }
        holders
    }

    /// How an episode ended, and when (the switch-in that ended the wait when the last
    /// read saw it, else now: an exit or a wakeup between two ticks is known only to the
    /// tick).
    fn resolution(
        &self,
        episode: &Episode,
        samples: &HashMap<ThreadKey, ThreadSample>,
        now_ns: u64,
    ) -> (Resolution, u64) {
        // Still in the scan (a new wait, or woken) or still in /proc: it moved on, unless
        // it was woken to die (a killed process's threads run their exit).
        let tid = episode.key.thread.tid;
        let resolution = if ((episode.key.kind != HangKind::StuckExit
            && samples.contains_key(&episode.key.thread))
            || thread_proc(episode.tgid, episode.key.thread) != ThreadProc::Gone)
            && !meta::exiting(episode.tgid, tid)
        {
            Resolution::Running
        } else {
            Resolution::Exited
        };
        let ended_ns = self
            .table
            .wait_end(&episode.key.thread, episode.key.since_ns)
            .unwrap_or(now_ns);
        (resolution, ended_ns)
    }

    /// Reads the owner of the lock each futex waiter waits on (cached per wait; the reads
    /// themselves run on a reader worker, and their answers arrive by the next tick).
    fn read_lock_owners(&mut self, samples: &[ThreadSample], now_ns: u64) {
        self.locks.owners.clear();
        self.locks.unread.clear();
        self.owners.collect(now_ns);
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
            } else if self.owners.unanswered(sample.key, sample.off_cpu_at_ns) {
                self.locks.unread.insert(sample.key);
            }
        }
        self.owners.retain(|k| live.contains(k));
    }

    /// Hands this scan's figures to the status and the metrics, and passes at most one of
    /// the API's stack requests on to the enrich stage (the iterator is this thread's).
    fn publish_figures(&mut self, took: Duration) {
        if let Some(request) = self.surfaces.next_stack_request() {
            let records = self
                .probes
                .dump_stacks(&request.tids)
                .map_err(|err| err.to_string());
            match records {
                Ok(records) => {
                    if let Err(Job::Stacks(job)) = self
                        .enrich
                        .send(Job::Stacks(StacksJob { request, records }))
                    {
                        let _ = job
                            .request
                            .reply
                            .send(Err("the daemon is busy reporting hangs; try again".into()));
                    }
                }
                Err(err) => {
                    let _ = request.reply.send(Err(err));
                }
            }
        }
        let figures = ScanFigures {
            took,
            scans: self.scans,
            walks: self.walks,
            scan_time: self.scan_time,
            walk_time: self.walk_time,
            tracked_threads: self.table.len(),
            watched_processes: self.targets.selected().len(),
            bpf_counters: self.probes.counters().unwrap_or_default(),
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
            "detached after {} scans (mean {:?}) and {} full walks (mean {:?}, every {:?}), {} candidate threads at the end; counters: {counters}; processes vanished: {}; lock owner reads: {} ({} missed their deadline); ticks not enriched: {}; sys_enter_loop attached {} times; processes asked to exit and still there: {}",
            self.scans,
            mean(self.scan_time, self.scans),
            self.walks,
            mean(self.walk_time, self.walks),
            self.walk_interval,
            self.table.len(),
            self.processes.vanished,
            self.owners.reads_done,
            self.owners.abandoned(),
            self.enrich.overflowed.load(Ordering::Relaxed),
            self.loop_probe_attaches,
            self.exits.len(),
        );
        for stats in self.probes.program_stats() {
            tracing::info!("{stats}");
        }
    }
}

/// The records of a walk in selected processes, for a debug line: `tid:task state:state
/// at its last switch-out:off-CPU ms` (`-` while on a CPU) each, the first 64. What the
/// walk saw of a thread that was, or was not, reported.
fn selected_records(records: &[hangwatch_ebpf::ThreadRecord], selected: &HashSet<u32>) -> String {
    const SHOWN: usize = 64;
    let mut line = String::new();
    let mut shown = 0;
    for r in records.iter().filter(|r| selected.contains(&r.tgid)) {
        shown += 1;
        if shown > SHOWN {
            continue;
        }
        let off_cpu = if r.state.off_cpu_at_ns > r.state.on_cpu_at_ns {
            format!(
                "{}",
                r.seen_at_ns.saturating_sub(r.state.off_cpu_at_ns) / 1_000_000
            )
        } else {
            "-".to_owned()
        };
        let _ = write!(
            line,
            " {}:{:#x}:{:#x}:{off_cpu}",
            r.tid, r.task_state, r.state.state_at_switch
        );
    }
    if shown > SHOWN {
        let _ = write!(line, " (+{} more)", shown - SHOWN);
    }
    format!("{shown} records of selected processes:{line}")
}
