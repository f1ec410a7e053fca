//! blazesym's symbolizer under a budget.
//!
//! blazesym caches what it opens for as long as the `Symbolizer` lives: per file, an open
//! fd and the parsed symbols and DWARF, and per path it was given (a process's
//! `/proc/PID/map_files/START-END`) an entry that keeps its file. A daemon that
//! symbolizes the stacks of whichever processes hang, for weeks, would so hold an fd per
//! binary it ever saw and an entry per process and mapping. Two bounds, each counted in
//! `hangwatch_limits_total`:
//!
//! - **paths** (`symbolizer_paths`): at most `MAX_PATHS` paths are kept; beyond, the least
//!   recently used quarter is evicted through blazesym's own `Symbolizer::evict` (a file
//!   is closed when its last path goes; the libc every process maps stays while any recent
//!   process's path holds it). The per-process data (a JIT's perf map, kept open) is
//!   evicted the same way, beyond `MAX_PATHS` processes.
//! - **files** (`symbolizer_files`): once `MAX_FILES` distinct files (device and inode)
//!   were symbolized since the symbolizer was built, it is rebuilt empty. This also bounds
//!   what the paths cannot reach: the separate debug-info files blazesym opens by debug
//!   link, cached under paths this module never sees.
//!
//! So the symbolizer holds at most `MAX_FILES` module files and their debug files open.
use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
};

use blazesym::{
    Pid,
    symbolize::{
        Input, Reason, Symbolized, Symbolizer,
        evict::{Elf, Evict, Process},
        source::{self, Source},
    },
};

use super::maps::Mapping;

/// Paths (one per process and mapped module) kept in blazesym's cache.
pub const MAX_PATHS: usize = 1024;
/// Distinct module files symbolized before the symbolizer is rebuilt.
pub const MAX_FILES: usize = 256;

/// Paths evicted and rebuilds since start, for `hangwatch_limits_total`.
static PATHS_EVICTED: AtomicU64 = AtomicU64::new(0);
static REBUILDS: AtomicU64 = AtomicU64::new(0);

/// Paths evicted and rebuilds since start, from every instance.
pub fn evictions() -> (u64, u64) {
    (
        PATHS_EVICTED.load(Ordering::Relaxed),
        REBUILDS.load(Ordering::Relaxed),
    )
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub paths: usize,
    pub files: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            paths: MAX_PATHS,
            files: MAX_FILES,
        }
    }
}

pub struct BoundedSymbolizer {
    symbolizer: Symbolizer,
    limits: Limits,
    /// Each path given to blazesym, with its process and when it was last used.
    paths: HashMap<PathBuf, (u32, u64)>,
    /// Each process symbolized, and when it was last.
    pids: HashMap<u32, u64>,
    /// The files (device, inode) symbolized since the symbolizer was built.
    files: HashSet<(String, u64)>,
    /// Counts calls, to order the paths by use.
    clock: u64,
    /// Paths evicted, and rebuilds, by this instance.
    pub evicted: u64,
    pub rebuilt: u64,
}

fn build() -> Symbolizer {
    Symbolizer::builder()
        .enable_code_info(true)
        .enable_inlined_fns(true)
        .enable_demangling(true)
        .build()
}

impl Default for BoundedSymbolizer {
    fn default() -> Self {
        Self::with_limits(Limits::default())
    }
}

impl BoundedSymbolizer {
    pub fn with_limits(limits: Limits) -> Self {
        Self {
            symbolizer: build(),
            limits,
            paths: HashMap::new(),
            pids: HashMap::new(),
            files: HashSet::new(),
            clock: 0,
            evicted: 0,
            rebuilt: 0,
        }
    }

    /// Symbolizes `addresses` of process `pid`, whose mappings are `maps` (read just
    /// before: blazesym reads them again, and names the same map_files paths), except
    /// those in a mapping `skip` names (a file not to open: it resisted a read). A failure
    /// gives no symbols (the caller keeps addresses and modules).
    pub fn symbolize(
        &mut self,
        pid: u32,
        addresses: &[u64],
        maps: &[Mapping],
        skip: impl Fn(&Mapping) -> bool,
    ) -> Vec<Symbolized<'_>> {
        let skipped: Vec<bool> = addresses
            .iter()
            .map(|&a| maps.iter().any(|m| m.contains(a) && skip(m)))
            .collect();
        let asked: Vec<u64> = addresses
            .iter()
            .zip(&skipped)
            .filter(|(_, skipped)| !**skipped)
            .map(|(a, _)| *a)
            .collect();
        let maps: Vec<Mapping> = maps.iter().filter(|m| !skip(m)).cloned().collect();
        self.account(pid, &asked, &maps);
        let source = Source::Process(source::Process::new(Pid::from(pid)));
        let mut symbolized = if asked.is_empty() {
            Vec::new()
        } else {
            self.symbolizer
                .symbolize(&source, Input::AbsAddr(&asked))
                .inspect_err(|err| {
                    tracing::debug!("symbolizing a stack of pid {pid} failed: {err}")
                })
                .unwrap_or_default()
        }
        .into_iter();
        // Back in the order asked, the skipped ones unknown.
        skipped
            .iter()
            .map(|skipped| match skipped {
                true => Symbolized::Unknown(Reason::IgnoredError),
                false => symbolized
                    .next()
                    .unwrap_or(Symbolized::Unknown(Reason::IgnoredError)),
            })
            .collect()
    }

    /// Notes the files and paths this call hands to blazesym, and applies the bounds
    /// before it does.
    fn account(&mut self, pid: u32, addresses: &[u64], maps: &[Mapping]) {
        self.clock += 1;
        let used: Vec<&Mapping> = maps
            .iter()
            .filter(|m| m.is_file() && addresses.iter().any(|&a| m.contains(a)))
            .collect();
        let files: HashSet<(String, u64)> = used.iter().map(|m| (m.dev.clone(), m.inode)).collect();
        let new_files = files.difference(&self.files).count();
        if new_files > 0 && self.files.len() + new_files > self.limits.files {
            tracing::debug!(
                "{} module files symbolized: the symbolizer starts afresh",
                self.files.len()
            );
            self.symbolizer = build();
            self.paths.clear();
            self.pids.clear();
            self.files.clear();
            self.rebuilt += 1;
            REBUILDS.fetch_add(1, Ordering::Relaxed);
        }
        self.files.extend(files);
        for mapping in used {
            let path = PathBuf::from(format!(
                "/proc/{pid}/map_files/{:x}-{:x}",
                mapping.start, mapping.end
            ));
            self.paths.insert(path, (pid, self.clock));
        }
        self.pids.insert(pid, self.clock);
        if self.paths.len() > self.limits.paths {
            self.evict_oldest_paths();
        }
        if self.pids.len() > self.limits.paths {
            self.evict_oldest_processes();
        }
    }

    /// Has blazesym keep the maps of `pid` as they are now (read again by `keep_maps`
    /// only): the captures of a burst share one read of them (`maps::MapsCache`).
    pub fn keep_maps(&mut self, pid: u32) {
        let mut vmas = blazesym::symbolize::cache::Process::new(Pid::from(pid));
        vmas.cache_vmas = true;
        vmas.cache_perf_map = false;
        if let Err(err) = self
            .symbolizer
            .cache(&blazesym::symbolize::cache::Cache::Process(vmas))
        {
            // Then blazesym reads the maps itself at each symbolization.
            tracing::debug!("blazesym cannot keep the maps of pid {pid}: {err}");
            self.forget_maps(pid);
        }
    }

    /// Drops the maps `keep_maps` kept for `pid`: blazesym reads them again.
    pub fn forget_maps(&mut self, pid: u32) {
        let _ = self
            .symbolizer
            .evict(&Evict::Process(Process::new(Pid::from(pid))));
    }

    /// Evicts the least recently used quarter of the paths (never this call's).
    fn evict_oldest_paths(&mut self) {
        let old = oldest(
            &self.paths,
            |(_, used)| *used,
            self.clock,
            self.limits.paths,
        );
        for path in &old {
            self.paths.remove(path);
            // Not an error if blazesym has nothing for it (the symbolization failed).
            let _ = self.symbolizer.evict(&Evict::Elf(Elf::new(path.clone())));
        }
        self.count_evicted(old.len());
    }

    /// Evicts the per-process data and the paths of the least recently symbolized quarter
    /// of the processes (never this call's).
    fn evict_oldest_processes(&mut self) {
        let old = oldest(&self.pids, |used| *used, self.clock, self.limits.paths);
        for pid in &old {
            self.pids.remove(pid);
            let _ = self
                .symbolizer
                .evict(&Evict::Process(Process::new(Pid::from(*pid))));
        }
        let gone: Vec<PathBuf> = self
            .paths
            .iter()
            .filter(|(_, (pid, _))| old.contains(pid))
            .map(|(path, _)| path.clone())
            .collect();
        for path in &gone {
            self.paths.remove(path);
            let _ = self.symbolizer.evict(&Evict::Elf(Elf::new(path.clone())));
        }
        self.count_evicted(old.len() + gone.len());
    }

    fn count_evicted(&mut self, count: usize) {
        self.evicted += count as u64;
        PATHS_EVICTED.fetch_add(count as u64, Ordering::Relaxed);
    }

    /// Paths and files held now.
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        (self.paths.len(), self.files.len())
    }
}

/// The keys of `entries` to evict so that `limit` remain, at least a quarter of `limit`
/// (not one per call), oldest first by `used`; never those used at `now`.
fn oldest<K: Clone + Ord + std::hash::Hash, V>(
    entries: &HashMap<K, V>,
    used: impl Fn(&V) -> u64,
    now: u64,
    limit: usize,
) -> Vec<K> {
    let mut by_age: Vec<(u64, K)> = entries
        .iter()
        .map(|(key, value)| (used(value), key.clone()))
        .filter(|(used, _)| *used < now)
        .collect();
    by_age.sort_unstable();
    let count = entries
        .len()
        .saturating_sub(limit)
        .max(limit / 4)
        .min(by_age.len());
    by_age.into_iter().take(count).map(|(_, key)| key).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(start: u64, inode: u64) -> Mapping {
        Mapping {
            start,
            end: start + 0x1000,
            executable: true,
            offset: 0,
            dev: "fd:01".into(),
            inode,
            path: format!("/usr/lib/lib{inode}.so"),
        }
    }

    #[test]
    fn the_least_recently_used_paths_are_evicted_beyond_the_limit() {
        let mut symbolizer = BoundedSymbolizer::with_limits(Limits {
            paths: 4,
            files: 100,
        });
        let maps: Vec<Mapping> = (1..=3).map(|i| mapping(i << 20, i)).collect();
        let everywhere: Vec<u64> = maps.iter().map(|m| m.start).collect();
        symbolizer.account(1, &everywhere, &maps);
        assert_eq!(symbolizer.held(), (3, 3));
        // Only the mappings an address falls in count.
        symbolizer.account(2, &everywhere[..1], &maps);
        assert_eq!(symbolizer.held(), (4, 3));
        assert_eq!(symbolizer.evicted, 0);
        symbolizer.account(3, &everywhere, &maps);
        // 7 paths > 4: pid 1's three (the oldest) go, never this call's.
        assert_eq!(symbolizer.evicted, 3);
        let pids: HashSet<u32> = symbolizer.paths.values().map(|(pid, _)| *pid).collect();
        assert_eq!(pids, HashSet::from([2, 3]));
        assert_eq!(symbolizer.held(), (4, 3));
        assert_eq!(symbolizer.rebuilt, 0);
    }

    #[test]
    fn processes_beyond_the_limit_are_forgotten_with_their_paths() {
        let mut symbolizer = BoundedSymbolizer::with_limits(Limits {
            paths: 4,
            files: 100,
        });
        let maps = [mapping(1 << 20, 1)];
        // Processes with no file-backed frame still count (a JIT's perf map).
        for pid in 1..=4 {
            symbolizer.account(pid, &[], &maps);
        }
        symbolizer.account(5, &[maps[0].start], &maps);
        assert_eq!(symbolizer.evicted, 1, "pid 1 went");
        assert!(!symbolizer.pids.contains_key(&1));
        assert_eq!(symbolizer.pids.len(), 4);
        assert_eq!(symbolizer.held(), (1, 1));
    }

    #[test]
    fn the_symbolizer_starts_afresh_once_the_files_limit_is_crossed() {
        let mut symbolizer = BoundedSymbolizer::with_limits(Limits {
            paths: 100,
            files: 2,
        });
        let maps: Vec<Mapping> = (1..=3).map(|i| mapping(i << 20, i)).collect();
        symbolizer.account(1, &[maps[0].start, maps[1].start], &maps);
        // The same files through another process: no new file.
        symbolizer.account(2, &[maps[0].start, maps[1].start], &maps);
        assert_eq!((symbolizer.rebuilt, symbolizer.held()), (0, (4, 2)));
        symbolizer.account(2, &[maps[1].start, maps[2].start], &maps);
        assert_eq!(symbolizer.rebuilt, 1);
        // What this call uses is all it holds after the rebuild.
        assert_eq!(symbolizer.held(), (2, 2));
    }

    #[test]
    fn addresses_in_skipped_mappings_are_not_symbolized_nor_their_files_opened() {
        let pid = std::process::id();
        let maps = super::super::maps::read(pid).expect("own maps");
        let here = addresses_in_skipped_mappings_are_not_symbolized_nor_their_files_opened
            as *const () as u64;
        let exe = maps
            .iter()
            .find(|m| m.contains(here))
            .expect("our code is mapped")
            .clone();
        let mut symbolizer = BoundedSymbolizer::default();
        let skipped = symbolizer.symbolize(pid, &[here, here], &maps, |m| *m == exe);
        assert_eq!(skipped.len(), 2);
        assert!(
            skipped
                .iter()
                .all(|s| matches!(s, Symbolized::Unknown(Reason::IgnoredError))),
            "{skipped:?}"
        );
        assert_eq!(symbolizer.held(), (0, 0), "nothing handed to blazesym");
        let named = symbolizer.symbolize(pid, &[here], &maps, |_| false);
        assert_eq!(named.len(), 1);
        assert_eq!(symbolizer.held(), (1, 1));
    }

    /// The fds pointing at `path` in this process.
    fn fds_on(path: &std::path::Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .map(|dir| {
                dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .filter(|target| target == path)
                    .count()
            })
            .unwrap_or(0)
    }

    /// The real effect: the fd blazesym keeps for a file is closed by the rebuild. A copy
    /// of our libc, mapped executable here, is a file no other test opens.
    #[test]
    fn a_rebuild_closes_the_files_blazesym_kept_open() {
        let pid = std::process::id();
        let maps = super::super::maps::read(pid).expect("own maps");
        let libc_path = maps
            .iter()
            .find(|m| m.executable && m.path.contains("libc.so"))
            .expect("libc is mapped")
            .path
            .clone();
        let dir = tempfile::tempdir().expect("temp dir");
        let copy = dir.path().join("libc-copy.so");
        std::fs::copy(&libc_path, &copy).expect("copy libc");
        let file = std::fs::File::open(&copy).expect("open the copy");
        let data = std::fs::read(&copy).expect("read the copy");
        let elf = object::File::parse(&*data).expect("an ELF");
        use object::{Object as _, ObjectSegment as _, SegmentFlags};
        let (offset, size) = elf
            .segments()
            .find(|s| matches!(s.flags(), SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0))
            .map(|s| s.file_range())
            .expect("an executable segment");
        let page = 4096;
        let (offset, size) = (offset & !(page - 1), size.max(page));
        use std::os::fd::AsRawFd as _;
        // SAFETY: a fresh private read-only mapping of a file we own; unmapped below and
        // never touched.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        assert_ne!(at, libc::MAP_FAILED, "mapping the copy");
        drop(file);
        let copy = copy.canonicalize().expect("canonical");
        let address = at as u64 + 0x40;
        let maps = super::super::maps::read(pid).expect("own maps");
        let mut symbolizer = BoundedSymbolizer::with_limits(Limits {
            paths: 100,
            files: 1,
        });
        let _ = symbolizer.symbolize(pid, &[address], &maps, |_| false);
        let kept = fds_on(&copy);
        // blazesym opens /proc/PID/map_files/..., which needs CAP_SYS_ADMIN even for our
        // own process: without it nothing is opened and there is nothing to close.
        // SAFETY: geteuid has no preconditions.
        if kept == 0 && unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: not root, blazesym could not open map_files");
        } else {
            assert_eq!(kept, 1, "blazesym keeps the file open");
            // Another file: over the limit of one, the symbolizer starts afresh.
            let own = maps
                .iter()
                .find(|m| m.executable && m.path == libc_path)
                .expect("libc mapping");
            let _ = symbolizer.symbolize(pid, &[own.start], &maps, |_| false);
            assert_eq!(symbolizer.rebuilt, 1);
            assert_eq!(fds_on(&copy), 0, "the rebuild closed the copy");
        }
        // SAFETY: the mapping made above, of that size, unused since.
        unsafe { libc::munmap(at, size as usize) };
    }
}
