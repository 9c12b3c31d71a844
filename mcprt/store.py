"""SQLite: the migrations runner, the batched writer, and every query (the only module that speaks SQL).

Reads go through aiosqlite. Writes go through one plain sqlite3 connection owned by a single writer
thread: a whole batch (BEGIN, every row, COMMIT) is one call into that thread, so a commit costs one
hop between threads however many rows it holds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import aiosqlite

from . import resource_dir
from .wal import inspect_wal

log = logging.getLogger("mcprt.store")

MIGRATIONS_DIR = resource_dir("migrations")
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_BATCH_MAX = 2000
# A batch this small commits on the event loop's thread: a WAL commit with synchronous=NORMAL only
# write()s to the page cache (about 25 us here), where the hop to the writer thread and back costs
# 100-150 us of wall time and CPU on both threads. Larger batches (a snapshot of a big document),
# a held lock, and the second after a slow commit go to the writer thread, where a stall waits alone.
_INLINE_MAX_ROWS = 512
_INLINE_MAX_CHARS = 256 * 1024
_INLINE_SLOW = 0.005      # seconds: a slower commit on the loop sends the next ones to the thread...
_INLINE_PAUSE = 5.0       # ...for this long
_CHECKPOINT = object()    # queued by the checkpoint loop: the write loop checkpoints between batches
EVENT_PRUNE_CHUNK = 2000   # events one pruning write deletes: ~45 ms of the writer measured (5000: ~65 ms)
EVENT_PRUNE_CHUNKS = 25    # pruning writes per sweep (50,000 rows; the next sweep goes on)
CHECKPOINT_INTERVAL = 1.0  # seconds
_RESTARTS = 3             # writer-loop failures within _RESTART_WINDOW that fail the store for good
_RESTART_WINDOW = 60.0    # seconds
PROBE_TIMEOUT = 2.0       # seconds a health probe write may take to commit
PROBE_REUSE = 1.0         # seconds a probe that committed answers for the next ones
_SQLITE_BUSY_CODES = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED (primary codes)
BUSY_TIMEOUT_MS = 5000
_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", "PRAGMA foreign_keys=ON",
            f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


class MigrationError(RuntimeError):
    """The database and this code disagree about the schema."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    def statements(self) -> list[str]:
        """The file's statements, split where sqlite3 says a statement is complete."""
        out, current = [], ""
        for line in self.path.read_text(encoding="utf-8").splitlines(keepends=True):
            current += line
            if sqlite3.complete_statement(current):
                out.append(current.strip())
                current = ""
        if current.strip() and not all(l.strip().startswith("--") for l in current.splitlines() if l.strip()):
            raise MigrationError(f"{self.path.name}: trailing statement without ';'")
        return out


def discover_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Migrations in version order; a gap or a duplicate version is a packaging error."""
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise MigrationError(f"migration file name not NNNN_name.sql: {path.name}")
        found.append(Migration(int(match.group(1)), match.group(2), path))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"migration versions must run 1..N without gaps: {versions}")
    return found


# -- opening and recovery ------------------------------------------------------

def _check_openable(path: str) -> None:
    """Refuse, in one sentence, a path SQLite would answer only with "unable to open database file"."""
    if path == ":memory:" or path.startswith("file:"):
        return
    target = Path(path)
    if target.is_dir():
        raise StoreOpenError(f"cannot open database {path}: it is a directory")
    if not target.parent.is_dir():
        raise StoreOpenError(f"cannot open database {path}: the folder {target.parent} does not exist")


def _identities(path: str) -> dict[str, tuple[int, int]]:
    """(st_dev, st_ino) of the database file and its WAL, as opened (a path of no file: nothing to check)."""
    found = {}
    for name in (path, path + "-wal"):
        try:
            st = os.stat(name)
        except OSError:
            continue
        found[name] = (st.st_dev, st.st_ino)
    return found


def _still_open(path: str) -> str:
    """Where a removed file is still reachable while this process runs (Linux), as a hint for the log."""
    gone = os.path.realpath(path) + " (deleted)"
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return ""
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == gone:
                return f"; until this process exits its data is still in /proc/{os.getpid()}/fd/{fd}"
        except OSError:  # closed meanwhile (the listing's own descriptor, say)
            continue
    return ""


def _suffix(path: str, database: str) -> str:
    return "'s WAL" if path != database else ""


def _is_busy(exc: Exception) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _SQLITE_BUSY_CODES


def document_chain(document_id: str) -> str:
    """The chain of a document's ops and snapshots."""
    return f"document:{document_id}"


class ChainBroken(sqlite3.DatabaseError):
    """A write not attempted: an earlier write of its chain failed (and the chain was not reset yet)."""


class StoreFailed(sqlite3.DatabaseError):
    """A write refused or not acknowledged: the store has failed (see `Store.failed`) or its writer broke."""


class StoreOpenError(RuntimeError):
    """The database cannot be opened: a directory, a missing folder, a file that is not SQLite."""


class _Pending:
    """One queued write: SQL, parameters, the future of a caller that awaits durability, and its chain.

    Writes that share a chain (a document's ops, say) must land without gaps: after one fails, the
    later ones fail too, without being tried, until the chain is reset (sql None: a reset marker).
    """

    __slots__ = ("sql", "params", "future", "chain", "counted", "result")

    def __init__(self, sql: str | None, params: tuple, future: asyncio.Future | None, chain: str | None = None,
                 counted: bool = False):
        self.sql, self.params, self.future, self.chain = sql, params, future, chain
        self.counted = counted  # the future resolves to how many rows the statement changed
        self.result: int | None = None


class Store:
    """One writer connection fed by a queue (group commit) and one reader connection."""

    def __init__(self, path: str, migrations_dir: Path = MIGRATIONS_DIR,
                 checkpoint_interval: float = CHECKPOINT_INTERVAL, check_wal: bool = False):
        self.path = path
        self.check_wal = check_wal  # the server's open: no other process writes the WAL being read
        self.checkpoint_interval = checkpoint_interval
        self.migrations_dir = migrations_dir
        self._writer: sqlite3.Connection | None = None  # used only on the writer thread
        self._writer_thread: ThreadPoolExecutor | None = None
        self._reader: aiosqlite.Connection | None = None
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._checkpointer: asyncio.Task | None = None
        self._commits_since_checkpoint = 0
        self._inline_after = 0.0  # time.perf_counter() before which batches commit on the writer thread
        self._broken_chains: set[str] = set()  # touched on the writer thread only (or while it is idle)
        self._held: list[_Pending] = []  # the batch the writer is committing
        self._stopping = False
        self._identity: dict[str, tuple[int, int]] = {}  # path -> (st_dev, st_ino) at open
        self._probe: asyncio.Future | None = None
        self._probe_ok_at: float | None = None  # time.monotonic() of the last probe that committed
        self.failed: str | None = None  # why writes are refused; None while the store works
        self.commit_listeners: list[Callable[[float, int], None]] = []  # (seconds, rows): metrics, say
        self.on_fatal: Callable[[str], None] | None = None  # the writer cannot recover: the process should end

    # -- life cycle -------------------------------------------------------

    async def open(self) -> "Store":
        """Connect, migrate, and start the writer task; StoreOpenError when the path is not a database."""
        _check_openable(self.path)
        recovery = inspect_wal(self.path + "-wal") if self.check_wal else None
        self._writer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mcprt-writer")
        try:
            try:
                self._writer = await self._on_writer(self._connect_writer)
            except sqlite3.DatabaseError as exc:
                raise StoreOpenError(f"cannot open database {self.path}: {exc}") from None
            await self.migrate()
            if recovery is not None and recovery.lost:
                await self._on_writer(self._log_last_revisions)
            self._identity = _identities(self.path)
            # Commits on the loop's thread never wait for a lock; the writer thread's set their own timeout.
            await self._on_writer(self._writer.execute, "PRAGMA busy_timeout=0")
        except BaseException:
            await self._close_writer()
            raise
        self._reader = await self._connect()
        self._task = asyncio.get_running_loop().create_task(self._write_loop())
        self._checkpointer = asyncio.get_running_loop().create_task(self._checkpoint_loop())
        return self

    async def _connect(self) -> aiosqlite.Connection:
        """The reader connection."""
        db = await aiosqlite.connect(self.path, isolation_level=None)
        db.row_factory = aiosqlite.Row
        for pragma in _PRAGMAS:
            await db.execute(pragma)
        return db

    def _connect_writer(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            for pragma in _PRAGMAS:
                db.execute(pragma)
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # not a database: fail here
        except BaseException:
            db.close()
            raise
        # Commits never checkpoint (that fsyncs, and would stall the batch that triggers it every
        # ~80 commits); _checkpoint_loop does it once a second instead.
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute("PRAGMA journal_size_limit=16777216")  # a WAL reset after a busy second shrinks to 16 MB
        return db

    def _on_writer(self, fn: Callable, *args: Any) -> asyncio.Future:
        """Run fn on the writer thread (the only thread that touches the writer connection)."""
        return asyncio.get_running_loop().run_in_executor(self._writer_thread, fn, *args)

    async def _close_writer(self) -> None:
        if self._writer is not None:
            try:
                await self._on_writer(self._writer.close)
            except RuntimeError:  # the writer thread is gone (a failed store): close it from here
                self._writer.close()
            self._writer = None
        if self._writer_thread is not None:
            self._writer_thread.shutdown(wait=True)
            self._writer_thread = None

    async def _checkpoint_loop(self) -> None:
        """Every interval with commits, ask the write loop for a checkpoint: it runs on the writer thread
        between two batches, so no write runs beside it (it copies the whole WAL, and the next commit
        starts the WAL over) and none touches the connection while it does."""
        while True:
            await asyncio.sleep(self.checkpoint_interval)
            if self._commits_since_checkpoint and self.failed is None:  # a failed store stays as it is
                self._commits_since_checkpoint = 0
                self._queue.put_nowait(_CHECKPOINT)

    async def _run_checkpoint(self) -> None:
        try:
            await self._on_writer(self._checkpoint, "PASSIVE")
        except sqlite3.Error as exc:  # a reader holding an old snapshot, say: next time
            log.warning("checkpoint failed: %s", exc)

    def _checkpoint(self, mode: str) -> tuple:
        """On the writer thread. The row is read here: a cursor handed back to the loop would keep the
        PRAGMA's statement open until the loop dropped it, and a COMMIT of the next batch, running
        meanwhile, would fail with "SQL statements in progress"."""
        return tuple(self._writer.execute(f"PRAGMA wal_checkpoint({mode})").fetchone())

    def _log_last_revisions(self) -> None:
        """On the writer thread, after a recovery that dropped frames: what each document kept."""
        rows = self._writer.execute("SELECT document_id, max(revision), max(time) FROM ops GROUP BY document_id"
                                    " ORDER BY 3 DESC LIMIT 20").fetchall()
        log.info("after recovery, the last revision of the %d most recently edited documents: %s", len(rows),
                 ", ".join(f"{d} at {r}" for d, r, _ in rows) or "none")

    async def close(self) -> None:
        """Drain the queue (every accepted write is committed), then close both connections."""
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            await asyncio.gather(self._checkpointer, return_exceptions=True)
            self._checkpointer = None
        if self._task is not None:
            await self._queue.put(None)
            await self._task
            self._task = None
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        await self._close_writer()

    # -- migrations -------------------------------------------------------

    async def migrate(self) -> list[Migration]:
        """Apply pending migrations, each with its schema_migrations row in one transaction."""
        return await self._on_writer(self._migrate)

    def _migrate(self) -> list[Migration]:
        db = self._writer
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)")
        known = discover_migrations(self.migrations_dir)
        applied = dict(db.execute("SELECT version, name FROM schema_migrations").fetchall())
        unknown = sorted(set(applied) - {m.version for m in known})
        if unknown:
            raise MigrationError(
                f"database {self.path} holds migration(s) {unknown} that this version of mcprt "
                f"does not know (it knows 1..{len(known)}); use a newer mcprt or another database")
        done = []
        for migration in known:
            if migration.version in applied:
                continue
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in migration.statements():
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) "
                    "VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                    (migration.version, migration.name))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            log.info("applied migration %04d_%s", migration.version, migration.name)
            done.append(migration)
        if done:
            self._checkpoint("TRUNCATE")  # the new schema into the main file at once
        return done

    async def applied_migrations(self) -> list[dict]:
        """Rows of schema_migrations in order."""
        return await self._rows("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")

    # -- the batched writer ----------------------------------------------

    def enqueue(self, sql: str, params: tuple = ()) -> None:
        """Queue a write; it commits with the next batch (no one waits for it). Dropped once the store failed."""
        if self.failed is None:
            self._queue.put_nowait(_Pending(sql, params, None))

    def write(self, sql: str, params: tuple = (), chain: str | None = None, counted: bool = False) -> asyncio.Future:
        """Queue a write; the returned future resolves once its batch is committed (to the number of rows
        changed when `counted`, else None; StoreFailed at once when the store has failed)."""
        future = asyncio.get_running_loop().create_future()
        if self.failed is not None:
            future.set_exception(StoreFailed(self.failed))
        else:
            self._queue.put_nowait(_Pending(sql, params, future, chain, counted))
        return future

    def reset_chain(self, chain: str) -> None:
        """Writes of `chain` queued after this are tried again (those queued before still fail)."""
        self._queue.put_nowait(_Pending(None, (), None, chain))

    def flush(self) -> asyncio.Future:
        """Resolves once everything queued before it is committed."""
        return self.write("DELETE FROM events WHERE 0")

    @property
    def queue_depth(self) -> int:
        """Writes waiting for the next batch."""
        return self._queue.qsize()

    async def probe(self, timeout: float = PROBE_TIMEOUT) -> None:
        """Raise StoreFailed unless a real write (one row of health_probe) goes through the queue and
        commits within `timeout`. Concurrent callers share one probe write, and one that succeeded less
        than PROBE_REUSE ago answers for it: an unauthenticated /health flood costs at most one write a
        second."""
        if self.failed is not None:
            raise StoreFailed(self.failed)
        if self._task is None or self._task.done():
            raise StoreFailed("the writer is not running")
        if self._probe_ok_at is not None and time.monotonic() - self._probe_ok_at < PROBE_REUSE:
            return
        if self._probe is None or self._probe.done():
            self._probe = self.write("INSERT OR REPLACE INTO health_probe (id, at)"
                                     " VALUES (1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))")
            self._probe.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved, even if late
        try:
            await asyncio.wait_for(asyncio.shield(self._probe), timeout)
        except asyncio.TimeoutError:
            raise StoreFailed(f"a write did not commit within {timeout:g}s") from None
        self._probe_ok_at = time.monotonic()

    def _fail(self, reason: str, fatal: bool, detail: str = "") -> None:
        """Refuse every later write; `fatal`: the writer cannot run, so ask the process to end. The reason
        is what /health shows; the detail (paths) goes to the log only."""
        if self.failed is not None:
            return
        self.failed = reason
        log.critical("the database no longer accepts writes: %s%s", reason, detail)
        if fatal and self.on_fatal is not None:
            self.on_fatal(reason)

    async def _write_loop(self) -> None:
        """The writer, supervised. A failure of the loop itself (not of one row: those fail their own
        future) is logged with its traceback, fails the writes it held, and the loop starts again;
        _RESTARTS failures within _RESTART_WINDOW fail the store (on_fatal). A failed store keeps the
        loop running, failing each write without touching the database, so every future resolves and
        close() still drains."""
        failures: list[float] = []
        while True:
            try:
                await self._write_batches()
                return
            except Exception as exc:
                held, self._held = self._held, []
                log.exception("the writer failed holding %d writes; failing them and restarting", len(held))
                self._fail_held(held, exc)
                now = time.monotonic()
                failures = [t for t in failures if now - t < _RESTART_WINDOW] + [now]
                if len(failures) >= _RESTARTS:
                    self._fail(f"the writer failed {len(failures)} times in {_RESTART_WINDOW:g}s "
                               f"(last: {type(exc).__name__}: {exc})", fatal=True)
                if self._stopping or len(failures) > _RESTARTS:  # closing, or failing even without the database
                    self._fail_queued()
                    return
                await asyncio.sleep(0.05 * len(failures))

    async def _write_batches(self) -> None:
        while not self._stopping:
            batch = [await self._queue.get()]
            while len(batch) < _BATCH_MAX and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._stopping = None in batch
            # Items queued after the stop marker were accepted too: take them before closing.
            while self._stopping and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            checkpoint = _CHECKPOINT in batch
            self._held = [p for p in batch if p is not None and p is not _CHECKPOINT]
            del batch  # do not hold the last batch's rows while waiting for the next
            await self._commit_batch(self._held)
            self._held = []
            if checkpoint and self.failed is None:
                await self._run_checkpoint()

    def _fail_held(self, held: list[_Pending], exc: Exception) -> None:
        """After a loop failure: fail what it held and break their chains (no gaps). The writer thread is
        idle here (its call returned before the failure reached us), so the chain set is safe to touch."""
        error = StoreFailed(f"the writer failed before this write was acknowledged: {type(exc).__name__}")
        for pending in held:
            if pending.future is not None and not pending.future.done():
                pending.future.set_exception(error)
            if pending.sql is not None and pending.chain is not None:
                self._broken_chains.add(pending.chain)

    def _fail_queued(self) -> None:
        error = StoreFailed(self.failed or "the writer failed while the store was closing")
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if pending is not None and pending is not _CHECKPOINT and pending.future is not None \
                    and not pending.future.done():
                pending.future.set_exception(error)

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        if not batch:
            return
        if self.failed is not None:
            self._settle(batch, {}, StoreFailed(self.failed))
            return
        started = time.perf_counter()
        done = self._commit_inline(batch, started) if self._inline_fits(batch, started) else None
        failed, lost = done if done is not None else await self._on_writer(self._commit, batch)
        self._commits_since_checkpoint += 1
        if lost is not None:  # not fatal: while this process lives, the removed file can still be copied
            self._fail(lost[0], fatal=False, detail=f" ({lost[1]}; {len(batch)} writes of this batch not "
                       f"acknowledged){_still_open(lost[1])}")
        self._settle(batch, failed, StoreFailed(self.failed) if lost is not None else None)
        for listener in self.commit_listeners:
            listener(time.perf_counter() - started, len(batch))

    def _inline_fits(self, batch: list[_Pending], now: float) -> bool:
        if len(batch) > _INLINE_MAX_ROWS or now < self._inline_after or self._broken_chains:
            return False
        chars = 0
        for pending in batch:
            for param in pending.params:
                if isinstance(param, str):
                    chars += len(param)
        return chars <= _INLINE_MAX_CHARS

    def _commit_inline(self, batch: list[_Pending], started: float) -> tuple[dict, tuple[str, str] | None] | None:
        """The batch in one transaction on this (the loop's) thread, or None: then the writer thread
        commits it as ever (it waits for a held lock, and goes row by row after a failure; here the
        lock is not waited for at all)."""
        db = self._writer
        if db.in_transaction:
            return None
        try:  # the connection's busy timeout is 0 except while the writer thread commits
            self._execute_grouped([p for p in batch if p.sql is not None])
        except Exception:
            return None
        finally:
            if time.perf_counter() - started > _INLINE_SLOW:
                self._inline_after = time.perf_counter() + _INLINE_PAUSE
        return {}, self._file_problem()

    @staticmethod
    def _settle(batch: list[_Pending], failed: dict[int, Exception], everything: Exception | None) -> None:
        for pending in batch:
            if pending.future is not None and not pending.future.done():
                error = everything or failed.get(id(pending))
                if error is not None:
                    pending.future.set_exception(error)
                else:
                    pending.future.set_result(pending.result)

    def _commit(self, batch: list[_Pending]) -> tuple[dict[int, Exception], tuple[str, str] | None]:
        """On the writer thread, waiting up to BUSY_TIMEOUT_MS for a lock another process holds: the batch
        in one transaction, or row by row if that fails; then whether the file is still the one opened (if
        not, nothing of the batch may be acknowledged)."""
        self._writer.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        try:
            return self._commit_waiting(batch)
        finally:
            self._writer.execute("PRAGMA busy_timeout=0")

    def _commit_waiting(self, batch: list[_Pending]) -> tuple[dict[int, Exception], tuple[str, str] | None]:
        if self._writer.in_transaction:  # left open by a failure we did not see end: start clean
            self._writer.execute("ROLLBACK")
        if not self._broken_chains:
            try:
                self._execute_grouped([p for p in batch if p.sql is not None])
                return {}, self._file_problem()
            except Exception as exc:  # whatever a row raises: sqlite3.Error, UnicodeEncodeError, OverflowError
                if _is_busy(exc):  # another process holds the lock: row by row would wait for it per row
                    log.error("batch of %d writes failed: %s", len(batch), exc)
                    return self._execute_one_by_one(batch, exc), self._file_problem()
                log.warning("batch of %d writes failed (%s: %s); retrying one by one", len(batch),
                            type(exc).__name__, exc)
        return self._execute_one_by_one(batch), self._file_problem()

    def _execute_grouped(self, batch: list[_Pending]) -> None:
        """One transaction; consecutive rows with the same SQL go in one executemany."""
        db = self._writer
        db.execute("BEGIN")
        try:
            start = 0
            while start < len(batch):
                first = batch[start]
                if first.counted:
                    first.result = db.execute(first.sql, first.params).rowcount
                    start += 1
                    continue
                end = start
                while end < len(batch) and batch[end].sql == first.sql and not batch[end].counted:
                    end += 1
                db.executemany(first.sql, [p.params for p in batch[start:end]])
                start = end
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # some errors (a full disk) have rolled it back already
                db.execute("ROLLBACK")
            raise

    def _execute_one_by_one(self, batch: list[_Pending], error: Exception | None = None) -> dict[int, Exception]:
        """Each row alone; one that raises anything fails only itself and breaks its chain. With
        `error`, no row is tried: each fails with it (chains and resets still apply in order)."""
        failed = {}
        for pending in batch:
            if pending.sql is None:
                self._broken_chains.discard(pending.chain)
                continue
            if pending.chain in self._broken_chains:
                failed[id(pending)] = ChainBroken(f"an earlier write of {pending.chain} failed")
                continue
            try:
                if error is not None:
                    raise error
                changed = self._writer.execute(pending.sql, pending.params).rowcount
                pending.result = changed if pending.counted else None
            except Exception as exc:
                if error is None:
                    log.error("write failed: %s: %s (%s)", type(exc).__name__, exc, pending.sql.split("(")[0].strip())
                failed[id(pending)] = exc
                if pending.chain is not None:
                    self._broken_chains.add(pending.chain)
        if self._writer.in_transaction:  # a row's SQL opened a transaction and did not end it
            self._writer.execute("ROLLBACK")
        return failed

    def _file_problem(self) -> tuple[str, str] | None:
        """After a commit (on whichever thread committed): why the database at `path` is no longer the file this
        writer opened (removed or replaced: whatever it commits now is lost on restart) and which path,
        or None."""
        for path, identity in self._identity.items():
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return f"the database file{_suffix(path, self.path)} was removed", path
            except OSError as exc:
                return f"the database file{_suffix(path, self.path)} cannot be checked: {exc.strerror}", path
            if (st.st_dev, st.st_ino) != identity:
                return f"the database file{_suffix(path, self.path)} was replaced by another file", path
        return None

    # -- reads --------------------------------------------------------------

    async def _rows(self, sql: str, params: tuple = ()) -> list[dict]:
        return [dict(row) for row in await self._reader.execute_fetchall(sql, params)]

    async def _row(self, sql: str, params: tuple = ()) -> dict | None:
        rows = await self._rows(sql, params)
        return rows[0] if rows else None

    async def ping(self) -> None:
        """Raise if the database cannot answer a query."""
        await self._reader.execute_fetchall("SELECT count(*) FROM schema_migrations")

    # -- events ---------------------------------------------------------

    def record_event(self, time_iso: str, kind: str, type_: str, severity: str = "info",
                     details: dict | None = None, **where: Any) -> None:
        """Queue an event (fields: session_id, user_id, document_id, connection_id, client_addr, user_agent)."""
        self.enqueue(
            "INSERT INTO events (time, kind, type, severity, session_id, user_id, document_id,"
            " connection_id, client_addr, user_agent, details) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (time_iso, kind, type_, severity, where.get("session_id"), where.get("user_id"),
             where.get("document_id"), where.get("connection_id"), where.get("client_addr"),
             where.get("user_agent"), json.dumps(details or {}, ensure_ascii=False, default=str)))

    async def events(self, *, limit: int = 100, cursor: int | None = None, since: str | None = None,
                     until: str | None = None, after_id: int | None = None, **equal: Any) -> list[dict]:
        """Events newest first (or oldest first after `after_id`, for tailing), filtered by equality."""
        where, params = [], []
        for column in ("kind", "type", "severity", "session_id", "user_id", "document_id"):
            if equal.get(column) is not None:
                where.append(f"{column} = ?")
                params.append(equal[column])
        for clause, value in (("time >= ?", since), ("time < ?", until),
                              ("id < ?", cursor), ("id > ?", after_id)):
            if value is not None:
                where.append(clause)
                params.append(value)
        order = "ASC" if after_id is not None else "DESC"
        sql = "SELECT * FROM events" + (" WHERE " + " AND ".join(where) if where else "")
        rows = await self._rows(f"{sql} ORDER BY id {order} LIMIT ?", (*params, limit))
        for row in rows:
            row["details"] = json.loads(row["details"])
        return rows

    async def prune_events(self, before_iso: str, chunk: int = EVENT_PRUNE_CHUNK,
                           chunks: int = EVENT_PRUNE_CHUNKS) -> bool:
        """Delete events older than the given time, `chunk` rows per write and at most `chunks` writes
        (other writes commit between them; the next sweep goes on). False when there were none."""
        done = 0
        while done < chunks and await self.events(limit=1, until=before_iso):
            await self.write("DELETE FROM events WHERE id IN (SELECT id FROM events WHERE time < ? ORDER BY time LIMIT ?)",
                             (before_iso, chunk))
            done += 1
        return done > 0

    async def cap_events(self, max_rows: int, chunk: int = EVENT_PRUNE_CHUNK,
                         chunks: int = EVENT_PRUNE_CHUNKS) -> int | None:
        """Delete the oldest events beyond the newest `max_rows` ids, in chunks as prune_events does; the
        last id deleted, or None. Ids only grow and pruning takes the oldest, so the ids left are nearly
        contiguous and min/max (two index lookups) stand for a count."""
        row = await self._row("SELECT min(id) AS lo, max(id) AS hi FROM events")
        if not max_rows or row is None or row["hi"] is None or row["hi"] - row["lo"] + 1 <= max_rows:
            return None
        through, start, last = row["hi"] - max_rows, row["lo"], None
        for _ in range(chunks):
            if start > through:
                break
            last = min(through, start + chunk - 1)
            await self.write("DELETE FROM events WHERE id <= ?", (last,))
            start = last + 1
        return last

    # -- sessions -------------------------------------------------------

    _SESSION_COLUMNS = ("session_id", "peer_id", "user_id", "client_info", "state", "created_at",
                        "activated_at", "expires_at", "ended_at", "end_reason", "last_seen")

    def insert_session(self, row: dict) -> asyncio.Future:
        """Store a new session row."""
        cols = self._SESSION_COLUMNS
        return self.write(f"INSERT INTO sessions ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
                          tuple(row.get(c) for c in cols))

    def update_session(self, row: dict, expected_state: str) -> asyncio.Future:
        """Store a session's changed state and times if its stored state is still `expected_state` (a
        compare-and-set); the future resolves to True when the row changed."""
        return self.write(
            "UPDATE sessions SET state=?, activated_at=?, expires_at=?, ended_at=?, end_reason=?, last_seen=?"
            " WHERE session_id=? AND state=?",
            (row["state"], row["activated_at"], row["expires_at"], row["ended_at"], row["end_reason"],
             row["last_seen"], row["session_id"], expected_state), counted=True)

    async def get_session(self, session_id: str) -> dict | None:
        """One session row by its id."""
        return await self._row("SELECT * FROM sessions WHERE session_id = ?", (session_id,))

    async def list_sessions(self, *, user_id: str | None = None, state: str | None = None,
                            limit: int = 100, cursor: int | None = None) -> list[dict]:
        """Sessions newest first; `cursor` is the `id` of the last row of the previous page."""
        where, params = [], []
        for clause, value in (("user_id = ?", user_id), ("state = ?", state), ("id < ?", cursor)):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = "SELECT * FROM sessions" + (" WHERE " + " AND ".join(where) if where else "")
        return await self._rows(f"{sql} ORDER BY id DESC LIMIT ?", (*params, limit))

    async def due_sessions(self, now_iso: str, pending_before_iso: str) -> list[dict]:
        """Active sessions past expires_at, and Pending ones created before the pending cutoff."""
        return await self._rows(
            "SELECT * FROM sessions WHERE (state = 'Active' AND expires_at <= ?)"
            " OR (state = 'Pending' AND (expires_at <= ? OR created_at <= ?))",
            (now_iso, now_iso, pending_before_iso))

    async def count_sessions_by_state(self) -> dict[str, int]:
        """How many sessions are in each state."""
        rows = await self._rows("SELECT state, count(*) AS n FROM sessions GROUP BY state")
        return {r["state"]: r["n"] for r in rows}

    # -- connections ----------------------------------------------------

    def open_connection(self, row: dict) -> None:
        """Record a new connection."""
        cols = ("connection_id", "session_id", "user_id", "peer_id", "document_id", "client_type",
                "client_addr", "user_agent", "opened_at")
        self.enqueue(f"INSERT INTO connections ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
                     tuple(row[c] for c in cols))

    def close_connection(self, connection_id: str, closed_at: str, code: int | None, reason: str,
                         messages_in: int, messages_out: int) -> None:
        """Record how a connection ended."""
        self.enqueue(
            "UPDATE connections SET closed_at=?, close_code=?, close_reason=?, messages_in=?, messages_out=?"
            " WHERE connection_id=?", (closed_at, code, reason, messages_in, messages_out, connection_id))

    # -- documents ------------------------------------------------------

    def insert_document(self, document_id: str, format_: str, created_at: str) -> asyncio.Future:
        """Create a document row (a no-op if it exists)."""
        return self.write("INSERT OR IGNORE INTO documents (document_id, format, created_at) VALUES (?,?,?)",
                          (document_id, format_, created_at))

    async def get_document(self, document_id: str) -> dict | None:
        """A document's row: format and creation time."""
        return await self._row("SELECT * FROM documents WHERE document_id = ?", (document_id,))

    def insert_op(self, document_id: str, revision: int, op_json: str, user_id: str | None,
                  peer_id: str | None, message_id: str | None, time_iso: str,
                  correction_json: str | None = None) -> asyncio.Future:
        """Store the operation that produced `revision` (and what sanitizing corrected in it)."""
        return self.write(
            "INSERT INTO ops (document_id, revision, op, user_id, peer_id, message_id, time, correction)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (document_id, revision, op_json, user_id, peer_id, message_id, time_iso, correction_json),
            chain=document_chain(document_id))

    async def message_revisions(self, document_id: str, peer_id: str) -> dict[str, int]:
        """message id -> revision of every stored edit one peer made on a document."""
        rows = await self._reader.execute_fetchall(
            "SELECT message_id, revision FROM ops WHERE document_id = ? AND peer_id = ? AND message_id IS NOT NULL",
            (document_id, peer_id))
        return {message_id: revision for message_id, revision in rows}

    async def op_at(self, document_id: str, revision: int) -> dict | None:
        """The stored row of the op that produced `revision`."""
        return await self._row("SELECT * FROM ops WHERE document_id = ? AND revision = ?", (document_id, revision))

    def insert_snapshot(self, document_id: str, revision: int, content: str, time_iso: str) -> asyncio.Future:
        """Store the full content at `revision`."""
        return self.write("INSERT OR REPLACE INTO snapshots (document_id, revision, content, time) VALUES (?,?,?,?)",
                          (document_id, revision, content, time_iso), chain=document_chain(document_id))

    async def latest_snapshot(self, document_id: str, at_or_before: int | None = None) -> dict | None:
        """The newest snapshot at or before a revision (any revision when None)."""
        if at_or_before is None:
            return await self._row("SELECT * FROM snapshots WHERE document_id = ? ORDER BY revision DESC LIMIT 1",
                                   (document_id,))
        return await self._row("SELECT * FROM snapshots WHERE document_id = ? AND revision <= ?"
                               " ORDER BY revision DESC LIMIT 1", (document_id, at_or_before))

    async def ops(self, document_id: str, after: int, upto: int | None = None, limit: int = -1) -> list[dict]:
        """Ops with after < revision (<= upto), oldest first."""
        if upto is None:
            return await self._rows("SELECT * FROM ops WHERE document_id = ? AND revision > ?"
                                    " ORDER BY revision LIMIT ?", (document_id, after, limit))
        return await self._rows("SELECT * FROM ops WHERE document_id = ? AND revision > ? AND revision <= ?"
                                " ORDER BY revision LIMIT ?", (document_id, after, upto, limit))

    async def op_texts(self, document_id: str, after: int, upto: int | None = None) -> list[tuple[int, str]]:
        """(revision, op JSON) with after < revision (<= upto), oldest first: only what a replay needs."""
        rows = await self._reader.execute_fetchall(
            "SELECT revision, op FROM ops WHERE document_id = ? AND revision > ? AND revision <= ? ORDER BY revision",
            (document_id, after, upto if upto is not None else 2 ** 62))
        return [(row[0], row[1]) for row in rows]

    async def last_revision(self, document_id: str) -> int:
        """The newest stored revision of a document (0 when it has none)."""
        row = await self._row("SELECT max(revision) AS r FROM ops WHERE document_id = ?", (document_id,))
        return (row and row["r"]) or 0

    async def count_documents(self) -> int:
        """How many documents are stored."""
        return (await self._row("SELECT count(*) AS n FROM documents"))["n"]
