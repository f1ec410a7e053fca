//! What runs beside the load: nothing, the floor program, hangwatch, or a bpftrace script.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    proc::{self, Proc},
    sys,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Nothing attached.
    Bare,
    /// `hangwatch bench-floor`: one empty tp_btf/sched_switch program.
    Floor,
    /// `hangwatch run --output json`, defaults.
    Hangwatch,
    /// The same with the optional probes too (`--wakeup-probe --futex-probes`).
    HangwatchAll,
    /// `hangwatch bench-loop-probe`: the default probes with `sys_enter_loop` attached, as
    /// while the daemon watches a loop thread that may be stalled.
    LoopProbe,
    /// The off-CPU histogram script a user would write with bpftrace.
    Bpftrace,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::Floor => "floor",
            Self::Hangwatch => "hangwatch",
            Self::HangwatchAll => "hangwatch+opt",
            Self::LoopProbe => "hangwatch+sys_enter",
            Self::Bpftrace => "bpftrace",
        }
    }

    pub fn command(self, tools: &Tools) -> String {
        match self {
            Self::Bare => "(nothing attached)".to_owned(),
            Self::Floor => format!("{} bench-floor", tools.daemon.display()),
            Self::LoopProbe => format!("{} bench-loop-probe", tools.daemon.display()),
            Self::Hangwatch => format!(
                "{} {}",
                tools.daemon.display(),
                tools.daemon_run_args.join(" ")
            ),
            Self::HangwatchAll => format!(
                "{} {} {}",
                tools.daemon.display(),
                tools.daemon_run_args.join(" "),
                OPTIONAL_PROBES.join(" ")
            ),
            Self::Bpftrace => match &tools.bpftrace {
                Some(bt) => format!("bpftrace -e '{}'", bt.script),
                None => "bpftrace (not installed)".to_owned(),
            },
        }
    }
}

/// The flags that attach hangwatch's optional probes.
pub const OPTIONAL_PROBES: [&str; 2] = ["--wakeup-probe", "--futex-probes"];

/// The programs the variants run.
pub struct Tools {
    pub daemon: PathBuf,
    /// `run --output json`, defaults otherwise (see [`daemon_run_args`]).
    pub daemon_run_args: Vec<String>,
    pub bpftrace: Option<Bpftrace>,
    /// For the names of bpftrace's programs (optional: ids otherwise).
    pub bpftool: Option<PathBuf>,
}

/// `hangwatch run` with its defaults, JSON on stdout; where it serves HTTP, on a free port
/// rather than the default one (which another daemon on the machine may hold): same cost.
pub fn daemon_run_args(daemon: &Path) -> Vec<String> {
    let mut args: Vec<String> = ["run", "--output", "json"].map(String::from).to_vec();
    let help = Command::new(daemon)
        .args(["run", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if help.contains("--listen") {
        args.extend(["--listen", "127.0.0.1:0"].map(String::from));
    }
    // No API socket: the default path may be another daemon's on this machine.
    if help.contains("--api-socket") {
        args.extend(["--api-socket", "off"].map(String::from));
    }
    args
}

pub struct Bpftrace {
    pub path: PathBuf,
    pub version: String,
    pub script: String,
}

impl Bpftrace {
    /// bpftrace on PATH, with the script in the syntax its version takes (`args.` since 0.20,
    /// `args->` before).
    pub fn find() -> Option<Self> {
        let path = crate::find_program("bpftrace")?;
        let out = Command::new(&path).arg("--version").output().ok()?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let minor = version
            .trim_start_matches("bpftrace v")
            .split('.')
            .nth(1)
            .and_then(|m| m.parse::<u32>().ok())
            .unwrap_or(0);
        let major = version
            .trim_start_matches("bpftrace v")
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok())
            .unwrap_or(0);
        let args = if major > 0 || minor >= 20 {
            "args."
        } else {
            "args->"
        };
        // Off-CPU time per switch, as a histogram; END clears @start so that exiting does not
        // print one line per thread.
        let script = format!(
            "tracepoint:sched:sched_switch {{ @start[{args}prev_pid] = nsecs; \
             if (@start[{args}next_pid]) {{ @d = hist(nsecs - @start[{args}next_pid]); \
             delete(@start[{args}next_pid]); }} }} END {{ clear(@start); }}"
        );
        Some(Self {
            path,
            version,
            script,
        })
    }
}

/// The cost of one BPF program, as the kernel accounts it (with `kernel.bpf_stats_enabled`).
#[derive(Debug, Clone)]
pub struct ProgramCost {
    pub name: String,
    pub runs: u64,
    pub ns_per_run: f64,
}

/// A variant, attached and ready.
pub struct Running {
    pub variant: Variant,
    proc: Option<Proc>,
}

/// What a variant said when it stopped.
pub struct Stopped {
    pub lines: Vec<String>,
    /// How long it took to exit after SIGTERM.
    pub exit_time: Duration,
    /// It did not exit within the grace period and was killed.
    pub killed: bool,
}

/// How long a tool may take to attach (bpftrace compiles its script first).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a tool may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Starts `variant` and waits until its programs are attached.
pub fn start(variant: Variant, tools: &Tools) -> Result<Running> {
    let proc = match variant {
        Variant::Bare => None,
        Variant::Floor | Variant::Hangwatch | Variant::HangwatchAll | Variant::LoopProbe => {
            let mut cmd = Command::new(&tools.daemon);
            let ready = if variant == Variant::Floor {
                cmd.arg("bench-floor");
                "floor program attached"
            } else if variant == Variant::LoopProbe {
                cmd.arg("bench-loop-probe");
                "loop probe attached"
            } else {
                cmd.args(&tools.daemon_run_args);
                if variant == Variant::HangwatchAll {
                    cmd.args(OPTIONAL_PROBES);
                }
                "probes attached"
            };
            // No colours in the log lines we parse.
            cmd.env("NO_COLOR", "1");
            let mut p = Proc::spawn(variant.name(), &mut cmd, true)?;
            p.wait_for_line(ready, READY_TIMEOUT)?;
            Some(p)
        }
        Variant::Bpftrace => {
            let Some(bt) = &tools.bpftrace else {
                anyhow::bail!("bpftrace is not installed");
            };
            let mut cmd = Command::new(&bt.path);
            cmd.arg("-e").arg(&bt.script);
            let mut p = Proc::spawn("bpftrace", &mut cmd, false)?;
            // Printed just before it attaches (one tracepoint: quick); no later signal.
            p.wait_for_line("Attaching", READY_TIMEOUT)?;
            proc::sleep(Duration::from_millis(300))?;
            Some(p)
        }
    };
    // Let the start-up work (the first scan, a full task walk) pass.
    proc::sleep(Duration::from_millis(200))?;
    Ok(Running { variant, proc })
}

impl Running {
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// The programs of a process that reports nothing itself (bpftrace), read from
    /// /proc/PID/fdinfo while it still runs.
    pub fn held_program_costs(&self, bpftool: Option<&Path>) -> Vec<ProgramCost> {
        let Some(pid) = self.pid() else {
            return Vec::new();
        };
        sys::held_programs(pid)
            .into_iter()
            .filter(|p| p.run_cnt > 0)
            .map(|p| ProgramCost {
                name: bpftool
                    .and_then(|b| program_name(b, p.id))
                    .unwrap_or_else(|| format!("prog id {}", p.id)),
                runs: p.run_cnt,
                ns_per_run: p.run_time_ns as f64 / p.run_cnt as f64,
            })
            .collect()
    }

    /// SIGTERM; waits for it to exit (killing it after a grace period).
    pub fn stop(mut self) -> Result<Stopped> {
        let Some(p) = self.proc.take() else {
            return Ok(Stopped {
                lines: Vec::new(),
                exit_time: Duration::ZERO,
                killed: false,
            });
        };
        let start = Instant::now();
        let exited = p.terminate(STOP_GRACE)?;
        let exit_time = start.elapsed();
        proc::check_interrupted()?;
        if !exited.killed && !exited.status.success() {
            anyhow::bail!(
                "{} exited with {} when stopped; its output:\n{}",
                self.variant.name(),
                exited.status,
                exited.lines.join("\n")
            );
        }
        Ok(Stopped {
            lines: exited.lines,
            exit_time,
            killed: exited.killed,
        })
    }
}

impl Stopped {
    /// The "bpf program NAME: N runs, X ns/run" lines of hangwatch and its floor.
    pub fn program_costs(&self) -> Vec<ProgramCost> {
        self.lines
            .iter()
            .filter_map(|l| {
                let rest = &l[l.find("bpf program ")? + "bpf program ".len()..];
                let (name, rest) = rest.split_once(": ")?;
                let (runs, rest) = rest.split_once(" runs, ")?;
                let ns = rest.trim().strip_suffix("ns/run")?.trim();
                Some(ProgramCost {
                    name: name.to_owned(),
                    runs: runs.trim().parse().ok()?,
                    ns_per_run: ns.parse().ok()?,
                })
            })
            .filter(|c| c.runs > 0)
            .collect()
    }

    /// From "detached after N scans (mean 1.2ms)": the scan count and mean duration.
    pub fn scans(&self) -> Option<(u64, Duration)> {
        self.lines.iter().find_map(|l| {
            let rest = &l[l.find("detached after ")? + "detached after ".len()..];
            let (n, rest) = rest.split_once(" scans (mean ")?;
            let mean = rest.split(')').next()?;
            Some((n.trim().parse().ok()?, parse_debug_duration(mean)?))
        })
    }

    /// From "... and N full walks (mean 9.9ms, every 5s)", where the daemon logs it.
    pub fn full_walks(&self) -> Option<(u64, Duration)> {
        self.lines.iter().find_map(|l| {
            let (before, after) = l.split_once(" full walks (mean ")?;
            let n = before.rsplit(' ').next()?;
            let mean = after.split([',', ')']).next()?;
            Some((n.trim().parse().ok()?, parse_debug_duration(mean)?))
        })
    }

    /// The "detached after ..." line, as is.
    pub fn summary(&self) -> Option<&str> {
        self.lines
            .iter()
            .find(|l| l.contains("detached after "))
            .map(String::as_str)
    }
}

/// A `Duration`'s `Debug` form: "1.5s", "3.29ms", "52.1µs", "800ns".
fn parse_debug_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let ns_per_unit = match unit {
        "s" => 1e9,
        "ms" => 1e6,
        "µs" | "us" => 1e3,
        "ns" => 1.0,
        _ => return None,
    };
    Some(Duration::from_nanos((number * ns_per_unit).round() as u64))
}

/// A program's name from `bpftool prog show id ID`.
fn program_name(bpftool: &Path, id: u64) -> Option<String> {
    let out = Command::new(bpftool)
        .args(["prog", "show", "id", &id.to_string(), "--json"])
        .output()
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    value.get("name")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_daemons_lines() {
        let stopped = Stopped {
            lines: vec![
                "2026-11-25T11:53:06Z  INFO detached after 4 scans (mean 52.095µs) and 1 full \
                 walks (mean 181.469µs, every 5s), 0 candidate threads at the end"
                    .to_owned(),
                "2026-11-25T11:53:06Z  INFO bpf program sys_exit_futex: 0 runs, 0.0 ns/run"
                    .to_owned(),
                "2026-11-25T11:53:06Z  INFO bpf program sched_switch: 40287 runs, 126.1 ns/run"
                    .to_owned(),
            ],
            exit_time: Duration::ZERO,
            killed: false,
        };
        let costs = stopped.program_costs();
        assert_eq!(costs.len(), 1);
        assert_eq!(costs[0].name, "sched_switch");
        assert_eq!(costs[0].runs, 40287);
        assert!((costs[0].ns_per_run - 126.1).abs() < 1e-9);
        let (scans, mean) = stopped.scans().expect("parses");
        assert_eq!(scans, 4);
        assert_eq!(mean, Duration::from_nanos(52_095));
        let (walks, mean) = stopped.full_walks().expect("parses");
        assert_eq!(walks, 1);
        assert_eq!(mean, Duration::from_nanos(181_469));
    }

    #[test]
    fn parses_durations() {
        assert_eq!(
            parse_debug_duration("3.291543ms"),
            Some(Duration::from_nanos(3_291_543))
        );
        assert_eq!(
            parse_debug_duration("1.5s"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_debug_duration("800ns"),
            Some(Duration::from_nanos(800))
        );
        assert_eq!(parse_debug_duration("x"), None);
    }
}
