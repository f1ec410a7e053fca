//! `hangwatch bench-stack --pid P` (hidden): what one user stack costs to unwind and
//! symbolize, cold (first time for those binaries: unwind tables and debug info read and
//! parsed) and warm (from the caches), on a real blocked thread. Prints one JSON object;
//! `cargo xtask bench` runs it.
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
    let mut warm: Vec<Duration> = (0..args.repeat.max(1))
        .map(|_| {
            let started = Instant::now();
            let _ = stacks.capture(args.pid, tid, regs);
            started.elapsed()
        })
        .collect();
    warm.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let report = serde_json::json!({
        "pid": args.pid,
        "tid": tid,
        "frames": cold.frames.len(),
        "error": cold.error,
        "cold_us": us(cold_time),
        "warm_us_median": us(warm[warm.len() / 2]),
        "warm_us_p99": us(warm[(warm.len() * 99 / 100).min(warm.len() - 1)]),
        "warm_repetitions": warm.len(),
    });
    println!("{report}");
    Ok(())
}
