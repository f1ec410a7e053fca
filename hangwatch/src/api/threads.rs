//! `/api/v1/threads/{pid}[?stacks=true]`: a live thread dump of one process: for every
//! thread, its state now, how long it has been off-CPU, and what it waits on (syscall,
//! futex), from the probes' per-thread state (one `bpf()` lookup per thread, by pidfd)
//! and `/proc`. With `stacks`, the scan thread (which owns the iterators) captures every
//! thread's kernel stack and user registers and symbolizes them.
use std::{
    collections::HashMap,
    fs,
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::{
    Json,
    extract::{Path, State},
};
use hangwatch_ebpf::{MAX_STACK_REQUESTS, ThreadRecord, ThreadState, task_state};
use serde::Serialize;
use tokio::sync::oneshot;

use super::{Api, ApiError, Params, RawParams, access::Caller};
use crate::{
    clock,
    meta::owner::owner_of,
    probe::{Lookup, StateReader},
    sink::redact,
    stack::ThreadStacks,
    state::{ProcSyscall, ThreadSample, Wait},
};

/// The largest pid Linux can give (`PID_MAX_LIMIT` on 64-bit).
pub const PID_MAX: u32 = 4_194_304;
/// How long reading `/proc` may take before the request gives up (a process in the middle
/// of an exec, or stuck in the kernel, can block readers of some of its files).
const PROC_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the scan thread may take to answer a stack request (it answers after its
/// current tick).
const STACKS_TIMEOUT: Duration = Duration::from_secs(3);

/// `threads` requests read at once; more get 503 at once, before anything is read (a dump
/// reads /proc for every thread of the process, and with `stacks` costs walks of the stack
/// iterator and an unwind per thread: a flood of them must not become a queue of work).
pub const THREAD_DUMPS: usize = 4;
/// `threads?stacks` requests waiting for the scan thread: never more than `THREAD_DUMPS`.
pub const STACK_QUEUE: usize = THREAD_DUMPS;

/// A request to the scan thread for the stacks of `tids`.
pub struct StackRequest {
    pub pid: u32,
    pub tids: Vec<u32>,
    pub reply: oneshot::Sender<Result<Vec<ThreadStacksOf>, String>>,
}

/// One thread's stacks in a dump: what every hang report carries.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadStacksOf {
    #[serde(skip)]
    pub tid: u32,
    #[serde(flatten)]
    pub stacks: ThreadStacks,
}

#[derive(Debug, Serialize)]
pub struct ThreadDump {
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub threads: Vec<ThreadView>,
    /// Why the probes' per-thread state could not be read (then waits come from /proc).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_error: Option<String>,
    /// Why `stacks` were asked for and not given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stacks_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ThreadView {
    pub tid: u32,
    pub name: String,
    /// The state now, as /proc shows it (`R`, `S`, `D`...).
    pub state: crate::state::TaskState,
    pub state_description: &'static str,
    /// On a CPU right now, per the probes (unknown when they have no state for it).
    pub on_cpu: Option<bool>,
    /// How long it has been off-CPU, when it is.
    pub off_cpu_ms: Option<u64>,
    /// When it went off-CPU (RFC 3339).
    pub off_cpu_since: Option<String>,
    /// Off-CPU since before hangwatch started: `off_cpu_ms` is a lower bound, or unknown.
    pub blocked_since_before_start: bool,
    /// What it waits on, when it is not running.
    pub wait: Option<Wait>,
    /// The open episode of this thread, if it is hung.
    pub hang_id: Option<String>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub stacks: Option<ThreadStacks>,
}

/// `GET /api/v1/threads/{pid}[?stacks=true]`, for a caller that may read the process
/// (403 otherwise, before anything of it is read).
pub async fn threads(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(pid): Path<String>,
    raw: RawParams,
) -> Result<Json<ThreadDump>, ApiError> {
    let params = Params::check(raw, &["stacks"])?;
    let stacks = params.flag("stacks")?;
    let pid: u32 = pid
        .parse()
        .ok()
        .filter(|p| (1..=PID_MAX).contains(p))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "`{pid}` is not a pid (an integer from 1 to {PID_MAX})"
            ))
        })?;
    let _reading = Arc::clone(&api.thread_dumps)
        .try_acquire_owned()
        .map_err(|_| {
            api.metrics.limit("thread_dumps", 1);
            ApiError::unavailable(format!(
                "busy: {THREAD_DUMPS} thread dumps are being read; try again"
            ))
        })?;
    let access = api.probes.get();
    let reader = access.and_then(|a| a.reader.clone());
    let attached = access.is_some();
    let asking = caller.clone();
    let read = tokio::task::spawn_blocking(move || {
        let owner = owner_of(tgid_of(pid)?);
        Some(match asking.may_read(owner.as_ref()) {
            Ok(()) => Ok(read_dump(pid, reader.as_ref(), attached).map(|dump| (dump, owner))),
            Err(denied) => Err(denied),
        })
    });
    let (mut dump, owner) = match tokio::time::timeout(crate::clock::stretched(PROC_TIMEOUT), read)
        .await
    {
        Ok(Ok(Some(Ok(Some(read))))) => read,
        Ok(Ok(Some(Err(denied)))) => return Err(ApiError::forbidden(&denied)),
        Ok(Ok(None | Some(Ok(None)))) => {
            return Err(ApiError::not_found(format!("no process with pid {pid}")));
        }
        Ok(Err(join)) => {
            return Err(ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading /proc/{pid} failed: {join}"),
            ));
        }
        Err(_) => {
            return Err(ApiError::unavailable(format!(
                "reading /proc/{pid} took longer than {PROC_TIMEOUT:?} (the process may be stuck in exec or in the kernel)"
            )));
        }
    };
    for thread in &mut dump.threads {
        thread.hang_id = api.store.episode_of_thread(thread.tid);
    }
    if stacks {
        match access {
            None => dump.stacks_error = Some("the probes are not loaded yet".into()),
            Some(access) => add_stacks(&mut dump, &access.stacks, &api.metrics).await?,
        }
    }
    // The process may have changed hands while it was read (an exec of a setuid program,
    // or its pid reused by another user's process): then nothing of it goes out.
    if let Some(now) = owner_of(dump.pid)
        && Some(now) != owner
    {
        caller
            .may_read(Some(&now))
            .map_err(|denied| ApiError::forbidden(&denied))?;
    }
    if !caller.sees_kernel_addresses() {
        for thread in &mut dump.threads {
            if let Some(stacks) = &mut thread.stacks {
                redact::strip_stacks(stacks);
            }
            if let Some(wait) = &mut thread.wait {
                redact::strip_wchan(wait);
            }
        }
    }
    Ok(Json(dump))
}

async fn add_stacks(
    dump: &mut ThreadDump,
    scan: &std::sync::mpsc::SyncSender<StackRequest>,
    metrics: &crate::metrics::Metrics,
) -> Result<(), ApiError> {
    let tids: Vec<u32> = dump.threads.iter().map(|t| t.tid).collect();
    let (reply, answer) = oneshot::channel();
    let pid = dump.pid;
    match scan.try_send(StackRequest { pid, tids, reply }) {
        Ok(()) => {}
        Err(std::sync::mpsc::TrySendError::Full(_)) => {
            metrics.limit("thread_dumps", 1);
            return Err(ApiError::unavailable(format!(
                "busy: {STACK_QUEUE} stack requests are already waiting; try again"
            )));
        }
        Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
            dump.stacks_error = Some("the scan has stopped".into());
            return Ok(());
        }
    }
    let stacks = match tokio::time::timeout(crate::clock::stretched(STACKS_TIMEOUT), answer).await {
        Ok(Ok(Ok(stacks))) => stacks,
        Ok(Ok(Err(err))) => {
            dump.stacks_error = Some(format!("cannot capture stacks: {err}"));
            return Ok(());
        }
        Ok(Err(_)) | Err(_) => {
            dump.stacks_error = Some(format!(
                "the scan did not capture the stacks within {STACKS_TIMEOUT:?}"
            ));
            return Ok(());
        }
    };
    let mut by_tid: HashMap<u32, ThreadStacks> =
        stacks.into_iter().map(|s| (s.tid, s.stacks)).collect();
    for (i, thread) in dump.threads.iter_mut().enumerate() {
        thread.stacks = Some(by_tid.remove(&thread.tid).unwrap_or_else(|| ThreadStacks {
            kernel_stack_error: Some(if i >= MAX_STACK_REQUESTS as usize {
                format!("not captured: at most {MAX_STACK_REQUESTS} threads per request")
            } else {
                "the thread was gone before its stack was read".into()
            }),
            ..ThreadStacks::default()
        }));
    }
    Ok(())
}

/// Reads every thread of the process `pid` (or of the process that thread `pid` belongs
/// to); `None` when there is no such process.
fn read_dump(pid: u32, reader: Option<&StateReader>, attached: bool) -> Option<ThreadDump> {
    let tgid = tgid_of(pid)?;
    let dir = format!("/proc/{tgid}");
    let comm = fs::read_to_string(format!("{dir}/comm"))
        .ok()?
        .trim_end()
        .to_owned();
    let exe = fs::read_link(format!("{dir}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let mut tids: Vec<u32> = fs::read_dir(format!("{dir}/task"))
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();

    let mut state_error = match (attached, reader) {
        (false, _) => Some("the probes are not loaded yet".to_owned()),
        (true, None) => Some("this kernel has no thread pidfds (Linux 6.9+)".to_owned()),
        (true, Some(_)) => None,
    };
    let now_ns = clock::monotonic_ns();
    let now_wall = SystemTime::now();
    let mut threads = Vec::with_capacity(tids.len());
    for tid in tids {
        let Some((name, letter)) = read_stat(tgid, tid) else {
            continue; // exited since the listing
        };
        let state = match reader.map(|r| r.read(tid)) {
            Some(Ok(Lookup::Found(state))) => Some(state),
            Some(Ok(Lookup::NoState)) | None => None,
            Some(Ok(Lookup::Gone)) => continue,
            Some(Err(err)) => {
                state_error.get_or_insert_with(|| format!("cannot read thread state: {err}"));
                None
            }
        };
        let syscall = fs::read_to_string(format!("/proc/{tgid}/task/{tid}/syscall"))
            .ok()
            .and_then(|text| ProcSyscall::parse(&text));
        threads.push(view(
            tgid, tid, name, letter, state, syscall, now_ns, now_wall,
        ));
    }
    Some(ThreadDump {
        pid: tgid,
        comm,
        exe,
        threads,
        state_error,
        stacks_error: None,
    })
}

#[expect(
    clippy::too_many_arguments,
    reason = "one thread's facts from three sources"
)]
fn view(
    tgid: u32,
    tid: u32,
    name: String,
    letter: char,
    state: Option<ThreadState>,
    syscall: Option<ProcSyscall>,
    now_ns: u64,
    now_wall: SystemTime,
) -> ThreadView {
    let bits = state_bits(letter);
    let task = crate::state::TaskState::from_bits(bits);
    // The probe records switch-ins only for the threads the daemon follows (see
    // `ThreadState`): a thread /proc shows running or runnable is past its last switch-out
    // whatever the storage says.
    let runnable = bits == task_state::RUNNING;
    let on_cpu = state.map(|s| s.on_cpu_at_ns >= s.off_cpu_at_ns || runnable);
    let off_cpu_at = state
        .filter(|s| s.off_cpu_at_ns > s.on_cpu_at_ns && !runnable)
        .map(|s| s.off_cpu_at_ns);
    let mut comm = [0u8; 16];
    for (dst, src) in comm.iter_mut().zip(name.bytes().take(15)) {
        *dst = src;
    }
    let sample = ThreadSample::from(&ThreadRecord {
        state: state.unwrap_or_default(),
        start_boottime_ns: 0,
        seen_at_ns: now_ns,
        tid,
        tgid,
        task_state: bits,
        task_flags: 0,
        comm,
        syscall_nr: -1,
        syscall_args: [0; 5],
    });
    let waiting = bits != task_state::RUNNING || off_cpu_at.is_some();
    ThreadView {
        tid,
        name,
        state: task,
        state_description: task.description(),
        on_cpu,
        off_cpu_ms: off_cpu_at.map(|at| now_ns.saturating_sub(at) / 1_000_000),
        off_cpu_since: off_cpu_at
            .map(|at| clock::rfc3339(clock::wall_time_of(at, now_ns, now_wall))),
        blocked_since_before_start: (state.is_none() && bits != task_state::RUNNING)
            || sample.blocked_before_attach,
        wait: waiting.then(|| {
            // A syscall the probes saw is only current while the thread is off-CPU.
            let probe_syscall_current = off_cpu_at.is_some();
            let mut sample = sample;
            if !probe_syscall_current {
                sample.syscall = None;
            }
            Wait::describe(&sample)
                .with_proc_syscall(syscall)
                .with_wchan(crate::meta::wchan(tgid, tid))
        }),
        hang_id: None,
        stacks: None,
    }
}

/// The thread group of `pid` (itself for a process; its leader for a thread).
fn tgid_of(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The thread's name and state letter from `/proc/TGID/task/TID/stat`.
fn read_stat(tgid: u32, tid: u32) -> Option<(String, char)> {
    let stat = fs::read_to_string(format!("/proc/{tgid}/task/{tid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let letter = stat.get(close + 1..)?.trim_start().chars().next()?;
    Some((name, letter))
}

/// The task state bits a /proc state letter stands for.
fn state_bits(letter: char) -> u32 {
    use task_state::*;
    match letter {
        'R' => RUNNING,
        'D' => UNINTERRUPTIBLE,
        'T' => STOPPED,
        't' => TRACED,
        'I' => UNINTERRUPTIBLE | NOLOAD,
        'P' => PARKED,
        'X' | 'Z' | 'x' => DEAD,
        _ => INTERRUPTIBLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_without_probes() {
        let dump = read_dump(std::process::id(), None, false).expect("our own process");
        assert_eq!(dump.pid, std::process::id());
        assert!(!dump.threads.is_empty());
        assert!(
            dump.threads
                .iter()
                .any(|t| t.state == crate::state::TaskState::Runnable),
            "the thread reading is running: {dump:?}"
        );
        assert!(dump.state_error.is_some());
        assert!(read_dump(PID_MAX + 1, None, false).is_none());
    }

    #[test]
    fn a_blocked_thread_shows_its_wait() {
        let state = ThreadState {
            off_cpu_at_ns: 1_000_000_000,
            on_cpu_at_ns: 500_000_000,
            state_at_switch: task_state::INTERRUPTIBLE,
            syscall_nr: libc::SYS_futex as u32,
            futex_uaddr: 0x1000,
            futex_op: 128,
            flags: hangwatch_ebpf::FLAG_IN_SYSCALL,
            ..ThreadState::default()
        };
        let v = view(
            1,
            2,
            "worker".into(),
            'S',
            Some(state),
            None,
            3_500_000_000,
            SystemTime::now(),
        );
        assert_eq!(v.off_cpu_ms, Some(2500));
        assert_eq!(v.on_cpu, Some(false));
        let wait = v.wait.expect("waits");
        assert_eq!(wait.syscall.as_deref(), Some("futex"));
        assert_eq!(
            wait.futex.map(|f| f.op).as_deref(),
            Some("FUTEX_WAIT_PRIVATE")
        );
        // Its switch-in was not recorded (a thread the daemon does not follow): /proc's
        // letter says it runs.
        let unfollowed = view(
            1,
            2,
            "worker".into(),
            'R',
            Some(state),
            None,
            3_500_000_000,
            SystemTime::now(),
        );
        assert_eq!(unfollowed.on_cpu, Some(true));
        assert_eq!(unfollowed.off_cpu_ms, None);
        let running = view(1, 3, "spin".into(), 'R', None, None, 1, SystemTime::now());
        assert!(running.wait.is_none());
        assert!(!running.blocked_since_before_start);
    }
}
