"""A gevent StreamServer (seed 004), run by the tests' virtualenv python. Modes:
  idle   serve normally;
  sleep  a request "stall" spawns a greenlet that calls the unpatched time.sleep(),
         which blocks the hub;
  resumed  a request "stall" sleeps (gevent) first, then calls time.sleep() in the
         handler's greenlet, resumed by the hub;
  spin   a request "stall" spawns a greenlet that spins on CPU in spin_forever(), which
         never gives the hub back;
  lock   a request "stall" spawns a greenlet that takes an unpatched threading.Lock that
         another thread holds for ever: the hub's thread waits on a futex.
Prints {"pid", "tid", "port"}, then "ready"."""
import json
import os
import sys
import threading
import time

import gevent
from gevent.server import StreamServer

MODE = sys.argv[1]
# gevent.monkey is not used on purpose: time.sleep stays the blocking one.
blocking_sleep = time.sleep


LOCK = threading.Lock()


def hold_lock_forever():
    LOCK.acquire()
    blocking_sleep(1000000)


def spin_forever():
    n = 0
    while True:
        n += 1


def handle(sock, _address):
    f = sock.makefile("rwb")
    for line in f:
        if line.strip() == b"stall" and MODE == "sleep":
            # Seed 004's shape: a spawned greenlet that blocks in its first run, which the
            # hub starts from its libev loop, so the thread's stack runs from the sleep up
            # through the greenlet to ev_run. (The handler's own greenlet has usually
            # switched to the hub once, waiting for this line; a resumed greenlet's stack
            # ends where it started: see docs/detection.md, "Greenlets".)
            gevent.spawn(blocking_sleep, 100000).join()
        if line.strip() == b"stall" and MODE == "lock":
            gevent.spawn(LOCK.acquire).join()
        if line.strip() == b"stall" and MODE == "spin":
            gevent.spawn(spin_forever).join()
        if line.strip() == b"stall" and MODE == "resumed":
            # The handler's greenlet itself, once it has switched to the hub and back.
            gevent.sleep(0.05)
            blocking_sleep(100000)
        f.write(b"ok\n")
        f.flush()


if MODE == "lock":
    # A real OS thread (threading is not monkey-patched), holding the lock.
    threading.Thread(target=hold_lock_forever, daemon=True).start()
    while not LOCK.locked():
        blocking_sleep(0.01)

server = StreamServer(("127.0.0.1", 0), handle)
server.start()
print(json.dumps({"pid": os.getpid(), "tid": threading.get_native_id(), "port": server.server_port}), flush=True)
print("ready", flush=True)
gevent.wait()
