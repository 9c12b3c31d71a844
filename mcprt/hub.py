"""Who is connected to which document and session; the only way to reach other connections: fan-out of one
serialized message, closing a document's or a session's sockets; presence."""

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
    document: object  # the in-memory Document this connection edits
    cursor: dict | None
    lean: bool  # edits reach it as ops without content

    def send_utf8(self, data: bytes) -> None: ...

    def end(self, code: int, reason: str) -> None: ...


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

    def members(self, document_id: str) -> list[Peer]:
        """Everyone on a document, now (a snapshot to publish to later)."""
        return list(self.rooms.get(document_id, {}).values())

    def receivers(self, document_id: str, exclude: Peer | None, peers: list[Peer] | None = None) -> list[Peer]:
        """Who a publish would reach: the members given (or the document's) but `exclude`."""
        members = self.rooms.get(document_id, {}).values() if peers is None else peers
        return [peer for peer in members if peer is not exclude]

    @staticmethod
    def publish_modes(receivers: Iterable[Peer], texts: dict[bool, str]) -> int:
        """Send each receiver the text of its mode (lean or not), each encoded once; returns how many."""
        data = {lean: text.encode("utf-8", "replace") for lean, text in texts.items()}
        sent = 0
        for peer in receivers:
            peer.send_utf8(data[peer.lean])
            sent += 1
        return sent

    def session_connections(self, session_id: str) -> int:
        return len(self.by_session.get(session_id, ()))

    def all_peers(self) -> list[Peer]:
        return [p for room in self.rooms.values() for p in room.values()]

    def publish(self, document_id: str, text: str, exclude: Peer | None = None,
                peers: Iterable[Peer] | None = None) -> int:
        """Send one serialized message to everyone on a document (or to the members snapshot `peers`)
        but `exclude`, encoded once; returns how many it went to."""
        data = text.encode("utf-8", "replace")
        sent = 0
        for peer in self.rooms.get(document_id, {}).values() if peers is None else peers:
            if peer is not exclude:
                peer.send_utf8(data)
                sent += 1
        return sent

    def close_document(self, document, code: int, reason: str) -> None:
        """Close every connection editing this in-memory copy of a document."""
        for peer in self.members(document.document_id):
            if peer.document is document:
                peer.end(code, reason)

    def session_peers(self, session_id: str) -> list[Peer]:
        """Every connection of a session, on any document."""
        return list(self.by_session.get(session_id, {}).values())

    def close_session(self, session_id: str, code: int, reason: str, text: str) -> int:
        """Send `text` to every connection of a session, then close them; returns how many."""
        peers = self.session_peers(session_id)
        data = text.encode("utf-8", "replace")
        for peer in peers:
            peer.send_utf8(data)
            peer.end(code, reason)
        return len(peers)

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
