//! Every metric hangwatch exports, declared in this one module on a private registry
//! (`hangwatch_` prefix, base units, `_total` counters; sizes are gauges). The scan thread
//! and the sinks update them; the HTTP server renders them on `/metrics`.
//!
//! docs/metrics.md documents each one; a unit test below checks that every metric
//! registered here is named there.
use std::{collections::HashMap, sync::Mutex, time::Duration};

use hangwatch_ebpf::Counter;
use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::{episode::EventType, kind::HangKind};

/// Episode lengths, from a short `loop_stall` to a thread stuck for hours.
const HANG_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0,
];
/// The daemon's own work: a tick is tens of microseconds, a full walk of a busy machine a
/// few milliseconds, a report with stacks up to tens of milliseconds.
const WORK_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// Every way an event can fail to reach a sink: full queues (stdout, webhook, a `watch`
/// client that fell behind, the daemon's own log on stderr), a closed stdout, and webhook
/// deliveries given up after their retries.
const DROP_REASONS: [(&str, &str); 8] = [
    ("log", "queue_full"),
    ("log", "closed"),
    ("stdout", "queue_full"),
    ("stdout", "closed"),
    ("stack_requests", "caller_gone"),
    ("watch", "queue_full"),
    ("webhook", "queue_full"),
    ("webhook", "failed"),
];

/// Labels of `hangwatch_hung_threads`, in order.
const HUNG_LABELS: [&str; 5] = ["kind", "namespace", "pod", "container", "comm"];

/// The label values of one hung thread (empty when not known, e.g. outside Kubernetes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HungLabels {
    pub kind: &'static str,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub comm: String,
}

impl HungLabels {
    fn values(&self) -> [&str; 5] {
        [
            self.kind,
            &self.namespace,
            &self.pod,
            &self.container,
            &self.comm,
        ]
    }
}

pub struct Metrics {
    registry: Registry,
    hangs: IntCounterVec,
    events: IntCounterVec,
    hung_threads: IntGaugeVec,
    hang_duration: HistogramVec,
    bpf_events: IntCounterVec,
    bpf_state_unavailable: IntCounter,
    bpf_switch_outs_in_storage: IntCounter,
    exit_signals_lost: IntCounter,
    bpf_records_deferred: IntCounter,
    kernel_stack_failures: IntCounter,
    blocked_before_start: IntCounter,
    probe_attached: IntGaugeVec,
    scan_duration: Histogram,
    walk_duration: Histogram,
    report_duration: Histogram,
    symbolize_seconds: prometheus::CounterVec,
    symbolize_failures: IntCounterVec,
    user_stacks: IntCounter,
    unwind_cache: IntCounterVec,
    candidate_threads: IntGauge,
    watched_processes: IntGauge,
    last_scan: prometheus::Gauge,
    limits: IntCounterVec,
    reads_abandoned: IntCounter,
    readers_stuck: IntGauge,
    processes_resisting: IntCounter,
    report_panics: IntCounter,
    sink_dropped: IntCounterVec,
    webhook_requests: IntCounterVec,
    http_requests: IntCounterVec,
    config_reloads: IntCounterVec,
    /// The last BPF counter values seen, to turn totals into increments.
    last_bpf: Mutex<HashMap<u32, u64>>,
    /// The open episodes' labels in `hung_threads`, by episode id, and how many episodes
    /// each label set has: kept per event (O(1)), never rebuilt from every open episode.
    hung: Mutex<HungCounts>,
    /// The reader figures last published, to turn totals into increments.
    last_readers: Mutex<(u64, u64)>,
}

#[derive(Debug, Default)]
struct HungCounts {
    by_episode: HashMap<String, HungLabels>,
    by_labels: HashMap<HungLabels, i64>,
}

/// Every limit the daemon enforces and counts in `hangwatch_limits_total` when it bites
/// (docs/design.md, "Never blind": why each exists).
pub const LIMITS: [&str; 14] = [
    // A tick's transitions found the enrich queue full: reported without stacks.
    "enrich_queue_full",
    // A report was past due: its user stacks were not read.
    "report_due",
    // The rest of a tick's reports was set aside for a newer hang (reported after it).
    "report_deferred",
    // A read a report can do without gave way to a newer tick waiting for the stage.
    "report_yielded",
    // A report of a tick's tail (a mass hang) went without user stacks: the stage had
    // spent its share of a CPU on them (enrich::TAIL_SHARE).
    "tail_share",
    // A stuck_exit report listed threads beyond MAX_EXIT_STACKS without stacks.
    "exit_stacks",
    // Threads blocking a handled exit signal at the start whose stacks were not read for
    // a signal frame (meta::early_exits' bounds).
    "early_exit_checks",
    // A `threads` request beyond THREAD_DUMPS being read at once (503).
    "thread_dumps",
    // A listener refused a connection beyond its limit (api::listeners::MAX_CONNECTIONS).
    "http_connections",
    // A `watch` stream was refused beyond the limit of concurrent streams.
    "watch_streams",
    // A module's section was larger than the unwinder reads.
    "section_too_large",
    // Paths evicted from blazesym's cache beyond stack::user::symbolizer::MAX_PATHS.
    "symbolizer_paths",
    // The symbolizer rebuilt empty after MAX_FILES distinct module files.
    "symbolizer_files",
    // A process with an epoll or io_uring fd not marked: LOOP_FD_TGIDS is full.
    "loop_fd_processes",
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("hangwatch")
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> HistogramOpts {
    HistogramOpts::new(name, help)
        .namespace("hangwatch")
        .buckets(buckets.to_vec())
}

impl Metrics {
    /// Declares and registers every metric. Panics only on a programming error (a
    /// duplicate or malformed name), which the unit tests catch.
    pub fn new() -> Self {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            registry
                .register(c)
                .expect("metric names are unique and valid");
        };
        let build_info = IntGaugeVec::new(
            opts(
                "build_info",
                "Always 1; the labels say which hangwatch runs on which kernel.",
            ),
            &["version", "kernel"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), &kernel_release()])
            .set(1);
        reg(Box::new(build_info));

        let m = Self {
            hangs: IntCounterVec::new(
                opts("hangs_total", "Hang episodes started, by kind."),
                &["kind"],
            )
            .expect("valid metric"),
            events: IntCounterVec::new(
                opts(
                    "events_total",
                    "Events emitted (hang, update, resolved), by event and kind.",
                ),
                &["event", "kind"],
            )
            .expect("valid metric"),
            hung_threads: IntGaugeVec::new(
                opts(
                    "hung_threads",
                    "Threads hung now, by kind and where they run; a label set disappears when its last episode ends.",
                ),
                &HUNG_LABELS,
            )
            .expect("valid metric"),
            hang_duration: HistogramVec::new(
                histogram(
                    "hang_duration_seconds",
                    "Length of ended hang episodes, from the start of the wait to its end.",
                    HANG_BUCKETS,
                ),
                &["kind"],
            )
            .expect("valid metric"),
            bpf_events: IntCounterVec::new(
                opts(
                    "bpf_events_total",
                    "Events handled by the BPF probes, by probe (sched_switch, sched_wakeup, futex).",
                ),
                &["probe"],
            )
            .expect("valid metric"),
            exit_signals_lost: IntCounter::with_opts(opts(
                "exit_signals_lost_total",
                "SIGTERM/SIGINT/SIGQUIT the probe saw but could not record: stuck_exit may miss those processes.",
            ))
            .expect("valid metric"),
            bpf_state_unavailable: IntCounter::with_opts(opts(
                "bpf_state_unavailable_total",
                "Probe events whose per-thread state could not be had (task storage allocation failed or busy): waits that may go unseen.",
            ))
            .expect("valid metric"),
            bpf_switch_outs_in_storage: IntCounter::with_opts(opts(
                "bpf_switch_outs_in_storage_total",
                "Context switches whose switch-out sched_switch recorded in task storage (a helper call) rather than the thread's switch slot: threads without a slot of their own (new, or sharing one), and followed ones.",
            ))
            .expect("valid metric"),
            bpf_records_deferred: IntCounter::with_opts(opts(
                "bpf_records_deferred_total",
                "Records that did not fit a task iterator's output buffer; the kernel shows that thread again at the next read, so none is lost.",
            ))
            .expect("valid metric"),
            kernel_stack_failures: IntCounter::with_opts(opts(
                "kernel_stack_failures_total",
                "Kernel stacks of hung threads the kernel could not walk.",
            ))
            .expect("valid metric"),
            blocked_before_start: IntCounter::with_opts(opts(
                "threads_blocked_before_start_total",
                "Threads first seen already blocked (their wait began before hangwatch attached).",
            ))
            .expect("valid metric"),
            probe_attached: IntGaugeVec::new(
                opts(
                    "probe_attached",
                    "1 when the BPF program is attached, 0 when it could not be (optional probes only).",
                ),
                &["probe"],
            )
            .expect("valid metric"),
            scan_duration: Histogram::with_opts(histogram(
                "scan_duration_seconds",
                "Time of one scan tick: reading thread state, detecting, reporting.",
                WORK_BUCKETS,
            ))
            .expect("valid metric"),
            walk_duration: Histogram::with_opts(histogram(
                "walk_duration_seconds",
                "Time of one full walk of every thread (the scan_threads task iterator).",
                WORK_BUCKETS,
            ))
            .expect("valid metric"),
            report_duration: Histogram::with_opts(histogram(
                "report_duration_seconds",
                "Time to build one event: process facts, stack capture and symbolization.",
                WORK_BUCKETS,
            ))
            .expect("valid metric"),
            symbolize_seconds: prometheus::CounterVec::new(
                opts(
                    "symbolize_seconds_total",
                    "Time spent symbolizing stacks, by stack (kernel, user).",
                ),
                &["stack"],
            )
            .expect("valid metric"),
            symbolize_failures: IntCounterVec::new(
                opts(
                    "symbolize_failures_total",
                    "Stacks whose symbolization failed, by stack (kernel, user).",
                ),
                &["stack"],
            )
            .expect("valid metric"),
            user_stacks: IntCounter::with_opts(opts(
                "user_stacks_total",
                "User stacks captured (unwound with DWARF CFI and symbolized).",
            ))
            .expect("valid metric"),
            unwind_cache: IntCounterVec::new(
                opts(
                    "unwind_cache_lookups_total",
                    "Lookups of the user unwinder's per-file cache of unwind tables and symbols, by result (hit, miss).",
                ),
                &["result"],
            )
            .expect("valid metric"),
            candidate_threads: IntGauge::with_opts(opts(
                "tracked_threads",
                "Threads followed between full walks: off-CPU long enough that they may cross a threshold soon.",
            ))
            .expect("valid metric"),
            watched_processes: IntGauge::with_opts(opts(
                "watched_processes",
                "Processes selected for off_cpu (--pid, --comm) right now.",
            ))
            .expect("valid metric"),
            sink_dropped: IntCounterVec::new(
                opts(
                    "sink_dropped_events_total",
                    "Events a sink did not deliver, by sink (stdout, webhook, watch, log, stack_requests) and reason (queue_full, closed, failed, caller_gone).",
                ),
                &["sink", "reason"],
            )
            .expect("valid metric"),
            webhook_requests: IntCounterVec::new(
                opts(
                    "webhook_requests_total",
                    "POSTs to the webhook, retries included, by result (success, error).",
                ),
                &["result"],
            )
            .expect("valid metric"),
            http_requests: IntCounterVec::new(
                opts(
                    "http_requests_total",
                    "Requests to the HTTP API, by route and status code.",
                ),
                &["route", "code"],
            )
            .expect("valid metric"),
            config_reloads: IntCounterVec::new(
                opts(
                    "config_reloads_total",
                    "Reloads of the --config file on SIGHUP, by result (ok: its rules are in force; error: refused, the previous rules kept).",
                ),
                &["result"],
            )
            .expect("valid metric"),
            last_scan: prometheus::Gauge::with_opts(opts(
                "last_scan_timestamp_seconds",
                "When the detection loop last completed a scan (Unix time): /healthz fails when it is older than a few scan intervals.",
            ))
            .expect("valid metric"),
            limits: IntCounterVec::new(
                opts(
                    "limits_total",
                    "Times a limit of the daemon bit (queue full, report past due, caps per report, HTTP connections...), by limit.",
                ),
                &["limit"],
            )
            .expect("valid metric"),
            reads_abandoned: IntCounter::with_opts(opts(
                "reads_abandoned_total",
                "Reads of a watched process (memory, command line, binaries) that missed their deadline; their reader thread was replaced.",
            ))
            .expect("valid metric"),
            readers_stuck: IntGauge::with_opts(opts(
                "readers_stuck",
                "Abandoned reader threads still blocked in the kernel on a watched process.",
            ))
            .expect("valid metric"),
            processes_resisting: IntCounter::with_opts(opts(
                "processes_resisting_total",
                "Times a process was marked as resisting reads (not read again for a while).",
            ))
            .expect("valid metric"),
            report_panics: IntCounter::with_opts(opts(
                "report_panics_total",
                "Reports whose building panicked (a bug): each cost that report only.",
            ))
            .expect("valid metric"),
            last_bpf: Mutex::default(),
            hung: Mutex::default(),
            last_readers: Mutex::default(),
            registry: registry.clone(),
        };
        for c in m.collectors() {
            reg(c);
        }
        #[cfg(target_os = "linux")]
        reg(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        // Counters that exist before their first increment, so that rate() and alerts see
        // a 0 rather than no series.
        // Every kind, so that `hangwatch_hangs_total` has a 0 series for each from the start.
        for kind in HangKind::ALL {
            m.hangs.with_label_values(&[kind.as_str()]);
        }
        for (sink, reason) in DROP_REASONS {
            m.sink_dropped.with_label_values(&[sink, reason]);
        }
        for result in ["ok", "error"] {
            m.config_reloads.with_label_values(&[result]);
        }
        for limit in LIMITS {
            m.limits.with_label_values(&[limit]);
        }
        m
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        let Self {
            registry: _,
            hangs,
            events,
            hung_threads,
            hang_duration,
            bpf_events,
            bpf_state_unavailable,
            bpf_switch_outs_in_storage,
            exit_signals_lost,
            bpf_records_deferred,
            kernel_stack_failures,
            blocked_before_start,
            probe_attached,
            scan_duration,
            walk_duration,
            report_duration,
            symbolize_seconds,
            symbolize_failures,
            user_stacks,
            unwind_cache,
            candidate_threads,
            watched_processes,
            last_scan,
            limits,
            reads_abandoned,
            readers_stuck,
            processes_resisting,
            report_panics,
            sink_dropped,
            webhook_requests,
            http_requests,
            config_reloads,
            last_bpf: _,
            hung: _,
            last_readers: _,
        } = self;
        vec![
            Box::new(hangs.clone()),
            Box::new(events.clone()),
            Box::new(hung_threads.clone()),
            Box::new(hang_duration.clone()),
            Box::new(bpf_events.clone()),
            Box::new(bpf_state_unavailable.clone()),
            Box::new(bpf_switch_outs_in_storage.clone()),
            Box::new(exit_signals_lost.clone()),
            Box::new(bpf_records_deferred.clone()),
            Box::new(kernel_stack_failures.clone()),
            Box::new(blocked_before_start.clone()),
            Box::new(probe_attached.clone()),
            Box::new(scan_duration.clone()),
            Box::new(walk_duration.clone()),
            Box::new(report_duration.clone()),
            Box::new(symbolize_seconds.clone()),
            Box::new(symbolize_failures.clone()),
            Box::new(user_stacks.clone()),
            Box::new(unwind_cache.clone()),
            Box::new(candidate_threads.clone()),
            Box::new(last_scan.clone()),
            Box::new(limits.clone()),
            Box::new(reads_abandoned.clone()),
            Box::new(readers_stuck.clone()),
            Box::new(processes_resisting.clone()),
            Box::new(report_panics.clone()),
            Box::new(watched_processes.clone()),
            Box::new(sink_dropped.clone()),
            Box::new(webhook_requests.clone()),
            Box::new(http_requests.clone()),
            Box::new(config_reloads.clone()),
        ]
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!("cannot encode metrics: {err}");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// One event was emitted.
    pub fn event(&self, event: EventType, kind: HangKind, duration: Duration) {
        let name = match event {
            EventType::Hang => "hang",
            EventType::Update => "update",
            EventType::Resolved => "resolved",
        };
        self.events.with_label_values(&[name, kind.as_str()]).inc();
        match event {
            EventType::Hang => self.hangs.with_label_values(&[kind.as_str()]).inc(),
            EventType::Resolved => self
                .hang_duration
                .with_label_values(&[kind.as_str()])
                .observe(duration.as_secs_f64()),
            EventType::Update => {}
        }
    }

    /// An episode opened (or was reported again): its thread counts in
    /// `hangwatch_hung_threads` under `labels` until `hung_ended`.
    pub fn hung_open(&self, id: &str, labels: HungLabels) {
        let mut hung = self.hung.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(before) = hung.by_episode.insert(id.to_owned(), labels.clone()) {
            if before == labels {
                return;
            }
            self.hung_less(&mut hung, &before);
        }
        let n = hung.by_labels.entry(labels.clone()).or_default();
        *n += 1;
        self.hung_threads
            .with_label_values(&labels.values())
            .set(*n);
    }

    /// An episode ended: one thread fewer under its labels (the label set goes when its
    /// last episode does, so the series stay bounded by the live episodes).
    pub fn hung_ended(&self, id: &str) {
        let mut hung = self.hung.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(labels) = hung.by_episode.remove(id) {
            self.hung_less(&mut hung, &labels);
        }
    }

    fn hung_less(&self, hung: &mut HungCounts, labels: &HungLabels) {
        let Some(n) = hung.by_labels.get_mut(labels) else {
            return;
        };
        *n -= 1;
        if *n <= 0 {
            hung.by_labels.remove(labels);
            let _ = self.hung_threads.remove_label_values(&labels.values());
        } else {
            self.hung_threads
                .with_label_values(&labels.values())
                .set(*n);
        }
    }

    /// A scan completed now.
    pub fn scan_completed(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.last_scan.set(now.as_secs_f64());
    }

    /// A limit bit (one of `LIMITS`) `n` times.
    pub fn limit(&self, limit: &'static str, n: u64) {
        debug_assert!(LIMITS.contains(&limit), "{limit} is declared in LIMITS");
        if n > 0 {
            self.limits.with_label_values(&[limit]).inc_by(n);
        }
    }

    /// The reader workers' totals: reads abandoned, readers still stuck, processes marked
    /// as resisting.
    pub fn readers(&self, abandoned: u64, stuck: usize, resisting: u64) {
        let mut last = self.last_readers.lock().unwrap_or_else(|e| e.into_inner());
        self.reads_abandoned
            .inc_by(abandoned.saturating_sub(last.0));
        self.processes_resisting
            .inc_by(resisting.saturating_sub(last.1));
        *last = (abandoned.max(last.0), resisting.max(last.1));
        self.readers_stuck
            .set(i64::try_from(stuck).unwrap_or(i64::MAX));
    }

    pub fn report_panicked(&self) {
        self.report_panics.inc();
    }

    /// Folds the probes' counter totals in (they only grow while the probes are loaded).
    pub fn bpf_counters(&self, totals: &[(Counter, u64)]) {
        let mut last = self.last_bpf.lock().unwrap_or_else(|e| e.into_inner());
        for &(counter, total) in totals {
            let before = last.insert(counter as u32, total).unwrap_or(0);
            let delta = total.saturating_sub(before);
            if delta == 0 && before != 0 {
                continue;
            }
            match counter {
                Counter::SchedSwitchEvents => self
                    .bpf_events
                    .with_label_values(&["sched_switch"])
                    .inc_by(delta),
                Counter::SchedWakeupEvents => self
                    .bpf_events
                    .with_label_values(&["sched_wakeup"])
                    .inc_by(delta),
                Counter::FutexSyscallEvents => {
                    self.bpf_events.with_label_values(&["futex"]).inc_by(delta)
                }
                Counter::SysEnterEvents => self
                    .bpf_events
                    .with_label_values(&["sys_enter_loop"])
                    .inc_by(delta),
                Counter::ExitSignals => self
                    .bpf_events
                    .with_label_values(&["signal_generate"])
                    .inc_by(delta),
                Counter::ExitSignalsLost => self.exit_signals_lost.inc_by(delta),
                Counter::StateUnavailable => self.bpf_state_unavailable.inc_by(delta),
                Counter::SwitchOutsInStorage => self.bpf_switch_outs_in_storage.inc_by(delta),
                Counter::RecordsDeferred => self.bpf_records_deferred.inc_by(delta),
                Counter::KernelStackFailed => self.kernel_stack_failures.inc_by(delta),
                Counter::BlockedBeforeAttach => self.blocked_before_start.inc_by(delta),
            }
        }
    }

    pub fn probe(&self, program: &str, attached: bool) {
        self.probe_attached
            .with_label_values(&[program])
            .set(i64::from(attached));
    }

    pub fn scan(&self, took: Duration) {
        self.scan_duration.observe(took.as_secs_f64());
    }

    pub fn walk(&self, took: Duration) {
        self.walk_duration.observe(took.as_secs_f64());
    }

    pub fn report(&self, took: Duration) {
        self.report_duration.observe(took.as_secs_f64());
    }

    /// Symbolization time and failures since the last call, for `stack` (kernel, user).
    pub fn symbolized(&self, stack: &str, spent: Duration, failures: u64) {
        if !spent.is_zero() {
            self.symbolize_seconds
                .with_label_values(&[stack])
                .inc_by(spent.as_secs_f64());
        }
        if failures > 0 {
            self.symbolize_failures
                .with_label_values(&[stack])
                .inc_by(failures);
        }
    }

    /// User stacks captured and unwinder cache lookups since the last call.
    pub fn user_stacks(&self, captured: u64, hits: u64, misses: u64) {
        self.user_stacks.inc_by(captured);
        self.unwind_cache.with_label_values(&["hit"]).inc_by(hits);
        self.unwind_cache
            .with_label_values(&["miss"])
            .inc_by(misses);
    }

    /// Events not delivered so far, by sink (all reasons together).
    pub fn dropped_totals(&self) -> std::collections::BTreeMap<&'static str, u64> {
        let mut totals = std::collections::BTreeMap::new();
        for (sink, reason) in DROP_REASONS {
            *totals.entry(sink).or_default() +=
                self.sink_dropped.with_label_values(&[sink, reason]).get();
        }
        totals
    }

    pub fn threads(&self, candidates: usize, watched: usize) {
        self.candidate_threads
            .set(i64::try_from(candidates).unwrap_or(i64::MAX));
        self.watched_processes
            .set(i64::try_from(watched).unwrap_or(i64::MAX));
    }

    /// `n` events a sink did not deliver.
    pub fn dropped(&self, sink: &str, reason: &str, n: u64) {
        if n > 0 {
            self.sink_dropped
                .with_label_values(&[sink, reason])
                .inc_by(n);
        }
    }

    pub fn webhook_request(&self, success: bool) {
        let result = if success { "success" } else { "error" };
        self.webhook_requests.with_label_values(&[result]).inc();
    }

    /// A SIGHUP reload of the config file: `ok` once its rules are in force, else refused.
    pub fn config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.config_reloads.with_label_values(&[result]).inc();
    }

    pub fn http_request(&self, route: &str, code: u16) {
        self.http_requests
            .with_label_values(&[route, &code.to_string()])
            .inc();
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> prometheus_parse::Scrape {
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("valid exposition")
    }

    fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no {name}{labels:?} in the scrape"));
        match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name} is {other:?}"),
        }
    }

    fn labels(kind: &'static str, comm: &str) -> HungLabels {
        HungLabels {
            kind,
            namespace: String::new(),
            pod: String::new(),
            container: String::new(),
            comm: comm.into(),
        }
    }

    #[test]
    fn hung_threads_follow_the_open_episodes() {
        let m = Metrics::new();
        m.hung_open("a", labels("off_cpu", "abba"));
        m.hung_open("b", labels("off_cpu", "abba"));
        m.hung_open("b", labels("off_cpu", "abba")); // an update: counted once
        let s = parse(&m.render());
        assert_eq!(
            value(&s, "hangwatch_hung_threads", &[("comm", "abba")]),
            2.0
        );
        m.hung_open("c", labels("d_state", "dd"));
        m.hung_ended("a");
        m.hung_ended("a"); // ended twice: no effect
        m.hung_ended("b");
        let text = m.render();
        assert!(
            !text.contains("comm=\"abba\""),
            "stale series kept:\n{text}"
        );
        let s = parse(&text);
        assert_eq!(
            value(&s, "hangwatch_hung_threads", &[("kind", "d_state")]),
            1.0
        );
    }

    #[test]
    fn bpf_totals_become_increments() {
        let m = Metrics::new();
        m.bpf_counters(&[
            (Counter::SchedSwitchEvents, 10),
            (Counter::RecordsDeferred, 0),
        ]);
        m.bpf_counters(&[
            (Counter::SchedSwitchEvents, 25),
            (Counter::RecordsDeferred, 2),
        ]);
        let s = parse(&m.render());
        assert_eq!(
            value(
                &s,
                "hangwatch_bpf_events_total",
                &[("probe", "sched_switch")]
            ),
            25.0
        );
        assert_eq!(value(&s, "hangwatch_bpf_records_deferred_total", &[]), 2.0);
    }

    #[test]
    fn events_count_and_durations_are_observed() {
        let m = Metrics::new();
        m.event(EventType::Hang, HangKind::OffCpu, Duration::from_secs(1));
        m.event(
            EventType::Resolved,
            HangKind::OffCpu,
            Duration::from_secs(3),
        );
        let s = parse(&m.render());
        assert_eq!(
            value(&s, "hangwatch_hangs_total", &[("kind", "off_cpu")]),
            1.0
        );
        assert_eq!(
            value(&s, "hangwatch_hangs_total", &[("kind", "d_state")]),
            0.0
        );
        assert_eq!(
            value(
                &s,
                "hangwatch_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))]
            ),
            1.0
        );
        let text = m.render();
        assert!(
            text.contains("hangwatch_hang_duration_seconds_sum{kind=\"off_cpu\"} 3"),
            "{text}"
        );
    }

    #[test]
    fn every_metric_is_documented_in_docs_metrics() {
        let readme = include_str!("../../../docs/metrics.md");
        let m = Metrics::new();
        // Touch the vectors so that every family appears in the exposition.
        m.hung_open("x", labels("off_cpu", "x"));
        m.probe("sched_switch", true);
        m.bpf_counters(&[(Counter::SchedSwitchEvents, 1)]);
        m.event(
            EventType::Resolved,
            HangKind::OffCpu,
            Duration::from_secs(1),
        );
        m.symbolized("kernel", Duration::from_millis(1), 1);
        m.webhook_request(true);
        m.http_request("metrics", 200);
        for family in m.registry.gather() {
            let name = family.name();
            if name.starts_with("process_") {
                continue;
            }
            assert!(
                readme.contains(&format!("`{name}`")),
                "{name} is not documented in docs/metrics.md"
            );
        }
    }
}
