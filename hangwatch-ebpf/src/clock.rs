//! The time as the scheduler probe and the walk stamp it into `ThreadState`: jiffies turned
//! into CLOCK_MONOTONIC ns ([`JiffiesClock`]), read without a helper call.
//!
//! Stamps also name waits (`loop_blocked_at_ns == off_cpu_at_ns` says which wait the thread
//! is in), and jiffies repeat within a tick, so each switch-out's stamp is made later than
//! every stamp the thread already has ([`switch_out`]), and a switch-in's is no earlier than
//! the switch-out before it ([`switch_in`]): per thread, stamps stay unique and ordered,
//! "on CPU" stays `on_cpu_at_ns >= off_cpu_at_ns`. A thread that switches thousands of
//! times within a tick runs its stamps ahead by as many nanoseconds.
use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_ns};
use hangwatch_ebpf::ThreadState;

use crate::maps::CLOCK;

/// Now: jiffies as ns, or the monotonic clock itself until the daemon calibrated `CLOCK`.
#[inline(always)]
pub fn now() -> u64 {
    match CLOCK.get(0) {
        // SAFETY: helpers without arguments or preconditions; the verifier inlines
        // bpf_jiffies64 into a load of `jiffies_64` on 64-bit kernels.
        Some(clock) if clock.tick_ns != 0 => clock.ns(unsafe { bpf_jiffies64() }),
        // SAFETY: as above.
        _ => unsafe { bpf_ktime_get_ns() },
    }
}

/// The stamp of a switch-out at `now`: after every stamp the thread has.
#[inline(always)]
pub fn switch_out(state: &ThreadState, now: u64) -> u64 {
    now.max(state.off_cpu_at_ns.max(state.on_cpu_at_ns).wrapping_add(1))
}

/// The stamp of a switch-in at `now`: not before the switch-out it ends.
#[inline(always)]
pub fn switch_in(state: &ThreadState, now: u64) -> u64 {
    now.max(state.off_cpu_at_ns)
}
