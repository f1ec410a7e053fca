"""An asyncio TCP server (seed 000). Modes:
  idle   serve normally;
  sleep  a request "stall" calls time.sleep() on the event loop (blocked elsewhere);
  spin   a request "stall" spins on CPU in spin_forever() (running, never back);
  executor  a request "stall" hands time.sleep() to the default ThreadPoolExecutor and is
         answered at once: a pool thread sleeps, the loop goes on (not a stall);
  lock   a request "stall" takes a threading.Lock that another thread holds for ever (a
         futex wait of the main thread: CPython's lock is a semaphore, with no owner).
Any other request is answered "ok" at once. Prints {"pid", "tid", "port"}, then "ready"."""
import asyncio
import json
import os
import sys
import threading
import time

MODE = sys.argv[1]


LOCK = threading.Lock()


def hold_lock_forever():
    LOCK.acquire()
    time.sleep(1000000)


def spin_forever():
    n = 0
    while True:
        n += 1


async def handle(reader, writer):
    try:
        await serve(reader, writer)
    except ConnectionError:
        pass  # a client that went away


async def serve(reader, writer):
    while True:
        line = await reader.readline()
        if not line:
            break
        if line.strip() == b"stall":
            if MODE == "sleep":
                time.sleep(100000)
            elif MODE == "spin":
                spin_forever()
            elif MODE == "lock":
                LOCK.acquire()
            elif MODE == "executor":
                asyncio.get_running_loop().run_in_executor(None, time.sleep, 100000)
        writer.write(b"ok\n")
        await writer.drain()
    writer.close()


async def main():
    if MODE == "lock":
        holder = threading.Thread(target=hold_lock_forever, daemon=True)
        holder.start()
        while not LOCK.locked():
            time.sleep(0.01)
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"pid": os.getpid(), "tid": threading.get_native_id(), "port": port}), flush=True)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
