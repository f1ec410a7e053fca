//! The kernel features the required programs use, checked in the kernel's own BTF before
//! anything is loaded: an old kernel then gets one line naming what it lacks and which Linux
//! brought it, instead of a verifier log ("unknown func bpf_task_pt_regs#175").
//!
//! Each feature is looked up as an enumerator of a kernel enum (`enum bpf_func_id` lists the
//! helpers a kernel has, `enum bpf_map_type` its map types...). That reads what this kernel
//! was built with, so a distribution kernel that backported a helper (RHEL 9's 5.14) passes,
//! where a version number would have refused it. The minimum and its reasons are in
//! docs/kernels.md.
use std::path::Path;

use btf_rs::{Btf, Type};

/// A kernel feature the required programs cannot load without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    /// The kernel enum that lists it, and its enumerator there.
    pub enumeration: &'static str,
    pub enumerator: &'static str,
    /// How people call it.
    pub name: &'static str,
    /// The mainline release that brought it.
    pub since: &'static str,
    /// What hangwatch does with it.
    pub needed_for: &'static str,
}

/// What `sched_switch` and the task iterators use, oldest first; the last one sets the
/// minimum (see docs/kernels.md).
pub const REQUIRED: &[Feature] = &[
    Feature {
        enumeration: "bpf_attach_type",
        enumerator: "BPF_TRACE_ITER",
        name: "BPF task iterators",
        since: "5.8",
        needed_for: "the scan that reads every thread's wait state",
    },
    Feature {
        enumeration: "bpf_func_id",
        enumerator: "BPF_FUNC_get_task_stack",
        name: "bpf_get_task_stack",
        since: "5.9",
        needed_for: "the kernel stacks of blocked threads",
    },
    Feature {
        enumeration: "bpf_map_type",
        enumerator: "BPF_MAP_TYPE_TASK_STORAGE",
        name: "task local storage",
        since: "5.11",
        needed_for: "the per-thread state the scheduler probe keeps",
    },
    Feature {
        enumeration: "bpf_func_id",
        enumerator: "BPF_FUNC_task_pt_regs",
        name: "bpf_task_pt_regs",
        since: "5.15",
        needed_for: "reading a blocked thread's syscall arguments (futex address, event-loop waits)",
    },
];

#[derive(Debug, thiserror::Error)]
pub enum FeaturesError {
    #[error("cannot read kernel BTF from {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: btf_rs::Error,
    },
    #[error("kernel BTF: {0}")]
    Btf(#[from] btf_rs::Error),
}

/// The features of [`REQUIRED`] that the kernel whose BTF is at `vmlinux` lacks.
pub fn missing(vmlinux: &Path) -> Result<Vec<Feature>, FeaturesError> {
    let btf = super::super::kernel_btf::open(vmlinux).map_err(|source| FeaturesError::Read {
        path: vmlinux.display().to_string(),
        source,
    })?;
    let mut missing = Vec::new();
    for feature in REQUIRED {
        if !has_enumerator(&btf, feature.enumeration, feature.enumerator)? {
            missing.push(*feature);
        }
    }
    Ok(missing)
}

/// Whether `enum <enumeration>` of the BTF has a member named `enumerator`.
fn has_enumerator(btf: &Btf, enumeration: &str, enumerator: &str) -> Result<bool, FeaturesError> {
    for t in btf.resolve_types_by_name(enumeration)? {
        if let Type::Enum(e) = t {
            for member in &e.members {
                if btf.resolve_name(member)? == enumerator {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// "Linux 5.15+ is needed for bpf_task_pt_regs (...); ..." for the features in `missing`.
pub fn describe(missing: &[Feature]) -> String {
    missing
        .iter()
        .map(|f| {
            format!(
                "Linux {}+ is needed for {} ({})",
                f.since, f.name, f.needed_for
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_kernel_has_what_the_programs_need_or_says_what_it_lacks() {
        let path = Path::new(super::super::VMLINUX_BTF);
        if !path.exists() {
            eprintln!("skipped: this kernel has no BTF");
            return;
        }
        let missing = missing(path).expect("reading the kernel's BTF");
        // The programs load on this kernel (the kernel tests prove it), so the check must
        // find every feature; a wrong enum or enumerator name would show up here.
        assert!(missing.is_empty(), "{}", describe(&missing));
    }

    #[test]
    fn an_unknown_enumerator_is_missing() {
        let path = Path::new(super::super::VMLINUX_BTF);
        if !path.exists() {
            eprintln!("skipped: this kernel has no BTF");
            return;
        }
        let btf = super::super::super::kernel_btf::open(path).expect("reading the kernel's BTF");
        assert!(has_enumerator(&btf, "bpf_func_id", "BPF_FUNC_task_pt_regs").unwrap());
        assert!(!has_enumerator(&btf, "bpf_func_id", "BPF_FUNC_no_such_helper").unwrap());
        assert!(!has_enumerator(&btf, "no_such_enum", "BPF_FUNC_task_pt_regs").unwrap());
    }

    #[test]
    fn the_message_names_the_release_and_the_feature() {
        let pt_regs = REQUIRED
            .iter()
            .find(|f| f.name == "bpf_task_pt_regs")
            .expect("listed");
        let text = describe(&[*pt_regs]);
        assert!(
            text.starts_with("Linux 5.15+ is needed for bpf_task_pt_regs ("),
            "{text}"
        );
    }

    #[test]
    fn the_minimum_is_the_last_feature() {
        let newest = REQUIRED.last().expect("not empty");
        assert_eq!(newest.since, super::super::MINIMUM_LINUX);
    }
}
