"""Shared documents over the real server: state on join, OT over stale revisions, presence, history, limits."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time

import pytest

from mcprt.ot import TextOperation
from otclient import OTClient
from support import RefusingWrites, editor_of, free_port, refuse_op, snapshot_revisions, spawn_server


@pytest.fixture
def database(both_databases) -> str:
    """Every server in this module runs on SQLite and on PostgreSQL."""
    return both_databases


pytestmark = pytest.mark.asyncio



async def edit(ws, payload: dict, id_: str | None = None) -> dict:
    """Send an edit and return its ack."""
    id_ = await ws.send_msg("realtime_edit", payload, id_)
    return await ws.recv_type("edit_ack")


async def test_create_document_by_rest_and_refuse_duplicates_and_bad_ids(app):
    reply = await app.fetch("POST", "/api/documents", {"document_id": "notes.txt", "format": "text"}, admin=True)
    assert reply.status == 201 and reply.json == {"document_id": "notes.txt", "format": "text", "content": "",
                                                  "revision": 0}
    assert (await app.fetch("POST", "/api/documents", {"document_id": "notes.txt"}, admin=True)).status == 409
    for bad in ("", "a b", "x" * 129, "../etc", "é"):
        reply = await app.fetch("POST", "/api/documents", {"document_id": bad}, admin=True)
        assert reply.status == 400 and reply.json["error"]["details"]["pointer"] == "/document_id"


async def test_first_join_creates_an_html_document_and_state_comes_from_sqlite(start):
    app = await start()
    ws = await app.editor(document_id="doc-1")
    assert ws.state["payload"]["format"] == "html" and ws.state["payload"]["revision"] == 0
    await edit(ws, {"change_delta": {"position": 0, "insert": "<p>kept</p>"}})
    await app.server.stop()
    again = await start()
    late = await again.editor("late", "doc-1")
    assert late.state["payload"]["content"] == "<p>kept</p>" and late.state["payload"]["revision"] == 1
    participants = late.state["payload"]["participants"]
    assert [p["user_id"] for p in participants] == ["late"]


async def test_edit_is_acked_to_the_sender_and_broadcast_to_the_others(app):
    alice, bob = await app.editor("alice"), await app.editor("bob")
    ack = await edit(alice, {"change_delta": {"position": 0, "insert": "Hi"}, "cursor_position": 2,
                             "operation": "insert", "user_id": "alice", "base_revision": 0}, "edit-001")
    assert ack["id"] == "edit-001" and ack["payload"]["revision"] == 1 and ack["payload"]["content"] == "Hi"
    got = await bob.recv_type("realtime_edit")
    assert got["id"] == "edit-001-broadcast"
    assert got["payload"]["content"] == "Hi" and got["payload"]["revision"] == 1
    assert got["payload"]["change_delta"] == [{"position": 0, "insert": "Hi"}]
    assert got["session_info"]["user_id"] == "alice" and got["session_info"]["peer_id"] == alice.session["peer_id"]
    assert "session_id" not in got["session_info"]
    await alice.nothing()  # the sender's own edit does not come back as a broadcast


async def test_same_users_other_tab_receives_the_broadcast(app):
    first = await app.editor("alice")
    second = await app.ws_connect(first.session["session_id"])
    await edit(first, {"change_delta": {"position": 0, "insert": "x"}})
    assert (await second.recv_type("realtime_edit"))["payload"]["content"] == "x"


async def test_concurrent_edits_against_the_same_revision_are_transformed(app):
    alice, bob = await app.editor("alice"), await app.editor("bob")
    await edit(alice, {"change_delta": {"position": 0, "insert": "abc"}})
    await bob.recv_type("realtime_edit")
    await alice.send_msg("realtime_edit", {"base_revision": 1, "change_delta": {"position": 0, "insert": "X"}})
    await bob.send_msg("realtime_edit", {"base_revision": 1, "change_delta": {"position": 3, "insert": "Y"}})
    first, second = (await alice.recv_type("edit_ack")), (await bob.recv_type("edit_ack"))
    assert {first["payload"]["content"], second["payload"]["content"]} >= {"XabcY"}
    assert (await app.fetch("GET", "/api/documents/default", admin=True)).json["content"] == "XabcY"


async def test_content_only_edit_becomes_the_minimal_delta(app):
    alice, bob = await app.editor("alice"), await app.editor("bob")
    await edit(alice, {"content": "hello world"})
    await bob.recv_type("realtime_edit")
    await edit(alice, {"content": "hello brave world"})
    got = await bob.recv_type("realtime_edit")
    assert got["payload"]["change_delta"] == [{"position": 6, "insert": "brave "}]
    history = (await app.fetch("GET", "/api/documents/default/history", admin=True)).json["ops"]
    assert history[-1]["op"] == [6, "brave ", 5]


async def test_content_only_edit_against_an_old_base_keeps_the_others_work(app):
    alice, bob = await app.editor("alice"), await app.editor("bob")
    await edit(alice, {"content": "one two"})
    await edit(bob, {"base_revision": 1, "change_delta": {"position": 7, "insert": " three"}})
    await edit(alice, {"base_revision": 1, "content": "ONE two"})
    assert (await app.fetch("GET", "/api/documents/default", admin=True)).json["content"] == "ONE two three"


async def test_list_change_delta_is_applied_in_order(app):
    ws = await app.editor()
    await edit(ws, {"change_delta": {"position": 0, "insert": "abcdef"}})
    ack = await edit(ws, {"change_delta": [{"position": 0, "delete": 1}, {"position": 4, "insert": "Z"},
                                           {"position": 1, "delete": 1, "insert": "Q"}]})
    assert ack["payload"]["content"] == "bQdeZf"


@pytest.mark.parametrize("delta", [{"position": 4, "insert": "x"}, {"position": 2, "delete": 5},
                                   [{"position": 0, "insert": "a"}, {"position": 9, "delete": 1}]])
async def test_out_of_range_positions_are_invalid_and_change_nothing(app, delta):
    ws = await app.editor()
    await edit(ws, {"change_delta": {"position": 0, "insert": "abc"}})
    await ws.send_msg("realtime_edit", {"change_delta": delta})
    error = await ws.recv_type("error")
    assert error["payload"]["code"] == "INVALID_MESSAGE"
    state = (await app.fetch("GET", "/api/documents/default", admin=True)).json
    assert state["content"] == "abc" and state["revision"] == 1


async def test_base_revision_ahead_of_the_document_is_invalid(app):
    ws = await app.editor()
    await ws.send_msg("realtime_edit", {"base_revision": 5, "change_delta": {"position": 0, "insert": "x"}})
    assert (await ws.recv_type("error"))["payload"]["code"] == "INVALID_MESSAGE"


async def test_a_payload_user_id_of_someone_else_is_unauthorized_and_recorded(app):
    alice, bob = await app.editor("alice"), await app.editor("bob")
    await alice.send_msg("realtime_edit", {"user_id": "bob", "change_delta": {"position": 0, "insert": "x"}})
    error = await alice.recv_type("error")
    assert error["payload"]["code"] == "UNAUTHORIZED"
    await bob.nothing()
    await app.settle()
    events = await app.events(type="impersonation")
    assert events[0]["severity"] == "high" and events[0]["details"]["claimed_user_id"] == "bob"
    assert (await app.fetch("GET", "/api/documents/default", admin=True)).json["revision"] == 0


async def test_sync_request_returns_the_ops_since_a_revision(app):
    alice, bob = await app.editor("alice"), await app.editor("bob")
    for text in ("a", "b", "c"):
        await edit(alice, {"change_delta": {"position": 0, "insert": text}})
    await bob.send_msg("sync_request", {"since_revision": 1}, "sync-1")
    reply = await bob.recv_type("sync_response")
    assert reply["id"] == "sync-1" and reply["payload"]["revision"] == 3
    content = "a"
    for entry in reply["payload"]["ops"]:
        content = TextOperation.from_json(entry["op"]).apply(content)
    assert [e["revision"] for e in reply["payload"]["ops"]] == [2, 3] and content == "cba"


async def test_sync_request_older_than_memory_gets_a_fresh_state(start):
    app = await start(history_window=3)
    ws = await app.editor()
    for i in range(6):
        await edit(ws, {"change_delta": {"position": 0, "insert": str(i)}})
    await ws.send_msg("sync_request", {"since_revision": 1})
    state = await ws.recv_type("document_state", "sync_response")
    assert state["type"] == "document_state" and state["payload"]["content"] == "543210"
    await ws.send_msg("realtime_edit", {"base_revision": 1, "change_delta": {"position": 0, "insert": "x"}})
    assert (await ws.recv_type("error"))["payload"]["code"] == "CONFLICT"


async def test_presence_is_shared_shifted_by_edits_and_cleared_on_leave(app):
    alice, bob = await app.editor("alice"), await app.editor("bob")
    await edit(alice, {"change_delta": {"position": 0, "insert": "hello"}})
    await bob.send_msg("cursor_update", {"position": 3, "selection_end": 5})
    presence = await alice.recv_type("presence")
    assert presence["payload"]["user_id"] == "bob" and presence["payload"]["cursor"]["position"] == 3
    await edit(alice, {"change_delta": {"position": 0, "insert": "ab"}})
    carol = await app.editor("carol")
    shown = {p["user_id"]: p for p in carol.state["payload"]["participants"]}
    assert set(shown) == {"alice", "bob", "carol"}
    assert shown["bob"]["cursor"]["position"] == 5 and shown["bob"]["cursor"]["selection_end"] == 7
    await bob.close()
    await alice.recv_type("session_disconnected")
    dave = await app.editor("dave")
    assert "bob" not in {p["user_id"] for p in dave.state["payload"]["participants"]}


async def test_cursor_beyond_the_document_is_invalid(app):
    ws = await app.editor()
    await ws.send_msg("cursor_update", {"position": 10})
    assert (await ws.recv_type("error"))["payload"]["code"] == "INVALID_MESSAGE"


async def test_history_versions_snapshots_and_restore(start, tmp_path):
    app = await start(snapshot_interval=10)
    ws = await app.editor(document_id="hist")
    for i in range(25):
        await edit(ws, {"change_delta": {"position": i, "insert": chr(ord("a") + i)}})
    await app.settle()
    assert await snapshot_revisions(app.deps.store, "hist") == [0, 10, 20]
    assert (await app.fetch("GET", "/api/documents/hist?revision=15", admin=True)).json["content"] == "abcdefghijklmno"
    assert (await app.fetch("GET", "/api/documents/hist?revision=0", admin=True)).json["content"] == ""
    assert (await app.fetch("GET", "/api/documents/hist?revision=99", admin=True)).status == 404
    page = (await app.fetch("GET", "/api/documents/hist/history?since=20&limit=3", admin=True)).json
    assert [o["revision"] for o in page["ops"]] == [21, 22, 23] and page["next_since"] == 23
    assert page["ops"][0]["user_id"] == "alice" and page["ops"][0]["time"]
    restored = await app.fetch("POST", "/api/documents/hist/restore", {"revision": 3}, admin=True)
    assert restored.status == 200 and restored.json == {"document_id": "hist", "format": "html",
                                                         "content": "abc", "revision": 26}
    pushed = await ws.recv_type("realtime_edit")
    assert pushed["payload"]["content"] == "abc" and pushed["payload"]["revision"] == 26


async def test_unknown_documents_are_404(app):
    assert (await app.fetch("GET", "/api/documents/nothing", admin=True)).status == 404
    assert (await app.fetch("GET", "/api/documents/nothing/history", admin=True)).status == 404
    assert (await app.fetch("POST", "/api/documents/nothing/restore", {"revision": 0}, admin=True)).status == 404


async def test_document_size_cap_refuses_the_edit_and_applies_nothing(start):
    app = await start(max_document_bytes=20)
    ws = await app.editor()
    await edit(ws, {"change_delta": {"position": 0, "insert": "0123456789"}})
    await ws.send_msg("realtime_edit", {"change_delta": {"position": 10, "insert": "é" * 6}})
    error = await ws.recv_type("error")
    assert error["payload"]["code"] == "MESSAGE_TOO_LARGE"
    state = (await app.fetch("GET", "/api/documents/default", admin=True)).json
    assert state == {"document_id": "default", "format": "html", "content": "0123456789", "revision": 1}


async def test_rooms_nobody_is_in_are_freed(app):
    ws = await app.editor(document_id="tmp")
    await edit(ws, {"change_delta": {"position": 0, "insert": "x"}})
    assert app.deps.documents.open_count == 1
    await ws.close()
    for _ in range(100):
        if app.deps.documents.open_count == 0 and not app.deps.hub.rooms:
            break
        await asyncio.sleep(0.01)
    assert app.deps.documents.open_count == 0 and app.deps.hub.rooms == {}


async def test_positions_count_code_points(app):
    alice, bob = await app.editor("alice"), await app.editor("bob")
    await edit(alice, {"change_delta": {"position": 0, "insert": "👍🏽e\u0301!"}})  # 5 code points
    ack = await edit(alice, {"change_delta": [{"position": 1, "delete": 1}, {"position": 3, "insert": "?"}]})
    assert ack["payload"]["content"] == "👍e\u0301?!"
    await bob.recv_type("realtime_edit")
    got = await bob.recv_type("realtime_edit")
    assert got["payload"]["change_delta"] == [{"position": 1, "delete": 1}, {"position": 3, "insert": "?"}]


async def test_text_documents_are_never_escaped_and_refuse_control_characters(app):
    await app.fetch("POST", "/api/documents", {"document_id": "plain", "format": "text"}, admin=True)
    ws = await app.editor(document_id="plain")
    ack = await edit(ws, {"change_delta": {"position": 0, "insert": "<b>&amp;</b>\ttab\r\nline"}})
    assert ack["payload"]["content"] == "<b>&amp;</b>\ttab\nline"
    await ws.send_msg("realtime_edit", {"change_delta": {"position": 0, "insert": "nul\u0000"}})
    assert (await ws.recv_type("error"))["payload"]["code"] == "INVALID_MESSAGE"


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_concurrent_random_editing_converges_and_keeps_every_insert(app, seed):
    """Several OT clients edit against stale revisions with random delays; all end identical, and every
    marker inserted is there exactly once (deletes only remove the filler dots inserted beside them)."""
    rng = random.Random(seed)
    clients = []
    for i in range(4):
        ws = await app.editor(f"user{i}", document_id=f"conv-{seed}")
        clients.append(OTClient(ws, ws.state["payload"]))

    async def reader(client: OTClient) -> None:
        while True:
            message = await client.ws.recv(timeout=10)
            await asyncio.sleep(rng.random() * 0.003)  # a slow network: apply late, but in order
            await client.handle(message)

    async def writer(index: int, client: OTClient) -> None:
        for n in range(25):
            await asyncio.sleep(rng.random() * 0.004)
            length = len(client.content)
            dots = [i for i, ch in enumerate(client.content) if ch == "."]
            if n % 3 == 2 and dots:
                await client.edit({"position": rng.choice(dots), "delete": 1})
            else:
                marker = f"[{index}-{n}]"
                markers.append(marker)
                at = rng.randrange(length + 1)
                while 0 < at < length and (client.content[at - 1] != "." and client.content[at - 1] != "]"):
                    at -= 1  # never inside another marker
                await client.edit({"position": at, "insert": marker + ".."})

    markers: list[str] = []
    readers = [asyncio.create_task(reader(c)) for c in clients]
    await asyncio.gather(*(writer(i, c) for i, c in enumerate(clients)))
    for _ in range(500):
        if all(c.synchronized for c in clients) and len({c.revision for c in clients}) == 1:
            await asyncio.sleep(0.05)
            if all(c.synchronized for c in clients) and len({(c.revision, c.content) for c in clients}) == 1:
                break
        await asyncio.sleep(0.02)
    for task in readers:
        task.cancel()
    server = (await app.fetch("GET", f"/api/documents/conv-{seed}", admin=True)).json
    assert all(not c.errors for c in clients), [c.errors for c in clients]
    assert [c.content for c in clients] == [server["content"]] * 4
    assert [c.revision for c in clients] == [server["revision"]] * 4
    assert len(markers) > 50 and all(server["content"].count(m) == 1 for m in markers), server["content"]


async def test_concurrent_inserts_only_every_marker_survives_intact(app):
    rng = random.Random(7)
    await app.fetch("POST", "/api/documents", {"document_id": "inserts", "format": "text"}, admin=True)
    clients = []
    for i in range(3):
        ws = await app.editor(f"u{i}", document_id="inserts")
        clients.append(OTClient(ws, ws.state["payload"]))
    markers = []

    async def reader(client):
        while True:
            await client.handle(await client.ws.recv(timeout=10))

    async def writer(index, client):
        for n in range(30):
            await asyncio.sleep(rng.random() * 0.002)
            marker = f"<{index}:{n}:😀>"
            markers.append(marker)
            # insert only at marker boundaries so no marker is split by another
            content = client.content
            bounds = [0] + [i + 1 for i, ch in enumerate(content) if ch == ">"]
            await client.edit({"position": rng.choice(bounds), "insert": marker})

    markers: list[str] = []
    readers = [asyncio.create_task(reader(c)) for c in clients]
    await asyncio.gather(*(writer(i, c) for i, c in enumerate(clients)))
    for _ in range(500):
        if all(c.synchronized for c in clients) and len({c.content for c in clients}) == 1:
            break
        await asyncio.sleep(0.02)
    for task in readers:
        task.cancel()
    final = (await app.fetch("GET", "/api/documents/inserts", admin=True)).json["content"]
    assert all(c.content == final for c in clients)
    assert all(final.count(m) == 1 for m in markers)


@pytest.mark.timeout(120)
async def test_every_acknowledged_edit_survives_kill_9(database):
    db, port = database, free_port()
    proc = spawn_server(db, port, "--log-level", "warning")
    acked: list[int] = []
    try:
        sid, connection = await editor_of(port, "durable", "d")
        async with connection as ws:
            for i in range(300):  # pipelined: acks arrive while later edits are still being sent
                await ws.send(json.dumps({"id": f"e{i}", "type": "realtime_edit",
                                          "payload": {"change_delta": {"position": 0, "insert": f"<{i}>"}}}))
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                try:
                    message = json.loads(await asyncio.wait_for(ws.recv(), 0.05))
                except asyncio.TimeoutError:
                    continue
                assert message["type"] != "error", message
                if message["type"] == "edit_ack":
                    acked.append(message["payload"]["revision"])
                    if len(acked) == 150:
                        break
            os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert len(acked) >= 100
    proc = spawn_server(db, port, "--log-level", "warning")
    try:
        import urllib.request
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/documents/d",
                                         headers={"Authorization": f"Bearer {sid}"})  # the session outlived the kill
        with urllib.request.urlopen(request) as r:
            document = json.load(r)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert document["revision"] >= max(acked)
    for i in range(len(acked)):
        assert f"<{i}>" in document["content"]


async def test_cursor_from_an_older_revision_is_moved_through_later_edits(app):
    alice, bob = await app.editor("alice"), await app.editor("bob")
    await edit(alice, {"change_delta": {"position": 0, "insert": "world"}})
    await edit(alice, {"change_delta": {"position": 0, "insert": "hello "}})
    await bob.send_msg("cursor_update", {"position": 5, "base_revision": 1})
    presence = await alice.recv_type("presence")
    assert presence["payload"]["cursor"]["position"] == 11 and presence["payload"]["cursor"]["revision"] == 2


DOCUMENT_ENDPOINTS = [("POST", "/api/documents", {"document_id": "guarded"}), ("GET", "/api/documents/guarded", None),
                      ("GET", "/api/documents/guarded/history", None),
                      ("POST", "/api/documents/guarded/restore", {"revision": 0})]


async def security_events(app, type_: str) -> list[dict]:
    await app.settle()
    return (await app.fetch("GET", f"/api/events?kind=security&type={type_}", admin=True)).json["events"]


@pytest.mark.parametrize("method,path,body", DOCUMENT_ENDPOINTS)
async def test_document_endpoints_need_a_session_or_the_admin_token(app, method, path, body):
    ended = await app.session("mallory")
    await app.fetch("DELETE", f"/api/sessions/{ended['session_id']}")
    a, b = await app.session("alice"), await app.session("bob")
    refused = [
        ({}, "UNAUTHORIZED", "unauthorized"),
        ({"Authorization": "Bearer " + a["session_id"], "X-Session-ID": b["session_id"]}, "UNAUTHORIZED",
         "unauthorized"),
        ({"X-Session-ID": "00000000-0000-4000-8000-000000000000"}, "INVALID_SESSION", "invalid_session"),
        ({"Authorization": "Bearer " + ended["session_id"]}, "INVALID_SESSION", "invalid_session"),
    ]
    for headers, code, event in refused:
        reply = await app.fetch(method, path, body, headers=headers)
        assert reply.status == 401 and reply.json["error"]["code"] == code, (headers, reply.json)
        assert ended["session_id"] not in reply.body.decode()
        recorded = await security_events(app, event)
        assert recorded and recorded[0]["details"]["endpoint"] == path.split("?")[0]
    assert (await app.fetch("GET", "/api/documents/guarded", admin=True)).status == 404  # nothing was created
    await app.fetch("POST", "/api/documents", {"document_id": "guarded"}, headers={"X-Session-ID": a["session_id"]})
    for headers in ({"X-Session-ID": a["session_id"]}, {"Authorization": "Bearer " + b["session_id"]}):
        reply = await app.fetch(method, path, body, headers=headers)
        assert reply.status == (409 if path == "/api/documents" else 200), reply.json


async def test_a_restore_is_authored_by_its_session(app):
    ws = await app.editor(document_id="authored")
    await edit(ws, {"change_delta": {"position": 0, "insert": "draft"}})
    bob = await app.session("bob")
    reply = await app.fetch("POST", "/api/documents/authored/restore", {"revision": 0},
                            headers={"X-Session-ID": bob["session_id"]})
    assert reply.status == 200 and reply.json["content"] == ""
    pushed = await ws.recv_type("realtime_edit")
    assert pushed["payload"]["user_id"] == "bob" and pushed["session_info"]["peer_id"] == bob["peer_id"]
    await app.settle()
    ops = (await app.fetch("GET", "/api/documents/authored/history", admin=True)).json["ops"]
    assert ops[-1]["user_id"] == "bob"
    events = (await app.fetch("GET", "/api/events?type=document_restored", admin=True)).json["events"]
    assert events[0]["user_id"] == "bob" and events[0]["document_id"] == "authored"


async def test_a_failed_write_sends_everyone_back_to_what_is_durable(start, tmp_path):
    app = await start()
    alice = await app.editor("alice", document_id="fragile")
    bob = await app.editor("bob", document_id="fragile")
    for i, letter in enumerate("ab"):
        await edit(alice, {"change_delta": {"position": i, "insert": letter}})
        await bob.recv_type("realtime_edit")
    refusing = RefusingWrites(app.deps.store, refuse_op("fragile", 3)).__enter__()  # as a full disk would
    sent = [await alice.send_msg("realtime_edit", {"change_delta": {"position": 2 + i, "insert": letter}})
            for i, letter in enumerate("xyz")]  # pipelined: 4 and 5 are queued behind the failing 3
    code, got = await alice.closed()
    assert code == 4500
    errors = [m for m in got if m["type"] == "error"]
    assert errors and errors[0]["id"] == sent[0] and errors[0]["payload"]["code"] == "SERVER_ERROR"
    assert not [m for m in got if m["type"] == "edit_ack"]
    code, got = await bob.closed()
    assert code == 4500 and not [m for m in got if m["type"] == "realtime_edit"]
    await app.settle()
    assert [o.revision for o in await app.deps.store.ops("fragile", 0)] == [1, 2]
    refusing.__exit__()
    again = await app.ws_connect(alice.session["session_id"], "fragile")
    assert again.state["payload"]["revision"] == 2 and again.state["payload"]["content"] == "ab"
    ack = await edit(again, {"change_delta": {"position": 2, "insert": "c"}, "base_revision": 2})
    assert ack["payload"]["revision"] == 3
    await app.settle()
    assert [o.revision for o in await app.deps.store.ops("fragile", 0)] == [1, 2, 3]
    reset = (await app.fetch("GET", "/api/events?type=document_reset", admin=True)).json["events"]
    assert len(reset) == 1 and reset[0]["severity"] == "high" and reset[0]["document_id"] == "fragile"
    assert not (await app.fetch("GET", "/api/events?kind=security&session_id=" + alice.session["session_id"],
                                admin=True)).json["events"]  # our failure is not the client's offence


async def test_a_restore_that_cannot_be_stored_resets_the_document_too(start, tmp_path):
    app = await start()
    alice = await app.editor("alice", document_id="fragile")
    await edit(alice, {"change_delta": {"position": 0, "insert": "keep"}})
    with RefusingWrites(app.deps.store, refuse_op("fragile", 2)):
        reply = await app.fetch("POST", "/api/documents/fragile/restore", {"revision": 0}, admin=True)
    assert reply.status == 500 and reply.json["error"]["code"] == "SERVER_ERROR"
    code, got = await alice.closed()
    assert code == 4500 and not [m for m in got if m["type"] == "realtime_edit"]
    document = (await app.fetch("GET", "/api/documents/fragile", admin=True)).json
    assert document["revision"] == 1 and document["content"] == "keep"
    await app.settle()
    reset = (await app.fetch("GET", "/api/events?type=document_reset", admin=True)).json["events"]
    assert len(reset) == 1 and reset[0]["document_id"] == "fragile"


async def test_a_document_is_deleted_with_its_history_and_its_sockets_close(app):
    ws = await app.editor("alice", "gone")
    await edit(ws, {"change_delta": {"position": 0, "insert": "<p>bye</p>"}})
    other = await app.editor("bob", "gone")
    reply = await app.fetch("DELETE", "/api/documents/gone", admin=True)
    assert reply.status == 200 and reply.json == {"document_id": "gone", "deleted": True}
    for socket in (ws, other):
        code, _ = await socket.closed()
        assert code == 4014
    assert (await app.fetch("GET", "/api/documents/gone", admin=True)).status == 404
    assert await app.deps.store.ops("gone", 0) == [] and await app.deps.store.latest_snapshot("gone") is None
    assert (await app.fetch("DELETE", "/api/documents/gone", admin=True)).status == 404
    again = await app.editor("carol", "gone")  # the id is free: a join makes a new, empty document
    assert again.state["payload"]["revision"] == 0 and again.state["payload"]["content"] == ""
    await app.settle()
    deleted, = await app.events(type="document_deleted")
    assert deleted["document_id"] == "gone" and deleted["details"]["revision"] == 1


async def test_a_documents_content_as_plain_text_or_html(app):
    ws = await app.editor("alice", "page")
    await edit(ws, {"change_delta": {"position": 0, "insert": "<h1>Title</h1><p>one &amp; <b>two</b></p>"}})
    text = await app.fetch("GET", "/api/documents/page?format=text", admin=True)
    assert text.status == 200 and text.headers["Content-Type"].startswith("text/plain")
    assert text.body.decode() == "Title\none & two\n"
    markup = await app.fetch("GET", "/api/documents/page?format=html", admin=True)
    assert markup.headers["Content-Type"].startswith("text/html") and "sandbox" in markup.headers[
        "Content-Security-Policy"]
    assert markup.body.decode() == "<h1>Title</h1><p>one &amp; <b>two</b></p>"
    await app.fetch("POST", "/api/documents", {"document_id": "notes", "format": "text"}, admin=True)
    plain = await app.fetch("GET", "/api/documents/notes?format=html", admin=True)
    assert plain.body.decode() == "<pre></pre>"
    assert (await app.fetch("GET", "/api/documents/page?format=pdf", admin=True)).status == 400


async def test_history_cli_says_who_edited_when_and_shows_a_readable_diff(start, database, capsys, clock):
    from mcprt.__main__ import main
    app = await start(clock=clock)
    alice = await app.editor("alice", "story")
    for i, word in enumerate(("<p>Once</p>", "<p>upon</p>")):
        await edit(alice, {"base_revision": i, "change_delta": {"position": len("<p>Once</p>") * i, "insert": word}})
    clock.now += 3600  # an hour later, bob
    bob = await app.editor("bob", "story")
    await edit(bob, {"base_revision": 2, "change_delta": {"position": 11, "insert": "<p>a time</p>"}})
    await app.settle()
    assert await asyncio.to_thread(main, ["history", "story", "--db", database]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "story (html), revisions 1 to 3; 2 stretch(es) of edits"
    assert "alice" in out[1] and "revisions 1–2 (2 edit(s)): +22 −0 characters" in out[1]
    assert "bob" in out[2] and "revisions 3–3 (1 edit(s)): +13 −0 characters" in out[2]
    assert await asyncio.to_thread(main, ["history", "story", "--db", database, "--diff", "2", "3"]) == 0
    diff = capsys.readouterr().out
    assert "--- story@2" in diff and "+++ story@3" in diff and "+a time\n" in diff and " Once\n" in diff
    assert await asyncio.to_thread(main, ["history", "story", "--db", database, "--diff", "0", "9"]) == 2
