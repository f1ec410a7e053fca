//! `--output text`: a report a person reads in a terminal.
use std::fmt::Write;

use super::{EventType, HangEvent};
use crate::{
    detect::reason::DeadlockRule,
    stack::{Frame, FrameTag, StackSource},
};

fn write_frames(out: &mut String, frames: &[Frame]) {
    let first_app = frames.iter().position(|f| f.tag == FrameTag::Application);
    for (i, f) in frames.iter().enumerate() {
        let mark = if Some(i) == first_app { "->" } else { "  " };
        let inlined = if f.inlined { " [inlined]" } else { "" };
        let name = f.symbol.as_deref().unwrap_or("??");
        let place = match (&f.file, f.line, f.offset) {
            (Some(file), Some(line), _) => format!("{name} at {file}:{line}"),
            (_, _, Some(offset)) => format!("{name}+{offset:#x}"),
            _ => name.to_owned(),
        };
        let module = match (&f.module, f.tag) {
            (Some(module), FrameTag::Runtime | FrameTag::Application) => format!("  ({module})"),
            _ => String::new(),
        };
        let _ = writeln!(out, "  {mark}#{i:<2} {place}{inlined}{module}");
    }
}

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
        "{head} {kind}: {comm}[{pid}] thread '{thread}' (tid {tid}) blocked {at_least}{secs:.1}s (threshold {threshold}s)",
        kind = e.kind.as_str(),
        comm = e.comm,
        pid = e.pid,
        thread = e.thread_name,
        tid = e.tid,
    );
    let _ = writeln!(out, "  id       {}", e.id);
    let _ = writeln!(out, "  since    {}", e.started_at);
    if let Some(resolution) = e.resolution {
        let _ = writeln!(out, "  ended    {}", resolution.as_str());
    }
    let _ = writeln!(out, "  exe      {}", e.exe.as_deref().unwrap_or("?"));
    let cmdline = e.cmdline.join(" ").replace('\n', "\\n");
    let _ = writeln!(out, "  cmdline  {cmdline}");
    if let Some(cgroup) = &e.cgroup {
        let _ = writeln!(out, "  cgroup   {cgroup}");
    }
    let w = &e.workload;
    match (&w.namespace, &w.pod, &w.pod_uid) {
        (Some(ns), Some(pod), _) => {
            let _ = writeln!(out, "  pod      {ns}/{pod}");
        }
        (_, _, Some(uid)) => {
            let _ = writeln!(out, "  pod      uid {uid}");
        }
        _ => {}
    }
    match (&w.container, &w.container_id) {
        (Some(name), Some(id)) => {
            let _ = writeln!(out, "  container {name} (id {id})");
        }
        (None, Some(id)) => {
            let _ = writeln!(out, "  container id {id}");
        }
        _ => {}
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
    if let Some(wchan) = &e.wait.wchan {
        let _ = write!(wait, ", in the kernel at {wchan}");
    }
    if e.wait.woken {
        wait.push_str(", woken, waiting for a CPU");
    }
    if e.wait.paused {
        wait.push_str(", paused from outside");
    }
    if let Some(owner) = e.wait.owner_tid {
        let _ = write!(wait, ", lock held by tid {owner}");
    }
    if let Some(lock) = &e.lock {
        let at = lock
            .address
            .as_deref()
            .map(|a| format!(" at {a}"))
            .unwrap_or_default();
        let name = lock.implementation.name();
        let _ = write!(wait, ", {name} lock{at} that names no owner");
    }
    let _ = writeln!(out, "  wait     {wait}");
    for link in &e.blocked_on {
        let again = if link.cycle { " (again: cycle)" } else { "" };
        let op = link
            .futex_op
            .as_deref()
            .map(|op| format!(" {op}"))
            .unwrap_or_default();
        let at = link
            .blocked_here
            .as_deref()
            .map(|here| format!(", at {here}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  held by  tid {} '{}' {} in {}{op}{again}{at}",
            link.tid, link.thread_name, link.state, link.syscall
        );
    }
    if !e.cycle.is_empty() {
        let tids: Vec<String> = e.cycle.iter().map(|m| m.tid.to_string()).collect();
        let whole = e
            .reason
            .as_ref()
            .is_some_and(|r| r.rule == DeadlockRule::WholeProcess);
        if whole {
            let _ = writeln!(out, "  stuck    every thread: {}", tids.join(", "));
        } else {
            let _ = writeln!(out, "  cycle    {} -> {}", tids.join(" -> "), tids[0]);
        }
        for m in &e.cycle {
            let _ = writeln!(
                out,
                "    tid {} '{}' waits for {}, blocked here: {}",
                m.tid,
                m.thread_name,
                m.wait
                    .owner_tid
                    .map_or_else(|| "no known owner".to_owned(), |o| format!("tid {o}")),
                m.blocked_here.as_deref().unwrap_or("?")
            );
        }
    }
    if let Some(reason) = &e.reason {
        let _ = writeln!(out, "  why      {}", reason.rule.name());
        for fact in &reason.evidence {
            let _ = writeln!(out, "    {fact}");
        }
    }
    if let Some(stall) = &e.stall {
        let parks = if stall.parking_worker {
            " (a worker that parks when idle)"
        } else {
            ""
        };
        match &stall.driver_frame {
            // Never seen in its wait: only this wait's start is known.
            Some(frame) => {
                let _ = writeln!(
                    out,
                    "  loop     {} since {} (an event loop by its stack: {frame})",
                    stall.doing, stall.last_return_at
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "  loop     {} since its last return to its wait at {}{parks}",
                    stall.doing, stall.last_return_at
                );
            }
        }
    }
    if let Some(exit) = &e.exit {
        let from = match (&exit.sender_comm, exit.sender_pid) {
            (Some(comm), Some(pid)) => format!(" from {comm}[{pid}]"),
            (None, Some(pid)) => format!(" from pid {pid}"),
            _ => String::new(),
        };
        let how = match (exit.found, exit.handler_tid) {
            ("in_handler", Some(tid)) => {
                format!(" before hangwatch started, thread {tid} still in its handler")
            }
            ("pending", _) => " before hangwatch started, still pending (blocked)".into(),
            _ => format!(" ({} signal(s))", exit.signals),
        };
        let _ = writeln!(
            out,
            "  exit     asked by {}{from}{how}; the process is still running",
            exit.signal
        );
        for t in &e.threads {
            let syscall = t.wait.syscall.as_deref().unwrap_or("running");
            let _ = writeln!(
                out,
                "    tid {} '{}' {} in {syscall}, here: {}",
                t.tid,
                t.thread_name,
                t.wait.state.letter(),
                t.blocked_here.as_deref().unwrap_or("?")
            );
        }
    }
    let sampled = e.stacks.source == StackSource::OnCpuSample;
    if let Some(here) = &e.stacks.blocked_here {
        let doing = if sampled { "running" } else { "blocked" };
        let _ = writeln!(out, "  {doing} here: {here}");
    }
    if let Some(handler) = &e.stacks.signal_handler {
        let _ = writeln!(out, "  {handler}");
    }
    if e.event != EventType::Resolved {
        if !e.stacks.user_stack.is_empty() {
            let how = if sampled { " (sampled on CPU)" } else { "" };
            let _ = writeln!(out, "  user stack{how}:");
            write_frames(&mut out, &e.stacks.user_stack);
        }
        if let Some(err) = &e.stacks.user_stack_error {
            let _ = writeln!(out, "  user stack incomplete: {err}");
        }
        if let Some(err) = &e.stacks.kernel_stack_error {
            let _ = writeln!(out, "  kernel stack unavailable: {err}");
        } else if !e.stacks.kernel_stack.is_empty() {
            let _ = writeln!(out, "  kernel stack:");
            write_frames(&mut out, &e.stacks.kernel_stack);
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{kind::HangKind, stack::ThreadStacks, state::Wait};

    #[test]
    fn an_ended_episode_says_how_in_the_words_of_the_json() {
        use crate::sink::Resolution;
        for resolution in [
            Resolution::Running,
            Resolution::Exited,
            Resolution::DaemonStopped,
        ] {
            let mut event =
                crate::sink::event::example(EventType::Resolved, "d_state-11-0", 11, 2_000);
            event.resolution = Some(resolution);
            let json = serde_json::to_value(resolution).expect("json");
            let text = render(&event);
            assert!(
                text.contains(&format!(
                    "  ended    {}\n",
                    json.as_str().expect("a string")
                )),
                "{text}"
            );
        }
    }

    #[test]
    fn a_report_names_the_thread_the_wait_and_the_stack() {
        let mut event = crate::sink::event::example(EventType::Hang, "d_state-11-0", 11, 12_345);
        event.kind = HangKind::DState;
        event.pid = 10;
        event.comm = "writer".into();
        event.thread_name = "io".into();
        event.cmdline = vec!["writer".into(), "-v".into()];
        event.threshold_ms = 10_000;
        event.wait = Wait::describe(&crate::detect::testing::blocked(11, 10, 2, 0))
            .with_wchan(Some("percpu_rwsem_wait".into()));
        event.stacks = ThreadStacks {
            kernel_stack: vec![Frame {
                address: "0xffffffff81000000".into(),
                symbol: Some("percpu_rwsem_wait".into()),
                offset: Some(0x2a),
                module: Some("kernel".into()),
                file: None,
                line: None,
                inlined: false,
                python: false,
                tag: FrameTag::Kernel,
            }],
            user_stack: vec![Frame {
                address: "0x5000".into(),
                symbol: Some("write_all".into()),
                offset: Some(4),
                module: Some("/usr/bin/writer".into()),
                file: Some("src/io.rs".into()),
                line: Some(42),
                inlined: false,
                python: false,
                tag: FrameTag::Application,
            }],
            blocked_here: Some("write_all at src/io.rs:42".into()),
            ..ThreadStacks::default()
        };
        let text = render(&event);
        assert!(
            text.starts_with(
                "HANG d_state: writer[10] thread 'io' (tid 11) blocked 12.3s (threshold 10s)"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "wait     D (uninterruptible sleep), in the kernel at percpu_rwsem_wait\n"
            ),
            "{text}"
        );
        assert!(text.contains("#0  percpu_rwsem_wait+0x2a\n"), "{text}");
        assert!(
            text.contains("blocked here: write_all at src/io.rs:42"),
            "{text}"
        );
        assert!(
            text.contains("->#0  write_all at src/io.rs:42  (/usr/bin/writer)"),
            "{text}"
        );
        assert!(text.contains("cmdline  writer -v"), "{text}");
        assert!(text.contains("  user stack:\n"), "{text}");

        event.stacks.source = StackSource::OnCpuSample;
        event.stacks.blocked_here = Some("spin at src/io.rs:7".into());
        let text = render(&event);
        assert!(text.contains("running here: spin at src/io.rs:7"), "{text}");
        assert!(text.contains("user stack (sampled on CPU):\n"), "{text}");
    }

    #[test]
    fn a_lock_wait_names_the_owner_chain_and_a_deadlock_its_cycle() {
        use crate::sink::{BlockedOn, CycleMember};
        let mut event = crate::sink::event::example(EventType::Hang, "lock_wait-11-0", 11, 6_000);
        event.kind = HangKind::LockWait;
        event.wait.owner_tid = Some(12);
        event.blocked_on = vec![BlockedOn {
            tid: 12,
            thread_name: "holder".into(),
            state: 'S',
            syscall: "read".into(),
            futex_op: None,
            owner_tid: None,
            cycle: false,
            blocked_here: Some("load at holder.c:12".into()),
            ..BlockedOn::default()
        }];
        let text = render(&event);
        assert!(text.contains(", lock held by tid 12"), "{text}");
        assert!(
            text.contains("held by  tid 12 'holder' S in read, at load at holder.c:12\n"),
            "{text}"
        );

        let mut event = crate::sink::event::example(EventType::Hang, "deadlock-11-0", 11, 1_000);
        event.kind = HangKind::Deadlock;
        let member = |tid, owner| CycleMember {
            tid,
            thread_name: format!("w{tid}"),
            wait: Wait {
                owner_tid: Some(owner),
                ..event.wait.clone()
            },
            blocked_here: Some(format!("w{tid} at abba.c:{tid}")),
            user_stack: Vec::new(),
            kernel_stack: Vec::new(),
            stacks_error: None,
            signal_handler: None,
        };
        event.cycle = vec![member(11, 12), member(12, 11)];
        let text = render(&event);
        assert!(text.contains("cycle    11 -> 12 -> 11"), "{text}");
        let mut whole = event.clone();
        whole.reason = Some(crate::detect::reason::DeadlockReason {
            rule: DeadlockRule::WholeProcess,
            evidence: vec!["tid 11 joins tid 12".into()],
        });
        let text = render(&whole);
        assert!(text.contains("stuck    every thread: 11, 12\n"), "{text}");
        assert!(
            text.contains("why      whole_process\n    tid 11 joins tid 12\n"),
            "{text}"
        );
        assert!(
            text.contains("tid 12 'w12' waits for tid 11, blocked here: w12 at abba.c:12"),
            "{text}"
        );
    }

    #[test]
    fn a_stall_says_what_the_loop_does_and_a_stuck_exit_lists_its_threads() {
        use crate::sink::{CycleMember, event::example};
        let mut event = example(EventType::Hang, "loop_stall-1-2", 7, 2100);
        event.kind = HangKind::LoopStall;
        event.stall = Some(crate::sink::LoopStallInfo {
            doing: "blocked in clock_nanosleep".into(),
            on_cpu: false,
            syscall: Some("clock_nanosleep".into()),
            last_return_at: "2026-11-25T14:00:00.000Z".into(),
            loop_waits: 9,
            parking_worker: false,
            recognized_from: "loop_waits",
            driver_frame: None,
        });
        let text = render(&event);
        assert!(
            text.contains("loop     blocked in clock_nanosleep since its last return"),
            "{text}"
        );
        let stall = event.stall.as_mut().expect("stall");
        stall.recognized_from = "stack";
        stall.driver_frame = Some("uv_run".into());
        let text = render(&event);
        assert!(
            text.contains("since 2026-11-25T14:00:00.000Z (an event loop by its stack: uv_run)"),
            "{text}"
        );
        let mut exit = example(EventType::Hang, "stuck_exit-1-2", 7, 10_000);
        exit.kind = HangKind::StuckExit;
        exit.exit = Some(crate::sink::ExitInfo {
            signal: "SIGTERM",
            sender_pid: Some(1),
            sender_comm: Some("systemd".into()),
            signals: 2,
            found: "signal_sent",
            handler_tid: None,
        });
        let thread = |tid, syscall: Option<&str>, here: &str| CycleMember {
            tid,
            thread_name: "w".into(),
            wait: Wait {
                syscall: syscall.map(str::to_owned),
                ..exit.wait.clone()
            },
            blocked_here: Some(here.into()),
            user_stack: Vec::new(),
            kernel_stack: Vec::new(),
            stacks_error: None,
            signal_handler: None,
        };
        exit.threads = vec![
            thread(7, Some("futex"), "save_state at stuck.c:30"),
            thread(8, Some("read"), "wait_for_input at stuck.c:20"),
        ];
        let text = render(&exit);
        assert!(
            text.contains(
                "asked by SIGTERM from systemd[1] (2 signal(s)); the process is still running"
            ),
            "{text}"
        );
        assert!(
            text.contains("tid 8 'w' S in read, here: wait_for_input at stuck.c:20"),
            "{text}"
        );
        // Sent before the daemon started: found in its handler, sender unknown.
        let info = exit.exit.as_mut().expect("exit");
        (info.found, info.handler_tid) = ("in_handler", Some(7));
        (info.sender_pid, info.sender_comm) = (None, None);
        exit.stacks.signal_handler = Some(crate::stack::user::signal_frame::SignalHandler {
            signal: Some("SIGTERM".into()),
            signal_number: Some(15),
            blocked_by_handler: vec!["SIGTERM".into()],
            frame: Some(5),
            ..Default::default()
        });
        let text = render(&exit);
        assert!(
            text.contains(
                "asked by SIGTERM before hangwatch started, thread 7 still in its handler; the process is still running"
            ),
            "{text}"
        );
        assert!(
            text.contains("  in a handler of SIGTERM, frames #0-#4\n"),
            "{text}"
        );
    }
}
