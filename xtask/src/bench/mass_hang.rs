//! Never blind, measured (issue 19): detection while thousands of threads hang at once, and
//! while a process's mm lock is stuck. The scenarios of the kernel tests
//! `a_mass_hang_is_reported_whole_and_detection_goes_on` and
//! `a_process_whose_mm_lock_is_stuck_is_reported_and_detection_goes_on`, with their programs
//! (hangwatch/tests/programs), on a frozen ext4 loop mount. The tests check that it works;
//! this gives the figures: an unrelated ABBA deadlock's detection latency, how long the whole
//! mass hang takes to be reported and what the daemon spends on it, and how long SIGTERM
//! takes to end the daemon.
//!
//! Latencies are between two lines' arrival times (the program's "ready", the daemon's event
//! on stdout), both stamped by our reader threads on the monotonic clock.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{
    frozen::Ext4Mount,
    proc::{self, Proc},
    sys,
};

const MASS_D_SOURCE: &str = include_str!("../../../hangwatch/tests/programs/mass_d.c");
const MM_STALL_SOURCE: &str = include_str!("../../../hangwatch/tests/programs/mm_stall.c");
const ABBA_SOURCE: &str = include_str!("../../../hangwatch/tests/programs/abba.c");

/// The kernel tests' daemon settings: D state reported after 1 s, a tick every 200 ms.
const DAEMON_ARGS: [&str; 4] = ["--d-state-threshold", "1s", "--scan-interval", "200ms"];
/// How long a deadlock must hold before hangwatch reports it (its built-in threshold).
pub const DEADLOCK_THRESHOLD: Duration = Duration::from_secs(1);
/// When the deadlock forms after the mass hang's threads have started: while their reports
/// come due (1 s after they entered D), as in the kernel test.
const DEADLOCK_AFTER_START: Duration = Duration::from_millis(800);
/// How long the mass hang may take to be reported whole before we give up counting.
const MASS_HANG_PATIENCE: Duration = Duration::from_secs(30);
/// How long an event may take before it counts as not reported.
const EVENT_PATIENCE: Duration = Duration::from_secs(10);
/// How long the daemon gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The C programs, compiled into target/bench.
pub struct Programs {
    mass_d: PathBuf,
    mm_stall: PathBuf,
    abba: PathBuf,
}

impl Programs {
    pub fn compile(out_dir: &Path) -> Result<Self> {
        Ok(Self {
            mass_d: super::compile(out_dir, "mass_d", MASS_D_SOURCE)?,
            mm_stall: super::compile(out_dir, "mm_stall", MM_STALL_SOURCE)?,
            abba: super::compile(out_dir, "abba", ABBA_SOURCE)?,
        })
    }
}

/// How the daemon came out of a SIGTERM.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    /// From the signal to its exit (or to the kill).
    pub took: Duration,
    /// It did not exit within the grace period and was killed.
    pub killed: bool,
}

/// N threads enter D at once on the frozen filesystem; an ABBA deadlock forms 0.8 s later.
pub struct MassHang {
    pub threads: usize,
    /// Threads with a `d_state` hang event.
    pub reported: usize,
    /// Hang events beyond the first of a thread (each should be reported once).
    pub duplicates: usize,
    /// From "go" to the last thread's event, if all were reported.
    pub all_reported_after: Option<Duration>,
    /// From the deadlock forming to its event, if it was reported.
    pub deadlock_latency: Option<Duration>,
    /// From "go" to all reported (or to giving up).
    pub window: Duration,
    /// The daemon's utime + stime over the window.
    pub daemon_cpu: Duration,
    pub exit: Exit,
}

impl MassHang {
    pub fn cores(&self) -> f64 {
        self.daemon_cpu.as_secs_f64() / self.window.as_secs_f64()
    }
}

/// A process whose mm lock is stuck (its memory, maps and command line unreadable); an ABBA
/// deadlock forms once its D threads were reported.
pub struct MmStall {
    /// From the stall to the first `d_state` event of the process, if it came.
    pub stalled_reported_after: Option<Duration>,
    /// What that event said about its missing user stack.
    pub user_stack_error: Option<String>,
    pub deadlock_latency: Option<Duration>,
    /// From "go" to the deadlock's event (or to giving up).
    pub window: Duration,
    pub daemon_cpu: Duration,
    pub exit: Exit,
}

impl MmStall {
    pub fn cores(&self) -> f64 {
        self.daemon_cpu.as_secs_f64() / self.window.as_secs_f64()
    }
}

/// `hangwatch run` as the rest of the bench runs it, with the tests' thresholds; its JSON
/// events read as they arrive.
struct Daemon {
    proc: Proc,
    /// Output lines already looked at.
    seen: usize,
}

impl Daemon {
    fn start(daemon: &Path, run_args: &[String]) -> Result<Self> {
        let mut cmd = Command::new(daemon);
        cmd.args(run_args).args(DAEMON_ARGS).env("NO_COLOR", "1");
        let mut proc = Proc::spawn("hangwatch", &mut cmd, false)?;
        proc.wait_for_line("probes attached", Duration::from_secs(60))?;
        // Let the start-up work (the first scan, a full task walk) pass.
        proc::sleep(Duration::from_millis(200))?;
        Ok(Self { proc, seen: 0 })
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    fn cpu(&self) -> Result<Duration> {
        sys::cpu_time(self.pid())
    }

    /// The `hang` events printed since the last call, with their arrival times (stderr's log
    /// lines, interleaved, are not JSON and are passed over).
    fn new_hangs(&mut self) -> Vec<(Instant, Value)> {
        let lines = self.proc.lines_after(self.seen);
        self.seen += lines.len();
        lines
            .into_iter()
            .filter(|l| l.text.starts_with('{'))
            .filter_map(|l| Some((l.at, serde_json::from_str::<Value>(&l.text).ok()?)))
            .filter(|(_, v)| v["event"] == "hang")
            .collect()
    }

    /// The first new hang event `wanted` accepts within `patience`, if any.
    fn wait_for(
        &mut self,
        patience: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> Result<Option<(Instant, Value)>> {
        let end = Instant::now() + patience;
        while Instant::now() < end {
            if let Some(found) = self.new_hangs().into_iter().find(|(_, v)| wanted(v)) {
                return Ok(Some(found));
            }
            proc::sleep(Duration::from_millis(10))?;
        }
        Ok(None)
    }

    fn stop(self) -> Result<Exit> {
        let start = Instant::now();
        let exited = self.proc.terminate(STOP_GRACE)?;
        let took = start.elapsed();
        proc::check_interrupted()?;
        if !exited.killed && !exited.status.success() {
            bail!(
                "hangwatch exited with {} after SIGTERM; its output:\n{}",
                exited.status,
                exited.lines.join("\n")
            );
        }
        Ok(Exit {
            took,
            killed: exited.killed,
        })
    }
}

/// abba.c, waiting for the word to deadlock.
struct Abba(Proc);

impl Abba {
    fn start(program: &Path) -> Result<Self> {
        let mut proc = Proc::spawn_with_stdin("abba", &mut Command::new(program))?;
        proc.wait_for_line("pid ", Duration::from_secs(5))?;
        Ok(Self(proc))
    }

    /// Lets its two workers deadlock; returns when they did (both hold their first lock and
    /// go for the second).
    fn deadlock(&mut self) -> Result<Instant> {
        self.0.send("go")?;
        Ok(self
            .0
            .wait_for_stamped_line("ready", Duration::from_secs(5))?
            .at)
    }

    fn is_reported_by(&self, event: &Value) -> bool {
        event["kind"] == "deadlock" && event["pid"].as_u64() == Some(u64::from(self.0.pid()))
    }
}

fn is_d_state_of(event: &Value, pid: u32) -> bool {
    event["kind"] == "d_state" && event["pid"].as_u64() == Some(u64::from(pid))
}

/// `threads` threads of mass_d write to the frozen filesystem at once.
pub fn mass_hang(
    daemon: &Path,
    run_args: &[String],
    programs: &Programs,
    scratch: &Path,
    threads: usize,
) -> Result<MassHang> {
    // Declared in this order, dropped in the reverse: thawed, mass_d killed, unmounted.
    let mount = Ext4Mount::mount(scratch)?;
    let mut mass = Proc::spawn_with_stdin(
        "mass_d",
        Command::new(&programs.mass_d)
            .arg(mount.mountpoint())
            .arg(threads.to_string()),
    )?;
    mass.wait_for_line("pid ", Duration::from_secs(5))?;
    let mut hangwatch = Daemon::start(daemon, run_args)?;
    let mut abba = Abba::start(&programs.abba)?;
    let _frozen = mount.freeze()?;

    let cpu_before = hangwatch.cpu()?;
    let go = Instant::now();
    mass.send("go")?;
    let started = mass
        .wait_for_stamped_line("started", Duration::from_secs(30))?
        .at;
    let mut events_per_thread: HashMap<u64, usize> = HashMap::new();
    let mut last_report = None;
    let mut deadlock_formed = None;
    let mut deadlock_reported = None;
    let mut all_reported: Option<(Instant, Duration)> = None;
    loop {
        if deadlock_formed.is_none() && started.elapsed() >= DEADLOCK_AFTER_START {
            deadlock_formed = Some(abba.deadlock()?);
        }
        for (at, event) in hangwatch.new_hangs() {
            if is_d_state_of(&event, mass.pid()) {
                if let Some(tid) = event["tid"].as_u64() {
                    *events_per_thread.entry(tid).or_default() += 1;
                    last_report = Some(at);
                }
            } else if abba.is_reported_by(&event) {
                deadlock_reported.get_or_insert(at);
            }
        }
        if all_reported.is_none() && events_per_thread.len() >= threads {
            all_reported = Some((Instant::now(), hangwatch.cpu()?));
        }
        let deadlock_done = deadlock_reported.is_some()
            || deadlock_formed.is_some_and(|f: Instant| f.elapsed() > EVENT_PATIENCE);
        if (all_reported.is_some() && deadlock_done) || go.elapsed() > MASS_HANG_PATIENCE {
            break;
        }
        proc::sleep(Duration::from_millis(10))?;
    }
    let (window_end, cpu_after) = match all_reported {
        Some(end) => end,
        None => (Instant::now(), hangwatch.cpu()?),
    };
    let exit = hangwatch.stop()?;
    let reported = events_per_thread.len();
    Ok(MassHang {
        threads,
        reported,
        duplicates: events_per_thread.values().sum::<usize>() - reported,
        all_reported_after: all_reported
            .and(last_report)
            .map(|last| last.saturating_duration_since(go)),
        deadlock_latency: deadlock_formed
            .zip(deadlock_reported)
            .map(|(formed, seen)| seen.saturating_duration_since(formed)),
        window: window_end.saturating_duration_since(go),
        daemon_cpu: cpu_after.saturating_sub(cpu_before),
        exit,
    })
}

/// mm_stall's two threads stick its mm lock on the frozen filesystem.
pub fn mm_stall(
    daemon: &Path,
    run_args: &[String],
    programs: &Programs,
    scratch: &Path,
) -> Result<MmStall> {
    // Declared in this order, dropped in the reverse: thawed, mm_stall killed, unmounted.
    let mount = Ext4Mount::mount(scratch)?;
    let mut stall = Proc::spawn_with_stdin(
        "mm_stall",
        Command::new(&programs.mm_stall).arg(mount.mountpoint().join("mapped")),
    )?;
    stall.wait_for_line("pid ", Duration::from_secs(5))?;
    let mut hangwatch = Daemon::start(daemon, run_args)?;
    let mut abba = Abba::start(&programs.abba)?;
    let _frozen = mount.freeze()?;

    let cpu_before = hangwatch.cpu()?;
    let go = Instant::now();
    stall.send("go")?;
    let stalled = stall
        .wait_for_stamped_line("stalled", Duration::from_secs(5))?
        .at;
    // As in the test: the deadlock forms once the daemon has met the stalled process.
    let stalled_report = hangwatch.wait_for(EVENT_PATIENCE, |v| is_d_state_of(v, stall.pid()))?;
    let formed = abba.deadlock()?;
    let deadlock = hangwatch.wait_for(EVENT_PATIENCE, |v| abba.is_reported_by(v))?;
    let window = go.elapsed();
    let daemon_cpu = hangwatch.cpu()?.saturating_sub(cpu_before);
    let exit = hangwatch.stop()?;
    Ok(MmStall {
        stalled_reported_after: stalled_report
            .as_ref()
            .map(|(at, _)| at.saturating_duration_since(stalled)),
        user_stack_error: stalled_report
            .as_ref()
            .and_then(|(_, v)| v["user_stack_error"].as_str().map(str::to_owned)),
        deadlock_latency: deadlock.map(|(at, _)| at.saturating_duration_since(formed)),
        window,
        daemon_cpu,
        exit,
    })
}

/// The section's two scenarios; what cannot run becomes a note. Fails only on Ctrl-C.
pub fn measure(
    daemon: &Path,
    run_args: &[String],
    scratch: &Path,
    threads: usize,
    notes: &mut Vec<String>,
) -> Result<(Option<MassHang>, Option<MmStall>)> {
    if let Some(tool) = Ext4Mount::missing_tool() {
        notes.push(format!(
            "mass hang and mm-lock stall skipped: {tool} is not installed (xtask setup \
             installs e2fsprogs and util-linux)"
        ));
        return Ok((None, None));
    }
    let programs = match Programs::compile(scratch).context("compiling the test programs") {
        Ok(p) => p,
        Err(err) => {
            notes.push(format!("mass hang and mm-lock stall not measured: {err:#}"));
            return Ok((None, None));
        }
    };
    // A failure is a note, but Ctrl-C ends the bench (the guards have cleaned up by then).
    let mut note_failure = |scenario: &str, err: anyhow::Error| -> Result<()> {
        proc::check_interrupted()?;
        notes.push(format!("{scenario} not measured: {err:#}"));
        Ok(())
    };
    eprintln!("xtask bench: mass hang ({threads} threads in D, a deadlock beside them)");
    let mass = match mass_hang(daemon, run_args, &programs, scratch, threads) {
        Ok(m) => {
            eprintln!(
                "xtask bench: mass hang: {} of {} reported, deadlock after {}, daemon {:.2} of a core",
                m.reported,
                m.threads,
                seconds(m.deadlock_latency),
                m.cores()
            );
            Some(m)
        }
        Err(err) => {
            note_failure("mass hang", err)?;
            None
        }
    };
    eprintln!("xtask bench: mm-lock stall (a deadlock beside it, then SIGTERM)");
    let stall = match mm_stall(daemon, run_args, &programs, scratch) {
        Ok(s) => {
            eprintln!(
                "xtask bench: mm-lock stall: deadlock after {}, SIGTERM exit in {:.0} ms",
                seconds(s.deadlock_latency),
                s.exit.took.as_secs_f64() * 1e3
            );
            Some(s)
        }
        Err(err) => {
            note_failure("mm-lock stall", err)?;
            None
        }
    };
    if let Some(m) = &mass {
        if m.reported < m.threads {
            notes.push(format!(
                "mass hang: only {} of {} threads were reported within {MASS_HANG_PATIENCE:?}",
                m.reported, m.threads
            ));
        }
        if m.deadlock_latency.is_none() {
            notes.push(format!(
                "mass hang: the unrelated deadlock was not reported within {EVENT_PATIENCE:?}"
            ));
        }
    }
    if let Some(s) = &stall {
        if s.stalled_reported_after.is_none() {
            notes.push(format!(
                "mm-lock stall: the stalled process was not reported within {EVENT_PATIENCE:?}"
            ));
        }
        if s.deadlock_latency.is_none() {
            notes.push(format!(
                "mm-lock stall: the unrelated deadlock was not reported within {EVENT_PATIENCE:?}"
            ));
        }
    }
    for (scenario, exit) in [
        ("mass hang", mass.as_ref().map(|m| m.exit)),
        ("mm-lock stall", stall.as_ref().map(|s| s.exit)),
    ] {
        if exit.is_some_and(|e| e.killed) {
            notes.push(format!(
                "{scenario}: hangwatch did not exit within {STOP_GRACE:?} of SIGTERM: killed"
            ));
        }
    }
    Ok((mass, stall))
}

/// "1.23 s", or "not reported".
pub fn seconds(d: Option<Duration>) -> String {
    d.map_or("not reported".to_owned(), |d| {
        format!("{:.2} s", d.as_secs_f64())
    })
}
