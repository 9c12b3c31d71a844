"""The audit trail over the real server: XSS neutralized everywhere and recorded, the events API and CLI, retention."""

from __future__ import annotations

import asyncio
import json
import re
import sys

import pytest

from mcprt.__main__ import main
from xss_corpus import XSS_VECTORS
from support import ROOT, snapshot_revisions


@pytest.fixture
def database(both_databases) -> str:
    """Every server in this module runs on SQLite and on PostgreSQL."""
    return both_databases


pytestmark = pytest.mark.asyncio

_ON_ATTRIBUTE = re.compile(r"<[^>]*\son[a-z]+\s*=", re.IGNORECASE)
_BAD_URL = re.compile(r"""(href|src|action)\s*=\s*["']?\s*(javascript|vbscript|data):""", re.IGNORECASE)


def assert_neutral(html: str) -> None:
    """Nothing that can run script: no script element, no event handler, no script URL."""
    lowered = html.lower()
    assert "<script" not in lowered and "<iframe" not in lowered and "<svg" not in lowered, html
    assert not _ON_ATTRIBUTE.search(html), html
    assert not _BAD_URL.search(html), html


async def test_xss_corpus_is_neutralized_in_broadcast_storage_and_state_and_recorded(start, tmp_path):
    app = await start(violation_threshold=10**6)
    attacker, viewer = await app.editor("mallory"), await app.editor("victim")
    assert len(XSS_VECTORS) >= 50
    for i, vector in enumerate(XSS_VECTORS):
        await attacker.send_msg("realtime_edit", {"content": vector}, f"x{i}")
        ack = await attacker.recv_type("edit_ack", "error")
        assert ack["type"] == "edit_ack", (vector, ack)
        assert_neutral(ack["payload"]["content"])
        broadcast = await viewer.recv_type("realtime_edit")
        assert_neutral(broadcast["payload"]["content"])
        assert broadcast["payload"]["content"] == ack["payload"]["content"]
        # the op the viewer applies can't smuggle anything either
        assert_neutral("".join(p for p in broadcast["payload"]["op"] if isinstance(p, str)))
    late = await app.editor("late")
    assert_neutral(late.state["payload"]["content"])
    await app.settle()
    store = app.deps.store
    for document_id in {attacker.state["payload"]["document_id"]}:
        for op in await store.ops(document_id, 0):
            assert_neutral("".join(p for p in op.op if isinstance(p, str)))
        for revision in await snapshot_revisions(store, document_id):
            assert_neutral((await store.latest_snapshot(document_id, revision)).content)
    events = await app.events(type="xss_attempt", limit=1000)
    assert len(events) >= len(XSS_VECTORS) * 0.8
    assert all(e["severity"] == "high" and e["details"]["removed"] and e["user_id"] == "mallory" for e in events)


BENIGN = ["<p>Hello <b>bold</b> and <i>italic</i></p>", "<ul><li>one</li><li>two</li></ul>",
          '<a href="https://example.com" title="t">link</a>', "plain &amp; simple", "<div>line</div><div><br></div>"]


@pytest.mark.parametrize("html", BENIGN)
async def test_benign_rich_text_is_unchanged_and_not_recorded(app, html):
    ws = await app.editor()
    await ws.send_msg("realtime_edit", {"content": html})
    ack = await ws.recv_type("edit_ack")
    assert ack["payload"]["content"] == html and ack["payload"]["correction"] is None
    await app.settle()
    assert await app.events(type="xss_attempt") == []


async def test_sender_converges_on_the_sanitized_content_through_the_correction(app):
    from mcprt.ot import TextOperation
    ws = await app.editor()
    mine = "<p>hi<script>alert(1)</script></p>"
    await ws.send_msg("realtime_edit", {"content": mine})
    ack = await ws.recv_type("edit_ack")
    assert ack["payload"]["correction"] is not None
    assert TextOperation.from_json(ack["payload"]["correction"]).apply(mine) == ack["payload"]["content"]


async def test_violation_window_disconnects_after_repeated_xss(start):
    app = await start(violation_threshold=3)
    ws = await app.editor()
    for i in range(3):
        await ws.send_msg("realtime_edit", {"content": f"<img src=x onerror=alert({i})>"})
    code, _ = await ws.closed()
    assert code == 1008
    await app.settle()
    assert len(await app.events(type="abuse_disconnect")) == 1


async def _seed_events(app) -> None:
    audit = app.deps.audit
    for i in range(7):
        audit.security("invalid_message", None, {"i": i}, session_id="s-1", user_id="u1", document_id="d1")
    for i in range(3):
        audit.security("xss_attempt", None, {"i": i}, session_id="s-2", user_id="u2", document_id="d2",
                       client_addr="203.0.113.9")
    audit.event("system", "note", "info", {})
    await app.settle()


async def test_events_api_needs_the_admin_token(app):
    assert (await app.fetch("GET", "/api/events")).status == 401
    assert (await app.fetch("GET", "/api/events", headers={"Authorization": "Bearer nope"})).status == 401


async def test_events_api_filters_and_paginates(app):
    await _seed_events(app)
    reply = await app.fetch("GET", "/api/events?kind=security&severity=medium&limit=3", admin=True)
    assert reply.status == 200
    seen = list(reply.json["events"])
    while reply.json["next_cursor"] is not None:
        reply = await app.fetch("GET", reply.json["next"], admin=True)
        seen += reply.json["events"]
    assert len(seen) == 7 and all(e["type"] == "invalid_message" for e in seen)
    assert [e["id"] for e in seen] == sorted((e["id"] for e in seen), reverse=True)
    for query, count in (("type=xss_attempt", 3), ("session_id=s-2", 3), ("user_id=u1", 7), ("document_id=d2", 3),
                         ("severity=high", 3), ("kind=system&type=note", 1),
                         ("since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z&kind=security", 10),
                         ("since=2999-01-01T00:00:00Z", 0)):
        got = (await app.fetch("GET", f"/api/events?{query}&limit=1000", admin=True)).json["events"]
        assert len(got) == count, query
    assert (await app.fetch("GET", "/api/events?since=yesterday", admin=True)).status == 400
    assert (await app.fetch("GET", "/api/events?limit=0", admin=True)).status == 400


async def test_events_api_refuses_unknown_filters_and_takes_addresses_and_durations(start, clock):
    app = await start(clock=clock)
    await _seed_events(app)
    got = (await app.fetch("GET", "/api/events?client_addr=203.0.113.9", admin=True)).json["events"]
    assert len(got) == 3 and {e["type"] for e in got} == {"xss_attempt"}
    for query, pointer in (("client=203.0.113.9", "?client"), ("kind=securty", "?kind"), ("severity=loud", "?severity"),
                           ("since=1x", "?since")):
        reply = await app.fetch("GET", f"/api/events?{query}", admin=True)
        assert reply.status == 400 and reply.json["error"]["details"]["pointer"] == pointer, (query, reply.json)
    assert "client_addr" in (await app.fetch("GET", "/api/events?client=x", admin=True)).json["error"]["message"]
    clock.now += 7200
    app.deps.audit.event("system", "later", "info", {})
    await app.settle()
    recent = (await app.fetch("GET", "/api/events?since=1h&limit=1000", admin=True)).json["events"]
    assert [e["type"] for e in recent] == ["later"]  # the hour back from the server's now
    assert len((await app.fetch("GET", "/api/events?since=3h&limit=1000", admin=True)).json["events"]) == 13


async def test_every_security_event_names_who_and_where(app):
    ws = await app.editor("alice")
    await ws.send("{broken", )
    await ws.recv_type("error")
    await app.settle()
    event = (await app.events(kind="security"))[0]
    for field in ("session_id", "user_id", "document_id", "connection_id", "client_addr", "user_agent"):
        assert event[field], field
    assert isinstance(event["details"], dict) and event["details"]["code"] == "INVALID_MESSAGE"


async def test_retention_prunes_old_events_and_records_it(start, clock):
    app = await start(clock=clock, event_retention=3600)
    app.deps.audit.event("system", "old", "info", {})
    await app.settle()
    clock.advance(7200)
    app.deps.audit.event("system", "new", "info", {})
    await app.server.sweep()
    await app.settle()
    types = {e["type"] for e in await app.events(limit=100)}
    assert "old" not in types and {"new", "events_pruned"} <= types


async def test_events_cli_table_json_and_filters(start, tmp_path, capsys):
    app = await start()
    await _seed_events(app)
    db = app.server.settings.db
    loop = asyncio.get_running_loop()
    code = await loop.run_in_executor(None, main, ["events", "--db", db, "--kind", "security", "--since", "1h"])
    assert code == 0
    out = capsys.readouterr().out
    assert "10 event(s)" in out and "xss_attempt" in out and "invalid_message" in out
    code = await loop.run_in_executor(None, main, ["events", "--db", db, "--type", "xss_attempt", "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert code == 0 and len(lines) == 3 and all(l["type"] == "xss_attempt" for l in lines)
    assert [l["id"] for l in lines] == sorted(l["id"] for l in lines)  # oldest first, like a log
    code = await loop.run_in_executor(None, main, ["events", "--db", db, "--since", "not-a-time"])
    assert code == 2


async def test_events_cli_follow_prints_new_events_while_the_server_runs(start, tmp_path):
    app = await start()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mcprt", "events", "--db", app.server.settings.db, "--follow", "--json",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    try:
        await asyncio.sleep(1.0)
        app.deps.audit.security("xss_attempt", None, {"marker": "followed"})
        await app.settle()
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
            if b"followed" in line:
                break
    finally:
        proc.terminate()
        await proc.wait()
