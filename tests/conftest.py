"""Fixtures: the production server on an unused port with a real SQLite file, and small client factories."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import pytest
import pytest_asyncio
import websockets
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from mcprt.app import Server
from mcprt.audit import event_json
from mcprt.config import Settings

ADMIN = "test-admin-token"



class FakeClock:
    """A clock the test moves by hand (the one fake: time)."""

    def __init__(self, start: float | None = None):
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes

    @property
    def json(self):
        return json.loads(self.body)


class WS:
    """A real WebSocket client (the `websockets` library) with JSON helpers."""

    def __init__(self, conn):
        self.conn = conn
        self.seen: list[dict] = []

    async def send(self, message) -> None:
        await self.conn.send(message if isinstance(message, (str, bytes)) else json.dumps(message))

    async def send_msg(self, type_: str, payload: dict, id_: str | None = None) -> str:
        id_ = id_ or f"m-{time.monotonic_ns()}"
        await self.send({"id": id_, "type": type_, "payload": payload, "timestamp": "2025-11-07T10:00:00Z"})
        return id_

    async def recv(self, timeout: float = 5.0) -> dict:
        message = json.loads(await asyncio.wait_for(self.conn.recv(), timeout))
        self.seen.append(message)
        return message

    async def recv_type(self, *types: str, timeout: float = 5.0) -> dict:
        """The next message of one of `types`, skipping others."""
        deadline = time.monotonic() + timeout
        while True:
            message = await self.recv(max(0.01, deadline - time.monotonic()))
            if message["type"] in types:
                return message

    async def nothing(self, seconds: float = 0.3) -> None:
        """Assert no message arrives for a while."""
        try:
            message = await asyncio.wait_for(self.conn.recv(), seconds)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"unexpected message: {message}")

    async def closed(self, timeout: float = 5.0) -> tuple[int | None, list[dict]]:
        """Read until the server closes; the close code and what came before."""
        got = []
        try:
            while True:
                got.append(json.loads(await asyncio.wait_for(self.conn.recv(), timeout)))
        except websockets.ConnectionClosed:
            pass
        return self.conn.close_code, got

    async def close(self) -> None:
        await self.conn.close()


@dataclass
class Harness:
    server: Server
    http: AsyncHTTPClient
    sockets: list = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def deps(self):
        return self.server.deps

    async def fetch(self, method: str, path: str, body=None, headers: dict | None = None, raw: bytes | None = None,
                    admin: bool = False) -> Reply:
        headers = dict(headers or {})
        if admin:
            headers["Authorization"] = f"Bearer {ADMIN}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is None and method in ("POST", "PUT", "PATCH"):
            data = b""
        response = await self.http.fetch(HTTPRequest(self.base + path, method=method, body=data, headers=headers,
                                                     allow_nonstandard_methods=True), raise_error=False)
        return Reply(response.code, dict(response.headers), response.body or b"")

    async def session(self, user_id: str = "alice", **extra) -> dict:
        reply = await self.fetch("POST", "/api/sessions", {"user_id": user_id, **extra})
        assert reply.status == 201, reply.body
        return reply.json

    async def ws_connect(self, session_id: str | None = None, document_id: str | None = None, headers=None,
                         query: str | None = None, state: bool = True, **kw) -> WS:
        params = [p for p in (f"session_id={session_id}" if session_id else None,
                              f"document_id={document_id}" if document_id else None, query) if p]
        url = f"ws://127.0.0.1:{self.server.port}/ws" + ("?" + "&".join(params) if params else "")
        conn = await websockets.connect(url, additional_headers=headers, max_size=None, open_timeout=5, **kw)
        ws = WS(conn)
        self.sockets.append(ws)
        if state:
            ws.state = await ws.recv_type("document_state")
        return ws

    async def editor(self, user_id: str = "alice", document_id: str | None = None) -> WS:
        """A new session and a socket on a document, past its document_state."""
        session = await self.session(user_id)
        ws = await self.ws_connect(session["session_id"], document_id)
        ws.session = session
        return ws

    async def events(self, **filters) -> list[dict]:
        """Stored events, read through the store, as the REST API shows them (newest first)."""
        return [event_json(e) for e in await self.deps.store.events(**filters)]

    async def settle(self) -> None:
        """Wait until every queued write is committed."""
        await self.deps.documents.flush()
        await self.deps.store.barrier()


@pytest.fixture(scope="session")
def pg_cluster():
    """One throwaway PostgreSQL server for the whole run (see pgcluster.py)."""
    from mcprt import pgcluster
    bindir = pgcluster.bin_dir()
    if bindir is None:
        reason = "PostgreSQL is not installed (no initdb/postgres found)"
        if pgcluster.REQUIRED:
            pytest.fail(f"MCPRT_REQUIRE_POSTGRES=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    cluster = pgcluster.Cluster(bindir).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_server():
    """One throwaway redis-server for the whole run (see redisserver.py); tests keep apart by key prefix."""
    from mcprt import redisserver
    path = redisserver.binary()
    if path is None:
        reason = "redis-server is not installed"
        if redisserver.REQUIRED:
            pytest.fail(f"MCPRT_REQUIRE_REDIS=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    server = redisserver.RedisServer(path).start()
    yield server
    server.stop()


BACKENDS = ["sqlite", "postgres"]


def database_for(request, backend: str, tmp_path) -> str:
    """A fresh database of `backend`: a file in tmp_path, or an empty migrated PostgreSQL database."""
    if backend == "sqlite":
        return str(tmp_path / "mcprt.db")
    return request.getfixturevalue("pg_cluster").database()


@pytest.fixture
def database(tmp_path) -> str:
    """The --db of the servers `start` runs: SQLite, unless a module asks for both (see both_databases)."""
    return str(tmp_path / "mcprt.db")


@pytest.fixture(params=BACKENDS)
def both_databases(request, tmp_path) -> str:
    """A module that runs on both backends overrides `database` with this."""
    return database_for(request, request.param, tmp_path)


@pytest_asyncio.fixture
async def start(tmp_path, database):
    """A factory: start(**settings, clock=...) runs a real server; all are stopped after the test."""
    running: list[Harness] = []

    async def _start(clock=None, db: str | None = None, **overrides) -> Harness:
        fields = {"host": "127.0.0.1", "port": 0, "db": db or database, "admin_token": ADMIN,
                  "sweep_interval": 3600.0, **overrides}
        settings = Settings(**fields)
        server = await Server(settings, **({"clock": clock} if clock else {})).start()
        harness = Harness(server, AsyncHTTPClient(force_instance=True))
        running.append(harness)
        return harness

    yield _start
    for harness in running:
        for ws in harness.sockets:
            await ws.close()
        harness.http.close()
        await harness.server.stop()


@pytest_asyncio.fixture
async def app(start) -> Harness:
    """One running server with default settings."""
    return await start()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
