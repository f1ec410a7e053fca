//! A FUSE mount that tests stall: tests/programs/fuse_stall.c serves one file (a copy of a
//! test program) and stops answering when told, as a hung FUSE daemon or a dead network
//! filesystem does. Drop aborts the connection (every waiter fails with ENOTCONN), kills
//! the processes it holds and unmounts, also on panic: nothing stays mounted or in D.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use super::{Program, compile};

/// How the server stalls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// It stops reading /dev/fuse: requests stay queued in the kernel, and their waiters
    /// can be killed.
    Queued,
    /// It reads every request and answers none (stuck in its handlers): the kernel waits
    /// out a request the server has taken uninterruptibly, SIGKILL or not.
    Taken,
}

pub struct StalledFuse {
    dir: tempfile::TempDir,
    pub mountpoint: PathBuf,
    /// The served file: `mountpoint/<name of the file served>`.
    pub file: PathBuf,
    /// The connection's number in /sys/fs/fuse/connections (the mount's device), read
    /// before any stall (a stat of the mount would block after).
    connection: u64,
    server: Option<Program>,
    /// Processes that run from the mount: killed at drop, after the abort.
    held: Vec<Program>,
}

impl StalledFuse {
    /// Mounts a FUSE filesystem serving a copy of `file`, answering until [`Self::stall`],
    /// then stalling the way `stall` says.
    pub fn serve(file: &Path, stall: Stall) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hangwatch-fuse")
            .tempdir()
            .expect("temp dir");
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).expect("mkdir mountpoint");
        let name = file.file_name().expect("a file name");
        let served = mountpoint.join(name);
        let mut args = vec![
            mountpoint.to_str().expect("utf-8"),
            file.to_str().expect("utf-8"),
        ];
        if stall == Stall::Taken {
            args.push("take");
        }
        let mut server = Program::start(&compile("fuse_stall"), &args);
        let mut fuse = Self {
            dir,
            mountpoint,
            file: served,
            connection: 0,
            server: None,
            held: Vec::new(),
        };
        server.expect_line("ready", Duration::from_secs(5));
        fuse.server = Some(server);
        use std::os::unix::fs::MetadataExt as _;
        fuse.connection = std::fs::metadata(&fuse.mountpoint)
            .expect("stat of the FUSE mount")
            .dev();
        fuse
    }

    /// From now on the server answers nothing: every open, read, lookup or stat on the
    /// mount waits.
    pub fn stall(&mut self) {
        let server = self.server.as_mut().expect("the server runs");
        server.send("stall");
        server.expect_line("stalled", Duration::from_secs(5));
    }

    /// Keeps `program` (running from the mount) until the abort at drop; returns its pid.
    pub fn hold(&mut self, program: Program) -> u32 {
        let pid = program.pid;
        self.held.push(program);
        pid
    }

    /// Fails every request waiting on the connection, now and later.
    fn abort(&mut self) {
        // Writing to the connection's abort file, where fusectl is mounted...
        let abort = Path::new("/sys/fs/fuse/connections")
            .join(self.connection.to_string())
            .join("abort");
        if abort.exists() {
            let _ = std::fs::write(&abort, "1");
        }
        // ... and in any case the server's end: the last close of /dev/fuse aborts it.
        self.server.take();
    }
}

impl Drop for StalledFuse {
    fn drop(&mut self) {
        self.abort();
        self.held.clear();
        // Lazy: a process that still has the file mapped must not keep it mounted.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mountpoint)
            .status();
        let _ = &self.dir; // removed when the field drops
    }
}
