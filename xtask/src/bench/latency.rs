//! Detection latency: threads of a test program hang at random moments (a mutex that is
//! never released); the time from each crossing its threshold to its `hang` event on
//! hangwatch's stdout, both read on CLOCK_MONOTONIC.
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

pub fn measure(daemon: &Path, daemon_args: &[String], hang_program: &Path) -> Result<Latency> {
    let mut program = Killed(
        Command::new(hang_program)
            .arg(HANGS.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", hang_program.display()))?,
    );
    let program_lines = stamped_lines(&mut program.0);
    let (_, ready) = program_lines
        .recv_timeout(Duration::from_secs(10))
        .context("the hang program did not start")?;
    if ready != "ready" {
        bail!("the hang program said {ready:?}");
    }
    let mut hangwatch = Killed(
        Command::new(daemon)
            .args(daemon_args)
            .args([
                "--pid",
                &program.0.id().to_string(),
                "--threshold",
                &format!("{}ms", THRESHOLD.as_millis()),
            ])
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
                if event["event"] == "hang"
                    && event["kind"] == "off_cpu"
                    && event["wait"]["syscall"] == "futex"
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
