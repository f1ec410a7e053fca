//! Where CPython keeps what a stack walk needs, per minor version (x86_64, default build,
//! not free-threaded). 3.9 to 3.12 publish no offsets: the tables below were read from
//! the DWARF of pyenv builds (`gdb -batch -ex 'ptype/o struct _ts' libpython3.X.so`) and
//! hold for every patch release of a minor version (CPython keeps these structures stable
//! within one). 3.13 publishes them in `_PyRuntime.debug_offsets` (`_Py_DebugOffsets`,
//! cookie "xdebugpy"): `from_debug_offsets` takes them from the process itself.
use super::remote::{field_u8, field_u64};

/// A CPython minor version this reader knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u8,
    pub minor: u8,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl Version {
    /// From `PY_VERSION_HEX` (`Py_Version`, `_Py_DebugOffsets.version`): 0x030b02f0 is 3.11.2.
    pub fn from_hex(hex: u64) -> Self {
        Self {
            major: ((hex >> 24) & 0xff) as u8,
            minor: ((hex >> 16) & 0xff) as u8,
        }
    }
}

/// How the frames of one thread are chained, and how they map to the C calls of
/// `_PyEval_EvalFrameDefault` that run them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameModel {
    /// 3.9, 3.10: a `PyFrameObject` per Python call, each run by its own
    /// `_PyEval_EvalFrameDefault` call. `f_lasti` counts bytes (3.9) or code units (3.10).
    FrameObject { lasti_in_code_units: bool },
    /// 3.11: `_PyInterpreterFrame`s, several per C call (Python-to-Python calls stay in
    /// the same loop); the first frame a C call ran has `is_entry` set.
    EntryFlag { is_entry: u64 },
    /// 3.12+: each C call pushes a shim frame owned by the C stack before its first
    /// Python frame: the shims separate the calls.
    EntryShim { owner: u64 },
}

/// How a code object maps bytecode offsets to lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineTableFormat {
    /// 3.9 `co_lnotab`: (byte delta, signed line delta) pairs.
    Lnotab,
    /// 3.10 `co_linetable` (PEP 626): (byte delta, signed line delta, -128 = none) pairs.
    Pep626,
    /// 3.11+ `co_linetable`: the location table of `Objects/locations.md`.
    Locations,
}

/// `_PyInterpreterFrame.owner` of a shim frame on the C stack (3.12, 3.13).
pub const FRAME_OWNED_BY_CSTACK: u8 = 3;
/// `co_flags` of a coroutine (`async def`).
pub const CO_COROUTINE: u32 = 0x80;
/// `PyTypeObject.tp_name`, the same in every version.
pub const TYPE_NAME: u64 = 24;
/// `PyObject.ob_type`.
pub const OB_TYPE: u64 = 8;
/// `PyBytesObject.ob_size` and `ob_sval`.
pub const BYTES_SIZE: u64 = 16;
pub const BYTES_DATA: u64 = 32;
/// `PyASCIIObject.length` and `state` (kind, compact and ascii bits at the same places
/// in every version).
pub const UNICODE_LENGTH: u64 = 16;
pub const UNICODE_STATE: u64 = 32;

/// Offsets (bytes) of every field the walk reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub version: Version,
    pub runtime_interpreters_head: u64,
    pub interp_next: u64,
    pub interp_threads_head: u64,
    pub tstate_next: u64,
    /// `pthread_self()` of the thread (its `struct pthread`).
    pub tstate_thread_id: u64,
    /// The kernel tid (3.11+).
    pub tstate_native_thread_id: Option<u64>,
    /// `frame` (3.9, 3.10), `cframe` (3.11, 3.12) or `current_frame` (3.13).
    pub tstate_frame: u64,
    /// 3.11, 3.12: `tstate_frame` points at a `_PyCFrame`, whose `current_frame` is here.
    pub cframe_current_frame: Option<u64>,
    pub frame_model: FrameModel,
    pub frame_previous: u64,
    pub frame_code: u64,
    /// `f_lasti` (an i32, 3.9/3.10), `prev_instr` (3.11/3.12) or `instr_ptr` (3.13).
    pub frame_instr: u64,
    /// Bytes of a frame to read: every field above lies within.
    pub frame_size: u64,
    /// 3.9/3.10 `PyFrameObject.f_gen`, and `PyGenObject.gi_qualname`: the qualified name
    /// of a coroutine, which 3.9/3.10 code objects lack.
    pub frame_gen: Option<u64>,
    pub gen_qualname: Option<u64>,
    pub code_flags: u64,
    pub code_firstlineno: u64,
    pub code_filename: u64,
    pub code_name: u64,
    pub code_qualname: Option<u64>,
    pub code_linetable: u64,
    /// 3.11+: where the bytecode starts inside the code object.
    pub code_adaptive: Option<u64>,
    /// Bytes of a code object to read.
    pub code_size: u64,
    pub line_table: LineTableFormat,
    /// `sizeof(PyASCIIObject)` (where an ASCII string's bytes start) and
    /// `sizeof(PyCompactUnicodeObject)` (where other compact strings' start).
    pub unicode_ascii_data: u64,
    pub unicode_compact_data: u64,
}

impl Layout {
    /// The table of `version`; `None` for a version not known here (3.13 included: its
    /// offsets come from the process, see `from_debug_offsets`).
    pub fn for_version(version: Version) -> Option<Self> {
        let Version { major: 3, minor } = version else {
            return None;
        };
        let frame_object = |lasti: u64, gen_qualname: u64| Self {
            version,
            runtime_interpreters_head: 32,
            interp_next: 0,
            interp_threads_head: 8,
            tstate_next: 8,
            tstate_thread_id: 176,
            tstate_native_thread_id: None,
            tstate_frame: 24,
            cframe_current_frame: None,
            frame_model: FrameModel::FrameObject {
                lasti_in_code_units: minor == 10,
            },
            frame_previous: 24,
            frame_code: 32,
            frame_instr: lasti,
            frame_size: lasti + 4,
            frame_gen: Some(lasti - 8),
            gen_qualname: Some(gen_qualname),
            code_flags: 36,
            code_firstlineno: 40,
            code_filename: 104,
            code_name: 112,
            code_qualname: None,
            code_linetable: 120,
            code_adaptive: None,
            code_size: 128,
            line_table: if minor == 9 {
                LineTableFormat::Lnotab
            } else {
                LineTableFormat::Pep626
            },
            unicode_ascii_data: 48,
            unicode_compact_data: 72,
        };
        let interpreter_frame = |shim: bool| Self {
            version,
            runtime_interpreters_head: 40,
            interp_next: 0,
            interp_threads_head: if shim { 72 } else { 16 },
            tstate_next: 8,
            tstate_thread_id: if shim { 136 } else { 152 },
            tstate_native_thread_id: Some(if shim { 144 } else { 160 }),
            tstate_frame: 56,
            cframe_current_frame: Some(if shim { 0 } else { 8 }),
            frame_model: if shim {
                FrameModel::EntryShim { owner: 70 }
            } else {
                FrameModel::EntryFlag { is_entry: 68 }
            },
            frame_previous: if shim { 8 } else { 48 },
            frame_code: if shim { 0 } else { 32 },
            frame_instr: 56,
            frame_size: 72,
            frame_gen: None,
            gen_qualname: None,
            code_flags: 48,
            code_firstlineno: if shim { 68 } else { 72 },
            code_filename: 112,
            code_name: 120,
            code_qualname: Some(128),
            code_linetable: 136,
            code_adaptive: Some(if shim { 192 } else { 184 }),
            code_size: 144,
            line_table: LineTableFormat::Locations,
            unicode_ascii_data: if shim { 40 } else { 48 },
            unicode_compact_data: if shim { 56 } else { 72 },
        };
        match minor {
            9 => Some(frame_object(104, 56)),
            10 => Some(frame_object(96, 48)),
            11 => Some(interpreter_frame(false)),
            12 => Some(interpreter_frame(true)),
            _ => None,
        }
    }

    /// The layout a 3.13 process publishes at the start of `_PyRuntime`, from the
    /// `DEBUG_OFFSETS_SIZE` bytes read there. Fields `_Py_DebugOffsets` does not carry
    /// (`co_flags`) keep their 3.13 value.
    pub fn from_debug_offsets(bytes: &[u8]) -> Result<Self, DebugOffsetsError> {
        if bytes.get(..8) != Some(DEBUG_COOKIE) {
            return Err(DebugOffsetsError::NoCookie);
        }
        let at = |offset: u64| field_u64(bytes, offset).ok_or(DebugOffsetsError::Short);
        let version = Version::from_hex(at(8)?);
        if (version.major, version.minor) != (3, 13) {
            return Err(DebugOffsetsError::UnknownVersion(version));
        }
        if at(16)? != 0 {
            return Err(DebugOffsetsError::FreeThreaded);
        }
        let frame_previous = at(232)?;
        let frame_code = at(240)?;
        let frame_instr = at(248)?;
        let owner = at(264)?;
        // filename, name, qualname, linetable, firstlineno.
        let code = [at(280)?, at(288)?, at(296)?, at(304)?, at(312)?];
        Ok(Self {
            version,
            runtime_interpreters_head: at(40)?,
            interp_next: at(64)?,
            interp_threads_head: at(72)?,
            tstate_next: at(168)?,
            tstate_thread_id: at(192)?,
            tstate_native_thread_id: Some(at(200)?),
            tstate_frame: at(184)?,
            cframe_current_frame: None,
            frame_model: FrameModel::EntryShim { owner },
            frame_previous,
            frame_code,
            frame_instr,
            frame_size: [frame_previous, frame_code, frame_instr, owner]
                .into_iter()
                .max()
                .unwrap_or(0)
                + 8,
            frame_gen: None,
            gen_qualname: None,
            code_flags: 48,
            code_filename: code[0],
            code_name: code[1],
            code_qualname: Some(code[2]),
            code_linetable: code[3],
            code_firstlineno: code[4],
            code_adaptive: Some(at(344)?),
            code_size: code.into_iter().max().unwrap_or(0).max(48) + 8,
            line_table: LineTableFormat::Locations,
            unicode_ascii_data: at(560)?,
            unicode_compact_data: at(560)? + 16,
        })
    }

    /// The owner byte of a frame read with this layout, for the shim model.
    pub fn is_shim(&self, frame: &[u8]) -> bool {
        match self.frame_model {
            FrameModel::EntryShim { owner } => {
                field_u8(frame, owner) == Some(FRAME_OWNED_BY_CSTACK)
            }
            _ => false,
        }
    }

    /// The frame ends the frames of one `_PyEval_EvalFrameDefault` call (3.11's entry
    /// flag; every frame in 3.9/3.10).
    pub fn ends_call(&self, frame: &[u8]) -> bool {
        match self.frame_model {
            FrameModel::FrameObject { .. } => true,
            FrameModel::EntryFlag { is_entry } => field_u8(frame, is_entry).is_some_and(|b| b != 0),
            FrameModel::EntryShim { .. } => false,
        }
    }
}

/// `_Py_DebugOffsets.cookie`.
pub const DEBUG_COOKIE: &[u8; 8] = b"xdebugpy";
/// Bytes of `_Py_DebugOffsets` read (3.13's struct is 584 bytes).
pub const DEBUG_OFFSETS_SIZE: usize = 584;

#[derive(Debug, Clone, thiserror::Error)]
pub enum DebugOffsetsError {
    #[error("_PyRuntime does not start with the _Py_DebugOffsets cookie")]
    NoCookie,
    #[error("_Py_DebugOffsets is shorter than 3.13's")]
    Short,
    #[error("_Py_DebugOffsets of CPython {0}, whose layout this reader does not know")]
    UnknownVersion(Version),
    #[error("a free-threaded build (no GIL), whose objects this reader does not know")]
    FreeThreaded,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `_Py_DebugOffsets` of pyenv's CPython 3.13.0 (`gdb -ex 'print
    /// _PyRuntime.debug_offsets' libpython3.13.so`), as bytes.
    fn debug_offsets_3_13_0() -> Vec<u8> {
        let words: [u64; 73] = [
            0, 0x030d00f0, 0, // cookie, version, free_threaded
            283320, 608, 632, // runtime_state
            194968, 7272, 7264, 7344, 7400, 7656, 7640, 7648, 16, 7752, 0, 7768, 7760, 304, 0, 8,
            16, 72, 152, 160, 232, 32, // thread_state
            80, 8, 0, 56, 72, 70, // interpreter_frame
            208, 112, 120, 128, 136, 68, 52, 96, 104, 200, // code_object
            16, 8, 416, 24, 88, 168, 32, 24, 16, 40, 24, 16, 48, 32, 40, 24, 16, 32, 16, 24, 40,
            16, 32, // pyobject .. bytes_object
            64, 32, 16, 40, // unicode_object
            240, 200, // gc
        ];
        let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        bytes[..8].copy_from_slice(DEBUG_COOKIE);
        assert_eq!(bytes.len(), DEBUG_OFFSETS_SIZE);
        bytes
    }

    #[test]
    fn debug_offsets_of_3_13_give_its_layout() {
        let layout = Layout::from_debug_offsets(&debug_offsets_3_13_0()).expect("3.13 offsets");
        assert_eq!(
            layout.version,
            Version {
                major: 3,
                minor: 13
            }
        );
        assert_eq!(layout.runtime_interpreters_head, 632);
        assert_eq!(layout.interp_threads_head, 7344);
        assert_eq!(
            (layout.tstate_frame, layout.tstate_native_thread_id),
            (72, Some(160))
        );
        assert_eq!(layout.frame_model, FrameModel::EntryShim { owner: 70 });
        assert_eq!((layout.frame_code, layout.frame_instr), (0, 56));
        assert_eq!(layout.frame_size, 78);
        assert_eq!(layout.code_adaptive, Some(200));
        assert_eq!(
            (layout.unicode_ascii_data, layout.unicode_compact_data),
            (40, 56)
        );
    }

    #[test]
    fn debug_offsets_are_checked_before_use() {
        let mut bytes = debug_offsets_3_13_0();
        assert!(matches!(
            Layout::from_debug_offsets(&bytes[..100]),
            Err(DebugOffsetsError::Short)
        ));
        bytes[16] = 1;
        assert!(matches!(
            Layout::from_debug_offsets(&bytes),
            Err(DebugOffsetsError::FreeThreaded)
        ));
        bytes[8..16].copy_from_slice(&0x030e00f0u64.to_ne_bytes());
        assert!(matches!(
            Layout::from_debug_offsets(&bytes),
            Err(DebugOffsetsError::UnknownVersion(_))
        ));
        bytes[0] = b'X';
        assert!(matches!(
            Layout::from_debug_offsets(&bytes),
            Err(DebugOffsetsError::NoCookie)
        ));
    }

    #[test]
    fn tables_of_3_9_to_3_12_match_the_pyenv_builds_dwarf() {
        // (version, PyThreadState: native_thread_id, frame/cframe; frame: previous, code,
        // instruction; code: linetable, bytecode) as gdb printed them.
        let expected = [
            (9, None, 24, 24, 32, 104, 120, None),
            (10, None, 24, 24, 32, 96, 120, None),
            (11, Some(160), 56, 48, 32, 56, 136, Some(184)),
            (12, Some(144), 56, 8, 0, 56, 136, Some(192)),
        ];
        for (minor, native, frame, previous, code, instr, linetable, adaptive) in expected {
            let l = Layout::for_version(Version { major: 3, minor }).expect("known version");
            assert_eq!(
                (
                    l.tstate_native_thread_id,
                    l.tstate_frame,
                    l.frame_previous,
                    l.frame_code,
                    l.frame_instr,
                    l.code_linetable,
                    l.code_adaptive
                ),
                (native, frame, previous, code, instr, linetable, adaptive),
                "3.{minor}"
            );
            assert!(l.frame_size > l.frame_instr && l.code_size > l.code_linetable);
        }
        for minor in [8, 13, 14] {
            assert!(Layout::for_version(Version { major: 3, minor }).is_none());
        }
    }

    #[test]
    fn frame_boundaries_per_model() {
        let l11 = Layout::for_version(Version {
            major: 3,
            minor: 11,
        })
        .expect("3.11");
        let mut frame = vec![0u8; 72];
        assert!(!l11.ends_call(&frame));
        frame[68] = 1;
        assert!(l11.ends_call(&frame) && !l11.is_shim(&frame));
        let l12 = Layout::for_version(Version {
            major: 3,
            minor: 12,
        })
        .expect("3.12");
        frame[70] = FRAME_OWNED_BY_CSTACK;
        assert!(l12.is_shim(&frame) && !l12.ends_call(&frame));
        let l9 = Layout::for_version(Version { major: 3, minor: 9 }).expect("3.9");
        assert!(l9.ends_call(&[]));
        assert_eq!(
            Version::from_hex(0x030b02f0),
            Version {
                major: 3,
                minor: 11
            }
        );
    }
}
