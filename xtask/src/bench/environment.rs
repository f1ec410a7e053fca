//! What the figures depend on: the machine, the kernel, the commit, the tools.
use std::{fs, process::Command};

use super::variants::Tools;

/// What the figures depend on.
pub fn environment(tools: &Tools, quick: bool) -> Vec<(String, String)> {
    let read = |path: &str| {
        fs::read_to_string(path)
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let command = |cmd: &mut Command| {
        cmd.output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let cpu_model = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_default();
    let root = crate::workspace_root();
    let commit = command(
        Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(&root),
    );
    let dirty = !command(
        Command::new("git")
            .args(["status", "--porcelain", "--", "hangwatch", "hangwatch-ebpf"])
            .current_dir(&root),
    )
    .is_empty();
    vec![
        (
            "date".into(),
            command(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])),
        ),
        (
            "hangwatch".into(),
            format!(
                "{commit}{}",
                if dirty { " (with local changes)" } else { "" }
            ),
        ),
        (
            "daemon binary".into(),
            format!(
                "{} (built {})",
                tools.daemon.display(),
                command(
                    Command::new("date")
                        .arg("-u")
                        .arg("+%Y-%m-%dT%H:%M:%SZ")
                        .arg("-r")
                        .arg(&tools.daemon)
                )
            ),
        ),
        ("kernel".into(), read("/proc/sys/kernel/osrelease")),
        (
            "cpus".into(),
            format!(
                "{} x {cpu_model}",
                std::thread::available_parallelism().map_or(0, |n| n.get())
            ),
        ),
        (
            "load average at start".into(),
            read("/proc/loadavg")
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        (
            "perf".into(),
            command(Command::new("perf").arg("--version")),
        ),
        (
            "bpftrace".into(),
            tools
                .bpftrace
                .as_ref()
                .map_or("not installed".into(), |b| b.version.clone()),
        ),
        ("mode".into(), if quick { "quick" } else { "full" }.into()),
    ]
}
