//! The results: statistics, the printed tables, report.json and report.md.

use std::{fmt::Write as _, time::Duration};

use serde_json::{Value, json};

use super::{
    mass_hang::{self, Exit, MassHang, MmStall},
    variants::{ProgramCost, Variant},
};

/// Per-round values of one load under one variant (indexed by round).
#[derive(Debug, Clone, Default)]
pub struct Series(pub Vec<f64>);

impl Series {
    pub fn median(&self) -> f64 {
        median(&self.0)
    }
    pub fn min(&self) -> f64 {
        self.0.iter().copied().fold(f64::INFINITY, f64::min)
    }
    pub fn max(&self) -> f64 {
        self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }
    /// (max - min) / median.
    pub fn spread(&self) -> f64 {
        (self.max() - self.min()) / self.median()
    }
    /// The median of the per-round ratios to `base` (same round: same machine noise).
    pub fn ratio_to(&self, base: &Series) -> f64 {
        let ratios: Vec<f64> = self.0.iter().zip(&base.0).map(|(v, b)| v / b).collect();
        median(&ratios)
    }
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One variant's throughput under both loads.
pub struct VariantResult {
    pub variant: Variant,
    pub command: String,
    pub pipe: Series,
    pub messaging: Series,
}

/// The daemon with N idle threads on the machine.
pub struct DaemonCost {
    pub threads: u64,
    /// What else ran during the window, if anything.
    pub load: Option<&'static str>,
    pub window: Duration,
    /// From schedstat when the kernel keeps it (`precise`), else from utime + stime.
    pub cpu_percent: f64,
    /// From utime + stime (clock-tick samples).
    pub stat_cpu_percent: f64,
    pub precise: bool,
    pub startup_cpu: Duration,
    pub vm_hwm_kib: u64,
    /// The peaks of its helper processes (the unwinder), summed.
    pub helpers_hwm_kib: u64,
    pub vm_rss_kib: u64,
    pub scans: Option<(u64, Duration)>,
    /// The periodic walks of every task, where the daemon reports them.
    pub full_walks: Option<(u64, Duration)>,
    pub summary: Option<String>,
}

/// Unwinding + symbolizing one user stack of a real blocked process (`hangwatch
/// bench-stack`): cold, the first time for its binaries, and warm, from the caches.
pub struct StackCost {
    pub target: String,
    pub frames: u64,
    pub cold_us: f64,
    pub warm_median_us: f64,
    pub warm_p99_us: f64,
    /// Of those frames, the Python ones (a CPython thread), and the time spent on them.
    pub python_frames: u64,
    pub python_cold_us: f64,
    pub python_warm_median_us: f64,
}

pub struct Target {
    pub name: String,
    pub wanted: String,
    pub measured: Option<String>,
    pub pass: Option<bool>,
}

pub struct Report {
    pub environment: Vec<(String, String)>,
    pub rounds: usize,
    pub pipe_command: String,
    pub messaging_command: String,
    /// Messaging runs per variant and round, averaged.
    pub messaging_repeats: usize,
    pub orders: Vec<Vec<Variant>>,
    pub throughput: Vec<VariantResult>,
    pub programs: Vec<(Variant, ProgramCost)>,
    pub daemon: Vec<DaemonCost>,
    pub stacks: Vec<StackCost>,
    pub latency: Vec<(super::latency::HangKind, super::latency::Latency)>,
    pub mass_hang: Option<MassHang>,
    pub mm_stall: Option<MmStall>,
    pub targets: Vec<Target>,
    pub notes: Vec<String>,
}

/// A table: its header and rows, rendered aligned for the terminal or as Markdown.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// First column left-aligned, the others right-aligned.
    fn text(&self) -> String {
        let width = |i: usize| {
            self.rows
                .iter()
                .chain([&self.header])
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.header.len()).map(width).collect();
        let mut out = String::new();
        for row in [&self.header].into_iter().chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                if i == 0 {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                } else {
                    line.push_str("  ");
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                }
            }
            out.push_str("  ");
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    fn markdown(&self) -> String {
        let mut out = format!("| {} |\n", self.header.join(" | "));
        out.push('|');
        for i in 0..self.header.len() {
            out.push_str(if i == 0 { " :-- |" } else { " --: |" });
        }
        out.push('\n');
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out
    }
}

fn pass_text(pass: Option<bool>) -> String {
    match pass {
        Some(true) => "pass".to_owned(),
        Some(false) => "FAIL".to_owned(),
        None => "n/a".to_owned(),
    }
}

fn exit_text(exit: Exit) -> String {
    format!(
        "{:.0} ms{}",
        exit.took.as_secs_f64() * 1e3,
        if exit.killed { " (killed)" } else { "" }
    )
}

fn range(series: &Series, decimals: usize) -> String {
    format!(
        "{:.*}..{:.*}",
        decimals,
        series.min(),
        decimals,
        series.max()
    )
}

impl Report {
    fn bare(&self) -> Option<&VariantResult> {
        self.throughput.iter().find(|r| r.variant == Variant::Bare)
    }

    fn throughput_table(&self) -> Table {
        let mut t = Table::new(&[
            "variant",
            "pipe ops/s",
            "min..max",
            "spread",
            "vs bare",
            "messaging msg/s",
            "min..max",
            "spread",
            "vs bare",
        ]);
        let bare = self.bare();
        for r in &self.throughput {
            let ratio = |s: &Series, b: Option<&Series>| {
                b.map_or("-".to_owned(), |b| format!("{:.3}", s.ratio_to(b)))
            };
            t.row(vec![
                r.variant.name().to_owned(),
                format!("{:.0}", r.pipe.median()),
                range(&r.pipe, 0),
                format!("{:.1}%", r.pipe.spread() * 100.0),
                ratio(&r.pipe, bare.map(|b| &b.pipe)),
                format!("{:.0}", r.messaging.median()),
                range(&r.messaging, 0),
                format!("{:.1}%", r.messaging.spread() * 100.0),
                ratio(&r.messaging, bare.map(|b| &b.messaging)),
            ]);
        }
        t
    }

    fn programs_table(&self) -> Table {
        let mut t = Table::new(&["variant", "program", "runs", "ns/run"]);
        for (variant, cost) in &self.programs {
            t.row(vec![
                variant.name().to_owned(),
                cost.name.clone(),
                cost.runs.to_string(),
                format!("{:.1}", cost.ns_per_run),
            ]);
        }
        t
    }

    fn daemon_table(&self) -> Table {
        let mut t = Table::new(&[
            "idle threads",
            "load",
            "window",
            "CPU % of a core",
            "(utime+stime)",
            "start-up CPU",
            "VmHWM MiB",
            "VmRSS MiB",
            "unwinder VmHWM MiB",
            "scans",
            "mean scan",
            "full walks",
            "mean walk",
        ]);
        for d in &self.daemon {
            t.row(vec![
                d.threads.to_string(),
                d.load.unwrap_or("-").to_owned(),
                format!("{:.1} s", d.window.as_secs_f64()),
                format!("{:.3}{}", d.cpu_percent, if d.precise { "" } else { "*" }),
                format!("{:.3}", d.stat_cpu_percent),
                format!("{:.0} ms", d.startup_cpu.as_secs_f64() * 1e3),
                format!("{:.1}", d.vm_hwm_kib as f64 / 1024.0),
                format!("{:.1}", d.vm_rss_kib as f64 / 1024.0),
                format!("{:.1}", d.helpers_hwm_kib as f64 / 1024.0),
                d.scans.map_or("?".to_owned(), |(n, _)| n.to_string()),
                d.scans
                    .map_or("?".to_owned(), |(_, mean)| format!("{mean:.2?}")),
                d.full_walks.map_or("-".to_owned(), |(n, _)| n.to_string()),
                d.full_walks
                    .map_or("-".to_owned(), |(_, mean)| format!("{mean:.2?}")),
            ]);
        }
        t
    }

    fn stacks_table(&self) -> Table {
        let mut t = Table::new(&[
            "stack of",
            "frames",
            "cold",
            "warm median",
            "warm p99",
            "of which Python frames: n, cold, warm median",
        ]);
        for c in &self.stacks {
            t.row(vec![
                c.target.clone(),
                c.frames.to_string(),
                format!("{:.1} ms", c.cold_us / 1e3),
                format!("{:.0} us", c.warm_median_us),
                format!("{:.0} us", c.warm_p99_us),
                format!(
                    "{}, {:.1} ms, {:.0} us",
                    c.python_frames,
                    c.python_cold_us / 1e3,
                    c.python_warm_median_us
                ),
            ]);
        }
        t
    }

    fn latency_table(&self) -> Table {
        let mut t = Table::new(&[
            "hang",
            "hangs",
            "reported",
            "threshold",
            "p50",
            "p99",
            "max",
        ]);
        for (kind, l) in &self.latency {
            let q = |q: f64| {
                l.quantile(q).map_or("-".to_owned(), |d| {
                    format!("{:.0} ms", d.as_secs_f64() * 1e3)
                })
            };
            t.row(vec![
                kind.name().to_owned(),
                l.hangs.to_string(),
                l.reported.to_string(),
                format!("{:?}", l.threshold),
                q(0.5),
                q(0.99),
                q(1.0),
            ]);
        }
        t
    }

    fn never_blind_table(&self) -> Table {
        let mut t = Table::new(&[
            "scenario",
            "its threads reported",
            "unrelated deadlock",
            "daemon CPU",
            "window",
            "cores",
            "SIGTERM exit",
        ]);
        if let Some(m) = &self.mass_hang {
            t.row(vec![
                format!("mass hang: {} threads in D", m.threads),
                format!(
                    "{} of {}{}, last {}",
                    m.reported,
                    m.threads,
                    if m.duplicates > 0 {
                        format!(" (+{} duplicates)", m.duplicates)
                    } else {
                        String::new()
                    },
                    mass_hang::seconds(m.all_reported_after)
                ),
                mass_hang::seconds(m.deadlock_latency),
                format!("{:.2} s", m.daemon_cpu.as_secs_f64()),
                format!("{:.2} s", m.window.as_secs_f64()),
                format!("{:.2}", m.cores()),
                exit_text(m.exit),
            ]);
        }
        if let Some(s) = &self.mm_stall {
            t.row(vec![
                "mm-lock stall".to_owned(),
                format!(
                    "first {}{}",
                    mass_hang::seconds(s.stalled_reported_after),
                    if s.user_stack_error.is_some() {
                        ", why no user stack"
                    } else {
                        ""
                    }
                ),
                mass_hang::seconds(s.deadlock_latency),
                format!("{:.2} s", s.daemon_cpu.as_secs_f64()),
                format!("{:.2} s", s.window.as_secs_f64()),
                format!("{:.2}", s.cores()),
                exit_text(s.exit),
            ]);
        }
        t
    }

    fn targets_table(&self) -> Table {
        let mut t = Table::new(&["target", "wanted", "measured", "result"]);
        for target in &self.targets {
            t.row(vec![
                target.name.clone(),
                target.wanted.clone(),
                target.measured.clone().unwrap_or_else(|| "-".to_owned()),
                pass_text(target.pass),
            ]);
        }
        t
    }

    fn orders_text(&self) -> String {
        self.orders
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let names: Vec<&str> = o.iter().map(|v| v.name()).collect();
                format!("{}: {}", i + 1, names.join(" "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn repeats_text(&self) -> String {
        match self.messaging_repeats {
            1 => String::new(),
            n => format!("; mean of {n} runs per variant and round"),
        }
    }

    /// The terminal version. Sections that did not run (`--only`) are left out.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let mut section = |intro: String, table: Table| {
            if !table.rows.is_empty() {
                out.push_str(&intro);
                out.push_str(&table.text());
            }
        };
        section(
            format!(
                "\nthroughput: {} rounds, variant order rotated each round, \
                 kernel.bpf_stats_enabled=0; median per variant, \"vs bare\" = median of the \
                 per-round ratios\n  pipe:      {} (ops/s)\n  messaging: {} (messages/s{})\n",
                self.rounds,
                self.pipe_command,
                self.messaging_command,
                self.repeats_text()
            ),
            self.throughput_table(),
        );
        section(
            "\nbpf programs: kernel.bpf_stats_enabled=1, one pipe run each (programs that ran)\n"
                .into(),
            self.programs_table(),
        );
        section(
            "\ndaemon's own cost: hangwatch run (defaults), CPU over the window after start-up \
             (from /proc/PID/task/*/schedstat; * = from utime+stime, clock ticks)\n"
                .into(),
            self.daemon_table(),
        );
        section(
            "\nuser stacks: unwind + symbolize one blocked thread's stack (hangwatch bench-stack)\n"
                .into(),
            self.stacks_table(),
        );
        section(
            "\ndetection latency: from a thread crossing its threshold to its hang event on stdout\n"
                .into(),
            self.latency_table(),
        );
        section(
            "\nmass hang and mm-lock stall (frozen ext4; d_state after 1 s, 200 ms tick): \
             threads reported counted from \"go\", the deadlock from forming to its event, \
             daemon CPU (utime+stime) from \"go\" to the end of the scenario\n"
                .into(),
            self.never_blind_table(),
        );
        let _ = writeln!(out, "\ntargets");
        out.push_str(&self.targets_table().text());
        if !self.notes.is_empty() {
            let _ = writeln!(out, "\nnotes");
            for note in &self.notes {
                let _ = writeln!(out, "  - {note}");
            }
        }
        out
    }

    /// report.md. Sections that did not run (`--only`) are left out.
    pub fn markdown(&self) -> String {
        let mut out = String::from("# hangwatch benchmark\n\n");
        for (k, v) in &self.environment {
            let _ = writeln!(out, "- {k}: {v}");
        }
        let mut section = |intro: String, table: Table, after: String| {
            if !table.rows.is_empty() {
                out.push_str(&intro);
                out.push_str(&table.markdown());
                out.push_str(&after);
            }
        };
        section(
            format!(
                "\n## Throughput\n\n{} rounds, variant order rotated each round \
                 ({}), `kernel.bpf_stats_enabled=0`. Median per variant; \"vs bare\" is the \
                 median of the per-round ratios.\n\n- pipe: `{}` (ops/s)\n- messaging: `{}` \
                 (messages/s{})\n\n",
                self.rounds,
                self.orders_text(),
                self.pipe_command,
                self.messaging_command,
                self.repeats_text()
            ),
            self.throughput_table(),
            self.throughput
                .iter()
                .map(|r| format!("\n- {}: `{}`\n", r.variant.name(), r.command))
                .collect(),
        );
        section(
            "\n## BPF programs\n\n`kernel.bpf_stats_enabled=1`, one pipe run each.\n\n".into(),
            self.programs_table(),
            String::new(),
        );
        section(
            "\n## The daemon's own cost\n\n`hangwatch run` (defaults) with N threads blocked in \
             `pthread_cond_wait`; CPU over the window after start-up, from \
             /proc/PID/task/*/schedstat (* = from utime+stime, clock ticks), and utime+stime \
             from /proc/PID/stat beside it.\n\n"
                .into(),
            self.daemon_table(),
            String::new(),
        );
        section(
            "\n## User stacks\n\nUnwinding (DWARF CFI) and symbolizing one blocked thread's user \
             stack with `hangwatch bench-stack`: cold is the first time for its binaries, warm \
             is from the caches.\n\n"
                .into(),
            self.stacks_table(),
            String::new(),
        );
        section(
            "\n## Detection latency\n\nThreads of a test program hang at random moments, on a \
             mutex never released (`off_cpu` of the selected program) or writing to a frozen \
             ext4 filesystem (`d_state`, machine-wide); the time from each crossing its \
             threshold to its `hang` event on hangwatch's stdout, both on CLOCK_MONOTONIC.\n\n"
                .into(),
            self.latency_table(),
            String::new(),
        );
        section(
            format!(
                "\n## Mass hang and mm-lock stall\n\nThe scenarios of `kernel_never_blind.rs` on \
                 a frozen ext4 loop mount, `--d-state-threshold 1s --scan-interval 200ms`. Mass \
                 hang: N threads of `mass_d.c` write to it at once (reported: from \"go\" to the \
                 last one's `d_state` event); 0.8 s after they started, an unrelated ABBA \
                 deadlock forms (`abba.c`, confirmed after {} s: from forming to its event). \
                 mm-lock stall (`mm_stall.c`): once the stalled process's D threads are \
                 reported, the deadlock forms. The daemon's CPU is utime+stime over the window \
                 from \"go\" to all reported (mass hang) or to the deadlock's event (stall); \
                 then SIGTERM, still frozen.\n\n",
                mass_hang::DEADLOCK_THRESHOLD.as_secs()
            ),
            self.never_blind_table(),
            self.mm_stall
                .as_ref()
                .and_then(|s| s.user_stack_error.as_ref())
                .map(|why| format!("\nThe stalled process's event on its user stack: \"{why}\"\n"))
                .unwrap_or_default(),
        );
        let _ = writeln!(out, "\n## Targets\n");
        out.push_str(&self.targets_table().markdown());
        if !self.notes.is_empty() {
            let _ = writeln!(out, "\n## Notes\n");
            for note in &self.notes {
                let _ = writeln!(out, "- {note}");
            }
        }
        out
    }

    pub fn json(&self) -> Value {
        let bare = self.bare();
        let series = |s: &Series, b: Option<&Series>| {
            json!({
                "per_round": s.0,
                "median": s.median(),
                "min": s.min(),
                "max": s.max(),
                "ratio_to_bare": b.map(|b| s.ratio_to(b)),
            })
        };
        json!({
            "environment": self.environment.iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect::<serde_json::Map<_, _>>(),
            "rounds": self.rounds,
            "pipe_command": self.pipe_command,
            "messaging_command": self.messaging_command,
            "messaging_repeats": self.messaging_repeats,
            "orders": self.orders.iter()
                .map(|o| o.iter().map(|v| v.name()).collect::<Vec<_>>())
                .collect::<Vec<_>>(),
            "throughput": self.throughput.iter().map(|r| json!({
                "variant": r.variant.name(),
                "command": r.command,
                "pipe_ops_per_sec": series(&r.pipe, bare.map(|b| &b.pipe)),
                "messaging_msgs_per_sec": series(&r.messaging, bare.map(|b| &b.messaging)),
            })).collect::<Vec<_>>(),
            "programs": self.programs.iter().map(|(v, c)| json!({
                "variant": v.name(),
                "program": c.name,
                "runs": c.runs,
                "ns_per_run": c.ns_per_run,
            })).collect::<Vec<_>>(),
            "latency": self.latency.iter().map(|(kind, l)| json!({
                "hang": kind.name(),
                "hangs": l.hangs,
                "reported": l.reported,
                "threshold_seconds": l.threshold.as_secs_f64(),
                "p50_seconds": l.quantile(0.5).map(|d| d.as_secs_f64()),
                "p99_seconds": l.quantile(0.99).map(|d| d.as_secs_f64()),
                "max_seconds": l.quantile(1.0).map(|d| d.as_secs_f64()),
            })).collect::<Vec<_>>(),
            "mass_hang": self.mass_hang.as_ref().map(|m| json!({
                "threads": m.threads,
                "reported": m.reported,
                "duplicate_reports": m.duplicates,
                "all_reported_after_seconds": m.all_reported_after.map(|d| d.as_secs_f64()),
                "deadlock_latency_seconds": m.deadlock_latency.map(|d| d.as_secs_f64()),
                "deadlock_threshold_seconds": mass_hang::DEADLOCK_THRESHOLD.as_secs_f64(),
                "window_seconds": m.window.as_secs_f64(),
                "daemon_cpu_seconds": m.daemon_cpu.as_secs_f64(),
                "daemon_cores": m.cores(),
                "sigterm_exit_seconds": m.exit.took.as_secs_f64(),
                "sigterm_killed": m.exit.killed,
            })),
            "mm_stall": self.mm_stall.as_ref().map(|s| json!({
                "stalled_reported_after_seconds": s.stalled_reported_after.map(|d| d.as_secs_f64()),
                "user_stack_error": s.user_stack_error,
                "deadlock_latency_seconds": s.deadlock_latency.map(|d| d.as_secs_f64()),
                "deadlock_threshold_seconds": mass_hang::DEADLOCK_THRESHOLD.as_secs_f64(),
                "window_seconds": s.window.as_secs_f64(),
                "daemon_cpu_seconds": s.daemon_cpu.as_secs_f64(),
                "daemon_cores": s.cores(),
                "sigterm_exit_seconds": s.exit.took.as_secs_f64(),
                "sigterm_killed": s.exit.killed,
            })),
            "stacks": self.stacks.iter().map(|c| json!({
                "target": c.target,
                "frames": c.frames,
                "cold_us": c.cold_us,
                "warm_median_us": c.warm_median_us,
                "warm_p99_us": c.warm_p99_us,
                "python_frames": c.python_frames,
                "python_cold_us": c.python_cold_us,
                "python_warm_median_us": c.python_warm_median_us,
            })).collect::<Vec<_>>(),
            "daemon": self.daemon.iter().map(|d| json!({
                "idle_threads": d.threads,
                "load": d.load,
                "window_seconds": d.window.as_secs_f64(),
                "cpu_percent_of_a_core": d.cpu_percent,
                "cpu_percent_source": if d.precise { "schedstat" } else { "utime+stime" },
                "utime_stime_cpu_percent_of_a_core": d.stat_cpu_percent,
                "startup_cpu_seconds": d.startup_cpu.as_secs_f64(),
                "vm_hwm_kib": d.vm_hwm_kib,
                "helpers_hwm_kib": d.helpers_hwm_kib,
                "vm_rss_kib": d.vm_rss_kib,
                "scans": d.scans.map(|(n, _)| n),
                "mean_scan_seconds": d.scans.map(|(_, m)| m.as_secs_f64()),
                "full_walks": d.full_walks.map(|(n, _)| n),
                "mean_full_walk_seconds": d.full_walks.map(|(_, m)| m.as_secs_f64()),
                "summary": d.summary,
            })).collect::<Vec<_>>(),
            "targets": self.targets.iter().map(|t| json!({
                "target": t.name,
                "wanted": t.wanted,
                "measured": t.measured,
                "pass": t.pass,
            })).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let bare = Series(vec![100.0, 50.0, 200.0]);
        let other = Series(vec![90.0, 50.0, 160.0]);
        // Ratios 0.9, 1.0, 0.8: the median is 0.9, whatever the medians of the values.
        assert!((other.ratio_to(&bare) - 0.9).abs() < 1e-12);
    }
}
