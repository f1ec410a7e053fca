import logging, os, sys, threading, time
# Seed 003 made deterministic: a thread holds the handler's lock while the main thread
# forks; the child logs through that handler and waits forever on the copied lock.
class OwnLockHandler(logging.StreamHandler):
    # Python 3.8+ re-creates, in the child after fork, the locks of the handlers that
    # Handler.createLock registered; a handler that makes its own lock (as all did before
    # 3.8) has it copied as it is: held.
    def createLock(self):
        self.lock = threading.RLock()

handler = OwnLockHandler(sys.stderr)
log = logging.getLogger("seed003")
log.addHandler(handler)
log.setLevel(logging.INFO)
held = threading.Event()
def hold():
    handler.acquire()
    held.set()
    time.sleep(3600)
threading.Thread(target=hold, daemon=True).start()
held.wait()
pid = os.fork()
if pid == 0:
    log.info("child logging")  # blocks forever
    os._exit(0)
print(f"pid {os.getpid()}", flush=True)
print(f"child {pid}", flush=True)
os.waitpid(pid, 0)
# Not a normal exit: logging.shutdown() at exit would wait for the held handler lock.
os._exit(0)
