"""The WebSocket over a real connection: authentication, the envelope, errors that keep the socket, limits, events."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import websockets


@pytest.fixture
def database(both_databases) -> str:
    """Every server in this module runs on SQLite and on PostgreSQL."""
    return both_databases


pytestmark = pytest.mark.asyncio

SPEC = Path(__file__).resolve().parent.parent.parent / "shared" / "spec" / "websocket-api.md"


async def _refused(app, **kw) -> tuple[int, dict]:
    ws = await app.ws_connect(state=False, **kw)
    code, got = await ws.closed()
    errors = [m for m in got if m["type"] == "error"]
    assert len(errors) == 1, got
    return code, errors[0]["payload"]


async def test_session_in_query_connects_and_gets_document_state(app):
    session = await app.session()
    ws = await app.ws_connect(session["session_id"])
    assert ws.state["payload"]["document_id"] == "default"
    assert {"content", "revision", "format", "participants"} <= set(ws.state["payload"])



async def test_an_open_websocket_keeps_nothing_of_its_handshake_but_the_request(app):
    """Once a socket is on its asyncio transport, Tornado's IOStream, its buffers and the request's
    coroutines are gone: they held about 10 KB per open connection for the connection's whole life."""
    import gc

    from tornado.iostream import IOStream

    from mcprt.handlers.sockets import SocketStream
    session = await app.session()
    sockets = [await app.ws_connect(session["session_id"]) for _ in range(3)]
    assert all(ws.state["type"] == "document_state" for ws in sockets)
    await asyncio.sleep(0.05)  # the connect task ends a turn after the transport is up
    gc.collect()
    open_sockets = {id(o.socket) for o in gc.get_objects() if isinstance(o, SocketStream) and not o.closed()}
    assert len(open_sockets) == 3
    assert [o for o in gc.get_objects() if isinstance(o, IOStream) and id(o.socket) in open_sockets] == []
    running = [t.get_coro().__qualname__ for t in asyncio.all_tasks()]
    assert not [name for name in running if name.startswith(("RequestHandler.", "SocketStream."))], running

@pytest.mark.parametrize("header", ["Authorization", "X-Session-ID"])
async def test_session_in_a_header_connects(app, header):
    session = await app.session()
    value = f"Bearer {session['session_id']}" if header == "Authorization" else session["session_id"]
    ws = await app.ws_connect(headers={header: value})
    assert ws.state["type"] == "document_state"


async def test_agreeing_credentials_connect_and_disagreeing_ones_are_unauthorized(app):
    a, b = await app.session(), await app.session()
    ws = await app.ws_connect(a["session_id"], headers={"X-Session-ID": a["session_id"]})
    assert ws.state["type"] == "document_state"
    code, error = await _refused(app, session_id=a["session_id"], headers={"X-Session-ID": b["session_id"]})
    assert code == 4003 and error["code"] == "UNAUTHORIZED"


async def test_no_credential_is_unauthorized(app):
    code, error = await _refused(app)
    assert code == 4001 and error["code"] == "UNAUTHORIZED"


@pytest.mark.parametrize("kind", ["unknown", "pending", "invalidated", "expired"])
async def test_sessions_that_are_not_active_are_refused(start, clock, kind):
    app = await start(clock=clock)
    sid = "3f2b9c1e-8a7d-4e6f-9b0a-1c2d3e4f5a6b"
    if kind != "unknown":
        sid = (await app.session(activate=kind != "pending"))["session_id"]
    if kind == "invalidated":
        await app.fetch("DELETE", f"/api/sessions/{sid}")
    if kind == "expired":
        clock.advance(86401)
    code, error = await _refused(app, session_id=sid)
    assert code == 4000 and error["code"] == "INVALID_SESSION"
    assert sid not in json.dumps(error)  # the secret is masked even in the error
    await app.settle()
    assert await app.events(type="invalid_session")


async def test_bad_document_id_is_refused(app):
    session = await app.session()
    code, error = await _refused(app, session_id=session["session_id"], document_id="no%20spaces")
    assert code == 4004 and error["code"] == "INVALID_MESSAGE"


async def test_foreign_origin_is_refused_at_the_handshake_and_recorded(app):
    session = await app.session()
    with pytest.raises(websockets.InvalidStatus) as refused:
        await app.ws_connect(session["session_id"], origin="http://evil.example")
    assert refused.value.response.status_code == 403
    ok = await app.ws_connect(session["session_id"], origin=f"http://127.0.0.1:{app.server.port}")
    assert ok.state["type"] == "document_state"
    await app.settle()
    events = await app.events(type="origin_rejected")
    assert len(events) == 1 and events[0]["details"]["origin"] == "http://evil.example"


async def test_listed_origin_is_allowed(start):
    app = await start(allowed_origins=("https://editor.example",))
    session = await app.session()
    ws = await app.ws_connect(session["session_id"], origin="https://editor.example")
    assert ws.state["type"] == "document_state"


async def test_heartbeat_is_acknowledged_with_the_same_id_and_refreshes_last_seen(app):
    ws = await app.editor()
    await ws.send_msg("heartbeat", {}, "msg-001")
    ack = await ws.recv_type("heartbeat_ack")
    assert ack["id"] == "msg-001" and ack["payload"]["server_time"].endswith("Z")
    session = await app.deps.sessions.get(ws.session["session_id"])
    assert session.last_seen is not None


async def test_joins_and_leaves_are_announced_without_the_session_id(app):
    alice = await app.editor("alice")
    bob = await app.editor("bob")
    joined = await alice.recv_type("session_connected")
    assert joined["payload"]["user_id"] == "bob" and joined["payload"]["connection_count"] == 1
    assert joined["payload"]["peer_id"] == bob.session["peer_id"]
    await bob.close()
    left = await alice.recv_type("session_disconnected")
    assert left["payload"] == {"user_id": "bob", "peer_id": bob.session["peer_id"], "reason": "client_disconnect"}
    for message in alice.seen:
        assert bob.session["session_id"] not in json.dumps(message)


BAD_MESSAGES = {  # readable id -> (raw message, the error code it gets)
    "not-json": ("not json", "INVALID_MESSAGE"),
    "array": ("[1, 2, 3]", "INVALID_MESSAGE"),
    "string": ('"a string"', "INVALID_MESSAGE"),
    "unknown-type": ('{"id": "1", "type": "teleport", "payload": {}}', "INVALID_MESSAGE"),
    "no-id": ('{"type": "heartbeat", "payload": {}}', "INVALID_MESSAGE"),
    "empty-id": ('{"id": "", "type": "heartbeat", "payload": {}}', "INVALID_MESSAGE"),
    "id-over-128": ('{"id": "' + "x" * 129 + '", "type": "heartbeat", "payload": {}}', "INVALID_MESSAGE"),
    "id-not-a-string": ('{"id": 7, "type": "heartbeat", "payload": {}}', "INVALID_MESSAGE"),
    "payload-not-an-object": ('{"id": "1", "type": "heartbeat", "payload": []}', "INVALID_MESSAGE"),
    "bad-timestamp": ('{"id": "1", "type": "heartbeat", "payload": {}, "timestamp": "yesterday"}', "INVALID_MESSAGE"),
    "cursor-position-string": ('{"id": "1", "type": "realtime_edit", "payload": {"cursor_position": "x"}}', "INVALID_MESSAGE"),
    "negative-position": ('{"id": "1", "type": "realtime_edit", "payload": {"change_delta": {"position": -1, "insert": "a"}}}',
     "INVALID_MESSAGE"),
    "position-past-the-end": ('{"id": "1", "type": "realtime_edit", "payload": {"change_delta": {"position": 99, "insert": "a"}}}',
     "INVALID_MESSAGE"),
    "sync-without-since": ('{"id": "1", "type": "sync_request", "payload": {}}', "INVALID_MESSAGE"),
    "array-nested-5000": ("[" * 5000 + "]" * 5000, "INVALID_MESSAGE"),
    "object-nested-40": ('{"a":' * 40 + "1" + "}" * 40, "INVALID_MESSAGE"),
    "binary-frame": (b"\x00\x01binary", "INVALID_MESSAGE"),
    "over-10kb": ('{"id": "1", "type": "heartbeat", "payload": {}, "pad": "' + "x" * 11000 + '"}', "MESSAGE_TOO_LARGE"),
    "over-10kb-in-utf8": ("é" * 6000, "MESSAGE_TOO_LARGE"),  # 6000 characters, 12000 bytes
}


@pytest.mark.parametrize("raw,code", list(BAD_MESSAGES.values()), ids=list(BAD_MESSAGES))
async def test_each_bad_message_gets_its_error_and_the_connection_survives(start, raw, code):
    app = await start()
    ws = await app.editor()
    await ws.send(raw)
    error = await ws.recv_type("error")
    assert error["payload"]["code"] == code
    assert set(error["payload"]) == {"code", "message", "details"} and error["payload"]["message"]
    await ws.send_msg("heartbeat", {}, "still-here")
    assert (await ws.recv_type("heartbeat_ack"))["id"] == "still-here"
    await app.settle()
    events = await app.events(kind="security")
    assert events and events[0]["severity"] in ("low", "medium", "high")
    assert events[0]["connection_id"] and events[0]["user_id"] == "alice"


async def test_invalid_utf8_text_frame_is_an_error_not_a_disconnect(app):
    ws = await app.editor()
    # A text frame whose bytes are not UTF-8; websockets only sends str as text, so write the frame by hand.
    from websockets.frames import Frame, Opcode
    protocol = ws.conn.protocol
    protocol.send_frame(Frame(Opcode.TEXT, b'{"id":"\xff\xfe"}'))
    ws.conn.send_data()
    error = await ws.recv_type("error")
    assert error["payload"]["code"] == "INVALID_MESSAGE" and "UTF-8" in error["payload"]["message"]
    await ws.send_msg("heartbeat", {}, "alive")
    assert (await ws.recv_type("heartbeat_ack"))["id"] == "alive"


async def test_error_replies_reuse_the_id_when_it_can_be_read(app):
    ws = await app.editor()
    await ws.send('{"id": "bad-1", "type": "sync_request", "payload": {"since_revision": -4}}')
    error = await ws.recv_type("error")
    assert error["id"] == "bad-1"
    assert error["payload"]["details"]["pointer"] == "/payload/since_revision"


async def test_a_client_that_keeps_abusing_is_disconnected_with_1008_and_recorded(start):
    app = await start(violation_threshold=5)
    ws = await app.editor()
    for _ in range(5):
        await ws.send("garbage")
    code, got = await ws.closed()
    assert code == 1008
    assert [m["payload"]["code"] for m in got if m["type"] == "error"] == ["INVALID_MESSAGE"] * 5
    await app.settle()
    events = await app.events(type="abuse_disconnect")
    assert len(events) == 1 and events[0]["severity"] == "high"


async def test_abuse_can_also_invalidate_the_session(start):
    app = await start(violation_threshold=3, violation_action="invalidate")
    ws = await app.editor()
    for _ in range(3):
        await ws.send("garbage")
    code, _ = await ws.closed()
    assert code == 1008
    for _ in range(50):
        if (await app.fetch("GET", f"/api/sessions/{ws.session['session_id']}")).json["state"] == "Invalidated":
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("session was not invalidated")


async def test_rate_limit_is_coalesced_and_recorded_once_per_window(start):
    app = await start(rate_limit=5.0, rate_burst=10)
    ws = await app.editor()
    for i in range(60):
        await ws.send_msg("heartbeat", {}, f"hb-{i}")
    acks, errors = 0, []
    try:
        while True:
            message = await ws.recv(timeout=0.5)
            acks += message["type"] == "heartbeat_ack"
            if message["type"] == "error":
                errors.append(message)
    except asyncio.TimeoutError:
        pass
    assert 10 <= acks <= 13
    assert len(errors) == 1 and errors[0]["payload"]["code"] == "RATE_LIMITED"
    await app.settle()
    assert len(await app.events(type="rate_limited")) == 1


async def test_connections_per_session_are_capped(start):
    app = await start(max_connections_per_session=2)
    session = await app.session()
    await app.ws_connect(session["session_id"])
    await app.ws_connect(session["session_id"])
    code, error = await _refused(app, session_id=session["session_id"])
    assert code == 4008 and error["code"] == "RATE_LIMITED"


async def test_total_connections_are_capped(start):
    app = await start(max_connections=1)
    await app.editor("a")
    session = await app.session("b")
    code, _ = await _refused(app, session_id=session["session_id"])
    assert code == 4008


@pytest.mark.parametrize("how", ["invalidate", "expire"])
async def test_ending_a_session_closes_its_sockets_and_tells_the_others(start, clock, how):
    app = await start(clock=clock)
    victim_session = await app.session("victim")
    clock.advance(86390)  # the victim's session is near its end; the watcher's is new
    watcher = await app.editor("watcher")
    victim = await app.ws_connect(victim_session["session_id"])
    victim.session = victim_session
    await watcher.recv_type("session_connected")
    if how == "invalidate":
        await app.fetch("DELETE", f"/api/sessions/{victim.session['session_id']}")
        reason, close = "session_invalidated", 4010
    else:
        clock.advance(11)
        await app.server.sweep()
        reason, close = "session_expired", 4011
    code, got = await asyncio.wait_for(victim.closed(), 1.0)
    assert code == close and got[-1]["payload"]["code"] == "INVALID_SESSION"
    left = await watcher.recv_type("session_disconnected", timeout=1.0)
    assert left["payload"]["reason"] == reason


async def test_connects_and_disconnects_are_recorded_with_duration_and_counts(app, tmp_path):
    ws = await app.editor()
    for i in range(3):
        await ws.send_msg("heartbeat", {}, f"h{i}")
        await ws.recv_type("heartbeat_ack")
    await ws.close()
    for _ in range(50):
        await app.settle()
        events = await app.events(kind="connection")
        if len(events) == 2:
            break
        await asyncio.sleep(0.02)
    gone, came = events
    assert came["type"] == "connected" and gone["type"] == "disconnected"
    assert gone["details"]["messages_in"] == 3 and gone["details"]["messages_out"] >= 4
    assert gone["details"]["duration_seconds"] >= 0 and gone["details"]["reason"] == "client_disconnect"
    row, = await app.deps.store.connections()
    assert (row.messages_in, row.close_reason, row.client_type) == (3, "client_disconnect", "unknown")


async def test_client_type_is_recorded_and_unknown_values_are_not_refused(app, tmp_path):
    s1, s2 = await app.session(), await app.session()
    await app.ws_connect(s1["session_id"], headers={"X-Client-Type": "mobile"})
    await app.ws_connect(s2["session_id"], query="client_type=toaster")
    await app.settle()
    assert sorted(c.client_type for c in await app.deps.store.connections()) == ["mobile", "unknown"]


REFERENCE_CLIENT = Path(__file__).resolve().parent / "reference_client.js"


def _class_in(text: str) -> str:
    start = text.index("class MCPWebSocketClient {")
    return text[start:text.index("```", start) if "```" in text[start:] else len(text)]


async def test_the_copied_reference_client_matches_the_reference_document():
    if not SPEC.exists():
        pytest.skip("the reference document is not beside the project; the copy in tests/ stands")
    assert _class_in(REFERENCE_CLIENT.read_text()) == _class_in(SPEC.read_text())


def _node_with_websocket() -> list[str] | None:
    node = shutil.which("node")
    if not node:
        return None
    for flags in ([], ["--experimental-websocket"]):
        probe = subprocess.run([node, *flags, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"],
                               capture_output=True)
        if probe.returncode == 0:
            return [node, *flags]
    return None


async def test_the_reference_javascript_client_works_unchanged(app):
    node = _node_with_websocket()
    if node is None:
        pytest.skip("needs Node.js with a WebSocket global (node 22, or node 20 with --experimental-websocket)")
    peer = await app.editor("bob")
    session = await app.session("user1")
    # The class exactly as the reference prints it; only its hard-coded localhost:3000 points at this server.
    cls = _class_in(REFERENCE_CLIENT.read_text()).replace("localhost:3000", f"127.0.0.1:{app.server.port}")
    script = cls + """
const client = new MCPWebSocketClient(process.argv[1]);
client.userId = 'user1';
const seen = [];
client.handleMessage = (m) => { seen.push(m.type); };
client.connect();
setTimeout(() => client.sendEdit('Hello from the reference client', 31), 500);
setTimeout(() => { console.log(JSON.stringify(seen)); process.exit(0); }, 1500);
"""
    proc = await asyncio.create_subprocess_exec(*node, "-e", script, session["session_id"],
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    seen = json.loads(out.decode().strip().splitlines()[-1])
    assert seen[0] == "document_state" and "edit_ack" in seen and "error" not in seen
    edit = await peer.recv_type("realtime_edit")
    assert edit["payload"]["content"] == "Hello from the reference client"
    assert edit["session_info"]["user_id"] == "user1" and "session_id" not in edit["session_info"]


async def test_a_peer_that_stops_answering_pings_is_dropped_as_a_timeout(start):
    app = await start(ping_interval=0.2, ping_timeout=0.2)
    watcher = await app.editor("watcher")
    session = await app.session("silent")
    # A hand-made client: it completes the handshake, then never reads, so it never answers a ping.
    reader, writer = await asyncio.open_connection("127.0.0.1", app.server.port)
    writer.write((f"GET /ws?session_id={session['session_id']} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    await writer.drain()
    assert b"101" in await reader.readline()
    try:
        joined = await watcher.recv_type("session_connected")
        left = await watcher.recv_type("session_disconnected", timeout=3)
        assert left["payload"]["peer_id"] == joined["payload"]["peer_id"]
        assert left["payload"]["reason"] == "timeout"
    finally:
        writer.close()
