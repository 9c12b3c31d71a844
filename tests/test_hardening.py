"""Hostile input at the boundaries: each attack is replayed against the real server, which must answer it
with the documented error, record it, and keep serving everyone else."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from mcprt.app import masked_uri

pytestmark = pytest.mark.asyncio

LONE = "\\ud800"  # as it travels: a JSON escape of a lone surrogate


async def test_lone_surrogate_user_id_is_refused_and_the_server_keeps_storing(app):
    for body in ('{"user_id":"%s"}' % LONE, '{"user_id":"alice","client_info":"x%sy"}' % LONE,
                 '{"user_id":"alice","\\udfff":1}'):
        reply = await app.fetch("POST", "/api/sessions", raw=body.encode())
        assert reply.status == 400 and reply.json["error"]["code"] == "INVALID_MESSAGE", body
    raw_utf8 = b'{"user_id":"\xed\xa0\x80"}'  # a surrogate encoded as if it were UTF-8: not UTF-8
    assert (await app.fetch("POST", "/api/sessions", raw=raw_utf8)).status == 400
    session = await asyncio.wait_for(app.session("after"), 5)
    assert (await app.fetch("GET", f"/api/sessions/{session['session_id']}")).status == 200
    assert (await app.fetch("GET", "/health")).status == 200


@pytest.mark.parametrize("template, readable_id", [
    ('{"id":"%s","type":"heartbeat","payload":{}}' % LONE, False),
    ('{"id":"e1","type":"realtime_edit","payload":{"user_id":"%s","content":"x"}}' % LONE, True),
    ('{"id":"e1","type":"realtime_edit","payload":{"operation":"%s","change_delta":{"position":0,"insert":"x"}}}'
     % LONE, True),
    ('{"id":"e1","type":"realtime_edit","payload":{"change_delta":{"position":0,"insert":"a%sb"}}}' % LONE, True),
    ('{"id":"e1","type":"heartbeat","payload":{"%s":1}}' % LONE, True),
    ('{"id":"e1","type":"cursor_update","payload":{"position":1.0}}', True),
    ('{"id":"e1","type":"realtime_edit","payload":{"base_revision":1.0,"content":"x"}}', True),
    ('{"id":"e1","type":"realtime_edit","payload":{"base_revision":%s,"content":"x"}}' % ("9" * 5000), False),
    ('{"id":"e1","type":"realtime_edit","payload":{"base_revision":%d,"content":"x"}}' % 2**63, True),
    ('{"id":"e1","type":"realtime_edit","payload":{"change_delta":{"position":%d,"insert":"x"}}}' % 2**60, True),
    ('{"id":"e1","type":"sync_request","payload":{"since_revision":NaN}}', True),
    ('{"id":"e1","type":"sync_request","payload":{"since_revision":1e400}}', True),
])
async def test_odd_json_is_invalid_message_and_the_document_goes_on(app, template, readable_id, caplog):
    writer, reader = await app.editor("writer"), await app.editor("reader")
    await writer.send(template)
    error = await writer.recv_type("error")
    assert error["payload"]["code"] == "INVALID_MESSAGE", error
    assert error["id"] == "e1" if readable_id else error["id"] != "e1"
    await writer.send_msg("realtime_edit", {"change_delta": {"position": 0, "insert": "ok"}}, "good")
    ack = await writer.recv_type("edit_ack")
    assert ack["payload"]["revision"] == 1 and ack["payload"]["content"] == "ok"
    seen = await reader.recv_type("realtime_edit")
    assert seen["payload"]["revision"] == 1  # no gap: nothing was half-applied
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "took the SERVER_ERROR path"
    await app.settle()
    assert await app.deps.store.last_revision("default") == 1
    assert [e["type"] for e in await app.events(kind="security")] == ["invalid_message"]


async def test_a_bogus_credential_is_stored_as_a_masked_prefix_only(app):
    bogus = "B" * 6000
    for credential in (bogus, app.deps.settings.admin_token):
        ws = await app.ws_connect(credential, state=False)
        code, _ = await ws.closed()
        assert code == 4000
    await app.settle()
    events = await app.events(kind="security")
    assert len(events) == 2
    for event in events:
        row = json.dumps(event)
        assert event["session_id"] is None and len(row) < 2000
        assert app.deps.settings.admin_token not in row and bogus[:9] not in row
    assert {e["details"]["claimed_session"] for e in events} == {"BBBBBBBB…", app.deps.settings.admin_token[:8] + "…"}


async def test_every_stored_field_is_capped(app):
    long_path = "/api/documents/" + "p" * 7000
    assert (await app.fetch("GET", long_path, headers={"User-Agent": "u" * 5000})).status == 401
    app.deps.audit.security("invalid_message", None, {"sample": "s" * 10000, "nested": [[[[["deep"]]]]],
                            "many": list(range(500))}, document_id="d" * 1000, user_id="u" * 1000)
    await app.settle()
    for event in await app.events(kind="security"):
        assert len(json.dumps(event)) < 3000
        assert len(event["user_agent"] or "") <= 256 and len(event["document_id"] or "") <= 128


async def test_violations_without_a_session_count_per_address_and_their_events_are_coalesced(start, clock):
    app = await start(clock=clock, violation_threshold=5)
    for i in range(60):
        ws = await app.ws_connect(f"bogus-{i}", state=False)
        code, got = await ws.closed()
        assert code == (4000 if i < 5 else 4029), i  # past the threshold the address is told to back off
        assert got[0]["payload"]["code"] == ("INVALID_SESSION" if i < 5 else "RATE_LIMITED")
    assert set(app.deps.audit._violations) == {"addr:127.0.0.1"}  # one window, not one per bogus id
    await app.settle()
    written = await app.events(kind="security", limit=1000)
    assert len(written) == 30  # SOURCE_LIMIT a minute per address and type
    clock.advance(61)
    await app.server.sweep()
    await app.settle()
    summary = (await app.events(type="events_suppressed"))
    assert sum(e["details"]["suppressed"] for e in summary) == 30
    session = await app.session("honest")  # an address over the threshold still gets valid work done
    ws = await app.ws_connect(session["session_id"])
    assert ws.state["type"] == "document_state"


async def test_rest_credential_failures_from_one_address_are_told_to_back_off(start):
    app = await start(violation_threshold=3)
    codes = []
    for i in range(5):
        reply = await app.fetch("GET", "/api/documents/x", headers={"X-Session-ID": f"guess-{i}"})
        codes.append((reply.status, reply.json["error"]["code"]))
    assert codes == [(401, "INVALID_SESSION")] * 2 + [(429, "RATE_LIMITED")] * 3
    session = await app.session()
    reply = await app.fetch("GET", "/api/documents/x", headers={"X-Session-ID": session["session_id"]})
    assert reply.status == 404  # the credential holder from the same address is served


async def test_the_rate_limit_survives_a_reconnect(start):
    app = await start(rate_limit=0.5, rate_burst=3)
    session = await app.session()
    ws = await app.ws_connect(session["session_id"])
    for i in range(3):
        await ws.send_msg("heartbeat", {}, f"h{i}")
        await ws.recv_type("heartbeat_ack")
    await ws.close()
    again = await app.ws_connect(session["session_id"])
    await again.send_msg("heartbeat", {}, "h3")
    error = await again.recv_type("error", "heartbeat_ack")
    assert error["type"] == "error" and error["payload"]["code"] == "RATE_LIMITED"
    app.deps.limits.buckets.prune(time.time() + 60, keep=app.deps.hub.by_session.keys())
    assert len(app.deps.limits.buckets) == 1  # a live session keeps its bucket
    await again.close()
    await asyncio.sleep(0.1)
    app.deps.limits.buckets.prune(time.time() + 60, keep=app.deps.hub.by_session.keys())
    assert len(app.deps.limits.buckets) == 0  # refilled and gone: the same as a new one


async def test_a_foreign_host_header_is_refused_everywhere(app):
    foreign = {"Host": f"rebound.example:{app.server.port}"}
    for method, path in (("GET", "/health"), ("GET", "/"), ("POST", "/api/sessions"), ("GET", "/nope")):
        reply = await app.fetch(method, path, {"user_id": "a"} if method == "POST" else None, headers=foreign)
        assert reply.status == 400 and reply.json["error"]["code"] == "INVALID_MESSAGE", path
    session = await app.session()
    # The page a rebinding attack serves is same-origin with its own Host, so the Origin check passes.
    reader, writer = await asyncio.open_connection("127.0.0.1", app.server.port)
    writer.write((f"GET /ws?session_id={session['session_id']} HTTP/1.1\r\nHost: {foreign['Host']}\r\n"
                  f"Origin: http://{foreign['Host']}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    assert (await reader.readline()).startswith(b"HTTP/1.1 400")
    writer.close()
    for host in (f"localhost:{app.server.port}", f"127.0.0.1:{app.server.port}", f"[::1]:{app.server.port}"):
        assert (await app.fetch("GET", "/health", headers={"Host": host})).status == 200, host
    await app.settle()
    rejected = await app.events(type="host_rejected")
    assert sorted(e["details"]["path"] for e in rejected) == ["/", "/api/sessions", "/health", "/nope", "/ws"]


async def test_allowed_hosts_add_names(start):
    app = await start(allowed_hosts=(".example.com", "editor.example:8443"))
    for host, status in (("a.example.com", 200), ("example.com:80", 200), ("editor.example:8443", 200),
                         ("editor.example:9", 400), ("example.org", 400)):
        assert (await app.fetch("GET", "/health", headers={"Host": host})).status == status, host


async def test_document_creation_is_limited_per_user_session_and_address(start):
    app = await start(document_create_limit=3)
    session = await app.session()
    for i in range(3):
        await app.ws_connect(session["session_id"], f"doc-{i}")
    ws = await app.ws_connect(session["session_id"], "doc-3", state=False)
    code, got = await ws.closed()
    assert code == 4008 and got[0]["payload"]["code"] == "RATE_LIMITED"
    await app.ws_connect(session["session_id"], "doc-0")  # an existing document still opens
    other = await app.session("mallory")  # another user, same address
    reply = await app.fetch("POST", "/api/documents", {"document_id": "rest-doc"},
                            headers={"X-Session-ID": other["session_id"]})
    assert reply.status == 429 and reply.json["error"]["details"]["quota"] == "document_create_limit"
    assert (await app.fetch("POST", "/api/documents", {"document_id": "ops-doc"}, admin=True)).status == 201
    await app.settle()
    assert len(await app.events(type="document_quota")) == 2
    assert await app.deps.store.count_documents() == 4


async def test_the_server_holds_at_most_max_documents(start):
    app = await start(max_documents=2)
    assert (await app.fetch("POST", "/api/documents", {"document_id": "a"}, admin=True)).status == 201
    assert (await app.fetch("POST", "/api/documents", {"document_id": "b"}, admin=True)).status == 201
    reply = await app.fetch("POST", "/api/documents", {"document_id": "c"}, admin=True)
    assert reply.status == 429 and reply.json["error"]["details"]["quota"] == "max_documents"


async def test_document_id_guessing_is_throttled_per_session(start):
    app = await start(document_probe_limit=5)
    await app.fetch("POST", "/api/documents", {"document_id": "real"}, admin=True)
    session = await app.session()
    headers = {"X-Session-ID": session["session_id"]}
    for i in range(5):
        assert (await app.fetch("GET", f"/api/documents/guess-{i}", headers=headers)).status == 404
    for path in ("/api/documents/guess-9", "/api/documents/real", "/api/documents/real/history"):
        reply = await app.fetch("GET", path, headers=headers)
        assert reply.status == 429 and reply.json["error"]["code"] == "RATE_LIMITED", path
    other = await app.session("bob")
    assert (await app.fetch("GET", "/api/documents/real", headers={"X-Session-ID": other["session_id"]})).status == 200
    await app.settle()
    assert len(await app.events(type="document_probe")) == 1


async def _abuse(app, session_id: str) -> int:
    ws = await app.ws_connect(session_id)
    for i in range(app.deps.settings.violation_threshold):
        await ws.send("{not json")
    code, _ = await ws.closed()
    return code


async def test_repeated_abuse_earns_a_cooldown_and_then_ends_the_session(start, clock):
    app = await start(clock=clock, violation_threshold=2)
    session = await app.session()
    sid = session["session_id"]
    assert await _abuse(app, sid) == 1008
    refused = await app.ws_connect(sid, state=False)
    code, got = await refused.closed()
    assert code == 4029 and got[0]["payload"]["details"]["retry_after"] == 10.0
    clock.advance(11)
    assert await _abuse(app, sid) == 1008
    clock.advance(11)
    refused = await app.ws_connect(sid, state=False)
    assert (await refused.closed())[0] == 4029  # the second cool-down is twice as long
    clock.advance(10)
    assert await _abuse(app, sid) == 1008
    await asyncio.sleep(0.1)
    assert (await app.fetch("GET", f"/api/sessions/{sid}")).json["state"] == "Invalidated"
    await app.settle()
    actions = [e["details"]["action"] for e in await app.events(type="abuse_disconnect")]
    assert sorted(actions) == ["disconnect", "disconnect", "invalidate"]


async def test_an_expired_session_gets_no_more_acks(start, clock):
    app = await start(clock=clock, session_ttl=60)
    ws = await app.editor()
    clock.advance(61)
    await ws.send_msg("realtime_edit", {"change_delta": {"position": 0, "insert": "late"}}, "late-edit")
    error = await ws.recv_type("error", "edit_ack")
    assert error["type"] == "error" and error["id"] == "late-edit"
    assert error["payload"]["code"] == "INVALID_SESSION"
    code, _ = await ws.closed()
    assert code == 4011
    assert (await app.fetch("GET", f"/api/sessions/{ws.session['session_id']}")).json["state"] == "Expired"
    await app.settle()
    assert await app.deps.store.last_revision("default") == 0


@pytest.mark.parametrize("document_id", [".", ".."])
async def test_dot_document_ids_are_refused(app, document_id):
    session = await app.session()
    ws = await app.ws_connect(session["session_id"], document_id, state=False)
    assert (await ws.closed())[0] == 4004
    reply = await app.fetch("POST", "/api/documents", {"document_id": document_id}, admin=True)
    assert reply.status == 400


async def test_percent_encoded_session_ids_are_masked_in_logs():
    secret = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    for uri in (f"/ws?session%5Fid={secret}", "/ws?session_id=%30f1e2d3c%2D4b5a-6978-8796-a5b4c3d2e1f0",
                f"/api/sessions/{secret.replace('-', '%2D')}"):
        assert "6978" not in masked_uri(uri), uri
