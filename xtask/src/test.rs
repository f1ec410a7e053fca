//! `cargo xtask test [-- <cargo test args>]`: the whole test suite, in release (the daemon under
//! test must be fast). Tests that need root are `#[ignore = "needs root ..."]`; they run when we
//! are root.

use std::ffi::OsString;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Extra arguments for `cargo test`, after `--`; test-harness arguments after a second `--`
    /// (e.g. `cargo xtask test -- stall -- --nocapture`).
    #[arg(raw = true)]
    args: Vec<OsString>,
}

pub fn test(args: &Args) -> Result<()> {
    crate::setup::setup()?;

    let mut cmd = crate::cargo();
    // Every test binary runs even after one fails: a red CI run then shows every failure,
    // not only the first binary's (`cargo test` stops there by default).
    cmd.args(["test", "--workspace", "--release", "--no-fail-fast"]);
    // The tests' virtualenv: gevent's python for the event-loop tests, and the deploy/
    // validators for hangwatch/tests/deploy.rs (set, it makes their absence a failure
    // instead of a skip).
    let venv = crate::setup::test_venv_dir();
    cmd.env("HANGWATCH_TEST_VENV_PYTHON", venv.join("bin/python"));
    cmd.env("HANGWATCH_DEPLOY_VENV", &venv);
    let (cargo_args, harness_args) = match args.args.iter().position(|a| a == "--") {
        Some(i) => (&args.args[..i], &args.args[i + 1..]),
        None => (&args.args[..], &[][..]),
    };
    cmd.args(cargo_args).arg("--");
    if crate::is_root() {
        cmd.arg("--include-ignored");
    } else {
        eprintln!(
            "xtask: not root: the kernel tests (#[ignore = \"needs root\"]) are skipped; run them \
             with `sudo -E env PATH=\"$PATH\" cargo xtask test`"
        );
    }
    cmd.args(harness_args);
    crate::status(&mut cmd)
}
