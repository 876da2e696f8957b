"""Forward a loopback port on the host into the test cluster's network namespace.

argv: HOLDER_PID TARGET_HOST:PORT PORT_FILE. Binds 127.0.0.1:<free port> in
the host's namespace, writes the port to PORT_FILE, then joins the network
namespace of HOLDER_PID: every connection it accepts is relayed to TARGET
inside the cluster. This is how pytest, helm and the benchmark reach the API
server without any cluster address existing on the host. Ends on SIGTERM or
when its parent dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
CONNECT_TIMEOUT_S = 10.0


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(sock: socket.socket, host: str, port: int) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
        except (TimeoutError, OSError):
            client_w.close()
            return
        await asyncio.gather(pipe(client_r, up_w), pipe(up_r, client_w))

    server = await asyncio.start_server(handle, sock=sock)
    async with server:
        await server.serve_forever()


def main() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    holder, target, port_file = sys.argv[1], sys.argv[2], sys.argv[3]
    host, _, port = target.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    fd = os.open(f"/proc/{holder}/ns/net", os.O_RDONLY)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise SystemExit(f"forward.py: setns into {holder}'s network namespace failed: errno {ctypes.get_errno()}")
    os.close(fd)
    with open(port_file + ".partial", "w") as f:
        f.write(str(sock.getsockname()[1]))
    os.replace(port_file + ".partial", port_file)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    asyncio.run(serve(sock, host, int(port)))


if __name__ == "__main__":
    main()
