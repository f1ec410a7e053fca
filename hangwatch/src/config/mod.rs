//! The configuration file and the rules.
//!
//! - `file.rs`: `hangwatch run --config FILE`, parsed with serde (every key of the file,
//!   unknown keys refused), its errors located as `FILE:LINE:COL: reason`.
//! - `rules.rs`: `[[rule]]` tables as the daemon uses them: which processes a rule selects
//!   (pid, comm, exe, cgroup) and the threshold it sets per hang kind, or `off`.
//! - SIGHUP reloads the file (`daemon/reload.rs`: it wires the daemon's parts, so it lives
//!   with them).
//! - `value.rs`: the values a flag and its config twin share (durations, "off", addresses),
//!   parsed by one function each so that both say the same thing about a bad one.
//!
//! Precedence, lowest first: the defaults (MISSION.md), the file's top-level keys, the
//! command-line flags given explicitly. Per process, `[[rule]]` tables then refine the
//! thresholds in file order, the last matching rule winning for each kind it sets; the
//! `pid`/`comm` selections (`--pid`, `--comm` or their keys) act as rules after them.
mod file;
mod rules;
mod value;

pub use self::{
    file::{ConfigError, ConfigFile, ExposeFile},
    rules::{CgroupPattern, Pattern, Process, Rule, Rules, Selector, Setting},
    value::{
        Listen, OutputFormat, SocketPath, WebhookUrl, parse_duration, parse_listen,
        parse_scan_interval, parse_setting, parse_socket, parse_webhook,
    },
};
