//! `hangwatch watch`: every event as it happens, until interrupted.
use std::{
    io::{BufRead as _, Write as _},
    process::ExitCode,
};

use clap::Args;
use serde_json::Value;

use super::{
    client::{Client, ClientArgs},
    table,
};

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn run(args: &WatchArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.client)?;
    let stream = client.stream("/api/v1/watch")?;
    let stdout = std::io::stdout();
    if !args.client.json {
        eprintln!(
            "watching {} for hang events (Ctrl-C to stop)",
            args.client.endpoint
        );
    }
    for line in stream.lines() {
        let line = match line {
            Ok(line) => line,
            // A daemon that stops ends the stream without its last chunk.
            Err(err) => anyhow::bail!("the daemon closed the event stream ({err}; stopped?)"),
        };
        if line.trim().is_empty() {
            continue; // keep-alive
        }
        let mut out = stdout.lock();
        let written = if args.client.json {
            writeln!(out, "{line}")
        } else {
            match serde_json::from_str::<Value>(&line) {
                Ok(e) => writeln!(out, "{}", one_line(&e)),
                Err(_) => continue,
            }
        };
        // stdout closed (e.g. piped into `head`): done.
        if written.and_then(|()| out.flush()).is_err() {
            return Ok(ExitCode::SUCCESS);
        }
    }
    anyhow::bail!("the daemon closed the event stream (stopped?)")
}

/// `HANG off_cpu abba[42] tid 43 'worker' 1.1s  worker_b at abba.c:31  (off_cpu-43-...)`
pub fn one_line(e: &Value) -> String {
    let head = match e["event"].as_str() {
        Some("hang") => "HANG    ",
        Some("update") => "STILL   ",
        Some("resolved") => "RESOLVED",
        _ => "EVENT   ",
    };
    let tail = match e["event"].as_str() {
        Some("resolved") => format!("ended: {}", table::text(e, "resolution")),
        _ => table::blocked_where(e),
    };
    format!(
        "{head} {kind} {process} tid {tid} '{thread}' {lasted}  {tail}  ({id})",
        kind = table::text(e, "kind"),
        process = table::process(e),
        tid = e["tid"],
        thread = table::text(e, "thread_name"),
        lasted = table::lasted(e),
        id = table::text(e, "id"),
    )
}
