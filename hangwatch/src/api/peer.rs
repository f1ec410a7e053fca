//! The facts `access.rs` decides on: a socket caller's credentials and capabilities, a
//! process's owner and dumpability, and the kallsyms sysctls, read from `/proc`.
//!
//! None of these reads can block on a watched process: `/proc/PID/status` and the
//! directory's owner come from the task's credentials and its mm's dumpable flag, without
//! the mm lock that stalls readers of `cmdline` or `mem`.
use std::{fs, os::unix::fs::MetadataExt};

use super::access::{KptrSysctls, LocalCaller, Owner, may_read_kernel_addresses};

/// The `Uid:`, `Gid:` and `CapEff:` lines of `/proc/PID/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatusIds {
    /// Real, effective, saved, filesystem.
    uids: [u32; 4],
    gids: [u32; 4],
    cap_eff: u64,
}

fn parse_status(text: &str) -> Option<StatusIds> {
    let ids = |key: &str| -> Option<[u32; 4]> {
        let line = text.lines().find_map(|l| l.strip_prefix(key))?;
        let mut out = [0u32; 4];
        let mut fields = line.split_whitespace();
        for slot in &mut out {
            *slot = fields.next()?.parse().ok()?;
        }
        Some(out)
    };
    let cap_eff = text
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())?;
    Some(StatusIds {
        uids: ids("Uid:")?,
        gids: ids("Gid:")?,
        cap_eff,
    })
}

fn status_of(pid: u32) -> Option<StatusIds> {
    parse_status(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// The owner of process `pid` now; `None` when it is gone.
///
/// Dumpability is read from the owner of `/proc/PID`: the kernel gives a process that
/// is not dumpable a root-owned `/proc/PID` (`task_dump_owner`), and its effective ids
/// otherwise. For a process whose effective ids are root's both look the same, and it
/// counts as dumpable: only a uid-0 caller without CAP_SYS_PTRACE could tell the
/// difference, and it may not read other users' processes anyway.
pub fn owner_of(pid: u32) -> Option<Owner> {
    let status = status_of(pid)?;
    let dir = fs::metadata(format!("/proc/{pid}")).ok()?;
    let (euid, egid) = (status.uids[1], status.gids[1]);
    let dumpable = (dir.uid() == euid && dir.gid() == egid) || (euid == 0 && egid == 0);
    Some(Owner {
        uids: [status.uids[0], euid, status.uids[2]],
        gids: [status.gids[0], egid, status.gids[2]],
        dumpable,
    })
}

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

    const STATUS: &str = "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t77\n\
        Uid:\t1000\t1001\t1002\t1003\nGid:\t100\t101\t102\t103\nGroups:\t100 27\n\
        CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000400080000\n";

    #[test]
    fn parses_the_ids_and_capabilities() {
        let ids = parse_status(STATUS).expect("parses");
        assert_eq!(ids.uids, [1000, 1001, 1002, 1003]);
        assert_eq!(ids.gids, [100, 101, 102, 103]);
        assert_eq!(
            ids.cap_eff,
            (1 << super::super::access::CAP_SYSLOG) | (1 << super::super::access::CAP_SYS_PTRACE)
        );
        assert_eq!(parse_status("Uid:\t1 2\n"), None);
    }

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
