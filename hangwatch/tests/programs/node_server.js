// A Node TCP server (libuv's loop). Modes: `idle` serves normally; `sleep`: a request
// "stall" blocks the loop in a synchronous read of a FIFO nobody writes (fs.readSync: a
// read() on the main thread, under uv_run); `spin`: a request "stall" spins on CPU in a JS
// loop that never returns to the event loop. Any other request is answered "ok" at once.
// Prints {"pid", "tid", "port"}, then "ready".
"use strict";
const fs = require("fs");
const net = require("net");
const os = require("os");
const path = require("path");
const { execFileSync } = require("child_process");

const mode = process.argv[2];
// A FIFO nobody writes, opened O_RDWR (the open does not wait for a writer) and unlinked
// at once: a read of it waits for ever, and a killed server leaves no file behind.
const fifo = path.join(os.tmpdir(), `hangwatch-node-${process.pid}.fifo`);
execFileSync("mkfifo", [fifo]);
const fifoFd = fs.openSync(fifo, "r+");
fs.rmSync(fifo);

function spinForever() {
  let n = 0;
  for (;;) {
    n = (n + 1) | 0;
  }
}

const server = net.createServer((socket) => {
  let buffered = "";
  socket.on("data", (data) => {
    buffered += data.toString();
    let at;
    while ((at = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, at).trim();
      buffered = buffered.slice(at + 1);
      if (line === "stall" && mode === "sleep") {
        fs.readSync(fifoFd, Buffer.alloc(1));
      }
      if (line === "stall" && mode === "spin") {
        spinForever();
      }
      socket.write("ok\n");
    }
  });
  socket.on("error", () => {});
});
server.listen(0, "127.0.0.1", () => {
  const port = server.address().port;
  console.log(JSON.stringify({ pid: process.pid, tid: process.pid, port }));
  console.log("ready");
});
