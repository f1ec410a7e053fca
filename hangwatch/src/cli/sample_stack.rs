//! `hangwatch sample-stack --pid P --tid T` (hidden): the stacks of a thread running on a
//! CPU, from one perf sample (`stack::on_cpu`), as one JSON object: what the `on_cpu` and
//! `loop_stall` reports will carry, and how long the thread had the perf event attached.
//! The kernel tests run it against programs spinning in known functions.
use std::time::Duration;

use anyhow::bail;
use clap::Args;

use crate::stack::{StackTaker, on_cpu};

#[derive(Debug, Args)]
pub struct SampleStackArgs {
    /// Process of the thread.
    #[arg(long)]
    pub pid: u32,
    /// The thread (default: the process's main thread).
    #[arg(long)]
    pub tid: Option<u32>,
    /// How long to wait for the thread to run one sample period on a CPU [default: 50ms].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Samples to take (the stacks printed are the first one's; `open_us`, perf_event_open
    /// to close, and `enabled_us`, enable to close, have them all).
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
}

pub fn run(args: SampleStackArgs) -> anyhow::Result<()> {
    let tid = args.tid.unwrap_or(args.pid);
    let timeout = args.timeout.unwrap_or(on_cpu::SAMPLE_TIMEOUT);
    let mut taker = StackTaker::default();
    let mut first = None;
    let mut open_us = Vec::new();
    let mut enabled_us = Vec::new();
    for _ in 0..args.repeat.max(1) {
        let sample = match on_cpu::sample_running(tid, timeout) {
            Ok(sample) => sample,
            Err(err) => {
                let report = serde_json::json!({
                    "pid": args.pid,
                    "tid": tid,
                    "outcome": err.kind(),
                    "error": err.to_string(),
                    "open_us": open_us,
                });
                println!("{report}");
                bail!(err);
            }
        };
        open_us.push(sample.open_for.as_secs_f64() * 1e6);
        enabled_us.push(sample.enabled_for.as_secs_f64() * 1e6);
        if first.is_none() {
            first = Some(sample);
        }
    }
    let Some(sample) = first else {
        unreachable!("at least one sample was taken or the loop returned")
    };
    let (sample_tid, time_ns, in_kernel) = (sample.tid, sample.time_ns, sample.in_kernel);
    let stack_bytes = sample.stack.bytes.len();
    let stacks = taker.take_sampled(args.pid, sample);
    let report = serde_json::json!({
        "pid": args.pid,
        "tid": tid,
        "outcome": "sampled",
        "open_us": open_us,
        "enabled_us": enabled_us,
        "sample_tid": sample_tid,
        "sample_time_ns": time_ns,
        "in_kernel": in_kernel,
        "sample_stack_bytes": stack_bytes,
        "stacks": stacks,
    });
    println!("{report}");
    Ok(())
}
