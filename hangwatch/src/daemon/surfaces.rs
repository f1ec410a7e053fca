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

use super::Config;
use crate::{
    api::{Api, Bound, Listeners, ServeError, StackRequest, listeners::Limits, serve, threads},
    config::Rules,
    enrich::Tick,
    episode::Transition,
    metrics::Metrics,
    probe::{PROBES, Probes},
    sink::{Hub, ProbeStatus, Store, WebhookError, WebhookSink, ms},
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
}

pub struct Surfaces {
    /// The sinks the enrich stage publishes to, until it takes them.
    hub: Option<Hub>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    api: Arc<Api>,
    stack_requests: mpsc::Receiver<StackRequest>,
    stack_sender: Option<mpsc::SyncSender<StackRequest>>,
    /// The figures of the previous scan, to compute increments.
    last: ScanFigures,
    /// Log lines dropped by the previous scan, by reason (`logging::dropped_lines`).
    log_lines_dropped: [u64; 2],
}

impl Surfaces {
    /// Starts the HTTP server's listeners (metrics, the API socket, the cluster API: those
    /// not turned off) and the webhook (if any).
    pub fn start(config: &Config) -> Result<Self, SurfacesError> {
        let metrics = Arc::new(Metrics::new());
        let webhook = config
            .webhook
            .clone()
            .map(|webhook| WebhookSink::spawn(webhook, Arc::clone(&metrics)))
            .transpose()?;
        let store = Arc::new(Store::new(serde_json::Value::Null));
        let api = Api::new(
            Arc::clone(&store),
            Arc::clone(&metrics),
            config.scan_interval,
        );
        let expose = &config.expose;
        let listening = serve(
            Listeners {
                metrics: config.listen,
                socket: expose.socket.clone(),
                socket_group: expose.socket_group.clone(),
                cluster: expose.cluster.clone(),
                limits: Limits::default(),
            },
            Arc::clone(&api),
        )?;
        // The tests parse these lines for the port of `--metrics-listen 127.0.0.1:0`.
        if let Some(addr) = listening.metrics {
            tracing::info!("metrics listening on http://{addr}");
        }
        if let Some(path) = &listening.socket {
            tracing::info!("API socket listening on unix:{}", path.display());
        }
        if let Some(addr) = listening.cluster {
            tracing::info!("cluster API (token required) listening on http://{addr}");
        }
        store.update_status(|s| s.config = effective_config(config, &listening));
        // Bounded: a flood of `threads?stacks` requests gets 503s, not a queue of work.
        let (stack_sender, stack_requests) = mpsc::sync_channel(threads::STACK_QUEUE);
        started_now();
        Ok(Self {
            hub: Some(Hub {
                store: Arc::clone(&store),
                metrics: Arc::clone(&metrics),
                webhook,
                redaction: expose.redaction,
                owners: Default::default(),
            }),
            store,
            metrics,
            api,
            stack_requests,
            stack_sender: Some(stack_sender),
            last: ScanFigures::default(),
            log_lines_dropped: [0; 2],
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The metrics and the store, for what reports outside the scan (a SIGHUP reload).
    pub fn shared(&self) -> (Arc<Metrics>, Arc<Store>) {
        (Arc::clone(&self.metrics), Arc::clone(&self.store))
    }

    /// The sinks, for the enrich stage (once).
    pub fn take_hub(&mut self) -> Hub {
        self.hub.take().expect("the hub is taken once, at start")
    }

    /// The next `threads?stacks` request whose caller still waits.
    pub fn next_stack_request(&mut self) -> Option<StackRequest> {
        while let Ok(request) = self.stack_requests.try_recv() {
            if request.reply.is_closed() {
                self.metrics.dropped("stack_requests", "caller_gone", 1);
                continue;
            }
            return Some(request);
        }
        None
    }

    /// A tick the enrich stage could not take (its queue of 1,024 ticks full: it has been
    /// stuck for minutes, which its deadlines should make impossible): each transition is
    /// logged, so that it is not lost silently; counted in `hangwatch_limits_total`.
    pub fn unenriched(&self, tick: &Tick) {
        for transition in &tick.transitions {
            let episode = match transition {
                Transition::Opened(e) | Transition::Updated(e) | Transition::Ended(e) => e,
            };
            tracing::warn!(
                "not reported in full (enrich queue full): {} of thread {} in process {}",
                episode.key.kind.as_str(),
                episode.key.thread.tid,
                episode.tgid
            );
        }
    }

    /// The probes are attached: `/healthz` turns ready, the status lists them.
    pub fn probes_attached(&mut self, probes: &Probes) {
        let metrics = Arc::clone(&self.metrics);
        let mut statuses = Vec::with_capacity(PROBES.len());
        for spec in PROBES {
            let degraded = probes
                .degraded
                .iter()
                .find(|d| d.spec.program == spec.program);
            let enabled = probes.selection.enabled(spec.group);
            let attached = enabled && degraded.is_none();
            metrics.probe(spec.program, attached);
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
        self.store.update_status(|s| {
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

    pub fn after_scan(&mut self, now: &ScanFigures) {
        let metrics = &self.metrics;
        let last = &self.last;
        metrics.scan(now.took);
        metrics.scan_completed();
        self.api.scan_completed();
        if now.walks > last.walks {
            let walks = u32::try_from(now.walks - last.walks).unwrap_or(u32::MAX);
            let took = now.walk_time.saturating_sub(last.walk_time);
            metrics.walk(took / walks.max(1));
        }
        metrics.threads(now.tracked_threads, now.watched_processes);
        metrics.bpf_counters(&now.bpf_counters);
        for (i, (reason, total)) in crate::logging::dropped_lines().into_iter().enumerate() {
            metrics.dropped(
                "log",
                reason,
                total.saturating_sub(self.log_lines_dropped[i]),
            );
            self.log_lines_dropped[i] = total;
        }
        let mean = |total: Duration, n: u64| ms(total) / n.max(1) as f64;
        self.store.update_status(|s| {
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
        Counter::SwitchOutsInStorage => "switch_outs_in_storage",
    }
}

/// The configuration as the daemon runs it, for `status`.
fn effective_config(config: &Config, listening: &Bound) -> serde_json::Value {
    let (thresholds, rules) = rules_status(config.detectors.rules());
    json!({
        "scan_interval": humantime::format_duration(config.scan_interval).to_string(),
        "config_file": config.config_file,
        "thresholds": thresholds,
        "rules": rules,
        "metrics_listen": listening.metrics.map(|a| a.to_string()),
        "api_socket": listening.socket.as_ref().map(|p| p.display().to_string()),
        "api_socket_group": config.expose.socket_group,
        "cluster_api_listen": listening.cluster.map(|a| a.to_string()),
        "redact_kernel_addresses": config.expose.redaction.kernel_addresses,
        "redact_cmdline": config.expose.redaction.cmdline,
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
