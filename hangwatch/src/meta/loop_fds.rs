//! Which processes have an epoll or io_uring fd: the prefilter of event loops recognized
//! from their stacks (`detect/loop_stall.rs`). Only their blocked threads are emitted by
//! the walks and have their stacks read, so a machine of idle threads pays nothing for it.
//!
//! Read from `/proc/PID/fd` (the links `anon_inode:[eventpoll]`, `anon_inode:[io_uring]`)
//! on a thread of its own: a process with a huge fd table, or a `/proc` that is slow to
//! answer, delays this prefilter, never detection. The detection thread takes the changes
//! at each tick and mirrors them into the BPF map `LOOP_FD_TGIDS`.
use std::{
    collections::{HashMap, HashSet},
    fs,
    os::unix::ffi::OsStrExt as _,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

/// `/proc` is listed this often: a new process is looked at within this long, unless a
/// round costs more than `CPU_SHARE` at that pace.
const LIST_EVERY: Duration = Duration::from_secs(1);
/// The share of a core the rounds may take; rounds are spaced out beyond it. Listing `/proc`
/// walks every pid of the machine, threads included (the kernel's `next_tgid`), so with
/// 10,000 idle threads a round costs about 1.3 ms, which once a second was a quarter of the
/// idle daemon's CPU (`cargo xtask bench --only daemon`). The walks are spaced the same way
/// (`daemon.rs`, `WALK_CPU_SHARE`).
const CPU_SHARE: f64 = 0.0005;
/// A process without a loop fd is looked at again after this long, doubling up to
/// `MAX_RESCAN` (a server creates its epoll fd in its first milliseconds, or soon after;
/// a process that never does costs one read of its fd table per `MAX_RESCAN`). These
/// looks do not wait for the next round: between rounds the reader wakes every
/// `RESCAN_TICK` for the processes due, without listing `/proc`. A server found at its
/// first look still importing its modules (a Python server under load takes a second or
/// more) was otherwise marked only at the round two or three seconds later, and a loop
/// that spun from its first request was reported that much late (kernel_loops).
const FIRST_RESCAN: Duration = Duration::from_millis(250);
const MAX_RESCAN: Duration = Duration::from_secs(30);
const RESCAN_TICK: Duration = Duration::from_millis(250);
/// At most this many fd links are read per process and look: loop fds are made early, so
/// they are among the low fds; a process with 100,000 sockets costs 4,096 reads.
const MAX_LINKS: usize = 4096;
/// Processes followed at most (the BPF map's capacity): a process beyond it is not looked
/// at until others have exited.
const MAX_PROCESSES: usize = hangwatch_ebpf::MAX_LOOP_FD_TGIDS as usize;

/// A change in the set of processes with a loop fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The process has an epoll or io_uring fd.
    Has(u32),
    /// The process that had one is gone.
    Gone(u32),
}

/// The detection thread's end: the changes since the last call.
pub struct LoopFds {
    changes: mpsc::Receiver<Change>,
}

impl LoopFds {
    /// Starts the reader thread; it ends at its first send after this is dropped.
    pub fn spawn() -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let own = std::process::id();
        thread::Builder::new()
            .name("hangwatch-loopfd".into())
            .spawn(move || run(&tx, own))?;
        Ok(Self { changes: rx })
    }

    /// The changes read since the last call, in order.
    pub fn changes(&self) -> Vec<Change> {
        self.changes.try_iter().collect()
    }
}

/// What the reader knows of a process.
#[derive(Debug, Clone, Copy)]
enum Known {
    /// Has a loop fd (not looked at again: a prefilter may stay set while the process
    /// lives).
    Loop,
    /// Had none at the last look; looked at again at `next`, then after `wait` more.
    Without { next: Instant, wait: Duration },
}

fn run(tx: &mpsc::Sender<Change>, own: u32) {
    let mut known: HashMap<u32, Known> = HashMap::new();
    let mut first_round = true;
    loop {
        let started = Instant::now();
        let cpu_at_start = crate::clock::thread_cpu_time();
        let pids = match list_pids() {
            Ok(pids) => pids,
            Err(err) => {
                tracing::debug!("cannot list /proc for loop fds: {err}");
                thread::sleep(LIST_EVERY);
                continue;
            }
        };
        let mut changes = Vec::new();
        known.retain(|pid, k| {
            let alive = pids.contains(pid);
            if !alive && matches!(k, Known::Loop) {
                changes.push(Change::Gone(*pid));
            }
            alive
        });
        for &pid in &pids {
            if pid == own {
                continue;
            }
            let due = match known.get(&pid) {
                None => known.len() < MAX_PROCESSES,
                Some(Known::Loop) => false,
                Some(Known::Without { next, .. }) => started >= *next,
            };
            if !due {
                continue;
            }
            look(pid, started, &mut known, &mut changes);
        }
        // Sent every round, even empty: a send to a daemon that stopped ends the thread.
        if changes.into_iter().try_for_each(|c| tx.send(c)).is_err() {
            return;
        }
        // The first round looks at every process of the machine, once: spacing the next
        // by its cost (5 s and more on a busy machine) left a server started just after
        // the daemon unmarked that long, and its first-request stall was reported 7 s into
        // it instead of 2 (kernel_loops, in a full run). The rounds after it look only at
        // new processes and those due again.
        let spent = if first_round {
            first_round = false;
            Duration::ZERO
        } else {
            crate::clock::thread_cpu_time().saturating_sub(cpu_at_start)
        };
        let next_round = started + pause_after(spent);
        // Until then, the processes due again (young ones, looked at 250 ms apart at first).
        loop {
            let now = Instant::now();
            if now >= next_round {
                break;
            }
            thread::sleep(RESCAN_TICK.min(next_round - now));
            let now = Instant::now();
            let due: Vec<u32> = known
                .iter()
                .filter(|(_, k)| matches!(k, Known::Without { next, .. } if now >= *next))
                .map(|(pid, _)| *pid)
                .collect();
            let mut changes = Vec::new();
            for pid in due {
                look(pid, now, &mut known, &mut changes);
            }
            if changes.into_iter().try_for_each(|c| tx.send(c)).is_err() {
                return;
            }
        }
    }
}

/// Looks at `pid`'s fds now: marked for good if it has a loop fd, else looked at again
/// after twice the last wait.
fn look(pid: u32, now: Instant, known: &mut HashMap<u32, Known>, changes: &mut Vec<Change>) {
    if has_loop_fd(pid) {
        known.insert(pid, Known::Loop);
        changes.push(Change::Has(pid));
        return;
    }
    let wait = match known.get(&pid) {
        Some(Known::Without { wait, .. }) => (*wait * 2).min(MAX_RESCAN),
        _ => FIRST_RESCAN,
    };
    known.insert(
        pid,
        Known::Without {
            next: now + wait,
            wait,
        },
    );
}

/// The time from the start of a round that took `spent` of CPU to the next one.
fn pause_after(spent: Duration) -> Duration {
    LIST_EVERY.max(spent.div_f64(CPU_SHARE))
}

fn list_pids() -> std::io::Result<HashSet<u32>> {
    Ok(fs::read_dir("/proc")?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect())
}

/// Whether the process has an epoll or io_uring fd among its first `MAX_LINKS`. A process
/// that vanished or cannot be read has none (it is looked at again later).
fn has_loop_fd(pid: u32) -> bool {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    dir.filter_map(Result::ok).take(MAX_LINKS).any(|entry| {
        fs::read_link(entry.path()).is_ok_and(|t| is_loop_fd(t.as_os_str().as_bytes()))
    })
}

/// The target of an fd link that makes a process a loop candidate.
fn is_loop_fd(target: &[u8]) -> bool {
    target == b"anon_inode:[eventpoll]" || target == b"anon_inode:[io_uring]"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_are_spaced_out_beyond_their_share_of_a_core() {
        assert_eq!(pause_after(Duration::from_micros(100)), LIST_EVERY);
        // 1.3 ms of CPU a round (10,000 threads listed) at 0.05 % of a core: every 2.6 s.
        assert_eq!(
            pause_after(Duration::from_micros(1300)),
            Duration::from_millis(2600)
        );
    }

    #[test]
    fn epoll_and_io_uring_links_are_loop_fds() {
        assert!(is_loop_fd(b"anon_inode:[eventpoll]"));
        assert!(is_loop_fd(b"anon_inode:[io_uring]"));
        assert!(!is_loop_fd(b"anon_inode:[eventfd]"));
        assert!(!is_loop_fd(b"socket:[12345]"));
    }

    #[test]
    fn this_process_is_seen_with_an_epoll_fd_it_makes() {
        // SAFETY: epoll_create1 takes no pointers; the fd is closed below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(
            fd >= 0,
            "epoll_create1: {}",
            std::io::Error::last_os_error()
        );
        assert!(has_loop_fd(std::process::id()));
        // SAFETY: our own fd, closed once.
        unsafe { libc::close(fd) };
        assert!(!has_loop_fd(u32::MAX), "no such process: none");
    }
}
