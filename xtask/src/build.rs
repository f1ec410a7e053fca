//! `cargo xtask build [--debug]`.

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Build the dev profile instead of release (the eBPF side is always optimized).
    #[arg(long)]
    debug: bool,
}

pub fn build(args: &Args) -> Result<()> {
    crate::setup::setup()?;
    build_daemon(!args.debug)
}

/// `cargo build -p hangwatch`, in release unless `release` is false.
pub fn build_daemon(release: bool) -> Result<()> {
    let mut cmd = crate::cargo();
    cmd.args(["build", "--package", "hangwatch"]);
    if release {
        cmd.arg("--release");
    }
    crate::status(&mut cmd)
}
