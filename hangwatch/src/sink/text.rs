//! `--output text`: a report a person reads in a terminal.
use std::fmt::Write;

use super::{EventType, HangEvent};

pub fn render(e: &HangEvent) -> String {
    let mut out = String::new();
    let head = match e.event {
        EventType::Hang => "HANG",
        EventType::Update => "STILL HUNG",
        EventType::Resolved => "RESOLVED",
    };
    let secs = e.duration_ms as f64 / 1000.0;
    let threshold = e.threshold_ms as f64 / 1000.0;
    let at_least = if e.blocked_since_before_start {
        ">= "
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "{head} {kind}: {comm}[{pid}] thread '{thread}' (tid {tid}) off CPU {at_least}{secs:.1}s (threshold {threshold}s)",
        kind = e.kind.as_str(),
        comm = e.comm,
        pid = e.pid,
        thread = e.thread_name,
        tid = e.tid,
    );
    let _ = writeln!(out, "  id       {}", e.id);
    let _ = writeln!(out, "  since    {}", e.started_at);
    if let Some(resolution) = e.resolution {
        let _ = writeln!(out, "  ended    {resolution:?}");
    }
    let _ = writeln!(
        out,
        "  exe      {}  {}",
        e.exe.as_deref().unwrap_or("?"),
        e.cmdline.join(" ")
    );
    if let Some(cgroup) = &e.cgroup {
        let _ = writeln!(out, "  cgroup   {cgroup}");
    }
    let mut wait = format!("{} ({})", e.wait.state.letter(), e.wait.state_description);
    if let Some(syscall) = &e.wait.syscall {
        let _ = write!(wait, " in {syscall}");
    }
    if let Some(f) = &e.wait.futex {
        let timeout = if f.has_timeout {
            "with timeout"
        } else {
            "no timeout"
        };
        let _ = write!(wait, " {} on {} ({timeout})", f.op, f.address);
    }
    if e.wait.woken {
        wait.push_str(", woken, waiting for a CPU");
    }
    let _ = writeln!(out, "  wait     {wait}");
    if e.event != EventType::Resolved {
        if let Some(err) = &e.kernel_stack_error {
            let _ = writeln!(out, "  kernel stack unavailable: {err}");
        } else if !e.kernel_stack.is_empty() {
            let _ = writeln!(out, "  kernel stack:");
            for (i, f) in e.kernel_stack.iter().enumerate() {
                let name = f.symbol.as_deref().unwrap_or("??");
                let _ = writeln!(out, "    #{i:<2} {name}+{:#x}", f.offset.unwrap_or(0));
            }
        }
    }
    out.push('\n');
    out
}
