//! Signal frames on a user stack (x86-64): a thread running a signal handler has, above
//! the handler's frames, the frame the kernel built to deliver the signal
//! (`struct rt_sigframe`: the return address into the `rt_sigreturn` trampoline, the
//! `ucontext` with the interrupted registers and signal mask, the `siginfo`). Recognizing
//! it tells that the thread is in a handler, which signal it handles and, for an
//! `SA_SIGINFO` handler, who sent it; and it lets the unwinder go on below the handler
//! from the interrupted registers, where DWARF has no rule past the trampoline. The test
//! is gdb's (`amd64_linux_sigtramp_p`): the code at the return address is the trampoline's
//! `mov $15, %rax; syscall`.
//!
//! Which signal: the kernel writes `siginfo` into the frame only for an `SA_SIGINFO`
//! handler (elsewhere those bytes are whatever the stack held), and the signal number of
//! a plain handler is only in a register. What always holds: entering a handler adds its
//! signal (and the handler's `sa_mask`) to the thread's blocked mask, and the frame keeps
//! the mask from before (`uc_sigmask`), which `rt_sigreturn` restores. The difference
//! with the thread's blocked mask now (`/proc`'s `SigBlk`) is the handled signal; a
//! `siginfo` is believed only when its signal is in it.
use serde::{Deserialize, Serialize};

use super::memory::StackCopy;
use crate::meta::signal_masks::signal_bit as bit;

/// `mov $__NR_rt_sigreturn, %rax; syscall` (glibc's and musl's `__restore_rt`), and the
/// 32-bit-immediate `mov $15, %eax; syscall` another runtime's restorer may use.
const TRAMPOLINES: [&[u8]; 2] = [
    &[0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05],
    &[0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05],
];

/// The longest trampoline: how many code bytes `is_trampoline` needs.
pub const TRAMPOLINE_BYTES: usize = 9;

/// Whether `code`, read at a return address, is a sigreturn trampoline.
pub fn is_trampoline(code: &[u8]) -> bool {
    TRAMPOLINES.iter().any(|t| code.starts_with(t))
}

// The x86-64 `struct rt_sigframe` from the slot of its return address (`pretcode`):
// `ucontext` follows at 8 (`uc_flags`, `uc_link`, `stack_t uc_stack` (24 bytes), then
// `struct sigcontext uc_mcontext` (r8..r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip,
// ...; 256 bytes), then `uc_sigmask`, 8), and `siginfo` after the 304 bytes of `ucontext`.
const MCONTEXT: u64 = 8 + 8 + 8 + 24;
const SAVED_RBP: u64 = MCONTEXT + 10 * 8;
const SAVED_RSP: u64 = MCONTEXT + 15 * 8;
const SAVED_RIP: u64 = MCONTEXT + 16 * 8;
const SIGMASK: u64 = MCONTEXT + 256;
const SIGINFO: u64 = 8 + 304;
/// `si_code` of a signal the kernel sent itself (a terminal's ^C, ^\).
const SI_KERNEL: i32 = 0x80;
/// How far above the stack pointer the trampoline's return address is looked for.
const SEARCH_BYTES: u64 = 64 * 1024;

/// A signal frame found on a stack, as the kernel left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalFrame {
    /// The thread's blocked mask before the handler (`uc_sigmask`).
    pub mask_before: u64,
    /// The bytes where an `SA_SIGINFO` handler's `siginfo` is: `si_signo`, `si_errno`,
    /// `si_code`, `si_pid`, `si_uid`. Garbage for a plain handler.
    pub siginfo: (u32, u32, i32, u32, u32),
    /// The return address into the trampoline: the frame that stands for the signal.
    pub trampoline: u64,
    /// The interrupted code's registers.
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// Who sent a signal, from its `si_code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SentBy {
    /// kill(2), tgkill(2), sigqueue(3): `si_code` <= 0 from a pid; `sender_pid` says
    /// which.
    Process,
    /// The kernel itself (`SI_KERNEL`): a terminal's ^C or ^\, a pipe's SIGPIPE...
    Kernel,
    /// A fault or a timer, an I/O event (`si_code` > 0).
    Other,
}

/// The signal handler a thread is in, as a report says it (`signal_handler` beside its
/// user stack): the innermost one when handlers are nested.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalHandler {
    /// `SIGTERM`, `SIGINT`, ... (`SIGRTMIN+n`): the signal handled, when the frame and the
    /// thread's mask tell it (absent when the thread's mask could not be read, or the
    /// handler blocks several signals and is no `SA_SIGINFO` one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal_number: Option<u32>,
    /// The signals the handler's entry blocked: its own and its `sa_mask`.
    pub blocked_by_handler: Vec<String>,
    /// For an `SA_SIGINFO` handler, who sent the signal, and the sender.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_by: Option<SentBy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_uid: Option<u32>,
    /// The index in `user_stack` of the trampoline's frame: the frames before it are the
    /// handler's, those after it the code the signal interrupted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame: Option<usize>,
}

impl SignalHandler {
    /// What `frame` says, with the thread's blocked mask now (`blocked_now`, when it
    /// could be read), its trampoline's frame at index `at` of the finished stack.
    pub fn of(frame: &SignalFrame, blocked_now: Option<u64>, at: Option<usize>) -> Self {
        let Some(blocked_now) = blocked_now else {
            return Self {
                frame: at,
                ..Self::default()
            };
        };
        let added = blocked_now & !frame.mask_before;
        let (signo, errno, code, pid, uid) = frame.siginfo;
        // A `siginfo` is believed only for a signal the handler's entry blocked.
        let siginfo = ((1..=64).contains(&signo) && errno == 0 && added & bit(signo) != 0)
            .then_some((signo, code, pid, uid));
        let signal_number = siginfo
            .map(|(signo, ..)| signo)
            .or_else(|| (added.count_ones() == 1).then(|| added.trailing_zeros() + 1));
        let sent_by = siginfo.map(|(_, code, pid, _)| match code {
            // The kernel's own SIGPIPE and SIGXFSZ come as `SI_USER` from pid 0.
            code if code <= 0 && pid != 0 => SentBy::Process,
            code if code <= 0 || code == SI_KERNEL => SentBy::Kernel,
            _ => SentBy::Other,
        });
        let by_process = sent_by == Some(SentBy::Process);
        Self {
            signal: signal_number.map(signal_name),
            signal_number,
            blocked_by_handler: (1..=64)
                .filter(|&n| added & bit(n) != 0)
                .map(signal_name)
                .collect(),
            sent_by,
            sender_pid: siginfo.filter(|_| by_process).map(|(_, _, pid, _)| pid),
            sender_uid: siginfo.filter(|_| by_process).map(|(.., uid)| uid),
            frame: at,
        }
    }
}

impl std::fmt::Display for SignalHandler {
    /// "in a handler of SIGTERM sent by pid 4242 (uid 0), frames #0-#4".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.signal, self.blocked_by_handler.as_slice()) {
            (Some(signal), _) => write!(f, "in a handler of {signal}")?,
            (None, []) => write!(f, "in a signal handler")?,
            (None, blocked) => write!(f, "in a handler of one of {}", blocked.join(", "))?,
        }
        match (self.sent_by, self.sender_pid) {
            (Some(SentBy::Process), Some(pid)) => {
                write!(f, " sent by pid {pid}")?;
                if let Some(uid) = self.sender_uid {
                    write!(f, " (uid {uid})")?;
                }
            }
            (Some(SentBy::Kernel), _) => write!(f, " sent by the kernel")?,
            _ => {}
        }
        match self.frame {
            Some(0) | None => Ok(()),
            Some(1) => write!(f, ", frame #0"),
            Some(n) => write!(f, ", frames #0-#{}", n - 1),
        }
    }
}

/// The name of signal `number` on Linux (x86-64 numbering).
pub fn signal_name(number: u32) -> String {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    match number {
        1..=31 => NAMES[number as usize - 1].to_owned(),
        32..=64 => format!("SIGRTMIN+{}", number - 32),
        _ => format!("signal {number}"),
    }
}

/// How much of a thread's stack, from its stack pointer, `find_in_memory` reads.
pub const FIND_BYTES: usize = 64 * 1024;

/// The signal handler thread `tid` of `pid` is in, found without unwinding: its stack
/// (`FIND_BYTES` from the stack pointer its kernel entry saved, `/proc/.../syscall`) is
/// searched for a word that could start an `rt_sigframe` (a plausible `uc_flags`, a saved
/// stack pointer above it, a mask before the handler that lacks a signal of `wanted` the
/// thread blocks now), and the code that word points at must be the trampoline. For the
/// threads maybe in an exit signal's handler at the daemon's start: one read of the stack
/// and one of 9 bytes of code, instead of the unwinder's cold read of every module.
/// `None` for a running thread (no saved stack pointer), a gone one, or no frame.
pub fn find_in_memory(pid: u32, tid: u32, blocked_now: u64, wanted: u64) -> Option<SignalHandler> {
    let syscall = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    // "NR args... SP PC" while in a syscall ("running" or "-1 SP PC" otherwise).
    let mut fields = syscall.split_whitespace().rev();
    let _pc = fields.next()?;
    let sp = u64::from_str_radix(fields.next()?.trim_start_matches("0x"), 16).ok()?;
    let memory = crate::meta::memory::Memory::open(pid).ok()?;
    let mut bytes = vec![0u8; FIND_BYTES];
    let copied = memory.read(sp, &mut bytes).ok()?;
    bytes.truncate(copied);
    let stack = StackCopy {
        base: sp,
        bytes,
        truncated: false,
    };
    let end = sp + stack.bytes.len() as u64;
    let mut slot = sp.next_multiple_of(8);
    while slot + SIGINFO + 24 <= end {
        let plausible = stack.word(slot + 8).is_some_and(|flags| flags < 0x100)
            && stack
                .word(slot + SIGMASK)
                .is_some_and(|before| blocked_now & !before & wanted != 0)
            && stack.word(slot + SAVED_RSP).is_some_and(|rsp| rsp > slot)
            && stack.word(slot + SAVED_RIP).is_some_and(|rip| rip != 0);
        if plausible && let Some(ret) = stack.word(slot) {
            let mut code = [0u8; TRAMPOLINE_BYTES];
            if memory.read(ret, &mut code).is_ok_and(|n| n >= 7)
                && is_trampoline(&code)
                && let Some(frame) = read(&stack, slot, ret)
            {
                return Some(SignalHandler::of(&frame, Some(blocked_now), None));
            }
        }
        slot += 8;
    }
    None
}

/// Reads the signal frame whose return address `ret` (a trampoline's address) the walk
/// found: its slot is the first word equal to `ret` above `sp`, where this stretch of the
/// walk began. `None` when it is not in the copy or does not look like one (the
/// interrupted stack pointer must lie above the frame).
pub fn read(stack: &StackCopy, sp: u64, ret: u64) -> Option<SignalFrame> {
    let start = sp.max(stack.base).next_multiple_of(8);
    let end = start.saturating_add(SEARCH_BYTES);
    let slot = (start..end)
        .step_by(8)
        .find(|&at| stack.word(at) == Some(ret))?;
    let low = |word: u64| (word & 0xffff_ffff) as u32;
    let high = |word: u64| (word >> 32) as u32;
    let (first, second, third) = (
        stack.word(slot + SIGINFO)?,
        stack.word(slot + SIGINFO + 8)?,
        stack.word(slot + SIGINFO + 16)?,
    );
    let frame = SignalFrame {
        mask_before: stack.word(slot + SIGMASK)?,
        siginfo: (
            low(first),
            high(first),
            low(second) as i32,
            low(third),
            high(third),
        ),
        trampoline: ret,
        ip: stack.word(slot + SAVED_RIP)?,
        sp: stack.word(slot + SAVED_RSP)?,
        bp: stack.word(slot + SAVED_RBP)?,
    };
    (frame.sp > slot && frame.ip != 0).then_some(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trampolines_are_recognized_and_other_code_is_not() {
        assert!(is_trampoline(&[
            0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0x0f, 0x05, 0x90
        ]));
        assert!(is_trampoline(&[0xb8, 0x0f, 0, 0, 0, 0x0f, 0x05, 0, 0]));
        // mov $60, %rax; syscall: exit, not rt_sigreturn.
        assert!(!is_trampoline(&[
            0x48, 0xc7, 0xc0, 0x3c, 0, 0, 0, 0x0f, 0x05
        ]));
        assert!(!is_trampoline(&[0x48, 0xc7]));
    }

    const BASE: u64 = 0x7000_0000;
    const TRAMPOLINE: u64 = 0x5555_0000;

    /// A stack with a handler's word, then the kernel's `rt_sigframe` with `siginfo`
    /// (signo, code, pid) and the mask from before the handler.
    fn stack_with_frame((signo, code, pid): (u64, i64, u64), saved_sp: u64) -> StackCopy {
        let mut bytes = vec![0u8; 2048];
        let mut put = |at: u64, v: u64| {
            let o = (at - BASE) as usize;
            bytes[o..o + 8].copy_from_slice(&v.to_ne_bytes());
        };
        let slot = BASE + 16;
        put(BASE, 0x1111);
        put(slot, TRAMPOLINE);
        put(slot + SAVED_RBP, 0xb0b0);
        put(slot + SAVED_RSP, saved_sp);
        put(slot + SAVED_RIP, 0x4444_0000);
        put(slot + SIGMASK, bit(10)); // SIGUSR1 blocked before
        put(slot + SIGINFO, signo);
        put(slot + SIGINFO + 8, code as u64);
        put(slot + SIGINFO + 16, pid | (1000 << 32));
        StackCopy {
            base: BASE,
            bytes,
            truncated: false,
        }
    }

    #[test]
    fn a_frame_gives_the_interrupted_registers_and_the_mask_before() {
        let stack = stack_with_frame((15, 0, 4242), BASE + 0x700);
        let frame = read(&stack, BASE, TRAMPOLINE).expect("a signal frame");
        assert_eq!(
            frame,
            SignalFrame {
                mask_before: bit(10),
                siginfo: (15, 0, 0, 4242, 1000),
                trampoline: TRAMPOLINE,
                ip: 0x4444_0000,
                sp: BASE + 0x700,
                bp: 0xb0b0,
            }
        );
        assert!(read(&stack, BASE, 0x6666_0000).is_none(), "no such word");
        let below = stack_with_frame((15, 0, 1), 0x6000_0000);
        assert!(
            read(&below, BASE, TRAMPOLINE).is_none(),
            "sp below the frame"
        );
    }

    #[test]
    fn the_signal_is_the_one_the_handler_blocked_and_siginfo_only_believed_for_it() {
        let frame = |siginfo| read(&stack_with_frame(siginfo, BASE + 0x700), BASE, TRAMPOLINE);
        // SA_SIGINFO, SIGTERM from pid 4242: blocked now are SIGUSR1 (before) and SIGTERM.
        let now = bit(10) | bit(15);
        let handler = SignalHandler::of(&frame((15, 0, 4242)).unwrap(), Some(now), Some(3));
        assert_eq!(
            handler,
            SignalHandler {
                signal: Some("SIGTERM".into()),
                signal_number: Some(15),
                blocked_by_handler: vec!["SIGTERM".into()],
                sent_by: Some(SentBy::Process),
                sender_pid: Some(4242),
                sender_uid: Some(1000),
                frame: Some(3),
            }
        );
        // A plain handler: what lies where siginfo would be is not the blocked signal.
        let plain = SignalHandler::of(&frame((7, 0, 99)).unwrap(), Some(now), None);
        assert_eq!(
            (plain.signal.as_deref(), plain.sent_by, plain.sender_pid),
            (Some("SIGTERM"), None, None)
        );
        // A plain handler blocking SIGINT and SIGTERM (its sa_mask): which one is unknown.
        let both = bit(10) | bit(2) | bit(15);
        let unknown = SignalHandler::of(&frame((0, 0, 0)).unwrap(), Some(both), None);
        assert_eq!(unknown.signal, None);
        assert_eq!(unknown.blocked_by_handler, ["SIGINT", "SIGTERM"]);
        // ^C from a terminal to an SA_SIGINFO handler.
        let tty = SignalHandler::of(&frame((2, 0x80, 0)).unwrap(), Some(bit(10) | bit(2)), None);
        assert_eq!((tty.sent_by, tty.sender_pid), (Some(SentBy::Kernel), None));
        // No mask: only the frame.
        let blind = SignalHandler::of(&frame((15, 0, 4242)).unwrap(), None, Some(1));
        assert_eq!((blind.signal, blind.frame), (None, Some(1)));
        assert_eq!(signal_name(34), "SIGRTMIN+2");
        assert_eq!(
            handler.to_string(),
            "in a handler of SIGTERM sent by pid 4242 (uid 1000), frames #0-#2"
        );
        assert_eq!(
            unknown.to_string(),
            "in a handler of one of SIGINT, SIGTERM"
        );
    }
}
