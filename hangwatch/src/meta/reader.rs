//! Reads of a watched process that can block run here, on a worker thread, under a
//! deadline: never on the detection thread, never unbounded.
//!
//! A process whose mm lock is stuck (a thread write-faulting a page of a frozen
//! filesystem while another waits in `mprotect`) blocks every reader of its memory,
//! `/proc/PID/{cmdline,environ,maps,map_files}` and its files on a stalled mount. Those
//! waits are *killable* (`mmap_read_lock_killable`, FUSE's killable waits) but not
//! interruptible: a thread in one cannot be called back. So a worker that misses its
//! deadline is abandoned (it ends by itself when the read returns, and at the latest when
//! the daemon exits: exit_group kills killable waits) and a fresh one takes its place; the
//! process it was reading is marked as resisting for a while, so that the next reads of it
//! fail at once with the reason instead of trapping another worker.
//!
//! `process_vm_readv` is never used on a target: it takes the mm lock *uninterruptibly*,
//! and a daemon thread stuck in it would keep the whole daemon (and its BPF links) alive
//! after SIGTERM. Memory is read through `/proc/PID/mem`, whose lock wait is killable
//! (see `memory.rs`, and docs/design.md "Never blind").
use std::{
    borrow::Cow,
    cell::RefCell,
    collections::HashMap,
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc::{self, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread,
    time::{Duration, Instant},
};

/// At most this many abandoned workers may still be stuck in the kernel; beyond it, reads
/// are refused at once (each stuck worker holds a thread and its stack).
pub const MAX_STUCK_WORKERS: usize = 16;
/// A process that made a read miss its deadline is not read again for this long.
pub const RESIST_FOR: Duration = Duration::from_secs(30);
/// Tasks waiting for a worker; a caller beyond it is told the worker is busy.
const QUEUE: usize = 64;
/// A task past its deadline whose thread is still *running* (unwinding, parsing a large
/// binary's DWARF: work, not a wait on the target) is waited for this much longer in
/// all; then it is left to finish in the background (`ReadError::Slow`), not abandoned.
pub const CPU_GRACE: Duration = Duration::from_secs(1);

/// Why a read gave nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The read did not finish in time. `what` is what the task was reading (see
    /// [`reading`]): its memory (the process is then marked as resisting), or one of its
    /// module files, `file` (on a stalled mount: the file is marked, not the process).
    #[error("{what} could not be read within {deadline:?} ({why})")]
    Missed {
        deadline: Duration,
        what: Cow<'static, str>,
        file: Option<FileId>,
        why: String,
    },
    /// The process missed a deadline recently: not read again yet.
    #[error("not read: it resisted a read {ago:?} ago: {why}")]
    Resisting { ago: Duration, why: String },
    /// The read still works (its thread runs on a CPU: a cold cache, a large binary) past
    /// `CPU_GRACE`: it goes on in the background and warms the caches; the process is not
    /// held against.
    #[error("not read within {took:?}: still working on it (cold caches or a large binary)")]
    Slow { took: Duration },
    /// Too many workers are stuck in the kernel already.
    #[error("not read: {0} reader threads are stuck in the kernel")]
    TooManyStuck(usize),
    /// The worker's queue is full.
    #[error("not read: the reader is busy ({QUEUE} reads queued)")]
    Busy,
}

/// A file, by device and inode (as `/proc/PID/maps` names them): the same binary in
/// every process that maps it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct FileId {
    pub dev: String,
    pub inode: u64,
}

/// Processes (by tgid) or files (by [`FileId`]) that made a read miss its deadline, until
/// `RESIST_FOR` has passed.
#[derive(Debug)]
pub struct Resisting<K = u32> {
    by_key: HashMap<K, (Instant, String)>,
    /// Keys marked since start.
    pub marked: u64,
}

impl<K> Default for Resisting<K> {
    fn default() -> Self {
        Self {
            by_key: HashMap::new(),
            marked: 0,
        }
    }
}

impl<K: std::hash::Hash + Eq + fmt::Debug + Clone> Resisting<K> {
    pub fn mark(&mut self, key: K, why: String, now: Instant) {
        tracing::warn!("{key:?} resists reads ({why}): not read again for {RESIST_FOR:?}");
        self.marked += 1;
        self.by_key.insert(key, (now, why));
    }

    /// The error to give instead of reading `key`, if it resists.
    pub fn check(&mut self, key: &K, now: Instant) -> Result<(), ReadError> {
        let Some((at, why)) = self.by_key.get(key) else {
            return Ok(());
        };
        let ago = now.saturating_duration_since(*at);
        if ago >= RESIST_FOR {
            self.by_key.remove(key);
            return Ok(());
        }
        Err(ReadError::Resisting {
            ago,
            why: why.clone(),
        })
    }

    /// Every key resisting now, with the reason to give for it.
    pub fn current(&mut self, now: Instant) -> HashMap<K, String> {
        self.by_key
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < RESIST_FOR);
        self.by_key
            .iter()
            .map(|(key, (at, why))| {
                let error = ReadError::Resisting {
                    ago: now.saturating_duration_since(*at),
                    why: why.clone(),
                };
                (key.clone(), error.to_string())
            })
            .collect()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_key.len()
    }
}

type Task<S> = Box<dyn FnOnce(&mut S) + Send>;

/// What a task reads when nothing more precise was said.
pub const READING_MEMORY: &str = "memory of the process";

/// What the task running on a worker thread reads right now, shared with the caller so
/// that a miss can say what blocked (its memory, or a module file on a stalled mount).
type Reading = Arc<Mutex<Option<(Cow<'static, str>, Option<FileId>)>>>;

thread_local! {
    /// The current worker thread's `Reading` (none on other threads).
    static READING: RefCell<Option<Reading>> = const { RefCell::new(None) };
}

/// Says what the task running on this worker thread is about to read, e.g. "the module
/// /usr/bin/x": a caller whose deadline passes meanwhile gives it as the reason. Does
/// nothing on a thread that is not a worker.
pub fn reading(what: impl Into<Cow<'static, str>>) {
    say_reading(what.into(), None);
}

/// Like [`reading`], for a file: a miss now marks the file as resisting, not the process
/// (its memory may well be readable).
pub fn reading_file(what: impl Into<Cow<'static, str>>, file: FileId) {
    say_reading(what.into(), Some(file));
}

/// Where a process that reads on its main thread (the helper process, `helper.rs`) says
/// what it reads, instead of a worker's shared slot.
static NOTE_READING: std::sync::OnceLock<fn(&str, Option<&FileId>)> = std::sync::OnceLock::new();

/// Sends what this process's reads say ([`reading`]) to `note` (a helper process: to its
/// daemon).
pub fn note_reading_with(note: fn(&str, Option<&FileId>)) {
    let _ = NOTE_READING.set(note);
}

fn say_reading(what: Cow<'static, str>, file: Option<FileId>) {
    let told = READING.with_borrow(|reading| {
        if let Some(reading) = reading {
            *reading.lock().unwrap_or_else(|e| e.into_inner()) = Some((what.clone(), file.clone()));
            true
        } else {
            false
        }
    });
    if !told && let Some(note) = NOTE_READING.get() {
        note(&what, file.as_ref());
    }
}

/// A worker thread owning state `S` (caches), replaced when a task overruns its deadline.
pub struct Worker<S: 'static> {
    name: &'static str,
    make: fn() -> S,
    current: Thread<S>,
    /// Abandoned workers still inside a task (each one counts itself out when its task
    /// finally returns).
    stuck: Arc<AtomicUsize>,
    /// Workers abandoned since start.
    pub abandoned: Arc<AtomicU64>,
}

/// One worker thread: its queue, the flag that tells it it was abandoned, and its tid
/// (to tell a thread that computes from one blocked in the kernel).
struct Thread<S> {
    tasks: SyncSender<Task<S>>,
    abandoned: Arc<AtomicBool>,
    tid: Arc<std::sync::atomic::AtomicI32>,
    /// Between tasks (a task left to finish in the background clears it until it does).
    idle: Arc<AtomicBool>,
    /// What its task reads now, as the task said ([`reading`]).
    reading: Reading,
}

impl<S: 'static> fmt::Debug for Worker<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.name)
            .field("stuck", &self.stuck.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<S: 'static> Worker<S> {
    /// A worker named `name` whose state each new thread makes with `make`.
    pub fn spawn(name: &'static str, make: fn() -> S) -> std::io::Result<Self> {
        let stuck = Arc::new(AtomicUsize::new(0));
        let current = Thread::start(name, make, Arc::clone(&stuck))?;
        Ok(Self {
            name,
            make,
            current,
            stuck,
            abandoned: Arc::default(),
        })
    }

    /// The current worker works (on a CPU, or runnable and waiting for one: a machine
    /// saturated by other work) rather than waits in the kernel: an overdue task of such
    /// a worker is late, not stuck on its target.
    pub fn working(&self) -> bool {
        self.current.running()
    }

    /// Workers abandoned and still stuck in the kernel.
    pub fn stuck(&self) -> usize {
        self.stuck.load(Ordering::Relaxed)
    }

    /// Runs `task` on the worker and waits for it at most `deadline`. A miss abandons the
    /// worker (a new one, with fresh state, takes the next task): `Missed` says so.
    pub fn call<R: Send + 'static>(
        &mut self,
        deadline: Duration,
        task: impl FnOnce(&mut S) -> R + Send + 'static,
    ) -> Result<R, ReadError> {
        // Busy with a slow task of an earlier call: this one waits its deadline, no grace.
        let busy = !self.current.idle.load(Ordering::Relaxed);
        let (reply, answer) = mpsc::sync_channel(1);
        self.submit(move |state| {
            let _ = reply.send(task(state));
        })?;
        let started = Instant::now();
        let mut wait = deadline;
        loop {
            match answer.recv_timeout(wait) {
                Ok(result) => return Ok(result),
                // Past the deadline but running on a CPU: slow work (a cold cache, a large
                // binary), not a wait on the process; it gets up to `CPU_GRACE`.
                Err(RecvTimeoutError::Timeout)
                    if !busy
                        && started.elapsed() < crate::clock::stretched(CPU_GRACE)
                        && self.current.running() =>
                {
                    wait = Duration::from_millis(20);
                }
                // Still working: let it finish in the background (the next task waits
                // behind it and finds the caches warm).
                Err(RecvTimeoutError::Timeout) if self.current.running() => {
                    return Err(ReadError::Slow {
                        took: started.elapsed(),
                    });
                }
                Err(RecvTimeoutError::Timeout) => {
                    let (what, file) = self.current.reading();
                    self.abandon();
                    return Err(ReadError::Missed {
                        deadline,
                        what,
                        file,
                        why: "a read of it is blocked in the kernel".to_owned(),
                    });
                }
                // The task panicked (its thread is gone): start another.
                Err(RecvTimeoutError::Disconnected) => {
                    self.restart();
                    return Err(ReadError::Missed {
                        deadline,
                        what: READING_MEMORY.into(),
                        file: None,
                        why: "the reader failed".into(),
                    });
                }
            }
        }
    }

    /// Queues `task` without waiting for it (its result goes where the task sends it).
    pub fn submit(&mut self, task: impl FnOnce(&mut S) + Send + 'static) -> Result<(), ReadError> {
        let stuck = self.stuck();
        if stuck >= MAX_STUCK_WORKERS {
            return Err(ReadError::TooManyStuck(stuck));
        }
        match self.current.tasks.try_send(Box::new(task)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(ReadError::Busy),
            Err(TrySendError::Disconnected(task)) => {
                self.restart();
                self.current
                    .tasks
                    .try_send(task)
                    .map_err(|_| ReadError::Busy)
            }
        }
    }

    /// The current task overran: leave its thread to finish by itself (it counts itself
    /// out of `stuck` then, and ends) and start another.
    pub fn abandon(&mut self) {
        self.abandoned.fetch_add(1, Ordering::Relaxed);
        self.stuck.fetch_add(1, Ordering::Relaxed);
        self.current.abandoned.store(true, Ordering::Relaxed);
        self.restart();
    }

    fn restart(&mut self) {
        match Thread::start(self.name, self.make, Arc::clone(&self.stuck)) {
            Ok(thread) => self.current = thread,
            Err(err) => tracing::error!("cannot start a {} thread: {err}", self.name),
        }
    }
}

impl<S: 'static> Thread<S> {
    fn start(
        name: &'static str,
        make: fn() -> S,
        stuck: Arc<AtomicUsize>,
    ) -> std::io::Result<Self> {
        let (tasks, queue) = mpsc::sync_channel::<Task<S>>(QUEUE);
        let abandoned = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&abandoned);
        let tid = Arc::new(std::sync::atomic::AtomicI32::new(0));
        let own_tid = Arc::clone(&tid);
        let idle = Arc::new(AtomicBool::new(true));
        let own_idle = Arc::clone(&idle);
        let reading = Reading::default();
        let own_reading = Arc::clone(&reading);
        thread::Builder::new().name(name.into()).spawn(move || {
            // SAFETY: gettid has no preconditions.
            own_tid.store(unsafe { libc::gettid() }, Ordering::Relaxed);
            READING.set(Some(Arc::clone(&own_reading)));
            let mut state = make();
            for task in queue {
                *own_reading.lock().unwrap_or_else(|e| e.into_inner()) = None;
                own_idle.store(false, Ordering::Relaxed);
                task(&mut state);
                own_idle.store(true, Ordering::Relaxed);
                if flag.load(Ordering::Relaxed) {
                    // Abandoned while in that task: its queue went to the new thread's
                    // callers as errors; this one is done.
                    stuck.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
            }
        })?;
        Ok(Self {
            tasks,
            abandoned,
            tid,
            idle,
            reading,
        })
    }

    /// What its task said it reads, or its memory.
    fn reading(&self) -> (Cow<'static, str>, Option<FileId>) {
        self.reading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or((Cow::Borrowed(READING_MEMORY), None))
    }

    /// The thread works rather than waits (see [`works`]).
    fn running(&self) -> bool {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        works(
            pid.cast_unsigned(),
            self.tid.load(Ordering::Relaxed).cast_unsigned(),
        )
    }
}

/// Thread `tid` of process `pid` works rather than waits: on a CPU or runnable (`R`), or it
/// used CPU time in the last few milliseconds (reading a binary from disk alternates short
/// sleeps in D with work; a thread stuck on a lock uses none).
pub fn works(pid: u32, tid: u32) -> bool {
    let sample = || -> Option<(char, u64)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
        let rest = stat.get(stat.rfind(')')? + 2..)?;
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        // utime and stime: fields 14 and 15 of stat (the state is field 3).
        let mut fields = fields.skip(10);
        let cpu = fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?;
        Some((state, cpu))
    };
    let Some((state, before)) = sample() else {
        return false;
    };
    if state == 'R' {
        return true;
    }
    thread::sleep(Duration::from_millis(30));
    sample().is_some_and(|(state, after)| state == 'R' || after > before)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_in_time_answers() {
        let mut worker = Worker::spawn("test-reader", || 41u32).expect("thread");
        let got = worker.call(Duration::from_secs(5), |s| {
            *s += 1;
            *s
        });
        assert_eq!(got, Ok(42));
        assert_eq!(worker.stuck(), 0);
    }

    #[test]
    fn an_overrun_abandons_the_worker_and_the_next_one_starts_fresh() {
        let mut worker = Worker::spawn("test-reader", || 0u32).expect("thread");
        let (release, wait) = mpsc::channel::<()>();
        let got = worker.call(Duration::from_millis(50), move |s| {
            *s = 7;
            let _ = wait.recv();
        });
        assert!(matches!(got, Err(ReadError::Missed { .. })), "{got:?}");
        assert!(
            got.is_err_and(|e| e.to_string().starts_with("memory of the process")),
            "a task that says nothing reads memory"
        );
        assert_eq!(worker.stuck(), 1);
        // The replacement answers at once, with fresh state.
        assert_eq!(worker.call(Duration::from_secs(5), |s| *s), Ok(0));
        // The stuck one, released, counts itself out.
        release.send(()).expect("stuck task waits");
        assert!(
            (0..200).any(|_| {
                thread::sleep(Duration::from_millis(10));
                worker.stuck() == 0
            }),
            "the released worker is no longer counted as stuck"
        );
        assert_eq!(worker.abandoned.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_miss_names_what_the_task_was_reading() {
        let mut worker = Worker::spawn("test-reader", || ()).expect("thread");
        // What a task said is not carried to the next task of the same thread.
        assert_eq!(
            worker.call(Duration::from_secs(5), |()| reading("the module /a")),
            Ok(())
        );
        let (_keep, wait) = mpsc::channel::<()>();
        let got = worker.call(Duration::from_millis(50), move |()| {
            let _ = wait.recv();
        });
        assert!(
            got.is_err_and(|e| e.to_string().starts_with("memory of the process")),
            "a task that says nothing reads memory"
        );
        let (_keep, wait) = mpsc::channel::<()>();
        let got = worker.call(Duration::from_millis(50), move |()| {
            reading("the module /mnt/stalled/app");
            let _ = wait.recv();
        });
        let Err(err) = got else {
            panic!("the task blocks: {got:?}")
        };
        assert_eq!(
            err.to_string(),
            "the module /mnt/stalled/app could not be read within 50ms (a read of it is blocked in the kernel)"
        );
        assert!(matches!(err, ReadError::Missed { file: None, .. }));
        let (_keep, wait) = mpsc::channel::<()>();
        let file = FileId {
            dev: "00:3a".into(),
            inode: 2,
        };
        let id = file.clone();
        let got = worker.call(Duration::from_millis(50), move |()| {
            reading_file("the module /mnt/stalled/app", id);
            let _ = wait.recv();
        });
        assert!(
            matches!(&got, Err(ReadError::Missed { file: Some(f), .. }) if *f == file),
            "a miss on a file names the file: {got:?}"
        );
        // Off a worker thread it does nothing.
        reading("nothing");
    }

    #[test]
    fn too_many_stuck_workers_refuse_at_once() {
        let mut worker = Worker::spawn("test-reader", || ()).expect("thread");
        let (_keep, wait) = mpsc::channel::<()>();
        let wait = Arc::new(std::sync::Mutex::new(wait));
        for _ in 0..MAX_STUCK_WORKERS {
            let wait = Arc::clone(&wait);
            let _ = worker.call(Duration::from_millis(1), move |()| {
                let _ = wait.lock().map(|w| w.recv());
            });
        }
        let started = Instant::now();
        let got = worker.call(Duration::from_secs(5), |()| ());
        assert_eq!(got, Err(ReadError::TooManyStuck(MAX_STUCK_WORKERS)));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn resisting_processes_are_skipped_until_the_time_is_up() {
        let mut resisting = Resisting::default();
        let now = Instant::now();
        resisting.mark(42, "stuck".into(), now);
        assert!(matches!(
            resisting.check(&42, now + Duration::from_secs(1)),
            Err(ReadError::Resisting { .. })
        ));
        assert_eq!(resisting.check(&43, now), Ok(()));
        assert_eq!(resisting.current(now).len(), 1);
        assert_eq!(resisting.check(&42, now + RESIST_FOR), Ok(()));
        assert_eq!(resisting.len(), 0);
    }
}
