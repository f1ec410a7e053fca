//! Confirmation against /proc of what the detectors saw in the samples: a deadlock is
//! reported only if every member is still alive, in the same futex wait, and not being
//! killed; a whole process only if it has no other thread and handles no signal that a
//! sender could wake it with. Reads only `/proc/PID/{status,exe}` and
//! `/proc/PID/task/TID/{stat,syscall,status}` (no mm lock: safe on the detection thread).
use std::fs;

use super::futex_owner;
use crate::state::{FutexCall, ThreadSample};

/// A deadlock seen in the samples, checked against /proc now: every member still alive,
/// in the same futex wait, with no kill pending; for a whole process, no other thread and
/// no signal handler that could wake it. `Some` with what /proc added to the evidence.
pub fn deadlock(members: &[&ThreadSample], whole_process: bool) -> Option<Vec<String>> {
    let tgid = members.first()?.tgid;
    let mut evidence = Vec::new();
    if whole_process {
        if futex_owner::thread_count(tgid) != Some(members.len()) {
            return None;
        }
        evidence.push(format!(
            "/proc lists {} thread(s) in the process: no other thread could make progress",
            members.len()
        ));
        let status = fs::read_to_string(format!("/proc/{tgid}/status")).ok()?;
        let caught = signal_mask(&status, "SigCgt:")?;
        let python = is_cpython(tgid);
        evidence.push(Handlers::of(caught, python).explain().ok()?);
    }
    let same = members.iter().all(|m| {
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
    });
    same.then_some(evidence)
}

/// The process's executable is CPython's (`python3`, `python3.11`...): its SIGINT handler
/// is the interpreter's own, which raises KeyboardInterrupt.
fn is_cpython(tgid: u32) -> bool {
    fs::read_link(format!("/proc/{tgid}/exe")).is_ok_and(|exe| {
        exe.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("python"))
    })
}

/// A signal mask line of `/proc/PID/status` (`SigCgt:\t0000000100000440`).
fn signal_mask(status: &str, key: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix(key))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Signals whose handlers are for faults of the thread itself (a crash reporter, Rust's
/// stack overflow guard): no sender uses them to wake a process.
const FAULTS: [i32; 7] = [
    libc::SIGILL,
    libc::SIGTRAP,
    libc::SIGABRT,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGSEGV,
    libc::SIGSYS,
];
/// glibc's own real-time signals (SIGCANCEL for pthread_cancel, SIGSETXID for setuid and
/// friends): their handlers act only on signals from the process itself.
const GLIBC_INTERNAL: [i32; 2] = [32, 33];

/// The signal handlers of a process, sorted by whether a sender could wake it with them.
#[derive(Debug, PartialEq, Eq)]
struct Handlers {
    mask: u64,
    /// Handlers that could wake it (a handler can post a semaphore, write a pipe...).
    waking: Vec<i32>,
    /// Handlers that cannot: faults, glibc's own, CPython's SIGINT.
    inert: Vec<(i32, &'static str)>,
}

impl Handlers {
    fn of(mask: u64, python: bool) -> Self {
        let mut waking = Vec::new();
        let mut inert = Vec::new();
        for sig in 1..=64i32 {
            if mask & (1u64 << (sig - 1)) == 0 {
                continue;
            }
            if FAULTS.contains(&sig) {
                inert.push((sig, "a fault handler"));
            } else if GLIBC_INTERNAL.contains(&sig) {
                inert.push((sig, "glibc's own"));
            } else if python && sig == libc::SIGINT {
                // It raises KeyboardInterrupt in the main thread: the end of the program,
                // not the wakeup it waits for.
                inert.push((sig, "CPython's KeyboardInterrupt"));
            } else {
                waking.push(sig);
            }
        }
        Self {
            mask,
            waking,
            inert,
        }
    }

    /// The evidence sentence when no handler could wake the process; `Err` names the ones
    /// that could.
    fn explain(&self) -> Result<String, String> {
        let names = |sigs: &mut dyn Iterator<Item = String>| sigs.collect::<Vec<_>>().join(", ");
        if !self.waking.is_empty() {
            return Err(format!(
                "it handles {}: a signal could wake it",
                names(&mut self.waking.iter().map(|&s| signal_name(s)))
            ));
        }
        let mask = self.mask;
        Ok(if self.inert.is_empty() {
            format!("it handles no signal (SigCgt {mask:#x}): no sender can wake it")
        } else {
            format!(
                "it handles no signal a sender could wake it with (SigCgt {mask:#x}: {})",
                names(
                    &mut self
                        .inert
                        .iter()
                        .map(|(s, why)| format!("{} is {why}", signal_name(*s)))
                )
            )
        })
    }
}

fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGWINCH => "SIGWINCH",
        libc::SIGSYS => "SIGSYS",
        other => return format!("signal {other}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_caught_mask() {
        let status = "Name:\tx\nSigIgn:\t0000000000000006\nSigCgt:\t0000000100000440\n";
        assert_eq!(signal_mask(status, "SigCgt:"), Some(0x1_0000_0440));
        assert_eq!(signal_mask(status, "SigBlk:"), None);
    }

    #[test]
    fn fault_and_glibc_handlers_cannot_wake_a_process() {
        // A Rust program: SIGSEGV and SIGBUS (stack overflow guard), glibc's SIGSETXID.
        let rust = Handlers::of(0x1_0000_0440, false);
        assert!(rust.waking.is_empty(), "{rust:?}");
        let why = rust.explain().expect("inert");
        assert!(why.contains("SIGSEGV is a fault handler"), "{why}");
        assert!(why.contains("signal 33 is glibc's own"), "{why}");
        assert!(Handlers::of(0, false).explain().is_ok());
    }

    #[test]
    fn a_handler_a_sender_can_use_keeps_the_process_alive() {
        // sem_post from a SIGTERM handler: the classic way to wake a daemon's main.
        let term = Handlers::of(1 << (libc::SIGTERM - 1), false);
        assert_eq!(term.waking, vec![libc::SIGTERM]);
        assert!(term.explain().unwrap_err().contains("SIGTERM"));
        // SIGINT is a wakeup for a C program, CPython's KeyboardInterrupt in Python.
        let int = 1 << (libc::SIGINT - 1);
        assert_eq!(Handlers::of(int, false).waking, vec![libc::SIGINT]);
        assert!(Handlers::of(int, true).waking.is_empty());
        // A JVM or Go runtime handles many: never inert.
        assert!(!Handlers::of(0xffff_fffe_7ffb_fa7f, false).waking.is_empty());
    }
}
