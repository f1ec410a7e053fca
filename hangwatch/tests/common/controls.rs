//! The healthy idioms that look stuck, started together: the controls that must stay quiet
//! under the deadlock, lock and loop rules (`kernel_ownerless`, at shortened thresholds,
//! and `kernel_quiet`, with the defaults for minutes). Each is a real program doing what
//! a real one does at rest; [`IdleControls::prove_idle_not_stuck`] wakes the ones that can
//! be woken from outside, which is why the rules must leave them alone.
use std::{path::Path, process::Command, time::Duration};

use super::{PYTHON, Program, compile, find_tool, gcc, go_build, signal, start_python, tids};

pub struct IdleControls {
    /// A daemon's main in `sem_wait` for its SIGTERM handler's `sem_post`, its workers on
    /// a condvar.
    pub sem: Program,
    /// A pthread pool waiting for work.
    pub pool: Program,
    /// Python's `queue.get()` fed from stdin.
    pub queue_stdin: Program,
    /// Python's `queue.get()` fed by a SIGUSR1 handler.
    pub queue_signal: Program,
    /// A `ThreadPoolExecutor` at rest.
    pub executor: Program,
    /// 2,000 idle threads.
    pub crowd: Program,
    /// An idle Go program (Debian's golang).
    pub go: Program,
    /// An idle JVM (Debian's OpenJDK).
    pub jvm: Program,
}

impl IdleControls {
    pub fn start() -> Self {
        let t = Duration::from_secs(20);
        let started = |mut program: Program| -> Program {
            program.expect_number("pid", t);
            program.expect_line("ready", t);
            program
        };
        let idle_queue = |feed: &str| {
            let mut c = Command::new(PYTHON);
            c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/idle_queue.py"))
                .arg(feed);
            started(Program::spawn(c))
        };
        let crowd_binary = Path::new(env!("CARGO_TARGET_TMPDIR")).join("programs/idle_threads");
        gcc(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../xtask/src/bench/idle_threads.c"),
            &crowd_binary,
            &[],
        );
        let mut crowd = Program::start(&crowd_binary, &["2000"]);
        crowd.expect_line("ready", t);
        assert_eq!(
            tids(crowd.pid).len(),
            2001,
            "the crowd has main + 2,000 threads"
        );
        let java = find_tool("java").unwrap_or_else(|| {
            panic!("no `java`: `cargo xtask setup` installs default-jre-headless")
        });
        let jvm = started(Program::spawn({
            let mut c = Command::new(java);
            c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/IdleJvm.java"));
            c
        }));
        Self {
            sem: started(Program::start(&compile("sem_signal"), &[])),
            pool: started(Program::start(&compile("idle_pool"), &["8"])),
            queue_stdin: idle_queue("stdin"),
            queue_signal: idle_queue("signal"),
            executor: started(start_python("idle_executor.py")),
            crowd,
            go: started(Program::start(&go_build("idle_go"), &[])),
            jvm,
        }
    }

    /// What each is, and its pid.
    pub fn list(&self) -> Vec<(&'static str, u32)> {
        vec![
            ("sem_wait woken by its SIGTERM handler", self.sem.pid),
            ("pthread pool waiting for work", self.pool.pid),
            ("Python queue.get() fed from stdin", self.queue_stdin.pid),
            (
                "Python queue.get() fed by a SIGUSR1 handler",
                self.queue_signal.pid,
            ),
            ("ThreadPoolExecutor at rest", self.executor.pid),
            ("2,000 idle threads", self.crowd.pid),
            ("idle Go program", self.go.pid),
            ("idle JVM", self.jvm.pid),
        ]
    }

    /// The idioms are real: what a rule could not see coming wakes them (a handled signal,
    /// a line on stdin).
    pub fn prove_idle_not_stuck(&mut self) {
        let t = Duration::from_secs(20);
        signal(self.sem.pid, libc::SIGTERM);
        self.sem.expect_line("woken", t);
        self.queue_stdin.send("work");
        self.queue_stdin.expect_line("got work", t);
        signal(self.queue_signal.pid, libc::SIGUSR1);
        self.queue_signal.expect_line("got signal", t);
    }
}
