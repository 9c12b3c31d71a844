"""Tornado internals, in one place: the WebSocket protocol subclassed (zero-copy broadcast frames, invalid
UTF-8 reported instead of fatal, a bounded output buffer, close codes checked, sync answers paced) and every
private name the server relies on, listed with why, so that a Tornado release that drops one fails a named
test (tests/test_tornado_shim.py), not production."""

from __future__ import annotations

import asyncio
import logging
import struct
import time

import tornado.websocket
from tornado.iostream import StreamClosedError
from tornado.util import _websocket_mask
from tornado.websocket import WebSocketClosedError, WebSocketProtocol13

from .. import turn
from ..transport import output_budget

log = logging.getLogger("mcprt.ws")

_GATHER_BYTES = 64 * 1024  # text frames held for the end of a turn, at most
_U16, _U64 = struct.Struct("!H"), struct.Struct("!Q")
_ABORT = object()
CLOSE_TOO_SLOW = 4009  # recorded, not sent: the peer is dropped without a close frame it would not read
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007

# Each private name used, and what it buys (measured where it is about speed).
TORNADO_INTERNALS = {
    "tornado.websocket._WebSocketParams": "get_websocket_protocol builds our Protocol with the handler's own params",
    "tornado.websocket.WebSocketProtocol13._handle_message": "a text frame of invalid UTF-8 becomes INVALID_MESSAGE, "
                                                            "not a closed connection; close frames are checked",
    "tornado.websocket.WebSocketProtocol13._write_frame": "one encoded frame to each receiver without write_message's "
                                                         "per-frame Task (fan-out 37.9k -> 70.7k deliveries/s)",
    "tornado.websocket.WebSocketProtocol13._receive_frame_loop": "frames parsed from whatever one read brought, not "
                                                                  "three or four awaited reads each; an authenticated "
                                                                  "socket leaves the pre-auth caps",
    "tornado.util._websocket_mask": "unmasking a client's frame (C speedup)",
    "tornado.websocket.WebSocketProtocol13._fragmented_message_buffer": "a fragmented message, as Tornado keeps it",
    "tornado.websocket.WebSocketProtocol13._fragmented_message_opcode": "the same",
    "tornado.websocket.WebSocketProtocol13._decompressor": "permessage-deflate: whether RSV1 may be set",
    "tornado.websocket.WebSocketProtocol13._run_callback": "on_message run as Tornado runs it (errors, awaitables)",
    "tornado.websocket.WebSocketProtocol13._abort": "drop a peer that will not read a close frame (ping timeout, "
                                                   "slow consumer) now instead of 5 s later",
    "tornado.websocket.WebSocketProtocol13._message_bytes_in": "kept right when we deliver text frames ourselves",
    "tornado.websocket.WebSocketProtocol13._message_bytes_out": "kept right when we write frames ourselves",
    "tornado.websocket.WebSocketProtocol13._wire_bytes_out": "where a sync answer ends in the output, for pacing",
    "tornado.websocket.WebSocketProtocol13._frame_compressed": "compressed frames keep Tornado's own path",
    "tornado.websocket.WebSocketProtocol13._compressor": "permessage-deflate keeps write_message's path",
    "tornado.websocket.WebSocketHandler._detach_stream": "the socket leaves the IOStream for an asyncio transport "
                                                         "once the handshake is answered (sockets.py)",
    "tornado.iostream.IOStream._state": "whether Tornado watches the socket, to stop it before the transport does",
    "tornado.iostream.IOStream._write_buffer": "what the IOStream had not written when the transport took over",
    "tornado.iostream._StreamBuffer.peek": "the same",
    "tornado.iostream._StreamBuffer.advance": "the same",
    "tornado.iostream.IOStream._read_buffer": "transport gives back bytes read past a request head; the transport "
                                              "takes what was read past the handshake",
    "tornado.iostream.IOStream._read_buffer_size": "the same",
    "tornado.tcpserver.TCPServer._sockets": "EdgeServer installs its own accept handler (EMFILE back-off)",
    "tornado.tcpserver.TCPServer._handlers": "the same",
    "tornado.tcpserver.TCPServer._handle_connection": "accepted connections handed on as Tornado does",
    "tornado.web.RequestHandler._handle_request_exception": "an AppError becomes the one JSON error shape",
    "concurrent.futures.ProcessPoolExecutor._processes": "a sanitize past its budget: kill the worker (a pool has "
                                                         "no public way to stop a running call)",
}


class Protocol(WebSocketProtocol13):
    """Tornado's protocol, except that a text frame of invalid UTF-8 is reported, not fatal; that a peer
    which does not read its output is dropped once that output passes its budget (Redis's
    client-output-buffer-limit); and that a close code not valid on the wire is answered with 1002."""

    # see EditorSocket.__slots__
    __slots__ = ("budget", "answer_end", "answer_size", "_later", "_later_bytes", "_unparsed")

    def __init__(self, handler, mask_outgoing, params):
        super().__init__(handler, mask_outgoing, params)
        self.budget = output_budget(handler.deps.settings)
        self.answer_end = self.answer_size = 0  # where the last sync answer ends in that count, and its size
        # Text frames written after the first in one turn of the event loop wait here and go to the stream
        # together at the end of the turn: one send() for a burst of acks or broadcasts, not one each.
        self._later: list[bytes] | None = None  # None: nothing written this turn yet
        self._later_bytes = 0
        self._unparsed = b""  # the start of a frame still arriving

    def pending(self) -> int:
        """Bytes queued for this peer and not yet taken by the kernel."""
        stream = self.stream
        return 0 if stream is None or stream.closed() else stream.buffered() + self._later_bytes

    def unsent_answer(self) -> int:
        """How much of the last sync answer is still queued here."""
        return max(0, self.answer_end - (self._wire_bytes_out - self.pending()))

    def bytes_out(self) -> int:
        """Bytes written to this peer so far, frames included."""
        return self._wire_bytes_out

    def mark_answer(self, size: int) -> None:
        """The message just written is a sync answer of `size` bytes."""
        self.answer_end, self.answer_size = self._wire_bytes_out, size

    def _write_frame(self, fin: bool, opcode: int, data: bytes, flags: int = 0):
        self._write_later()  # frames leave in the order they were written
        self._check_budget(len(data))  # over it, the write below raises StreamClosedError
        return super()._write_frame(fin, opcode, data, flags)

    def _check_budget(self, adding: int) -> None:
        if self.stream is not None and not self.stream.closed():
            over = self.budget.verdict(self.pending(), adding + 14, time.monotonic())
            if over is not None:
                self._too_slow(over, adding)

    def _write_text(self, data: bytes) -> None:
        """One unmasked, final text frame. Within a batch (mcprt.turn: a commit's acks, a read's answers)
        it is held to the batch's end; otherwise the first of this turn goes to the stream now, later ones
        at the turn's end."""
        self._check_budget(len(data))
        stream = self.stream
        if stream is None or stream.closed():
            raise StreamClosedError()
        size = len(data)
        header = (b"\x81" + bytes((size,)) if size < 126 else
                  struct.pack("!BBH", 0x81, 126, size) if size <= 0xFFFF else struct.pack("!BBQ", 0x81, 127, size))
        frame = header + data
        self._wire_bytes_out += len(frame)
        if self._later is None:
            if turn.at_end(self._write_later):  # within a commit's acks, or a read's answers
                self._later, self._later_bytes = [frame], len(frame)
                return
            stream.write_now(frame)
            self._later = []
            asyncio.get_running_loop().call_soon(self._write_later)
        elif self._later_bytes + len(frame) > _GATHER_BYTES:  # big frames gain nothing by waiting: the
            self._write_later()                               # stream takes what the kernel will
            stream.write_now(frame)
            self._later = []
        else:
            self._later.append(frame)
            self._later_bytes += len(frame)

    def _write_later(self) -> None:
        later, self._later = self._later, None
        if later:
            self._later_bytes = 0
            if self.stream is not None and not self.stream.closed():
                try:
                    self.stream.write_now(b"".join(later))
                except StreamClosedError:  # reset by the peer, its close not delivered yet: nobody to tell
                    pass

    def _too_slow(self, which: str, adding: int) -> None:
        handler = self.handler
        pending = self.pending()
        handler.end_reason = "slow_consumer"
        self.close_code, self.close_reason = CLOSE_TOO_SLOW, "too slow: output buffer full"
        details = {"limit": which, "pending_bytes": pending, "adding_bytes": adding,
                   "hard_limit": self.budget.hard, "soft_limit": self.budget.soft,
                   "soft_seconds": self.budget.soft_seconds}
        handler.deps.audit.security("slow_consumer", None, details, **handler.where())
        log.warning("dropped slow consumer conn=%s: %d bytes queued (%s limit)", handler.connection_id, pending,
                    which)
        self._abort()

    def write_ping(self, data: bytes) -> None:
        try:
            super().write_ping(data)
        except StreamClosedError:  # dropped as too slow by this very write: nothing left to ping
            pass

    async def _receive_frame_loop(self) -> None:
        """Tornado's loop reads each frame in three or four awaited reads (header, length, mask, payload);
        here the socket hands over whatever has arrived (sockets.SocketStream) and every whole frame in it is
        handled at once, with Tornado's checks and answers (abort, or 1009 for a message over the size
        limit). A handler that returns a future holds the next frames until it is done, as Tornado's did.

        It returns at once, and the end of the connection is a callback: awaiting it here would keep
        Tornado's request coroutines (the handler's _execute, its get, the handshake) and everything they
        hold alive for as long as the socket is open."""
        if self.handler.joined:
            self.stream.promote()  # an authenticated editor no longer counts under the pre-auth caps
        self.stream.start_reading(self._received).add_done_callback(self._connection_lost)

    def _connection_lost(self, _lost: asyncio.Future) -> None:
        self._abort()
        self.handler.on_ws_connection_close(self.close_code, self.close_reason)

    def _received(self, data: bytes) -> None:
        self._wire_bytes_in += len(data)
        buffer, self._unparsed = (self._unparsed + data if self._unparsed else data), b""
        with turn.batch():
            used = self._frames(buffer)
        if used >= 0:
            self._unparsed = buffer[used:]

    def _frames(self, data: bytes) -> int:
        """Handle every whole frame at the start of `data`; how many bytes they took, or -1 once the
        connection was aborted."""
        at, size = 0, len(data)
        while size - at >= 2 and not self.client_terminated:
            header, second = data[at], data[at + 1]
            opcode, reserved = header & 0x0F, header & 0x70
            if self._decompressor is not None and opcode != 0:
                self._frame_compressed = bool(reserved & 0x40)  # compressed: decompressed once whole
                reserved &= ~0x40
            length, start = second & 0x7F, at + 2
            if reserved or (opcode & 0x8 and length >= 126):  # unknown extensions; a long control frame
                self._abort()
                return -1
            if length == 126:
                if size - start < 2:
                    break
                length, start = _U16.unpack_from(data, start)[0], start + 2
            elif length == 127:
                if size - start < 8:
                    break
                length, start = _U64.unpack_from(data, start)[0], start + 8
            pending = len(self._fragmented_message_buffer) if self._fragmented_message_buffer is not None else 0
            if length + pending > self.params.max_message_size:
                self.close(1009, "message too big")
                self._abort()
                return -1
            mask = data[start:start + 4] if second & 0x80 else None
            start += 4 if mask is not None else 0
            if size - start < length:
                break
            payload = data[start:start + length]
            at = start + length
            if mask is not None:
                payload = _websocket_mask(mask, payload)
            message = self._whole(bool(header & 0x80), opcode, payload)
            if message is None:
                continue
            if message is _ABORT:
                self._abort()
                return -1
            handled = self._handle_message(*message)
            if handled is not None:  # the next frames wait for it
                self.stream.pause_reading()
                handled.add_done_callback(self._handled)
                break
        return at

    def _handled(self, _future) -> None:
        """A handler that ran on is done: the frames that arrived meanwhile, then what comes next."""
        if not self.client_terminated:
            self.stream.resume_reading()

    def _whole(self, final: bool, opcode: int, payload: bytes):
        """(opcode, data) of a whole message, None while fragments are still coming, or _ABORT (RFC 6455
        5.4: control frames unfragmented, continuations only inside a fragmented message)."""
        if opcode & 0x8:
            return (opcode, payload) if final else _ABORT
        if opcode == 0:
            if self._fragmented_message_buffer is None:
                return _ABORT
            self._fragmented_message_buffer.extend(payload)
            if not final:
                return None
            whole, self._fragmented_message_buffer = bytes(self._fragmented_message_buffer), None
            return self._fragmented_message_opcode, whole
        if self._fragmented_message_buffer is not None:
            return _ABORT
        if final:
            return opcode, payload
        self._fragmented_message_opcode, self._fragmented_message_buffer = opcode, bytearray(payload)
        return None

    def _handle_message(self, opcode: int, data: bytes):
        if opcode == 0x1 and not self._frame_compressed and not self.client_terminated:
            self._message_bytes_in += len(data)
            try:
                decoded = data.decode("utf-8")
            except UnicodeDecodeError:
                return self._run_callback(self.handler.on_invalid_text, data)
            return self._run_callback(self.handler.on_message, decoded)
        if opcode == 0x8 and not self.client_terminated:
            return self._on_close_frame(data)
        return super()._handle_message(opcode, data)

    def _on_close_frame(self, data: bytes) -> None:
        """Echo a valid close code (RFC 6455 5.5.1); answer one that may not be sent, a 1-byte payload, or a
        reason that is not UTF-8 with 1002 or 1007 (7.4.1) instead of echoing it."""
        self.client_terminated = True
        answer = None
        if len(data) == 1:
            answer = CLOSE_PROTOCOL_ERROR
        elif len(data) >= 2:
            self.close_code = struct.unpack(">H", data[:2])[0]
            if not valid_close_code(self.close_code):
                answer = CLOSE_PROTOCOL_ERROR
            try:
                self.close_reason = data[2:].decode("utf-8") if len(data) > 2 else None
            except UnicodeDecodeError:
                answer = answer or CLOSE_INVALID_DATA
        self.close(answer or self.close_code)

    def send_utf8(self, data: bytes) -> bool:
        """One text frame of already-encoded UTF-8; False when the stream is closed.

        write_message would encode the text again and wrap each frame in a Task; a broadcast
        encodes once and writes the same bytes to every receiver this way.
        """
        if self.is_closing():
            return False
        try:
            if self._compressor is not None:  # permessage-deflate (off unless configured): the long way
                self.write_message(data).add_done_callback(_consume)
            else:
                self._message_bytes_out += len(data)
                self._write_text(data)  # IOStream silences its futures if the stream closes
        except (StreamClosedError, WebSocketClosedError):
            return False
        return True

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        super().close(code, reason)
        if reason == "ping timed out":
            # A peer that misses pongs will not answer a close frame either: drop it now, not 5 s later.
            self.handler.end_reason = self.handler.end_reason or "timeout"
            self._abort()


def valid_close_code(code: int) -> bool:
    """A close code an endpoint may send (RFC 6455 7.4): 1000-1003, 1007-1014, 3000-4999."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def _consume(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()  # a peer that went away mid-write is not an error worth a log line


def protocol_for(handler) -> Protocol | None:
    """Tornado's get_websocket_protocol, building our Protocol (version 13 only, as Tornado does)."""
    if handler.request.headers.get("Sec-WebSocket-Version") != "13":
        return None
    params = tornado.websocket._WebSocketParams(
        ping_interval=handler.ping_interval, ping_timeout=handler.ping_timeout,
        max_message_size=handler.max_message_size, compression_options=handler.get_compression_options())
    return Protocol(handler, False, params)
