"""After the handshake, a WebSocket's socket leaves Tornado's IOStream for an asyncio transport: bytes reach
the frame parser as they arrive (data_received, no future per read), writes go straight to the transport,
and under uvloop the socket is served in C. `SocketStream` stands where the IOStream stood, with the part
of its interface the WebSocket protocol uses (write, closed, close, io_loop, set_nodelay)."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Callable

from tornado.iostream import IOStream, StreamClosedError

log = logging.getLogger("mcprt.ws")

_HELD_BEFORE_READING = 256 * 1024  # bytes a client may send before its socket is open (then reading pauses)


class SocketStream(asyncio.Protocol):
    """The accepted socket on an asyncio transport, in an IOStream's place.

    Bytes that arrive before the WebSocket reads frames (while it joins) are held, and reading pauses past
    _HELD_BEFORE_READING; so they are while a message's handler is still running (pause_reading). Writes
    made before the transport is up are held and leave first, in order."""

    __slots__ = ("io_loop", "socket", "edge", "transport", "receiver", "_held", "_unsent", "_closed", "_lost",
                 "_paused", "_connecting", "error")

    def __init__(self, stream: IOStream):
        self.io_loop = stream.io_loop
        self.socket = stream.socket
        self.edge = stream  # it gives back its place under the connection caps when this closes
        self.transport: asyncio.Transport | None = None
        self.receiver: Callable[[bytes], None] | None = None
        self._held: list[bytes] = [_unread(stream)]
        self._unsent: list[bytes] = [_unwritten(stream)]
        self._closed = False
        self._paused = False
        self._lost = asyncio.get_running_loop().create_future()
        self.error: BaseException | None = None
        if stream._state is not None:  # Tornado stops watching the socket; the transport watches it now
            stream.io_loop.remove_handler(stream.socket.fileno())
            stream._state = None
        self._connecting = asyncio.ensure_future(self._connect())  # held: the loop keeps only a weak one

    async def _connect(self) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: self, self.socket)
        except (OSError, RuntimeError, ValueError) as exc:  # the socket is gone already
            log.debug("a socket could not move to its transport: %s", exc)
            self.error = exc
            self.socket.close()
            self._set_lost()
        finally:
            self._connecting = None  # done: the task need not outlive its work (it would, for the socket's life)

    # -- asyncio.Protocol --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=1 << 30)  # the output budget (wire.py) bounds what is queued
        if self._closed:
            transport.abort()
            return
        unsent, self._unsent = b"".join(self._unsent), []
        if unsent:
            transport.write(unsent)
        if self._paused:
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if self.receiver is not None and not self._paused:
            self.receiver(data)
            return
        self._held.append(data)
        if sum(len(b) for b in self._held) > _HELD_BEFORE_READING:
            self.pause_reading()

    def eof_received(self) -> bool:
        return False  # a half-closed peer is gone: close our side too (what IOStream did on EOF)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.error = exc
        self._set_lost()

    def _set_lost(self) -> None:
        self._closed = True
        self.promote()
        if not self._lost.done():
            self._lost.set_result(None)

    # -- reading -----------------------------------------------------------------------------------------

    def start_reading(self, receiver: Callable[[bytes], None]) -> asyncio.Future:
        """From now on every byte that arrives goes to `receiver` (the held ones first); the future
        resolves once the connection is gone."""
        self.receiver = receiver
        self.resume_reading()
        return self._lost

    def pause_reading(self) -> None:
        """Hold what arrives (a handler is still running); the transport stops reading."""
        if not self._paused:
            self._paused = True
            if self.transport is not None and not self._closed:
                self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Let the receiver go on with what it kept, hand it the held bytes, then read again."""
        self._paused = False
        if self.receiver is not None and not self._closed:
            self.receiver(b"")  # whole frames it kept behind a handler that was still running
        while self._held and not self._paused and self.receiver is not None and not self._closed:
            held, self._held = b"".join(self._held), []
            if held:
                self.receiver(held)
        if not self._paused and self.transport is not None and not self._closed:
            self.transport.resume_reading()

    # -- the IOStream part -------------------------------------------------------------------------------

    def write(self, data: bytes) -> asyncio.Future:
        """IOStream's write: the future is resolved at once (the transport holds what the kernel would not
        take; the output budget bounds it)."""
        self.write_now(data)
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def write_now(self, data: bytes) -> None:
        transport = self.transport
        if transport is None:
            if self._closed:
                raise StreamClosedError()
            self._unsent.append(data)
        elif self._closed or transport.is_closing():  # a reset seen, connection_lost not yet delivered
            raise StreamClosedError()
        else:
            transport.write(data)

    def buffered(self) -> int:
        """Bytes written and not yet taken by the kernel."""
        if self._closed:
            return 0
        held = sum(map(len, self._unsent)) if self._unsent else 0
        return held if self.transport is None else held + self.transport.get_write_buffer_size()

    def closed(self) -> bool:
        return self._closed

    def close(self, exc_info: bool = False) -> None:
        """Drop the connection now, as IOStream's close does (what the kernel took still leaves)."""
        if self._closed:
            return
        self._closed = True
        if self.transport is not None:
            self.transport.abort()  # connection_lost follows
        else:
            self._set_lost()  # the transport, when it comes, is aborted at once

    def set_nodelay(self, value: bool) -> None:
        if self.socket is not None and self.socket.fileno() >= 0:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if value else 0)

    def promote(self) -> None:
        """This connection is an authenticated WebSocket (or gone): it leaves the pre-authentication caps."""
        promote = getattr(self.edge, "promote", None)
        if promote is not None:
            promote()
        self.edge = None  # nothing more to give back: the IOStream and its buffers can go


def _unread(stream: IOStream) -> bytes:
    """What the IOStream read past the handshake (frames a client sent at once)."""
    return bytes(stream._read_buffer[:stream._read_buffer_size])


def _unwritten(stream: IOStream) -> bytes:
    """What the IOStream had not written yet (the end of the 101 answer, on a busy socket)."""
    buffer, out = stream._write_buffer, []
    while len(buffer):
        with buffer.peek(len(buffer)) as view:
            out.append(bytes(view))
        buffer.advance(len(out[-1]))
    return b"".join(out)
