//! Reading a blocked thread's stack out of its process, with `process_vm_readv`: one copy
//! of the bytes between the stack pointer and the top of the stack mapping (bounded).
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
    let local = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: sp as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: `local` points to `len` writable bytes we own; the kernel checks `remote`.
    let read = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if read < 0 {
        return Err(io::Error::last_os_error());
    }
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
}
