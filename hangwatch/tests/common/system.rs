//! The machine the tests run on: root, tools on PATH, and what /proc says about a task.
use std::path::PathBuf;
use std::time::Duration;

/// Panics unless the test runs as root: these tests load BPF programs.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "kernel tests load BPF programs and must run as root (euid is {euid})"
    );
}

/// Whether `tool` is found on PATH (or in the sbin directories root has).
pub fn have_tool(tool: &str) -> bool {
    find_tool(tool).is_some()
}

pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// The tids of `pid` from /proc/PID/task (empty once the process is gone).
pub fn tids(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut tids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    tids
}

/// The scheduler state letter of a task ('R', 'S', 'D', ...), from /proc/PID/stat.
pub fn task_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// A process's CPU time so far (user + system), from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat: 11 and 12 after the state.
    let hz = 100; // USER_HZ
    Duration::from_millis((ticks(11) + ticks(12)) * 1000 / hz)
}

/// The kernel stack of a task from /proc/PID/stack (root only), for failure messages.
pub fn proc_stack(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/stack")).unwrap_or_else(|e| format!("<{e}>"))
}
