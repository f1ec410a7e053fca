//! The daemon under test: `hangwatch run --output json` under a guard that collects its
//! events and stderr, answers where its listeners are, stops it cleanly, and prints the
//! whole run when a test panics.
use std::{
    fmt::Write as _,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

use super::{Abba, HANGWATCH, Value, require_root, scaled, signal, wait_bounded};

/// How long the daemon may take to print "attached" (times [`super::time_scale`]).
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Holds the daemon's API socket (each daemon its own: tests run in parallel).
    _socket_dir: tempfile::TempDir,
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
        // on the default address; `Daemon::metrics_endpoint` reads the port from the log.
        if !args.contains(&"--listen") && !args.contains(&"--metrics-listen") {
            full.extend(["--metrics-listen".to_owned(), "127.0.0.1:0".to_owned()]);
        }
        // And a socket each, in a directory other users may enter (the access tests
        // connect as `nobody`; the socket's own mode still decides).
        let socket_dir = tempfile::Builder::new()
            .prefix("hangwatch-api-")
            .tempdir()
            .expect("a directory for the API socket");
        std::fs::set_permissions(
            socket_dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod the socket directory");
        if !args.contains(&"--api-socket") {
            let socket = socket_dir.path().join("api.sock");
            full.extend([
                "--api-socket".to_owned(),
                socket.to_string_lossy().into_owned(),
            ]);
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
            _socket_dir: socket_dir,
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

    /// The API's endpoint as the CLI takes it (`unix:/tmp/.../api.sock`), from the daemon's
    /// "API socket listening on" log line; `http` takes it as a base URL too. Panics if
    /// it never logs one.
    pub fn endpoint(&self) -> String {
        self.logged_address("API socket listening on ")
    }

    /// The metrics listener's base URL (`http://127.0.0.1:PORT`): `/metrics`, `/healthz`.
    pub fn metrics_endpoint(&self) -> String {
        self.logged_address("metrics listening on ")
    }

    /// The cluster listener's base URL, when started with `--cluster-api-listen`.
    pub fn cluster_endpoint(&self) -> String {
        self.logged_address("(token required) listening on ")
    }

    fn logged_address(&self, prefix: &str) -> String {
        let (lock, cv) = &*self.output;
        let deadline = Instant::now() + scaled(ATTACH_TIMEOUT);
        let mut out = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(url) = out
                .stderr
                .lines()
                .find_map(|l| l.split_once(prefix).map(|(_, url)| url.trim()))
            {
                return url.to_owned();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero() && !out.stderr_closed,
                "hangwatch never logged \"{prefix}\":\n{}",
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
    /// or None on timeout (scaled, see [`super::time_scale`]).
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

    /// `event` if `read(event)` (its user stacks are there), else, under emulation only
    /// (`time_scale() > 1`), the first update of its episode for which `read` holds.
    /// Under TCG a first, cold read of a module's unwind tables and DWARF has taken ten
    /// seconds (libc, in the 6.1 VM, 2026-11-27), past even the stretched deadline: the
    /// report goes out with "not read within ...: still working on it", and the read,
    /// which carries on, reaches the episode's updates. Natively the event itself must
    /// carry the stacks: it is returned as is, for the test's assertions to fail on.
    pub fn with_stacks_read(&self, event: Value, read: impl Fn(&Value) -> bool) -> Value {
        if read(&event) || super::time_scale() == 1 {
            return event;
        }
        let id = event["id"].as_str().unwrap_or_default().to_owned();
        eprintln!(
            "{id}: its {} event went out without its user stacks; under emulation, taking them from the episode's first update that has them",
            event["event"]
        );
        self.wait_for_event(
            &format!("an update of {id} with its user stacks"),
            Duration::from_secs(10),
            |v| v["event"] == "update" && v["id"] == id.as_str() && read(v),
        )
        .value
    }

    /// Forms an ABBA deadlock in a process of its own and waits up to `patience` for its
    /// `hang` event: the event, and how long after the locks were taken it came. This is
    /// the detection latency of a hang unrelated to whatever load the test puts on the
    /// daemon (a stall, a mass hang, a flood of requests).
    pub fn deadlock_beside(&self, what: &str, patience: Duration) -> (Received, Duration) {
        let mut abba = Abba::start();
        let lock = abba.deadlock();
        let deadlock = self.wait_for_event(what, patience, |v| {
            v["event"] == "hang"
                && v["kind"] == "deadlock"
                && v["pid"].as_u64() == Some(u64::from(abba.pid()))
        });
        let latency = deadlock.at.saturating_duration_since(lock.at);
        (deadlock, latency)
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
