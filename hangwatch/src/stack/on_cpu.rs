//! One sample of a thread that is running on a CPU: its user registers, the top of its user
//! stack and its kernel callchain, taken by the kernel in the thread's own timer interrupt.
//!
//! A thread spinning on CPU never enters the kernel to wait, so the registers saved at its
//! last kernel entry (what `dump_stacks` reads for a blocked thread) are stale: they say
//! where it was, not where it spins. This module does what `perf record --call-graph dwarf`
//! does, for one thread and one sample:
//!
//! 1. `perf_event_open(pid = tid, cpu = -1)` with a software `cpu-clock` event, period
//!    1 ms, sampling `IP | TID | TIME | CALLCHAIN | REGS_USER | STACK_USER`: the user
//!    registers IP, SP and BP, [`STACK_BYTES`] of user stack from SP up, and the kernel
//!    callchain (`exclude_callchain_user`: the user stack is unwound here with DWARF CFI,
//!    `super::user`, which frame-pointer callchains cannot do).
//! 2. mmap the ring buffer, enable, poll until the first `PERF_RECORD_SAMPLE` or the
//!    timeout, parse it, close. A thread that stays off-CPU for the whole timeout gives
//!    [`SampleError::NoSample`]: it is blocked, and its stack is the blocked-thread path's.
//!
//! Why not a BPF `perf_event` program on the thread: it would need the same
//! `perf_event_open` and would copy the stack with `bpf_probe_read_user` into a map; the
//! kernel's own `PERF_SAMPLE_STACK_USER` does that copy (it is the ABI `perf` relies on),
//! needs no new BPF program, verifier budget or map. `perf-event2` (the maintained fork
//! of the `perf-event` crate) opens the event and reads its ring buffer; the one record
//! kind we ask for is read by `parse_sample` below. Nothing is attached system-wide: the
//! event exists only while one stalled thread is being sampled.
//!
//! Cost to the target: the program is never stopped. Each sample is one timer interrupt
//! on the thread's CPU in which the kernel copies the registers and [`STACK_BYTES`] of stack
//! (a few microseconds); the event is enabled for one sample period of the thread's CPU
//! time plus our wake-up (`RunningSample::enabled_for`: 1.05 to 1.2 ms measured for a
//! thread that has a CPU to itself, longer when it waits for one), so the thread takes
//! one sample, rarely two. The caller pays one fd, a 68 KiB ring buffer (locked memory) and the
//! wait; the first `perf_event_open` with a callchain on a machine also allocates the
//! kernel's callchain buffers (about 10 ms, in our process, before the event is enabled).
use std::{
    io,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use perf_event::{Builder, Record, SampleFlag, Sampler, events::Software};

use super::{UserRegisters, user::StackCopy};

/// How long [`sample_running`] waits by default for the thread to be sampled: 50 periods.
pub const SAMPLE_TIMEOUT: Duration = Duration::from_millis(50);

/// The sampling period of the `cpu-clock` event, in nanoseconds of the thread's CPU time.
const PERIOD_NS: u64 = 1_000_000;

/// Bytes of user stack copied from SP up. The kernel refuses `u16::MAX` or more (the
/// whole record must fit the 16-bit `perf_event_header.size`, and it shrinks the copy to
/// fit) and wants a multiple of 8
/// (`perf_copy_attr` in kernel/events/core.c); `perf record --call-graph dwarf` copies
/// 8 KiB by default. 32 KiB holds every frame of an interpreter's eval loop down to
/// `_start` in the tests; a deeper stack unwinds as far as the copy goes and says so.
pub const STACK_BYTES: u32 = 32 * 1024;
const _: () = assert!(STACK_BYTES < u16::MAX as u32 && STACK_BYTES.is_multiple_of(8));

/// Ring buffer data size (a power of two pages): the first record (header, IP, TID, TIME,
/// up to 127 frames + markers of callchain, 4 words of registers, the stack and its two
/// size words: about 34 KiB) fits; a later sample that does not is dropped by the kernel,
/// and only the first is read.
const RING_BYTES: usize = 64 * 1024;

/// x86_64 register indices in `sample_regs_user`, from arch/x86/include/uapi/asm/perf_regs.h
/// (`enum perf_event_x86_regs`): AX 0, BX 1, CX 2, DX 3, SI 4, DI 5, BP 6, SP 7, IP 8. The
/// sample carries the selected registers in increasing index order: BP, SP, IP.
const PERF_REG_X86_BP: u32 = 6;
const PERF_REG_X86_SP: u32 = 7;
const PERF_REG_X86_IP: u32 = 8;
const REGS_MASK: u64 = 1 << PERF_REG_X86_BP | 1 << PERF_REG_X86_SP | 1 << PERF_REG_X86_IP;

/// Callchain entries at or above this are context markers (`PERF_CONTEXT_KERNEL`,
/// `PERF_CONTEXT_USER`, ...), not addresses: `PERF_CONTEXT_MAX = (__u64)-4095` in
/// include/uapi/linux/perf_event.h.
const PERF_CONTEXT_MAX: u64 = -4095i64 as u64;

/// `perf_event_header.misc & PERF_RECORD_MISC_CPUMODE_MASK` (7) is
/// `PERF_RECORD_MISC_KERNEL` (1) when the sample interrupted kernel code.
const PERF_RECORD_MISC_CPUMODE_MASK: u16 = 7;
const PERF_RECORD_MISC_KERNEL: u16 = 1;

/// The sample's register ABI when there are no user registers (a kernel thread):
/// `PERF_SAMPLE_REGS_ABI_NONE` in `enum perf_sample_regs_abi`.
const PERF_SAMPLE_REGS_ABI_NONE: u64 = 0;

/// One sample of a running thread.
pub struct RunningSample {
    pub tid: u32,
    /// The user registers at the sample (the interrupted user code, or the registers saved
    /// at kernel entry when the sample hit the kernel); `None` for a kernel thread (the
    /// sample's register ABI is `PERF_SAMPLE_REGS_ABI_NONE`).
    pub regs: Option<UserRegisters>,
    /// The user stack from `regs.sp` up: empty when there are no user registers.
    pub stack: StackCopy,
    /// Kernel frames, innermost first, when the sample interrupted the kernel (a thread
    /// looping through a system call); empty when it interrupted user code.
    pub kernel_callchain: Vec<u64>,
    /// The sample interrupted kernel code.
    pub in_kernel: bool,
    /// The sample's timestamp (`PERF_SAMPLE_TIME`, the perf clock, ns).
    pub time_ns: u64,
    /// How long the event existed: `perf_event_open` to `close` (the first open on a
    /// machine also allocates the kernel's callchain buffers: milliseconds, before the
    /// event is enabled).
    pub open_for: Duration,
    /// How long the event was enabled on the thread, sampling it: enable to `close`.
    pub enabled_for: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("thread {tid} is gone")]
    ThreadGone { tid: u32 },
    #[error("thread {tid} did not run on a CPU within {timeout:?}: it is off-CPU")]
    NoSample { tid: u32, timeout: Duration },
    /// No perf events here, or not allowed: `EACCES`/`EPERM` (perf_event_paranoid, no
    /// CAP_PERFMON), `ENOENT`/`EOPNOTSUPP`/`ENODEV`/`ENOSYS` (no such event or no
    /// PERF_SAMPLE_STACK_USER on this kernel), `E2BIG` (an older perf_event_attr).
    #[error("perf events are unavailable for thread {tid} (errno {errno:?})")]
    PerfUnavailable {
        tid: u32,
        errno: Option<i32>,
        #[source]
        source: io::Error,
    },
    #[error("perf_event_open on thread {tid} failed")]
    Open {
        tid: u32,
        #[source]
        source: io::Error,
    },
    #[error("mapping the perf ring buffer of thread {tid} failed")]
    RingBuffer {
        tid: u32,
        #[source]
        source: io::Error,
    },
    #[error("waiting for a perf sample of thread {tid} failed")]
    Poll {
        tid: u32,
        #[source]
        source: io::Error,
    },
    #[error("a perf sample of thread {tid} is malformed ({len} bytes)")]
    Parse { tid: u32, len: usize },
}

impl SampleError {
    /// A stable name of the error, for logs, metrics and the `sample-stack` output.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ThreadGone { .. } => "thread_gone",
            Self::NoSample { .. } => "no_sample",
            Self::PerfUnavailable { .. } => "perf_unavailable",
            Self::Open { .. } => "open",
            Self::RingBuffer { .. } => "ring_buffer",
            Self::Poll { .. } => "poll",
            Self::Parse { .. } => "parse",
        }
    }
}

/// The event of one thread, as [`sample_running`] opens it (disabled).
fn builder(tid: u32) -> Builder<'static> {
    let mut builder = Builder::new(Software::CPU_CLOCK);
    builder
        .observe_pid(tid as libc::pid_t)
        .any_cpu()
        // The kernel part of the callchain is the point when the loop is in a system call.
        .exclude_kernel(false)
        .exclude_callchain_user(true)
        .sample_period(PERIOD_NS)
        // Wake the poll at the first sample, not when the buffer is half full.
        .wakeup_events(1)
        .sample(
            SampleFlag::IP
                | SampleFlag::TID
                | SampleFlag::TIME
                | SampleFlag::CALLCHAIN
                | SampleFlag::REGS_USER
                | SampleFlag::STACK_USER,
        )
        .sample_regs_user(REGS_MASK)
        .sample_stack_user(STACK_BYTES);
    builder
}

/// Samples thread `tid` once while it runs on a CPU, waiting at most `timeout` for it to
/// run for one sample period. Needs CAP_PERFMON (or perf_event_paranoid <= 1) and ptrace
/// access to the thread (CAP_SYS_PTRACE), as the daemon has.
pub fn sample_running(tid: u32, timeout: Duration) -> Result<RunningSample, SampleError> {
    let opened = Instant::now();
    let counter = builder(tid)
        .build()
        .map_err(|source| open_error(tid, source))?;
    let mut sampler = counter
        .sampled(RING_BYTES)
        .map_err(|source| SampleError::RingBuffer { tid, source })?;
    let enabled = Instant::now();
    sampler
        .enable()
        .map_err(|source| SampleError::Open { tid, source })?;
    let sample = first_sample(&mut sampler, tid, timeout);
    drop(sampler);
    let (open_for, enabled_for) = (opened.elapsed(), enabled.elapsed());
    sample.map(|sample| RunningSample {
        open_for,
        enabled_for,
        ..sample
    })
}

fn open_error(tid: u32, source: io::Error) -> SampleError {
    let errno = source.raw_os_error();
    match errno {
        Some(libc::ESRCH) => SampleError::ThreadGone { tid },
        Some(
            libc::EACCES
            | libc::EPERM
            | libc::ENOENT
            | libc::EOPNOTSUPP
            | libc::ENODEV
            | libc::ENOSYS
            | libc::E2BIG,
        ) => SampleError::PerfUnavailable { tid, errno, source },
        // perf-event2 turns E2BIG into its own error of kind Unsupported.
        _ if source.kind() == io::ErrorKind::Unsupported => {
            SampleError::PerfUnavailable { tid, errno, source }
        }
        _ => SampleError::Open { tid, source },
    }
}

/// Polls the ring buffer until its first sample record, skipping other records.
fn first_sample(
    sampler: &mut Sampler,
    tid: u32,
    timeout: Duration,
) -> Result<RunningSample, SampleError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(record) = sampler.next_record() {
            if let Some(sample) = parse(&record, tid)? {
                return Ok(sample);
            }
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(SampleError::NoSample { tid, timeout });
        }
        let mut pollfd = libc::pollfd {
            fd: sampler.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // Round up: a 0 ms poll would spin.
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd, and its count.
        let ready = unsafe { libc::poll(&mut pollfd, 1, ms) };
        if ready < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(SampleError::Poll { tid, source: err });
        }
        // POLLHUP: the thread exited (the ring may still hold a sample taken before).
        if pollfd.revents & libc::POLLHUP != 0 {
            return match sampler.next_record() {
                Some(record) => parse(&record, tid)?.ok_or(SampleError::ThreadGone { tid }),
                None => Err(SampleError::ThreadGone { tid }),
            };
        }
    }
}

/// The sample in `record`, or `None` for another kind of record (throttling, lost).
fn parse(record: &Record<'_>, tid: u32) -> Result<Option<RunningSample>, SampleError> {
    if record.ty() != PERF_RECORD_SAMPLE {
        return Ok(None);
    }
    let body = record.to_contiguous();
    parse_sample(tid, record.misc(), &body)
        .map(Some)
        .ok_or(SampleError::Parse {
            tid,
            len: body.len(),
        })
}

/// `PERF_RECORD_SAMPLE` in `enum perf_event_type` (include/uapi/linux/perf_event.h).
const PERF_RECORD_SAMPLE: u32 = 9;

/// Reads the body of a `PERF_RECORD_SAMPLE` (after its 8-byte `perf_event_header`, whose
/// `misc` is given) for the `sample_type` of [`builder`]. The layout is the comment on
/// PERF_RECORD_SAMPLE in include/uapi/linux/perf_event.h, fields in this order:
///
/// ```text
/// { u64 ip; }                               PERF_SAMPLE_IP
/// { u32 pid, tid; }                         PERF_SAMPLE_TID
/// { u64 time; }                             PERF_SAMPLE_TIME
/// { u64 nr; u64 ips[nr]; }                  PERF_SAMPLE_CALLCHAIN
/// { u64 abi; u64 regs[weight(mask)]; }      PERF_SAMPLE_REGS_USER
/// { u64 size; char data[size]; u64 dyn_size; }  PERF_SAMPLE_STACK_USER
/// ```
///
/// With `abi == PERF_SAMPLE_REGS_ABI_NONE` (a kernel thread) the kernel writes no
/// registers and a stack `size` of 0 with no `dyn_size` (`perf_output_sample` and
/// `perf_output_sample_ustack` in kernel/events/core.c). perf-event-data's parser reads
/// the registers whatever the abi, so a kernel thread's sample fails there: this reader
/// is the reason the record is parsed here.
fn parse_sample(tid: u32, misc: u16, body: &[u8]) -> Option<RunningSample> {
    let mut r = Reader { body, at: 0 };
    let _ip = r.u64()?;
    let pid_tid = r.u64()?;
    let time_ns = r.u64()?;
    let nr = usize::try_from(r.u64()?).ok()?;
    let mut kernel_callchain = Vec::with_capacity(nr);
    for _ in 0..nr {
        let address = r.u64()?;
        // Context markers (PERF_CONTEXT_KERNEL, ...) are not frames.
        if address < PERF_CONTEXT_MAX {
            kernel_callchain.push(address);
        }
    }
    let abi = r.u64()?;
    let regs = if abi == PERF_SAMPLE_REGS_ABI_NONE {
        None
    } else {
        let values = (0..REGS_MASK.count_ones())
            .map(|_| r.u64())
            .collect::<Option<Vec<u64>>>()?;
        Some(user_registers(REGS_MASK, &values)?)
    };
    let size = usize::try_from(r.u64()?).ok()?;
    let mut bytes = Vec::new();
    if regs.is_some() {
        bytes = r.bytes(size)?.to_vec();
        let dyn_size = usize::try_from(r.u64()?).ok()?;
        bytes.truncate(dyn_size);
    }
    // `{ u32 pid, tid }` in memory order: the tid is the second u32.
    let sample_tid = u32::try_from(pid_tid >> 32).ok().filter(|&t| t != 0);
    Some(RunningSample {
        tid: sample_tid.unwrap_or(tid),
        stack: StackCopy {
            base: regs.map_or(0, |r| r.sp),
            // The kernel filled all it was asked for: the stack may go on above the copy
            // (`UserStacks::capture_from_copy` checks it against the stack mapping).
            truncated: size > 0 && bytes.len() >= size,
            bytes,
        },
        regs,
        kernel_callchain,
        in_kernel: misc & PERF_RECORD_MISC_CPUMODE_MASK == PERF_RECORD_MISC_KERNEL,
        time_ns,
        open_for: Duration::ZERO,
        enabled_for: Duration::ZERO,
    })
}

/// Native-endian fields, front to back.
struct Reader<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let bytes = self.body.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_ne_bytes(self.bytes(8)?.try_into().ok()?))
    }
}

/// IP, SP and BP out of the sampled registers, which come in increasing index order of
/// the bits set in `mask`.
fn user_registers(mask: u64, values: &[u64]) -> Option<UserRegisters> {
    let value = |index: u32| {
        if mask & (1 << index) == 0 {
            return None;
        }
        let position = (mask & ((1 << index) - 1)).count_ones() as usize;
        values.get(position).copied()
    };
    Some(UserRegisters {
        ip: value(PERF_REG_X86_IP)?,
        sp: value(PERF_REG_X86_SP)?,
        fp: value(PERF_REG_X86_BP)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SP: u64 = 0x7ffc_0000_0000;

    /// The body of a PERF_RECORD_SAMPLE as the kernel writes it for our attributes, word by
    /// word from the layout in include/uapi/linux/perf_event.h and kernel/events/core.c.
    fn synthetic_body(abi: u64, stack: &[u8], callchain: &[u64]) -> Vec<u8> {
        let mut body = Vec::new();
        let word = |body: &mut Vec<u8>, v: u64| body.extend_from_slice(&v.to_ne_bytes());
        word(&mut body, 0x5555_0000_1234); // ip
        body.extend_from_slice(&4242u32.to_ne_bytes()); // pid
        body.extend_from_slice(&4243u32.to_ne_bytes()); // tid
        word(&mut body, 987_654_321); // time
        word(&mut body, callchain.len() as u64);
        for &ip in callchain {
            word(&mut body, ip);
        }
        word(&mut body, abi);
        if abi == PERF_SAMPLE_REGS_ABI_NONE {
            word(&mut body, 0); // stack size 0, no data, no dyn_size
            return body;
        }
        word(&mut body, SP + 0x100); // bp (index 6)
        word(&mut body, SP); // sp (index 7)
        word(&mut body, 0x5555_0000_1234); // ip (index 8)
        // The kernel reserves `sample_stack_user` bytes and says in dyn_size how many it
        // filled.
        word(&mut body, u64::from(STACK_BYTES));
        let mut data = stack.to_vec();
        data.resize(STACK_BYTES as usize, 0xee);
        body.extend_from_slice(&data);
        word(&mut body, stack.len() as u64);
        body
    }

    const ABI_64: u64 = 2;

    #[test]
    fn user_mode_sample_gives_registers_and_the_filled_part_of_the_stack() {
        let stack: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
        let body = synthetic_body(ABI_64, &stack, &[]);
        let sample = parse_sample(1, 2, &body).expect("parses");
        assert_eq!(sample.tid, 4243);
        assert_eq!(
            sample.regs,
            Some(UserRegisters {
                ip: 0x5555_0000_1234,
                sp: SP,
                fp: SP + 0x100,
            })
        );
        assert_eq!(sample.stack.base, SP);
        assert_eq!(
            sample.stack.bytes, stack,
            "dyn_size bytes, not the reserved size"
        );
        assert!(!sample.stack.truncated);
        assert!(sample.kernel_callchain.is_empty());
        assert!(!sample.in_kernel);
        assert_eq!(sample.time_ns, 987_654_321);
    }

    #[test]
    fn kernel_mode_sample_drops_the_context_markers() {
        const PERF_CONTEXT_KERNEL: u64 = -128i64 as u64;
        let body = synthetic_body(
            ABI_64,
            &[0u8; STACK_BYTES as usize],
            &[
                PERF_CONTEXT_KERNEL,
                0xffff_ffff_8100_0010,
                0xffff_ffff_8100_0020,
            ],
        );
        let sample = parse_sample(1, 1, &body).expect("parses");
        assert!(sample.in_kernel);
        assert_eq!(
            sample.kernel_callchain,
            [0xffff_ffff_8100_0010, 0xffff_ffff_8100_0020]
        );
        assert!(
            sample.stack.truncated,
            "the whole requested size was filled"
        );
    }

    #[test]
    fn kernel_thread_sample_has_no_user_registers() {
        let body = synthetic_body(PERF_SAMPLE_REGS_ABI_NONE, &[], &[0xffff_ffff_8100_0010]);
        let sample = parse_sample(1, 1, &body).expect("parses");
        assert_eq!(sample.regs, None);
        assert!(sample.stack.bytes.is_empty());
        assert_eq!(sample.kernel_callchain, [0xffff_ffff_8100_0010]);
    }

    #[test]
    fn short_records_are_refused() {
        let body = synthetic_body(ABI_64, &[1; 64], &[1, 2, 3]);
        for len in [0, 8, 40, body.len() - 1] {
            assert!(parse_sample(1, 2, &body[..len]).is_none(), "{len} bytes");
        }
    }

    #[test]
    fn registers_are_found_by_their_rank_in_the_mask() {
        let mask = 1 << 0 | REGS_MASK; // AX, BP, SP, IP
        let regs = user_registers(mask, &[1, 2, 3, 4]).expect("all present");
        assert_eq!((regs.fp, regs.sp, regs.ip), (2, 3, 4));
        assert_eq!(user_registers(1 << PERF_REG_X86_IP, &[4]), None, "no SP");
    }

    #[test]
    fn the_attributes_ask_for_what_the_reader_reads() {
        let builder = builder(1);
        let attrs = builder.attrs();
        // IP | TID | TIME | CALLCHAIN | REGS_USER | STACK_USER (enum perf_event_sample_format).
        let expected: u64 = 1 << 0 | 1 << 1 | 1 << 2 | 1 << 5 | 1 << 12 | 1 << 13;
        assert_eq!(attrs.sample_type, expected);
        assert_eq!(attrs.sample_regs_user, REGS_MASK);
        assert_eq!(attrs.sample_stack_user, STACK_BYTES);
        assert_eq!(attrs.exclude_callchain_user(), 1);
        assert_eq!(attrs.exclude_kernel(), 0);
        let body = synthetic_body(ABI_64, &[], &[0; 130]);
        assert!(8 + body.len() <= RING_BYTES, "a record fits the ring");
    }
}
