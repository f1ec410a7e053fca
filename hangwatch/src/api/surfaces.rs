//! The daemon's outputs besides stdout, wired in one place: the HTTP server with its store
//! and metrics, and the webhook. `daemon.rs` starts them before the probes load, tells
//! them when the probes are attached, hands each event to `hub.publish`, and the figures
//! of each scan to `after_scan`.
use std::{
    collections::BTreeMap,
    sync::{Arc, mpsc},
    time::Duration,
};

use hangwatch_ebpf::Counter;
use serde_json::json;

use super::{Api, ServeError, StackRequest, serve, threads};
use crate::{
    config::Rules,
    daemon::Config,
    metrics::Metrics,
    probe::{PROBES, Probes},
    sink::{Hub, ProbeStatus, Store, WebhookError, WebhookSink, ms},
    stack::StackTaker,
};

#[derive(Debug, thiserror::Error)]
pub enum SurfacesError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Webhook(#[from] WebhookError),
}

/// What one scan did, for the status and the metrics. Totals since start; `Surfaces`
/// turns them into increments.
#[derive(Debug, Clone, Default)]
pub struct ScanFigures {
    pub took: Duration,
    pub scans: u64,
    pub walks: u64,
    pub scan_time: Duration,
    pub walk_time: Duration,
    pub tracked_threads: usize,
    pub watched_processes: usize,
    pub bpf_counters: Vec<(Counter, u64)>,
    /// Kernel symbolization: time spent, failures.
    pub kernel_symbolize: (Duration, u64),
    /// User stacks: time spent capturing and symbolizing, stacks captured.
    pub user_stacks: (Duration, u64),
    /// The user unwinder's per-file cache: hits, misses.
    pub module_cache: (u64, u64),
    pub stdout_dropped: u64,
}

pub struct Surfaces {
    pub hub: Hub,
    api: Arc<Api>,
    stack_requests: mpsc::Receiver<StackRequest>,
    stack_sender: Option<mpsc::Sender<StackRequest>>,
    /// The figures of the previous scan, to compute increments.
    last: ScanFigures,
}

impl Surfaces {
    /// Starts the HTTP server (unless `--listen off`) and the webhook (if any).
    pub fn start(config: &Config) -> Result<Self, SurfacesError> {
        let metrics = Arc::new(Metrics::new());
        let webhook = config
            .webhook
            .clone()
            .map(|webhook| WebhookSink::spawn(webhook, Arc::clone(&metrics)))
            .transpose()?;
        let store = Arc::new(Store::new(serde_json::Value::Null));
        let api = Api::new(Arc::clone(&store), Arc::clone(&metrics));
        let listening = match config.listen {
            Some(addr) => {
                let bound = serve(addr, Arc::clone(&api))?;
                // The tests parse this line for the port of `--listen 127.0.0.1:0`.
                tracing::info!("HTTP API listening on http://{bound}");
                Some(bound)
            }
            None => None,
        };
        store.update_status(|s| s.config = effective_config(config, listening));
        let (stack_sender, stack_requests) = mpsc::channel();
        started_now();
        Ok(Self {
            hub: Hub {
                store,
                metrics,
                webhook,
            },
            api,
            stack_requests,
            stack_sender: Some(stack_sender),
            last: ScanFigures::default(),
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.hub.metrics
    }

    /// The probes are attached: `/healthz` turns ready, the status lists them.
    pub fn probes_attached(&mut self, probes: &Probes) {
        let mut statuses = Vec::with_capacity(PROBES.len());
        for spec in PROBES {
            let degraded = probes
                .degraded
                .iter()
                .find(|d| d.spec.program == spec.program);
            let enabled = probes.selection.enabled(spec.group);
            let attached = enabled && degraded.is_none();
            self.hub.metrics.probe(spec.program, attached);
            statuses.push(ProbeStatus {
                program: spec.program,
                enabled,
                required: enabled && spec.without.is_none(),
                attached,
                reason: match degraded {
                    Some(d) => Some(format!("{}: {}", d.reason, spec.without.unwrap_or(""))),
                    None if !enabled => {
                        Some("optional, not asked for (hangwatch run --help)".to_owned())
                    }
                    None => None,
                },
            });
        }
        self.hub.store.update_status(|s| {
            s.ready = true;
            s.probes = statuses;
        });
        let reader = probes
            .state_reader()
            .inspect_err(|err| tracing::warn!("threads PID will not show probe state: {err}"))
            .ok();
        if let Some(sender) = self.stack_sender.take() {
            self.api.probes_attached(reader, sender);
        }
    }

    /// Captures the stacks the API asked for since the last scan.
    pub fn answer_stack_requests(&mut self, probes: &mut Probes, stacks: &mut StackTaker) {
        while let Ok(request) = self.stack_requests.try_recv() {
            threads::answer(request, probes, stacks);
        }
    }

    pub fn after_scan(&mut self, now: &ScanFigures) {
        let metrics = &self.hub.metrics;
        let last = &self.last;
        metrics.scan(now.took);
        if now.walks > last.walks {
            let walks = u32::try_from(now.walks - last.walks).unwrap_or(u32::MAX);
            let took = now.walk_time.saturating_sub(last.walk_time);
            metrics.walk(took / walks.max(1));
        }
        metrics.threads(now.tracked_threads, now.watched_processes);
        metrics.bpf_counters(&now.bpf_counters);
        metrics.symbolized(
            "kernel",
            now.kernel_symbolize
                .0
                .saturating_sub(last.kernel_symbolize.0),
            now.kernel_symbolize
                .1
                .saturating_sub(last.kernel_symbolize.1),
        );
        metrics.symbolized(
            "user",
            now.user_stacks.0.saturating_sub(last.user_stacks.0),
            0,
        );
        metrics.user_stacks(
            now.user_stacks.1.saturating_sub(last.user_stacks.1),
            now.module_cache.0.saturating_sub(last.module_cache.0),
            now.module_cache.1.saturating_sub(last.module_cache.1),
        );
        metrics.dropped(
            "stdout",
            "queue_full",
            now.stdout_dropped.saturating_sub(last.stdout_dropped),
        );
        let mean = |total: Duration, n: u64| ms(total) / n.max(1) as f64;
        self.hub.store.update_status(|s| {
            s.scans = now.scans;
            s.full_walks = now.walks;
            s.last_scan_ms = ms(now.took);
            s.mean_scan_ms = mean(now.scan_time, now.scans);
            s.mean_walk_ms = mean(now.walk_time, now.walks);
            s.tracked_threads = now.tracked_threads;
            s.watched_processes = now.watched_processes;
            s.bpf_counters = now
                .bpf_counters
                .iter()
                .map(|(c, v)| (counter_name(*c).to_owned(), *v))
                .collect::<BTreeMap<_, _>>();
            s.dropped_events = metrics.dropped_totals();
        });
        self.last = now.clone();
    }
}

/// Anchors `started_at` in the status at the daemon's start.
fn started_now() {
    let _ = crate::sink::started_at();
}

fn counter_name(counter: Counter) -> &'static str {
    match counter {
        Counter::SchedSwitchEvents => "sched_switch_events",
        Counter::SchedWakeupEvents => "sched_wakeup_events",
        Counter::FutexSyscallEvents => "futex_syscall_events",
        Counter::StateUnavailable => "state_unavailable",
        Counter::RecordsDeferred => "records_deferred",
        Counter::KernelStackFailed => "kernel_stack_failed",
        Counter::BlockedBeforeAttach => "blocked_before_attach",
        Counter::SysEnterEvents => "sys_enter_loop_events",
        Counter::ExitSignals => "exit_signals",
        Counter::ExitSignalsLost => "exit_signals_lost",
    }
}

/// The configuration as the daemon runs it, for `status`.
fn effective_config(config: &Config, listening: Option<std::net::SocketAddr>) -> serde_json::Value {
    let (thresholds, rules) = rules_status(config.detectors.rules());
    json!({
        "scan_interval": humantime::format_duration(config.scan_interval).to_string(),
        "config_file": config.config_file,
        "thresholds": thresholds,
        "rules": rules,
        "listen": listening.map(|a| a.to_string()),
        "webhook": config.webhook.as_ref().map(|w| w.url.to_string()),
    })
}

/// Shows `rules` in `status` once a reload has put them in force.
pub fn show_rules(store: &Store, rules: &Rules) {
    let (thresholds, list) = rules_status(rules);
    store.update_status(|s| {
        if let Some(config) = s.config.as_object_mut() {
            config.insert("thresholds".to_owned(), thresholds);
            config.insert("rules".to_owned(), list);
        }
    });
}

/// Each kind's threshold for every process before rules ("off": only where a rule turns
/// it on), and the rules in order.
fn rules_status(rules: &Rules) -> (serde_json::Value, serde_json::Value) {
    let duration = |d: Option<Duration>| {
        d.map_or_else(
            || "off".to_owned(),
            |d| humantime::format_duration(d).to_string(),
        )
    };
    let thresholds = rules
        .base
        .iter()
        .map(|(kind, t)| (kind.as_str().to_owned(), json!(duration(*t))))
        .collect::<serde_json::Map<_, _>>();
    let list = rules
        .rules
        .iter()
        .map(|r| {
            json!({
                "origin": r.origin,
                "selector": r.selector.to_string(),
                "set": r
                    .set
                    .iter()
                    .filter_map(|(kind, s)| Some((kind.as_str().to_owned(), json!(s.as_ref()?.to_string()))))
                    .collect::<serde_json::Map<_, _>>(),
            })
        })
        .collect::<Vec<_>>();
    (json!(thresholds), json!(list))
}
