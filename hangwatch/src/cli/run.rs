//! `hangwatch run`: the daemon's flags.
use std::{io::IsTerminal, net::SocketAddr, time::Duration};

use clap::Args;

use crate::{
    daemon::Config,
    detect::{DState, Deadlock, Detectors, LockWait, OffCpu},
    probe::ProbeSelection,
    sink::{OutputFormat, WebhookUrl},
};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Report `off_cpu` hangs for the threads of this process (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Report `off_cpu` hangs for the threads of processes with this name (repeatable).
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,

    /// How long a selected thread may stay off-CPU before it is reported [default: 5s]
    #[arg(long = "threshold", value_name = "DURATION", value_parser = parse_duration, default_value = "5s", hide_default_value = true)]
    pub off_cpu_threshold: Duration,

    /// How long any thread may stay in uninterruptible sleep (D) before it is reported;
    /// "off" disables the d_state detector [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_optional_duration, default_value = "10s", hide_default_value = true)]
    pub d_state_threshold: MaybeOff,

    /// How long any thread may wait on a lock whose owner is known (lock_wait); "off"
    /// disables it [default: 5s]
    #[arg(long, value_name = "DURATION", value_parser = parse_optional_duration, default_value = "5s", hide_default_value = true)]
    pub lock_wait_threshold: MaybeOff,

    /// How long a deadlock (a wait-for cycle, or a process whose every thread is in an
    /// untimed wait on a private futex) must hold before it is reported; "off" disables
    /// it [default: 1s]
    #[arg(long, value_name = "DURATION", value_parser = parse_optional_duration, default_value = "1s", hide_default_value = true)]
    pub deadlock_threshold: MaybeOff,

    /// How often the per-thread state is read (a tick; detection latency is at most one
    /// tick past the threshold) [default: 200ms]
    #[arg(long, value_name = "DURATION", value_parser = parse_scan_interval, default_value = "200ms", hide_default_value = true)]
    pub scan_interval: Duration,

    /// Event format on stdout [default: text on a terminal, json otherwise]
    #[arg(long, value_enum)]
    pub output: Option<OutputFormat>,

    /// Address of the HTTP API and /metrics, or "off"; port 0 picks a free port (logged)
    /// [default: 127.0.0.1:9924]
    #[arg(long, value_name = "ADDR", value_parser = parse_listen, default_value = DEFAULT_LISTEN, hide_default_value = true)]
    pub listen: Listen,

    /// POST every event (JSON) to this http:// URL; a slow or down receiver never delays
    /// detection (bounded queue and retries, drops counted in the metrics)
    #[arg(long, value_name = "URL", value_parser = parse_webhook)]
    pub webhook: Option<WebhookUrl>,

    /// Also attach sched_wakeup, to tell a thread that was woken and waits for a CPU from a
    /// blocked one between full walks (costs about 70 ns per wakeup)
    #[arg(long)]
    pub wakeup_probe: bool,

    /// Also attach the futex syscall tracepoints (any syscall tracepoint slows every
    /// syscall of the machine; without them the futex details come from the saved
    /// registers at scan time)
    #[arg(long)]
    pub futex_probes: bool,

    /// In Kubernetes: the node this daemon runs on (the DaemonSet sets NODE_NAME from the
    /// downward API). Its pods are watched (credentials from KUBECONFIG or ~/.kube/config,
    /// else the pod's service account) to name the namespace, pod and container of hung
    /// processes; without it, events carry only the container id and pod UID of the cgroup
    #[arg(long, env = "NODE_NAME", value_name = "NODE")]
    pub node_name: Option<String>,
}

/// Where the HTTP API listens unless told otherwise: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9924";

/// A socket address, or "off".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

fn parse_listen(text: &str) -> Result<Listen, String> {
    if text == "off" {
        return Ok(Listen(None));
    }
    text.parse::<SocketAddr>()
        .map(|a| Listen(Some(a)))
        .map_err(|_| {
            "expected IP:PORT (e.g. 127.0.0.1:9924, 0.0.0.0:9924, [::1]:9924) or \"off\"".to_owned()
        })
}

fn parse_webhook(text: &str) -> Result<WebhookUrl, String> {
    WebhookUrl::parse(text).map_err(|e| e.to_string())
}

impl RunArgs {
    pub fn into_config(self) -> Config {
        let Self {
            pids,
            comms,
            off_cpu_threshold,
            d_state_threshold,
            lock_wait_threshold,
            deadlock_threshold,
            scan_interval,
            output,
            listen,
            webhook,
            wakeup_probe,
            futex_probes,
            node_name,
        } = self;
        let output = output.unwrap_or(if std::io::stdout().is_terminal() {
            OutputFormat::Text
        } else {
            OutputFormat::Json
        });
        let selects = !(pids.is_empty() && comms.is_empty());
        Config {
            detectors: Detectors {
                d_state: d_state_threshold.0.map(|threshold| DState { threshold }),
                off_cpu: selects.then_some(OffCpu {
                    threshold: off_cpu_threshold,
                }),
                lock_wait: lock_wait_threshold
                    .0
                    .map(|threshold| LockWait { threshold }),
                deadlock: deadlock_threshold.0.map(|hold| Deadlock { hold }),
            },
            pids,
            comms,
            scan_interval,
            output,
            listen: listen.0,
            webhook,
            probes: ProbeSelection {
                wakeup: wakeup_probe,
                futex: futex_probes,
            },
            node_name: node_name.filter(|n| !n.is_empty()),
        }
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 500ms, 10s, 2m)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// A duration, or "off".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaybeOff(pub Option<Duration>);

fn parse_optional_duration(text: &str) -> Result<MaybeOff, String> {
    if text == "off" {
        return Ok(MaybeOff(None));
    }
    parse_duration(text).map(|d| MaybeOff(Some(d)))
}

fn parse_scan_interval(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < Duration::from_millis(10) || d > Duration::from_secs(10) {
        return Err("must be between 10ms and 10s".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    fn run_args(args: &[&str]) -> Result<super::RunArgs, clap::Error> {
        let cli = Cli::try_parse_from(["hangwatch", "run"].iter().chain(args))?;
        match cli.command {
            Command::Run(args) => Ok(args),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_missions() {
        let config = run_args(&["--output", "json"])
            .expect("parses")
            .into_config();
        assert_eq!(
            config.detectors.d_state.map(|d| d.threshold.as_secs()),
            Some(10)
        );
        assert!(
            config.detectors.off_cpu.is_none(),
            "off_cpu is off without targets"
        );
        assert_eq!(
            config.detectors.lock_wait.map(|l| l.threshold.as_secs()),
            Some(5)
        );
        assert_eq!(config.detectors.deadlock.map(|d| d.hold.as_secs()), Some(1));
        assert_eq!(config.scan_interval.as_millis(), 200);
        assert_eq!(
            config.listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:9924")
        );
        assert!(config.webhook.is_none());
    }

    #[test]
    fn listen_and_webhook() {
        let config = run_args(&["--listen", "off", "--webhook", "http://127.0.0.1:1/x"])
            .expect("parses")
            .into_config();
        assert!(config.listen.is_none());
        assert_eq!(
            config.webhook.map(|w| w.to_string()).as_deref(),
            Some("http://127.0.0.1:1/x")
        );
        let err = run_args(&["--listen", "localhost"])
            .expect_err("rejected")
            .to_string();
        assert!(err.contains("IP:PORT"), "{err}");
        let err = run_args(&["--webhook", "https://x/"])
            .expect_err("rejected")
            .to_string();
        assert!(err.contains("https is not supported"), "{err}");
    }

    #[test]
    fn selecting_a_pid_enables_off_cpu() {
        let config = run_args(&["--pid", "42", "--threshold", "1s"])
            .expect("parses")
            .into_config();
        assert_eq!(
            config.detectors.off_cpu.map(|o| o.threshold.as_secs()),
            Some(1)
        );
        assert_eq!(config.pids, vec![42]);
    }

    #[test]
    fn bad_durations_say_why() {
        let err = run_args(&["--threshold", "soon"])
            .expect_err("rejected")
            .to_string();
        assert!(err.contains("examples"), "{err}");
        let err = run_args(&["--scan-interval", "1ms"])
            .expect_err("rejected")
            .to_string();
        assert!(err.contains("between"), "{err}");
        assert!(
            run_args(&["--d-state-threshold", "off"])
                .expect("parses")
                .into_config()
                .detectors
                .d_state
                .is_none()
        );
    }
}
