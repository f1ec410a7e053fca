//! `hangwatch list`: the threads hung right now, longest first; of one daemon, or of every
//! node of a cluster (`--all-nodes`), or of one node's (`--node`).
use std::process::ExitCode;

use clap::Args;
use serde_json::{Value, json};

use super::{
    EXIT_HUNG,
    client::{Client, ClientArgs, encode, print_json},
    cluster::{self, ClusterArgs},
    table,
};

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub client: ClientArgs,

    #[command(flatten)]
    pub cluster: ClusterArgs,

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
    if args.cluster.all_nodes {
        return all_nodes(args, &path);
    }
    let answer = match &args.cluster.node.node {
        Some(node) => cluster::get_one(&args.cluster.node.kube, node, &path)?,
        None => Client::new(&args.client)?.get(&path)?,
    };
    let hangs = answer["hangs"].as_array().cloned().unwrap_or_default();
    if args.client.json {
        print_json(&answer);
    } else {
        print_table(&hangs, false);
    }
    Ok(exit_code(args, &hangs))
}

/// Every node's hangs, each with its `node`, longest first; the nodes that did not answer
/// are listed under `errors` (JSON) or on stderr (table).
fn all_nodes(args: &ListArgs, path: &str) -> anyhow::Result<ExitCode> {
    let answers = cluster::get_all(&args.cluster.node.kube, None, path)?;
    let mut hangs = Vec::new();
    let mut errors = Vec::new();
    for a in &answers {
        match &a.answer {
            Ok(answer) => {
                for hang in answer["hangs"].as_array().into_iter().flatten() {
                    let mut hang = hang.clone();
                    if let Some(fields) = hang.as_object_mut() {
                        fields.insert("node".into(), json!(a.node));
                        fields.insert("hangwatch_pod".into(), json!(a.pod));
                    }
                    hangs.push(hang);
                }
            }
            Err(error) => errors.push(json!({"node": a.node, "pod": a.pod, "error": error})),
        }
    }
    hangs.sort_by_key(|h| std::cmp::Reverse(h["duration_ms"].as_u64().unwrap_or(0)));
    if args.client.json {
        print_json(&json!({"hangs": hangs, "nodes": answers.len(), "errors": errors}));
    } else {
        print_table(&hangs, true);
        for e in &errors {
            eprintln!(
                "hangwatch: warning: node {} (pod {}) did not answer: {}",
                table::text(e, "node"),
                table::text(e, "pod"),
                table::text(e, "error")
            );
        }
    }
    Ok(exit_code(args, &hangs))
}

fn print_table(hangs: &[Value], with_node: bool) {
    if hangs.is_empty() {
        println!("no hung threads");
        return;
    }
    let mut header = vec!["ID", "KIND", "PROCESS", "TID", "THREAD", "FOR", "WHERE"];
    if with_node {
        header.insert(0, "NODE");
    }
    let mut t = table::new(&header);
    for e in hangs {
        let mut row = vec![
            table::text(e, "id"),
            table::text(e, "kind"),
            table::process(e),
            table::text(e, "tid"),
            table::text(e, "thread_name"),
            table::lasted(e),
            table::blocked_where(e),
        ];
        if with_node {
            row.insert(0, table::text(e, "node"));
        }
        t.add_row(row);
    }
    table::print(&t);
}

fn exit_code(args: &ListArgs, hangs: &[Value]) -> ExitCode {
    if args.exit_code && !hangs.is_empty() {
        ExitCode::from(EXIT_HUNG)
    } else {
        ExitCode::SUCCESS
    }
}
