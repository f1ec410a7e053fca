//! Per-program cost: one ping-pong run per variant with `kernel.bpf_stats_enabled=1`, the
//! ns/run the kernel accounts (hangwatch and its floor log it at exit; bpftrace's is read
//! from /proc/PID/fdinfo while it runs).
use anyhow::Result;

use super::{
    load::Sizes,
    sys::BpfStats,
    variants::{self, ProgramCost, Tools, Variant},
};

/// One pipe run per variant with kernel.bpf_stats_enabled=1: ns/run per program.
pub fn program_costs(
    tools: &Tools,
    variants: &[Variant],
    sizes: Sizes,
    bpf_stats: &mut BpfStats,
    notes: &mut Vec<String>,
) -> Result<Vec<(Variant, ProgramCost)>> {
    let mut costs = Vec::new();
    for &variant in variants.iter().filter(|v| **v != Variant::Bare) {
        bpf_stats.set(true)?;
        let running = variants::start(variant, tools)?;
        sizes.pipe()?;
        let held = running.held_program_costs(tools.bpftool.as_deref());
        let stopped = running.stop()?;
        bpf_stats.set(false)?;
        let found = if variant == Variant::Bpftrace {
            held
        } else {
            stopped.program_costs()
        };
        if found.is_empty() {
            notes.push(format!(
                "{}: no per-program statistics (no \"bpf program ...\" lines at exit)",
                variant.name()
            ));
        }
        for cost in found {
            eprintln!(
                "xtask bench: {} program {}: {} runs, {:.1} ns/run",
                variant.name(),
                cost.name,
                cost.runs,
                cost.ns_per_run
            );
            costs.push((variant, cost));
        }
    }
    Ok(costs)
}
