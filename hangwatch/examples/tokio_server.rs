//! A tokio TCP server on a multi-thread runtime with 2 workers (seed 001). A request line
//! "stall" makes its handler call `std::thread::sleep`, blocking its worker; any other line
//! is answered "ok" at once. Argument: `idle` (never stalls, ignores "stall"), `stall`, or
//! `blocking` (a "stall" hands a `read()` of a pipe nobody writes to `spawn_blocking`, as
//! it should be done: a blocking-pool thread waits for ever, the runtime goes on, and the
//! request is answered "ok"), `spin` (a "stall" spins on CPU in its handler, never giving
//! its worker back) or `blocking_spin` (a "stall" hands a CPU-bound loop to
//! `spawn_blocking` and is answered: a blocking-pool thread computes, the runtime goes on).
//!
//! Used by `tests/kernel_loops.rs`. Protocol on stdout: {"pid": N, "port": P}, "ready".
use std::{io::Write as _, time::Duration};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream},
};

/// The handler that blocks its worker thread. Not inlined, so it has a frame of its own.
#[inline(never)]
fn handle_request(stall: bool) -> &'static [u8] {
    if stall {
        std::thread::sleep(Duration::from_secs(100_000));
    }
    std::hint::black_box(b"ok\n")
}

/// A CPU-bound loop that never returns. Not inlined, so it has a frame of its own.
#[inline(never)]
fn spin_forever() {
    let mut n = 0u64;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// A read that never returns, on a thread of the blocking pool: the pipe's write end is
/// kept open (leaked) and never written.
#[inline(never)]
fn blocking_read() {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return;
    }
    let mut byte = [0u8; 1];
    // SAFETY: reads at most one byte into `byte`; `fds[0]` is the pipe's read end.
    let _ = unsafe { libc::read(fds[0], byte.as_mut_ptr().cast(), 1) };
}

async fn serve(stream: TcpStream, mode: Mode) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let stall = line.trim() == "stall";
        if stall && mode == Mode::Blocking {
            drop(tokio::task::spawn_blocking(blocking_read));
        }
        if stall && mode == Mode::BlockingSpin {
            drop(tokio::task::spawn_blocking(spin_forever));
        }
        if stall && mode == Mode::Spin {
            spin_forever();
        }
        let answer = handle_request(stall && mode == Mode::Stall);
        if write.write_all(answer).await.is_err() {
            break;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Idle,
    Stall,
    Blocking,
    Spin,
    BlockingSpin,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mode = match std::env::args().nth(1).as_deref() {
        Some("stall") => Mode::Stall,
        Some("blocking") => Mode::Blocking,
        Some("spin") => Mode::Spin,
        Some("blocking_spin") => Mode::BlockingSpin,
        _ => Mode::Idle,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "{{\"pid\": {}, \"port\": {port}}}\nready",
        std::process::id()
    );
    let _ = out.flush();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve(stream, mode));
    }
}
