//! `hangwatch check-config FILE`: reads a config file as `hangwatch run --config FILE`
//! would, and prints the effective settings and rules, or every problem as
//! `FILE:LINE:COL: reason` and a non-zero exit.
use std::{fmt::Write as _, path::PathBuf, process::ExitCode, time::Duration};

use clap::Args;

use super::run::RunArgs;
use crate::{
    config::{ConfigError, ConfigFile},
    daemon::Config,
    kind::{HangKind, Scope},
};

#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// The TOML file to check.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

pub fn run(args: &CheckConfigArgs) -> ExitCode {
    let file = match ConfigFile::load(&args.file) {
        Ok(file) => file,
        Err(ConfigError::Invalid(problems)) => {
            for problem in problems {
                eprintln!("{problem}");
            }
            return ExitCode::FAILURE;
        }
        Err(err @ ConfigError::Read { .. }) => {
            let source =
                std::error::Error::source(&err).map_or_else(String::new, |s| format!(": {s}"));
            eprintln!("hangwatch: error: {err}{source}");
            return ExitCode::FAILURE;
        }
    };
    let output = file.output;
    let config = RunArgs {
        config: Some(args.file.clone()),
        ..RunArgs::default()
    }
    .merge(file);
    print!("{}", render(&config, output.is_some()));
    ExitCode::SUCCESS
}

/// The effective configuration, as `run --config FILE` without other flags would use it.
fn render(config: &Config, output_set: bool) -> String {
    let mut out = String::new();
    let d = |d: Duration| humantime::format_duration(d).to_string();
    let file = config.config_file.as_deref().unwrap_or("-");
    let _ = writeln!(out, "{file}: ok\n\nsettings:");
    let output = if output_set {
        format!("{:?}", config.output).to_lowercase()
    } else {
        "text on a terminal, else json".to_owned()
    };
    for (key, value) in [
        ("scan_interval", d(config.scan_interval)),
        ("output", output),
        (
            "listen",
            config.listen.map_or("off".to_owned(), |a| a.to_string()),
        ),
        (
            "webhook",
            config
                .webhook
                .as_ref()
                .map_or("none".to_owned(), ToString::to_string),
        ),
        (
            "log_format",
            format!("{:?}", config.log_format).to_lowercase(),
        ),
        ("wakeup_probe", config.probes.wakeup.to_string()),
        ("futex_probes", config.probes.futex.to_string()),
        (
            "api.socket",
            config
                .expose
                .socket
                .as_ref()
                .map_or("off".to_owned(), |p| p.display().to_string()),
        ),
        (
            "api.socket_group",
            config.expose.socket_group.clone().unwrap_or("none".into()),
        ),
        (
            "api.cluster_listen",
            config
                .expose
                .cluster
                .as_ref()
                .map_or("off".to_owned(), |c| c.addr.to_string()),
        ),
        (
            "api.cluster_token_file",
            config
                .expose
                .cluster
                .as_ref()
                .and_then(|c| c.token_file.as_ref())
                .map_or("none".to_owned(), |p| p.display().to_string()),
        ),
        (
            "api.redact_kernel_addresses",
            config.expose.redaction.kernel_addresses.to_string(),
        ),
        (
            "api.redact_cmdline",
            config.expose.redaction.cmdline.to_string(),
        ),
    ] {
        let _ = writeln!(out, "  {key:<14} {value}");
    }
    let rules = config.detectors.rules();
    let _ = writeln!(out, "\nthresholds of every process, before rules:");
    for kind in HangKind::ALL {
        let value = match (rules.base[kind], kind.default_rule().scope) {
            (Some(t), _) => d(t),
            (None, Scope::Selected) => "off (on only where a rule selects the process)".into(),
            (None, Scope::Everywhere) => "off".into(),
        };
        let _ = writeln!(out, "  {:<14} {value}", kind.as_str());
    }
    if rules.rules.is_empty() {
        let _ = writeln!(out, "\nno rules");
        return out;
    }
    let _ = writeln!(
        out,
        "\nrules, in order (for each kind, the last rule matching a process wins):"
    );
    for (i, rule) in rules.rules.iter().enumerate() {
        let _ = writeln!(out, "  {:>2}. {}: {}", i + 1, rule.origin, rule.describe());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_the_base_thresholds_and_the_rules_in_order() {
        let file = ConfigFile::parse(
            "lock_wait_threshold = \"2s\"\n\n[[rule]]\ncomm = \"app*\"\noff_cpu = \"30s\"\nlock_wait = \"off\"\n",
            "t.toml",
        )
        .expect("valid");
        let config = RunArgs {
            config: Some("t.toml".into()),
            ..RunArgs::default()
        }
        .merge(file);
        let text = render(&config, false);
        assert!(text.starts_with("t.toml: ok"), "{text}");
        assert!(text.contains("  lock_wait      2s\n"), "{text}");
        assert!(text.contains("  d_state        10s\n"), "{text}");
        assert!(
            text.contains("  off_cpu        off (on only where"),
            "{text}"
        );
        assert!(
            text.contains("   1. t.toml:3: comm = \"app*\" -> off_cpu 30s, lock_wait off\n"),
            "{text}"
        );
    }
}
