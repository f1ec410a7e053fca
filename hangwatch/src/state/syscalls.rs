//! Syscall numbers to names, for the syscalls a blocked thread is commonly found in (the
//! numbers come from `libc` for the architecture hangwatch is built for), and the syscall
//! a thread is in as `/proc` shows it.

/// `/proc/PID/task/TID/syscall` of a blocked thread: the syscall number and its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSyscall {
    pub nr: i64,
    pub args: [u64; 6],
}

impl ProcSyscall {
    /// Parses "NR ARG1 ... ARG6 SP PC"; `None` for "running" or "-1 ..." (not in a syscall).
    pub fn parse(text: &str) -> Option<Self> {
        let mut fields = text.split_whitespace();
        let nr: i64 = fields.next()?.parse().ok()?;
        if nr < 0 {
            return None;
        }
        let mut args = [0u64; 6];
        for arg in &mut args {
            *arg = u64::from_str_radix(fields.next()?.trim_start_matches("0x"), 16).ok()?;
        }
        Some(Self { nr, args })
    }
}

/// The name of syscall `nr`, or `syscall_<nr>` for one not in the table.
pub fn syscall_name(nr: i64) -> String {
    known(nr).map_or_else(|| format!("syscall_{nr}"), str::to_owned)
}

fn known(nr: i64) -> Option<&'static str> {
    let name = match nr {
        libc::SYS_futex => "futex",
        libc::SYS_futex_waitv => "futex_waitv",
        libc::SYS_read => "read",
        libc::SYS_write => "write",
        libc::SYS_readv => "readv",
        libc::SYS_writev => "writev",
        libc::SYS_pread64 => "pread64",
        libc::SYS_pwrite64 => "pwrite64",
        libc::SYS_openat => "openat",
        libc::SYS_close => "close",
        libc::SYS_fsync => "fsync",
        libc::SYS_fdatasync => "fdatasync",
        libc::SYS_sync => "sync",
        libc::SYS_syncfs => "syncfs",
        libc::SYS_ioctl => "ioctl",
        libc::SYS_epoll_pwait => "epoll_pwait",
        libc::SYS_epoll_pwait2 => "epoll_pwait2",
        libc::SYS_ppoll => "ppoll",
        libc::SYS_pselect6 => "pselect6",
        libc::SYS_io_uring_enter => "io_uring_enter",
        libc::SYS_nanosleep => "nanosleep",
        libc::SYS_clock_nanosleep => "clock_nanosleep",
        libc::SYS_wait4 => "wait4",
        libc::SYS_waitid => "waitid",
        libc::SYS_accept4 => "accept4",
        libc::SYS_connect => "connect",
        libc::SYS_recvfrom => "recvfrom",
        libc::SYS_recvmsg => "recvmsg",
        libc::SYS_sendto => "sendto",
        libc::SYS_sendmsg => "sendmsg",
        libc::SYS_rt_sigsuspend => "rt_sigsuspend",
        libc::SYS_rt_sigtimedwait => "rt_sigtimedwait",
        libc::SYS_flock => "flock",
        libc::SYS_fcntl => "fcntl",
        libc::SYS_msync => "msync",
        libc::SYS_exit_group => "exit_group",
        _ => return arch_specific(nr),
    };
    Some(name)
}

#[cfg(target_arch = "x86_64")]
fn arch_specific(nr: i64) -> Option<&'static str> {
    Some(match nr {
        libc::SYS_epoll_wait => "epoll_wait",
        libc::SYS_poll => "poll",
        libc::SYS_select => "select",
        libc::SYS_pause => "pause",
        libc::SYS_accept => "accept",
        libc::SYS_open => "open",
        // futex_wait(2), Linux 6.7; not yet in every libc.
        455 => "futex_wait",
        _ => return None,
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn arch_specific(nr: i64) -> Option<&'static str> {
    // futex_wait(2) has the same number on every architecture using the generic table.
    (nr == 455).then_some("futex_wait")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_common_blocking_syscalls() {
        assert_eq!(syscall_name(libc::SYS_futex), "futex");
        assert_eq!(syscall_name(libc::SYS_read), "read");
        assert_eq!(syscall_name(455), "futex_wait");
        assert_eq!(syscall_name(100_000), "syscall_100000");
    }

    #[test]
    fn parses_proc_syscall() {
        let s =
            ProcSyscall::parse("202 0x5581 0x80 0x2 0x0 0x0 0x0 0x7ffc 0x7f12\n").expect("parses");
        assert_eq!(s.nr, 202);
        assert_eq!(s.args[..4], [0x5581, 0x80, 2, 0]);
        assert_eq!(ProcSyscall::parse("running\n"), None);
        assert_eq!(ProcSyscall::parse("-1 0x7ffc 0x7f12\n"), None);
    }
}
