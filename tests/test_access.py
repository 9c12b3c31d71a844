"""Per-document roles under --auth jwt, over the real server: owners, editors and viewers, enforced on every
message and request, and changes reaching live sockets at once."""

from __future__ import annotations

import jwt
import pytest
import pytest_asyncio

pytestmark = pytest.mark.asyncio
SECRET = "a-deployment-secret-of-at-least-32-characters"


@pytest.fixture
def database(both_databases) -> str:
    """Roles live in the store: every test runs on SQLite and on PostgreSQL."""
    return both_databases


@pytest_asyncio.fixture
async def server(start, clock):
    app = await start(clock=clock, auth="jwt", jwt_secret=SECRET)

    async def user(name: str) -> dict:
        token = jwt.encode({"sub": name, "exp": int(clock.now) + 3600}, SECRET, algorithm="HS256")
        reply = await app.fetch("POST", "/api/sessions", {}, headers={"Authorization": f"Bearer {token}"})
        assert reply.status == 201, reply.json
        return reply.json
    app.user = user
    return app


def bearer(session: dict) -> dict:
    return {"Authorization": f"Bearer {session['session_id']}"}


async def created(app, owner: dict, document_id: str = "plan") -> None:
    reply = await app.fetch("POST", "/api/documents", {"document_id": document_id, "format": "text"},
                            headers=bearer(owner))
    assert reply.status == 201, reply.json


async def set_role(app, by: dict | None, member: str, role: str, document_id: str = "plan"):
    return await app.fetch("PUT", f"/api/documents/{document_id}/members", {"member": member, "role": role},
                           headers=bearer(by) if by else None, admin=by is None)


async def test_the_creator_owns_a_document_and_gives_others_roles(server):
    alice, bob = await server.user("alice"), await server.user("bob")
    await created(server, alice)
    members = await server.fetch("GET", "/api/documents/plan/members", headers=bearer(alice))
    assert members.json["members"] == {"user:alice": "owner"}
    assert (await server.fetch("GET", "/api/documents/plan/members", headers=bearer(bob))).status == 404
    reply = await set_role(server, alice, "user:bob", "viewer")
    assert reply.status == 200 and reply.json["members"] == {"user:alice": "owner", "user:bob": "viewer"}
    assert (await set_role(server, bob, "user:bob", "owner")).status == 403  # a viewer cannot promote itself
    assert (await server.fetch("DELETE", "/api/documents/plan/members?member=user:alice",
                               headers=bearer(alice))).status == 409  # the last owner stays
    await server.settle()
    assert [e["details"] for e in await server.events(type="member_set")] == [{"member": "user:bob", "role": "viewer"}]


async def test_a_viewer_reads_and_follows_but_its_edits_are_refused(server):
    alice, bob = await server.user("alice"), await server.user("bob")
    await created(server, alice)
    await set_role(server, alice, "user:bob", "viewer")
    writer = await server.ws_connect(alice["session_id"], "plan")
    assert writer.state["payload"]["role"] == "owner"
    viewer = await server.ws_connect(bob["session_id"], "plan")
    assert viewer.state["payload"]["role"] == "viewer"
    await writer.send_msg("realtime_edit", {"change_delta": {"position": 0, "insert": "hi"}})
    await writer.recv_type("edit_ack")
    assert (await viewer.recv_type("realtime_edit"))["payload"]["revision"] == 1  # it follows
    sent = await viewer.send_msg("realtime_edit", {"change_delta": {"position": 0, "insert": "x"}})
    error = await viewer.recv_type("error")
    assert error["id"] == sent and error["payload"]["code"] == "UNAUTHORIZED"
    assert error["payload"]["details"]["pointer"] == "/type"
    await viewer.send_msg("heartbeat", {})
    await viewer.recv_type("heartbeat_ack")  # the socket goes on
    document = await server.fetch("GET", "/api/documents/plan", headers=bearer(bob))
    assert document.status == 200 and document.json["content"] == "hi"  # reading is allowed, the edit left nothing
    restore = await server.fetch("POST", "/api/documents/plan/restore", {"revision": 0}, headers=bearer(bob))
    assert restore.status == 403 and restore.json["error"]["details"]["needed"] == "editor"
    await server.settle()
    event, = await server.events(type="forbidden_edit")
    assert event["user_id"] == "bob" and event["severity"] == "low"


async def test_without_a_role_a_document_is_not_found_and_its_socket_is_refused(server):
    alice, carol = await server.user("alice"), await server.user("carol")
    await created(server, alice)
    reply = await server.fetch("GET", "/api/documents/plan", headers=bearer(carol))
    assert reply.status == 404  # not even its existence is told
    assert (await server.fetch("GET", "/api/documents/plan/history", headers=bearer(carol))).status == 404
    ws = await server.ws_connect(carol["session_id"], "plan", state=False)
    code, _ = await ws.closed()
    assert code == 4013
    await set_role(server, alice, "*", "viewer")  # everyone may read
    assert (await server.fetch("GET", "/api/documents/plan", headers=bearer(carol))).status == 200


async def test_a_change_of_role_reaches_a_live_socket_at_once(server):
    alice, bob = await server.user("alice"), await server.user("bob")
    await created(server, alice)
    await set_role(server, alice, "user:bob", "viewer")
    ws = await server.ws_connect(bob["session_id"], "plan")
    await set_role(server, alice, "user:bob", "editor")
    permissions = await ws.recv_type("permissions")
    assert permissions["payload"] == {"document_id": "plan", "role": "editor"}
    await ws.send_msg("realtime_edit", {"change_delta": {"position": 0, "insert": "ok"}})
    assert (await ws.recv_type("edit_ack"))["payload"]["revision"] == 1
    reply = await server.fetch("DELETE", "/api/documents/plan/members?member=user:bob", headers=bearer(alice))
    assert reply.status == 200 and "user:bob" not in reply.json["members"]
    code, got = await ws.closed()
    assert code == 4013 and any(m["type"] == "error" for m in got)


async def test_joining_a_new_document_makes_its_creator_the_owner_and_operators_manage_any(server):
    dave = await server.user("dave")
    ws = await server.ws_connect(dave["session_id"], "fresh")
    assert ws.state["payload"]["role"] == "owner"
    reply = await set_role(server, None, "user:erin", "editor", "fresh")  # the admin token
    assert reply.status == 200 and reply.json["members"] == {"user:dave": "owner", "user:erin": "editor"}


async def test_open_mode_keeps_everyone_an_editor(app):
    ws = await app.editor(document_id="anything")
    assert ws.state["payload"]["role"] == "editor"
    reply = await app.fetch("GET", "/api/documents/anything/members", admin=True)
    assert reply.status == 400 and "--auth jwt" in reply.json["error"]["message"]


async def test_every_way_a_document_comes_to_exist_records_its_creation_and_owner(server):
    alice, bob = await server.user("alice"), await server.user("bob")
    await created(server, alice, "by-rest")
    first = await server.ws_connect(bob["session_id"], "by-join")
    second = await server.ws_connect(bob["session_id"], "by-join")  # joining what exists records nothing
    assert first.state["payload"]["role"] == second.state["payload"]["role"] == "owner"
    await server.settle()
    events = {e["document_id"]: e for e in await server.events(type="document_created")}
    assert set(events) == {"by-rest", "by-join"}
    assert events["by-rest"]["details"] == {"format": "text", "owner": "alice", "via": "rest"}
    assert events["by-join"]["details"]["owner"] == "bob" and events["by-join"]["details"]["via"] == "join"
    assert events["by-join"]["user_id"] == "bob"


async def test_a_group_from_the_token_gives_its_members_a_role_and_a_user_entry_wins(start, clock):
    app = await start(clock=clock, auth="jwt", jwt_secret=SECRET, jwt_groups_claim="groups")

    async def user(name: str, groups) -> dict:
        token = jwt.encode({"sub": name, "exp": int(clock.now) + 3600, "groups": groups}, SECRET, algorithm="HS256")
        reply = await app.fetch("POST", "/api/sessions", {}, headers={"Authorization": f"Bearer {token}"})
        assert reply.status == 201, reply.json
        return reply.json
    alice, bob, carol = await user("alice", []), await user("bob", ["team", "readers"]), await user("carol", "readers")
    await created(app, alice)
    await set_role(app, alice, "group:team", "editor")
    await set_role(app, alice, "group:readers", "viewer")
    assert (await app.ws_connect(bob["session_id"], "plan")).state["payload"]["role"] == "editor"  # the higher group
    assert (await app.ws_connect(carol["session_id"], "plan")).state["payload"]["role"] == "viewer"
    await set_role(app, alice, "user:bob", "viewer")  # the user's own entry wins over its groups
    bob_again = await app.ws_connect(bob["session_id"], "plan")
    assert bob_again.state["payload"]["role"] == "viewer"
    await app.settle()
    created_event = [e for e in await app.events(type="session_created") if e["user_id"] == "bob"][0]
    assert created_event["details"]["groups"] == ["readers", "team"]
    assert (await app.deps.store.get_session(bob["session_id"])).groups == ("readers", "team")


@pytest_asyncio.fixture
async def idp_server(start, clock):
    """--jwt-roles-claim: the identity provider grants roles in the token."""
    app = await start(clock=clock, auth="jwt", jwt_secret=SECRET, jwt_roles_claim="mcprt_roles")

    def token(name: str, roles=None) -> str:
        claims = {"sub": name, "exp": int(clock.now) + 3600}
        if roles is not None:
            claims["mcprt_roles"] = roles
        return jwt.encode(claims, SECRET, algorithm="HS256")

    async def user(name: str, roles=None) -> dict:
        reply = await app.fetch("POST", "/api/sessions", {}, headers={"Authorization": f"Bearer {token(name, roles)}"})
        assert reply.status == 201, reply.json
        return reply.json
    app.token, app.user = token, user
    return app


async def test_roles_in_the_token_grant_by_id_and_prefix_and_add_to_members(idp_server):
    server = idp_server
    for document_id in ("reports-q1", "reports-q2", "plan", "secret"):
        assert (await server.fetch("POST", "/api/documents", {"document_id": document_id, "format": "text"},
                                   admin=True)).status == 201  # made by an operator: no members
    bob = await server.user("bob", {"reports-*": "viewer", "reports-q2": "editor", "plan": "owner",
                                    "bad id!": "owner", "secret": "admin"})  # the last two are ignored
    roles = {}
    for document_id in ("reports-q1", "reports-q2", "plan"):
        ws = await server.ws_connect(bob["session_id"], document_id)
        roles[document_id] = ws.state["payload"]["role"]
    assert roles == {"reports-q1": "viewer", "reports-q2": "editor", "plan": "owner"}  # the exact id wins
    # A document nobody named is closed when roles come from tokens, even without members.
    assert (await server.fetch("GET", "/api/documents/secret", headers=bearer(bob))).status == 404
    assert (await server.fetch("PUT", "/api/documents/plan/members", {"member": "user:carol", "role": "viewer"},
                               headers=bearer(bob))).status == 200  # the granted owner manages members
    carol = await server.user("carol", {"plan": "editor"})
    assert (await server.ws_connect(carol["session_id"], "plan")).state["payload"]["role"] == "editor"  # the higher
    nobody = await server.user("dave")  # no roles claim at all: nothing granted
    assert (await server.fetch("GET", "/api/documents/reports-q1", headers=bearer(nobody))).status == 404
    stored = await server.deps.store.get_session(bob["session_id"])
    assert dict(stored.grants) == {"plan": "owner", "reports-*": "viewer", "reports-q2": "editor"}
    await server.settle()
    created_event = [e for e in await server.events(type="session_created") if e["user_id"] == "bob"][0]
    assert created_event["details"]["grants"] == {"plan": "owner", "reports-*": "viewer", "reports-q2": "editor"}


async def test_auth_refresh_takes_the_fresh_tokens_grants_at_once(idp_server):
    server = idp_server
    await server.fetch("POST", "/api/documents", {"document_id": "plan", "format": "text"}, admin=True)
    bob = await server.user("bob", {"plan": "viewer"})
    ws = await server.ws_connect(bob["session_id"], "plan")
    assert ws.state["payload"]["role"] == "viewer"
    await ws.send_msg("auth_refresh", {"token": server.token("bob", {"plan": "editor"})}, "r1")
    await ws.recv_type("auth_refreshed")
    assert (await ws.recv_type("permissions"))["payload"] == {"document_id": "plan", "role": "editor"}
    await ws.send_msg("realtime_edit", {"change_delta": {"position": 0, "insert": "ok"}})
    assert (await ws.recv_type("edit_ack"))["payload"]["revision"] == 1
    assert dict((await server.deps.store.get_session(bob["session_id"])).grants) == {"plan": "editor"}
    await ws.send_msg("auth_refresh", {"token": server.token("bob", {})}, "r2")  # the grant is gone
    await ws.recv_type("auth_refreshed")
    code, _ = await ws.closed()
    assert code == 4013


async def test_the_document_listing_shows_what_the_caller_may_read_with_its_role(server):
    alice, bob, carol = await server.user("alice"), await server.user("bob"), await server.user("carol")
    for document_id in ("a-doc", "b-doc", "c-doc"):
        await created(server, alice, document_id)
    await server.fetch("POST", "/api/documents", {"document_id": "d-open", "format": "text"}, admin=True)
    await set_role(server, alice, "user:bob", "viewer", "b-doc")
    await set_role(server, alice, "*", "viewer", "c-doc")

    async def listing(who, query: str = "") -> dict:
        reply = await server.fetch("GET", f"/api/documents{query}", headers=bearer(who) if who else None,
                                   admin=who is None)
        assert reply.status == 200, reply.json
        return reply.json
    assert {d["document_id"]: d["role"] for d in (await listing(alice))["documents"]} == {
        "a-doc": "owner", "b-doc": "owner", "c-doc": "owner", "d-open": "editor"}  # d-open: no members
    assert {d["document_id"]: d["role"] for d in (await listing(bob))["documents"]} == {
        "b-doc": "viewer", "c-doc": "viewer", "d-open": "editor"}
    assert [d["document_id"] for d in (await listing(carol))["documents"]] == ["c-doc", "d-open"]
    assert len((await listing(None))["documents"]) == 4  # an operator sees every document
    first = await listing(alice, "?limit=2")
    assert [d["document_id"] for d in first["documents"]] == ["a-doc", "b-doc"] and first["next_after"] == "b-doc"
    second = await listing(alice, f"?limit=2&after={first['next_after']}")
    assert [d["document_id"] for d in second["documents"]] == ["c-doc", "d-open"]
    assert (await server.fetch("GET", "/api/documents")).status == 401  # no session, no listing


async def test_the_listing_follows_token_grants_by_prefix(idp_server):
    server = idp_server
    for document_id in ("team_a-1", "team_a-2", "teamXa-3", "other"):  # `_` is no wildcard
        await server.fetch("POST", "/api/documents", {"document_id": document_id, "format": "text"}, admin=True)
    bob = await server.user("bob", {"team_a-*": "viewer", "other": "editor"})
    reply = await server.fetch("GET", "/api/documents", headers=bearer(bob))
    assert {d["document_id"]: d["role"] for d in reply.json["documents"]} == {
        "other": "editor", "team_a-1": "viewer", "team_a-2": "viewer"}
    everyone = await server.user("eve", {"*": "viewer"})
    reply = await server.fetch("GET", "/api/documents", headers=bearer(everyone))
    assert len(reply.json["documents"]) == 4


async def test_only_the_owner_or_an_operator_deletes_a_document(server):
    alice, bob = await server.user("alice"), await server.user("bob")
    await created(server, alice)
    await set_role(server, alice, "user:bob", "editor")
    reply = await server.fetch("DELETE", "/api/documents/plan", headers=bearer(bob))
    assert reply.status == 403 and reply.json["error"]["details"]["needed"] == "owner"
    assert (await server.fetch("DELETE", "/api/documents/plan", headers=bearer(alice))).status == 200
    assert (await server.fetch("GET", "/api/documents/plan", admin=True)).status == 404
    assert await server.deps.store.members("plan") == {}
