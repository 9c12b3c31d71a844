"""A test model of an editor: the ot.js client states over a real WebSocket, applying what it receives in order."""

from __future__ import annotations

import json

from mcprt.ot import TextOperation, from_delta, to_delta


class OTClient:
    """Synchronized / AwaitingConfirm / AwaitingWithBuffer, as ot.js's Client, speaking mcprt's protocol."""

    def __init__(self, ws, state: dict):
        self.ws = ws
        self.revision = state["revision"]
        self.content = state["content"]
        self.outstanding: TextOperation | None = None
        self.buffer: TextOperation | None = None
        self.outstanding_id: str | None = None
        self.counter = 0
        self.errors: list[dict] = []

    async def edit(self, delta: dict) -> None:
        """A local edit: apply now, send or buffer it."""
        op = from_delta(delta, len(self.content))
        self.content = op.apply(self.content)
        if self.outstanding is None:
            await self._send(op)
        elif self.buffer is None:
            self.buffer = op
        else:
            self.buffer = self.buffer.compose(op)

    async def _send(self, op: TextOperation) -> None:
        self.outstanding = op
        self.counter += 1
        self.outstanding_id = f"{id(self)}-{self.counter}"
        delta = to_delta(op)
        payload = {"base_revision": self.revision, "change_delta": delta} if delta else {
            "base_revision": self.revision, "content": self.content}
        await self.ws.send_msg("realtime_edit", payload, self.outstanding_id)

    async def handle(self, message: dict) -> None:
        """Apply one message from the server."""
        kind, payload = message["type"], message["payload"]
        if kind == "edit_ack":
            assert message["id"] == self.outstanding_id, (message, self.outstanding_id)
            self.revision = payload["revision"]
            self.outstanding = None
            if payload["correction"]:
                self._apply_server(TextOperation.from_json(payload["correction"]))
            if self.buffer is not None:
                buffered, self.buffer = self.buffer, None
                await self._send(buffered)
        elif kind == "realtime_edit":
            assert payload["revision"] == self.revision + 1, (payload["revision"], self.revision)
            self.revision = payload["revision"]
            self._apply_server(TextOperation.from_json(payload["op"]))
        elif kind == "error":
            self.errors.append(payload)

    def _apply_server(self, op: TextOperation) -> None:
        if self.outstanding is not None:
            self.outstanding, op = TextOperation.transform(self.outstanding, op)
        if self.buffer is not None:
            self.buffer, op = TextOperation.transform(self.buffer, op)
        self.content = op.apply(self.content)

    @property
    def synchronized(self) -> bool:
        return self.outstanding is None and self.buffer is None

    def __repr__(self) -> str:
        return f"OTClient(rev={self.revision}, content={json.dumps(self.content)[:60]})"
