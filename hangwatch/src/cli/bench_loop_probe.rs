//! `hangwatch bench-loop-probe` (hidden): attaches hangwatch's default probes and keeps
//! `sys_enter_loop` attached (the daemon attaches it only while a loop thread may be
//! stalled) until SIGTERM, then logs the kernel-accounted cost of each program. `cargo
//! xtask bench` runs it to measure what a machine pays while that probe is attached.
use anyhow::Context as _;
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::probe::{ProbeSelection, Probes, preflight};

pub fn run() -> anyhow::Result<()> {
    preflight::check()?;
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("cannot install signal handlers")?;
    let mut probes = Probes::load(ProbeSelection::default())?;
    anyhow::ensure!(
        probes.set_loop_probe(true)?,
        "sys_enter_loop could not be loaded: {:?}",
        probes.degraded
    );
    tracing::info!("loop probe attached");
    signals.forever().next();
    for stats in probes.program_stats() {
        tracing::info!("{stats}");
    }
    Ok(())
}
