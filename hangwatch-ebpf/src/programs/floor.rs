//! The benchmark's floor: an empty program on the same BTF tracepoint as `sched_switch`,
//! so `cargo xtask bench` can tell the cost of the probe's work from the cost of having a
//! program on that tracepoint at all. The daemon never attaches it.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

#[btf_tracepoint(function = "sched_switch")]
pub fn floor_sched_switch(_ctx: BtfTracePointContext) -> i32 {
    0
}
