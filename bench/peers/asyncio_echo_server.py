"""The floor for a Python server: a WebSocket JSON echo on a plain asyncio Protocol, nothing else.

The handshake is written by hand and each text frame is decoded as JSON, encoded again and sent back,
so a round trip costs what a Python server cannot avoid (the event loop, the socket calls, the frame
and the JSON). mcprt's sockets are on asyncio transports too, so this is what its edit path sits on.

`--commit FILE` adds what a server whose ack means "committed" cannot avoid either: each message is
inserted as one row of a SQLite file (WAL, `synchronous=NORMAL`, mcprt's settings), its own transaction
committed on the loop's thread, before it is sent back. Nothing is parsed beyond the JSON, nothing is
transformed or checked and no event is written: the least a durable ack costs a Python server.
Prints `PORT n` once listening; serves until SIGTERM. `uvloop` as the first argument runs it on uvloop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import signal
import sqlite3
import struct
import sys

from tornado.util import _websocket_mask  # Tornado's C helper, as mcprt's own frame parser uses

MAGIC = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HELLO = json.dumps({"id": "hello", "type": "document_state", "payload": {
    "document_id": "bare", "format": "text", "content": "", "revision": 0, "participants": []},
    "timestamp": "2025-11-07T10:00:00Z"}, separators=(",", ":")).encode()


def frame(data: bytes) -> bytes:
    n = len(data)
    if n < 126:
        return bytes((0x81, n)) + data
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + data
    return struct.pack("!BBQ", 0x81, 127, n) + data


class Echo(asyncio.Protocol):
    db: sqlite3.Connection | None = None  # --commit: each message is a row, committed before the echo

    def connection_made(self, transport) -> None:
        self.transport, self.buffer, self.open = transport, b"", False

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.open:
            if b"\r\n\r\n" not in self.buffer:
                return
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            keys = [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                    if line.lower().startswith(b"sec-websocket-key:")]
            if not keys:
                self.transport.close()
                return
            accept = base64.b64encode(hashlib.sha1(keys[0] + MAGIC).digest())
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                 b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + frame(HELLO))
            self.open = True
        buffer, at, out = self.buffer, 0, []
        while len(buffer) - at >= 2:
            opcode, n, start = buffer[at] & 0x0F, buffer[at + 1] & 0x7F, at + 2
            if n == 126:
                if len(buffer) - start < 2:
                    break
                n = struct.unpack_from("!H", buffer, start)[0]
                start += 2
            elif n == 127:
                if len(buffer) - start < 8:
                    break
                n = struct.unpack_from("!Q", buffer, start)[0]
                start += 8
            if len(buffer) - start < 4 + n:
                break
            payload = _websocket_mask(buffer[start:start + 4], buffer[start + 4:start + 4 + n])
            at = start + 4 + n
            if opcode == 8:
                self.transport.write(b"\x88\x00")
                self.transport.close()
                return
            if opcode == 1:
                message = json.dumps(json.loads(payload), separators=(",", ":"))
                if self.db is not None:
                    self.db.execute("INSERT INTO messages (message) VALUES (?)", (message,))  # autocommit
                out.append(frame(message.encode()))
        self.buffer = buffer[at:]
        if out:
            self.transport.write(b"".join(out))


async def serve() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    server = await loop.create_server(Echo, "127.0.0.1", 0)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.close()


def open_log(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)  # autocommit: each INSERT is its own transaction
    for pragma in ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL"):
        db.execute(pragma)
    db.execute("CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, message TEXT NOT NULL)")
    return db


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["uvloop"]:
        import uvloop
        uvloop.install()
        args = args[1:]
    if args[:1] == ["--commit"] and len(args) == 2:
        Echo.db = open_log(args[1])
    elif args:
        sys.exit("usage: asyncio_echo_server.py [uvloop] [--commit FILE]")
    asyncio.run(serve())
