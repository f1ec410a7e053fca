//! Detection latency: threads of a test program hang at random moments, on a mutex that is
//! never released (`off_cpu` for the selected program) or writing to a frozen filesystem
//! (`d_state`, for every process, no selection); the time from each crossing its threshold
//! to its `hang` event on hangwatch's stdout, both read on CLOCK_MONOTONIC.
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    compile,
    frozen::{Ext4Mount, Frozen},
    variants::Tools,
};

/// Hangs per run.
pub const HANGS: usize = 50;
const THRESHOLD: Duration = Duration::from_secs(1);

pub struct Latency {
    pub hangs: usize,
    pub reported: usize,
    pub threshold: Duration,
    /// Sorted, from threshold crossing to the event.
    pub samples: Vec<Duration>,
}

impl Latency {
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let last = self.samples.len().checked_sub(1)?;
        Some(self.samples[((last as f64) * q).round() as usize])
    }
}

/// Kills a child by PID when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Lines of a child's stdout with the monotonic time each arrived.
fn stamped_lines(child: &mut Child) -> mpsc::Receiver<(u64, String)> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().expect("piped stdout");
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send((monotonic_ns(), line)).is_err() {
                break;
            }
        }
    });
    rx
}

/// What kind of hang the threads make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HangKind {
    /// A futex wait on a mutex: `off_cpu` of the selected program.
    Futex,
    /// Uninterruptible sleep on a frozen filesystem: `d_state`, machine-wide.
    DState,
}

impl HangKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Futex => "off_cpu (futex)",
            Self::DState => "d_state (frozen fs)",
        }
    }
}

pub fn measure(
    daemon: &Path,
    daemon_args: &[String],
    hang_program: &Path,
    kind: HangKind,
    scratch: &Path,
) -> Result<Latency> {
    let mount = match kind {
        HangKind::DState => Some(Ext4Mount::mount(scratch)?),
        HangKind::Futex => None,
    };
    let frozen = mount.as_ref().map(Ext4Mount::freeze).transpose()?;
    let mut command = Command::new(hang_program);
    command.arg(HANGS.to_string());
    if let Some(mount) = &mount {
        command.arg(mount.mountpoint());
    }
    measure_with(daemon, daemon_args, command, kind, frozen)
}

fn measure_with(
    daemon: &Path,
    daemon_args: &[String],
    mut command: Command,
    kind: HangKind,
    frozen: Option<Frozen<'_>>,
) -> Result<Latency> {
    let mut program = Killed(
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {command:?}"))?,
    );
    // Declared after the program, so dropped before it: the filesystem is thawed before the
    // program is killed (a thread in D state cannot die while it is frozen).
    let _frozen = frozen;
    let program_lines = stamped_lines(&mut program.0);
    let (_, ready) = program_lines
        .recv_timeout(Duration::from_secs(10))
        .context("the hang program did not start")?;
    if ready != "ready" {
        bail!("the hang program said {ready:?}");
    }
    let threshold = format!("{}ms", THRESHOLD.as_millis());
    let pid = program.0.id().to_string();
    let selection: Vec<&str> = match kind {
        HangKind::Futex => vec!["--pid", &pid, "--threshold", &threshold],
        HangKind::DState => vec!["--d-state-threshold", &threshold],
    };
    let mut hangwatch = Killed(
        Command::new(daemon)
            .args(daemon_args)
            .args(&selection)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start hangwatch")?,
    );
    let events = stamped_lines(&mut hangwatch.0);
    let stderr = hangwatch.0.stderr.take().expect("piped stderr");
    let (attached_tx, attached_rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("probes attached") {
                let _ = attached_tx.send(());
            }
        }
    });
    attached_rx
        .recv_timeout(Duration::from_secs(20))
        .context("hangwatch did not attach")?;
    program
        .0
        .stdin
        .as_mut()
        .context("stdin")?
        .write_all(b"go\n")?;

    // Every hang starts within 3 s; give each its threshold and a generous margin.
    let deadline = Instant::now() + Duration::from_secs(3) + THRESHOLD + Duration::from_secs(5);
    let mut blocked: HashMap<u32, u64> = HashMap::new();
    let mut reported: HashMap<u32, u64> = HashMap::new();
    while Instant::now() < deadline && reported.len() < HANGS {
        while let Ok((_, line)) = program_lines.try_recv() {
            let mut f = line.split_whitespace();
            if let (Some("blocked"), Some(tid), Some(at)) = (f.next(), f.next(), f.next()) {
                blocked.insert(tid.parse()?, at.parse()?);
            }
        }
        match events.recv_timeout(Duration::from_millis(20)) {
            Ok((at, line)) => {
                let event: serde_json::Value = serde_json::from_str(&line)
                    .with_context(|| format!("hangwatch printed {line:?}"))?;
                // The threads' random sleeps before they block are off-CPU too, and may be
                // reported first: only the mutex wait counts.
                let ours = match kind {
                    HangKind::Futex => {
                        event["kind"] == "off_cpu" && event["wait"]["syscall"] == "futex"
                    }
                    HangKind::DState => event["kind"] == "d_state",
                };
                if event["event"] == "hang"
                    && ours
                    && let Some(tid) = event["tid"].as_u64()
                {
                    reported.entry(tid as u32).or_insert(at);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("hangwatch exited"),
        }
        super::proc::check_interrupted()?;
    }
    while let Ok((_, line)) = program_lines.try_recv() {
        let mut f = line.split_whitespace();
        if let (Some("blocked"), Some(tid), Some(at)) = (f.next(), f.next(), f.next()) {
            blocked.insert(tid.parse()?, at.parse()?);
        }
    }
    let threshold_ns = THRESHOLD.as_nanos() as u64;
    let mut samples: Vec<Duration> = blocked
        .iter()
        .filter_map(|(tid, at)| {
            let seen = reported.get(tid)?;
            Some(Duration::from_nanos(seen.saturating_sub(at + threshold_ns)))
        })
        .collect();
    samples.sort_unstable();
    Ok(Latency {
        hangs: blocked.len(),
        reported: samples.len(),
        threshold: THRESHOLD,
        samples,
    })
}

/// Detection latency, from threads that hang at random moments; a failure is a note.
pub fn detection_latency(
    tools: &Tools,
    out_dir: &Path,
    notes: &mut Vec<String>,
) -> Vec<(HangKind, Latency)> {
    let program = match compile(out_dir, "hang_at_random", include_str!("hang_at_random.c")) {
        Ok(p) => p,
        Err(err) => {
            notes.push(format!("detection latency not measured: {err:#}"));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for kind in [HangKind::Futex, HangKind::DState] {
        match measure(
            &tools.daemon,
            &tools.daemon_run_args,
            &program,
            kind,
            out_dir,
        ) {
            Ok(l) => {
                if l.reported < l.hangs {
                    notes.push(format!(
                        "detection latency, {}: only {} of {} hangs were reported",
                        kind.name(),
                        l.reported,
                        l.hangs
                    ));
                }
                out.push((kind, l));
            }
            Err(err) => notes.push(format!(
                "detection latency, {}, not measured: {err:#}",
                kind.name()
            )),
        }
    }
    out
}
