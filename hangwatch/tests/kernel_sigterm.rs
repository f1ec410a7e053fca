//! The daemon stops cleanly on SIGTERM and SIGINT while it is reporting a live hang:
//! exit status 0 within 1 s (the mission: "its own shutdown on SIGTERM completes within
//! a second even if a worker is stuck").

mod common;

use std::time::Duration;

use self::common::*;

fn stops_within_a_second_while_reporting(sig: libc::c_int, name: &str) {
    require_root();
    let mut abba = Abba::start();
    let pid = abba.pid();
    let pid_arg = pid.to_string();
    let mut daemon = Daemon::start(&[
        "--pid",
        &pid_arg,
        "--threshold",
        "1s",
        "--scan-interval",
        "250ms",
    ]);
    let lock = abba.deadlock();
    daemon.wait_for_event("hang for an abba worker", Duration::from_secs(6), |v| {
        v["event"] == "hang"
            && (is_event(v, "hang", "off_cpu", lock.tid_a)
                || is_event(v, "hang", "off_cpu", lock.tid_b))
    });

    let limit = Duration::from_secs(1);
    let Some((status, took)) = daemon.signal_and_wait(sig, limit) else {
        panic!("hangwatch still running {limit:?} after {name} (stderr below)");
    };
    eprintln!("hangwatch exited with {status} {took:?} after {name}");
    assert!(
        status.success(),
        "hangwatch exited with {status} after {name}"
    );
    // The stream must end cleanly too: every line JSON, nothing panicked.
    assert!(
        daemon.bad_lines().is_empty(),
        "non-JSON stdout lines: {:?}",
        daemon.bad_lines()
    );
    assert!(
        !daemon.stderr().contains("panicked"),
        "hangwatch panicked:\n{}",
        daemon.stderr()
    );
    // The deadlocked program is untouched by the daemon's exit.
    assert!(
        matches!(task_state(lock.tid_a), Some('S')),
        "worker-a should still be blocked after the daemon left: {:?}",
        task_state(lock.tid_a)
    );
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn sigterm_while_reporting_exits_zero_within_one_second() {
    stops_within_a_second_while_reporting(libc::SIGTERM, "SIGTERM");
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn sigint_while_reporting_exits_zero_within_one_second() {
    stops_within_a_second_while_reporting(libc::SIGINT, "SIGINT");
}
