//! A thread's signal masks as `/proc/TGID/task/TID/status` shows them (`SigPnd`,
//! `ShdPnd`, `SigBlk`, `SigIgn`, `SigCgt`: hex, bit `n - 1` for signal `n`). The file
//! takes no lock of the process's memory: readable while its mm lock is stuck.
use std::fs;

/// Signal `number`'s bit in a mask as /proc and `sigset_t` write it (0 outside 1..=64).
pub const fn signal_bit(number: u32) -> u64 {
    match number {
        1..=64 => 1 << (number - 1),
        _ => 0,
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignalMasks {
    /// Pending for this thread (`SigPnd`).
    pub pending: u64,
    /// Pending for the whole process (`ShdPnd`).
    pub shared_pending: u64,
    pub blocked: u64,
    pub ignored: u64,
    /// Signals with a handler (`SigCgt`).
    pub caught: u64,
}

impl SignalMasks {
    /// The masks of thread `tid` of `tgid`; `None` when it is gone.
    pub fn of(tgid: u32, tid: u32) -> Option<Self> {
        fs::read_to_string(format!("/proc/{tgid}/task/{tid}/status"))
            .ok()
            .map(|status| Self::parse(&status))
    }

    pub fn parse(status: &str) -> Self {
        let mut masks = Self::default();
        for line in status.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let Ok(mask) = u64::from_str_radix(value.trim(), 16) else {
                continue;
            };
            match key {
                "SigPnd" => masks.pending = mask,
                "ShdPnd" => masks.shared_pending = mask,
                "SigBlk" => masks.blocked = mask,
                "SigIgn" => masks.ignored = mask,
                "SigCgt" => masks.caught = mask,
                _ => {}
            }
        }
        masks
    }

    /// Pending for the thread or its process.
    pub fn any_pending(&self) -> u64 {
        self.pending | self.shared_pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_masks_are_read_from_status() {
        let status = "Name:\tx\nSigQ:\t0/96365\nSigPnd:\t0000000000000100\nShdPnd:\t0000000000004000\nSigBlk:\t0000000000004000\nSigIgn:\t0000000000001000\nSigCgt:\t0000000180004002\nCapInh:\t0000000000000000\n";
        assert_eq!(
            SignalMasks::parse(status),
            SignalMasks {
                pending: 0x100,
                shared_pending: 0x4000,
                blocked: 0x4000,
                ignored: 0x1000,
                caught: 0x1_8000_4002,
            }
        );
    }

    #[test]
    fn our_own_thread_is_read() {
        let pid = std::process::id();
        let masks = SignalMasks::of(pid, pid).expect("our status");
        assert_eq!(masks.any_pending() & (1 << (libc::SIGKILL - 1)), 0);
    }
}
