//! A thread takes a `parking_lot::Mutex` and then blocks for ever in a read of stdin
//! (nobody writes); a second thread waits for that mutex in `RawMutex::lock_slow`, parked on
//! a futex word of its own (parking_lot keeps no owner, and the lock is only a key in its
//! tables). Main joins the holder.
//!
//! Used by `tests/kernel_ownerless.rs`: the waiter is a `lock_wait` with no owner whose
//! stack shows parking_lot's slow path.
//!
//! Protocol on stdout: `pid <pid>`, `mutex <addr>`, `holder <tid>`, `waiter <tid>`, then
//! `ready`.
use std::{
    io::Read as _,
    sync::{Arc, Barrier, mpsc},
    thread,
};

use parking_lot::Mutex;

static LOCK: Mutex<u64> = Mutex::new(0);

/// This thread's kernel tid.
fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::gettid() };
    u32::try_from(tid).expect("a positive tid")
}

fn holder(held: &Barrier, tid: &mpsc::Sender<u32>) {
    let _guard = LOCK.lock();
    tid.send(gettid()).expect("send");
    held.wait();
    let mut byte = [0u8; 1];
    let _ = std::io::stdin().read(&mut byte); // never returns: nobody writes
}

fn waiter(held: &Barrier, tid: &mpsc::Sender<u32>) -> u64 {
    held.wait();
    tid.send(gettid()).expect("send");
    let value = LOCK.lock(); // the waiter waits
    *value
}

fn main() {
    println!("pid {}", std::process::id());
    println!("mutex {:p}", &LOCK);
    let held = Arc::new(Barrier::new(2));
    let (holder_tid, holder_rx) = mpsc::channel();
    let (waiter_tid, waiter_rx) = mpsc::channel();
    let h = {
        let held = Arc::clone(&held);
        thread::Builder::new()
            .name("holder".into())
            .spawn(move || holder(&held, &holder_tid))
            .expect("spawn")
    };
    thread::Builder::new()
        .name("waiter".into())
        .spawn(move || waiter(&held, &waiter_tid))
        .expect("spawn");
    println!("holder {}", holder_rx.recv().expect("tid"));
    println!("waiter {}", waiter_rx.recv().expect("tid"));
    println!("ready");
    let _ = h.join();
}
