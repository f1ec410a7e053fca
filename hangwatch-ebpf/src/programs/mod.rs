//! One file per kind of probe: the scheduler, the futex syscalls, and the scan iterators.
mod futex;
mod scan;
mod sched;
