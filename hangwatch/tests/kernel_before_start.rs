//! Hangs that began before the daemon (issue 14, item 2): a DaemonSet rollout or a node
//! reboot during an incident starts hangwatch after the threads are stuck. Each kind is
//! started stuck here, then the daemon, which must report every one of them within the
//! threshold and one walk of attaching, marked `blocked_since_before_start` where the
//! thread is blocked (the probes never saw its wait begin). `loop_stall` has its own test
//! in kernel_loops.rs (`loops_stalled_before_the_daemon_started_...`): a loop never seen in
//! its wait is recognized from its stack.
mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{frozen::FrozenFs, *};

const LINE_TIMEOUT: Duration = Duration::from_secs(5);
/// Every threshold of this test (the deadlock hold's default is 1 s too).
const THRESHOLD: Duration = Duration::from_secs(1);
/// The threshold, a walk (half the smallest threshold: 0.5 s) and the report's own time
/// (a cold symbolizer, a busy shared machine), from the daemon's "attached".
const WITHIN: Duration = Duration::from_millis(3500);

#[test]
#[ignore = "needs root: loads BPF programs, freezes a loop-mounted filesystem"]
fn every_kind_reports_waits_that_began_before_the_daemon() {
    require_root();
    // deadlock: abba.c's two workers, each holding the lock the other wants.
    let mut abba = Abba::start();
    let cycle = abba.deadlock();
    // lock_wait: a waiter whose lock's holder is blocked in read().
    let mut lock_read = Program::start(&compile("lock_read"), &[]);
    lock_read.expect_number("pid", LINE_TIMEOUT);
    let holder = lock_read.expect_number("holder", LINE_TIMEOUT);
    let waiter = u32::try_from(lock_read.expect_number("waiter", LINE_TIMEOUT)).expect("tid");
    lock_read.expect_line("ready", LINE_TIMEOUT);
    // off_cpu and on_cpu, for --pid: a sleeper, and spin.c's thread spinning on CPU.
    let sleeper = Program::spawn({
        let mut c = Command::new("sleep");
        c.arg("100014");
        c
    });
    let mut spin = Program::start(&compile("spin"), &["thread"]);
    spin.expect_number("pid", LINE_TIMEOUT);
    let spinner = u32::try_from(spin.expect_number("spinner", LINE_TIMEOUT)).expect("tid");
    spin.expect_line("spinning", LINE_TIMEOUT);
    // d_state: a writer on a frozen filesystem, when the tools are there.
    let mut frozen = FrozenFs::tools_installed().then(FrozenFs::new);
    let writer = frozen.as_mut().map(FrozenFs::writer_in_d);
    // Let them be stuck a while before the daemon starts.
    std::thread::sleep(Duration::from_millis(500));

    let sleeper_pid = sleeper.pid.to_string();
    let spin_pid = spin.pid.to_string();
    let mut daemon = Daemon::start(&[
        "--pid",
        &sleeper_pid,
        "--pid",
        &spin_pid,
        "--threshold",
        "1s",
        "--on-cpu-threshold",
        "1s",
        "--lock-wait-threshold",
        "1s",
        "--d-state-threshold",
        "1s",
    ]);
    let attached = Instant::now();
    let mut expected: Vec<(&str, &str, u32, bool)> = vec![
        (
            "the ABBA deadlock",
            "deadlock",
            cycle.tid_a.min(cycle.tid_b),
            true,
        ),
        ("lock_read's waiter", "lock_wait", waiter, true),
        ("the selected sleeper", "off_cpu", sleeper.pid, true),
        // Running, not blocked: nothing to have begun before the start.
        ("the selected spinner", "on_cpu", spinner, false),
    ];
    if let Some(writer) = writer {
        expected.push(("the writer on a frozen filesystem", "d_state", writer, true));
    }
    let mut figures = Vec::new();
    for (what, kind, tid, before) in expected {
        let hang =
            daemon.wait_for_event(&format!("{kind} for {what} (tid {tid})"), WITHIN * 2, |v| {
                is_event(v, "hang", kind, tid)
            });
        let v = &hang.value;
        let after = hang.at.saturating_duration_since(attached);
        figures.push(format!("{kind} {after:?}"));
        assert!(
            after <= scaled(WITHIN),
            "{what}: {kind} reported {after:?} after attaching, beyond the threshold ({THRESHOLD:?}) and a walk: {v}"
        );
        if before {
            assert_eq!(v["blocked_since_before_start"], true, "{what}: {v}");
            // Measured from when the daemon first saw it: at least the threshold.
            assert!(u64_of(v, "/duration_ms") >= 1000, "{what}: {v}");
        }
        if kind == "lock_wait" {
            assert_eq!(u64_of(v, "/wait/owner_tid"), holder, "{v}");
        }
        if kind == "deadlock" {
            let members: Vec<u64> = v["cycle"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| u64_of(m, "/tid"))
                .collect();
            assert!(
                members.contains(&u64::from(cycle.tid_a))
                    && members.contains(&u64::from(cycle.tid_b)),
                "{v}"
            );
        }
    }
    eprintln!("reported after attaching: {}", figures.join(", "));
    daemon.stop();
    drop(frozen.take()); // thaws, then kills the writer
    let _ = abba;
}

/// `stuck_exit` for exit signals sent before the daemon (issue 14): a SIGTERM handler
/// stuck on a lock, `SA_SIGINFO` and plain (found from the signal frame on the handling
/// thread's stack), and a SIGTERM pending because every thread blocks it. Each is reported
/// once the grace time has passed since the daemon started, marked
/// `blocked_since_before_start`, with how it was found; the handler's report names the
/// sender where the frame holds a `siginfo`, and its stack goes on below the signal frame
/// into the code the signal interrupted. Controls, quiet: a handler that returned (the
/// program went on), and the same program never signalled (its worker blocks SIGTERM,
/// which the process handles: a candidate whose stack has no signal frame).
#[test]
#[ignore = "needs root: loads BPF programs"]
fn exit_signals_sent_before_the_daemon_are_stuck_exits() {
    require_root();
    const GRACE: Duration = Duration::from_secs(2);
    let program = compile("exit_before_start");
    let start = |mode: &str| {
        let mut p = Program::start(&program, &[mode]);
        p.expect_number("pid", LINE_TIMEOUT);
        let worker = u32::try_from(p.expect_number("worker", LINE_TIMEOUT)).expect("tid");
        p.expect_line("ready", LINE_TIMEOUT);
        (p, worker)
    };
    let (mut siginfo, _) = start("siginfo");
    let (mut plain, _) = start("plain");
    let (pending, _) = start("pending");
    let (mut returned, _) = start("returned");
    let (never_signalled, _) = start("plain");
    for p in [&siginfo, &plain, &pending, &returned] {
        signal(p.pid, libc::SIGTERM);
    }
    siginfo.expect_line("handling", LINE_TIMEOUT);
    plain.expect_line("handling", LINE_TIMEOUT);
    returned.expect_line("handled", LINE_TIMEOUT);
    assert!(
        wait_until(LINE_TIMEOUT, || {
            std::fs::read_to_string(format!("/proc/{}/status", pending.pid)).is_ok_and(|s| {
                s.lines()
                    .any(|l| l.starts_with("ShdPnd:") && l.ends_with("4000"))
            })
        }),
        "SIGTERM pending"
    );

    let grace = humantime::format_duration(GRACE).to_string();
    let mut daemon = Daemon::start(&["--stuck-exit-grace", &grace]);
    let attached = Instant::now();
    let mut figures = Vec::new();
    for (what, p, found) in [
        ("SA_SIGINFO handler", &siginfo, "in_handler"),
        ("plain handler", &plain, "in_handler"),
        ("pending", &pending, "pending"),
    ] {
        let hang = daemon.wait_for_event(what, scaled(GRACE + WITHIN), |v| {
            is_event(v, "hang", "stuck_exit", p.pid)
        });
        let after = hang.at.duration_since(attached);
        // The handler thread's stack (under emulation perhaps from the first update).
        let v = &daemon.with_stacks_read(hang.value, |v| {
            found == "pending"
                || v["threads"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|t| t["signal_handler"].is_object())
        });
        figures.push(format!("{what} {after:?}"));
        assert!(
            after >= GRACE,
            "{what}: before the grace time: {after:?}: {v}"
        );
        assert_eq!(v["blocked_since_before_start"], true, "{what}: {v}");
        assert_eq!(str_of(v, "/exit/signal"), "SIGTERM", "{what}: {v}");
        assert_eq!(str_of(v, "/exit/found"), found, "{what}: {v}");
        if found == "pending" {
            assert!(v["exit"].get("sender_pid").is_none(), "{what}: {v}");
            continue;
        }
        // The handler runs on the main thread (the worker blocks SIGTERM).
        assert_eq!(
            u64_of(v, "/exit/handler_tid"),
            u64::from(p.pid),
            "{what}: {v}"
        );
        let main = v["threads"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| u64_of(t, "/tid") == u64::from(p.pid))
            .unwrap_or_else(|| panic!("{what}: no main thread: {v}"));
        let stack = symbols(main, "/user_stack");
        let handler = &main["signal_handler"];
        assert_eq!(str_of(handler, "/signal"), "SIGTERM", "{what}: {main}");
        // The handler's frames, the trampoline, then the interrupted code down to main.
        let frame = usize::try_from(u64_of(handler, "/frame")).expect("index");
        let at = |symbol: &str| stack.iter().position(|s| s == symbol);
        assert!(
            at("save_state").is_some_and(|i| i < frame) && at("main").is_some_and(|i| i > frame),
            "{what}: the handler before frame {frame}, main after it: {stack:?}"
        );
        if what == "SA_SIGINFO handler" {
            assert_eq!(str_of(handler, "/sent_by"), "process", "{main}");
            assert_eq!(
                u64_of(v, "/exit/sender_pid"),
                u64::from(std::process::id()),
                "the test sent it: {v}"
            );
        } else {
            assert!(handler.get("sender_pid").is_none(), "no siginfo: {main}");
            assert!(v["exit"].get("sender_pid").is_none(), "{v}");
        }
    }
    eprintln!("reported after attaching: {}", figures.join(", "));
    // The controls stay quiet, past the grace time and the handler checks' retries.
    std::thread::sleep(Duration::from_secs(1));
    for (what, pid) in [
        ("a handler that returned", returned.pid),
        (
            "a handled SIGTERM blocked by a worker, never sent",
            never_signalled.pid,
        ),
    ] {
        assert!(
            daemon.events_for(pid).is_empty(),
            "{what} (pid {pid}): {}",
            daemon.dump(Some(&[pid]))
        );
    }
    // Once a process exits, its episode resolves.
    siginfo.kill();
    let resolved = daemon.wait_for_event("resolved", scaled(Duration::from_secs(3)), |v| {
        is_event(v, "resolved", "stuck_exit", siginfo.pid)
    });
    assert_eq!(str_of(&resolved.value, "/resolution"), "exited");
    daemon.stop();
    let _ = (plain, pending, returned, never_signalled);
}
