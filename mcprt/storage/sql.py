"""What both SQL backends share: one statement per write intent and every read, written once with `?`
placeholders (PostgreSQL's backend numbers them), and the rows turned into records.

A backend provides `_fetch(sql, params) -> list[tuple]` for reads, `_time_in`/`_time_out` (how it
stores a time), and `_commit` (see batch.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from .base import (EVENT_FILTERS, KINDS, ConnectionRecord, DocumentRecord, EventRecord, OpRecord, Readable,
                   SessionRecord, SnapshotRecord, Write)
from .batch import GroupCommit

_PIECES_PER_READ = 256  # digests in one IN (...) of a snapshot's read: 4 MB of pieces, under any parameter limit
EVENT_PRUNE_CHUNK = 2000   # events one pruning write deletes: ~45 ms of the SQLite writer measured
EVENT_PRUNE_CHUNKS = 25    # pruning writes per sweep (50,000 rows; the next sweep goes on)
_DECODE_IN_THREAD = 256   # ops: a longer history is decoded off the event loop


def _insert(table: str, kind: str, tail: str = "") -> str:
    columns = KINDS[kind][0]
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}){tail}"


STATEMENTS: dict[str, str] = {
    "insert_session": _insert("sessions", "insert_session"),
    "update_session": "UPDATE sessions SET state = ?, activated_at = ?, expires_at = ?, ended_at = ?, end_reason = ?,"
                      " last_seen = ?, member_groups = ?, token_roles = ? WHERE session_id = ? AND state = ?",
    "insert_event": _insert("events", "insert_event"),
    "insert_connection": _insert("connections", "insert_connection"),
    "close_connection": "UPDATE connections SET closed_at = ?, close_code = ?, close_reason = ?, messages_in = ?,"
                        " messages_out = ? WHERE connection_id = ?",
    "insert_document": _insert("documents", "insert_document", " ON CONFLICT (document_id) DO NOTHING"),
    "insert_op": _insert("ops", "insert_op"),
    "insert_snapshot": _insert("snapshots", "insert_snapshot", " ON CONFLICT (document_id, revision)"
                               " DO UPDATE SET content = excluded.content, time = excluded.time,"
                               " pieces = excluded.pieces"),
    "insert_snapshot_piece": _insert("snapshot_pieces", "insert_snapshot_piece",
                                     " ON CONFLICT (document_id, piece) DO NOTHING"),
    "prune_events": "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE time < ? ORDER BY time LIMIT ?)",
    "cap_events": "DELETE FROM events WHERE id <= ?",
    "set_member": _insert("members", "set_member", " ON CONFLICT (document_id, member) DO UPDATE SET role = excluded.role"),
    "claim_owner": "INSERT INTO members (document_id, member, role) SELECT ?, ?, 'owner'"
                   " WHERE NOT EXISTS (SELECT 1 FROM members WHERE document_id = ?)",
    "remove_member": "DELETE FROM members WHERE document_id = ? AND member = ?",
    "delete_ops": "DELETE FROM ops WHERE document_id = ?",
    "delete_snapshots": "DELETE FROM snapshots WHERE document_id = ?",
    "delete_snapshot_pieces": "DELETE FROM snapshot_pieces WHERE document_id = ?",
    "delete_members": "DELETE FROM members WHERE document_id = ?",
    "delete_document": "DELETE FROM documents WHERE document_id = ?",
    "touch_session": "UPDATE sessions SET last_seen = ? WHERE session_id = ? AND state IN ('Active', 'Pending')",
    "health_probe": "INSERT INTO health_probe (id, at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
}
assert set(STATEMENTS) == set(KINDS), "every write intent has its statement"

_SESSION = "session_id, peer_id, user_id, client_info, state, created_at, expires_at, activated_at, ended_at," \
           " end_reason, last_seen, id, member_groups, token_roles"
_EVENT = "time, kind, type, severity, details, session_id, user_id, document_id, connection_id, client_addr," \
         " user_agent, id"
_CONNECTION = "connection_id, session_id, user_id, peer_id, document_id, client_type, client_addr, user_agent," \
              " opened_at, closed_at, close_code, close_reason, messages_in, messages_out"
_OP = "document_id, revision, op, user_id, peer_id, message_id, time, correction"


class SqlStore(GroupCommit):
    """The reads and the event pruning of a SQL backend."""

    url: str

    async def _fetch(self, sql: str, params: tuple = ()) -> list[tuple]:
        raise NotImplementedError

    def _time_in(self, ts: float) -> Any:
        raise NotImplementedError

    def _time_out(self, value: Any) -> float:
        raise NotImplementedError

    def _times(self, kind: str, values: tuple) -> tuple:
        """A write's values with its times in the stored form."""
        positions = KINDS[kind][1]
        if not positions:
            return values
        out = list(values)
        time_in = self._time_in
        for i in positions:
            if out[i] is not None:
                out[i] = time_in(out[i])
        return tuple(out)

    def _maybe_time(self, value: Any) -> float | None:
        return None if value is None else self._time_out(value)

    # -- sessions --------------------------------------------------------------------------------------

    def _session(self, row: tuple) -> SessionRecord:
        t = self._maybe_time
        return SessionRecord(row[0], row[1], row[2], row[3], row[4], t(row[5]), t(row[6]), t(row[7]), t(row[8]),
                             row[9], t(row[10]), row[11], tuple(json.loads(row[12])) if row[12] else (),
                             None if row[13] is None else tuple(json.loads(row[13]).items()))

    async def get_session(self, session_id: str) -> SessionRecord | None:
        rows = await self._fetch(f"SELECT {_SESSION} FROM sessions WHERE session_id = ?", (session_id,))
        return self._session(rows[0]) if rows else None

    async def list_sessions(self, *, user_id: str | None = None, state: str | None = None,
                            limit: int = 100, cursor: int | None = None) -> list[SessionRecord]:
        where, params = [], []
        for clause, value in (("user_id = ?", user_id), ("state = ?", state), ("id < ?", cursor)):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = f"SELECT {_SESSION} FROM sessions" + (" WHERE " + " AND ".join(where) if where else "")
        return [self._session(r) for r in await self._fetch(f"{sql} ORDER BY id DESC LIMIT ?", (*params, limit))]

    async def due_sessions(self, now: float, pending_before: float) -> list[SessionRecord]:
        at, cutoff = self._time_in(now), self._time_in(pending_before)
        rows = await self._fetch(
            f"SELECT {_SESSION} FROM sessions WHERE (state = 'Active' AND expires_at <= ?)"
            " OR (state = 'Pending' AND (expires_at <= ? OR created_at <= ?))", (at, at, cutoff))
        return [self._session(r) for r in rows]

    async def count_sessions_by_state(self) -> dict[str, int]:
        return {state: n for state, n in await self._fetch("SELECT state, count(*) FROM sessions GROUP BY state")}

    # -- documents -------------------------------------------------------------------------------------

    async def get_document(self, document_id: str) -> DocumentRecord | None:
        rows = await self._fetch("SELECT document_id, format, created_at FROM documents WHERE document_id = ?",
                                 (document_id,))
        return DocumentRecord(rows[0][0], rows[0][1], self._time_out(rows[0][2])) if rows else None

    async def count_documents(self) -> int:
        return (await self._fetch("SELECT count(*) FROM documents"))[0][0]

    async def list_documents(self, *, limit: int = 100, after: str | None = None,
                             readable: Readable | None = None) -> list[DocumentRecord]:
        where, params = [], []
        if after is not None:
            where.append("document_id > ?")
            params.append(after)
        if readable is not None:
            r, either = readable, []
            if r.members:
                either.append("EXISTS (SELECT 1 FROM members m WHERE m.document_id = documents.document_id AND"
                              f" m.member IN ({', '.join('?' * len(r.members))}))")
                params.extend(r.members)
            if r.ids:
                either.append(f"document_id IN ({', '.join('?' * len(r.ids))})")
                params.extend(r.ids)
            for prefix in r.prefixes:
                either.append("substr(document_id, 1, ?) = ?")
                params.extend((len(prefix), prefix))
            if r.unset:
                either.append("NOT EXISTS (SELECT 1 FROM members m WHERE m.document_id = documents.document_id)")
            where.append("(" + " OR ".join(either or ["1 = 0"]) + ")")
        sql = "SELECT document_id, format, created_at FROM documents" + (" WHERE " + " AND ".join(where) if where else "")
        rows = await self._fetch(f"{sql} ORDER BY document_id LIMIT ?", (*params, limit))
        return [DocumentRecord(r[0], r[1], self._time_out(r[2])) for r in rows]

    def _op(self, row: tuple) -> OpRecord:
        return OpRecord(row[0], row[1], json.loads(row[2]), row[3], row[4], row[5], self._time_out(row[6]),
                        json.loads(row[7]) if row[7] else None)

    async def ops(self, document_id: str, after: int, upto: int | None = None,
                  limit: int | None = None) -> list[OpRecord]:
        sql, params = f"SELECT {_OP} FROM ops WHERE document_id = ? AND revision > ?", [document_id, after]
        if upto is not None:
            sql += " AND revision <= ?"
            params.append(upto)
        sql += " ORDER BY revision"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [self._op(r) for r in await self._fetch(sql, tuple(params))]

    async def op_values(self, document_id: str, after: int,
                        upto: int | None = None) -> list[tuple[int, list, int]]:
        rows = await self._fetch(
            "SELECT revision, op FROM ops WHERE document_id = ? AND revision > ? AND revision <= ? ORDER BY revision",
            (document_id, after, upto if upto is not None else 2 ** 62))
        if not rows:
            return []
        text = "[" + ",".join(r[1] for r in rows) + "]"  # one parse for the whole replay
        ops = json.loads(text) if len(rows) <= _DECODE_IN_THREAD else await asyncio.to_thread(json.loads, text)
        return [(r[0], op, len(r[1])) for r, op in zip(rows, ops)]

    async def op_at(self, document_id: str, revision: int) -> OpRecord | None:
        rows = await self._fetch(f"SELECT {_OP} FROM ops WHERE document_id = ? AND revision = ?",
                                 (document_id, revision))
        return self._op(rows[0]) if rows else None

    async def message_revisions(self, document_id: str, peer_id: str) -> dict[str, int]:
        rows = await self._fetch("SELECT message_id, revision FROM ops WHERE document_id = ? AND peer_id = ?"
                                 " AND message_id IS NOT NULL", (document_id, peer_id))
        return {message_id: revision for message_id, revision in rows}

    async def latest_snapshot(self, document_id: str, at_or_before: int | None = None) -> SnapshotRecord | None:
        rows = await self._fetch(
            "SELECT document_id, revision, content, time, pieces FROM snapshots WHERE document_id = ?"
            " AND revision <= ? ORDER BY revision DESC LIMIT 1",
            (document_id, at_or_before if at_or_before is not None else 2 ** 62))
        if not rows:
            return None
        _, revision, content, time, pieces = rows[0]
        if pieces is not None:
            content = await self._joined_pieces(document_id, revision, json.loads(pieces))
        return SnapshotRecord(document_id, revision, content, self._time_out(time))

    async def _joined_pieces(self, document_id: str, revision: int, digests: list[str]) -> str:
        """A snapshot stored as pieces (see snapshot_in_pieces), joined in order."""
        wanted = sorted(set(digests))
        found: dict[str, str] = {}
        for at in range(0, len(wanted), _PIECES_PER_READ):
            names = wanted[at:at + _PIECES_PER_READ]
            found.update(await self._fetch(
                f"SELECT piece, content FROM snapshot_pieces WHERE document_id = ? AND piece IN"
                f" ({', '.join('?' * len(names))})", (document_id, *names)))
        missing = set(wanted) - found.keys()
        if missing:
            raise RuntimeError(f"the snapshot of {document_id} at revision {revision} names {len(missing)} "
                               f"piece(s) the database does not hold")
        return "".join(found[digest] for digest in digests)

    async def members(self, document_id: str) -> dict[str, str]:
        return dict(await self._fetch("SELECT member, role FROM members WHERE document_id = ?", (document_id,)))

    async def last_revision(self, document_id: str) -> int:
        rows = await self._fetch("SELECT max(revision) FROM ops WHERE document_id = ?", (document_id,))
        return (rows and rows[0][0]) or 0

    # -- connections -----------------------------------------------------------------------------------

    async def connections(self, *, session_id: str | None = None, user_id: str | None = None,
                          document_id: str | None = None, limit: int = 100) -> list[ConnectionRecord]:
        where, params = [], []
        for column, value in (("session_id", session_id), ("user_id", user_id), ("document_id", document_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = f"SELECT {_CONNECTION} FROM connections" + (" WHERE " + " AND ".join(where) if where else "")
        t = self._maybe_time
        return [ConnectionRecord(*r[:8], t(r[8]), t(r[9]), *r[10:])
                for r in await self._fetch(f"{sql} ORDER BY opened_at DESC LIMIT ?", (*params, limit))]

    # -- events ----------------------------------------------------------------------------------------

    def _event(self, row: tuple) -> EventRecord:
        return EventRecord(self._time_out(row[0]), row[1], row[2], row[3], json.loads(row[4]), *row[5:])

    def _event_where(self, since: float | None, until: float | None, prefixes: dict | None,
                     equal: dict) -> tuple[list[str], list]:
        unknown = (set(equal) | set(prefixes or ())) - set(EVENT_FILTERS)
        if unknown:
            raise ValueError(f"unknown event filter(s): {', '.join(sorted(unknown))}")
        where, params = [], []
        for column in EVENT_FILTERS:
            if equal.get(column) is not None:
                where.append(f"{column} = ?")
                params.append(equal[column])
        for column, prefix in (prefixes or {}).items():  # an id as the CLI prints it (its first characters)
            where.append(f"substr({column}, 1, ?) = ?")
            params.extend((len(prefix), prefix))
        for clause, value in (("time >= ?", since), ("time < ?", until)):
            if value is not None:
                where.append(clause)
                params.append(self._time_in(value))
        return where, params

    async def events(self, *, limit: int = 100, cursor: int | None = None, since: float | None = None,
                     until: float | None = None, after_id: int | None = None, prefixes: dict | None = None,
                     **equal: Any) -> list[EventRecord]:
        where, params = self._event_where(since, until, prefixes, equal)
        for clause, value in (("id < ?", cursor), ("id > ?", after_id)):
            if value is not None:
                where.append(clause)
                params.append(value)
        order = "ASC" if after_id is not None else "DESC"
        sql = f"SELECT {_EVENT} FROM events" + (" WHERE " + " AND ".join(where) if where else "")
        return [self._event(r) for r in await self._fetch(f"{sql} ORDER BY id {order} LIMIT ?", (*params, limit))]

    async def count_events(self, *, since: float | None = None, until: float | None = None,
                           prefixes: dict | None = None, **equal: Any) -> int:
        where, params = self._event_where(since, until, prefixes, equal)
        sql = "SELECT count(*) FROM events" + (" WHERE " + " AND ".join(where) if where else "")
        return (await self._fetch(sql, tuple(params)))[0][0]

    async def prune_events(self, before: float, chunk: int = EVENT_PRUNE_CHUNK,
                           chunks: int = EVENT_PRUNE_CHUNKS) -> bool:
        """Delete events older than `before`, `chunk` rows per write and at most `chunks` writes (other
        writes commit between them; the next sweep goes on). False when there were none."""
        done = 0
        while done < chunks and await self.events(limit=1, until=before):
            await self.submit(Write("prune_events", (before, chunk)))
            done += 1
        return done > 0

    async def cap_events(self, max_rows: int, chunk: int = EVENT_PRUNE_CHUNK,
                         chunks: int = EVENT_PRUNE_CHUNKS) -> int | None:
        """Delete the oldest events beyond the newest `max_rows` ids, in chunks as prune_events does; the
        last id deleted, or None. Pruning takes the oldest, so the ids left are nearly contiguous and
        min/max (two index lookups) stand for a count."""
        lo, hi = (await self._fetch("SELECT min(id), max(id) FROM events"))[0]
        if not max_rows or hi is None or hi - lo + 1 <= max_rows:
            return None
        through, start, last = hi - max_rows, lo, None
        for _ in range(chunks):
            if start > through:
                break
            last = min(through, start + chunk - 1)
            await self.submit(Write("cap_events", (last,)))
            start = last + 1
        return last

    async def applied_migrations(self) -> list[dict]:
        """Rows of schema_migrations in order (applied_at as the database wrote it)."""
        rows = await self._fetch("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
        return [{"version": v, "name": n, "applied_at": str(a)} for v, n, a in rows]

    async def ping(self) -> None:
        await self._fetch("SELECT count(*) FROM schema_migrations")
