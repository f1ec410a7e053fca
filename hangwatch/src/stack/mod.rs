//! Stacks of hung threads. `kernel.rs` symbolizes the kernel stack the `dump_stacks`
//! iterator captured; user stacks (DWARF unwinding from the saved registers) build on the
//! same capture.
mod kernel;

use serde::Serialize;

pub use kernel::KernelSymbolizer;

/// One frame of a symbolized stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Frame {
    /// The instruction address, hex.
    pub address: String,
    pub symbol: Option<String>,
    /// Offset of `address` within `symbol`.
    pub offset: Option<u64>,
    pub module: Option<String>,
}

/// The user registers saved when the thread entered the kernel: where its user stack is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UserRegisters {
    #[serde(serialize_with = "hex")]
    pub ip: u64,
    #[serde(serialize_with = "hex")]
    pub sp: u64,
    #[serde(serialize_with = "hex")]
    pub fp: u64,
}

fn hex<S: serde::Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{value:#x}"))
}
