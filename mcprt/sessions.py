"""Session states, the transition table, expiry, and SessionService (the one place sessions change)."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, replace
from typing import Callable

from .clock import iso
from .identity import Identity
from .protocol import AppError, ErrorCode
from .storage.base import (EventRecord, SessionRecord, Store, event_written, session_moved, session_touched,
                           session_written)

PENDING, ACTIVE, EXPIRED, INVALIDATED = "Pending", "Active", "Expired", "Invalidated"
STATES = (PENDING, ACTIVE, EXPIRED, INVALIDATED)

# (from, action) -> to. Anything not here is illegal; Expired and Invalidated are final.
TRANSITIONS = {
    (PENDING, "activate"): ACTIVE,
    (ACTIVE, "activate"): ACTIVE,          # idempotent
    (PENDING, "expire"): EXPIRED,
    (ACTIVE, "expire"): EXPIRED,
    (ACTIVE, "invalidate"): INVALIDATED,
    (PENDING, "invalidate"): INVALIDATED,  # a client may throw away a session it never used
}
EVENT_FOR = {ACTIVE: "session_activated", EXPIRED: "session_expired", INVALIDATED: "session_invalidated"}

_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")


def mask(session_id: str | None) -> str:
    """The first 8 characters and an ellipsis: enough to correlate, useless as a credential."""
    return "-" if not session_id else session_id[:8] + "…"


_TIMES = ("created_at", "expires_at", "activated_at", "ended_at", "last_seen")


def session_json(session: SessionRecord, with_id: bool = False) -> dict:
    """The REST representation (times as RFC 3339 text); `with_id`: with the listing's cursor."""
    out = {}
    for name in _FIELD_NAMES:
        value = getattr(session, name)
        out[name] = iso(value) if name in _TIMES and value is not None else value
    if with_id:
        out["id"] = session.id
    return out


def effective(session: SessionRecord, now: float, pending_ttl: float) -> SessionRecord:
    """A session as it stands at `now`: past its deadline it is Expired, swept or not."""
    if session.state == ACTIVE and session.expires_at <= now:
        return replace(session, state=EXPIRED, end_reason="ttl")
    if session.state == PENDING and (session.expires_at <= now or session.created_at + pending_ttl <= now):
        return replace(session, state=EXPIRED, end_reason="not_activated")
    return session


Session = SessionRecord


@dataclass(frozen=True)
class Client:
    """Who is asking: recorded with every transition."""

    addr: str | None = None
    user_agent: str | None = None


class SessionService:
    """Creates sessions, moves them through TRANSITIONS, records each move, and tells listeners."""

    def __init__(self, store: Store, clock: Callable[[], float], session_ttl: float, pending_ttl: float):
        self.store, self.clock = store, clock
        self.session_ttl, self.pending_ttl = session_ttl, pending_ttl
        self._cache: dict[str, Session] = {}
        self._touched: set[str] = set()  # sessions with activity not yet written
        # Called with (session, reason) when a session ends; the socket side closes its connections.
        self.on_end: list[Callable[[Session, str], None]] = []
        # Called with (session, end reason or None) after every stored change (the cluster tells the others).
        self.on_change: list[Callable[[Session, str | None], None]] = []

    async def create(self, user_id: str, client_info: str | None, activate: bool, client: Client,
                     identity: Identity | None = None) -> Session:
        """A new session, Active unless activate is False; durable before it is returned. With a verified
        token's identity it ends no later than the token does (plus the verifier's leeway)."""
        now = self.clock()
        ttl = self.session_ttl if activate else self.pending_ttl
        expires = now + ttl if identity is None else min(now + ttl, identity.expires_by)
        session = Session(session_id=str(uuid.uuid4()), peer_id=uuid.uuid4().hex[:12], user_id=user_id,
                          client_info=client_info, state=ACTIVE if activate else PENDING,
                          created_at=now, expires_at=expires, activated_at=now if activate else None,
                          groups=identity.groups if identity is not None else (),
                          grants=identity.grants if identity is not None else None)
        details = {"state": session.state, "auth": "open" if identity is None else "jwt"}
        if identity is not None:
            details.update(issuer=identity.issuer, subject=identity.subject, token_expires=iso(identity.expires),
                           groups=list(identity.groups))
            if identity.grants is not None:
                details["grants"] = dict(identity.grants)
        # The row and its event commit together.
        await self.store.submit(session_written(session), self._event(session, "session_created", client, details))
        self._cache[session.session_id] = session
        return session

    async def get(self, session_id: str) -> Session:
        """The session as it stands now (Expired once past its deadline), or INVALID_SESSION."""
        session = await self._load(session_id)
        current = effective(session, self.clock(), self.pending_ttl)
        if current.state != session.state:
            current = await self._move(session, "expire", Client(), current.end_reason, quiet=True)
        return current

    async def authenticate(self, session_id: str) -> Session:
        """An Active, unexpired session, or INVALID_SESSION saying why not."""
        session = await self.get(session_id)
        if session.state == PENDING:  # activated elsewhere (another node, say) since it was cached?
            self.forget(session_id)
            session = await self.get(session_id)
        if session.state != ACTIVE:
            raise AppError(ErrorCode.INVALID_SESSION, f"session is {session.state}, not Active",
                           {"state": session.state, "session_id": mask(session_id)})
        return session

    async def activate(self, session_id: str, client: Client) -> Session:
        """Pending -> Active (Active stays Active)."""
        return await self._transition(session_id, "activate", client, "activated")

    async def invalidate(self, session_id: str, client: Client, reason: str = "deleted") -> Session:
        """Active or Pending -> Invalidated; listeners close its sockets."""
        return await self._transition(session_id, "invalidate", client, reason)

    async def extend(self, session_id: str, identity: Identity, client: Client) -> Session:
        """An Active session's deadline moved by a fresh token (never earlier than it was, never later
        than the token allows), its groups and grants those of the fresh token: a compare-and-set on its
        Active row, recorded as session_refreshed."""
        session = await self.authenticate(session_id)
        expires = max(session.expires_at, min(self.clock() + self.session_ttl, identity.expires_by))
        moved = replace(session, expires_at=expires, groups=identity.groups, grants=identity.grants)
        self._cache[session_id] = moved
        if not await self.store.submit(session_moved(moved, ACTIVE)):  # ended meanwhile by someone else
            self._cache.pop(session_id, None)
            raise _illegal(await self._load(session_id), "refresh")
        self.store.enqueue(self._event(moved, "session_refreshed", client, {
            "expires_at": iso(expires), "issuer": identity.issuer, "subject": identity.subject,
            **({"groups": list(moved.groups)} if moved.groups != session.groups else {}),
            **({"grants": dict(moved.grants or ())} if moved.grants != session.grants else {})}))
        self._tell(moved, None)
        return moved

    def forget(self, session_id: str) -> None:
        """Drop a cached session (another node changed it): the next use reads the store."""
        self._cache.pop(session_id, None)

    def _tell(self, session: Session, ended: str | None) -> None:
        for listener in list(self.on_change):
            listener(session, ended)

    async def sweep(self) -> list[Session]:
        """Mark every session past its deadline Expired (rows stay) and tell listeners."""
        now = self.clock()
        rows = await self.store.due_sessions(now, now - self.pending_ttl)
        swept = []
        for row in rows:
            session = self._cache.get(row.session_id) or row
            if session.state in (ACTIVE, PENDING):
                reason = "ttl" if session.state == ACTIVE else "not_activated"
                swept.append(await self._move(session, "expire", Client(), reason, quiet=True))
        return swept

    def touch(self, session_id: str) -> None:
        """Note activity on a session (heartbeats, edits): written with its next change, or by the next
        write_last_seen, whichever comes first."""
        session = self._cache.get(session_id)
        now = self.clock()
        if session is not None and (session.last_seen is None or now - session.last_seen >= 1.0):
            self._cache[session_id] = replace(session, last_seen=now)
            self._touched.add(session_id)

    def write_last_seen(self) -> int:
        """Queue the last activity of every session touched since the last call (one batch); how many."""
        touched, self._touched = self._touched, set()
        writes = [session_touched(sid, s.last_seen) for sid in touched
                  if (s := self._cache.get(sid)) is not None and s.last_seen is not None]
        for write in writes:
            self.store.enqueue(write)
        return len(writes)

    async def _load(self, session_id: str) -> Session:
        session = self._cache.get(session_id)
        if session is not None:
            return session
        session = await self.store.get_session(session_id) if _UUID.match(session_id or "") else None
        if session is None:
            raise AppError(ErrorCode.INVALID_SESSION, "Session not found or expired",
                           {"session_id": mask(session_id)})
        if session.state in (ACTIVE, PENDING):
            # Another request may have loaded it (and moved it) while this one read: the cache wins.
            session = self._cache.setdefault(session_id, session)
        return session

    async def _transition(self, session_id: str, action: str, client: Client, reason: str) -> Session:
        session = await self.get(session_id)
        if (session.state, action) not in TRANSITIONS:
            raise _illegal(session, action)
        return await self._move(session, action, client, reason)

    async def _move(self, session: Session, action: str, client: Client, reason: str | None,
                    quiet: bool = False) -> Session:
        """One transition, a compare-and-set: in memory (the cache is updated before anything is awaited,
        so a concurrent transition sees the new state) and in the store (the row changes only if it is
        still in the state this move started from). `quiet`: a move overtaken by another (an expiry
        meeting a DELETE) returns the session as it now is instead of refusing."""
        current = self._cache.get(session.session_id, session)
        if current.state != session.state:  # moved by someone else while this caller awaited
            if (current.state, action) not in TRANSITIONS:
                if quiet:
                    return current
                raise _illegal(current, action)
            session = current
        to = TRANSITIONS[(session.state, action)]
        if to == session.state:
            return session
        now = self.clock()
        changes = {"state": to}
        if to == ACTIVE:
            changes.update(activated_at=now, expires_at=now + self.session_ttl)
        else:
            changes.update(ended_at=now, end_reason=reason)
        moved = replace(session, **changes)
        self._cache[moved.session_id] = moved
        changed = await self.store.submit(session_moved(moved, session.state))
        if self._cache.get(moved.session_id) is moved and (to != ACTIVE or not changed):
            del self._cache[moved.session_id]  # final (read from the store from now on), or not ours
        if not changed:  # the stored row had moved on (a transition this cache never saw)
            stored = await self._load(moved.session_id)
            if quiet:
                return stored
            raise _illegal(stored, action)
        self.store.enqueue(self._event(moved, EVENT_FOR[to], client, {"from": session.state, "to": to, "reason": reason}))
        ended = {EXPIRED: "session_expired", INVALIDATED: "session_invalidated"}.get(to)
        if ended:
            for listener in list(self.on_end):
                listener(moved, ended)
        self._tell(moved, ended)
        return moved

    def _event(self, session: Session, type_: str, client: Client, details: dict):
        return event_written(EventRecord(self.clock(), "session", type_, "info", details,
                                         session_id=session.session_id, user_id=session.user_id,
                                         client_addr=client.addr, user_agent=client.user_agent))


def _illegal(session: Session, action: str) -> AppError:
    return AppError(ErrorCode.INVALID_SESSION, f"cannot {action} a session that is {session.state}",
                    {"state": session.state, "session_id": mask(session.session_id)}, status=409)


_FIELD_NAMES = ("session_id", "peer_id", "user_id", "client_info", "state", "created_at", "expires_at",
                "activated_at", "ended_at", "end_reason", "last_seen")
