"""Several nodes on one PostgreSQL store and one Redis, each a real `python -m mcprt` process: sessions valid
on every node, ended everywhere at once; one process per SQLite file."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
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

    async def start(n: int = 3, *args: str, env: dict | None = None) -> list[Node]:
        started = []
        for _ in range(n):
            name, port = f"node{len(nodes) + 1}", free_port()
            proc = await asyncio.to_thread(spawn_server, db, port, "--redis", redis_server.url(), "--redis-prefix",
                                           prefix, "--node-id", name, "--admin-token", "cluster-admin-token", *args,
                                           env=env)
            started.append(Node(name, proc, port))
            nodes.append(started[-1])
        return started


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
        reply = await node.http.fetch(node.base + "/metrics", headers={"Authorization": "Bearer cluster-admin-token"})
        lines = [line for line in reply.body.decode().splitlines() if line.startswith("mcprt_connections")]
        assert lines == [f'mcprt_connections{{node="{node.name}"}} 0.0']


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


class ResendingClient(OTClient):
    """An editor that sends its edit again after SERVER_ERROR (same id: never applied twice), and knows
    which of its words were acknowledged."""

    def __init__(self, ws, state: dict):
        super().__init__(ws, state)
        self.sent_words: dict[str, list[str]] = {}
        self.acked: list[str] = []
        self.resent = 0

    async def _send(self, op) -> None:
        await super()._send(op)
        self.sent_words[self.outstanding_id] = [w for part in op.ops if isinstance(part, str) for w in part.split()]

    async def handle(self, message: dict) -> None:
        if message["type"] == "edit_ack" and message["id"] == self.outstanding_id:
            self.acked += self.sent_words.get(message["id"], [])
        if (message["type"] == "error" and message["id"] == self.outstanding_id
                and message["payload"]["code"] in ("SERVER_ERROR", "RATE_LIMITED")):
            self.resent += 1
            await asyncio.sleep(0.2)
            await self._resend()
            return
        await super().handle(message)

    async def _resend(self) -> None:
        from mcprt.ot import to_delta
        delta = to_delta(self.outstanding)
        await self.ws.send_msg("realtime_edit", {"base_revision": self.revision, "change_delta": delta},
                               self.outstanding_id)


def lease_owner(cluster, redis_server, document: str) -> str | None:
    import redis
    client = redis.Redis.from_url(redis_server.url())
    try:
        value = client.get(f"{cluster.prefix}:lease:{document}")
    finally:
        client.close()
    return value.decode().rpartition(":")[0] if value else None


async def _editor(node: Node, user: str, document: str, kind=ResendingClient):
    ws, state = await node.socket(await node.session(user), document)
    client = kind(Wire(ws), state["payload"])

    async def follow() -> None:
        try:
            async for raw in ws:
                await client.handle(json.loads(raw))
        except websockets.ConnectionClosed:
            pass
    return client, ws, asyncio.get_running_loop().create_task(follow())


async def _until(check, seconds: float = 15.0, what: str = "a condition"):
    deadline = asyncio.get_running_loop().time() + seconds
    while not (result := await check() if asyncio.iscoroutinefunction(check) else check()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
    return result


async def test_killing_the_owner_mid_burst_loses_no_acknowledged_edit(cluster, redis_server):
    nodes = await cluster(3, "--lease-ttl", "2s")
    await nodes[0].call("POST", "/api/documents", {"document_id": "burst", "format": "text"}, admin=True)
    first = await _editor(nodes[0], "owner-side", "burst")  # node1 joins first: it owns the document
    assert lease_owner(cluster, redis_server, "burst") == "node1"
    others = [await _editor(nodes[1 + i % 2], f"user{i}", "burst") for i in range(4)]
    editors = [first, *others]
    words = {i: [f"k{i}w{k}" for k in range(30)] for i in range(len(editors))}
    typing = [asyncio.create_task(_type_words(client, words[i], i)) for i, (client, _, _) in enumerate(editors)]
    await _until(lambda: sum(len(c.acked) for c, _, _ in editors) >= 20, what="a first part of the burst")
    nodes[0].proc.kill()  # kill -9 the owner mid-burst
    nodes[0].proc.wait()
    await asyncio.gather(*typing[1:])
    survivors = [client for client, _, _ in others]
    content = await _converged(nodes[1:], "burst", survivors, seconds=30)
    assert lease_owner(cluster, redis_server, "burst") in ("node2", "node3")
    tokens = content.split()
    assert len(tokens) == len(set(tokens))  # nothing applied twice
    acked = {w for client, _, _ in editors for w in client.acked}
    assert acked <= set(tokens)  # no acknowledged edit lost, the killed node's included
    assert {w for i in range(1, len(editors)) for w in words[i]} <= set(tokens)  # the survivors' all landed
    assert any(c.resent for c in survivors)  # the failover was felt, and got through
    # The killed node's editor comes back through another node, and sees the same document.
    again, _, task = await _editor(nodes[1], "owner-side-again", "burst")
    assert again.content == content
    for t in typing[:1] + [task] + [t for _, _, t in editors]:
        t.cancel()


async def test_a_stale_owner_is_fenced_by_the_store_and_closes_with_4500(cluster, redis_server):
    """An owner paused past its lease (SIGSTOP) that knows nothing of it when it wakes: its next write is
    refused by the store's primary key, its sockets close with 4500, the history stays one sequence."""
    import signal
    stale, = await cluster(1, "--lease-ttl", "2s", env={"MCPRT_CLUSTER_TEST_HOOKS": "ignore_lease"})
    other, = await cluster(1, "--lease-ttl", "2s")
    await stale.call("POST", "/api/documents", {"document_id": "fence", "format": "text"}, admin=True)
    a, a_ws, a_task = await _editor(stale, "alice", "fence")
    b, _, b_task = await _editor(other, "bob", "fence")
    await a.edit({"position": 0, "insert": "one "})
    await _until(lambda: a.synchronized and b.revision == 1, what="the first edit everywhere")
    stale.proc.send_signal(signal.SIGSTOP)
    try:
        await b.edit({"position": 0, "insert": "two "})  # forwarded to the paused owner: no answer
        await _until(lambda: lease_owner(cluster, redis_server, "fence") == "node2", 10, "node2 to take the lease")
        await _until(lambda: b.synchronized and b.revision == 2, 15, "bob's edit, sent again, on the new owner")
        await a.edit({"position": 0, "insert": "three "})  # waits in the paused node's socket buffer
    finally:
        stale.proc.send_signal(signal.SIGCONT)
    await asyncio.wait_for(a_ws.wait_closed(), 10)
    assert a_ws.close_code == 4500
    assert b.resent >= 1
    code, history = await other.call("GET", "/api/documents/fence/history", admin=True)
    assert [op["revision"] for op in history["ops"]] == [1, 2]
    code, document = await other.call("GET", "/api/documents/fence", admin=True)
    assert document["content"] == "two one " and document["revision"] == 2
    code, events = await other.call("GET", "/api/events?type=document_reset", admin=True)
    fenced = [e for e in events["events"] if e["document_id"] == "fence"]
    assert fenced and "duplicate key" in fenced[0]["details"]["why"]  # the store refused, not the lease
    for task in (a_task, b_task):
        task.cancel()


async def test_a_lost_publish_is_filled_from_the_store(cluster, redis_server):
    owner, = await cluster(1, env={"MCPRT_CLUSTER_TEST_HOOKS": "drop_op=2+4"})
    follower, = await cluster(1)
    await owner.call("POST", "/api/documents", {"document_id": "gaps", "format": "text"}, admin=True)
    a, _, a_task = await _editor(owner, "alice", "gaps", OTClient)
    b, _, b_task = await _editor(follower, "bob", "gaps", OTClient)
    for word in ("one ", "two ", "three "):  # the publish of revision 2 is lost
        await a.edit({"position": 0, "insert": word})
        await _until(lambda: a.synchronized, what="alice's ack")
    await _until(lambda: b.revision == 3, what="bob to see revision 3")  # OTClient checks they come in order
    assert b.content == a.content == "three two one "
    await b.edit({"position": 0, "insert": "four "})  # its op, revision 4, is lost on the way back: the
    await _until(lambda: b.synchronized, 10, "bob's ack")  # ack comes from the store, after the time-out
    assert b.errors == [] and b.revision == 4 and b.content == "four three two one "
    for task in (a_task, b_task):
        task.cancel()


async def test_a_killed_nodes_users_leave_the_participants_within_the_lease(cluster):
    a, b = await cluster(2, "--lease-ttl", "2s")
    alice_ws, _ = await a.socket(await a.session("alice"), "room")
    await alice_ws.send(json.dumps({"id": "c1", "type": "cursor_update", "payload": {"position": 0},
                                    "timestamp": STAMP}))
    bob_ws, state = await b.socket(await b.session("bob"), "room")
    assert [p["user_id"] for p in state["payload"]["participants"]] == ["bob", "alice"]  # alice is on node1

    async def next_of(ws, type_: str, seconds: float) -> dict:
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), seconds))
            if message["type"] == type_:
                return message
    carol_ws, _ = await a.socket(await a.session("carol"), "room")
    joined = await next_of(bob_ws, "session_connected", 5)  # joins travel between nodes
    assert joined["payload"]["user_id"] == "carol"
    loop = asyncio.get_running_loop()
    killed = loop.time()
    a.proc.kill()
    a.proc.wait()
    gone = {(await next_of(bob_ws, "session_disconnected", 6))["payload"]["user_id"] for _ in range(2)}
    assert gone == {"alice", "carol"}
    assert loop.time() - killed < 2 + 2 / 3 + 1.5  # the lease, one refresh round, and some slack
    dave_ws, state = await b.socket(await b.session("dave"), "room")
    assert sorted(p["user_id"] for p in state["payload"]["participants"]) == ["bob", "dave"]  # no ghosts
    for ws in (bob_ws, dave_ws):
        await ws.close()


async def test_rate_limits_hold_for_one_session_spread_over_two_nodes(cluster):
    a, b = await cluster(2, "--rate-limit", "10", "--rate-burst", "10", "--session-create-limit", "5")
    session = await a.session("alice")
    sockets = [(await a.socket(session, "rate"))[0], (await b.socket(session, "rate"))[0]]
    acks = [0, 0]

    async def spam(i: int, ws) -> None:  # 30 heartbeats a second from each node's socket, for 3 s
        async def read() -> None:
            async for raw in ws:
                if json.loads(raw)["type"] == "heartbeat_ack":
                    acks[i] += 1
        reader = asyncio.get_running_loop().create_task(read())
        for k in range(90):
            await ws.send(json.dumps({"id": f"h{i}-{k}", "type": "heartbeat", "payload": {}, "timestamp": STAMP}))
            await asyncio.sleep(1 / 30)
        await asyncio.sleep(0.5)
        reader.cancel()
    await asyncio.gather(*(spam(i, ws) for i, ws in enumerate(sockets)))
    # One bucket of 10 and 10 a second for 3.5 s allows 45; two buckets, one per node, would allow 90.
    assert 35 <= sum(acks) <= 60, acks
    assert min(acks) > 5  # both nodes served the session
    for ws in sockets:
        await ws.close()
    created = [await a.call("POST", "/api/sessions", {"user_id": f"u{i}"}) for i in range(2)]  # alice's was one
    created += [await b.call("POST", "/api/sessions", {"user_id": f"v{i}"}) for i in range(3)]
    assert [code for code, _ in created] == [201, 201, 201, 201, 429]  # five a minute from this address, in all


async def test_session_creates_count_in_a_sliding_window_the_nodes_share(redis_server):
    """Five a minute from an address, in all: over any 60 s, not per clock minute (a window per minute let
    the limit through twice around a minute's turn: three at :59 and five more at :01)."""
    from mcprt.cluster import Cluster, SharedLimits
    from mcprt.config import Settings
    from mcprt.limits import Limits
    from mcprt.protocol import AppError, ErrorCode
    now = [60 * 16_667 + 59.0]  # a second before a clock minute turns
    prefix, nodes = f"t{uuid.uuid4().hex[:8]}", []
    for name in ("n1", "n2"):
        cluster = Cluster(redis_server.url(), prefix, name)
        nodes.append((cluster, SharedLimits(cluster, Limits(Settings(session_create_limit=5), lambda: now[0]),
                                            lambda: now[0])))
    (_, one), (_, two) = nodes
    try:
        for _ in range(3):
            await one.create_session("10.0.0.1")
        now[0] += 2  # the minute has turned
        for _ in range(2):
            await two.create_session("10.0.0.1")
        with pytest.raises(AppError) as refused:
            await two.create_session("10.0.0.1")
        assert refused.value.code is ErrorCode.RATE_LIMITED
        assert refused.value.details == {"limit_per_minute": 5, "retry_after": 58}  # when the first three leave
        await two.create_session("10.0.0.2")  # another address has a window of its own
        with pytest.raises(AppError):  # a refusal did not count: still refused, not later
            await one.create_session("10.0.0.1")
        now[0] += 58  # 60 s after the first three: they leave the window, the two at :01 stay
        for _ in range(3):
            await one.create_session("10.0.0.1")
        with pytest.raises(AppError):
            await two.create_session("10.0.0.1")
    finally:
        for cluster, limits in nodes:
            await limits.stop()
            await cluster.stop()


async def test_a_restore_on_any_node_is_made_by_the_owner(cluster, redis_server):
    a, b = await cluster(2)
    await a.call("POST", "/api/documents", {"document_id": "past", "format": "text"}, admin=True)
    alice, alice_ws, alice_task = await _editor(a, "alice", "past", OTClient)  # node1 owns it
    bob, bob_ws, bob_task = await _editor(b, "bob", "past", OTClient)
    for word in ("one ", "two "):
        await alice.edit({"position": len(alice.content), "insert": word})
        await _until(lambda: alice.synchronized, what="alice's ack")
    code, state = await b.call("POST", "/api/documents/past/restore", {"revision": 1}, admin=True)
    assert code == 200 and state["content"] == "one " and state["revision"] == 3
    await _until(lambda: alice.revision == bob.revision == 3, what="the restore on both nodes")
    assert alice.content == bob.content == "one "
    for ws in (alice_ws, bob_ws):
        await ws.close()
    await _until(lambda: lease_owner(cluster, redis_server, "past") is None, what="nobody to own the document")
    code, state = await b.call("POST", "/api/documents/past/restore", {"revision": 2}, admin=True)
    assert code == 200 and state["content"] == "one two " and state["revision"] == 4
    assert lease_owner(cluster, redis_server, "past") is None  # node2 held it for the restore only
    code, history = await a.call("GET", "/api/documents/past/history", admin=True)
    assert [op["revision"] for op in history["ops"]] == [1, 2, 3, 4]
    for task in (alice_task, bob_task):
        task.cancel()


async def test_a_restore_during_a_take_over_waits_for_the_copy_to_catch_up(cluster, redis_server):
    """The node taking a document over may be behind the store (here a publish was lost): a restore there
    waits until its copy has caught up, rather than commit against the stale copy."""
    a, = await cluster(1, env={"MCPRT_CLUSTER_TEST_HOOKS": "drop_op=2"})
    b, = await cluster(1, env={"MCPRT_CLUSTER_TEST_HOOKS": "slow_take_over=1.5"})
    await a.call("POST", "/api/documents", {"document_id": "past", "format": "text"}, admin=True)
    alice, alice_ws, alice_task = await _editor(a, "alice", "past", OTClient)
    bob, bob_ws, bob_task = await _editor(b, "bob", "past", OTClient)
    for word in ("one ", "two "):  # revision 2 does not reach bob's node
        await alice.edit({"position": len(alice.content), "insert": word})
        await _until(lambda: alice.synchronized, what="alice's ack")
    await alice_ws.close()
    await _until(lambda: lease_owner(cluster, redis_server, "past") == b.name, what="bob's node to take the lease")
    code, state = await b.call("POST", "/api/documents/past/restore", {"revision": 1}, admin=True)
    assert code == 200 and state["content"] == "one " and state["revision"] == 3
    await _until(lambda: bob.revision == 3, what="the restore at bob")
    assert bob.content == "one " and bob.errors == []
    code, history = await b.call("GET", "/api/documents/past/history", admin=True)
    assert [op["revision"] for op in history["ops"]] == [1, 2, 3]
    for task in (alice_task, bob_task):
        task.cancel()


async def test_a_restore_asked_of_a_node_that_gave_the_document_up_goes_to_the_lease_again(cluster, redis_server):
    """A node that still takes the last owner for the owner (the "released" has not reached it) asks it;
    told that it owns nothing any more, it takes the lease itself and restores, rather than fail."""
    a, = await cluster(1)
    b, = await cluster(1, env={"MCPRT_CLUSTER_TEST_HOOKS": "ignore_released"})
    await a.call("POST", "/api/documents", {"document_id": "past", "format": "text"}, admin=True)
    alice, alice_ws, alice_task = await _editor(a, "alice", "past", OTClient)
    bob, bob_ws, bob_task = await _editor(b, "bob", "past", OTClient)
    for word in ("one ", "two "):
        await alice.edit({"position": len(alice.content), "insert": word})
        await _until(lambda: alice.synchronized, what="alice's ack")
    await _until(lambda: bob.revision == 2, what="bob at revision 2")
    await alice_ws.close()
    await _until(lambda: lease_owner(cluster, redis_server, "past") is None, what="alice's node to give it up")
    code, state = await b.call("POST", "/api/documents/past/restore", {"revision": 1}, admin=True)
    assert code == 200 and state["content"] == "one " and state["revision"] == 3
    assert lease_owner(cluster, redis_server, "past") == b.name
    await _until(lambda: bob.revision == 3, what="the restore at bob")
    assert bob.content == "one " and bob.errors == []
    for task in (alice_task, bob_task):
        task.cancel()


async def test_a_document_taken_again_while_its_node_gives_it_up_waits_for_that(cluster, redis_server):
    """A restore or a join on the node that is still giving the document up (its channel left, its lease
    not yet released) waits for that, then owns the document: it neither follows itself nor waits for an
    answer from itself, which never comes (a node does not hear its own publishes)."""
    import redis
    node, = await cluster(1, env={"MCPRT_CLUSTER_TEST_HOOKS": "slow_give_up=1.5"})
    await node.call("POST", "/api/documents", {"document_id": "past", "format": "text"}, admin=True)
    channel = f"{cluster.prefix}:doc:past"

    def giving_up() -> bool:  # off its channel, still holding the lease
        client = redis.Redis.from_url(redis_server.url())
        try:
            subscribers = dict(client.pubsub_numsub(channel))[channel.encode()]
        finally:
            client.close()
        return subscribers == 0 and lease_owner(cluster, redis_server, "past") == node.name

    alice, alice_ws, alice_task = await _editor(node, "alice", "past", OTClient)
    for word in ("one ", "two "):
        await alice.edit({"position": len(alice.content), "insert": word})
        await _until(lambda: alice.synchronized, what="alice's ack")
    await alice_ws.close()
    await _until(giving_up, what="the node giving the document up")
    code, state = await node.call("POST", "/api/documents/past/restore", {"revision": 1}, admin=True)
    assert code == 200 and state["content"] == "one " and state["revision"] == 3
    await _until(lambda: lease_owner(cluster, redis_server, "past") is None, what="the restore's lease given up")

    bob, bob_ws, bob_task = await _editor(node, "bob", "past", OTClient)
    await bob_ws.close()
    await _until(giving_up, what="the node giving the document up again")
    carol, carol_ws, carol_task = await _editor(node, "carol", "past", OTClient)  # joins meanwhile
    await carol.edit({"position": len(carol.content), "insert": "three"})
    await _until(lambda: carol.synchronized, seconds=5, what="carol's ack")
    assert carol.content == "one three" and lease_owner(cluster, redis_server, "past") == node.name
    for task in (alice_task, bob_task, carol_task):
        task.cancel()


async def test_a_change_of_members_reaches_sockets_on_every_node(cluster):
    import jwt
    secret = "a-deployment-secret-of-at-least-32-characters"
    a, b = await cluster(2, "--auth", "jwt", env={"MCPRT_JWT_SECRET": secret})

    async def user(node: Node, name: str) -> str:
        token = jwt.encode({"sub": name, "exp": int(time.time()) + 3600}, secret, algorithm="HS256")
        reply = await node.http.fetch(node.base + "/api/sessions", method="POST", body="{}",
                                      headers={"Authorization": f"Bearer {token}"})
        return json.loads(reply.body)["session_id"]
    alice, bob = await user(a, "alice"), await user(b, "bob")
    assert (await a.call("POST", "/api/documents", {"document_id": "plan", "format": "text"}, session=alice))[0] == 201
    assert (await a.call("PUT", "/api/documents/plan/members", {"member": "user:bob", "role": "viewer"},
                         session=alice))[0] == 200
    ws, state = await b.socket(bob, "plan")  # bob on the other node
    assert state["payload"]["role"] == "viewer"
    assert (await a.call("PUT", "/api/documents/plan/members", {"member": "user:bob", "role": "editor"},
                         session=alice))[0] == 200

    async def next_of(type_: str) -> dict:
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if message["type"] == type_:
                return message
    assert (await next_of("permissions"))["payload"] == {"document_id": "plan", "role": "editor"}
    assert (await a.call("DELETE", "/api/documents/plan/members?member=user:bob", session=alice))[0] == 200
    await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 4013


async def test_deleting_a_document_closes_its_sockets_on_every_node(cluster):
    a, b = await cluster(2)
    await a.call("POST", "/api/documents", {"document_id": "doomed", "format": "text"}, admin=True)
    on_a, _ = await a.socket(await a.session("alice"), "doomed")  # node1 owns it
    on_b, _ = await b.socket(await b.session("bob"), "doomed")
    assert (await b.call("DELETE", "/api/documents/doomed", admin=True))[0] == 200  # asked of a follower
    for ws in (on_a, on_b):
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 4014
    assert (await a.call("GET", "/api/documents/doomed", admin=True))[0] == 404
