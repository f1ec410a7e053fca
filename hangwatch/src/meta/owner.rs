//! A process's credentials, read from `/proc` for the API's access rule (`api::access`):
//! the ids and capabilities of `/proc/PID/status`, and its owner with its dumpability.
//!
//! None of these reads can block on a watched process: `/proc/PID/status` and the
//! directory's owner come from the task's credentials and its mm's dumpable flag, without
//! the mm lock that stalls readers of `cmdline` or `mem`.
use std::{fs, os::unix::fs::MetadataExt};

/// The credentials of a watched process, read when it was reported (or asked about).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// Real, effective and saved uid.
    pub uids: [u32; 3],
    /// Real, effective and saved gid.
    pub gids: [u32; 3],
    /// `get_dumpable() == SUID_DUMP_USER`: ptrace by the same user is allowed.
    pub dumpable: bool,
}

/// The `Uid:`, `Gid:` and `CapEff:` lines of `/proc/PID/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusIds {
    /// Real, effective, saved, filesystem.
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub cap_eff: u64,
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

pub fn status_of(pid: u32) -> Option<StatusIds> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The capability bits `STATUS` sets (`linux/capability.h`).
    const CAP_SYS_PTRACE: u32 = 19;
    const CAP_SYSLOG: u32 = 34;

    const STATUS: &str = "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t77\n\
        Uid:\t1000\t1001\t1002\t1003\nGid:\t100\t101\t102\t103\nGroups:\t100 27\n\
        CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000400080000\n";

    #[test]
    fn parses_the_ids_and_capabilities() {
        let ids = parse_status(STATUS).expect("parses");
        assert_eq!(ids.uids, [1000, 1001, 1002, 1003]);
        assert_eq!(ids.gids, [100, 101, 102, 103]);
        assert_eq!(ids.cap_eff, (1 << CAP_SYSLOG) | (1 << CAP_SYS_PTRACE));
        assert_eq!(parse_status("Uid:\t1 2\n"), None);
    }
}
