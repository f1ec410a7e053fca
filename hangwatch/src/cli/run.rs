//! `hangwatch run`: the daemon's flags.
use std::{io::IsTerminal, path::PathBuf, time::Duration};

use clap::Args;

use crate::{
    config::{
        ConfigError, ConfigFile, Listen, OutputFormat, Pattern, Rule, Rules, Selector, Setting,
        WebhookUrl, parse_duration, parse_listen, parse_scan_interval, parse_setting,
        parse_webhook,
    },
    daemon::{Config, ReloadSource},
    detect::Detectors,
    kind::{HangKind, PerKind},
    logging::LogFormat,
    probe::ProbeSelection,
    sink::WebhookConfig,
};

/// Every flag but `--config` has a twin key in the config file; a flag given here wins over
/// its key, and a key over the default. So the defaults are applied after the merge, and
/// each field is `None` (or empty) when the flag was not given.
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// Read the settings and rules from this TOML file (see `hangwatch check-config`);
    /// flags given on the command line override its keys
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Report `off_cpu` hangs for the threads of this process (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Report `off_cpu` hangs for the threads of processes with this name (repeatable).
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,

    /// How long a thread of a process of --pid or --comm may stay off-CPU before it is
    /// reported [default: 5s]
    #[arg(long = "threshold", value_name = "DURATION", value_parser = parse_duration)]
    pub off_cpu_threshold: Option<Duration>,

    /// How long any thread may stay in uninterruptible sleep (D) before it is reported;
    /// "off" disables the d_state detector [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_setting)]
    pub d_state_threshold: Option<Setting>,

    /// How long any thread may wait on a lock whose owner is known (lock_wait); "off"
    /// disables it [default: 5s]
    #[arg(long, value_name = "DURATION", value_parser = parse_setting)]
    pub lock_wait_threshold: Option<Setting>,

    /// How long a deadlock (a wait-for cycle, or a process whose every thread is in an
    /// untimed wait on a private futex) must hold before it is reported; "off" disables
    /// it [default: 1s]
    #[arg(long, value_name = "DURATION", value_parser = parse_setting)]
    pub deadlock_threshold: Option<Setting>,

    /// How long an event-loop thread (one that keeps coming back to epoll_wait or
    /// io_uring_enter) may stay away from its wait, blocked elsewhere or running; "off"
    /// disables loop_stall [default: 2s]
    #[arg(long, value_name = "DURATION", value_parser = parse_setting)]
    pub loop_stall_threshold: Option<Setting>,

    /// How long a thread of a process of --pid or --comm may run without blocking
    /// (on_cpu); "off" leaves it off for them [default: 5s]
    #[arg(long, value_name = "DURATION", value_parser = parse_setting)]
    pub on_cpu_threshold: Option<Setting>,

    /// How long a process sent SIGTERM, SIGINT or SIGQUIT (by another process, not a
    /// terminal's ^C) may take to exit before it is reported (stuck_exit); "off" disables
    /// it [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_setting)]
    pub stuck_exit_grace: Option<Setting>,

    /// How often the per-thread state is read (a tick; detection latency is at most one
    /// tick past the threshold) [default: 200ms]
    #[arg(long, value_name = "DURATION", value_parser = parse_scan_interval)]
    pub scan_interval: Option<Duration>,

    /// Event format on stdout [default: text on a terminal, json otherwise]
    #[arg(long, value_enum)]
    pub output: Option<OutputFormat>,

    /// Address of /metrics and /healthz (aggregates only: the per-process API is on
    /// --api-socket), or "off"; port 0 picks a free port (logged) [default: 127.0.0.1:9924]
    #[arg(long = "metrics-listen", visible_alias = "listen", value_name = "ADDR", value_parser = parse_listen)]
    pub listen: Option<Listen>,

    #[command(flatten)]
    pub expose: crate::api::options::ExposeArgs,

    /// POST every event (JSON) to this http:// or https:// URL; a slow or down receiver never delays
    /// detection (bounded queue and retries, drops counted in the metrics)
    #[arg(long, value_name = "URL", value_parser = parse_webhook)]
    pub webhook: Option<WebhookUrl>,

    /// Trust the CA certificates of this PEM file for an https:// webhook, instead of the
    /// system's (/etc/ssl/certs; SSL_CERT_FILE and SSL_CERT_DIR are honoured)
    #[arg(long, value_name = "FILE")]
    pub webhook_ca: Option<PathBuf>,

    /// Send `Authorization: Bearer TOKEN` to the webhook, TOKEN being this file's content
    /// (read again for each event, so that a rotated secret is used)
    #[arg(long, value_name = "FILE")]
    pub webhook_token_file: Option<PathBuf>,

    /// Follow the webhook's redirects (up to 5; the token is not sent to another host).
    /// Without it a 3xx answer fails the delivery
    #[arg(long)]
    pub webhook_follow_redirects: bool,

    /// Reach the webhook through the environment's proxy (HTTPS_PROXY, HTTP_PROXY,
    /// ALL_PROXY, NO_PROXY); without it the daemon connects directly
    #[arg(long)]
    pub webhook_env_proxy: bool,

    /// Format of the daemon's own log on stderr: text lines, or one JSON object per line
    /// (docs/operations.md lists the fields) [default: text]
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

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

/// Where /metrics listens unless told otherwise: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9924";
const DEFAULT_SCAN_INTERVAL: Duration = Duration::from_millis(200);

impl RunArgs {
    /// The daemon's configuration: these flags over the `--config` file over the defaults.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        Ok(self.merge(file))
    }

    /// The flags given over `file`'s keys over the defaults.
    pub fn merge(self, file: ConfigFile) -> Config {
        // Kept to merge them again over the file when it is reloaded (SIGHUP).
        let flags = self.clone();
        let Self {
            config,
            pids,
            comms,
            off_cpu_threshold,
            d_state_threshold,
            lock_wait_threshold,
            deadlock_threshold,
            loop_stall_threshold,
            on_cpu_threshold,
            stuck_exit_grace,
            scan_interval,
            output,
            listen,
            expose,
            webhook,
            webhook_ca,
            webhook_token_file,
            webhook_follow_redirects,
            webhook_env_proxy,
            log_format,
            wakeup_probe,
            futex_probes,
            node_name,
        } = self;
        let mut rules = Rules::default();
        // The kinds on everywhere: their flag, else their key, else the default.
        for (kind, flag, key) in [
            (HangKind::DState, d_state_threshold, file.d_state_threshold),
            (
                HangKind::LockWait,
                lock_wait_threshold,
                file.lock_wait_threshold,
            ),
            (
                HangKind::Deadlock,
                deadlock_threshold,
                file.deadlock_threshold,
            ),
            (
                HangKind::LoopStall,
                loop_stall_threshold,
                file.loop_stall_threshold,
            ),
            (HangKind::StuckExit, stuck_exit_grace, file.stuck_exit_grace),
        ] {
            if let Some(setting) = flag.or(key) {
                rules.base[kind] = setting.duration();
            }
        }
        rules.rules = file.rules();
        // --pid/--comm (or their keys) are rules after the file's: a process named on the
        // command line gets off_cpu whatever the file's rules say.
        let (pids, pid_origin) = if pids.is_empty() {
            (file.pid.clone(), "pid key")
        } else {
            (pids, "--pid")
        };
        let (comms, comm_origin) = if comms.is_empty() {
            (file.comm.clone(), "comm key")
        } else {
            (comms, "--comm")
        };
        let threshold = off_cpu_threshold
            .or(file.threshold)
            .unwrap_or(HangKind::OffCpu.default_rule().threshold);
        let on_cpu = on_cpu_threshold
            .or(file.on_cpu_threshold)
            .unwrap_or(Setting::After(HangKind::OnCpu.default_rule().threshold));
        // A process named here is watched off CPU and on CPU alike.
        let off_cpu = |selector: Selector, origin: String| {
            let mut set = PerKind::default();
            set[HangKind::OffCpu] = Some(Setting::After(threshold));
            set[HangKind::OnCpu] = Some(on_cpu);
            Rule {
                selector,
                set,
                origin,
            }
        };
        for pid in pids {
            let selector = Selector {
                pid: Some(pid),
                ..Selector::default()
            };
            rules.rules.push(off_cpu(selector, pid_origin.to_owned()));
        }
        for comm in comms {
            let selector = Selector {
                comm: Some(Pattern::exact(&comm)),
                ..Selector::default()
            };
            rules.rules.push(off_cpu(selector, comm_origin.to_owned()));
        }
        let output = output
            .or(file.output)
            .unwrap_or(if std::io::stdout().is_terminal() {
                OutputFormat::Text
            } else {
                OutputFormat::Json
            });
        let default_listen = parse_listen(DEFAULT_LISTEN).expect("the default address parses");
        Config {
            detectors: Detectors::new(rules),
            config_file: config.as_ref().map(|p| p.display().to_string()),
            scan_interval: scan_interval
                .or(file.scan_interval)
                .unwrap_or(DEFAULT_SCAN_INTERVAL),
            output,
            listen: listen.or(file.listen).unwrap_or(default_listen).0,
            expose: expose.merge(file.api.unwrap_or_default()),
            webhook: webhook.or(file.webhook).map(|url| WebhookConfig {
                url,
                ca_file: webhook_ca.or(file.webhook_ca),
                token_file: webhook_token_file.or(file.webhook_token_file),
                follow_redirects: webhook_follow_redirects
                    || file.webhook_follow_redirects.unwrap_or(false),
                env_proxy: webhook_env_proxy || file.webhook_env_proxy.unwrap_or(false),
            }),
            log_format: log_format.or(file.log_format).unwrap_or_default(),
            probes: ProbeSelection {
                wakeup: wakeup_probe || file.wakeup_probe.unwrap_or(false),
                futex: futex_probes || file.futex_probes.unwrap_or(false),
            },
            node_name: node_name.filter(|n| !n.is_empty()),
            reload: config.map(|path| ReloadSource { path, flags }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use crate::{
        cli::{Cli, Command},
        config::{ConfigFile, Process},
        kind::HangKind,
    };

    fn run_args(args: &[&str]) -> Result<super::RunArgs, clap::Error> {
        let cli = Cli::try_parse_from(["hangwatch", "run"].iter().chain(args))?;
        match cli.command {
            Command::Run(args) => Ok(*args),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn config(args: &[&str], file: &str) -> crate::daemon::Config {
        let file = ConfigFile::parse(file, "t.toml").expect("valid config");
        run_args(args).expect("parses").merge(file)
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn process(pid: u32, comm: &str) -> Process<'_> {
        Process {
            pid,
            comm,
            exe: None,
            cgroup: None,
            pod: None,
        }
    }

    #[test]
    fn defaults_are_the_missions() {
        let config = config(&["--output", "json"], "");
        let d = &config.detectors;
        assert_eq!(d.smallest(HangKind::DState), Some(S(10)));
        assert_eq!(d.smallest(HangKind::OffCpu), None, "off without targets");
        assert_eq!(d.smallest(HangKind::LockWait), Some(S(5)));
        assert_eq!(d.smallest(HangKind::Deadlock), Some(S(1)));
        assert_eq!(config.scan_interval.as_millis(), 200);
        assert_eq!(
            config.listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:9924")
        );
        assert!(config.webhook.is_none());
    }

    #[test]
    fn listen_and_webhook() {
        let config = config(
            &["--listen", "off", "--webhook", "http://127.0.0.1:1/x"],
            "",
        );
        assert!(config.listen.is_none());
        assert_eq!(
            config.webhook.map(|w| w.url.to_string()).as_deref(),
            Some("http://127.0.0.1:1/x")
        );
        let err = run_args(&["--listen", "localhost"])
            .expect_err("rejected")
            .to_string();
        assert!(err.contains("IP:PORT"), "{err}");
        let err = run_args(&["--webhook", "ftp://x/"])
            .expect_err("rejected")
            .to_string();
        assert!(err.contains("http:// or https://"), "{err}");
        let https = self::config(
            &[
                "--webhook",
                "https://x/",
                "--webhook-ca",
                "/ca.pem",
                "--log-format",
                "json",
            ],
            "webhook_token_file = \"/token\"\nwebhook_env_proxy = true\n",
        );
        let webhook = https.webhook.expect("a webhook");
        assert_eq!(
            webhook.ca_file.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        assert_eq!(
            webhook.token_file.as_deref(),
            Some(std::path::Path::new("/token"))
        );
        assert!(webhook.env_proxy && !webhook.follow_redirects);
        assert_eq!(https.log_format, crate::logging::LogFormat::Json);
    }

    #[test]
    fn selecting_a_pid_enables_off_cpu() {
        let config = config(&["--pid", "42", "--threshold", "1s"], "");
        let rules = config.detectors.rules();
        assert_eq!(rules.smallest(HangKind::OffCpu), Some(S(1)));
        assert_eq!(
            rules.thresholds_for(&process(42, "x"))[HangKind::OffCpu],
            Some(S(1))
        );
        assert_eq!(
            rules.thresholds_for(&process(43, "x"))[HangKind::OffCpu],
            None
        );
        assert_eq!(rules.selected_pids().collect::<Vec<_>>(), vec![42]);
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
        assert_eq!(
            config(&["--d-state-threshold", "off"], "")
                .detectors
                .smallest(HangKind::DState),
            None
        );
    }

    #[test]
    fn flags_given_override_the_file_and_the_file_the_defaults() {
        let file = r#"
d_state_threshold = "20s"
lock_wait_threshold = "off"
scan_interval = "1s"
listen = "off"
wakeup_probe = true
comm = ["from-file"]
threshold = "3s"
"#;
        let from_file = config(&[], file);
        let d = &from_file.detectors;
        assert_eq!(d.smallest(HangKind::DState), Some(S(20)));
        assert_eq!(d.smallest(HangKind::LockWait), None);
        assert_eq!(d.smallest(HangKind::Deadlock), Some(S(1)), "the default");
        assert_eq!(from_file.scan_interval, S(1));
        assert!(from_file.listen.is_none());
        assert!(from_file.probes.wakeup);
        assert_eq!(
            d.rules().thresholds_for(&process(5, "from-file"))[HangKind::OffCpu],
            Some(S(3))
        );

        let flags = config(
            &[
                "--d-state-threshold",
                "2s",
                "--scan-interval",
                "300ms",
                "--listen",
                "127.0.0.1:0",
                "--comm",
                "from-flag",
                "--threshold",
                "4s",
            ],
            file,
        );
        let d = &flags.detectors;
        assert_eq!(d.smallest(HangKind::DState), Some(S(2)));
        assert_eq!(
            d.smallest(HangKind::LockWait),
            None,
            "not given: the file's"
        );
        assert_eq!(flags.scan_interval, Duration::from_millis(300));
        assert_eq!(
            flags.listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:0")
        );
        let rules = d.rules();
        assert_eq!(
            rules.thresholds_for(&process(5, "from-flag"))[HangKind::OffCpu],
            Some(S(4))
        );
        assert_eq!(
            rules.thresholds_for(&process(5, "from-file"))[HangKind::OffCpu],
            None,
            "--comm replaces the comm key"
        );
    }

    #[test]
    fn command_line_selections_come_after_the_files_rules() {
        let file = "[[rule]]\ncomm = \"app\"\noff_cpu = \"off\"\nlock_wait = \"1s\"\n";
        let config = config(&["--comm", "app", "--threshold", "2s"], file);
        let rules = config.detectors.rules();
        let t = rules.thresholds_for(&process(9, "app"));
        assert_eq!(t[HangKind::OffCpu], Some(S(2)), "--comm wins over the rule");
        assert_eq!(
            t[HangKind::LockWait],
            Some(S(1)),
            "the rule's other kinds stay"
        );
        assert_eq!(rules.rules[0].origin, "t.toml:1");
        assert_eq!(rules.rules[1].origin, "--comm");
    }
}
