//! One file per kind of probe: the scheduler, the futex syscalls, and the scan iterators.
mod floor;
mod futex;
mod scan;
mod sched;
