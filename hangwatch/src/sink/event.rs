//! The hang event: what every report carries (MISSION.md, "What every hang report
//! carries"). This is the JSON line schema of `--output json`.
use serde::Serialize;

use crate::{
    detect::HangKind,
    stack::{Frame, UserRegisters, user::UnwindInfo},
    state::Wait,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Hang,
    Update,
    Resolved,
}

/// Why an episode ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The thread was woken or ran again.
    Running,
    /// The thread (or its whole process) exited.
    Exited,
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
    pub cmdline: Vec<String>,
    pub cgroup: Option<String>,
    /// When the wait began (RFC 3339).
    pub started_at: String,
    pub duration_ms: u64,
    pub threshold_ms: u64,
    /// The thread was already blocked when hangwatch started: the wait is at least
    /// `duration_ms` long.
    pub blocked_since_before_start: bool,
    pub wait: Wait,
    pub kernel_stack: Vec<Frame>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_stack_error: Option<String>,
    pub user_registers: Option<UserRegisters>,
    /// The user stack, innermost frame first, each tagged kernel/runtime/application.
    pub user_stack: Vec<Frame>,
    /// Why the user stack is missing or partial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_stack_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_stack_unwind: Option<UnwindInfo>,
    /// The first application frame: "function at file:line".
    pub blocked_here: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
}
