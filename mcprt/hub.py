"""Who is connected to which document and session; fan-out of one serialized message; presence."""

from __future__ import annotations

from typing import Iterable, Protocol

from .ot import TextOperation, transform_cursor


class Peer(Protocol):
    """What the hub needs of a connection (the socket handler provides it)."""

    connection_id: str
    session_id: str
    user_id: str
    peer_id: str
    document_id: str
    cursor: dict | None

    def send_utf8(self, data: bytes) -> None: ...


class Hub:
    """Rooms by document and connections by session; sending never raises for a dead peer."""

    def __init__(self):
        self.rooms: dict[str, dict[str, Peer]] = {}
        self.by_session: dict[str, dict[str, Peer]] = {}

    @property
    def connection_count(self) -> int:
        return sum(len(r) for r in self.rooms.values())

    def join(self, peer: Peer) -> None:
        """Add a connection to its document's room and its session's set."""
        self.rooms.setdefault(peer.document_id, {})[peer.connection_id] = peer
        self.by_session.setdefault(peer.session_id, {})[peer.connection_id] = peer

    def leave(self, peer: Peer) -> bool:
        """Remove a connection; True when its room is now empty (the document can be freed)."""
        for table, key in ((self.rooms, peer.document_id), (self.by_session, peer.session_id)):
            members = table.get(key)
            if members is not None:
                members.pop(peer.connection_id, None)
                if not members:
                    del table[key]
        return peer.document_id not in self.rooms

    def peers(self, document_id: str) -> list[Peer]:
        """Everyone on a document."""
        return list(self.rooms.get(document_id, {}).values())

    def session_peers(self, session_id: str) -> list[Peer]:
        """Every live connection of a session."""
        return list(self.by_session.get(session_id, {}).values())

    def session_connections(self, session_id: str) -> int:
        return len(self.by_session.get(session_id, ()))

    def all_peers(self) -> list[Peer]:
        return [p for room in self.rooms.values() for p in room.values()]

    @staticmethod
    def send_all(peers: Iterable[Peer], text: str, exclude: Peer | None = None) -> int:
        """Send one already-serialized message to each peer but `exclude`; returns how many."""
        data = text.encode()
        sent = 0
        for peer in peers:
            if peer is not exclude:
                peer.send_utf8(data)
                sent += 1
        return sent

    def broadcast(self, document_id: str, text: str, exclude: Peer | None = None) -> int:
        """Send to everyone on a document but `exclude`."""
        return self.send_all(self.rooms.get(document_id, {}).values(), text, exclude)

    def participants(self, document_id: str) -> list[dict]:
        """One entry per session on the document: user, peer id, connection count and cursor."""
        seen: dict[str, dict] = {}
        for peer in self.rooms.get(document_id, {}).values():
            entry = seen.setdefault(peer.peer_id, {"user_id": peer.user_id, "peer_id": peer.peer_id,
                                                   "connections": 0, "cursor": None})
            entry["connections"] += 1
            if peer.cursor is not None:
                entry["cursor"] = peer.cursor
        return list(seen.values())

    def shift_cursors(self, document_id: str, op: TextOperation, author: Peer | None) -> None:
        """Move every remembered cursor on a document through an op (the author's own stays put)."""
        for peer in self.rooms.get(document_id, {}).values():
            if peer.cursor is None or peer is author:
                continue
            cursor = dict(peer.cursor)
            cursor["position"] = transform_cursor(cursor["position"], op)
            if cursor.get("selection_end") is not None:
                cursor["selection_end"] = transform_cursor(cursor["selection_end"], op)
            peer.cursor = cursor
