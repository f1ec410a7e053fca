//! A tokio TCP server on a multi-thread runtime with 2 workers (seed 001). A request line
//! "stall" makes its handler call `std::thread::sleep`, blocking its worker; any other line
//! is answered "ok" at once. Argument: `idle` (never stalls, ignores "stall") or `stall`.
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

async fn serve(stream: TcpStream, may_stall: bool) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let answer = handle_request(may_stall && line.trim() == "stall");
        if write.write_all(answer).await.is_err() {
            break;
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let may_stall = std::env::args().nth(1).as_deref() == Some("stall");
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
        tokio::spawn(serve(stream, may_stall));
    }
}
