//! Deadlocks on locks that keep no owner, and the healthy idioms that look the same, with
//! the defaults (no `--pid`, no rules): the daemon sees every process of the machine.
//!
//! - Rust `std::sync::Mutex` ABBA, main in `JoinHandle::join`: a `whole_process`
//!   deadlock of all three threads (the workers' futex words name no owner; main's join
//!   waits on a shared futex, the first worker's tid word).
//! - A consumer in `pthread_cond_wait` whose only producer exited, main joining it: a
//!   `whole_process` deadlock of both.
//! - PI-mutex ABBA: the kernel refuses the second lock (EDEADLK) and glibc parks that
//!   thread for ever on a word of its own stack; main sits in pause() (a handled signal
//!   could not help, but the process as a whole is not stuck: only the cycle tells). A
//!   `pi_park` deadlock naming both workers, each member's owner the other.
//! - A thread waiting for a lock that keeps no owner while its holder is blocked in
//!   `read()`: Rust std's `Mutex`, parking_lot's, and glibc's stdout lock
//!   (`__lll_lock_wait_private`): `lock_wait` with `owner_tid: null`, the implementation
//!   and the lock's address (none for parking_lot, which parks on a word of each thread).
//! - Controls that must stay quiet: a daemon's main in `sem_wait` for its SIGTERM
//!   handler's `sem_post` with its workers idle on a condvar, a pthread pool waiting for
//!   work, Python's `queue.get()` fed from stdin or from a signal handler, a
//!   ThreadPoolExecutor at rest, 2,000 idle threads, an idle JVM and an idle Go program.

mod common;

use std::{
    collections::BTreeSet,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use self::common::*;

/// The `deadlock` hang event of process `pid`.
fn deadlock_of(daemon: &Daemon, what: &str, pid: u32, patience: Duration) -> Value {
    daemon
        .wait_for_event(what, patience, |v| {
            str_of(v, "/event") == "hang"
                && str_of(v, "/kind") == "deadlock"
                && u64_of(v, "/pid") == u64::from(pid)
        })
        .value
}

/// The members of a deadlock event, by tid.
fn members(v: &Value) -> Vec<(u64, &Value)> {
    v["cycle"]
        .as_array()
        .unwrap_or_else(|| panic!("no cycle: {v}"))
        .iter()
        .map(|m| (u64_of(m, "/tid"), m))
        .collect()
}

/// The symbols of a member's user stack.
fn user_symbols(member: &Value) -> Vec<String> {
    member["user_stack"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["symbol"].as_str().map(str::to_owned))
        .collect()
}

fn evidence(v: &Value) -> String {
    v["reason"]["evidence"]
        .as_array()
        .unwrap_or_else(|| panic!("no reason.evidence: {v}"))
        .iter()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn rust_std_abba_with_main_joining_is_a_whole_process_deadlock() {
    require_root();
    let binary = rustc("std_abba");
    // The defaults: lock_wait at 5 s would fire for the workers (their waits have the
    // shape of std's mutex, and their stacks show it) if the deadlock did not claim them.
    let mut daemon = Daemon::start(&[]);
    let mut program = Program::start(&binary, &[]);
    let t = Duration::from_secs(10);
    let pid = u32::try_from(program.expect_number("pid", t)).expect("pid");
    let mutex_a = parse_address(&program.expect_field("mutex_a", t)).expect("address");
    let mutex_b = parse_address(&program.expect_field("mutex_b", t)).expect("address");
    let tid_a = program.expect_number("tid_a", t);
    let tid_b = program.expect_number("tid_b", t);
    program.expect_line("ready", t);
    let ready = Instant::now();

    let v = deadlock_of(
        &daemon,
        "deadlock for std_abba",
        pid,
        Duration::from_secs(5),
    );
    assert_eq!(
        u64_of(&v, "/tid"),
        u64::from(pid),
        "main has the smallest tid: {v}"
    );
    assert_eq!(str_of(&v, "/reason/rule"), "whole_process", "{v}");
    let why = evidence(&v);
    assert!(
        why.contains(&format!("tid {pid} joins tid {tid_a}")),
        "{why}"
    );
    assert!(
        why.contains("SigCgt"),
        "the signal handlers were checked: {why}"
    );
    let members = members(&v);
    let tids: BTreeSet<u64> = members.iter().map(|(t, _)| *t).collect();
    assert_eq!(tids, BTreeSet::from([u64::from(pid), tid_a, tid_b]), "{v}");
    for (tid, m) in &members {
        assert!(
            m["wait"]["owner_tid"].is_null(),
            "std's mutex names no owner: {m}"
        );
        let symbols = user_symbols(m).join(" | ");
        let address = parse_address(str_of(m, "/wait/futex/address"));
        if *tid == u64::from(pid) {
            assert_eq!(
                str_of(m, "/wait/futex/op"),
                "FUTEX_WAIT_BITSET|FUTEX_CLOCK_REALTIME"
            );
            assert!(symbols.contains("join"), "main joins: {symbols}");
        } else {
            // Each worker waits on the other's first lock: the futex word is the Mutex.
            let expected = if *tid == tid_a { mutex_b } else { mutex_a };
            assert_eq!(
                address,
                Some(expected),
                "tid {tid} waits on its second lock: {m}"
            );
            assert!(
                symbols.contains("lock_contended"),
                "std's slow path: {symbols}"
            );
            assert!(
                str_of(m, "/blocked_here").contains("std_abba.rs"),
                "each member has its own stack: {m}"
            );
        }
    }
    // Past lock_wait's 5 s: one episode, and no lock_wait for the workers.
    if let Some(left) = Duration::from_millis(6500).checked_sub(ready.elapsed()) {
        thread::sleep(left);
    }
    let events = daemon.events_for(pid);
    assert_eq!(
        episode_ids(&events, "deadlock").len(),
        1,
        "{}",
        daemon.dump(Some(&[pid]))
    );
    assert!(
        events
            .iter()
            .all(|r| str_of(&r.value, "/kind") == "deadlock"),
        "{}",
        daemon.dump(Some(&[pid]))
    );
    check_episodes(&events);
    daemon.stop();
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn a_lost_condvar_wakeup_with_main_joining_is_a_deadlock() {
    require_root();
    let mut daemon = Daemon::start(&[]);
    let mut program = Program::start(&compile("lost_wakeup"), &[]);
    let t = Duration::from_secs(5);
    let pid = u32::try_from(program.expect_number("pid", t)).expect("pid");
    let consumer = program.expect_number("consumer", t);
    program.expect_line("ready", t);
    let ready = Instant::now();
    let v = deadlock_of(
        &daemon,
        "deadlock for lost_wakeup",
        pid,
        Duration::from_secs(5),
    );
    let reported_after = ready.elapsed();
    // The members' user stacks (under emulation perhaps from the first update: the
    // consumer's first read came too late in the 6.1 VM, 2026-11-27).
    let v = daemon.with_stacks_read(v, |v| {
        members(v).iter().all(|(_, m)| !user_symbols(m).is_empty())
    });
    assert_eq!(str_of(&v, "/reason/rule"), "whole_process", "{v}");
    let why = evidence(&v);
    assert!(
        why.contains(&format!("tid {pid} joins tid {consumer}")),
        "{why}"
    );
    assert!(
        why.contains(&format!("tid {consumer} waits on a private futex")),
        "{why}"
    );
    assert!(why.contains("/proc lists 2 thread(s)"), "{why}");
    let members = members(&v);
    assert_eq!(
        members.iter().map(|(t, _)| *t).collect::<BTreeSet<_>>(),
        BTreeSet::from([u64::from(pid), consumer]),
        "{v}"
    );
    let consumer_member = members
        .iter()
        .find(|(t, _)| *t == consumer)
        .expect("consumer")
        .1;
    assert!(
        user_symbols(consumer_member)
            .iter()
            .any(|s| s.contains("pthread_cond_wait")),
        "{consumer_member}"
    );
    assert!(
        str_of(consumer_member, "/blocked_here").contains("lost_wakeup.c"),
        "{consumer_member}"
    );
    eprintln!("reported {reported_after:?} after the producer exited");
    daemon.stop();
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn a_pi_abba_is_one_deadlock_through_glibcs_edeadlk_park() {
    require_root();
    // lock_wait at 1 s: it would fire for worker_a if the park did not close the cycle.
    let mut daemon = Daemon::start(&["--lock-wait-threshold", "1s"]);
    let mut program = Program::start(&compile("pi_abba"), &["pause"]);
    let t = Duration::from_secs(5);
    let pid = u32::try_from(program.expect_number("pid", t)).expect("pid");
    let mutex_b = parse_address(&program.expect_field("mutex_b", t)).expect("address");
    let tid_a = program.expect_number("tid_a", t);
    let tid_b = program.expect_number("tid_b", t);
    program.expect_line("ready", t);
    let v = deadlock_of(&daemon, "deadlock for pi_abba", pid, Duration::from_secs(5));
    assert_eq!(str_of(&v, "/reason/rule"), "pi_park", "{v}");
    let why = evidence(&v);
    assert!(why.contains("EDEADLK"), "{why}");
    assert!(
        why.contains(&format!(
            "tid {tid_a} waits on the PI lock at {mutex_b:#x} held by tid {tid_b}"
        )),
        "{why}"
    );
    let members = members(&v);
    assert_eq!(
        members.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        vec![tid_a.min(tid_b), tid_a.max(tid_b)],
        "the two workers, main (in pause) is not part of it: {v}"
    );
    for (tid, m) in &members {
        let other = if *tid == tid_a { tid_b } else { tid_a };
        assert_eq!(
            u64_of(m, "/wait/owner_tid"),
            other,
            "the PI owner chain: {m}"
        );
        let symbols = user_symbols(m).join(" | ");
        assert!(symbols.contains("__pthread_mutex_lock_full"), "{symbols}");
        if *tid == tid_a {
            assert_eq!(str_of(m, "/wait/futex/op"), "FUTEX_LOCK_PI_PRIVATE", "{m}");
            assert_eq!(
                parse_address(str_of(m, "/wait/futex/address")),
                Some(mutex_b)
            );
        } else {
            assert!(
                symbols.contains("__futex_abstimed_wait"),
                "parked: {symbols}"
            );
        }
    }
    thread::sleep(Duration::from_millis(2000));
    let events = daemon.events_for(pid);
    assert_eq!(
        episode_ids(&events, "deadlock").len(),
        1,
        "{}",
        daemon.dump(Some(&[pid]))
    );
    assert!(
        events
            .iter()
            .all(|r| str_of(&r.value, "/kind") == "deadlock"),
        "no lock_wait for worker_a, nothing for main: {}",
        daemon.dump(Some(&[pid]))
    );
    check_episodes(&events);
    daemon.stop();
}

/// One program of the ownerless lock test: where its lock is, who holds it, who waits.
struct LockProgram {
    what: &'static str,
    program: Program,
    pid: u32,
    lock: u64,
    holder: u64,
    waiter: u64,
}

impl LockProgram {
    fn start(what: &'static str, binary: &Path, lock_key: &str) -> Self {
        let mut program = Program::start(binary, &[]);
        let t = Duration::from_secs(10);
        let pid = u32::try_from(program.expect_number("pid", t)).expect("pid");
        let lock = parse_address(&program.expect_field(lock_key, t)).expect("address");
        let holder = program.expect_number("holder", t);
        let waiter = program.expect_number("waiter", t);
        program.expect_line("ready", t);
        Self {
            what,
            program,
            pid,
            lock,
            holder,
            waiter,
        }
    }
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn lock_waits_on_locks_without_an_owner_name_the_lock() {
    require_root();
    let mut daemon = Daemon::start(&["--lock-wait-threshold", "1s"]);
    let programs = [
        LockProgram::start("Rust std Mutex", &rustc("std_lock_read"), "mutex"),
        LockProgram::start("parking_lot Mutex", &example("parking_lot_read"), "mutex"),
        LockProgram::start("glibc stdout lock", &compile("stdio_lock"), "lock"),
    ];
    for (p, (implementation, frame, address)) in programs.iter().zip([
        ("rust_std", "Mutex>::lock_contended", true),
        ("parking_lot", "RawMutex::lock_slow", false),
        ("glibc", "__lll_lock_wait", true),
    ]) {
        let what = format!("lock_wait for the waiter of the {}", p.what);
        let waiter = u32::try_from(p.waiter).expect("tid");
        let v = daemon
            .wait_for_event(&what, Duration::from_secs(5), |v| {
                is_event(v, "hang", "lock_wait", waiter)
            })
            .value;
        assert_eq!(u64_of(&v, "/pid"), u64::from(p.pid), "{v}");
        assert!(
            v["wait"]["owner_tid"].is_null(),
            "{}: no owner: {v}",
            p.what
        );
        assert_eq!(str_of(&v, "/lock/implementation"), implementation, "{v}");
        let lock_address = parse_address(str_of(&v, "/lock/address"));
        if address {
            assert_eq!(
                lock_address,
                Some(p.lock),
                "{}: the lock's address: {v}",
                p.what
            );
            assert_eq!(
                parse_address(str_of(&v, "/wait/futex/address")),
                Some(p.lock),
                "the futex word is the lock: {v}"
            );
        } else {
            assert!(v["lock"]["address"].is_null(), "parking_lot: {v}");
        }
        let symbols = user_symbols(&v).join(" | ");
        assert!(symbols.contains(frame), "{}: {symbols}", p.what);
        assert!(symbols.contains("waiter"), "where the waiter is: {symbols}");
        assert!(!str_of(&v, "/blocked_here").is_empty(), "{v}");
    }
    thread::sleep(Duration::from_millis(1000));
    for p in &programs {
        let events = daemon.events_for(p.pid);
        assert!(
            events
                .iter()
                .all(|r| str_of(&r.value, "/kind") == "lock_wait"
                    && u64_of(&r.value, "/tid") == p.waiter),
            "{}: only the waiter's lock_wait (the holder {} is in read): {}",
            p.what,
            p.holder,
            daemon.dump(Some(&[p.pid]))
        );
        check_episodes(&events);
    }
    drop(programs.into_iter().map(|p| p.program).collect::<Vec<_>>());
    daemon.stop();
}

/// How long the controls are watched once all of them are ready (and the daemon has
/// seen them for at least this long): past every threshold of this run (lock_wait and
/// d_state lowered to 1 s, deadlock's hold 1 s and loop_stall 2 s by default), twice.
const CONTROL_WINDOW: Duration = Duration::from_secs(5);

#[test]
#[ignore = "needs root: loads BPF programs"]
fn healthy_idioms_that_look_stuck_stay_quiet() {
    require_root();
    let t = Duration::from_secs(20);
    let started = |program: &mut Program| -> u32 {
        let pid = u32::try_from(program.expect_number("pid", t)).expect("pid");
        program.expect_line("ready", t);
        pid
    };
    let mut controls = IdleControls::start();
    let mut daemon = Daemon::start(&["--lock-wait-threshold", "1s", "--d-state-threshold", "1s"]);
    let attached = Instant::now();
    // The positive control in the same run: a Rust std ABBA is reported.
    let mut abba = Program::start(&rustc("std_abba"), &[]);
    let abba_pid = started(&mut abba);
    deadlock_of(
        &daemon,
        "deadlock for the positive control",
        abba_pid,
        Duration::from_secs(5),
    );
    if let Some(left) = CONTROL_WINDOW.checked_sub(attached.elapsed()) {
        thread::sleep(left);
    }
    eprintln!(
        "controls watched for {:?} with lock_wait and d_state at 1 s, deadlock 1 s, loop_stall 2 s",
        attached.elapsed()
    );
    for (what, pid) in controls.list() {
        let events = daemon.events_for(pid);
        assert!(
            events.is_empty(),
            "{what} (pid {pid}) is idle, not hung, yet got {} event(s):\n{}",
            events.len(),
            daemon.dump(Some(&[pid]))
        );
    }
    controls.prove_idle_not_stuck();
    daemon.stop();
}
