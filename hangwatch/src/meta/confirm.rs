//! Confirmation against /proc of what the detectors saw in the samples: a deadlock is
//! reported only if every member is still alive, in the same futex wait, and not being
//! killed. Reads only `/proc/PID/task/TID/{stat,syscall,status}` (no mm lock: safe on the
//! detection thread).
use super::futex_owner;
use crate::state::{FutexCall, ThreadSample};

/// A deadlock seen in the samples, checked against /proc now: every member still alive,
/// in the same futex wait, with no kill pending; for a whole process, no other thread.
pub fn deadlock(members: &[&ThreadSample], whole_process: bool) -> bool {
    let Some(tgid) = members.first().map(|m| m.tgid) else {
        return false;
    };
    if whole_process && futex_owner::thread_count(tgid) != Some(members.len()) {
        return false;
    }
    members.iter().all(|m| {
        let Some(now) = futex_owner::proc_thread(tgid, m.key.tid) else {
            return false;
        };
        let same_wait = match (
            now.syscall.as_ref().and_then(FutexCall::from_syscall),
            m.futex_wait(),
        ) {
            (Some(now), Some(then)) => now.uaddr == then.uaddr,
            _ => false,
        };
        same_wait && now.state == 'S' && !futex_owner::kill_pending(tgid, m.key.tid)
    })
}
