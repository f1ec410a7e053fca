//! `hangwatch history`: recently ended episodes, most recent first.
use std::process::ExitCode;

use clap::Args;

use super::{
    client::{Client, ClientArgs, print_json},
    table,
};

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// How many episodes to show, most recent first (the daemon keeps the last 256)
    /// [default: 50]
    #[arg(
        long,
        short = 'n',
        value_name = "N",
        default_value_t = 50,
        hide_default_value = true
    )]
    pub limit: u32,

    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn run(args: &HistoryArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.client)?;
    let answer = client.get(&format!("/api/v1/history?limit={}", args.limit))?;
    if args.client.json {
        print_json(&answer);
        return Ok(ExitCode::SUCCESS);
    }
    let episodes = answer["history"].as_array().cloned().unwrap_or_default();
    if episodes.is_empty() {
        println!("no ended episodes yet");
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = table::new(&[
        "ID", "KIND", "PROCESS", "TID", "STARTED", "LASTED", "ENDED", "WHERE",
    ]);
    for e in &episodes {
        t.add_row([
            table::text(e, "id"),
            table::text(e, "kind"),
            table::process(e),
            table::text(e, "tid"),
            table::text(e, "started_at"),
            table::lasted(e),
            table::text(e, "resolution"),
            table::blocked_where(e),
        ]);
    }
    table::print(&t);
    Ok(ExitCode::SUCCESS)
}
