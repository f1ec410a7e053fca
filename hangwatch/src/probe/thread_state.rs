//! Reading one thread's task-local storage from userspace, by pidfd. This is how the scan
//! follows the few threads that may cross a threshold soon (the candidates) every tick,
//! without walking every thread of the machine each time: one `bpf()` call per candidate.
use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use hangwatch_ebpf::{SWITCH_SLOT_MASK, SwitchSlot, ThreadState, fold_switch_out};

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

/// `BPF_MAP_LOOKUP_ELEM` of `key` in `map` into `value`, which must be the map's key and
/// value types.
fn lookup_elem<K, V: aya::Pod>(map: BorrowedFd<'_>, key: &K, value: &mut V) -> io::Result<()> {
    let attr = LookupAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: std::ptr::from_mut(value) as u64,
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
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Looks the thread's `ThreadState` up in the task-storage map `map`.
pub fn lookup(map: BorrowedFd<'_>, thread: &ThreadHandle) -> io::Result<Lookup> {
    let key: libc::c_int = thread.0.as_fd().as_raw_fd();
    let mut value = ThreadState::default();
    let Err(err) = lookup_elem(map, &key, &mut value) else {
        return Ok(Lookup::Found(value));
    };
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
/// `threads PID`): duplicates of the fds of that map, read per thread by pidfd, and of
/// `SWITCH_SLOTS`, whose newer switch-out of the thread is folded in as a walk would.
#[derive(Debug, Clone)]
pub struct StateReader {
    thread_state: std::sync::Arc<OwnedFd>,
    switch_slots: std::sync::Arc<OwnedFd>,
}

impl StateReader {
    /// Fails with [`io::ErrorKind::Unsupported`] on kernels without thread pidfds (before
    /// Linux 6.9), where no thread but a process's main one could be read.
    pub fn new(thread_state: BorrowedFd<'_>, switch_slots: BorrowedFd<'_>) -> io::Result<Self> {
        if !thread_pidfds() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel has no thread pidfds (Linux 6.9+)",
            ));
        }
        Ok(Self {
            thread_state: std::sync::Arc::new(thread_state.try_clone_to_owned()?),
            switch_slots: std::sync::Arc::new(switch_slots.try_clone_to_owned()?),
        })
    }

    /// Thread `tid`'s state now; `Ok(Lookup::Gone)` when the thread no longer exists.
    pub fn read(&self, tid: u32) -> io::Result<Lookup> {
        let thread = match ThreadHandle::open(tid) {
            Ok(thread) => thread,
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => return Ok(Lookup::Gone),
            Err(err) => return Err(err),
        };
        let mut found = lookup(self.thread_state.as_fd(), &thread)?;
        if let Lookup::Found(state) = &mut found {
            let mut slot = SwitchSlot::default();
            let index = tid & SWITCH_SLOT_MASK;
            // A tid past the map's end owns no slot (ENOENT), like any thread not its owner;
            // the owner is the thread whose mark the slot has (another of the same tid may
            // hold it still: `SwitchSlot::owner_start`).
            if lookup_elem(self.switch_slots.as_fd(), &index, &mut slot).is_ok()
                && slot.tid == tid
                && state.slot_owner != 0
                && slot.owner_start == state.slot_owner
            {
                fold_switch_out(state, slot.switched_out);
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    //! The switch slots' word and its fold (`hangwatch_ebpf::SwitchSlot`), which the probe,
    //! the walk and `StateReader` share.
    use hangwatch_ebpf::{
        SLOT_STAMP_MASK, SLOT_WOKEN, SwitchSlot, ThreadState, fold_switch_out, task_state,
    };

    const MS: u64 = 1_000_000;

    fn storage(off: u64, on: u64, state: u32) -> ThreadState {
        ThreadState {
            off_cpu_at_ns: off,
            on_cpu_at_ns: on,
            state_at_switch: state,
            ..ThreadState::default()
        }
    }

    #[test]
    fn a_switch_out_in_the_slot_alone_is_folded_after_every_stamp_storage_has() {
        // Storage says: switched out at 1 s, back in at 2 s (followed then).
        let mut state = storage(1_000 * MS, 2_000 * MS, task_state::INTERRUPTIBLE);
        let claimed = SwitchSlot::stored(1_000 * MS, task_state::INTERRUPTIBLE);
        // A jiffies stamp a little behind storage's last switch-in still lands after it.
        let word = SwitchSlot::switch_out(claimed, 2_000 * MS - 3 * MS, task_state::INTERRUPTIBLE);
        assert!(fold_switch_out(&mut state, word));
        assert!(state.off_cpu_at_ns > state.on_cpu_at_ns, "{state:?}");
        assert_eq!(state.state_at_switch, task_state::INTERRUPTIBLE);
        // The same word again changes nothing.
        let folded = state;
        assert!(!fold_switch_out(&mut state, word));
        assert_eq!(state, folded);
    }

    #[test]
    fn stamps_never_run_ahead_of_the_clock_and_storage_keeps_them_unique() {
        // Thousands of switch-outs within one step of the slot's clock: the word's stamp
        // stays that step (a thread switching fast must not be stamped in the future).
        let mut word = 0;
        for _ in 0..10_000 {
            word = SwitchSlot::switch_out(word, 3_000 * MS, task_state::INTERRUPTIBLE);
        }
        assert_eq!(word & SLOT_STAMP_MASK, (3_000 * MS) & SLOT_STAMP_MASK);
        // Two folded switch-outs in the same step still get distinct stamps in storage.
        let mut state = storage(1_000 * MS, 900 * MS, task_state::INTERRUPTIBLE);
        let first = SwitchSlot::switch_out(0, 3_000 * MS, task_state::INTERRUPTIBLE);
        assert!(fold_switch_out(&mut state, first));
        let first_off = state.off_cpu_at_ns;
        let second = SwitchSlot::switch_out(first, 3_000 * MS, task_state::RUNNING);
        assert!(fold_switch_out(&mut state, second));
        assert!(state.off_cpu_at_ns > first_off);
        assert_eq!(state.state_at_switch, task_state::RUNNING);
    }

    #[test]
    fn a_word_also_in_storage_is_not_folded_over_it() {
        // A followed owner: storage has the switch-out at full resolution, the slot the same
        // switch-out marked stored.
        let mut state = storage(5_000 * MS + 12_345, 4_000 * MS, task_state::INTERRUPTIBLE);
        state.loop_blocked_at_ns = state.off_cpu_at_ns;
        let word = SwitchSlot::stored(state.off_cpu_at_ns, task_state::INTERRUPTIBLE);
        fold_switch_out(&mut state, word);
        // So "in its loop wait" (`loop_blocked_at_ns == off_cpu_at_ns`) still holds.
        assert_eq!(state.loop_blocked_at_ns, state.off_cpu_at_ns);
        // Once the owner is not followed, its next word is a new switch-out.
        let next = SwitchSlot::switch_out(word, 5_000 * MS, task_state::RUNNING);
        assert!(fold_switch_out(&mut state, next));
        assert_eq!(state.state_at_switch, task_state::RUNNING);
        assert!(state.off_cpu_at_ns > state.loop_blocked_at_ns);
    }

    #[test]
    fn a_wakeup_marked_in_the_word_is_the_folded_wait_s() {
        let mut state = storage(1_000 * MS, 900 * MS, task_state::INTERRUPTIBLE);
        let word = SwitchSlot::switch_out(0, 2_000 * MS, task_state::INTERRUPTIBLE);
        assert!(fold_switch_out(&mut state, word));
        assert_ne!(state.woken_wait_ns, state.off_cpu_at_ns);
        let off = state.off_cpu_at_ns;
        // Woken after the walk folded the switch-out: the same wait, now woken.
        assert!(fold_switch_out(&mut state, word | SLOT_WOKEN));
        assert_eq!(state.off_cpu_at_ns, off);
        assert_eq!(state.woken_wait_ns, off);
        // Its next switch-out (in the same step) is a wait not woken from.
        let next = SwitchSlot::switch_out(word | SLOT_WOKEN, 2_000 * MS, task_state::INTERRUPTIBLE);
        assert!(fold_switch_out(&mut state, next));
        assert_ne!(state.woken_wait_ns, state.off_cpu_at_ns);
    }

    #[test]
    fn prev_state_keeps_every_task_state_bit() {
        let state = task_state::UNINTERRUPTIBLE | task_state::NOLOAD | task_state::FROZEN;
        let word = SwitchSlot::switch_out(0, 7_000 * MS, state);
        let mut folded = storage(0, 0, 0);
        assert!(fold_switch_out(&mut folded, word));
        assert_eq!(folded.state_at_switch, state);
    }
}
