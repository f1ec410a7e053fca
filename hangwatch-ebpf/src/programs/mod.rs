//! One file per kind of probe: the scheduler, the futex syscalls, event-loop waits, exit
//! signals, and the scan iterators.
mod floor;
mod futex;
mod loops;
mod scan;
mod sched;
mod signal;
