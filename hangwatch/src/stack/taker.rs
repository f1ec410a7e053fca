//! Both stacks of one thread, as every report carries them, built in one place from what
//! the `dump_stacks` iterator captured (a blocked thread) or from a perf sample (a thread
//! running on CPU): used by hang reports and by `threads --stacks`.
use hangwatch_ebpf::StackRecord;
use serde::Serialize;

use super::{
    Frame, KernelSymbolizer, UserRegisters, UserStacks,
    on_cpu::RunningSample,
    user::{UnwindInfo, UserStack, signal_frame::SignalHandler},
};

/// How a thread's stacks were obtained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StackSource {
    /// Read while the thread was blocked: the kernel stack it sleeps on and the user
    /// registers saved when it entered the kernel.
    #[default]
    Blocked,
    /// A perf sample taken in the thread's timer interrupt while it ran on a CPU.
    OnCpuSample,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ThreadStacks {
    /// `blocked` or `on_cpu_sample`.
    pub source: StackSource,
    pub kernel_stack: Vec<Frame>,
    /// Why the kernel stack is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_stack_error: Option<String>,
    /// The registers saved at kernel entry (or sampled), where the user stack starts.
    pub user_registers: Option<UserRegisters>,
    /// The user stack, innermost frame first, each tagged kernel/runtime/application.
    pub user_stack: Vec<Frame>,
    /// Why the user stack is missing or partial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_stack_error: Option<String>,
    /// The user stack was not read for a reason of the moment (a spent budget, a cold read
    /// still going on): asking again later may read it. A loop's park check then waits
    /// for a verdict instead of taking the empty stack as an answer.
    #[serde(skip)]
    pub user_stack_later: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_stack_unwind: Option<UnwindInfo>,
    /// The first application frame: "function at file:line".
    pub blocked_here: Option<String>,
    /// A CPython thread running an asyncio task: the qualified name of the task's
    /// coroutine (the outermost of the innermost chain of coroutine frames).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub python_task: Option<String>,
    /// The signal handler the thread is in (its user stack shows the signal frame): the
    /// signal, who sent it, and the frame where the handler begins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal_handler: Option<SignalHandler>,
}

/// The symbolizers and caches that turn captured stacks into frames, all on the calling
/// thread: for the command-line tools (`sample-stack`, `bench-stack`). The daemon reads
/// user stacks on a reader worker under a deadline instead (`crate::enrich::stacks`).
#[derive(Default)]
pub struct StackTaker {
    pub kernel: KernelSymbolizer,
    pub user: UserStacks,
}

impl StackTaker {
    /// The stacks of a thread of process `pid` from a sample of it running.
    pub fn take_sampled(&mut self, pid: u32, sample: RunningSample) -> ThreadStacks {
        let unwound = unwind_sample(&mut self.user, pid, sample);
        sampled_stacks(&mut self.kernel, unwound)
    }
}

/// Why a user stack was not read, and whether asking again later may read it.
#[derive(Debug, Clone)]
pub struct NotRead {
    pub why: String,
    pub later: bool,
}

/// A blocked thread's stacks from its `dump_stacks` record: the kernel stack symbolized
/// here, the user stack from `user` (given the saved registers; `Err` says why it was not
/// read). A kernel thread has no user stack and that is no error.
pub fn blocked_stacks(
    kernel: &mut KernelSymbolizer,
    record: Option<&StackRecord>,
    kernel_thread: bool,
    user: impl FnOnce(u32, UserRegisters) -> Result<UserStack, NotRead>,
) -> ThreadStacks {
    let Some(record) = record else {
        // Both stacks say why: a report never has an empty stack without a reason.
        return ThreadStacks::failed("the thread was gone before its stack was read".into());
    };
    let depth = (record.kernel_depth as usize).min(record.kernel_stack.len());
    let user_registers = (!kernel_thread && record.user_ip != 0).then(|| UserRegisters::of(record));
    let user = user_registers.map(|regs| user(record.tid, regs));
    let mut stacks = ThreadStacks {
        source: StackSource::Blocked,
        kernel_stack: kernel.symbolize(&record.kernel_stack[..depth]),
        kernel_stack_error: (depth == 0)
            .then(|| "the kernel could not walk this thread's stack".into()),
        user_registers,
        ..ThreadStacks::default()
    };
    match user {
        Some(Ok(user)) => stacks.set_user(user),
        Some(Err(not_read)) => {
            stacks.user_stack_error = Some(not_read.why);
            stacks.user_stack_later = not_read.later;
        }
        None if kernel_thread => {}
        None => {
            stacks.user_stack_error =
                Some("no user registers: the thread was not in the kernel".into());
        }
    }
    stacks
}

/// What a reader made of a sample of a running thread: the user stack unwound (where the
/// process's memory and files are read), the kernel callchain still to symbolize.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct UnwoundSample {
    pub regs: Option<UserRegisters>,
    pub user: Option<UserStack>,
    pub kernel_callchain: Vec<u64>,
    pub in_kernel: bool,
}

/// Unwinds the user stack of a sample of a running thread of `pid`.
pub fn unwind_sample(user: &mut UserStacks, pid: u32, sample: RunningSample) -> UnwoundSample {
    UnwoundSample {
        user: sample
            .regs
            .map(|regs| user.capture_from_copy(pid, sample.tid, regs, sample.stack)),
        regs: sample.regs,
        kernel_callchain: sample.kernel_callchain,
        in_kernel: sample.in_kernel,
    }
}

/// A running thread's stacks from its unwound sample; the kernel callchain is symbolized
/// here: empty, and no error, when the sample interrupted user code.
pub fn sampled_stacks(kernel: &mut KernelSymbolizer, sample: UnwoundSample) -> ThreadStacks {
    let kernel_stack = kernel.symbolize(&sample.kernel_callchain);
    let mut stacks = ThreadStacks {
        source: StackSource::OnCpuSample,
        kernel_stack_error: (sample.in_kernel && kernel_stack.is_empty())
            .then(|| "the sample has no kernel callchain".into()),
        kernel_stack,
        user_registers: sample.regs,
        ..ThreadStacks::default()
    };
    match sample.user {
        Some(user) => stacks.set_user(user),
        None => {
            stacks.user_stack_error =
                Some("no user registers in the sample: a kernel thread".into());
        }
    }
    stacks
}

impl ThreadStacks {
    /// Only why both stacks are missing.
    pub fn failed(why: String) -> Self {
        Self {
            kernel_stack_error: Some(why.clone()),
            user_stack_error: Some(why),
            ..Self::default()
        }
    }

    /// The user stack was read whole as far as this moment allows: every module on its
    /// path was read (none set aside for a resisting read, none unreadable). Such a
    /// stack is the stack of the rest of the wait; one that is not may be read better
    /// later.
    pub fn user_read_whole(&self) -> bool {
        !self.user_stack.is_empty()
            && !self.user_stack_later
            && self.user_stack_unwind.as_ref().is_some_and(|info| {
                info.unreadable_modules.is_empty() && info.modules_not_read.is_empty()
            })
    }

    /// The user stack these stacks carry, to carry again (`set_user` gives it back).
    pub fn user_part(&self) -> UserStack {
        UserStack {
            frames: self.user_stack.clone(),
            error: self.user_stack_error.clone(),
            info: self.user_stack_unwind.clone(),
            python_task: self.python_task.clone(),
            signal_handler: self.signal_handler.clone(),
        }
    }

    pub fn set_user(&mut self, user: UserStack) {
        self.blocked_here = user.blocked_here().map(Frame::location);
        self.user_stack_error = user.error;
        self.user_stack_unwind = user.info;
        self.python_task = user.python_task;
        self.signal_handler = user.signal_handler;
        self.user_stack = user.frames;
    }
}
