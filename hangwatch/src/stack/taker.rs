//! Both stacks of one thread, as every report carries them, built in one place from what
//! the `dump_stacks` iterator captured: used by hang reports and by `threads --stacks`.
use hangwatch_ebpf::StackRecord;
use serde::Serialize;

use super::{Frame, KernelSymbolizer, UserRegisters, UserStacks, user::UnwindInfo};

#[derive(Debug, Clone, Default, Serialize)]
pub struct ThreadStacks {
    pub kernel_stack: Vec<Frame>,
    /// Why the kernel stack is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_stack_error: Option<String>,
    /// The registers saved at kernel entry, where the user stack starts.
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
}

/// The symbolizers and caches that turn captured stacks into frames.
#[derive(Default)]
pub struct StackTaker {
    pub kernel: KernelSymbolizer,
    pub user: UserStacks,
}

impl StackTaker {
    /// The stacks of a thread of process `pid`, from its `dump_stacks` record (`None` when
    /// the iterator did not find it). A kernel thread has no user stack and that is no error.
    pub fn take(
        &mut self,
        pid: u32,
        record: Option<&StackRecord>,
        kernel_thread: bool,
    ) -> ThreadStacks {
        let Some(record) = record else {
            return ThreadStacks {
                kernel_stack_error: Some("the thread was gone before its stack was read".into()),
                ..ThreadStacks::default()
            };
        };
        let depth = (record.kernel_depth as usize).min(record.kernel_stack.len());
        let user_registers = (!kernel_thread && record.user_ip != 0).then_some(UserRegisters {
            ip: record.user_ip,
            sp: record.user_sp,
            fp: record.user_fp,
        });
        let user = user_registers.map(|regs| self.user.capture(pid, regs));
        ThreadStacks {
            kernel_stack: self.kernel.symbolize(&record.kernel_stack[..depth]),
            kernel_stack_error: (depth == 0)
                .then(|| "the kernel could not walk this thread's stack".into()),
            user_registers,
            blocked_here: user
                .as_ref()
                .and_then(|u| u.blocked_here())
                .map(Frame::location),
            user_stack_error: match &user {
                Some(u) => u.error.clone(),
                None if kernel_thread => None,
                None => Some("no user registers: the thread was not in the kernel".into()),
            },
            user_stack_unwind: user.as_ref().and_then(|u| u.info.clone()),
            user_stack: user.map(|u| u.frames).unwrap_or_default(),
        }
    }
}
