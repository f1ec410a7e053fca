//! What a blocked thread waits on, in the words of a report: its task state, its syscall,
//! and for a futex the address, the op and whether it has a timeout.
use hangwatch_ebpf::task_state;
use serde::Serialize;

use super::{ProcSyscall, ThreadSample, syscalls::syscall_name};

/// A task state as `ps` and `/proc/PID/stat` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TaskState {
    #[serde(rename = "R")]
    Runnable,
    #[serde(rename = "S")]
    Sleeping,
    #[serde(rename = "D")]
    Uninterruptible,
    #[serde(rename = "T")]
    Stopped,
    #[serde(rename = "t")]
    Traced,
    #[serde(rename = "I")]
    Idle,
    #[serde(rename = "P")]
    Parked,
    #[serde(rename = "X")]
    Dead,
}

impl TaskState {
    pub fn from_bits(state: u32) -> Self {
        use task_state::*;
        if state == RUNNING {
            Self::Runnable
        } else if state & UNINTERRUPTIBLE != 0 && state & NOLOAD != 0 {
            Self::Idle
        } else if state & INTERRUPTIBLE != 0 {
            Self::Sleeping
        } else if state & UNINTERRUPTIBLE != 0 {
            Self::Uninterruptible
        } else if state & STOPPED != 0 {
            Self::Stopped
        } else if state & TRACED != 0 {
            Self::Traced
        } else if state & PARKED != 0 {
            Self::Parked
        } else if state & DEAD != 0 {
            Self::Dead
        } else {
            // FROZEN and other modifier bits alone: the thread is not running.
            Self::Sleeping
        }
    }

    pub fn letter(self) -> char {
        match self {
            Self::Runnable => 'R',
            Self::Sleeping => 'S',
            Self::Uninterruptible => 'D',
            Self::Stopped => 'T',
            Self::Traced => 't',
            Self::Idle => 'I',
            Self::Parked => 'P',
            Self::Dead => 'X',
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Self::Runnable => "runnable",
            Self::Sleeping => "interruptible sleep",
            Self::Uninterruptible => "uninterruptible sleep",
            Self::Stopped => "stopped",
            Self::Traced => "stopped by a tracer",
            Self::Idle => "idle",
            Self::Parked => "parked",
            Self::Dead => "dead",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FutexWait {
    /// The futex word's user address, hex.
    pub address: String,
    /// The op as strace names it, e.g. `FUTEX_WAIT_BITSET_PRIVATE|FUTEX_CLOCK_REALTIME`.
    pub op: String,
    pub has_timeout: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Wait {
    pub state: TaskState,
    pub state_description: &'static str,
    /// The syscall it is blocked in, when known.
    pub syscall: Option<String>,
    pub syscall_nr: Option<u32>,
    pub futex: Option<FutexWait>,
    /// Woken since it blocked: it waits for a CPU now, not for an event.
    pub woken: bool,
    /// Stopped by a signal (`T`) or a debugger (`t`): paused from outside, not hung.
    pub paused: bool,
    /// For a lock wait, the tid of the lock's owner (a live thread of the same process).
    pub owner_tid: Option<u32>,
    /// The kernel function the thread sleeps in (`/proc/PID/task/TID/wchan`), where the
    /// kernel tells: read for reported threads only, never per scan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wchan: Option<String>,
}

impl Wait {
    pub fn describe(sample: &ThreadSample) -> Self {
        let state = TaskState::from_bits(sample.task_state);
        let wait = Self {
            state,
            state_description: state.description(),
            syscall: None,
            syscall_nr: None,
            futex: None,
            woken: sample.woken,
            paused: matches!(state, TaskState::Stopped | TaskState::Traced),
            owner_tid: None,
            wchan: None,
        };
        match sample.syscall {
            // The futex probes, when attached, saw the call itself.
            Some(s) => Self {
                syscall: Some(syscall_name(i64::from(s.nr))),
                syscall_nr: Some(s.nr),
                futex: Some(FutexWait {
                    address: format!("{:#x}", s.futex_uaddr),
                    op: futex_op_name(i64::from(s.nr), s.futex_op),
                    has_timeout: s.has_timeout,
                }),
                ..wait
            },
            None => wait.with_proc_syscall(sample.saved_syscall),
        }
    }

    /// A thread as /proc shows it (state letter, syscall), for threads the scan did not
    /// report: the other threads of a process that does not exit.
    pub fn from_proc(state: char, syscall: Option<ProcSyscall>) -> Self {
        let state = match state {
            'R' => TaskState::Runnable,
            'D' => TaskState::Uninterruptible,
            'T' => TaskState::Stopped,
            't' => TaskState::Traced,
            'I' => TaskState::Idle,
            'P' => TaskState::Parked,
            'X' | 'Z' => TaskState::Dead,
            _ => TaskState::Sleeping,
        };
        Self {
            state,
            state_description: state.description(),
            syscall: None,
            syscall_nr: None,
            futex: None,
            woken: false,
            paused: matches!(state, TaskState::Stopped | TaskState::Traced),
            owner_tid: None,
            wchan: None,
        }
        .with_proc_syscall(syscall.filter(|_| state != TaskState::Runnable))
    }

    pub fn with_wchan(self, wchan: Option<String>) -> Self {
        Self { wchan, ..self }
    }

    /// Fills the syscall from the thread's saved registers (the scan's, or
    /// `/proc/PID/task/TID/syscall`, which reads the same registers) when it is not known yet.
    pub fn with_proc_syscall(mut self, proc: Option<ProcSyscall>) -> Self {
        let Some(proc) = proc else {
            return self;
        };
        if self.syscall.is_some() {
            return self;
        }
        self.syscall = Some(syscall_name(proc.nr));
        self.syscall_nr = u32::try_from(proc.nr).ok();
        let a = proc.args;
        // (address, op word, timeout pointer) per futex syscall's argument order.
        let futex = match proc.nr {
            libc::SYS_futex => Some((a[0], a[1] as u32, a[3])),
            FUTEX_WAIT_NR => Some((a[0], a[3] as u32, a[4])),
            _ => None,
        };
        self.futex = futex.map(|(address, op, timeout)| FutexWait {
            address: format!("{address:#x}"),
            op: futex_op_name(proc.nr, op),
            has_timeout: timeout != 0,
        });
        self
    }
}

/// futex_wait(2) (Linux 6.7), the same number on every architecture.
const FUTEX_WAIT_NR: i64 = 455;
const FUTEX_PRIVATE_FLAG: u32 = 128;
const FUTEX_CLOCK_REALTIME: u32 = 256;
const FUTEX2_PRIVATE: u32 = 128;

/// strace-style name of a futex op word; for `futex_wait`/`futex_waitv` the FUTEX2 flags.
pub fn futex_op_name(syscall_nr: i64, op: u32) -> String {
    if syscall_nr != libc::SYS_futex {
        let size = [
            "FUTEX2_SIZE_U8",
            "FUTEX2_SIZE_U16",
            "FUTEX2_SIZE_U32",
            "FUTEX2_SIZE_U64",
        ][(op & 3) as usize];
        let mut name = size.to_owned();
        if op & FUTEX2_PRIVATE != 0 {
            name.push_str("|FUTEX2_PRIVATE");
        }
        return name;
    }
    let cmd = op & !(FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME);
    let base = match cmd {
        0 => "FUTEX_WAIT".to_owned(),
        1 => "FUTEX_WAKE".to_owned(),
        2 => "FUTEX_FD".to_owned(),
        3 => "FUTEX_REQUEUE".to_owned(),
        4 => "FUTEX_CMP_REQUEUE".to_owned(),
        5 => "FUTEX_WAKE_OP".to_owned(),
        6 => "FUTEX_LOCK_PI".to_owned(),
        7 => "FUTEX_UNLOCK_PI".to_owned(),
        8 => "FUTEX_TRYLOCK_PI".to_owned(),
        9 => "FUTEX_WAIT_BITSET".to_owned(),
        10 => "FUTEX_WAKE_BITSET".to_owned(),
        11 => "FUTEX_WAIT_REQUEUE_PI".to_owned(),
        12 => "FUTEX_CMP_REQUEUE_PI".to_owned(),
        13 => "FUTEX_LOCK_PI2".to_owned(),
        other => format!("FUTEX_OP_{other}"),
    };
    let mut name = base;
    if op & FUTEX_PRIVATE_FLAG != 0 {
        name.push_str("_PRIVATE");
    }
    if op & FUTEX_CLOCK_REALTIME != 0 {
        name.push_str("|FUTEX_CLOCK_REALTIME");
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn futex_ops_are_named_like_strace() {
        let futex = libc::SYS_futex;
        assert_eq!(futex_op_name(futex, 0), "FUTEX_WAIT");
        assert_eq!(futex_op_name(futex, 128), "FUTEX_WAIT_PRIVATE");
        assert_eq!(
            futex_op_name(futex, 9 | 128 | 256),
            "FUTEX_WAIT_BITSET_PRIVATE|FUTEX_CLOCK_REALTIME"
        );
        assert_eq!(futex_op_name(futex, 6 | 128), "FUTEX_LOCK_PI_PRIVATE");
        assert_eq!(
            futex_op_name(455, 2 | 128),
            "FUTEX2_SIZE_U32|FUTEX2_PRIVATE"
        );
    }

    #[test]
    fn futex_details_from_proc_when_the_probes_missed_the_entry() {
        let sample = crate::state::testing::blocked(1, 1, 1, 0);
        let proc = ProcSyscall {
            nr: libc::SYS_futex,
            args: [0x5000, 0x189, 0, 0, 0, 0xffff_ffff],
        };
        let wait = Wait::describe(&sample).with_proc_syscall(Some(proc));
        assert_eq!(wait.syscall.as_deref(), Some("futex"));
        let futex = wait.futex.expect("futex details");
        assert_eq!(futex.address, "0x5000");
        assert_eq!(futex.op, "FUTEX_WAIT_BITSET_PRIVATE|FUTEX_CLOCK_REALTIME");
        assert!(!futex.has_timeout);
    }

    #[test]
    fn task_states_match_proc() {
        assert_eq!(TaskState::from_bits(0).letter(), 'R');
        assert_eq!(TaskState::from_bits(1).letter(), 'S');
        assert_eq!(TaskState::from_bits(2).letter(), 'D');
        // TASK_KILLABLE = UNINTERRUPTIBLE | WAKEKILL
        assert_eq!(TaskState::from_bits(0x102).letter(), 'D');
        // TASK_IDLE = UNINTERRUPTIBLE | NOLOAD
        assert_eq!(TaskState::from_bits(0x402).letter(), 'I');
        assert_eq!(TaskState::from_bits(4).letter(), 'T');
        assert_eq!(TaskState::from_bits(8).letter(), 't');
    }
}
