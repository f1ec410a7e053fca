//! The unwind tables (`.eh_frame`, `.eh_frame_hdr`, `.debug_frame`) of each module a stack
//! runs through, read once per file and cached by device and inode, so a second report
//! from the same binary reads nothing.
//!
//! Files are opened through `/proc/PID/map_files/` (which also reaches binaries inside
//! containers and deleted-but-mapped files), falling back to `/proc/PID/root/PATH`.
use std::{
    collections::{HashMap, VecDeque},
    fs,
    sync::Arc,
    time::{Duration, Instant},
};

use object::{Object, ObjectSection, ObjectSegment};

use super::maps::Mapping;

/// Modules kept in the cache; the oldest is dropped beyond this.
pub const MAX_CACHED_MODULES: usize = 256;
/// A section larger than this (stored or uncompressed) is refused before it is read: a
/// hostile or broken binary (a compression bomb, a huge sparse section) must not make the
/// reader allocate gigabytes. Real `.eh_frame`s are a few MiB at most.
pub const MAX_SECTION_BYTES: u64 = 64 << 20;
/// The cached unwind tables may hold this many bytes; the oldest modules go beyond it.
pub const MAX_CACHED_BYTES: usize = 256 << 20;

/// A module that could not be read is tried again after this long: the failure may have
/// been of the moment (a file replaced under the process, a read cut short), and a module
/// without tables ends every walk through it.
pub const RETRY_FAILED_AFTER: Duration = Duration::from_secs(10);
/// Sections refused for their size since start (for `hangwatch_limits_total`).
pub static SECTIONS_REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What framehop needs of one ELF file, addresses as stated in the file (SVMA).
#[derive(Debug)]
pub struct UnwindSections {
    /// File offset and stated address of each `PT_LOAD` segment, to place a mapping.
    segments: Vec<(u64, u64, u64)>,
    pub text_svma: Option<std::ops::Range<u64>>,
    pub eh_frame_svma: Option<std::ops::Range<u64>>,
    pub eh_frame: Option<Arc<[u8]>>,
    pub eh_frame_hdr_svma: Option<std::ops::Range<u64>>,
    pub eh_frame_hdr: Option<Arc<[u8]>>,
    pub debug_frame: Option<Arc<[u8]>>,
    pub got_svma: Option<std::ops::Range<u64>>,
}

impl UnwindSections {
    pub fn parse<'data, R: object::ReadRef<'data>>(data: R) -> Result<Self, object::Error> {
        let file = object::File::parse(data)?;
        let range = |name: &str| {
            file.section_by_name(name)
                .map(|s| s.address()..s.address() + s.size())
        };
        let bytes = |name: &str| -> Option<Arc<[u8]>> {
            let section = file.section_by_name(name)?;
            // Checked before anything is read or inflated.
            let range = section.compressed_file_range().ok()?;
            if range.compressed_size.max(range.uncompressed_size) > MAX_SECTION_BYTES {
                SECTIONS_REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(
                    "{name}: {} bytes ({} stored), over the {MAX_SECTION_BYTES}-byte limit: not read",
                    range.uncompressed_size,
                    range.compressed_size
                );
                return None;
            }
            let data = section.uncompressed_data().ok()?;
            (!data.is_empty()).then(|| Arc::from(&*data))
        };
        Ok(Self {
            segments: file
                .segments()
                .map(|s| {
                    let (offset, size) = s.file_range();
                    (offset, size, s.address())
                })
                .collect(),
            text_svma: range(".text"),
            eh_frame_svma: range(".eh_frame"),
            eh_frame: bytes(".eh_frame"),
            eh_frame_hdr_svma: range(".eh_frame_hdr"),
            eh_frame_hdr: bytes(".eh_frame_hdr"),
            debug_frame: bytes(".debug_frame"),
            got_svma: range(".got"),
        })
    }

    /// Bytes of unwind tables held.
    pub fn bytes(&self) -> usize {
        [&self.eh_frame, &self.eh_frame_hdr, &self.debug_frame]
            .iter()
            .filter_map(|s| s.as_ref().map(|s| s.len()))
            .sum()
    }

    /// Has any call frame information at all.
    pub fn has_cfi(&self) -> bool {
        self.eh_frame.is_some() || self.debug_frame.is_some()
    }

    /// The stated address that a mapping starting at file offset `offset` is loaded at.
    ///
    /// The kernel maps each `PT_LOAD` segment from its page-aligned file offset, so the
    /// segment behind a mapping is the one whose aligned offset equals the mapping's. Only
    /// when none does (an odd layout) the first segment holding the offset is taken: lld
    /// packs segments so tightly that a read-only segment's file range can contain the
    /// start of the executable one's mapping.
    pub fn svma_of_offset(&self, offset: u64) -> Option<u64> {
        let page = page_size();
        self.segments
            .iter()
            .find(|(start, _, _)| start & !(page - 1) == offset)
            .or_else(|| {
                self.segments
                    .iter()
                    .find(|(start, size, _)| (*start..start + size.max(&1)).contains(&offset))
            })
            .map(|(start, _, vaddr)| vaddr.wrapping_sub(start.wrapping_sub(offset)))
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size)
        .ok()
        .filter(|s| s.is_power_of_two())
        .unwrap_or(4096)
}

/// Why a module's unwind tables could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModuleError {
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path} is not a readable ELF file: {reason}")]
    NotElf { path: String, reason: String },
}

type Key = (String, u64);

#[derive(Default)]
pub struct ModuleCache {
    /// The tables of each file, or why they could not be had and when that was found.
    by_file: HashMap<Key, Result<Arc<UnwindSections>, (ModuleError, Instant)>>,
    order: VecDeque<Key>,
    /// Bytes of unwind tables in `by_file`, kept under `MAX_CACHED_BYTES`.
    bytes: usize,
    pub hits: u64,
    pub misses: u64,
}

impl ModuleCache {
    /// The unwind tables of the file behind `mapping` of process `pid`.
    pub fn get(&mut self, pid: u32, mapping: &Mapping) -> Result<Arc<UnwindSections>, ModuleError> {
        let key = if mapping.path == "[vdso]" {
            // One vDSO per running kernel: the same image in every process.
            ("[vdso]".to_owned(), 0)
        } else {
            (mapping.dev.clone(), mapping.inode)
        };
        match self.by_file.get(&key) {
            Some(Ok(found)) => {
                self.hits += 1;
                return Ok(found.clone());
            }
            Some(Err((error, at))) if at.elapsed() < RETRY_FAILED_AFTER => {
                self.hits += 1;
                return Err(error.clone());
            }
            Some(Err(_)) => {
                self.by_file.remove(&key);
                self.order.retain(|k| k != &key);
            }
            None => {}
        }
        self.misses += 1;
        // Opening and reading it can block on its filesystem (a stalled FUSE or NFS mount):
        // a deadline missed now names the file, and the file (not the process) resists.
        let what = format!("the module {}", mapping.path);
        if mapping.is_file() {
            crate::meta::reader::reading_file(what, mapping.file_id());
        } else {
            crate::meta::reader::reading(what);
        }
        let loaded = load(pid, mapping);
        let size = loaded.as_ref().map_or(0, |s| s.bytes());
        while (self.order.len() >= MAX_CACHED_MODULES || self.bytes + size > MAX_CACHED_BYTES)
            && let Some(oldest) = self.order.pop_front()
        {
            if let Some(Ok(gone)) = self.by_file.remove(&oldest) {
                self.bytes -= gone.bytes();
            }
        }
        self.bytes += size;
        self.order.push_back(key.clone());
        self.by_file
            .insert(key, loaded.clone().map_err(|error| (error, Instant::now())));
        loaded
    }
}

fn load(pid: u32, mapping: &Mapping) -> Result<Arc<UnwindSections>, ModuleError> {
    let unreadable = |e: std::io::Error| ModuleError::Unreadable {
        path: mapping.path.clone(),
        reason: e.to_string(),
    };
    if mapping.path == "[vdso]" {
        let image =
            super::memory::copy_stack(pid, mapping.start, mapping.end).map_err(unreadable)?;
        return parse(mapping, image.bytes.as_slice());
    }
    let via_map_files = format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        mapping.start, mapping.end
    );
    let via_root = format!("/proc/{pid}/root{}", mapping.path);
    let file = fs::File::open(&via_map_files)
        .or_else(|_| fs::File::open(&via_root))
        .map_err(unreadable)?;
    // Reads only the headers and the sections asked for, not the whole file (and, unlike a
    // memory map, a file truncated under us is a read error, not a SIGBUS).
    let cache = object::ReadCache::new(file);
    parse(mapping, &cache)
}

fn parse<'data, R: object::ReadRef<'data>>(
    mapping: &Mapping,
    data: R,
) -> Result<Arc<UnwindSections>, ModuleError> {
    UnwindSections::parse(data)
        .map(Arc::new)
        .map_err(|e| ModuleError::NotElf {
            path: mapping.path.clone(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_segment_behind_a_mapping_is_found_by_its_aligned_offset() {
        // lld's layout: the R segment's file range holds the page where R E begins.
        let sections = UnwindSections {
            segments: vec![(0, 0x2875c, 0), (0x28760, 0x65da0, 0x29760)],
            text_svma: None,
            eh_frame_svma: None,
            eh_frame: None,
            eh_frame_hdr_svma: None,
            eh_frame_hdr: None,
            debug_frame: None,
            got_svma: None,
        };
        assert_eq!(sections.svma_of_offset(0x28000), Some(0x29000));
        assert_eq!(sections.svma_of_offset(0), Some(0));
    }

    #[test]
    fn our_own_executable_has_cfi_and_maps_its_text() {
        let pid = std::process::id();
        let maps = super::super::maps::read(pid).expect("own maps");
        let exe = fs::read_link("/proc/self/exe").expect("exe");
        let text = maps
            .iter()
            .find(|m| m.executable && m.path == exe.to_string_lossy())
            .expect("an executable mapping of our binary");
        let mut cache = ModuleCache::default();
        let sections = cache.get(pid, text).expect("readable");
        assert!(sections.has_cfi());
        assert!(sections.svma_of_offset(text.offset).is_some());
        let again = cache.get(pid, text).expect("cached");
        assert!(Arc::ptr_eq(&sections, &again));
        assert_eq!((cache.hits, cache.misses), (1, 1));
    }

    #[test]
    fn a_module_that_could_not_be_read_is_tried_again_later() {
        let missing = Mapping {
            start: 0x1000,
            end: 0x2000,
            offset: 0,
            executable: true,
            dev: "00:00".into(),
            inode: 1,
            path: "/nonexistent/hangwatch-test-module.so".into(),
        };
        let mut cache = ModuleCache::default();
        let pid = std::process::id();
        assert!(cache.get(pid, &missing).is_err());
        assert!(cache.get(pid, &missing).is_err(), "cached");
        assert_eq!((cache.hits, cache.misses), (1, 1));
        // As if the failure were older than the retry delay.
        if let Some(Err((_, at))) = cache.by_file.get_mut(&("00:00".to_owned(), 1)) {
            *at -= RETRY_FAILED_AFTER;
        }
        assert!(cache.get(pid, &missing).is_err());
        assert_eq!((cache.hits, cache.misses), (1, 2), "read again");
        assert_eq!(cache.order.len(), 1, "kept once in the eviction order");
    }
}
