"""Threads blocked two Python functions deep (outer -> inner), for the Python frames of
user stacks (issue 17). Runs under any CPython 3.9+; `gevent` needs gevent. Modes:
  lock     a worker thread blocks in outer -> inner -> lock.acquire() on a lock the main
           thread holds, then the main thread joins it: the process can never progress;
  asyncio  an event loop ticks until "go" on stdin, then a task handler -> outer -> inner
           calls the blocking time.sleep() (a loop_stall);
  gevent   the same with a gevent hub and a greenlet (time.sleep is not patched);
  fork     a thread holds the lock while the main thread forks: the child blocks in
           outer -> inner -> lock.acquire() on the copy, held forever (seed 003).
Prints "pid N" and "tid N" (the thread that blocks; "child N" for fork), then "ready".
The test computes expected lines from the marker comments."""
import os
import sys
import threading
import time

MODE = sys.argv[1]
lock = threading.Lock()


def inner():
    if MODE in ("asyncio", "gevent"):
        time.sleep(100000)  # /* inner-sleep */
    lock.acquire()  # /* inner-acquire */


def outer():
    inner()  # /* outer-call */


def show(key, value):
    print(f"{key} {value}", flush=True)


def blocked_thread():
    outer()


if MODE == "lock":
    lock.acquire()
    worker = threading.Thread(target=blocked_thread, name="worker")
    worker.start()
    show("pid", os.getpid())
    show("tid", worker.native_id)
    print("ready", flush=True)
    worker.join()
elif MODE == "asyncio":
    import asyncio

    async def handler():
        outer()  # /* handler-call */

    async def main():
        loop = asyncio.get_running_loop()
        go = asyncio.Event()
        loop.add_reader(sys.stdin.fileno(), go.set)
        show("pid", os.getpid())
        show("tid", threading.get_native_id())
        print("ready", flush=True)
        while not go.is_set():
            # The loop keeps returning to epoll_wait: a live loop until it stalls.
            await asyncio.sleep(0.02)
        await asyncio.create_task(handler())

    asyncio.run(main())
elif MODE == "gevent":
    import gevent
    from gevent.socket import wait_read

    def handler():
        outer()  # /* greenlet-call */

    def ticker():
        while True:
            gevent.sleep(0.02)

    gevent.spawn(ticker)
    show("pid", os.getpid())
    show("tid", threading.get_native_id())
    print("ready", flush=True)
    wait_read(sys.stdin.fileno())
    gevent.spawn(handler).join()
elif MODE == "fork":
    held = threading.Event()

    def hold():
        lock.acquire()
        held.set()
        time.sleep(100000)

    threading.Thread(target=hold, daemon=True).start()
    held.wait()
    child = os.fork()
    if child == 0:
        outer()
        os._exit(0)
    show("pid", os.getpid())
    show("child", child)
    print("ready", flush=True)
    os.waitpid(child, 0)
    os._exit(0)
else:
    sys.exit(f"unknown mode {MODE}")
