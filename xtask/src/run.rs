//! `cargo xtask run -- <args>`: build the daemon (release) and run it, as root.

use std::{ffi::OsString, os::unix::process::CommandExt as _, process::Command};

use anyhow::{Result, bail};

#[derive(clap::Args)]
pub struct Args {
    /// Arguments for hangwatch, after `--` (e.g. `cargo xtask run -- run --pid 1234`).
    #[arg(raw = true)]
    args: Vec<OsString>,
}

pub fn run(args: &Args) -> Result<()> {
    crate::setup::setup()?;
    crate::build::build_daemon(true)?;

    let daemon = crate::target_dir().join("release").join("hangwatch");
    let mut cmd = if crate::is_root() {
        Command::new(&daemon)
    } else {
        // Loading eBPF programs needs root (CAP_BPF, CAP_PERFMON, ...).
        if crate::find_program("sudo").is_none() {
            bail!("hangwatch needs root and sudo is not installed: run this as root");
        }
        eprintln!("xtask: not root, running hangwatch with sudo -E");
        let mut cmd = Command::new("sudo");
        cmd.arg("-E").arg(&daemon);
        cmd
    };
    cmd.args(&args.args);
    // exec: the daemon gets the terminal's signals (Ctrl-C) directly and its exit code is ours.
    let err = cmd.exec();
    bail!("failed to run {cmd:?}: {err}")
}
