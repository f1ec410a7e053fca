//! Throughput: rounds of every variant under the ping-pong and messaging loads, the order
//! rotated each round so that the machine's drift cancels out in the per-round ratios to
//! bare (`kernel.bpf_stats_enabled` off meanwhile).
use std::time::Duration;

use anyhow::Result;

use super::{
    Plan, load,
    load::Sizes,
    report::{Series, VariantResult},
    variants::{self, Tools, Variant},
};

/// Rounds of every variant under both loads, order rotated each round. Also returns each
/// round's order and hangwatch's exit times.
#[expect(
    clippy::type_complexity,
    reason = "one tuple of per-round figures, read once by the caller"
)]
pub fn throughput(
    plan: &Plan,
    tools: &Tools,
    variants: &[Variant],
    sizes: Sizes,
    notes: &mut Vec<String>,
) -> Result<(Vec<VariantResult>, Vec<Vec<Variant>>, Vec<Duration>)> {
    let mut results: Vec<VariantResult> = variants
        .iter()
        .map(|&variant| VariantResult {
            variant,
            command: variant.command(tools),
            pipe: Series::default(),
            messaging: Series::default(),
        })
        .collect();
    let mut orders = Vec::new();
    let mut exit_times = Vec::new();
    for round in 0..plan.rounds {
        let order: Vec<Variant> = (0..variants.len())
            .map(|i| variants[(i + round) % variants.len()])
            .collect();
        for &variant in &order {
            let running = variants::start(variant, tools)?;
            let pipe = sizes.pipe()?;
            let mut messaging = 0.0;
            for _ in 0..plan.messaging_repeats {
                messaging += load::messaging(sizes.messaging_loops)?;
            }
            let messaging = messaging / plan.messaging_repeats as f64;
            let stopped = running.stop()?;
            if stopped.killed {
                notes.push(format!(
                    "{} did not exit within 5 s of SIGTERM in round {}: killed",
                    variant.name(),
                    round + 1
                ));
            }
            if variant == Variant::Hangwatch {
                exit_times.push(stopped.exit_time);
            }
            eprintln!(
                "xtask bench: round {}/{}: {:<9} pipe {pipe:>8.0} ops/s, messaging {messaging:>9.0} msg/s",
                round + 1,
                plan.rounds,
                variant.name()
            );
            let r = results
                .iter_mut()
                .find(|r| r.variant == variant)
                .expect("every variant has a result");
            r.pipe.0.push(pipe);
            r.messaging.0.push(messaging);
        }
        orders.push(order);
    }
    for r in &results {
        for (load, series) in [("pipe", &r.pipe), ("messaging", &r.messaging)] {
            if series.spread() > 0.10 {
                notes.push(format!(
                    "large spread: {} {load} varied by {:.0}% of its median across rounds \
                     ({:.0}..{:.0})",
                    r.variant.name(),
                    series.spread() * 100.0,
                    series.min(),
                    series.max()
                ));
            }
        }
    }
    Ok((results, orders, exit_times))
}
