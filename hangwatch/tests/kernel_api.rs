//! The daemon's surfaces on a real hang: `/metrics` scraped and parsed while abba.c is
//! deadlocked, every CLI subcommand (table and `--json`) against the running daemon, a live
//! thread dump of a process whose threads wait in known ways, the webhook (one `hang` and
//! one `resolved` per episode; a receiver that never answers delays nothing), and wrong
//! API inputs answered with 4xx JSON errors.

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    thread,
    time::{Duration, Instant},
};

use self::common::*;

const THRESHOLD: &str = "1s";
const THRESHOLD_MS: u64 = 1000;
/// The detection budget (threshold + 0.5 s) plus slack for a loaded 2-CPU machine.
const DETECTION_LIMIT: Duration = Duration::from_millis(THRESHOLD_MS + 500 + 1500);

/// abba deadlocked under a daemon watching it with a 1 s off_cpu threshold; returns once
/// both workers' hangs are on stdout.
struct LiveHang {
    abba: Abba,
    lock: Deadlock,
    daemon: Daemon,
    endpoint: String,
    /// Episode id by worker tid.
    ids: HashMap<u32, String>,
}

fn live_hang(extra: &[&str]) -> LiveHang {
    require_root();
    let mut abba = Abba::start();
    let pid = abba.pid().to_string();
    // An off_cpu-only scenario: the ABBA workers are also a deadlock (kernel_locks.rs
    // tests that), whose episode would be a second one for worker-a.
    let mut args = vec![
        "--pid",
        &pid,
        "--threshold",
        THRESHOLD,
        "--deadlock-threshold",
        "off",
        "--lock-wait-threshold",
        "off",
    ];
    args.extend_from_slice(extra);
    let daemon = Daemon::start(&args);
    let endpoint = daemon.endpoint();
    let lock = abba.deadlock();
    let mut ids = HashMap::new();
    for tid in [lock.tid_a, lock.tid_b] {
        let hang = daemon.wait_for_event(
            &format!("hang/off_cpu for tid {tid}"),
            DETECTION_LIMIT + Duration::from_secs(2),
            |v| is_event(v, "hang", "off_cpu", tid),
        );
        ids.insert(tid, str_of(&hang.value, "/id").to_owned());
    }
    LiveHang {
        abba,
        lock,
        daemon,
        endpoint,
        ids,
    }
}

impl LiveHang {
    /// Kills abba and waits for both workers' episodes to resolve on stdout.
    fn end(&mut self) {
        self.abba.program.kill();
        for tid in [self.lock.tid_a, self.lock.tid_b] {
            self.daemon.wait_for_event(
                &format!("resolved for tid {tid}"),
                Duration::from_secs(5),
                |v| is_event(v, "resolved", "off_cpu", tid),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// /metrics
// ---------------------------------------------------------------------------------------

#[test]
#[ignore = "needs root: loads BPF programs"]
fn metrics_while_a_hang_is_live() {
    let mut live = live_hang(&[]);
    // The metrics follow each scan, the events on stdout come during it: wait for a scan
    // that ended after the events were seen, so its figures include them.
    let scans = |s: &prometheus_parse::Scrape| {
        sample(s, "hangwatch_scan_duration_seconds_count", &[]).unwrap_or(0.0)
    };
    let seen = scans(&scrape(&live.endpoint));
    let mut s = scrape(&live.endpoint);
    let deadline = Instant::now() + scaled(Duration::from_secs(3));
    while scans(&s) < seen + 2.0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        s = scrape(&live.endpoint);
    }

    // Conventions: our prefix (or the standard process_*), counters end in _total.
    for family in &s.docs {
        let (name, _) = family;
        assert!(
            name.starts_with("hangwatch_") || name.starts_with("process_"),
            "metric {name} lacks the hangwatch_ prefix"
        );
    }
    for sample in &s.samples {
        if let prometheus_parse::Value::Counter(_) = sample.value {
            assert!(
                sample.metric.ends_with("_total") || sample.metric.starts_with("process_"),
                "counter {} does not end in _total",
                sample.metric
            );
        }
    }

    // The hang, live. abba's main thread may be hung as well (blocked in pthread_join).
    let hung = value(
        &s,
        "hangwatch_hung_threads",
        &[("kind", "off_cpu"), ("comm", "abba")],
    );
    assert!((2.0..=3.0).contains(&hung), "hung_threads {hung}");
    let started = value(&s, "hangwatch_hangs_total", &[("kind", "off_cpu")]);
    assert!(started >= 2.0, "hangs_total {started}");
    assert_eq!(
        value(&s, "hangwatch_hangs_total", &[("kind", "d_state")]),
        0.0
    );
    assert_eq!(
        value(
            &s,
            "hangwatch_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // The daemon's own health.
    assert!(
        value(
            &s,
            "hangwatch_bpf_events_total",
            &[("probe", "sched_switch")]
        ) > 0.0
    );
    // The futex tracepoints are optional and off by default: nothing counted.
    assert_eq!(
        value(&s, "hangwatch_bpf_events_total", &[("probe", "futex")]),
        0.0
    );
    assert_eq!(value(&s, "hangwatch_bpf_records_deferred_total", &[]), 0.0);
    assert_eq!(
        value(&s, "hangwatch_probe_attached", &[("probe", "sched_switch")]),
        1.0
    );
    assert!(value(&s, "hangwatch_scan_duration_seconds_count", &[]) > 0.0);
    assert!(value(&s, "hangwatch_walk_duration_seconds_count", &[]) > 0.0);
    assert!(value(&s, "hangwatch_report_duration_seconds_count", &[]) >= 2.0);
    assert!(
        value(
            &s,
            "hangwatch_symbolize_seconds_total",
            &[("stack", "kernel")]
        ) > 0.0
    );
    assert!(value(&s, "hangwatch_user_stacks_total", &[]) >= 2.0);
    assert!(value(&s, "hangwatch_tracked_threads", &[]) >= 2.0);
    assert_eq!(value(&s, "hangwatch_watched_processes", &[]), 1.0);
    assert!(value(&s, "process_resident_memory_bytes", &[]) > 0.0);
    assert_eq!(
        value(
            &s,
            "hangwatch_sink_dropped_events_total",
            &[("sink", "stdout"), ("reason", "queue_full")]
        ),
        0.0
    );

    // Ended: the workers' series are gone, their durations observed.
    live.end();
    let ended = Instant::now();
    let mut s = scrape(&live.endpoint);
    while sample(&s, "hangwatch_hung_threads", &[("comm", "abba")]).is_some_and(|n| n > 1.0)
        && ended.elapsed() < scaled(Duration::from_secs(3))
    {
        thread::sleep(Duration::from_millis(100));
        s = scrape(&live.endpoint);
    }
    let left = sample(&s, "hangwatch_hung_threads", &[("comm", "abba")]).unwrap_or(0.0);
    assert!(
        left <= 1.0,
        "hung_threads still {left} after abba was killed"
    );
    let count = value(
        &s,
        "hangwatch_hang_duration_seconds_count",
        &[("kind", "off_cpu")],
    );
    let sum = value(
        &s,
        "hangwatch_hang_duration_seconds_sum",
        &[("kind", "off_cpu")],
    );
    assert!(count >= 2.0, "duration count {count}");
    assert!(
        sum >= 2.0 * 1.0,
        "two episodes of at least 1 s each: sum {sum}"
    );
    assert!(
        value(
            &s,
            "hangwatch_events_total",
            &[("event", "resolved"), ("kind", "off_cpu")]
        ) >= 2.0
    );
    live.daemon.stop();
}

// ---------------------------------------------------------------------------------------
// The CLI
// ---------------------------------------------------------------------------------------

#[test]
#[ignore = "needs root: loads BPF programs"]
fn every_cli_command_against_a_live_hang() {
    let mut live = live_hang(&[]);
    let ep = live.endpoint.clone();
    let pid = live.abba.pid().to_string();
    let (tid_a, tid_b) = (live.lock.tid_a, live.lock.tid_b);
    let id_a = live.ids[&tid_a].clone();

    // `watch` from now on: the resolved events must come through it.
    let watcher = thread::spawn({
        let ep = ep.clone();
        move || {
            let mut child = std::process::Command::new(HANGWATCH)
                .args(["watch", "--json"])
                .env("HANGWATCH_ENDPOINT", &ep)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::inherit())
                .spawn()
                .expect("starting watch");
            let pid = child.id();
            let stdout = child.stdout.take().expect("piped");
            let (tx, rx) = std::sync::mpsc::channel();
            thread::spawn(move || {
                use std::io::BufRead as _;
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            (pid, child, rx)
        }
    });
    let (watch_pid, mut watch_child, watch_lines) = watcher.join().expect("watch thread");
    // Let it connect before the events it must see.
    thread::sleep(Duration::from_millis(300));

    // list: a row per worker, with the first application frame.
    let list = cli_ok(&ep, &["list"]);
    let header = list.stdout.lines().next().unwrap_or("");
    for column in ["ID", "KIND", "PROCESS", "TID", "FOR", "WHERE"] {
        assert!(header.contains(column), "list header: {header}");
    }
    for (tid, func) in [(tid_a, "worker_a"), (tid_b, "worker_b")] {
        let row = list
            .stdout
            .lines()
            .find(|l| l.contains(&live.ids[&tid]))
            .unwrap_or_else(|| panic!("no row for {tid}:\n{}", list.stdout));
        assert!(row.contains("off_cpu"), "{row}");
        assert!(row.contains(&format!("abba[{pid}]")), "{row}");
        assert!(row.contains(&tid.to_string()), "{row}");
        assert!(row.contains(&format!("{func} at ")), "{row}");
        assert!(row.contains("abba.c:"), "{row}");
    }
    let json = cli_ok(&ep, &["list", "--json"]).json();
    let hangs = json["hangs"].as_array().expect("hangs array");
    for tid in [tid_a, tid_b] {
        assert!(
            hangs
                .iter()
                .any(|h| h["tid"] == tid && h["kind"] == "off_cpu"),
            "{json}"
        );
    }
    let filtered = cli_ok(&ep, &["list", "--json", "--kind", "d_state"]).json();
    assert_eq!(filtered["hangs"].as_array().map(Vec::len), Some(0));
    let check = cli(&ep, &["list", "--exit-code"]);
    assert_eq!(
        check.code,
        Some(3),
        "list --exit-code with hangs: {check:?}"
    );

    // show: the whole report with both stacks.
    let show = cli_ok(&ep, &["show", &id_a]);
    let text = &show.stdout;
    assert!(
        text.starts_with(&format!(
            "HUNG off_cpu: abba[{pid}] thread 'worker-a' (tid {tid_a})"
        )),
        "{text}"
    );
    assert!(
        text.contains("futex FUTEX_WAIT_PRIVATE (no timeout)"),
        "{text}"
    );
    assert!(text.contains("user stack:"), "{text}");
    assert!(
        text.contains("> #"),
        "an application frame is marked: {text}"
    );
    assert!(text.contains("worker_a at "), "{text}");
    assert!(text.contains("kernel stack:"), "{text}");
    assert!(text.contains("futex"), "{text}");
    let one = cli_ok(&ep, &["show", &id_a, "--json"]).json();
    assert_eq!(one["id"], id_a.as_str());
    assert!(
        one["kernel_stack"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
    );
    assert!(one["user_stack"].as_array().is_some_and(|f| !f.is_empty()));
    let missing = cli(&ep, &["show", "off_cpu-1-0"]);
    assert_eq!(missing.code, Some(1));
    assert!(missing.stderr.contains("no episode"), "{missing:?}");

    // threads: the workers off-CPU in futex, with their episode ids.
    let threads = cli_ok(&ep, &["threads", &pid]);
    for tid in [tid_a, tid_b] {
        let row = threads
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&tid.to_string()))
            .unwrap_or_else(|| panic!("no row for {tid}:\n{}", threads.stdout));
        assert!(row.contains("S interruptible sleep"), "{row}");
        assert!(row.contains("futex FUTEX_WAIT_PRIVATE"), "{row}");
        assert!(row.contains(&live.ids[&tid]), "{row}");
    }
    let dump = cli_ok(&ep, &["threads", &pid, "--json"]).json();
    assert_eq!(dump["threads"].as_array().map(Vec::len), Some(3), "{dump}");

    // status.
    let status = cli_ok(&ep, &["status"]);
    assert!(
        status
            .stdout
            .contains("2 of 2 attached (7 optional not asked for)"),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains("ready"), "{}", status.stdout);
    let st = cli_ok(&ep, &["status", "--json"]).json();
    assert_eq!(st["ready"], true);
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    assert!(st["open_episodes"].as_u64() >= Some(2), "{st}");
    assert!(st["scans"].as_u64() > Some(0), "{st}");
    assert!(
        st["bpf_counters"]["sched_switch_events"].as_u64() > Some(0),
        "{st}"
    );

    // The end: history, watch, list --exit-code.
    live.end();
    let history = cli_ok(&ep, &["history"]);
    for tid in [tid_a, tid_b] {
        let row = history
            .stdout
            .lines()
            .find(|l| l.contains(&live.ids[&tid]))
            .unwrap_or_else(|| panic!("no history row for {tid}:\n{}", history.stdout));
        assert!(row.contains("exited"), "{row}");
    }
    let h = cli_ok(&ep, &["history", "--json", "-n", "10"]).json();
    let ended = h["history"].as_array().expect("history array");
    assert!(
        ended
            .iter()
            .any(|e| e["id"] == id_a.as_str() && e["resolution"] == "exited"),
        "{h}"
    );
    let shown = cli_ok(&ep, &["show", &id_a]);
    assert!(
        shown.stdout.starts_with("ENDED (exited)"),
        "{}",
        shown.stdout
    );
    let quiet = cli(&ep, &["list", "--exit-code"]);
    // abba's main thread may still be listed until its resolved event: wait for it.
    let mut quiet_code = quiet.code;
    let deadline = Instant::now() + scaled(Duration::from_secs(3));
    while quiet_code != Some(0) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
        quiet_code = cli(&ep, &["list", "--exit-code"]).code;
    }
    assert_eq!(quiet_code, Some(0), "list --exit-code with no hang");

    let mut seen = Vec::new();
    let deadline = Instant::now() + scaled(Duration::from_secs(5));
    while seen.len() < 2 && Instant::now() < deadline {
        if let Ok(line) = watch_lines.recv_timeout(Duration::from_millis(200)) {
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("watch --json printed a non-JSON line ({e}): {line}"));
            if v["event"] == "resolved" && (v["tid"] == tid_a || v["tid"] == tid_b) {
                seen.push(v);
            }
        }
    }
    assert_eq!(seen.len(), 2, "watch saw {seen:?}");

    // Table `watch` prints one line per event.
    let watch_text = thread::spawn({
        let ep = ep.clone();
        move || cli(&ep, &["watch"])
    });
    // Time for `watch` to connect (longer under emulation).
    thread::sleep(scaled(Duration::from_millis(300)));
    live.daemon.stop();
    let run = watch_text.join().expect("watch");
    assert_eq!(
        run.code,
        Some(1),
        "watch ends with an error when the daemon stops"
    );
    assert!(run.stderr.contains("closed the event stream"), "{run:?}");
    signal(watch_pid, libc::SIGKILL);
    let _ = watch_child.wait();

    // Nobody listening any more.
    let down = cli(&ep, &["list"]);
    assert_eq!(down.code, Some(1));
    assert!(
        down.stderr.contains("cannot reach the hangwatch daemon"),
        "{down:?}"
    );
    let bad = cli("https://example", &["status"]);
    assert!(bad.stderr.contains("expected unix:PATH"), "{bad:?}");
}

// ---------------------------------------------------------------------------------------
// threads PID
// ---------------------------------------------------------------------------------------

#[test]
#[ignore = "needs root: loads BPF programs"]
fn threads_lists_every_thread_of_a_process_with_its_state() {
    require_root();
    let daemon = Daemon::start(&[]);
    let ep = daemon.endpoint();
    let path = compile("states");
    let mut states = Program::start(&path, &[]);
    let pid = states.expect_number("pid", Duration::from_secs(5));
    let mut tids: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let line = states.next_line(Duration::from_secs(5));
        if line == "ready" {
            break;
        }
        if let Some(rest) = line.strip_prefix("thread ") {
            let (name, tid) = rest.split_once(' ').expect("thread NAME TID");
            tids.insert(name.to_owned(), tid.parse().expect("tid"));
        }
    }
    let ready = Instant::now();
    // Let every thread reach its wait (the vfork child, the nanosleep...).
    thread::sleep(Duration::from_millis(700));

    let dump = cli_ok(&ep, &["threads", &pid.to_string(), "--json"]).json();
    let threads = dump["threads"].as_array().expect("threads");
    let listed: Vec<u64> = threads.iter().filter_map(|t| t["tid"].as_u64()).collect();
    let expected: Vec<u64> = tids_of(pid);
    assert_eq!(
        listed, expected,
        "every thread of /proc/{pid}/task, once: {dump}"
    );
    assert_eq!(listed.len(), 6);
    let by_name = |name: &str| -> &Value {
        threads
            .iter()
            .find(|t| t["tid"].as_u64() == tids.get(name).copied())
            .unwrap_or_else(|| panic!("no thread {name}: {dump}"))
    };
    let expectations = [
        ("sleeper", "S", Some("clock_nanosleep")),
        ("locker", "S", Some("futex")),
        ("reader", "S", Some("read")),
        ("vforker", "D", None),
        ("spinner", "R", None),
    ];
    let waited_at_least = ready.elapsed().as_millis() as u64 - 200;
    // Before Linux 6.9 no pidfd can name a thread, and the probes' per-thread state is read
    // by pidfd: the dump says so and has what /proc tells.
    let probe_state = has_thread_pidfds();
    if !probe_state {
        assert_eq!(
            dump["state_error"], "this kernel has no thread pidfds (Linux 6.9+)",
            "{dump}"
        );
    }
    for (name, state, syscall) in expectations {
        let t = by_name(name);
        assert_eq!(t["name"], name, "{t}");
        assert_eq!(t["state"], state, "{name}: {t}");
        if let Some(syscall) = syscall {
            assert_eq!(t["wait"]["syscall"], syscall, "{name}: {t}");
        }
        if state != "R" && probe_state {
            assert_eq!(t["on_cpu"], false, "{name}: {t}");
            let off = t["off_cpu_ms"].as_u64().unwrap_or(0);
            assert!(off >= waited_at_least, "{name} off-CPU {off} ms: {t}");
        }
    }
    let locker = by_name("locker");
    assert_eq!(
        locker["wait"]["futex"]["op"], "FUTEX_WAIT_PRIVATE",
        "{locker}"
    );
    assert_eq!(locker["wait"]["futex"]["has_timeout"], false, "{locker}");
    // main, in read(stdin).
    let main = threads
        .iter()
        .find(|t| t["tid"].as_u64() == Some(pid))
        .expect("main thread");
    assert_eq!(main["wait"]["syscall"], "read", "{main}");

    // The table, and the stacks.
    let table = cli_ok(&ep, &["threads", &pid.to_string()]);
    assert!(table.stdout.contains("6 threads"), "{}", table.stdout);
    for (name, state, _) in expectations {
        let tid = tids[name].to_string();
        let row = table
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&tid))
            .unwrap_or_else(|| panic!("no row for {name}:\n{}", table.stdout));
        assert!(row.contains(name), "{row}");
        assert!(row.contains(&format!(" {state} ")), "{row}");
    }
    let stacks = cli_ok(&ep, &["threads", &pid.to_string(), "--stacks", "--json"]).json();
    assert!(stacks["stacks_error"].is_null(), "{stacks}");
    for t in stacks["threads"].as_array().expect("threads") {
        if t["name"] == "spinner" {
            continue; // on a CPU: no saved user registers to unwind from
        }
        assert!(
            t["kernel_stack"].as_array().is_some_and(|f| !f.is_empty()),
            "no kernel stack: {t}"
        );
    }
    let locker = stacks["threads"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == "locker"))
        .expect("locker");
    let frames: Vec<&str> = locker["user_stack"]
        .as_array()
        .map(|f| f.iter().filter_map(|f| f["symbol"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        frames.contains(&"locker"),
        "locker's user stack: {frames:?} (why, if empty: {})",
        locker["user_stack_error"]
    );
    let text = cli_ok(&ep, &["threads", &pid.to_string(), "--stacks"]);
    assert!(text.stdout.contains("user stack:"), "{}", text.stdout);

    // A thread id resolves to its process.
    let via_tid = cli_ok(&ep, &["threads", &tids["sleeper"].to_string(), "--json"]).json();
    assert_eq!(via_tid["pid"].as_u64(), Some(pid));
    states.kill();
}

fn tids_of(pid: u64) -> Vec<u64> {
    tids(u32::try_from(pid).expect("pid fits u32"))
        .into_iter()
        .map(u64::from)
        .collect()
}

// ---------------------------------------------------------------------------------------
// The webhook
// ---------------------------------------------------------------------------------------

#[test]
#[ignore = "needs root: loads BPF programs"]
fn the_webhook_gets_one_hang_and_one_resolved_per_episode() {
    let receiver = WebhookReceiver::start(ReceiverMode::Accept);
    let mut live = live_hang(&["--webhook", &receiver.url]);
    live.end();
    let ids: Vec<String> = live.ids.values().cloned().collect();
    let complete = receiver.wait_for(Duration::from_secs(10), |bodies| {
        ids.iter().all(|id| {
            bodies
                .iter()
                .any(|r| r.value["id"] == id.as_str() && r.value["event"] == "resolved")
        })
    });
    let bodies = receiver.received();
    assert!(
        complete,
        "the receiver did not get both resolved events: {bodies:?}"
    );
    // A moment for any duplicate to arrive.
    thread::sleep(Duration::from_millis(500));
    let bodies = receiver.received();
    for id in &ids {
        let events: Vec<&str> = bodies
            .iter()
            .filter(|r| r.value["id"] == id.as_str())
            .map(|r| r.value["event"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(
            events.iter().filter(|e| **e == "hang").count(),
            1,
            "{id}: {events:?}"
        );
        assert_eq!(
            events.iter().filter(|e| **e == "resolved").count(),
            1,
            "{id}: {events:?}"
        );
        assert_eq!(events.first(), Some(&"hang"), "{id}: {events:?}");
        assert_eq!(events.last(), Some(&"resolved"), "{id}: {events:?}");
    }
    // The same events as on stdout.
    let stdout = live.daemon.events();
    for body in &bodies {
        assert!(
            stdout.iter().any(|r| r.value == body.value),
            "webhook body not on stdout: {}",
            body.value
        );
    }
    let s = scrape(&live.endpoint);
    assert!(
        value(
            &s,
            "hangwatch_webhook_requests_total",
            &[("result", "success")]
        ) >= 4.0
    );
    live.daemon.stop();
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn a_webhook_that_never_answers_does_not_delay_detection() {
    let silent = WebhookReceiver::start(ReceiverMode::NeverAnswer);
    detection_is_on_time_with_webhook(&silent.url);
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn a_webhook_that_is_down_does_not_delay_detection() {
    // A port that was free a moment ago: connections are refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", closed.local_addr().expect("addr"));
    drop(closed);
    detection_is_on_time_with_webhook(&url);
}

fn detection_is_on_time_with_webhook(url: &str) {
    let mut abba = Abba::start();
    let pid = abba.pid().to_string();
    let mut daemon = Daemon::start(&["--pid", &pid, "--threshold", THRESHOLD, "--webhook", url]);
    let endpoint = daemon.endpoint();
    let lock = abba.deadlock();
    for tid in [lock.tid_a, lock.tid_b] {
        let hang = daemon.wait_for_event(
            &format!("hang for tid {tid}"),
            DETECTION_LIMIT + Duration::from_secs(2),
            |v| is_event(v, "hang", "off_cpu", tid),
        );
        let arrival = hang.at.saturating_duration_since(lock.at);
        let limit = scaled(DETECTION_LIMIT);
        assert!(
            arrival <= limit,
            "hang for tid {tid} arrived {arrival:?} after the deadlock (limit {limit:?}) with the webhook at {url}"
        );
    }
    // Still resolving on time, while the webhook thread waits on the silent receiver.
    let killed = Instant::now();
    abba.program.kill();
    for tid in [lock.tid_a, lock.tid_b] {
        let resolved = daemon.wait_for_event(
            &format!("resolved for tid {tid}"),
            Duration::from_secs(3),
            |v| is_event(v, "resolved", "off_cpu", tid),
        );
        assert!(resolved.at.saturating_duration_since(killed) < scaled(Duration::from_secs(2)));
    }
    // The API answers meanwhile, and the failures are counted once the attempts time out.
    let s = scrape(&endpoint);
    assert!(value(&s, "hangwatch_hangs_total", &[("kind", "off_cpu")]) >= 2.0);
    let counted = wait_until(Duration::from_secs(15), || {
        let s = scrape(&endpoint);
        sample(
            &s,
            "hangwatch_webhook_requests_total",
            &[("result", "error")],
        )
        .is_some_and(|n| n >= 1.0)
    });
    assert!(counted, "no failed webhook request counted");
    daemon.stop();
}

// ---------------------------------------------------------------------------------------
// Wrong inputs
// ---------------------------------------------------------------------------------------

#[test]
#[ignore = "needs root: loads BPF programs"]
fn wrong_api_inputs_get_4xx_json_errors() {
    require_root();
    let mut daemon = Daemon::start(&[]);
    let ep = daemon.endpoint();
    assert_eq!(http("GET", &format!("{ep}/healthz")).status, 200);
    let huge = "9".repeat(40);
    let long_id = "x".repeat(10_000);
    let cases: Vec<(&str, String, u16)> = vec![
        ("GET", "/api/v1/hangs/off_cpu-1-deadbeef".into(), 404),
        ("GET", "/api/v1/hangs/%00%01".into(), 400),
        ("GET", format!("/api/v1/hangs/{long_id}"), 400),
        ("GET", "/api/v1/threads/abc".into(), 400),
        ("GET", "/api/v1/threads/12abc".into(), 400),
        ("GET", format!("/api/v1/threads/{huge}"), 400),
        ("GET", "/api/v1/threads/4194304".into(), 404),
        ("GET", "/api/v1/threads/1?stacks=please".into(), 400),
        ("GET", format!("/api/v1/history?limit={huge}"), 400),
        ("GET", "/api/v1/history?limit=1000000".into(), 400),
        ("GET", "/api/v1/history?limit=-5".into(), 400),
        ("GET", "/api/v1/history?limit=".into(), 400),
        ("GET", "/api/v1/hangs?pid=0".into(), 400),
        ("GET", "/api/v1/hangs?sort=asc".into(), 400),
        ("GET", "/api/v1/nothing".into(), 404),
        ("POST", "/api/v1/hangs".into(), 405),
        ("PUT", "/metrics".into(), 405),
        ("DELETE", "/api/v1/history".into(), 405),
    ];
    for (method, path, expected) in &cases {
        let answer = http(method, &format!("{ep}{path}"));
        assert_eq!(answer.status, *expected, "{method} {path}: {}", answer.text);
        assert!(
            answer.json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path}: not a JSON error: {}",
            answer.text
        );
    }
    // Nothing broke: the daemon serves, and ends cleanly (no panic on stderr).
    assert_eq!(http("GET", &format!("{ep}/healthz")).status, 200);
    let s = scrape(&ep);
    let bad_requests: f64 = s
        .samples
        .iter()
        .filter(|x| {
            x.metric == "hangwatch_http_requests_total" && x.labels.get("code") == Some("400")
        })
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum();
    let text = http("GET", &format!("{ep}/metrics")).text;
    assert_eq!(bad_requests, 12.0, "400 answers counted by route:\n{text}");
    daemon.stop();
}
