//! The kernel side as the daemon sees it: load the eBPF object, attach the probes, and read
//! the per-thread state back through the task iterators.
mod attach;
mod clock;
mod kernel_btf;
mod offsets;
pub mod preflight;
mod thread_state;

use std::{collections::HashSet, io::Read, path::Path};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::Iter,
};
use hangwatch_ebpf::{
    ClockSample, Counter, ExitSignal, JiffiesClock, ScanConfig, StackRecord, ThreadRecord, names,
};

pub use self::{
    attach::{Degraded, LOOP_PROBE, PROBES, ProbeSelection},
    thread_state::{Lookup, StateReader, ThreadHandle, thread_pidfds},
};

/// The eBPF object built from `hangwatch-ebpf` by build.rs.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hangwatch-ebpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot read kernel BTF: {0}")]
    Btf(#[source] aya::BtfError),
    #[error(transparent)]
    Offsets(#[from] offsets::OffsetsError),
    #[error("cannot load the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error(transparent)]
    Attach(Box<attach::AttachError>),
    #[error("map `{0}` is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map `{name}`: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("iterator `{name}`: {source}")]
    Iter {
        name: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl From<attach::AttachError> for ProbeError {
    fn from(err: attach::AttachError) -> Self {
        Self::Attach(Box::new(err))
    }
}

/// Loaded and attached probes. Dropping it detaches everything (all attachments are
/// fd-based links, so process exit detaches them too).
pub struct Probes {
    ebpf: Ebpf,
    scan_config: Array<MapData, ScanConfig>,
    /// The config last set, which each walk writes again with its number (`walk_seq`).
    config_now: ScanConfig,
    /// The number of the next walk: advanced after each complete one only, so that a slot
    /// owner is never taken for dead because a walk that failed missed it.
    next_walk: u64,
    watched: HashMap<MapData, u32, u32>,
    loop_fd: HashMap<MapData, u32, u32>,
    stack_requests: HashMap<MapData, u32, u32>,
    counters: PerCpuArray<MapData, u64>,
    /// The task-storage map, read per thread by pidfd (aya has no typed wrapper for it).
    thread_state: MapData,
    /// The switch slots, folded into what `StateReader` reads.
    switch_slots: MapData,
    watched_now: HashSet<u32>,
    exit_signals: HashMap<MapData, u32, ExitSignal>,
    /// The link of `sys_enter_loop` while it is attached; `Err` when it could not be
    /// loaded (then it is never attached).
    loop_probe: Result<Option<aya::programs::tp_btf::BtfTracePointLinkId>, String>,
    pub degraded: Vec<Degraded>,
    /// The optional probe groups that were asked for.
    pub selection: ProbeSelection,
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))?;
    T::try_from(map).map_err(|source| ProbeError::Map { name, source })
}

impl Probes {
    pub fn load(selection: ProbeSelection) -> Result<Self, ProbeError> {
        let (mut ebpf, btf) = load_object()?;

        // Iterators are loaded once and attached per scan.
        for name in [
            names::PROG_SCAN_THREADS,
            names::PROG_DUMP_STACKS,
            names::PROG_SAMPLE_CLOCKS,
        ] {
            let program: &mut Iter = ebpf
                .program_mut(name)
                .ok_or(attach::AttachError::MissingProgram(name))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| ProbeError::Iter {
                    name,
                    source: e.into(),
                })?;
            program.load("task", &btf).map_err(|e| ProbeError::Iter {
                name,
                source: e.into(),
            })?;
        }
        // The probes stamp switches with the monotonic clock until the calibration below
        // is written, then with jiffies: the two mix safely (`hangwatch-ebpf/src/clock.rs`
        // keeps each thread's stamps ordered).
        let calibration = sample_clocks(&mut ebpf).map(clock::Calibration::start);
        let mut degraded = attach::attach_all(&mut ebpf, &btf, selection)?;
        calibrate(&mut ebpf, calibration)?;
        let loop_probe = match attach::load_detached(&mut ebpf, &btf, &LOOP_PROBE) {
            Ok(()) => Ok(None),
            Err(err) => {
                degraded.push(Degraded {
                    spec: LOOP_PROBE,
                    reason: err.to_string(),
                });
                Err(err.to_string())
            }
        };

        Ok(Self {
            scan_config: take_map(&mut ebpf, names::MAP_SCAN_CONFIG)?,
            config_now: ScanConfig::default(),
            next_walk: 1,
            watched: take_map(&mut ebpf, names::MAP_WATCHED_TGIDS)?,
            loop_fd: take_map(&mut ebpf, names::MAP_LOOP_FD_TGIDS)?,
            stack_requests: take_map(&mut ebpf, names::MAP_STACK_REQUESTS)?,
            counters: take_map(&mut ebpf, names::MAP_COUNTERS)?,
            thread_state: match ebpf.take_map(names::MAP_THREAD_STATE) {
                Some(aya::maps::Map::Unsupported(data)) => data,
                _ => return Err(ProbeError::MissingMap(names::MAP_THREAD_STATE)),
            },
            switch_slots: ebpf
                .take_map(names::MAP_SWITCH_SLOTS)
                .ok_or(ProbeError::MissingMap(names::MAP_SWITCH_SLOTS))
                .and_then(|map| match map {
                    aya::maps::Map::Array(data) => Ok(data),
                    _ => Err(ProbeError::MissingMap(names::MAP_SWITCH_SLOTS)),
                })?,
            watched_now: HashSet::new(),
            exit_signals: take_map(&mut ebpf, names::MAP_EXIT_SIGNALS)?,
            loop_probe,
            ebpf,
            degraded,
            selection,
        })
    }

    pub fn set_scan_config(&mut self, config: ScanConfig) -> Result<(), ProbeError> {
        let config = ScanConfig {
            walk_seq: self.next_walk,
            ..config
        };
        self.scan_config
            .set(0, config, 0)
            .map_err(|source| ProbeError::Map {
                name: names::MAP_SCAN_CONFIG,
                source,
            })?;
        self.config_now = config;
        Ok(())
    }

    /// Makes `WATCHED_TGIDS` equal to `tgids`, touching only what changed. Returns how many
    /// could not be added because the map is full.
    pub fn set_watched(&mut self, tgids: &HashSet<u32>) -> Result<usize, ProbeError> {
        let map_err = |source| ProbeError::Map {
            name: names::MAP_WATCHED_TGIDS,
            source,
        };
        for gone in self
            .watched_now
            .difference(tgids)
            .copied()
            .collect::<Vec<_>>()
        {
            match self.watched.remove(&gone) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(e)),
            }
            self.watched_now.remove(&gone);
        }
        let mut full = 0;
        for &tgid in tgids.difference(&self.watched_now.clone()) {
            match self.watched.insert(tgid, 1, 0) {
                Ok(()) => {
                    self.watched_now.insert(tgid);
                }
                Err(aya::maps::MapError::SyscallError(_)) => full += 1,
                Err(e) => return Err(map_err(e)),
            }
        }
        Ok(full)
    }

    /// Adds `tgid` to `LOOP_FD_TGIDS` (a process with an epoll or io_uring fd) or removes
    /// it. Returns false when the map is full (the process is not added).
    pub fn set_loop_fd(&mut self, tgid: u32, has: bool) -> Result<bool, ProbeError> {
        let result = if has {
            self.loop_fd.insert(tgid, 1, 0)
        } else {
            self.loop_fd.remove(&tgid)
        };
        match result {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(true),
            Err(aya::maps::MapError::SyscallError(_)) if has => Ok(false),
            Err(source) => Err(ProbeError::Map {
                name: names::MAP_LOOP_FD_TGIDS,
                source,
            }),
        }
    }

    /// Attaches or detaches `sys_enter_loop`. Returns whether it is attached now.
    pub fn set_loop_probe(&mut self, attach: bool) -> Result<bool, ProbeError> {
        let Ok(link) = &self.loop_probe else {
            return Ok(false);
        };
        if attach == link.is_some() {
            return Ok(attach);
        }
        let program: &mut aya::programs::BtfTracePoint = self
            .ebpf
            .program_mut(LOOP_PROBE.program)
            .ok_or(attach::AttachError::MissingProgram(LOOP_PROBE.program))?
            .try_into()
            .map_err(|source| attach::AttachError::Attach {
                program: LOOP_PROBE.program,
                point: LOOP_PROBE.point.to_string(),
                source,
            })?;
        let result = if attach {
            program.attach().map(Some)
        } else {
            let id = self.loop_probe.as_mut().ok().and_then(Option::take);
            id.map_or(Ok(None), |id| program.detach(id).map(|()| None))
        };
        let link = result.map_err(|source| attach::AttachError::Attach {
            program: LOOP_PROBE.program,
            point: LOOP_PROBE.point.to_string(),
            source,
        })?;
        let attached = link.is_some();
        self.loop_probe = Ok(link);
        Ok(attached)
    }

    /// Takes the exit signals recorded since the last call (tgid, first signal).
    pub fn drain_exit_signals(&mut self) -> Result<Vec<(u32, ExitSignal)>, ProbeError> {
        let map_err = |source| ProbeError::Map {
            name: names::MAP_EXIT_SIGNALS,
            source,
        };
        let keys: Vec<u32> = self.exit_signals.keys().filter_map(Result::ok).collect();
        let mut out = Vec::with_capacity(keys.len());
        for tgid in keys {
            match self.exit_signals.get(&tgid, 0) {
                Ok(signal) => out.push((tgid, signal)),
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(e)),
            }
            match self.exit_signals.remove(&tgid) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(e)),
            }
        }
        Ok(out)
    }

    /// One walk of every thread: the threads the scan config asks about. Each walk is
    /// numbered (`ScanConfig::walk_seq`, for the switch slots' owners).
    pub fn scan_threads(&mut self) -> Result<Vec<ThreadRecord>, ProbeError> {
        if self.config_now.walk_seq != self.next_walk {
            self.set_scan_config(self.config_now)?;
        }
        let records = read_iterator(&mut self.ebpf, names::PROG_SCAN_THREADS)?;
        self.next_walk += 1;
        Ok(records)
    }

    /// Kernel stacks and user registers of `tids`, taken now, while they are blocked.
    pub fn dump_stacks(&mut self, tids: &[u32]) -> Result<Vec<StackRecord>, ProbeError> {
        if tids.is_empty() {
            return Ok(Vec::new());
        }
        let map_err = |source| ProbeError::Map {
            name: names::MAP_STACK_REQUESTS,
            source,
        };
        let requested: Vec<u32> = tids
            .iter()
            .copied()
            .take(hangwatch_ebpf::MAX_STACK_REQUESTS as usize)
            .collect();
        for tid in &requested {
            self.stack_requests.insert(tid, 1, 0).map_err(map_err)?;
        }
        let records = read_iterator(&mut self.ebpf, names::PROG_DUMP_STACKS);
        for tid in &requested {
            match self.stack_requests.remove(tid) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(e)),
            }
        }
        records
    }

    /// A handle to re-read one thread's state between walks (`read_thread`).
    pub fn open_thread(&self, tid: u32) -> std::io::Result<ThreadHandle> {
        ThreadHandle::open(tid)
    }

    /// One thread's state, now: a single `bpf()` lookup.
    pub fn read_thread(&self, thread: &ThreadHandle) -> std::io::Result<Lookup> {
        use std::os::fd::AsFd as _;
        thread_state::lookup(self.thread_state.fd().as_fd(), thread)
    }

    /// A reader of the per-thread state for another thread than the scan's.
    pub fn state_reader(&self) -> std::io::Result<StateReader> {
        use std::os::fd::AsFd as _;
        StateReader::new(
            self.thread_state.fd().as_fd(),
            self.switch_slots.fd().as_fd(),
        )
    }

    /// The probe counters, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>, ProbeError> {
        Counter::ALL
            .iter()
            .map(|&counter| {
                let values =
                    self.counters
                        .get(&(counter as u32), 0)
                        .map_err(|source| ProbeError::Map {
                            name: names::MAP_COUNTERS,
                            source,
                        })?;
                Ok((counter, values.iter().sum()))
            })
            .collect()
    }

    pub fn program_stats(&self) -> Vec<ProgramStats> {
        program_stats(&self.ebpf)
    }
}

/// One reading of jiffies and the monotonic clock, taken together in the kernel.
fn sample_clocks(ebpf: &mut Ebpf) -> Result<ClockSample, ProbeError> {
    read_iterator::<ClockSample>(ebpf, names::PROG_SAMPLE_CLOCKS)?
        .first()
        .copied()
        .ok_or(ProbeError::Iter {
            name: names::PROG_SAMPLE_CLOCKS,
            source: "no sample".into(),
        })
}

/// Finishes the clock calibration begun before the probes were attached (waiting out the
/// rest of `clock::SPAN`) and hands the probes their clock. If it cannot be had the probes
/// keep reading the monotonic clock: correct, only dearer per switch; the log says so.
fn calibrate(
    ebpf: &mut Ebpf,
    calibration: Result<clock::Calibration, ProbeError>,
) -> Result<(), ProbeError> {
    let derived = calibration.and_then(|mut calibration| {
        std::thread::sleep(calibration.remaining());
        calibration.add(sample_clocks(ebpf)?);
        calibration.clock().map_err(|err| ProbeError::Iter {
            name: names::PROG_SAMPLE_CLOCKS,
            source: err.into(),
        })
    });
    let clock = match derived {
        Ok(clock) => clock,
        Err(err) => {
            tracing::warn!(
                "the probes read the monotonic clock at every switch (about 70 ns more each):                  cannot calibrate jiffies: {err}"
            );
            return Ok(());
        }
    };
    let mut map: Array<MapData, JiffiesClock> = take_map(ebpf, names::MAP_CLOCK)?;
    map.set(0, clock, 0).map_err(|source| ProbeError::Map {
        name: names::MAP_CLOCK,
        source,
    })?;
    tracing::debug!("probe clock: {clock:?}");
    Ok(())
}

/// Loads the object (maps created, programs not yet loaded) for the running kernel.
fn load_object() -> Result<(Ebpf, Btf), ProbeError> {
    // Offsets first: the mapped BTF they read is gone before aya parses its own copy.
    let offsets = offsets::task_offsets(Path::new(preflight::VMLINUX_BTF))?;
    let btf = Btf::from_sys_fs().map_err(ProbeError::Btf)?;
    let ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .map_max_entries(
            names::MAP_FOLLOWED_TIDS,
            hangwatch_ebpf::followed_words(pid_max()),
        )
        .map_max_entries(
            names::MAP_SWITCH_SLOTS,
            hangwatch_ebpf::switch_slots(pid_max()),
        )
        // aya has no typed wrapper for task storage; userspace never touches that map.
        .allow_unsupported_maps()
        .override_global(names::GLOBAL_TASK_OFFSETS, &offsets, true)
        .load(EBPF_OBJECT)
        .map_err(ProbeError::Load)?;
    Ok((ebpf, btf))
}

/// `kernel.pid_max`, which bounds the tids `FOLLOWED_TIDS` must hold (512 KiB at the
/// 64-bit limit of 4,194,304, 4 KiB at the old default of 32,768). Unreadable: the limit.
fn pid_max() -> u32 {
    const PID_MAX_LIMIT: u32 = 1 << 22;
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(PID_MAX_LIMIT)
}

/// The benchmark's floor: only the empty `sched_switch` program, attached.
pub fn attach_floor() -> Result<Ebpf, ProbeError> {
    let (mut ebpf, btf) = load_object()?;
    attach::attach_floor(&mut ebpf, &btf)?;
    Ok(ebpf)
}

/// How often a program ran and for how long in total, as the kernel accounts it (only
/// while `kernel.bpf_stats_enabled` is on).
#[derive(Debug, Clone)]
pub struct ProgramStats {
    pub name: String,
    pub runs: u64,
    pub run_time: std::time::Duration,
}

impl std::fmt::Display for ProgramStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let per_run = self.run_time.as_nanos() as f64 / self.runs.max(1) as f64;
        write!(
            f,
            "bpf program {}: {} runs, {per_run:.1} ns/run",
            self.name, self.runs
        )
    }
}

pub fn program_stats(ebpf: &Ebpf) -> Vec<ProgramStats> {
    ebpf.programs()
        .filter_map(|(name, program)| {
            let info = program.info().ok()?;
            Some(ProgramStats {
                name: name.to_owned(),
                runs: info.run_count(),
                run_time: info.run_time(),
            })
        })
        .filter(|s| s.runs > 0)
        .collect()
}

/// Attaches the iterator once, reads its whole output and parses it as records of `T`.
fn read_iterator<T: aya::Pod>(ebpf: &mut Ebpf, name: &'static str) -> Result<Vec<T>, ProbeError> {
    let iter_err =
        |source: Box<dyn std::error::Error + Send + Sync>| ProbeError::Iter { name, source };
    let program: &mut Iter = ebpf
        .program_mut(name)
        .ok_or(attach::AttachError::MissingProgram(name))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| iter_err(e.into()))?;
    let link_id = program.attach().map_err(|e| iter_err(e.into()))?;
    let link = program.take_link(link_id).map_err(|e| iter_err(e.into()))?;
    let mut file = link.into_file().map_err(|e| iter_err(e.into()))?;
    let mut bytes = Vec::with_capacity(64 * 1024);
    file.read_to_end(&mut bytes)
        .map_err(|e| iter_err(e.into()))?;
    Ok(parse_records(&bytes))
}

/// Splits the iterator output into records; a trailing partial record (never written by
/// the programs, which write whole records or nothing) is ignored.
fn parse_records<T: aya::Pod>(bytes: &[u8]) -> Vec<T> {
    bytes
        .chunks_exact(std::mem::size_of::<T>())
        // SAFETY: T is Pod (any bit pattern is valid) and the chunk has its exact size.
        .map(|chunk| unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast::<T>()) })
        .collect()
}
