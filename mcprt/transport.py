"""The TCP and HTTP edge: accept with an EMFILE back-off, connection caps per address, header limits and
timeouts (nginx's rules), and the output-buffer limit of one WebSocket peer (Redis's rule)."""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import socket
import time
from dataclasses import dataclass
from typing import Callable

import tornado.httpserver
from tornado import gen
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamClosedError

from .protocol import ErrorCode, error_body

log = logging.getLogger("mcprt.transport")

# nginx's large_client_header_buffers 4 8k: a request line or a header line must fit one 8 KiB buffer
# (414 for the request line, 431 for a header), and the header lines four of them (431).
REQUEST_LINE_LIMIT = 8192
HEADER_LINE_LIMIT = 8192
HEADERS_LIMIT = 4 * 8192
HTTP_HEAD_END = b"\r?\n\r?\n"  # what HTTP1Connection reads its request head up to

ACCEPT_BACKOFF = 0.5  # nginx disables accept for accept_mutex_delay (500 ms) on EMFILE/ENFILE
ACCEPT_LOG_INTERVAL = 60.0  # at most one warning a minute about accept() failing
LINGER_TIMEOUT, LINGER_TIME = 5.0, 30.0  # nginx lingering_timeout / lingering_time after an error answer


@dataclass(frozen=True)
class EdgeLimits:
    """The timeouts and caps of the HTTP edge (from Settings)."""

    header_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    max_connections: int = 4096
    max_per_address: int = 256


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit where allowed; (soft, hard) as they now stand."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:  # Linux refuses more than fs.nr_open even when the hard limit says infinity
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            log.warning("could not raise the file descriptor limit from %d to %d: %s", soft, target, exc)
    return soft, hard


class ConnectionCaps:
    """Open connections that are not (yet) an authenticated WebSocket, in total and per client address."""

    def __init__(self, total: int, per_address: int):
        self.limit, self.per_address = total, per_address
        self.total = 0
        self.by_address: dict[str, int] = {}

    def admit(self, address: str) -> str | None:
        """Count one connection; None when admitted, else the cap it hit ("server" or "address")."""
        if self.total >= self.limit:
            return "server"
        if self.by_address.get(address, 0) >= self.per_address:
            return "address"
        self.total += 1
        self.by_address[address] = self.by_address.get(address, 0) + 1
        return None

    def release(self, address: str) -> None:
        """One admitted connection closed or became an authenticated WebSocket."""
        self.total -= 1
        left = self.by_address.get(address, 1) - 1
        if left > 0:
            self.by_address[address] = left
        else:
            self.by_address.pop(address, None)


def add_accept_handler(sock: socket.socket, callback: Callable[[socket.socket, tuple], None],
                       backoff: float = ACCEPT_BACKOFF) -> Callable[[], None]:
    """tornado.netutil.add_accept_handler, except that when accept() fails (EMFILE, ENFILE, ENOBUFS…) it
    logs once a minute and stops accepting for `backoff` seconds, as nginx does, instead of raising into the
    loop on every wake-up while the listening socket stays readable."""
    io_loop = IOLoop.current()
    state = {"removed": False, "paused": False, "failures": 0, "logged_at": -1e9, "episode_logged": False}

    def accept(fd, events) -> None:
        for _ in range(128):  # like Tornado: a bounded batch, so one busy listener does not starve the loop
            if state["removed"] or state["paused"]:
                return
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                pause(exc)
                return
            if state["failures"]:
                resumed()
            callback(connection, address)

    def pause(exc: OSError) -> None:
        state["paused"] = True
        io_loop.remove_handler(sock)
        io_loop.call_later(backoff, resume)
        first = not state["failures"]
        state["failures"] += 1
        now = time.monotonic()
        if first and now - state["logged_at"] >= ACCEPT_LOG_INTERVAL:
            state["logged_at"], state["episode_logged"] = now, True
            log.warning("accept() failed (%s); not accepting for %.1f s at a time until it succeeds "
                        "(file descriptor limit %d)", exc.strerror or exc, backoff,
                        resource.getrlimit(resource.RLIMIT_NOFILE)[0])

    def resumed() -> None:
        if state["episode_logged"]:
            log.warning("accepting connections again after %d pause(s)", state["failures"])
        state["failures"], state["episode_logged"] = 0, False

    def resume() -> None:
        if state["removed"] or not state["paused"]:
            return
        state["paused"] = False
        io_loop.add_handler(sock, accept, IOLoop.READ)
        accept(sock, IOLoop.READ)

    def remove() -> None:
        if not state["paused"] and not state["removed"]:
            io_loop.remove_handler(sock)
        state["removed"] = True

    io_loop.add_handler(sock, accept, IOLoop.READ)
    return remove


def error_response(status: int, reason: str, code: ErrorCode, message: str, details: dict,
                   extra: str = "") -> bytes:
    """A complete HTTP/1.1 answer with the REST error body; the connection closes after it."""
    body = json.dumps({"error": error_body(code, message, details)}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=UTF-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n").encode() + body


def scan_head(buf: bytes | bytearray, start: int) -> tuple[int | None, tuple[int, str, int] | None]:
    """Look at a request head read so far, of which the bytes from `start` are new (each call scans only
    those and the line they continue): (where the head ends or None, a refusal or None). A refusal is
    (status, the part that is too long, its limit)."""
    end = _head_end(buf, max(0, start - 3))
    stop = len(buf) if end is None else end
    lead = 0  # blank lines before the request line (Tornado skips them)
    while lead < stop and buf[lead] in b"\r\n":
        lead += 1
    i = max(lead, buf.rfind(b"\n", 0, start) + 1)
    while i < stop:
        nl = buf.find(b"\n", i, stop)
        line_end = stop if nl == -1 else nl
        length = line_end - i - (1 if buf[line_end - 1] == 0x0D else 0)
        if i == lead and length > REQUEST_LINE_LIMIT:
            return end, (414, "request_line", REQUEST_LINE_LIMIT)
        if i > lead and length > HEADER_LINE_LIMIT:
            return end, (431, "header", HEADER_LINE_LIMIT)
        if nl == -1:
            break
        i = nl + 1
    request_line_end = buf.find(b"\n", lead, stop)
    if request_line_end != -1 and stop - request_line_end - 1 > HEADERS_LIMIT + 2:
        return end, (431, "headers", HEADERS_LIMIT)
    return end, None


def _head_end(buf: bytes | bytearray, start: int) -> int | None:
    """Where `\\r?\\n\\r?\\n` first ends (HTTP1Connection's own delimiter), or None."""
    ends = [p + n for p, n in ((buf.find(b"\n\n", start), 2), (buf.find(b"\n\r\n", start), 3)) if p != -1]
    return min(ends) if ends else None


HEAD_READ_LIMIT = REQUEST_LINE_LIMIT + 2 + HEADERS_LIMIT + 4 + 2


class EdgeStream(IOStream):
    """An IOStream that reads the request head itself: nginx's size limits answered with 414/431 and a JSON
    body, client_header_timeout for a new connection's first head, keepalive_timeout for the idle time before
    a later one; and that gives back its place under the connection caps when it closes (or earlier, once it
    is an authenticated WebSocket: `promote()`)."""

    # IOStream holds ~27 attributes: past 30 in its __dict__, each instance gets a dict of its own (1.6 KB, not
    # 0.3). Ours live in slots.
    __slots__ = ("caps", "address", "limits", "heads", "_counted")

    def __init__(self, sock: socket.socket, *, caps: ConnectionCaps, address: str, limits: EdgeLimits, **kwargs):
        super().__init__(sock, **kwargs)
        self.caps, self.address, self.limits = caps, address, limits
        self.heads = 0
        self._counted = True

    def read_until_regex(self, regex: bytes, max_bytes: int | None = None):
        if regex != HTTP_HEAD_END:
            return super().read_until_regex(regex, max_bytes)
        return asyncio.ensure_future(self._read_head())

    async def _read_head(self) -> bytes:
        first = self.heads == 0
        self.heads += 1
        timer = self.io_loop.call_later(self.limits.header_timeout if first else self.limits.keepalive_timeout,
                                        self.close)
        buf = bytearray()
        try:
            while True:
                chunk = await self.read_bytes(HEAD_READ_LIMIT + 1 - len(buf), partial=True)
                if not buf and not first:  # the next request has begun: its head gets client_header_timeout
                    self.io_loop.remove_timeout(timer)
                    timer = self.io_loop.call_later(self.limits.header_timeout, self.close)
                start = len(buf)
                buf += chunk
                end, refusal = scan_head(buf, start)
                if refusal is None and end is None and len(buf) > HEAD_READ_LIMIT:
                    refusal = (431, "headers", HEADERS_LIMIT)
                if refusal is not None:
                    self._refuse_head(*refusal)
                    raise StreamClosedError()
                if end is not None:
                    self._unread(buf[end:])
                    return bytes(buf[:end])
        finally:
            self.io_loop.remove_timeout(timer)

    def _unread(self, data: bytes | bytearray) -> None:
        """Give back bytes read past the head (the body, or a pipelined request) for HTTP1Connection to read
        next. IOStream has no public unread; no read is pending here, so the front of its buffer is ours."""
        if data:
            self._read_buffer[:0] = data
            self._read_buffer_size += len(data)

    def _refuse_head(self, status: int, part: str, limit: int) -> None:
        reason = "URI Too Long" if status == 414 else "Request Header Fields Too Large"
        what = {"request_line": "the request line", "header": "a header field", "headers": "the headers"}[part]
        log.info("refused a request from %s: %s over %d bytes (%d)", self.address, what, limit, status)
        answer = error_response(status, reason, ErrorCode.MESSAGE_TOO_LARGE, f"{what} exceeds {limit} bytes",
                                {"part": part, "limit": limit})
        try:
            self.write(answer).add_done_callback(lambda _: asyncio.ensure_future(self.linger()))
        except StreamClosedError:
            pass

    async def linger(self) -> None:
        """Close after an error answer the way nginx's lingering_close does: stop writing, then read and drop
        what the client still sends for a while, so the answer is not lost to a reset."""
        deadline = self.io_loop.time() + LINGER_TIME
        try:
            self.socket.shutdown(socket.SHUT_WR)
            while self.io_loop.time() < deadline:
                await gen.with_timeout(min(self.io_loop.time() + LINGER_TIMEOUT, deadline),
                                       self.read_bytes(65536, partial=True), quiet_exceptions=StreamClosedError)
        except (StreamClosedError, OSError, asyncio.TimeoutError, AttributeError):
            pass
        finally:
            self.close()

    def promote(self) -> None:
        """This connection is an authenticated WebSocket now: it leaves the pre-authentication caps."""
        if self._counted:
            self._counted = False
            self.caps.release(self.address)

    def close(self, exc_info=False) -> None:
        super().close(exc_info)
        self.promote()


class EdgeServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTPServer behind our accept handler, connection caps and EdgeStream."""

    def initialize(self, *args, limits: EdgeLimits, on_refused: Callable[[str, str, int], None] | None = None,
                   **kwargs) -> None:
        super().initialize(*args, **kwargs)
        self.limits = limits
        self.caps = ConnectionCaps(limits.max_connections, limits.max_per_address)
        self.on_refused = on_refused

    def add_sockets(self, sockets) -> None:
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = add_accept_handler(sock, self._accepted)

    def _accepted(self, connection: socket.socket, address) -> None:
        if self.ssl_options is not None:
            return self._handle_connection(connection, address)
        host = address[0] if isinstance(address, tuple) else str(address)
        refused = self.caps.admit(host)
        if refused is not None:
            return self._refuse(connection, host, refused)
        try:
            stream = EdgeStream(connection, caps=self.caps, address=host, limits=self.limits,
                                max_buffer_size=self.max_buffer_size, read_chunk_size=self.read_chunk_size)
        except Exception:
            self.caps.release(host)
            connection.close()
            raise
        self.handle_stream(stream, address)
        return None

    def _refuse(self, connection: socket.socket, host: str, scope: str) -> None:
        """Over a cap: a 503 with Retry-After (nginx's limit_conn answer), written best effort, and closed."""
        limit = self.caps.limit if scope == "server" else self.caps.per_address
        message = ("too many open connections" + (" from this address" if scope == "address" else "")
                   + "; retry shortly")
        answer = error_response(503, "Service Unavailable", ErrorCode.RATE_LIMITED, message,
                                {"scope": scope, "limit": limit, "retry_after": 1}, "Retry-After: 1\r\n")
        try:
            connection.setblocking(False)
            connection.send(answer)
        except OSError:
            pass
        finally:
            connection.close()
        if self.on_refused is not None:
            self.on_refused(host, scope, limit)


@dataclass
class OutputBudget:
    """Redis's client-output-buffer-limit for one WebSocket peer: it is too slow once its queued output
    would pass `hard`, or has stayed over `soft` for `soft_seconds`."""

    hard: int
    soft: int
    soft_seconds: float
    over_since: float | None = None

    def verdict(self, pending: int, adding: int, now: float) -> str | None:
        """None while the peer keeps up; "hard" or "soft" when it must be dropped."""
        if pending + adding > self.hard:
            return "hard"
        if pending + adding <= self.soft:
            self.over_since = None
            return None
        if self.over_since is None:
            self.over_since = now
            return None
        return "soft" if now - self.over_since >= self.soft_seconds else None


def largest_message(settings) -> int:
    """An upper bound on one server message: the document twice over (JSON escapes at most double it:
    control characters other than tab and newline are refused, non-ASCII is sent as is), the inserted
    text twice more, and room for the envelope and participants."""
    return 2 * settings.max_document_bytes + 4 * settings.max_message_bytes + (64 << 10)


def output_budget(settings) -> OutputBudget:
    """The budget for one peer from Settings: whatever is configured, the hard limit holds two of the largest
    messages and the soft limit one, so a legitimate document_state always fits through."""
    biggest = largest_message(settings)
    hard = max(settings.output_buffer_limit, 2 * biggest)
    return OutputBudget(hard, min(hard, max(settings.output_buffer_soft_limit, biggest)),
                        settings.output_buffer_soft_seconds)
