//! Booting a kernel with virtme-ng under QEMU's TCG and running a script in it.
//!
//! virtme-ng shares the host's root filesystem with the guest read-only over 9p, so the
//! guest runs the host's binaries (the test binaries, gcc, python) on its own kernel. What
//! the guest writes goes to two places: the results directory (`--rwdir`, written through
//! to the host: the log we stream and the per-binary exit codes) and an overlay on
//! target/tmp (`--overlay-rwdir`: the tests compile their C programs there; the host's copy
//! stays untouched).
//!
//! The script's exit code and output cannot come back through virtme-ng's own channel here
//! (it needs udev's /dev/virtio-ports links, which the host has no udevd to make), so both
//! go through files in the results directory.

use std::{
    fs,
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// virtme-ng from PyPI, pinned: the version the recipe was checked with.
const VIRTME_NG: &str = "virtme-ng==1.42";
/// What QEMU and virtme-ng need from Debian: QEMU itself, busybox for virtme-ng's
/// initramfs, kmod for depmod, python3-venv for virtme-ng's venv.
pub const PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "kmod", "python3-venv"];

/// The guest's size: both of this machine's cores, and room for the daemon, the test
/// programs and a loop-mounted filesystem.
const CPUS: &str = "2";
const MEMORY: &str = "4G";

/// virtme-ng's venv, made once under target/vmtest/.
pub fn install_virtme_ng(cache: &Path) -> Result<PathBuf> {
    let venv = cache.join("venv");
    crate::setup::python_venv(&venv, &[VIRTME_NG])?;
    Ok(venv)
}

/// One guest run: the kernel image, the script and where its results go.
pub struct Run<'a> {
    pub venv: &'a Path,
    pub image: &'a Path,
    pub script: &'a Path,
    /// The guest writes its results and its `heartbeat` here.
    pub results: &'a Path,
    /// The file of `results` this boot's tests write their output to (streamed to our
    /// stdout as it grows).
    pub log: &'a str,
    /// Host directories the guest may write to, its writes kept in guest memory.
    pub overlays: &'a [PathBuf],
    /// QEMU's console (kernel messages, virtme-ng's), for when the script never ran.
    pub console: &'a Path,
    /// The limit for the whole boot-run-power-off.
    pub timeout: Duration,
    /// A guest without a sign of life this long (no new line in its log, none in its
    /// heartbeat, which it writes every minute) is taken for stalled: QEMU's monitor is
    /// asked where the vCPUs are (`vcpu-dump` beside the console, numbered by `attempt`),
    /// and the VM is stopped. A slow test leaves the log silent but the heartbeat going; a
    /// wedged guest stops both (docs/kernels.md, "Stalls").
    pub stall_after: Duration,
    /// Which boot of this run this is (1 for the first), for the dump's name.
    pub attempt: u32,
}

/// How a VM run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The guest ran its script and powered off.
    Finished,
    /// No sign of life for `stall_after`: the vCPUs were dumped and the VM killed.
    Stalled,
}

/// Boots the kernel, runs the script, streams the boot's log to stdout until the guest powers
/// off or stalls. Fails only when the VM could not be run or overran its time; the script's
/// own results are in `results`.
pub fn run(run: &Run<'_>) -> Result<Ended> {
    let console = fs::File::create(run.console)
        .with_context(|| format!("creating {}", run.console.display()))?;
    let monitor = run.console.with_extension("monitor");
    let _ = fs::remove_file(&monitor);
    let mut permissions = fs::metadata(run.script)?.permissions();
    permissions.set_mode(0o755);
    fs::set_permissions(run.script, permissions)?;

    let bin = run.venv.join("bin");
    // vng starts virtme-run by name: the venv's bin must be on PATH.
    let path = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))?;
    let mut cmd = Command::new(bin.join("vng"));
    cmd.env("PATH", path)
        .arg("--run")
        .arg(run.image)
        // KVM guests stop early on this machine type's nested CPU model; TCG works.
        .args(["--disable-kvm", "--force-9p", "--verbose"])
        .args(["--memory", MEMORY, "--cpus", CPUS])
        .arg(format!(
            "--qemu-opts=-cpu max -monitor unix:{},server=on,wait=off",
            monitor.display()
        ))
        .arg(format!("--rwdir={}", run.results.display()));
    for dir in run.overlays {
        cmd.arg(format!("--overlay-rwdir={}", dir.display()));
    }
    cmd.arg("--exec")
        .arg(run.script)
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console)
        // Its own process group, so that a timeout ends QEMU with it.
        .process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("failed to start {}", bin.join("vng").display()))?;
    let started = Instant::now();
    // QEMU runs in a group of its own, which a signal to this process does not reach:
    // a stopped `xtask vmtest` (Ctrl-C, a CI timeout's SIGTERM) ends the VM itself.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("cannot handle signals")?;
    }
    let log_path = run.results.join(run.log);
    // The log is appended to by every boot of a run: stream only what this one adds.
    let mut shown = fs::metadata(&log_path).map_or(0, |m| m.len());
    let heartbeat = run.results.join("heartbeat");
    let beats = || fs::metadata(&heartbeat).map_or(0, |m| m.len());
    let mut last_beats = beats();
    let mut last_output = Instant::now();
    let kill = |child: &mut std::process::Child| -> Result<()> {
        let pgid = libc::pid_t::try_from(child.id()).context("pid fits pid_t")?;
        // SAFETY: kill has no memory-safety preconditions; the group is the one we made.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = child.wait();
        Ok(())
    };
    loop {
        let exited = child.try_wait().context("waiting for vng")?.is_some();
        let now_shown = show_new(&log_path, shown);
        let now_beats = beats();
        if now_shown != shown || now_beats != last_beats {
            last_output = Instant::now();
        }
        (shown, last_beats) = (now_shown, now_beats);
        if exited {
            return Ok(Ended::Finished);
        }
        if last_output.elapsed() > run.stall_after {
            let dump = run
                .console
                .with_extension(format!("vcpu-dump.{}", run.attempt));
            match dump_vcpus(&monitor, &dump) {
                Ok(()) => println!(
                    "xtask vmtest: STALL: no sign of life for {} min (log and heartbeat silent): the vCPUs' registers are in {} (the guest's heartbeat: {}); stopping this VM",
                    run.stall_after.as_secs() / 60,
                    dump.display(),
                    run.results.join("heartbeat").display()
                ),
                Err(err) => println!(
                    "xtask vmtest: STALL: no sign of life for {} min (log and heartbeat silent), and QEMU's monitor: {err:#}; stopping this VM",
                    run.stall_after.as_secs() / 60
                ),
            }
            kill(&mut child)?;
            return Ok(Ended::Stalled);
        }
        let stopped = stop.load(Ordering::Relaxed);
        if stopped || started.elapsed() > run.timeout {
            kill(&mut child)?;
            if stopped {
                bail!("stopped by a signal (the VM was killed)");
            }
            bail!(
                "the VM did not finish within {:?} (killed; QEMU's console is in {})",
                run.timeout,
                run.console.display()
            );
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// Asks QEMU's human monitor at `socket`, three times a second apart, for every vCPU's
/// registers and state, and writes the answers to `out`.
fn dump_vcpus(socket: &Path, out: &Path) -> Result<()> {
    use std::os::unix::net::UnixStream;
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut text = String::new();
    for sample in 0..3 {
        if sample > 0 {
            thread::sleep(Duration::from_secs(1));
        }
        stream.write_all(b"info cpus\ninfo registers -a\n")?;
        thread::sleep(Duration::from_millis(500));
        let mut buf = [0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(err) => return Err(err).context("reading QEMU's monitor"),
            }
        }
    }
    fs::write(out, text).with_context(|| format!("writing {}", out.display()))
}

/// Prints what `path` holds past byte `from`; returns the new end (unchanged on error).
fn show_new(path: &Path, from: u64) -> u64 {
    let Ok(mut file) = fs::File::open(path) else {
        return from;
    };
    if file.seek(SeekFrom::Start(from)).is_err() {
        return from;
    }
    let mut new = Vec::new();
    let Ok(read) = file.read_to_end(&mut new) else {
        return from;
    };
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(&new);
    let _ = stdout.flush();
    from + read as u64
}

/// `text` quoted for sh.
pub fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(sh_quote("/a b"), "'/a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
    }
}
