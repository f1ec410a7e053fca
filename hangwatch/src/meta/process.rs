//! `/proc/PID` readers: process name, executable, command line, cgroup (and the container
//! and pod it names); and for a thread, whether it still exists (same start time) and the
//! syscall it sits in.
use std::{
    collections::HashMap,
    fs,
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{
    container::{self, ContainerRef},
    pods::{PodIndex, PodRef},
};
use crate::state::{ProcSyscall, ThreadKey};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessInfo {
    /// The process name (`comm` of the thread-group leader).
    pub comm: String,
    pub exe: Option<String>,
    pub cmdline: Vec<String>,
    pub cgroup: Option<String>,
    /// The container id and pod UID its cgroup names (any of the cgroup lines).
    pub container: Option<ContainerRef>,
    /// Namespace, pod and container names (and the pod's labels) when hangwatch watches the
    /// node's pods and knows this one; looked up at every `get`, since a pod may be listed
    /// after its process was first seen.
    pub pod: Option<PodRef>,
}

/// Process facts by tgid, valid while the process lives; `retain` drops the dead.
#[derive(Debug, Default)]
pub struct ProcessCache {
    by_tgid: HashMap<u32, Entry>,
    /// This node's pods, when attribution through the Kubernetes API is on.
    pods: Option<Arc<PodIndex>>,
    /// Lookups that found the process gone.
    pub vanished: u64,
}

#[derive(Debug)]
struct Entry {
    /// Start time of the process, in clock ticks: a reused pid has another.
    start: u64,
    info: ProcessInfo,
    /// Bumped at each re-read, so that what is derived from `info` (the thresholds the
    /// rules give it) knows when to derive again.
    version: u64,
    /// When the entry was last checked against /proc, and last read in full.
    checked: Instant,
    read: Instant,
}

/// [`ProcessCache::facts`] checks an entry against /proc (one read of `stat`: start time
/// and name, which show pid reuse and most execs) at most this often...
const RECHECK: Duration = Duration::from_secs(1);
/// ... and reads it again in full at most this often (an exec that keeps the name, a move
/// to another cgroup).
const REREAD: Duration = Duration::from_secs(30);

impl ProcessCache {
    /// Facts about process `tgid`, checked against /proc now, or `None` if it is gone
    /// (counted in `vanished`). For reports.
    pub fn get(&mut self, tgid: u32) -> Option<ProcessInfo> {
        self.lookup(tgid, Instant::now(), Duration::ZERO)
            .map(|(info, _)| info.clone())
    }

    /// A cache that also names the pods of containerized processes from `pods`.
    pub fn with_pods(pods: Option<Arc<PodIndex>>) -> Self {
        Self {
            pods,
            ..Self::default()
        }
    }

    /// Facts about process `tgid` and their version, checked against /proc at most once
    /// a [`RECHECK`]: cheap enough to ask per thread and tick.
    pub fn facts(&mut self, tgid: u32, now: Instant) -> Option<(&ProcessInfo, u64)> {
        self.lookup(tgid, now, RECHECK)
    }

    fn lookup(
        &mut self,
        tgid: u32,
        now: Instant,
        recheck: Duration,
    ) -> Option<(&ProcessInfo, u64)> {
        let fresh = self
            .by_tgid
            .get(&tgid)
            .is_some_and(|e| now.saturating_duration_since(e.checked) < recheck);
        if !fresh {
            let Some((start, comm)) = stat_identity(tgid) else {
                self.by_tgid.remove(&tgid);
                self.vanished += 1;
                return None;
            };
            let same = self.by_tgid.get_mut(&tgid).filter(|e| {
                e.start == start
                    && e.info.comm == comm
                    && now.saturating_duration_since(e.read) < REREAD
            });
            match same {
                Some(entry) => {
                    entry.checked = now;
                    // The pod may have been listed since: what the rules see must follow.
                    if let Some(pods) = &self.pods
                        && let Some(container) = &entry.info.container
                    {
                        let pod = pods.lookup(container);
                        if pod != entry.info.pod {
                            entry.info.pod = pod;
                            entry.version += 1;
                        }
                    }
                }
                None => {
                    let mut info = read_process(tgid)?;
                    if let (Some(pods), Some(container)) = (&self.pods, &info.container) {
                        info.pod = pods.lookup(container);
                    }
                    let version = self.by_tgid.get(&tgid).map_or(0, |e| e.version + 1);
                    self.by_tgid.insert(
                        tgid,
                        Entry {
                            start,
                            info,
                            version,
                            checked: now,
                            read: now,
                        },
                    );
                }
            }
        }
        self.by_tgid.get(&tgid).map(|e| (&e.info, e.version))
    }

    /// Drops every entry whose tgid is not in `live`.
    pub fn retain(&mut self, live: impl Fn(u32) -> bool) {
        self.by_tgid.retain(|&tgid, _| live(tgid));
    }
}

/// The start time (clock ticks since boot) and name of process `tgid`, from one read of
/// `/proc/TGID/stat`; `None` when it is gone (a zombie leader still counts: its process
/// lives on in its other threads).
fn stat_identity(tgid: u32) -> Option<(u64, String)> {
    let stat = fs::read_to_string(format!("/proc/{tgid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let start = stat
        .get(close + 2..)?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    Some((start, comm))
}

fn read_process(tgid: u32) -> Option<ProcessInfo> {
    let dir = PathBuf::from(format!("/proc/{tgid}"));
    let comm = fs::read_to_string(dir.join("comm"))
        .ok()?
        .trim_end()
        .to_owned();
    let exe = fs::read_link(dir.join("exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    // No `cmdline` here: reading it takes the process's mm lock, which a hung process may
    // hold forever, and this runs on the detection thread. The reports read it on a
    // reader worker under a deadline (`crate::enrich::cmdline`).
    let cgroup_text = fs::read_to_string(dir.join("cgroup")).ok();
    let cgroup = cgroup_text.as_deref().and_then(unified_cgroup);
    let container = cgroup_text.as_deref().and_then(container::from_proc_cgroup);
    Some(ProcessInfo {
        comm,
        exe,
        cmdline: Vec::new(),
        cgroup,
        container,
        pod: None,
    })
}

/// The cgroup v2 path (`0::/path`), else the first v1 hierarchy's path.
fn unified_cgroup(text: &str) -> Option<String> {
    let mut first = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(_controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" {
            return Some(path.to_owned());
        }
        first.get_or_insert_with(|| path.to_owned());
    }
    first
}

/// A thread as /proc shows it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadProc {
    /// The same thread (same start time) still exists; the syscall it is in, if any.
    Alive { syscall: Option<ProcSyscall> },
    /// Gone, or its tid now belongs to another thread.
    Gone,
}

/// Looks the thread up in /proc and checks it is the same one (tid reuse).
pub fn thread_proc(tgid: u32, key: ThreadKey) -> ThreadProc {
    let Some(start) = start_ticks(tgid, key.tid) else {
        return ThreadProc::Gone;
    };
    // /proc reports start time in clock ticks; the kernel record has ns.
    let expected = key.start_boottime_ns / (1_000_000_000 / clock_ticks());
    if start.abs_diff(expected) > 1 {
        return ThreadProc::Gone;
    }
    let syscall = fs::read_to_string(format!("/proc/{tgid}/task/{}/syscall", key.tid))
        .ok()
        .and_then(|text| ProcSyscall::parse(&text));
    ThreadProc::Alive { syscall }
}

/// The key of live thread `tid` of `tgid` from /proc (its start time in clock ticks, as
/// ns: `thread_proc` compares within a tick).
pub fn thread_key(tgid: u32, tid: u32) -> Option<ThreadKey> {
    let ticks = start_ticks(tgid, tid)?;
    Some(ThreadKey {
        tid,
        start_boottime_ns: ticks.saturating_mul(1_000_000_000 / clock_ticks()),
    })
}

/// The thread is on its way out: its exit has begun (`PF_EXITING` in the flags of
/// `/proc/TGID/task/TID/stat`) or a SIGKILL is pending for it. A killed thread is woken
/// from its wait and runs its exit: its episode ends `exited`, not `running`. Neither file
/// takes the process's mm lock.
pub fn exiting(tgid: u32, tid: u32) -> bool {
    const PF_EXITING: u64 = 0x4;
    let Ok(stat) = fs::read_to_string(format!("/proc/{tgid}/task/{tid}/stat")) else {
        return true; // gone
    };
    let flags = stat
        .rfind(')')
        .and_then(|end| stat.get(end + 2..))
        .and_then(|rest| rest.split_whitespace().nth(6))
        .and_then(|flags| flags.parse::<u64>().ok());
    flags.is_some_and(|flags| flags & PF_EXITING != 0)
        || super::futex_owner::kill_pending(tgid, tid)
}

/// The wait channel of a thread (`/proc/TGID/task/TID/wchan`): the kernel function it
/// sleeps in, e.g. `futex_do_wait`, `pipe_read`, `do_epoll_wait`. `None` when it runs, is
/// gone, or the kernel does not say ("0").
pub fn wchan(tgid: u32, tid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{tgid}/task/{tid}/wchan")).ok()?;
    let name = text.trim();
    (!name.is_empty() && name != "0").then(|| name.to_owned())
}

/// Field 22 of /proc/TGID/task/TID/stat: start time in clock ticks since boot; `None`
/// when the thread is gone or has exited (a zombie or dead thread keeps its /proc entry
/// until it is reaped).
fn start_ticks(tgid: u32, tid: u32) -> Option<u64> {
    start_ticks_of(tgid, tid, false)
}

/// As `start_ticks`, keeping exited threads when `exited_too` (a process lives on after its
/// main thread exited, and its facts are the leader's).
fn start_ticks_of(tgid: u32, tid: u32, exited_too: bool) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{tgid}/task/{tid}/stat")).ok()?;
    // The comm field may contain spaces and parentheses: split after the last ')'.
    let mut fields = stat[stat.rfind(')')? + 2..].split_whitespace();
    if matches!(fields.next()?, "Z" | "X" | "x") && !exited_too {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_thread_is_not_exiting() {
        let pid = std::process::id();
        assert!(!exiting(pid, pid));
        assert!(exiting(pid, u32::MAX), "a thread that is not there");
    }

    #[test]
    fn cgroup_v2_preferred() {
        assert_eq!(
            unified_cgroup("12:cpu:/a\n0::/user.slice/x.scope\n").as_deref(),
            Some("/user.slice/x.scope")
        );
        assert_eq!(
            unified_cgroup("3:memory:/k8s/pod\n").as_deref(),
            Some("/k8s/pod")
        );
    }

    #[test]
    fn facts_are_checked_once_a_second_and_read_again_when_the_name_changed() {
        let pid = std::process::id();
        let mut cache = ProcessCache::default();
        let now = Instant::now();
        let (info, version) = cache.facts(pid, now).expect("our own process");
        assert_eq!(version, 0);
        let comm = info.comm.clone();
        // As if the process had exec'd under another name since the entry was read.
        cache.by_tgid.get_mut(&pid).expect("cached").info.comm = "before-exec".into();
        let (info, version) = cache.facts(pid, now).expect("cached");
        assert_eq!(
            (info.comm.as_str(), version),
            ("before-exec", 0),
            "not due yet"
        );
        let later = now + RECHECK;
        let (info, version) = cache.facts(pid, later).expect("checked");
        assert_eq!(
            (info.comm.as_str(), version),
            (comm.as_str(), 1),
            "read again"
        );
        let (_, version) = cache.facts(pid, later + RECHECK).expect("checked");
        assert_eq!(version, 1, "unchanged: not read again");
    }

    #[test]
    fn wchan_of_a_sleeping_thread() {
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .expect("sleep");
        let pid = child.id();
        // Until it sleeps, it has no wait channel (or the exec's).
        let mut seen = None;
        for _ in 0..200 {
            seen = wchan(pid, pid);
            if seen.as_deref().is_some_and(|w| w.contains("nanosleep")) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            seen.as_deref().is_some_and(|w| w.contains("nanosleep")),
            "{seen:?}"
        );
        assert_eq!(wchan(u32::MAX - 1, u32::MAX - 1), None);
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        let mut cache = ProcessCache::default();
        let info = cache.get(pid).expect("our own process");
        assert!(info.exe.is_some());
        assert!(
            info.cmdline.is_empty(),
            "read by the reports, off the detection path"
        );
        assert!(start_ticks(pid, pid).is_some());
        assert!(cache.get(u32::MAX - 1).is_none());
        assert_eq!(cache.vanished, 1);
    }
}
