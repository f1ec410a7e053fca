//! What the daemon read about the locks the sampled threads wait on: their owners
//! (`futex_owner.rs`) and the threads parked for ever that close a cycle (`pi_park.rs`),
//! the facts `detect::lock_wait` and `detect::deadlock` decide on.
use std::collections::{HashMap, HashSet};

use super::pi_park::PiPark;
use crate::state::{ThreadKey, ThreadSample};

/// What the daemon read about the locks the sampled threads wait on.
#[derive(Debug, Clone, Default)]
pub struct LockFacts {
    /// The owner tid of the lock a thread waits on, when known (a live thread of its
    /// process).
    pub owners: HashMap<ThreadKey, u32>,
    /// Threads that glibc parks for ever after the kernel refused them a PI lock
    /// (EDEADLK), by tid (`meta::pi_park` recognizes them).
    pub parked: HashMap<u32, PiPark>,
    /// Threads whose lock owner is being read for the first time in this wait (asked, not
    /// answered yet): their cycle, if any, is not known yet.
    pub unread: HashSet<ThreadKey>,
}

impl LockFacts {
    /// `sample` waits on a lock whose owner is parked for ever in a cycle that is known
    /// (the lock the parked thread asked for has a known owner): the deadlock's.
    pub fn behind_a_park(&self, sample: &ThreadSample) -> bool {
        self.owners
            .get(&sample.key)
            .and_then(|owner| self.parked.get(owner))
            .is_some_and(|park| park.asked_owner.is_some())
    }
}
