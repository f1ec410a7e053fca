//! Stacks of threads running on a CPU (issue 6, item 2): `hangwatch sample-stack` samples a
//! spinning thread with one perf `cpu-clock` event (`stack::on_cpu`) and unwinds the copied
//! user stack with DWARF CFI, through code without frame pointers, to file:line. A thread
//! that is blocked is never sampled: the caller gets `no_sample` and takes the blocked
//! path. No daemon and no BPF here: the command is what the detectors will call.

mod common;

use std::{process::Command, time::Duration};

use self::common::*;

const LINE_TIMEOUT: Duration = Duration::from_secs(5);

/// The C test program (tests/programs/spin.c).
const SPIN: &str = "spin";

/// A spinning thread is sampled at its first period (1 ms of its CPU time): this long a
/// wait only matters on a machine so loaded that the spinner gets no CPU.
const SPINNING_TIMEOUT: &str = "3s";

/// Runs `hangwatch sample-stack --pid PID --tid TID ARGS` and returns its exit code and
/// its JSON report.
fn sample_stack(pid: u32, tid: u32, args: &[&str]) -> (Option<i32>, Value) {
    let (pid, tid) = (pid.to_string(), tid.to_string());
    let mut full = vec!["sample-stack", "--pid", &pid, "--tid", &tid];
    full.extend_from_slice(args);
    let run = cli("", &full);
    let report = serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("sample-stack printed no JSON object ({e}):\n{run:?}"));
    (run.code, report)
}

/// Samples a thread that spins: the report must be a sample, from the perf event.
fn sample_spinning(pid: u32, tid: u32, repeat: u32) -> Value {
    let repeat = repeat.to_string();
    let (code, report) = sample_stack(
        pid,
        tid,
        &["--timeout", SPINNING_TIMEOUT, "--repeat", &repeat],
    );
    assert!(
        code == Some(0) && report["outcome"] == "sampled",
        "tid {tid} spins and should be sampled (exit {code:?}):\n{report:#}"
    );
    assert_eq!(report["stacks"]["source"], "on_cpu_sample", "{report:#}");
    report
}

fn user_frames(report: &Value) -> &[Value] {
    report["stacks"]["user_stack"]
        .as_array()
        .map_or(&[], Vec::as_slice)
}

fn symbol(frame: &Value) -> &str {
    frame["symbol"].as_str().unwrap_or("")
}

/// The user stack one frame a line, for messages and the test log.
fn describe(report: &Value) -> String {
    let mut text = String::new();
    for (i, f) in user_frames(report).iter().enumerate() {
        let place = match (f["file"].as_str(), f["line"].as_u64()) {
            (Some(file), Some(line)) => format!(" at {file}:{line}"),
            _ => String::new(),
        };
        text.push_str(&format!(
            "  #{i:<2} {} {}{place} [{}] in {}\n",
            f["address"].as_str().unwrap_or("?"),
            f["symbol"].as_str().unwrap_or("??"),
            f["tag"].as_str().unwrap_or("?"),
            f["module"].as_str().unwrap_or("?"),
        ));
    }
    let stacks = &report["stacks"];
    text.push_str(&format!(
        "  running here: {}\n  user_stack_unwind: {}\n  user_stack_error: {}\n  \
         user_registers: {}\n  kernel frames: {}\n  open_us: {}\n  enabled_us: {}\n",
        stacks["blocked_here"],
        stacks["user_stack_unwind"],
        stacks["user_stack_error"],
        stacks["user_registers"],
        stacks["kernel_stack"].as_array().map_or(0, Vec::len),
        report["open_us"],
        report["enabled_us"],
    ));
    text
}

/// The index of the first frame at or after `from` named `name`, or a panic that shows the
/// stack.
fn find_frame(report: &Value, from: usize, name: &str) -> usize {
    user_frames(report)
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, f)| symbol(f) == name || symbol(f).starts_with(&format!("{name}.")))
        .map(|(i, _)| i)
        .unwrap_or_else(|| {
            panic!(
                "no frame {name} at or after #{from} of the sampled user stack:\n{}",
                describe(report)
            )
        })
}

/// The unwinder got to the outermost frame, `outermost`, without an error.
fn assert_complete(report: &Value, outermost: &str) {
    let stacks = &report["stacks"];
    let last = user_frames(report).last().map(symbol).unwrap_or("");
    assert!(
        stacks.get("user_stack_error").is_none_or(Value::is_null) && last.contains(outermost),
        "the sampled user stack should reach {outermost} without an error (last frame \
         {last:?}):\n{}",
        describe(report)
    );
}

/// DWARF CFI found more frames than a frame-pointer walk would: the program has none.
fn assert_cfi_needed(report: &Value) {
    let unwind = &report["stacks"]["user_stack_unwind"];
    let (dwarf, fp) = (
        unwind["frames"].as_u64().unwrap_or(0),
        unwind["frame_pointer_frames"].as_u64().unwrap_or(0),
    );
    assert!(
        dwarf > fp,
        "DWARF found {dwarf} frames, frame pointers {fp}: the test program should need CFI:\n{}",
        describe(report)
    );
}

/// inner_spin, middle_spin, outer_spin in this order from the innermost frame, each at
/// its marked line of spin.c, tagged application. Returns the index of outer_spin.
fn assert_spin_chain(report: &Value) -> usize {
    let inner = find_frame(report, 0, "inner_spin");
    assert_eq!(
        inner,
        0,
        "the thread spins in inner_spin: it should be the innermost frame:\n{}",
        describe(report)
    );
    let middle = find_frame(report, inner + 1, "middle_spin");
    let outer = find_frame(report, middle + 1, "outer_spin");
    assert_eq!(
        (middle, outer),
        (inner + 1, inner + 2),
        "no frame should come between the spin functions:\n{}",
        describe(report)
    );
    for (index, marker) in [
        (inner, "@spin"),
        (middle, "@inner_call"),
        (outer, "@middle_call"),
    ] {
        assert_at_marker(report, index, marker);
    }
    let here = report["stacks"]["blocked_here"].as_str().unwrap_or("");
    assert!(
        here.starts_with("inner_spin at ")
            && here.ends_with(&format!(":{}", marker_line("spin.c", "@spin"))),
        "the first application frame should be inner_spin at its loop, is {here:?}:\n{}",
        describe(report)
    );
    outer
}

/// The frame is at the marked line of spin.c, and tagged application.
fn assert_at_marker(report: &Value, index: usize, marker: &str) {
    let frame = &user_frames(report)[index];
    let line = marker_line("spin.c", marker);
    let file = frame["file"].as_str().unwrap_or("");
    assert!(
        file.ends_with(&format!("tests/programs/{SPIN}.c")) && frame["line"] == line,
        "frame #{index} ({}) should be at {SPIN}.c:{line} ({marker}), is at {file}:{}:\n{}",
        symbol(frame),
        frame["line"],
        describe(report)
    );
    assert_eq!(
        frame["tag"],
        "application",
        "frame #{index} ({}):\n{}",
        symbol(frame),
        describe(report)
    );
}

/// Starts spin.c with `args`; returns it with the pid and the spinning thread's tid.
fn start_spin(args: &[&str]) -> (Program, u32) {
    let binary = compile(SPIN);
    let mut program = Program::start(&binary, args);
    let pid = program.expect_number("pid", LINE_TIMEOUT);
    assert_eq!(pid, u64::from(program.pid));
    let tid = u32::try_from(program.expect_number("spinner", LINE_TIMEOUT)).expect("tid fits");
    program.expect_line("spinning", LINE_TIMEOUT);
    (program, tid)
}

#[test]
#[ignore = "needs root: opens perf events on other processes"]
fn c_main_thread_spinning_unwinds_through_its_callers_to_start() {
    require_root();
    let (program, tid) = start_spin(&[]);
    assert_eq!(tid, program.pid, "spin.c spins in its main thread");
    // Several samples, for the figures; the stacks are the first one's.
    let report = sample_spinning(program.pid, tid, 20);
    eprintln!("spin (main thread), sampled on CPU:\n{}", describe(&report));
    let outer = assert_spin_chain(&report);
    let main = find_frame(&report, outer + 1, "main");
    assert_eq!(
        main,
        outer + 1,
        "main calls outer_spin:\n{}",
        describe(&report)
    );
    assert_at_marker(&report, main, "@outer_call");
    assert_complete(&report, "_start");
    assert_cfi_needed(&report);
    assert_eq!(
        report["sample_tid"], tid,
        "the sample is of the thread asked for"
    );
    let copied = report["sample_stack_bytes"].as_u64().unwrap_or(0);
    assert!(
        copied > 0 && copied <= 32 * 1024,
        "the sample should carry at most 32 KiB of stack, has {copied}:\n{report:#}"
    );
    eprintln!(
        "figures: sample_stack_bytes {copied}, open_us {}, enabled_us {}",
        report["open_us"], report["enabled_us"]
    );
}

#[test]
#[ignore = "needs root: opens perf events on other processes"]
fn c_worker_thread_is_sampled_by_tid_and_the_sleeping_main_thread_gives_no_sample() {
    require_root();
    let (program, tid) = start_spin(&["thread"]);
    assert_ne!(tid, program.pid, "spin.c thread spins in a second thread");
    let report = sample_spinning(program.pid, tid, 1);
    eprintln!(
        "spin (worker thread), sampled on CPU:\n{}",
        describe(&report)
    );
    let outer = assert_spin_chain(&report);
    find_frame(&report, outer + 1, "spinner");
    // A thread's outermost frame is glibc's clone3 (clone on older glibc).
    assert_complete(&report, "clone");
    assert_cfi_needed(&report);

    // The main thread sleeps in nanosleep: off CPU for the whole timeout, no sample.
    assert!(
        wait_until(LINE_TIMEOUT, || task_state(program.pid) == Some('S')),
        "the main thread of spin.c should be asleep, is {:?}",
        task_state(program.pid)
    );
    let (code, report) = sample_stack(program.pid, program.pid, &["--timeout", "200ms"]);
    assert!(
        code != Some(0) && report["outcome"] == "no_sample",
        "a sleeping thread should give no_sample within the timeout (exit {code:?}):\n{report:#}"
    );
}

#[test]
#[ignore = "needs root: opens perf events on other processes"]
fn a_thread_that_is_gone_is_said_so() {
    require_root();
    let mut child = Command::new("true").spawn().expect("starting true");
    let pid = child.id();
    child.wait().expect("waiting for true");
    let (code, report) = sample_stack(pid, pid, &["--timeout", "200ms"]);
    assert!(
        code != Some(0) && report["outcome"] == "thread_gone",
        "pid {pid} has exited (exit {code:?}):\n{report:#}"
    );
}

#[test]
#[ignore = "needs root: opens perf events on other processes"]
fn python_spinning_in_a_function_unwinds_into_the_interpreter() {
    require_root();
    let mut command = Command::new(PYTHON);
    command.args([
        "-c",
        "def spin():\n    while True:\n        pass\n\nprint('ready', flush=True)\nspin()\n",
    ]);
    let mut program = Program::spawn(command);
    program.expect_line("ready", LINE_TIMEOUT);
    let report = sample_spinning(program.pid, program.pid, 1);
    eprintln!("python3 spinning, sampled on CPU:\n{}", describe(&report));
    let frames = user_frames(&report);
    let eval = find_frame(&report, 0, "_PyEval_EvalFrameDefault");
    assert_eq!(
        frames[eval]["tag"],
        "runtime",
        "the interpreter is runtime code:\n{}",
        describe(&report)
    );
    // The loop runs inside the eval loop's own frame (3.11+ evaluates Python calls
    // without a new C frame), under the code the interpreter started with.
    find_frame(&report, eval + 1, "Py_RunMain");
    assert_complete(&report, "_start");
    assert_cfi_needed(&report);
}

#[test]
#[ignore = "needs root: opens perf events on other processes"]
fn a_loop_running_in_the_kernel_gives_its_kernel_callchain_and_the_user_stack_below() {
    require_root();
    // Almost all of this loop's time is in the kernel, clearing 4 MiB per read.
    let mut command = Command::new(PYTHON);
    command.args([
        "-c",
        "f = open('/dev/zero', 'rb', buffering=0)\nprint('ready', flush=True)\nwhile True:\n    \
         f.read(4 << 20)\n",
    ]);
    let mut program = Program::spawn(command);
    program.expect_line("ready", LINE_TIMEOUT);
    // A sample may still land in the interpreter between two reads: take another then.
    let report = (0..10)
        .map(|_| sample_spinning(program.pid, program.pid, 1))
        .find(|r| r["in_kernel"] == true)
        .expect("10 samples of a thread reading /dev/zero all landed in user code");
    let kernel: Vec<&str> = report["stacks"]["kernel_stack"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(symbol)
        .collect();
    eprintln!(
        "python3 reading /dev/zero, sampled in the kernel:\n  kernel: {kernel:?}\n{}",
        describe(&report)
    );
    let read = kernel.iter().position(|s| s.contains("vfs_read"));
    let entry = kernel.iter().position(|s| s.contains("do_syscall_64"));
    assert!(
        matches!((read, entry), (Some(r), Some(e)) if r < e),
        "the kernel callchain should go from vfs_read out to do_syscall_64: {kernel:?}\n{report:#}"
    );
    assert!(
        report["stacks"]
            .get("kernel_stack_error")
            .is_none_or(Value::is_null),
        "{report:#}"
    );
    // The user stack starts at the registers saved at the system call: libc's read, under
    // the interpreter.
    let frames = user_frames(&report);
    assert!(
        frames
            .first()
            .is_some_and(|f| f["module"].as_str().is_some_and(|m| m.contains("libc.so"))),
        "the innermost user frame should be libc's read:\n{}",
        describe(&report)
    );
    find_frame(&report, 1, "_PyEval_EvalFrameDefault");
    assert_complete(&report, "_start");
}

/// The `on_cpu` kind end to end: spin.c selected by `--pid` runs without blocking past
/// `--on-cpu-threshold`, and its report carries the stack sampled while it runs.
#[test]
#[ignore = "needs root: loads BPF programs"]
fn a_selected_thread_running_past_its_threshold_is_on_cpu_with_its_sampled_stack() {
    require_root();
    let (program, tid) = start_spin(&["thread"]);
    let pid = program.pid.to_string();
    let mut daemon = Daemon::start(&["--pid", &pid, "--on-cpu-threshold", "1s"]);
    let hang = daemon.wait_for_event("on_cpu for the spinner", Duration::from_secs(5), |v| {
        is_event(v, "hang", "on_cpu", tid)
    });
    let v = &hang.value;
    assert_eq!(str_of(v, "/source"), "on_cpu_sample", "{v}");
    let duration = u64_of(v, "/duration_ms");
    let budget = u64::try_from(scaled(Duration::from_millis(500)).as_millis()).expect("fits");
    assert!(
        (1000..=1000 + budget).contains(&duration),
        "reported after {duration} ms: {v}"
    );
    let frames: Vec<&str> = v["user_stack"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["symbol"].as_str())
        .collect();
    let chain: Vec<&str> = frames
        .iter()
        .copied()
        .filter(|f| f.ends_with("_spin"))
        .collect();
    assert_eq!(
        chain,
        ["inner_spin", "middle_spin", "outer_spin"],
        "{frames:?}"
    );
    // The main thread sleeps: off-CPU, not on_cpu (and off_cpu only after its 5 s).
    assert!(
        daemon
            .events_for(program.pid)
            .iter()
            .all(|r| r.value["tid"] == tid),
        "{}",
        daemon.dump(Some(&[program.pid]))
    );
    daemon.stop();
}
