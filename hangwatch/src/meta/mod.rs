//! What a report says about the process around a thread: read from /proc once per process
//! and cached, checked against the thread's start time so a reused pid is never confused
//! with the process that had it before.
pub mod confirm;
pub mod container;
pub mod early_exits;
pub mod futex_owner;
pub mod helper;
mod locks;
pub mod loop_fds;
pub mod memory;
pub mod owner;
pub mod pi_park;
pub mod pods;
mod process;
pub mod reader;
pub mod signal_masks;

pub use self::{
    futex_owner::OwnerCache,
    locks::LockFacts,
    process::{ProcessCache, ProcessInfo, ThreadProc, exiting, thread_key, thread_proc, wchan},
};
