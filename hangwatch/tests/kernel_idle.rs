//! Idle is not hung: with the defaults (d_state lowered to 1 s so that it would fire
//! within the run), an idle worker pool on an untimed condvar with main in pause(), and a
//! `sleep 1000` that no rule selects, produce no event at all. A positive control in the
//! same run, a second `sleep 1000` selected with `--pid ... --threshold 1s`, must be
//! reported as off_cpu, so the silence is the detectors judging, not a daemon that sees
//! nothing.

mod common;

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use self::common::*;

/// How long the idle processes are watched after the daemon attached.
const WATCH: Duration = Duration::from_millis(3500);

#[test]
#[ignore = "needs root: loads BPF programs"]
fn idle_pool_and_sleep_are_not_hangs_while_a_selected_sleep_is() {
    require_root();
    let mut pool = Program::start(&compile("idle_pool"), &[]);
    let pool_pid = u32::try_from(pool.expect_number("pid", Duration::from_secs(5))).expect("pid");
    pool.expect_line("ready", Duration::from_secs(5));
    let idle_sleep = Program::spawn({
        let mut c = Command::new("sleep");
        c.arg("1000");
        c
    });
    let control = Program::spawn({
        let mut c = Command::new("sleep");
        c.arg("1001");
        c
    });
    let pool_tids = pool.tids();
    assert_eq!(
        pool_tids.len(),
        5,
        "idle_pool should have main + 4 workers: {pool_tids:?}"
    );

    let control_arg = control.pid.to_string();
    let daemon = Daemon::start(&[
        "--d-state-threshold",
        "1s",
        "--pid",
        &control_arg,
        "--threshold",
        "1s",
    ]);
    let attached = Instant::now();

    // The control: selected, off-CPU since before the daemon started.
    let hang = daemon.wait_for_event(
        &format!(
            "off_cpu hang for the selected `sleep 1001` (pid {})",
            control.pid
        ),
        Duration::from_secs(6),
        |v| is_event(v, "hang", "off_cpu", control.pid),
    );
    let v = &hang.value;
    assert_eq!(u64_of(v, "/pid"), u64::from(control.pid), "{v}");
    assert_eq!(str_of(v, "/comm"), "sleep", "{v}");
    assert_eq!(u64_of(v, "/threshold_ms"), 1000, "{v}");
    assert!(u64_of(v, "/duration_ms") >= 1000, "{v}");

    // The idle ones get the rest of the watch window.
    if let Some(left) = WATCH.checked_sub(attached.elapsed()) {
        thread::sleep(left);
    }
    for (what, pid) in [
        ("idle_pool", pool_pid),
        ("unselected sleep 1000", idle_sleep.pid),
    ] {
        let events = daemon.events_for(pid);
        assert!(
            events.is_empty(),
            "{what} (pid {pid}) is idle, not hung, yet got {} event(s):\n{}",
            events.len(),
            events
                .iter()
                .map(|r| r.value.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // Sanity: they were really idle (sleeping) all along, not gone.
    for tid in pool_tids.iter().copied().chain([idle_sleep.pid]) {
        assert_eq!(task_state(tid), Some('S'), "tid {tid} should be sleeping");
    }
    let mut daemon = daemon;
    daemon.stop();
}
