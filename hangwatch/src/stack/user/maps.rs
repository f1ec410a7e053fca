//! `/proc/PID/maps`: where each module of a process is mapped, and where its stacks are;
//! and the snapshot of them that the captures of one burst share (`MapsCache`).
use std::{
    collections::HashMap,
    fs, io,
    sync::Arc,
    time::{Duration, Instant},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub executable: bool,
    /// File offset of `start`.
    pub offset: u64,
    /// Device and inode: what identifies the file, inside containers too.
    pub dev: String,
    pub inode: u64,
    /// The file path, or a pseudo-name such as `[vdso]` or `[stack]`; empty when anonymous.
    pub path: String,
}

impl Mapping {
    pub fn contains(&self, address: u64) -> bool {
        (self.start..self.end).contains(&address)
    }

    /// A mapping of a file, as opposed to anonymous memory or a pseudo-mapping.
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.starts_with('/')
    }

    /// The file mapped, by device and inode.
    pub fn file_id(&self) -> crate::meta::reader::FileId {
        crate::meta::reader::FileId {
            dev: self.dev.clone(),
            inode: self.inode,
        }
    }
}

/// How long one read of a process's maps serves its captures. A mass hang reports
/// thousands of threads of one process at once, and the maps of a process with thousands of
/// threads have thousands of lines (a stack and a guard page each): read once per capture,
/// they made the reports quadratic. A capture whose stack pointer is in no mapping of the
/// snapshot reads them again (a thread created since).
pub const MAPS_TTL: Duration = Duration::from_millis(500);
/// Processes whose maps are kept at once; the oldest snapshot goes first.
pub const MAPS_CACHED: usize = 64;

/// A process's mappings, and the executable ones among them: where frames are looked up, a
/// few dozen, where a process of thousands of threads has thousands of mappings (their
/// stacks). Derived once per read, shared by the captures of a burst.
/// What is looked up in them per capture is derived here too: a lookup that walks
/// thousands of mappings at each capture made a mass hang's captures quadratic.
#[derive(Debug)]
pub struct Maps {
    /// In address order, as the kernel lists them.
    pub all: Vec<Mapping>,
    pub executable: Vec<Mapping>,
    /// Index in `all` of the mapping that holds the CPython interpreter, if any
    /// (`python::runtime::interpreter_module`).
    interpreter: Option<usize>,
}

impl Maps {
    /// The mapping holding `address`, by binary search.
    pub fn containing(&self, address: u64) -> Option<&Mapping> {
        let after = self.all.partition_point(|m| m.start <= address);
        after
            .checked_sub(1)
            .map(|i| &self.all[i])
            .filter(|m| m.contains(address))
    }

    /// The mapping of the file most likely to hold a CPython interpreter.
    pub fn interpreter(&self) -> Option<&Mapping> {
        self.interpreter.map(|i| &self.all[i])
    }
}

impl From<Vec<Mapping>> for Maps {
    fn from(mut all: Vec<Mapping>) -> Self {
        // /proc lists them in address order; sorted again for `containing`'s sake.
        if !all.is_sorted_by_key(|m| m.start) {
            all.sort_by_key(|m| m.start);
        }
        let executable = all.iter().filter(|m| m.executable).cloned().collect();
        let interpreter = crate::stack::python::interpreter_module(&all)
            .and_then(|found| all.iter().position(|m| std::ptr::eq(m, found)));
        Self {
            all,
            executable,
            interpreter,
        }
    }
}

/// Recent snapshots of processes' maps.
#[derive(Debug, Default)]
pub struct MapsCache {
    by_pid: HashMap<u32, (Instant, Arc<Maps>)>,
    pub reads: u64,
    pub reuses: u64,
}

/// A snapshot, and whether it was read just now.
pub struct Snapshot {
    pub maps: Arc<Maps>,
    pub fresh: bool,
}

impl MapsCache {
    /// The maps of `pid`, read within `MAPS_TTL` of `now`; the pids whose snapshots were
    /// dropped (expired, or the oldest beyond `MAPS_CACHED`) go to `dropped`.
    pub fn get(&mut self, pid: u32, now: Instant, dropped: &mut Vec<u32>) -> io::Result<Snapshot> {
        self.expire(now, dropped);
        if let Some((_, maps)) = self.by_pid.get(&pid) {
            self.reuses += 1;
            return Ok(Snapshot {
                maps: Arc::clone(maps),
                fresh: false,
            });
        }
        self.reread(pid, now, dropped)
    }

    /// Reads the maps of `pid` now, whatever is kept.
    pub fn reread(
        &mut self,
        pid: u32,
        now: Instant,
        dropped: &mut Vec<u32>,
    ) -> io::Result<Snapshot> {
        self.reads += 1;
        let maps = match read(pid) {
            Ok(maps) => Arc::new(Maps::from(maps)),
            Err(err) => {
                if self.by_pid.remove(&pid).is_some() {
                    dropped.push(pid);
                }
                return Err(err);
            }
        };
        if !self.by_pid.contains_key(&pid)
            && self.by_pid.len() >= MAPS_CACHED
            && let Some(oldest) = self
                .by_pid
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(pid, _)| *pid)
        {
            self.by_pid.remove(&oldest);
            dropped.push(oldest);
        }
        self.by_pid.insert(pid, (now, Arc::clone(&maps)));
        Ok(Snapshot { maps, fresh: true })
    }

    fn expire(&mut self, now: Instant, dropped: &mut Vec<u32>) {
        self.by_pid.retain(|pid, (at, _)| {
            let keep = now.duration_since(*at) < MAPS_TTL;
            if !keep {
                dropped.push(*pid);
            }
            keep
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_pid.len()
    }
}

pub fn read(pid: u32) -> io::Result<Vec<Mapping>> {
    Ok(parse(&fs::read_to_string(format!("/proc/{pid}/maps"))?))
}

pub fn parse(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    // start-end perms offset dev inode [path]
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let dev = fields.next()?;
    let inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim_start();
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev: dev.to_owned(),
        inode: inode.parse().ok()?,
        path: path.strip_suffix(" (deleted)").unwrap_or(path).to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_files_pseudo_mappings_and_deleted_files() {
        let maps = parse(
            "5581a000-5581b000 r-xp 00001000 fd:01 1234 /usr/bin/cat\n\
             7ffd1000-7ffd3000 rw-p 00000000 00:00 0 [stack]\n\
             7ffd5000-7ffd7000 r-xp 00000000 00:00 0 [vdso]\n\
             7f000000-7f001000 r-xp 00002000 fd:01 99 /tmp/a b (deleted)\n",
        );
        assert_eq!(maps.len(), 4);
        assert!(maps[0].executable && maps[0].is_file());
        assert_eq!((maps[0].start, maps[0].offset), (0x5581a000, 0x1000));
        assert_eq!(maps[1].path, "[stack]");
        assert!(!maps[1].is_file());
        assert_eq!(maps[3].path, "/tmp/a b");
        assert!(maps[0].contains(0x5581a000) && !maps[0].contains(0x5581b000));
    }

    #[test]
    fn the_mapping_of_an_address_is_found_in_gaps_and_edges_and_the_interpreter_once() {
        let maps = Maps::from(parse(
            "5581a000-5581b000 r-xp 00001000 fd:01 1234 /usr/bin/python3.11\n\
             7f000000-7f001000 r--p 00000000 fd:01 99 /usr/lib/libpython3.11.so.1.0\n\
             7f001000-7f002000 r-xp 00001000 fd:01 99 /usr/lib/libpython3.11.so.1.0\n\
             7ffd1000-7ffd3000 rw-p 00000000 00:00 0 [stack]\n",
        ));
        let start_of = |address| maps.containing(address).map(|m| m.start);
        assert_eq!(start_of(0x5581a000), Some(0x5581a000));
        assert_eq!(start_of(0x5581afff), Some(0x5581a000));
        assert_eq!(start_of(0x5581b000), None, "the gap after a mapping");
        assert_eq!(start_of(0x7f001800), Some(0x7f001000));
        assert_eq!(start_of(0x7ffd2fff), Some(0x7ffd1000));
        assert_eq!(start_of(0x1000), None, "below every mapping");
        assert_eq!(start_of(u64::MAX), None, "above every mapping");
        // libpython first, as `interpreter_module` says, and its first mapping.
        assert_eq!(maps.interpreter().map(|m| m.start), Some(0x7f000000));
        assert!(Maps::from(Vec::new()).containing(0).is_none());
    }

    #[test]
    fn a_snapshot_serves_its_ttl_and_is_read_again_after() {
        let pid = std::process::id();
        let mut cache = MapsCache::default();
        let mut dropped = Vec::new();
        let t0 = Instant::now();
        assert!(cache.get(pid, t0, &mut dropped).expect("own maps").fresh);
        let again = cache
            .get(pid, t0 + MAPS_TTL / 2, &mut dropped)
            .expect("own maps");
        assert!(!again.fresh, "read twice within the TTL");
        assert_eq!((cache.reads, cache.reuses), (1, 1));
        assert!(dropped.is_empty());
        assert!(
            cache
                .get(pid, t0 + MAPS_TTL, &mut dropped)
                .expect("own maps")
                .fresh
        );
        assert_eq!(dropped, [pid], "the expired snapshot is said to be dropped");
    }

    #[test]
    fn at_most_maps_cached_processes_are_kept() {
        let mut cache = MapsCache::default();
        let mut dropped = Vec::new();
        let now = Instant::now();
        let own = std::process::id();
        for i in 0..MAPS_CACHED as u64 {
            let maps = Arc::new(Maps::from(Vec::new()));
            cache
                .by_pid
                .insert(u32::MAX - i as u32, (now - Duration::from_millis(i), maps));
        }
        cache.reread(own, now, &mut dropped).expect("own maps");
        assert_eq!(cache.len(), MAPS_CACHED);
        assert_eq!(
            dropped,
            [u32::MAX - (MAPS_CACHED as u32 - 1)],
            "the oldest goes"
        );
    }
}
