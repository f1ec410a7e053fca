//! User stacks, taken lazily: only for a thread being reported, while it is still blocked
//! (from the registers the `dump_stacks` iterator read), or from a sample of a thread
//! running on CPU (`super::on_cpu`, which brings its own copy of the stack).
//!
//! maps (`maps.rs`) -> stack copy (`memory.rs`, or the sample's) -> unwind tables per
//! module (`modules.rs`, cached) -> DWARF unwinding (`unwind.rs`) -> blazesym
//! symbolization (cached by blazesym) -> frames tagged kernel / runtime / application
//! (`super::tag`).
pub(in crate::stack) mod maps;
pub(in crate::stack) mod memory;
mod modules;
pub mod signal_frame;
pub mod symbolizer;
#[cfg(target_arch = "x86_64")]
mod unwind;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use blazesym::symbolize::Symbolized;
pub(crate) use memory::StackCopy;
use serde::Serialize;

use super::{Frame, FrameTag, UserRegisters, python::PythonStacks, tag};
use crate::meta::reader::FileId;

/// Sections refused for their size since start (`modules::MAX_SECTION_BYTES`).
pub fn sections_refused() -> u64 {
    modules::SECTIONS_REFUSED.load(std::sync::atomic::Ordering::Relaxed)
}

/// How a user stack was obtained, to judge it by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct UnwindInfo {
    /// Frames the DWARF unwinder found.
    pub frames: usize,
    /// Frames a frame-pointer walk from the same registers reaches (most distribution
    /// binaries have no frame pointers: this is what CFI adds).
    pub frame_pointer_frames: usize,
    /// Bytes of stack copied.
    pub stack_bytes: usize,
    /// Modules on the stack's path that could not be read (their frames are unnamed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable_modules: Vec<String>,
    /// Modules on the stack's path set aside for the moment (their reads resist or are
    /// still going on): asking again later may name their frames.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules_not_read: Vec<String>,
    /// When the stack was copied (RFC 3339, UTC). A thread's user stack cannot change
    /// while it stays in one wait, so the updates of a hang carry the stack read for its
    /// hang event, with the time it was read.
    pub copied_at: String,
}

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct UserStack {
    pub frames: Vec<Frame>,
    /// Why the stack is missing or partial.
    pub error: Option<String>,
    pub info: Option<UnwindInfo>,
    /// The asyncio task (its coroutine's qualified name) a CPython thread is running.
    pub python_task: Option<String>,
    /// The signal handler the thread is running, from the signal frame on its stack.
    pub signal_handler: Option<signal_frame::SignalHandler>,
}

impl UserStack {
    fn failed(reason: String) -> Self {
        Self {
            error: Some(reason),
            ..Self::default()
        }
    }

    /// The first frame of the program's own code: where it is blocked, for a person.
    pub fn blocked_here(&self) -> Option<&Frame> {
        self.frames.iter().find(|f| f.tag == FrameTag::Application)
    }
}

/// Everything kept between reports: module unwind tables and blazesym's caches.
pub struct UserStacks {
    modules: modules::ModuleCache,
    /// The maps the captures of a burst share (blazesym's copy follows it).
    maps: maps::MapsCache,
    symbolizer: symbolizer::BoundedSymbolizer,
    /// Module files not to read (they resisted a read: a stalled mount), and why: stacks
    /// are unwound and symbolized around them.
    avoid: HashMap<FileId, String>,
    /// Interpreter frames of CPython threads.
    pub python: PythonStacks,
    /// Time spent unwinding and symbolizing user stacks.
    pub spent: Duration,
    pub captured: u64,
}

impl Default for UserStacks {
    fn default() -> Self {
        Self::new()
    }
}

impl UserStacks {
    pub fn new() -> Self {
        Self {
            modules: modules::ModuleCache::default(),
            maps: maps::MapsCache::default(),
            symbolizer: symbolizer::BoundedSymbolizer::default(),
            avoid: HashMap::new(),
            python: PythonStacks::default(),
            spent: Duration::ZERO,
            captured: 0,
        }
    }

    /// The module files not to read from now on, and why (they resisted a read).
    pub fn avoid_files(&mut self, files: HashMap<FileId, String>) {
        self.avoid = files;
    }

    /// Module cache hits and misses.
    pub fn module_cache(&self) -> (u64, u64) {
        (self.modules.hits, self.modules.misses)
    }

    /// Unwinds and symbolizes the user stack of blocked thread `tid` of `pid`.
    pub fn capture(&mut self, pid: u32, tid: u32, regs: UserRegisters) -> UserStack {
        self.timed(|this| this.capture_inner(pid, tid, regs, None))
    }

    /// Unwinds and symbolizes a user stack already copied (by a perf sample of a running
    /// thread `tid` of `pid`): `copy` starts at `regs.sp`.
    pub fn capture_from_copy(
        &mut self,
        pid: u32,
        tid: u32,
        regs: UserRegisters,
        copy: StackCopy,
    ) -> UserStack {
        self.timed(|this| this.capture_inner(pid, tid, regs, Some(copy)))
    }

    fn timed(&mut self, capture: impl FnOnce(&mut Self) -> UserStack) -> UserStack {
        let started = Instant::now();
        let stack = capture(self);
        self.spent += started.elapsed();
        self.captured += 1;
        stack
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn capture_inner(
        &mut self,
        _pid: u32,
        _tid: u32,
        _regs: UserRegisters,
        _copy: Option<StackCopy>,
    ) -> UserStack {
        UserStack::failed("user stacks are unwound on x86_64 only so far".into())
    }

    /// The stack is copied here from the thread's memory unless `copy` brings it.
    #[cfg(target_arch = "x86_64")]
    fn capture_inner(
        &mut self,
        pid: u32,
        tid: u32,
        regs: UserRegisters,
        copy: Option<StackCopy>,
    ) -> UserStack {
        let mut snapshot = match self.maps_of(pid, false) {
            Ok(snapshot) => snapshot,
            Err(err) => return UserStack::failed(format!("process gone ({err})")),
        };
        if !snapshot.fresh && snapshot.maps.containing(regs.sp).is_none() {
            // A thread (and its stack) newer than the snapshot.
            snapshot = match self.maps_of(pid, true) {
                Ok(snapshot) => snapshot,
                Err(err) => return UserStack::failed(format!("process gone ({err})")),
            };
        }
        let fresh = snapshot.fresh;
        let mut maps = snapshot.maps;
        let Some(stack_mapping) = maps.containing(regs.sp) else {
            return UserStack::failed(format!("stack pointer {:#x} is in no mapping", regs.sp));
        };
        let copied_at = crate::clock::rfc3339(std::time::SystemTime::now());
        let stack = match copy {
            Some(copy) => copy.within(stack_mapping.end),
            None => match memory::copy_stack(pid, regs.sp, stack_mapping.end) {
                Ok(stack) => stack,
                Err(err) => return UserStack::failed(format!("stack memory unreadable ({err})")),
            },
        };
        let mut walk = self.walk(pid, &maps.executable, regs, &stack);
        if walk.left_the_maps.is_some() && !fresh {
            // Maybe a module mapped since the snapshot (a dlopen): walk again on fresh maps.
            if let Ok(snapshot) = self.maps_of(pid, true) {
                maps = snapshot.maps;
                walk = self.walk(pid, &maps.executable, regs, &stack);
            }
        }
        let Walk {
            mut unwound,
            modules,
            unreadable_modules,
            avoided,
            left_the_maps,
        } = walk;
        // A return address outside every executable mapping means the walk went wrong
        // (a bad rule or a corrupt frame): what follows it is noise, not frames.
        if let Some(bad) = left_the_maps {
            unwound.stopped = Some(format!(
                "unwinding stopped at {:#x}, outside any executable mapping",
                unwound.frames[bad].address
            ));
            unwound.frames.truncate(bad);
        }
        let no_cfi: Vec<&str> = modules
            .iter()
            .filter(|(_, s)| !s.has_cfi())
            .map(|(m, _): &(maps::Mapping, Arc<modules::UnwindSections>)| m.path.as_str())
            .collect();
        // blazesym opens the modules again (through /proc/PID/map_files) for their symbols.
        crate::meta::reader::reading("the symbols of its modules");
        let mut native = self.symbolize(pid, &unwound.frames, &maps.executable);
        let mut error = unwound.stopped;
        if error.is_some()
            && let Some(cut) = greenlet_start(&native)
        {
            native.truncate(cut);
            error = Some(GREENLET_RESUMED.into());
        }
        if error.is_some() && !no_cfi.is_empty() {
            error = error.map(|e| format!("{e}; modules without CFI: {}", no_cfi.join(", ")));
        }
        if !avoided.is_empty() {
            let why = format!("partial stack, modules not read: {}", avoided.join("; "));
            error = Some(match error {
                Some(e) => format!("{e}; {why}"),
                None => why,
            });
        }
        let python = self
            .python
            .expand(pid, tid, &maps.all, maps.interpreter(), native);
        let error = [error, python.error]
            .into_iter()
            .flatten()
            .reduce(|a, b| format!("{a}; {b}"));
        // The innermost signal frame, and where its trampoline ended up among the frames
        // (Python frames may have been merged in before it).
        let signal_handler = unwound.signal_frames.first().map(|frame| {
            let trampoline = format!("{:#x}", frame.trampoline);
            let at = python.frames.iter().position(|f| f.address == trampoline);
            let blocked_now =
                crate::meta::signal_masks::SignalMasks::of(pid, tid).map(|masks| masks.blocked);
            signal_frame::SignalHandler::of(frame, blocked_now, at)
        });
        UserStack {
            signal_handler,
            info: Some(UnwindInfo {
                frames: unwound.frames.len(),
                frame_pointer_frames: unwind::frame_pointer_walk(regs.fp, &stack),
                stack_bytes: stack.bytes.len(),
                unreadable_modules,
                modules_not_read: avoided,
                copied_at,
            }),
            frames: python.frames,
            error,
            python_task: python.task,
        }
    }

    /// Unwinds `stack` with the unwind tables of the `executable` mappings (but the files
    /// to avoid).
    #[cfg(target_arch = "x86_64")]
    fn walk(
        &mut self,
        pid: u32,
        executable: &[maps::Mapping],
        regs: UserRegisters,
        stack: &StackCopy,
    ) -> Walk {
        let mut modules = Vec::new();
        let mut unreadable_modules = Vec::new();
        let mut avoided = Vec::new();
        // Mappings the unwinder has no tables for, and why.
        let mut without_tables: Vec<(maps::Mapping, String)> = Vec::new();
        for mapping in executable
            .iter()
            .filter(|m| m.is_file() || m.path == "[vdso]")
        {
            if let Some(why) = self
                .avoid
                .get(&mapping.file_id())
                .filter(|_| mapping.is_file())
            {
                let what = format!("{}: {why}", mapping.path);
                unreadable_modules.push(what.clone());
                avoided.push(what);
                without_tables.push((mapping.clone(), format!("not read: {why}")));
                continue;
            }
            match self.modules.get(pid, mapping) {
                Ok(sections) if sections.svma_of_offset(mapping.offset).is_none() => {
                    without_tables.push((
                        mapping.clone(),
                        format!(
                            "no segment of {} is mapped from offset {:#x}",
                            mapping.path, mapping.offset
                        ),
                    ));
                }
                Ok(sections) => modules.push((mapping.clone(), sections)),
                Err(err) => {
                    unreadable_modules.push(err.to_string());
                    without_tables.push((mapping.clone(), err.to_string()));
                }
            }
        }
        let mut unwinder = unwind::ProcessUnwinder::new(&modules);
        // The code at a return address, read only where the walk asks (each return
        // address into an executable mapping), through one open of the process's memory.
        let mut memory = None;
        let mut is_trampoline = |address: u64| {
            if !executable.iter().any(|m| m.contains(address)) {
                return false;
            }
            let memory = memory.get_or_insert_with(|| crate::meta::memory::Memory::open(pid));
            let mut code = [0u8; signal_frame::TRAMPOLINE_BYTES];
            memory
                .as_ref()
                .is_ok_and(|m| m.read(address, &mut code).is_ok_and(|n| n >= 7))
                && signal_frame::is_trampoline(&code)
        };
        let mut unwound = unwinder.unwind((regs.ip, regs.sp, regs.fp), stack, &mut is_trampoline);
        // framehop falls back to frame pointers in a module it has no tables for, and a
        // zero frame pointer (most code keeps none) reads as the end of the stack: a walk
        // that "ends" in such a module ended for want of its tables, and says so.
        if unwound.stopped.is_none()
            && let Some(last) = unwound.frames.last()
            && let Some((mapping, why)) =
                without_tables.iter().find(|(m, _)| m.contains(last.lookup))
        {
            unwound.stopped = Some(format!(
                "unwinding stopped in {} without its unwind tables: {why}",
                mapping.path
            ));
        }
        let left_the_maps = unwound
            .frames
            .iter()
            .position(|f| !executable.iter().any(|m| m.contains(f.lookup)));
        Walk {
            unwound,
            modules,
            unreadable_modules,
            avoided,
            left_the_maps,
        }
    }

    /// The maps of `pid` from the snapshot (`reread`: read them now). blazesym's copy of
    /// them (which it would otherwise read at every symbolization) follows the snapshot,
    /// and is dropped with it.
    fn maps_of(&mut self, pid: u32, reread: bool) -> std::io::Result<maps::Snapshot> {
        let mut dropped = Vec::new();
        let now = Instant::now();
        let snapshot = if reread {
            self.maps.reread(pid, now, &mut dropped)
        } else {
            self.maps.get(pid, now, &mut dropped)
        };
        for gone in dropped {
            self.symbolizer.forget_maps(gone);
        }
        if let Ok(snapshot) = &snapshot
            && snapshot.fresh
        {
            self.symbolizer.keep_maps(pid);
        }
        snapshot
    }

    #[cfg(target_arch = "x86_64")]
    fn symbolize(
        &mut self,
        pid: u32,
        raw: &[unwind::RawFrame],
        maps: &[maps::Mapping],
    ) -> Vec<Frame> {
        let lookups: Vec<u64> = raw.iter().map(|f| f.lookup).collect();
        // A failure leaves the frames unnamed but keeps their addresses and modules.
        let avoid = &self.avoid;
        let symbolized = self.symbolizer.symbolize(pid, &lookups, maps, |m| {
            m.is_file() && avoid.contains_key(&m.file_id())
        });
        let mut frames = Vec::with_capacity(raw.len());
        for (i, f) in raw.iter().enumerate() {
            let address = format!("{:#x}", f.address);
            let mapped = maps
                .iter()
                .find(|m| m.contains(f.lookup))
                .map(|m| m.path.clone())
                .filter(|p| !p.is_empty());
            let Some(Symbolized::Sym(sym)) = symbolized.get(i) else {
                frames.push(Frame {
                    address,
                    symbol: None,
                    offset: None,
                    tag: tag::classify(mapped.as_deref(), None),
                    module: mapped,
                    file: None,
                    line: None,
                    inlined: false,
                    python: false,
                });
                continue;
            };
            // A symbol found only in the module's separate debug file (glibc's
            // `__restore_rt`) names that file as its module: the mapped file is the module.
            let module = sym
                .module
                .as_ref()
                .map(|m| m.to_string_lossy().into_owned())
                .filter(|m| !m.ends_with(".debug") || mapped.is_none())
                .or(mapped);
            // Innermost first: the inlined callees (blazesym lists them outermost first),
            // then the function the address belongs to.
            for inlined in sym.inlined.iter().rev() {
                let code = inlined.code_info.as_ref();
                frames.push(Frame {
                    address: address.clone(),
                    symbol: Some(inlined.name.to_string()),
                    offset: None,
                    module: module.clone(),
                    file: code.map(|c| c.to_path().display().to_string()),
                    line: code.and_then(|c| c.line),
                    inlined: true,
                    python: false,
                    tag: tag::classify(module.as_deref(), Some(&inlined.name)),
                });
            }
            let code = sym.code_info.as_deref();
            frames.push(Frame {
                address,
                symbol: Some(sym.name.to_string()),
                offset: Some(sym.offset as u64),
                file: code.map(|c| c.to_path().display().to_string()),
                line: code.and_then(|c| c.line),
                inlined: false,
                python: false,
                tag: tag::classify(module.as_deref(), Some(&sym.name)),
                module,
            });
        }
        frames
    }
}

/// Why a greenlet's stack ends at its start (see `greenlet_start`).
const GREENLET_RESUMED: &str = "the stack ends where this greenlet started (g_initialstub): it was resumed after a switch, and above its start lies the stack of the greenlet that switched to it";

/// Where the frames of a greenlet that went wrong past its start end: after the outermost
/// frame of greenlet's `g_initialstub` (and the inlined frames at its address). greenlet
/// runs every greenlet on the thread's stack, copying slices in and out; a greenlet
/// resumed after a switch has above its start whatever the greenlet that switched to it
/// holds there now, so a walk that fails past `g_initialstub` failed in someone else's
/// frames (docs/detection.md, "Greenlets"). A greenlet in its first run has its starter's
/// frames above it, and its walk goes on without error: it is left whole.
fn greenlet_start(frames: &[Frame]) -> Option<usize> {
    let stub = frames.iter().position(|f| {
        f.symbol
            .as_deref()
            .is_some_and(|s| s == "g_initialstub" || s.ends_with("::g_initialstub(void*)"))
    })?;
    let address = &frames[stub].address;
    Some(
        stub + frames[stub..]
            .iter()
            .take_while(|f| &f.address == address)
            .count(),
    )
}

/// One unwinding of a stack, and what it could not read.
#[cfg(target_arch = "x86_64")]
struct Walk {
    unwound: unwind::Unwound,
    modules: Vec<(maps::Mapping, Arc<modules::UnwindSections>)>,
    unreadable_modules: Vec<String>,
    avoided: Vec<String>,
    /// The first frame whose return address is outside every executable mapping: the walk
    /// went wrong there, or the maps are older than a module.
    left_the_maps: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(address: &str, symbol: &str) -> Frame {
        Frame {
            address: address.into(),
            symbol: Some(symbol.into()),
            offset: None,
            module: None,
            file: None,
            line: None,
            inlined: false,
            python: false,
            tag: FrameTag::Runtime,
        }
    }

    #[test]
    fn a_greenlet_stack_is_cut_after_its_start_and_the_frames_at_its_address() {
        // As seen from a resumed gevent greenlet (greenlet 3): the frames above
        // g_initialstub are the hub's switch path, and the walk then failed.
        let frames = [
            frame("0x1", "__GI___clock_nanosleep"),
            frame(
                "0x2",
                "greenlet::UserGreenlet::inner_bootstrap(_greenlet*, _object*)",
            ),
            frame("0x3", "greenlet::UserGreenlet::g_initialstub(void*)"),
            frame("0x3", "greenlet::UserGreenlet::g_switch()"),
            frame("0x4", "single_result"),
            frame("0x5", "green_switch"),
        ];
        assert_eq!(greenlet_start(&frames), Some(4));
        assert_eq!(
            greenlet_start(&[frame("0x1", "g_initialstub")]),
            Some(1),
            "greenlet 1 and 2"
        );
        assert_eq!(greenlet_start(&frames[..2]), None, "no greenlet");
    }
}
