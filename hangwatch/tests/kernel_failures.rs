//! Refusing to run without privilege: as an unprivileged user with no capabilities,
//! `hangwatch run` exits non-zero with a one-line reason naming what is missing, and
//! does not panic.

mod common;

use std::{
    os::unix::fs::PermissionsExt,
    process::{Command, Stdio},
    time::Duration,
};

use self::common::*;

#[test]
#[ignore = "needs root: drops to nobody with setpriv"]
fn run_without_privilege_exits_with_a_one_line_reason() {
    require_root();
    let Some(setpriv) = find_tool("setpriv") else {
        eprintln!("skipped: setpriv (util-linux) is not installed");
        return;
    };
    // The target directory may not be reachable by nobody: run a copy from a 0755 dir.
    let dir = tempfile::Builder::new()
        .prefix("hangwatch-nobody")
        .tempdir()
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod temp dir");
    let binary = dir.path().join("hangwatch");
    std::fs::copy(HANGWATCH, &binary).expect("copying the hangwatch binary");
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755))
        .expect("chmod binary");

    let mut child = Command::new(setpriv)
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(&binary)
        .args(["run", "--output", "json"])
        .env("RUST_BACKTRACE", "1")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting setpriv");
    let pid = child.id();
    // Kill it if it hangs instead of refusing.
    let status = match wait_bounded(&mut child, Duration::from_secs(10)) {
        Some(status) => status,
        None => {
            signal(pid, libc::SIGKILL);
            let _ = child.wait();
            panic!("hangwatch run as nobody did not exit within 10 s");
        }
    };
    let output = child.wait_with_output().expect("collecting output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("status {status}\nstderr:\n{stderr}\nstdout:\n{stdout}");

    assert!(
        status.code().is_some(),
        "hangwatch died of a signal instead of exiting: {status}"
    );
    assert!(
        !status.success(),
        "hangwatch must refuse to run unprivileged, exited {status}"
    );
    assert!(
        !stderr.contains("panicked"),
        "hangwatch panicked:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "stderr should be one line with the reason, got {}:\n{stderr}",
        lines.len()
    );
    let line = lines[0].to_lowercase();
    assert!(
        line.contains("root") || line.contains("cap_bpf"),
        "the reason should name root or CAP_BPF: {:?}",
        lines[0]
    );
    assert!(
        stdout.trim().is_empty(),
        "nothing on stdout when refusing to start: {stdout}"
    );
}
