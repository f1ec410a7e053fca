//! The loads: `perf bench sched pipe` (ping-pong, both tasks on CPU 0) and
//! `perf bench sched messaging` (many threads on every CPU).

use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};

use super::proc::Proc;

/// `perf bench sched messaging`: groups of 20 senders and 20 receivers (threads), each sender
/// sending `loops` messages to each receiver of its group.
pub const MESSAGING_GROUPS: u64 = 10;
const MESSAGING_FDS: u64 = 20;

/// The SCHED_FIFO priority of the ping-pong with `--realtime`: above every normal task, so
/// that other work on CPU 0 (a shared machine's compiles) cannot preempt it, below the
/// kernel's own real-time threads (50 is where threaded interrupts run).
pub const REALTIME_PRIORITY: u32 = 40;

/// How many pipe round trips and messaging loops make one run of about the wanted length,
/// and how the ping-pong runs.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub pipe_loops: u64,
    pub messaging_loops: u64,
    /// Run the ping-pong as SCHED_FIFO at [`REALTIME_PRIORITY`] (`--realtime`).
    pub realtime: bool,
}

impl Sizes {
    pub fn pipe_command(&self) -> String {
        format!(
            "{}taskset -c 0 perf bench sched pipe -l {}",
            if self.realtime {
                format!("chrt -f {REALTIME_PRIORITY} ")
            } else {
                String::new()
            },
            self.pipe_loops
        )
    }

    /// One ping-pong run of `pipe_loops`.
    pub fn pipe(&self) -> Result<f64> {
        pipe(self.pipe_loops, self.realtime)
    }

    pub fn messaging_command(&self) -> String {
        format!(
            "perf bench sched messaging -t -g {MESSAGING_GROUPS} -l {}",
            self.messaging_loops
        )
    }
}

/// Both tasks of the ping-pong pinned to CPU 0: every operation is two context switches on
/// the same CPU, the worst case for a sched_switch probe. Returns operations per second.
fn pipe(loops: u64, realtime: bool) -> Result<f64> {
    let mut cmd = if realtime {
        let mut cmd = Command::new("chrt");
        cmd.args(["-f", &REALTIME_PRIORITY.to_string(), "taskset"]);
        cmd
    } else {
        Command::new("taskset")
    };
    cmd.args(["-c", "0", "perf", "bench", "sched", "pipe", "-l"])
        .arg(loops.to_string());
    let lines = run(&mut cmd, "perf bench sched pipe")?;
    lines
        .iter()
        .find_map(|l| l.trim().strip_suffix("ops/sec")?.trim().parse::<f64>().ok())
        .with_context(|| format!("no ops/sec in perf's output:\n{}", lines.join("\n")))
}

/// Messages per second of `perf bench sched messaging` with threads.
pub fn messaging(loops: u64) -> Result<f64> {
    let mut cmd = Command::new("perf");
    cmd.args(["bench", "sched", "messaging", "-t", "-g"])
        .arg(MESSAGING_GROUPS.to_string())
        .arg("-l")
        .arg(loops.to_string());
    let lines = run(&mut cmd, "perf bench sched messaging")?;
    let secs = lines
        .iter()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Total time:")?
                .trim()
                .strip_suffix("[sec]")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .with_context(|| format!("no total time in perf's output:\n{}", lines.join("\n")))?;
    if secs <= 0.0 {
        bail!("perf bench sched messaging took {secs} s");
    }
    let messages = MESSAGING_GROUPS * MESSAGING_FDS * MESSAGING_FDS * loops;
    Ok(messages as f64 / secs)
}

/// Sizes the loads so that one run takes about `target` on this machine, bare.
pub fn calibrate(target: Duration, realtime: bool) -> Result<Sizes> {
    const PIPE_PROBE: u64 = 20_000;
    const MESSAGING_PROBE: u64 = 20;
    // The first run warms up (page cache, CPU frequency); the faster of two counts.
    let ops = pipe(PIPE_PROBE, realtime)?.max(pipe(PIPE_PROBE, realtime)?);
    let pipe_loops = round_to((ops * target.as_secs_f64()) as u64, 1000).max(PIPE_PROBE);
    let per_loop = MESSAGING_GROUPS * MESSAGING_FDS * MESSAGING_FDS;
    let msgs = messaging(MESSAGING_PROBE)?.max(messaging(MESSAGING_PROBE)?);
    let messaging_loops =
        round_to((msgs * target.as_secs_f64()) as u64 / per_loop, 10).clamp(MESSAGING_PROBE, 5000);
    Ok(Sizes {
        pipe_loops,
        messaging_loops,
        realtime,
    })
}

fn round_to(n: u64, step: u64) -> u64 {
    (n + step / 2) / step * step
}

/// Runs a perf benchmark to completion (at most a minute), returning its output lines.
fn run(cmd: &mut Command, name: &str) -> Result<Vec<String>> {
    let exited = Proc::spawn(name, cmd, false)?.wait(Duration::from_secs(60))?;
    if !exited.status.success() {
        bail!(
            "{name} failed ({}):\n{}",
            exited.status,
            exited.lines.join("\n")
        );
    }
    Ok(exited.lines)
}
