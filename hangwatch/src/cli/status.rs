//! `hangwatch status`: the daemon itself: version, probes, scan figures, counters.
use std::process::ExitCode;

use clap::Args;
use serde_json::Value;

use super::{
    client::{Client, ClientArgs, print_json},
    table,
};

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn run(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.client)?;
    let s = client.get("/api/v1/status")?;
    if args.client.json {
        print_json(&s);
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = table::new(&[]);
    let probes = s["probes"].as_array().cloned().unwrap_or_default();
    let asked: Vec<&serde_json::Value> = probes.iter().filter(|p| p["enabled"] == true).collect();
    let attached = asked.iter().filter(|p| p["attached"] == true).count();
    let optional = probes.len() - asked.len();
    let mut rows: Vec<(String, String)> = vec![
        (
            "version".into(),
            format!("{} (pid {})", table::text(&s, "version"), s["pid"]),
        ),
        (
            "up since".into(),
            format!(
                "{} ({})",
                table::text(&s, "started_at"),
                table::duration_ms(s["uptime_s"].as_u64().unwrap_or(0) * 1000)
            ),
        ),
        (
            "ready".into(),
            if s["ready"] == true {
                "yes"
            } else {
                "no (loading probes)"
            }
            .into(),
        ),
        (
            "probes".into(),
            format!(
                "{attached} of {} attached ({optional} optional not asked for)",
                asked.len()
            ),
        ),
    ];
    for p in asked.iter().filter(|p| p["attached"] != true) {
        rows.push((
            format!("  {}", table::text(p, "program")),
            format!("not attached: {}", table::text(p, "reason")),
        ));
    }
    let c = &s["config"];
    rows.extend([
        ("detectors".into(), {
            let base = c["thresholds"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(kind, t)| format!("{kind} {}", t.as_str().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join(", ");
            let rules = c["rules"].as_array().map_or(0, Vec::len);
            format!("{base}; {rules} rule(s)")
        }),
        (
            "scans".into(),
            format!(
                "{} every {} (last {:.2} ms, mean {:.2} ms)",
                s["scans"],
                table::text(c, "scan_interval"),
                s["last_scan_ms"].as_f64().unwrap_or(0.0),
                s["mean_scan_ms"].as_f64().unwrap_or(0.0)
            ),
        ),
        (
            "full walks".into(),
            format!(
                "{} (mean {:.2} ms)",
                s["full_walks"],
                s["mean_walk_ms"].as_f64().unwrap_or(0.0)
            ),
        ),
        (
            "threads tracked".into(),
            format!(
                "{} (watched processes: {})",
                s["tracked_threads"], s["watched_processes"]
            ),
        ),
        ("hung now".into(), table::text(&s, "open_episodes")),
        (
            "events".into(),
            format!(
                "{} hang, {} update, {} resolved",
                s["events"]["hang"], s["events"]["update"], s["events"]["resolved"]
            ),
        ),
        ("dropped events".into(), pairs(&s["dropped_events"])),
        ("bpf counters".into(), pairs(&s["bpf_counters"])),
        (
            "webhook".into(),
            c["webhook"].as_str().unwrap_or("none").to_owned(),
        ),
    ]);
    for (k, v) in rows {
        t.add_row([k, v]);
    }
    table::print(&t);
    Ok(ExitCode::SUCCESS)
}

/// `a=1 b=2` from a JSON object.
fn pairs(v: &Value) -> String {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}
