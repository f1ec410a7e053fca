//! Processes a test starts: the [`Program`] guard (stdout lines on a channel, killed by
//! pid on drop), signals, bounded waits, and commands run to completion.
use std::{
    ffi::OsStr,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use super::{scaled, tids};

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

    /// The next stdout line; panics on timeout (scaled, see [`super::time_scale`]) or end of
    /// output.
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
