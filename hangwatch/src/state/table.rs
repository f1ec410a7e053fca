//! The thread table: the threads that may cross a threshold soon (the candidates), kept
//! between scans.
//!
//! A full walk of every thread (the `scan_threads` iterator) costs about a microsecond per
//! thread, so it runs only every `walk_interval`: it returns the threads already off-CPU for
//! at least half of a threshold. In between, each tick re-reads only those candidates'
//! task storage (`refresh`). A thread that blocks just after a walk is off-CPU for less
//! than half a threshold at the next walk at most, so it joins the table before it can
//! cross the threshold, and the tick after it does is when it is reported.
use std::collections::{HashMap, HashSet};

use hangwatch_ebpf::{ThreadRecord, ThreadState, task_state};

use super::{ThreadKey, ThreadSample};

/// What re-reading a candidate's state found.
pub enum Refresh {
    State(ThreadState),
    /// No new information (no state yet, or the read failed): keep the last one.
    Unchanged,
    Gone,
}

struct Row<H> {
    record: ThreadRecord,
    /// `record` decoded, rebuilt only when the record changes.
    sample: ThreadSample,
    handle: Option<H>,
    /// The walk that last returned it.
    generation: u64,
}

/// Candidates by thread; `H` is the handle used to re-read one thread (a pidfd).
pub struct ThreadTable<H> {
    rows: HashMap<ThreadKey, Row<H>>,
    /// The rows with a handle, re-read at every tick. Kept apart so that a tick costs what
    /// they are, not what the table is: on a machine of 10,000 idle condvar waiters
    /// (walk-only rows) going over every row at each tick was a quarter of the idle
    /// daemon's CPU (`cargo xtask bench --only daemon`).
    ticked: HashSet<ThreadKey>,
    generation: u64,
}

impl<H> Default for ThreadTable<H> {
    fn default() -> Self {
        Self {
            rows: HashMap::new(),
            ticked: HashSet::new(),
            generation: 0,
        }
    }
}

/// The same record but for the time the walk looked (what a sample is built from).
fn same_but_time(a: &ThreadRecord, b: &ThreadRecord) -> bool {
    ThreadRecord {
        seen_at_ns: 0,
        ..*a
    } == ThreadRecord {
        seen_at_ns: 0,
        ..*b
    }
}

fn key_of(record: &ThreadRecord) -> ThreadKey {
    ThreadKey {
        tid: record.tid,
        start_boottime_ns: record.start_boottime_ns,
    }
}

impl<H> ThreadTable<H> {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Replaces the table with the result of a full walk, keeping the handles of threads
    /// that stay and opening handles for new ones.
    pub fn replace(
        &mut self,
        records: &[ThreadRecord],
        mut open: impl FnMut(&ThreadRecord) -> Option<H>,
    ) {
        // In place: on a machine with thousands of idle waiters most rows are the same at
        // every walk, and rebuilding their samples (a name allocation each) or the map was
        // most of a walk's cost.
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        for record in records {
            let key = key_of(record);
            match self.rows.get_mut(&key) {
                Some(row) => {
                    if !same_but_time(&row.record, record) {
                        row.sample = ThreadSample::from(record);
                    }
                    row.sample.seen_at_ns = record.seen_at_ns;
                    row.record = *record;
                    row.generation = generation;
                }
                None => {
                    let handle = open(record);
                    if handle.is_some() {
                        self.ticked.insert(key);
                    }
                    self.rows.insert(
                        key,
                        Row {
                            record: *record,
                            sample: ThreadSample::from(record),
                            handle,
                            generation,
                        },
                    );
                }
            }
        }
        let ticked = &mut self.ticked;
        self.rows.retain(|key, row| {
            let stays = row.generation == generation;
            if !stays && row.handle.is_some() {
                ticked.remove(key);
            }
            stays
        });
    }

    /// Re-reads every candidate that has a handle; drops the ones that are gone.
    pub fn refresh(&mut self, now_ns: u64, mut read: impl FnMut(&H) -> Refresh) {
        let rows = &mut self.rows;
        self.ticked.retain(|key| {
            let Some(row) = rows.get_mut(key) else {
                return false;
            };
            let Some(handle) = &row.handle else {
                return false;
            };
            match read(handle) {
                Refresh::State(state) => {
                    if state != row.record.state {
                        apply(&mut row.record, state, now_ns);
                        row.sample = ThreadSample::from(&row.record);
                    }
                    true
                }
                Refresh::Unchanged => true,
                Refresh::Gone => {
                    rows.remove(key);
                    false
                }
            }
        });
    }

    /// When the wait of `key` that began at `since_ns` ended, if the last read saw it run
    /// (the switch-in right after that switch-out).
    pub fn wait_end(&self, key: &ThreadKey, since_ns: u64) -> Option<u64> {
        let state = &self.rows.get(key)?.record.state;
        (state.off_cpu_at_ns == since_ns && state.on_cpu_at_ns > since_ns)
            .then_some(state.on_cpu_at_ns)
    }

    /// The candidates, as samples for the detectors: blocked ones, and running ones
    /// (which only `loop_stall` and `on_cpu` may report; the rest see them as woken).
    pub fn samples(&self) -> Vec<ThreadSample> {
        self.rows.values().map(|row| row.sample.clone()).collect()
    }

    /// The candidates re-read at every tick (those with a handle). The others are the
    /// walk's alone: nothing about them changes between walks.
    pub fn ticked_samples(&self) -> Vec<ThreadSample> {
        self.ticked
            .iter()
            .filter_map(|key| self.rows.get(key))
            .map(|row| row.sample.clone())
            .collect()
    }

    /// How many candidates are re-read at every tick.
    pub fn ticked_len(&self) -> usize {
        self.ticked.len()
    }

    /// Whether `key` is a candidate followed by the walks only.
    pub fn walk_only(&self, key: &ThreadKey) -> bool {
        self.rows.get(key).is_some_and(|row| row.handle.is_none())
    }
}

/// Folds a fresh read of a candidate's task storage into its last full record.
fn apply(record: &mut ThreadRecord, state: ThreadState, now_ns: u64) {
    if state.off_cpu_at_ns != record.state.off_cpu_at_ns {
        // It ran and blocked again: its state now is the one it switched out with, and the
        // syscall the walk saw is over (the report reads the new one from /proc).
        record.task_state = state.state_at_switch;
        record.syscall_nr = -1;
    }
    let on_cpu = state.on_cpu_at_ns >= state.off_cpu_at_ns;
    if on_cpu || (state.woken_wait_ns == state.off_cpu_at_ns && state.off_cpu_at_ns != 0) {
        record.task_state = task_state::RUNNING;
    }
    if on_cpu {
        record.syscall_nr = -1; // running: in no syscall we know of
    }
    record.state = state;
    record.seen_at_ns = now_ns;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(tid: u32, off_cpu_at_ns: u64, task_state: u32) -> ThreadRecord {
        ThreadRecord {
            state: ThreadState {
                off_cpu_at_ns,
                on_cpu_at_ns: off_cpu_at_ns - 1,
                state_at_switch: task_state,
                ..ThreadState::default()
            },
            start_boottime_ns: 7,
            seen_at_ns: 0,
            tid,
            tgid: tid,
            task_state,
            task_flags: 0,
            comm: [0; 16],
            syscall_nr: -1,
            syscall_args: [0; 5],
        }
    }

    #[test]
    fn refresh_follows_wakeups_new_waits_and_exits() {
        let mut table: ThreadTable<u32> = ThreadTable::default();
        table.replace(
            &[record(1, 100, 2), record(2, 100, 1), record(3, 100, 1)],
            |r| Some(r.tid),
        );
        assert_eq!(table.samples().len(), 3);
        table.refresh(500, |&tid| match tid {
            // Woken: runnable, no longer uninterruptible.
            1 => Refresh::State(ThreadState {
                woken_wait_ns: 100,
                ..record(1, 100, 2).state
            }),
            // Ran and is on CPU now.
            2 => Refresh::State(ThreadState {
                on_cpu_at_ns: 400,
                ..record(2, 100, 1).state
            }),
            _ => Refresh::Gone,
        });
        let samples = table.samples();
        let blocked: Vec<_> = samples.iter().filter(|s| !s.on_cpu).collect();
        assert_eq!(blocked.len(), 1, "{samples:?}");
        assert_eq!(blocked[0].key.tid, 1);
        assert!(blocked[0].woken);
        assert!(!blocked[0].uninterruptible());
        let running: Vec<_> = samples.iter().filter(|s| s.on_cpu).collect();
        assert_eq!(running.len(), 1, "{samples:?}");
        assert!(
            running[0].woken && running[0].not_blocked(),
            "{:?}",
            running[0]
        );
        assert_eq!(table.len(), 2, "the exited thread is dropped");
        let key2 = ThreadKey {
            tid: 2,
            start_boottime_ns: 7,
        };
        assert_eq!(table.wait_end(&key2, 100), Some(400), "ran at 400");
        assert_eq!(table.wait_end(&key2, 50), None, "not that wait");
    }

    #[test]
    fn a_tick_reads_only_the_rows_with_a_handle_and_a_walk_drops_the_rest() {
        let mut table: ThreadTable<u32> = ThreadTable::default();
        // Thread 1 has a handle, 2 is the walk's alone.
        table.replace(&[record(1, 100, 1), record(2, 100, 1)], |r| {
            (r.tid == 1).then_some(r.tid)
        });
        assert_eq!(table.ticked_len(), 1);
        let mut read = Vec::new();
        table.refresh(500, |&tid| {
            read.push(tid);
            Refresh::Unchanged
        });
        assert_eq!(read, vec![1], "the walk-only row is not re-read");
        assert_eq!(table.ticked_samples().len(), 1);
        assert!(table.walk_only(&key_of(&record(2, 100, 1))));
        // The next walk no longer returns thread 1: gone from the ticked rows too.
        table.replace(&[record(2, 100, 1)], |_| None);
        assert_eq!(table.ticked_len(), 0);
        assert!(table.ticked_samples().is_empty());
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_walk_keeps_handles_of_known_threads() {
        let mut table: ThreadTable<u32> = ThreadTable::default();
        let mut opened = Vec::new();
        table.replace(&[record(1, 100, 1)], |r| {
            opened.push(r.tid);
            Some(r.tid)
        });
        table.replace(&[record(1, 100, 1), record(2, 100, 1)], |r| {
            opened.push(r.tid);
            Some(r.tid)
        });
        assert_eq!(opened, vec![1, 2]);
    }
}
