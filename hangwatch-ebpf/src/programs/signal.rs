//! `signal_generate`: a process is asked to exit (SIGTERM, SIGINT, SIGQUIT). Signals are
//! rare, so this costs nothing that matters; the first signal of each process goes into
//! `EXIT_SIGNALS`, which the daemon drains every tick and watches for `stuck_exit`.
use aya_ebpf::{
    bindings::task_struct,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use hangwatch_ebpf::{Counter, EXIT_SIGNAL_FROM_KERNEL, ExitSignal};

use crate::{
    maps::{EXIT_SIGNALS, count},
    task::{Task, offsets},
};

const SIGINT: i32 = 2;
const SIGQUIT: i32 = 3;
const SIGTERM: i32 = 15;
/// `enum trace_signal_result`: queued, or queued without its siginfo.
const TRACE_SIGNAL_DELIVERED: i32 = 0;
const TRACE_SIGNAL_LOSE_INFO: i32 = 4;
/// `SEND_SIG_PRIV`: the kernel itself sends it (a terminal's ^C and ^\ come this way).
const SEND_SIG_PRIV: usize = 1;
/// `si_code` of a signal the kernel generated.
const SI_KERNEL: i32 = 0x80;

/// `signal_generate(int sig, struct kernel_siginfo *info, struct task_struct *task,
/// int group, int result)`.
#[btf_tracepoint(function = "signal_generate")]
pub fn signal_generate(ctx: BtfTracePointContext) -> i32 {
    let sig: i32 = ctx.arg(0);
    if sig != SIGTERM && sig != SIGINT && sig != SIGQUIT {
        return 0;
    }
    let result: i32 = ctx.arg(4);
    if result != TRACE_SIGNAL_DELIVERED && result != TRACE_SIGNAL_LOSE_INFO {
        return 0; // ignored by the target, or already pending
    }
    let info: *const u8 = ctx.arg(1);
    let Some(task) = Task::new(ctx.arg::<*mut task_struct>(2)) else {
        return 0;
    };
    let off = offsets();
    if off.valid == 0 {
        return 0;
    }
    count(Counter::ExitSignals);
    let tgid: u32 = task.read(off.tgid);
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a pointer into the map's value, used before any other update of the map.
    if let Some(known) = EXIT_SIGNALS.get_ptr_mut(tgid) {
        let known = unsafe { &mut *known };
        known.count = known.count.wrapping_add(1);
        known.last_at_ns = now;
        return 0;
    }
    let from_kernel = (info as usize) == SEND_SIG_PRIV
        || ((info as usize) > SEND_SIG_PRIV && {
            // SAFETY: probe_read fails instead of faulting; si_code follows si_signo and
            // si_errno (two ints) in `struct kernel_siginfo`.
            let code = unsafe { bpf_probe_read_kernel(info.wrapping_add(8).cast::<i32>()) };
            code.is_ok_and(|c| c == SI_KERNEL)
        });
    let signal = ExitSignal {
        first_at_ns: now,
        last_at_ns: now,
        target_start_boottime_ns: task.read(off.start_boottime),
        target_tid: task.read(off.pid),
        sender_tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        sender_comm: bpf_get_current_comm().unwrap_or([0; 16]),
        sig: sig as u32,
        count: 1,
        flags: if from_kernel {
            EXIT_SIGNAL_FROM_KERNEL
        } else {
            0
        },
        _pad: 0,
    };
    if EXIT_SIGNALS.insert(tgid, signal, 0).is_err() {
        count(Counter::ExitSignalsLost);
    }
    0
}
