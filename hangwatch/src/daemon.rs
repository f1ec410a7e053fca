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
    detect::{Detectors, Targets},
    episode::{Episode, EpisodeKey, Tracker, Transition},
    meta::{ProcessCache, ThreadProc, thread_proc},
    probe::{Lookup, PROBES, ProbeSelection, Probes, ThreadHandle, preflight},
    sink::{EventType, HangEvent, OutputFormat, Resolution, StdoutSink},
    stack::StackTaker,
    state::{Refresh, ThreadKey, ThreadSample, ThreadTable},
};

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

    let scan_stop = stop.clone();
    thread::Builder::new()
        .name("hangwatch-scan".into())
        .spawn(move || {
            let result = Scanner::start(config, surfaces);
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
    scans: u64,
    walks: u64,
    walk_time: Duration,
    scan_time: Duration,
}

impl Scanner {
    fn start(config: Config, mut surfaces: api::Surfaces) -> anyhow::Result<Self> {
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
            "probes attached ({} of {} asked for); scanning every {:?}; d_state {}; off_cpu {}",
            enabled_probes(config.probes) - probes.degraded.len(),
            enabled_probes(config.probes),
            config.scan_interval,
            config
                .detectors
                .d_state
                .as_ref()
                .map_or("off".to_owned(), |d| format!("after {:?}", d.threshold)),
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
            processes: ProcessCache::default(),
            stacks: StackTaker::default(),
            sink,
            surfaces,
            reports: HashMap::new(),
            table: ThreadTable::default(),
            next_walk: None,
            per_thread_reads: true,
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
        let records = self.probes.scan_threads()?;
        self.walks += 1;
        self.walk_time += walk_started.elapsed();
        self.next_walk = Some(started + self.walk_interval);
        let probes = &self.probes;
        let per_thread_reads = &mut self.per_thread_reads;
        self.table.replace(&records, |tid| match probes.open_thread(tid) {
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
        });
        Ok(())
    }

    fn scan_once(&mut self, started: Instant) -> anyhow::Result<()> {
        let selected = self.targets.resolve(started);
        self.update_table(started, &selected)?;
        let now_ns = clock::monotonic_ns();
        let sample_list = self.table.samples();
        let samples: HashMap<ThreadKey, ThreadSample> =
            sample_list.iter().map(|s| (s.key, s.clone())).collect();
        let candidates = self
            .config
            .detectors
            .detect(&sample_list, &selected, now_ns);
        let transitions = self.tracker.step(&candidates, now_ns);
        if transitions.is_empty() {
            return Ok(());
        }

        let wanted: Vec<u32> = transitions
            .iter()
            .filter_map(|t| match t {
                Transition::Opened(e) | Transition::Updated(e) => Some(e.key.thread.tid),
                Transition::Ended(_) => None,
            })
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

    fn report(
        &mut self,
        event: EventType,
        episode: &Episode,
        samples: &HashMap<ThreadKey, ThreadSample>,
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
        let report = HangEvent {
            event,
            id: episode.id.clone(),
            kind: episode.key.kind,
            pid: sample.tgid,
            tid: sample.key.tid,
            comm: process
                .as_ref()
                .map_or_else(|| sample.thread_name.clone(), |p| p.comm.clone()),
            thread_name: sample.thread_name.clone(),
            exe: process.as_ref().and_then(|p| p.exe.clone()),
            cmdline: process
                .as_ref()
                .map(|p| p.cmdline.clone())
                .unwrap_or_default(),
            cgroup: process.as_ref().and_then(|p| p.cgroup.clone()),
            started_at: clock::rfc3339(clock::wall_time_of(episode.key.since_ns, now_ns, now_wall)),
            duration_ms: millis(episode.duration(now_ns)),
            threshold_ms: millis(episode.threshold),
            blocked_since_before_start: sample.blocked_before_attach,
            wait: sample.wait().with_proc_syscall(syscall),
            stacks: thread_stacks,
            resolution: None,
        };
        self.reports.insert(episode.key, report.clone());
        Some(report)
    }

    fn resolve(
        &mut self,
        episode: &Episode,
        samples: &HashMap<ThreadKey, ThreadSample>,
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
            "detached after {} scans (mean {:?}) and {} full walks (mean {:?}, every {:?}), {} candidate threads at the end; counters: {counters}; events dropped: {}; processes vanished: {}; kernel symbolization {:?}; user stacks: {} in {:?}, module cache {:?} (hits, misses)",
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
        );
        for stats in self.probes.program_stats() {
            tracing::info!("{stats}");
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
