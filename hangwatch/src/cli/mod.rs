//! The command line: one binary, one subcommand per file.
pub mod bench_floor;
pub mod run;

use clap::{Parser, Subcommand};

/// System-wide hang detector for Linux: watches every thread through eBPF and reports
/// the ones that stop making progress, with their stacks.
#[derive(Debug, Parser)]
#[command(name = "hangwatch", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach the probes and report hangs until SIGTERM or SIGINT (needs root).
    Run(run::RunArgs),
    /// Attach only an empty sched_switch program (the benchmark's floor) until SIGTERM.
    #[command(hide = true)]
    BenchFloor,
}
