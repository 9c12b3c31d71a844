"""Group commit, backend-neutral: one writer task takes every unit queued meanwhile and asks the backend
to commit them in one transaction; a caller's future resolves only after its unit committed.

A backend that can commit without waiting (`sync_commits`: SQLite's WAL commit on the loop's thread) has a
shorter path while the writer is idle: what is submitted in one turn of the event loop commits at the end
of that turn (`_commit_now`), without waking the writer task; anything else, or a batch it did not commit,
goes to the writer task in order, as before.

A unit is what `submit(*writes)` was given: its writes commit together or not at all. Writes of one
chain (a document's ops) land without gaps: after one fails, the later ones fail without being tried
until the chain is reset. A backend implements `_commit(units)` only: one transaction, raise if it did
not commit; raise `Refused` when the whole batch must fail without being retried one unit at a time (a
lock another process holds), `Lost` when it committed where nobody will read it (a removed file),
`WriterBroken` when the writer itself cannot run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Iterable

from .. import turn
from .base import ChainBroken, StoreFailed, Write

log = logging.getLogger("mcprt.store")

BATCH_MAX = 2000          # writes one transaction takes at most (a unit is never split)
RESTARTS = 3              # writer-loop failures within RESTART_WINDOW that fail the store for good
RESTART_WINDOW = 60.0     # seconds
PROBE_TIMEOUT = 2.0       # seconds a health probe write may take to commit
PROBE_REUSE = 1.0         # seconds a probe that committed answers for the next ones
_MAINTAIN = object()      # queued by the backend: the write loop calls _maintain() between two batches


class Refused(Exception):
    """Raised by a backend's _commit: fail every unit of the batch with `error`, without retrying."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


class Lost(Exception):
    """Raised by a backend's _commit: it committed, but where no one will read it; `reason` for /health,
    `detail` for the log only."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


class WriterBroken(Exception):
    """Raised by a backend's _commit: the writer itself cannot run (not a row's fault): a failure of the
    write loop, which restarts it (and fails the store after RESTARTS in RESTART_WINDOW)."""


class Unit:
    """Writes that commit together, the future of whoever waits (or None), or a chain reset (no writes)."""

    __slots__ = ("writes", "future", "reset")

    def __init__(self, writes: tuple[Write, ...], future: asyncio.Future | None, reset: str | None = None):
        self.writes, self.future, self.reset = writes, future, reset

    def chains(self) -> Iterable[str]:
        return {w.chain for w in self.writes if w.chain is not None}

    def result(self) -> int | None:
        result = None
        for write in self.writes:
            if write.counted:
                result = write.result
        return result


class GroupCommit:
    """The queue, the supervised writer task, chains, the barrier and the health probe."""

    sync_commits = False  # the backend's _commit_now can commit a batch without waiting

    def __init__(self) -> None:
        self._queue: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the writer's (get_running_loop() costs a getpid())
        self._busy = False  # the writer task holds a batch (or runs maintenance)
        self._failures: list[float] = []  # time.monotonic() of the writer's recent failures
        self._then: dict[asyncio.Future, Callable[[asyncio.Future], None]] = {}  # see then()
        self._gathering: list[Unit] | None = None  # units of this turn, committed at its end (_flush)
        self._flushing = False  # _flush runs
        self._broken_chains: set[str] = set()
        self._held: list[Unit] = []  # the batch being committed
        self._stopping = False
        self._probe: asyncio.Future | None = None
        self._probe_ok_at: float | None = None  # time.monotonic() of the last probe that committed
        self.failed: str | None = None  # why writes are refused; None while the store works
        self.commit_listeners: list[Callable[[float, int], None]] = []  # (seconds, writes): metrics, say
        self.on_fatal: Callable[[str], None] | None = None  # the writer cannot recover: the process should end

    # -- what a backend provides ---------------------------------------------------------------------

    async def _commit(self, units: list[Unit]) -> None:
        """Every write of `units` in one transaction (setting each counted write's result)."""
        raise NotImplementedError

    def _commit_now(self, units: list[Unit]) -> bool:
        """Every write of `units` in one transaction, without waiting; False when it did not commit (then
        the writer task commits them). Raise Lost as _commit does."""
        return False

    async def _maintain(self) -> None:
        """Work the backend asked for with request_maintenance(), run between two batches."""

    def request_maintenance(self) -> None:
        self._queue.put_nowait(_MAINTAIN)

    # -- the write path ---------------------------------------------------------------------------------

    def submit(self, *writes: Write) -> asyncio.Future:
        future = (self._loop or asyncio.get_running_loop()).create_future()
        if self.failed is not None:
            future.set_exception(StoreFailed(self.failed))
        else:
            self._put(Unit(writes, future))
        return future

    def enqueue(self, *writes: Write) -> None:
        if self.failed is None:
            self._put(Unit(writes, None))

    def barrier(self) -> asyncio.Future:
        return self.submit()

    def then(self, future: asyncio.Future, callback: Callable[[asyncio.Future], None]) -> None:
        """callback(future) once `future` (of submit) resolves: in the same turn as its commit, where a done
        callback would run a turn of the event loop later (an edit's ack leaves with its commit)."""
        if future.done():
            future.add_done_callback(callback)
        else:
            self._then[future] = callback

    def reset_chain(self, chain: str) -> None:
        self._put(Unit((), None, chain))

    def _put(self, unit: Unit) -> None:
        """Into this turn's batch while one gathers, or starts one while the writer is idle; otherwise to
        the writer task. Either way units commit in the order they were put."""
        if self._gathering is not None:
            self._gathering.append(unit)
        elif self.sync_commits and not self._busy and self._queue.empty() and self._task is not None:
            self._gathering = [unit]
            if not turn.at_end(self._flush_if_last):
                asyncio.get_running_loop().call_soon(self._flush)
        else:
            self._queue.put_nowait(unit)

    def _flush_if_last(self) -> None:
        """The end of a read (or of a commit's acks) that put a unit: when no other callback waits in this
        turn of the event loop, this turn's units are all here, so commit them now rather than a turn later
        (that turn costs a pass through the loop and an epoll_wait). Otherwise, or on a loop whose queue
        cannot be seen (uvloop), at the start of the next turn as before."""
        if self._gathering is None:  # committed meanwhile (the store closing)
            return
        loop = self._loop or asyncio.get_running_loop()
        ready = getattr(loop, "_ready", None)  # asyncio's callbacks still to run, this turn's and the next's
        if ready is not None and not ready and not self._flushing:  # (not from within a commit's acks)
            self._flush()
        else:
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        """The end of the turn: commit what gathered at once when nothing stands in the way (the writer
        idle, no failure, no chain to respect, no reset or barrier), else hand it to the writer task."""
        batch, self._gathering = self._gathering, None
        if not batch:
            return
        self._flushing = True
        try:
            self._flush_batch(batch)
        finally:
            self._flushing = False

    def _flush_batch(self, batch: list[Unit]) -> None:
        writes, simple = 0, not self._busy and self._queue.empty() and self.failed is None and not self._broken_chains
        for unit in batch:
            writes += len(unit.writes)
            if not unit.writes or unit.reset is not None:  # a barrier or a reset keeps the writer's order
                simple = False
        started = time.perf_counter()
        try:
            committed = simple and writes <= BATCH_MAX and self._commit_now(batch)
        except Lost as lost:
            self._lost(batch, lost, writes)
            return
        except Exception:  # the writer task tries again, and goes unit by unit if it must
            committed = False
        if not committed:
            for unit in batch:
                self._queue.put_nowait(unit)
            return
        self._settle(batch, {}, None)
        try:
            self._notify(time.perf_counter() - started, writes)
        except Exception as exc:
            self._writer_failed(exc, [])

    def _notify(self, seconds: float, writes: int) -> None:
        for listener in self.commit_listeners:
            listener(seconds, writes)

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() + len(self._gathering or ())

    def _start_writer(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._write_loop())

    async def _stop_writer(self) -> None:
        """Drain the queue: every write accepted before this is committed (or failed)."""
        if self._task is not None:
            self._flush()  # this turn's units first, in order
            await self._queue.put(None)
            await self._task
            self._task = None

    async def probe(self, timeout: float = PROBE_TIMEOUT, reuse: bool = True) -> None:
        """Raise StoreFailed unless a real write (the health_probe row) goes through the queue and commits
        within `timeout`. Concurrent callers share one probe write, and one that succeeded less than
        PROBE_REUSE ago answers for it: an unauthenticated /health flood costs at most one write a second.
        `reuse=False` (the start-up check) neither reuses a recent probe nor stands for one."""
        if self.failed is not None:
            raise StoreFailed(self.failed)
        if self._task is None or self._task.done():
            raise StoreFailed("the writer is not running")
        if reuse and self._probe_ok_at is not None and time.monotonic() - self._probe_ok_at < PROBE_REUSE:
            return
        if self._probe is None or self._probe.done():
            self._probe = self.submit(Write("health_probe", (time.time(),)))
            self._probe.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved, even if late
        try:
            await asyncio.wait_for(asyncio.shield(self._probe), timeout)
        except asyncio.TimeoutError:
            raise StoreFailed(f"a write did not commit within {timeout:g}s") from None
        if reuse:
            self._probe_ok_at = time.monotonic()

    def _fail(self, reason: str, fatal: bool, detail: str = "") -> None:
        """Refuse every later write; `fatal`: the writer cannot run, so ask the process to end. The reason
        is what /health shows; the detail goes to the log only."""
        if self.failed is not None:
            return
        self.failed = reason
        log.critical("the database no longer accepts writes: %s%s", reason, detail)
        if fatal and self.on_fatal is not None:
            self.on_fatal(reason)

    async def _write_loop(self) -> None:
        """The writer, supervised. A failure of the loop itself (not of one unit: those fail their own
        future) is logged with its traceback, fails the units it held, and the loop starts again;
        RESTARTS failures within RESTART_WINDOW fail the store (on_fatal). A failed store keeps the loop
        running, failing each write without touching the database, so every future resolves and close()
        still drains."""
        while True:
            try:
                await self._write_batches()
                return
            except Exception as exc:
                held, self._held = self._held, []
                failures = self._writer_failed(exc, held)
                if self._stopping or failures > RESTARTS:  # closing, or failing even without the database
                    self._fail_queued()
                    return
                await asyncio.sleep(0.05 * failures)

    def _writer_failed(self, exc: Exception, held: list[Unit]) -> int:
        """Log a failure of the writer (the loop, or a commit at the end of a turn) with its traceback, fail
        what it held, and fail the store at RESTARTS within RESTART_WINDOW; how many failures that window
        holds now."""
        log.exception("the writer failed holding %d writes; failing them and restarting",
                      sum(len(u.writes) for u in held))
        self._fail_held(held, exc)
        now = time.monotonic()
        self._failures = [t for t in self._failures if now - t < RESTART_WINDOW] + [now]
        if len(self._failures) >= RESTARTS:
            self._fail(f"the writer failed {len(self._failures)} times in {RESTART_WINDOW:g}s "
                       f"(last: {type(exc).__name__}: {exc})", fatal=True)
        return len(self._failures)

    async def _write_batches(self) -> None:
        queue = self._queue
        while not self._stopping:
            self._busy = False
            batch, size = [await queue.get()], 0
            self._busy = True
            while not queue.empty() and size < BATCH_MAX:
                batch.append(queue.get_nowait())
                size += len(batch[-1].writes) if isinstance(batch[-1], Unit) else 0
            self._stopping = None in batch
            # Units queued after the stop marker were accepted too: take them before closing.
            while self._stopping and not queue.empty():
                batch.append(queue.get_nowait())
            maintain = _MAINTAIN in batch
            self._held = [u for u in batch if isinstance(u, Unit)]
            del batch  # do not hold the last batch's rows while waiting for the next
            await self._commit_batch(self._held)
            self._held = []
            if maintain and self.failed is None:
                await self._maintain()

    def _fail_held(self, held: list[Unit], exc: Exception) -> None:
        """After a loop failure: fail what it held and break their chains (no gaps)."""
        error = StoreFailed(f"the writer failed before this write was acknowledged: {type(exc).__name__}")
        for unit in held:
            self._resolve(unit, error)
            self._broken_chains.update(unit.chains())

    def _fail_queued(self) -> None:
        error = StoreFailed(self.failed or "the writer failed while the store was closing")
        while not self._queue.empty():
            unit = self._queue.get_nowait()
            if isinstance(unit, Unit):
                self._resolve(unit, error)

    async def _commit_batch(self, batch: list[Unit]) -> None:
        if not batch:
            return
        if self.failed is not None:
            self._settle(batch, {}, StoreFailed(self.failed))
            return
        started = time.perf_counter()
        writes = sum(len(u.writes) for u in batch)
        try:
            if not writes or self._broken_chains:  # resets and barriers alone, or chains to respect
                failed = await self._one_by_one(batch)
            else:
                try:
                    await self._commit(batch)
                    failed = {}
                except Refused as exc:
                    log.error("batch of %d writes failed: %s", writes, exc.error)
                    failed = await self._one_by_one(batch, exc.error)
                except (Lost, WriterBroken):
                    raise
                except Exception as exc:  # whatever a row raises: a constraint, UnicodeEncodeError, OverflowError
                    log.warning("batch of %d writes failed (%s: %s); retrying one unit at a time", writes,
                                type(exc).__name__, exc)
                    failed = await self._one_by_one(batch)
        except Lost as lost:
            self._lost(batch, lost, writes)
            return
        self._settle(batch, failed, None)
        self._notify(time.perf_counter() - started, writes)

    def _lost(self, batch: list[Unit], lost: Lost, writes: int) -> None:
        """The batch committed where nobody will read it: refuse every later write (not fatal: while this
        process lives, the data may still be copied out) and fail the batch."""
        self._fail(lost.reason, fatal=False, detail=f" ({writes} writes of this batch not acknowledged){lost.detail}")
        self._settle(batch, {}, StoreFailed(self.failed))

    def _broken(self, unit: Unit) -> str | None:
        for chain in unit.chains():
            if chain in self._broken_chains:
                return chain
        return None

    async def _one_by_one(self, batch: list[Unit], refused: Exception | None = None) -> dict[int, Exception]:
        """Each unit in its own transaction, resets and chains applied in order; one that fails fails only
        itself and breaks its chains. With `refused` no unit is tried: each fails with it."""
        failed = {}
        for unit in batch:
            if unit.reset is not None:
                self._broken_chains.discard(unit.reset)
                continue
            if not unit.writes:
                continue
            broken = self._broken(unit)
            if broken is not None:
                failed[id(unit)] = ChainBroken(f"an earlier write of {broken} failed")
                continue
            try:
                if refused is not None:
                    raise refused
                await self._commit([unit])
            except (Lost, WriterBroken):
                raise
            except Exception as exc:
                error = exc.error if isinstance(exc, Refused) else exc
                if refused is None:
                        log.error("write failed: %s: %s (%s)", type(error).__name__, error,
                              ", ".join(w.kind for w in unit.writes))
                failed[id(unit)] = error
                self._broken_chains.update(unit.chains())
        return failed

    def _settle(self, batch: list[Unit], failed: dict[int, Exception], everything: Exception | None) -> None:
        with turn.batch():  # the acks the callbacks write leave as the batch ends, each socket's in one write
            for unit in batch:
                self._resolve(unit, everything or failed.get(id(unit)))

    def _resolve(self, unit: Unit, error: Exception | None) -> None:
        """Resolve a unit's future (to its result, or `error`) and run the callback given to then()."""
        future = unit.future
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(unit.result())
        callback = self._then.pop(future, None)
        if callback is not None:
            try:
                callback(future)
            except Exception:  # a caller's bug: not the writer's failure
                log.exception("a callback on a commit failed")


def grouped(units: list[Unit]) -> list[tuple[str, list[Write]]]:
    """The batch's writes in order, consecutive writes of one kind together (one executemany each);
    a counted write stands alone (its row count is its result)."""
    groups: list[tuple[str, list[Write]]] = []
    for unit in units:
        for write in unit.writes:
            if groups and groups[-1][0] == write.kind and not write.counted and not groups[-1][1][0].counted:
                groups[-1][1].append(write)
            else:
                groups.append((write.kind, [write]))
    return groups
