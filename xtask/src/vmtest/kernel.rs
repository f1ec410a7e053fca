//! Which kernel to boot, and getting it: Debian's `linux-image-*-amd64-unsigned` package of a
//! series, fetched with `apt-get download`, unpacked with `dpkg-deb -x` under
//! target/vmtest/kernels/, its modules copied to /lib/modules/<release>/ and indexed with
//! depmod (virtme-ng loads the guest's modules, 9p and virtio among them, from there).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// A kernel ready to boot.
#[derive(Debug)]
pub struct Kernel {
    /// `uname -r` in the guest (e.g. 6.1.0-56-amd64), the name of its /lib/modules directory.
    pub release: String,
    /// What it is, for the summary (the Debian package and version, or "the running kernel").
    pub origin: String,
    /// The bzImage to boot.
    pub image: PathBuf,
}

/// Where the host's modules live; the guest sees the host's root, so the guest's modules
/// must be there too.
const MODULES: &str = "/lib/modules";

/// The kernel `which` names: a series such as `6.1` or `6.12` (Debian's newest package of
/// it), or `host` (the running kernel from /boot, else its series from Debian).
pub fn resolve(which: &str, cache: &Path) -> Result<Kernel> {
    if std::env::consts::ARCH != "x86_64" {
        bail!(
            "vmtest boots Debian's amd64 kernels; this machine is {}",
            std::env::consts::ARCH
        );
    }
    if which == "host" {
        return host(cache);
    }
    let series = parse_series(which)?;
    debian(&series, cache)
}

/// Refuses a `--kernel` argument that names no kernel, before anything is installed.
pub fn check_arg(which: &str) -> Result<()> {
    if which != "host" {
        parse_series(which)?;
    }
    Ok(())
}

/// `6.1` or `6.12` (a major.minor series); a full release such as `6.1.0-56` is refused,
/// since the archive only keeps the newest few of each series.
fn parse_series(text: &str) -> Result<String> {
    let ok = text
        .split_once('.')
        .is_some_and(|(major, minor)| is_number(major) && is_number(minor));
    if !ok {
        bail!("--kernel {text:?}: expected a series such as 6.1 or 6.12, or `host`");
    }
    Ok(text.to_owned())
}

fn is_number(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// The running kernel: its own image when /boot has it (with its modules in place), else
/// Debian's package of the same series.
fn host(cache: &Path) -> Result<Kernel> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading /proc/sys/kernel/osrelease")?
        .trim()
        .to_owned();
    let image = Path::new("/boot").join(format!("vmlinuz-{release}"));
    if image.is_file() && Path::new(MODULES).join(&release).is_dir() {
        return Ok(Kernel {
            origin: "the running kernel".to_owned(),
            release,
            image,
        });
    }
    let series = release.split('.').take(2).collect::<Vec<_>>().join(".");
    eprintln!(
        "xtask vmtest: the running kernel {release} has no {} here: booting Debian's {series} instead",
        image.display()
    );
    debian(&series, cache).with_context(|| {
        format!(
            "the running kernel ({release}) cannot be booted in a VM here: no {} and no Debian \
             package of its series; `cargo xtask test` runs the suite on it natively",
            image.display()
        )
    })
}

/// Debian's newest standard-flavour package of `series` (not `-cloud`, which has no 9p;
/// not `-rt`), downloaded and unpacked under `cache`, its modules installed.
fn debian(series: &str, cache: &Path) -> Result<Kernel> {
    let mut packages = packages_of(series)?;
    if packages.is_empty() {
        // A fresh machine may never have run `apt-get update`.
        crate::setup::apt(&["update"])?;
        packages = packages_of(series)?;
    }
    let Some((package, version)) = newest(packages)? else {
        bail!(
            "apt knows no package linux-image-{series}*-amd64-unsigned; the series Debian \
             ships for this release are listed by `apt-cache search --names-only \
             '^linux-image-[0-9.]+.*-amd64-unsigned$'`"
        );
    };
    let root = cache.join("kernels").join(&package);
    let boot = root.join("boot");
    if find_image(&boot).is_none() {
        let deb = download(&package, &version, &cache.join("debs"))?;
        let partial = cache.join("kernels").join(format!("{package}.partial"));
        let _ = fs::remove_dir_all(&partial);
        fs::create_dir_all(&partial)?;
        crate::status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))
            .with_context(|| format!("unpacking {}", deb.display()))?;
        let _ = fs::remove_dir_all(&root);
        fs::rename(&partial, &root)
            .with_context(|| format!("renaming {} to {}", partial.display(), root.display()))?;
    }
    let (image, release) = find_image(&boot)
        .with_context(|| format!("{package} has no boot/vmlinuz-* in {}", root.display()))?;
    install_modules(&root, &release)?;
    Ok(Kernel {
        release,
        origin: format!("Debian {package} {version}"),
        image,
    })
}

/// The names of the standard amd64 kernel packages of `series` that apt knows.
fn packages_of(series: &str) -> Result<Vec<String>> {
    let pattern = format!("^linux-image-{}[.-]", series.replace('.', "\\."));
    let out = Command::new("apt-cache")
        .args(["search", "--names-only", &pattern])
        .output()
        .context("running apt-cache search")?;
    if !out.status.success() {
        bail!(
            "`apt-cache search --names-only {pattern}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let prefix = format!("linux-image-{series}");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        // `6.1` must not take 6.12's packages: the series is followed by `.` or `-`.
        .filter(|name| {
            name.strip_prefix(&prefix)
                .is_some_and(|rest| rest.starts_with(['.', '-']))
        })
        .filter(|name| name.ends_with("-amd64-unsigned"))
        .filter(|name| !name.contains("-cloud-") && !name.contains("-rt-"))
        .map(str::to_owned)
        .collect())
}

/// The package of `packages` with the highest candidate version, and that version.
fn newest(packages: Vec<String>) -> Result<Option<(String, String)>> {
    let mut best: Option<(String, String)> = None;
    for package in packages {
        let Some(version) = candidate(&package)? else {
            continue;
        };
        let newer = match &best {
            None => true,
            Some((_, best_version)) => Command::new("dpkg")
                .args(["--compare-versions", &version, "gt", best_version])
                .status()
                .context("running dpkg --compare-versions")?
                .success(),
        };
        if newer {
            best = Some((package, version));
        }
    }
    Ok(best)
}

/// apt's candidate version of `package`, if it has one.
fn candidate(package: &str) -> Result<Option<String>> {
    let out = Command::new("apt-cache")
        .args(["policy", package])
        .output()
        .context("running apt-cache policy")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .filter(|v| *v != "(none)")
        .map(str::to_owned))
}

/// `apt-get download PACKAGE=VERSION` into `dir`, unless the .deb is already there.
fn download(package: &str, version: &str, dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let have = |dir: &Path| -> Option<PathBuf> {
        // apt names the file PACKAGE_VERSION_ARCH.deb with the epoch's colon escaped.
        let stem = format!("{package}_{}_", version.replace(':', "%3a"));
        fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&stem) && n.ends_with(".deb"))
            })
    };
    if let Some(deb) = have(dir) {
        return Ok(deb);
    }
    eprintln!("xtask vmtest: downloading {package} {version}");
    crate::status(
        Command::new("apt-get")
            // apt's download sandbox user cannot write into target/; we are root anyway.
            .args(["-o", "APT::Sandbox::User=root", "download"])
            .arg(format!("{package}={version}"))
            .current_dir(dir),
    )
    .with_context(|| format!("`apt-get download {package}={version}` failed"))?;
    have(dir).with_context(|| {
        format!(
            "apt-get download left no {package} .deb in {}",
            dir.display()
        )
    })
}

/// The image boot/vmlinuz-RELEASE in `boot` and its RELEASE.
fn find_image(boot: &Path) -> Option<(PathBuf, String)> {
    fs::read_dir(boot).ok()?.flatten().find_map(|e| {
        let name = e.file_name().into_string().ok()?;
        let release = name.strip_prefix("vmlinuz-")?.to_owned();
        Some((e.path(), release))
    })
}

/// Copies the package's lib/modules/RELEASE to /lib/modules/RELEASE (unless depmod's index
/// is already there) and runs `depmod RELEASE`. Another kernel's directory: the running
/// kernel never reads it.
fn install_modules(root: &Path, release: &str) -> Result<()> {
    let target = Path::new(MODULES).join(release);
    if target.join("modules.dep.bin").is_file() {
        return Ok(());
    }
    if !crate::is_root() {
        bail!(
            "installing {release}'s modules in {} needs root",
            target.display()
        );
    }
    let source = root.join("lib/modules").join(release);
    fs::create_dir_all(MODULES).with_context(|| format!("creating {MODULES}"))?;
    let partial = Path::new(MODULES).join(format!(".{release}.partial"));
    let _ = fs::remove_dir_all(&partial);
    eprintln!(
        "xtask vmtest: installing {release}'s modules in {}",
        target.display()
    );
    crate::status(Command::new("cp").arg("-a").arg(&source).arg(&partial))
        .with_context(|| format!("copying {} to {}", source.display(), partial.display()))?;
    let _ = fs::remove_dir_all(&target);
    fs::rename(&partial, &target)
        .with_context(|| format!("renaming {} to {}", partial.display(), target.display()))?;
    let depmod = crate::setup::find_tool("depmod").context("no depmod (Debian package kmod)")?;
    crate::status(Command::new(depmod).arg(release))
        .with_context(|| format!("`depmod {release}` failed (Debian package kmod)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_major_dot_minor() {
        assert_eq!(parse_series("6.1").unwrap(), "6.1");
        assert_eq!(parse_series("6.12").unwrap(), "6.12");
        for bad in ["6", "6.", ".1", "6.1.0-56", "six.one", "6.1a"] {
            assert!(parse_series(bad).is_err(), "{bad} accepted");
        }
    }
}
