//! A loop-mounted ext4 image that tests freeze (`fsfreeze -f`): the frozen filesystem
//! of the incidents hangwatch exists for. Drop thaws it, kills the processes it holds,
//! unmounts, releases the loop device and removes the files, also on panic.
use std::{
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use super::{Program, have_tool, run_ok, task_state, wait_until};

/// The tools a frozen filesystem needs (`xtask setup` installs them).
const TOOLS: [&str; 5] = ["mkfs.ext4", "fsfreeze", "losetup", "mount", "umount"];

pub struct FrozenFs {
    dir: tempfile::TempDir,
    image: PathBuf,
    pub mountpoint: PathBuf,
    mounted: bool,
    frozen: bool,
    /// Processes blocked on the filesystem: killed after the thaw (before, they could not
    /// die).
    held: Vec<Program>,
}

impl FrozenFs {
    /// Whether the tools are installed; says which is missing when one is (the caller
    /// skips its frozen part).
    pub fn tools_installed() -> bool {
        match TOOLS.iter().find(|t| !have_tool(t)) {
            None => true,
            Some(tool) => {
                eprintln!(
                    "skipped: {tool} is not installed (xtask setup installs e2fsprogs and util-linux)"
                );
                false
            }
        }
    }

    /// Freezes the filesystem and starts a writer on it; returns its pid once it is in D.
    pub fn writer_in_d(&mut self) -> u32 {
        self.freeze();
        let writer = self.start_writer();
        assert!(
            wait_until(Duration::from_secs(3), || task_state(writer) == Some('D')),
            "the writer (pid {writer}) did not enter D state: {:?}",
            task_state(writer)
        );
        writer
    }

    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hangwatch-dstate")
            .tempdir()
            .expect("temp dir");
        let image = dir.path().join("fs.img");
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).expect("mkdir mountpoint");
        let file = std::fs::File::create(&image).expect("create image");
        file.set_len(64 << 20).expect("size image");
        drop(file);
        let mut fs = Self {
            dir,
            image,
            mountpoint,
            mounted: false,
            frozen: false,
            held: Vec::new(),
        };
        run_ok("mkfs.ext4", [Path::new("-q"), &fs.image]);
        run_ok(
            "mount",
            [
                Path::new("-o"),
                Path::new("loop"),
                &fs.image,
                &fs.mountpoint,
            ],
        );
        fs.mounted = true;
        fs
    }

    pub fn freeze(&mut self) {
        run_ok("fsfreeze", [Path::new("-f"), &self.mountpoint]);
        self.frozen = true;
    }

    pub fn thaw(&mut self) {
        if self.frozen {
            run_ok("fsfreeze", [Path::new("-u"), &self.mountpoint]);
            self.frozen = false;
        }
    }

    /// A shell that writes a file on the filesystem, then execs `sleep 1000` (same pid),
    /// so after the thaw the thread runs again and stays alive.
    pub fn start_writer(&mut self) -> u32 {
        let target = self.mountpoint.join("f");
        let script = format!("echo data > '{}' && exec sleep 1000", target.display());
        let mut command = Command::new("sh");
        command.args(["-c", &script]);
        self.hold(Program::spawn(command))
    }

    /// Keeps `program` until after the thaw at drop; returns its pid.
    pub fn hold(&mut self, program: Program) -> u32 {
        let pid = program.pid;
        self.held.push(program);
        pid
    }

    fn loop_devices(&self) -> Vec<String> {
        let Ok(out) = Command::new("losetup").arg("-j").arg(&self.image).output() else {
            return Vec::new();
        };
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(':').map(|(dev, _)| dev.to_owned()))
            .collect()
    }
}

impl Drop for FrozenFs {
    fn drop(&mut self) {
        if self.frozen {
            let _ = Command::new("fsfreeze")
                .arg("-u")
                .arg(&self.mountpoint)
                .status();
            self.frozen = false;
        }
        // After the thaw they can die.
        self.held.clear();
        if self.mounted {
            let unmounted = (0..20).any(|_| {
                let ok = Command::new("umount")
                    .arg(&self.mountpoint)
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    thread::sleep(Duration::from_millis(100));
                }
                ok
            });
            if !unmounted {
                eprintln!("warning: lazy unmount of {}", self.mountpoint.display());
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(&self.mountpoint)
                    .status();
            }
        }
        for device in self.loop_devices() {
            let _ = Command::new("losetup").arg("-d").arg(&device).status();
        }
        let _ = &self.dir; // removed when the field drops
    }
}

impl Default for FrozenFs {
    fn default() -> Self {
        Self::new()
    }
}
