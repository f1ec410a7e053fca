//! hangwatch: parse the command line, set up logging, dispatch.
mod api;
mod cli;
mod clock;
mod config;
mod daemon;
mod detect;
mod enrich;
mod episode;
mod meta;
mod metrics;
mod probe;
mod sink;
mod stack;
mod state;

use std::{io::IsTerminal, process::ExitCode};

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            // kube's client logs every non-2xx answer at ERROR (a pod proxy's 503, a watch's
            // expiry), which hangwatch reports itself in context.
            EnvFilter::try_from_env("HANGWATCH_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,kube_client=off")),
        )
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let result = match cli.command {
        cli::Command::Run(args) => args
            .into_config()
            .map_err(anyhow::Error::from)
            .and_then(daemon::run),
        cli::Command::CheckConfig(args) => return cli::check_config::run(&args),
        cli::Command::BenchFloor => cli::bench_floor::run(),
        cli::Command::BenchLoopProbe => cli::bench_loop_probe::run(),
        cli::Command::BenchStack(args) => cli::bench_stack::run(args),
        cli::Command::SampleStack(args) => cli::sample_stack::run(args),
        cli::Command::Client(command) => {
            return command.run().unwrap_or_else(|err| {
                eprintln!("hangwatch: error: {}", one_line(&err));
                ExitCode::FAILURE
            });
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hangwatch: error: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, without the repetitions of errors that also
/// print their source in their own message.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}
