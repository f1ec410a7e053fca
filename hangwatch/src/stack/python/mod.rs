//! Python frames in the user stacks of CPython threads (3.9 to 3.13): read from the
//! interpreter's memory from outside, without stopping the process, and interleaved with
//! the native frames where they run.
//!
//! maps -> interpreter module and `_PyRuntime` (`runtime.rs`, once per process) -> layout
//! of that version (`layout.rs`) -> the thread's `PyThreadState` and frame chain
//! (`walk.rs`, reads through `remote.rs`, lines from `linetable.rs`) -> Python frames
//! before the `_PyEval_EvalFrameDefault` frames that run them (`merge.rs`).
//! See docs/python.md.
mod layout;
mod linetable;
mod merge;
mod remote;
mod runtime;
pub use runtime::interpreter_module;
mod walk;

use std::{
    collections::{HashMap, VecDeque},
    fs,
    time::{Duration, Instant},
};

use self::{
    remote::Remote,
    walk::{Interpreter, PyFrame},
};
use super::{Frame, tag, user::maps::Mapping};

/// Processes whose interpreter is kept; the oldest is dropped beyond this.
const MAX_PROCESSES: usize = 256;

/// A process, told apart from a later one with the same pid (start time) and from itself
/// before an `execve` (the interpreter file).
type ProcessKey = (u32, u64, String, u64);

/// The user stack of a thread once its Python frames are in.
#[derive(Debug, Default)]
pub struct Expanded {
    pub frames: Vec<Frame>,
    /// Why Python frames are missing or only partly placed.
    pub error: Option<String>,
    /// The asyncio task's coroutine (qualified name) the thread is running.
    pub task: Option<String>,
}

/// What is kept between stacks: each CPython process's runtime, code objects and thread
/// states. A failure to find the runtime is kept too (a stripped binary stays stripped),
/// except a failed read, which may pass.
#[derive(Default)]
pub struct PythonStacks {
    processes: HashMap<ProcessKey, Result<Interpreter, String>>,
    order: VecDeque<ProcessKey>,
    /// Time spent reading and merging Python frames.
    pub spent: Duration,
    /// Stacks of CPython threads that got Python frames.
    pub expanded: u64,
}

impl PythonStacks {
    /// `native` (the symbolized user stack of thread `tid` of `pid`) with the thread's
    /// Python frames interleaved; unchanged when the process is not CPython or the thread
    /// never ran Python.
    /// `interpreter` is the mapping `runtime::interpreter_module` finds in `maps` (found
    /// once per read of the maps, not per stack).
    pub fn expand(
        &mut self,
        pid: u32,
        tid: u32,
        maps: &[Mapping],
        interpreter: Option<&Mapping>,
        native: Vec<Frame>,
    ) -> Expanded {
        let Some(module) = interpreter else {
            return Expanded {
                frames: native,
                ..Expanded::default()
            };
        };
        let started = Instant::now();
        let expanded = self.expand_in(pid, tid, maps, module, native);
        self.spent += started.elapsed();
        expanded
    }

    fn expand_in(
        &mut self,
        pid: u32,
        tid: u32,
        maps: &[Mapping],
        module: &Mapping,
        native: Vec<Frame>,
    ) -> Expanded {
        let unchanged = |frames, error: String| Expanded {
            frames,
            error: Some(format!("no Python frames: {error}")),
            task: None,
        };
        let Some(start) = start_time(pid) else {
            return unchanged(native, format!("process {pid} is gone"));
        };
        let key = (pid, start, module.dev.clone(), module.inode);
        let mut remote = Remote::new(pid);
        let runs_python = native.iter().any(merge::is_eval);
        let named_cpython = runtime::version_in_name(&module.path).is_some();
        let interpreter = match self.interpreter(key, pid, maps, module, &mut remote) {
            Ok(interpreter) => interpreter,
            // A program merely named python-something, whose thread is not in an
            // interpreter loop: nothing to say.
            Err(_) if !runs_python && !named_cpython => {
                return Expanded {
                    frames: native,
                    ..Expanded::default()
                };
            }
            Err(err) => return unchanged(native, err),
        };
        let walked = match interpreter.walk(&mut remote, tid) {
            Ok(Some(walked)) => walked,
            // A thread that never ran Python (a C library's own thread) has none.
            Ok(None) if !runs_python => {
                return Expanded {
                    frames: native,
                    ..Expanded::default()
                };
            }
            Ok(None) => {
                return unchanged(
                    native,
                    format!(
                        "no PyThreadState of {} names thread {tid}",
                        interpreter.runtime.module
                    ),
                );
            }
            Err(err) => {
                return unchanged(
                    native,
                    format!("CPython {}: {err}", interpreter.runtime.layout.version),
                );
            }
        };
        let version = interpreter.runtime.layout.version;
        let stale_native_id =
            walked.by_pthread && interpreter.runtime.layout.tstate_native_thread_id.is_some();
        self.expanded += 1;
        let calls = walked
            .calls
            .into_iter()
            .map(|call| call.into_iter().map(python_frame).collect())
            .collect();
        let (frames, note) = merge::interleave(native, calls);
        let mut notes: Vec<String> = walked.cut.into_iter().chain(note).collect();
        if stale_native_id {
            // 3.11+ after fork(): the child's thread state keeps the parent's thread id.
            notes.push("thread state found by its pthread_t (its native thread id is stale: a child after fork?)".into());
        }
        Expanded {
            frames,
            error: (!notes.is_empty())
                .then(|| format!("Python frames (CPython {version}): {}", notes.join("; "))),
            task: walked.task,
        }
    }

    fn interpreter(
        &mut self,
        key: ProcessKey,
        pid: u32,
        maps: &[Mapping],
        module: &Mapping,
        remote: &mut Remote,
    ) -> Result<&mut Interpreter, String> {
        if !self.processes.contains_key(&key) {
            let found = match runtime::discover(pid, maps, module, remote) {
                Ok(runtime) => Ok(Interpreter::new(runtime)),
                // Memory that could not be read now may be readable next time.
                Err(err @ runtime::RuntimeError::Read { .. }) => return Err(err.to_string()),
                Err(err) => Err(err.to_string()),
            };
            // Entries of exited processes are dropped oldest first.
            if self.order.len() >= MAX_PROCESSES
                && let Some(oldest) = self.order.pop_front()
            {
                self.processes.remove(&oldest);
            }
            self.order.push_back(key.clone());
            self.processes.insert(key.clone(), found);
        }
        match self.processes.get_mut(&key) {
            Some(Ok(interpreter)) => Ok(interpreter),
            Some(Err(err)) => Err(err.clone()),
            None => Err("the interpreter cache lost its entry".into()),
        }
    }
}

fn python_frame(frame: PyFrame) -> Frame {
    Frame {
        address: format!("{:#x}", frame.address),
        tag: tag::classify_python(&frame.file),
        symbol: Some(frame.function),
        offset: None,
        module: None,
        file: Some(frame.file),
        line: frame.line,
        inlined: false,
        python: true,
    }
}

/// The start time of `pid` (field 22 of `/proc/PID/stat`, clock ticks since boot).
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: count fields after the last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_start_time_is_read_and_a_vanished_pid_has_none() {
        assert!(start_time(std::process::id()).is_some());
        assert_eq!(start_time(u32::MAX), None);
    }

    #[test]
    fn a_process_without_cpython_is_left_alone() {
        let pid = std::process::id();
        let maps = super::super::user::maps::read(pid).expect("own maps");
        let mut stacks = PythonStacks::default();
        let interpreter = runtime::interpreter_module(&maps);
        let expanded = stacks.expand(pid, pid, &maps, interpreter, Vec::new());
        assert!(expanded.frames.is_empty() && expanded.error.is_none());
        assert_eq!(stacks.expanded, 0);
    }
}
