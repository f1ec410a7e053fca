//! `hangwatch threads PID`: a live thread dump: what every thread of a process waits on
//! right now and for how long; `--stacks` adds each thread's user and kernel stacks.
use std::process::ExitCode;

use clap::Args;
use serde_json::Value;

use super::{
    client::{Client, ClientArgs, print_json},
    cluster::{self, NodeArgs},
    show, table,
};

#[derive(Debug, Args)]
pub struct ThreadsArgs {
    /// The process (or any of its threads)
    pub pid: u32,

    /// Capture and symbolize every thread's stacks (costs a task walk and an unwind per
    /// thread)
    #[arg(long)]
    pub stacks: bool,

    #[command(flatten)]
    pub client: ClientArgs,

    #[command(flatten)]
    pub cluster: NodeArgs,
}

pub fn run(args: &ThreadsArgs) -> anyhow::Result<ExitCode> {
    let stacks = if args.stacks { "?stacks=true" } else { "" };
    let path = format!("/api/v1/threads/{}{stacks}", args.pid);
    let dump = match &args.cluster.node {
        Some(node) => cluster::get_one(&args.cluster.kube, node, &path)?,
        None => Client::new(&args.client)?.get(&path)?,
    };
    if args.client.json {
        print_json(&dump);
        return Ok(ExitCode::SUCCESS);
    }
    let threads = dump["threads"].as_array().cloned().unwrap_or_default();
    println!(
        "{comm}[{pid}] {exe}: {n} thread{s}",
        comm = table::text(&dump, "comm"),
        pid = dump["pid"],
        exe = table::text(&dump, "exe"),
        n = threads.len(),
        s = if threads.len() == 1 { "" } else { "s" },
    );
    for key in ["state_error", "stacks_error"] {
        if let Some(note) = dump[key].as_str() {
            println!("note: {note}");
        }
    }
    let mut t = table::new(&["TID", "NAME", "STATE", "OFF-CPU", "WAIT", "HUNG"]);
    for th in &threads {
        t.add_row([
            table::text(th, "tid"),
            table::text(th, "name"),
            format!(
                "{} {}",
                table::text(th, "state"),
                table::text(th, "state_description")
            ),
            off_cpu(th),
            if th["wait"].is_null() {
                String::new()
            } else {
                table::wait(&th["wait"])
            },
            table::text(th, "hang_id"),
        ]);
    }
    table::print(&t);
    if args.stacks {
        for th in &threads {
            let mut out = String::new();
            show::signal_handler(&mut out, &th["signal_handler"]);
            show::stack(
                &mut out,
                "user stack",
                &th["user_stack"],
                &th["user_stack_error"],
            );
            show::stack(
                &mut out,
                "kernel stack",
                &th["kernel_stack"],
                &th["kernel_stack_error"],
            );
            println!(
                "\ntid {} '{}':\n{}",
                th["tid"],
                table::text(th, "name"),
                out.trim_end()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `on CPU`, `12.3s`, `>=12.3s` or `?` (blocked since before hangwatch started).
fn off_cpu(th: &Value) -> String {
    if th["on_cpu"].as_bool() == Some(true) {
        return "on CPU".into();
    }
    let before = th["blocked_since_before_start"].as_bool() == Some(true);
    match th["off_cpu_ms"].as_u64() {
        Some(ms) if before => format!(">={}", table::duration_ms(ms)),
        Some(ms) => table::duration_ms(ms),
        None if before => "since before start".into(),
        None => String::new(),
    }
}
