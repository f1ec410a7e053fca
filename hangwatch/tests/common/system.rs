//! The machine the tests run on: root, tools on PATH, and what /proc says about a task.
use std::{path::PathBuf, sync::OnceLock, time::Duration};

/// The environment variable that says how many times slower than native this run is.
pub const TIME_SCALE_VAR: &str = "HANGWATCH_TEST_TIME_SCALE";

/// How many times longer than on real hardware the harness waits for what must happen:
/// `HANGWATCH_TEST_TIME_SCALE`, a whole number, 1 when unset. `cargo xtask vmtest` sets it
/// for kernels booted under QEMU's TCG, where CPU-bound work (the verifier loading the
/// probes, the daemon's walks, symbolization, gcc) runs about ten times slower: the daemon
/// there takes ~11 s to attach, where 10 s is the native limit.
///
/// Only the harness's timeouts (waits that end as soon as the awaited thing happens) are
/// scaled, so a passing run costs no more time; fixed sleeps and quiet windows in the
/// tests are not, and no threshold given to the daemon is.
pub fn time_scale() -> u32 {
    static SCALE: OnceLock<u32> = OnceLock::new();
    *SCALE.get_or_init(|| match std::env::var(TIME_SCALE_VAR) {
        Err(_) => 1,
        Ok(text) => match text.trim().parse::<u32>() {
            Ok(n) if n >= 1 => n,
            _ => panic!("{TIME_SCALE_VAR}={text:?}: expected a whole number >= 1"),
        },
    })
}

/// `timeout` times [`time_scale`].
pub fn scaled(timeout: Duration) -> Duration {
    timeout.saturating_mul(time_scale())
}

/// Whether this kernel has thread pidfds (`PIDFD_THREAD`, Linux 6.9), which the daemon
/// reads per-thread probe state by; older kernels refuse the flag with EINVAL.
pub fn has_thread_pidfds() -> bool {
    const PIDFD_THREAD: libc::c_int = libc::O_EXCL;
    let pid = libc::pid_t::try_from(std::process::id()).expect("pid fits pid_t");
    // SAFETY: plain syscall with integer arguments; the fd it may return is closed below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, PIDFD_THREAD) };
    if fd >= 0 {
        // SAFETY: a new fd nothing else owns.
        unsafe { libc::close(fd as libc::c_int) };
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
}

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

/// The numeric fields of /proc/PID/stat after the state (index 0 is field 4), 0 if absent.
fn stat_fields(pid: u32) -> Vec<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(1)
                .map(|v| v.parse().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default()
}

/// Clock ticks (USER_HZ) to a duration.
fn ticks(n: u64) -> Duration {
    Duration::from_millis(n * 1000 / 100)
}

/// A process's CPU time so far (user + system), from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Duration {
    let f = stat_fields(pid);
    // utime and stime are fields 14 and 15 of stat.
    ticks(f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0))
}

/// The CPU time of a process and of its helper processes (the daemon's unwinders): its
/// own, its children's it reaped (cutime, cstime: fields 16 and 17), its live children's.
pub fn cpu_time_with_helpers(pid: u32) -> Duration {
    let f = stat_fields(pid);
    let reaped = ticks(f.get(12).copied().unwrap_or(0) + f.get(13).copied().unwrap_or(0));
    cpu_time(pid) + reaped + children_of(pid).into_iter().map(cpu_time).sum::<Duration>()
}

/// The children of every thread of `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The kernel stack of a task from /proc/PID/stack (root only), for failure messages.
pub fn proc_stack(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/stack")).unwrap_or_else(|e| format!("<{e}>"))
}
