"""The HTML sanitizer off the event loop: a worker process with a time budget, so that one costly markup edit
never stalls the sockets of other documents, and one that runs past its budget is refused, not waited for."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from . import sanitize
from .protocol import AppError, ErrorCode

log = logging.getLogger("mcprt.cleaner")

# A fork of the forkserver (a small process started once, with sanitize imported and no threads) starts a
# worker in milliseconds; a fork of the server itself would copy its writer and reader threads' locks.
_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["mcprt.sanitize"])


def _consume(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


def _warm(pool: ProcessPoolExecutor, engine: str) -> None:
    """On a thread: make the pool start its worker process, and wait until it answers."""
    pool.submit(_clean, "", engine).result()


def _clean(content: str, engine: str, length: int | None = None) -> tuple[str, tuple[str, ...]] | str | None:
    """In the worker: the cleaned HTML and what was removed, or the refusal's message. With `length`,
    content is a span of a document that long (sanitize.clean_part), and None says: clean the whole."""
    try:
        cleaned = sanitize.clean_html(content, engine) if length is None else sanitize.clean_part(content, engine, length)
    except sanitize.UnsafeText as exc:
        return str(exc)
    return None if cleaned is None else (cleaned.html, cleaned.removed)


class Cleaner:
    """clean_html in a worker process; past `budget` seconds the worker is killed and the edit refused."""

    def __init__(self, engine: str, budget: float):
        self.engine, self.budget = engine, budget
        self._pool: ProcessPoolExecutor | None = None
        self._ready: asyncio.Future | None = None  # the new worker has started and answered

    def _executor(self) -> None:
        """Start a worker if there is none. Starting one blocks (the forkserver's first start imports the
        sanitizer, each later fork waits on it), so it happens on a thread, not on the event loop."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=_CONTEXT)
            self._ready = asyncio.ensure_future(asyncio.to_thread(_warm, self._pool, self.engine))
            self._ready.add_done_callback(_consume)

    def _submit(self, content: str, length: int | None) -> asyncio.Future:
        future = asyncio.get_running_loop().run_in_executor(self._pool, _clean, content, self.engine, length)
        future.add_done_callback(_consume)  # a killed worker's calls fail; nobody else may be waiting
        return future

    async def clean(self, content: str, span: tuple[int, int] | None = None) -> sanitize.Cleaned:
        """sanitize.clean_edit in the worker, sending it only the span when that is enough; or
        INVALID_MESSAGE (refused markup, or over the time budget)."""
        if span is not None:
            part = await self._clean(content[span[0]:span[1]], len(content))
            if part is not None:
                return sanitize.Cleaned(*part, span)
        return sanitize.Cleaned(*await self._clean(content, None))

    async def _clean(self, content: str, length: int | None) -> tuple[str, tuple[str, ...]] | None:
        """The worker's answer for content (a span of a document `length` long, or a whole document).
        Starting a worker is not counted against the budget."""
        self._executor()
        try:
            await asyncio.shield(self._ready)
        except Exception as exc:  # could not start a process (out of memory, descriptors): next edit tries again
            log.error("the sanitizer's worker could not start: %s", exc)
            self._pool = None
            raise AppError(ErrorCode.SERVER_ERROR, "the sanitizer could not start; send the edit again", {}) from None
        future = self._submit(content, length)
        try:
            result = await asyncio.wait_for(asyncio.shield(future), self.budget)
        except asyncio.TimeoutError:
            self._kill()
            raise AppError(ErrorCode.INVALID_MESSAGE, f"this markup takes more than {self.budget:g} s to "
                           "sanitize; send it in smaller parts", {"pointer": "/payload", "budget_seconds": self.budget})
        except Exception as exc:  # the worker died (killed from outside, out of memory): a new one next time
            log.error("the sanitizer's worker failed: %s", exc)
            self._pool = None
            raise AppError(ErrorCode.SERVER_ERROR, "the sanitizer stopped; send the edit again", {}) from None
        if isinstance(result, str):
            raise AppError(ErrorCode.INVALID_MESSAGE, result, {"pointer": "/payload", "max_depth": sanitize.MAX_DEPTH})
        return result

    def _kill(self) -> None:
        """End the worker now (a pool cannot cancel a running call); the next clean starts another."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        log.warning("a sanitize ran past its %.1f s budget: worker restarted", self.budget)
        for process in list(getattr(pool, "_processes", {}).values()):  # no public way to stop a running call
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the worker."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
