"""What several test files share: the checkout's root, a free port, a server process started and awaited,
and the timestamp test messages carry."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mcprt.pgcluster import free_port  # noqa: F401 (a loopback port nobody listens on; the tests import it here)

ROOT = Path(__file__).resolve().parent.parent
STAMP = "2025-11-07T10:00:00Z"
# A server process for tests that kill or restart it: limits out of the way of a burst.
UNLIMITED = {"MCPRT_RATE_LIMIT": "100000", "MCPRT_RATE_BURST": "100000"}


def get_once_serving(proc: subprocess.Popen, port: int, path: str = "/health", seconds: float = 20) -> str:
    """GET `path` from a server process as soon as it listens; its body."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
                return reply.read().decode()
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, "server did not start"
            time.sleep(0.1)


def spawn_server(db: str, port: int, *args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    """`python -m mcprt` on a port and database, returned once it answers /health."""
    proc = subprocess.Popen([sys.executable, "-m", "mcprt", "--port", str(port), "--db", db, *args],
                            cwd=ROOT, env={**os.environ, **UNLIMITED, "PYTHONUNBUFFERED": "1", **(env or {})}, **popen)
    get_once_serving(proc, port)
    return proc


async def editor_of(port: int, user_id: str, document_id: str, format_: str | None = "text"):
    """A session on a server process and a `websockets` connection to a document (created as `format_`
    first unless None), past its document_state: (session id, connection)."""
    import json

    import websockets
    from tornado.httpclient import AsyncHTTPClient
    http = AsyncHTTPClient(force_instance=True)
    try:
        reply = await http.fetch(f"http://127.0.0.1:{port}/api/sessions", method="POST",
                                 body=json.dumps({"user_id": user_id}))
        sid = json.loads(reply.body)["session_id"]
        if format_ is not None:
            await http.fetch(f"http://127.0.0.1:{port}/api/documents", method="POST", headers={"X-Session-ID": sid},
                             body=json.dumps({"document_id": document_id, "format": format_}))
    finally:
        http.close()
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws?session_id={sid}&document_id={document_id}",
                                  close_timeout=0.2)
    await ws.recv()  # document_state
    return sid, ws


class StoreRefused(Exception):
    """What RefusingWrites raises for a write it refuses (as a full disk or a constraint would)."""


class RefusingWrites:
    """Faults injected into a running store, on either backend: while active, a transaction holding a
    write that `refuse(write)` matches fails before it reaches the database, as a full disk would fail
    it; every other write commits as ever (the group commit retries the units of a failed batch one at a
    time, so only the matching unit fails). It wraps `_commit`, the one method every backend provides, and
    `_commit_now`, the end-of-turn commit of a backend with sync_commits."""

    def __init__(self, store, refuse):
        self.store, self.refuse = store, refuse
        self.refused = 0

    def __enter__(self) -> "RefusingWrites":
        inner = type(self.store)._commit.__get__(self.store)

        async def commit(units):
            if any(self.refuse(w) for u in units for w in u.writes):
                self.refused += 1
                raise StoreRefused("refused")
            await inner(units)
        now = type(self.store)._commit_now.__get__(self.store)

        def commit_now(units):
            if any(self.refuse(w) for u in units for w in u.writes):
                self.refused += 1
                raise StoreRefused("refused")
            return now(units)
        self.store._commit, self.store._commit_now = commit, commit_now
        return self

    def __exit__(self, *exc) -> None:
        del self.store._commit, self.store._commit_now


def refuse_op(document_id: str, revision: int | None = None):
    """A RefusingWrites predicate: the op rows of one document (at one revision)."""
    return lambda w: w.kind == "insert_op" and w.values[0] == document_id and revision in (None, w.values[1])


async def snapshot_revisions(store, document_id: str) -> list[int]:
    """The revisions a document has snapshots at, oldest first, read through the store."""
    found, at = [], None
    while (snapshot := await store.latest_snapshot(document_id, at)) is not None:
        found.insert(0, snapshot.revision)
        at = snapshot.revision - 1
    return found


async def stored_events(db: str, **filters) -> list:
    """Events a database holds (newest first), read through the store as another process would."""
    from mcprt.storage import store_for
    store = await store_for(db).open()
    try:
        return await store.events(limit=10_000, **filters)
    finally:
        await store.close()
