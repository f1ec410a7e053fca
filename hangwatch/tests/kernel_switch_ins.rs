//! The scheduler probe records every switch-out but only the followed threads' switch-ins
//! (docs/design.md, "The per-switch cost"). A thread that became a candidate while it
//! waited on a mutex, was let go before the threshold and then ran on CPU past it must not
//! be reported (its switch-in is seen); its next wait, on another mutex held for good, must
//! be, with a duration counted from that wait's start.
//!
//! Most switch-outs go to the thread's switch slot, not its task storage: a ping-pong's
//! switches must be counted there (`hangwatch_bpf_switch_outs_in_storage_total` a small
//! share of them), and the ponger's block after it, recorded in its slot alone, must be
//! reported timed from the block.

mod common;

use std::{
    thread,
    time::{Duration, Instant},
};

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

#[test]
#[ignore = "needs root: loads BPF programs"]
fn a_ping_pong_switches_out_through_its_slots_and_its_last_block_is_reported_from_there() {
    require_root();
    const ROUNDS: u64 = 40_000;
    let program = compile("pingpong_block");
    let mut pingpong = Program::start(&program, &[&ROUNDS.to_string()]);
    let pid = pingpong.pid;
    let ponger: u32 = pingpong
        .expect_field("ponger", Duration::from_secs(5))
        .parse()
        .expect("a tid");
    // Defaults (no --pid: a selected process has an on_cpu rule, whose switch-ins the
    // probe records for every thread, in storage), lock_wait after 1 s.
    let daemon = Daemon::start(&["--lock-wait-threshold", "1s"]);
    let metrics = daemon.metrics_endpoint();
    let counts = || {
        let s = scrape(&metrics);
        (
            value(
                &s,
                "hangwatch_bpf_events_total",
                &[("probe", "sched_switch")],
            ),
            value(&s, "hangwatch_bpf_switch_outs_in_storage_total", &[]),
        )
    };
    // The metrics follow the scan ticks (200 ms): wait for two after each phase.
    let settle = || thread::sleep(Duration::from_millis(500));
    settle();
    let before = counts();
    pingpong.send("go");
    pingpong.expect_line("pingpong done", scaled(Duration::from_secs(30)));
    pingpong.expect_line("blocked", Duration::from_secs(5));
    let blocked = Instant::now();
    settle();
    let after = counts();
    let switches = after.0 - before.0;
    let in_storage = after.1 - before.1;
    eprintln!("{switches} switches, {in_storage} switch-outs in task storage");
    // Each round trip is a blocking switch-out of each thread: at least two switches.
    assert!(
        switches >= (2 * ROUNDS) as f64,
        "{switches} switches counted for {ROUNDS} round trips"
    );
    // The ping-pong's threads took their slots at their first switch-outs; what is left in
    // storage is the rest of the machine's new threads and the followed ones.
    assert!(
        in_storage < switches * 0.1,
        "{in_storage} of {switches} switch-outs went to task storage"
    );

    let reported = daemon.wait_for_event(
        "lock_wait for the ponger's block",
        scaled(Duration::from_secs(5)),
        |v| is_event(v, "hang", "lock_wait", ponger),
    );
    let v = &reported.value;
    let after_block = reported.at.duration_since(blocked);
    assert!(
        after_block >= Duration::from_millis(800),
        "reported {after_block:?} after the block (threshold 1 s): timed from an older switch-out? {v}"
    );
    assert_eq!(u64_of(v, "/pid"), u64::from(pid), "{v}");
    assert_eq!(str_of(v, "/wait/syscall"), "futex", "{v}");
    let duration = u64_of(v, "/duration_ms");
    assert!(
        (1000..1000 + scaled(Duration::from_millis(1500)).as_millis() as u64).contains(&duration),
        "duration_ms {duration} is not the block's: {v}"
    );
}
