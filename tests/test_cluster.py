"""Several nodes on one PostgreSQL store and one Redis, each a real `python -m mcprt` process: sessions valid
on every node, ended everywhere at once; one process per SQLite file."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import uuid

import pytest
import pytest_asyncio
import websockets
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from otclient import OTClient
from support import ROOT, STAMP, free_port, spawn_server

pytestmark = pytest.mark.asyncio


class Node:
    """One node process, and the HTTP calls a test makes to it."""

    def __init__(self, name: str, proc: subprocess.Popen, port: int):
        self.name, self.proc, self.port = name, proc, port
        self.http = AsyncHTTPClient(force_instance=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def call(self, method: str, path: str, body: dict | None = None, session: str | None = None,
                   admin: bool = False) -> tuple[int, dict]:
        headers = {"X-Session-ID": session} if session else {}
        if admin:
            headers["Authorization"] = "Bearer cluster-admin-token"
        try:
            reply = await self.http.fetch(self.base + path, method=method, headers=headers,
                                          body=None if body is None and method in ("GET", "DELETE") else
                                          json.dumps(body or {}), allow_nonstandard_methods=True)
        except HTTPClientError as exc:
            reply = exc.response
        return reply.code, json.loads(reply.body) if reply.body else {}

    async def session(self, user: str, activate: bool = True) -> str:
        code, body = await self.call("POST", "/api/sessions", {"user_id": user, "activate": activate})
        assert code == 201, body
        return body["session_id"]

    async def socket(self, session: str, document: str):
        ws = await websockets.connect(f"ws://127.0.0.1:{self.port}/ws?session_id={session}&document_id={document}",
                                      close_timeout=0.5)
        state = json.loads(await ws.recv())
        return ws, state


@pytest_asyncio.fixture
async def cluster(pg_cluster, redis_server):
    """start(n) runs n nodes on one fresh database and a fresh key prefix; all stopped after the test."""
    nodes: list[Node] = []
    db, prefix = pg_cluster.database(), f"t{uuid.uuid4().hex[:8]}"

    async def start(n: int = 3, *args: str) -> list[Node]:
        for _ in range(n):
            name, port = f"node{len(nodes) + 1}", free_port()
            proc = await asyncio.to_thread(spawn_server, db, port, "--redis", redis_server.url(), "--redis-prefix",
                                           prefix, "--node-id", name, "--admin-token", "cluster-admin-token", *args)
            nodes.append(Node(name, proc, port))
        return nodes

    start.nodes, start.db, start.prefix = nodes, db, prefix
    yield start
    for node in nodes:
        node.http.close()
        if node.proc.poll() is None:
            node.proc.terminate()
    for node in nodes:
        try:
            node.proc.wait(10)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait()


async def test_every_node_reports_redis_and_its_name(cluster):
    a, b = await cluster(2)
    for node in (a, b):
        code, health = await node.call("GET", "/health")
        assert code == 200 and health["checks"] == {"database": "ok", "redis": "ok"} and health["node"] == node.name


async def test_a_session_made_on_one_node_works_on_every_node(cluster):
    a, b, c = await cluster(3)
    session = await a.session("alice")
    ws, state = await b.socket(session, "shared")
    assert state["type"] == "document_state"
    code, body = await c.call("GET", "/api/sessions/" + session)
    assert code == 200 and body["state"] == "Active"
    pending = await a.session("bob", activate=False)
    assert (await c.call("GET", "/api/documents/shared", session=pending))[0] == 401  # C read it as Pending
    assert (await b.call("POST", f"/api/sessions/{pending}/activate"))[0] == 200
    assert (await c.call("GET", "/api/documents/shared", session=pending))[0] == 200  # C heard of the activation
    assert (await a.call("GET", "/api/documents/shared", session=pending))[0] == 200
    await ws.close()


async def test_ending_a_session_on_one_node_closes_its_sockets_on_the_others(cluster):
    a, b, c = await cluster(3)
    session = await a.session("alice")
    on_c, _ = await c.socket(session, "doc")
    on_a, _ = await a.socket(session, "doc")
    assert (await c.call("GET", "/api/documents/doc", session=session))[0] == 200  # cached on C
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await b.call("DELETE", "/api/sessions/" + session))[0] == 200
    for ws in (on_c, on_a):
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 4010
    assert loop.time() - started < 1.0
    code, body = await c.call("GET", "/api/documents/doc", session=session)
    assert code == 401 and body["error"]["code"] == "INVALID_SESSION"  # C forgot its cached copy


async def _serve_exit(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "mcprt", *args, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    except asyncio.TimeoutError:
        proc.kill()
        raise AssertionError("the server did not refuse to start")
    return proc.returncode, err.decode()


async def test_redis_needs_postgresql_and_a_sqlite_file_serves_one_process(tmp_path, redis_server):
    code, err = await _serve_exit("--port", str(free_port()), "--db", str(tmp_path / "one.db"),
                                  "--redis", redis_server.url())
    assert code == 2 and "needs a shared PostgreSQL store" in err and "Traceback" not in err
    code, err = await _serve_exit("--port", "0", "--redis", "http://x", "--db", "postgresql://u@127.0.0.1/x")
    assert code == 2 and "--redis must be a redis://" in err
    first = spawn_server(str(tmp_path / "one.db"), free_port())
    try:
        code, err = await _serve_exit("--port", str(free_port()), "--db", str(tmp_path / "one.db"))
        assert code == 2 and "one process serves a SQLite file" in err and f"pid {first.pid}" in err
    finally:
        first.terminate()
        first.wait(10)
    again = spawn_server(str(tmp_path / "one.db"), free_port())  # the lock went with the process
    again.terminate()
    assert again.wait(10) == 0


class Wire:
    """What OTClient needs of a socket, over a `websockets` connection."""

    def __init__(self, ws):
        self.ws = ws

    async def send_msg(self, type_: str, payload: dict, id_: str | None = None) -> str:
        id_ = id_ or uuid.uuid4().hex
        await self.ws.send(json.dumps({"id": id_, "type": type_, "payload": payload, "timestamp": STAMP}))
        return id_


async def _editors(nodes: list[Node], document: str, per_node: int) -> list[tuple[OTClient, asyncio.Task]]:
    """Clients spread over the nodes, each following its socket in a task."""
    editors = []
    for i in range(per_node * len(nodes)):
        node = nodes[i % len(nodes)]
        ws, state = await node.socket(await node.session(f"user{i}"), document)
        client = OTClient(Wire(ws), state["payload"])

        async def follow(ws=ws, client=client) -> None:
            async for raw in ws:
                await client.handle(json.loads(raw))
        editors.append((client, asyncio.get_running_loop().create_task(follow())))
    return editors


async def _type_words(client: OTClient, words: list[str], seed: int) -> None:
    rng = random.Random(seed)
    for word in words:
        content = client.content  # a word goes between words, never inside one
        position = rng.choice([0, len(content), *(i for i, c in enumerate(content) if c == " ")])
        await client.edit({"position": position, "insert": f" {word} "})
        await asyncio.sleep(rng.random() * 0.02)


async def _converged(nodes: list[Node], document: str, clients: list[OTClient], seconds: float = 20.0) -> str:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        code, body = await nodes[0].call("GET", f"/api/documents/{document}", admin=True)
        if all(c.synchronized and c.revision == body["revision"] and c.content == body["content"] for c in clients):
            return body["content"]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no convergence: server rev {body['revision']}, clients "
                                 f"{[(c.revision, c.synchronized, c.errors[:1]) for c in clients]}")
        await asyncio.sleep(0.1)


async def test_editors_on_three_nodes_converge_on_one_document(cluster):
    nodes = await cluster(3)
    assert (await nodes[0].call("POST", "/api/documents", {"document_id": "shared", "format": "text"},
                                admin=True))[0] == 201
    editors = await _editors(nodes, "shared", 2)
    clients = [client for client, _ in editors]
    words = {i: [f"w{i}x{k}" for k in range(15)] for i in range(len(clients))}
    await asyncio.gather(*(_type_words(client, words[i], i) for i, client in enumerate(clients)))
    content = await _converged(nodes, "shared", clients)
    for client in clients:
        assert client.errors == []
    tokens = content.split()
    assert sorted(tokens) == sorted(w for ws in words.values() for w in ws)  # every word exactly once
    code, history = await nodes[2].call("GET", "/api/documents/shared/history?limit=1000", admin=True)
    assert [op["revision"] for op in history["ops"]] == list(range(1, len(history["ops"]) + 1))
    for _, task in editors:
        task.cancel()


async def test_editors_on_two_nodes_converge_on_many_documents(cluster):
    nodes = await cluster(2)
    documents = [f"doc{i}" for i in range(4)]
    all_clients, typing = [], []
    for d, document in enumerate(documents):
        await nodes[d % 2].call("POST", "/api/documents", {"document_id": document, "format": "text"}, admin=True)
        editors = await _editors(nodes, document, 1)
        clients = [client for client, _ in editors]
        all_clients.append((document, clients, editors))
        typing += [_type_words(c, [f"{document}u{i}k{k}" for k in range(8)], 100 * d + i) for i, c in enumerate(clients)]
    await asyncio.gather(*typing)
    for document, clients, editors in all_clients:
        content = await _converged(nodes, document, clients)
        assert sorted(content.split()) == sorted(f"{document}u{i}k{k}" for i in range(len(clients)) for k in range(8))
        for _, task in editors:
            task.cancel()
