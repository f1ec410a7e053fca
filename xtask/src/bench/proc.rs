//! Child processes the benchmark starts, each behind a guard that kills it (by its PID) when
//! dropped, also on error, panic and Ctrl-C; and the Ctrl-C flag itself.
//!
//! Each output line is stamped with the time it arrived (`Instant`, CLOCK_MONOTONIC on
//! Linux), taken by the reader thread: latencies between two processes' lines are measured
//! on the same clock, at the same point.

use std::{
    io::{BufRead as _, BufReader, Read, Write as _},
    os::unix::process::CommandExt as _,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT and SIGTERM into a flag that every wait below checks, so that the guards
/// (processes, the sysctl) get to clean up. The children, in our process group, get a
/// terminal's Ctrl-C too.
pub fn catch_interrupts() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Fails once SIGINT or SIGTERM has arrived.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d`, waking early (with an error) on Ctrl-C.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupted()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// A running child; killed (SIGKILL, by PID) and reaped when dropped unless it was waited for.
pub struct Proc {
    name: String,
    child: Child,
    /// Piped only for [`Proc::spawn_with_stdin`].
    stdin: Option<ChildStdin>,
    reaped: bool,
    lines: Arc<Mutex<Vec<Line>>>,
    readers: Vec<JoinHandle<()>>,
}

/// One line of a child's stdout or stderr, and when the reader got it.
#[derive(Debug, Clone)]
pub struct Line {
    pub at: Instant,
    pub text: String,
}

/// A child that has exited: its status and its output lines (stdout and stderr interleaved by
/// arrival).
pub struct Exited {
    pub status: ExitStatus,
    pub lines: Vec<String>,
    /// Whether it had to be killed because it did not exit in time.
    pub killed: bool,
}

impl Proc {
    /// Starts `cmd` with stdin from /dev/null, stderr (and stdout unless `discard_stdout`)
    /// collected line by line. The child is killed if we die (PR_SET_PDEATHSIG).
    pub fn spawn(name: &str, cmd: &mut Command, discard_stdout: bool) -> Result<Self> {
        cmd.stdin(Stdio::null());
        Self::start(name, cmd, discard_stdout)
    }

    /// The same with stdin piped, for [`Proc::send`]; stdout is collected.
    pub fn spawn_with_stdin(name: &str, cmd: &mut Command) -> Result<Self> {
        cmd.stdin(Stdio::piped());
        Self::start(name, cmd, false)
    }

    fn start(name: &str, cmd: &mut Command, discard_stdout: bool) -> Result<Self> {
        cmd.stderr(Stdio::piped());
        cmd.stdout(if discard_stdout {
            Stdio::null()
        } else {
            Stdio::piped()
        });
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("failed to start {name}: {cmd:?}"))?;
        let stdin = child.stdin.take();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(collect(out, &lines));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(collect(err, &lines));
        }
        Ok(Self {
            name: name.to_owned(),
            child,
            stdin,
            reaped: false,
            lines,
            readers,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes `line` and a newline to the child's stdin ([`Proc::spawn_with_stdin`]).
    pub fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .with_context(|| format!("{} was started without a stdin pipe", self.name))?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("cannot write {line:?} to {}", self.name))
    }

    /// Waits until a line containing `pattern` arrives; fails if the child exits first, on a
    /// timeout and on Ctrl-C.
    pub fn wait_for_line(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        self.wait_for_stamped_line(pattern, timeout)
            .map(|line| line.text)
    }

    /// [`Proc::wait_for_line`], with the time the line arrived.
    pub fn wait_for_stamped_line(&mut self, pattern: &str, timeout: Duration) -> Result<Line> {
        let start = Instant::now();
        loop {
            if let Some(line) = self.lock().iter().find(|l| l.text.contains(pattern)) {
                return Ok(line.clone());
            }
            if let Some(status) = self.child.try_wait()? {
                self.reaped = true;
                self.join_readers();
                bail!(
                    "{} exited ({status}) before saying {pattern:?}; its output:\n{}",
                    self.name,
                    self.output_text()
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "{} did not say {pattern:?} within {timeout:?}; its output so far:\n{}",
                    self.name,
                    self.output_text()
                );
            }
            check_interrupted()?;
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the child to exit by itself; kills it after `timeout` (then an error).
    pub fn wait(mut self, timeout: Duration) -> Result<Exited> {
        let exited = self.reap(timeout)?;
        if exited.killed {
            bail!(
                "{} did not finish within {timeout:?}; killed. Its output:\n{}",
                self.name,
                exited.lines.join("\n")
            );
        }
        Ok(exited)
    }

    /// SIGTERM, then waits up to `grace` before SIGKILL.
    pub fn terminate(mut self, grace: Duration) -> Result<Exited> {
        self.signal(libc::SIGTERM);
        self.reap(grace)
    }

    fn reap(&mut self, timeout: Duration) -> Result<Exited> {
        let start = Instant::now();
        let mut killed = false;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            // On Ctrl-C, stop waiting: the child gets SIGKILL below.
            if start.elapsed() > timeout || check_interrupted().is_err() {
                killed = true;
                self.signal(libc::SIGKILL);
                break self.child.wait()?;
            }
            thread::sleep(Duration::from_millis(5));
        };
        self.reaped = true;
        self.join_readers();
        Ok(Exited {
            status,
            lines: std::mem::take(&mut *self.lock())
                .into_iter()
                .map(|l| l.text)
                .collect(),
            killed,
        })
    }

    /// Only while unreaped: the PID is still ours, not reusable.
    fn signal(&self, signal: libc::c_int) {
        if self.reaped {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: plain syscall on our own unreaped child.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// Lets the readers take the last lines; a grandchild still holding the pipes must not
    /// block us, so after a second they are left to end by themselves.
    fn join_readers(&mut self) {
        let start = Instant::now();
        while self.readers.iter().any(|r| !r.is_finished())
            && start.elapsed() < Duration::from_secs(1)
        {
            thread::sleep(Duration::from_millis(2));
        }
        for reader in self.readers.drain(..) {
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
    }

    /// The lines that arrived after the first `seen` ones: a reader that keeps its count
    /// parses each line once, however long the output grows.
    pub fn lines_after(&self, seen: usize) -> Vec<Line> {
        self.lock()
            .get(seen..)
            .map(<[Line]>::to_vec)
            .unwrap_or_default()
    }

    fn output_text(&self) -> String {
        let lines = self.lock();
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        texts.join("\n")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Line>> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(libc::SIGKILL);
        }
        let _ = self.child.wait();
        self.reaped = true;
    }
}

fn collect(stream: impl Read + Send + 'static, lines: &Arc<Mutex<Vec<Line>>>) -> JoinHandle<()> {
    let lines = Arc::clone(lines);
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(text) = line else { break };
            let at = Instant::now();
            lines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Line { at, text });
        }
    })
}
