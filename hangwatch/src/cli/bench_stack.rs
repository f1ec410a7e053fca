//! `hangwatch bench-stack --pid P` (hidden): what one user stack costs to unwind and
//! symbolize, cold (first time for those binaries: unwind tables and debug info read and
//! parsed) and warm (from the caches), on a real blocked thread. For a CPython thread the
//! share of the Python frames (interpreter found, frames read and merged) is given apart.
//! Prints one JSON object; `cargo xtask bench` runs it.
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{
    probe::{ProbeSelection, Probes, preflight},
    stack::{UserRegisters, UserStacks},
};

#[derive(Debug, Args)]
pub struct BenchStackArgs {
    /// Process whose thread to unwind.
    #[arg(long)]
    pub pid: u32,
    /// The thread (default: the process's main thread).
    #[arg(long)]
    pub tid: Option<u32>,
    /// Warm repetitions.
    #[arg(long, default_value_t = 200)]
    pub repeat: u32,
}

pub fn run(args: BenchStackArgs) -> anyhow::Result<()> {
    preflight::check()?;
    let tid = args.tid.unwrap_or(args.pid);
    let mut probes = Probes::load(ProbeSelection::default())?;
    let record = probes
        .dump_stacks(&[tid])?
        .into_iter()
        .find(|r| r.tid == tid)
        .with_context(|| format!("thread {tid} not found"))?;
    if record.user_ip == 0 {
        bail!("thread {tid} has no user registers (a kernel thread, or running)");
    }
    let regs = UserRegisters {
        ip: record.user_ip,
        sp: record.user_sp,
        fp: record.user_fp,
    };
    let mut stacks = UserStacks::new();
    let started = Instant::now();
    let cold = stacks.capture(args.pid, tid, regs);
    let cold_time = started.elapsed();
    let python_cold = stacks.python.spent;
    let (mut warm, mut python_warm): (Vec<Duration>, Vec<Duration>) = (0..args.repeat.max(1))
        .map(|_| {
            let python_before = stacks.python.spent;
            let started = Instant::now();
            let _ = stacks.capture(args.pid, tid, regs);
            (started.elapsed(), stacks.python.spent - python_before)
        })
        .unzip();
    warm.sort_unstable();
    python_warm.sort_unstable();
    let median = |d: &[Duration]| d[d.len() / 2];
    let p99 = |d: &[Duration]| d[(d.len() * 99 / 100).min(d.len() - 1)];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let report = serde_json::json!({
        "pid": args.pid,
        "tid": tid,
        "frames": cold.frames.len(),
        "error": cold.error,
        "cold_us": us(cold_time),
        "warm_us_median": us(median(&warm)),
        "warm_us_p99": us(p99(&warm)),
        "warm_repetitions": warm.len(),
        "python_frames": cold.frames.iter().filter(|f| f.python).count(),
        "python_cold_us": us(python_cold),
        "python_warm_us_median": us(median(&python_warm)),
        "python_warm_us_p99": us(p99(&python_warm)),
    });
    println!("{report}");
    Ok(())
}
