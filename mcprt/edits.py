"""The edit pipeline, for the socket and REST alike: the sender's op against its base, applied, audited,
made durable, then acknowledged and published; a failed write resets the document; restore."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable

from . import protocol as P
from .audit import Audit
from .cleaner import Cleaner
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


# Reply, _Job and documents.Staged are made once per edit and only read: not frozen, whose __init__ sets each
# field through object.__setattr__ (2.1 against 0.5 us for seven fields here).
@dataclass(slots=True)
class Reply:
    """How the pipeline answers whoever sent an edit."""

    done: Done                                # durable (an Applied) or not stored (an AppError)
    refused: Callable[[AppError], None]       # refused after it was queued (nothing changed)
    abusive: Callable[[], None]               # the sender's xss attempts crossed the threshold


@dataclass(slots=True)
class _Job:
    message: dict
    author: Author
    sender: Peer | None
    where: Callable[[], dict]  # the who/where fields of an event, built only if one is recorded
    reply: Reply
    started: float
    origin: tuple | None = None  # (node, connection id) of an edit forwarded by another node


class EditService:
    """Applies edits in the order they arrive and tells the sender, then everyone else, once durable."""

    def __init__(self, documents: DocumentService, hub: Hub, audit: Audit, clock: Callable[[], float], metrics,
                 tasks: Tasks, cleaner: Cleaner):
        self.documents, self.hub, self.audit, self.clock, self.metrics = documents, hub, audit, clock, metrics
        self.tasks, self.cleaner = tasks, cleaner
        # Cluster mode: told of every durable revision (applied, author, message, origin) and of every reset.
        self.on_published: Callable | None = None
        self.on_reset: list[Callable[[Document], None]] = []

    def needs_base(self, document: Document, payload: dict) -> bool:
        """True for a content-only edit made against an older revision: its base content must be read
        from the store first (base_content), before submit."""
        return "change_delta" not in payload and payload.get("base_revision", document.revision) != document.revision

    async def base_content(self, document: Document, payload: dict) -> str:
        """The content at the edit's base revision."""
        return await self.documents.base_content(document, payload["base_revision"])

    def submit(self, document: Document, message: dict, author: Author, sender: Peer | None,
               where: Callable[[], dict], reply: Reply, base_content: str | None = None,
               origin: tuple | None = None) -> None:
        """Take an edit in arrival order: `reply.done` once it is durable (then it is published to everyone
        on the document but `sender`, as they were when it was applied) or could not be stored (then the
        document is reset); `reply.refused` if it is refused later, while queued behind markup being
        cleaned (refused at once, AppError is raised); `reply.abusive` when the sender's xss attempts
        cross the violation threshold. Plain typing is applied here and now; markup is cleaned in the
        Cleaner's worker, and the document's later edits wait behind it."""
        job = _Job(message, author, sender, where, reply, time.perf_counter(), origin)
        revision = self.documents.applied_as(document, author.peer_id, message["id"])
        if revision is not None:  # resent (a lost ack, a reconnect, a restart): answered, never applied twice
            self.tasks.spawn(self._again(document, revision, reply.done), "answer a resent edit")
            return
        if message["payload"].get("change_delta") == []:
            self._noop(document, reply.done)
            return
        op, base = self.documents.base_op(document, message["payload"], base_content)
        if document.queue is None:
            staged = self.documents.stage(document, op, base)
            if not staged.needs_clean:
                self._commit(document, staged, None, job)
                return
            self._enqueue(document, self._clean_and_commit(document, staged, job))
            return
        self._enqueue(document, self._later(document, op, base, job))

    def _enqueue(self, document: Document, work) -> None:
        """Run `work` after the document's queued edits; edits arriving meanwhile wait behind it."""
        previous, turn = document.queue, asyncio.get_running_loop().create_future()
        document.queue = turn

        async def run() -> None:
            try:
                if previous is not None:
                    await previous
                await work
            finally:
                turn.set_result(None)
                if document.queue is turn:
                    document.queue = None

        self.tasks.spawn(run(), f"an edit of {document.document_id}")

    async def _later(self, document: Document, op: TextOperation, base: int, job: "_Job") -> None:
        try:
            staged = self.documents.stage(document, op, base)
        except AppError as exc:
            job.reply.refused(exc)
            return
        if staged.needs_clean:
            await self._clean_and_commit(document, staged, job)
        else:
            self._commit(document, staged, None, job, refusals=job.reply.refused)

    async def _clean_and_commit(self, document: Document, staged, job: "_Job") -> None:
        try:
            cleaned = await self.cleaner.clean(staged.content, staged.span)
        except AppError as exc:
            job.reply.refused(exc)
            return
        (self.metrics.cleaned_span if cleaned.span else self.metrics.cleaned_whole).inc()
        self._commit(document, staged, cleaned, job, refusals=job.reply.refused)

    def _commit(self, document: Document, staged, cleaned, job: "_Job", refusals=None) -> None:
        """Commit a staged edit and answer it once durable. A refusal (the document too large, say) is
        raised, or handed to `refusals` when nobody is there to catch it."""
        peers = self.hub.members(document.document_id)  # those present now get this revision; later joiners see it in state
        # A lean ack and a lean broadcast carry the length only: with nobody to read this revision's content,
        # the result does not hold it until the commit (100 edits in flight on a 1 MB document would hold
        # 100 MB, which keeps the allocator from reusing it).
        keep = not ((job.sender is None or job.sender.lean) and all(peer.lean for peer in peers))
        try:
            applied, durable = self.documents.commit(document, staged, cleaned, job.author, job.message["id"], keep)
        except AppError as exc:
            if refusals is None:
                raise
            refusals(exc)
            return
        if applied.removed and self.audit.security("xss_attempt", None, {
                "removed": [r[:200] for r in applied.removed[:20]], "revision": applied.revision}, **job.where()):
            job.reply.abusive()
        self.hub.shift_cursors(document.document_id, applied.op, job.sender)

        def stored(future: asyncio.Future) -> None:
            if future.exception() is not None:
                log.error("edit %s on %s not stored: %s", job.message["id"], document.document_id, future.exception())
                job.reply.done(AppError(ErrorCode.SERVER_ERROR, "the edit could not be stored", {}))
                self.reset(applied.document, str(future.exception()))
                return
            job.reply.done(applied)
            self.publish(applied, job.author, job.message, job.sender, peers)
            if self.on_published is not None:
                self.on_published(applied, job.author, job.message, job.origin)
            self.metrics.edit_latency.observe(time.perf_counter() - job.started)

        self.documents.store.then(durable, stored)

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
                     TextOperation.from_json(correction) if correction is not None else None, (), original["content"],
                     len(original["content"]), again=True))

    def _noop(self, document: Document, done: Done) -> None:
        """An edit that changes nothing (a client's buffered op that cancelled out): acknowledged at the
        current revision, once what came before it is durable, without storing or publishing anything."""
        noop = Applied(document, document.revision, TextOperation().retain(len(document.text)), None, (),
                       document.content, len(document.text))
        self.documents.store.barrier().add_done_callback(lambda _: done(noop))

    async def restore(self, document_id: str, revision: int, author: Author) -> Applied:
        """Write an old revision's content as a new revision, in turn with the document's edits (cleaned in
        the worker like one), durable and published to every editor."""
        document, op = await self.documents.restore_op(document_id, revision)
        outcome: asyncio.Future = asyncio.get_running_loop().create_future()

        def settle(result) -> None:
            if not outcome.done():
                outcome.set_result(result)

        message = {"id": None, "payload": {}}
        job = _Job(message, author, None, lambda: {"document_id": document_id}, Reply(settle, settle, lambda: None),
                   time.perf_counter())
        self._enqueue(document, self._later(document, op, document.revision, job))
        result = await outcome
        if isinstance(result, AppError):
            if result.code == ErrorCode.SERVER_ERROR:
                raise AppError(ErrorCode.SERVER_ERROR, "the restore could not be stored; the document was reloaded",
                               {"document_id": document_id})
            raise result
        if not self.hub.members(document_id):
            self.documents.release(document_id)
        return result

    def publish(self, applied: Applied, author: Author, message: dict | None, exclude: Peer | None,
                peers: list[Peer] | None = None) -> None:
        """The realtime_edit every other editor receives, serialized once per mode: with the authoritative
        content for reference clients, with the op and the document's length for lean ones."""
        receivers = self.hub.receivers(applied.document.document_id, exclude, peers)
        if not receivers:
            return  # an editor alone on its document: nothing to build
        payload = message["payload"] if message else {}
        stamp = iso(self.clock())
        id_ = f"{message['id']}-broadcast" if message and message.get("id") else P.new_id()
        op_json = applied.op_json or P.dumps(applied.op.to_json())
        texts = {}
        for lean in {peer.lean for peer in receivers}:
            texts[lean] = P.realtime_edit_text(
                id_, author.user_id, author.peer_id, payload.get("cursor_position"), payload.get("operation", "edit"),
                op_json, applied.revision, applied.length if lean else None, None if lean else applied.content,
                None if lean else P.dumps(to_delta(applied.op)), stamp)
        n = self.hub.publish_modes(receivers, texts)
        self.metrics.sent[P.REALTIME_EDIT].inc(n)

    def reset(self, document: Document, why: str) -> None:
        """A write of this document failed: drop the in-memory copy (it is ahead of the database) and
        close every socket on it with 4500, so its editors reconnect to what is durable."""
        if not self.documents.discard(document):
            return  # discarded already, its sockets closed then
        self.audit.event("document", "document_reset", "high", {"why": why[:300], "revision": document.revision},
                         document_id=document.document_id)
        self.hub.close_document(document, CLOSE_SERVER_ERROR, "server_error")
        for listener in list(self.on_reset):
            listener(document)
