"""Background tasks: each kept by reference (the loop holds tasks only weakly), its failure logged, all
awaited on shutdown."""

from __future__ import annotations

import asyncio
import logging
from typing import Coroutine

log = logging.getLogger("mcprt.tasks")


class Tasks:
    """The server's fire-and-forget work (ending a session, releasing a document), never orphaned."""

    def __init__(self):
        self._running: set[asyncio.Task] = set()

    def spawn(self, coroutine: Coroutine, what: str) -> asyncio.Task:
        """Run a coroutine in the background; an exception is logged with `what`, never lost."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._running.add(task)
        task.add_done_callback(lambda t: self._finished(t, what))
        return task

    def _finished(self, task: asyncio.Task, what: str) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed: %s", what, exc_info=task.exception())

    async def drain(self) -> None:
        """Wait for every background task (they are short: a session move, a flush)."""
        while self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)

    def __len__(self) -> int:
        return len(self._running)
