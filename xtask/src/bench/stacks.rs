//! The cost of one user stack (`hangwatch bench-stack`) of real blocked python3 processes,
//! cold and warm, with and without Python frames.
use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};

use super::{proc, report::StackCost, variants::Tools};

/// The cost of one user stack of real blocked processes, both Debian's python3 (no frame
/// pointers, a deep interpreter stack): the main thread on a lock, and a worker thread
/// blocked two Python functions deep, whose Python frames are read from the interpreter
/// and merged in. Failures become notes, not errors.
pub fn stack_costs(tools: &Tools, notes: &mut Vec<String>) -> Vec<StackCost> {
    let python = Path::new("/usr/bin/python3");
    if !python.is_file() {
        notes.push("/usr/bin/python3 is missing: no user stack cost".into());
        return Vec::new();
    }
    let on_lock = "import threading; l = threading.Lock(); l.acquire(); print('ready', flush=True); l.acquire()";
    let two_deep = "import threading\n\
        lock = threading.Lock(); lock.acquire()\n\
        def inner(): lock.acquire()\n\
        def outer(): inner()\n\
        t = threading.Thread(target=outer); t.start()\n\
        print(f'tid {t.native_id}', flush=True); print('ready', flush=True); t.join()\n";
    let measure = |target: &str, script: &str| -> Result<StackCost> {
        let mut cmd = Command::new(python);
        cmd.args(["-c", script]);
        let mut process = proc::Proc::spawn("python3", &mut cmd, false)?;
        process.wait_for_line("ready", Duration::from_secs(10))?;
        // The thread to unwind: the one the script names, else the main thread.
        let tid = process
            .wait_for_line("tid ", Duration::ZERO)
            .ok()
            .and_then(|l| l.strip_prefix("tid ").map(str::to_owned))
            .unwrap_or_else(|| process.pid().to_string());
        proc::sleep(Duration::from_millis(200))?;
        let out = Command::new(&tools.daemon)
            .args([
                "bench-stack",
                "--pid",
                &process.pid().to_string(),
                "--tid",
                &tid,
            ])
            .output()
            .context("cannot run hangwatch bench-stack")?;
        if !out.status.success() {
            bail!(
                "bench-stack failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("bench-stack printed no JSON")?;
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        Ok(StackCost {
            target: target.into(),
            frames: v["frames"].as_u64().unwrap_or(0),
            cold_us: f("cold_us"),
            warm_median_us: f("warm_us_median"),
            warm_p99_us: f("warm_us_p99"),
            python_frames: v["python_frames"].as_u64().unwrap_or(0),
            python_cold_us: f("python_cold_us"),
            python_warm_median_us: f("python_warm_us_median"),
        })
    };
    let mut costs = Vec::new();
    for (target, script) in [
        ("python3 blocked on a lock", on_lock),
        ("python3 thread two Python functions deep", two_deep),
    ] {
        match measure(target, script) {
            Ok(cost) => costs.push(cost),
            Err(err) => notes.push(format!("user stack cost of {target} not measured: {err:#}")),
        }
    }
    costs
}
