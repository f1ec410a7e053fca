//! The targets each figure is judged against, and the verdicts of a run.
use std::time::Duration;

use super::{
    latency, mass_hang,
    report::{DaemonCost, Series, StackCost, Target, VariantResult},
    variants::{ProgramCost, Variant},
};

/// The targets (MISSION.md, "The budgets", and the issues named).
const SCHED_SWITCH_NS: f64 = 150.0;
const PIPE_RATIO: f64 = 0.95;
/// Issue 15: the defaults within this much of the empty floor program on the ping-pong.
const PIPE_FLOOR_GAP: f64 = 0.01;
const MESSAGING_RATIO: f64 = 0.99;
const DAEMON_CPU_PERCENT: f64 = 0.5;
const DAEMON_HWM_MIB: f64 = 64.0;
pub const DAEMON_THREADS: u64 = 10_000;
/// Issue 19: "well under half a core" while a mass hang is reported: taken as at most
/// 0.35 (0.28-0.32 measured on a quiet 2-core machine, 2026-11-26).
const MASS_HANG_CORES: f64 = 0.35;
/// Issue 19: a deadlock beside a mass hang or a stall is reported within its threshold + 1 s.
const DEADLOCK_LATENCY: Duration = Duration::from_secs(2);
/// Issue 19: SIGTERM ends the daemon within a second, a stalled process or not.
const SIGTERM_EXIT: Duration = Duration::from_secs(1);

pub fn targets(
    throughput: &[VariantResult],
    programs: &[(Variant, ProgramCost)],
    daemon: &[DaemonCost],
    stacks: &[StackCost],
    latency: &[(latency::HangKind, latency::Latency)],
    mass_hang: Option<&mass_hang::MassHang>,
    mm_stall: Option<&mass_hang::MmStall>,
) -> Vec<Target> {
    let series = |v: Variant| throughput.iter().find(|r| r.variant == v);
    let ratio = |pick: fn(&VariantResult) -> &Series| {
        Some(pick(series(Variant::Hangwatch)?).ratio_to(pick(series(Variant::Bare)?)))
    };
    let at_least = |name: &str, wanted: f64, measured: Option<f64>| Target {
        name: name.to_owned(),
        wanted: format!(">= {wanted:.2}"),
        measured: measured.map(|m| format!("{m:.3}")),
        pass: measured.map(|m| m >= wanted),
    };
    let sched_switch = programs
        .iter()
        .find(|(v, c)| *v == Variant::Hangwatch && c.name == "sched_switch")
        .map(|(_, c)| c.ns_per_run);
    let busy = daemon
        .iter()
        .find(|d| d.threads == DAEMON_THREADS && d.load.is_none());
    // The daemon's peak and its unwinder's, together.
    let hwm_mib = busy.map(|d| (d.vm_hwm_kib + d.helpers_hwm_kib) as f64 / 1024.0);
    let mut list = vec![
        Target {
            name: "hangwatch sched_switch ns/run".into(),
            wanted: format!("<= {SCHED_SWITCH_NS:.0}"),
            measured: sched_switch.map(|n| format!("{n:.1}")),
            pass: sched_switch.map(|n| n <= SCHED_SWITCH_NS),
        },
        at_least(
            "pipe (ping-pong) hangwatch/bare",
            PIPE_RATIO,
            ratio(|r| &r.pipe),
        ),
        {
            let gap = ratio(|r| &r.pipe).and_then(|hangwatch| {
                let floor = series(Variant::Floor)?
                    .pipe
                    .ratio_to(&series(Variant::Bare)?.pipe);
                Some(floor - hangwatch)
            });
            Target {
                name: "pipe (ping-pong) floor/bare - hangwatch/bare".into(),
                wanted: format!("<= {PIPE_FLOOR_GAP:.2}"),
                measured: gap.map(|g| format!("{g:.3}")),
                pass: gap.map(|g| g <= PIPE_FLOOR_GAP),
            }
        },
        at_least(
            "messaging hangwatch/bare",
            MESSAGING_RATIO,
            ratio(|r| &r.messaging),
        ),
        Target {
            name: format!("daemon CPU, {DAEMON_THREADS} idle threads"),
            wanted: format!("<= {DAEMON_CPU_PERCENT} % of a core"),
            measured: busy.map(|d| format!("{:.3} %", d.cpu_percent)),
            pass: busy.map(|d| d.cpu_percent <= DAEMON_CPU_PERCENT),
        },
        Target {
            name: format!("daemon + unwinder VmHWM, {DAEMON_THREADS} idle threads"),
            wanted: format!("<= {DAEMON_HWM_MIB:.0} MiB"),
            measured: hwm_mib.map(|m| format!("{m:.1} MiB")),
            pass: hwm_mib.map(|m| m <= DAEMON_HWM_MIB),
        },
    ];
    for kind in [latency::HangKind::Futex, latency::HangKind::DState] {
        let l = latency.iter().find(|(k, _)| *k == kind).map(|(_, l)| l);
        list.push(Target {
            name: format!("detection latency p99 after the threshold, {}", kind.name()),
            wanted: "<= 250 ms".into(),
            measured: l
                .and_then(|l| l.quantile(0.99))
                .map(|d| format!("{:.0} ms", d.as_secs_f64() * 1e3)),
            pass: l.and_then(|l| l.quantile(0.99)).map(|d| {
                d <= Duration::from_millis(250) && l.is_some_and(|l| l.reported == l.hangs)
            }),
        });
    }
    list.extend([Target {
        name: "warm unwind + symbolize, one stack".into(),
        wanted: "<= 1 ms".into(),
        measured: stacks
            .first()
            .map(|c| format!("{:.0} us", c.warm_median_us)),
        pass: stacks.first().map(|c| c.warm_median_us <= 1000.0),
    }]);
    // Issue 17's budget: one stack of a CPython thread with its Python frames.
    let python = stacks
        .iter()
        .filter(|c| c.python_frames > 0)
        .max_by_key(|c| c.python_frames);
    list.extend([
        Target {
            name: "warm stack of a CPython thread, with its Python frames".into(),
            wanted: "<= 2 ms".into(),
            measured: python.map(|c| {
                format!(
                    "{:.0} us ({} Python frames: {:.0} us)",
                    c.warm_median_us, c.python_frames, c.python_warm_median_us
                )
            }),
            pass: python.map(|c| c.warm_median_us <= 2000.0),
        },
        // The native part's cold cost is the row above's (issue 4): judged here is what
        // the Python frames add the first time (finding the interpreter, reading code).
        Target {
            name: "cold Python frames of a CPython thread's stack".into(),
            wanted: "<= 50 ms".into(),
            measured: python.map(|c| {
                format!(
                    "{:.1} ms (whole stack {:.1} ms)",
                    c.python_cold_us / 1e3,
                    c.cold_us / 1e3
                )
            }),
            pass: python.map(|c| c.python_cold_us <= 50_000.0),
        },
    ]);
    list.extend(never_blind_targets(mass_hang, mm_stall));
    list
}

/// Issue 19's targets for the mass hang and the mm-lock stall. A scenario that ran but did
/// not see its deadlock reported fails; one that did not run is n/a.
fn never_blind_targets(
    mass_hang: Option<&mass_hang::MassHang>,
    mm_stall: Option<&mass_hang::MmStall>,
) -> Vec<Target> {
    let wanted_latency = format!(
        "<= {:.0} s (threshold {:.0} s + 1 s)",
        DEADLOCK_LATENCY.as_secs_f64(),
        mass_hang::DEADLOCK_THRESHOLD.as_secs_f64()
    );
    let deadlock = |name: String, ran: bool, latency: Option<Duration>| Target {
        name,
        wanted: wanted_latency.clone(),
        measured: ran.then(|| mass_hang::seconds(latency)),
        pass: ran.then(|| latency.is_some_and(|l| l <= DEADLOCK_LATENCY)),
    };
    let sigterm = |name: &str, exit: Option<mass_hang::Exit>| Target {
        name: name.to_owned(),
        wanted: format!("< {:.0} s", SIGTERM_EXIT.as_secs_f64()),
        measured: exit.map(|e| {
            format!(
                "{:.0} ms{}",
                e.took.as_secs_f64() * 1e3,
                if e.killed { " (killed)" } else { "" }
            )
        }),
        pass: exit.map(|e| !e.killed && e.took < SIGTERM_EXIT),
    };
    let threads = mass_hang.map_or(0, |m| m.threads);
    vec![
        Target {
            name: "mass hang: every thread in D reported, once".into(),
            wanted: if threads > 0 {
                format!("{threads} of {threads}")
            } else {
                "all".into()
            },
            measured: mass_hang.map(|m| {
                format!(
                    "{} of {}{}",
                    m.reported,
                    m.threads,
                    if m.duplicates > 0 {
                        format!(", {} duplicates", m.duplicates)
                    } else {
                        String::new()
                    }
                )
            }),
            pass: mass_hang.map(|m| m.reported == m.threads && m.duplicates == 0),
        },
        deadlock(
            format!("unrelated deadlock during a mass hang of {threads} threads"),
            mass_hang.is_some(),
            mass_hang.and_then(|m| m.deadlock_latency),
        ),
        Target {
            name: "daemon CPU while a mass hang is reported".into(),
            wanted: format!("<= {MASS_HANG_CORES} of a core (well under half)"),
            measured: mass_hang.map(|m| {
                format!(
                    "{:.2} of a core ({:.2} s over {:.2} s)",
                    m.cores(),
                    m.daemon_cpu.as_secs_f64(),
                    m.window.as_secs_f64()
                )
            }),
            pass: mass_hang.map(|m| m.cores() <= MASS_HANG_CORES),
        },
        sigterm("SIGTERM exit during a mass hang", mass_hang.map(|m| m.exit)),
        deadlock(
            "unrelated deadlock during an mm-lock stall".into(),
            mm_stall.is_some(),
            mm_stall.and_then(|s| s.deadlock_latency),
        ),
        sigterm(
            "SIGTERM exit during an mm-lock stall",
            mm_stall.map(|s| s.exit),
        ),
    ]
}
