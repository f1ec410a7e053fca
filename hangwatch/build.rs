//! Builds the eBPF programs (`hangwatch-ebpf`, a separate crate for `bpfel-unknown-none`) and
//! puts the object at `$OUT_DIR/hangwatch-ebpf.o`, where `src/` embeds it with
//! `aya::include_bytes_aligned!`.
//!
//! Two toolchains can build it (docs/building.md):
//! 1. Debian's `rustc-web` + `libstd-rust-web-dev-bpf`, which ship a prebuilt `core` for BPF:
//!    `/usr/bin/cargo` with `RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1`, no `build-std`.
//! 2. rustup `nightly` with the `rust-src` component: `-Z build-std=core`.
//!
//! Either needs `bpf-linker`. `cargo xtask setup` installs everything on Debian.
//!
//! Environment:
//! - `HANGWATCH_EBPF_OBJECT=/path/to/hangwatch-ebpf.o`: use this prebuilt object, build nothing.
//! - `HANGWATCH_DEBIAN_RUSTC` (default `/usr/bin/rustc`): the Debian rustc; empty disables (1).
//! - `HANGWATCH_RUSTUP_TOOLCHAIN` (default `nightly`): the rustup toolchain for (2).

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};

const EBPF_PACKAGE: &str = "hangwatch-ebpf";
const OBJECT_NAME: &str = "hangwatch-ebpf.o";
const ENV_OBJECT: &str = "HANGWATCH_EBPF_OBJECT";
const ENV_DEBIAN_RUSTC: &str = "HANGWATCH_DEBIAN_RUSTC";
const ENV_RUSTUP_TOOLCHAIN: &str = "HANGWATCH_RUSTUP_TOOLCHAIN";
const DEBIAN_PACKAGES: &str = "rustc-web cargo-web libstd-rust-web-dev-bpf llvm-22-dev";
const BPF_LINKER_INSTALL: &str = "LLVM_PREFIX=/usr/lib/llvm-22 LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 \
     cargo install bpf-linker --version 0.13.0 --no-default-features --features llvm-22";

fn main() {
    // Not `main() -> Result`: that would print a backtrace under RUST_BACKTRACE=1.
    if let Err(e) = run() {
        eprintln!("error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let dst = out_dir.join(OBJECT_NAME);

    for var in [ENV_OBJECT, ENV_DEBIAN_RUSTC, ENV_RUSTUP_TOOLCHAIN] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    if let Some(prebuilt) = env::var_os(ENV_OBJECT).filter(|v| !v.is_empty()) {
        let prebuilt = PathBuf::from(prebuilt);
        println!("cargo:rerun-if-changed={}", prebuilt.display());
        fs::copy(&prebuilt, &dst).with_context(|| {
            format!(
                "{ENV_OBJECT}: copying {} to {}",
                prebuilt.display(),
                dst.display()
            )
        })?;
        return Ok(());
    }

    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let workspace = manifest_dir
        .parent()
        .context("hangwatch/ has no parent directory")?
        .to_path_buf();
    let ebpf_dir = workspace.join(EBPF_PACKAGE);
    for file in ["src", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", ebpf_dir.join(file).display());
    }

    let target = bpf_target()?;
    let bpf_target_arch = bpf_target_arch()?;
    let toolchain = find_toolchain(&target)?;
    let linker_dir = find_bpf_linker()?;

    // One target dir for every profile of the outer build (the eBPF side is always --release),
    // separate from the outer one so the two cargos don't wait on each other's lock.
    let target_dir = match env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        // A relative CARGO_TARGET_DIR is relative to where cargo was started; assume the
        // workspace root (build scripts run in the package directory and can't know).
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    }
    .join("ebpf");

    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{bpf_target_arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ];
    let mut cmd = match &toolchain {
        Toolchain::Debian { cargo, .. } => {
            let mut cmd = Command::new(cargo);
            cmd.arg("build");
            cmd
        }
        Toolchain::Rustup { rustup, name } => {
            let mut cmd = Command::new(rustup);
            cmd.args(["run", name, "cargo", "build", "-Z", "build-std=core"]);
            cmd
        }
    };
    clean_env(&mut cmd);
    if let Toolchain::Debian { rustc, .. } = &toolchain {
        cmd.env("RUSTC", rustc).env("RUSTC_BOOTSTRAP", "1");
    }
    cmd.current_dir(&ebpf_dir)
        .arg("--manifest-path")
        .arg(ebpf_dir.join("Cargo.toml"))
        .args(["--release", "--bin", EBPF_PACKAGE, "--target", &target])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"))
        .env("PATH", path_with(&linker_dir));

    let output = cmd
        .output()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    if !output.status.success() {
        for line in String::from_utf8_lossy(&output.stderr).lines() {
            println!("cargo:warning={line}");
        }
        let mut shown = format!("RUSTFLAGS='{}' ", rustflags.join(" "));
        if let Toolchain::Debian { rustc, .. } = &toolchain {
            shown.push_str(&format!("RUSTC={} RUSTC_BOOTSTRAP=1 ", rustc.display()));
        }
        shown.push_str(&cmd.get_program().to_string_lossy());
        for arg in cmd.get_args() {
            shown.push(' ');
            shown.push_str(&arg.to_string_lossy());
        }
        bail!(
            "building the eBPF programs failed ({}); the eBPF cargo's output is above.\n\
             command (in {}): {shown}",
            output.status,
            ebpf_dir.display()
        );
    }

    let built = target_dir.join(&target).join("release").join(EBPF_PACKAGE);
    fs::copy(&built, &dst)
        .with_context(|| format!("copying {} to {}", built.display(), dst.display()))?;
    Ok(())
}

enum Toolchain {
    Debian { rustc: PathBuf, cargo: PathBuf },
    Rustup { rustup: PathBuf, name: String },
}

/// `bpfel-unknown-none` or `bpfeb-unknown-none`, following the endianness of the host target.
fn bpf_target() -> Result<String> {
    let endian = env::var("CARGO_CFG_TARGET_ENDIAN").context("CARGO_CFG_TARGET_ENDIAN not set")?;
    match endian.as_str() {
        "little" => Ok("bpfel-unknown-none".into()),
        "big" => Ok("bpfeb-unknown-none".into()),
        other => bail!("unsupported target endianness {other:?}"),
    }
}

/// The `bpf_target_arch` cfg aya-ebpf uses to pick the kernel's register layout.
fn bpf_target_arch() -> Result<String> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    match arch.as_str() {
        "x86_64" | "aarch64" => Ok(arch),
        a if a.starts_with("riscv64") => Ok("riscv64".into()),
        other => {
            println!(
                "cargo:warning=hangwatch is tested on x86_64 and aarch64 only; building the eBPF \
                 programs for bpf_target_arch={other:?}"
            );
            Ok(arch)
        }
    }
}

fn find_toolchain(target: &str) -> Result<Toolchain> {
    // (a) Debian's rustc-web with the prebuilt core for BPF.
    let debian_rustc = match env::var_os(ENV_DEBIAN_RUSTC) {
        Some(v) => PathBuf::from(v),
        None => PathBuf::from("/usr/bin/rustc"),
    };
    let debian_sysroot = debian_rustc.parent().and_then(Path::parent);
    let debian_core = debian_sysroot.map(|s| s.join("lib/rustlib").join(target));
    let debian_cargo = debian_rustc.with_file_name("cargo");
    let debian_note = if debian_rustc.as_os_str().is_empty() {
        format!("disabled by {ENV_DEBIAN_RUSTC}=\"\"")
    } else if !debian_rustc.is_file() {
        format!("{} not found", debian_rustc.display())
    } else if !debian_core.as_deref().is_some_and(Path::is_dir) {
        format!(
            "{} found, but not {}",
            debian_rustc.display(),
            debian_core
                .as_deref()
                .unwrap_or(Path::new("<sysroot>/lib/rustlib"))
                .display()
        )
    } else if !debian_cargo.is_file() {
        format!(
            "{} found, but not {}",
            debian_rustc.display(),
            debian_cargo.display()
        )
    } else {
        return Ok(Toolchain::Debian {
            rustc: debian_rustc,
            cargo: debian_cargo,
        });
    };

    // (b) rustup nightly with rust-src, for -Z build-std=core.
    let name = env::var(ENV_RUSTUP_TOOLCHAIN).unwrap_or_else(|_| "nightly".into());
    let rustup_note = match find_program("rustup") {
        None => "rustup not found".to_owned(),
        Some(rustup) => {
            let sysroot = Command::new(&rustup)
                .args(["run", &name, "rustc", "--print", "sysroot"])
                .env("RUSTUP_AUTO_INSTALL", "0")
                .env_remove("RUSTUP_TOOLCHAIN")
                .output();
            match sysroot {
                Ok(out) if out.status.success() => {
                    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
                        return Ok(Toolchain::Rustup { rustup, name });
                    }
                    format!("rustup toolchain `{name}` found, but without the rust-src component")
                }
                Ok(_) => format!("rustup toolchain `{name}` not installed"),
                Err(e) => format!("running `rustup run {name} rustc` failed: {e}"),
            }
        }
    };

    bail!(
        "\n\
         No toolchain that can build hangwatch's eBPF programs (target {target}) was found.\n\
         On Debian/Ubuntu, run `cargo xtask setup`: it installs everything needed. Otherwise install ONE of:\n\
         \x20 (a) Debian's Rust with a prebuilt core for BPF:\n\
         \x20       sudo apt-get install {DEBIAN_PACKAGES}\n\
         \x20     [checked: {debian_note}]\n\
         \x20 (b) rustup nightly with the rust-src component:\n\
         \x20       rustup toolchain install {name} --component rust-src\n\
         \x20     [checked: {rustup_note}]\n\
         and bpf-linker (`{BPF_LINKER_INSTALL}` for (a); `cargo install bpf-linker` built against \
         the LLVM of your nightly for (b)).\n\
         Or point {ENV_OBJECT} at a prebuilt hangwatch-ebpf.o to skip this build.\n"
    )
}

/// The directory holding `bpf-linker` (on PATH or in ~/.cargo/bin); rustc runs it by name.
fn find_bpf_linker() -> Result<PathBuf> {
    let found = find_program("bpf-linker").ok_or_else(|| {
        anyhow!(
            "\n\
             bpf-linker, the linker for hangwatch's eBPF programs, was found neither on PATH nor \
             in {}.\n\
             Run `cargo xtask setup`, or install it:\n\
             \x20 {BPF_LINKER_INSTALL}\n\
             (that is for Debian's llvm-22-dev; with rustup nightly, `cargo install bpf-linker` \
             built against the LLVM of your nightly).\n",
            cargo_bin().map_or("~/.cargo/bin".into(), |p| p.display().to_string())
        )
    })?;
    Ok(found.parent().map(Path::to_path_buf).unwrap_or_default())
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

/// PATH with `dir` in front (so the child's rustc finds bpf-linker).
fn path_with(dir: &Path) -> OsString {
    let path = env::var_os("PATH").unwrap_or_default();
    let dirs = std::iter::once(dir.to_path_buf()).chain(env::split_paths(&path));
    env::join_paths(dirs).unwrap_or(path)
}

/// Removes what the outer cargo (or the user) set that would change how the inner cargo builds:
/// the compiler and its wrappers, flags, the target/profile/build configuration. Keeps what
/// only says where and how to fetch (CARGO_HOME, network, registries) and the jobserver.
fn clean_env(cmd: &mut Command) {
    const KEEP: &[&str] = &[
        "CARGO_HOME",
        "CARGO_MAKEFLAGS",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
        "CARGO_TERM_",
    ];
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let drop = key.starts_with("RUSTC")
            || key.starts_with("RUSTDOC")
            || key == "RUSTFLAGS"
            || key == "RUSTUP_TOOLCHAIN"
            || (key.starts_with("CARGO_") && !KEEP.iter().any(|k| key.starts_with(k)))
            || key == "CARGO";
        if drop {
            cmd.env_remove(key);
        }
    }
}
