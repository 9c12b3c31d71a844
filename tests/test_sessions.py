"""Sessions over REST: every endpoint, the transition table, expiry on an injected clock, persistence, admin gating."""

from __future__ import annotations

import asyncio

import pytest

from mcprt.sessions import ACTIVE, EXPIRED, INVALIDATED, PENDING, STATES, TRANSITIONS

from conftest import ADMIN


@pytest.fixture
def database(both_databases) -> str:
    """Every server in this module runs on SQLite and on PostgreSQL."""
    return both_databases


@pytest.mark.asyncio
async def test_create_returns_the_reference_fields_and_a_websocket_url_from_the_host(start):
    app = await start(allowed_hosts=("editor.example",))
    reply = await app.fetch("POST", "/api/sessions", {"user_id": "alice", "client_info": "tests"},
                            headers={"Host": "editor.example:8443"})
    assert reply.status == 201
    body = reply.json
    assert body["state"] == "Active" and body["user_id"] == "alice"
    assert {"session_id", "created_at", "expires_at", "websocket_url"} <= set(body)
    assert body["websocket_url"] == f"ws://editor.example:8443/ws?session_id={body['session_id']}"


@pytest.mark.asyncio
async def test_websocket_url_is_wss_behind_tls(start):
    harness = await start(trust_proxy_headers=True)
    reply = await harness.fetch("POST", "/api/sessions", {"user_id": "a"}, headers={"X-Forwarded-Proto": "https"})
    assert reply.json["websocket_url"].startswith("wss://")


@pytest.mark.asyncio
async def test_create_pending_then_activate(app):
    session = await app.session("bob", activate=False)
    assert session["state"] == PENDING
    reply = await app.fetch("POST", f"/api/sessions/{session['session_id']}/activate")
    assert reply.status == 200 and reply.json["state"] == ACTIVE and reply.json["activated_at"]
    again = await app.fetch("POST", f"/api/sessions/{session['session_id']}/activate")
    assert again.status == 200 and again.json["state"] == ACTIVE  # idempotent


@pytest.mark.asyncio
async def test_get_reports_the_session(app):
    session = await app.session("carol")
    reply = await app.fetch("GET", f"/api/sessions/{session['session_id']}")
    assert reply.status == 200
    assert reply.json["user_id"] == "carol" and reply.json["state"] == ACTIVE
    assert {"session_id", "user_id", "state", "created_at", "expires_at"} <= set(reply.json)


@pytest.mark.parametrize("session_id", ["3f2b9c1e-8a7d-4e6f-9b0a-1c2d3e4f5a6b", "not-a-uuid", "%00", "x" * 300])
@pytest.mark.asyncio
async def test_unknown_or_malformed_ids_are_404_invalid_session(app, session_id):
    reply = await app.fetch("GET", f"/api/sessions/{session_id}")
    assert reply.status == 404
    assert reply.json["error"]["code"] == "INVALID_SESSION"


@pytest.mark.asyncio
async def test_delete_invalidates(app):
    session = await app.session()
    reply = await app.fetch("DELETE", f"/api/sessions/{session['session_id']}")
    assert reply.status == 200 and reply.json["state"] == INVALIDATED
    assert (await app.fetch("GET", f"/api/sessions/{session['session_id']}")).json["state"] == INVALIDATED


async def _in_state(app, clock, state: str) -> str:
    """A session id in the given state."""
    session = await app.session("t", activate=state != PENDING)
    sid = session["session_id"]
    if state == EXPIRED:
        clock.advance(app.server.settings.session_ttl + 1)
    elif state == INVALIDATED:
        await app.fetch("DELETE", f"/api/sessions/{sid}")
    return sid


ACTIONS = {"activate": ("POST", "/activate"), "invalidate": ("DELETE", "")}
# The table as the design states it, written out (not read from the code under test); None: 409.
EXPECTED = {
    (PENDING, "activate"): ACTIVE, (ACTIVE, "activate"): ACTIVE,
    (EXPIRED, "activate"): None, (INVALIDATED, "activate"): None,
    (PENDING, "invalidate"): INVALIDATED, (ACTIVE, "invalidate"): INVALIDATED,
    (EXPIRED, "invalidate"): None, (INVALIDATED, "invalidate"): None,
}


def test_the_code_holds_the_designed_table():
    assert {k: v for k, v in TRANSITIONS.items() if k[1] in ACTIONS} == {k: v for k, v in EXPECTED.items() if v}


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("action", sorted(ACTIONS))
@pytest.mark.asyncio
async def test_transition_table(start, clock, state, action):
    app = await start(clock=clock)
    sid = await _in_state(app, clock, state)
    method, suffix = ACTIONS[action]
    reply = await app.fetch(method, f"/api/sessions/{sid}{suffix}")
    target = EXPECTED[(state, action)]
    if target is None:
        assert reply.status == 409
        assert reply.json["error"]["code"] == "INVALID_SESSION"
        assert reply.json["error"]["details"]["state"] == state
    else:
        assert reply.status == 200 and reply.json["state"] == target


@pytest.mark.asyncio
async def test_expiry_is_seen_before_the_sweeper_runs_and_recorded(start, clock, tmp_path):
    app = await start(clock=clock)
    session = await app.session()
    clock.advance(86400 + 1)
    reply = await app.fetch("GET", f"/api/sessions/{session['session_id']}")
    assert reply.json["state"] == EXPIRED
    await app.settle()
    stored = await app.deps.store.get_session(session["session_id"])
    assert (stored.state, stored.end_reason) == ("Expired", "ttl")
    assert len(await app.events(type="session_expired")) == 1


@pytest.mark.asyncio
async def test_sweeper_expires_active_and_pending_sessions(start, clock):
    app = await start(clock=clock, pending_ttl=600)
    active = await app.session("a")
    pending = await app.session("p", activate=False)
    fresh = None
    clock.advance(601)
    fresh = await app.session("f")
    await app.server.sweep()
    assert (await app.fetch("GET", f"/api/sessions/{pending['session_id']}")).json["state"] == EXPIRED
    assert (await app.fetch("GET", f"/api/sessions/{active['session_id']}")).json["state"] == ACTIVE
    clock.advance(86400)
    swept = await app.deps.sessions.sweep()
    assert {s.session_id for s in swept} == {active["session_id"], fresh["session_id"]}


@pytest.mark.asyncio
async def test_sessions_survive_a_restart(start, tmp_path):
    first = await start()
    session = await first.session("dora")
    await first.server.stop()
    second = await start()
    reply = await second.fetch("GET", f"/api/sessions/{session['session_id']}")
    assert reply.status == 200 and reply.json["state"] == ACTIVE and reply.json["user_id"] == "dora"


@pytest.mark.parametrize("body,pointer", [
    ({}, "/"), ({"user_id": ""}, "/user_id"), ({"user_id": "x" * 129}, "/user_id"),
    ({"user_id": "a\u0000b"}, "/user_id"), ({"user_id": "a\nb"}, "/user_id"), ({"user_id": 5}, "/user_id"),
    ({"user_id": "a", "client_info": "x" * 513}, "/client_info"), ({"user_id": "a", "admin": True}, "/"),
    ({"user_id": "a", "activate": "yes"}, "/activate"), ([], "/"), ("text", "/"),
])
@pytest.mark.asyncio
async def test_bad_bodies_get_400_naming_the_pointer(app, body, pointer):
    reply = await app.fetch("POST", "/api/sessions", body)
    assert reply.status == 400
    error = reply.json["error"]
    assert error["code"] == "INVALID_MESSAGE"
    assert error["details"]["pointer"] == pointer
    assert f"(at {pointer})" in error["message"]


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe", b'{"user_id": "a",}'])
@pytest.mark.asyncio
async def test_bodies_that_are_not_json_get_400(app, raw):
    reply = await app.fetch("POST", "/api/sessions", raw=raw)
    assert reply.status == 400 and reply.json["error"]["code"] == "INVALID_MESSAGE"
    assert "JSON" in reply.json["error"]["message"]


@pytest.mark.asyncio
async def test_bodies_over_16kb_get_413(app):
    reply = await app.fetch("POST", "/api/sessions", {"user_id": "a", "client_info": "x" * 20000})
    assert reply.status == 413 and reply.json["error"]["code"] == "MESSAGE_TOO_LARGE"


@pytest.mark.asyncio
async def test_session_creation_is_rate_limited_per_address_and_recorded(start):
    app = await start(session_create_limit=3)
    for _ in range(3):
        await app.session()
    reply = await app.fetch("POST", "/api/sessions", {"user_id": "x"})
    assert reply.status == 429 and reply.json["error"]["code"] == "RATE_LIMITED"
    await app.settle()
    events = await app.events(type="session_rate_limited")
    assert len(events) == 1 and events[0]["kind"] == "security" and events[0]["client_addr"] == "127.0.0.1"


@pytest.mark.asyncio
async def test_transitions_are_events_with_address_and_user_agent(app):
    session = await app.session("eve", activate=False)
    sid = session["session_id"]
    await app.fetch("POST", f"/api/sessions/{sid}/activate", headers={"User-Agent": "probe/1"})
    await app.fetch("DELETE", f"/api/sessions/{sid}")
    await app.settle()
    events = list(reversed(await app.events(session_id=sid)))
    assert [e["type"] for e in events] == ["session_created", "session_activated", "session_invalidated"]
    assert all(e["client_addr"] == "127.0.0.1" for e in events)
    assert events[1]["user_agent"] == "probe/1"


@pytest.mark.asyncio
async def test_listing_sessions_needs_the_admin_token(app):
    await app.session()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic " + ADMIN}):
        reply = await app.fetch("GET", "/api/sessions", headers=headers)
        assert reply.status == 401 and reply.json["error"]["code"] == "UNAUTHORIZED"
        assert "session_id" not in reply.body.decode()


@pytest.mark.asyncio
async def test_listing_without_a_configured_token_is_401(start):
    app = await start(admin_token=None)
    reply = await app.fetch("GET", "/api/sessions", headers={"Authorization": "Bearer anything"})
    assert reply.status == 401


@pytest.mark.asyncio
async def test_admin_list_filters_and_paginates(app):
    made = [await app.session("u1") for _ in range(5)] + [await app.session("u2", activate=False)]
    reply = await app.fetch("GET", "/api/sessions?user_id=u1&limit=2", admin=True)
    assert reply.status == 200
    seen = [s["session_id"] for s in reply.json["sessions"]]
    while reply.json["next_cursor"] is not None:
        reply = await app.fetch("GET", reply.json["next"], admin=True)
        seen += [s["session_id"] for s in reply.json["sessions"]]
    assert sorted(seen) == sorted(s["session_id"] for s in made[:5])
    pending = await app.fetch("GET", "/api/sessions?state=Pending", admin=True)
    assert [s["user_id"] for s in pending.json["sessions"]] == ["u2"]
    bad = await app.fetch("GET", "/api/sessions?state=Bogus", admin=True)
    assert bad.status == 400


def test_sessions_cli_lists_from_the_database(database, capsys):
    import asyncio

    from mcprt.__main__ import main
    from mcprt.sessions import Client, SessionService
    from mcprt.storage import store_for

    async def seed():
        store = await store_for(database).open()
        service = SessionService(store, __import__("time").time, 3600, 600)
        zed = await service.create("zed", None, True, Client(addr="198.51.100.7"))
        await service.create("yan", None, False, Client())
        await service.invalidate(zed.session_id, Client(), "deleted")
        await store.barrier()
        await store.close()
    asyncio.run(seed())
    assert main(["sessions", "--db", database]) == 0
    out = capsys.readouterr().out
    assert "zed" in out and "yan" in out and "2 session(s)" in out
    header, *rows = out.splitlines()
    zed_row = next(row for row in rows if " zed " in row)
    for column in ("state", "user", "created", "expires", "last_seen", "ended", "address"):
        assert zed_row[header.index(column) - 1] == " ", (column, header, zed_row)  # each column under its title
    assert "deleted" in zed_row and zed_row.rstrip().endswith("198.51.100.7")
    assert main(["sessions", "--db", database, "--state", "pending", "--json"]) == 0  # any case
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and '"yan"' in lines[0]


async def _stored_state(app, session_id: str) -> str:
    """The state the store holds (not the service's cache)."""
    return (await app.deps.store.get_session(session_id)).state


@pytest.mark.parametrize("cached", [True, False], ids=["cached", "after-restart"])
@pytest.mark.asyncio
async def test_delete_racing_activate_never_ends_active(start, tmp_path, cached):
    app = await start()
    pending = [(await app.session(f"u{i}", activate=False))["session_id"] for i in range(20)]
    if not cached:  # a fresh process: both requests read the row from the store at once
        await app.server.stop()
        app = await start()
    for sid in pending:
        deleted, activated = await asyncio.gather(app.fetch("DELETE", f"/api/sessions/{sid}"),
                                                  app.fetch("POST", f"/api/sessions/{sid}/activate"))
        assert deleted.status == 200 and deleted.json["state"] == INVALIDATED, deleted.json
        assert activated.status in (200, 409), activated.json
        await app.settle()
        assert await _stored_state(app, sid) == INVALIDATED
        assert (await app.fetch("GET", f"/api/sessions/{sid}")).json["state"] == INVALIDATED


@pytest.mark.asyncio
async def test_two_activates_record_one_activation(start, tmp_path):
    app = await start()
    sid = (await app.session(activate=False))["session_id"]
    replies = await asyncio.gather(*(app.fetch("POST", f"/api/sessions/{sid}/activate") for _ in range(5)))
    assert all(r.status == 200 and r.json["state"] == ACTIVE for r in replies)
    assert len({r.json["activated_at"] for r in replies}) == 1
    await app.settle()
    assert len(await app.events(type="session_activated")) == 1


@pytest.mark.asyncio
async def test_the_sweepers_expiry_racing_delete_keeps_one_final_state(start, clock, tmp_path):
    app = await start(clock=clock)
    sids = [(await app.session(f"u{i}"))["session_id"] for i in range(10)]
    await app.server.stop()
    app = await start(clock=clock)
    for sid in sids[5:]:  # half of them read back into the cache, half known only to the store
        assert (await app.fetch("GET", f"/api/sessions/{sid}")).status == 200
    clock.advance(app.server.settings.session_ttl + 1)
    ended: list[tuple[str, str]] = []
    app.deps.sessions.on_end.append(lambda session, reason: ended.append((session.session_id, reason)))
    replies = await asyncio.gather(app.server.sweep(), *(app.fetch("DELETE", f"/api/sessions/{sid}") for sid in sids))
    await app.settle()
    for sid, reply in zip(sids, replies[1:]):
        stored = await _stored_state(app, sid)
        assert stored == EXPIRED  # past its deadline, a DELETE finds it Expired: final
        assert reply.status == 409 and reply.json["error"]["details"]["state"] == EXPIRED
    assert sorted(ended) == sorted((sid, "session_expired") for sid in sids)  # each ended once
    events = await app.events(kind="session", limit=100)
    assert sorted(e["session_id"] for e in events if e["type"] == "session_expired") == sorted(sids)
    assert not [e for e in events if e["type"] == "session_invalidated"]


@pytest.mark.asyncio
async def test_last_seen_is_written_by_the_sweeper_after_activity(start, clock):
    app = await start(clock=clock)
    ws = await app.editor("alice")
    session_id = ws.session["session_id"]
    assert (await app.deps.store.get_session(session_id)).last_seen is None
    clock.now += 30
    await ws.send_msg("heartbeat", {})
    await ws.recv_type("heartbeat_ack")
    await app.server.sweep()
    await app.settle()
    assert (await app.deps.store.get_session(session_id)).last_seen == pytest.approx(clock.now)
    clock.now += 30
    await ws.send_msg("realtime_edit", {"change_delta": {"position": 0, "insert": "x"}})
    await ws.recv_type("edit_ack")
    await app.server.sweep()
    await app.settle()
    assert (await app.deps.store.get_session(session_id)).last_seen == pytest.approx(clock.now)  # an edit counts
