//! The machine: the `kernel.bpf_stats_enabled` guard and what /proc says about processes.

use std::{fs, path::Path, time::Duration};

use anyhow::{Context as _, Result};

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Holds `kernel.bpf_stats_enabled` at a value of our choosing; restores the value it found
/// when dropped (on success, error, panic and Ctrl-C alike).
pub struct BpfStats {
    original: String,
    current: String,
}

impl BpfStats {
    pub fn take() -> Result<Self> {
        let original = fs::read_to_string(BPF_STATS)
            .with_context(|| format!("cannot read {BPF_STATS}"))?
            .trim()
            .to_owned();
        Ok(Self {
            current: original.clone(),
            original,
        })
    }

    /// Whether it was on when we took it.
    pub fn was_on(&self) -> bool {
        self.original != "0"
    }

    pub fn set(&mut self, on: bool) -> Result<()> {
        let value = if on { "1" } else { "0" };
        if self.current != value {
            fs::write(BPF_STATS, value)
                .with_context(|| format!("cannot write {value} to {BPF_STATS}"))?;
            self.current = value.to_owned();
        }
        Ok(())
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if self.current != self.original
            && let Err(e) = fs::write(BPF_STATS, &self.original)
        {
            eprintln!(
                "xtask bench: warning: could not restore {BPF_STATS} to {}: {e}",
                self.original
            );
        }
    }
}

/// The CPU time (utime + stime) a process and its helper processes have used so far.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    Ok(own_cpu_time(pid, false)? + children_cpu_time(pid))
}

/// utime + stime of `pid` (and, with `reaped`, of its children it has waited for).
fn own_cpu_time(pid: u32, reaped: bool) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // The fields after the command name, which is in parentheses and may hold anything.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the line (utime, stime), 16 and 17 those of the children it
    // waited for (cutime, cstime); `rest` starts at field 3.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i - 3)
            .context("short stat")?
            .parse::<u64>()
            .context("bad stat field")
    };
    let mut total = ticks(14)? + ticks(15)?;
    if reaped {
        total += ticks(16)? + ticks(17)?;
    }
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    Ok(Duration::from_millis(total * 1000 / hz))
}

/// The CPU time of `pid`'s helper processes: the daemon unwinds stacks in a child process
/// (`hangwatch unwinder`), whose work is the daemon's: the live ones, and those it reaped.
fn children_cpu_time(pid: u32) -> Duration {
    let reaped = own_cpu_time(pid, true)
        .ok()
        .zip(own_cpu_time(pid, false).ok())
        .map_or(Duration::ZERO, |(all, own)| all.saturating_sub(own));
    let live = live_children(pid)
        .into_iter()
        .filter_map(|child| own_cpu_time(child, false).ok())
        .sum::<Duration>();
    reaped + live
}

/// The processes `pid`'s threads started and that still run (the unwinder).
pub fn live_children(pid: u32) -> Vec<u32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

pub fn cpu_time_precise(pid: u32) -> Option<Duration> {
    let mut total: u64 = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(stat) = fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    (total > 0).then(|| Duration::from_nanos(total))
}

/// The share of all CPUs' time that was not idle (nor iowait) over `window`, from /proc/stat:
/// what else the machine is doing (the load average also counts threads asleep in D).
pub fn cpu_busy(window: Duration) -> Result<f64> {
    fn sample() -> Result<(u64, u64)> {
        let stat = fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("cpu "))
            .context("no cpu line in /proc/stat")?
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is already in user).
        let total: u64 = fields.iter().take(8).sum();
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        Ok((total, idle))
    }
    let (total0, idle0) = sample()?;
    super::proc::sleep(window)?;
    let (total1, idle1) = sample()?;
    let total = total1.saturating_sub(total0).max(1);
    Ok(1.0 - idle1.saturating_sub(idle0) as f64 / total as f64)
}

/// A `Vm*` line of /proc/PID/status, in KiB.
pub fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {key} in {path}"))
}

/// A BPF program a process holds a file descriptor of, with the kernel's statistics for it.
#[derive(Debug, Clone)]
pub struct HeldProgram {
    pub id: u64,
    pub prog_type: u64,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// BPF program types that run on scheduler/tracing events (and so could disturb the benchmark):
/// kprobe, tracepoint, perf_event, raw_tracepoint, raw_tracepoint_writable, tracing.
const TRACING_TYPES: &[u64] = &[2, 5, 7, 17, 24, 26];

/// The BPF programs `pid` holds descriptors of, from /proc/PID/fdinfo (needs no bpftool).
pub fn held_programs(pid: u32) -> Vec<HeldProgram> {
    let mut found: Vec<HeldProgram> = Vec::new();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return found;
    };
    for fd in fds.flatten() {
        let is_prog =
            fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:bpf-prog");
        if !is_prog {
            continue;
        }
        let info_path = Path::new("/proc")
            .join(pid.to_string())
            .join("fdinfo")
            .join(fd.file_name());
        let Ok(info) = fs::read_to_string(info_path) else {
            continue;
        };
        let field = |key: &str| -> u64 {
            info.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let id = field("prog_id");
        if found.iter().any(|p| p.id == id) {
            continue;
        }
        found.push(HeldProgram {
            id,
            prog_type: field("prog_type"),
            run_time_ns: field("run_time_ns"),
            run_cnt: field("run_cnt"),
        });
    }
    found
}

/// Other processes holding tracing BPF programs (another hangwatch, a profiler, ...): they add
/// cost to every variant, bare included. "comm[pid] xN" each.
pub fn other_tracers(except: &[u32]) -> Vec<String> {
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if except.contains(&pid) || pid == std::process::id() {
            continue;
        }
        let tracing = held_programs(pid)
            .iter()
            .filter(|p| TRACING_TYPES.contains(&p.prog_type))
            .count();
        if tracing > 0 {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            out.push(format!("{}[{pid}] x{tracing}", comm.trim()));
        }
    }
    out
}
