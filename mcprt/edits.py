"""The edit pipeline, for the socket and REST alike: the sender's op against its base, applied, audited,
made durable, then acknowledged and published; a failed write resets the document; restore."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from . import protocol as P
from .audit import Audit
from .clock import iso
from .documents import Applied, Author, Document, DocumentService
from .hub import Hub, Peer
from .ot import TextOperation, to_delta
from .protocol import AppError, ErrorCode
from .tasks import Tasks

log = logging.getLogger("mcprt.edits")

CLOSE_SERVER_ERROR = 4500  # the document was reset: reconnect to what is durable

# Called once per edit, when it is durable (an Applied) or could not be stored (an AppError).
Done = Callable[[Applied | AppError], None]


class EditService:
    """Applies edits in the order they arrive and tells the sender, then everyone else, once durable."""

    def __init__(self, documents: DocumentService, hub: Hub, audit: Audit, clock: Callable[[], float], metrics,
                 tasks: Tasks):
        self.documents, self.hub, self.audit, self.clock, self.metrics = documents, hub, audit, clock, metrics
        self.tasks = tasks

    def needs_base(self, document: Document, payload: dict) -> bool:
        """True for a content-only edit made against an older revision: its base content must be read
        from the store first (base_content), before submit."""
        return "change_delta" not in payload and payload.get("base_revision", document.revision) != document.revision

    async def base_content(self, document: Document, payload: dict) -> str:
        """The content at the edit's base revision."""
        return await self.documents.base_content(document, payload["base_revision"])

    def submit(self, document: Document, message: dict, author: Author, sender: Peer | None, where: dict,
               done: Done, base_content: str | None = None) -> bool:
        """Apply an edit now and call `done` once it is durable (then publish it to everyone on the
        document but `sender`, as they were when it was applied), or could not be stored (then reset the
        document). Raises AppError for an edit refused before anything changed. Returns True when the
        sender's xss attempts have now crossed the violation threshold."""
        started = time.perf_counter()
        revision = self.documents.applied_as(document, author.peer_id, message["id"])
        if revision is not None:  # resent (a lost ack, a reconnect, a restart): answered, never applied twice
            self.tasks.spawn(self._again(document, revision, done), "answer a resent edit")
            return False
        if message["payload"].get("change_delta") == []:
            self._noop(document, done)
            return False
        content = document.content if base_content is None else base_content
        op, base = self.documents.base_op(document, message["payload"], content)
        applied, durable = self.documents.apply(document, op, base, author, message["id"])
        crossed = False
        if applied.removed:
            crossed = self.audit.security("xss_attempt", None, {
                "removed": [r[:200] for r in applied.removed[:20]], "revision": applied.revision}, **where)
        peers = self.hub.members(document.document_id)  # those present now get this revision; later joiners see it in state
        self.hub.shift_cursors(document.document_id, applied.op, sender)

        def stored(future: asyncio.Future) -> None:
            if future.exception() is not None:
                log.error("edit %s on %s not stored: %s", message["id"], document.document_id, future.exception())
                done(AppError(ErrorCode.SERVER_ERROR, "the edit could not be stored", {}))
                self.reset(applied.document, str(future.exception()))
                return
            done(applied)
            self.publish(applied, author, message, sender, peers)
            self.metrics.edit_latency.observe(time.perf_counter() - started)

        durable.add_done_callback(stored)
        return crossed

    async def _again(self, document: Document, revision: int, done: Done) -> None:
        """The original ack of an edit applied before: same revision, op, correction and content."""
        try:
            original = await self.documents.original(document, revision)
        except Exception as exc:  # the store cannot say: the client may resend later
            log.error("resent edit at revision %d of %s: %s", revision, document.document_id, exc)
            done(AppError(ErrorCode.SERVER_ERROR, "the edit was applied, but its ack could not be read; resend", {}))
            return
        correction = original["correction"]
        done(Applied(document, revision, TextOperation.from_json(original["op"]),
                     TextOperation.from_json(correction) if correction is not None else None, (), original["content"]))

    def _noop(self, document: Document, done: Done) -> None:
        """An edit that changes nothing (a client's buffered op that cancelled out): acknowledged at the
        current revision, once what came before it is durable, without storing or publishing anything."""
        noop = Applied(document, document.revision, TextOperation().retain(len(document.content)), None, (),
                       document.content)
        self.documents.store.flush().add_done_callback(lambda _: done(noop))

    async def restore(self, document_id: str, revision: int, author: Author) -> Applied:
        """Write an old revision's content as a new revision, durable and published to every editor."""
        applied, durable = await self.documents.restore(document_id, revision, author)
        try:
            await durable
        except Exception as exc:  # the same recovery as a failed edit: editors reload what is durable
            self.reset(applied.document, str(exc))
            raise AppError(ErrorCode.SERVER_ERROR, "the restore could not be stored; the document was reloaded",
                           {"document_id": document_id}) from exc
        self.publish(applied, author, None, None)
        if not self.hub.members(document_id):
            self.documents.release(document_id)
        return applied

    def publish(self, applied: Applied, author: Author, message: dict | None, exclude: Peer | None,
                peers: list[Peer] | None = None) -> None:
        """The realtime_edit every other editor receives, serialized once per mode: with the authoritative
        content for reference clients, with the op and the document's length for lean ones."""
        receivers = self.hub.receivers(applied.document.document_id, exclude, peers)
        if not receivers:
            return  # an editor alone on its document: nothing to build
        payload = message["payload"] if message else {}
        body = {"cursor_position": payload.get("cursor_position"), "user_id": author.user_id,
                "operation": payload.get("operation", "edit"), "op": applied.op.to_json(),
                "revision": applied.revision, "base_revision": applied.revision - 1}
        stamp = iso(self.clock())
        id_ = f"{message['id']}-broadcast" if message else None
        session_info = {"user_id": author.user_id, "peer_id": author.peer_id, "timestamp": stamp}
        texts = {}
        for lean in {peer.lean for peer in receivers}:
            mode = {"length": len(applied.content)} if lean else {
                "content": applied.content, "change_delta": to_delta(applied.op)}
            texts[lean] = P.dumps(P.build(P.REALTIME_EDIT, {**body, **mode}, stamp, id_, session_info=session_info))
        n = self.hub.publish_modes(receivers, texts)
        self.metrics.messages_out.labels(P.REALTIME_EDIT).inc(n)

    def reset(self, document: Document, why: str) -> None:
        """A write of this document failed: drop the in-memory copy (it is ahead of the database) and
        close every socket on it with 4500, so its editors reconnect to what is durable."""
        if not self.documents.discard(document):
            return  # discarded already, its sockets closed then
        self.audit.event("document", "document_reset", "high", {"why": why[:300], "revision": document.revision},
                         document_id=document.document_id)
        self.hub.close_document(document, CLOSE_SERVER_ERROR, "server_error")
