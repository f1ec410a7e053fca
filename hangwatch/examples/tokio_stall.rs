//! A tokio service whose request handler blocks a runtime worker thread (seed 001): a
//! multi-thread runtime with 2 workers, one spawned task calls `handle_request`, which
//! sleeps with `std::thread::sleep` instead of `tokio::time::sleep`.
//!
//! Used by `tests/kernel_user_stack.rs`: the user stack of the blocked worker must reach
//! `handle_request` by name through libc, the Rust std and tokio.
//!
//! Protocol on stdout: `pid <pid>`, then `ready` once the task is about to block.
use std::{io::Write as _, time::Duration};

/// The "handler" that blocks its worker thread. Not inlined, so it has a frame of its own.
#[inline(never)]
fn handle_request(id: u64) -> u64 {
    std::thread::sleep(Duration::from_secs(1000));
    // Something after the call, so the sleep is not a tail call.
    std::hint::black_box(id) + 1
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "pid {}", std::process::id());
    let _ = out.flush();
    let task = tokio::spawn(async {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "ready");
        let _ = out.flush();
        handle_request(std::hint::black_box(1))
    });
    let _ = task.await;
}
