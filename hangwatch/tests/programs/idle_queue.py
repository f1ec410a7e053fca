# idle_queue.py MODE: main waits in queue.get() (an untimed lock acquire underneath: a
# private futex wait) for work that can still come from outside, so it is idle, not hung.
#   stdin:  a producer thread reads stdin and puts each line: it waits on an fd.
#   signal: no other thread; a SIGUSR1 handler puts the work.
# stdout: "pid <pid>", "ready", then "got <item>" for each item main takes.
import os, queue, signal, sys, threading

mode = sys.argv[1]
q = queue.Queue()
if mode == "stdin":
    def produce():
        for line in sys.stdin:
            q.put(line.strip())
    threading.Thread(target=produce, name="producer", daemon=True).start()
elif mode == "signal":
    signal.signal(signal.SIGUSR1, lambda signum, frame: q.put("signal"))
else:
    sys.exit(f"unknown mode {mode}")
print(f"pid {os.getpid()}", flush=True)
print("ready", flush=True)
while True:
    print(f"got {q.get()}", flush=True)
