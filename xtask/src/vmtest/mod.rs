//! `cargo xtask vmtest --kernel 6.1`: the kernel test suite (hangwatch/tests/kernel_*.rs) on
//! another kernel. Boots Debian's packaged kernel of that series in a QEMU VM (TCG: KVM
//! guests do not run on this project's machines) with virtme-ng, and runs the test binaries,
//! built on the host, inside it. See docs/kernels.md.
//!
//! Everything it needs is installed here: QEMU, busybox and kmod from Debian, virtme-ng from
//! PyPI into target/vmtest/venv, the kernel package (cached in target/vmtest/).

mod kernel;
mod suite;
mod vm;

use std::{
    ffi::OsString,
    fmt::Write as _,
    fs,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use self::vm::sh_quote;

/// Tests that cannot pass under TCG for a reason that is not the kernel's: (test file, test,
/// why). Each is skipped in the VM only, and listed in the output; `cargo xtask test` runs
/// them natively. docs/kernels.md lists them too.
const SKIPPED_UNDER_TCG: &[(&str, &str, &str)] = &[
    (
        "kernel_api",
        "threads_lists_every_thread_of_a_process_with_its_state",
        "the `--stacks` answer gave the locker's user stack only down to libc's lock frames \
         (`futex_wait`, `__GI___lll_lock_wait`) with no error said, under TCG with the \
         stretched timeout (2026-11-26); the rest of the test (the thread list, the states \
         and waits from /proc, why probe state is missing) passed on 6.1",
    ),
    (
        "kernel_never_blind",
        "a_mass_hang_is_reported_whole_and_detection_goes_on",
        "a load test: 2,000 threads entering D at once, every one reported within the test's \
         window; under TCG the report stage is ten to twenty times slower and reported about \
         half of them in it (1,020 of 2,000 on 6.1)",
    ),
    (
        "kernel_never_blind",
        "a_flood_of_stack_requests_does_not_delay_detection",
        "its 200 clients give up after 1 s each, which is what it tests (abandoned requests are \
         dropped, a full queue answers 503); under TCG every client gave up before the daemon \
         could refuse any",
    ),
    (
        "kernel_ownerless",
        "rust_std_abba_with_main_joining_is_a_whole_process_deadlock",
        "it asserts on every member's user frames (`join`, `lock_contended`); under TCG the \
         ten times slower stage is behind newer hangs of the guest and the reads give way at \
         their deadline (\"not read within 4s: still working on it\"); the whole-process \
         deadlock itself was reported on 6.1",
    ),
    (
        "kernel_python",
        "a_thread_blocked_on_a_lock_shows_its_python_functions",
        "the first stacks of six interpreters (libpython's unwind tables and DWARF, cold) \
         outlast even the stretched deadline under TCG: no Python frames in the report",
    ),
    (
        "kernel_python",
        "an_asyncio_handler_stalling_the_loop_shows_its_python_functions_and_task",
        "as above, six asyncio servers at once",
    ),
    (
        "kernel_loops",
        "redis_and_gevent_stalled_before_the_daemon_started_are_loop_stalls_from_their_stacks",
        "it asserts on Redis's command handler in the report's user stack; under TCG the \
         report's read of the cold 2.4 MB binary gave way (\"not read within 4s: still working \
         on it\", 2026-11-26); the stall itself was recognized from the stack and reported on \
         6.1",
    ),
    (
        "kernel_loops",
        "a_tokio_runtime_and_redis_stalled_by_their_first_request_are_loop_stalls",
        "Redis's first-request stall was reported 54 s into it under TCG (2026-11-26), out of \
         the test's bound: a process is recognized from its stack only once the loop-fd \
         reader has marked it, and that reader spaces its /proc rounds by their cost, ten to \
         twenty times higher under emulation; the tokio half of the test passed on 6.1",
    ),
    (
        "kernel_loops",
        "a_daemon_whose_sigterm_handler_waits_for_a_lock_is_a_stuck_exit",
        "the stuck exit's user stack is read while the ten times slower stage is behind newer \
         hangs of the guest, so it gives way (\"not read within 4s: still working on it\"); the \
         kernel side (the exit signal seen, the stuck_exit reported with its threads) passed \
         on 6.1",
    ),
    (
        "kernel_loops",
        "gevent_hub_blocked_by_an_unpatched_sleep_is_a_loop_stall_idle_is_not",
        "the first user stack of a Python process (libpython's unwind tables and DWARF, cold) \
         outlasts even the stretched deadline under TCG; the loop stall itself was reported on \
         6.1. It also fails natively about one run in three (greenlet's stack switch ends the \
         unwind before ev_run: see the project notes)",
    ),
    (
        "kernel_loops",
        "loops_spinning_before_the_daemon_and_from_their_first_request_are_loop_stalls",
        "five servers spinning on the guest's two emulated CPUs starve the tests that run \
         beside them: in the run where it ran (2026-11-26, then as two tests) the gevent \
         stall of the first-request test next to it was reported 24 s late; the spinning \
         asyncio and gevent loops were reported from their stacks on 6.1, Node from its \
         history",
    ),
    (
        "kernel_quiet",
        "every_control_stays_quiet_for_minutes_with_the_defaults",
        "a soak: two minutes of wall time with 17 programs (a JVM, a Go program, 2,000 \
         threads, five runtimes' servers, a busy server and its client) for no coverage of \
         the kernel beyond what kernel_ownerless's and kernel_loops' controls, which run in \
         the VM, give",
    ),
];

#[derive(clap::Args)]
pub struct Args {
    /// The kernel to boot: a series Debian packages (6.1, 6.12: its newest
    /// linux-image-*-amd64-unsigned), or `host` (the running kernel from /boot, else
    /// Debian's package of its series).
    #[arg(long)]
    kernel: String,
    /// Run only this test file (kernel_locks, ...); repeat for more [default: every
    /// hangwatch/tests/kernel_*.rs].
    #[arg(long = "test", value_name = "NAME")]
    tests: Vec<String>,
    /// How many times longer the harness waits for what must happen, and how many times
    /// the detection-latency budgets are stretched (HANGWATCH_TEST_TIME_SCALE): TCG runs
    /// CPU-bound work about 10x slower, and the daemon's report stage (symbolization) sits
    /// between a hang and its event [default: 20].
    #[arg(long, default_value_t = 20)]
    time_scale: u32,
    /// The limit, in minutes, for the whole VM run [default: 60].
    #[arg(long, default_value_t = 60)]
    timeout_minutes: u64,
    /// Minutes without a sign of life from the guest (a new line of test output, or of
    /// the heartbeat it writes every minute) after which it is taken for stalled: QEMU's
    /// monitor is asked for every vCPU's registers (three samples beside the console) and
    /// the VM is stopped. A guest's boot (before its first line) took up to two minutes
    /// under a loaded TCG [default: 4].
    #[arg(long, default_value_t = 4)]
    stall_dump_minutes: u64,
    /// After a stall, boot again this many times for the test files that had not finished
    /// (the one that stalled included); the run still fails if a test fails, and says
    /// that it stalled [default: 1].
    #[arg(long, default_value_t = 1)]
    stall_restarts: u32,
    /// Run the tests that failed once more, in a fresh boot, by name: a test that passes
    /// then passes the run, and is listed as passed only on retry (its first failure stays
    /// in the log). Emulation's timing is not a real machine's (docs/kernels.md, "In CI");
    /// 0 turns it off [default: 1].
    #[arg(long, default_value_t = 1)]
    retries: u32,
    /// Arguments for every test binary, after `--` (a name filter, `--nocapture`...).
    #[arg(raw = true)]
    harness_args: Vec<OsString>,
}

pub fn vmtest(args: &Args) -> Result<()> {
    if !crate::is_root() {
        bail!(
            "vmtest installs the guest kernel's modules in /lib/modules and runs the kernel tests \
             as root: run it as root"
        );
    }
    kernel::check_arg(&args.kernel)?;
    crate::setup::setup()?;
    crate::setup::install_missing(vm::PACKAGES)?;
    let cache = crate::target_dir().join("vmtest");
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let venv = vm::install_virtme_ng(&cache)?;
    let kernel = kernel::resolve(&args.kernel, &cache)?;
    let binaries = suite::build(&args.tests)?;

    let results = cache.join("runs").join(&kernel.release);
    let _ = fs::remove_dir_all(&results);
    fs::create_dir_all(&results).with_context(|| format!("creating {}", results.display()))?;
    // CARGO_TARGET_TMPDIR, where the tests compile their C programs.
    let tmpdir = crate::target_dir().join("tmp");
    fs::create_dir_all(&tmpdir).with_context(|| format!("creating {}", tmpdir.display()))?;
    let script = cache.join(format!("guest-{}.sh", kernel.release));
    let started = Instant::now();
    let limit = Duration::from_secs(args.timeout_minutes * 60);
    let mut stalls = Vec::new();
    let mut console = results.join(FIRST.console);
    // One boot of the guest running `script`, its console into `console`.
    let boot = |console: &Path, log: &str, timeout: Duration, attempt: u32| {
        vm::run(&vm::Run {
            venv: &venv,
            image: &kernel.image,
            script: &script,
            results: &results,
            log,
            overlays: std::slice::from_ref(&tmpdir),
            console,
            timeout,
            stall_after: Duration::from_secs(args.stall_dump_minutes * 60),
            attempt,
        })
    };
    for attempt in 1..=args.stall_restarts + 1 {
        // The files not finished yet: all at the first boot; after a stall, the one that
        // stalled and those after it.
        let done = finished(&results);
        let remaining: Vec<&suite::TestBinary> = binaries
            .iter()
            .filter(|b| !done.contains(&b.name))
            .collect();
        if remaining.is_empty() {
            break;
        }
        let runs: Vec<Run<'_>> = remaining.iter().map(|&binary| Run::whole(binary)).collect();
        fs::write(&script, guest_script(args, &runs, &results, FIRST)?)
            .with_context(|| format!("writing {}", script.display()))?;
        println!(
            "xtask vmtest: booting {} ({}) under QEMU TCG; {} test files, timeouts x{}{}",
            kernel.release,
            kernel.origin,
            remaining.len(),
            args.time_scale,
            if attempt > 1 {
                format!(" (boot {attempt}, after a stall)")
            } else {
                String::new()
            }
        );
        console = results.join(format!("console.{attempt}.log"));
        let ended = boot(
            &console,
            FIRST.log,
            limit.saturating_sub(started.elapsed()),
            attempt,
        )?;
        if ended == vm::Ended::Finished {
            break;
        }
        let done = finished(&results);
        if let Some(stalled) = remaining.iter().find(|b| !done.contains(&b.name)) {
            stalls.push(stalled.name.clone());
        }
    }
    let mut outputs = vec![FIRST];
    for retry in 0..args.retries {
        let output = RETRIES[usize::try_from(retry)
            .unwrap_or(usize::MAX)
            .min(RETRIES.len() - 1)];
        let last = outputs.last().copied().unwrap_or(FIRST);
        let failed = failures(&results, last);
        if failed.is_empty() {
            break;
        }
        let runs: Vec<Run<'_>> = failed
            .iter()
            .filter_map(|(file, tests)| {
                let binary = binaries.iter().find(|b| &b.name == file)?;
                Some(Run {
                    binary,
                    tests: tests.clone(),
                })
            })
            .collect();
        println!(
            "xtask vmtest: booting again to run what failed once more: {}",
            runs.iter()
                .map(Run::describe)
                .collect::<Vec<_>>()
                .join(", ")
        );
        fs::write(&script, guest_script(args, &runs, &results, output)?)
            .with_context(|| format!("writing {}", script.display()))?;
        console = results.join(output.console);
        let left = limit.saturating_sub(started.elapsed());
        if left < Duration::from_secs(60) {
            println!("xtask vmtest: no time left for a retry");
            break;
        }
        // Numbered after the first boots: the vCPU dumps of a stall are named by it.
        boot(&console, output.log, left, args.stall_restarts + 2 + retry)?;
        outputs.push(output);
    }
    let took = started.elapsed();
    report(
        &kernel, &binaries, &results, &outputs, &console, took, &stalls,
    )
}

/// Where one boot's test files write, in results/: their output, their exit codes, and
/// the guest's console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Output {
    log: &'static str,
    status: &'static str,
    console: &'static str,
}

/// The whole run (the boots after a stall number their consoles themselves).
const FIRST: Output = Output {
    log: "log",
    status: "status",
    console: "console.log",
};
/// The retries of what failed, one set of files per retry.
const RETRIES: [Output; 3] = [
    Output {
        log: "retry1.log",
        status: "retry1.status",
        console: "console.retry1.log",
    },
    Output {
        log: "retry2.log",
        status: "retry2.status",
        console: "console.retry2.log",
    },
    Output {
        log: "retry3.log",
        status: "retry3.status",
        console: "console.retry3.log",
    },
];

/// One test binary to run in the guest: every test, or only `tests` (exact names).
struct Run<'a> {
    binary: &'a suite::TestBinary,
    tests: Vec<String>,
}

impl<'a> Run<'a> {
    fn whole(binary: &'a suite::TestBinary) -> Self {
        Self {
            binary,
            tests: Vec::new(),
        }
    }

    fn describe(&self) -> String {
        if self.tests.is_empty() {
            format!("{} (the whole file)", self.binary.name)
        } else {
            self.tests
                .iter()
                .map(|t| format!("{}::{t}", self.binary.name))
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

/// The files that failed in `output`'s boot, with the tests that failed (none listed: the
/// file was killed or failed outside a test: run it whole).
fn failures(results: &Path, output: Output) -> Vec<(String, Vec<String>)> {
    let status = fs::read_to_string(results.join(output.status)).unwrap_or_default();
    let log = fs::read_to_string(results.join(output.log)).unwrap_or_default();
    let failed = suite::failed_tests(&log);
    status
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, code)| *code != "0")
        .map(|(file, _)| {
            (
                file.to_owned(),
                failed.get(file).cloned().unwrap_or_default(),
            )
        })
        .collect()
}

/// The test files the guest finished (a line in `results/status`).
fn finished(results: &Path) -> Vec<String> {
    fs::read_to_string(results.join("status"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(name, _)| name.to_owned()))
        .collect()
}

/// The script the guest runs: each test binary in turn from hangwatch/ (cargo test's working
/// directory), its output appended to results/log, its exit code to results/status.
fn guest_script(args: &Args, runs: &[Run<'_>], results: &Path, output: Output) -> Result<String> {
    let root = crate::workspace_root();
    let venv = crate::setup::test_venv_dir();
    let log = sh_quote(&results.join(output.log).display().to_string());
    let status = sh_quote(&results.join(output.status).display().to_string());
    let harness: Vec<String> = args
        .harness_args
        .iter()
        .map(|a| {
            a.to_str()
                .map(sh_quote)
                .context("test harness arguments must be UTF-8")
        })
        .collect::<Result<_>>()?;
    let mut s = String::new();
    let _ = writeln!(s, "#!/bin/sh");
    let _ = writeln!(
        s,
        "# Written by `cargo xtask vmtest`; run as root in the guest."
    );
    let _ = writeln!(
        s,
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    // What `cargo xtask test` gives the tests, and the slowness of emulation.
    let _ = writeln!(
        s,
        "export HANGWATCH_TEST_VENV_PYTHON={}",
        sh_quote(&venv.join("bin/python").display().to_string())
    );
    let _ = writeln!(
        s,
        "export HANGWATCH_DEPLOY_VENV={}",
        sh_quote(&venv.display().to_string())
    );
    let _ = writeln!(s, "export HANGWATCH_TEST_TIME_SCALE={}", args.time_scale);
    // A heartbeat, synced to the host every minute: three whole-suite runs stalled with no
    // output at all (docs/kernels.md, "In CI"), and whether the guest was still alive then
    // (its load, its busiest processes) or wedged is the first thing to know.
    let heartbeat = sh_quote(&results.join("heartbeat").display().to_string());
    let _ = writeln!(
        s,
        "( while sleep 60; do {{ date; cat /proc/loadavg; ps -eo pid,stat,pcpu,comm --sort=-pcpu | head -8; }} >> {heartbeat}; sync; done ) &"
    );
    // No udevd in the guest makes /dev/loop-control: load the module the d_state test's
    // loop device needs up front.
    let _ = writeln!(s, "modprobe -q loop");
    let _ = writeln!(
        s,
        "cd {} || exit 1",
        sh_quote(&root.join("hangwatch").display().to_string())
    );
    let _ = writeln!(s, "echo \"guest: $(uname -r), $(nproc) CPUs\" >> {log}");
    for run in runs {
        let binary = run.binary;
        let exe = binary.executable.display().to_string();
        let _ = writeln!(
            s,
            "echo \"     Running tests/{}.rs ({exe})\" >> {log}",
            binary.name
        );
        let skips: String = SKIPPED_UNDER_TCG
            .iter()
            .filter(|(file, _, _)| *file == binary.name)
            .map(|(_, test, _)| format!(" --skip {}", sh_quote(test)))
            .collect();
        let only: String = if run.tests.is_empty() {
            String::new()
        } else {
            let names: Vec<String> = run.tests.iter().map(|t| sh_quote(t)).collect();
            format!(" --exact {}", names.join(" "))
        };
        // A file that makes no progress is killed at FILE_LIMIT, and what every thread of
        // the guest was doing then goes to the log: a whole run once stalled in one file
        // with no output at all (docs/kernels.md, "In CI").
        let _ = writeln!(
            s,
            "timeout -s KILL {} {} --include-ignored{skips}{only} {} >> {log} 2>&1",
            FILE_LIMIT.as_secs(),
            sh_quote(&exe),
            if run.tests.is_empty() {
                harness.join(" ")
            } else {
                // The failed tests by exact name, with the options the user gave (a filter
                // of theirs would now match nothing: dropped).
                harness
                    .iter()
                    .filter(|a| a.starts_with("'-"))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        );
        let _ = writeln!(s, "code=$?");
        let _ = writeln!(
            s,
            "if [ $code = 137 ]; then echo \"xtask vmtest: {} killed after {} s; the guest's threads:\" >> {log}; \
             ps -eLo pid,tid,stat,pcpu,wchan:32,comm >> {log} 2>&1; \
             for t in /proc/[0-9]*/task/[0-9]*; do case $(cut -d' ' -f3 $t/stat 2>/dev/null) in R|D) echo \"== $t\"; cat $t/stack;; esac; done >> {log} 2>&1; fi",
            binary.name,
            FILE_LIMIT.as_secs()
        );
        let _ = writeln!(s, "echo \"{} $code\" >> {status}", binary.name);
    }
    Ok(s)
}

/// How long one test file may run in the guest (the slowest took 12 minutes under TCG).
const FILE_LIMIT: Duration = Duration::from_secs(20 * 60);

/// Prints the totals; fails unless every binary ran and exited 0, at its first run or at
/// its last retry (`outputs`: the first boot's, then each retry's).
fn report(
    kernel: &kernel::Kernel,
    binaries: &[suite::TestBinary],
    results: &Path,
    outputs: &[Output],
    console: &Path,
    took: Duration,
    stalls: &[String],
) -> Result<()> {
    let read = |name: &str| fs::read_to_string(results.join(name)).unwrap_or_default();
    // Each file's exit code in the last boot that ran it, and the tests that failed there.
    let mut verdicts: std::collections::BTreeMap<String, (String, Vec<String>)> =
        std::collections::BTreeMap::new();
    // Tests that failed in some boot: (file, test).
    let mut ever_failed: Vec<(String, String)> = Vec::new();
    let mut passed = 0;
    for output in outputs {
        let log = read(output.log);
        passed += suite::totals(&log).passed;
        let failed = suite::failed_tests(&log);
        for line in read(output.status).lines() {
            let Some((file, code)) = line.split_once(' ') else {
                continue;
            };
            let tests = failed.get(file).cloned().unwrap_or_default();
            ever_failed.extend(tests.iter().map(|t| (file.to_owned(), t.clone())));
            verdicts.insert(file.to_owned(), (code.to_owned(), tests));
        }
    }
    let failed_files: Vec<&str> = verdicts
        .iter()
        .filter(|(_, (code, _))| code != "0")
        .map(|(file, _)| file.as_str())
        .collect();
    let failed: usize = verdicts
        .values()
        .filter(|(code, _)| code != "0")
        .map(|(_, tests)| tests.len().max(1))
        .sum();
    let mut on_retry: Vec<String> = ever_failed
        .iter()
        .filter(|(file, test)| {
            verdicts
                .get(file)
                .is_some_and(|(_, now)| !now.contains(test))
                && !failed_files.contains(&file.as_str())
        })
        .map(|(file, test)| format!("{file}::{test}"))
        .collect();
    on_retry.sort();
    on_retry.dedup();
    let not_run: Vec<&str> = binaries
        .iter()
        .map(|b| b.name.as_str())
        .filter(|name| !verdicts.contains_key(*name))
        .collect();
    let first = suite::totals(&read(FIRST.log));
    let skipped: Vec<_> = SKIPPED_UNDER_TCG
        .iter()
        .filter(|(file, _, _)| binaries.iter().any(|b| b.name == *file))
        .collect();
    for (file, test, why) in &skipped {
        println!("xtask vmtest: skipped under TCG: {file}::{test}: {why}");
    }
    println!(
        "xtask vmtest: linux {} ({}): {} test files in {:.0?} of wall time",
        kernel.release,
        kernel.origin,
        binaries.len(),
        took
    );
    if !on_retry.is_empty() {
        // Said on every run's last lines: a test that needs a second try under emulation
        // is a timing to look at (docs/kernels.md, "In CI"), not a pass to forget.
        println!(
            "xtask vmtest: passed only on retry ({} of them; the first failure is in {}): {}",
            on_retry.len(),
            results.join(FIRST.log).display(),
            on_retry.join(", ")
        );
    }
    // The plain closing line CI reads.
    println!(
        "vmtest: {passed} passed, {failed} failed, {} skipped{}",
        first.ignored as usize + skipped.len(),
        if on_retry.is_empty() {
            String::new()
        } else {
            format!(", {} passed on retry", on_retry.len())
        }
    );
    for file in stalls {
        // Said on every run's last lines, pass or fail: a stall is a bug to find (ours or
        // the emulator's), not noise (docs/kernels.md, "In CI").
        println!(
            "xtask vmtest: the guest STALLED in {file}; the VM was booted again for the files left (the vCPU dumps and heartbeat are in {})",
            results.display()
        );
    }
    if !not_run.is_empty() {
        bail!(
            "the guest did not run {} (did it boot? QEMU's console is in {})",
            not_run.join(" "),
            console.display()
        );
    }
    if !failed_files.is_empty() {
        bail!(
            "failed on {}: {} (the logs are in {})",
            kernel.release,
            failed_files.join(" "),
            results.display()
        );
    }
    Ok(())
}
