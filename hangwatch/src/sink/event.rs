//! The hang event: what every report carries (MISSION.md, "What every hang report
//! carries"). This is the JSON line schema of `--output json`.
use serde::Serialize;

use crate::{
    detect::{lock_wait::OwnerlessLock, reason::DeadlockReason},
    episode::EventType,
    kind::HangKind,
    meta::ProcessInfo,
    stack::ThreadStacks,
    state::Wait,
};

/// Why an episode ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The thread was woken or ran again.
    Running,
    /// The thread (or its whole process) exited.
    Exited,
    /// The daemon stopped (SIGTERM) while the episode was open: whether it ended is not
    /// known.
    DaemonStopped,
}

impl Resolution {
    /// The name the JSON events use, for the text output to say the same.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Exited => "exited",
            Self::DaemonStopped => "daemon_stopped",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HangEvent {
    pub event: EventType,
    pub id: String,
    pub kind: HangKind,
    pub pid: u32,
    pub tid: u32,
    /// The process name.
    pub comm: String,
    pub thread_name: String,
    pub exe: Option<String>,
    /// The command line, at most `enrich::MAX_CMDLINE_BYTES` of it (`cmdline_truncated`).
    pub cmdline: Vec<String>,
    /// The command line was longer than `enrich::MAX_CMDLINE_BYTES` and is cut there.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cmdline_truncated: bool,
    /// Why `cmdline` is empty: it could not be read in time (the process resists reads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline_error: Option<String>,
    pub cgroup: Option<String>,
    /// `container_id`, `pod_uid`, `namespace`, `pod`, `container`, at the top level.
    #[serde(flatten)]
    pub workload: Workload,
    /// When the wait began (RFC 3339).
    pub started_at: String,
    pub duration_ms: u64,
    pub threshold_ms: u64,
    /// The thread was already blocked when hangwatch started: the wait is at least
    /// `duration_ms` long.
    pub blocked_since_before_start: bool,
    pub wait: Wait,
    /// The chain of lock owners from this thread on: its lock's owner, what that one
    /// waits on, the owner of that lock, ... until a thread not in a lock wait, or a cycle.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blocked_on: Vec<BlockedOn>,
    /// For a deadlock: every thread of it (the cycle in order), with its wait and stack.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cycle: Vec<CycleMember>,
    /// For `loop_stall`: what the event-loop thread does instead of coming back to its wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stall: Option<LoopStallInfo>,
    /// For `stuck_exit`: the signal that asked the process to exit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitInfo>,
    /// For `stuck_exit`: every thread of the process with its wait and stack, so the one
    /// that holds up the shutdown shows (stacks for at most `enrich::MAX_EXIT_STACKS`
    /// threads: the others say so in `kernel_stack_error`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub threads: Vec<CycleMember>,
    /// For a `lock_wait` on a lock that keeps no owner (`wait.owner_tid` null): the
    /// implementation its stack shows and the lock's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<OwnerlessLock>,
    /// For a deadlock: the rule that fired (`lock_cycle`, `pi_park`, `whole_process`) and
    /// the facts it relied on (docs/detection.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<DeadlockReason>,
    /// `kernel_stack`, `user_stack`, `blocked_here` and the rest, at the top level.
    #[serde(flatten)]
    pub stacks: ThreadStacks,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
}

/// The container and pod of the process; every field is absent outside containers, and the
/// names are absent unless the daemon watches the node's pods (`--node-name`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Workload {
    /// The runtime's container id (64 hex digits), from the process's cgroup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The pod's UID, from the process's cgroup (kubelet names the pod's cgroup after it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The container's name in the pod spec.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

impl Workload {
    pub fn of(process: Option<&ProcessInfo>) -> Self {
        let Some(process) = process else {
            return Self::default();
        };
        let ids = process.container.clone().unwrap_or_default();
        let pod = process.pod.as_ref();
        Self {
            container_id: ids.container_id,
            pod_uid: ids.pod_uid,
            namespace: pod.map(|p| p.namespace.clone()),
            pod: pod.map(|p| p.pod.clone()),
            container: pod.and_then(|p| p.container.clone()),
        }
    }
}

/// One owner in a `blocked_on` chain.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BlockedOn {
    pub tid: u32,
    pub thread_name: String,
    /// Task state letter as `ps` shows it.
    pub state: char,
    /// The syscall it is in, or "running".
    pub syscall: String,
    /// For a futex wait, its op (e.g. `FUTEX_WAIT_PRIVATE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub futex_op: Option<String>,
    /// The owner of the lock this one waits on, when known: the next link.
    pub owner_tid: Option<u32>,
    /// The chain came back to a thread already in it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cycle: bool,
    /// Where the holder is stuck: its first application frame, and its stacks (for the
    /// first `enrich::MAX_HOLDER_STACKS` holders of the chain; not for a link back into a
    /// cycle, whose stacks are above).
    pub blocked_here: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub user_stack: Vec<crate::stack::Frame>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernel_stack: Vec<crate::stack::Frame>,
    /// Why its stacks are missing or partial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stacks_error: Option<String>,
}

impl BlockedOn {
    /// Adds the holder's stacks.
    pub fn with_stacks(self, stacks: ThreadStacks) -> Self {
        Self {
            stacks_error: stacks.kernel_stack_error.or(stacks.user_stack_error),
            blocked_here: stacks.blocked_here,
            user_stack: stacks.user_stack,
            kernel_stack: stacks.kernel_stack,
            ..self
        }
    }
}

/// What a stalled event-loop thread is doing.
#[derive(Debug, Clone, Serialize)]
pub struct LoopStallInfo {
    /// "running on CPU", or "blocked in SYSCALL".
    pub doing: String,
    pub on_cpu: bool,
    /// The syscall it is blocked in, when blocked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall: Option<String>,
    /// The last time it was seen coming back to its loop wait (RFC 3339); for a loop
    /// recognized from its stack (`recognized_from: "stack"`), when this wait began.
    pub last_return_at: String,
    /// Blocking loop waits seen from this thread (what makes it an event-loop thread by
    /// history; 0 for one recognized from its stack).
    pub loop_waits: u32,
    /// It parks on a futex when idle (a tokio-style worker).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub parking_worker: bool,
    /// How it was recognized as an event-loop thread: `"loop_waits"` (seen in its loop
    /// wait), or `"stack"` (a driver frame in its stack, in a process with an epoll or
    /// io_uring fd: a loop stalled before it was seen waiting).
    pub recognized_from: &'static str,
    /// For `recognized_from: "stack"`, the driver frame (`uv_run`,
    /// `tokio::runtime::scheduler::multi_thread::worker::Context::run`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver_frame: Option<String>,
}

/// The exit request a `stuck_exit` process did not follow.
#[derive(Debug, Clone, Serialize)]
pub struct ExitInfo {
    /// SIGTERM, SIGINT or SIGQUIT.
    pub signal: &'static str,
    /// Who sent it, when known: not for a signal found pending at the daemon's start, nor
    /// for one a handler without `SA_SIGINFO` is handling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_comm: Option<String>,
    /// Exit signals received so far.
    pub signals: u32,
    /// How the request is known: `signal_sent` (seen sent), `in_handler` (a thread was in
    /// its handler when the daemon started, and still is: `handler_tid`), `pending`
    /// (pending and blocked when the daemon started, and still).
    pub found: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handler_tid: Option<u32>,
}

/// One thread of a deadlock, or of a process that does not exit.
#[derive(Debug, Clone, Serialize)]
pub struct CycleMember {
    pub tid: u32,
    pub thread_name: String,
    pub wait: Wait,
    pub blocked_here: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub user_stack: Vec<crate::stack::Frame>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernel_stack: Vec<crate::stack::Frame>,
    /// Why its stacks are missing or partial (not read in time, not sampled, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stacks_error: Option<String>,
    /// The signal handler it is in (a thread that holds up an exit in its handler).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal_handler: Option<crate::stack::user::signal_frame::SignalHandler>,
}

impl CycleMember {
    /// A thread of a report with its wait and stacks.
    pub fn of(tid: u32, thread_name: String, wait: Wait, stacks: ThreadStacks) -> Self {
        Self {
            tid,
            thread_name,
            wait,
            stacks_error: stacks.kernel_stack_error.or(stacks.user_stack_error),
            blocked_here: stacks.blocked_here,
            user_stack: stacks.user_stack,
            kernel_stack: stacks.kernel_stack,
            signal_handler: stacks.signal_handler,
        }
    }
}

/// A synthetic report, for tests of the sinks, the store and the API.
#[cfg(test)]
pub(crate) fn example(event: EventType, id: &str, tid: u32, duration_ms: u64) -> HangEvent {
    let sample = crate::detect::testing::blocked(tid, 100, 1, 0);
    HangEvent {
        event,
        id: id.into(),
        kind: HangKind::OffCpu,
        pid: 100,
        tid,
        comm: "abba".into(),
        thread_name: "worker".into(),
        exe: Some("/tmp/abba".into()),
        cmdline: vec!["/tmp/abba".into()],
        cmdline_truncated: false,
        cmdline_error: None,
        cgroup: Some("/".into()),
        workload: Workload::default(),
        started_at: "2026-01-01T00:00:00.000Z".into(),
        duration_ms,
        threshold_ms: 1000,
        blocked_since_before_start: false,
        wait: Wait::describe(&sample),
        blocked_on: Vec::new(),
        cycle: Vec::new(),
        stall: None,
        exit: None,
        threads: Vec::new(),
        reason: None,
        lock: None,
        stacks: ThreadStacks {
            blocked_here: Some("worker at abba.c:30".into()),
            ..ThreadStacks::default()
        },
        resolution: (event == EventType::Resolved).then_some(Resolution::Running),
    }
}
