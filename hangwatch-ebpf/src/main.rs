//! hangwatch's eBPF programs. The per-event programs (`sched.rs`, `futex.rs`) only write
//! timestamps and a few words into the thread's task-local storage; nothing is sent to
//! userspace per event. The daemon reads that state with task iterators (`scan.rs`) when it
//! scans, and asks for stacks only for the threads it reports.
#![no_std]
#![no_main]

mod clock;
mod maps;
mod programs;
mod syscalls;
mod task;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves there is no path here; the loop only satisfies the type.
    loop {}
}
