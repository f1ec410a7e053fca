# An idle asyncio server: listening on 127.0.0.1 (a free port), nobody connects. Its one
# thread sits in epoll_wait with no timeout: idle, never hung.
import asyncio, os


async def handle(reader, writer):
    writer.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"pid {os.getpid()}", flush=True)
    print(f"port {port}", flush=True)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
