//! off_cpu on a real ABBA deadlock: both workers of tests/programs/abba.c are reported
//! once each, within threshold + 0.5 s, blocked in an untimed futex wait on the other's
//! mutex, with a kernel stack in the futex code; both episodes resolve as "exited" when
//! the program is killed.

mod common;

use std::{collections::HashMap, thread, time::Duration};

use self::common::*;

const THRESHOLD_MS: u64 = 1000;
/// The detection budget: a report within threshold + 0.5 s.
const DETECTION_BUDGET_MS: u64 = 500;
/// Slack on wall-clock arrival for a loaded 2-CPU CI machine (start-up, parallel tests).
const ARRIVAL_SLACK: Duration = Duration::from_millis(1500);

#[test]
#[ignore = "needs root: loads BPF programs"]
fn abba_deadlock_is_reported_as_off_cpu_futex_wait_and_resolved_on_exit() {
    abba_case(&[]);
}

/// The same with the optional probes attached: the futex details then come from the futex
/// tracepoints instead of the saved registers, and must say the same.
#[test]
#[ignore = "needs root: loads BPF programs"]
fn abba_with_the_optional_wakeup_and_futex_probes() {
    abba_case(&["--wakeup-probe", "--futex-probes"]);
}

fn abba_case(extra: &[&str]) {
    require_root();
    let mut abba = Abba::start();
    let pid = abba.pid();
    let pid_arg = pid.to_string();
    let mut args = vec![
        "--pid",
        &pid_arg,
        "--threshold",
        "1s",
        "--scan-interval",
        "250ms",
    ];
    args.extend_from_slice(extra);
    let mut daemon = Daemon::start(&args);
    // Let a few scans meet abba's main thread blocked in read(stdin) since before the
    // attach; it runs again on "go", so its later wait (pthread_join) is a new block.
    thread::sleep(Duration::from_millis(600));
    let lock = abba.deadlock();
    eprintln!("abba pid {pid}: {lock:?}");

    let workers = [
        (lock.tid_a, "worker-a", lock.mutex_b),
        (lock.tid_b, "worker-b", lock.mutex_a),
    ];
    let mut ids = HashMap::new();
    for (tid, thread_name, waits_on) in workers {
        let hang = daemon.wait_for_event(
            &format!("hang/off_cpu for tid {tid} ({thread_name})"),
            Duration::from_millis(THRESHOLD_MS + DETECTION_BUDGET_MS)
                + ARRIVAL_SLACK
                + Duration::from_secs(2),
            |v| is_event(v, "hang", "off_cpu", tid),
        );
        let arrival = hang.at.saturating_duration_since(lock.at);
        let v = &hang.value;
        eprintln!("hang for {thread_name} arrived {arrival:?} after the deadlock: {v}");
        assert!(
            arrival
                <= scaled(
                    Duration::from_millis(THRESHOLD_MS + DETECTION_BUDGET_MS) + ARRIVAL_SLACK
                ),
            "hang for {thread_name} arrived {arrival:?} after the deadlock; budget is threshold + 0.5 s (+ {ARRIVAL_SLACK:?} slack)"
        );

        // Who.
        assert_eq!(u64_of(v, "/pid"), u64::from(pid), "pid: {v}");
        assert_eq!(str_of(v, "/comm"), "abba", "comm: {v}");
        assert_eq!(str_of(v, "/thread_name"), thread_name, "thread_name: {v}");
        assert_eq!(
            str_of(v, "/exe"),
            abba.path.to_str().expect("utf-8 path"),
            "exe: {v}"
        );
        let cmdline: Vec<&str> = v["cmdline"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert_eq!(cmdline, abba.cmdline, "cmdline: {v}");
        assert!(
            str_of(v, "/cgroup").starts_with('/'),
            "cgroup should be a cgroup path: {v}"
        );
        let id = str_of(v, "/id");
        assert!(!id.is_empty(), "episode id: {v}");

        // How long.
        assert_eq!(
            u64_of(v, "/threshold_ms"),
            THRESHOLD_MS,
            "threshold_ms: {v}"
        );
        let duration = u64_of(v, "/duration_ms");
        assert!(
            duration >= THRESHOLD_MS,
            "reported before the threshold: duration_ms {duration}: {v}"
        );
        let budget = u64::try_from(scaled(Duration::from_millis(DETECTION_BUDGET_MS)).as_millis())
            .expect("fits");
        assert!(
            duration <= THRESHOLD_MS + budget,
            "reported late: duration_ms {duration} > threshold + {budget} ms: {v}"
        );
        assert_eq!(
            v["blocked_since_before_start"], false,
            "the deadlock began after attach: {v}"
        );
        let started_at = str_of(v, "/started_at");
        assert!(
            started_at.len() >= 20 && started_at.as_bytes()[4] == b'-' && started_at.contains('T'),
            "started_at should be RFC 3339: {v}"
        );

        // On what.
        assert_eq!(
            str_of(v, "/wait/state"),
            "S",
            "a futex wait sleeps interruptibly: {v}"
        );
        assert_eq!(str_of(v, "/wait/syscall"), "futex", "wait.syscall: {v}");
        assert_eq!(
            v["wait"]["syscall_nr"].as_i64(),
            Some(libc::SYS_futex),
            "wait.syscall_nr: {v}"
        );
        assert_eq!(v["wait"]["woken"], false, "wait.woken: {v}");
        let futex = &v["wait"]["futex"];
        assert!(futex.is_object(), "wait.futex should be present: {v}");
        assert_eq!(
            parse_address(futex["address"].as_str().unwrap_or("")),
            Some(waits_on),
            "{thread_name} waits on the other worker's mutex at {waits_on:#x}: {v}"
        );
        assert!(
            str_of(futex, "/op").starts_with("FUTEX_WAIT"),
            "futex.op: {v}"
        );
        assert_eq!(
            futex["has_timeout"], false,
            "pthread_mutex_lock waits without timeout: {v}"
        );

        // Where (kernel side).
        let frames = v["kernel_stack"]
            .as_array()
            .unwrap_or_else(|| panic!("kernel_stack should be an array: {v}"));
        assert!(!frames.is_empty(), "kernel_stack is empty: {v}");
        for frame in frames {
            let address = parse_address(frame["address"].as_str().unwrap_or(""))
                .unwrap_or_else(|| panic!("kernel frame without a hex address: {frame}"));
            assert!(
                address >= 0xffff_0000_0000_0000,
                "kernel frame address is not a kernel address: {frame}"
            );
        }
        let symbols = kernel_symbols(v);
        assert!(
            symbols
                .iter()
                .any(|s| s.contains("futex_wait") || s.starts_with("futex_")),
            "no futex frame in the kernel stack {symbols:?} (/proc stack: {})",
            proc_stack(tid)
        );
        if v["user_registers"].is_object() {
            let ip = parse_address(str_of(v, "/user_registers/ip"));
            assert!(ip.is_some_and(|ip| ip != 0), "user_registers.ip: {v}");
        }

        assert!(ids.insert(tid, id.to_owned()).is_none());
    }
    assert_ne!(
        ids[&lock.tid_a], ids[&lock.tid_b],
        "two threads, two episodes"
    );

    // Still deadlocked: updates may come, but never a second hang for the same thread.
    thread::sleep(Duration::from_millis(1500));

    abba.program.kill();
    for (tid, thread_name, _) in workers {
        let id = ids[&tid].clone();
        let resolved = daemon.wait_for_event(
            &format!("resolved for {thread_name} (id {id}) after SIGKILL"),
            Duration::from_secs(3),
            |v| v["event"] == "resolved" && v["id"] == id.as_str(),
        );
        let v = &resolved.value;
        assert_eq!(
            str_of(v, "/resolution"),
            "exited",
            "the process was killed: {v}"
        );
        assert_eq!(
            u64_of(v, "/tid"),
            u64::from(tid),
            "resolved for the same thread: {v}"
        );
        assert_eq!(str_of(v, "/kind"), "off_cpu", "{v}");
        assert!(
            u64_of(v, "/duration_ms") >= 2500,
            "it was blocked for at least 2.5 s: {v}"
        );
    }

    // Let late events arrive, then check the whole stream of this process.
    thread::sleep(Duration::from_millis(600));
    let events = daemon.events_for(pid);
    check_episodes(&events);
    for r in events.iter().filter(|r| r.value["event"] == "hang") {
        assert_eq!(
            r.value["blocked_since_before_start"], false,
            "every thread of abba blocked after \"go\", long after the attach: {}",
            r.value
        );
    }
    for (tid, _, _) in workers {
        let id = &ids[&tid];
        let hangs = events
            .iter()
            .filter(|r| r.value["id"] == id.as_str() && r.value["event"] == "hang")
            .count();
        assert_eq!(
            hangs, 1,
            "exactly one hang for the episode {id} of tid {tid}"
        );
        let kinds: Vec<_> = events
            .iter()
            .filter(|r| {
                r.value["tid"].as_u64() == Some(u64::from(tid)) && r.value["event"] == "hang"
            })
            .map(|r| r.value["kind"].clone())
            .collect();
        assert!(
            kinds
                .iter()
                .all(|k| k == "off_cpu" || k == "deadlock" || k == "lock_wait"),
            "unexpected hang kinds for tid {tid}: {kinds:?}"
        );
    }
    daemon.stop();
}
