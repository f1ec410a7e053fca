//! Stacks of hung threads: the kernel stack the `dump_stacks` iterator captured
//! (`kernel.rs`), and the user stack unwound with DWARF CFI from the registers saved at
//! kernel entry (`user/`), both symbolized with blazesym and tagged (`tag.rs`) so a
//! report can point at the first frame of the program's own code. A thread running on
//! CPU has no saved registers worth reading: it is sampled by a perf event instead
//! (`on_cpu.rs`), and the sample goes through the same unwinding and symbolization.
mod kernel;
pub mod on_cpu;
mod python;
mod tag;
pub mod taker;
pub mod unwinder;
pub mod user;

use serde::Serialize;

pub use self::{
    kernel::KernelSymbolizer,
    tag::FrameTag,
    taker::{StackSource, StackTaker, ThreadStacks},
    user::UserStacks,
};

/// One frame of a symbolized stack. (Deserialize: frames come back from the unwinder
/// process, `stack::unwinder`.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Frame {
    /// The instruction address (or return address), hex; empty (and left out of the JSON)
    /// when withheld from the reader (`sink::redact`: kernel addresses).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    pub symbol: Option<String>,
    /// Offset of `address` within `symbol`.
    pub offset: Option<u64>,
    /// The module (executable or shared library path, `kernel`, `[vdso]`).
    pub module: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// A function inlined into the frame below it (same address).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inlined: bool,
    /// A Python function's frame (read from the interpreter), not a native one: `symbol`
    /// is its qualified name, `file:line` the source line it runs, `address` that of its
    /// frame in the interpreter's memory.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub python: bool,
    pub tag: FrameTag,
}

impl Frame {
    /// "name at file:line", or the best part of it that is known.
    pub fn location(&self) -> String {
        let name = self.symbol.as_deref().unwrap_or("??");
        match (&self.file, self.line) {
            (Some(file), Some(line)) => format!("{name} at {file}:{line}"),
            (Some(file), None) => format!("{name} at {file}"),
            _ => match &self.module {
                Some(module) => format!("{name} in {module}"),
                None => name.to_owned(),
            },
        }
    }
}

/// The user registers saved when the thread entered the kernel, or sampled while it ran:
/// where its user stack is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct UserRegisters {
    #[serde(serialize_with = "hex", deserialize_with = "unhex")]
    pub ip: u64,
    #[serde(serialize_with = "hex", deserialize_with = "unhex")]
    pub sp: u64,
    #[serde(serialize_with = "hex", deserialize_with = "unhex")]
    pub fp: u64,
}

impl UserRegisters {
    /// Those a `dump_stacks` record saved.
    pub fn of(record: &hangwatch_ebpf::StackRecord) -> Self {
        Self {
            ip: record.user_ip,
            sp: record.user_sp,
            fp: record.user_fp,
        }
    }
}

fn hex<S: serde::Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{value:#x}"))
}

fn unhex<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
    let digits = text.strip_prefix("0x").unwrap_or(&text);
    u64::from_str_radix(digits, 16).map_err(serde::de::Error::custom)
}
