//! User stacks of blocked threads on real programs (issue 4, "Tests"): DWARF CFI unwinding
//! through code without frame pointers, symbolization with file:line, separate debug files
//! found by build-id, a Rust/tokio release binary, Debian's python3, and a binary only
//! visible through `/proc/PID/root`.
//!
//! Each test starts its program, then one daemon watching only that pid with a 1 s
//! threshold, and reads the `user_stack` of the hang events. Frames are innermost first.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use self::common::*;

/// How long to wait for a hang event once the program is blocked: the 1 s threshold, a
/// scan, and the stack capture.
const EVENT_TIMEOUT: Duration = Duration::from_secs(8);
const LINE_TIMEOUT: Duration = Duration::from_secs(5);

/// The C test program of the call-chain tests.
const CHAIN: &str = "user_stack";

fn chain_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/programs")
        .join(format!("{CHAIN}.c"))
}

/// The 1-based line of `tests/programs/user_stack.c` carrying the comment `/* <marker> */`.
fn marker_line(marker: &str) -> u32 {
    common::marker_line(&format!("{CHAIN}.c"), marker)
}

// ---------------------------------------------------------------------------------------
// Reading user stacks out of events
// ---------------------------------------------------------------------------------------

fn user_frames(v: &Value) -> &[Value] {
    v["user_stack"].as_array().map_or(&[], Vec::as_slice)
}

fn symbol(frame: &Value) -> &str {
    frame["symbol"].as_str().unwrap_or("")
}

/// The user stack one frame a line, for messages and the test log.
fn describe(v: &Value) -> String {
    let mut text = String::new();
    for (i, f) in user_frames(v).iter().enumerate() {
        let place = match (f["file"].as_str(), f["line"].as_u64()) {
            (Some(file), Some(line)) => format!(" at {file}:{line}"),
            (Some(file), None) => format!(" at {file}"),
            _ => String::new(),
        };
        text.push_str(&format!(
            "  #{i:<2} {} {}{}{} [{}] in {}\n",
            f["address"].as_str().unwrap_or("?"),
            f["symbol"].as_str().unwrap_or("??"),
            if f["inlined"] == true {
                " (inlined)"
            } else {
                ""
            },
            place,
            f["tag"].as_str().unwrap_or("?"),
            f["module"].as_str().unwrap_or("?"),
        ));
    }
    text.push_str(&format!(
        "  blocked_here: {}\n  user_stack_unwind: {}\n  user_stack_error: {}\n  user_registers: {}\n",
        v["blocked_here"], v["user_stack_unwind"], v["user_stack_error"], v["user_registers"]
    ));
    text
}

/// The index of the first frame at or after `from` that `matches`, or a panic that shows
/// the stack.
fn find_frame<'a>(
    v: &'a Value,
    from: usize,
    what: &str,
    matches: impl Fn(&Value) -> bool,
) -> (usize, &'a Value) {
    let frames = user_frames(v);
    frames
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, f)| matches(f))
        .unwrap_or_else(|| {
            panic!(
                "tid {}: no frame {what} at or after #{from} of the user stack:\n{}",
                v["tid"],
                describe(v)
            )
        })
}

/// The unwinder got to the outermost frame: no error, and the last frame is `outermost`
/// (`clone3` for a thread, `_start` for a main thread), symbolized.
fn assert_complete(v: &Value, outermost: &str) {
    let last = user_frames(v).last().map(symbol).unwrap_or("");
    assert!(
        v.get("user_stack_error").is_none_or(Value::is_null) && last.contains(outermost),
        "tid {}: the user stack should reach {outermost} without an error (last frame {last:?}, \
         error {}):\n{}",
        v["tid"],
        v["user_stack_error"],
        describe(v)
    );
}

fn unwind_counts(v: &Value) -> (u64, u64) {
    (
        u64_of(v, "/user_stack_unwind/frames"),
        u64_of(v, "/user_stack_unwind/frame_pointer_frames"),
    )
}

/// The hang event of `tid` (under emulation, its episode's first update with a user stack
/// if the hang's read came too late: `Daemon::with_stacks_read`).
fn hang_of(daemon: &Daemon, tid: u32) -> Value {
    let hang = daemon
        .wait_for_event(&format!("hang of tid {tid}"), EVENT_TIMEOUT, |v| {
            v["event"] == "hang" && v["tid"].as_u64() == Some(u64::from(tid))
        })
        .value;
    daemon.with_stacks_read(hang, |v| !user_frames(v).is_empty())
}

// ---------------------------------------------------------------------------------------
// The call-chain program (tests/programs/user_stack.c)
// ---------------------------------------------------------------------------------------

/// user_stack.c running (directly, or through chroot), with a daemon watching it.
struct Chain {
    /// Declared first: stopped before the program is killed, so it reports no exit.
    daemon: Daemon,
    program: Program,
    tids: [u32; 2],
}

impl Chain {
    /// Starts `command` (user_stack.c), a daemon on its pid, and lets the workers deadlock.
    fn start(command: Command) -> Self {
        let mut program = Program::spawn(command);
        let pid = program.expect_number("pid", LINE_TIMEOUT);
        assert_eq!(
            pid,
            u64::from(program.pid),
            "{} printed another pid than the one spawned",
            program.name
        );
        let pid = program.pid.to_string();
        let daemon = Daemon::start(&["--pid", &pid, "--threshold", "1s"]);
        program.send("go");
        let mut tid = |key: &str| {
            u32::try_from(program.expect_number(key, LINE_TIMEOUT)).expect("tid fits u32")
        };
        let tids = [tid("tid_0"), tid("tid_1")];
        program.expect_line("ready", LINE_TIMEOUT);
        Self {
            daemon,
            program,
            tids,
        }
    }

    /// The hang events of both workers.
    fn worker_hangs(&self) -> Vec<Value> {
        self.tids
            .iter()
            .map(|&t| hang_of(&self.daemon, t))
            .collect()
    }
}

/// The first update (at twice the threshold) of each episode of a thread still in the same
/// wait carries the user stack of its hang event, read once: the same frames, copied at the
/// same moment (`user_stack_unwind.copied_at`; a stack read again for the update would be
/// copied at least a threshold later). Hang events without a whole user stack (on a loaded
/// machine a holder's read can give way to a newer hang) are left out: their updates read it.
fn assert_updates_carry_the_user_stacks(chain: &Chain) {
    // Every thread reported (main too, joining).
    hang_of(&chain.daemon, chain.program.pid);
    let all_hangs: Vec<Value> = chain
        .daemon
        .events_for(chain.program.pid)
        .into_iter()
        .map(|r| r.value)
        .filter(|v| v["event"] == "hang" && !user_frames(v).is_empty())
        .filter(|v| v["user_stack_unwind"]["copied_at"].is_string())
        .collect();
    assert!(
        all_hangs.len() >= 2,
        "the workers' hang events carry user stacks: {}",
        chain.daemon.dump(None)
    );
    for hang in &all_hangs {
        let (id, tid) = (str_of(hang, "/id"), hang["tid"].as_u64().expect("tid"));
        let update = chain
            .daemon
            .wait_for_event(&format!("update of {id}"), EVENT_TIMEOUT, |v| {
                v["event"] == "update" && v["id"] == id
            })
            .value;
        assert!(
            update["user_stack"] == hang["user_stack"]
                && update["user_stack_unwind"]["copied_at"]
                    == hang["user_stack_unwind"]["copied_at"],
            "tid {tid}: the update carries the user stack read for the hang \
             (copied at {} and {}):\n{}\nupdate:\n{}",
            hang["user_stack_unwind"]["copied_at"],
            update["user_stack_unwind"]["copied_at"],
            describe(hang),
            describe(&update)
        );
    }
}

/// What a worker's user stack must show: `pthread_mutex_lock`, then `take_locks`, then
/// `worker`, innermost first. Returns the indices of the take_locks and worker frames.
fn assert_chain_names(v: &Value) -> (usize, usize) {
    let (lock, _) = find_frame(v, 0, "pthread_mutex_lock", |f| {
        symbol(f).contains("pthread_mutex_lock")
    });
    let (take_locks, _) = find_frame(v, lock + 1, "take_locks (after pthread_mutex_lock)", |f| {
        symbol(f) == "take_locks"
    });
    let (worker, _) = find_frame(v, take_locks + 1, "worker (after take_locks)", |f| {
        symbol(f) == "worker"
    });
    (take_locks, worker)
}

/// The frame is at the marked line of user_stack.c.
fn assert_at_marker(v: &Value, index: usize, marker: &str) {
    let frame = &user_frames(v)[index];
    let line = marker_line(marker);
    let file = frame["file"].as_str().unwrap_or("");
    assert!(
        file.ends_with(&format!("tests/programs/{CHAIN}.c")) && frame["line"] == line,
        "tid {}: frame #{index} ({}) should be at {CHAIN}.c:{line} ({marker}), is at {file}:{}:\n{}",
        v["tid"],
        symbol(frame),
        frame["line"],
        describe(v)
    );
}

fn assert_tag(v: &Value, index: usize, tag: &str) {
    let frame = &user_frames(v)[index];
    assert_eq!(
        frame["tag"],
        tag,
        "tid {}: frame #{index} ({}) should be tagged {tag}:\n{}",
        v["tid"],
        symbol(frame),
        describe(v)
    );
}

/// Copies the file to `dir/name`, keeping its permissions.
fn copy_to(from: &Path, dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(from, &to)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
    to
}

fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir")
}

// ---------------------------------------------------------------------------------------
// 1. -O2 -fomit-frame-pointer -g: names, file:line, tags, deeper than frame pointers
// ---------------------------------------------------------------------------------------

#[test]
#[ignore = "needs root: loads BPF programs"]
fn c_call_chain_without_frame_pointers_has_names_lines_and_tags() {
    require_root();
    let started = Instant::now();
    let binary = compile(CHAIN);
    let chain = Chain::start(Command::new(&binary));
    let hangs = chain.worker_hangs();
    assert_updates_carry_the_user_stacks(&chain);
    for v in hangs {
        eprintln!("tid {} user stack:\n{}", v["tid"], describe(&v));
        let (lock, _) = find_frame(&v, 0, "pthread_mutex_lock", |f| {
            symbol(f).contains("pthread_mutex_lock")
        });
        let (take_locks, worker) = assert_chain_names(&v);
        assert_at_marker(&v, take_locks, "@take_locks_call");
        assert_at_marker(&v, worker, "@worker_call");
        assert_complete(&v, "clone");
        assert_tag(&v, lock, "runtime");
        assert_tag(&v, take_locks, "application");
        assert_tag(&v, worker, "application");
        // Every frame inside libc is the runtime's.
        for (i, f) in user_frames(&v).iter().enumerate() {
            if f["module"].as_str().is_some_and(|m| m.contains("libc.so")) {
                assert_tag(&v, i, "runtime");
            }
        }
        let here = str_of(&v, "/blocked_here");
        assert!(
            here.starts_with("take_locks at ")
                && here.ends_with(&format!("{CHAIN}.c:{}", marker_line("@take_locks_call"))),
            "tid {}: blocked_here should be take_locks at {CHAIN}.c:{}, is {}:\n{}",
            v["tid"],
            marker_line("@take_locks_call"),
            v["blocked_here"],
            describe(&v)
        );
        let (dwarf, fp) = unwind_counts(&v);
        assert!(
            dwarf > fp,
            "tid {}: DWARF unwinding found {dwarf} frames, a frame-pointer walk {fp}: CFI \
             should get further in a -fomit-frame-pointer binary:\n{}",
            v["tid"],
            describe(&v)
        );
    }
    eprintln!("c_call_chain: {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------
// 2. Stripped, debug info only in /usr/lib/debug/.build-id/NN/REST.debug
// ---------------------------------------------------------------------------------------

const BUILD_ID_ROOT: &str = "/usr/lib/debug/.build-id";

/// A debug file installed under /usr/lib/debug/.build-id/; Drop removes it and the
/// directories it created (when empty: another file may have arrived meanwhile).
struct InstalledDebugFile {
    path: PathBuf,
    created_dirs: Vec<PathBuf>,
}

impl InstalledDebugFile {
    fn install(debug_file: &Path, build_id: &str) -> Self {
        assert!(
            build_id.len() > 2 && build_id.bytes().all(|b| b.is_ascii_hexdigit()),
            "bad build-id {build_id:?}"
        );
        let dir = Path::new(BUILD_ID_ROOT).join(&build_id[..2]);
        let mut missing: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|d| !d.exists())
            .map(Path::to_path_buf)
            .collect();
        missing.reverse();
        let mut installed = Self {
            path: dir.join(format!("{}.debug", &build_id[2..])),
            created_dirs: Vec::new(),
        };
        for d in missing {
            std::fs::create_dir(&d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
            installed.created_dirs.push(d);
        }
        std::fs::copy(debug_file, &installed.path).unwrap_or_else(|e| {
            panic!(
                "installing {} as {}: {e}",
                debug_file.display(),
                installed.path.display()
            )
        });
        installed
    }
}

impl Drop for InstalledDebugFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            eprintln!("warning: removing {}: {e}", self.path.display());
        }
        for d in self.created_dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The GNU build-id of an ELF file, hex, from `readelf -n`.
fn build_id(binary: &Path) -> String {
    let notes = run_ok("readelf", [Path::new("-n"), binary]);
    notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID:"))
        .map(|id| id.trim().to_owned())
        .unwrap_or_else(|| panic!("{} has no build-id note:\n{notes}", binary.display()))
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn stripped_binary_resolves_names_from_build_id_debug_file() {
    require_root();
    for tool in ["objcopy", "strip", "readelf"] {
        assert!(
            have_tool(tool),
            "{tool} is missing (binutils; xtask setup installs it)"
        );
    }
    let started = Instant::now();
    let built = compile(CHAIN);
    // The debug file is made in one directory, the stripped binary lives in another: the
    // only way to the debug info is the build-id directory.
    let debug_dir = temp_dir("hangwatch-debug");
    let debug_file = debug_dir.path().join(format!("{CHAIN}.debug"));
    run_ok(
        "objcopy",
        [Path::new("--only-keep-debug"), &built, &debug_file],
    );
    let bin_dir = temp_dir("hangwatch-stripped");
    let binary = copy_to(&built, bin_dir.path(), CHAIN);
    run_ok("strip", [Path::new("--strip-all"), &binary]);
    let mut debuglink = std::ffi::OsString::from("--add-gnu-debuglink=");
    debuglink.push(&debug_file);
    run_ok("objcopy", [debuglink.as_os_str(), binary.as_os_str()]);
    // The binary really has nothing left to name take_locks and worker with.
    let sections = run_ok("readelf", [Path::new("-S"), &binary]);
    assert!(
        sections.contains(".gnu_debuglink")
            && !sections.contains(".symtab")
            && !sections.contains(".debug_info"),
        "{} should be stripped with a debug link:\n{sections}",
        binary.display()
    );
    let dynamic = run_ok("readelf", [Path::new("--dyn-syms"), &binary]);
    assert!(
        !dynamic.contains("take_locks"),
        "take_locks is in the dynamic symbols of {}: the test proves nothing",
        binary.display()
    );
    let id = build_id(&binary);
    assert_eq!(id, build_id(&debug_file), "strip changed the build-id");
    let _installed = InstalledDebugFile::install(&debug_file, &id);
    drop(debug_dir);

    let chain = Chain::start(Command::new(&binary));
    let hangs = chain.worker_hangs();
    assert_updates_carry_the_user_stacks(&chain);
    for v in hangs {
        eprintln!("tid {} user stack:\n{}", v["tid"], describe(&v));
        let (take_locks, worker) = assert_chain_names(&v);
        assert_at_marker(&v, take_locks, "@take_locks_call");
        assert_at_marker(&v, worker, "@worker_call");
        assert_complete(&v, "clone");
        assert!(
            str_of(&v, "/blocked_here").starts_with("take_locks at "),
            "tid {}: blocked_here is {}:\n{}",
            v["tid"],
            v["blocked_here"],
            describe(&v)
        );
    }
    eprintln!("stripped_binary: {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------
// 3. Rust release binary: a tokio worker blocked in std::thread::sleep (seed 001)
// ---------------------------------------------------------------------------------------

#[test]
#[ignore = "needs root: loads BPF programs"]
fn tokio_worker_blocked_in_sleep_reaches_the_handler() {
    require_root();
    let started = Instant::now();
    let binary = example("tokio_stall");
    let mut program = Program::start(&binary, &[]);
    let pid = program.expect_number("pid", LINE_TIMEOUT);
    assert_eq!(pid, u64::from(program.pid));
    program.expect_line("ready", LINE_TIMEOUT);
    let daemon = Daemon::start(&["--pid", &program.pid.to_string(), "--threshold", "1s"]);
    let has_handler = |f: &Value| symbol(f).contains("handle_request");
    let Some(found) = daemon.find_event(EVENT_TIMEOUT, |v| {
        v["event"] == "hang" && user_frames(v).iter().any(has_handler)
    }) else {
        let tids = program.tids();
        let stacks: Vec<String> = tids
            .iter()
            .filter_map(|&t| {
                daemon
                    .find_event(Duration::ZERO, |v| {
                        v["event"] == "hang" && v["tid"].as_u64() == Some(u64::from(t))
                    })
                    .map(|r| format!("tid {t}:\n{}", describe(&r.value)))
            })
            .collect();
        panic!(
            "no hang event of {} (tids {tids:?}) has a frame handle_request; their stacks:\n{}",
            binary.display(),
            stacks.join("\n")
        );
    };
    let v = found.value;
    eprintln!("tid {} user stack:\n{}", v["tid"], describe(&v));
    let (handler, frame) = find_frame(&v, 0, "handle_request", has_handler);
    assert_tag(&v, handler, "application");
    let (sleep, _) = find_frame(&v, 0, "std::thread::sleep", |f| {
        symbol(f).contains("std::thread") && symbol(f).contains("sleep")
    });
    assert!(
        sleep < handler,
        "std::thread::sleep should be inside handle_request:\n{}",
        describe(&v)
    );
    assert_tag(&v, sleep, "runtime");
    let here = str_of(&v, "/blocked_here");
    assert!(
        here.starts_with(symbol(frame)) && here.contains("handle_request"),
        "blocked_here should name handle_request, is {}:\n{}",
        v["blocked_here"],
        describe(&v)
    );
    // The worker thread runs tokio under the handler, and the walk goes on to clone3.
    assert_complete(&v, "clone");
    assert!(
        user_frames(&v)
            .iter()
            .skip(handler)
            .any(|f| symbol(f).contains("tokio::")),
        "no tokio frame outside handle_request:\n{}",
        describe(&v)
    );
    eprintln!("tokio_stall: {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------
// 4. Debian's python3 blocked on a threading.Lock
// ---------------------------------------------------------------------------------------

/// Debian's interpreter, not a pyenv or venv python3 that PATH may find first.
const DEBIAN_PYTHON: &str = "/usr/bin/python3";

#[test]
#[ignore = "needs root: loads BPF programs"]
fn python_blocked_on_a_lock_unwinds_into_the_interpreter() {
    require_root();
    assert!(
        Path::new(DEBIAN_PYTHON).exists(),
        "{DEBIAN_PYTHON} is missing (Debian's python3; xtask setup installs it)"
    );
    let started = Instant::now();
    let mut command = Command::new(DEBIAN_PYTHON);
    command.args([
        "-c",
        "import threading; l = threading.Lock(); l.acquire(); print('ready', flush=True); l.acquire()",
    ]);
    let mut program = Program::spawn(command);
    program.expect_line("ready", LINE_TIMEOUT);
    let daemon = Daemon::start(&["--pid", &program.pid.to_string(), "--threshold", "1s"]);
    let v = hang_of(&daemon, program.pid);
    eprintln!("python3 main thread user stack:\n{}", describe(&v));
    let (acquire, _) = find_frame(&v, 0, "PyThread_acquire_lock*", |f| {
        symbol(f).contains("PyThread_acquire_lock")
    });
    let (eval, _) = find_frame(&v, acquire + 1, "_PyEval_EvalFrameDefault", |f| {
        symbol(f).contains("_PyEval_EvalFrameDefault")
    });
    // It went through libc to get there.
    let (libc, _) = find_frame(&v, 0, "in libc", |f| {
        f["module"].as_str().is_some_and(|m| m.contains("libc.so"))
    });
    assert!(
        libc < acquire,
        "the libc frames should be inside PyThread_acquire_lock:\n{}",
        describe(&v)
    );
    for i in [libc, acquire, eval] {
        assert_tag(&v, i, "runtime");
    }
    assert_complete(&v, "_start");
    let (dwarf, fp) = unwind_counts(&v);
    assert!(
        dwarf > fp,
        "DWARF unwinding found {dwarf} frames, a frame-pointer walk {fp}: Debian's python3 has \
         no frame pointers, CFI should get further:\n{}",
        describe(&v)
    );
    eprintln!(
        "python3 ({dwarf} frames by DWARF, {fp} by frame pointers): {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// 5. A static binary only visible inside the process's own root (mount namespace + chroot)
// ---------------------------------------------------------------------------------------

/// Run in a private mount namespace (`unshare -m`): mounts a tmpfs on the empty directory
/// $1, copies the binary $2 into it as /prog and execs `chroot $1 /prog` (same pid).
const CHROOT_SCRIPT: &str =
    r#"mount -t tmpfs hangwatch-test "$1" && cp "$2" "$1/prog" && exec chroot "$1" /prog"#;

#[test]
#[ignore = "needs root: loads BPF programs"]
fn binary_in_a_chroot_is_symbolized_through_proc_root() {
    require_root();
    for tool in ["chroot", "unshare", "mount"] {
        assert!(
            have_tool(tool),
            "{tool} is missing (coreutils, util-linux, mount)"
        );
    }
    let started = Instant::now();
    // Built -static: the chroot has nothing but the binary.
    let build = temp_dir("hangwatch-static");
    let binary = build.path().join("prog");
    let source = chain_source();
    // libc.a comes with libc6-dev.
    gcc(&source, &binary, &["-static"]);
    // Empty on the host for the whole test: the binary lives on a tmpfs mounted over it in
    // the program's own mount namespace.
    let root = temp_dir("hangwatch-chroot");
    let mut command = Command::new(find_tool("unshare").expect("unshare"));
    command
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            CHROOT_SCRIPT,
            "sh",
        ])
        .arg(root.path())
        .arg(&binary);
    let chain = Chain::start(command);
    drop(build);
    // /proc/PID/maps prints paths from the reader's mount namespace root down, so it names
    // ROOT/prog, which does not exist here: only /proc/PID/map_files (or the process's
    // own root) lead to the file.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", chain.program.pid))
        .expect("maps of the chrooted program");
    let mapped = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/prog"))
        .unwrap_or_else(|| panic!("the program's maps do not name its binary:\n{maps}"));
    assert!(
        !Path::new(mapped).exists(),
        "{mapped} (from /proc/PID/maps) exists outside the program's mount namespace: the \
         test would not prove anything"
    );
    for v in chain.worker_hangs() {
        eprintln!("tid {} user stack:\n{}", v["tid"], describe(&v));
        let (take_locks, worker) = assert_chain_names(&v);
        assert_at_marker(&v, take_locks, "@take_locks_call");
        assert_at_marker(&v, worker, "@worker_call");
        assert_complete(&v, "clone");
    }
    eprintln!("chroot: {:?}", started.elapsed());
}
