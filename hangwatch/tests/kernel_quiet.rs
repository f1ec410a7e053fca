//! Every control of the suite at once, with the defaults (no `--pid`, no rules, no
//! shortened threshold), watched for minutes rather than the seconds of each rule's own
//! test (issue 14): the healthy idioms that look stuck (`IdleControls`: `sem_wait` for a
//! signal handler, a pthread pool, `queue.get()` fed from stdin or a signal, a
//! `ThreadPoolExecutor`, 2,000 idle threads, an idle Go program and JVM), an idle server of
//! each runtime (asyncio, gevent, Node, tokio, Redis) answering a request now and then, and
//! an asyncio server kept busy by a client all along. None may have an event; after the
//! window a deadlock beside them must still be reported (the daemon was watching).
mod common;

use std::{
    thread,
    time::{Duration, Instant},
};

use self::common::*;

/// How long the controls are watched: `HANGWATCH_TEST_QUIET_SECS`, 120 s unless set.
fn quiet_window() -> Duration {
    let secs = std::env::var("HANGWATCH_TEST_QUIET_SECS")
        .ok()
        .map(|s| {
            s.parse()
                .expect("HANGWATCH_TEST_QUIET_SECS: a number of seconds")
        })
        .unwrap_or(120);
    Duration::from_secs(secs)
}

/// How often each idle server is asked something during the window.
const REQUEST_EVERY: Duration = Duration::from_secs(10);

#[test]
#[ignore = "needs root: loads BPF programs"]
fn every_control_stays_quiet_for_minutes_with_the_defaults() {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut controls = IdleControls::start();
    let venv_python = gevent_python();
    let servers = [
        Server::start(python("loop_server.py", &["idle"], PYTHON)),
        Server::start(python("gevent_server.py", &["idle"], &venv_python)),
        Server::start(node_server("idle")),
        Server::start(Program::start(&example("tokio_server"), &["idle"])),
    ];
    let redis = Redis::start(dir.path(), "idle");
    let busy = Server::start(python("loop_server.py", &["idle"], PYTHON));
    let port = busy.port.to_string();
    let mut client = python("loop_client.py", &[&port, "4"], PYTHON);
    client.expect_line("running", SERVER_LINE_TIMEOUT);

    let mut daemon = Daemon::start(&[]);
    let attached = Instant::now();
    let window = quiet_window();
    let mut requests = 0;
    while attached.elapsed() < window {
        for server in &servers {
            server.ping();
        }
        assert_eq!(redis.command(&["PING"]).as_deref(), Some("+PONG\r\n"));
        requests += 1;
        thread::sleep(REQUEST_EVERY.min(window.saturating_sub(attached.elapsed())));
    }
    let watched = attached.elapsed();
    // Still watching: a deadlock beside the controls is reported.
    let (_, latency) =
        daemon.deadlock_beside("deadlock after the quiet window", Duration::from_secs(5));
    eprintln!(
        "controls watched for {watched:?} with the defaults, {requests} rounds of requests; \
         a deadlock beside them reported {latency:?} after it formed"
    );
    let mut quiet: Vec<(&str, u32)> = controls.list();
    let names = [
        "idle asyncio server",
        "idle gevent server",
        "idle Node server",
        "idle tokio server",
    ];
    quiet.extend(names.iter().zip(&servers).map(|(n, s)| (*n, s.pid())));
    quiet.push(("idle Redis", redis.pid()));
    quiet.push(("busy asyncio server", busy.pid()));
    quiet.push(("its client", client.pid));
    for (what, pid) in quiet {
        let events = daemon.events_for(pid);
        assert!(
            events.is_empty(),
            "{what} (pid {pid}) is healthy, yet got {} event(s) in {watched:?}:\n{}",
            events.len(),
            daemon.dump(Some(&[pid]))
        );
    }
    controls.prove_idle_not_stuck();
    daemon.stop();
}
