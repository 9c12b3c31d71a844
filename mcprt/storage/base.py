"""The storage interface: typed records, write intents, and the Protocols the domain uses (no SQL here).

Times cross as epoch seconds (floats); each backend decides how to store them (SQLite: RFC 3339 text that
sorts, PostgreSQL: timestamptz). Ops cross decoded (the ot.js JSON form as Python lists). Writes are
intents (`Write`): the domain says what to store, the backend how; `submit(*writes)` commits writes
together, in one transaction, and resolves once they are durable.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol


# -- errors ----------------------------------------------------------------------------------------

class StoreError(Exception):
    """A storage failure the domain may see (a write not acknowledged)."""


class ChainBroken(StoreError):
    """A write not attempted: an earlier write of its chain failed (and the chain was not reset yet)."""


class StoreFailed(StoreError):
    """A write refused or not acknowledged: the store has failed (see `Store.failed`) or its writer broke."""


class StoreOpenError(RuntimeError):
    """The database cannot be opened: a directory, a missing folder, a file that is not SQLite, no server."""


class MigrationError(RuntimeError):
    """The database and this code disagree about the schema."""


def document_chain(document_id: str) -> str:
    """The chain of a document's ops and snapshots: they land without gaps (see `Write.chain`)."""
    return f"document:{document_id}"


@dataclass(frozen=True, slots=True)
class Readable:
    """What lets a caller read a document, as a listing filters it: a member entry among `members`, an
    id among `ids`, an id starting with one of `prefixes`, or (`unset`) no members at all."""
    members: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    unset: bool = False


# -- records -----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SessionRecord:
    session_id: str
    peer_id: str
    user_id: str
    client_info: str | None
    state: str
    created_at: float
    expires_at: float
    activated_at: float | None = None
    ended_at: float | None = None
    end_reason: str | None = None
    last_seen: float | None = None
    id: int | None = None  # assigned by the store: the keyset cursor of a listing
    groups: tuple[str, ...] = ()  # from the token that made the session (--jwt-groups-claim)
    # (pattern, role) pairs the token granted (--jwt-roles-claim); None: no roles claim is in use
    grants: tuple[tuple[str, str], ...] | None = None


@dataclass(frozen=True, slots=True)
class DocumentRecord:
    document_id: str
    format: str
    created_at: float


@dataclass(frozen=True, slots=True)
class OpRecord:
    """The op that took a document from revision - 1 to revision (and what sanitizing corrected after it)."""
    document_id: str
    revision: int
    op: list
    user_id: str | None
    peer_id: str | None
    message_id: str | None
    time: float
    correction: list | None = None


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    document_id: str
    revision: int
    content: str
    time: float


@dataclass(frozen=True, slots=True)
class EventRecord:
    time: float
    kind: str
    type: str
    severity: str = "info"
    details: dict = field(default_factory=dict)
    session_id: str | None = None
    user_id: str | None = None
    document_id: str | None = None
    connection_id: str | None = None
    client_addr: str | None = None
    user_agent: str | None = None
    id: int | None = None  # assigned by the store; grows with commit order within one writer


@dataclass(frozen=True, slots=True)
class ConnectionRecord:
    connection_id: str
    session_id: str
    user_id: str
    peer_id: str
    document_id: str
    client_type: str
    client_addr: str | None
    user_agent: str | None
    opened_at: float
    closed_at: float | None = None
    close_code: int | None = None
    close_reason: str | None = None
    messages_in: int = 0
    messages_out: int = 0


EVENT_WHERE = ("session_id", "user_id", "document_id", "connection_id", "client_addr", "user_agent")
EVENT_FILTERS = ("kind", "type", "severity", "session_id", "user_id", "document_id", "client_addr")


# -- write intents -------------------------------------------------------------------------------------

@dataclass(slots=True)
class Write:
    """One row to write. `kind` names what (the backend knows how); `values` are in the kind's order
    (see KINDS). Writes that share a `chain` (a document's ops, say) land without gaps: after one fails,
    the later ones fail too, without being tried, until the chain is reset. `counted`: the result is how
    many rows the write changed (a compare-and-set)."""
    kind: str
    values: tuple
    chain: str | None = None
    counted: bool = False
    result: int | None = None


# kind -> (its columns in order, the positions among them that are times). The backends hold the statements.
KINDS: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    "insert_session": (("session_id", "peer_id", "user_id", "client_info", "state", "created_at", "activated_at",
                        "expires_at", "ended_at", "end_reason", "last_seen", "member_groups", "token_roles"),
                       (5, 6, 7, 8, 10)),
    "update_session": (("state", "activated_at", "expires_at", "ended_at", "end_reason", "last_seen",
                        "member_groups", "token_roles", "session_id", "expected_state"), (1, 2, 3, 5)),
    "insert_event": (("time", "kind", "type", "severity", "session_id", "user_id", "document_id",
                      "connection_id", "client_addr", "user_agent", "details"), (0,)),
    "insert_connection": (("connection_id", "session_id", "user_id", "peer_id", "document_id", "client_type",
                           "client_addr", "user_agent", "opened_at"), (8,)),
    "close_connection": (("closed_at", "close_code", "close_reason", "messages_in", "messages_out",
                          "connection_id"), (0,)),
    "insert_document": (("document_id", "format", "created_at"), (2,)),
    "insert_op": (("document_id", "revision", "op", "user_id", "peer_id", "message_id", "time", "correction"), (6,)),
    "insert_snapshot": (("document_id", "revision", "content", "time", "pieces"), (3,)),
    "insert_snapshot_piece": (("document_id", "piece", "content"), ()),
    "prune_events": (("before", "limit"), (0,)),
    "cap_events": (("through_id",), ()),
    "health_probe": (("at",), (0,)),
    "touch_session": (("last_seen", "session_id"), (0,)),
    "delete_ops": (("document_id",), ()),
    "delete_snapshots": (("document_id",), ()),
    "delete_snapshot_pieces": (("document_id",), ()),
    "delete_members": (("document_id",), ()),
    "delete_document": (("document_id",), ()),
    "set_member": (("document_id", "member", "role"), ()),
    "claim_owner": (("document_id", "member", "unowned"), ()),
    "remove_member": (("document_id", "member"), ()),
}


def session_written(record: SessionRecord) -> Write:
    """A new session row."""
    r = record
    return Write("insert_session", (r.session_id, r.peer_id, r.user_id, r.client_info, r.state, r.created_at,
                                    r.activated_at, r.expires_at, r.ended_at, r.end_reason, r.last_seen,
                                    *_claims(r)))


def _claims(r: SessionRecord) -> tuple[str | None, str | None]:
    """A session's groups and grants as stored: JSON, or NULL for none."""
    return (json.dumps(list(r.groups)) if r.groups else None,
            None if r.grants is None else json.dumps(dict(r.grants), ensure_ascii=False))


def session_moved(record: SessionRecord, expected_state: str) -> Write:
    """A session's new state and times, if its stored state is still `expected_state` (compare-and-set:
    the result is 1 when the row changed, 0 when it had moved on)."""
    r = record
    return Write("update_session", (r.state, r.activated_at, r.expires_at, r.ended_at, r.end_reason, r.last_seen,
                                    *_claims(r), r.session_id, expected_state), counted=True)


def document_deleted(document_id: str) -> tuple[Write, ...]:
    """A document, its ops, snapshots and members gone (one unit: together or not at all); its events stay."""
    return tuple(Write(kind, (document_id,), document_chain(document_id))
                 for kind in ("delete_ops", "delete_snapshots", "delete_snapshot_pieces", "delete_members",
                              "delete_document"))


def session_touched(session_id: str, last_seen: float) -> Write:
    """A live session's last activity (written in batches by the sweeper; never moves a final row)."""
    return Write("touch_session", (last_seen, session_id))


def event_written(event: EventRecord) -> Write:
    e = event
    return Write("insert_event", (e.time, e.kind, e.type, e.severity, e.session_id, e.user_id, e.document_id,
                                  e.connection_id, e.client_addr, e.user_agent,
                                  json.dumps(e.details or {}, ensure_ascii=False, default=str)))


def connection_opened(c: ConnectionRecord) -> Write:
    return Write("insert_connection", (c.connection_id, c.session_id, c.user_id, c.peer_id, c.document_id,
                                       c.client_type, c.client_addr, c.user_agent, c.opened_at))


def connection_closed(connection_id: str, closed_at: float, code: int | None, reason: str,
                      messages_in: int, messages_out: int) -> Write:
    return Write("close_connection", (closed_at, code, reason, messages_in, messages_out, connection_id))


def document_written(document_id: str, format_: str, created_at: float) -> Write:
    """A document row (nothing when it exists)."""
    return Write("insert_document", (document_id, format_, created_at))


def op_written(document_id: str, revision: int, op_json: str, user_id: str | None, peer_id: str | None,
               message_id: str | None, time: float, correction_json: str | None = None) -> Write:
    """The op that produced `revision`, in its document's chain (the op as its JSON text: encoded once)."""
    return Write("insert_op", (document_id, revision, op_json, user_id, peer_id, message_id, time, correction_json),
                 chain=document_chain(document_id))


def snapshot_written(document_id: str, revision: int, content: str, time: float) -> Write:
    """The full content at `revision` (replacing one stored there), in its document's chain."""
    return Write("insert_snapshot", (document_id, revision, content, time, None), chain=document_chain(document_id))


def piece_digest(piece: str) -> str:
    """The name a snapshot piece is stored under: BLAKE2b-128 of its UTF-8, in hex."""
    return hashlib.blake2b(piece.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def snapshot_in_pieces(document_id: str, revision: int, digests: list[str], new: dict[str, str],
                       time: float) -> tuple[Write, ...]:
    """The content at `revision` as the pieces named by `digests`, in order: the pieces in `new` (digest:
    piece) that no earlier snapshot of the document stored, then the row naming them all (one unit: the
    row never lands without its pieces). A piece stored already is kept as it is."""
    chain = document_chain(document_id)
    return (*(Write("insert_snapshot_piece", (document_id, digest, piece), chain=chain)
              for digest, piece in new.items()),
            Write("insert_snapshot", (document_id, revision, "", time, json.dumps(digests)), chain=chain))


def member_set(document_id: str, member: str, role: str) -> Write:
    """A member's role on a document (replacing the one it had)."""
    return Write("set_member", (document_id, member, role))


def owner_claimed(document_id: str, member: str) -> Write:
    """`member` becomes the owner of a document that has no members yet (its creator, racing nobody)."""
    return Write("claim_owner", (document_id, member, document_id))


def member_removed(document_id: str, member: str) -> Write:
    return Write("remove_member", (document_id, member), counted=True)


# -- the Protocols ---------------------------------------------------------------------------------------

class Writes(Protocol):
    """The group-committed write path every store has."""

    failed: str | None
    commit_listeners: list[Callable[[float, int], None]]
    on_fatal: Callable[[str], None] | None

    def submit(self, *writes: Write) -> asyncio.Future:
        """Commit these writes together (one transaction); the future resolves once they are durable: to
        the last counted write's result, else None (an exception when they were not stored)."""

    def enqueue(self, *writes: Write) -> None:
        """As submit, with no one waiting (dropped once the store has failed)."""

    def barrier(self) -> asyncio.Future:
        """Resolves once every write submitted before it is committed (or has failed)."""

    def then(self, future: asyncio.Future, callback: Callable[[asyncio.Future], None]) -> None:
        """callback(future) once `future` (of submit) resolves, in the turn it resolves in."""

    def reset_chain(self, chain: str) -> None:
        """Writes of `chain` submitted after this are tried again (those before still fail)."""

    @property
    def queue_depth(self) -> int: ...

    async def probe(self, timeout: float = ..., reuse: bool = True) -> None:
        """Raise StoreFailed unless a real write commits soon."""

    async def ping(self) -> None:
        """Raise if the database cannot answer a query."""

    async def close(self) -> None: ...


class SessionReads(Protocol):
    async def get_session(self, session_id: str) -> SessionRecord | None: ...

    async def list_sessions(self, *, user_id: str | None = None, state: str | None = None,
                            limit: int = 100, cursor: int | None = None) -> list[SessionRecord]:
        """Newest first; `cursor` is the id of the last record of the previous page."""

    async def due_sessions(self, now: float, pending_before: float) -> list[SessionRecord]:
        """Active sessions past expires_at; Pending ones past it or created before the pending cutoff."""

    async def count_sessions_by_state(self) -> dict[str, int]: ...


class DocumentReads(Protocol):
    async def get_document(self, document_id: str) -> DocumentRecord | None: ...

    async def count_documents(self) -> int: ...

    async def list_documents(self, *, limit: int = 100, after: str | None = None,
                             readable: "Readable | None" = None) -> list[DocumentRecord]:
        """By id, from after the id `after`; with `readable`, only the documents it lets the caller read."""

    async def ops(self, document_id: str, after: int, upto: int | None = None,
                  limit: int | None = None) -> list[OpRecord]:
        """after < revision (<= upto), oldest first."""

    async def op_values(self, document_id: str, after: int,
                        upto: int | None = None) -> list[tuple[int, list, int]]:
        """(revision, op, its encoded size) with after < revision (<= upto), oldest first: what a replay needs."""

    async def op_at(self, document_id: str, revision: int) -> OpRecord | None: ...

    async def message_revisions(self, document_id: str, peer_id: str) -> dict[str, int]:
        """message id -> revision of every stored edit one peer made on a document."""

    async def latest_snapshot(self, document_id: str, at_or_before: int | None = None) -> SnapshotRecord | None: ...

    async def last_revision(self, document_id: str) -> int: ...

    async def members(self, document_id: str) -> dict[str, str]:
        """member (user:<id>, group:<name>, *) -> role."""


class EventReads(Protocol):
    async def events(self, *, limit: int = 100, cursor: int | None = None, since: float | None = None,
                     until: float | None = None, after_id: int | None = None, prefixes: dict | None = None,
                     **equal: Any) -> list[EventRecord]:
        """Newest first (oldest first after `after_id`, for tailing), filtered by equality (EVENT_FILTERS)
        and by `prefixes` {column: the first characters of its value}."""

    async def count_events(self, *, since: float | None = None, until: float | None = None,
                           prefixes: dict | None = None, **equal: Any) -> int:
        """How many events the same filters match."""

    async def prune_events(self, before: float) -> bool:
        """Delete events older than `before`, in bounded chunks; False when there were none."""

    async def cap_events(self, max_rows: int) -> int | None:
        """Delete the oldest events beyond the newest `max_rows`; the last id deleted, or None."""


class ConnectionReads(Protocol):
    async def connections(self, *, session_id: str | None = None, user_id: str | None = None,
                          document_id: str | None = None, limit: int = 100) -> list[ConnectionRecord]:
        """The connection log, newest first."""


class Store(Writes, SessionReads, DocumentReads, EventReads, ConnectionReads, Protocol):
    """Everything the domain needs from storage."""

    url: str

    def describe(self) -> str:
        """The database for messages: a file path, or the URL without its password."""

    async def open(self) -> "Store":
        """Connect and migrate (StoreOpenError, MigrationError), and start the writer."""

    async def migrate(self) -> list: ...

    async def applied_migrations(self) -> list[dict]: ...

