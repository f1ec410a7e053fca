//! The daemon's own log on stderr: readable lines for a terminal (`--log-format text`), or
//! one JSON object per line for a log pipeline (`--log-format json`, docs/operations.md
//! lists the fields). Events stay on stdout either way.
//!
//! The daemon (and its unwinder helper) never writes stderr from the thread that logs:
//! lines go through a bounded queue to a writer thread of their own (`stderr_queue`), so a
//! stderr nobody reads (a stopped pipeline, a full pipe) costs dropped lines, counted,
//! never a stalled detection loop. The CLI commands write stderr directly.
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

mod stderr_queue;

pub use self::stderr_queue::{dropped_lines, finish};

/// How long the last log lines may take to reach stderr at exit: a stderr that does not
/// drain loses them rather than delay the exit (SIGTERM's 1 s).
pub const FLUSH_AT_EXIT: std::time::Duration = std::time::Duration::from_millis(200);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-11-25T22:06:41.123456Z  INFO message`, coloured on a terminal.
    #[default]
    Text,
    /// `{"timestamp":"...","level":"INFO","message":"...","target":"hangwatch::daemon"}`.
    Json,
}

/// The format set up first, for the daemon's helper processes to log alike.
static FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// The environment variable that tells a helper process the daemon's log format.
pub const FORMAT_ENV: &str = "HANGWATCH_LOG_FORMAT";

/// The value of [`FORMAT_ENV`] for a helper of this process.
pub fn format_for_helpers() -> &'static str {
    match FORMAT.get().copied().unwrap_or_default() {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    }
}

/// The format a helper process was told ([`FORMAT_ENV`]), text if none.
pub fn format_of_helper() -> LogFormat {
    match std::env::var(FORMAT_ENV).as_deref() {
        Ok("json") => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

/// Where the log is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// Straight to stderr, by the thread that logs (the CLI commands).
    Direct,
    /// Through the bounded queue of a writer thread (the daemon and its helper): call
    /// [`finish`] before exiting, or the last lines may be lost.
    Queued,
}

/// Sets up the log. A second call keeps the first set-up (a fatal error after start logs
/// through it).
pub fn init(format: LogFormat, writer: Writer) {
    let _ = FORMAT.set(format);
    // kube's client logs every non-2xx answer at ERROR (a pod proxy's 503, a watch's
    // expiry), which hangwatch reports itself in context.
    let filter = EnvFilter::try_from_env("HANGWATCH_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,kube_client=off"));
    let writer = match writer {
        Writer::Direct => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
        Writer::Queued => match stderr_queue::start() {
            Ok(queue) => tracing_subscriber::fmt::writer::BoxMakeWriter::new(queue),
            Err(err) => {
                eprintln!(
                    "hangwatch: cannot start the log's writer thread ({err}): logging to stderr directly"
                );
                tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr)
            }
        },
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_env_filter(filter);
    let _already_set = match format {
        LogFormat::Text => builder
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        // The message and any fields at the top level (not under "fields"), no span
        // context (the daemon logs outside spans): flat objects a pipeline indexes as is.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_target(true)
            .with_ansi(false)
            .try_init(),
    };
}

/// Logs the error that stops the daemon: one plain `hangwatch: error: ...` line, or a JSON
/// log line at ERROR in JSON mode (which also covers errors before logging was set up,
/// such as a refused config file).
pub fn fatal(format: LogFormat, message: &str) {
    match format {
        LogFormat::Text => {
            // After the lines logged before it.
            finish(std::time::Instant::now() + FLUSH_AT_EXIT);
            eprintln!("hangwatch: error: {message}");
        }
        LogFormat::Json => {
            init(format, Writer::Queued);
            tracing::error!("{message}");
        }
    }
}
