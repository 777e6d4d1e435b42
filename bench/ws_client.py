"""A small WebSocket client on raw asyncio streams, for the load generators.

It does what a benchmark needs and no more (RFC 6455: the opening handshake, masked text
frames out, unfragmented frames in, a pong for a ping), so that the client's own cost
per message stays small next to the server's, as the HTTP client's does. Messages come
back as bytes, undecoded: the benchmarks look for an event's type in them.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct

_TEXT, _CLOSE, _PING, _PONG = 0x1, 0x8, 0x9, 0xA


class ConnectionClosed(Exception):
    pass


class WebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    @classmethod
    async def connect(cls, port: int, path: str, timeout: float = 60) -> WebSocket:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            writer.close()
            raise ConnectionClosed(head.decode("latin-1"))
        return cls(reader, writer)

    async def send(self, text: str) -> None:
        self._writer.write(_frame(_TEXT, text.encode()))

    async def recv(self) -> bytes:
        """The next text message's payload."""
        while True:
            opcode, payload = await self._frame()
            if opcode == _TEXT:
                return payload
            if opcode == _PING:
                self._writer.write(_frame(_PONG, payload))
            elif opcode == _CLOSE:
                raise ConnectionClosed(payload[2:].decode(errors="replace"))

    async def _frame(self) -> tuple[int, bytes]:
        read = self._reader.readexactly
        try:
            first, second = await read(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await read(8))
            return first & 0x0F, await read(length) if length else b""
        except asyncio.IncompleteReadError:
            raise ConnectionClosed("the connection ended") from None

    async def close(self) -> None:
        if not self._writer.is_closing():
            self._writer.write(_frame(_CLOSE, struct.pack("!H", 1000)))
            self._writer.close()


def _frame(opcode: int, payload: bytes) -> bytes:
    """One final frame, masked as a client's must be."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    repeated = (mask * (length // 4 + 1))[:length]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        length, "big"
    )
    return head + mask + masked
