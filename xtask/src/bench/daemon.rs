//! The daemon's own cost: its CPU and peak RSS over a window, with 0, 1,000 and 10,000 idle
//! threads on the machine, and under the ping-pong load.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    Plan, compile,
    load::Sizes,
    proc,
    report::DaemonCost,
    sys,
    variants::{self, Tools, Variant},
};

const IDLE_THREADS_SOURCE: &str = include_str!("idle_threads.c");

/// gcc -O2 -pthread: target/bench/idle_threads.
pub fn compile_idle_threads(out_dir: &Path) -> Result<PathBuf> {
    compile(out_dir, "idle_threads", IDLE_THREADS_SOURCE)
}

/// The daemon's CPU and memory with N idle threads on the machine.
pub fn daemon_costs(
    plan: &Plan,
    tools: &Tools,
    idle_threads: &Path,
    sizes: Sizes,
    notes: &mut Vec<String>,
) -> Result<Vec<DaemonCost>> {
    let mut out = Vec::new();
    for &threads in plan.idle_threads {
        let _idle = if threads > 0 {
            let mut cmd = Command::new(idle_threads);
            cmd.arg(threads.to_string());
            let mut p = proc::Proc::spawn("idle_threads", &mut cmd, false)?;
            p.wait_for_line("ready", Duration::from_secs(60))?;
            Some(p)
        } else {
            None
        };
        out.push(daemon_cost(plan, tools, threads, None, notes)?);
    }
    // Under the context-switch load: the ping-pong, sized to outlast the window.
    let loops = sizes.pipe_loops * (plan.daemon_window.as_secs() + 5);
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0", "perf", "bench", "sched", "pipe", "-T", "-l"])
        .arg(loops.to_string());
    let _load = proc::Proc::spawn("pipe load", &mut cmd, true)?;
    proc::sleep(Duration::from_millis(300))?;
    out.push(daemon_cost(
        plan,
        tools,
        0,
        Some("ping-pong on CPU 0"),
        notes,
    )?);
    Ok(out)
}

/// The daemon's CPU and memory over one window, with whatever runs beside it.
fn daemon_cost(
    plan: &Plan,
    tools: &Tools,
    threads: u64,
    load: Option<&'static str>,
    notes: &mut Vec<String>,
) -> Result<DaemonCost> {
    let running = variants::start(Variant::Hangwatch, tools)?;
    let pid = running.pid().context("hangwatch has a pid")?;
    let startup_cpu = sys::cpu_time(pid)?;
    let startup_precise = sys::cpu_time_precise(pid);
    let start = Instant::now();
    proc::sleep(plan.daemon_window)?;
    let cpu = sys::cpu_time(pid)?.saturating_sub(startup_cpu);
    let precise = sys::cpu_time_precise(pid)
        .zip(startup_precise)
        .map(|(end, start)| end.saturating_sub(start));
    let window = start.elapsed();
    let vm_hwm_kib = sys::status_kib(pid, "VmHWM")?;
    let vm_rss_kib = sys::status_kib(pid, "VmRSS")?;
    // The unwinder process runs from the start: its memory is the daemon's too.
    let helpers_hwm_kib = sys::live_children(pid)
        .into_iter()
        .filter_map(|child| sys::status_kib(child, "VmHWM").ok())
        .sum();
    let stopped = running.stop()?;
    let scans = stopped.scans();
    if scans.is_none() {
        notes.push(format!(
            "hangwatch with {threads} idle threads logged no \"detached after N scans (mean ...)\""
        ));
    }
    let cost = DaemonCost {
        threads,
        load,
        window,
        cpu_percent: precise.unwrap_or(cpu).as_secs_f64() / window.as_secs_f64() * 100.0,
        stat_cpu_percent: cpu.as_secs_f64() / window.as_secs_f64() * 100.0,
        precise: precise.is_some(),
        startup_cpu: startup_precise.unwrap_or(startup_cpu),
        vm_hwm_kib,
        vm_rss_kib,
        helpers_hwm_kib,
        scans,
        full_walks: stopped.full_walks(),
        summary: stopped.summary().map(str::to_owned),
    };
    eprintln!(
        "xtask bench: daemon with {threads} idle threads{}: {:.3}% of a core, VmHWM {:.1} MiB (+ {:.1} MiB its unwinder)",
        load.map(|l| format!(" and {l}")).unwrap_or_default(),
        cost.cpu_percent,
        vm_hwm_kib as f64 / 1024.0,
        helpers_hwm_kib as f64 / 1024.0
    );
    Ok(cost)
}
