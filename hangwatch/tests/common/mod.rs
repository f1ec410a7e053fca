//! Harness for the real-kernel tests: builds the C test programs, runs them and the
//! daemon under RAII guards, and collects the daemon's JSON events.
//!
//! Every process started here is killed by pid when its guard drops, also on panic.
//! When a test panics, the daemon guard prints the daemon's command line, its stderr and
//! every event it emitted, so a failure can be read without re-running.
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the harness"
)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

pub use serde_json::Value;

/// The daemon binary under test.
pub const HANGWATCH: &str = env!("CARGO_BIN_EXE_hangwatch");

/// How long the daemon may take to print "attached" (times [`time_scale`]).
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// The environment variable that says how many times slower than native this run is.
pub const TIME_SCALE_VAR: &str = "HANGWATCH_TEST_TIME_SCALE";

/// How many times longer than on real hardware the harness waits for what must happen:
/// `HANGWATCH_TEST_TIME_SCALE`, a whole number, 1 when unset. `cargo xtask vmtest` sets it
/// for kernels booted under QEMU's TCG, where CPU-bound work (the verifier loading the
/// probes, the daemon's walks, symbolization, gcc) runs about ten times slower: the daemon
/// there takes ~11 s to attach, where 10 s is the native limit.
///
/// Only the harness's timeouts (waits that end as soon as the awaited thing happens) are
/// scaled, so a passing run costs no more time; fixed sleeps and quiet windows in the
/// tests are not, and no threshold given to the daemon is.
pub fn time_scale() -> u32 {
    static SCALE: OnceLock<u32> = OnceLock::new();
    *SCALE.get_or_init(|| match std::env::var(TIME_SCALE_VAR) {
        Err(_) => 1,
        Ok(text) => match text.trim().parse::<u32>() {
            Ok(n) if n >= 1 => n,
            _ => panic!("{TIME_SCALE_VAR}={text:?}: expected a whole number >= 1"),
        },
    })
}

/// `timeout` times [`time_scale`].
pub fn scaled(timeout: Duration) -> Duration {
    timeout.saturating_mul(time_scale())
}

/// Panics unless the test runs as root: these tests load BPF programs.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "kernel tests load BPF programs and must run as root (euid is {euid})"
    );
}

/// Whether `tool` is found on PATH (or in the sbin directories root has).
pub fn have_tool(tool: &str) -> bool {
    find_tool(tool).is_some()
}

pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

// ---------------------------------------------------------------------------------------
// C test programs
// ---------------------------------------------------------------------------------------

/// Compiles `tests/programs/<name>.c` with the flags of the issue and returns the binary,
/// named `<name>` (so its comm and exe are predictable). Compiled once per test binary run,
/// into cargo's temporary directory for integration tests.
/// `gcc -O2 -fomit-frame-pointer -g -pthread -Wall [extra] -o OUT SOURCE`, the way every
/// test program is built (no frame pointers: what distributions ship); panics with gcc's
/// output on failure.
pub fn gcc(source: &Path, out: &Path, extra: &[&str]) {
    let output = Command::new("gcc")
        .args(["-O2", "-fomit-frame-pointer", "-g", "-pthread", "-Wall"])
        .args(extra)
        .arg("-o")
        .arg(out)
        .arg(source)
        .output()
        .unwrap_or_else(|e| panic!("running gcc for {}: {e}", source.display()));
    assert!(
        output.status.success(),
        "gcc {extra:?} failed on {} ({}):\n{}",
        source.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

pub fn compile(name: &str) -> PathBuf {
    static CACHE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = cache.get(name) {
        return path.clone();
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/programs")
        .join(format!("{name}.c"));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("programs");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let out = dir.join(name);
    // Build beside and rename, so a concurrent run never executes a half-written file.
    let partial = dir.join(format!("{name}.{}.partial", std::process::id()));
    gcc(&source, &partial, &[]);
    std::fs::rename(&partial, &out)
        .unwrap_or_else(|e| panic!("renaming {} to {}: {e}", partial.display(), out.display()));
    cache.insert(name.to_owned(), out.clone());
    out
}

/// The 1-based line of `tests/programs/<file>` carrying the comment `/* <marker> */`
/// (exactly one line must): where a test expects a frame's file:line to point.
pub fn marker_line(file: &str, marker: &str) -> u32 {
    let comment = format!("/* {marker} */");
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/programs")
        .join(file);
    let text = std::fs::read_to_string(&source)
        .unwrap_or_else(|e| panic!("reading {}: {e}", source.display()));
    let mut found = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(&comment))
        .map(|(i, _)| u32::try_from(i + 1).expect("line fits u32"));
    let line = found
        .next()
        .unwrap_or_else(|| panic!("{} has no line marked {marker}", source.display()));
    assert!(
        found.next().is_none(),
        "{} marks more than one line {marker}",
        source.display()
    );
    line
}

// ---------------------------------------------------------------------------------------
// Processes under test
// ---------------------------------------------------------------------------------------

/// A process a test started: stdout lines arrive on a channel, stdin stays open until
/// [`Program::send`] closes nothing (the program decides), and Drop kills it by pid.
pub struct Program {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    pub pid: u32,
    pub name: String,
    /// Every stdout line read so far, for failure messages.
    seen: Vec<String>,
}

impl Program {
    /// Starts a compiled test program (see [`compile`]) with `args`.
    pub fn start(path: &Path, args: &[&str]) -> Self {
        let mut command = Command::new(path);
        command.args(args);
        Self::spawn(command)
    }

    /// Starts any command with stdin and stdout piped (stderr inherited).
    pub fn spawn(mut command: Command) -> Self {
        let name = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let pid = child.id();
        Self {
            child,
            stdin,
            lines,
            pid,
            name,
            seen: Vec::new(),
        }
    }

    /// The next stdout line; panics on timeout (scaled, see [`time_scale`]) or end of output.
    pub fn next_line(&mut self, timeout: Duration) -> String {
        self.read_line(scaled(timeout))
    }

    /// [`Program::next_line`] with a timeout taken as it is.
    fn read_line(&mut self, timeout: Duration) -> String {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => {
                self.seen.push(line.clone());
                line
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!(
                    "{} (pid {}): no stdout line within {timeout:?}; so far: {:?}",
                    self.name, self.pid, self.seen
                )
            }
            Err(RecvTimeoutError::Disconnected) => panic!(
                "{} (pid {}): stdout closed (status {:?}); so far: {:?}",
                self.name,
                self.pid,
                self.child.try_wait(),
                self.seen
            ),
        }
    }

    /// Reads lines until one is `<key> <value>` and returns the value.
    pub fn expect_field(&mut self, key: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + scaled(timeout);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.read_line(left);
            if let Some(value) = line
                .strip_prefix(key)
                .and_then(|rest| rest.strip_prefix(' '))
            {
                return value.trim().to_owned();
            }
        }
    }

    /// Like [`Program::expect_field`], parsed as a number.
    pub fn expect_number(&mut self, key: &str, timeout: Duration) -> u64 {
        let value = self.expect_field(key, timeout);
        value
            .parse()
            .unwrap_or_else(|e| panic!("{}: `{key} {value}` is not a number: {e}", self.name))
    }

    /// Reads lines until one equals `line`.
    pub fn expect_line(&mut self, line: &str, timeout: Duration) {
        let deadline = Instant::now() + scaled(timeout);
        while self.read_line(deadline.saturating_duration_since(Instant::now())) != line {}
    }

    /// Writes one line to the program's stdin (the "go" of the test programs).
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is piped");
        writeln!(stdin, "{line}")
            .unwrap_or_else(|e| panic!("writing to {} (pid {}): {e}", self.name, self.pid));
        stdin
            .flush()
            .unwrap_or_else(|e| panic!("flushing stdin of {}: {e}", self.name));
    }

    /// Sends SIGKILL and reaps the process (bounded wait).
    pub fn kill(&mut self) {
        signal(self.pid, libc::SIGKILL);
        wait_bounded(&mut self.child, Duration::from_secs(5));
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let timeout = scaled(timeout);
        wait_bounded(&mut self.child, timeout).unwrap_or_else(|| {
            panic!(
                "{} (pid {}) did not exit within {timeout:?}",
                self.name, self.pid
            )
        })
    }

    /// The kernel tids of the process right now.
    pub fn tids(&self) -> Vec<u32> {
        tids(self.pid)
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        signal(self.pid, libc::SIGKILL);
        // A task in uninterruptible sleep cannot die until it wakes: do not hang here.
        if wait_bounded(&mut self.child, Duration::from_secs(3)).is_none() {
            eprintln!(
                "warning: {} (pid {}) did not die after SIGKILL",
                self.name, self.pid
            );
        }
    }
}

/// Sends `sig` to `pid`; ESRCH is fine (already gone).
pub fn signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Whether this kernel has thread pidfds (`PIDFD_THREAD`, Linux 6.9), which the daemon
/// reads per-thread probe state by; older kernels refuse the flag with EINVAL.
pub fn has_thread_pidfds() -> bool {
    const PIDFD_THREAD: libc::c_int = libc::O_EXCL;
    let pid = libc::pid_t::try_from(std::process::id()).expect("pid fits pid_t");
    // SAFETY: plain syscall with integer arguments; the fd it may return is closed below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, PIDFD_THREAD) };
    if fd >= 0 {
        // SAFETY: a new fd nothing else owns.
        unsafe { libc::close(fd as libc::c_int) };
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
}

/// Polls `try_wait` until the child exits or `timeout` passes.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => return None,
            Err(e) => panic!("waiting for pid {}: {e}", child.id()),
        }
    }
}

/// Polls `done` every 20 ms until it returns true or `timeout` (scaled) passes.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + scaled(timeout);
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The tids of `pid` from /proc/PID/task (empty once the process is gone).
pub fn tids(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut tids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    tids
}

/// The scheduler state letter of a task ('R', 'S', 'D', ...), from /proc/PID/stat.
pub fn task_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The kernel stack of a task from /proc/PID/stack (root only), for failure messages.
pub fn proc_stack(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/stack")).unwrap_or_else(|e| format!("<{e}>"))
}

// ---------------------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------------------

/// One event as received, with its arrival time.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub value: Value,
}

#[derive(Default)]
struct DaemonOutput {
    events: Vec<Received>,
    /// stdout lines that were not a JSON object.
    bad_lines: Vec<String>,
    stderr: String,
    attached: bool,
    stdout_closed: bool,
    stderr_closed: bool,
}

/// A running `hangwatch run --output json ...`, killed in Drop; on panic Drop prints its
/// command line, stderr and events.
pub struct Daemon {
    child: Child,
    pub pid: u32,
    args: Vec<String>,
    started: Instant,
    output: Arc<(Mutex<DaemonOutput>, Condvar)>,
}

impl Daemon {
    /// Starts `hangwatch run --output json <args>` and waits for "attached" on stderr.
    pub fn start(args: &[&str]) -> Self {
        let daemon = Self::start_unattached(args);
        daemon.wait_attached();
        daemon
    }

    /// Starts `hangwatch run --output json <args>` without waiting for anything.
    pub fn start_unattached(args: &[&str]) -> Self {
        Self::spawn(&[], &[], args)
    }

    /// As [`Daemon::start`], with these environment variables set for the daemon.
    pub fn start_with_env(env: &[(&str, &str)], args: &[&str]) -> Self {
        let daemon = Self::spawn(&[], env, args);
        daemon.wait_attached();
        daemon
    }

    /// As [`Daemon::start`], as root but with only `capabilities` (e.g. "BPF", "SYS_PTRACE"),
    /// as a container whose securityContext drops ALL and adds these runs it: `setpriv`
    /// limits the bounding set, so the exec'd daemon holds exactly these.
    pub fn start_with_capabilities(capabilities: &[String], args: &[&str]) -> Self {
        let bounding = std::iter::once("-all".to_owned())
            .chain(
                capabilities
                    .iter()
                    .map(|c| format!("+{}", c.to_lowercase())),
            )
            .collect::<Vec<_>>()
            .join(",");
        let wrapper = [
            "setpriv".to_owned(),
            format!("--bounding-set={bounding}"),
            "--inh-caps=-all".to_owned(),
            "--".to_owned(),
        ];
        let daemon = Self::spawn(&wrapper, &[], args);
        daemon.wait_attached();
        daemon
    }

    /// Starts `<wrapper...> hangwatch run --output json <args>` (the wrapper execs it, so
    /// the pid is the daemon's).
    fn spawn(wrapper: &[String], env: &[(&str, &str)], args: &[&str]) -> Self {
        require_root();
        let mut full = vec!["run".to_owned(), "--output".to_owned(), "json".to_owned()];
        // A free port each, so that daemons of tests running in parallel never collide
        // on the default address; `Daemon::endpoint` reads the port from the log.
        if !args.contains(&"--listen") {
            full.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
        }
        full.extend(args.iter().map(|a| (*a).to_owned()));
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command.args(wrapper_args).arg(HANGWATCH);
                command
            }
            None => Command::new(HANGWATCH),
        };
        let mut child = command
            // Pod attribution only where a test asks for it.
            .env_remove("NODE_NAME")
            .envs(env.iter().copied())
            .args(&full)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {HANGWATCH} {full:?}: {e}"));
        let output: Arc<(Mutex<DaemonOutput>, Condvar)> = Arc::default();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        {
            let output = Arc::clone(&output);
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let at = Instant::now();
                    let (lock, cv) = &*output;
                    let mut out = lock.lock().unwrap_or_else(|e| e.into_inner());
                    match serde_json::from_str::<Value>(&line) {
                        Ok(value) if value.is_object() => out.events.push(Received { at, value }),
                        _ => out.bad_lines.push(line),
                    }
                    cv.notify_all();
                }
                let (lock, cv) = &*output;
                lock.lock().unwrap_or_else(|e| e.into_inner()).stdout_closed = true;
                cv.notify_all();
            });
        }
        {
            let output = Arc::clone(&output);
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let (lock, cv) = &*output;
                    let mut out = lock.lock().unwrap_or_else(|e| e.into_inner());
                    if line.contains("attached") {
                        out.attached = true;
                    }
                    out.stderr.push_str(&line);
                    out.stderr.push('\n');
                    cv.notify_all();
                }
                let (lock, cv) = &*output;
                lock.lock().unwrap_or_else(|e| e.into_inner()).stderr_closed = true;
                cv.notify_all();
            });
        }
        let pid = child.id();
        Self {
            child,
            pid,
            args: full,
            started: Instant::now(),
            output,
        }
    }

    /// Waits for the daemon to report its probes attached; panics if it exits or times out.
    pub fn wait_attached(&self) {
        let (lock, cv) = &*self.output;
        let limit = scaled(ATTACH_TIMEOUT);
        let deadline = Instant::now() + limit;
        let mut out = lock.lock().unwrap_or_else(|e| e.into_inner());
        while !out.attached {
            assert!(
                !(out.stderr_closed && out.stdout_closed),
                "hangwatch exited before attaching (status {:?})",
                self.status_now()
            );
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "hangwatch did not print \"attached\" within {limit:?}"
            );
            out = cv
                .wait_timeout(out, left.min(Duration::from_millis(100)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let took = self.started.elapsed();
        eprintln!("hangwatch (pid {}) attached after {took:?}", self.pid);
    }

    /// The HTTP API's base URL (`http://127.0.0.1:PORT`), from the daemon's
    /// "listening on" log line; panics if it never logs one.
    pub fn endpoint(&self) -> String {
        let (lock, cv) = &*self.output;
        let deadline = Instant::now() + scaled(ATTACH_TIMEOUT);
        let mut out = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(url) = out
                .stderr
                .lines()
                .find_map(|l| l.split_once("listening on ").map(|(_, url)| url.trim()))
            {
                return url.to_owned();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero() && !out.stderr_closed,
                "hangwatch never logged \"listening on\":\n{}",
                out.stderr
            );
            out = cv
                .wait_timeout(out, left.min(Duration::from_millis(100)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn status_now(&self) -> Option<ExitStatus> {
        // try_wait needs &mut; /proc tells whether it is still there without reaping.
        if Path::new(&format!("/proc/{}", self.pid)).exists() {
            None
        } else {
            Some(ExitStatus::default())
        }
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Received> {
        self.output
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .events
            .clone()
    }

    /// Every event so far whose `pid` is `pid`.
    pub fn events_for(&self, pid: u32) -> Vec<Received> {
        self.events()
            .into_iter()
            .filter(|r| r.value["pid"].as_u64() == Some(u64::from(pid)))
            .collect()
    }

    /// stdout lines that were not JSON objects.
    pub fn bad_lines(&self) -> Vec<String> {
        self.output
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bad_lines
            .clone()
    }

    /// The daemon's stderr so far.
    pub fn stderr(&self) -> String {
        self.output
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stderr
            .clone()
    }

    /// Waits for the first event (from the start of the run) that `matches`; returns it,
    /// or None on timeout (scaled, see [`time_scale`]).
    pub fn find_event(
        &self,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Option<Received> {
        let (lock, cv) = &*self.output;
        let deadline = Instant::now() + scaled(timeout);
        let mut out = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(found) = out.events.iter().find(|r| matches(&r.value)) {
                return Some(found.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || out.stdout_closed {
                return None;
            }
            out = cv
                .wait_timeout(out, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Like [`Daemon::find_event`] but panics with `what` on timeout.
    pub fn wait_for_event(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Received {
        self.find_event(timeout, matches).unwrap_or_else(|| {
            let timeout = scaled(timeout);
            panic!("no event {what} within {timeout:?} (events are printed below)")
        })
    }

    /// Sends `sig` and waits up to `limit` for the daemon to exit; returns its status and
    /// how long it took, or None if it is still running.
    pub fn signal_and_wait(
        &mut self,
        sig: libc::c_int,
        limit: Duration,
    ) -> Option<(ExitStatus, Duration)> {
        let sent = Instant::now();
        signal(self.pid, sig);
        let status = wait_bounded(&mut self.child, limit)?;
        Some((status, sent.elapsed()))
    }

    /// Stops the daemon with SIGTERM and checks a clean end: exit 0 within 1 s, every
    /// stdout line JSON, no panic on stderr.
    pub fn stop(&mut self) {
        let limit = scaled(Duration::from_secs(1));
        let Some((status, took)) = self.signal_and_wait(libc::SIGTERM, limit) else {
            panic!("hangwatch did not exit within {limit:?} of SIGTERM");
        };
        assert!(
            status.success(),
            "hangwatch exited with {status} after SIGTERM"
        );
        eprintln!("hangwatch stopped on SIGTERM in {took:?}");
        // Let the reader threads drain what the daemon wrote before exiting.
        let (lock, cv) = &*self.output;
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut out = lock.lock().unwrap_or_else(|e| e.into_inner());
        while !(out.stdout_closed && out.stderr_closed) && Instant::now() < deadline {
            out = cv
                .wait_timeout(out, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        assert!(
            out.bad_lines.is_empty(),
            "stdout lines that are not JSON objects: {:?}",
            out.bad_lines
        );
        assert!(
            !out.stderr.contains("panicked"),
            "hangwatch panicked:\n{}",
            out.stderr
        );
    }

    /// A dump of the run for failure messages: command, stderr, events (all of them, or
    /// only those of `pids` when given).
    pub fn dump(&self, pids: Option<&[u32]>) -> String {
        let out = self.output.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut text = String::new();
        let _ = writeln!(
            text,
            "--- hangwatch {} (pid {}) ---",
            self.args.join(" "),
            self.pid
        );
        let _ = writeln!(text, "--- stderr ---\n{}", out.stderr);
        let _ = writeln!(text, "--- events ({} in total) ---", out.events.len());
        for r in &out.events {
            let pid = r.value["pid"].as_u64().and_then(|p| u32::try_from(p).ok());
            if pids.is_none_or(|pids| pid.is_some_and(|p| pids.contains(&p))) {
                let _ = writeln!(text, "+{:?} {}", r.at.duration_since(self.started), r.value);
            }
        }
        if !out.bad_lines.is_empty() {
            let _ = writeln!(
                text,
                "--- non-JSON stdout lines ---\n{}",
                out.bad_lines.join("\n")
            );
        }
        text
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.dump(None));
        }
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        signal(self.pid, libc::SIGTERM);
        if wait_bounded(&mut self.child, Duration::from_secs(2)).is_none() {
            signal(self.pid, libc::SIGKILL);
            wait_bounded(&mut self.child, Duration::from_secs(5));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Event accessors
// ---------------------------------------------------------------------------------------

/// `v[key]` as a string, or "" if absent or not a string.
pub fn str_of<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// `v[key]` as an integer; panics with the event if it is missing.
pub fn u64_of(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("event has no integer {pointer}: {v}"))
}

pub fn is_event(v: &Value, event: &str, kind: &str, tid: u32) -> bool {
    v["event"] == event && v["kind"] == kind && v["tid"].as_u64() == Some(u64::from(tid))
}

/// Parses "0x..." (or decimal) into a number.
pub fn parse_address(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The symbols of the event's kernel stack.
pub fn kernel_symbols(v: &Value) -> Vec<String> {
    v["kernel_stack"]
        .as_array()
        .map(|frames| {
            frames
                .iter()
                .map(|f| f["symbol"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `command` to completion and panics with its output if it fails.
pub fn run_ok<I, S>(program: &str, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let output = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {program} {args:?}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------
// The ABBA deadlock program (tests/programs/abba.c), shared by several tests
// ---------------------------------------------------------------------------------------

/// A running abba.c, before or after it deadlocks.
pub struct Abba {
    pub program: Program,
    /// The binary, canonical (what /proc/PID/exe shows).
    pub path: PathBuf,
    /// The argument vector it was started with.
    pub cmdline: Vec<String>,
}

/// What abba.c printed once both workers are about to deadlock.
#[derive(Clone, Copy, Debug)]
pub struct Deadlock {
    pub mutex_a: u64,
    pub mutex_b: u64,
    pub tid_a: u32,
    pub tid_b: u32,
    /// When the workers were about to take their second lock.
    pub at: Instant,
}

impl Abba {
    /// Starts abba.c; it prints its pid and waits for [`Abba::deadlock`].
    pub fn start() -> Self {
        let path = compile("abba");
        let path = path
            .canonicalize()
            .unwrap_or_else(|e| panic!("canonicalizing {}: {e}", path.display()));
        let arg = "hold-forever";
        let mut program = Program::start(&path, &[arg]);
        let pid = program.expect_number("pid", Duration::from_secs(5));
        assert_eq!(
            pid,
            u64::from(program.pid),
            "abba printed another pid than the one spawned"
        );
        let cmdline = vec![path.to_string_lossy().into_owned(), arg.to_owned()];
        Self {
            program,
            path,
            cmdline,
        }
    }

    pub fn pid(&self) -> u32 {
        self.program.pid
    }

    /// Lets the workers deadlock and returns their tids and the mutex addresses.
    pub fn deadlock(&mut self) -> Deadlock {
        let t = Duration::from_secs(5);
        self.program.send("go");
        let p = &mut self.program;
        let mutex = |p: &mut Program, key: &str| {
            let text = p.expect_field(key, t);
            parse_address(&text)
                .unwrap_or_else(|| panic!("abba printed a bad address: {key} {text}"))
        };
        let mutex_a = mutex(p, "mutex_a");
        let mutex_b = mutex(p, "mutex_b");
        let tid = |p: &mut Program, key: &str| {
            u32::try_from(p.expect_number(key, t)).expect("tid fits u32")
        };
        let tid_a = tid(p, "tid_a");
        let tid_b = tid(p, "tid_b");
        p.expect_line("ready", t);
        Deadlock {
            mutex_a,
            mutex_b,
            tid_a,
            tid_b,
            at: Instant::now(),
        }
    }
}

/// Invariants of every episode in a stream: one hang first, updates with a growing
/// duration, at most one resolved, last; the same thread and kind throughout.
pub fn check_episodes(events: &[Received]) {
    let mut by_id: HashMap<&str, Vec<&Value>> = HashMap::new();
    for r in events {
        by_id
            .entry(str_of(&r.value, "/id"))
            .or_default()
            .push(&r.value);
    }
    for (id, episode) in by_id {
        let names: Vec<&str> = episode.iter().map(|v| str_of(v, "/event")).collect();
        assert_eq!(
            names.first(),
            Some(&"hang"),
            "episode {id} must start with its hang: {names:?}"
        );
        assert_eq!(
            names.iter().filter(|n| **n == "hang").count(),
            1,
            "episode {id}: {names:?}"
        );
        let resolved = names.iter().filter(|n| **n == "resolved").count();
        assert!(resolved <= 1, "episode {id} resolved twice: {names:?}");
        if resolved == 1 {
            assert_eq!(
                names.last(),
                Some(&"resolved"),
                "events after resolved in episode {id}: {names:?}"
            );
        }
        let first = episode[0];
        let mut last_duration = 0;
        for v in &episode {
            assert_eq!(v["tid"], first["tid"], "episode {id} changed thread: {v}");
            assert_eq!(v["kind"], first["kind"], "episode {id} changed kind: {v}");
            let duration = u64_of(v, "/duration_ms");
            assert!(
                duration >= last_duration,
                "episode {id}: duration_ms went back to {duration}: {v}"
            );
            last_duration = duration;
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP: the daemon's API, the CLI, a webhook receiver
// ---------------------------------------------------------------------------------------

/// An HTTP answer: status, body text, and the body as JSON when it is JSON.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub text: String,
    pub json: Value,
}

/// `method` `url` with a 10 s limit (scaled); panics when the server cannot be reached.
pub fn http(method: &str, url: &str) -> Answer {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(scaled(Duration::from_secs(10))))
        .build()
        .into();
    let response = match method {
        "GET" => agent.get(url).call(),
        "POST" => agent.post(url).send("{}"),
        "PUT" => agent.put(url).send("{}"),
        "DELETE" => agent.delete(url).call(),
        other => panic!("unsupported method {other}"),
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let text = response
        .into_body()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()
        .unwrap_or_else(|e| panic!("{method} {url}: reading the body: {e}"));
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer { status, text, json }
}

/// GET that must answer 200; returns the body as JSON (Null if not JSON).
pub fn get_ok(url: &str) -> Answer {
    let answer = http("GET", url);
    assert_eq!(answer.status, 200, "GET {url}: {}", answer.text);
    answer
}

/// What a CLI run printed and how it exited.
#[derive(Debug)]
pub struct CliRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("CLI output is not JSON ({e}):\n{}", self.stdout))
    }
}

/// Runs `hangwatch <args>` against `endpoint` (through HANGWATCH_ENDPOINT), with a time
/// limit of 20 s (scaled).
pub fn cli(endpoint: &str, args: &[&str]) -> CliRun {
    let child = Command::new(HANGWATCH)
        .args(args)
        .env("HANGWATCH_ENDPOINT", endpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting hangwatch {args:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let limit = scaled(Duration::from_secs(20));
    let output = match rx.recv_timeout(limit) {
        Ok(output) => output.unwrap_or_else(|e| panic!("hangwatch {args:?}: {e}")),
        Err(_) => {
            signal(pid, libc::SIGKILL);
            panic!("hangwatch {args:?} did not finish within {limit:?}");
        }
    };
    let run = CliRun {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    eprintln!(
        "$ hangwatch {} -> {:?}\n{}{}",
        args.join(" "),
        run.code,
        run.stdout,
        run.stderr
    );
    run
}

/// Like [`cli`], and it must exit 0.
pub fn cli_ok(endpoint: &str, args: &[&str]) -> CliRun {
    let run = cli(endpoint, args);
    assert_eq!(run.code, Some(0), "hangwatch {args:?} failed: {run:?}");
    run
}

/// How a [`WebhookReceiver`] treats requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiverMode {
    /// Reads each request and answers 200.
    Accept,
    /// Never accepts a connection (the kernel's backlog completes the handshake, so the
    /// client waits for an answer that never comes).
    NeverAnswer,
}

/// A tiny HTTP server on loopback that records the JSON bodies POSTed to it.
pub struct WebhookReceiver {
    pub url: String,
    bodies: Arc<(Mutex<Vec<Received>>, Condvar)>,
    _listener: Option<std::net::TcpListener>,
}

impl WebhookReceiver {
    pub fn start(mode: ReceiverMode) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a receiver");
        let addr = listener.local_addr().expect("receiver address");
        let url = format!("http://{addr}/hook");
        let bodies: Arc<(Mutex<Vec<Received>>, Condvar)> = Arc::default();
        if mode == ReceiverMode::NeverAnswer {
            return Self {
                url,
                bodies,
                _listener: Some(listener),
            };
        }
        let sink = Arc::clone(&bodies);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let sink = Arc::clone(&sink);
                thread::spawn(move || serve_connection(stream, &sink));
            }
        });
        Self {
            url,
            bodies,
            _listener: None,
        }
    }

    /// Every body received so far.
    pub fn received(&self) -> Vec<Received> {
        self.bodies
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until `done` holds for the bodies received; false on timeout (scaled).
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&[Received]) -> bool) -> bool {
        let (lock, cv) = &*self.bodies;
        let deadline = Instant::now() + scaled(timeout);
        let mut bodies = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if done(&bodies) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            bodies = cv
                .wait_timeout(bodies, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Reads HTTP/1.1 requests (Content-Length bodies) from one connection, answering 200.
fn serve_connection(stream: std::net::TcpStream, sink: &(Mutex<Vec<Received>>, Condvar)) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
            return;
        }
        let at = Instant::now();
        let value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        {
            let (lock, cv) = sink;
            lock.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Received { at, value });
            cv.notify_all();
        }
        let answer = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Scripts
// ---------------------------------------------------------------------------------------

/// The Python the scripts of `tests/programs/` run with: Debian's, as in the seeds.
pub const PYTHON: &str = "/usr/bin/python3";

/// Starts `tests/programs/<name>` (a Python script) with [`PYTHON`].
pub fn start_python(name: &str) -> Program {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/programs")
        .join(name);
    let mut command = Command::new(PYTHON);
    command.arg(script);
    Program::spawn(command)
}

/// Every distinct episode id among `events` of `kind`.
pub fn episode_ids(events: &[Received], kind: &str) -> std::collections::BTreeSet<String> {
    events
        .iter()
        .filter(|r| str_of(&r.value, "/kind") == kind)
        .map(|r| str_of(&r.value, "/id").to_owned())
        .collect()
}

/// The binary of example `name` of this package, next to this test binary
/// (target/<profile>/deps/..): built by a plain `cargo test`; with `--test NAME` cargo
/// builds no examples, so it is built here then.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} is not in target/<profile>/deps", exe.display()));
    let example = profile_dir.join("examples").join(name);
    if !example.is_file() {
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug");
        let target_dir = profile_dir.parent().expect("target dir");
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .args(["build", "--quiet", "-p", "hangwatch", "--example", name])
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir);
        match profile {
            "debug" => {}
            "release" => {
                cargo.arg("--release");
            }
            other => {
                cargo.args(["--profile", other]);
            }
        }
        let status = cargo
            .status()
            .unwrap_or_else(|e| panic!("running {cargo:?}: {e}"));
        assert!(status.success(), "{cargo:?} failed: {status}");
    }
    assert!(
        example.is_file(),
        "{} does not exist after building it",
        example.display()
    );
    example
}

// ---------------------------------------------------------------------------------------
// deploy/
// ---------------------------------------------------------------------------------------

/// The repository's deploy/ directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The PrometheusRule's `spec` as a Prometheus rules file; with `for_override`, every
/// alert's `for:` replaced (the end-to-end test cannot wait minutes).
pub fn prometheus_rules_file(for_override: Option<&str>) -> String {
    let text = std::fs::read_to_string(deploy_dir().join("monitoring/prometheusrule.yaml"))
        .expect("read prometheusrule.yaml");
    let rule: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("valid YAML");
    let mut spec = rule["spec"].clone();
    if let Some(duration) = for_override {
        let groups = spec["groups"].as_sequence_mut().expect("groups");
        for group in groups {
            for r in group["rules"].as_sequence_mut().expect("rules") {
                if let Some(map) = r.as_mapping_mut()
                    && map.contains_key("for")
                {
                    map.insert("for".into(), duration.into());
                }
            }
        }
    }
    serde_yaml_ng::to_string(&spec).expect("serializes")
}
