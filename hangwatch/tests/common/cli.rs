//! The CLI as a user runs it: `hangwatch <args>` against a daemon's endpoint.
use std::{
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use super::{HANGWATCH, Value, signal};

/// What a CLI run printed and how it exited.
#[derive(Debug)]
pub struct CliRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("CLI output is not JSON ({e}):\n{}", self.stdout))
    }
}

/// Runs `hangwatch <args>` against `endpoint` (through HANGWATCH_ENDPOINT), with a time
/// limit of 20 s (scaled).
pub fn cli(endpoint: &str, args: &[&str]) -> CliRun {
    let child = Command::new(HANGWATCH)
        .args(args)
        .env("HANGWATCH_ENDPOINT", endpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting hangwatch {args:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let limit = super::scaled(Duration::from_secs(20));
    let output = match rx.recv_timeout(limit) {
        Ok(output) => output.unwrap_or_else(|e| panic!("hangwatch {args:?}: {e}")),
        Err(_) => {
            signal(pid, libc::SIGKILL);
            panic!("hangwatch {args:?} did not finish within {limit:?}");
        }
    };
    let run = CliRun {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    eprintln!(
        "$ hangwatch {} -> {:?}\n{}{}",
        args.join(" "),
        run.code,
        run.stdout,
        run.stderr
    );
    run
}

/// Like [`cli`], and it must exit 0.
pub fn cli_ok(endpoint: &str, args: &[&str]) -> CliRun {
    let run = cli(endpoint, args);
    assert_eq!(run.code, Some(0), "hangwatch {args:?} failed: {run:?}");
    run
}
