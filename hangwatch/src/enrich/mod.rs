//! Enrich: the stage between the episodes and the sinks. The detection thread hands it
//! each tick's transitions with what it knew at that tick (samples, lock owners, the
//! kernel stacks and user registers the `dump_stacks` iterator took while the threads were
//! still blocked) and goes on at once; this stage, on a thread of its own, turns them into
//! events (`report.rs`), reading what only the watched process can give (its user stacks,
//! its command line) on a reader worker under a deadline (`stacks.rs`, `cmdline.rs`), and
//! hands them to stdout, the API store, the metrics and the webhook.
//!
//! So nothing a watched process does can stall detection: a read that blocks costs its
//! report that part (with the reason), never a later tick. And the stage keeps its own
//! pace: the reports of a tick may spend `REPORT_DUE` reading user stacks; past that (a
//! mass hang, thousands of reports at once), and for a tick that waited `BACKLOG` in the
//! queue, reports go out with what costs nothing to add (the kernel stack, the wait) and
//! say why the user stack is missing. Newer hangs go first: reads a report can do without
//! give way to a tick opening a hang that has waited `stacks::YIELD_AFTER`, and so does the
//! rest of a large tick (`Rest`), reported once the queue is empty.
pub mod cmdline;
mod report;
pub mod stacks;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError},
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use hangwatch_ebpf::StackRecord;

use self::stacks::NewerHangs;
use crate::{
    api::threads::StackRequest,
    episode::{EpisodeKey, Transition},
    meta::ProcessInfo,
    sink::{HangEvent, Hub, Resolution, StdoutSink},
    state::{ExitRequest, ThreadKey, ThreadSample},
};

/// A command line is cut at this many bytes in events (`cmdline_truncated` says so).
pub const MAX_CMDLINE_BYTES: usize = 4096;
/// A `stuck_exit` report carries the stacks of at most this many of the process's threads
/// (its signalled thread first); the others are listed with their wait only.
pub const MAX_EXIT_STACKS: usize = 16;
/// A `stuck_exit` report spends at most this long on the stacks of threads other than the
/// signalled one: sampling a running thread waits for it to get a CPU, and 15 spinning
/// threads of a busy process took 1.2 s in one run, while a newer hang waited.
pub const EXIT_OTHERS_DUE: Duration = Duration::from_millis(500);
/// The first this many holders of a `blocked_on` chain carry their stacks (the tick takes
/// their records too).
pub const MAX_HOLDER_STACKS: usize = 4;
/// The reports of one tick may spend this long reading user stacks, from when the stage
/// starts on the tick; past it (a mass hang: thousands of transitions in one tick) the
/// rest go out with their kernel stacks and waits, and say why the user stack is missing.
pub const REPORT_DUE: Duration = Duration::from_secs(1);
/// A tick that waited this long in the queue (the stage is behind) gets no user stacks at
/// all: the stage catches up at the speed of kernel symbolization.
pub const BACKLOG: Duration = Duration::from_secs(2);
/// The first reports of a tick get their user stacks even past `REPORT_DUE` (a cold cache
/// or a large binary can take a second: the ordinary case of a few hangs at once, such as
/// the loops of several servers stalled by one dependency, must not lose stacks to it), up
/// to `REPORT_HARD_DUE`.
pub const ALWAYS_READ: usize = 8;
pub const REPORT_HARD_DUE: Duration = Duration::from_secs(3);
/// The reports of a tick past its first `ALWAYS_READ` (the tail of a mass hang) read user
/// stacks only while such reports have taken less than this share of the stage's time on
/// average (bursts of up to `REPORT_DUE`): a mass hang that goes on for many ticks is
/// reported at the speed of kernel symbolization once its share is spent, and the daemon
/// stays well under half a core (the unwinder process included) however many threads hang.
pub const TAIL_SHARE: f64 = 0.2;
/// One read of a watched process (its stack and the files to unwind and symbolize it, its
/// command line) may take this long; past it the process is marked as resisting.
pub const READ_DEADLINE: Duration = Duration::from_millis(200);
/// Jobs waiting for this stage; a tick beyond it is reported without enrichment.
const QUEUE: usize = 1024;

/// One tick's transitions and what the detection thread knew when it made them.
pub struct Tick {
    pub transitions: Vec<Transition>,
    /// The samples of the processes the transitions are about.
    pub samples: HashMap<ThreadKey, ThreadSample>,
    /// Lock owners of those samples, when known.
    pub owners: HashMap<ThreadKey, u32>,
    /// Kernel stacks and user registers, taken at this tick.
    pub stacks: HashMap<ThreadKey, StackRecord>,
    /// Exit requests of the processes with a `stuck_exit` transition.
    pub exits: HashMap<u32, ExitRequest>,
    /// Process facts read on the detection thread (without the command line).
    pub processes: HashMap<u32, ProcessInfo>,
    /// Loop threads seen parked on their futex (a tokio worker at rest).
    pub parkers: HashSet<ThreadKey>,
    /// Threads recognized as loop threads by a driver frame in their stack, and that frame.
    pub drivers: HashMap<ThreadKey, Arc<str>>,
    /// For each `Ended` transition: how it ended, and when (monotonic ns).
    pub ended: HashMap<EpisodeKey, (Resolution, u64)>,
    pub now_ns: u64,
    pub now_wall: SystemTime,
    /// When the tick handed this over.
    pub at: Instant,
}

impl Tick {
    /// Whether a hang opens at this tick (its first report waits for the stage).
    pub fn opens_a_hang(&self) -> bool {
        self.transitions
            .iter()
            .any(|t| matches!(t, Transition::Opened(_)))
    }
}

/// Waits of (possible) loop threads whose stack says what they are.
pub struct ParkChecks {
    pub check: Check,
    pub threads: Vec<StackCheck>,
    pub verdicts: SyncSender<ParkVerdict>,
}

/// One thread whose stack a check reads.
pub struct StackCheck {
    pub thread: ThreadKey,
    pub tgid: u32,
    /// The start of the wait (its switch-out), or of the run for a thread that runs: what
    /// the verdict is about (`detect::checked_stretch_ns`).
    pub since_ns: u64,
    /// It runs: its stack is sampled on CPU (`StackReader::user_sampled`), its registers
    /// saved at its last kernel entry being stale.
    pub running: bool,
    /// Its `dump_stacks` record, for a blocked thread.
    pub record: Option<StackRecord>,
}

/// What a stack is read for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// A loop thread's futex wait: a parked worker, or a stuck one?
    Park,
    /// A thread of a process with a loop fd, blocked elsewhere or running: does its stack
    /// show an event loop's driver?
    Driver,
}

/// A check's answer: the wait it is about, whether it is a park, whether the stack showed
/// it (an unreadable stack says nothing, and is taken as parked: quiet), and for a driver
/// check the driver frame found (none in an unreadable stack: quiet).
#[derive(Debug, Clone)]
pub struct ParkVerdict {
    pub check: Check,
    pub thread: ThreadKey,
    pub since_ns: u64,
    pub parked: bool,
    pub seen_parked: bool,
    pub driver: Option<Arc<str>>,
}

/// A `threads --stacks` request with the records the detection thread took for it.
pub struct StacksJob {
    pub request: StackRequest,
    pub records: Vec<StackRecord>,
}

pub enum Job {
    /// The probes are attached: ready the readers for the first report.
    Warm,
    Tick(Box<Tick>),
    ParkChecks(ParkChecks),
    Stacks(StacksJob),
}

/// Where events go.
pub struct Sinks {
    pub stdout: StdoutSink,
    pub hub: Hub,
}

/// The detection thread's end of the stage.
pub struct Enrich {
    jobs: SyncSender<Job>,
    /// Ticks opening a hang handed over and not yet taken by the stage: the reads a report
    /// can do without give way to them (`stacks::Budget::Yielding`).
    newer: NewerHangs,
    /// Ticks handed over without enrichment because the queue was full.
    pub overflowed: Arc<AtomicU64>,
}

impl Enrich {
    /// Starts the stage's thread. `stopping` turns on at SIGTERM: from then on no target
    /// is read, queued ticks go out at once, and the open episodes end `daemon_stopped`;
    /// `done` is told when every sink has flushed.
    pub fn spawn(
        sinks: Sinks,
        stopping: Arc<AtomicBool>,
        done: mpsc::Sender<()>,
    ) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::sync_channel(QUEUE);
        let metrics = Arc::clone(&sinks.hub.metrics);
        let newer = NewerHangs::default();
        let stage_newer = newer.clone();
        thread::Builder::new()
            .name("hangwatch-enrich".into())
            .spawn(move || {
                // Made here: the symbolizers are not `Send`.
                let reader =
                    match stacks::StackReader::new(Arc::clone(&metrics), stage_newer.clone()) {
                        Ok(reader) => reader,
                        Err(err) => {
                            tracing::error!("cannot start the stack reader: {err}; no reports");
                            return;
                        }
                    };
                let mut stage = Stage {
                    reports: report::Reports::new(
                        reader,
                        Arc::clone(&metrics),
                        stage_newer.clone(),
                    ),
                    sinks,
                    stopping,
                    newer: stage_newer,
                    tail: TailAllowance::full(Instant::now()),
                    deferred: VecDeque::new(),
                };
                stage.run(&queue);
                stage.stop();
                let _ = done.send(());
            })?;
        Ok(Self {
            jobs,
            newer,
            overflowed: Arc::default(),
        })
    }

    /// Hands a job over without waiting. A full queue gives the job back.
    pub fn send(&self, job: Job) -> Result<(), Job> {
        let opens = matches!(&job, Job::Tick(tick) if tick.opens_a_hang());
        if opens {
            // Counted before the send, so that the stage never takes one not counted.
            self.newer.handed(Instant::now());
        }
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                if opens {
                    self.newer.withdrawn();
                }
                self.overflowed.fetch_add(1, Ordering::Relaxed);
                Err(job)
            }
        }
    }
}

struct Stage {
    reports: report::Reports,
    sinks: Sinks,
    stopping: Arc<AtomicBool>,
    /// The detection thread's ticks opening a hang, handed over and not yet taken.
    newer: NewerHangs,
    /// What the tails of ticks may still spend on user stacks (`TAIL_SHARE`).
    tail: TailAllowance,
    /// The rest of ticks set aside for newer hangs, oldest first.
    deferred: VecDeque<Rest>,
}

/// The transitions of a tick not reported yet, in order: set aside when a newer hang had
/// waited `stacks::YIELD_AFTER` for the stage (a mass hang's tick takes ~0.5 ms a report,
/// a second for 2,000), resumed when the queue is empty.
struct Rest {
    tick: Arc<Tick>,
    transitions: VecDeque<usize>,
    /// Reports of the tick that read stacks so far (`ALWAYS_READ` counts them).
    reading: usize,
}

impl Rest {
    fn of(tick: Arc<Tick>) -> Self {
        Self {
            transitions: (0..tick.transitions.len()).collect(),
            tick,
            reading: 0,
        }
    }

    fn keys(&self) -> impl Iterator<Item = EpisodeKey> + '_ {
        self.transitions
            .iter()
            .map(|&i| self.tick.transitions[i].episode().key)
    }
}

/// Splits `rest` into the transitions of episodes not in `waiting` (reported now) and
/// those of episodes that are (reported after the transitions they follow): an episode's
/// events keep their order, whatever jumps ahead.
fn split_behind(rest: Rest, waiting: &HashSet<EpisodeKey>) -> (Rest, Option<Rest>) {
    if waiting.is_empty() {
        return (rest, None);
    }
    let (behind, now): (VecDeque<usize>, VecDeque<usize>) = rest
        .transitions
        .iter()
        .partition(|&&i| waiting.contains(&rest.tick.transitions[i].episode().key));
    let behind = (!behind.is_empty()).then(|| Rest {
        tick: Arc::clone(&rest.tick),
        transitions: behind,
        reading: rest.reading,
    });
    (
        Rest {
            transitions: now,
            ..rest
        },
        behind,
    )
}

/// A token bucket of stage time for the user stacks of ticks' tails: refilled at
/// `TAIL_SHARE` of the time that passes, up to `REPORT_DUE`.
struct TailAllowance {
    available: Duration,
    refilled_at: Instant,
}

impl TailAllowance {
    fn full(now: Instant) -> Self {
        Self {
            available: REPORT_DUE,
            refilled_at: now,
        }
    }

    /// What may be spent now.
    fn available(&mut self, now: Instant) -> Duration {
        let passed = now.saturating_duration_since(self.refilled_at);
        self.available = (self.available + passed.mul_f64(TAIL_SHARE)).min(REPORT_DUE);
        self.refilled_at = now;
        self.available
    }

    fn spend(&mut self, spent: Duration) {
        self.available = self.available.saturating_sub(spent);
    }
}

impl Stage {
    fn run(&mut self, queue: &Receiver<Job>) {
        // Ends when the detection thread drops its end (at stop, or if it died), once the
        // ticks set aside are reported.
        loop {
            let job = if self.deferred.is_empty() {
                match queue.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            } else {
                match queue.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                        self.resume();
                        continue;
                    }
                }
            };
            let stopping = self.stopping.load(Ordering::Relaxed);
            match job {
                Job::Tick(tick) => {
                    if tick.opens_a_hang() {
                        self.newer.taken();
                    }
                    let rest = Rest::of(Arc::from(tick));
                    let waiting: HashSet<EpisodeKey> =
                        self.deferred.iter().flat_map(Rest::keys).collect();
                    let (now, behind) = split_behind(rest, &waiting);
                    if let Some(behind) = behind {
                        self.deferred.push_back(behind);
                    }
                    if let Some(rest) = self.tick(now, stopping) {
                        self.deferred.push_back(rest);
                    }
                }
                Job::Warm if !stopping => self.reports.warm(),
                Job::Warm => {}
                Job::ParkChecks(checks) => self.reports.park_checks(checks, stopping),
                Job::Stacks(job) => self.reports.answer_stacks(job, stopping),
            }
        }
    }

    /// Reports the oldest rest set aside, until a newer hang waits again.
    fn resume(&mut self) {
        let Some(rest) = self.deferred.pop_front() else {
            return;
        };
        let stopping = self.stopping.load(Ordering::Relaxed);
        if let Some(rest) = self.tick(rest, stopping) {
            self.deferred.push_front(rest);
        }
    }

    /// Reports the transitions of `rest` in order; gives back those not reported when a
    /// newer hang has waited `stacks::YIELD_AFTER` for the stage.
    fn tick(&mut self, mut rest: Rest, stopping: bool) -> Option<Rest> {
        let tick = Arc::clone(&rest.tick);
        let started = Instant::now();
        let behind = started.duration_since(tick.at) >= crate::clock::stretched(BACKLOG);
        let yield_after = crate::clock::stretched(stacks::YIELD_AFTER);
        let mut reported = 0;
        while let Some(&index) = rest.transitions.front() {
            if reported > 0 && !stopping && self.newer.waited().is_some_and(|w| w >= yield_after) {
                self.sinks.hub.metrics.limit("report_deferred", 1);
                return Some(rest);
            }
            rest.transitions.pop_front();
            reported += 1;
            let transition = &tick.transitions[index];
            // The first reports of a tick read their stacks (up to the hard due); the rest
            // of a large tick reads until `REPORT_DUE` and within its share, giving way to
            // a newer hang.
            let tail = !behind && rest.reading >= ALWAYS_READ;
            if !matches!(transition, Transition::Ended(_)) {
                rest.reading += 1;
            }
            let budget = if behind {
                stacks::Budget::until(started, stopping)
            } else if !tail {
                stacks::Budget::until(started + crate::clock::stretched(REPORT_HARD_DUE), stopping)
            } else {
                let now = Instant::now();
                let available = self.tail.available(now);
                if available.is_zero() && !stopping {
                    self.sinks.hub.metrics.limit("tail_share", 1);
                    stacks::Budget::Skip(format!(
                        "not read: the stage had spent its share of a CPU ({:.0} %) on the reports of a mass hang (`hangwatch threads PID --stacks` reads it)",
                        TAIL_SHARE * 100.0
                    ))
                } else {
                    stacks::Budget::until(
                        (started + crate::clock::stretched(REPORT_DUE)).min(now + available),
                        stopping,
                    )
                    .yielding(&self.newer)
                }
            };
            let building = Instant::now();
            // A report that panics (a bug) costs that report, not the stage.
            let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.reports.build(transition, &tick, &budget, stopping)
            }));
            let spent = building.elapsed();
            self.sinks.hub.metrics.report(spent);
            if tail {
                self.tail.spend(spent);
            }
            match built {
                Ok(Some(event)) => self.publish(event),
                Ok(None) => {}
                Err(_) => {
                    self.sinks.hub.metrics.report_panicked();
                    tracing::error!("building the report of {transition:?} panicked; skipped");
                }
            }
        }
        None
    }

    fn publish(&self, event: HangEvent) {
        let event = self.sinks.hub.publish(event);
        if let Err(reason) = self.sinks.stdout.send(event) {
            self.sinks.hub.metrics.dropped("stdout", reason, 1);
        }
    }

    /// At stop: every open episode ends `daemon_stopped`, then the sinks flush (within
    /// `FLUSH_GRACE`).
    fn stop(self) {
        let now = crate::clock::monotonic_ns();
        let mut stage = self;
        for event in stage.reports.close_all(now) {
            stage.publish(event);
        }
        let until = Instant::now() + FLUSH_GRACE;
        let Sinks { stdout, hub } = stage.sinks;
        if !stdout.finish(until) {
            tracing::warn!("stdout did not take every event within {FLUSH_GRACE:?}");
        }
        if let Some(webhook) = hub.webhook
            && !webhook.finish(until)
        {
            tracing::warn!("the webhook did not take every event within {FLUSH_GRACE:?}");
        }
    }
}

/// The stop's grace: how long the sinks may take to flush at SIGTERM.
pub const FLUSH_GRACE: Duration = Duration::from_millis(400);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{episode::Episode, kind::HangKind};

    fn episode(tid: u32) -> Episode {
        Episode {
            id: format!("e{tid}"),
            key: EpisodeKey {
                thread: ThreadKey {
                    tid,
                    start_boottime_ns: 1,
                },
                since_ns: 1,
                kind: HangKind::DState,
            },
            tgid: tid,
            threshold: Duration::from_secs(1),
            updates: 0,
            next_update_ns: 0,
            members: Vec::new(),
            reason: None,
        }
    }

    fn tick_of(transitions: Vec<Transition>) -> Arc<Tick> {
        Arc::new(Tick {
            transitions,
            samples: HashMap::new(),
            owners: HashMap::new(),
            stacks: HashMap::new(),
            exits: HashMap::new(),
            processes: HashMap::new(),
            parkers: HashSet::new(),
            drivers: HashMap::new(),
            ended: HashMap::new(),
            now_ns: 0,
            now_wall: SystemTime::now(),
            at: Instant::now(),
        })
    }

    #[test]
    fn a_tick_jumping_ahead_leaves_the_episodes_set_aside_behind_them() {
        // Set aside: the open of 1 and 2 (a mass hang's rest).
        let older = Rest::of(tick_of(vec![
            Transition::Opened(episode(1)),
            Transition::Opened(episode(2)),
        ]));
        let waiting: HashSet<EpisodeKey> = older.keys().collect();
        // A newer tick: a deadlock (3) opens, and 2 ends.
        let newer = Rest::of(tick_of(vec![
            Transition::Opened(episode(3)),
            Transition::Ended(episode(2)),
        ]));
        let (now, behind) = split_behind(newer, &waiting);
        let tids = |rest: &Rest| -> Vec<u32> { rest.keys().map(|k| k.thread.tid).collect() };
        assert_eq!(tids(&now), [3], "the new hang goes now");
        let behind = behind.expect("the end of 2 waits for its open");
        assert_eq!(tids(&behind), [2]);
        assert!(matches!(
            behind.tick.transitions[behind.transitions[0]],
            Transition::Ended(_)
        ));
        // Nothing set aside: all of it goes now.
        let fresh = Rest::of(tick_of(vec![Transition::Opened(episode(4))]));
        let (now, behind) = split_behind(fresh, &HashSet::new());
        assert_eq!((tids(&now), behind.is_none()), (vec![4], true));
    }

    #[test]
    fn the_tail_allowance_refills_at_its_share_up_to_the_due() {
        let start = Instant::now();
        let mut tail = TailAllowance::full(start);
        assert_eq!(tail.available(start), REPORT_DUE);
        tail.spend(REPORT_DUE * 2);
        assert_eq!(
            tail.available(start),
            Duration::ZERO,
            "spent, never negative"
        );
        let later = start + Duration::from_secs(1);
        let refilled = tail.available(later);
        assert_eq!(refilled, Duration::from_secs(1).mul_f64(TAIL_SHARE));
        let much_later = later + Duration::from_secs(3600);
        assert_eq!(tail.available(much_later), REPORT_DUE, "capped at a burst");
    }
}
