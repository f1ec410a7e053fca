//! `/proc/PID` readers: process name, executable, command line, cgroup (and the container
//! and pod it names); and for a thread, whether it still exists (same start time) and the
//! syscall it sits in.
use std::{
    collections::HashMap,
    fs,
    path::PathBuf,
    sync::{Arc, OnceLock},
};

use serde::Serialize;

use super::{
    container::{self, ContainerRef},
    pods::{PodIndex, PodRef},
};
use crate::state::ThreadKey;

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
    by_tgid: HashMap<u32, (u64, ProcessInfo)>,
    /// This node's pods, when attribution through the Kubernetes API is on.
    pods: Option<Arc<PodIndex>>,
    /// Lookups that found the process gone.
    pub vanished: u64,
}

impl ProcessCache {
    /// A cache that also names the pods of containerized processes from `pods`.
    pub fn with_pods(pods: Option<Arc<PodIndex>>) -> Self {
        Self {
            pods,
            ..Self::default()
        }
    }

    /// Facts about process `tgid`, or `None` if it is gone (counted in `vanished`).
    pub fn get(&mut self, tgid: u32) -> Option<ProcessInfo> {
        let mut info = self.get_cached(tgid)?;
        if let (Some(pods), Some(container)) = (&self.pods, &info.container) {
            info.pod = pods.lookup(container);
        }
        Some(info)
    }

    fn get_cached(&mut self, tgid: u32) -> Option<ProcessInfo> {
        let start = match start_ticks_of(tgid, tgid, true) {
            Some(start) => start,
            None => {
                self.by_tgid.remove(&tgid);
                self.vanished += 1;
                return None;
            }
        };
        if let Some((cached_start, info)) = self.by_tgid.get(&tgid)
            && *cached_start == start
        {
            return Some(info.clone());
        }
        let info = read_process(tgid)?;
        self.by_tgid.insert(tgid, (start, info.clone()));
        Some(info)
    }

    /// Drops every entry whose tgid is not in `live`.
    pub fn retain(&mut self, live: impl Fn(u32) -> bool) {
        self.by_tgid.retain(|&tgid, _| live(tgid));
    }
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
    let cmdline = fs::read(dir.join("cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|arg| !arg.is_empty())
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect()
        })
        .unwrap_or_default();
    let cgroup_text = fs::read_to_string(dir.join("cgroup")).ok();
    let cgroup = cgroup_text.as_deref().and_then(unified_cgroup);
    let container = cgroup_text.as_deref().and_then(container::from_proc_cgroup);
    Some(ProcessInfo {
        comm,
        exe,
        cmdline,
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

/// `/proc/PID/task/TID/syscall` of a blocked thread: the syscall number and its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSyscall {
    pub nr: i64,
    pub args: [u64; 6],
}

impl ProcSyscall {
    /// Parses "NR ARG1 ... ARG6 SP PC"; `None` for "running" or "-1 ..." (not in a syscall).
    pub fn parse(text: &str) -> Option<Self> {
        let mut fields = text.split_whitespace();
        let nr: i64 = fields.next()?.parse().ok()?;
        if nr < 0 {
            return None;
        }
        let mut args = [0u64; 6];
        for arg in &mut args {
            *arg = u64::from_str_radix(fields.next()?.trim_start_matches("0x"), 16).ok()?;
        }
        Some(Self { nr, args })
    }
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
    fn parses_proc_syscall() {
        let s =
            ProcSyscall::parse("202 0x5581 0x80 0x2 0x0 0x0 0x0 0x7ffc 0x7f12\n").expect("parses");
        assert_eq!(s.nr, 202);
        assert_eq!(s.args[..4], [0x5581, 0x80, 2, 0]);
        assert_eq!(ProcSyscall::parse("running\n"), None);
        assert_eq!(ProcSyscall::parse("-1 0x7ffc 0x7f12\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        let mut cache = ProcessCache::default();
        let info = cache.get(pid).expect("our own process");
        assert!(info.exe.is_some());
        assert!(!info.cmdline.is_empty());
        assert!(start_ticks(pid, pid).is_some());
        assert!(cache.get(u32::MAX - 1).is_none());
        assert_eq!(cache.vanished, 1);
    }
}
