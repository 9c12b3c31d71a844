"""A bounded soak on loopback: many editors and heartbeats for a while; nothing lost, nothing leaked.

The server runs in the test process (so its hub and documents can be inspected, and its memory is the
test process's); the editors run in a child process, so the two share the machine's cores, not one loop.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import sqlite3
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

import psutil
import pytest
import websockets

from mcprt.bench_servers import BENCH_LIMITS
from support import ROOT, STAMP

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

SECONDS = float(os.environ.get("MCPRT_SOAK_SECONDS", "60"))
CONNECTIONS = int(os.environ.get("MCPRT_SOAK_CONNECTIONS", "200"))
DOCUMENTS = max(1, CONNECTIONS // 10)
WARM_UP = min(5.0, SECONDS)
ALPHABET = "abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789.,;\néü中文"
MAX_LENGTH = 2000  # past this, editors only delete, so documents stay small
BLOCK_SLACK = 5_000  # Python objects; a leak of one per edit would exceed it
RSS_SLACK = 16 * 2**20  # SQLite page caches (2 MB a connection) and allocator pools still filling


# -- the editors (child process) -------------------------------------------------------


@dataclass
class Editor:
    """One client connection and what it has seen of its document."""

    index: int
    document_id: str
    conn: object
    revision: int = 0
    content: str = ""
    in_flight: str | None = None  # the id of the edit awaiting its ack
    sent: int = 0
    acks: dict = field(default_factory=dict)  # edit id -> revision
    heartbeats_sent: int = 0
    heartbeats_acked: int = 0
    errors: list = field(default_factory=list)
    def see(self, payload: dict) -> None:
        if payload["revision"] >= self.revision:
            self.revision, self.content = payload["revision"], payload["content"]

    async def read(self) -> None:
        try:
            async for text in self.conn:
                message = json.loads(text)
                kind = message["type"]
                if kind == "error":
                    self.errors.append(message)
                elif kind in ("edit_ack", "realtime_edit", "document_state"):
                    self.see(message["payload"])
                    if kind == "edit_ack":
                        self.acks[message["id"]] = message["payload"]["revision"]
                        self.in_flight = None
                elif kind == "heartbeat_ack":
                    self.heartbeats_acked += 1
        except websockets.ConnectionClosed:
            pass

    def next_edit(self, rng: random.Random) -> dict:
        """A random edit against the latest revision this editor knows."""
        length = len(self.content)
        if length and (length > MAX_LENGTH or rng.random() < 0.4):
            position = rng.randrange(length)
            delta = {"position": position, "delete": min(rng.randint(1, 20), length - position)}
        else:
            text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 30)))
            delta = {"position": rng.randint(0, length), "insert": text}
        if rng.random() < 0.1:  # sometimes two parts: the second refers to the document after the first
            delta = [delta, {"position": 0, "insert": "+"}]
        return {"base_revision": self.revision, "change_delta": delta}

    async def drive(self, rng: random.Random, until: float) -> None:
        """About two messages a second, alternating heartbeat and edit (one edit in flight at a time)."""
        await asyncio.sleep(rng.random())
        n = 0
        while time.monotonic() < until and self.conn.close_code is None:
            n += 1
            if n % 2:
                message = {"id": f"h{self.index}-{n}", "type": "heartbeat", "payload": {}}
                self.heartbeats_sent += 1
            elif self.in_flight is None:
                message = {"id": f"e{self.index}-{n}", "type": "realtime_edit", "payload": self.next_edit(rng)}
                self.in_flight = message["id"]
                self.sent += 1
            else:
                message = None
            if message is not None:
                await self.conn.send(json.dumps({**message, "timestamp": STAMP}))
            await asyncio.sleep(rng.uniform(0.25, 0.75))

    def report(self) -> dict:
        return {"document_id": self.document_id, "revision": self.revision, "content": self.content,
                "sent": self.sent, "acks": self.acks, "heartbeats_sent": self.heartbeats_sent,
                "heartbeats_acked": self.heartbeats_acked, "errors": self.errors[:5],
                "in_flight": self.in_flight, "close_code": self.conn.close_code}


async def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def run_editors(port: int, session_ids: list[str], seconds: float, prefix: str) -> list[dict]:
    """Connect one editor per session (ten to a document), drive them, let them settle, report, disconnect."""
    gate = asyncio.Semaphore(50)

    async def connect(i: int) -> Editor:
        document_id = f"{prefix}-{i % DOCUMENTS}"
        async with gate:
            conn = await websockets.connect(
                f"ws://127.0.0.1:{port}/ws?session_id={session_ids[i]}&document_id={document_id}",
                max_size=None, max_queue=None, ping_interval=None, open_timeout=30)
        editor = Editor(i, document_id, conn)
        editor.see(json.loads(await conn.recv())["payload"])
        return editor
    editors = await asyncio.gather(*(connect(i) for i in range(len(session_ids))))
    readers = [asyncio.create_task(e.read()) for e in editors]
    rng = random.Random(prefix)
    until = time.monotonic() + seconds
    await asyncio.gather(*(e.drive(random.Random(rng.random()), until) for e in editors))
    await wait_until(lambda: all(e.in_flight is None and e.heartbeats_acked == e.heartbeats_sent for e in editors))
    await asyncio.sleep(0.5)  # the last broadcasts reach every editor
    reports = [e.report() for e in editors]
    await asyncio.gather(*(e.conn.close() for e in editors))
    await asyncio.gather(*readers)
    return reports


def editors_main(argv: list[str]) -> int:
    """Child process: PORT SECONDS PREFIX, session ids on stdin; one JSON list of reports on stdout."""
    port, seconds, prefix = int(argv[0]), float(argv[1]), argv[2]
    session_ids = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(run_editors(port, session_ids, seconds, prefix))))
    return 0


# -- the checks (test process) -------------------------------------------------------


async def soak_round(harness, session_ids: list[str], seconds: float, prefix: str) -> tuple[list[dict], dict]:
    """Run the editors in a child process for `seconds`: their reports, and the server's memory once they left."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, str(harness.server.port), str(seconds), prefix,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
    peak = 0

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, psutil.Process().memory_info().rss)
            await asyncio.sleep(0.5)
    sampler = asyncio.create_task(sample())
    out, err = await child.communicate(json.dumps(session_ids).encode())
    sampler.cancel()
    deps = harness.deps
    let_go = await wait_until(lambda: deps.hub.rooms == {} and deps.documents.open_count == 0, 5.0)
    await harness.settle()  # the writer's last batch is now the one-row flush
    memory = {"sockets": live_sockets(), "rss": psutil.Process().memory_info().rss, "peak": peak,
              "blocks": sys.getallocatedblocks()}  # measured before the reports are decoded here
    assert child.returncode == 0, err.decode()[-3000:]
    reports = json.loads(out)

    errors = [m for r in reports for m in r["errors"]]
    assert not errors, f"{len(errors)} error messages, first: {errors[0]}"
    closed = [r["close_code"] for r in reports if r["close_code"] is not None]
    assert not closed, f"the server closed {len(closed)} connections (codes {sorted(set(closed))})"
    assert all(r["in_flight"] is None for r in reports), "an edit was never acknowledged"
    assert all(r["heartbeats_acked"] == r["heartbeats_sent"] for r in reports), "a heartbeat was never answered"
    assert sum(r["sent"] for r in reports) == sum(len(r["acks"]) for r in reports) > len(reports) * seconds / 4
    assert let_go, f"rooms {list(deps.hub.rooms)}, open documents {deps.documents.open_count}"
    deps.limits.buckets.prune(time.time() + BENCH_LIMITS["rate_burst"] / BENCH_LIMITS["rate_limit"])
    assert deps.hub.by_session == {} and len(deps.limits.buckets) == 0 and memory["sockets"] == 0
    return reports, memory


def stored_ops(db: str, document_id: str) -> list[tuple[int, str, str]]:
    """A document's stored ops (revision, op JSON, message id) in revision order."""
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT revision, op, message_id FROM ops WHERE document_id = ? ORDER BY revision",
                            (document_id,)).fetchall()


def replay(ops: list[str]) -> str:
    """The content produced by stored ops applied in order to an empty document."""
    from mcprt.ot import TextOperation
    content = ""
    for op in ops:
        content = TextOperation.from_json(json.loads(op)).apply(content)
    return content


def check_stored(db: str, reports: list[dict]) -> int:
    """Editors of a document agree; its ops are revisions 1..N, one per acknowledged edit; replaying gives the content."""
    views, acked = defaultdict(set), defaultdict(set)
    for r in reports:
        views[r["document_id"]].add((r["revision"], r["content"]))
        acked[r["document_id"]].update(r["acks"].items())
    for document_id, seen in views.items():
        assert len(seen) == 1, f"{document_id}: editors disagree at the end"
        (revision, content), = seen
        rows = stored_ops(db, document_id)
        assert [r[0] for r in rows] == list(range(1, revision + 1)), f"{document_id}: revisions not 1..{revision}"
        assert replay([r[1] for r in rows]) == content, f"{document_id}: replaying the stored ops differs"
        assert len(acked[document_id]) == revision, \
            f"{document_id}: {revision} revisions but {len(acked[document_id])} acknowledged edits"
        by_revision = {r[0]: r[2] for r in rows}
        assert all(by_revision.get(rev) == edit_id for edit_id, rev in acked[document_id]), \
            f"{document_id}: an acknowledged edit is not stored"
    return sum(len(a) for a in acked.values())


def live_sockets() -> int:
    from mcprt.handlers.ws import EditorSocket
    gc.collect()
    return sum(isinstance(o, EditorSocket) for o in gc.get_objects())


@pytest.mark.timeout(SECONDS + 180)
async def test_soak_loses_no_edit_and_leaks_nothing(start, tmp_path):
    harness = await start(db=str(tmp_path / "soak.db"), **BENCH_LIMITS)
    db = harness.server.settings.db
    session_ids = [(await harness.session(f"soak-{i}"))["session_id"] for i in range(CONNECTIONS)]
    check_stored(db, (await soak_round(harness, session_ids, WARM_UP, "warm"))[0])  # pools and caches fill
    gc.collect()
    rss_before, blocks_before = psutil.Process().memory_info().rss, sys.getallocatedblocks()
    reports, memory = await soak_round(harness, session_ids, SECONDS, "soak")
    rss_peak, rss_after, blocks_after = memory["peak"], memory["rss"], memory["blocks"]
    edits = check_stored(db, reports)
    print(f"soak: {CONNECTIONS} connections on {DOCUMENTS} documents for {SECONDS:.0f} s: {edits} edits acknowledged "
          f"and stored, {sum(r['heartbeats_acked'] for r in reports)} heartbeats; server RSS "
          f"{rss_before / 2**20:.1f} MB before, {rss_peak / 2**20:.1f} MB peak, {rss_after / 2**20:.1f} MB after; "
          f"Python blocks {blocks_before} before, {blocks_after} after")
    assert blocks_after - blocks_before < BLOCK_SLACK, f"{blocks_after - blocks_before} more Python objects"
    assert rss_after - rss_before < RSS_SLACK, f"RSS grew by {(rss_after - rss_before) / 2**20:.1f} MB"


if __name__ == "__main__":
    sys.exit(editors_main(sys.argv[1:]))
