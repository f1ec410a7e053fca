//! Rules from a config file, on real programs (`hangwatch run --config FILE`):
//!
//! - a `[[rule]]` selecting abba.c by `comm` with `off_cpu = "1s"`: both deadlocked
//!   workers are reported as `off_cpu` with that threshold, no `--pid` needed;
//! - the same lock_read.c binary under two names, `lock_wait` at 1 s for every process
//!   (the file's `lock_wait_threshold`), and a rule `exe = "**/quiet_lock"` with
//!   `lock_wait = "off"`: `loud_lock`'s waiter is reported (with its wait channel),
//!   `quiet_lock` never is, and neither gets `off_cpu` (not selected).
//!
//! And, without root: `check-config` and `run --config` refuse a bad file with its
//! `FILE:LINE:COL` and the reason, before anything is loaded.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use self::common::*;

const CONFIG: &str = r#"
# Every process: lock_wait after 1 s (the default is 5 s).
lock_wait_threshold = "1s"

[[rule]]
comm = "abba"
off_cpu = "1s"

[[rule]]
exe = "**/quiet_lock"
lock_wait = "off"
"#;

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("hangwatch.toml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// lock_read.c under another name (its comm and exe), started and ready.
fn lock_read_as(dir: &Path, name: &str) -> (Program, u32) {
    let path = dir.join(name);
    std::fs::copy(compile("lock_read"), &path)
        .unwrap_or_else(|e| panic!("copying lock_read to {}: {e}", path.display()));
    let mut program = Program::start(&path, &[]);
    let t = Duration::from_secs(5);
    program.expect_number("pid", t);
    program.expect_number("holder", t);
    let waiter = u32::try_from(program.expect_number("waiter", t)).expect("tid");
    program.expect_line("ready", t);
    (program, waiter)
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn a_config_rule_selects_by_comm_and_another_silences_lock_wait() {
    require_root();
    let dir = tempfile::Builder::new()
        .prefix("hangwatch-config")
        .tempdir()
        .expect("temp dir");
    let config = write_config(dir.path(), CONFIG);
    let (quiet, quiet_waiter) = lock_read_as(dir.path(), "quiet_lock");
    let (loud, loud_waiter) = lock_read_as(dir.path(), "loud_lock");
    let mut abba = Abba::start();
    let config_arg = config.to_string_lossy().into_owned();
    let mut daemon = Daemon::start(&["--config", &config_arg]);
    let attached = Instant::now();
    let lock = abba.deadlock();

    for tid in [lock.tid_a, lock.tid_b] {
        let hang = daemon.wait_for_event(
            &format!("off_cpu for abba worker {tid}"),
            Duration::from_secs(5),
            |v| is_event(v, "hang", "off_cpu", tid),
        );
        let v = &hang.value;
        assert_eq!(str_of(v, "/comm"), "abba", "{v}");
        assert_eq!(
            u64_of(v, "/threshold_ms"),
            1000,
            "the rule's threshold: {v}"
        );
        assert_eq!(str_of(v, "/wait/syscall"), "futex", "{v}");
    }

    let hang = daemon.wait_for_event(
        "lock_wait for loud_lock's waiter",
        Duration::from_secs(5),
        |v| is_event(v, "hang", "lock_wait", loud_waiter),
    );
    let v = &hang.value;
    assert_eq!(u64_of(v, "/pid"), u64::from(loud.pid), "{v}");
    assert_eq!(
        u64_of(v, "/threshold_ms"),
        1000,
        "the file's threshold: {v}"
    );
    assert!(
        str_of(v, "/wait/wchan").contains("futex"),
        "the wait channel of a futex wait: {v}"
    );
    // Derived from the report's kernel stack, it is what the kernel says (/proc).
    let proc_wchan =
        std::fs::read_to_string(format!("/proc/{}/task/{loud_waiter}/wchan", loud.pid))
            .unwrap_or_default();
    assert_eq!(str_of(v, "/wait/wchan"), proc_wchan.trim(), "{v}");

    // Three seconds after the attach, quiet_lock's waiter would have been reported twice
    // over with lock_wait at 1 s.
    if let Some(left) = Duration::from_secs(3).checked_sub(attached.elapsed()) {
        thread::sleep(left);
    }
    let quiet_events = daemon.events_for(quiet.pid);
    assert!(
        quiet_events.is_empty(),
        "quiet_lock (waiter {quiet_waiter}) is silenced by its rule, yet:\n{}",
        daemon.dump(Some(&[quiet.pid]))
    );
    let loud_events = daemon.events_for(loud.pid);
    assert!(
        loud_events
            .iter()
            .all(|r| str_of(&r.value, "/kind") == "lock_wait"),
        "loud_lock is not selected for off_cpu:\n{}",
        daemon.dump(Some(&[loud.pid]))
    );
    check_episodes(&daemon.events_for(abba.pid()));
    check_episodes(&loud_events);
    daemon.stop();
}

/// Runs the hangwatch binary with `args`; returns its exit code and stderr.
fn hangwatch(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(HANGWATCH)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running hangwatch {args:?}: {e}"));
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout),
    )
}

#[test]
fn check_config_prints_the_rules_or_refuses_with_the_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = write_config(dir.path(), CONFIG);
    let good = good.to_string_lossy();
    let (code, out) = hangwatch(&["check-config", &good]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("lock_wait      1s"), "{out}");
    assert!(
        out.contains(&format!(
            "2. {good}:9: exe = \"**/quiet_lock\" -> lock_wait off"
        )),
        "{out}"
    );

    let bad_path = dir.path().join("bad.toml");
    std::fs::write(
        &bad_path,
        "[[rule]]\ncomm = \"abba\"\noff_cpu = \"5 sekonds\"\n",
    )
    .expect("writing bad.toml");
    let bad = bad_path.to_string_lossy();
    let (code, out) = hangwatch(&["check-config", &bad]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.starts_with(&format!("{bad}:3:11: ")), "{out}");
    assert!(out.contains("sekonds"), "{out}");
    // The daemon refuses it the same way, before it needs any privilege.
    let (code, out) = hangwatch(&["run", "--config", &bad]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&format!("{bad}:3:11: ")), "{out}");
}
