//! `cargo xtask setup`: install what building and testing hangwatch need, if it is missing.
//! Idempotent, and quick when everything is there (it runs before every build, run and test).
//!
//! - Debian packages: Rust 1.96 with a prebuilt `core` for BPF and LLVM 22 (the eBPF toolchain,
//!   see docs/building.md), the tools the tests and the benchmark use, and, when the
//!   distribution has them, the benchmark's optional bpftrace and bpftool.
//! - bpf-linker 0.13, built against Debian's LLVM 22.
//! - A Python venv under target/ with the deploy/ validators from PyPI (kubernetes-validate,
//!   the Prometheus Operator's CRD models), for hangwatch/tests/deploy.rs.
//! - tracefs on /sys/kernel/tracing (when root).
//!
//! Without apt-get it only checks and prints what to install.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The eBPF toolchain: rustc 1.96 (LLVM 22) + core for bpfel/bpfeb, and LLVM 22 for bpf-linker.
const TOOLCHAIN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
];
/// What the tests run: a C compiler for the test programs (and libc.a for a -static one),
/// binutils (objcopy, strip, readelf: a stripped binary with a separate debug file),
/// python3, mkfs.ext4, fsfreeze, losetup, setpriv, unshare, mount; for deploy/: prometheus
/// and promtool (alert rules checked, unit-tested, and evaluated end to end), python3-venv
/// (the validators' venv); an idle JVM and an idle Go program are controls that the
/// deadlock rules must leave quiet (tests/kernel_ownerless.rs): default-jre-headless
/// (OpenJDK 17: 44 MB to download, 188 MB installed) and golang-go (Go 1.19, 81 MB to download, 464 MB
/// installed); nodejs runs a Node server stalled before the daemon starts
/// (tests/kernel_loops.rs: a loop recognized from libuv's `uv_run` in its stack), and
/// redis-server a Redis stalled the same way (its `aeMain` and `aeProcessEvents`, which
/// Debian's stripped binary keeps in its dynamic symbols).
const TEST_PACKAGES: &[&str] = &[
    "gcc",
    "libc6-dev",
    "binutils",
    "python3",
    "python3-venv",
    "e2fsprogs",
    "util-linux",
    "mount",
    "prometheus",
    "default-jre-headless",
    "golang-go",
    "nodejs",
    "redis-server",
];
/// What `cargo xtask bench` runs: perf (`perf bench sched pipe|messaging`).
const BENCH_PACKAGES: &[&str] = &["linux-perf"];
/// What `cargo xtask bench` uses if it is there: bpftrace (the comparison with a bpftrace
/// script) and bpftool (the names of its programs). Installed when apt knows them; their
/// absence or a failed install is only a warning.
const OPTIONAL_BENCH_PACKAGES: &[&str] = &["bpftrace", "bpftool"];
/// Commands the tests and the benchmark need, checked on machines without dpkg.
const TEST_TOOLS: &[&str] = &[
    "perf",
    "gcc",
    "python3",
    "java",
    "go",
    "node",
    "redis-server",
    "mkfs.ext4",
    "fsfreeze",
    "losetup",
    "setpriv",
    "unshare",
    "chroot",
    "objcopy",
    "strip",
    "readelf",
    "mount",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_BPF_CORE: &str = "/usr/lib/rustlib/bpfel-unknown-none";

pub fn setup() -> Result<()> {
    if crate::find_program("apt-get").is_some() && crate::find_program("dpkg-query").is_some() {
        apt_install()?;
    } else {
        check_non_debian()?;
    }
    bpf_linker()?;
    tracefs();
    test_venv()?;
    Ok(())
}

/// The Python packages the tests use beyond the standard library, pinned, from PyPI:
/// gevent (for its event loop), and what deploy/tests/validate.py imports (the bundled
/// Kubernetes schemas, 1.25 to 1.37, and the models generated from the Prometheus
/// Operator's CRDs).
const TEST_PYTHON_PACKAGES: &[&str] = &[
    "gevent==26.9.0",
    "kubernetes-validate==1.37.0",
    "cloudcoil-models-prometheus-operator==0.80.1.0",
];

/// A virtualenv of Debian's python3 (not whichever python3 comes first on PATH) with
/// [`TEST_PYTHON_PACKAGES`], under target/, made once: a marker file names what it holds.
/// `cargo xtask test` hands it to the tests (`HANGWATCH_TEST_VENV_PYTHON`,
/// `HANGWATCH_DEPLOY_VENV`).
fn test_venv() -> Result<()> {
    python_venv(&test_venv_dir(), TEST_PYTHON_PACKAGES)
}

/// Makes `venv`, a virtualenv of Debian's python3 holding `packages` (pinned, from PyPI),
/// unless its marker file says it already holds exactly those.
pub fn python_venv(venv: &Path, packages: &[&str]) -> Result<()> {
    let marker = venv.join(".hangwatch-packages");
    let wanted = packages.join(" ");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == wanted)
        && venv.join("bin/python").is_file()
    {
        return Ok(());
    }
    eprintln!("xtask setup: making {} with {wanted}", venv.display());
    crate::status(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv", "--clear"])
            .arg(venv),
    )
    .context("cannot make a Python virtualenv (Debian package python3-venv)")?;
    crate::status(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(packages),
    )
    .with_context(|| format!("cannot install {wanted} from PyPI into {}", venv.display()))?;
    std::fs::write(&marker, wanted + "\n").context("writing the venv's marker")?;
    Ok(())
}

/// The tests' virtualenv.
pub fn test_venv_dir() -> PathBuf {
    crate::target_dir().join("test-venv")
}

/// Installs the missing Debian packages (one `apt-get update`, then one `apt-get install`).
fn apt_install() -> Result<()> {
    let wanted: Vec<&str> = TOOLCHAIN_PACKAGES
        .iter()
        .chain(TEST_PACKAGES)
        .chain(BENCH_PACKAGES)
        .copied()
        .collect();
    let missing = missing_packages(&wanted)?;
    // Only the optional packages this machine's apt knows (without an `apt-get update`, so
    // that a distribution without them costs nothing on every run).
    // Nor those whose install failed here before (remembered in target/).
    let failed_marker = crate::target_dir().join(".xtask-setup-optional-failed");
    let failed_before = std::fs::read_to_string(&failed_marker).unwrap_or_default();
    let optional: Vec<&str> = missing_packages(OPTIONAL_BENCH_PACKAGES)?
        .into_iter()
        .filter(|p| !failed_before.split_whitespace().any(|f| f == *p) && has_candidate(p))
        .collect();
    if missing.is_empty() && optional.is_empty() {
        return Ok(());
    }
    let all: Vec<&str> = missing.iter().chain(&optional).copied().collect();
    eprintln!("xtask setup: installing {}", all.join(" "));
    apt(&["update"])?;
    if !missing.is_empty() {
        let mut install = vec!["install", "-y", "--no-install-recommends"];
        install.extend(&missing);
        apt(&install).context(
            "installing the packages failed; on a release without rustc-web or llvm-22-dev use \
             rustup nightly instead (docs/building.md)",
        )?;
    }
    if !optional.is_empty() {
        let mut install = vec!["install", "-y", "--no-install-recommends"];
        install.extend(&optional);
        if let Err(e) = apt(&install) {
            eprintln!(
                "xtask setup: warning: could not install {} ({e}); `cargo xtask bench` skips what \
                 needs them (not retried until {} is removed)",
                optional.join(" "),
                failed_marker.display()
            );
            let _ = std::fs::create_dir_all(crate::target_dir());
            let _ = std::fs::write(&failed_marker, optional.join(" ") + "\n");
        }
    }
    Ok(())
}

/// Whether apt has a version of `package` to install.
fn has_candidate(package: &str) -> bool {
    Command::new("apt-cache")
        .args(["policy", package])
        .output()
        .is_ok_and(|out| {
            String::from_utf8_lossy(&out.stdout).lines().any(|l| {
                l.trim()
                    .strip_prefix("Candidate:")
                    .is_some_and(|c| c.trim() != "(none)")
            })
        })
}

/// `apt-get ARGS`, non-interactive, as root (through sudo when we are not).
pub fn apt(args: &[&str]) -> Result<()> {
    let mut cmd = if crate::is_root() {
        Command::new("env")
    } else {
        if crate::find_program("sudo").is_none() {
            bail!(
                "`apt-get {}` needs root, and there is no sudo",
                args.join(" ")
            );
        }
        let mut cmd = Command::new("sudo");
        cmd.arg("env");
        cmd
    };
    cmd.args(["DEBIAN_FRONTEND=noninteractive", "apt-get"])
        .args(args);
    crate::status(&mut cmd).with_context(|| format!("`apt-get {}` failed", args.join(" ")))
}

/// Installs those of `packages` that are missing (for a task's own needs, such as `image`).
pub fn install_missing(packages: &[&str]) -> Result<()> {
    let missing = missing_packages(packages)?;
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask setup: installing {}", missing.join(" "));
    apt(&["update"])?;
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(&missing);
    apt(&install)
}

/// The packages of `wanted` that dpkg does not list as installed.
fn missing_packages<'a>(wanted: &[&'a str]) -> Result<Vec<&'a str>> {
    // Exits non-zero when it knows nothing of some package; the others are still listed.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Status}\\n"])
        .args(wanted)
        .output()
        .context("failed to run dpkg-query")?;
    let listed = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, status)| *status == "installed")
        // Multi-arch packages are listed as name:arch.
        .map(|(name, _)| name.split(':').next().unwrap_or(name))
        .collect();
    Ok(wanted
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect())
}

/// Without apt-get: say what is missing; fail only if the eBPF programs can't be built.
fn check_non_debian() -> Result<()> {
    let debian = Path::new(DEBIAN_RUSTC).is_file() && Path::new(DEBIAN_BPF_CORE).is_dir();
    let toolchain_ok = debian || nightly_with_rust_src();
    let tools: Vec<&str> = TEST_TOOLS
        .iter()
        .copied()
        .filter(|t| find_tool(t).is_none())
        .collect();
    if !tools.is_empty() {
        eprintln!(
            "xtask setup: warning: some tests or the benchmark need these commands, which are \
             missing: {} (packages: gcc, libc6-dev, binutils, python3, e2fsprogs, util-linux, perf)",
            tools.join(" ")
        );
    }
    if !toolchain_ok {
        bail!(
            "no apt-get here, so install the eBPF toolchain yourself: rustup nightly with the \
             rust-src component:\n\
             \x20   rustup toolchain install nightly --component rust-src\n\
             \x20 and bpf-linker, built against an LLVM of the same major version as that \
             nightly's (`rustc +nightly -vV`):\n\
             \x20   cargo install bpf-linker   (see https://github.com/aya-rs/bpf-linker)\n\
             (or Debian's {} with {BPF_LINKER_VERSION} of bpf-linker for LLVM 22)",
            TOOLCHAIN_PACKAGES.join(" ")
        );
    }
    Ok(())
}

/// Whether `rustup run nightly` has the rust-src component (for `-Z build-std=core`).
fn nightly_with_rust_src() -> bool {
    let Some(rustup) = crate::find_program("rustup") else {
        return false;
    };
    let Ok(out) = Command::new(rustup)
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .env("RUSTUP_AUTO_INSTALL", "0")
        .output()
    else {
        return false;
    };
    out.status.success()
        && Path::new(String::from_utf8_lossy(&out.stdout).trim())
            .join("lib/rustlib/src/rust/library/core")
            .is_dir()
}

/// `name` on PATH or in the sbin directories (not always on a user's PATH).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    crate::find_program(name).or_else(|| {
        ["/usr/sbin", "/sbin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.is_file())
    })
}

/// Installs bpf-linker 0.13 (for Debian's LLVM 22) unless `bpf-linker --version` says 0.13.x.
fn bpf_linker() -> Result<()> {
    let current = crate::find_program("bpf-linker").and_then(|p| {
        let out = Command::new(p).arg("--version").output().ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    let want = BPF_LINKER_VERSION
        .rsplit_once('.')
        .map_or(BPF_LINKER_VERSION, |(m, _)| m);
    if current
        .as_deref()
        .is_some_and(|v| v.starts_with(&format!("bpf-linker {want}.")))
    {
        return Ok(());
    }
    if !Path::new(LLVM_PREFIX).join("bin/llvm-config").is_file() {
        // Not the Debian toolchain: its bpf-linker must match the nightly's LLVM, which we
        // don't guess. Any bpf-linker will do for build.rs; it says so if there is none.
        if current.is_none() {
            eprintln!(
                "xtask setup: warning: bpf-linker is missing: `cargo install bpf-linker`, built \
                 against the LLVM of your rustc (see https://github.com/aya-rs/bpf-linker)"
            );
        }
        return Ok(());
    }
    eprintln!(
        "xtask setup: installing bpf-linker {BPF_LINKER_VERSION} for LLVM 22 (was: {}; takes about a minute)",
        current.as_deref().unwrap_or("not installed")
    );
    let mut cmd = crate::cargo();
    cmd.args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX);
    crate::status(&mut cmd).context("`cargo install bpf-linker` failed")
}

/// Mounts tracefs at /sys/kernel/tracing if it isn't and we are root (the daemon does too).
fn tracefs() {
    const TRACING: &str = "/sys/kernel/tracing";
    if !crate::is_root() || Path::new(TRACING).join("events").is_dir() {
        return;
    }
    let mounted = std::fs::read_to_string("/proc/self/mounts")
        .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(TRACING)));
    if mounted {
        return;
    }
    let ok = Command::new("mount")
        .args(["-t", "tracefs", "nodev", TRACING])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("xtask setup: warning: could not mount tracefs on {TRACING}");
    }
}
