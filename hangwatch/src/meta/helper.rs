//! Reads that may wait *uninterruptibly* in the kernel run in a helper process, so that
//! the daemon itself can always exit.
//!
//! A FUSE server that has taken a read request and never answers leaves the reader in an
//! uninterruptible wait (once the request is in the server's hands, the kernel waits it
//! out: not even SIGKILL ends it). A daemon thread in that wait would keep the daemon's
//! process, and with it its BPF links, alive after SIGTERM until the connection is
//! aborted. Unwinding and symbolizing read module files (and fault in the pages of mapped
//! ones), so they run in a child process (the same binary, a hidden subcommand) that holds
//! no BPF fd: every fd the daemon opens is close-on-exec. A call that misses its deadline
//! while the helper waits in the kernel kills the helper (SIGKILL ends every killable
//! wait; one that is not ends when its server answers or the connection is aborted, and
//! the child is reaped then, by init if the daemon is gone) and the next call starts a
//! fresh one. The daemon never waits for a helper: not at a call, not at exit.
//!
//! The protocol is one JSON line per message: requests on the helper's stdin; on its
//! stdout a `reading` note before each read that may block (what a miss is blamed on:
//! the process's memory, or a module file on a stalled mount), then the reply.
use std::{
    ffi::OsString,
    io::{self, BufRead as _, Read as _, Write as _},
    marker::PhantomData,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::reader::{FileId, MAX_STUCK_WORKERS, READING_MEMORY, ReadError, works};

/// A message from the helper.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Message<A> {
    /// What it is about to read (see `reader::reading`).
    Reading {
        what: String,
        file: Option<FileId>,
    },
    Reply(A),
}

/// The daemon's end of a helper process answering requests `Q` with `A`.
pub struct Helper<Q, A> {
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    current: Option<Running>,
    /// Helpers killed for a missed deadline and not reaped yet: stuck in the kernel.
    stuck: Vec<Child>,
    /// Helpers given up on since start.
    pub abandoned: u64,
    /// Helpers started since start (the first one at the first call).
    pub started: u64,
    types: PhantomData<fn(Q) -> A>,
}

/// A live helper and what is in flight with it.
struct Running {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    /// Bytes read from its stdout, not yet a whole line.
    buf: Vec<u8>,
    /// Replies of earlier calls still to come (calls left to finish as slow work); they
    /// are skipped when they come.
    owed: usize,
    /// What the helper said it reads now.
    reading: Option<(String, Option<FileId>)>,
}

impl<Q: Serialize, A: DeserializeOwned> Helper<Q, A> {
    /// A helper that runs `program args` (started at the first call).
    pub fn new(program: impl Into<PathBuf>, args: &[&str]) -> Self {
        Self {
            program: program.into(),
            args: args.iter().map(OsString::from).collect(),
            envs: Vec::new(),
            current: None,
            stuck: Vec::new(),
            abandoned: 0,
            started: 0,
            types: PhantomData,
        }
    }

    /// Sets `key=value` in the environment of the helpers.
    #[must_use]
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Helpers killed and not reaped yet (each one waits in the kernel).
    pub fn stuck(&mut self) -> usize {
        self.stuck
            .retain_mut(|child| matches!(child.try_wait(), Ok(None)));
        self.stuck.len()
    }

    /// Asks `request` and waits for the reply at most `deadline`, and past it while the
    /// helper works on a CPU rather than waits (a cold cache, a large binary: the
    /// daemon's own work, not a wait on a target) as long as `may_work(elapsed)` says the
    /// caller can wait (`reader::CPU_GRACE` is the usual answer). A helper that waits in the
    /// kernel past the deadline is killed and `Missed` says what it was reading; one still
    /// working at the end is left to finish in the background (`Slow`: its caches warm up
    /// for the next call, whose wait for it gets no grace).
    pub fn call(
        &mut self,
        deadline: Duration,
        request: &Q,
        may_work: impl Fn(Duration) -> bool,
    ) -> Result<A, ReadError> {
        let stuck = self.stuck();
        if stuck >= MAX_STUCK_WORKERS {
            return Err(ReadError::TooManyStuck(stuck));
        }
        self.ensure_started().map_err(|err| ReadError::Missed {
            deadline,
            what: READING_MEMORY.into(),
            file: None,
            why: format!("the reader process could not start: {err}"),
        })?;
        let mut line = serde_json::to_vec(request).map_err(|err| self.failed(deadline, &err))?;
        line.push(b'\n');
        let started = Instant::now();
        let running = self.current.as_mut().expect("started above");
        // Busy with a slow call of before: this one waits its deadline, no grace.
        let busy = running.owed > 0;
        match running.send(&line, started + deadline) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::TimedOut => {
                // A partial line may be in the pipe: the stream is lost with this helper.
                self.abandon();
                return Err(ReadError::Busy);
            }
            Err(err) => return Err(self.failed(deadline, &err)),
        }
        let mut until = started + deadline;
        loop {
            let running = self.current.as_mut().expect("started above");
            match running.next_reply::<A>() {
                Ok(Some(reply)) => return Ok(reply),
                Ok(None) => {}
                Err(err) => return Err(self.failed(deadline, &err)),
            }
            let now = Instant::now();
            if now >= until {
                let pid = running.child.id();
                if !busy && may_work(started.elapsed()) && works(pid, pid) {
                    until = now + Duration::from_millis(20);
                    continue;
                }
                if works(pid, pid) {
                    running.owed += 1;
                    return Err(ReadError::Slow {
                        took: started.elapsed(),
                    });
                }
                // What it wrote last, the note of the read it is stuck in included.
                if running.fill(Duration::ZERO).is_ok()
                    && let Ok(Some(reply)) = running.next_reply::<A>()
                {
                    return Ok(reply);
                }
                let (what, file) = running
                    .reading
                    .take()
                    .unwrap_or_else(|| (READING_MEMORY.into(), None));
                self.abandon();
                return Err(ReadError::Missed {
                    deadline,
                    what: what.into(),
                    file,
                    why: "a read of it is blocked in the kernel".to_owned(),
                });
            }
            if let Err(err) = running.fill(until - now) {
                return Err(self.failed(deadline, &err));
            }
        }
    }

    /// Starts the helper unless one runs: at the first call, or ahead of it so that the
    /// first call does not pay for the exec.
    pub fn ensure_started(&mut self) -> io::Result<()> {
        if self.current.is_none() {
            self.current = Some(self.start()?);
            self.started += 1;
        }
        Ok(())
    }

    fn start(&self) -> io::Result<Running> {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: between fork and exec only async-signal-safe calls: prctl is one. The
        // helper dies with the daemon's enrich thread (the one that starts it, alive
        // until the daemon stops), so a daemon killed outright leaves no helper behind.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(io::Error::other("no pipes to the helper"));
        };
        set_nonblocking(stdin.as_raw_fd())?;
        set_nonblocking(stdout.as_raw_fd())?;
        Ok(Running {
            child,
            stdin,
            stdout,
            buf: Vec::new(),
            owed: 0,
            reading: None,
        })
    }

    /// The helper failed (it died, or its stream broke): the next call starts another.
    fn failed(&mut self, deadline: Duration, err: &dyn std::fmt::Display) -> ReadError {
        tracing::warn!("the reader process failed: {err}; starting another at the next read");
        if let Some(mut running) = self.current.take() {
            let _ = running.child.kill();
            self.stuck.push(running.child);
        }
        ReadError::Missed {
            deadline,
            what: READING_MEMORY.into(),
            file: None,
            why: format!("the reader failed: {err}"),
        }
    }

    /// Kills the current helper without waiting for it.
    fn abandon(&mut self) {
        if let Some(mut running) = self.current.take() {
            self.abandoned += 1;
            let _ = running.child.kill();
            self.stuck.push(running.child);
        }
    }
}

impl<Q, A> Drop for Helper<Q, A> {
    /// Kills every helper, waiting for none: one stuck in the kernel must not hold up the
    /// daemon's exit.
    fn drop(&mut self) {
        if let Some(running) = &mut self.current {
            let _ = running.child.kill();
        }
        for child in &mut self.stuck {
            let _ = child.try_wait();
        }
    }
}

impl Running {
    /// Writes `line` whole, waiting for room in the pipe until `until`.
    fn send(&mut self, line: &[u8], until: Instant) -> io::Result<()> {
        let mut rest = line;
        while !rest.is_empty() {
            match self.stdin.write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() || !poll(self.stdin.as_raw_fd(), libc::POLLOUT, left)? {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Waits up to `wait` for output and reads what there is. End of file is an error:
    /// the helper is gone.
    fn fill(&mut self, wait: Duration) -> io::Result<()> {
        if !poll(self.stdout.as_raw_fd(), libc::POLLIN, wait)? {
            return Ok(());
        }
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stdout.read(&mut chunk) {
                Ok(0) => return Err(io::Error::other("the reader process exited")),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }

    /// The reply of the current call if a whole one came, after the notes before it and
    /// the replies still owed to calls given up on.
    fn next_reply<A: DeserializeOwned>(&mut self) -> io::Result<Option<A>> {
        while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            let message: Message<A> = serde_json::from_slice(&line).map_err(|err| {
                io::Error::other(format!("a message of the reader process: {err}"))
            })?;
            match message {
                Message::Reading { what, file } => self.reading = Some((what, file)),
                Message::Reply(_) if self.owed > 0 => {
                    self.owed -= 1;
                    self.reading = None;
                }
                Message::Reply(reply) => {
                    self.reading = None;
                    return Ok(Some(reply));
                }
            }
        }
        Ok(None)
    }
}

/// Waits up to `wait` for `events` on `fd`; whether they came.
fn poll(fd: i32, events: i16, wait: Duration) -> io::Result<bool> {
    let mut pollfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let millis = i32::try_from(wait.as_millis().max(1)).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd, for the duration of the call.
    let ready = unsafe { libc::poll(&raw mut pollfd, 1, millis) };
    match ready {
        -1 => {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(err)
            }
        }
        0 => Ok(false),
        // Readable, or hung up / in error: the read says which.
        _ => Ok(true),
    }
}

fn set_nonblocking(fd: i32) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on an fd this process owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The helper's stdout, shared by its replies and the notes its reads write on the way.
static OUT: OnceLock<Mutex<io::Stdout>> = OnceLock::new();

fn say(message: &impl Serialize) {
    let Some(out) = OUT.get() else {
        return;
    };
    let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
    let mut line = serde_json::to_vec(message).unwrap_or_default();
    line.push(b'\n');
    // The daemon gone: nothing to tell, and stdin's end ends the loop.
    let _ = out.write_all(&line).and_then(|()| out.flush());
}

/// The helper's side: answers each request line on stdin with `handle` until stdin ends
/// (the daemon stopped or gave up on it). Notes of what it reads go out on the way.
pub fn serve<Q: DeserializeOwned, A: Serialize>(
    mut handle: impl FnMut(Q) -> A,
) -> anyhow::Result<()> {
    let _ = OUT.set(Mutex::new(io::stdout()));
    super::reader::note_reading_with(|what, file| {
        say(&Message::<()>::Reading {
            what: what.to_owned(),
            file: file.cloned(),
        });
    });
    for line in io::stdin().lock().lines() {
        let line = line?;
        let request: Q = serde_json::from_str(&line)
            .map_err(|err| anyhow::anyhow!("a request from the daemon: {err}"))?;
        say(&Message::Reply(handle(request)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::reader::CPU_GRACE;

    /// A helper written in sh: the protocol is the contract, not the binary.
    fn sh(script: &str) -> Helper<u32, u32> {
        Helper::new("/bin/sh", &["-c", script])
    }

    #[test]
    fn a_reply_in_time_is_the_answer() {
        let mut helper = sh(
            r#"while read n; do echo '{"reading":{"what":"x","file":null}}'; echo "{\"reply\":$((n + 1))}"; done"#,
        );
        assert_eq!(helper.call(Duration::from_secs(5), &41, |_| false), Ok(42));
        assert_eq!(helper.call(Duration::from_secs(5), &1, |_| false), Ok(2));
        assert_eq!(helper.started, 1, "one helper answers every call");
    }

    #[test]
    fn a_helper_waiting_past_the_deadline_is_killed_and_blamed_on_what_it_read() {
        // `cat` of a fifo nobody writes (the stdout pipe kept open on fd 3): asleep, not
        // working, like a read of a stalled mount (but killable, so that the test leaves
        // nothing behind).
        let dir = std::env::temp_dir().join(format!("hangwatch-helper-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("temp dir");
        let fifo = dir.join("fifo");
        let status = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
        assert!(status.success());
        let script = format!(
            r#"read n; echo '{{"reading":{{"what":"the module /mnt/stalled/app","file":{{"dev":"00:2a","inode":7}}}}}}'; exec 3>&1; exec cat {} > /dev/null"#,
            fifo.display()
        );
        let mut helper = sh(&script);
        let started = Instant::now();
        let got = helper.call(Duration::from_secs(1), &1, |_| false);
        assert!(started.elapsed() < Duration::from_secs(3), "no long wait");
        let Err(ReadError::Missed { what, file, .. }) = got.clone() else {
            panic!("a miss, not {got:?}");
        };
        assert_eq!(what, "the module /mnt/stalled/app", "{got:?}");
        assert_eq!(
            file,
            Some(FileId {
                dev: "00:2a".into(),
                inode: 7
            })
        );
        assert_eq!(helper.abandoned, 1);
        // The next call gets a fresh helper (this one waits again, and is killed again).
        let _ = helper.call(Duration::from_millis(100), &2, |_| false);
        assert_eq!(helper.started, 2);
        // Killed helpers are reaped (killable waits end at SIGKILL).
        let until = Instant::now() + Duration::from_secs(5);
        while helper.stuck() > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(helper.stuck(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_helper_that_dies_is_replaced() {
        let mut helper = sh(r#"read n; exit 3"#);
        let got = helper.call(Duration::from_secs(5), &1, |_| false);
        assert!(
            matches!(&got, Err(ReadError::Missed { why, .. }) if why.starts_with("the reader failed")),
            "{got:?}"
        );
        let _ = helper.call(Duration::from_secs(5), &1, |_| false);
        assert_eq!(helper.started, 2);
    }

    #[test]
    fn a_helper_that_works_past_the_deadline_is_left_to_finish() {
        // Busy on a CPU (a shell loop without forks) until the test lets it answer: the
        // first call is Slow, not killed; the next one skips that late reply, gets its own.
        let done = std::env::temp_dir().join(format!("hangwatch-slow-{}", std::process::id()));
        let _ = std::fs::remove_file(&done);
        let mut helper = sh(&format!(
            r#"while read n; do while [ ! -e {} ]; do :; done; echo "{{\"reply\":$n}}"; done"#,
            done.display()
        ));
        let got = helper.call(Duration::from_millis(100), &1, |_| false);
        assert!(matches!(got, Err(ReadError::Slow { .. })), "{got:?}");
        std::fs::write(&done, b"").expect("flag");
        assert_eq!(helper.call(Duration::from_secs(10), &2, |_| false), Ok(2));
        assert_eq!(helper.abandoned, 0);
        let _ = std::fs::remove_file(&done);
    }

    #[test]
    fn a_helper_that_works_is_waited_for_while_the_caller_may_wait() {
        // Busy on a CPU past the deadline and the grace: a caller whose budget allows (a
        // cold cache under a report's own due) gets the answer rather than `Slow`.
        let done = std::env::temp_dir().join(format!("hangwatch-work-{}", std::process::id()));
        let _ = std::fs::remove_file(&done);
        let mut helper = sh(&format!(
            r#"while read n; do while [ ! -e {} ]; do :; done; echo "{{\"reply\":$n}}"; done"#,
            done.display()
        ));
        let flag = done.clone();
        let wait = CPU_GRACE + Duration::from_millis(500);
        let flagger = std::thread::spawn(move || {
            std::thread::sleep(wait);
            std::fs::write(&flag, b"").expect("flag");
        });
        let started = Instant::now();
        let until = started + Duration::from_secs(20);
        let got = helper.call(Duration::from_millis(100), &7, |_| Instant::now() < until);
        assert_eq!(got, Ok(7));
        assert!(
            started.elapsed() >= wait,
            "answered only once the flag was set"
        );
        flagger.join().expect("flagger");
        assert_eq!(helper.abandoned, 0);
        let _ = std::fs::remove_file(&done);
    }
}
