"""The transport under attack, over real sockets: peers that never read, slowloris and oversized heads,
connection floods, descriptor exhaustion, frames stuck half-way, and close codes that may not be echoed."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import resource
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcprt.transport import HEADERS_LIMIT, REQUEST_LINE_LIMIT, output_budget

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parent.parent


# -- a WebSocket client made by hand, so it can misbehave ---------------------------------------------

def frame(opcode: int, payload: bytes, *, fin: bool = True, length: int | None = None) -> bytes:
    """One masked client frame; `length` may claim more than `payload` holds (a frame stuck mid-way)."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n <= 0xFFFF:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def text(message: dict) -> bytes:
    return frame(0x1, json.dumps(message).encode())


def handshake(path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


class Raw:
    """A plain socket: connect, maybe shrink its receive buffer, write what we like, read only when asked."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.buffer = b""

    @classmethod
    async def connect(cls, port: int, rcvbuf: int | None = None) -> "Raw":
        sock = socket.socket()
        if rcvbuf:  # before connect, so the window the server sees is small from the start
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        return cls(sock)

    @classmethod
    async def websocket(cls, app, session_id: str, rcvbuf: int | None = None) -> "Raw":
        raw = await cls.connect(app.server.port, rcvbuf)
        await raw.send(handshake(f"/ws?session_id={session_id}"))
        head = await raw.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return raw

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def _more(self, timeout: float) -> bytes:
        chunk = await asyncio.wait_for(self.loop.sock_recv(self.sock, 65536), timeout)
        self.buffer += chunk
        return chunk

    async def read_until(self, marker: bytes, timeout: float = 5.0) -> bytes:
        while marker not in self.buffer:
            if not await self._more(timeout):
                raise ConnectionError("closed before " + repr(marker))
        head, _, self.buffer = self.buffer.partition(marker)
        return head + marker

    async def response(self, timeout: float = 5.0) -> tuple[int, dict, bytes]:
        """One HTTP response: status, headers, body (by Content-Length)."""
        head = (await self.read_until(b"\r\n\r\n", timeout)).decode("latin1")
        status = int(head.split()[1])
        headers = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
        length = int(headers.get("Content-Length", 0))
        while len(self.buffer) < length:
            if not await self._more(timeout):
                break
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body

    async def frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """The next server frame (unmasked): (opcode, payload)."""
        while True:
            if len(self.buffer) >= 2:
                n, at = self.buffer[1] & 0x7F, 2
                if n == 126 and len(self.buffer) >= 4:
                    n, at = struct.unpack("!H", self.buffer[2:4])[0], 4
                elif n == 127 and len(self.buffer) >= 10:
                    n, at = struct.unpack("!Q", self.buffer[2:10])[0], 10
                if n < 126 or at > 2:
                    if len(self.buffer) >= at + n:
                        opcode, payload = self.buffer[0] & 0x0F, self.buffer[at:at + n]
                        self.buffer = self.buffer[at + n:]
                        return opcode, payload
            if not await self._more(timeout):
                raise ConnectionError("closed")

    async def close_frame(self, timeout: float = 5.0) -> int | None:
        """Read up to the server's close frame; its code."""
        while True:
            opcode, payload = await self.frame(timeout)
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None

    async def closed(self, timeout: float = 5.0) -> bool:
        """True once the server has closed (EOF or reset), reading and dropping what is left."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not await self._more(max(0.01, deadline - time.monotonic())):
                    return True
            except (ConnectionResetError, BrokenPipeError):
                return True
            except asyncio.TimeoutError:
                return False
            self.buffer = b""
        return False

    def close(self) -> None:
        self.sock.close()


def queued(app) -> int:
    """The largest output queue the server holds for any of its WebSocket peers right now."""
    return max([p.ws_connection.pending() for p in app.deps.hub.all_peers() if p.ws_connection] or [0])


async def grow(ws, size: int, chunk: int = 9000) -> None:
    """Make the editor's document `size` characters long, by deltas under the message limit."""
    for _ in range(size // chunk):
        await ws.send_msg("realtime_edit", {"change_delta": {"position": 0, "insert": "x" * chunk}})
        await ws.recv_type("edit_ack")


async def connection_row(app, tmp_path, user_id: str) -> tuple:
    await app.settle()
    row, = await app.deps.store.connections(user_id=user_id)
    return row.close_code, row.close_reason


# -- 1. output buffers ------------------------------------------------------------------------------------

async def _flood_until_dropped(app, editor, victim_peer_id: str, edits, limit: int) -> tuple[int, int]:
    """Make broadcasts until the never-reading peer is gone; (edits made, the largest queue seen)."""
    peak = 0
    for n, payload in enumerate(edits, 1):
        await editor.send_msg("realtime_edit", payload)
        await editor.recv_type("edit_ack", timeout=10)
        peak = max(peak, queued(app))
        if all(p.peer_id != victim_peer_id for p in app.deps.hub.all_peers()):
            return n, peak
    raise AssertionError(f"the peer that never reads was not dropped; largest queue {peak}, limit {limit}")


@pytest.mark.parametrize("style", ["deltas", "full_content"])
async def test_a_peer_that_never_reads_is_dropped_at_its_output_limit(start, tmp_path, style):
    if style == "deltas":  # a 300 KB document grown by deltas; each broadcast carries all of it
        app = await start(max_document_bytes=400_000, output_buffer_limit=2 << 20, rate_limit=1000, rate_burst=1000)
        editor = await app.editor("alice")
        await grow(editor, 300_000)
        edits = ({"change_delta": {"position": 0, "insert": "y"}} for _ in range(400))
    else:  # the reference's simple client: every edit is the whole content
        app = await start(max_document_bytes=100_000, max_message_bytes=64_000, output_buffer_limit=2 << 20,
                          rate_limit=1000, rate_burst=1000)
        editor = await app.editor("alice")
        edits = ({"content": ("ab"[i % 2]) * 60_000} for i in range(400))
    limit = output_budget(app.deps.settings).hard
    assert limit == 2 << 20
    mallory = await app.session("mallory")
    raw = await Raw.websocket(app, mallory["session_id"], rcvbuf=4096)  # then never reads
    joined = await editor.recv_type("session_connected")
    made, peak = await _flood_until_dropped(app, editor, joined["payload"]["peer_id"], edits, limit)
    assert peak <= limit  # what the server held for it never passed the hard limit
    left = await editor.recv_type("session_disconnected")
    assert left["payload"]["reason"] == "slow_consumer"
    await app.settle()
    events = [e for e in await app.events(type="slow_consumer")]
    assert len(events) == 1 and events[0]["user_id"] == "mallory" and events[0]["severity"] == "low"
    assert events[0]["details"]["limit"] == "hard" and events[0]["details"]["hard_limit"] == limit
    assert await connection_row(app, tmp_path, "mallory") == (4009, "slow_consumer")
    assert await raw.closed(timeout=10)  # dropped at once: what was in flight, then the end
    await editor.send_msg("heartbeat", {}, "alive")  # the writer on the same document is unharmed
    assert (await editor.recv_type("heartbeat_ack"))["id"] == "alive"
    raw.close()


async def test_a_peer_over_the_soft_limit_for_too_long_is_dropped(start, tmp_path):
    app = await start(max_document_bytes=100_000, output_buffer_limit=64 << 20, output_buffer_soft_limit=1 << 20,
                      output_buffer_soft_seconds=0.5, rate_limit=1000, rate_burst=1000)
    editor = await app.editor("alice")
    await grow(editor, 90_000)
    mallory = await app.session("mallory")
    raw = await Raw.websocket(app, mallory["session_id"], rcvbuf=4096)
    joined = await editor.recv_type("session_connected")

    def slowly():
        for _ in range(2000):
            yield {"change_delta": {"position": 0, "insert": "y"}}

    async def paced():
        for payload in slowly():
            await asyncio.sleep(0.01)
            yield payload

    peak = 0
    async for payload in paced():
        await editor.send_msg("realtime_edit", payload)
        await editor.recv_type("edit_ack", timeout=10)
        peak = max(peak, queued(app))
        if all(p.peer_id != joined["payload"]["peer_id"] for p in app.deps.hub.all_peers()):
            break
    else:
        raise AssertionError("not dropped")
    assert peak < 8 << 20  # well under the hard limit: the soft one ended it
    await app.settle()
    event, = await app.events(type="slow_consumer")
    assert event["details"]["limit"] == "soft"
    assert await connection_row(app, tmp_path, "mallory") == (4009, "slow_consumer")
    raw.close()


async def test_sync_requests_in_a_loop_are_paced_and_the_queue_stays_bounded(start, tmp_path):
    app = await start(max_document_bytes=400_000, output_buffer_limit=2 << 20, rate_limit=1000, rate_burst=1000)
    editor = await app.editor("alice")
    await grow(editor, 300_000)
    mallory = await app.session("mallory")
    raw = await Raw.websocket(app, mallory["session_id"], rcvbuf=4096)
    await editor.recv_type("session_connected")
    peak, sent = 0, 0
    for i in range(300):
        try:
            await asyncio.wait_for(raw.send(text({"id": f"s{i}", "type": "sync_request",
                                                  "payload": {"since_revision": 0}})), 2)
        except (asyncio.TimeoutError, ConnectionError):
            break  # dropped, or the server stopped reading us
        sent += 1
        await asyncio.sleep(0.002)
        peak = max(peak, queued(app))
    limit = output_budget(app.deps.settings).hard
    assert peak <= limit
    await app.settle()
    refused = await app.events(type="rate_limited")
    assert refused and refused[0]["details"]["message_type"] == "sync_request"
    assert len(refused) <= 5  # coalesced: one a second, not one per request
    raw.close()


async def test_a_reader_gets_each_sync_answer_and_the_pacing_refuses_only_an_unread_one(start):
    app = await start()
    ws = await app.editor()
    await grow(ws, 27_000)
    for i in range(8):  # a client that reads each answer is never refused
        await ws.send_msg("sync_request", {"since_revision": 0}, f"sync-{i}")
        answer = await ws.recv_type("sync_response", "document_state", "error")
        assert answer["type"] == "sync_response" and answer["id"] == f"sync-{i}"
        assert len(answer["payload"]["ops"]) == 3


async def test_a_default_server_fits_a_full_size_document_state_through(start):
    app = await start()
    budget = output_budget(app.deps.settings)
    assert budget.hard == 16 << 20 and budget.soft == 4 << 20 and budget.soft_seconds == 10.0
    # the largest document_state: 1 MB of content that JSON escapes to twice its size
    assert budget.verdict(0, 2 * app.deps.settings.max_document_bytes + 4096, 0.0) is None
    assert budget.verdict(0, 2 * app.deps.settings.max_document_bytes + 4096, 60.0) is None


# -- 2. HTTP heads, timeouts and connection caps (nginx's rules) -------------------------------------------

async def _ask(app, request: bytes) -> tuple[int, dict, bytes]:
    raw = await Raw.connect(app.server.port)
    try:
        await raw.send(request)
        return await raw.response()
    finally:
        raw.close()


@pytest.mark.parametrize("case,status,part", [
    ("request_line", 414, "request_line"),
    ("header", 431, "header"),
    ("headers", 431, "headers"),
    ("endless_header", 431, "header"),
    ("endless_headers", 431, "headers"),
])
async def test_oversized_heads_get_414_or_431_with_a_json_body(app, case, status, part):
    line = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    request = {
        "request_line": b"GET /health?" + b"a" * REQUEST_LINE_LIMIT + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        "header": line + b"X-Big: " + b"v" * 8200 + b"\r\n\r\n",
        "headers": line + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(HEADERS_LIMIT // 100)) + b"\r\n",
        "endless_header": line + b"X-Big: " + b"v" * 100_000,  # never ends: answered at the limit, not buffered
        "endless_headers": line + b"X-H: v\r\n" * 20_000,
    }[case]
    got, headers, body = await _ask(app, request)
    assert got == status
    assert headers["Content-Type"].startswith("application/json") and headers["Connection"] == "close"
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message", "details"} and error["code"] == "MESSAGE_TOO_LARGE"
    assert error["details"]["part"] == part


async def test_heads_at_the_limits_are_served(app):
    path = b"/health?" + b"a" * (REQUEST_LINE_LIMIT - len(b"GET /health? HTTP/1.1") - 1)
    request = b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"v" * (8192 - 7) + b"\r\n\r\n"
    assert len(request.split(b"\r\n")[0]) <= REQUEST_LINE_LIMIT
    got, _, body = await _ask(app, request)
    assert got == 200 and json.loads(body)["status"] == "healthy"


async def test_a_body_sent_with_the_head_and_pipelined_requests_still_arrive(app):
    body = json.dumps({"user_id": "pipelined"}).encode()
    raw = await Raw.connect(app.server.port)
    await raw.send(b"POST /api/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (len(body), body) + b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    first, _, created = await raw.response()
    second, _, health = await raw.response()
    assert first == 201 and json.loads(created)["user_id"] == "pipelined"
    assert second == 200 and json.loads(health)["status"] == "healthy"
    raw.close()


async def test_slowloris_heads_idle_keepalives_and_stalled_bodies_time_out(start):
    app = await start(header_timeout=0.5, keepalive_timeout=0.8, body_timeout=0.5)
    started = time.monotonic()
    partial = await Raw.connect(app.server.port)
    await partial.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    idle = await Raw.connect(app.server.port)
    await idle.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert (await idle.response())[0] == 200  # then it says nothing more
    stalled = await Raw.connect(app.server.port)
    await stalled.send(b"POST /api/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"us")
    silent = await Raw.connect(app.server.port)  # connects and never sends a byte
    for raw in (partial, idle, stalled, silent):
        assert await raw.closed(timeout=5)
        raw.close()
    assert time.monotonic() - started < 5


async def test_a_keepalive_connection_gets_the_header_timeout_once_its_next_request_begins(start):
    app = await start(header_timeout=0.6, keepalive_timeout=30)
    raw = await Raw.connect(app.server.port)
    await raw.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert (await raw.response())[0] == 200
    await asyncio.sleep(0.8)  # idle longer than the header timeout: kept (keepalive_timeout applies)
    await raw.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert (await raw.response())[0] == 200
    await raw.send(b"GET /health HTTP/1.1\r\n")  # a head begun and never finished
    started = time.monotonic()
    assert await raw.closed(timeout=5) and time.monotonic() - started < 3
    raw.close()


async def _admitted_or_answered(raw: Raw, caps, before: int) -> bool:
    """Wait until the server has either counted this connection (True) or answered it (False)."""
    for _ in range(500):
        if caps.total > before:
            return True
        if raw.buffer:
            return False
        try:
            await raw._more(0.01)
        except asyncio.TimeoutError:
            pass
    raise AssertionError("the server neither admitted nor answered the connection")


async def test_partial_header_connections_from_one_address_are_capped(start):
    app = await start(max_http_connections_per_address=20)
    caps = app.server._servers[0].caps
    kept, refused = [], 0
    for _ in range(200):
        before = caps.total
        raw = await Raw.connect(app.server.port)
        admitted = await _admitted_or_answered(raw, caps, before)
        if admitted:
            await raw.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # never finished
            kept.append(raw)
            continue
        status, headers, body = await raw.response()
        assert status == 503 and headers["Retry-After"] == "1"
        error = json.loads(body)["error"]
        assert error["code"] == "RATE_LIMITED" and error["details"] == {"scope": "address", "limit": 20,
                                                                          "retry_after": 1}
        refused += 1
        raw.close()
    assert len(kept) == 20 and refused == 180
    assert caps.by_address == {"127.0.0.1": 20}
    await app.settle()
    written = await app.events(type="connection_limit")
    suppressed = await app.events(type="events_suppressed")
    assert 1 <= len(written) <= 30 and written[0]["client_addr"] == "127.0.0.1"
    for raw in kept:
        raw.close()
    for _ in range(100):
        if not caps.total:
            break
        await asyncio.sleep(0.02)
    assert (await app.fetch("GET", "/health")).status == 200
    assert len(written) + sum(e["details"]["suppressed"] for e in suppressed) <= 180


async def test_the_total_cap_refuses_and_authenticated_sockets_leave_it(start):
    app = await start(max_http_connections=3)
    editors = [await app.editor(f"user{i}") for i in range(5)]  # each was pre-auth for its handshake only
    assert app.server._servers[0].caps.total == 0
    caps, hold = app.server._servers[0].caps, []
    for _ in range(3):
        before = caps.total
        raw = await Raw.connect(app.server.port)
        assert await _admitted_or_answered(raw, caps, before)
        await raw.send(b"GET /health HTTP/1.1\r\n")
        hold.append(raw)
    over = await Raw.connect(app.server.port)
    status, _, body = await over.response()
    assert status == 503 and json.loads(body)["error"]["details"]["scope"] == "server"
    for raw in hold + [over]:
        raw.close()
    await editors[0].send_msg("heartbeat", {}, "still")
    assert (await editors[0].recv_type("heartbeat_ack"))["id"] == "still"


# -- 3. descriptor exhaustion -------------------------------------------------------------------------------

def _serve(tmp_path, soft: int, hard: int, *extra: str) -> subprocess.Popen:
    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return subprocess.Popen(
        [sys.executable, "-m", "mcprt", "serve", "--port", "0", "--db", str(tmp_path / "fd.db"), *extra],
        cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, preexec_fn=limit, text=True)


async def _port_of(proc: subprocess.Popen, lines: list[str]) -> int:
    loop = asyncio.get_running_loop()
    while True:
        line = await asyncio.wait_for(loop.run_in_executor(None, proc.stderr.readline), 20)
        assert line, "the server exited: " + "".join(lines)
        lines.append(line)
        found = re.search(r"serving http://\S+:(\d+)/", line)
        if found:
            return int(found.group(1))


async def _health(port: int) -> int | None:
    sock = socket.socket()
    sock.setblocking(False)
    raw = Raw(sock)
    try:
        await asyncio.wait_for(raw.loop.sock_connect(sock, ("127.0.0.1", port)), 2)
        await raw.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        return (await raw.response(timeout=2))[0]
    except (OSError, asyncio.TimeoutError, ConnectionError):
        return None
    finally:
        sock.close()


async def test_running_out_of_descriptors_logs_once_backs_off_and_recovers(tmp_path):
    proc = _serve(tmp_path, 64, 64)
    lines: list[str] = []
    try:
        port = await _port_of(proc, lines)
        assert any("file descriptor limit 64 (hard 64)" in line for line in lines)
        held = []
        for _ in range(150):  # past the limit: the rest wait in the listen backlog
            sock = socket.socket()
            sock.setblocking(False)
            try:
                await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), 0.5)
                sock.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            except (OSError, asyncio.TimeoutError):
                pass
            held.append(sock)
        await asyncio.sleep(3)  # six back-offs' worth of the listener staying readable
        assert await _health(port) is None  # no descriptor to accept it with
        for sock in held:
            sock.close()
        for _ in range(40):
            if await _health(port) == 200:
                break
            await asyncio.sleep(0.25)
        else:
            raise AssertionError("the server did not serve again once descriptors were free")
    finally:
        proc.terminate()
        rest = await asyncio.get_running_loop().run_in_executor(None, proc.stderr.read)
        proc.wait(10)
        proc.stderr.close()
    log = "".join(lines) + rest
    about_accept = [line for line in log.splitlines() if "accept" in line.lower() or "Too many open files" in line]
    assert 1 <= len(about_accept) <= 3, about_accept
    assert "Traceback" not in log
    assert len(log) < 20_000


async def test_the_soft_descriptor_limit_is_raised_to_the_hard_one_at_start(tmp_path):
    proc = _serve(tmp_path, 256, 2048)
    lines: list[str] = []
    try:
        await _port_of(proc, lines)
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stderr.close()
    assert any("file descriptor limit 2048 (hard 2048)" in line for line in lines), lines


# -- 4. frames stuck half-way --------------------------------------------------------------------------------

async def test_the_frame_cap_is_four_messages_and_at_least_64_kib(start, tmp_path):
    app = await start()
    assert app.server.app.settings["websocket_max_message_size"] == 64 << 10
    big = await start(max_message_bytes=40_000, db=str(tmp_path / "big.db"))  # one server per SQLite file
    assert big.server.app.settings["websocket_max_message_size"] == 160_000


async def test_a_frame_over_the_cap_closes_with_1009_and_one_under_it_is_too_large_but_kept(app):
    session = await app.session()
    raw = await Raw.websocket(app, session["session_id"])
    await raw.frame()  # document_state
    under = json.dumps({"id": "big", "type": "heartbeat", "payload": {}, "pad": "x" * 60_000}).encode()
    assert 10240 < len(under) < 64 << 10
    await raw.send(frame(0x1, under))
    opcode, payload = await raw.frame()
    assert opcode == 0x1 and json.loads(payload)["payload"]["code"] == "MESSAGE_TOO_LARGE"
    # a frame that claims one byte more than the cap, its payload never sent: refused on its header alone
    await raw.send(frame(0x1, b"", length=(64 << 10) + 1))
    assert await raw.close_frame() == 1009
    raw.close()


# -- 5. close codes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("payload,answer", [
    (struct.pack("!H", 1000), 1000),
    (struct.pack("!H", 1001) + b"bye", 1001),
    (struct.pack("!H", 1014), 1014),
    (struct.pack("!H", 3000), 3000),
    (struct.pack("!H", 4999), 4999),
    (struct.pack("!H", 999), 1002),
    (struct.pack("!H", 1004), 1002),
    (struct.pack("!H", 1005), 1002),
    (struct.pack("!H", 1006), 1002),
    (struct.pack("!H", 1015), 1002),
    (struct.pack("!H", 1016), 1002),
    (struct.pack("!H", 2999), 1002),
    (struct.pack("!H", 5000), 1002),
    (struct.pack("!H", 65535), 1002),
    (b"\x03", 1002),
    (struct.pack("!H", 1000) + b"\xff\xfe", 1007),
    (b"", None),
])
async def test_close_codes_are_echoed_only_when_valid_on_the_wire(app, payload, answer):
    session = await app.session()
    raw = await Raw.websocket(app, session["session_id"])
    await raw.frame()  # document_state
    await raw.send(frame(0x8, payload))
    assert await raw.close_frame() == answer
    assert await raw.closed()
    raw.close()


# -- the pure pieces ------------------------------------------------------------------------------------------

async def test_scan_head_reads_a_head_in_pieces_the_same_as_whole():
    from mcprt.transport import scan_head
    heads = [b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody", b"\r\nGET / HTTP/1.1\r\n\r\n",
             b"GET /" + b"a" * 8200 + b" HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nX: " + b"v" * 8190 + b"\r\n\r\n"]
    for head in heads:
        whole = scan_head(head, 0)
        buf, got = bytearray(), (None, None)
        for i in range(0, len(head), 7):
            start = len(buf)
            buf += head[i:i + 7]
            got = scan_head(buf, start)
            if got != (None, None):
                break
        assert got[1] == whole[1] and (got[0] is None or got[0] == whole[0])


async def test_connection_caps_count_per_address_and_in_total():
    from mcprt.transport import ConnectionCaps
    caps = ConnectionCaps(total=3, per_address=2)
    assert [caps.admit("a"), caps.admit("a"), caps.admit("a")] == [None, None, "address"]
    assert caps.admit("b") is None and caps.admit("c") == "server"
    caps.release("a")
    caps.release("a")
    assert caps.by_address == {"b": 1} and caps.admit("c") is None


async def test_output_budget_hard_at_once_soft_only_after_its_duration():
    from mcprt.transport import OutputBudget
    budget = OutputBudget(hard=100, soft=50, soft_seconds=10)
    assert budget.verdict(90, 11, 0.0) == "hard"
    assert budget.verdict(40, 20, 0.0) is None and budget.verdict(60, 0, 9.9) is None
    assert budget.verdict(60, 0, 10.0) == "soft"
    assert budget.verdict(10, 0, 11.0) is None and budget.verdict(60, 0, 12.0) is None  # below soft: reset


async def _acks(raw: Raw, count: int) -> list[str]:
    """The ids of the next `count` heartbeat_acks (other messages, presence say, skipped)."""
    ids = []
    while len(ids) < count:
        opcode, payload = await raw.frame()
        if opcode == 0x1 and json.loads(payload)["type"] == "heartbeat_ack":
            ids.append(json.loads(payload)["id"])
    return ids


@pytest.mark.asyncio
async def test_frames_are_read_alike_whole_in_a_burst_in_pieces_padded_or_fragmented(app):
    raw = await Raw.websocket(app, (await app.session("frames"))["session_id"])
    try:
        def beat(id_: str) -> bytes:
            return json.dumps({"id": id_, "type": "heartbeat", "payload": {}}).encode()

        await raw.send(b"".join(frame(0x1, beat(f"burst-{i}")) for i in range(5)))  # several frames in one read
        assert await _acks(raw, 5) == [f"burst-{i}" for i in range(5)]
        await raw.send(frame(0x1, beat("padded") + b" " * 300))  # a 16-bit length
        whole = frame(0x1, beat("trickled"))
        for i in range(len(whole)):  # a byte at a time: never whole in the buffer until the last
            await raw.send(whole[i:i + 1])
            await asyncio.sleep(0.002)
        message = beat("fragmented")
        await raw.send(frame(0x1, message[:10], fin=False) + frame(0x9, b"ping") + frame(0x0, message[10:]))
        assert await _acks(raw, 3) == ["padded", "trickled", "fragmented"]
        await raw.send(frame(0x1, b"\xff\xfe not UTF-8"))
        opcode, payload = await raw.frame()
        while json.loads(payload)["type"] != "error":
            opcode, payload = await raw.frame()
        assert json.loads(payload)["payload"]["code"] == "INVALID_MESSAGE"
        await raw.send(frame(0x1, beat("after")))
        assert await _acks(raw, 1) == ["after"]  # the connection is intact
    finally:
        raw.sock.close()


def _reserved(data: bytes) -> bytes:
    """The frame with RSV2 set, a bit no extension agreed on may set."""
    return bytes([data[0] | 0x20]) + data[1:]


@pytest.mark.parametrize("bad", [
    _reserved(frame(0x1, b"{}")),                                                # an extension nobody agreed on
    frame(0x0, b"more"),                                                         # a continuation of nothing
    frame(0x1, b'{"id":', fin=False) + frame(0x1, b"{}"),                        # a new message inside a fragmented one
    frame(0x9, b"ping", fin=False),                                              # a fragmented control frame
])
@pytest.mark.asyncio
async def test_frames_that_break_the_framing_rules_drop_the_connection_and_only_it(app, bad):
    session = await app.session()
    raw = await Raw.websocket(app, session["session_id"])
    other = await Raw.websocket(app, session["session_id"])
    try:
        await raw.frame()  # document_state
        await raw.send(bad)
        assert await raw.closed()
        await other.send(frame(0x1, json.dumps({"id": "still", "type": "heartbeat", "payload": {}}).encode()))
        assert await _acks(other, 1) == ["still"]
    finally:
        raw.close()
        other.close()


@pytest.mark.asyncio
async def test_frames_sent_with_the_handshake_are_answered_in_order_after_the_join(app):
    """Bytes that arrive with the upgrade request, and while the socket joins its document, are held and
    handled once the join is done, in the order sent."""
    session = await app.session("eager")
    raw = await Raw.connect(app.server.port)
    beats = b"".join(frame(0x1, json.dumps({"id": f"early-{i}", "type": "heartbeat", "payload": {}}).encode())
                     for i in range(3))
    try:
        await raw.send(handshake(f"/ws?session_id={session['session_id']}") + beats)
        head = await raw.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        opcode, payload = await raw.frame()
        assert json.loads(payload)["type"] == "document_state"  # the join first, then the early frames
        assert await _acks(raw, 3) == ["early-0", "early-1", "early-2"]
        await raw.send(frame(0x1, json.dumps({"id": "later", "type": "heartbeat", "payload": {}}).encode()))
        assert await _acks(raw, 1) == ["later"]
    finally:
        raw.close()
