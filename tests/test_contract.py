"""The published contract agrees with the code: every route and method is in the OpenAPI document and
nothing else is, each request body is the schema its handler validates with (served at /schemas/), and
the AsyncAPI document lists exactly the socket's message types."""

from __future__ import annotations

import inspect
import re

import pytest
import tornado.web

from mcprt import contract
from mcprt import protocol as P

pytestmark = pytest.mark.asyncio

UNDOCUMENTED = {"/ws", "/()", "/p/()[A-Za-z0-9._-]{1,128}"}  # the socket (AsyncAPI's), the demo and a pad


def routes(app) -> dict[str, type]:
    found = {}
    for rule in app.server.app.wildcard_router.rules:
        for inner in getattr(rule.target, "rules", [rule]):
            pattern = inner.matcher.regex.pattern.rstrip("$")
            if isinstance(inner.target, type) and pattern not in UNDOCUMENTED and not pattern.startswith(
                    ("/static/", "/(favicon", "/(robots")):  # Tornado's own static routes
                found[pattern] = inner.target
    return found


def implemented(handler: type) -> set[str]:
    return {m for m in ("get", "post", "put", "delete", "patch")
            if getattr(handler, m) is not getattr(tornado.web.RequestHandler, m)}


async def test_every_route_and_method_is_documented_and_nothing_else(app):
    table = routes(app)
    documented: dict[str, set[str]] = {}
    for path, method in contract.OPERATIONS:
        documented.setdefault(contract.route_pattern(path), set()).add(method)
    assert set(table) == set(documented)
    for pattern, handler in table.items():
        assert implemented(handler) == documented[pattern], pattern


async def test_each_request_body_is_the_schema_its_handler_validates_with(app):
    table = routes(app)
    for (path, method), (_, body, _) in contract.OPERATIONS.items():
        source = inspect.getsource(getattr(table[contract.route_pattern(path)], method))
        used = re.findall(r'json_body\("(\w+)"\)', source)
        assert used == ([body] if body else []), (path, method, used)
    document = (await app.fetch("GET", "/api/openapi.json")).json
    assert document == contract.openapi() and document["openapi"] == "3.1.0"
    for ref in re.findall(r'"\$ref": "(https://[^"]+)"', str(document).replace("'", '"')):
        name = ref.rsplit("/", 1)[1]
        served = await app.fetch("GET", f"/schemas/{name}")
        assert served.status == 200 and served.json == app.deps.registry.schemas[name[:-5]], name
    assert (await app.fetch("GET", "/schemas/nothing.json")).status == 404


async def test_the_asyncapi_document_lists_the_sockets_messages(app):
    document = (await app.fetch("GET", "/api/asyncapi.json")).json
    assert document == contract.asyncapi() and document["asyncapi"] == "3.0.0"
    messages = document["components"]["messages"]
    assert {m["name"] for k, m in messages.items() if not k.endswith("_out")} == set(P.INBOUND_TYPES)
    assert {m["name"] for k, m in messages.items() if k.endswith("_out")} == set(P.OUTBOUND_TYPES)
    for name in P.INBOUND_TYPES:
        assert (await app.fetch("GET", f"/schemas/{name}.json")).status == 200
