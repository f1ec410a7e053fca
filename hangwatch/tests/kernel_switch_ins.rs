//! The scheduler probe records every switch-out but only the followed threads' switch-ins
//! (docs/design.md, "The per-switch cost"). A thread that became a candidate while it
//! waited on a mutex, was let go before the threshold and then ran on CPU past it must not
//! be reported (its switch-in is seen); its next wait, on another mutex held for good, must
//! be, with a duration counted from that wait's start.

mod common;

use std::time::{Duration, Instant};

use self::common::*;

#[test]
#[ignore = "needs root: loads BPF programs"]
fn a_candidate_let_go_before_its_threshold_is_not_reported_its_next_wait_is() {
    require_root();
    let program = compile("woken_spinner");
    // lock_wait after 2 s: a futex waiter is a candidate from 0.5 s (half the 1 s
    // deadlock hold), so the first wait (1.5 s) makes the worker one.
    let daemon = Daemon::start(&["--lock-wait-threshold", "2s"]);
    let mut spinner = Program::start(&program, &["1500", "3000"]);
    let pid = spinner.pid;
    let tid: u32 = spinner
        .expect_field("worker", Duration::from_secs(5))
        .parse()
        .expect("a tid");
    spinner.expect_line("released", Duration::from_secs(5));
    let released = Instant::now();
    spinner.expect_line("spun", Duration::from_secs(10));
    let spun = Instant::now();
    let reported = daemon.wait_for_event(
        "lock_wait for the second wait",
        Duration::from_secs(6),
        |v| str_of(v, "/event") == "hang" && u64_of(v, "/tid") == u64::from(tid),
    );
    let early: Vec<_> = daemon
        .events_for(pid)
        .into_iter()
        .filter(|r| r.at < spun && str_of(&r.value, "/event") == "hang")
        .map(|r| r.value)
        .collect();
    assert!(
        early.is_empty(),
        "reported while it ran (let go {:?} before it stopped spinning): {early:?}",
        spun.duration_since(released)
    );
    let v = &reported.value;
    assert_eq!(str_of(v, "/kind"), "lock_wait", "{v}");
    let after_spin = reported.at.duration_since(spun);
    assert!(
        after_spin >= Duration::from_millis(1900)
            && after_spin < scaled(Duration::from_millis(2600)),
        "reported {after_spin:?} after the second wait began (threshold 2 s): {v}"
    );
    let duration = u64_of(v, "/duration_ms");
    assert!(
        (2000..2600).contains(&duration),
        "duration_ms {duration} is not the second wait's: {v}"
    );
}
