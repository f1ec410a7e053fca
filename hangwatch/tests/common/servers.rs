//! The event-loop servers the loop tests and the quiet controls run: `tests/programs/`
//! asyncio (`loop_server.py`), gevent (`gevent_server.py`) and Node (`node_server.js`)
//! servers and the `tokio_server` example behind [`Server`] (one JSON line with its pid,
//! loop tid and port, then "ready"; a request "stall" does what its mode says), and
//! Debian's Redis behind [`Redis`].
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{Program, have_tool, wait_until};

pub const SERVER_LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longer than the daemon's walk interval with the default thresholds (half of the 1 s
/// deadlock hold), so that a walk has seen a new server idle in its wait.
pub const WALK_PAUSE: Duration = Duration::from_millis(1200);
/// A loop server under test: its pid, the tid of its loop thread (when it says), its port.
pub struct Server {
    pub program: Program,
    pub tid: Option<u32>,
    pub port: u16,
}

impl Server {
    pub fn start(mut program: Program) -> Self {
        let line = program.next_line(SERVER_LINE_TIMEOUT);
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{}: not JSON: {line:?}: {e}", program.name));
        program.expect_line("ready", SERVER_LINE_TIMEOUT);
        Self {
            tid: v["tid"].as_u64().map(|t| u32::try_from(t).expect("tid")),
            port: u16::try_from(v["port"].as_u64().expect("port")).expect("port"),
            program,
        }
    }

    pub fn pid(&self) -> u32 {
        self.program.pid
    }

    /// Some requests, each answered, so that the loop has come back to its wait a few
    /// times (that is how it is recognized as a loop: a walk sees it idle in its wait, then
    /// the scheduler probe counts its waits; hence the pause before, longer than a walk
    /// interval).
    pub fn warm_up(&self, requests: usize) {
        thread::sleep(WALK_PAUSE);
        for _ in 0..requests {
            self.ping();
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// One request, answered: the loop leaves its wait and comes back.
    pub fn ping(&self) {
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        conn.write_all(b"ping\n").expect("write");
        let mut answer = String::new();
        BufReader::new(&conn).read_line(&mut answer).expect("read");
        assert_eq!(answer, "ok\n", "{} (pid {})", self.program.name, self.pid());
    }

    /// Sends the request whose handler stalls the loop; the connection stays open.
    pub fn stall(&self) -> (TcpStream, Instant) {
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        conn.write_all(b"stall\n").expect("write");
        (conn, Instant::now())
    }
}

pub fn python(script: &str, args: &[&str], interpreter: &str) -> Program {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/programs")
        .join(script);
    let mut c = Command::new(interpreter);
    c.arg(path).args(args);
    Program::spawn(c)
}

/// `tests/programs/node_server.js` under Node (`cargo xtask setup` installs Debian's nodejs).
pub fn node_server(mode: &str) -> Program {
    assert!(
        have_tool("node"),
        "node is missing (Debian's nodejs; xtask setup installs it)"
    );
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/node_server.js");
    let mut c = Command::new("node");
    c.arg(path).arg(mode);
    Program::spawn(c)
}

/// Debian's `redis-server` (`cargo xtask setup` installs it) on a unix socket in `dir`, no
/// TCP, no persistence, with the DEBUG command on: `DEBUG SLEEP` blocks its event loop in
/// `nanosleep` from a command handler, as a slow command or a blocking module call would.
pub struct Redis {
    pub program: Program,
    pub socket: PathBuf,
}

impl Redis {
    pub fn start(dir: &Path, name: &str) -> Self {
        assert!(
            have_tool("redis-server"),
            "redis-server is missing (Debian's redis-server; xtask setup installs it)"
        );
        let socket = dir.join(format!("{name}.sock"));
        let mut c = Command::new("redis-server");
        c.args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--enable-debug-command",
                "yes",
                "--loglevel",
                "warning",
                "--lua-time-limit",
                "600000",
                "--dir",
            ])
            .arg(dir);
        let program = Program::spawn(c);
        let redis = Self { program, socket };
        assert!(
            wait_until(SERVER_LINE_TIMEOUT, || redis.command(&["PING"]).is_some()),
            "redis-server (pid {}) does not answer on {}",
            redis.pid(),
            redis.socket.display()
        );
        redis
    }

    pub fn pid(&self) -> u32 {
        self.program.pid
    }

    /// Sends `args` as one command on a new connection, returns the connection.
    pub fn send(&self, args: &[&str]) -> Option<UnixStream> {
        let mut conn = UnixStream::connect(&self.socket).ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for a in args {
            request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        conn.write_all(request.as_bytes()).ok()?;
        Some(conn)
    }

    /// A command's first reply bytes.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut conn = self.send(args)?;
        conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut reply = [0u8; 64];
        let n = conn.read(&mut reply).ok()?;
        (n > 0).then(|| String::from_utf8_lossy(&reply[..n]).into_owned())
    }

    /// `DEBUG SLEEP` for longer than the test: the loop stays blocked in the handler.
    pub fn stall(&self) -> UnixStream {
        self.send(&["DEBUG", "SLEEP", "100000"])
            .expect("the DEBUG SLEEP request")
    }

    /// A Lua script that never ends: the loop spins on CPU in the command. (Past
    /// `busy-reply-threshold`, Redis polls its loop from the script to answer `BUSY`;
    /// `start` sets that to 10 minutes, longer than any test.)
    pub fn spin(&self) -> UnixStream {
        self.send(&["EVAL", "while true do end", "0"])
            .expect("the EVAL request")
    }
}
