//! The declarative table of what hangwatch attaches: each program, its attach point, whether
//! the daemon can run without it, and what is lost when it does.
use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, TracePoint},
};
use hangwatch_ebpf::names;

#[derive(Debug, Clone, Copy)]
pub enum AttachPoint {
    /// A BTF tracepoint (`tp_btf/NAME`).
    Btf(&'static str),
    /// A classic tracepoint under tracefs `events/CATEGORY/NAME`.
    Tracepoint {
        category: &'static str,
        name: &'static str,
    },
}

/// Probes come in groups; only `Core` is attached by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeGroup {
    /// `sched_switch`: all that detection needs.
    Core,
    /// `signal_generate`: exit signals, for `stuck_exit`. Signals are rare: no cost that
    /// matters.
    Exit,
    /// `sched_wakeup`: tells a woken thread waiting for a CPU from a blocked one between
    /// full walks. Measured at about 70 ns per wakeup (docs/benchmarks.md, "What the probes cost").
    Wakeup,
    /// The futex syscall tracepoints. Enabling any syscall tracepoint sends every syscall
    /// of every task through the kernel's slow syscall path, which costs more than the
    /// probes themselves; the scan reads the same futex arguments from the saved registers.
    Futex,
}

/// Which optional groups to attach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeSelection {
    pub wakeup: bool,
    pub futex: bool,
}

impl ProbeSelection {
    pub fn enabled(&self, group: ProbeGroup) -> bool {
        match group {
            ProbeGroup::Core | ProbeGroup::Exit => true,
            ProbeGroup::Wakeup => self.wakeup,
            ProbeGroup::Futex => self.futex,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ProbeSpec {
    pub program: &'static str,
    pub point: AttachPoint,
    pub group: ProbeGroup,
    /// What the daemon loses without it; `None` means it cannot run without it.
    pub without: Option<&'static str>,
}

pub const PROBES: &[ProbeSpec] = &[
    ProbeSpec {
        program: names::PROG_SCHED_SWITCH,
        point: AttachPoint::Btf("sched_switch"),
        group: ProbeGroup::Core,
        without: None,
    },
    ProbeSpec {
        program: names::PROG_SIGNAL_GENERATE,
        point: AttachPoint::Btf("signal_generate"),
        group: ProbeGroup::Exit,
        without: Some("stuck_exit is not reported"),
    },
    ProbeSpec {
        program: names::PROG_SCHED_WAKEUP,
        point: AttachPoint::Btf("sched_wakeup"),
        group: ProbeGroup::Wakeup,
        without: None,
    },
    ProbeSpec {
        program: names::PROG_SYS_ENTER_FUTEX,
        point: AttachPoint::Tracepoint {
            category: "syscalls",
            name: "sys_enter_futex",
        },
        group: ProbeGroup::Futex,
        without: None,
    },
    ProbeSpec {
        program: names::PROG_SYS_EXIT_FUTEX,
        point: AttachPoint::Tracepoint {
            category: "syscalls",
            name: "sys_exit_futex",
        },
        group: ProbeGroup::Futex,
        without: None,
    },
    ProbeSpec {
        program: names::PROG_SYS_ENTER_FUTEX_WAIT,
        point: AttachPoint::Tracepoint {
            category: "syscalls",
            name: "sys_enter_futex_wait",
        },
        group: ProbeGroup::Futex,
        without: Some("futex_wait(2) waits (Linux 6.7+) are reported without their address"),
    },
    ProbeSpec {
        program: names::PROG_SYS_EXIT_FUTEX_WAIT,
        point: AttachPoint::Tracepoint {
            category: "syscalls",
            name: "sys_exit_futex_wait",
        },
        group: ProbeGroup::Futex,
        without: Some("futex_wait(2) waits (Linux 6.7+) are reported without their address"),
    },
    ProbeSpec {
        program: names::PROG_SYS_ENTER_FUTEX_WAITV,
        point: AttachPoint::Tracepoint {
            category: "syscalls",
            name: "sys_enter_futex_waitv",
        },
        group: ProbeGroup::Futex,
        without: Some("futex_waitv(2) waits (Linux 5.16+) are reported without their address"),
    },
    ProbeSpec {
        program: names::PROG_SYS_EXIT_FUTEX_WAITV,
        point: AttachPoint::Tracepoint {
            category: "syscalls",
            name: "sys_exit_futex_waitv",
        },
        group: ProbeGroup::Futex,
        without: Some("futex_waitv(2) waits (Linux 5.16+) are reported without their address"),
    },
];

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("program `{0}` is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("cannot load program `{program}` for {point}: {source}")]
    Load {
        program: &'static str,
        point: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot attach `{program}` to {point}: {source}")]
    Attach {
        program: &'static str,
        point: String,
        #[source]
        source: aya::programs::ProgramError,
    },
}

impl std::fmt::Display for AttachPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttachPoint::Btf(name) => write!(f, "BTF tracepoint {name}"),
            AttachPoint::Tracepoint { category, name } => write!(f, "tracepoint {category}:{name}"),
        }
    }
}

/// A probe that could not be attached but is optional.
#[derive(Debug)]
pub struct Degraded {
    pub spec: ProbeSpec,
    pub reason: String,
}

/// Loads and attaches every probe of the table. Required probes fail the start; optional
/// ones are returned as `Degraded` for the daemon to log and report.
pub fn attach_all(
    ebpf: &mut Ebpf,
    btf: &Btf,
    selection: ProbeSelection,
) -> Result<Vec<Degraded>, AttachError> {
    let mut degraded = Vec::new();
    for spec in PROBES.iter().filter(|spec| selection.enabled(spec.group)) {
        match attach_one(ebpf, btf, spec) {
            Ok(()) => {}
            Err(err) => match spec.without {
                None => return Err(err),
                Some(_) => degraded.push(Degraded {
                    spec: *spec,
                    reason: err.to_string(),
                }),
            },
        }
    }
    Ok(degraded)
}

/// The probe attached only while a loop thread may be stalled (see `detect/loop_stall.rs`):
/// loaded with the others, attached and detached by the daemon.
pub const LOOP_PROBE: ProbeSpec = ProbeSpec {
    program: names::PROG_SYS_ENTER_LOOP,
    point: AttachPoint::Btf("sys_enter"),
    group: ProbeGroup::Core,
    without: Some(
        "a busy event loop that never blocks cannot be told from a stalled one: loop_stall reports only loops blocked elsewhere",
    ),
};

/// Loads a BTF tracepoint program without attaching it.
pub fn load_detached(ebpf: &mut Ebpf, btf: &Btf, spec: &ProbeSpec) -> Result<(), AttachError> {
    let AttachPoint::Btf(name) = spec.point else {
        unreachable!("on-demand probes are BTF tracepoints");
    };
    let load_err = |source| AttachError::Load {
        program: spec.program,
        point: spec.point.to_string(),
        source,
    };
    let program: &mut BtfTracePoint = ebpf
        .program_mut(spec.program)
        .ok_or(AttachError::MissingProgram(spec.program))?
        .try_into()
        .map_err(load_err)?;
    program.load(name, btf).map_err(load_err)
}

/// Attaches only the benchmark's empty `sched_switch` program.
pub fn attach_floor(ebpf: &mut Ebpf, btf: &Btf) -> Result<(), AttachError> {
    let spec = ProbeSpec {
        program: names::PROG_FLOOR_SCHED_SWITCH,
        point: AttachPoint::Btf("sched_switch"),
        group: ProbeGroup::Core,
        without: None,
    };
    attach_one(ebpf, btf, &spec)
}

fn attach_one(ebpf: &mut Ebpf, btf: &Btf, spec: &ProbeSpec) -> Result<(), AttachError> {
    let program = ebpf
        .program_mut(spec.program)
        .ok_or(AttachError::MissingProgram(spec.program))?;
    let load_err = |source| AttachError::Load {
        program: spec.program,
        point: spec.point.to_string(),
        source,
    };
    let attach_err = |source| AttachError::Attach {
        program: spec.program,
        point: spec.point.to_string(),
        source,
    };
    match spec.point {
        AttachPoint::Btf(name) => {
            let program: &mut BtfTracePoint = program.try_into().map_err(load_err)?;
            program.load(name, btf).map_err(load_err)?;
            program.attach().map_err(attach_err)?;
        }
        AttachPoint::Tracepoint { category, name } => {
            let program: &mut TracePoint = program.try_into().map_err(load_err)?;
            program.load().map_err(load_err)?;
            program.attach(category, name).map_err(attach_err)?;
        }
    }
    Ok(())
}
