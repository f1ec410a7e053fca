//! `loop_stall` and `stuck_exit` against real runtimes (issue 6): asyncio, tokio and gevent
//! event loops blocked or spinning in a handler, their idle and busy twins that must stay
//! silent, a CPU-bound program that is no event loop, and a daemon whose SIGTERM handler
//! waits for a lock that is never released. All with the defaults but for short
//! thresholds. And loops never seen in their wait (issue 14): asyncio, tokio and Node
//! servers stalled before the daemon started, a tokio runtime stalled by its first
//! request, Debian's Redis and a gevent server stalled before the daemon started,
//! recognized from their stacks, beside controls that must stay quiet.
mod common;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::TcpStream,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use self::common::*;

const LINE_TIMEOUT: Duration = SERVER_LINE_TIMEOUT;
/// The default loop_stall threshold.
const THRESHOLD_MS: u64 = 2000;

/// How a loop thread may have been recognized in a test.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Recognized {
    /// Seen in its loop wait at least twice.
    ByHistory,
    /// Either that, or from a driver frame in its stack: a tokio worker other than the one
    /// that last waited in epoll_wait has no history, and once its process is marked
    /// (an epoll fd) the stack may recognize it first.
    ByHistoryOrStack,
}

/// The one loop_stall hang of `pid`, checked: its thread, its duration, its stall info,
/// recognized from its history.
fn assert_loop_stall(daemon: &Daemon, pid: u32, tid: Option<u32>, doing: &str) -> Value {
    assert_loop_stall_recognized(daemon, pid, tid, doing, Recognized::ByHistory)
}

fn assert_loop_stall_recognized(
    daemon: &Daemon,
    pid: u32,
    tid: Option<u32>,
    doing: &str,
    recognized: Recognized,
) -> Value {
    let hang = daemon.wait_for_event(
        &format!("loop_stall for pid {pid}"),
        Duration::from_secs(6),
        |v| {
            v["event"] == "hang" && v["kind"] == "loop_stall" && u64_of(v, "/pid") == u64::from(pid)
        },
    );
    let v = hang.value;
    if let Some(tid) = tid {
        assert_eq!(u64_of(&v, "/tid"), u64::from(tid), "the loop thread: {v}");
    }
    // Reported within threshold + 0.5 s of the stall, as the daemon measured it (from the
    // loop's last return to its wait, by the kernel's clock).
    let duration = u64_of(&v, "/duration_ms");
    let budget = u64::try_from(scaled(Duration::from_millis(500)).as_millis()).expect("fits");
    assert!(
        (THRESHOLD_MS..=THRESHOLD_MS + budget).contains(&duration),
        "reported after {duration} ms: {v}"
    );
    assert!(
        str_of(&v, "/stall/doing").starts_with(doing),
        "doing {:?}, expected {doing}: {v}",
        v["stall"]["doing"]
    );
    let by_stack = str_of(&v, "/stall/recognized_from") == "stack";
    if by_stack && recognized == Recognized::ByHistoryOrStack {
        assert!(
            !str_of(&v, "/stall/driver_frame").is_empty(),
            "recognized from its stack, with the driver frame: {v}"
        );
    } else {
        assert!(
            u64_of(&v, "/stall/loop_waits") >= 2 && !by_stack,
            "recognized from its history: {v}"
        );
    }
    let hangs = daemon
        .events_for(pid)
        .iter()
        .filter(|r| r.value["event"] == "hang")
        .count();
    assert_eq!(hangs, 1, "one episode: {}", daemon.dump(Some(&[pid])));
    v
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn asyncio_loop_blocked_or_spinning_in_a_handler_is_a_loop_stall_idle_is_not() {
    require_root();
    let mut daemon = Daemon::start(&[]);
    let sleeping = Server::start(python("loop_server.py", &["sleep"], PYTHON));
    let spinning = Server::start(python("loop_server.py", &["spin"], PYTHON));
    let idle = Server::start(python("loop_server.py", &["idle"], PYTHON));
    for s in [&sleeping, &spinning, &idle] {
        s.warm_up(3);
    }
    let _blocked = sleeping.stall();
    let _spun = spinning.stall();

    let v = assert_loop_stall(
        &daemon,
        sleeping.pid(),
        sleeping.tid,
        "blocked in clock_nanosleep",
    );
    assert_eq!(str_of(&v, "/wait/syscall"), "clock_nanosleep", "{v}");
    let frames = symbols(&v, "/user_stack");
    assert!(
        frames
            .first()
            .is_some_and(|f| f.contains("clock_nanosleep"))
            && frames.iter().any(|f| f == "_PyEval_EvalFrameDefault"),
        "libc's sleep called from the interpreter: {frames:?}"
    );
    let v = assert_loop_stall(&daemon, spinning.pid(), spinning.tid, "running on CPU");
    assert_eq!(v["stall"]["on_cpu"], true, "{v}");
    // Its stack, sampled while it runs: the interpreter evaluating spin_forever.
    assert_eq!(str_of(&v, "/source"), "on_cpu_sample", "{v}");
    let frames = symbols(&v, "/user_stack");
    assert!(
        frames.iter().any(|f| f == "_PyEval_EvalFrameDefault"),
        "the interpreter in the sampled stack: {frames:?}"
    );

    // The idle server saw the same warm-up and has sat in epoll_wait since.
    thread::sleep(Duration::from_millis(500));
    assert!(
        daemon.events_for(idle.pid()).is_empty(),
        "{}",
        daemon.dump(Some(&[idle.pid()]))
    );
    daemon.stop();
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn tokio_worker_blocked_by_its_handler_is_a_loop_stall_idle_runtime_is_not() {
    require_root();
    let binary = example("tokio_server");
    let mut daemon = Daemon::start(&[]);
    let stalling = Server::start(Program::start(&binary, &["stall"]));
    let idle = Server::start(Program::start(&binary, &["idle"]));
    // Enough requests, some at once, that both workers have taken turns at the I/O driver
    // (after a walk saw the runtimes idle).
    thread::sleep(WALK_PAUSE);
    for s in [&stalling, &idle] {
        let port = s.port;
        let clients: Vec<_> = (0..4)
            .map(|_| {
                thread::spawn(move || {
                    for _ in 0..5 {
                        let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                        conn.write_all(b"ping\n").expect("write");
                        let mut answer = String::new();
                        BufReader::new(&conn).read_line(&mut answer).expect("read");
                        thread::sleep(Duration::from_millis(10));
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().expect("client");
        }
    }
    let _conn = stalling.stall();
    let v = assert_loop_stall_recognized(
        &daemon,
        stalling.pid(),
        None,
        "blocked in clock_nanosleep",
        Recognized::ByHistoryOrStack,
    );
    let tid = u32::try_from(u64_of(&v, "/tid")).expect("tid");
    assert_ne!(tid, stalling.pid(), "a worker, not the main thread: {v}");
    let frames = symbols(&v, "/user_stack");
    assert!(
        frames
            .iter()
            .any(|f| f.contains("tokio_server::handle_request")),
        "the handler in the stack: {frames:?}"
    );
    // The idle runtime: one worker in epoll_wait, the other parked on its condvar.
    thread::sleep(Duration::from_millis(1500));
    assert!(
        daemon.events_for(idle.pid()).is_empty(),
        "{}",
        daemon.dump(Some(&[idle.pid()]))
    );
    daemon.stop();
}

#[test]
#[ignore = "needs root: loads BPF programs; gevent from the tests' virtualenv"]
fn gevent_hub_blocked_by_an_unpatched_sleep_is_a_loop_stall_idle_is_not() {
    require_root();
    let venv_python = gevent_python();
    let mut daemon = Daemon::start(&[]);
    let blocked = Server::start(python("gevent_server.py", &["sleep"], &venv_python));
    let resumed = Server::start(python("gevent_server.py", &["resumed"], &venv_python));
    let idle = Server::start(python("gevent_server.py", &["idle"], &venv_python));
    for s in [&blocked, &resumed, &idle] {
        s.warm_up(3);
    }
    let _resumed_conn = resumed.stall();
    let _conn = blocked.stall();
    let v = assert_loop_stall(
        &daemon,
        blocked.pid(),
        blocked.tid,
        "blocked in clock_nanosleep",
    );
    let frames = symbols(&v, "/user_stack");
    let at = |name: &str| frames.iter().position(|f| f.contains(name));
    // The sleep, called by a greenlet the hub switched to from libev's loop.
    assert!(
        frames
            .first()
            .is_some_and(|f| f.contains("clock_nanosleep"))
            && at("Greenlet")
                .zip(at("ev_run"))
                .is_some_and(|(g, ev)| g < ev),
        "time.sleep in a greenlet run from the hub's ev_run: {frames:?}"
    );
    // A greenlet resumed after a switch: its stack ends at its start, and says why
    // (above it lies the hub's stack as it is now, not the greenlet's callers).
    let v = assert_loop_stall(
        &daemon,
        resumed.pid(),
        resumed.tid,
        "blocked in clock_nanosleep",
    );
    let frames = symbols(&v, "/user_stack");
    assert!(
        frames.last().is_some_and(|f| f.contains("g_initialstub"))
            && frames.iter().any(|f| f.contains("clock_nanosleep")),
        "the resumed greenlet's stack ends at g_initialstub: {frames:?}"
    );
    assert!(
        v["user_stack_error"]
            .as_str()
            .is_some_and(|e| e.contains("where this greenlet started")),
        "{}",
        v["user_stack_error"]
    );
    thread::sleep(Duration::from_millis(500));
    assert!(
        daemon.events_for(idle.pid()).is_empty(),
        "{}",
        daemon.dump(Some(&[idle.pid()]))
    );
    daemon.stop();
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn a_busy_loop_and_a_cpu_bound_program_are_not_loop_stalls() {
    require_root();
    let mut daemon = Daemon::start(&[]);
    let server = Server::start(python("loop_server.py", &["idle"], PYTHON));
    server.warm_up(3);
    let port = server.port.to_string();
    let mut client = python("loop_client.py", &[&port, "8"], PYTHON);
    client.expect_line("running", LINE_TIMEOUT);
    let hog = Program::spawn({
        let mut c = Command::new(PYTHON);
        c.args(["-c", "while True: pass"]);
        c
    });
    // Three thresholds of constant load.
    thread::sleep(Duration::from_millis(3 * THRESHOLD_MS));
    for (what, pid) in [
        ("the busy asyncio server", server.pid()),
        ("its client", client.pid),
        ("the CPU-bound program", hog.pid),
    ] {
        assert!(
            daemon.events_for(pid).is_empty(),
            "{what} (pid {pid}): {}",
            daemon.dump(Some(&[pid]))
        );
    }
    daemon.stop();
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn a_daemon_whose_sigterm_handler_waits_for_a_lock_is_a_stuck_exit() {
    require_root();
    let mut daemon = Daemon::start(&["--stuck-exit-grace", "2s"]);
    let mut stuck = Program::start(&compile("stuck_exit"), &[]);
    let line = stuck.next_line(LINE_TIMEOUT);
    let info: Value = serde_json::from_str(&line).expect("json");
    stuck.expect_line("ready", LINE_TIMEOUT);
    let worker = u64_of(&info, "/worker");
    let prompt = Program::spawn({
        let mut c = Command::new("sleep");
        c.arg("100003");
        c
    });
    let sent = Instant::now();
    signal(stuck.pid, libc::SIGTERM);
    signal(prompt.pid, libc::SIGTERM);

    let hang = daemon.wait_for_event("stuck_exit", Duration::from_secs(6), |v| {
        is_event(v, "hang", "stuck_exit", stuck.pid)
    });
    let v = &hang.value;
    let waited = hang.at.duration_since(sent);
    assert!(
        waited >= Duration::from_secs(2),
        "before the grace time: {waited:?}"
    );
    assert_eq!(str_of(v, "/exit/signal"), "SIGTERM", "{v}");
    assert_eq!(u64_of(v, "/pid"), u64::from(stuck.pid), "{v}");
    let threads = v["threads"].as_array().expect("threads");
    let by_tid = |tid: u64| {
        threads
            .iter()
            .find(|t| u64_of(t, "/tid") == tid)
            .unwrap_or_else(|| panic!("thread {tid} missing: {v}"))
    };
    // The main thread in the handler, blocked on the lock; the worker in read() holding it.
    let main = by_tid(u64::from(stuck.pid));
    assert_eq!(str_of(main, "/wait/syscall"), "futex", "{main}");
    assert!(
        symbols(main, "/user_stack")
            .iter()
            .any(|s| s == "save_state_and_exit"),
        "{main}"
    );
    let holder = by_tid(worker);
    assert_eq!(str_of(holder, "/wait/syscall"), "read", "{holder}");
    assert!(
        symbols(holder, "/user_stack")
            .iter()
            .any(|s| s == "wait_for_input"),
        "{holder}"
    );
    // The process that exited at once is not reported.
    assert!(
        daemon.events_for(prompt.pid).is_empty(),
        "{}",
        daemon.dump(Some(&[prompt.pid]))
    );
    stuck.kill();
    let resolved = daemon.wait_for_event("stuck_exit resolved", Duration::from_secs(3), |v| {
        is_event(v, "resolved", "stuck_exit", stuck.pid)
    });
    assert_eq!(str_of(&resolved.value, "/resolution"), "exited");
    daemon.stop();
}

/// The one loop_stall of `pid`, recognized from its stack (`stall.recognized_from:
/// "stack"`, no loop wait seen), doing `doing`.
fn assert_stack_stall(daemon: &Daemon, pid: u32, patience: Duration, doing: &str) -> Received {
    let hang = daemon.wait_for_event(&format!("loop_stall for pid {pid}"), patience, |v| {
        v["event"] == "hang" && v["kind"] == "loop_stall" && u64_of(v, "/pid") == u64::from(pid)
    });
    let v = &hang.value;
    assert_eq!(str_of(v, "/stall/recognized_from"), "stack", "{v}");
    assert_eq!(u64_of(v, "/stall/loop_waits"), 0, "{v}");
    assert_eq!(str_of(v, "/stall/doing"), doing, "{v}");
    hang
}

/// A report's user stack, innermost first: its function names (Python's too).
fn frame_names(v: &Value) -> Vec<String> {
    symbols(v, "/user_stack")
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn loops_stalled_before_the_daemon_started_are_loop_stalls_from_their_stacks() {
    require_root();
    let tokio_binary = example("tokio_server");
    // Stalled before the daemon starts: never seen in their wait.
    let asyncio = Server::start(python("loop_server.py", &["sleep"], PYTHON));
    let tokio = Server::start(Program::start(&tokio_binary, &["stall"]));
    let node = Server::start(node_server("sleep"));
    let _asyncio_conn = asyncio.stall();
    let _tokio_conn = tokio.stall();
    let _node_conn = node.stall();
    // Controls, started and used before the daemon too: idle servers, and a runtime whose
    // spawn_blocking thread waits for ever in read() (not the loop: the runtime answers).
    let idle_asyncio = Server::start(python("loop_server.py", &["idle"], PYTHON));
    let idle_tokio = Server::start(Program::start(&tokio_binary, &["idle"]));
    let idle_node = Server::start(node_server("idle"));
    let blocking = Server::start(Program::start(&tokio_binary, &["blocking"]));
    // An asyncio server whose executor thread sleeps for ever (a thread pool's worker in a
    // process with an epoll fd), and a program that only created an epoll fd and sleeps.
    let executor = Server::start(python("loop_server.py", &["executor"], PYTHON));
    let mut conns = Vec::new();
    for port in [blocking.port, executor.port] {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        conn.write_all(b"stall\n").expect("write");
        let mut answer = String::new();
        BufReader::new(&conn)
            .read_line(&mut answer)
            .expect("the server answers");
        assert_eq!(answer, "ok\n");
        conns.push(conn);
    }
    let mut epoll_only = Program::spawn({
        let mut c = Command::new(PYTHON);
        c.args([
            "-c",
            "import select, time; e = select.epoll(); print('ready', flush=True); time.sleep(100000)",
        ]);
        c
    });
    epoll_only.expect_line("ready", LINE_TIMEOUT);
    thread::sleep(Duration::from_millis(300));

    let started = Instant::now();
    let mut daemon = Daemon::start(&[]);
    // Within the threshold + the walks that mark the process and read the stack.
    let patience = Duration::from_millis(THRESHOLD_MS) + Duration::from_secs(6);
    let hang = assert_stack_stall(
        &daemon,
        asyncio.pid(),
        patience,
        "blocked in clock_nanosleep",
    );
    let v = &hang.value;
    assert_eq!(
        u64_of(v, "/tid"),
        u64::from(asyncio.tid.expect("tid")),
        "{v}"
    );
    assert_eq!(v["blocked_since_before_start"], true, "{v}");
    assert_eq!(
        str_of(v, "/stall/driver_frame"),
        "BaseEventLoop._run_once",
        "{v}"
    );
    let frames = frame_names(v);
    assert!(
        frames.iter().any(|f| f == "serve"),
        "the handler's coroutine in the stack: {frames:?}"
    );
    let asyncio_after = hang.at.duration_since(started);

    let hang = assert_stack_stall(&daemon, tokio.pid(), patience, "blocked in clock_nanosleep");
    let v = &hang.value;
    assert_ne!(u64_of(v, "/tid"), u64::from(tokio.pid()), "a worker: {v}");
    assert_eq!(v["blocked_since_before_start"], true, "{v}");
    assert!(
        str_of(v, "/stall/driver_frame")
            .starts_with("tokio::runtime::scheduler::multi_thread::worker::"),
        "{v}"
    );
    assert!(
        frame_names(v)
            .iter()
            .any(|f| f.contains("tokio_server::handle_request")),
        "{v}"
    );
    let tokio_after = hang.at.duration_since(started);

    // Node: blocked in a synchronous read() called from a JS callback under libuv's loop.
    let hang = assert_stack_stall(&daemon, node.pid(), patience, "blocked in read");
    let v = &hang.value;
    assert_eq!(u64_of(v, "/tid"), u64::from(node.pid()), "{v}");
    assert_eq!(v["blocked_since_before_start"], true, "{v}");
    assert_eq!(str_of(v, "/stall/driver_frame"), "uv_run", "{v}");
    let node_after = hang.at.duration_since(started);
    eprintln!(
        "reported {asyncio_after:?} (asyncio), {tokio_after:?} (tokio) and {node_after:?} (node) after the daemon was started"
    );
    assert_one_episode_each_and_controls_quiet(
        &daemon,
        &[asyncio.pid(), tokio.pid(), node.pid()],
        &[
            ("the idle asyncio server", idle_asyncio.pid()),
            ("the idle tokio runtime", idle_tokio.pid()),
            ("the idle Node server", idle_node.pid()),
            ("the spawn_blocking reader's runtime", blocking.pid()),
            ("the asyncio server whose executor sleeps", executor.pid()),
            ("the program that only created an epoll fd", epoll_only.pid),
        ],
    );
    daemon.stop();
}

/// Nothing else after the stalls were reported: one episode for each of `stalled`, and
/// the `controls` quiet for two more thresholds.
fn assert_one_episode_each_and_controls_quiet(
    daemon: &Daemon,
    stalled: &[u32],
    controls: &[(&str, u32)],
) {
    thread::sleep(Duration::from_millis(2 * THRESHOLD_MS));
    for &(what, pid) in controls {
        assert!(
            daemon.events_for(pid).is_empty(),
            "{what} (pid {pid}): {}",
            daemon.dump(Some(&[pid]))
        );
    }
    for &pid in stalled {
        let hangs = daemon
            .events_for(pid)
            .iter()
            .filter(|r| r.value["event"] == "hang")
            .count();
        assert_eq!(hangs, 1, "{}", daemon.dump(Some(&[pid])));
    }
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn a_tokio_runtime_and_redis_stalled_by_their_first_request_are_loop_stalls() {
    require_root();
    let tokio_binary = example("tokio_server");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut daemon = Daemon::start(&[]);
    let stalling = Server::start(Program::start(&tokio_binary, &["stall"]));
    let blocking = Server::start(Program::start(&tokio_binary, &["blocking"]));
    // The first request of each, at once: the stalling one's worker has not been seen in
    // epoll_wait twice.
    let _conn = stalling.stall();
    let _blocking_conn = blocking.stall();
    // And Redis, its first command a stalling one as soon as it answers.
    let redis = Redis::start(dir.path(), "first");
    let _redis_conn = redis.stall();
    let hang = daemon.wait_for_event(
        &format!("loop_stall for pid {}", stalling.pid()),
        Duration::from_millis(THRESHOLD_MS) + Duration::from_secs(5),
        |v| {
            v["event"] == "hang"
                && v["kind"] == "loop_stall"
                && u64_of(v, "/pid") == u64::from(stalling.pid())
        },
    );
    let v = &hang.value;
    assert_ne!(
        u64_of(v, "/tid"),
        u64::from(stalling.pid()),
        "a worker: {v}"
    );
    assert_eq!(v["blocked_since_before_start"], false, "{v}");
    eprintln!(
        "recognized from {}, driver {:?}",
        v["stall"]["recognized_from"], v["stall"]["driver_frame"]
    );
    // From the stack as a rule (a walk may have seen the worker in epoll_wait once before
    // the request, not twice); were it seen twice, the history path reports the same.
    if v["stall"]["recognized_from"] == "stack" {
        assert!(
            str_of(v, "/stall/driver_frame").starts_with("tokio::runtime::scheduler::"),
            "{v}"
        );
    }
    assert!(
        frame_names(v)
            .iter()
            .any(|f| f.contains("tokio_server::handle_request")),
        "{v}"
    );
    let v = assert_loop_stall_recognized(
        &daemon,
        redis.pid(),
        Some(redis.pid()),
        "blocked in clock_nanosleep",
        Recognized::ByHistoryOrStack,
    );
    assert_eq!(v["blocked_since_before_start"], false, "{v}");
    assert!(frame_names(&v).iter().any(|f| f == "debugCommand"), "{v}");
    thread::sleep(Duration::from_millis(THRESHOLD_MS));
    assert!(
        daemon.events_for(blocking.pid()).is_empty(),
        "spawn_blocking's reader is not the loop: {}",
        daemon.dump(Some(&[blocking.pid()]))
    );
    daemon.stop();
}

/// Issue 14: asyncio, gevent and Node servers started after the daemon whose very first
/// request stalls their loop: never seen in their wait twice, so recognized from the stack
/// (a driver frame: asyncio's `_run_once`, libev's `ev_run`, libuv's `uv_run`), or from
/// their history had walks seen them idle twice before the request. Idle servers of each,
/// started beside them and answering a request, stay quiet.
#[test]
#[ignore = "needs root: loads BPF programs"]
fn asyncio_gevent_and_node_stalled_by_their_first_request_are_loop_stalls() {
    require_root();
    let venv_python = gevent_python();
    let mut daemon = Daemon::start(&[]);
    let asyncio = Server::start(python("loop_server.py", &["sleep"], PYTHON));
    let gevent = Server::start(python("gevent_server.py", &["sleep"], &venv_python));
    let node = Server::start(node_server("sleep"));
    let idle_asyncio = Server::start(python("loop_server.py", &["idle"], PYTHON));
    let idle_gevent = Server::start(python("gevent_server.py", &["idle"], &venv_python));
    let idle_node = Server::start(node_server("idle"));
    // The first request of each stalled server, at once.
    let _conns = [asyncio.stall(), gevent.stall(), node.stall()];
    for idle in [&idle_asyncio, &idle_gevent, &idle_node] {
        idle.warm_up(1);
    }
    // The driver frame each must show when recognized from its stack; gevent's depends on
    // where greenlet's stack switch ends the unwind, so any will do (the helper asserts
    // there is one).
    let stalled = [
        (
            "asyncio",
            &asyncio,
            asyncio.tid,
            "blocked in clock_nanosleep",
            Some("BaseEventLoop._run_once"),
        ),
        ("gevent", &gevent, None, "blocked in clock_nanosleep", None),
        (
            "node",
            &node,
            Some(node.pid()),
            "blocked in read",
            Some("uv_run"),
        ),
    ];
    for (what, server, tid, doing, driver) in stalled {
        let v = assert_loop_stall_recognized(
            &daemon,
            server.pid(),
            tid,
            doing,
            Recognized::ByHistoryOrStack,
        );
        assert_eq!(v["blocked_since_before_start"], false, "{what}: {v}");
        let from = str_of(&v, "/stall/recognized_from");
        eprintln!(
            "{what} recognized from {from}, driver {:?}",
            v["stall"]["driver_frame"]
        );
        if let Some(driver) = driver.filter(|_| from == "stack") {
            assert_eq!(str_of(&v, "/stall/driver_frame"), driver, "{what}: {v}");
        }
    }
    assert_one_episode_each_and_controls_quiet(
        &daemon,
        &[asyncio.pid(), gevent.pid(), node.pid()],
        &[
            ("idle asyncio", idle_asyncio.pid()),
            ("idle gevent", idle_gevent.pid()),
            ("idle node", idle_node.pid()),
        ],
    );
    daemon.stop();
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn redis_and_gevent_stalled_before_the_daemon_started_are_loop_stalls_from_their_stacks() {
    require_root();
    let venv_python = gevent_python();
    let dir = tempfile::tempdir().expect("temp dir");
    // Stalled before the daemon starts: never seen in their loop wait.
    let redis = Redis::start(dir.path(), "stalled");
    let _redis_conn = redis.stall();
    let gevent = Server::start(python("gevent_server.py", &["sleep"], &venv_python));
    let _gevent_conn = gevent.stall();
    // Controls, started and used before the daemon too: an idle Redis (its main thread in
    // epoll_wait, its background threads in condition waits) and an idle gevent server.
    let idle_redis = Redis::start(dir.path(), "idle");
    assert_eq!(
        idle_redis.command(&["SET", "k", "v"]).as_deref(),
        Some("+OK\r\n")
    );
    let idle_gevent = Server::start(python("gevent_server.py", &["idle"], &venv_python));
    idle_gevent.warm_up(2);
    thread::sleep(Duration::from_millis(300));

    let started = Instant::now();
    let mut daemon = Daemon::start(&[]);
    let patience = Duration::from_millis(THRESHOLD_MS) + Duration::from_secs(6);
    // Redis: its main thread in the DEBUG command's sleep, under aeProcessEvents (the
    // driver frame, from the stripped binary's dynamic symbols and .eh_frame).
    let hang = assert_stack_stall(&daemon, redis.pid(), patience, "blocked in clock_nanosleep");
    let v = &hang.value;
    assert_eq!(
        u64_of(v, "/tid"),
        u64::from(redis.pid()),
        "the main thread: {v}"
    );
    assert_eq!(v["blocked_since_before_start"], true, "{v}");
    assert!(
        ["aeProcessEvents", "aeMain"].contains(&str_of(v, "/stall/driver_frame")),
        "{v}"
    );
    let frames = frame_names(v);
    assert!(
        frames.iter().any(|f| f == "debugCommand") && frames.iter().any(|f| f == "aeMain"),
        "the command handler under the loop: {frames:?}"
    );
    let redis_after = hang.at.duration_since(started);
    // gevent: the spawned greenlet's sleep, run by the hub from libev's ev_run.
    let hang = assert_stack_stall(
        &daemon,
        gevent.pid(),
        patience,
        "blocked in clock_nanosleep",
    );
    let v = &hang.value;
    assert_eq!(v["blocked_since_before_start"], true, "{v}");
    assert!(
        ["ev_run", "Hub.run"].contains(&str_of(v, "/stall/driver_frame")),
        "{v}"
    );
    let gevent_after = hang.at.duration_since(started);
    eprintln!(
        "reported {redis_after:?} (redis) and {gevent_after:?} (gevent) after the daemon was started"
    );
    assert_one_episode_each_and_controls_quiet(
        &daemon,
        &[redis.pid(), gevent.pid()],
        &[
            ("the idle Redis", idle_redis.pid()),
            ("the idle gevent server", idle_gevent.pid()),
        ],
    );
    daemon.stop();
}

/// A program with an epoll fd whose main thread computes: no event loop's driver on its
/// stack, so not a loop spinning, however long it runs.
const EPOLL_HOG: &str =
    "import select, sys\nep = select.epoll()\nprint('ready', flush=True)\nwhile True: pass\n";

/// Spinning servers of each runtime (issue 14): their loops run on CPU in a handler and
/// never come back to their wait, never having been seen waiting. What each must be.
struct Spinner {
    what: &'static str,
    pid: u32,
    /// The loop thread, when the server says.
    tid: Option<u32>,
    /// The driver frames its stack may show (any, when empty: gevent's depends on where
    /// greenlet's stack switch ends the unwind).
    drivers: &'static [&'static str],
}

/// The five spinning servers, each started and sent its stalling request (or script) at
/// once: asyncio, gevent, Node, tokio, Redis. Returns them with the guards to keep.
fn start_spinners(dir: &Path) -> (Vec<Spinner>, Vec<Box<dyn std::any::Any>>) {
    let venv_python = gevent_python();
    let asyncio = Server::start(python("loop_server.py", &["spin"], PYTHON));
    let gevent = Server::start(python("gevent_server.py", &["spin"], &venv_python));
    let node = Server::start(node_server("spin"));
    let tokio = Server::start(Program::start(&example("tokio_server"), &["spin"]));
    let redis = Redis::start(dir, "spin");
    let spinners = vec![
        Spinner {
            what: "asyncio",
            pid: asyncio.pid(),
            tid: asyncio.tid,
            drivers: &["BaseEventLoop._run_once"],
        },
        Spinner {
            what: "gevent",
            pid: gevent.pid(),
            tid: None,
            drivers: &[],
        },
        Spinner {
            what: "node",
            pid: node.pid(),
            tid: Some(node.pid()),
            drivers: &["uv_run"],
        },
        Spinner {
            what: "tokio",
            pid: tokio.pid(),
            tid: None,
            drivers: &[
                "tokio::runtime::scheduler::multi_thread::worker::run",
                "tokio::runtime::scheduler::multi_thread::worker::Context::run",
            ],
        },
        Spinner {
            what: "redis",
            pid: redis.pid(),
            tid: Some(redis.pid()),
            drivers: &["aeProcessEvents", "aeMain"],
        },
    ];
    let mut guards: Vec<Box<dyn std::any::Any>> = Vec::new();
    for server in [&asyncio, &gevent, &node, &tokio] {
        guards.push(Box::new(server.stall()));
    }
    guards.push(Box::new(redis.spin()));
    for server in [asyncio, gevent, node, tokio] {
        guards.push(Box::new(server));
    }
    guards.push(Box::new(redis));
    (spinners, guards)
}

/// Each spinner's one `loop_stall`: running on CPU, recognized from its stack (never seen
/// in its wait), its driver frame, `blocked_since_before_start` as given. A spinner started
/// after the daemon may have been seen idle in its wait twice before its request (a slow
/// start-up, a machine under load): recognized from its history then, which is as good.
fn assert_spinners_reported(
    daemon: &Daemon,
    spinners: &[Spinner],
    since: Instant,
    before_start: bool,
) {
    // Within the threshold and a few walks of `since` (the last request, or the daemon's
    // start): the run's clock starts at the walk that first sees it running, the stack is
    // sampled from half the threshold on, and `sys_enter_loop` must watch it for a quarter.
    let within = Duration::from_millis(THRESHOLD_MS) + Duration::from_secs(4);
    for spinner in spinners {
        let patience = within.saturating_sub(since.elapsed());
        let hang = daemon.wait_for_event(
            &format!("loop_stall for {} (pid {})", spinner.what, spinner.pid),
            patience,
            |v| {
                v["event"] == "hang"
                    && v["kind"] == "loop_stall"
                    && u64_of(v, "/pid") == u64::from(spinner.pid)
            },
        );
        let v = &hang.value;
        let what = spinner.what;
        assert_eq!(str_of(v, "/stall/doing"), "running on CPU", "{what}: {v}");
        if str_of(v, "/stall/recognized_from") == "loop_waits" && !before_start {
            eprintln!("{what}: recognized from its history (seen idle in its wait first)");
            continue;
        }
        assert_eq!(str_of(v, "/stall/recognized_from"), "stack", "{what}: {v}");
        assert_eq!(u64_of(v, "/stall/loop_waits"), 0, "{what}: {v}");
        if let Some(tid) = spinner.tid {
            assert_eq!(
                u64_of(v, "/tid"),
                u64::from(tid),
                "{what}: the loop thread: {v}"
            );
        }
        assert_eq!(v["blocked_since_before_start"], before_start, "{what}: {v}");
        let driver = str_of(v, "/stall/driver_frame");
        assert!(
            spinner.drivers.is_empty() || spinner.drivers.contains(&driver),
            "{what}: driver {driver:?}, expected one of {:?}: {v}",
            spinner.drivers
        );
        assert_eq!(v["stall"]["on_cpu"], true, "{what}: {v}");
        let duration = u64_of(v, "/duration_ms");
        assert!(duration >= THRESHOLD_MS, "{what}: {duration} ms: {v}");
        eprintln!(
            "{what}: driver {driver}, {duration} ms, reported {:?} after",
            hang.at.duration_since(since)
        );
    }
}

/// Issue 14: loops that spin on CPU, never seen in their wait: asyncio, gevent, Node, tokio
/// and Redis, first spinning since before the daemon started (reported within the
/// threshold and a walk or two of the attach, `blocked_since_before_start: true`), then,
/// once those are gone, five more started after it, spinning from their first request. Each
/// is sampled on CPU once it has run for half the threshold in a process with an epoll fd;
/// its stack shows its loop's driver; `sys_enter_loop` then proves it does not come back to
/// its wait. One after the other, not as two tests: ten spinners at once on a 2-core
/// machine starve everything else. Controls that run as much and must stay quiet: a
/// program with an epoll fd computing in its main thread (no driver), a tokio
/// `spawn_blocking` thread computing (no worker frame), and an asyncio server kept busy by a
/// client from its first request on (its stack shows the driver while it handles
/// requests, but it comes back to its wait).
#[test]
#[ignore = "needs root: loads BPF programs"]
fn loops_spinning_before_the_daemon_and_from_their_first_request_are_loop_stalls() {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut hog = Program::spawn({
        let mut c = Command::new(PYTHON);
        c.args(["-c", EPOLL_HOG]);
        c
    });
    hog.expect_line("ready", LINE_TIMEOUT);
    let (before, guards) = start_spinners(dir.path());
    thread::sleep(Duration::from_millis(300));
    let mut daemon = Daemon::start(&[]);
    // From the attach (which `start` waits for): within the threshold and a walk or two.
    assert_spinners_reported(&daemon, &before, Instant::now(), true);
    let stalled: Vec<u32> = before.iter().map(|s| s.pid).collect();
    assert_one_episode_each_and_controls_quiet(
        &daemon,
        &stalled,
        &[("a program with an epoll fd computing", hog.pid)],
    );
    drop(guards);
    drop(hog);

    // The controls that run from their first request on, alone (with the spinners beside
    // them, nine programs on two cores would slow everything): two thresholds and more.
    let busy = Server::start(python("loop_server.py", &["idle"], PYTHON));
    let port = busy.port.to_string();
    let mut client = python("loop_client.py", &[&port, "4"], PYTHON);
    client.expect_line("running", LINE_TIMEOUT);
    let blocking_spin = Server::start(Program::start(&example("tokio_server"), &["blocking_spin"]));
    let _blocking_conn = blocking_spin.stall();
    assert_one_episode_each_and_controls_quiet(
        &daemon,
        &[],
        &[
            ("the busy asyncio server", busy.pid()),
            ("its client", client.pid),
            ("tokio's spawn_blocking computing", blocking_spin.pid()),
        ],
    );
    drop((busy, client, blocking_spin));

    let (after, _guards) = start_spinners(dir.path());
    assert_spinners_reported(&daemon, &after, Instant::now(), false);
    let stalled: Vec<u32> = after.iter().map(|s| s.pid).collect();
    assert_one_episode_each_and_controls_quiet(&daemon, &stalled, &[]);
    daemon.stop();
}

/// A Python program with an epoll fd whose main thread waits in `queue.get()` (a
/// semaphore's untimed futex wait) for a line a reader thread puts there from stdin: no
/// event loop's driver on its stack, and woken from outside (so no deadlock either).
const EPOLL_QUEUE: &str = "import queue, select, sys, threading\nep = select.epoll()\nq = queue.Queue()\nthreading.Thread(target=lambda: q.put(sys.stdin.readline()), daemon=True).start()\nprint('ready', flush=True)\nprint('got', q.get().strip(), flush=True)\n";

/// Issue 14: loops blocked on a `threading.Lock` that another thread holds for ever, taken
/// by a handler on the loop's (main) thread: a futex wait no lock rule knows (CPython's
/// lock is a semaphore: no owner) and, without a history, no loop rule did. asyncio and
/// gevent, each blocked before the daemon started and by its first request after. The
/// main thread's untimed private futex wait is read once per wait like any other wait
/// away from the loop; the control, a main thread with an epoll fd in `queue.get()`, has
/// no driver frame and stays quiet.
#[test]
#[ignore = "needs root: loads BPF programs"]
fn loops_blocked_on_a_lock_without_history_are_loop_stalls_from_their_stacks() {
    require_root();
    let venv_python = gevent_python();
    let asyncio_before = Server::start(python("loop_server.py", &["lock"], PYTHON));
    let gevent_before = Server::start(python("gevent_server.py", &["lock"], &venv_python));
    let _before = [asyncio_before.stall(), gevent_before.stall()];
    let mut waiting = Program::spawn({
        let mut c = Command::new(PYTHON);
        c.args(["-c", EPOLL_QUEUE]);
        c
    });
    waiting.expect_line("ready", LINE_TIMEOUT);
    thread::sleep(Duration::from_millis(300));

    let mut daemon = Daemon::start(&[]);
    let asyncio = Server::start(python("loop_server.py", &["lock"], PYTHON));
    let gevent = Server::start(python("gevent_server.py", &["lock"], &venv_python));
    let _after = [asyncio.stall(), gevent.stall()];
    let patience = Duration::from_millis(THRESHOLD_MS) + Duration::from_secs(6);
    const ASYNCIO: &[&str] = &["BaseEventLoop._run_once"];
    const GEVENT: &[&str] = &["ev_run", "Hub.run"];
    for (what, server, drivers, before_start) in [
        ("asyncio before the daemon", &asyncio_before, ASYNCIO, true),
        ("gevent before the daemon", &gevent_before, GEVENT, true),
        ("asyncio's first request", &asyncio, ASYNCIO, false),
        ("gevent's first request", &gevent, GEVENT, false),
    ] {
        let hang = assert_stack_stall(&daemon, server.pid(), patience, "blocked in futex");
        let v = &hang.value;
        assert_eq!(
            u64_of(v, "/tid"),
            u64::from(server.pid()),
            "{what}: main: {v}"
        );
        assert_eq!(v["blocked_since_before_start"], before_start, "{what}: {v}");
        let driver = str_of(v, "/stall/driver_frame");
        assert!(drivers.contains(&driver), "{what}: driver {driver:?}: {v}");
        eprintln!("{what}: driver {driver}, {} ms", u64_of(v, "/duration_ms"));
    }
    assert_one_episode_each_and_controls_quiet(
        &daemon,
        &[
            asyncio_before.pid(),
            gevent_before.pid(),
            asyncio.pid(),
            gevent.pid(),
        ],
        &[("a main thread with an epoll fd in queue.get()", waiting.pid)],
    );
    // The control was idle, not stuck: a line on its stdin wakes it.
    waiting.send("work");
    waiting.expect_line("got work", LINE_TIMEOUT);
    daemon.stop();
}
