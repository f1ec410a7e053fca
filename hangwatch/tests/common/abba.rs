//! The ABBA deadlock program (`tests/programs/abba.c`), shared by several tests.
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use super::{Program, compile, parse_address};

/// A running abba.c, before or after it deadlocks.
pub struct Abba {
    pub program: Program,
    /// The binary, canonical (what /proc/PID/exe shows).
    pub path: PathBuf,
    /// The argument vector it was started with.
    pub cmdline: Vec<String>,
}

/// What abba.c printed once both workers are about to deadlock.
#[derive(Clone, Copy, Debug)]
pub struct Deadlock {
    pub mutex_a: u64,
    pub mutex_b: u64,
    pub tid_a: u32,
    pub tid_b: u32,
    /// When the workers were about to take their second lock.
    pub at: Instant,
}

impl Abba {
    /// Starts abba.c; it prints its pid and waits for [`Abba::deadlock`].
    pub fn start() -> Self {
        let path = compile("abba");
        let path = path
            .canonicalize()
            .unwrap_or_else(|e| panic!("canonicalizing {}: {e}", path.display()));
        let arg = "hold-forever";
        let mut program = Program::start(&path, &[arg]);
        let pid = program.expect_number("pid", Duration::from_secs(5));
        assert_eq!(
            pid,
            u64::from(program.pid),
            "abba printed another pid than the one spawned"
        );
        let cmdline = vec![path.to_string_lossy().into_owned(), arg.to_owned()];
        Self {
            program,
            path,
            cmdline,
        }
    }

    pub fn pid(&self) -> u32 {
        self.program.pid
    }

    /// Lets the workers deadlock and returns their tids and the mutex addresses.
    pub fn deadlock(&mut self) -> Deadlock {
        let t = Duration::from_secs(5);
        self.program.send("go");
        let p = &mut self.program;
        let mutex = |p: &mut Program, key: &str| {
            let text = p.expect_field(key, t);
            parse_address(&text)
                .unwrap_or_else(|| panic!("abba printed a bad address: {key} {text}"))
        };
        let mutex_a = mutex(p, "mutex_a");
        let mutex_b = mutex(p, "mutex_b");
        let tid = |p: &mut Program, key: &str| {
            u32::try_from(p.expect_number(key, t)).expect("tid fits u32")
        };
        let tid_a = tid(p, "tid_a");
        let tid_b = tid(p, "tid_b");
        p.expect_line("ready", t);
        Deadlock {
            mutex_a,
            mutex_b,
            tid_a,
            tid_b,
            at: Instant::now(),
        }
    }
}
