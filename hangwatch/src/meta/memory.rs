//! Reading a watched process's memory: `pread` of `/proc/PID/mem`, not
//! `process_vm_readv`. Both take the process's mm lock, but `/proc/PID/mem`
//! (`access_remote_vm`) waits for it *killably*, `process_vm_readv` uninterruptibly: a
//! daemon thread stuck behind a process whose mm lock never comes free (a fault on a
//! frozen filesystem) must still die with the daemon at exit, or the daemon's BPF links
//! would outlive it. Callers run this on a `reader::Worker`, under a deadline.
use std::{fs::File, io, os::unix::fs::FileExt as _};

/// Reads up to `buf.len()` bytes at `address` of process `pid`; returns how many were
/// read (short at the end of a mapping).
pub fn read(pid: u32, address: u64, buf: &mut [u8]) -> io::Result<usize> {
    Memory::open(pid)?.read(address, buf)
}

/// A process's memory opened once, for several reads (one `open` checks the ptrace
/// access; each read is then one `pread`).
pub struct Memory {
    file: File,
}

impl Memory {
    pub fn open(pid: u32) -> io::Result<Self> {
        File::open(format!("/proc/{pid}/mem")).map(|file| Self { file })
    }

    /// Reads up to `buf.len()` bytes at `address`; returns how many were read (short at
    /// the end of a mapping).
    pub fn read(&self, address: u64, buf: &mut [u8]) -> io::Result<usize> {
        read_at(&self.file, address, buf)
    }
}

fn read_at(mem: &File, address: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match mem.read_at(&mut buf[done..], address + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            // A hole in the range: what was read before it is the answer.
            Err(_) if done > 0 => break,
            Err(err) => return Err(err),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_our_own_memory() {
        let marker: [u8; 8] = *b"hangwat\0";
        let mut buf = [0u8; 8];
        let n =
            super::read(std::process::id(), marker.as_ptr() as u64, &mut buf).expect("readable");
        assert_eq!((n, buf), (8, marker));
        assert!(
            super::read(std::process::id(), 8, &mut buf).is_err(),
            "page 0 is unmapped"
        );
    }
}
