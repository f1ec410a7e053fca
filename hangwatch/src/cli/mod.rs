//! The command line: one binary, one subcommand per file. `run` is the daemon; the others
//! are clients of its HTTP API (`client.rs`), printing tables (`table.rs`) or `--json`.
pub mod bench_floor;
pub mod bench_loop_probe;
pub mod bench_stack;
pub mod check_config;
mod client;
mod cluster;
pub mod completions;
mod history;
mod list;
pub mod run;
pub mod sample_stack;
mod show;
mod status;
mod table;
mod threads;
mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `list --exit-code`: some thread is hung. (1 is an error, 2 a usage error.)
pub const EXIT_HUNG: u8 = 3;

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
    Run(Box<run::RunArgs>),
    /// Check a config file: print the effective settings and rules, or each problem as
    /// FILE:LINE:COL: reason (and exit 1).
    CheckConfig(check_config::CheckConfigArgs),
    #[command(flatten)]
    Client(ClientCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions(completions::CompletionsArgs),
    /// Write the man pages into DIR (`cargo xtask man`).
    #[command(hide = true)]
    GenerateMan(completions::GenerateManArgs),
    /// Attach only an empty sched_switch program (the benchmark's floor) until SIGTERM.
    #[command(hide = true)]
    BenchFloor,
    /// Attach the default probes and keep sys_enter_loop attached until SIGTERM (benchmark).
    #[command(hide = true)]
    BenchLoopProbe,
    /// Measure the cost of one user stack, cold and warm, on a blocked thread of PID.
    #[command(hide = true)]
    BenchStack(bench_stack::BenchStackArgs),
    /// Print the stacks of a thread running on a CPU, from one perf sample (needs root).
    #[command(hide = true)]
    SampleStack(sample_stack::SampleStackArgs),
    /// The daemon's unwinder process: answers its requests on stdin (see
    /// `stack::unwinder`); not for people.
    #[command(hide = true)]
    Unwinder,
}

/// The subcommands that ask a running daemon, through its HTTP API.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// The threads hung right now.
    List(list::ListArgs),
    /// One episode's whole report, with its user and kernel stacks.
    Show(show::ShowArgs),
    /// Recently ended episodes.
    History(history::HistoryArgs),
    /// Print events as they happen, until interrupted.
    Watch(watch::WatchArgs),
    /// What every thread of a process waits on right now (a live thread dump).
    Threads(threads::ThreadsArgs),
    /// The daemon's own state: probes, scans, counters.
    Status(status::StatusArgs),
}

impl ClientCommand {
    pub fn run(&self) -> anyhow::Result<ExitCode> {
        match self {
            Self::List(args) => list::run(args),
            Self::Show(args) => show::run(args),
            Self::History(args) => history::run(args),
            Self::Watch(args) => watch::run(args),
            Self::Threads(args) => threads::run(args),
            Self::Status(args) => status::run(args),
        }
    }
}
