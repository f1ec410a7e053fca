//! Python frames in the user stacks of CPython threads (issue 17), with every CPython the
//! machine has: pyenv's 3.9 to 3.13 (a version whose build is missing is skipped, and
//! says so) and Debian's python3 (required: `cargo xtask setup` installs it), plus the
//! tests' virtualenv for gevent.
//!
//! Each test starts `tests/programs/python_frames.py` once per interpreter, one daemon
//! watching all of them, and reads each process's hang report: its user stack must hold
//! `inner` then `outer` (then the handler) as Python frames at the lines the script's
//! marker comments are on, tagged `application`, placed among the native frames (after
//! the native frames of the blocking call, before a `_PyEval_EvalFrameDefault`), and
//! `blocked_here` must name `inner`.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use self::common::*;

const SCRIPT: &str = "python_frames.py";
const LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// The threshold (1 s, or loop_stall's 2 s), a scan, and the stacks of every process.
const EVENT_TIMEOUT: Duration = Duration::from_secs(12);
/// Longer than the daemon's walk interval: loops are seen idle in their wait before the
/// stall (as in kernel_loops.rs).
const WALK_PAUSE: Duration = Duration::from_millis(1200);
const MINORS: [u32; 5] = [9, 10, 11, 12, 13];

/// One CPython to run the script with.
struct Interpreter {
    name: String,
    path: PathBuf,
}

/// pyenv's newest 3.9 to 3.13 builds and Debian's python3.
fn interpreters() -> Vec<Interpreter> {
    let root =
        std::env::var_os("PYENV_ROOT").map_or_else(|| PathBuf::from("/root/.pyenv"), PathBuf::from);
    let versions: Vec<String> = std::fs::read_dir(root.join("versions"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut found = Vec::new();
    for minor in MINORS {
        let prefix = format!("3.{minor}.");
        let newest = versions
            .iter()
            .filter(|v| v.starts_with(&prefix))
            .filter_map(|v| Some((v.strip_prefix(&prefix)?.parse::<u32>().ok()?, v)))
            .max();
        let path = newest.map(|(_, v)| {
            root.join("versions")
                .join(v)
                .join(format!("bin/python3.{minor}"))
        });
        match path.filter(|p| p.is_file()) {
            Some(path) => found.push(Interpreter {
                name: format!("pyenv {}", path.display()),
                path,
            }),
            None => eprintln!(
                "skipping CPython 3.{minor}: no pyenv build under {}/versions",
                root.display()
            ),
        }
    }
    let debian = Path::new(PYTHON);
    assert!(
        debian.is_file(),
        "{PYTHON} is missing (Debian's python3; xtask setup installs it)"
    );
    found.push(Interpreter {
        name: format!("Debian {PYTHON}"),
        path: debian.to_path_buf(),
    });
    found
}

/// The script in `mode` under `interpreter`, once it printed "ready": (program, pid of
/// the process to watch, tid of the thread that blocks).
fn start(interpreter: &Path, mode: &str) -> (Program, u32, u32) {
    let mut command = Command::new(interpreter);
    command
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/programs")
                .join(SCRIPT),
        )
        .arg(mode)
        // 3.12+ warns about fork() in a threaded process: that is the point here.
        .env("PYTHONWARNINGS", "ignore");
    let mut program = Program::spawn(command);
    let pid = number(program.expect_field("pid", LINE_TIMEOUT));
    let watched = if mode == "fork" {
        number(program.expect_field("child", LINE_TIMEOUT))
    } else {
        pid
    };
    let tid = if mode == "fork" {
        watched // the child has one thread
    } else {
        number(program.expect_field("tid", LINE_TIMEOUT))
    };
    program.expect_line("ready", LINE_TIMEOUT);
    (program, watched, tid)
}

fn number(text: String) -> u32 {
    text.parse()
        .unwrap_or_else(|e| panic!("`{text}` is not a number: {e}"))
}

/// `--pid P` for each process, and the daemon.
fn daemon_for(pids: &[u32], extra: &[&str]) -> Daemon {
    let pid_args: Vec<String> = pids.iter().map(u32::to_string).collect();
    let mut args: Vec<&str> = extra.to_vec();
    for pid in &pid_args {
        args.extend(["--pid", pid]);
    }
    Daemon::start(&args)
}

fn user_frames(v: &Value) -> &[Value] {
    v["user_stack"].as_array().map_or(&[], Vec::as_slice)
}

/// The user stack one frame a line, for messages.
fn describe(v: &Value) -> String {
    let mut text = String::new();
    for (i, f) in user_frames(v).iter().enumerate() {
        text.push_str(&format!(
            "  #{i:<2} {}{} {} at {}:{} [{}] in {}\n",
            if f["python"] == true { "py " } else { "" },
            f["address"].as_str().unwrap_or("?"),
            f["symbol"].as_str().unwrap_or("??"),
            f["file"].as_str().unwrap_or("?"),
            f["line"],
            f["tag"].as_str().unwrap_or("?"),
            f["module"].as_str().unwrap_or("-"),
        ));
    }
    text.push_str(&format!(
        "  blocked_here: {}\n  python_task: {}\n  user_stack_error: {}\n  user_stack_unwind: {}\n",
        v["blocked_here"], v["python_task"], v["user_stack_error"], v["user_stack_unwind"]
    ));
    text
}

/// The index of the Python frame of `function` at the line marked `marker`, after `from`.
fn python_frame(v: &Value, from: usize, function: &str, marker: &str, who: &str) -> usize {
    let line = marker_line(SCRIPT, marker);
    let found = user_frames(v)
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, f)| f["python"] == true && f["symbol"] == function);
    let Some((index, frame)) = found else {
        panic!(
            "{who}: no Python frame {function} after #{from} in the user stack:\n{}",
            describe(v)
        );
    };
    let file = frame["file"].as_str().unwrap_or("");
    assert!(
        file.ends_with(SCRIPT) && frame["line"].as_u64() == Some(u64::from(line)),
        "{who}: {function} should be at {SCRIPT}:{line} ({marker}), is at {file}:{}:\n{}",
        frame["line"],
        describe(v)
    );
    assert_eq!(
        frame["tag"],
        "application",
        "{who}: {function} should be tagged application:\n{}",
        describe(v)
    );
    index
}

/// The checks every scenario shares: `inner` (at `inner_marker`) inside `outer`, both
/// after the native frames of the blocking call and before an eval frame, and
/// `blocked_here` naming `inner`. Returns the index of `outer`.
fn assert_inner_outer(v: &Value, inner_marker: &str, who: &str) -> usize {
    let inner = python_frame(v, 0, "inner", inner_marker, who);
    let outer = python_frame(v, inner + 1, "outer", "outer-call", who);
    let frames = user_frames(v);
    assert!(
        frames[inner + 1..outer].iter().all(|f| f["python"] != true),
        "{who}: outer should call inner directly:\n{}",
        describe(v)
    );
    assert!(
        frames[..inner]
            .iter()
            .any(|f| f["python"] != true
                && f["module"].as_str().is_some_and(|m| m.contains("libc.so"))),
        "{who}: the native frames of the blocking call (libc) should come before inner:\n{}",
        describe(v)
    );
    assert!(
        frames[outer..]
            .iter()
            .any(|f| f["python"] != true && f["symbol"] == "_PyEval_EvalFrameDefault"),
        "{who}: a _PyEval_EvalFrameDefault frame should follow the Python frames it runs:\n{}",
        describe(v)
    );
    let here = v["blocked_here"].as_str().unwrap_or("");
    let line = marker_line(SCRIPT, inner_marker);
    assert!(
        here.starts_with("inner at ") && here.ends_with(&format!("{SCRIPT}:{line}")),
        "{who}: blocked_here should be inner at {SCRIPT}:{line}, is {here:?}:\n{}",
        describe(v)
    );
    outer
}

fn hang_of(daemon: &Daemon, tid: u32, kind: Option<&str>, who: &str) -> Value {
    daemon
        .wait_for_event(&format!("hang of {who} (tid {tid})"), EVENT_TIMEOUT, |v| {
            v["event"] == "hang"
                && v["tid"].as_u64() == Some(u64::from(tid))
                && kind.is_none_or(|k| v["kind"] == k)
        })
        .value
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn a_thread_blocked_on_a_lock_shows_its_python_functions() {
    require_root();
    let runs: Vec<_> = interpreters()
        .into_iter()
        .map(|i| {
            let (program, pid, tid) = start(&i.path, "lock");
            (i, program, pid, tid)
        })
        .collect();
    let pids: Vec<u32> = runs.iter().map(|r| r.2).collect();
    let daemon = daemon_for(&pids, &["--threshold", "1s"]);
    for (interpreter, _program, _pid, tid) in &runs {
        let who = format!("{} (lock, worker thread)", interpreter.name);
        let v = hang_of(&daemon, *tid, None, &who);
        eprintln!("{who}:\n{}", describe(&v));
        let outer = assert_inner_outer(&v, "inner-acquire", &who);
        // Not the main thread: the thread state was told apart from the main thread's.
        let caller = user_frames(&v)[outer + 1..]
            .iter()
            .find(|f| f["python"] == true);
        assert!(
            caller.is_some_and(|f| f["symbol"] == "blocked_thread"),
            "{who}: outer is called by blocked_thread:\n{}",
            describe(&v)
        );
    }
    // The live thread dump shows the same frames.
    let endpoint = daemon.endpoint();
    for (interpreter, _program, pid, tid) in &runs {
        let who = format!("{} (threads --stacks, worker thread)", interpreter.name);
        let dump = cli_ok(
            &endpoint,
            &["threads", &pid.to_string(), "--stacks", "--json"],
        )
        .json();
        let thread = dump["threads"]
            .as_array()
            .and_then(|ts| {
                ts.iter()
                    .find(|t| t["tid"].as_u64() == Some(u64::from(*tid)))
            })
            .unwrap_or_else(|| panic!("{who}: thread {tid} missing: {dump}"));
        assert_inner_outer(thread, "inner-acquire", &who);
    }
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn a_child_after_fork_blocked_on_a_copied_lock_shows_its_python_functions() {
    require_root();
    let runs: Vec<_> = interpreters()
        .into_iter()
        .map(|i| {
            let (program, child, tid) = start(&i.path, "fork");
            // Declared after the parent: the child is killed first, then the parent.
            (i, program, child, tid, KillOnDrop(child))
        })
        .collect();
    let pids: Vec<u32> = runs.iter().map(|r| r.2).collect();
    let daemon = daemon_for(&pids, &["--threshold", "1s"]);
    for (interpreter, _program, child, tid, _guard) in &runs {
        let who = format!("{} (fork, child {child})", interpreter.name);
        let v = hang_of(&daemon, *tid, None, &who);
        eprintln!("{who}:\n{}", describe(&v));
        assert_inner_outer(&v, "inner-acquire", &who);
    }
}

/// A process the test did not spawn itself (a forked child), killed when the test ends.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        signal(self.0, libc::SIGKILL);
    }
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn an_asyncio_handler_stalling_the_loop_shows_its_python_functions_and_task() {
    require_root();
    let mut runs: Vec<_> = interpreters()
        .into_iter()
        .map(|i| {
            let (program, pid, tid) = start(&i.path, "asyncio");
            (i, program, pid, tid)
        })
        .collect();
    let pids: Vec<u32> = runs.iter().map(|r| r.2).collect();
    let daemon = daemon_for(&pids, &[]);
    thread::sleep(WALK_PAUSE);
    for (_, program, _, _) in &mut runs {
        program.send("go");
    }
    for (interpreter, _program, _pid, tid) in &runs {
        let who = format!("{} (asyncio loop)", interpreter.name);
        let v = hang_of(&daemon, *tid, Some("loop_stall"), &who);
        eprintln!("{who}:\n{}", describe(&v));
        let outer = assert_inner_outer(&v, "inner-sleep", &who);
        python_frame(&v, outer + 1, "handler", "handler-call", &who);
        assert_eq!(
            v["python_task"],
            "handler",
            "{who}: the task's coroutine:\n{}",
            describe(&v)
        );
    }
}

#[test]
#[ignore = "needs root: loads BPF programs; gevent from the tests' virtualenv"]
fn a_gevent_greenlet_stalling_the_hub_shows_its_python_functions() {
    require_root();
    let venv_python = gevent_python();
    let (mut program, pid, tid) = start(Path::new(&venv_python), "gevent");
    let daemon = daemon_for(&[pid], &[]);
    thread::sleep(WALK_PAUSE);
    program.send("go");
    let who = format!("{venv_python} (gevent greenlet)");
    let v = hang_of(&daemon, tid, Some("loop_stall"), &who);
    eprintln!("{who}:\n{}", describe(&v));
    let outer = assert_inner_outer(&v, "inner-sleep", &who);
    python_frame(&v, outer + 1, "handler", "greenlet-call", &who);
}
