"""The sockets `stepline dev` / `stepline start` listen on: connections they accept have Nagle's algorithm off.

With it on, a keep-alive client waited ~40 ms for every answer after the first (the answer's second segment waits
for the ACK the client delays): asyncio disables Nagle on accepted connections only when the listening socket was
made with ``IPPROTO_TCP``."""

from __future__ import annotations

import asyncio
import socket

import pytest

from stepline.cli.server import _sockets


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_accepted_connections_have_nagle_off(host: str) -> None:
    try:
        [listener] = _sockets([host], 0)
    except Exception as exc:  # no IPv6 loopback here
        pytest.skip(f"cannot listen on {host}: {exc}")
    port = listener.getsockname()[1]
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
    _, writer = await asyncio.open_connection(host, port)
    try:
        nodelay = await asyncio.wait_for(accepted, 5)
    finally:
        writer.close()
        server.close()
        await server.wait_closed()
    assert nodelay != 0
