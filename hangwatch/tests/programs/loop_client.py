"""Keeps a loop server busy: CONNECTIONS connections on loopback, each sending a request
as soon as the last answer came, until killed. Prints "running" once all are connected."""
import selectors
import socket
import sys

port, connections = int(sys.argv[1]), int(sys.argv[2])
sel = selectors.DefaultSelector()
for _ in range(connections):
    s = socket.create_connection(("127.0.0.1", port))
    s.setblocking(False)
    s.sendall(b"ping\n")
    sel.register(s, selectors.EVENT_READ)
print("running", flush=True)
while True:
    for key, _ in sel.select():
        data = key.fileobj.recv(65536)
        if not data:
            sys.exit(0)
        key.fileobj.send(b"ping\n" * data.count(b"\n"))
