//! A loop-mounted ext4 image the benchmark freezes (`fsfreeze -f`): the frozen filesystem of
//! the incidents hangwatch exists for. Two guards, on success, error, panic and Ctrl-C alike:
//! [`Frozen`] thaws it when dropped, [`Ext4Mount`] unmounts it, detaches the loop device and
//! removes the files. A process that writes to it must be declared after the mount and
//! before the freeze: it is then killed after the thaw (a thread in D on a frozen filesystem
//! cannot die, and waiting for it would hang) and before the unmount (which it keeps busy).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};

/// What mounting and freezing need (Debian: e2fsprogs, util-linux, mount).
const TOOLS: [&str; 5] = ["mkfs.ext4", "fsfreeze", "losetup", "mount", "umount"];

pub struct Ext4Mount {
    dir: PathBuf,
    mountpoint: PathBuf,
    image: PathBuf,
    mounted: bool,
}

/// The mount, frozen until this is dropped.
pub struct Frozen<'a> {
    mountpoint: &'a Path,
}

impl Ext4Mount {
    /// The first tool this needs that is not installed, if any: the caller skips what needs
    /// a frozen filesystem and says so.
    pub fn missing_tool() -> Option<&'static str> {
        TOOLS.into_iter().find(|tool| {
            crate::find_program(tool).is_none()
                && !["/sbin", "/usr/sbin"]
                    .iter()
                    .any(|dir| Path::new(dir).join(tool).is_file())
        })
    }

    /// A fresh 64 MiB ext4 image under `parent`, loop-mounted, not frozen yet.
    pub fn mount(parent: &Path) -> Result<Self> {
        // Unique per use, so that a lazily unmounted leftover never collides.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = parent.join(format!(
            "frozen-fs-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let mountpoint = dir.join("mnt");
        let image = dir.join("fs.img");
        std::fs::create_dir_all(&mountpoint)
            .with_context(|| format!("cannot create {}", mountpoint.display()))?;
        let mut fs = Self {
            dir,
            mountpoint,
            image,
            mounted: false,
        };
        std::fs::File::create(&fs.image)
            .and_then(|f| f.set_len(64 << 20))
            .with_context(|| format!("cannot create {}", fs.image.display()))?;
        run(Command::new("mkfs.ext4").arg("-q").arg(&fs.image))?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&fs.image)
            .arg(&fs.mountpoint))?;
        fs.mounted = true;
        Ok(fs)
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// From now on every write to it waits, uninterruptibly, until the guard is dropped.
    pub fn freeze(&self) -> Result<Frozen<'_>> {
        run(Command::new("fsfreeze").arg("-f").arg(&self.mountpoint))?;
        Ok(Frozen {
            mountpoint: &self.mountpoint,
        })
    }

    fn loop_devices(&self) -> Vec<String> {
        let Ok(out) = Command::new("losetup").arg("-j").arg(&self.image).output() else {
            return Vec::new();
        };
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(':').map(|(device, _)| device.to_owned()))
            .collect()
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let thawed = Command::new("fsfreeze")
            .arg("-u")
            .arg(self.mountpoint)
            .status()
            .is_ok_and(|s| s.success());
        if !thawed {
            eprintln!(
                "xtask bench: warning: could not thaw {} (fsfreeze -u)",
                self.mountpoint.display()
            );
        }
    }
}

impl Drop for Ext4Mount {
    fn drop(&mut self) {
        if self.mounted {
            // Killed writers let go of their files as they finish exiting: retry for a while.
            let unmounted = (0..30).any(|_| {
                let ok = Command::new("umount")
                    .arg(&self.mountpoint)
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    thread::sleep(Duration::from_millis(100));
                }
                ok
            });
            if !unmounted {
                eprintln!(
                    "xtask bench: warning: lazy unmount of {}",
                    self.mountpoint.display()
                );
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(&self.mountpoint)
                    .status();
            }
        }
        // `mount -o loop` detaches its device at the unmount; this catches what it did not.
        for device in self.loop_devices() {
            let _ = Command::new("losetup").arg("-d").arg(&device).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(status.success(), "{cmd:?} failed: {status}");
    Ok(())
}
