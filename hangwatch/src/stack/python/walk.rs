//! The Python frames of one thread: its `PyThreadState` (the one whose native thread id,
//! or whose `pthread_t`'s tid, is the thread's), then its frame chain, innermost first,
//! split into the runs of frames each `_PyEval_EvalFrameDefault` call executes.
//!
//! Everything read is checked before it is believed: the thread state must name the
//! thread, every code object's type must be named "code" and every string's "str"; a
//! failed check stops the walk with a reason, it never yields a guessed frame.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use super::{
    layout::{
        BYTES_DATA, BYTES_SIZE, CO_COROUTINE, FrameModel, Layout, OB_TYPE, TYPE_NAME,
        UNICODE_LENGTH, UNICODE_STATE,
    },
    linetable,
    remote::{MAX_LINE_TABLE, MAX_STRING, ReadError, Remote, field_u32, field_u64},
    runtime::Runtime,
};

/// Python frames walked per thread.
pub const MAX_FRAMES: usize = 128;
/// Interpreters and thread states looked at when searching a thread's state.
const MAX_INTERPRETERS: usize = 64;
const MAX_THREAD_STATES: usize = 4096;
/// Code objects kept per process (a cache entry is a few strings and a line table).
const MAX_CACHED_CODE: usize = 4096;
/// Offsets of `tid` in the C library's `struct pthread` (glibc on x86_64, then musl): the
/// only way to tie a 3.9/3.10 thread state to a kernel thread, and the way a child after
/// `fork()` is recognised when its thread state still carries the parent thread's id.
const PTHREAD_TID_OFFSETS: [u64; 2] = [720, 48];

#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("the object at {address:#x} should be a {expected} but its type is {found:?}")]
    WrongType {
        address: u64,
        expected: &'static str,
        found: String,
    },
    #[error("the string at {address:#x} is not a compact str object")]
    NotCompactString { address: u64 },
}

/// One Python frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyFrame {
    /// The frame's address in the process (`_PyInterpreterFrame` or `PyFrameObject`).
    pub address: u64,
    pub function: String,
    pub file: String,
    pub line: Option<u32>,
    /// The code is a coroutine (`async def`).
    pub coroutine: bool,
    /// 3.9/3.10: the frame's generator object, where a coroutine's qualified name is.
    generator: u64,
}

/// What the walk found.
#[derive(Debug, Default)]
pub struct Walked {
    /// The frames of each `_PyEval_EvalFrameDefault` call, innermost call first, each
    /// innermost frame first.
    pub calls: Vec<Vec<PyFrame>>,
    /// Why the walk stopped before the outermost frame.
    pub cut: Option<String>,
    /// The qualified name of the coroutine the innermost await chain started from: the
    /// asyncio task's coroutine.
    pub task: Option<String>,
    /// The thread state was tied to the thread through its `pthread_t`.
    pub by_pthread: bool,
}

/// A code object, as far as a frame needs it.
struct Code {
    function: String,
    file: String,
    first_line: u32,
    flags: u32,
    /// Empty when it could not be read (the line is then unknown).
    line_table: Vec<u8>,
}

/// The code object at an address, with the pointers it held when read: a freed code object
/// whose address is reused gets a new key unless its strings are the very same objects.
type CodeKey = (u64, [u64; 4], u32, u32);

/// Per process: the runtime found once, the code objects and types already checked, and
/// which thread state belongs to which thread.
pub struct Interpreter {
    pub runtime: Runtime,
    code: HashMap<CodeKey, Arc<Code>>,
    /// Type objects whose `tp_name` was checked, by expected name.
    types: HashSet<(u64, &'static str)>,
    thread_states: HashMap<u32, u64>,
}

impl Interpreter {
    pub fn new(runtime: Runtime) -> Self {
        Self {
            runtime,
            code: HashMap::new(),
            types: HashSet::new(),
            thread_states: HashMap::new(),
        }
    }

    fn layout(&self) -> &Layout {
        &self.runtime.layout
    }

    /// The Python frames of thread `tid`; `None` when no thread state belongs to it (a
    /// thread that never ran Python).
    pub fn walk(&mut self, remote: &mut Remote, tid: u32) -> Result<Option<Walked>, WalkError> {
        let Some((state, by_pthread)) = self.thread_state(remote, tid)? else {
            return Ok(None);
        };
        let mut walked = Walked {
            by_pthread,
            ..Walked::default()
        };
        let layout = self.layout().clone();
        let mut frame = match layout.cframe_current_frame {
            Some(current) => {
                let cframe = remote.pointer(state + layout.tstate_frame, "PyThreadState.cframe")?;
                read_u64(remote, cframe + current)?
            }
            None => read_u64(remote, state + layout.tstate_frame)?,
        };
        let mut call = Vec::new();
        let mut frames = 0;
        while frame != 0 {
            if frames == MAX_FRAMES {
                walked.cut = Some(format!("cut at {MAX_FRAMES} Python frames"));
                break;
            }
            frames += 1;
            match self.frame(remote, frame) {
                Ok(Step::Shim { previous }) => {
                    walked.calls.push(std::mem::take(&mut call));
                    frame = previous;
                }
                Ok(Step::Frame {
                    frame: py,
                    previous,
                    ends_call,
                }) => {
                    call.push(py);
                    if ends_call {
                        walked.calls.push(std::mem::take(&mut call));
                    }
                    frame = previous;
                }
                Err(err) => {
                    walked.cut = Some(format!("Python frame at {frame:#x}: {err}"));
                    break;
                }
            }
        }
        if !call.is_empty() {
            walked.calls.push(call);
        }
        walked.task = self.task(remote, &walked.calls);
        Ok(Some(walked))
    }

    /// The thread state of `tid`: the cached one if it still names the thread, else a
    /// search of every interpreter's thread list.
    fn thread_state(
        &mut self,
        remote: &mut Remote,
        tid: u32,
    ) -> Result<Option<(u64, bool)>, WalkError> {
        if let Some(&state) = self.thread_states.get(&tid) {
            if let Some(by_pthread) = self.belongs_to(remote, state, tid)? {
                return Ok(Some((state, by_pthread)));
            }
            self.thread_states.remove(&tid);
        }
        let layout = self.layout().clone();
        let mut states = Vec::new();
        let mut interpreter = read_u64(
            remote,
            self.runtime.address + layout.runtime_interpreters_head,
        )?;
        for _ in 0..MAX_INTERPRETERS {
            if interpreter == 0 {
                break;
            }
            let mut state = read_u64(remote, interpreter + layout.interp_threads_head)?;
            while state != 0 && states.len() < MAX_THREAD_STATES {
                let header = remote.bytes(state, thread_state_size(&layout))?;
                if let Some(native) = layout.tstate_native_thread_id
                    && field_u64(&header, native) == Some(u64::from(tid))
                {
                    self.remember(tid, state);
                    return Ok(Some((state, false)));
                }
                states.push((state, field_u64(&header, layout.tstate_thread_id)));
                state = field_u64(&header, layout.tstate_next).unwrap_or(0);
            }
            interpreter = read_u64(remote, interpreter + layout.interp_next)?;
        }
        for (state, pthread) in states {
            if let Some(pthread) = pthread.filter(|&p| p != 0)
                && pthread_is(remote, pthread, tid)?
            {
                self.remember(tid, state);
                return Ok(Some((state, true)));
            }
        }
        Ok(None)
    }

    /// `Some(by_pthread)` when thread state `state` still belongs to thread `tid`.
    fn belongs_to(
        &self,
        remote: &mut Remote,
        state: u64,
        tid: u32,
    ) -> Result<Option<bool>, WalkError> {
        let layout = self.layout();
        let header = remote.bytes(state, thread_state_size(layout))?;
        if let Some(native) = layout.tstate_native_thread_id
            && field_u64(&header, native) == Some(u64::from(tid))
        {
            return Ok(Some(false));
        }
        match field_u64(&header, layout.tstate_thread_id).filter(|&p| p != 0) {
            Some(pthread) if pthread_is(remote, pthread, tid)? => Ok(Some(true)),
            _ => Ok(None),
        }
    }

    fn remember(&mut self, tid: u32, state: u64) {
        if self.thread_states.len() >= MAX_THREAD_STATES {
            self.thread_states.clear();
        }
        self.thread_states.insert(tid, state);
    }

    fn frame(&mut self, remote: &mut Remote, address: u64) -> Result<Step, WalkError> {
        let layout = self.layout().clone();
        let bytes = remote.bytes(address, layout.frame_size as usize)?;
        let field = |offset| field_u64(&bytes, offset).unwrap_or(0);
        let previous = field(layout.frame_previous);
        if layout.is_shim(&bytes) {
            return Ok(Step::Shim { previous });
        }
        let code_address = field(layout.frame_code);
        let code = self.code(remote, code_address)?;
        let byte_offset = match layout.frame_model {
            FrameModel::FrameObject {
                lasti_in_code_units,
            } => {
                let lasti = i64::from(field_u32(&bytes, layout.frame_instr).unwrap_or(0) as i32);
                if lasti_in_code_units {
                    lasti * 2
                } else {
                    lasti
                }
            }
            FrameModel::EntryFlag { .. } | FrameModel::EntryShim { .. } => {
                let bytecode = code_address + layout.code_adaptive.unwrap_or(0);
                (field(layout.frame_instr) as i64).wrapping_sub(bytecode as i64)
            }
        };
        let line = linetable::line_of(
            layout.line_table,
            &code.line_table,
            code.first_line,
            byte_offset,
        );
        Ok(Step::Frame {
            frame: PyFrame {
                address,
                function: code.function.clone(),
                file: code.file.clone(),
                line,
                coroutine: code.flags & CO_COROUTINE != 0,
                generator: layout.frame_gen.map(field).unwrap_or(0),
            },
            previous,
            ends_call: layout.ends_call(&bytes),
        })
    }

    fn code(&mut self, remote: &mut Remote, address: u64) -> Result<Arc<Code>, WalkError> {
        let layout = self.layout().clone();
        let header = remote.bytes(address, layout.code_size as usize)?;
        let field = |offset| field_u64(&header, offset).unwrap_or(0);
        self.check_type(remote, address, field(OB_TYPE), "code")?;
        let name = layout.code_qualname.map_or(layout.code_name, |q| q);
        let pointers = [
            field(layout.code_filename),
            field(name),
            field(layout.code_linetable),
            0,
        ];
        let first_line = field_u32(&header, layout.code_firstlineno).unwrap_or(0);
        let flags = field_u32(&header, layout.code_flags).unwrap_or(0);
        let key = (address, pointers, first_line, flags);
        if let Some(code) = self.code.get(&key) {
            return Ok(code.clone());
        }
        let code = Arc::new(Code {
            file: self.string(remote, pointers[0])?,
            function: self.string(remote, pointers[1])?,
            first_line,
            flags,
            // A table that cannot be read costs the line, not the frame.
            line_table: self.bytes_object(remote, pointers[2]).unwrap_or_default(),
        });
        if self.code.len() >= MAX_CACHED_CODE {
            self.code.clear();
        }
        self.code.insert(key, code.clone());
        Ok(code)
    }

    /// Checks that the type of the object at `object` is named `expected` (once per type).
    fn check_type(
        &mut self,
        remote: &mut Remote,
        object: u64,
        type_address: u64,
        expected: &'static str,
    ) -> Result<(), WalkError> {
        if self.types.contains(&(type_address, expected)) {
            return Ok(());
        }
        let wrong = |found: String| WalkError::WrongType {
            address: object,
            expected,
            found,
        };
        if type_address == 0 {
            return Err(wrong("a null type".into()));
        }
        let name_address = read_u64(remote, type_address + TYPE_NAME)?;
        let name = remote.c_string(name_address, 32)?;
        if name != expected.as_bytes() {
            return Err(wrong(String::from_utf8_lossy(&name).into_owned()));
        }
        self.types.insert((type_address, expected));
        Ok(())
    }

    /// A `str` object's text (compact strings only: every identifier and file name is
    /// one), cut at `MAX_STRING` characters.
    fn string(&mut self, remote: &mut Remote, address: u64) -> Result<String, WalkError> {
        let layout = self.layout().clone();
        let header = remote.bytes(address, layout.unicode_compact_data as usize)?;
        self.check_type(
            remote,
            address,
            field_u64(&header, OB_TYPE).unwrap_or(0),
            "str",
        )?;
        let length = field_u64(&header, UNICODE_LENGTH).unwrap_or(0);
        let state = field_u32(&header, UNICODE_STATE).unwrap_or(0);
        let (kind, compact, ascii) = (
            (state >> 2) & 7,
            state & (1 << 5) != 0,
            state & (1 << 6) != 0,
        );
        if !compact || !matches!(kind, 1 | 2 | 4) {
            return Err(WalkError::NotCompactString { address });
        }
        let data = if ascii {
            layout.unicode_ascii_data
        } else {
            layout.unicode_compact_data
        };
        let shown = length.min(MAX_STRING);
        let bytes = remote.bytes(address + data, (shown * u64::from(kind)) as usize)?;
        let mut text: String = match kind {
            1 => bytes.iter().map(|&b| char::from(b)).collect(),
            2 => bytes
                .chunks_exact(2)
                .map(|c| u16::from_ne_bytes([c[0], c[1]]))
                .map(|u| char::from_u32(u32::from(u)).unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect(),
            _ => bytes
                .chunks_exact(4)
                .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                .map(|u| char::from_u32(u).unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect(),
        };
        if shown < length {
            text.push('…');
        }
        Ok(text)
    }

    /// A `bytes` object's content, at most `MAX_LINE_TABLE` bytes.
    fn bytes_object(&mut self, remote: &mut Remote, address: u64) -> Result<Vec<u8>, WalkError> {
        let header = remote.bytes(address, BYTES_DATA as usize)?;
        self.check_type(
            remote,
            address,
            field_u64(&header, OB_TYPE).unwrap_or(0),
            "bytes",
        )?;
        let size = field_u64(&header, BYTES_SIZE).unwrap_or(0);
        if size > MAX_LINE_TABLE {
            return Ok(Vec::new());
        }
        Ok(remote.bytes(address + BYTES_DATA, size as usize)?)
    }

    /// The qualified name of the asyncio task's coroutine: the outermost frame of the
    /// innermost chain of coroutine frames (a task's `__step` sends into its coroutine,
    /// which awaits the next one, and so on down to the frame running now).
    fn task(&mut self, remote: &mut Remote, calls: &[Vec<PyFrame>]) -> Option<String> {
        let frames: Vec<&PyFrame> = calls.iter().flatten().collect();
        let first = frames.iter().position(|f| f.coroutine)?;
        let outermost = frames[first..]
            .iter()
            .take_while(|f| f.coroutine)
            .last()
            .copied()?;
        // 3.9/3.10 code objects have no qualified name: the coroutine object has.
        let Some(qualname) = self.layout().gen_qualname else {
            return Some(outermost.function.clone());
        };
        let from_generator = (outermost.generator != 0)
            .then(|| read_u64(remote, outermost.generator + qualname).ok())
            .flatten()
            .and_then(|name| self.string(remote, name).ok());
        Some(from_generator.unwrap_or_else(|| outermost.function.clone()))
    }
}

enum Step {
    /// A 3.12+ shim frame: the boundary between two `_PyEval_EvalFrameDefault` calls.
    Shim { previous: u64 },
    Frame {
        frame: PyFrame,
        previous: u64,
        ends_call: bool,
    },
}

fn read_u64(remote: &mut Remote, address: u64) -> Result<u64, ReadError> {
    let bytes = remote.bytes(address, 8)?;
    Ok(field_u64(&bytes, 0).unwrap_or(0))
}

/// Bytes of a thread state to read: every field the search looks at.
fn thread_state_size(layout: &Layout) -> usize {
    [
        layout.tstate_next,
        layout.tstate_thread_id,
        layout.tstate_native_thread_id.unwrap_or(0),
        layout.tstate_frame,
    ]
    .into_iter()
    .max()
    .unwrap_or(0) as usize
        + 8
}

/// The C library's thread `pthread` is kernel thread `tid`.
fn pthread_is(remote: &mut Remote, pthread: u64, tid: u32) -> Result<bool, ReadError> {
    for offset in PTHREAD_TID_OFFSETS {
        let bytes = match remote.bytes(pthread + offset, 4) {
            Ok(bytes) => bytes,
            Err(ReadError::Budget) => return Err(ReadError::Budget),
            Err(_) => continue,
        };
        if field_u32(&bytes, 0) == Some(tid) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, coroutine: bool) -> PyFrame {
        PyFrame {
            address: 0,
            function: function.into(),
            file: "x.py".into(),
            line: Some(1),
            coroutine,
            generator: 0,
        }
    }

    #[test]
    fn the_task_is_the_outermost_coroutine_of_the_innermost_await_chain() {
        let mut interpreter = interpreter_3_12();
        let mut remote = Remote::new(std::process::id());
        let calls = vec![
            vec![frame("slow", false), frame("serve", true)],
            vec![frame("Server.handle", true), frame("_run", false)],
            vec![frame("main", true)],
        ];
        assert_eq!(
            interpreter.task(&mut remote, &calls).as_deref(),
            Some("Server.handle")
        );
        let plain = vec![vec![frame("inner", false), frame("outer", false)]];
        assert_eq!(interpreter.task(&mut remote, &plain), None);
    }

    fn interpreter_3_12() -> Interpreter {
        Interpreter::new(Runtime {
            address: 0,
            layout: Layout::for_version(super::super::layout::Version {
                major: 3,
                minor: 12,
            })
            .expect("3.12"),
            module: "python3.12".into(),
        })
    }

    /// A fake object of 200 bytes in our own memory whose type is named `type_name`.
    fn fake_object(type_name: &'static [u8]) -> (Vec<u64>, Vec<u64>) {
        let type_object = vec![0, 0, 0, type_name.as_ptr() as u64];
        let mut object = vec![0u64; 25];
        object[1] = type_object.as_ptr() as u64;
        (object, type_object)
    }

    #[test]
    fn an_object_whose_type_is_not_code_is_refused_not_read_as_a_frame() {
        let mut interpreter = interpreter_3_12();
        let mut remote = Remote::new(std::process::id());
        let (object, _type) = fake_object(b"dict\0");
        let err = interpreter
            .code(&mut remote, object.as_ptr() as u64)
            .err()
            .expect("not a code object");
        assert!(
            matches!(&err, WalkError::WrongType { expected: "code", found, .. } if found == "dict"),
            "{err}"
        );
        let (null_type, _) = (vec![0u64; 25], ());
        assert!(
            interpreter
                .code(&mut remote, null_type.as_ptr() as u64)
                .is_err()
        );
    }

    #[test]
    fn a_string_must_be_a_compact_str() {
        let mut interpreter = interpreter_3_12();
        let mut remote = Remote::new(std::process::id());
        // A compact ASCII str of 3.12: length at 16, state at 32, text at 40.
        let (mut object, _type) = fake_object(b"str\0");
        object[2] = 5;
        object[4] = (1 << 2) | (1 << 5) | (1 << 6); // kind 1, compact, ascii
        object[5] = u64::from_ne_bytes(*b"inner\0\0\0");
        let address = object.as_ptr() as u64;
        assert_eq!(
            interpreter.string(&mut remote, address).ok().as_deref(),
            Some("inner")
        );
        object[4] = 1 << 2; // not compact
        assert!(matches!(
            interpreter.string(&mut remote, address),
            Err(WalkError::NotCompactString { .. })
        ));
    }

    #[test]
    fn our_own_pthread_names_our_thread() {
        let mut remote = Remote::new(std::process::id());
        // SAFETY: no preconditions.
        let (pthread, tid) = unsafe { (libc::pthread_self() as u64, libc::gettid() as u32) };
        assert!(pthread_is(&mut remote, pthread, tid).expect("readable"));
        assert!(!pthread_is(&mut remote, pthread, tid + 1).expect("readable"));
    }
}
