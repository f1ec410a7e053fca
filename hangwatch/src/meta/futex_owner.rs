//! Lock owners: for a thread in a futex wait, read the lock beside the futex word from its
//! process (`/proc/PID/mem`, 20 bytes, on a reader worker) and check that the owner it names is a live
//! thread of the same process. Each wait is read once per `REREAD_AFTER_NS` at most: a
//! mutex can change hands while a waiter that was not woken stays blocked.
use std::{
    collections::HashMap,
    fs,
    path::Path,
    sync::mpsc::{Receiver, SyncSender},
    time::{Duration, Instant},
};

use super::reader::{Resisting, Worker};
use crate::state::{FutexCall, FutexCmd, MUTEX_PREFIX_BYTES, ThreadKey, owner_candidate};

/// How long an owner read stays good for the same wait.
const REREAD_AFTER_NS: u64 = 1_000_000_000;
/// An owner read not answered within this long means the reader is stuck on that process.
const READ_DEADLINE: Duration = Duration::from_millis(200);
/// A read overdue while its worker runs is waited for up to this long.
const LATE_LIMIT: Duration = Duration::from_secs(2);

/// Owner reads by wait: (thread, start of its wait) -> (read at, owner). The reads run on a
/// reader worker: the detection thread asks, and takes the answers at its next tick, so a
/// process whose memory cannot be read costs nothing but its own owners.
#[derive(Debug)]
pub struct OwnerCache {
    reads: HashMap<(ThreadKey, u64), (u64, Option<u32>)>,
    /// Reads asked and not answered: the process, and when.
    pending: HashMap<(ThreadKey, u64), (u32, Instant)>,
    worker: Worker<()>,
    answers: (SyncSender<Answer>, Receiver<Answer>),
    resisting: Resisting,
    /// Reads done, for the summary.
    pub reads_done: u64,
}

/// One read's answer: the wait, when it was read, and the owner found.
type Answer = ((ThreadKey, u64), u64, Option<u32>);

impl OwnerCache {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reads: HashMap::new(),
            pending: HashMap::new(),
            worker: Worker::spawn("hangwatch-owners", || ())?,
            answers: std::sync::mpsc::sync_channel(4096),
            resisting: Resisting::default(),
            reads_done: 0,
        })
    }

    /// Reads abandoned because a process did not answer in time.
    pub fn abandoned(&self) -> u64 {
        self.worker
            .abandoned
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes the answers that arrived since the last tick; a read overdue means the worker
    /// is stuck on that process: it is marked as resisting and the worker replaced (the
    /// reads queued behind it are asked again).
    pub fn collect(&mut self, _now_ns: u64) {
        while let Ok((wait, at, owner)) = self.answers.1.try_recv() {
            if self.pending.remove(&wait).is_some() {
                self.reads.insert(wait, (at, owner));
            }
        }
        let now = Instant::now();
        let overdue = self
            .pending
            .values()
            .filter(|(_, asked)| {
                now.duration_since(*asked) >= crate::clock::stretched(READ_DEADLINE)
            })
            .min_by_key(|(_, asked)| *asked)
            .copied();
        // A worker that runs (or waits for a CPU: hundreds of spinning threads beside it)
        // is late, not stuck on the process: holding that against the process would blind
        // its deadlock detection for `RESIST_FOR`. Up to `LATE_LIMIT`.
        if let Some((_, asked)) = overdue
            && now.duration_since(asked) < LATE_LIMIT
            && self.worker.working()
        {
            return;
        }
        if let Some((tgid, _)) = overdue {
            self.resisting.mark(
                tgid,
                format!("a lock owner read took longer than {READ_DEADLINE:?}"),
                now,
            );
            self.worker.abandon();
            self.pending.clear();
        }
    }

    /// The owner of the lock `tid` of `tgid` waits on in `call`, if it is known (a read is
    /// asked for when it is not, answered by a later tick).
    pub fn owner(
        &mut self,
        tgid: u32,
        thread: ThreadKey,
        since_ns: u64,
        call: &FutexCall,
        now_ns: u64,
    ) -> Option<u32> {
        let wait = (thread, since_ns);
        let cached = self.reads.get(&wait).copied();
        if let Some((at, owner)) = cached
            && now_ns.saturating_sub(at) < REREAD_AFTER_NS
        {
            return owner;
        }
        if !could_name_an_owner(call) {
            self.reads.insert(wait, (now_ns, None));
            return None;
        }
        if self.pending.contains_key(&wait) || self.resisting.check(&tgid, Instant::now()).is_err()
        {
            return cached.and_then(|(_, owner)| owner);
        }
        let call = *call;
        let answers = self.answers.0.clone();
        let asked = self.worker.submit(move |()| {
            let owner = read_owner(tgid, &call);
            let _ = answers.try_send((wait, crate::clock::monotonic_ns(), owner));
        });
        if asked.is_ok() {
            self.reads_done += 1;
            self.pending.insert(wait, (tgid, Instant::now()));
        }
        cached.and_then(|(_, owner)| owner)
    }

    /// Whether the owner of the lock `thread` waits on since `since_ns` is being read for
    /// the first time (asked, never answered for this wait). A re-read of an answer already
    /// known does not count: one is in flight at most ticks of a long wait.
    pub fn unanswered(&self, thread: ThreadKey, since_ns: u64) -> bool {
        let wait = (thread, since_ns);
        self.pending.contains_key(&wait) && !self.reads.contains_key(&wait)
    }

    /// Forgets the waits not in `live`.
    pub fn retain(&mut self, live: impl Fn(&(ThreadKey, u64)) -> bool) {
        self.reads.retain(|k, _| live(k));
        self.pending.retain(|k, _| live(k));
    }
}

/// Whether reading the memory can tell anything: a PI lock, or a plain wait for the
/// value glibc's `lll_lock_wait` waits for (2, "taken, with waiters"). Idle condvar and
/// semaphore waiters are left alone without a read.
fn could_name_an_owner(call: &FutexCall) -> bool {
    match call.cmd {
        FutexCmd::LockPi => true,
        FutexCmd::Wait => call.val.is_none_or(|v| v == 2),
        FutexCmd::Other => false,
    }
}

/// The live owner of the lock at the futex address of `call`, read now.
pub fn read_owner(tgid: u32, call: &FutexCall) -> Option<u32> {
    let words = read_words(tgid, call.uaddr)?;
    let owner = owner_candidate(call, words)?;
    is_thread_of(tgid, owner).then_some(owner)
}

/// The first five 32-bit words at `address` in process `tgid`.
fn read_words(tgid: u32, address: u64) -> Option<[u32; 5]> {
    let mut bytes = [0u8; MUTEX_PREFIX_BYTES];
    if super::memory::read(tgid, address, &mut bytes).ok()? != bytes.len() {
        return None;
    }
    let mut words = [0u32; 5];
    for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(4)) {
        *word = u32::from_ne_bytes(chunk.try_into().ok()?);
    }
    Some(words)
}

/// `tid` is a live (not exited) thread of process `tgid`.
pub fn is_thread_of(tgid: u32, tid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{tgid}/task/{tid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 2..i + 3))
        .unwrap_or("X");
    !matches!(state, "Z" | "X" | "x")
}

/// The number of threads of a process, from the link count of `/proc/TGID/task` (2 plus
/// one per thread): one `stat`, no directory read.
pub fn thread_count(tgid: u32) -> Option<usize> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(Path::new(&format!("/proc/{tgid}/task"))).ok()?;
    usize::try_from(meta.nlink()).ok()?.checked_sub(2)
}

/// The tids of a process's threads, from /proc (empty when it is gone).
pub fn task_ids(tgid: u32) -> Vec<u32> {
    fs::read_dir(format!("/proc/{tgid}/task"))
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILL is pending for the thread (its process is being killed): whatever it waits
/// on, it is about to exit.
pub fn kill_pending(tgid: u32, tid: u32) -> bool {
    const SIGKILL_BIT: u64 = 1 << (libc::SIGKILL - 1);
    super::signal_masks::SignalMasks::of(tgid, tid)
        .is_none_or(|masks| masks.any_pending() & SIGKILL_BIT != 0) // gone: true
}

/// A thread as /proc shows it now: name, state letter, and the syscall it sits in
/// ("running" when it is not in one).
pub struct ProcThread {
    pub name: String,
    pub state: char,
    pub syscall: Option<crate::state::ProcSyscall>,
}

pub fn proc_thread(tgid: u32, tid: u32) -> Option<ProcThread> {
    let dir = format!("/proc/{tgid}/task/{tid}");
    let stat = fs::read_to_string(format!("{dir}/stat")).ok()?;
    let close = stat.rfind(')')?;
    let name = stat.get(stat.find('(')? + 1..close)?.to_owned();
    let state = stat.get(close + 2..)?.chars().next()?;
    let syscall = fs::read_to_string(format!("{dir}/syscall"))
        .ok()
        .and_then(|t| crate::state::ProcSyscall::parse(&t));
    Some(ProcThread {
        name,
        state,
        syscall,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_our_threads() {
        let me = std::process::id();
        let n = thread_count(me).expect("our process");
        assert!(n >= 1);
        assert!(is_thread_of(me, me));
        assert!(!is_thread_of(me, u32::MAX - 1));
        assert!(!kill_pending(me, me));
        assert!(kill_pending(me, u32::MAX - 1), "gone");
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        let t = proc_thread(me, tid).expect("ourselves");
        assert_eq!(t.state, 'R');
    }

    #[test]
    fn reads_a_held_mutex_of_our_own() {
        // A glibc mutex held by this thread: owner is our tid.
        // SAFETY: an all-zero pthread_mutex_t is valid storage; init follows.
        let mut m: libc::pthread_mutex_t = unsafe { std::mem::zeroed() };
        // SAFETY: `m` lives until the end of the test and is unlocked before.
        unsafe {
            libc::pthread_mutex_init(&mut m, std::ptr::null());
            libc::pthread_mutex_lock(&mut m);
        }
        let call = FutexCall {
            uaddr: std::ptr::from_ref(&m) as u64,
            cmd: crate::state::FutexCmd::Wait,
            val: None,
            private: true,
            timed: false,
        };
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        assert_eq!(read_owner(std::process::id(), &call), Some(tid));
        // SAFETY: this thread locked `m` above.
        unsafe { libc::pthread_mutex_unlock(&mut m) };
        assert_eq!(read_owner(std::process::id(), &call), None);
    }
}
