//! Harness for the real-kernel tests: builds the C test programs, runs them and the
//! daemon under RAII guards, and collects the daemon's JSON events.
//!
//! Every process started here is killed by pid when its guard drops, also on panic.
//! When a test panics, the daemon guard prints the daemon's command line, its stderr and
//! every event it emitted, so a failure can be read without re-running.
//!
//! One file per concern; everything is re-exported here, so a test writes `use common::*;`.
//! - `system.rs`: root, tools on PATH, /proc reads of a task;
//! - `process.rs`: the [`Program`] guard, signals, bounded waits, commands run to completion;
//! - `programs.rs`: the C, Rust and Go programs and Python scripts of `tests/programs/`, the
//!   examples;
//! - `daemon.rs`: the [`Daemon`] guard (`hangwatch run`), its events, stderr and listeners;
//! - `events.rs`: event accessors and the invariants of every episode;
//! - `abba.rs`: the ABBA deadlock program several tests share;
//! - `controls.rs`: the healthy idioms that look stuck (`IdleControls`), started together;
//! - `servers.rs`: the event-loop servers (asyncio, gevent, Node, tokio, Redis) of the loop
//!   tests and of the quiet controls;
//! - `http.rs`, `cli.rs`, `webhook.rs`: the API's clients and a webhook receiver;
//! - `deploy.rs`: `deploy/` and its Prometheus rules;
//! - `frozen.rs`, `fuse.rs`, `kube.rs` (as modules: `common::kube::ApiServer`): a frozen ext4
//!   mount, a stalled FUSE filesystem, a Kubernetes API server and test cgroups.
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the harness"
)]

mod abba;
mod cli;
mod controls;
mod daemon;
mod deploy;
mod events;
pub mod frozen;
pub mod fuse;
mod http;
pub mod kube;
mod process;
mod programs;
mod servers;
mod system;
mod webhook;

pub use serde_json::Value;

#[allow(
    unused_imports,
    reason = "each test binary uses a different subset of the re-exports"
)]
pub use self::{
    abba::*, cli::*, controls::*, daemon::*, deploy::*, events::*, http::*, process::*,
    programs::*, servers::*, system::*, webhook::*,
};

/// The daemon binary under test.
pub const HANGWATCH: &str = env!("CARGO_BIN_EXE_hangwatch");
