//! Reading a blocked thread's stack out of its process, through `/proc/PID/mem` (`crate::meta::memory`): one copy
//! of the bytes between the stack pointer and the top of the stack mapping (bounded). A
//! running thread's copy comes from a perf sample instead (`super::super::on_cpu`).
use std::io;

/// At most this much of a stack is copied: deeper frames are cut (and said so).
pub const MAX_STACK_BYTES: u64 = 512 * 1024;

/// A copy of `[base, base + bytes.len())` of a thread's stack.
pub struct StackCopy {
    pub base: u64,
    pub bytes: Vec<u8>,
    /// The copy stops before the top of the stack mapping.
    pub truncated: bool,
}

impl StackCopy {
    /// The copy cut at `top`, the end of the stack mapping: a perf sample copies a fixed
    /// size and may run past it into the next mapping. `truncated` then says whether the
    /// copy stops before the top.
    pub fn within(mut self, top: u64) -> Self {
        let room = usize::try_from(top.saturating_sub(self.base)).unwrap_or(usize::MAX);
        self.bytes.truncate(room);
        self.truncated = self.base.saturating_add(self.bytes.len() as u64) < top;
        self
    }

    /// The 8-byte word at `address`, if it lies in the copy.
    pub fn word(&self, address: u64) -> Option<u64> {
        let offset = usize::try_from(address.checked_sub(self.base)?).ok()?;
        let bytes = self.bytes.get(offset..offset.checked_add(8)?)?;
        Some(u64::from_ne_bytes(bytes.try_into().ok()?))
    }
}

/// Copies the stack of a thread of `pid` from `sp` up to `top` (the end of its mapping).
pub fn copy_stack(pid: u32, sp: u64, top: u64) -> io::Result<StackCopy> {
    let wanted = top.saturating_sub(sp);
    let len = wanted.min(MAX_STACK_BYTES) as usize;
    let mut bytes = vec![0u8; len];
    let read = crate::meta::memory::read(pid, sp, &mut bytes)?;
    bytes.truncate(read as usize);
    Ok(StackCopy {
        base: sp,
        truncated: (read as u64) < wanted,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_our_own_stack() {
        let marker: u64 = 0x1234_5678_9abc_def0;
        let address = std::ptr::from_ref(&marker) as u64;
        let copy = copy_stack(std::process::id(), address, address + 64).expect("readable");
        assert_eq!(copy.word(address), Some(marker));
        assert_eq!(copy.word(address + 64), None, "outside the copy");
        assert!(!copy.truncated);
    }

    #[test]
    fn a_copy_is_cut_at_the_top_of_its_mapping() {
        let copy = || StackCopy {
            base: 0x1000,
            bytes: vec![0; 0x100],
            truncated: true,
        };
        let cut = copy().within(0x1080);
        assert_eq!((cut.bytes.len(), cut.truncated), (0x80, false));
        let whole = copy().within(0x1100);
        assert_eq!((whole.bytes.len(), whole.truncated), (0x100, false));
        let short = copy().within(0x2000);
        assert_eq!((short.bytes.len(), short.truncated), (0x100, true));
    }
}
