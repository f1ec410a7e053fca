//! Reading one thread's task-local storage from userspace, by pidfd. This is how the scan
//! follows the few threads that may cross a threshold soon (the candidates) every tick,
//! without walking every thread of the machine each time: one `bpf()` call per candidate.
use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use hangwatch_ebpf::ThreadState;

/// `PIDFD_THREAD` (Linux 6.9): a pidfd for a thread rather than a thread-group leader.
const PIDFD_THREAD: libc::c_int = libc::O_EXCL;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;

/// A handle on one thread that stays valid across tid reuse: the kernel resolves a pidfd to
/// the very task it was opened for, or fails once that task is gone.
#[derive(Debug)]
pub struct ThreadHandle(OwnedFd);

impl ThreadHandle {
    pub fn open(tid: u32) -> io::Result<Self> {
        // SAFETY: plain syscall with integer arguments.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, tid as libc::pid_t, PIDFD_THREAD) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel returned a new fd that nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }))
    }
}

/// `union bpf_attr` as BPF_MAP_LOOKUP_ELEM reads it.
#[repr(C)]
struct LookupAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

pub enum Lookup {
    Found(ThreadState),
    /// The thread has no state yet (never switched since the probes were attached).
    NoState,
    /// The thread is gone.
    Gone,
}

/// Looks the thread's `ThreadState` up in the task-storage map `map`.
pub fn lookup(map: BorrowedFd<'_>, thread: &ThreadHandle) -> io::Result<Lookup> {
    let key: libc::c_int = thread.0.as_fd().as_raw_fd();
    let mut value = ThreadState::default();
    let attr = LookupAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(&key) as u64,
        value: std::ptr::from_mut(&mut value) as u64,
        flags: 0,
    };
    // SAFETY: attr points to a valid key and a value buffer of the map's value size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_ELEM,
            std::ptr::from_ref(&attr),
            std::mem::size_of::<LookupAttr>(),
        )
    };
    if rc == 0 {
        return Ok(Lookup::Found(value));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOENT) => Ok(Lookup::NoState),
        // The pidfd's task has exited (or is exiting).
        Some(libc::ESRCH) => Ok(Lookup::Gone),
        _ => Err(err),
    }
}

/// Whether this kernel opens pidfds for threads (`PIDFD_THREAD`, Linux 6.9): older ones
/// refuse the flag with `EINVAL`, whatever the pid. Asked with our own pid.
pub fn thread_pidfds() -> bool {
    match ThreadHandle::open(std::process::id()) {
        Ok(_) => true,
        Err(err) => err.raw_os_error() != Some(libc::EINVAL),
    }
}

/// A cheap, clonable reader of `THREAD_STATE` for other threads than the scan (the API's
/// `threads PID`): a duplicate of the map's fd, read per thread by pidfd.
#[derive(Debug, Clone)]
pub struct StateReader(std::sync::Arc<OwnedFd>);

impl StateReader {
    /// Fails with [`io::ErrorKind::Unsupported`] on kernels without thread pidfds (before
    /// Linux 6.9), where no thread but a process's main one could be read.
    pub fn new(map: BorrowedFd<'_>) -> io::Result<Self> {
        if !thread_pidfds() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel has no thread pidfds (Linux 6.9+)",
            ));
        }
        Ok(Self(std::sync::Arc::new(map.try_clone_to_owned()?)))
    }

    /// Thread `tid`'s state now; `Ok(Lookup::Gone)` when the thread no longer exists.
    pub fn read(&self, tid: u32) -> io::Result<Lookup> {
        let thread = match ThreadHandle::open(tid) {
            Ok(thread) => thread,
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => return Ok(Lookup::Gone),
            Err(err) => return Err(err),
        };
        lookup(self.0.as_fd(), &thread)
    }
}
