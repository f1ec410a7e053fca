//! `cargo xtask image`: builds the container image of `deploy/Containerfile` with Podman and
//! checks that it runs (`hangwatch --version`). No registry is needed: the base is made from
//! Debian's packages with debootstrap (the release this machine builds on, whose glibc the
//! binary links), imported once as `localhost/debian:<suite>-slim`.
//!
//! Podman runs the image with runc: crun refuses a hybrid cgroup layout (this project's
//! machines have one). The build is repeatable: the base is made once, the image rebuilt each
//! time from the current release binary.
use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

/// What building the image needs besides the project's own set-up.
const IMAGE_PACKAGES: &[&str] = &["podman", "runc", "debootstrap"];
const MIRROR: &str = "http://deb.debian.org/debian";

pub fn image() -> Result<()> {
    crate::setup::setup()?;
    crate::setup::install_missing(IMAGE_PACKAGES)?;
    crate::build::build_daemon(true)?;

    let suite = debian_suite()?;
    let base = format!("localhost/debian:{suite}-slim");
    let dir = crate::target_dir().join("image");
    if !podman_ok(&["image", "exists", &base]) {
        let rootfs = dir.join(format!("rootfs-{suite}"));
        let _ = fs::remove_dir_all(&rootfs);
        fs::create_dir_all(&dir)?;
        eprintln!("xtask image: making the base {base} with debootstrap ({suite}, minbase)");
        crate::status(
            Command::new("debootstrap")
                .args(["--variant=minbase", &suite])
                .arg(&rootfs)
                .arg(MIRROR),
        )
        .context("debootstrap failed")?;
        let script = format!(
            "tar -C '{}' -c . | podman import - {base}",
            rootfs.display()
        );
        crate::status(Command::new("sh").args(["-c", &script])).context("podman import failed")?;
        let _ = fs::remove_dir_all(&rootfs);
    }

    // A context holding only the binary (the Containerfile copies target/release/hangwatch).
    let context = dir.join("context");
    let _ = fs::remove_dir_all(&context);
    fs::create_dir_all(context.join("target/release"))?;
    fs::copy(
        crate::target_dir().join("release/hangwatch"),
        context.join("target/release/hangwatch"),
    )
    .context("copying target/release/hangwatch")?;
    let version = env!("CARGO_PKG_VERSION");
    let tag = format!("localhost/hangwatch:{version}");
    let containerfile = crate::workspace_root().join("deploy/Containerfile");
    crate::status(
        Command::new("podman")
            .args(["build", "--network", "none", "--build-arg"])
            .arg(format!("BASE={base}"))
            .arg("-f")
            .arg(&containerfile)
            .args(["-t", &tag])
            .arg(&context),
    )
    .context("podman build failed")?;

    // Small explicit limits: Podman's defaults (or the host's own) cannot be set inside
    // this project's sandboxed machines (runc: "error setting rlimit ... not permitted").
    let out = Command::new("podman")
        .args(["--runtime", "runc", "run", "--rm", "--network", "none"])
        .args([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ])
        .args([&tag, "--version"])
        .output()
        .context("cannot run podman")?;
    let said = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || said.trim() != format!("hangwatch {version}") {
        bail!(
            "the image does not run: `{tag} --version` exited {} and printed {said:?}; stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!("xtask image: {tag} built; it runs: {}", said.trim());
    Ok(())
}

fn podman_ok(args: &[&str]) -> bool {
    Command::new("podman")
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// This machine's Debian suite (bookworm...), which the image's base must match.
fn debian_suite() -> Result<String> {
    let text =
        fs::read_to_string(Path::new("/etc/os-release")).context("reading /etc/os-release")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|s| s.trim_matches('"').to_owned())
        .filter(|s| !s.is_empty())
        .context("/etc/os-release names no VERSION_CODENAME: the image is built on Debian")
}
