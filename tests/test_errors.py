"""One walk over every REST error path: each error code, from a real request, in the one shape with its status."""

from __future__ import annotations


import pytest

from mcprt.protocol import ErrorCode
from support import RefusingWrites, refuse_op

pytestmark = pytest.mark.asyncio


async def _invalid_session(app):
    return await app.fetch("GET", "/api/sessions/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")


async def _state_conflict(app):
    sid = (await app.session())["session_id"]
    await app.fetch("DELETE", f"/api/sessions/{sid}")
    return await app.fetch("POST", f"/api/sessions/{sid}/activate")


async def _unauthorized(app):
    return await app.fetch("GET", "/api/events")


async def _rate_limited(app):
    for _ in range(app.deps.settings.session_create_limit):
        await app.session()
    return await app.fetch("POST", "/api/sessions", {"user_id": "one-too-many"})


async def _too_large(app):
    return await app.fetch("POST", "/api/sessions", raw=b'{"user_id": "' + b"x" * 20000 + b'"}')


async def _invalid_json(app):
    return await app.fetch("POST", "/api/sessions", raw=b"{nope")


async def _invalid_body(app):
    return await app.fetch("POST", "/api/sessions", {"user_id": 7})


async def _wrong_method(app):
    return await app.fetch("PATCH", "/api/sessions")


async def _not_found(app):
    return await app.fetch("GET", "/no/such/path")


async def _no_document(app):
    return await app.fetch("GET", "/api/documents/missing", admin=True)


async def _conflict(app):
    await app.fetch("POST", "/api/documents", {"document_id": "twice"}, admin=True)
    return await app.fetch("POST", "/api/documents", {"document_id": "twice"}, admin=True)


async def _server_error(app):
    await app.fetch("POST", "/api/documents", {"document_id": "fragile"}, admin=True)
    with RefusingWrites(app.deps.store, refuse_op("fragile")):  # the database refuses the write, as a full disk would
        return await app.fetch("POST", "/api/documents/fragile/restore", {"revision": 0}, admin=True)


async def _no_static_file(app):
    return await app.fetch("GET", "/static/no-such-file.js")


PATHS = {
    "unknown-session": (_invalid_session, 404, ErrorCode.INVALID_SESSION),
    "final-state": (_state_conflict, 409, ErrorCode.INVALID_SESSION),
    "no-token": (_unauthorized, 401, ErrorCode.UNAUTHORIZED),
    "too-many-sessions": (_rate_limited, 429, ErrorCode.RATE_LIMITED),
    "body-too-large": (_too_large, 413, ErrorCode.MESSAGE_TOO_LARGE),
    "not-json": (_invalid_json, 400, ErrorCode.INVALID_MESSAGE),
    "schema": (_invalid_body, 400, ErrorCode.INVALID_MESSAGE),
    "method": (_wrong_method, 405, ErrorCode.METHOD_NOT_ALLOWED),
    "no-static-file": (_no_static_file, 404, ErrorCode.NOT_FOUND),
    "no-route": (_not_found, 404, ErrorCode.NOT_FOUND),
    "no-document": (_no_document, 404, ErrorCode.NOT_FOUND),
    "document-exists": (_conflict, 409, ErrorCode.CONFLICT),
    "store-refuses": (_server_error, 500, ErrorCode.SERVER_ERROR),
}


async def test_the_walk_covers_every_error_code():
    assert {code for _, _, code in PATHS.values()} == set(ErrorCode)


@pytest.mark.parametrize("name", list(PATHS))
async def test_each_error_path_has_the_shape_and_status(app, name):
    trigger, status, code = PATHS[name]
    reply = await trigger(app)
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"].startswith("application/json")
    body = reply.json
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code.value
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)


async def _too_many_documents(app):
    session = await app.session()
    for i in range(app.deps.settings.document_create_limit):
        await app.fetch("POST", "/api/documents", {"document_id": f"quota-{i}"},
                        headers={"X-Session-ID": session["session_id"]})
    return await app.fetch("POST", "/api/documents", {"document_id": "quota-over"},
                           headers={"X-Session-ID": session["session_id"]})


async def _document_guessing(app):
    headers = {"X-Session-ID": (await app.session())["session_id"]}
    for i in range(app.deps.settings.document_probe_limit):
        await app.fetch("GET", f"/api/documents/guess-{i}", headers=headers)
    return await app.fetch("GET", "/api/documents/guess-over", headers=headers)


async def _server_full(app):
    for i in range(app.deps.settings.max_documents):
        await app.fetch("POST", "/api/documents", {"document_id": f"full-{i}"}, admin=True)
    return await app.fetch("POST", "/api/documents", {"document_id": "full-over"}, admin=True)


@pytest.mark.parametrize("trigger, limits, most", [
    (_rate_limited, {"session_create_limit": 3}, 60),
    (_too_many_documents, {"document_create_limit": 2}, 3600),
    (_document_guessing, {"document_probe_limit": 2}, 60),
    (_server_full, {"max_documents": 2}, 3600),
])
async def test_every_rate_limited_reply_says_when_to_retry(start, trigger, limits, most):
    app = await start(**limits)
    reply = await trigger(app)
    assert reply.status == 429 and reply.json["error"]["code"] == "RATE_LIMITED", reply.body
    wait = reply.headers["Retry-After"]
    assert wait.isdigit() and 1 <= int(wait) <= most
    assert int(wait) == reply.json["error"]["details"]["retry_after"]
