//! `task_struct` field offsets of the running kernel, read from its BTF.
//!
//! Rust eBPF has no CO-RE relocations, so instead of compiling offsets in, the daemon looks
//! them up in `/sys/kernel/btf/vmlinux` and hands them to the iterators as a `.rodata`
//! constant (`hangwatch_ebpf::TaskOffsets`).
use std::path::Path;

use btf_rs::{Btf, Type};
use hangwatch_ebpf::TaskOffsets;

#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    #[error("cannot read kernel BTF from {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: btf_rs::Error,
    },
    #[error("kernel BTF has no `struct task_struct`")]
    NoTaskStruct,
    #[error("kernel BTF: `task_struct` has no field `{0}`")]
    MissingField(&'static str),
    #[error("kernel BTF: {0}")]
    Btf(#[from] btf_rs::Error),
}

pub fn task_offsets(vmlinux: &Path) -> Result<TaskOffsets, OffsetsError> {
    let btf = super::kernel_btf::open(vmlinux).map_err(|source| OffsetsError::Read {
        path: vmlinux.display().to_string(),
        source,
    })?;
    let task = btf
        .resolve_types_by_name("task_struct")?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) => Some(s),
            _ => None,
        })
        .ok_or(OffsetsError::NoTaskStruct)?;
    let field = |name: &'static str| -> Result<u32, OffsetsError> {
        find_member(&btf, &task, name, 0)?.ok_or(OffsetsError::MissingField(name))
    };
    Ok(TaskOffsets {
        pid: field("pid")?,
        tgid: field("tgid")?,
        state: field("__state")?,
        exit_state: field("exit_state")?,
        flags: field("flags")?,
        comm: field("comm")?,
        start_boottime: field("start_boottime")?,
        valid: 1,
    })
}

/// Byte offset of member `name`, looking through anonymous structs and unions (randomized
/// layouts and `struct_group`s nest fields in them).
fn find_member(
    btf: &Btf,
    parent: &btf_rs::Struct,
    name: &str,
    base_bits: u32,
) -> Result<Option<u32>, OffsetsError> {
    for member in &parent.members {
        let bits = base_bits + member.bit_offset();
        let member_name = btf.resolve_name(member)?;
        if member_name == name {
            return Ok(Some(bits / 8));
        }
        if member_name.is_empty()
            && let Type::Struct(inner) | Type::Union(inner) = btf.resolve_chained_type(member)?
            && let Some(found) = find_member(btf, &inner, name, bits)?
        {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_of_the_running_kernel() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!("skipped: this kernel has no BTF");
            return;
        }
        let offsets = task_offsets(path).expect("task_struct offsets");
        assert_eq!(offsets.valid, 1);
        // Every field lies inside task_struct and they are all distinct.
        let all = [
            offsets.pid,
            offsets.tgid,
            offsets.state,
            offsets.exit_state,
            offsets.flags,
            offsets.comm,
            offsets.start_boottime,
        ];
        let mut sorted = all.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len(), "{offsets:?}");
        // tgid directly follows pid in every kernel since 2.6.
        assert_eq!(offsets.tgid, offsets.pid + 4, "{offsets:?}");
    }
}
