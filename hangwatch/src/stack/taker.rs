//! Both stacks of one thread, as every report carries them, built in one place from what
//! the `dump_stacks` iterator captured (a blocked thread) or from a perf sample (a thread
//! running on CPU): used by hang reports and by `threads --stacks`.
use hangwatch_ebpf::StackRecord;
use serde::Serialize;

use super::{
    Frame, KernelSymbolizer, UserRegisters, UserStacks,
    on_cpu::{self, RunningSample, SampleError},
    user::{UnwindInfo, UserStack},
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_stack_unwind: Option<UnwindInfo>,
    /// The first application frame: "function at file:line".
    pub blocked_here: Option<String>,
    /// A CPython thread running an asyncio task: the qualified name of the task's
    /// coroutine (the outermost of the innermost chain of coroutine frames).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub python_task: Option<String>,
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
        let user = user_registers.map(|regs| self.user.capture(pid, record.tid, regs));
        ThreadStacks {
            source: StackSource::Blocked,
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
            python_task: user.as_ref().and_then(|u| u.python_task.clone()),
            user_stack: user.map(|u| u.frames).unwrap_or_default(),
        }
    }

    /// The stacks of thread `tid` of process `pid` while it runs on a CPU, from one perf
    /// sample (`on_cpu::sample_running`, waiting at most `on_cpu::SAMPLE_TIMEOUT`). The
    /// kernel stack is the sample's kernel callchain: empty, and no error, when the sample
    /// interrupted user code. `Err(SampleError::NoSample)` means the thread stayed off-CPU:
    /// take its stacks as a blocked thread's (`take`) instead.
    pub fn take_running(&mut self, pid: u32, tid: u32) -> Result<ThreadStacks, SampleError> {
        let sample = on_cpu::sample_running(tid, on_cpu::SAMPLE_TIMEOUT)?;
        Ok(self.take_sampled(pid, sample))
    }

    /// The stacks of a thread of process `pid` from a sample of it running.
    pub fn take_sampled(&mut self, pid: u32, sample: RunningSample) -> ThreadStacks {
        let user = sample.regs.map(|regs| {
            self.user
                .capture_from_copy(pid, sample.tid, regs, sample.stack)
        });
        let kernel_stack = self.kernel.symbolize(&sample.kernel_callchain);
        ThreadStacks {
            source: StackSource::OnCpuSample,
            kernel_stack_error: (sample.in_kernel && kernel_stack.is_empty())
                .then(|| "the sample has no kernel callchain".into()),
            kernel_stack,
            user_registers: sample.regs,
            blocked_here: user
                .as_ref()
                .and_then(UserStack::blocked_here)
                .map(Frame::location),
            user_stack_error: match &user {
                Some(u) => u.error.clone(),
                None => Some("no user registers in the sample: a kernel thread".into()),
            },
            user_stack_unwind: user.as_ref().and_then(|u| u.info.clone()),
            python_task: user.as_ref().and_then(|u| u.python_task.clone()),
            user_stack: user.map(|u| u.frames).unwrap_or_default(),
        }
    }
}
