//! Who may see what: the API answers a caller only about processes that caller could read
//! itself with ptrace (`/proc/PID/stack`, `/proc/PID/syscall`, a debugger), and shows raw
//! kernel addresses only to a caller that could read them in `/proc/kallsyms`.
//!
//! Pure decisions over facts read elsewhere (`peer.rs` reads them from `/proc` and the
//! socket), so that every rule is a unit test. The rules follow the kernel's:
//! - `__ptrace_may_access` (kernel/ptrace.c): a caller with CAP_SYS_PTRACE reads any
//!   process; otherwise its uid must equal the target's real, effective and saved uids and
//!   its gid the target's three gids, and the target must be dumpable (a setuid program, or
//!   one that called `prctl(PR_SET_DUMPABLE, 0)`, is not: it holds another user's secrets).
//! - `kallsyms_show_value` (kernel/ksyms_common.c): `kernel.kptr_restrict` 0 shows
//!   addresses to everyone when `kernel.perf_event_paranoid` <= 1, else to CAP_SYSLOG; 1
//!   only to CAP_SYSLOG; 2 to nobody.

use crate::meta::owner::Owner;

/// `CAP_SYS_PTRACE` in a capability mask (linux/capability.h).
pub const CAP_SYS_PTRACE: u32 = 19;
/// `CAP_SYSLOG` in a capability mask.
pub const CAP_SYSLOG: u32 = 34;

/// A caller of the per-process API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A process on this machine, from the unix socket's SO_PEERCRED.
    Local(LocalCaller),
    /// A client of the cluster listener that showed the cluster token: Kubernetes RBAC
    /// (`pods/proxy` and the token's Secret) let it through; it may read every process and
    /// never sees kernel addresses (deploy/README.md, "Who can read the API").
    Cluster,
}

/// A local caller's credentials when it connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalCaller {
    pub pid: Option<u32>,
    /// Effective uid and gid (what SO_PEERCRED gives).
    pub uid: u32,
    pub gid: u32,
    /// Effective capabilities (`CapEff` of /proc/PID/status); 0 when unknown.
    pub cap_eff: u64,
    /// Whether this caller could read real addresses in /proc/kallsyms.
    pub kernel_addresses: bool,
}

/// Why a caller may not see a process: the API's 403 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error(
        "the process's owner is unknown (it exited before it was read); only a caller with CAP_SYS_PTRACE (root) may see it"
    )]
    UnknownOwner,
    #[error(
        "uid {caller} may not read a process of uid {owner} (real, effective and saved uid and gid must all be the caller's, as for ptrace); run as root or as that user"
    )]
    OtherUser { caller: u32, owner: u32 },
    #[error(
        "the process is not dumpable (setuid, or it called prctl(PR_SET_DUMPABLE, 0)): only a caller with CAP_SYS_PTRACE (root) may read it"
    )]
    NotDumpable,
}

/// The two sysctls that decide who reads kernel addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KptrSysctls {
    /// `kernel.kptr_restrict` (0, 1 or 2).
    pub kptr_restrict: u8,
    /// `kernel.perf_event_paranoid` (-1 to 4 on some distributions).
    pub perf_event_paranoid: i32,
}

impl KptrSysctls {
    /// The strictest settings: what to assume when they cannot be read.
    pub const STRICTEST: Self = Self {
        kptr_restrict: 2,
        perf_event_paranoid: 4,
    };
}

fn has_cap(cap_eff: u64, cap: u32) -> bool {
    cap_eff & (1u64 << cap) != 0
}

/// May a caller with these effective capabilities read kernel addresses?
pub fn may_read_kernel_addresses(cap_eff: u64, sysctls: KptrSysctls) -> bool {
    match sysctls.kptr_restrict {
        0 if sysctls.perf_event_paranoid <= 1 => true,
        0 | 1 => has_cap(cap_eff, CAP_SYSLOG),
        _ => false,
    }
}

impl Caller {
    /// May this caller see the process `owner` describes (`None`: unknown, the process
    /// is gone and its owner was never read)?
    pub fn may_read(&self, owner: Option<&Owner>) -> Result<(), Denied> {
        let local = match self {
            Self::Cluster => return Ok(()),
            Self::Local(local) => local,
        };
        if has_cap(local.cap_eff, CAP_SYS_PTRACE) {
            return Ok(());
        }
        let owner = owner.ok_or(Denied::UnknownOwner)?;
        let same_user = owner.uids.iter().all(|&u| u == local.uid)
            && owner.gids.iter().all(|&g| g == local.gid);
        if !same_user {
            return Err(Denied::OtherUser {
                caller: local.uid,
                owner: owner.uids[1],
            });
        }
        if !owner.dumpable {
            return Err(Denied::NotDumpable);
        }
        Ok(())
    }

    /// May this caller see raw kernel addresses (stack frames, wait channels)?
    pub fn sees_kernel_addresses(&self) -> bool {
        match self {
            Self::Local(local) => local.kernel_addresses,
            Self::Cluster => false,
        }
    }

    /// May it see the daemon's own secrets-bearing settings (the webhook URL)?
    pub fn is_privileged(&self) -> bool {
        match self {
            Self::Local(local) => has_cap(local.cap_eff, CAP_SYS_PTRACE),
            Self::Cluster => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root's full capability set (CapEff of a root shell on 6.x).
    const ROOT_CAPS: u64 = 0x1ff_ffff_ffff;

    fn local(uid: u32, gid: u32, cap_eff: u64) -> Caller {
        Caller::Local(LocalCaller {
            pid: Some(4242),
            uid,
            gid,
            cap_eff,
            kernel_addresses: false,
        })
    }

    fn owner(uid: u32, gid: u32, dumpable: bool) -> Owner {
        Owner {
            uids: [uid; 3],
            gids: [gid; 3],
            dumpable,
        }
    }

    #[test]
    fn root_and_cap_sys_ptrace_read_everything() {
        let root = local(0, 0, ROOT_CAPS);
        assert_eq!(root.may_read(Some(&owner(1000, 1000, true))), Ok(()));
        assert_eq!(root.may_read(Some(&owner(0, 0, false))), Ok(()));
        assert_eq!(root.may_read(None), Ok(()));
        // A non-root user granted CAP_SYS_PTRACE alone (e.g. a debugger's file caps).
        let tracer = local(1000, 1000, 1 << CAP_SYS_PTRACE);
        assert_eq!(tracer.may_read(Some(&owner(0, 0, false))), Ok(()));
    }

    #[test]
    fn a_user_reads_its_own_dumpable_processes_only() {
        let user = local(1000, 1000, 0);
        assert_eq!(user.may_read(Some(&owner(1000, 1000, true))), Ok(()));
        assert_eq!(
            user.may_read(Some(&owner(0, 0, true))),
            Err(Denied::OtherUser {
                caller: 1000,
                owner: 0
            })
        );
        assert_eq!(
            user.may_read(Some(&owner(1000, 1000, false))),
            Err(Denied::NotDumpable)
        );
        assert_eq!(user.may_read(None), Err(Denied::UnknownOwner));
    }

    #[test]
    fn every_uid_and_gid_of_the_target_must_be_the_callers() {
        let user = local(1000, 1000, 0);
        // A setuid-root program run by the user: real uid 1000, effective and saved 0.
        let setuid = Owner {
            uids: [1000, 0, 0],
            gids: [1000; 3],
            dumpable: false,
        };
        assert!(user.may_read(Some(&setuid)).is_err());
        // Dropped privileges but kept a saved uid of root: still not the user's.
        let saved = Owner {
            uids: [1000, 1000, 0],
            gids: [1000; 3],
            dumpable: true,
        };
        assert!(user.may_read(Some(&saved)).is_err());
        // A setgid program.
        let setgid = Owner {
            uids: [1000; 3],
            gids: [1000, 42, 42],
            dumpable: true,
        };
        assert!(user.may_read(Some(&setgid)).is_err());
    }

    #[test]
    fn uid_0_without_capabilities_is_only_the_same_user() {
        // Root in a container whose capabilities were all dropped: the kernel checks
        // capabilities, not uid 0.
        let capless_root = local(0, 0, 0);
        assert_eq!(capless_root.may_read(Some(&owner(0, 0, true))), Ok(()));
        assert!(
            capless_root
                .may_read(Some(&owner(1000, 1000, true)))
                .is_err()
        );
    }

    #[test]
    fn cluster_callers_read_processes_but_never_kernel_addresses() {
        assert_eq!(Caller::Cluster.may_read(None), Ok(()));
        assert!(!Caller::Cluster.sees_kernel_addresses());
    }

    #[test]
    fn kallsyms_rules() {
        let at = |kptr_restrict, perf_event_paranoid| KptrSysctls {
            kptr_restrict,
            perf_event_paranoid,
        };
        let syslog = 1 << CAP_SYSLOG;
        // kptr_restrict=0 with perf_event_paranoid <= 1: everyone.
        assert!(may_read_kernel_addresses(0, at(0, 1)));
        assert!(may_read_kernel_addresses(0, at(0, -1)));
        // kptr_restrict=0 with a stricter perf_event_paranoid, or 1: CAP_SYSLOG only.
        assert!(!may_read_kernel_addresses(0, at(0, 2)));
        assert!(may_read_kernel_addresses(syslog, at(0, 2)));
        assert!(!may_read_kernel_addresses(0, at(1, -1)));
        assert!(may_read_kernel_addresses(syslog, at(1, 2)));
        assert!(may_read_kernel_addresses(ROOT_CAPS, at(1, 2)));
        // 2: nobody, root included.
        assert!(!may_read_kernel_addresses(ROOT_CAPS, at(2, -1)));
        assert!(!may_read_kernel_addresses(
            ROOT_CAPS,
            KptrSysctls::STRICTEST
        ));
    }
}
