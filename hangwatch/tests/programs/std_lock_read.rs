// std_lock_read: a thread takes a Rust `std::sync::Mutex` and then blocks for ever in a
// read of stdin (nobody writes); a second thread waits for that mutex in
// `Mutex::lock_contended`. std's futex mutex keeps no owner: the waiter is a lock wait
// with no owner to name. Main joins the holder.
//
// stdout: "pid <pid>", "mutex <addr>", "holder <tid>", "waiter <tid>", then "ready".
use std::{
    io::Read,
    sync::{Arc, Barrier, Mutex, mpsc},
    thread,
};

static LOCK: Mutex<u64> = Mutex::new(0);

/// This thread's kernel tid, from /proc/thread-self ("PID/task/TID").
fn gettid() -> u32 {
    let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    let text = link.to_string_lossy().into_owned();
    text.rsplit('/').next().and_then(|t| t.parse().ok()).expect("a tid")
}

fn holder(held: Arc<Barrier>, tid: mpsc::Sender<u32>) {
    let _guard = LOCK.lock().expect("lock");
    tid.send(gettid()).expect("send");
    held.wait();
    let mut byte = [0u8; 1];
    let _ = std::io::stdin().read(&mut byte); // never returns: nobody writes
}

fn waiter(held: Arc<Barrier>, tid: mpsc::Sender<u32>) -> u64 {
    held.wait();
    tid.send(gettid()).expect("send");
    let value = LOCK.lock().expect("lock"); // the waiter waits
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
            .spawn(move || holder(held, holder_tid))
            .expect("spawn")
    };
    thread::Builder::new()
        .name("waiter".into())
        .spawn(move || waiter(held, waiter_tid))
        .expect("spawn");
    println!("holder {}", holder_rx.recv().expect("tid"));
    println!("waiter {}", waiter_rx.recv().expect("tid"));
    println!("ready");
    let _ = h.join();
}
