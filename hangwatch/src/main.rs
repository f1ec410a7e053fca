//! hangwatch: parse the command line, set up logging, dispatch.
mod api;
mod cli;
mod clock;
mod config;
mod daemon;
mod detect;
mod enrich;
mod episode;
mod kind;
mod logging;
mod meta;
mod metrics;
mod probe;
mod sink;
mod stack;
mod state;

use std::{process::ExitCode, time::Instant};

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // The daemon sets up its log once its configuration is read (the format may come from
    // its file); the other commands log as text.
    match cli.command {
        cli::Command::Run(_) => {}
        // The daemon's helper logs like the daemon, into the same stderr.
        cli::Command::Unwinder => {
            logging::init(logging::format_of_helper(), logging::Writer::Queued);
        }
        _ => logging::init(logging::LogFormat::Text, logging::Writer::Direct),
    }
    let result = match cli.command {
        cli::Command::Run(args) => return run_daemon(*args),
        cli::Command::CheckConfig(args) => return cli::check_config::run(&args),
        cli::Command::Completions(args) => cli::completions::run(&args),
        cli::Command::GenerateMan(args) => cli::completions::man(&args),
        cli::Command::BenchFloor => cli::bench_floor::run(),
        cli::Command::BenchLoopProbe => cli::bench_loop_probe::run(),
        cli::Command::BenchStack(args) => cli::bench_stack::run(args),
        cli::Command::SampleStack(args) => cli::sample_stack::run(args),
        cli::Command::Unwinder => {
            let served = stack::unwinder::serve();
            logging::finish(Instant::now() + logging::FLUSH_AT_EXIT);
            served
        }
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

/// `hangwatch run`: the configuration is read before logging starts, since the log format
/// may come from its file.
fn run_daemon(args: cli::run::RunArgs) -> ExitCode {
    let flag = args.log_format.unwrap_or_default();
    let config = match args.into_config() {
        Ok(config) => config,
        Err(err) => {
            logging::fatal(flag, &one_line(&err.into()));
            logging::finish(Instant::now() + logging::FLUSH_AT_EXIT);
            return ExitCode::FAILURE;
        }
    };
    let format = config.log_format;
    logging::init(format, logging::Writer::Queued);
    let code = match daemon::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            logging::fatal(format, &one_line(&err));
            ExitCode::FAILURE
        }
    };
    logging::finish(Instant::now() + logging::FLUSH_AT_EXIT);
    code
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
