"""The load side of `bench`: a raw keep-alive HTTP client, `websockets` clients, and one coroutine per measurement."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field

import psutil
from websockets.asyncio.client import connect as ws_open

STAMP = "2025-11-07T10:00:00Z"
TEXTS = ("abcdefghij" * 20, "klmnopqrst" * 20)  # two 200-byte inserts, taken in turn
LEAN = "mcprt.ops.v1"  # the subprotocol of lean mode: acks and broadcasts carry the op and length, no content
STALL = 30.0  # seconds a measurement may wait beyond its expected length before it fails
now = time.perf_counter


@dataclass
class Target:
    """One running server under test: `mcprt` (the real one) or `bare` (the baseline)."""

    kind: str
    port: int
    pid: int
    errors: list = field(default_factory=list)  # error messages the server sent

    @property
    def real(self) -> bool:
        return self.kind == "mcprt"

    @property
    def stored_sessions_path(self) -> str:
        return "/api/sessions" if self.real else "/api/stored-sessions"

    def rss(self) -> int:
        return psutil.Process(self.pid).memory_info().rss

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.pid).cpu_times()
        return times.user + times.system

    def ws_url(self, session_id: str, document_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws?session_id={session_id}&document_id={document_id}"


class CpuMeter:
    """The server's CPU use, in percent of one core, over a `with` block."""

    def __init__(self, target: Target):
        self.target, self.percent = target, 0.0

    def __enter__(self) -> "CpuMeter":
        self._cpu, self._wall = self.target.cpu_seconds(), now()
        return self

    def __exit__(self, *exc) -> None:
        self.percent = 100.0 * (self.target.cpu_seconds() - self._cpu) / max(now() - self._wall, 1e-9)


class HttpClient:
    """A minimal HTTP/1.1 keep-alive client over asyncio streams (cheap enough not to be the bottleneck)."""

    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> "HttpClient":
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc) -> None:
        self.writer.close()
        await self.writer.wait_closed()

    async def post(self, path: str, body: bytes, headers: bytes = b"") -> tuple[int, bytes]:
        """One request on the kept-alive connection (`headers`: more header lines, each ending in CRLF);
        the status and the body."""
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n%s"
                          b"Content-Length: %d\r\n\r\n%s" % (path.encode(), self.port, headers, len(body), body))
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise RuntimeError(f"response without Content-Length: {head[:200]!r}")
        return int(head[9:12]), await self.reader.readexactly(length)


async def create_sessions(target: Target, count: int, path: str = "/api/sessions") -> list[str]:
    """`count` new session ids (sequential requests on one connection)."""
    ids = []
    async with HttpClient(target.port) as http:
        for i in range(count):
            status, body = await http.post(path, b'{"user_id":"bench-%d"}' % i)
            if status != 201:
                raise RuntimeError(f"POST {path} answered {status}: {body[:300]!r}")
            ids.append(json.loads(body)["session_id"])
    return ids


async def create_document(target: Target, session_id: str, document_id: str, format_: str = "text") -> None:
    """POST /api/documents as the session's user."""
    async with HttpClient(target.port) as http:
        status, body = await http.post("/api/documents", json.dumps({"document_id": document_id, "format": format_})
                                       .encode(), b"Authorization: Bearer %s\r\n" % session_id.encode())
    if status != 201:
        raise RuntimeError(f"POST /api/documents answered {status}: {body[:300]!r}")


async def _open(target: Target, session_id: str, document_id: str, subprotocols: list[str] | None = None):
    """A `websockets` connection and its first message, which must be document_state on the real server."""
    conn = await ws_open(target.ws_url(session_id, document_id), max_size=None, max_queue=None, compression=None,
                         ping_interval=None, open_timeout=30, close_timeout=5, subprotocols=subprotocols)
    first = await asyncio.wait_for(conn.recv(), 30)
    if message_type(first) != "document_state":
        raise RuntimeError(f"first message is not document_state: {first[:300]}")
    return conn, first


async def ws_connect(target: Target, session_id: str, document_id: str):
    """A `websockets` connection past its first message (document_state on the real server)."""
    return (await _open(target, session_id, document_id))[0]


async def ws_join(target: Target, session_id: str, document_id: str, lean: bool) -> tuple[object, dict]:
    """A connection in lean mode (offering LEAN) or reference mode, and its document_state payload."""
    conn, first = await _open(target, session_id, document_id, [LEAN] if lean else None)
    if conn.subprotocol != (LEAN if lean else None):
        raise RuntimeError(f"the server chose subprotocol {conn.subprotocol!r}, lean={lean}")
    return conn, json.loads(first)["payload"]


def message_id(text: str) -> str:
    """The id of a compact JSON envelope, which both servers write first: {"id":"...",...}."""
    return text[7:text.index('"', 7)] if text.startswith('{"id":"') else ""


def message_type(text: str) -> str:
    """The envelope type, found without decoding the whole message."""
    at = text.find('"type":"')
    return text[at + 8:text.index('"', at + 8)] if at >= 0 else ""


def heartbeat(id_: str) -> str:
    return '{"id":"%s","type":"heartbeat","payload":{},"timestamp":"%s"}' % (id_, STAMP)


def edit(i: int, type_: str = "realtime_edit") -> str:
    """Edit e<i>: the first inserts 200 bytes, each later one replaces the previous 200 bytes."""
    delete = ',"delete":200' if i else ""
    return ('{"id":"e%d","type":"%s","payload":{"change_delta":{"position":0,"insert":"%s"%s}},"timestamp":"%s"}'
            % (i, type_, TEXTS[i % 2], delete, STAMP))


def replace(i: int, position: int, base_revision: int) -> str:
    """Edit e<i>, made against `base_revision`: the 200 bytes at `position` replaced by 200 others (the
    document keeps its size)."""
    return ('{"id":"e%d","type":"realtime_edit","payload":{"base_revision":%d,"change_delta":{"position":%d,'
            '"insert":"%s","delete":200}},"timestamp":"%s"}' % (i, base_revision, position, TEXTS[i % 2], STAMP))


def utf8_size(text: str) -> int:
    """Bytes of a received message in UTF-8 (an ASCII str says so without encoding)."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def note_error(target: Target, text: str) -> None:
    if message_type(text) == "error":
        target.errors.append(text[:500])


# -- measurements ------------------------------------------------------------------


async def session_latency(target: Target, count: int, warmup: int = 50, token: str | None = None) -> dict:
    """Sequential POST /api/sessions on one keep-alive connection (with a JWT: its user, not the body's):
    per-request latency."""
    samples = []
    headers = b"Authorization: Bearer %s\r\n" % token.encode() if token else b""
    async with HttpClient(target.port) as http:
        for i in range(warmup + count):
            started = now()
            status, body = await http.post("/api/sessions", b"{}" if token else b'{"user_id":"bench-%d"}' % i,
                                           headers)
            if status != 201:
                raise RuntimeError(f"POST /api/sessions answered {status}: {body[:300]!r}")
            if i >= warmup:
                samples.append(now() - started)
    return {"latency": samples}


async def connect_latency(target: Target, count: int) -> dict:
    """Open a socket and wait for its first message, one at a time, with one other editor on the document."""
    session_id = (await create_sessions(target, 1))[0]
    holder = await ws_connect(target, session_id, "bench-connect")
    samples = []
    try:
        for _ in range(count):
            started = now()
            conn = await ws_connect(target, session_id, "bench-connect")
            samples.append(now() - started)
            await conn.close()
    finally:
        await holder.close()
    return {"latency": samples}


async def heartbeat_rate(target: Target, seconds: float) -> dict:
    """Heartbeat round trips on one connection, one at a time, for `seconds`."""
    session_id = (await create_sessions(target, 1))[0]
    conn = await ws_connect(target, session_id, "bench-heartbeat")
    samples, i = [], 0
    with CpuMeter(target) as cpu:
        started = now()
        async with asyncio.timeout(STALL + seconds):
            while now() - started < seconds:
                id_ = f"h{i}"
                sent = now()
                await conn.send(heartbeat(id_))
                while True:
                    text = await conn.recv()
                    note_error(target, text)
                    if message_id(text) == id_:
                        break
                samples.append(now() - sent)
                i += 1
        elapsed = now() - started
    await conn.close()
    return {"rate": i / elapsed, "latency": samples, "cpu": cpu.percent}


async def _pipeline(target: Target, conn, make, window: int, sent_at: dict, seconds: float | None = None,
                    count: int | None = None, least: int = 0, replies: list | None = None) -> tuple[list[float], int]:
    """Send make(0), make(1), ... keeping up to `window` unanswered, for `seconds` (and at least `least`
    messages) or `count` messages.

    A reply carries its message's id (edit_ack; the bare server echoes). Returns the latencies and how many;
    each reply's arrival time and size in bytes go to `replies` when given.
    """
    samples, pending, next_ = [], {}, 0
    deadline = now() + seconds if seconds is not None else float("inf")
    count = count if count is not None else 1 << 62

    async def send_next() -> None:
        nonlocal next_
        id_ = f"e{next_}"
        sent_at[id_] = pending[id_] = now()
        await conn.send(make(next_))
        next_ += 1
    while next_ < min(window, count):
        await send_next()
    async with asyncio.timeout(STALL + (seconds or count / 100) + least / 10):
        while pending:
            text = await conn.recv()
            note_error(target, text)
            started = pending.pop(message_id(text), None)
            if started is None:
                continue
            samples.append(now() - started)
            if replies is not None:
                replies.append((now(), utf8_size(text)))
            if next_ < count and (now() < deadline or next_ < least):
                await send_next()
    return samples, next_


async def edit_rate(target: Target, seconds: float, window: int, document_id: str) -> dict:
    """200-byte edits pipelined on one connection for `seconds`, counted by their acks."""
    session_id = (await create_sessions(target, 1))[0]
    conn = await ws_connect(target, session_id, document_id)
    with CpuMeter(target) as cpu:
        started = now()
        samples, sent = await _pipeline(target, conn, edit, window, {}, seconds=seconds)
        elapsed = now() - started
    await conn.close()
    return {"rate": sent / elapsed, "latency": samples, "cpu": cpu.percent}


async def loop_rates(target: Target, heartbeat_seconds: float, edit_seconds: float, window: int,
                     prefix: str) -> dict:
    """Heartbeat round trips, then edits with 1 and with `window` in flight: the rows that compare event loops."""
    runs = {"heartbeat": await heartbeat_rate(target, heartbeat_seconds),
            "edits_1": await edit_rate(target, edit_seconds, 1, f"{prefix}-1"),
            "edits_window": await edit_rate(target, edit_seconds, window, f"{prefix}-w")}
    return {f"{key}_{field}": run[field] for key, run in runs.items() for field in ("rate", "latency")}


async def edit_rates(target: Target, seconds: float, window: int, document_id: str) -> dict:
    """edit_rate with `window` in flight, then with one: rates, latencies, and server CPU-seconds per edit at one."""
    piped = await edit_rate(target, seconds, window, document_id)
    single = await edit_rate(target, seconds, 1, f"{document_id}-1")
    return {**piped, "rate_1": single["rate"], "latency_1": single["latency"],
            "cpu_per_1": single["cpu"] / 100 / single["rate"]}


async def _view(target: Target, conn, wanted: str, count: int, sent_at: dict, samples: list) -> float:
    """Read until `count` messages of type `wanted` arrived; the time of the last one."""
    needle, got = f'"type":"{wanted}"', 0
    async with asyncio.timeout(STALL + count / 100):
        while got < count:
            text = await conn.recv()
            if text.find(needle, 0, 120) < 0:
                note_error(target, text)
                continue
            id_ = message_id(text)
            samples.append(now() - sent_at[id_[:-10] if id_.endswith("-broadcast") else id_])
            got += 1
    return now()


async def fan_out_rate(target: Target, viewers: int, count: int, window: int, document_id: str) -> dict:
    """One editor, `viewers` readers on one document: deliveries per second (the bare server broadcasts)."""
    session_id = (await create_sessions(target, 1))[0]
    editor = await ws_connect(target, session_id, document_id)
    readers = [await ws_connect(target, session_id, document_id) for _ in range(viewers)]
    await _drain([editor, *readers])
    type_ = "realtime_edit" if target.real else "broadcast"
    sent_at, samples = {}, []
    with CpuMeter(target) as cpu:
        started = now()
        views = [asyncio.create_task(_view(target, r, type_, count, sent_at, samples)) for r in readers]
        await _pipeline(target, editor, lambda i: edit(i, type_), window, sent_at, count=count)
        last = max(await asyncio.gather(*views))
        elapsed = last - started
    await asyncio.gather(*(conn.close() for conn in (editor, *readers)))
    rate = viewers * count / elapsed
    return {"rate": rate, "latency": samples, "cpu": cpu.percent, "per_cpu_second": rate / max(cpu.percent / 100, 1e-9)}


async def _drain(conns, quiet: float = 0.3) -> None:
    """Read and drop what is queued (presence from joins) until nothing arrives for `quiet` seconds."""
    async def drain(conn) -> None:
        try:
            while True:
                await asyncio.wait_for(conn.recv(), quiet)
        except asyncio.TimeoutError:
            pass
    await asyncio.gather(*(drain(c) for c in conns))


async def many_connections(target: Target, count: int, per_document: int, heartbeat_seconds: float,
                           keep: int, idle_seconds: float) -> dict:
    """RSS per connection for `count` sockets, heartbeat latency while they are open, idle CPU with `keep` open."""
    session_ids = await create_sessions(target, count)
    await asyncio.sleep(0.5)
    rss_before = target.rss()
    gate = asyncio.Semaphore(50)

    async def open_one(i: int):
        async with gate:
            return await ws_connect(target, session_ids[i], f"bench-many-{i // per_document}")
    conns = await asyncio.gather(*(open_one(i) for i in range(count)))
    pending: dict[str, float] = {}
    samples: list[float] = []

    async def read(conn) -> None:
        async for text in conn:
            started = pending.pop(message_id(text), None)
            if started is not None:
                samples.append(now() - started)
            note_error(target, text)
    readers = [asyncio.create_task(read(c)) for c in conns]
    await asyncio.sleep(1.0)
    rss_after = target.rss()

    async def beat(i: int, conn) -> None:
        await asyncio.sleep(random.random())
        deadline, n = now() + heartbeat_seconds, 0
        while now() < deadline:
            id_ = f"h{i}-{n}"
            pending[id_] = now()
            await conn.send(heartbeat(id_))
            n += 1
            await asyncio.sleep(1.0)
    await asyncio.gather(*(beat(i, c) for i, c in enumerate(conns)))
    await asyncio.sleep(0.5)
    await asyncio.gather(*(conn.close() for conn in conns[keep:]))
    await asyncio.sleep(1.0)
    with CpuMeter(target) as idle:
        await asyncio.sleep(idle_seconds)
    await asyncio.gather(*(conn.close() for conn in conns[:keep]))
    await asyncio.gather(*readers, return_exceptions=True)
    if pending:
        target.errors.append(f"{len(pending)} heartbeats were never answered")
    return {"rss_per_connection": (rss_after - rss_before) / count, "latency": samples,
            "unanswered": len(pending), "idle_cpu": idle.percent}


async def session_memory(target: Target, count: int) -> dict:
    """Server RSS growth per 1,000 sessions created (and kept) by the server."""
    await asyncio.sleep(0.3)
    before = target.rss()
    await create_sessions(target, count, target.stored_sessions_path)
    await asyncio.sleep(0.5)
    return {"rss_per_1000": (target.rss() - before) / count * 1000}


# -- document sizes ----------------------------------------------------------------

# (label, characters, title); decimal units, since the server's document cap is 1,000,000 bytes
SIZES = (("1k", 1_000, "1 KB"), ("100k", 100_000, "100 KB"), ("1m", 1_000_000, "1 MB"))
IN_FLIGHT = (1, 100)  # edits unanswered at a time on the one connection
FILL_CHUNK = 9_000  # characters a filling edit inserts: its message stays under the 10 KB message limit
MODES = (("lean", True), ("ref", False))


def prose(size: int) -> str:
    """ASCII text of exactly `size` characters."""
    words = "the quick brown fox jumps over the lazy dog while editors type in a shared document ".split()
    rng, parts, total = random.Random(size), [], 0
    while total < size:
        parts.append(rng.choice(words) + " ")
        total += len(parts[-1])
    return "".join(parts)[:size]


async def fill_document(target: Target, document_id: str, size: int) -> None:
    """A new text document of `size` characters, filled as a client would: edits of at most FILL_CHUNK
    characters, each appended at the end and named against the revision the previous one made."""
    session_id = (await create_sessions(target, 1))[0]
    await create_document(target, session_id, document_id, "text")
    conn, state = await ws_join(target, session_id, document_id, lean=True)
    text, revision = prose(size), state["revision"]
    chunks = [text[at:at + FILL_CHUNK] for at in range(0, size, FILL_CHUNK)]

    def fill(i: int) -> str:
        return json.dumps({"id": f"e{i}", "type": "realtime_edit", "timestamp": STAMP, "payload": {
            "base_revision": revision + i, "change_delta": {"position": i * FILL_CHUNK, "insert": chunks[i]}}},
            separators=(",", ":"))
    await _pipeline(target, conn, fill, 16, {}, count=len(chunks))
    await conn.close()


async def sized_edit_rate(target: Target, document_id: str, lean: bool, window: int, seconds: float) -> dict:
    """200-byte replacements in the middle of a filled document, `window` in flight on one connection (no
    other member), for `seconds` and at least three windows: acks per second once the first window is
    answered (the steady state), and bytes per ack. Edit i names the revision edit i-1 made (the client is
    the only editor and edits land in arrival order), so none is transformed."""
    session_id = (await create_sessions(target, 1))[0]
    conn, state = await ws_join(target, session_id, document_id, lean)
    middle, revision, replies = len(state["content"]) // 2, state["revision"], []
    samples, _ = await _pipeline(target, conn, lambda i: replace(i, middle, revision + i), window, {},
                                 seconds=seconds, least=3 * window, replies=replies)
    await conn.close()
    steady = replies[window - 1:]  # from the ack that ends the first window
    return {"rate": (len(steady) - 1) / (steady[-1][0] - steady[0][0]), "latency": samples[window:],
            "ack_bytes": sum(size for _, size in replies), "acks": len(replies)}


async def broadcast_bytes(target: Target, document_id: str, lean: bool, count: int) -> dict:
    """`count` edits from one connection with one viewer in the same mode: bytes per broadcast it receives."""
    session_id = (await create_sessions(target, 1))[0]
    editor, state = await ws_join(target, session_id, document_id, lean)
    viewer, _ = await ws_join(target, session_id, document_id, lean)
    await _drain([editor, viewer], quiet=0.1)
    middle, revision, sizes = len(state["content"]) // 2, state["revision"], []

    async def view() -> None:
        async with asyncio.timeout(STALL + count / 10):
            while len(sizes) < count:
                text = await viewer.recv()
                if text.find('"type":"realtime_edit"', 0, 120) >= 0:
                    sizes.append(utf8_size(text))
                else:
                    note_error(target, text)
    viewing = asyncio.create_task(view())
    await _pipeline(target, editor, lambda i: replace(i, middle, revision + i), 10, {}, count=count)
    await viewing
    await asyncio.gather(editor.close(), viewer.close())
    return {"bytes": sum(sizes) / len(sizes)}


async def document_sizes(target: Target, seconds: float, broadcasts: int, prefix: str) -> dict:
    """On documents of 1 KB, 100 KB and 1 MB, in lean and reference mode: acked edits per second on one
    connection with 1 and 100 in flight (`seconds` each), bytes per ack (over both) and bytes per broadcast
    (`broadcasts` edits to one viewer). Each measure runs on the three sizes one after the other, so that
    the sizes compare under the same load."""
    out: dict = {}
    for label, size, _ in SIZES:
        await fill_document(target, f"{prefix}-{label}", size)
    for mode, lean in MODES:
        acks = {label: [0, 0] for label, _, _ in SIZES}
        for in_flight in IN_FLIGHT:
            for label, _, _ in SIZES:
                run = await sized_edit_rate(target, f"{prefix}-{label}", lean, in_flight, seconds)
                out[f"rate_{mode}_w{in_flight}_{label}"] = run["rate"]
                out[f"latency_{mode}_w{in_flight}_{label}"] = run["latency"]
                acks[label][0] += run["ack_bytes"]
                acks[label][1] += run["acks"]
        for label, _, _ in SIZES:
            out[f"ack_{mode}_{label}"] = acks[label][0] / acks[label][1]
            out[f"bcast_{mode}_{label}"] = (await broadcast_bytes(target, f"{prefix}-{label}", lean,
                                                                  broadcasts))["bytes"]
    return out


def against_smallest(results: dict) -> dict:
    """The baseline side of document_sizes: each measure on a larger document read as the 1 KB one's."""
    smallest, labels = SIZES[0][0], {label for label, _, _ in SIZES}
    return {key: results[f"{key.rsplit('_', 1)[0]}_{smallest}"] if key.rsplit("_", 1)[-1] in labels else value
            for key, value in results.items()}


# -- several nodes -----------------------------------------------------------------------------------


async def forwarded_edit_rate(owner: Target, via: Target, seconds: float, document_id: str) -> dict:
    """Edits at one in flight through `via` on a document `owner` owns (a socket of its own holds it there)."""
    holder = await ws_connect(owner, (await create_sessions(owner, 1))[0], document_id)
    try:
        return await edit_rate(via, seconds, 1, document_id)
    finally:
        await holder.close()


async def delivery_latency(editor_at: Target, viewer_at: Target, count: int, document_id: str) -> dict:
    """One editor on `editor_at`, one viewer on `viewer_at`: from sending an edit to the viewer receiving it."""
    editor = await ws_connect(editor_at, (await create_sessions(editor_at, 1))[0], document_id)
    viewer = await ws_connect(viewer_at, (await create_sessions(viewer_at, 1))[0], document_id)
    await _drain([editor, viewer])
    sent_at, samples = {}, []
    view = asyncio.create_task(_view(viewer_at, viewer, "realtime_edit", count, sent_at, samples))
    await _pipeline(editor_at, editor, edit, 1, sent_at, count=count)
    await view
    await asyncio.gather(editor.close(), viewer.close())
    return {"latency": samples}


async def aggregate_rate(targets: list[Target], documents: int, seconds: float, window: int, prefix: str) -> dict:
    """One editor on each of `documents` documents at once, the documents spread over `targets` (each
    editor on the node of its document): acked edits a second in all."""
    runs = await asyncio.gather(*(edit_rate(targets[i % len(targets)], seconds, window, f"{prefix}-{i}")
                                  for i in range(documents)))
    return {"rate": sum(run["rate"] for run in runs)}
