"""Work that ends together. The acks of one commit, or the answers to the frames of one read, are
written when that work ends, each socket's in one write: not first one now and the rest a turn of the
event loop later (a turn costs its Handle, its epoll_wait and its pass through the loop)."""

from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger("mcprt")

_ends: list[Callable[[], None]] | None = None  # what runs when the outermost open batch ends


class batch:
    """`with batch():` what is handed to at_end() inside runs, in order, as the outermost batch ends."""

    __slots__ = ("outer",)

    def __enter__(self) -> None:
        global _ends
        self.outer = _ends is None
        if self.outer:
            _ends = []

    def __exit__(self, *_) -> None:
        global _ends
        if not self.outer:
            return
        while _ends:  # an end may start a batch of its own, or add to this one
            ends, _ends = _ends, []
            for end in ends:
                try:
                    end()
                except Exception:
                    log.exception("ending a batch")
        _ends = None


def at_end(callback: Callable[[], None]) -> bool:
    """Run `callback` as the open batch ends: True, or False when no batch is open."""
    if _ends is None:
        return False
    _ends.append(callback)
    return True
