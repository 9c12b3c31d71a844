"""The two servers `bench` compares, each run in its own process: the real one and a bare Tornado baseline."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import uuid

import tornado.httpserver
import tornado.netutil
import tornado.web
import tornado.websocket

from .config import Settings

BENCH_LIMITS = dict(rate_limit=1e9, rate_burst=10**9, session_create_limit=10**9, max_connections=100000,
                    max_connections_per_session=10000, document_create_limit=10**9, max_documents=10**9)
HELLO = json.dumps({"id": "hello", "type": "document_state", "payload": {"document_id": "bare", "format": "text",
                    "content": "", "revision": 0, "participants": []}, "timestamp": "2025-11-07T10:00:00Z"},
                   separators=(",", ":"))
SESSION = json.dumps({"session_id": "bare", "peer_id": "bare", "user_id": "bench", "state": "Active"})


def bench_settings(db: str, **overrides) -> Settings:
    """The real server's settings for a bench run: loopback, any port, limits out of the way."""
    return Settings(host="127.0.0.1", port=0, db=db, log_level="warning", **{**BENCH_LIMITS, **overrides})


class BareSession(tornado.web.RequestHandler):
    """POST: a constant JSON body, like a session reply that costs nothing to make."""

    def post(self) -> None:
        self.set_status(201)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(SESSION)


class BareStoredSession(tornado.web.RequestHandler):
    """POST: a session-sized dict kept in memory, the least any session store can hold."""

    def initialize(self, table: dict) -> None:
        self.table = table

    def post(self) -> None:
        session_id = str(uuid.uuid4())
        row = {"session_id": session_id, "peer_id": uuid.uuid4().hex[:12],
               "user_id": json.loads(self.request.body)["user_id"], "state": "Active"}
        self.table[session_id] = row
        self.set_status(201)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(row))


class BareSocket(tornado.websocket.WebSocketHandler):
    """Hello on open; echo each JSON message (decoded and encoded); `broadcast` goes to the whole room."""

    def initialize(self, rooms: dict) -> None:
        self.rooms = rooms
        self.room: set | None = None

    def open(self) -> None:
        self.room = self.rooms.setdefault(self.get_query_argument("document_id", "default"), set())
        self.room.add(self)
        self.write_message(HELLO)

    def on_message(self, message) -> None:
        value = json.loads(message)
        text = json.dumps(value, separators=(",", ":"))
        if value.get("type") == "broadcast":
            for peer in list(self.room):
                _send(peer, text)
        else:
            _send(self, text)

    def on_close(self) -> None:
        if self.room is not None:
            self.room.discard(self)


def _send(socket: tornado.websocket.WebSocketHandler, text: str) -> None:
    try:
        socket.write_message(text)
    except tornado.websocket.WebSocketClosedError:
        pass


def bare_app() -> tornado.web.Application:
    """The baseline: the same paths as the real server, doing as little as possible."""
    return tornado.web.Application([
        (r"/api/sessions", BareSession),
        (r"/api/stored-sessions", BareStoredSession, {"table": {}}),
        (r"/ws", BareSocket, {"rooms": {}}),
    ])


async def _run(kind: str, db: str | None, overrides: dict) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if kind == "real":
        from .app import Server
        server = await Server(bench_settings(db, **overrides)).start()
        port, finish = server.port, server.stop
    else:
        http = tornado.httpserver.HTTPServer(bare_app())
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        http.add_sockets(sockets)
        port = sockets[0].getsockname()[1]

        async def finish() -> None:
            http.stop()
    print(f"PORT {port}", flush=True)
    await stop.wait()
    await finish()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m mcprt.bench_servers real DB [LOOP [SETTINGS-JSON]]` or `... bare`: serve until SIGTERM;
    prints `PORT n` once listening."""
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .__main__ import loop_factory
    with asyncio.Runner(loop_factory=loop_factory(argv[2] if len(argv) > 2 else "asyncio")) as runner:
        return runner.run(_run(argv[0], argv[1] if len(argv) > 1 else None,
                               json.loads(argv[3]) if len(argv) > 3 else {}))


if __name__ == "__main__":
    sys.exit(main())
