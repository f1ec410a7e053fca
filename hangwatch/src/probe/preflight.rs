//! Checks made before loading anything, so that each missing piece of the machine gives one
//! clear line instead of a verifier dump or a panic.
mod features;

use std::{ffi::CString, fs, io, path::Path};

pub use self::features::FeaturesError;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
/// The oldest mainline release with every feature of [`features::REQUIRED`] (docs/kernels.md).
pub const MINIMUM_LINUX: &str = "5.15";
const TRACEFS: &str = "/sys/kernel/tracing";

/// Linux capability numbers (`include/uapi/linux/capability.h`).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;
const CAP_SYS_PTRACE: u32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "hangwatch needs root or the capabilities CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE (missing: {missing}); run it with sudo"
    )]
    Privileges { missing: String },
    #[error(
        "this kernel has no BTF ({VMLINUX_BTF} is missing): hangwatch needs Linux {MINIMUM_LINUX} or later built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf,
    #[error(
        "this kernel ({release}) lacks what hangwatch's probes need: {needs} (see docs/kernels.md)"
    )]
    OldKernel { release: String, needs: String },
    #[error(transparent)]
    Features(#[from] FeaturesError),
    #[error(
        "tracefs is not mounted at {TRACEFS} and mounting it failed: {0} (mount it with: mount -t tracefs nodev {TRACEFS})"
    )]
    Tracefs(#[source] io::Error),
    #[error("cannot read /proc/self/status: {0}")]
    Status(#[source] io::Error),
}

/// What preflight found, for the log line that says what was done.
#[derive(Debug, Default)]
pub struct Preflight {
    pub mounted_tracefs: bool,
}

pub fn check() -> Result<Preflight, PreflightError> {
    check_privileges()?;
    if !Path::new(VMLINUX_BTF).exists() {
        return Err(PreflightError::NoBtf);
    }
    let missing = features::missing(Path::new(VMLINUX_BTF))?;
    if !missing.is_empty() {
        return Err(PreflightError::OldKernel {
            release: kernel_release(),
            needs: features::describe(&missing),
        });
    }
    let mounted_tracefs = ensure_tracefs()?;
    if !super::thread_pidfds() {
        // Supported, but each scan then costs a full walk (docs/kernels.md).
        tracing::info!(
            "this kernel has no thread pidfds (Linux 6.9+): walking every thread at each scan"
        );
    }
    raise_fd_limit();
    Ok(Preflight { mounted_tracefs })
}

/// `uname -r`, for messages.
fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_owned())
        .unwrap_or_else(|e| format!("release unknown: {e}"))
}

/// The scan keeps a pidfd per candidate thread; a process with thousands of blocked threads
/// must not run the daemon out of descriptors, so take the hard limit.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0
        && limit.rlim_cur < limit.rlim_max
    {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above; failure leaves the old limit, which is only less roomy.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    }
}

fn check_privileges() -> Result<(), PreflightError> {
    let status = fs::read_to_string("/proc/self/status").map_err(PreflightError::Status)?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    // CAP_SYS_ADMIN covers BPF and PERFMON on every kernel; PTRACE is needed to read other
    // processes' /proc entries and memory.
    let mut missing = Vec::new();
    if !(has(CAP_BPF) || has(CAP_SYS_ADMIN)) {
        missing.push("CAP_BPF");
    }
    if !(has(CAP_PERFMON) || has(CAP_SYS_ADMIN)) {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_SYS_PTRACE) {
        missing.push("CAP_SYS_PTRACE");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::Privileges {
            missing: missing.join(", "),
        })
    }
}

/// Syscall tracepoints are attached through tracefs; mount it when it is not.
fn ensure_tracefs() -> Result<bool, PreflightError> {
    if Path::new(TRACEFS).join("events").is_dir()
        || Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        return Ok(false);
    }
    let source = CString::new("nodev").expect("no NUL");
    let target = CString::new(TRACEFS).expect("no NUL");
    let fstype = CString::new("tracefs").expect("no NUL");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(PreflightError::Tracefs(io::Error::last_os_error()));
    }
    Ok(true)
}
