//! `hangwatch list`: the threads hung right now, longest first.
use std::process::ExitCode;

use clap::Args;

use super::{
    EXIT_HUNG,
    client::{Client, ClientArgs, encode, print_json},
    table,
};

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub client: ClientArgs,

    /// Only hangs of this kind (d_state, off_cpu, ...)
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,

    /// Only hangs of this process
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,

    /// Exit with status 3 when any thread is hung (for scripts and CI; 0 when none)
    #[arg(long)]
    pub exit_code: bool,
}

pub fn run(args: &ListArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.client)?;
    let mut query = Vec::new();
    if let Some(kind) = &args.kind {
        query.push(format!("kind={}", encode(kind)));
    }
    if let Some(pid) = args.pid {
        query.push(format!("pid={pid}"));
    }
    let path = if query.is_empty() {
        "/api/v1/hangs".to_owned()
    } else {
        format!("/api/v1/hangs?{}", query.join("&"))
    };
    let answer = client.get(&path)?;
    let hangs = answer["hangs"].as_array().cloned().unwrap_or_default();
    if args.client.json {
        print_json(&answer);
    } else if hangs.is_empty() {
        println!("no hung threads");
    } else {
        let mut t = table::new(&["ID", "KIND", "PROCESS", "TID", "THREAD", "FOR", "WHERE"]);
        for e in &hangs {
            t.add_row([
                table::text(e, "id"),
                table::text(e, "kind"),
                table::process(e),
                table::text(e, "tid"),
                table::text(e, "thread_name"),
                table::lasted(e),
                table::blocked_where(e),
            ]);
        }
        table::print(&t);
    }
    Ok(if args.exit_code && !hangs.is_empty() {
        ExitCode::from(EXIT_HUNG)
    } else {
        ExitCode::SUCCESS
    })
}
