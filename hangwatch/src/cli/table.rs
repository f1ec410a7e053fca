//! Tables sized to the terminal (comfy-table; no width limit when piped), and the few
//! formats every subcommand shares: durations, the process of a report, where it waits.
use comfy_table::{ContentArrangement, Table, presets};
use serde_json::Value;

/// A borderless table with `header` (none if empty), wrapped to the terminal's width.
pub fn new(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic);
    if !header.is_empty() {
        table.set_header(header.iter().copied());
    }
    table
}

/// Prints the table without the padding comfy-table leaves at the end of each line.
pub fn print(table: &Table) {
    for line in table.lines() {
        println!("{}", line.trim_end());
    }
}

/// `850ms`, `12.3s`, `5m02s`, `2h03m`, `3d04h`.
pub fn duration_ms(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 if ms.is_multiple_of(1000) => format!("{s}s"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", s / 60, s % 60),
        3_600_000..86_400_000 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// How long a report's wait lasted, `>=` when it began before hangwatch started.
pub fn lasted(e: &Value) -> String {
    let ms = e["duration_ms"].as_u64().unwrap_or(0);
    let at_least = if e["blocked_since_before_start"].as_bool() == Some(true) {
        ">="
    } else {
        ""
    };
    format!("{at_least}{}", duration_ms(ms))
}

/// `namespace/pod` (and container) when known, else `comm[pid]`.
pub fn process(e: &Value) -> String {
    let comm = format!("{}[{}]", text(e, "comm"), e["pid"]);
    match (e["namespace"].as_str(), e["pod"].as_str()) {
        (Some(ns), Some(pod)) => match e["container"].as_str() {
            Some(c) => format!("{ns}/{pod}/{c} {comm}"),
            None => format!("{ns}/{pod} {comm}"),
        },
        _ => comm,
    }
}

/// What a thread waits on, in a few words: `futex FUTEX_WAIT_PRIVATE (no timeout)`.
pub fn wait(wait: &Value) -> String {
    let mut out = match wait["syscall"].as_str() {
        Some(syscall) => syscall.to_owned(),
        None => text(wait, "state_description"),
    };
    if let Some(op) = wait["futex"]["op"].as_str() {
        out.push(' ');
        out.push_str(op);
        if wait["futex"]["has_timeout"].as_bool() == Some(false) {
            out.push_str(" (no timeout)");
        }
    }
    if wait["woken"].as_bool() == Some(true) {
        out.push_str(", woken");
    }
    out
}

/// Where the thread is blocked: its first application frame, else the innermost user
/// frame, else the kernel frame below the scheduler, else what it waits on.
pub fn blocked_where(e: &Value) -> String {
    if let Some(here) = e["blocked_here"].as_str() {
        return here.to_owned();
    }
    if let Some(frame) = e["user_stack"].as_array().and_then(|f| f.first()) {
        return frame_location(frame);
    }
    if let Some(frame) = e["kernel_stack"].as_array().and_then(|frames| {
        frames.iter().find(|f| {
            f["symbol"]
                .as_str()
                .is_some_and(|s| !GENERIC_KERNEL.iter().any(|p| s.starts_with(p)))
        })
    }) {
        return format!("kernel: {}", text(frame, "symbol"));
    }
    wait(&e["wait"])
}

/// Kernel functions every blocked thread passes through (the scheduler, the futex code,
/// the syscall entry): the frame worth showing is the first one that is none of these.
const GENERIC_KERNEL: &[&str] = &[
    "schedule",
    "__schedule",
    "preempt_schedule",
    "io_schedule",
    "futex_",
    "__futex",
    "do_futex",
    "__x64_sys_",
    "__arm64_sys_",
    "x64_sys_call",
    "do_syscall",
    "entry_SYSCALL",
    "invoke_syscall",
    "el0",
];

/// `symbol at file:line`, `symbol in module`, or the address.
pub fn frame_location(f: &Value) -> String {
    let name = f["symbol"]
        .as_str()
        .map_or_else(|| text(f, "address"), str::to_owned);
    match (f["file"].as_str(), f["line"].as_u64()) {
        (Some(file), Some(line)) => format!("{name} at {file}:{line}"),
        (Some(file), None) => format!("{name} at {file}"),
        _ => match f["module"].as_str() {
            Some(module) => format!("{name} in {}", short_module(module)),
            None => name,
        },
    }
}

/// The file name of a module path.
pub fn short_module(module: &str) -> &str {
    module.rsplit('/').next().unwrap_or(module)
}

/// A string field, or "" when absent.
pub fn text(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration_ms(850), "850ms");
        assert_eq!(duration_ms(12_345), "12.3s");
        assert_eq!(duration_ms(5_000), "5s");
        assert_eq!(duration_ms(302_000), "5m02s");
        assert_eq!(duration_ms(7_380_000), "2h03m");
        assert_eq!(duration_ms(273_600_000), "3d04h");
    }

    #[test]
    fn where_prefers_the_application_frame() {
        let e = json!({
            "blocked_here": "worker_b at abba.c:31",
            "wait": {"syscall": "futex"},
        });
        assert_eq!(blocked_where(&e), "worker_b at abba.c:31");
        let e = json!({
            "kernel_stack": [{"symbol": "__schedule"}, {"symbol": "io_schedule"}, {"symbol": "folio_wait_bit"}],
            "wait": {"syscall": "read"},
        });
        assert_eq!(blocked_where(&e), "kernel: folio_wait_bit");
        let e = json!({
            "wait": {"syscall": "futex", "futex": {"op": "FUTEX_WAIT_PRIVATE", "has_timeout": false}},
        });
        assert_eq!(blocked_where(&e), "futex FUTEX_WAIT_PRIVATE (no timeout)");
    }
}
