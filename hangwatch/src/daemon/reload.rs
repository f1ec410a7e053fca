//! SIGHUP: the rules of the `--config` file, read again and swapped in without a restart.
//!
//! The signal thread reads the file again and checks it as `check-config` does
//! ([`ConfigFile::load`]: every problem as `FILE:LINE:COL: reason`), then merges the
//! command-line flags over it as at start, so that a flag given still wins over the file.
//! The scan loop takes the result at its next tick ([`Reload::apply_pending`]): the
//! kernel-side filter, the detectors and the per-process thresholds are replaced together,
//! between two scans, never during one.
//!
//! Only the rules and thresholds change. The other settings (scan interval, output, listen
//! address, webhook, probes, log format) are fixed at start: a file that changes them still
//! has its rules applied, with a warning naming what takes a restart. A file that cannot be
//! used changes nothing: the rules in force stay, and `hangwatch_config_reloads_total`
//! counts the refusal.
use std::{
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use signal_hook::consts::SIGHUP;

use super::{
    Config,
    surfaces::{Surfaces, show_rules},
};
use crate::{
    cli::run::RunArgs,
    config::{ConfigError, ConfigFile, Rule, Rules},
    detect::{Detectors, Targets},
    kind::HangKind,
    metrics::Metrics,
    probe::Probes,
    sink::Store,
};

/// What a configuration was made from: the file, and the flags given beside it.
#[derive(Debug, Clone)]
pub struct ReloadSource {
    pub path: PathBuf,
    pub flags: RunArgs,
}

impl ReloadSource {
    /// The configuration the file gives now, the flags over it; or the file's problems.
    fn load(&self) -> Result<Config, ConfigError> {
        ConfigFile::load(&self.path).map(|file| self.flags.clone().merge(file))
    }
}

/// Filled by the signal thread, emptied by the scan loop.
pub struct Reload {
    source: Option<ReloadSource>,
    /// The configuration at start, for the settings that only a restart changes.
    started: Config,
    /// The detectors of the last file accepted, until the scan takes them.
    pending: Mutex<Option<Detectors>>,
    metrics: Arc<Metrics>,
    /// Where `status` shows the rules in force.
    store: Arc<Store>,
}

impl Reload {
    pub fn new(config: &Config, surfaces: &Surfaces) -> Arc<Self> {
        let (metrics, store) = surfaces.shared();
        Arc::new(Self::with(config, metrics, store))
    }

    fn with(config: &Config, metrics: Arc<Metrics>, store: Arc<Store>) -> Self {
        Self {
            source: config.reload.clone(),
            started: config.clone(),
            pending: Mutex::new(None),
            metrics,
            store,
        }
    }

    /// Handles `signal` if it is SIGHUP (returns true): reads and checks the file, and
    /// leaves its detectors for the scan, or logs why it is refused. Runs on the signal
    /// thread, so a slow read never delays a scan.
    pub fn on_signal(&self, signal: i32) -> bool {
        if signal != SIGHUP {
            return false;
        }
        let Some(source) = &self.source else {
            tracing::warn!("SIGHUP: no --config file to read again; nothing changes");
            return true;
        };
        let path = source.path.display();
        match source.load() {
            Ok(config) => {
                let fixed = fixed_changes(&self.started, &config);
                if !fixed.is_empty() {
                    tracing::warn!(
                        "{path}: {} changed: a restart applies that; the rules apply now",
                        fixed.join(", ")
                    );
                }
                *self.pending.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(config.detectors);
            }
            Err(ConfigError::Invalid(problems)) => {
                for problem in &problems {
                    tracing::error!("{problem}");
                }
                tracing::warn!(
                    "{path}: not reloaded ({} problem(s) above); the rules in force are kept",
                    problems.len()
                );
                self.metrics.config_reload(false);
            }
            Err(err @ ConfigError::Read { .. }) => {
                let cause =
                    std::error::Error::source(&err).map_or_else(String::new, |s| format!(": {s}"));
                tracing::error!("{err}{cause}; not reloaded, the rules in force are kept");
                self.metrics.config_reload(false);
            }
        }
        true
    }

    /// The detectors of the last file accepted since the last call, if any.
    pub fn take(&self) -> Option<Detectors> {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// At a tick of the scan: puts the detectors of the last accepted file in force, the
    /// kernel-side filter first (if it cannot be set, nothing changes). Returns whether
    /// they changed; the scan should then walk at once, under the new filter.
    pub fn apply_pending(
        &self,
        detectors: &mut Detectors,
        targets: &mut Targets,
        probes: &mut Probes,
    ) -> bool {
        let Some(new) = self.take() else {
            return false;
        };
        let path = self
            .source
            .as_ref()
            .map_or_else(String::new, |s| s.path.display().to_string());
        if let Err(err) = probes.set_scan_config(new.scan_config()) {
            tracing::error!(
                "{path}: cannot apply the reloaded rules ({err}); the rules in force are kept"
            );
            self.metrics.config_reload(false);
            return false;
        }
        let changes = changes(detectors.rules(), new.rules());
        if changes.is_empty() {
            tracing::info!("{path} reloaded: no change to the rules or thresholds");
        } else {
            tracing::info!("{path} reloaded: {}", changes.join("; "));
        }
        show_rules(&self.store, new.rules());
        // Thresholds resolved per process under the old rules go with them.
        *targets = Targets::new(new.rules().clone());
        *detectors = new;
        self.metrics.config_reload(true);
        true
    }
}

/// The settings fixed at start that `new` would change.
fn fixed_changes(started: &Config, new: &Config) -> Vec<&'static str> {
    // Every field named, so that a new setting makes the compiler ask whether it reloads.
    let Config {
        detectors: _,
        config_file: _,
        scan_interval,
        output,
        listen,
        expose,
        webhook,
        probes,
        node_name,
        log_format,
        reload: _,
    } = new;
    [
        ("scan_interval", *scan_interval != started.scan_interval),
        ("output", *output != started.output),
        ("listen", *listen != started.listen),
        ("[api]", *expose != started.expose),
        ("webhook", *webhook != started.webhook),
        ("wakeup_probe/futex_probes", *probes != started.probes),
        ("node_name", *node_name != started.node_name),
        ("log_format", *log_format != started.log_format),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}

/// What differs from `old` to `new`, one clause each: a base threshold
/// (`lock_wait 5s -> 1s`), a rule removed or added (`rule added: comm = "x" -> off_cpu 1s`).
/// Rules are compared by what they do, not by their line, so an edit above them is no change.
fn changes(old: &Rules, new: &Rules) -> Vec<String> {
    let shown = |t: Option<Duration>| {
        t.map_or_else(
            || "off".to_owned(),
            |d| humantime::format_duration(d).to_string(),
        )
    };
    let mut out: Vec<String> = HangKind::ALL
        .into_iter()
        .filter(|&kind| old.base[kind] != new.base[kind])
        .map(|kind| {
            format!(
                "{kind} {} -> {}",
                shown(old.base[kind]),
                shown(new.base[kind])
            )
        })
        .collect();
    let old_rules: Vec<String> = old.rules.iter().map(Rule::describe).collect();
    let new_rules: Vec<String> = new.rules.iter().map(Rule::describe).collect();
    let mut added = new_rules.clone();
    let mut removed = Vec::new();
    for rule in &old_rules {
        match added.iter().position(|r| r == rule) {
            Some(i) => {
                added.remove(i);
            }
            None => removed.push(rule),
        }
    }
    out.extend(removed.into_iter().map(|r| format!("rule removed: {r}")));
    out.extend(added.into_iter().map(|r| format!("rule added: {r}")));
    if out.is_empty() && old_rules != new_rules {
        out.push("rules reordered (the last match wins)".to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{path::Path, time::Duration};

    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    /// `hangwatch run --config PATH <flags>` as the daemon would start from it.
    fn started(path: &Path, flags: &[&str]) -> Config {
        let path = path.to_string_lossy();
        let args = ["hangwatch", "run", "--output", "json", "--config", &path];
        let cli = Cli::try_parse_from(args.iter().chain(flags)).expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        (*args).into_config().expect("valid config")
    }

    fn reload_of(config: &Config) -> (Reload, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let store = Arc::new(Store::new(serde_json::json!({})));
        (Reload::with(config, Arc::clone(&metrics), store), metrics)
    }

    fn reloads(metrics: &Metrics, result: &str) -> bool {
        metrics.render().contains(&format!(
            "hangwatch_config_reloads_total{{result=\"{result}\"}} 1\n"
        ))
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_good_file_is_taken_once_with_the_flags_still_over_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("hangwatch.toml");
        std::fs::write(&path, "lock_wait_threshold = \"5s\"\n").expect("write");
        let config = started(&path, &["--d-state-threshold", "3s"]);
        let (reload, metrics) = reload_of(&config);
        assert!(!reload.on_signal(libc::SIGTERM), "not ours");
        assert!(reload.take().is_none());

        std::fs::write(
            &path,
            "lock_wait_threshold = \"1s\"\nd_state_threshold = \"20s\"\n\n[[rule]]\ncomm = \"app\"\noff_cpu = \"2s\"\n",
        )
        .expect("write");
        assert!(reload.on_signal(SIGHUP));
        let new = reload.take().expect("accepted");
        assert!(reload.take().is_none(), "taken once");
        assert_eq!(new.smallest(HangKind::LockWait), Some(S(1)), "the file's");
        assert_eq!(new.smallest(HangKind::DState), Some(S(3)), "the flag wins");
        assert_eq!(new.smallest(HangKind::OffCpu), Some(S(2)));
        assert_eq!(
            changes(config.detectors.rules(), new.rules()),
            vec![
                "lock_wait 5s -> 1s".to_owned(),
                "rule added: comm = \"app\" -> off_cpu 2s".to_owned()
            ]
        );
        // Counted once the scan applies it (apply_pending needs the probes).
        assert!(!reloads(&metrics, "error"));
    }

    #[test]
    fn a_bad_file_is_refused_and_counted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("hangwatch.toml");
        std::fs::write(&path, "").expect("write");
        let config = started(&path, &[]);
        let (reload, metrics) = reload_of(&config);
        std::fs::write(&path, "[[rule]]\ncomm = \"app\"\noff_cpu = \"2 sekonds\"\n")
            .expect("write");
        assert!(reload.on_signal(SIGHUP));
        assert!(reload.take().is_none());
        assert!(reloads(&metrics, "error"));
        std::fs::remove_file(&path).expect("remove");
        assert!(reload.on_signal(SIGHUP));
        assert!(reload.take().is_none(), "an unreadable file is refused too");
    }

    #[test]
    fn settings_fixed_at_start_are_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("hangwatch.toml");
        std::fs::write(&path, "scan_interval = \"1s\"\n").expect("write");
        let before = started(&path, &[]);
        std::fs::write(&path, "scan_interval = \"2s\"\nlog_format = \"json\"\n").expect("write");
        let after = started(&path, &[]);
        assert_eq!(
            fixed_changes(&before, &after),
            vec!["scan_interval", "log_format"]
        );
        assert!(fixed_changes(&before, &before).is_empty());
    }

    #[test]
    fn rules_are_compared_by_what_they_do() {
        let file = |text: &str| {
            let file = ConfigFile::parse(text, "t.toml").expect("valid");
            RunArgs::default().merge(file).detectors.rules().clone()
        };
        let a = file("[[rule]]\ncomm = \"a\"\noff_cpu = \"1s\"\n");
        let moved = file("\n\n# a comment\n[[rule]]\ncomm = \"a\"\noff_cpu = \"1s\"\n");
        assert!(changes(&a, &moved).is_empty(), "{:?}", changes(&a, &moved));
        let b = file("lock_wait_threshold = \"off\"\n[[rule]]\ncomm = \"a\"\noff_cpu = \"3s\"\n");
        assert_eq!(
            changes(&a, &b),
            vec![
                "lock_wait 5s -> off".to_owned(),
                "rule removed: comm = \"a\" -> off_cpu 1s".to_owned(),
                "rule added: comm = \"a\" -> off_cpu 3s".to_owned(),
            ]
        );
    }
}
