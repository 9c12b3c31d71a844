"""The editor WebSocket: authenticate, then dispatch each message through a table to the services (edits
to the EditService, fan-out through the hub) and send the replies; never die on bad input."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from typing import Any
from urllib.parse import urlparse

import tornado.websocket

from .. import protocol as P
from ..clock import iso
from ..edits import CLOSE_SERVER_ERROR, Reply
from ..documents import Author, check_document_id, creator
from ..limits import SYNC_BURST, SYNC_RATE, Notices
from ..protocol import AppError, ErrorCode
from ..sessions import Client, mask
from ..identity import TokenRefused
from ..storage.base import ConnectionRecord, connection_closed, connection_opened
from . import wire
from .sockets import SocketStream
from .base import client_of, session_ids_given
# The wire-level close codes (1002, 1007, 4009) live in wire.py.

log = logging.getLogger("mcprt.ws")

# Close codes (listed in the README).
CLOSE_INVALID_SESSION = 4000
CLOSE_NO_CREDENTIAL = 4001
CLOSE_CREDENTIALS_DISAGREE = 4003
CLOSE_BAD_DOCUMENT = 4004
CLOSE_TOO_MANY_CONNECTIONS = 4008
CLOSE_COOLING_DOWN = 4029
CLOSE_SESSION_INVALIDATED = 4010
CLOSE_SESSION_EXPIRED = 4011
CLOSE_ACCESS_REVOKED = 4013
CLOSE_DOCUMENT_DELETED = 4014
CLOSE_POLICY = 1008
CLOSE_GOING_AWAY = 1001

CLIENT_TYPES = ("web", "mobile", "desktop")
LEAN = "mcprt.ops.v1"  # the subprotocol of op-aware clients: acks and broadcasts carry no content
ABUSE_INVALIDATE_AFTER = 3  # abuse disconnects of one session within the violation window


class EditorSocket(tornado.websocket.WebSocketHandler):
    """One editor on one document, as one session."""

    # Tornado's handler already holds ~27 attributes: past 30 in its __dict__, CPython gives each instance a
    # dict of its own (1.6 KB, not 0.3). Ours live in slots.
    __slots__ = ("_dispatch", "bucket", "connection_id", "cursor", "deps", "document", "document_id", "end_reason",
                 "expires", "joined", "lean", "messages_in", "messages_out", "notices", "opened", "peer_id",
                 "role", "session", "session_id", "sync_bucket", "sync_notices", "user_id")

    def initialize(self, deps) -> None:
        self.deps = deps
        self.connection_id = uuid.uuid4().hex[:16]
        self.session = None
        self.document = None
        self.session_id = self.user_id = self.peer_id = None
        self.document_id = None
        self.cursor: dict | None = None
        self.role: str | None = None  # on the document: owner, editor or viewer (see access.py)
        self.expires = float("inf")  # the session's deadline (epoch seconds), checked on each message
        self.end_reason: str | None = None
        self.messages_in = self.messages_out = 0
        self.opened = time.monotonic()
        self.joined = False
        self.lean = False  # offered LEAN: edit_ack and realtime_edit carry the op and length, not the content
        self.notices = Notices()  # RATE_LIMITED replies, coalesced
        self.sync_notices = Notices()  # events about refused sync requests, coalesced
        self.sync_bucket = deps.limits.sync_bucket()
        self._dispatch = {P.HEARTBEAT: self.on_heartbeat, P.REALTIME_EDIT: self.on_realtime_edit,
                          P.AUTH_REFRESH: self.on_auth_refresh,
                          P.CURSOR_UPDATE: self.on_cursor_update, P.SYNC_REQUEST: self.on_sync_request}

    def get_websocket_protocol(self):
        return wire.protocol_for(self)

    def _detach_stream(self):
        """The socket, once the handshake is answered, on an asyncio transport (sockets.SocketStream).
        The request lets go of Tornado's server connection, which holds the IOStream and its buffers for
        as long as the request lives (the socket's lifetime)."""
        stream = SocketStream(super()._detach_stream())
        self.request.server_connection = None
        return stream

    # -- handshake -------------------------------------------------------

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        """The lean mode when offered (the server echoes it); otherwise the reference's messages."""
        self.lean = LEAN in subprotocols
        return LEAN if self.lean else None

    def where(self, **extra: Any) -> dict:
        """The who/where fields of an event about this connection."""
        # Before authentication the id is only a claim (anything, up to the size of a request line; the
        # admin token, even): it is not stored as a session id, only masked in a refusal's details.
        return {"session_id": self.session_id if self.session is not None else None, "user_id": self.user_id, "document_id": self.document_id,
                "connection_id": self.connection_id, "client_addr": self.request.remote_ip,
                "user_agent": self.client().user_agent, **extra}

    def client(self) -> Client:
        """The caller's address and user agent, for session transitions."""
        return client_of(self.request)

    def check_origin(self, origin: str) -> bool:
        """Same-origin or listed origins only: a page elsewhere must not drive a user's session (CSWSH)."""
        parsed = urlparse(origin)
        if parsed.netloc.lower() == self.request.host.lower() or origin.rstrip("/") in self.deps.settings.allowed_origins:
            return True
        self.deps.audit.security("origin_rejected", None, {"origin": origin[:200]}, **self.where())
        log.warning("refused WebSocket from origin %s", origin[:200])
        return False

    def credential(self) -> str | None:
        """The session id from the query, Authorization: Bearer, or X-Session-ID; they must agree."""
        given = session_ids_given(self.request, self.get_query_argument("session_id", None))
        if not given:
            raise AppError(ErrorCode.UNAUTHORIZED, "no session: pass ?session_id=, Authorization: Bearer or "
                           "X-Session-ID", {"close_code": CLOSE_NO_CREDENTIAL})
        if len(given) > 1:
            raise AppError(ErrorCode.UNAUTHORIZED, "the session ids given in the query and headers disagree",
                           {"close_code": CLOSE_CREDENTIALS_DISAGREE})
        return given.pop()

    async def open(self) -> None:
        try:
            await self._authenticate_and_join()
        except AppError as exc:
            self._refuse(exc)
        except Exception:
            log.exception("error opening a connection")
            self._refuse(AppError(ErrorCode.SERVER_ERROR, "could not open the document; retry",
                                  {"close_code": CLOSE_SERVER_ERROR}))

    async def _authenticate_and_join(self) -> None:
        deps = self.deps
        self.session_id = self.credential()
        self.document_id = check_document_id(self.get_query_argument("document_id", None) or "default")
        try:
            session = await deps.sessions.authenticate(self.session_id)
        except AppError as exc:
            exc.details["close_code"] = CLOSE_INVALID_SESSION
            raise
        cooldown = deps.audit.cooldown_left(self.session_id)
        if cooldown:
            raise AppError(ErrorCode.RATE_LIMITED, f"this session was disconnected for abuse; retry in "
                           f"{cooldown:.0f} s", {"close_code": CLOSE_COOLING_DOWN, "retry_after": round(cooldown, 1)})
        self.session, self.user_id, self.peer_id = session, session.user_id, session.peer_id
        self.author = Author(self.user_id, self.peer_id, self.session_id)  # of each edit (none of it changes)
        self.expires = session.expires_at
        deps.limits.check_connection(deps.hub.session_connections(self.session_id), deps.hub.connection_count)
        self.bucket = deps.limits.bucket(self.session_id)
        if deps.shared is not None:  # cluster mode: own the document, or follow the node that does
            await deps.shared.attach(self.document_id)
        try:
            elsewhere = await self._open_document(session)
        except BaseException:
            if deps.shared is not None:
                deps.shared.joined(self.document_id)
            if not deps.hub.members(self.document_id):  # refused: nobody keeps the document open for nothing
                deps.tasks.spawn(_release_when_stored(deps, self.document_id), "release a document")
            raise
        self.join(elsewhere)
        if deps.shared is not None:
            deps.shared.here(self)
            deps.shared.joined(self.document_id)
            deps.shared.opened(self.document)

    async def _open_document(self, session) -> list:
        """The document in memory (made by this join if new), the caller's role on it, and its
        participants on other nodes."""
        deps = self.deps
        self.document = await deps.documents.open(
            self.document_id, creator=creator(Author(self.user_id, self.peer_id), self.request.remote_ip),
            owner=None if deps.documents.loaded(self.document_id) else deps.access.owner_write(self.document_id,
                                                                                               self.user_id))
        if self.document.fresh:  # this join made it: the creation is recorded, with its owner
            self.document.fresh = False
            deps.audit.event("document", "document_created", "info", {
                "format": self.document.format, "owner": self.user_id if deps.access.enforced else None,
                "via": "join"}, **self.where())
        try:
            self.role = await deps.access.require(self.document_id, session, "viewer")
        except AppError as exc:
            exc.details["close_code"] = CLOSE_ACCESS_REVOKED
            raise
        await deps.documents.know(self.document, self.peer_id)
        return await deps.shared.participants(self.document_id) if deps.shared is not None else []

    def join(self, elsewhere=()) -> None:
        """Enter the document's room and tell everyone; `elsewhere`: its participants on other nodes."""
        deps = self.deps
        deps.hub.join(self)
        self.joined = True
        participants = deps.hub.participants(self.document_id)
        here = {p["peer_id"]: p for p in participants}
        for entry in elsewhere:  # the same session may be on several nodes
            if entry["peer_id"] in here:
                here[entry["peer_id"]]["connections"] += entry["connections"]
            else:
                participants.append(entry)
        state = {**self.document.state(), "participants": participants, "role": self.role}
        self.send(P.DOCUMENT_STATE, state)
        connected = P.build(P.SESSION_CONNECTED, {"user_id": self.user_id, "peer_id": self.peer_id,
                            "connection_count": deps.hub.session_connections(self.session_id)}, self.now_iso())
        self.fan_out(P.SESSION_CONNECTED, connected)
        client_type = self.request.headers.get("X-Client-Type") or self.get_query_argument("client_type", "")
        where = self.where()
        deps.store.enqueue(connection_opened(ConnectionRecord(
            self.connection_id, where["session_id"], self.user_id, self.peer_id, self.document_id,
            client_type if client_type in CLIENT_TYPES else "unknown", where["client_addr"], where["user_agent"],
            deps.clock())))
        deps.audit.event("connection", "connected", "info", {"client_type": client_type[:32] or None}, **self.where())
        log.info("connected %s user=%s doc=%s conn=%s", mask(self.session_id), self.user_id, self.document_id,
                 self.connection_id)

    def _refuse(self, exc: AppError) -> None:
        close_code = exc.details.pop("close_code", CLOSE_TOO_MANY_CONNECTIONS if exc.code == ErrorCode.RATE_LIMITED
                                     else CLOSE_INVALID_SESSION)
        audit = self.deps.audit
        type_ = {ErrorCode.UNAUTHORIZED: "unauthorized", ErrorCode.INVALID_SESSION: "invalid_session",
                 ErrorCode.RATE_LIMITED: "connection_limit", ErrorCode.INVALID_MESSAGE: "invalid_message"}.get(exc.code)
        if "quota" in exc.details:
            type_ = "document_quota"
        if exc.code in (ErrorCode.UNAUTHORIZED, ErrorCode.INVALID_SESSION) \
                and audit.address_blocked(self.request.remote_ip):
            exc = AppError(ErrorCode.RATE_LIMITED, "too many failed attempts from this address; retry later",
                           {"retry_after": audit.window})
            close_code = CLOSE_COOLING_DOWN
        if type_:
            details = {"message": exc.message, "close_code": close_code}
            if self.session is None and self.session_id:
                details["claimed_session"] = mask(self.session_id)
            audit.security(type_, None, details, **self.where())
        if exc.code == ErrorCode.INVALID_MESSAGE:
            close_code = CLOSE_BAD_DOCUMENT
        self.send_error(exc)
        self.end_reason = "refused"
        self.close(close_code, exc.message[:120])

    # -- sending -------------------------------------------------------

    def now_iso(self) -> str:
        return iso(self.deps.clock())

    def send_text(self, text: str) -> None:
        """Write one serialized message; a closed peer is skipped, never an error."""
        self.send_utf8(text.encode("utf-8", "replace"))  # a lone surrogate here would be our bug: not fatal

    def send_utf8(self, data: bytes) -> None:
        """Write one message already serialized and encoded (a broadcast encodes once)."""
        if self.ws_connection is not None and self.ws_connection.send_utf8(data):
            self.messages_out += 1

    def send(self, type_: str, payload: dict, id_: str | None = None) -> None:
        """Build, serialize, count and send one message."""
        self.deps.metrics.sent[type_].inc()
        self.send_text(P.dumps(P.build(type_, payload, self.now_iso(), id_)))

    def send_error(self, error: AppError, id_: str | None = None) -> None:
        """An `error` message in the reference's shape."""
        self.deps.metrics.error_codes[error.code.value].inc()
        self.deps.metrics.sent[P.ERROR].inc()
        self.send_text(P.dumps(P.build_error(error, self.now_iso(), id_)))

    def fan_out(self, type_: str, message: dict) -> None:
        """Serialize once and send to everyone else on the document."""
        text = P.dumps(message)
        n = self.deps.hub.publish(self.document_id, text, self)
        self.deps.metrics.sent[type_].inc(n)
        if self.deps.shared is not None:
            self.deps.shared.fan(self.document_id, type_, text)

    # -- receiving -----------------------------------------------------

    def on_message(self, message: str | bytes):
        if not self.joined:
            return None
        self.messages_in += 1
        try:
            if isinstance(message, bytes):
                raise AppError(ErrorCode.INVALID_MESSAGE, "binary frames are not accepted; send JSON text",
                               {"frame": "binary", "bytes": len(message)})
            limit = self.deps.settings.max_message_bytes
            if len(message) > limit or (4 * len(message) > limit and len(message.encode("utf-8")) > limit):
                raise AppError(ErrorCode.MESSAGE_TOO_LARGE, f"message exceeds {limit} bytes",
                               {"limit": limit, "size": len(message.encode("utf-8", "surrogatepass"))})
            if not self.deps.limits.session_message(self.session_id, self.bucket):
                return self._rate_limited(message)
            parsed = self.deps.registry.parse(message)
            if self.deps.clock() >= self.expires:
                return self._expired(parsed["id"])
            self.deps.metrics.received[parsed["type"]].inc()
            result = self._dispatch[parsed["type"]](parsed)
            return self._guard(result, parsed["id"]) if result is not None else None
        except AppError as exc:
            self.reject(exc, message)
        except Exception:
            log.exception("error handling a message on %s", self.connection_id)
            self.send_error(AppError(ErrorCode.SERVER_ERROR, "internal error handling the message", {}))
        return None

    async def _guard(self, coroutine, id_: str) -> None:
        try:
            await coroutine
        except AppError as exc:
            self.reject(exc, None, id_)
        except Exception:
            log.exception("error handling a message on %s", self.connection_id)
            self.send_error(AppError(ErrorCode.SERVER_ERROR, "internal error handling the message", {}), id_)

    def on_invalid_text(self, data: bytes) -> None:
        """A text frame that is not UTF-8: an INVALID_MESSAGE, not a dropped connection."""
        if self.joined:
            self.messages_in += 1
            self.reject(AppError(ErrorCode.INVALID_MESSAGE, "text frame is not valid UTF-8",
                                 {"bytes": len(data)}), None)

    _SECURITY_TYPE = {ErrorCode.MESSAGE_TOO_LARGE: "message_too_large", ErrorCode.INVALID_MESSAGE: "invalid_message",
                      ErrorCode.UNAUTHORIZED: "unauthorized", ErrorCode.RATE_LIMITED: "rate_limited"}

    def reject(self, exc: AppError, raw: str | bytes | None, id_: str | None = None, type_: str | None = None) -> None:
        """Answer a bad message with an error, record it, and disconnect a client that keeps at it."""
        id_ = id_ or _message_id(raw)
        self.send_error(exc, id_)
        if exc.code in (ErrorCode.CONFLICT, ErrorCode.SERVER_ERROR):
            return  # a stale edit is a client's ordinary race, and our own failure is no attack
        details = {"code": exc.code.value, "message": exc.message[:300], **exc.details}
        if isinstance(raw, str):
            details["sample"] = raw[:200]
        # A delta that no longer fits because the client named no base revision and the document moved
        # under it is an ordinary race: recorded, but low, so it never counts toward the abuse threshold.
        severity = "low" if exc.details.get("race") else None
        crossed = self.deps.audit.security(type_ or self._SECURITY_TYPE.get(exc.code, "invalid_message"), severity,
                                           details, **self.where())
        if crossed:
            self.abuse_disconnect()

    def abuse_disconnect(self) -> None:
        """Too many violations in the window: close with 1008. Each abuse disconnect refuses the
        session's reconnects for a cool-down that doubles; the ABUSE_INVALIDATE_AFTER-th in the window
        (or the first, with --violation-action invalidate) ends the session."""
        deps = self.deps
        count, cooldown = deps.audit.abused(self.session_id)
        invalidate = deps.settings.violation_action == "invalidate" or count >= ABUSE_INVALIDATE_AFTER
        deps.audit.security("abuse_disconnect", None, {"threshold": deps.settings.violation_threshold,
                            "window_seconds": deps.settings.violation_window, "count": count,
                            "cooldown_seconds": cooldown, "action": "invalidate" if invalidate else "disconnect"},
                            **self.where())
        deps.audit.forget(self.session_id)
        self.end_reason = "abuse"
        self.close(CLOSE_POLICY, "too many invalid messages")
        if invalidate:
            deps.tasks.spawn(deps.sessions.invalidate(self.session_id, self.client(), "abuse"), "invalidate for abuse")

    def _expired(self, id_: str) -> None:
        """The session passed its deadline since the last sweep: refuse the message and end the session
        now (its sockets close with 4011), not at the next sweep."""
        self.send_error(AppError(ErrorCode.INVALID_SESSION, "session ended: session_expired",
                                 {"reason": "session_expired"}), id_)
        if self.end_reason is None:
            self.end_reason = "session_expired"
            self.deps.tasks.spawn(self.deps.sessions.get(self.session_id), "expire a session")

    def _rate_limited(self, raw: str) -> None:
        """Over the session's rate: an edit is always answered (RATE_LIMITED with its id and when to send it
        again), so a client waiting for its ack never hangs; other messages get one coalesced reply a
        second, and so does the security event."""
        limits = self.deps.limits
        edit_id = _message_id(raw) if _EDIT_TYPE.search(raw, 0, 400) else None
        if edit_id is not None:
            self.send_error(AppError(ErrorCode.RATE_LIMITED, "too many messages; send this edit again later",
                                     {"retry_after_ms": limits.retry_after_ms(self.bucket)}), edit_id)
        dropped = self.notices.refused(self.deps.clock())
        if dropped is None:
            return None
        limit = limits.message_limit(dropped)
        if edit_id is None:
            self.send_error(AppError(ErrorCode.RATE_LIMITED, "too many messages; slow down", limit))
        self.deps.audit.security("rate_limited", None, limit, **self.where())
        return None

    # -- message types -------------------------------------------------

    def on_heartbeat(self, message: dict) -> None:
        self.deps.sessions.touch(self.session_id)
        self.send(P.HEARTBEAT_ACK, {"server_time": self.now_iso()}, message["id"])

    async def on_auth_refresh(self, message: dict) -> None:
        """A fresh JWT extends this socket's session (--auth jwt); a refused one is recorded, answered, and
        leaves the session to end at its deadline (its sockets close with 4011)."""
        deps, id_ = self.deps, message["id"]
        if deps.verifier is None:
            raise AppError(ErrorCode.INVALID_MESSAGE, "auth_refresh needs --auth jwt: this server's sessions are "
                           "not bound to tokens", {"pointer": "/type"})
        try:
            identity = await deps.verifier.verify(message["payload"]["token"])
        except TokenRefused as exc:
            deps.audit.security("token_refused", exc.severity,
                                {"reason": exc.reason, "why": str(exc), "via": P.AUTH_REFRESH}, **self.where())
            self.send_error(AppError(ErrorCode.UNAUTHORIZED, f"token refused: {exc}; the session still ends at "
                                     f"{iso(self.expires)}", {"reason": exc.reason, "expires_at": iso(self.expires)}),
                            id_)
            return
        if identity.user_id != self.user_id:
            deps.audit.security("impersonation", None, {"claimed_user_id": identity.user_id, "via": P.AUTH_REFRESH},
                                **self.where())
            self.send_error(AppError(ErrorCode.UNAUTHORIZED, "the token is for another user than this session's",
                                     {"pointer": "/payload/token"}), id_)
            return
        session = await deps.sessions.extend(self.session_id, identity, self.client())
        self.send(P.AUTH_REFRESHED, {"expires_at": iso(session.expires_at)}, id_)
        for peer in deps.hub.session_peers(self.session_id):  # the fresh token's groups and grants apply now
            peer.session, peer.expires = session, session.expires_at
            await recheck_role(deps, peer)

    def on_realtime_edit(self, message: dict):
        if self.role not in ("editor", "owner"):
            return self.reject(AppError(ErrorCode.UNAUTHORIZED, f"a {self.role} may not edit this document",
                                        {"pointer": "/type", "role": self.role}, status=403),
                               None, message["id"], type_="forbidden_edit")
        payload = message["payload"]
        if "user_id" in payload and payload["user_id"] != self.user_id:
            raise_impersonation(self, payload["user_id"])
        self.deps.sessions.touch(self.session_id)
        if self.deps.shared is not None and self._routed(message):
            return None
        if self.deps.edits.needs_base(self.document, payload):
            return self._edit_from_old_base(message)
        self._submit(message)
        return None

    def _routed(self, message: dict) -> bool:
        """Cluster mode: True when another node owns the document (the edit went there) or ownership is
        moving (the edit got SERVER_ERROR and is sent again); False when this node commits it."""
        route = self.deps.shared.route(self.document_id)
        if route == "local":
            return False
        if route == "forward":
            self.deps.shared.forward(self.document, message, self.author,
                                     self, self._ack_for(message))
        else:
            self.send_error(AppError(ErrorCode.SERVER_ERROR, "the document is moving between nodes; send the edit "
                                     "again", {"retry_after_ms": 200}), message["id"])
        return True

    def _ack_for(self, message: dict):
        """What answers an edit once it is durable (an Applied: edit_ack) or not stored (an AppError)."""
        def done(outcome) -> None:
            if isinstance(outcome, AppError):
                self.send_error(outcome, message["id"])
                return
            self.deps.metrics.sent[P.EDIT_ACK].inc()
            self.send_text(P.edit_ack_text(
                message["id"], outcome.revision, outcome.op_json or P.dumps(outcome.op.to_json()),
                P.dumps(outcome.correction.to_json()) if outcome.correction else None,
                outcome.length if self.lean else None, None if self.lean else outcome.content, self.now_iso()))
        return done

    async def _edit_from_old_base(self, message: dict) -> None:
        self._submit(message, await self.deps.edits.base_content(self.document, message["payload"]))

    def _submit(self, message: dict, base_content: str | None = None) -> None:
        if self.document.broken:  # a storage error discarded this copy while the edit was on its way
            self.send_error(AppError(ErrorCode.SERVER_ERROR, "the document was reloaded after a storage error; "
                                     "reconnect", {}), message["id"])
            self.end(CLOSE_SERVER_ERROR, "server_error")
            return

        reply = Reply(self._ack_for(message), lambda exc: self.reject(exc, None, message["id"]), self.abuse_disconnect)
        self.deps.edits.submit(self.document, message, self.author, self, self.where, reply, base_content)

    def on_cursor_update(self, message: dict) -> None:
        payload = message["payload"]
        given = [payload["position"]] + ([payload["selection_end"]] if "selection_end" in payload else [])
        moved = self.deps.documents.rebase_positions(self.document, given, payload.get("base_revision"))
        self.cursor = {"position": moved[0], "selection_end": moved[1] if len(moved) > 1 else None,
                       "revision": self.document.revision}
        self.fan_out(P.PRESENCE, P.build(P.PRESENCE, {"user_id": self.user_id, "peer_id": self.peer_id,
                                                      "state": "active", "cursor": self.cursor}, self.now_iso()))
        if self.deps.shared is not None:
            self.deps.shared.here(self)

    def on_sync_request(self, message: dict) -> None:
        """Answer with the ops since a revision (or the whole document_state), paced per connection: while
        more than half of the previous answer is still queued here, or past SYNC_BURST answers at SYNC_RATE a
        second, the request gets RATE_LIMITED (a client that reads its answers never meets either)."""
        proto = self.ws_connection
        if proto is None:
            return
        unsent = proto.unsent_answer()
        if 2 * unsent > proto.answer_size or not self.deps.limits.message(self.sync_bucket):
            details = {"unsent_bytes": unsent, "rate_per_second": SYNC_RATE, "burst": SYNC_BURST,
                       "retry_after": 1.0}
            self.send_error(AppError(ErrorCode.RATE_LIMITED, "sync_request too soon: read the previous answer "
                                     "first", details), message["id"])
            if self.sync_notices.refused(self.deps.clock()) is not None:  # one event a second, not one each
                self.deps.audit.security("rate_limited", None, {"message_type": P.SYNC_REQUEST, **details},
                                         **self.where())
            return
        since, before = message["payload"]["since_revision"], proto.bytes_out()
        ops = self.deps.documents.ops_since(self.document, since)
        if ops is None:
            state = {**self.document.state(), "participants": self.deps.hub.participants(self.document_id)}
            self.send(P.DOCUMENT_STATE, state, message["id"])
        else:
            self.send(P.SYNC_RESPONSE, {"since_revision": since, "revision": self.document.revision, "ops": ops},
                      message["id"])
        proto.mark_answer(proto.bytes_out() - before)

    # -- closing -------------------------------------------------------

    def on_close(self) -> None:
        if not self.joined:
            return
        self.joined = False
        deps = self.deps
        empty = deps.hub.leave(self)
        if deps.shared is not None:
            deps.shared.gone(self)
        reason = self.end_reason or ("client_disconnect" if self.close_code is not None else "timeout")
        left = P.build(P.SESSION_DISCONNECTED, {"user_id": self.user_id, "peer_id": self.peer_id,
                                                "reason": reason}, self.now_iso())
        self.fan_out(P.SESSION_DISCONNECTED, left)
        duration = round(time.monotonic() - self.opened, 3)
        deps.store.enqueue(connection_closed(self.connection_id, deps.clock(), self.close_code, reason,
                                             self.messages_in, self.messages_out))
        deps.audit.event("connection", "disconnected", "info", {
            "reason": reason, "close_code": self.close_code, "duration_seconds": duration,
            "messages_in": self.messages_in, "messages_out": self.messages_out}, **self.where())
        log.info("disconnected %s conn=%s reason=%s after %.1fs (%d in, %d out)", mask(self.session_id),
                 self.connection_id, reason, duration, self.messages_in, self.messages_out)
        if empty:
            deps.tasks.spawn(_release_when_stored(deps, self.document_id), "release a document")

    def end(self, code: int, reason: str) -> None:
        """Close this connection from the server side, saying why to the others."""
        self.end_reason = reason
        self.close(code, reason)


def raise_impersonation(socket: EditorSocket, claimed: str) -> None:
    """A payload user_id that is not the session's user."""
    socket.deps.audit.security("impersonation", None, {"claimed_user_id": claimed[:128]}, **socket.where())
    raise AppError(ErrorCode.UNAUTHORIZED, "payload user_id does not match the session's user",
                   {"pointer": "/payload/user_id"})


async def _release_when_stored(deps, document_id: str) -> None:
    await deps.documents.flush()
    if not deps.hub.members(document_id):
        deps.documents.release(document_id)
        if deps.shared is not None:
            await deps.shared.detach(document_id)


_EDIT_TYPE = re.compile(r'"type"\s*:\s*"realtime_edit"')
_LEADING_ID = re.compile(r'\s*\{\s*"id"\s*:\s*"([^"\\\x00-\x1f]{1,128})"')


def _message_id(raw) -> str | None:
    """The id of a message we could not fully accept, when one can be read cheaply and safely (leniently:
    a message refused for a 1.0 or a NaN elsewhere still has its id read; one too large to parse, when
    its id comes first, as every client we know writes it)."""
    if isinstance(raw, str) and len(raw) > 16384:
        match = _LEADING_ID.match(raw, 0, 300)
        return match.group(1) if match and match.group(1).isprintable() else None
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON, or an integer past Python's digit limit
            return None
        id_ = value.get("id") if isinstance(value, dict) else None
        if isinstance(id_, str) and 0 < len(id_) <= 128 and id_.isprintable():  # no surrogate, no control
            return id_
    return None


async def refresh_roles(deps, document_id: str) -> None:
    """After a change of a document's members: each live socket learns its role (`permissions`), and one
    that may no longer read the document closes with 4013."""
    for peer in deps.hub.members(document_id):
        await recheck_role(deps, peer)


async def recheck_role(deps, peer) -> None:
    """A live socket's role looked up again: `permissions` when it changed, close 4013 when it is gone."""
    role = await deps.access.role(peer.document_id, peer.session)
    if role is None:
        peer.send_error(AppError(ErrorCode.UNAUTHORIZED, "your access to this document was revoked",
                                 {"document_id": peer.document_id}))
        peer.end_reason = "access_revoked"
        peer.close(CLOSE_ACCESS_REVOKED, "access revoked")
    elif role != peer.role:
        peer.role = role
        peer.send(P.PERMISSIONS, {"document_id": peer.document_id, "role": role})


def close_session_sockets(deps, session_id: str, reason: str) -> None:
    """Close every live socket of a session that was invalidated or expired."""
    code = CLOSE_SESSION_EXPIRED if reason == "session_expired" else CLOSE_SESSION_INVALIDATED
    error = AppError(ErrorCode.INVALID_SESSION, f"session ended: {reason}", {"reason": reason})
    closed = deps.hub.close_session(session_id, code, reason, P.dumps(P.build_error(error, iso(deps.clock()))))
    deps.metrics.error_codes[error.code.value].inc(closed)
    deps.metrics.sent[P.ERROR].inc(closed)


async def close_all(deps, code: int, reason: str) -> None:
    """Close every socket (server shutdown) and give the close frames a moment to go out."""
    peers = deps.hub.all_peers()
    for peer in peers:
        peer.end(code, reason)
    for _ in range(20):
        if not deps.hub.all_peers():
            break
        await asyncio.sleep(0.05)
    for peer in deps.hub.all_peers():  # peers that never answered the close frame
        peer.on_close()
