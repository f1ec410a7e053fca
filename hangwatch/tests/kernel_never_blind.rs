//! Never blind: the daemon keeps detecting while a watched process resists every read of
//! its memory, while thousands of threads hang at once, and while the scan is stalled it
//! says so on /healthz. Real processes on a real frozen ext4 filesystem.

mod common;

use std::{
    path::Path,
    process::Command,
    sync::{Arc, atomic::AtomicBool},
    thread,
    time::{Duration, Instant},
};

use self::common::{
    frozen::FrozenFs,
    fuse::{Stall, StalledFuse},
    *,
};

/// These tests load the machine on purpose (frozen filesystems, thousands of threads, a
/// crowd of spinners): they run one at a time, or each would measure the others.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// The ids of the BPF programs process `pid` holds: its fds' `prog_id` (programs and
/// links alike), read while it runs (bpftool's `pids` column needs a bpftool built with
/// its BPF skeleton, which Debian's is not: it shows no pids at all).
fn program_ids_of(pid: u32) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    let mut ids: Vec<u64> = fds
        .filter_map(|fd| std::fs::read_to_string(fd.ok()?.path()).ok())
        .flat_map(|info| {
            info.lines()
                .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse().ok())
                .collect::<Vec<u64>>()
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Which of `ids` are still loaded, or None without bpftool. The kernel frees a program
/// from a work queue after its last reference is dropped, so the answer is the one of up
/// to 500 ms later (a program a live process holds stays, and is reported).
fn still_loaded(ids: &[u64]) -> Option<Vec<u64>> {
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        let left = loaded_now(ids)?;
        if left.is_empty() || Instant::now() >= deadline {
            return Some(left);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Which of `ids` are loaded right now (`bpftool -j prog show`), or None without bpftool.
fn loaded_now(ids: &[u64]) -> Option<Vec<u64>> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .ok()?;
    let programs: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        programs
            .as_array()?
            .iter()
            .filter_map(|p| p["id"].as_u64())
            .filter(|id| ids.contains(id))
            .collect(),
    )
}

/// GET `path` from the API at `endpoint` (`unix:/SOCKET`, as the daemon logs it, or
/// `http://HOST:PORT`), giving up after `patience`: the status code, or "gave up".
fn impatient_get(endpoint: &str, path: &str, patience: Duration) -> String {
    use std::io::{Read, Write};
    fn ask(mut stream: impl Read + Write, path: &str) -> String {
        let _ = write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: hangwatch\r\nConnection: close\r\n\r\n"
        );
        let mut head = [0u8; 12];
        match stream.read_exact(&mut head) {
            Ok(()) => String::from_utf8_lossy(&head[9..12]).into_owned(),
            // The listener's connection limit closes the connection at once.
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => "closed".into(),
            Err(_) => "gave up".into(),
        }
    }
    if let Some(socket) = endpoint.strip_prefix("unix:") {
        let Ok(stream) = std::os::unix::net::UnixStream::connect(socket) else {
            return "refused".into();
        };
        let _ = stream.set_read_timeout(Some(patience));
        let _ = stream.set_write_timeout(Some(patience));
        return ask(stream, path);
    }
    let host = endpoint.strip_prefix("http://").expect("unix: or http://");
    let Ok(stream) = std::net::TcpStream::connect(host) else {
        return "refused".into();
    };
    let _ = stream.set_read_timeout(Some(patience));
    let _ = stream.set_write_timeout(Some(patience));
    ask(stream, path)
}

/// The mm-lock stall: a process whose memory nobody can read. Its D-state threads are
/// reported on time with the reason their user stacks are missing; a deadlock started in
/// another process afterwards is reported on time; SIGTERM ends the daemon within a
/// second and leaves no program loaded.
#[test]
#[ignore = "needs root: loads BPF programs, mounts and freezes a filesystem"]
fn a_process_whose_mm_lock_is_stuck_is_reported_and_detection_goes_on() {
    require_root();
    let _serial = one_at_a_time();
    if !FrozenFs::tools_installed() {
        return;
    }
    let mut fs = FrozenFs::new();
    let file = fs.mountpoint.join("mapped");
    let mut daemon = Daemon::start(&["--d-state-threshold", "1s", "--scan-interval", "200ms"]);
    let mut stall = Program::start(&compile("mm_stall"), &[file.to_str().expect("utf-8")]);
    let pid = u32::try_from(stall.expect_number("pid", Duration::from_secs(5))).expect("pid");
    fs.freeze();
    stall.send("go");
    stall.expect_line("stalled", Duration::from_secs(5));
    let stall_pid = fs.hold(stall);
    assert_eq!(stall_pid, pid);
    // The proof that the process resists: reading its command line blocks.
    let blocked = Arc::new(AtomicBool::new(true));
    {
        let blocked = Arc::clone(&blocked);
        thread::spawn(move || {
            let _ = std::fs::read(format!("/proc/{pid}/cmdline"));
            blocked.store(false, std::sync::atomic::Ordering::SeqCst);
        });
    }
    thread::sleep(Duration::from_millis(500));
    assert!(
        blocked.load(std::sync::atomic::Ordering::SeqCst),
        "reading /proc/{pid}/cmdline should block while its mm lock is stuck"
    );

    let d_state = daemon.wait_for_event(
        "d_state of the stalled process",
        Duration::from_secs(8),
        |v| v["event"] == "hang" && v["kind"] == "d_state" && u64_of(v, "/pid") == u64::from(pid),
    );
    let v = &d_state.value;
    eprintln!("d_state report of the stalled process: {v}");
    let why = v["user_stack_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("could not be read within") || why.contains("resisted a read"),
        "the missing user stack says why: {v}"
    );
    assert!(
        !v["kernel_stack"].as_array().is_none_or(Vec::is_empty),
        "the kernel stack is there: {v}"
    );
    assert!(
        v["cmdline"].as_array().is_some_and(Vec::is_empty) && v["cmdline_error"].is_string(),
        "no command line, and why: {v}"
    );

    // Detection of everything else goes on.
    let (_, latency) =
        daemon.deadlock_beside("deadlock of abba during the stall", Duration::from_secs(6));
    eprintln!("deadlock reported {latency:?} after it formed, during the stall");
    assert!(
        latency < scaled(Duration::from_secs(4)),
        "a deadlock (1 s to confirm) is reported within seconds during the stall, not {latency:?}"
    );

    // SIGTERM: out within a second, and nothing of ours left loaded.
    let daemon_pid = daemon.pid;
    let ours = program_ids_of(daemon_pid);
    assert!(!ours.is_empty(), "the daemon holds its programs");
    daemon.stop();
    assert!(
        !Path::new(&format!("/proc/{daemon_pid}")).exists(),
        "the daemon is gone"
    );
    if let Some(left) = still_loaded(&ours) {
        assert_eq!(left, Vec::<u64>::new(), "programs left loaded");
    }
    let stopped = daemon
        .events_for(pid)
        .into_iter()
        .filter(|r| r.value["event"] == "resolved")
        .map(|r| r.value["resolution"].clone())
        .collect::<Vec<_>>();
    assert!(
        stopped.iter().any(|r| r == "daemon_stopped"),
        "the open episodes end daemon_stopped at SIGTERM: {stopped:?}"
    );
    fs.thaw();
}

/// A module on a stalled FUSE mount: abba.c run from a FUSE filesystem whose server stops
/// answering just after the deadlock forms, before it is confirmed, so the daemon's first
/// read of the binary (its unwind tables, through /proc/PID/map_files) waits on the dead
/// server. The deadlock is reported on time with its kernel stacks and waits; the user
/// stack of the first thread says why it is missing (naming the module), the second is
/// read around the module (its file resists, not the process) and says which module it
/// lacks, and the command line is there; a deadlock started in
/// another process meanwhile is reported on time with its user stacks; SIGTERM ends the
/// daemon within a second (its reader is stuck in a killable wait) and leaves no program
/// loaded.
#[test]
#[ignore = "needs root: loads BPF programs, mounts a FUSE filesystem"]
fn a_module_on_a_stalled_fuse_mount_is_reported_on_time_with_the_reason() {
    module_on_a_stalled_fuse_mount(Stall::Queued);
}

/// The same with a FUSE server that takes the daemon's request and never answers it (a
/// server stuck in its handler): the kernel then waits the request out uninterruptibly,
/// so the reader stays in D even through SIGKILL. That reader is the daemon's unwinder
/// process, which holds no BPF fd: reports and detection are the same, and at SIGTERM the
/// daemon exits within a second with its programs unloaded; the stuck unwinder ends when
/// the connection is aborted.
#[test]
#[ignore = "needs root: loads BPF programs, mounts a FUSE filesystem"]
fn a_fuse_server_that_took_the_read_cannot_keep_the_probes_attached() {
    module_on_a_stalled_fuse_mount(Stall::Taken);
}

fn module_on_a_stalled_fuse_mount(stall: Stall) {
    require_root();
    let _serial = one_at_a_time();
    if !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: no /dev/fuse (the fuse module is not loaded)");
        return;
    }
    let mut daemon = Daemon::start(&["--scan-interval", "200ms"]);
    let mut fuse = StalledFuse::serve(&compile("abba"), stall);
    let mut stalled = Program::start(&fuse.file, &["hold-forever"]);
    let pid = u32::try_from(stalled.expect_number("pid", Duration::from_secs(5))).expect("pid");
    // The deadlock forms; the mount stalls before it is confirmed (1 s) and reported.
    stalled.send("go");
    stalled.expect_line("ready", Duration::from_secs(5));
    let formed = Instant::now();
    fuse.stall();
    let stalled_after = formed.elapsed();
    fuse.hold(stalled);
    // The proof that the module cannot be read now: opening it through the process's
    // mapping blocks.
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mapping = maps
        .lines()
        .find(|l| l.contains(" r-xp ") && l.ends_with(fuse.file.to_str().expect("utf-8")))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no executable mapping of {}:\n{maps}", fuse.file.display()))
        .to_owned();
    let blocked = Arc::new(AtomicBool::new(true));
    {
        let blocked = Arc::clone(&blocked);
        thread::spawn(move || {
            let _ = std::fs::File::open(format!("/proc/{pid}/map_files/{mapping}"));
            blocked.store(false, std::sync::atomic::Ordering::SeqCst);
        });
    }
    thread::sleep(Duration::from_millis(300));
    assert!(
        blocked.load(std::sync::atomic::Ordering::SeqCst),
        "opening the module of {pid} should block while its FUSE server stalls"
    );

    let report = daemon.wait_for_event(
        "deadlock of the process on the stalled mount",
        Duration::from_secs(10),
        |v| v["event"] == "hang" && v["kind"] == "deadlock" && u64_of(v, "/pid") == u64::from(pid),
    );
    let latency = report.at.saturating_duration_since(formed);
    let v = &report.value;
    eprintln!(
        "deadlock on the stalled mount (stalled {stalled_after:?} after it formed) reported {latency:?} after it formed: {v}"
    );
    // Normally 1.2 s (1 s to confirm); the bound only catches a daemon that waited on the
    // mount (a blind one never reports).
    assert!(
        latency < scaled(Duration::from_secs(6)),
        "the deadlock is reported within seconds, not {latency:?}"
    );
    let module = fuse.file.to_str().expect("utf-8");
    for member in v["cycle"].as_array().expect("a cycle") {
        assert!(
            !member["kernel_stack"].as_array().is_none_or(Vec::is_empty),
            "each thread of the cycle has its kernel stack: {member}"
        );
        assert_eq!(str_of(member, "/wait/syscall"), "futex", "{member}");
        // A cycle member's stacks give one reason for both (the kernel stack is there).
        let why = str_of(member, "/stacks_error");
        let frames = member["user_stack"].as_array().map_or(0, Vec::len);
        // The first read waits on the module and misses its deadline: no user stack. From
        // then on the module's file resists, not the process: the next stacks are read
        // around it (the frames in libc), and say which module is missing.
        assert!(
            why.contains(module)
                && ((frames == 0 && why.contains("could not be read within"))
                    || (frames > 0 && why.contains("partial stack"))),
            "the reason names the module on the stalled mount: {member}"
        );
    }
    let partial = v["cycle"]
        .as_array()
        .expect("a cycle")
        .iter()
        .filter(|m| m["user_stack"].as_array().is_some_and(|s| !s.is_empty()))
        .count();
    assert!(
        partial >= 1,
        "the second thread's stack is read around the module: {v}"
    );
    assert!(
        !v["kernel_stack"].as_array().is_none_or(Vec::is_empty),
        "the kernel stack is there: {v}"
    );
    // Its memory is not held against the process: the command line is there.
    assert!(
        v["cmdline"]
            .as_array()
            .is_some_and(|args| args.iter().any(|a| a == "hold-forever")),
        "the command line is read (memory, not the stalled file): {v}"
    );

    // Detection and unwinding of everything else go on.
    let (deadlock, latency) =
        daemon.deadlock_beside("deadlock of abba during the stall", Duration::from_secs(6));
    let frames = deadlock.value["cycle"][0]["user_stack"]
        .as_array()
        .map_or(0, Vec::len);
    eprintln!(
        "unrelated deadlock reported {latency:?} after it formed, during the stall, {frames} user frames"
    );
    assert!(
        latency < scaled(Duration::from_secs(4)),
        "a deadlock (1 s to confirm) is reported within seconds during the stall, not {latency:?}"
    );
    assert!(
        frames > 0,
        "the other process's user stack is unwound: {}",
        deadlock.value
    );

    // SIGTERM with a reader stuck on the mount: the probes go within a second, and the
    // process with them unless its reader is in an uninterruptible wait.
    let daemon_pid = daemon.pid;
    let ours = program_ids_of(daemon_pid);
    assert!(!ours.is_empty(), "the daemon holds its programs");
    match stall {
        Stall::Queued => {
            daemon.stop();
            assert!(
                !Path::new(&format!("/proc/{daemon_pid}")).exists(),
                "the daemon is gone"
            );
            if let Some(left) = still_loaded(&ours) {
                assert_eq!(left, Vec::<u64>::new(), "programs left loaded");
            }
        }
        Stall::Taken => {
            // The reads of module files happen in the daemon's unwinder process: the one
            // that took the stalled read was killed at its deadline and waits in D, its
            // replacement unwound the rest. Neither holds a BPF fd.
            let helpers = children_of(daemon_pid);
            let stuck: Vec<u32> = helpers
                .iter()
                .copied()
                .filter(|&pid| task_state(pid) == Some('D'))
                .collect();
            eprintln!("unwinder processes of the daemon: {helpers:?}, in D: {stuck:?}");
            assert!(
                !stuck.is_empty(),
                "an unwinder waits on the stalled mount in D: {helpers:?}"
            );
            for &helper in &helpers {
                let bpf = bpf_fds_of(helper);
                assert!(bpf.is_empty(), "unwinder {helper} holds BPF fds: {bpf:?}");
            }
            let exited = daemon.signal_and_wait(libc::SIGTERM, Duration::from_secs(1));
            let left = still_loaded(&ours);
            eprintln!(
                "SIGTERM with an unwinder in an uninterruptible FUSE wait: exited {exited:?}; programs still loaded 1-1.5 s after it: {left:?} of {ours:?}"
            );
            assert!(
                exited.is_some(),
                "the daemon exits within a second, its stuck unwinder left behind"
            );
            if let Some(left) = left {
                assert_eq!(left, Vec::<u64>::new(), "programs left loaded");
            }
            // The abort of the connection frees the stuck unwinder; it is gone then (init
            // reaps it: the daemon is gone).
            drop(fuse);
            wait_until(Duration::from_secs(5), || {
                stuck
                    .iter()
                    .all(|&pid| task_state(pid).is_none_or(|s| s == 'Z'))
            });
            for &pid in &stuck {
                assert!(
                    task_state(pid).is_none_or(|s| s == 'Z'),
                    "unwinder {pid} ends once the connection is aborted"
                );
            }
        }
    }
}

/// The BPF objects (programs, maps, links) among `pid`'s open fds.
fn bpf_fds_of(pid: u32) -> Vec<String> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .map(|target| target.display().to_string())
        .filter(|target| target.contains("bpf"))
        .collect()
}

/// `/healthz` says when the daemon is blind: 503 while its scan is stalled (a test hook
/// stalls it while a file exists), 200 again after.
#[test]
#[ignore = "needs root: loads BPF programs"]
fn healthz_fails_while_the_scan_is_stalled() {
    require_root();
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().expect("temp dir");
    let stall = dir.path().join("stall");
    let stall_text = stall.to_str().expect("utf-8").to_owned();
    let daemon = Daemon::start_with_env(
        &[("HANGWATCH_TEST_STALL_FILE", &stall_text)],
        &["--listen", "127.0.0.1:0", "--scan-interval", "100ms"],
    );
    let health = format!("{}/healthz", daemon.endpoint());
    assert_eq!(http("GET", &health).status, 200);
    std::fs::write(&stall, "").expect("stall file");
    let failed = wait_until(Duration::from_secs(5), || {
        http("GET", &health).status == 503
    });
    let answer = http("GET", &health);
    assert!(
        failed,
        "/healthz should fail while the scan stalls: {} {}",
        answer.status, answer.text
    );
    assert!(answer.text.contains("blind"), "{}", answer.text);
    let metrics = http("GET", &format!("{}/metrics", daemon.endpoint())).text;
    assert!(
        metrics.contains("hangwatch_last_scan_timestamp_seconds"),
        "{metrics}"
    );
    std::fs::remove_file(&stall).expect("unstall");
    assert!(
        wait_until(Duration::from_secs(5), || http("GET", &health).status
            == 200),
        "/healthz recovers once the scan runs"
    );
}

/// A mass hang: 2,000 threads enter D at once. Each is reported once, and a deadlock
/// started in the middle is still reported on time. The daemon's CPU over the window and
/// the deadlock's latency are printed (`cargo xtask bench` measures them too).
#[test]
#[ignore = "needs root: loads BPF programs, mounts and freezes a filesystem"]
fn a_mass_hang_is_reported_whole_and_detection_goes_on() {
    require_root();
    let _serial = one_at_a_time();
    if !FrozenFs::tools_installed() {
        return;
    }
    const THREADS: usize = 2000;
    let mut fs = FrozenFs::new();
    let daemon = Daemon::start(&["--d-state-threshold", "1s", "--scan-interval", "200ms"]);
    let dir = fs.mountpoint.to_str().expect("utf-8").to_owned();
    let count = THREADS.to_string();
    let mut mass = Program::start(&compile("mass_d"), &[&dir, &count]);
    let pid = u32::try_from(mass.expect_number("pid", Duration::from_secs(5))).expect("pid");
    fs.freeze();
    let cpu_before = cpu_time_with_helpers(daemon.pid);
    let started = Instant::now();
    mass.send("go");
    mass.expect_line("started", Duration::from_secs(30));
    fs.hold(mass);

    // The deadlock forms while the 2,000 reports come due (1 s after the threads entered D).
    thread::sleep(Duration::from_millis(800));
    let (_, latency) =
        daemon.deadlock_beside("deadlock during the mass hang", Duration::from_secs(10));
    let reported_all = || {
        daemon
            .events_for(pid)
            .iter()
            .filter(|r| r.value["event"] == "hang" && r.value["kind"] == "d_state")
            .count()
    };
    let all_reported = wait_until(Duration::from_secs(20), || reported_all() >= THREADS);
    let window = started.elapsed();
    let cpu = cpu_time_with_helpers(daemon.pid).saturating_sub(cpu_before);
    let reported = reported_all();
    eprintln!(
        "mass hang: {reported} of {THREADS} threads reported; unrelated deadlock reported {latency:?} after it formed (1 s threshold); daemon CPU {cpu:?} over {window:?} ({:.2} of a core)",
        cpu.as_secs_f64() / window.as_secs_f64()
    );
    assert!(
        all_reported,
        "every thread of the mass hang is reported: {reported} of {THREADS}"
    );
    // The target is 1 s past its threshold (issue 19; the figure above, and the bench's):
    // the bound leaves room for a machine shared with builds and only catches a daemon that
    // stopped detecting.
    assert!(
        latency < scaled(Duration::from_secs(15)),
        "the unrelated deadlock (1 s to confirm) is reported within seconds, not {latency:?}"
    );
    let ids = episode_ids(&daemon.events_for(pid), "d_state");
    assert_eq!(ids.len(), THREADS, "one episode per thread, no duplicates");
    fs.thaw();
}

/// 200 parallel `threads?stacks` requests for a 2,000-thread process, from clients that
/// give up after a second: some are answered, the rest refused (503, the bounded queue),
/// and a deadlock started meanwhile is reported on time.
#[test]
#[ignore = "needs root: loads BPF programs"]
fn a_flood_of_stack_requests_does_not_delay_detection() {
    require_root();
    let _serial = one_at_a_time();
    const THREADS: usize = 2000;
    let daemon = Daemon::start(&["--scan-interval", "200ms"]);
    // mass_d's threads, on a directory that is not frozen: they write and sleep in pause().
    let dir = tempfile::tempdir().expect("temp dir");
    let count = THREADS.to_string();
    let mut crowd = Program::start(
        &compile("mass_d"),
        &[dir.path().to_str().expect("utf-8"), &count],
    );
    let pid = u32::try_from(crowd.expect_number("pid", Duration::from_secs(5))).expect("pid");
    crowd.send("go");
    crowd.expect_line("started", Duration::from_secs(30));

    let endpoint = daemon.endpoint();
    let path = format!("/api/v1/threads/{pid}?stacks=true");
    let clients: Vec<_> = (0..200)
        .map(|_| {
            let (endpoint, path) = (endpoint.clone(), path.clone());
            thread::spawn(move || impatient_get(&endpoint, &path, Duration::from_secs(1)))
        })
        .collect();
    thread::sleep(Duration::from_millis(200));
    let (_, latency) =
        daemon.deadlock_beside("deadlock during the request flood", Duration::from_secs(10));
    let mut by_code = std::collections::BTreeMap::<String, usize>::new();
    for client in clients {
        *by_code
            .entry(client.join().expect("a client thread"))
            .or_default() += 1;
    }
    eprintln!(
        "request flood: deadlock reported {latency:?} after it formed (1 s threshold); stack requests by status: {by_code:?}"
    );
    assert!(
        by_code.get("503").is_some_and(|&n| n > 0),
        "the bounded queue refuses some of 200 requests at once: {by_code:?}"
    );
    assert_eq!(
        by_code.get("refused"),
        None,
        "every client reached the socket: {by_code:?}"
    );
    assert!(
        latency < scaled(Duration::from_secs(15)),
        "the deadlock (1 s to confirm) is reported within seconds, not {latency:?}"
    );
    let metrics = http("GET", &format!("{}/metrics", daemon.metrics_endpoint())).text;
    let refused: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hangwatch_limits_total{limit=\"thread_dumps\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(refused > 0.0, "the refusals are counted: {metrics}");
    // The daemon still answers once the flood is over.
    let after = impatient_get(&endpoint, "/api/v1/status", Duration::from_secs(5));
    assert_eq!(after, "200", "status after the flood");
    crowd.kill();
}

/// A process of 500 spinning threads that ignores SIGTERM: its `stuck_exit` report lists
/// every thread but samples the stacks of at most 16 (and says so for the others), and a
/// deadlock formed while it is reported is still reported on time.
#[test]
#[ignore = "needs root: loads BPF programs"]
fn a_stuck_exit_of_500_spinning_threads_stays_bounded() {
    require_root();
    let _serial = one_at_a_time();
    const THREADS: usize = 500;
    let daemon = Daemon::start(&["--stuck-exit-grace", "1s", "--scan-interval", "200ms"]);
    // Niced: the point is the report's size and the detection beside it, not whether 500
    // spinners on this machine's cores starve the test's own threads.
    let mut command = Command::new("nice");
    command
        .args(["-n", "19"])
        .arg(compile("spin_crowd"))
        .arg(THREADS.to_string());
    let mut crowd = Program::spawn(command);
    let pid = u32::try_from(crowd.expect_number("pid", Duration::from_secs(10))).expect("pid");
    let mut abba = Abba::start();
    signal(pid, libc::SIGTERM);
    // Let the stuck_exit come due, then form the deadlock while it is being reported.
    thread::sleep(Duration::from_millis(900));
    let lock = abba.deadlock();
    let exit = daemon.wait_for_event("stuck_exit of the crowd", Duration::from_secs(20), |v| {
        is_event(v, "hang", "stuck_exit", pid)
    });
    let deadlock =
        daemon.wait_for_event("deadlock beside the crowd", Duration::from_secs(8), |v| {
            v["event"] == "hang"
                && v["kind"] == "deadlock"
                && u64_of(v, "/pid") == u64::from(abba.pid())
        });
    let latency = deadlock.at.saturating_duration_since(lock.at);
    let threads = exit.value["threads"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let with_stacks = threads
        .iter()
        .filter(|t| {
            t["kernel_stack"].as_array().is_some_and(|s| !s.is_empty())
                || t["user_stack"].as_array().is_some_and(|s| !s.is_empty())
        })
        .count();
    let capped = threads
        .iter()
        .filter(|t| {
            t["stacks_error"]
                .as_str()
                .is_some_and(|e| e.contains("carries the stacks of 16"))
        })
        .count();
    let size = exit.value.to_string().len();
    eprintln!(
        "stuck_exit of {} threads: {with_stacks} with stacks, {capped} said capped, {size} bytes; deadlock beside it reported {latency:?} after it formed ({} ms blocked at its report; the stuck_exit arrived {:?} after the deadlock formed)",
        threads.len(),
        deadlock.value["duration_ms"],
        exit.at.saturating_duration_since(lock.at),
    );
    assert!(
        threads.len() > THREADS,
        "every thread is listed: {}",
        threads.len()
    );
    assert!(
        with_stacks <= 16,
        "at most 16 threads sampled, not {with_stacks}"
    );
    assert!(
        capped >= THREADS - 16,
        "the others say why they have no stack: {capped}"
    );
    // Reports are built one at a time: this one waits for the stuck_exit report's reads in
    // progress (the other threads' stacks give way once it has waited 250 ms, and get
    // 500 ms in all). The target is 1 s past its threshold; the figure is printed above
    // (docs/design.md has the runs); the bound catches blindness, not slowness on a machine
    // shared with builds.
    assert!(
        latency < scaled(Duration::from_secs(15)),
        "the deadlock is reported, not after {latency:?}"
    );
    crowd.kill();
}

/// A hostile binary: abba.c with a compressed `.debug_frame` that inflates to 256 MiB. Its
/// deadlock is reported on time with its stacks, the section is refused before it is
/// inflated (`hangwatch_limits_total{limit="section_too_large"}`), and the daemon's memory
/// stays small.
#[test]
#[ignore = "needs root: loads BPF programs"]
fn a_binary_with_a_compressed_section_bomb_is_reported_without_inflating_it() {
    require_root();
    let _serial = one_at_a_time();
    if !have_tool("objcopy") {
        eprintln!("skipped: objcopy is not installed (binutils)");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let zeros = dir.path().join("zeros");
    std::fs::File::create(&zeros)
        .and_then(|f| f.set_len(256 << 20))
        .expect("256 MiB of zeros");
    let bomb = dir.path().join("abba-bomb");
    let abba = compile("abba");
    let plain = dir.path().join("abba-plain");
    let add: Vec<std::ffi::OsString> = vec![
        "--remove-section=.debug_frame".into(),
        format!("--add-section=.debug_frame={}", zeros.display()).into(),
        abba.into_os_string(),
        plain.clone().into_os_string(),
    ];
    run_ok("objcopy", add);
    let compress: Vec<std::ffi::OsString> = vec![
        "--compress-debug-sections=zlib".into(),
        plain.into_os_string(),
        bomb.clone().into_os_string(),
    ];
    run_ok("objcopy", compress);
    let size = std::fs::metadata(&bomb).expect("bomb").len();
    eprintln!("the bomb binary is {size} bytes");
    assert!(
        size < 16 << 20,
        "the section is stored compressed: {size} bytes"
    );

    let daemon = Daemon::start(&["--listen", "127.0.0.1:0", "--scan-interval", "200ms"]);
    let mut program = Program::start(&bomb, &["hold-forever"]);
    let pid = u32::try_from(program.expect_number("pid", Duration::from_secs(5))).expect("pid");
    program.send("go");
    program.expect_line("ready", Duration::from_secs(5));
    let formed = Instant::now();
    let deadlock =
        daemon.wait_for_event("deadlock of the bomb binary", Duration::from_secs(8), |v| {
            v["event"] == "hang" && v["kind"] == "deadlock" && u64_of(v, "/pid") == u64::from(pid)
        });
    let latency = deadlock.at.saturating_duration_since(formed);
    let frames = deadlock.value["cycle"][0]["user_stack"]
        .as_array()
        .map_or(0, Vec::len);
    let metrics = http("GET", &format!("{}/metrics", daemon.endpoint())).text;
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("hangwatch_limits_total{limit=\"section_too_large\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        .unwrap_or(0);
    eprintln!(
        "bomb: deadlock reported {latency:?} after it formed, {frames} user frames, sections refused {refused}, daemon RSS {rss_kib} KiB"
    );
    assert!(
        frames > 0,
        "the user stack is unwound from .eh_frame: {}",
        deadlock.value
    );
    assert!(
        refused >= 1.0,
        "the bomb section is refused and counted:\n{metrics}"
    );
    assert!(
        rss_kib < 200 << 10,
        "the daemon did not inflate the bomb: RSS {rss_kib} KiB"
    );
}

/// What the daemon's stdout and stderr are, in the tests of outputs nobody reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unread {
    /// Pipes whose buffer is already full and that nobody reads: a stopped log pipeline,
    /// a paused `hangwatch run | less`. Every write blocks. (The read ends stay open.)
    Full,
    /// Pipes whose read end is closed: every write fails (EPIPE).
    Closed,
}

/// A pipe for the daemon's stdout or stderr, as `Unread` says.
struct OutputPipe {
    _read: Option<std::os::fd::OwnedFd>,
    write: Option<std::os::fd::OwnedFd>,
}

impl OutputPipe {
    fn new(unread: Unread) -> Self {
        use std::os::fd::{AsRawFd as _, FromRawFd as _};
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the array it is given.
        let made = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(made, 0, "pipe2");
        // SAFETY: both fds were just created and are owned here alone.
        let (read, write) = unsafe {
            (
                std::os::fd::OwnedFd::from_raw_fd(fds[0]),
                std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            )
        };
        let read = match unread {
            Unread::Closed => None,
            Unread::Full => {
                let fd = write.as_raw_fd();
                // The smallest buffer (a page), filled without blocking, then made
                // blocking again for the daemon.
                // SAFETY: fcntl and write on the fd just created, with valid arguments.
                unsafe {
                    libc::fcntl(fd, libc::F_SETPIPE_SZ, 4096);
                    let flags = libc::fcntl(fd, libc::F_GETFL);
                    libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
                    let chunk = [b'x'; 512];
                    while libc::write(fd, chunk.as_ptr().cast(), chunk.len()) > 0 {}
                    libc::fcntl(fd, libc::F_SETFL, flags);
                }
                Some(read)
            }
        };
        Self {
            _read: read,
            write: Some(write),
        }
    }

    fn writer(&mut self) -> std::process::Stdio {
        std::process::Stdio::from(self.write.take().expect("given once"))
    }
}

/// Starts a daemon whose stdout and stderr are `unread`, waits for its probes through the
/// API, forms a deadlock and waits for it in the API: the daemon (still running), the
/// API's endpoint, and how long after forming the deadlock was there.
fn daemon_with_unread_outputs(
    unread: Unread,
    socket_dir: &Path,
) -> (KillOnDrop, String, Duration, Abba) {
    let socket = socket_dir.join("api.sock");
    let endpoint = format!("unix:{}", socket.display());
    let (mut stdout, mut stderr) = (OutputPipe::new(unread), OutputPipe::new(unread));
    let child = Command::new(HANGWATCH)
        .args(["run", "--output", "json", "--threshold", "1s"])
        .args(["--metrics-listen", "127.0.0.1:0", "--api-socket"])
        .arg(&socket)
        .stdin(std::process::Stdio::null())
        .stdout(stdout.writer())
        .stderr(stderr.writer())
        .spawn()
        .expect("start hangwatch");
    let daemon = KillOnDrop(child);
    let attached = wait_until(ATTACH_TIMEOUT, || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
            && http("GET", &format!("{endpoint}/api/v1/status")).json["ready"] == true
    });
    assert!(attached, "{unread:?} outputs: the daemon attached");
    let mut abba = Abba::start();
    let formed = abba.deadlock().at;
    let hangs = format!("{endpoint}/api/v1/hangs?pid={}&kind=deadlock", abba.pid());
    let reported = wait_until(Duration::from_secs(10), || {
        http("GET", &hangs).json["hangs"]
            .as_array()
            .is_some_and(|h| !h.is_empty())
    });
    let latency = formed.elapsed();
    assert!(
        reported,
        "{unread:?} outputs: the deadlock is in the API within 10 s of forming"
    );
    (daemon, endpoint, latency, abba)
}

/// A daemon whose stdout and stderr nobody reads (both pipes full before it starts) works
/// as ever: a deadlock is reported in the API within seconds and SIGTERM ends the daemon
/// within a second. Before the log had a writer thread of its own, the first line logged
/// into the full stderr blocked the thread that logged it: the daemon never attached.
#[test]
#[ignore = "needs root: loads BPF programs"]
fn a_daemon_whose_stdout_and_stderr_are_not_read_keeps_detecting() {
    require_root();
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut daemon, _, latency, _abba) = daemon_with_unread_outputs(Unread::Full, dir.path());
    let sent = Instant::now();
    signal(daemon.0.id(), libc::SIGTERM);
    let status = wait_bounded(&mut daemon.0, scaled(Duration::from_secs(1)));
    let took = sent.elapsed();
    eprintln!(
        "stdout and stderr full and unread: deadlock in the API {latency:?} after it formed; SIGTERM exit in {took:?}"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM ends the daemon within a second though its outputs block ({status:?} after {took:?})"
    );
}

/// A daemon whose stdout and stderr are closed (their reader gone) detects as ever, and
/// counts what it could not write: the hang event
/// (`hangwatch_sink_dropped_events_total{sink="stdout",reason="closed"}`) and its log
/// lines (`{sink="log",reason="closed"}`).
#[test]
#[ignore = "needs root: loads BPF programs"]
fn a_daemon_whose_stdout_and_stderr_are_closed_counts_what_it_drops() {
    require_root();
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().expect("temp dir");
    let (_daemon, endpoint, latency, _abba) =
        daemon_with_unread_outputs(Unread::Closed, dir.path());
    let dropped = |sink: &str| {
        value(
            &scrape(&endpoint),
            "hangwatch_sink_dropped_events_total",
            &[("sink", sink), ("reason", "closed")],
        )
    };
    // The counts reach the metrics at the next scan.
    let counted = wait_until(Duration::from_secs(3), || {
        dropped("stdout") >= 1.0 && dropped("log") >= 1.0
    });
    let (stdout, log) = (dropped("stdout"), dropped("log"));
    eprintln!(
        "stdout and stderr closed: deadlock in the API {latency:?} after it formed; events dropped {stdout}, log lines dropped {log}"
    );
    assert!(
        counted,
        "the hang event and the log lines that could not be written are counted: stdout {stdout}, log {log}"
    );
}

/// Kills the daemon if the test ends before SIGTERM did.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
