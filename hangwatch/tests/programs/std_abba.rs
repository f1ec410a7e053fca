// std_abba: two threads deadlock on two Rust `std::sync::Mutex`es (lock order A->B vs
// B->A). std's futex mutex keeps no owner: both wait in `Mutex::lock_contended` (an untimed
// FUTEX_WAIT_BITSET_PRIVATE for the value 2), and main waits in `JoinHandle::join`
// (pthread_join: an untimed *shared* futex wait on the first worker's tid word).
//
// stdout: "pid <pid>", "mutex_a <addr>", "mutex_b <addr>", "tid_a <tid>", "tid_b <tid>",
// then "ready" once both hold their first lock and go for the second.
use std::{
    sync::{Arc, Barrier, Mutex},
    thread,
};

static A: Mutex<u64> = Mutex::new(0);
static B: Mutex<u64> = Mutex::new(0);

/// This thread's kernel tid, from /proc/thread-self ("PID/task/TID").
fn gettid() -> u32 {
    let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    let text = link.to_string_lossy().into_owned();
    text.rsplit('/').next().and_then(|t| t.parse().ok()).expect("a tid")
}

fn worker(first: &'static Mutex<u64>, second: &'static Mutex<u64>, barrier: Arc<Barrier>) -> u64 {
    let _first = first.lock().expect("first");
    barrier.wait();
    let second = second.lock().expect("second"); // never returns
    *second
}

fn main() {
    println!("pid {}", std::process::id());
    println!("mutex_a {:p}\nmutex_b {:p}", &A, &B);
    let barrier = Arc::new(Barrier::new(3));
    let (tx, rx) = std::sync::mpsc::channel();
    let spawn = |name: &str, first, second| {
        let barrier = Arc::clone(&barrier);
        let tx = tx.clone();
        thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                tx.send((first as *const Mutex<u64> as usize, gettid())).expect("send");
                worker(first, second, barrier)
            })
            .expect("spawn")
    };
    let a = spawn("std-worker-a", &A, &B);
    let b = spawn("std-worker-b", &B, &A);
    let mut tids = [rx.recv().expect("tid"), rx.recv().expect("tid")];
    tids.sort_by_key(|&(first, _)| first != &A as *const Mutex<u64> as usize);
    barrier.wait();
    println!("tid_a {}\ntid_b {}\nready", tids[0].1, tids[1].1);
    let _ = a.join();
    let _ = b.join();
}
