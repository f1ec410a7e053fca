//! Finding a process's CPython runtime from outside: the module that holds the
//! interpreter (`libpython3.X.so`, or a `python3.X` executable linked statically, as
//! Debian's), the address of its `_PyRuntime` (its ELF symbol, or the `.PyRuntime`
//! section a stripped 3.10+ build still has, plus the load bias from `/proc/PID/maps`),
//! and the version, which picks the layout.
use std::fs;

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};

use super::{
    layout::{DEBUG_OFFSETS_SIZE, DebugOffsetsError, Layout, Version},
    remote::{ReadError, Remote, field_u32},
};
use crate::stack::user::maps::Mapping;

/// What the walk needs of one process, found once and cached.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// `&_PyRuntime` in the process.
    pub address: u64,
    pub layout: Layout,
    /// The module it was found in, for messages.
    pub module: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot read {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a readable ELF file: {source}")]
    Elf {
        path: String,
        #[source]
        source: object::Error,
    },
    #[error(
        "{path} has no _PyRuntime symbol and no .PyRuntime section (stripped, and older than 3.10?)"
    )]
    NoRuntime { path: String },
    #[error("{path}: the load address of its data is not in /proc/PID/maps")]
    NotMapped { path: String },
    #[error("{path}: CPython version unknown (no Py_Version symbol, no version in the file name)")]
    UnknownVersion { path: String },
    #[error("{path}: CPython {version} is not supported (3.9 to 3.13 are)")]
    Unsupported { path: String, version: Version },
    #[error("{path}: {source}")]
    DebugOffsets {
        path: String,
        #[source]
        source: DebugOffsetsError,
    },
    #[error("{path}: reading the runtime: {source}")]
    Read {
        path: String,
        #[source]
        source: ReadError,
    },
}

/// The mapping of the file most likely to hold the interpreter: a `libpython3.X` first
/// (the executable then only calls into it), else an executable named `python*`.
/// `None`: not a CPython process.
pub fn interpreter_module(maps: &[Mapping]) -> Option<&Mapping> {
    let named = |prefix: &str| {
        maps.iter()
            .find(|m| m.is_file() && file_name(&m.path).starts_with(prefix))
    };
    named("libpython3").or_else(|| named("python"))
}

/// The version a file name states: `libpython3.11.so.1.0`, `python3.12`.
pub fn version_in_name(path: &str) -> Option<Version> {
    let name = file_name(path);
    let rest = name
        .strip_prefix("libpython")
        .or_else(|| name.strip_prefix("python"))?;
    let (major, rest) = rest.split_once('.')?;
    let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some(Version {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
    })
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Finds the runtime of process `pid` in `module` (one of its mappings).
pub fn discover(
    pid: u32,
    maps: &[Mapping],
    module: &Mapping,
    remote: &mut Remote,
) -> Result<Runtime, RuntimeError> {
    let path = module.path.clone();
    let symbols = read_symbols(pid, module)?;
    let bias = load_bias(maps, module, &symbols.segments)
        .ok_or_else(|| RuntimeError::NotMapped { path: path.clone() })?;
    let address = symbols
        .runtime
        .ok_or_else(|| RuntimeError::NoRuntime { path: path.clone() })?
        .wrapping_add(bias);
    let read = |source| RuntimeError::Read {
        path: path.clone(),
        source,
    };
    let version = match symbols.py_version {
        Some(svma) => {
            let bytes = remote.bytes(svma.wrapping_add(bias), 4).map_err(read)?;
            field_u32(&bytes, 0).map(|hex| Version::from_hex(u64::from(hex)))
        }
        None => version_in_name(&path),
    }
    .ok_or_else(|| RuntimeError::UnknownVersion { path: path.clone() })?;
    let layout = if version
        >= (Version {
            major: 3,
            minor: 13,
        }) {
        let bytes = remote.bytes(address, DEBUG_OFFSETS_SIZE).map_err(read)?;
        Layout::from_debug_offsets(&bytes).map_err(|source| RuntimeError::DebugOffsets {
            path: path.clone(),
            source,
        })?
    } else {
        Layout::for_version(version).ok_or_else(|| RuntimeError::Unsupported {
            path: path.clone(),
            version,
        })?
    };
    Ok(Runtime {
        address,
        layout,
        module: path,
    })
}

/// What is read of the module's ELF file (stated addresses).
struct Symbols {
    runtime: Option<u64>,
    py_version: Option<u64>,
    /// (file offset, stated address) of each `PT_LOAD` segment.
    segments: Vec<(u64, u64)>,
}

fn read_symbols(pid: u32, module: &Mapping) -> Result<Symbols, RuntimeError> {
    let path = module.path.clone();
    // As `user::modules`: map_files reaches files in other mount namespaces and deleted
    // ones; the root path is the fallback.
    let via_map_files = format!("/proc/{pid}/map_files/{:x}-{:x}", module.start, module.end);
    let via_root = format!("/proc/{pid}/root{}", module.path);
    let file = fs::File::open(&via_map_files)
        .or_else(|_| fs::File::open(&via_root))
        .map_err(|source| RuntimeError::Open {
            path: path.clone(),
            source,
        })?;
    let cache = object::ReadCache::new(file);
    let elf = object::File::parse(&cache).map_err(|source| RuntimeError::Elf {
        path: path.clone(),
        source,
    })?;
    // The exported symbols first (a small table, kept by `strip`); the full table, large
    // with debug builds, only for `_PyRuntime`, which every build exports anyway.
    let exported = |name: &str| {
        elf.dynamic_symbols()
            .find(|s| s.name() == Ok(name))
            .map(|s| s.address())
    };
    let find = |name: &str| {
        exported(name).or_else(|| {
            elf.symbols()
                .find(|s| s.name() == Ok(name))
                .map(|s| s.address())
        })
    };
    Ok(Symbols {
        runtime: find("_PyRuntime").or_else(|| {
            elf.section_by_name(".PyRuntime")
                .map(|section| section.address())
        }),
        // Public API (3.11+): exported when it exists.
        py_version: exported("Py_Version"),
        segments: elf
            .segments()
            .map(|s| (s.file_range().0, s.address()))
            .collect(),
    })
}

/// Where the file behind `module` is loaded: the mapping of the file whose offset is a
/// `PT_LOAD` segment's (page-aligned) offset gives that segment's run-time address.
fn load_bias(maps: &[Mapping], module: &Mapping, segments: &[(u64, u64)]) -> Option<u64> {
    const PAGE: u64 = 4096;
    maps.iter()
        .filter(|m| m.dev == module.dev && m.inode == module.inode)
        .find_map(|m| {
            let (offset, address) = segments.iter().find(|(o, _)| o & !(PAGE - 1) == m.offset)?;
            let aligned = address.wrapping_sub(offset - m.offset);
            Some(m.start.wrapping_sub(aligned))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(line: &str) -> Mapping {
        crate::stack::user::maps::parse(line).remove(0)
    }

    #[test]
    fn versions_from_file_names() {
        let v = |s| version_in_name(s).map(|v| (v.major, v.minor));
        assert_eq!(v("/usr/bin/python3.11"), Some((3, 11)));
        assert_eq!(v("/opt/lib/libpython3.9.so.1.0"), Some((3, 9)));
        assert_eq!(v("/x/libpython3.13t.so"), Some((3, 13)));
        assert_eq!(v("/usr/bin/python3"), None);
        assert_eq!(v("/usr/bin/pythonista"), None);
    }

    #[test]
    fn libpython_is_preferred_to_the_executable() {
        let maps = [
            mapping("55d0000-55d1000 r-xp 00001000 fd:01 11 /opt/py/bin/python3.12"),
            mapping("7f00000-7f10000 r-xp 00100000 fd:01 12 /opt/py/lib/libpython3.12.so.1.0"),
        ];
        assert_eq!(interpreter_module(&maps).map(|m| m.inode), Some(12));
        assert_eq!(interpreter_module(&maps[..1]).map(|m| m.inode), Some(11));
        let other = [mapping(
            "55d0000-55d1000 r-xp 00001000 fd:01 11 /usr/bin/node",
        )];
        assert!(interpreter_module(&other).is_none());
    }

    #[test]
    fn load_bias_of_a_pie_and_of_a_fixed_executable() {
        let pie = [
            mapping("7f0000000000-7f0000100000 r--p 00000000 fd:01 12 /lib/libpython3.12.so"),
            mapping("7f0000100000-7f0000300000 r-xp 00100000 fd:01 12 /lib/libpython3.12.so"),
        ];
        let segments = [(0, 0), (0x100000, 0x100000), (0x642340, 0x643340)];
        assert_eq!(load_bias(&pie, &pie[1], &segments), Some(0x7f0000000000));
        let fixed = [mapping(
            "400000-500000 r-xp 00000000 fd:01 9 /usr/bin/python3.11",
        )];
        assert_eq!(load_bias(&fixed, &fixed[0], &[(0, 0x400000)]), Some(0));
    }

    #[test]
    fn our_own_process_is_not_python() {
        let maps = crate::stack::user::maps::read(std::process::id()).expect("own maps");
        assert!(interpreter_module(&maps).is_none());
    }
}
