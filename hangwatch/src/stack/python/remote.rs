//! Reads of the interpreter's memory through `/proc/PID/mem` (`meta::memory`: killable,
//! never `process_vm_readv`; opened once per stack, one `pread` per read), on the reader
//! worker like the native stack copy, each one bounded, with a budget per stack: a corrupt
//! chain or a huge string costs a few reads and a reason, never a long walk.
use std::io;

use crate::meta::memory::Memory;

/// Reads allowed for one Python stack (thread-state search, frames, code objects, strings).
pub const MAX_READS: u32 = 2048;
/// Bytes allowed for one Python stack.
pub const MAX_BYTES: usize = 512 * 1024;
/// Longest string (file name, function name) read, in bytes.
pub const MAX_STRING: u64 = 1024;
/// Longest line table read, in bytes (a function of thousands of lines).
pub const MAX_LINE_TABLE: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading {len} bytes at {address:#x}: {source}")]
    Io {
        address: u64,
        len: usize,
        #[source]
        source: io::Error,
    },
    #[error("only {got} of {len} bytes at {address:#x} are mapped")]
    Short {
        address: u64,
        len: usize,
        got: usize,
    },
    #[error("the read budget of one stack ({MAX_READS} reads, {MAX_BYTES} bytes) is spent")]
    Budget,
    #[error("a null pointer where {0} was expected")]
    Null(&'static str),
}

/// The reads of one stack of one process.
pub struct Remote {
    pid: u32,
    /// Opened at the first read.
    memory: Option<Memory>,
    reads_left: u32,
    bytes_left: usize,
}

impl Remote {
    pub fn new(pid: u32) -> Self {
        Self {
            pid,
            memory: None,
            reads_left: MAX_READS,
            bytes_left: MAX_BYTES,
        }
    }

    /// Exactly `len` bytes at `address`.
    pub fn bytes(&mut self, address: u64, len: usize) -> Result<Vec<u8>, ReadError> {
        let bytes = self.up_to(address, len)?;
        if bytes.len() < len {
            return Err(ReadError::Short {
                address,
                len,
                got: bytes.len(),
            });
        }
        Ok(bytes)
    }

    /// At most `len` bytes at `address`: fewer where the mapping ends.
    fn up_to(&mut self, address: u64, len: usize) -> Result<Vec<u8>, ReadError> {
        if self.reads_left == 0 || self.bytes_left < len {
            return Err(ReadError::Budget);
        }
        self.reads_left -= 1;
        self.bytes_left -= len;
        let io = |source| ReadError::Io {
            address,
            len,
            source,
        };
        let memory = match &self.memory {
            Some(memory) => memory,
            None => self.memory.insert(Memory::open(self.pid).map_err(io)?),
        };
        let mut bytes = vec![0u8; len];
        let read = memory.read(address, &mut bytes).map_err(io)?;
        bytes.truncate(read);
        Ok(bytes)
    }

    /// The pointer at `address`; `what` names it when it is null.
    pub fn pointer(&mut self, address: u64, what: &'static str) -> Result<u64, ReadError> {
        let bytes = self.bytes(address, 8)?;
        match field_u64(&bytes, 0) {
            Some(0) | None => Err(ReadError::Null(what)),
            Some(p) => Ok(p),
        }
    }

    /// A NUL-terminated C string of at most `max` bytes (a type's `tp_name`).
    pub fn c_string(&mut self, address: u64, max: usize) -> Result<Vec<u8>, ReadError> {
        let mut bytes = self.up_to(address, max)?;
        if let Some(end) = bytes.iter().position(|&b| b == 0) {
            bytes.truncate(end);
        }
        Ok(bytes)
    }
}

/// The native-endian u64 at `offset` of `bytes`.
pub fn field_u64(bytes: &[u8], offset: u64) -> Option<u64> {
    let start = usize::try_from(offset).ok()?;
    let slice = bytes.get(start..start.checked_add(8)?)?;
    Some(u64::from_ne_bytes(slice.try_into().ok()?))
}

/// The native-endian u32 at `offset` of `bytes`.
pub fn field_u32(bytes: &[u8], offset: u64) -> Option<u32> {
    let start = usize::try_from(offset).ok()?;
    let slice = bytes.get(start..start.checked_add(4)?)?;
    Some(u32::from_ne_bytes(slice.try_into().ok()?))
}

pub fn field_u8(bytes: &[u8], offset: u64) -> Option<u8> {
    bytes.get(usize::try_from(offset).ok()?).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_exact_and_budgeted() {
        let words: [u64; 4] = [7, 0, 0x1122_3344_5566_7788, u64::MAX];
        let address = words.as_ptr() as u64;
        let mut remote = Remote::new(std::process::id());
        assert_eq!(remote.pointer(address, "first").ok(), Some(7));
        assert!(matches!(
            remote.pointer(address + 8, "second"),
            Err(ReadError::Null("second"))
        ));
        let bytes = remote.bytes(address + 16, 8).expect("readable");
        assert_eq!(field_u32(&bytes, 0), Some(0x5566_7788));
        assert_eq!(field_u8(&bytes, 7), Some(0x11));
        assert_eq!(field_u64(&bytes, 1), None, "past the end");
        assert!(matches!(
            remote.bytes(8, 8),
            Err(ReadError::Io { .. } | ReadError::Short { .. })
        ));
        remote.reads_left = 0;
        assert!(matches!(remote.bytes(address, 8), Err(ReadError::Budget)));
    }

    #[test]
    fn c_strings_stop_at_their_nul() {
        let text = *b"code\0garbage.....";
        let mut remote = Remote::new(std::process::id());
        let read = remote.c_string(text.as_ptr() as u64, 16).expect("readable");
        assert_eq!(read, b"code");
    }
}
