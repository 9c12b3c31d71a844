"""Thin REST handlers: health, sessions, documents (restore through the EditService), events, metrics; each
parses, makes one call on self.deps, writes."""

from __future__ import annotations

import html
import json
from urllib.parse import urlencode

from .. import __version__
from ..clock import iso, iso_seconds, parse_iso
from ..documents import Author, check_document_id, creator, text_of
from ..protocol import AppError, ErrorCode
from ..audit import EVENT_KINDS, SEVERITIES, event_json
from ..config import parse_duration
from ..identity import Identity, TokenRefused
from ..sessions import STATES, session_json
from ..storage.base import EVENT_FILTERS, StoreFailed
from . import ws
from .base import OPERATOR, ApiHandler, bearer_token

SERVICE_NAME = "mcprt-realtime-editing"


class HealthHandler(ApiHandler):
    async def get(self) -> None:
        """The reference's health body plus `checks`; 503 when the database does not answer a read, or
        a probe write does not commit within 2 s (writer dead, database locked, read-only or removed)."""
        try:
            await self.deps.store.ping()
            await self.deps.store.probe()
            database = "ok"
        except StoreFailed as exc:
            database = f"error: writes: {exc}"
        except Exception as exc:  # any failure means unhealthy, whatever its type
            database = f"error: {type(exc).__name__}: {exc}"
        checks = {"database": database}
        cluster = self.deps.cluster
        if cluster is not None:
            checks["redis"] = await cluster.ping()
        healthy = all(value == "ok" for value in checks.values())
        body = {"status": "healthy" if healthy else "unhealthy", "service": SERVICE_NAME,
                "timestamp": iso_seconds(self.deps.clock()), "version": __version__, "auth": self.deps.settings.auth,
                "checks": checks}
        if cluster is not None:
            body["node"] = cluster.node_id
        self.write_json(body, 200 if healthy else 503)


def int_arg(handler: ApiHandler, name: str, default: int | None, low: int = 0, high: int = 10**12) -> int | None:
    """An integer query argument within bounds, or INVALID_MESSAGE."""
    raw = handler.get_query_argument(name, None)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise AppError(ErrorCode.INVALID_MESSAGE, f"query argument {name} must be an integer",
                       {"pointer": f"?{name}"}) from None
    if not low <= value <= high:
        raise AppError(ErrorCode.INVALID_MESSAGE, f"query argument {name} must be in {low}..{high}",
                       {"pointer": f"?{name}"})
    return value


def time_arg(handler: ApiHandler, name: str) -> float | None:
    """A time query argument as epoch seconds: RFC 3339, or a duration back from now (1h, 30m, 7d) as
    the CLI takes."""
    raw = handler.get_query_argument(name, None)
    if not raw:
        return None
    try:
        return handler.deps.clock() - parse_duration(raw)
    except ValueError:
        pass
    try:
        return parse_iso(raw)
    except ValueError:
        raise AppError(ErrorCode.INVALID_MESSAGE, f"query argument {name} must be an RFC 3339 time or a "
                       "duration back from now (e.g. 1h)", {"pointer": f"?{name}"}) from None


def page(handler: ApiHandler, key: str, rows: list[dict], limit: int) -> dict:
    """A keyset page: the rows and, when more may follow, the cursor and URL of the next page."""
    cursor = rows[-1]["id"] if len(rows) == limit else None
    body = {key: rows, "next_cursor": cursor}
    if cursor is not None:
        args = {k: v[-1].decode() for k, v in handler.request.query_arguments.items() if k != "cursor"}
        body["next"] = f"{handler.request.path}?{urlencode({**args, 'cursor': cursor})}"
    return body


class SessionsHandler(ApiHandler):
    async def post(self) -> None:
        """Create a session (Active unless "activate": false)."""
        body = self.json_body("session_create")
        client = self.client_info()
        try:
            self.deps.limits.create_session(client.addr)
            if self.deps.shared_limits is not None:  # cluster mode: the address's creations on every node
                await self.deps.shared_limits.create_session(client.addr)
        except AppError as exc:
            self.security("session_rate_limited", None, {"limit_per_minute": exc.details["limit_per_minute"]})
            raise
        user_id, identity = await self.who(body)
        session = await self.deps.sessions.create(user_id, body.get("client_info"), body.get("activate", True), client,
                                                  identity)
        reply = session_json(session)
        reply["websocket_url"] = self.websocket_url(session.session_id)
        self.write_json(reply, 201)

    async def who(self, body: dict) -> tuple[str, Identity | None]:
        """The user a new session is for, and the verified token that says so. `--auth open`: the body's
        user_id. `--auth jwt`: the user of a verified JWT (a body user_id that differs is impersonation),
        or, with the admin token, the body's user_id (an application backend minting a session)."""
        claimed = body.get("user_id")
        verifier = self.deps.verifier
        if verifier is None or self.is_admin():
            if claimed is None:
                raise AppError(ErrorCode.INVALID_MESSAGE, "'user_id' is a required property (at /)",
                               {"pointer": "/", "schema_rule": "required"})
            return claimed, None
        token = bearer_token(self.request)
        if token is None:
            self.security("unauthorized", "medium", {"endpoint": self.request.path, "why": "no token"})
            raise AppError(ErrorCode.UNAUTHORIZED, "this server creates sessions for verified users: send "
                           "Authorization: Bearer <JWT from the identity provider> (or the admin token)")
        try:
            identity = await verifier.verify(token)
        except TokenRefused as exc:
            self.security("token_refused", exc.severity, {"reason": exc.reason, "why": str(exc)})
            raise AppError(ErrorCode.UNAUTHORIZED, f"token refused: {exc}", {"reason": exc.reason}) from None
        if claimed is not None and claimed != identity.user_id:
            self.security("impersonation", None, {"claimed_user_id": claimed, "token_user_id": identity.user_id,
                                                  "issuer": identity.issuer, "endpoint": self.request.path})
            raise AppError(ErrorCode.UNAUTHORIZED, "user_id differs from the token's user",
                           {"pointer": "/user_id", "token_user_id": identity.user_id})
        return identity.user_id, identity

    def websocket_url(self, session_id: str) -> str:
        """ws:// or wss:// on the Host the client used (never the bind address)."""
        scheme = "wss" if self.request.protocol == "https" else "ws"
        return f"{scheme}://{self.request.host}/ws?session_id={session_id}"

    async def get(self) -> None:
        """Operators: list sessions, filtered, newest first, keyset-paginated."""
        self.require_admin()
        state = self.get_query_argument("state", None) or None
        if state is not None and state not in STATES:
            raise AppError(ErrorCode.INVALID_MESSAGE, f"state must be one of {', '.join(STATES)}",
                           {"pointer": "?state"})
        limit = int_arg(self, "limit", 100, 1, 1000)
        rows = await self.deps.store.list_sessions(user_id=self.get_query_argument("user_id", None) or None,
                                              state=state, limit=limit, cursor=int_arg(self, "cursor", None))
        self.write_json(page(self, "sessions", [session_json(r, with_id=True) for r in rows], limit))


class SessionHandler(ApiHandler):
    async def get(self, session_id: str) -> None:
        """One session as it stands now."""
        self.write_json(session_json(await self.deps.sessions.get(session_id)))

    async def delete(self, session_id: str) -> None:
        """Invalidate a session; its sockets close."""
        self.write_json(session_json(await self.deps.sessions.invalidate(session_id, self.client_info())))


class ActivateHandler(ApiHandler):
    async def post(self, session_id: str) -> None:
        """Activate a pending session."""
        self.write_json(session_json(await self.deps.sessions.activate(session_id, self.client_info())))


class EventsHandler(ApiHandler):
    async def get(self) -> None:
        """Operators: the event log, filtered, newest first, keyset-paginated."""
        self.require_admin()
        unknown = sorted(set(self.request.query_arguments) - {"limit", "cursor", "since", "until", *EVENT_FILTERS})
        if unknown:
            raise AppError(ErrorCode.INVALID_MESSAGE, f"unknown filter {unknown[0]!r}; the filters are "
                           f"{', '.join(EVENT_FILTERS)}, since, until, limit and cursor", {"pointer": f"?{unknown[0]}"})
        limit = int_arg(self, "limit", 100, 1, 1000)
        filters = {k: self.get_query_argument(k, None) or None for k in EVENT_FILTERS}
        for name, allowed in (("kind", EVENT_KINDS), ("severity", SEVERITIES)):
            if filters[name] is not None and filters[name] not in allowed:
                raise AppError(ErrorCode.INVALID_MESSAGE, f"{name} must be one of {', '.join(allowed)}",
                               {"pointer": f"?{name}"})
        rows = await self.deps.store.events(limit=limit, cursor=int_arg(self, "cursor", None),
                                       since=time_arg(self, "since"), until=time_arg(self, "until"), **filters)
        self.write_json(page(self, "events", [event_json(r) for r in rows], limit))


class DocumentsHandler(ApiHandler):
    async def get(self) -> None:
        """The documents the caller may read, by id, each with the caller's role; ?after=<id> pages on."""
        author = await self.require_editor()
        limit = int_arg(self, "limit", 100, 1, 1000)
        after = self.get_query_argument("after", None) or None
        if after is not None:
            check_document_id(after)
        operator = author is OPERATOR
        rows = await self.deps.store.list_documents(limit=limit, after=after,
                                                    readable=self.deps.access.readable(author, operator))
        documents = [{"document_id": r.document_id, "format": r.format, "created_at": iso(r.created_at),
                      "role": await self.deps.access.role(r.document_id, author, operator)} for r in rows]
        body = {"documents": documents, "next_after": rows[-1].document_id if len(rows) == limit else None}
        if body["next_after"] is not None:
            body["next"] = f"{self.request.path}?{urlencode({'limit': limit, 'after': body['next_after']})}"
        self.write_json(body)

    async def post(self) -> None:
        """Create a document (format html unless told text)."""
        author = await self.require_editor()
        body = self.json_body("document_create")
        keys = () if author is OPERATOR else creator(author, self.request.remote_ip)
        try:
            claim = None if author is OPERATOR else self.deps.access.owner_write(body["document_id"], author.user_id)
            document = await self.deps.documents.create(body["document_id"], body.get("format", "html"), keys, claim)
        except AppError as exc:
            if "quota" in exc.details:
                self.security("document_quota", None, {**exc.details, "user_id": author.user_id})
            raise
        self.deps.documents.release(document.document_id)
        owner = author.user_id if self.deps.access.enforced and author is not OPERATOR else None
        self.deps.audit.event("document", "document_created", "info", {"format": document.format, "owner": owner,
                              "via": "rest"}, document_id=document.document_id, user_id=author.user_id,
                              client_addr=self.request.remote_ip)
        self.write_json(document.state(), 201)


class ProbedHandler(ApiHandler):
    """A reader of documents by id: NOT_FOUND answers count per session, and past the limit a minute
    (id guessing) the session gets RATE_LIMITED until the window has passed."""

    async def read(self, document_id: str, call, *args):
        """`call(document_id, *args)` for an editor, counting a NOT_FOUND against the session."""
        author = await self.require_editor()
        check_document_id(document_id)
        await self.deps.access.require(document_id, author, "viewer", author is OPERATOR)
        limit = self.deps.limits.probes.limit
        if author is not OPERATOR and self.deps.limits.probing(author.peer_id):
            raise AppError(ErrorCode.RATE_LIMITED, "too many unknown documents asked for; slow down",
                           {"limit_per_minute": limit, "retry_after": self.deps.limits.probe_wait(author.peer_id)})
        try:
            return await call(document_id, *args)
        except AppError as exc:
            if exc.code == ErrorCode.NOT_FOUND and author is not OPERATOR and self.deps.limits.probed(author.peer_id):
                self.security("document_probe", None, {"limit_per_minute": limit, "user_id": author.user_id,
                                                       "peer_id": author.peer_id})
            raise


class DocumentHandler(ProbedHandler):
    async def get(self, document_id: str) -> None:
        """A document now, or as it was at ?revision=N; ?format=text or html: its content alone, as plain
        text (an HTML document's text) or as HTML (a text document escaped in <pre>)."""
        as_ = self.get_query_argument("format", None)
        if as_ not in (None, "json", "text", "html"):
            raise AppError(ErrorCode.INVALID_MESSAGE, "format must be json, text or html", {"pointer": "?format"})
        state = await self.read(document_id, self.deps.documents.read, int_arg(self, "revision", None))
        if as_ in (None, "json"):
            self.write_json(state)
            return
        html_document = state["format"] == "html"
        if as_ == "text":
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(text_of(state["content"]) if html_document else state["content"])
            return
        self.set_header("Content-Type", "text/html; charset=utf-8")
        # Sanitized, and still never run as a page of this origin: no script, no style, no frame, no form.
        self.set_header("Content-Security-Policy", "default-src 'none'; img-src data:; sandbox")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.finish(state["content"] if html_document else f"<pre>{html.escape(state['content'])}</pre>")

    async def delete(self, document_id: str) -> None:
        """Delete a document, its history and its members (its owner, or an operator); its sockets close
        with 4014; its events stay."""
        author = await self.require_editor()
        check_document_id(document_id)
        await self.deps.access.require(document_id, author, "owner" if self.deps.access.enforced else "editor",
                                       author is OPERATOR)
        document = await self.deps.documents.delete(document_id)
        if document is not None:
            self.deps.hub.close_document(document, ws.CLOSE_DOCUMENT_DELETED, "document_deleted")
        self.deps.access.forget(document_id)
        if self.deps.cluster is not None:  # the copies on other nodes go too, and their sockets close
            self.deps.cluster.publish(self.deps.cluster.control, {"t": "deleted", "d": document_id})
        self.deps.audit.event("document", "document_deleted", "info", {"revision": document.revision if document
                              else None}, document_id=document_id, user_id=author.user_id,
                              client_addr=self.request.remote_ip)
        self.write_json({"document_id": document_id, "deleted": True})


class HistoryHandler(ProbedHandler):
    async def get(self, document_id: str) -> None:
        """Stored ops after ?since=N (default 0), oldest first, at most ?limit=."""
        since, limit = int_arg(self, "since", 0), int_arg(self, "limit", 100, 1, 1000)
        ops = await self.read(document_id, self.deps.documents.history, since, limit)
        self.write_json({"document_id": document_id, "ops": ops,
                         "next_since": ops[-1]["revision"] if len(ops) == limit else None})


class RestoreHandler(ApiHandler):
    async def post(self, document_id: str) -> None:
        """Write the content of an old revision as a new revision; editors receive it as an edit."""
        author = await self.require_editor()
        check_document_id(document_id)
        await self.deps.access.require(document_id, author, "editor", author is OPERATOR)
        revision = self.json_body("document_restore")["revision"]
        if self.deps.shared is not None:  # cluster mode: on the node that owns the document
            state, new_revision = await self.deps.shared.restore(document_id, revision, author)
        else:
            applied = await self.deps.edits.restore(document_id, revision, author)
            state, new_revision = applied.document.state(), applied.revision
        self.deps.audit.event("document", "document_restored", "info", {"from_revision": revision,
                         "revision": new_revision}, document_id=document_id, user_id=author.user_id,
                         client_addr=self.request.remote_ip)
        self.write_json(state)


class MembersHandler(ApiHandler):
    """Who may do what to a document (`--auth jwt`): its owner or an operator."""

    async def _owner(self, document_id: str) -> Author:
        author = await self.require_editor()
        check_document_id(document_id)
        if not self.deps.access.enforced:
            raise AppError(ErrorCode.INVALID_MESSAGE, "members need --auth jwt: in open mode everyone is an "
                           "editor of everything", {"pointer": "/"})
        if await self.deps.documents.store.get_document(document_id) is None:
            raise AppError(ErrorCode.NOT_FOUND, f"no document {document_id!r}", {"document_id": document_id})
        await self.deps.access.require(document_id, author, "owner", author is OPERATOR)
        return author

    async def get(self, document_id: str) -> None:
        await self._owner(document_id)
        self.write_json({"document_id": document_id, "members": await self.deps.access.members(document_id)})

    async def put(self, document_id: str) -> None:
        """{member, role}: give a member a role."""
        author = await self._owner(document_id)
        body = self.json_body("member_set")
        members = await self.deps.access.set(document_id, body["member"], body["role"])
        self.deps.audit.event("document", "member_set", "info", {"member": body["member"], "role": body["role"]},
                              document_id=document_id, user_id=author.user_id, client_addr=self.request.remote_ip)
        self.write_json({"document_id": document_id, "members": members})

    async def delete(self, document_id: str) -> None:
        """?member=: take a member's role away."""
        author = await self._owner(document_id)
        member = self.get_query_argument("member", "")
        members = await self.deps.access.set(document_id, member, None)
        self.deps.audit.event("document", "member_removed", "info", {"member": member},
                              document_id=document_id, user_id=author.user_id, client_addr=self.request.remote_ip)
        self.write_json({"document_id": document_id, "members": members})


class MetricsHandler(ApiHandler):
    def initialize(self, deps, open_metrics: bool = False) -> None:
        super().initialize(deps)
        self.open_metrics = open_metrics

    async def get(self) -> None:
        """Prometheus text format; operators only unless served on the separate metrics port."""
        if not self.open_metrics:
            self.require_admin()
        self.set_header("Content-Type", self.deps.metrics.content_type)
        self.finish(await self.deps.metrics.render(self.deps.documents.open_count))


class ContractHandler(ApiHandler):
    """/api/openapi.json and /api/asyncapi.json (see contract.py)."""

    def initialize(self, deps, which: str) -> None:
        super().initialize(deps)
        self.which = which

    def get(self) -> None:
        from .. import contract
        self.write_json(contract.openapi() if self.which == "openapi" else contract.asyncapi())


class SchemaHandler(ApiHandler):
    """/schemas/<name>.json: the JSON Schemas the server validates with, as it loaded them."""

    def get(self, name: str) -> None:
        schema = self.deps.registry.schemas.get(name)
        if schema is None:
            raise AppError(ErrorCode.NOT_FOUND, f"no schema {name!r}", {"schemas": sorted(self.deps.registry.schemas)})
        self.set_header("Content-Type", "application/schema+json")
        self.finish(json.dumps(schema, indent=2))
