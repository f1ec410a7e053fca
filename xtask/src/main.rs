//! `cargo xtask <task>`: set-up, build, run, test and bench hangwatch. See README.md.
//!
//! One module per task; the helpers they share are here.

mod bench;
mod build;
mod image;
mod man;
mod run;
mod setup;
mod test;
mod vmtest;

use std::{
    env,
    ffi::OsString,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Set-up, build, run, test and bench tasks for hangwatch")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (Debian packages, bpf-linker); quick when
    /// everything is there.
    Setup,
    /// Set up, then build the daemon (release unless --debug).
    Build(build::Args),
    /// Set up, build (release), then run target/release/hangwatch with ARGS, via sudo unless root.
    Run(run::Args),
    /// Set up, then run the whole test suite (release); kernel tests run only as root.
    Test(test::Args),
    /// Set up, build (release), then measure what hangwatch costs: throughput beside bare, the
    /// floor program and bpftrace; ns/run per program; the daemon's CPU and RSS; detection
    /// latency, also beside a mass hang and an mm-lock stall (as root). Writes
    /// target/bench/report.{json,md}.
    Bench(bench::Args),
    /// Set up, build (release), then build the container image of deploy/Containerfile with
    /// Podman on a base made by debootstrap, and check that it runs (as root).
    Image,
    /// Set up, build the kernel tests (release), then boot Debian's packaged kernel of a
    /// series (6.1, 6.12, host) under QEMU with virtme-ng and run them inside (as root).
    /// See docs/kernels.md.
    Vmtest(vmtest::Args),
    /// Set up, build (release), then write the man pages into target/man/ (hangwatch.1 and
    /// one page per subcommand).
    Man,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::setup(),
        Task::Build(args) => build::build(&args),
        Task::Run(args) => run::run(&args),
        Task::Test(args) => test::test(&args),
        Task::Bench(args) => bench::bench(&args),
        Task::Image => image::image(),
        Task::Vmtest(args) => vmtest::vmtest(&args),
        Task::Man => man::man(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A failed child (cargo test, the daemon) already said why: just pass its code on,
            // so its last line stays the last line of the output.
            if let Some(Failed(code)) = e.downcast_ref() {
                return ExitCode::from(*code);
            }
            eprintln!("xtask: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// A child process exited unsuccessfully (it has printed its own error); the exit code to pass on.
#[derive(Debug)]
struct Failed(u8);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exited with status {}", self.0)
    }
}

impl std::error::Error for Failed {}

/// The workspace root (xtask/..).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ has a parent")
        .to_path_buf()
}

/// Where cargo puts the workspace's build output.
fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// The cargo that runs this xtask, in the workspace root.
fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")));
    cmd.current_dir(workspace_root());
    cmd
}

/// Whether we run as root (the owner of /proc/self is the effective uid).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `$CARGO_HOME/bin`, else `~/.cargo/bin`.
fn cargo_bin() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|p| p.join("bin"))
}

/// `name` on PATH, else in the cargo bin directory.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(cargo_bin())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Runs `cmd`, inheriting stdio; a non-zero exit becomes [`Failed`].
fn status(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if status.success() {
        return Ok(());
    }
    match status.code() {
        Some(code) => Err(Failed(u8::try_from(code).unwrap_or(1)).into()),
        None => bail!("{cmd:?} was killed: {status}"),
    }
}
