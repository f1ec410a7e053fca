//! `hangwatch bench-floor` (hidden): attaches only an empty program on `sched_switch` until
//! SIGTERM, then logs its kernel-accounted cost. `cargo xtask bench` runs it to measure the
//! floor that any scheduler probe pays, side by side with `hangwatch run`.
use anyhow::Context as _;
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::probe::{self, preflight};

pub fn run() -> anyhow::Result<()> {
    preflight::check()?;
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("cannot install signal handlers")?;
    let ebpf = probe::attach_floor()?;
    tracing::info!("floor program attached");
    signals.forever().next();
    for stats in probe::program_stats(&ebpf) {
        tracing::info!("{stats}");
    }
    Ok(())
}
