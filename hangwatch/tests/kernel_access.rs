//! Who sees what (docs/security.md), with real users: a daemon run by root, a deadlock in a
//! root process, and requests made as `nobody` (uid and gid 65534, no supplementary
//! groups: `setpriv`), by the CLI and by raw HTTP on the socket.
//!
//! - The socket is root's (0600): nobody cannot even connect, and the CLI says what to do.
//! - With `--api-socket-group 65534`, nobody connects: every per-process route about root's
//!   process or pid 1 answers 403 (or leaves it out of a list), and nobody sees its own
//!   process (an off_cpu episode of its `sleep`, its threads with stacks) without a raw
//!   kernel address, which root sees where kallsyms shows them to root.
//! - The metrics port answers 401 to every per-process route.
mod common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use self::common::*;

const NOBODY: u32 = 65534;

/// `setpriv` as nobody, with no group but nogroup.
fn as_nobody() -> Command {
    let mut command = Command::new("setpriv");
    command.args([
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".to_owned(),
        "--".to_owned(),
    ]);
    command
}

/// The hangwatch CLI as nobody against `endpoint`: (exit code, stdout, stderr).
fn cli_as_nobody(endpoint: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = as_nobody()
        .arg(HANGWATCH)
        .args(args)
        .env("HANGWATCH_ENDPOINT", endpoint)
        .stdin(Stdio::null())
        .output()
        .expect("setpriv hangwatch");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "$ (nobody) hangwatch {} -> {:?}\n{stdout}{stderr}",
        args.join(" "),
        out.status.code()
    );
    (out.status.code(), stdout, stderr)
}

/// One GET on the socket as nobody (HTTP/1.0, the system python3's socket module: a
/// python of root's, under a pyenv, would be out of nobody's reach): (status, body).
/// `max_s` bounds how long the answer is read (the event stream never ends).
fn get_as_nobody(socket: &str, path: &str, max_s: f64) -> (u16, String) {
    let script = format!(
        "import socket,sys,time\n\
         s=socket.socket(socket.AF_UNIX)\n\
         s.connect({socket:?})\n\
         s.sendall(b'GET {path} HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n')\n\
         s.settimeout(0.2)\n\
         end=time.time()+{max_s}\n\
         data=b''\n\
         while time.time()<end:\n\
         \x20   try:\n\
         \x20       chunk=s.recv(65536)\n\
         \x20   except socket.timeout:\n\
         \x20       continue\n\
         \x20   if not chunk: break\n\
         \x20   data+=chunk\n\
         sys.stdout.write(data.decode('utf-8','replace'))\n"
    );
    let out = as_nobody()
        .args(["/usr/bin/python3", "-c", &script])
        .output()
        .expect("python3 as nobody");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "GET {path} as nobody failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("GET {path} as nobody: not HTTP: {text}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// Whether `value` holds a kernel address anywhere (an `address` of a kernel frame).
fn kernel_addresses(value: &Value) -> Vec<String> {
    value
        .to_string()
        .split('"')
        .filter(|s| s.starts_with("0xffff"))
        .map(str::to_owned)
        .collect()
}

/// Whether this machine shows kallsyms addresses to a caller with CAP_SYSLOG (root).
fn root_reads_kallsyms() -> bool {
    let kptr = std::fs::read_to_string("/proc/sys/kernel/kptr_restrict").unwrap_or_default();
    kptr.trim() != "2"
}

#[test]
#[ignore = "needs root: loads BPF programs, switches users"]
fn a_socket_without_a_group_is_roots_alone() {
    require_root();
    assert!(have_tool("setpriv"), "setpriv (util-linux) is needed");
    let mut abba = Abba::start();
    let daemon = Daemon::start(&["--redact-kernel-addresses", "--redact-cmdline"]);
    let endpoint = daemon.endpoint();
    let (code, _, stderr) = cli_as_nobody(&endpoint, &["list"]);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("permission denied on") && stderr.contains("run as root"),
        "the CLI does not say what to do: {stderr}"
    );
    // Root's CLI works unchanged.
    let status = cli_ok(&endpoint, &["status", "--json"]).json();
    assert_eq!(status["ready"], true, "{status}");

    // The redaction flags: stdout has neither kernel addresses nor arguments; the API
    // keeps the addresses for root (who may read kallsyms here) but not the arguments.
    abba.deadlock();
    let pid = abba.pid();
    let hang = daemon.wait_for_event("the deadlock", Duration::from_secs(5), |v| {
        str_of(v, "/event") == "hang" && u64_of(v, "/pid") == u64::from(pid)
    });
    let v = &hang.value;
    assert!(kernel_addresses(v).is_empty(), "stdout: {v}");
    assert!(
        v["kernel_stack"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["symbol"].is_string())),
        "the symbols stay: {v}"
    );
    assert_eq!(v["cmdline"][1], "<redacted>", "{v}");
    let id = str_of(v, "/id").to_owned();
    let shown = cli_ok(&endpoint, &["show", &id, "--json"]).json();
    assert_eq!(shown["cmdline"][1], "<redacted>", "{shown}");
    assert_eq!(
        !kernel_addresses(&shown).is_empty(),
        root_reads_kallsyms(),
        "the API strips per caller, not per flag: {shown}"
    );
}

#[test]
#[ignore = "needs root: loads BPF programs, switches users"]
fn nobody_sees_its_own_processes_and_nothing_of_roots() {
    require_root();
    assert!(have_tool("setpriv"), "setpriv (util-linux) is needed");
    // nobody's own process, watched for off_cpu.
    let mut sleeper = Reaped(Some(
        as_nobody()
            .args(["sleep", "1000"])
            .spawn()
            .expect("sleep as nobody"),
    ));
    let sleeper_pid = sleeper.pid();
    let pid_arg = sleeper_pid.to_string();
    let mut abba = Abba::start();
    let daemon = Daemon::start(&[
        "--api-socket-group",
        "65534",
        "--pid",
        &pid_arg,
        "--threshold",
        "500ms",
    ]);
    let endpoint = daemon.endpoint();
    let socket = endpoint.trim_start_matches("unix:").to_owned();
    abba.deadlock();
    let root_pid = abba.pid();
    let root_hang = daemon.wait_for_event("root's deadlock", Duration::from_secs(5), |v| {
        str_of(v, "/event") == "hang"
            && str_of(v, "/kind") == "deadlock"
            && u64_of(v, "/pid") == u64::from(root_pid)
    });
    let root_id = str_of(&root_hang.value, "/id").to_owned();
    let own_hang = daemon.wait_for_event("nobody's off_cpu", Duration::from_secs(5), |v| {
        str_of(v, "/event") == "hang" && u64_of(v, "/pid") == u64::from(sleeper_pid)
    });
    let own_id = str_of(&own_hang.value, "/id").to_owned();

    // Every per-process route about root's process or pid 1: 403, or left out.
    for path in [
        "/api/v1/threads/1".to_owned(),
        "/api/v1/threads/1?stacks=true".to_owned(),
        format!("/api/v1/threads/{root_pid}?stacks=true"),
        format!("/api/v1/hangs/{root_id}"),
    ] {
        let (status, body) = get_as_nobody(&socket, &path, 10.0);
        assert_eq!(status, 403, "GET {path} as nobody: {body}");
        let json: Value = serde_json::from_str(&body).expect("a JSON error");
        assert_eq!(
            json.as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>()),
            Some(vec!["error".to_owned()]),
            "GET {path}: nothing but the error: {body}"
        );
    }
    for path in [
        "/api/v1/hangs".to_owned(),
        "/api/v1/hangs?pid=1".to_owned(),
        format!("/api/v1/hangs?pid={root_pid}"),
        "/api/v1/history".to_owned(),
    ] {
        let (status, body) = get_as_nobody(&socket, &path, 10.0);
        assert_eq!(status, 200, "GET {path}: {body}");
        assert!(
            !body.contains(&root_id),
            "GET {path} leaks root's episode: {body}"
        );
        assert!(
            !body.contains(&format!("\"pid\":{root_pid}")),
            "GET {path} leaks root's process: {body}"
        );
    }
    let (status, body) = get_as_nobody(&socket, "/api/v1/hangs", 10.0);
    assert_eq!(status, 200);
    assert!(
        body.contains(&own_id),
        "nobody does not see its own episode: {body}"
    );
    assert!(
        kernel_addresses(&serde_json::from_str(&body).expect("JSON")).is_empty(),
        "a kernel address for nobody: {body}"
    );

    // The event stream: a new root hang does not reach nobody's watch; its own do.
    let watcher = as_nobody()
        .arg(HANGWATCH)
        .args(["watch", "--json"])
        .env("HANGWATCH_ENDPOINT", &endpoint)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("watch as nobody");
    let watcher_pid = watcher.id();
    std::thread::sleep(Duration::from_millis(500));
    let mut second = Abba::start();
    second.deadlock();
    let second_pid = second.pid();
    daemon.wait_for_event("root's second deadlock", Duration::from_secs(5), |v| {
        str_of(v, "/event") == "hang" && u64_of(v, "/pid") == u64::from(second_pid)
    });
    // nobody's own process ends: its `resolved` must reach the watch.
    sleeper.stop();
    daemon.wait_for_event("nobody's episode resolved", Duration::from_secs(5), |v| {
        str_of(v, "/event") == "resolved" && str_of(v, "/id") == own_id
    });
    std::thread::sleep(Duration::from_millis(500));
    signal(watcher_pid, libc::SIGTERM);
    let watched = watcher.wait_with_output().expect("watch output");
    let watched = String::from_utf8_lossy(&watched.stdout);
    assert!(
        !watched.contains(&format!("\"pid\":{second_pid}")),
        "root's event reached nobody's watch:\n{watched}"
    );
    assert!(
        watched.contains(&own_id),
        "nobody's own event did not reach its watch:\n{watched}"
    );

    // The CLI as nobody says why it is refused.
    let (code, _, stderr) = cli_as_nobody(&endpoint, &["show", &root_id]);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("403") && stderr.contains("uid 65534"),
        "{stderr}"
    );
    let (code, _, stderr) = cli_as_nobody(&endpoint, &["threads", "1"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("403"), "{stderr}");

    // nobody's own threads, with stacks: there, without a raw kernel address.
    let mut own = Reaped(Some(
        as_nobody()
            .args(["sleep", "1000"])
            .spawn()
            .expect("another sleep as nobody"),
    ));
    let own_pid = own.pid();
    wait_until(Duration::from_secs(5), || task_state(own_pid) == Some('S'));
    let (code, stdout, _) = cli_as_nobody(
        &endpoint,
        &["threads", &own_pid.to_string(), "--stacks", "--json"],
    );
    assert_eq!(code, Some(0), "nobody cannot read its own process");
    let dump: Value = serde_json::from_str(&stdout).expect("JSON");
    let frames = dump["threads"][0]["kernel_stack"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        frames.iter().any(|f| f["symbol"].as_str().is_some()),
        "no symbolized kernel frame for nobody: {dump}"
    );
    assert!(
        frames.iter().all(|f| f.get("address").is_none()),
        "nobody got kernel addresses: {dump}"
    );
    // Root, with CAP_SYSLOG, reads them where kallsyms shows them to root.
    let root_dump = cli_ok(
        &endpoint,
        &["threads", &own_pid.to_string(), "--stacks", "--json"],
    )
    .json();
    assert_eq!(
        !kernel_addresses(&root_dump).is_empty(),
        root_reads_kallsyms(),
        "root's view of kernel addresses: {root_dump}"
    );
    own.stop();

    // Root's CLI works unchanged on the same socket.
    let listed = cli_ok(&endpoint, &["list", "--json"]).json();
    assert!(listed.to_string().contains(&root_id), "{listed}");
    cli_ok(&endpoint, &["show", &root_id]);
    cli_ok(&endpoint, &["threads", &root_pid.to_string()]);
    cli_ok(&endpoint, &["status"]);
    cli_ok(&endpoint, &["history", "--json"]);

    // The metrics port: no per-process route at all.
    let metrics = daemon.metrics_endpoint();
    for path in [
        "/api/v1/hangs".to_owned(),
        format!("/api/v1/hangs/{root_id}"),
        "/api/v1/history".to_owned(),
        "/api/v1/threads/1?stacks=true".to_owned(),
        "/api/v1/status".to_owned(),
        "/api/v1/watch".to_owned(),
    ] {
        let answer = http("GET", &format!("{metrics}{path}"));
        assert_eq!(
            answer.status, 401,
            "GET {path} on the metrics port: {}",
            answer.text
        );
    }
    assert_eq!(get_ok(&format!("{metrics}/healthz")).status, 200);
}

/// A child killed and reaped when stopped or dropped (never signalled after its reaping,
/// when its pid may be another process's).
struct Reaped(Option<std::process::Child>);

impl Reaped {
    fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, std::process::Child::id)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        self.stop();
    }
}
