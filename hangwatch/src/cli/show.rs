//! `hangwatch show ID`: one episode's whole report, both stacks included.
use std::{fmt::Write as _, process::ExitCode};

use clap::Args;
use serde_json::Value;

use super::{
    client::{Client, ClientArgs, encode, print_json},
    cluster::{self, NodeArgs},
    table,
};

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The episode id, as `list` and `history` show it (e.g. off_cpu-4242-1a2b3c)
    pub id: String,

    #[command(flatten)]
    pub client: ClientArgs,

    #[command(flatten)]
    pub cluster: NodeArgs,
}

pub fn run(args: &ShowArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/api/v1/hangs/{}", encode(&args.id));
    let e = match &args.cluster.node {
        Some(node) => cluster::get_one(&args.cluster.kube, node, &path)?,
        None => Client::new(&args.client)?.get(&path)?,
    };
    if args.client.json {
        print_json(&e);
    } else {
        print!("{}", render(&e));
    }
    Ok(ExitCode::SUCCESS)
}

/// The report as a person reads it.
pub fn render(e: &Value) -> String {
    let mut out = String::new();
    let state = match e["event"].as_str() {
        Some("resolved") => format!("ENDED ({})", e["resolution"].as_str().unwrap_or("resolved")),
        _ => "HUNG".to_owned(),
    };
    let _ = writeln!(
        out,
        "{state} {kind}: {process} thread '{thread}' (tid {tid}) blocked {lasted} (threshold {threshold})",
        kind = table::text(e, "kind"),
        process = table::process(e),
        thread = table::text(e, "thread_name"),
        tid = e["tid"],
        lasted = table::lasted(e),
        threshold = table::duration_ms(e["threshold_ms"].as_u64().unwrap_or(0)),
    );
    let field = |out: &mut String, name: &str, value: String| {
        if !value.is_empty() {
            let _ = writeln!(out, "  {name:<9}{value}");
        }
    };
    field(&mut out, "id", table::text(e, "id"));
    field(&mut out, "since", table::text(e, "started_at"));
    field(&mut out, "exe", table::text(e, "exe"));
    let cmdline: Vec<&str> = e["cmdline"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    field(&mut out, "cmdline", cmdline.join(" "));
    field(&mut out, "cgroup", table::text(e, "cgroup"));
    for key in ["namespace", "pod", "container", "container_id", "pod_uid"] {
        field(&mut out, key, table::text(e, key));
    }
    let w = &e["wait"];
    let mut wait = format!(
        "{} ({}) in {}",
        table::text(w, "state"),
        table::text(w, "state_description"),
        table::wait(w)
    );
    if let Some(address) = w["futex"]["address"].as_str() {
        let _ = write!(wait, " on {address}");
    }
    field(&mut out, "wait", wait);
    field(&mut out, "where", table::blocked_where(e));
    signal_handler(&mut out, &e["signal_handler"]);
    stack(
        &mut out,
        "user stack",
        &e["user_stack"],
        &e["user_stack_error"],
    );
    stack(
        &mut out,
        "kernel stack",
        &e["kernel_stack"],
        &e["kernel_stack_error"],
    );
    out
}

/// "  in a handler of SIGTERM sent by pid 4242 ..." when the thread is in one.
pub fn signal_handler(out: &mut String, handler: &Value) {
    if let Ok(handler) =
        serde_json::from_value::<crate::stack::user::signal_frame::SignalHandler>(handler.clone())
    {
        let _ = writeln!(out, "  {handler}");
    }
}

/// A stack, one frame per line, innermost first; application frames marked with `>`.
pub fn stack(out: &mut String, title: &str, frames: &Value, error: &Value) {
    let frames = frames.as_array().map(Vec::as_slice).unwrap_or_default();
    if frames.is_empty() {
        if let Some(error) = error.as_str() {
            let _ = writeln!(out, "  {title}: unavailable: {error}");
        }
        return;
    }
    let _ = writeln!(out, "  {title}:");
    for (i, f) in frames.iter().enumerate() {
        let mark = if f["tag"] == "application" { '>' } else { ' ' };
        let inlined = if f["inlined"].as_bool() == Some(true) {
            " (inlined)"
        } else {
            ""
        };
        let name = f["symbol"].as_str().unwrap_or("??");
        let offset = f["offset"]
            .as_u64()
            .filter(|_| f["file"].is_null())
            .map(|o| format!("+{o:#x}"))
            .unwrap_or_default();
        let place = match (f["file"].as_str(), f["line"].as_u64()) {
            (Some(file), Some(line)) => format!(" at {file}:{line}"),
            (Some(file), None) => format!(" at {file}"),
            _ => f["module"]
                .as_str()
                .filter(|m| *m != "kernel")
                .map(|m| format!(" in {}", table::short_module(m)))
                .unwrap_or_default(),
        };
        let _ = writeln!(out, "  {mark} #{i:<2} {name}{offset}{place}{inlined}");
    }
    if let Some(error) = error.as_str() {
        let _ = writeln!(out, "    ({error})");
    }
}
