//! The facts `access.rs` decides on besides a process's owner (`meta::owner`): a socket
//! caller's credentials and capabilities, and the kallsyms sysctls, read from `/proc`.
use std::fs;

use super::access::{KptrSysctls, LocalCaller, may_read_kernel_addresses};
use crate::meta::owner::status_of;

/// `kernel.kptr_restrict` and `kernel.perf_event_paranoid`; the strictest values when
/// they cannot be read.
pub fn kptr_sysctls() -> KptrSysctls {
    let read = |name: &str| {
        fs::read_to_string(format!("/proc/sys/kernel/{name}"))
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
    };
    let strictest = KptrSysctls::STRICTEST;
    KptrSysctls {
        kptr_restrict: read("kptr_restrict")
            .and_then(|v| u8::try_from(v).ok())
            .unwrap_or(strictest.kptr_restrict),
        perf_event_paranoid: read("perf_event_paranoid").unwrap_or(strictest.perf_event_paranoid),
    }
}

/// The caller at the other end of a unix socket, from its SO_PEERCRED (taken by the kernel
/// at `connect()`, so it cannot be forged) and the capabilities of its process.
///
/// The capabilities are read from `/proc/PEERPID/status` and used only when that process
/// still has the effective ids the socket recorded: a caller that connected and exited
/// leaves a pid that another process may take, and only a process of the same user could
/// lend it capabilities that way. Otherwise the caller counts as having none.
pub fn local_caller(pid: Option<u32>, uid: u32, gid: u32) -> LocalCaller {
    let cap_eff = pid
        .and_then(status_of)
        .filter(|s| s.uids[1] == uid && s.gids[1] == gid)
        .map_or(0, |s| s.cap_eff);
    LocalCaller {
        pid,
        uid,
        gid,
        cap_eff,
        kernel_addresses: may_read_kernel_addresses(cap_eff, kptr_sysctls()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::owner::owner_of;

    #[test]
    fn reads_this_process_and_refuses_a_vanished_one() {
        let me = owner_of(std::process::id()).expect("this process");
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        assert_eq!(me.uids[0], uid);
        assert_eq!(me.gids[0], gid);
        assert!(me.dumpable, "a test binary is dumpable: {me:?}");
        assert_eq!(owner_of(u32::MAX - 1), None);
        let caller = local_caller(Some(std::process::id()), me.uids[1], me.gids[1]);
        let status = status_of(std::process::id()).expect("status");
        assert_eq!(caller.cap_eff, status.cap_eff);
        // Ids that do not match the process: its capabilities are not lent.
        let other = local_caller(Some(std::process::id()), me.uids[1] ^ 1, me.gids[1]);
        assert_eq!(other.cap_eff, 0);
    }
}
