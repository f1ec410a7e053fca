//! `cargo xtask bench [--quick]`: what hangwatch costs the machine, in one run (as root).
//!
//! 1. Throughput: `perf bench sched pipe` (both tasks on CPU 0, the worst case for a
//!    sched_switch probe) and `perf bench sched messaging` (many threads, all CPUs), in rounds;
//!    each round runs every variant (bare, the empty floor program, hangwatch, bpftrace if
//!    installed) in an order rotated from round to round, so that the machine's drift cancels
//!    out in the per-round ratios to bare. `kernel.bpf_stats_enabled` is off meanwhile.
//! 2. Per-program cost: one pipe run per variant with `kernel.bpf_stats_enabled=1`, the ns/run
//!    the kernel accounts (hangwatch and its floor log it at exit; bpftrace's is read from
//!    /proc/PID/fdinfo).
//! 3. The daemon's own CPU and peak RSS with 0, 1,000 and 10,000 idle threads.
//! 4. The cost of one user stack (`hangwatch bench-stack`), 5. detection latency of hangs at
//!    random moments, 6. the mass hang and the mm-lock stall of issue 19 (frozen ext4).
//!
//! `--only SECTION[,SECTION]` runs some of them (e.g. `--only mass-hang`).
//!
//! This file is the driver; each section is a file of `bench/` (`throughput.rs`,
//! `programs.rs`, `daemon.rs`, `stacks.rs`, `latency.rs`, `mass_hang.rs`), `targets.rs`
//! judges the figures and `report.rs` prints and writes them.
//!
//! Prints the tables with the targets and writes target/bench/report.{json,md}. Every process
//! is killed by its PID when its guard drops (error, panic, Ctrl-C alike), the sysctl is
//! restored, frozen filesystems are thawed and unmounted.

mod daemon;
mod environment;
mod frozen;
mod latency;
mod load;
mod mass_hang;
mod proc;
mod programs;
mod report;
mod stacks;
mod sys;
mod targets;
mod throughput;
mod variants;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::ValueEnum as _;

use self::{
    daemon::{compile_idle_threads, daemon_costs},
    environment::environment,
    latency::detection_latency,
    programs::program_costs,
    report::Report,
    stacks::stack_costs,
    sys::BpfStats,
    targets::{DAEMON_THREADS, targets},
    throughput::throughput,
    variants::{Bpftrace, Tools, Variant},
};

#[derive(clap::Args)]
pub struct Args {
    /// Fewer and shorter runs (3 rounds of ~0.5 s loads, 5 s daemon windows), for iterating.
    #[arg(long)]
    quick: bool,
    /// Rounds of the throughput comparison [default: 7, or 3 with --quick].
    #[arg(long)]
    rounds: Option<usize>,
    /// Use the existing target/release/hangwatch (no set-up, no build).
    #[arg(long)]
    no_build: bool,
    /// Run the ping-pong as SCHED_FIFO (chrt -f 40), so that other work on CPU 0 cannot
    /// preempt it: for a shared or busy machine. Ratios are not comparable with runs
    /// without it.
    #[arg(long)]
    realtime: bool,
    /// Run only these sections (comma-separated) [default: all].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "SECTION")]
    only: Vec<Section>,
}

/// The parts of the benchmark, for `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    /// Throughput of the loads beside each variant.
    Throughput,
    /// ns/run per BPF program.
    Programs,
    /// The daemon's CPU and memory with idle threads and under load.
    Daemon,
    /// One user stack, cold and warm.
    Stacks,
    /// Detection latency of hangs at random moments.
    Latency,
    /// The mass hang and the mm-lock stall on a frozen filesystem (issue 19).
    MassHang,
}

/// How long the benchmark runs each thing.
struct Plan {
    rounds: usize,
    /// The length of one load run, bare.
    run_length: Duration,
    /// How long the daemon's CPU time is measured, per idle-thread count.
    daemon_window: Duration,
    idle_threads: &'static [u64],
    /// Messaging runs per variant and round (their mean is the round's value): the many-thread
    /// load is the noisier one.
    messaging_repeats: usize,
    /// Threads of the mass hang.
    mass_hang_threads: usize,
}

pub fn bench(args: &Args) -> Result<()> {
    if !crate::is_root() {
        bail!(
            "the benchmark loads eBPF programs and sets kernel.bpf_stats_enabled: run it as root \
             (sudo -E env PATH=\"$PATH\" cargo xtask bench)"
        );
    }
    let plan = Plan {
        rounds: args.rounds.unwrap_or(if args.quick { 3 } else { 7 }).max(1),
        run_length: Duration::from_millis(if args.quick { 500 } else { 1000 }),
        // Whole multiples of the daemon's 5 s full walks.
        // Long enough for several full walks even where they are spaced out (10,000
        // threads: one every ~5 s), so that their cost is in the figure.
        daemon_window: Duration::from_secs(if args.quick { 5 } else { 20 }),
        idle_threads: &[0, 1_000, DAEMON_THREADS],
        messaging_repeats: if args.quick { 1 } else { 2 },
        // The kernel test's 2,000; a quarter of it when iterating, through the same steps.
        mass_hang_threads: if args.quick { 500 } else { 2000 },
    };
    let runs = |section: Section| args.only.is_empty() || args.only.contains(&section);
    // The throughput, program and daemon sections run `perf bench` loads.
    let loads = runs(Section::Throughput) || runs(Section::Programs) || runs(Section::Daemon);
    if !args.no_build {
        crate::setup::setup()?;
        crate::build::build_daemon(true)?;
    }
    let daemon = crate::target_dir().join("release").join("hangwatch");
    if !daemon.is_file() {
        bail!(
            "{} is missing: build it (cargo xtask build)",
            daemon.display()
        );
    }
    let tools_needed: &[&str] = if loads {
        &["perf", "taskset", "gcc"]
    } else {
        &["gcc"]
    };
    for &tool in tools_needed {
        if crate::find_program(tool).is_none() {
            bail!("{tool} is missing (cargo xtask setup installs it: linux-perf, util-linux, gcc)");
        }
    }
    let out_dir = crate::target_dir().join("bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let idle_threads = compile_idle_threads(&out_dir)?;
    let tools = Tools {
        daemon_run_args: variants::daemon_run_args(&daemon),
        daemon,
        bpftrace: Bpftrace::find(),
        bpftool: crate::find_program("bpftool")
            .or_else(|| Some(PathBuf::from("/usr/sbin/bpftool")).filter(|p| p.is_file())),
    };

    proc::catch_interrupts();
    let started = Instant::now();
    let mut notes = Vec::new();
    let mut environment = environment(&tools, args.quick);
    let busy = sys::cpu_busy(Duration::from_secs(1))?;
    environment.push((
        "CPU busy before the start".into(),
        format!("{:.0}% (over 1 s)", busy * 100.0),
    ));
    if busy > 0.2 {
        notes.push(format!(
            "the machine was busy: {:.0}% of all CPU time in the second before the start went \
             to other work; expect large spreads",
            busy * 100.0
        ));
    }
    let tracers = sys::other_tracers(&[]);
    if !tracers.is_empty() {
        notes.push(format!(
            "other processes held tracing BPF programs at the start (they cost every variant, \
             bare included, and add noise): {}",
            tracers.join(", ")
        ));
    }
    if !args.only.is_empty() {
        let names: Vec<String> = args
            .only
            .iter()
            .filter_map(|s| Some(s.to_possible_value()?.get_name().to_owned()))
            .collect();
        notes.push(format!(
            "only these sections ran (--only): {}",
            names.join(", ")
        ));
    }
    if loads && tools.bpftrace.is_none() {
        notes.push("bpftrace is not installed (Debian: bpftrace): its variant was skipped".into());
    } else if loads && tools.bpftool.is_none() {
        notes.push("bpftool is not installed: bpftrace's programs are named by id".into());
    }

    // Only the throughput and program sections need the sysctl: the others leave it alone.
    let mut bpf_stats = if runs(Section::Throughput) || runs(Section::Programs) {
        let mut stats = BpfStats::take()?;
        if stats.was_on() {
            notes.push(
                "kernel.bpf_stats_enabled was 1: turned off for the throughput runs, restored \
                 after"
                    .into(),
            );
        }
        stats.set(false)?;
        Some(stats)
    } else {
        None
    };

    let sizes = if loads {
        eprintln!(
            "xtask bench: calibrating the loads to ~{:?} a run",
            plan.run_length
        );
        let sizes = load::calibrate(plan.run_length, args.realtime)?;
        environment.push(("pipe loops".into(), sizes.pipe_loops.to_string()));
        environment.push(("messaging loops".into(), sizes.messaging_loops.to_string()));
        Some(sizes)
    } else {
        None
    };

    let mut variants = vec![
        Variant::Bare,
        Variant::Floor,
        Variant::Hangwatch,
        Variant::HangwatchAll,
        Variant::LoopProbe,
    ];
    if tools.bpftrace.is_some() {
        variants.push(Variant::Bpftrace);
    }
    let (throughput, orders, exit_times) = match sizes {
        Some(sizes) if runs(Section::Throughput) => {
            throughput(&plan, &tools, &variants, sizes, &mut notes)?
        }
        _ => Default::default(),
    };
    let programs = match (sizes, bpf_stats.as_mut()) {
        (Some(sizes), Some(bpf_stats)) if runs(Section::Programs) => {
            program_costs(&tools, &variants, sizes, bpf_stats, &mut notes)?
        }
        _ => Vec::new(),
    };
    drop(bpf_stats);
    let daemon = match sizes {
        Some(sizes) if runs(Section::Daemon) => {
            daemon_costs(&plan, &tools, &idle_threads, sizes, &mut notes)?
        }
        _ => Vec::new(),
    };
    // These two turn failures into notes; Ctrl-C among them ends the bench all the same.
    let stacks = if runs(Section::Stacks) {
        stack_costs(&tools, &mut notes)
    } else {
        Vec::new()
    };
    proc::check_interrupted()?;
    let latency = if runs(Section::Latency) {
        eprintln!(
            "xtask bench: detection latency ({} hangs at random moments)",
            latency::HANGS
        );
        detection_latency(&tools, &out_dir, &mut notes)
    } else {
        Vec::new()
    };
    proc::check_interrupted()?;
    let (mass_hang, mm_stall) = if runs(Section::MassHang) {
        mass_hang::measure(
            &tools.daemon,
            &tools.daemon_run_args,
            &out_dir,
            plan.mass_hang_threads,
            &mut notes,
        )?
    } else {
        (None, None)
    };

    let worst_exit = exit_times.iter().copied().max().unwrap_or_default();
    if worst_exit > Duration::from_secs(1) {
        notes.push(format!(
            "hangwatch took up to {worst_exit:.2?} to exit after SIGTERM (should be < 1 s)"
        ));
    }
    let tracers = sys::other_tracers(&[]);
    if !tracers.is_empty() {
        notes.push(format!(
            "other processes held tracing BPF programs at the end: {}",
            tracers.join(", ")
        ));
    }
    environment.push((
        "wall time".into(),
        format!("{:.0} s", started.elapsed().as_secs_f64()),
    ));

    let mut targets = targets(
        &throughput,
        &programs,
        &daemon,
        &stacks,
        &latency,
        mass_hang.as_ref(),
        mm_stall.as_ref(),
    );
    if !args.only.is_empty() {
        // Those of the sections left out; in a full run, a target not measured stays (n/a).
        targets.retain(|t| t.measured.is_some());
    }
    let report = Report {
        environment,
        rounds: plan.rounds,
        pipe_command: sizes.map_or_else(|| "(not run)".into(), |s| s.pipe_command()),
        messaging_command: sizes.map_or_else(|| "(not run)".into(), |s| s.messaging_command()),
        messaging_repeats: plan.messaging_repeats,
        orders,
        targets,
        latency,
        mass_hang,
        mm_stall,
        throughput,
        programs,
        daemon,
        stacks,
        notes,
    };
    print!("{}", report.text());
    let json_path = out_dir.join("report.json");
    let md_path = out_dir.join("report.md");
    fs::write(
        &json_path,
        serde_json::to_string_pretty(&report.json())? + "\n",
    )
    .with_context(|| format!("cannot write {}", json_path.display()))?;
    fs::write(&md_path, report.markdown())
        .with_context(|| format!("cannot write {}", md_path.display()))?;
    println!(
        "\nreport: {} and {} ({:.0} s)",
        json_path.display(),
        md_path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// gcc -O2 -pthread: `target/bench/NAME` from `source`.
fn compile(out_dir: &Path, name: &str, source_text: &str) -> Result<PathBuf> {
    let source = out_dir.join(format!("{name}.c"));
    let binary = out_dir.join(name);
    fs::write(&source, source_text)
        .with_context(|| format!("cannot write {}", source.display()))?;
    crate::status(
        Command::new("gcc")
            .args(["-O2", "-pthread", "-Wall", "-o"])
            .arg(&binary)
            .arg(&source),
    )
    .with_context(|| format!("compiling {name}.c failed"))?;
    Ok(binary)
}
