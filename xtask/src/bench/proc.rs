//! Child processes the benchmark starts, each behind a guard that kills it (by its PID) when
//! dropped, also on error, panic and Ctrl-C; and the Ctrl-C flag itself.

use std::{
    io::{BufRead as _, BufReader, Read},
    os::unix::process::CommandExt as _,
    process::{Child, Command, ExitStatus, Stdio},
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
    reaped: bool,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
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
        cmd.stdin(Stdio::null()).stderr(Stdio::piped());
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
            reaped: false,
            lines,
            readers,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a line containing `pattern` arrives; fails if the child exits first, on a
    /// timeout and on Ctrl-C.
    pub fn wait_for_line(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            if let Some(line) = self.lock().iter().find(|l| l.contains(pattern)) {
                return Ok(line.clone());
            }
            if let Some(status) = self.child.try_wait()? {
                self.reaped = true;
                self.join_readers();
                bail!(
                    "{} exited ({status}) before saying {pattern:?}; its output:\n{}",
                    self.name,
                    self.lock().join("\n")
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "{} did not say {pattern:?} within {timeout:?}; its output so far:\n{}",
                    self.name,
                    self.lock().join("\n")
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
            lines: std::mem::take(&mut *self.lock()),
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
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

fn collect(stream: impl Read + Send + 'static, lines: &Arc<Mutex<Vec<String>>>) -> JoinHandle<()> {
    let lines = Arc::clone(lines);
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    })
}
