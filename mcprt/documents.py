"""Document state and revisions: edits transformed over what landed since their base, sanitized, stored, snapshotted."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Callable

from . import sanitize
from .clock import iso
from .ot import OpError, TextOperation, diff, extent, from_delta, span, transform_cursor, widened
from .text import CHUNK, Text
from .protocol import AppError, ErrorCode
from .ratelimit import KeyedWindows, seconds
from .storage.base import (Store, Write, document_chain, document_deleted, document_written, op_written, piece_digest,
                           snapshot_in_pieces, snapshot_written)

# "." and ".." are refused: an id ends up in URLs and paths, where they mean something else.
DOCUMENT_ID = re.compile(r"^(?!\.{1,2}$)[A-Za-z0-9._-]{1,128}$")
FORMATS = ("html", "text")
# A snapshot waits until the ops since the last one add up to 1/SNAPSHOT_OP_SHARE of the content: snapshot
# bytes stay within SNAPSHOT_OP_SHARE times op bytes, however large the document, and a read replays at
# most max_bytes / SNAPSHOT_OP_SHARE bytes of ops (composed, then applied once). 8 (it was 16): on a 1 MB
# document a 1 MB snapshot and its checkpoint every ~250 edits held 100 edits in flight to 0.65-0.75 of
# their rate on 1 KB (0.93 at 8); a 900 KB document loads in 100 ms instead of 65 (tests/snapshot_cost.py).
SNAPSHOT_OP_SHARE = 8
# A snapshot of this many code points or more is stored as the content's pieces (Text.chunks), each piece
# once per document: a later snapshot writes the pieces that changed since, not the whole content (on a
# 1 MB document, 1 MB per snapshot and its checkpoint held 100 edits in flight to 0.77 of their rate on 1 KB).
PIECED_FROM = 4 * CHUNK
_REPLAY_IN_THREAD = 256  # ops: a longer replay runs off the event loop (tens of ms on a large document)


@dataclass
class Document:
    """One open document: its content at `revision` and the recent ops that led there."""

    document_id: str
    format: str
    text: Text  # the content (see mcprt/text.py); `content` is it as a string
    revision: int
    history: list[TextOperation] = field(default_factory=list)  # ops for revisions (revision-len+1 .. revision]
    broken: bool = False  # a write failed: this copy is ahead of the database and takes no more edits
    snapshot_revision: int = 0  # the newest stored snapshot
    op_bytes: int = 0           # stored op JSON since that snapshot
    authors: list[tuple] = field(default_factory=list)  # (peer_id, message_id) of each op in history
    # Exactly once: peer id -> {message id -> revision} of every edit of that peer here, read from the
    # store when the peer joins (`known`), kept as it edits.
    edits: dict[str, dict[str, int]] = field(default_factory=dict)
    known: set = field(default_factory=set)
    queue: object = None  # an asyncio.Future while an edit is being cleaned: later edits wait behind it
    fresh: bool = False  # just created by this process, its document_created event not yet recorded
    # The pieces of this copy's last snapshot stored in pieces: id(piece) -> (piece, digest). The next
    # writes only the pieces not among them; a new copy (a load, a take-over) starts with none.
    pieces: dict[int, tuple[str, str]] = field(default_factory=dict)

    @property
    def content(self) -> str:
        """The content as one string (made once per revision, when first read)."""
        return str(self.text)

    @content.setter
    def content(self, value: str | Text) -> None:
        self.text = value if isinstance(value, Text) else Text.of(value)

    @property
    def oldest_known(self) -> int:
        """The earliest base revision an edit may name and still be transformed here."""
        return self.revision - len(self.history)

    def ops_since(self, base: int) -> list[TextOperation]:
        """The ops that landed after revision `base` (base >= oldest_known)."""
        return self.history[len(self.history) - (self.revision - base):] if base < self.revision else []

    def state(self) -> dict:
        """The document_state payload fields (participants are added by the caller)."""
        return {"document_id": self.document_id, "format": self.format, "content": self.content,
                "revision": self.revision}


@dataclass(frozen=True)
class Author:
    """Who made an edit, as stamped by the server."""

    user_id: str
    peer_id: str
    session_id: str | None = None
    groups: tuple = ()  # the session's groups (--jwt-groups-claim), for per-document roles
    grants: tuple | None = None  # the session's token grants (--jwt-roles-claim)


@dataclass(slots=True)  # made once per edit and only read (see edits.Reply)
class Staged:
    """An edit transformed and applied to a copy of the content, not yet the document's."""

    op: TextOperation
    content: str | Text               # a Text for text documents, a string for markup
    correction: TextOperation | None  # CRs made LF
    needs_clean: bool                 # markup that sanitizing must see (not plain typing in a text node)
    span: tuple[int, int] | None = None  # of content, what sanitizing must see of it (None: all)


@dataclass(slots=True)  # made once per edit and only read (see edits.Reply)
class Applied:
    """The result of one accepted edit."""

    document: Document
    revision: int
    op: TextOperation              # what the document actually went through (transformed, then corrected)
    correction: TextOperation | None  # what sanitizing added after the sender's (transformed) op
    removed: tuple[str, ...]       # dangerous things sanitizing removed
    content: str | None            # the document at this revision; None once no reader needs it (lean mode)
    length: int                    # of content
    again: bool = False            # the original ack of an edit applied before (a resend), not a new revision
    op_json: str | None = None     # op as stored (JSON text), so an ack need not encode it again


def _utf8_length(content: str | Text) -> int:
    return content.utf8_length() if isinstance(content, Text) else len(content.encode("utf-8"))


class DocumentQuota:
    """How many documents there may be, and how fast one user, session or address may add to them."""

    def __init__(self, max_documents: int, per_hour: int):
        self.max_documents = max_documents
        self.creates = KeyedWindows(3600.0, per_hour)
        self.count: int | None = None  # documents stored, read once, then counted here

    def admit(self, creator: tuple[str, ...], now: float) -> None:
        """Count one creation by `creator` (its keys, e.g. user:…, session:…, addr:…), or RATE_LIMITED."""
        if self.count is not None and self.count >= self.max_documents:
            # Room comes only when someone deletes a document: ask again in an hour, as for the hourly quota.
            raise AppError(ErrorCode.RATE_LIMITED, f"the server holds its maximum of {self.max_documents} documents",
                           {"quota": "max_documents", "limit": self.max_documents, "retry_after": 3600})
        if creator and not self.creates.allow_all(creator, now):
            raise AppError(ErrorCode.RATE_LIMITED, f"at most {self.creates.limit} new documents an hour; "
                           "use an existing one or wait", {"quota": "document_create_limit",
                                                           "limit": self.creates.limit,
                                                           "retry_after": seconds(self.creates.wait(creator, now))})

    def prune(self, now: float) -> None:
        """Forget creators with no creation in the last hour."""
        self.creates.prune(now)


def creator(author: Author, addr: str | None) -> tuple[str, ...]:
    """The keys a creation counts against: the user, the session (by its public peer id), the address."""
    return (f"user:{author.user_id}", f"session:{author.peer_id}", f"addr:{addr or '-'}")


def replay_values(content: str, values: list[list]) -> str:
    """`content` with stored ops (decoded, oldest first) applied."""
    return replay(content, [TextOperation.from_json(o) for o in values])


def replay(content: str, ops: list[TextOperation]) -> str:
    """`content` with `ops` applied in order. They are composed pairwise first (a balanced tree: the work
    follows the ops' sizes, not their number times the document's length), then applied once."""
    while len(ops) > 1:
        ops = [ops[i].compose(ops[i + 1]) if i + 1 < len(ops) else ops[i] for i in range(0, len(ops), 2)]
    return ops[0].apply(content) if ops else content


async def replay_stored(store: Store, document_id: str, revision: int | None) -> tuple[str, int, int, int]:
    """(content, revision, snapshot revision, op bytes since it) of a stored document at `revision`, or the
    newest: its latest snapshot up to there and the ops after it."""
    snapshot = await store.latest_snapshot(document_id, revision)
    content, at = (snapshot.content, snapshot.revision) if snapshot else ("", 0)
    rows = await store.op_values(document_id, at, revision)
    values = [value for _, value, _ in rows]
    if len(values) > _REPLAY_IN_THREAD:
        content = await asyncio.to_thread(replay_values, content, values)
    else:
        content = replay_values(content, values)
    return content, rows[-1][0] if rows else at, at, sum(size for _, _, size in rows)


class _Text(HTMLParser):
    BLOCKS = {"p", "div", "li", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "br", "tr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in self.BLOCKS and self.parts and not self.parts[-1].endswith("\n"):
            self.parts.append("\n")

    def handle_data(self, data):
        self.parts.append(data)


def text_of(markup: str) -> str:
    """The text of (sanitized) HTML, a line per block."""
    parser = _Text()
    parser.feed(markup)
    parser.close()
    return "".join(parser.parts).strip("\n") + "\n"


def check_document_id(document_id: str) -> str:
    """The id itself, or INVALID_MESSAGE."""
    if not isinstance(document_id, str) or not DOCUMENT_ID.match(document_id):
        raise AppError(ErrorCode.INVALID_MESSAGE, "document_id must be 1-128 characters of A-Z a-z 0-9 . _ - (not . or ..)",
                       {"pointer": "document_id"})
    return document_id


def _has_cr(op: TextOperation) -> bool:
    """An insert of op holds a CR."""
    for c in op.ops:
        if c.__class__ is str and "\r" in c:
            return True
    return False


class DocumentService:
    """Loads documents into memory while someone edits them, applies edits, and answers history queries."""

    def __init__(self, store: Store, clock: Callable[[], float], engine: str, max_bytes: int, snapshot_every: int,
                 history_window: int = 1000, quota: DocumentQuota | None = None):
        self.store, self.clock, self.history_window = store, clock, history_window
        self.quota = quota or DocumentQuota(10**12, 10**12)
        self.engine, self.max_bytes, self.snapshot_every = engine, max_bytes, snapshot_every
        self._open: dict[str, Document] = {}
        self._loading: dict[str, asyncio.Future] = {}

    @property
    def open_count(self) -> int:
        return len(self._open)

    async def open(self, document_id: str, format_: str = "html", creator: tuple[str, ...] = (),
                   owner=None) -> Document:
        """The live document, loaded from SQLite (created as `format_` by `creator`, within the quota, if
        new) on first use."""
        if document_id in self._open:
            return self._open[document_id]
        if document_id in self._loading:
            return await asyncio.shield(self._loading[document_id])
        future = asyncio.get_running_loop().create_future()
        self._loading[document_id] = future
        try:
            document = await self._load(document_id) or await self._create(document_id, format_, creator, owner)
            self._open[document_id] = document
            future.set_result(document)
            return document
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # consumed here; waiters get it through shield
            raise
        finally:
            del self._loading[document_id]

    def get_open(self, document_id: str) -> Document | None:
        """The in-memory copy, if the document is open here."""
        return self._open.get(document_id)

    def loaded(self, document_id: str) -> bool:
        """The document is in memory (so it exists)."""
        return document_id in self._open

    def release(self, document_id: str) -> None:
        """Free a document nobody is editing (it stays in SQLite)."""
        self._open.pop(document_id, None)

    def discard(self, document: Document) -> bool:
        """After a failed write: drop this in-memory copy, which is ahead of the database, so the next
        open reloads what is durable. Edits already queued behind the failure fail too (no gaps).
        False when it was discarded already."""
        if document.broken:
            return False
        document.broken = True
        if self._open.get(document.document_id) is document:
            del self._open[document.document_id]
        self.store.reset_chain(document_chain(document.document_id))
        return True

    async def delete(self, document_id: str) -> Document | None:
        """Delete a document with its history (NOT_FOUND if there is none): the copy in memory, if any, is
        discarded (its sockets are the caller's to close) and returned."""
        if await self.store.get_document(document_id) is None:
            raise AppError(ErrorCode.NOT_FOUND, f"no document {document_id!r}", {"document_id": document_id})
        await self.flush()
        document = self._open.get(document_id)
        if document is not None:
            self.discard(document)
        await self.store.submit(*document_deleted(document_id))
        self.store.reset_chain(document_chain(document_id))
        if self.quota.count is not None:
            self.quota.count -= 1
        return document

    async def create(self, document_id: str, format_: str, creator: tuple[str, ...] = (), owner=None) -> Document:
        """A new document, or CONFLICT if the id is taken (RATE_LIMITED past the quota)."""
        if document_id in self._open or await self.store.get_document(document_id):
            raise AppError(ErrorCode.CONFLICT, f"document {document_id!r} already exists",
                           {"document_id": document_id})
        return await self._create(document_id, format_, creator, owner)

    async def _create(self, document_id: str, format_: str, creator: tuple[str, ...], owner=None) -> Document:
        """`owner`: a write that makes the creator the document's owner, committed with it (see Access)."""
        if self.quota.count is None:
            self.quota.count = await self.store.count_documents()
        self.quota.admit(creator, self.clock())
        self.quota.count += 1  # a concurrent create of the same id counts twice: the cap errs low
        now = self.clock()
        await self.store.submit(document_written(document_id, format_, now), snapshot_written(document_id, 0, "", now),
                                *((owner,) if owner is not None else ()))
        row = await self.store.get_document(document_id)
        if row.format != format_:  # created concurrently by someone else: theirs stands
            return await self._load(document_id)
        return Document(document_id, format_, Text.of(""), 0, fresh=True)

    async def _load(self, document_id: str) -> Document | None:
        row = await self.store.get_document(document_id)
        if row is None:
            return None
        content, revision, snapshot_revision, op_bytes = await self._replay(document_id, None)
        document = Document(document_id, row.format, Text.of(content), revision, snapshot_revision=snapshot_revision,
                            op_bytes=op_bytes)
        recent = await self.store.ops(document_id, max(0, revision - self.history_window), revision)
        document.history = [TextOperation.from_json(r.op) for r in recent]
        document.authors = [(r.peer_id, r.message_id) for r in recent]
        return document

    async def _content_at(self, document_id: str, revision: int | None) -> tuple[str, int]:
        content, at, _, _ = await self._replay(document_id, revision)
        return content, at

    async def _replay(self, document_id: str, revision: int | None) -> tuple[str, int, int, int]:
        return await replay_stored(self.store, document_id, revision)

    async def read(self, document_id: str, revision: int | None = None) -> dict:
        """{document_id, format, content, revision}: now, or as it was at `revision`."""
        document = self._open.get(document_id)
        if document is not None and revision in (None, document.revision):
            return document.state()
        row = await self.store.get_document(document_id)
        if row is None:
            raise AppError(ErrorCode.NOT_FOUND, f"no document {document_id!r}", {"document_id": document_id})
        latest = document.revision if document else await self.store.last_revision(document_id)
        if revision is not None and revision > latest:
            raise AppError(ErrorCode.NOT_FOUND, f"document {document_id!r} has no revision {revision} "
                           f"(latest is {latest})", {"document_id": document_id, "latest": latest})
        content, at = await self._content_at(document_id, revision)
        return {"document_id": document_id, "format": row.format, "content": content, "revision": at}

    async def history(self, document_id: str, since: int, limit: int) -> list[dict]:
        """Stored ops after revision `since`, oldest first."""
        if await self.store.get_document(document_id) is None:
            raise AppError(ErrorCode.NOT_FOUND, f"no document {document_id!r}", {"document_id": document_id})
        rows = await self.store.ops(document_id, since, None, limit)
        return [{"revision": r.revision, "op": r.op, "user_id": r.user_id, "peer_id": r.peer_id,
                 "message_id": r.message_id, "time": iso(r.time)} for r in rows]

    def ops_since(self, document: Document, since: int) -> list[dict] | None:
        """Ops after `since` as {revision, op, peer_id, message_id} (a client recognizes its own), or None
        when `since` is older than memory holds."""
        if since < document.oldest_known or since > document.revision:
            return None
        first, ops = since + 1, document.ops_since(since)
        authors = document.authors[len(document.authors) - len(ops):] if ops else []
        return [{"revision": first + i, "op": op.to_json(), "peer_id": peer, "message_id": message}
                for i, (op, (peer, message)) in enumerate(zip(ops, authors))]

    # -- exactly once ------------------------------------------------------

    async def know(self, document: Document, peer_id: str) -> None:
        """Read which edits a peer already made on a document (once per open copy), so that a resent
        edit is recognized however long ago, or on whichever connection, it was first sent."""
        if peer_id in document.known:
            return
        stored = await self.store.message_revisions(document.document_id, peer_id)
        if peer_id not in document.known:
            mine = document.edits.setdefault(peer_id, {})
            for message_id, revision in stored.items():
                mine.setdefault(message_id, revision)
            document.known.add(peer_id)

    def applied_as(self, document: Document, peer_id: str, message_id: str) -> int | None:
        """The revision an edit with this peer and message id became, if it was applied already."""
        return document.edits.get(peer_id, {}).get(message_id)

    async def original(self, document: Document, revision: int) -> dict:
        """{op, correction, content} of an applied edit, as its ack gave them, once it is durable."""
        await self.store.barrier()
        row = await self.store.op_at(document.document_id, revision)
        content = (await self.read(document.document_id, revision))["content"]
        return {"op": row.op, "correction": row.correction,
                "content": content}

    # -- edits -----------------------------------------------------------

    def check_base(self, document: Document, base: int) -> int:
        """The base revision itself, or the error a client must see (ahead: INVALID_MESSAGE, too old: CONFLICT)."""
        if base > document.revision:
            raise AppError(ErrorCode.INVALID_MESSAGE, f"base_revision {base} is ahead of the document "
                           f"(revision {document.revision})", {"pointer": "/payload/base_revision",
                                                               "revision": document.revision})
        if base < document.oldest_known:
            raise AppError(ErrorCode.CONFLICT, f"base_revision {base} is too old to transform; send sync_request",
                           {"oldest": document.oldest_known, "revision": document.revision})
        return base

    async def base_content(self, document: Document, base: int) -> str:
        """The content at an earlier revision, for a content-only edit made against it."""
        self.check_base(document, base)
        return (await self._content_at(document.document_id, base))[0]

    def base_op(self, document: Document, payload: dict, base_content: str | None) -> tuple[TextOperation, int]:
        """The sender's op against its base revision, from change_delta or (content-only) a diff."""
        base = self.check_base(document, payload.get("base_revision", document.revision))
        landed = document.ops_since(base)
        length = landed[0].base_length if landed else len(document.text)  # the document at `base`
        try:
            if "change_delta" in payload:
                op = from_delta(self._clean_inserts(payload["change_delta"], document.format), length)
            else:
                op = diff(document.content if base_content is None else base_content,
                          self._check(payload["content"], document.format))
        except OpError as exc:
            raise AppError(ErrorCode.INVALID_MESSAGE, f"change_delta does not fit revision {base}: {exc}",
                           {"pointer": "/payload/change_delta", "length": length, "base_revision": base,
                            "race": "base_revision" not in payload}) from None
        return op, base

    def rebase_positions(self, document: Document, positions: list[int], base: int | None) -> list[int]:
        """Positions a client gave against revision `base`, moved through what landed since."""
        base = self.check_base(document, document.revision if base is None else base)
        landed = document.ops_since(base)
        length = landed[0].base_length if landed else len(document.text)
        if any(p > length for p in positions):
            raise AppError(ErrorCode.INVALID_MESSAGE, f"cursor beyond the end of revision {base} ({length})",
                           {"pointer": "/payload/position", "length": length})
        for op in landed:
            positions = [transform_cursor(p, op) for p in positions]
        return positions

    def _clean_inserts(self, delta, format_: str):
        """The delta as sent, once each inserted text passed _check."""
        for part in delta if isinstance(delta, list) else (delta,):
            if "insert" in part:
                self._check(part["insert"], format_)
        return delta

    @staticmethod
    def _check(text: str, format_: str) -> str:
        """The inserted text as sent, once it holds no refused character. A CR stays: apply() turns it
        into LF after forming the op, so that the sender is told in `correction`."""
        try:
            (sanitize.check_text if format_ == "text" else sanitize.normalize)(text.replace("\r", ""))
        except sanitize.UnsafeText as exc:
            raise AppError(ErrorCode.INVALID_MESSAGE, str(exc), {"pointer": "/payload"}) from None
        return text

    def stage(self, document: Document, op: TextOperation, base: int) -> Staged:
        """An edit transformed over what landed since its base and applied to a copy of the content, CRs
        made LF; nothing of the document changes yet (commit does that)."""
        self._check_live(document)
        self.check_base(document, base)
        for landed in document.ops_since(base):
            op, _ = TextOperation.transform(op, landed)
        # A text document's edit copies only the chunks it touches; markup is sanitized as one string.
        content = document.text.apply(op) if document.format == "text" else op.apply(document.content)
        correction = None
        if _has_cr(op):  # stored content never holds a CR
            normalized = sanitize.normalize(str(content))
            correction, content = diff(str(content), normalized), normalized
        if document.format != "html" or self._inert(document.content, op):
            return Staged(op, content, correction, False)
        return Staged(op, content, correction, True, None if correction else self._span(document.content, op))

    def commit(self, document: Document, staged: Staged, cleaned: sanitize.Cleaned | None, author: Author,
               message_id: str | None, keep_content: bool = True) -> tuple[Applied, asyncio.Future]:
        """Take a staged edit (and what sanitizing made of it) as the next revision; the future resolves
        once it is durable. The result holds the new content only with `keep_content`."""
        self._check_live(document)  # a storage error may have discarded this copy while it was cleaned
        op, content, correction, removed = staged.op, staged.content, staged.correction, ()
        if cleaned is not None:
            removed = cleaned.removed
            start, end = cleaned.span or (0, len(content))
            if cleaned.html != content[start:end]:
                more = widened(diff(content[start:end], cleaned.html), start, len(content) - end)
                correction = correction.compose(more) if correction is not None else more
                content = content[:start] + cleaned.html + content[end:]
        # A code point is 1-4 bytes: encode only when the length alone cannot decide (isascii() is a flag
        # read, not a scan).
        if len(content) > self.max_bytes or (4 * len(content) > self.max_bytes and not content.isascii()
                                             and _utf8_length(content) > self.max_bytes):
            raise AppError(ErrorCode.MESSAGE_TOO_LARGE, f"the document would exceed {self.max_bytes} bytes",
                           {"limit": self.max_bytes})
        full = op.compose(correction) if correction is not None else op
        document.content = content
        document.revision += 1
        document.history.append(full)
        document.authors.append((author.peer_id, message_id))
        if len(document.history) > self.history_window:
            del document.history[: len(document.history) - self.history_window]
            del document.authors[: len(document.authors) - self.history_window]
        if message_id is not None:
            document.edits.setdefault(author.peer_id, {})[message_id] = document.revision
        durable, op_json = self._persist(document, full, author, message_id, correction)
        return Applied(document, document.revision, full, correction, tuple(removed),
                       str(content) if keep_content else None, len(content), op_json=op_json), durable

    def follow(self, document: Document, revision: int, op: TextOperation, peer_id: str | None,
               message_id: str | None) -> None:
        """Take revision `revision`, committed by the document's owner on another node, into this copy
        (one that follows: it stores nothing)."""
        if revision != document.revision + 1:
            raise ValueError(f"revision {revision} does not follow {document.revision}")
        document.content = document.text.apply(op) if document.format == "text" else op.apply(document.content)
        document.revision = revision
        document.history.append(op)
        document.authors.append((peer_id, message_id))
        if len(document.history) > self.history_window:
            del document.history[: len(document.history) - self.history_window]
            del document.authors[: len(document.authors) - self.history_window]
        if message_id is not None and peer_id is not None:
            document.edits.setdefault(peer_id, {})[message_id] = revision

    async def catch_up(self, document: Document) -> list:
        """The stored ops past this copy's revision (what an owner committed that this copy missed),
        oldest first, as OpRecords."""
        return await self.store.ops(document.document_id, document.revision)

    async def take_over(self, document: Document) -> None:
        """This copy becomes the one that commits: its snapshot bookkeeping read from the store."""
        snapshot = await self.store.latest_snapshot(document.document_id)
        document.snapshot_revision = snapshot.revision if snapshot else 0
        document.op_bytes = sum(size for _, _, size in await self.store.op_values(
            document.document_id, document.snapshot_revision))

    def apply(self, document: Document, op: TextOperation, base: int, author: Author,
              message_id: str | None) -> tuple[Applied, asyncio.Future]:
        """Stage, sanitize here, and commit at once (the in-process way; the edit pipeline cleans markup
        in the Cleaner's worker instead)."""
        staged = self.stage(document, op, base)
        return self.commit(document, staged, self._clean(staged) if staged.needs_clean else None, author, message_id)

    @staticmethod
    def _check_live(document: Document) -> None:
        if document.broken:
            raise AppError(ErrorCode.SERVER_ERROR, "the document is being reloaded after a storage error; "
                           "reconnect", {"document_id": document.document_id})

    def _clean(self, staged: Staged) -> sanitize.Cleaned:
        """clean_edit, or INVALID_MESSAGE for markup it refuses (too deep): the document stays as it was."""
        try:
            return sanitize.clean_edit(staged.content, staged.span, self.engine)
        except sanitize.UnsafeText as exc:
            raise AppError(ErrorCode.INVALID_MESSAGE, str(exc), {"pointer": "/payload",
                           "max_depth": sanitize.MAX_DEPTH}) from None

    def _inert(self, before: str, op: TextOperation) -> bool:
        edit = span(op)
        return edit is not None and sanitize.edit_is_inert(before, *edit)

    @staticmethod
    def _span(before: str, op: TextOperation) -> tuple[int, int] | None:
        """The top-level span of the edited content that holds what op changed (see sanitize.clean_part)."""
        changed = extent(op)
        found = changed and sanitize.top_level_span(before, *changed)
        if not found:
            return None
        return found[0], found[1] + op.target_length - op.base_length

    def _persist(self, document: Document, op: TextOperation, author: Author, message_id: str | None,
                 correction: TextOperation | None) -> tuple[asyncio.Future, str]:
        """Queue the op's row (and a snapshot when due): the future of its commit, and the op's JSON."""
        now = self.clock()
        op_json = op.json()
        durable = self.store.submit(op_written(document.document_id, document.revision, op_json, author.user_id,
                                               author.peer_id, message_id, now,
                                               correction.json() if correction is not None else None))
        document.op_bytes += len(op_json)
        if (document.revision - document.snapshot_revision >= self.snapshot_every
                and SNAPSHOT_OP_SHARE * document.op_bytes >= len(document.text)):
            self.store.enqueue(*self._snapshot(document, now))
            document.snapshot_revision, document.op_bytes = document.revision, 0
        return durable, op_json

    @staticmethod
    def _snapshot(document: Document, now: float) -> tuple[Write, ...]:
        """The writes of a snapshot of the document as it is: its content in one row, or from PIECED_FROM
        code points on, its pieces, writing only those its last snapshot did not store (a piece that
        did not change is the same string object, its digest known)."""
        if len(document.text) < PIECED_FROM:
            return (snapshot_written(document.document_id, document.revision, document.content, now),)
        last, pieces, digests, new = document.pieces, {}, [], {}
        stored = {digest for _, digest in last.values()}
        for piece in document.text.chunks():
            known = last.get(id(piece))
            digest = known[1] if known is not None and known[0] is piece else piece_digest(piece)
            pieces[id(piece)] = (piece, digest)
            digests.append(digest)
            if digest not in stored:
                new[digest] = piece
        document.pieces = pieces
        return snapshot_in_pieces(document.document_id, document.revision, digests, new, now)

    async def restore_op(self, document_id: str, revision: int) -> tuple[Document, TextOperation]:
        """The open document and the op that writes an old revision's content over its current one."""
        old = await self.read(document_id, revision)
        document = await self.open(document_id)
        return document, diff(document.content, old["content"])

    async def flush(self) -> None:
        """Wait until every applied edit is durable (or could not be stored: each edit reports its own)."""
        try:
            await self.store.barrier()
        except Exception:
            pass
