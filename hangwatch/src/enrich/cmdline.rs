//! Command lines for reports. Reading `/proc/PID/cmdline` takes the process's mm lock
//! (killably), which a hung process may hold forever: it is read on the reader worker
//! under `READ_DEADLINE`, at most `MAX_CMDLINE_BYTES` of it, and cached per process.
use std::{
    collections::HashMap,
    fs::File,
    io::Read as _,
    time::{Duration, Instant},
};

use super::{MAX_CMDLINE_BYTES, READ_DEADLINE, stacks::StackReader};

/// A command line stays cached this long (an exec changes it).
const KEEP: Duration = Duration::from_secs(30);
/// At most this many processes' command lines are cached; beyond it the oldest half goes.
const CAPACITY: usize = 4096;

/// A command line as a report carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmdline {
    pub args: Vec<String>,
    pub truncated: bool,
    /// Why it is missing.
    pub error: Option<String>,
}

#[derive(Debug, Default)]
pub struct CmdlineCache {
    by_pid: HashMap<u32, (Instant, Cmdline)>,
}

impl CmdlineCache {
    /// The command line of process `pid` (`comm` is the name the process has now: a
    /// cached line read under another name is stale).
    pub fn get(&mut self, pid: u32, reader: &mut StackReader) -> Cmdline {
        let now = Instant::now();
        if let Some((at, line)) = self.by_pid.get(&pid)
            && now.saturating_duration_since(*at) < KEEP
        {
            return line.clone();
        }
        let line =
            match reader.read_memory(pid, crate::clock::stretched(READ_DEADLINE), move || {
                read(pid)
            }) {
                Ok(Ok(line)) => line,
                // Gone, or not ours to read: no command line, and no reason worth a field.
                Ok(Err(_)) => Cmdline::default(),
                Err(err) => Cmdline {
                    error: Some(err.to_string()),
                    ..Cmdline::default()
                },
            };
        if self.by_pid.len() >= CAPACITY {
            let mut ages: Vec<Instant> = self.by_pid.values().map(|(at, _)| *at).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            self.by_pid.retain(|_, (at, _)| *at > cut);
        }
        // A read that failed for lack of time is tried again at the next report.
        if line.error.is_none() {
            self.by_pid.insert(pid, (now, line.clone()));
        }
        line
    }
}

/// At most `MAX_CMDLINE_BYTES` of `/proc/PID/cmdline`, split at its NULs.
fn read(pid: u32) -> std::io::Result<Cmdline> {
    let mut raw = Vec::with_capacity(256);
    File::open(format!("/proc/{pid}/cmdline"))?
        .take(MAX_CMDLINE_BYTES as u64 + 1)
        .read_to_end(&mut raw)?;
    Ok(split_args(raw))
}

fn split_args(mut raw: Vec<u8>) -> Cmdline {
    let truncated = raw.len() > MAX_CMDLINE_BYTES;
    raw.truncate(MAX_CMDLINE_BYTES);
    Cmdline {
        args: raw
            .split(|&b| b == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect(),
        truncated,
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_cuts() {
        let line = split_args(b"python3\0-m\0server\0".to_vec());
        assert_eq!(line.args, ["python3", "-m", "server"]);
        assert!(!line.truncated);
        let long = split_args(vec![b'a'; MAX_CMDLINE_BYTES + 1]);
        assert!(long.truncated);
        assert_eq!(long.args[0].len(), MAX_CMDLINE_BYTES);
    }

    #[test]
    fn reads_ours() {
        let line = read(std::process::id()).expect("our own");
        assert!(!line.args.is_empty());
    }
}
