"""The edit contract a client relies on: every edit ends in an ack or an error naming it, rewrites of an insert
come back as a correction, no-ops and ordinary races are not offences."""

from __future__ import annotations

import asyncio
import json

import pytest

from mcprt.ot import TextOperation


@pytest.fixture
def database(both_databases) -> str:
    """Every server in this module runs on SQLite and on PostgreSQL."""
    return both_databases


pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("format_", ["text", "html"])
async def test_cr_and_crlf_come_back_as_a_correction(app, format_):
    await app.fetch("POST", "/api/documents", {"document_id": "crlf", "format": format_}, admin=True)
    ws = await app.editor(document_id="crlf")
    sent = "a\r\nb\rc"
    await ws.send_msg("realtime_edit", {"base_revision": 0, "change_delta": {"position": 0, "insert": sent}}, "cr")
    ack = (await ws.recv_type("edit_ack"))["payload"]
    assert ack["content"] == "a\nb\nc" and ack["correction"] is not None
    assert TextOperation.from_json(ack["correction"]).apply(sent) == ack["content"]  # the sender converges
    await ws.send_msg("realtime_edit", {"base_revision": 1, "change_delta": {"position": 5, "insert": "!"}}, "next")
    assert (await ws.recv_type("edit_ack", "error"))["payload"]["content"] == "a\nb\nc!"


async def test_a_content_only_edit_with_crlf_is_corrected_too(app):
    ws = await app.editor()
    await ws.send_msg("realtime_edit", {"content": "x\r\ny"})
    ack = (await ws.recv_type("edit_ack"))["payload"]
    assert ack["content"] == "x\ny"
    assert TextOperation.from_json(ack["correction"]).apply("x\r\ny") == "x\ny"


async def test_an_empty_change_delta_is_acked_without_a_revision(app):
    ws, other = await app.editor(), await app.editor("bob")
    await ws.send_msg("realtime_edit", {"base_revision": 0, "change_delta": {"position": 0, "insert": "hi"}}, "one")
    await ws.recv_type("edit_ack")
    await other.recv_type("realtime_edit")
    await ws.send_msg("realtime_edit", {"base_revision": 1, "change_delta": []}, "noop")
    ack = await ws.recv_type("edit_ack", "error")
    assert ack["type"] == "edit_ack" and ack["id"] == "noop"
    assert ack["payload"]["revision"] == 1 and ack["payload"]["content"] == "hi"
    await other.nothing(0.3)
    await app.settle()
    assert await app.deps.store.last_revision("default") == 1
    assert await app.events(kind="security") == []


async def test_a_message_over_the_limit_is_refused_with_its_own_id(app):
    ws = await app.editor()
    big = json.dumps({"id": "paste-7", "type": "realtime_edit", "payload": {"content": "x" * 30000}})
    await ws.send(big)
    error = await ws.recv_type("error")
    assert error["payload"]["code"] == "MESSAGE_TOO_LARGE" and error["id"] == "paste-7"


async def test_every_edit_of_a_flood_ends_in_an_ack_or_an_error_naming_it(app):
    ws = await app.editor()
    ids = [f"e{i}" for i in range(400)]
    for id_ in ids:  # sent at once, far over the default 50/s with a burst of 100
        await ws.send({"id": id_, "type": "realtime_edit", "payload": {"change_delta": {"position": 0, "insert": "x"}}})
    answered: dict[str, dict] = {}
    while len(answered) < len(ids):
        message = await ws.recv_type("edit_ack", "error", timeout=10)
        answered[message["id"]] = message
    assert set(answered) == set(ids)
    limited = [m for m in answered.values() if m["type"] == "error"]
    assert limited and all(m["payload"]["code"] == "RATE_LIMITED" for m in limited)
    assert all(m["payload"]["details"]["retry_after_ms"] > 0 for m in limited)
    acked = [m for m in answered.values() if m["type"] == "edit_ack"]
    assert sorted(m["payload"]["revision"] for m in acked) == list(range(1, len(acked) + 1))
    await app.settle()
    assert len(await app.events(type="rate_limited")) <= 3  # the log stays bounded


async def test_a_delete_past_the_end_after_a_concurrent_delete_is_not_an_offence(start):
    app = await start(violation_threshold=3)
    alice, bob = await app.editor("alice"), await app.editor("bob")
    await alice.send_msg("realtime_edit", {"change_delta": {"position": 0, "insert": "abcdef"}})
    await alice.recv_type("edit_ack")
    await bob.recv_type("realtime_edit")
    await alice.send_msg("realtime_edit", {"change_delta": {"position": 0, "delete": 5}})
    await alice.recv_type("edit_ack")
    for i in range(5):  # bob has not seen alice's delete and names no base revision
        await bob.send_msg("realtime_edit", {"change_delta": {"position": 4, "delete": 2}}, f"late{i}")
        error = await bob.recv_type("error")
        assert error["id"] == f"late{i}" and error["payload"]["code"] == "INVALID_MESSAGE"
        assert error["payload"]["details"]["length"] == 1  # the document it was applied to
    await bob.send_msg("heartbeat", {}, "still-here")
    assert (await bob.recv_type("heartbeat_ack"))["id"] == "still-here"
    await app.settle()
    assert {e["severity"] for e in await app.events(type="invalid_message")} == {"low"}


async def test_a_refusal_names_the_length_at_its_base_revision(app):
    ws = await app.editor()
    for text in ("abc", "defgh"):
        await ws.send_msg("realtime_edit", {"change_delta": {"position": 0, "insert": text}})
        await ws.recv_type("edit_ack")
    await ws.send_msg("realtime_edit", {"base_revision": 1, "change_delta": {"position": 9, "insert": "x"}}, "far")
    error = await ws.recv_type("error")
    assert error["payload"]["details"]["length"] == 3 and error["payload"]["details"]["base_revision"] == 1


def _insert(text: str, position: int = 0, base: int | None = None) -> dict:
    payload = {"change_delta": {"position": position, "insert": text}}
    return payload if base is None else {**payload, "base_revision": base}


async def test_a_resent_edit_is_answered_with_its_original_ack_on_the_same_connection(app):
    ws, viewer = await app.editor(), await app.editor("viewer")
    await ws.send_msg("realtime_edit", _insert("<p>hi<script>x</script></p>", base=0), "edit-42")
    first = (await ws.recv_type("edit_ack"))["payload"]
    await viewer.recv_type("realtime_edit")
    await ws.send_msg("realtime_edit", _insert("<p>hi<script>x</script></p>", base=0), "edit-42")
    again = (await ws.recv_type("edit_ack"))["payload"]
    assert again == first and first["correction"] is not None  # the same revision, op, correction, content
    await viewer.nothing(0.3)
    await app.settle()
    assert await app.deps.store.last_revision("default") == 1


async def test_a_resent_edit_after_a_reconnect_is_not_applied_twice(app):
    session = await app.session()
    ws = await app.ws_connect(session["session_id"])
    await ws.send_msg("realtime_edit", _insert("once"), "edit-42")
    first = (await ws.recv_type("edit_ack"))["payload"]
    await ws.close()
    again_ws = await app.ws_connect(session["session_id"])
    await again_ws.send_msg("realtime_edit", _insert("once"), "edit-42")
    again = (await again_ws.recv_type("edit_ack"))["payload"]
    assert again["revision"] == first["revision"] == 1 and again["content"] == "once"
    await again_ws.send_msg("realtime_edit", _insert("!", 4), "edit-43")
    assert (await again_ws.recv_type("edit_ack"))["payload"]["content"] == "once!"


async def test_a_resent_edit_after_a_restart_is_recognized_however_old(start, tmp_path):
    app = await start(history_window=5)
    session = await app.session()
    ws = await app.ws_connect(session["session_id"])
    for i in range(12):
        await ws.send_msg("realtime_edit", _insert(str(i % 10)), f"e{i}")
        await ws.recv_type("edit_ack")
    await app.server.stop()
    app = await start(history_window=5)
    ws = await app.ws_connect(session["session_id"])
    content = ws.state["payload"]["content"]
    await ws.send_msg("realtime_edit", _insert("0"), "e0")  # older than anything in memory
    ack = (await ws.recv_type("edit_ack", "error"))["payload"]
    assert ack["revision"] == 1 and ack["content"] == "0"
    await app.settle()
    assert await app.deps.store.last_revision("default") == 12
    assert (await app.fetch("GET", "/api/documents/default", admin=True)).json["content"] == content


async def test_the_same_message_id_from_another_session_is_another_edit(app):
    alice, bob = await app.editor("alice"), await app.editor("bob")
    await alice.send_msg("realtime_edit", _insert("a"), "same")
    await alice.recv_type("edit_ack")
    await bob.recv_type("realtime_edit")
    await bob.send_msg("realtime_edit", _insert("b", base=1), "same")
    assert (await bob.recv_type("edit_ack"))["payload"]["revision"] == 2


async def test_sync_response_and_history_name_each_ops_peer_and_message(app):
    ws = await app.editor()
    await ws.send_msg("realtime_edit", _insert("x"), "mine")
    await ws.recv_type("edit_ack")
    await ws.send_msg("sync_request", {"since_revision": 0}, "sync")
    ops = (await ws.recv_type("sync_response"))["payload"]["ops"]
    peer = ws.session["peer_id"]
    assert [(o["revision"], o["peer_id"], o["message_id"]) for o in ops] == [(1, peer, "mine")]
    await app.settle()
    history = (await app.fetch("GET", "/api/documents/default/history", admin=True)).json["ops"]
    assert [(o["peer_id"], o["message_id"]) for o in history] == [(peer, "mine")]


async def test_the_migration_keeps_a_database_that_holds_duplicates(tmp_path):
    import sqlite3

    from mcprt.storage.migrations import MIGRATIONS_DIR
    from mcprt.storage.sqlite import SqliteStore
    db = tmp_path / "old.db"
    store = SqliteStore(str(db), migrations_dir=tmp_path / "m")
    store.migrations_dir.mkdir()
    for name in ("0001_init.sql", "0002_health_probe.sql"):  # a SQLite database from before 0003
        (store.migrations_dir / name).write_text((MIGRATIONS_DIR / "sqlite" / name).read_text())
    await store.open()
    await store.close()
    with sqlite3.connect(db) as conn:  # what the double-apply bug left behind
        conn.execute("INSERT INTO documents VALUES ('d', 'text', '2025-11-07T10:00:00.000000Z')")
        for revision in (1, 2):
            conn.execute("INSERT INTO ops (document_id, revision, op, peer_id, message_id, time)"
                         " VALUES ('d', ?, '[\"x\"]', 'p', 'dup', '2025-11-07T10:00:00.000000Z')", (revision,))
    store = await SqliteStore(str(db)).open()
    try:
        rows = [(r.revision, r.message_id) for r in await store.ops("d", 0)]
    finally:
        await store.close()
    assert rows == [(1, "dup"), (2, None)]


async def test_resent_edits_are_known_before_and_after_the_writer_indexes_their_message_ids(tmp_path, monkeypatch):
    """SQLite keeps the exactly-once index off the commit path (migration 0007): op_messages is filled
    between two batches from the ops past a document's messages_through, a bounded chunk a pass, and a
    lookup reads both. So a message id is found at every point of that, across a restart, and it goes
    with its document."""
    from mcprt.storage import sqlite
    from mcprt.storage.base import document_deleted, document_written, op_written
    from mcprt.storage.sqlite import SqliteStore
    db, t0 = str(tmp_path / "x.db"), 1767225600.0
    monkeypatch.setattr(sqlite, "_INDEX_CHUNK", 2)  # revisions of a document a pass: 3 take two passes

    async def indexed(store) -> tuple[dict, int | None]:  # op_messages of "d", and its messages_through
        rows = await store._fetch("SELECT message_id, revision FROM op_messages WHERE document_id = 'd'")
        through = await store._fetch("SELECT messages_through FROM documents WHERE document_id = 'd'")
        return dict(rows), through[0][0] if through else None

    async def maintained(store, through: int) -> int:  # maintenance passes until "d" is indexed through
        passes, index = [], store._index_messages  # `through`; how many passes that took

        def counted(documents):
            passes.append(documents)
            return index(documents)
        store._index_messages = counted
        store.request_maintenance()
        for _ in range(50):
            await store.barrier()
            if (await indexed(store))[1] == through:
                break
        del store._index_messages
        return len(passes)

    store = await SqliteStore(db, checkpoint_interval=3600).open()  # no pass but the test's own
    await store.submit(document_written("d", "text", t0))
    for r in (1, 2, 3):
        await store.submit(op_written("d", r, '["x"]', "u", "p", f"m{r}", t0))
    assert await indexed(store) == ({}, 0)
    assert await store.message_revisions("d", "p") == {"m1": 1, "m2": 2, "m3": 3}
    assert await maintained(store, 3) == 2  # two revisions a pass
    assert await indexed(store) == ({"m1": 1, "m2": 2, "m3": 3}, 3)
    await store.submit(op_written("d", 4, '["x"]', "u", "p", "m4", t0), op_written("d", 5, '["x"]', "u", "q", "m5", t0))
    assert await store.message_revisions("d", "p") == {"m1": 1, "m2": 2, "m3": 3, "m4": 4}
    await store.close()

    # 4 and 5 are not indexed yet: read from the ops, and indexed at the next pass
    store = await SqliteStore(db, checkpoint_interval=3600).open()
    try:
        assert await store.message_revisions("d", "p") == {"m1": 1, "m2": 2, "m3": 3, "m4": 4}
        assert await store.message_revisions("d", "q") == {"m5": 5}
        assert await maintained(store, 5) == 1
        assert await indexed(store) == ({"m1": 1, "m2": 2, "m3": 3, "m4": 4, "m5": 5}, 5)
        assert await store.message_revisions("d", "q") == {"m5": 5}
        await store.submit(*document_deleted("d"))
        assert await indexed(store) == ({}, None)
        assert await store.message_revisions("d", "p") == {}
    finally:
        await store.close()


async def test_the_migration_that_moves_the_message_index_keeps_every_message_id(tmp_path):
    import sqlite3

    from mcprt.storage.migrations import MIGRATIONS_DIR
    from mcprt.storage.sqlite import SqliteStore
    db = tmp_path / "old.db"
    store = SqliteStore(str(db), migrations_dir=tmp_path / "m")
    store.migrations_dir.mkdir()
    for path in sorted((MIGRATIONS_DIR / "sqlite").glob("000[1-6]_*.sql")):  # a database from before 0007
        (store.migrations_dir / path.name).write_text(path.read_text())
    await store.open()
    await store.close()
    with sqlite3.connect(db) as conn:
        for document, revisions in (("d", 3), ("e", 2)):
            conn.execute("INSERT INTO documents VALUES (?, 'text', '2025-11-07T10:00:00.000000Z')", (document,))
            for revision in range(1, revisions + 1):
                message = None if (document, revision) == ("d", 2) else f"{document}{revision}"
                conn.execute("INSERT INTO ops (document_id, revision, op, peer_id, message_id, time)"
                             " VALUES (?, ?, '[\"x\"]', 'p', ?, '2025-11-07T10:00:00.000000Z')",
                             (document, revision, message))
    store = await SqliteStore(str(db)).open()
    try:
        assert await store.message_revisions("d", "p") == {"d1": 1, "d3": 3}
        assert await store.message_revisions("e", "p") == {"e1": 1, "e2": 2}
        assert sorted(await store._fetch("SELECT document_id, messages_through FROM documents")) == [("d", 3), ("e", 2)]
        assert len(await store._fetch("SELECT * FROM op_messages")) == 4
        assert await store._fetch("SELECT name FROM sqlite_master WHERE name = 'ops_message'") == []
    finally:
        await store.close()


async def test_lean_clients_get_ops_and_lengths_and_converge_with_reference_clients(app):
    session, other = await app.session("lean"), await app.session("reference")
    lean = await app.ws_connect(session["session_id"], subprotocols=["mcprt.ops.v1"])
    assert lean.conn.subprotocol == "mcprt.ops.v1"
    reference = await app.ws_connect(other["session_id"])
    assert reference.conn.subprotocol is None
    await reference.send_msg("realtime_edit", _insert("x" * 5000, base=0), "big")
    await reference.recv_type("edit_ack")
    seen = (await lean.recv_type("realtime_edit"))["payload"]
    assert "content" not in seen and seen["length"] == 5000 and seen["revision"] == 1
    await lean.send_msg("realtime_edit", _insert("<b>y</b>", 5000, base=1), "small")
    ack = (await lean.recv_type("edit_ack"))["payload"]
    assert "content" not in ack and ack["length"] == 5008 and ack["revision"] == 2
    assert len(json.dumps(ack)) < 200  # independent of the document's size
    full = (await reference.recv_type("realtime_edit"))["payload"]
    assert full["content"] == "x" * 5000 + "<b>y</b>" and full["change_delta"]
    text = TextOperation.from_json(ack["op"]).apply(TextOperation.from_json(seen["op"]).apply(""))
    assert text == full["content"]  # a lean client that applies the ops holds the reference client's content


COSTLY = ("<p>x" * 2400)[:9600]  # unclosed paragraphs: the costliest 10 KB of markup found for both engines


async def test_a_costly_markup_edit_does_not_stall_other_documents(tmp_path):
    """Against a server in its own process (in this one, the test's client would stall with it)."""
    from support import editor_of, free_port, spawn_server
    port = free_port()
    proc = spawn_server(str(tmp_path / "s.db"), port, "--log-level", "warning")
    try:
        (_, writer), (_, other) = await editor_of(port, "writer", "heavy", "html"), await editor_of(port, "other", "light")
        loop = asyncio.get_running_loop()
        sent = loop.time()
        await writer.send(json.dumps({"id": "heavy-edit", "type": "realtime_edit", "payload": {
            "base_revision": 0, "change_delta": {"position": 0, "insert": COSTLY}}}))
        await asyncio.sleep(0.02)  # the edit is in the server's hands
        beats = []
        for i in range(5):
            started = loop.time()
            await other.send(json.dumps({"id": f"hb{i}", "type": "heartbeat", "payload": {}}))
            while json.loads(await asyncio.wait_for(other.recv(), 10))["type"] != "heartbeat_ack":
                pass
            beats.append(loop.time() - started)
        while (ack := json.loads(await asyncio.wait_for(writer.recv(), 30)))["type"] not in ("edit_ack", "error"):
            pass
        took = loop.time() - sent
        assert ack["type"] == "edit_ack" and ack["payload"]["revision"] == 1
        assert max(beats) < took / 3, (beats, took)  # answered while the markup was being cleaned elsewhere
        await writer.close()
        await other.close()
    finally:
        proc.terminate()
        proc.wait(10)


async def test_edits_queued_behind_markup_keep_their_order(app):
    ws = await app.editor()
    await ws.send_msg("realtime_edit", {"base_revision": 0, "change_delta": {"position": 0, "insert": "<b>bold</b>"}},
                      "markup")
    for letter in "xyz":  # typed at the end while the markup is still being cleaned, against the same base
        await ws.send_msg("realtime_edit", {"base_revision": 0, "change_delta": {"position": 0, "insert": letter}},
                          f"typed-{letter}")
    acks = [(await ws.recv_type("edit_ack", "error"))["payload"] for _ in range(4)]
    assert [a["revision"] for a in acks] == [1, 2, 3, 4], acks
    content = ""
    for ack in acks:  # each op is the document's next revision, in arrival order
        content = TextOperation.from_json(ack["op"]).apply(content)
    assert content == acks[-1]["content"] and sorted(content.replace("<b>bold</b>", "")) == ["x", "y", "z"]
    assert acks[0]["content"] == "<b>bold</b>"


async def test_markup_past_the_sanitize_budget_is_refused_and_the_worker_replaced(start):
    app = await start(sanitize_budget=0.05)
    ws = await app.editor()
    await ws.send_msg("realtime_edit", {"base_revision": 0, "change_delta": {"position": 0, "insert": COSTLY}}, "slow")
    error = await ws.recv_type("error", "edit_ack", timeout=10)
    assert error["id"] == "slow" and error["payload"]["code"] == "INVALID_MESSAGE"
    assert error["payload"]["details"]["budget_seconds"] == 0.05
    await ws.send_msg("realtime_edit", {"base_revision": 0, "change_delta": {"position": 0, "insert": "<i>ok</i>"}},
                      "fine")
    ack = (await ws.recv_type("edit_ack", "error", timeout=10))["payload"]
    assert ack["revision"] == 1 and ack["content"] == "<i>ok</i>"


async def test_markup_edits_on_a_large_document_clean_only_their_span_and_match_the_whole(app):
    from mcprt.bench import _rich_text
    from mcprt.sanitize import clean_html
    await app.fetch("POST", "/api/documents", {"document_id": "big", "format": "html"}, admin=True)
    ws = await app.editor(document_id="big")
    block = _rich_text(1)
    content, revision = "", 0
    for i in range(12):  # 12 pastes of 3 KB each, at the end
        await ws.send_msg("realtime_edit", _insert(block * 12, len(content), base=revision), f"fill-{i}")
        ack = (await ws.recv_type("edit_ack", "error"))["payload"]
        content, revision = ack["content"], ack["revision"]
    assert content == block * 144
    middle = len(content) // 2
    word = content.index("ordinary", middle) + 3
    edits = {  # what an editor sends, where
        "enter": ("</p><p>", word, 0),
        "bold": ("<b>x</b>", word, 0),
        "dangerous paste": ('<img src="x" onerror="alert(1)">', word, 0),
        "a list between blocks": ("<ul><li>new</li></ul>", content.index("<p>", middle), 0),
        "delete across two blocks": ("", word, 300),
    }
    for name, (insert, position, delete) in edits.items():
        delta = {"position": position, **({"insert": insert} if insert else {}), **({"delete": delete} if delete else {})}
        await ws.send_msg("realtime_edit", {"base_revision": revision, "change_delta": delta}, name)
        ack = (await ws.recv_type("edit_ack", "error"))["payload"]
        assert "content" in ack, (name, ack)
        sent = content[:position] + insert + content[position + delete:]
        assert ack["content"] == clean_html(sent).html, name
        correction = ack["correction"]
        assert (TextOperation.from_json(correction).apply(sent) if correction else sent) == ack["content"], name
        content, revision = ack["content"], ack["revision"]
        word = content.index("ordinary", middle) + 3
    assert "onerror" not in content and '<img src="x">' not in content
    await app.settle()
    assert [e["type"] for e in await app.events(kind="security")] == ["xss_attempt"]
    metrics = (await app.fetch("GET", "/metrics", admin=True)).body.decode()
    assert 'mcprt_markup_cleans_total{scope="span"} 17.0' in metrics
    assert 'mcprt_markup_cleans_total{scope="whole"} 0.0' in metrics
