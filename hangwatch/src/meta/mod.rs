//! What a report says about the process around a thread: read from /proc once per process
//! and cached, checked against the thread's start time so a reused pid is never confused
//! with the process that had it before.
mod process;

pub use process::{ProcSyscall, ProcessCache, ThreadProc, thread_proc};
