//! Thread exit and tid reuse: tests/programs/churn.c runs generations of threads that
//! each block ~1.5 s in a timed condvar wait and exit, steering every new thread onto the
//! tid of the previous one (ns_last_pid). Each blocked thread is its own episode: one
//! hang, at most one resolved, never overlapping another episode of the same tid, and
//! every episode is resolved once the program has exited.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;

const GENERATIONS: usize = 6;
const BLOCK_MS: u64 = 1500;

#[test]
#[ignore = "needs root: loads BPF programs and writes ns_last_pid"]
fn reused_tids_get_separate_non_overlapping_episodes() {
    require_root();
    // Each block must outlast the threshold by more than the detection latency, which is
    // longer under emulation (HANGWATCH_TEST_TIME_SCALE).
    let block_ms =
        u64::try_from(scaled(Duration::from_millis(BLOCK_MS)).as_millis()).expect("block fits u64");
    let mut churn = Program::start(
        &compile("churn"),
        &[&GENERATIONS.to_string(), &block_ms.to_string()],
    );
    let pid = u32::try_from(churn.expect_number("pid", Duration::from_secs(5))).expect("pid");
    let pid_arg = pid.to_string();
    let daemon = Daemon::start(&[
        "--pid",
        &pid_arg,
        "--threshold",
        "1s",
        "--scan-interval",
        "250ms",
    ]);
    // Let a few scans meet the main thread blocked in read(stdin) since before the attach:
    // its later episodes (in pthread_join, after "go") must not inherit that.
    std::thread::sleep(Duration::from_millis(600));
    churn.send("go");

    let mut generation_tids = Vec::new();
    loop {
        let line = churn.next_line(Duration::from_millis(BLOCK_MS + 5000));
        if line == "done" {
            break;
        }
        let tid = line
            .strip_prefix("gen ")
            .and_then(|rest| rest.split_once(" tid "))
            .and_then(|(_, tid)| tid.parse::<u32>().ok())
            .unwrap_or_else(|| panic!("churn printed an unexpected line: {line:?}"));
        generation_tids.push(tid);
    }
    let status = churn.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "churn exited with {status}");
    eprintln!("churn pid {pid}, generation tids {generation_tids:?}");
    assert_eq!(generation_tids.len(), GENERATIONS);
    let distinct: HashSet<u32> = generation_tids.iter().copied().collect();
    assert!(
        distinct.len() < generation_tids.len(),
        "no tid was reused ({generation_tids:?}): ns_last_pid steering did not work, the test proves nothing"
    );

    // Once the process is gone, every episode must be resolved.
    let all_resolved = wait_until(Duration::from_secs(4), || {
        let events = daemon.events_for(pid);
        let resolved: HashSet<&str> = events
            .iter()
            .filter(|r| r.value["event"] == "resolved")
            .map(|r| str_of(&r.value, "/id"))
            .collect();
        events
            .iter()
            .filter(|r| r.value["event"] == "hang")
            .all(|r| resolved.contains(str_of(&r.value, "/id")))
    });
    std::thread::sleep(Duration::from_millis(300));
    let events = daemon.events_for(pid);
    assert!(
        all_resolved,
        "some episodes were never resolved after the program exited"
    );

    check_episodes(&events);
    let hangs: Vec<&Received> = events
        .iter()
        .filter(|r| r.value["event"] == "hang")
        .collect();
    let ids: HashSet<&str> = hangs.iter().map(|r| str_of(&r.value, "/id")).collect();
    assert_eq!(ids.len(), hangs.len(), "every hang must have its own id");

    for r in &hangs {
        assert_eq!(
            r.value["blocked_since_before_start"], false,
            "every episode here began after the daemon attached (main was woken by \"go\"): {}",
            r.value
        );
    }

    let worker_hangs: Vec<&&Received> = hangs
        .iter()
        .filter(|r| distinct.contains(&(u64_of(&r.value, "/tid") as u32)))
        .collect();
    assert!(
        worker_hangs.len() >= 3,
        "expected at least 3 hangs of the {GENERATIONS} blocked generations ({block_ms} ms each, 1 s threshold), got {}",
        worker_hangs.len()
    );
    for r in &worker_hangs {
        let v = &r.value;
        assert_eq!(str_of(v, "/kind"), "off_cpu", "{v}");
        assert_eq!(
            str_of(v, "/wait/syscall"),
            "futex",
            "pthread_cond_timedwait waits in futex: {v}"
        );
        assert_eq!(
            v["wait"]["futex"]["has_timeout"], true,
            "pthread_cond_timedwait has a timeout: {v}"
        );
    }

    // Per tid, episodes follow one another: the next hang only after the previous resolved.
    // tid -> episodes as (index of the hang, index of its resolved, id), in stream order.
    type Episodes<'a> = Vec<(usize, Option<usize>, &'a str)>;
    let mut per_tid: HashMap<u64, Episodes> = HashMap::new();
    for (index, r) in events.iter().enumerate() {
        if r.value["event"] == "hang" {
            let id = str_of(&r.value, "/id");
            let resolved = events
                .iter()
                .position(|e| e.value["event"] == "resolved" && str_of(&e.value, "/id") == id);
            per_tid
                .entry(u64_of(&r.value, "/tid"))
                .or_default()
                .push((index, resolved, id));
        }
    }
    for (tid, episodes) in &per_tid {
        for pair in episodes.windows(2) {
            let (_, previous_resolved, previous_id) = pair[0];
            let (next_hang, _, next_id) = pair[1];
            assert!(
                previous_resolved.is_some_and(|resolved| resolved < next_hang),
                "tid {tid}: episode {next_id} began before episode {previous_id} was resolved"
            );
        }
    }
    let reused_reported = per_tid
        .iter()
        .any(|(tid, e)| e.len() >= 2 && distinct.contains(&(*tid as u32)));
    assert!(
        reused_reported,
        "no reused tid was reported twice: {per_tid:?}"
    );

    let mut daemon = daemon;
    daemon.stop();
}
